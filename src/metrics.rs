//! Every metric pgcell exports: name, unit and help text in one place.
//!
//! Names follow Prometheus conventions (`pgcell_` prefix, `_total` counters,
//! base units). Tenant labels carry only configured tenant ids, so label
//! cardinality is bounded by the configuration.

use std::sync::OnceLock;
use std::time::Duration;

mod names;
pub(crate) mod tally;

pub use names::*;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus recorder, installed on first use.
///
/// `metrics` has one global recorder per process; several pgcell servers in
/// one process (tests) share it.
pub(crate) fn handle() -> &'static PrometheusHandle {
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
pub(crate) fn per_tenant(rendered: &str, name: &str) -> std::collections::HashMap<String, f64> {
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
pub(crate) async fn upkeep_loop() {
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
