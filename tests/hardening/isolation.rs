//! Tenant isolation: every routing source and their combinations, VPC
//! endpoint ids, mismatches, another tenant's cancel key, the admin
//! console from a tenant user, and what metrics and logs contain. No path
//! leads from tenant A's credentials or network to tenant B's data.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::DigitallySignedStruct;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

const VPCE_A: &str = "vpce-0aaaaaaaaaaaaaaa1";
const VPCE_B: &str = "vpce-0bbbbbbbbbbbbbbb2";
const B_PASSWORD: &str = "b-secret-Qm3v";
const ADMIN_PASSWORD: &str = "env-secret-Zr41";

/// Trusts any certificate: the test checks routing, not PKI.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One way in.
struct Attempt {
    vpce: Option<&'static str>,
    sni: Option<&'static str>,
    user: &'static str,
    options: Option<&'static str>,
    database: &'static str,
    password: &'static str,
}

const fn via(
    vpce: Option<&'static str>,
    sni: Option<&'static str>,
    user: &'static str,
    options: Option<&'static str>,
    password: &'static str,
) -> Attempt {
    Attempt {
        vpce,
        sni,
        user,
        options,
        database: "app",
        password,
    }
}

/// Logs in and asks for the cluster's name: Ok(name) or Err(SQLSTATE).
async fn try_attempt(addr: SocketAddr, a: &Attempt) -> Result<String, String> {
    let header = proxy_v2("10.9.8.7:40000".parse().unwrap(), a.vpce);
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&header).await.unwrap();
    let mut params = vec![("user", a.user), ("database", a.database)];
    if let Some(o) = a.options {
        params.push(("options", o));
    }
    match a.sni {
        None => {
            run(
                Raw {
                    stream: tcp,
                    key: None,
                },
                &params,
                a.password,
            )
            .await
        }
        Some(sni) => {
            use tokio::io::AsyncReadExt;
            tcp.write_all(&[0, 0, 0, 8, 4, 210, 22, 47]).await.unwrap();
            assert_eq!(tcp.read_u8().await.unwrap(), b'S');
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
                .with_no_client_auth();
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
                .await
                .unwrap();
            run(
                Raw {
                    stream: tls,
                    key: None,
                },
                &params,
                a.password,
            )
            .await
        }
    }
}

async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    mut raw: Raw<S>,
    params: &[(&str, &str)],
    password: &str,
) -> Result<String, String> {
    raw.login(params, password).await.map_err(|e| e.0)?;
    let rows = raw
        .query("select current_setting('cluster_name')")
        .await
        .map_err(|e| e.0)?;
    Ok(first_value(&rows).unwrap_or_default())
}

/// Tenant `a` is pooled (pgcell checks the password) on cluster A behind
/// VPC endpoint A; tenant `b` is passthrough (cluster B checks it, with
/// another password) behind endpoint B.
async fn two_tenants() -> (pgcell::Cluster, pgcell::Cluster, Pgcell) {
    let a = cluster("hard-iso-a");
    let b = cluster("hard-iso-b");
    b.psql(
        "postgres",
        &format!("ALTER ROLE app PASSWORD '{B_PASSWORD}'"),
    )
    .unwrap();
    let p = Pgcell::start(
        "proxy_protocol = \"required\"",
        &(pooled(
            "a",
            &a,
            &format!("allowed_vpce_ids = [\"{VPCE_A}\"]"),
            "mode = \"transaction\"",
        ) + &passthrough(
            "b",
            &b.addr().to_string(),
            &format!("allowed_vpce_ids = [\"{VPCE_B}\"]"),
        ) + "[[admin.users]]\nname = \"admin\"\npassword_env = \"PGCELL_TEST_SECRET_ENV\"\n"),
    )
    .await;
    (a, b, p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_matrix_and_no_secrets_in_logs_or_metrics() {
    let (a, b, mut p) = two_tenants().await;
    let (ca, cb) = (a.name().to_owned(), b.name().to_owned());
    let ok_a = Ok::<String, String>(ca.clone());
    let ok_b = Ok::<String, String>(cb.clone());
    let err = |c: &str| Err::<String, String>(c.to_owned());
    let cases: Vec<(&str, Attempt, Result<String, String>)> = vec![
        // Each source alone, from the right endpoint.
        (
            "options a",
            via(Some(VPCE_A), None, "app", Some("tenant=a"), APP_PASSWORD),
            ok_a.clone(),
        ),
        (
            "user suffix a",
            via(Some(VPCE_A), None, "app.a", None, APP_PASSWORD),
            ok_a.clone(),
        ),
        (
            "sni a",
            via(Some(VPCE_A), Some("a.pg.test"), "app", None, APP_PASSWORD),
            ok_a.clone(),
        ),
        (
            "options b",
            via(Some(VPCE_B), None, "app", Some("tenant=b"), B_PASSWORD),
            ok_b.clone(),
        ),
        (
            "user suffix b",
            via(Some(VPCE_B), None, "app.b", None, B_PASSWORD),
            ok_b.clone(),
        ),
        (
            "sni b",
            via(Some(VPCE_B), Some("b.pg.test"), "app", None, B_PASSWORD),
            ok_b.clone(),
        ),
        // Sources agreeing.
        (
            "sni+options+user a",
            via(
                Some(VPCE_A),
                Some("a.pg.test"),
                "app.a",
                Some("tenant=a"),
                APP_PASSWORD,
            ),
            ok_a.clone(),
        ),
        // The other tenant's endpoint, or none.
        (
            "a from endpoint b",
            via(Some(VPCE_B), None, "app", Some("tenant=a"), APP_PASSWORD),
            err("28000"),
        ),
        (
            "b from endpoint a",
            via(Some(VPCE_A), None, "app", Some("tenant=b"), B_PASSWORD),
            err("28000"),
        ),
        (
            "b by sni from endpoint a",
            via(Some(VPCE_A), Some("b.pg.test"), "app", None, B_PASSWORD),
            err("28000"),
        ),
        (
            "a without endpoint",
            via(None, None, "app.a", None, APP_PASSWORD),
            err("28000"),
        ),
        // Sources disagreeing.
        (
            "sni a, options b",
            via(
                Some(VPCE_A),
                Some("a.pg.test"),
                "app",
                Some("tenant=b"),
                APP_PASSWORD,
            ),
            err("08004"),
        ),
        (
            "sni a, user b",
            via(Some(VPCE_A), Some("a.pg.test"), "app.b", None, APP_PASSWORD),
            err("08004"),
        ),
        (
            "options a, user b",
            via(Some(VPCE_A), None, "app.b", Some("tenant=a"), APP_PASSWORD),
            err("08004"),
        ),
        (
            "options b, user a",
            via(Some(VPCE_B), None, "app.a", Some("tenant=b"), B_PASSWORD),
            err("08004"),
        ),
        (
            "unknown tenant",
            via(Some(VPCE_A), None, "app", Some("tenant=c"), APP_PASSWORD),
            err("08004"),
        ),
        (
            "no tenant",
            via(Some(VPCE_A), None, "app", None, APP_PASSWORD),
            err("08004"),
        ),
        // One tenant's password at the other.
        (
            "a's password at b",
            via(Some(VPCE_B), None, "app", Some("tenant=b"), APP_PASSWORD),
            err("28P01"),
        ),
        (
            "b's password at a",
            via(Some(VPCE_A), None, "app", Some("tenant=a"), B_PASSWORD),
            err("28P01"),
        ),
    ];
    let mut failures = Vec::new();
    for (name, attempt, want) in &cases {
        let got = try_attempt(p.addr, attempt).await;
        if &got != want {
            failures.push(format!("{name}: want {want:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");

    // The admin console is not a tenant's: a tenant user with its own
    // password is refused, with or without naming a tenant.
    for options in [None, Some("tenant=a")] {
        let mut attempt = via(Some(VPCE_A), None, "app", options, APP_PASSWORD);
        attempt.database = "pgcell";
        let got = try_attempt(p.addr, &attempt).await;
        assert!(got.is_err(), "tenant user reached the console: {got:?}");
    }
    let mut admin = via(Some(VPCE_A), None, "admin", None, ADMIN_PASSWORD);
    admin.database = "pgcell";
    let mut raw = Raw::connect(
        p.addr,
        Some(proxy_v2("10.9.8.7:40001".parse().unwrap(), admin.vpce)),
    )
    .await;
    raw.login(&[("user", "admin"), ("database", "pgcell")], ADMIN_PASSWORD)
        .await
        .expect("the admin gets in (the refusal above is not a broken console)");

    // Nothing secret in the debug log or on /metrics, after good and bad
    // logins of both kinds.
    let metrics = p.metrics().await;
    let log = p.log();
    assert!(log.len() > 1000, "debug logging is on");
    for secret in [APP_PASSWORD, B_PASSWORD, ADMIN_PASSWORD, "SCRAM-SHA-256$"] {
        assert!(!log.contains(secret), "log contains {secret:?}");
        assert!(!metrics.contains(secret), "metrics contain {secret:?}");
    }
    // Client addresses and endpoint ids are not metric labels either.
    assert!(!metrics.contains("10.9.8.7") && !metrics.contains(VPCE_A));
    p.assert_alive();
}

/// A cancel request from another tenant's endpoint with a guessed key
/// (right process id, wrong secrets) cancels nothing; the owner's own
/// request does (so the test can tell).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_keys_do_not_cross_tenants() {
    let (a, _b, mut p) = two_tenants().await;
    let mut victim = Raw::connect(
        p.addr,
        Some(proxy_v2("10.1.1.1:1000".parse().unwrap(), Some(VPCE_A))),
    )
    .await;
    let params = app_params("a");
    let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    victim.login(&params, APP_PASSWORD).await.unwrap();
    let (pid, secret) = victim.key.expect("BackendKeyData");
    let mut body = b"select pg_sleep(30)".to_vec();
    body.push(0);
    victim.stream.write_all(&tagged(b'Q', &body)).await.unwrap();
    let running = || async { sessions_running(&a, "select pg_sleep(30)") == 1 };
    eventually(Duration::from_secs(10), "the query runs", running).await;
    let cancel = |pid: i32, secret: i32, vpce: &'static str| async move {
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        s.write_all(&proxy_v2("10.2.2.2:2000".parse().unwrap(), Some(vpce)))
            .await
            .unwrap();
        let mut m = 16u32.to_be_bytes().to_vec();
        m.extend_from_slice(&80877102u32.to_be_bytes());
        m.extend_from_slice(&pid.to_be_bytes());
        m.extend_from_slice(&secret.to_be_bytes());
        s.write_all(&m).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read_to_end(&mut s, &mut out),
        )
        .await;
    };
    for guess in 1..=50 {
        cancel(pid, secret.wrapping_add(guess), VPCE_B).await;
    }
    cancel(pid ^ 1, secret, VPCE_B).await;
    // The right key, leaked to another customer's network, is worth
    // nothing there: keys are bound to the endpoint they were issued
    // through.
    cancel(pid, secret, VPCE_B).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        running().await,
        "a guessed key or a key from another endpoint cancelled another tenant's query"
    );
    assert!(
        p.metrics()
            .await
            .lines()
            .any(|l| l.starts_with("pgcell_cancel_requests_total{outcome=\"endpoint_mismatch\"} 1")),
        "the refused cancel is counted"
    );
    cancel(pid, secret, VPCE_A).await;
    let mut saw = None;
    for _ in 0..20 {
        let m = tokio::time::timeout(Duration::from_secs(5), victim.read_msg())
            .await
            .unwrap()
            .unwrap();
        if let Some(e) = m.error() {
            saw = Some(e.0);
            break;
        }
    }
    assert_eq!(saw.as_deref(), Some("57014"));
    p.assert_alive();
}
