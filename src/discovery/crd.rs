//! The `PgcellTenant` custom resource (`pgcell.io/v1alpha1`): one
//! `[[tenants]]` entry as a Kubernetes object, and its conversion into the
//! same validated [`TenantConfig`] the config file yields.
//!
//! The CRD manifest is generated from these types (`pgcell crd`) and
//! committed as `deploy/kubernetes/base/pgcelltenant-crd.yaml`.

use std::collections::BTreeMap;
use std::path::Path;

use ::kube::CustomResource;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::{AuthMode, Credential, Password, TenantConfig};

/// A tenant of this cell: where its databases are and who may reach them.
/// Mirrors a `[[tenants]]` entry of the config file (camelCase keys).
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "pgcell.io",
    version = "v1alpha1",
    kind = "PgcellTenant",
    namespaced,
    status = "PgcellTenantStatus",
    shortname = "pgt",
    printcolumn = r#"{"name":"Tenant","type":"string","jsonPath":".spec.tenantId"}"#,
    printcolumn = r#"{"name":"Service","type":"string","jsonPath":".spec.backends.service.name"}"#,
    printcolumn = r#"{"name":"Auth","type":"string","jsonPath":".spec.auth"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PgcellTenantSpec {
    /// Tenant id (a DNS label, as clients name it in SNI, `options` or the
    /// user name suffix); the object's name when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// Where the tenant's PostgreSQL is: a Service (its ready endpoints,
    /// from EndpointSlices) or fixed `host:port` addresses.
    pub backends: BackendsSpec,
    /// Database every connection uses, whatever the client names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// VPC endpoint ids allowed to connect; any when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_vpce_ids: Vec<String>,
    /// Client address ranges (CIDR or address) allowed to connect; any
    /// when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_cidrs: Vec<String>,
    /// Refuse plaintext clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_tls: Option<bool>,
    /// Client connections of this tenant served at once (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_client_connections: Option<u32>,
    /// New client connections per second accepted for this tenant
    /// (a token bucket with one second of burst); unlimited when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_rate: Option<u32>,
    /// TLS to the backends: `disable` (default), `require` or
    /// `verify-full` (needs `backendCaFile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_tls: Option<BackendTls>,
    /// CA bundle (PEM) for `verify-full`: a path inside the pgcell pod
    /// (mount the Secret or ConfigMap holding it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_ca_file: Option<String>,
    /// Name to verify the backend certificate against; the backend's
    /// host by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_server_name: Option<String>,
    /// Who authenticates clients: `passthrough` (the backend; default
    /// without users), `scram` (pgcell, pooled; default with users) or
    /// `md5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
    /// Pool settings, when pgcell authenticates clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolSpec>,
    /// Users pgcell authenticates itself, with credentials from Secrets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<UserSpec>,
    /// How the primary and replicas among the backends are followed
    /// (docs/replicas.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationSpec>,
}

/// `[tenants.replication]`; durations are strings such as `1s`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationSpec {
    /// The user (one of `users`, whose Secret holds a password) the probe
    /// logs in as; no probe when unset (roles are still learnt at login).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_user: Option<String>,
    /// Database the probe connects to (default `postgres`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_database: Option<String>,
    /// Time between probes (default `1s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_interval: Option<String>,
    /// Longest a probe may take (default `1s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_timeout: Option<String>,
    /// Replay lag in bytes past which a replica gets no new clients
    /// (default 16 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replica_lag_bytes: Option<u64>,
    /// Replay lag in time past which a replica gets no new clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replica_lag: Option<String>,
    /// `primary` (default) or `refuse`: where a read-only client goes
    /// when no replica is fit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when_no_replica: Option<String>,
    /// The backend (`host:port`) the operator names primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// Transaction mode: read-only transactions go to replicas that have
    /// the client's writes (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only_transactions: Option<bool>,
    /// Zone of each backend (`host:port` → zone).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub zones: BTreeMap<String, String>,
}

/// Exactly one of `service` and `hosts`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendsSpec {
    /// A Service whose ready endpoints are the backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceRef>,
    /// Fixed backend addresses, `host:port`: the primary and its replicas,
    /// in any order (pgcell finds which is the primary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Vec<String>>,
}

/// A Service and one of its ports.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRef {
    /// The Service's name.
    pub name: String,
    /// Its namespace; the PgcellTenant's when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The port: the Service port's name, or the endpoints' port number
    /// (the container port).
    pub port: IntOrString,
}

/// A key of a Secret in the PgcellTenant's namespace. pgcell watches
/// that Secret by name: grant it `list` and `watch` on the name (a Role
/// rule with `resourceNames`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    pub name: String,
    /// The key within its data.
    pub key: String,
}

/// One user pgcell authenticates.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserSpec {
    /// User name as clients send it.
    pub name: String,
    /// The user's password, or its SCRAM secret as PostgreSQL stores it
    /// (`SCRAM-SHA-256$…`, so that no password is kept).
    pub secret_ref: SecretKeyRef,
    /// Pool mode and size for this user, overriding the tenant's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<UserPoolSpec>,
}

/// The pool keys a user may override; the same names as the tenant's.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserPoolSpec {
    /// Pool mode for this user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<PoolModeSpec>,
    /// Pool size for this user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u32>,
}

/// Pool settings; durations are strings such as `5s` or `10m`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolSpec {
    /// `session` (default) or `transaction`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<PoolModeSpec>,
    /// Backend connections per (database, user) pool (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u32>,
    /// Backends kept open even when idle (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_idle: Option<u32>,
    /// Client connections one pool serves at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_client_connections: Option<u32>,
    /// How long a client may wait for a backend (default 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acquire_timeout: Option<String>,
    /// Idle backends older than this are closed (default 10m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    /// Backends older than this are closed when free (default 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lifetime: Option<String>,
    /// Backends idle longer than this are checked first (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_after_idle: Option<String>,
    /// Run when a session-mode client leaves (default `DISCARD ALL`;
    /// empty for none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_query: Option<String>,
    /// Transaction mode: keep a client on its backend once it creates
    /// session state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_session_state: Option<bool>,
    /// Transaction mode: reset the session after every transaction, for
    /// functions that change settings pgcell cannot see.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_every_transaction: Option<bool>,
    /// Transaction mode: check every backend for session state no message
    /// showed before returning it (closed if it holds any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_session_state: Option<bool>,
    /// Transaction mode: protocol-level prepared statements each backend
    /// keeps (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prepared_statements: Option<u32>,
}

/// TLS from pgcell to the backends.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BackendTls {
    /// Plaintext.
    Disable,
    /// TLS without verification.
    Require,
    /// TLS with CA and host name verification.
    VerifyFull,
}

/// Who authenticates clients.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AuthSpec {
    /// The backend.
    Passthrough,
    /// pgcell, SCRAM-SHA-256.
    Scram,
    /// pgcell, MD5.
    Md5,
}

/// Pool mode.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PoolModeSpec {
    /// Backend held for the client's session.
    Session,
    /// Backend held for one transaction.
    Transaction,
}

/// Not written by pgcell yet (it only reads PgcellTenants); reserved for
/// an operator or a later version.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PgcellTenantStatus {
    /// The tenant id in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// Why the tenant is not served, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The CRD manifest, as committed under `deploy/`.
pub fn crd_yaml() -> Result<String, serde_saphyr::SerializeError> {
    use ::kube::CustomResourceExt;
    let crd = PgcellTenant::crd();
    Ok(format!(
        "# Generated by `pgcell crd` from src/discovery/crd.rs; do not edit.\n{}",
        serde_saphyr::to_string(&crd)?
    ))
}

/// What a `PgcellTenant` refers to, resolved by the caller from its
/// watches.
pub trait Lookup {
    /// The value of `key` in Secret `name` of `namespace`, as text.
    fn secret(&self, namespace: &str, name: &str, key: &str) -> Result<String, String>;
    /// The ready endpoints (`host:port`) of `service`'s port in `namespace`.
    fn endpoints(&self, namespace: &str, service: &ServiceRef) -> Vec<String>;
    /// The zones of those endpoints that say one.
    fn endpoint_zones(&self, _namespace: &str, _service: &ServiceRef) -> BTreeMap<String, String> {
        BTreeMap::new()
    }
}

/// Stands in for a password while the config validator checks a user:
/// the validator takes passwords only from the environment or a file,
/// so a Secret's password goes in after validation.
const PLACEHOLDER_SECRET: &str = "SCRAM-SHA-256$4096:AAECAwQFBgcICQoLDA0ODw==$CxcMEx64LOGr6GLjs472wdfA9XBGwafq9YghC4VjL3c=:/BJVHnb+bKttijGfnI96w3tXYK9Hu5e6eSB+Xuin2IA=";

/// Stands in for a Service's endpoints while it has none: the validator
/// wants at least one backend, and a tenant whose Service has no ready
/// endpoint must still be routed (its clients get 08006, not "unknown
/// tenant"). Replaced by an empty list after validation.
const PLACEHOLDER_BACKEND: &str = "no-ready-endpoint.invalid:5432";

/// The validated tenant `object` describes, with the Secrets and
/// endpoints it names looked up in `lookup`; every problem in one message.
pub fn tenant_config(object: &PgcellTenant, lookup: &dyn Lookup) -> Result<TenantConfig, String> {
    let namespace = object.metadata.namespace.as_deref().unwrap_or("default");
    let name = object.metadata.name.as_deref().unwrap_or_default();
    let spec = &object.spec;
    let id = spec.tenant_id.clone().unwrap_or_else(|| name.to_owned());

    let mut problems = Vec::new();
    // Zones the Service's EndpointSlices give, under those the spec names.
    let mut zones = BTreeMap::new();
    let backends = match (&spec.backends.service, &spec.backends.hosts) {
        (Some(service), None) => {
            let ns = service.namespace.as_deref().unwrap_or(namespace);
            zones = lookup.endpoint_zones(ns, service);
            lookup.endpoints(ns, service)
        }
        (None, Some(hosts)) => hosts.clone(),
        _ => {
            problems.push("backends: needs exactly one of service and hosts".to_owned());
            Vec::new()
        }
    };
    let from_service = spec.backends.service.is_some();
    let no_endpoints = from_service && backends.is_empty();

    // Users: the Secret's value is a SCRAM secret or a password.
    let mut users = Vec::new();
    let mut passwords = BTreeMap::new();
    for (i, u) in spec.users.iter().enumerate() {
        let value = match lookup.secret(namespace, &u.secret_ref.name, &u.secret_ref.key) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!("users[{i}].secretRef: {e}"));
                continue;
            }
        };
        let scram_secret = if value.starts_with("SCRAM-SHA-256$") {
            value
        } else {
            passwords.insert(i, value);
            PLACEHOLDER_SECRET.to_owned()
        };
        users.push(json!({
            "name": u.name,
            "scram_secret": scram_secret,
            "pool": u.pool.as_ref().map(|p| json!({"mode": p.mode, "size": p.size})),
        }));
    }
    // The validator sees placeholders for passwords, so MD5's one rule
    // (every user needs a password) is checked here and the rest under
    // "scram".
    let md5 = spec.auth == Some(AuthSpec::Md5);
    if md5 {
        for i in 0..spec.users.len() {
            if !passwords.contains_key(&i) {
                problems.push(format!(
                    "spec.users[{i}]: auth md5 needs a password in the Secret, not a SCRAM secret"
                ));
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }

    let pool = spec.pool.clone().unwrap_or_default();
    let entry = json!({
        "id": id,
        "backends": if no_endpoints { vec![PLACEHOLDER_BACKEND.to_owned()] } else { backends },
        "database": spec.database,
        "allowed_vpce_ids": spec.allowed_vpce_ids,
        "allowed_cidrs": spec.allowed_cidrs,
        "require_tls": spec.require_tls.unwrap_or(false),
        "max_client_connections": spec.max_client_connections.unwrap_or(1000),
        "max_connection_rate": spec.max_connection_rate,
        "backend_tls": spec.backend_tls.unwrap_or(BackendTls::Disable),
        "backend_ca": spec.backend_ca_file,
        "backend_server_name": spec.backend_server_name,
        "auth": if md5 { Some(AuthSpec::Scram) } else { spec.auth },
        "pool": {
            "mode": pool.mode,
            "size": pool.size,
            "min_idle": pool.min_idle,
            "max_client_connections": pool.max_client_connections,
            "acquire_timeout": pool.acquire_timeout,
            "idle_timeout": pool.idle_timeout,
            "max_lifetime": pool.max_lifetime,
            "check_after_idle": pool.check_after_idle,
            "reset_query": pool.reset_query,
            "pin_session_state": pool.pin_session_state,
            "reset_every_transaction": pool.reset_every_transaction,
            "check_session_state": pool.check_session_state,
            "max_prepared_statements": pool.max_prepared_statements,
        },
        "users": users,
        // The probe user is checked below: the validator sees
        // placeholders for passwords.
        "replication": spec.replication.as_ref().map(|r| json!({
            "probe_database": r.probe_database,
            "probe_interval": r.probe_interval,
            "probe_timeout": r.probe_timeout,
            "max_replica_lag_bytes": r.max_replica_lag_bytes,
            "max_replica_lag": r.max_replica_lag,
            "when_no_replica": r.when_no_replica,
            "primary": r.primary,
            "read_only_transactions": r.read_only_transactions,
            "zones": zones.clone().into_iter().chain(r.zones.clone()).collect::<BTreeMap<_, _>>(),
        })),
    });
    let mut entry = entry;
    if spec.replication.is_none() && !zones.is_empty() {
        entry["replication"] = json!({ "zones": zones });
    }
    let entry = strip_nulls(entry);
    let mut tenant =
        crate::config::tenant_from_entry(entry, "spec", Path::new("/")).map_err(|e| {
            e.problems
                .iter()
                .map(|p| format!("{}: {}", camel_path(&p.path), p.message))
                .collect::<Vec<_>>()
                .join("; ")
        })?;
    if md5 {
        tenant.auth = AuthMode::Md5;
    }
    if let Some(user) = spec.replication.as_ref().and_then(|r| r.probe_user.clone()) {
        match spec.users.iter().position(|u| u.name == user) {
            Some(i) if passwords.contains_key(&i) => tenant.replication.probe_user = Some(user),
            Some(i) => {
                return Err(format!(
                    "spec.replication.probeUser: users[{i}]'s Secret holds a SCRAM secret; the probe needs a password"
                ))
            }
            None => {
                return Err(format!(
                    "spec.replication.probeUser: {user:?} is not one of spec.users"
                ))
            }
        }
    }
    for (i, password) in passwords {
        if let Some(user) = tenant.users.get_mut(i) {
            user.credential = Credential::Password(Password(password));
        }
    }
    if no_endpoints {
        tenant.backends.clear();
    }
    crate::tls::backend_client_config(tenant.backend_tls, tenant.backend_ca.as_deref())
        .map_err(|e| format!("backendCaFile: {e}"))?;
    Ok(tenant)
}

/// The validator's `spec.allowed_cidrs[0]` as the object spells it
/// (`spec.allowedCidrs[0]`).
fn camel_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut upper = false;
    for c in path.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    let out = out.replace("backendCa", "backendCaFile");
    match out.strip_suffix(".id") {
        Some(object) => format!("{object}.tenantId"),
        None => out,
    }
}

/// Drops `null` members, so that unset keys get the validator's defaults.
fn strip_nulls(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(strip_nulls).collect())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::PoolMode;

    #[derive(Default)]
    struct Fake {
        secrets: HashMap<(String, String, String), String>,
        endpoints: Vec<String>,
        zones: BTreeMap<String, String>,
    }

    impl Lookup for Fake {
        fn secret(&self, namespace: &str, name: &str, key: &str) -> Result<String, String> {
            self.secrets
                .get(&(namespace.into(), name.into(), key.into()))
                .cloned()
                .ok_or_else(|| format!("Secret {namespace}/{name} has no key {key:?}"))
        }
        fn endpoints(&self, _: &str, _: &ServiceRef) -> Vec<String> {
            self.endpoints.clone()
        }
        fn endpoint_zones(&self, _: &str, _: &ServiceRef) -> BTreeMap<String, String> {
            self.zones.clone()
        }
    }

    fn object(spec: serde_json::Value) -> PgcellTenant {
        serde_json::from_value(json!({
            "apiVersion": "pgcell.io/v1alpha1",
            "kind": "PgcellTenant",
            "metadata": {"name": "acme", "namespace": "cell"},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn a_full_spec_converts() {
        let mut fake = Fake {
            endpoints: vec!["10.0.0.5:5432".into()],
            ..Fake::default()
        };
        fake.secrets.insert(
            ("cell".into(), "acme-users".into(), "app".into()),
            "pencil".into(),
        );
        fake.secrets.insert(
            ("cell".into(), "acme-users".into(), "report".into()),
            PLACEHOLDER_SECRET.into(),
        );
        let t = tenant_config(
            &object(json!({
                "backends": {"service": {"name": "acme-pg", "port": "postgres"}},
                "database": "app",
                "allowedCidrs": ["10.0.0.0/8"],
                "maxClientConnections": 50,
                "maxConnectionRate": 20,
                "pool": {"mode": "transaction", "size": 5, "acquireTimeout": "2s"},
                "users": [
                    {"name": "app", "secretRef": {"name": "acme-users", "key": "app"}},
                    {"name": "report", "secretRef": {"name": "acme-users", "key": "report"}, "pool": {"size": 2}},
                ],
            })),
            &fake,
        )
        .unwrap();
        assert_eq!(t.id, "acme", "the object's name");
        assert_eq!(t.backends, vec!["10.0.0.5:5432".to_string()]);
        assert_eq!(t.database.as_deref(), Some("app"));
        assert_eq!(t.max_client_connections, 50);
        assert_eq!(t.max_connection_rate, Some(20));
        assert_eq!(t.auth, AuthMode::Scram);
        assert_eq!(t.pool.mode, PoolMode::Transaction);
        assert_eq!(t.pool.size, 5);
        assert_eq!(t.pool.acquire_timeout, std::time::Duration::from_secs(2));
        assert_eq!(
            t.users[0].credential,
            Credential::Password(Password("pencil".into()))
        );
        assert!(matches!(t.users[1].credential, Credential::ScramSecret(_)));
        assert_eq!(t.users[1].pool_size, Some(2));
    }

    #[test]
    fn replication_converts_and_its_probe_user_needs_a_password() {
        let mut fake = Fake::default();
        fake.secrets
            .insert(("cell".into(), "u".into(), "app".into()), "pencil".into());
        fake.secrets.insert(
            ("cell".into(), "u".into(), "report".into()),
            PLACEHOLDER_SECRET.into(),
        );
        let spec = |probe: &str| {
            object(json!({
                "backends": {"hosts": ["db-0:5432", "db-1:5432"]},
                "users": [
                    {"name": "app", "secretRef": {"name": "u", "key": "app"}},
                    {"name": "report", "secretRef": {"name": "u", "key": "report"}},
                ],
                "replication": {
                    "probeUser": probe,
                    "probeInterval": "250ms",
                    "maxReplicaLagBytes": 1024,
                    "whenNoReplica": "refuse",
                    "primary": "db-0:5432",
                    "zones": {"db-1:5432": "eu-west-1b"},
                },
            }))
        };
        let t = tenant_config(&spec("app"), &fake).unwrap();
        let r = &t.replication;
        assert_eq!(r.probe_user.as_deref(), Some("app"));
        assert_eq!(r.probe_interval, std::time::Duration::from_millis(250));
        assert_eq!(r.max_replica_lag_bytes, 1024);
        assert_eq!(r.when_no_replica, crate::config::WhenNoReplica::Refuse);
        assert_eq!(r.primary.as_deref(), Some("db-0:5432"));
        assert_eq!(r.zones["db-1:5432"], "eu-west-1b");
        let e = tenant_config(&spec("report"), &fake).unwrap_err();
        assert!(e.contains("probe needs a password"), "{e}");
        let e = tenant_config(&spec("nobody"), &fake).unwrap_err();
        assert!(e.contains("not one of spec.users"), "{e}");
    }

    #[test]
    fn zones_come_from_endpoint_slices_and_the_spec_wins() {
        let fake = Fake {
            endpoints: vec!["10.0.0.1:5432".into(), "10.0.0.2:5432".into()],
            zones: BTreeMap::from([
                ("10.0.0.1:5432".to_owned(), "a".to_owned()),
                ("10.0.0.2:5432".to_owned(), "b".to_owned()),
            ]),
            ..Fake::default()
        };
        let service = json!({"service": {"name": "db", "port": 5432}});
        let t = tenant_config(&object(json!({"backends": service})), &fake).unwrap();
        assert_eq!(t.replication.zones["10.0.0.1:5432"], "a");
        let t = tenant_config(
            &object(json!({
                "backends": service,
                "replication": {"zones": {"10.0.0.1:5432": "c"}},
            })),
            &fake,
        )
        .unwrap();
        assert_eq!(t.replication.zones["10.0.0.1:5432"], "c");
        assert_eq!(t.replication.zones["10.0.0.2:5432"], "b");
    }

    #[test]
    fn no_ready_endpoint_still_routes() {
        let t = tenant_config(
            &object(
                json!({"tenantId": "beta", "backends": {"service": {"name": "x", "port": 5432}}}),
            ),
            &Fake::default(),
        )
        .unwrap();
        assert_eq!(t.id, "beta");
        assert!(t.backends.is_empty());
        assert_eq!(t.auth, AuthMode::Passthrough);
    }

    #[test]
    fn md5_with_a_password_secret_is_fine() {
        let mut fake = Fake::default();
        fake.secrets
            .insert(("cell".into(), "s".into(), "k".into()), "pw".into());
        let spec = json!({
            "backends": {"hosts": ["db:5432"]},
            "auth": "md5",
            "users": [{"name": "app", "secretRef": {"name": "s", "key": "k"}}],
        });
        let t = tenant_config(&object(spec.clone()), &fake).unwrap();
        assert_eq!(t.auth, AuthMode::Md5);
        fake.secrets.insert(
            ("cell".into(), "s".into(), "k".into()),
            PLACEHOLDER_SECRET.into(),
        );
        let err = tenant_config(&object(spec), &fake).unwrap_err();
        assert!(err.contains("spec.users[0]"), "{err}");
    }

    #[test]
    fn problems_name_the_fields() {
        let err = tenant_config(
            &object(json!({
                "tenantId": "Not_A_Label",
                "backends": {"hosts": ["nope"]},
                "allowedCidrs": ["10.0.0.0/33"],
                "pool": {"acquireTimeout": "soon"},
                "backendTls": "verify-full",
            })),
            &Fake::default(),
        )
        .unwrap_err();
        for want in [
            "spec.tenantId",
            "spec.backends[0]",
            "spec.allowedCidrs[0]",
            "spec.pool.acquireTimeout",
            "spec.backendCaFile",
        ] {
            assert!(err.contains(want), "{want} missing in {err}");
        }
        let err = tenant_config(
            &object(json!({
                "backends": {},
                "users": [{"name": "app", "secretRef": {"name": "missing", "key": "k"}}],
            })),
            &Fake::default(),
        )
        .unwrap_err();
        assert!(err.contains("exactly one of service and hosts"), "{err}");
        assert!(err.contains("users[0].secretRef"), "{err}");
    }
}
