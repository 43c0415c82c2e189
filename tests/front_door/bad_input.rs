//! Bad input: each gets an error (where PostgreSQL would send one; see
//! pre_startup.rs for the cases it answers with silence) and a close within
//! the startup timeout, while other clients keep working.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_clients_are_closed_and_others_served() {
    let a = cluster("cluster-bad");
    // startup_timeout is 3s in the test config.
    let proxy = Proxy::start(&config_text("", "allow", &tenant("acme", &a, ""))).await;

    // A well-behaved session that must survive everything below.
    let (survivor, _c) = connect(&proxy.pg_config("app.acme")).await.unwrap();
    survivor.simple_query("select 1").await.unwrap();

    // Garbage first bytes: read as an absurd length → closed without a
    // reply, as PostgreSQL does.
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let reply = read_until_close(&mut tcp, Duration::from_secs(5)).await;
    assert!(reply.is_empty(), "{reply:?}");

    // Oversized startup packet (PostgreSQL's limit is 10,000 bytes).
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let mut big = startup_packet(
        &[
            ("user", "app.acme"),
            ("application_name", &"x".repeat(10_100)),
        ],
        0,
    );
    big.truncate(64);
    tcp.write_all(&big).await.unwrap();
    let reply = read_until_close(&mut tcp, Duration::from_secs(5)).await;
    assert!(reply.is_empty(), "{reply:?}");

    // Truncated startup packet: the client gives up half-way.
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let packet = startup_packet(&[("user", "app.acme"), ("database", "app")], 0);
    tcp.write_all(&packet[..packet.len() / 2]).await.unwrap();
    tcp.shutdown().await.unwrap();
    let started = Instant::now();
    let _ = read_until_close(&mut tcp, Duration::from_secs(5)).await;
    assert!(started.elapsed() < Duration::from_secs(2));

    // Malformed parameters: no terminator.
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let mut body = (3u32 << 16).to_be_bytes().to_vec();
    body.extend_from_slice(b"user\0app");
    let mut p = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    p.extend_from_slice(&body);
    tcp.write_all(&p).await.unwrap();
    let reply = read_until_close(&mut tcp, Duration::from_secs(5)).await;
    assert_eq!(error_fields(&reply).unwrap().0, "08P01");

    // Protocol 2: 0A000.
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(&[0, 0, 0, 8, 0, 2, 0, 0]).await.unwrap();
    let reply = read_until_close(&mut tcp, Duration::from_secs(5)).await;
    assert_eq!(error_fields(&reply).unwrap().0, "0A000");

    // Byte-a-second client: cut off at the startup timeout without a
    // reply (as PostgreSQL at authentication_timeout), while the survivor
    // keeps working. It stops writing once pgcell has closed.
    let mut slow = TcpStream::connect(proxy.addr).await.unwrap();
    let started = Instant::now();
    let slow_task = tokio::spawn(async move {
        let packet = startup_packet(&[("user", "app.acme"), ("database", "app")], 0);
        for b in packet {
            slow.write_all(&[b]).await.unwrap();
            tokio::select! {
                _ = slow.readable() => break,
                _ = tokio::time::sleep(Duration::from_millis(700)) => {}
            }
        }
        slow
    });
    // Silent client too.
    let mut silent = TcpStream::connect(proxy.addr).await.unwrap();
    for _ in 0..3 {
        survivor.simple_query("select 1").await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let reply = read_until_close(&mut silent, Duration::from_secs(6)).await;
    assert!(reply.is_empty(), "{reply:?}");
    let mut slow = slow_task.await.unwrap();
    let reply = read_until_close(&mut slow, Duration::from_secs(6)).await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "held for {:?}",
        started.elapsed()
    );
    assert!(reply.is_empty(), "{reply:?}");

    // TLS handshake garbage after 'S'.
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(&SSL_REQUEST).await.unwrap();
    let mut s = [0u8; 1];
    tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut s)
        .await
        .unwrap();
    tcp.write_all(&[0x16, 3, 1, 0, 5, 1, 2, 3, 4, 5])
        .await
        .unwrap();
    // A TLS alert at most (never Postgres data), then the close.
    let reply = read_until_close(&mut tcp, Duration::from_secs(5)).await;
    assert!(reply.is_empty() || reply[0] == 0x15, "{reply:?}");

    survivor.simple_query("select 1").await.unwrap();
    let (fresh, _c) = connect(&proxy.pg_config("app.acme")).await.unwrap();
    fresh.simple_query("select 1").await.unwrap();

    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_and_lost_backends_get_08006() {
    let a = cluster("cluster-lost");
    let b = cluster("cluster-other");
    let dead = pgcell::free_port().unwrap();
    let text = config_text(
        "",
        "allow",
        &(tenant("acme", &a, "")
            + &tenant("other", &b, "")
            + &format!("[[tenants]]\nid = \"dead\"\nbackends = [\"127.0.0.1:{dead}\"]\n")
            + &format!(
                "[[tenants]]\nid = \"failover\"\nbackends = [\"127.0.0.1:{dead}\", \"{}\"]\n",
                b.addr()
            )),
    );
    let proxy = Proxy::start(&text).await;

    // Nothing listens: 08006 without internal detail.
    let err = connect(&proxy.pg_config("app.dead")).await.err().unwrap();
    assert_eq!(code_of(&err), "08006");
    assert!(!err.to_string().contains(&dead.to_string()), "{err}");
    // First backend down, second up: served by the second.
    let (client, _c) = connect(&proxy.pg_config("app.failover")).await.unwrap();
    assert_eq!(cluster_name(&client).await, "cluster-other");

    // A live session whose backend dies gets an ErrorResponse 08006.
    let (victim, conn) = connect(&proxy.pg_config("app.acme")).await.unwrap();
    victim.simple_query("select 1").await.unwrap();
    let (other, _c) = connect(&proxy.pg_config("app.other")).await.unwrap();
    let mut a = a;
    tokio::task::spawn_blocking(move || {
        a.stop("immediate").unwrap();
        a
    })
    .await
    .unwrap();
    let conn_result = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .unwrap()
        .unwrap();
    let err = conn_result.expect_err("connection ends with an error");
    assert!(
        code_of(&err) == "08006" || err.to_string().contains("terminating connection"),
        "{err}"
    );
    assert!(victim.simple_query("select 1").await.is_err());
    // The other tenant is unaffected.
    other.simple_query("select 1").await.unwrap();
    let m = proxy.metrics().await;
    assert!(metric(&m, "pgcell_backend_lost_total", &[("tenant", "acme")]).unwrap() >= 1.0);
    assert!(
        metric(
            &m,
            "pgcell_backend_connect_errors_total",
            &[("tenant", "dead")]
        )
        .unwrap()
            >= 1.0
    );
    proxy.stop().await;
}
