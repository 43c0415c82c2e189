//! A tiny fault-injecting HTTP proxy in front of moto: requests for chosen
//! ELBv2 actions get a scripted error answer (throttling as ELBv2's query
//! protocol spells it, or a bare 503) a given number of times; everything
//! else is forwarded to moto. One request per connection, `Connection:
//! close` both ways, which the SDK's client handles like any server.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An error answer.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// HTTP 400 with ELBv2's `Throttling` error body.
    Throttle,
    /// HTTP 503 `ServiceUnavailable`.
    Unavailable,
}

/// The proxy; stops serving when dropped.
pub struct FaultProxy {
    pub addr: SocketAddr,
    /// (action, fault) still to be served, in order per action.
    faults: Arc<Mutex<VecDeque<(String, Fault)>>>,
    /// Actions seen, with what they got (`Throttle`, `Unavailable`,
    /// `forwarded`).
    pub seen: Arc<Mutex<Vec<(String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port, forwarding to `upstream_port`.
    pub async fn start(upstream_port: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let faults: Arc<Mutex<VecDeque<(String, Fault)>>> = Arc::default();
        let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let (f, s) = (faults.clone(), seen.clone());
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (f, s) = (f.clone(), s.clone());
                tokio::spawn(async move {
                    let _ = serve(conn, upstream_port, f, s).await;
                });
            }
        });
        FaultProxy {
            addr,
            faults,
            seen,
            task,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next request for `action` gets `fault` (queued after earlier
    /// ones).
    pub fn inject(&self, action: &str, fault: Fault) {
        self.faults
            .lock()
            .unwrap()
            .push_back((action.to_owned(), fault));
    }

    /// Faults not served yet.
    pub fn pending(&self) -> usize {
        self.faults.lock().unwrap().len()
    }

    /// What requests for `action` got, in order.
    pub fn seen(&self, action: &str) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(a, _)| a == action)
            .map(|(_, what)| what.clone())
            .collect()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut conn: TcpStream,
    upstream_port: u16,
    faults: Arc<Mutex<VecDeque<(String, Fault)>>>,
    seen: Arc<Mutex<Vec<(String, String)>>>,
) -> std::io::Result<()> {
    let Some((head, body)) = read_message(&mut conn).await? else {
        return Ok(());
    };
    let action = form_value(&String::from_utf8_lossy(&body), "Action").unwrap_or_default();
    let fault = {
        let mut faults = faults.lock().unwrap();
        let i = faults.iter().position(|(a, _)| *a == action);
        i.and_then(|i| faults.remove(i)).map(|(_, f)| f)
    };
    seen.lock().unwrap().push((
        action,
        fault.map_or("forwarded".to_owned(), |f| format!("{f:?}")),
    ));
    let answer = match fault {
        Some(Fault::Throttle) => {
            error_response("400 Bad Request", "Sender", "Throttling", "Rate exceeded")
        }
        Some(Fault::Unavailable) => error_response(
            "503 Service Unavailable",
            "Receiver",
            "ServiceUnavailable",
            "Service is unavailable, try again",
        ),
        None => {
            let mut upstream = TcpStream::connect(("127.0.0.1", upstream_port)).await?;
            upstream.write_all(&closing(&head)).await?;
            upstream.write_all(&body).await?;
            let mut raw = Vec::new();
            upstream.read_to_end(&mut raw).await?;
            match split_head(&raw) {
                Some(end) => {
                    let mut out = closing(&raw[..end]);
                    out.extend_from_slice(&raw[end..]);
                    out
                }
                None => raw,
            }
        }
    };
    conn.write_all(&answer).await?;
    conn.shutdown().await
}

/// An ELBv2 (query protocol) error answer.
fn error_response(status: &str, kind: &str, code: &str, message: &str) -> Vec<u8> {
    let body = format!(
        "<ErrorResponse xmlns=\"http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/\">\
<Error><Type>{kind}</Type><Code>{code}</Code><Message>{message}</Message></Error>\
<RequestId>fault-proxy-0001</RequestId></ErrorResponse>"
    );
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nx-amzn-RequestId: fault-proxy-0001\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Reads one request: (head including the blank line, body by
/// Content-Length). `None` when the peer closed first.
async fn read_message(conn: &mut TcpStream) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(end) = split_head(&buf) {
            break end;
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let length: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "the fault proxy reads Content-Length bodies only:\n{head}"
    );
    let mut body = buf[end..].to_vec();
    while body.len() < length {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(Some((buf[..end].to_vec(), body)))
}

/// The length of the head (through `\r\n\r\n`), when complete.
fn split_head(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// `head` with any `Connection` header replaced by `Connection: close`.
fn closing(head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut out = String::new();
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        let is_connection = line
            .split_once(':')
            .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("connection"));
        if !is_connection {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

/// A value of an `application/x-www-form-urlencoded` body.
fn form_value(body: &str, key: &str) -> Option<String> {
    body.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_owned())
}
