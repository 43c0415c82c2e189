//! A client that vanishes without FIN or RST (its network goes away) is
//! found by TCP keepalive and its connection slot freed. Loopback never
//! loses packets, so the client runs in a network namespace this test
//! creates, joined to the host by a veth pair whose link the test takes
//! down mid-session; everything is deleted at the end.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// A network namespace and a veth pair (host side `10.213.N.1`, namespace
/// side `10.213.N.2`), removed on drop.
struct TestNet {
    ns: String,
    host_if: String,
    ns_if: String,
    host_ip: Ipv4Addr,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {} (this test needs root and iproute2: it creates a network namespace)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestNet {
    fn create() -> TestNet {
        let id = std::process::id() % 10_000;
        let n = (std::process::id() % 250) as u8;
        let ns = format!("pgcell-ho-{id}");
        let host_if = format!("pgho{id}h");
        let ns_if = format!("pgho{id}n");
        let host_ip = Ipv4Addr::new(10, 213, n, 1);
        // Leftovers of a killed earlier run with the same pid.
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        ip(&["netns", "add", &ns]);
        let net = TestNet {
            ns: ns.clone(),
            host_if: host_if.clone(),
            ns_if: ns_if.clone(),
            host_ip,
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &ns]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        let ns_ip = format!("10.213.{n}.2/30");
        ip(&[
            "netns", "exec", &ns, "ip", "addr", "add", &ns_ip, "dev", &ns_if,
        ]);
        ip(&["netns", "exec", &ns, "ip", "link", "set", &ns_if, "up"]);
        ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
        net
    }

    /// The client side goes silent: the namespace's end of the link is
    /// down, so nothing it sent or would answer gets through, and the host
    /// sees no FIN or RST.
    fn cut(&self) {
        ip(&[
            "netns",
            "exec",
            &self.ns,
            "ip",
            "link",
            "set",
            &self.ns_if,
            "down",
        ]);
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

/// `psql` in the namespace, connected and idle: its stdin is a pipe the
/// test holds open and never writes. Killed (by pid) on drop.
struct IdleClient(Child);

impl Drop for IdleClient {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn active_clients(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("pgcell_client_connections_active{"))
        .filter(|l| l.contains("tenant=\"acme\""))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_client_is_reclaimed_by_keepalive() {
    let net = TestNet::create();
    let a = cluster("hard-half-open");
    let p = Pgcell::start_on(
        net.host_ip,
        "tcp_keepalive = \"1s\"",
        &pooled("acme", &a, "", "mode = \"transaction\"\nsize = 2"),
        "info",
    )
    .await;
    let conninfo = format!(
        "host={} port={} user=app dbname=app options=tenant=acme sslmode=disable connect_timeout=10",
        net.host_ip,
        p.addr.port()
    );
    let client = IdleClient(
        Command::new("ip")
            .args(["netns", "exec", &net.ns, "psql", "-X", "-q", &conninfo])
            .env("PGPASSWORD", APP_PASSWORD)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(p.dir.path().join("psql.err")).unwrap())
            .spawn()
            .expect("psql in the namespace"),
    );
    let connected = poll(Duration::from_secs(20), || async {
        active_clients(&p.metrics().await) >= 1.0
    })
    .await;
    assert!(
        connected.is_ok(),
        "the client never connected: {}\n{}",
        std::fs::read_to_string(p.dir.path().join("psql.err")).unwrap_or_default(),
        p.log()
    );

    // Let the client acknowledge everything pgcell sent at login (its
    // delayed ACK) so the cut tests the idle case keepalive covers; the
    // in-flight case is covered by TCP_USER_TIMEOUT with the same budget.
    tokio::time::sleep(Duration::from_secs(1)).await;
    net.cut();
    let cut_at = Instant::now();
    // Keepalive: 1 s idle, then 3 unanswered probes 10 s apart.
    let reclaimed = poll(Duration::from_secs(60), || async {
        active_clients(&p.metrics().await) <= 0.0
    })
    .await;
    assert!(
        reclaimed.is_ok(),
        "the vanished client still holds its slot after 60 s:\n{}",
        p.log()
    );
    let reclaimed = cut_at.elapsed();
    eprintln!(
        "half-open client reclaimed {:.1} s after its link went down",
        reclaimed.as_secs_f64()
    );
    // Not before the probes could have run out: the slot was freed by
    // keepalive, not by anything else.
    assert!(reclaimed >= Duration::from_secs(20), "{reclaimed:?}");
    // pgcell still serves others.
    let other = p.connect("acme").await.unwrap();
    other.simple_query("select 1").await.unwrap();
    drop(client);
}
