//! Every pool of the process: created on first use, replaced when a reload
//! changes what their backends depend on, paused and resumed by tenant,
//! and read for the admin console.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::state::{Pool, PoolKey, PoolSignature};
use crate::backend::server::OpenSettings;
use crate::tenant::Tenant;

/// Every pool of the process.
#[derive(Default)]
pub(crate) struct Pools {
    pools: Mutex<HashMap<PoolKey, Arc<Pool>>>,
    /// Tenants paused by the admin console; their new pools start paused.
    paused: Mutex<HashSet<String>>,
}

impl Pools {
    /// The pool for `key`, created on first use, and replaced when a reload
    /// changed what its backends depend on (the old one retires).
    pub(crate) fn get(&self, key: PoolKey, tenant: &Arc<Tenant>, open: OpenSettings) -> Arc<Pool> {
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        let stale = pools
            .get(&key)
            .filter(|pool| pool.signature != PoolSignature::of(&key, tenant))
            .cloned();
        if let Some(old) = stale {
            tracing::info!(pool = ?key, "pool settings changed: replacing the pool");
            old.retire();
            pools.remove(&key);
            let replacement = Arc::new(Pool::new(key.clone(), tenant.clone(), open));
            if let Some(login) = old.login() {
                replacement.offer_login(login);
            }
            if old.is_paused() {
                replacement.pause();
            }
            pools.insert(key.clone(), replacement);
        }
        pools
            .entry(key.clone())
            .or_insert_with(|| {
                let paused = self
                    .paused
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .contains(&key.tenant);
                let pool = Pool::new(key, tenant.clone(), open);
                if paused {
                    pool.pause();
                }
                Arc::new(pool)
            })
            .clone()
    }

    /// Retires and forgets the pools of tenants `keep` rejects (removed by
    /// a reload).
    pub(crate) fn retire_tenants_except(&self, keep: impl Fn(&str) -> bool) {
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        pools.retain(|key, pool| {
            let kept = keep(&key.tenant);
            if !kept {
                pool.retire();
            }
            kept
        });
    }

    /// Runs [`Pool::maintain`] on every pool every `every`.
    pub(crate) async fn maintenance_loop(&self, every: Duration) {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            for pool in self.all() {
                pool.maintain().await;
            }
        }
    }

    /// Pauses `tenant`'s pools, present and future. Returns how many pools
    /// it has now.
    pub(crate) fn pause(&self, tenant: &str) -> usize {
        self.paused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(tenant.to_owned());
        let pools = self.of_tenant(tenant);
        for pool in &pools {
            pool.pause();
        }
        pools.len()
    }

    /// Resumes `tenant`'s pools. Returns how many pools it has now.
    pub(crate) fn resume(&self, tenant: &str) -> usize {
        self.paused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(tenant);
        let pools = self.of_tenant(tenant);
        for pool in &pools {
            pool.resume();
        }
        pools.len()
    }

    /// Whether `tenant` is paused.
    pub(crate) fn is_paused(&self, tenant: &str) -> bool {
        self.paused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(tenant)
    }

    /// Every pool, sorted by key.
    pub(crate) fn all(&self) -> Vec<Arc<Pool>> {
        let mut all: Vec<Arc<Pool>> = self
            .pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| {
            (&a.key.tenant, &a.key.database, &a.key.user).cmp(&(
                &b.key.tenant,
                &b.key.database,
                &b.key.user,
            ))
        });
        all
    }

    fn of_tenant(&self, tenant: &str) -> Vec<Arc<Pool>> {
        self.all()
            .into_iter()
            .filter(|p| p.key.tenant == tenant)
            .collect()
    }
}
