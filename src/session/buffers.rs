//! Buffers of pooled sessions: allocated when a transaction needs them,
//! given back between transactions (an idle client holds none), and the
//! write path that keeps reading a backend's answers while a large
//! pipeline is written to it.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::stream::ReadReady;

/// Read buffer size, each direction, while a backend is leased.
pub(crate) const READ_CHUNK: usize = 32 * 1024;
/// Read buffer size of an idle client: most statements fit, and an idle
/// client should cost little memory (thousands of them sit idle).
pub(crate) const IDLE_READ_CHUNK: usize = 2 * 1024;
/// First read from a backend: a short result fits.
pub(crate) const SERVER_READ_CHUNK: usize = 4 * 1024;

/// Makes room to read into `buf`: `small` bytes when it is empty (the
/// common case, a short statement), a full chunk when a message is
/// already partly in. A buffer given back with [`recycle`] is taken
/// first.
///
/// Never by growing the buffer: `BytesMut::reserve` counts the bytes
/// already consumed from its front as used when the part of a message left
/// over is longer than them, and doubles the allocation. Under a long
/// result that a client reads slowly this doubled again and again (a read
/// buffer of tens of MiB, filled from the backend), so the leftover is
/// copied into a fresh chunk instead (docs/reliability.md, slow reader).
pub(crate) fn reserve_read(buf: &mut BytesMut, small: usize) {
    if buf.capacity() == 0 {
        reuse(buf);
    }
    let want = if buf.is_empty() { small } else { READ_CHUNK };
    if buf.capacity() - buf.len() >= want || buf.try_reclaim(want) {
        return;
    }
    let mut fresh = BytesMut::with_capacity(buf.len() + want);
    fresh.extend_from_slice(buf);
    *buf = fresh;
}

/// Spare buffers kept per thread for the next transaction.
const MAX_SPARE_BUFFERS: usize = 64;

thread_local! {
    /// Empty backend-side buffers of sessions that went idle: a
    /// transaction-mode session gives its buffers back between
    /// transactions (an idle client holds none) and takes them again for
    /// the next one, without a trip through the allocator each time.
    static SPARE_BUFFERS: std::cell::RefCell<Vec<BytesMut>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Gives an empty `buf` back for reuse; it is left without memory.
pub(crate) fn recycle(buf: &mut BytesMut) {
    if !buf.is_empty() || buf.capacity() == 0 {
        return;
    }
    let mut spare = std::mem::take(buf);
    // Back to the start of its memory (it may have been advanced over
    // what was sent), so that `capacity` is all of it; large ones (a big
    // result went through) and ones still shared with a message are
    // freed.
    if !spare.try_reclaim(SERVER_READ_CHUNK) || spare.capacity() > READ_CHUNK {
        return;
    }
    SPARE_BUFFERS.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < MAX_SPARE_BUFFERS {
            s.push(spare);
        }
    });
}

/// Puts a spare buffer into an empty `buf` that has no memory, if there is
/// one on this thread.
pub(crate) fn reuse(buf: &mut BytesMut) {
    if buf.capacity() == 0 {
        if let Some(spare) = SPARE_BUFFERS.with(|s| s.borrow_mut().pop()) {
            *buf = spare;
        }
    }
}

/// Frees an empty buffer above `keep` bytes, so idle sessions stay small.
pub(crate) fn shrink(buf: &mut BytesMut, keep: usize) {
    if buf.is_empty() && buf.capacity() > keep {
        *buf = BytesMut::new();
    }
}

/// Most backend output buffered while a client pipeline is being written;
/// past it pgcell stops reading until the write completes.
const MAX_BUFFERED_WHILE_WRITING: usize = 64 << 20;

/// Writes `data` to `stream`, reading what the backend answers meanwhile
/// into `answers`. Not cancel safe.
pub(crate) async fn write_draining<S>(
    stream: &mut S,
    data: &[u8],
    answers: &mut BytesMut,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // The common case: the socket takes everything at once (a statement
    // or a pipeline smaller than the socket buffer). No split, no read
    // buffer.
    let first = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(std::pin::Pin::new(&mut *stream).poll_write(cx, data))
    })
    .await;
    let mut written = match first {
        std::task::Poll::Ready(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
        std::task::Poll::Ready(Ok(n)) => n,
        std::task::Poll::Ready(Err(e)) => return Err(e),
        std::task::Poll::Pending => 0,
    };
    if written == data.len() {
        return stream.flush().await;
    }
    let (mut reader, mut writer) = tokio::io::split(stream);
    while written < data.len() {
        answers.reserve(READ_CHUNK);
        tokio::select! {
            n = writer.write(&data[written..]) => {
                let n = n?;
                if n == 0 {
                    return Err(std::io::ErrorKind::WriteZero.into());
                }
                written += n;
            }
            read = reader.read_buf(answers), if answers.len() < MAX_BUFFERED_WHILE_WRITING => {
                if read? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
        }
    }
    writer.flush().await
}

/// Reads what an idle client sends next into `buf`. A client that can be
/// waited for by readiness (plaintext) holds no buffer while it waits:
/// the buffer is taken only once bytes are there. Cancel safe.
pub(crate) async fn read_idle<C>(client: &mut C, buf: &mut BytesMut) -> std::io::Result<usize>
where
    C: AsyncRead + ReadReady + Unpin,
{
    if !client.waits_without_buffer() {
        reserve_read(buf, IDLE_READ_CHUNK);
        return client.read_buf(buf).await;
    }
    loop {
        std::future::poll_fn(|cx| client.poll_read_ready(cx)).await?;
        reserve_read(buf, IDLE_READ_CHUNK);
        // Readiness can be stale (the last read took exactly what it
        // asked for): one try without waiting, and the buffer goes back
        // when nothing was there.
        let attempt = {
            let mut read = std::pin::pin!(client.read_buf(buf));
            std::future::poll_fn(|cx| {
                std::task::Poll::Ready(match std::future::Future::poll(read.as_mut(), cx) {
                    std::task::Poll::Ready(r) => Some(r),
                    std::task::Poll::Pending => None,
                })
            })
            .await
        };
        match attempt {
            Some(read) => return read,
            None => recycle(buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Buf;

    #[test]
    fn a_streamed_result_does_not_grow_the_read_buffer() {
        let mut buf = BytesMut::new();
        // Reads that each leave a message part behind, longer than what
        // was consumed before it: reserve() alone doubled the buffer each
        // time.
        for round in 0..200 {
            reserve_read(&mut buf, SERVER_READ_CHUNK);
            let room = buf.capacity() - buf.len();
            let read = room.min(3000 + round % 7);
            buf.extend(std::iter::repeat_n(b'x', read));
            let consumed = buf.len().saturating_sub(2000 + round % 5);
            buf.advance(consumed);
            assert!(
                buf.capacity() <= 2 * READ_CHUNK + 4096,
                "round {round}: capacity {}",
                buf.capacity()
            );
        }
    }
}
