//! Tenant keys for client authentication and pooling: `auth`,
//! `[tenants.pool]`, `[[tenants.users]]` and `[tenants.auth_query]`.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::problems::Problems;

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
    /// Client connections one pool serves at once; unlimited (within the
    /// tenant's own limit) when unset.
    pub max_client_connections: Option<usize>,
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
    /// Transaction mode: keep a client on its backend for the rest of its
    /// session once it runs a statement whose state a backend switch would
    /// lose (LISTEN, SQL PREPARE, temp tables, advisory locks, ...).
    pub pin_session_state: bool,
    /// Transaction mode: read back and reset the session after every
    /// transaction, not only after those that may have changed settings
    /// (for functions that change settings out of pgcell's sight).
    pub reset_every_transaction: bool,
    /// Transaction mode: check at every checkin, in the settings read-back's
    /// round trip, whether the backend holds state no message showed
    /// (temporary objects, WITH HOLD cursors, SQL prepared statements,
    /// LISTEN, session advisory locks: made by a function called from a
    /// plain SELECT), and close it if so.
    pub check_session_state: bool,
    /// Transaction mode: protocol-level prepared statements each backend
    /// keeps (least recently used closed first).
    pub max_prepared_statements: usize,
}

/// Protocol-level prepared statements a backend keeps unless
/// `pool.max_prepared_statements` says otherwise.
pub const DEFAULT_MAX_PREPARED_STATEMENTS: usize = 1_000;

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

/// `[tenants.auth_query]`: SCRAM secrets of users not listed in
/// `[[tenants.users]]`, fetched from the tenant's backend.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthQueryConfig {
    /// The role pgcell logs in as to run the query.
    pub user: String,
    /// Its password.
    pub password: Password,
    /// The query; `$1` is the client's user name, the one column returned
    /// is the secret.
    pub query: String,
    /// Database the query runs in; the client's database when unset.
    pub database: Option<String>,
    /// How long a fetched secret (or "no such user") is used.
    pub cache_ttl: Duration,
}

/// Reads `pg_authid` directly: needs a superuser. Operators usually point
/// `query` at a `SECURITY DEFINER` function instead.
pub const DEFAULT_AUTH_QUERY: &str =
    "SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = $1";

#[derive(Debug, Deserialize)]
pub(super) struct RawAuthQuery {
    user: String,
    password_env: Option<String>,
    password_file: Option<String>,
    query: Option<String>,
    database: Option<String>,
    cache_ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawPool {
    mode: Option<PoolMode>,
    size: Option<usize>,
    min_idle: Option<usize>,
    max_client_connections: Option<usize>,
    acquire_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_lifetime: Option<String>,
    check_after_idle: Option<String>,
    reset_query: Option<String>,
    pin_session_state: Option<bool>,
    reset_every_transaction: Option<bool>,
    check_session_state: Option<bool>,
    max_prepared_statements: Option<usize>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawUser {
    name: String,
    password_env: Option<String>,
    password_file: Option<String>,
    scram_secret: Option<String>,
    /// Overrides of `[tenants.pool]`'s `mode` and `size` for this user.
    pool: Option<RawUserPool>,
    /// The keys' old names, refused with a pointer to the new ones.
    pool_mode: Option<toml::Value>,
    pool_size: Option<toml::Value>,
}

/// `[tenants.users.pool]`: the keys of `[tenants.pool]` a user may set.
#[derive(Debug, Default, Deserialize)]
pub(super) struct RawUserPool {
    mode: Option<PoolMode>,
    size: Option<usize>,
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
    let max_prepared_statements = raw
        .max_prepared_statements
        .unwrap_or(DEFAULT_MAX_PREPARED_STATEMENTS);
    if max_prepared_statements == 0 {
        p.push(
            format!("{at}.pool.max_prepared_statements"),
            "must be at least 1 (each named statement a client prepares needs a place on its backend)",
        );
    }
    if raw.max_client_connections == Some(0) {
        p.push(
            format!("{at}.pool.max_client_connections"),
            "must be at least 1",
        );
    }
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
        max_client_connections: raw.max_client_connections,
        acquire_timeout,
        idle_timeout,
        max_lifetime,
        check_after_idle,
        reset_query,
        pin_session_state: raw.pin_session_state.unwrap_or(false),
        reset_every_transaction: raw.reset_every_transaction.unwrap_or(false),
        check_session_state: raw.check_session_state.unwrap_or(false),
        max_prepared_statements,
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
        for (old, new) in [
            (u.pool_mode.is_some(), "mode"),
            (u.pool_size.is_some(), "size"),
        ] {
            if old {
                p.push(
                    format!("{path}.pool_{new}"),
                    format!("renamed: set pool.{new} (the key [tenants.pool] uses), e.g. pool = {{ {new} = ... }}"),
                );
            }
        }
        let pool = u.pool.unwrap_or_default();
        if pool.size == Some(0) {
            p.push(format!("{path}.pool.size"), "must be at least 1");
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
        let credential = if u.password_env.is_some() || u.password_file.is_some() {
            match password_from(u.password_env, u.password_file, &path, base, p) {
                Some(pw) => Credential::Password(pw),
                None => continue,
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
            pool_mode: pool.mode,
            pool_size: pool.size,
        });
    }
    users
}

/// The password named by `password_env` or `password_file` (whichever is
/// set; env first), or a problem at `path`.
fn password_from(
    env: Option<String>,
    file: Option<String>,
    path: &str,
    base: &Path,
    p: &mut Problems,
) -> Option<Password> {
    if let Some(var) = env {
        return match std::env::var(&var) {
            Ok(pw) if !pw.is_empty() => Some(Password(pw)),
            _ => {
                p.push(
                    format!("{path}.password_env"),
                    format!("environment variable {var} is not set or empty"),
                );
                None
            }
        };
    }
    let file = base.join(file?);
    match std::fs::read_to_string(&file) {
        Ok(pw) if !pw.trim_end_matches(['\r', '\n']).is_empty() => {
            Some(Password(pw.trim_end_matches(['\r', '\n']).to_owned()))
        }
        Ok(_) => {
            p.push(
                format!("{path}.password_file"),
                format!("{} is empty", file.display()),
            );
            None
        }
        Err(e) => {
            p.push(
                format!("{path}.password_file"),
                format!("cannot read {}: {e}", file.display()),
            );
            None
        }
    }
}

pub(super) fn auth_query_from_raw(
    raw: RawAuthQuery,
    at: &str,
    base: &Path,
    p: &mut Problems,
) -> Option<AuthQueryConfig> {
    let path = format!("{at}.auth_query");
    if raw.user.is_empty() || raw.user.len() > 63 {
        p.push(format!("{path}.user"), "must be 1 to 63 characters");
    }
    let query = raw.query.unwrap_or_else(|| DEFAULT_AUTH_QUERY.to_owned());
    // The user name is always sent as parameter $1; a query without it
    // would fail on every login.
    if !query.contains("$1") {
        p.push(
            format!("{path}.query"),
            "must use $1 for the user name (e.g. \"SELECT pgcell.get_auth($1)\")",
        );
    }
    if raw.database.as_deref() == Some("") {
        p.push(format!("{path}.database"), "must not be empty");
    }
    let cache_ttl = p.duration(
        &format!("{path}.cache_ttl"),
        raw.cache_ttl.as_deref().unwrap_or("60s"),
    );
    if raw.password_env.is_some() == raw.password_file.is_some() {
        p.push(path, "needs exactly one of password_env, password_file");
        return None;
    }
    let password = password_from(raw.password_env, raw.password_file, &path, base, p)?;
    Some(AuthQueryConfig {
        user: raw.user,
        password,
        query,
        database: raw.database,
        cache_ttl,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{AuthMode, Config};
    use super::*;

    fn parse(tenant_extra: &str) -> (Result<Config, super::super::ConfigError>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("auth.pw"), "s3cret\n").unwrap();
        let text = format!(
            "[listen]\naddr = \"127.0.0.1:6432\"\n[[tenants]]\nid = \"acme\"\nbackends = [\"127.0.0.1:5441\"]\n{tenant_extra}"
        );
        (Config::parse(&text, dir.path()), dir)
    }

    fn paths(result: Result<Config, super::super::ConfigError>) -> Vec<String> {
        result
            .unwrap_err()
            .problems
            .into_iter()
            .map(|p| p.path)
            .collect()
    }

    #[test]
    fn auth_query_alone_enables_scram_with_defaults() {
        let (c, _dir) =
            parse("[tenants.auth_query]\nuser = \"pgcell_auth\"\npassword_file = \"auth.pw\"\n");
        let t = &c.unwrap().tenants[0];
        assert_eq!(t.auth, AuthMode::Scram);
        assert!(t.users.is_empty());
        let q = t.auth_query.as_ref().unwrap();
        assert_eq!(q.user, "pgcell_auth");
        assert_eq!(q.password, Password("s3cret".into()));
        assert_eq!(q.query, DEFAULT_AUTH_QUERY);
        assert_eq!(q.database, None);
        assert_eq!(q.cache_ttl, Duration::from_secs(60));
        assert!(!format!("{q:?}").contains("s3cret"));
    }

    #[test]
    fn auth_query_keys() {
        let (c, _dir) = parse(
            "[tenants.auth_query]\nuser = \"a\"\npassword_file = \"auth.pw\"\nquery = \"SELECT secret FROM pgcell.get_auth($1)\"\ndatabase = \"postgres\"\ncache_ttl = \"5m\"\n",
        );
        let c = c.unwrap();
        let q = c.tenants[0].auth_query.as_ref().unwrap();
        assert_eq!(q.query, "SELECT secret FROM pgcell.get_auth($1)");
        assert_eq!(q.database.as_deref(), Some("postgres"));
        assert_eq!(q.cache_ttl, Duration::from_secs(300));
    }

    #[test]
    fn auth_query_problems() {
        let (c, _dir) = parse("[tenants.auth_query]\nuser = \"a\"\n");
        assert_eq!(paths(c), vec!["tenants[0].auth_query"]);
        let (c, _dir) = parse(
            "[tenants.auth_query]\nuser = \"a\"\npassword_file = \"auth.pw\"\npassword_env = \"X\"\n",
        );
        assert_eq!(paths(c), vec!["tenants[0].auth_query"]);
        let (c, _dir) = parse(
            "[tenants.auth_query]\nuser = \"\"\npassword_file = \"missing.pw\"\nquery = \"SELECT 'x'\"\ncache_ttl = \"0s\"\ndatabase = \"\"\ncolour = 1\n",
        );
        let mut got = paths(c);
        got.sort();
        assert_eq!(
            got,
            vec![
                "tenants.0.auth_query.colour",
                "tenants[0].auth_query.cache_ttl",
                "tenants[0].auth_query.database",
                "tenants[0].auth_query.password_file",
                "tenants[0].auth_query.query",
                "tenants[0].auth_query.user",
            ]
        );
        for auth in ["md5", "passthrough"] {
            let (c, _dir) = parse(&format!(
                "auth = \"{auth}\"\n[tenants.auth_query]\nuser = \"a\"\npassword_file = \"auth.pw\"\n"
            ));
            assert_eq!(paths(c), vec!["tenants[0].auth_query"], "{auth}");
        }
        // Without users or auth_query pgcell has nothing to check against.
        let (c, _dir) = parse("auth = \"scram\"\n");
        assert_eq!(paths(c), vec!["tenants[0].auth"]);
    }
}
