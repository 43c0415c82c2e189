//! Opening a connection to one of a tenant's backends ([`connect`]): the
//! servers its topology puts first for what the client wants, TCP
//! keepalive, and TLS when the tenant asks for it.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::topology::{NoServer, Target, Topology};
use crate::config::split_host_port;
use crate::protocol::startup::SSL_REQUEST_CODE;
use crate::stream::MaybeTls;

/// Where a tenant's backends are and how to reach them: what
/// [`connect`] needs of a tenant (`tenant::Tenant::targets`).
#[derive(Clone, Copy)]
pub(crate) struct Targets<'a> {
    /// The tenant's servers and what is known of them.
    pub topology: &'a Topology,
    /// What the client wants.
    pub target: Target,
    /// Only replicas that have replayed what was committed before this
    /// (read-your-writes); none: any fit replica.
    pub fresh_after: Option<std::time::Instant>,
    /// TLS towards the backends, when enabled.
    pub tls: Option<&'a std::sync::Arc<rustls::ClientConfig>>,
    /// The name TLS verifies instead of each backend's host.
    pub server_name: Option<&'a str>,
}

/// A connection to a backend, plaintext or TLS.
pub(crate) type BackendStream = MaybeTls<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;

/// An open backend connection.
pub(crate) struct Backend {
    /// The stream.
    pub stream: BackendStream,
    /// The address it is connected to (for cancel requests).
    pub addr: SocketAddr,
    /// Which of the topology's servers.
    pub server: usize,
    /// Connected as the fallback (the primary for a replica client).
    pub fallback: bool,
}

/// No backend could be reached.
#[derive(Debug, Error)]
pub(crate) enum ConnectError {
    /// Every address failed; the last failure is kept.
    #[error("no backend reachable (tried {tried}): {last}")]
    Unreachable {
        /// Number of addresses tried.
        tried: usize,
        /// The last error.
        last: String,
    },
    /// The backend declined TLS that the tenant requires.
    #[error("backend {0} does not accept TLS")]
    TlsDeclined(SocketAddr),
    /// No server may serve this client now.
    #[error(transparent)]
    NoServer(#[from] NoServer),
    /// The TLS handshake with the backend failed.
    #[error("TLS to backend {addr} failed: {error}")]
    Tls {
        /// The backend.
        addr: SocketAddr,
        /// What failed.
        error: io::Error,
    },
}

/// Connects to the first reachable server of `targets`, in the order its
/// topology gives for the client's target. Roles are not confirmed here
/// (a passthrough client's own login shows them); pooled backends confirm
/// theirs at login (`server::ServerConn::open`).
pub(crate) async fn connect(
    targets: Targets<'_>,
    connect_timeout: Duration,
    keepalive: Duration,
) -> Result<Backend, ConnectError> {
    let mut tried = 0;
    let mut last = String::from("no addresses");
    for (server, fallback) in targets
        .topology
        .candidates_fresh(targets.target, targets.fresh_after)?
    {
        match connect_server(targets, server, connect_timeout, keepalive).await {
            Ok((stream, addr)) => {
                return Ok(Backend {
                    stream,
                    addr,
                    server,
                    fallback,
                })
            }
            Err(ConnectError::Unreachable { tried: n, last: l }) => {
                tried += n;
                last = l;
            }
            Err(e) => return Err(e),
        }
    }
    Err(ConnectError::Unreachable { tried, last })
}

/// Connects to server `server` of `targets` (each address its name
/// resolves to, in turn).
pub(crate) async fn connect_server(
    targets: Targets<'_>,
    server: usize,
    connect_timeout: Duration,
    keepalive: Duration,
) -> Result<(BackendStream, SocketAddr), ConnectError> {
    let target = &targets.topology.servers()[server].addr;
    let unreachable = |tried, last| ConnectError::Unreachable { tried, last };
    let Some((host, port)) = split_host_port(target) else {
        return Err(unreachable(0, format!("{target}: not host:port")));
    };
    let addrs =
        match tokio::time::timeout(connect_timeout, tokio::net::lookup_host((host, port))).await {
            Ok(Ok(addrs)) => addrs.collect::<Vec<_>>(),
            Ok(Err(e)) => return Err(unreachable(1, format!("{target}: {e}"))),
            Err(_) => return Err(unreachable(1, format!("{target}: name lookup timed out"))),
        };
    let mut tried = 0;
    let mut last = format!("{target}: no addresses");
    for addr in addrs {
        tried += 1;
        match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => {
                set_socket_options(&tcp, keepalive);
                let stream = match targets.tls {
                    None => MaybeTls::Plain(tcp),
                    Some(config) => {
                        let name = targets.server_name.unwrap_or(host);
                        // A backend that accepts TCP and then goes silent
                        // must not hold the client: the TLS setup counts
                        // against the connect timeout too.
                        tokio::time::timeout(
                            connect_timeout,
                            start_tls(tcp, addr, name, config.clone()),
                        )
                        .await
                        .map_err(|_| ConnectError::Tls {
                            addr,
                            error: io::Error::new(io::ErrorKind::TimedOut, "TLS setup timed out"),
                        })??
                    }
                };
                return Ok((stream, addr));
            }
            Ok(Err(e)) => last = format!("{addr}: {e}"),
            Err(_) => last = format!("{addr}: connect timed out"),
        }
    }
    Err(unreachable(tried, last))
}

/// Seconds between unanswered keepalive probes.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered probes before the peer is declared gone.
const KEEPALIVE_PROBES: u32 = 3;

/// `TCP_NODELAY` (the protocol is request/response) and keepalive well
/// under the NLB's 350 s idle timeout.
///
/// Keepalive only probes a connection with nothing unacknowledged in
/// flight; a peer that vanishes while pgcell still has bytes on their way
/// to it (a result being written, or the last ReadyForQuery not yet
/// acknowledged) would instead be retransmitted to for the kernel's
/// `tcp_retries2` (about 15 minutes). `TCP_USER_TIMEOUT` set to the same
/// budget as the probes closes that gap, so a vanished peer is found
/// within `keepalive + 30 s` whatever it was doing. A live reader with a
/// full window answers zero-window probes and is not affected.
///
/// Set on the data port's listening socket once, these reach every
/// accepted client connection (Linux copies them to the accepted socket,
/// keepalive timer included), so accepting costs no `setsockopt`; backend
/// connections get them one by one.
pub(crate) fn set_socket_options<S: std::os::fd::AsFd>(tcp: &S, keepalive: Duration) {
    let sock = SockRef::from(tcp);
    if let Err(e) = sock.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY");
    }
    let ka = TcpKeepalive::new()
        .with_time(keepalive)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    if let Err(e) = sock.set_tcp_keepalive(&ka) {
        tracing::debug!(error = %e, "could not set TCP keepalive");
    }
    #[cfg(target_os = "linux")]
    if let Err(e) =
        sock.set_tcp_user_timeout(Some(keepalive + KEEPALIVE_INTERVAL * KEEPALIVE_PROBES))
    {
        tracing::debug!(error = %e, "could not set TCP_USER_TIMEOUT");
    }
}

async fn start_tls(
    mut tcp: TcpStream,
    addr: SocketAddr,
    name: &str,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> Result<BackendStream, ConnectError> {
    let tls_error = |error| ConnectError::Tls { addr, error };
    let mut request = [0u8; 8];
    request[..4].copy_from_slice(&8u32.to_be_bytes());
    request[4..].copy_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
    tcp.write_all(&request).await.map_err(tls_error)?;
    match tcp.read_u8().await.map_err(tls_error)? {
        b'S' => {}
        _ => return Err(ConnectError::TlsDeclined(addr)),
    }
    let server_name = rustls::pki_types::ServerName::try_from(name.to_owned())
        .map_err(|e| tls_error(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    let stream = TlsConnector::from(config)
        .connect(server_name, tcp)
        .await
        .map_err(tls_error)?;
    Ok(MaybeTls::Tls(Box::new(stream)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The data port sets the options on its listening socket only: each
    /// accepted connection must come out with all of them.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn accepted_sockets_inherit_the_listeners_options() {
        let keepalive = Duration::from_secs(37);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        set_socket_options(&listener, keepalive);
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let sock = SockRef::from(&accepted);
        assert!(sock.nodelay().unwrap(), "TCP_NODELAY");
        assert!(sock.keepalive().unwrap(), "SO_KEEPALIVE");
        assert_eq!(sock.keepalive_time().unwrap(), keepalive);
        assert_eq!(sock.keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(sock.keepalive_retries().unwrap(), KEEPALIVE_PROBES);
        assert_eq!(
            sock.tcp_user_timeout().unwrap(),
            Some(keepalive + KEEPALIVE_INTERVAL * KEEPALIVE_PROBES)
        );
        // A socket accepted from a listener without them has none.
        let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(plain.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = plain.accept().await.unwrap();
        let sock = SockRef::from(&accepted);
        assert!(!sock.nodelay().unwrap());
        assert!(!sock.keepalive().unwrap());
    }
}
