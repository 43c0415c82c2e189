//! The tenant model: one tenant as the data path uses it (its
//! configuration, TLS towards its backends, the secrets of its users, its
//! `auth_query` cache, its connection counters), and what pgcell knows of
//! a client before it is routed to one.

use crate::backend::topology::{Target, Topology};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rustls::ClientConfig;

use crate::config::{Config, TenantConfig};
use crate::tls::{self, TlsError};

/// One tenant as the data path uses it.
pub(crate) struct Tenant {
    /// Its configuration.
    pub config: TenantConfig,
    /// TLS towards its backends, when enabled.
    pub backend_tls: Option<Arc<ClientConfig>>,
    /// Client connections being served; survives reloads.
    pub(crate) active: Arc<AtomicUsize>,
    /// New-connection budget (`max_connection_rate`); survives reloads.
    pub(crate) arrivals: Arc<Mutex<RateBucket>>,
    /// SCRAM secrets of the users pgcell authenticates, derived once per
    /// load (PBKDF2 is too slow to run per connection).
    pub secrets: HashMap<String, crate::auth::secret::ScramSecret>,
    /// Secrets of other users, from the backend (`[tenants.auth_query]`);
    /// the cache starts empty on every load.
    pub auth_query: Option<crate::auth_query::AuthQuery>,
    /// Its servers' roles and health; survives reloads that keep them.
    pub topology: Arc<Topology>,
}

impl Tenant {
    /// The tenant id.
    pub(crate) fn id(&self) -> &str {
        &self.config.id
    }

    /// Its backends for a client that wants `target`, as
    /// [`crate::backend::connect`] reaches them.
    pub(crate) fn targets(&self, target: Target) -> crate::backend::Targets<'_> {
        crate::backend::Targets {
            topology: &self.topology,
            target,
            fresh_after: None,
            tls: self.backend_tls.as_ref(),
            server_name: self.config.backend_server_name.as_deref(),
        }
    }

    /// The tenant `t` of `config`, carrying connection counts (and the
    /// derived secrets, when its users did not change) over from its
    /// `previous` self. Password users' SCRAM salts derive from
    /// `salt_key`.
    pub(crate) fn build(
        t: &TenantConfig,
        config: &Config,
        previous: Option<&Tenant>,
        salt_key: &crate::auth::secret::SaltKey,
    ) -> Result<Tenant, TlsError> {
        let backend_tls = tls::backend_client_config(t.backend_tls, t.backend_ca.as_deref())?;
        let active = previous.map(|old| old.active.clone()).unwrap_or_default();
        let arrivals = previous.map(|old| old.arrivals.clone()).unwrap_or_default();
        let named_primary = t.replication.primary.as_deref();
        // Servers in pgcell's own zone, when both are known.
        let zone = config
            .backend
            .zone
            .clone()
            .or_else(|| std::env::var("PGCELL_ZONE").ok().filter(|z| !z.is_empty()));
        let local: Vec<String> = match &zone {
            Some(zone) => t
                .replication
                .zones
                .iter()
                .filter(|(_, z)| *z == zone)
                .map(|(server, _)| server.clone())
                .collect(),
            None => Vec::new(),
        };
        // Kept while the servers stay: pools made before a reload follow
        // the same topology, and a newly named primary or zone reaches
        // them at once.
        let topology = match previous.map(|old| &old.topology) {
            Some(old) if old.follows(&t.backends) => {
                old.reconfigure(named_primary, &local);
                old.clone()
            }
            _ => Arc::new(Topology::with_zones(&t.backends, named_primary, &local)),
        };
        // Keep the derived secrets when the users did not change: a
        // rebuild (reload, a discovered tenant changing) must not pay
        // a PBKDF2 per password user each time.
        let kept = previous
            .filter(|old| old.config.users == t.users)
            .map(|old| old.secrets.clone());
        let secrets = kept.unwrap_or_else(|| {
            t.users
                .iter()
                .map(|u| {
                    let secret = match &u.credential {
                        crate::config::Credential::ScramSecret(s) => s.clone(),
                        crate::config::Credential::Password(pw) => {
                            salt_key.password_secret(&t.id, &u.name, &pw.0)
                        }
                    };
                    (u.name.clone(), secret)
                })
                .collect()
        });
        let auth_query = t.auth_query.clone().map(|q| {
            crate::auth_query::AuthQuery::new(
                &t.id,
                q,
                crate::auth_query::FetchSettings {
                    connect_timeout: config.backend.connect_timeout,
                    login_timeout: config.backend.auth_timeout,
                    keepalive: config.listen.tcp_keepalive,
                },
            )
        });
        Ok(Tenant {
            config: t.clone(),
            backend_tls,
            active,
            arrivals,
            secrets,
            auth_query,
            topology,
        })
    }
}

/// What pgcell knows about a client before its `StartupMessage`.
#[derive(Debug, Clone)]
pub(crate) struct ClientInfo {
    /// The real client address: from the PROXY header, else the socket peer.
    pub addr: SocketAddr,
    /// VPC endpoint id from the PROXY header.
    pub vpce_id: Option<String>,
    /// Whether the client connection is TLS.
    pub tls: bool,
    /// TLS server name the client sent.
    pub sni: Option<String>,
    /// SCRAM channel-binding data of the certificate pgcell presented.
    pub tls_end_point: Option<std::sync::Arc<Vec<u8>>>,
}

/// A token bucket of new connections: refills at `rate` per second, holds at
/// most `rate` (a burst of one second's worth).
#[derive(Debug, Default)]
pub(crate) struct RateBucket {
    tokens: f64,
    last: Option<Instant>,
}

impl RateBucket {
    /// Takes one token at `now` if there is one.
    pub(crate) fn take(&mut self, rate: u32, now: Instant) -> bool {
        let capacity = f64::from(rate);
        self.tokens = match self.last {
            // A new bucket starts full.
            None => capacity,
            Some(last) => (self.tokens
                + now.saturating_duration_since(last).as_secs_f64() * capacity)
                .min(capacity),
        };
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
