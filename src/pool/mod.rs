//! Pools of backend connections, one per (tenant, database, user, target).
//!
//! Every live backend holds one permit of its pool's semaphore (`size`),
//! whether idle or checked out, so the pool never opens more than `size`.
//! A checkout takes an idle backend if one is fit (young enough, checked if
//! it idled long), else opens one when a permit is free, else waits in
//! line until a backend is handed back, a permit frees up or
//! `acquire_timeout` passes. A backend handed back goes to the oldest
//! waiting checkout of its profile first. A paused pool (`PAUSE` in the
//! admin console) hands out nothing: checkouts wait for `RESUME`, still
//! bounded by `acquire_timeout`.
//!
//! The files, by concern:
//!
//! | file | concern |
//! |---|---|
//! | `state.rs` | the pool: its key, settings, login and startup profiles, pause, client slots; the idle backends and the line of waiters under one lock; `AcquireError`; the `Connector` trait |
//! | `checkout.rs` | checkout and waiting: idle backends, permits, a place in line |
//! | `lease.rs` | a checked-out backend, and handing it back or closing it |
//! | `upkeep.rs` | periodic upkeep: `idle_timeout`, `max_lifetime`, `min_idle`; the liveness check |
//! | `connect.rs` | `Pool::new` and opening backends: the real connector logs in to the tenant's servers |
//! | `snapshot.rs` | a pool's figures and backends for the admin console |
//! | `in_use.rs` | which backends are handed out, and to whom |
//! | `registry.rs` | every pool of the process; reloads, pause and resume by tenant |
//!
//! `tests.rs` runs the pool on tokio's paused clock with a connector that
//! opens loopback sockets to a fake backend.

mod checkout;
mod connect;
mod in_use;
mod lease;
mod registry;
mod snapshot;
mod state;
#[cfg(test)]
mod tests;
mod upkeep;

pub(crate) use lease::{Lease, Release};
pub(crate) use registry::Pools;
pub(crate) use snapshot::PoolSnapshot;
pub(crate) use state::{AcquireError, ClientSlot, Pool, PoolKey};
