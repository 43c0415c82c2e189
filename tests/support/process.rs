//! Child processes a test started (pgcell, moto_server), stopped by their
//! own pid.

use std::process::{Child, Command};
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
