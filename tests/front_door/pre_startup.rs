//! Bytes before the `StartupMessage`, sent both to a direct PostgreSQL and
//! through pgcell: where PostgreSQL's postmaster closes without a reply
//! (invalid length, bad CancelRequest, EOF inside the packet, the startup
//! timeout), pgcell does too; where it answers, both answer alike.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

/// How the client ends its part.
#[derive(Clone, Copy, Debug)]
enum End {
    /// Keeps the connection open and waits.
    Wait,
    /// Shuts its side down after writing (EOF for the server).
    HalfClose,
}

/// (case, bytes to PostgreSQL, bytes to pgcell, how the client ends,
/// expected outcome of both, as a prefix).
type Case = (&'static str, Vec<u8>, Vec<u8>, End, &'static str);

/// Sends `bytes` to `addr` and returns everything sent back before close.
async fn reply(addr: SocketAddr, bytes: &[u8], end: End) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    if let End::HalfClose = end {
        tcp.shutdown().await.unwrap();
    }
    // What arrives before the close, or within 8 s (an answered startup
    // then waits for a password).
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    while let Ok(read) = tokio::time::timeout_at(deadline, tcp.read_buf(&mut out)).await {
        // A reset (unread bytes at the close) is a close too.
        if !matches!(read, Ok(n) if n > 0) {
            return out;
        }
    }
    if out.is_empty() {
        out.extend_from_slice(b"still open after 8 s");
    }
    out
}

/// What a reply amounts to: silence, an ErrorResponse and its SQLSTATE,
/// or the first message type.
fn outcome(bytes: &[u8]) -> String {
    match bytes.first() {
        None => "silence".to_owned(),
        // PostgreSQL answers protocol 2 in protocol 2's format, which has
        // no SQLSTATE.
        Some(b'E') => match error_fields(bytes) {
            Some((code, _, _)) => format!("E {code}"),
            None => "E".to_owned(),
        },
        Some(&t) => format!("{}", t as char),
    }
}

/// A StartupMessage exactly `total` bytes long, `application_name` padded.
fn startup_of_len(user: &str, total: usize) -> Vec<u8> {
    let base = startup_packet(&[("user", user), ("application_name", "")], 0).len();
    let p = startup_packet(
        &[
            ("user", user),
            ("application_name", &"x".repeat(total - base)),
        ],
        0,
    );
    assert_eq!(p.len(), total);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_startup_silence_matches_postgres() {
    // authentication_timeout bounds PostgreSQL's wait for the startup
    // packet, as startup_timeout (3 s in the test config) bounds pgcell's.
    let a = cluster_with("cluster-silence", &["authentication_timeout = '1s'"], &[]);
    let proxy = Proxy::start(&config_text("", "allow", &tenant("acme", &a, ""))).await;
    let direct = a.addr();

    let cancel_short = [0, 0, 0, 15, 4, 210, 22, 46, 0, 0, 0, 1, 0, 0, 0];
    let mut cancel_long = vec![0, 0, 0, 20, 4, 210, 22, 46];
    cancel_long.extend_from_slice(&[0; 12]);
    let startup = startup_packet(&[("user", "app"), ("database", "app")], 0);
    let mut no_terminator = (3u32 << 16).to_be_bytes().to_vec();
    no_terminator.extend_from_slice(b"user\0app");
    let mut no_terminator_packet = ((no_terminator.len() + 4) as u32).to_be_bytes().to_vec();
    no_terminator_packet.extend_from_slice(&no_terminator);

    let cases: Vec<Case> = vec![
        (
            "Terminate before startup (node-postgres connect() then end())",
            b"X\0\0\0\x04".to_vec(),
            b"X\0\0\0\x04".to_vec(),
            End::Wait,
            "silence",
        ),
        (
            "HTTP request",
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            End::Wait,
            "silence",
        ),
        (
            "length 7",
            vec![0, 0, 0, 7, 0, 3, 0],
            vec![0, 0, 0, 7, 0, 3, 0],
            End::Wait,
            "silence",
        ),
        (
            "length 10,005",
            startup_of_len("app", 10_005)[..64].to_vec(),
            startup_of_len("app.acme", 10_005)[..64].to_vec(),
            End::Wait,
            "silence",
        ),
        (
            "length 10,004 is still a startup packet",
            startup_of_len("app", 10_004),
            startup_of_len("app.acme", 10_004),
            End::Wait,
            "R",
        ),
        (
            "CancelRequest one byte short",
            cancel_short.to_vec(),
            cancel_short.to_vec(),
            End::Wait,
            "silence",
        ),
        (
            "CancelRequest with a longer key",
            cancel_long.clone(),
            cancel_long.clone(),
            End::Wait,
            "silence",
        ),
        (
            "EOF inside the length word",
            vec![0, 0],
            vec![0, 0],
            End::HalfClose,
            "silence",
        ),
        (
            "EOF inside the packet",
            startup[..startup.len() / 2].to_vec(),
            startup[..startup.len() / 2].to_vec(),
            End::HalfClose,
            "silence",
        ),
        (
            "silent client (startup timeout)",
            vec![],
            vec![],
            End::Wait,
            "silence",
        ),
        (
            "half a packet, then nothing (startup timeout)",
            startup[..startup.len() / 2].to_vec(),
            startup[..startup.len() / 2].to_vec(),
            End::Wait,
            "silence",
        ),
        // Answered by both.
        (
            "protocol 2",
            vec![0, 0, 0, 8, 0, 2, 0, 0],
            vec![0, 0, 0, 8, 0, 2, 0, 0],
            End::Wait,
            "E",
        ),
        (
            "parameters without a terminator",
            no_terminator_packet.clone(),
            no_terminator_packet.clone(),
            End::Wait,
            "E 08P01",
        ),
    ];
    let before = proxy.metrics().await;
    let count = |m: &str, kind: &str| {
        metric(m, "pgcell_handshake_errors_total", &[("kind", kind)]).unwrap_or(0.0)
    };
    let mut mismatches = Vec::new();
    // Concurrently: the timeout cases take seconds each.
    let runs = cases
        .iter()
        .map(|(name, to_pg, to_cell, end, want)| async move {
            let (pg, cell) =
                tokio::join!(reply(direct, to_pg, *end), reply(proxy.addr, to_cell, *end));
            (name, outcome(&pg), outcome(&cell), *want)
        });
    for (name, pg, cell, want) in futures_util::future::join_all(runs).await {
        if !pg.starts_with(want) || !cell.starts_with(want) {
            mismatches.push(format!(
                "{name}: PostgreSQL {pg}, pgcell {cell}, expected {want}"
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));

    // Silence is not invisibility: each case is still counted.
    let after = proxy.metrics().await;
    assert!(
        count(&after, "startup") - count(&before, "startup") >= 7.0,
        "{after}"
    );
    assert!(count(&after, "timeout") - count(&before, "timeout") >= 2.0);
    proxy.stop().await;
}

/// Everything a server sends on a fresh connection after `bytes` until it
/// closes (true) or 8 s pass (false).
async fn until_close(addr: SocketAddr, bytes: &[u8]) -> (Vec<u8>, bool) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    while let Ok(read) = tokio::time::timeout_at(deadline, tcp.read_buf(&mut out)).await {
        if !matches!(read, Ok(n) if n > 0) {
            return (out, true);
        }
    }
    (out, false)
}

/// The message types in `bytes`.
fn tags(bytes: &[u8]) -> String {
    let mut tags = String::new();
    let mut rest = bytes;
    while rest.len() >= 5 {
        tags.push(char::from(rest[0]));
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        rest = rest.get(1 + len..).unwrap_or(&[]);
    }
    tags
}

/// A client that stalls inside the password exchange: PostgreSQL ends it
/// at `authentication_timeout` without a word (its FATAL 57014 goes to
/// the log only), pgcell at `backend.auth_timeout` the same way, counted
/// as an authentication failure of its own kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stalling_in_authentication_is_closed_silently() {
    let a = cluster_with(
        "cluster-auth-stall",
        &["authentication_timeout = '1s'"],
        &[],
    );
    let pooled = crate::pooling::pooled_tenant("acme", &a, "mode = \"transaction\"\nsize = 1");
    let proxy = Proxy::start_with_files(
        &config_text(
            "",
            "allow",
            &format!("[backend]\nauth_timeout = \"1s\"\n\n{pooled}"),
        ),
        &[("pw", APP_PASSWORD)],
    )
    .await;
    let to_pg = startup_packet(&[("user", "app"), ("database", "app")], 0);
    let to_cell = startup_packet(&[("user", "app.acme"), ("database", "app")], 0);
    let (pg, cell) = tokio::join!(
        until_close(a.addr(), &to_pg),
        until_close(proxy.addr, &to_cell),
    );
    // The SASL request, nothing after it, then the close.
    assert_eq!((tags(&pg.0), pg.1), ("R".to_owned(), true), "PostgreSQL");
    assert_eq!((tags(&cell.0), cell.1), ("R".to_owned(), true), "pgcell");
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "pgcell_auth_failures_total",
            &[("tenant", "acme"), ("reason", "timeout")]
        ),
        Some(1.0),
        "{metrics}"
    );
    proxy.stop().await;
}
