//! Where the client's next transaction runs: its own pool, or the
//! tenant's replicas for a read-only transaction (read-only routing); a
//! held backend whose server no longer fits; the tenant's current pool
//! after a reload.

use std::sync::Arc;

use super::run::pipeline_texts;
use super::session::Session;
use crate::pool::Release;
use crate::protocol::framing::Message;
use crate::session::error::SessionError;
use crate::sql::Dialect;

impl Session<'_> {
    /// Session mode: between transactions, whether the backend the client
    /// holds is still on a server that fits it. A split brain, a primary
    /// named by the operator, or a failover the held backend survived
    /// (its server demoted) ends the session with `57P01`: its writes
    /// would go to a server the tenant no longer writes to.
    pub(super) fn held_server_fits(&mut self) -> Result<(), SessionError> {
        let Some(lease) = &self.lease else {
            return Ok(());
        };
        let changes = self.pool.topology().changes();
        let position = self.checkout.position();
        if changes == self.topology_seen || !position.quiet() || position.status() != b'I' {
            return Ok(());
        }
        self.topology_seen = changes;
        if self
            .pool
            .topology()
            .session_fits(lease.conn.server, self.pool.key.target)
        {
            return Ok(());
        }
        Err(SessionError::ServerNoLongerFits)
    }

    /// Picks the pool for the transaction `msg` begins: the client's own,
    /// or (read-only transaction routing) the tenant's replica pool for a
    /// transaction that is read only — `BEGIN READ ONLY` / `START
    /// TRANSACTION READ ONLY`, or any transaction of a session whose
    /// `default_transaction_read_only` is on — once a replica has replayed
    /// past the client's last transaction on the primary. Returns the
    /// moment replicas must have replayed past.
    pub(super) fn choose_pool(
        &mut self,
        msg: &Message,
        following: &[u8],
    ) -> Option<std::time::Instant> {
        if !self.route_read_only {
            return None;
        }
        self.pool = self.home.clone();
        // Everything up to the next ReadyForQuery must be one read-only
        // transaction: a Query's statements, or the Parses of a pipeline
        // up to its Sync, which must already be here to be read.
        let texts = pipeline_texts(msg, following)?;
        if self.default_serializable() {
            return None;
        }
        if !crate::sql::one_read_only_transaction(
            &texts,
            Dialect::default(),
            self.default_read_only(),
        ) {
            return None;
        }
        let topology = self.home.topology();
        if let Some(since) = self.last_write {
            if !topology.any_fresh_replica(since) {
                return None;
            }
        }
        let key = crate::pool::PoolKey {
            target: crate::backend::Target::Replica { fallback: true },
            ..self.home.key.clone()
        };
        let tenant = self.shared.routes.load().tenant(&key.tenant)?;
        let replicas = self.shared.pools.get(key, &tenant, self.open);
        replicas.replace_login(self.login.clone());
        self.pool = replicas;
        self.last_write
    }

    /// The client's sessions default to read-only transactions: its own
    /// `SET default_transaction_read_only` / `SET SESSION CHARACTERISTICS`
    /// (read back), else its startup parameters.
    fn default_read_only(&self) -> bool {
        self.effective_setting("default_transaction_read_only")
            .and_then(|v| crate::protocol::startup::parse_bool(&v))
            .unwrap_or(false)
    }

    /// Whether the client's transactions default to serializable, which
    /// a hot standby cannot run.
    fn default_serializable(&self) -> bool {
        self.effective_setting("default_transaction_isolation")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("serializable"))
    }

    /// A setting's value in the client's session: as read back after the
    /// client changed it, else from its startup parameters as PostgreSQL
    /// applies them (`options` first, then the other parameters; the last
    /// value wins). None: the server's default.
    fn effective_setting(&self, name: &str) -> Option<String> {
        if let Some(value) = self.session.setting(name) {
            return Some(String::from_utf8_lossy(value).into_owned());
        }
        let params = &self.profile.params;
        let from_options = params
            .iter()
            .filter(|(n, _)| n == "options")
            .flat_map(|(_, value)| crate::protocol::startup::option_settings(value))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
            .next_back();
        let from_params = params
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.clone())
            .next_back();
        from_params.or(from_options)
    }

    /// After a reload: moves to the tenant's current pool (its settings may
    /// have changed) or, when the tenant is gone, ends the session with
    /// `57P01`. Only called between transactions.
    pub(super) fn follow_reload(&mut self) -> Result<(), SessionError> {
        let generation = self.shared.reloads();
        if generation == self.seen_reload {
            return Ok(());
        }
        self.seen_reload = generation;
        let tenant = self.shared.routes.load().tenant(&self.home.key.tenant);
        let Some(tenant) = tenant else {
            if let Some(lease) = self.lease.take() {
                self.cancel_key.detach();
                self.pool.release(lease, Release::Close("tenant_removed"));
            }
            // Told by the caller's report (57P01).
            return Err(SessionError::TenantRemoved);
        };
        if self.lease.is_none() {
            let pool = self
                .shared
                .pools
                .get(self.home.key.clone(), &tenant, self.open);
            self.route_read_only =
                self.route_read_only && tenant.config.replication.read_only_transactions;
            if !Arc::ptr_eq(&pool, &self.home) {
                pool.replace_login(self.login.clone());
                self.profile = pool.share_profile(self.profile.params.clone());
                self.home = pool.clone();
                self.pool = pool;
            }
        }
        Ok(())
    }
}
