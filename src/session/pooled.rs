//! A client served from a pool: pgcell authenticates it, answers its
//! startup from the pool's parameters, and lends it a backend per session
//! or per transaction.
//!
//! In transaction mode a backend is held from the client's first message
//! after idle until `ReadyForQuery` with status `I`, with no `Query`,
//! `Sync` or `FunctionCall` outstanding and no extended-protocol sequence
//! left open. Parameters the backend reports (`ParameterStatus`) are
//! tracked per client and restored on the next backend with `set_config`.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::login::{self, LoginError};
use super::prepared::ClientStatements;
use super::relay::RelayBytes;
use super::SessionError;
use crate::cancel::{CancelTarget, Registration};
use crate::config::PoolMode;
use crate::metrics as m;
use crate::pool::server::BackendLogin;
use crate::pool::server::{parameter_status, set_param};
use crate::pool::{AcquireError, Lease, OpenSettings, Pool, PoolKey};
use crate::protocol::framing::{peek_message, split_message, Message, Peeked, HEADER_LEN};
use crate::protocol::messages;
use crate::protocol::startup::StartupMessage;
use crate::protocol::SqlState;
use crate::route::{ClientInfo, Route};
use crate::server::Shared;
use crate::stream::ReadReady;
use std::sync::Arc;

/// Largest backend message relayed in pooled mode (PostgreSQL's own limit
/// is 1 GiB for most messages); client messages are bounded by
/// `listen.max_message_size`.
pub const MAX_POOLED_MESSAGE_LEN: usize = 256 << 20;
/// Read buffer size, each direction, while a backend is leased.
const READ_CHUNK: usize = 32 * 1024;
/// Read buffer size of an idle client: most statements fit, and an idle
/// client should cost little memory (thousands of them sit idle).
const IDLE_READ_CHUNK: usize = 2 * 1024;
/// First read from a backend: a short result fits.
const SERVER_READ_CHUNK: usize = 4 * 1024;

/// Makes room to read into `buf`: `small` bytes when it is empty (the
/// common case, a short statement), a full chunk when a message is
/// already partly in. A buffer given back with [`recycle`] is taken
/// first.
fn reserve_read(buf: &mut BytesMut, small: usize) {
    if buf.capacity() == 0 {
        reuse(buf);
    }
    buf.reserve(if buf.is_empty() { small } else { READ_CHUNK });
}

/// Spare buffers kept per thread for the next transaction.
const MAX_SPARE_BUFFERS: usize = 64;

thread_local! {
    /// Empty backend-side buffers of sessions that went idle: a
    /// transaction-mode session gives its buffers back between
    /// transactions (an idle client holds none) and takes them again for
    /// the next one, without a trip through the allocator each time.
    static SPARE_BUFFERS: std::cell::RefCell<Vec<BytesMut>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Gives an empty `buf` back for reuse; it is left without memory.
fn recycle(buf: &mut BytesMut) {
    if !buf.is_empty() || buf.capacity() == 0 {
        return;
    }
    let mut spare = std::mem::take(buf);
    // Back to the start of its memory (it may have been advanced over
    // what was sent), so that `capacity` is all of it; large ones (a big
    // result went through) and ones still shared with a message are
    // freed.
    if !spare.try_reclaim(SERVER_READ_CHUNK) || spare.capacity() > READ_CHUNK {
        return;
    }
    SPARE_BUFFERS.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < MAX_SPARE_BUFFERS {
            s.push(spare);
        }
    });
}

/// Puts a spare buffer into an empty `buf` that has no memory, if there is
/// one on this thread.
fn reuse(buf: &mut BytesMut) {
    if buf.capacity() == 0 {
        if let Some(spare) = SPARE_BUFFERS.with(|s| s.borrow_mut().pop()) {
            *buf = spare;
        }
    }
}

/// Frees an empty buffer above `keep` bytes, so idle sessions stay small.
fn shrink(buf: &mut BytesMut, keep: usize) {
    if buf.is_empty() && buf.capacity() > keep {
        *buf = BytesMut::new();
    }
}

/// Reported parameters no session can set.
const READ_ONLY: &[&str] = &[
    "server_version",
    "server_encoding",
    "integer_datetimes",
    "is_superuser",
    "session_authorization",
    "in_hot_standby",
    "scram_iterations",
];

/// Startup parameters that are not session settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

/// Serves a pooled client to the end. `startup` is already rewritten for
/// the backend (tenant tokens removed).
pub async fn serve<C>(
    shared: &Shared,
    client: &mut C,
    startup: &StartupMessage,
    route: &Route,
    info: &ClientInfo,
    bytes: &mut RelayBytes,
) -> Result<(), SessionError>
where
    C: AsyncRead + AsyncWrite + ReadReady + Unpin,
{
    // Boxed: logging in and setting up is done once, and its state would
    // otherwise stay in every idle client's task.
    let mut session = Box::pin(open(shared, client, startup, route, info, bytes)).await?;
    let result = session.run(client).await;
    session.finish().await;
    result
}

/// Logs the client in, answers its startup and sets up its session.
async fn open<'a, C>(
    shared: &'a Shared,
    client: &mut C,
    startup: &StartupMessage,
    route: &Route,
    info: &ClientInfo,
    bytes: &'a mut RelayBytes,
) -> Result<Session<'a>, SessionError>
where
    C: AsyncRead + AsyncWrite + ReadReady + Unpin,
{
    let tenant = &route.tenant;
    let user = startup.get("user").unwrap_or_default().to_owned();
    let database = startup.get("database").unwrap_or(&user).to_owned();

    // Taken before the (possibly slow) login, so a reload during it is
    // followed afterwards.
    let seen_reload = *shared.reloaded.borrow();
    // The exchange is bounded like a backend's authentication_timeout, so
    // clients that stall mid-exchange cannot hold connection slots.
    // Boxed: the exchange's state is only needed once, and inline it
    // would stay in every idle client's task.
    let login = match Box::pin(tokio::time::timeout(
        shared.settings.auth_timeout,
        login::authenticate(client, tenant, &user, &database, info, &shared.mock_key),
    ))
    .await
    .unwrap_or_else(|_| Err(LoginError::Malformed("authentication timed out".to_owned())))
    {
        Ok(login) => login,
        Err(e) => {
            metrics::counter!(m::AUTH_FAILURES, "tenant" => tenant.id().to_owned(), "reason" => e.reason())
                .increment(1);
            if matches!(e, LoginError::Failed(_)) {
                tokio::time::sleep(login::AUTH_FAILURE_DELAY).await;
            }
            return Err(SessionError::Login(e));
        }
    };

    let open = OpenSettings {
        connect_timeout: shared.settings.connect_timeout,
        login_timeout: shared.settings.auth_timeout,
        keepalive: shared.settings.tcp_keepalive,
    };
    let key = PoolKey {
        tenant: tenant.id().to_owned(),
        database,
        user: user.clone(),
    };
    // The tenant as configured now (a reload may have run during login):
    // an older copy must never replace a newer pool.
    let Some(current) = shared.routes.load().tenant(tenant.id()) else {
        return Err(SessionError::TenantRemoved);
    };
    let pool = shared.pools.get(key, &current, open);
    let Some(pool_slot) = pool.admit_client() else {
        return Err(SessionError::PoolFull);
    };
    // The latest verified login wins: an auth_query user's secret, and so
    // the ClientKey, changes with its password.
    pool.replace_login(login.clone());

    // The startup answer needs the backend's parameters: the first client
    // of a pool waits for one backend to log in.
    let mut first_lease = None;
    let server_params = match pool.params() {
        Some(p) => p,
        None => {
            let lease = acquire(&pool).await?;
            let params = lease.conn.params.clone();
            first_lease = Some(lease);
            params
        }
    };

    // Every reported setting starts at the pool's login value, so a
    // backend another client changed is put back for this one.
    let mut wanted: Vec<(String, String)> = server_params
        .iter()
        .filter(|(name, _)| !READ_ONLY.contains(&name.as_str()))
        .cloned()
        .collect();
    for (name, value) in &startup.params {
        if !NOT_SETTINGS.contains(&name.as_str()) {
            set_param(&mut wanted, name.clone(), value.clone());
        }
    }
    for (name, value) in parse_options(startup.get("options").unwrap_or_default()) {
        set_param(&mut wanted, name, value);
    }

    let registration = shared.cancel.register_idle(info.vpce_id.as_deref());
    let mut out = BytesMut::new();
    for (name, value) in &server_params {
        let value = wanted
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
            .unwrap_or(value);
        let mut body = Vec::new();
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
        messages::tagged(&mut out, b'S', &body);
    }
    messages::backend_key_data(&mut out, registration.key());
    messages::tagged(&mut out, b'Z', b"I");
    client
        .write_all(&out)
        .await
        .map_err(SessionError::ClientIo)?;
    client.flush().await.map_err(SessionError::ClientIo)?;

    // Clients of one application have the same settings: one copy.
    let wanted_fingerprint = fingerprint(&wanted);
    let shared_wanted = pool.share_settings(wanted, wanted_fingerprint);
    let mut session = Session {
        shared,
        open,
        login,
        seen_reload,
        reloads: shared.reloaded.subscribe(),
        lifecycle: shared.lifecycle.subscribe(),
        pool: pool.clone(),
        _pool_slot: pool_slot,
        registration,
        defaults: shared_wanted.clone(),
        wanted_fingerprint,
        wanted: shared_wanted,
        lease: None,
        pending: 0,
        open_sequence: false,
        status: b'I',
        bytes,
        tenant: tenant.id().to_owned(),
        statements: ClientStatements::default(),
        pinned: false,
        skipping_to_sync: false,
        syncs_since_execute: 0,
        in_copy: false,
        state_dirty: false,
        checked_out_at: std::time::Instant::now(),
        transaction_seconds: metrics::histogram!(m::TRANSACTION_SECONDS, "tenant" => tenant.id().to_owned()),
        queries: metrics::counter!(m::QUERIES, "tenant" => tenant.id().to_owned()),
        transactions: metrics::counter!(m::TRANSACTIONS, "tenant" => tenant.id().to_owned()),
    };
    if let Some(lease) = first_lease {
        if pool.mode == PoolMode::Session {
            session.checkout(lease, client).await?;
        } else {
            pool.release(lease, true);
        }
    }
    Ok(session)
}

async fn acquire(pool: &Arc<Pool>) -> Result<Lease, SessionError> {
    // An idle backend ready to go needs no waiting (the common case);
    // the waiting path is boxed so its large state is not part of every
    // idle client's task.
    if let Some(lease) = pool.try_acquire_idle() {
        return Ok(lease);
    }
    Box::pin(pool.acquire())
        .await
        .map_err(SessionError::Acquire)
}

struct Session<'a> {
    shared: &'a Shared,
    open: OpenSettings,
    /// How this client's backends log in (kept for replacement pools).
    login: BackendLogin,
    /// The reload generation this session has caught up with.
    seen_reload: u64,
    reloads: tokio::sync::watch::Receiver<u64>,
    /// The server's lifecycle: idle clients leave when it is stopping.
    lifecycle: tokio::sync::watch::Receiver<crate::lifecycle::State>,
    pool: Arc<Pool>,
    /// This client's place among the pool's `max_client_connections`.
    _pool_slot: crate::pool::ClientSlot,
    registration: Registration,
    /// Settings the client asked for, to apply on every backend it gets.
    wanted: Arc<Vec<(String, String)>>,
    /// [`fingerprint`] of `wanted`.
    wanted_fingerprint: u64,
    /// `wanted` as of login, for `DISCARD ALL`.
    defaults: Arc<Vec<(String, String)>>,
    lease: Option<Lease>,
    /// `ReadyForQuery` messages still to come.
    pending: usize,
    /// Extended-protocol messages sent since the last `Sync`.
    open_sequence: bool,
    /// Transaction status of the last `ReadyForQuery`.
    status: u8,
    bytes: &'a mut RelayBytes,
    tenant: String,
    /// Named prepared statements (transaction mode).
    statements: ClientStatements,
    /// Kept on its backend for good (`pin_session_state`).
    pinned: bool,
    /// A pipeline failed for want of a backend: drop messages to its Sync.
    skipping_to_sync: bool,
    /// Syncs sent since the last Execute (see `count_client_message`).
    syncs_since_execute: usize,
    /// The backend is in copy-in mode (after CopyInResponse).
    in_copy: bool,
    /// This checkout left session state on the backend.
    state_dirty: bool,
    /// When the current backend was checked out.
    checked_out_at: std::time::Instant,
    /// `pgcell_transaction_duration_seconds` for this tenant.
    transaction_seconds: metrics::Histogram,
    /// `pgcell_queries_total` for this tenant.
    queries: metrics::Counter,
    /// `pgcell_transactions_total` for this tenant.
    transactions: metrics::Counter,
}

impl Session<'_> {
    async fn run<C>(&mut self, client: &mut C) -> Result<(), SessionError>
    where
        C: AsyncRead + AsyncWrite + ReadReady + Unpin,
    {
        if self.pool.mode == PoolMode::Session && self.lease.is_none() {
            let lease = acquire(&self.pool).await?;
            if let Some(lease) = self.try_checkout(lease) {
                Box::pin(self.checkout_restoring(lease, client)).await?;
            }
        }
        // Allocated as needed and given back between transactions.
        let mut from_client = BytesMut::new();
        let mut from_server = BytesMut::new();
        let mut to_server = BytesMut::new();
        let mut to_client = BytesMut::new();
        loop {
            if !from_client.is_empty() {
                reuse(&mut to_server);
            }
            // Forward every complete client message.
            let mut terminated = false;
            while let Some(msg) =
                split_message(&mut from_client, self.shared.settings.max_message_size)
                    .map_err(|e| SessionError::ClientProtocol(e.to_string()))?
            {
                if msg.tag == b'X' {
                    terminated = true;
                    break;
                }
                if self.skipping_to_sync {
                    // The rest of a pipeline whose backend never came.
                    if msg.tag == b'S' {
                        self.skipping_to_sync = false;
                        self.answer_ready(client).await?;
                    }
                    continue;
                }
                // SQL that would drop other clients' statements off a shared
                // backend is answered here, when nothing is in flight.
                if self.pool.mode == PoolMode::Transaction
                    && msg.tag == b'Q'
                    && self.pending == 0
                    && !self.open_sequence
                {
                    let in_transaction = self.status != b'I';
                    if let Some(tag) = self.statements.answer_locally(&msg.body, in_transaction) {
                        if tag == "DISCARD ALL" {
                            self.wanted = self.defaults.clone();
                            self.wanted_fingerprint = fingerprint(&self.wanted);
                        }
                        let mut out = BytesMut::new();
                        let mut body = tag.as_bytes().to_vec();
                        body.push(0);
                        messages::tagged(&mut out, b'C', &body);
                        messages::tagged(&mut out, b'Z', &[self.status]);
                        client
                            .write_all(&out)
                            .await
                            .map_err(SessionError::ClientIo)?;
                        continue;
                    }
                }
                if self.lease.is_none() {
                    self.follow_reload(client).await?;
                    let lease = match acquire(&self.pool).await {
                        Ok(lease) => lease,
                        Err(SessionError::Acquire(AcquireError::Timeout(wait))) => {
                            // The statement fails, the session goes on: like
                            // PostgreSQL after an error, skip to the Sync.
                            self.refuse_statement(client, wait).await?;
                            match msg.tag {
                                b'Q' | b'F' => self.answer_ready(client).await?,
                                b'S' => self.answer_ready(client).await?,
                                _ => self.skipping_to_sync = true,
                            }
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    if let Some(lease) = self.try_checkout(lease) {
                        Box::pin(self.checkout_restoring(lease, client)).await?;
                    }
                }
                self.count_client_message(&msg);
                match (self.pool.mode, self.lease.as_mut()) {
                    (PoolMode::Transaction, Some(lease)) => self
                        .statements
                        .forward(&msg, &mut lease.conn.prepared, &mut to_server)
                        .map_err(|e| SessionError::ClientProtocol(format!("{e:?}")))?,
                    _ => messages::tagged(&mut to_server, msg.tag, &msg.body),
                }
            }
            if !to_server.is_empty() {
                let Some(lease) = self.lease.as_mut() else {
                    return Err(SessionError::BackendLost);
                };
                self.bytes.from_client += to_server.len() as u64;
                // Read while writing: a big pipeline whose answers fill the
                // socket buffers would otherwise block both sides for good.
                if write_draining(&mut lease.conn.stream, &to_server, &mut from_server)
                    .await
                    .is_err()
                {
                    return self.backend_lost(client).await;
                }
                to_server.clear();
                if !from_server.is_empty() {
                    self.deliver(
                        client,
                        &mut from_server,
                        &mut to_client,
                        from_client.is_empty(),
                    )
                    .await?;
                }
            }
            if terminated {
                return Ok(());
            }

            let Some(lease) = self.lease.as_mut() else {
                // Idle in transaction mode: only the client moves, or a
                // reload that may have removed the tenant.
                // Idle between transactions: hold no buffer at all (a
                // plaintext client is waited for by readiness; a TLS one
                // gets its read buffer back to the idle size).
                for buf in [&mut from_server, &mut to_server, &mut to_client] {
                    recycle(buf);
                }
                if client.waits_without_buffer() {
                    recycle(&mut from_client);
                } else {
                    shrink(&mut from_client, IDLE_READ_CHUNK);
                }
                enum Woken {
                    Read(std::io::Result<usize>),
                    Reloaded(bool),
                    Stopping,
                }
                let next = async {
                    if !client.waits_without_buffer() {
                        reserve_read(&mut from_client, IDLE_READ_CHUNK);
                        return client.read_buf(&mut from_client).await;
                    }
                    loop {
                        std::future::poll_fn(|cx| client.poll_read_ready(cx)).await?;
                        reserve_read(&mut from_client, IDLE_READ_CHUNK);
                        // Readiness can be stale (the last read took exactly
                        // what it asked for): one try without waiting, and
                        // the buffer goes back when nothing was there.
                        let attempt = {
                            let mut read = std::pin::pin!(client.read_buf(&mut from_client));
                            std::future::poll_fn(|cx| {
                                std::task::Poll::Ready(
                                    match std::future::Future::poll(read.as_mut(), cx) {
                                        std::task::Poll::Ready(r) => Some(r),
                                        std::task::Poll::Pending => None,
                                    },
                                )
                            })
                            .await
                        };
                        match attempt {
                            Some(read) => return read,
                            None => recycle(&mut from_client),
                        }
                    }
                };
                let woken = tokio::select! {
                    read = next => Woken::Read(read),
                    changed = self.reloads.changed() => Woken::Reloaded(changed.is_ok()),
                    () = async { let _ = self.lifecycle.wait_for(|s| s.is_stopping()).await; } => Woken::Stopping,
                };
                match woken {
                    Woken::Read(Ok(0)) => return Ok(()),
                    Woken::Read(Ok(_)) => continue,
                    Woken::Read(Err(e)) => return Err(SessionError::ClientIo(e)),
                    Woken::Reloaded(true) => {
                        self.follow_reload(client).await?;
                        continue;
                    }
                    Woken::Reloaded(false) => continue,
                    Woken::Stopping => return self.leave_for_shutdown(),
                }
            };
            reserve_read(&mut from_client, IDLE_READ_CHUNK);
            reserve_read(&mut from_server, SERVER_READ_CHUNK);
            tokio::select! {
                read = client.read_buf(&mut from_client) => match read {
                    Ok(0) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(SessionError::ClientIo(e)),
                },
                read = lease.conn.stream.read_buf(&mut from_server) => match read {
                    Ok(0) | Err(_) => return self.backend_lost(client).await,
                    Ok(_) => {
                        self.deliver(client, &mut from_server, &mut to_client, from_client.is_empty())
                            .await?;
                    }
                },
            }
        }
    }

    /// Relays the complete backend messages in `from_server` to the client
    /// and hands the backend back when the transaction is over.
    ///
    /// The messages are followed in place: unless one of them is a reply
    /// pgcell swallows (to a statement it prepared on its own), the bytes
    /// go to the client straight from the read buffer, without splitting
    /// or copying a message.
    async fn deliver<C: AsyncWrite + Unpin>(
        &mut self,
        client: &mut C,
        from_server: &mut BytesMut,
        to_client: &mut BytesMut,
        client_quiet: bool,
    ) -> Result<(), SessionError> {
        let (end, copied, release) = self.relay_server_messages(from_server, to_client)?;
        let out: &[u8] = if copied {
            to_client
        } else {
            &from_server[..end]
        };
        self.bytes.to_client += out.len() as u64;
        client
            .write_all(out)
            .await
            .map_err(SessionError::ClientIo)?;
        to_client.clear();
        from_server.advance(end);
        if release && client_quiet {
            self.checkin();
        }
        // Between transactions: a removed tenant's clients leave here, and
        // every client when the server is stopping.
        if self.status == b'I' && self.pending == 0 && !self.open_sequence {
            if self.lifecycle.borrow().is_stopping() {
                return self.leave_for_shutdown();
            }
            self.follow_reload(client).await?;
        }
        Ok(())
    }

    fn count_client_message(&mut self, msg: &Message) {
        if matches!(msg.tag, b'Q' | b'E') {
            self.queries.increment(1);
        }
        if self.pool.mode == PoolMode::Transaction && matches!(msg.tag, b'Q' | b'P') {
            self.note_session_state(msg);
        }
        match msg.tag {
            // Simple query and function call: one ReadyForQuery each.
            b'Q' | b'F' => {
                self.pending += 1;
                self.syncs_since_execute = 0;
            }
            // Sync ends an extended-protocol sequence. In copy-in mode the
            // backend ignores it: no ReadyForQuery will answer it.
            b'S' if self.in_copy => self.statements.syncs_ignored(1),
            b'S' => {
                self.pending += 1;
                self.open_sequence = false;
                self.syncs_since_execute += 1;
            }
            b'E' => {
                self.open_sequence = true;
                self.syncs_since_execute = 0;
            }
            b'P' | b'B' | b'D' | b'C' | b'H' => self.open_sequence = true,
            // CopyDone/CopyFail end copy-in mode (entered when the backend
            // sent CopyInResponse); CopyData belongs to the COPY already
            // counted.
            b'c' | b'f' => self.in_copy = false,
            _ => {}
        }
    }

    /// Counts (and with `pin_session_state`, pins for) statements whose
    /// effect outlives the transaction on this backend only.
    fn note_session_state(&mut self, msg: &Message) {
        let sql = match msg.tag {
            b'Q' => &msg.body[..],
            // Parse: statement name, then the query text.
            _ => match msg.body.iter().position(|&b| b == 0) {
                Some(end) => &msg.body[end + 1..],
                None => return,
            },
        };
        let Some(kind) = session_state_kind(sql) else {
            return;
        };
        if kind == "set" && self.status != b'I' {
            // SET inside a transaction ends with it (or is SET LOCAL).
            return;
        }
        metrics::counter!(m::SESSION_STATE, "tenant" => self.tenant.clone(), "kind" => kind)
            .increment(1);
        self.state_dirty = true;
        if self.pool.pin_session_state() && !self.pinned {
            self.pinned = true;
            tracing::debug!(tenant = %self.tenant, kind, "client pinned to its backend");
        }
    }

    /// Follows the complete backend messages at the front of `from_server`
    /// and updates the session from them. Returns how many bytes they
    /// take, whether they were copied to `to_client` (only when one of
    /// them is swallowed: then `to_client` holds the rest; otherwise
    /// `from_server[..end]` goes to the client as it is), and whether the
    /// backend may go back to the pool (transaction mode, idle).
    fn relay_server_messages(
        &mut self,
        from_server: &mut BytesMut,
        to_client: &mut BytesMut,
    ) -> Result<(usize, bool, bool), SessionError> {
        let mut ready_seen = false;
        let mut pos = 0;
        // Once a message is swallowed, the kept ones are copied; `kept`
        // is where the bytes not copied yet start.
        let mut copied = false;
        let mut kept = 0;
        loop {
            let (tag, len) = match peek_message(&from_server[pos..], MAX_POOLED_MESSAGE_LEN)
                .map_err(|_| SessionError::BackendLost)?
            {
                Peeked::Complete { tag, len } => (tag, len),
                Peeked::Incomplete(needed) => {
                    // Room for the whole of a long message, read once.
                    let have = from_server.len() - pos;
                    if needed > have {
                        from_server.reserve(needed - have);
                    }
                    break;
                }
            };
            let body = &from_server[pos + HEADER_LEN..pos + len];
            if !self.on_server_message(tag, body) {
                to_client.extend_from_slice(&from_server[kept..pos]);
                kept = pos + len;
                copied = true;
            }
            ready_seen |= tag == b'Z';
            pos += len;
        }
        if copied {
            to_client.extend_from_slice(&from_server[kept..pos]);
        }
        let release = ready_seen
            && self.pool.mode == PoolMode::Transaction
            && self.pending == 0
            && !self.open_sequence
            && self.status == b'I'
            && !self.statements.awaiting()
            && !self.pinned
            && pos == from_server.len();
        Ok((pos, copied, release))
    }

    /// Updates the session from one backend message; false when the
    /// client must not see it (the reply to a statement pgcell prepared
    /// on its own).
    fn on_server_message(&mut self, tag: u8, body: &[u8]) -> bool {
        match tag {
            // Rows and the ordinary replies: nothing to follow.
            b'D' | b'T' | b'n' | b't' | b'2' | b's' | b'd' => return true,
            // Replies to Parse and Close: pgcell's own are swallowed.
            b'1' | b'3' | b'E' if self.pool.mode == PoolMode::Transaction => {
                if let Some(lease) = self.lease.as_mut() {
                    if !self
                        .statements
                        .on_backend_message(tag, &mut lease.conn.prepared)
                    {
                        return false;
                    }
                }
            }
            // CopyInResponse: the backend now reads COPY data and ignores
            // Syncs until CopyDone/CopyFail. Syncs the client already sent
            // after the COPY's Execute get no answer.
            b'G' => {
                self.in_copy = true;
                let ignored = std::mem::take(&mut self.syncs_since_execute);
                self.pending = self.pending.saturating_sub(ignored);
                self.statements.syncs_ignored(ignored);
            }
            // A DEALLOCATE ALL / DISCARD ALL that reached the backend
            // (pipelined, or inside a larger query) dropped every statement
            // pgcell prepared there.
            b'C' if body.starts_with(b"DEALLOCATE ALL\0") || body.starts_with(b"DISCARD ALL\0") => {
                if let Some(lease) = self.lease.as_mut() {
                    lease.conn.prepared.dropped_all();
                }
            }
            b'Z' => {
                if self.pool.mode == PoolMode::Transaction {
                    if let Some(lease) = self.lease.as_mut() {
                        self.statements
                            .on_backend_message(tag, &mut lease.conn.prepared);
                    }
                }
                self.pending = self.pending.saturating_sub(1);
                self.status = body.first().copied().unwrap_or(b'I');
            }
            b'S' => {
                if let Some((name, value)) = parameter_status(body) {
                    if let Some(lease) = self.lease.as_mut() {
                        set_param(&mut lease.conn.params, name.clone(), value.clone());
                        lease.conn.settings_verified = None;
                    }
                    if !READ_ONLY.contains(&name.as_str()) {
                        set_param(Arc::make_mut(&mut self.wanted), name, value);
                        self.wanted_fingerprint = fingerprint(&self.wanted);
                    }
                }
            }
            _ => {}
        }
        true
    }

    /// Tells the client its statement failed for want of a backend.
    async fn refuse_statement<C: AsyncWrite + Unpin>(
        &mut self,
        client: &mut C,
        wait: std::time::Duration,
    ) -> Result<(), SessionError> {
        let mut out = BytesMut::new();
        messages::statement_error(
            &mut out,
            SqlState::TOO_MANY_CONNECTIONS,
            &format!("no server connection free within {} ms", wait.as_millis()),
            Some("The tenant's pool is busy; retry, or raise pool.size or pool.acquire_timeout."),
        );
        client.write_all(&out).await.map_err(SessionError::ClientIo)
    }

    /// `ReadyForQuery` for a statement pgcell answered itself (no backend).
    async fn answer_ready<C: AsyncWrite + Unpin>(
        &mut self,
        client: &mut C,
    ) -> Result<(), SessionError> {
        let mut out = BytesMut::new();
        messages::tagged(&mut out, b'Z', b"I");
        client
            .write_all(&out)
            .await
            .map_err(SessionError::ClientIo)?;
        client.flush().await.map_err(SessionError::ClientIo)
    }

    /// Ends the session between transactions because the server is
    /// stopping: the client gets `57P01` (written by the caller's error
    /// report) and `finish` returns the backend.
    fn leave_for_shutdown(&mut self) -> Result<(), SessionError> {
        metrics::counter!(m::SHUTDOWN_CLOSED, "how" => "at_transaction_boundary").increment(1);
        Err(SessionError::ShuttingDown)
    }

    /// After a reload: moves to the tenant's current pool (its settings may
    /// have changed) or, when the tenant is gone, ends the session with
    /// `57P01`. Only called between transactions.
    async fn follow_reload<C: AsyncWrite + Unpin>(
        &mut self,
        client: &mut C,
    ) -> Result<(), SessionError> {
        let generation = *self.reloads.borrow_and_update();
        if generation == self.seen_reload {
            return Ok(());
        }
        self.seen_reload = generation;
        let tenant = self.shared.routes.load().tenant(&self.pool.key.tenant);
        let Some(tenant) = tenant else {
            if let Some(lease) = self.lease.take() {
                self.registration.detach();
                self.pool.release(lease, false);
            }
            let mut out = BytesMut::new();
            messages::error_response(
                &mut out,
                SqlState::ADMIN_SHUTDOWN,
                "terminating connection: the tenant was removed from this server",
                None,
            );
            let _ = client.write_all(&out).await;
            return Err(SessionError::TenantRemoved);
        };
        if self.lease.is_none() {
            let pool = self
                .shared
                .pools
                .get(self.pool.key.clone(), &tenant, self.open);
            if !Arc::ptr_eq(&pool, &self.pool) {
                pool.replace_login(self.login.clone());
                self.pool = pool;
            }
        }
        Ok(())
    }

    /// Takes `lease` for this client: restores its settings, points its
    /// cancel key at the backend.
    ///
    /// The common case (the backend already has the client's settings)
    /// does not wait; the restoring path is boxed, so that its state is
    /// not part of every client's task.
    async fn checkout<C: AsyncWrite + Unpin>(
        &mut self,
        lease: Lease,
        client: &mut C,
    ) -> Result<(), SessionError> {
        match self.try_checkout(lease) {
            None => Ok(()),
            Some(lease) => Box::pin(self.checkout_restoring(lease, client)).await,
        }
    }

    /// Takes `lease` at once when the backend has the client's settings;
    /// gives it back when they must be restored first.
    fn try_checkout(&mut self, mut lease: Lease) -> Option<Lease> {
        if !settings_in_place(&mut lease.conn, &self.wanted, self.wanted_fingerprint) {
            return Some(lease);
        }
        self.attach(lease);
        None
    }

    /// [`Session::checkout`] of a backend whose settings differ.
    async fn checkout_restoring<C: AsyncWrite + Unpin>(
        &mut self,
        mut lease: Lease,
        client: &mut C,
    ) -> Result<(), SessionError> {
        if let Err(e) = restore_settings(&mut lease, &self.wanted, self.wanted_fingerprint).await {
            let mut out = BytesMut::new();
            let (code, message) = match &e {
                RestoreError::Refused(message) => {
                    (SqlState::INVALID_PARAMETER_VALUE, message.clone())
                }
                RestoreError::Lost => (
                    SqlState::CONNECTION_FAILURE,
                    "server connection lost: the database closed the connection unexpectedly"
                        .to_owned(),
                ),
            };
            messages::error_response(&mut out, code, &message, None);
            let _ = client.write_all(&out).await;
            return Err(SessionError::BackendLost);
        }
        self.attach(lease);
        Ok(())
    }

    /// Points the session (its cancel key, its statements) at `lease`.
    fn attach(&mut self, lease: Lease) {
        self.statements.new_backend();
        self.checked_out_at = std::time::Instant::now();
        self.registration.attach(CancelTarget {
            addr: lease.conn.addr,
            key: lease.conn.key,
        });
        self.lease = Some(lease);
    }

    /// Hands the backend back between transactions.
    fn checkin(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        let cancelled = self.registration.detach();
        self.transactions.increment(1);
        self.transaction_seconds
            .record(self.checked_out_at.elapsed().as_secs_f64());
        // Session state left on the backend (LISTEN, temp tables, SET of
        // unreported settings, ...) must not reach the next client.
        let dirty = std::mem::take(&mut self.state_dirty);
        self.pool.release(lease, !cancelled && !dirty);
    }

    /// The client is gone: a session-mode backend is reset and returned, a
    /// backend left mid-transaction is closed, never returned dirty.
    async fn finish(&mut self) {
        let Some(mut lease) = self.lease.take() else {
            return;
        };
        let cancelled = self.registration.detach();
        let idle = self.pending == 0 && !self.open_sequence && self.status == b'I';
        if !idle {
            // The client left mid-query: stop the query, so the backend
            // closing does not leave it running and holding locks.
            if self.pending > 0 {
                let target = CancelTarget {
                    addr: lease.conn.addr,
                    key: lease.conn.key,
                };
                let timeout = self.shared.settings.connect_timeout;
                tokio::spawn(async move {
                    let _ = crate::cancel::send_cancel(target, timeout).await;
                });
            }
            return;
        }
        if cancelled {
            return;
        }
        let clean = match self.pool.reset_query() {
            Some(query) if self.pool.mode == PoolMode::Session => {
                let reset = run_simple(&mut lease, query).await.is_ok();
                // The reset put every setting back: what pgcell applied (or
                // the backend reported) for this client no longer holds.
                if let Some(defaults) = self.pool.params() {
                    lease.conn.params = defaults;
                }
                lease.conn.settings_verified = None;
                lease.conn.prepared.clear();
                reset
            }
            // Transaction mode: a pinned or stateful backend is closed.
            _ => !self.pinned && !self.state_dirty,
        };
        self.pool.release(lease, clean);
    }

    async fn backend_lost<C: AsyncWrite + Unpin>(
        &mut self,
        client: &mut C,
    ) -> Result<(), SessionError> {
        self.lease = None;
        self.registration.detach();
        metrics::counter!(m::BACKEND_LOST, "tenant" => self.tenant.clone()).increment(1);
        let mut out = BytesMut::new();
        messages::error_response(
            &mut out,
            SqlState::CONNECTION_FAILURE,
            "server connection lost: the database closed the connection unexpectedly",
            None,
        );
        let _ = client.write_all(&out).await;
        Err(SessionError::BackendLost)
    }
}

enum RestoreError {
    Refused(String),
    Lost,
}

/// Applies the client's settings that differ from what the backend reported
/// or pgcell last set on it. Settings the backend does not report (such as
/// `search_path` before PostgreSQL 18) are known only as pgcell set them; a
/// change by plain `SET` is not seen (README: session state).
async fn restore_settings(
    lease: &mut Lease,
    wanted: &[(String, String)],
    wanted_fingerprint: u64,
) -> Result<(), RestoreError> {
    if settings_in_place(&mut lease.conn, wanted, wanted_fingerprint) {
        return Ok(());
    }
    let mut calls = Vec::new();
    for (name, value) in wanted {
        let current = lease.conn.param(name);
        if current == Some(value.as_str()) {
            continue;
        }
        calls.push(format!(
            "pg_catalog.set_config({}, {}, false)",
            quote(name),
            quote(value)
        ));
    }
    if calls.is_empty() {
        return Ok(());
    }
    let query = format!("SELECT {}", calls.join(", "));
    run_simple(lease, &query).await?;
    for (name, value) in wanted {
        set_param(&mut lease.conn.params, name.clone(), value.clone());
    }
    lease.conn.settings_verified = Some(wanted_fingerprint);
    Ok(())
}

/// True when `conn` already has every setting of `wanted` (fingerprint
/// `fp`): known from an earlier check, or found by comparing.
fn settings_in_place(
    conn: &mut crate::pool::server::ServerConn,
    wanted: &[(String, String)],
    fp: u64,
) -> bool {
    if conn.settings_verified == Some(fp) {
        return true;
    }
    if settings_match(&conn.params, wanted) {
        conn.settings_verified = Some(fp);
        return true;
    }
    false
}

/// A fingerprint of a client's settings: equal lists, equal fingerprints
/// (names compared as PostgreSQL does, case-insensitively). Keyed per
/// process, so a client cannot aim for another client's fingerprint.
pub fn fingerprint(settings: &[(String, String)]) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static KEYS: std::sync::LazyLock<std::collections::hash_map::RandomState> =
        std::sync::LazyLock::new(std::collections::hash_map::RandomState::new);
    let mut h = KEYS.build_hasher();
    h.write_usize(settings.len());
    for (name, value) in settings {
        for b in name.bytes() {
            h.write_u8(b.to_ascii_lowercase());
        }
        h.write_u8(0);
        h.write(value.as_bytes());
        h.write_u8(0);
    }
    h.finish()
}

/// True when the backend already has every wanted setting, checked in one
/// pass: both lists come from the same login's `ParameterStatus` order, so
/// in the common case (the client changed nothing) names line up. `false`
/// also when they do not line up; the caller then compares by name.
fn settings_match(current: &[(String, String)], wanted: &[(String, String)]) -> bool {
    let mut rest = current.iter();
    'wanted: for (name, value) in wanted {
        for (n, v) in rest.by_ref() {
            if n.eq_ignore_ascii_case(name) {
                if v != value {
                    return false;
                }
                continue 'wanted;
            }
        }
        return false;
    }
    true
}

/// Runs one simple query on an idle backend and reads to `ReadyForQuery`.
async fn run_simple(lease: &mut Lease, query: &str) -> Result<(), RestoreError> {
    let mut body = query.as_bytes().to_vec();
    body.push(0);
    let mut out = BytesMut::new();
    messages::tagged(&mut out, b'Q', &body);
    lease
        .conn
        .stream
        .write_all(&out)
        .await
        .map_err(|_| RestoreError::Lost)?;
    let mut error = None;
    loop {
        let msg = crate::protocol::framing::read_message(&mut lease.conn.stream, 1 << 20)
            .await
            .map_err(|_| RestoreError::Lost)?;
        match msg.tag {
            b'E' => error = Some(crate::pool::server::error_message(&msg.body).unwrap_or_default()),
            b'S' => {
                if let Some((name, value)) = parameter_status(&msg.body) {
                    set_param(&mut lease.conn.params, name, value);
                    lease.conn.settings_verified = None;
                }
            }
            b'Z' => {
                return match (error, msg.body.first()) {
                    (None, Some(b'I')) => Ok(()),
                    (Some(e), _) => Err(RestoreError::Refused(e)),
                    (None, _) => Err(RestoreError::Lost),
                }
            }
            _ => {}
        }
    }
}

/// The kind of session state a statement leaves on its backend, judged by
/// its first words: what a transaction-mode backend switch would lose.
/// Settings the backend reports are restored by pgcell and do not count.
pub fn session_state_kind(sql: &[u8]) -> Option<&'static str> {
    let head = &sql[..sql.len().min(4096)];
    if !may_leave_session_state(head) {
        return None;
    }
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    let text = strip_leading_comments(&text);
    let mut words = text
        .split(|c: char| c.is_ascii_whitespace() || c == ';' || c == '(')
        .filter(|w| !w.is_empty());
    let first = words.next()?;
    let second = words.next().unwrap_or("");
    let third = words.next().unwrap_or("");
    match first {
        "listen" => Some("listen"),
        "prepare" => Some("prepare"),
        "declare" if text.contains(" with hold") => Some("cursor_with_hold"),
        "create"
            if matches!(second, "temp" | "temporary")
                || (matches!(second, "local" | "global")
                    && matches!(third, "temp" | "temporary")) =>
        {
            Some("temp_table")
        }
        "set"
            if !matches!(second, "local" | "transaction")
                && !REPORTED_SETTINGS.contains(&second) =>
        {
            Some("set")
        }
        _ if text.contains("pg_advisory_lock") || text.contains("pg_try_advisory_lock") => {
            Some("advisory_lock")
        }
        _ => None,
    }
}

/// A cheap filter run on every statement before [`session_state_kind`]
/// looks closer (it lower-cases a copy): false when the statement neither
/// starts with a keyword that can leave session state nor mentions an
/// advisory lock. Statements starting with a comment take the close look.
fn may_leave_session_state(sql: &[u8]) -> bool {
    const NEEDLE: &[u8] = b"advisory_lock";
    let mentions_advisory = sql.iter().enumerate().any(|(i, b)| {
        (*b | 0x20) == b'a'
            && sql
                .get(i..i + NEEDLE.len())
                .is_some_and(|w| w.eq_ignore_ascii_case(NEEDLE))
    });
    if mentions_advisory {
        return true;
    }
    let start = sql
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(sql.len());
    let rest = &sql[start..];
    if rest.starts_with(b"--") || rest.starts_with(b"/*") {
        return true;
    }
    let word_end = rest
        .iter()
        .position(|b| !b.is_ascii_alphabetic())
        .unwrap_or(rest.len());
    let word = &rest[..word_end];
    [&b"listen"[..], b"prepare", b"declare", b"create", b"set"]
        .iter()
        .any(|k| word.eq_ignore_ascii_case(k))
}

/// Settings PostgreSQL reports with `ParameterStatus` (restored by pgcell).
const REPORTED_SETTINGS: &[&str] = &[
    "application_name",
    "client_encoding",
    "datestyle",
    "intervalstyle",
    "timezone",
    "time",
    "standard_conforming_strings",
];

fn strip_leading_comments(mut s: &str) -> &str {
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix("--") {
            s = rest.split_once('\n').map(|(_, r)| r).unwrap_or("");
        } else if let Some(rest) = s.strip_prefix("/*") {
            s = rest.split_once("*/").map(|(_, r)| r).unwrap_or("");
        } else {
            return s;
        }
    }
}

/// Most backend output buffered while a client pipeline is being written;
/// past it pgcell stops reading until the write completes.
const MAX_BUFFERED_WHILE_WRITING: usize = 64 << 20;

/// Writes `data` to `stream`, reading what the backend answers meanwhile
/// into `answers`. Not cancel safe.
async fn write_draining<S>(
    stream: &mut S,
    data: &[u8],
    answers: &mut BytesMut,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // The common case: the socket takes everything at once (a statement
    // or a pipeline smaller than the socket buffer). No split, no read
    // buffer.
    let first = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(std::pin::Pin::new(&mut *stream).poll_write(cx, data))
    })
    .await;
    let mut written = match first {
        std::task::Poll::Ready(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
        std::task::Poll::Ready(Ok(n)) => n,
        std::task::Poll::Ready(Err(e)) => return Err(e),
        std::task::Poll::Pending => 0,
    };
    if written == data.len() {
        return stream.flush().await;
    }
    let (mut reader, mut writer) = tokio::io::split(stream);
    while written < data.len() {
        answers.reserve(READ_CHUNK);
        tokio::select! {
            n = writer.write(&data[written..]) => {
                let n = n?;
                if n == 0 {
                    return Err(std::io::ErrorKind::WriteZero.into());
                }
                written += n;
            }
            read = reader.read_buf(answers), if answers.len() < MAX_BUFFERED_WHILE_WRITING => {
                if read? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
        }
    }
    writer.flush().await
}

/// A SQL string literal.
/// An escape-string literal, valid whatever `standard_conforming_strings`
/// the backend has.
fn quote(s: &str) -> String {
    format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// `-c name=value` and `--name=value` settings from the `options` startup
/// parameter.
pub fn parse_options(options: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut tokens = Vec::new();
    let mut current = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            c if c.is_ascii_whitespace() => {
                if !current.is_empty() {
                    tokens.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        tokens.push(current);
    }
    let mut iter = tokens.into_iter();
    while let Some(token) = iter.next() {
        let setting = if token == "-c" {
            iter.next()
        } else if let Some(rest) = token.strip_prefix("--") {
            Some(rest.to_owned())
        } else {
            token.strip_prefix("-c").map(str::to_owned)
        };
        if let Some((name, value)) = setting.as_deref().and_then(|s| s.split_once('=')) {
            out.push((name.replace('-', "_"), value.to_owned()));
        }
    }
    out
}

impl From<AcquireError> for SessionError {
    fn from(e: AcquireError) -> Self {
        SessionError::Acquire(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_settings() {
        assert_eq!(
            parse_options("-c search_path=a,b --work-mem=4MB -cstatement_timeout=5s x"),
            vec![
                ("search_path".to_owned(), "a,b".to_owned()),
                ("work_mem".to_owned(), "4MB".to_owned()),
                ("statement_timeout".to_owned(), "5s".to_owned()),
            ]
        );
        assert_eq!(
            parse_options("-c a=b\\ c"),
            vec![("a".to_owned(), "b c".to_owned())]
        );
    }

    #[test]
    fn session_state_kinds() {
        for (sql, kind) in [
            ("LISTEN chan", Some("listen")),
            ("  -- c\n/* x */ prepare p as select 1", Some("prepare")),
            (
                "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
                Some("cursor_with_hold"),
            ),
            ("declare c cursor for select 1", None),
            ("CREATE TEMP TABLE t (a int)", Some("temp_table")),
            (
                "create global temporary table t (a int)",
                Some("temp_table"),
            ),
            ("create table t (a int)", None),
            ("SET search_path = x", Some("set")),
            ("SET LOCAL work_mem = '1MB'", None),
            ("set timezone = 'UTC'", None),
            ("select pg_advisory_lock(1)", Some("advisory_lock")),
            ("select pg_advisory_xact_lock(1)", None),
            ("select 1", None),
        ] {
            assert_eq!(session_state_kind(sql.as_bytes()), kind, "{sql}");
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("it's"), "E'it''s'");
        assert_eq!(quote("a\\b"), "E'a\\\\b'");
    }
}
