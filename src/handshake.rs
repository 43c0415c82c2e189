//! Pre-startup negotiation: PROXY header, then a loop over typed packets
//! (`SSLRequest`, `GSSENCRequest`, `CancelRequest`, direct TLS) until a
//! `StartupMessage` arrives.
//!
//! Each encryption request is honoured at most once, plaintext read ahead of
//! a TLS handshake is refused (CVE-2021-23214), and the whole negotiation
//! runs against one deadline so a silent or byte-at-a-time client cannot
//! hold a slot.

use std::io;
use std::net::SocketAddr;

use bytes::BytesMut;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout_at, Instant};

use crate::config::TlsMode;
use crate::protocol::messages;
use crate::protocol::startup::{self, CancelKey, FrontendStartup, StartupError, StartupMessage};
use crate::protocol::{ClientError, SqlState};
use crate::proxy_protocol::{self, ProxyError, ProxyHeader, ProxyMode};
use crate::stream::{MaybeTls, Prefixed};
use crate::tenant::ClientInfo;
use crate::tls::{ServerTls, ALPN_POSTGRESQL};

/// First byte of a TLS handshake record: a direct-TLS ClientHello.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The client side of a connection: plaintext, or TLS terminated by pgcell.
pub(crate) type ClientStream<S> =
    MaybeTls<Prefixed<S>, tokio_rustls::server::TlsStream<Prefixed<S>>>;

/// What the negotiation settles on.
pub(crate) enum Negotiated<S> {
    /// A load balancer's own connection (PROXY v2 `LOCAL`): close quietly.
    LoadBalancerCheck,
    /// A `CancelRequest`; the connection carries nothing else. The stream
    /// is closed once the cancel is handled: over TLS with close_notify,
    /// as PostgreSQL does (libpq reports a bare EOF as an SSL error).
    Cancel(CancelKey, ClientInfo, ClientStream<S>),
    /// A client ready to be routed.
    Startup {
        /// The client stream, TLS or not.
        stream: ClientStream<S>,
        /// The `StartupMessage`, `_pq_.` options removed.
        startup: StartupMessage,
        /// Who the client is.
        client: ClientInfo,
    },
}

/// Settings the negotiation needs.
pub(crate) struct HandshakeConfig<'a> {
    /// PROXY protocol expectation.
    pub proxy: ProxyMode,
    /// Client TLS policy.
    pub tls_mode: TlsMode,
    /// Server TLS, unless disabled.
    pub tls: Option<&'a ServerTls>,
    /// When the `StartupMessage` must be complete.
    pub deadline: Instant,
}

/// Why negotiation failed.
#[derive(Debug, Error)]
pub(crate) enum HandshakeError {
    /// The PROXY header was missing, unexpected or malformed.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    /// A malformed or unsupported pre-startup packet.
    #[error(transparent)]
    Startup(#[from] StartupError),
    /// The deadline passed.
    #[error("timeout expired before a complete startup packet")]
    Timeout,
    /// The TLS handshake failed.
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
    /// Direct TLS without ALPN `postgresql`.
    #[error("direct TLS connection without ALPN protocol \"postgresql\"")]
    DirectTlsWithoutAlpn,
    /// Direct TLS while TLS is disabled.
    #[error("direct TLS connection while TLS is disabled")]
    TlsUnavailable,
    /// A second `SSLRequest` or `GSSENCRequest`, or one inside TLS.
    #[error("repeated encryption request")]
    RepeatedEncryptionRequest,
    /// Bytes were sent after `SSLRequest` before the server's answer.
    #[error("received unencrypted data after SSL request")]
    DataAfterSslRequest,
    /// A plaintext `StartupMessage` while `tls.mode = "require"`.
    #[error("plaintext connection refused: TLS is required")]
    PlaintextRefused,
    /// `StartupMessage` without `user`.
    #[error("no user name in startup packet")]
    NoUser,
    /// The client closed or the socket failed.
    #[error("connection lost during startup: {0}")]
    Io(#[from] io::Error),
}

impl HandshakeError {
    /// Metric label.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            HandshakeError::Proxy(_) => "proxy_protocol",
            HandshakeError::Tls(_)
            | HandshakeError::DirectTlsWithoutAlpn
            | HandshakeError::TlsUnavailable => "tls",
            HandshakeError::Timeout => "timeout",
            HandshakeError::Io(_) => "io",
            HandshakeError::PlaintextRefused => "plaintext_refused",
            HandshakeError::Startup(_)
            | HandshakeError::RepeatedEncryptionRequest
            | HandshakeError::DataAfterSslRequest
            | HandshakeError::NoUser => "startup",
        }
    }

    /// What the client is told, if it can be told anything.
    ///
    /// Where PostgreSQL's postmaster (`ProcessStartupPacket`) closes without
    /// a reply, so does pgcell: a length outside 8..=10,004 ("invalid length
    /// of startup packet", e.g. node-postgres' Terminate sent before any
    /// startup), a `CancelRequest` of the wrong length, and the startup
    /// timeout (`authentication_timeout`, which exits silently). Drivers
    /// rely on that silence; the metric and log line still record them.
    pub(crate) fn client_error(&self) -> Option<ClientError> {
        let violation = |m: String| Some(ClientError::fatal(SqlState::PROTOCOL_VIOLATION, m));
        match self {
            HandshakeError::Startup(StartupError::UnsupportedProtocol(..)) => Some(
                ClientError::fatal(SqlState::FEATURE_NOT_SUPPORTED, self.to_string()),
            ),
            HandshakeError::Startup(
                StartupError::TooShort(_)
                | StartupError::TooLong(_)
                | StartupError::InvalidCancelLength(_),
            )
            | HandshakeError::Timeout => None,
            HandshakeError::Startup(e) => violation(e.to_string()),
            HandshakeError::RepeatedEncryptionRequest
            | HandshakeError::DataAfterSslRequest
            | HandshakeError::DirectTlsWithoutAlpn => violation(self.to_string()),
            HandshakeError::PlaintextRefused => Some(
                ClientError::fatal(
                    SqlState::CONNECTION_REJECTED,
                    "this server accepts TLS connections only",
                )
                .hint("Connect with sslmode=require (or stricter)."),
            ),
            HandshakeError::NoUser => Some(ClientError::fatal(
                SqlState::INVALID_AUTHORIZATION,
                "no PostgreSQL user name specified in startup packet",
            )),
            // Not a Postgres client, or nothing can reach it.
            HandshakeError::Proxy(_)
            | HandshakeError::Tls(_)
            | HandshakeError::TlsUnavailable
            | HandshakeError::Io(_) => None,
        }
    }
}

/// Runs the negotiation on a fresh connection from `peer`.
///
/// On failure the client is sent an `ErrorResponse` when that is possible
/// and useful. Not cancel safe.
pub(crate) async fn negotiate<S>(
    mut io: S,
    peer: SocketAddr,
    cfg: &HandshakeConfig<'_>,
) -> Result<Negotiated<S>, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let preface = match timeout_at(
        cfg.deadline,
        proxy_protocol::read_preface(&mut io, cfg.proxy),
    )
    .await
    {
        // A peer that closes before sending anything is a disconnect, not a
        // PROXY protocol error (TCP probes do this).
        Ok(Err(ProxyError::Io(e))) => return Err(HandshakeError::Io(e)),
        Ok(preface) => preface?,
        Err(_) => {
            let err = HandshakeError::Timeout;
            tell_client(&mut io, &err).await;
            return Err(err);
        }
    };
    let mut client = ClientInfo {
        addr: peer,
        vpce_id: None,
        tls: false,
        sni: None,
        tls_end_point: None,
    };
    match preface.header {
        Some(ProxyHeader::Local { version }) => {
            let v = if version == 1 { "1" } else { "2" };
            metrics::counter!(crate::metrics::PROXY_HEADERS, "version" => v, "command" => "local")
                .increment(1);
            return Ok(Negotiated::LoadBalancerCheck);
        }
        Some(ProxyHeader::Proxy {
            source,
            vpce_id,
            version,
        }) => {
            let v = if version == 1 { "1" } else { "2" };
            metrics::counter!(crate::metrics::PROXY_HEADERS, "version" => v, "command" => "proxy")
                .increment(1);
            client.addr = source.unwrap_or(peer);
            client.vpce_id = vpce_id;
        }
        None => {}
    }
    let stream = MaybeTls::Plain(Prefixed::new(preface.read_ahead, io));
    match negotiate_packets(stream, client, cfg).await {
        Ok(n) => Ok(n),
        Err((stream, err)) => {
            if let Some(mut stream) = stream {
                tell_client(&mut stream, &err).await;
            }
            Err(err)
        }
    }
}

/// Sends `err`'s `ErrorResponse`, if it has one. Best effort, and bounded:
/// the client may not be reading.
async fn tell_client<W: AsyncWrite + Unpin>(stream: &mut W, err: &HandshakeError) {
    let Some(error) = err.client_error() else {
        return;
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), error.send(stream)).await;
}

type Failed<S> = (Option<ClientStream<S>>, HandshakeError);

async fn negotiate_packets<S>(
    mut stream: ClientStream<S>,
    mut client: ClientInfo,
    cfg: &HandshakeConfig<'_>,
) -> Result<Negotiated<S>, Failed<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let tls = cfg.tls.filter(|_| cfg.tls_mode != TlsMode::Disable);
    let mut first = true;
    let mut ssl_tried = false;
    let mut gss_tried = false;
    loop {
        let mut len = [0u8; 4];
        if let Err(e) = read_by(&mut stream, &mut len, cfg.deadline).await {
            return Err((Some(stream), e));
        }
        if first && len[0] == TLS_HANDSHAKE_RECORD {
            // Direct TLS (PostgreSQL 17 `sslnegotiation=direct`).
            let MaybeTls::Plain(mut plain) = stream else {
                return Err((Some(stream), HandshakeError::RepeatedEncryptionRequest));
            };
            let Some(tls) = tls else {
                return Err((None, HandshakeError::TlsUnavailable));
            };
            plain.unread(&len);
            let (tls_stream, end_point) = accept_tls(plain, tls, cfg.deadline)
                .await
                .map_err(|e| (None, e))?;
            stream = tls_stream;
            client.tls_end_point = end_point;
            if alpn(&stream) != Some(ALPN_POSTGRESQL) {
                return Err((Some(stream), HandshakeError::DirectTlsWithoutAlpn));
            }
            ssl_tried = true;
            first = false;
            continue;
        }
        first = false;
        let body_len = match startup::body_len(len) {
            Ok(n) => n,
            Err(e) => return Err((Some(stream), e.into())),
        };
        let mut body = vec![0u8; body_len];
        if let Err(e) = read_by(&mut stream, &mut body, cfg.deadline).await {
            return Err((Some(stream), e));
        }
        let packet = match startup::parse_body(&body) {
            Ok(p) => p,
            Err(e) => return Err((Some(stream), e.into())),
        };
        match packet {
            FrontendStartup::SslRequest => {
                if ssl_tried || stream.is_tls() {
                    return Err((Some(stream), HandshakeError::RepeatedEncryptionRequest));
                }
                ssl_tried = true;
                let Some(tls) = tls else {
                    if let Err(e) =
                        write_by(&mut stream, &[messages::ENCRYPTION_DECLINED], cfg.deadline).await
                    {
                        return Err((Some(stream), e));
                    }
                    continue;
                };
                let MaybeTls::Plain(plain) = stream else {
                    return Err((Some(stream), HandshakeError::RepeatedEncryptionRequest));
                };
                if plain.has_read_ahead() {
                    return Err((
                        Some(MaybeTls::Plain(plain)),
                        HandshakeError::DataAfterSslRequest,
                    ));
                }
                let mut plain = plain;
                if let Err(e) = write_by(&mut plain, &[messages::SSL_ACCEPT], cfg.deadline).await {
                    return Err((Some(MaybeTls::Plain(plain)), e));
                }
                let (tls_stream, end_point) = accept_tls(plain, tls, cfg.deadline)
                    .await
                    .map_err(|e| (None, e))?;
                stream = tls_stream;
                client.tls_end_point = end_point;
            }
            FrontendStartup::GssEncRequest => {
                if gss_tried || stream.is_tls() {
                    return Err((Some(stream), HandshakeError::RepeatedEncryptionRequest));
                }
                gss_tried = true;
                if let Err(e) =
                    write_by(&mut stream, &[messages::ENCRYPTION_DECLINED], cfg.deadline).await
                {
                    return Err((Some(stream), e));
                }
            }
            FrontendStartup::CancelRequest(key) => {
                client.tls = stream.is_tls();
                return Ok(Negotiated::Cancel(key, client, stream));
            }
            FrontendStartup::Startup(mut startup) => {
                client.tls = stream.is_tls();
                if let MaybeTls::Tls(t) = &stream {
                    client.sni = t.get_ref().1.server_name().map(str::to_owned);
                }
                if !client.tls && cfg.tls_mode == TlsMode::Require {
                    return Err((Some(stream), HandshakeError::PlaintextRefused));
                }
                if startup.get("user").is_none_or(str::is_empty) {
                    return Err((Some(stream), HandshakeError::NoUser));
                }
                let options = startup.protocol_options();
                if startup.minor > startup::PROTOCOL_MINOR || !options.is_empty() {
                    let mut buf = BytesMut::new();
                    messages::negotiate_protocol_version(
                        &mut buf,
                        startup::PROTOCOL_MINOR,
                        &options,
                    );
                    if let Err(e) = write_by(&mut stream, &buf, cfg.deadline).await {
                        return Err((Some(stream), e));
                    }
                    for option in &options {
                        startup.remove(option);
                    }
                    startup.minor = startup::PROTOCOL_MINOR;
                }
                return Ok(Negotiated::Startup {
                    stream,
                    startup,
                    client,
                });
            }
        }
    }
}

fn alpn<S>(stream: &ClientStream<S>) -> Option<&[u8]> {
    match stream {
        MaybeTls::Tls(t) => t.get_ref().1.alpn_protocol(),
        MaybeTls::Plain(_) => None,
    }
}

async fn accept_tls<S>(
    plain: Prefixed<S>,
    tls: &ServerTls,
    deadline: Instant,
) -> Result<(ClientStream<S>, Option<std::sync::Arc<Vec<u8>>>), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (acceptor, end_point) = tls.accept_parts();
    let tls_stream = timeout_at(deadline, acceptor.accept(plain))
        .await
        .map_err(|_| HandshakeError::Timeout)?
        .map_err(HandshakeError::Tls)?;
    Ok((MaybeTls::Tls(Box::new(tls_stream)), end_point))
}

async fn read_by<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<(), HandshakeError> {
    timeout_at(deadline, r.read_exact(buf))
        .await
        .map_err(|_| HandshakeError::Timeout)??;
    Ok(())
}

async fn write_by<W: AsyncWrite + Unpin>(
    w: &mut W,
    buf: &[u8],
    deadline: Instant,
) -> Result<(), HandshakeError> {
    timeout_at(deadline, async {
        w.write_all(buf).await?;
        w.flush().await
    })
    .await
    .map_err(|_| HandshakeError::Timeout)??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::duplex;

    fn cfg(proxy: ProxyMode, tls_mode: TlsMode) -> HandshakeConfig<'static> {
        HandshakeConfig {
            proxy,
            tls_mode,
            tls: None,
            deadline: Instant::now() + Duration::from_secs(2),
        }
    }

    fn startup_bytes(params: &[(&str, &str)], minor: u16) -> Vec<u8> {
        let msg = StartupMessage {
            minor,
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let mut buf = BytesMut::new();
        msg.encode(&mut buf);
        let mut v = buf.to_vec();
        v[4..8].copy_from_slice(&(3u32 << 16 | u32::from(minor)).to_be_bytes());
        v
    }

    const PEER: &str = "127.0.0.1:1000";

    #[tokio::test]
    async fn gss_then_ssl_declined_then_startup() {
        let (mut client, server) = duplex(4096);
        let task = tokio::spawn(async move {
            negotiate(
                server,
                PEER.parse().unwrap(),
                &cfg(ProxyMode::Off, TlsMode::Allow),
            )
            .await
        });
        client
            .write_all(&[0, 0, 0, 8, 4, 210, 22, 48])
            .await
            .unwrap();
        assert_eq!(client.read_u8().await.unwrap(), b'N');
        client
            .write_all(&[0, 0, 0, 8, 4, 210, 22, 47])
            .await
            .unwrap();
        assert_eq!(client.read_u8().await.unwrap(), b'N');
        client
            .write_all(&startup_bytes(&[("user", "u")], 0))
            .await
            .unwrap();
        let Negotiated::Startup {
            startup,
            client: info,
            ..
        } = task.await.unwrap().unwrap()
        else {
            panic!("expected a startup")
        };
        assert_eq!(startup.get("user"), Some("u"));
        assert!(!info.tls);
    }

    #[tokio::test]
    async fn newer_minor_gets_negotiate_protocol_version() {
        let (mut client, server) = duplex(4096);
        let task = tokio::spawn(async move {
            negotiate(
                server,
                PEER.parse().unwrap(),
                &cfg(ProxyMode::Off, TlsMode::Allow),
            )
            .await
        });
        client
            .write_all(&startup_bytes(&[("user", "u"), ("_pq_.x", "1")], 2))
            .await
            .unwrap();
        let Negotiated::Startup { startup, .. } = task.await.unwrap().unwrap() else {
            panic!("expected a startup")
        };
        assert_eq!(startup.minor, 0);
        assert_eq!(startup.get("_pq_.x"), None);
        let mut reply = vec![0u8; 20];
        client.read_exact(&mut reply).await.unwrap();
        assert_eq!(
            &reply[..],
            b"v\0\0\0\x13\0\0\0\0\0\0\0\x01_pq_.x\0".as_slice()
        );
    }

    #[tokio::test]
    async fn invalid_lengths_close_without_a_reply() {
        // Each as PostgreSQL's postmaster: logged, never answered.
        let cases: [&[u8]; 4] = [
            // node-postgres: connect() then end() before the startup.
            b"X\0\0\0\x04",
            &[0, 0, 0x4e, 0x25, 0, 3, 0, 0],
            &[0, 0, 0, 7, 0, 3, 0],
            // A CancelRequest one byte short.
            &[0, 0, 0, 15, 4, 210, 22, 46, 0, 0, 0, 1, 0, 0, 0],
        ];
        for bytes in cases {
            let (mut client, server) = duplex(4096);
            let task = tokio::spawn(async move {
                negotiate(
                    server,
                    PEER.parse().unwrap(),
                    &cfg(ProxyMode::Off, TlsMode::Allow),
                )
                .await
            });
            client.write_all(bytes).await.unwrap();
            let err = task.await.unwrap().err().unwrap();
            assert_eq!(err.kind(), "startup", "{bytes:?}: {err}");
            assert!(err.client_error().is_none(), "{err}");
            let mut reply = Vec::new();
            client.read_to_end(&mut reply).await.unwrap();
            assert!(reply.is_empty(), "{bytes:?} got {reply:?}");
        }
    }

    #[tokio::test]
    async fn malformed_parameters_get_protocol_violation() {
        let (mut client, server) = duplex(4096);
        let task = tokio::spawn(async move {
            negotiate(
                server,
                PEER.parse().unwrap(),
                &cfg(ProxyMode::Off, TlsMode::Allow),
            )
            .await
        });
        client
            .write_all(&[0, 0, 0, 12, 0, 3, 0, 0, b'u', 0, b'x', 1])
            .await
            .unwrap();
        let err = task.await.unwrap().err().unwrap();
        assert!(matches!(
            err,
            HandshakeError::Startup(StartupError::Malformed(_))
        ));
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply[0], b'E');
        assert!(reply.windows(5).any(|w| w == b"08P01"));
    }

    #[tokio::test]
    async fn plaintext_refused_when_tls_required() {
        let (mut client, server) = duplex(4096);
        let task = tokio::spawn(async move {
            negotiate(
                server,
                PEER.parse().unwrap(),
                &cfg(ProxyMode::Off, TlsMode::Require),
            )
            .await
        });
        client
            .write_all(&startup_bytes(&[("user", "u")], 0))
            .await
            .unwrap();
        assert!(matches!(
            task.await.unwrap(),
            Err(HandshakeError::PlaintextRefused)
        ));
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        assert!(reply.windows(5).any(|w| w == b"08004"));
    }

    #[tokio::test]
    async fn silent_client_times_out() {
        let (_client, server) = duplex(4096);
        let mut c = cfg(ProxyMode::Optional, TlsMode::Allow);
        c.deadline = Instant::now() + Duration::from_millis(50);
        let r = negotiate(server, PEER.parse().unwrap(), &c).await;
        assert!(matches!(r, Err(HandshakeError::Timeout)));
        // PostgreSQL exits silently at authentication_timeout.
        assert!(HandshakeError::Timeout.client_error().is_none());
    }

    #[tokio::test]
    async fn proxy_header_sets_client_address() {
        let (mut client, server) = duplex(4096);
        let task = tokio::spawn(async move {
            negotiate(
                server,
                PEER.parse().unwrap(),
                &cfg(ProxyMode::Required, TlsMode::Allow),
            )
            .await
        });
        let header = proxy_protocol::build::v2_proxy(
            "10.9.8.7:4444".parse().unwrap(),
            "10.0.0.1:6432".parse().unwrap(),
            Some("vpce-0123456789abcdef0"),
        );
        client.write_all(&header).await.unwrap();
        client
            .write_all(&startup_bytes(&[("user", "u")], 0))
            .await
            .unwrap();
        let Negotiated::Startup { client: info, .. } = task.await.unwrap().unwrap() else {
            panic!("expected a startup")
        };
        assert_eq!(info.addr, "10.9.8.7:4444".parse().unwrap());
        assert_eq!(info.vpce_id.as_deref(), Some("vpce-0123456789abcdef0"));
    }
}
