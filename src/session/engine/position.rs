//! What a backend owes its client ([`Position`]): the replies owed for
//! what was sent to it, in one queue, with what each means for the
//! statements pgcell keeps there ([`Owed`]), and what each reply settled
//! ([`Received`]).

use std::collections::VecDeque;

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
    /// The replies owed, in the order they will come.
    pub(super) replies: VecDeque<Unit>,
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
pub(super) enum Unit {
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
    pub(super) fn is_plain(&self) -> bool {
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
pub(super) fn skipped(received: &mut Received, owed: Owed) {
    if !owed.is_plain() {
        received.skipped.push(owed);
    }
}
