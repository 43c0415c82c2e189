//! The hardening harness: throwaway clusters, the pgcell binary as a child
//! process with fresh certificates and kernel-free ports, and raw clients
//! that speak exactly the bytes a test needs (SCRAM by
//! `pgcell::ScramClient`, PROXY v2 headers with a VPC
//! endpoint id).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use pgcell::{free_port, Cluster};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

pub use crate::support::{
    cancel_until_done, cluster, code_of, config_text_with, eventually, http_get, init_pgbench,
    metric_or_zero, pgcell_bin, poll, sessions_running, startup_packet, Base, ErrorFields,
    TestCert, APP_PASSWORD,
};

/// [`cluster`] with extra `postgresql.conf` lines.
pub fn cluster_with(name: &str, conf: &[&str]) -> Cluster {
    crate::support::cluster_with(name, conf, &[])
}

/// A pooled tenant (pgcell authenticates `app` with a password file
/// `{pw}`) on `cluster`; `extra` goes into `[[tenants]]`, `pool` into
/// `[tenants.pool]`.
pub fn pooled(id: &str, cluster: &Cluster, extra: &str, pool: &str) -> String {
    format!(
        "[[tenants]]\nid = \"{id}\"\nbackends = [\"{}\"]\n{extra}\n[tenants.pool]\n{pool}\n[[tenants.users]]\nname = \"app\"\npassword_file = \"pw\"\n",
        cluster.addr()
    )
}

/// A passthrough tenant (the backend authenticates) at `backend`.
pub fn passthrough(id: &str, backend: &str, extra: &str) -> String {
    format!("[[tenants]]\nid = \"{id}\"\nbackends = [\"{backend}\"]\n{extra}\n")
}

/// The pgcell binary, running.
pub struct Pgcell {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    child: Child,
    log: PathBuf,
}

impl Pgcell {
    /// Writes certificates, the password file and a config whose
    /// `[listen]` gets `listen_extra`, then starts pgcell and waits until
    /// its data port accepts.
    pub async fn start(listen_extra: &str, rest: &str) -> Pgcell {
        Pgcell::start_with(listen_extra, rest, "debug").await
    }

    /// [`Pgcell::start`] with a log level.
    pub async fn start_with(listen_extra: &str, rest: &str, level: &str) -> Pgcell {
        Pgcell::start_on(std::net::Ipv4Addr::LOCALHOST, listen_extra, rest, level).await
    }

    /// [`Pgcell::start_with`] with the data port on `ip` (an address of a
    /// test network this test created); the admin port stays on loopback.
    pub async fn start_on(
        ip: std::net::Ipv4Addr,
        listen_extra: &str,
        rest: &str,
        level: &str,
    ) -> Pgcell {
        let dir = tempfile::tempdir().unwrap();
        TestCert::new().write_to(dir.path());
        std::fs::write(dir.path().join("pw"), APP_PASSWORD).unwrap();
        let port = free_port().unwrap();
        let admin_port = free_port().unwrap();
        let base = Base {
            addr: format!("{ip}:{port}"),
            admin_addr: format!("127.0.0.1:{admin_port}"),
            health_addr: None,
            startup_timeout: (!listen_extra.contains("startup_timeout")).then(|| "3s".to_owned()),
            grace: "1s".to_owned(),
            propagation: "100ms".to_owned(),
        };
        let text = config_text_with(
            &base,
            listen_extra,
            "allow",
            &format!(
                "[backend]\nconnect_timeout = \"2s\"\nauth_timeout = \"2s\"\n\n[log]\nlevel = \"{level}\"\n\n{rest}"
            ),
        );
        let config = dir.path().join("pgcell.toml");
        std::fs::write(&config, text).unwrap();
        let log = dir.path().join("stderr.log");
        let child = pgcell_bin()
            .args(["run", "--config"])
            .arg(&config)
            .env_remove("RUST_LOG")
            .env("PGCELL_TEST_SECRET_ENV", "env-secret-Zr41")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start pgcell");
        let mut p = Pgcell {
            addr: SocketAddr::from((ip, port)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
            dir,
            child,
            log,
        };
        let admin = p.admin;
        eventually(Duration::from_secs(20), "pgcell starts", || {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("pgcell exited with {status}:\n{}", p.log());
            }
            async move { TcpStream::connect(admin).await.is_ok() }
        })
        .await;
        p
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size in KiB, from `/proc`.
    pub fn rss_kib(&self) -> u64 {
        proc_status_field(self.pid(), "VmRSS:")
    }

    /// Open file descriptors.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Everything pgcell logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics if pgcell exited or logged a panic.
    pub fn assert_alive(&mut self) {
        assert!(
            matches!(self.child.try_wait(), Ok(None)),
            "pgcell exited:\n{}",
            self.log()
        );
        assert!(
            !self.log().contains("panicked"),
            "pgcell panicked:\n{}",
            self.log()
        );
    }

    /// `/metrics`.
    pub async fn metrics(&self) -> String {
        http_get(self.admin, "/metrics").await.1
    }

    /// Data-port connections accepted so far.
    pub async fn accepted(&self) -> f64 {
        metric_or_zero(
            &self.metrics().await,
            "pgcell_tcp_connections_accepted_total",
            &[],
        )
    }

    /// Waits until the accept loop has taken `n` connections more than
    /// `before` (from [`Pgcell::accepted`]).
    pub async fn wait_accepted(&self, before: f64, n: usize) {
        let want = before + n as f64;
        eventually(
            Duration::from_secs(10),
            &format!("{n} more connections accepted"),
            || async { self.accepted().await >= want },
        )
        .await;
    }

    /// tokio-postgres config for user `app`, database `app`, naming
    /// `tenant` through `options`.
    pub fn pg(&self, tenant: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(self.addr.ip().to_string())
            .port(self.addr.port())
            .user("app")
            .password(APP_PASSWORD)
            .dbname("app")
            .options(format!("tenant={tenant}"))
            .ssl_mode(tokio_postgres::config::SslMode::Disable)
            .connect_timeout(Duration::from_secs(10));
        c
    }

    /// Connects and spawns the connection task.
    pub async fn connect(
        &self,
        tenant: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) = self.pg(tenant).connect(tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }
}

impl Drop for Pgcell {
    fn drop(&mut self) {
        // Our own child, by its pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A numeric `/proc/<pid>/status` field (kB).
pub fn proc_status_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A PROXY v2 header from `src` carrying VPC endpoint `vpce`.
pub fn proxy_v2(src: SocketAddr, vpce: Option<&str>) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21);
    h.push(0x11);
    let mut body = Vec::new();
    let SocketAddr::V4(v4) = src else {
        panic!("IPv4 only")
    };
    body.extend_from_slice(&v4.ip().octets());
    body.extend_from_slice(&[127, 0, 0, 1]);
    body.extend_from_slice(&v4.port().to_be_bytes());
    body.extend_from_slice(&5432u16.to_be_bytes());
    if let Some(id) = vpce {
        body.push(0xEA);
        body.extend_from_slice(&((id.len() + 1) as u16).to_be_bytes());
        body.push(0x01);
        body.extend_from_slice(id.as_bytes());
    }
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(&body);
    h
}

/// A tagged message.
pub fn tagged(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// One backend message read by [`Raw`].
#[derive(Debug)]
pub struct Msg {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Msg {
    /// (SQLSTATE, message) of an `ErrorResponse`.
    pub fn error(&self) -> Option<(String, String)> {
        if self.tag != b'E' {
            return None;
        }
        let f = ErrorFields::parse(&self.body);
        Some((f.code, f.message))
    }
}

/// A client that speaks the protocol by hand.
pub struct Raw<S> {
    pub stream: S,
    /// Cancel key (pid, secret) from `BackendKeyData`.
    pub key: Option<(i32, i32)>,
}

impl Raw<TcpStream> {
    /// Connects, optionally with a PROXY v2 header.
    pub async fn connect(addr: SocketAddr, header: Option<Vec<u8>>) -> Raw<TcpStream> {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        if let Some(h) = header {
            stream.write_all(&h).await.unwrap();
        }
        Raw { stream, key: None }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    pub async fn read_msg(&mut self) -> std::io::Result<Msg> {
        let tag = self.stream.read_u8().await?;
        let len = self.stream.read_u32().await? as usize;
        let mut body = vec![0; len.saturating_sub(4)];
        self.stream.read_exact(&mut body).await?;
        Ok(Msg { tag, body })
    }

    /// Sends the StartupMessage and answers SCRAM (or cleartext/none) with
    /// `password`; Ok after `ReadyForQuery`, Err((SQLSTATE, message)) on an
    /// `ErrorResponse` or a close.
    pub async fn login(
        &mut self,
        params: &[(&str, &str)],
        password: &str,
    ) -> Result<(), (String, String)> {
        let io = |e: std::io::Error| ("io".to_owned(), e.to_string());
        self.stream
            .write_all(&startup_packet(params, 0))
            .await
            .map_err(io)?;
        let mut scram = None;
        loop {
            let m = self.read_msg().await.map_err(io)?;
            if let Some(e) = m.error() {
                return Err(e);
            }
            match (
                m.tag,
                m.body
                    .get(..4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
            ) {
                (b'R', Some(10)) => {
                    let mut c = pgcell::ScramClient::with_password(password, [5; 18]);
                    let first = c.client_first();
                    let mut body = b"SCRAM-SHA-256\0".to_vec();
                    body.extend_from_slice(&(first.len() as i32).to_be_bytes());
                    body.extend_from_slice(&first);
                    self.stream
                        .write_all(&tagged(b'p', &body))
                        .await
                        .map_err(io)?;
                    scram = Some(c);
                }
                (b'R', Some(11)) => {
                    let c = scram
                        .as_mut()
                        .ok_or(("proto".to_owned(), "SASL continue first".to_owned()))?;
                    let last = c
                        .server_first(&m.body[4..])
                        .map_err(|e| ("scram".to_owned(), format!("{e:?}")))?;
                    self.stream
                        .write_all(&tagged(b'p', &last))
                        .await
                        .map_err(io)?;
                }
                (b'R', Some(3)) => {
                    let mut body = password.as_bytes().to_vec();
                    body.push(0);
                    self.stream
                        .write_all(&tagged(b'p', &body))
                        .await
                        .map_err(io)?;
                }
                (b'K', _) => {
                    let b = &m.body;
                    self.key = Some((
                        i32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                        i32::from_be_bytes([b[4], b[5], b[6], b[7]]),
                    ));
                }
                (b'Z', _) => return Ok(()),
                _ => {}
            }
        }
    }

    /// A simple query; Ok(messages up to `ReadyForQuery`) or Err on an
    /// `ErrorResponse` (read on to `ReadyForQuery` when one comes).
    pub async fn query(&mut self, sql: &str) -> Result<Vec<Msg>, (String, String)> {
        let io = |e: std::io::Error| ("io".to_owned(), e.to_string());
        let mut body = sql.as_bytes().to_vec();
        body.push(0);
        self.stream
            .write_all(&tagged(b'Q', &body))
            .await
            .map_err(io)?;
        let mut out = Vec::new();
        let mut error = None;
        loop {
            let m = match self.read_msg().await {
                Ok(m) => m,
                Err(e) => return Err(error.unwrap_or_else(|| io(e))),
            };
            if error.is_none() {
                error = m.error();
            }
            if m.tag == b'Z' {
                return match error {
                    Some(e) => Err(e),
                    None => Ok(out),
                };
            }
            out.push(m);
        }
    }

    /// Reads until the server closes (bounded); the first error in it.
    pub async fn error_then_close(&mut self, within: Duration) -> Option<(String, String)> {
        let mut first = None;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.read_msg()).await {
                Ok(Ok(m)) => {
                    if first.is_none() {
                        first = m.error();
                    }
                }
                Ok(Err(_)) => return first,
                Err(_) => {
                    panic!("server did not close within {within:?} (error so far: {first:?})")
                }
            }
        }
    }
}

/// The single text value of the first `DataRow` in `msgs`.
pub fn first_value(msgs: &[Msg]) -> Option<String> {
    let row = msgs.iter().find(|m| m.tag == b'D')?;
    let len = i32::from_be_bytes(row.body.get(2..6)?.try_into().ok()?);
    if len < 0 {
        return None;
    }
    Some(String::from_utf8_lossy(row.body.get(6..6 + len as usize)?).into_owned())
}

/// `options` naming `tenant`, for [`Raw::login`].
pub fn app_params(tenant: &str) -> Vec<(&'static str, String)> {
    vec![
        ("user", "app".to_owned()),
        ("database", "app".to_owned()),
        ("options", format!("tenant={tenant}")),
    ]
}

/// Logs in as `app` naming `tenant` through `options`.
pub async fn raw_login(addr: SocketAddr, tenant: &str) -> Result<Raw<TcpStream>, (String, String)> {
    let mut raw = Raw::connect(addr, None).await;
    let params = app_params(tenant);
    let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    raw.login(&params, APP_PASSWORD).await.map(|()| raw)
}
