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
//! | file | job |
//! |---|---|
//! | `position.rs` | [`Position`]: the replies a backend owes, and what each settled |
//! | `state.rs` | the client's session: read back, reset, replayed ([`ClientSession`]); state that cannot be carried |
//! | `checkout.rs` | one lease ([`Checkout`]) and what becomes of the backend ([`Checkin`]) |
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

pub(crate) mod checkout;
mod position;
mod state;

pub(crate) use checkout::{Checkin, CheckinPolicy, Checkout, CloseReason};
pub(crate) use position::{Owed, Received};
pub(crate) use state::{
    captured, held_state, startup_searches_pg_temp, ClientSession, CustomSettings, RESET,
};

#[cfg(test)]
mod tests {
    use super::position::Position;
    use super::position::Unit;
    use super::state::CAPTURE_END;
    use super::state::{quote, CAPTURE_AND_RESET, MAX_CUSTOM_SETTINGS, STATE_CHECK};
    use super::*;
    use crate::protocol::messages::is_fatal;

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
