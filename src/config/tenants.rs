//! `[[tenants]]`: one tenant's keys, from raw to typed, and the checks that
//! a tenant can be reached through the listener as configured.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

use super::listen::{ListenConfig, TlsConfig, TlsMode};
use super::pooling::{self, AuthMode, AuthQueryConfig, Credential, PoolConfig, UserConfig};
use super::problems::{ConfigError, Problems};
use super::replication::{self, ReplicationConfig};
use crate::proxy_protocol::ProxyMode;

/// One `[[tenants]]` entry.
#[derive(Debug, Clone)]
pub struct TenantConfig {
    /// Tenant id: a DNS label, since it may arrive as an SNI label.
    pub id: String,
    /// Backend addresses (`host:port`): the primary and its replicas, in any
    /// order (the topology finds which is which).
    pub backends: Vec<String>,
    /// Database every connection of this tenant uses, whatever the client
    /// names; the client's choice when unset.
    pub database: Option<String>,
    /// VPC endpoints allowed to connect; any when empty.
    pub allowed_vpce_ids: Vec<String>,
    /// Client address ranges allowed to connect; any when empty.
    pub allowed_cidrs: Vec<IpNet>,
    /// Refuse plaintext clients.
    pub require_tls: bool,
    /// Client connections of this tenant served at once.
    pub max_client_connections: usize,
    /// New connections per second this tenant may open (token bucket, burst
    /// of the same size); unlimited when unset.
    pub max_connection_rate: Option<u32>,
    /// TLS to the backends.
    pub backend_tls: BackendTlsMode,
    /// CA bundle (PEM) for `verify-full`.
    pub backend_ca: Option<PathBuf>,
    /// Name to verify the backend certificate against; the backend's host
    /// by default.
    pub backend_server_name: Option<String>,
    /// How clients are authenticated (and whether they are pooled).
    pub auth: AuthMode,
    /// Pool settings, when pgcell authenticates clients.
    pub pool: PoolConfig,
    /// Users pgcell authenticates itself.
    pub users: Vec<UserConfig>,
    /// Where secrets of users not in `users` come from, if anywhere.
    pub auth_query: Option<AuthQueryConfig>,
    /// How its primary and replicas are followed (`[tenants.replication]`).
    pub replication: ReplicationConfig,
}

impl TenantConfig {
    /// The configured user `name`.
    pub fn user(&self, name: &str) -> Option<&UserConfig> {
        self.users.iter().find(|u| u.name == name)
    }
}

/// TLS from pgcell to a tenant's backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendTlsMode {
    /// Plaintext.
    Disable,
    /// TLS without verifying the server (libpq's `sslmode=require`).
    Require,
    /// TLS with CA and host name verification (`sslmode=verify-full`).
    VerifyFull,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawTenant {
    id: String,
    backends: Vec<String>,
    database: Option<String>,
    #[serde(default)]
    allowed_vpce_ids: Vec<String>,
    #[serde(default)]
    allowed_cidrs: Vec<String>,
    #[serde(default)]
    require_tls: bool,
    #[serde(default = "default_tenant_max_clients")]
    max_client_connections: usize,
    max_connection_rate: Option<u32>,
    #[serde(default = "default_backend_tls")]
    backend_tls: BackendTlsMode,
    backend_ca: Option<String>,
    backend_server_name: Option<String>,
    auth: Option<AuthMode>,
    #[serde(default)]
    pool: pooling::RawPool,
    #[serde(default)]
    users: Vec<pooling::RawUser>,
    auth_query: Option<pooling::RawAuthQuery>,
    #[serde(default)]
    replication: replication::RawReplication,
}

fn default_tenant_max_clients() -> usize {
    1_000
}
fn default_backend_tls() -> BackendTlsMode {
    BackendTlsMode::Disable
}

pub(super) fn tenant_from_raw(
    t: RawTenant,
    at: &str,
    base: &Path,
    ids: &mut HashSet<String>,
    p: &mut Problems,
) -> TenantConfig {
    if !is_dns_label(&t.id) {
        p.push(
            format!("{at}.id"),
            format!(
                "{:?} is not a valid tenant id (lower-case letters, digits and '-', at most 63)",
                t.id
            ),
        );
    } else if !ids.insert(t.id.clone()) {
        p.push(
            format!("{at}.id"),
            format!("duplicate tenant id {:?}", t.id),
        );
    }
    if t.backends.is_empty() {
        p.push(format!("{at}.backends"), "must list at least one host:port");
    }
    for (j, b) in t.backends.iter().enumerate() {
        if split_host_port(b).is_none() {
            p.push(
                format!("{at}.backends[{j}]"),
                format!("{b:?} is not host:port"),
            );
        }
    }
    let allowed_cidrs = t
        .allowed_cidrs
        .iter()
        .enumerate()
        .filter_map(|(j, c)| match parse_cidr(c) {
            Some(net) => Some(net),
            None => {
                p.push(
                    format!("{at}.allowed_cidrs[{j}]"),
                    format!("{c:?} is not an address or CIDR range"),
                );
                None
            }
        })
        .collect();
    let allowed_vpce_ids: Vec<String> = t
        .allowed_vpce_ids
        .iter()
        .map(|v| v.to_ascii_lowercase())
        .collect();
    for (j, v) in allowed_vpce_ids.iter().enumerate() {
        if !v.starts_with("vpce-") || !v[5..].bytes().all(|b| b.is_ascii_hexdigit()) || v.len() < 6
        {
            p.push(
                format!("{at}.allowed_vpce_ids[{j}]"),
                format!("{v:?} is not a VPC endpoint id (vpce- and hex digits)"),
            );
        }
    }
    let max_client_connections = p.positive(
        &format!("{at}.max_client_connections"),
        t.max_client_connections,
    );
    if t.max_connection_rate == Some(0) {
        p.push(
            format!("{at}.max_connection_rate"),
            "must be at least 1 (leave it out for no limit)",
        );
    }
    if t.backend_tls == BackendTlsMode::VerifyFull && t.backend_ca.is_none() {
        p.push(
            format!("{at}.backend_ca"),
            "required when backend_tls = \"verify-full\"",
        );
    }
    if let Some(db) = &t.database {
        if db.is_empty() {
            p.push(format!("{at}.database"), "must not be empty");
        }
    }
    let users = pooling::users_from_raw(t.users, at, base, p);
    let replication = replication::replication_from_raw(t.replication, at, &t.backends, &users, p);
    let pool = pooling::pool_from_raw(t.pool, at, p);
    let auth_query = t
        .auth_query
        .and_then(|q| pooling::auth_query_from_raw(q, at, base, p));
    let has_secrets = !users.is_empty() || auth_query.is_some();
    let auth = t.auth.unwrap_or(if has_secrets {
        AuthMode::Scram
    } else {
        AuthMode::Passthrough
    });
    if auth != AuthMode::Passthrough && !has_secrets {
        p.push(
            format!("{at}.auth"),
            "pgcell can authenticate clients only for users listed in [[tenants.users]] or found by [tenants.auth_query]",
        );
    }
    if auth_query.is_some() && auth != AuthMode::Scram {
        p.push(
            format!("{at}.auth_query"),
            "needs auth = \"scram\": it fetches SCRAM secrets",
        );
    }
    if auth == AuthMode::Md5 {
        for (i, u) in users.iter().enumerate() {
            if !matches!(u.credential, Credential::Password(_)) {
                p.push(
                    format!("{at}.users[{i}]"),
                    "auth = \"md5\" needs a password (password_env or password_file)",
                );
            }
        }
    }
    TenantConfig {
        id: t.id,
        backends: t.backends,
        database: t.database,
        allowed_vpce_ids,
        allowed_cidrs,
        require_tls: t.require_tls,
        max_client_connections,
        max_connection_rate: t.max_connection_rate,
        backend_tls: t.backend_tls,
        backend_ca: t.backend_ca.map(|c| base.join(c)),
        backend_server_name: t.backend_server_name,
        auth,
        pool,
        users,
        auth_query,
        replication,
    }
}

/// Builds one tenant from a `[[tenants]]` entry given in any serde format
/// (discovery turns a `PgcellTenant` into one), checked by the same rules
/// as the file's tenants; problem paths start with `at`, relative paths
/// are resolved against `base`. Unknown keys are not reported here: the
/// caller builds the entry.
pub fn tenant_from_entry<'de, D: serde::Deserializer<'de>>(
    entry: D,
    at: &str,
    base: &Path,
) -> Result<TenantConfig, ConfigError> {
    let mut p = Problems::default();
    match RawTenant::deserialize(entry) {
        Ok(raw) => {
            let tenant = tenant_from_raw(raw, at, base, &mut HashSet::new(), &mut p);
            if p.0.is_empty() {
                return Ok(tenant);
            }
        }
        Err(e) => p.push(at, e.to_string()),
    }
    Err(p.into_error())
}

/// A tenant whose policy the listener cannot enforce is a mistake, not a
/// policy: one no client could reach, or one whose policy a client could
/// talk its way past.
pub(super) fn check_reachable(
    t: &TenantConfig,
    at: &str,
    listen: &ListenConfig,
    tls: &TlsConfig,
    p: &mut Problems,
) {
    if t.require_tls && tls.mode == TlsMode::Disable {
        p.push(
            format!("{at}.require_tls"),
            "cannot be met with tls.mode = \"disable\"",
        );
    }
    // In "optional" mode anyone who reaches the port directly (not through
    // the NLB) can send a PROXY header of their own making.
    if !t.allowed_vpce_ids.is_empty() && listen.proxy_protocol != ProxyMode::Required {
        p.push(
            format!("{at}.allowed_vpce_ids"),
            "needs listen.proxy_protocol = \"required\": the VPC endpoint id comes from the NLB's PROXY header",
        );
    }
    if !t.allowed_cidrs.is_empty() && listen.proxy_protocol == ProxyMode::Optional {
        p.push(
            format!("{at}.allowed_cidrs"),
            "cannot be enforced with listen.proxy_protocol = \"optional\": a client could send its own PROXY header; use \"required\" or \"off\"",
        );
    }
}

/// Problems of one tenant (one found by discovery, say) under the running
/// listener and TLS setup.
pub fn tenant_problems_of(
    t: &TenantConfig,
    listen: &ListenConfig,
    tls: &TlsConfig,
) -> Result<(), ConfigError> {
    let mut p = Problems::default();
    check_reachable(t, &format!("tenant {:?}", t.id), listen, tls, &mut p);
    if p.0.is_empty() {
        Ok(())
    } else {
        Err(p.into_error())
    }
}

/// True for a DNS label: `[a-z0-9-]{1,63}`, not starting or ending with `-`.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Splits `host:port` (`[v6]:port` for IPv6 literals).
pub fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = port.parse().ok()?;
    (!host.is_empty()).then_some((host, port))
}

fn parse_cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}
