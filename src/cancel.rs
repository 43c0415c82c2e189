//! Cancel keys: pgcell gives each client its own `BackendKeyData` and maps
//! it to the key of the backend serving that client, so a `CancelRequest`
//! reaches the right backend process and nothing else.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::protocol::startup::CancelKey;

/// Where a cancel for one client goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelTarget {
    /// The backend's address.
    pub addr: SocketAddr,
    /// The backend's own key for the session.
    pub key: CancelKey,
}

/// The cancel keys issued by this process.
#[derive(Debug, Default, Clone)]
pub struct CancelMap {
    inner: Arc<Mutex<HashMap<i32, Entry>>>,
}

/// A key's secret and where its cancels go.
type Entry = (i32, Arc<Mutex<Slot>>);

/// Where one client's cancels go right now.
///
/// A pooled client has a backend only while it runs a transaction (or for
/// its session); between, a cancel has nothing to do. When a cancel was
/// sent during a checkout, that backend must not serve anyone else: the
/// signal may land after the hand-over. [`Registration::detach`] reports it
/// so the pool closes that backend instead.
#[derive(Debug, Default)]
struct Slot {
    target: Option<CancelTarget>,
    cancel_sent: bool,
}

/// Keeps a key registered; the key is forgotten when this drops.
#[derive(Debug)]
pub struct Registration {
    map: CancelMap,
    key: CancelKey,
    slot: Arc<Mutex<Slot>>,
}

/// What became of a `CancelRequest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// Sent on to the backend.
    Forwarded,
    /// No session holds this key.
    UnknownKey,
    /// The backend could not be reached.
    BackendUnreachable,
}

impl CancelOutcome {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            CancelOutcome::Forwarded => "forwarded",
            CancelOutcome::UnknownKey => "unknown_key",
            CancelOutcome::BackendUnreachable => "backend_unreachable",
        }
    }
}

impl CancelMap {
    /// Issues a fresh random key for a session served by `target`.
    pub fn register(&self, target: CancelTarget) -> Registration {
        let reg = self.register_idle();
        reg.attach(target);
        reg
    }

    /// Issues a fresh random key for a client with no backend yet.
    pub fn register_idle(&self) -> Registration {
        let mut map = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let (pid, secret) = random_key();
            // Positive pids look like real ones to clients that print them.
            let pid = pid & i32::MAX;
            if pid == 0 || map.contains_key(&pid) {
                continue;
            }
            let slot = Arc::new(Mutex::new(Slot::default()));
            map.insert(pid, (secret, slot.clone()));
            return Registration {
                map: self.clone(),
                key: CancelKey { pid, secret },
                slot,
            };
        }
    }

    /// The target for `key` now, when the secret matches; marks the
    /// checkout as cancelled.
    pub fn lookup(&self, key: CancelKey) -> Option<CancelTarget> {
        let slot = {
            let map = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            let (secret, slot) = map.get(&key.pid)?;
            // Both are 32-bit values compared once; the difference in timing
            // between a pid miss and a secret mismatch reveals only that a pid
            // is in use, which any client of this process can learn anyway.
            if *secret != key.secret {
                return None;
            }
            slot.clone()
        };
        let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
        let target = slot.target?;
        slot.cancel_sent = true;
        Some(target)
    }

    /// Looks `key` up and sends the backend its `CancelRequest`.
    pub async fn cancel(&self, key: CancelKey, connect_timeout: Duration) -> CancelOutcome {
        let Some(target) = self.lookup(key) else {
            return CancelOutcome::UnknownKey;
        };
        match send_cancel(target, connect_timeout).await {
            Ok(()) => CancelOutcome::Forwarded,
            Err(e) => {
                tracing::warn!(backend = %target.addr, error = %e, "cancel request not delivered");
                CancelOutcome::BackendUnreachable
            }
        }
    }

    /// Number of keys registered.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// True when no key is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Registration {
    /// The key to give the client.
    pub fn key(&self) -> CancelKey {
        self.key
    }

    /// Cancels from now on go to `target` (a backend was checked out).
    pub fn attach(&self, target: CancelTarget) {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        slot.target = Some(target);
        slot.cancel_sent = false;
    }

    /// Cancels from now on do nothing (the backend is being handed back).
    /// Returns true when a cancel was sent during the checkout: that
    /// backend must then be closed, not reused.
    pub fn detach(&self) -> bool {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        slot.target = None;
        std::mem::take(&mut slot.cancel_sent)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.map
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key.pid);
    }
}

async fn send_cancel(target: CancelTarget, connect_timeout: Duration) -> std::io::Result<()> {
    let mut stream = tokio::time::timeout(connect_timeout, TcpStream::connect(target.addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let mut buf = BytesMut::with_capacity(16);
    target.key.encode_cancel_request(&mut buf);
    stream.write_all(&buf).await?;
    stream.shutdown().await
}

fn random_key() -> (i32, i32) {
    let mut bytes = [0u8; 8];
    // getrandom fails only when the OS has no entropy source at all; a
    // time-based fallback keeps keys unique, though guessable, there.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        bytes = (nanos as u64).to_le_bytes();
    }
    let pid = i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let secret = i32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    (pid, secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_and_expire() {
        let map = CancelMap::default();
        let target = CancelTarget {
            addr: "127.0.0.1:5432".parse().unwrap(),
            key: CancelKey { pid: 42, secret: 7 },
        };
        let reg = map.register(target);
        let key = reg.key();
        assert!(key.pid > 0);
        assert_eq!(map.lookup(key), Some(target));
        assert_eq!(
            map.lookup(CancelKey {
                pid: key.pid,
                secret: key.secret.wrapping_add(1)
            }),
            None
        );
        assert!(reg.detach(), "the lookup above counts as a cancel");
        assert_eq!(map.lookup(key), None, "idle: nothing to cancel");
        assert!(!reg.detach());
        reg.attach(target);
        drop(reg);
        assert_eq!(map.lookup(key), None);
        assert!(map.is_empty());
    }
}
