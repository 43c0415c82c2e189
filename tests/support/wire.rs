//! Protocol bytes written and read by hand, for tests that need exactly
//! the bytes a client sends or a server answers.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// `SSLRequest`.
pub const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];
/// `GSSENCRequest`.
pub const GSSENC_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 48];

/// A `StartupMessage` for protocol 3.`minor`.
pub fn startup_packet(params: &[(&str, &str)], minor: u16) -> Vec<u8> {
    let mut body = (3u32 << 16 | u32::from(minor)).to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut p = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    p.extend_from_slice(&body);
    p
}

/// Reads what the server sends until it closes (bounded by `within`).
pub async fn read_until_close<R: AsyncRead + Unpin>(r: &mut R, within: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(within, r.read_to_end(&mut out))
        .await
        .expect("server closes in time");
    out
}

/// The fields of an `ErrorResponse` a test looks at.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ErrorFields {
    /// `C`: the SQLSTATE.
    pub code: String,
    /// `M`: the primary message.
    pub message: String,
    /// `H`: the hint, empty when there is none.
    pub hint: String,
}

impl ErrorFields {
    /// The fields of an `ErrorResponse` body (without tag and length).
    pub fn parse(body: &[u8]) -> ErrorFields {
        let mut fields = ErrorFields::default();
        for field in body.split(|b| *b == 0) {
            if let Some((&k, v)) = field.split_first() {
                let v = String::from_utf8_lossy(v).into_owned();
                match k {
                    b'C' => fields.code = v,
                    b'M' => fields.message = v,
                    b'H' => fields.hint = v,
                    _ => {}
                }
            }
        }
        fields
    }
}

/// (SQLSTATE, message, hint) of the first `ErrorResponse` in `bytes`.
pub fn error_fields(bytes: &[u8]) -> Option<(String, String, String)> {
    let mut rest = bytes;
    while rest.len() >= 5 {
        let tag = rest[0];
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let body = rest.get(5..1 + len)?;
        if tag == b'E' {
            let f = ErrorFields::parse(body);
            return Some((f.code, f.message, f.hint));
        }
        rest = &rest[1 + len..];
    }
    None
}
