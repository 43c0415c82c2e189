//! `[cancel]`: this replica's id in the cancel keys it issues, and the
//! peers a `CancelRequest` for another replica's key is forwarded to.

use std::collections::HashSet;

use serde::Deserialize;

use super::{split_host_port, Problems};

/// Largest `instance_id`: the id fills the byte below the sign bit of the
/// process id pgcell issues (see [`crate::cancel`]).
pub const MAX_INSTANCE_ID: i64 = 255;

/// `[cancel]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CancelConfig {
    /// This replica's id, encoded in every cancel key it issues; unique
    /// among the replicas that forward cancels to each other.
    pub instance_id: u8,
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
    instance_id: i64,
    #[serde(default)]
    peers: Vec<RawPeer>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawPeer {
    id: i64,
    addr: String,
}

pub(super) fn cancel_from_raw(raw: RawCancel, p: &mut Problems) -> CancelConfig {
    let instance_id = instance_id(p, "cancel.instance_id", raw.instance_id).unwrap_or(0);
    let mut ids = HashSet::new();
    let mut peers = Vec::new();
    for (i, peer) in raw.peers.into_iter().enumerate() {
        let at = format!("cancel.peers[{i}]");
        let id = instance_id_of_peer(p, &at, peer.id, instance_id, &mut ids);
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
    CancelConfig { instance_id, peers }
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
    own: u8,
    seen: &mut HashSet<u8>,
) -> Option<u8> {
    let path = format!("{at}.id");
    let id = instance_id(p, &path, id)?;
    if id == own {
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
    fn own_id_is_not_a_peer() {
        let err =
            parse("[cancel]\ninstance_id = 4\npeers = [{ id = 4, addr = \"a:1\" }]\n").unwrap_err();
        assert_eq!(err.problems.len(), 1);
        assert_eq!(err.problems[0].path, "cancel.peers[0].id");
        assert!(err.problems[0].message.contains("own"), "{err}");
    }
}
