//! Passthrough authentication: the backend authenticates the client itself
//! and pgcell relays the exchange, changing only two things:
//!
//! - `SCRAM-SHA-256-PLUS` leaves the backend's SASL mechanism list, since
//!   channel binding would bind to pgcell's certificate, not the backend's;
//! - `BackendKeyData` is replaced by a key pgcell issues, so cancel
//!   requests come to pgcell and are routed by it.
//!
//! And it holds back everything after `AuthenticationOk` until the
//! backend's `in_hot_standby` shows that the server may serve the client
//! (a read-write client never gets a server in recovery).
//!
//! Spec: <https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-START-UP>

use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::backend::topology::Role;
use crate::cancel::{CancelMap, CancelTarget, IssuedKey};
use crate::protocol::framing::{read_message, FramingError, Message};
use crate::protocol::messages::{self, auth};
use crate::protocol::startup::CancelKey;
use crate::protocol::SqlState;

/// Longest backend message accepted before `ReadyForQuery`.
pub(crate) const MAX_BACKEND_STARTUP_MESSAGE_LEN: usize = 1 << 20;
/// Longest client authentication message, as PostgreSQL's
/// `PG_MAX_AUTH_TOKEN_LENGTH`.
pub(crate) const MAX_CLIENT_AUTH_MESSAGE_LEN: usize = 65_535;

/// How the exchange ended when nothing broke.
pub(crate) enum AuthEnd {
    /// The backend sent `ReadyForQuery`; the session can start.
    Ready {
        /// The key the client got for cancel requests.
        cancel_key: Option<IssuedKey>,
        /// The role the server reported (`in_hot_standby`).
        role: Role,
    },
    /// The server's role does not fit the client: nothing after the
    /// authentication exchange reached the client.
    WrongRole(Role),
    /// The backend refused the client with an `ErrorResponse`, already
    /// forwarded.
    Rejected {
        /// The SQLSTATE the backend gave.
        code: SqlState,
    },
    /// The client sent `Terminate` or closed.
    ClientQuit,
}

/// The exchange broke.
#[derive(Debug, Error)]
pub(crate) enum AuthRelayError {
    /// Reading or writing the backend failed, or it sent a bad frame.
    #[error("backend during authentication: {0}")]
    Backend(FramingError),
    /// Reading or writing the client failed, or it sent a bad frame.
    #[error("client during authentication: {0}")]
    Client(FramingError),
    /// The backend asked for a method pgcell cannot relay (GSS, SSPI).
    #[error("backend requested unsupported authentication method {0}")]
    UnsupportedMethod(i32),
    /// The backend sent something that breaks the protocol.
    #[error("backend sent a malformed {0}")]
    MalformedBackend(&'static str),
    /// The client sent something other than an authentication response.
    #[error("expected an authentication response, got message type {0:?}")]
    UnexpectedClientMessage(char),
    /// No random bytes for the client's cancel key.
    #[error(transparent)]
    Random(crate::auth::RandomError),
}

/// Relays messages from the backend's first answer to `ReadyForQuery`,
/// which the client gets only when `fits` accepts the server's role.
/// Not cancel safe.
pub(crate) async fn relay<C, B>(
    client: &mut C,
    backend: &mut B,
    cancel: &CancelMap,
    backend_addr: SocketAddr,
    vpce_id: Option<&str>,
    fits: impl Fn(Role) -> bool,
) -> Result<AuthEnd, AuthRelayError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = BytesMut::with_capacity(1024);
    let mut cancel_key = None;
    let mut role = Role::Unknown;
    loop {
        let msg = read_message(backend, MAX_BACKEND_STARTUP_MESSAGE_LEN)
            .await
            .map_err(AuthRelayError::Backend)?;
        match msg.tag {
            b'R' => {
                let code = auth_code(&msg)?;
                let needs_answer = match code {
                    auth::OK | auth::SASL_FINAL => false,
                    auth::CLEARTEXT_PASSWORD | auth::MD5_PASSWORD | auth::SASL_CONTINUE => true,
                    auth::SASL => true,
                    other => return Err(AuthRelayError::UnsupportedMethod(other)),
                };
                if code == auth::SASL {
                    let body = messages::sasl_without_plus(&msg.body)
                        .ok_or(AuthRelayError::MalformedBackend("AuthenticationSASL"))?;
                    messages::tagged(&mut out, b'R', &body);
                } else {
                    messages::tagged(&mut out, b'R', &msg.body);
                }
                if needs_answer {
                    flush(client, &mut out)
                        .await
                        .map_err(AuthRelayError::Client)?;
                    let answer = read_message(client, MAX_CLIENT_AUTH_MESSAGE_LEN)
                        .await
                        .map_err(AuthRelayError::Client)?;
                    match answer.tag {
                        b'p' => {}
                        b'X' => return Ok(AuthEnd::ClientQuit),
                        other => {
                            return Err(AuthRelayError::UnexpectedClientMessage(other as char))
                        }
                    }
                    messages::tagged(&mut out, b'p', &answer.body);
                    flush(backend, &mut out)
                        .await
                        .map_err(AuthRelayError::Backend)?;
                }
            }
            b'K' => {
                let mut body = msg.body.clone();
                if body.len() != 8 {
                    return Err(AuthRelayError::MalformedBackend("BackendKeyData"));
                }
                let key = CancelKey {
                    pid: body.get_i32(),
                    secret: body.get_i32(),
                };
                let reg = cancel
                    .try_issue(
                        CancelTarget {
                            addr: backend_addr,
                            key,
                        },
                        vpce_id,
                    )
                    .map_err(AuthRelayError::Random)?;
                messages::backend_key_data(&mut out, reg.key());
                cancel_key = Some(reg);
            }
            b'E' => {
                messages::tagged(&mut out, b'E', &msg.body);
                // The client may be gone already; the rejection stands.
                let _ = flush(client, &mut out).await;
                return Ok(AuthEnd::Rejected {
                    code: messages::error_code(&msg.body),
                });
            }
            b'Z' => {
                if !fits(role) {
                    return Ok(AuthEnd::WrongRole(role));
                }
                messages::tagged(&mut out, b'Z', &msg.body);
                flush(client, &mut out)
                    .await
                    .map_err(AuthRelayError::Client)?;
                return Ok(AuthEnd::Ready { cancel_key, role });
            }
            b'S' => {
                if let Some(value) = msg.body.strip_prefix(b"in_hot_standby\0") {
                    let value = value.split(|&b| b == 0).next().unwrap_or_default();
                    role = Role::from_in_hot_standby(&String::from_utf8_lossy(value));
                }
                messages::tagged(&mut out, b'S', &msg.body);
            }
            // NoticeResponse, NegotiateProtocolVersion.
            tag => messages::tagged(&mut out, tag, &msg.body),
        }
    }
}

fn auth_code(msg: &Message) -> Result<i32, AuthRelayError> {
    msg.body
        .first_chunk::<4>()
        .map(|c| i32::from_be_bytes(*c))
        .ok_or(AuthRelayError::MalformedBackend("Authentication request"))
}

async fn flush<W: AsyncWrite + Unpin>(w: &mut W, out: &mut BytesMut) -> Result<(), FramingError> {
    w.write_all(out).await?;
    w.flush().await?;
    out.clear();
    Ok(())
}
