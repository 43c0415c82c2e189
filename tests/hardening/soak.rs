//! The soak, on demand (`scripts/soak.sh`): pgbench through pgcell with a
//! new connection per transaction (client churn), the backend restarted
//! between rounds, for `PGCELL_SOAK_SECS` (default 600). Reports pgcell's
//! RSS and open file descriptors at the start and the end, and fails on
//! any failed transaction or growth past the bounds.

use std::time::{Duration, Instant};

use crate::common::*;
use crate::support::pgbench_with;

/// pgbench as `app` of tenant `soak`.
fn pgbench(port: u16, args: &[&str]) -> (bool, String) {
    pgbench_with(port, "app", args, &[("PGOPTIONS", "tenant=soak")])
}

fn field(text: &str, prefix: &str) -> u64 {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .and_then(|v| v.split(['/', ' ']).find(|s| !s.is_empty()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "on demand: scripts/soak.sh"]
async fn soak() {
    let secs: u64 = std::env::var("PGCELL_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let round: u64 = std::env::var("PGCELL_SOAK_ROUND_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let mut a = cluster("hard-soak");
    init_pgbench(&a);
    let p = Pgcell::start_with(
        "",
        &pooled("soak", &a, "", "mode = \"transaction\"\nsize = 4\nacquire_timeout = \"30s\"\ncheck_after_idle = \"1s\""),
        "info",
    )
    .await;
    let port = p.addr.port();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (mut rounds, mut restarts, mut transactions, mut failed) = (0u64, 0u64, 0u64, 0u64);
    let mut start = None;
    while Instant::now() < deadline {
        let mode = ["simple", "extended", "prepared"][(rounds % 3) as usize];
        let t = round.to_string();
        let (ok, text) = tokio::task::block_in_place(|| {
            // One thread per client: with -M prepared a pgbench thread
            // prepares for all its clients in turn, and one of them waiting
            // for a pooled backend its sibling holds would stall the thread
            // (tests/front_door/pooling.rs).
            pgbench(port, &["-C", "-c", "8", "-j", "8", "-T", &t, "-M", mode])
        });
        let done = field(&text, "number of transactions actually processed:");
        let bad = field(&text, "number of failed transactions:");
        transactions += done;
        failed += bad;
        assert!(ok && done > 0, "round {rounds} ({mode}) failed:\n{text}");
        rounds += 1;
        let sample = (p.rss_kib(), p.fds());
        eprintln!(
            "soak round {rounds} ({mode}): {done} transactions, {bad} failed; RSS {} KiB, fds {}",
            sample.0, sample.1
        );
        // The first round warms the pool and the allocator.
        start.get_or_insert(sample);
        // A backend restart between rounds: the pool must notice its dead
        // idle connections by itself.
        if rounds % 3 == 0 {
            tokio::task::block_in_place(|| {
                a.stop("fast").unwrap();
                a.restart().unwrap();
            });
            restarts += 1;
        }
    }
    let (rss0, fds0) = start.unwrap_or_default();
    let (rss1, fds1) = (p.rss_kib(), p.fds());
    eprintln!(
        "soak: {secs} s, {rounds} rounds, {restarts} backend restarts, {transactions} transactions, {failed} failed; \
         RSS {rss0} -> {rss1} KiB, fds {fds0} -> {fds1}"
    );
    assert_eq!(failed, 0);
    assert!(
        rss1 < rss0 + 32 * 1024,
        "RSS grew from {rss0} to {rss1} KiB"
    );
    assert!(fds1 <= fds0 + 8, "fds grew from {fds0} to {fds1}");
    let log = p.log();
    assert!(!log.contains("panicked"));
}
