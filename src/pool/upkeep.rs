//! Periodic upkeep: idle backends past `idle_timeout` or `max_lifetime`
//! close, and backends open ahead up to `min_idle`; the liveness check of
//! a backend that idled long.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use super::lease::Release;
use super::state::{now, Pool};
use crate::backend::server::ServerConn;
use crate::protocol::framing::read_message;

impl Pool {
    /// Whether an idle backend is past `max_lifetime` or `idle_timeout`.
    pub(super) fn expired(&self, conn: &ServerConn, now: Instant) -> bool {
        now.saturating_duration_since(conn.created) > self.settings.max_lifetime
            || now.saturating_duration_since(conn.last_used) > self.settings.idle_timeout
    }

    /// Periodic upkeep: closes idle backends past `idle_timeout` or
    /// `max_lifetime`, and opens backends up to `min_idle`.
    pub(crate) async fn maintain(&self) {
        let now = now();
        self.stock()
            .idle
            .retain(|(conn, _)| !self.expired(conn, now));
        if self.is_retired() || self.is_paused() {
            return;
        }
        // Bounded: a pool retired or short-lived backends must not turn
        // this into an open/close loop.
        let missing = self.settings.min_idle.saturating_sub(self.idle_count());
        for _ in 0..missing {
            if self.is_retired() {
                return;
            }
            let has_login = self.login().is_some();
            let profile = self
                .last_profile
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            let (true, Some(profile)) = (has_login, profile) else {
                return;
            };
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                return;
            };
            match self.open(permit, &profile, None).await {
                Ok(lease) => self.release(lease, Release::Reuse),
                Err(e) => {
                    tracing::debug!(pool = ?self.key, error = %e, "min_idle backend not opened");
                    return;
                }
            }
        }
    }
}

/// A `Sync` answered by `ReadyForQuery 'I'`: the backend is alive and idle.
pub(super) async fn ping(conn: &mut ServerConn) -> bool {
    let check = async {
        conn.stream.write_all(b"S\0\0\0\x04").await.ok()?;
        conn.stream.flush().await.ok()?;
        loop {
            let msg = read_message(&mut conn.stream, 1 << 20).await.ok()?;
            match msg.tag {
                b'Z' => return (msg.body.first() == Some(&b'I')).then_some(()),
                // Notices or parameter changes that arrived while idle.
                b'N' | b'S' | b'A' => continue,
                _ => return None,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(2), check)
        .await
        .ok()
        .flatten()
        .is_some()
}
