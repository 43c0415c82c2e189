//! The pooled-session engine: what a backend owes its client, and what a
//! client's session is, without I/O.
//!
//! The relay loop in [`super::pooled`] only moves bytes; it tells this
//! module every message it sends to a backend and every message the
//! backend answers, and asks it three questions: may the backend go back
//! to the pool now ([`Position::idle`]), did the transaction that just
//! ended possibly change the session ([`SessionChanges`]), and what must
//! run on a backend before it serves this client ([`ClientSession`]).
//!
//! # The invariant
//!
//! Every backend a client gets presents exactly that client's session, and
//! no backend returned to the pool carries anything of the client it
//! served:
//!
//! - A backend logs in with the startup parameters of the clients it
//!   serves (the pool hands a client only backends of its own startup
//!   profile), so the client's startup values are the backend's RESET
//!   values and `pg_settings.source` says `client`, as on a direct
//!   connection.
//! - Settings a client changes (`SET`, `RESET`, `set_config(…, false)`,
//!   `SET ROLE`, `SET SESSION AUTHORIZATION`, also inside a transaction
//!   that commits) are read back from the backend when the transaction
//!   ends ([`CAPTURE_AND_RESET`]) and the backend is reset in the same
//!   round trip; the client's [`ClientSession`] replays them on its next
//!   backend. A transaction that may have changed settings is recognised
//!   by its statements ([`may_change_settings`]) or by a `ParameterStatus`
//!   the backend sent during it.
//! - State that cannot be carried over (`LISTEN`, SQL `PREPARE`, `WITH
//!   HOLD` cursors, temporary tables, session advisory locks) closes the
//!   backend instead of returning it (or pins the client to it).
//!
//! Where pgcell cannot see a change — a function that calls
//! `set_config(…, false)` on a setting PostgreSQL does not report —
//! docs/pooling.md says so.

use std::collections::VecDeque;

mod checkout;

pub use checkout::{Checkin, CheckinPolicy, Checkout, CloseReason};

/// Where a backend stands in the protocol: the one queue of replies it
/// owes for what was sent to it, and whether an extended-protocol
/// sequence is open.
///
/// Fed every message as it goes to the backend ([`Position::sent`], or
/// [`Position::sent_owing`] for a message that creates or drops one of
/// pgcell's statements) and every message that comes back
/// ([`Position::received`]), which says which message a reply finished
/// and which messages the backend skipped. It follows PostgreSQL's rules
/// (postgres.c): after an error in an extended-protocol message the
/// backend discards everything up to the next `Sync`, a simple `Query`
/// included (no reply); after an error in a simple `Query` it discards
/// nothing; a simple `Query` in the middle of an unfinished sequence runs
/// and ends the sequence's implicit transaction.
///
/// The client's statements ride in the same queue ([`Owed`]): what a
/// `Parse` creates and what a `Close` pgcell sent to make room drops are
/// settled by the reply, or undone when the backend skips the message.
/// There is no second count to keep in step.
#[derive(Debug, Default)]
pub struct Position {
    replies: VecDeque<Unit>,
    /// An extended-protocol message was sent after the last `Sync` or
    /// `Query`: the sequence is open until a `Sync` (the backend is in
    /// its implicit transaction).
    open: bool,
    /// The backend has failed an extended-protocol message and discards
    /// until the next `Sync` it receives (no `Sync` sent after it yet).
    skipping: bool,
    /// `Sync`s sent since the last `Execute` or `Query`: a COPY's
    /// `CopyInResponse` makes the backend ignore them.
    syncs_since_execute: usize,
    /// The backend is in copy-in mode.
    in_copy: bool,
    /// Transaction status of the last `ReadyForQuery`.
    status: u8,
}

/// One message sent to the backend whose reply has not come.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Unit {
    /// An extended-protocol message (`Parse`, `Bind`, `Describe`,
    /// `Execute`, `Close`): one final reply.
    Extended(Owed),
    /// A `Query` or `FunctionCall`: its replies end with `ReadyForQuery`.
    /// A `Query` pgcell rewrote may carry what it does to the client's
    /// statements (undone if it fails).
    Simple(Owed),
    /// A `Sync`: one `ReadyForQuery`.
    Sync,
}

/// What an extended-protocol message sent to the backend means for the
/// statements pgcell keeps there (nothing, for most messages).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Owed {
    /// Sent by pgcell on its own (a statement re-created on this backend,
    /// or closed to make room): the client never sees the reply.
    pub injected: bool,
    /// The pgcell statement a `Parse` creates.
    pub creates: Option<String>,
    /// A `Parse` of the client's unnamed statement that pgcell re-created.
    pub unnamed: bool,
    /// The pgcell statement a `Close` drops to make room.
    pub evicts: Option<String>,
    /// The client's own `Parse` or `Close`: what it changed in the
    /// client's statements, undone if the backend skips or fails it
    /// (`ClientStatements` keeps the change under this number).
    pub ticket: Option<u64>,
}

impl Owed {
    fn is_plain(&self) -> bool {
        !self.injected
            && self.creates.is_none()
            && !self.unnamed
            && self.evicts.is_none()
            && self.ticket.is_none()
    }
}

/// What a backend message settled among the replies owed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// The extended-protocol message this was the final reply to.
    pub answered: Option<Owed>,
    /// The message that failed (this reply is its ErrorResponse), when it
    /// concerned a statement: PostgreSQL dropped the unnamed statement
    /// before a failed `Parse` of it, so a failure is not a skip.
    pub failed: Option<Owed>,
    /// Messages about statements the backend skipped or failed (an error
    /// in them or earlier in their pipeline): what they would have done
    /// did not happen.
    pub skipped: Vec<Owed>,
}

impl Position {
    /// A backend idle in status `I`.
    pub fn new() -> Position {
        Position {
            status: b'I',
            ..Position::default()
        }
    }

    /// Back to [`Position::new`] for a newly checked-out backend, keeping
    /// the memory of what it follows (no allocation per transaction).
    pub fn reset(&mut self) {
        let mut replies = std::mem::take(&mut self.replies);
        replies.clear();
        *self = Position {
            replies,
            ..Position::new()
        };
    }

    /// Notes one message sent to the backend (client's or pgcell's own).
    pub fn sent(&mut self, tag: u8) {
        self.sent_owing(tag, Owed::default());
    }

    /// Notes one message sent to the backend, with what it does to
    /// pgcell's statements there (for `Parse`, `Close` and a `Query`
    /// pgcell rewrote). False when the backend discards it unanswered (a
    /// `Query` sent into a failed pipeline): whatever it would have done
    /// does not happen.
    pub fn sent_owing(&mut self, tag: u8, owed: Owed) -> bool {
        match tag {
            b'Q' | b'F' => {
                self.syncs_since_execute = 0;
                self.open = false;
                // Sent into a failed pipeline: the backend discards it
                // unanswered.
                if self.skipping {
                    return false;
                }
                self.replies.push_back(Unit::Simple(owed));
            }
            // In copy-in mode the backend ignores Sync: no reply.
            b'S' if self.in_copy => {}
            b'S' => {
                self.syncs_since_execute += 1;
                self.skipping = false;
                self.open = false;
                self.replies.push_back(Unit::Sync);
            }
            b'P' | b'B' | b'D' | b'E' | b'C' => {
                if tag == b'E' {
                    self.syncs_since_execute = 0;
                }
                self.open = true;
                self.replies.push_back(Unit::Extended(owed));
            }
            // A Flush draws no reply and opens nothing: a sequence is
            // opened by the extended-protocol messages before it (psycopg's
            // pipeline mode ends with a Flush after its Sync, which must
            // not keep the backend).
            // CopyDone / CopyFail end copy-in mode.
            b'c' | b'f' => self.in_copy = false,
            _ => {}
        }
        true
    }

    /// Notes one backend message: which message it finished, and which
    /// the backend skipped.
    pub fn received(&mut self, tag: u8, body: &[u8]) -> Received {
        let mut received = Received::default();
        match tag {
            b'Z' => {
                self.status = body.first().copied().unwrap_or(b'I');
                // Extended messages still owed here were skipped.
                while let Some(unit) = self.replies.pop_front() {
                    match unit {
                        Unit::Extended(owed) => skipped(&mut received, owed),
                        // A Query done: what it did to statements stands.
                        Unit::Simple(owed) => {
                            received.answered = Some(owed);
                            break;
                        }
                        Unit::Sync => break,
                    }
                }
            }
            b'E' => self.error(&mut received),
            // Final replies of extended-protocol messages: ParseComplete,
            // BindComplete, CloseComplete, RowDescription / NoData (a
            // Describe; Execute sends no RowDescription), CommandComplete,
            // EmptyQueryResponse, PortalSuspended (an Execute). For a
            // simple Query they are its own and settle nothing.
            b'1' | b'2' | b'3' | b'T' | b'n' | b'C' | b'I' | b's' => {
                if matches!(self.replies.front(), Some(Unit::Extended(_))) {
                    if let Some(Unit::Extended(owed)) = self.replies.pop_front() {
                        received.answered = Some(owed);
                    }
                }
            }
            // CopyInResponse: Syncs sent after the COPY's Execute are
            // ignored by the backend until CopyDone/CopyFail; the
            // sequence stays open for the Sync after the copy.
            b'G' => {
                self.in_copy = true;
                let mut ignored = std::mem::take(&mut self.syncs_since_execute);
                let mut i = self.replies.len();
                while ignored > 0 && i > 0 {
                    i -= 1;
                    if self.replies[i] == Unit::Sync {
                        self.replies.remove(i);
                        ignored -= 1;
                        self.open = true;
                    }
                }
            }
            _ => {}
        }
        received
    }

    /// An ErrorResponse: whose is it, and what does the backend skip?
    fn error(&mut self, received: &mut Received) {
        // The message that failed: the first still owed.
        match self.replies.front_mut() {
            // Nothing outstanding: an error while idle (a FATAL before the
            // backend closes).
            None => return,
            Some(Unit::Extended(_)) => {
                if let Some(Unit::Extended(owed)) = self.replies.pop_front() {
                    received.failed = (!owed.is_plain()).then_some(owed);
                }
            }
            // A simple Query's (or a Sync's commit): nothing is skipped;
            // a Query pgcell rewrote failed.
            Some(Unit::Simple(owed)) => {
                let owed = std::mem::take(owed);
                received.failed = (!owed.is_plain()).then_some(owed);
                return;
            }
            Some(Unit::Sync) => return,
        }
        // The backend discards up to the next Sync: the rest of this
        // sequence and any Query sent into it get no reply.
        while let Some(unit) = self.replies.front() {
            if *unit == Unit::Sync {
                return;
            }
            if let Some(Unit::Extended(owed) | Unit::Simple(owed)) = self.replies.pop_front() {
                skipped(received, owed);
            }
        }
        // No Sync sent yet: what the client sends until then is skipped.
        self.skipping = true;
    }

    /// Transaction status of the last `ReadyForQuery`.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// Nothing outstanding and no sequence open: the backend waits for a
    /// new command (it may still be inside a transaction block: see
    /// [`Position::status`]).
    pub fn quiet(&self) -> bool {
        self.replies.is_empty() && !self.open && !self.skipping
    }

    /// Quiet and outside a transaction block: the point where a
    /// transaction-mode backend can go back to the pool.
    pub fn idle(&self) -> bool {
        self.quiet() && self.status == b'I'
    }

    /// Whether a query is running (a reply is still due).
    pub fn busy(&self) -> bool {
        !self.replies.is_empty()
    }
}

/// A message the backend skipped: kept only when it concerned a statement.
fn skipped(received: &mut Received, owed: Owed) {
    if !owed.is_plain() {
        received.skipped.push(owed);
    }
}

/// What a transaction did to the session, followed while a backend is
/// checked out.
#[derive(Debug, Default, Clone, Copy)]
pub struct SessionChanges {
    /// A statement or a `ParameterStatus` says settings may have changed:
    /// read them back and reset the backend before returning it.
    pub settings: bool,
    /// A statement pgcell could not judge ran: check the backend for
    /// state that cannot be carried ([`STATE_CHECK`]) before returning it.
    pub check_state: bool,
    /// A statement pgcell could not judge ran (`DO`, `CALL`, ...): it may
    /// have dropped the statements pgcell made on the backend.
    pub forget_statements: bool,
}

impl SessionChanges {
    /// Notes what a statement executed on the backend may have done.
    pub fn executed(&mut self, verdict: crate::sql::Verdict) {
        self.settings |= verdict.settings || verdict.unknown;
        self.check_state |= verdict.unknown || verdict.check_state;
        self.forget_statements |= verdict.unknown;
    }
}

/// Lists the session state a backend holds that a reset does not remove
/// and no client may inherit: one row (`pgcell:state`, kind) per kind.
/// Temporary objects of every kind (tables, functions, types, operators,
/// collations, text search objects, ...) depend on the temporary schema
/// in `pg_depend`, which is how PostgreSQL drops them at the session's
/// end.
/// Run, when asked for, in the same round trip as the settings read-back.
pub const STATE_CHECK: &str = "SELECT 'pgcell:state', s.k FROM (VALUES \
('temp_table', pg_catalog.pg_my_temp_schema() OPERATOR(pg_catalog.<>) 0 AND EXISTS (SELECT FROM pg_catalog.pg_depend \
WHERE refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_namespace'::pg_catalog.regclass \
AND refobjid OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema())), \
('cursor_with_hold', EXISTS (SELECT FROM pg_catalog.pg_cursors)), \
('prepare', EXISTS (SELECT FROM pg_catalog.pg_prepared_statements WHERE from_sql)), \
('listen', EXISTS (SELECT FROM pg_catalog.pg_listening_channels())), \
('advisory_lock', EXISTS (SELECT FROM pg_catalog.pg_locks WHERE locktype OPERATOR(pg_catalog.=) 'advisory' \
AND pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()))) AS s(k, held) WHERE s.held";

// pgcell's own queries name every function and operator by its schema
// (`OPERATOR(pg_catalog.=)`): a client may create an operator whose
// argument types match exactly (`<>(oid, int4)`), which PostgreSQL would
// pick over pg_catalog's (found by the third review).

/// The row name [`STATE_CHECK`] reports held state under.
const STATE_ROW: &str = "pgcell:state";

/// Read back what a client changed, then reset the backend to its login
/// state, in one round trip. Rows: (`name`, `value`): the session
/// authorization and the role first (they are replayed first: settings
/// may need the role's rights; the caller drops them when they are the
/// login user's and `none`), then every setting whose source is the
/// session, but the three of the current transaction
/// (`transaction_isolation`, `_read_only`, `_deferrable`): `SET
/// TRANSACTION` leaves their source at `session` after the transaction,
/// and `RESET ALL` does not touch them, so they would carry one client's
/// transaction into the next client's session (found by review). Values come as hex of their bytes in the database's encoding
/// ([`hex_value`]): the client's `client_encoding` (BIG5, SJIS) cannot
/// change them on the way, and replaying them is pure ASCII. For a client
/// that set custom (dotted) settings, see
/// [`CustomSettings::capture_and_reset`].
pub const CAPTURE_AND_RESET: &str = concat!(
    "SELECT 'session_authorization', \
pg_catalog.encode(pg_catalog.convert_to(pg_catalog.current_setting('session_authorization'), \
pg_catalog.getdatabaseencoding()), 'hex') \
UNION ALL SELECT 'role', pg_catalog.encode(pg_catalog.convert_to(pg_catalog.current_setting('role'), \
pg_catalog.getdatabaseencoding()), 'hex') \
UNION ALL SELECT name, pg_catalog.encode(pg_catalog.convert_to(pg_catalog.current_setting(name), \
pg_catalog.getdatabaseencoding()), 'hex') FROM pg_catalog.pg_settings \
WHERE source OPERATOR(pg_catalog.=) 'session' AND name OPERATOR(pg_catalog.<>) 'role' \
AND name OPERATOR(pg_catalog.<>) 'session_authorization' \
AND name OPERATOR(pg_catalog.<>) 'transaction_isolation' \
AND name OPERATOR(pg_catalog.<>) 'transaction_read_only' \
AND name OPERATOR(pg_catalog.<>) 'transaction_deferrable'",
    "; SET SESSION AUTHORIZATION DEFAULT; RESET ROLE; RESET ALL"
);

/// Where [`CAPTURE_AND_RESET`]'s read-back ends and its reset begins.
const CAPTURE_END: usize = CAPTURE_AND_RESET.len() - RESET.len() - 2;

/// Most custom setting names followed per client; names beyond it are
/// not carried (docs/pooling.md lists the limit).
pub const MAX_CUSTOM_SETTINGS: usize = 64;

/// The custom settings (dotted names such as `myapp.tenant`) a client
/// may have set. PostgreSQL keeps such placeholders out of `pg_settings`,
/// so [`CAPTURE_AND_RESET`] cannot find them: their names are taken from
/// the client's `SET` statements and `set_config('…')` calls and read
/// back by name.
#[derive(Debug, Default, Clone)]
pub struct CustomSettings {
    names: Vec<String>,
}

impl CustomSettings {
    /// Notes the dotted setting names a statement sets (run only on
    /// statements judged to change settings).
    pub fn note(&mut self, sql: &[u8], dialect: crate::sql::Dialect) {
        crate::sql::verdict::custom_setting_names(sql, dialect, |name| self.add(name));
    }

    fn add(&mut self, name: String) {
        // Only names PostgreSQL accepts for a custom setting (identifier
        // parts of ASCII letters, digits, `_` and `$`, joined by dots): a
        // name is written into pgcell's own queries, and the client must
        // not be able to write into them.
        let part = |p: &str| {
            p.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
        };
        if !name.contains('.')
            || name.len() > 200
            || !name.split('.').all(part)
            || self.names.len() >= MAX_CUSTOM_SETTINGS
            || self.names.iter().any(|n| n.eq_ignore_ascii_case(&name))
        {
            return;
        }
        self.names.push(name);
    }

    /// The names noted so far.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// [`CAPTURE_AND_RESET`], also reading back the noted custom settings
    /// (those with a value on this backend: a name never set reads as
    /// NULL and yields no row).
    pub fn capture_and_reset(&self) -> std::borrow::Cow<'static, str> {
        if self.names.is_empty() {
            return CAPTURE_AND_RESET.into();
        }
        let values: Vec<String> = self
            .names
            .iter()
            .map(|n| format!("({})", quote(n)))
            .collect();
        format!(
            "{} UNION ALL SELECT c.n, pg_catalog.encode(pg_catalog.convert_to(\
pg_catalog.current_setting(c.n, true), pg_catalog.getdatabaseencoding()), 'hex') FROM (VALUES {}) AS c(n) \
WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_settings s \
WHERE pg_catalog.lower(s.name) OPERATOR(pg_catalog.=) pg_catalog.lower(c.n)){}",
            &CAPTURE_AND_RESET[..CAPTURE_END],
            values.join(", "),
            &CAPTURE_AND_RESET[CAPTURE_END..],
        )
        .into()
    }
}

/// Resets a backend to its login state (after a client whose session was
/// replayed on it changed nothing more).
pub const RESET: &str = "SET SESSION AUTHORIZATION DEFAULT; RESET ROLE; RESET ALL";

/// Turns the rows of [`CAPTURE_AND_RESET`] (and of [`STATE_CHECK`], when
/// it ran with it) into a client session and the kinds of session state
/// the backend holds; `user` is the user the backend logged in as. A
/// value that is not hex (never, from PostgreSQL) is left out.
pub fn captured(rows: Vec<(String, String)>, user: &str) -> (ClientSession, Vec<String>) {
    let mut held = Vec::new();
    let mut settings = Vec::new();
    for (name, value) in rows {
        if name == STATE_ROW {
            held.push(value);
            continue;
        }
        let Some(value) = hex_value(&value) else {
            continue;
        };
        let keep = match name.as_str() {
            "session_authorization" => value != user.as_bytes(),
            "role" => value != b"none",
            _ => true,
        };
        if keep {
            settings.push((name, value));
        }
    }
    (ClientSession { settings }, held)
}

/// The bytes of a value read back as hex.
fn hex_value(hex: &str) -> Option<Vec<u8>> {
    let digit = |b: u8| (b as char).to_digit(16);
    let bytes = hex.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks(2)
        .map(|pair| Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8))
        .collect()
}

/// The kinds of session state in rows of [`STATE_CHECK`].
pub fn held_state(rows: &[(String, String)]) -> Vec<String> {
    rows.iter()
        .filter(|(name, _)| name == STATE_ROW)
        .map(|(_, kind)| kind.clone())
        .collect()
}

/// Whether startup parameters set a `search_path` that names `pg_temp`
/// (as a parameter or in `options`): then a plain `CREATE TABLE` may make
/// a temporary table, and every checkin checks for one.
pub fn startup_searches_pg_temp(params: &[(String, String)]) -> bool {
    let names_pg_temp = |v: &str| v.to_ascii_lowercase().contains("pg_temp");
    params.iter().any(|(name, value)| match name.as_str() {
        "search_path" => names_pg_temp(value),
        "options" => crate::protocol::startup::option_settings(value)
            .iter()
            .any(|(n, v)| n == "search_path" && names_pg_temp(v)),
        _ => false,
    })
}

/// The session a client must see on every backend it gets, beyond its
/// startup values (which its backends log in with): the settings it
/// changed, as read back by [`CAPTURE_AND_RESET`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ClientSession {
    /// (name, value) in replay order; the value is its bytes in the
    /// database's encoding.
    pub settings: Vec<(String, Vec<u8>)>,
}

impl ClientSession {
    /// Whether its `search_path` names `pg_temp`: then a plain `CREATE
    /// TABLE` may create a temporary table, which no statement shows.
    pub fn searches_pg_temp(&self) -> bool {
        self.settings.iter().any(|(name, value)| {
            name == "search_path" && value.windows(7).any(|w| w.eq_ignore_ascii_case(b"pg_temp"))
        })
    }

    /// The value the client set for `name`, as read back.
    pub fn setting(&self, name: &str) -> Option<&[u8]> {
        self.settings
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Whether the client changed nothing (the common case: nothing to do
    /// on checkout).
    pub fn is_empty(&self) -> bool {
        self.settings.is_empty()
    }

    /// The statement that gives a freshly reset backend this session, or
    /// `None` when there is nothing to apply. Settings come first, while
    /// the backend still has its login user's privileges (a superuser's
    /// `session_replication_role`, say), then the session authorization
    /// and the role, which may drop them; [`Self::restore_query_role_first`]
    /// is the other order, for settings that need the role's privileges.
    pub fn restore_query(&self) -> Option<String> {
        self.restore(false)
    }

    /// [`Self::restore_query`] with the session authorization and the role
    /// first: tried when that one fails.
    pub fn restore_query_role_first(&self) -> Option<String> {
        self.restore(true)
    }

    fn restore(&self, identity_first: bool) -> Option<String> {
        if self.settings.is_empty() {
            return None;
        }
        let identity = |name: &str| name == "session_authorization" || name == "role";
        let mut ordered: Vec<&(String, Vec<u8>)> = self.settings.iter().collect();
        // Stable: within each group the read-back order stays (the session
        // authorization before the role).
        ordered.sort_by_key(|(name, _)| identity(name) != identity_first);
        let calls: Vec<String> = ordered
            .iter()
            .map(|(name, value)| {
                let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
                format!(
                    "pg_catalog.set_config({}, pg_catalog.convert_from(pg_catalog.decode('{hex}', 'hex'), \
pg_catalog.getdatabaseencoding()), false)",
                    quote(name),
                )
            })
            .collect();
        Some(format!("SELECT {}", calls.join(", ")))
    }
}

/// A string literal of `s` for pgcell's own queries: dollar-quoted, with a
/// tag `s` does not contain. No escape is read inside it whatever
/// `standard_conforming_strings` is, and `$` is never the second byte of
/// a character in any client encoding PostgreSQL has, so a value in the
/// client's encoding (BIG5, SJIS: where a backslash may be half of a
/// character) cannot end it early.
pub fn quote(s: &str) -> String {
    let mut n = 0u32;
    loop {
        let tag = if n == 0 {
            "$pgcell$".to_owned()
        } else {
            format!("$pgcell{n}$")
        };
        // The first occurrence of the tag after the opening one must be
        // the closing one.
        let body = format!("{s}{tag}");
        if body.find(&tag) == Some(s.len()) {
            return format!("{tag}{body}");
        }
        n += 1;
    }
}

pub use crate::protocol::messages::is_fatal;

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(p: &mut Position, sent: &[u8]) {
        for &t in sent {
            p.sent(t);
        }
    }

    fn verdict(sql: &str) -> crate::sql::Verdict {
        crate::sql::judge(sql.as_bytes(), crate::sql::Dialect::default())
    }

    #[test]
    fn quoted_values_end_where_they_end() {
        for value in [
            "",
            "a",
            "x$",
            "a$pgcell",
            "$pgcell$",
            "a$pgcell$b$pgcell1$",
            "\\'",
            "严\\'",
        ] {
            let q = quote(value);
            // What PostgreSQL's lexer reads: the tag, then up to its next
            // occurrence.
            let tag_end = q[1..].find('$').unwrap() + 2;
            let tag = &q[..tag_end];
            let rest = &q[tag_end..];
            let close = rest.find(tag).unwrap();
            assert_eq!(&rest[..close], value, "{q}");
            assert_eq!(close + tag.len(), rest.len(), "{q}");
        }
    }

    #[test]
    fn custom_names_are_only_what_postgresql_accepts() {
        let mut c = CustomSettings::default();
        let d = crate::sql::Dialect::default();
        c.note("SET \"严\\')) AS c(n) WHERE false --\".b = 1".as_bytes(), d);
        c.note(b"SET a.\"b c\" = 1; SET \"1x\".y = 1; SET a..b = 1", d);
        assert!(c.names().is_empty(), "{:?}", c.names());
        c.note(b"SET my_app.x$1 = 1", d);
        assert_eq!(c.names(), ["my_app.x$1"]);
    }

    #[test]
    fn checkin_outcomes() {
        let policy = CheckinPolicy::default();
        let mut c = Checkout::default();
        // Nothing changed: back as it is, nothing runs.
        assert!(c.checkin(policy).is_free());
        // A SET: read back and reset.
        c.executed(verdict("SET work_mem = '1MB'"), false);
        let out = c.checkin(policy);
        assert!(out.capture && out.close.is_none() && !out.check_state);
        assert!(c.checkin(policy).is_free(), "taken by the checkin");
        // The client's replayed settings: reset only.
        let replayed = CheckinPolicy {
            replayed: true,
            ..policy
        };
        let out = c.checkin(replayed);
        assert!(out.reset && !out.capture);
        assert_eq!(
            out.query(&CustomSettings::default()).as_deref(),
            Some(RESET)
        );
        // Something not understood: read back, check for state, and drop
        // the prepared statements (it may have dropped some of them).
        c.executed(verdict("frobnicate"), false);
        let out = c.checkin(policy);
        assert!(out.capture && out.check_state && out.forget_statements);
        let q = out.query(&CustomSettings::default()).unwrap();
        assert!(
            q.starts_with(STATE_CHECK) && q.ends_with(&format!("{RESET}; DEALLOCATE ALL")),
            "{q}"
        );
        // The client leaves after it: checked too (transaction mode).
        c.executed(verdict("DO $$ BEGIN NULL; END $$"), false);
        let out = c.finish(policy, false);
        assert!(out.check_state && out.forget_statements && out.reset);
        // State that cannot be carried: settings still read back, closed.
        assert_eq!(
            c.executed(verdict("SET ROLE r; LISTEN x"), false),
            Some(crate::sql::StateKind::Listen)
        );
        let out = c.checkin(policy);
        assert!(out.capture);
        assert_eq!(
            out.close,
            Some(CloseReason::SessionState(crate::sql::StateKind::Listen))
        );
        // A cancel closes it.
        let cancelled = CheckinPolicy {
            cancelled: true,
            ..policy
        };
        assert_eq!(c.checkin(cancelled).close, Some(CloseReason::Cancelled));
        // Pinning keeps it: never released while pinned.
        c.executed(verdict("LISTEN x"), true);
        assert!(c.pinned() && !c.may_release());
        assert_eq!(c.finish(policy, false).close, Some(CloseReason::Pinned));
        // A client gone mid-transaction: closed, nothing runs.
        c.attach();
        c.sent(b'Q');
        let out = c.finish(policy, false);
        assert_eq!(out.close, Some(CloseReason::ClientLeftMidTransaction));
        assert!(out.query(&CustomSettings::default()).is_none());
        // Leaving a session-mode backend resets it.
        c.attach();
        assert!(c.finish(policy, true).reset);
        // check_session_state and a search_path with pg_temp check.
        for p in [
            CheckinPolicy {
                check_session_state: true,
                ..policy
            },
            CheckinPolicy {
                searches_pg_temp: true,
                ..policy
            },
        ] {
            let out = c.checkin(p);
            assert!(out.check_state && !out.capture);
            assert_eq!(
                out.query(&CustomSettings::default()).as_deref(),
                Some(STATE_CHECK)
            );
        }
    }

    #[test]
    fn reset_position_is_a_new_one() {
        let mut p = Position::new();
        feed(&mut p, b"PBES");
        p.received(b'E', b"");
        p.reset();
        assert!(p.idle() && p.quiet() && !p.busy());
        assert_eq!(p.status(), b'I');
        feed(&mut p, b"Q");
        assert!(p.busy());
    }

    #[test]
    fn simple_query_round_trip() {
        let mut p = Position::new();
        feed(&mut p, b"Q");
        assert!(!p.idle());
        p.received(b'T', b"");
        p.received(b'C', b"");
        assert!(!p.idle());
        p.received(b'Z', b"I");
        assert!(p.idle());
    }

    #[test]
    fn a_flush_after_a_sync_keeps_nothing_open() {
        let mut p = Position::new();
        feed(&mut p, b"PBES");
        feed(&mut p, b"H");
        for tag in [b'1', b'2', b'C'] {
            p.received(tag, b"");
        }
        p.received(b'Z', b"I");
        assert!(p.idle(), "a bare Flush held the backend");
        feed(&mut p, b"H");
        assert!(p.idle());
    }

    #[test]
    fn a_query_after_flush_ends_the_sequence() {
        // Parse/Describe/Flush, then a simple Query: the Query's
        // ReadyForQuery 'I' leaves the backend free (issue: held forever).
        let mut p = Position::new();
        feed(&mut p, b"PDH");
        p.received(b'1', b"");
        p.received(b't', b"");
        p.received(b'T', b"");
        assert!(!p.idle(), "an open sequence holds the backend");
        feed(&mut p, b"Q");
        p.received(b'T', b"");
        p.received(b'C', b"");
        p.received(b'Z', b"I");
        assert!(p.idle());
    }

    #[test]
    fn a_query_sent_into_a_failed_pipeline_gets_no_reply() {
        let mut p = Position::new();
        feed(&mut p, b"PBE");
        feed(&mut p, b"Q");
        feed(&mut p, b"S");
        p.received(b'1', b"");
        p.received(b'2', b"");
        p.received(b'E', b"");
        assert!(!p.idle());
        // Only the Sync's ReadyForQuery comes: the Query was discarded.
        assert!(p.busy());
        p.received(b'Z', b"I");
        assert!(p.idle());
    }

    #[test]
    fn a_query_sent_after_the_error_arrived_is_skipped_too() {
        let mut p = Position::new();
        feed(&mut p, b"PBE");
        p.received(b'E', b"");
        p.sent(b'Q');
        assert!(
            !p.busy(),
            "a Query sent into a failed pipeline owes nothing"
        );
        p.sent(b'S');
        p.received(b'Z', b"I");
        assert!(p.idle());
    }

    #[test]
    fn an_error_in_a_query_after_a_finished_sequence_skips_nothing() {
        let mut p = Position::new();
        feed(&mut p, b"PD");
        feed(&mut p, b"Q");
        feed(&mut p, b"S");
        p.received(b'1', b"");
        p.received(b'n', b"");
        assert!(p.received(b'E', b"").skipped.is_empty());
        p.received(b'Z', b"I");
        assert!(!p.idle(), "the Sync's ReadyForQuery is still due");
        p.received(b'Z', b"I");
        assert!(p.idle());
    }

    #[test]
    fn replies_settle_the_statements_their_messages_carry() {
        let parse = |name: &str, injected: bool| Owed {
            injected,
            creates: Some(name.into()),
            ..Owed::default()
        };
        let mut p = Position::new();
        // An injected Parse, the client's Bind, Execute; a second Parse
        // and Sync.
        p.sent_owing(b'P', parse("pgcell_1", true));
        feed(&mut p, b"BE");
        p.sent_owing(b'P', parse("pgcell_2", false));
        feed(&mut p, b"S");
        let first = p.received(b'1', b"");
        assert_eq!(first.answered, Some(parse("pgcell_1", true)));
        assert_eq!(p.received(b'2', b"").answered, Some(Owed::default()));
        // The Execute fails: the second Parse is skipped, Bind/Execute
        // plain messages are not reported.
        let error = p.received(b'E', b"");
        assert_eq!(error.skipped, vec![parse("pgcell_2", false)]);
        assert!(p.received(b'Z', b"I").skipped.is_empty());
        assert!(p.idle());
        // Skipped because the Sync came first (the backend was skipping).
        feed(&mut p, b"BE");
        p.received(b'E', b"");
        p.sent_owing(b'P', parse("pgcell_3", true));
        feed(&mut p, b"S");
        assert_eq!(
            p.received(b'Z', b"I").skipped,
            vec![parse("pgcell_3", true)]
        );
        assert!(p.idle());
    }

    #[test]
    fn transaction_block_keeps_the_backend() {
        let mut p = Position::new();
        feed(&mut p, b"Q");
        p.received(b'C', b"");
        p.received(b'Z', b"T");
        assert!(p.quiet() && !p.idle());
        feed(&mut p, b"Q");
        p.received(b'E', b"");
        p.received(b'Z', b"E");
        assert!(!p.idle());
        feed(&mut p, b"Q");
        p.received(b'C', b"");
        p.received(b'Z', b"I");
        assert!(p.idle());
    }

    #[test]
    fn copy_in_over_the_extended_protocol_ignores_early_syncs() {
        let mut p = Position::new();
        feed(&mut p, b"PBES");
        p.received(b'1', b"");
        p.received(b'2', b"");
        p.received(b'G', b"");
        // Only the Execute is owed: the Sync before the copy draws no reply.
        assert_eq!(p.replies, [Unit::Extended(Owed::default())]);
        feed(&mut p, b"dd");
        p.sent(b'S');
        assert_eq!(p.replies.len(), 1, "a Sync in copy mode draws no reply");
        p.sent(b'c');
        p.received(b'C', b"");
        assert!(!p.quiet(), "the sequence waits for its Sync");
        feed(&mut p, b"S");
        p.received(b'Z', b"I");
        assert!(p.idle());
    }

    #[test]
    fn custom_setting_names_from_statements() {
        let mut c = CustomSettings::default();
        let d = crate::sql::Dialect::default();
        c.note(
            b"SET myapp.tenant = 'a'; set Session App.\"User Id\" TO 1",
            d,
        );
        c.note(
            b"SELECT pg_catalog.set_config( 'x.y', $1, false), set_config('plain', 'v', false)",
            d,
        );
        c.note(
            b"SET search_path = a; SET LOCAL l.m = 1; SET MYAPP.TENANT = 'b'",
            d,
        );
        c.note(
            b"select set_config(E'e.f', '1', false), set_config('g''h.i', '1', false)",
            d,
        );
        assert_eq!(c.names(), ["myapp.tenant", "x.y", "e.f"]);
        for i in 0..2 * MAX_CUSTOM_SETTINGS {
            c.note(format!("SET n{i}.x = 1").as_bytes(), d);
        }
        assert_eq!(c.names().len(), MAX_CUSTOM_SETTINGS);
    }

    #[test]
    fn capture_query_reads_custom_settings_before_the_reset() {
        assert!(CAPTURE_AND_RESET[CAPTURE_END..].starts_with("; SET SESSION"));
        let mut c = CustomSettings::default();
        assert_eq!(c.capture_and_reset(), CAPTURE_AND_RESET);
        c.note(b"SET a.b = 1", crate::sql::Dialect::default());
        let q = c.capture_and_reset();
        assert!(q.contains("(VALUES ($pgcell$a.b$pgcell$))"), "{q}");
        assert!(
            q.contains("current_setting(c.n, true), pg_catalog.getdatabaseencoding()), 'hex')"),
            "{q}"
        );
        assert!(q.ends_with(RESET), "{q}");
    }

    #[test]
    fn fatal_errors() {
        assert!(is_fatal(b"SFATAL\0VFATAL\0C57P01\0Mterminating\0\0"));
        assert!(!is_fatal(b"SERROR\0VERROR\0C42601\0Mx\0\0"));
        assert!(!is_fatal(b"SFATAL"));
        assert!(!is_fatal(b""));
    }

    #[test]
    fn restore_query_quotes() {
        let s = ClientSession {
            settings: vec![("search_path".into(), "a, 'b'".into())],
        };
        assert_eq!(
            s.restore_query().as_deref(),
            Some(
                "SELECT pg_catalog.set_config($pgcell$search_path$pgcell$, pg_catalog.convert_from(\
pg_catalog.decode('612c20276227', 'hex'), pg_catalog.getdatabaseencoding()), false)"
            )
        );
        assert_eq!(ClientSession::default().restore_query(), None);
    }

    #[test]
    fn replay_sets_settings_before_the_identity_that_may_drop_privileges() {
        let hx = |v: &str| v.bytes().map(|b| format!("{b:02x}")).collect::<String>();
        let (s, held) = captured(
            vec![
                ("session_authorization".into(), hx("other")),
                ("role".into(), hx("r1")),
                ("session_replication_role".into(), hx("replica")),
                ("work_mem".into(), hx("5MB")),
                ("pgcell:state".into(), "listen".into()),
                ("broken".into(), "zz".into()),
            ],
            "app",
        );
        assert_eq!(s.settings.len(), 4, "{s:?}");
        assert_eq!(s.settings[3], ("work_mem".into(), b"5MB".to_vec()));
        assert_eq!(held, ["listen"]);
        let q = s.restore_query().unwrap();
        let at = |needle: &str| q.find(needle).unwrap();
        assert!(
            at("session_replication_role") < at("$session_authorization$"),
            "{q}"
        );
        assert!(at("work_mem") < at("$role$"), "{q}");
        assert!(at("$session_authorization$") < at("$role$"), "{q}");
        let q = s.restore_query_role_first().unwrap();
        assert!(
            q.find("$role$").unwrap() < q.find("work_mem").unwrap(),
            "{q}"
        );
        // The login user and no role are not replayed.
        let (s, _) = captured(
            vec![
                ("session_authorization".into(), hx("app")),
                ("role".into(), hx("none")),
            ],
            "app",
        );
        assert!(s.is_empty());
    }
}
