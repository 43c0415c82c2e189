//! Rendering kustomizations and parsing every object into a typed struct:
//! k8s-openapi's for built-in kinds, pgcell's `PgcellTenant`, and structs
//! of our own (unknown fields denied) for the AWS Load Balancer
//! Controller's TargetGroupBinding and the Prometheus Operator's
//! ServiceMonitor. An object of any other kind fails the test, and so does
//! a field the typed struct does not know (the object is serialized back
//! and compared with what was rendered, so nothing is dropped silently).

use std::collections::BTreeMap;
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use pgcell::crd::PgcellTenant;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{repo_path, run};

/// `elbv2.k8s.aws/v1beta1` TargetGroupBinding (AWS Load Balancer
/// Controller), the fields of its CRD.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TargetGroupBinding {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: TargetGroupBindingSpec,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TargetGroupBindingSpec {
    #[serde(
        rename = "targetGroupARN",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub target_group_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_group_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_type: Option<String>,
    pub service_ref: TgbServiceRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networking: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address_type: Option<String>,
    #[serde(rename = "vpcID", default, skip_serializing_if = "Option::is_none")]
    pub vpc_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multi_cluster_target_group: Option<bool>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TgbServiceRef {
    pub name: String,
    pub port: IntOrString,
}

/// `monitoring.coreos.com/v1` ServiceMonitor (Prometheus Operator), the
/// fields used here.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceMonitor {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: ServiceMonitorSpec,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    pub selector: LabelSelector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<NamespaceSelector>,
    pub endpoints: Vec<ScrapeEndpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_label: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NamespaceSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub any: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_names: Vec<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ScrapeEndpoint {
    pub port: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scrape_timeout: Option<String>,
}

/// One rendered object, typed.
#[derive(Debug)]
pub enum Object {
    Namespace(Box<Namespace>),
    Crd(Box<CustomResourceDefinition>),
    ServiceAccount(Box<ServiceAccount>),
    Role(Box<Role>),
    RoleBinding(Box<RoleBinding>),
    ClusterRole(Box<ClusterRole>),
    ClusterRoleBinding(Box<ClusterRoleBinding>),
    ConfigMap(Box<ConfigMap>),
    Secret(Box<Secret>),
    Service(Box<Service>),
    Deployment(Box<Deployment>),
    PodDisruptionBudget(Box<PodDisruptionBudget>),
    ServiceMonitor(Box<ServiceMonitor>),
    TargetGroupBinding(Box<TargetGroupBinding>),
    PgcellTenant(Box<PgcellTenant>),
}

/// Every object of one rendered kustomization.
pub struct Rendered {
    /// The kustomization directory, relative to the repository.
    pub dir: String,
    pub objects: Vec<Object>,
}

macro_rules! all_of {
    ($fn:ident, $variant:ident, $ty:ty) => {
        pub fn $fn(&self) -> Vec<&$ty> {
            self.objects
                .iter()
                .filter_map(|o| match o {
                    Object::$variant(x) => Some(&**x),
                    _ => None,
                })
                .collect()
        }
    };
}

impl Rendered {
    /// `kubectl kustomize <repo>/<dir>`, every document parsed.
    pub fn render(dir: &str) -> Rendered {
        Rendered::render_path_as(&repo_path(dir), dir)
    }

    /// `kubectl kustomize <path>`, every document parsed.
    pub fn render_path(path: &std::path::Path) -> Rendered {
        Rendered::render_path_as(path, &path.display().to_string())
    }

    fn render_path_as(path: &std::path::Path, dir: &str) -> Rendered {
        let yaml = run(Command::new("kubectl").arg("kustomize").arg(path), 120);
        let mut objects = Vec::new();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&yaml)
            .unwrap_or_else(|e| panic!("{dir}: the rendered manifests are not YAML: {e}"));
        for value in docs {
            if value.is_null() {
                continue;
            }
            objects.push(parse(dir, &value));
        }
        assert!(!objects.is_empty(), "{dir} rendered nothing");
        Rendered {
            dir: dir.to_owned(),
            objects,
        }
    }

    all_of!(namespaces, Namespace, Namespace);
    all_of!(crds, Crd, CustomResourceDefinition);
    all_of!(service_accounts, ServiceAccount, ServiceAccount);
    all_of!(roles, Role, Role);
    all_of!(role_bindings, RoleBinding, RoleBinding);
    all_of!(cluster_roles, ClusterRole, ClusterRole);
    all_of!(
        cluster_role_bindings,
        ClusterRoleBinding,
        ClusterRoleBinding
    );
    all_of!(config_maps, ConfigMap, ConfigMap);
    all_of!(secrets, Secret, Secret);
    all_of!(services, Service, Service);
    all_of!(deployments, Deployment, Deployment);
    all_of!(pdbs, PodDisruptionBudget, PodDisruptionBudget);
    all_of!(service_monitors, ServiceMonitor, ServiceMonitor);
    all_of!(
        target_group_bindings,
        TargetGroupBinding,
        TargetGroupBinding
    );
    all_of!(tenants, PgcellTenant, PgcellTenant);

    /// The one Deployment.
    pub fn deployment(&self) -> &Deployment {
        let all = self.deployments();
        assert_eq!(all.len(), 1, "{}: one Deployment", self.dir);
        all[0]
    }
}

/// `value` as the type its apiVersion and kind name.
fn parse(dir: &str, value: &Value) -> Object {
    let api_version = value["apiVersion"].as_str().unwrap_or_default();
    let kind = value["kind"].as_str().unwrap_or_default();
    let name = value["metadata"]["name"].as_str().unwrap_or_default();
    let what = format!("{dir}: {api_version} {kind} {name}");
    macro_rules! builtin {
        ($($ty:ty => $variant:ident),* $(,)?) => {
            $(
                if api_version == <$ty as k8s_openapi::Resource>::API_VERSION
                    && kind == <$ty as k8s_openapi::Resource>::KIND
                {
                    return Object::$variant(Box::new(typed::<$ty>(&what, value)));
                }
            )*
        };
    }
    builtin!(
        Namespace => Namespace,
        CustomResourceDefinition => Crd,
        ServiceAccount => ServiceAccount,
        Role => Role,
        RoleBinding => RoleBinding,
        ClusterRole => ClusterRole,
        ClusterRoleBinding => ClusterRoleBinding,
        ConfigMap => ConfigMap,
        Secret => Secret,
        Service => Service,
        Deployment => Deployment,
        PodDisruptionBudget => PodDisruptionBudget,
    );
    let tenant_api = format!(
        "{}/{}",
        <PgcellTenant as kube::Resource>::group(&()),
        <PgcellTenant as kube::Resource>::version(&())
    );
    match (api_version, kind) {
        ("monitoring.coreos.com/v1", "ServiceMonitor") => {
            Object::ServiceMonitor(Box::new(typed(&what, value)))
        }
        ("elbv2.k8s.aws/v1beta1", "TargetGroupBinding") => {
            Object::TargetGroupBinding(Box::new(typed(&what, value)))
        }
        (v, k) if v == tenant_api && k == <PgcellTenant as kube::Resource>::kind(&()) => {
            Object::PgcellTenant(Box::new(typed(&what, value)))
        }
        _ => panic!("{what}: a kind this test does not know; add its type to manifests.rs"),
    }
}

/// `value` as a `T`, failing on malformed fields and on fields `T` does
/// not have (they would be lost in the round trip).
fn typed<T: DeserializeOwned + Serialize>(what: &str, value: &Value) -> T {
    let typed: T = serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{what}: {e}"));
    let back = serde_json::to_value(&typed).unwrap();
    let mut lost = Vec::new();
    lost_fields(value, &back, String::new(), &mut lost);
    assert!(
        lost.is_empty(),
        "{what}: fields its type does not know or reads differently: {lost:?}"
    );
    typed
}

/// Paths of `original` that `back` does not have, or has with another
/// value.
fn lost_fields(original: &Value, back: &Value, path: String, lost: &mut Vec<String>) {
    match (original, back) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                match b.get(k) {
                    Some(w) => lost_fields(v, w, format!("{path}.{k}"), lost),
                    // An explicit empty value reads back as absent.
                    None if is_empty(v) => {}
                    None => lost.push(format!("{path}.{k}")),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                lost_fields(v, w, format!("{path}[{i}]"), lost);
            }
        }
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        (a, b) if a == b => {}
        (a, b) => lost.push(format!("{path}: {a} became {b}")),
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// `labels` matched by `selector` (matchLabels and matchExpressions).
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            other => panic!("selector operator {other}"),
        }
    });
    let empty = selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|m| m.is_empty());
    !empty && by_labels && by_expressions
}

#[test]
fn a_misspelled_or_unknown_field_fails() {
    let good = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"ports": [{"port": 1, "targetPort": "admin"}]}
    });
    let _: Service = typed("good", &good);
    let mut bad = good.clone();
    bad["spec"]["ports"][0]["targetport"] = serde_json::json!(2);
    let caught = std::panic::catch_unwind(|| typed::<Service>("bad", &bad));
    assert!(caught.is_err(), "a field Service does not have must fail");
    let mut bad = good;
    bad["spec"]["clusterIP"] = serde_json::json!(7);
    let caught = std::panic::catch_unwind(|| typed::<Service>("bad", &bad));
    assert!(caught.is_err(), "a malformed field must fail");
    let unknown = serde_json::json!({"apiVersion": "example.com/v1", "kind": "Thing", "metadata": {"name": "x"}});
    assert!(
        std::panic::catch_unwind(|| parse("test", &unknown)).is_err(),
        "unknown kinds fail"
    );
}
