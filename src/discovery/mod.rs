//! Tenants, their backends and this replica's peers from Kubernetes.
//!
//! With `[kubernetes] mode = "off"`, outside a cluster in `auto` mode, or
//! without the `kube` feature, nothing runs and the config file alone
//! configures pgcell.

#[cfg(feature = "kube")]
pub mod kube;
