//! The pgcell binary as a child process (so the AWS test credentials are
//! its environment, never this process's), its admin port, metrics, and a
//! throwaway PostgreSQL for the drain test.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use pgcell::local_pg::Cluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::moto::{stop_child, REGION};

/// Password of the `app` role in the test cluster.
pub const APP_PASSWORD: &str = "app-secret";

/// A port free on 127.0.0.1 right now (pgcell runs as a child process, so
/// the test picks its ports for it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What the `[aws]` section of a test config points at.
pub struct Aws<'a> {
    pub endpoint_url: &'a str,
    pub target_group_arn: &'a str,
    pub check_interval: &'a str,
    /// `aws.target_ip`; unset leaves it to `POD_IP`.
    pub target_ip: Option<&'a str>,
}

/// A pgcell child process on 127.0.0.1, killed when dropped.
pub struct Pgcell {
    child: Child,
    pub admin: u16,
    pub dir: tempfile::TempDir,
}

impl Pgcell {
    /// The `[listen]`, `[tls]`, `[aws]` and `[shutdown]` sections for `aws`,
    /// then `rest`.
    pub fn config(data: u16, admin: u16, aws: &Aws<'_>, shutdown: &str, rest: &str) -> String {
        format!(
            r#"
[listen]
addr = "127.0.0.1:{data}"
admin_addr = "127.0.0.1:{admin}"

[tls]
mode = "disable"

[aws]
register = true
target_group_arn = "{arn}"
region = "{REGION}"
endpoint_url = "{url}"
{target_ip}check_interval = "{interval}"

[shutdown]
{shutdown}

{rest}
"#,
            arn = aws.target_group_arn,
            url = aws.endpoint_url,
            interval = aws.check_interval,
            target_ip = aws
                .target_ip
                .map(|ip| format!("target_ip = \"{ip}\"\n"))
                .unwrap_or_default(),
        )
    }

    /// Starts `pgcell run` with `config` (built by [`Pgcell::config`] for
    /// `data` and `admin`), with test AWS credentials in its environment.
    pub fn spawn(data: u16, admin: u16, config: &str) -> Pgcell {
        Pgcell::spawn_with_env(data, admin, config, &[])
    }

    /// [`Pgcell::spawn`] with extra environment variables.
    pub fn spawn_with_env(data: u16, admin: u16, config: &str, env: &[(&str, &str)]) -> Pgcell {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgcell.toml");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("pgcell.log")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgcell"));
        cmd.arg("run")
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .env("RUST_LOG", "info,pgcell::register=debug")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", dir.path().join("no-aws-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                dir.path().join("no-aws-credentials"),
            );
        for var in [
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "POD_IP",
        ] {
            cmd.env_remove(var);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn pgcell");
        let _ = data;
        Pgcell { child, admin, dir }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("pgcell.log")
    }

    /// Waits until `/readyz` answers 200; returns its body.
    pub async fn wait_ready(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("pgcell exited ({status}):\n{}", self.logs());
            }
            if let Some((200, body)) = http_get(self.admin, "/readyz").await {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "pgcell not ready within 30 s:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `/metrics` text (empty when the admin port does not answer).
    pub async fn metrics(&self) -> String {
        http_get(self.admin, "/metrics")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// `/readyz` (status, body).
    pub async fn readyz(&self) -> Option<(u16, String)> {
        http_get(self.admin, "/readyz").await
    }

    /// SIGTERM by pid.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit, at most `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "pgcell did not exit within {within:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Pgcell {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("NLB_TEST_LOGS").is_some() {
            eprintln!("--- pgcell log ---\n{}", self.logs());
        }
        stop_child(&mut self.child);
    }
}

/// The value of metric `name` with `labels` in Prometheus text, 0 when
/// absent.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
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
        .unwrap_or(0.0)
}

/// `pgcell_target_api_calls_total{operation, outcome}`.
pub fn api_calls(text: &str, operation: &str, outcome: &str) -> f64 {
    metric(
        text,
        "pgcell_target_api_calls_total",
        &[("operation", operation), ("outcome", outcome)],
    )
}

/// A minimal HTTP/1.1 GET; (status, body), `None` when nothing answers.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// A throwaway cluster with role `app` (password [`APP_PASSWORD`]) owning
/// database `app`.
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
