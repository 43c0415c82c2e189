//! The transaction-mode relay's statement handling: a client message stream
//! through `ClientStatements` (statement renaming, re-preparing on another
//! backend, LRU eviction, swallowed injected replies) against scripted
//! backends that answer like PostgreSQL's extended protocol.
//!
//! The input is a program of client operations. The harness drives the
//! same engine as `session/pooled`: `ClientStatements` for statements and
//! `session::engine::Checkout` for where the backend stands (every message
//! sent, pgcell's injected ones included, and every reply), what the
//! executed statements did, and the checkin's decision; it clears a
//! backend's statement set on `DEALLOCATE ALL`, answers `DEALLOCATE`
//! locally when the backend is quiet, and changes backend only when the
//! engine says the backend is idle. It checks:
//!
//! - named statements reach a backend only under pgcell names, never twice
//!   (no `42P05`), and never missing (no `26000` for a pgcell name), except
//!   where PostgreSQL itself would fail the same way: a `Bind` pipelined
//!   behind a `Parse` the backend skipped after an error, or behind a
//!   `DEALLOCATE ALL`;
//! - replies to what pgcell injected never reach the client: it sees no
//!   more `ParseComplete`/`CloseComplete` than it asked for;
//! - after a final `Sync` has been answered nothing is owed and the
//!   engine finds the backend idle, so it goes back to the pool — also
//!   when the client sent a simple `Query` into a failed pipeline
//!   (PostgreSQL drops it unanswered), and then the statement checks
//!   above still hold: the protocol position and the statements are one
//!   queue of replies owed, so nothing can fall out of step;
//! - a backend's statement set stays within its bound;
//! - a transaction that executed a statement judged to change settings
//!   (`SET ROLE`, parsed in one transaction and bound in a later one
//!   included) ends with a checkin that reads the session back.

#![no_main]

use std::collections::{HashSet, VecDeque};

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use pgcell::BackendStatements;
use pgcell::config::DEFAULT_MAX_PREPARED_STATEMENTS as MAX_PREPARED_PER_BACKEND;
use pgcell::{split_message, Message};
use pgcell::{CheckinPolicy, Checkout};
use pgcell::ClientStatements;
use pgcell::{judge, Dialect, Verdict};

/// One scripted backend: the statements it holds, as PostgreSQL would.
#[derive(Default)]
struct Backend {
    named: HashSet<Vec<u8>>,
    unnamed: bool,
    /// After an error, messages are skipped until `Sync`.
    skipping: bool,
    /// pgcell's view of this backend.
    tracked: BackendStatements,
    /// Named `Parse`s skipped after an error, and statements dropped by a
    /// `DEALLOCATE ALL` that reached the backend: a `Bind` pipelined behind
    /// either fails with 26000 against PostgreSQL directly too.
    skipped: HashSet<Vec<u8>>,
}

fn cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = b.iter().position(|&c| c == 0)?;
    Some((&b[..end], &b[end + 1..]))
}

impl Backend {
    /// Runs one message; appends the replies.
    fn run(&mut self, msg: &Message, replies: &mut VecDeque<Message>) {
        let reply = |replies: &mut VecDeque<Message>, tag: u8, body: &[u8]| {
            replies.push_back(Message {
                tag,
                body: Bytes::copy_from_slice(body),
            })
        };
        if self.skipping && msg.tag != b'S' {
            if msg.tag == b'P' {
                if let Some((name, _)) = cstr(&msg.body) {
                    self.skipped.insert(name.to_vec());
                }
            }
            return;
        }
        let error = |this: &mut Backend, replies: &mut VecDeque<Message>, code: &str| {
            let mut body = Vec::new();
            body.extend_from_slice(b"SERROR\0C");
            body.extend_from_slice(code.as_bytes());
            body.extend_from_slice(b"\0Mscripted\0\0");
            reply(replies, b'E', &body);
            this.skipping = true;
        };
        match msg.tag {
            b'P' => {
                let Some((name, _)) = cstr(&msg.body) else {
                    return error(self, replies, "08P01");
                };
                if name.is_empty() {
                    self.unnamed = true;
                } else {
                    assert!(
                        name.starts_with(b"pgcell_"),
                        "client name reached the backend"
                    );
                    let new = self.named.insert(name.to_vec());
                    assert!(new, "statement prepared twice (42P05)");
                }
                reply(replies, b'1', b"");
            }
            b'B' | b'D' => {
                let name = if msg.tag == b'B' {
                    cstr(&msg.body)
                        .and_then(|(_, rest)| cstr(rest))
                        .map(|(n, _)| n)
                } else if msg.body.first() == Some(&b'S') {
                    cstr(&msg.body[1..]).map(|(n, _)| n)
                } else {
                    // Describe of a portal.
                    reply(replies, b'n', b"");
                    return;
                };
                let Some(name) = name else {
                    return error(self, replies, "08P01");
                };
                let exists = if name.is_empty() {
                    self.unnamed
                } else {
                    self.named.contains(name)
                };
                if !exists {
                    assert!(
                        !name.starts_with(b"pgcell_")
                            // What a client's own name in pgcell's
                            // namespace becomes (never created).
                            || name == b"pgcell_unknown"
                            || self.skipped.contains(name),
                        "pgcell statement missing on its backend (26000)"
                    );
                    return error(self, replies, "26000");
                }
                if msg.tag == b'B' {
                    reply(replies, b'2', b"");
                } else {
                    reply(replies, b't', b"\0\0");
                    reply(replies, b'n', b"");
                }
            }
            b'C' => {
                if msg.body.first() == Some(&b'S') {
                    if let Some((name, _)) = cstr(&msg.body[1..]) {
                        if name.is_empty() {
                            self.unnamed = false;
                        } else {
                            self.named.remove(name);
                        }
                    }
                }
                reply(replies, b'3', b"");
            }
            b'E' => reply(replies, b'C', b"SELECT 1\0"),
            b'S' => {
                self.skipping = false;
                reply(replies, b'Z', b"I");
            }
            b'Q' => {
                // A simple query drops the unnamed statement.
                self.unnamed = false;
                let sql = msg.body.strip_suffix(&[0]).unwrap_or(&msg.body);
                if sql.eq_ignore_ascii_case(b"deallocate all") {
                    // A Bind pipelined behind it misses these, as it would
                    // against PostgreSQL directly.
                    self.skipped.extend(self.named.drain());
                    reply(replies, b'C', b"DEALLOCATE ALL\0");
                } else {
                    reply(replies, b'C', b"SELECT 1\0");
                }
                reply(replies, b'Z', b"I");
            }
            _ => {}
        }
    }
}

struct Harness {
    client: ClientStatements,
    backends: Vec<Backend>,
    current: usize,
    /// Replies produced but not yet seen by pgcell.
    in_flight: VecDeque<Message>,
    /// Where the current backend stands and what the transaction did (the
    /// engine's view).
    checkout: Checkout,
    /// A statement judged to change settings executed since the last
    /// checkin.
    changed_settings: bool,
    parses_sent: usize,
    closes_sent: usize,
    parse_completes_seen: usize,
    close_completes_seen: usize,
}

impl Harness {
    /// Forwards one client message; false when pgcell refuses it (the
    /// session would end with 08P01).
    fn send(&mut self, tag: u8, body: &[u8]) -> bool {
        let msg = Message {
            tag,
            body: Bytes::copy_from_slice(body),
        };
        if tag == b'Q' && self.checkout.position().quiet() {
            let status = self.checkout.position().status();
            if self
                .client
                .answer_locally(&msg.body, status, Dialect::default())
                .is_some()
            {
                return true;
            }
        }
        match tag {
            b'P' => self.parses_sent += 1,
            b'C' => self.closes_sent += 1,
            _ => {}
        }
        let backend = &mut self.backends[self.current];
        let mut out = BytesMut::new();
        // The verdict of the message's own SQL text, as the session judges
        // it (a Query's text, or a Parse's after the statement name).
        let judged = match tag {
            b'Q' => judge(&msg.body, Dialect::default()),
            b'P' => cstr(&msg.body)
                .map(|(_, text)| judge(text, Dialect::default()))
                .unwrap_or_default(),
            _ => Verdict::default(),
        };
        let Ok(executes) = self.client.forward(
            &msg,
            judged,
            &mut backend.tracked,
            &mut self.checkout,
            &mut out,
        ) else {
            return false;
        };
        self.changed_settings |= executes.settings;
        self.checkout.executed(executes, false);
        assert!(backend.tracked.len() <= MAX_PREPARED_PER_BACKEND);
        while let Ok(Some(m)) = split_message(&mut out, usize::MAX) {
            backend.run(&m, &mut self.in_flight);
        }
        assert!(out.is_empty(), "forward produced a partial message");
        true
    }

    /// pgcell reads every reply produced so far.
    fn deliver(&mut self) {
        let backend = &mut self.backends[self.current];
        while let Some(m) = self.in_flight.pop_front() {
            if m.tag == b'C'
                && (m.body.starts_with(b"DEALLOCATE ALL\0") || m.body.starts_with(b"DISCARD ALL\0"))
            {
                // As the session does: the backend's statements before it
                // went out are gone, and so are the client's.
                backend.tracked.dropped_all();
                self.client.drop_answered();
            }
            let received = self.checkout.received(m.tag, &m.body);
            if !self.client.replied(received, &mut backend.tracked) {
                continue;
            }
            if m.tag == b'Z' && self.checkout.position().quiet() {
                // As the session does: drops not answered by now failed.
                self.client.settle_drops();
                backend.tracked.settle_drops();
            }
            match m.tag {
                b'1' => self.parse_completes_seen += 1,
                b'3' => self.close_completes_seen += 1,
                _ => {}
            }
            assert!(
                self.parse_completes_seen <= self.parses_sent,
                "injected ParseComplete leaked"
            );
            assert!(
                self.close_completes_seen <= self.closes_sent,
                "injected CloseComplete leaked"
            );
        }
    }

    fn idle(&self) -> bool {
        self.checkout.may_release() && self.in_flight.is_empty()
    }

    /// The transaction is over: the engine's checkin reads the session
    /// back whenever a statement that changes settings ran.
    fn checkin(&mut self) {
        let outcome = self.checkout.checkin(CheckinPolicy::default());
        if self.changed_settings {
            assert!(outcome.capture, "settings changed but not read back");
        }
        self.changed_settings = false;
        self.checkout.attach();
    }
}

fuzz_target!(|input: &[u8]| {
    let mut h = Harness {
        client: ClientStatements::default(),
        backends: (0..3).map(|_| Backend::default()).collect(),
        current: 0,
        in_flight: VecDeque::new(),
        checkout: Checkout::default(),
        changed_settings: false,
        parses_sent: 0,
        closes_sent: 0,
        parse_completes_seen: 0,
        close_completes_seen: 0,
    };
    let mut ops = input.iter().copied();
    while let Some(op) = ops.next() {
        let arg = usize::from(op >> 4);
        let name = format!("s{}", arg % 5);
        let named = |prefix: &[u8], name: &str, suffix: &[u8]| {
            let mut b = prefix.to_vec();
            b.extend_from_slice(name.as_bytes());
            b.push(0);
            b.extend_from_slice(suffix);
            b
        };
        let ok = match op & 0x0F {
            0 => h.send(b'P', &named(b"", &name, b"select $1\0\0\0")),
            // A statement that changes the session, executed whenever a
            // later Bind names it.
            14 if arg % 2 == 0 => h.send(b'P', &named(b"", &name, b"SET ROLE r1\0\0\0")),
            1 => h.send(b'P', b"\0select 2\0\0\0"),
            2 => h.send(b'B', &named(b"\0", &name, b"\0\0\0\0\0\0")),
            3 => h.send(b'B', b"\0\0\0\0\0\0\0\0"),
            4 => h.send(b'D', &named(b"S", &name, b"")),
            5 => h.send(b'C', &named(b"S", &name, b"")),
            6 => h.send(b'E', b"\0\0\0\0\0"),
            7 => h.send(b'S', b""),
            8 => h.send(b'Q', b"select 1\0"),
            9 => {
                let sql: &[u8] = match arg % 4 {
                    0 => b"DEALLOCATE ALL\0",
                    1 => b"discard all\0",
                    2 => b"deallocate s1\0",
                    _ => b"deallocate prepare \"s2\"\0",
                };
                h.send(b'Q', sql)
            }
            10 => h.send(b'H', b""),
            11 => {
                // A raw message: tag and body from the input.
                let tag = ops.next().unwrap_or(b'P');
                let len = usize::from(ops.next().unwrap_or(0) % 32);
                let body: Vec<u8> = ops.by_ref().take(len).collect();
                // Only messages the relay passes through ClientStatements.
                if matches!(tag, b'P' | b'B' | b'D' | b'C' | b'E' | b'H') {
                    h.send(tag, &body)
                } else {
                    true
                }
            }
            12 => {
                // Another backend, only between transactions, as the pool
                // hands them out.
                h.deliver();
                if h.idle() {
                    h.checkin();
                    h.current = arg % h.backends.len();
                    h.client.new_backend();
                }
                true
            }
            _ => {
                h.deliver();
                true
            }
        };
        if !ok {
            return;
        }
    }
    // Finish the pipeline: once its Sync is answered nothing is awaited.
    if h.send(b'S', b"") {
        h.deliver();
        assert!(
            h.checkout.position().idle(),
            "the engine would keep the backend after the last Sync"
        );
        assert!(
            !h.checkout.position().busy(),
            "backend would be kept for replies that never come"
        );
    }
});
