//! Test harness: throwaway PostgreSQL clusters, an in-process pgcell with
//! fresh certificates, and real clients (tokio-postgres, psql, raw sockets).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use pgcell::local_pg::Cluster;
use pgcell::{Config, Server, ServerHandle};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, NoTls};

/// Password of the `app` role in every test cluster.
pub const APP_PASSWORD: &str = "app-secret";

/// A cluster with role `app` (password [`APP_PASSWORD`]) owning database `app`.
pub fn cluster(name: &str) -> Cluster {
    cluster_with(name, &[], &[])
}

/// [`cluster`] with extra settings and data-directory files.
pub fn cluster_with(name: &str, conf: &[&str], files: &[(&str, &[u8])]) -> Cluster {
    let c = Cluster::start_with_files(name, conf, files).expect("start PostgreSQL");
    c.psql(
        "postgres",
        &format!("CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}'"),
    )
    .expect("create role");
    c.psql("postgres", "CREATE DATABASE app OWNER app")
        .expect("create db");
    c
}

/// A test CA and a server certificate it signed for `localhost`,
/// `*.pg.test` and 127.0.0.1.
pub struct TestCert {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCert {
    pub fn new() -> TestCert {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "pgcell test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![
            "localhost".to_owned(),
            "*.pg.test".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        TestCert {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    pub fn ca_der(&self) -> CertificateDer<'static> {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).unwrap()
    }

    pub fn der(&self) -> CertificateDer<'static> {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).unwrap()
    }
}

/// An in-process pgcell on 127.0.0.1 ports chosen by the kernel.
pub struct Proxy {
    pub addr: SocketAddr,
    pub health: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub handle: ServerHandle,
    pub dir: tempfile::TempDir,
    pub cert: TestCert,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// `[listen]` + `[tls]` + `[routing]` defaults for tests; `body` adds
/// tenants and overrides (TOML appended after the listen table).
pub fn config_text(listen_extra: &str, tls_mode: &str, rest: &str) -> String {
    format!(
        r#"
[listen]
addr = "127.0.0.1:0"
health_addr = "127.0.0.1:0"
admin_addr = "127.0.0.1:0"
startup_timeout = "3s"
{listen_extra}

[tls]
cert = "server.crt"
key = "server.key"
mode = "{tls_mode}"

[routing]
sni_suffix = "pg.test"
sources = ["sni", "options", "user"]

[shutdown]
grace = "3s"
propagation = "300ms"

{rest}
"#
    )
}

/// A `[[tenants]]` entry pointing at `cluster`.
pub fn tenant(id: &str, cluster: &Cluster, extra: &str) -> String {
    format!(
        "[[tenants]]\nid = \"{id}\"\nbackends = [\"{}\"]\n{extra}\n",
        cluster.addr()
    )
}

impl Proxy {
    /// Binds but does not serve yet.
    pub async fn bind(text: &str) -> (Server, Proxy) {
        let dir = tempfile::tempdir().unwrap();
        let cert = TestCert::new();
        std::fs::write(dir.path().join("server.crt"), &cert.cert_pem).unwrap();
        std::fs::write(dir.path().join("server.key"), &cert.key_pem).unwrap();
        std::fs::write(dir.path().join("ca.crt"), &cert.ca_pem).unwrap();
        let path = dir.path().join("pgcell.toml");
        std::fs::write(&path, text).unwrap();
        let config = Config::load(&path).unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
        let server = Server::bind(config, Some(path)).await.expect("bind pgcell");
        let proxy = Proxy {
            addr: server.addr(),
            health: server.health_addr(),
            admin: server.admin_addr(),
            handle: server.handle(),
            dir,
            cert,
            task: None,
        };
        (server, proxy)
    }

    /// Writes `files` (name, contents) next to the config, then binds and
    /// serves.
    pub async fn start_with_files(text: &str, files: &[(&str, &str)]) -> Proxy {
        let dir = std::env::temp_dir().join(format!("pgcell-test-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut text = text.to_owned();
        for (name, contents) in files {
            let path = dir.join(format!("{}-{name}", rand_suffix()));
            std::fs::write(&path, contents).unwrap();
            text = text.replace(&format!("{{{name}}}"), &path.display().to_string());
        }
        Proxy::start(&text).await
    }

    /// Binds and serves.
    pub async fn start(text: &str) -> Proxy {
        let (server, mut proxy) = Proxy::bind(text).await;
        proxy.task = Some(tokio::spawn(server.serve()));
        // Ready is set synchronously at the start of serve; wait for it.
        for _ in 0..100 {
            if proxy.handle.state() == pgcell::lifecycle::State::Ready {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        proxy
    }

    pub fn set_task(&mut self, task: tokio::task::JoinHandle<()>) {
        self.task = Some(task);
    }

    /// Reloads and waits until the reload has been applied.
    pub async fn reload_and_wait(&self) {
        let before = self.handle.reloads();
        self.handle.reload();
        for _ in 0..200 {
            if self.handle.reloads() > before {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("reload was not applied within 10 s");
    }

    /// Shuts down, skipping the drain's waits (a second request), and waits
    /// for the server to stop.
    pub async fn stop(mut self) {
        self.handle.shutdown();
        self.handle.shutdown();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(40), task)
                .await
                .expect("pgcell stops")
                .unwrap();
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("pgcell.toml")
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        http_get(self.admin.unwrap(), "/metrics").await.1
    }

    /// A tokio-postgres config aimed at this proxy, plaintext.
    pub fn pg_config(&self, user: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1")
            .port(self.addr.port())
            .user(user)
            .password(APP_PASSWORD)
            .dbname("app")
            .ssl_mode(SslMode::Disable)
            .connect_timeout(Duration::from_secs(10));
        c
    }

    /// rustls client config trusting this proxy's certificate.
    pub fn tls_client(&self, alpn: Option<&[u8]>) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.ca_der()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        if let Some(alpn) = alpn {
            config.alpn_protocols = vec![alpn.to_vec()];
        }
        Arc::new(config)
    }

    /// SSLRequest + TLS handshake with `sni`, then the stream.
    pub async fn tls_stream(&self, sni: &str) -> tokio_rustls::client::TlsStream<TcpStream> {
        let mut tcp = TcpStream::connect(self.addr).await.unwrap();
        tcp.write_all(&SSL_REQUEST).await.unwrap();
        assert_eq!(tcp.read_u8().await.unwrap(), b'S');
        let connector = tokio_rustls::TlsConnector::from(self.tls_client(Some(b"postgresql")));
        connector
            .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
            .await
            .expect("TLS handshake")
    }
}

pub const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];
pub const GSSENC_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 48];

/// Runs tokio-postgres's startup over an already-open stream (TLS done by
/// the caller, PROXY header written by the caller).
pub async fn connect_over<S>(
    config: &tokio_postgres::Config,
    stream: S,
) -> Result<Client, tokio_postgres::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut config = config.clone();
    config.ssl_mode(SslMode::Disable);
    let (client, conn) = config.connect_raw(stream, NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// Plain connect; the connection task's result comes back through the
/// returned handle.
pub async fn connect(
    config: &tokio_postgres::Config,
) -> Result<
    (
        Client,
        tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    ),
    tokio_postgres::Error,
> {
    let (client, conn) = config.connect(NoTls).await?;
    Ok((client, tokio::spawn(conn)))
}

/// `current_setting('cluster_name')` on `client`.
pub async fn cluster_name(client: &Client) -> String {
    client
        .query_one("select current_setting('cluster_name')", &[])
        .await
        .unwrap()
        .get(0)
}

/// The SQLSTATE of a tokio-postgres error, or its text.
pub fn code_of(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_owned())
        .unwrap_or_else(|| format!("no code: {e}"))
}

/// A StartupMessage for protocol 3.`minor`.
pub fn startup_packet(params: &[(&str, &str)], minor: u16) -> Vec<u8> {
    let mut body = (3u32 << 16 | u32::from(minor)).to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut p = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    p.extend_from_slice(&body);
    p
}

/// Reads what the server sends until it closes (bounded by `within`).
pub async fn read_until_close<R: AsyncRead + Unpin>(r: &mut R, within: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(within, r.read_to_end(&mut out))
        .await
        .expect("server closes in time");
    out
}

/// (SQLSTATE, message, hint) of the first ErrorResponse in `bytes`.
pub fn error_fields(bytes: &[u8]) -> Option<(String, String, String)> {
    let mut rest = bytes;
    while rest.len() >= 5 {
        let tag = rest[0];
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let body = rest.get(5..1 + len)?;
        if tag == b'E' {
            let (mut code, mut msg, mut hint) = (String::new(), String::new(), String::new());
            for field in body.split(|b| *b == 0) {
                if let Some((&k, v)) = field.split_first() {
                    let v = String::from_utf8_lossy(v).into_owned();
                    match k {
                        b'C' => code = v,
                        b'M' => msg = v,
                        b'H' => hint = v,
                        _ => {}
                    }
                }
            }
            return Some((code, msg, hint));
        }
        rest = &rest[1 + len..];
    }
    None
}

/// A minimal HTTP/1.1 GET; returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path).await
}

/// A minimal HTTP/1.1 request without a body; returns (status, body).
pub async fn http_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let raw = read_until_close(&mut s, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of a metric line starting with `prefix` (name and labels).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse().ok()))
        .next()
}

/// Runs psql with `conninfo` and `sql`; Ok(stdout) or Err(stderr).
pub fn psql(conninfo: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            conninfo,
            "-c",
            sql,
        ])
        .env("PGPASSWORD", APP_PASSWORD)
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGSSLMODE")
        .output()
        .expect("run psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// Writes `path` atomically enough for a reload test.
pub fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs pgbench against `port` with `args`; returns (success, output).
pub fn pgbench(port: u16, user: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("pgbench")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", user, "-n"])
        .args(args)
        .arg("app")
        .env("PGPASSWORD", APP_PASSWORD)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("run pgbench");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Sends cancels through `send` until `running` ends (a cancel that arrives
/// before the query started is ignored by PostgreSQL, so one is not enough
/// on a loaded machine) and returns how it ended.
pub async fn cancel_until_done<T, F, Fut>(
    running: &mut tokio::task::JoinHandle<T>,
    mut send: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..40 {
        send().await;
        if let Ok(done) = tokio::time::timeout(Duration::from_millis(500), &mut *running).await {
            return done.expect("query task");
        }
    }
    panic!("the query was not cancelled within 20 s");
}
