//! Counters a pooled session bumps on every message, kept with the
//! session and folded into the exported Prometheus counters when metrics
//! are read ([`crate::metrics::render`]) and when the session ends.
//!
//! A `metrics` counter costs two atomic read-modify-writes per increment
//! (its value and its generation), and a transaction bumped four of them
//! (bytes each way, queries, transactions). A tally's cell is written by
//! its session alone, so an increment is a plain load and store; the
//! reader folds the difference since its last fold. Counts are exact at
//! every scrape: nothing waits in the tally for a flush.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::metrics as m;

/// What a tally counts, in the order of its cells.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Count {
    /// `pgcell_client_received_bytes_total`.
    BytesFromClient = 0,
    /// `pgcell_client_sent_bytes_total`.
    BytesToClient = 1,
    /// `pgcell_queries_total`.
    Queries = 2,
    /// `pgcell_transactions_total`.
    Transactions = 3,
}

const COUNTS: [(Count, &str); 4] = [
    (Count::BytesFromClient, m::CLIENT_BYTES_RECEIVED),
    (Count::BytesToClient, m::CLIENT_BYTES_SENT),
    (Count::Queries, m::QUERIES),
    (Count::Transactions, m::TRANSACTIONS),
];

#[derive(Default)]
struct Cell {
    /// Counted so far; written only by the session that owns the tally.
    value: AtomicU64,
    /// How much of `value` the exported counter has; touched only with
    /// the registry locked.
    folded: AtomicU64,
}

struct Cells {
    tenant: String,
    cells: [Cell; 4],
}

impl Cells {
    /// Adds what was counted since the last fold to the exported
    /// counters. Called with the registry locked, so folds never overlap.
    fn fold(&self) {
        for (count, name) in COUNTS {
            let cell = &self.cells[count as usize];
            let value = cell.value.load(Ordering::Relaxed);
            let folded = cell.folded.load(Ordering::Relaxed);
            if value > folded {
                metrics::counter!(name, "tenant" => self.tenant.clone()).increment(value - folded);
                cell.folded.store(value, Ordering::Relaxed);
            }
        }
    }
}

/// Every live tally, by address.
static LIVE: Mutex<Option<HashMap<usize, Arc<Cells>>>> = Mutex::new(None);

fn live() -> std::sync::MutexGuard<'static, Option<HashMap<usize, Arc<Cells>>>> {
    LIVE.lock().unwrap_or_else(PoisonError::into_inner)
}

impl std::fmt::Debug for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tally")
            .field("tenant", &self.cells.tenant)
            .finish_non_exhaustive()
    }
}

/// One session's counters for `tenant`. Every increment must come from
/// the task that owns the session (increments from two tasks at once
/// could lose counts: a cell is not a read-modify-write).
pub(crate) struct Tally {
    cells: Arc<Cells>,
}

impl Tally {
    /// A tally for a session of `tenant`, read from now on by every fold.
    pub(crate) fn new(tenant: &str) -> Tally {
        let cells = Arc::new(Cells {
            tenant: tenant.to_owned(),
            cells: Default::default(),
        });
        live()
            .get_or_insert_with(HashMap::new)
            .insert(Arc::as_ptr(&cells) as usize, cells.clone());
        Tally { cells }
    }

    /// Counts `n` more of `count`.
    #[inline]
    pub(crate) fn add(&self, count: Count, n: u64) {
        let value = &self.cells.cells[count as usize].value;
        value.store(value.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        let mut live = live();
        if let Some(map) = live.as_mut() {
            map.remove(&(Arc::as_ptr(&self.cells) as usize));
        }
        self.cells.fold();
    }
}

/// Folds every live tally into the exported counters.
pub(crate) fn fold_all() {
    let live = live();
    for cells in live.iter().flat_map(|map| map.values()) {
        cells.fold();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exported(name: &str, tenant: &str) -> f64 {
        m::per_tenant(&m::render(), name)
            .get(tenant)
            .copied()
            .unwrap_or(0.0)
    }

    #[test]
    fn counts_reach_the_exported_counters_at_each_read_and_at_drop() {
        let tenant = "tally-test-tenant";
        let tally = Tally::new(tenant);
        tally.add(Count::Queries, 3);
        tally.add(Count::BytesToClient, 100);
        assert_eq!(exported(m::QUERIES, tenant), 3.0);
        assert_eq!(exported(m::CLIENT_BYTES_SENT, tenant), 100.0);
        // A second read adds nothing twice.
        assert_eq!(exported(m::QUERIES, tenant), 3.0);
        tally.add(Count::Queries, 2);
        tally.add(Count::Transactions, 1);
        drop(tally);
        // What was counted after the last read is folded at drop.
        assert_eq!(exported(m::QUERIES, tenant), 5.0);
        assert_eq!(exported(m::TRANSACTIONS, tenant), 1.0);
        assert!(!live()
            .iter()
            .flat_map(|map| map.values())
            .any(|c| c.tenant == tenant));
    }
}
