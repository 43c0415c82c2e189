//! Cancel across replicas: two pgcell instances in one process, each the
//! other's `[cancel]` peer. A `CancelRequest` that reaches the replica not
//! serving the client is forwarded to the one that is.

use std::net::SocketAddr;
use std::time::Duration;

use pgcell::proxy_header::v2_proxy;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_postgres::{Client, NoTls};

use crate::harness::*;

const CANCELS: &str = "pgcell_cancel_requests_total";

fn replica(listen_extra: &str, id: u8, peer: Option<(u8, SocketAddr)>, rest: &str) -> String {
    let peers = peer
        .map(|(id, addr)| format!("{{ id = {id}, addr = \"{addr}\" }}"))
        .unwrap_or_default();
    config_text(
        listen_extra,
        "allow",
        &format!("[cancel]\ninstance_id = {id}\npeers = [{peers}]\n\n{rest}"),
    )
}

/// A TCP connection to `addr`, after a PROXY v2 header when `proxy`.
async fn tcp(addr: SocketAddr, proxy: bool) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    if proxy {
        let header = v2_proxy("10.1.2.3:5555".parse().unwrap(), addr, None);
        s.write_all(&header).await.unwrap();
    }
    s
}

fn count(m: &str, outcome: &str) -> f64 {
    metric(m, CANCELS, &[("outcome", outcome)]).unwrap_or(0.0)
}

/// Runs `select pg_sleep(30)` on `client`, sends its cancel key to
/// `cancel_at`, and expects 57014 quickly.
async fn cancel_via(client: Client, cancel_at: SocketAddr, proxy: bool) {
    let token = client.cancel_token();
    let mut sleeper = tokio::spawn(async move { client.simple_query("select pg_sleep(30)").await });
    let err = cancel_until_done(&mut sleeper, || {
        let token = token.clone();
        async move {
            token
                .cancel_query_raw(tcp(cancel_at, proxy).await, NoTls)
                .await
                .unwrap()
        }
    })
    .await
    .expect_err("the query was cancelled");
    assert_eq!(code_of(&err), "57014");
}

async fn scenario(a: &pgcell::Cluster, proxy: bool) {
    let listen = if proxy {
        "proxy_protocol = \"required\""
    } else {
        ""
    };
    let acme = tenant("acme", a, "");
    // Replica 1 starts without peers and learns replica 2 on reload, once
    // replica 2's port is known.
    let one = Proxy::start(&replica(listen, 1, None, &acme)).await;
    let two = Proxy::start(&replica(listen, 2, Some((1, one.addr)), &acme)).await;
    write(
        &one.config_path(),
        &replica(listen, 1, Some((2, two.addr)), &acme),
    );
    one.reload_and_wait().await;
    let before = two.metrics().await;

    // A client of replica 1, cancelled through replica 2.
    let config = one.pg_config("app.acme");
    let client = connect_over(&config, tcp(one.addr, proxy).await)
        .await
        .unwrap();
    cancel_via(client, two.addr, proxy).await;
    // And the other way round, through the peer learnt on reload.
    let client = connect_over(&two.pg_config("app.acme"), tcp(two.addr, proxy).await)
        .await
        .unwrap();
    cancel_via(client, one.addr, proxy).await;

    // A key owned by a replica that is not a peer is dropped, not relayed.
    let mut s = tcp(two.addr, proxy).await;
    let mut forged = vec![0, 0, 0, 16, 4, 210, 22, 46];
    forged.extend_from_slice(&(7i32 << 23 | 1234).to_be_bytes());
    forged.extend_from_slice(&[0, 0, 0, 2]);
    s.write_all(&forged).await.unwrap();
    assert!(read_until_close(&mut s, Duration::from_secs(5))
        .await
        .is_empty());

    // The metrics recorder is shared by both replicas (and every test in
    // this process): compare before and after. A cancel's outcome is
    // counted after its connection is closed: wait for the counts.
    let counted = poll(Duration::from_secs(5), || async {
        let after = two.metrics().await;
        (count(&after, "forwarded_to_peer") >= count(&before, "forwarded_to_peer") + 2.0
            && count(&after, "forwarded") >= count(&before, "forwarded") + 2.0
            && count(&after, "unknown_peer") >= count(&before, "unknown_peer") + 1.0)
            .then_some(after)
    })
    .await;
    let after = match counted {
        Ok(after) => after,
        Err(_) => two.metrics().await,
    };
    assert!(
        count(&after, "forwarded_to_peer") >= count(&before, "forwarded_to_peer") + 2.0,
        "{after}"
    );
    assert!(
        count(&after, "forwarded") >= count(&before, "forwarded") + 2.0,
        "{after}"
    );
    assert!(
        count(&after, "unknown_peer") >= count(&before, "unknown_peer") + 1.0,
        "{after}"
    );
    one.stop().await;
    two.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_is_forwarded_to_the_owning_replica() {
    let a = cluster("cluster-cancel-peers");
    scenario(&a, false).await;
    // Behind the NLB every connection starts with a PROXY header, so a
    // forwarded cancel must too.
    scenario(&a, true).await;
}
