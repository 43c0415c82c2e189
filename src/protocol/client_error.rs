//! The one way pgcell tells a client something failed: a [`ClientError`]
//! (severity, SQLSTATE, message, hint), encoded as an `ErrorResponse` by
//! [`ClientError::encode`] — nothing else in pgcell builds one. Errors the
//! backend sends are relayed as they are.
//!
//! Spec: <https://www.postgresql.org/docs/current/protocol-error-fields.html>

use std::borrow::Cow;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::sqlstate::SqlState;

/// How bad: whether the session goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The connection ends after this message.
    Fatal,
}

impl Severity {
    /// The (never localised) severity word.
    pub(crate) fn word(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// An error for a client, in PostgreSQL's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientError {
    /// Whether the connection ends.
    pub severity: Severity,
    /// The SQLSTATE PostgreSQL would use.
    pub code: SqlState,
    /// The primary message, PostgreSQL-style (lower case, no period).
    pub message: Cow<'static, str>,
    /// What the client can do about it.
    pub hint: Option<Cow<'static, str>>,
}

impl ClientError {
    /// An error that ends the connection.
    pub(crate) fn fatal(code: SqlState, message: impl Into<Cow<'static, str>>) -> ClientError {
        ClientError {
            severity: Severity::Fatal,
            code,
            message: message.into(),
            hint: None,
        }
    }

    /// An error of one statement: the session goes on.
    pub(crate) fn statement(code: SqlState, message: impl Into<Cow<'static, str>>) -> ClientError {
        ClientError {
            severity: Severity::Error,
            code,
            message: message.into(),
            hint: None,
        }
    }

    /// With a hint.
    pub(crate) fn hint(mut self, hint: impl Into<Cow<'static, str>>) -> ClientError {
        self.hint = Some(hint.into());
        self
    }

    /// Appends the `ErrorResponse` to `buf`.
    pub(crate) fn encode(&self, buf: &mut BytesMut) {
        let start = buf.len();
        buf.put_u8(b'E');
        buf.put_u32(0);
        let severity = self.severity.word();
        for (field, value) in [
            (b'S', severity),
            (b'V', severity),
            (b'C', self.code.code()),
            (b'M', &*self.message),
        ] {
            put_field(buf, field, value);
        }
        if let Some(hint) = &self.hint {
            put_field(buf, b'H', hint);
        }
        buf.put_u8(0);
        let len = (buf.len() - start - 1) as u32;
        buf[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
    }

    /// Writes it to `client` (and flushes). A client that is gone cannot
    /// be told: the caller usually ignores the result.
    pub(crate) async fn send<W: AsyncWrite + Unpin>(&self, client: &mut W) -> std::io::Result<()> {
        let mut buf = BytesMut::new();
        self.encode(&mut buf);
        client.write_all(&buf).await?;
        client.flush().await
    }
}

/// One field: its code, the text, NUL. A NUL inside the text would end
/// the field early: it is dropped.
fn put_field(buf: &mut BytesMut, field: u8, value: &str) {
    buf.put_u8(field);
    buf.extend(value.bytes().filter(|&b| b != 0));
    buf.put_u8(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let mut buf = BytesMut::new();
        ClientError::fatal(SqlState::CONNECTION_REJECTED, "no")
            .hint("try")
            .encode(&mut buf);
        assert_eq!(buf[0], b'E');
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        assert_eq!(len, buf.len() - 1);
        assert_eq!(&buf[5..], b"SFATAL\0VFATAL\0C08004\0Mno\0Htry\0\0");
    }

    #[test]
    fn statement_errors_and_embedded_nul() {
        let mut buf = BytesMut::new();
        ClientError::statement(SqlState::TOO_MANY_CONNECTIONS, "a\0b").encode(&mut buf);
        assert_eq!(&buf[5..], b"SERROR\0VERROR\0C53300\0Mab\0\0");
    }
}
