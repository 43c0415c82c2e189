//! pgcell: the PostgreSQL data plane of one cell of a private database
//! service. It sits behind an AWS Network Load Balancer as its target, and
//! serves each customer connection arriving over PrivateLink.
//!
//! Modules, in the order a connection meets them:
//!
//! | module | job |
//! |---|---|
//! | [`listener`] | accept loop, one task per connection |
//! | [`proxy_protocol`] | PROXY v2/v1 header: real client address, AWS VPC endpoint id |
//! | `handshake` | pre-startup negotiation: `SSLRequest`, `GSSENCRequest`, direct TLS, `CancelRequest`, `StartupMessage` |
//! | [`tls`] | rustls server (SNI, ALPN, reload) and backend client configs |
//! | `channel_binding` | `tls-server-end-point` data of pgcell's certificate, for SCRAM-SHA-256-PLUS |
//! | [`protocol`] | the wire format: startup packets, framing, messages pgcell builds, SQLSTATEs |
//! | `tenant` | the tenant model (configuration, backend TLS, secrets, counters) and `tenant::ClientInfo` |
//! | `route` | tenant resolution (SNI, `options`, user suffix) and policy, before any password |
//! | [`backend`] | connecting to a tenant's backend |
//! | [`auth`] | authentication primitives: SCRAM, MD5, secrets, randomness |
//! | `auth_query` | a user's SCRAM secret from the tenant's backend, cached |
//! | [`sql`] | SQL text read once: the lexer, statement splitting, what a statement may do to a session |
//! | [`session`] | one connection end to end. Names: *client auth* (`session::client_auth`) is pgcell checking a client's password; *auth relay* (`session::auth_relay`) is the backend checking it through pgcell (passthrough); *backend login* (`backend::server`) is pgcell logging in to a backend for a pool |
//! | `clients` | the clients connected now, and what each is doing |
//! | `pool` | backend pools per (tenant, database, user); pause and resume |
//! | [`session::console`] | the admin console: database `pgcell`, `SHOW POOLS` … (a session of its own) |
//! | [`cancel`] | cancel keys pgcell issues ([`cancel::IssuedKey`]), their backend targets, forwarding to peer replicas |
//! | `health` | the TCP health port the NLB checks |
//! | `admin` | HTTP `/metrics`, `/livez`, `/readyz` |
//! | [`metrics`] | every metric name and help text |
//! | [`lifecycle`] | Starting → Ready → Draining → Stopping → Stopped |
//! | [`register`] | this replica's NLB target ([`register::Registration`]): RegisterTargets when ready, DeregisterTargets first in a drain (`register/aws.rs`) |
//! | [`discovery`] | tenants (`PgcellTenant`), their backends and the peers from Kubernetes (`discovery/kube.rs`) |
//! | `state` | what connections share (`state::Shared`): settings, routes, pools, cancel keys; reload |
//! | [`server`] | bind, serve, shut down |
//! | [`config`] | TOML → typed [`config::Config`], every problem reported at once |
//! | [`local_pg`] | throwaway local PostgreSQL clusters for the demo and tests |
//! | [`demo`] | `pgcell demo` |

// Input from clients and the network never panics the process: no unwrap,
// expect or panic outside tests (each remaining invariant is spelled out).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub(crate) mod admin;
pub mod auth;
pub(crate) mod auth_query;
pub mod backend;
pub mod cancel;
pub(crate) mod channel_binding;
pub(crate) mod clients;
pub mod config;
pub mod demo;
pub mod discovery;
pub(crate) mod handshake;
pub(crate) mod health;
pub mod lifecycle;
pub mod listener;
pub mod local_pg;
pub mod metrics;
pub(crate) mod pool;
pub mod protocol;
pub mod proxy_protocol;
pub mod register;
pub(crate) mod replication;
pub(crate) mod route;
pub mod server;
pub mod session;
pub mod sql;
pub(crate) mod state;
pub(crate) mod stream;
pub(crate) mod tenant;
pub mod tls;

pub use config::Config;
pub use server::{Server, ServerHandle};
