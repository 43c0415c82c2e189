//! Lending a backend to a client and taking it back: the client's session
//! is replayed on checkout, read back and reset on checkin when the
//! transaction may have changed it (`session::engine` says why).

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{Session, SessionError};
use crate::backend::server::{parameter_status, set_param};
use crate::cancel::CancelTarget;
use crate::config::PoolMode;
use crate::pool::Lease;
use crate::protocol::framing::read_message;
use crate::protocol::messages;
use crate::protocol::{ClientError, SqlState};
use crate::session::engine::{self, ClientSession, SessionChanges};

/// Longest reply read while pgcell talks to a backend on its own.
const MAX_OWN_REPLY: usize = 1 << 20;

/// Why pgcell's own statement on a backend failed.
pub(super) enum OwnQueryError {
    /// The backend refused it (its message).
    Refused(String),
    /// The backend closed or answered out of turn.
    Lost,
}

impl Session<'_> {
    /// Takes `lease` for this client: replays its session (nothing to do
    /// in the common case, a client that changed no setting), points its
    /// cancel key at the backend.
    pub(super) async fn checkout<C: AsyncWrite + Unpin>(
        &mut self,
        lease: Lease,
        client: &mut C,
    ) -> Result<(), SessionError> {
        match self.session.restore_query() {
            None => {
                self.attach(lease);
                Ok(())
            }
            // Boxed: rare, and its state would otherwise be part of every
            // client's task.
            Some(query) => Box::pin(self.checkout_restoring(lease, query, client)).await,
        }
    }

    async fn checkout_restoring<C: AsyncWrite + Unpin>(
        &mut self,
        mut lease: Lease,
        query: String,
        client: &mut C,
    ) -> Result<(), SessionError> {
        match run_own(&mut lease, &query).await {
            Ok(_) => {}
            // A setting the client made earlier no longer applies (a role
            // dropped since, say): as PostgreSQL would say it to a new
            // session. The failed statement changed nothing, so the
            // backend goes back clean.
            Err(OwnQueryError::Refused(message)) => {
                self.pool.release(lease, true);
                let _ = ClientError::fatal(SqlState::INVALID_PARAMETER_VALUE, message.clone())
                    .send(client)
                    .await;
                return Err(SessionError::SessionRestore(message));
            }
            Err(OwnQueryError::Lost) => {
                let _ = crate::session::server_lost().send(client).await;
                return Err(SessionError::BackendLost);
            }
        }
        self.attach(lease);
        Ok(())
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
    /// reads back and resets what the transaction may have changed first.
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
        // Boxed (both rare: a client that changed settings): their state
        // would otherwise be part of every client's task.
        let carried = if changes.settings || self.pool.reset_every_transaction() {
            Box::pin(self.carry_settings(&mut lease)).await
        } else if !self.session.is_empty() {
            // The client's replayed settings are on the backend: off they go.
            Box::pin(run_own(&mut lease, engine::RESET)).await.is_ok()
        } else {
            true
        };
        self.pool
            .release_at(lease, !cancelled && !dirty && carried, now);
    }

    /// Reads back the settings the client has now and resets the backend
    /// to its login state. False when that failed (the backend must then
    /// be closed; the client keeps the session it had).
    async fn carry_settings(&mut self, lease: &mut Lease) -> bool {
        let query = self.custom.capture_and_reset();
        match run_own(lease, &query).await {
            Ok(rows) => {
                self.session = engine::captured(rows, &self.pool.key.user);
                true
            }
            Err(e) => {
                if let OwnQueryError::Refused(message) = e {
                    tracing::warn!(tenant = %self.tenant, %message, "session settings could not be read back; backend closed");
                }
                false
            }
        }
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
            _ if !changes.settings && self.session.is_empty() => true,
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
                error = Some(messages::error_message(&msg.body));
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
                    (Some(e), _) => Err(OwnQueryError::Refused(e)),
                    (None, _) => Err(OwnQueryError::Lost),
                };
            }
            _ => {}
        }
    }
}
