//! Replicas behind one load balancer answer a user alike: with the same
//! `[auth]` secret, two pgcell processes send the same SCRAM salt and
//! iteration count for a password user and for an unknown user, so a
//! prober comparing replicas cannot tell known users from unknown ones.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;
use crate::pooling::pooled_tenant;

/// The `s=…,i=…` of the SCRAM server-first-message `addr` sends `user`.
async fn salt_and_iterations(addr: SocketAddr, user: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&startup_packet(&[("user", user), ("database", "app")], 0))
        .await
        .unwrap();
    let (tag, body) = read_msg(&mut tcp).await;
    assert_eq!(
        (tag, &body[..4]),
        (b'R', &10i32.to_be_bytes()[..]),
        "{user}"
    );
    let first = b"n,,n=,r=fyko+d2lbbFgONRv9qkxdawL";
    let mut sasl = b"SCRAM-SHA-256\0".to_vec();
    sasl.extend_from_slice(&(first.len() as i32).to_be_bytes());
    sasl.extend_from_slice(first);
    let mut msg = vec![b'p'];
    msg.extend_from_slice(&((sasl.len() + 4) as u32).to_be_bytes());
    msg.extend_from_slice(&sasl);
    tcp.write_all(&msg).await.unwrap();
    let (tag, body) = read_msg(&mut tcp).await;
    assert_eq!(
        (tag, &body[..4]),
        (b'R', &11i32.to_be_bytes()[..]),
        "{user}"
    );
    let server_first = String::from_utf8(body[4..].to_vec()).unwrap();
    // r=<nonce>,s=<salt>,i=<iterations>: the nonce differs by design.
    server_first
        .split(',')
        .filter(|a| a.starts_with("s=") || a.starts_with("i="))
        .collect::<Vec<_>>()
        .join(",")
}

async fn read_msg(tcp: &mut TcpStream) -> (u8, Vec<u8>) {
    let tag = tcp.read_u8().await.unwrap();
    let len = tcp.read_u32().await.unwrap();
    let mut body = vec![0u8; len as usize - 4];
    tcp.read_exact(&mut body).await.unwrap();
    (tag, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_with_one_secret_answer_users_alike() {
    let a = cluster("cluster-replicas");
    let tenants = pooled_tenant("acme", &a, "mode = \"transaction\"");
    let shared = format!("[auth]\nsecret_file = \"{{secret}}\"\n{tenants}");
    let files = [
        ("pw", APP_PASSWORD),
        ("secret", "k4Vq0S8Yd3WzR1mN7pL2xC9bT6hJ5fG0aE"),
    ];
    let one = Proxy::start_with_files(&config_text("", "allow", &shared), &files).await;
    let two = Proxy::start_with_files(&config_text("", "allow", &shared), &files).await;
    let other_files = [
        ("pw", APP_PASSWORD),
        ("secret", "a-different-secret-of-32-bytes-or-more"),
    ];
    let other = Proxy::start_with_files(&config_text("", "allow", &shared), &other_files).await;
    let unset =
        Proxy::start_with_files(&config_text("", "allow", &tenants), &[("pw", APP_PASSWORD)]).await;

    for user in ["app.acme", "nobody.acme"] {
        let first = salt_and_iterations(one.addr, user).await;
        assert!(first.contains("i=4096"), "{first}");
        // Stable within a replica, and the same on its twin.
        assert_eq!(salt_and_iterations(one.addr, user).await, first, "{user}");
        assert_eq!(salt_and_iterations(two.addr, user).await, first, "{user}");
        // Another secret, or none (random per process), gives other salts.
        assert_ne!(salt_and_iterations(other.addr, user).await, first, "{user}");
        assert_ne!(salt_and_iterations(unset.addr, user).await, first, "{user}");
    }
    // And the password user still logs in.
    let (client, _c) = connect(&one.pg_config("app.acme")).await.unwrap();
    client.simple_query("select 1").await.unwrap();
    for p in [one, two, other, unset] {
        p.stop().await;
    }
}
