//! Protocol-level prepared statements in transaction mode.
//!
//! A client's named statements would live on one backend only, and the
//! next transaction may run on another. pgcell therefore gives every named
//! `Parse` a process-unique name (`pgcell_<n>`), remembers the client's
//! statements, and before a `Bind` or `Describe` on a backend that lacks
//! the statement it sends that `Parse` first and swallows its
//! `ParseComplete`. Each backend keeps a bounded, least-recently-used set
//! of the statements it holds; evicting one sends a `Close` whose
//! `CloseComplete` is swallowed too. Unnamed statements pass through.
//!
//! Spec: <https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-EXT-QUERY>

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::backend::statements::BackendStatements;
use crate::protocol::framing::Message;
use crate::protocol::messages;
use crate::sql::lexer::{identifier, Dialect, Item, Splitter, Token};
use crate::sql::Verdict;

use super::engine::{Checkout, Owed, Received};

/// Statements one client may hold.
pub(crate) const MAX_PREPARED_PER_CLIENT: usize = 10_000;

static NEXT_STATEMENT: AtomicU64 = AtomicU64::new(1);

/// The prefix of the names pgcell gives statements on backends.
const PGCELL_PREFIX: &str = "pgcell_";
/// A name in pgcell's namespace that pgcell never creates.
const NEVER_CREATED: &[u8] = b"pgcell_unknown";

/// For a statement name this client never prepared: when it lies in
/// pgcell's namespace, the name to send instead, so that a client cannot
/// bind, describe or close a statement pgcell made for another client on a
/// shared backend. The backend then answers `26000` as PostgreSQL would
/// for any unknown name.
fn foreign(name: &[u8]) -> Option<&'static [u8]> {
    name.starts_with(PGCELL_PREFIX.as_bytes())
        .then_some(NEVER_CREATED)
}

/// What replaces a `Query` or `Parse` whose SQL names a statement in
/// pgcell's namespace (`EXECUTE pgcell_3`): SQL the backend refuses with
/// `26000`, in the same place of the protocol (inside a transaction block
/// it fails the transaction, as the original would).
pub(crate) fn refuse_foreign(msg: &Message) -> Message {
    const REFUSED: &[u8] = b"DEALLOCATE pgcell_unknown\0";
    let body = match msg.tag {
        b'P' => {
            // Keep the statement name and say no parameter types.
            let name_end = msg.body.iter().position(|&b| b == 0).unwrap_or(0);
            [&msg.body[..name_end], b"\0", REFUSED, b"\0\0"].concat()
        }
        _ => REFUSED.to_vec(),
    };
    Message {
        tag: msg.tag,
        body: Bytes::from(body),
    }
}

/// A client statement: its pgcell name and the `Parse` body that creates
/// it under that name.
#[derive(Debug, Clone)]
struct Statement {
    /// Shared, so that each `Bind` takes it without an allocation.
    global: Arc<str>,
    parse: Bytes,
    /// What executing it may do to the session, judged once from its
    /// text when it was parsed.
    verdict: Verdict,
    /// When it was parsed (this client's [`ClientStatements::clock`]).
    created: u64,
}

/// One client's statements.
#[derive(Debug, Default)]
pub struct ClientStatements {
    statements: HashMap<String, Statement>,
    /// The client's last unnamed `Parse`: drivers (asyncpg without a
    /// statement cache) parse in one transaction-mode round trip and bind
    /// in the next, which may run on another backend.
    last_unnamed: Option<(Bytes, Verdict)>,
    /// Whether `last_unnamed` was sent to the current backend.
    unnamed_here: bool,
    /// Counts this client's named `Parse`s.
    clock: u64,
    /// The clock when each `DEALLOCATE ALL` / `DISCARD ALL` not yet
    /// answered was sent.
    drops_sent: VecDeque<u64>,
    /// Changes to the client's statements made by a `Parse` or `Close`
    /// still in flight, by ticket ([`Owed::ticket`]): undone if the
    /// backend skips or fails the message, as PostgreSQL would not have
    /// made them.
    pending: HashMap<u64, Undo>,
    /// Numbers the tickets.
    tickets: u64,
    /// Statements forgotten lately (pgcell name, client name): an error
    /// about one may still be on its way.
    forgotten: VecDeque<(Arc<str>, String)>,
}

/// Forgotten statements remembered for error messages.
const FORGOTTEN: usize = 64;

/// How to take back a change to the client's statements.
#[derive(Debug)]
enum Undo {
    /// A named `Parse` added `name` (as pgcell statement `global`).
    Parsed { name: String, global: Arc<str> },
    /// A `Close` removed `name`.
    /// `on_backend`: the backend held it when the `Close` went out.
    Closed {
        name: String,
        statement: Statement,
        on_backend: bool,
    },
    /// An unnamed `Parse` replaced the client's unnamed statement.
    ParsedUnnamed { previous: Option<(Bytes, Verdict)> },
}

impl From<PreparedError> for super::error::SessionError {
    fn from(e: PreparedError) -> Self {
        match e {
            PreparedError::Malformed(what) => super::error::SessionError::ClientProtocol(format!(
                "invalid frontend message: malformed {what} message"
            )),
            PreparedError::TooMany => {
                super::error::SessionError::StatementLimit(MAX_PREPARED_PER_CLIENT)
            }
        }
    }
}

/// Why a client message was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PreparedError {
    /// A message too short for its format.
    Malformed(&'static str),
    /// More statements than [`MAX_PREPARED_PER_CLIENT`].
    TooMany,
}

/// Writes one message for the backend and notes it in the lease's one
/// queue of replies owed ([`Checkout::sent_owing`]).
fn send(out: &mut BytesMut, checkout: &mut Checkout, tag: u8, parts: &[&[u8]], owed: Owed) -> bool {
    messages::tagged_parts(out, tag, parts);
    checkout.sent_owing(tag, owed)
}

impl ClientStatements {
    /// Appends `msg` to `out` for `backend`, rewriting statement names and
    /// injecting what the backend lacks, and notes every message written
    /// in `checkout`'s reply queue (with what it does to pgcell's
    /// statements). `judged` is the verdict of the message's own SQL text
    /// (a `Query`'s or a `Parse`'s); the return is what the message
    /// executes: a `Query`'s text, or for a `Bind` the verdict stored with
    /// the statement it binds (judged when that was parsed, in whatever
    /// earlier transaction).
    pub fn forward(
        &mut self,
        msg: &Message,
        judged: Verdict,
        backend: &mut BackendStatements,
        checkout: &mut Checkout,
        out: &mut BytesMut,
    ) -> Result<Verdict, PreparedError> {
        let mut executes = Verdict::default();
        let plain = Owed::default;
        match msg.tag {
            b'P' => self.parse(msg, judged, backend, checkout, out)?,
            b'B' => {
                let (portal, rest) =
                    split_cstr(&msg.body).ok_or(PreparedError::Malformed("Bind"))?;
                let (name, tail) = split_cstr(rest).ok_or(PreparedError::Malformed("Bind"))?;
                let name = as_postgres_keeps(name);
                executes = self.verdict_of(name);
                if executes.drops_statements {
                    backend.drop_sent();
                    self.drops_sent.push_back(self.clock);
                }
                let global = self.ensure(name, backend, checkout, out);
                let sent_name = match &global {
                    Some(global) => global.as_bytes(),
                    // Never another client's statement on this backend.
                    None => foreign(name).unwrap_or(name),
                };
                send(
                    out,
                    checkout,
                    b'B',
                    &[portal, b"\0", sent_name, b"\0", tail],
                    plain(),
                );
            }
            b'D' | b'C' if msg.body.first() == Some(&b'S') => {
                let (name, _) =
                    split_cstr(&msg.body[1..]).ok_or(PreparedError::Malformed("Describe/Close"))?;
                let name = as_postgres_keeps(name);
                if msg.tag == b'C' && !name.is_empty() {
                    // pgcell names are never shared, so the statement is
                    // closed on this backend and forgotten (a backend
                    // without it answers CloseComplete all the same).
                    let client_name = String::from_utf8_lossy(name).into_owned();
                    let Some(statement) = self.statements.remove(&client_name) else {
                        let sent_name = foreign(name).unwrap_or(name);
                        send(out, checkout, b'C', &[b"S", sent_name, b"\0"], plain());
                        return Ok(executes);
                    };
                    let on_backend = backend.contains(&statement.global);
                    backend.remove(&statement.global);
                    let global = statement.global.clone();
                    let ticket = self.ticket(Undo::Closed {
                        name: client_name,
                        statement,
                        on_backend,
                    });
                    let owed = Owed {
                        ticket: Some(ticket),
                        ..Owed::default()
                    };
                    send(out, checkout, b'C', &[b"S", global.as_bytes(), b"\0"], owed);
                    return Ok(executes);
                }
                if msg.tag == b'C' {
                    // The unnamed statement: closed wherever it is.
                    let previous = self.last_unnamed.take();
                    self.unnamed_here = true;
                    let ticket = self.ticket(Undo::ParsedUnnamed { previous });
                    let owed = Owed {
                        ticket: Some(ticket),
                        ..Owed::default()
                    };
                    send(out, checkout, b'C', &[b"S\0"], owed);
                    return Ok(executes);
                }
                let global = self.ensure(name, backend, checkout, out);
                let sent_name = match &global {
                    Some(global) => global.as_bytes(),
                    None => foreign(name).unwrap_or(name),
                };
                send(out, checkout, msg.tag, &[b"S", sent_name, b"\0"], plain());
            }
            b'Q' => {
                if judged.drops_statements {
                    backend.drop_sent();
                    self.drops_sent.push_back(self.clock);
                }
                executes = judged;
                if self.deallocate_on_backend(msg, backend, checkout, out) {
                    return Ok(executes);
                }
                // A simple Query replaces the unnamed statement: a later
                // Bind of it fails, as on a direct connection (unless the
                // backend discards the Query unanswered, in a failed
                // pipeline: then the statement stays).
                let owed = match self.last_unnamed.take() {
                    Some(previous) => Owed {
                        ticket: Some(self.ticket(Undo::ParsedUnnamed {
                            previous: Some(previous),
                        })),
                        ..Owed::default()
                    },
                    None => plain(),
                };
                let ticket = owed.ticket;
                if !send(out, checkout, b'Q', &[&msg.body], owed) {
                    if let Some(undo) = ticket.and_then(|t| self.pending.remove(&t)) {
                        self.undo(undo, backend);
                    }
                }
            }
            b'F' => {
                executes = judged;
                send(out, checkout, b'F', &[&msg.body], plain());
            }
            tag => {
                send(out, checkout, tag, &[&msg.body], plain());
            }
        }
        Ok(executes)
    }

    /// A lone `DEALLOCATE name` of one of the client's statements that
    /// reaches the backend (pipelined behind other messages, or inside a
    /// transaction: [`ClientStatements::answer_locally`] answers it
    /// otherwise) is sent as `DEALLOCATE` of its pgcell name, the
    /// statement prepared there first if the backend lacks it: the client
    /// gets PostgreSQL's own answer in its place in the pipeline, and the
    /// statement is forgotten unless that answer is an error. False when
    /// `msg` is something else.
    fn deallocate_on_backend(
        &mut self,
        msg: &Message,
        backend: &mut BackendStatements,
        checkout: &mut Checkout,
        out: &mut BytesMut,
    ) -> bool {
        let Some(Drop::Deallocate(name)) = drop_of(&msg.body, Dialect::default()) else {
            return false;
        };
        if !self.statements.contains_key(&name) {
            return false;
        }
        // A Query replaces the unnamed statement; this one is rarely
        // skipped, and then the client's unnamed statement is re-created
        // before its next use.
        self.last_unnamed = None;
        let Some(global) = self.ensure(name.as_bytes(), backend, checkout, out) else {
            return false;
        };
        let Some(statement) = self.statements.remove(&name) else {
            return false;
        };
        backend.remove(&global);
        // Prepared there by `ensure` just now if it was not.
        let ticket = self.ticket(Undo::Closed {
            name,
            statement,
            on_backend: true,
        });
        let owed = Owed {
            ticket: Some(ticket),
            ..Owed::default()
        };
        let sql = format!("DEALLOCATE {global}\0");
        if !send(out, checkout, b'Q', &[sql.as_bytes()], owed) {
            // Discarded unanswered (a failed pipeline): nothing happened.
            if let Some(undo) = self.pending.remove(&ticket) {
                self.undo(undo, backend);
            }
        }
        true
    }

    /// The verdict stored with client statement `name` (empty: the
    /// unnamed one); nothing for a name the client never prepared (the
    /// backend refuses the `Bind`).
    fn verdict_of(&self, name: &[u8]) -> Verdict {
        if name.is_empty() {
            return self.last_unnamed.as_ref().map(|u| u.1).unwrap_or_default();
        }
        std::str::from_utf8(name)
            .ok()
            .and_then(|n| self.statements.get(n))
            .map(|s| s.verdict)
            .unwrap_or_default()
    }

    fn parse(
        &mut self,
        msg: &Message,
        judged: Verdict,
        backend: &mut BackendStatements,
        checkout: &mut Checkout,
        out: &mut BytesMut,
    ) -> Result<(), PreparedError> {
        let (name, rest) = split_cstr(&msg.body).ok_or(PreparedError::Malformed("Parse"))?;
        let name = as_postgres_keeps(name);
        if name.is_empty() {
            let previous = self.last_unnamed.replace((msg.body.clone(), judged));
            self.unnamed_here = true;
            let ticket = self.ticket(Undo::ParsedUnnamed { previous });
            let owed = Owed {
                ticket: Some(ticket),
                ..Owed::default()
            };
            send(out, checkout, b'P', &[&msg.body], owed);
            return Ok(());
        }
        let name = String::from_utf8_lossy(name).into_owned();
        if !self.statements.contains_key(&name) && self.statements.len() >= MAX_PREPARED_PER_CLIENT
        {
            return Err(PreparedError::TooMany);
        }
        let global = format!(
            "{PGCELL_PREFIX}{}",
            NEXT_STATEMENT.fetch_add(1, Ordering::Relaxed)
        );
        let mut body = BytesMut::with_capacity(msg.body.len() + 16);
        put_cstr(&mut body, global.as_bytes());
        body.put_slice(rest);
        let parse = body.freeze();
        self.clock += 1;
        self.make_room(backend, global.clone(), checkout, out);
        let shared: Arc<str> = global.as_str().into();
        let ticket = self.ticket(Undo::Parsed {
            name: name.clone(),
            global: shared.clone(),
        });
        send(
            out,
            checkout,
            b'P',
            &[&parse],
            Owed {
                creates: Some(global),
                ticket: Some(ticket),
                ..Owed::default()
            },
        );
        self.statements.insert(
            name,
            Statement {
                global: shared,
                parse,
                verdict: judged,
                created: self.clock,
            },
        );
        Ok(())
    }

    /// The pgcell name for client statement `name`, prepared on `backend`
    /// first when it lacks it. `None` for the unnamed statement and for
    /// names the client never prepared (the backend then reports the
    /// error itself).
    fn ensure(
        &mut self,
        name: &[u8],
        backend: &mut BackendStatements,
        checkout: &mut Checkout,
        out: &mut BytesMut,
    ) -> Option<Arc<str>> {
        if name.is_empty() {
            // Another client's unnamed statement may sit on this backend:
            // re-create the client's own first.
            // A client without one must not reach another client's: the
            // backend's is closed first, so it answers 26000 as PostgreSQL
            // would (found by an adversarial review).
            if !self.unnamed_here {
                let owed = Owed {
                    injected: true,
                    unnamed: true,
                    ..Owed::default()
                };
                match &self.last_unnamed {
                    Some((parse, _)) => send(out, checkout, b'P', &[parse], owed),
                    None => send(out, checkout, b'C', &[b"S\0"], owed),
                };
                self.unnamed_here = true;
            }
            return None;
        }
        let statement = self
            .statements
            .get(&*String::from_utf8_lossy(name))?
            .clone();
        if backend.contains(&statement.global) {
            backend.touch(&statement.global);
        } else {
            self.make_room(backend, statement.global.to_string(), checkout, out);
            let owed = Owed {
                injected: true,
                creates: Some(statement.global.to_string()),
                ..Owed::default()
            };
            send(out, checkout, b'P', &[&statement.parse], owed);
        }
        Some(statement.global)
    }

    fn make_room(
        &mut self,
        backend: &mut BackendStatements,
        global: String,
        checkout: &mut Checkout,
        out: &mut BytesMut,
    ) {
        for evicted in backend.insert(global) {
            let body = [b"S", evicted.as_bytes(), b"\0"].concat();
            let owed = Owed {
                injected: true,
                evicts: Some(evicted),
                ..Owed::default()
            };
            send(out, checkout, b'C', &[&body], owed);
        }
    }

    /// Settles what a backend message showed about the statements
    /// ([`Checkout::received`]): messages the backend skipped did not
    /// happen (a `Parse` created nothing, an eviction closed nothing).
    /// False when the client must not see the message (the reply to one
    /// pgcell sent on its own).
    pub fn replied(&mut self, received: Received, backend: &mut BackendStatements) -> bool {
        if let Some(ticket) = received.answered.as_ref().and_then(|o| o.ticket) {
            // Done as sent.
            self.pending.remove(&ticket);
        }
        // Latest change first: the skipped messages came after the one
        // that failed (a failed Parse, then a skipped DEALLOCATE of it,
        // leaves no statement: found by review).
        for owed in received.skipped.iter().rev() {
            if let Some(undo) = owed.ticket.and_then(|t| self.pending.remove(&t)) {
                self.undo(undo, backend);
            }
        }
        if let Some(owed) = received.failed {
            if let Some(undo) = owed.ticket.and_then(|t| self.pending.remove(&t)) {
                self.undo_failed(undo, backend);
            }
            if let Some(name) = owed.creates {
                backend.remove(&name);
            }
            if let Some(name) = owed.evicts {
                backend.restore(name);
            }
            if owed.unnamed {
                self.unnamed_here = false;
            }
        }
        for owed in received.skipped {
            if let Some(name) = owed.creates {
                backend.remove(&name);
            }
            if let Some(name) = owed.evicts {
                backend.restore(name);
            }
            if owed.unnamed {
                // Re-created again before the next Bind of it.
                self.unnamed_here = false;
            }
        }
        !received.answered.is_some_and(|o| o.injected)
    }

    /// An ErrorResponse that names one of this client's statements by its
    /// pgcell name (`prepared statement "pgcell_7" already exists`),
    /// rewritten to name it as the client does; `None` when it names none.
    pub fn client_error(&self, body: &[u8]) -> Option<Vec<u8>> {
        let prefix = PGCELL_PREFIX.as_bytes();
        if !body.windows(prefix.len()).any(|w| w == prefix) {
            return None;
        }
        // Errors about prepared statements only: another error may quote
        // the same text as data (`select 'pgcell_7'::int`).
        let code = crate::protocol::messages::error_field(body, b'C');
        if !matches!(code, Some(b"26000" | b"42P05")) {
            return None;
        }
        let client_name = |global: &[u8]| {
            self.statements
                .iter()
                .find(|(_, s)| s.global.as_bytes() == global)
                .map(|(name, _)| name.as_str())
                .or_else(|| {
                    self.forgotten
                        .iter()
                        .find(|(g, _)| g.as_bytes() == global)
                        .map(|(_, name)| name.as_str())
                })
        };
        let mut out = Vec::with_capacity(body.len());
        let mut changed = false;
        let mut at = 0;
        while at < body.len() {
            let rest = &body[at..];
            if rest.starts_with(prefix) {
                let digits = rest[prefix.len()..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                let global = &rest[..prefix.len() + digits];
                if let Some(name) = (digits > 0).then(|| client_name(global)).flatten() {
                    out.extend_from_slice(name.as_bytes());
                    at += global.len();
                    changed = true;
                    continue;
                }
            }
            out.push(body[at]);
            at += 1;
        }
        changed.then_some(out)
    }

    /// Keeps `undo` until the message it belongs to is answered.
    fn ticket(&mut self, undo: Undo) -> u64 {
        self.tickets += 1;
        self.pending.insert(self.tickets, undo);
        self.tickets
    }

    /// The backend skipped or failed a client's `Parse` or `Close`: the
    /// client's statements are as before it.
    fn undo(&mut self, undo: Undo, backend: &mut BackendStatements) {
        match undo {
            Undo::Parsed { name, global } => {
                if self
                    .statements
                    .get(&name)
                    .is_some_and(|s| s.global == global)
                {
                    self.statements.remove(&name);
                }
                if self.forgotten.len() >= FORGOTTEN {
                    self.forgotten.pop_front();
                }
                self.forgotten.push_back((global, name));
            }
            Undo::Closed {
                name,
                statement,
                on_backend,
            } => {
                // Still on the backend too, if it was there (a backend
                // that never had it answers a Close all the same: found
                // by the fuzz target).
                if on_backend {
                    backend.restore(statement.global.to_string());
                }
                self.statements.entry(name).or_insert(statement);
            }
            Undo::ParsedUnnamed { previous } => {
                self.last_unnamed = previous;
                // Whatever the backend holds now, re-create it before use.
                self.unnamed_here = false;
            }
        }
    }

    /// The backend failed a client's `Parse`, `Close` or rewritten
    /// `DEALLOCATE`: as [`ClientStatements::undo`], except that a failed
    /// `Parse` of the unnamed statement leaves none (PostgreSQL drops the
    /// old one first).
    fn undo_failed(&mut self, undo: Undo, backend: &mut BackendStatements) {
        match undo {
            Undo::ParsedUnnamed { .. } => {
                self.last_unnamed = None;
                // The backend holds none either.
                self.unnamed_here = true;
            }
            other => self.undo(other, backend),
        }
    }

    /// Answers, without a backend, the SQL that would otherwise wipe other
    /// clients' statements off a shared backend: `DEALLOCATE ALL` and
    /// `DISCARD ALL` forget this client's statements, `DEALLOCATE name`
    /// forgets one of them. Returns the command tag to reply with, or
    /// `None` when the query is something else (forward it). `status` is
    /// the transaction status: in a failed transaction (`E`) nothing is
    /// answered here (the backend refuses the statement, `25P02`, and
    /// nothing is forgotten); `DISCARD ALL` inside a transaction block is
    /// left to the backend, which refuses it.
    pub fn answer_locally(
        &mut self,
        query: &[u8],
        status: u8,
        dialect: Dialect,
    ) -> Option<&'static str> {
        if status == b'E' {
            return None;
        }
        let in_transaction = status != b'I';
        match drop_of(query, dialect)? {
            Drop::DiscardAll => {
                // Runs on the backend (its ParameterStatus messages and
                // its reset are what the client must see); the client's
                // statements go with it. Inside a transaction block the
                // backend refuses it and nothing is forgotten.
                if !in_transaction {
                    self.dropped_all();
                }
                None
            }
            Drop::DeallocateAll => {
                self.dropped_all();
                // Inside a transaction block the backend may hold SQL-level
                // statements of this client: it runs there too (the
                // statements pgcell made there are dropped with them and
                // made again when needed).
                (!in_transaction).then_some("DEALLOCATE ALL")
            }
            Drop::Deallocate(name) => self.statements.remove(&name).map(|_| "DEALLOCATE"),
        }
    }

    /// A `DEALLOCATE ALL` or `DISCARD ALL` of this client's ran: its
    /// statements are gone, as on a direct connection.
    pub fn dropped_all(&mut self) {
        self.statements.clear();
    }

    /// The backend answered a `DEALLOCATE ALL` or `DISCARD ALL` the client
    /// sent (in a Query of several statements, or as a prepared
    /// statement): the client's statements parsed before it went out are
    /// gone; those a pipeline parsed after it stay.
    pub fn drop_answered(&mut self) {
        match self.drops_sent.pop_front() {
            Some(sent) => self.statements.retain(|_, s| s.created > sent),
            None => self.statements.clear(),
        }
    }

    /// Nothing is outstanding on the backend: a drop sent and not answered
    /// failed, and must not be paired with a later answer.
    pub fn settle_drops(&mut self) {
        self.drops_sent.clear();
    }

    /// The client got another backend (a new transaction-mode checkout).
    pub fn new_backend(&mut self) {
        self.drops_sent.clear();
        self.unnamed_here = false;
        // Nothing is in flight between checkouts.
        self.pending.clear();
    }
}

/// A simple `Query` that drops prepared statements, read as PostgreSQL
/// reads it: one statement, nothing else.
#[derive(Debug, PartialEq, Eq)]
enum Drop {
    DiscardAll,
    DeallocateAll,
    Deallocate(String),
}

/// What `query` drops, if it is a lone `DISCARD ALL`, `DEALLOCATE
/// [PREPARE] ALL` or `DEALLOCATE [PREPARE] name`.
fn drop_of(query: &[u8], dialect: Dialect) -> Option<Drop> {
    // Every simple query passes here: decide on the first word, in place,
    // before reading further.
    let start = query.iter().position(|b| !b.is_ascii_whitespace())?;
    let first = &query[start..];
    if !(starts_with_ignore_case(first, b"deallocate") || starts_with_ignore_case(first, b"discard"))
        || dialect.unsafe_encoding
        // Read one way here, maybe another by the backend.
        || query.contains(&b'\\')
    {
        return None;
    }
    let mut tokens = Vec::new();
    for item in Splitter::new(query, dialect) {
        match item {
            Item::End(_) | Item::Inner => tokens.push(None),
            Item::Token(t) => tokens.push(Some(t)),
        }
        if tokens.len() > 5 {
            return None;
        }
    }
    // One statement, ended by the end of the text or a `;`.
    let tokens: Vec<Token<'_>> = match tokens.split_last() {
        Some((None, rest)) if rest.iter().all(Option::is_some) => {
            rest.iter().flatten().copied().collect()
        }
        _ => return None,
    };
    let word = |i: usize, k: &str| matches!(tokens.get(i), Some(Token::Word(w)) if w.eq_ignore_ascii_case(k.as_bytes()));
    if word(0, "discard") && word(1, "all") && tokens.len() == 2 {
        return Some(Drop::DiscardAll);
    }
    if !word(0, "deallocate") {
        return None;
    }
    let at = if word(1, "prepare") { 2 } else { 1 };
    if tokens.len() != at + 1 {
        return None;
    }
    if word(at, "all") {
        return Some(Drop::DeallocateAll);
    }
    identifier(tokens[at]).map(|mut name| {
        // The SQL lexer truncates identifiers to 63 bytes, at a character
        // boundary.
        let mut cut = name.len().min(NAMEDATALEN - 1);
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
        Drop::Deallocate(name)
    })
}

/// An ErrorResponse `26000` that names a statement in pgcell's namespace:
/// the backend does not hold it (a function dropped it behind pgcell's
/// back, with `DEALLOCATE` in dynamic SQL). pgcell forgets it there, so the
/// next use prepares it again: one statement fails, not every later one.
pub(crate) fn note_missing(body: &[u8], backend: &mut BackendStatements) {
    if crate::protocol::messages::error_field(body, b'C') != Some(b"26000") {
        return;
    }
    let Some(message) = crate::protocol::messages::error_field(body, b'M') else {
        return;
    };
    if let Some(name) = quoted_pgcell_name(message) {
        backend.remove(&name);
    }
}

/// An ErrorResponse `42P05` for a statement in pgcell's namespace: the
/// backend holds it though pgcell thought not (a fake `26000` misled it):
/// it is known there again, so one statement fails, not every later one.
pub(crate) fn note_exists(body: &[u8], backend: &mut BackendStatements) {
    if crate::protocol::messages::error_field(body, b'C') != Some(b"42P05") {
        return;
    }
    let Some(message) = crate::protocol::messages::error_field(body, b'M') else {
        return;
    };
    if let Some(name) = quoted_pgcell_name(message) {
        if !backend.contains(&name) {
            backend.restore(name);
        }
    }
}

/// The one `"pgcell_<n>"`, in double quotes, that `message` names.
fn quoted_pgcell_name(message: &[u8]) -> Option<String> {
    let open = [b"\"", PGCELL_PREFIX.as_bytes()].concat();
    let at = message.windows(open.len()).position(|w| w == open)? + 1;
    let digits = message[at + PGCELL_PREFIX.len()..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let end = at + PGCELL_PREFIX.len() + digits;
    (digits > 0 && message.get(end) == Some(&b'"'))
        .then(|| String::from_utf8_lossy(&message[at..end]).into_owned())
}

/// PostgreSQL keeps a prepared statement under the first 63 bytes of its
/// name (`NAMEDATALEN - 1`): longer names that share them are one
/// statement, on a direct connection and here.
fn as_postgres_keeps(name: &[u8]) -> &[u8] {
    &name[..name.len().min(NAMEDATALEN - 1)]
}

/// PostgreSQL's `NAMEDATALEN`.
const NAMEDATALEN: usize = 64;

fn starts_with_ignore_case(s: &[u8], prefix: &[u8]) -> bool {
    s.get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

fn split_cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = b.iter().position(|&c| c == 0)?;
    Some((&b[..end], &b[end + 1..]))
}

fn put_cstr(out: &mut BytesMut, s: &[u8]) {
    out.put_slice(s);
    out.put_u8(0);
}

#[cfg(test)]
mod tests;
