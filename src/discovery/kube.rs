//! Kubernetes discovery (PgcellTenant, EndpointSlices).
