//! The PostgreSQL wire protocol, as far as pgcell needs it.
//!
//! pgcell parses the pre-startup packets in full ([`startup`]), frames
//! backend and frontend messages by their 5-byte header only ([`framing`]),
//! builds the handful of messages it sends itself ([`messages`]), and
//! reports every error to a client as a [`ClientError`].
//! Spec: <https://www.postgresql.org/docs/current/protocol-message-formats.html>

pub(crate) mod client_error;
pub(crate) mod framing;
pub(crate) mod messages;
pub(crate) mod sqlstate;
pub mod startup;

pub(crate) use client_error::{ClientError, Severity};
pub(crate) use sqlstate::SqlState;
