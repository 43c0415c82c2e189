//! Exact counter deltas for metrics without a tenant label.
//!
//! The metrics recorder is process-wide; this binary holds a single test so
//! nothing else moves these counters while it measures.

// A test binary has no public API: its support modules' `pub` is for
// the test modules beside them.
#![allow(unreachable_pub, missing_docs)]

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use pgcell::proxy_header as build;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The counters this test measures, each by its name.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Counters {
    proxy_protocol_errors: f64,
    startup_errors: f64,
    timeout_errors: f64,
    tls_errors: f64,
    v2_local_headers: f64,
    v1_local_headers: f64,
    v2_proxy_headers: f64,
    unknown_cancel_keys: f64,
    global_limit_rejections: f64,
    accepted: f64,
    io_errors: f64,
}

impl Counters {
    /// The counters as `/metrics` shows them now (0 for a series not
    /// there yet).
    async fn read(proxy: &Proxy) -> Counters {
        let text = proxy.metrics().await;
        let m = |name: &str, labels: &[(&str, &str)]| metric_or_zero(&text, name, labels);
        let handshake = |kind: &str| m("pgcell_handshake_errors_total", &[("kind", kind)]);
        let headers = |version: &str, command: &str| {
            m(
                "pgcell_proxy_headers_total",
                &[("version", version), ("command", command)],
            )
        };
        Counters {
            proxy_protocol_errors: handshake("proxy_protocol"),
            startup_errors: handshake("startup"),
            timeout_errors: handshake("timeout"),
            tls_errors: handshake("tls"),
            v2_local_headers: headers("2", "local"),
            v1_local_headers: headers("1", "local"),
            v2_proxy_headers: headers("2", "proxy"),
            unknown_cancel_keys: m(
                "pgcell_cancel_requests_total",
                &[("outcome", "unknown_key")],
            ),
            global_limit_rejections: m(
                "pgcell_client_rejections_total",
                &[("reason", "global_connection_limit")],
            ),
            accepted: m("pgcell_tcp_connections_accepted_total", &[]),
            io_errors: handshake("io"),
        }
    }

    /// How far each counter moved from `before`.
    fn since(self, before: Counters) -> Counters {
        Counters {
            proxy_protocol_errors: self.proxy_protocol_errors - before.proxy_protocol_errors,
            startup_errors: self.startup_errors - before.startup_errors,
            timeout_errors: self.timeout_errors - before.timeout_errors,
            tls_errors: self.tls_errors - before.tls_errors,
            v2_local_headers: self.v2_local_headers - before.v2_local_headers,
            v1_local_headers: self.v1_local_headers - before.v1_local_headers,
            v2_proxy_headers: self.v2_proxy_headers - before.v2_proxy_headers,
            unknown_cancel_keys: self.unknown_cancel_keys - before.unknown_cancel_keys,
            global_limit_rejections: self.global_limit_rejections - before.global_limit_rejections,
            accepted: self.accepted - before.accepted,
            io_errors: self.io_errors - before.io_errors,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failure_moves_exactly_its_counter() {
    let a = cluster("cluster-counters");
    let proxy = Proxy::start(&config_text(
        "proxy_protocol = \"optional\"\nmax_client_connections = 3",
        "allow",
        &tenant("acme", &a, ""),
    ))
    .await;
    let mut expected = Counters::default();
    let before = Counters::read(&proxy).await;

    // Truncated v2 header.
    let header = build::v2_proxy(
        "10.0.0.9:1".parse().unwrap(),
        "10.0.0.1:2".parse().unwrap(),
        None,
    );
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(&header[..20]).await.unwrap();
    tcp.shutdown().await.unwrap();
    assert!(read_until_close(&mut tcp, Duration::from_secs(5))
        .await
        .is_empty());
    expected.proxy_protocol_errors += 1.0;
    expected.accepted += 1.0;

    // Oversized startup packet: closed without a reply, as PostgreSQL
    // does, and still counted.
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(&[0, 1, 0, 0, 0, 3, 0, 0]).await.unwrap();
    assert!(read_until_close(&mut tcp, Duration::from_secs(5))
        .await
        .is_empty());
    expected.startup_errors += 1.0;
    expected.accepted += 1.0;

    // Silent client: startup_timeout (3 s in the test config); closed
    // without a reply, as PostgreSQL at authentication_timeout.
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    assert!(read_until_close(&mut tcp, Duration::from_secs(6))
        .await
        .is_empty());
    expected.timeout_errors += 1.0;
    expected.accepted += 1.0;

    // TLS handshake garbage.
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(&SSL_REQUEST).await.unwrap();
    assert_eq!(tcp.read_u8().await.unwrap(), b'S');
    tcp.write_all(&[0x16, 3, 1, 0, 5, 1, 2, 3, 4, 5])
        .await
        .unwrap();
    let _ = read_until_close(&mut tcp, Duration::from_secs(5)).await;
    expected.tls_errors += 1.0;
    expected.accepted += 1.0;

    // NLB health checks: v2 LOCAL and v1 UNKNOWN.
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(&build::v2_local()).await.unwrap();
    assert!(read_until_close(&mut tcp, Duration::from_secs(5))
        .await
        .is_empty());
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(b"PROXY UNKNOWN\r\n").await.unwrap();
    assert!(read_until_close(&mut tcp, Duration::from_secs(5))
        .await
        .is_empty());
    expected.v2_local_headers += 1.0;
    expected.v1_local_headers += 1.0;
    expected.accepted += 2.0;

    // A proxied connection that cancels with a key nobody holds.
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(&header).await.unwrap();
    tcp.write_all(&[0, 0, 0, 16, 4, 210, 22, 46, 0, 0, 0, 1, 0, 0, 0, 2])
        .await
        .unwrap();
    assert!(read_until_close(&mut tcp, Duration::from_secs(5))
        .await
        .is_empty());
    expected.v2_proxy_headers += 1.0;
    expected.unknown_cancel_keys += 1.0;
    expected.accepted += 1.0;

    // Over listen.max_client_connections (3): the fourth socket gets 53300
    // at once, before it sends anything.
    let held: Vec<TcpStream> = futures_connect(proxy.addr, 3).await;
    // The accept loop has taken the three slots once it counts them.
    let accepted = expected.accepted + 3.0;
    eventually(
        Duration::from_secs(10),
        "the three held connections are accepted",
        || async { Counters::read(&proxy).await.since(before).accepted == accepted },
    )
    .await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let reply = read_until_close(&mut tcp, Duration::from_secs(5)).await;
    let (code, msg, _) = error_fields(&reply).unwrap();
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("53300", "sorry, too many clients already")
    );
    expected.global_limit_rejections += 1.0;
    expected.accepted += 4.0;
    // Closing without sending a byte is a disconnect, not a PROXY error.
    drop(held);
    expected.io_errors += 3.0;

    // The closes are counted by the sessions' tasks: wait for them.
    let moved = poll(Duration::from_secs(10), || async {
        let moved = Counters::read(&proxy).await.since(before);
        if moved == expected {
            Ok(moved)
        } else {
            Err(moved)
        }
    })
    .await;
    assert_eq!(moved, Ok(expected));
    proxy.stop().await;
}

async fn futures_connect(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(TcpStream::connect(addr).await.unwrap());
    }
    v
}
