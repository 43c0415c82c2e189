//! The PostgreSQL wire protocol, as far as pgcell needs it.
//!
//! pgcell parses the pre-startup packets in full ([`startup`]), frames
//! backend and frontend messages by their 5-byte header only ([`framing`]),
//! and builds the handful of messages it sends itself ([`messages`]).
//! Spec: <https://www.postgresql.org/docs/current/protocol-message-formats.html>

pub mod framing;
pub mod messages;
pub mod sqlstate;
pub mod startup;

pub use sqlstate::SqlState;
