//! Micro-benchmarks of the per-transaction and per-login work: the
//! prepared-statement rewrite of a `pgbench -M prepared` transaction (the
//! statement already on the backend: the steady state), and the server side
//! of a SCRAM exchange (client-first and client-final verification against a
//! stored secret; no PBKDF2, as in every login pgcell serves), and the
//! judgement of SQL text (`pgcell::judge`) run on every `Query` and
//! `Parse`.
//!
//! `cargo bench --bench hot_path`

// criterion's macros generate undocumented public items.
#![allow(missing_docs)]

use std::hint::black_box;

use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use pgcell::split_message;
use pgcell::BackendStatements;
use pgcell::Checkout;
use pgcell::ClientStatements;
use pgcell::Message;
use pgcell::ScramSecret;
use pgcell::{Dialect, Verdict};
use pgcell::{ScramClient, ScramServer};

/// The SQL text of a `Parse` (after its name) or a `Query`.
fn sql_of(msg: &Message) -> &[u8] {
    match msg.tag {
        b'P' => {
            let end = msg.body.iter().position(|&b| b == 0).unwrap_or(0);
            &msg.body[end + 1..]
        }
        _ => &msg.body,
    }
}

/// The judgement of a statement's SQL text, run on every simple `Query`
/// and every `Parse` (a prepared statement's is kept with it).
fn bench_judge(c: &mut Criterion) {
    let mut group = c.benchmark_group("judge");
    group.throughput(Throughput::Elements(1));
    for (name, sql) in [
        (
            "pgbench_select",
            &b"SELECT abalance FROM pgbench_accounts WHERE aid = 48213;\0"[..],
        ),
        (
            "pgbench_update",
            b"UPDATE pgbench_accounts SET abalance = abalance + -4321 WHERE aid = 48213;\0",
        ),
        (
            "multi_statement_with_comments",
            b"/* app=checkout */ BEGIN; SELECT 'a;b' AS x; SET LOCAL work_mem = '8MB'; \
              UPDATE t SET v = $$x;y$$ WHERE id = 7; COMMIT;\0",
        ),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| black_box(pgcell::judge(black_box(sql), Dialect::default())))
        });
    }
    let long = format!(
        "SELECT {} FROM t WHERE id = 1\0",
        (0..200)
            .map(|i| format!("c{i}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    group.bench_function("select_200_columns", |b| {
        b.iter(|| {
            black_box(pgcell::judge(
                black_box(long.as_bytes()),
                Dialect::default(),
            ))
        })
    });
    group.finish();
}

fn tagged(buf: &mut BytesMut, tag: u8, body: &[u8]) {
    buf.put_u8(tag);
    buf.put_u32((body.len() + 4) as u32);
    buf.put_slice(body);
}

/// What `pgbench -S -M prepared` sends per transaction once its statement
/// exists: Bind, Execute, Sync (Parse only the first time).
fn prepared_transaction(first: bool) -> BytesMut {
    let mut buf = BytesMut::new();
    if first {
        let mut parse = BytesMut::new();
        parse.put_slice(b"P0_1\0SELECT abalance FROM pgbench_accounts WHERE aid = $1;\0");
        parse.put_i16(0);
        tagged(&mut buf, b'P', &parse);
    }
    let mut bind = BytesMut::new();
    bind.put_slice(b"\0P0_1\0");
    bind.put_i16(0);
    bind.put_i16(1);
    bind.put_i32(5);
    bind.put_slice(b"12345");
    bind.put_i16(0);
    tagged(&mut buf, b'B', &bind);
    tagged(&mut buf, b'E', b"\0\0\0\0\0");
    tagged(&mut buf, b'S', b"");
    buf
}

fn bench_prepared(c: &mut Criterion) {
    let mut client = ClientStatements::default();
    let mut backend = BackendStatements::default();
    let mut checkout = Checkout::default();
    let mut out = BytesMut::with_capacity(4096);
    // Prepare once (Parse injected, ParseComplete swallowed later).
    let mut first = prepared_transaction(true);
    while let Some(msg) = split_message(&mut first, 1 << 20).unwrap() {
        let judged = pgcell::judge(sql_of(&msg), Dialect::default());
        client
            .forward(&msg, judged, &mut backend, &mut checkout, &mut out)
            .unwrap();
    }
    for tag in [b'1', b'2', b'C', b'Z'] {
        client.replied(checkout.received(tag, b"I"), &mut backend);
    }
    assert!(!out.is_empty());
    let steady = prepared_transaction(false);
    let mut group = c.benchmark_group("prepared");
    group.throughput(Throughput::Elements(1));
    group.bench_function("rewrite_bind_execute_sync", |b| {
        b.iter(|| {
            out.clear();
            let mut input = steady.clone();
            while let Some(msg) = split_message(&mut input, 1 << 20).unwrap() {
                let executes = client
                    .forward(
                        black_box(&msg),
                        Verdict::default(),
                        &mut backend,
                        &mut checkout,
                        &mut out,
                    )
                    .unwrap();
                black_box(executes);
            }
            // The backend's answers: BindComplete, CommandComplete, RFQ.
            for tag in [b'2', b'C', b'Z'] {
                client.replied(checkout.received(tag, b"I"), &mut backend);
            }
            black_box(out.len())
        })
    });
    group.finish();
}

fn bench_scram(c: &mut Criterion) {
    let secret = ScramSecret::from_password("bench-password", b"0123456789abcdef", 4096);
    // Fixed nonces make the exchange deterministic, so the client's proof
    // (one PBKDF2, client side) is computed once, outside the timing.
    let server_nonce = [7u8; 18];
    let mut client = ScramClient::with_password("bench-password", [3u8; 18]);
    let client_first = client.client_first();
    let mut server = ScramServer::new(secret.clone(), None, server_nonce);
    let server_first = server.client_first("SCRAM-SHA-256", &client_first).unwrap();
    let client_final = client.server_first(&server_first).unwrap();
    assert!(server.client_final(&client_final).is_ok());

    let mut group = c.benchmark_group("scram");
    group.throughput(Throughput::Elements(1));
    group.bench_function("server_verify_login", |b| {
        b.iter(|| {
            let mut server = ScramServer::new(secret.clone(), None, server_nonce);
            let first = server
                .client_first("SCRAM-SHA-256", black_box(&client_first))
                .unwrap();
            black_box(first);
            black_box(server.client_final(black_box(&client_final)).is_ok())
        })
    });
    group.finish();
}

criterion_group!(benches, bench_prepared, bench_judge, bench_scram);
criterion_main!(benches);
