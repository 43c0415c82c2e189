//! Drivers from other ecosystems through a transaction pool smaller than
//! their client count: asyncpg (statement cache, `prepare`, `executemany`,
//! cursors, errors inside transactions) and psycopg 3 (`prepare_threshold=0`,
//! pipeline mode, `executemany`, rollback). The Python scripts live in
//! `tests/drivers/`; the drivers are installed by the test itself into a
//! virtualenv outside the clone (`PGCELL_TEST_VENV`, default
//! `/var/tmp/pgcell-test-venv`), once per machine.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::harness::*;

/// How long one driver script may run before it is killed.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(90);

/// The Python packages the scripts need.
const PACKAGES: &[&str] = &["asyncpg", "psycopg[binary]"];

/// The virtualenv's python, installing the drivers first when missing.
/// Panics with the installer's output when that fails.
fn driver_python() -> PathBuf {
    static VENV: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match VENV.get_or_init(install_drivers) {
        Ok(python) => python.clone(),
        Err(e) => panic!("could not install the Python drivers for this test: {e}"),
    }
}

fn venv_dir() -> PathBuf {
    std::env::var_os("PGCELL_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/pgcell-test-venv"))
}

/// True when `python` imports both drivers (psycopg with its libpq).
fn has_drivers(python: &Path) -> bool {
    python.exists()
        && Command::new(python)
            .args(["-c", "import asyncpg, psycopg; psycopg.pq.version()"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// Creates the virtualenv and installs [`PACKAGES`] unless it already has
/// them. It is built in a directory of its own and renamed into place, so
/// concurrent test processes never see (or break) a half-built one: the
/// first rename wins and the others discard their copy. One left broken
/// (say, by an older layout) fails the import check and is replaced.
fn install_drivers() -> Result<PathBuf, String> {
    let dir = venv_dir();
    let python = dir.join("bin").join("python");
    if has_drivers(&python) {
        return Ok(python);
    }
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    let sibling = |what: &str| {
        let mut name = dir.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".{what}-{}", std::process::id()));
        dir.with_file_name(name)
    };
    let building = sibling("building");
    let _ = std::fs::remove_dir_all(&building);
    let base = std::env::var("PGCELL_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    run_installer(Command::new(&base).args(["-m", "venv"]).arg(&building))?;
    let built = building.join("bin").join("python");
    run_installer(
        Command::new(&built)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(PACKAGES),
    )?;
    if !has_drivers(&built) {
        return Err(format!(
            "{} still cannot import asyncpg and psycopg after pip install",
            built.display()
        ));
    }
    if dir.exists() && !has_drivers(&python) {
        let stale = sibling("stale");
        if std::fs::rename(&dir, &stale).is_ok() {
            let _ = std::fs::remove_dir_all(&stale);
        }
    }
    if std::fs::rename(&building, &dir).is_err() {
        // Another process put its virtualenv there first.
        let _ = std::fs::remove_dir_all(&building);
    }
    if has_drivers(&python) {
        Ok(python)
    } else {
        Err(format!(
            "{} cannot import asyncpg and psycopg after installing them",
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

/// Runs `tests/drivers/<script>` with `args`, killed after
/// [`SCRIPT_TIMEOUT`]; panics unless it exits 0, showing its output.
async fn run_script(python: PathBuf, script: &str, args: Vec<String>) {
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
fn transaction_tenant(id: &str, cluster: &pgcell::local_pg::Cluster, size: u32) -> String {
    format!(
        "{}[tenants.pool]\nmode = \"transaction\"\nsize = {size}\nacquire_timeout = \"60s\"\n[[tenants.users]]\nname = \"app\"\npassword_file = \"{{pw}}\"\n",
        tenant(id, cluster, "")
    )
}

fn dsn(proxy: &Proxy, tenant: &str) -> String {
    format!(
        "postgresql://app.{tenant}:{APP_PASSWORD}@127.0.0.1:{}/app?sslmode=disable",
        proxy.addr.port()
    )
}

/// Backends pgcell holds on `cluster`.
fn pgcell_backends(cluster: &pgcell::local_pg::Cluster) -> u32 {
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
