//! Following both directions of a leased backend: what the client sends
//! (counted, classified, handed to the engine as it goes out) and what the
//! backend answers (relayed in place, pgcell's own replies swallowed, the
//! engine told), and the decision to hand the backend back.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::session::Session;
use crate::backend::server::{parameter_status, set_param};
use crate::config::PoolMode;
use crate::metrics as m;
use crate::metrics::tally::Count;
use crate::protocol::framing::{peek_message, Message, Peeked, HEADER_LEN};
use crate::protocol::messages;
use crate::session::error::SessionError;
use crate::sql::{Dialect, Verdict};

/// Largest backend message relayed in pooled mode (PostgreSQL's own limit
/// is 1 GiB for most messages); client messages are bounded by
/// `listen.max_message_size`.
const MAX_POOLED_MESSAGE_LEN: usize = 256 << 20;

/// Reported parameters no session can set.
const READ_ONLY: &[&str] = &[
    "server_version",
    "server_encoding",
    "integer_datetimes",
    "is_superuser",
    "session_authorization",
    "in_hot_standby",
    "scram_iterations",
];

impl Session<'_> {
    /// Relays the complete backend messages in `from_server` to the client
    /// and hands the backend back when the transaction is over.
    ///
    /// The messages are followed in place: unless one of them is a reply
    /// pgcell swallows (to a statement it prepared on its own), the bytes
    /// go to the client straight from the read buffer, without splitting
    /// or copying a message.
    pub(super) async fn deliver<C: AsyncWrite + Unpin>(
        &mut self,
        client: &mut C,
        from_server: &mut BytesMut,
        to_client: &mut BytesMut,
        client_quiet: bool,
    ) -> Result<(), SessionError> {
        let (end, copied, release) = self.relay_server_messages(from_server, to_client)?;
        let out: &[u8] = if copied {
            to_client
        } else {
            &from_server[..end]
        };
        self.bytes.to_client += out.len() as u64;
        client
            .write_all(out)
            .await
            .map_err(SessionError::ClientIo)?;
        to_client.clear();
        from_server.advance(end);
        if release && client_quiet {
            self.checkin().await;
        }
        // Between transactions: a removed tenant's clients leave here, and
        // every client when the server is stopping.
        if self.checkout.position().idle() {
            if self.shared.idle_events().stopping {
                return self.leave_for_shutdown();
            }
            self.follow_reload()?;
        }
        Ok(())
    }

    pub(super) fn count_client_message(&mut self, msg: &Message) {
        if matches!(msg.tag, b'Q' | b'E') {
            self.listed.tally.add(Count::Queries, 1);
        }
    }

    /// Judges the SQL text a `Query` or `Parse` carries (one lexer reads
    /// every statement of it), noting the custom settings it names.
    pub(super) fn judge(&mut self, msg: &Message) -> Verdict {
        let sql = match msg.tag {
            b'Q' => &msg.body[..],
            // Parse: statement name, then the query text.
            b'P' => match msg.body.iter().position(|&b| b == 0) {
                Some(end) => &msg.body[end + 1..],
                None => return Verdict::default(),
            },
            b'F' => return crate::sql::verdict::function_call(),
            _ => return Verdict::default(),
        };
        let verdict = crate::sql::judge(sql, Dialect::default());
        if verdict.settings {
            self.custom.note(sql, Dialect::default());
        }
        verdict
    }

    /// Notes what a message executes on the backend (a `Query`'s
    /// statements, or those of the statement a `Bind` binds, judged when
    /// it was parsed).
    pub(super) fn executed(&mut self, verdict: Verdict) {
        if verdict.is_quiet() {
            return;
        }
        // Session mode: the backend is the client's own; state made there
        // is the client's to keep.
        if self.pool.mode == PoolMode::Session {
            self.checkout.executed(
                Verdict {
                    state: None,
                    ..verdict
                },
                false,
            );
            return;
        }
        let was_pinned = self.checkout.pinned();
        if let Some(kind) = self
            .checkout
            .executed(verdict, self.pool.pin_session_state())
        {
            // Statements whose effect outlives the transaction on this
            // backend only: counted; the backend is closed (or kept).
            let kind = kind.label();
            metrics::counter!(m::SESSION_STATE, "tenant" => self.tenant.clone(), "kind" => kind)
                .increment(1);
            if self.checkout.pinned() && !was_pinned {
                tracing::debug!(tenant = %self.tenant, kind, "client pinned to its backend");
            }
        }
    }

    /// Follows the complete backend messages at the front of `from_server`
    /// and updates the session from them. Returns how many bytes they
    /// take, whether they were copied to `to_client` (only when one of
    /// them is swallowed: then `to_client` holds the rest; otherwise
    /// `from_server[..end]` goes to the client as it is), and whether the
    /// backend may go back to the pool (transaction mode, idle).
    fn relay_server_messages(
        &mut self,
        from_server: &mut BytesMut,
        to_client: &mut BytesMut,
    ) -> Result<(usize, bool, bool), SessionError> {
        let mut ready_seen = false;
        let mut pos = 0;
        // Once a message is swallowed, the kept ones are copied; `kept`
        // is where the bytes not copied yet start.
        let mut copied = false;
        let mut kept = 0;
        loop {
            let (tag, len) = match peek_message(&from_server[pos..], MAX_POOLED_MESSAGE_LEN)
                .map_err(|_| SessionError::BackendLost)?
            {
                Peeked::Complete { tag, len } => (tag, len),
                Peeked::Incomplete(needed) => {
                    // Room for the whole of a long message, read once,
                    // when it is at the front. Behind complete messages
                    // not yet sent, `reserve` would grow the buffer
                    // (its front is still in use): doubled at every read
                    // of a long result, to tens of MiB under a slow
                    // reader. Those messages go out first; the next
                    // read's `reserve_read` then reuses their room.
                    let have = from_server.len() - pos;
                    if pos == 0 && needed > have {
                        from_server.reserve(needed - have);
                    }
                    break;
                }
            };
            let body = &from_server[pos + HEADER_LEN..pos + len];
            // An error that names one of the client's statements by
            // pgcell's name: the client reads its own name (rare: errors
            // only).
            let renamed = match (tag, self.pool.mode) {
                (b'E', PoolMode::Transaction) => self.statements.client_error(body),
                _ => None,
            };
            let keep = self.on_server_message(tag, body);
            if !keep || renamed.is_some() {
                to_client.extend_from_slice(&from_server[kept..pos]);
                kept = pos + len;
                copied = true;
            }
            if let (true, Some(body)) = (keep, renamed) {
                messages::tagged(to_client, tag, &body);
            }
            ready_seen |= tag == b'Z';
            pos += len;
        }
        if copied {
            to_client.extend_from_slice(&from_server[kept..pos]);
        }
        let release = ready_seen
            && self.pool.mode == PoolMode::Transaction
            && self.checkout.may_release()
            && pos == from_server.len();
        Ok((pos, copied, release))
    }

    /// Updates the session from one backend message; false when the
    /// client must not see it (the reply to a statement pgcell prepared
    /// on its own).
    fn on_server_message(&mut self, tag: u8, body: &[u8]) -> bool {
        // Data rows, the most common message, change nothing.
        if tag == b'D' {
            return true;
        }
        let received = self.checkout.received(tag, body);
        match tag {
            // Replies to Parse and Close: pgcell's own are swallowed; what
            // the backend skipped did not happen.
            b'1' | b'3' | b'E' | b'Z' if self.pool.mode == PoolMode::Transaction => {
                if let Some(lease) = self.lease.as_mut() {
                    if tag == b'E' {
                        // A pgcell statement the backend lacks (dropped
                        // behind pgcell's back): prepared again at its
                        // next use.
                        super::super::prepared::note_missing(body, &mut lease.conn.prepared);
                    }
                    let keep = self.statements.replied(received, &mut lease.conn.prepared);
                    if tag == b'E' {
                        super::super::prepared::note_exists(body, &mut lease.conn.prepared);
                    }
                    if !keep {
                        return false;
                    }
                    // Every drop sent has had its answer once nothing is
                    // outstanding: records of failed ones go.
                    if tag == b'Z' && self.checkout.position().quiet() {
                        self.statements.settle_drops();
                        lease.conn.prepared.settle_drops();
                    }
                }
            }
            // A DEALLOCATE ALL / DISCARD ALL that reached the backend
            // dropped every statement pgcell prepared there.
            b'C' if body.starts_with(b"DEALLOCATE ALL\0") || body.starts_with(b"DISCARD ALL\0") => {
                if let Some(lease) = self.lease.as_mut() {
                    lease.conn.prepared.dropped_all();
                }
                // The client's own statements went too, as on a direct
                // connection (it ran the command, in whatever form).
                self.statements.drop_answered();
            }
            b'S' => {
                if let Some((name, value)) = parameter_status(body) {
                    // A reported setting changed (by a SET, a RESET, or a
                    // function): the session must be read back.
                    if !READ_ONLY.contains(&name.as_str()) {
                        self.checkout.setting_reported();
                    }
                    if let Some(lease) = self.lease.as_mut() {
                        if name == "in_hot_standby" {
                            // A promotion (PostgreSQL tells each session
                            // at its next ReadyForQuery): the server's
                            // role changed, and pools drop their idle
                            // backends on it that no longer fit.
                            let role = crate::backend::topology::Role::from_in_hot_standby(&value);
                            if role != crate::backend::topology::Role::Unknown {
                                self.pool.topology().saw_role(lease.conn.server, role);
                            }
                        }
                        set_param(&mut lease.conn.params, name, value);
                    }
                }
            }
            _ => {}
        }
        true
    }
}
