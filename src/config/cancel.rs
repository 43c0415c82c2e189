//! `[cancel]`: this replica's id in the cancel keys it issues, and the
//! peers a `CancelRequest` for another replica's key is forwarded to.
//!
//! `instance_id = "auto"` derives the id from the pod's address (`POD_IP`),
//! the way discovered peers' ids are derived from theirs; see
//! [`instance_id_of`].

use std::collections::HashSet;

use serde::Deserialize;

use super::problems::Problems;
use super::tenants::split_host_port;

/// Largest `instance_id`: the id fills the byte below the sign bit of the
/// process id pgcell issues (see the `cancel` module).
pub const MAX_INSTANCE_ID: i64 = 255;

/// `[cancel]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CancelConfig {
    /// This replica's id, encoded in every cancel key it issues; unique
    /// among the replicas that forward cancels to each other.
    pub instance_id: u8,
    /// True when `instance_id = "auto"`: the id was derived from this
    /// pod's address, and ids may collide (forwarding then goes to every
    /// peer with the id).
    pub auto_instance_id: bool,
    /// The other replicas, by id.
    pub peers: Vec<CancelPeer>,
}

/// One `[[cancel.peers]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelPeer {
    /// The peer's `instance_id`.
    pub id: u8,
    /// The peer's data port, `host:port`.
    pub addr: String,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawCancel {
    #[serde(default)]
    instance_id: RawInstanceId,
    #[serde(default)]
    peers: Vec<RawPeer>,
}

/// A number, or `"auto"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawInstanceId {
    Fixed(i64),
    Named(String),
}

impl Default for RawInstanceId {
    fn default() -> Self {
        RawInstanceId::Fixed(0)
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct RawPeer {
    id: i64,
    addr: String,
}

pub(super) fn cancel_from_raw(raw: RawCancel, p: &mut Problems) -> CancelConfig {
    let pod_ip = std::env::var(POD_IP_ENV).ok();
    cancel_from_raw_with(raw, pod_ip.as_deref(), p)
}

/// [`cancel_from_raw`] with the pod IP given (tests).
fn cancel_from_raw_with(raw: RawCancel, pod_ip: Option<&str>, p: &mut Problems) -> CancelConfig {
    let (instance_id, auto_instance_id) = match raw.instance_id {
        RawInstanceId::Fixed(id) => (instance_id(p, "cancel.instance_id", id).unwrap_or(0), false),
        RawInstanceId::Named(name) if name == "auto" => (auto_instance_id(p, pod_ip), true),
        RawInstanceId::Named(name) => {
            p.push(
                "cancel.instance_id",
                format!("{name:?} is neither a number (0 to {MAX_INSTANCE_ID}) nor \"auto\""),
            );
            (0, false)
        }
    };
    let mut ids = HashSet::new();
    let mut peers = Vec::new();
    for (i, peer) in raw.peers.into_iter().enumerate() {
        let at = format!("cancel.peers[{i}]");
        let own = (!auto_instance_id).then_some(instance_id);
        let id = instance_id_of_peer(p, &at, peer.id, own, &mut ids);
        let addr_ok = match split_host_port(&peer.addr) {
            Some((_, port)) if port != 0 => true,
            _ => {
                p.push(
                    format!("{at}.addr"),
                    format!("{:?} is not host:port (the peer's data port)", peer.addr),
                );
                false
            }
        };
        if let (Some(id), true) = (id, addr_ok) {
            peers.push(CancelPeer {
                id,
                addr: peer.addr,
            });
        }
    }
    CancelConfig {
        instance_id,
        auto_instance_id,
        peers,
    }
}

/// The id derived from `pod_ip`; 0 outside a pod (`POD_IP` unset), where
/// a single replica needs no distinct id.
fn auto_instance_id(p: &mut Problems, pod_ip: Option<&str>) -> u8 {
    match pod_ip.map(str::parse::<std::net::IpAddr>) {
        None => 0,
        Some(Ok(ip)) => instance_id_of(ip),
        Some(Err(_)) => {
            p.push(
                "cancel.instance_id",
                format!(
                    "\"auto\" needs {} to be an IP address, and it is not",
                    POD_IP_ENV
                ),
            );
            0
        }
    }
}

fn instance_id(p: &mut Problems, path: &str, id: i64) -> Option<u8> {
    match u8::try_from(id) {
        Ok(id) => Some(id),
        Err(_) => {
            p.push(
                path,
                format!("{id} is out of range (0 to {MAX_INSTANCE_ID})"),
            );
            None
        }
    }
}

fn instance_id_of_peer(
    p: &mut Problems,
    at: &str,
    id: i64,
    own: Option<u8>,
    seen: &mut HashSet<u8>,
) -> Option<u8> {
    let path = format!("{at}.id");
    let id = instance_id(p, &path, id)?;
    if Some(id) == own {
        p.push(
            path,
            format!("{id} is this replica's own cancel.instance_id"),
        );
        return None;
    }
    if !seen.insert(id) {
        p.push(path, format!("peer id {id} listed twice"));
        return None;
    }
    Some(id)
}

/// The environment variable holding this pod's IP (Downward API
/// `status.podIP`): the source of `instance_id = "auto"`, and how
/// discovery tells this replica from its peers.
pub const POD_IP_ENV: &str = "POD_IP";

/// The instance id of the replica at `ip`, for `instance_id = "auto"` and
/// peers found in Kubernetes: a hash of the address folded into one byte,
/// so that ids spread evenly however the pod network numbers its pods.
pub fn instance_id_of(ip: std::net::IpAddr) -> u8 {
    let bytes = match ip {
        std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
        std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    // FNV-1a, 32 bits.
    let mut hash: u32 = 0x811c_9dc5;
    for b in bytes {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash ^ (hash >> 8) ^ (hash >> 16) ^ (hash >> 24)) as u8
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::Config;
    use super::*;

    fn parse(cancel: &str) -> Result<Config, super::super::ConfigError> {
        let text = format!(
            "[listen]\naddr = \"127.0.0.1:6432\"\n[[tenants]]\nid = \"acme\"\nbackends = [\"127.0.0.1:5441\"]\n{cancel}"
        );
        Config::parse(&text, Path::new("."))
    }

    #[test]
    fn defaults_to_instance_zero_without_peers() {
        assert_eq!(parse("").unwrap().cancel, CancelConfig::default());
    }

    #[test]
    fn peers_are_parsed() {
        let c = parse(
            r#"
            [cancel]
            instance_id = 3
            peers = [
              { id = 1, addr = "10.0.0.1:6432" },
              { id = 255, addr = "pgcell-2.pgcell.svc:6432" },
            ]
            "#,
        )
        .unwrap()
        .cancel;
        assert_eq!(c.instance_id, 3);
        assert!(!c.auto_instance_id);
        assert_eq!(
            c.peers,
            vec![
                CancelPeer {
                    id: 1,
                    addr: "10.0.0.1:6432".into()
                },
                CancelPeer {
                    id: 255,
                    addr: "pgcell-2.pgcell.svc:6432".into()
                },
            ]
        );
    }

    #[test]
    fn every_problem_has_its_path() {
        let err = parse(
            r#"
            [cancel]
            instance_id = 256
            colour = "red"
            [[cancel.peers]]
            id = 2
            addr = "10.0.0.2"
            [[cancel.peers]]
            id = 2
            addr = "10.0.0.3:6432"
            [[cancel.peers]]
            id = -1
            addr = "10.0.0.4:0"
            [[cancel.peers]]
            id = 5
            addr = "10.0.0.5:6432"
            port = 1
            "#,
        )
        .unwrap_err();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "cancel.colour",
                "cancel.peers.3.port",
                "cancel.instance_id",
                "cancel.peers[0].addr",
                "cancel.peers[1].id",
                "cancel.peers[2].id",
                "cancel.peers[2].addr",
            ],
            "{err}"
        );
    }

    #[test]
    fn auto_instance_id_comes_from_the_pod_ip() {
        let raw = |text: &str| -> RawCancel { toml::from_str(text).unwrap() };
        let mut p = Problems::default();
        let c = cancel_from_raw_with(raw("instance_id = \"auto\""), Some("10.1.2.3"), &mut p);
        assert!(p.0.is_empty());
        assert!(c.auto_instance_id);
        assert_eq!(c.instance_id, instance_id_of("10.1.2.3".parse().unwrap()));
        let c = cancel_from_raw_with(raw("instance_id = \"auto\""), None, &mut p);
        assert_eq!((c.instance_id, c.auto_instance_id), (0, true));
        assert!(p.0.is_empty());
        // With auto, a peer may share the derived id.
        let c = cancel_from_raw_with(
            raw("instance_id = \"auto\"\npeers = [{ id = 0, addr = \"a:1\" }]"),
            None,
            &mut p,
        );
        assert_eq!(c.peers.len(), 1);
        assert!(p.0.is_empty());
        cancel_from_raw_with(raw("instance_id = \"auto\""), Some("pod-1"), &mut p);
        cancel_from_raw_with(raw("instance_id = \"seven\""), None, &mut p);
        let paths: Vec<&str> = p.0.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, vec!["cancel.instance_id", "cancel.instance_id"]);
    }

    #[test]
    fn own_id_is_not_a_peer() {
        let err =
            parse("[cancel]\ninstance_id = 4\npeers = [{ id = 4, addr = \"a:1\" }]\n").unwrap_err();
        assert_eq!(err.problems.len(), 1);
        assert_eq!(err.problems[0].path, "cancel.peers[0].id");
        assert!(err.problems[0].message.contains("own"), "{err}");
    }
}
