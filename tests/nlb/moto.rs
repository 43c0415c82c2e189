//! `moto_server`: installed into the test virtualenv when missing, started
//! on a free loopback port for one test, stopped (by its pid) when dropped.
//! Also the test's own ELBv2 client and the VPC and target group a test
//! registers into.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aws_sdk_elasticloadbalancingv2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_elasticloadbalancingv2::types::{ProtocolEnum, TargetDescription, TargetTypeEnum};
use aws_sdk_elasticloadbalancingv2::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::free_port;

/// The region every test uses.
pub const REGION: &str = "us-east-1";

/// A moto_server dies on its own after this, even when the test process
/// was killed before it could stop it.
const MAX_LIFE: &str = "600";

/// The virtualenv's `moto_server`, installing `moto[server]` first when
/// missing. Panics with the installer's output when that fails.
pub fn moto_server_bin() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BIN.get_or_init(install_moto) {
        Ok(bin) => bin.clone(),
        Err(e) => panic!("could not install moto[server] for this test: {e}"),
    }
}

/// The virtualenv the driver tests use too (`PGCELL_TEST_VENV`, default
/// `/var/tmp/pgcell-test-venv`), outside the clone, reused across runs.
fn venv_dir() -> PathBuf {
    std::env::var_os("PGCELL_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/pgcell-test-venv"))
}

fn has_moto(python: &Path) -> bool {
    python.exists()
        && python.with_file_name("moto_server").exists()
        && Command::new(python)
            .args(["-c", "import moto, moto.server, flask, flask_cors"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// Adds `moto[server]` to the virtualenv; creates the virtualenv first
/// when there is none (built beside it and renamed into place, so a
/// concurrent test process never sees a half-built one).
fn install_moto() -> Result<PathBuf, String> {
    let dir = venv_dir();
    let python = dir.join("bin").join("python");
    if has_moto(&python) {
        return Ok(python.with_file_name("moto_server"));
    }
    if !python.exists() {
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        let mut name = dir.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".building-moto-{}", std::process::id()));
        let building = dir.with_file_name(name);
        let _ = std::fs::remove_dir_all(&building);
        let base = std::env::var("PGCELL_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
        run_installer(Command::new(&base).args(["-m", "venv"]).arg(&building))?;
        if std::fs::rename(&building, &dir).is_err() {
            // Another process put its virtualenv there first.
            let _ = std::fs::remove_dir_all(&building);
        }
    }
    run_installer(Command::new(&python).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "moto[server]",
    ]))?;
    if has_moto(&python) {
        Ok(python.with_file_name("moto_server"))
    } else {
        Err(format!(
            "{} cannot import moto.server after installing moto[server]",
            python.display()
        ))
    }
}

fn run_installer(cmd: &mut Command) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{shown}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{shown} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A running moto_server, stopped when dropped.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    pub port: u16,
    log: tempfile::NamedTempFile,
}

impl Moto {
    /// Starts moto_server on a free port and waits until it answers.
    pub async fn start() -> Moto {
        let bin = moto_server_bin();
        let port = free_port();
        let log = tempfile::NamedTempFile::new().unwrap();
        // `timeout` bounds its life; it forwards our SIGTERM to moto.
        let child = Command::new("timeout")
            .args(["--kill-after=5", MAX_LIFE])
            .arg(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("spawn moto_server");
        let mut moto = Moto {
            child,
            url: format!("http://127.0.0.1:{port}"),
            port,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto_server exited ({status}):\n{}", moto.logs());
            }
            if http(port, "GET", "/moto-api/", "", "").await.is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer within 60 s:\n{}",
                moto.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        moto
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// An ELBv2 client for moto with test credentials (given to the client
    /// itself: nothing in this process's environment changes).
    pub fn elb(&self) -> Client {
        elb_client(&self.url)
    }

    /// A VPC (EC2 CreateVpc; moto checks a target group's VPC exists).
    pub async fn create_vpc(&self) -> String {
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential=testing/20240101/{REGION}/ec2/aws4_request, SignedHeaders=host, Signature=0"
        );
        let body = http(
            self.port,
            "POST",
            "/",
            &format!(
                "Authorization: {auth}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            ),
            "Action=CreateVpc&Version=2016-11-15&CidrBlock=10.0.0.0%2F16",
        )
        .await
        .expect("CreateVpc");
        between(&body, "<vpcId>", "</vpcId>")
            .unwrap_or_else(|| panic!("no vpcId in {body}"))
            .to_owned()
    }

    /// A VPC and an `ip`/TCP target group in it; returns its ARN.
    pub async fn target_group(&self, name: &str) -> String {
        let vpc = self.create_vpc().await;
        let out = self
            .elb()
            .create_target_group()
            .name(name)
            .protocol(ProtocolEnum::Tcp)
            .port(5432)
            .vpc_id(vpc)
            .target_type(TargetTypeEnum::Ip)
            .send()
            .await
            .expect("CreateTargetGroup");
        out.target_groups()[0]
            .target_group_arn()
            .expect("target group ARN")
            .to_owned()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// SIGTERM to `child` by its pid, SIGKILL if it is still there after 5 s;
/// reaps it.
pub fn stop_child(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// An ELBv2 client for `url` with test credentials, plain HTTP.
pub fn elb_client(url: &str) -> Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let config = aws_sdk_elasticloadbalancingv2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .credentials_provider(Credentials::new(
            "testing", "testing", None, None, "nlb-test",
        ))
        .endpoint_url(url)
        .http_client(http)
        .build();
    Client::from_conf(config)
}

/// Every target of `group`: (id, port, state, reason).
pub async fn targets(elb: &Client, group: &str) -> Vec<(String, i32, String, String)> {
    let out = elb
        .describe_target_health()
        .target_group_arn(group)
        .send()
        .await
        .expect("DescribeTargetHealth");
    out.target_health_descriptions()
        .iter()
        .map(|d| {
            let t = d.target().expect("target");
            let h = d.target_health().expect("target health");
            (
                t.id().unwrap_or_default().to_owned(),
                t.port().unwrap_or_default(),
                h.state().map(|s| s.as_str().to_owned()).unwrap_or_default(),
                h.reason()
                    .map(|r| r.as_str().to_owned())
                    .unwrap_or_default(),
            )
        })
        .collect()
}

/// The state of `ip:port` in `group`, `None` when it is not listed.
pub async fn target_state(elb: &Client, group: &str, ip: &str, port: u16) -> Option<String> {
    targets(elb, group)
        .await
        .into_iter()
        .find(|(id, p, _, _)| id == ip && *p == i32::from(port))
        .map(|(_, _, state, _)| state)
}

/// DeregisterTargets for `ip:port`, as someone else than pgcell would.
pub async fn deregister(elb: &Client, group: &str, ip: &str, port: u16) {
    elb.deregister_targets()
        .target_group_arn(group)
        .targets(
            TargetDescription::builder()
                .id(ip)
                .port(i32::from(port))
                .build(),
        )
        .send()
        .await
        .expect("DeregisterTargets");
}

/// One HTTP/1.1 request on a fresh connection; the response body for a
/// 2xx answer, else an error with the whole response.
pub async fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n{headers}\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .map_err(|_| "no answer within 10 s".to_owned())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    if (200..300).contains(&status) {
        Ok(body)
    } else {
        Err(text)
    }
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let len = text[from..].find(end)?;
    Some(&text[from..from + len])
}
