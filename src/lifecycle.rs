//! Starting → Ready → Draining → Stopping → Stopped, and who watches it.
//!
//! - **Starting**: config, TLS and listeners are being set up; the health
//!   port is closed.
//! - **Ready**: the health port accepts, `/readyz` answers 200.
//! - **Draining** (first SIGTERM or `POST /drain`): the target is
//!   deregistered first; the data port keeps accepting and the health port
//!   keeps answering (an unhealthy target gets its connections reset by
//!   the NLB) through `shutdown.propagation`, then until the target has
//!   left the group (at most `shutdown.deregistration_timeout`);
//!   `/readyz` answers 503.
//! - **Stopping**: the data and health ports close; pooled clients leave
//!   with `57P01` at their next transaction boundary (idle ones at once);
//!   the rest get `shutdown.grace` to finish; connections still in their
//!   handshake get `57P01`.
//! - **Stopped**: everything is closed.

use tokio::sync::watch;

/// Where the process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Setting up.
    Starting,
    /// Serving.
    Ready,
    /// Leaving the target group; still serving.
    Draining,
    /// Finishing the sessions it has.
    Stopping,
    /// Done.
    Stopped,
}

impl State {
    /// Whether sessions should be ending.
    pub fn is_stopping(self) -> bool {
        matches!(self, State::Stopping | State::Stopped)
    }

    /// Whether the health port answers.
    pub fn is_serving(self) -> bool {
        matches!(self, State::Ready | State::Draining)
    }

    /// Lower-case name for `/readyz` and logs.
    pub fn name(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Ready => "ready",
            State::Draining => "draining",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
        }
    }
}

/// The process's state, observable by the health port and the admin API.
#[derive(Debug)]
pub(crate) struct Lifecycle {
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
    pub(crate) fn state(&self) -> State {
        *self.tx.borrow()
    }

    /// Moves to `state`, logging the step and updating `pgcell_ready`.
    pub(crate) fn set(&self, state: State) {
        let old = self.tx.send_replace(state);
        if old != state {
            tracing::info!(from = old.name(), to = state.name(), "lifecycle");
        }
        let ready = if state == State::Ready { 1.0 } else { 0.0 };
        metrics::gauge!(crate::metrics::READY).set(ready);
    }

    /// A receiver that sees every change.
    pub(crate) fn subscribe(&self) -> watch::Receiver<State> {
        self.tx.subscribe()
    }
}
