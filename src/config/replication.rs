//! `[tenants.replication]`: how pgcell follows a tenant's primary and
//! replicas (docs/replicas.md).

use std::time::Duration;

use serde::Deserialize;

use super::pooling::{Credential, UserConfig};
use super::problems::Problems;

/// Where a client that asked for a replica goes when no replica is fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenNoReplica {
    /// To the primary.
    Primary,
    /// Nowhere: the client gets an error.
    Refuse,
}

/// `[tenants.replication]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicationConfig {
    /// The `[[tenants.users]]` entry (with a password) the probe logs in as.
    pub probe_user: Option<String>,
    /// Database the probe connects to.
    pub probe_database: String,
    /// Time between probes of each server.
    pub probe_interval: Duration,
    /// Longest a probe (connect, login, query) may take before the server
    /// counts as unreachable.
    pub probe_timeout: Duration,
    /// Replay lag in bytes past which a replica gets no new clients.
    pub max_replica_lag_bytes: u64,
    /// Replay lag in time past which a replica gets no new clients.
    pub max_replica_lag: Option<Duration>,
    /// When no replica is fit.
    pub when_no_replica: WhenNoReplica,
    /// The server the operator names primary (resolves a split brain).
    pub primary: Option<String>,
    /// Transaction mode: read-only transactions of clients of the primary
    /// go to replicas that have their writes.
    pub read_only_transactions: bool,
    /// The zone of each server (`host:port` → zone), for preferring
    /// replicas in pgcell's own zone (`[backend] zone`).
    pub zones: std::collections::BTreeMap<String, String>,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            probe_user: None,
            probe_database: "postgres".to_owned(),
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(1),
            max_replica_lag_bytes: DEFAULT_MAX_REPLICA_LAG_BYTES,
            max_replica_lag: None,
            when_no_replica: WhenNoReplica::Primary,
            primary: None,
            read_only_transactions: false,
            zones: Default::default(),
        }
    }
}

/// 16 MiB: one WAL segment.
pub const DEFAULT_MAX_REPLICA_LAG_BYTES: u64 = 16 << 20;

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawReplication {
    probe_user: Option<String>,
    probe_database: Option<String>,
    probe_interval: Option<String>,
    probe_timeout: Option<String>,
    max_replica_lag_bytes: Option<u64>,
    max_replica_lag: Option<String>,
    when_no_replica: Option<WhenNoReplica>,
    primary: Option<String>,
    #[serde(default)]
    read_only_transactions: bool,
    #[serde(default)]
    zones: std::collections::BTreeMap<String, String>,
}

pub(super) fn replication_from_raw(
    raw: RawReplication,
    at: &str,
    backends: &[String],
    users: &[UserConfig],
    p: &mut Problems,
) -> ReplicationConfig {
    let at = format!("{at}.replication");
    let defaults = ReplicationConfig::default();
    let probe_interval = raw
        .probe_interval
        .map(|s| p.duration(&format!("{at}.probe_interval"), &s))
        .unwrap_or(defaults.probe_interval);
    let probe_timeout = raw
        .probe_timeout
        .map(|s| p.duration(&format!("{at}.probe_timeout"), &s))
        .unwrap_or(defaults.probe_timeout);
    let max_replica_lag = raw
        .max_replica_lag
        .map(|s| p.duration(&format!("{at}.max_replica_lag"), &s));
    if let Some(user) = &raw.probe_user {
        match users.iter().find(|u| &u.name == user) {
            Some(u) if matches!(u.credential, Credential::Password(_)) => {}
            Some(_) => p.push(
                format!("{at}.probe_user"),
                format!("user {user:?} has a SCRAM secret, not a password: the probe needs a password to log in"),
            ),
            None => p.push(
                format!("{at}.probe_user"),
                format!("{user:?} is not one of this tenant's [[tenants.users]]"),
            ),
        }
    }
    if let Some(primary) = &raw.primary {
        if !backends.contains(primary) {
            p.push(
                format!("{at}.primary"),
                format!("{primary:?} is not one of this tenant's backends"),
            );
        }
    }
    for server in raw.zones.keys() {
        if !backends.contains(server) {
            p.push(
                format!("{at}.zones"),
                format!("{server:?} is not one of this tenant's backends"),
            );
        }
    }
    ReplicationConfig {
        zones: raw.zones,
        read_only_transactions: raw.read_only_transactions,
        probe_user: raw.probe_user,
        probe_database: raw.probe_database.unwrap_or(defaults.probe_database),
        probe_interval,
        probe_timeout,
        max_replica_lag_bytes: raw
            .max_replica_lag_bytes
            .unwrap_or(defaults.max_replica_lag_bytes),
        max_replica_lag,
        when_no_replica: raw.when_no_replica.unwrap_or(defaults.when_no_replica),
        primary: raw.primary,
    }
}
