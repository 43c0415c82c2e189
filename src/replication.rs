//! Following every tenant's primary and replicas for the life of the
//! server: a probe round per tenant that has `[tenants.replication]
//! probe_user`, every `probe_interval` (docs/replicas.md). What the probes
//! find goes into the tenant's topology, which new backend connections
//! follow, and into metrics.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::probe;
use crate::backend::server::{BackendLogin, OpenSettings, ServerConn};
use crate::backend::topology::{Role, Topology};
use crate::config::Credential;
use crate::metrics as m;
use crate::state::Shared;

/// Longest pause between looks at the tenants (a tenant added by a reload
/// is probed within it).
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// Probes every tenant that asks for it, forever.
pub(crate) async fn run(shared: Arc<Shared>) {
    // The probe's connections, per tenant, with the topology they serve.
    let mut held: HashMap<String, (Arc<Topology>, Vec<Option<ServerConn>>)> = HashMap::new();
    let mut due: HashMap<String, tokio::time::Instant> = HashMap::new();
    loop {
        let table = shared.routes.load_full();
        let now = tokio::time::Instant::now();
        let mut pause = MAX_PAUSE;
        let mut seen = Vec::new();
        for tenant in table.tenants() {
            let config = &tenant.config.replication;
            let Some(user) = &config.probe_user else {
                continue;
            };
            let Some(Credential::Password(password)) =
                tenant.config.user(user).map(|u| &u.credential)
            else {
                continue;
            };
            seen.push(tenant.id().to_owned());
            let next = due.entry(tenant.id().to_owned()).or_insert(now);
            if *next > now {
                pause = pause.min(*next - now);
                continue;
            }
            *next = now + config.probe_interval;
            pause = pause.min(config.probe_interval);
            let entry = held
                .entry(tenant.id().to_owned())
                .or_insert_with(|| (tenant.topology.clone(), Vec::new()));
            if !Arc::ptr_eq(&entry.0, &tenant.topology) {
                // A reload changed the servers: start afresh.
                *entry = (tenant.topology.clone(), Vec::new());
            }
            let open = OpenSettings {
                connect_timeout: shared.settings.connect_timeout.min(config.probe_timeout),
                login_timeout: config.probe_timeout,
                keepalive: shared.settings.tcp_keepalive,
            };
            let login = (user.clone(), BackendLogin::Password(password.clone()));
            probe::probe_round(
                &tenant.topology,
                tenant.targets(crate::backend::Target::Primary),
                &mut entry.1,
                &login,
                config,
                &open,
            )
            .await;
            publish(tenant.id(), &tenant.topology);
        }
        held.retain(|id, _| seen.contains(id));
        due.retain(|id, _| seen.contains(id));
        tokio::time::sleep(pause).await;
    }
}

/// The topology as metrics.
fn publish(tenant: &str, topology: &Topology) {
    metrics::gauge!(m::SPLIT_BRAIN, "tenant" => tenant.to_owned())
        .set(f64::from(u8::from(topology.split_brain())));
    for (i, server) in topology.servers().iter().enumerate() {
        let state = topology.state(i);
        let labels = [
            ("tenant", tenant.to_owned()),
            ("server", server.addr.clone()),
        ];
        let role = match state.role {
            Role::Primary => 1.0,
            Role::Replica => 0.0,
            Role::Unknown => -1.0,
        };
        metrics::gauge!(m::SERVER_ROLE, &labels).set(role);
        metrics::gauge!(m::SERVER_EXCLUDED, &labels)
            .set(f64::from(u8::from(state.excluded.is_some())));
        if let Some(bytes) = state.lag_bytes {
            metrics::gauge!(m::REPLICA_LAG_BYTES, &labels).set(bytes as f64);
        }
        if let Some(secs) = state.lag_seconds {
            metrics::gauge!(m::REPLICA_LAG_SECONDS, &labels).set(secs);
        }
    }
}
