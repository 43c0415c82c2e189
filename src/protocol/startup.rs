//! Pre-startup packets: `SSLRequest`, `GSSENCRequest`, `CancelRequest` and
//! `StartupMessage`.
//!
//! These are the only untagged messages in the protocol: a 4-byte length
//! (including itself) followed by a 4-byte code. Spec:
//! <https://www.postgresql.org/docs/current/protocol-message-formats.html>

use bytes::{BufMut, BytesMut};
use thiserror::Error;

/// Longest pre-startup packet body (after the length word) accepted, as
/// PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`: postmaster.c compares it with
/// the length minus the 4 bytes of the length itself.
pub const MAX_STARTUP_PACKET_LEN: usize = 10_000;
/// Shortest pre-startup packet: length and code.
pub const MIN_STARTUP_PACKET_LEN: usize = 8;
/// Length of a protocol 3.0 `CancelRequest`: length, code, pid, secret.
pub const CANCEL_REQUEST_LEN: usize = 16;
/// `SSLRequest` code (1234 << 16 | 5679).
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
/// `GSSENCRequest` code (1234 << 16 | 5680).
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
/// `CancelRequest` code (1234 << 16 | 5678).
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;
/// Protocol major version pgcell speaks.
pub const PROTOCOL_MAJOR: u16 = 3;
/// Newest protocol minor version pgcell speaks.
pub const PROTOCOL_MINOR: u16 = 0;
/// Prefix of protocol extension options (`_pq_.name`).
pub const PROTOCOL_OPTION_PREFIX: &str = "_pq_.";

/// One pre-startup packet from a frontend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontendStartup {
    /// `SSLRequest`: the client asks for TLS.
    SslRequest,
    /// `GSSENCRequest`: the client asks for GSSAPI encryption.
    GssEncRequest,
    /// `CancelRequest` with the key the client was given.
    CancelRequest(CancelKey),
    /// `StartupMessage`: protocol version and parameters.
    Startup(StartupMessage),
}

/// The (process id, secret) pair of `BackendKeyData` and `CancelRequest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CancelKey {
    /// Process id as the client knows it.
    pub pid: i32,
    /// Secret key.
    pub secret: i32,
}

/// A parsed `StartupMessage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    /// Requested protocol minor version (major is always 3).
    pub minor: u16,
    /// Parameters in the order the client sent them.
    pub params: Vec<(String, String)>,
}

/// Why a pre-startup packet was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StartupError {
    /// Length field below the minimum.
    #[error("invalid length of startup packet: {0}")]
    TooShort(usize),
    /// Length field above [`MAX_STARTUP_PACKET_LEN`] plus the length word.
    #[error("startup packet too long: {0} bytes")]
    TooLong(usize),
    /// A `CancelRequest` whose length is not [`CANCEL_REQUEST_LEN`].
    #[error("invalid length of cancel request packet: {0}")]
    InvalidCancelLength(usize),
    /// A protocol major version other than 3.
    #[error("unsupported frontend protocol {0}.{1}: server supports 3.0")]
    UnsupportedProtocol(u16, u16),
    /// Structure does not match the message format.
    #[error("malformed startup packet: {0}")]
    Malformed(&'static str),
}

/// Validates the 4-byte length that starts a pre-startup packet and returns
/// the number of bytes that follow it.
pub fn body_len(header: [u8; 4]) -> Result<usize, StartupError> {
    let len = u32::from_be_bytes(header) as usize;
    if len < MIN_STARTUP_PACKET_LEN {
        return Err(StartupError::TooShort(len));
    }
    if len - 4 > MAX_STARTUP_PACKET_LEN {
        return Err(StartupError::TooLong(len));
    }
    Ok(len - 4)
}

/// Parses the body (everything after the length) of a pre-startup packet.
pub fn parse_body(body: &[u8]) -> Result<FrontendStartup, StartupError> {
    let (code, rest) = body
        .split_first_chunk::<4>()
        .ok_or(StartupError::Malformed("missing request code"))?;
    match u32::from_be_bytes(*code) {
        SSL_REQUEST_CODE if rest.is_empty() => Ok(FrontendStartup::SslRequest),
        GSSENC_REQUEST_CODE if rest.is_empty() => Ok(FrontendStartup::GssEncRequest),
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => {
            Err(StartupError::Malformed("encryption request with a body"))
        }
        CANCEL_REQUEST_CODE => {
            // Protocol 3.0 keys are exactly 4 bytes; longer keys (3.2) are
            // never issued by pgcell, so they cannot match anything.
            if rest.len() != 8 {
                return Err(StartupError::InvalidCancelLength(body.len() + 4));
            }
            let pid = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
            let secret = i32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
            Ok(FrontendStartup::CancelRequest(CancelKey { pid, secret }))
        }
        version => {
            let major = (version >> 16) as u16;
            let minor = (version & 0xffff) as u16;
            if major != PROTOCOL_MAJOR {
                return Err(StartupError::UnsupportedProtocol(major, minor));
            }
            let params = parse_params(rest)?;
            Ok(FrontendStartup::Startup(StartupMessage { minor, params }))
        }
    }
}

/// Parses `name\0value\0 … \0`.
fn parse_params(mut rest: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    let mut params = Vec::new();
    loop {
        let name = take_cstr(&mut rest)?;
        if name.is_empty() {
            break;
        }
        let value = take_cstr(&mut rest)?;
        if params.iter().any(|(n, _)| *n == name) {
            return Err(StartupError::Malformed("duplicate parameter"));
        }
        params.push((name, value));
    }
    if !rest.is_empty() {
        return Err(StartupError::Malformed("data after the parameter list"));
    }
    Ok(params)
}

fn take_cstr(rest: &mut &[u8]) -> Result<String, StartupError> {
    let end = rest
        .iter()
        .position(|&b| b == 0)
        .ok_or(StartupError::Malformed("unterminated string"))?;
    let s = std::str::from_utf8(&rest[..end])
        .map_err(|_| StartupError::Malformed("parameter is not valid UTF-8"))?
        .to_owned();
    *rest = &rest[end + 1..];
    Ok(s)
}

impl StartupMessage {
    /// The value of parameter `name`, if sent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets `name` to `value`, replacing an existing value in place.
    pub fn set(&mut self, name: &str, value: String) {
        match self.params.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value,
            None => self.params.push((name.to_owned(), value)),
        }
    }

    /// Removes `name`.
    pub fn remove(&mut self, name: &str) {
        self.params.retain(|(n, _)| n != name);
    }

    /// Names of `_pq_.` protocol options the client asked for.
    pub fn protocol_options(&self) -> Vec<String> {
        self.params
            .iter()
            .filter(|(n, _)| n.starts_with(PROTOCOL_OPTION_PREFIX))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Appends this message, as protocol 3.0, to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        let start = buf.len();
        buf.put_u32(0);
        buf.put_u32(u32::from(PROTOCOL_MAJOR) << 16 | u32::from(PROTOCOL_MINOR));
        for (name, value) in &self.params {
            buf.put_slice(name.as_bytes());
            buf.put_u8(0);
            buf.put_slice(value.as_bytes());
            buf.put_u8(0);
        }
        buf.put_u8(0);
        let len = (buf.len() - start) as u32;
        buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }
}

impl CancelKey {
    /// Appends a `CancelRequest` carrying this key to `buf`.
    pub fn encode_cancel_request(&self, buf: &mut BytesMut) {
        buf.put_u32(16);
        buf.put_u32(CANCEL_REQUEST_CODE);
        buf.put_i32(self.pid);
        buf.put_i32(self.secret);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(body: &[u8]) -> Vec<u8> {
        let mut p = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        p.extend_from_slice(body);
        p
    }

    #[test]
    fn startup_round_trip() {
        let msg = StartupMessage {
            minor: 0,
            params: vec![
                ("user".into(), "alice".into()),
                ("database".into(), "db".into()),
            ],
        };
        let mut buf = BytesMut::new();
        msg.encode(&mut buf);
        let len = body_len([buf[0], buf[1], buf[2], buf[3]]).unwrap();
        assert_eq!(len, buf.len() - 4);
        assert_eq!(
            parse_body(&buf[4..]).unwrap(),
            FrontendStartup::Startup(msg)
        );
    }

    #[test]
    fn ssl_gss_cancel() {
        let p = packet(&SSL_REQUEST_CODE.to_be_bytes());
        assert_eq!(parse_body(&p[4..]).unwrap(), FrontendStartup::SslRequest);
        let p = packet(&GSSENC_REQUEST_CODE.to_be_bytes());
        assert_eq!(parse_body(&p[4..]).unwrap(), FrontendStartup::GssEncRequest);
        let mut buf = BytesMut::new();
        CancelKey { pid: 7, secret: -3 }.encode_cancel_request(&mut buf);
        assert_eq!(
            parse_body(&buf[4..]).unwrap(),
            FrontendStartup::CancelRequest(CancelKey { pid: 7, secret: -3 })
        );
    }

    #[test]
    fn bounds() {
        assert_eq!(body_len(4u32.to_be_bytes()), Err(StartupError::TooShort(4)));
        assert_eq!(body_len(7u32.to_be_bytes()), Err(StartupError::TooShort(7)));
        assert_eq!(body_len(8u32.to_be_bytes()), Ok(4));
        // PostgreSQL bounds the body, not the packet: 10,004 bytes pass.
        assert_eq!(
            body_len(10_005u32.to_be_bytes()),
            Err(StartupError::TooLong(10_005))
        );
        assert_eq!(body_len(10_004u32.to_be_bytes()), Ok(10_000));
        // node-postgres' Terminate (`X 00 00 00 04`) read as a length.
        assert!(matches!(
            body_len(*b"X\0\0\0"),
            Err(StartupError::TooLong(_))
        ));
    }

    #[test]
    fn malformed() {
        // Unterminated parameter list.
        let mut body = (196_608u32).to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0bob");
        assert!(matches!(parse_body(&body), Err(StartupError::Malformed(_))));
        // Protocol 2.
        let body = (131_072u32).to_be_bytes();
        assert_eq!(
            parse_body(&body),
            Err(StartupError::UnsupportedProtocol(2, 0))
        );
        // Duplicate parameter.
        let mut body = (196_608u32).to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0a\0user\0b\0\0");
        assert!(matches!(parse_body(&body), Err(StartupError::Malformed(_))));
        // Too short for a code.
        assert!(parse_body(&[0, 3]).is_err());
    }

    #[test]
    fn newer_minor_and_options() {
        let mut body = (196_610u32).to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0a\0_pq_.foo\0on\0\0");
        let FrontendStartup::Startup(m) = parse_body(&body).unwrap() else {
            panic!("not a startup message")
        };
        assert_eq!(m.minor, 2);
        assert_eq!(m.protocol_options(), vec!["_pq_.foo".to_string()]);
    }
}
