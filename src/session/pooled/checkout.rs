//! Lending a backend to a client and taking it back: the client's session
//! is replayed on checkout, read back and reset on checkin when the
//! transaction may have changed it (`session::engine` says why).

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{Session, SessionError};
use crate::backend::server::{parameter_status, set_param};
use crate::cancel::CancelTarget;
use crate::config::PoolMode;
use crate::metrics as m;
use crate::pool::Lease;
use crate::protocol::framing::read_message;
use crate::protocol::messages;
use crate::protocol::{ClientError, SqlState};
use crate::session::engine::{self, ClientSession, SessionChanges};

/// Longest reply read while pgcell talks to a backend on its own.
const MAX_OWN_REPLY: usize = 1 << 20;

/// Why pgcell's own statement on a backend failed.
pub(super) enum OwnQueryError {
    /// The backend refused it (its SQLSTATE and message).
    Refused(SqlState, String),
    /// The backend closed or answered out of turn.
    Lost,
}

impl Session<'_> {
    /// Takes `lease` for this client: replays its session (nothing to do
    /// in the common case, a client that changed no setting), points its
    /// cancel key at the backend. False when the replay failed: the
    /// client has its error (the statement that needed the backend
    /// fails, the session goes on, as after any error) and the backend
    /// went back to the pool.
    pub(super) async fn checkout<C: AsyncWrite + Unpin>(
        &mut self,
        lease: Lease,
        client: &mut C,
    ) -> Result<bool, SessionError> {
        if self.session.is_empty() {
            self.attach(lease);
            return Ok(true);
        }
        // Boxed: rare, and its state would otherwise be part of every
        // client's task.
        Box::pin(self.checkout_restoring(lease, client)).await
    }

    async fn checkout_restoring<C: AsyncWrite + Unpin>(
        &mut self,
        mut lease: Lease,
        client: &mut C,
    ) -> Result<bool, SessionError> {
        // Settings first, with the login user's privileges; if PostgreSQL
        // refuses that order (a setting only the role may make), the role
        // first. A refused replay changed nothing (one statement).
        let mut refused = None;
        for query in [
            self.session.restore_query(),
            self.session.restore_query_role_first(),
        ]
        .into_iter()
        .flatten()
        {
            match run_own(&mut lease, &query).await {
                Ok(_) => {
                    self.attach(lease);
                    return Ok(true);
                }
                Err(OwnQueryError::Refused(code, message)) => refused = Some((code, message)),
                Err(OwnQueryError::Lost) => {
                    let _ = crate::session::server_lost().send(client).await;
                    return Err(SessionError::BackendLost);
                }
            }
        }
        // A setting the client made earlier no longer applies (a role
        // dropped since, say): the statement fails with PostgreSQL's
        // error, as it would have failed on a direct connection where the
        // role went away; the client keeps its session and may RESET.
        self.pool.release(lease, true);
        let (code, message) = refused.unwrap_or((SqlState::INVALID_PARAMETER_VALUE, String::new()));
        tracing::info!(tenant = %self.tenant, %message, "session settings could not be replayed");
        ClientError::statement(code, message)
            .send(client)
            .await
            .map_err(SessionError::ClientIo)?;
        Ok(false)
    }

    /// Points the session (its cancel key, its statements, its protocol
    /// position) at `lease`.
    pub(super) fn attach(&mut self, lease: Lease) {
        self.statements.new_backend();
        self.position.reset();
        self.backend_fatal = false;
        self.checked_out_at = lease.leased_at;
        self.cancel_key.attach(CancelTarget {
            addr: lease.conn.addr,
            key: lease.conn.key,
        });
        self.lease = Some(lease);
    }

    /// Hands the backend back between transactions (transaction mode):
    /// reads back and resets what the transaction may have changed first,
    /// and checks for session state when a statement was not understood
    /// or the pool asks for it (`check_session_state`).
    pub(super) async fn checkin(&mut self) {
        let Some(mut lease) = self.lease.take() else {
            return;
        };
        let cancelled = self.cancel_key.detach();
        let now = std::time::Instant::now();
        self.listed
            .tally
            .transaction(now.saturating_duration_since(self.checked_out_at));
        let changes = std::mem::take(&mut self.changes);
        // State that cannot be carried (LISTEN, temp tables, ...) must not
        // reach the next client: that backend is closed.
        let dirty = std::mem::take(&mut self.state_dirty);
        let check = changes.check_state
            || self.pool.check_session_state()
            || self.session.searches_pg_temp();
        // Boxed (all rare but the last): their state would otherwise be
        // part of every client's task.
        let clean = if changes.settings || self.pool.reset_every_transaction() {
            Box::pin(self.carry_settings(&mut lease, check)).await
        } else if check {
            Box::pin(self.check_state(&mut lease)).await
        } else if !self.session.is_empty() {
            // The client's replayed settings are on the backend: off they go.
            Box::pin(run_own(&mut lease, engine::RESET)).await.is_ok()
        } else {
            true
        };
        self.pool
            .release_at(lease, !cancelled && !dirty && clean, now);
    }

    /// Reads back the settings the client has now and resets the backend
    /// to its login state (with `check`, first lists the session state it
    /// holds). False when that failed or state is held (the backend must
    /// then be closed; the client keeps the session it had).
    async fn carry_settings(&mut self, lease: &mut Lease, check: bool) -> bool {
        let capture = self.custom.capture_and_reset();
        let query = if check {
            format!("{}; {capture}", engine::STATE_CHECK).into()
        } else {
            capture
        };
        match run_own(lease, &query).await {
            Ok(rows) => {
                let (session, held) = engine::captured(rows, &self.pool.key.user);
                self.session = session;
                self.state_held(&held)
            }
            Err(e) => {
                if let OwnQueryError::Refused(_, message) = e {
                    tracing::warn!(tenant = %self.tenant, %message, "session settings could not be read back; backend closed");
                }
                false
            }
        }
    }

    /// Lists the session state the backend holds (resetting the client's
    /// replayed settings in the same round trip). False when it holds any
    /// or the check failed.
    async fn check_state(&mut self, lease: &mut Lease) -> bool {
        let query = if self.session.is_empty() {
            engine::STATE_CHECK.to_owned()
        } else {
            format!("{}; {}", engine::STATE_CHECK, engine::RESET)
        };
        match run_own(lease, &query).await {
            Ok(rows) => self.state_held(&engine::held_state(&rows)),
            Err(_) => false,
        }
    }

    /// Counts the kinds of state a check found; true when there is none.
    fn state_held(&self, held: &[String]) -> bool {
        for kind in held {
            metrics::counter!(m::SESSION_STATE, "tenant" => self.tenant.clone(), "kind" => format!("found_{kind}"))
                .increment(1);
        }
        if !held.is_empty() {
            tracing::debug!(tenant = %self.tenant, ?held, "backend holds session state; closed");
        }
        held.is_empty()
    }

    /// The client is gone: a session-mode backend is reset and returned, a
    /// backend left mid-transaction is closed, never returned dirty.
    pub(super) async fn finish(&mut self) {
        let Some(mut lease) = self.lease.take() else {
            return;
        };
        let cancelled = self.cancel_key.detach();
        if !self.position.idle() {
            // The client left mid-query: stop the query, so the backend
            // closing does not leave it running and holding locks.
            if self.position.busy() {
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
        if cancelled || self.pinned || self.state_dirty {
            return;
        }
        let changes = std::mem::take(&mut self.changes);
        let clean = match self.pool.reset_query() {
            Some(query) if self.pool.mode == PoolMode::Session => {
                let reset = run_own(&mut lease, query).await.is_ok();
                lease.conn.prepared.clear();
                reset
            }
            // Nothing may have changed: as it logged in.
            _ if !changes.settings
                && self.session.is_empty()
                && self.pool.mode == PoolMode::Transaction =>
            {
                true
            }
            // Reset (what is read back is of no use now).
            _ => run_own(&mut lease, engine::CAPTURE_AND_RESET).await.is_ok(),
        };
        self.session = ClientSession::default();
        self.changes = SessionChanges::default();
        self.pool.release(lease, clean);
    }
}

/// Runs one simple query of pgcell's own on a backend that waits for a
/// command, to `ReadyForQuery`; returns its rows as (first, second)
/// column text. `ParameterStatus` updates the backend's parameters;
/// notices are dropped.
pub(super) async fn run_own(
    lease: &mut Lease,
    query: &str,
) -> Result<Vec<(String, String)>, OwnQueryError> {
    let mut body = query.as_bytes().to_vec();
    body.push(0);
    let mut out = BytesMut::new();
    messages::tagged(&mut out, b'Q', &body);
    lease
        .conn
        .stream
        .write_all(&out)
        .await
        .map_err(|_| OwnQueryError::Lost)?;
    let mut error = None;
    let mut rows = Vec::new();
    loop {
        let msg = read_message(&mut lease.conn.stream, MAX_OWN_REPLY)
            .await
            .map_err(|_| OwnQueryError::Lost)?;
        match msg.tag {
            b'E' => {
                if engine::is_fatal(&msg.body) {
                    return Err(OwnQueryError::Lost);
                }
                let code = messages::error_field(&msg.body, b'C')
                    .and_then(SqlState::parse)
                    .unwrap_or(SqlState::INTERNAL_ERROR);
                error = Some((code, messages::error_message(&msg.body)));
            }
            b'S' => {
                if let Some((name, value)) = parameter_status(&msg.body) {
                    set_param(&mut lease.conn.params, name, value);
                }
            }
            b'D' => {
                if let Some([Some(name), Some(value)]) = messages::data_row(&msg.body).as_deref() {
                    rows.push((
                        String::from_utf8_lossy(name).into_owned(),
                        String::from_utf8_lossy(value).into_owned(),
                    ));
                }
            }
            b'Z' => {
                return match (error, msg.body.first()) {
                    (None, Some(b'I')) => Ok(rows),
                    (Some((code, e)), _) => Err(OwnQueryError::Refused(code, e)),
                    (None, _) => Err(OwnQueryError::Lost),
                };
            }
            _ => {}
        }
    }
}
