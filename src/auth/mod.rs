//! Authentication primitives, for clients pgcell authenticates and for
//! backend logins.
//!
//! - [`secret`]: SCRAM-SHA-256 secrets in PostgreSQL's stored format.
//! - [`scram`]: the SCRAM exchange, server side (clients, with
//!   `tls-server-end-point` channel binding) and client side (backends).
//! - [`md5`]: the MD5 password response, for backends (and tenants) that
//!   use md5.
//! - `random`: random bytes from the operating system ([`fill_random`],
//!   [`try_random_nonce`], [`RandomError`]), re-exported here.
//!
//! Secrets fetched from a tenant's backend (`auth_query`) are in
//! the `auth_query` module, above the backend connection they use.

pub(crate) mod md5;
mod random;
pub(crate) mod scram;
pub(crate) mod secret;

#[cfg(test)]
pub(crate) use random::nonce_from;
pub(crate) use random::{
    fill_random, fill_random_from, try_random_nonce, RandomError, RandomSource, OS_RANDOM,
};
