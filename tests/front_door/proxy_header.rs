//! PROXY protocol on the data port: v2 with and without the AWS VPC
//! endpoint TLV, v1, LOCAL health checks, and the modes.

use std::time::Duration;

use pgcell::proxy_header as build;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::harness::*;

const ALLOWED: &str = "vpce-0123456789abcdef0";

async fn with_header(proxy: &Proxy, header: &[u8]) -> TcpStream {
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(header).await.unwrap();
    tcp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vpce_policy_uses_the_proxy_v2_header() {
    let a = cluster("cluster-pp");
    let text = config_text(
        "proxy_protocol = \"required\"",
        "allow",
        &(tenant(
            "acme",
            &a,
            &format!("allowed_vpce_ids = [\"{ALLOWED}\"]\nallowed_cidrs = [\"10.0.0.0/8\"]"),
        ) + &tenant("open", &a, "")),
    );
    let proxy = Proxy::start(&text).await;
    let nlb = "10.0.0.1:6432".parse().unwrap();

    // Listed vpce id, client address inside allowed_cidrs: admitted, and
    // the CIDR check used the PROXY address, not the socket's 127.0.0.1.
    let header = build::v2_proxy("10.20.30.40:5555".parse().unwrap(), nlb, Some(ALLOWED));
    let tcp = with_header(&proxy, &header).await;
    let client = connect_over(&proxy.pg_config("app.acme"), tcp)
        .await
        .unwrap();
    assert_eq!(cluster_name(&client).await, "cluster-pp");

    // Unknown vpce id.
    let header = build::v2_proxy(
        "10.20.30.40:5555".parse().unwrap(),
        nlb,
        Some("vpce-ffffffffffffffff0"),
    );
    let tcp = with_header(&proxy, &header).await;
    let err = connect_over(&proxy.pg_config("app.acme"), tcp)
        .await
        .err()
        .unwrap();
    assert_eq!(code_of(&err), "28000");

    // No vpce TLV.
    let header = build::v2_proxy("10.20.30.40:5555".parse().unwrap(), nlb, None);
    let tcp = with_header(&proxy, &header).await;
    let err = connect_over(&proxy.pg_config("app.acme"), tcp)
        .await
        .err()
        .unwrap();
    assert_eq!(code_of(&err), "28000");

    // Allowed vpce, address outside the CIDR.
    let header = build::v2_proxy("192.168.1.1:5555".parse().unwrap(), nlb, Some(ALLOWED));
    let tcp = with_header(&proxy, &header).await;
    let err = connect_over(&proxy.pg_config("app.acme"), tcp)
        .await
        .err()
        .unwrap();
    assert_eq!(code_of(&err), "28000");

    // A tenant without vpce policy over IPv6 PROXY addresses.
    let header = build::v2_proxy(
        "[fd00::5]:1".parse().unwrap(),
        "[fd00::1]:6432".parse().unwrap(),
        None,
    );
    let tcp = with_header(&proxy, &header).await;
    let client = connect_over(&proxy.pg_config("app.open"), tcp)
        .await
        .unwrap();
    client.simple_query("select 1").await.unwrap();

    // v1 text header.
    let tcp = with_header(&proxy, b"PROXY TCP4 10.1.1.1 10.0.0.1 40000 6432\r\n").await;
    let client = connect_over(&proxy.pg_config("app.open"), tcp)
        .await
        .unwrap();
    client.simple_query("select 1").await.unwrap();

    // Required mode: no header is an error and a close, no Postgres reply.
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(&startup_packet(&[("user", "app.open")], 0))
        .await
        .unwrap();
    let reply = read_until_close(&mut tcp, Duration::from_secs(5)).await;
    assert!(reply.is_empty(), "{reply:?}");

    // LOCAL (NLB health check): accepted and closed quietly.
    let mut tcp = with_header(&proxy, &build::v2_local()).await;
    let reply = read_until_close(&mut tcp, Duration::from_secs(5)).await;
    assert!(reply.is_empty());

    // Truncated header: closed.
    let mut tcp = with_header(&proxy, &header[..20]).await;
    tcp.shutdown().await.unwrap();
    let reply = read_until_close(&mut tcp, Duration::from_secs(5)).await;
    assert!(reply.is_empty());

    // Rejection reasons carry the tenant label, so other tests cannot
    // make these pass; unlabelled counters are checked in tests/counters.rs.
    let m = proxy.metrics().await;
    for reason in ["vpce_not_allowed", "vpce_missing", "cidr_not_allowed"] {
        assert!(
            metric(
                &m,
                "pgcell_client_rejections_total",
                &[("reason", reason), ("tenant", "acme")]
            )
            .unwrap_or(0.0)
                >= 1.0,
            "{reason}"
        );
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_modes_off_and_optional() {
    let a = cluster("cluster-pm");
    let off = Proxy::start(&config_text(
        "proxy_protocol = \"off\"",
        "allow",
        &tenant("t", &a, ""),
    ))
    .await;
    // A header on a listener with it off: closed without serving.
    let header = build::v2_proxy(
        "10.1.1.1:1".parse().unwrap(),
        "10.0.0.1:2".parse().unwrap(),
        None,
    );
    let mut tcp = with_header(&off, &header).await;
    assert!(read_until_close(&mut tcp, Duration::from_secs(5))
        .await
        .is_empty());
    // Without one it serves.
    let (client, _c) = connect(&off.pg_config("app.t")).await.unwrap();
    client.simple_query("select 1").await.unwrap();
    off.stop().await;

    let optional = Proxy::start(&config_text(
        "proxy_protocol = \"optional\"",
        "allow",
        &tenant("t", &a, ""),
    ))
    .await;
    let (client, _c) = connect(&optional.pg_config("app.t")).await.unwrap();
    client.simple_query("select 1").await.unwrap();
    let tcp = with_header(&optional, &header).await;
    let client = connect_over(&optional.pg_config("app.t"), tcp)
        .await
        .unwrap();
    client.simple_query("select 1").await.unwrap();
    // psql's SSLRequest (8 bytes) is not mistaken for a header.
    let port = optional.addr.port();
    let out = psql(
        &format!("host=127.0.0.1 port={port} user=app.t dbname=app sslmode=require"),
        "select 7",
    )
    .unwrap();
    assert_eq!(out, "7");
    optional.stop().await;
}
