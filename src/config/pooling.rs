//! Tenant keys for client authentication and pooling: `auth`,
//! `[tenants.pool]` and `[[tenants.users]]`.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::Problems;

/// How clients of a tenant are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// The backend authenticates the client; one backend per client.
    Passthrough,
    /// pgcell authenticates with SCRAM-SHA-256 (-PLUS over TLS) and pools.
    Scram,
    /// pgcell authenticates with MD5 (explicit opt-in) and pools.
    Md5,
}

/// When a pooled backend goes back to the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// When the client disconnects.
    Session,
    /// When a transaction ends (`ReadyForQuery` with status `I`).
    Transaction,
}

/// `[tenants.pool]`: one pool per (tenant, database, user).
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// Session or transaction pooling.
    pub mode: PoolMode,
    /// Backend connections per pool.
    pub size: usize,
    /// Backends kept open even when idle.
    pub min_idle: usize,
    /// How long a client may wait for a backend.
    pub acquire_timeout: Duration,
    /// An idle backend older than this (since last use) is closed.
    pub idle_timeout: Duration,
    /// A backend older than this is closed when it comes free.
    pub max_lifetime: Duration,
    /// Backends idle longer than this are checked before handing out.
    pub check_after_idle: Duration,
    /// Run when a session-mode client leaves; none to skip.
    pub reset_query: Option<String>,
}

/// A secret that must never reach a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(pub String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Where a user's credential comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Credential {
    /// A password (from an environment variable or a file): pgcell derives
    /// the SCRAM secret once per load and logs in to the backend with it.
    Password(Password),
    /// A stored SCRAM secret: backend login uses the ClientKey recovered
    /// from the client's proof, so the backend must hold the same secret.
    ScramSecret(crate::auth::secret::ScramSecret),
}

/// One `[[tenants.users]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct UserConfig {
    /// User name as clients send it (after any `.tenant` suffix is removed).
    pub name: String,
    /// The credential.
    pub credential: Credential,
    /// Pool mode for this user, overriding the tenant's.
    pub pool_mode: Option<PoolMode>,
    /// Pool size for this user, overriding the tenant's.
    pub pool_size: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawPool {
    mode: Option<PoolMode>,
    size: Option<usize>,
    min_idle: Option<usize>,
    acquire_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_lifetime: Option<String>,
    check_after_idle: Option<String>,
    reset_query: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawUser {
    name: String,
    password_env: Option<String>,
    password_file: Option<String>,
    scram_secret: Option<String>,
    pool_mode: Option<PoolMode>,
    pool_size: Option<usize>,
}

pub(super) fn pool_from_raw(raw: RawPool, at: &str, p: &mut Problems) -> PoolConfig {
    let mut duration = |key: &str, value: Option<String>, default: &str| {
        p.duration(
            &format!("{at}.pool.{key}"),
            value.as_deref().unwrap_or(default),
        )
    };
    let acquire_timeout = duration("acquire_timeout", raw.acquire_timeout, "5s");
    let idle_timeout = duration("idle_timeout", raw.idle_timeout, "10m");
    let max_lifetime = duration("max_lifetime", raw.max_lifetime, "1h");
    let check_after_idle = duration("check_after_idle", raw.check_after_idle, "30s");
    let size = raw.size.unwrap_or(20);
    if size == 0 {
        p.push(format!("{at}.pool.size"), "must be at least 1");
    }
    let min_idle = raw.min_idle.unwrap_or(0);
    if min_idle > size {
        p.push(format!("{at}.pool.min_idle"), "must not exceed pool.size");
    }
    let reset_query = match raw.reset_query {
        None => Some("DISCARD ALL".to_owned()),
        Some(q) if q.trim().is_empty() => None,
        Some(q) => Some(q),
    };
    PoolConfig {
        mode: raw.mode.unwrap_or(PoolMode::Session),
        size,
        min_idle,
        acquire_timeout,
        idle_timeout,
        max_lifetime,
        check_after_idle,
        reset_query,
    }
}

pub(super) fn users_from_raw(
    raw: Vec<RawUser>,
    at: &str,
    base: &Path,
    p: &mut Problems,
) -> Vec<UserConfig> {
    let mut names = std::collections::HashSet::new();
    let mut users = Vec::new();
    for (i, u) in raw.into_iter().enumerate() {
        let path = format!("{at}.users[{i}]");
        if u.name.is_empty() || u.name.len() > 63 {
            p.push(format!("{path}.name"), "must be 1 to 63 characters");
        } else if !names.insert(u.name.clone()) {
            p.push(
                format!("{path}.name"),
                format!("duplicate user {:?}", u.name),
            );
        }
        if u.pool_size == Some(0) {
            p.push(format!("{path}.pool_size"), "must be at least 1");
        }
        let given = [
            u.password_env.is_some(),
            u.password_file.is_some(),
            u.scram_secret.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            p.push(
                path.clone(),
                "needs exactly one of password_env, password_file, scram_secret",
            );
            continue;
        }
        let credential = if let Some(var) = u.password_env {
            match std::env::var(&var) {
                Ok(pw) if !pw.is_empty() => Credential::Password(Password(pw)),
                _ => {
                    p.push(
                        format!("{path}.password_env"),
                        format!("environment variable {var} is not set or empty"),
                    );
                    continue;
                }
            }
        } else if let Some(file) = u.password_file {
            let file = base.join(file);
            match std::fs::read_to_string(&file) {
                Ok(pw) if !pw.trim_end_matches(['\r', '\n']).is_empty() => {
                    Credential::Password(Password(pw.trim_end_matches(['\r', '\n']).to_owned()))
                }
                Ok(_) => {
                    p.push(
                        format!("{path}.password_file"),
                        format!("{} is empty", file.display()),
                    );
                    continue;
                }
                Err(e) => {
                    p.push(
                        format!("{path}.password_file"),
                        format!("cannot read {}: {e}", file.display()),
                    );
                    continue;
                }
            }
        } else if let Some(secret) = u.scram_secret {
            match crate::auth::secret::ScramSecret::parse(&secret) {
                Ok(s) => Credential::ScramSecret(s),
                Err(e) => {
                    p.push(format!("{path}.scram_secret"), e.to_string());
                    continue;
                }
            }
        } else {
            continue;
        };
        users.push(UserConfig {
            name: u.name,
            credential,
            pool_mode: u.pool_mode,
            pool_size: u.pool_size,
        });
    }
    users
}
