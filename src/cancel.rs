//! Cancel keys: pgcell gives each client its own `BackendKeyData` and maps
//! it to the key of the backend serving that client, so a `CancelRequest`
//! reaches the right backend process and nothing else.
//!
//! # Key layout and forwarding between replicas
//!
//! The NLB may send a client's `CancelRequest` to another pgcell replica
//! than the one serving the client, so a key names its owner. The process
//! id pgcell issues is `instance_id << 23 | 23 random bits`: positive (the
//! sign bit is clear), never zero, and its top byte below the sign bit is
//! the issuing replica's `[cancel] instance_id`. The secret is 32 random
//! bits. A replica that gets a key owned by another replica listed in
//! `[cancel] peers` sends the `CancelRequest` on, once, to that peer's data
//! port; it never sends one anywhere else, so it is no open relay.
//!
//! With `[cancel] instance_id = "auto"` (replicas of one Deployment share
//! one config file) each replica derives its id from its pod IP with
//! [`instance_id_of`], and peers found in Kubernetes get ids derived the
//! same way from their addresses. 256 ids for a few replicas collide now
//! and then, so a key may name several replicas: a forward goes to every
//! peer with the key's owner id, and a replica that misses a key carrying
//! its own id forwards it to the peers sharing that id.
//!
//! Forwarding is one hop. A forwarded request carries the key with the
//! sign bit of the process id set (issued ids never have it), and a
//! replica that receives such a key clears the bit and looks only in its
//! own map: it never forwards it again, so requests cannot loop and a
//! cancel reaches the backend at most once (only the replica holding the
//! key has a target for it). A client sending a negative process id itself
//! gains nothing: the key is then only looked up where it landed. As a
//! second guard (and for peers still forwarding unmarked keys), a replica
//! does not forward a key again that it forwarded within
//! [`REPEAT_WINDOW`].
//!
//! # Keys are bound to the endpoint they were issued through
//!
//! A key issued to a client that came through a VPC endpoint (the PROXY v2
//! header's vpce id) cancels only when the `CancelRequest` comes through
//! the same endpoint: a key that leaked to another customer's network is
//! worth nothing there. A request from another endpoint, or from none, is
//! dropped and counted (`outcome="endpoint_mismatch"`), never forwarded.
//! Forwards between replicas carry the vpce id in their PROXY header (with
//! `proxy_protocol = "required"`, the only mode in which vpce ids exist
//! to be trusted), so the owning replica checks the original endpoint.
//! Keys issued to clients without a vpce id (in-cluster clients, no PROXY
//! header) are not bound.
//!
//! Protocol 3.0 keys are 64 bits, so a forged key must guess the 32-bit
//! secret and the 23 random bits of the process id (the owner byte is
//! public): about 2^-55 per try for one given session. Protocol 3.2 allows
//! secrets of up to 256 bytes; issuing longer keys to clients that ask for
//! 3.2 is future work.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::auth::{fill_random_from, RandomError, RandomSource, OS_RANDOM};
use crate::config::{CancelConfig, CancelPeer};
use crate::protocol::startup::CancelKey;
use crate::proxy_protocol::{self, ProxyMode};
use crate::tenant::ClientInfo;

// Defined with the `[cancel]` keys that use them; here too, as part of
// what a cancel key is.
#[cfg(test)]
use crate::config::cancel::instance_id_of;

/// Random low bits of an issued process id; the owner id sits above them.
const PID_RANDOM_BITS: u32 = 23;
/// Mask of [`PID_RANDOM_BITS`].
const PID_RANDOM_MASK: i32 = (1 << PID_RANDOM_BITS) - 1;
/// Set in the process id of a key forwarded by a peer (see the module
/// documentation).
const FORWARDED_BIT: i32 = i32::MIN;
/// How long a key forwarded to a peer is not forwarded again.
pub(crate) const REPEAT_WINDOW: Duration = Duration::from_secs(2);
/// Keys remembered for [`REPEAT_WINDOW`]; older ones are forgotten first
/// when more are forwarded within the window.
const MAX_RECENT_FORWARDS: usize = 1024;

/// Where a cancel for one client goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CancelTarget {
    /// The backend's address.
    pub addr: SocketAddr,
    /// The backend's own key for the session.
    pub key: CancelKey,
}

/// The cancel keys issued by this process, and the peers cancels for
/// other replicas' keys go to.
#[derive(Debug, Default, Clone)]
pub(crate) struct CancelMap {
    inner: Arc<Mutex<HashMap<i32, Entry>>>,
    /// This replica's id, in every process id it issues.
    instance: u8,
    /// Peer data ports by instance id (several when derived ids
    /// collide); swapped whole on reload and on discovery.
    peers: Arc<ArcSwap<HashMap<u8, Vec<String>>>>,
    /// Keys forwarded within [`REPEAT_WINDOW`], oldest first.
    recent: Arc<Mutex<VecDeque<(CancelKey, Instant)>>>,
}

/// A key's secret, the endpoint it was issued through, and where its
/// cancels go.
#[derive(Debug)]
struct Entry {
    secret: i32,
    vpce_id: Option<Arc<str>>,
    slot: Arc<Mutex<Slot>>,
}

/// Where one client's cancels go right now.
///
/// A pooled client has a backend only while it runs a transaction (or for
/// its session); between, a cancel has nothing to do. When a cancel was
/// sent during a checkout, that backend must not serve anyone else: the
/// signal may land after the hand-over. [`IssuedKey::detach`] reports it
/// so the pool closes that backend instead.
#[derive(Debug, Default)]
struct Slot {
    target: Option<CancelTarget>,
    cancel_sent: bool,
}

/// Keeps a key registered; the key is forgotten when this drops.
#[derive(Debug)]
pub(crate) struct IssuedKey {
    map: CancelMap,
    key: CancelKey,
    slot: Arc<Mutex<Slot>>,
}

/// What became of a `CancelRequest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CancelOutcome {
    /// Sent on to the backend.
    Forwarded,
    /// No session holds this key.
    UnknownKey,
    /// The backend could not be reached.
    BackendUnreachable,
    /// The key is another replica's (or may be, when ids collide): sent
    /// on to the peers with its owner id.
    ForwardedToPeer,
    /// The key is another replica's, one not among the peers: dropped.
    UnknownPeer,
    /// The peer owning the key could not be reached.
    PeerUnreachable,
    /// The key was forwarded moments ago: dropped (ends loops between
    /// misconfigured peers).
    RepeatedForward,
    /// The key was issued through another VPC endpoint than the request
    /// came through: dropped.
    EndpointMismatch,
}

impl CancelOutcome {
    /// Metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            CancelOutcome::Forwarded => "forwarded",
            CancelOutcome::UnknownKey => "unknown_key",
            CancelOutcome::BackendUnreachable => "backend_unreachable",
            CancelOutcome::ForwardedToPeer => "forwarded_to_peer",
            CancelOutcome::UnknownPeer => "unknown_peer",
            CancelOutcome::PeerUnreachable => "peer_unreachable",
            CancelOutcome::RepeatedForward => "repeated_forward",
            CancelOutcome::EndpointMismatch => "endpoint_mismatch",
        }
    }
}

impl CancelMap {
    /// A map issuing keys owned by `config.instance_id`, forwarding to
    /// `config.peers`.
    pub(crate) fn new(config: &CancelConfig) -> CancelMap {
        let map = CancelMap {
            instance: config.instance_id,
            ..CancelMap::default()
        };
        map.set_peers(&config.peers);
        map
    }

    /// Replaces the peers (reload, discovery); the instance id needs a
    /// restart.
    pub(crate) fn set_peers(&self, peers: &[CancelPeer]) {
        let mut by_id: HashMap<u8, Vec<String>> = HashMap::new();
        for p in peers {
            let addrs = by_id.entry(p.id).or_default();
            if !addrs.contains(&p.addr) {
                addrs.push(p.addr.clone());
            }
        }
        self.peers.store(Arc::new(by_id));
    }

    /// Number of peers cancels may be forwarded to.
    #[cfg(test)]
    pub(crate) fn peer_count(&self) -> usize {
        self.peers.load().values().map(Vec::len).sum()
    }

    /// Issues a fresh random key for a session served by `target`, to a
    /// client that came through VPC endpoint `vpce_id`. Fails, rather than
    /// issue a guessable key, when the OS has no random bytes.
    pub(crate) fn try_issue(
        &self,
        target: CancelTarget,
        vpce_id: Option<&str>,
    ) -> Result<IssuedKey, RandomError> {
        let reg = self.try_issue_idle(vpce_id)?;
        reg.attach(target);
        Ok(reg)
    }

    /// Issues a fresh random key, owned by this replica, for a client with
    /// no backend yet that came through VPC endpoint `vpce_id`. Fails,
    /// rather than issue a guessable key, when the OS has no random bytes.
    pub(crate) fn try_issue_idle(&self, vpce_id: Option<&str>) -> Result<IssuedKey, RandomError> {
        self.issue_idle_from(OS_RANDOM, vpce_id)
    }

    fn issue_idle_from(
        &self,
        source: RandomSource,
        vpce_id: Option<&str>,
    ) -> Result<IssuedKey, RandomError> {
        let mut map = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        // Ends: the map holds at most max_client_connections (≤ 1,000,000)
        // of the 2^23 pids, so a random one is free at least 88% of the time.
        loop {
            let (random, secret) = random_key(source)?;
            let pid = issued_pid(self.instance, random);
            if pid == 0 || map.contains_key(&pid) {
                continue;
            }
            let slot = Arc::new(Mutex::new(Slot::default()));
            map.insert(
                pid,
                Entry {
                    secret,
                    vpce_id: vpce_id.map(Arc::from),
                    slot: slot.clone(),
                },
            );
            return Ok(IssuedKey {
                map: self.clone(),
                key: CancelKey { pid, secret },
                slot,
            });
        }
    }

    /// The target for `key` now, when the secret matches and the request
    /// came through the endpoint the key was issued through (`vpce_id`:
    /// the request's); marks the checkout as cancelled.
    pub(crate) fn lookup(
        &self,
        key: CancelKey,
        vpce_id: Option<&str>,
    ) -> Result<CancelTarget, CancelOutcome> {
        let slot = {
            let map = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            let entry = map.get(&key.pid).ok_or(CancelOutcome::UnknownKey)?;
            // Both are 32-bit values compared once; the difference in timing
            // between a pid miss and a secret mismatch reveals only that a pid
            // is in use, which any client of this process can learn anyway.
            if entry.secret != key.secret {
                return Err(CancelOutcome::UnknownKey);
            }
            if let Some(issued) = &entry.vpce_id {
                if vpce_id != Some(&**issued) {
                    return Err(CancelOutcome::EndpointMismatch);
                }
            }
            entry.slot.clone()
        };
        let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
        let target = slot.target.ok_or(CancelOutcome::UnknownKey)?;
        slot.cancel_sent = true;
        Ok(target)
    }

    /// Sends the `CancelRequest` for `key`, which `from` sent, where it
    /// belongs: to the backend serving the client when the key is this
    /// replica's, to the owning peer when it is a peer's. `proxy` is this
    /// replica's `listen.proxy_protocol`; the peers share it, so with
    /// "required" a forwarded request starts with a PROXY v2 header
    /// carrying `from`'s address. Connecting to a peer and sending to it
    /// get `connect_timeout` together.
    pub(crate) async fn cancel(
        &self,
        key: CancelKey,
        from: &ClientInfo,
        connect_timeout: Duration,
        proxy: ProxyMode,
    ) -> CancelOutcome {
        if key.pid & FORWARDED_BIT != 0 {
            // A peer's forward: this replica is its last stop.
            let key = CancelKey {
                pid: key.pid & !FORWARDED_BIT,
                ..key
            };
            return self.cancel_local(key, from, connect_timeout).await;
        }
        match owner_of(key.pid) {
            Some(owner) if owner != self.instance => {
                self.forward(owner, key, from, connect_timeout, proxy).await
            }
            Some(owner) => match self.cancel_local(key, from, connect_timeout).await {
                // Another replica may have derived the same id.
                CancelOutcome::UnknownKey if self.peers.load().contains_key(&owner) => {
                    self.forward(owner, key, from, connect_timeout, proxy).await
                }
                outcome => outcome,
            },
            None => self.cancel_local(key, from, connect_timeout).await,
        }
    }

    async fn cancel_local(
        &self,
        key: CancelKey,
        from: &ClientInfo,
        connect_timeout: Duration,
    ) -> CancelOutcome {
        let target = match self.lookup(key, from.vpce_id.as_deref()) {
            Ok(target) => target,
            Err(outcome) => {
                if outcome == CancelOutcome::EndpointMismatch {
                    tracing::warn!(
                        client = %from.addr,
                        vpce_id = from.vpce_id.as_deref().unwrap_or(""),
                        "cancel request through another VPC endpoint than the key was issued through: dropped"
                    );
                }
                return outcome;
            }
        };
        match send_cancel(target, connect_timeout).await {
            Ok(()) => CancelOutcome::Forwarded,
            Err(e) => {
                tracing::warn!(backend = %target.addr, error = %e, "cancel request not delivered");
                CancelOutcome::BackendUnreachable
            }
        }
    }

    /// Sends `key`, marked as forwarded, on to every peer with id
    /// `owner`, at once; reports success when one of them took it.
    async fn forward(
        &self,
        owner: u8,
        key: CancelKey,
        from: &ClientInfo,
        connect_timeout: Duration,
        proxy: ProxyMode,
    ) -> CancelOutcome {
        let Some(addrs) = self.peers.load().get(&owner).cloned() else {
            tracing::debug!(owner, "cancel request for a replica that is not a peer");
            return CancelOutcome::UnknownPeer;
        };
        if !self.first_forward(key) {
            return CancelOutcome::RepeatedForward;
        }
        let header = (proxy == ProxyMode::Required).then(|| from.clone());
        let marked = CancelKey {
            pid: key.pid | FORWARDED_BIT,
            ..key
        };
        let mut sends = tokio::task::JoinSet::new();
        for addr in addrs {
            let header = header.clone();
            sends.spawn(async move {
                let send = send_to_peer(&addr, marked, header.as_ref());
                match tokio::time::timeout(connect_timeout, send).await {
                    Ok(Ok(())) => true,
                    Ok(Err(e)) => {
                        tracing::warn!(peer = %addr, owner, error = %e, "cancel request not delivered to peer");
                        false
                    }
                    Err(_) => {
                        tracing::warn!(peer = %addr, owner, "cancel request to peer timed out");
                        false
                    }
                }
            });
        }
        let mut delivered = false;
        while let Some(sent) = sends.join_next().await {
            delivered |= sent.unwrap_or(false);
        }
        if delivered {
            CancelOutcome::ForwardedToPeer
        } else {
            CancelOutcome::PeerUnreachable
        }
    }

    /// Records a forward of `key`; false when it was forwarded within
    /// [`REPEAT_WINDOW`].
    fn first_forward(&self, key: CancelKey) -> bool {
        let now = Instant::now();
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        while recent
            .front()
            .is_some_and(|(_, at)| now.duration_since(*at) > REPEAT_WINDOW)
        {
            recent.pop_front();
        }
        if recent.iter().any(|(k, _)| *k == key) {
            return false;
        }
        if recent.len() >= MAX_RECENT_FORWARDS {
            recent.pop_front();
        }
        recent.push_back((key, now));
        true
    }

    /// True when no key is registered.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of keys registered.
    pub(crate) fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl IssuedKey {
    /// The key to give the client.
    pub(crate) fn key(&self) -> CancelKey {
        self.key
    }

    /// Cancels from now on go to `target` (a backend was checked out).
    pub(crate) fn attach(&self, target: CancelTarget) {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        slot.target = Some(target);
        slot.cancel_sent = false;
    }

    /// Cancels from now on do nothing (the backend is being handed back).
    /// Returns true when a cancel was sent during the checkout: that
    /// backend must then be closed, not reused.
    pub(crate) fn detach(&self) -> bool {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        slot.target = None;
        std::mem::take(&mut slot.cancel_sent)
    }
}

impl Drop for IssuedKey {
    fn drop(&mut self) {
        self.map
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key.pid);
    }
}

/// Sends `target` its `CancelRequest`.
pub(crate) async fn send_cancel(
    target: CancelTarget,
    connect_timeout: Duration,
) -> std::io::Result<()> {
    let mut stream = tokio::time::timeout(connect_timeout, TcpStream::connect(target.addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let mut buf = BytesMut::with_capacity(16);
    target.key.encode_cancel_request(&mut buf);
    stream.write_all(&buf).await?;
    stream.shutdown().await
}

/// Sends a `CancelRequest` (after a PROXY v2 header for `header`'s client,
/// when given) to a peer's data port. Not bounded in time: the caller is.
async fn send_to_peer(
    addr: &str,
    key: CancelKey,
    header: Option<&ClientInfo>,
) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    let mut buf = BytesMut::with_capacity(128);
    if let Some(client) = header {
        buf.extend_from_slice(&proxy_protocol::build::v2_proxy(
            client.addr,
            stream.peer_addr()?,
            client.vpce_id.as_deref(),
        ));
    }
    key.encode_cancel_request(&mut buf);
    stream.write_all(&buf).await?;
    stream.shutdown().await
}

/// The process id issued by replica `instance` with random bits `random`.
fn issued_pid(instance: u8, random: i32) -> i32 {
    (i32::from(instance) << PID_RANDOM_BITS) | (random & PID_RANDOM_MASK)
}

/// The replica that issued `pid`; none for pids pgcell never issues
/// (zero or negative).
pub(crate) fn owner_of(pid: i32) -> Option<u8> {
    // pid > 0, so the shifted value is at most 255.
    (pid > 0).then_some((pid >> PID_RANDOM_BITS) as u8)
}

fn random_key(source: RandomSource) -> Result<(i32, i32), RandomError> {
    let mut bytes = [0u8; 8];
    fill_random_from(source, &mut bytes, "cancel key")?;
    let pid = i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let secret = i32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    Ok((pid, secret))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn no_key_without_random_bytes() {
        fn broken(_: &mut [u8]) -> Result<(), getrandom::Error> {
            Err(getrandom::Error::UNSUPPORTED)
        }
        let map = CancelMap::default();
        let e = map.issue_idle_from(broken, None).err().unwrap();
        assert_eq!(
            e.to_string(),
            format!("could not generate random cancel key: {}", e.source)
        );
        assert!(map.is_empty());
    }

    #[test]
    fn keys_map_and_expire() {
        let map = CancelMap::default();
        let target = CancelTarget {
            addr: "127.0.0.1:5432".parse().unwrap(),
            key: CancelKey { pid: 42, secret: 7 },
        };
        let reg = map.try_issue(target, None).unwrap();
        let key = reg.key();
        assert!(key.pid > 0);
        assert_eq!(map.lookup(key, None), Ok(target));
        assert_eq!(
            map.lookup(
                CancelKey {
                    pid: key.pid,
                    secret: key.secret.wrapping_add(1)
                },
                None
            ),
            Err(CancelOutcome::UnknownKey)
        );
        assert!(reg.detach(), "the lookup above counts as a cancel");
        assert_eq!(
            map.lookup(key, None),
            Err(CancelOutcome::UnknownKey),
            "idle: nothing to cancel"
        );
        assert!(!reg.detach());
        reg.attach(target);
        drop(reg);
        assert_eq!(map.lookup(key, None), Err(CancelOutcome::UnknownKey));
        assert!(map.is_empty());
    }

    #[test]
    fn keys_cancel_only_through_the_endpoint_they_were_issued_through() {
        let map = CancelMap::default();
        let target = CancelTarget {
            addr: "127.0.0.1:5432".parse().unwrap(),
            key: CancelKey { pid: 42, secret: 7 },
        };
        let reg = map
            .try_issue(target, Some("vpce-0aaaaaaaaaaaaaaaa"))
            .unwrap();
        let key = reg.key();
        for other in [None, Some("vpce-0bbbbbbbbbbbbbbbb"), Some("")] {
            assert_eq!(
                map.lookup(key, other),
                Err(CancelOutcome::EndpointMismatch),
                "{other:?}"
            );
        }
        assert!(!reg.detach(), "a refused request cancels nothing");
        reg.attach(target);
        assert_eq!(map.lookup(key, Some("vpce-0aaaaaaaaaaaaaaaa")), Ok(target));
        // A key issued without an endpoint is not bound.
        let open = map.try_issue(target, None).unwrap();
        assert_eq!(
            map.lookup(open.key(), Some("vpce-0bbbbbbbbbbbbbbbb")),
            Ok(target)
        );
    }

    fn client(addr: &str) -> ClientInfo {
        ClientInfo {
            addr: addr.parse().unwrap(),
            vpce_id: Some("vpce-0123456789abcdef0".into()),
            tls: false,
            sni: None,
            tls_end_point: None,
        }
    }

    fn map(instance_id: u8, peers: &[(u8, String)]) -> CancelMap {
        CancelMap::new(&CancelConfig {
            instance_id,
            auto_instance_id: false,
            peers: peers
                .iter()
                .map(|(id, addr)| CancelPeer {
                    id: *id,
                    addr: addr.clone(),
                })
                .collect(),
        })
    }

    #[test]
    fn issued_pids_name_their_owner() {
        for instance in [0u8, 1, 2, 127, 128, 254, 255] {
            let map = map(instance, &[]);
            let regs: Vec<IssuedKey> = (0..64).map(|_| map.try_issue_idle(None).unwrap()).collect();
            for reg in &regs {
                let key = reg.key();
                assert!(key.pid > 0, "{key:?}");
                assert_eq!(owner_of(key.pid), Some(instance), "{key:?}");
            }
            let pids: std::collections::HashSet<i32> = regs.iter().map(|r| r.key().pid).collect();
            let secrets: std::collections::HashSet<i32> =
                regs.iter().map(|r| r.key().secret).collect();
            assert_eq!(pids.len(), 64, "pids are unique");
            assert!(secrets.len() > 60, "secrets are random");
            let low_bits: std::collections::HashSet<i32> =
                pids.iter().map(|p| p & PID_RANDOM_MASK).collect();
            assert!(low_bits.len() > 60, "the pid's low bits are random");
        }
        assert_eq!(issued_pid(255, -1), i32::MAX);
        assert_eq!(issued_pid(0, 0), 0, "register_idle skips this one");
        assert_eq!(owner_of(0), None);
        assert_eq!(owner_of(-1), None);
        assert_eq!(owner_of(i32::MIN), None);
        assert_eq!(owner_of(1), Some(0));
        assert_eq!(owner_of(3 << 23), Some(3));
    }

    #[tokio::test]
    async fn foreign_keys_go_to_their_peer_once() {
        let peer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer_addr = peer.local_addr().unwrap();
        let map = map(1, &[(2, peer_addr.to_string())]);
        let from = client("10.9.8.7:4321");
        let timeout = Duration::from_secs(5);
        let key = CancelKey {
            pid: issued_pid(2, 12345),
            secret: 77,
        };

        let receive = tokio::spawn(async move {
            let (mut s, _) = peer.accept().await.unwrap();
            let mut got = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut s, &mut got)
                .await
                .unwrap();
            got
        });
        let outcome = map.cancel(key, &from, timeout, ProxyMode::Required).await;
        assert_eq!(outcome, CancelOutcome::ForwardedToPeer);
        let got = receive.await.unwrap();
        let (header, request) = got.split_at(got.len() - 16);
        assert_eq!(
            proxy_protocol::parse_v2(header).unwrap(),
            proxy_protocol::ProxyHeader::Proxy {
                source: Some(from.addr),
                vpce_id: from.vpce_id.clone(),
                version: 2
            }
        );
        // The key goes on marked as forwarded.
        let mut want = BytesMut::new();
        CancelKey {
            pid: key.pid | FORWARDED_BIT,
            ..key
        }
        .encode_cancel_request(&mut want);
        assert_eq!(request, &want[..]);

        // The same key again at once: not forwarded (the loop guard).
        assert_eq!(
            map.cancel(key, &from, timeout, ProxyMode::Required).await,
            CancelOutcome::RepeatedForward
        );
        // An owner that is not a peer: dropped, nothing sent.
        let stranger = CancelKey {
            pid: issued_pid(3, 12345),
            secret: 77,
        };
        assert_eq!(
            map.cancel(stranger, &from, timeout, ProxyMode::Off).await,
            CancelOutcome::UnknownPeer
        );
        // This replica's own id: never forwarded, whatever the peers say.
        let own = CancelKey {
            pid: issued_pid(1, 12345),
            secret: 77,
        };
        assert_eq!(
            map.cancel(own, &from, timeout, ProxyMode::Off).await,
            CancelOutcome::UnknownKey
        );
        // Reloaded peers apply at once; a peer that is down is reported.
        map.set_peers(&[CancelPeer {
            id: 3,
            addr: peer_addr.to_string(),
        }]);
        assert_eq!(
            map.cancel(stranger, &from, timeout, ProxyMode::Off).await,
            CancelOutcome::PeerUnreachable
        );
        let key2 = CancelKey {
            pid: issued_pid(2, 1),
            secret: 1,
        };
        assert_eq!(
            map.cancel(key2, &from, timeout, ProxyMode::Off).await,
            CancelOutcome::UnknownPeer
        );
    }

    #[tokio::test]
    async fn without_proxy_header_only_the_request_is_sent() {
        let peer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let map = map(0, &[(9, peer.local_addr().unwrap().to_string())]);
        let key = CancelKey {
            pid: issued_pid(9, 5),
            secret: -3,
        };
        let receive = tokio::spawn(async move {
            let (mut s, _) = peer.accept().await.unwrap();
            let mut got = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut s, &mut got)
                .await
                .unwrap();
            got
        });
        let from = client("127.0.0.1:1");
        let outcome = map
            .cancel(key, &from, Duration::from_secs(5), ProxyMode::Optional)
            .await;
        assert_eq!(outcome, CancelOutcome::ForwardedToPeer);
        let mut want = BytesMut::new();
        CancelKey {
            pid: key.pid | FORWARDED_BIT,
            ..key
        }
        .encode_cancel_request(&mut want);
        assert_eq!(receive.await.unwrap(), want.to_vec());
    }

    /// Accepts one connection on `peer` and returns the key it was sent.
    fn receive_one(peer: tokio::net::TcpListener) -> tokio::task::JoinHandle<CancelKey> {
        tokio::spawn(async move {
            let (mut s, _) = peer.accept().await.unwrap();
            let mut got = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut s, &mut got)
                .await
                .unwrap();
            assert_eq!(got.len(), 16);
            CancelKey {
                pid: i32::from_be_bytes(got[8..12].try_into().unwrap()),
                secret: i32::from_be_bytes(got[12..16].try_into().unwrap()),
            }
        })
    }

    #[tokio::test]
    async fn colliding_ids_fan_out_one_hop() {
        let (a, b) = (
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        );
        let peers = [
            (5, a.local_addr().unwrap().to_string()),
            (5, b.local_addr().unwrap().to_string()),
        ];
        let (got_a, got_b) = (receive_one(a), receive_one(b));
        let from = client("127.0.0.1:1");
        let timeout = Duration::from_secs(5);
        // This replica shares id 5 with both peers and misses the key: it
        // asks both, marked.
        let map = map(5, &peers);
        assert_eq!(map.peer_count(), 2);
        let key = CancelKey {
            pid: issued_pid(5, 99),
            secret: 4,
        };
        let outcome = map.cancel(key, &from, timeout, ProxyMode::Off).await;
        assert_eq!(outcome, CancelOutcome::ForwardedToPeer);
        let marked = CancelKey {
            pid: key.pid | FORWARDED_BIT,
            ..key
        };
        assert_eq!(got_a.await.unwrap(), marked);
        assert_eq!(got_b.await.unwrap(), marked);

        // A marked key is only looked up here, never forwarded again.
        let other = CancelKey {
            pid: issued_pid(5, 100) | FORWARDED_BIT,
            secret: 4,
        };
        assert_eq!(
            map.cancel(other, &from, timeout, ProxyMode::Off).await,
            CancelOutcome::UnknownKey
        );
        // A marked key this replica holds reaches its backend.
        let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = CancelTarget {
            addr: backend.local_addr().unwrap(),
            key: CancelKey { pid: 42, secret: 7 },
        };
        let got_backend = receive_one(backend);
        let reg = map.try_issue(target, None).unwrap();
        let held = CancelKey {
            pid: reg.key().pid | FORWARDED_BIT,
            ..reg.key()
        };
        assert_eq!(
            map.cancel(held, &from, timeout, ProxyMode::Off).await,
            CancelOutcome::Forwarded
        );
        assert_eq!(got_backend.await.unwrap(), target.key);
        // Without peers sharing its id, a miss is just a miss.
        let alone = super::tests::map(6, &peers);
        let own = CancelKey {
            pid: issued_pid(6, 1),
            secret: 1,
        };
        assert_eq!(
            alone.cancel(own, &from, timeout, ProxyMode::Off).await,
            CancelOutcome::UnknownKey
        );
    }

    #[test]
    fn derived_ids_spread() {
        let ids: std::collections::HashSet<u8> = (0..=255u8)
            .map(|last| instance_id_of(IpAddr::from([10, 0, 3, last])))
            .collect();
        assert!(ids.len() > 150, "{}", ids.len());
        assert_eq!(
            instance_id_of("10.0.3.7".parse().unwrap()),
            instance_id_of("10.0.3.7".parse().unwrap())
        );
        assert_ne!(
            instance_id_of("10.0.3.7".parse().unwrap()),
            instance_id_of("10.0.4.7".parse().unwrap())
        );
    }
}
