//! Every metric pgcell exports: name, unit and help text in one place.
//!
//! Names follow Prometheus conventions (`pgcell_` prefix, `_total` counters,
//! base units). Tenant labels carry only configured tenant ids, so label
//! cardinality is bounded by the configuration.

use std::sync::OnceLock;
use std::time::Duration;

pub(crate) mod tally;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// TCP connections accepted on the data port, before any parsing.
pub const TCP_ACCEPTED: &str = "pgcell_tcp_connections_accepted_total";
/// Client connections routed to a tenant (labels: tenant, tls).
pub const CLIENT_ACCEPTED: &str = "pgcell_client_connections_accepted_total";
/// Client connections being served (labels: tenant, tls).
pub const CLIENT_ACTIVE: &str = "pgcell_client_connections_active";
/// Connections refused by routing or policy (labels: reason, tenant).
pub const REJECTIONS: &str = "pgcell_client_rejections_total";
/// Failures before a `StartupMessage` was complete (label: kind).
pub const HANDSHAKE_ERRORS: &str = "pgcell_handshake_errors_total";
/// PROXY protocol headers read (labels: version, command).
pub const PROXY_HEADERS: &str = "pgcell_proxy_headers_total";
/// Time to open (and secure) a backend connection (label: tenant).
pub const BACKEND_CONNECT_SECONDS: &str = "pgcell_backend_connect_seconds";
/// Failed backend connection attempts (label: tenant).
pub const BACKEND_CONNECT_ERRORS: &str = "pgcell_backend_connect_errors_total";
/// Sessions that ended because the backend went away (label: tenant).
pub const BACKEND_LOST: &str = "pgcell_backend_lost_total";
/// Bytes from clients to backends (label: tenant).
pub const CLIENT_BYTES_RECEIVED: &str = "pgcell_client_received_bytes_total";
/// Bytes from backends to clients (label: tenant).
pub const CLIENT_BYTES_SENT: &str = "pgcell_client_sent_bytes_total";
/// Length of client sessions (label: tenant).
pub const SESSION_SECONDS: &str = "pgcell_session_duration_seconds";
/// Cancel requests received (label: outcome).
pub const CANCEL_REQUESTS: &str = "pgcell_cancel_requests_total";
/// Failed connections by kind (client, policy, backend, internal).
pub const CONNECTION_ERRORS: &str = "pgcell_connection_errors_total";
/// Time clients waited for a pooled backend (label: tenant).
pub const POOL_WAIT_SECONDS: &str = "pgcell_pool_wait_seconds";
/// Help text of [`POOL_WAIT_SECONDS`].
pub(crate) const POOL_WAIT_SECONDS_HELP: &str =
    "Time clients waited for a pooled backend connection.";
/// Client logins pgcell refused (labels: tenant, reason).
pub const AUTH_FAILURES: &str = "pgcell_auth_failures_total";
/// auth_query fetches that failed: backend down, auth user refused, query
/// error (labels: tenant, reason).
pub const AUTH_QUERY_ERRORS: &str = "pgcell_auth_query_errors_total";
/// auth_query lookups answered from the cache (label: tenant).
pub const AUTH_QUERY_CACHE_HITS: &str = "pgcell_auth_query_cache_hits_total";
/// auth_query lookups that asked the backend (label: tenant).
pub const AUTH_QUERY_CACHE_MISSES: &str = "pgcell_auth_query_cache_misses_total";
/// How long transaction-mode clients held a backend (label: tenant).
pub const TRANSACTION_SECONDS: &str = "pgcell_transaction_duration_seconds";
/// Queries (simple `Query` and extended `Execute`) sent by pooled clients
/// (label: tenant).
pub const QUERIES: &str = "pgcell_queries_total";
/// Help text of [`TRANSACTION_SECONDS`].
pub(crate) const TRANSACTION_SECONDS_HELP: &str =
    "Time a transaction-mode client held its backend, per transaction.";
/// Transactions completed through transaction pools (label: tenant).
pub const TRANSACTIONS: &str = "pgcell_transactions_total";
/// Clients waiting for a pooled backend (label: tenant).
pub const POOL_WAITING: &str = "pgcell_pool_waiting_clients";
/// Most backends the tenant's pools may open, summed (label: tenant).
pub const POOL_SIZE: &str = "pgcell_pool_size";
/// Backends open or opening in the tenant's pools (label: tenant).
pub const POOL_OPEN: &str = "pgcell_pool_backends_open";
/// Backends idle in the tenant's pools (label: tenant).
pub const POOL_IDLE: &str = "pgcell_pool_backends_idle";
/// Backends checked out of the tenant's pools (label: tenant).
pub const POOL_IN_USE: &str = "pgcell_pool_backends_in_use";
/// 1 while the tenant is paused by the admin console (label: tenant).
pub const POOL_PAUSED: &str = "pgcell_pool_paused";
/// Commands run on the admin console (labels: command, outcome).
pub const CONSOLE_COMMANDS: &str = "pgcell_console_commands_total";
/// Statements whose session state a transaction-mode backend switch
/// loses (labels: tenant, kind).
pub const SESSION_STATE: &str = "pgcell_session_state_statements_total";
/// 1 while pgcell is ready to serve, else 0.
pub const READY: &str = "pgcell_ready";
/// Certificate reloads (label: outcome).
pub const TLS_RELOADS: &str = "pgcell_tls_reloads_total";
/// Configuration reloads (label: outcome).
pub const CONFIG_RELOADS: &str = "pgcell_config_reloads_total";
/// Health-port connections answered.
pub const HEALTH_CHECKS: &str = "pgcell_health_checks_total";
/// Build information, always 1 (labels: version, revision).
pub const BUILD_INFO: &str = "pgcell_build_info";
/// This replica's NLB target state, 1 for the current one (label: state:
/// `unregistered`, `registering`, `initial`, `healthy`, `unhealthy`,
/// `unhealthy.draining`, `draining`, `unavailable`, `unused`,
/// `deregistering`, `deregistered`, `error`).
pub const TARGET_STATE: &str = "pgcell_target_state";
/// ELBv2 API calls (labels: operation, outcome: `ok`, `retried`, `error`).
pub const TARGET_API_CALLS: &str = "pgcell_target_api_calls_total";
/// Times the target was found missing from the target group and
/// registered again.
pub const TARGET_REREGISTRATIONS: &str = "pgcell_target_reregistrations_total";
/// The drain phase, 1 for the current one (label: phase: `serving`,
/// `deregistering`, `propagating`, `waiting_for_deregistration`,
/// `closing_sessions`, `stopped`).
pub const DRAIN_PHASE: &str = "pgcell_drain_phase";
/// Sessions closed by shutdown (label: how: `at_transaction_boundary`,
/// `grace_expired`).
pub const SHUTDOWN_CLOSED: &str = "pgcell_shutdown_closed_sessions_total";
/// A server's role as the probe last saw it: 1 primary, 0 replica, -1 unknown.
pub const SERVER_ROLE: &str = "pgcell_server_role";
/// 1 while a server gets no new clients (unreachable, lagging).
pub const SERVER_EXCLUDED: &str = "pgcell_server_excluded";
/// Bytes of WAL a replica has not replayed.
pub const REPLICA_LAG_BYTES: &str = "pgcell_replica_lag_bytes";
/// Seconds since a lagging replica replayed a transaction (0 caught up).
pub const REPLICA_LAG_SECONDS: &str = "pgcell_replica_lag_seconds";
/// 1 while two servers of a tenant report they are primary.
pub const SPLIT_BRAIN: &str = "pgcell_split_brain";
/// Discovered tenants whose id is taken by a tenant in the config file.
pub const DISCOVERY_CLASHES: &str = "pgcell_discovery_tenant_clashes";
/// Tenants discovered from Kubernetes and in use.
pub const DISCOVERY_TENANTS: &str = "pgcell_discovery_tenants";
/// Kubernetes watch events and restarts (labels: resource, event).
pub const DISCOVERY_EVENTS: &str = "pgcell_discovery_events_total";
/// Peers (other replicas) known for cancel forwarding.
pub const DISCOVERY_PEERS: &str = "pgcell_discovery_peers";

/// The git revision this binary was built from (`build.rs`: the
/// `PGCELL_GIT_REVISION` build environment, else `git rev-parse`, else
/// `unknown`).
pub const GIT_REVISION: &str = env!("PGCELL_GIT_REVISION");

/// Label value for connections whose tenant is unknown or not configured.
pub const NO_TENANT: &str = "";

pub(crate) const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const SESSION_BUCKETS: &[f64] = &[
    0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 14400.0, 86400.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus recorder, installed on first use.
///
/// `metrics` has one global recorder per process; several pgcell servers in
/// one process (tests) share it.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(BACKEND_CONNECT_SECONDS.into()),
                LATENCY_BUCKETS,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(SESSION_SECONDS.into()), SESSION_BUCKETS)
            });
        let recorder = match builder {
            Ok(b) => b.build_recorder(),
            // Only reachable with an empty bucket list, which the constants
            // above are not.
            Err(_) => PrometheusBuilder::new().build_recorder(),
        };
        let handle = recorder.handle();
        // Fails only when another recorder is installed already, in which
        // case this handle renders nothing: acceptable for embedders.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        metrics::gauge!(
            BUILD_INFO,
            "version" => env!("CARGO_PKG_VERSION"),
            "revision" => GIT_REVISION
        )
        .set(1.0);
        handle
    })
}

/// The metrics in Prometheus text format, with every live session's
/// tally folded in first ([`tally`]).
pub fn render() -> String {
    let handle = handle();
    tally::fold_all();
    let mut out = handle.render();
    tally::render_histograms(&mut out);
    out
}

/// Values of the series `name` in Prometheus text `rendered`, summed per
/// `tenant` label. Tenant ids are DNS labels, so a label value never holds
/// an escaped quote.
pub fn per_tenant(rendered: &str, name: &str) -> std::collections::HashMap<String, f64> {
    let mut out = std::collections::HashMap::new();
    for line in rendered.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let Some(labels) = rest.strip_prefix('{') else {
            continue;
        };
        let Some((labels, value)) = labels.rsplit_once("} ") else {
            continue;
        };
        let Some(tenant) = labels
            .strip_prefix("tenant=\"")
            .or_else(|| labels.split_once(",tenant=\"").map(|(_, v)| v))
            .and_then(|v| v.split_once('"'))
            .map(|(t, _)| t)
        else {
            continue;
        };
        if let Ok(v) = value.trim().parse::<f64>() {
            *out.entry(tenant.to_owned()).or_insert(0.0) += v;
        }
    }
    out
}

/// Runs the recorder's periodic upkeep (draining histogram buffers).
pub async fn upkeep_loop() {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        handle().run_upkeep();
    }
}

fn describe() {
    describe_counter!(TCP_ACCEPTED, "TCP connections accepted on the data port.");
    describe_gauge!(
        TARGET_STATE,
        "This replica's NLB target state (1 = current)."
    );
    describe_counter!(
        TARGET_API_CALLS,
        "ELBv2 API calls, by operation and outcome."
    );
    describe_counter!(
        TARGET_REREGISTRATIONS,
        "Registrations repeated after the target went missing from its target group."
    );
    describe_gauge!(DRAIN_PHASE, "Shutdown drain phase (1 = current).");
    describe_counter!(SHUTDOWN_CLOSED, "Sessions closed by shutdown, by how.");
    describe_gauge!(
        SERVER_ROLE,
        "A tenant server's role as last probed: 1 primary, 0 replica, -1 unknown."
    );
    describe_gauge!(
        SERVER_EXCLUDED,
        "1 while a tenant server gets no new clients (unreachable, lagging)."
    );
    describe_gauge!(
        REPLICA_LAG_BYTES,
        Unit::Bytes,
        "WAL a replica has not replayed, against the primary."
    );
    describe_gauge!(
        REPLICA_LAG_SECONDS,
        Unit::Seconds,
        "Seconds since a lagging replica replayed a transaction (0 when caught up)."
    );
    describe_gauge!(
        SPLIT_BRAIN,
        "1 while two servers of a tenant report they are primary (writes refused)."
    );
    describe_gauge!(
        DISCOVERY_CLASHES,
        "Discovered tenants ignored because the config file has their id."
    );
    describe_gauge!(DISCOVERY_TENANTS, "Tenants discovered from Kubernetes.");
    describe_counter!(
        DISCOVERY_EVENTS,
        "Kubernetes watch events, by resource and event."
    );
    describe_gauge!(
        DISCOVERY_PEERS,
        "Other replicas known for cancel forwarding."
    );
    describe_counter!(CLIENT_ACCEPTED, "Client connections routed to a tenant.");
    describe_gauge!(CLIENT_ACTIVE, "Client connections being served.");
    describe_counter!(
        REJECTIONS,
        "Client connections refused by routing or policy, by reason."
    );
    describe_counter!(
        HANDSHAKE_ERRORS,
        "Connections that failed before a complete StartupMessage, by kind."
    );
    describe_counter!(
        PROXY_HEADERS,
        "PROXY protocol headers read, by version and command."
    );
    describe_histogram!(
        BACKEND_CONNECT_SECONDS,
        Unit::Seconds,
        "Time to connect to a tenant's backend."
    );
    describe_counter!(
        BACKEND_CONNECT_ERRORS,
        "Failed connections to a tenant's backend."
    );
    describe_counter!(
        BACKEND_LOST,
        "Sessions ended by the backend closing or failing."
    );
    describe_counter!(
        CLIENT_BYTES_RECEIVED,
        Unit::Bytes,
        "Bytes received from clients and sent on to backends."
    );
    describe_counter!(
        CLIENT_BYTES_SENT,
        Unit::Bytes,
        "Bytes received from backends and sent on to clients."
    );
    describe_histogram!(
        SESSION_SECONDS,
        Unit::Seconds,
        "Duration of client sessions."
    );
    describe_counter!(CANCEL_REQUESTS, "CancelRequests received, by outcome.");
    describe_counter!(
        CONNECTION_ERRORS,
        "Connections that ended in an error, by kind (client, policy, backend, internal)."
    );
    describe_gauge!(READY, "1 while pgcell is ready to serve clients.");
    describe_counter!(
        SESSION_STATE,
        "Statements in transaction mode whose session state would not survive a backend switch, by kind."
    );
    // This and POOL_WAIT_SECONDS are counted per session and rendered by
    // `tally::render_histograms` (with LATENCY_BUCKETS), not recorded
    // through the exporter.
    describe_histogram!(TRANSACTION_SECONDS, Unit::Seconds, TRANSACTION_SECONDS_HELP);
    describe_histogram!(POOL_WAIT_SECONDS, Unit::Seconds, POOL_WAIT_SECONDS_HELP);
    describe_counter!(AUTH_FAILURES, "Client logins refused by pgcell, by reason.");
    describe_counter!(
        AUTH_QUERY_ERRORS,
        "auth_query fetches of a user's secret that failed, by reason."
    );
    describe_counter!(
        AUTH_QUERY_CACHE_HITS,
        "auth_query lookups answered from the secret cache."
    );
    describe_counter!(
        AUTH_QUERY_CACHE_MISSES,
        "auth_query lookups that queried the backend."
    );
    describe_counter!(
        QUERIES,
        "Queries sent by pooled clients (Query and Execute messages)."
    );
    describe_counter!(
        TRANSACTIONS,
        "Transactions completed through transaction pools."
    );
    describe_gauge!(
        POOL_WAITING,
        "Clients waiting for a pooled backend connection."
    );
    describe_gauge!(
        POOL_SIZE,
        "Most backend connections the tenant's pools may open."
    );
    describe_gauge!(POOL_OPEN, "Backend connections open in the tenant's pools.");
    describe_gauge!(POOL_IDLE, "Backend connections idle in the tenant's pools.");
    describe_gauge!(
        POOL_IN_USE,
        "Backend connections checked out of the tenant's pools."
    );
    describe_gauge!(
        POOL_PAUSED,
        "1 while the tenant's pools are paused by the admin console."
    );
    describe_counter!(
        CONSOLE_COMMANDS,
        "Admin console commands, by command and outcome."
    );
    describe_counter!(
        TLS_RELOADS,
        "Reloads of the TLS certificate and key, by outcome."
    );
    describe_counter!(
        CONFIG_RELOADS,
        "Reloads of the configuration file, by outcome."
    );
    describe_counter!(HEALTH_CHECKS, "Connections answered on the health port.");
    describe_gauge!(BUILD_INFO, "pgcell build information.");
}
