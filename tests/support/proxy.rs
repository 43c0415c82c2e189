//! An in-process pgcell on 127.0.0.1 ports chosen by the kernel, with a
//! fresh certificate, and the config text it starts from.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pgcell::Cluster;
use pgcell::{Config, Server, ServerHandle};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::config::SslMode;

use super::http::{http_get, request};
use super::pg::APP_PASSWORD;
use super::poll::eventually;
use super::wire::SSL_REQUEST;

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

    /// Writes `server.crt`, `server.key` and `ca.crt` into `dir`.
    pub fn write_to(&self, dir: &Path) {
        std::fs::write(dir.join("server.crt"), &self.cert_pem).unwrap();
        std::fs::write(dir.join("server.key"), &self.key_pem).unwrap();
        std::fs::write(dir.join("ca.crt"), &self.ca_pem).unwrap();
    }
}

/// What [`config_text_with`] writes into `[listen]` and `[shutdown]`.
#[derive(Debug, Clone)]
pub struct Base {
    pub addr: String,
    pub admin_addr: String,
    /// No health port when `None`.
    pub health_addr: Option<String>,
    /// Left to pgcell's default (or to `listen_extra`) when `None`.
    pub startup_timeout: Option<String>,
    pub grace: String,
    pub propagation: String,
}

impl Default for Base {
    /// Every port chosen by the kernel, a 3 s startup timeout, a short
    /// drain.
    fn default() -> Base {
        Base {
            addr: "127.0.0.1:0".to_owned(),
            admin_addr: "127.0.0.1:0".to_owned(),
            health_addr: Some("127.0.0.1:0".to_owned()),
            startup_timeout: Some("3s".to_owned()),
            grace: "3s".to_owned(),
            propagation: "300ms".to_owned(),
        }
    }
}

impl Base {
    /// Data and admin ports fixed on 127.0.0.1 and no health port: for the
    /// pgcell binary run as a child process, whose ports the test picks.
    pub fn on_ports(port: u16, admin: u16) -> Base {
        Base {
            addr: format!("127.0.0.1:{port}"),
            admin_addr: format!("127.0.0.1:{admin}"),
            health_addr: None,
            ..Base::default()
        }
    }
}

/// `[listen]` + `[tls]` + `[routing]` + `[shutdown]` for tests, on
/// kernel-chosen ports; `rest` adds tenants and other tables.
pub fn config_text(listen_extra: &str, tls_mode: &str, rest: &str) -> String {
    config_text_with(&Base::default(), listen_extra, tls_mode, rest)
}

/// [`config_text`] with `base` in `[listen]` and `[shutdown]`.
pub fn config_text_with(base: &Base, listen_extra: &str, tls_mode: &str, rest: &str) -> String {
    let Base {
        addr,
        admin_addr,
        health_addr,
        startup_timeout,
        grace,
        propagation,
    } = base;
    let health_addr = health_addr
        .as_ref()
        .map(|a| format!("health_addr = \"{a}\"\n"))
        .unwrap_or_default();
    let startup_timeout = startup_timeout
        .as_ref()
        .map(|t| format!("startup_timeout = \"{t}\"\n"))
        .unwrap_or_default();
    format!(
        r#"
[listen]
addr = "{addr}"
{health_addr}admin_addr = "{admin_addr}"
{startup_timeout}{listen_extra}

[tls]
cert = "server.crt"
key = "server.key"
mode = "{tls_mode}"

[routing]
sni_suffix = "pg.test"
sources = ["sni", "options", "user"]

[shutdown]
grace = "{grace}"
propagation = "{propagation}"

{rest}
"#
    )
}

/// Waits until pgcell's admin port at `admin` answers `/readyz` with 200.
pub async fn wait_ready(admin: SocketAddr, within: Duration) {
    eventually(within, "pgcell ready (/readyz 200)", || async {
        request(admin, "GET", "/readyz", "", "")
            .await
            .map(|r| r.status)
            == Ok(200)
    })
    .await;
}

/// A `[[tenants]]` entry pointing at `cluster`.
pub fn tenant(id: &str, cluster: &Cluster, extra: &str) -> String {
    format!(
        "[[tenants]]\nid = \"{id}\"\nbackends = [\"{}\"]\n{extra}\n",
        cluster.addr()
    )
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

impl Proxy {
    /// Binds but does not serve yet.
    pub async fn bind(text: &str) -> (Server, Proxy) {
        let dir = tempfile::tempdir().unwrap();
        let cert = TestCert::new();
        cert.write_to(dir.path());
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

    /// Binds, serves, and waits until it is ready.
    pub async fn start(text: &str) -> Proxy {
        let (server, mut proxy) = Proxy::bind(text).await;
        proxy.task = Some(tokio::spawn(server.serve()));
        // Ready is set synchronously at the start of serve.
        eventually(Duration::from_secs(15), "pgcell ready", || async {
            proxy.handle.state() == pgcell::LifecycleState::Ready
        })
        .await;
        proxy
    }

    pub fn set_task(&mut self, task: tokio::task::JoinHandle<()>) {
        self.task = Some(task);
    }

    /// Reloads and waits until the reload has been applied.
    pub async fn reload_and_wait(&self) {
        let before = self.handle.reloads();
        self.handle.reload();
        eventually(Duration::from_secs(10), "the reload is applied", || async {
            self.handle.reloads() > before
        })
        .await;
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
        http_get(self.admin.expect("admin_addr configured"), "/metrics")
            .await
            .1
    }

    /// A tokio-postgres config for `user`, [`APP_PASSWORD`], plaintext.
    pub fn pg_config(&self, user: &str) -> tokio_postgres::Config {
        self.pg_config_as(user, APP_PASSWORD)
    }

    /// [`Proxy::pg_config`] with another password.
    pub fn pg_config_as(&self, user: &str, password: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1")
            .port(self.addr.port())
            .user(user)
            .password(password)
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
