//! The pool itself: which pool it is, its settings, the login and
//! startup profiles its backends use, pause, and its clients' slots. The
//! other files of `pool` each add one concern's methods.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use thiserror::Error;
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore};

use super::in_use::InUseMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::backend::server::{BackendLogin, OpenError, ServerConn, StartupProfile};
use crate::config::{PoolConfig, PoolMode};
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

/// A startup profile and the parameters its backends reported at login,
/// as the `ParameterStatus` messages of a client's startup answer.
type ProfileParams = (Arc<StartupProfile>, bytes::Bytes);

/// Distinct startup profiles a pool remembers the reported parameters of.
const MAX_PROFILES: usize = 64;

/// An idle backend and the permit it holds.
pub(super) type Idle = (Box<ServerConn>, OwnedSemaphorePermit);

/// The pool's backends on the shelf and the checkouts waiting in line,
/// under one lock: a backend handed back either goes to a waiter or onto
/// the shelf, and a checkout that joins the line looks at the shelf after,
/// so neither misses the other.
#[derive(Default)]
pub(super) struct Stock {
    /// Idle backends, least recently used first.
    pub(super) idle: Vec<Idle>,
    /// Checkouts waiting, oldest first.
    pub(super) waiters: VecDeque<Waiter>,
}

/// Why no backend could be had.
#[derive(Debug, Error)]
pub(crate) enum AcquireError {
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

/// A checkout waiting in line, as the pool sees it: a backend handed back
/// goes to the oldest waiter it suits.
pub(super) struct Waiter {
    /// Its ticket's id.
    pub(super) id: u64,
    /// The startup profile it wants.
    pub(super) profile: Arc<StartupProfile>,
    /// What its server must have replayed (read-your-writes).
    pub(super) fresh_after: Option<Instant>,
    /// Where a backend is handed to it.
    pub(super) hand: oneshot::Sender<Idle>,
}

impl Waiter {
    /// Whether `conn` suits this waiter: its startup profile, and a server
    /// fresh enough (`fresh` says whether a backend's server has replayed
    /// what was committed before a time).
    pub(super) fn wants(
        &self,
        conn: &ServerConn,
        fresh: impl Fn(&ServerConn, Option<Instant>) -> bool,
    ) -> bool {
        StartupProfile::same(&conn.profile, &self.profile) && fresh(conn, self.fresh_after)
    }

    /// Hands `idle` over; it comes back when the waiter gave up already.
    pub(super) fn hand(self, idle: Idle) -> Result<(), Idle> {
        self.hand.send(idle)
    }
}

/// An open in progress.
pub(super) type Opening<'a> =
    Pin<Box<dyn Future<Output = Result<ServerConn, OpenError>> + Send + 'a>>;

/// Opens a pool's backends.
pub(super) trait Connector: Send + Sync {
    /// A backend of `pool`, logged in with `login` and `profile`'s startup
    /// parameters, on a server that has replayed what was committed
    /// before `fresh_after` when that is given; ready for its first
    /// client.
    fn open<'a>(
        &'a self,
        pool: &'a Pool,
        login: &'a BackendLogin,
        profile: &'a Arc<StartupProfile>,
        fresh_after: Option<Instant>,
    ) -> Opening<'a>;
}

/// One pool.
pub(crate) struct Pool {
    /// Which pool.
    pub key: PoolKey,
    /// Session or transaction.
    pub mode: PoolMode,
    pub(super) settings: PoolConfig,
    pub(super) size: usize,
    pub(super) tenant: Arc<Tenant>,
    pub(super) connector: Arc<dyn Connector>,
    pub(super) stock: Mutex<Stock>,
    pub(super) slots: Arc<Semaphore>,
    /// Wakes waiters when a backend of another profile goes onto the shelf
    /// (it may be closed to make room) or the pool retires.
    pub(super) returned: Notify,
    pub(super) login: Mutex<Option<BackendLogin>>,
    /// Parameters backends report at login, per startup profile, for
    /// clients' startup answer (most recent last).
    pub(super) params: Mutex<Vec<ProfileParams>>,
    /// The profile of the latest client, for backends opened ahead
    /// (`min_idle`).
    pub(super) last_profile: Mutex<Option<Arc<StartupProfile>>>,
    /// Set by `PAUSE`; `resumed` wakes the checkouts it held up.
    pub(super) paused: AtomicBool,
    pub(super) resumed: Notify,
    /// Checkouts under way.
    pub(super) waiting: AtomicUsize,
    /// Backends checked out, by lease id (for `SHOW SERVERS`).
    pub(super) in_use: Arc<Mutex<InUseMap>>,
    /// Replaced by a reload (or its tenant removed): backends close as they
    /// come free instead of going back to the pool.
    pub(super) retired: AtomicBool,
    /// The settings this pool was made with, to tell on reload whether it
    /// must be replaced.
    pub(super) signature: PoolSignature,
    /// Clients served by this pool now.
    pub(super) clients: AtomicUsize,
    /// `pgcell_pool_waiting_clients` for this tenant, looked up once (a
    /// labelled lookup per checkout costs a hash and an allocation).
    /// `pgcell_pool_wait_seconds` goes into the waiting client's tally.
    pub(super) waiting_clients: metrics::Gauge,
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
pub(super) struct PoolSignature {
    pub(super) mode: PoolMode,
    pub(super) size: usize,
    settings: PoolConfig,
    backends: Vec<String>,
    backend_tls: crate::config::BackendTlsMode,
    backend_ca: Option<std::path::PathBuf>,
    backend_server_name: Option<String>,
    credential: Option<crate::config::Credential>,
}

impl PoolSignature {
    /// What `tenant`'s configuration says for the pool `key`.
    pub(super) fn of(key: &PoolKey, tenant: &Tenant) -> PoolSignature {
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

/// The time now, as the pool reads it: tokio's clock, so that tests on a
/// paused clock move the pool's time too (outside tests it is the
/// system's monotonic clock).
pub(super) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl Pool {
    /// A new, empty pool that opens backends with `connector`.
    pub(super) fn with_connector(
        key: PoolKey,
        tenant: Arc<Tenant>,
        connector: Arc<dyn Connector>,
    ) -> Pool {
        let signature = PoolSignature::of(&key, &tenant);
        let waiting_clients =
            metrics::gauge!(crate::metrics::POOL_WAITING, "tenant" => key.tenant.clone());
        let size = signature.size;
        Pool {
            waiting_clients,
            clients: AtomicUsize::new(0),
            retired: AtomicBool::new(false),
            mode: signature.mode,
            size,
            settings: tenant.config.pool.clone(),
            signature,
            key,
            tenant,
            connector,
            stock: Mutex::default(),
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

    /// The shelf and the line, locked.
    pub(super) fn stock(&self) -> std::sync::MutexGuard<'_, Stock> {
        self.stock.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops handing out backends; running transactions go on.
    pub(crate) fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    /// Hands out backends again and wakes the checkouts that waited.
    pub(crate) fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
        self.serve_line_from_shelf();
        self.resumed.notify_waiters();
    }

    /// Whether the pool is paused.
    pub(crate) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
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

    /// The login backends of this pool use, once a client has logged in.
    pub(super) fn login(&self) -> Option<BackendLogin> {
        self.login
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The `ParameterStatus` messages of what this pool's backends of
    /// `profile` reported at login (a client's startup answer), if one has
    /// logged in yet: encoded once per profile, shared by its clients.
    pub(crate) fn startup_parameters(&self, profile: &Arc<StartupProfile>) -> Option<bytes::Bytes> {
        self.params
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .rev()
            .find(|(p, _)| StartupProfile::same(p, profile))
            .map(|(_, encoded)| encoded.clone())
    }

    /// Remembers what a new backend of `profile` reported at login (the
    /// first of each profile; the oldest profile is forgotten past
    /// [`MAX_PROFILES`]).
    pub(super) fn remember_params(
        &self,
        profile: &Arc<StartupProfile>,
        reported: &[(String, String)],
    ) {
        let mut params = self.params.lock().unwrap_or_else(PoisonError::into_inner);
        if !params.iter().any(|(p, _)| StartupProfile::same(p, profile)) {
            if params.len() >= MAX_PROFILES {
                params.remove(0);
            }
            let mut encoded = bytes::BytesMut::new();
            crate::protocol::messages::parameter_statuses(&mut encoded, reported);
            params.push((profile.clone(), encoded.freeze()));
        }
    }

    /// The tenant's servers as pgcell knows them.
    pub(crate) fn topology(&self) -> &crate::backend::Topology {
        &self.tenant.topology
    }

    /// True once [`Pool::retire`] ran.
    pub(crate) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
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
