//! Starting → Ready → Stopping → Stopped, and who watches it.
//!
//! - **Starting**: config, TLS and listeners are being set up; the health
//!   port is closed.
//! - **Ready**: the health port accepts, `/readyz` answers 200.
//! - **Stopping**: the health port is closed so the NLB stops sending new
//!   connections; the data port stops accepting; sessions get
//!   `shutdown.grace` to finish; connections still in their handshake get
//!   `57P01`.
//! - **Stopped**: everything is closed.

use tokio::sync::watch;

/// Where the process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Setting up.
    Starting,
    /// Serving.
    Ready,
    /// Finishing the sessions it has.
    Stopping,
    /// Done.
    Stopped,
}

impl State {
    /// Lower-case name for `/readyz` and logs.
    pub fn name(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Ready => "ready",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
        }
    }
}

/// The process's state, observable by the health port and the admin API.
#[derive(Debug)]
pub struct Lifecycle {
    tx: watch::Sender<State>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            tx: watch::Sender::new(State::Starting),
        }
    }
}

impl Lifecycle {
    /// The current state.
    pub fn state(&self) -> State {
        *self.tx.borrow()
    }

    /// Moves to `state`, logging the step and updating `pgcell_ready`.
    pub fn set(&self, state: State) {
        let old = self.tx.send_replace(state);
        if old != state {
            tracing::info!(from = old.name(), to = state.name(), "lifecycle");
        }
        let ready = if state == State::Ready { 1.0 } else { 0.0 };
        metrics::gauge!(crate::metrics::READY).set(ready);
    }

    /// A receiver that sees every change.
    pub fn subscribe(&self) -> watch::Receiver<State> {
        self.tx.subscribe()
    }
}
