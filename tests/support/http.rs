//! A minimal HTTP/1.1 client: one request per connection, `Connection:
//! close`, the answer read to its end within 10 s.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long an answer may take.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// An answer.
#[derive(Debug)]
pub struct Response {
    /// The status code, 0 when the status line does not parse.
    pub status: u16,
    /// What follows the header.
    pub body: String,
    /// The whole answer, status line and header included.
    pub text: String,
}

/// Sends `method path` with extra `headers` (each ending in `\r\n`) and
/// `body`; `Err` when the connection fails or the answer does not end in
/// time.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> Result<Response, String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n{headers}\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    tokio::time::timeout(ANSWER_WITHIN, s.read_to_end(&mut raw))
        .await
        .map_err(|_| format!("no answer within {ANSWER_WITHIN:?}"))?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok(Response { status, body, text })
}

/// A GET; (status, body). Fails the test when nothing answers.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path).await
}

/// A request without a body; (status, body). Fails the test when nothing
/// answers.
pub async fn http_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let r = request(addr, method, path, "", "")
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    (r.status, r.body)
}
