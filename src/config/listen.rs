//! `[listen]` and `[tls]`: the ports pgcell serves and the certificate
//! it presents.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::problems::{Problems, DEFAULT_MAX_MESSAGE_SIZE};
use crate::proxy_protocol::ProxyMode;

/// `[listen]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenConfig {
    /// Data port for Postgres clients (from the NLB).
    pub addr: SocketAddr,
    /// TCP health port for the NLB's checks; none when unset.
    pub health_addr: Option<SocketAddr>,
    /// Admin HTTP port (`/metrics`, `/livez`, `/readyz`); none when unset.
    pub admin_addr: Option<SocketAddr>,
    /// PROXY protocol expectation on the data port.
    pub proxy_protocol: ProxyMode,
    /// Time allowed from accept to a complete `StartupMessage`.
    pub startup_timeout: Duration,
    /// Client connections served at once across all tenants.
    pub max_client_connections: usize,
    /// Idle time before TCP keepalive probes start, client and backend side.
    pub tcp_keepalive: Duration,
    /// Largest client message (body bytes) a pooled session buffers;
    /// larger ones end the session with `08P01`.
    pub max_message_size: usize,
}

/// Client-side TLS policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Decline `SSLRequest`; refuse direct TLS.
    Disable,
    /// TLS when the client asks; plaintext allowed.
    Allow,
    /// Plaintext `StartupMessage`s are rejected.
    Require,
}

/// `[tls]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    /// Client TLS policy.
    pub mode: TlsMode,
    /// Certificate chain (PEM); required unless mode is disable.
    pub cert: Option<PathBuf>,
    /// Private key (PEM); required unless mode is disable.
    pub key: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawListen {
    addr: String,
    health_addr: Option<String>,
    admin_addr: Option<String>,
    #[serde(default = "default_proxy_protocol")]
    proxy_protocol: ProxyMode,
    #[serde(default = "default_startup_timeout")]
    startup_timeout: String,
    #[serde(default = "default_max_client_connections")]
    max_client_connections: usize,
    #[serde(default = "default_tcp_keepalive")]
    tcp_keepalive: String,
    #[serde(default = "default_max_message_size")]
    max_message_size: usize,
}

fn default_proxy_protocol() -> ProxyMode {
    ProxyMode::Off
}
fn default_startup_timeout() -> String {
    "10s".into()
}
fn default_max_client_connections() -> usize {
    10_000
}
fn default_max_message_size() -> usize {
    DEFAULT_MAX_MESSAGE_SIZE
}
fn default_tcp_keepalive() -> String {
    // Well under the NLB's 350 s idle timeout.
    "60s".into()
}

#[derive(Debug, Deserialize)]
pub(super) struct RawTls {
    cert: Option<String>,
    key: Option<String>,
    #[serde(default = "default_tls_mode")]
    mode: TlsMode,
}

impl Default for RawTls {
    fn default() -> Self {
        RawTls {
            cert: None,
            key: None,
            mode: TlsMode::Disable,
        }
    }
}

fn default_tls_mode() -> TlsMode {
    TlsMode::Allow
}

/// Reads `[listen]`, noting its problems.
pub(super) fn listen_from_raw(l: RawListen, p: &mut Problems) -> ListenConfig {
    ListenConfig {
        addr: p
            .socket_addr("listen.addr", &l.addr)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
        health_addr: l
            .health_addr
            .as_deref()
            .and_then(|a| p.socket_addr("listen.health_addr", a)),
        admin_addr: l
            .admin_addr
            .as_deref()
            .and_then(|a| p.socket_addr("listen.admin_addr", a)),
        proxy_protocol: l.proxy_protocol,
        startup_timeout: p.duration("listen.startup_timeout", &l.startup_timeout),
        max_client_connections: p
            .positive("listen.max_client_connections", l.max_client_connections),
        tcp_keepalive: p.duration("listen.tcp_keepalive", &l.tcp_keepalive),
        max_message_size: p.message_size("listen.max_message_size", l.max_message_size),
    }
}

/// Reads `[tls]`; paths are relative to the config file's folder `base`.
pub(super) fn tls_from_raw(t: RawTls, base: &Path, p: &mut Problems) -> TlsConfig {
    let tls = TlsConfig {
        mode: t.mode,
        cert: t.cert.map(|c| base.join(c)),
        key: t.key.map(|k| base.join(k)),
    };
    if tls.mode != TlsMode::Disable {
        if tls.cert.is_none() {
            p.push("tls.cert", "required unless tls.mode = \"disable\"");
        }
        if tls.key.is_none() {
            p.push("tls.key", "required unless tls.mode = \"disable\"");
        }
    }
    tls
}
