//! Which backends are handed out, and to which client (`SHOW SERVERS`):
//! one entry per lease, added at checkout and removed when the lease
//! drops.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use crate::backend::server::ServerConn;
use crate::clients::{ClientEntry, ClientState};

static NEXT_LEASE_ID: AtomicU64 = AtomicU64::new(1);

/// A checked-out backend as `SHOW SERVERS` lists it.
#[derive(Debug, Clone)]
pub(super) struct ServerInUse {
    pub(super) addr: SocketAddr,
    pub(super) pid: i32,
    pub(super) created: Instant,
    pub(super) client: Option<u64>,
}

/// The backends handed out, by lease id (`SHOW SERVERS`). Ids are
/// pgcell's own sequence numbers, so they need no DoS-resistant hash: one
/// multiplication spreads them (an insert and a removal per transaction).
pub(super) type InUseMap = HashMap<u64, ServerInUse, std::hash::BuildHasherDefault<LeaseIdHasher>>;

/// Hashes a lease id by multiplying it with the golden ratio.
#[derive(Default)]
pub(super) struct LeaseIdHasher(u64);

impl std::hash::Hasher for LeaseIdHasher {
    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed; fold anything else in.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id;
    }
}

/// Lists a lease in its pool's `in_use` and marks its client active, until
/// dropped.
pub(super) struct InUse {
    id: u64,
    map: Arc<Mutex<InUseMap>>,
    client: Option<Arc<ClientEntry>>,
}

impl InUse {
    /// Lists `conn` in `map` as held by the current client (if any), and
    /// marks that client active.
    pub(super) fn record(map: &Arc<Mutex<InUseMap>>, conn: &ServerConn) -> InUse {
        let id = NEXT_LEASE_ID.fetch_add(1, Ordering::Relaxed);
        let client = crate::clients::current();
        if let Some(c) = &client {
            c.set_state(ClientState::Active);
        }
        map.lock().unwrap_or_else(PoisonError::into_inner).insert(
            id,
            ServerInUse {
                addr: conn.addr,
                pid: conn.key.pid,
                created: conn.created,
                client: client.as_ref().map(|c| c.id),
            },
        );
        InUse {
            id,
            map: map.clone(),
            client,
        }
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
        if let Some(client) = &self.client {
            client.set_state(ClientState::Idle);
        }
    }
}
