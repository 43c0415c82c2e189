//! `moto_server` for the Terraform apply: installed into the test
//! virtualenv when missing (the same one `tests/nlb` uses), started on a
//! free loopback port, stopped by its pid when dropped. Follows
//! `tests/nlb/moto.rs`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aws_sdk_elasticloadbalancingv2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_elasticloadbalancingv2::Client;

/// The region of the test.
pub const REGION: &str = "us-east-1";

/// A moto_server dies on its own after this, even when the test process
/// was killed before it could stop it.
const MAX_LIFE: &str = "600";

fn moto_server_bin() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BIN.get_or_init(install_moto) {
        Ok(bin) => bin.clone(),
        Err(e) => panic!("could not install moto[server] for this test: {e}"),
    }
}

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

/// Adds `moto[server]` to the virtualenv, creating it (beside its final
/// place, then renamed, so a concurrent test process never sees half of
/// one) when there is none.
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
        installer(Command::new(&base).args(["-m", "venv"]).arg(&building))?;
        if std::fs::rename(&building, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&building);
        }
    }
    installer(Command::new(&python).args([
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
        Err(format!("{} cannot import moto.server", python.display()))
    }
}

fn installer(cmd: &mut Command) -> Result<(), String> {
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
    log: tempfile::NamedTempFile,
}

impl Moto {
    /// Starts moto_server on a free port and waits until it answers.
    pub fn start() -> Moto {
        let bin = moto_server_bin();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = tempfile::NamedTempFile::new().unwrap();
        // `timeout` bounds its life and forwards our SIGTERM to moto.
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
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto_server exited ({status}):\n{}", moto.logs());
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen within 60 s:\n{}",
                moto.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// An ELBv2 client for this moto with test credentials given to the
    /// client itself (nothing in this process's environment changes).
    pub fn elb(&self) -> Client {
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
                "deploy-test",
            ))
            .endpoint_url(&self.url)
            .http_client(http)
            .build();
        Client::from_conf(config)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
