//! The state of one pooled client ([`Session`]); the I/O loop (`pooled`),
//! checkout and checkin (`checkout`) and the relay of a leased backend
//! (`follow`) are its methods.

use std::sync::Arc;

use crate::backend::server::{BackendLogin, OpenSettings, StartupProfile};
use crate::cancel::IssuedKey;
use crate::clients::ClientEntry;
use crate::pool::{Lease, Pool};
use crate::session::engine::{Checkout, ClientSession, CustomSettings};
use crate::session::prepared::ClientStatements;
use crate::session::relay::RelayBytes;
use crate::state::Shared;

/// A pooled client being served: its pools and how its backends log in,
/// the session it must see on every backend, and the backend it holds.
pub(super) struct Session<'a> {
    pub(super) shared: &'a Shared,
    pub(super) open: OpenSettings,
    /// How this client's backends log in (kept for replacement pools).
    pub(super) login: BackendLogin,
    /// The reload generation this session has caught up with.
    pub(super) seen_reload: u64,
    /// The pool of the backend the client holds, or will take next: its
    /// own pool ([`Session::home`]), or for a read-only transaction the
    /// tenant's replica pool.
    pub(super) pool: Arc<Pool>,
    /// The pool of the client's target (the primary unless it asked for a
    /// replica).
    pub(super) home: Arc<Pool>,
    /// Read-only transactions go to replicas (`[tenants.replication]
    /// read_only_transactions`, transaction mode, a client of the primary).
    pub(super) route_read_only: bool,
    /// When the client's last transaction on the primary ended: its later
    /// read-only transactions go to replicas that have replayed past it.
    pub(super) last_write: Option<std::time::Instant>,
    /// The topology's change count when the held backend was last found
    /// fit (session mode: [`Session::held_server_fits`]).
    pub(super) topology_seen: u64,
    /// This client's place among the pool's `max_client_connections`.
    pub(super) _pool_slot: crate::pool::ClientSlot,
    pub(super) cancel_key: IssuedKey,
    /// The client's startup parameters: it gets backends that logged in
    /// with them.
    pub(super) profile: Arc<StartupProfile>,
    /// Its startup `search_path` names `pg_temp`: a plain `CREATE TABLE`
    /// may make a temporary table.
    pub(super) startup_pg_temp: bool,
    /// What the client changed beyond its startup values, replayed on
    /// every backend it gets.
    pub(super) session: ClientSession,
    /// The custom (dotted) settings it may have set, read back by name.
    pub(super) custom: CustomSettings,
    /// The current backend's protocol position, what the transaction did
    /// to the session, pinning (`session::engine`).
    pub(super) checkout: Checkout,
    pub(super) lease: Option<Lease>,
    pub(super) bytes: &'a mut RelayBytes,
    pub(super) tenant: String,
    /// Named prepared statements (transaction mode).
    pub(super) statements: ClientStatements,
    /// When the current backend was checked out.
    pub(super) checked_out_at: std::time::Instant,
    /// The client as listed: its tally (queries and transactions here,
    /// bytes through the client stream) and its idle wake.
    pub(super) listed: &'a ClientEntry,
}
