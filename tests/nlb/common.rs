//! The pgcell binary as a child process (so the AWS test credentials are
//! its environment, never this process's), its admin port, metrics, and a
//! throwaway PostgreSQL for the drain test.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::support::http::{request, Response};
use crate::support::moto::REGION;
use crate::support::pgcell_bin;
use crate::support::poll::poll;
use crate::support::process::stop_child;
pub use crate::support::{cluster, eventually, metric_or_zero, APP_PASSWORD};

/// A port free on 127.0.0.1 right now (pgcell runs as a child process, so
/// the test picks its ports for it).
pub fn free_port() -> u16 {
    pgcell::free_port().unwrap()
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
        let mut cmd = pgcell_bin();
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
        let within = Duration::from_secs(30);
        let admin = self.admin_addr();
        let ready = poll(within, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("pgcell exited ({status}):\n{}", self.logs());
            }
            async move {
                match request(admin, "GET", "/readyz", "", "").await {
                    Ok(Response {
                        status: 200, body, ..
                    }) => Some(body),
                    _ => None,
                }
            }
        })
        .await;
        ready.unwrap_or_else(|_| panic!("pgcell not ready within {within:?}:\n{}", self.logs()))
    }

    /// `127.0.0.1:admin`.
    fn admin_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.admin))
    }

    /// The `/metrics` text (empty when the admin port does not answer).
    pub async fn metrics(&self) -> String {
        request(self.admin_addr(), "GET", "/metrics", "", "")
            .await
            .map(|r| r.body)
            .unwrap_or_default()
    }

    /// `/readyz` (status, body).
    pub async fn readyz(&self) -> Option<(u16, String)> {
        let r = request(self.admin_addr(), "GET", "/readyz", "", "")
            .await
            .ok()?;
        Some((r.status, r.body))
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
        let exited = poll(within, || {
            let status = self.child.try_wait().unwrap();
            async move { status }
        })
        .await;
        exited.unwrap_or_else(|_| panic!("pgcell did not exit within {within:?}:\n{}", self.logs()))
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

/// `pgcell_target_api_calls_total{operation, outcome}`.
pub fn api_calls(text: &str, operation: &str, outcome: &str) -> f64 {
    metric_or_zero(
        text,
        "pgcell_target_api_calls_total",
        &[("operation", operation), ("outcome", outcome)],
    )
}
