//! `[kubernetes]`: tenants (`PgcellTenant`), their backends and this
//! replica's peers from the Kubernetes API.

use serde::Deserialize;

use super::Problems;

/// Whether discovery runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiscoveryMode {
    /// On when running in a cluster (`KUBERNETES_SERVICE_HOST` set).
    #[default]
    Auto,
    /// Always on; failing to reach the API is logged and retried.
    On,
    /// File configuration only.
    Off,
}

/// `[kubernetes]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubernetesConfig {
    /// Whether to watch the API.
    pub mode: DiscoveryMode,
    /// Namespace watched; the pod's own when unset.
    pub namespace: Option<String>,
    /// Only `PgcellTenant`s with these labels (`key=value,…`).
    pub label_selector: Option<String>,
    /// pgcell's own (headless) Service: its ready endpoints other than
    /// this pod are the cancel peers.
    pub peer_service: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawKubernetes {
    #[serde(default)]
    mode: DiscoveryMode,
    namespace: Option<String>,
    label_selector: Option<String>,
    peer_service: Option<String>,
}

pub(super) fn kubernetes_from_raw(raw: RawKubernetes, p: &mut Problems) -> KubernetesConfig {
    if raw.mode == DiscoveryMode::On && !cfg!(feature = "kube") {
        p.push(
            "kubernetes.mode",
            "this pgcell was built without the \"kube\" feature",
        );
    }
    KubernetesConfig {
        mode: raw.mode,
        namespace: raw.namespace,
        label_selector: raw.label_selector,
        peer_service: raw.peer_service,
    }
}
