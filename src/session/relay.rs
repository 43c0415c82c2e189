//! Passthrough relay: bytes both ways until either side closes.
//!
//! Both directions follow message boundaries (headers only, see
//! [`FrameTracker`]) so that when the backend goes away between messages
//! the client gets a proper `ErrorResponse` instead of a silent close, and
//! so that when pgcell is stopping the session ends with `57P01` as soon
//! as it is between transactions with nothing in flight.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use tokio::sync::watch;

use crate::lifecycle::State;

use bytes::BytesMut;
use metrics::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::protocol::framing::FrameTracker;

/// Bytes read per read call, each direction.
const RELAY_BUF_LEN: usize = 32 * 1024;
/// How long to wait for the backend to close after the client has.
const BACKEND_CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// The client closed its side.
    ClientClosed,
    /// The client connection failed.
    ClientError(io::Error),
    /// The backend closed or failed while the client was still there.
    BackendLost {
        /// Whether the client was sent an `ErrorResponse` about it.
        client_told: bool,
        /// The error, when the backend failed rather than closed.
        error: Option<io::Error>,
    },
    /// pgcell is stopping: the session was idle between transactions and
    /// the client was sent `57P01`.
    ShuttingDown,
}

/// Byte counts, for the log line.
#[derive(Debug, Default, Clone, Copy)]
pub struct RelayBytes {
    /// Client to backend.
    pub from_client: u64,
    /// Backend to client.
    pub to_client: u64,
}

/// Counters to feed as bytes flow.
pub struct RelayCounters {
    /// Client to backend.
    pub from_client: Counter,
    /// Backend to client.
    pub to_client: Counter,
}

/// Relays until one side is done, or until `lifecycle` says stopping and
/// the session is between transactions. Not cancel safe.
pub async fn relay<C, B>(
    client: C,
    backend: B,
    counters: &RelayCounters,
    bytes: &mut RelayBytes,
    mut lifecycle: watch::Receiver<State>,
) -> RelayEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut backend_r, mut backend_w) = tokio::io::split(backend);
    // Both directions run in this one task; atomics only because the future
    // must be Send.
    let client_done = AtomicBool::new(false);
    let from_client = AtomicU64::new(0);
    let to_client = AtomicU64::new(0);
    // What the client has asked for that gets a ReadyForQuery, and whether
    // it is between messages (read by the other direction).
    let client_requests = AtomicU64::new(0);
    let client_at_boundary = AtomicBool::new(true);

    let upstream = async {
        let mut buf = BytesMut::with_capacity(RELAY_BUF_LEN);
        let mut frames = FrameTracker::default();
        loop {
            buf.clear();
            match client_r.read_buf(&mut buf).await {
                Ok(0) => {
                    client_done.store(true, Relaxed);
                    let _ = backend_w.shutdown().await;
                    return RelayEnd::ClientClosed;
                }
                Ok(n) => {
                    counters.from_client.increment(n as u64);
                    from_client.fetch_add(n as u64, Relaxed);
                    frames.advance(&buf);
                    client_requests.store(frames.requests(), Relaxed);
                    client_at_boundary.store(frames.at_boundary(), Relaxed);
                    // After Terminate the backend's close is the expected
                    // end, not a lost backend, however the client closes.
                    if frames.last_tag() == Some(b'X') {
                        client_done.store(true, Relaxed);
                    }
                }
                Err(e) => {
                    client_done.store(true, Relaxed);
                    return RelayEnd::ClientError(e);
                }
            }
            if let Err(e) = backend_w.write_all(&buf).await {
                return RelayEnd::BackendLost {
                    client_told: false,
                    error: Some(e),
                };
            }
        }
    };

    let downstream = async {
        let mut buf = BytesMut::with_capacity(RELAY_BUF_LEN);
        let mut frames = FrameTracker::default();
        let mut stopping = lifecycle.borrow().is_stopping();
        // Both directions run in this task, so nothing moves between this
        // check and the 57P01: every request read from the client has been
        // counted, and each has had its ReadyForQuery.
        let between_transactions = |frames: &FrameTracker| {
            frames.at_boundary()
                && frames.status() == b'I'
                && frames.readies() == client_requests.load(Relaxed)
                && client_at_boundary.load(Relaxed)
        };
        let error = loop {
            if stopping && between_transactions(&frames) {
                if let Some(error) = super::SessionError::ShuttingDown.client_error("") {
                    let _ = error.send(&mut client_w).await;
                }
                let _ = client_w.shutdown().await;
                client_done.store(true, Relaxed);
                return RelayEnd::ShuttingDown;
            }
            buf.clear();
            let read = tokio::select! {
                read = backend_r.read_buf(&mut buf) => read,
                () = async { let _ = lifecycle.wait_for(|s| s.is_stopping()).await; }, if !stopping => {
                    stopping = true;
                    continue;
                }
            };
            match read {
                Ok(0) => break None,
                Ok(n) => {
                    frames.advance(&buf);
                    counters.to_client.increment(n as u64);
                    to_client.fetch_add(n as u64, Relaxed);
                }
                Err(e) => break Some(e),
            }
            if let Err(e) = client_w.write_all(&buf).await {
                client_done.store(true, Relaxed);
                return RelayEnd::ClientError(e);
            }
        };
        if client_done.load(Relaxed) {
            return RelayEnd::ClientClosed;
        }
        // Between messages, and the backend did not explain itself with an
        // ErrorResponse of its own: tell the client what happened.
        let client_told = frames.at_boundary() && frames.last_tag() != Some(b'E');
        if client_told {
            let _ = super::server_lost().send(&mut client_w).await;
        }
        let _ = client_w.shutdown().await;
        RelayEnd::BackendLost { client_told, error }
    };

    tokio::pin!(upstream, downstream);
    let end = tokio::select! {
        end = &mut upstream => match end {
            RelayEnd::ClientClosed => {
                // Let the backend's last bytes and its close come through.
                let _ = tokio::time::timeout(BACKEND_CLOSE_WAIT, &mut downstream).await;
                end
            }
            // Writing to the backend failed: the reading side sees the loss
            // too and tells the client at a message boundary.
            RelayEnd::BackendLost { .. } => {
                match tokio::time::timeout(BACKEND_CLOSE_WAIT, &mut downstream).await {
                    Ok(downstream_end) => downstream_end,
                    Err(_) => end,
                }
            }
            RelayEnd::ClientError(_) | RelayEnd::ShuttingDown => end,
        },
        end = &mut downstream => end,
    };
    bytes.from_client = from_client.load(Relaxed);
    bytes.to_client = to_client.load(Relaxed);
    end
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    fn ready() -> (watch::Sender<State>, watch::Receiver<State>) {
        let tx = watch::Sender::new(State::Ready);
        let rx = tx.subscribe();
        (tx, rx)
    }

    #[tokio::test]
    async fn stopping_ends_the_session_between_transactions_only() {
        let (client_side, mut client) = duplex(1024);
        let (backend_side, mut backend) = duplex(1024);
        let (lifecycle, rx) = ready();
        let task = tokio::spawn(async move {
            let mut bytes = RelayBytes::default();
            relay(client_side, backend_side, &counters(), &mut bytes, rx).await
        });
        // A transaction is open when the stop comes: nothing happens.
        client.write_all(b"Q\0\0\0\x0abegin\0").await.unwrap();
        let mut q = [0u8; 11];
        backend.read_exact(&mut q).await.unwrap();
        backend.write_all(b"Z\0\0\0\x05T").await.unwrap();
        let mut z = [0u8; 6];
        client.read_exact(&mut z).await.unwrap();
        lifecycle.send_replace(State::Stopping);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!task.is_finished());
        // A query in flight at the end of the transaction: still nothing
        // until its answer.
        client.write_all(b"Q\0\0\0\x0bcommit\0").await.unwrap();
        let mut q = [0u8; 12];
        backend.read_exact(&mut q).await.unwrap();
        backend.write_all(b"C\0\0\0\x0bCOMMIT\0").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!task.is_finished());
        backend.write_all(b"Z\0\0\0\x05I").await.unwrap();
        let end = tokio::time::timeout(std::time::Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(end, RelayEnd::ShuttingDown), "{end:?}");
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        // CommandComplete and ReadyForQuery, then the 57P01.
        assert!(
            got.starts_with(b"C\0\0\0\x0bCOMMIT\0Z\0\0\0\x05IE"),
            "{got:?}"
        );
        assert!(got.windows(6).any(|w| w == b"C57P01"));
    }

    fn counters() -> RelayCounters {
        RelayCounters {
            from_client: Counter::noop(),
            to_client: Counter::noop(),
        }
    }

    #[tokio::test]
    async fn backend_loss_between_messages_is_reported() {
        let (client_side, mut client) = duplex(1024);
        let (backend_side, mut backend) = duplex(1024);
        let task = tokio::spawn(async move {
            let mut bytes = RelayBytes::default();
            let end = relay(
                client_side,
                backend_side,
                &counters(),
                &mut bytes,
                ready().1,
            )
            .await;
            (end, bytes)
        });
        client.write_all(b"Q\0\0\0\x0dselect 1\0").await.unwrap();
        let mut q = [0u8; 14];
        backend.read_exact(&mut q).await.unwrap();
        backend.write_all(b"Z\0\0\0\x05I").await.unwrap();
        drop(backend);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(&got[..6], b"Z\0\0\0\x05I");
        assert_eq!(got[6], b'E');
        assert!(got.windows(5).any(|w| w == b"08006"));
        let (end, bytes) = task.await.unwrap();
        assert!(matches!(
            end,
            RelayEnd::BackendLost {
                client_told: true,
                ..
            }
        ));
        assert_eq!(bytes.from_client, 14);
        assert_eq!(bytes.to_client, 6);
    }

    #[tokio::test]
    async fn backend_loss_mid_message_just_closes() {
        let (client_side, mut client) = duplex(1024);
        let (backend_side, mut backend) = duplex(1024);
        let task = tokio::spawn(async move {
            let mut bytes = RelayBytes::default();
            relay(
                client_side,
                backend_side,
                &counters(),
                &mut bytes,
                ready().1,
            )
            .await
        });
        backend.write_all(b"D\0\0\0\x20partial").await.unwrap();
        drop(backend);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(&got[..], b"D\0\0\0\x20partial");
        assert!(matches!(
            task.await.unwrap(),
            RelayEnd::BackendLost {
                client_told: false,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn backend_close_after_terminate_is_clean() {
        let (client_side, mut client) = duplex(1024);
        let (backend_side, mut backend) = duplex(1024);
        let task = tokio::spawn(async move {
            let mut bytes = RelayBytes::default();
            relay(
                client_side,
                backend_side,
                &counters(),
                &mut bytes,
                ready().1,
            )
            .await
        });
        // Terminate, then the client waits for the server to close.
        client.write_all(b"X\0\0\0\x04").await.unwrap();
        let mut x = [0u8; 5];
        backend.read_exact(&mut x).await.unwrap();
        drop(backend);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert!(got.is_empty(), "{got:?}");
        assert!(matches!(task.await.unwrap(), RelayEnd::ClientClosed));
    }

    #[tokio::test]
    async fn client_close_is_clean() {
        let (client_side, client) = duplex(1024);
        let (backend_side, mut backend) = duplex(1024);
        let task = tokio::spawn(async move {
            let mut bytes = RelayBytes::default();
            relay(
                client_side,
                backend_side,
                &counters(),
                &mut bytes,
                ready().1,
            )
            .await
        });
        drop(client);
        // The backend sees EOF and closes too.
        let mut rest = Vec::new();
        backend.read_to_end(&mut rest).await.unwrap();
        drop(backend);
        assert!(matches!(task.await.unwrap(), RelayEnd::ClientClosed));
    }
}
