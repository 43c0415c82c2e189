//! The `SHOW` tables, and the pool gauges that carry the same figures to
//! Prometheus.

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::{BufMut, BytesMut};
use pgwire::messages::data::{DataRow, FieldDescription, RowDescription};

use super::wire::encode;
use crate::config::{AuthMode, PoolMode};
use crate::metrics as m;
use crate::pool::PoolSnapshot;
use crate::state::{ConsoleConfig, Shared};

/// Column types, as PostgreSQL type OIDs (so psql aligns numbers right).
#[derive(Debug, Clone, Copy)]
enum Type {
    Text,
    Int,
    Float,
}

impl Type {
    fn oid_and_size(self) -> (u32, i16) {
        match self {
            Type::Text => (25, -1),
            Type::Int => (20, 8),
            Type::Float => (701, 8),
        }
    }
}

/// A result set in text format.
pub(super) struct Table {
    columns: Vec<(&'static str, Type)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(columns: &[(&'static str, Type)]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    /// Appends `RowDescription` and one `DataRow` per row.
    pub(super) fn encode(&self, out: &mut BytesMut) {
        let fields = self
            .columns
            .iter()
            .map(|(name, ty)| {
                let (oid, size) = ty.oid_and_size();
                FieldDescription::new((*name).to_owned(), 0, 0, oid, size, -1, 0)
            })
            .collect();
        encode(out, &RowDescription::new(fields));
        for row in &self.rows {
            let mut data = BytesMut::new();
            for value in row {
                data.put_i32(value.len() as i32);
                data.put_slice(value.as_bytes());
            }
            encode(out, &DataRow::new(data, row.len() as i16));
        }
    }
}

fn mode_name(mode: PoolMode) -> &'static str {
    match mode {
        PoolMode::Session => "session",
        PoolMode::Transaction => "transaction",
    }
}

fn auth_name(auth: AuthMode) -> &'static str {
    match auth {
        AuthMode::Passthrough => "passthrough",
        AuthMode::Scram => "scram",
        AuthMode::Md5 => "md5",
    }
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_owned()
}

/// `SHOW POOLS`: one row per (tenant, database, user) pool.
pub(super) fn pools(shared: &Shared) -> Table {
    publish_pool_gauges(shared);
    let mut t = Table::new(&[
        ("tenant", Type::Text),
        ("database", Type::Text),
        ("user", Type::Text),
        ("mode", Type::Text),
        ("size", Type::Int),
        ("open", Type::Int),
        ("idle", Type::Int),
        ("in_use", Type::Int),
        ("waiting", Type::Int),
        ("paused", Type::Text),
    ]);
    for pool in shared.pools.all() {
        let s = pool.snapshot();
        t.push(vec![
            s.key.tenant,
            s.key.database,
            s.key.user,
            mode_name(s.mode).to_owned(),
            s.size.to_string(),
            s.open.to_string(),
            s.idle.to_string(),
            s.in_use.to_string(),
            s.waiting.to_string(),
            yes_no(s.paused),
        ]);
    }
    t
}

/// `SHOW CLIENTS`: one row per routed client connection.
pub(super) fn clients(shared: &Shared) -> Table {
    let mut t = Table::new(&[
        ("id", Type::Int),
        ("tenant", Type::Text),
        ("user", Type::Text),
        ("database", Type::Text),
        ("client_addr", Type::Text),
        ("tls", Type::Text),
        ("state", Type::Text),
        ("connected_since", Type::Text),
    ]);
    for c in shared.connected.snapshot() {
        t.push(vec![
            c.id.to_string(),
            c.tenant.clone(),
            c.user.clone(),
            c.database.clone(),
            c.addr.to_string(),
            yes_no(c.tls),
            c.state().name().to_owned(),
            humantime::format_rfc3339_seconds(c.since).to_string(),
        ]);
    }
    t
}

/// `SHOW SERVERS`: one row per pooled backend connection.
pub(super) fn servers(shared: &Shared) -> Table {
    let mut t = Table::new(&[
        ("tenant", Type::Text),
        ("database", Type::Text),
        ("user", Type::Text),
        ("backend_addr", Type::Text),
        ("backend_pid", Type::Int),
        ("state", Type::Text),
        ("client_id", Type::Int),
        ("age_seconds", Type::Int),
    ]);
    let now = Instant::now();
    for pool in shared.pools.all() {
        let mut servers = pool.servers();
        servers.sort_by_key(|s| s.created);
        for s in servers {
            t.push(vec![
                pool.key.tenant.clone(),
                pool.key.database.clone(),
                pool.key.user.clone(),
                s.addr.to_string(),
                s.pid.to_string(),
                if s.in_use { "in use" } else { "idle" }.to_owned(),
                s.client.map(|c| c.to_string()).unwrap_or_default(),
                now.duration_since(s.created).as_secs().to_string(),
            ]);
        }
    }
    t
}

/// `SHOW REPLICATION`: one row per server of every tenant, as pgcell
/// knows it (docs/replicas.md).
pub(super) fn replication(shared: &Shared) -> Table {
    let mut t = Table::new(&[
        ("tenant", Type::Text),
        ("server", Type::Text),
        ("role", Type::Text),
        // Empty when unknown (not probed, or no primary answered).
        ("lag_bytes", Type::Text),
        ("lag_seconds", Type::Text),
        ("excluded", Type::Text),
        ("backends_open", Type::Int),
        ("probed_ms_ago", Type::Text),
        ("split_brain", Type::Text),
    ]);
    let table = shared.routes.load();
    let mut tenants: Vec<_> = table.tenants().collect();
    tenants.sort_by(|a, b| a.id().cmp(b.id()));
    let now = Instant::now();
    for tenant in tenants {
        let topology = &tenant.topology;
        for (i, server) in topology.servers().iter().enumerate() {
            let state = topology.state(i);
            t.push(vec![
                tenant.id().to_owned(),
                server.addr.clone(),
                state.role.label().to_owned(),
                state.lag_bytes.map(|b| b.to_string()).unwrap_or_default(),
                state
                    .lag_seconds
                    .map(|s| format!("{s:.3}"))
                    .unwrap_or_default(),
                state.excluded.unwrap_or_default(),
                topology.open_count(i).to_string(),
                state
                    .probed_at
                    .map(|at| now.duration_since(at).as_millis().to_string())
                    .unwrap_or_default(),
                yes_no(topology.split_brain()),
            ]);
        }
    }
    t
}

/// `SHOW STATS`: per tenant, read back from the metrics registry, so the
/// console and `/metrics` cannot disagree.
pub(super) fn stats(console: &ConsoleConfig) -> Table {
    let rendered = m::render();
    let transactions = m::per_tenant(&rendered, m::TRANSACTIONS);
    let queries = m::per_tenant(&rendered, m::QUERIES);
    let bytes_in = m::per_tenant(&rendered, m::CLIENT_BYTES_RECEIVED);
    let bytes_out = m::per_tenant(&rendered, m::CLIENT_BYTES_SENT);
    let wait_sum = m::per_tenant(&rendered, &format!("{}_sum", m::POOL_WAIT_SECONDS));
    let wait_count = m::per_tenant(&rendered, &format!("{}_count", m::POOL_WAIT_SECONDS));
    let mut t = Table::new(&[
        ("tenant", Type::Text),
        ("transactions", Type::Int),
        ("queries", Type::Int),
        ("bytes_in", Type::Int),
        ("bytes_out", Type::Int),
        ("checkouts", Type::Int),
        ("avg_wait_ms", Type::Float),
    ]);
    let get = |map: &std::collections::HashMap<String, f64>, id: &str| {
        map.get(id).copied().unwrap_or(0.0)
    };
    for tenant in &console.tenants {
        let id = tenant.id.as_str();
        let waits = get(&wait_count, id);
        let avg_wait_ms = if waits > 0.0 {
            get(&wait_sum, id) / waits * 1000.0
        } else {
            0.0
        };
        t.push(vec![
            id.to_owned(),
            (get(&transactions, id) as u64).to_string(),
            (get(&queries, id) as u64).to_string(),
            (get(&bytes_in, id) as u64).to_string(),
            (get(&bytes_out, id) as u64).to_string(),
            (waits as u64).to_string(),
            format!("{avg_wait_ms:.3}"),
        ]);
    }
    t
}

/// `SHOW TENANTS`: the configured tenants.
pub(super) fn tenants(shared: &Shared, console: &ConsoleConfig) -> Table {
    let clients = shared.connected.count_by_tenant();
    let mut pools: BTreeMap<&str, usize> = BTreeMap::new();
    let all = shared.pools.all();
    for p in &all {
        *pools.entry(p.key.tenant.as_str()).or_insert(0) += 1;
    }
    let mut t = Table::new(&[
        ("tenant", Type::Text),
        ("auth", Type::Text),
        ("pool_mode", Type::Text),
        ("clients", Type::Int),
        ("pools", Type::Int),
        ("paused", Type::Text),
        ("backends", Type::Text),
    ]);
    for tenant in &console.tenants {
        let id = tenant.id.as_str();
        let pooled = tenant.auth != AuthMode::Passthrough;
        t.push(vec![
            id.to_owned(),
            auth_name(tenant.auth).to_owned(),
            if pooled {
                mode_name(tenant.pool_mode)
            } else {
                "none"
            }
            .to_owned(),
            clients.get(id).copied().unwrap_or(0).to_string(),
            pools.get(id).copied().unwrap_or(0).to_string(),
            yes_no(shared.pools.is_paused(id)),
            tenant.backends.join(","),
        ]);
    }
    t
}

/// Sets the per-tenant pool gauges from the pools as they are now. Run
/// before `/metrics` is rendered and by `SHOW POOLS`, so both show the same
/// figures; waiting clients are `pgcell_pool_waiting_clients`, kept by the
/// session.
pub(crate) fn publish_pool_gauges(shared: &Shared) {
    let mut sums: BTreeMap<String, PoolSnapshot> = BTreeMap::new();
    for pool in shared.pools.all() {
        let s = pool.snapshot();
        match sums.get_mut(&s.key.tenant) {
            Some(sum) => {
                sum.size += s.size;
                sum.open += s.open;
                sum.idle += s.idle;
                sum.in_use += s.in_use;
            }
            None => {
                sums.insert(s.key.tenant.clone(), s);
            }
        }
    }
    let console = shared.console.load();
    for tenant in &console.tenants {
        let id = tenant.id.clone();
        let (size, open, idle, in_use) = sums
            .get(&id)
            .map(|s| (s.size, s.open, s.idle, s.in_use))
            .unwrap_or_default();
        metrics::gauge!(m::POOL_SIZE, "tenant" => id.clone()).set(size as f64);
        metrics::gauge!(m::POOL_OPEN, "tenant" => id.clone()).set(open as f64);
        metrics::gauge!(m::POOL_IDLE, "tenant" => id.clone()).set(idle as f64);
        metrics::gauge!(m::POOL_IN_USE, "tenant" => id.clone()).set(in_use as f64);
        let paused = if shared.pools.is_paused(&id) {
            1.0
        } else {
            0.0
        };
        metrics::gauge!(m::POOL_PAUSED, "tenant" => id).set(paused);
    }
}
