//! Drivers from other ecosystems through a transaction pool smaller than
//! their client count: asyncpg (statement cache, `prepare`, `executemany`,
//! cursors, errors inside transactions) and psycopg 3 (`prepare_threshold=0`,
//! pipeline mode, `executemany`, rollback); and what their clients see of
//! session state (their own and other clients'), compared with direct
//! connections. The Python scripts live in `tests/drivers/`; the drivers
//! are installed by the test itself into a virtualenv outside the clone
//! (`PGCELL_TEST_VENV`, default `/var/tmp/pgcell-test-venv`), once per
//! machine.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::support::python::venv_python;

/// How long one driver script may run before it is killed.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(90);

/// The Python packages the scripts need.
const PACKAGES: &[&str] = &["asyncpg", "psycopg[binary]"];

/// The virtualenv's python, installing the drivers first when missing.
fn driver_python() -> PathBuf {
    venv_python(PACKAGES, "import asyncpg, psycopg; psycopg.pq.version()")
}

/// Runs `tests/drivers/<script>` with `args`, killed after
/// [`SCRIPT_TIMEOUT`]; panics unless it exits 0, showing its output.
async fn run_script(python: PathBuf, script: &str, args: Vec<String>) {
    run_script_as(python, script, args, false).await
}

/// [`run_script`] against PostgreSQL itself: the same checks must hold
/// there (they are PostgreSQL's behaviour, not pgcell's), except that no
/// connection can change backend.
async fn run_baseline(python: PathBuf, script: &str, args: Vec<String>) {
    run_script_as(python, script, args, true).await
}

async fn run_script_as(python: PathBuf, script: &str, args: Vec<String>, baseline: bool) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("drivers")
        .join(script);
    let shown = script.display().to_string();
    let result = tokio::task::spawn_blocking(move || -> Result<_, String> {
        let stdout = tempfile::tempfile().map_err(|e| e.to_string())?;
        let stderr = tempfile::tempfile().map_err(|e| e.to_string())?;
        let mut child = Command::new(&python)
            .arg("-u")
            .arg(&script)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(stdout.try_clone().map_err(|e| e.to_string())?)
            .stderr(stderr.try_clone().map_err(|e| e.to_string())?)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PGCELL_DRIVER_BASELINE", if baseline { "1" } else { "0" })
            .spawn()
            .map_err(|e| format!("run {}: {e}", python.display()))?;
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                break Some(status);
            }
            if started.elapsed() > SCRIPT_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Ok((status, read_all(stdout), read_all(stderr)))
    })
    .await
    .unwrap();
    let (status, stdout, stderr) = result.unwrap_or_else(|e| panic!("{shown}: {e}"));
    match status {
        Some(s) if s.success() => println!("{shown}:\n{stdout}{stderr}"),
        Some(s) => panic!("{shown} failed ({s})\n--- stdout\n{stdout}--- stderr\n{stderr}"),
        None => panic!(
            "{shown} killed after {SCRIPT_TIMEOUT:?}\n--- stdout\n{stdout}--- stderr\n{stderr}"
        ),
    }
}

fn read_all(mut f: File) -> String {
    use std::io::{Read, Seek};
    let mut s = String::new();
    let _ = f.rewind();
    let _ = f.read_to_string(&mut s);
    s
}

/// A transaction-mode tenant `id` of `size` backends on `cluster`; its
/// `app` user logs in with a password file.
fn transaction_tenant(id: &str, cluster: &pgcell::Cluster, size: u32) -> String {
    format!(
        "{}[tenants.pool]\nmode = \"transaction\"\nsize = {size}\nacquire_timeout = \"60s\"\n[[tenants.users]]\nname = \"app\"\npassword_file = \"{{pw}}\"\n",
        tenant(id, cluster, "")
    )
}

/// The same database, straight to PostgreSQL.
fn direct_dsn(cluster: &pgcell::Cluster) -> String {
    format!(
        "postgresql://app:{APP_PASSWORD}@127.0.0.1:{}/app?sslmode=disable",
        cluster.port()
    )
}

fn dsn(proxy: &Proxy, tenant: &str) -> String {
    format!(
        "postgresql://app.{tenant}:{APP_PASSWORD}@127.0.0.1:{}/app?sslmode=disable",
        proxy.addr.port()
    )
}

/// Backends pgcell holds on `cluster`.
fn pgcell_backends(cluster: &pgcell::Cluster) -> u32 {
    cluster
        .psql(
            "postgres",
            "select count(*) from pg_stat_activity where usename = 'app' and backend_type = 'client backend'",
        )
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_prepared_statements_through_a_transaction_pool() {
    let python = tokio::task::spawn_blocking(driver_python).await.unwrap();
    let a = cluster("cluster-asyncpg");
    let proxy = Proxy::start_with_files(
        &config_text("", "allow", &transaction_tenant("tx", &a, 2)),
        &[("pw", APP_PASSWORD)],
    )
    .await;
    run_baseline(
        python.clone(),
        "asyncpg_check.py",
        vec![direct_dsn(&a), "8".to_owned()],
    )
    .await;
    // 8 asyncpg connections share 2 backends.
    run_script(
        python,
        "asyncpg_check.py",
        vec![dsn(&proxy, "tx"), "8".to_owned()],
    )
    .await;
    assert!(pgcell_backends(&a) <= 2);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_prepared_statements_through_a_transaction_pool() {
    let python = tokio::task::spawn_blocking(driver_python).await.unwrap();
    let a = cluster("cluster-psycopg");
    let proxy = Proxy::start_with_files(
        &config_text(
            "",
            "allow",
            &(transaction_tenant("tx", &a, 2) + &transaction_tenant("one", &a, 1)),
        ),
        &[("pw", APP_PASSWORD)],
    )
    .await;
    run_baseline(
        python.clone(),
        "psycopg_check.py",
        vec![direct_dsn(&a), direct_dsn(&a), "8".to_owned()],
    )
    .await;
    // 8 psycopg connections share 2 backends; the "one" pool has a single
    // backend that every client shares.
    run_script(
        python,
        "psycopg_check.py",
        vec![dsn(&proxy, "tx"), dsn(&proxy, "one"), "8".to_owned()],
    )
    .await;
    assert!(pgcell_backends(&a) <= 3);
    proxy.stop().await;
}

/// Session state must not cross clients of a transaction pool, nor be lost
/// by its own client, however the driver sends it: psycopg's named
/// prepared statements (`prepare_threshold=0`, and past its default
/// threshold of 5), asyncpg's statement cache re-running a cached `SET`
/// without its text on the wire, and `DISCARD ALL`/`DEALLOCATE ALL` after
/// `prepare()`. The script runs each scenario on a direct connection and
/// through a pool of one backend (so consecutive clients share it) and
/// compares what the clients see; the direct answers are checked against
/// PostgreSQL's documented behaviour, pgcell's are only compared.
///
/// Then the randomised part (`isolation_random.py`): per seed, a program
/// of three clients (asyncpg with its statement cache, psycopg with
/// `prepare_threshold` 0 and 5) and about 25 steps (settings, roles,
/// `set_config` with parameters, `DISCARD ALL`, `DEALLOCATE ALL`,
/// transactions with errors part-way, multi-statement queries hiding `;`,
/// psycopg pipelines, cached statements again), run directly and through
/// the pool; after every step each client, and a new one, reads its
/// session, and every answer must be the same. `PGCELL_DRIVER_SEEDS`
/// picks the seeds: a count (`500`: seeds 0 to 499) or a range
/// (`1000-1499`); 12 by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drivers_see_no_other_clients_state_through_a_transaction_pool() {
    let python = tokio::task::spawn_blocking(driver_python).await.unwrap();
    let a = cluster("cluster-driver-isolation");
    a.psql("postgres", "CREATE ROLE r1 NOLOGIN; GRANT r1 TO app")
        .expect("create role r1");
    // A schema the random programs' search_path names (r1 has no USAGE on
    // it, so current_schema() differs by role).
    a.psql("app", "CREATE SCHEMA s1 AUTHORIZATION app")
        .expect("create schema s1");
    let proxy = Proxy::start_with_files(
        &config_text("", "allow", &transaction_tenant("one", &a, 1)),
        &[("pw", APP_PASSWORD)],
    )
    .await;
    run_script(
        python.clone(),
        "isolation_drivers.py",
        vec![direct_dsn(&a), dsn(&proxy, "one")],
    )
    .await;
    let spec = std::env::var("PGCELL_DRIVER_SEEDS").unwrap_or_else(|_| "12".to_owned());
    let seeds = match spec.trim().split_once('-') {
        Some((from, to)) => from
            .trim()
            .parse::<u64>()
            .ok()
            .zip(to.trim().parse::<u64>().ok())
            .filter(|(from, to)| from <= to),
        None => spec
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .map(|n| (0, n - 1)),
    };
    let (first, last) = seeds.unwrap_or_else(|| {
        panic!("PGCELL_DRIVER_SEEDS is a count (500) or a range (1000-1499), not {spec:?}")
    });
    // Eight seeds per run of the script (about 1 s each, some 7 s for one
    // that hangs: a call's timeout is 5 s), so each run stays well within
    // SCRIPT_TIMEOUT; a run goes through all its seeds, the test stops at
    // the first run that fails.
    let mut from = first;
    while from <= last {
        let to = last.min(from + 7);
        run_script(
            python.clone(),
            "isolation_random.py",
            vec![direct_dsn(&a), dsn(&proxy, "one"), format!("{from}-{to}")],
        )
        .await;
        from = to + 1;
    }
    assert!(pgcell_backends(&a) <= 1);
    proxy.stop().await;
}

/// psycopg's `cancel_safe()` and async cancellation over TLS (libpq 17's
/// encrypted cancel): the query is cancelled and the cancel connection
/// ends cleanly (with close_notify), through a passthrough tenant and a
/// transaction pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_cancel_safe_over_tls() {
    let python = tokio::task::spawn_blocking(driver_python).await.unwrap();
    let a = cluster("cluster-psycopg-cancel");
    let proxy = Proxy::start_with_files(
        &config_text(
            "",
            "allow",
            &(tenant("pass", &a, "") + &transaction_tenant("tx", &a, 1)),
        ),
        &[("pw", APP_PASSWORD)],
    )
    .await;
    let tls = |tenant: &str| dsn(&proxy, tenant).replace("sslmode=disable", "sslmode=require");
    run_script(python, "psycopg_cancel.py", vec![tls("pass"), tls("tx")]).await;
    let metrics = proxy.metrics().await;
    assert!(
        metric(
            &metrics,
            "pgcell_cancel_requests_total",
            &[("outcome", "forwarded")]
        )
        .unwrap_or(0.0)
            >= 4.0,
        "{metrics}"
    );
    proxy.stop().await;
}
