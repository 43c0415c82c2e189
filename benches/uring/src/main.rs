//! Benchmark prototype: a minimal single-threaded TCP relay with two data paths.
//!
//!   pgcell-uring-relay epoll LISTEN_PORT BACKEND_ADDR
//!   pgcell-uring-relay uring LISTEN_PORT BACKEND_ADDR
//!   pgcell-uring-relay uring-defer LISTEN_PORT BACKEND_ADDR   (uring + DEFER_TASKRUN)
//!   pgcell-uring-relay tokio-poll LISTEN_PORT BACKEND_ADDR    (one future polls both ways)
//!   pgcell-uring-relay mio LISTEN_PORT BACKEND_ADDR           (one readiness loop, no tasks)
//!
//! It listens on 127.0.0.1:LISTEN_PORT and, for every client connection, opens
//! one TCP connection to BACKEND_ADDR (e.g. 127.0.0.1:5432) and copies bytes
//! both ways. No parsing, no pooling: this isolates the I/O cost of a proxy.
//!
//! Both modes use one thread, a 16 KiB buffer per direction and the same
//! pattern per message burst: one read/recv of whatever is there, then one
//! write/send of exactly those bytes (repeated only on a short write).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};

use anyhow::{bail, Context, Result};

const BUF_SIZE: usize = 16 * 1024;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        bail!("usage: {} epoll|uring|uring-defer LISTEN_PORT BACKEND_ADDR", args[0]);
    }
    let port: u16 = args[2].parse().context("LISTEN_PORT")?;
    let backend: SocketAddr = args[3].parse().context("BACKEND_ADDR")?;
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    match args[1].as_str() {
        "epoll" => epoll::run(listen, backend),
        "uring" => uring::run(listen, backend, false),
        "uring-defer" => uring::run(listen, backend, true),
        "tokio-poll" => tokio_poll::run(listen, backend),
        "mio" => readiness::run(listen, backend),
        other => bail!("unknown mode {other:?} (want epoll, uring, uring-defer, tokio-poll or mio)"),
    }
}

/// Mode (a): tokio current_thread runtime (epoll underneath).
mod epoll {
    use super::*;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    pub fn run(listen: SocketAddr, backend: SocketAddr) -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind(listen).await?;
            eprintln!("epoll relay on {listen} -> {backend}");
            loop {
                let (client, _) = listener.accept().await?;
                // One task per client; it lives until either side closes.
                tokio::spawn(async move {
                    if let Err(e) = relay(client, backend).await {
                        eprintln!("connection error: {e:#}");
                    }
                });
            }
        })
    }

    async fn relay(mut client: tokio::net::TcpStream, backend: SocketAddr) -> Result<()> {
        let mut server = tokio::net::TcpStream::connect(backend).await?;
        client.set_nodelay(true)?;
        server.set_nodelay(true)?;
        let (cr, cw) = client.split();
        let (sr, sw) = server.split();
        // Two copy loops; when either direction ends (EOF or error), drop both.
        tokio::select! {
            r = copy(cr, sw) => r,
            r = copy(sr, cw) => r,
        }
    }

    /// read() into a reused 16 KiB buffer, then write_all() what was read.
    async fn copy<R, W>(mut r: R, mut w: W) -> Result<()>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut buf = vec![0u8; BUF_SIZE];
        loop {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            w.write_all(&buf[..n]).await?;
        }
    }
}

/// Mode (c): tokio `current_thread`, one task per client whose single
/// future polls both directions itself (no split halves, no `select!`):
/// the shape of pgcell's passthrough relay since issue 22.
mod tokio_poll {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    pub fn run(listen: SocketAddr, backend: SocketAddr) -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind(listen).await?;
            eprintln!("tokio-poll relay on {listen} -> {backend}");
            loop {
                let (client, _) = listener.accept().await?;
                tokio::spawn(async move {
                    if let Err(e) = relay(client, backend).await {
                        eprintln!("connection error: {e:#}");
                    }
                });
            }
        })
    }

    struct Dir {
        buf: Vec<u8>,
        start: usize,
        end: usize,
    }

    /// Writes what is pending, then reads once: Ready(Ok(true)) moved
    /// bytes, Ready(Ok(false)) end of stream, Pending waits.
    fn step<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        d: &mut Dir,
        r: &mut R,
        w: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<bool>> {
        while d.start < d.end {
            match Pin::new(&mut *w).poll_write(cx, &d.buf[d.start..d.end]) {
                Poll::Ready(Ok(n)) => d.start += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        let mut rb = ReadBuf::new(&mut d.buf);
        match Pin::new(&mut *r).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                d.start = 0;
                d.end = n;
                Poll::Ready(Ok(n > 0))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    async fn relay(mut client: tokio::net::TcpStream, backend: SocketAddr) -> Result<()> {
        let mut server = tokio::net::TcpStream::connect(backend).await?;
        client.set_nodelay(true)?;
        server.set_nodelay(true)?;
        let mut up = Dir { buf: vec![0; BUF_SIZE], start: 0, end: 0 };
        let mut down = Dir { buf: vec![0; BUF_SIZE], start: 0, end: 0 };
        std::future::poll_fn(|cx| loop {
            let mut moved = false;
            match step(&mut up, &mut client, &mut server, cx) {
                Poll::Ready(Ok(true)) => moved = true,
                Poll::Ready(Ok(false)) => return Poll::Ready(Ok(())),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Pending => {}
            }
            match step(&mut down, &mut server, &mut client, cx) {
                Poll::Ready(Ok(true)) => moved = true,
                Poll::Ready(Ok(false)) => return Poll::Ready(Ok(())),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Pending => {}
            }
            if !moved {
                return Poll::Pending;
            }
        })
        .await
    }
}

/// Mode (d): one `mio` readiness loop (epoll, edge-triggered) following
/// every connection's two sockets: no tasks, no wakers, no scheduler. The
/// design docs/performance.md proposes for the per-message path.
mod readiness {
    use super::*;
    use mio::net::{TcpListener as MioListener, TcpStream as MioStream};
    use mio::{Events, Interest, Poll, Token};
    use std::io::{ErrorKind, Read, Write};

    const LISTENER: Token = Token(usize::MAX);

    struct Dir {
        buf: Box<[u8]>,
        start: usize,
        end: usize,
    }

    struct Conn {
        client: MioStream,
        server: MioStream,
        up: Dir,
        down: Dir,
    }

    /// Moves bytes from `r` to `w` until one of them would block: Ok(false)
    /// when `r` ended.
    fn pump(d: &mut Dir, r: &mut MioStream, w: &mut MioStream) -> std::io::Result<bool> {
        loop {
            while d.start < d.end {
                match w.write(&d.buf[d.start..d.end]) {
                    Ok(n) => d.start += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
                    Err(e) => return Err(e),
                }
            }
            match r.read(&mut d.buf) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    d.start = 0;
                    d.end = n;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
                Err(e) => return Err(e),
            }
        }
    }

    pub fn run(listen: SocketAddr, backend: SocketAddr) -> Result<()> {
        let mut poll = Poll::new()?;
        let mut events = Events::with_capacity(1024);
        let mut listener = MioListener::bind(listen)?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        eprintln!("mio relay on {listen} -> {backend}");
        let mut conns: Vec<Option<Conn>> = Vec::new();
        let mut free: Vec<usize> = Vec::new();
        loop {
            poll.poll(&mut events, None)?;
            for event in events.iter() {
                if event.token() == LISTENER {
                    loop {
                        let (mut client, _) = match listener.accept() {
                            Ok(c) => c,
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(e) => return Err(e.into()),
                        };
                        // Blocking connect once per client, as the uring modes.
                        let std_server = TcpStream::connect(backend)?;
                        std_server.set_nonblocking(true)?;
                        let mut server = MioStream::from_std(std_server);
                        client.set_nodelay(true)?;
                        server.set_nodelay(true)?;
                        let slot = free.pop().unwrap_or_else(|| {
                            conns.push(None);
                            conns.len() - 1
                        });
                        let both = Interest::READABLE | Interest::WRITABLE;
                        poll.registry().register(&mut client, Token(slot * 2), both)?;
                        poll.registry().register(&mut server, Token(slot * 2 + 1), both)?;
                        let dir = || Dir { buf: vec![0u8; BUF_SIZE].into_boxed_slice(), start: 0, end: 0 };
                        conns[slot] = Some(Conn { client, server, up: dir(), down: dir() });
                    }
                    continue;
                }
                let slot = event.token().0 / 2;
                let Some(conn) = conns.get_mut(slot).and_then(Option::as_mut) else {
                    continue;
                };
                // Either socket's readiness: move both ways as far as they go.
                let open = pump(&mut conn.up, &mut conn.client, &mut conn.server)
                    .and_then(|a| Ok(a && pump(&mut conn.down, &mut conn.server, &mut conn.client)?));
                if !matches!(open, Ok(true)) {
                    if let Some(mut c) = conns[slot].take() {
                        let _ = poll.registry().deregister(&mut c.client);
                        let _ = poll.registry().deregister(&mut c.server);
                    }
                    free.push(slot);
                }
            }
        }
    }
}

/// Mode (b): plain `io-uring` crate, one ring, one thread, completion-driven.
mod uring {
    use super::*;
    use io_uring::{opcode, squeue, types, IoUring};
    use std::net::Shutdown;

    /// user_data of the (single, re-armed) accept SQE.
    const ACCEPT: u64 = u64::MAX;

    #[derive(Clone, Copy, PartialEq)]
    enum Op {
        Idle,
        Recv,
        Send,
    }

    /// One direction of a connection: recv from `socks[d]`, send to `socks[1 - d]`.
    struct Dir {
        buf: Box<[u8]>, // heap buffer: its address stays fixed while an SQE uses it
        len: usize,     // bytes received in the current burst
        sent: usize,    // bytes of the burst already sent
        op: Op,         // at most one SQE in flight per direction
    }

    struct Conn {
        socks: [TcpStream; 2], // 0 = client, 1 = backend
        dirs: [Dir; 2],        // 0 = client->backend, 1 = backend->client
        closing: bool,
    }

    /// user_data for connection slot `idx`, direction `d`.
    fn token(idx: usize, d: usize) -> u64 {
        ((idx as u64) << 1) | d as u64
    }

    /// Queue an SQE; if the submission queue is full, flush it first.
    fn push(ring: &mut IoUring, e: squeue::Entry) -> Result<()> {
        // SAFETY: every buffer/fd referenced by an SQE lives in a boxed `Conn`
        // (or the listener) that is not freed while the SQE is in flight.
        unsafe {
            if ring.submission().push(&e).is_err() {
                ring.submit()?;
                ring.submission().push(&e).map_err(|_| anyhow::anyhow!("SQ full"))?;
            }
        }
        Ok(())
    }

    fn recv(ring: &mut IoUring, c: &mut Conn, idx: usize, d: usize) -> Result<()> {
        let dir = &mut c.dirs[d];
        dir.op = Op::Recv;
        let fd = types::Fd(c.socks[d].as_raw_fd());
        let e = opcode::Recv::new(fd, dir.buf.as_mut_ptr(), dir.buf.len() as u32).build();
        push(ring, e.user_data(token(idx, d)))
    }

    fn send(ring: &mut IoUring, c: &mut Conn, idx: usize, d: usize) -> Result<()> {
        let dir = &mut c.dirs[d];
        dir.op = Op::Send;
        let fd = types::Fd(c.socks[1 - d].as_raw_fd());
        let rest = &dir.buf[dir.sent..dir.len];
        let e = opcode::Send::new(fd, rest.as_ptr(), rest.len() as u32).build();
        push(ring, e.user_data(token(idx, d)))
    }

    /// `defer`: also set IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN
    /// (kernel >= 6.1), the flags recommended for one-thread-per-ring servers:
    /// completions are processed only inside io_uring_enter, with no
    /// task_work interrupts of the thread.
    pub fn run(listen: SocketAddr, backend: SocketAddr, defer: bool) -> Result<()> {
        let listener = TcpListener::bind(listen)?;
        let lfd = types::Fd(listener.as_raw_fd());
        let mut builder = IoUring::builder();
        if defer {
            builder.setup_single_issuer().setup_defer_taskrun();
        }
        let mut ring = builder.build(512).context("io_uring_setup")?;
        let accept = || opcode::Accept::new(lfd, std::ptr::null_mut(), std::ptr::null_mut()).build();
        push(&mut ring, accept().user_data(ACCEPT))?;
        eprintln!("uring relay (defer_taskrun={defer}) on {listen} -> {backend}");

        let mut conns: Vec<Option<Box<Conn>>> = Vec::new(); // slab of connections
        let mut free: Vec<usize> = Vec::new();
        let mut cqes: Vec<(u64, i32)> = Vec::with_capacity(512);

        loop {
            // One io_uring_enter: submit everything queued, wait for >= 1 completion.
            // EINTR (e.g. strace attaching) is harmless: the SQ tail is kept, retry.
            match ring.submit_and_wait(1) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => r?,
            };
            cqes.clear();
            cqes.extend(ring.completion().map(|c| (c.user_data(), c.result())));

            for &(ud, res) in &cqes {
                if ud == ACCEPT {
                    push(&mut ring, accept().user_data(ACCEPT))?; // re-arm
                    if res < 0 {
                        eprintln!("accept: {}", std::io::Error::from_raw_os_error(-res));
                        continue;
                    }
                    // SAFETY: a successful accept CQE carries a new, owned socket fd.
                    let client = unsafe { TcpStream::from_raw_fd(res) };
                    // Backend connect is blocking (loopback, once per client session).
                    let server = match TcpStream::connect(backend) {
                        Ok(s) => s,
                        Err(e) => {
                            eprintln!("connect {backend}: {e}");
                            continue; // drops (closes) the client
                        }
                    };
                    client.set_nodelay(true)?;
                    server.set_nodelay(true)?;
                    let dir = || Dir { buf: vec![0u8; BUF_SIZE].into_boxed_slice(), len: 0, sent: 0, op: Op::Idle };
                    let conn = Box::new(Conn { socks: [client, server], dirs: [dir(), dir()], closing: false });
                    let idx = match free.pop() {
                        Some(i) => i,
                        None => {
                            conns.push(None);
                            conns.len() - 1
                        }
                    };
                    let c = conns[idx].insert(conn);
                    recv(&mut ring, c, idx, 0)?;
                    recv(&mut ring, c, idx, 1)?;
                    continue;
                }

                let (idx, d) = ((ud >> 1) as usize, (ud & 1) as usize);
                let Some(c) = conns.get_mut(idx).and_then(|c| c.as_mut()) else { continue };
                let op = c.dirs[d].op;
                c.dirs[d].op = Op::Idle;

                // EOF, error, or the peer direction already tore the connection down.
                if res <= 0 && op == Op::Recv || res < 0 || c.closing {
                    if !c.closing {
                        c.closing = true;
                        // Wakes the other direction's pending recv/send so it completes.
                        let _ = c.socks[0].shutdown(Shutdown::Both);
                        let _ = c.socks[1].shutdown(Shutdown::Both);
                    }
                    if c.dirs.iter().all(|x| x.op == Op::Idle) {
                        conns[idx] = None; // no SQE references it any more: close fds
                        free.push(idx);
                    }
                    continue;
                }

                let dir = &mut c.dirs[d];
                match op {
                    Op::Recv => {
                        dir.len = res as usize;
                        dir.sent = 0;
                        send(&mut ring, c, idx, d)?;
                    }
                    Op::Send => {
                        dir.sent += res as usize;
                        if dir.sent < dir.len {
                            send(&mut ring, c, idx, d)?; // short write: send the rest
                        } else {
                            recv(&mut ring, c, idx, d)?; // burst done: read the next one
                        }
                    }
                    Op::Idle => {}
                }
            }
        }
    }
}
