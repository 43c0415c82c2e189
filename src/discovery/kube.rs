//! Watches the Kubernetes API: `PgcellTenant`s, each Secret they name (by
//! name: a `metadata.name` field selector, so no other Secret is ever
//! listed and the Role can name the Secrets in `resourceNames`) and
//! `discovery.k8s.io/v1` EndpointSlices, each through a kube-runtime
//! `watcher` feeding a `reflector` store. Every change wakes one loop that
//! waits [`DEBOUNCE`] for more, then recomputes the whole discovered set
//! from the stores and hands it to [`Shared::set_discovered`] when it
//! differs from the last one.
//!
//! Watch failures (API unreachable, `410 Gone`, a dropped stream) are the
//! watcher's to recover from: it re-lists with backoff, and the stores keep
//! their last contents meanwhile, so routing stays as it was.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ::kube::api::Api;
use ::kube::runtime::reflector::{ObjectRef, Store};
use ::kube::runtime::{reflector, watcher, WatchStreamExt};
use ::kube::{Client, Resource};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use super::crd::{self, PgcellTenant, ServiceRef};
use super::endpoints;
use crate::config::{CancelPeer, Credential, KubernetesConfig, TenantConfig};
use crate::state::{Discovered, Shared};

/// How long a change waits for the changes that usually come with it (a
/// rollout touches several EndpointSlices) before routing is recomputed.
pub const DEBOUNCE: Duration = Duration::from_millis(150);
/// How long a new watch that may never list (a tenant's Service in
/// another namespace, a Secret pgcell may not read) holds back publishing
/// while its first list is under way.
const NEW_WATCH_WAIT: Duration = Duration::from_secs(5);
/// Longest Secret name (a DNS subdomain).
const MAX_SECRET_NAME_LEN: usize = 253;
/// Longest wait between attempts to build a client.
const MAX_CLIENT_BACKOFF: Duration = Duration::from_secs(60);

/// Runs discovery until the task is dropped.
pub(crate) async fn run(shared: Arc<Shared>, config: KubernetesConfig) {
    let mut backoff = Duration::from_secs(1);
    let client = loop {
        match client(&config).await {
            Ok(client) => break client,
            Err(e) => {
                tracing::error!(error = %e, retry_in_s = backoff.as_secs(), "cannot set up the Kubernetes client; the config file's tenants stay in use");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_CLIENT_BACKOFF);
            }
        }
    };
    let namespace = config
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let file = shared.file_config();
    if config.peer_service.is_some() && !file.cancel.auto_instance_id {
        tracing::warn!("kubernetes.peer_service is set but cancel.instance_id is not \"auto\": discovered peers get ids derived from their addresses, which only match replicas using \"auto\"");
    }
    tracing::info!(%namespace, label_selector = config.label_selector.as_deref().unwrap_or(""), peer_service = config.peer_service.as_deref().unwrap_or(""), "watching Kubernetes for tenants and peers");
    let changed = Arc::new(Notify::new());
    let mut tenants_config = watcher::Config::default();
    if let Some(selector) = &config.label_selector {
        tenants_config = tenants_config.labels(selector);
    }
    let tenants = Watch::spawn(
        Api::namespaced(client.clone(), &namespace),
        tenants_config,
        "pgcelltenants",
        changed.clone(),
    );
    let mut discovery = Discovery {
        shared,
        client,
        namespace,
        peer_service: config.peer_service,
        own: own_addresses(file.listen.addr),
        data_port: file.listen.addr.port(),
        changed,
        tenants,
        secrets: BTreeMap::new(),
        slices: BTreeMap::new(),
        published: None,
        problems: HashMap::new(),
    };
    discovery.run().await;
}

/// A client for `config.api_url`, or inferred (kubeconfig, in-cluster).
async fn client(config: &KubernetesConfig) -> Result<Client, String> {
    let kube_config = match &config.api_url {
        Some(url) => {
            let uri = url
                .parse()
                .map_err(|e| format!("kubernetes.api_url: {e}"))?;
            ::kube::Config::new(uri)
        }
        None => ::kube::Config::infer().await.map_err(|e| e.to_string())?,
    };
    Client::try_from(kube_config).map_err(|e| e.to_string())
}

/// Where this replica's own data port is reachable: the pod IP (from
/// `POD_IP`) and the listen address when it is not a wildcard.
fn own_addresses(listen: SocketAddr) -> Vec<SocketAddr> {
    let mut own = Vec::new();
    if let Some(ip) = std::env::var(crate::config::cancel::POD_IP_ENV)
        .ok()
        .and_then(|ip| ip.parse().ok())
    {
        own.push(SocketAddr::new(ip, listen.port()));
    }
    if !listen.ip().is_unspecified() {
        own.push(listen);
    }
    own
}

/// One watched resource: its store, whether its first list completed,
/// the last error while it has not, and the task feeding it (aborted on
/// drop).
struct Watch<K: Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    ready: Arc<AtomicBool>,
    error: Arc<Mutex<Option<String>>>,
    started: Instant,
    task: tokio::task::JoinHandle<()>,
}

impl<K> Watch<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    fn spawn(
        api: Api<K>,
        config: watcher::Config,
        resource: &'static str,
        changed: Arc<Notify>,
    ) -> Watch<K> {
        let (store, writer) = reflector::store();
        let ready = Arc::new(AtomicBool::new(false));
        let listed = ready.clone();
        let error = Arc::new(Mutex::new(None));
        let last_error = error.clone();
        let task = tokio::spawn(async move {
            let mut events = watcher(api, config)
                .default_backoff()
                .reflect(writer)
                .boxed();
            while let Some(event) = events.next().await {
                let label = match &event {
                    Ok(watcher::Event::Apply(_)) => "apply",
                    Ok(watcher::Event::Delete(_)) => "delete",
                    Ok(watcher::Event::Init) => "relist",
                    Ok(watcher::Event::InitApply(_)) => continue,
                    Ok(watcher::Event::InitDone) => "listed",
                    Err(e) => {
                        tracing::warn!(resource, error = %e, "Kubernetes watch failed; retrying with backoff");
                        *last_error.lock().unwrap_or_else(PoisonError::into_inner) =
                            Some(e.to_string());
                        "error"
                    }
                };
                metrics::counter!(crate::metrics::DISCOVERY_EVENTS, "resource" => resource, "event" => label)
                    .increment(1);
                match event {
                    Ok(watcher::Event::InitDone) => {
                        listed.store(true, Ordering::Release);
                        changed.notify_one();
                    }
                    Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {
                        changed.notify_one()
                    }
                    _ => {}
                }
            }
        });
        Watch {
            store,
            ready,
            error,
            started: Instant::now(),
            task,
        }
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// What kept the first list from completing, if it has not.
    fn failure(&self) -> Option<String> {
        if self.is_ready() {
            return None;
        }
        self.error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How long this watch may still hold back publishing while its first
    /// list is due: [`NEW_WATCH_WAIT`] from its start at most.
    fn pending(&self) -> Option<Duration> {
        if self.is_ready() {
            return None;
        }
        let left = NEW_WATCH_WAIT.saturating_sub(self.started.elapsed());
        (!left.is_zero()).then_some(left)
    }
}

impl<K: Resource<DynamicType = ()> + 'static> Drop for Watch<K> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The running discovery: the watches and what was last published.
struct Discovery {
    shared: Arc<Shared>,
    client: Client,
    namespace: String,
    peer_service: Option<String>,
    own: Vec<SocketAddr>,
    data_port: u16,
    changed: Arc<Notify>,
    tenants: Watch<PgcellTenant>,
    /// One watch per Secret the tenants reference, by (namespace, name).
    secrets: BTreeMap<(String, String), Watch<Secret>>,
    /// EndpointSlices by namespace: pgcell's own, and those of tenants'
    /// Services elsewhere.
    slices: BTreeMap<String, Watch<EndpointSlice>>,
    /// Fingerprint of the set last handed to the server.
    published: Option<u64>,
    /// Problems of PgcellTenants left out, by object, as last logged.
    problems: HashMap<String, String>,
}

impl Discovery {
    async fn run(&mut self) {
        self.watch_slices_in(&[self.namespace.clone()].into());
        loop {
            self.changed.notified().await;
            tokio::time::sleep(DEBOUNCE).await;
            if !self.tenants.is_ready() {
                continue;
            }
            let secrets = self.referenced_secrets();
            self.watch_secrets(&secrets);
            let namespaces = self.service_namespaces();
            self.watch_slices_in(&namespaces);
            let pending = [self.slices_pending(), self.secrets_pending()];
            if let Some(wait) = pending.into_iter().flatten().min() {
                let changed = self.changed.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    changed.notify_one();
                });
                continue;
            }
            self.publish();
        }
    }

    /// Namespaces whose EndpointSlices the tenants need.
    fn service_namespaces(&self) -> BTreeSet<String> {
        let mut namespaces: BTreeSet<String> = [self.namespace.clone()].into();
        for t in self.tenants.store.state() {
            if let Some(service) = &t.spec.backends.service {
                let ns = service.namespace.as_deref();
                let ns = ns.or(t.metadata.namespace.as_deref());
                namespaces.insert(ns.unwrap_or(&self.namespace).to_owned());
            }
        }
        namespaces
    }

    /// The Secrets the tenants reference, as (namespace, name). Names that
    /// are not valid Secret names are left out (their tenants are
    /// reported by the lookup), so none can widen a field selector.
    fn referenced_secrets(&self) -> BTreeSet<(String, String)> {
        let mut secrets = BTreeSet::new();
        for t in self.tenants.store.state() {
            let ns = t.metadata.namespace.as_deref().unwrap_or(&self.namespace);
            for u in &t.spec.users {
                if is_secret_name(&u.secret_ref.name) {
                    secrets.insert((ns.to_owned(), u.secret_ref.name.clone()));
                }
            }
        }
        secrets
    }

    /// Starts a watch for each Secret in `secrets` not watched yet, each
    /// selecting that one Secret by name, and stops those no longer
    /// referenced.
    fn watch_secrets(&mut self, secrets: &BTreeSet<(String, String)>) {
        self.secrets.retain(|key, _| secrets.contains(key));
        for (ns, name) in secrets {
            let key = (ns.clone(), name.clone());
            if !self.secrets.contains_key(&key) {
                // What a Role's `resourceNames` is checked against.
                let by_name = format!("metadata.name={name}");
                let watch = Watch::spawn(
                    Api::namespaced(self.client.clone(), ns),
                    watcher::Config::default().fields(&by_name),
                    "secrets",
                    self.changed.clone(),
                );
                self.secrets.insert(key, watch);
            }
        }
    }

    /// How long to wait for a new Secret watch's first list, if any is
    /// still due: [`NEW_WATCH_WAIT`] at most, since a Secret pgcell may not
    /// read never lists, and must not hold back the other tenants.
    fn secrets_pending(&self) -> Option<Duration> {
        self.secrets.values().filter_map(Watch::pending).min()
    }

    /// Starts watches for `namespaces` not watched yet and stops those no
    /// longer needed.
    fn watch_slices_in(&mut self, namespaces: &BTreeSet<String>) {
        self.slices.retain(|ns, _| namespaces.contains(ns));
        for ns in namespaces {
            if !self.slices.contains_key(ns) {
                let watch = Watch::spawn(
                    Api::namespaced(self.client.clone(), ns),
                    watcher::Config::default().labels(endpoints::SERVICE_NAME_LABEL),
                    "endpointslices",
                    self.changed.clone(),
                );
                self.slices.insert(ns.clone(), watch);
            }
        }
    }

    /// How long to wait for a slice watch's first list, if any is still
    /// due. pgcell's own namespace is always waited for; another one
    /// (perhaps not listable at all) for [`NEW_WATCH_WAIT`] at most.
    fn slices_pending(&self) -> Option<Duration> {
        let mut wait = None;
        for (ns, watch) in &self.slices {
            if watch.is_ready() {
                continue;
            }
            if *ns == self.namespace {
                return Some(DEBOUNCE);
            }
            if let Some(left) = watch.pending() {
                wait = Some(wait.map_or(left, |w: Duration| w.min(left)));
            }
        }
        wait
    }

    /// Recomputes tenants and peers and hands them over when changed.
    fn publish(&mut self) {
        let (tenants, problems) = self.tenants();
        for (object, problem) in &problems {
            if self.problems.get(object) != Some(problem) {
                tracing::error!(pgcelltenant = %object, problem = %problem, "PgcellTenant left out");
            }
        }
        for object in self.problems.keys() {
            if !problems.contains_key(object) {
                tracing::info!(pgcelltenant = %object, "PgcellTenant problem resolved");
            }
        }
        self.problems = problems;
        let peers = self.peers();
        let fingerprint = fingerprint(&tenants, &peers);
        if self.published == Some(fingerprint) {
            return;
        }
        let (tenant_count, peer_count) = (tenants.len(), peers.len());
        match self.shared.set_discovered(Discovered { tenants, peers }) {
            Ok(()) => {
                self.published = Some(fingerprint);
                metrics::gauge!(crate::metrics::DISCOVERY_TENANTS).set(tenant_count as f64);
                if self.peer_service.is_some() {
                    metrics::gauge!(crate::metrics::DISCOVERY_PEERS).set(peer_count as f64);
                }
                tracing::info!(
                    tenants = tenant_count,
                    peers = peer_count,
                    "routing updated from Kubernetes"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "discovered tenants not applied; routing unchanged")
            }
        }
    }

    /// Every valid PgcellTenant as a tenant, and the problems of the
    /// others by `namespace/name`.
    fn tenants(&self) -> (Vec<TenantConfig>, HashMap<String, String>) {
        let mut objects = self.tenants.store.state();
        objects.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });
        let lookup = StoreLookup {
            secrets: &self.secrets,
            slices: &self.slices,
        };
        let mut tenants: Vec<TenantConfig> = Vec::new();
        let mut owners: HashMap<String, String> = HashMap::new();
        let mut problems = HashMap::new();
        for object in objects {
            let key = format!(
                "{}/{}",
                object.metadata.namespace.as_deref().unwrap_or_default(),
                object.metadata.name.as_deref().unwrap_or_default()
            );
            match crd::tenant_config(&object, &lookup) {
                Ok(t) => match owners.get(&t.id) {
                    Some(first) => {
                        problems.insert(
                            key,
                            format!("tenant id {:?} is already PgcellTenant {first}'s", t.id),
                        );
                    }
                    None => {
                        owners.insert(t.id.clone(), key);
                        tenants.push(t);
                    }
                },
                Err(problem) => {
                    problems.insert(key, problem);
                }
            }
        }
        (tenants, problems)
    }

    /// The other replicas behind `peer_service`.
    fn peers(&self) -> Vec<CancelPeer> {
        let (Some(service), Some(watch)) = (&self.peer_service, self.slices.get(&self.namespace))
        else {
            return Vec::new();
        };
        let slices = watch.store.state();
        endpoints::peers(
            slices
                .iter()
                .map(|s| s.as_ref())
                .filter(|s| endpoints::belongs_to(s, service)),
            self.data_port,
            &self.own,
        )
    }
}

/// Changes to what would be published, passwords included (their
/// `Debug` is redacted).
fn fingerprint(tenants: &[TenantConfig], peers: &[CancelPeer]) -> u64 {
    let mut hasher = DefaultHasher::new();
    format!("{tenants:?}{peers:?}").hash(&mut hasher);
    for t in tenants {
        for u in &t.users {
            if let Credential::Password(pw) = &u.credential {
                pw.0.hash(&mut hasher);
            }
        }
    }
    hasher.finish()
}

/// Whether `name` is a valid Secret name: a DNS subdomain (RFC 1123),
/// so that it is safe inside a field selector.
fn is_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SECRET_NAME_LEN
        && name.split('.').all(|label| {
            let bytes = label.as_bytes();
            !bytes.is_empty()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
                && bytes[0] != b'-'
                && bytes[bytes.len() - 1] != b'-'
        })
}

/// Secrets and endpoints from the reflector stores.
struct StoreLookup<'a> {
    secrets: &'a BTreeMap<(String, String), Watch<Secret>>,
    slices: &'a BTreeMap<String, Watch<EndpointSlice>>,
}

impl crd::Lookup for StoreLookup<'_> {
    fn secret(&self, namespace: &str, name: &str, key: &str) -> Result<String, String> {
        if !is_secret_name(name) {
            return Err(format!("{name:?} is not a valid Secret name"));
        }
        let watch = self
            .secrets
            .get(&(namespace.to_owned(), name.to_owned()))
            .ok_or_else(|| format!("Secret {namespace}/{name} not found"))?;
        if let Some(error) = watch.failure() {
            return Err(format!(
                "Secret {namespace}/{name} could not be read (is list and watch of it granted to pgcell? see docs/discovery.md, RBAC): {error}"
            ));
        }
        let secret = watch
            .store
            .get(&ObjectRef::new(name).within(namespace))
            .ok_or_else(|| format!("Secret {namespace}/{name} not found"))?;
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| b.0.clone())
            .or_else(|| {
                let string_data = secret.string_data.as_ref()?;
                string_data.get(key).map(|s| s.clone().into_bytes())
            })
            .ok_or_else(|| format!("Secret {namespace}/{name} has no key {key:?}"))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| format!("key {key:?} of Secret {namespace}/{name} is not UTF-8"))?;
        // Secrets made from files often end with a newline.
        let text = text.trim_end_matches(['\r', '\n']);
        if text.is_empty() {
            return Err(format!("key {key:?} of Secret {namespace}/{name} is empty"));
        }
        Ok(text.to_owned())
    }

    fn endpoints(&self, namespace: &str, service: &ServiceRef) -> Vec<String> {
        let Some(watch) = self.slices.get(namespace) else {
            return Vec::new();
        };
        let slices = watch.store.state();
        endpoints::ready_addresses(
            slices
                .iter()
                .map(|s| s.as_ref())
                .filter(|s| endpoints::belongs_to(s, &service.name)),
            &service.port,
        )
    }

    fn endpoint_zones(&self, namespace: &str, service: &ServiceRef) -> BTreeMap<String, String> {
        let Some(watch) = self.slices.get(namespace) else {
            return BTreeMap::new();
        };
        let slices = watch.store.state();
        endpoints::zones(
            slices
                .iter()
                .map(|s| s.as_ref())
                .filter(|s| endpoints::belongs_to(s, &service.name)),
            &service.port,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::is_secret_name;

    #[test]
    fn only_dns_subdomains_go_into_a_field_selector() {
        for ok in ["acme-users", "a", "acme.users-2", &"a".repeat(253)] {
            assert!(is_secret_name(ok), "{ok}");
        }
        for bad in [
            "",
            "Acme",
            "-acme",
            "acme-",
            "a..b",
            "a,metadata.name!=b",
            "a=b",
            "a b",
            &"a".repeat(254),
        ] {
            assert!(!is_secret_name(bad), "{bad}");
        }
    }
}
