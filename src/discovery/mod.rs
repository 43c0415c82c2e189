//! Tenants, their backends and this replica's peers from Kubernetes.
//!
//! With `[kubernetes] mode = "off"`, outside a cluster in `auto` mode, or
//! without the `kube` feature, nothing runs and the config file alone
//! configures pgcell. Otherwise [`kube`] watches `PgcellTenant`s
//! ([`crd`]), Secrets and EndpointSlices ([`endpoints`]) and feeds the
//! result to [`Shared::set_discovered`]; the config file's tenants win on
//! an id clash.

#[cfg(feature = "kube")]
pub mod crd;
#[cfg(feature = "kube")]
pub(crate) mod endpoints;
#[cfg(feature = "kube")]
pub(crate) mod kube;

use std::sync::Arc;

use crate::state::Shared;

/// Runs discovery for the life of the server, feeding what it finds to
/// [`Shared::set_discovered`]; returns at once when discovery is off.
pub(crate) async fn run(shared: Arc<Shared>) {
    let config = shared.file_config().kubernetes;
    if !config.enabled() {
        return;
    }
    #[cfg(feature = "kube")]
    kube::run(shared, config).await;
    #[cfg(not(feature = "kube"))]
    tracing::warn!(
        "[kubernetes] asks for discovery, but this pgcell was built without the \"kube\" feature"
    );
}
