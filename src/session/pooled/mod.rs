//! A client served from a pool: pgcell authenticates it, answers its
//! startup from what a backend of its startup profile reported, and lends
//! it a backend per session or per transaction.
//!
//! This file is the I/O loop: it moves bytes between the client and its
//! backend and asks [`super::engine`] everything else — where the backend
//! stands in the protocol (so when it may go back to the pool), whether
//! the transaction may have changed the session, what a backend must run
//! before it serves this client. Checkout and checkin are in
//! [`checkout`], the relay of a leased backend in [`follow`], the
//! client's state ([`Session`]) in [`session`].

mod checkout;
mod follow;
mod session;

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::buffers::{
    read_idle, recycle, reserve_read, reuse, shrink, write_draining, IDLE_READ_CHUNK,
    SERVER_READ_CHUNK,
};
use super::client_auth::{self, ClientAuthError};
use super::engine::{Checkout, ClientSession, CustomSettings};
use super::error::SessionError;
use super::prepared::ClientStatements;
use super::relay::RelayBytes;
use crate::backend::server::{OpenError, OpenSettings, StartupProfile};
use crate::backend::ConnectError;
use crate::clients::ClientEntry;
use crate::config::PoolMode;
use crate::metrics as m;
use crate::pool::{AcquireError, Lease, Pool, PoolKey, Release};
use crate::protocol::framing::{split_message, Message};
use crate::protocol::messages;
use crate::protocol::startup::StartupMessage;
use crate::protocol::{ClientError, Severity, SqlState};
use crate::route::Route;
use crate::sql::Dialect;
use crate::state::Shared;
use crate::stream::ReadReady;
use crate::tenant::ClientInfo;
use session::Session;

/// Startup parameters that are not session settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "replication"];

/// Serves a pooled client to the end. `startup` is already rewritten for
/// the backend (tenant tokens removed).
pub(crate) async fn serve<C>(
    shared: &Shared,
    client: &mut C,
    startup: &StartupMessage,
    route: &Route,
    info: &ClientInfo,
    bytes: &mut RelayBytes,
    listed: &ClientEntry,
) -> Result<(), SessionError>
where
    C: AsyncRead + AsyncWrite + ReadReady + Unpin,
{
    // Boxed: logging in and setting up is done once, and its state would
    // otherwise stay in every idle client's task.
    let mut session = Box::pin(open(shared, client, startup, route, info, bytes, listed)).await?;
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
    listed: &'a ClientEntry,
) -> Result<Session<'a>, SessionError>
where
    C: AsyncRead + AsyncWrite + ReadReady + Unpin,
{
    let tenant = &route.tenant;
    let user = startup.get("user").unwrap_or_default().to_owned();
    let database = startup.get("database").unwrap_or(&user).to_owned();

    // Taken before the (possibly slow) login, so a reload during it is
    // followed afterwards.
    let seen_reload = shared.reloads();
    // The end of the authentication exchange and the startup answer, in
    // one write when no backend must be waited for.
    let mut answer = BytesMut::new();
    // The exchange is bounded like a backend's authentication_timeout, so
    // clients that stall mid-exchange cannot hold connection slots.
    // Boxed: the exchange's state is only needed once, and inline it
    // would stay in every idle client's task.
    let login = match Box::pin(tokio::time::timeout(
        shared.settings.auth_timeout,
        client_auth::authenticate(
            client,
            tenant,
            &user,
            &database,
            info,
            &shared.mock_key,
            &mut answer,
        ),
    ))
    .await
    .unwrap_or(Err(ClientAuthError::Timeout))
    {
        Ok(login) => login,
        Err(e) => {
            metrics::counter!(m::AUTH_FAILURES, "tenant" => tenant.id().to_owned(), "reason" => e.reason())
                .increment(1);
            if matches!(e, ClientAuthError::Failed(_)) {
                tokio::time::sleep(client_auth::AUTH_FAILURE_DELAY).await;
            }
            return Err(SessionError::ClientAuth(e));
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
        target: route.target,
    };
    // The tenant as configured now (a reload may have run during login):
    // an older copy must never replace a newer pool.
    // A refusal from here on comes after the login, as it did when the
    // login's end was sent at once.
    let Some(current) = shared.routes.load().tenant(tenant.id()) else {
        return Err(refuse_after_login(client, &answer, SessionError::TenantRemoved).await);
    };
    let pool = shared.pools.get(key, &current, open);
    let Some(pool_slot) = pool.admit_client() else {
        return Err(refuse_after_login(client, &answer, SessionError::PoolFull).await);
    };
    // The latest verified login wins: an auth_query user's secret, and so
    // the ClientKey, changes with its password.
    pool.replace_login(login.clone());

    // The client's backends log in with its startup parameters (its
    // RESET values): clients that sent the same share backends.
    let profile = pool.share_profile(
        startup
            .params
            .iter()
            .filter(|(name, _)| !NOT_SETTINGS.contains(&name.as_str()))
            .cloned()
            .collect(),
    );
    // The startup answer is what such a backend reported at login: the
    // first client of a profile waits for one backend to log in. In
    // session mode every client waits for its backend here, before its
    // login completes: it owns that backend to the end, so a full pool
    // queues clients at login (bounded by `acquire_timeout`) and one that
    // waits in vain is refused as PostgreSQL refuses a connection over
    // its limit (FATAL 53300, no ReadyForQuery), instead of seeing a
    // session that dies on its first statement.
    let mut first_lease = None;
    let server_params = match pool.params(&profile) {
        Some(p) if pool.mode == PoolMode::Transaction => p,
        known => {
            // The client learns that it is logged in before it waits.
            client
                .write_all(&answer)
                .await
                .map_err(SessionError::ClientIo)?;
            answer.clear();
            let lease = acquire(&pool, &profile, listed).await?;
            let params = known.unwrap_or_else(|| lease.conn.params.clone());
            first_lease = Some(lease);
            params
        }
    };

    let cancel_key = match shared.cancel.try_issue_idle(info.vpce_id.as_deref()) {
        Ok(key) => key,
        Err(e) => return Err(refuse_after_login(client, &answer, SessionError::Random(e)).await),
    };
    let mut out = answer;
    for (name, value) in &server_params {
        messages::tagged_parts(
            &mut out,
            b'S',
            &[name.as_bytes(), b"\0", value.as_bytes(), b"\0"],
        );
    }
    messages::backend_key_data(&mut out, cancel_key.key());
    messages::tagged(&mut out, b'Z', b"I");
    client
        .write_all(&out)
        .await
        .map_err(SessionError::ClientIo)?;
    client.flush().await.map_err(SessionError::ClientIo)?;

    let mut session = Session {
        shared,
        open,
        login,
        seen_reload,
        pool: pool.clone(),
        home: pool.clone(),
        route_read_only: pool.mode == PoolMode::Transaction
            && route.target == crate::backend::Target::Primary
            && tenant.config.replication.read_only_transactions,
        last_write: None,
        topology_seen: pool.topology().changes(),
        _pool_slot: pool_slot,
        cancel_key,
        startup_pg_temp: super::engine::startup_searches_pg_temp(&profile.params),
        profile,
        session: ClientSession::default(),
        custom: CustomSettings::default(),
        checkout: Checkout::default(),
        lease: None,
        bytes,
        tenant: tenant.id().to_owned(),
        statements: ClientStatements::default(),
        checked_out_at: std::time::Instant::now(),
        listed,
    };
    if let Some(lease) = first_lease {
        if pool.mode == PoolMode::Session {
            session.attach(lease);
        } else {
            pool.release(lease, Release::Reuse);
        }
    }
    Ok(session)
}

/// Sends the login's end still held in `answer` (the client is logged in)
/// and returns `error`, which the caller reports after it.
async fn refuse_after_login<C: AsyncWrite + Unpin>(
    client: &mut C,
    answer: &[u8],
    error: SessionError,
) -> SessionError {
    let _ = client.write_all(answer).await;
    error
}

async fn acquire(
    pool: &Arc<Pool>,
    profile: &Arc<StartupProfile>,
    listed: &ClientEntry,
) -> Result<Lease, SessionError> {
    // An idle backend ready to go needs no waiting (the common case);
    // the waiting path is boxed so its large state is not part of every
    // idle client's task.
    acquire_fresh(pool, profile, listed, None).await
}

/// [`acquire`], from servers that have replayed what was committed before
/// `fresh_after` (read-your-writes).
async fn acquire_fresh(
    pool: &Arc<Pool>,
    profile: &Arc<StartupProfile>,
    listed: &ClientEntry,
    fresh_after: Option<std::time::Instant>,
) -> Result<Lease, SessionError> {
    if let Some(lease) = pool.try_acquire_idle(profile, &listed.tally, fresh_after) {
        return Ok(lease);
    }
    Box::pin(pool.acquire(profile, &listed.tally, fresh_after))
        .await
        .map_err(SessionError::Acquire)
}

/// The SQL texts of what `msg` begins, up to the backend's next
/// `ReadyForQuery`: a `Query`'s text, or the texts of the `Parse`s (and
/// any `Query`) of the pipeline `msg` opens, read ahead in `following` up
/// to its `Sync`. `None` when they cannot all be read now: the pipeline's
/// end has not arrived, or it binds a statement parsed before it.
fn pipeline_texts<'m>(msg: &'m Message, following: &'m [u8]) -> Option<Vec<&'m [u8]>> {
    fn parse_text(body: &[u8]) -> Option<(&[u8], &[u8])> {
        let end = body.iter().position(|&b| b == 0)?;
        let rest = &body[end + 1..];
        let text_end = rest.iter().position(|&b| b == 0)?;
        Some((&body[..end], &rest[..text_end]))
    }
    match msg.tag {
        b'Q' => return Some(vec![msg.body.strip_suffix(&[0]).unwrap_or(&msg.body)]),
        b'P' => {}
        _ => return None,
    }
    let (first_name, first_text) = parse_text(&msg.body)?;
    let mut parsed = vec![first_name];
    let mut texts = vec![first_text];
    let mut pos = 0;
    loop {
        let (tag, len) = match crate::protocol::framing::peek_message(&following[pos..], usize::MAX)
        {
            Ok(crate::protocol::framing::Peeked::Complete { tag, len }) => (tag, len),
            _ => return None,
        };
        let body = &following[pos + crate::protocol::framing::HEADER_LEN..pos + len];
        match tag {
            b'S' => return Some(texts),
            b'P' => {
                let (name, text) = parse_text(body)?;
                parsed.push(name);
                texts.push(text);
            }
            b'Q' => texts.push(body.strip_suffix(&[0]).unwrap_or(body)),
            b'B' => {
                // Portal, then statement name: it must be one parsed here.
                let portal_end = body.iter().position(|&b| b == 0)?;
                let rest = &body[portal_end + 1..];
                let name = &rest[..rest.iter().position(|&b| b == 0)?];
                if !parsed.contains(&name) {
                    return None;
                }
            }
            b'D' | b'E' | b'C' | b'H' => {}
            _ => return None,
        }
        pos += len;
    }
}

impl Session<'_> {
    async fn run<C>(&mut self, client: &mut C) -> Result<(), SessionError>
    where
        C: AsyncRead + AsyncWrite + ReadReady + Unpin,
    {
        if self.pool.mode == PoolMode::Session && self.lease.is_none() {
            let lease = acquire(&self.pool, &self.profile, self.listed).await?;
            // A new session: nothing to replay, so it cannot fail.
            self.checkout(lease, client).await?;
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
                self.take_client_message(client, msg, &mut to_server, &from_client)
                    .await?;
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
                    return self.backend_lost();
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
                    Reloaded,
                    Stopping,
                }
                // A stop that came before this wait.
                if self.shared.idle_events().stopping {
                    return self.leave_for_shutdown();
                }
                let next = read_idle(client, &mut from_client);
                // Biased: no random pick per wait; a client that sends is
                // served, and a reload is followed before its next
                // transaction anyway.
                let woken = tokio::select! {
                    biased;
                    read = next => Woken::Read(read),
                    events = self.idle_event() => if events.stopping {
                        Woken::Stopping
                    } else {
                        Woken::Reloaded
                    },
                };
                match woken {
                    Woken::Read(Ok(0)) => return Ok(()),
                    Woken::Read(Ok(_)) => continue,
                    Woken::Read(Err(e)) => return Err(SessionError::ClientIo(e)),
                    Woken::Reloaded => {
                        self.follow_reload()?;
                        continue;
                    }
                    Woken::Stopping => return self.leave_for_shutdown(),
                }
            };
            reserve_read(&mut from_client, IDLE_READ_CHUNK);
            reserve_read(&mut from_server, SERVER_READ_CHUNK);
            // Biased, the backend first: no random pick per message, and a
            // client that pipelines waits in its socket while the backend
            // answers.
            tokio::select! {
                biased;
                read = lease.conn.stream.read_buf(&mut from_server) => match read {
                    Ok(0) | Err(_) => return self.backend_lost(),
                    Ok(_) => {
                        self.deliver(client, &mut from_server, &mut to_client, from_client.is_empty())
                            .await?;
                    }
                },
                read = client.read_buf(&mut from_client) => match read {
                    Ok(0) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(SessionError::ClientIo(e)),
                },
            }
        }
    }

    /// Takes one client message: answers it here (a pipeline pgcell
    /// failed, a `DEALLOCATE` between transactions) or appends it to
    /// `to_server`, checking a backend out first when it has none.
    async fn take_client_message<C>(
        &mut self,
        client: &mut C,
        msg: Message,
        to_server: &mut BytesMut,
        following: &[u8],
    ) -> Result<(), SessionError>
    where
        C: AsyncRead + AsyncWrite + ReadReady + Unpin,
    {
        if self.pool.mode == PoolMode::Session {
            self.held_server_fits()?;
        }
        if self.checkout.skipping_to_sync() {
            // The rest of a pipeline whose backend never came.
            if msg.tag == b'S' {
                self.checkout.skip_to_sync(false);
                self.answer_ready(client).await?;
            }
            return Ok(());
        }
        // SQL that would drop other clients' statements off a shared
        // backend is answered here, when nothing is in flight.
        if self.pool.mode == PoolMode::Transaction
            && msg.tag == b'Q'
            && self.checkout.position().quiet()
        {
            let status = self.checkout.position().status();
            if let Some(tag) = self
                .statements
                .answer_locally(&msg.body, status, Dialect::default())
            {
                let mut out = BytesMut::new();
                let mut body = tag.as_bytes().to_vec();
                body.push(0);
                messages::tagged(&mut out, b'C', &body);
                messages::tagged(&mut out, b'Z', &[status]);
                client
                    .write_all(&out)
                    .await
                    .map_err(SessionError::ClientIo)?;
                return Ok(());
            }
        }
        if self.lease.is_none() && msg.tag == b'H' {
            // A Flush with no backend has nothing to flush and draws no
            // reply: taking a backend for it would keep that backend
            // until the client sends again (psycopg writes its pipeline's
            // Sync and Flush apart, so the Flush may come after the
            // checkin).
            return Ok(());
        }
        if self.lease.is_none() {
            self.follow_reload()?;
            let fresh_after = self.choose_pool(&msg, following);
            let mut acquired =
                acquire_fresh(&self.pool, &self.profile, self.listed, fresh_after).await;
            if !Arc::ptr_eq(&self.pool, &self.home) {
                if let Err(SessionError::Acquire(AcquireError::Open(
                    OpenError::Refused { .. } | OpenError::Connect(ConnectError::NoServer(_)),
                ))) = &acquired
                {
                    // A read-only transaction no replica would take (a
                    // replica refused this client's login: a role default
                    // a standby cannot run, such as serializable; or none
                    // is fit): it runs on the primary, as it would have
                    // without read-only routing (found by review).
                    self.pool = self.home.clone();
                    acquired = acquire_fresh(&self.pool, &self.profile, self.listed, None).await;
                }
            }
            let lease = match acquired {
                Ok(lease) => lease,
                Err(SessionError::Acquire(
                    e @ (AcquireError::Timeout(_)
                    | AcquireError::Open(OpenError::Connect(ConnectError::NoServer(_)))),
                )) => {
                    // The statement fails, the session goes on: like
                    // PostgreSQL after an error, skip to the Sync. (No
                    // server fits now: a split brain, no replica fit, a
                    // failover longer than acquire_timeout.)
                    self.refuse_statement(client, &e).await?;
                    match msg.tag {
                        b'Q' | b'F' => self.answer_ready(client).await?,
                        b'S' => self.answer_ready(client).await?,
                        _ => self.checkout.skip_to_sync(true),
                    }
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            if !self.checkout(lease, client).await? {
                // The client's session could not be replayed: this
                // statement fails (the client has the error), like one
                // that found no backend.
                match msg.tag {
                    b'Q' | b'F' | b'S' => self.answer_ready(client).await?,
                    _ => self.checkout.skip_to_sync(true),
                }
                return Ok(());
            }
        }
        self.count_client_message(&msg);
        let mut judged = self.judge(&msg);
        let refused;
        let msg = if judged.foreign_statement && self.pool.mode == PoolMode::Transaction {
            // Another client's statement: the backend refuses what
            // replaces it, as it would a name that does not exist.
            refused = super::prepared::refuse_foreign(&msg);
            judged = crate::sql::Verdict::default();
            &refused
        } else {
            &msg
        };
        let executes = match (self.pool.mode, self.lease.as_mut()) {
            (PoolMode::Transaction, Some(lease)) => self
                .statements
                .forward(
                    msg,
                    judged,
                    &mut lease.conn.prepared,
                    &mut self.checkout,
                    to_server,
                )
                .map_err(SessionError::from)?,
            _ => {
                messages::tagged(to_server, msg.tag, &msg.body);
                self.checkout.sent(msg.tag);
                // A session's backend is its own: what it parses counts
                // as run (read back when it leaves).
                judged
            }
        };
        self.executed(executes);
        Ok(())
    }

    /// Session mode: between transactions, whether the backend the client
    /// holds is still on a server that fits it. A split brain, a primary
    /// named by the operator, or a failover the held backend survived
    /// (its server demoted) ends the session with `57P01`: its writes
    /// would go to a server the tenant no longer writes to.
    fn held_server_fits(&mut self) -> Result<(), SessionError> {
        let Some(lease) = &self.lease else {
            return Ok(());
        };
        let changes = self.pool.topology().changes();
        let position = self.checkout.position();
        if changes == self.topology_seen || !position.quiet() || position.status() != b'I' {
            return Ok(());
        }
        self.topology_seen = changes;
        if self
            .pool
            .topology()
            .session_fits(lease.conn.server, self.pool.key.target)
        {
            return Ok(());
        }
        Err(SessionError::ServerNoLongerFits)
    }

    /// Picks the pool for the transaction `msg` begins: the client's own,
    /// or (read-only transaction routing) the tenant's replica pool for a
    /// transaction that is read only — `BEGIN READ ONLY` / `START
    /// TRANSACTION READ ONLY`, or any transaction of a session whose
    /// `default_transaction_read_only` is on — once a replica has replayed
    /// past the client's last transaction on the primary. Returns the
    /// moment replicas must have replayed past.
    fn choose_pool(&mut self, msg: &Message, following: &[u8]) -> Option<std::time::Instant> {
        if !self.route_read_only {
            return None;
        }
        self.pool = self.home.clone();
        // Everything up to the next ReadyForQuery must be one read-only
        // transaction: a Query's statements, or the Parses of a pipeline
        // up to its Sync, which must already be here to be read.
        let texts = pipeline_texts(msg, following)?;
        if self.default_serializable() {
            return None;
        }
        if !crate::sql::one_read_only_transaction(
            &texts,
            Dialect::default(),
            self.default_read_only(),
        ) {
            return None;
        }
        let topology = self.home.topology();
        if let Some(since) = self.last_write {
            if !topology.any_fresh_replica(since) {
                return None;
            }
        }
        let key = crate::pool::PoolKey {
            target: crate::backend::Target::Replica { fallback: true },
            ..self.home.key.clone()
        };
        let tenant = self.shared.routes.load().tenant(&key.tenant)?;
        let replicas = self.shared.pools.get(key, &tenant, self.open);
        replicas.replace_login(self.login.clone());
        self.pool = replicas;
        self.last_write
    }

    /// The client's sessions default to read-only transactions: its own
    /// `SET default_transaction_read_only` / `SET SESSION CHARACTERISTICS`
    /// (read back), else its startup parameters.
    fn default_read_only(&self) -> bool {
        self.effective_setting("default_transaction_read_only")
            .and_then(|v| crate::protocol::startup::parse_bool(&v))
            .unwrap_or(false)
    }

    /// Whether the client's transactions default to serializable, which
    /// a hot standby cannot run.
    fn default_serializable(&self) -> bool {
        self.effective_setting("default_transaction_isolation")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("serializable"))
    }

    /// A setting's value in the client's session: as read back after the
    /// client changed it, else from its startup parameters as PostgreSQL
    /// applies them (`options` first, then the other parameters; the last
    /// value wins). None: the server's default.
    fn effective_setting(&self, name: &str) -> Option<String> {
        if let Some(value) = self.session.setting(name) {
            return Some(String::from_utf8_lossy(value).into_owned());
        }
        let params = &self.profile.params;
        let from_options = params
            .iter()
            .filter(|(n, _)| n == "options")
            .flat_map(|(_, value)| crate::protocol::startup::option_settings(value))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
            .next_back();
        let from_params = params
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.clone())
            .next_back();
        from_params.or(from_options)
    }

    /// Waits for a reload this session has not followed, or for the
    /// server to start stopping.
    fn idle_event(&self) -> impl std::future::Future<Output = crate::state::IdleEvents> + '_ {
        std::future::poll_fn(|cx| {
            // Registered before reading: a change after the read wakes it.
            self.listed.idle_wake.register(cx.waker());
            let events = self.shared.idle_events();
            if events.stopping || events.reloads != self.seen_reload {
                std::task::Poll::Ready(events)
            } else {
                std::task::Poll::Pending
            }
        })
    }

    /// Tells the client its statement failed for want of a backend.
    async fn refuse_statement<C: AsyncWrite + Unpin>(
        &mut self,
        client: &mut C,
        error: &AcquireError,
    ) -> Result<(), SessionError> {
        let refusal = match error {
            AcquireError::Timeout(wait) => super::error::pool_timeout(*wait, Severity::Error),
            AcquireError::Open(OpenError::Connect(ConnectError::NoServer(e))) => {
                tracing::warn!(error = %e, "statement refused: no server fits");
                ClientError::statement(SqlState::CANNOT_CONNECT_NOW, e.client_message())
            }
            other => {
                tracing::warn!(error = %other, "statement refused: no backend");
                ClientError::statement(
                    SqlState::CANNOT_CONNECT_NOW,
                    "could not connect to the database server",
                )
            }
        };
        refusal.send(client).await.map_err(SessionError::ClientIo)
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
    fn follow_reload(&mut self) -> Result<(), SessionError> {
        let generation = self.shared.reloads();
        if generation == self.seen_reload {
            return Ok(());
        }
        self.seen_reload = generation;
        let tenant = self.shared.routes.load().tenant(&self.home.key.tenant);
        let Some(tenant) = tenant else {
            if let Some(lease) = self.lease.take() {
                self.cancel_key.detach();
                self.pool.release(lease, Release::Close("tenant_removed"));
            }
            // Told by the caller's report (57P01).
            return Err(SessionError::TenantRemoved);
        };
        if self.lease.is_none() {
            let pool = self
                .shared
                .pools
                .get(self.home.key.clone(), &tenant, self.open);
            self.route_read_only =
                self.route_read_only && tenant.config.replication.read_only_transactions;
            if !Arc::ptr_eq(&pool, &self.home) {
                pool.replace_login(self.login.clone());
                self.profile = pool.share_profile(self.profile.params.clone());
                self.home = pool.clone();
                self.pool = pool;
            }
        }
        Ok(())
    }

    /// The backend closed or failed: the session ends, and the client
    /// gets one error (none when the backend's own FATAL already reached
    /// it, as on a direct connection).
    fn backend_lost(&mut self) -> Result<(), SessionError> {
        self.lease = None;
        self.cancel_key.detach();
        metrics::counter!(m::BACKEND_LOST, "tenant" => self.tenant.clone()).increment(1);
        if self.checkout.fatal() {
            // Its own FATAL reached the client already.
            return Err(SessionError::Reported(Box::new(SessionError::BackendLost)));
        }
        Err(SessionError::BackendLost)
    }
}

impl From<AcquireError> for SessionError {
    fn from(e: AcquireError) -> Self {
        SessionError::Acquire(e)
    }
}
