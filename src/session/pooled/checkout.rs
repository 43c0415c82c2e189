//! Lending a backend to a client and taking it back: the client's session
//! is replayed on checkout, read back and reset on checkin when the
//! transaction may have changed it (`session::engine` says why).

use std::sync::Arc;

use tokio::io::AsyncWrite;

use super::session::Session;
use crate::backend::server::{OwnQueryError, StartupProfile};
use crate::cancel::CancelTarget;
use crate::clients::ClientEntry;
use crate::config::PoolMode;
use crate::metrics as m;
use crate::pool::{Lease, Pool, Release};
use crate::protocol::{ClientError, SqlState};
use crate::session::engine::{self, Checkin, CheckinPolicy, ClientSession, CloseReason};
use crate::session::error::SessionError;

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
                Err(OwnQueryError::Lost) => return Err(SessionError::BackendLost),
            }
        }
        // A setting the client made earlier no longer applies (a role
        // dropped since, say): each is tried alone, the ones PostgreSQL
        // refuses are dropped from the client's session, and the
        // statement that needed the backend fails with PostgreSQL's error;
        // the session goes on without them (it would otherwise fail every
        // statement from now on, RESET included).
        let mut kept = Vec::new();
        for (name, value) in std::mem::take(&mut self.session.settings) {
            let one = ClientSession {
                settings: vec![(name.clone(), value.clone())],
            };
            let Some(query) = one.restore_query() else {
                continue;
            };
            match run_own(&mut lease, &query).await {
                Ok(_) => kept.push((name, value)),
                Err(OwnQueryError::Refused(code, message)) => {
                    refused.get_or_insert((code, message));
                }
                Err(OwnQueryError::Lost) => return Err(SessionError::BackendLost),
            }
        }
        self.session.settings = kept;
        // What was applied goes: the backend returns as it logged in.
        let release = match run_own(&mut lease, engine::RESET).await {
            Ok(_) => Release::Reuse,
            Err(_) => Release::Close(CloseReason::OwnQueryFailed.label()),
        };
        self.pool.release(lease, release);
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
    pub(super) fn attach(&mut self, mut lease: Lease) {
        self.statements.new_backend();
        self.checkout.attach();
        lease.conn.prepared.settle_drops();
        self.checked_out_at = lease.leased_at;
        self.cancel_key.attach(CancelTarget {
            addr: lease.conn.addr,
            key: lease.conn.key,
        });
        self.lease = Some(lease);
    }

    /// Hands the backend back between transactions (transaction mode),
    /// as the engine decides ([`engine::Checkout::checkin`]): reads back
    /// and resets what the transaction may have changed, checks for
    /// session state when a statement was not understood or the pool asks
    /// for it, closes it when it must.
    pub(super) async fn checkin(&mut self) {
        let Some(mut lease) = self.lease.take() else {
            return;
        };
        let now = std::time::Instant::now();
        self.listed
            .tally
            .transaction(now.saturating_duration_since(self.checked_out_at));
        let policy = self.checkin_policy(&lease);
        let outcome = self.checkout.checkin(policy);
        let release = if outcome.is_free() {
            Release::Reuse
        } else {
            // Boxed (rare: a client that changed settings): its state
            // would otherwise be part of every client's task.
            Box::pin(self.act_on(&mut lease, outcome)).await
        };
        self.pool.release_at(lease, release, now);
        if std::sync::Arc::ptr_eq(&self.pool, &self.home) {
            // A transaction on the primary: later read-only ones wait for
            // a replica that has replayed past it.
            self.last_write = Some(now);
        } else {
            self.pool = self.home.clone();
        }
    }

    /// What the pool and this client's session say about a checkin (the
    /// cancel key is detached from the backend here).
    fn checkin_policy(&mut self, lease: &Lease) -> CheckinPolicy {
        CheckinPolicy {
            cancelled: self.cancel_key.detach(),
            reset_every_transaction: self.pool.reset_every_transaction(),
            check_session_state: self.pool.check_session_state(),
            replayed: !self.session.is_empty(),
            searches_pg_temp: self.startup_pg_temp
                || lease.conn.searches_pg_temp
                || self.session.searches_pg_temp(),
        }
    }

    /// Runs what `outcome` asks on the backend and says whether it may be
    /// reused. A read-back replaces the client's session (also when the
    /// backend is closed after it: the client goes on elsewhere).
    async fn act_on(&mut self, lease: &mut Lease, outcome: Checkin) -> Release {
        let close = |reason: CloseReason| Release::Close(reason.label());
        let Some(query) = outcome.query(&self.custom) else {
            return outcome.close.map_or(Release::Reuse, close);
        };
        let rows = match run_own(lease, &query).await {
            Ok(rows) => rows,
            Err(e) => {
                if let OwnQueryError::Refused(_, message) = e {
                    tracing::warn!(tenant = %self.tenant, %message, "session read-back or reset failed; backend closed");
                }
                return close(CloseReason::OwnQueryFailed);
            }
        };
        let held = if outcome.capture {
            let (session, held) = engine::captured(rows, &self.pool.key.user);
            self.session = session;
            held
        } else {
            engine::held_state(&rows)
        };
        for kind in &held {
            metrics::counter!(m::SESSION_STATE, "tenant" => self.tenant.clone(), "kind" => format!("found_{kind}"))
                .increment(1);
        }
        if outcome.forget_statements {
            // Every statement pgcell made there is gone.
            lease.conn.prepared.clear();
        }
        match (outcome.close, held.is_empty()) {
            (Some(reason), _) => close(reason),
            (None, false) => {
                tracing::debug!(tenant = %self.tenant, ?held, "backend holds session state; closed");
                close(CloseReason::StateFound)
            }
            (None, true) => Release::Reuse,
        }
    }

    /// The client is gone: a session-mode backend is reset and returned, a
    /// backend left mid-transaction is closed, never returned dirty.
    pub(super) async fn finish(&mut self) {
        let Some(mut lease) = self.lease.take() else {
            return;
        };
        let policy = self.checkin_policy(&lease);
        let session_mode = self.pool.mode == PoolMode::Session;
        let outcome = self.checkout.finish(policy, session_mode);
        if outcome.close == Some(CloseReason::ClientLeftMidTransaction)
            && self.checkout.position().busy()
        {
            // The client left mid-query: stop the query, so the backend
            // closing does not leave it running and holding locks.
            let target = CancelTarget {
                addr: lease.conn.addr,
                key: lease.conn.key,
            };
            let timeout = self.shared.settings.connect_timeout;
            tokio::spawn(async move {
                let _ = crate::cancel::send_cancel(target, timeout).await;
            });
        }
        if outcome.check_state || outcome.forget_statements {
            // Transaction mode, after a statement pgcell could not judge
            // (or on request): checked as at any checkin.
            let release = Box::pin(self.act_on(&mut lease, outcome)).await;
            self.session = ClientSession::default();
            self.pool.release(lease, release);
            return;
        }
        let release = match (outcome.close, outcome.reset, self.pool.reset_query()) {
            (Some(reason), _, _) => Release::Close(reason.label()),
            (None, false, _) => Release::Reuse,
            // The pool's own reset for a session-mode backend.
            (None, true, Some(query)) if session_mode => {
                let reset = run_own(&mut lease, query).await.is_ok();
                lease.conn.prepared.clear();
                if reset {
                    Release::Reuse
                } else {
                    Release::Close(CloseReason::OwnQueryFailed.label())
                }
            }
            (None, true, _) => match run_own(&mut lease, engine::RESET).await {
                Ok(_) => Release::Reuse,
                Err(_) => Release::Close(CloseReason::OwnQueryFailed.label()),
            },
        };
        self.session = ClientSession::default();
        self.pool.release(lease, release);
    }
}

/// Runs one simple query of pgcell's own on the leased backend
/// ([`ServerConn::run_own`]).
pub(super) async fn run_own(
    lease: &mut Lease,
    query: &str,
) -> Result<Vec<(String, String)>, OwnQueryError> {
    lease.conn.run_own(query).await
}

/// A backend for the client: an idle one at once when there is one,
/// else by waiting in the pool's line.
pub(super) async fn acquire(
    pool: &Arc<Pool>,
    profile: &Arc<StartupProfile>,
    listed: &ClientEntry,
) -> Result<Lease, SessionError> {
    // An idle backend ready to go needs no waiting (the common case);
    // the waiting path is boxed so its large state is not part of every
    // idle client's task.
    acquire_fresh(pool, profile, listed, None).await
}

/// [`acquire`], from servers that have replayed what was committed before
/// `fresh_after` (read-your-writes).
pub(super) async fn acquire_fresh(
    pool: &Arc<Pool>,
    profile: &Arc<StartupProfile>,
    listed: &ClientEntry,
    fresh_after: Option<std::time::Instant>,
) -> Result<Lease, SessionError> {
    if let Some(lease) = pool.try_acquire_idle(profile, &listed.tally, fresh_after) {
        return Ok(lease);
    }
    Box::pin(pool.acquire(profile, &listed.tally, fresh_after))
        .await
        .map_err(SessionError::Acquire)
}
