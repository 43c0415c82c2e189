//! What `deploy/` holds is valid, not just plausible.
//!
//! - `kubernetes.rs`: `kubectl kustomize` renders both overlays (and the
//!   example tenant); every object parses into its typed struct (unknown
//!   kinds and fields fail); the invariants that keep a drain graceful and
//!   the permissions minimal hold against pgcell's own config parser and
//!   discovery code.
//! - `terraform.rs`: `terraform fmt -check`, `init` + `validate` from the
//!   local provider mirror, and `apply` + `destroy` against `moto_server`,
//!   with the target group checked through the AWS SDK.
//! - `metric_names.rs`: the Grafana dashboard and the Omnistrate spec parse
//!   and name only metrics pgcell exports (`src/metrics/names.rs`).
//! - `image.rs`: the Dockerfile's shape, and the binary's `--version`.
//!
//! Needs `kubectl` (with kustomize), `terraform` and the AWS provider under
//! `/opt/tf-plugins`, and python3 for moto (installed into the test
//! virtualenv when missing, see `tests/support/moto.rs`).

// A test binary has no public API: its support modules' `pub` is for
// the test modules beside them.
#![allow(unreachable_pub, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod manifests;
#[path = "../support/mod.rs"]
mod support;

mod image;
mod kubernetes;
mod metric_names;
mod terraform;

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `repo()/rel`.
pub fn repo_path(rel: &str) -> PathBuf {
    repo().join(rel)
}

/// Runs `cmd` (bounded by `timeout`, in seconds) and returns its stdout;
/// fails the test with both outputs when it fails.
pub fn run(cmd: &mut Command, timeout_s: u32) -> String {
    let shown = format!("{cmd:?}");
    let program = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let mut bounded = Command::new("timeout");
    bounded
        .arg("--kill-after=10")
        .arg(timeout_s.to_string())
        .arg(program)
        .args(args)
        .stdin(Stdio::null());
    if let Some(dir) = cmd.get_current_dir() {
        bounded.current_dir(dir);
    }
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => bounded.env(k, v),
            None => bounded.env_remove(k),
        };
    }
    let out = bounded.output().unwrap_or_else(|e| panic!("{shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
