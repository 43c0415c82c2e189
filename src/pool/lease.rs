//! A checked-out backend, and handing it back: to the oldest waiting
//! checkout of its profile, onto the shelf, or closed.

use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::OwnedSemaphorePermit;

use super::in_use::InUse;
use super::state::{now, Idle, Pool};
use crate::backend::server::ServerConn;

/// What becomes of a backend handed back to its pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Release {
    /// Reuse it (unless it is past `max_lifetime` or the pool retired).
    Reuse,
    /// Close it, for this reason (a label for logs).
    Close(&'static str),
}

/// A checked-out backend. Dropping it closes the backend; hand it back
/// with [`Pool::release`].
pub(crate) struct Lease {
    /// The backend.
    pub conn: Box<ServerConn>,
    /// When it was handed out (the start of the client's transaction).
    pub leased_at: Instant,
    permit: OwnedSemaphorePermit,
    _in_use: InUse,
}

impl Pool {
    /// Wraps a checked-out backend, recording who holds it.
    pub(super) fn lease(
        &self,
        conn: Box<ServerConn>,
        permit: OwnedSemaphorePermit,
        now: Instant,
    ) -> Lease {
        let in_use = InUse::record(&self.in_use, &conn);
        Lease {
            conn,
            leased_at: now,
            permit,
            _in_use: in_use,
        }
    }

    /// Hands a backend back: reused when `release` says so (the backend
    /// is idle, status `I`, nothing outstanding, nothing forbids reuse),
    /// closed otherwise.
    pub(crate) fn release(&self, lease: Lease, release: Release) {
        self.release_at(lease, release, now());
    }

    /// [`Pool::release`] with the time already read by the caller (one
    /// clock read per transaction end).
    pub(crate) fn release_at(&self, lease: Lease, release: Release, now: Instant) {
        if let Release::Close(reason) = release {
            tracing::debug!(tenant = %self.key.tenant, addr = %lease.conn.addr, reason, "backend closed at checkin");
            return;
        }
        if now.saturating_duration_since(lease.conn.created) > self.settings.max_lifetime
            || self.is_retired()
        {
            return;
        }
        let Lease {
            mut conn, permit, ..
        } = lease;
        conn.last_used = now;
        self.check_in((conn, permit));
    }

    /// Gives an idle backend to the oldest waiting checkout that can take
    /// it, else puts it on the shelf (waking the waiters of other
    /// profiles, which may close it to make room).
    pub(super) fn check_in(&self, mut idle: Idle) {
        if self.is_retired() {
            return;
        }
        let mut stock = self.stock();
        if !self.is_paused() {
            while let Some(at) = stock
                .waiters
                .iter()
                .position(|w| w.wants(&idle.0, |conn, after| self.fresh(conn, after)))
            {
                let Some(waiter) = stock.waiters.remove(at) else {
                    break;
                };
                match waiter.hand(idle) {
                    Ok(()) => return,
                    // It gave up (its client left) before it was
                    // removed: the next one.
                    Err(back) => idle = back,
                }
            }
        }
        stock.idle.push(idle);
        let anyone_waits = !stock.waiters.is_empty();
        drop(stock);
        if anyone_waits {
            self.returned.notify_waiters();
        }
    }

    /// After `RESUME`: the backends shelved while paused go to the
    /// oldest waiters that want them, before any newcomer.
    pub(super) fn serve_line_from_shelf(&self) {
        let mut stock = self.stock();
        let mut i = stock.idle.len();
        while i > 0 {
            i -= 1;
            let Some(at) = stock
                .waiters
                .iter()
                .position(|w| w.wants(&stock.idle[i].0, |conn, after| self.fresh(conn, after)))
            else {
                continue;
            };
            let idle = stock.idle.remove(i);
            if let Some(waiter) = stock.waiters.remove(at) {
                if let Err(back) = waiter.hand(idle) {
                    stock.idle.push(back);
                }
            }
        }
    }

    /// Closes the idle backends and makes the rest close as they come
    /// free: a reload replaced this pool or removed its tenant.
    pub(crate) fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.stock().idle.clear();
        self.returned.notify_waiters();
    }
}
