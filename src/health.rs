//! The TCP health port the NLB checks.
//!
//! It accepts only while pgcell is serving: the socket is bound at start (so
//! the port is known and kept) but listens only in [`State::Ready`] and
//! [`State::Draining`] (a target that fails its checks while draining gets
//! its connections reset by the NLB), and is
//! closed in every other state, so a TCP check fails fast with a refused
//! connection. It tolerates a PROXY header (NLB checks carry `LOCAL` ones
//! when the target group has PROXY v2 on), answers `HTTP/1.1 200` to an HTTP
//! request, and otherwise just closes.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::lifecycle::State;
use crate::proxy_protocol::{self, ProxyMode};
use crate::stream::Prefixed;

/// How long one health connection may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// The health port: its address, fixed at start.
pub(crate) struct HealthPort {
    addr: SocketAddr,
    socket: Option<Socket>,
}

impl HealthPort {
    /// Binds `addr` without listening, to reserve the port.
    pub(crate) fn bind(addr: SocketAddr) -> io::Result<HealthPort> {
        let socket = new_socket(addr)?;
        let addr = socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("health socket has no IP address"))?;
        Ok(HealthPort {
            addr,
            socket: Some(socket),
        })
    }

    /// The bound address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Listens while `state` is Ready, until it is Stopped.
    pub(crate) async fn serve(mut self, mut state: watch::Receiver<State>) {
        loop {
            let current = *state.borrow_and_update();
            if current == State::Stopped {
                return;
            }
            if !current.is_serving() {
                if state.changed().await.is_err() {
                    return;
                }
                continue;
            }
            let listener = match self.listen() {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(addr = %self.addr, error = %e, "health port cannot listen");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            tracing::info!(addr = %self.addr, "health port open");
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        if let Ok((conn, _)) = accepted {
                            tokio::spawn(answer(conn));
                        }
                    }
                    changed = state.changed() => {
                        if changed.is_err() || !state.borrow().is_serving() {
                            break;
                        }
                    }
                }
            }
            drop(listener);
            tracing::info!(addr = %self.addr, "health port closed");
        }
    }

    fn listen(&mut self) -> io::Result<TcpListener> {
        let socket = match self.socket.take() {
            Some(s) => s,
            None => new_socket(self.addr)?,
        };
        socket.listen(1024)?;
        socket.set_nonblocking(true)?;
        TcpListener::from_std(socket.into())
    }
}

fn new_socket(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // Closing and reopening must not wait out TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

async fn answer(mut conn: TcpStream) {
    metrics::counter!(crate::metrics::HEALTH_CHECKS).increment(1);
    let _ = tokio::time::timeout(CHECK_TIMEOUT, async {
        let preface = proxy_protocol::read_preface(&mut conn, ProxyMode::Optional).await.ok()?;
        let mut stream = Prefixed::new(preface.read_ahead, &mut conn);
        let mut head = [0u8; 5];
        stream.read_exact(&mut head).await.ok()?;
        if head.starts_with(b"GET ") || head.starts_with(b"HEAD ") {
            // Drain what the request sent so closing does not reset it.
            let mut sink = [0u8; 1024];
            let _ = tokio::time::timeout(Duration::from_millis(50), stream.read(&mut sink)).await;
            let body = "ok\n";
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(response.as_bytes()).await.ok()?;
            stream.shutdown().await.ok()?;
        }
        Some(())
    })
    .await;
}
