//! The backend messages pgcell builds itself.
//!
//! Spec: <https://www.postgresql.org/docs/current/protocol-message-formats.html>

use bytes::{BufMut, Bytes, BytesMut};

use super::sqlstate::SqlState;
use super::startup::CancelKey;

/// Reply to `SSLRequest` accepting TLS.
pub(crate) const SSL_ACCEPT: u8 = b'S';
/// Reply to `SSLRequest`/`GSSENCRequest` declining encryption.
pub(crate) const ENCRYPTION_DECLINED: u8 = b'N';

/// Authentication request codes (`AuthenticationXXX`).
pub(crate) mod auth {
    /// `AuthenticationOk`.
    pub(crate) const OK: i32 = 0;
    /// `AuthenticationCleartextPassword`.
    pub(crate) const CLEARTEXT_PASSWORD: i32 = 3;
    /// `AuthenticationMD5Password`.
    pub(crate) const MD5_PASSWORD: i32 = 5;
    /// `AuthenticationSASL`.
    pub(crate) const SASL: i32 = 10;
    /// `AuthenticationSASLContinue`.
    pub(crate) const SASL_CONTINUE: i32 = 11;
    /// `AuthenticationSASLFinal`.
    pub(crate) const SASL_FINAL: i32 = 12;
}

/// The SASL mechanism that needs channel binding to the backend's own TLS.
pub(crate) const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";

/// Appends `BackendKeyData` with `key` to `buf`.
pub(crate) fn backend_key_data(buf: &mut BytesMut, key: CancelKey) {
    buf.put_u8(b'K');
    buf.put_u32(12);
    buf.put_i32(key.pid);
    buf.put_i32(key.secret);
}

/// Appends `NegotiateProtocolVersion`: the newest minor version pgcell
/// supports and the protocol options it does not recognise.
pub(crate) fn negotiate_protocol_version(
    buf: &mut BytesMut,
    newest_minor: u16,
    unrecognized: &[String],
) {
    let start = begin(buf, b'v');
    buf.put_i32(i32::from(newest_minor));
    buf.put_i32(unrecognized.len() as i32);
    for option in unrecognized {
        buf.put_slice(option.as_bytes());
        buf.put_u8(0);
    }
    finish(buf, start);
}

/// Rewrites the body of an `AuthenticationSASL` message without
/// `SCRAM-SHA-256-PLUS`.
///
/// pgcell terminates TLS, so a client's channel binding data would name
/// pgcell's certificate, never the backend's: the mechanism cannot work
/// through it and must not be offered. Returns `None` when the body is not a
/// well-formed mechanism list.
pub fn sasl_without_plus(body: &[u8]) -> Option<Bytes> {
    let list = body.get(4..)?;
    let mut out = BytesMut::with_capacity(body.len());
    out.put_slice(&body[..4]);
    let mut rest = list;
    loop {
        let end = rest.iter().position(|&b| b == 0)?;
        let mechanism = &rest[..end];
        rest = &rest[end + 1..];
        if mechanism.is_empty() {
            break;
        }
        if mechanism != SCRAM_SHA_256_PLUS.as_bytes() {
            out.put_slice(mechanism);
            out.put_u8(0);
        }
    }
    out.put_u8(0);
    Some(out.freeze())
}

/// Appends a tagged message with `body` to `buf`.
pub(crate) fn tagged(buf: &mut BytesMut, tag: u8, body: &[u8]) {
    buf.put_u8(tag);
    buf.put_u32((body.len() + 4) as u32);
    buf.put_slice(body);
}

/// A `ParameterStatus` message for each (name, value) of `params`.
pub(crate) fn parameter_statuses(buf: &mut BytesMut, params: &[(String, String)]) {
    for (name, value) in params {
        tagged_parts(
            buf,
            b'S',
            &[name.as_bytes(), b"\0", value.as_bytes(), b"\0"],
        );
    }
}

/// A message whose body is `parts` one after another (no body built
/// first).
pub(crate) fn tagged_parts(buf: &mut BytesMut, tag: u8, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    buf.reserve(1 + 4 + len);
    buf.put_u8(tag);
    buf.put_u32((len + 4) as u32);
    for part in parts {
        buf.put_slice(part);
    }
}

fn begin(buf: &mut BytesMut, tag: u8) -> usize {
    buf.put_u8(tag);
    let start = buf.len();
    buf.put_u32(0);
    start
}

fn finish(buf: &mut BytesMut, start: usize) {
    let len = (buf.len() - start) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Field `code` of an `ErrorResponse` or `NoticeResponse` body.
pub(crate) fn error_field(body: &[u8], code: u8) -> Option<&[u8]> {
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0)?;
        if field == code {
            return Some(&tail[..end]);
        }
        rest = &tail[end + 1..];
    }
    None
}

/// The SQLSTATE of an `ErrorResponse` body; `XX000` when it has none
/// that is well formed.
pub fn error_code(body: &[u8]) -> SqlState {
    error_field(body, b'C')
        .and_then(SqlState::parse)
        .unwrap_or(SqlState::INTERNAL_ERROR)
}

/// The primary message of an `ErrorResponse` body (empty when missing).
pub fn error_message(body: &[u8]) -> String {
    error_field(body, b'M')
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .unwrap_or_default()
}

/// The column values of a `DataRow` body (`None` for NULL), or `None`
/// when the body is malformed.
/// <https://www.postgresql.org/docs/current/protocol-message-formats.html#PROTOCOL-MESSAGE-FORMATS-DATAROW>
pub(crate) fn data_row(body: &[u8]) -> Option<Vec<Option<&[u8]>>> {
    let (count, mut rest) = body.split_first_chunk::<2>()?;
    let count = usize::try_from(i16::from_be_bytes(*count)).ok()?;
    let mut columns = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let len = i32::from_be_bytes(*len);
        if len == -1 {
            columns.push(None);
            rest = tail;
            continue;
        }
        let len = usize::try_from(len).ok()?;
        columns.push(Some(tail.get(..len)?));
        rest = &tail[len..];
    }
    Some(columns)
}

/// Whether an ErrorResponse body has severity FATAL or PANIC: the backend
/// closes after it.
pub(crate) fn is_fatal(body: &[u8]) -> bool {
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let Some(end) = tail.iter().position(|&b| b == 0) else {
            break;
        };
        let value = &tail[..end];
        // 'V' (never localised) is authoritative; 'S' may be translated.
        if field == b'V' || field == b'S' {
            if value == b"FATAL" || value == b"PANIC" {
                return true;
            }
            if field == b'V' {
                return false;
            }
        }
        rest = tail.get(end + 1..).unwrap_or(&[]);
    }
    false
}

#[cfg(test)]
mod tests {
    #[test]
    fn data_rows() {
        let mut body = vec![0, 3];
        body.extend_from_slice(&2i32.to_be_bytes());
        body.extend_from_slice(b"ab");
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&0i32.to_be_bytes());
        assert_eq!(
            super::data_row(&body),
            Some(vec![Some(&b"ab"[..]), None, Some(&b""[..])])
        );
        assert_eq!(super::data_row(&[0, 1, 0, 0, 0, 5, b'x']), None);
        assert_eq!(super::data_row(&[0, 1, 0xff, 0xff, 0xff, 0xfe]), None);
        assert_eq!(super::data_row(&[0xff, 0xff]), None);
        assert_eq!(super::data_row(&[]), None);
    }

    use super::*;

    #[test]
    fn tagged_parts_is_tagged_of_the_parts_joined() {
        let mut joined = BytesMut::new();
        tagged(&mut joined, b'B', b"portal\0pgcell_7\0tail");
        let mut parts = BytesMut::new();
        tagged_parts(
            &mut parts,
            b'B',
            &[b"portal", b"\0", b"pgcell_7", b"\0", b"tail"],
        );
        assert_eq!(parts, joined);
        let mut empty = BytesMut::new();
        tagged_parts(&mut empty, b'Z', &[]);
        assert_eq!(&empty[..], b"Z\0\0\0\x04");
    }

    #[test]
    fn error_fields() {
        let body = b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed\0\0";
        assert_eq!(error_code(body), SqlState::INVALID_PASSWORD);
        assert_eq!(error_message(body), "password authentication failed");
        assert_eq!(error_code(b"SFATAL\0\0"), SqlState::INTERNAL_ERROR);
        assert_eq!(error_code(b"SFATAL"), SqlState::INTERNAL_ERROR);
        assert_eq!(error_message(b"SFATAL\0Cxx"), "");
    }

    #[test]
    fn strips_plus_only() {
        let mut body = 10i32.to_be_bytes().to_vec();
        body.extend_from_slice(b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
        let out = sasl_without_plus(&body).unwrap();
        let mut want = 10i32.to_be_bytes().to_vec();
        want.extend_from_slice(b"SCRAM-SHA-256\0\0");
        assert_eq!(&out[..], &want[..]);
        assert!(sasl_without_plus(b"\0\0\0\x0aSCRAM").is_none());
    }

    #[test]
    fn negotiate_layout() {
        let mut buf = BytesMut::new();
        negotiate_protocol_version(&mut buf, 0, &["_pq_.x".to_string()]);
        assert_eq!(
            &buf[..],
            b"v\0\0\0\x13\0\0\0\0\0\0\0\x01_pq_.x\0".as_slice()
        );
    }
}
