//! A pool's figures and backends at one moment, for the admin console
//! (`SHOW POOLS`, `SHOW SERVERS`).

use std::net::SocketAddr;
use std::sync::PoisonError;
use std::time::Instant;

use super::state::{Pool, PoolKey};
use crate::config::PoolMode;

/// One backend of a pool, idle or in use.
#[derive(Debug, Clone)]
pub(crate) struct ServerInfo {
    /// The backend's address.
    pub addr: SocketAddr,
    /// The backend's process id.
    pub pid: i32,
    /// When the connection was opened.
    pub created: Instant,
    /// Checked out (else idle in the pool).
    pub in_use: bool,
    /// The client holding it, by registry id.
    pub client: Option<u64>,
}

/// A pool's figures at one moment.
#[derive(Debug, Clone)]
pub(crate) struct PoolSnapshot {
    /// Which pool.
    pub key: PoolKey,
    /// Session or transaction.
    pub mode: PoolMode,
    /// Most backends it opens.
    pub size: usize,
    /// Backends open (or opening).
    pub open: usize,
    /// Backends idle in the pool.
    pub idle: usize,
    /// Backends checked out.
    pub in_use: usize,
    /// Checkouts waiting.
    pub waiting: usize,
    /// Paused by the admin console.
    pub paused: bool,
}

impl Pool {
    /// The pool's figures now.
    pub(crate) fn snapshot(&self) -> PoolSnapshot {
        PoolSnapshot {
            key: self.key.clone(),
            mode: self.mode,
            size: self.size,
            open: self.open_count(),
            idle: self.idle_count(),
            in_use: self
                .in_use
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len(),
            waiting: self.waiting.load(std::sync::atomic::Ordering::Relaxed),
            paused: self.is_paused(),
        }
    }

    /// The pool's backends, idle and in use.
    pub(crate) fn servers(&self) -> Vec<ServerInfo> {
        let mut out: Vec<ServerInfo> = self
            .stock()
            .idle
            .iter()
            .map(|(conn, _)| ServerInfo {
                addr: conn.addr,
                pid: conn.key.pid,
                created: conn.created,
                in_use: false,
                client: None,
            })
            .collect();
        out.extend(
            self.in_use
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .values()
                .map(|s| ServerInfo {
                    addr: s.addr,
                    pid: s.pid,
                    created: s.created,
                    in_use: true,
                    client: s.client,
                }),
        );
        out
    }

    /// Backends open (idle and checked out).
    pub(crate) fn open_count(&self) -> usize {
        self.size - self.slots.available_permits()
    }

    /// Idle backends.
    pub(crate) fn idle_count(&self) -> usize {
        self.stock().idle.len()
    }
}
