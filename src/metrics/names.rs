//! Every metric's name (and the help text of those rendered beside the
//! exporter), the label value for an unknown tenant, the histogram
//! buckets: one place to read what pgcell exports.

/// TCP connections accepted on the data port, before any parsing.
pub(crate) const TCP_ACCEPTED: &str = "pgcell_tcp_connections_accepted_total";
/// Client connections routed to a tenant (labels: tenant, tls).
pub(crate) const CLIENT_ACCEPTED: &str = "pgcell_client_connections_accepted_total";
/// Client connections being served (labels: tenant, tls).
pub(crate) const CLIENT_ACTIVE: &str = "pgcell_client_connections_active";
/// Connections refused by routing or policy (labels: reason, tenant).
pub(crate) const REJECTIONS: &str = "pgcell_client_rejections_total";
/// Failures before a `StartupMessage` was complete (label: kind).
pub(crate) const HANDSHAKE_ERRORS: &str = "pgcell_handshake_errors_total";
/// PROXY protocol headers read (labels: version, command).
pub(crate) const PROXY_HEADERS: &str = "pgcell_proxy_headers_total";
/// Time to open (and secure) a backend connection (label: tenant).
pub(crate) const BACKEND_CONNECT_SECONDS: &str = "pgcell_backend_connect_seconds";
/// Failed backend connection attempts (label: tenant).
pub(crate) const BACKEND_CONNECT_ERRORS: &str = "pgcell_backend_connect_errors_total";
/// Sessions that ended because the backend went away (label: tenant).
pub(crate) const BACKEND_LOST: &str = "pgcell_backend_lost_total";
/// Bytes from clients to backends (label: tenant).
pub(crate) const CLIENT_BYTES_RECEIVED: &str = "pgcell_client_received_bytes_total";
/// Bytes from backends to clients (label: tenant).
pub(crate) const CLIENT_BYTES_SENT: &str = "pgcell_client_sent_bytes_total";
/// Length of client sessions (label: tenant).
pub(crate) const SESSION_SECONDS: &str = "pgcell_session_duration_seconds";
/// Cancel requests received (label: outcome).
pub(crate) const CANCEL_REQUESTS: &str = "pgcell_cancel_requests_total";
/// Failed connections by kind (client, policy, backend, internal).
pub(crate) const CONNECTION_ERRORS: &str = "pgcell_connection_errors_total";
/// Time clients waited for a pooled backend (label: tenant).
pub(crate) const POOL_WAIT_SECONDS: &str = "pgcell_pool_wait_seconds";
/// Help text of [`POOL_WAIT_SECONDS`].
pub(crate) const POOL_WAIT_SECONDS_HELP: &str =
    "Time clients waited for a pooled backend connection.";
/// Client logins pgcell refused (labels: tenant, reason).
pub(crate) const AUTH_FAILURES: &str = "pgcell_auth_failures_total";
/// auth_query fetches that failed: backend down, auth user refused, query
/// error (labels: tenant, reason).
pub(crate) const AUTH_QUERY_ERRORS: &str = "pgcell_auth_query_errors_total";
/// auth_query lookups answered from the cache (label: tenant).
pub(crate) const AUTH_QUERY_CACHE_HITS: &str = "pgcell_auth_query_cache_hits_total";
/// auth_query lookups that asked the backend (label: tenant).
pub(crate) const AUTH_QUERY_CACHE_MISSES: &str = "pgcell_auth_query_cache_misses_total";
/// How long transaction-mode clients held a backend (label: tenant).
pub(crate) const TRANSACTION_SECONDS: &str = "pgcell_transaction_duration_seconds";
/// Queries (simple `Query` and extended `Execute`) sent by pooled clients
/// (label: tenant).
pub(crate) const QUERIES: &str = "pgcell_queries_total";
/// Help text of [`TRANSACTION_SECONDS`].
pub(crate) const TRANSACTION_SECONDS_HELP: &str =
    "Time a transaction-mode client held its backend, per transaction.";
/// Transactions completed through transaction pools (label: tenant).
pub(crate) const TRANSACTIONS: &str = "pgcell_transactions_total";
/// Clients waiting for a pooled backend (label: tenant).
pub(crate) const POOL_WAITING: &str = "pgcell_pool_waiting_clients";
/// Most backends the tenant's pools may open, summed (label: tenant).
pub(crate) const POOL_SIZE: &str = "pgcell_pool_size";
/// Backends open or opening in the tenant's pools (label: tenant).
pub(crate) const POOL_OPEN: &str = "pgcell_pool_backends_open";
/// Backends idle in the tenant's pools (label: tenant).
pub(crate) const POOL_IDLE: &str = "pgcell_pool_backends_idle";
/// Backends checked out of the tenant's pools (label: tenant).
pub(crate) const POOL_IN_USE: &str = "pgcell_pool_backends_in_use";
/// 1 while the tenant is paused by the admin console (label: tenant).
pub(crate) const POOL_PAUSED: &str = "pgcell_pool_paused";
/// Commands run on the admin console (labels: command, outcome).
pub(crate) const CONSOLE_COMMANDS: &str = "pgcell_console_commands_total";
/// Statements whose session state a transaction-mode backend switch
/// loses (labels: tenant, kind).
pub(crate) const SESSION_STATE: &str = "pgcell_session_state_statements_total";
/// 1 while pgcell is ready to serve, else 0.
pub(crate) const READY: &str = "pgcell_ready";
/// Certificate reloads (label: outcome).
pub(crate) const TLS_RELOADS: &str = "pgcell_tls_reloads_total";
/// Configuration reloads (label: outcome).
pub(crate) const CONFIG_RELOADS: &str = "pgcell_config_reloads_total";
/// Health-port connections answered.
pub(crate) const HEALTH_CHECKS: &str = "pgcell_health_checks_total";
/// Build information, always 1 (labels: version, revision).
pub const BUILD_INFO: &str = "pgcell_build_info";
/// This replica's NLB target state, 1 for the current one (label: state:
/// `unregistered`, `registering`, `initial`, `healthy`, `unhealthy`,
/// `unhealthy.draining`, `draining`, `unavailable`, `unused`,
/// `deregistering`, `deregistered`, `error`).
pub(crate) const TARGET_STATE: &str = "pgcell_target_state";
/// ELBv2 API calls (labels: operation, outcome: `ok`, `retried`, `error`).
pub(crate) const TARGET_API_CALLS: &str = "pgcell_target_api_calls_total";
/// Times the target was found missing from the target group and
/// registered again.
pub(crate) const TARGET_REREGISTRATIONS: &str = "pgcell_target_reregistrations_total";
/// The drain phase, 1 for the current one (label: phase: `serving`,
/// `deregistering`, `propagating`, `waiting_for_deregistration`,
/// `closing_sessions`, `stopped`).
pub(crate) const DRAIN_PHASE: &str = "pgcell_drain_phase";
/// Sessions closed by shutdown (label: how: `at_transaction_boundary`,
/// `grace_expired`).
pub(crate) const SHUTDOWN_CLOSED: &str = "pgcell_shutdown_closed_sessions_total";
/// A server's role as the probe last saw it: 1 primary, 0 replica, -1 unknown.
pub(crate) const SERVER_ROLE: &str = "pgcell_server_role";
/// 1 while a server gets no new clients (unreachable, lagging).
pub(crate) const SERVER_EXCLUDED: &str = "pgcell_server_excluded";
/// Bytes of WAL a replica has not replayed.
pub(crate) const REPLICA_LAG_BYTES: &str = "pgcell_replica_lag_bytes";
/// Seconds since a lagging replica replayed a transaction (0 caught up).
pub(crate) const REPLICA_LAG_SECONDS: &str = "pgcell_replica_lag_seconds";
/// 1 while two servers of a tenant report they are primary.
pub(crate) const SPLIT_BRAIN: &str = "pgcell_split_brain";
/// Discovered tenants whose id is taken by a tenant in the config file.
pub(crate) const DISCOVERY_CLASHES: &str = "pgcell_discovery_tenant_clashes";
/// Tenants discovered from Kubernetes and in use.
pub(crate) const DISCOVERY_TENANTS: &str = "pgcell_discovery_tenants";
/// Kubernetes watch events and restarts (labels: resource, event).
pub(crate) const DISCOVERY_EVENTS: &str = "pgcell_discovery_events_total";
/// Peers (other replicas) known for cancel forwarding.
pub(crate) const DISCOVERY_PEERS: &str = "pgcell_discovery_peers";

/// The git revision this binary was built from (`build.rs`: the
/// `PGCELL_GIT_REVISION` build environment, else `git rev-parse`, else
/// `unknown`).
pub const GIT_REVISION: &str = env!("PGCELL_GIT_REVISION");

/// Label value for connections whose tenant is unknown or not configured.
pub(crate) const NO_TENANT: &str = "";

pub(crate) const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
pub(super) const SESSION_BUCKETS: &[f64] = &[
    0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 14400.0, 86400.0,
];
