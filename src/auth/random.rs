//! Random bytes from the operating system, for SCRAM nonces, MD5 salts,
//! cancel keys and per-process keys. There is no fallback: without them
//! pgcell refuses to start, or refuses the connection.

use thiserror::Error;

/// The operating system gave no random bytes. pgcell never falls back to
/// anything predictable: it refuses to start, or refuses the connection.
#[derive(Debug, Error)]
#[error("could not generate random {what}: {source}")]
pub struct RandomError {
    /// What the bytes were for (PostgreSQL's wording: "nonce", "cancel key").
    pub what: &'static str,
    /// The operating system's error.
    pub source: getrandom::Error,
}

/// Where random bytes come from: [`OS_RANDOM`], or a stand-in in tests.
pub(crate) type RandomSource = fn(&mut [u8]) -> Result<(), getrandom::Error>;

/// The operating system's CSPRNG (`getrandom(2)`).
pub(crate) const OS_RANDOM: RandomSource = getrandom::fill;

/// Fills `buf` from `source`; `what` names the use in the error.
pub(crate) fn fill_random_from(
    source: RandomSource,
    buf: &mut [u8],
    what: &'static str,
) -> Result<(), RandomError> {
    source(buf).map_err(|source| RandomError { what, source })
}

/// Fills `buf` from the operating system.
pub(crate) fn fill_random(buf: &mut [u8], what: &'static str) -> Result<(), RandomError> {
    fill_random_from(OS_RANDOM, buf, what)
}

/// Random bytes for a SCRAM nonce (or an MD5 salt), from `source`.
pub(crate) fn nonce_from(source: RandomSource) -> Result<[u8; 18], RandomError> {
    let mut nonce = [0u8; 18];
    fill_random_from(source, &mut nonce, "nonce")?;
    Ok(nonce)
}

/// Random bytes for a SCRAM nonce, from the operating system.
pub(crate) fn try_random_nonce() -> Result<[u8; 18], RandomError> {
    nonce_from(OS_RANDOM)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broken(_: &mut [u8]) -> Result<(), getrandom::Error> {
        Err(getrandom::Error::UNSUPPORTED)
    }

    #[test]
    fn a_failing_source_is_an_error_not_a_fallback() {
        let e = nonce_from(broken).unwrap_err();
        assert_eq!(e.what, "nonce");
        assert!(e.to_string().starts_with("could not generate random nonce"));
        let a = try_random_nonce().unwrap();
        assert_ne!(a, try_random_nonce().unwrap());
    }
}
