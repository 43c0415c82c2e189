//! Pre-startup negotiation against real clients: direct TLS with ALPN,
//! GSSENCRequest then SSLRequest, NegotiateProtocolVersion, TLS modes,
//! cancel through pgcell, TLS to backends.

use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_requires_alpn_postgresql() {
    let a = cluster("cluster-dt");
    let proxy = Proxy::start(&config_text("", "allow", &tenant("acme", &a, ""))).await;
    let name = ServerName::try_from("acme.pg.test").unwrap();

    // ClientHello first, ALPN "postgresql": served, tenant from SNI.
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(proxy.tls_client(Some(b"postgresql")))
        .connect(name.clone(), tcp)
        .await
        .unwrap();
    let client = connect_over(&proxy.pg_config("app"), tls).await.unwrap();
    assert_eq!(cluster_name(&client).await, "cluster-dt");

    // No ALPN: refused with an error inside TLS, then closed.
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(proxy.tls_client(None))
        .connect(name, tcp)
        .await
        .unwrap();
    let reply = read_until_close(&mut tls, Duration::from_secs(5)).await;
    let (code, msg, _) = error_fields(&reply).expect("an ErrorResponse");
    assert_eq!(code, "08P01");
    assert!(msg.contains("ALPN"), "{msg}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gssenc_declined_then_ssl_then_startup() {
    let a = cluster("cluster-gss");
    let proxy = Proxy::start(&config_text("", "allow", &tenant("acme", &a, ""))).await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(&GSSENC_REQUEST).await.unwrap();
    assert_eq!(tcp.read_u8().await.unwrap(), b'N');
    tcp.write_all(&SSL_REQUEST).await.unwrap();
    assert_eq!(tcp.read_u8().await.unwrap(), b'S');
    let tls = tokio_rustls::TlsConnector::from(proxy.tls_client(Some(b"postgresql")))
        .connect(ServerName::try_from("acme.pg.test").unwrap(), tcp)
        .await
        .unwrap();
    let client = connect_over(&proxy.pg_config("app"), tls).await.unwrap();
    assert_eq!(cluster_name(&client).await, "cluster-gss");

    // libpq with gssencmode=prefer on a build with GSSAPI sends
    // GSSENCRequest first; psql here goes through either way.
    let port = proxy.addr.port();
    let out = psql(
        &format!(
            "host=127.0.0.1 port={port} user=app.acme dbname=app sslmode=require gssencmode=prefer"
        ),
        "select 3",
    )
    .unwrap();
    assert_eq!(out, "3");

    // A second SSLRequest inside TLS is a protocol violation.
    let mut tls = proxy.tls_stream("acme.pg.test").await;
    tls.write_all(&SSL_REQUEST).await.unwrap();
    let reply = read_until_close(&mut tls, Duration::from_secs(5)).await;
    assert_eq!(error_fields(&reply).unwrap().0, "08P01");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_protocol_minor_gets_negotiate_protocol_version() {
    let a = cluster("cluster-npv");
    let proxy = Proxy::start(&config_text("", "allow", &tenant("acme", &a, ""))).await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let packet = startup_packet(
        &[
            ("user", "app.acme"),
            ("database", "app"),
            ("_pq_.future", "on"),
        ],
        2,
    );
    tcp.write_all(&packet).await.unwrap();
    // NegotiateProtocolVersion: newest minor 0, one unrecognised option.
    assert_eq!(tcp.read_u8().await.unwrap(), b'v');
    let len = tcp.read_u32().await.unwrap();
    let mut body = vec![0u8; len as usize - 4];
    tcp.read_exact(&mut body).await.unwrap();
    assert_eq!(&body[..8], &[0, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(&body[8..], b"_pq_.future\0");
    // Then the backend's authentication request, as for protocol 3.0.
    assert_eq!(tcp.read_u8().await.unwrap(), b'R');
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_modes_disable_and_require() {
    let a = cluster("cluster-tm");
    let disabled = Proxy::start(&config_text("", "disable", &tenant("acme", &a, ""))).await;
    let port = disabled.addr.port();
    // sslmode=prefer falls back to plaintext after 'N'.
    let out = psql(
        &format!("host=127.0.0.1 port={port} user=app.acme dbname=app sslmode=prefer"),
        "select 1",
    )
    .unwrap();
    assert_eq!(out, "1");
    let err = psql(
        &format!("host=127.0.0.1 port={port} user=app.acme dbname=app sslmode=require"),
        "select 1",
    )
    .unwrap_err();
    assert!(err.contains("does not support SSL"), "{err}");
    disabled.stop().await;

    let required = Proxy::start(&config_text("", "require", &tenant("acme", &a, ""))).await;
    let port = required.addr.port();
    let err = psql(
        &format!("host=127.0.0.1 port={port} user=app.acme dbname=app sslmode=disable"),
        "select 1",
    )
    .unwrap_err();
    assert!(err.contains("TLS connections only"), "{err}");
    let err = connect(&required.pg_config("app.acme"))
        .await
        .err()
        .unwrap();
    assert_eq!(code_of(&err), "08004");
    let out = psql(
        &format!("host=127.0.0.1 port={port} user=app.acme dbname=app sslmode=require"),
        "select 1",
    )
    .unwrap();
    assert_eq!(out, "1");
    required.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_right_backend() {
    let a = cluster("cluster-cancel");
    let proxy = Proxy::start(&config_text("", "allow", &tenant("acme", &a, ""))).await;
    let (client, _c) = connect(&proxy.pg_config("app.acme")).await.unwrap();
    let (bystander, _c2) = connect(&proxy.pg_config("app.acme")).await.unwrap();
    let token = client.cancel_token();
    let mut sleeper = tokio::spawn(async move { client.simple_query("select pg_sleep(30)").await });
    let bystander_sleep =
        tokio::spawn(async move { bystander.simple_query("select pg_sleep(2)").await });
    // tokio-postgres sends the CancelRequest to pgcell (host/port of the
    // connection) with the key pgcell issued.
    let err = cancel_until_done(&mut sleeper, || {
        let token = token.clone();
        async move { token.cancel_query(tokio_postgres::NoTls).await.unwrap() }
    })
    .await
    .unwrap_err();
    assert_eq!(code_of(&err), "57014");
    // The other session was not cancelled.
    bystander_sleep.await.unwrap().unwrap();

    // A forged key cancels nothing.
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let mut forged = vec![0, 0, 0, 16, 4, 210, 22, 46];
    forged.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]);
    tcp.write_all(&forged).await.unwrap();
    assert!(read_until_close(&mut tcp, Duration::from_secs(5))
        .await
        .is_empty());
    let m = proxy.metrics().await;
    assert!(
        metric(
            &m,
            "pgcell_cancel_requests_total",
            &[("outcome", "forwarded")]
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        metric(
            &m,
            "pgcell_cancel_requests_total",
            &[("outcome", "unknown_key")]
        )
        .unwrap()
            >= 1.0
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_tls_with_ca_verification() {
    let pg_cert = TestCert::new();
    let a = cluster_with(
        "cluster-btls",
        &[
            "ssl = on",
            "ssl_cert_file = 'server.crt'",
            "ssl_key_file = 'server.key'",
        ],
        &[
            ("server.crt", pg_cert.cert_pem.as_bytes()),
            ("server.key", pg_cert.key_pem.as_bytes()),
        ],
    );
    let ca_path = std::env::temp_dir().join(format!("pgcell-test-ca-{}.crt", std::process::id()));
    std::fs::write(&ca_path, &pg_cert.ca_pem).unwrap();
    let good = tenant(
        "verified",
        &a,
        &format!("backend_tls = \"verify-full\"\nbackend_ca = \"{}\"\nbackend_server_name = \"localhost\"", ca_path.display()),
    );
    // The proxy's own CA does not vouch for the backend.
    let wrong_ca =
        std::env::temp_dir().join(format!("pgcell-test-wrong-ca-{}.crt", std::process::id()));
    std::fs::write(&wrong_ca, TestCert::new().ca_pem).unwrap();
    let bad = tenant(
        "unverified",
        &a,
        &format!("backend_tls = \"verify-full\"\nbackend_ca = \"{}\"\nbackend_server_name = \"localhost\"", wrong_ca.display()),
    );
    let enc = tenant("encrypted", &a, "backend_tls = \"require\"");
    let proxy = Proxy::start(&config_text("", "allow", &(good + &bad + &enc))).await;

    let (client, _c) = connect(&proxy.pg_config("app.verified")).await.unwrap();
    let ssl: bool = client
        .query_one(
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "backend connection is not TLS");
    let (client, _c) = connect(&proxy.pg_config("app.encrypted")).await.unwrap();
    client.simple_query("select 1").await.unwrap();

    // Over TLS the backend offers SCRAM-SHA-256-PLUS; through pgcell the
    // client must see plain SCRAM-SHA-256 only.
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(&startup_packet(
        &[("user", "app.encrypted"), ("database", "app")],
        0,
    ))
    .await
    .unwrap();
    assert_eq!(tcp.read_u8().await.unwrap(), b'R');
    let len = tcp.read_u32().await.unwrap();
    let mut body = vec![0u8; len as usize - 4];
    tcp.read_exact(&mut body).await.unwrap();
    assert_eq!(&body[..4], &10i32.to_be_bytes());
    assert_eq!(&body[4..], b"SCRAM-SHA-256\0\0");
    let direct = psql(
        &format!(
            "host=127.0.0.1 port={} user=app dbname=app sslmode=require channel_binding=require",
            a.port()
        ),
        "select 1",
    );
    assert_eq!(
        direct.as_deref(),
        Ok("1"),
        "the backend itself offers channel binding"
    );
    let err = connect(&proxy.pg_config("app.unverified"))
        .await
        .err()
        .unwrap();
    assert_eq!(code_of(&err), "08006");
    proxy.stop().await;
    let _ = std::fs::remove_file(ca_path);
    let _ = std::fs::remove_file(wrong_ca);
}

/// A CancelRequest inside TLS (libpq 17's cancel API, psycopg's
/// `cancel_safe()`) cancels the query and ends with a TLS close_notify, as
/// PostgreSQL does: a bare TCP close is "SSL error: unexpected eof" to
/// libpq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_inside_tls_ends_with_close_notify() {
    let hba: &[u8] = b"local all all trust\nhost all all 127.0.0.1/32 trust\n";
    let a = cluster_with("cluster-tls-cancel", &[], &[("pg_hba.conf", hba)]);
    let proxy = Proxy::start(&config_text("", "allow", &tenant("acme", &a, ""))).await;

    // A raw session (the backend trusts it) for the key pgcell issues.
    let mut session = TcpStream::connect(proxy.addr).await.unwrap();
    session
        .write_all(&startup_packet(
            &[("user", "app.acme"), ("database", "app")],
            0,
        ))
        .await
        .unwrap();
    let mut key = None;
    loop {
        let (tag, body) = read_msg(&mut session).await;
        match tag {
            b'K' => key = Some(body),
            b'Z' => break,
            b'E' => panic!("login failed: {:?}", String::from_utf8_lossy(&body)),
            _ => {}
        }
    }
    let key = key.expect("BackendKeyData");
    let sql = b"select pg_sleep(30)\0";
    let mut query = vec![b'Q'];
    query.extend_from_slice(&((sql.len() + 4) as u32).to_be_bytes());
    query.extend_from_slice(sql);
    session.write_all(&query).await.unwrap();

    let mut cancel = vec![0, 0, 0, 16, 4, 210, 22, 46];
    cancel.extend_from_slice(&key);
    for _ in 0..40 {
        let mut tls = proxy.tls_stream("acme.pg.test").await;
        tls.write_all(&cancel).await.unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
            .await
            .expect("pgcell closes the cancel connection");
        // Ok(0) only after a close_notify; a bare FIN is UnexpectedEof.
        assert!(matches!(read, Ok(0)), "{read:?}");
        // RowDescription comes first; then the query's end.
        while let Ok((tag, body)) =
            tokio::time::timeout(Duration::from_millis(500), read_msg(&mut session)).await
        {
            if tag == b'T' {
                continue;
            }
            let mut whole = vec![tag];
            whole.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
            whole.extend_from_slice(&body);
            assert_eq!(
                error_fields(&whole).map(|e| e.0).as_deref(),
                Some("57014"),
                "{}: {:?}",
                tag as char,
                String::from_utf8_lossy(&body)
            );
            proxy.stop().await;
            return;
        }
    }
    panic!("the query was not cancelled within 20 s");
}

async fn read_msg(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let tag = s.read_u8().await.unwrap();
    let len = s.read_u32().await.unwrap();
    let mut body = vec![0u8; len as usize - 4];
    s.read_exact(&mut body).await.unwrap();
    (tag, body)
}
