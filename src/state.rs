//! What one pgcell process shares between its connections ([`Shared`]):
//! fixed settings, the routing table, pools, cancel keys, the lifecycle,
//! and how a reload or discovery rebuilds them. The server module
//! creates it; every connection, the console, the admin
//! port and discovery read it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use thiserror::Error;
use tokio::sync::Semaphore;

use crate::auth::secret::{SaltKey, ScramSecret};
use crate::cancel::CancelMap;
use crate::config::{AuthMode, Config, ConfigError, Credential, PoolMode, ProxyMode, TlsMode};
use crate::lifecycle::Lifecycle;
use crate::route::RoutingTable;
use crate::tls::{ServerTls, TlsError};

/// Settings fixed for the life of the process.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
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

/// State shared by every connection of one server. Connections read the
/// fields; what changes after start (routes, console users, discovered
/// tenants, stop requests) changes only through the methods below.
pub(crate) struct Shared {
    /// Fixed settings.
    pub(crate) settings: Settings,
    /// Client TLS, unless disabled.
    pub(crate) tls: Option<ServerTls>,
    /// Tenants; swapped whole on reload.
    pub(crate) routes: ArcSwap<RoutingTable>,
    /// Cancel keys issued.
    pub(crate) cancel: CancelMap,
    /// Global client connection slots.
    pub(crate) clients: Arc<Semaphore>,
    /// Lifecycle state.
    pub(crate) lifecycle: Lifecycle,
    /// Backend pools of tenants pgcell authenticates itself.
    pub(crate) pools: crate::pool::Pools,
    /// Key for the fake SCRAM secrets of unknown users.
    pub(crate) mock_key: [u8; 32],
    /// Admin console users and tenant summaries; swapped whole on reload.
    pub(crate) console: ArcSwap<ConsoleConfig>,
    /// Clients connected now (`SHOW CLIENTS`).
    pub(crate) connected: crate::clients::Clients,
    /// This replica's NLB target registration (a no-op unless
    /// `[aws] register = true`).
    pub(crate) registration: crate::register::Registration,
    /// What password users' SCRAM salts derive from (`[auth]` secret, or
    /// random per process); fixed until restart.
    salt_key: SaltKey,
    /// Reloads so far (and discovery rebuilds): an idle pooled session
    /// wakes for them ([`Shared::idle_events`]) besides its client.
    reloads: std::sync::atomic::AtomicU64,
    /// The server is stopping: idle pooled sessions leave.
    stopping: std::sync::atomic::AtomicBool,
    /// Stop requests so far (SIGTERM, `POST /drain`): the first drains,
    /// each further one cuts the current wait short.
    stop_requests: tokio::sync::watch::Sender<u32>,
    config_path: Option<PathBuf>,
    /// The sections a reload cannot change, as started.
    fixed: FixedSections,
    /// The configuration file as last loaded, and what discovery added;
    /// the routing table is built from both. The lock also serialises
    /// rebuilds.
    sources: std::sync::Mutex<Sources>,
}

/// What an idle pooled session waits for besides its client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct IdleEvents {
    /// Successful reloads (and discovery rebuilds) so far.
    pub(crate) reloads: u64,
    /// The server is stopping: idle sessions leave.
    pub(crate) stopping: bool,
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
pub(crate) struct Discovered {
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
    pub(crate) fn of(config: &Config) -> FixedSections {
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

/// Why a reload was refused; the running configuration stays.
#[derive(Debug, Error)]
pub(crate) enum ReloadError {
    /// The file is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// TLS files are unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

impl Shared {
    /// The state of a server about to start: the routing table and console
    /// users built from `config`, no client yet. `config_path` is read
    /// again on reload.
    pub(crate) fn new(
        config: Config,
        config_path: Option<PathBuf>,
        tls: Option<ServerTls>,
        salt_key: SaltKey,
        registration: crate::register::Registration,
    ) -> Result<Shared, TlsError> {
        let routes = RoutingTable::build(&config, None, &salt_key)?;
        let console = ConsoleConfig::from_config(&config, &salt_key);
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
        Ok(Shared {
            settings,
            tls,
            routes: ArcSwap::from_pointee(routes),
            cancel: CancelMap::new(&config.cancel),
            clients: Arc::new(Semaphore::new(config.listen.max_client_connections)),
            lifecycle: Lifecycle::default(),
            pools: crate::pool::Pools::default(),
            mock_key: salt_key.mock_key(),
            salt_key,
            console: ArcSwap::from_pointee(console),
            connected: crate::clients::Clients::default(),
            reloads: std::sync::atomic::AtomicU64::new(0),
            stopping: std::sync::atomic::AtomicBool::new(false),
            stop_requests: tokio::sync::watch::Sender::new(0),
            registration,
            config_path,
            fixed: FixedSections::of(&config),
            sources: std::sync::Mutex::new(Sources {
                file: config,
                discovered: Discovered::default(),
            }),
        })
    }

    /// Successful reloads (and discovery rebuilds) so far.
    pub(crate) fn reloads(&self) -> u64 {
        self.reloads.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// What an idle pooled session wakes for besides its client: reloads
    /// so far and whether the server is stopping. A change wakes every
    /// connected client's [`crate::clients::ClientEntry::idle_wake`]; a
    /// session registers its waker there before it reads this, so it
    /// cannot miss one.
    pub(crate) fn idle_events(&self) -> IdleEvents {
        IdleEvents {
            reloads: self.reloads(),
            stopping: self.stopping.load(std::sync::atomic::Ordering::SeqCst),
        }
    }

    /// Moves the lifecycle to `state`; idle sessions hear of a stop.
    pub(crate) fn set_lifecycle(&self, state: crate::lifecycle::State) {
        self.lifecycle.set(state);
        if state.is_stopping()
            && !self
                .stopping
                .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            self.connected.wake_idle();
        }
    }

    /// Stop requests so far.
    pub(crate) fn stop_requests(&self) -> u32 {
        *self.stop_requests.borrow()
    }

    /// Waits until at least `n` stop requests have been made.
    pub(crate) async fn stop_requested(&self, n: u32) {
        let mut requests = self.stop_requests.subscribe();
        // The sender lives in `self`, so waiting cannot fail.
        let _ = requests.wait_for(|seen| *seen >= n).await;
    }

    /// Counts a stop request (SIGTERM, `POST /drain`, a handle's
    /// `shutdown`).
    pub(crate) fn request_stop(&self) {
        self.stop_requests.send_modify(|n| *n = n.saturating_add(1));
    }

    /// Starts the drain unless it has started already (`POST /drain`, which
    /// load balancers and scripts may repeat). Returns whether this call
    /// started it.
    pub(crate) fn start_drain(&self) -> bool {
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
    pub(crate) fn reload(&self) -> Result<(), ReloadError> {
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
    #[cfg(feature = "kube")]
    pub(crate) fn set_discovered(&self, mut discovered: Discovered) -> Result<(), ReloadError> {
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
    pub(crate) fn file_config(&self) -> Config {
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
        let console = ConsoleConfig::from_config(&merged, &self.salt_key);
        let mut peers = merged.cancel.peers.clone();
        for peer in &sources.discovered.peers {
            if !peers.iter().any(|p| p.addr == peer.addr) {
                peers.push(peer.clone());
            }
        }
        self.cancel.set_peers(&peers);
        self.pools.retire_tenants_except(|id| routes.contains(id));
        self.routes.store(Arc::new(routes));
        self.reloads
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.connected.wake_idle();
        self.console.store(Arc::new(console));
        Ok(())
    }
}

/// What the admin console takes from the config file;
/// swapped whole on reload.
#[derive(Debug, Default)]
pub(crate) struct ConsoleConfig {
    /// SCRAM secrets of the admin users, derived once per load.
    pub(crate) secrets: HashMap<String, ScramSecret>,
    /// The configured tenants, for `SHOW TENANTS` and `PAUSE`.
    pub(crate) tenants: Vec<TenantSummary>,
}

/// A configured tenant as the console shows it.
#[derive(Debug, Clone)]
pub(crate) struct TenantSummary {
    pub(crate) id: String,
    pub(crate) auth: AuthMode,
    pub(crate) pool_mode: PoolMode,
    pub(crate) backends: Vec<String>,
}

impl ConsoleConfig {
    /// Derives the admin users' secrets (PBKDF2 for passwords: once per
    /// load, never per login).
    pub(crate) fn from_config(config: &Config, salt_key: &SaltKey) -> ConsoleConfig {
        let secrets = config
            .admin
            .users
            .iter()
            .map(|u| {
                let secret = match &u.credential {
                    Credential::ScramSecret(s) => s.clone(),
                    // Scope "": no tenant id is empty.
                    Credential::Password(pw) => salt_key.password_secret("", &u.name, &pw.0),
                };
                (u.name.clone(), secret)
            })
            .collect();
        let tenants = config
            .tenants
            .iter()
            .map(|t| TenantSummary {
                id: t.id.clone(),
                auth: t.auth,
                pool_mode: t.pool.mode,
                backends: t.backends.clone(),
            })
            .collect();
        ConsoleConfig { secrets, tenants }
    }

    /// Whether any admin user is configured; without one, `pgcell` is an
    /// ordinary database name.
    pub(crate) fn enabled(&self) -> bool {
        !self.secrets.is_empty()
    }

    pub(crate) fn has_tenant(&self, id: &str) -> bool {
        self.tenants.iter().any(|t| t.id == id)
    }
}
