//! The server: what one pgcell process shares between connections, and its
//! start, reload and stop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::auth::secret::SaltKey;
use crate::config::{Config, TlsMode};
use crate::health::HealthPort;
use crate::lifecycle::State;
use crate::state::Shared;
use crate::tls::{ServerTls, TlsError};

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

/// Requests to a running server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
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
        for warning in config.warnings() {
            tracing::warn!("{warning}");
        }
        let salt_key = match &config.auth.secret {
            Some(secret) => SaltKey::from_secret(&secret.0),
            None => SaltKey::random()?,
        };
        let bind = |what, addr| move |error| StartError::Bind { what, addr, error };
        let listener = TcpListener::bind(config.listen.addr)
            .await
            .map_err(bind("listen.addr", config.listen.addr))?;
        // Inherited by every accepted connection.
        crate::backend::set_socket_options(&listener, config.listen.tcp_keepalive);
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
        let data_port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let registration = crate::register::Registration::new(&config.aws, data_port).await?;
        let shared = Arc::new(Shared::new(
            config,
            config_path,
            tls,
            salt_key,
            registration,
        )?);
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
        background.spawn(crate::replication::run(shared.clone()));
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

        shared.set_lifecycle(State::Ready);
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
        shared.set_lifecycle(State::Stopping);
        finish_sessions(&shared, sessions, requests_at_stop).await;
        set_phase(DrainPhase::Stopped);
        shared.set_lifecycle(State::Stopped);
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
    shared.stop_requested(1).await;
    shared.set_lifecycle(State::Draining);
    let hurry = || shared.stop_requested(2);
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
    shared.stop_requests()
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
    let cut = requests_at_stop.max(1) + 1;
    let drained = tokio::select! {
        () = async { while sessions.join_next().await.is_some() {} } => true,
        () = tokio::time::sleep(grace) => false,
        () = shared.stop_requested(cut) => false,
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
        self.shared.reloads()
    }

    /// Cancel keys issued to sessions that are still open.
    pub fn cancel_keys(&self) -> usize {
        self.shared.cancel.len()
    }
}
