//! What the NLB and the operator see: the health port, `/metrics`,
//! `/readyz`, reload of certificate and tenants without dropping sessions,
//! shutdown, and the `pgcell` command itself.

use std::process::{Command, Stdio};
use std::time::Duration;

use pgcell::proxy_header as build;
use rustls::pki_types::CertificateDer;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_port_is_open_only_while_ready() {
    let a = cluster("cluster-health");
    let text = config_text(
        "proxy_protocol = \"required\"",
        "allow",
        &tenant("acme", &a, ""),
    );
    let (server, mut proxy) = Proxy::bind(&text).await;
    let health = proxy.health.unwrap();

    // Bound but not ready: refused.
    assert!(
        TcpStream::connect(health).await.is_err(),
        "health port open before ready"
    );
    proxy.set_task(tokio::spawn(server.serve()));
    eventually(Duration::from_secs(2), "the health port opens", || async {
        TcpStream::connect(health).await.is_ok()
    })
    .await;

    // HTTP, behind an NLB LOCAL header: 200.
    let mut tcp = TcpStream::connect(health).await.unwrap();
    tcp.write_all(&build::v2_local()).await.unwrap();
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let reply = read_until_close(&mut tcp, Duration::from_secs(5)).await;
    assert!(
        String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 200"),
        "{reply:?}"
    );
    // Plain HTTP.
    let (status, body) = http_get(health, "/").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    // TCP check with anything else: just closed.
    let mut tcp = TcpStream::connect(health).await.unwrap();
    tcp.write_all(&SSL_REQUEST).await.unwrap();
    assert!(read_until_close(&mut tcp, Duration::from_secs(6))
        .await
        .is_empty());

    let admin = proxy.admin.unwrap();
    assert_eq!(http_get(admin, "/readyz").await.0, 200);
    assert_eq!(http_get(admin, "/livez").await, (200, "ok\n".to_owned()));
    assert!(metric(&proxy.metrics().await, "pgcell_ready", &[]).unwrap() == 1.0);

    // Shutdown: the health port closes.
    let handle = proxy.handle.clone();
    proxy.stop().await;
    assert_eq!(handle.state(), pgcell::LifecycleState::Stopped);
    assert!(
        TcpStream::connect(health).await.is_err(),
        "health port open after stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_connections() {
    let a = cluster("cluster-metrics");
    // A tenant id no other test uses: the recorder is process-wide.
    let proxy = Proxy::start(&config_text("", "allow", &tenant("metrics-only", &a, ""))).await;
    let labels = [("tenant", "metrics-only"), ("tls", "false")];
    let before = proxy.metrics().await;
    assert_eq!(
        metric(&before, "pgcell_client_connections_active", &labels),
        None
    );

    let (c1, _k1) = connect(&proxy.pg_config("app.metrics-only")).await.unwrap();
    let (c2, k2) = connect(&proxy.pg_config("app.metrics-only")).await.unwrap();
    c1.simple_query("select repeat('x', 10000)").await.unwrap();
    let during = proxy.metrics().await;
    assert_eq!(
        metric(&during, "pgcell_client_connections_active", &labels),
        Some(2.0)
    );
    assert_eq!(
        metric(&during, "pgcell_client_connections_accepted_total", &labels),
        Some(2.0)
    );
    let sent = metric(
        &during,
        "pgcell_client_sent_bytes_total",
        &[("tenant", "metrics-only")],
    )
    .unwrap();
    assert!(sent > 10_000.0, "sent {sent}");
    assert!(
        metric(
            &during,
            "pgcell_client_received_bytes_total",
            &[("tenant", "metrics-only")]
        )
        .unwrap()
            > 0.0
    );
    assert!(
        metric(
            &during,
            "pgcell_backend_connect_seconds_count",
            &[("tenant", "metrics-only")]
        )
        .unwrap()
            >= 2.0
    );

    drop(c2);
    let _ = k2.await;
    // Counted down when the session's task ends, a moment after the close.
    let gone = poll(Duration::from_secs(3), || async {
        let after = proxy.metrics().await;
        (metric(&after, "pgcell_client_connections_active", &labels) == Some(1.0)).then_some(after)
    })
    .await;
    let after = match gone {
        Ok(after) => after,
        Err(_) => proxy.metrics().await,
    };
    assert_eq!(
        metric(&after, "pgcell_client_connections_active", &labels),
        Some(1.0)
    );
    assert!(
        metric(
            &after,
            "pgcell_session_duration_seconds_count",
            &[("tenant", "metrics-only")]
        )
        .unwrap()
            >= 1.0
    );
    // Help text and type lines are there for scrapers.
    assert!(after.contains("# TYPE pgcell_client_connections_active gauge"));
    drop(c1);
    proxy.stop().await;
}

async fn served_certificate(proxy: &Proxy) -> CertificateDer<'static> {
    let tls = proxy.tls_stream("acme.pg.test").await;
    tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_certificate_and_tenants_without_dropping_sessions() {
    let a = cluster("cluster-reload-a");
    let b = cluster("cluster-reload-b");
    let text = config_text("", "allow", &tenant("acme", &a, ""));
    let proxy = Proxy::start(&text).await;
    let old_cert = served_certificate(&proxy).await;

    // A TLS session open across the reload.
    let tls = proxy.tls_stream("acme.pg.test").await;
    let session = connect_over(&proxy.pg_config("app"), tls).await.unwrap();
    session.simple_query("select 1").await.unwrap();

    // New certificate (same CA) and a new tenant on disk.
    let new = TestCert::new();
    write(&proxy.dir.path().join("server.crt"), &new.cert_pem);
    write(&proxy.dir.path().join("server.key"), &new.key_pem);
    write(&proxy.dir.path().join("ca.crt"), &new.ca_pem);
    write(
        &proxy.config_path(),
        &(text.clone() + &tenant("newco", &b, "")),
    );
    proxy.reload_and_wait().await;

    session
        .simple_query("select 1")
        .await
        .expect("session survives reload");
    let mut proxy = proxy;
    proxy.cert = new;
    let new_cert = served_certificate(&proxy).await;
    assert_ne!(old_cert, new_cert);
    let (client, _c) = connect(&proxy.pg_config("app.newco")).await.unwrap();
    assert_eq!(cluster_name(&client).await, "cluster-reload-b");

    // A broken file is refused and the running configuration stays.
    let errors = || async {
        metric_or_zero(
            &proxy.metrics().await,
            "pgcell_config_reloads_total",
            &[("outcome", "error")],
        )
    };
    let errors_before = errors().await;
    write(&proxy.config_path(), "[listen]\naddr = 42\n");
    proxy.handle.reload();
    eventually(
        Duration::from_secs(10),
        "the broken reload is refused",
        || async { errors().await > errors_before },
    )
    .await;
    let (client, _c) = connect(&proxy.pg_config("app.newco")).await.unwrap();
    client.simple_query("select 1").await.unwrap();
    let m = proxy.metrics().await;
    assert!(metric(&m, "pgcell_config_reloads_total", &[("outcome", "error")]).unwrap() >= 1.0);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_sessions_finish() {
    let a = cluster("cluster-shutdown");
    let proxy = Proxy::start(&config_text("", "allow", &tenant("acme", &a, ""))).await;
    let (client, _c) = connect(&proxy.pg_config("app.acme")).await.unwrap();
    let busy = tokio::spawn(async move {
        let r = client.simple_query("select pg_sleep(1)").await;
        drop(client);
        r
    });
    eventually(Duration::from_secs(10), "the query runs", || async {
        sessions_running(&a, "select pg_sleep(1)") == 1
    })
    .await;
    let addr = proxy.addr;
    let admin = proxy.admin.unwrap();
    proxy.handle.shutdown();
    // Draining first (the propagation window), then stopping.
    eventually(Duration::from_secs(2), "stopping", || async {
        proxy.handle.state() == pgcell::LifecycleState::Stopping
    })
    .await;
    // No new connections; /readyz says so while the session finishes.
    assert!(TcpStream::connect(addr).await.is_err());
    let (status, body) = http_get(admin, "/readyz").await;
    assert_eq!((status, body.as_str()), (503, "stopping\n"));
    busy.await.unwrap().expect("in-flight query completes");
    proxy.stop().await;
}

#[test]
fn check_reports_every_problem_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[listen]\naddr = \"nowhere\"\nhealth_adr = \"127.0.0.1:1\"\n[tls]\nmode = \"require\"\n\
         [[tenants]]\nid = \"Bad_Id\"\nbackends = []\nallowed_cidrs = [\"300.0.0.0/8\"]\n",
    )
    .unwrap();
    let out = pgcell_bin()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "listen.health_adr: unknown key",
        "listen.addr:",
        "tls.cert:",
        "tls.key:",
        "tenants[0].id:",
        "tenants[0].backends:",
        "tenants[0].allowed_cidrs[0]:",
    ] {
        assert!(err.contains(key), "missing {key:?} in:\n{err}");
    }

    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[listen]\naddr = \"127.0.0.1:0\"\n[routing]\nsources = [\"options\"]\n",
    )
    .unwrap();
    let out = pgcell_bin()
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert_success(&out, "pgcell check");

    // The committed configs are valid.
    for file in ["config/pgcell.example.toml", "config/pgcell.toml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let out = pgcell_bin()
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert_success(&out, &format!("pgcell check {file}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_reloads_on_sighup_and_stops_on_sigterm() {
    let a = cluster("cluster-bin");
    let dir = tempfile::tempdir().unwrap();
    TestCert::new().write_to(dir.path());
    let port = pgcell::free_port().unwrap();
    let admin = pgcell::free_port().unwrap();
    let text = config_text_with(
        &Base::on_ports(port, admin),
        "",
        "allow",
        &tenant("acme", &a, ""),
    );
    let path = dir.path().join("pgcell.toml");
    std::fs::write(&path, &text).unwrap();
    // `pgcell --config F` means run.
    let mut child = spawn_pgcell(&path);
    let admin_addr = format!("127.0.0.1:{admin}").parse().unwrap();
    wait_ready(admin_addr, Duration::from_secs(10)).await;
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(port)
        .user("app.acme")
        .password(APP_PASSWORD)
        .dbname("app");
    let (client, _c) = connect(&cfg).await.unwrap();
    assert_eq!(cluster_name(&client).await, "cluster-bin");

    // SIGHUP: a new tenant appears; the open session stays.
    std::fs::write(
        &path,
        text.clone()
            + "[[tenants]]\nid = \"later\"\nbackends = [\""
            + &a.addr().to_string()
            + "\"]\n",
    )
    .unwrap();
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    eventually(
        Duration::from_secs(5),
        "SIGHUP loads the new tenant",
        || async {
            let mut c = cfg.clone();
            c.user("app.later");
            connect(&c).await.is_ok()
        },
    )
    .await;
    client.simple_query("select 1").await.unwrap();
    drop(client);

    // SIGTERM: graceful stop, exit 0.
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::task::spawn_blocking(move || {
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string_blocking(&mut stderr);
        (status, stderr)
    })
    .await
    .unwrap();
    assert!(status.0.success(), "exit {:?}\n{}", status.0, status.1);
    // One log line per finished connection, with the fields operators need.
    assert!(status.1.contains("connection closed"), "{}", status.1);
    assert!(
        status.1.contains("tenant=\"acme\"") || status.1.contains("tenant=acme"),
        "{}",
        status.1
    );
    // The access trail: who, to which database (the user as routed, the
    // tenant's part taken off).
    let line = status
        .1
        .lines()
        .find(|l| l.contains("connection closed") && l.contains("acme"))
        .unwrap_or_default();
    for field in ["user=", "database=", "client_addr=", "outcome="] {
        assert!(line.contains(field), "{field} missing: {line}");
    }
    assert!(
        line.contains("user=\"app\"") || line.contains("user=app"),
        "{line}"
    );
}

trait ReadToStringBlocking {
    fn read_to_string_blocking(&mut self, out: &mut String);
}

impl ReadToStringBlocking for std::process::ChildStderr {
    fn read_to_string_blocking(&mut self, out: &mut String) {
        let _ = std::io::Read::read_to_string(self, out);
    }
}

/// Three consecutive free ports (data, health, admin) for the demo.
fn free_port_run() -> u16 {
    for _ in 0..50 {
        let p = pgcell::free_port().unwrap();
        if p < 65_000 && (1..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok()) {
            return p;
        }
    }
    panic!("no run of three free ports");
}

#[test]
fn demo_prints_working_commands_and_cleans_up() {
    use std::io::BufRead;
    let port = free_port_run();
    let mut child = pgcell_bin()
        .args(["demo", "--port", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut commands = Vec::new();
    let mut config_dir = None;
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("demo prints its commands within a minute");
        if let Some(path) = line.strip_prefix("Configuration: ") {
            config_dir = std::path::Path::new(path).parent().map(|p| p.to_owned());
        }
        if line.trim_start().starts_with("PGPASSWORD=") {
            commands.push(line.trim().to_owned());
        }
        if line.starts_with("Ctrl-C stops") {
            break;
        }
    }
    assert_eq!(commands.len(), 4, "{commands:?}");
    let run = |cmd: &str| {
        let out = Command::new("bash")
            .args(["-c", cmd])
            .env_remove("PGSSLMODE")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    for (cmd, want) in commands[..3].iter().zip(["acme", "globex", "globex"]) {
        let (ok, out) = run(cmd);
        assert!(ok && out.contains(want), "{cmd}\n{out}");
    }
    let (ok, out) = run(&commands[3]);
    assert!(!ok && out.contains("no tenant specified"), "{out}");

    // Ctrl-C: the demo has no load balancer to leave, so it does not wait
    // the drain's propagation (10 s by default); the cluster goes too.
    let stopping = std::time::Instant::now();
    assert!(Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let took = stopping.elapsed();
    // Measured here: 0.2 s, most of it `pg_ctl stop` and removing the
    // cluster's files.
    assert!(
        took < Duration::from_secs(1),
        "the demo took {took:?} to stop"
    );
    let dir = config_dir.expect("demo printed its configuration path");
    assert!(!dir.exists(), "{} left behind", dir.display());
}
