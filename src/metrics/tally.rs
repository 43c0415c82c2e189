//! Counters a pooled session bumps on every message, and its transaction
//! durations and pool waits, counted in cells per tenant and folded into
//! what pgcell exports whenever metrics are read ([`fold_all`]).
//!
//! A `metrics` counter costs two atomic read-modify-writes per increment
//! (its value and its generation) behind two indirect calls, and a
//! transaction bumped four of them (bytes each way, queries,
//! transactions) and recorded two histogram values (each a clock read and
//! a push into a shared buffer). A tally's cell is one atomic add; the
//! reader takes what the cells hold and adds it to the exported series.
//! Counts are exact at every scrape, and a session holds only a pointer
//! to its tenant's cells (idle clients stay small).
//!
//! `pgcell_transaction_duration_seconds` and `pgcell_pool_wait_seconds`
//! are counted into their buckets here and rendered by
//! [`render_histograms`], not by the exporter.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::names as m;

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

/// Counted since the last fold.
type Cell = AtomicU64;

/// Upper bounds of the transaction duration buckets, in nanoseconds
/// (the exporter's latency buckets, `metrics::LATENCY_BUCKETS`).
const DURATION_BOUNDS: [u64; 14] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// The buckets, the last one above every bound.
const BUCKETS: usize = DURATION_BOUNDS.len() + 1;

/// The histograms a tally counts into, all with [`DURATION_BOUNDS`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Histogram {
    /// `pgcell_transaction_duration_seconds`.
    TransactionSeconds = 0,
    /// `pgcell_pool_wait_seconds`.
    PoolWaitSeconds = 1,
}

const HISTOGRAMS: [(Histogram, &str, &str); 2] = [
    (
        Histogram::TransactionSeconds,
        m::TRANSACTION_SECONDS,
        m::TRANSACTION_SECONDS_HELP,
    ),
    (
        Histogram::PoolWaitSeconds,
        m::POOL_WAIT_SECONDS,
        m::POOL_WAIT_SECONDS_HELP,
    ),
];

/// One histogram's cells.
#[derive(Default)]
struct DurationCells {
    /// Observations by bucket (not cumulative).
    buckets: [Cell; BUCKETS],
    /// Their durations summed, in nanoseconds.
    nanos: Cell,
}

struct Cells {
    tenant: String,
    cells: [Cell; 4],
    durations: [DurationCells; 2],
}

/// A tenant's observations of one histogram folded so far.
#[derive(Default)]
struct Durations {
    buckets: [u64; BUCKETS],
    nanos: u64,
}

/// Folded observations by histogram and tenant.
type FoldedDurations = HashMap<(usize, String), Durations>;

/// What a fold takes from a cell: everything counted since the last one.
fn take_delta(cell: &Cell) -> u64 {
    cell.swap(0, Ordering::Relaxed)
}

impl Cells {
    /// Adds what was counted since the last fold to the exported
    /// counters and to `durations` (called with the registry locked).
    fn fold(&self, durations: &mut FoldedDurations) {
        for (count, name) in COUNTS {
            let delta = take_delta(&self.cells[count as usize]);
            if delta > 0 {
                metrics::counter!(name, "tenant" => self.tenant.clone()).increment(delta);
            }
        }
        for (histogram, cells) in self.durations.iter().enumerate() {
            let mut deltas = [0; BUCKETS];
            for (delta, cell) in deltas.iter_mut().zip(&cells.buckets) {
                *delta = take_delta(cell);
            }
            let nanos = take_delta(&cells.nanos);
            if deltas.iter().any(|&d| d > 0) {
                let folded = durations
                    .entry((histogram, self.tenant.clone()))
                    .or_default();
                for (sum, delta) in folded.buckets.iter_mut().zip(deltas) {
                    *sum += delta;
                }
                folded.nanos += nanos;
            }
        }
    }
}

/// Every tenant's cells, and the durations folded so far.
#[derive(Default)]
struct Registry {
    tenants: HashMap<String, Arc<Cells>>,
    durations: FoldedDurations,
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

fn with_registry<T>(f: impl FnOnce(&mut Registry) -> T) -> T {
    let mut registry = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
    f(registry.get_or_insert_with(Registry::default))
}

impl std::fmt::Debug for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tally")
            .field("tenant", &self.cells.tenant)
            .finish_non_exhaustive()
    }
}

/// Where a session counts: its tenant's cells.
pub(crate) struct Tally {
    cells: Arc<Cells>,
}

impl Tally {
    /// The cells of `tenant` (made on its first session).
    pub(crate) fn new(tenant: &str) -> Tally {
        let cells = with_registry(|r| {
            // Looked up first: a login of a known tenant allocates nothing.
            if let Some(cells) = r.tenants.get(tenant) {
                return cells.clone();
            }
            let cells = Arc::new(Cells {
                tenant: tenant.to_owned(),
                cells: Default::default(),
                durations: Default::default(),
            });
            r.tenants.insert(tenant.to_owned(), cells.clone());
            cells
        });
        Tally { cells }
    }

    /// Counts `n` more of `count`.
    #[inline]
    pub(crate) fn add(&self, count: Count, n: u64) {
        bump(&self.cells.cells[count as usize], n);
    }

    /// Counts a transaction that held its backend for `held`.
    pub(crate) fn transaction(&self, held: std::time::Duration) {
        self.add(Count::Transactions, 1);
        self.observe(Histogram::TransactionSeconds, held);
    }

    /// Counts one observation of `histogram`.
    pub(crate) fn observe(&self, histogram: Histogram, took: std::time::Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let bucket = DURATION_BOUNDS
            .iter()
            .position(|&bound| nanos <= bound)
            .unwrap_or(DURATION_BOUNDS.len());
        let cells = &self.cells.durations[histogram as usize];
        bump(&cells.buckets[bucket], 1);
        bump(&cells.nanos, nanos);
    }
}

/// Adds `n` to a cell.
#[inline]
fn bump(cell: &Cell, n: u64) {
    cell.fetch_add(n, Ordering::Relaxed);
}

/// Folds every tenant's cells into what pgcell exports.
pub(crate) fn fold_all() {
    with_registry(|r| {
        for cells in r.tenants.values() {
            cells.fold(&mut r.durations);
        }
    });
}

/// Appends the tallies' histograms (`pgcell_transaction_duration_seconds`,
/// `pgcell_pool_wait_seconds`) in Prometheus text format to `out` (after
/// [`fold_all`]).
pub(crate) fn render_histograms(out: &mut String) {
    use std::fmt::Write;
    with_registry(|r| {
        for (histogram, name, help) in HISTOGRAMS {
            let mut tenants: Vec<_> = r
                .durations
                .iter()
                .filter(|((h, _), _)| *h == histogram as usize)
                .map(|((_, tenant), d)| (tenant, d))
                .collect();
            if tenants.is_empty() {
                continue;
            }
            tenants.sort_by(|a, b| a.0.cmp(b.0));
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} histogram");
            for (tenant, d) in tenants {
                let mut cumulative = 0;
                for (i, count) in d.buckets.iter().enumerate() {
                    cumulative += count;
                    let le = match DURATION_BOUNDS.get(i) {
                        Some(&bound) => format!("{}", bound as f64 / 1e9),
                        None => "+Inf".to_owned(),
                    };
                    let _ = writeln!(
                        out,
                        "{name}_bucket{{tenant=\"{tenant}\",le=\"{le}\"}} {cumulative}"
                    );
                }
                let sum = d.nanos as f64 / 1e9;
                let _ = writeln!(out, "{name}_sum{{tenant=\"{tenant}\"}} {sum}");
                let _ = writeln!(out, "{name}_count{{tenant=\"{tenant}\"}} {cumulative}");
            }
            out.push('\n');
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exported(name: &str, tenant: &str) -> f64 {
        crate::metrics::per_tenant(&crate::metrics::render(), name)
            .get(tenant)
            .copied()
            .unwrap_or(0.0)
    }

    #[test]
    fn counts_reach_the_exported_counters_at_each_read() {
        let tenant = "tally-test-tenant";
        let tally = Tally::new(tenant);
        tally.add(Count::Queries, 3);
        tally.add(Count::BytesToClient, 100);
        assert_eq!(exported(m::QUERIES, tenant), 3.0);
        assert_eq!(exported(m::CLIENT_BYTES_SENT, tenant), 100.0);
        // A second read adds nothing twice.
        assert_eq!(exported(m::QUERIES, tenant), 3.0);
        // Another session of the tenant counts in the same cells, and
        // what was counted after the last read is there at the next,
        // whether or not its session still runs.
        let other = Tally::new(tenant);
        other.add(Count::Queries, 2);
        tally.add(Count::Transactions, 1);
        drop(tally);
        drop(other);
        assert_eq!(exported(m::QUERIES, tenant), 5.0);
        assert_eq!(exported(m::TRANSACTIONS, tenant), 1.0);
    }

    #[test]
    fn duration_buckets_are_the_latency_buckets() {
        let bounds: Vec<f64> = DURATION_BOUNDS.iter().map(|&n| n as f64 / 1e9).collect();
        assert_eq!(bounds, m::LATENCY_BUCKETS);
    }

    #[test]
    fn transaction_durations_are_rendered_as_a_histogram() {
        let tenant = "tally-histogram-tenant";
        let tally = Tally::new(tenant);
        tally.transaction(std::time::Duration::from_micros(100));
        tally.transaction(std::time::Duration::from_millis(3));
        tally.transaction(std::time::Duration::from_secs(60));
        tally.observe(Histogram::PoolWaitSeconds, std::time::Duration::ZERO);
        let rendered = crate::metrics::render();
        let series = |s: &str| {
            rendered
                .lines()
                .find_map(|l| l.strip_prefix(s).map(str::to_owned))
                .unwrap_or_else(|| panic!("{s} missing in\n{rendered}"))
        };
        let name = m::TRANSACTION_SECONDS;
        assert_eq!(
            series(&format!(
                "{name}_bucket{{tenant=\"{tenant}\",le=\"0.0005\"}} "
            )),
            "1"
        );
        assert_eq!(
            series(&format!(
                "{name}_bucket{{tenant=\"{tenant}\",le=\"0.005\"}} "
            )),
            "2"
        );
        assert_eq!(
            series(&format!("{name}_bucket{{tenant=\"{tenant}\",le=\"10\"}} ")),
            "2"
        );
        assert_eq!(
            series(&format!(
                "{name}_bucket{{tenant=\"{tenant}\",le=\"+Inf\"}} "
            )),
            "3"
        );
        assert_eq!(
            series(&format!("{name}_count{{tenant=\"{tenant}\"}} ")),
            "3"
        );
        let sum: f64 = series(&format!("{name}_sum{{tenant=\"{tenant}\"}} "))
            .parse()
            .unwrap();
        assert!((sum - 60.0031).abs() < 1e-6, "{sum}");
        assert_eq!(
            crate::metrics::per_tenant(&rendered, m::TRANSACTIONS).get(tenant),
            Some(&3.0)
        );
        assert_eq!(
            rendered
                .matches(&format!("# TYPE {name} histogram"))
                .count(),
            1
        );
        drop(tally);
    }
}
