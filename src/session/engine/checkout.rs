//! One lease followed without I/O ([`Checkout`]) and what becomes of the
//! backend when it ends ([`Checkin`]): the engine's decisions for the
//! relay loop in `session::pooled`.

use super::position::{Owed, Position, Received};
use super::state::{CustomSettings, SessionChanges, RESET, STATE_CHECK};
use crate::protocol::messages::is_fatal;
use crate::sql::StateKind;

/// One client's use of leased backends, without I/O: the backend's
/// protocol position, what the current transaction did to the session,
/// pinning, and the pipeline pgcell failed for want of a backend. The
/// relay loop (`session::pooled`) feeds it every message both ways and
/// acts on what it returns; [`Checkout::checkin`] decides what becomes of
/// the backend when the transaction ends.
#[derive(Debug)]
pub struct Checkout {
    position: Position,
    changes: SessionChanges,
    /// State that cannot be carried to another backend was made (the
    /// first kind).
    state: Option<StateKind>,
    /// Kept on its backend for good (`pin_session_state`).
    pinned: bool,
    /// The backend sent a FATAL error: it closes next, and the client has
    /// its error already.
    fatal: bool,
    /// A pipeline failed for want of a backend: the client's messages up
    /// to its `Sync` are dropped.
    skipping_to_sync: bool,
}

/// What becomes of a backend when its client's transaction ends (or the
/// client leaves): what runs on it first, and whether it may be reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkin {
    /// Read the client's settings back ([`CAPTURE_AND_RESET`]), then reset.
    pub capture: bool,
    /// Reset it to its login state ([`RESET`]) without reading back.
    pub reset: bool,
    /// List the session state it holds ([`STATE_CHECK`]); any closes it.
    pub check_state: bool,
    /// Drop every prepared statement on it (`DEALLOCATE ALL`): a statement
    /// pgcell could not judge may have dropped some of those pgcell made
    /// there (`DO`, `CALL`), so pgcell's list of them is no longer sure.
    pub forget_statements: bool,
    /// Close it whatever the round trip shows.
    pub close: Option<CloseReason>,
}

/// Why a backend is closed instead of going back to the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// A cancel was sent during the checkout: a late signal must not hit
    /// the next client.
    Cancelled,
    /// The transaction left state that cannot be carried.
    SessionState(StateKind),
    /// The state check found state no statement showed.
    StateFound,
    /// pgcell's own statement on it failed.
    OwnQueryFailed,
    /// The client left in the middle of a transaction or a query.
    ClientLeftMidTransaction,
    /// The client keeps it for good (pinned) and has left.
    Pinned,
}

impl CloseReason {
    /// A label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Cancelled => "cancelled",
            CloseReason::SessionState(_) => "session_state",
            CloseReason::StateFound => "state_found",
            CloseReason::OwnQueryFailed => "own_query_failed",
            CloseReason::ClientLeftMidTransaction => "client_left_mid_transaction",
            CloseReason::Pinned => "pinned",
        }
    }
}

/// What the pool and the client's session say about a checkin.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckinPolicy {
    /// The client's cancel key was used during the checkout.
    pub cancelled: bool,
    /// `reset_every_transaction`.
    pub reset_every_transaction: bool,
    /// `check_session_state`.
    pub check_session_state: bool,
    /// The client's changed settings were replayed on this backend.
    pub replayed: bool,
    /// The client's `search_path` names `pg_temp` (a plain `CREATE TABLE`
    /// may make a temporary one).
    pub searches_pg_temp: bool,
}

impl Checkin {
    /// The query to run on the backend first, if any: the state check,
    /// then the read-back and reset, in one round trip.
    pub fn query(&self, custom: &CustomSettings) -> Option<std::borrow::Cow<'static, str>> {
        let tail: Option<std::borrow::Cow<'static, str>> = if self.capture {
            Some(custom.capture_and_reset())
        } else if self.reset {
            Some(RESET.into())
        } else {
            None
        };
        let query = match (self.check_state, tail) {
            (true, Some(tail)) => Some(format!("{STATE_CHECK}; {tail}").into()),
            (true, None) => Some(STATE_CHECK.into()),
            (false, tail) => tail,
        };
        if !self.forget_statements {
            return query;
        }
        Some(match query {
            Some(q) => format!("{q}; DEALLOCATE ALL").into(),
            None => "DEALLOCATE ALL".into(),
        })
    }

    /// Whether nothing runs and the backend is reused (the common case).
    pub fn is_free(&self) -> bool {
        !self.capture
            && !self.reset
            && !self.check_state
            && !self.forget_statements
            && self.close.is_none()
    }
}

impl Default for Checkout {
    fn default() -> Checkout {
        Checkout {
            position: Position::new(),
            changes: SessionChanges::default(),
            state: None,
            pinned: false,
            fatal: false,
            skipping_to_sync: false,
        }
    }
}

impl Checkout {
    /// Back to a new lease: nothing outstanding, nothing changed (keeping
    /// the memory it follows with, and a pipeline being skipped).
    pub fn attach(&mut self) {
        self.position.reset();
        self.changes = SessionChanges::default();
        self.state = None;
        self.pinned = false;
        self.fatal = false;
    }

    /// Where the backend stands.
    pub fn position(&self) -> &Position {
        &self.position
    }

    /// Notes one message sent to the backend.
    pub fn sent(&mut self, tag: u8) {
        self.position.sent(tag)
    }

    /// Notes one message sent to the backend that creates or drops one of
    /// pgcell's statements there, or that pgcell sent on its own; false
    /// when the backend discards it ([`Position::sent_owing`]).
    pub fn sent_owing(&mut self, tag: u8, owed: Owed) -> bool {
        self.position.sent_owing(tag, owed)
    }

    /// Notes one backend message: what it answered, what the backend
    /// skipped.
    pub fn received(&mut self, tag: u8, body: &[u8]) -> Received {
        if tag == b'E' && is_fatal(body) {
            self.fatal = true;
        }
        self.position.received(tag, body)
    }

    /// A `ParameterStatus` for a setting a session can change: read the
    /// session back at checkin.
    pub fn setting_reported(&mut self) {
        self.changes.settings = true;
    }

    /// Notes what a message executes (a `Query`'s statements, a bound
    /// statement's). Returns the kind of state that cannot be carried,
    /// when it made some; with `pin`, the client keeps the backend.
    pub fn executed(&mut self, verdict: crate::sql::Verdict, pin: bool) -> Option<StateKind> {
        if verdict.is_quiet() {
            return None;
        }
        self.changes.executed(verdict);
        let kind = verdict.state?;
        self.state.get_or_insert(kind);
        self.pinned |= pin;
        Some(kind)
    }

    /// The backend sent a FATAL error (the client has it).
    pub fn fatal(&self) -> bool {
        self.fatal
    }

    /// The client keeps its backend for good.
    pub fn pinned(&self) -> bool {
        self.pinned
    }

    /// Whether the transaction is over and the backend may go back
    /// (transaction mode; injected replies are the statements' to say).
    pub fn may_release(&self) -> bool {
        self.position.idle() && !self.pinned
    }

    /// Whether the client's messages are being dropped up to a `Sync`.
    pub fn skipping_to_sync(&self) -> bool {
        self.skipping_to_sync
    }

    /// Starts or ends dropping the client's messages up to a `Sync`.
    pub fn skip_to_sync(&mut self, skip: bool) {
        self.skipping_to_sync = skip;
    }

    /// The transaction is over (transaction mode): what to run on the
    /// backend and whether it may be reused.
    pub fn checkin(&mut self, policy: CheckinPolicy) -> Checkin {
        let changes = std::mem::take(&mut self.changes);
        let close = if policy.cancelled {
            Some(CloseReason::Cancelled)
        } else {
            self.state.take().map(CloseReason::SessionState)
        };
        let capture = changes.settings || policy.reset_every_transaction;
        Checkin {
            capture,
            reset: !capture && policy.replayed,
            check_state: close.is_none()
                && (changes.check_state || policy.check_session_state || policy.searches_pg_temp),
            forget_statements: close.is_none() && changes.forget_statements,
            close,
        }
    }

    /// The client has left: what to do with the backend it held.
    /// `reset_query` is the pool's session-mode reset (when set, it runs
    /// instead of the reset: that is [`Checkin::reset`] with the caller's
    /// query).
    pub fn finish(&mut self, policy: CheckinPolicy, session_mode: bool) -> Checkin {
        let close = if !self.position.idle() {
            Some(CloseReason::ClientLeftMidTransaction)
        } else if policy.cancelled {
            Some(CloseReason::Cancelled)
        } else if self.pinned {
            Some(CloseReason::Pinned)
        } else {
            self.state.take().map(CloseReason::SessionState)
        };
        let changes = std::mem::take(&mut self.changes);
        // A session's backend is reset when it leaves whatever it did; a
        // transaction's only when something may have changed.
        let reset = close.is_none() && (session_mode || changes.settings || policy.replayed);
        // A transaction-mode backend goes to other clients: checked as at
        // any checkin (a session-mode one gets the pool's reset query).
        let transaction = close.is_none() && !session_mode;
        Checkin {
            capture: false,
            reset,
            check_state: transaction
                && (changes.check_state || policy.check_session_state || policy.searches_pg_temp),
            forget_statements: transaction && changes.forget_statements,
            close,
        }
    }
}
