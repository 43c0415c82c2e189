//! The accept loop: one task per client connection, until shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::state::Shared;

/// How long a refused connection may take to receive its error.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_millis(200);

/// Refusals written by a task of their own at once. Beyond this, a refused
/// connection gets one non-blocking write of its error and is closed at
/// once, so a flood past `listen.max_client_connections` holds at most
/// this many descriptors more.
pub const MAX_REFUSALS_IN_FLIGHT: usize = 64;

/// Accepts connections and spawns a session for each until `stop` turns
/// true. Returns the sessions still running.
pub(crate) async fn accept_loop(
    listener: &TcpListener,
    shared: &Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> JoinSet<()> {
    let mut sessions = JoinSet::new();
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT));
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
                        refuse_over_limit(&mut sessions, &refusals, tcp);
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

/// How a refused connection was answered.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// In a task of its own, holding one of `refusals`' permits.
    Spawned,
    /// No permit free: one non-blocking write, then closed at once.
    ClosedAtOnce,
}

/// Answers a connection over `listen.max_client_connections` with `53300`
/// at once, without reading it, as the postmaster does: libpq reports an
/// `ErrorResponse` received in place of the answer to `SSLRequest`.
fn refuse_over_limit(
    sessions: &mut JoinSet<()>,
    refusals: &Arc<Semaphore>,
    tcp: TcpStream,
) -> Refusal {
    metrics::counter!(crate::metrics::TCP_ACCEPTED).increment(1);
    metrics::counter!(crate::metrics::REJECTIONS, "reason" => "global_connection_limit", "tenant" => crate::metrics::NO_TENANT)
        .increment(1);
    let mut buf = bytes::BytesMut::new();
    crate::protocol::ClientError::fatal(
        crate::protocol::SqlState::TOO_MANY_CONNECTIONS,
        "sorry, too many clients already",
    )
    .encode(&mut buf);
    match refusals.clone().try_acquire_owned() {
        Ok(permit) => {
            sessions.spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut tcp = tcp;
                let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, tcp.write_all(&buf)).await;
                drop(permit);
            });
            Refusal::Spawned
        }
        Err(_) => {
            // One non-blocking write(2): a fresh socket's send buffer takes
            // the ~60 bytes whole. (`try_write` would refuse: the reactor
            // has not seen this socket writable yet.)
            if let Ok(mut tcp) = tcp.into_std() {
                let _ = std::io::Write::write(&mut tcp, &buf);
            }
            Refusal::ClosedAtOnce
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn refusals_beyond_the_bound_close_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let refusals = Arc::new(Semaphore::new(1));
        let mut sessions = JoinSet::new();
        let mut clients = Vec::new();
        let mut how = Vec::new();
        // The only permit is taken (a refusal still writing): the next
        // ones are closed at once; once it is back, a task again.
        let mut busy = Some(refusals.clone().try_acquire_owned().unwrap());
        for i in 0..3 {
            if i == 2 {
                busy.take();
            }
            clients.push(TcpStream::connect(addr).await.unwrap());
            let (tcp, _) = listener.accept().await.unwrap();
            how.push(refuse_over_limit(&mut sessions, &refusals, tcp));
        }
        assert_eq!(
            how,
            [
                Refusal::ClosedAtOnce,
                Refusal::ClosedAtOnce,
                Refusal::Spawned
            ]
        );
        // Every client still reads the refusal, then the close.
        for mut c in clients {
            let mut out = Vec::new();
            c.read_to_end(&mut out).await.unwrap();
            assert_eq!(out[0], b'E');
            assert!(out.windows(5).any(|w| w == b"53300"));
        }
        while sessions.join_next().await.is_some() {}
        assert_eq!(refusals.available_permits(), 1);
    }
}
