//! Child processes a test starts (the pgcell binary, moto_server, psql
//! and pgbench), checked and stopped by their own pid.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

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

/// The pgcell binary built for these tests.
pub fn pgcell_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pgcell"))
}

/// `pgcell --config <config>` (which means run), stdout discarded,
/// stderr piped for the test to read.
pub fn spawn_pgcell(config: &Path) -> Child {
    pgcell_bin()
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the pgcell binary")
}

/// Fails the test, showing stderr, unless `out` is a success.
pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
