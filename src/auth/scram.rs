//! The SCRAM-SHA-256 exchange, sans I/O: pgcell as the server towards
//! clients ([`ScramServer`], with `tls-server-end-point` channel binding for
//! SCRAM-SHA-256-PLUS) and as the client towards backends ([`ScramClient`]).
//!
//! Each side is a small state machine fed the SASL payloads of
//! `SASLInitialResponse`/`SASLResponse` and `AuthenticationSASLContinue`/
//! `AuthenticationSASLFinal`; framing those messages is the caller's job.
//!
//! Spec: RFC 5802 (SCRAM), RFC 7677 (SCRAM-SHA-256), RFC 5929 §4
//! (`tls-server-end-point`), and
//! <https://www.postgresql.org/docs/current/sasl-authentication.html>.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use subtle::ConstantTimeEq;
use thiserror::Error;

use super::secret::{
    decode_key, hmac_sha256, parse_iterations, salted_password, sha256, ScramSecret, KEY_LEN,
    MAX_SALT_LEN,
};

/// SASL mechanism name of SCRAM-SHA-256 without channel binding.
pub(crate) const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// SASL mechanism name of SCRAM-SHA-256 with channel binding.
pub(crate) const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// Random bytes in each side's nonce (sent base64-encoded), as PostgreSQL.
pub(crate) const NONCE_LEN: usize = 18;
/// Longest SCRAM message accepted from the peer.
pub(crate) const MAX_MESSAGE_LEN: usize = 4096;
/// Longest nonce accepted from the peer (client nonce, or combined nonce).
pub(crate) const MAX_NONCE_LEN: usize = 1024;

/// The one channel-binding type PostgreSQL supports.
const CHANNEL_BINDING_TYPE: &str = "tls-server-end-point";
/// Longest `e=` text from a backend kept in an error.
const MAX_SERVER_ERROR_LEN: usize = 128;

/// pgcell's side of a client's SCRAM exchange.
///
/// `AuthenticationSASL` offers [`ScramServer::mechanisms`]; the client's
/// `SASLInitialResponse` goes to [`ScramServer::client_first`], its
/// `SASLResponse` to [`ScramServer::client_final`]. Any error ends the
/// exchange: later calls fail with [`ScramError::OutOfOrder`].
#[derive(Debug)]
pub struct ScramServer {
    secret: ScramSecret,
    channel_binding: Option<Vec<u8>>,
    server_nonce: String,
    state: ServerState,
}

#[derive(Debug)]
enum ServerState {
    AwaitingClientFirst,
    AwaitingClientFinal(ServerPending),
    Finished,
}

/// What the server remembers between the two client messages.
#[derive(Debug)]
struct ServerPending {
    /// GS2 header followed by channel-binding data for `p=`: what `c=`
    /// must decode to.
    cbind_input: Vec<u8>,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

/// A verified client proof.
pub struct ScramSuccess {
    /// The `AuthenticationSASLFinal` payload (`v=<ServerSignature>`).
    pub server_final: Vec<u8>,
    /// The client's ClientKey, recovered from its proof: logs in to a
    /// backend holding the same secret (see [`ScramClient::with_keys`]).
    pub client_key: [u8; KEY_LEN],
}

impl ScramServer {
    /// A server verifying against `secret`. `channel_binding` is the
    /// [`crate::channel_binding::tls_server_end_point`] data when the client connection is TLS (it
    /// makes SCRAM-SHA-256-PLUS available); `nonce` must be fresh random
    /// bytes.
    pub fn new(
        secret: ScramSecret,
        channel_binding: Option<Vec<u8>>,
        nonce: [u8; NONCE_LEN],
    ) -> ScramServer {
        ScramServer::with_nonce(secret, channel_binding, BASE64.encode(nonce))
    }

    fn with_nonce(
        secret: ScramSecret,
        channel_binding: Option<Vec<u8>>,
        server_nonce: String,
    ) -> ScramServer {
        ScramServer {
            secret,
            channel_binding,
            server_nonce,
            state: ServerState::AwaitingClientFirst,
        }
    }

    /// The mechanisms to offer in `AuthenticationSASL`, preferred first:
    /// SCRAM-SHA-256-PLUS when there is channel-binding data, then
    /// SCRAM-SHA-256.
    pub fn mechanisms(&self) -> Vec<&'static str> {
        match self.channel_binding {
            Some(_) => vec![SCRAM_SHA_256_PLUS, SCRAM_SHA_256],
            None => vec![SCRAM_SHA_256],
        }
    }

    /// Takes the mechanism and client-first-message of
    /// `SASLInitialResponse`; returns the server-first-message for
    /// `AuthenticationSASLContinue`.
    pub fn client_first(&mut self, mechanism: &str, message: &[u8]) -> Result<Vec<u8>, ScramError> {
        let ServerState::AwaitingClientFirst =
            std::mem::replace(&mut self.state, ServerState::Finished)
        else {
            return Err(ScramError::OutOfOrder);
        };
        let binding = match mechanism {
            SCRAM_SHA_256 => None,
            SCRAM_SHA_256_PLUS => Some(
                self.channel_binding
                    .as_deref()
                    .ok_or(ScramError::UnsupportedMechanism)?,
            ),
            _ => return Err(ScramError::UnsupportedMechanism),
        };
        let message = text(message)?;
        let (flag, gs2_header, bare) = parse_gs2_header(message)?;
        let cbind_input = match (flag, binding) {
            (ChannelBindingFlag::Binding, Some(data)) => [gs2_header.as_bytes(), data].concat(),
            (ChannelBindingFlag::Binding, None) => {
                return Err(ScramError::ChannelBindingNegotiation(
                    "channel binding requested with SCRAM-SHA-256",
                ))
            }
            (_, Some(_)) => {
                return Err(ScramError::ChannelBindingNegotiation(
                    "SCRAM-SHA-256-PLUS selected without channel binding",
                ))
            }
            (ChannelBindingFlag::ClientSupports, None) if self.channel_binding.is_some() => {
                return Err(ScramError::ChannelBindingDowngrade)
            }
            (_, None) => gs2_header.as_bytes().to_vec(),
        };
        let client_nonce = parse_client_first_bare(bare)?;

        let nonce = format!("{client_nonce}{}", self.server_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            BASE64.encode(&self.secret.salt),
            self.secret.iterations
        );
        let reply = server_first.clone().into_bytes();
        self.state = ServerState::AwaitingClientFinal(ServerPending {
            cbind_input,
            client_first_bare: bare.to_owned(),
            server_first,
            nonce,
        });
        Ok(reply)
    }

    /// Takes the client-final-message of `SASLResponse` and verifies the
    /// client's proof.
    pub fn client_final(&mut self, message: &[u8]) -> Result<ScramSuccess, ScramError> {
        let ServerState::AwaitingClientFinal(pending) =
            std::mem::replace(&mut self.state, ServerState::Finished)
        else {
            return Err(ScramError::OutOfOrder);
        };
        let message = text(message)?;
        let (without_proof, proof) = message
            .rsplit_once(',')
            .ok_or(ScramError::Malformed("missing proof"))?;
        let proof = proof
            .strip_prefix("p=")
            .ok_or(ScramError::Malformed("proof is not the last attribute"))?;
        let mut attributes = without_proof.split(',');
        let cbind = attribute(attributes.next(), "c=", "expected channel binding (c=)")?;
        let nonce = attribute(attributes.next(), "r=", "expected nonce (r=)")?;
        extensions(attributes)?;

        let cbind = BASE64
            .decode(cbind)
            .map_err(|_| ScramError::Malformed("channel binding is not valid base64"))?;
        if cbind != pending.cbind_input {
            return Err(ScramError::ChannelBindingMismatch);
        }
        if nonce != pending.nonce {
            return Err(ScramError::NonceMismatch);
        }
        let proof =
            decode_key(proof).ok_or(ScramError::Malformed("proof is not 32 bytes of base64"))?;

        let auth_message = [
            pending.client_first_bare.as_bytes(),
            b",",
            pending.server_first.as_bytes(),
            b",",
            without_proof.as_bytes(),
        ];
        let client_signature = hmac_sha256(&self.secret.stored_key, &auth_message);
        let client_key = xor(&proof, &client_signature);
        if !bool::from(sha256(&client_key).ct_eq(&self.secret.stored_key)) {
            return Err(ScramError::InvalidProof);
        }
        let server_signature = hmac_sha256(&self.secret.server_key, &auth_message);
        Ok(ScramSuccess {
            server_final: format!("v={}", BASE64.encode(server_signature)).into_bytes(),
            client_key,
        })
    }
}

/// pgcell's side of a backend's SCRAM exchange (no channel binding).
///
/// [`ScramClient::client_first`] gives the `SASLInitialResponse` payload
/// for mechanism [`SCRAM_SHA_256`], [`ScramClient::server_first`] takes
/// `AuthenticationSASLContinue` and gives the `SASLResponse` payload,
/// [`ScramClient::server_final`] checks `AuthenticationSASLFinal`. Any
/// error ends the exchange.
pub struct ScramClient {
    credentials: Credentials,
    gs2_header: String,
    /// GS2 header followed by channel-binding data, as `c=` sends it.
    cbind_input: Vec<u8>,
    client_first_bare: String,
    nonce: String,
    state: ClientState,
}

enum Credentials {
    Password(String),
    Keys {
        client_key: [u8; KEY_LEN],
        server_key: [u8; KEY_LEN],
    },
}

#[derive(Debug)]
enum ClientState {
    Initial,
    AwaitingServerFirst,
    AwaitingServerFinal { server_signature: [u8; KEY_LEN] },
    Finished,
}

impl ScramClient {
    /// A client proving knowledge of `password`; `nonce` must be fresh
    /// random bytes.
    pub fn with_password(password: &str, nonce: [u8; NONCE_LEN]) -> ScramClient {
        ScramClient::with_parts(
            Credentials::Password(password.to_owned()),
            "",
            BASE64.encode(nonce),
            None,
        )
    }

    /// A client holding ClientKey and ServerKey instead of the password:
    /// the `auth_query` path, where pgcell recovered ClientKey from the
    /// client's proof ([`ScramSuccess::client_key`]) and has ServerKey from
    /// the secret the backend also holds. The proof needs neither salt nor
    /// iteration count.
    pub fn with_keys(
        client_key: [u8; KEY_LEN],
        server_key: [u8; KEY_LEN],
        nonce: [u8; NONCE_LEN],
    ) -> ScramClient {
        ScramClient::with_parts(
            Credentials::Keys {
                client_key,
                server_key,
            },
            "",
            BASE64.encode(nonce),
            None,
        )
    }

    /// `username` goes into `n=` (PostgreSQL ignores it and uses the
    /// startup packet's); `channel_binding` switches the GS2 header to
    /// `p=tls-server-end-point` with that data.
    fn with_parts(
        credentials: Credentials,
        username: &str,
        nonce: String,
        channel_binding: Option<&[u8]>,
    ) -> ScramClient {
        let (gs2_header, data) = match channel_binding {
            Some(data) => (format!("p={CHANNEL_BINDING_TYPE},,"), data),
            None => ("n,,".to_owned(), &[][..]),
        };
        let cbind_input = [gs2_header.as_bytes(), data].concat();
        let username = username.replace('=', "=3D").replace(',', "=2C");
        ScramClient {
            credentials,
            gs2_header,
            cbind_input,
            client_first_bare: format!("n={username},r={nonce}"),
            nonce,
            state: ClientState::Initial,
        }
    }

    /// The client-first-message (`n,,n=,r=<nonce>`). Calling it again
    /// restarts the exchange with the same nonce.
    pub fn client_first(&mut self) -> Vec<u8> {
        self.state = ClientState::AwaitingServerFirst;
        format!("{}{}", self.gs2_header, self.client_first_bare).into_bytes()
    }

    /// Takes the server-first-message; returns the client-final-message.
    pub fn server_first(&mut self, message: &[u8]) -> Result<Vec<u8>, ScramError> {
        let ClientState::AwaitingServerFirst =
            std::mem::replace(&mut self.state, ClientState::Finished)
        else {
            return Err(ScramError::OutOfOrder);
        };
        let server_first = text(message)?;
        let mut attributes = server_first.split(',');
        let first = attributes.next();
        if first.is_some_and(|a| a.starts_with("m=")) {
            return Err(ScramError::ExtensionNotSupported);
        }
        let nonce = attribute(first, "r=", "expected nonce (r=)")?;
        if nonce.len() <= self.nonce.len() || !nonce.starts_with(&self.nonce) {
            return Err(ScramError::NonceMismatch);
        }
        check_nonce(nonce)?;
        let salt = attribute(attributes.next(), "s=", "expected salt (s=)")?;
        if salt.len() > MAX_SALT_LEN.div_ceil(3) * 4 {
            return Err(ScramError::Malformed("salt too long"));
        }
        let salt = BASE64
            .decode(salt)
            .map_err(|_| ScramError::Malformed("salt is not valid base64"))?;
        if salt.is_empty() {
            return Err(ScramError::Malformed("empty salt"));
        }
        if salt.len() > MAX_SALT_LEN {
            return Err(ScramError::Malformed("salt too long"));
        }
        let iterations = attribute(attributes.next(), "i=", "expected iteration count (i=)")?;
        let iterations = parse_iterations(iterations).ok_or(ScramError::Iterations)?;
        extensions(attributes)?;

        let (client_key, server_key) = match &self.credentials {
            Credentials::Password(password) => {
                let salted = salted_password(password, &salt, iterations);
                (
                    hmac_sha256(&salted, &[b"Client Key"]),
                    hmac_sha256(&salted, &[b"Server Key"]),
                )
            }
            Credentials::Keys {
                client_key,
                server_key,
            } => (*client_key, *server_key),
        };
        let without_proof = format!("c={},r={nonce}", BASE64.encode(&self.cbind_input));
        let auth_message = [
            self.client_first_bare.as_bytes(),
            b",",
            server_first.as_bytes(),
            b",",
            without_proof.as_bytes(),
        ];
        let client_signature = hmac_sha256(&sha256(&client_key), &auth_message);
        let proof = xor(&client_key, &client_signature);
        self.state = ClientState::AwaitingServerFinal {
            server_signature: hmac_sha256(&server_key, &auth_message),
        };
        Ok(format!("{without_proof},p={}", BASE64.encode(proof)).into_bytes())
    }

    /// Checks the server-final-message: the server proves it holds the
    /// secret too (`v=`), or reports why it refused (`e=`).
    pub fn server_final(&mut self, message: &[u8]) -> Result<(), ScramError> {
        let ClientState::AwaitingServerFinal { server_signature } =
            std::mem::replace(&mut self.state, ClientState::Finished)
        else {
            return Err(ScramError::OutOfOrder);
        };
        let message = text(message)?;
        let first = message.split(',').next().unwrap_or_default();
        if let Some(error) = first.strip_prefix("e=") {
            let error: String = error
                .chars()
                .filter(|c| !c.is_control())
                .take(MAX_SERVER_ERROR_LEN)
                .collect();
            return Err(ScramError::ServerError(error));
        }
        let verifier = attribute(Some(first), "v=", "expected verifier (v=)")?;
        let verifier = decode_key(verifier)
            .ok_or(ScramError::Malformed("verifier is not 32 bytes of base64"))?;
        if !bool::from(verifier.ct_eq(&server_signature)) {
            return Err(ScramError::InvalidServerSignature);
        }
        Ok(())
    }
}

/// Why a SCRAM exchange failed. Messages never include keys, proofs or
/// passwords.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ScramError {
    /// A step was called before the previous one succeeded, or after the
    /// exchange ended.
    #[error("SCRAM message out of order")]
    OutOfOrder,
    /// The message is longer than [`MAX_MESSAGE_LEN`].
    #[error("SCRAM message too long")]
    TooLong,
    /// The message does not follow RFC 5802's grammar.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The client chose a mechanism that was not offered.
    #[error("client selected an invalid SASL authentication mechanism")]
    UnsupportedMechanism,
    /// A mandatory extension (`m=`) was sent.
    #[error("SCRAM extensions are not supported")]
    ExtensionNotSupported,
    /// The client sent an authorization identity (`a=`).
    #[error("SCRAM authorization identity is not supported")]
    AuthzidNotSupported,
    /// The nonce does not continue the exchange's nonce.
    #[error("SCRAM nonce mismatch")]
    NonceMismatch,
    /// The server's iteration count is not in `1..=MAX_ITERATIONS`.
    #[error("SCRAM iteration count out of range")]
    Iterations,
    /// The client asked for a channel-binding type other than
    /// `tls-server-end-point`.
    #[error("unsupported SCRAM channel-binding type")]
    UnsupportedChannelBinding,
    /// The GS2 channel-binding flag contradicts the mechanism.
    #[error("SCRAM channel binding negotiation error: {0}")]
    ChannelBindingNegotiation(&'static str),
    /// The client said it supports channel binding but thinks this server
    /// does not, while this server offered SCRAM-SHA-256-PLUS: someone
    /// removed PLUS from the offer.
    #[error("SCRAM channel binding negotiation error: client supports channel binding but thinks the server does not")]
    ChannelBindingDowngrade,
    /// The client's channel-binding data is not this connection's.
    #[error("SCRAM channel binding check failed")]
    ChannelBindingMismatch,
    /// The client's proof is wrong: wrong password, or unknown user.
    #[error("invalid SCRAM proof")]
    InvalidProof,
    /// The backend's signature is wrong: it does not hold the secret.
    #[error("invalid SCRAM server signature")]
    InvalidServerSignature,
    /// The backend refused with `e=` (its text, trimmed).
    #[error("server refused SCRAM authentication: {0}")]
    ServerError(String),
}

/// What kind of failure a [`ScramError`] is, to choose the SQLSTATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScramErrorKind {
    /// The peer broke the protocol: `08P01` protocol_violation.
    Malformed,
    /// Channel binding failed: `28000` invalid_authorization_specification.
    ChannelBinding,
    /// Wrong credentials: `28P01` invalid_password.
    AuthFailed,
}

impl ScramError {
    /// The kind, from which the caller picks the SQLSTATE. For
    /// [`ScramClient`] errors the peer at fault is the backend.
    pub fn kind(&self) -> ScramErrorKind {
        match self {
            ScramError::OutOfOrder
            | ScramError::TooLong
            | ScramError::Malformed(_)
            | ScramError::UnsupportedMechanism
            | ScramError::ExtensionNotSupported
            | ScramError::AuthzidNotSupported
            | ScramError::NonceMismatch
            | ScramError::Iterations => ScramErrorKind::Malformed,
            ScramError::UnsupportedChannelBinding
            | ScramError::ChannelBindingNegotiation(_)
            | ScramError::ChannelBindingDowngrade
            | ScramError::ChannelBindingMismatch => ScramErrorKind::ChannelBinding,
            ScramError::InvalidProof
            | ScramError::InvalidServerSignature
            | ScramError::ServerError(_) => ScramErrorKind::AuthFailed,
        }
    }
}

impl ScramErrorKind {
    /// Metric and log label.
    pub fn label(self) -> &'static str {
        match self {
            ScramErrorKind::Malformed => "malformed",
            ScramErrorKind::ChannelBinding => "channel_binding",
            ScramErrorKind::AuthFailed => "auth_failed",
        }
    }
}

/// Redacts ClientKey.
impl fmt::Debug for ScramSuccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramSuccess")
            .field("server_final", &String::from_utf8_lossy(&self.server_final))
            .field("client_key", &"<redacted>")
            .finish()
    }
}

/// Redacts the password or keys.
impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let credentials = match self.credentials {
            Credentials::Password(_) => "password <redacted>",
            Credentials::Keys { .. } => "keys <redacted>",
        };
        f.debug_struct("ScramClient")
            .field("credentials", &credentials)
            .field("client_first_bare", &self.client_first_bare)
            .field("state", &self.state)
            .finish()
    }
}

/// The GS2 channel-binding flag (`gs2-cbind-flag`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChannelBindingFlag {
    /// `n`: the client does not support channel binding.
    None,
    /// `y`: the client supports it but thinks the server does not.
    ClientSupports,
    /// `p=tls-server-end-point`: the client uses it.
    Binding,
}

/// Splits `gs2-header client-first-message-bare`; returns the flag, the
/// header (with its trailing comma) and the bare message.
fn parse_gs2_header(message: &str) -> Result<(ChannelBindingFlag, &str, &str), ScramError> {
    let (flag, rest) = message
        .split_once(',')
        .ok_or(ScramError::Malformed("missing GS2 header"))?;
    let flag = match flag {
        "n" => ChannelBindingFlag::None,
        "y" => ChannelBindingFlag::ClientSupports,
        _ => match flag.strip_prefix("p=") {
            Some(CHANNEL_BINDING_TYPE) => ChannelBindingFlag::Binding,
            Some(_) => return Err(ScramError::UnsupportedChannelBinding),
            None => return Err(ScramError::Malformed("unexpected channel-binding flag")),
        },
    };
    let (authzid, bare) = rest
        .split_once(',')
        .ok_or(ScramError::Malformed("missing GS2 header"))?;
    if authzid.starts_with("a=") {
        return Err(ScramError::AuthzidNotSupported);
    }
    if !authzid.is_empty() {
        return Err(ScramError::Malformed("unexpected attribute in GS2 header"));
    }
    let header = message
        .get(..message.len() - bare.len())
        .ok_or(ScramError::Malformed("missing GS2 header"))?;
    Ok((flag, header, bare))
}

/// Parses `n=<user>,r=<nonce>[,extensions]` and returns the nonce. The user
/// name is ignored, as PostgreSQL does: the startup packet's user counts.
fn parse_client_first_bare(bare: &str) -> Result<&str, ScramError> {
    let mut attributes = bare.split(',');
    let first = attributes.next();
    if first.is_some_and(|a| a.starts_with("m=")) {
        return Err(ScramError::ExtensionNotSupported);
    }
    attribute(first, "n=", "expected user name (n=)")?;
    let nonce = attribute(attributes.next(), "r=", "expected nonce (r=)")?;
    check_nonce(nonce)?;
    extensions(attributes)?;
    Ok(nonce)
}

/// A nonce is 1..=MAX_NONCE_LEN printable ASCII characters except `,`.
fn check_nonce(nonce: &str) -> Result<(), ScramError> {
    if nonce.is_empty() {
        return Err(ScramError::Malformed("empty nonce"));
    }
    if nonce.len() > MAX_NONCE_LEN {
        return Err(ScramError::Malformed("nonce too long"));
    }
    if !nonce
        .bytes()
        .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
    {
        return Err(ScramError::Malformed(
            "nonce has characters outside printable ASCII",
        ));
    }
    Ok(())
}

/// The value of an attribute that must carry `prefix` (`"r="`).
fn attribute<'a>(
    attribute: Option<&'a str>,
    prefix: &str,
    missing: &'static str,
) -> Result<&'a str, ScramError> {
    attribute
        .and_then(|a| a.strip_prefix(prefix))
        .ok_or(ScramError::Malformed(missing))
}

/// Optional trailing extensions: each `<letter>=<value>`; ignored, as
/// PostgreSQL does.
fn extensions<'a>(attributes: impl Iterator<Item = &'a str>) -> Result<(), ScramError> {
    for attribute in attributes {
        let mut bytes = attribute.bytes();
        match (bytes.next(), bytes.next()) {
            (Some(name), Some(b'=')) if name.is_ascii_alphabetic() => {}
            _ => return Err(ScramError::Malformed("malformed attribute")),
        }
    }
    Ok(())
}

/// The message as text, bounded.
fn text(message: &[u8]) -> Result<&str, ScramError> {
    if message.len() > MAX_MESSAGE_LEN {
        return Err(ScramError::TooLong);
    }
    std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))
}

fn xor(a: &[u8; KEY_LEN], b: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::secret::mock_secret;

    const RFC_SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const RFC_CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const RFC_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const RFC_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const RFC_SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const RFC_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const RFC_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
    /// A PostgreSQL 15 secret for the password "pencil".
    const PG15_PENCIL: &str = "SCRAM-SHA-256$4096:8NGPGsWe/JCrNUjLI0StXw==$zbCFnlgMYnynE6jliNivytQRNJqpiPCiCZGD222jE8E=:YqjInZXCaYTss2dc4MDlqa5SbKsbEFmTFtLWdJdpqXc=";
    const CB_DATA: &[u8] = b"0123456789abcdef0123456789abcdef";
    const PLUS_HEADER: &str = "p=tls-server-end-point,,";

    fn rfc_secret() -> ScramSecret {
        ScramSecret::from_password("pencil", &BASE64.decode(RFC_SALT).unwrap(), 4096)
    }

    fn secret(password: &str) -> ScramSecret {
        ScramSecret::from_password(password, b"saltsaltsaltsalt", 4096)
    }

    fn plus_client(password: &str, cb: &[u8]) -> ScramClient {
        ScramClient::with_parts(
            Credentials::Password(password.to_owned()),
            "",
            BASE64.encode([9u8; NONCE_LEN]),
            Some(cb),
        )
    }

    /// Runs a whole exchange; returns the server's result and, on success,
    /// the client's verdict on the server-final-message.
    fn exchange(
        server: &mut ScramServer,
        mechanism: &str,
        client: &mut ScramClient,
    ) -> Result<ScramSuccess, ScramError> {
        let server_first = server.client_first(mechanism, &client.client_first())?;
        let client_final = client.server_first(&server_first)?;
        let success = server.client_final(&client_final)?;
        client.server_final(&success.server_final)?;
        Ok(success)
    }

    /// A server that has answered `n,,n=,r=abc`.
    fn server_after_first(secret: ScramSecret) -> ScramServer {
        let mut server = ScramServer::with_nonce(secret, None, "XYZ".to_owned());
        server.client_first(SCRAM_SHA_256, b"n,,n=,r=abc").unwrap();
        server
    }

    #[test]
    fn rfc7677_client() {
        let mut client = ScramClient::with_parts(
            Credentials::Password("pencil".to_owned()),
            "user",
            RFC_CLIENT_NONCE.to_owned(),
            None,
        );
        assert_eq!(client.client_first(), RFC_CLIENT_FIRST.as_bytes());
        let client_final = client.server_first(RFC_SERVER_FIRST.as_bytes()).unwrap();
        assert_eq!(String::from_utf8(client_final).unwrap(), RFC_CLIENT_FINAL);
        client.server_final(RFC_SERVER_FINAL.as_bytes()).unwrap();
    }

    #[test]
    fn rfc7677_server() {
        let mut server = ScramServer::with_nonce(rfc_secret(), None, RFC_SERVER_NONCE.to_owned());
        let server_first = server
            .client_first(SCRAM_SHA_256, RFC_CLIENT_FIRST.as_bytes())
            .unwrap();
        assert_eq!(String::from_utf8(server_first).unwrap(), RFC_SERVER_FIRST);
        let success = server.client_final(RFC_CLIENT_FINAL.as_bytes()).unwrap();
        assert_eq!(
            String::from_utf8(success.server_final).unwrap(),
            RFC_SERVER_FINAL
        );
        let salted = salted_password("pencil", &BASE64.decode(RFC_SALT).unwrap(), 4096);
        assert_eq!(success.client_key, hmac_sha256(&salted, &[b"Client Key"]));
    }

    #[test]
    fn round_trip_with_password() {
        let secret = ScramSecret::generate("correct horse").unwrap();
        let mut server = ScramServer::new(secret, None, [1; NONCE_LEN]);
        assert_eq!(server.mechanisms(), [SCRAM_SHA_256]);
        let mut client = ScramClient::with_password("correct horse", [2; NONCE_LEN]);
        let first = client.client_first();
        assert!(first.starts_with(b"n,,n=,r="));
        exchange(&mut server, SCRAM_SHA_256, &mut client).unwrap();
    }

    #[test]
    fn postgres_secret_accepts_its_password() {
        let secret = ScramSecret::parse(PG15_PENCIL).unwrap();
        let mut server = ScramServer::new(secret, None, [1; NONCE_LEN]);
        let mut client = ScramClient::with_password("pencil", [2; NONCE_LEN]);
        exchange(&mut server, SCRAM_SHA_256, &mut client).unwrap();
    }

    #[test]
    fn wrong_password_is_an_invalid_proof() {
        let mut server = ScramServer::new(secret("right"), None, [1; NONCE_LEN]);
        let mut client = ScramClient::with_password("wrong", [2; NONCE_LEN]);
        let err = exchange(&mut server, SCRAM_SHA_256, &mut client).unwrap_err();
        assert_eq!(err, ScramError::InvalidProof);
        assert_eq!(err.kind(), ScramErrorKind::AuthFailed);
        // The exchange is over.
        assert_eq!(
            server.client_final(b"c=biws").unwrap_err(),
            ScramError::OutOfOrder
        );
    }

    #[test]
    fn unknown_user_fails_like_a_wrong_password() {
        let mock = mock_secret("nobody", &[7; 32]);
        let mut server = ScramServer::new(mock, None, [1; NONCE_LEN]);
        let mut client = ScramClient::with_password("guess", [2; NONCE_LEN]);
        let server_first = server
            .client_first(SCRAM_SHA_256, &client.client_first())
            .unwrap();
        assert!(String::from_utf8(server_first.clone())
            .unwrap()
            .ends_with(",i=4096"));
        let client_final = client.server_first(&server_first).unwrap();
        assert_eq!(
            server.client_final(&client_final).unwrap_err(),
            ScramError::InvalidProof
        );
    }

    #[test]
    fn recovered_client_key_logs_in_to_a_backend_with_the_same_secret() {
        // The auth_query path: the client logs in to pgcell, pgcell logs in
        // to the backend with the recovered ClientKey and the secret's
        // ServerKey, without the password.
        let secret = ScramSecret::parse(PG15_PENCIL).unwrap();
        let mut front = ScramServer::new(secret.clone(), None, [1; NONCE_LEN]);
        let mut client = ScramClient::with_password("pencil", [2; NONCE_LEN]);
        let success = exchange(&mut front, SCRAM_SHA_256, &mut client).unwrap();

        let mut backend = ScramServer::new(secret.clone(), None, [3; NONCE_LEN]);
        let mut pgcell =
            ScramClient::with_keys(success.client_key, secret.server_key, [4; NONCE_LEN]);
        exchange(&mut backend, SCRAM_SHA_256, &mut pgcell).unwrap();

        // A backend with another secret refuses, and a backend without the
        // secret cannot fake its signature.
        let mut other = ScramServer::new(secret_for_other_user(), None, [3; NONCE_LEN]);
        let mut pgcell =
            ScramClient::with_keys(success.client_key, secret.server_key, [4; NONCE_LEN]);
        assert_eq!(
            exchange(&mut other, SCRAM_SHA_256, &mut pgcell).unwrap_err(),
            ScramError::InvalidProof
        );
        let mut pgcell = ScramClient::with_keys(success.client_key, [0; 32], [4; NONCE_LEN]);
        let mut backend = ScramServer::new(secret, None, [3; NONCE_LEN]);
        assert_eq!(
            exchange(&mut backend, SCRAM_SHA_256, &mut pgcell).unwrap_err(),
            ScramError::InvalidServerSignature
        );
    }

    fn secret_for_other_user() -> ScramSecret {
        ScramSecret::from_password("pencil", b"another salt", 4096)
    }

    #[test]
    fn channel_binding_plus() {
        let mut server = ScramServer::new(secret("pw"), Some(CB_DATA.to_vec()), [1; NONCE_LEN]);
        assert_eq!(server.mechanisms(), [SCRAM_SHA_256_PLUS, SCRAM_SHA_256]);
        let mut client = plus_client("pw", CB_DATA);
        assert!(client.client_first().starts_with(PLUS_HEADER.as_bytes()));
        exchange(&mut server, SCRAM_SHA_256_PLUS, &mut client).unwrap();
    }

    #[test]
    fn channel_binding_with_other_data_fails() {
        let mut server = ScramServer::new(secret("pw"), Some(CB_DATA.to_vec()), [1; NONCE_LEN]);
        let mut client = plus_client("pw", b"a man in the middle's certificate");
        let err = exchange(&mut server, SCRAM_SHA_256_PLUS, &mut client).unwrap_err();
        assert_eq!(err, ScramError::ChannelBindingMismatch);
        assert_eq!(err.kind(), ScramErrorKind::ChannelBinding);
    }

    #[test]
    fn channel_binding_downgrade_is_refused() {
        let mut server = ScramServer::new(secret("pw"), Some(CB_DATA.to_vec()), [1; NONCE_LEN]);
        let err = server
            .client_first(SCRAM_SHA_256, b"y,,n=,r=abc")
            .unwrap_err();
        assert_eq!(err, ScramError::ChannelBindingDowngrade);
        assert_eq!(err.kind(), ScramErrorKind::ChannelBinding);
    }

    #[test]
    fn y_flag_without_tls_is_fine() {
        let mut server = ScramServer::new(secret("pw"), None, [1; NONCE_LEN]);
        server.client_first(SCRAM_SHA_256, b"y,,n=,r=abc").unwrap();
        // c= must carry the same `y,,` header.
        let err = server.client_final(b"c=biws,r=abcAQEB,p=AAAA").unwrap_err();
        assert_eq!(err, ScramError::ChannelBindingMismatch);

        let mut server = ScramServer::new(secret("pw"), None, [1; NONCE_LEN]);
        let first = server.client_first(SCRAM_SHA_256, b"y,,n=,r=abc").unwrap();
        let nonce = String::from_utf8(first).unwrap()[2..]
            .split(',')
            .next()
            .unwrap()
            .to_owned();
        let bad_proof = BASE64.encode([0u8; 32]);
        let err = server
            .client_final(format!("c=eSws,r={nonce},p={bad_proof}").as_bytes())
            .unwrap_err();
        assert_eq!(err, ScramError::InvalidProof);
    }

    #[test]
    fn channel_binding_negotiation_errors() {
        /// Channel-binding data, mechanism, client-first-message, error.
        type Case<'a> = (Option<&'a [u8]>, &'a str, &'a [u8], ScramError);
        let cases: &[Case] = &[
            // PLUS not offered without TLS.
            (
                None,
                SCRAM_SHA_256_PLUS,
                b"p=tls-server-end-point,,n=,r=abc",
                ScramError::UnsupportedMechanism,
            ),
            (
                Some(CB_DATA),
                "SCRAM-SHA-1",
                b"n,,n=,r=abc",
                ScramError::UnsupportedMechanism,
            ),
            (
                Some(CB_DATA),
                SCRAM_SHA_256_PLUS,
                b"n,,n=,r=abc",
                ScramError::ChannelBindingNegotiation(
                    "SCRAM-SHA-256-PLUS selected without channel binding",
                ),
            ),
            (
                Some(CB_DATA),
                SCRAM_SHA_256_PLUS,
                b"y,,n=,r=abc",
                ScramError::ChannelBindingNegotiation(
                    "SCRAM-SHA-256-PLUS selected without channel binding",
                ),
            ),
            (
                Some(CB_DATA),
                SCRAM_SHA_256,
                b"p=tls-server-end-point,,n=,r=abc",
                ScramError::ChannelBindingNegotiation(
                    "channel binding requested with SCRAM-SHA-256",
                ),
            ),
            (
                None,
                SCRAM_SHA_256,
                b"p=tls-server-end-point,,n=,r=abc",
                ScramError::ChannelBindingNegotiation(
                    "channel binding requested with SCRAM-SHA-256",
                ),
            ),
            (
                Some(CB_DATA),
                SCRAM_SHA_256_PLUS,
                b"p=tls-unique,,n=,r=abc",
                ScramError::UnsupportedChannelBinding,
            ),
            (
                Some(CB_DATA),
                SCRAM_SHA_256_PLUS,
                b"p=tls-exporter,,n=,r=abc",
                ScramError::UnsupportedChannelBinding,
            ),
        ];
        for (cb, mechanism, message, expected) in cases {
            let mut server = ScramServer::new(secret("pw"), cb.map(<[u8]>::to_vec), [1; NONCE_LEN]);
            assert_eq!(
                server.client_first(mechanism, message).as_ref(),
                Err(expected),
                "{}",
                String::from_utf8_lossy(message)
            );
        }
    }

    #[test]
    fn malformed_client_first_messages() {
        let long_nonce = format!("n,,n=,r={}", "x".repeat(MAX_NONCE_LEN + 1));
        let too_long = format!("n,,n=,r=abc,x={}", "x".repeat(MAX_MESSAGE_LEN));
        let cases: &[(&[u8], ScramError)] = &[
            (b"", ScramError::Malformed("missing GS2 header")),
            (b"n", ScramError::Malformed("missing GS2 header")),
            (b"n,", ScramError::Malformed("missing GS2 header")),
            (
                b"x,,n=,r=abc",
                ScramError::Malformed("unexpected channel-binding flag"),
            ),
            (b"n,a=admin,n=,r=abc", ScramError::AuthzidNotSupported),
            (
                b"n,b,n=,r=abc",
                ScramError::Malformed("unexpected attribute in GS2 header"),
            ),
            (b"n,,m=ext,n=,r=abc", ScramError::ExtensionNotSupported),
            (
                b"n,,r=abc",
                ScramError::Malformed("expected user name (n=)"),
            ),
            (b"n,,n=", ScramError::Malformed("expected nonce (r=)")),
            (b"n,,n=,x=abc", ScramError::Malformed("expected nonce (r=)")),
            (b"n,,n=,r=", ScramError::Malformed("empty nonce")),
            (
                b"n,,n=,r=a b",
                ScramError::Malformed("nonce has characters outside printable ASCII"),
            ),
            (
                "n,,n=,r=é".as_bytes(),
                ScramError::Malformed("nonce has characters outside printable ASCII"),
            ),
            (
                long_nonce.as_bytes(),
                ScramError::Malformed("nonce too long"),
            ),
            (
                b"n,,n=,r=abc,",
                ScramError::Malformed("malformed attribute"),
            ),
            (
                b"n,,n=,r=abc,=x",
                ScramError::Malformed("malformed attribute"),
            ),
            (b"n,,n=,r=\xff", ScramError::Malformed("not UTF-8")),
            (too_long.as_bytes(), ScramError::TooLong),
        ];
        for (message, expected) in cases {
            let mut server = ScramServer::new(secret("pw"), None, [1; NONCE_LEN]);
            let err = server.client_first(SCRAM_SHA_256, message).unwrap_err();
            assert_eq!(&err, expected, "{}", String::from_utf8_lossy(message));
        }
        // Extensions after the nonce and any user name are accepted.
        let mut server = ScramServer::new(secret("pw"), None, [1; NONCE_LEN]);
        server
            .client_first(SCRAM_SHA_256, b"n,,n=some=2Cone,r=abc,x=ext")
            .unwrap();
    }

    #[test]
    fn malformed_client_final_messages() {
        // The server nonce is "XYZ", so the combined nonce is "abcXYZ".
        let proof = BASE64.encode([0u8; 32]);
        let cases: Vec<(String, ScramError)> = vec![
            (String::new(), ScramError::Malformed("missing proof")),
            (
                format!("c=biws,r=abcXYZ,x={proof}"),
                ScramError::Malformed("proof is not the last attribute"),
            ),
            (
                format!("c=biws,r=abcXYZ,p={proof},x=y"),
                ScramError::Malformed("proof is not the last attribute"),
            ),
            (
                format!("r=abcXYZ,p={proof}"),
                ScramError::Malformed("expected channel binding (c=)"),
            ),
            (
                format!("c=biws,p={proof}"),
                ScramError::Malformed("expected nonce (r=)"),
            ),
            (
                format!("c=biws,r=abcXYZ,nope,p={proof}"),
                ScramError::Malformed("malformed attribute"),
            ),
            (
                format!("c=bi*s,r=abcXYZ,p={proof}"),
                ScramError::Malformed("channel binding is not valid base64"),
            ),
            (
                format!("c=eSws,r=abcXYZ,p={proof}"),
                ScramError::ChannelBindingMismatch,
            ),
            (
                format!("c=biws,r=abcXY,p={proof}"),
                ScramError::NonceMismatch,
            ),
            (
                format!("c=biws,r=abcXYZW,p={proof}"),
                ScramError::NonceMismatch,
            ),
            (format!("c=biws,r=abc,p={proof}"), ScramError::NonceMismatch),
            (
                "c=biws,r=abcXYZ,p=AAAA".to_owned(),
                ScramError::Malformed("proof is not 32 bytes of base64"),
            ),
            (
                "c=biws,r=abcXYZ,p=!!!".to_owned(),
                ScramError::Malformed("proof is not 32 bytes of base64"),
            ),
            (
                "c=biws,r=abcXYZ,p=".to_owned(),
                ScramError::Malformed("proof is not 32 bytes of base64"),
            ),
            (
                format!("c=biws,r=abcXYZ,p={proof}"),
                ScramError::InvalidProof,
            ),
            (
                format!("c=biws,r=abcXYZ,x=ext,p={proof}"),
                ScramError::InvalidProof,
            ),
        ];
        for (message, expected) in cases {
            let mut server = server_after_first(secret("pw"));
            let err = server.client_final(message.as_bytes()).unwrap_err();
            assert_eq!(err, expected, "{message}");
            assert!(!err.to_string().contains(&proof));
        }
    }

    #[test]
    fn error_kinds() {
        assert_eq!(ScramError::Malformed("x").kind(), ScramErrorKind::Malformed);
        assert_eq!(ScramError::NonceMismatch.kind(), ScramErrorKind::Malformed);
        assert_eq!(ScramError::OutOfOrder.kind(), ScramErrorKind::Malformed);
        assert_eq!(
            ScramError::ChannelBindingDowngrade.kind(),
            ScramErrorKind::ChannelBinding
        );
        assert_eq!(
            ScramError::UnsupportedChannelBinding.kind(),
            ScramErrorKind::ChannelBinding
        );
        assert_eq!(ScramError::InvalidProof.kind(), ScramErrorKind::AuthFailed);
        assert_eq!(ScramErrorKind::AuthFailed.label(), "auth_failed");
    }

    #[test]
    fn server_steps_out_of_order() {
        let mut server = ScramServer::new(secret("pw"), None, [1; NONCE_LEN]);
        assert_eq!(
            server
                .client_final(RFC_CLIENT_FINAL.as_bytes())
                .unwrap_err(),
            ScramError::OutOfOrder
        );
        // The failed call ended the exchange.
        assert_eq!(
            server
                .client_first(SCRAM_SHA_256, b"n,,n=,r=abc")
                .unwrap_err(),
            ScramError::OutOfOrder
        );

        let mut server = server_after_first(secret("pw"));
        assert_eq!(
            server
                .client_first(SCRAM_SHA_256, b"n,,n=,r=abc")
                .unwrap_err(),
            ScramError::OutOfOrder
        );

        let mut server = ScramServer::new(secret("pw"), None, [1; NONCE_LEN]);
        let mut client = ScramClient::with_password("pw", [2; NONCE_LEN]);
        let success = exchange(&mut server, SCRAM_SHA_256, &mut client).unwrap();
        assert_eq!(
            server.client_final(b"anything").unwrap_err(),
            ScramError::OutOfOrder
        );
        assert_eq!(
            client.server_final(&success.server_final).unwrap_err(),
            ScramError::OutOfOrder
        );
    }

    #[test]
    fn client_steps_out_of_order() {
        let mut client = ScramClient::with_password("pencil", [2; NONCE_LEN]);
        assert_eq!(
            client
                .server_first(RFC_SERVER_FIRST.as_bytes())
                .unwrap_err(),
            ScramError::OutOfOrder
        );
        assert_eq!(
            client
                .server_final(RFC_SERVER_FINAL.as_bytes())
                .unwrap_err(),
            ScramError::OutOfOrder
        );

        let mut client = rfc_client();
        client.client_first();
        assert_eq!(
            client
                .server_final(RFC_SERVER_FINAL.as_bytes())
                .unwrap_err(),
            ScramError::OutOfOrder
        );
        // client_first restarts.
        client.client_first();
        client.server_first(RFC_SERVER_FIRST.as_bytes()).unwrap();
        assert_eq!(
            client
                .server_first(RFC_SERVER_FIRST.as_bytes())
                .unwrap_err(),
            ScramError::OutOfOrder
        );
    }

    fn rfc_client() -> ScramClient {
        ScramClient::with_parts(
            Credentials::Password("pencil".to_owned()),
            "user",
            RFC_CLIENT_NONCE.to_owned(),
            None,
        )
    }

    #[test]
    fn client_rejects_bad_server_first_messages() {
        let cases: Vec<(String, ScramError)> = vec![
            ("".to_owned(), ScramError::Malformed("expected nonce (r=)")),
            (
                "m=ext,r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096".to_owned(),
                ScramError::ExtensionNotSupported,
            ),
            (
                "r=someoneElse,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096".to_owned(),
                ScramError::NonceMismatch,
            ),
            (
                format!("r={RFC_CLIENT_NONCE},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"),
                ScramError::NonceMismatch,
            ),
            (
                format!("r={RFC_CLIENT_NONCE}x y,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"),
                ScramError::Malformed("nonce has characters outside printable ASCII"),
            ),
            (
                format!("r={RFC_CLIENT_NONCE}x,i=4096"),
                ScramError::Malformed("expected salt (s=)"),
            ),
            (
                format!("r={RFC_CLIENT_NONCE}x,s=,i=4096"),
                ScramError::Malformed("empty salt"),
            ),
            (
                format!("r={RFC_CLIENT_NONCE}x,s=***,i=4096"),
                ScramError::Malformed("salt is not valid base64"),
            ),
            (
                format!("r={RFC_CLIENT_NONCE}x,s={},i=4096", "A".repeat(2000)),
                ScramError::Malformed("salt too long"),
            ),
            (
                format!("r={RFC_CLIENT_NONCE}x,s={RFC_SALT}"),
                ScramError::Malformed("expected iteration count (i=)"),
            ),
            (
                format!("r={RFC_CLIENT_NONCE}x,s={RFC_SALT},i=0"),
                ScramError::Iterations,
            ),
            (
                format!("r={RFC_CLIENT_NONCE}x,s={RFC_SALT},i=10000001"),
                ScramError::Iterations,
            ),
            (
                format!("r={RFC_CLIENT_NONCE}x,s={RFC_SALT},i=4e3"),
                ScramError::Iterations,
            ),
            (
                format!("r={RFC_CLIENT_NONCE}x,s={RFC_SALT},i=4096,junk"),
                ScramError::Malformed("malformed attribute"),
            ),
        ];
        for (message, expected) in cases {
            let mut client = rfc_client();
            client.client_first();
            assert_eq!(
                client.server_first(message.as_bytes()).unwrap_err(),
                expected,
                "{message}"
            );
        }
    }

    #[test]
    fn client_rejects_bad_server_final_messages() {
        let wrong = format!("v={}", BASE64.encode([0u8; 32]));
        let cases: Vec<(&str, ScramError)> = vec![
            (
                "e=invalid-proof",
                ScramError::ServerError("invalid-proof".to_owned()),
            ),
            (
                "e=other-error,x=1",
                ScramError::ServerError("other-error".to_owned()),
            ),
            (&wrong, ScramError::InvalidServerSignature),
            (
                "v=AAAA",
                ScramError::Malformed("verifier is not 32 bytes of base64"),
            ),
            ("", ScramError::Malformed("expected verifier (v=)")),
            ("x=1", ScramError::Malformed("expected verifier (v=)")),
        ];
        for (message, expected) in cases {
            let mut client = rfc_client();
            client.client_first();
            client.server_first(RFC_SERVER_FIRST.as_bytes()).unwrap();
            let err = client.server_final(message.as_bytes()).unwrap_err();
            assert_eq!(err, expected, "{message}");
        }
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let client = ScramClient::with_password("hunter2", [2; NONCE_LEN]);
        assert!(!format!("{client:?}").contains("hunter2"));
        let mut server = ScramServer::new(secret("pw"), None, [1; NONCE_LEN]);
        let mut client = ScramClient::with_password("pw", [2; NONCE_LEN]);
        let success = exchange(&mut server, SCRAM_SHA_256, &mut client).unwrap();
        let debug = format!("{success:?}");
        assert!(debug.contains("<redacted>"));
        assert!(!debug.contains(&BASE64.encode(success.client_key)));
        assert!(!debug.contains(&format!("{:?}", success.client_key)));
    }
}
