//! Byte streams: a socket with read-ahead put back, and plain-or-TLS.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream whose first bytes were read early (to detect a PROXY header or a
/// TLS ClientHello) and are served again before the rest.
#[derive(Debug)]
pub(crate) struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    /// Wraps `inner`, serving `prefix` first.
    pub(crate) fn new(prefix: Bytes, inner: S) -> Self {
        Prefixed { prefix, inner }
    }

    /// Puts `bytes` back in front of whatever is still unread.
    pub(crate) fn unread(&mut self, bytes: &[u8]) {
        let mut joined = Vec::with_capacity(bytes.len() + self.prefix.len());
        joined.extend_from_slice(bytes);
        joined.extend_from_slice(&self.prefix);
        self.prefix = Bytes::from(joined);
    }

    /// True when read-ahead bytes are still waiting to be read.
    pub(crate) fn has_read_ahead(&self) -> bool {
        !self.prefix.is_empty()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= SMALL_READ {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        // A small read (a message header during the login): read what
        // has arrived, up to a login message's usual size, and keep the
        // rest for the next read, so that a login round trip costs one
        // `recv` and not one per header and body.
        let mut ahead = [0u8; READ_AHEAD];
        let mut ahead = ReadBuf::new(&mut ahead);
        std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, &mut ahead))?;
        let got = ahead.filled();
        let n = got.len().min(buf.remaining());
        buf.put_slice(&got[..n]);
        if got.len() > n {
            self.prefix = Bytes::copy_from_slice(&got[n..]);
        }
        Poll::Ready(Ok(()))
    }
}

/// Reads asking for fewer bytes than this read ahead ([`READ_AHEAD`]).
const SMALL_READ: usize = 64;
/// How much a small read takes from the socket at most: a startup
/// packet or a SASL message fits.
const READ_AHEAD: usize = 512;

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A plaintext stream or the same stream inside TLS.
#[derive(Debug)]
pub(crate) enum MaybeTls<P, T> {
    /// No encryption.
    Plain(P),
    /// TLS; boxed because the TLS state is large.
    Tls(Box<T>),
}

impl<P, T> MaybeTls<P, T> {
    /// True for the TLS variant.
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, MaybeTls::Tls(_))
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            MaybeTls::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            MaybeTls::Tls($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
        }
    };
}

impl<P: AsyncRead + Unpin, T: AsyncRead + Unpin> AsyncRead for MaybeTls<P, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl<P: AsyncWrite + Unpin, T: AsyncWrite + Unpin> AsyncWrite for MaybeTls<P, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}

/// Waiting for a client's next bytes without holding a read buffer: an
/// idle pooled client (there may be tens of thousands) then costs no
/// buffer memory until it speaks.
pub(crate) trait ReadReady {
    /// Ready when a read would find data (or the end of the stream) at
    /// once, or when the stream cannot tell without reading: the read
    /// itself then waits.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// True when [`ReadReady::poll_read_ready`] really waits (it is not
    /// always ready), so that the caller can give its read buffer up.
    fn waits_without_buffer(&self) -> bool {
        true
    }
}

impl ReadReady for tokio::net::TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::net::TcpStream::poll_read_ready(self, cx)
    }
}

impl<S: ReadReady> ReadReady for Prefixed<S> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.has_read_ahead() {
            return Poll::Ready(Ok(()));
        }
        self.inner.poll_read_ready(cx)
    }
}

impl<P: ReadReady, T> ReadReady for MaybeTls<P, T> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            MaybeTls::Plain(p) => p.poll_read_ready(cx),
            // Decrypted bytes may already sit in the TLS state, which the
            // socket's readiness does not show: let the read wait.
            MaybeTls::Tls(_) => Poll::Ready(Ok(())),
        }
    }

    fn waits_without_buffer(&self) -> bool {
        !self.is_tls()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn prefix_then_inner() {
        let inner: &[u8] = b"world";
        let mut s = Prefixed::new(Bytes::from_static(b"hello "), inner);
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }

    #[tokio::test]
    async fn small_reads_read_ahead_and_serve_the_rest_later() {
        let (mut client, server) = tokio::io::duplex(4096);
        let mut s = Prefixed::new(Bytes::new(), server);
        let sent: Vec<u8> = (0..100u8).collect();
        client.write_all(&sent).await.unwrap();
        let mut header = [0u8; 5];
        s.read_exact(&mut header).await.unwrap();
        assert_eq!(header, sent[..5]);
        // The rest came with the header and waits in the stream.
        assert!(s.has_read_ahead());
        let mut body = vec![0u8; 95];
        s.read_exact(&mut body).await.unwrap();
        assert_eq!(body, sent[5..]);
        assert!(!s.has_read_ahead());
        // A large read goes to the socket as it is.
        client.write_all(b"more").await.unwrap();
        drop(client);
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"more");
    }

    #[tokio::test]
    async fn unread_goes_first() {
        let inner: &[u8] = b"cd";
        let mut s = Prefixed::new(Bytes::new(), inner);
        let mut two = [0u8; 1];
        s.read_exact(&mut two).await.unwrap();
        s.unread(b"ab");
        assert!(s.has_read_ahead());
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"abd");
    }
}
