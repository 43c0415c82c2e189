//! Client authentication by pgcell and backend login.
//!
//! - [`secret`]: SCRAM-SHA-256 secrets in PostgreSQL's stored format.
//! - [`scram`]: the SCRAM exchange, server side (clients, with
//!   `tls-server-end-point` channel binding) and client side (backends).

pub mod scram;
pub mod secret;
