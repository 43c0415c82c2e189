//! Exact counter deltas for metrics without a tenant label.
//!
//! The metrics recorder is process-wide; this binary holds a single test so
//! nothing else moves these counters while it measures.

#[path = "front_door/harness.rs"]
mod harness;

use std::time::Duration;

use harness::*;
use pgcell::proxy_protocol::build;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn snapshot(proxy: &Proxy, series: &[(&str, &[(&str, &str)])]) -> Vec<f64> {
    let text = proxy.metrics().await;
    series
        .iter()
        .map(|(name, labels)| metric(&text, name, labels).unwrap_or(0.0))
        .collect()
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
    let series: &[(&str, &[(&str, &str)])] = &[
        (
            "pgcell_handshake_errors_total",
            &[("kind", "proxy_protocol")],
        ),
        ("pgcell_handshake_errors_total", &[("kind", "startup")]),
        ("pgcell_handshake_errors_total", &[("kind", "timeout")]),
        ("pgcell_handshake_errors_total", &[("kind", "tls")]),
        (
            "pgcell_proxy_headers_total",
            &[("version", "2"), ("command", "local")],
        ),
        (
            "pgcell_proxy_headers_total",
            &[("version", "1"), ("command", "local")],
        ),
        (
            "pgcell_proxy_headers_total",
            &[("version", "2"), ("command", "proxy")],
        ),
        (
            "pgcell_cancel_requests_total",
            &[("outcome", "unknown_key")],
        ),
        (
            "pgcell_client_rejections_total",
            &[("reason", "global_connection_limit")],
        ),
        ("pgcell_tcp_connections_accepted_total", &[]),
        ("pgcell_handshake_errors_total", &[("kind", "io")]),
    ];
    let mut expected = vec![0.0; series.len()];
    let before = snapshot(&proxy, series).await;

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
    expected[0] += 1.0;
    expected[9] += 1.0;

    // Oversized startup packet: closed without a reply, as PostgreSQL
    // does, and still counted.
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(&[0, 1, 0, 0, 0, 3, 0, 0]).await.unwrap();
    assert!(read_until_close(&mut tcp, Duration::from_secs(5))
        .await
        .is_empty());
    expected[1] += 1.0;
    expected[9] += 1.0;

    // Silent client: startup_timeout (3 s in the test config); closed
    // without a reply, as PostgreSQL at authentication_timeout.
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    assert!(read_until_close(&mut tcp, Duration::from_secs(6))
        .await
        .is_empty());
    expected[2] += 1.0;
    expected[9] += 1.0;

    // TLS handshake garbage.
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(&SSL_REQUEST).await.unwrap();
    assert_eq!(tcp.read_u8().await.unwrap(), b'S');
    tcp.write_all(&[0x16, 3, 1, 0, 5, 1, 2, 3, 4, 5])
        .await
        .unwrap();
    let _ = read_until_close(&mut tcp, Duration::from_secs(5)).await;
    expected[3] += 1.0;
    expected[9] += 1.0;

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
    expected[4] += 1.0;
    expected[5] += 1.0;
    expected[9] += 2.0;

    // A proxied connection that cancels with a key nobody holds.
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(&header).await.unwrap();
    tcp.write_all(&[0, 0, 0, 16, 4, 210, 22, 46, 0, 0, 0, 1, 0, 0, 0, 2])
        .await
        .unwrap();
    assert!(read_until_close(&mut tcp, Duration::from_secs(5))
        .await
        .is_empty());
    expected[6] += 1.0;
    expected[7] += 1.0;
    expected[9] += 1.0;

    // Over listen.max_client_connections (3): the fourth socket gets 53300
    // at once, before it sends anything.
    let held: Vec<TcpStream> = futures_connect(proxy.addr, 3).await;
    // Give the accept loop time to take the three slots, even on a busy box.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let reply = read_until_close(&mut tcp, Duration::from_secs(5)).await;
    let (code, msg, _) = error_fields(&reply).unwrap();
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("53300", "sorry, too many clients already")
    );
    expected[8] += 1.0;
    expected[9] += 4.0;
    // Closing without sending a byte is a disconnect, not a PROXY error.
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    expected[10] += 3.0;

    let after = snapshot(&proxy, series).await;
    for (i, (name, labels)) in series.iter().enumerate() {
        assert_eq!(after[i] - before[i], expected[i], "{name} {labels:?}");
    }
    proxy.stop().await;
}

async fn futures_connect(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(TcpStream::connect(addr).await.unwrap());
    }
    v
}
