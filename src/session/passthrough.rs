//! Passthrough sessions: the backend authenticates the client itself, and
//! the client keeps that backend, bytes relayed both ways, until either
//! side closes or the server stops fitting it.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::auth_relay::{self, AuthEnd, AuthRelayError};
use super::error::SessionError;
use super::log::ConnectionLog;
use super::relay::{self, RelayCounters, RelayEnd};
use crate::backend::{self, topology::Role};
use crate::handshake::ClientStream;
use crate::metrics as m;
use crate::protocol::startup::StartupMessage;
use crate::route;
use crate::state::Shared;

/// Serves a passthrough client from its login to its end.
pub(super) async fn passthrough<S>(
    shared: &Shared,
    client: &mut ClientStream<S>,
    startup: &StartupMessage,
    route: &route::Route,
    log: &mut ConnectionLog,
) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let tenant = &route.tenant;
    // Just started: the probe's first round tells the roles; without it
    // the first logins would try the servers in listed order, and a login
    // that finds a standby cannot go on to the next server.
    let replication = &tenant.config.replication;
    if replication.probe_user.is_some() && tenant.topology.servers().len() > 1 {
        let deadline = Instant::now() + replication.probe_timeout;
        while !tenant.topology.probed_once() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let connect_started = Instant::now();
    let connected = backend::connect(
        tenant.targets(route.target),
        shared.settings.connect_timeout,
        shared.settings.tcp_keepalive,
    )
    .await;
    let mut backend = match connected {
        Ok(b) => b,
        Err(e) => {
            metrics::counter!(m::BACKEND_CONNECT_ERRORS, "tenant" => tenant.id().to_owned())
                .increment(1);
            return Err(e.into());
        }
    };
    metrics::histogram!(m::BACKEND_CONNECT_SECONDS, "tenant" => tenant.id().to_owned())
        .record(connect_started.elapsed().as_secs_f64());

    let mut buf = BytesMut::new();
    startup.encode(&mut buf);
    backend
        .stream
        .write_all(&buf)
        .await
        .map_err(|e| AuthRelayError::Backend(e.into()))?;

    let vpce_id = log.client.as_ref().and_then(|c| c.vpce_id.clone());
    let auth = tokio::time::timeout(
        shared.settings.auth_timeout,
        auth_relay::relay(
            client,
            &mut backend.stream,
            &shared.cancel,
            backend.addr,
            vpce_id.as_deref(),
            |role| route.target.fits(role, backend.fallback),
        ),
    )
    .await
    .map_err(|_| SessionError::AuthTimeout)??;
    let _cancel_key = match auth {
        AuthEnd::Ready { cancel_key, role } => {
            if role != Role::Unknown {
                tenant.topology.saw_role(backend.server, role);
            }
            cancel_key
        }
        AuthEnd::WrongRole(role) => {
            // The topology was stale (a failover the probe has not seen
            // yet): the next login tries the right server.
            tenant.topology.saw_role(backend.server, role);
            return Err(SessionError::WrongRole {
                server: backend.addr,
                role,
            });
        }
        AuthEnd::Rejected { code } => return Err(SessionError::BackendRejected(code)),
        AuthEnd::ClientQuit => return Ok(()),
    };

    let counters = RelayCounters {
        from_client: metrics::counter!(m::CLIENT_BYTES_RECEIVED, "tenant" => tenant.id().to_owned()),
        to_client: metrics::counter!(m::CLIENT_BYTES_SENT, "tenant" => tenant.id().to_owned()),
    };
    let lifecycle = shared.lifecycle.subscribe();
    // The session ends, between transactions, once its server no longer
    // fits it: a writer's server is no longer the tenant's primary (a
    // split brain, another server named, a demotion), a replica client's
    // server was promoted (`Topology::session_fits`).
    let topology = &tenant.topology;
    let server = backend.server;
    let target = route.target;
    let server_changed = async {
        loop {
            let seen = topology.changes();
            if !topology.session_fits(server, target) {
                return;
            }
            topology.changed_since(seen).await;
        }
    };
    let end = relay::relay(
        client,
        backend.stream,
        &counters,
        &mut log.bytes,
        lifecycle,
        server_changed,
    )
    .await;
    match end {
        RelayEnd::ClientClosed => Ok(()),
        RelayEnd::ShuttingDown => {
            metrics::counter!(m::SHUTDOWN_CLOSED, "how" => "at_transaction_boundary").increment(1);
            Ok(())
        }
        RelayEnd::ServerChanged => Err(SessionError::Reported(Box::new(
            SessionError::ServerNoLongerFits,
        ))),
        RelayEnd::ClientError(e) => Err(SessionError::ClientIo(e)),
        RelayEnd::BackendLost { client_told, error } => {
            metrics::counter!(m::BACKEND_LOST, "tenant" => tenant.id().to_owned()).increment(1);
            match error {
                Some(e) => tracing::debug!(error = %e, client_told, "backend read failed"),
                None => tracing::debug!(client_told, "backend closed"),
            }
            // Passthrough: the client saw what the backend did (its
            // error, or the close), as on a direct connection.
            Err(SessionError::Reported(Box::new(SessionError::BackendLost)))
        }
    }
}
