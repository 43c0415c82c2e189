//! The clients connected right now, for the admin console's `SHOW CLIENTS`
//! and `SHOW SERVERS`.
//!
//! A session registers its client once routed ([`Clients::register`]) and
//! the returned guard removes it when the session ends, however it ends.
//! Pool checkouts mark the client waiting or active through a task-local
//! ([`scope`], [`current`]): the pool learns whose checkout it serves without
//! the session relay threading a handle through every call.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::SystemTime;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::metrics::tally::{Count, Tally};

/// Every connected client of one server.
#[derive(Default)]
pub(crate) struct Clients {
    next_id: AtomicU64,
    map: Mutex<HashMap<u64, Arc<ClientEntry>>>,
}

/// One connected client.
#[derive(Debug)]
pub(crate) struct ClientEntry {
    /// Process-unique id.
    pub id: u64,
    /// Tenant id.
    pub tenant: String,
    /// User name, as sent to the backend.
    pub user: String,
    /// Database name, as sent to the backend.
    pub database: String,
    /// Real client address.
    pub addr: SocketAddr,
    /// Whether the client connection is TLS.
    pub tls: bool,
    /// When the client connected.
    pub since: SystemTime,
    state: AtomicU8,
    /// Woken on a reload and when the server starts stopping
    /// ([`Clients::wake_idle`]): an idle pooled session waits on it
    /// besides its client.
    pub(crate) idle_wake: atomic_waker::AtomicWaker,
    /// Bytes, queries and transactions of a pooled session.
    pub(crate) tally: Tally,
}

/// What a client is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientState {
    /// Between transactions, holding no backend.
    Idle,
    /// Waiting for a pooled backend.
    Waiting,
    /// Holding a backend.
    Active,
}

impl ClientState {
    /// The name `SHOW CLIENTS` prints.
    pub(crate) fn name(self) -> &'static str {
        match self {
            ClientState::Idle => "idle",
            ClientState::Waiting => "waiting",
            ClientState::Active => "active",
        }
    }
}

impl ClientEntry {
    /// What the client is doing now.
    pub(crate) fn state(&self) -> ClientState {
        match self.state.load(Ordering::Relaxed) {
            1 => ClientState::Waiting,
            2 => ClientState::Active,
            _ => ClientState::Idle,
        }
    }

    /// Records what the client is doing.
    pub(crate) fn set_state(&self, state: ClientState) {
        let n = match state {
            ClientState::Idle => 0,
            ClientState::Waiting => 1,
            ClientState::Active => 2,
        };
        self.state.store(n, Ordering::Relaxed);
    }
}

/// What a session tells the registry about its client.
#[derive(Debug, Clone)]
pub(crate) struct NewClient {
    /// Tenant id.
    pub tenant: String,
    /// User name.
    pub user: String,
    /// Database name.
    pub database: String,
    /// Real client address.
    pub addr: SocketAddr,
    /// TLS or not.
    pub tls: bool,
    /// Initial state.
    pub state: ClientState,
}

/// Keeps a client listed; removes it when dropped.
pub(crate) struct Registered<'a> {
    clients: &'a Clients,
    /// The entry.
    pub entry: Arc<ClientEntry>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.clients
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.entry.id);
    }
}

impl Clients {
    /// Lists a client until the returned guard is dropped.
    pub(crate) fn register(&self, client: NewClient) -> Registered<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = Arc::new(ClientEntry {
            id,
            user: client.user,
            database: client.database,
            addr: client.addr,
            tls: client.tls,
            since: SystemTime::now(),
            state: AtomicU8::new(0),
            idle_wake: atomic_waker::AtomicWaker::new(),
            tally: Tally::new(&client.tenant),
            tenant: client.tenant,
        });
        entry.set_state(client.state);
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, entry.clone());
        Registered {
            clients: self,
            entry,
        }
    }

    /// The connected clients, oldest first.
    pub(crate) fn snapshot(&self) -> Vec<Arc<ClientEntry>> {
        let mut all: Vec<_> = self
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        all.sort_by_key(|c| c.id);
        all
    }

    /// Wakes every client's idle wait (a reload, a stop).
    pub(crate) fn wake_idle(&self) {
        for c in self
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            c.idle_wake.wake();
        }
    }

    /// Connected clients per tenant.
    pub(crate) fn count_by_tenant(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for c in self
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            *counts.entry(c.tenant.clone()).or_insert(0) += 1;
        }
        counts
    }
}

tokio::task_local! {
    static CURRENT: Arc<ClientEntry>;
}

/// Runs `session` with `entry` as the current task's client, so that pool
/// checkouts inside it can mark the client waiting or active.
///
/// A plain function, not an `async fn`: an `async fn` wrapper would hold
/// `session` twice in its state (as its argument and inside the awaited
/// scope), doubling what every idle connection's task costs.
pub(crate) fn scope<F: Future>(
    entry: Arc<ClientEntry>,
    session: F,
) -> impl Future<Output = F::Output> {
    CURRENT.scope(entry, session)
}

/// The client the current task serves, inside [`scope`].
pub(crate) fn current() -> Option<Arc<ClientEntry>> {
    CURRENT.try_with(Arc::clone).ok()
}

/// A client stream that counts the bytes passing in the session's
/// [`Tally`], for sessions whose relay does not count them itself (pooled
/// sessions).
pub(crate) struct Counted<'a, S> {
    inner: &'a mut S,
    tally: &'a Tally,
}

impl<'a, S> Counted<'a, S> {
    /// Wraps `inner`.
    pub(crate) fn new(inner: &'a mut S, tally: &'a Tally) -> Self {
        Counted { inner, tally }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.tally
                .add(Count::BytesFromClient, (buf.filled().len() - before) as u64);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut *self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.tally.add(Count::BytesToClient, n as u64);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut *self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            self.tally.add(Count::BytesToClient, n as u64);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: crate::stream::ReadReady> crate::stream::ReadReady for Counted<'_, S> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.inner.poll_read_ready(cx)
    }

    fn waits_without_buffer(&self) -> bool {
        self.inner.waits_without_buffer()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(tenant: &str) -> NewClient {
        NewClient {
            tenant: tenant.to_owned(),
            user: "app".to_owned(),
            database: "app".to_owned(),
            addr: SocketAddr::from(([127, 0, 0, 1], 5000)),
            tls: false,
            state: ClientState::Idle,
        }
    }

    #[test]
    fn guard_removes_its_entry() {
        let clients = Clients::default();
        let a = clients.register(client("a"));
        let b = clients.register(client("b"));
        assert_eq!(clients.snapshot().len(), 2);
        drop(a);
        let left = clients.snapshot();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].tenant, "b");
        b.entry.set_state(ClientState::Waiting);
        assert_eq!(left[0].state(), ClientState::Waiting);
        assert_eq!(clients.count_by_tenant().get("b"), Some(&1));
        drop(b);
        assert!(clients.snapshot().is_empty());
    }

    #[tokio::test]
    async fn current_is_set_only_inside_scope() {
        let clients = Clients::default();
        let a = clients.register(client("a"));
        assert!(current().is_none());
        let id = scope(a.entry.clone(), async { current().map(|c| c.id) }).await;
        assert_eq!(id, Some(a.entry.id));
    }
}
