//! The prepared-statement bookkeeping, sans I/O: what a client's
//! statements become on shared backends, and the replies it gets.

use super::*;
use crate::config::DEFAULT_MAX_PREPARED_STATEMENTS as MAX_PREPARED_PER_BACKEND;
use crate::protocol::framing::split_message;

fn msg(tag: u8, body: &[u8]) -> Message {
    Message {
        tag,
        body: Bytes::copy_from_slice(body),
    }
}

fn messages_of(mut out: BytesMut) -> Vec<(u8, Vec<u8>)> {
    let mut v = Vec::new();
    while let Some(m) = split_message(&mut out, 1 << 20).unwrap() {
        v.push((m.tag, m.body.to_vec()));
    }
    v
}

#[test]
fn a_client_cannot_reach_statements_pgcell_made_for_others() {
    let mut checkout = Checkout::default();
    // Another client's statement sits on the shared backend.
    let mut other = ClientStatements::default();
    let mut backend = BackendStatements::default();
    let mut out = BytesMut::new();
    other
        .forward(
            &msg(b'P', b"s1\0select 1\0\0\0"),
            Verdict::default(),
            &mut backend,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    let theirs = messages_of(out)[0].1.clone();
    let theirs = &theirs[..theirs.iter().position(|&b| b == 0).unwrap()];
    assert!(theirs.starts_with(b"pgcell_"));
    // This client names it without preparing it: Bind, Describe, Close.
    let mut client = ClientStatements::default();
    let mut out = BytesMut::new();
    let mut bind = b"\0".to_vec();
    bind.extend_from_slice(theirs);
    bind.extend_from_slice(b"\0\0\0\0\0\0\0");
    let mut named = b"S".to_vec();
    named.extend_from_slice(theirs);
    named.push(0);
    for m in [msg(b'B', &bind), msg(b'D', &named), msg(b'C', &named)] {
        client
            .forward(
                &m,
                Verdict::default(),
                &mut backend,
                &mut checkout,
                &mut out,
            )
            .unwrap();
    }
    let sent = messages_of(out);
    assert_eq!(sent.len(), 3);
    for (_, body) in &sent {
        assert!(!body.windows(theirs.len()).any(|w| w == theirs), "{sent:?}");
        assert!(body
            .windows(NEVER_CREATED.len())
            .any(|w| w == NEVER_CREATED));
    }
    // Names outside pgcell's namespace pass as they are (26000 from
    // the backend, as without pgcell).
    let mut out = BytesMut::new();
    client
        .forward(
            &msg(b'B', b"\0mine\0\0\0\0\0\0\0"),
            Verdict::default(),
            &mut backend,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    assert_eq!(messages_of(out)[0].1, b"\0mine\0\0\0\0\0\0\0".to_vec());
}

#[test]
fn parse_is_renamed_and_injected_on_another_backend() {
    let mut checkout = Checkout::default();
    let mut client = ClientStatements::default();
    let mut backend_a = BackendStatements::default();
    let mut out = BytesMut::new();
    client
        .forward(
            &msg(b'P', b"s1\0select 1\0\0\0"),
            Verdict::default(),
            &mut backend_a,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    client
        .forward(
            &msg(b'B', b"\0s1\0\0\0\0\0\0\0"),
            Verdict::default(),
            &mut backend_a,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    client
        .forward(
            &msg(b'S', b""),
            Verdict::default(),
            &mut backend_a,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    let sent = messages_of(out);
    assert_eq!(sent.len(), 3);
    let global = String::from_utf8(sent[0].1.split(|b| *b == 0).next().unwrap().to_vec()).unwrap();
    assert!(global.starts_with("pgcell_"));
    assert!(sent[1]
        .1
        .windows(global.len())
        .any(|w| w == global.as_bytes()));
    // Backend A answers: ParseComplete forwarded (the client's own).
    assert!(client.replied(checkout.received(b'1', b""), &mut backend_a));
    assert!(client.replied(checkout.received(b'2', b""), &mut backend_a));
    assert!(client.replied(checkout.received(b'Z', b""), &mut backend_a));
    assert!(!checkout.position().busy());

    // Next transaction on backend B: Parse injected, its answer swallowed.
    let mut backend_b = BackendStatements::default();
    let mut out = BytesMut::new();
    client
        .forward(
            &msg(b'B', b"\0s1\0\0\0\0\0\0\0"),
            Verdict::default(),
            &mut backend_b,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    client
        .forward(
            &msg(b'S', b""),
            Verdict::default(),
            &mut backend_b,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    let sent = messages_of(out);
    assert_eq!(
        sent.iter().map(|m| m.0).collect::<Vec<_>>(),
        vec![b'P', b'B', b'S']
    );
    assert!(checkout.position().busy());
    assert!(
        !client.replied(checkout.received(b'1', b""), &mut backend_b),
        "injected ParseComplete swallowed"
    );
    assert!(client.replied(checkout.received(b'2', b""), &mut backend_b));
    assert!(client.replied(checkout.received(b'Z', b""), &mut backend_b));
    // Already there: no injection the third time.
    let mut out = BytesMut::new();
    client
        .forward(
            &msg(b'B', b"\0s1\0\0\0\0\0\0\0"),
            Verdict::default(),
            &mut backend_b,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    assert_eq!(messages_of(out).len(), 1);
}

#[test]
fn error_skips_to_sync_and_forgets_failed_statements() {
    let mut checkout = Checkout::default();
    let mut client = ClientStatements::default();
    let mut backend = BackendStatements::default();
    let mut out = BytesMut::new();
    client
        .forward(
            &msg(b'P', b"bad\0selec\0\0\0"),
            Verdict::default(),
            &mut backend,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    client
        .forward(
            &msg(b'S', b""),
            Verdict::default(),
            &mut backend,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    assert_eq!(backend.len(), 1);
    assert!(client.replied(checkout.received(b'E', b""), &mut backend));
    assert!(
        backend.is_empty(),
        "a failed Parse leaves nothing on the backend"
    );
    assert!(client.replied(checkout.received(b'Z', b""), &mut backend));
    assert!(!checkout.position().busy());
}

#[test]
fn a_query_dropped_in_a_failed_pipeline_leaks_no_injected_reply() {
    let mut checkout = Checkout::default();
    // The `prepared_relay` fuzz input b0 00 09 02 09 b5 07 0d 02 0d:
    // Parse s1, Parse s0, Query, Bind s0 (fails: the Query dropped
    // it), Query (dropped unanswered while skipping to Sync), Close s1
    // (skipped), Sync; then Bind s0 again, which re-creates s0.
    let mut client = ClientStatements::default();
    let mut backend = BackendStatements::default();
    let mut out = BytesMut::new();
    for m in [
        msg(b'P', b"s1\0select $1\0\0\0"),
        msg(b'P', b"s0\0select $1\0\0\0"),
        msg(b'Q', b"DEALLOCATE ALL\0"),
        msg(b'B', b"\0s0\0\0\0\0\0\0\0"),
        msg(b'Q', b"DEALLOCATE ALL\0"),
        msg(b'C', b"Ss1\0"),
        msg(b'S', b""),
    ] {
        client
            .forward(
                &m,
                Verdict::default(),
                &mut backend,
                &mut checkout,
                &mut out,
            )
            .unwrap();
    }
    // What PostgreSQL answers: two ParseCompletes, the first Query,
    // 26000 for the Bind, nothing for the second Query or the Close,
    // ReadyForQuery for the Sync.
    assert!(client.replied(checkout.received(b'1', b""), &mut backend));
    assert!(client.replied(checkout.received(b'1', b""), &mut backend));
    assert!(client.replied(checkout.received(b'C', b""), &mut backend));
    backend.dropped_all();
    assert!(client.replied(checkout.received(b'Z', b""), &mut backend));
    assert!(client.replied(checkout.received(b'E', b""), &mut backend));
    assert!(client.replied(checkout.received(b'Z', b""), &mut backend));
    // s0 is re-created (injected) before the next Bind.
    let mut out = BytesMut::new();
    client
        .forward(
            &msg(b'B', b"\0s0\0\0\0\0\0\0\0"),
            Verdict::default(),
            &mut backend,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    let sent = messages_of(out);
    assert_eq!(
        sent.iter().map(|m| m.0).collect::<Vec<_>>(),
        vec![b'P', b'B']
    );
    assert!(
        !client.replied(checkout.received(b'1', b""), &mut backend),
        "the injected Parse's ParseComplete reached the client"
    );
    assert!(client.replied(checkout.received(b'2', b""), &mut backend));
}

#[test]
fn a_close_of_an_unknown_statement_keeps_replies_in_step() {
    let mut checkout = Checkout::default();
    // s1 was prepared on an earlier backend: on this one its Parse is
    // injected before the Bind. A Close of a name the client never
    // prepared is answered too, and must not take the place of the
    // Close after it (prepared_relay fuzz input
    // `regression-close-of-unknown-statement`).
    let mut client = ClientStatements::default();
    let mut first = BackendStatements::default();
    let mut out = BytesMut::new();
    client
        .forward(
            &msg(b'P', b"s1\0select 1\0\0\0"),
            Verdict::default(),
            &mut first,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    assert!(client.replied(checkout.received(b'1', b""), &mut first));
    client.new_backend();
    checkout.attach();
    let mut backend = BackendStatements::default();
    let mut out = BytesMut::new();
    for m in [
        msg(b'C', b"Sunknown\0"),
        msg(b'B', b"\0s1\0\0\0\0\0\0\0"),
        msg(b'C', b"Ss1\0"),
        msg(b'S', b""),
    ] {
        client
            .forward(
                &m,
                Verdict::default(),
                &mut backend,
                &mut checkout,
                &mut out,
            )
            .unwrap();
    }
    assert_eq!(
        messages_of(out).iter().map(|m| m.0).collect::<Vec<_>>(),
        vec![b'C', b'P', b'B', b'C', b'S']
    );
    assert!(client.replied(checkout.received(b'3', b""), &mut backend));
    assert!(
        !client.replied(checkout.received(b'1', b""), &mut backend),
        "the injected ParseComplete is swallowed"
    );
    assert!(client.replied(checkout.received(b'2', b""), &mut backend));
    assert!(client.replied(checkout.received(b'3', b""), &mut backend));
    assert!(client.replied(checkout.received(b'Z', b""), &mut backend));
    assert!(!checkout.position().busy());
}

#[test]
fn an_eviction_skipped_after_an_error_keeps_the_statement_known() {
    let mut checkout = Checkout::default();
    let mut client = ClientStatements::default();
    let mut backend = BackendStatements::default();
    let mut globals = Vec::new();
    for i in 0..MAX_PREPARED_PER_BACKEND {
        let mut out = BytesMut::new();
        let body = format!("s{i}\0select {i}\0\0\0");
        client
            .forward(
                &msg(b'P', body.as_bytes()),
                Verdict::default(),
                &mut backend,
                &mut checkout,
                &mut out,
            )
            .unwrap();
        let sent = messages_of(out);
        globals.push(
            String::from_utf8(sent[0].1.split(|b| *b == 0).next().unwrap().to_vec()).unwrap(),
        );
        assert!(client.replied(checkout.received(b'1', b""), &mut backend));
    }
    // The backend is full. A failing Parse (evicting s0, which runs),
    // then a Parse evicting s1: the backend skips that Close after the
    // error, so s1 is still there.
    let mut out = BytesMut::new();
    client
        .forward(
            &msg(b'P', b"bad\0selec\0\0\0"),
            Verdict::default(),
            &mut backend,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    client
        .forward(
            &msg(b'P', b"new\0select 0\0\0\0"),
            Verdict::default(),
            &mut backend,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    client
        .forward(
            &msg(b'S', b""),
            Verdict::default(),
            &mut backend,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    let sent = messages_of(out);
    assert_eq!(
        sent.iter().map(|m| m.0).collect::<Vec<_>>(),
        vec![b'C', b'P', b'C', b'P', b'S']
    );
    let s1 = &globals[1];
    assert!(sent[2].1.windows(s1.len()).any(|w| w == s1.as_bytes()));
    assert!(
        !client.replied(checkout.received(b'3', b""), &mut backend),
        "the eviction's CloseComplete is swallowed"
    );
    assert!(client.replied(checkout.received(b'E', b""), &mut backend));
    assert!(client.replied(checkout.received(b'Z', b""), &mut backend));
    assert!(!checkout.position().busy());
    assert!(!backend.contains(&globals[0]), "s0 was closed");
    assert!(backend.contains(s1), "s1 was never closed");
    // Binding s1 needs no Parse (which would fail with 42P05).
    let mut out = BytesMut::new();
    client
        .forward(
            &msg(b'B', b"\0s1\0\0\0\0\0\0\0"),
            Verdict::default(),
            &mut backend,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    assert_eq!(messages_of(out).len(), 1);
    assert!(backend.len() <= MAX_PREPARED_PER_BACKEND);
}

#[test]
fn close_and_unnamed_and_eviction() {
    let mut checkout = Checkout::default();
    let mut client = ClientStatements::default();
    let mut backend = BackendStatements::default();
    let mut out = BytesMut::new();
    client
        .forward(
            &msg(b'P', b"\0select 1\0\0\0"),
            Verdict::default(),
            &mut backend,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    assert_eq!(&messages_of(out)[0].1[..], b"\0select 1\0\0\0");
    let mut out = BytesMut::new();
    client
        .forward(
            &msg(b'P', b"s\0select 1\0\0\0"),
            Verdict::default(),
            &mut backend,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    client
        .forward(
            &msg(b'C', b"Ss\0"),
            Verdict::default(),
            &mut backend,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    let sent = messages_of(out);
    assert_eq!(sent[1].0, b'C');
    assert!(sent[1].1.starts_with(b"Spgcell_"));
    assert!(backend.is_empty());
    // Eviction: the oldest statement is closed, and its CloseComplete
    // swallowed.
    let mut backend = BackendStatements::default();
    let mut client = ClientStatements::default();
    for i in 0..=MAX_PREPARED_PER_BACKEND {
        let mut out = BytesMut::new();
        let body = format!("s{i}\0select {i}\0\0\0");
        client
            .forward(
                &msg(b'P', body.as_bytes()),
                Verdict::default(),
                &mut backend,
                &mut checkout,
                &mut out,
            )
            .unwrap();
        if i == MAX_PREPARED_PER_BACKEND {
            let sent = messages_of(out);
            assert_eq!(sent[0].0, b'C');
        }
    }
    assert_eq!(backend.len(), MAX_PREPARED_PER_BACKEND);
}

#[test]
fn unnamed_statement_follows_the_client_to_a_new_backend() {
    let mut checkout = Checkout::default();
    let mut client = ClientStatements::default();
    let mut backend = BackendStatements::default();
    let mut out = BytesMut::new();
    client
        .forward(
            &msg(b'P', b"\0select $1\0\0\0"),
            Verdict::default(),
            &mut backend,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    client
        .forward(
            &msg(b'S', b""),
            Verdict::default(),
            &mut backend,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    assert!(client.replied(checkout.received(b'1', b""), &mut backend));
    assert!(client.replied(checkout.received(b'Z', b""), &mut backend));
    // Same checkout: the Bind goes straight through.
    let mut out = BytesMut::new();
    client
        .forward(
            &msg(b'B', b"\0\0\0\0\0\0\0\0"),
            Verdict::default(),
            &mut backend,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    assert_eq!(messages_of(out).len(), 1);
    // Next transaction, another backend: the client's own unnamed
    // statement is re-created first and its ParseComplete swallowed.
    client.new_backend();
    checkout.attach();
    let mut out = BytesMut::new();
    client
        .forward(
            &msg(b'B', b"\0\0\0\0\0\0\0\0"),
            Verdict::default(),
            &mut backend,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    client
        .forward(
            &msg(b'S', b""),
            Verdict::default(),
            &mut backend,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    let sent = messages_of(out);
    assert_eq!(
        sent.iter().map(|m| m.0).collect::<Vec<_>>(),
        vec![b'P', b'B', b'S']
    );
    assert_eq!(&sent[0].1[..], b"\0select $1\0\0\0");
    assert!(!client.replied(checkout.received(b'1', b""), &mut backend));
}

#[test]
fn deallocate_is_answered_locally_outside_a_transaction() {
    let mut checkout = Checkout::default();
    let mut client = ClientStatements::default();
    let mut backend = BackendStatements::default();
    let mut out = BytesMut::new();
    client
        .forward(
            &msg(b'P', b"_pg3_0\0select 1\0\0\0"),
            Verdict::default(),
            &mut backend,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    client
        .forward(
            &msg(b'P', b"Mixed\0select 2\0\0\0"),
            Verdict::default(),
            &mut backend,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    assert_eq!(
        client.answer_locally(b"select 1\0", b'I', Dialect::default()),
        None
    );
    assert_eq!(
        client.answer_locally(b"DEALLOCATE ALL; SELECT 1\0", b'I', Dialect::default()),
        None
    );
    assert_eq!(
        client.answer_locally(b"deallocate nosuch\0", b'I', Dialect::default()),
        None
    );
    assert_eq!(
        client.answer_locally(b"DEALLOCATE \"Mixed\"\0", b'I', Dialect::default()),
        Some("DEALLOCATE")
    );
    assert_eq!(
        client.answer_locally(b"deallocate prepare _PG3_0;\0", b'I', Dialect::default()),
        Some("DEALLOCATE")
    );
    client
        .forward(
            &msg(b'P', b"a\0select 1\0\0\0"),
            Verdict::default(),
            &mut backend,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    assert_eq!(
        client.answer_locally(b"  DEALLOCATE ALL \0", b'I', Dialect::default()),
        Some("DEALLOCATE ALL")
    );
    assert!(client.statements.is_empty());
    assert_eq!(
        client.answer_locally(b"discard all\0", b'T', Dialect::default()),
        None
    );
    // DISCARD ALL runs on the backend; the client's statements go.
    client
        .forward(
            &msg(b'P', b"b\0select 1\0\0\0"),
            Verdict::default(),
            &mut backend,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    assert_eq!(
        client.answer_locally(b"discard all\0", b'I', Dialect::default()),
        None
    );
    assert!(client.statements.is_empty());
    // Inside a transaction block DEALLOCATE ALL runs on the backend
    // (SQL-level statements live there) and forgets the client's.
    client
        .forward(
            &msg(b'P', b"c\0select 1\0\0\0"),
            Verdict::default(),
            &mut backend,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    assert_eq!(
        client.answer_locally(b"DEALLOCATE ALL\0", b'T', Dialect::default()),
        None
    );
    assert!(client.statements.is_empty());
}

#[test]
fn malformed_is_an_error_not_a_panic() {
    let mut checkout = Checkout::default();
    let mut client = ClientStatements::default();
    let mut backend = BackendStatements::default();
    let mut out = BytesMut::new();
    assert!(client
        .forward(
            &msg(b'P', b"no-terminator"),
            Verdict::default(),
            &mut backend,
            &mut checkout,
            &mut out,
        )
        .is_err());
    assert!(client
        .forward(
            &msg(b'B', b"\0"),
            Verdict::default(),
            &mut backend,
            &mut checkout,
            &mut out,
        )
        .is_err());
    assert!(client
        .forward(
            &msg(b'D', b"S"),
            Verdict::default(),
            &mut backend,
            &mut checkout,
            &mut out,
        )
        .is_err());
}

/// Regression (fuzz target `prepared_relay`): a `Parse` pipelined
/// behind a `DEALLOCATE ALL` that reaches the backend survives its
/// answer; re-creating it would fail with `42P05`.
#[test]
fn deallocate_all_answer_keeps_statements_parsed_after_it() {
    let mut checkout = Checkout::default();
    let mut client = ClientStatements::default();
    let mut backend = BackendStatements::default();
    let mut out = BytesMut::new();
    client
        .forward(
            &msg(b'P', b"old\0select 1\0\0\0"),
            Verdict::default(),
            &mut backend,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    let drop = crate::sql::judge(b"DEALLOCATE ALL", Dialect::default());
    client
        .forward(
            &msg(b'Q', b"DEALLOCATE ALL\0"),
            drop,
            &mut backend,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    client
        .forward(
            &msg(b'P', b"new\0select 2\0\0\0"),
            Verdict::default(),
            &mut backend,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    assert_eq!(backend.len(), 2);
    // The answer to DEALLOCATE ALL arrives after the second Parse went out.
    backend.dropped_all();
    client.drop_answered();
    assert_eq!(backend.len(), 1);
    let mut out = BytesMut::new();
    client
        .forward(
            &msg(b'B', b"\0new\0\0\0\0\0\0\0"),
            Verdict::default(),
            &mut backend,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    assert_eq!(
        messages_of(out).iter().map(|m| m.0).collect::<Vec<_>>(),
        vec![b'B'],
        "the surviving statement is not prepared again"
    );
    let mut out = BytesMut::new();
    client
        .forward(
            &msg(b'B', b"\0old\0\0\0\0\0\0\0"),
            Verdict::default(),
            &mut backend,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    assert_eq!(
        messages_of(out),
        vec![(b'B', b"\0old\0\0\0\0\0\0\0".to_vec())],
        "the dropped statement is gone for the client too: the backend answers 26000"
    );
    // An answer nobody saw going out forgets everything.
    backend.dropped_all();
    assert!(backend.is_empty());
}

/// Found by review: a drop that is never answered as one (`DEALLOCATE
/// name`, a `DISCARD ALL` refused in a transaction block) must not be
/// paired with a later `DISCARD ALL`'s answer, or another client's
/// statement is believed still on the backend.
#[test]
fn drops_never_answered_are_not_paired_with_later_ones() {
    let mut checkout = Checkout::default();
    let mut a = ClientStatements::default();
    let mut b = ClientStatements::default();
    let mut backend = BackendStatements::default();
    let mut out = BytesMut::new();
    let judge = |sql: &[u8]| crate::sql::judge(sql, Dialect::default());
    for sql in [&b"deallocate foo\0"[..], b"DISCARD ALL\0"] {
        a.forward(
            &msg(b'Q', sql),
            judge(sql),
            &mut backend,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    }
    // Neither ran as a drop (26000, 25001); nothing is outstanding.
    a.settle_drops();
    backend.settle_drops();
    b.forward(
        &msg(b'P', b"s0\0select 1\0\0\0"),
        Verdict::default(),
        &mut backend,
        &mut checkout,
        &mut out,
    )
    .unwrap();
    assert!(b.replied(checkout.received(b'1', b""), &mut backend));
    a.forward(
        &msg(b'Q', b"DISCARD ALL\0"),
        judge(b"DISCARD ALL"),
        &mut backend,
        &mut checkout,
        &mut out,
    )
    .unwrap();
    backend.dropped_all();
    a.drop_answered();
    let mut out = BytesMut::new();
    b.forward(
        &msg(b'B', b"\0s0\0\0\0\0\0\0\0"),
        Verdict::default(),
        &mut backend,
        &mut checkout,
        &mut out,
    )
    .unwrap();
    assert_eq!(
        messages_of(out).iter().map(|m| m.0).collect::<Vec<_>>(),
        vec![b'P', b'B'],
        "the statement the DISCARD ALL dropped is prepared again"
    );
}

#[test]
fn deallocate_in_a_failed_transaction_is_the_backends_to_refuse() {
    let mut checkout = Checkout::default();
    let mut client = ClientStatements::default();
    let mut backend = BackendStatements::default();
    let mut out = BytesMut::new();
    client
        .forward(
            &msg(b'P', b"d\0select 1\0\0\0"),
            Verdict::default(),
            &mut backend,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    for q in [
        &b"DEALLOCATE d\0"[..],
        b"DEALLOCATE ALL\0",
        b"discard all\0",
    ] {
        assert_eq!(client.answer_locally(q, b'E', Dialect::default()), None);
    }
    assert_eq!(client.statements.len(), 1, "nothing forgotten");
    // Hidden in a comment, a name is still one; a second statement
    // hidden behind a comment makes it the backend's.
    assert_eq!(
        client.answer_locally(b"DEALLOCATE /* x */ d\0", b'I', Dialect::default()),
        Some("DEALLOCATE")
    );
    assert_eq!(
        client.answer_locally(
            b"DEALLOCATE ALL -- x\n; select 1\0",
            b'I',
            Dialect::default()
        ),
        None
    );
}

#[test]
fn a_bind_executes_what_its_statement_was_judged_to_do() {
    let mut checkout = Checkout::default();
    let mut client = ClientStatements::default();
    let mut backend = BackendStatements::default();
    let mut out = BytesMut::new();
    let set_role = crate::sql::judge(b"SET ROLE r1", Dialect::default());
    assert!(set_role.settings);
    let parsed = client
        .forward(
            &msg(b'P', b"s1\0SET ROLE r1\0\0\0"),
            set_role,
            &mut backend,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    assert!(parsed.is_quiet(), "a Parse executes nothing");
    client.new_backend();
    checkout.attach();
    let mut other = BackendStatements::default();
    for _ in 0..2 {
        let bound = client
            .forward(
                &msg(b'B', b"\0s1\0\0\0\0\0\0\0"),
                Verdict::default(),
                &mut other,
                &mut checkout,
                &mut out,
            )
            .unwrap();
        assert_eq!(bound, set_role);
    }
    // The unnamed statement too, until a simple Query replaces it.
    client
        .forward(
            &msg(b'P', b"\0SET ROLE r1\0\0\0"),
            set_role,
            &mut backend,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    let bound = client
        .forward(
            &msg(b'B', b"\0\0\0\0\0\0\0\0"),
            Verdict::default(),
            &mut backend,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    assert_eq!(bound, set_role);
    client
        .forward(
            &msg(b'Q', b"select 1\0"),
            Verdict::default(),
            &mut backend,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    let bound = client
        .forward(
            &msg(b'B', b"\0\0\0\0\0\0\0\0"),
            Verdict::default(),
            &mut backend,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    assert!(bound.is_quiet());
    // A name never prepared executes nothing of the client's.
    let bound = client
        .forward(
            &msg(b'B', b"\0nosuch\0\0\0\0\0\0\0"),
            Verdict::default(),
            &mut backend,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    assert!(bound.is_quiet());
    // After DISCARD ALL the statement is gone.
    client.dropped_all();
    let bound = client
        .forward(
            &msg(b'B', b"\0s1\0\0\0\0\0\0\0"),
            Verdict::default(),
            &mut backend,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    assert!(bound.is_quiet());
}
#[test]
fn errors_name_the_clients_statements_as_the_client_does() {
    let mut checkout = Checkout::default();
    let mut client = ClientStatements::default();
    let mut backend = BackendStatements::default();
    let mut out = BytesMut::new();
    client
        .forward(
            &msg(b'P', b"mine\0select 1\0\0\0"),
            Verdict::default(),
            &mut backend,
            &mut checkout,
            &mut out,
        )
        .unwrap();
    let global = client.statements["mine"].global.to_string();
    let body = format!("SERROR\0C42P05\0Mprepared statement \"{global}\" already exists\0\0");
    let renamed = client.client_error(body.as_bytes()).unwrap();
    assert_eq!(
        renamed,
        b"SERROR\0C42P05\0Mprepared statement \"mine\" already exists\0\0".to_vec()
    );
    // Another client's, or pgcell's refusal name: left as they are.
    assert!(client
        .client_error(b"SERROR\0Mprepared statement \"pgcell_unknown\" does not exist\0\0")
        .is_none());
    assert!(client
        .client_error(b"SERROR\0Mno statement named\0\0")
        .is_none());
}
