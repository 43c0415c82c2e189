//! Configuration: TOML → raw serde structs → typed [`Config`].
//!
//! Parsing happens in one place, [`Config::parse`], which reports every
//! problem it finds with its key path instead of stopping at the first;
//! unknown keys are problems too. `pgcell check` runs exactly this.
//! Relative paths are relative to the config file's directory.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

pub use crate::proxy_protocol::ProxyMode;
pub use aws::AwsConfig;
pub use cancel::{CancelConfig, CancelPeer};
pub use kubernetes::{DiscoveryMode, KubernetesConfig};
pub use listen::{ListenConfig, TlsConfig, TlsMode};
pub use pooling::{
    AuthMode, AuthQueryConfig, Credential, Password, PoolConfig, PoolMode, UserConfig,
    DEFAULT_AUTH_QUERY, DEFAULT_MAX_PREPARED_STATEMENTS,
};

mod aws;
pub mod cancel;
mod kubernetes;
mod listen;
mod pooling;
mod problems;
mod replication;
mod tenants;

use problems::Problems;
pub use problems::{ConfigError, Problem, DEFAULT_MAX_MESSAGE_SIZE};
pub use replication::{ReplicationConfig, WhenNoReplica, DEFAULT_MAX_REPLICA_LAG_BYTES};
use tenants::{check_reachable, tenant_from_raw, RawTenant};
pub use tenants::{
    is_dns_label, split_host_port, tenant_from_entry, tenant_problems_of, BackendTlsMode,
    TenantConfig,
};

/// A fully checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where pgcell listens.
    pub listen: ListenConfig,
    /// TLS towards clients.
    pub tls: TlsConfig,
    /// How a connection's tenant is found.
    pub routing: RoutingConfig,
    /// Defaults for backend connections.
    pub backend: BackendConfig,
    /// Logging.
    pub log: LogConfig,
    /// How long a shutdown waits for sessions to finish.
    pub shutdown_grace: Duration,
    /// The drain before that: `[shutdown]`'s other keys.
    pub drain: DrainConfig,
    /// The tenants served.
    pub tenants: Vec<TenantConfig>,
    /// The admin console.
    pub admin: AdminConfig,
    /// Cancel keys and the peers cancels are forwarded to.
    pub cancel: CancelConfig,
    /// Secret material shared by the replicas (`[auth]`).
    pub auth: AuthConfig,
    /// NLB self-registration.
    pub aws: AwsConfig,
    /// Discovery from Kubernetes.
    pub kubernetes: KubernetesConfig,
    /// Async runtime worker threads; `None`: one per CPU.
    pub worker_threads: Option<usize>,
    /// One thread running everything (`[runtime] flavor =
    /// "current_thread"`) instead of the work-stealing pool.
    pub current_thread: bool,
}

/// How a drain leaves the target group (`[shutdown]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainConfig {
    /// How long new connections are still accepted after the drain starts
    /// (the NLB takes a while to stop sending new flows to a deregistered
    /// target).
    pub propagation: Duration,
    /// Longest wait for the target to leave the target group after
    /// DeregisterTargets; set it to the target group's deregistration
    /// delay.
    pub deregistration_timeout: Duration,
}

/// `[admin]`: who may use the admin console (database `pgcell`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AdminConfig {
    /// `[[admin.users]]`; the console is off when empty.
    pub users: Vec<UserConfig>,
}

/// `[auth]`: secret material every replica shares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthConfig {
    /// From `secret_env` or `secret_file`: the key the SCRAM salts of
    /// password users and the mock secrets of unknown users derive from,
    /// so that all replicas answer a user alike. `None`: a random key per
    /// process (fine for one replica).
    pub secret: Option<AuthSecret>,
}

/// The `[auth]` secret; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthSecret(pub Vec<u8>);

impl fmt::Debug for AuthSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthSecret(<redacted>)")
    }
}

/// Shortest `[auth]` secret accepted, in bytes.
pub const MIN_AUTH_SECRET_LEN: usize = 32;

/// Where a tenant id may come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoutingSource {
    /// First label of the TLS server name, under `sni_suffix`.
    Sni,
    /// `tenant=ID` (or `endpoint=ID`) in the `options` startup parameter.
    Options,
    /// `USER.TENANT` user names.
    User,
}

/// `[routing]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingConfig {
    /// Domain under which `<tenant>.<suffix>` server names are routed.
    pub sni_suffix: Option<String>,
    /// Sources consulted, in order.
    pub sources: Vec<RoutingSource>,
}

/// `[backend]`: defaults for connections to tenants' databases.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    /// Time allowed to connect to one backend address.
    pub connect_timeout: Duration,
    /// Time allowed for the backend's authentication exchange.
    pub auth_timeout: Duration,
    /// The zone this pgcell runs in: replicas in the same zone
    /// (`[tenants.replication] zones`) are preferred.
    pub zone: Option<String>,
}

/// Log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// Output format.
    pub format: LogFormat,
    /// `tracing` filter directive, e.g. `info` or `pgcell=debug`.
    pub level: String,
}

// ---- raw, as written in TOML ------------------------------------------------

#[derive(Debug, Deserialize)]
struct RawConfig {
    listen: listen::RawListen,
    #[serde(default)]
    tls: listen::RawTls,
    #[serde(default)]
    routing: RawRouting,
    #[serde(default)]
    backend: RawBackend,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    shutdown: RawShutdown,
    #[serde(default)]
    tenants: Vec<RawTenant>,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    cancel: cancel::RawCancel,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    aws: aws::RawAws,
    #[serde(default)]
    kubernetes: kubernetes::RawKubernetes,
    #[serde(default)]
    runtime: RawRuntime,
}

#[derive(Debug, Default, Deserialize)]
struct RawAuth {
    secret_env: Option<String>,
    secret_file: Option<String>,
}

/// `[auth]`: reads the secret named by `secret_env` or `secret_file`.
fn auth_from_raw(raw: RawAuth, base: &Path, p: &mut Problems) -> AuthConfig {
    let (path, secret) = match (raw.secret_env, raw.secret_file) {
        (None, None) => return AuthConfig::default(),
        (Some(_), Some(_)) => {
            p.push("auth", "set one of secret_env, secret_file");
            return AuthConfig::default();
        }
        (Some(var), None) => match std::env::var(&var) {
            Ok(v) => ("auth.secret_env", v),
            Err(_) => {
                p.push(
                    "auth.secret_env",
                    format!("environment variable {var} is not set"),
                );
                return AuthConfig::default();
            }
        },
        (None, Some(file)) => {
            let file = base.join(file);
            match std::fs::read_to_string(&file) {
                Ok(v) => (
                    "auth.secret_file",
                    v.trim_end_matches(['\r', '\n']).to_owned(),
                ),
                Err(e) => {
                    p.push(
                        "auth.secret_file",
                        format!("cannot read {}: {e}", file.display()),
                    );
                    return AuthConfig::default();
                }
            }
        }
    };
    if secret.len() < MIN_AUTH_SECRET_LEN {
        p.push(
            path,
            format!(
                "the secret must be at least {MIN_AUTH_SECRET_LEN} bytes (e.g. `openssl rand -base64 32`)"
            ),
        );
        return AuthConfig::default();
    }
    AuthConfig {
        secret: Some(AuthSecret(secret.into_bytes())),
    }
}

#[derive(Debug, Default, Deserialize)]
struct RawRuntime {
    worker_threads: Option<usize>,
    flavor: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawAdmin {
    #[serde(default)]
    users: Vec<pooling::RawUser>,
}

#[derive(Debug, Default, Deserialize)]
struct RawRouting {
    sni_suffix: Option<String>,
    sources: Option<Vec<RoutingSource>>,
}

/// `["sni", "options", "user"]`, without `sni` when no suffix is set.
fn default_sources(sni: bool) -> Vec<RoutingSource> {
    let all = [
        RoutingSource::Sni,
        RoutingSource::Options,
        RoutingSource::User,
    ];
    all.into_iter()
        .filter(|s| sni || *s != RoutingSource::Sni)
        .collect()
}

#[derive(Debug, Deserialize)]
struct RawBackend {
    #[serde(default = "default_connect_timeout")]
    connect_timeout: String,
    #[serde(default = "default_auth_timeout")]
    auth_timeout: String,
    zone: Option<String>,
}

impl Default for RawBackend {
    fn default() -> Self {
        RawBackend {
            connect_timeout: default_connect_timeout(),
            auth_timeout: default_auth_timeout(),
            zone: None,
        }
    }
}

fn default_connect_timeout() -> String {
    "5s".into()
}
fn default_auth_timeout() -> String {
    // PostgreSQL's authentication_timeout default.
    "60s".into()
}

#[derive(Debug, Deserialize)]
struct RawLog {
    #[serde(default = "default_log_format")]
    format: LogFormat,
    #[serde(default = "default_log_level")]
    level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            format: default_log_format(),
            level: default_log_level(),
        }
    }
}

fn default_log_format() -> LogFormat {
    LogFormat::Text
}
fn default_log_level() -> String {
    "info".into()
}

#[derive(Debug, Deserialize)]
struct RawShutdown {
    #[serde(default = "default_grace")]
    grace: String,
    #[serde(default = "default_propagation")]
    propagation: String,
    #[serde(default = "default_deregistration_timeout")]
    deregistration_timeout: String,
}

impl Default for RawShutdown {
    fn default() -> Self {
        RawShutdown {
            grace: default_grace(),
            propagation: default_propagation(),
            deregistration_timeout: default_deregistration_timeout(),
        }
    }
}

fn default_propagation() -> String {
    "10s".into()
}
fn default_deregistration_timeout() -> String {
    // The target group's default deregistration delay.
    "300s".into()
}

fn default_grace() -> String {
    "30s".into()
}

// ---- raw → typed ------------------------------------------------------------

impl Config {
    /// What is valid but probably not meant: logged at start and printed
    /// by `pgcell check`.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let peers = self.kubernetes.peer_service.is_some() || !self.cancel.peers.is_empty();
        if peers && self.auth.secret.is_none() {
            out.push(
                "[auth]: pgcell runs with peers ([kubernetes] peer_service or [[cancel.peers]]) \
                 but without a shared secret (secret_file or secret_env): each replica derives its \
                 own SCRAM salts, so a client can tell replicas apart and probe which users exist"
                    .to_owned(),
            );
        }
        out
    }

    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            problems: vec![Problem {
                path: String::new(),
                message: format!("cannot read {}: {e}", path.display()),
            }],
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Config::parse(&text, base)
    }

    /// Parses TOML `text`; relative paths are resolved against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let mut p = Problems::default();
        let mut unknown = Vec::new();
        let de = toml::Deserializer::new(text);
        let raw: Result<RawConfig, _> = serde_ignored::deserialize(de, |path| {
            unknown.push(path.to_string());
        });
        for key in unknown {
            // serde_ignored marks the inside of an optional table with `?`.
            p.push(key.replace(".?.", "."), "unknown key");
        }
        let raw = match raw {
            Ok(raw) => raw,
            Err(e) => {
                p.push("", e.to_string().trim_end().to_owned());
                return Err(p.into_error());
            }
        };
        let config = Config::from_raw(raw, base, &mut p);
        if p.0.is_empty() {
            Ok(config)
        } else {
            Err(p.into_error())
        }
    }

    fn from_raw(raw: RawConfig, base: &Path, p: &mut Problems) -> Config {
        let listen = listen::listen_from_raw(raw.listen, p);
        let tls = listen::tls_from_raw(raw.tls, base, p);

        let r = raw.routing;
        let sni_suffix = r
            .sni_suffix
            .map(|s| s.trim_start_matches('.').to_ascii_lowercase());
        let sources = r
            .sources
            .unwrap_or_else(|| default_sources(sni_suffix.is_some()));
        if sources.is_empty() {
            p.push("routing.sources", "must name at least one source");
        }
        let mut seen_sources = HashSet::new();
        for (i, s) in sources.iter().enumerate() {
            if !seen_sources.insert(*s) {
                p.push(format!("routing.sources[{i}]"), "listed twice");
            }
        }
        if sources.contains(&RoutingSource::Sni) && sni_suffix.is_none() {
            p.push(
                "routing.sni_suffix",
                "required when routing.sources includes \"sni\"",
            );
        }
        let routing = RoutingConfig {
            sni_suffix,
            sources,
        };

        let backend = BackendConfig {
            connect_timeout: p.duration("backend.connect_timeout", &raw.backend.connect_timeout),
            auth_timeout: p.duration("backend.auth_timeout", &raw.backend.auth_timeout),
            zone: raw.backend.zone.clone(),
        };
        let log = LogConfig {
            format: raw.log.format,
            level: raw.log.level,
        };
        if tracing_subscriber::EnvFilter::try_new(&log.level).is_err() {
            p.push("log.level", format!("invalid filter {:?}", log.level));
        }
        let shutdown_grace = p.duration("shutdown.grace", &raw.shutdown.grace);
        let drain = DrainConfig {
            propagation: p.duration("shutdown.propagation", &raw.shutdown.propagation),
            deregistration_timeout: p.duration(
                "shutdown.deregistration_timeout",
                &raw.shutdown.deregistration_timeout,
            ),
        };

        let mut ids = HashSet::new();
        let tenants: Vec<TenantConfig> = raw
            .tenants
            .into_iter()
            .enumerate()
            .map(|(i, t)| tenant_from_raw(t, &format!("tenants[{i}]"), base, &mut ids, p))
            .collect();

        for (i, t) in tenants.iter().enumerate() {
            check_reachable(t, &format!("tenants[{i}]"), &listen, &tls, p);
        }

        // Same keys as tenant users (one credential each), minus the pool.
        let admin_users = pooling::users_from_raw(raw.admin.users, "admin", base, p);
        for (i, u) in admin_users.iter().enumerate() {
            if u.pool_mode.is_some() || u.pool_size.is_some() {
                p.push(
                    format!("admin.users[{i}]"),
                    "pool does not apply to admin users",
                );
            }
        }
        let admin = AdminConfig { users: admin_users };
        let cancel = cancel::cancel_from_raw(raw.cancel, p);
        let auth = auth_from_raw(raw.auth, base, p);
        let aws = aws::aws_from_raw(raw.aws, p);
        let kubernetes = kubernetes::kubernetes_from_raw(raw.kubernetes, p);
        let worker_threads = raw
            .runtime
            .worker_threads
            .map(|n| p.positive("runtime.worker_threads", n));
        let current_thread = match raw.runtime.flavor.as_deref() {
            None | Some("multi_thread") => false,
            Some("current_thread") => {
                if worker_threads.is_some() {
                    p.push(
                        "runtime.worker_threads",
                        "does not apply with runtime.flavor = \"current_thread\"",
                    );
                }
                true
            }
            Some(other) => {
                p.push(
                    "runtime.flavor",
                    format!("{other:?} is not \"multi_thread\" or \"current_thread\""),
                );
                false
            }
        };

        Config {
            listen,
            tls,
            routing,
            backend,
            log,
            shutdown_grace,
            drain,
            tenants,
            admin,
            cancel,
            auth,
            aws,
            kubernetes,
            worker_threads,
            current_thread,
        }
    }
}

impl Config {
    /// Problems of this configuration's tenants under another listener
    /// and TLS setup: a reload checks new tenants against the running
    /// process, whose `[listen]` and `[tls]` only a restart changes.
    pub fn tenant_problems(
        &self,
        listen: &ListenConfig,
        tls: &TlsConfig,
    ) -> Result<(), ConfigError> {
        let mut p = Problems::default();
        for (i, t) in self.tenants.iter().enumerate() {
            check_reachable(t, &format!("tenants[{i}]"), listen, tls, &mut p);
        }
        if p.0.is_empty() {
            Ok(())
        } else {
            Err(p.into_error())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [listen]
        addr = "127.0.0.1:6432"
        [[tenants]]
        id = "acme"
        backends = ["127.0.0.1:5441"]
    "#;

    #[test]
    fn peers_without_a_shared_secret_are_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "s".repeat(32)).unwrap();
        let tls_off = "[tls]\nmode = \"disable\"\n";
        let peers = "[kubernetes]\nmode = \"off\"\npeer_service = \"pgcell-peers\"\n";
        let parse =
            |extra: &str| Config::parse(&format!("{extra}{tls_off}{MINIMAL}"), dir.path()).unwrap();
        let warned = parse(peers).warnings();
        assert_eq!(warned.len(), 1, "{warned:?}");
        assert!(warned[0].contains("[auth]") && warned[0].contains("secret_file"));
        assert!(parse(&format!("[auth]\nsecret_file = \"secret\"\n{peers}"))
            .warnings()
            .is_empty());
        assert!(
            parse("").warnings().is_empty(),
            "one replica needs no secret"
        );
    }

    #[test]
    fn auth_secret_from_file_and_its_problems() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("long"), format!("{}\n", "s".repeat(32))).unwrap();
        std::fs::write(dir.path().join("short"), "s".repeat(31)).unwrap();
        let with = |auth: &str| format!("[auth]\n{auth}\n{MINIMAL}");
        let tls_off = "[tls]\nmode = \"disable\"\n";
        let c = Config::parse(&(with("secret_file = \"long\"") + tls_off), dir.path()).unwrap();
        assert_eq!(c.auth.secret, Some(AuthSecret(b"s".repeat(32))));
        assert_eq!(
            format!("{:?}", c.auth),
            "AuthConfig { secret: Some(AuthSecret(<redacted>)) }"
        );
        assert_eq!(
            Config::parse(&(MINIMAL.to_owned() + tls_off), dir.path())
                .unwrap()
                .auth
                .secret,
            None
        );
        for (auth, path) in [
            ("secret_file = \"short\"", "auth.secret_file"),
            ("secret_file = \"missing\"", "auth.secret_file"),
            (
                "secret_env = \"PGCELL_TEST_NO_SUCH_VARIABLE\"",
                "auth.secret_env",
            ),
            ("secret_env = \"X\"\nsecret_file = \"long\"", "auth"),
            ("secret = \"inline\"", "auth.secret"),
        ] {
            let err = Config::parse(&(with(auth) + tls_off), dir.path()).unwrap_err();
            assert!(err.problems.iter().any(|p| p.path == path), "{auth}: {err}");
        }
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(MINIMAL, Path::new("/etc/pgcell")).unwrap();
        assert_eq!(c.listen.proxy_protocol, ProxyMode::Off);
        assert_eq!(c.listen.startup_timeout, Duration::from_secs(10));
        assert_eq!(c.tls.mode, TlsMode::Disable);
        assert_eq!(c.tenants[0].max_client_connections, 1000);
        assert_eq!(
            c.routing.sources,
            vec![RoutingSource::Options, RoutingSource::User]
        );
        let with_suffix = format!("{MINIMAL}\n[routing]\nsni_suffix = \"pg.example.com\"\n");
        let c = Config::parse(&with_suffix, Path::new(".")).unwrap();
        assert_eq!(c.routing.sources.len(), 3);
        let explicit = format!("{MINIMAL}\n[routing]\nsources = [\"sni\"]\n");
        assert!(Config::parse(&explicit, Path::new(".")).is_err());
    }

    #[test]
    fn max_prepared_statements_default_and_bounds() {
        let c = Config::parse(MINIMAL, Path::new(".")).unwrap();
        assert_eq!(c.tenants[0].pool.max_prepared_statements, 1000);
        let with = |n: u32| format!("{MINIMAL}\n[tenants.pool]\nmax_prepared_statements = {n}\n");
        let c = Config::parse(&with(50), Path::new(".")).unwrap();
        assert_eq!(c.tenants[0].pool.max_prepared_statements, 50);
        let err = Config::parse(&with(0), Path::new(".")).unwrap_err();
        assert!(
            err.problems
                .iter()
                .any(|p| p.path == "tenants[0].pool.max_prepared_statements"),
            "{err}"
        );
    }

    #[test]
    fn user_pool_keys_are_the_tenant_pool_keys() {
        let user = |keys: &str| {
            format!("{MINIMAL}\n[[tenants.users]]\nname = \"app\"\nscram_secret = \"{SECRET}\"\n{keys}\n")
        };
        const SECRET: &str = "SCRAM-SHA-256$4096:AAECAwQFBgcICQoLDA0ODw==$CxcMEx64LOGr6GLjs472wdfA9XBGwafq9YghC4VjL3c=:/BJVHnb+bKttijGfnI96w3tXYK9Hu5e6eSB+Xuin2IA=";
        let c = Config::parse(
            &user("pool = { mode = \"transaction\", size = 3 }"),
            Path::new("."),
        )
        .unwrap();
        assert_eq!(c.tenants[0].users[0].pool_mode, Some(PoolMode::Transaction));
        assert_eq!(c.tenants[0].users[0].pool_size, Some(3));
        for (keys, path) in [
            ("pool_mode = \"session\"", "tenants[0].users[0].pool_mode"),
            ("pool_size = 3", "tenants[0].users[0].pool_size"),
            ("pool = { size = 0 }", "tenants[0].users[0].pool.size"),
        ] {
            let err = Config::parse(&user(keys), Path::new(".")).unwrap_err();
            assert!(err.problems.iter().any(|p| p.path == path), "{keys}: {err}");
        }
    }

    #[test]
    fn sni_source_needs_suffix_only_when_listed() {
        let text = format!("{MINIMAL}\n[routing]\nsources = [\"options\"]\n");
        assert!(Config::parse(&text, Path::new(".")).is_ok());
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let text = r#"
            [listen]
            addr = "nowhere"
            startup_timeout = "soon"
            bogus = 1
            [tls]
            mode = "require"
            [routing]
            sni_suffix = "pg.example.com"
            [[tenants]]
            id = "Acme"
            backends = []
            allowed_cidrs = ["10.0.0.0/33"]
            allowed_vpce_ids = ["vpc-1"]
            colour = "red"
            [[tenants]]
            id = "b"
            backends = ["db:notaport"]
        "#;
        let err = Config::parse(text, Path::new(".")).unwrap_err();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "listen.bogus",
            "tenants.0.colour",
            "listen.addr",
            "listen.startup_timeout",
            "tls.cert",
            "tls.key",
            "tenants[0].id",
            "tenants[0].backends",
            "tenants[0].allowed_cidrs[0]",
            "tenants[0].allowed_vpce_ids[0]",
            "tenants[1].backends[0]",
        ] {
            assert!(paths.contains(&want), "missing {want} in {paths:?}");
        }
    }

    #[test]
    fn unreachable_tenants_are_refused() {
        let text = r#"
            [listen]
            addr = "127.0.0.1:6432"
            [[tenants]]
            id = "a"
            backends = ["db:5432"]
            require_tls = true
            allowed_vpce_ids = ["vpce-0ABC"]
        "#;
        let err = Config::parse(text, Path::new(".")).unwrap_err();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            vec!["tenants[0].require_tls", "tenants[0].allowed_vpce_ids"]
        );
        let optional = text.replace(
            "addr = \"127.0.0.1:6432\"",
            "addr = \"127.0.0.1:6432\"\nproxy_protocol = \"optional\"",
        );
        let err = Config::parse(&optional, Path::new(".")).unwrap_err();
        assert!(err
            .problems
            .iter()
            .any(|p| p.path == "tenants[0].allowed_vpce_ids"));
        let ok = text
            .replace(
                "addr = \"127.0.0.1:6432\"",
                "addr = \"127.0.0.1:6432\"\nproxy_protocol = \"required\"",
            )
            .replace("require_tls = true", "");
        let c = Config::parse(&ok, Path::new(".")).unwrap();
        assert_eq!(c.tenants[0].allowed_vpce_ids, vec!["vpce-0abc".to_string()]);
    }

    #[test]
    fn wrong_type_names_the_key() {
        let text = "[listen]\naddr = 5\n";
        let err = Config::parse(text, Path::new(".")).unwrap_err();
        assert!(err.to_string().contains("addr"), "{err}");
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("db:5432"), Some(("db", 5432)));
        assert_eq!(split_host_port("[::1]:5432"), Some(("::1", 5432)));
        assert_eq!(split_host_port("db"), None);
        assert_eq!(split_host_port(":5432"), None);
    }
}
