//! Client authentication by pgcell: SCRAM-SHA-256 (and -PLUS over TLS),
//! or MD5 when a tenant opts in. Unknown users go through the same
//! exchange against a fake secret and fail the same way, after the same
//! delay, so user names cannot be probed. Users not listed in
//! `[[tenants.users]]` get their secret from the backend when the tenant
//! has `[tenants.auth_query]` ([`crate::auth_query`]).

use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::auth::scram::{ScramError, ScramErrorKind, ScramServer};
use crate::auth::secret::{mock_secret, ScramSecret};
use crate::auth_query::AuthQueryError;
use crate::backend::server::BackendLogin;
use crate::config::{AuthMode, Credential};
use crate::protocol::framing::{read_message, FramingError};
use crate::protocol::messages::{self, auth};
use crate::protocol::{ClientError, SqlState};
use crate::tenant::{ClientInfo, Tenant};

/// Pause before a failed login is reported, the same for every cause.
pub(crate) const AUTH_FAILURE_DELAY: Duration = Duration::from_millis(500);
/// Longest authentication message a client may send.
const MAX_AUTH_MESSAGE_LEN: usize = 65_535;

/// Why a client was not let in.
#[derive(Debug, Error)]
pub(crate) enum ClientAuthError {
    /// Wrong password or unknown user (indistinguishable on purpose).
    #[error("password authentication failed for user {0:?}")]
    Failed(String),
    /// Channel binding refused.
    #[error("channel binding failed: {0}")]
    ChannelBinding(ScramError),
    /// The client broke the exchange.
    #[error("malformed authentication exchange: {0}")]
    Malformed(String),
    /// The connection failed.
    #[error(transparent)]
    Io(#[from] FramingError),
    /// The user's secret could not be fetched from the backend.
    #[error(transparent)]
    AuthQuery(#[from] AuthQueryError),
    /// No random bytes for the nonce or salt: refused, never guessable.
    #[error(transparent)]
    Random(#[from] crate::auth::RandomError),
    /// The client did not finish the exchange within `backend.auth_timeout`.
    #[error("canceling authentication due to timeout")]
    Timeout,
}

impl ClientAuthError {
    /// What the client is told.
    pub(crate) fn client_error(&self) -> Option<ClientError> {
        Some(match self {
            ClientAuthError::Failed(user) => ClientError::fatal(
                SqlState::INVALID_PASSWORD,
                format!("password authentication failed for user \"{user}\""),
            ),
            ClientAuthError::ChannelBinding(_) => {
                ClientError::fatal(SqlState::INVALID_AUTHORIZATION, "channel binding failed")
            }
            ClientAuthError::Malformed(m) => {
                ClientError::fatal(SqlState::PROTOCOL_VIOLATION, m.clone())
            }
            // PostgreSQL logs its FATAL (57014) and closes without a word
            // at authentication_timeout: drivers expect the close.
            ClientAuthError::Io(FramingError::Io(_)) | ClientAuthError::Timeout => return None,
            ClientAuthError::Io(_) => ClientError::fatal(
                SqlState::PROTOCOL_VIOLATION,
                "invalid authentication message",
            ),
            // Not 28P01: the password may well be right. The reason is
            // logged, not told.
            ClientAuthError::AuthQuery(_) => {
                ClientError::fatal(SqlState::CONNECTION_FAILURE, "could not verify credentials")
            }
            // PostgreSQL's words (auth-scram.c) and code.
            ClientAuthError::Random(e) => ClientError::fatal(
                SqlState::INTERNAL_ERROR,
                format!("could not generate random {}", e.what),
            ),
        })
    }

    /// Metric label.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            ClientAuthError::Failed(_) => "invalid_password",
            ClientAuthError::ChannelBinding(_) => "channel_binding",
            ClientAuthError::Malformed(_) | ClientAuthError::Io(_) => "protocol",
            ClientAuthError::AuthQuery(_) => "auth_query",
            ClientAuthError::Random(_) => "random_unavailable",
            ClientAuthError::Timeout => "timeout",
        }
    }
}

/// Authenticates `user` of `tenant` (connecting to `database`) and
/// returns how to log in to the backend as that user. The exchange's last
/// messages (`AuthenticationSASLFinal`, `AuthenticationOk`) are appended
/// to `answer`, not sent: the caller sends them with what follows, so
/// that a login costs one write fewer. On failure the caller reports the
/// error. Not cancel safe.
pub(crate) async fn authenticate<C>(
    client: &mut C,
    tenant: &Tenant,
    user: &str,
    database: &str,
    info: &ClientInfo,
    mock_key: &[u8; 32],
    answer: &mut BytesMut,
) -> Result<BackendLogin, ClientAuthError>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let configured = tenant.config.user(user);
    // Configured users come first; the backend is asked about the rest.
    let queried = match (&tenant.auth_query, configured) {
        (Some(query), None) if tenant.config.auth == AuthMode::Scram => Some(
            query
                .lookup(
                    tenant.targets(crate::backend::Target::Primary),
                    database,
                    user,
                )
                .await?,
        ),
        _ => None,
    };
    let queried_secret = queried.as_ref().and_then(|q| q.secret.as_ref());
    let result = match tenant.config.auth {
        AuthMode::Md5 => md5(client, user, tenant.id(), configured.map(|u| &u.credential)).await,
        _ => {
            let secret = tenant
                .secrets
                .get(user)
                .or(queried_secret)
                .cloned()
                .unwrap_or_else(|| mock_secret(user, mock_key));
            let channel_binding = info.tls_end_point.as_deref().cloned();
            scram(client, secret, channel_binding, user, answer).await
        }
    };
    let client_key = match result {
        Ok(client_key) if configured.is_some() || queried_secret.is_some() => client_key,
        // A mock secret cannot be passed, but be explicit: unknown users
        // never get in.
        Ok(_) => return Err(ClientAuthError::Failed(user.to_owned())),
        Err(e) => {
            // The cached answer may be stale (a changed password, a new
            // role): the next attempt asks the backend again.
            if let (Some(query), Some(q)) = (&tenant.auth_query, &queried) {
                if q.cached && matches!(e, ClientAuthError::Failed(_)) {
                    query.invalidate(database, user);
                }
            }
            return Err(e);
        }
    };
    let login = match (configured.map(|u| &u.credential), queried_secret) {
        (Some(Credential::Password(pw)), _) => BackendLogin::Password(pw.clone()),
        // The backend holds the secret pgcell verified against: log in
        // with the ClientKey recovered from this client's proof.
        (Some(Credential::ScramSecret(secret)), _) | (None, Some(secret)) => match client_key {
            Some(client_key) => BackendLogin::ScramKeys {
                client_key,
                server_key: secret.server_key,
            },
            None => return Err(ClientAuthError::Failed(user.to_owned())),
        },
        (None, None) => return Err(ClientAuthError::Failed(user.to_owned())),
    };
    auth_request(answer, auth::OK, &[]);
    Ok(login)
}

/// Authenticates `user` with SCRAM against `secret` and sends
/// `AuthenticationOk`: for logins that lead to no backend (the admin
/// console). An unknown user (`None`) goes through the same exchange
/// against a fake secret and fails the same way. Not cancel safe.
pub(crate) async fn verify<C>(
    client: &mut C,
    user: &str,
    secret: Option<&ScramSecret>,
    info: &ClientInfo,
    mock_key: &[u8; 32],
) -> Result<(), ClientAuthError>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let known = secret.is_some();
    let secret = secret
        .cloned()
        .unwrap_or_else(|| mock_secret(user, mock_key));
    let mut out = BytesMut::new();
    let channel_binding = info.tls_end_point.as_deref().cloned();
    scram(client, secret, channel_binding, user, &mut out).await?;
    if !known {
        return Err(ClientAuthError::Failed(user.to_owned()));
    }
    auth_request(&mut out, auth::OK, &[]);
    client.write_all(&out).await.map_err(FramingError::from)?;
    Ok(())
}

/// Runs SCRAM; returns the ClientKey recovered from the proof, and
/// appends `AuthenticationSASLFinal` to `answer` for the caller to send.
async fn scram<C>(
    client: &mut C,
    secret: ScramSecret,
    channel_binding: Option<Vec<u8>>,
    user: &str,
    answer: &mut BytesMut,
) -> Result<Option<[u8; 32]>, ClientAuthError>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let mut server = ScramServer::new(secret, channel_binding, crate::auth::try_random_nonce()?);
    let mut out = BytesMut::new();
    let mut list = Vec::new();
    for m in server.mechanisms() {
        list.extend_from_slice(m.as_bytes());
        list.push(0);
    }
    list.push(0);
    auth_request(&mut out, auth::SASL, &list);
    send(client, &mut out).await?;

    let initial = read_password_message(client).await?;
    let (mechanism, data) = parse_initial_response(&initial)?;
    let server_first = server
        .client_first(&mechanism, &data)
        .map_err(|e| scram_error(e, user))?;
    auth_request(&mut out, auth::SASL_CONTINUE, &server_first);
    send(client, &mut out).await?;

    let response = read_password_message(client).await?;
    match server.client_final(&response) {
        Ok(success) => {
            auth_request(answer, auth::SASL_FINAL, &success.server_final);
            Ok(Some(success.client_key))
        }
        Err(e) => Err(scram_error(e, user)),
    }
}

fn scram_error(e: ScramError, user: &str) -> ClientAuthError {
    match e.kind() {
        ScramErrorKind::AuthFailed => ClientAuthError::Failed(user.to_owned()),
        ScramErrorKind::ChannelBinding => ClientAuthError::ChannelBinding(e),
        ScramErrorKind::Malformed => ClientAuthError::Malformed(e.to_string()),
    }
}

/// MD5: only for tenants that opt in, and only with a configured password.
///
/// The client salts with the user name it sent, which routing may have
/// rewritten from `USER.TENANT` to `USER`: both forms are accepted.
async fn md5<C>(
    client: &mut C,
    user: &str,
    tenant: &str,
    credential: Option<&Credential>,
) -> Result<Option<[u8; 32]>, ClientAuthError>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let salt: [u8; 4] = {
        let n = crate::auth::try_random_nonce()?;
        [n[0], n[1], n[2], n[3]]
    };
    let mut out = BytesMut::new();
    auth_request(&mut out, auth::MD5_PASSWORD, &salt);
    send(client, &mut out).await?;
    let answer = read_password_message(client).await?;
    let answer = answer.strip_suffix(&[0]).unwrap_or(&answer);
    let Some(Credential::Password(pw)) = credential else {
        return Err(ClientAuthError::Failed(user.to_owned()));
    };
    let as_sent = format!("{user}.{tenant}");
    let matches = [user, as_sent.as_str()]
        .iter()
        .fold(subtle::Choice::from(0), |acc, name| {
            let expected = crate::auth::md5::md5_password(name, &pw.0, salt);
            acc | subtle::ConstantTimeEq::ct_eq(expected.as_slice(), answer)
        });
    if matches.into() {
        Ok(None)
    } else {
        Err(ClientAuthError::Failed(user.to_owned()))
    }
}

async fn read_password_message<C: AsyncRead + Unpin>(
    client: &mut C,
) -> Result<Vec<u8>, ClientAuthError> {
    let msg = read_message(client, MAX_AUTH_MESSAGE_LEN).await?;
    if msg.tag != b'p' {
        return Err(ClientAuthError::Malformed(format!(
            "expected an authentication response, got message type {:?}",
            msg.tag as char
        )));
    }
    Ok(msg.body.to_vec())
}

/// `SASLInitialResponse`: mechanism name, then a length-prefixed response.
fn parse_initial_response(body: &[u8]) -> Result<(String, Vec<u8>), ClientAuthError> {
    let malformed = || ClientAuthError::Malformed("malformed SASLInitialResponse".to_owned());
    let end = body.iter().position(|&b| b == 0).ok_or_else(malformed)?;
    let mechanism = std::str::from_utf8(&body[..end])
        .map_err(|_| malformed())?
        .to_owned();
    let mut rest = &body[end + 1..];
    if rest.len() < 4 {
        return Err(malformed());
    }
    let len = rest.get_i32();
    let data = match usize::try_from(len) {
        Ok(n) if n == rest.len() => rest.to_vec(),
        Err(_) if len == -1 && rest.is_empty() => Vec::new(),
        _ => return Err(malformed()),
    };
    Ok((mechanism, data))
}

fn auth_request(out: &mut BytesMut, code: i32, data: &[u8]) {
    let mut body = Vec::with_capacity(4 + data.len());
    body.put_i32(code);
    body.extend_from_slice(data);
    messages::tagged(out, b'R', &body);
}

async fn send<C: AsyncWrite + Unpin>(
    client: &mut C,
    out: &mut BytesMut,
) -> Result<(), ClientAuthError> {
    client.write_all(out).await.map_err(FramingError::from)?;
    client.flush().await.map_err(FramingError::from)?;
    out.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_random_bytes_refuses_with_xx000() {
        fn broken(_: &mut [u8]) -> Result<(), getrandom::Error> {
            Err(getrandom::Error::UNSUPPORTED)
        }
        let e = ClientAuthError::from(crate::auth::nonce_from(broken).unwrap_err());
        let ClientError { code, message, .. } = e.client_error().unwrap();
        assert_eq!(code, SqlState::INTERNAL_ERROR);
        assert_eq!(message, "could not generate random nonce");
        assert_eq!(e.reason(), "random_unavailable");
    }

    #[test]
    fn initial_response_forms() {
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        body.extend_from_slice(&3i32.to_be_bytes());
        body.extend_from_slice(b"abc");
        assert_eq!(
            parse_initial_response(&body).unwrap(),
            ("SCRAM-SHA-256".to_owned(), b"abc".to_vec())
        );
        let mut bad = b"SCRAM-SHA-256\0".to_vec();
        bad.extend_from_slice(&9i32.to_be_bytes());
        bad.extend_from_slice(b"abc");
        assert!(parse_initial_response(&bad).is_err());
        assert!(parse_initial_response(b"SCRAM").is_err());
        assert!(parse_initial_response(b"SCRAM\0\0\0").is_err());
    }
}
