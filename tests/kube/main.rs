//! Tenants, backends and peers from Kubernetes: pgcell's real
//! `kube::Client` against a fake API server (`apiserver.rs`), real
//! PostgreSQL clusters behind it, real clients in front.
//!
//! The tests run one at a time ([`serial`]): the metrics recorder is one
//! per process, and the clash and peer gauges are checked by value.

#![cfg(feature = "kube")]

mod apiserver;
mod crd;
mod discovery;
mod peers;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use pgcell::local_pg::Cluster;
use pgcell::{Config, Server, ServerHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::config::SslMode;
use tokio_postgres::NoTls;

/// Password of the `app` role in every test cluster.
pub const APP_PASSWORD: &str = "app-secret";
/// Namespace the tests' pgcells watch.
pub const NS: &str = "cell";

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Held for the whole of a test.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// A cluster with role `app` (password [`APP_PASSWORD`]) owning database
/// `app`; its `cluster_name` is `name`.
pub fn cluster(name: &str) -> Cluster {
    let c = Cluster::start(name, &[]).expect("start PostgreSQL");
    c.psql(
        "postgres",
        &format!("CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}'"),
    )
    .expect("create role");
    c.psql("postgres", "CREATE DATABASE app OWNER app")
        .expect("create db");
    c
}

/// An in-process pgcell on 127.0.0.1, TLS off.
pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub handle: ServerHandle,
    _dir: tempfile::TempDir,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// A config watching `api` in [`NS`], with `rest` appended.
pub fn config_text(api: &str, kubernetes_extra: &str, rest: &str) -> String {
    format!(
        r#"
[listen]
addr = "127.0.0.1:0"
admin_addr = "127.0.0.1:0"
startup_timeout = "3s"

[tls]
mode = "disable"

[routing]
sources = ["options", "user"]

[shutdown]
grace = "1s"

[kubernetes]
mode = "on"
api_url = "{api}"
namespace = "{NS}"
{kubernetes_extra}

{rest}
"#
    )
}

impl Proxy {
    /// Binds and serves `text`.
    pub async fn start(text: &str) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgcell.toml");
        std::fs::write(&path, text).unwrap();
        let config = Config::load(&path).unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
        let server = Server::bind(config, Some(path)).await.expect("bind pgcell");
        let proxy = Proxy {
            addr: server.addr(),
            admin: server.admin_addr().unwrap(),
            handle: server.handle(),
            _dir: dir,
            task: Some(tokio::spawn(server.serve())),
        };
        eventually("pgcell ready", || async {
            (proxy.handle.state() == pgcell::lifecycle::State::Ready).then_some(())
        })
        .await;
        proxy
    }

    /// Shuts down and waits for the server to stop.
    pub async fn stop(mut self) {
        self.handle.shutdown();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("pgcell stops")
                .unwrap();
        }
    }

    /// A tokio-postgres config for `user` (e.g. `app.acme`) and `password`.
    pub fn pg_config(&self, user: &str, password: &str) -> tokio_postgres::Config {
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

    /// Connects as `user` and asks for `cluster_name`: the cluster that
    /// answered, or the SQLSTATE of the failure.
    pub async fn answer(&self, user: &str, password: &str) -> Result<String, String> {
        let (client, conn) = self
            .pg_config(user, password)
            .connect(NoTls)
            .await
            .map_err(|e| code_of(&e))?;
        tokio::spawn(conn);
        let row = client
            .query_one("select current_setting('cluster_name')", &[])
            .await
            .map_err(|e| code_of(&e))?;
        Ok(row.get(0))
    }

    /// Waits until connecting as `user` gives `want`.
    pub async fn wait_answer(&self, user: &str, password: &str, want: Result<&str, &str>) {
        let want = want.map(str::to_owned).map_err(str::to_owned);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let got = self.answer(user, password).await;
            if got == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{user}: wanted {want:?} within 15 s, last answer {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let mut s = TcpStream::connect(self.admin).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&raw).into_owned();
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default()
    }

    /// Waits until the metric `name` (no labels) reads `want`.
    pub async fn wait_metric(&self, name: &str, want: f64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let got = metric(&self.metrics().await, name);
            if got == Some(want) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name}: wanted {want} within 15 s, last {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The SQLSTATE of a tokio-postgres error, or its text.
pub fn code_of(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_owned())
        .unwrap_or_else(|| format!("no code: {e}"))
}

/// The value of the unlabelled metric `name`.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .next()
}

/// Calls `check` until it gives a value or `within` passes.
pub async fn poll<T, F, Fut>(within: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// [`poll`] for 15 s, failing the test with `what` when it runs out.
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match poll(Duration::from_secs(15), check).await {
        Some(v) => v,
        None => panic!("{what}: not within 15 s"),
    }
}
