//! One client connection from accept to close: negotiation, routing and
//! policy, backend connection, authentication relay, relay. Every failure
//! becomes at most one `ErrorResponse` (through [`SessionError::client_error`]),
//! one metric increment labelled with its kind, and one log line.

pub(crate) mod auth_relay;
pub(crate) mod buffers;
pub(crate) mod client_auth;
pub(crate) mod console;
pub(crate) mod engine;
mod error;
mod log;
mod passthrough;
pub(crate) mod pooled;
pub(crate) mod prepared;
pub(crate) mod relay;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use crate::handshake::{self, HandshakeConfig, Negotiated};
use crate::lifecycle::State;
use crate::metrics as m;
use crate::protocol::startup::StartupMessage;
use crate::route;
use crate::state::Shared;
use crate::tenant::ClientInfo;
pub(crate) use error::SessionError;
use log::{note_login, ConnectionLog};

/// Serves one accepted TCP connection to the end, logging one line.
///
/// `_slot` is the connection's share of `listen.max_client_connections`,
/// taken before the task was spawned and held until it ends.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    _slot: OwnedSemaphorePermit,
) {
    let started = Instant::now();
    metrics::counter!(m::TCP_ACCEPTED).increment(1);
    // TCP_NODELAY, keepalive and TCP_USER_TIMEOUT come from the listening
    // socket (`server.rs`).
    let mut log = ConnectionLog::default();
    let result = serve_inner(&shared, tcp, peer, &mut log).await;
    let duration = started.elapsed();
    let outcome = match &result {
        Ok(outcome) => *outcome,
        Err(e) => e.outcome(),
    };
    let tenant = log.tenant.as_deref().unwrap_or("");
    let user = log.user.as_deref().unwrap_or("");
    let database = log.database.as_deref().unwrap_or("");
    let (client_addr, vpce, tls) = match &log.client {
        Some(c) => (
            c.addr.to_string(),
            c.vpce_id.clone().unwrap_or_default(),
            c.tls,
        ),
        None => (peer.to_string(), String::new(), false),
    };
    match &result {
        Ok("load_balancer_check") => {
            tracing::debug!(%peer, "load balancer health check");
        }
        Ok(_) => tracing::info!(
            tenant,
            user,
            database,
            client_addr,
            vpce_id = vpce,
            tls,
            duration_ms = duration.as_millis() as u64,
            bytes_in = log.bytes.from_client,
            bytes_out = log.bytes.to_client,
            outcome,
            "connection closed"
        ),
        Err(e) => {
            metrics::counter!(m::CONNECTION_ERRORS, "kind" => e.kind().label()).increment(1);
            tracing::info!(
                tenant,
                user,
                database,
                client_addr,
                vpce_id = vpce,
                tls,
                duration_ms = duration.as_millis() as u64,
                bytes_in = log.bytes.from_client,
                bytes_out = log.bytes.to_client,
                outcome,
                error = %e,
                kind = e.kind().label(),
                "connection closed"
            )
        }
    }
}

/// Answers a `CancelRequest`: forwards it to the backend (or the peer
/// replica) that holds its key, then closes.
async fn answer_cancel<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    key: crate::protocol::startup::CancelKey,
    client: ClientInfo,
    mut stream: S,
    log: &mut ConnectionLog,
) -> Result<&'static str, SessionError> {
    let outcome = shared
        .cancel
        .cancel(
            key,
            &client,
            shared.settings.connect_timeout,
            shared.settings.proxy_protocol,
        )
        .await;
    log.client = Some(client);
    // Counted before the close, which tells the client it was
    // handled: whoever reads the metrics next sees it.
    metrics::counter!(m::CANCEL_REQUESTS, "outcome" => outcome.label()).increment(1);
    // After the cancel, as PostgreSQL: the client learns it was
    // handled from the close. Over TLS that is a close_notify
    // (shutdown); bounded, the client may not be reading.
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
    Ok("cancel_request")
}

async fn serve_inner(
    shared: &Shared,
    tcp: TcpStream,
    peer: SocketAddr,
    log: &mut ConnectionLog,
) -> Result<&'static str, SessionError> {
    let deadline = tokio::time::Instant::now() + shared.settings.startup_timeout;
    let cfg = HandshakeConfig {
        proxy: shared.settings.proxy_protocol,
        tls_mode: shared.settings.tls_mode,
        tls: shared.tls.as_ref(),
        deadline,
    };
    // Boxed: the handshake's state is large and only needed at the start;
    // inline it would stay in every idle connection's task.
    // (Matched as a temporary: a named binding would keep its storage in
    // the task for the whole connection.)
    let (mut stream, mut startup, client) = match Box::pin(handshake::negotiate(tcp, peer, &cfg))
        .await
        .inspect_err(|e| {
            metrics::counter!(m::HANDSHAKE_ERRORS, "kind" => e.kind()).increment(1);
        })? {
        Negotiated::LoadBalancerCheck => return Ok("load_balancer_check"),
        // Boxed: its state would otherwise size every client's task.
        Negotiated::Cancel(key, client, stream) => {
            return Box::pin(answer_cancel(shared, key, client, stream, log)).await;
        }
        Negotiated::Startup {
            stream,
            startup,
            client,
        } => (stream, startup, client),
    };
    log.client = Some(client.clone());
    note_login(log, &startup);

    // The admin console is a database of pgcell's own, not a tenant's.
    if startup.get("database") == Some(console::DATABASE) && shared.console.load().enabled() {
        let result = Box::pin(console::serve(shared, &mut stream, &startup, &client)).await;
        if let Err(e) = &result {
            report(&mut stream, e, "").await;
        }
        return result.map(|()| "admin_console");
    }

    let table = shared.routes.load_full();
    let route = match admit(shared, &table, &mut startup, &client) {
        Ok(admitted) => admitted,
        Err((e, tenant)) => {
            if !tenant.is_empty() {
                log.tenant = Some(tenant.clone());
            }
            metrics::counter!(m::REJECTIONS, "reason" => e.outcome(), "tenant" => tenant)
                .increment(1);
            report(&mut stream, &e, &table.how_to_name_tenant()).await;
            return Err(e);
        }
    };
    let tenant_id = route.tenant.id().to_owned();
    log.tenant = Some(tenant_id.clone());
    note_login(log, &startup);
    let tls_label = if client.tls { "true" } else { "false" };
    metrics::counter!(m::CLIENT_ACCEPTED, "tenant" => tenant_id.clone(), "tls" => tls_label)
        .increment(1);
    let active =
        metrics::gauge!(m::CLIENT_ACTIVE, "tenant" => tenant_id.clone(), "tls" => tls_label);
    active.increment(1.0);
    let started = Instant::now();
    let is_passthrough = route.tenant.config.auth == crate::config::AuthMode::Passthrough;
    let user = startup.get("user").unwrap_or_default().to_owned();
    let listed = shared.connected.register(crate::clients::NewClient {
        tenant: tenant_id.clone(),
        database: startup.get("database").unwrap_or(&user).to_owned(),
        user,
        addr: client.addr,
        tls: client.tls,
        // A passthrough client holds its own backend throughout.
        state: if is_passthrough {
            crate::clients::ClientState::Active
        } else {
            crate::clients::ClientState::Idle
        },
    });
    let result = if is_passthrough {
        // Boxed: its relay state would otherwise size every pooled
        // client's task too.
        Box::pin(passthrough::passthrough(
            shared,
            &mut stream,
            &startup,
            &route,
            log,
        ))
        .await
    } else {
        // The pooled relay counts bytes, queries and transactions in the
        // client's tally, not message by message in the exported
        // counters.
        let mut counted = crate::clients::Counted::new(&mut stream, &listed.entry.tally);
        crate::clients::scope(
            listed.entry.clone(),
            pooled::serve(
                shared,
                &mut counted,
                &startup,
                &route,
                &client,
                &mut log.bytes,
                &listed.entry,
            ),
        )
        .await
    };
    drop(listed);
    active.decrement(1.0);
    metrics::histogram!(m::SESSION_SECONDS, "tenant" => tenant_id)
        .record(started.elapsed().as_secs_f64());
    if let Err(e) = &result {
        report(&mut stream, e, "").await;
    }
    result.map(|()| "ok")
}

/// Routes and admits a client. A refusal carries the tenant label for its
/// metric: a configured tenant id, or empty, so that clients cannot mint
/// label values.
fn admit(
    shared: &Shared,
    table: &route::RoutingTable,
    startup: &mut StartupMessage,
    client: &ClientInfo,
) -> Result<route::Route, (SessionError, String)> {
    let no_tenant = |e: SessionError| (e, m::NO_TENANT.to_owned());
    if shared.lifecycle.state() == State::Stopping {
        return Err(no_tenant(SessionError::ShuttingDown));
    }
    if startup
        .get("replication")
        .is_some_and(|r| r != "false" && r != "off" && r != "0")
    {
        return Err(no_tenant(SessionError::Replication));
    }
    let tenant = table
        .resolve(startup, client.sni.as_deref())
        .map_err(|e| no_tenant(e.into()))?;
    let id = tenant.id().to_owned();
    let target = route::take_target(startup, &tenant).map_err(|e| (e.into(), id.clone()))?;
    route::admit(tenant, target, client).map_err(|e| (e.into(), id))
}

/// Sends the client the one `ErrorResponse` for `e`, if it gets one.
async fn report<W: AsyncWrite + Unpin>(stream: &mut W, e: &SessionError, how_to_name_tenant: &str) {
    let Some(error) = e.client_error(how_to_name_tenant) else {
        return;
    };
    // Bounded: a client that does not read must not hold the task.
    let _ = tokio::time::timeout(Duration::from_secs(1), error.send(stream)).await;
}
