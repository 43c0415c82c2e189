//! Backends and peers from `discovery.k8s.io/v1` EndpointSlices.
//!
//! An endpoint serves new connections when its `ready` condition is true
//! or unset (Kubernetes: "unknown, treat as ready") and it is not
//! `terminating`; a terminating endpoint keeps the connections it has
//! (pgcell does not close them) but gets no new ones.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::config::CancelPeer;

/// The label tying an EndpointSlice to its Service.
pub(crate) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// True for an endpoint that may get new connections.
pub(crate) fn is_ready(endpoint: &Endpoint) -> bool {
    match &endpoint.conditions {
        None => true,
        Some(c) => c.ready.unwrap_or(true) && !c.terminating.unwrap_or(false),
    }
}

/// True when `slice` belongs to Service `service`.
pub(crate) fn belongs_to(slice: &EndpointSlice, service: &str) -> bool {
    slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .is_some_and(|s| s == service)
}

/// The port number of `slice` that `port` names: a Service port name, or
/// an endpoint port number.
fn port_of(slice: &EndpointSlice, port: &IntOrString) -> Option<u16> {
    let ports = slice.ports.as_deref().unwrap_or_default();
    let found = ports.iter().find(|p| match port {
        IntOrString::String(name) => p.name.as_deref().unwrap_or_default() == name,
        IntOrString::Int(n) => p.port == Some(*n),
    })?;
    u16::try_from(found.port?).ok().filter(|p| *p != 0)
}

/// `host:port`, brackets around IPv6 literals.
fn host_port(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

/// The ready `host:port` endpoints of `port` of the Service whose slices
/// are `slices` (already filtered to that Service), sorted so that a
/// reordering of slices does not count as a change.
pub(crate) fn ready_addresses<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    port: &IntOrString,
) -> Vec<String> {
    let mut out = BTreeSet::new();
    for slice in slices {
        let Some(number) = port_of(slice, port) else {
            continue;
        };
        for endpoint in slice.endpoints.iter().filter(|e| is_ready(e)) {
            // Every address of an endpoint is the same pod; the first is
            // the one to use.
            if let Some(address) = endpoint.addresses.first() {
                out.insert(host_port(address, number));
            }
        }
    }
    out.into_iter().collect()
}

/// The zone of each ready `host:port` endpoint (as [`ready_addresses`]
/// names them) that says one (`endpoints[].zone`, set from the node's
/// `topology.kubernetes.io/zone`).
pub(crate) fn zones<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    port: &IntOrString,
) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    for slice in slices {
        let Some(number) = port_of(slice, port) else {
            continue;
        };
        for endpoint in slice.endpoints.iter().filter(|e| is_ready(e)) {
            if let (Some(address), Some(zone)) = (endpoint.addresses.first(), &endpoint.zone) {
                out.insert(host_port(address, number), zone.clone());
            }
        }
    }
    out
}

/// The cancel peers among the ready endpoints of pgcell's own Service:
/// every ready endpoint except this replica (`own`), at the slice port
/// equal to this replica's data port (`data_port`), or the slice's only
/// port. Each peer's id is derived from its address, as `instance_id =
/// "auto"` derives this replica's.
pub(crate) fn peers<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    data_port: u16,
    own: &[SocketAddr],
) -> Vec<CancelPeer> {
    let mut out = BTreeSet::new();
    for slice in slices {
        let ports = slice.ports.as_deref().unwrap_or_default();
        let port = ports
            .iter()
            .filter_map(|p| p.port.and_then(|n| u16::try_from(n).ok()))
            .find(|n| *n == data_port)
            .or_else(|| match ports {
                [only] => only.port.and_then(|n| u16::try_from(n).ok()),
                _ => None,
            });
        let Some(port) = port else { continue };
        for endpoint in slice.endpoints.iter().filter(|e| is_ready(e)) {
            let Some(ip) = endpoint
                .addresses
                .first()
                .and_then(|a| a.parse::<IpAddr>().ok())
            else {
                continue;
            };
            let addr = SocketAddr::new(ip, port);
            if !own.contains(&addr) {
                out.insert(addr);
            }
        }
    }
    out.into_iter()
        .map(|addr| CancelPeer {
            id: crate::config::cancel::instance_id_of(addr.ip()),
            addr: addr.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(value: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(value).unwrap()
    }

    fn db_slice() -> EndpointSlice {
        slice(serde_json::json!({
            "metadata": {"name": "db-abc", "labels": {SERVICE_NAME_LABEL: "db"}},
            "addressType": "IPv4",
            "ports": [{"name": "postgres", "port": 5432}, {"name": "metrics", "port": 9187}],
            "endpoints": [
                {"addresses": ["10.0.0.2"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.1"]},
                {"addresses": ["10.0.0.3"], "conditions": {"ready": false}},
                {"addresses": ["10.0.0.4"], "conditions": {"ready": true, "terminating": true}},
                {"addresses": ["10.0.0.5"], "conditions": {}},
            ],
        }))
    }

    #[test]
    fn zones_of_ready_endpoints() {
        let s = slice(serde_json::json!({
            "metadata": {"name": "db-abc", "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "ports": [{"name": "postgres", "port": 5432}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "zone": "eu-west-1a"},
                {"addresses": ["10.0.0.2"]},
                {"addresses": ["10.0.0.3"], "zone": "eu-west-1b", "conditions": {"ready": false}},
            ],
        }));
        let z = zones([&s], &IntOrString::String("postgres".into()));
        assert_eq!(z.len(), 1);
        assert_eq!(z["10.0.0.1:5432"], "eu-west-1a");
    }

    #[test]
    fn ready_endpoints_at_the_named_or_numbered_port() {
        let s = db_slice();
        assert!(belongs_to(&s, "db"));
        assert!(!belongs_to(&s, "other"));
        let want = vec!["10.0.0.1:5432", "10.0.0.2:5432", "10.0.0.5:5432"];
        assert_eq!(
            ready_addresses([&s], &IntOrString::String("postgres".into())),
            want
        );
        assert_eq!(ready_addresses([&s], &IntOrString::Int(5432)), want);
        assert_eq!(
            ready_addresses([&s], &IntOrString::Int(9187))[0],
            "10.0.0.1:9187"
        );
        assert!(ready_addresses([&s], &IntOrString::Int(1)).is_empty());
        assert!(ready_addresses([&s], &IntOrString::String("x".into())).is_empty());
        let v6 = slice(serde_json::json!({
            "metadata": {"name": "db-v6"},
            "addressType": "IPv6",
            "ports": [{"port": 5432}],
            "endpoints": [{"addresses": ["fd00::1"]}],
        }));
        assert_eq!(
            ready_addresses([&v6], &IntOrString::String(String::new())),
            vec!["[fd00::1]:5432"]
        );
    }

    #[test]
    fn peers_are_the_other_ready_replicas() {
        let s = slice(serde_json::json!({
            "metadata": {"name": "pgcell-x", "labels": {SERVICE_NAME_LABEL: "pgcell"}},
            "addressType": "IPv4",
            "ports": [{"name": "health", "port": 8080}, {"name": "postgres", "port": 6432}],
            "endpoints": [
                {"addresses": ["10.1.0.1"]},
                {"addresses": ["10.1.0.2"]},
                {"addresses": ["10.1.0.3"], "conditions": {"ready": false}},
            ],
        }));
        let own = ["10.1.0.1:6432".parse().unwrap()];
        let got = peers([&s], 6432, &own);
        assert_eq!(
            got,
            vec![CancelPeer {
                id: crate::config::cancel::instance_id_of("10.1.0.2".parse().unwrap()),
                addr: "10.1.0.2:6432".into(),
            }]
        );
        // Two ports, neither the data port: nothing to guess from.
        assert!(peers([&s], 7000, &own).is_empty());
    }
}
