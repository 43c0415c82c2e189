//! The test virtualenv (`PGCELL_TEST_VENV`, default
//! `/var/tmp/pgcell-test-venv`): outside the clone, shared by every test
//! that needs a Python package (the driver tests, moto), reused across
//! runs. Each test names the packages it needs and a line of Python that
//! imports them; what is missing is installed once per machine.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// The virtualenv's python, able to run `imports` (installing `packages`
/// first when it cannot). Panics with the installer's output when that
/// fails. Installs at most once per process for each `imports`.
pub fn venv_python(packages: &[&str], imports: &str) -> PathBuf {
    static READY: Mutex<Vec<(String, Result<PathBuf, String>)>> = Mutex::new(Vec::new());
    let mut ready = READY.lock().unwrap_or_else(|e| e.into_inner());
    let result = match ready.iter().find(|(i, _)| i == imports) {
        Some((_, result)) => result.clone(),
        None => {
            let result = install(packages, imports);
            ready.push((imports.to_owned(), result.clone()));
            result
        }
    };
    result.unwrap_or_else(|e| panic!("could not install {packages:?} for this test: {e}"))
}

fn venv_dir() -> PathBuf {
    std::env::var_os("PGCELL_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/pgcell-test-venv"))
}

/// True when `python` runs `imports`.
fn can_import(python: &Path, imports: &str) -> bool {
    python.exists()
        && Command::new(python)
            .args(["-c", imports])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// Adds `packages` to the virtualenv in place, so what other tests
/// installed there stays. When there is none, or one that cannot take
/// them (say, left broken by an older layout), a fresh one is built in a
/// directory of its own and renamed into place: concurrent test processes
/// never see (or break) a half-built one; the first rename wins and the
/// others discard their copy.
fn install(packages: &[&str], imports: &str) -> Result<PathBuf, String> {
    let dir = venv_dir();
    let python = dir.join("bin").join("python");
    if can_import(&python, imports) {
        return Ok(python);
    }
    if python.exists() && pip_install(&python, packages).is_ok() && can_import(&python, imports) {
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
    pip_install(&built, packages)?;
    if !can_import(&built, imports) {
        return Err(format!(
            "{} still cannot run `{imports}` after pip install",
            built.display()
        ));
    }
    if dir.exists() && !can_import(&python, imports) {
        let stale = sibling("stale");
        if std::fs::rename(&dir, &stale).is_ok() {
            let _ = std::fs::remove_dir_all(&stale);
        }
    }
    if std::fs::rename(&building, &dir).is_err() {
        // Another process put its virtualenv there first.
        let _ = std::fs::remove_dir_all(&building);
    }
    if can_import(&python, imports) {
        Ok(python)
    } else {
        Err(format!(
            "{} cannot run `{imports}` after installing {packages:?}",
            python.display()
        ))
    }
}

fn pip_install(python: &Path, packages: &[&str]) -> Result<(), String> {
    run_installer(
        Command::new(python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(packages),
    )
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
