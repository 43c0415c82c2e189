//! One pooled backend connection: opened and logged in by pgcell itself.
//!
//! pgcell answers whatever the backend asks for: cleartext, MD5 or
//! SCRAM-SHA-256, with the user's password or, when only a SCRAM secret is
//! configured, with the ClientKey recovered from a client's proof.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use thiserror::Error;
use tokio::io::AsyncWriteExt;

use crate::auth::scram::{ScramClient, ScramError, SCRAM_SHA_256};
use crate::backend::connect::{self, BackendStream, ConnectError, Targets};
use crate::backend::topology::{NoServer, OpenGuard, Role, Target};
use crate::config::Password;
use crate::protocol::framing::{read_message, FramingError};
use crate::protocol::messages::{self, auth};
use crate::protocol::startup::{CancelKey, StartupMessage};
use crate::protocol::SqlState;

/// The startup parameters a backend logs in with, besides user and
/// database: those of the clients it serves. A client gets only backends
/// of its own profile, so its startup values are the backend's RESET
/// values (`session::engine`). Clients of one application share one
/// profile (and one copy of it).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct StartupProfile {
    /// (name, value) as the client sent them, in its order.
    pub params: Vec<(String, String)>,
}

impl StartupProfile {
    /// Whether `a` and `b` are the same profile.
    pub(crate) fn same(a: &Arc<StartupProfile>, b: &Arc<StartupProfile>) -> bool {
        Arc::ptr_eq(a, b) || a == b
    }
}

/// Timeouts for opening backends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OpenSettings {
    /// TCP (and TLS) connect, per address.
    pub connect_timeout: Duration,
    /// Backend login.
    pub login_timeout: Duration,
    /// TCP keepalive.
    pub keepalive: Duration,
}

/// Longest backend message accepted during login.
const MAX_LOGIN_MESSAGE_LEN: usize = 1 << 20;

/// How pgcell logs in to a backend as a pooled user.
#[derive(Clone)]
pub(crate) enum BackendLogin {
    /// With the user's password.
    Password(Password),
    /// With SCRAM keys: the ClientKey recovered from a client's proof and
    /// the ServerKey of the user's secret (the backend holds the same secret).
    ScramKeys {
        /// ClientKey.
        client_key: [u8; 32],
        /// ServerKey.
        server_key: [u8; 32],
    },
}

impl std::fmt::Debug for BackendLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendLogin::Password(_) => f.write_str("BackendLogin::Password(<redacted>)"),
            BackendLogin::ScramKeys { .. } => f.write_str("BackendLogin::ScramKeys(<redacted>)"),
        }
    }
}

/// An open, logged-in backend connection.
pub(crate) struct ServerConn {
    /// The stream, idle between messages.
    pub stream: BackendStream,
    /// The backend's address (for cancel requests).
    pub addr: SocketAddr,
    /// The backend's own cancel key.
    pub key: CancelKey,
    /// Current values of the parameters the backend reports.
    pub params: Vec<(String, String)>,
    /// When the connection was opened.
    pub created: Instant,
    /// When the connection was last handed back.
    pub last_used: Instant,
    /// Prepared statements pgcell created on this backend.
    pub prepared: super::statements::BackendStatements,
    /// The startup parameters it logged in with: it serves clients that
    /// sent the same.
    pub profile: Arc<StartupProfile>,
    /// Which of its tenant's servers it is connected to.
    pub server: usize,
    /// Its `search_path` at login names `pg_temp` (a role's or database's
    /// default, or the client's startup options): a plain `CREATE TABLE`
    /// on it may make a temporary table. Read by the pool when it opens a
    /// transaction-mode backend.
    pub searches_pg_temp: bool,
    /// Counts it against that server while it lives.
    _open: OpenGuard,
}

impl ServerConn {
    /// Whether the backend sent something, or closed, while it sat idle in
    /// the pool. An idle backend is silent: anything readable is a
    /// `57P01` from a restart or an administrator, a FATAL before a close,
    /// or news (a `ParameterStatus` after the server's reload) pgcell
    /// would have to handle; the backend is not handed out then. Costs no
    /// system call unless the poller saw the socket readable.
    pub(crate) fn spoke_while_idle(&self) -> bool {
        use std::task::{Context, Poll};
        let tcp = match &self.stream {
            crate::stream::MaybeTls::Plain(tcp) => tcp,
            crate::stream::MaybeTls::Tls(tls) => tls.get_ref().0,
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match tcp.poll_read_ready(&mut cx) {
            Poll::Pending => false,
            Poll::Ready(Err(_)) => true,
            // Readable as far as the poller knows: look without consuming.
            Poll::Ready(Ok(())) => {
                let mut byte = [0u8; 1];
                let mut buf = tokio::io::ReadBuf::new(&mut byte);
                !matches!(tcp.poll_peek(&mut cx, &mut buf), Poll::Pending)
            }
        }
    }
}

/// Longest reply read while pgcell talks to a backend on its own.
const MAX_OWN_REPLY: usize = 1 << 20;

/// Why pgcell's own statement on a backend failed.
#[derive(Debug)]
pub(crate) enum OwnQueryError {
    /// The backend refused it (its SQLSTATE and message).
    Refused(SqlState, String),
    /// The backend closed or answered out of turn.
    Lost,
}

impl From<OwnQueryError> for OpenError {
    fn from(e: OwnQueryError) -> OpenError {
        match e {
            OwnQueryError::Refused(code, message) => OpenError::Refused { code, message },
            OwnQueryError::Lost => OpenError::Io(FramingError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the backend closed during pgcell's own query",
            ))),
        }
    }
}

impl ServerConn {
    /// Runs one simple query of pgcell's own on a backend that waits for a
    /// command, to `ReadyForQuery`; returns its rows as (first, second)
    /// column text. `ParameterStatus` updates the backend's parameters;
    /// notices are dropped.
    pub(crate) async fn run_own(
        &mut self,
        query: &str,
    ) -> Result<Vec<(String, String)>, OwnQueryError> {
        let mut body = query.as_bytes().to_vec();
        body.push(0);
        let mut out = BytesMut::new();
        messages::tagged(&mut out, b'Q', &body);
        self.stream
            .write_all(&out)
            .await
            .map_err(|_| OwnQueryError::Lost)?;
        let mut error = None;
        let mut rows = Vec::new();
        loop {
            let msg = read_message(&mut self.stream, MAX_OWN_REPLY)
                .await
                .map_err(|_| OwnQueryError::Lost)?;
            match msg.tag {
                b'E' => {
                    if messages::is_fatal(&msg.body) {
                        return Err(OwnQueryError::Lost);
                    }
                    let code = messages::error_field(&msg.body, b'C')
                        .and_then(SqlState::parse)
                        .unwrap_or(SqlState::INTERNAL_ERROR);
                    error = Some((code, messages::error_message(&msg.body)));
                }
                b'S' => {
                    if let Some((name, value)) = parameter_status(&msg.body) {
                        set_param(&mut self.params, name, value);
                    }
                }
                b'D' => {
                    if let Some([Some(name), Some(value)]) =
                        messages::data_row(&msg.body).as_deref()
                    {
                        rows.push((
                            String::from_utf8_lossy(name).into_owned(),
                            String::from_utf8_lossy(value).into_owned(),
                        ));
                    }
                }
                b'Z' => {
                    return match (error, msg.body.first()) {
                        (None, Some(b'I')) => Ok(rows),
                        (Some((code, e)), _) => Err(OwnQueryError::Refused(code, e)),
                        (None, _) => Err(OwnQueryError::Lost),
                    };
                }
                _ => {}
            }
        }
    }
}

/// Why a backend could not be opened.
#[derive(Debug, Error)]
pub(crate) enum OpenError {
    /// Unreachable.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The login exchange broke.
    #[error("backend login: {0}")]
    Io(#[from] FramingError),
    /// The backend refused the login.
    #[error("backend refused login with SQLSTATE {code}: {message}")]
    Refused {
        /// SQLSTATE.
        code: SqlState,
        /// The backend's message.
        message: String,
    },
    /// The backend asked for something pgcell cannot answer.
    #[error("backend asked for unsupported authentication ({0})")]
    Unsupported(&'static str),
    /// SCRAM failed.
    #[error("backend SCRAM: {0}")]
    Scram(#[from] ScramError),
    /// Timed out.
    #[error("backend login timed out")]
    Timeout,
    /// No random bytes for the SCRAM nonce: refused, never guessable.
    #[error(transparent)]
    Random(#[from] crate::auth::RandomError),
}

impl ServerConn {
    /// Connects to a server of `targets` fit for the client's target and
    /// logs in as `user` to `database`. Each login reports whether the
    /// server is in recovery (`in_hot_standby`, PostgreSQL 14+): a server
    /// that is not what the client wants is closed and the next one
    /// tried, and the topology learns its role. A server that reports
    /// nothing (older PostgreSQL) is taken as it is.
    pub(crate) async fn open(
        targets: Targets<'_>,
        database: &str,
        user: &str,
        login: &BackendLogin,
        profile: &Arc<StartupProfile>,
        timeouts: &OpenSettings,
    ) -> Result<ServerConn, OpenError> {
        let topology = targets.topology;
        let mut tried = 0;
        // A server answered but was not what the client wants.
        let mut wrong_role = false;
        let mut last = String::from("no server");
        for (server, fallback) in topology
            .candidates(targets.target)
            .map_err(ConnectError::from)?
        {
            let conn = match ServerConn::open_server(
                targets, server, database, user, login, profile, timeouts,
            )
            .await
            {
                Ok(conn) => conn,
                Err(OpenError::Connect(ConnectError::Unreachable { tried: n, last: l })) => {
                    tried += n;
                    last = l;
                    continue;
                }
                // A server starting up or shutting down: the next may serve.
                Err(OpenError::Refused { code, message })
                    if code == SqlState::CANNOT_CONNECT_NOW =>
                {
                    tried += 1;
                    last = format!("{}: {message}", topology.servers()[server].addr);
                    continue;
                }
                Err(e) => return Err(e),
            };
            tried += 1;
            let role = conn.role();
            if role != Role::Unknown {
                topology.saw_role(server, role);
            }
            if targets.target.fits(role, fallback) {
                return Ok(conn);
            }
            wrong_role = true;
            last = format!("{}: {}", conn.addr, role.label());
        }
        Err(match targets.target {
            Target::Primary if wrong_role => {
                ConnectError::NoServer(NoServer::NoPrimary(last)).into()
            }
            _ => ConnectError::Unreachable { tried, last }.into(),
        })
    }

    /// Connects to server `server` of `targets` and logs in, whatever its
    /// role.
    pub(crate) async fn open_server(
        targets: Targets<'_>,
        server: usize,
        database: &str,
        user: &str,
        login: &BackendLogin,
        profile: &Arc<StartupProfile>,
        timeouts: &OpenSettings,
    ) -> Result<ServerConn, OpenError> {
        let (stream, addr) = connect::connect_server(
            targets,
            server,
            timeouts.connect_timeout,
            timeouts.keepalive,
        )
        .await?;
        let mut conn = ServerConn::new(
            stream,
            addr,
            profile.clone(),
            server,
            targets.topology.count_open(server),
            Instant::now(),
        );
        tokio::time::timeout(timeouts.login_timeout, conn.login(database, user, login))
            .await
            .map_err(|_| OpenError::Timeout)??;
        Ok(conn)
    }

    /// A connection to `server` at `addr` over `stream`, opened at `now`,
    /// before its login (the login brings its cancel key and parameters).
    /// `open` counts it against its server while it lives.
    pub(crate) fn new(
        stream: BackendStream,
        addr: SocketAddr,
        profile: Arc<StartupProfile>,
        server: usize,
        open: OpenGuard,
        now: Instant,
    ) -> ServerConn {
        ServerConn {
            stream,
            addr,
            key: CancelKey { pid: 0, secret: 0 },
            params: Vec::new(),
            created: now,
            last_used: now,
            prepared: Default::default(),
            profile,
            server,
            searches_pg_temp: false,
            _open: open,
        }
    }

    /// The role the server reported at login (`in_hot_standby`).
    pub(crate) fn role(&self) -> Role {
        self.params
            .iter()
            .find(|(name, _)| name == "in_hot_standby")
            .map_or(Role::Unknown, |(_, value)| Role::from_in_hot_standby(value))
    }

    async fn login(
        &mut self,
        database: &str,
        user: &str,
        login: &BackendLogin,
    ) -> Result<(), OpenError> {
        let mut params = vec![
            ("user".to_owned(), user.to_owned()),
            ("database".to_owned(), database.to_owned()),
        ];
        params.extend(self.profile.params.iter().cloned());
        let startup = StartupMessage { minor: 0, params };
        let mut out = BytesMut::new();
        startup.encode(&mut out);
        self.send(&mut out).await?;
        let mut scram: Option<ScramClient> = None;
        loop {
            let msg = read_message(&mut self.stream, MAX_LOGIN_MESSAGE_LEN).await?;
            match msg.tag {
                b'R' => {
                    let code = msg
                        .body
                        .first_chunk::<4>()
                        .map(|c| i32::from_be_bytes(*c))
                        .ok_or(OpenError::Unsupported("malformed authentication request"))?;
                    let data = &msg.body[4..];
                    match code {
                        auth::OK => {}
                        auth::CLEARTEXT_PASSWORD => {
                            let BackendLogin::Password(pw) = login else {
                                return Err(OpenError::Unsupported(
                                    "cleartext password without a configured password",
                                ));
                            };
                            password_message(&mut out, pw.0.as_bytes());
                            self.send(&mut out).await?;
                        }
                        auth::MD5_PASSWORD => {
                            let BackendLogin::Password(pw) = login else {
                                return Err(OpenError::Unsupported(
                                    "MD5 without a configured password",
                                ));
                            };
                            let salt: [u8; 4] = data
                                .first_chunk::<4>()
                                .copied()
                                .ok_or(OpenError::Unsupported("malformed MD5 request"))?;
                            let hashed = crate::auth::md5::md5_password(user, &pw.0, salt);
                            password_message(&mut out, &hashed);
                            self.send(&mut out).await?;
                        }
                        auth::SASL => {
                            let offered = data
                                .split(|b| *b == 0)
                                .any(|m| m == SCRAM_SHA_256.as_bytes());
                            if !offered {
                                return Err(OpenError::Unsupported("SASL without SCRAM-SHA-256"));
                            }
                            let mut client = match login {
                                BackendLogin::Password(pw) => ScramClient::with_password(
                                    &pw.0,
                                    crate::auth::try_random_nonce()?,
                                ),
                                BackendLogin::ScramKeys {
                                    client_key,
                                    server_key,
                                } => ScramClient::with_keys(
                                    *client_key,
                                    *server_key,
                                    crate::auth::try_random_nonce()?,
                                ),
                            };
                            let first = client.client_first();
                            out.put_u8(b'p');
                            let start = out.len();
                            out.put_u32(0);
                            out.put_slice(SCRAM_SHA_256.as_bytes());
                            out.put_u8(0);
                            out.put_i32(first.len() as i32);
                            out.put_slice(&first);
                            let len = (out.len() - start) as u32;
                            out[start..start + 4].copy_from_slice(&len.to_be_bytes());
                            self.send(&mut out).await?;
                            scram = Some(client);
                        }
                        auth::SASL_CONTINUE => {
                            let client = scram
                                .as_mut()
                                .ok_or(OpenError::Unsupported("SASL continue before start"))?;
                            let reply = client.server_first(data)?;
                            crate::protocol::messages::tagged(&mut out, b'p', &reply);
                            self.send(&mut out).await?;
                        }
                        auth::SASL_FINAL => {
                            let client = scram
                                .as_mut()
                                .ok_or(OpenError::Unsupported("SASL final before start"))?;
                            client.server_final(data)?;
                        }
                        _ => return Err(OpenError::Unsupported("authentication method")),
                    }
                }
                b'S' => {
                    if let Some((name, value)) = parameter_status(&msg.body) {
                        set_param(&mut self.params, name, value);
                    }
                }
                b'K' => {
                    if let Some(body) = msg.body.first_chunk::<8>() {
                        self.key = CancelKey {
                            pid: i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                            secret: i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
                        };
                    }
                }
                b'E' => {
                    return Err(OpenError::Refused {
                        code: messages::error_code(&msg.body),
                        message: messages::error_message(&msg.body),
                    })
                }
                b'Z' => return Ok(()),
                // NoticeResponse, NegotiateProtocolVersion: nothing to do.
                _ => {}
            }
        }
    }

    async fn send(&mut self, out: &mut BytesMut) -> Result<(), FramingError> {
        self.stream.write_all(out).await?;
        self.stream.flush().await?;
        out.clear();
        Ok(())
    }
}

fn password_message(out: &mut BytesMut, password: &[u8]) {
    let mut body = password.to_vec();
    body.push(0);
    crate::protocol::messages::tagged(out, b'p', &body);
}

/// Splits a `ParameterStatus` body into name and value.
pub fn parameter_status(body: &[u8]) -> Option<(String, String)> {
    let mut parts = body.split(|b| *b == 0);
    let name = String::from_utf8_lossy(parts.next()?).into_owned();
    let value = String::from_utf8_lossy(parts.next()?).into_owned();
    Some((name, value))
}

/// Sets `name` in an ordered parameter list.
pub(crate) fn set_param(params: &mut Vec<(String, String)>, name: String, value: String) {
    // Setting names are case-insensitive, as in PostgreSQL.
    match params
        .iter_mut()
        .find(|(n, _)| n.eq_ignore_ascii_case(&name))
    {
        Some((_, v)) => *v = value,
        None => params.push((name, value)),
    }
}
