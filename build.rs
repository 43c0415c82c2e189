//! Puts the git revision pgcell is built from into `PGCELL_GIT_REVISION`
//! (shown by `pgcell --version` and the `revision` label of
//! `pgcell_build_info`).
//!
//! Where it comes from, first found wins: the `PGCELL_GIT_REVISION`
//! environment variable (container builds, where `.git` is not in the
//! build context: `docker build --build-arg PGCELL_GIT_REVISION=$(git
//! rev-parse --short=12 HEAD)`), then `git rev-parse HEAD` in this checkout, else `unknown`.

use std::path::PathBuf;
use std::process::Command;

const ENV: &str = "PGCELL_GIT_REVISION";

fn main() {
    println!("cargo:rerun-if-env-changed={ENV}");
    println!("cargo:rerun-if-changed=build.rs");
    let revision = std::env::var(ENV)
        .ok()
        .filter(|r| !r.trim().is_empty())
        .map(|r| r.trim().to_owned())
        .or_else(from_git)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env={ENV}={revision}");
}

/// The short commit id of HEAD, and what makes cargo run this again when
/// HEAD moves (a commit, a checkout).
fn from_git() -> Option<String> {
    let git_dir = git(&["rev-parse", "--git-dir"]).map(PathBuf::from)?;
    let head = git_dir.join("HEAD");
    println!("cargo:rerun-if-changed={}", head.display());
    if let Some(reference) = std::fs::read_to_string(&head)
        .ok()
        .and_then(|h| h.strip_prefix("ref: ").map(|r| r.trim().to_owned()))
    {
        let common = git(&["rev-parse", "--git-common-dir"])
            .map(PathBuf::from)
            .unwrap_or_else(|| git_dir.clone());
        for dir in [&git_dir, &common] {
            let path = dir.join(&reference);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
        let packed = common.join("packed-refs");
        if packed.exists() {
            println!("cargo:rerun-if-changed={}", packed.display());
        }
    }
    // No "-dirty" mark: this runs again on a commit, not on every edit, so
    // the mark would go stale.
    git(&["rev-parse", "--short=12", "HEAD"])
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}
