//! What pgcell knows of a tenant's servers: which is the primary, which
//! are replicas, how far each replica lags, which are excluded and why
//! (docs/replicas.md). Learnt from the servers themselves: the
//! `in_hot_standby` every login reports (PostgreSQL 14+), and the probe
//! (`backend::probe`). [`Topology::candidates`] turns it into the order in
//! which a new backend connection tries the servers.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// What a client's backend must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) enum Target {
    /// The primary (the default: writes go there).
    #[default]
    Primary,
    /// A replica; with `fallback`, the primary when no replica is fit.
    Replica {
        /// The primary serves when no replica is fit.
        fallback: bool,
    },
}

impl Target {
    /// Whether a server reporting `role` may serve this target; `fallback`:
    /// it was chosen as the fallback (the primary for a replica client).
    /// A server in recovery never serves a read-write client.
    pub(crate) fn fits(self, role: Role, fallback: bool) -> bool {
        match self {
            Target::Primary => role != Role::Replica,
            Target::Replica { .. } => role != Role::Primary || fallback,
        }
    }
}

/// A server's role, as last seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Role {
    /// Not seen yet (or it never answered).
    #[default]
    Unknown,
    /// Not in recovery.
    Primary,
    /// In recovery (a hot standby).
    Replica,
}

impl Role {
    /// The role an `in_hot_standby` value reports.
    pub(crate) fn from_in_hot_standby(value: &str) -> Role {
        match value {
            "on" => Role::Replica,
            "off" => Role::Primary,
            _ => Role::Unknown,
        }
    }

    /// A label for metrics and the console.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Role::Unknown => "unknown",
            Role::Primary => "primary",
            Role::Replica => "replica",
        }
    }
}

/// What the last probe of a server found.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ServerState {
    /// Its role.
    pub role: Role,
    /// Bytes of WAL the primary has that it has not replayed.
    pub lag_bytes: Option<u64>,
    /// Seconds since the last transaction it replayed (0 when it has
    /// replayed all the primary has).
    pub lag_seconds: Option<f64>,
    /// WAL position it has replayed (a replica), in bytes.
    pub replay_lsn: Option<u64>,
    /// Why it gets no new clients, when it does not.
    pub excluded: Option<String>,
    /// When it was last probed.
    pub probed_at: Option<Instant>,
    /// It streams another timeline than the primary writes: its data is
    /// another history, not just older (sessions held on it end).
    pub other_timeline: bool,
}

/// One server of a tenant.
#[derive(Debug)]
pub(crate) struct Server {
    /// `host:port` as configured.
    pub addr: String,
    /// Whether it is in pgcell's own zone (no zones configured: all are).
    local: AtomicBool,
    state: Mutex<ServerState>,
    /// Backend connections open to it.
    open: Arc<AtomicUsize>,
}

/// One backend connection counted against its server while it lives.
#[derive(Debug)]
pub(crate) struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why no server can be tried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NoServer {
    /// Two servers say they are primary and the operator named none.
    #[error("two servers report they are the primary ({0}); writes are refused until one is named or demoted")]
    SplitBrain(String),
    /// Every server that answered is in recovery: no primary now (a
    /// failover under way).
    #[error("no server is the primary now (last tried: {0})")]
    NoPrimary(String),
    /// No replica is fit and the tenant refuses the primary instead.
    #[error("no replica is fit to serve ({0})")]
    NoReplica(String),
}

impl NoServer {
    /// What the client is told: no addresses (the operator's log and
    /// `SHOW REPLICATION` have them).
    pub(crate) fn client_message(&self) -> &'static str {
        match self {
            NoServer::SplitBrain(_) => {
                "two servers report they are the primary; writes are refused until one is named or demoted"
            }
            NoServer::NoPrimary(_) => "no server is the primary now (a failover may be under way)",
            NoServer::NoReplica(_) => "no replica is fit to serve this connection",
        }
    }
}

/// The servers of one tenant.
#[derive(Debug)]
pub(crate) struct Topology {
    servers: Vec<Server>,
    /// The primary the operator named (`[tenants.replication] primary`),
    /// or `NONE`.
    named_primary: AtomicUsize,
    /// The last probe round found two primaries.
    split_brain: AtomicBool,
    /// Mixes the power-of-two choices.
    picks: AtomicUsize,
    /// Recent probe rounds: when each began and the primary's WAL position
    /// it read (for read-your-writes: [`Topology::fresh_since`]).
    rounds: Mutex<std::collections::VecDeque<(Instant, u64)>>,
    /// Counts changes of roles, exclusions, the split brain and the named
    /// primary: a session holding a backend re-checks it only when this
    /// moved ([`Topology::changes`]).
    changes: AtomicU64,
    /// Woken at each change ([`Topology::changed_since`]).
    notify: tokio::sync::Notify,
}

/// No server named.
const NONE: usize = usize::MAX;

/// Probe rounds remembered for read-your-writes.
const ROUNDS: usize = 64;

impl Topology {
    /// A topology of `servers` (`host:port`), nothing known yet.
    #[cfg(test)]
    pub(crate) fn new(servers: &[String], named_primary: Option<&str>) -> Topology {
        Topology::with_zones(servers, named_primary, &[])
    }

    /// [`Topology::new`], with the servers of `local` (in pgcell's own
    /// zone) preferred for replica clients; empty: no preference.
    pub(crate) fn with_zones(
        servers: &[String],
        named_primary: Option<&str>,
        local: &[String],
    ) -> Topology {
        Topology {
            servers: servers
                .iter()
                .map(|addr| Server {
                    local: AtomicBool::new(local.is_empty() || local.contains(addr)),
                    addr: addr.clone(),
                    state: Mutex::new(ServerState::default()),
                    open: Arc::new(AtomicUsize::new(0)),
                })
                .collect(),
            named_primary: AtomicUsize::new(
                named_primary
                    .and_then(|n| servers.iter().position(|s| s == n))
                    .unwrap_or(NONE),
            ),
            split_brain: AtomicBool::new(false),
            picks: AtomicUsize::new(0),
            rounds: Mutex::new(std::collections::VecDeque::new()),
            changes: AtomicU64::new(0),
            notify: tokio::sync::Notify::new(),
        }
    }

    /// Whether a probe round has reported (roles are known, as far as the
    /// servers answered).
    pub(crate) fn probed_once(&self) -> bool {
        (0..self.servers.len()).any(|i| self.lock(i).probed_at.is_some())
    }

    /// How many times what decides which server fits changed.
    pub(crate) fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    fn changed(&self) {
        self.changes.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_waiters();
    }

    /// Whether this topology follows exactly `servers` (a reload that keeps
    /// them keeps what is known, and calls [`Topology::reconfigure`]).
    pub(crate) fn follows(&self, servers: &[String]) -> bool {
        self.servers.len() == servers.len()
            && self.servers.iter().zip(servers).all(|(s, a)| &s.addr == a)
    }

    /// A reload named another primary or other zones: applied in place, so
    /// that every pool following this topology sees it.
    pub(crate) fn reconfigure(&self, named_primary: Option<&str>, local: &[String]) {
        let named = named_primary
            .and_then(|n| self.servers.iter().position(|s| s.addr == n))
            .unwrap_or(NONE);
        if self.named_primary.swap(named, Ordering::AcqRel) != named {
            self.changed();
        }
        for server in &self.servers {
            server.local.store(
                local.is_empty() || local.contains(&server.addr),
                Ordering::Release,
            );
        }
    }

    /// The server the operator named the primary, if any.
    pub(crate) fn named_primary(&self) -> Option<usize> {
        Some(self.named_primary.load(Ordering::Acquire)).filter(|&i| i != NONE)
    }

    /// The servers.
    pub(crate) fn servers(&self) -> &[Server] {
        &self.servers
    }

    /// What is known of server `i`.
    pub(crate) fn state(&self, i: usize) -> ServerState {
        self.lock(i).clone()
    }

    /// Backend connections open to server `i`.
    pub(crate) fn open_count(&self, i: usize) -> usize {
        self.servers[i].open.load(Ordering::Acquire)
    }

    /// Counts a backend connection to server `i` until the guard drops.
    pub(crate) fn count_open(&self, i: usize) -> OpenGuard {
        self.servers[i].open.fetch_add(1, Ordering::AcqRel);
        OpenGuard(self.servers[i].open.clone())
    }

    fn lock(&self, i: usize) -> std::sync::MutexGuard<'_, ServerState> {
        self.servers[i]
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A login to server `i` reported its role (`in_hot_standby`).
    /// A primary that now reports recovery means a failover: every
    /// other server taken for a replica may be the new primary, so their
    /// roles become unknown until a login or the probe sees them (a
    /// client that cannot try several servers, passthrough, then tries
    /// those before the demoted one).
    pub(crate) fn saw_role(&self, i: usize, role: Role) {
        let demoted = {
            let mut state = self.lock(i);
            if state.role != role {
                tracing::info!(server = %self.servers[i].addr, role = role.label(), "server role changed");
            }
            let demoted = state.role == Role::Primary && role == Role::Replica;
            if state.role != role {
                self.changed();
            }
            state.role = role;
            demoted
        };
        if demoted {
            for j in (0..self.servers.len()).filter(|&j| j != i) {
                let mut other = self.lock(j);
                if other.role == Role::Replica {
                    other.role = Role::Unknown;
                }
            }
        }
    }

    /// Records a probe round's findings (one entry per server) and
    /// whether it found two primaries.
    pub(crate) fn probed(&self, states: Vec<ServerState>) {
        let primaries: Vec<&str> = states
            .iter()
            .zip(&self.servers)
            .filter(|(s, _)| s.role == Role::Primary)
            .map(|(_, server)| server.addr.as_str())
            .collect();
        let split = primaries.len() > 1 && self.named_primary().is_none();
        if split && !self.split_brain.load(Ordering::Acquire) {
            tracing::error!(servers = ?primaries, "split brain: two servers report they are the primary; writes refused");
        }
        let mut changed = self.split_brain.swap(split, Ordering::AcqRel) != split;
        for (i, state) in states.into_iter().enumerate().take(self.servers.len()) {
            let mut held = self.lock(i);
            if held.role != state.role && state.role != Role::Unknown {
                tracing::info!(server = %self.servers[i].addr, role = state.role.label(), "server role changed");
            }
            changed |=
                held.role != state.role || held.excluded.is_some() != state.excluded.is_some();
            *held = state;
        }
        if changed {
            self.changed();
        }
    }

    /// A probe round that began at `start` read the primary's WAL position
    /// `lsn`.
    pub(crate) fn record_round(&self, start: Instant, lsn: u64) {
        let mut rounds = self.rounds.lock().unwrap_or_else(PoisonError::into_inner);
        if rounds.len() >= ROUNDS {
            rounds.pop_front();
        }
        rounds.push_back((start, lsn));
    }

    /// Whether server `i` has what a client committed on the primary before
    /// `since`: it is the primary, or a replica that has replayed past the
    /// primary's position read by the first probe round that began after
    /// `since` (that position is at or past the client's commit). False
    /// until such a round has run.
    pub(crate) fn fresh_since(&self, i: usize, since: Instant) -> bool {
        let state = self.state(i);
        match state.role {
            Role::Primary => true,
            Role::Unknown => false,
            Role::Replica => {
                let rounds = self.rounds.lock().unwrap_or_else(PoisonError::into_inner);
                let after = rounds.iter().find(|(start, _)| *start > since).map(|r| r.1);
                matches!((after, state.replay_lsn), (Some(p), Some(r)) if r >= p)
            }
        }
    }

    /// Whether some replica fit to serve is [`Topology::fresh_since`].
    pub(crate) fn any_fresh_replica(&self, since: Instant) -> bool {
        (0..self.servers.len()).any(|i| {
            let state = self.state(i);
            state.role == Role::Replica && state.excluded.is_none() && self.fresh_since(i, since)
        })
    }

    /// Whether a backend on server `i` may go on serving clients that want
    /// `target`: for the primary, the server the operator named, else one
    /// not in recovery while no split brain is seen; for replicas, a
    /// replica not excluded, or the primary (the fallback) while no replica
    /// is fit.
    pub(crate) fn still_fits(&self, i: usize, target: Target) -> bool {
        if i >= self.servers.len() {
            return false;
        }
        let state = self.state(i);
        match target {
            Target::Primary => match self.named_primary() {
                Some(named) => i == named,
                None => state.role != Role::Replica && !self.split_brain(),
            },
            // A replica promoted under its pool is left as soon as another
            // is fit.
            Target::Replica { fallback } => match state.role {
                Role::Primary => fallback && !self.any_fit_replica(),
                _ => state.excluded.is_none(),
            },
        }
    }

    /// Whether a session holding server `i` for `target` may go on there:
    /// a writer while the server is its primary ([`Topology::still_fits`]);
    /// a replica client unless the server was promoted and is no longer
    /// one it may use (a `standby` client never; a `read-only` one only
    /// while no replica is fit), or it streams another timeline than the
    /// primary (another history). A replica excluded for lag keeps its
    /// sessions: its answers are right, only older.
    pub(crate) fn session_fits(&self, i: usize, target: Target) -> bool {
        match target {
            Target::Primary => self.still_fits(i, target),
            Target::Replica { .. } => {
                if i >= self.servers.len() {
                    return false;
                }
                let state = self.state(i);
                !state.other_timeline && (state.role != Role::Primary || self.still_fits(i, target))
            }
        }
    }

    /// Waits until what decides which server fits changes after `seen`
    /// ([`Topology::changes`]).
    pub(crate) async fn changed_since(&self, seen: u64) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.changes() != seen {
                return;
            }
            notified.await;
        }
    }

    /// Whether some replica is fit to serve (seen as a replica, not
    /// excluded).
    pub(crate) fn any_fit_replica(&self) -> bool {
        (0..self.servers.len()).any(|i| {
            let state = self.state(i);
            state.role == Role::Replica && state.excluded.is_none()
        })
    }

    /// Whether the last probe round found two primaries (and the operator
    /// named none).
    pub(crate) fn split_brain(&self) -> bool {
        self.split_brain.load(Ordering::Acquire)
    }

    /// The servers to try for `target`, in order, each with whether it
    /// serves only as the fallback (the primary for a replica client).
    /// Every login confirms the role (`in_hot_standby`), so a server whose
    /// role is stale is tried last, never trusted.
    pub(crate) fn candidates(&self, target: Target) -> Result<Vec<(usize, bool)>, NoServer> {
        self.candidates_fresh(target, None)
    }

    /// [`Topology::candidates`]; with `fresh_after`, only replicas that
    /// are [`Topology::fresh_since`] it (read-your-writes).
    pub(crate) fn candidates_fresh(
        &self,
        target: Target,
        fresh_after: Option<Instant>,
    ) -> Result<Vec<(usize, bool)>, NoServer> {
        let states: Vec<ServerState> = (0..self.servers.len()).map(|i| self.state(i)).collect();
        let fresh = |i: usize| fresh_after.is_none_or(|t| self.fresh_since(i, t));
        let fit = |i: &usize| states[*i].excluded.is_none() && fresh(*i);
        let with_role = |role: Role| -> Vec<usize> {
            (0..states.len())
                .filter(|i| states[*i].role == role)
                .collect()
        };
        let primaries = || -> Result<Vec<usize>, NoServer> {
            if let Some(named) = self.named_primary() {
                return Ok(vec![named]);
            }
            if self.split_brain() {
                let names: Vec<&str> = with_role(Role::Primary)
                    .into_iter()
                    .map(|i| self.servers[i].addr.as_str())
                    .collect();
                return Err(NoServer::SplitBrain(names.join(", ")));
            }
            // Known primary first, then servers not seen yet, then the
            // rest (roles change: a login tells).
            let mut order = with_role(Role::Primary);
            order.extend(with_role(Role::Unknown));
            order.extend(with_role(Role::Replica));
            // Unreachable ones last, in the same order.
            order.sort_by_key(|i| !fit(i));
            Ok(order)
        };
        match target {
            Target::Primary => Ok(primaries()?.into_iter().map(|i| (i, false)).collect()),
            Target::Replica { fallback } => {
                // Replicas in pgcell's zone first; the others only when
                // those cannot serve.
                let (mut near, mut far): (Vec<usize>, Vec<usize>) = with_role(Role::Replica)
                    .into_iter()
                    .filter(fit)
                    .partition(|&i| self.servers[i].local.load(Ordering::Acquire));
                self.order_by_load(&mut near);
                self.order_by_load(&mut far);
                let mut order: Vec<(usize, bool)> =
                    near.iter().chain(&far).map(|&i| (i, false)).collect();
                // Not seen yet: a login tells whether it is a replica.
                order.extend(
                    with_role(Role::Unknown)
                        .into_iter()
                        .filter(fit)
                        .map(|i| (i, false)),
                );
                if fallback {
                    if let Ok(primaries) = primaries() {
                        for i in primaries {
                            if states[i].role == Role::Primary
                                && !order.iter().any(|(j, _)| *j == i)
                            {
                                order.push((i, true));
                            }
                        }
                    }
                }
                if order.is_empty() {
                    let why: Vec<String> = (0..states.len())
                        .map(|i| {
                            let s = &states[i];
                            format!(
                                "{}: {}{}",
                                self.servers[i].addr,
                                s.role.label(),
                                s.excluded
                                    .as_deref()
                                    .map(|e| format!(", excluded: {e}"))
                                    .unwrap_or_default()
                            )
                        })
                        .collect();
                    return Err(NoServer::NoReplica(why.join("; ")));
                }
                Ok(order)
            }
        }
    }

    /// Orders fit replicas for a new connection: the first by the power of
    /// two choices (of two picked in turn, the one with fewer open
    /// connections), the rest by open connections.
    fn order_by_load(&self, replicas: &mut [usize]) {
        replicas.sort_by_key(|&i| self.open_count(i));
        if replicas.len() >= 2 {
            let n = self.picks.fetch_add(1, Ordering::Relaxed);
            let a = n % replicas.len();
            let b = (a + 1 + (n / replicas.len()) % (replicas.len() - 1)) % replicas.len();
            let pick = if self.open_count(replicas[a]) <= self.open_count(replicas[b]) {
                a
            } else {
                b
            };
            replicas[..=pick].rotate_right(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology(n: usize) -> Topology {
        let servers: Vec<String> = (0..n).map(|i| format!("s{i}:5432")).collect();
        Topology::new(&servers, None)
    }

    /// The servers a writer tries, in order.
    fn primary_order(t: &Topology) -> Vec<usize> {
        t.candidates(Target::Primary)
            .unwrap()
            .into_iter()
            .map(|c| c.0)
            .collect()
    }

    fn state(role: Role, excluded: Option<&str>) -> ServerState {
        ServerState {
            role,
            excluded: excluded.map(str::to_owned),
            ..ServerState::default()
        }
    }

    #[test]
    fn the_primary_is_tried_first_wherever_it_is_listed() {
        let t = topology(3);
        assert_eq!(
            t.candidates(Target::Primary).unwrap(),
            vec![(0, false), (1, false), (2, false)]
        );
        t.saw_role(0, Role::Replica);
        t.saw_role(2, Role::Primary);
        let order = primary_order(&t);
        assert_eq!(order, vec![2, 1, 0]);
    }

    #[test]
    fn held_sessions_end_on_another_history_not_on_lag() {
        let t = topology(3);
        let standby = Target::Replica { fallback: false };
        let read_only = Target::Replica { fallback: true };
        t.probed(vec![
            state(Role::Primary, None),
            state(Role::Replica, Some("lag of 99999999 bytes")),
            ServerState {
                other_timeline: true,
                ..state(Role::Replica, Some("diverged: streams timeline 1"))
            },
        ]);
        assert!(t.session_fits(1, standby), "lag alone ends no session");
        assert!(!t.session_fits(2, standby) && !t.session_fits(2, read_only));
        assert!(t.session_fits(0, Target::Primary));
        assert!(!t.session_fits(0, standby), "a standby client on a primary");
        // No replica fit: a read-only client may stay on the primary.
        assert!(t.session_fits(0, read_only));
    }

    #[test]
    fn a_demoted_primary_makes_the_replicas_candidates_again() {
        let t = topology(3);
        t.probed(vec![
            state(Role::Primary, None),
            state(Role::Replica, None),
            state(Role::Replica, None),
        ]);
        // The primary logs in as a standby: a failover the probe has not
        // seen. Either replica may be the new primary; both come first.
        t.saw_role(0, Role::Replica);
        let order = primary_order(&t);
        assert_eq!(order, vec![1, 2, 0]);
        assert_eq!(t.state(1).role, Role::Unknown);
        // A replica that logs in as a replica stays one.
        t.saw_role(1, Role::Replica);
        t.saw_role(1, Role::Replica);
        assert_eq!(t.state(2).role, Role::Unknown);
        assert!(!Target::Primary.fits(Role::Replica, false));
        assert!(Target::Replica { fallback: true }.fits(Role::Primary, true));
        assert!(!Target::Replica { fallback: false }.fits(Role::Primary, false));
    }

    #[test]
    fn two_primaries_refuse_writes_unless_one_is_named() {
        let t = topology(2);
        t.probed(vec![state(Role::Primary, None), state(Role::Primary, None)]);
        assert!(matches!(
            t.candidates(Target::Primary),
            Err(NoServer::SplitBrain(_))
        ));
        // Reads still go to replicas (none here, and the fallback is not
        // a primary that cannot be told apart).
        assert!(t.candidates(Target::Replica { fallback: true }).is_err());
        let servers = ["s0:5432".to_owned(), "s1:5432".to_owned()];
        let named = Topology::new(&servers, Some("s1:5432"));
        named.probed(vec![state(Role::Primary, None), state(Role::Primary, None)]);
        assert_eq!(named.candidates(Target::Primary).unwrap(), vec![(1, false)]);
        // One primary again: writes go on.
        t.probed(vec![state(Role::Replica, None), state(Role::Primary, None)]);
        assert_eq!(t.candidates(Target::Primary).unwrap()[0], (1, false));
    }

    #[test]
    fn replicas_exclude_the_unfit_and_fall_back_only_when_allowed() {
        let t = topology(3);
        t.probed(vec![
            state(Role::Primary, None),
            state(Role::Replica, Some("lag")),
            state(Role::Replica, None),
        ]);
        assert_eq!(
            t.candidates(Target::Replica { fallback: true }).unwrap(),
            vec![(2, false), (0, true)]
        );
        assert_eq!(
            t.candidates(Target::Replica { fallback: false }).unwrap(),
            vec![(2, false)]
        );
        t.probed(vec![
            state(Role::Primary, None),
            state(Role::Replica, Some("lag")),
            state(Role::Replica, Some("unreachable")),
        ]);
        let err = t
            .candidates(Target::Replica { fallback: false })
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("s2:5432: replica, excluded: unreachable"),
            "{err}"
        );
    }

    #[test]
    fn replicas_in_pgcells_zone_come_first() {
        let servers: Vec<String> = (0..3).map(|i| format!("s{i}:5432")).collect();
        let t = Topology::with_zones(&servers, None, &["s2:5432".to_owned()]);
        t.probed(vec![
            state(Role::Primary, None),
            state(Role::Replica, None),
            state(Role::Replica, None),
        ]);
        for _ in 0..4 {
            let order = t.candidates(Target::Replica { fallback: true }).unwrap();
            assert_eq!(order, vec![(2, false), (1, false), (0, true)]);
            let _open = t.count_open(2);
        }
        // The near one excluded: the far one serves.
        t.probed(vec![
            state(Role::Primary, None),
            state(Role::Replica, None),
            state(Role::Replica, Some("lag")),
        ]);
        assert_eq!(
            t.candidates(Target::Replica { fallback: false }).unwrap(),
            vec![(1, false)]
        );
    }

    #[test]
    fn new_connections_spread_over_replicas_by_load() {
        let t = topology(3);
        t.probed(vec![
            state(Role::Primary, None),
            state(Role::Replica, None),
            state(Role::Replica, None),
        ]);
        let mut guards = Vec::new();
        for _ in 0..20 {
            let (first, _) = t.candidates(Target::Replica { fallback: false }).unwrap()[0];
            guards.push(t.count_open(first));
        }
        assert_eq!((t.open_count(1), t.open_count(2)), (10, 10));
        guards.clear();
        assert_eq!(t.open_count(1) + t.open_count(2), 0);
    }
}
