//! Parsers on the connection path: the PROXY v2 header and the
//! `StartupMessage` (once per connection), and message framing (the relay's
//! hot path).
//!
//! `cargo bench --bench parse`

// criterion's macros generate undocumented public items.
#![allow(missing_docs)]

use std::hint::black_box;

use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use pgcell::{parse_v2, proxy_header, ProxyHeader};
use pgcell::{split_message, FrameTracker};
use pgcell::{startup, FrontendStartup, StartupMessage};

/// Rows in the framing benchmark's buffer.
const ROWS: usize = 50;
/// Bound passed to `split_message`, as the relay would use.
const MAX_MESSAGE_LEN: usize = 1 << 20;

/// The body (after the length) of a `StartupMessage` like the one psql sends
/// through a tenant-routing proxy.
fn startup_body() -> Vec<u8> {
    let message = StartupMessage {
        minor: 0,
        params: [
            ("user", "app_reader.acme"),
            ("database", "orders"),
            ("application_name", "psql"),
            ("client_encoding", "UTF8"),
            ("options", "-c statement_timeout=5s tenant=acme"),
            ("DateStyle", "ISO, MDY"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    };
    let mut buf = BytesMut::new();
    message.encode(&mut buf);
    buf[4..].to_vec()
}

/// `ROWS` `DataRow` messages of three columns (an int, a short text, a
/// timestamp), then `CommandComplete` and `ReadyForQuery`.
fn data_rows() -> Vec<u8> {
    let mut buf = BytesMut::new();
    for i in 0..ROWS {
        let columns = [
            i.to_string(),
            format!("customer-{i:05}"),
            "2024-05-01 12:34:56.789+00".to_string(),
        ];
        let body_len = 2 + columns.iter().map(|c| 4 + c.len()).sum::<usize>();
        buf.put_u8(b'D');
        buf.put_u32((body_len + 4) as u32);
        buf.put_i16(columns.len() as i16);
        for c in &columns {
            buf.put_i32(c.len() as i32);
            buf.put_slice(c.as_bytes());
        }
    }
    let tag = format!("SELECT {ROWS}\0");
    buf.put_u8(b'C');
    buf.put_u32((tag.len() + 4) as u32);
    buf.put_slice(tag.as_bytes());
    buf.put_slice(b"Z\0\0\0\x05I");
    buf.to_vec()
}

fn bench_startup(c: &mut Criterion) {
    let body = startup_body();
    // Fail loudly if the input stops being what the benchmark claims.
    assert!(matches!(
        startup::parse_body(&body),
        Ok(FrontendStartup::Startup(_))
    ));
    let mut group = c.benchmark_group("startup");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("parse_body", |b| {
        b.iter(|| startup::parse_body(black_box(&body)))
    });
    group.finish();
}

fn bench_proxy_v2(c: &mut Criterion) {
    let header = proxy_header::v2_proxy(
        "10.11.12.13:49152".parse().expect("literal address"),
        "10.0.3.7:6432".parse().expect("literal address"),
        Some("vpce-0123456789abcdef0"),
    );
    assert!(matches!(
        parse_v2(&header),
        Ok(ProxyHeader::Proxy {
            vpce_id: Some(_),
            ..
        })
    ));
    let mut group = c.benchmark_group("proxy_protocol");
    group.throughput(Throughput::Bytes(header.len() as u64));
    group.bench_function("parse_v2_ipv4_vpce", |b| {
        b.iter(|| parse_v2(black_box(&header)))
    });
    group.finish();
}

fn bench_framing(c: &mut Criterion) {
    let stream = data_rows();
    let mut group = c.benchmark_group("framing");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    group.bench_function("split_message_50_data_rows", |b| {
        b.iter_batched(
            || BytesMut::from(&stream[..]),
            |mut buf| {
                let mut n = 0;
                while let Ok(Some(message)) = split_message(&mut buf, MAX_MESSAGE_LEN) {
                    black_box(&message);
                    n += 1;
                }
                assert_eq!(n, ROWS + 2);
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("frame_tracker_50_data_rows", |b| {
        b.iter(|| {
            let mut tracker = FrameTracker::default();
            tracker.advance(black_box(&stream));
            assert!(tracker.at_boundary());
            tracker.last_tag()
        })
    });
    group.finish();
}

criterion_group!(benches, bench_startup, bench_proxy_v2, bench_framing);
criterion_main!(benches);
