//! The container image's recipe (not built here: no container runtime is
//! assumed) and what the binary says about itself.

use std::process::Command;

use crate::kubernetes::{Cell, SELF_REGISTER};
use crate::{repo_path, run};

/// The Dockerfile's instructions as (stage index, INSTRUCTION, rest), with
/// continuation lines joined and comments dropped.
fn instructions() -> Vec<(usize, String, String)> {
    let text = std::fs::read_to_string(repo_path("Dockerfile")).unwrap();
    let mut out = Vec::new();
    let mut stage = 0;
    let mut pending = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && pending.is_empty()) {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let full = std::mem::take(&mut pending);
        let (op, rest) = full.split_once(' ').unwrap_or((&full, ""));
        let op = op.to_ascii_uppercase();
        if op == "FROM" {
            stage += 1;
        }
        out.push((stage, op, rest.trim().to_owned()));
    }
    out
}

#[test]
fn dockerfile_is_multi_stage_non_root_with_only_the_binary_and_ca_bundle() {
    let all = instructions();
    let stages = all.iter().filter(|(_, op, _)| op == "FROM").count();
    assert!(stages >= 2, "multi-stage");
    let last: Vec<_> = all.iter().filter(|(s, _, _)| *s == stages).collect();
    assert_eq!(
        last[0].2, "scratch",
        "the runtime stage starts from scratch"
    );
    let copies: Vec<&str> = last
        .iter()
        .filter(|(_, op, _)| op == "COPY")
        .map(|(_, _, r)| r.as_str())
        .collect();
    assert_eq!(
        copies.len(),
        2,
        "only the binary and the CA bundle: {copies:?}"
    );
    assert!(copies.iter().any(|c| c.ends_with(" /usr/local/bin/pgcell")));
    assert!(copies
        .iter()
        .any(|c| c.ends_with(" /etc/ssl/certs/ca-certificates.crt")));
    assert!(!last.iter().any(|(_, op, _)| op == "RUN" || op == "ADD"));
    let entrypoint = last
        .iter()
        .find(|(_, op, _)| op == "ENTRYPOINT")
        .expect("ENTRYPOINT");
    let entrypoint: Vec<String> =
        serde_json::from_str(&entrypoint.2).expect("exec-form ENTRYPOINT");
    assert_eq!(entrypoint, ["/usr/local/bin/pgcell"]);
    let user = last
        .iter()
        .find(|(_, op, _)| op == "USER")
        .expect("USER")
        .2
        .clone();
    let uid: i64 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("a numeric USER");
    assert!(uid > 0, "non-root");
    let pod = Cell::render(SELF_REGISTER)
        .rendered
        .deployment()
        .spec
        .clone()
        .unwrap()
        .template
        .spec
        .unwrap();
    assert_eq!(
        pod.security_context.and_then(|s| s.run_as_user),
        Some(uid),
        "the Deployment's runAsUser is the image's USER"
    );
    let builds: Vec<_> = all
        .iter()
        .filter(|(_, op, r)| op == "RUN" && r.contains("cargo build"))
        .collect();
    assert_eq!(builds.len(), 1);
    for flag in ["--release", "--locked", "--bin pgcell"] {
        assert!(builds[0].2.contains(flag), "cargo build {flag}");
    }
    assert!(all
        .iter()
        .any(|(_, op, r)| op == "ARG" && r.starts_with("PGCELL_GIT_REVISION")));
    let ignore = std::fs::read_to_string(repo_path(".dockerignore")).unwrap();
    for excluded in ["target", ".git"] {
        assert!(
            ignore.lines().any(|l| l.trim() == excluded),
            ".dockerignore: {excluded}"
        );
    }
}

#[test]
fn version_and_build_info_carry_the_git_revision() {
    let out = run(
        Command::new(env!("CARGO_BIN_EXE_pgcell")).arg("--version"),
        30,
    );
    let revision = pgcell::GIT_REVISION;
    assert!(!revision.is_empty());
    assert_eq!(
        out.trim(),
        format!("pgcell {} ({revision})", env!("CARGO_PKG_VERSION"))
    );
    let in_git = Command::new("git")
        .args(["rev-parse", "--git-dir"])
        .current_dir(crate::repo())
        .output()
        .is_ok_and(|o| o.status.success());
    if in_git && std::env::var_os("PGCELL_GIT_REVISION").is_none() {
        assert!(
            revision.len() == 12 && revision.chars().all(|c| c.is_ascii_hexdigit()),
            "a 12-digit commit id from git, not {revision:?}"
        );
    }
    let rendered = pgcell::render_metrics();
    let line = rendered
        .lines()
        .find(|l| l.starts_with(pgcell::BUILD_INFO))
        .unwrap_or_else(|| panic!("no {} in\n{rendered}", pgcell::BUILD_INFO));
    assert!(line.contains(&format!("revision=\"{revision}\"")), "{line}");
    assert!(
        line.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
        "{line}"
    );
}
