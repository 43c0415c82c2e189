//! Connecting to a tenant's backend: the servers its [`Topology`] puts
//! first for what the client wants (the primary, or a replica), TCP
//! keepalive, and TLS when the tenant asks for it.
//!
//! The connection itself is opened in `connect` ([`connect()`],
//! [`Targets`], [`ConnectError`]), re-exported here; [`server`] logs a
//! pooled backend in, [`probe`] follows each server's role and lag.

mod connect;
pub(crate) mod probe;
pub(crate) mod server;
pub(crate) mod statements;
pub(crate) mod topology;

pub(crate) use connect::{connect, set_socket_options, ConnectError, Targets};
pub(crate) use topology::{Target, Topology};
