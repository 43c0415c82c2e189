//! The server: what one pgcell process shares between connections, and its
//! start, reload and stop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};

use crate::auth::secret::SaltKey;
use crate::cancel::CancelMap;
use crate::config::{Config, ConfigError, ProxyMode, TlsMode};
use crate::health::HealthPort;
use crate::lifecycle::{Lifecycle, State};
use crate::route::RoutingTable;
use crate::tls::{ServerTls, TlsError};

/// Settings fixed for the life of the process.
#[derive(Debug, Clone)]
pub struct Settings {
    /// PROXY protocol expectation on the data port.
    pub proxy_protocol: ProxyMode,
    /// Client TLS policy.
    pub tls_mode: TlsMode,
    /// Deadline for a complete `StartupMessage`.
    pub startup_timeout: Duration,
    /// Backend connect timeout.
    pub connect_timeout: Duration,
    /// Backend authentication timeout.
    pub auth_timeout: Duration,
    /// TCP keepalive idle time.
    pub tcp_keepalive: Duration,
    /// Largest client message a pooled session buffers
    /// (`listen.max_message_size`).
    pub max_message_size: usize,
    /// Time sessions get to finish on shutdown.
    pub shutdown_grace: Duration,
    /// How the drain before that leaves the target group.
    pub drain: crate::config::DrainConfig,
}

/// State shared by every connection of one server.
pub struct Shared {
    /// Fixed settings.
    pub settings: Settings,
    /// Client TLS, unless disabled.
    pub tls: Option<ServerTls>,
    /// Tenants; swapped whole on reload.
    pub routes: ArcSwap<RoutingTable>,
    /// Cancel keys issued.
    pub cancel: CancelMap,
    /// Global client connection slots.
    pub clients: Arc<Semaphore>,
    /// Lifecycle state.
    pub lifecycle: Lifecycle,
    /// Backend pools of tenants pgcell authenticates itself.
    pub pools: crate::pool::Pools,
    /// Key for the fake SCRAM secrets of unknown users.
    pub mock_key: [u8; 32],
    /// What password users' SCRAM salts derive from (`[auth]` secret, or
    /// random per process); fixed until restart.
    pub salt_key: SaltKey,
    /// Admin console users and tenant summaries; swapped whole on reload.
    pub console: ArcSwap<crate::console::ConsoleConfig>,
    /// Clients connected now (`SHOW CLIENTS`).
    pub connected: crate::clients::Clients,
    /// Bumped after every successful reload; idle sessions watch it to
    /// notice that their tenant was removed.
    pub reloaded: tokio::sync::watch::Sender<u64>,
    /// Stop requests so far (SIGTERM, `POST /drain`): the first drains,
    /// each further one cuts the current wait short.
    pub stop_requests: tokio::sync::watch::Sender<u32>,
    /// This replica's NLB target registration (a no-op unless
    /// `[aws] register = true`).
    pub registration: crate::register::Registration,
    config_path: Option<PathBuf>,
    /// The sections a reload cannot change, as started.
    fixed: FixedSections,
    /// The configuration file as last loaded, and what discovery added;
    /// the routing table is built from both. The lock also serialises
    /// rebuilds.
    sources: std::sync::Mutex<Sources>,
}

/// What the routing table and the cancel peers are built from.
struct Sources {
    file: Config,
    discovered: Discovered,
}

/// Tenants and peers learned at run time (from Kubernetes), merged with
/// the file's: on an id clash the file's tenant wins and the clash is
/// reported.
#[derive(Debug, Clone, Default)]
pub struct Discovered {
    /// Tenants, each already validated.
    pub tenants: Vec<crate::config::TenantConfig>,
    /// Other replicas to forward cancels to.
    pub peers: Vec<crate::config::CancelPeer>,
}

/// Configuration sections that need a restart to change.
#[derive(Debug, Clone, PartialEq)]
struct FixedSections {
    listen: crate::config::ListenConfig,
    tls: crate::config::TlsConfig,
    backend: crate::config::BackendConfig,
    log: crate::config::LogConfig,
    shutdown_grace: Duration,
    drain: crate::config::DrainConfig,
    cancel_instance_id: u8,
    auth: crate::config::AuthConfig,
    aws: crate::config::AwsConfig,
    kubernetes: crate::config::KubernetesConfig,
}

impl FixedSections {
    fn of(config: &Config) -> FixedSections {
        FixedSections {
            listen: config.listen.clone(),
            tls: config.tls.clone(),
            backend: config.backend.clone(),
            log: config.log.clone(),
            shutdown_grace: config.shutdown_grace,
            drain: config.drain,
            cancel_instance_id: config.cancel.instance_id,
            auth: config.auth.clone(),
            aws: config.aws.clone(),
            kubernetes: config.kubernetes.clone(),
        }
    }

    /// Names of the sections that differ.
    fn changed(&self, other: &FixedSections) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if self.listen != other.listen {
            changed.push("listen");
        }
        if self.tls != other.tls {
            changed.push("tls");
        }
        if self.backend != other.backend {
            changed.push("backend");
        }
        if self.log != other.log {
            changed.push("log");
        }
        if self.shutdown_grace != other.shutdown_grace || self.drain != other.drain {
            changed.push("shutdown");
        }
        if self.aws != other.aws {
            changed.push("aws");
        }
        if self.kubernetes != other.kubernetes {
            changed.push("kubernetes");
        }
        if self.cancel_instance_id != other.cancel_instance_id {
            changed.push("cancel.instance_id");
        }
        if self.auth != other.auth {
            changed.push("auth");
        }
        changed
    }
}

/// Why the server could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// TLS files unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The operating system has no random bytes.
    #[error(transparent)]
    Random(#[from] crate::auth::RandomError),
    /// Self-registration cannot be set up.
    #[error(transparent)]
    Register(#[from] crate::register::RegisterError),
    /// A port could not be bound.
    #[error("cannot bind {what} {addr}: {error}")]
    Bind {
        /// Which port.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The error.
        error: std::io::Error,
    },
}

/// Why a reload was refused; the running configuration stays.
#[derive(Debug, Error)]
pub enum ReloadError {
    /// The file is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// TLS files are unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Requests to a running server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Re-read the config file and the TLS certificate (SIGHUP).
    Reload,
    /// Stop gracefully (SIGTERM).
    Shutdown,
}

/// A bound, not yet serving, server.
pub struct Server {
    shared: Arc<Shared>,
    listener: TcpListener,
    health: Option<HealthPort>,
    admin: Option<TcpListener>,
    control_tx: mpsc::UnboundedSender<Control>,
    control_rx: mpsc::UnboundedReceiver<Control>,
}

/// Controls a server from outside: signals, tests.
#[derive(Clone)]
pub struct ServerHandle {
    tx: mpsc::UnboundedSender<Control>,
    shared: Arc<Shared>,
}

impl Server {
    /// Loads TLS, builds the routing table and binds every port. Reads
    /// `config_path` again on reload, when given.
    pub async fn bind(config: Config, config_path: Option<PathBuf>) -> Result<Server, StartError> {
        let tls = match (config.tls.mode, &config.tls.cert, &config.tls.key) {
            (TlsMode::Disable, _, _) => None,
            (_, Some(cert), Some(key)) => Some(ServerTls::load(cert, key)?),
            // Config::parse rejects this combination.
            _ => None,
        };
        // Without random bytes no nonce or cancel key can be made safely:
        // refuse to start rather than fall back to guessable ones.
        crate::auth::fill_random(&mut [0u8; 32], "key")?;
        let salt_key = match &config.auth.secret {
            Some(secret) => SaltKey::from_secret(&secret.0),
            None => SaltKey::random()?,
        };
        let mock_key = salt_key.mock_key();
        let routes = RoutingTable::build(&config, None, &salt_key)?;
        let console = crate::console::ConsoleConfig::from_config(&config, &salt_key);
        let bind = |what, addr| move |error| StartError::Bind { what, addr, error };
        let listener = TcpListener::bind(config.listen.addr)
            .await
            .map_err(bind("listen.addr", config.listen.addr))?;
        let health = match config.listen.health_addr {
            Some(addr) => Some(HealthPort::bind(addr).map_err(bind("listen.health_addr", addr))?),
            None => None,
        };
        let admin = match config.listen.admin_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(bind("listen.admin_addr", addr))?,
            ),
            None => None,
        };
        let settings = Settings {
            proxy_protocol: config.listen.proxy_protocol,
            tls_mode: config.tls.mode,
            startup_timeout: config.listen.startup_timeout,
            connect_timeout: config.backend.connect_timeout,
            auth_timeout: config.backend.auth_timeout,
            tcp_keepalive: config.listen.tcp_keepalive,
            max_message_size: config.listen.max_message_size,
            shutdown_grace: config.shutdown_grace,
            drain: config.drain,
        };
        let data_port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let registration = crate::register::Registration::new(&config.aws, data_port).await?;
        let shared = Arc::new(Shared {
            settings,
            tls,
            routes: ArcSwap::from_pointee(routes),
            cancel: CancelMap::new(&config.cancel),
            clients: Arc::new(Semaphore::new(config.listen.max_client_connections)),
            lifecycle: Lifecycle::default(),
            pools: crate::pool::Pools::default(),
            mock_key,
            salt_key,
            console: ArcSwap::from_pointee(console),
            connected: crate::clients::Clients::default(),
            reloaded: tokio::sync::watch::Sender::new(0),
            stop_requests: tokio::sync::watch::Sender::new(0),
            registration,
            config_path,
            fixed: FixedSections::of(&config),
            sources: std::sync::Mutex::new(Sources {
                file: config,
                discovered: Discovered::default(),
            }),
        });
        // Install the recorder before the first connection counts anything.
        crate::metrics::handle();
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        Ok(Server {
            shared,
            listener,
            health,
            admin,
            control_tx,
            control_rx,
        })
    }

    /// The data port's address.
    pub fn addr(&self) -> SocketAddr {
        // Bound sockets have addresses; a failure here would be a kernel bug.
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The health port's address, when configured.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health.as_ref().map(HealthPort::addr)
    }

    /// The admin port's address, when configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// A handle for reload and shutdown.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            tx: self.control_tx.clone(),
            shared: self.shared.clone(),
        }
    }

    /// Serves until a stop request, drains (see [`crate::lifecycle`]), then
    /// lets sessions finish within the grace period.
    pub async fn serve(self) {
        let Server {
            shared,
            listener,
            health,
            admin,
            mut control_rx,
            control_tx: _,
        } = self;
        let mut background = tokio::task::JoinSet::new();
        background.spawn(crate::metrics::upkeep_loop());
        let maintained = shared.clone();
        background.spawn(async move {
            maintained
                .pools
                .maintenance_loop(Duration::from_secs(5))
                .await
        });
        if let Some(health) = health {
            background.spawn(health.serve(shared.lifecycle.subscribe()));
        }
        let admin = admin.map(|admin| tokio::spawn(crate::admin::serve(admin, shared.clone())));
        background.spawn(crate::discovery::run(shared.clone()));
        let controlled = shared.clone();
        background.spawn(async move {
            while let Some(command) = control_rx.recv().await {
                match command {
                    Control::Reload => match controlled.reload() {
                        Ok(()) => tracing::info!("configuration and certificate reloaded"),
                        Err(e) => tracing::error!(error = %e, "reload failed; keeping the running configuration"),
                    },
                    Control::Shutdown => controlled.request_stop(),
                }
            }
            // Every handle is gone: nobody can stop the server any more.
            controlled.request_stop();
        });

        shared.lifecycle.set(State::Ready);
        set_phase(DrainPhase::Serving);
        shared.registration.start();
        tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "pgcell ready");
        let (stop_accepting, accepting) = tokio::sync::watch::channel(false);
        let (sessions, requests_at_stop) = tokio::join!(
            crate::listener::accept_loop(&listener, &shared, accepting),
            drain(&shared, stop_accepting),
        );
        // The port is closed before anyone is told Stopping.
        drop(listener);
        set_phase(DrainPhase::ClosingSessions);
        shared.lifecycle.set(State::Stopping);
        finish_sessions(&shared, sessions, requests_at_stop).await;
        set_phase(DrainPhase::Stopped);
        shared.lifecycle.set(State::Stopped);
        // Let the admin server finish its graceful shutdown, briefly.
        if let Some(mut admin) = admin {
            if tokio::time::timeout(Duration::from_secs(2), &mut admin)
                .await
                .is_err()
            {
                admin.abort();
            }
        }
        background.shutdown().await;
        tracing::info!("pgcell stopped");
    }
}

/// Where a shutdown is (`pgcell_drain_phase`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DrainPhase {
    Serving,
    Deregistering,
    Propagating,
    WaitingForDeregistration,
    ClosingSessions,
    Stopped,
}

impl DrainPhase {
    const ALL: [DrainPhase; 6] = [
        DrainPhase::Serving,
        DrainPhase::Deregistering,
        DrainPhase::Propagating,
        DrainPhase::WaitingForDeregistration,
        DrainPhase::ClosingSessions,
        DrainPhase::Stopped,
    ];

    fn name(self) -> &'static str {
        match self {
            DrainPhase::Serving => "serving",
            DrainPhase::Deregistering => "deregistering",
            DrainPhase::Propagating => "propagating",
            DrainPhase::WaitingForDeregistration => "waiting_for_deregistration",
            DrainPhase::ClosingSessions => "closing_sessions",
            DrainPhase::Stopped => "stopped",
        }
    }
}

fn set_phase(phase: DrainPhase) {
    for p in DrainPhase::ALL {
        let value = if p == phase { 1.0 } else { 0.0 };
        metrics::gauge!(crate::metrics::DRAIN_PHASE, "phase" => p.name()).set(value);
    }
    if phase != DrainPhase::Serving {
        tracing::info!(phase = phase.name(), "drain");
    }
}

/// The drain, from the first stop request to the data port closing:
/// deregister, keep accepting through the propagation window, wait for the
/// target to leave the group. A further stop request cuts the waits short
/// (never the DeregisterTargets call, which is bounded by itself). Returns
/// the number of stop requests seen when the data port closed.
async fn drain(shared: &Shared, stop_accepting: tokio::sync::watch::Sender<bool>) -> u32 {
    let mut requests = shared.stop_requests.subscribe();
    // The sender lives in `shared`, so waiting cannot fail.
    let _ = requests.wait_for(|n| *n >= 1).await;
    shared.lifecycle.set(State::Draining);
    let hurry = || {
        let mut requests = shared.stop_requests.subscribe();
        async move {
            let _ = requests.wait_for(|n| *n >= 2).await;
        }
    };
    if shared.registration.enabled() {
        set_phase(DrainPhase::Deregistering);
        shared.registration.deregister().await;
    }
    set_phase(DrainPhase::Propagating);
    tokio::select! {
        () = tokio::time::sleep(shared.settings.drain.propagation) => {}
        () = hurry() => tracing::info!("second stop request: propagation window cut short"),
    }
    if shared.registration.enabled() {
        set_phase(DrainPhase::WaitingForDeregistration);
        tokio::select! {
            () = shared.registration.wait_gone(shared.settings.drain.deregistration_timeout) => {}
            () = hurry() => tracing::info!("second stop request: not waiting for the target to leave the group"),
        }
    }
    let _ = stop_accepting.send(true);
    let requests_at_stop = *shared.stop_requests.borrow();
    requests_at_stop
}

/// Gives the sessions left `shutdown.grace` to finish (pooled ones leave
/// at their next transaction boundary), then closes the rest. One more
/// stop request closes them at once.
async fn finish_sessions(
    shared: &Shared,
    mut sessions: tokio::task::JoinSet<()>,
    requests_at_stop: u32,
) {
    let grace = shared.settings.shutdown_grace;
    tracing::info!(
        sessions = sessions.len(),
        grace_s = grace.as_secs_f64(),
        "waiting for sessions to finish"
    );
    let mut requests = shared.stop_requests.subscribe();
    let cut = requests_at_stop.max(1) + 1;
    let drained = tokio::select! {
        () = async { while sessions.join_next().await.is_some() {} } => true,
        () = tokio::time::sleep(grace) => false,
        () = async { let _ = requests.wait_for(|n| *n >= cut).await; } => false,
    };
    if !drained {
        tracing::warn!(sessions = sessions.len(), "closing remaining sessions");
        metrics::counter!(crate::metrics::SHUTDOWN_CLOSED, "how" => "grace_expired")
            .increment(sessions.len() as u64);
        sessions.shutdown().await;
    }
}

impl ServerHandle {
    /// Asks the server to reload its config and TLS certificate.
    pub fn reload(&self) {
        let _ = self.tx.send(Control::Reload);
    }

    /// Asks the server to stop gracefully: the first request drains, each
    /// further one cuts the current wait short.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Control::Shutdown);
    }

    /// The current lifecycle state.
    pub fn state(&self) -> State {
        self.shared.lifecycle.state()
    }

    /// Successful reloads so far.
    pub fn reloads(&self) -> u64 {
        *self.shared.reloaded.borrow()
    }

    /// Cancel keys issued to sessions that are still open.
    pub fn cancel_keys(&self) -> usize {
        self.shared.cancel.len()
    }
}

impl Shared {
    /// Counts a stop request (SIGTERM, `POST /drain`, a handle's
    /// `shutdown`).
    pub fn request_stop(&self) {
        self.stop_requests.send_modify(|n| *n = n.saturating_add(1));
    }

    /// Starts the drain unless it has started already (`POST /drain`, which
    /// load balancers and scripts may repeat). Returns whether this call
    /// started it.
    pub fn start_drain(&self) -> bool {
        self.stop_requests.send_if_modified(|n| {
            if *n == 0 {
                *n = 1;
                true
            } else {
                false
            }
        })
    }

    /// Re-reads the TLS certificate and key, and the config file's tenants,
    /// routing, admin users and cancel peers. Listener addresses and timeouts need a
    /// restart. SIGHUP and the admin console's `RELOAD` both land here.
    pub fn reload(&self) -> Result<(), ReloadError> {
        if let Some(tls) = &self.tls {
            let result = tls.reload();
            let outcome = if result.is_ok() { "ok" } else { "error" };
            metrics::counter!(crate::metrics::TLS_RELOADS, "outcome" => outcome).increment(1);
            result?;
        }
        if let Some(path) = &self.config_path {
            let result = Config::load(path)
                .map_err(ReloadError::from)
                .and_then(|config| {
                    config.tenant_problems(&self.fixed.listen, &self.fixed.tls)?;
                    let changed = self.fixed.changed(&FixedSections::of(&config));
                    if !changed.is_empty() {
                        tracing::warn!(
                            sections = changed.join(", "),
                            "reload applies tenants and routing only; restart to apply changes to these sections"
                        );
                    }
                    let mut sources = self.lock_sources();
                    let previous = std::mem::replace(&mut sources.file, config);
                    self.rebuild(&sources).inspect_err(|_| sources.file = previous)
                });
            let outcome = if result.is_ok() { "ok" } else { "error" };
            metrics::counter!(crate::metrics::CONFIG_RELOADS, "outcome" => outcome).increment(1);
            result?;
        }
        Ok(())
    }

    /// Replaces the tenants and peers discovery found and rebuilds the
    /// routing table. A discovered tenant that the running listener
    /// cannot serve as configured is left out and reported; a TLS
    /// problem (an unusable backend CA) keeps the previous table.
    pub fn set_discovered(&self, mut discovered: Discovered) -> Result<(), ReloadError> {
        discovered.tenants.retain(|t| {
            match crate::config::tenant_problems_of(t, &self.fixed.listen, &self.fixed.tls) {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(tenant = %t.id, problems = %e, "discovered tenant left out");
                    false
                }
            }
        });
        let mut sources = self.lock_sources();
        let previous = std::mem::replace(&mut sources.discovered, discovered);
        let result = self.rebuild(&sources);
        if result.is_err() {
            sources.discovered = previous;
        }
        result
    }

    /// The configuration file as last loaded (without discovered tenants).
    pub fn file_config(&self) -> Config {
        self.lock_sources().file.clone()
    }

    fn lock_sources(&self) -> std::sync::MutexGuard<'_, Sources> {
        self.sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Builds the routing table, console and peers from `sources` and
    /// swaps them in; tenants no longer present get their pools retired
    /// and their idle clients told.
    fn rebuild(&self, sources: &Sources) -> Result<(), ReloadError> {
        let mut merged = sources.file.clone();
        let mut clashes = 0;
        for t in &sources.discovered.tenants {
            if merged.tenants.iter().any(|f| f.id == t.id) {
                clashes += 1;
                tracing::warn!(tenant = %t.id, "a discovered tenant has the id of a tenant in the config file; the file's is used");
            } else {
                merged.tenants.push(t.clone());
            }
        }
        metrics::gauge!(crate::metrics::DISCOVERY_CLASHES).set(clashes as f64);
        let previous = self.routes.load();
        let routes = RoutingTable::build(&merged, Some(&previous), &self.salt_key)?;
        let console = crate::console::ConsoleConfig::from_config(&merged, &self.salt_key);
        let mut peers = merged.cancel.peers.clone();
        for peer in &sources.discovered.peers {
            if !peers.iter().any(|p| p.addr == peer.addr) {
                peers.push(peer.clone());
            }
        }
        self.cancel.set_peers(&peers);
        self.pools.retire_tenants_except(|id| routes.contains(id));
        self.routes.store(Arc::new(routes));
        self.reloaded.send_modify(|generation| *generation += 1);
        self.console.store(Arc::new(console));
        Ok(())
    }
}
