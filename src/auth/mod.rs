//! Client authentication by pgcell and backend login.
//!
//! - [`secret`]: SCRAM-SHA-256 secrets in PostgreSQL's stored format.
//! - [`scram`]: the SCRAM exchange, server side (clients, with
//!   `tls-server-end-point` channel binding) and client side (backends).
//! - [`md5`]: the MD5 password response, for backends (and tenants) that
//!   use md5.
//! - [`query`]: `auth_query`, secrets fetched from a tenant's backend and
//!   cached.

pub mod md5;
pub mod query;
pub mod scram;
pub mod secret;

/// Random bytes for a SCRAM nonce.
pub fn random_nonce() -> [u8; 18] {
    let mut nonce = [0u8; 18];
    // getrandom fails only without any OS entropy source; the exchange then
    // still works with a time-derived nonce, which is unique but guessable.
    if getrandom::fill(&mut nonce).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        nonce[..16].copy_from_slice(&t.to_le_bytes());
    }
    nonce
}
