//! Checking out a backend, and waiting for one: an idle backend when one
//! is fit, else a new one when a place is free (or can be made by closing
//! an idle backend of another profile), else a place in line until one
//! of those comes, bounded by `acquire_timeout`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, OwnedSemaphorePermit};

use super::lease::Lease;
use super::state::{now, AcquireError, Idle, Pool, Waiter};
use super::upkeep::ping;
use crate::backend::server::{OpenError, ServerConn, StartupProfile};
use crate::backend::topology::NoServer;
use crate::backend::ConnectError;
use crate::clients::{ClientEntry, ClientState};
use crate::metrics::tally::{Histogram, Tally};
use crate::protocol::SqlState;

/// Pause between attempts to open a backend while a failover may be under
/// way.
pub(super) const FAILOVER_RETRY: Duration = Duration::from_millis(100);

/// Waiters' ids, unique in the process.
static NEXT_WAITER: AtomicU64 = AtomicU64::new(1);

/// A checkout's place in line; leaving it (drop) takes the checkout out
/// of the line, and hands on a backend given to it too late.
struct Ticket<'a> {
    pool: &'a Pool,
    id: u64,
    handed: oneshot::Receiver<Idle>,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut stock = self.pool.stock();
        if let Some(at) = stock.waiters.iter().position(|w| w.id == self.id) {
            stock.waiters.remove(at);
        }
        drop(stock);
        // Backends are handed under the lock: none can arrive after this.
        self.handed.close();
        if let Ok(idle) = self.handed.try_recv() {
            self.pool.check_in(idle);
        }
    }
}

/// Counts a checkout as waiting and marks its client so, until dropped
/// (so that a cancelled checkout is not left counted).
struct Waiting<'a> {
    count: &'a AtomicUsize,
    client: Option<Arc<ClientEntry>>,
}

impl<'a> Waiting<'a> {
    fn start(count: &'a AtomicUsize) -> Waiting<'a> {
        count.fetch_add(1, Ordering::Relaxed);
        let client = crate::clients::current();
        if let Some(c) = &client {
            c.set_state(ClientState::Waiting);
        }
        Waiting { count, client }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
        if let Some(c) = &self.client {
            if c.state() == ClientState::Waiting {
                c.set_state(ClientState::Idle);
            }
        }
    }
}

impl Pool {
    /// Checks out a backend, waiting up to `acquire_timeout`. Cancel safe:
    /// dropping the future loses nothing.
    /// The wait goes into `tally` (`pgcell_pool_wait_seconds`).
    /// With `fresh_after`, only backends on servers that have replayed
    /// what was committed before it ([`crate::backend::Topology::fresh_since`]).
    pub(crate) async fn acquire(
        &self,
        profile: &Arc<StartupProfile>,
        tally: &Tally,
        fresh_after: Option<Instant>,
    ) -> Result<Lease, AcquireError> {
        // Decremented on drop: a checkout abandoned mid-wait (the client
        // left) must not leave the gauge up.
        struct Counted<'a>(&'a metrics::Gauge);
        impl Drop for Counted<'_> {
            fn drop(&mut self) {
                self.0.decrement(1.0);
            }
        }
        self.waiting_clients.increment(1.0);
        let _counted = Counted(&self.waiting_clients);
        let started = now();
        let result = self.checkout(profile, fresh_after).await;
        tally.observe(Histogram::PoolWaitSeconds, now().duration_since(started));
        result
    }

    /// An idle backend that needs no liveness check, at once, or `None`
    /// (none idle, a check due, or the pool paused): then [`Pool::acquire`]
    /// waits. Backends past their lifetime or that spoke while idle are
    /// dropped on the way.
    /// A lease taken counts as a wait of zero in `tally`.
    pub(crate) fn try_acquire_idle(
        &self,
        profile: &Arc<StartupProfile>,
        tally: &Tally,
        fresh_after: Option<Instant>,
    ) -> Option<Lease> {
        if self.is_paused() {
            return None;
        }
        let now = now();
        loop {
            let (conn, permit) = {
                let mut stock = self.stock();
                let at = stock
                    .idle
                    .iter()
                    .rposition(|(c, _)| self.serves(c, profile, fresh_after))?;
                let (conn, _) = &stock.idle[at];
                if now.duration_since(conn.last_used) > self.settings.check_after_idle {
                    // Due for a ping: the waiting path does it.
                    return None;
                }
                stock.idle.remove(at)
            };
            if self.expired(&conn, now) || conn.spoke_while_idle() || !self.still_fits(&conn) {
                continue;
            }
            tally.observe(Histogram::PoolWaitSeconds, Duration::ZERO);
            return Some(self.lease(conn, permit, now));
        }
    }

    /// Whether an idle backend's server is still what this pool's clients
    /// want: a pool of the primary drops backends of a server now known to
    /// be a replica (a failover), a pool of replicas those of a server
    /// promoted or excluded (lagging), unless the primary is its fallback
    /// and no replica is fit.
    pub(crate) fn still_fits(&self, conn: &ServerConn) -> bool {
        self.tenant
            .topology
            .still_fits(conn.server, self.key.target)
    }

    /// Whether an idle backend may serve a client that wants what was
    /// committed before `fresh_after` (read-your-writes).
    pub(super) fn fresh(&self, conn: &ServerConn, fresh_after: Option<Instant>) -> bool {
        fresh_after.is_none_or(|t| self.tenant.topology.fresh_since(conn.server, t))
    }

    /// Whether an idle backend can serve a checkout of `profile` that
    /// wants what was committed before `fresh_after`.
    fn serves(
        &self,
        conn: &ServerConn,
        profile: &Arc<StartupProfile>,
        fresh_after: Option<Instant>,
    ) -> bool {
        StartupProfile::same(&conn.profile, profile) && self.fresh(conn, fresh_after)
    }

    /// Whether opening failed in a way a failover explains (no server is
    /// the primary yet, or the servers tried are down while others may
    /// take over): worth trying again until `acquire_timeout`. A server
    /// that went away during the login (the connection closed, the login
    /// timed out, or a shutdown ended it with `57P01`/`57P02`) counts as
    /// down: a primary stopped for a failover does that to the logins in
    /// flight.
    fn may_be_failing_over(&self, error: &AcquireError) -> bool {
        let several = self.tenant.topology.servers().len() > 1;
        match error {
            AcquireError::Open(OpenError::Connect(ConnectError::NoServer(
                NoServer::NoPrimary(_),
            ))) => true,
            AcquireError::Open(
                OpenError::Connect(ConnectError::Unreachable { .. })
                | OpenError::Io(_)
                | OpenError::Timeout,
            ) => several,
            AcquireError::Open(OpenError::Refused { code, .. })
                if *code == SqlState::ADMIN_SHUTDOWN || *code == SqlState::CRASH_SHUTDOWN =>
            {
                several
            }
            _ => false,
        }
    }

    async fn checkout(
        &self,
        profile: &Arc<StartupProfile>,
        fresh_after: Option<Instant>,
    ) -> Result<Lease, AcquireError> {
        let deadline = tokio::time::Instant::now() + self.settings.acquire_timeout;
        let timed_out = || AcquireError::Timeout(self.settings.acquire_timeout);
        let _waiting = Waiting::start(&self.waiting);
        let mut ticket: Option<Ticket<'_>> = None;
        loop {
            if self.is_paused() {
                // Register for the wake-up before looking again, so a
                // RESUME in between is not missed.
                let resumed = self.resumed.notified();
                tokio::pin!(resumed);
                resumed.as_mut().enable();
                if self.is_paused() {
                    tokio::select! {
                        () = resumed => {}
                        () = tokio::time::sleep_until(deadline) => return Err(timed_out()),
                    }
                }
                continue;
            }
            // Registered before looking, so a backend put on the shelf
            // after the look still wakes this checkout.
            let returned = self.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if let Some(lease) = self.take_idle(profile, fresh_after).await {
                return Ok(lease);
            }
            let permit = match self.slots.clone().try_acquire_owned() {
                Ok(permit) => permit,
                // The pool is full, but an idle backend of another profile
                // can make room: it is closed and one of this profile
                // opened in its place.
                Err(_) => match self.evict_other(profile, fresh_after) {
                    Some(permit) => permit,
                    None => {
                        let Some(place) = ticket.as_mut() else {
                            // Into line, then one more look: a backend
                            // handed back in between went onto the shelf.
                            ticket = Some(self.join_line(profile, fresh_after));
                            continue;
                        };
                        tokio::select! {
                            handed = &mut place.handed => {
                                ticket = None;
                                let Ok((conn, permit)) = handed else { continue };
                                if conn.spoke_while_idle() || !self.still_fits(&conn) {
                                    continue;
                                }
                                return Ok(self.lease(conn, permit, now()));
                            }
                            permit = self.slots.clone().acquire_owned() => match permit {
                                Ok(p) => p,
                                // The semaphore is never closed.
                                Err(_) => continue,
                            },
                            () = returned => continue,
                            () = tokio::time::sleep_until(deadline) => return Err(timed_out()),
                        }
                    }
                },
            };
            // Out of line before opening: a backend handed back meanwhile
            // goes to the next waiter, not into this one's hand.
            ticket = None;
            if self.is_paused() {
                continue;
            }
            match self.open(permit, profile, fresh_after).await {
                Err(e)
                    if self.may_be_failing_over(&e)
                        && tokio::time::Instant::now() + FAILOVER_RETRY < deadline =>
                {
                    // Held, not failed: the new primary is found by the
                    // next attempt once it has been promoted.
                    tracing::debug!(tenant = %self.key.tenant, error = %e, "no server fits yet; trying again");
                    tokio::time::sleep(FAILOVER_RETRY).await;
                }
                result => return result,
            }
        }
    }

    /// Puts a checkout at the end of the line.
    fn join_line(&self, profile: &Arc<StartupProfile>, fresh_after: Option<Instant>) -> Ticket<'_> {
        let (hand, handed) = oneshot::channel();
        let id = NEXT_WAITER.fetch_add(1, Ordering::Relaxed);
        self.stock().waiters.push_back(Waiter {
            id,
            profile: profile.clone(),
            fresh_after,
            hand,
        });
        Ticket {
            pool: self,
            id,
            handed,
        }
    }

    /// Closes an idle backend of another profile than `profile` and
    /// returns its permit, if there is one.
    fn evict_other(
        &self,
        profile: &Arc<StartupProfile>,
        fresh_after: Option<Instant>,
    ) -> Option<OwnedSemaphorePermit> {
        let mut stock = self.stock();
        // The least recently used first (the front of the list).
        let at = stock
            .idle
            .iter()
            .position(|(c, _)| !self.serves(c, profile, fresh_after))?;
        let (_conn, permit) = stock.idle.remove(at);
        Some(permit)
    }

    /// An idle backend of `profile` fit to serve, checked with a ping if
    /// it idled past `check_after_idle`; unfit ones are closed on the way.
    async fn take_idle(
        &self,
        profile: &Arc<StartupProfile>,
        fresh_after: Option<Instant>,
    ) -> Option<Lease> {
        loop {
            let (mut conn, permit) = {
                let mut stock = self.stock();
                let at = stock
                    .idle
                    .iter()
                    .rposition(|(c, _)| self.serves(c, profile, fresh_after))?;
                stock.idle.remove(at)
            };
            let now = now();
            if self.expired(&conn, now) {
                continue;
            }
            // A backend restarted or terminated while idle has said so
            // (57P01) or closed: drop it here, not in a client's face.
            if conn.spoke_while_idle() {
                tracing::debug!(tenant = %self.key.tenant, addr = %conn.addr, "idle backend spoke or closed; dropped");
                continue;
            }
            if !self.still_fits(&conn) {
                tracing::debug!(tenant = %self.key.tenant, addr = %conn.addr, "idle backend's server changed role; dropped");
                continue;
            }
            if now.duration_since(conn.last_used) > self.settings.check_after_idle
                && !ping(&mut conn).await
            {
                continue;
            }
            return Some(self.lease(conn, permit, now));
        }
    }
}
