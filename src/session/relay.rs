//! Passthrough relay: bytes both ways until either side closes.
//!
//! Both directions follow message boundaries (headers only, see
//! [`FrameTracker`]) so that when the backend goes away between messages
//! the client gets a proper `ErrorResponse` instead of a silent close, and
//! so that when pgcell is stopping the session ends with `57P01` as soon
//! as it is between transactions with nothing in flight.
//!
//! One future polls both directions itself (`Pipe::poll_step`): no split
//! of the streams into halves behind a lock, no `select!` per message, and
//! the stop signal is one future made once, so a message costs a read and
//! a write and little else (docs/performance.md, "Passthrough").

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};

use bytes::BytesMut;
use metrics::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::lifecycle::State;
use crate::protocol::framing::FrameTracker;

/// Bytes read per read call, each direction.
const RELAY_BUF_LEN: usize = 32 * 1024;
/// How long to wait for the backend to close after the client has.
const BACKEND_CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How a relay ended.
#[derive(Debug)]
pub(crate) enum RelayEnd {
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
    /// The backend's server stopped being the tenant's primary (a split
    /// brain, another server named, a demotion): between transactions the
    /// client was sent `57P01`.
    ServerChanged,
}

/// Why the session must end at its next transaction boundary.
#[derive(Debug, Clone, Copy)]
enum StopReason {
    ShuttingDown,
    ServerChanged,
}

/// Byte counts, for the log line.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RelayBytes {
    /// Client to backend.
    pub from_client: u64,
    /// Backend to client.
    pub to_client: u64,
}

/// Counters to feed as bytes flow.
pub(crate) struct RelayCounters {
    /// Client to backend.
    pub from_client: Counter,
    /// Backend to client.
    pub to_client: Counter,
}

/// One direction: what was read and not yet written on, and the message
/// boundaries seen.
struct Pipe {
    buf: BytesMut,
    /// How much of `buf` has been written on.
    sent: usize,
    frames: FrameTracker,
    bytes: u64,
}

/// How one direction ended.
enum PipeEnd {
    /// The reading side closed.
    Eof,
    /// Reading failed.
    ReadFailed(io::Error),
    /// Writing failed.
    WriteFailed(io::Error),
}

impl Pipe {
    fn new() -> Pipe {
        Pipe {
            buf: BytesMut::with_capacity(RELAY_BUF_LEN),
            sent: 0,
            frames: FrameTracker::default(),
            bytes: 0,
        }
    }

    /// Writes on what is pending, then reads once: `Ready(Ok(n))` when
    /// `n` bytes were read (and are being written on), `Pending` when this
    /// direction waits for either side.
    fn poll_step<R, W>(
        &mut self,
        from: &mut R,
        to: &mut W,
        counter: &Counter,
        cx: &mut Context<'_>,
    ) -> Poll<Result<usize, PipeEnd>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        while self.sent < self.buf.len() {
            match Pin::new(&mut *to).poll_write(cx, &self.buf[self.sent..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(PipeEnd::WriteFailed(io::ErrorKind::WriteZero.into())))
                }
                Poll::Ready(Ok(n)) => self.sent += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(PipeEnd::WriteFailed(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
        // A TLS writer may still hold records: out before the next read.
        match Pin::new(&mut *to).poll_flush(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(PipeEnd::WriteFailed(e))),
            Poll::Pending => return Poll::Pending,
        }
        self.buf.clear();
        self.sent = 0;
        let read = pin!(from.read_buf(&mut self.buf)).poll(cx);
        match read {
            Poll::Ready(Ok(0)) => Poll::Ready(Err(PipeEnd::Eof)),
            Poll::Ready(Ok(n)) => {
                self.frames.advance(&self.buf);
                self.bytes += n as u64;
                counter.increment(n as u64);
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(PipeEnd::ReadFailed(e))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Why the relay loop stopped.
enum Step {
    /// The client direction ended.
    Up(PipeEnd),
    /// The backend direction ended.
    Down(PipeEnd),
    /// The session must end and is between transactions.
    Stop(StopReason),
}

/// The session: both streams and both directions.
struct Relay<'a, C, B> {
    client: C,
    backend: B,
    up: Pipe,
    down: Pipe,
    counters: &'a RelayCounters,
    /// The client sent `Terminate` or closed: the backend's close is the
    /// expected end, not a lost backend.
    client_done: bool,
}

impl<C, B> Relay<'_, C, B>
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    /// Every request read from the client has had its `ReadyForQuery`,
    /// the client has been sent all of it, the last said idle, and neither
    /// side is inside a message.
    fn between_transactions(&self) -> bool {
        self.down.sent == self.down.buf.len()
            && self.down.frames.at_boundary()
            && self.down.frames.status() == b'I'
            && self.down.frames.readies() == self.up.frames.requests()
            && self.up.frames.at_boundary()
    }

    /// Moves bytes both ways (the client's way only when `upstream`) until
    /// a direction ends or, once `stop` has fired, the session is between
    /// transactions.
    async fn run(
        &mut self,
        upstream: bool,
        mut stop: Option<Pin<&mut (dyn Future<Output = StopReason> + Send + '_)>>,
    ) -> Step {
        let mut stopping = None;
        std::future::poll_fn(|cx| loop {
            if let Some(fired) = stop.as_mut() {
                if let Poll::Ready(reason) = fired.as_mut().poll(cx) {
                    stopping = Some(reason);
                    stop = None;
                }
            }
            let mut moved = false;
            if upstream {
                match self.up.poll_step(
                    &mut self.client,
                    &mut self.backend,
                    &self.counters.from_client,
                    cx,
                ) {
                    Poll::Ready(Ok(_)) => {
                        moved = true;
                        if self.up.frames.last_tag() == Some(b'X') {
                            self.client_done = true;
                        }
                    }
                    Poll::Ready(Err(end)) => return Poll::Ready(Step::Up(end)),
                    Poll::Pending => {}
                }
            }
            match self.down.poll_step(
                &mut self.backend,
                &mut self.client,
                &self.counters.to_client,
                cx,
            ) {
                Poll::Ready(Ok(_)) => moved = true,
                Poll::Ready(Err(end)) => return Poll::Ready(Step::Down(end)),
                Poll::Pending => {}
            }
            // After the writes: the last ReadyForQuery has reached the
            // client.
            if let Some(reason) = stopping.filter(|_| self.between_transactions()) {
                return Poll::Ready(Step::Stop(reason));
            }
            if !moved {
                return Poll::Pending;
            }
        })
        .await
    }

    /// The backend's direction ended with `end`.
    async fn backend_ended(&mut self, end: PipeEnd) -> RelayEnd {
        let error = match end {
            PipeEnd::WriteFailed(e) => {
                self.client_done = true;
                return RelayEnd::ClientError(e);
            }
            PipeEnd::Eof => None,
            PipeEnd::ReadFailed(e) => Some(e),
        };
        if self.client_done {
            return RelayEnd::ClientClosed;
        }
        // Between messages, and the backend did not explain itself with an
        // ErrorResponse of its own: tell the client what happened.
        let frames = &self.down.frames;
        let client_told = frames.at_boundary() && frames.last_tag() != Some(b'E');
        if client_told {
            let _ = super::error::server_lost().send(&mut self.client).await;
        }
        let _ = self.client.shutdown().await;
        RelayEnd::BackendLost { client_told, error }
    }

    /// The rest of what the backend sends, for at most
    /// [`BACKEND_CLOSE_WAIT`], once the client's direction has ended.
    async fn drain_backend(&mut self) -> Option<RelayEnd> {
        let step = tokio::time::timeout(BACKEND_CLOSE_WAIT, self.run(false, None)).await;
        match step {
            Ok(Step::Down(end)) => Some(self.backend_ended(end).await),
            _ => None,
        }
    }
}

/// Relays until one side is done, or until `lifecycle` says stopping or
/// `server_changed` completes, and the session is between transactions.
/// Not cancel safe.
pub(crate) async fn relay<C, B>(
    client: C,
    backend: B,
    counters: &RelayCounters,
    bytes: &mut RelayBytes,
    mut lifecycle: watch::Receiver<State>,
    server_changed: impl Future<Output = ()> + Send,
) -> RelayEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut relay = Relay {
        client,
        backend,
        up: Pipe::new(),
        down: Pipe::new(),
        counters,
        client_done: false,
    };
    let stop = pin!(async {
        tokio::select! {
            _ = lifecycle.wait_for(|s| s.is_stopping()) => StopReason::ShuttingDown,
            () = server_changed => StopReason::ServerChanged,
        }
    });
    let step = relay.run(true, Some(stop)).await;
    let end = match step {
        Step::Stop(reason) => {
            let (error, end) = match reason {
                StopReason::ShuttingDown => (
                    super::error::SessionError::ShuttingDown,
                    RelayEnd::ShuttingDown,
                ),
                StopReason::ServerChanged => (
                    super::error::SessionError::ServerNoLongerFits,
                    RelayEnd::ServerChanged,
                ),
            };
            if let Some(error) = error.client_error("") {
                let _ = error.send(&mut relay.client).await;
            }
            let _ = relay.client.shutdown().await;
            end
        }
        Step::Up(PipeEnd::Eof) => {
            relay.client_done = true;
            let _ = relay.backend.shutdown().await;
            // Let the backend's last bytes and its close come through.
            relay.drain_backend().await;
            RelayEnd::ClientClosed
        }
        Step::Up(PipeEnd::ReadFailed(e)) => RelayEnd::ClientError(e),
        // Writing to the backend failed: the reading side sees the loss
        // too and tells the client at a message boundary.
        Step::Up(PipeEnd::WriteFailed(e)) => {
            relay
                .drain_backend()
                .await
                .unwrap_or(RelayEnd::BackendLost {
                    client_told: false,
                    error: Some(e),
                })
        }
        Step::Down(end) => relay.backend_ended(end).await,
    };
    bytes.from_client = relay.up.bytes;
    bytes.to_client = relay.down.bytes;
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
            relay(
                client_side,
                backend_side,
                &counters(),
                &mut bytes,
                rx,
                std::future::pending(),
            )
            .await
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
                std::future::pending(),
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
                std::future::pending(),
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
                std::future::pending(),
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
                std::future::pending(),
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
