//! The PROXY protocol header the NLB puts in front of every connection.
//!
//! Version 2 (binary) is what AWS NLBs send; version 1 (text) is accepted
//! too. Exactly one header is read: a client's own header after the NLB's
//! would be Postgres data, and fails there. Spec:
//! <https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>
//!
//! Parsing is split from reading so the parsers can be fuzzed:
//! [`parse_v2`] and [`parse_v1`] take complete headers.

use std::net::SocketAddr;

use bytes::Bytes;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The 12-byte signature that starts a v2 header.
pub(crate) const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// Signature, version/command, family/protocol and length.
pub(crate) const V2_FIXED_LEN: usize = 16;
/// Longest v2 address-and-TLV block accepted. AWS sends about a hundred
/// bytes; the bound keeps a hostile header from pinning 64 KiB per socket.
pub(crate) const MAX_V2_BODY_LEN: usize = 2048;
/// Longest v1 header including CRLF, from the specification.
pub(crate) const MAX_V1_LEN: usize = 107;
/// Bytes read before deciding whether a header is present: every
/// legitimate first packet (PROXY header, Postgres packet, TLS record) is at
/// least this long.
pub(crate) const PROBE_LEN: usize = 8;
/// TLV type of AWS's VPC-endpoint information.
pub(crate) const TLV_AWS: u8 = 0xEA;
/// Subtype of [`TLV_AWS`] carrying the VPC endpoint id.
pub(crate) const TLV_AWS_VPCE_ID: u8 = 0x01;
/// Longest VPC endpoint id accepted (`vpce-` and 17 hex digits is 22).
pub const MAX_VPCE_ID_LEN: usize = 64;

/// What the listener expects in front of each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    /// No header; one is an error.
    Off,
    /// A header may come first.
    Optional,
    /// A header must come first.
    Required,
}

/// The parsed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyHeader {
    /// v2 `LOCAL` (or v1 `UNKNOWN`): a connection of the load balancer's
    /// own, such as a health check.
    Local {
        /// Protocol version, 1 or 2.
        version: u8,
    },
    /// A proxied connection.
    Proxy {
        /// The real client address, when the header carries one.
        source: Option<SocketAddr>,
        /// AWS VPC endpoint id from TLV 0xEA/0x01.
        vpce_id: Option<String>,
        /// Protocol version, 1 or 2.
        version: u8,
    },
}

/// Result of reading the start of a connection.
#[derive(Debug)]
pub(crate) struct Preface {
    /// The header, if one came.
    pub header: Option<ProxyHeader>,
    /// Bytes already read that belong to what follows the header.
    pub read_ahead: Bytes,
}

/// Why a header was refused.
#[derive(Debug, Error)]
pub enum ProxyError {
    /// A header arrived on a listener with the protocol off.
    #[error("PROXY protocol header on a listener with proxy_protocol = \"off\"")]
    Unexpected,
    /// No header where one is required.
    #[error("missing PROXY protocol header")]
    Missing,
    /// The header is not well formed.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(String),
    /// The header is longer than accepted.
    #[error("PROXY protocol header too long")]
    TooLong,
    /// Reading failed or the peer closed mid-header.
    #[error("reading PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

impl ProxyError {
    /// Short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::Unexpected => "unexpected",
            ProxyError::Missing => "missing",
            ProxyError::Malformed(_) | ProxyError::TooLong => "malformed",
            ProxyError::Io(_) => "io",
        }
    }
}

/// Reads the PROXY header, if any, from the start of a connection.
///
/// Not cancel safe: bytes read before cancellation are lost.
pub(crate) async fn read_preface<S: AsyncRead + Unpin>(
    stream: &mut S,
    mode: ProxyMode,
) -> Result<Preface, ProxyError> {
    let mut buf = [0u8; PROBE_LEN];
    let mut filled = 0;
    // Stop as soon as the bytes cannot start a header: a client may send
    // fewer than PROBE_LEN bytes and wait for an answer (node-postgres'
    // Terminate before a startup is 5), and PostgreSQL decides from the
    // first 4.
    while filled < PROBE_LEN && may_start_header(&buf[..filled]) {
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Err(ProxyError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        filled += n;
    }
    let probe = &buf[..filled];
    let is_v2 = probe == &V2_SIGNATURE[..PROBE_LEN];
    let is_v1 = probe.starts_with(b"PROXY ");
    match (is_v2 || is_v1, mode) {
        // Refused before parsing: a listener with the protocol off never
        // runs the parser on what a client sends.
        (true, ProxyMode::Off) => return Err(ProxyError::Unexpected),
        (false, ProxyMode::Required) => return Err(ProxyError::Missing),
        (false, _) => {
            return Ok(Preface {
                header: None,
                read_ahead: Bytes::copy_from_slice(probe),
            })
        }
        (true, _) => {}
    }
    let header = if is_v2 {
        let mut fixed = [0u8; V2_FIXED_LEN];
        fixed[..PROBE_LEN].copy_from_slice(probe);
        stream
            .read_exact(&mut fixed[PROBE_LEN..])
            .await
            .map_err(truncated)?;
        let body_len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
        if body_len > MAX_V2_BODY_LEN {
            return Err(ProxyError::TooLong);
        }
        let mut full = vec![0u8; V2_FIXED_LEN + body_len];
        full[..V2_FIXED_LEN].copy_from_slice(&fixed);
        stream
            .read_exact(&mut full[V2_FIXED_LEN..])
            .await
            .map_err(truncated)?;
        parse_v2(&full)?
    } else {
        let mut line = probe.to_vec();
        // The v1 header is short and comes once: byte-at-a-time reads avoid
        // reading past its CRLF into the Postgres data.
        while !line.ends_with(b"\r\n") {
            if line.len() >= MAX_V1_LEN {
                return Err(ProxyError::TooLong);
            }
            line.push(stream.read_u8().await.map_err(truncated)?);
        }
        parse_v1(&line)?
    };
    Ok(Preface {
        header: Some(header),
        read_ahead: Bytes::new(),
    })
}

/// Whether `start` (fewer than [`PROBE_LEN`] bytes) may begin a v1 or v2
/// header.
fn may_start_header(start: &[u8]) -> bool {
    const V1_PREFIX: &[u8] = b"PROXY ";
    V2_SIGNATURE.starts_with(start)
        || V1_PREFIX.starts_with(&start[..start.len().min(V1_PREFIX.len())])
}

/// A header that stops part-way is malformed, not a plain disconnect.
fn truncated(e: std::io::Error) -> ProxyError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        ProxyError::Malformed("truncated header".to_owned())
    } else {
        ProxyError::Io(e)
    }
}

/// Parses a complete v2 header (signature through the last TLV).
///
/// A `LOCAL` header is accepted whatever its family and body say: NLB
/// health checks send TLVs with no addresses.
pub fn parse_v2(bytes: &[u8]) -> Result<ProxyHeader, ProxyError> {
    let malformed = |m: &str| ProxyError::Malformed(m.to_owned());
    if bytes.len() < V2_FIXED_LEN || bytes[..12] != V2_SIGNATURE {
        return Err(malformed("bad v2 signature"));
    }
    let body_len = usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    if bytes.len() != V2_FIXED_LEN + body_len {
        return Err(malformed("v2 length does not match the header"));
    }
    match bytes[12] {
        0x20 => return Ok(ProxyHeader::Local { version: 2 }),
        0x21 => {}
        _ => return Err(malformed("unknown v2 version or command")),
    }
    let header =
        ppp::v2::Header::try_from(bytes).map_err(|e| ProxyError::Malformed(e.to_string()))?;
    let source = match header.addresses {
        ppp::v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        // Unspecified and Unix carry no usable client address: the socket's
        // peer stands in, as the specification asks.
        ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => None,
    };
    let mut vpce_id = None;
    for tlv in header.tlvs() {
        let tlv = tlv.map_err(|e| ProxyError::Malformed(e.to_string()))?;
        if tlv.kind == TLV_AWS && tlv.value.first() == Some(&TLV_AWS_VPCE_ID) {
            vpce_id = Some(parse_vpce_id(&tlv.value[1..])?);
        }
    }
    Ok(ProxyHeader::Proxy {
        source,
        vpce_id,
        version: 2,
    })
}

fn parse_vpce_id(raw: &[u8]) -> Result<String, ProxyError> {
    let ok = !raw.is_empty()
        && raw.len() <= MAX_VPCE_ID_LEN
        && raw.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-');
    if !ok {
        return Err(ProxyError::Malformed("invalid VPC endpoint id".to_owned()));
    }
    // Checked above: ASCII only.
    Ok(String::from_utf8_lossy(raw).into_owned())
}

/// Parses a complete v1 header, CRLF included.
pub fn parse_v1(bytes: &[u8]) -> Result<ProxyHeader, ProxyError> {
    // The format is ASCII; checking here also keeps multi-byte characters
    // away from ppp, whose v1 parser slices the text at byte offsets.
    if !bytes.is_ascii() {
        return Err(ProxyError::Malformed("v1 header is not ASCII".to_owned()));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| ProxyError::Malformed("v1 header is not ASCII".to_owned()))?;
    let header =
        ppp::v1::Header::try_from(text).map_err(|e| ProxyError::Malformed(e.to_string()))?;
    Ok(match header.addresses {
        ppp::v1::Addresses::Unknown => ProxyHeader::Local { version: 1 },
        ppp::v1::Addresses::Tcp4(a) => ProxyHeader::Proxy {
            source: Some(SocketAddr::from((a.source_address, a.source_port))),
            vpce_id: None,
            version: 1,
        },
        ppp::v1::Addresses::Tcp6(a) => ProxyHeader::Proxy {
            source: Some(SocketAddr::from((a.source_address, a.source_port))),
            vpce_id: None,
            version: 1,
        },
    })
}

/// Builds v2 headers; used by tests and benchmarks to play the NLB.
pub mod build {
    use std::net::SocketAddr;

    use super::{TLV_AWS, TLV_AWS_VPCE_ID, V2_SIGNATURE};

    /// A v2 `PROXY` header from `source` to `destination`, with the AWS
    /// VPC-endpoint TLV when `vpce_id` is given and an NLB-style NOOP TLV.
    pub fn v2_proxy(source: SocketAddr, destination: SocketAddr, vpce_id: Option<&str>) -> Vec<u8> {
        let mut body = Vec::new();
        let family = match (source, destination) {
            (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                body.extend_from_slice(&s.ip().octets());
                body.extend_from_slice(&d.ip().octets());
                body.extend_from_slice(&s.port().to_be_bytes());
                body.extend_from_slice(&d.port().to_be_bytes());
                0x11
            }
            (s, d) => {
                let v6 = |a: SocketAddr| match a {
                    SocketAddr::V4(v4) => v4.ip().to_ipv6_mapped(),
                    SocketAddr::V6(v6) => *v6.ip(),
                };
                body.extend_from_slice(&v6(s).octets());
                body.extend_from_slice(&v6(d).octets());
                body.extend_from_slice(&s.port().to_be_bytes());
                body.extend_from_slice(&d.port().to_be_bytes());
                0x21
            }
        };
        if let Some(id) = vpce_id {
            body.push(TLV_AWS);
            body.extend_from_slice(&((id.len() + 1) as u16).to_be_bytes());
            body.push(TLV_AWS_VPCE_ID);
            body.extend_from_slice(id.as_bytes());
        }
        // NOOP padding, as NLBs send.
        body.extend_from_slice(&[0x04, 0x00, 0x02, 0x00, 0x00]);
        frame(0x21, family, &body)
    }

    /// A v2 `LOCAL` header whose body holds only TLVs, as NLB health checks
    /// send.
    pub fn v2_local() -> Vec<u8> {
        frame(0x20, 0x00, &[0x04, 0x00, 0x01, 0x00])
    }

    fn frame(ver_cmd: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(ver_cmd);
        out.push(family);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_ipv4_with_vpce() {
        let h = build::v2_proxy(
            "10.1.2.3:5555".parse().unwrap(),
            "10.0.0.1:6432".parse().unwrap(),
            Some("vpce-0123456789abcdef0"),
        );
        assert_eq!(
            parse_v2(&h).unwrap(),
            ProxyHeader::Proxy {
                source: Some("10.1.2.3:5555".parse().unwrap()),
                vpce_id: Some("vpce-0123456789abcdef0".into()),
                version: 2
            }
        );
    }

    #[test]
    fn v2_ipv6_without_vpce() {
        let h = build::v2_proxy(
            "[fd00::1]:1".parse().unwrap(),
            "[fd00::2]:2".parse().unwrap(),
            None,
        );
        assert!(matches!(
            parse_v2(&h).unwrap(),
            ProxyHeader::Proxy {
                source: Some(SocketAddr::V6(_)),
                vpce_id: None,
                ..
            }
        ));
    }

    #[test]
    fn v2_local_with_tlvs_only() {
        assert_eq!(
            parse_v2(&build::v2_local()).unwrap(),
            ProxyHeader::Local { version: 2 }
        );
    }

    #[test]
    fn v2_rejects_truncated_and_bad_tlv() {
        let h = build::v2_proxy(
            "1.2.3.4:1".parse().unwrap(),
            "5.6.7.8:2".parse().unwrap(),
            Some("vpce-1"),
        );
        assert!(parse_v2(&h[..h.len() - 1]).is_err());
        // A TLV whose length runs past the end.
        let mut bad = h.clone();
        let n = bad.len();
        bad[n - 4] = 0x10;
        assert!(parse_v2(&bad).is_err());
        // Bad vpce id bytes.
        let bad = build::v2_proxy(
            "1.2.3.4:1".parse().unwrap(),
            "5.6.7.8:2".parse().unwrap(),
            Some("vpce 1"),
        );
        assert!(parse_v2(&bad).is_err());
    }

    #[test]
    fn v1_forms() {
        assert_eq!(
            parse_v1(b"PROXY TCP4 192.0.2.1 192.0.2.2 40000 6432\r\n").unwrap(),
            ProxyHeader::Proxy {
                source: Some("192.0.2.1:40000".parse().unwrap()),
                vpce_id: None,
                version: 1
            }
        );
        assert_eq!(
            parse_v1(b"PROXY UNKNOWN\r\n").unwrap(),
            ProxyHeader::Local { version: 1 }
        );
        assert!(parse_v1(b"PROXY TCP4 nonsense\r\n").is_err());
        // Found by fuzzing: a multi-byte character after a CR made ppp panic.
        assert!(parse_v1("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\u{e9}\r\n".as_bytes()).is_err());
    }

    #[tokio::test]
    async fn preface_modes() {
        let local = build::v2_local();
        let p = read_preface(&mut &local[..], ProxyMode::Required)
            .await
            .unwrap();
        assert_eq!(p.header, Some(ProxyHeader::Local { version: 2 }));
        assert!(p.read_ahead.is_empty());

        let ssl_request = [0, 0, 0, 8, 4, 210, 22, 47];
        let p = read_preface(&mut &ssl_request[..], ProxyMode::Optional)
            .await
            .unwrap();
        assert_eq!(p.header, None);
        assert_eq!(&p.read_ahead[..], &ssl_request[..]);

        assert!(matches!(
            read_preface(&mut &ssl_request[..], ProxyMode::Required).await,
            Err(ProxyError::Missing)
        ));
        assert!(matches!(
            read_preface(&mut &local[..], ProxyMode::Off).await,
            Err(ProxyError::Unexpected)
        ));
        let truncated = &local[..local.len() - 1];
        assert!(matches!(
            read_preface(&mut &truncated[..], ProxyMode::Required).await,
            Err(ProxyError::Malformed(_))
        ));
        let v1 = b"PROXY TCP4 192.0.2.1 192.0.2.2 40000 6432\r\nrest";
        let mut r = &v1[..];
        let p = read_preface(&mut r, ProxyMode::Optional).await.unwrap();
        assert!(matches!(
            p.header,
            Some(ProxyHeader::Proxy { version: 1, .. })
        ));
        assert_eq!(r, b"rest");
    }

    #[tokio::test]
    async fn short_first_packet_is_not_held_for_the_probe() {
        use tokio::io::AsyncWriteExt;
        // Five bytes, then the client waits: no header can start with
        // them, so they come back at once instead of at the timeout.
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"X\0\0\0\x04").await.unwrap();
        let p = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            read_preface(&mut server, ProxyMode::Optional),
        )
        .await
        .expect("not held")
        .unwrap();
        assert_eq!(&p.read_ahead[..], b"X\0\0\0\x04");
        // A possible header start is read on.
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"PROX").await.unwrap();
        let read = read_preface(&mut server, ProxyMode::Optional);
        tokio::pin!(read);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(100), &mut read)
                .await
                .is_err()
        );
    }
}
