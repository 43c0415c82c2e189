//! The accept loop: one task per client connection, until shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::server::Shared;

/// How long a refused connection may take to receive its error.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_millis(200);

/// Accepts connections and spawns a session for each until `stop` turns
/// true. Returns the sessions still running.
pub async fn accept_loop(
    listener: &TcpListener,
    shared: &Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> JoinSet<()> {
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => match shared.clients.clone().try_acquire_owned() {
                    Ok(slot) => {
                        sessions.spawn(crate::session::serve(shared.clone(), tcp, peer, slot));
                    }
                    // Every connection, in its handshake or not, counts
                    // against the limit, so a flood of silent sockets cannot
                    // exhaust tasks and file descriptors.
                    Err(_) => {
                        sessions.spawn(refuse_over_limit(tcp));
                    }
                },
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            // Only `true` is ever sent; the sender is dropped only when
            // the server stops.
            _ = stop.changed() => return sessions,
        }
    }
}

/// Answers a connection over `listen.max_client_connections` with `53300`
/// at once, without reading it, as the postmaster does: libpq reports an
/// `ErrorResponse` received in place of the answer to `SSLRequest`.
async fn refuse_over_limit(mut tcp: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    metrics::counter!(crate::metrics::TCP_ACCEPTED).increment(1);
    metrics::counter!(crate::metrics::REJECTIONS, "reason" => "global_connection_limit", "tenant" => crate::metrics::NO_TENANT)
        .increment(1);
    let mut buf = bytes::BytesMut::new();
    crate::protocol::messages::error_response(
        &mut buf,
        crate::protocol::SqlState::TOO_MANY_CONNECTIONS,
        "sorry, too many clients already",
        None,
    );
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, tcp.write_all(&buf)).await;
}
