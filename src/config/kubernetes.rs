//! `[kubernetes]`: tenants (`PgcellTenant`), their backends and this
//! replica's peers from the Kubernetes API.

use serde::Deserialize;

use super::problems::Problems;

/// Whether discovery runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiscoveryMode {
    /// On when running in a cluster (`KUBERNETES_SERVICE_HOST` set) or
    /// when `api_url` is given.
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
    /// The API server's URL, spoken to without credentials (`kubectl
    /// proxy`, tests); the in-cluster service account (or `KUBECONFIG`)
    /// when unset.
    pub api_url: Option<String>,
}

impl KubernetesConfig {
    /// True when discovery should run in this process: `on`, or `auto`
    /// inside a cluster or with `api_url` set.
    pub fn enabled(&self) -> bool {
        match self.mode {
            DiscoveryMode::Off => false,
            DiscoveryMode::On => true,
            DiscoveryMode::Auto => {
                self.api_url.is_some() || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawKubernetes {
    #[serde(default)]
    mode: DiscoveryMode,
    namespace: Option<String>,
    label_selector: Option<String>,
    peer_service: Option<String>,
    api_url: Option<String>,
}

pub(super) fn kubernetes_from_raw(raw: RawKubernetes, p: &mut Problems) -> KubernetesConfig {
    if raw.mode == DiscoveryMode::On && !cfg!(feature = "kube") {
        p.push(
            "kubernetes.mode",
            "this pgcell was built without the \"kube\" feature",
        );
    }
    if let Some(ns) = &raw.namespace {
        if !super::tenants::is_dns_label(ns) {
            p.push(
                "kubernetes.namespace",
                format!("{ns:?} is not a namespace name"),
            );
        }
    }
    if let Some(svc) = &raw.peer_service {
        if !super::tenants::is_dns_label(svc) {
            p.push(
                "kubernetes.peer_service",
                format!("{svc:?} is not a Service name"),
            );
        }
    }
    if let Some(url) = &raw.api_url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            p.push(
                "kubernetes.api_url",
                format!("{url:?} is not an http:// or https:// URL"),
            );
        }
    }
    KubernetesConfig {
        mode: raw.mode,
        namespace: raw.namespace,
        label_selector: raw.label_selector,
        peer_service: raw.peer_service,
        api_url: raw.api_url,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::Config;
    use super::*;

    fn parse(section: &str) -> Result<Config, super::super::ConfigError> {
        let text = format!("[listen]\naddr = \"127.0.0.1:6432\"\n{section}");
        Config::parse(&text, Path::new("."))
    }

    #[test]
    fn keys_are_parsed_and_checked() {
        let c = parse(
            "[kubernetes]\nmode = \"off\"\nnamespace = \"cell-1\"\npeer_service = \"pgcell\"\napi_url = \"http://127.0.0.1:8001\"\nlabel_selector = \"cell=1\"\n",
        )
        .unwrap()
        .kubernetes;
        assert_eq!(c.mode, DiscoveryMode::Off);
        assert!(!c.enabled());
        assert_eq!(c.namespace.as_deref(), Some("cell-1"));
        let auto = parse("[kubernetes]\napi_url = \"http://127.0.0.1:8001\"\n").unwrap();
        assert!(auto.kubernetes.enabled(), "auto with an API URL is on");
        let err = parse(
            "[kubernetes]\nnamespace = \"Cell_1\"\npeer_service = \"\"\napi_url = \"127.0.0.1:8001\"\n",
        )
        .unwrap_err();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "kubernetes.namespace",
                "kubernetes.peer_service",
                "kubernetes.api_url"
            ]
        );
    }
}
