//! SCRAM-SHA-256 secrets in the format PostgreSQL stores in
//! `pg_authid.rolpassword`:
//! `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
//!
//! Spec: RFC 5802 §3 (key derivation), RFC 7677 (SHA-256), and
//! <https://www.postgresql.org/docs/current/catalog-pg-authid.html>.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::digest::core_api::BlockSizeUser;
use hmac::digest::typenum::Unsigned;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Length of StoredKey, ServerKey, ClientKey and every SHA-256 output.
pub(crate) const KEY_LEN: usize = 32;
/// Most PBKDF2 iterations accepted: one login with more would burn seconds of
/// CPU, so a larger count is a mistake or an attack.
pub(crate) const MAX_ITERATIONS: u32 = 10_000_000;
/// Longest salt accepted, in bytes.
pub(crate) const MAX_SALT_LEN: usize = 1024;
/// Iterations for secrets pgcell generates (PostgreSQL's default).
pub(crate) const DEFAULT_ITERATIONS: u32 = 4096;
/// Salt length for secrets pgcell generates (PostgreSQL's default).
pub(crate) const GENERATED_SALT_LEN: usize = 16;

const PREFIX: &str = "SCRAM-SHA-256$";
/// Longest secret string accepted: prefix, a 10-digit count, the longest
/// salt and two keys in base64, and separators.
const MAX_SECRET_LEN: usize = PREFIX.len() + 10 + base64_len(MAX_SALT_LEN) + 2 * 44 + 3;

/// A SCRAM-SHA-256 secret: what a server needs to verify a client, without
/// the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramSecret {
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// PBKDF2 salt.
    pub salt: Vec<u8>,
    /// `SHA-256(ClientKey)`: verifies a client's proof.
    pub stored_key: [u8; KEY_LEN],
    /// `HMAC(SaltedPassword, "Server Key")`: signs the server's final message.
    pub server_key: [u8; KEY_LEN],
}

impl ScramSecret {
    /// Parses PostgreSQL's stored format
    /// `SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>`.
    ///
    /// Strict: no surrounding whitespace, canonical base64 with padding.
    /// Error messages never quote the input.
    pub fn parse(s: &str) -> Result<ScramSecret, SecretError> {
        if s.len() > MAX_SECRET_LEN {
            return Err(SecretError::Malformed("too long"));
        }
        let rest = s.strip_prefix(PREFIX).ok_or(SecretError::NotScram)?;
        let (params, keys) = rest
            .split_once('$')
            .ok_or(SecretError::Malformed("missing '$' before the keys"))?;
        let (iterations, salt) = params.split_once(':').ok_or(SecretError::Malformed(
            "missing ':' after the iteration count",
        ))?;
        let (stored_key, server_key) = keys
            .split_once(':')
            .ok_or(SecretError::Malformed("missing ':' between the keys"))?;

        let iterations = parse_iterations(iterations).ok_or(SecretError::Iterations)?;
        if salt.len() > base64_len(MAX_SALT_LEN) {
            return Err(SecretError::SaltTooLong);
        }
        let salt = BASE64
            .decode(salt)
            .map_err(|_| SecretError::Malformed("salt is not valid base64"))?;
        if salt.is_empty() {
            return Err(SecretError::Malformed("empty salt"));
        }
        if salt.len() > MAX_SALT_LEN {
            return Err(SecretError::SaltTooLong);
        }
        Ok(ScramSecret {
            iterations,
            salt,
            stored_key: decode_key(stored_key).ok_or(SecretError::Malformed(
                "StoredKey is not 32 bytes of base64",
            ))?,
            server_key: decode_key(server_key).ok_or(SecretError::Malformed(
                "ServerKey is not 32 bytes of base64",
            ))?,
        })
    }

    /// Derives the secret PostgreSQL would store for `password` with this
    /// salt and iteration count (0 iterations count as 1).
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> ScramSecret {
        let iterations = iterations.max(1);
        let salted = salted_password(password, salt, iterations);
        let client_key = hmac_sha256(&salted, &[b"Client Key"]);
        ScramSecret {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key: hmac_sha256(&salted, &[b"Server Key"]),
        }
    }

    /// Derives a secret for `password` with a fresh random 16-byte salt and
    /// 4096 iterations, as `CREATE ROLE ... PASSWORD` does.
    pub fn generate(password: &str) -> Result<ScramSecret, SecretError> {
        let mut salt = [0u8; GENERATED_SALT_LEN];
        getrandom::fill(&mut salt).map_err(SecretError::Random)?;
        Ok(ScramSecret::from_password(
            password,
            &salt,
            DEFAULT_ITERATIONS,
        ))
    }
}

/// A deterministic fake secret for a user that does not exist, so that the
/// exchange for an unknown user looks exactly like the one for a known user
/// (same salt on every attempt, same iteration count, same timing) and fails
/// the same way, with an invalid proof: no user enumeration.
///
/// `key` must be a random per-process (or per-deployment) key: with it the
/// salt cannot be predicted, without it anyone could tell mock salts from
/// real ones. Nobody knows a ClientKey hashing to the mock StoredKey, so no
/// proof verifies.
pub(crate) fn mock_secret(username: &str, key: &[u8; KEY_LEN]) -> ScramSecret {
    let digest = hmac_sha256(key, &[username.as_bytes()]);
    let mut salt = digest.to_vec();
    salt.truncate(GENERATED_SALT_LEN);
    ScramSecret {
        iterations: DEFAULT_ITERATIONS,
        salt,
        // Labels with a NUL keep these apart from the salt's HMAC input:
        // PostgreSQL user names cannot contain NUL.
        stored_key: hmac_sha256(key, &[b"pgcell mock StoredKey\0", username.as_bytes()]),
        server_key: hmac_sha256(key, &[b"pgcell mock ServerKey\0", username.as_bytes()]),
    }
}

/// The key that SCRAM salts of password users and the mock secrets of
/// unknown users are derived from. From `[auth]`'s shared secret every
/// replica derives the same key, so a prober comparing replicas sees the
/// same salt and iteration count for a user on each; without one, the key
/// is random per process.
#[derive(Clone)]
pub(crate) struct SaltKey([u8; KEY_LEN]);

impl SaltKey {
    /// The key derived from secret material shared by all replicas.
    pub(crate) fn from_secret(secret: &[u8]) -> SaltKey {
        SaltKey(hmac_sha256(&sha256(secret), &[b"pgcell salt key"]))
    }

    /// A key of this process only; fails without OS random bytes.
    pub(crate) fn random() -> Result<SaltKey, super::random::RandomError> {
        let mut key = [0u8; KEY_LEN];
        super::random::fill_random(&mut key, "key")?;
        Ok(SaltKey(key))
    }

    /// The key of [`mock_secret`].
    pub(crate) fn mock_key(&self) -> [u8; KEY_LEN] {
        hmac_sha256(&self.0, &[b"pgcell mock key"])
    }

    /// The secret of a configured password: 4096 iterations and a salt
    /// derived from the key, `scope` (the tenant id; empty for admin
    /// users), the user and the password, so it changes with the password
    /// and is the same on every replica with the same key.
    pub(crate) fn password_secret(&self, scope: &str, user: &str, password: &str) -> ScramSecret {
        // NULs separate the parts: none of them can contain one.
        let digest = hmac_sha256(
            &self.0,
            &[
                b"pgcell password salt\0",
                scope.as_bytes(),
                b"\0",
                user.as_bytes(),
                b"\0",
                password.as_bytes(),
            ],
        );
        ScramSecret::from_password(password, &digest[..GENERATED_SALT_LEN], DEFAULT_ITERATIONS)
    }
}

impl fmt::Debug for SaltKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SaltKey(<redacted>)")
    }
}

/// Why a SCRAM secret could not be parsed or made. Never quotes the secret.
#[derive(Debug, Error)]
pub enum SecretError {
    /// Not a SCRAM-SHA-256 secret at all (an md5 hash, a plain password).
    #[error("not a SCRAM-SHA-256 secret (expected \"SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>\")")]
    NotScram,
    /// The secret's structure or encoding is wrong.
    #[error("malformed SCRAM-SHA-256 secret: {0}")]
    Malformed(&'static str),
    /// The iteration count is not a number in `1..=MAX_ITERATIONS`.
    #[error("SCRAM-SHA-256 secret: iteration count must be a number from 1 to {MAX_ITERATIONS}")]
    Iterations,
    /// The salt is longer than [`MAX_SALT_LEN`].
    #[error("SCRAM-SHA-256 secret: salt longer than {MAX_SALT_LEN} bytes")]
    SaltTooLong,
    /// The operating system gave no random bytes for a salt.
    #[error("no random bytes for a salt: {0}")]
    Random(getrandom::Error),
}

impl FromStr for ScramSecret {
    type Err = SecretError;

    fn from_str(s: &str) -> Result<ScramSecret, SecretError> {
        ScramSecret::parse(s)
    }
}

/// The stored format, as `pg_authid.rolpassword` holds it.
impl fmt::Display for ScramSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}{}:{}${}:{}",
            self.iterations,
            BASE64.encode(&self.salt),
            BASE64.encode(self.stored_key),
            BASE64.encode(self.server_key)
        )
    }
}

/// Shows the iteration count and salt, not the keys: the keys let anyone
/// who sees them impersonate the server (ServerKey) or, with one observed
/// exchange, the client (StoredKey plus a proof).
impl fmt::Debug for ScramSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramSecret")
            .field("iterations", &self.iterations)
            .field("salt", &BASE64.encode(&self.salt))
            .field("stored_key", &"<redacted>")
            .field("server_key", &"<redacted>")
            .finish()
    }
}

/// The password bytes SCRAM hashes.
///
/// PostgreSQL (server and libpq) runs SASLprep (RFC 4013) on the password
/// first. Full SASLprep (stringprep tables, NFKC) is not implemented here:
/// ASCII passwords are used as they are, which is exactly what PostgreSQL
/// does (its SASLprep returns pure ASCII unchanged); other passwords are
/// used as raw UTF-8, which matches PostgreSQL when SASLprep would not
/// change them (already NFKC, no mapped characters) and when SASLprep
/// fails (PostgreSQL then falls back to the raw bytes). A non-ASCII password
/// that SASLprep would change (a non-ASCII space, a soft hyphen, a
/// decomposed accent, full-width letters) derives a different secret than
/// PostgreSQL's.
pub(crate) fn password_bytes(password: &str) -> &[u8] {
    password.as_bytes()
}

/// `SaltedPassword = Hi(password, salt, iterations)`, i.e.
/// PBKDF2-HMAC-SHA-256 with one output block.
pub(crate) fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; KEY_LEN] {
    pbkdf2::pbkdf2_hmac_array::<Sha256, KEY_LEN>(password_bytes(password), salt, iterations)
}

// HMAC zero-pads a key shorter than the hash's block to the block size
// (RFC 2104 §2), so padding a 32-byte key by hand gives the same MAC through
// the infallible fixed-size constructor.
const BLOCK_LEN: usize = <<Sha256 as BlockSizeUser>::BlockSize as Unsigned>::USIZE;
const _: () = assert!(BLOCK_LEN >= KEY_LEN);

/// `HMAC-SHA-256(key, parts concatenated)`.
pub(crate) fn hmac_sha256(key: &[u8; KEY_LEN], parts: &[&[u8]]) -> [u8; KEY_LEN] {
    let mut block = hmac::digest::Key::<Hmac<Sha256>>::default();
    for (dst, src) in block.iter_mut().zip(key) {
        *dst = *src;
    }
    let mut mac = <Hmac<Sha256> as hmac::digest::KeyInit>::new(&block);
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// `SHA-256(data)`.
pub(crate) fn sha256(data: &[u8]) -> [u8; KEY_LEN] {
    Sha256::digest(data).into()
}

/// Decodes a base64 key of exactly [`KEY_LEN`] bytes.
pub(crate) fn decode_key(s: &str) -> Option<[u8; KEY_LEN]> {
    if s.len() != base64_len(KEY_LEN) {
        return None;
    }
    BASE64.decode(s).ok()?.try_into().ok()
}

/// Length of the padded base64 encoding of `n` bytes.
const fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// A decimal iteration count in `1..=MAX_ITERATIONS`: digits only (no sign,
/// no spaces).
pub(crate) fn parse_iterations(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u32 = s.parse().ok()?;
    (1..=MAX_ITERATIONS).contains(&n).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `CREATE ROLE x PASSWORD 'pencil'` on PostgreSQL 15 with
    /// `password_encryption = 'scram-sha-256'`.
    const PG15_PENCIL: &str = "SCRAM-SHA-256$4096:8NGPGsWe/JCrNUjLI0StXw==$zbCFnlgMYnynE6jliNivytQRNJqpiPCiCZGD222jE8E=:YqjInZXCaYTss2dc4MDlqa5SbKsbEFmTFtLWdJdpqXc=";
    /// `CREATE ROLE y PASSWORD 'pâté'` (precomposed â and é, which SASLprep
    /// leaves as they are) on the same server.
    const PG15_PATE: &str = "SCRAM-SHA-256$4096:YJhac6R0nV0yuYQA/nO9nQ==$Hx6UjNJZPHTX3LRm/nk5l/j+N+IWaOF6mWOdY3T5gk4=:lMfyT9eGa4SaywreBnYkRXUbXOs4GyXxfcU9+HnArcY=";

    #[test]
    fn parses_a_postgres_secret_and_derives_the_same_keys() {
        for (stored, password) in [(PG15_PENCIL, "pencil"), (PG15_PATE, "pâté")] {
            let parsed = ScramSecret::parse(stored).unwrap();
            assert_eq!(parsed.iterations, 4096);
            assert_eq!(parsed.salt.len(), 16);
            let derived = ScramSecret::from_password(password, &parsed.salt, parsed.iterations);
            assert_eq!(derived.stored_key, parsed.stored_key);
            assert_eq!(derived.server_key, parsed.server_key);
            assert_eq!(derived, parsed);
            assert_eq!(derived.to_string(), stored);
        }
    }

    #[test]
    fn wrong_password_derives_other_keys() {
        let parsed = ScramSecret::parse(PG15_PENCIL).unwrap();
        let derived = ScramSecret::from_password("pencil2", &parsed.salt, parsed.iterations);
        assert_ne!(derived.stored_key, parsed.stored_key);
    }

    #[test]
    fn display_round_trips() {
        let secret = ScramSecret::from_password("secret", b"0123456789abcdef", 4096);
        let back: ScramSecret = secret.to_string().parse().unwrap();
        assert_eq!(back, secret);
    }

    #[test]
    fn generate_uses_fresh_salts() {
        let a = ScramSecret::generate("pw").unwrap();
        let b = ScramSecret::generate("pw").unwrap();
        assert_eq!(a.iterations, DEFAULT_ITERATIONS);
        assert_eq!(a.salt.len(), GENERATED_SALT_LEN);
        assert_ne!(a.salt, b.salt);
        assert_eq!(ScramSecret::from_password("pw", &a.salt, 4096), a);
    }

    #[test]
    fn debug_redacts_keys() {
        let secret = ScramSecret::parse(PG15_PENCIL).unwrap();
        let debug = format!("{secret:?}");
        assert!(debug.contains("<redacted>"));
        assert!(!debug.contains("zbCFnlgMYnynE6jliNivytQRNJqpiPCiCZGD222jE8E="));
        assert!(!debug.contains("YqjInZXCaYTss2dc4MDlqa5SbKsbEFmTFtLWdJdpqXc="));
    }

    #[test]
    fn rejects_malformed_secrets_without_quoting_them() {
        let key = "zbCFnlgMYnynE6jliNivytQRNJqpiPCiCZGD222jE8E=";
        let salt = "8NGPGsWe/JCrNUjLI0StXw==";
        let big_salt = BASE64.encode([0u8; MAX_SALT_LEN + 1]);
        let cases = [
            String::new(),
            "md5a3556571e93b0d20722ba62be61e8c2d".to_owned(),
            "pencil".to_owned(),
            format!("SCRAM-SHA-256$4096:{salt}"),
            format!("SCRAM-SHA-256$4096{salt}${key}:{key}"),
            format!("SCRAM-SHA-256$4096:{salt}${key}{key}"),
            format!("SCRAM-SHA-256$0:{salt}${key}:{key}"),
            format!("SCRAM-SHA-256$-1:{salt}${key}:{key}"),
            format!("SCRAM-SHA-256$+4096:{salt}${key}:{key}"),
            format!("SCRAM-SHA-256$10000001:{salt}${key}:{key}"),
            format!("SCRAM-SHA-256$99999999999:{salt}${key}:{key}"),
            format!("SCRAM-SHA-256$:{salt}${key}:{key}"),
            format!("SCRAM-SHA-256$4096:${key}:{key}"),
            format!("SCRAM-SHA-256$4096:not*base64${key}:{key}"),
            format!("SCRAM-SHA-256$4096:{big_salt}${key}:{key}"),
            format!("SCRAM-SHA-256$4096:{salt}$c2hvcnQ=:{key}"),
            format!("SCRAM-SHA-256$4096:{salt}${key}:{key}:{key}"),
            format!("SCRAM-SHA-256$4096:{salt}${key}:{key} "),
            format!("SCRAM-SHA-1$4096:{salt}${key}:{key}"),
        ];
        for case in cases {
            let err = ScramSecret::parse(&case).unwrap_err();
            let message = err.to_string();
            assert!(!message.contains(key), "{message}");
            assert!(!message.contains(salt), "{message}");
        }
        assert!(matches!(
            ScramSecret::parse(&format!("SCRAM-SHA-256$4096:{big_salt}${key}:{key}")),
            Err(SecretError::SaltTooLong)
        ));
        assert!(matches!(
            ScramSecret::parse(&format!("SCRAM-SHA-256$10000001:{salt}${key}:{key}")),
            Err(SecretError::Iterations)
        ));
    }

    #[test]
    fn accepts_the_largest_bounds() {
        let key = "zbCFnlgMYnynE6jliNivytQRNJqpiPCiCZGD222jE8E=";
        let salt = BASE64.encode([7u8; MAX_SALT_LEN]);
        let secret =
            ScramSecret::parse(&format!("SCRAM-SHA-256$10000000:{salt}${key}:{key}")).unwrap();
        assert_eq!(secret.iterations, MAX_ITERATIONS);
        assert_eq!(secret.salt.len(), MAX_SALT_LEN);
    }

    #[test]
    fn salt_key_derivations() {
        let k = SaltKey::from_secret(b"0123456789abcdef0123456789abcdef");
        let same = SaltKey::from_secret(b"0123456789abcdef0123456789abcdef");
        let other = SaltKey::from_secret(b"0123456789abcdef0123456789abcdeX");
        assert_eq!(k.mock_key(), same.mock_key());
        assert_ne!(k.mock_key(), other.mock_key());
        let a = k.password_secret("acme", "alice", "pw");
        assert_eq!(a, same.password_secret("acme", "alice", "pw"));
        assert_eq!(a.iterations, DEFAULT_ITERATIONS);
        assert_eq!(a.salt.len(), GENERATED_SALT_LEN);
        assert_ne!(a.salt, other.password_secret("acme", "alice", "pw").salt);
        assert_ne!(a.salt, k.password_secret("acme", "alice", "pw2").salt);
        assert_ne!(a.salt, k.password_secret("globex", "alice", "pw").salt);
        assert_eq!(ScramSecret::from_password("pw", &a.salt, a.iterations), a);
        assert_ne!(
            SaltKey::random().unwrap().mock_key(),
            SaltKey::random().unwrap().mock_key()
        );
        assert_eq!(format!("{k:?}"), "SaltKey(<redacted>)");
    }

    #[test]
    fn mock_secret_is_deterministic_per_user_and_key() {
        let key = [42u8; 32];
        let a = mock_secret("alice", &key);
        assert_eq!(a, mock_secret("alice", &key));
        assert_eq!(a.iterations, DEFAULT_ITERATIONS);
        assert_eq!(a.salt.len(), GENERATED_SALT_LEN);
        assert_eq!(a.salt[..], hmac_sha256(&key, &[b"alice"])[..16]);
        let b = mock_secret("bob", &key);
        assert_ne!(a.salt, b.salt);
        assert_ne!(a.stored_key, b.stored_key);
        assert_ne!(a.salt, mock_secret("alice", &[43u8; 32]).salt);
        assert_ne!(a.stored_key, a.server_key);
    }

    #[test]
    fn padded_key_hmac_equals_variable_length_key_hmac() {
        let key = [0x0bu8; 32];
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap();
        mac.update(b"Hi There");
        let expected: [u8; 32] = mac.finalize().into_bytes().into();
        assert_eq!(hmac_sha256(&key, &[b"Hi ", b"There"]), expected);
    }
}
