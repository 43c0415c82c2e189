//! How a pool opens backends. [`ServerConnector`] logs in to the tenant's
//! servers (the pool's target: its primary or a replica); the unit tests
//! use a connector of their own.

use std::sync::Arc;
use std::time::Instant;

use super::lease::Lease;
use super::state::{now, AcquireError, Connector, Opening, Pool, PoolKey, PoolSignature};
use crate::backend::server::{BackendLogin, OpenSettings, ServerConn, StartupProfile};
use crate::config::PoolMode;
use crate::tenant::Tenant;

/// Opens backends on the tenant's servers.
pub(super) struct ServerConnector {
    /// Connect and login timeouts, keepalive.
    pub(super) open: OpenSettings,
    /// The pool's mode: transaction-mode backends learn their
    /// `search_path` first.
    pub(super) mode: PoolMode,
}

/// Read on every new transaction-mode backend.
const SEARCH_PATH: &str = "SELECT 'search_path', pg_catalog.current_setting('search_path')";

impl Connector for ServerConnector {
    fn open<'a>(
        &'a self,
        pool: &'a Pool,
        login: &'a BackendLogin,
        profile: &'a Arc<StartupProfile>,
        fresh_after: Option<Instant>,
    ) -> Opening<'a> {
        Box::pin(async move {
            let mut conn = ServerConn::open(
                crate::backend::Targets {
                    fresh_after,
                    ..pool.tenant.targets(pool.key.target)
                },
                &pool.key.database,
                &pool.key.user,
                login,
                profile,
                &self.open,
            )
            .await?;
            if self.mode == PoolMode::Transaction {
                // What the role's or database's defaults make of
                // search_path is seen only by asking (PostgreSQL 15 does
                // not report it).
                let rows = conn.run_own(SEARCH_PATH).await?;
                conn.searches_pg_temp = rows
                    .iter()
                    .any(|(_, path)| path.to_ascii_lowercase().contains("pg_temp"));
            }
            Ok(conn)
        })
    }
}

impl Pool {
    /// A new, empty pool for `key`, as `tenant`'s configuration says,
    /// opening backends on the tenant's servers.
    pub(crate) fn new(key: PoolKey, tenant: Arc<Tenant>, open: OpenSettings) -> Pool {
        let signature = PoolSignature::of(&key, &tenant);
        let connector = Arc::new(ServerConnector {
            open,
            mode: signature.mode,
        });
        Pool::with_connector(key, tenant, connector)
    }

    /// Opens a backend with `permit` (a free place in the pool) and
    /// checks it out. On failure the permit goes back and the waiters try
    /// for themselves (and fail fast if the server is down) rather than
    /// wait out their timeout.
    pub(super) async fn open(
        &self,
        permit: tokio::sync::OwnedSemaphorePermit,
        profile: &Arc<StartupProfile>,
        fresh_after: Option<Instant>,
    ) -> Result<Lease, AcquireError> {
        let Some(login) = self.login() else {
            return Err(AcquireError::NoLogin);
        };
        match self
            .connector
            .open(self, &login, profile, fresh_after)
            .await
        {
            Ok(mut conn) => {
                conn.prepared
                    .set_limit(self.settings.max_prepared_statements);
                self.remember_params(profile, &conn.params);
                Ok(self.lease(Box::new(conn), permit, now()))
            }
            Err(e) => {
                metrics::counter!(crate::metrics::BACKEND_CONNECT_ERRORS, "tenant" => self.key.tenant.clone())
                    .increment(1);
                drop(permit);
                self.returned.notify_waiters();
                Err(e.into())
            }
        }
    }
}
