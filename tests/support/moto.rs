//! `moto_server`: installed into the test virtualenv when missing, started
//! on a free loopback port for one test, stopped (by its pid) when dropped.
//! Also an ELBv2 client for it, and the VPC and target group a test
//! registers into.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aws_sdk_elasticloadbalancingv2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_elasticloadbalancingv2::types::{ProtocolEnum, TargetDescription, TargetTypeEnum};
use aws_sdk_elasticloadbalancingv2::Client;

use super::http::request;
use super::poll::eventually;
use super::process::stop_child;
use super::python::venv_python;

/// The region every test uses.
pub const REGION: &str = "us-east-1";

/// A moto_server dies on its own after this, even when the test process
/// was killed before it could stop it.
const MAX_LIFE: &str = "600";

/// The virtualenv's `moto_server`, installing `moto[server]` first when
/// missing.
pub fn moto_server_bin() -> PathBuf {
    let python = venv_python(
        &["moto[server]"],
        "import moto, moto.server, flask, flask_cors",
    );
    let bin = python.with_file_name("moto_server");
    assert!(bin.exists(), "{} is missing", bin.display());
    bin
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
        let port = pgcell::free_port().unwrap();
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
        let within = Duration::from_secs(60);
        eventually(within, "moto_server answers", || {
            let exited = moto.child.try_wait().ok().flatten();
            let logs = moto.logs();
            let addr = moto.addr();
            async move {
                if let Some(status) = exited {
                    panic!("moto_server exited ({status}):\n{logs}");
                }
                match request(addr, "GET", "/moto-api/", "", "").await {
                    Ok(r) if (200..300).contains(&r.status) => Ok(()),
                    Ok(r) => Err(format!("{}\n{logs}", r.text)),
                    Err(e) => Err(format!("{e}\n{logs}")),
                }
            }
        })
        .await;
        moto
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
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
        let answer = request(
            self.addr(),
            "POST",
            "/",
            &format!(
                "Authorization: {auth}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            ),
            "Action=CreateVpc&Version=2016-11-15&CidrBlock=10.0.0.0%2F16",
        )
        .await
        .expect("CreateVpc");
        assert!(
            (200..300).contains(&answer.status),
            "CreateVpc: {}",
            answer.text
        );
        let body = answer.body;
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
            "testing",
            "testing",
            None,
            None,
            "pgcell-test",
        ))
        .endpoint_url(url)
        .http_client(http)
        .build();
    Client::from_conf(config)
}

/// One target of a target group, as DescribeTargetHealth lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub id: String,
    pub port: i32,
    pub state: String,
    pub reason: String,
}

/// Every target of `group`.
pub async fn targets(elb: &Client, group: &str) -> Vec<Target> {
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
            Target {
                id: t.id().unwrap_or_default().to_owned(),
                port: t.port().unwrap_or_default(),
                state: h.state().map(|s| s.as_str().to_owned()).unwrap_or_default(),
                reason: h
                    .reason()
                    .map(|r| r.as_str().to_owned())
                    .unwrap_or_default(),
            }
        })
        .collect()
}

/// The state of `ip:port` in `group`, `None` when it is not listed.
pub async fn target_state(elb: &Client, group: &str, ip: &str, port: u16) -> Option<String> {
    targets(elb, group)
        .await
        .into_iter()
        .find(|t| t.id == ip && t.port == i32::from(port))
        .map(|t| t.state)
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

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let len = text[from..].find(end)?;
    Some(&text[from..from + len])
}
