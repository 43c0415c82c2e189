//! Tenant resolution and access policy: from a `StartupMessage` and what the
//! connection showed (PROXY header, TLS, SNI) to a [`Route`].
//!
//! Resolution consults the sources in `routing.sources` order; two sources
//! naming different tenants is an error, not a guess. Policy runs before any
//! password is exchanged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use thiserror::Error;

use crate::backend::Target;
use crate::config::{Config, RoutingSource, WhenNoReplica};
use crate::protocol::startup::{parse_startup_options, StartupMessage};
use crate::tenant::{ClientInfo, Tenant};
use crate::tls::TlsError;

/// The tenants and the rules for finding them; swapped whole on reload.
pub(crate) struct RoutingTable {
    tenants: HashMap<String, Arc<Tenant>>,
    sources: Vec<RoutingSource>,
    sni_suffix: Option<String>,
}

/// A routed, admitted connection. Holds the tenant's connection slot until
/// dropped.
pub(crate) struct Route {
    /// The tenant.
    pub tenant: Arc<Tenant>,
    /// The server the client asked for: the primary, or a replica.
    pub target: Target,
    _slot: Slot,
}

struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The tenant could not be determined.
#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum RouteError {
    /// No source named a tenant.
    #[error("no tenant named")]
    Missing,
    /// A source named a tenant that is not configured.
    #[error("unknown tenant {0:?}")]
    Unknown(String),
    /// `target_session_attrs` names a value pgcell does not serve, or two.
    #[error("{0}")]
    BadTarget(String),
    /// Two sources named different tenants.
    #[error("tenant {first:?} from {first_source} conflicts with {second:?} from {second_source}")]
    Conflict {
        /// First tenant named.
        first: String,
        /// Where it came from.
        first_source: &'static str,
        /// Second tenant named.
        second: String,
        /// Where it came from.
        second_source: &'static str,
    },
}

/// The tenant's policy refused the connection.
#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum PolicyError {
    /// The tenant needs a VPC endpoint id and there was none.
    #[error("no VPC endpoint id and tenant requires one")]
    VpceMissing,
    /// The VPC endpoint is not in `allowed_vpce_ids`.
    #[error("VPC endpoint {0} not allowed")]
    VpceNotAllowed(String),
    /// The client address is outside `allowed_cidrs`.
    #[error("client address {0} not allowed")]
    CidrNotAllowed(std::net::IpAddr),
    /// Plaintext to a tenant with `require_tls`.
    #[error("tenant requires TLS")]
    TlsRequired,
    /// `max_client_connections` reached.
    #[error("tenant connection limit of {0} reached")]
    TooManyConnections(usize),
    /// `max_connection_rate` exceeded.
    #[error("tenant connection rate of {0} per second exceeded")]
    RateLimited(u32),
}

impl RouteError {
    /// Metric label for the rejection.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            RouteError::Missing => "missing_tenant",
            RouteError::Unknown(_) => "unknown_tenant",
            RouteError::Conflict { .. } => "tenant_conflict",
            RouteError::BadTarget(_) => "bad_target_session_attrs",
        }
    }
}

impl PolicyError {
    /// Metric label for the rejection.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            PolicyError::VpceMissing => "vpce_missing",
            PolicyError::VpceNotAllowed(_) => "vpce_not_allowed",
            PolicyError::CidrNotAllowed(_) => "cidr_not_allowed",
            PolicyError::TlsRequired => "tls_required",
            PolicyError::TooManyConnections(_) => "tenant_connection_limit",
            PolicyError::RateLimited(_) => "tenant_connection_rate",
        }
    }
}

impl RoutingTable {
    /// Builds the table from `config`, carrying connection counts over from
    /// `previous` for tenants that stay.
    /// Password users' SCRAM salts derive from `salt_key`.
    pub(crate) fn build(
        config: &Config,
        previous: Option<&RoutingTable>,
        salt_key: &crate::auth::secret::SaltKey,
    ) -> Result<RoutingTable, TlsError> {
        let mut tenants = HashMap::new();
        for t in &config.tenants {
            let old = previous.and_then(|p| p.tenants.get(&t.id)).map(|t| &**t);
            tenants.insert(
                t.id.clone(),
                Arc::new(Tenant::build(t, config, old, salt_key)?),
            );
        }
        Ok(RoutingTable {
            tenants,
            sources: config.routing.sources.clone(),
            sni_suffix: config.routing.sni_suffix.clone(),
        })
    }

    /// The tenant `id`, if configured.
    pub(crate) fn tenant(&self, id: &str) -> Option<Arc<Tenant>> {
        self.tenants.get(id).cloned()
    }

    /// Every tenant.
    pub(crate) fn tenants(&self) -> impl Iterator<Item = &Arc<Tenant>> {
        self.tenants.values()
    }

    /// Whether `id` is a configured tenant (for metric labels).
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.tenants.contains_key(id)
    }

    /// Finds the tenant of a connection and rewrites `startup` for its
    /// backend: the tenant token leaves `options`, `USER.TENANT` becomes
    /// `USER`, and a tenant's fixed database replaces the client's.
    pub(crate) fn resolve(
        &self,
        startup: &mut StartupMessage,
        sni: Option<&str>,
    ) -> Result<Arc<Tenant>, RouteError> {
        let mut claim: Option<(String, &'static str)> = None;
        let mut user_rewrite = None;
        let mut weak_user_claim = None;
        for source in &self.sources {
            let found = match source {
                RoutingSource::Sni => sni.and_then(|name| self.tenant_from_sni(name)),
                RoutingSource::Options => tenant_from_options(startup)?,
                RoutingSource::User => match startup.get("user").and_then(split_user) {
                    Some((user, tenant)) if self.lookup(tenant).is_some() => {
                        user_rewrite = Some(user.to_owned());
                        Some(tenant.to_owned())
                    }
                    // `first.last` users are common: a suffix that is no
                    // tenant only counts when nothing else names one.
                    Some((_, tenant)) => {
                        weak_user_claim = Some(tenant.to_owned());
                        None
                    }
                    None => None,
                },
            };
            let Some(id) = found else { continue };
            let name = source_name(*source);
            match &claim {
                None => claim = Some((id, name)),
                Some((first, _)) if *first == id => {}
                Some((first, first_source)) => {
                    return Err(RouteError::Conflict {
                        first: first.clone(),
                        first_source,
                        second: id,
                        second_source: name,
                    })
                }
            }
        }
        let id = match (claim, weak_user_claim) {
            (Some((id, _)), _) => id,
            (None, Some(id)) => return Err(RouteError::Unknown(id)),
            (None, None) => return Err(RouteError::Missing),
        };
        let (tenant, read_only_alias) = self.lookup(&id).ok_or(RouteError::Unknown(id))?;
        if read_only_alias {
            // The alias means what target_session_attrs=read-only means.
            let options = match startup.get("options") {
                Some(o) if !o.trim().is_empty() => format!("{o} -c {TARGET_KEY}=read-only"),
                _ => format!("-c {TARGET_KEY}=read-only"),
            };
            startup.set("options", options);
        }
        if let Some(user) = user_rewrite {
            startup.set("user", user);
        }
        if let Some(db) = &tenant.config.database {
            startup.set("database", db.clone());
        }
        Ok(tenant)
    }

    /// The tenant named `id`: a tenant's id, or its read-only alias (the
    /// id followed by [`READ_ONLY_SUFFIX`], when no tenant has that id
    /// itself); true for the alias.
    fn lookup(&self, id: &str) -> Option<(Arc<Tenant>, bool)> {
        if let Some(t) = self.tenants.get(id) {
            return Some((t.clone(), false));
        }
        let base = id.strip_suffix(READ_ONLY_SUFFIX)?;
        self.tenants.get(base).map(|t| (t.clone(), true))
    }

    fn tenant_from_sni(&self, name: &str) -> Option<String> {
        let suffix = self.sni_suffix.as_deref()?;
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let label = name.strip_suffix(suffix)?.strip_suffix('.')?;
        // Exactly one label: `x.acme.<suffix>` is not acme's.
        (!label.is_empty() && !label.contains('.')).then(|| label.to_owned())
    }

    /// How a client may name its tenant, for error hints.
    pub(crate) fn how_to_name_tenant(&self) -> String {
        let ways: Vec<String> = self
            .sources
            .iter()
            .map(|s| match s {
                RoutingSource::Sni => format!(
                    "connect to host <tenant>.{} with TLS",
                    self.sni_suffix.as_deref().unwrap_or("<suffix>")
                ),
                RoutingSource::Options => "add options=tenant=<tenant>".to_owned(),
                RoutingSource::User => "use the user name <user>.<tenant>".to_owned(),
            })
            .collect();
        format!("Name your tenant: {}.", ways.join(", or "))
    }
}

/// Checks `tenant`'s policy for `client` and takes a connection slot;
/// the client's backends will be `target`.
pub(crate) fn admit(
    tenant: Arc<Tenant>,
    target: Target,
    client: &ClientInfo,
) -> Result<Route, PolicyError> {
    let policy = &tenant.config;
    if !policy.allowed_vpce_ids.is_empty() {
        match &client.vpce_id {
            None => return Err(PolicyError::VpceMissing),
            Some(id)
                if !policy
                    .allowed_vpce_ids
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(id)) =>
            {
                return Err(PolicyError::VpceNotAllowed(id.clone()))
            }
            Some(_) => {}
        }
    }
    if !policy.allowed_cidrs.is_empty() {
        let ip = canonical_ip(client.addr.ip());
        if !policy.allowed_cidrs.iter().any(|net| net.contains(&ip)) {
            return Err(PolicyError::CidrNotAllowed(ip));
        }
    }
    if policy.require_tls && !client.tls {
        return Err(PolicyError::TlsRequired);
    }
    // Counted before the connection limit, so that a flood held back by
    // that limit still spends the budget.
    if let Some(rate) = policy.max_connection_rate {
        let allowed = tenant
            .arrivals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(rate, Instant::now());
        if !allowed {
            return Err(PolicyError::RateLimited(rate));
        }
    }
    let limit = policy.max_client_connections;
    let taken = tenant
        .active
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < limit).then_some(n + 1)
        });
    if taken.is_err() {
        return Err(PolicyError::TooManyConnections(limit));
    }
    let slot = Slot(tenant.active.clone());
    Ok(Route {
        tenant,
        target,
        _slot: slot,
    })
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
fn canonical_ip(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn source_name(source: RoutingSource) -> &'static str {
    match source {
        RoutingSource::Sni => "the TLS server name",
        RoutingSource::Options => "options",
        RoutingSource::User => "the user name",
    }
}

fn split_user(user: &str) -> Option<(&str, &str)> {
    let (user, tenant) = user.rsplit_once('.')?;
    (!user.is_empty() && !tenant.is_empty()).then_some((user, tenant))
}

/// Takes the tenant out of the `options` parameter: a `tenant` or
/// `endpoint` setting in any form PostgreSQL accepts (`-c tenant=ID`,
/// `-ctenant=ID`, `--tenant=ID`, backslash escapes), or pgcell's own bare
/// `tenant=ID` / `endpoint=ID`. Every such token is removed; the rest of
/// `options` reaches the backend as the client wrote it.
fn tenant_from_options(startup: &mut StartupMessage) -> Result<Option<String>, RouteError> {
    let Some(options) = startup.get("options") else {
        return Ok(None);
    };
    let parsed = parse_startup_options(options);
    let mut found: Option<String> = None;
    let mut note = |id: &str| -> Result<(), RouteError> {
        match &found {
            Some(prev) if prev != id => Err(RouteError::Conflict {
                first: prev.clone(),
                first_source: "options",
                second: id.to_owned(),
                second_source: "options",
            }),
            _ => {
                found = Some(id.to_owned());
                Ok(())
            }
        }
    };
    let mut drop_settings = Vec::new();
    for (i, setting) in parsed.settings.iter().enumerate() {
        if TENANT_KEYS.contains(&setting.name.as_str()) {
            note(&setting.value)?;
            drop_settings.push(i);
        }
    }
    let mut drop_bare = Vec::new();
    for &i in &parsed.bare {
        let Some(arg) = parsed.args.get(i) else {
            continue;
        };
        let value = TENANT_KEYS.iter().find_map(|key| {
            arg.text
                .strip_prefix(key)
                .and_then(|rest| rest.strip_prefix('='))
        });
        if let Some(id) = value {
            note(id)?;
            drop_bare.push(i);
        }
    }
    if found.is_some() {
        let kept = parsed.without(&drop_settings, &drop_bare);
        if kept.is_empty() {
            startup.remove("options");
        } else {
            startup.set("options", kept);
        }
    }
    Ok(found)
}

/// What a tenant id with this suffix names: the tenant's replicas
/// (`acme-ro` is `acme`, read-only), unless a tenant has that id itself.
pub(crate) const READ_ONLY_SUFFIX: &str = "-ro";

/// The libpq connection option a client sets in `options` to ask for a
/// kind of server.
const TARGET_KEY: &str = "target_session_attrs";

/// Takes `target_session_attrs` out of the `options` parameter (PostgreSQL
/// does not know it as a setting) and says which server the client wants.
/// Values as libpq's: `any`, `read-write`, `primary` go to the primary (as
/// without the option); `standby` to a replica only; `read-only` to a
/// replica, or the primary when none is fit and the tenant allows it
/// (`when_no_replica`); `prefer-standby` to a replica, else the primary.
pub(crate) fn take_target(
    startup: &mut StartupMessage,
    tenant: &Tenant,
) -> Result<Target, RouteError> {
    let Some(options) = startup.get("options") else {
        return Ok(Target::Primary);
    };
    let parsed = parse_startup_options(options);
    let mut wanted: Option<String> = None;
    let mut drop_settings = Vec::new();
    for (i, setting) in parsed.settings.iter().enumerate() {
        // Setting names are case-insensitive, as PostgreSQL's.
        if !setting.name.eq_ignore_ascii_case(TARGET_KEY) {
            continue;
        }
        match &wanted {
            Some(prev) if *prev != setting.value => {
                return Err(RouteError::BadTarget(format!(
                    "target_session_attrs is both \"{prev}\" and \"{}\"",
                    setting.value
                )))
            }
            _ => wanted = Some(setting.value.clone()),
        }
        drop_settings.push(i);
    }
    let Some(wanted) = wanted else {
        return Ok(Target::Primary);
    };
    let kept = parsed.without(&drop_settings, &[]);
    if kept.is_empty() {
        startup.remove("options");
    } else {
        startup.set("options", kept);
    }
    let fallback = tenant.config.replication.when_no_replica == WhenNoReplica::Primary;
    match wanted.as_str() {
        "any" | "read-write" | "primary" => Ok(Target::Primary),
        "read-only" => Ok(Target::Replica { fallback }),
        "standby" => Ok(Target::Replica { fallback: false }),
        "prefer-standby" => Ok(Target::Replica { fallback: true }),
        other => Err(RouteError::BadTarget(format!(
            "invalid target_session_attrs value \"{other}\": use any, read-write, primary, read-only, standby or prefer-standby"
        ))),
    }
}

/// Names under which `options` carries the tenant.
const TENANT_KEYS: [&str; 2] = ["tenant", "endpoint"];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::RateBucket;
    use std::path::Path;

    fn table(sources: &str) -> RoutingTable {
        let text = format!(
            r#"
            [listen]
            addr = "127.0.0.1:0"
            proxy_protocol = "required"
            [tls]
            cert = "unused.crt"
            key = "unused.key"
            [routing]
            sni_suffix = "pg.example.com"
            sources = {sources}
            [[tenants]]
            id = "acme"
            backends = ["127.0.0.1:1"]
            [[tenants]]
            id = "globex"
            backends = ["127.0.0.1:2"]
            database = "globex_db"
            max_client_connections = 1
            allowed_vpce_ids = ["vpce-0123456789abcdef0"]
            allowed_cidrs = ["10.0.0.0/8"]
            require_tls = true
        "#
        );
        let config = Config::parse(&text, Path::new(".")).unwrap();
        let key = crate::auth::secret::SaltKey::from_secret(b"test");
        RoutingTable::build(&config, None, &key).unwrap()
    }

    fn startup(params: &[(&str, &str)]) -> StartupMessage {
        StartupMessage {
            minor: 0,
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    const ALL: &str = r#"["sni", "options", "user"]"#;

    #[test]
    fn sni_label() {
        let t = table(ALL);
        let mut s = startup(&[("user", "u")]);
        assert_eq!(
            t.resolve(&mut s, Some("ACME.pg.example.com")).unwrap().id(),
            "acme"
        );
        assert_eq!(
            t.resolve(&mut s, Some("other.example.com")).err(),
            Some(RouteError::Missing)
        );
        assert_eq!(
            t.resolve(&mut s, Some("x.acme.pg.example.com")).err(),
            Some(RouteError::Missing)
        );
    }

    #[test]
    fn options_token_is_removed() {
        let t = table(ALL);
        let mut s = startup(&[
            ("user", "u"),
            ("options", "-c search_path=x tenant=acme --foo=a\\ b"),
        ]);
        assert_eq!(t.resolve(&mut s, None).unwrap().id(), "acme");
        assert_eq!(s.get("options"), Some("-c search_path=x --foo=a\\ b"));
        let mut s = startup(&[("user", "u"), ("options", "-c tenant=acme -c work_mem=1MB")]);
        assert_eq!(t.resolve(&mut s, None).unwrap().id(), "acme");
        assert_eq!(s.get("options"), Some("-c work_mem=1MB"));
        let mut s = startup(&[("user", "u"), ("options", "endpoint=globex")]);
        assert_eq!(t.resolve(&mut s, None).unwrap().id(), "globex");
        assert_eq!(s.get("options"), None);
        assert_eq!(s.get("database"), Some("globex_db"));
    }

    #[test]
    fn options_tenant_in_every_postgres_form() {
        let t = table(ALL);
        for (options, rest) in [
            ("-ctenant=acme", None),
            ("--tenant=acme", None),
            ("-c tenant=acme", None),
            ("-c\ttenant=acme", None),
            ("--tenant=ac\\me -c work_mem=1MB", Some("-c work_mem=1MB")),
            ("-cwork_mem=1MB -ctenant=acme", Some("-cwork_mem=1MB")),
            (
                "--search-path=a\\ b --endpoint=acme",
                Some("--search-path=a\\ b"),
            ),
            ("-c endpoint=acme --tenant=acme", None),
        ] {
            let mut s = startup(&[("user", "u"), ("options", options)]);
            assert_eq!(t.resolve(&mut s, None).unwrap().id(), "acme", "{options}");
            assert_eq!(s.get("options"), rest, "{options}");
        }
        // Not the tenant: the argument of another switch, or after `--`.
        let mut s = startup(&[("user", "u"), ("options", "-d tenant=acme")]);
        assert_eq!(t.resolve(&mut s, None).err(), Some(RouteError::Missing));
        let mut s = startup(&[("user", "u"), ("options", "-ctenant=acme --tenant=globex")]);
        assert!(matches!(
            t.resolve(&mut s, None),
            Err(RouteError::Conflict { .. })
        ));
    }

    #[test]
    fn user_suffix_is_rewritten() {
        let t = table(ALL);
        let mut s = startup(&[("user", "alice.acme")]);
        assert_eq!(t.resolve(&mut s, None).unwrap().id(), "acme");
        assert_eq!(s.get("user"), Some("alice"));
        // A dotted user name whose suffix is no tenant is left alone when
        // another source names the tenant...
        let mut s = startup(&[("user", "john.doe"), ("options", "tenant=acme")]);
        assert_eq!(t.resolve(&mut s, None).unwrap().id(), "acme");
        assert_eq!(s.get("user"), Some("john.doe"));
        // ...and is an unknown tenant when nothing else does.
        let mut s = startup(&[("user", "john.doe")]);
        assert_eq!(
            t.resolve(&mut s, None).err(),
            Some(RouteError::Unknown("doe".into()))
        );
    }

    #[test]
    fn conflicts_and_unknowns() {
        let t = table(ALL);
        let mut s = startup(&[("user", "u.globex")]);
        assert!(matches!(
            t.resolve(&mut s, Some("acme.pg.example.com")),
            Err(RouteError::Conflict { .. })
        ));
        let mut s = startup(&[("user", "u"), ("options", "tenant=acme tenant=globex")]);
        assert!(matches!(
            t.resolve(&mut s, None),
            Err(RouteError::Conflict { .. })
        ));
        let mut s = startup(&[("user", "u"), ("options", "tenant=nope")]);
        assert_eq!(
            t.resolve(&mut s, None).err(),
            Some(RouteError::Unknown("nope".into()))
        );
        let mut s = startup(&[("user", "u")]);
        assert_eq!(t.resolve(&mut s, None).err(), Some(RouteError::Missing));
    }

    #[test]
    fn disabled_sources_are_ignored() {
        let t = table(r#"["options"]"#);
        let mut s = startup(&[("user", "u.acme")]);
        assert_eq!(
            t.resolve(&mut s, Some("acme.pg.example.com")).err(),
            Some(RouteError::Missing)
        );
        assert!(!t.how_to_name_tenant().contains("globex"));
    }

    #[test]
    fn policy_in_order_and_slots() {
        let t = table(ALL);
        let globex = t.tenants["globex"].clone();
        let mut client = ClientInfo {
            addr: "10.1.1.1:5".parse().unwrap(),
            vpce_id: None,
            tls: true,
            sni: None,
            tls_end_point: None,
        };
        assert_eq!(
            admit(globex.clone(), Target::Primary, &client).err(),
            Some(PolicyError::VpceMissing)
        );
        client.vpce_id = Some("vpce-ffffffffffffffff0".into());
        assert!(matches!(
            admit(globex.clone(), Target::Primary, &client),
            Err(PolicyError::VpceNotAllowed(_))
        ));
        client.vpce_id = Some("vpce-0123456789abcdef0".into());
        client.addr = "192.168.1.1:5".parse().unwrap();
        assert!(matches!(
            admit(globex.clone(), Target::Primary, &client),
            Err(PolicyError::CidrNotAllowed(_))
        ));
        client.addr = "[::ffff:10.2.2.2]:5".parse().unwrap();
        client.tls = false;
        assert_eq!(
            admit(globex.clone(), Target::Primary, &client).err(),
            Some(PolicyError::TlsRequired)
        );
        client.tls = true;
        let first = admit(globex.clone(), Target::Primary, &client).unwrap();
        assert_eq!(
            admit(globex.clone(), Target::Primary, &client).err(),
            Some(PolicyError::TooManyConnections(1))
        );
        drop(first);
        assert!(admit(globex, Target::Primary, &client).is_ok());
    }

    #[test]
    fn connection_rate_bucket() {
        let start = Instant::now();
        let mut b = RateBucket::default();
        // A burst of `rate`, then nothing until time passes.
        for _ in 0..3 {
            assert!(b.take(3, start));
        }
        assert!(!b.take(3, start));
        let later = start + std::time::Duration::from_millis(340);
        assert!(b.take(3, later));
        assert!(!b.take(3, later));
        // Refills to the burst size, never beyond.
        let much_later = later + std::time::Duration::from_secs(60);
        for _ in 0..3 {
            assert!(b.take(3, much_later));
        }
        assert!(!b.take(3, much_later));
    }
}
