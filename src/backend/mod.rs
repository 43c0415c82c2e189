//! Connecting to a tenant's backend: the servers its [`Topology`] puts
//! first for what the client wants (the primary, or a replica), TCP
//! keepalive, and TLS when the tenant asks for it.
//!
//! The connection itself is opened in `connect` ([`connect()`],
//! [`Targets`], [`ConnectError`]), re-exported here; [`server`] logs a
//! pooled backend in, [`probe`] follows each server's role and lag.

mod connect;
pub mod probe;
pub mod server;
pub mod statements;
pub mod topology;

pub use connect::{
    connect, connect_server, set_socket_options, Backend, BackendStream, ConnectError, Targets,
};
pub use topology::{NoServer, Target, Topology};
