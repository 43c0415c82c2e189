//! Pools of backend connections, one per (tenant, database, user).
//!
//! Every live backend holds one permit of its pool's semaphore (`size`),
//! whether idle or checked out, so the pool never opens more than `size`.
//! A checkout takes an idle backend if one is fit (young enough, checked if
//! it idled long), else opens one when a permit is free, else waits for
//! whichever comes first — a returned backend or a freed permit — until
//! `acquire_timeout`. A paused pool (`PAUSE` in the admin console) hands out
//! nothing: checkouts wait for `RESUME`, still bounded by `acquire_timeout`.

mod in_use;
mod registry;
use in_use::{InUse, InUseMap};

pub(crate) use registry::Pools;

/// What becomes of a backend handed back to its pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Release {
    /// Reuse it (unless it is past `max_lifetime` or the pool retired).
    Reuse,
    /// Close it, for this reason (a label for logs).
    Close(&'static str),
}

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::backend::server::{BackendLogin, OpenError, OpenSettings, ServerConn, StartupProfile};
use crate::backend::topology::NoServer;
use crate::backend::ConnectError;
use crate::clients::{ClientEntry, ClientState};
use crate::config::{PoolConfig, PoolMode};
use crate::metrics::tally::{Histogram, Tally};
use crate::protocol::framing::read_message;
use crate::tenant::Tenant;

/// Identifies a pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    /// Tenant id.
    pub tenant: String,
    /// Backend database.
    pub database: String,
    /// Backend user.
    pub user: String,
    /// The primary, or a replica.
    pub target: crate::backend::Target,
}

/// A startup profile and the parameters its backends reported at login.
type ProfileParams = (Arc<StartupProfile>, Vec<(String, String)>);

/// Read on every new transaction-mode backend.
const SEARCH_PATH: &str = "SELECT 'search_path', pg_catalog.current_setting('search_path')";

/// Pause between attempts to open a backend while a failover may be under
/// way.
const FAILOVER_RETRY: Duration = Duration::from_millis(100);

/// Distinct startup profiles a pool remembers the reported parameters of.
const MAX_PROFILES: usize = 64;

/// One pool.
pub(crate) struct Pool {
    /// Which pool.
    pub key: PoolKey,
    /// Session or transaction.
    pub mode: PoolMode,
    settings: PoolConfig,
    size: usize,
    tenant: Arc<Tenant>,
    open: OpenSettings,
    idle: Mutex<Vec<(Box<ServerConn>, OwnedSemaphorePermit)>>,
    slots: Arc<Semaphore>,
    returned: Notify,
    login: Mutex<Option<BackendLogin>>,
    /// Parameters backends report at login, per startup profile, for
    /// clients' startup answer (most recent last).
    params: Mutex<Vec<ProfileParams>>,
    /// The profile of the latest client, for backends opened ahead
    /// (`min_idle`).
    last_profile: Mutex<Option<Arc<StartupProfile>>>,
    /// Set by `PAUSE`; `resumed` wakes the checkouts it held up.
    paused: AtomicBool,
    resumed: Notify,
    /// Checkouts under way.
    waiting: AtomicUsize,
    /// Backends checked out, by lease id (for `SHOW SERVERS`).
    in_use: Arc<Mutex<InUseMap>>,
    /// Replaced by a reload (or its tenant removed): backends close as they
    /// come free instead of going back to the pool.
    retired: AtomicBool,
    /// The settings this pool was made with, to tell on reload whether it
    /// must be replaced.
    signature: PoolSignature,
    /// Clients served by this pool now.
    clients: AtomicUsize,
    /// `pgcell_pool_waiting_clients` for this tenant, looked up once (a
    /// labelled lookup per checkout costs a hash and an allocation).
    /// `pgcell_pool_wait_seconds` goes into the waiting client's tally.
    waiting_clients: metrics::Gauge,
}

/// One client's place in a pool; freed on drop.
pub(crate) struct ClientSlot(Arc<Pool>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Everything a reload can change that a pool's backends depend on.
#[derive(Debug, Clone, PartialEq)]
struct PoolSignature {
    mode: PoolMode,
    size: usize,
    settings: PoolConfig,
    backends: Vec<String>,
    backend_tls: crate::config::BackendTlsMode,
    backend_ca: Option<std::path::PathBuf>,
    backend_server_name: Option<String>,
    credential: Option<crate::config::Credential>,
}

impl PoolSignature {
    fn of(key: &PoolKey, tenant: &Tenant) -> PoolSignature {
        let config = &tenant.config;
        let user = config.user(&key.user);
        PoolSignature {
            mode: user.and_then(|u| u.pool_mode).unwrap_or(config.pool.mode),
            size: user.and_then(|u| u.pool_size).unwrap_or(config.pool.size),
            settings: config.pool.clone(),
            backends: config.backends.clone(),
            backend_tls: config.backend_tls,
            backend_ca: config.backend_ca.clone(),
            backend_server_name: config.backend_server_name.clone(),
            credential: user.map(|u| u.credential.clone()),
        }
    }
}

/// One backend of a pool, idle or in use.
#[derive(Debug, Clone)]
pub(crate) struct ServerInfo {
    /// The backend's address.
    pub addr: SocketAddr,
    /// The backend's process id.
    pub pid: i32,
    /// When the connection was opened.
    pub created: Instant,
    /// Checked out (else idle in the pool).
    pub in_use: bool,
    /// The client holding it, by registry id.
    pub client: Option<u64>,
}

/// A pool's figures at one moment.
#[derive(Debug, Clone)]
pub(crate) struct PoolSnapshot {
    /// Which pool.
    pub key: PoolKey,
    /// Session or transaction.
    pub mode: PoolMode,
    /// Most backends it opens.
    pub size: usize,
    /// Backends open (or opening).
    pub open: usize,
    /// Backends idle in the pool.
    pub idle: usize,
    /// Backends checked out.
    pub in_use: usize,
    /// Checkouts waiting.
    pub waiting: usize,
    /// Paused by the admin console.
    pub paused: bool,
}

/// Why no backend could be had.
#[derive(Debug, Error)]
pub enum AcquireError {
    /// Waited `acquire_timeout` in vain.
    #[error("no backend connection free within {0:?}")]
    Timeout(Duration),
    /// Opening a backend failed.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// No login credentials known for this pool yet.
    #[error("no backend credentials for this user")]
    NoLogin,
}

/// A checked-out backend. Dropping it closes the backend; hand it back
/// with [`Pool::release`].
pub(crate) struct Lease {
    /// The backend.
    pub conn: Box<ServerConn>,
    /// When it was handed out (the start of the client's transaction).
    pub leased_at: Instant,
    permit: OwnedSemaphorePermit,
    _in_use: InUse,
}

/// Counts a checkout as waiting and marks its client so, until dropped
/// (so that a cancelled checkout is not left counted).
struct Waiting<'a> {
    count: &'a AtomicUsize,
    client: Option<Arc<ClientEntry>>,
}

impl<'a> Waiting<'a> {
    fn start(count: &'a AtomicUsize) -> Waiting<'a> {
        count.fetch_add(1, Ordering::Relaxed);
        let client = crate::clients::current();
        if let Some(c) = &client {
            c.set_state(ClientState::Waiting);
        }
        Waiting { count, client }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
        if let Some(c) = &self.client {
            if c.state() == ClientState::Waiting {
                c.set_state(ClientState::Idle);
            }
        }
    }
}

impl Pool {
    /// A new, empty pool.
    pub(crate) fn new(
        key: PoolKey,
        tenant: Arc<Tenant>,
        settings: PoolConfig,
        mode: PoolMode,
        size: usize,
        open: OpenSettings,
    ) -> Pool {
        let signature = PoolSignature::of(&key, &tenant);
        let waiting_clients =
            metrics::gauge!(crate::metrics::POOL_WAITING, "tenant" => key.tenant.clone());
        Pool {
            waiting_clients,
            clients: AtomicUsize::new(0),
            retired: AtomicBool::new(false),
            signature,
            key,
            mode,
            size,
            settings,
            tenant,
            open,
            idle: Mutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(size)),
            returned: Notify::new(),
            login: Mutex::new(None),
            params: Mutex::new(Vec::new()),
            last_profile: Mutex::new(None),
            paused: AtomicBool::new(false),
            resumed: Notify::new(),
            waiting: AtomicUsize::new(0),
            in_use: Arc::default(),
        }
    }

    /// Stops handing out backends; running transactions go on.
    pub(crate) fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    /// Hands out backends again and wakes the checkouts that waited.
    pub(crate) fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
        self.resumed.notify_waiters();
    }

    /// Whether the pool is paused.
    pub(crate) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// The pool's figures now.
    pub(crate) fn snapshot(&self) -> PoolSnapshot {
        PoolSnapshot {
            key: self.key.clone(),
            mode: self.mode,
            size: self.size,
            open: self.open_count(),
            idle: self.idle_count(),
            in_use: self
                .in_use
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len(),
            waiting: self.waiting.load(Ordering::Relaxed),
            paused: self.is_paused(),
        }
    }

    /// The pool's backends, idle and in use.
    pub(crate) fn servers(&self) -> Vec<ServerInfo> {
        let mut out: Vec<ServerInfo> = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(conn, _)| ServerInfo {
                addr: conn.addr,
                pid: conn.key.pid,
                created: conn.created,
                in_use: false,
                client: None,
            })
            .collect();
        out.extend(
            self.in_use
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .values()
                .map(|s| ServerInfo {
                    addr: s.addr,
                    pid: s.pid,
                    created: s.created,
                    in_use: true,
                    client: s.client,
                }),
        );
        out
    }

    /// Wraps a checked-out backend, recording who holds it.
    fn lease(&self, conn: Box<ServerConn>, permit: OwnedSemaphorePermit, now: Instant) -> Lease {
        let in_use = InUse::record(&self.in_use, &conn);
        Lease {
            conn,
            leased_at: now,
            permit,
            _in_use: in_use,
        }
    }

    /// `params` as a shared profile: the copy another client of this pool
    /// already holds when there is one. Remembered as the latest.
    pub(crate) fn share_profile(&self, params: Vec<(String, String)>) -> Arc<StartupProfile> {
        let wanted = StartupProfile { params };
        let mut last = self
            .last_profile
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(current) = last.as_ref().filter(|p| ***p == wanted) {
            return current.clone();
        }
        let known = self
            .params
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(p, _)| **p == wanted)
            .map(|(p, _)| p.clone());
        let profile = known.unwrap_or_else(|| Arc::new(wanted));
        *last = Some(profile.clone());
        profile
    }

    /// Sets the login backends of this pool use, if none is known yet.
    pub(crate) fn offer_login(&self, login: BackendLogin) {
        let mut current = self.login.lock().unwrap_or_else(PoisonError::into_inner);
        if current.is_none() {
            *current = Some(login);
        }
    }

    /// Replaces the login (after a backend refused the old one).
    pub(crate) fn replace_login(&self, login: BackendLogin) {
        *self.login.lock().unwrap_or_else(PoisonError::into_inner) = Some(login);
    }

    /// Parameters reported at login by this pool's backends of `profile`,
    /// if one has logged in yet.
    pub(crate) fn params(&self, profile: &Arc<StartupProfile>) -> Option<Vec<(String, String)>> {
        self.params
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .rev()
            .find(|(p, _)| StartupProfile::same(p, profile))
            .map(|(_, params)| params.clone())
    }

    /// Backends open (idle and checked out).
    pub(crate) fn open_count(&self) -> usize {
        self.size - self.slots.available_permits()
    }

    /// Idle backends.
    pub(crate) fn idle_count(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Checks out a backend, waiting up to `acquire_timeout`. Cancel safe:
    /// dropping the future loses nothing.
    /// The wait goes into `tally` (`pgcell_pool_wait_seconds`).
    /// With `fresh_after`, only backends on servers that have replayed
    /// what was committed before it ([`Topology::fresh_since`]).
    pub(crate) async fn acquire(
        &self,
        profile: &Arc<StartupProfile>,
        tally: &Tally,
        fresh_after: Option<Instant>,
    ) -> Result<Lease, AcquireError> {
        // Decremented on drop: a checkout abandoned mid-wait (the client
        // left) must not leave the gauge up.
        struct Counted<'a>(&'a metrics::Gauge);
        impl Drop for Counted<'_> {
            fn drop(&mut self) {
                self.0.decrement(1.0);
            }
        }
        self.waiting_clients.increment(1.0);
        let _counted = Counted(&self.waiting_clients);
        let started = Instant::now();
        let result = self.checkout(profile, fresh_after).await;
        tally.observe(Histogram::PoolWaitSeconds, started.elapsed());
        result
    }

    /// An idle backend that needs no liveness check, at once, or `None`
    /// (none idle, a check due, or the pool paused): then [`Pool::acquire`]
    /// waits. Backends past their lifetime or that spoke while idle are
    /// dropped on the way.
    /// A lease taken counts as a wait of zero in `tally`.
    pub(crate) fn try_acquire_idle(
        &self,
        profile: &Arc<StartupProfile>,
        tally: &Tally,
        fresh_after: Option<Instant>,
    ) -> Option<Lease> {
        if self.is_paused() {
            return None;
        }
        let now = Instant::now();
        loop {
            let (conn, permit) = {
                let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
                let at = idle.iter().rposition(|(c, _)| {
                    StartupProfile::same(&c.profile, profile) && self.fresh(c, fresh_after)
                })?;
                let (conn, _) = &idle[at];
                if now.duration_since(conn.last_used) > self.settings.check_after_idle {
                    // Due for a ping: the waiting path does it.
                    return None;
                }
                idle.remove(at)
            };
            if now.duration_since(conn.created) > self.settings.max_lifetime
                || now.duration_since(conn.last_used) > self.settings.idle_timeout
                || conn.spoke_while_idle()
                || !self.still_fits(&conn)
            {
                continue;
            }
            tally.observe(Histogram::PoolWaitSeconds, Duration::ZERO);
            return Some(self.lease(conn, permit, now));
        }
    }

    /// Whether an idle backend's server is still what this pool's clients
    /// want: a pool of the primary drops backends of a server now known to
    /// be a replica (a failover), a pool of replicas those of a server
    /// promoted or excluded (lagging), unless the primary is its fallback
    /// and no replica is fit.
    pub(crate) fn still_fits(&self, conn: &ServerConn) -> bool {
        self.tenant
            .topology
            .still_fits(conn.server, self.key.target)
    }

    /// Whether an idle backend may serve a client that wants what was
    /// committed before `fresh_after` (read-your-writes).
    fn fresh(&self, conn: &ServerConn, fresh_after: Option<Instant>) -> bool {
        fresh_after.is_none_or(|t| self.tenant.topology.fresh_since(conn.server, t))
    }

    /// The tenant's servers as pgcell knows them.
    pub(crate) fn topology(&self) -> &crate::backend::Topology {
        &self.tenant.topology
    }

    /// Whether opening failed in a way a failover explains (no server is
    /// the primary yet, or the servers tried are down while others may
    /// take over): worth trying again until `acquire_timeout`.
    fn may_be_failing_over(&self, error: &AcquireError) -> bool {
        let several = self.tenant.topology.servers().len() > 1;
        match error {
            AcquireError::Open(OpenError::Connect(ConnectError::NoServer(
                NoServer::NoPrimary(_),
            ))) => true,
            AcquireError::Open(OpenError::Connect(ConnectError::Unreachable { .. })) => several,
            _ => false,
        }
    }

    async fn checkout(
        &self,
        profile: &Arc<StartupProfile>,
        fresh_after: Option<Instant>,
    ) -> Result<Lease, AcquireError> {
        let deadline = tokio::time::Instant::now() + self.settings.acquire_timeout;
        let _waiting = Waiting::start(&self.waiting);
        let result = loop {
            if self.is_paused() {
                // Register for the wake-up before looking again, so a
                // RESUME in between is not missed.
                let resumed = self.resumed.notified();
                tokio::pin!(resumed);
                resumed.as_mut().enable();
                if self.is_paused() {
                    tokio::select! {
                        () = resumed => {}
                        () = tokio::time::sleep_until(deadline) => {
                            break Err(AcquireError::Timeout(self.settings.acquire_timeout));
                        }
                    }
                }
                continue;
            }
            if let Some(lease) = self.take_idle(profile, fresh_after).await {
                break Ok(lease);
            }
            let permit = match self.slots.clone().try_acquire_owned() {
                Ok(permit) => permit,
                // The pool is full, but an idle backend of another profile
                // can make room: it is closed and one of this profile
                // opened in its place.
                Err(_) => match self.evict_other(profile) {
                    Some(permit) => permit,
                    None => {
                        let returned = self.returned.notified();
                        tokio::select! {
                            () = returned => continue,
                            permit = self.slots.clone().acquire_owned() => match permit {
                                Ok(p) => p,
                                // The semaphore is never closed.
                                Err(_) => continue,
                            },
                            () = tokio::time::sleep_until(deadline) => {
                                break Err(AcquireError::Timeout(self.settings.acquire_timeout));
                            }
                        }
                    }
                },
            };
            if self.is_paused() {
                continue;
            }
            match self.open(permit, profile, fresh_after).await {
                Err(e)
                    if self.may_be_failing_over(&e)
                        && tokio::time::Instant::now() + FAILOVER_RETRY < deadline =>
                {
                    // Held, not failed: the new primary is found by the
                    // next attempt once it has been promoted.
                    tracing::debug!(tenant = %self.key.tenant, error = %e, "no server fits yet; trying again");
                    tokio::time::sleep(FAILOVER_RETRY).await;
                }
                result => break result,
            }
        };
        result
    }

    async fn open(
        &self,
        permit: OwnedSemaphorePermit,
        profile: &Arc<StartupProfile>,
        fresh_after: Option<Instant>,
    ) -> Result<Lease, AcquireError> {
        let login = self
            .login
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(AcquireError::NoLogin)?;
        let conn = ServerConn::open(
            crate::backend::Targets {
                fresh_after,
                ..self.tenant.targets(self.key.target)
            },
            &self.key.database,
            &self.key.user,
            &login,
            profile,
            &self.open,
        )
        .await;
        let conn = match conn {
            Ok(mut conn) => {
                conn.prepared
                    .set_limit(self.settings.max_prepared_statements);
                if self.mode == PoolMode::Transaction {
                    // What the role's or database's defaults make of
                    // search_path is seen only by asking (PostgreSQL 15
                    // does not report it).
                    match conn.run_own(SEARCH_PATH).await {
                        Ok(rows) => {
                            conn.searches_pg_temp = rows
                                .iter()
                                .any(|(_, path)| path.to_ascii_lowercase().contains("pg_temp"))
                        }
                        Err(e) => {
                            drop(permit);
                            self.returned.notify_waiters();
                            return Err(AcquireError::Open(e.into()));
                        }
                    }
                }
                conn
            }
            Err(e) => {
                metrics::counter!(crate::metrics::BACKEND_CONNECT_ERRORS, "tenant" => self.key.tenant.clone())
                    .increment(1);
                // Waiters try for themselves (and fail fast if the backend
                // is down) rather than wait out their timeout.
                drop(permit);
                self.returned.notify_waiters();
                return Err(e.into());
            }
        };
        let mut params = self.params.lock().unwrap_or_else(PoisonError::into_inner);
        if !params.iter().any(|(p, _)| StartupProfile::same(p, profile)) {
            if params.len() >= MAX_PROFILES {
                params.remove(0);
            }
            params.push((profile.clone(), conn.params.clone()));
        }
        drop(params);
        Ok(self.lease(Box::new(conn), permit, Instant::now()))
    }

    /// Closes an idle backend of another profile than `profile` and
    /// returns its permit, if there is one.
    fn evict_other(&self, profile: &Arc<StartupProfile>) -> Option<OwnedSemaphorePermit> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        // The least recently used first (the front of the list).
        let at = idle
            .iter()
            .position(|(c, _)| !StartupProfile::same(&c.profile, profile))?;
        let (_conn, permit) = idle.remove(at);
        Some(permit)
    }

    async fn take_idle(
        &self,
        profile: &Arc<StartupProfile>,
        fresh_after: Option<Instant>,
    ) -> Option<Lease> {
        loop {
            let (mut conn, permit) = {
                let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
                let at = idle.iter().rposition(|(c, _)| {
                    StartupProfile::same(&c.profile, profile) && self.fresh(c, fresh_after)
                })?;
                idle.remove(at)
            };
            let now = Instant::now();
            if now.duration_since(conn.created) > self.settings.max_lifetime
                || now.duration_since(conn.last_used) > self.settings.idle_timeout
            {
                continue;
            }
            // A backend restarted or terminated while idle has said so
            // (57P01) or closed: drop it here, not in a client's face.
            if conn.spoke_while_idle() {
                tracing::debug!(tenant = %self.key.tenant, addr = %conn.addr, "idle backend spoke or closed; dropped");
                continue;
            }
            if !self.still_fits(&conn) {
                tracing::debug!(tenant = %self.key.tenant, addr = %conn.addr, "idle backend's server changed role; dropped");
                continue;
            }
            if now.duration_since(conn.last_used) > self.settings.check_after_idle
                && !ping(&mut conn).await
            {
                continue;
            }
            return Some(self.lease(conn, permit, now));
        }
    }

    /// Hands a backend back: reused when `release` says so (the backend
    /// is idle, status `I`, nothing outstanding, nothing forbids reuse),
    /// closed otherwise.
    pub(crate) fn release(&self, lease: Lease, release: Release) {
        self.release_at(lease, release, Instant::now());
    }

    /// [`Pool::release`] with the time already read by the caller (one
    /// clock read per transaction end).
    pub(crate) fn release_at(&self, lease: Lease, release: Release, now: Instant) {
        if let Release::Close(reason) = release {
            tracing::debug!(tenant = %self.key.tenant, addr = %lease.conn.addr, reason, "backend closed at checkin");
            return;
        }
        if now.saturating_duration_since(lease.conn.created) > self.settings.max_lifetime
            || self.retired.load(Ordering::Acquire)
        {
            return;
        }
        let Lease {
            mut conn, permit, ..
        } = lease;
        conn.last_used = now;
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((conn, permit));
        self.returned.notify_one();
    }

    /// Closes the idle backends and makes the rest close as they come
    /// free: a reload replaced this pool or removed its tenant.
    pub(crate) fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.returned.notify_waiters();
    }

    /// True once [`Pool::retire`] ran.
    pub(crate) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// Periodic upkeep: closes idle backends past `idle_timeout` or
    /// `max_lifetime`, and opens backends up to `min_idle`.
    pub(crate) async fn maintain(&self) {
        let now = Instant::now();
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(conn, _)| {
                now.duration_since(conn.last_used) <= self.settings.idle_timeout
                    && now.duration_since(conn.created) <= self.settings.max_lifetime
            });
        if self.is_retired() || self.is_paused() {
            return;
        }
        // Bounded: a pool retired or short-lived backends must not turn
        // this into an open/close loop.
        let missing = self.settings.min_idle.saturating_sub(self.idle_count());
        for _ in 0..missing {
            if self.is_retired() {
                return;
            }
            let has_login = self
                .login
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some();
            let profile = self
                .last_profile
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let (true, Some(profile)) = (has_login, profile) else {
                return;
            };
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                return;
            };
            match self.open(permit, &profile, None).await {
                Ok(lease) => self.release(lease, Release::Reuse),
                Err(e) => {
                    tracing::debug!(pool = ?self.key, error = %e, "min_idle backend not opened");
                    return;
                }
            }
        }
    }

    /// Takes one of the pool's client slots (`pool.max_client_connections`);
    /// `None` when the pool is full.
    pub(crate) fn admit_client(self: &Arc<Self>) -> Option<ClientSlot> {
        let limit = self.settings.max_client_connections.unwrap_or(usize::MAX);
        self.clients
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        Some(ClientSlot(self.clone()))
    }

    /// Whether clients that leave session state behind keep their backend.
    pub(crate) fn pin_session_state(&self) -> bool {
        self.settings.pin_session_state
    }

    /// Whether every transaction-mode checkin reads back and resets the
    /// session.
    pub(crate) fn reset_every_transaction(&self) -> bool {
        self.settings.reset_every_transaction
    }

    /// Whether every transaction-mode checkin checks the backend for
    /// session state no message showed.
    pub(crate) fn check_session_state(&self) -> bool {
        self.settings.check_session_state
    }

    /// The query run when a session-mode client leaves.
    pub(crate) fn reset_query(&self) -> Option<&str> {
        self.settings.reset_query.as_deref()
    }
}

/// A `Sync` answered by `ReadyForQuery 'I'`: the backend is alive and idle.
async fn ping(conn: &mut ServerConn) -> bool {
    let check = async {
        conn.stream.write_all(b"S\0\0\0\x04").await.ok()?;
        conn.stream.flush().await.ok()?;
        loop {
            let msg = read_message(&mut conn.stream, 1 << 20).await.ok()?;
            match msg.tag {
                b'Z' => return (msg.body.first() == Some(&b'I')).then_some(()),
                // Notices or parameter changes that arrived while idle.
                b'N' | b'S' | b'A' => continue,
                _ => return None,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(2), check)
        .await
        .ok()
        .flatten()
        .is_some()
}
