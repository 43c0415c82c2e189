//! Both overlays render, parse, and keep the invariants a cell depends on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, PodSpec, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use pgcell::config::{Config, DiscoveryMode, ProxyMode, TlsMode};
use pgcell::crd::{self, PgcellTenant, ServiceRef};

use crate::manifests::{selects, Rendered};
use crate::repo_path;

pub const SELF_REGISTER: &str = "deploy/kubernetes/overlays/self-register";
pub const TARGET_GROUP_BINDING: &str = "deploy/kubernetes/overlays/target-group-binding";
const EXAMPLE_TENANT: &str = "deploy/kubernetes/examples/tenant";
const EXAMPLE_POOLED_TENANT: &str = "deploy/kubernetes/examples/pooled-tenant";
const OVERLAYS: [&str; 2] = [SELF_REGISTER, TARGET_GROUP_BINDING];

/// Upper bound of one DeregisterTargets call retried through an API
/// outage (src/register/aws.rs: 30 s of retries + one 10 s attempt + 1 s).
const DEREGISTER_CALL_MAX_S: i64 = 41;
/// Time left for the process to exit after the grace period.
const EXIT_MARGIN_S: i64 = 5;

/// An overlay rendered, with the pgcell config its Deployment mounts.
pub struct Cell {
    pub rendered: Rendered,
    pub config: Config,
}

impl Cell {
    pub fn render(dir: &str) -> Cell {
        let rendered = Rendered::render(dir);
        let config = mounted_config(&rendered);
        Cell { rendered, config }
    }

    fn deployment(&self) -> &Deployment {
        self.rendered.deployment()
    }

    fn pod(&self) -> &PodSpec {
        self.deployment()
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
    }

    fn pgcell(&self) -> &Container {
        let pod = self.pod();
        assert_eq!(
            pod.containers.len(),
            1,
            "{}: one container",
            self.rendered.dir
        );
        &pod.containers[0]
    }

    fn pod_labels(&self) -> BTreeMap<String, String> {
        let template = &self.deployment().spec.as_ref().unwrap().template;
        template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default()
    }

    /// The container port `port` names (a name or a number).
    fn container_port(&self, port: &IntOrString) -> Option<u16> {
        let ports = self.pgcell().ports.clone().unwrap_or_default();
        match port {
            IntOrString::Int(n) => ports
                .iter()
                .find(|p| p.container_port == *n)
                .map(|p| p.container_port),
            IntOrString::String(name) => ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name))
                .map(|p| p.container_port),
        }
        .map(|p| u16::try_from(p).unwrap())
    }

    fn service(&self, name: &str) -> &Service {
        self.rendered
            .services()
            .into_iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("{}: no Service {name}", self.rendered.dir))
    }

    /// The container port a Service port `port` (name or number) leads to.
    fn service_target(&self, service: &Service, port: &IntOrString) -> Option<u16> {
        let spec = service.spec.as_ref().unwrap();
        let sp = spec.ports.iter().flatten().find(|p| match port {
            IntOrString::Int(n) => p.port == *n,
            IntOrString::String(name) => p.name.as_deref() == Some(name),
        })?;
        let target = sp.target_port.clone().unwrap_or(IntOrString::Int(sp.port));
        self.container_port(&target)
    }

    /// Where the volume holding `path` is mounted, and the volume's name.
    fn mount_of(&self, path: &str) -> (String, String) {
        let mounts = self.pgcell().volume_mounts.clone().unwrap_or_default();
        let m = mounts
            .iter()
            .filter(|m| path.starts_with(&format!("{}/", m.mount_path.trim_end_matches('/'))))
            .max_by_key(|m| m.mount_path.len())
            .unwrap_or_else(|| panic!("{}: nothing mounted at {path}", self.rendered.dir));
        (
            m.mount_path.trim_end_matches('/').to_owned(),
            m.name.clone(),
        )
    }

    fn secret(&self, name: &str) -> &Secret {
        self.rendered
            .secrets()
            .into_iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("{}: no Secret {name}", self.rendered.dir))
    }

    /// Longest time the drain may take, from the pod's deletion to exit.
    fn drain_seconds(&self) -> i64 {
        let pre_stop = self
            .pgcell()
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .map(|h| {
                assert!(
                    h.exec.is_none() && h.http_get.is_none(),
                    "{}: preStop must not call POST /drain: the SIGTERM after it would cut the drain short",
                    self.rendered.dir
                );
                h.sleep.as_ref().map(|s| s.seconds).unwrap_or(0)
            })
            .unwrap_or(0);
        let s = |d: std::time::Duration| i64::try_from(d.as_secs()).unwrap();
        let c = &self.config;
        let registration = if c.aws.register {
            DEREGISTER_CALL_MAX_S + s(c.drain.deregistration_timeout)
        } else {
            0
        };
        pre_stop + registration + s(c.drain.propagation) + s(c.shutdown_grace) + EXIT_MARGIN_S
    }
}

/// The config file the Deployment's `--config` names, read from the
/// ConfigMap mounted there, and parsed by pgcell's own parser.
fn mounted_config(r: &Rendered) -> Config {
    let container = &r
        .deployment()
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    assert!(
        container.command.is_none(),
        "{}: the image's ENTRYPOINT is the pgcell binary; pass only args",
        r.dir
    );
    let args = container.args.clone().unwrap_or_default();
    assert_eq!(
        args.first().map(String::as_str),
        Some("run"),
        "{}: args {args:?}",
        r.dir
    );
    let path = args
        .iter()
        .skip_while(|a| *a != "--config")
        .nth(1)
        .unwrap_or_else(|| panic!("{}: no --config in {args:?}", r.dir))
        .clone();
    let mounts = container.volume_mounts.clone().unwrap_or_default();
    let (dir, file) = path.rsplit_once('/').unwrap();
    let mount = mounts
        .iter()
        .find(|m| m.mount_path.trim_end_matches('/') == dir)
        .unwrap_or_else(|| panic!("{}: {dir} is not a mount", r.dir));
    let volumes = r
        .deployment()
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .clone()
        .unwrap_or_default();
    let volume = volumes.iter().find(|v| v.name == mount.name).unwrap();
    let cm_name = volume
        .config_map
        .as_ref()
        .unwrap_or_else(|| panic!("{}: {dir} is not a ConfigMap volume", r.dir))
        .name
        .clone();
    let cm = r
        .config_maps()
        .into_iter()
        .find(|c| c.metadata.name == Some(cm_name.clone()))
        .unwrap_or_else(|| panic!("{}: no ConfigMap {cm_name}", r.dir));
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get(file))
        .unwrap_or_else(|| panic!("{}: ConfigMap {cm_name} has no {file}", r.dir))
        .clone();
    // The shared secret is read at parse time: it must come from a Secret
    // mounted where `[auth] secret_file` points, with that key; parsed here
    // from a stand-in file of a valid length.
    let secret_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("secret_file"))
        .unwrap_or_else(|| panic!("{}: no [auth] secret_file in {path}", r.dir));
    let secret_path = secret_line.split('"').nth(1).unwrap().to_owned();
    let (secret_dir, secret_key) = secret_path.rsplit_once('/').unwrap();
    let secret_mount = mounts
        .iter()
        .find(|m| m.mount_path.trim_end_matches('/') == secret_dir)
        .unwrap_or_else(|| panic!("{}: {secret_dir} is not a mount", r.dir));
    let secret_name = volumes
        .iter()
        .find(|v| v.name == secret_mount.name)
        .and_then(|v| v.secret.as_ref())
        .and_then(|s| s.secret_name.clone())
        .unwrap_or_else(|| panic!("{}: {secret_dir} is not a Secret volume", r.dir));
    let secret = r
        .secrets()
        .into_iter()
        .find(|s| s.metadata.name.as_deref() == Some(secret_name.as_str()))
        .unwrap_or_else(|| panic!("{}: no Secret {secret_name}", r.dir));
    assert!(
        secret
            .data
            .as_ref()
            .is_some_and(|d| d.contains_key(secret_key)),
        "{}: Secret {secret_name} has no key {secret_key}",
        r.dir
    );
    let stand_in = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(stand_in.path(), "s".repeat(32)).unwrap();
    let text = text.replace(&secret_path, &stand_in.path().display().to_string());
    Config::parse(&text, Path::new(dir))
        .unwrap_or_else(|e| panic!("{}: {path} does not pass pgcell's parser:\n{e}", r.dir))
}

#[test]
fn replicas_share_the_auth_secret_and_start_without_warnings() {
    for dir in OVERLAYS {
        let cell = Cell::render(dir);
        assert!(cell.config.auth.secret.is_some(), "{dir}: no [auth] secret");
        assert!(
            cell.config.kubernetes.peer_service.is_some(),
            "{dir}: the cell has peers, which is why the secret matters"
        );
        assert_eq!(cell.config.warnings(), Vec::<String>::new(), "{dir}");
    }
}

#[test]
fn every_rendered_object_parses_into_its_type() {
    // Rendering does the parsing; unknown kinds and fields panic there.
    for dir in OVERLAYS
        .iter()
        .chain([&EXAMPLE_TENANT, &EXAMPLE_POOLED_TENANT])
    {
        let r = Rendered::render(dir);
        assert!(!r.objects.is_empty());
    }
    let base_like = Rendered::render(SELF_REGISTER);
    let crds = base_like.crds();
    assert_eq!(crds.len(), 1);
    assert_eq!(
        crds[0].metadata.name.as_deref(),
        Some("pgcelltenants.pgcell.io"),
        "the generated CRD is part of the base"
    );
}

#[test]
fn ports_and_probes_are_the_config_files_ports() {
    for dir in OVERLAYS {
        let cell = Cell::render(dir);
        let l = &cell.config.listen;
        let named = |name: &str| cell.container_port(&IntOrString::String(name.into()));
        let health = l
            .health_addr
            .expect("listen.health_addr: the NLB health check port");
        let admin = l.admin_addr.expect("listen.admin_addr: probes and metrics");
        for (what, addr, name) in [
            ("listen.addr", l.addr, "postgres"),
            ("listen.health_addr", health, "health"),
            ("listen.admin_addr", admin, "admin"),
        ] {
            assert!(
                addr.ip().is_unspecified(),
                "{dir}: {what} {addr} must listen on the pod IP too"
            );
            assert_eq!(
                named(name),
                Some(addr.port()),
                "{dir}: container port {name} vs {what}"
            );
        }
        let c = cell.pgcell();
        for (probe, path) in [
            (&c.readiness_probe, "/readyz"),
            (&c.liveness_probe, "/livez"),
        ] {
            let get = probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .unwrap_or_else(|| panic!("{dir}: {path} probe"));
            assert_eq!(get.path.as_deref(), Some(path), "{dir}");
            assert_eq!(
                cell.container_port(&get.port),
                Some(admin.port()),
                "{dir}: the {path} probe goes to the admin port"
            );
        }
        assert_eq!(
            cell.config.listen.proxy_protocol,
            ProxyMode::Required,
            "{dir}: the NLB sends PROXY v2"
        );

        // TLS files come from the TLS Secret's keys.
        assert_eq!(cell.config.tls.mode, TlsMode::Require, "{dir}");
        let volumes = cell.pod().volumes.clone().unwrap_or_default();
        for file in [&cell.config.tls.cert, &cell.config.tls.key] {
            let file = file.as_ref().unwrap().to_str().unwrap().to_owned();
            let (mount, volume) = cell.mount_of(&file);
            let secret_name = volumes
                .iter()
                .find(|v| v.name == volume)
                .and_then(|v| v.secret.as_ref())
                .and_then(|s| s.secret_name.clone())
                .unwrap_or_else(|| panic!("{dir}: {file} is not in a Secret volume"));
            let secret = cell.secret(&secret_name);
            assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"), "{dir}");
            let key = &file[mount.len() + 1..];
            assert!(
                secret.data.as_ref().is_some_and(|d| d.contains_key(key)),
                "{dir}: Secret {secret_name} has no {key}"
            );
        }

        // Scraped at the admin port.
        let monitors = cell.rendered.service_monitors();
        assert_eq!(monitors.len(), 1, "{dir}: one ServiceMonitor");
        let scraped = cell
            .rendered
            .services()
            .into_iter()
            .filter(|s| {
                selects(
                    &monitors[0].spec.selector,
                    s.metadata.labels.as_ref().unwrap(),
                )
            })
            .collect::<Vec<_>>();
        assert!(
            !scraped.is_empty(),
            "{dir}: the ServiceMonitor selects no Service"
        );
        for s in &scraped {
            assert_eq!(
                s.spec.as_ref().unwrap().publish_not_ready_addresses,
                Some(true),
                "{dir}: draining replicas stay scraped (their drain metrics matter most then)"
            );
        }
        for endpoint in &monitors[0].spec.endpoints {
            assert_eq!(endpoint.path.as_deref(), Some("/metrics"));
            for s in &scraped {
                assert_eq!(
                    cell.service_target(s, &IntOrString::String(endpoint.port.clone())),
                    Some(admin.port()),
                    "{dir}: ServiceMonitor port {} of {:?}",
                    endpoint.port,
                    s.metadata.name
                );
            }
        }
    }
}

#[test]
fn termination_grace_period_covers_the_whole_drain() {
    for dir in OVERLAYS {
        let cell = Cell::render(dir);
        let grace = cell
            .pod()
            .termination_grace_period_seconds
            .expect("terminationGracePeriodSeconds");
        let drain = cell.drain_seconds();
        assert!(
            grace >= drain,
            "{dir}: terminationGracePeriodSeconds {grace} < the drain's {drain} s \
             (preStop + propagation + grace{} + {EXIT_MARGIN_S})",
            if cell.config.aws.register {
                format!(" + DeregisterTargets {DEREGISTER_CALL_MAX_S} + deregistration_timeout")
            } else {
                String::new()
            }
        );
        // Not wildly more either: a stuck pod should not linger.
        assert!(
            grace <= drain + 60,
            "{dir}: {grace} s is far beyond the drain's {drain} s"
        );
    }
}

/// The resources `src/discovery/kube.rs` starts watches for, by the label
/// each `Watch::spawn` names, as (API group, plural).
fn watched_by_discovery() -> BTreeSet<(String, String)> {
    let source = std::fs::read_to_string(repo_path("src/discovery/kube.rs")).unwrap();
    let known = [
        (
            <PgcellTenant as kube::Resource>::group(&()).into_owned(),
            <PgcellTenant as kube::Resource>::plural(&()).into_owned(),
        ),
        (
            <Secret as k8s_openapi::Resource>::GROUP.to_owned(),
            <Secret as k8s_openapi::Resource>::URL_PATH_SEGMENT.to_owned(),
        ),
        (
            <EndpointSlice as k8s_openapi::Resource>::GROUP.to_owned(),
            <EndpointSlice as k8s_openapi::Resource>::URL_PATH_SEGMENT.to_owned(),
        ),
    ];
    let mut watched = BTreeSet::new();
    for (_, rest) in source
        .match_indices("Watch::spawn(")
        .map(|(i, _)| source.split_at(i))
    {
        let call = &rest[..rest.find(");").unwrap()];
        let labels: Vec<&str> = call.split('"').skip(1).step_by(2).collect();
        assert_eq!(
            labels.len(),
            1,
            "one resource label per Watch::spawn: {call}"
        );
        let resource = known
            .iter()
            .find(|(_, plural)| plural == labels[0])
            .unwrap_or_else(|| {
                panic!(
                    "discovery watches {:?}: grant it in deploy/kubernetes/base/rbac.yaml and add its type here",
                    labels[0]
                )
            });
        watched.insert(resource.clone());
    }
    assert_eq!(
        watched.len(),
        known.len(),
        "discovery's watches: {watched:?}"
    );
    watched
}

/// (group, resource, verb, name) granted to `namespace/sa` in `namespace`
/// by RoleBindings there; the name is `None` for every object of the
/// resource, else one of the rule's `resourceNames`.
fn granted(r: &Rendered, rbac: &Rendered, namespace: &str, sa: (&str, &str)) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for binding in r.role_bindings() {
        if binding.metadata.namespace.as_deref() != Some(namespace) {
            continue;
        }
        let subject = binding.subjects.iter().flatten().any(|s| {
            s.kind == "ServiceAccount" && s.name == sa.1 && s.namespace.as_deref() == Some(sa.0)
        });
        if !subject {
            continue;
        }
        let rules = match binding.role_ref.kind.as_str() {
            "Role" => r
                .roles()
                .into_iter()
                .chain(rbac.roles())
                .find(|role| {
                    role.metadata.name.as_deref() == Some(&binding.role_ref.name)
                        && role.metadata.namespace.as_deref() == Some(namespace)
                })
                .map(|role| role.rules.clone().unwrap_or_default()),
            "ClusterRole" => r
                .cluster_roles()
                .into_iter()
                .chain(rbac.cluster_roles())
                .find(|role| role.metadata.name.as_deref() == Some(&binding.role_ref.name))
                .map(|role| role.rules.clone().unwrap_or_default()),
            other => panic!("roleRef kind {other}"),
        }
        .unwrap_or_else(|| {
            panic!(
                "{}: RoleBinding to missing {}",
                r.dir, binding.role_ref.name
            )
        });
        for rule in rules {
            assert!(rule.non_resource_urls.is_none());
            // An empty resourceNames list means every object.
            let names: Vec<Option<String>> = match &rule.resource_names {
                Some(names) if !names.is_empty() => names.iter().cloned().map(Some).collect(),
                _ => vec![None],
            };
            for g in rule.api_groups.iter().flatten() {
                for res in rule.resources.iter().flatten() {
                    for v in &rule.verbs {
                        for name in &names {
                            out.insert((g.clone(), res.clone(), v.clone(), name.clone()));
                        }
                    }
                }
            }
        }
    }
    out
}

/// (group, resource, verb, name): see [`granted`].
type Grant = (String, String, String, Option<String>);

/// list + watch of every object of `resources`.
fn with_verbs(resources: impl IntoIterator<Item = (String, String)>) -> BTreeSet<Grant> {
    resources
        .into_iter()
        .flat_map(|(g, r)| ["list", "watch"].map(|v| (g.clone(), r.clone(), v.to_owned(), None)))
        .collect()
}

/// (group, plural) of Secrets.
fn secrets() -> (String, String) {
    (
        <Secret as k8s_openapi::Resource>::GROUP.to_owned(),
        <Secret as k8s_openapi::Resource>::URL_PATH_SEGMENT.to_owned(),
    )
}

#[test]
fn rbac_grants_exactly_what_discovery_watches() {
    let watched = watched_by_discovery();
    // Secrets are watched one by one, by name, and granted per tenant
    // (`rbac_grants_each_pooled_tenant_its_own_secrets`): never all of
    // them.
    let expected = with_verbs(watched.iter().filter(|r| **r != secrets()).cloned());
    for dir in OVERLAYS {
        let cell = Cell::render(dir);
        let r = &cell.rendered;
        let pod = cell.pod();
        let sa_name = pod
            .service_account_name
            .clone()
            .expect("serviceAccountName");
        let ns = cell.deployment().metadata.namespace.clone().unwrap();
        assert!(
            r.service_accounts()
                .iter()
                .any(|s| s.metadata.name.as_deref() == Some(&sa_name)),
            "{dir}: ServiceAccount {sa_name}"
        );
        assert_ne!(
            pod.automount_service_account_token,
            Some(false),
            "{dir}: discovery needs the token"
        );
        assert!(
            r.cluster_role_bindings().is_empty(),
            "{dir}: no cluster-wide grants"
        );
        assert_eq!(
            granted(r, r, &ns, (&ns, &sa_name)),
            expected,
            "{dir}: what pgcell may do in its namespace (list + watch of exactly what src/discovery watches, no Secret)"
        );
        // The ClusterRole for other namespaces' EndpointSlices grants those
        // only, and only through RoleBindings.
        for role in r.cluster_roles() {
            let rules = role.rules.clone().unwrap_or_default();
            let grants: BTreeSet<_> = rules
                .iter()
                .flat_map(|rule| {
                    let g = rule.api_groups.clone().unwrap_or_default();
                    let res = rule.resources.clone().unwrap_or_default();
                    let verbs = rule.verbs.clone();
                    g.into_iter().flat_map(move |g| {
                        let verbs = verbs.clone();
                        res.clone().into_iter().flat_map(move |r| {
                            let g = g.clone();
                            verbs
                                .clone()
                                .into_iter()
                                .map(move |v| (g.clone(), r.clone(), v, None))
                        })
                    })
                })
                .collect();
            assert_eq!(
                grants,
                with_verbs([("discovery.k8s.io".to_owned(), "endpointslices".to_owned())]),
                "{dir}: ClusterRole {:?}",
                role.metadata.name
            );
        }
        // Discovery is on and finds the peers through the headless Service.
        let k = &cell.config.kubernetes;
        assert_eq!(k.mode, DiscoveryMode::On, "{dir}: [kubernetes] mode");
        assert!(
            cell.config.cancel.auto_instance_id,
            "{dir}: [cancel] instance_id = \"auto\""
        );
        let peers = cell.service(
            k.peer_service
                .as_deref()
                .expect("[kubernetes] peer_service"),
        );
        let spec = peers.spec.as_ref().unwrap();
        assert_eq!(
            spec.cluster_ip.as_deref(),
            Some("None"),
            "{dir}: the peer Service is headless"
        );
        assert_ne!(
            spec.publish_not_ready_addresses,
            Some(true),
            "{dir}: only ready replicas are peers"
        );
        assert!(
            spec.selector
                .as_ref()
                .is_some_and(|s| s.iter().all(|(k, v)| cell.pod_labels().get(k) == Some(v))),
            "{dir}: the peer Service selects the pods"
        );
        let data = cell.config.listen.addr.port();
        assert!(
            spec.ports
                .iter()
                .flatten()
                .any(|p| p.port == i32::from(data)
                    && cell.service_target(peers, &IntOrString::Int(p.port)) == Some(data)),
            "{dir}: peers are found at the data port ({data})"
        );
    }
}

/// Lookup for validating the example tenant: any Service has one ready
/// endpoint, no Secret exists.
struct ExampleLookup;

impl crd::Lookup for ExampleLookup {
    fn secret(&self, namespace: &str, name: &str, key: &str) -> Result<String, String> {
        Err(format!(
            "no Secret {namespace}/{name} ({key}) in this example"
        ))
    }
    fn endpoints(&self, _namespace: &str, _service: &ServiceRef) -> Vec<String> {
        vec!["10.0.3.4:5432".to_owned()]
    }
}

#[test]
fn example_tenant_is_valid_and_its_endpoints_are_watchable() {
    let example = Rendered::render(EXAMPLE_TENANT);
    let cell = Cell::render(SELF_REGISTER);
    let tenants = example.tenants();
    assert_eq!(tenants.len(), 1);
    let tenant = tenants[0];
    let config = crd::tenant_config(tenant, &ExampleLookup)
        .unwrap_or_else(|e| panic!("the example PgcellTenant fails pgcell's validation: {e}"));
    assert!(!config.allowed_vpce_ids.is_empty() && config.require_tls);
    let own_ns = cell.deployment().metadata.namespace.clone().unwrap();
    assert_eq!(
        tenant.metadata.namespace.as_deref(),
        Some(own_ns.as_str()),
        "tenants live in pgcell's namespace"
    );
    let service = tenant
        .spec
        .backends
        .service
        .as_ref()
        .expect("backends.service");
    let service_ns = service.namespace.clone().unwrap_or(own_ns.clone());
    let sa = cell.pod().service_account_name.clone().unwrap();
    let grants = granted(&example, &cell.rendered, &service_ns, (&own_ns, &sa));
    assert_eq!(
        grants,
        with_verbs([("discovery.k8s.io".to_owned(), "endpointslices".to_owned())]),
        "pgcell may watch EndpointSlices in {service_ns}, nothing more"
    );
}

/// Lookup for validating the pooled example tenant: every Secret key
/// holds a password.
struct PooledExampleLookup;

impl crd::Lookup for PooledExampleLookup {
    fn secret(&self, _namespace: &str, _name: &str, _key: &str) -> Result<String, String> {
        Ok("example-password".to_owned())
    }
    fn endpoints(&self, _namespace: &str, _service: &ServiceRef) -> Vec<String> {
        Vec::new()
    }
}

#[test]
fn rbac_grants_each_pooled_tenant_its_own_secrets() {
    let example = Rendered::render(EXAMPLE_POOLED_TENANT);
    let cell = Cell::render(SELF_REGISTER);
    let own_ns = cell.deployment().metadata.namespace.clone().unwrap();
    let sa = cell.pod().service_account_name.clone().unwrap();
    let tenants = example.tenants();
    assert_eq!(tenants.len(), 1);
    let tenant = tenants[0];
    let config = crd::tenant_config(tenant, &PooledExampleLookup)
        .unwrap_or_else(|e| panic!("the pooled example fails pgcell's validation: {e}"));
    assert!(!config.users.is_empty() && config.require_tls);
    assert_eq!(tenant.metadata.namespace.as_deref(), Some(own_ns.as_str()));
    let (group, resource) = secrets();
    let referenced: BTreeSet<Grant> = tenant
        .spec
        .users
        .iter()
        .flat_map(|u| {
            ["list", "watch"].map(|v| {
                (
                    group.clone(),
                    resource.clone(),
                    v.to_owned(),
                    Some(u.secret_ref.name.clone()),
                )
            })
        })
        .collect();
    // What the example's RoleBindings add in pgcell's namespace: list +
    // watch of exactly the Secrets the tenant names.
    let added = granted(&example, &cell.rendered, &own_ns, (&own_ns, &sa));
    assert_eq!(
        added, referenced,
        "the example grants list + watch of its own Secrets by name, nothing more"
    );
}

#[test]
fn pod_ip_comes_from_the_downward_api() {
    for dir in OVERLAYS {
        let cell = Cell::render(dir);
        let env = cell.pgcell().env.clone().unwrap_or_default();
        let pod_ip = env
            .iter()
            .find(|e| e.name == "POD_IP")
            .unwrap_or_else(|| panic!("{dir}: POD_IP"));
        let field = pod_ip
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .unwrap_or_else(|| panic!("{dir}: POD_IP from a fieldRef"));
        assert_eq!(field.field_path, "status.podIP", "{dir}");
        assert!(
            cell.config.aws.target_ip.is_none(),
            "{dir}: the registered address is POD_IP"
        );
    }
}

#[test]
fn runs_as_non_root_with_a_read_only_root_filesystem() {
    for dir in OVERLAYS {
        let cell = Cell::render(dir);
        let pod = cell
            .pod()
            .security_context
            .clone()
            .expect("pod securityContext");
        assert_eq!(pod.run_as_non_root, Some(true), "{dir}");
        assert!(pod.run_as_user.is_some_and(|u| u > 0), "{dir}: runAsUser");
        assert_eq!(
            pod.seccomp_profile.map(|s| s.type_).as_deref(),
            Some("RuntimeDefault"),
            "{dir}"
        );
        let c = cell
            .pgcell()
            .security_context
            .clone()
            .expect("container securityContext");
        assert_eq!(c.read_only_root_filesystem, Some(true), "{dir}");
        assert_eq!(c.allow_privilege_escalation, Some(false), "{dir}");
        assert_ne!(c.privileged, Some(true), "{dir}");
        let drop = c.capabilities.and_then(|c| c.drop).unwrap_or_default();
        assert_eq!(drop, ["ALL"], "{dir}: capabilities");
        for m in cell.pgcell().volume_mounts.clone().unwrap_or_default() {
            assert_eq!(
                m.read_only,
                Some(true),
                "{dir}: {} mounted read-only",
                m.mount_path
            );
        }
    }
}

#[test]
fn exactly_one_of_self_registration_and_target_group_binding() {
    let own = Cell::render(SELF_REGISTER);
    assert!(
        own.config.aws.register,
        "self-register: [aws] register = true"
    );
    assert!(own
        .config
        .aws
        .target_group_arn
        .starts_with("arn:aws:elasticloadbalancing:"));
    assert!(
        own.rendered.target_group_bindings().is_empty(),
        "self-register: no TargetGroupBinding"
    );
    let sa = &own.rendered.service_accounts()[0];
    assert!(
        sa.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("eks.amazonaws.com/role-arn"))
            .is_some_and(|arn| arn.starts_with("arn:aws:iam::")),
        "self-register: the IRSA role annotation"
    );

    let tgb = Cell::render(TARGET_GROUP_BINDING);
    assert!(
        !tgb.config.aws.register,
        "target-group-binding: [aws] register = false"
    );
    let bindings = tgb.rendered.target_group_bindings();
    assert_eq!(
        bindings.len(),
        1,
        "target-group-binding: one TargetGroupBinding"
    );
    let b = bindings[0];
    assert_eq!(b.spec.target_type.as_deref(), Some("ip"));
    assert_ne!(b.spec.multi_cluster_target_group, Some(true));
    assert!(b
        .spec
        .target_group_arn
        .as_deref()
        .is_some_and(|a| a.starts_with("arn:aws:elasticloadbalancing:")));
    let service = tgb.service(&b.spec.service_ref.name);
    assert_eq!(
        tgb.service_target(service, &b.spec.service_ref.port),
        Some(tgb.config.listen.addr.port()),
        "the TargetGroupBinding registers the data port"
    );
    let sa = &tgb.rendered.service_accounts()[0];
    assert!(
        sa.metadata
            .annotations
            .as_ref()
            .is_none_or(|a| !a.contains_key("eks.amazonaws.com/role-arn")),
        "target-group-binding: pgcell needs no AWS role"
    );
    let ns = tgb.deployment().metadata.namespace.clone().unwrap();
    let namespace = tgb
        .rendered
        .namespaces()
        .into_iter()
        .find(|n| n.metadata.name.as_deref() == Some(&ns))
        .unwrap_or_else(|| panic!("target-group-binding: Namespace {ns}"));
    assert_eq!(
        namespace
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("elbv2.k8s.aws/pod-readiness-gate-inject"))
            .map(String::as_str),
        Some("enabled"),
        "target-group-binding: the controller's readiness gate keeps rollouts behind the NLB"
    );
}

#[test]
fn replicas_spread_over_zones_and_nodes_and_leave_one_at_a_time() {
    for dir in OVERLAYS {
        let cell = Cell::render(dir);
        let labels = cell.pod_labels();
        let spec = cell.deployment().spec.as_ref().unwrap();
        assert!(
            selects(&spec.selector, &labels),
            "{dir}: Deployment selector"
        );
        assert!(
            spec.replicas.unwrap_or(1) >= 2,
            "{dir}: at least two replicas"
        );
        let pod = cell.pod();
        let spread = pod.topology_spread_constraints.clone().unwrap_or_default();
        assert!(
            spread
                .iter()
                .any(|t| t.topology_key == "topology.kubernetes.io/zone"
                    && t.label_selector
                        .as_ref()
                        .is_some_and(|s| selects(s, &labels))),
            "{dir}: spread over zones"
        );
        let anti = pod
            .affinity
            .as_ref()
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .clone()
            })
            .unwrap_or_default();
        assert!(
            anti.iter()
                .any(|t| t.topology_key == "kubernetes.io/hostname"
                    && t.label_selector
                        .as_ref()
                        .is_some_and(|s| selects(s, &labels))),
            "{dir}: one replica per node"
        );
        let pdbs = cell.rendered.pdbs();
        assert_eq!(pdbs.len(), 1, "{dir}: a PodDisruptionBudget");
        let pdb = pdbs[0].spec.as_ref().unwrap();
        assert!(
            selects(pdb.selector.as_ref().unwrap(), &labels),
            "{dir}: the PDB selects the pods"
        );
        assert_eq!(pdb.max_unavailable, Some(IntOrString::Int(1)), "{dir}");
        let rollout = spec
            .strategy
            .as_ref()
            .and_then(|s| s.rolling_update.as_ref())
            .unwrap();
        assert_eq!(
            rollout.max_unavailable,
            Some(IntOrString::Int(0)),
            "{dir}: surge first, then drain"
        );
        let resources = cell.pgcell().resources.clone().expect("resources");
        assert!(resources
            .requests
            .is_some_and(|r| r.contains_key("cpu") && r.contains_key("memory")));
        assert!(resources.limits.is_some_and(|l| l.contains_key("memory")));
    }
}

#[test]
fn image_tag_is_the_crate_version() {
    for dir in OVERLAYS {
        let cell = Cell::render(dir);
        let image = cell.pgcell().image.clone().unwrap();
        let (_, tag) = image
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("{dir}: {image} has no tag"));
        assert_eq!(tag, env!("CARGO_PKG_VERSION"), "{dir}: image tag");
    }
}
