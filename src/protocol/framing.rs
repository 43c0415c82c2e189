//! Header-only framing of tagged messages: a 1-byte tag and a 4-byte length
//! that counts itself but not the tag.

use bytes::{Buf, Bytes, BytesMut};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Size of a tagged message's header.
pub const HEADER_LEN: usize = 5;

/// A complete tagged message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The message type byte, e.g. `b'R'`.
    pub tag: u8,
    /// Everything after the length field.
    pub body: Bytes,
}

/// A frame that cannot be accepted.
#[derive(Debug, Error)]
pub enum FramingError {
    /// Length field below 4.
    #[error("invalid message length {0}")]
    InvalidLength(u32),
    /// Length above the caller's bound.
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// Declared length.
        len: usize,
        /// The bound in force.
        max: usize,
    },
    /// Reading failed or the peer closed mid-message.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Splits one complete message off the front of `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a message; the bytes stay
/// in `buf`. The body is handed on without copying.
pub fn split_message(buf: &mut BytesMut, max: usize) -> Result<Option<Message>, FramingError> {
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let tag = header[0];
    let body_len = checked_body_len([header[1], header[2], header[3], header[4]], max)?;
    if buf.len() < HEADER_LEN + body_len {
        buf.reserve(HEADER_LEN + body_len - buf.len());
        return Ok(None);
    }
    buf.advance(HEADER_LEN);
    let body = buf.split_to(body_len).freeze();
    Ok(Some(Message { tag, body }))
}

/// The message at the front of `buf`, looked at in place: its tag and its
/// whole length (header included) when it is complete, or how many bytes
/// it needs in all when it is not. Copies and allocates nothing.
pub(crate) fn peek_message(buf: &[u8], max: usize) -> Result<Peeked, FramingError> {
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(Peeked::Incomplete(HEADER_LEN));
    };
    let len = HEADER_LEN + checked_body_len([header[1], header[2], header[3], header[4]], max)?;
    if buf.len() < len {
        return Ok(Peeked::Incomplete(len));
    }
    Ok(Peeked::Complete {
        tag: header[0],
        len,
    })
}

/// What [`peek_message`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peeked {
    /// A whole message of `len` bytes, header included.
    Complete {
        /// The message type byte.
        tag: u8,
        /// Header and body.
        len: usize,
    },
    /// Part of a message that will be this many bytes long in all.
    Incomplete(usize),
}

/// Reads one message from `reader`, refusing lengths above `max`.
///
/// Not cancel safe: a partly read message is lost when the future is dropped.
pub(crate) async fn read_message<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<Message, FramingError> {
    let mut header = [0u8; HEADER_LEN];
    reader.read_exact(&mut header).await?;
    let body_len = checked_body_len([header[1], header[2], header[3], header[4]], max)?;
    let mut body = BytesMut::zeroed(body_len);
    reader.read_exact(&mut body).await?;
    Ok(Message {
        tag: header[0],
        body: body.freeze(),
    })
}

fn checked_body_len(len: [u8; 4], max: usize) -> Result<usize, FramingError> {
    let len = u32::from_be_bytes(len);
    if len < 4 {
        return Err(FramingError::InvalidLength(len));
    }
    let body_len = len as usize - 4;
    if body_len > max {
        return Err(FramingError::TooLong { len: body_len, max });
    }
    Ok(body_len)
}

/// Follows message boundaries in a byte stream without buffering it.
///
/// The relay feeds every chunk it forwards through [`FrameTracker::advance`]
/// so that it knows whether it may inject a message of its own (only between
/// messages), which message came last, and where the session is between
/// transactions: a client's `Query`, `Sync` and `FunctionCall` each get
/// exactly one `ReadyForQuery`, whose status byte says whether a
/// transaction is open.
#[derive(Debug, Clone)]
pub struct FrameTracker {
    header: [u8; HEADER_LEN],
    header_filled: usize,
    body_left: usize,
    last_tag: Option<u8>,
    /// `Query`, `Sync` and `FunctionCall` headers seen (client stream).
    requests: u64,
    /// `ReadyForQuery` headers seen (backend stream).
    readies: u64,
    /// The status byte of the last `ReadyForQuery`.
    status: u8,
    /// The next body byte is a `ReadyForQuery` status.
    status_next: bool,
}

impl Default for FrameTracker {
    fn default() -> Self {
        FrameTracker {
            header: [0; HEADER_LEN],
            header_filled: 0,
            body_left: 0,
            last_tag: None,
            requests: 0,
            readies: 0,
            status: b'I',
            status_next: false,
        }
    }
}

impl FrameTracker {
    /// Accounts for `chunk`, the next bytes of the stream.
    pub fn advance(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            if self.body_left > 0 {
                if std::mem::take(&mut self.status_next) {
                    self.status = chunk[0];
                }
                let n = self.body_left.min(chunk.len());
                self.body_left -= n;
                chunk = &chunk[n..];
                continue;
            }
            let n = (HEADER_LEN - self.header_filled).min(chunk.len());
            self.header[self.header_filled..self.header_filled + n].copy_from_slice(&chunk[..n]);
            self.header_filled += n;
            chunk = &chunk[n..];
            if self.header_filled == HEADER_LEN {
                let [tag, a, b, c, d] = self.header;
                // A length below 4 is a broken stream; treat it as an empty
                // body so tracking goes on rather than panicking.
                self.body_left = (u32::from_be_bytes([a, b, c, d]) as usize).saturating_sub(4);
                self.header_filled = 0;
                self.last_tag = Some(tag);
                match tag {
                    b'Q' | b'S' | b'F' => self.requests += 1,
                    b'Z' => {
                        self.readies += 1;
                        self.status_next = self.body_left > 0;
                    }
                    _ => {}
                }
            }
        }
    }

    /// True when the stream is between two messages.
    pub fn at_boundary(&self) -> bool {
        self.header_filled == 0 && self.body_left == 0
    }

    /// Tag of the most recent message whose header has been seen.
    pub fn last_tag(&self) -> Option<u8> {
        self.last_tag
    }

    /// Messages that each get one `ReadyForQuery` (in a client stream):
    /// `Query`, `Sync`, `FunctionCall`. In a backend stream the count means
    /// nothing (`S` is `ParameterStatus` there).
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// `ReadyForQuery` messages seen (in a backend stream).
    pub fn readies(&self) -> u64 {
        self.readies
    }

    /// Status of the last complete `ReadyForQuery`: `I` idle, `T` in a
    /// transaction, `E` in a failed one.
    pub fn status(&self) -> u8 {
        self.status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_complete_and_partial() {
        let mut buf = BytesMut::from(&b"Z\0\0\0\x05IS\0\0"[..]);
        let m = split_message(&mut buf, 100).unwrap().unwrap();
        assert_eq!(m.tag, b'Z');
        assert_eq!(&m.body[..], b"I");
        assert!(split_message(&mut buf, 100).unwrap().is_none());
        assert_eq!(&buf[..], b"S\0\0");
    }

    #[test]
    fn split_rejects_bad_lengths() {
        let mut buf = BytesMut::from(&b"Z\0\0\0\x02"[..]);
        assert!(matches!(
            split_message(&mut buf, 100),
            Err(FramingError::InvalidLength(2))
        ));
        let mut buf = BytesMut::from(&b"Z\0\0\x10\0"[..]);
        assert!(matches!(
            split_message(&mut buf, 100),
            Err(FramingError::TooLong { .. })
        ));
    }

    #[test]
    fn tracker_follows_byte_at_a_time() {
        let stream = b"Z\0\0\0\x05IC\0\0\0\x08abcdE\0\0\0\x04";
        let mut t = FrameTracker::default();
        for (i, b) in stream.iter().enumerate() {
            t.advance(std::slice::from_ref(b));
            let boundary = matches!(i, 5 | 14 | 19);
            assert_eq!(t.at_boundary(), boundary, "at byte {i}");
        }
        assert_eq!(t.last_tag(), Some(b'E'));
    }

    #[test]
    fn tracker_counts_requests_and_ready_status() {
        let client = b"Q\0\0\0\x0dselect 1\0P\0\0\0\x04S\0\0\0\x04";
        let mut c = FrameTracker::default();
        for b in client {
            c.advance(std::slice::from_ref(b));
        }
        assert_eq!(c.requests(), 2);
        let backend = b"C\0\0\0\x0dSELECT 1\0Z\0\0\0\x05TZ\0\0\0\x05I";
        let mut s = FrameTracker::default();
        s.advance(&backend[..20]);
        assert_eq!((s.readies(), s.status()), (1, b'T'));
        s.advance(&backend[20..25]);
        // The header of the second is in, its status byte not yet.
        assert_eq!((s.readies(), s.status()), (2, b'T'));
        s.advance(&backend[25..]);
        assert_eq!((s.readies(), s.status()), (2, b'I'));
        assert!(s.at_boundary());
    }
}
