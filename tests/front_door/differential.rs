//! Pooled sessions against PostgreSQL itself: the same client script runs
//! on direct connections and through pgcell (session pool, and a
//! transaction pool smaller than the number of clients), and every
//! client's transcript — ParameterStatus at login and after, rows, command
//! tags, errors with SQLSTATE and severity, when the connection closes —
//! must be the same. Only the backend key (process id, secret) is left
//! out: it legitimately differs.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use pgcell::ScramClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;
use crate::pooling::pooled_proxy;
use pgcell::Cluster;

/// How long a step waits for what it expects before the transcript says
/// so (a hang through pgcell shows as `<timeout>`, not as a stuck test).
const STEP_TIMEOUT: Duration = Duration::from_secs(4);

/// What a step sends.
#[derive(Clone)]
pub(crate) enum Send {
    /// A simple Query.
    Query(&'static str),
    /// Raw frontend messages, already framed.
    Raw(Vec<u8>),
    /// A simple Query, then (once it runs) a CancelRequest with the key
    /// the client got at login, on a connection of its own.
    QueryThenCancel(&'static str),
}

/// What a step reads before the next one runs.
#[derive(Clone, Copy)]
pub(crate) enum Until {
    /// This many ReadyForQuery.
    Ready(usize),
    /// A message with this tag.
    Tag(u8),
    /// The server closes the connection.
    Closed,
}

/// One step of a script: which client, what it sends, what it waits for.
#[derive(Clone)]
struct Step {
    client: usize,
    send: Send,
    until: Until,
}

fn q(client: usize, sql: &'static str) -> Step {
    Step {
        client,
        send: Send::Query(sql),
        until: Until::Ready(1),
    }
}

fn raw(client: usize, msgs: Vec<u8>, until: Until) -> Step {
    Step {
        client,
        send: Send::Raw(msgs),
        until,
    }
}

/// A script: the startup parameters of each client, then the steps.
struct Script {
    name: &'static str,
    /// Text the direct transcript must contain: the script does what it
    /// says on PostgreSQL (a cancel that cancels, a COPY that fails).
    shows: &'static [&'static str],
    clients: Vec<Vec<(&'static str, &'static str)>>,
    steps: Vec<Step>,
}

/// A raw protocol client that logs in with SCRAM and records, in order,
/// everything the server sends.
pub(crate) struct Wire {
    addr: SocketAddr,
    /// BackendKeyData's process id and secret (left out of the transcript).
    key: Option<[u8; 8]>,
    stream: TcpStream,
    buf: BytesMut,
    pub(crate) closed: bool,
    pub(crate) transcript: Vec<String>,
}

impl Wire {
    pub(crate) async fn connect(addr: SocketAddr, user: &str, params: &[(&str, &str)]) -> Wire {
        Wire::connect_pausing(addr, user, params, None).await
    }

    /// [`Wire::connect`], running `pause` before the last SCRAM message
    /// (the client is in the middle of its login then).
    pub(crate) async fn connect_pausing(
        addr: SocketAddr,
        user: &str,
        params: &[(&str, &str)],
        mut pause: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>>>,
    ) -> Wire {
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut wire = Wire {
            addr,
            key: None,
            stream,
            buf: BytesMut::new(),
            closed: false,
            transcript: Vec::new(),
        };
        let mut all = vec![("user", user), ("database", "app")];
        all.extend_from_slice(params);
        let packet = startup_packet(&all, 0);
        wire.stream.write_all(&packet).await.unwrap();
        let mut scram = ScramClient::with_password(APP_PASSWORD, [7u8; 18]);
        loop {
            let Some((tag, body)) = wire.next().await else {
                wire.transcript.push("<closed at login>".into());
                return wire;
            };
            match tag {
                b'R' => {
                    let code = i32::from_be_bytes(body[..4].try_into().unwrap());
                    match code {
                        0 => {}
                        10 => {
                            let first = scram.client_first();
                            let mut b = BytesMut::new();
                            b.put_slice(b"SCRAM-SHA-256\0");
                            b.put_i32(first.len() as i32);
                            b.put_slice(&first);
                            wire.send_msg(b'p', &b).await;
                        }
                        11 => {
                            if let Some(pause) = pause.take() {
                                pause.await;
                            }
                            let fin = scram.server_first(&body[4..]).unwrap();
                            wire.send_msg(b'p', &fin).await;
                        }
                        12 => {}
                        other => panic!("authentication request {other}"),
                    }
                }
                // Differs legitimately (pgcell issues its own).
                b'K' => wire.key = body.get(..8).and_then(|k| k.try_into().ok()),
                b'Z' => {
                    wire.record(tag, &body);
                    return wire;
                }
                _ => wire.record(tag, &body),
            }
        }
    }

    async fn send_msg(&mut self, tag: u8, body: &[u8]) {
        let mut out = BytesMut::new();
        out.put_u8(tag);
        out.put_i32(body.len() as i32 + 4);
        out.put_slice(body);
        self.stream.write_all(&out).await.unwrap();
    }

    /// The next message, or `None` when the server closed.
    async fn next(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() > len {
                    let msg = self.buf.split_to(len + 1);
                    return Some((msg[0], msg[5..].to_vec()));
                }
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => {
                    self.closed = true;
                    return None;
                }
                Ok(_) => {}
            }
        }
    }

    /// Runs one step and records what came back.
    pub(crate) async fn step(&mut self, send: &Send, until: Until) {
        if self.closed {
            self.transcript.push("<step after close>".into());
            return;
        }
        let out = match send {
            Send::Query(sql) => {
                let mut body = sql.as_bytes().to_vec();
                body.push(0);
                frame(b'Q', &body)
            }
            Send::Raw(bytes) => bytes.clone(),
            Send::QueryThenCancel(sql) => {
                let mut body = sql.as_bytes().to_vec();
                body.push(0);
                frame(b'Q', &body)
            }
        };
        if self.stream.write_all(&out).await.is_err() {
            self.transcript.push("<write failed>".into());
            return;
        }
        if let (Send::QueryThenCancel(_), Some(key)) = (send, self.key) {
            // Long enough for the query to be running on its backend.
            tokio::time::sleep(Duration::from_millis(400)).await;
            let mut cancel = TcpStream::connect(self.addr).await.unwrap();
            let mut packet = 16i32.to_be_bytes().to_vec();
            packet.extend_from_slice(&80877102i32.to_be_bytes());
            packet.extend_from_slice(&key);
            cancel.write_all(&packet).await.unwrap();
            let mut rest = Vec::new();
            let _ = cancel.read_to_end(&mut rest).await;
        }
        let mut ready = 0;
        let read = async {
            loop {
                let Some((tag, body)) = self.next().await else {
                    self.transcript.push("<closed>".into());
                    return;
                };
                self.record(tag, &body);
                match until {
                    Until::Ready(n) if tag == b'Z' => {
                        ready += 1;
                        if ready == n {
                            return;
                        }
                    }
                    Until::Tag(t) if tag == t => return,
                    _ => {}
                }
            }
        };
        if tokio::time::timeout(STEP_TIMEOUT, read).await.is_err() {
            self.transcript.push("<timeout>".into());
        }
    }

    fn record(&mut self, tag: u8, body: &[u8]) {
        let line = match tag {
            b'S' | b'T' | b'D' | b'C' | b'E' | b'N' => {
                format!("{} {}", tag as char, describe(tag, body))
            }
            // Notification: the sender's pid differs.
            b'A' => "A".into(),
            _ => format!("{} {}", tag as char, String::from_utf8_lossy(body)),
        };
        self.transcript.push(line);
    }
}

/// A readable rendering of a message body.
fn describe(tag: u8, body: &[u8]) -> String {
    match tag {
        b'E' | b'N' => {
            // Severity (non-localised), SQLSTATE, message.
            let mut fields = std::collections::BTreeMap::new();
            let mut rest = body;
            while let Some((&f, tail)) = rest.split_first() {
                if f == 0 {
                    break;
                }
                let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
                fields.insert(f, String::from_utf8_lossy(&tail[..end]).into_owned());
                rest = tail.get(end + 1..).unwrap_or(&[]);
            }
            format!(
                "{} {} {}",
                fields.get(&b'V').cloned().unwrap_or_default(),
                fields.get(&b'C').cloned().unwrap_or_default(),
                fields.get(&b'M').cloned().unwrap_or_default()
            )
        }
        b'D' => {
            let n = u16::from_be_bytes([body[0], body[1]]);
            let mut rest = &body[2..];
            let mut cols = Vec::new();
            for _ in 0..n {
                let len = i32::from_be_bytes(rest[..4].try_into().unwrap());
                rest = &rest[4..];
                if len < 0 {
                    cols.push("NULL".to_owned());
                } else {
                    cols.push(String::from_utf8_lossy(&rest[..len as usize]).into_owned());
                    rest = &rest[len as usize..];
                }
            }
            cols.join("|")
        }
        b'T' => {
            // Column names only (table OIDs are the same cluster's anyway).
            let n = u16::from_be_bytes([body[0], body[1]]);
            let mut rest = &body[2..];
            let mut names = Vec::new();
            for _ in 0..n {
                let end = rest.iter().position(|&b| b == 0).unwrap();
                names.push(String::from_utf8_lossy(&rest[..end]).into_owned());
                rest = &rest[end + 1 + 18..];
            }
            names.join("|")
        }
        _ => String::from_utf8_lossy(body)
            .trim_end_matches('\0')
            .replace('\0', "="),
    }
}

pub(crate) fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Parse of the unnamed statement, no parameter types.
pub(crate) fn parse(sql: &str) -> Vec<u8> {
    let mut body = vec![0];
    body.extend_from_slice(sql.as_bytes());
    body.extend_from_slice(&[0, 0, 0]);
    frame(b'P', &body)
}

/// Parse of a named statement, no parameter types.
pub(crate) fn parse_named(name: &str, sql: &str) -> Vec<u8> {
    let body = [name.as_bytes(), b"\0", sql.as_bytes(), b"\0\0\0"].concat();
    frame(b'P', &body)
}

/// Bind of the unnamed portal to a named statement.
pub(crate) fn bind_named(name: &str) -> Vec<u8> {
    let body = [b"\0", name.as_bytes(), b"\0\0\0\0\0\0\0"].concat();
    frame(b'B', &body)
}

fn close_named(name: &str) -> Vec<u8> {
    frame(b'C', &[b"S", name.as_bytes(), b"\0"].concat())
}

fn describe_named(name: &str) -> Vec<u8> {
    frame(b'D', &[b"S", name.as_bytes(), b"\0"].concat())
}

/// A named statement run on its own: Bind, Execute, Sync.
fn run_named(client: usize, name: &str) -> Step {
    raw(
        client,
        cat(&[bind_named(name), execute(), sync()]),
        Until::Ready(1),
    )
}

/// Terminate, and wait for the close.
fn leave(client: usize) -> Step {
    raw(client, frame(b'X', &[]), Until::Closed)
}

/// Bind of the unnamed portal to the unnamed statement, no parameters,
/// text results.
pub(crate) fn bind() -> Vec<u8> {
    frame(b'B', &[0, 0, 0, 0, 0, 0, 0, 0])
}

fn describe_statement() -> Vec<u8> {
    frame(b'D', b"S\0")
}

pub(crate) fn execute() -> Vec<u8> {
    frame(b'E', &[0, 0, 0, 0, 0])
}

pub(crate) fn sync() -> Vec<u8> {
    frame(b'S', &[])
}

fn flush() -> Vec<u8> {
    frame(b'H', &[])
}

fn copy_data(data: &str) -> Vec<u8> {
    frame(b'd', data.as_bytes())
}

fn copy_done() -> Vec<u8> {
    frame(b'c', &[])
}

fn copy_fail(why: &str) -> Vec<u8> {
    let mut body = why.as_bytes().to_vec();
    body.push(0);
    frame(b'f', &body)
}

pub(crate) fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    frame(b'Q', &body)
}

pub(crate) fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// Runs `script` with clients connecting to `addr` as `user`; returns
/// each client's transcript. A client connects at its first step.
async fn run(script: &Script, addr: SocketAddr, user: &str) -> Vec<Vec<String>> {
    let mut clients: Vec<Option<Wire>> = script.clients.iter().map(|_| None).collect();
    for step in &script.steps {
        if clients[step.client].is_none() {
            clients[step.client] =
                Some(Wire::connect(addr, user, &script.clients[step.client]).await);
        }
        if let Some(wire) = clients[step.client].as_mut() {
            wire.step(&step.send, step.until).await;
        }
    }
    clients
        .into_iter()
        .map(|c| c.map(|w| w.transcript).unwrap_or_default())
        .collect()
}

/// The scripts: every finding of the pooled-session review, and the
/// session-state statements around them.
fn scripts() -> Vec<Script> {
    let none: Vec<(&str, &str)> = vec![];
    vec![
        Script {
            name: "settings made inside a committed transaction stay with their client",
            shows: &["D 300ms", "D other, public", "D 77MB"],
            clients: vec![none.clone(), none.clone()],
            steps: vec![
                q(0, "BEGIN"),
                q(0, "SET statement_timeout = 300"),
                q(0, "SET search_path = other, public"),
                q(0, "SELECT set_config('work_mem', '77MB', false)"),
                q(0, "COMMIT"),
                q(1, "SHOW statement_timeout"),
                q(1, "SHOW search_path"),
                q(1, "SHOW work_mem"),
                q(0, "SHOW statement_timeout"),
                q(0, "SHOW search_path"),
                q(0, "SHOW work_mem"),
                q(0, "BEGIN; SET work_mem = '5MB'; ROLLBACK"),
                q(0, "SHOW work_mem"),
                q(
                    0,
                    "BEGIN; SAVEPOINT s; SET work_mem = '6MB'; ROLLBACK TO s; COMMIT",
                ),
                q(0, "SHOW work_mem"),
                q(1, "SHOW work_mem"),
            ],
        },
        Script {
            name: "SET ROLE does not cross clients",
            shows: &["D differential_role"],
            clients: vec![none.clone(), none.clone()],
            steps: vec![
                q(0, "BEGIN; SET ROLE differential_role; COMMIT"),
                q(1, "SELECT current_user, session_user"),
                q(0, "SELECT current_user, session_user"),
                q(0, "RESET ROLE"),
                q(0, "SELECT current_user"),
                q(0, "SET ROLE differential_role"),
                q(1, "SELECT current_user"),
                q(0, "SELECT current_user"),
            ],
        },
        Script {
            name: "startup options belong to their client and are its RESET values",
            shows: &["D alpha,public", "D client", "D Asia/Tokyo", "D 1234ms"],
            clients: vec![
                vec![
                    (
                        "options",
                        "-c search_path=alpha,public -c statement_timeout=1234",
                    ),
                    ("DateStyle", "Postgres, MDY"),
                    ("TimeZone", "Asia/Tokyo"),
                    ("IntervalStyle", "iso_8601"),
                ],
                none.clone(),
            ],
            steps: vec![
                q(0, "SHOW search_path"),
                q(1, "SHOW search_path"),
                q(1, "SHOW statement_timeout"),
                q(1, "SHOW DateStyle"),
                q(0, "SET datestyle = ISO"),
                q(0, "SELECT source FROM pg_settings WHERE name = 'DateStyle'"),
                q(0, "RESET datestyle"),
                q(0, "SHOW datestyle"),
                q(0, "SELECT source FROM pg_settings WHERE name = 'DateStyle'"),
                q(0, "SET timezone = 'UTC'"),
                q(0, "SET statement_timeout = 5"),
                q(0, "RESET ALL"),
                q(0, "SHOW timezone"),
                q(0, "SHOW statement_timeout"),
                q(0, "SET intervalstyle = postgres"),
                q(0, "DISCARD ALL"),
                q(0, "SHOW intervalstyle"),
                q(1, "SHOW timezone"),
                q(1, "SHOW intervalstyle"),
                q(0, "SHOW search_path"),
            ],
        },
        Script {
            name: "application_name is the client's own, or empty",
            shows: &["D billing", "D other"],
            clients: vec![none.clone(), vec![("application_name", "billing")]],
            steps: vec![
                q(0, "SHOW application_name"),
                q(1, "SHOW application_name"),
                q(
                    0,
                    "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()",
                ),
                q(1, "SET application_name = 'other'"),
                q(0, "SHOW application_name"),
                q(1, "SHOW application_name"),
            ],
        },
        Script {
            name: "a terminated backend gives one FATAL and a close",
            shows: &["FATAL 57P01", "D 1"],
            clients: vec![none.clone(), none.clone()],
            steps: vec![
                Step {
                    client: 0,
                    send: Send::Query("SELECT pg_terminate_backend(pg_backend_pid())"),
                    until: Until::Closed,
                },
                q(1, "SELECT 1"),
            ],
        },
        Script {
            name: "a query after Parse/Describe/Flush frees the backend at its ReadyForQuery",
            shows: &["D 2", "D 3", "26000", "D 4"],
            clients: vec![none.clone(), none.clone()],
            steps: vec![
                raw(
                    0,
                    cat(&[parse("SELECT 1 AS one"), describe_statement(), flush()]),
                    Until::Tag(b'T'),
                ),
                q(0, "SELECT 2 AS two"),
                q(1, "SELECT 3 AS three"),
                raw(0, cat(&[bind(), execute(), sync()]), Until::Ready(1)),
                q(1, "SELECT 4 AS four"),
            ],
        },
        Script {
            name: "DEALLOCATE ALL inside a transaction reaches SQL-level statements",
            shows: &["D 2"],
            clients: vec![none.clone()],
            steps: vec![
                q(0, "BEGIN"),
                q(0, "PREPARE p AS SELECT 1"),
                q(0, "DEALLOCATE ALL"),
                q(0, "PREPARE p AS SELECT 2"),
                q(0, "EXECUTE p"),
                q(0, "COMMIT"),
            ],
        },
        Script {
            name: "a query sent into a failed pipeline gets no reply and costs nothing after",
            shows: &["22012", "D after", "D 5", "D still served"],
            clients: vec![none.clone(), none.clone()],
            steps: vec![
                raw(
                    0,
                    cat(&[
                        parse("SELECT 1/0"),
                        bind(),
                        execute(),
                        query("SELECT 'dropped'"),
                        sync(),
                    ]),
                    Until::Ready(1),
                ),
                q(0, "SELECT 'after'"),
                q(1, "SELECT 'other client'"),
                raw(
                    0,
                    cat(&[parse("SELECT 5"), bind(), execute(), sync()]),
                    Until::Ready(1),
                ),
                q(1, "SELECT 'still served'"),
            ],
        },
        Script {
            name: "errors, copy and notices keep their order and codes",
            shows: &["22012", "C COPY 3", "hello", "shown"],
            clients: vec![none.clone(), none.clone()],
            steps: vec![
                q(0, "SELECT 1/0"),
                q(0, "BEGIN; SELECT 1/0; COMMIT"),
                q(0, "ROLLBACK"),
                q(0, "COPY (SELECT generate_series(1, 3)) TO STDOUT"),
                q(0, "DO $$ BEGIN RAISE NOTICE 'hello'; END $$"),
                q(1, "SET client_min_messages = warning"),
                q(1, "DO $$ BEGIN RAISE NOTICE 'hidden'; END $$"),
                q(0, "DO $$ BEGIN RAISE NOTICE 'shown'; END $$"),
            ],
        },
        Script {
            name: "custom (dotted) settings stay with their client",
            shows: &["D acme", "D u1", "D local", "D other"],
            clients: vec![none.clone(), none.clone()],
            steps: vec![
                q(0, "SET myapp.tenant = 'acme'"),
                q(
                    0,
                    "BEGIN; SELECT set_config('myapp.actor', 'u1', false); COMMIT",
                ),
                // A name another client set is defined on its backends
                // (docs/pooling.md): compare values, not NULL against ''.
                q(
                    1,
                    "SELECT coalesce(current_setting('myapp.tenant', true), '') AS t, \
                     coalesce(current_setting('myapp.actor', true), '') AS u",
                ),
                q(0, "SHOW myapp.tenant"),
                q(0, "SELECT current_setting('myapp.actor')"),
                q(1, "SET myapp.tenant = 'other'"),
                q(0, "SHOW myapp.tenant"),
                q(0, "RESET myapp.tenant"),
                q(0, "SHOW myapp.tenant"),
                q(1, "SHOW myapp.tenant"),
                q(0, "SELECT current_setting('myapp.actor')"),
                q(
                    0,
                    "BEGIN; SET LOCAL myapp.actor = 'local'; SHOW myapp.actor; COMMIT",
                ),
                q(0, "SHOW myapp.actor"),
            ],
        },
        Script {
            name: "COPY FROM STDIN, simple and extended, with errors and CopyFail",
            shows: &[
                "D 3",
                "22P02",
                "57014 COPY from stdin failed: changed my mind",
                "D 4",
            ],
            clients: vec![none.clone(), none.clone()],
            steps: vec![
                q(0, "TRUNCATE diff_copy"),
                raw(0, query("COPY diff_copy FROM STDIN"), Until::Tag(b'G')),
                raw(
                    0,
                    cat(&[copy_data("1\n2\n"), copy_data("3\n"), copy_done()]),
                    Until::Ready(1),
                ),
                q(1, "SELECT count(*) FROM diff_copy"),
                raw(0, query("COPY diff_copy FROM STDIN"), Until::Tag(b'G')),
                raw(0, cat(&[copy_data("x\n"), copy_done()]), Until::Ready(1)),
                raw(0, query("COPY diff_copy FROM STDIN"), Until::Tag(b'G')),
                raw(
                    0,
                    cat(&[copy_data("4\n"), copy_fail("changed my mind")]),
                    Until::Ready(1),
                ),
                raw(
                    0,
                    cat(&[
                        parse("COPY diff_copy FROM STDIN"),
                        bind(),
                        execute(),
                        sync(),
                    ]),
                    Until::Tag(b'G'),
                ),
                raw(
                    0,
                    cat(&[copy_data("5\n"), copy_done(), sync()]),
                    Until::Ready(1),
                ),
                q(1, "SELECT count(*) FROM diff_copy"),
                q(0, "SELECT 'after copy'"),
            ],
        },
        Script {
            name: "a cancelled query gives 57014 and the session goes on",
            shows: &["57014 canceling statement due to user request", "25P02"],
            clients: vec![none.clone(), none.clone()],
            steps: vec![
                Step {
                    client: 0,
                    send: Send::QueryThenCancel("SELECT pg_sleep(3)"),
                    until: Until::Ready(1),
                },
                q(0, "SELECT 'after cancel'"),
                q(1, "SELECT 'other client'"),
                q(0, "BEGIN"),
                Step {
                    client: 0,
                    send: Send::QueryThenCancel("SELECT pg_sleep(3)"),
                    until: Until::Ready(1),
                },
                q(0, "SELECT 1"),
                q(0, "ROLLBACK"),
                q(1, "SELECT 'still served'"),
            ],
        },
        Script {
            name: "state made by any statement of a Query stays with its client",
            shows: &["42P01", "34000", "26000", "D 0"],
            clients: vec![none.clone(), none.clone()],
            steps: vec![
                q(
                    0,
                    "select 1; create temp table secret as select 'A-secret'::text v",
                ),
                q(0, "select 1; declare c cursor with hold for select 'A-cursor'"),
                q(0, "select 1; prepare p as select 'A-prepared'"),
                q(0, "begin; create temp table s2 as select 'A2'::text v; commit"),
                q(0, "select 1; listen chan"),
                q(0, "select 1; select pg_advisory_lock(42)"),
                q(0, "SELECT 1 /* ; */; SELECT 1 INTO TEMP t3"),
                leave(0),
                q(1, "select v from pg_temp.secret"),
                q(1, "fetch c"),
                q(1, "execute p"),
                q(1, "select v from pg_temp.s2"),
                q(1, "select count(*) from pg_listening_channels()"),
                q(
                    1,
                    "select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()",
                ),
                q(1, "select * from t3"),
            ],
        },
        Script {
            name: "comments, quotes and dollar quotes hide no statement",
            shows: &["D 71MB", "D alpha, public", "D 7s", "D 72MB"],
            clients: vec![none.clone(), none.clone()],
            steps: vec![
                q(0, "select ';' /* ; /* ; */ */ as a; -- x;\n set work_mem = '71MB'"),
                q(1, "SHOW work_mem"),
                q(0, "SHOW work_mem"),
                q(0, "select $t$ $$ ; $t$; SET search_path = alpha, public"),
                q(0, "SELECT E'\\''; SET statement_timeout = '7s'"),
                q(1, "SHOW search_path"),
                q(1, "SHOW statement_timeout"),
                q(0, "SHOW search_path"),
                q(0, "SHOW statement_timeout"),
                q(0, "SELECT 'a'\n'b' ; sEt\twork_mem\n=\n'72MB'"),
                q(1, "SHOW work_mem"),
                q(0, "SHOW work_mem"),
            ],
        },
        Script {
            name: "a prepared SET runs again in later transactions and stays with its client",
            shows: &["D 66MB", "D differential_role"],
            clients: vec![none.clone(), none.clone()],
            steps: vec![
                raw(
                    0,
                    cat(&[
                        parse_named("set_mem", "SET work_mem = '66MB'"),
                        parse_named("set_role", "SET ROLE differential_role"),
                        parse_named("reset", "RESET ALL"),
                        sync(),
                    ]),
                    Until::Ready(1),
                ),
                run_named(0, "set_mem"),
                q(1, "SHOW work_mem"),
                q(0, "SHOW work_mem"),
                run_named(0, "reset"),
                q(0, "SHOW work_mem"),
                run_named(0, "set_mem"),
                run_named(0, "set_role"),
                q(1, "SELECT current_user, current_setting('work_mem')"),
                q(0, "SELECT current_user, current_setting('work_mem')"),
                raw(
                    0,
                    cat(&[
                        parse_named("cfg", "SELECT set_config('myapp.tenant', $1, false)"),
                        sync(),
                    ]),
                    Until::Ready(1),
                ),
                run_named(0, "reset"),
                q(0, "SELECT current_user"),
                q(
                    1,
                    "SELECT current_user, coalesce(current_setting('myapp.tenant', true), '')",
                ),
            ],
        },
        Script {
            name: "UPDATE pg_settings stays with its client",
            shows: &["D 55MB"],
            clients: vec![none.clone(), none.clone()],
            steps: vec![
                q(
                    0,
                    "UPDATE pg_settings SET setting = '55MB' WHERE name = 'work_mem'",
                ),
                q(1, "SHOW work_mem"),
                q(0, "SHOW work_mem"),
            ],
        },
        Script {
            name: "DEALLOCATE in a failed transaction is refused and forgets nothing",
            shows: &["25P02", "D 1"],
            clients: vec![none.clone()],
            steps: vec![
                raw(
                    0,
                    cat(&[parse_named("s1", "SELECT 1"), sync()]),
                    Until::Ready(1),
                ),
                q(0, "BEGIN"),
                q(0, "SELECT 1/0"),
                q(0, "DEALLOCATE s1"),
                q(0, "DEALLOCATE ALL"),
                q(0, "ROLLBACK"),
                run_named(0, "s1"),
            ],
        },
        Script {
            name: "DISCARD ALL and DEALLOCATE ALL drop a statement however they are sent",
            shows: &["26000"],
            clients: vec![none.clone()],
            steps: vec![
                // Prepared with Flush, no Sync (asyncpg's prepare()).
                raw(
                    0,
                    cat(&[
                        parse_named("s1", "SELECT 1"),
                        describe_named("s1"),
                        flush(),
                    ]),
                    Until::Tag(b'T'),
                ),
                q(0, "DISCARD ALL"),
                raw(0, cat(&[sync()]), Until::Ready(1)),
                run_named(0, "s1"),
                raw(
                    0,
                    cat(&[parse_named("s2", "SELECT 2"), sync()]),
                    Until::Ready(1),
                ),
                q(0, "SELECT 1; DEALLOCATE ALL"),
                run_named(0, "s2"),
                raw(
                    0,
                    cat(&[
                        parse_named("s3", "SELECT 3"),
                        parse_named("drop", "DEALLOCATE ALL"),
                        sync(),
                    ]),
                    Until::Ready(1),
                ),
                run_named(0, "drop"),
                run_named(0, "s3"),
                q(0, "BEGIN"),
                raw(
                    0,
                    cat(&[parse_named("s4", "SELECT 4"), sync()]),
                    Until::Ready(1),
                ),
                q(0, "DEALLOCATE ALL"),
                q(0, "COMMIT"),
                run_named(0, "s4"),
            ],
        },
        // Found by the third adversarial review (issue 20).
        Script {
            name: "a client without an unnamed statement cannot bind another client's",
            shows: &["D A-secret", "26000"],
            clients: vec![none.clone(), none.clone()],
            steps: vec![
                raw(
                    0,
                    cat(&[parse("SELECT 'A-secret'"), bind(), execute(), sync()]),
                    Until::Ready(1),
                ),
                raw(1, cat(&[bind(), execute(), sync()]), Until::Ready(1)),
                raw(1, cat(&[describe_statement(), sync()]), Until::Ready(1)),
            ],
        },
        Script {
            name: "a Parse that fails leaves no statement",
            shows: &["42P01", "26000"],
            clients: vec![none.clone()],
            steps: vec![
                raw(
                    0,
                    cat(&[parse_named("s9", "SELECT * FROM differential_missing"), sync()]),
                    Until::Ready(1),
                ),
                run_named(0, "s9"),
            ],
        },
        Script {
            name: "Parse and Close skipped after an error change no statement",
            shows: &["42601", "D old", "D old1"],
            clients: vec![none.clone()],
            steps: vec![
                raw(
                    0,
                    cat(&[parse("SELECT 'old'"), parse_named("s1", "SELECT 'old1'"), sync()]),
                    Until::Ready(1),
                ),
                raw(
                    0,
                    cat(&[
                        parse_named("x", "bogus syntax"),
                        parse("SELECT 'new'"),
                        close_named("s1"),
                        parse_named("s1", "SELECT 'new1'"),
                        sync(),
                    ]),
                    Until::Ready(1),
                ),
                raw(0, cat(&[bind(), execute(), sync()]), Until::Ready(1)),
                run_named(0, "s1"),
            ],
        },
        Script {
            name: "a DO block of another client that drops every statement leaves a client's",
            shows: &["D A-stmt", "C DO"],
            clients: vec![none.clone(), none.clone()],
            steps: vec![
                raw(0, cat(&[parse_named("s1", "SELECT 'A-stmt'"), sync()]), Until::Ready(1)),
                q(1, "DO $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$"),
                run_named(0, "s1"),
                q(1, "SELECT 1"),
                run_named(0, "s1"),
            ],
        },
        Script {
            name: "a startup search_path with pg_temp: a plain CREATE TABLE stays with its client",
            shows: &["D 0", "42P01"],
            clients: vec![
                vec![("options", "-c search_path=pg_temp,public")],
                vec![("options", "-c search_path=pg_temp,public")],
            ],
            steps: vec![
                q(0, "CREATE TABLE differential_leak (a int)"),
                q(
                    1,
                    "SELECT count(*) FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema()",
                ),
                q(1, "SELECT * FROM differential_leak"),
            ],
        },
        // Found by the fourth adversarial review (issue 20).
        Script {
            name: "DEALLOCATE of a protocol-level statement pipelined inside a transaction",
            shows: &["C DEALLOCATE", "C COMMIT", "26000"],
            clients: vec![none.clone()],
            steps: vec![
                raw(0, cat(&[parse_named("s10", "SELECT 10"), sync()]), Until::Ready(1)),
                raw(
                    0,
                    cat(&[query("BEGIN"), query("DEALLOCATE s10")]),
                    Until::Ready(2),
                ),
                q(0, "COMMIT"),
                run_named(0, "s10"),
                raw(0, cat(&[parse_named("s11", "SELECT 11"), sync()]), Until::Ready(1)),
                raw(
                    0,
                    cat(&[query("SELECT 1"), query("DEALLOCATE PREPARE s11")]),
                    Until::Ready(2),
                ),
                run_named(0, "s11"),
            ],
        },
        Script {
            name: "a failed Parse of the unnamed statement drops the old one",
            shows: &["42P01", "26000"],
            clients: vec![none.clone()],
            steps: vec![
                raw(0, cat(&[parse("SELECT 'x'"), sync()]), Until::Ready(1)),
                raw(
                    0,
                    cat(&[parse("SELECT * FROM differential_missing"), sync()]),
                    Until::Ready(1),
                ),
                raw(0, cat(&[bind(), execute(), sync()]), Until::Ready(1)),
            ],
        },
        Script {
            name: "an error about a statement skipped after an error names it as the client does",
            shows: &["22012", "26000 prepared statement \"s2\" does not exist"],
            clients: vec![none.clone()],
            steps: vec![raw(
                0,
                cat(&[
                    parse("SELECT 1/0"),
                    bind(),
                    execute(),
                    parse_named("s2", "SELECT 3"),
                    sync(),
                    bind_named("s2"),
                    execute(),
                    sync(),
                ]),
                Until::Ready(2),
            )],
        },
        // Found by the fifth adversarial review (issue 20).
        Script {
            name: "a local set_config of search_path to a computed pg_temp, then CREATE TABLE",
            shows: &["C COMMIT", "42P01"],
            clients: vec![none.clone(), none.clone()],
            steps: vec![
                q(
                    0,
                    "BEGIN; SELECT set_config('search_path', 'pg_'||'temp', true); \
                     CREATE TABLE differential_local_leak (x int); \
                     INSERT INTO differential_local_leak VALUES (7); COMMIT",
                ),
                q(1, "SELECT * FROM differential_local_leak"),
            ],
        },
        Script {
            name: "DEALLOCATE sent into a pipeline that fails is discarded",
            shows: &["26000", "D 1"],
            clients: vec![none.clone()],
            steps: vec![
                raw(0, cat(&[parse_named("s1", "SELECT 1"), sync()]), Until::Ready(1)),
                raw(
                    0,
                    cat(&[
                        bind_named("s1"),
                        execute(),
                        bind_named("differential_nonexist"),
                        query("DEALLOCATE s1"),
                        sync(),
                    ]),
                    Until::Ready(1),
                ),
                run_named(0, "s1"),
            ],
        },
        Script {
            name: "a Query the backend discards leaves the unnamed statement",
            shows: &["26000", "D keep"],
            clients: vec![none.clone()],
            steps: vec![
                raw(0, cat(&[parse("SELECT 'keep'"), sync()]), Until::Ready(1)),
                raw(
                    0,
                    cat(&[bind_named("differential_nonexist"), query("SELECT 1"), sync()]),
                    Until::Ready(1),
                ),
                raw(0, cat(&[bind(), execute(), sync()]), Until::Ready(1)),
            ],
        },
        Script {
            name: "a Parse of a name in use behind a DEALLOCATE ALL in the same pipeline",
            shows: &["D 11"],
            clients: vec![none.clone()],
            steps: vec![
                raw(0, cat(&[parse_named("s1", "SELECT 1"), sync()]), Until::Ready(1)),
                raw(
                    0,
                    cat(&[
                        parse("DEALLOCATE ALL"),
                        bind(),
                        execute(),
                        parse_named("s1", "SELECT 11"),
                        sync(),
                    ]),
                    Until::Ready(1),
                ),
                run_named(0, "s1"),
            ],
        },
        Script {
            name: "statement names longer than 63 bytes are kept as PostgreSQL keeps them",
            shows: &["D 70"],
            clients: vec![none.clone()],
            steps: vec![
                raw(0, cat(&[parse_named("sxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "SELECT 70"), sync()]), Until::Ready(1)),
                run_named(0, "sxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"),
            ],
        },
        // Found by the sixth adversarial review (issue 20).
        Script {
            name: "custom settings named local.x, transaction.x, constraints.x are the session's",
            shows: &["D |", "D A-secret|A-t"],
            clients: vec![none.clone(), none.clone()],
            steps: vec![
                q(0, "SET local.x = 'A-secret'; SET transaction.x = 'A-t'"),
                q(
                    1,
                    "SELECT coalesce(current_setting('local.x', true), ''), \
                     coalesce(current_setting('transaction.x', true), '')",
                ),
                q(
                    0,
                    "SELECT current_setting('local.x', true), current_setting('transaction.x', true)",
                ),
            ],
        },
        Script {
            name: "a failed Parse, then a DEALLOCATE of it the backend skips",
            shows: &["42601", "26000", "D new"],
            clients: vec![none.clone()],
            steps: vec![
                raw(
                    0,
                    cat(&[parse_named("s1", "bogus"), query("DEALLOCATE s1"), sync()]),
                    Until::Ready(1),
                ),
                run_named(0, "s1"),
                raw(0, cat(&[parse_named("s1", "SELECT 'new'"), sync()]), Until::Ready(1)),
                run_named(0, "s1"),
            ],
        },
    ]
}

/// What every comparison's cluster has: a role to switch to, a schema,
/// a table for COPY.
pub(crate) fn prepare(a: &Cluster) {
    a.psql(
        "postgres",
        "CREATE ROLE differential_role; GRANT differential_role TO app; CREATE SCHEMA alpha AUTHORIZATION app",
    )
    .unwrap();
    a.psql(
        "app",
        "CREATE TABLE diff_copy (a int); ALTER TABLE diff_copy OWNER TO app",
    )
    .unwrap();
}

/// The script does what it says on PostgreSQL: its direct transcript
/// has every text of `shows` (a script that failed the same way on both
/// sides would otherwise pass).
fn assert_shows(script: &Script, direct: &[Vec<String>]) {
    assert!(!script.shows.is_empty(), "{}: no `shows`", script.name);
    for needle in script.shows {
        assert!(
            direct.iter().flatten().any(|line| line.contains(needle)),
            "{}: direct PostgreSQL never showed {needle:?}: {direct:#?}",
            script.name
        );
    }
}

/// Runs `scripts` against direct PostgreSQL and through `proxy`, and
/// returns every difference.
async fn differences(scripts: &[Script], a: &Cluster, proxy: &Proxy, label: &str) -> Vec<String> {
    let mut failures = Vec::new();
    for script in scripts {
        let direct = run(script, a.addr(), "app").await;
        assert_shows(script, &direct);
        let through = run(script, proxy.addr, "app.acme").await;
        for (i, (d, p)) in direct.iter().zip(&through).enumerate() {
            if d != p {
                failures.push(format!(
                    "{} [{label}], client {i}:\n  direct: {d:#?}\n  pgcell: {p:#?}",
                    script.name
                ));
            }
        }
    }
    failures
}

/// Runs every script against direct PostgreSQL and through pgcell with
/// `pool` and compares. The clients of one script run one after another
/// in `session` mode (they would wait for each other's backend).
async fn compare(pool: &str, cluster_name: &str) {
    let a = cluster(cluster_name);
    prepare(&a);
    let proxy = pooled_proxy("acme", &a, pool).await;
    let failures = differences(&scripts(), &a, &proxy, pool).await;
    proxy.stop().await;
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_matches_direct_postgres() {
    let a = cluster("cluster-diff-passthrough");
    prepare(&a);
    let proxy = Proxy::start(&config_text("", "allow", &tenant("acme", &a, ""))).await;
    let failures = differences(&scripts(), &a, &proxy, "passthrough").await;
    proxy.stop().await;
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// `SET SESSION AUTHORIZATION` needs a superuser login: its own cluster,
/// where the pool's user is one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_authorization_through_pools_matches_direct_postgres() {
    let a = cluster("cluster-diff-authz");
    prepare(&a);
    a.psql("postgres", "ALTER ROLE app SUPERUSER").unwrap();
    let none: Vec<(&str, &str)> = vec![];
    let scripts = [
        Script {
            name: "SET SESSION AUTHORIZATION stays with its client",
            shows: &["D differential_role|differential_role", "|3MB"],
            clients: vec![none.clone(), none.clone()],
            steps: vec![
                q(
                    0,
                    "BEGIN; SET SESSION AUTHORIZATION differential_role; COMMIT",
                ),
                q(1, "SELECT current_user, session_user"),
                q(0, "SELECT current_user, session_user"),
                q(0, "SET work_mem = '3MB'"),
                q(1, "SHOW work_mem"),
                q(
                    0,
                    "SELECT current_user, session_user, current_setting('work_mem')",
                ),
                q(0, "RESET SESSION AUTHORIZATION"),
                q(0, "SELECT current_user, session_user"),
                q(0, "SET SESSION AUTHORIZATION differential_role"),
                q(0, "SET ROLE app"),
                q(1, "SELECT current_user, session_user"),
                q(0, "SELECT current_user, session_user"),
                q(0, "DISCARD ALL"),
                q(0, "SELECT current_user, session_user"),
            ],
        },
        Script {
            name: "a superuser's settings are replayed before the role that drops the privilege",
            shows: &["D differential_role|replica|on", "D replica"],
            clients: vec![none.clone(), none.clone()],
            steps: vec![
                q(0, "SET session_replication_role = replica"),
                q(0, "SET lo_compat_privileges = on"),
                q(0, "SET ROLE differential_role"),
                q(0, "SELECT 1"),
                q(1, "SHOW session_replication_role"),
                q(
                    0,
                    "SELECT current_user, current_setting('session_replication_role'), \
                 current_setting('lo_compat_privileges')",
                ),
                q(0, "SHOW session_replication_role"),
                q(0, "SET lo_compat_privileges = off"),
                q(0, "RESET ROLE"),
                q(0, "SELECT current_user"),
            ],
        },
    ];
    let mut failures = Vec::new();
    for pool in [
        "mode = \"transaction\"\nsize = 1\nacquire_timeout = \"2s\"",
        "mode = \"session\"\nsize = 2\nacquire_timeout = \"2s\"",
    ] {
        let proxy = pooled_proxy("acme", &a, pool).await;
        failures.extend(differences(&scripts, &a, &proxy, pool).await);
        proxy.stop().await;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// A function that changes a setting PostgreSQL does not report, called
/// from a plain SELECT: invisible on the wire, so only
/// `reset_every_transaction` keeps it with its client.
fn hidden_setting_script() -> Script {
    Script {
        name: "a function that sets an unreported setting, with reset_every_transaction",
        shows: &["D 99MB"],
        clients: vec![vec![], vec![]],
        steps: vec![
            q(0, "SELECT differential_set_work_mem()"),
            q(1, "SHOW work_mem"),
            q(0, "SHOW work_mem"),
            q(1, "SHOW work_mem"),
        ],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_every_transaction_covers_settings_changed_out_of_sight() {
    let a = cluster("cluster-diff-hidden");
    a.psql(
        "app",
        "CREATE FUNCTION public.differential_set_work_mem() RETURNS text LANGUAGE sql \
         AS $$ SELECT pg_catalog.set_config('work_mem', '99MB', false) $$; \
         ALTER FUNCTION public.differential_set_work_mem() OWNER TO app",
    )
    .unwrap();
    let script = hidden_setting_script();
    let direct = run(&script, a.addr(), "app").await;
    assert_shows(&script, &direct);
    let proxy = pooled_proxy(
        "acme",
        &a,
        "mode = \"transaction\"\nsize = 1\nacquire_timeout = \"2s\"\nreset_every_transaction = true",
    )
    .await;
    let pooled = run(&script, proxy.addr, "app.acme").await;
    proxy.stop().await;
    assert_eq!(direct, pooled);
    // Without it the change is out of pgcell's sight (the documented
    // limit): the other client sees it.
    let proxy = pooled_proxy(
        "acme",
        &a,
        "mode = \"transaction\"\nsize = 1\nacquire_timeout = \"2s\"",
    )
    .await;
    let pooled = run(&script, proxy.addr, "app.acme").await;
    proxy.stop().await;
    assert!(
        pooled[1].iter().any(|l| l == "D 99MB"),
        "the limit in docs/pooling.md no longer holds; update the docs: {pooled:?}"
    );
}

/// A role whose default `search_path` starts with `pg_temp`: a plain
/// `CREATE TABLE` makes a temporary table, which no statement shows.
fn role_search_path_script() -> Script {
    Script {
        name: "a role's default search_path with pg_temp: a plain CREATE TABLE stays with its client",
        shows: &["D 0", "42P01"],
        clients: vec![vec![], vec![]],
        steps: vec![
            q(0, "CREATE TABLE differential_role_leak (a int)"),
            q(
                1,
                "SELECT count(*) FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema()",
            ),
            q(1, "SELECT * FROM differential_role_leak"),
        ],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_roles_default_search_path_is_read_from_the_backend() {
    let a = cluster("cluster-diff-role-path");
    a.psql(
        "postgres",
        "ALTER ROLE app SET search_path = pg_temp, public",
    )
    .unwrap();
    let script = role_search_path_script();
    let direct = run(&script, a.addr(), "app").await;
    assert_shows(&script, &direct);
    let proxy = pooled_proxy(
        "acme",
        &a,
        "mode = \"transaction\"\nsize = 1\nacquire_timeout = \"2s\"",
    )
    .await;
    let pooled = run(&script, proxy.addr, "app.acme").await;
    proxy.stop().await;
    assert_eq!(direct, pooled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_pool_matches_direct_postgres() {
    compare(
        "mode = \"transaction\"\nsize = 1\nacquire_timeout = \"2s\"",
        "cluster-diff-tx",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_pool_matches_direct_postgres() {
    // Two backends: each script has at most two clients at once.
    compare(
        "mode = \"session\"\nsize = 2\nacquire_timeout = \"2s\"",
        "cluster-diff-session",
    )
    .await;
}

/// A small deterministic generator (xorshift64*): the same seed, the same
/// scripts, on every machine.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub(crate) fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// Settings the random scripts change, with values to choose from (none
/// depends on timing: no short statement_timeout).
const RANDOM_SETTINGS: &[(&str, &[&str])] = &[
    ("work_mem", &["'8MB'", "'77MB'"]),
    ("search_path", &["alpha, public", "public"]),
    ("statement_timeout", &["'5s'", "0"]),
    ("DateStyle", &["'ISO, MDY'", "'Postgres, DMY'"]),
    ("TimeZone", &["'UTC'", "'Asia/Tokyo'"]),
    ("application_name", &["'x1'", "'x2'"]),
    ("client_min_messages", &["warning", "notice"]),
    ("IntervalStyle", &["postgres", "iso_8601"]),
];

/// One statement of a random script, as SQL (leaked; tests only).
fn random_statement(rng: &mut Rng, in_transaction: bool) -> &'static str {
    let (name, values) = rng.pick(RANDOM_SETTINGS);
    let value = rng.pick(values);
    let sql = match rng.below(if in_transaction { 13 } else { 11 }) {
        0 | 1 => format!("SET {name} = {value}"),
        2 | 3 => format!("SHOW {name}"),
        4 => format!("RESET {name}"),
        5 => format!(
            "SELECT set_config('{name}', {}, false)",
            if value.starts_with('\'') {
                value.to_owned()
            } else {
                format!("'{value}'")
            }
        ),
        6 => "SET ROLE differential_role".to_owned(),
        7 => "SELECT current_user, pg_catalog.current_setting('role')".to_owned(),
        8 => "RESET ROLE".to_owned(),
        9 => [
            "SELECT 1/0",
            "SELECT 'ok'",
            "RESET ALL",
            "DO $$ BEGIN RAISE NOTICE 'n'; END $$",
        ][rng.below(4)]
        .to_owned(),
        10 if !in_transaction => "DISCARD ALL".to_owned(),
        10 => "SELECT 2".to_owned(),
        11 => format!("SET LOCAL {name} = {value}"),
        _ => "SAVEPOINT s; SET work_mem = '9MB'; ROLLBACK TO s".to_owned(),
    };
    Box::leak(sql.into_boxed_str())
}

/// A random script: three clients with random startup parameters taking
/// turns; a transaction, a pipeline or a statement at a time (so no client
/// waits for another's backend: the comparison is of sessions, not of
/// timing). Every client ends by showing every setting it can change.
fn random_script(seed: u64) -> Script {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let profiles: &[&[(&str, &str)]] = &[
        &[],
        &[("options", "-c search_path=alpha,public -c work_mem=3MB")],
        &[("DateStyle", "Postgres, MDY"), ("TimeZone", "Asia/Tokyo")],
        &[("application_name", "app2")],
    ];
    let clients: Vec<Vec<(&'static str, &'static str)>> =
        (0..3).map(|_| rng.pick(profiles).to_vec()).collect();
    let mut steps = Vec::new();
    for _ in 0..14 {
        let client = rng.below(3);
        match rng.below(6) {
            0 | 1 => {
                steps.push(q(client, "BEGIN"));
                for _ in 0..1 + rng.below(3) {
                    steps.push(q(client, random_statement(&mut rng, true)));
                }
                steps.push(q(client, rng.pick(&["COMMIT", "ROLLBACK"])));
            }
            2 => {
                let sql = rng.pick(&[
                    "SELECT pg_catalog.current_setting('work_mem')",
                    "SELECT 1/0",
                    "SELECT pg_catalog.set_config('work_mem', '12MB', false)",
                ]);
                steps.push(raw(
                    client,
                    cat(&[parse(sql), bind(), execute(), sync()]),
                    Until::Ready(1),
                ));
            }
            _ => steps.push(q(client, random_statement(&mut rng, false))),
        }
    }
    for client in 0..3 {
        for (name, _) in RANDOM_SETTINGS {
            steps.push(q(
                client,
                Box::leak(format!("SHOW {name}").into_boxed_str()),
            ));
        }
        steps.push(q(
            client,
            "SELECT current_user, (SELECT source FROM pg_settings WHERE name = 'DateStyle')",
        ));
    }
    Script {
        name: "random",
        // Every random script ends with SHOWs.
        shows: &["C SHOW"],
        clients,
        steps,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sessions_through_a_small_transaction_pool_match_direct_postgres() {
    let a = cluster("cluster-diff-random");
    prepare(&a);
    // Two backends for three clients.
    let proxy = pooled_proxy(
        "acme",
        &a,
        "mode = \"transaction\"\nsize = 2\nacquire_timeout = \"2s\"",
    )
    .await;
    let mut failures = Vec::new();
    for seed in 1..=16u64 {
        let script = random_script(seed);
        let direct = run(&script, a.addr(), "app").await;
        assert_shows(&script, &direct);
        let pooled = run(&script, proxy.addr, "app.acme").await;
        for (i, (d, p)) in direct.iter().zip(&pooled).enumerate() {
            if d != p {
                let steps: Vec<String> = script
                    .steps
                    .iter()
                    .map(|s| match &s.send {
                        Send::Query(sql) => format!("{}: {sql}", s.client),
                        Send::Raw(_) => format!("{}: <pipeline>", s.client),
                        Send::QueryThenCancel(sql) => format!("{}: {sql} <cancel>", s.client),
                    })
                    .collect();
                failures.push(format!(
                    "seed {seed}, client {i}\n  script: {steps:#?}\n  direct: {d:#?}\n  pgcell: {p:#?}"
                ));
            }
        }
        if !failures.is_empty() {
            break;
        }
    }
    proxy.stop().await;
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// A tenant removed by a reload while a client is logging in: the client
/// completes its login and is then told why it must go (`57P01`), not
/// closed without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_removed_during_login_is_told() {
    let a = cluster("cluster-removed-login");
    prepare(&a);
    let proxy = pooled_proxy(
        "acme",
        &a,
        "mode = \"transaction\"\nsize = 1\nacquire_timeout = \"2s\"",
    )
    .await;
    let path = proxy.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    let without = text.replace("id = \"acme\"", "id = \"other\"");
    assert_ne!(text, without);
    let proxy_ref = &proxy;
    let wire = Wire::connect_pausing(
        proxy.addr,
        "app.acme",
        &[],
        Some(Box::pin(async move {
            std::fs::write(&path, &without).unwrap();
            proxy_ref.reload_and_wait().await;
        })),
    )
    .await;
    assert!(
        wire.transcript
            .iter()
            .any(|l| l.contains("FATAL 57P01") && l.contains("tenant was removed")),
        "{:?}",
        wire.transcript
    );
    proxy.stop().await;
}
