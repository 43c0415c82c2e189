//! pgcell: the PostgreSQL data plane of one cell of a private database
//! service. It sits behind an AWS Network Load Balancer as its target, and
//! serves each customer connection arriving over PrivateLink.
//!
//! Modules, in the order a connection meets them:
//!
//! | module | job |
//! |---|---|
//! | `listener` | accept loop, one task per connection |
//! | `proxy_protocol` | PROXY v2/v1 header: real client address, AWS VPC endpoint id |
//! | `handshake` | pre-startup negotiation: `SSLRequest`, `GSSENCRequest`, direct TLS, `CancelRequest`, `StartupMessage` |
//! | `tls` | rustls server (SNI, ALPN, reload) and backend client configs |
//! | `channel_binding` | `tls-server-end-point` data of pgcell's certificate, for SCRAM-SHA-256-PLUS |
//! | `protocol` | the wire format: startup packets, framing, messages pgcell builds, SQLSTATEs |
//! | `tenant` | the tenant model (configuration, backend TLS, secrets, counters) and `tenant::ClientInfo` |
//! | `route` | tenant resolution (SNI, `options`, user suffix) and policy, before any password |
//! | `backend` | connecting to a tenant's backend |
//! | `auth` | authentication primitives: SCRAM, MD5, secrets, randomness |
//! | `auth_query` | a user's SCRAM secret from the tenant's backend, cached |
//! | `sql` | SQL text read once: the lexer, statement splitting, what a statement may do to a session |
//! | `session` | one connection end to end. Names: *client auth* (`session::client_auth`) is pgcell checking a client's password; *auth relay* (`session::auth_relay`) is the backend checking it through pgcell (passthrough); *backend login* (`backend::server`) is pgcell logging in to a backend for a pool |
//! | `clients` | the clients connected now, and what each is doing |
//! | `pool` | backend pools per (tenant, database, user); pause and resume |
//! | `session::console` | the admin console: database `pgcell`, `SHOW POOLS` … (a session of its own) |
//! | `cancel` | cancel keys pgcell issues (`cancel::IssuedKey`), their backend targets, forwarding to peer replicas |
//! | `health` | the TCP health port the NLB checks |
//! | `admin` | HTTP `/metrics`, `/livez`, `/readyz` |
//! | `metrics` | every metric name and help text |
//! | `lifecycle` | Starting → Ready → Draining → Stopping → Stopped |
//! | `register` | this replica's NLB target (`register::Registration`): RegisterTargets when ready, DeregisterTargets first in a drain (`register/aws.rs`) |
//! | `discovery` | tenants (`PgcellTenant`), their backends and the peers from Kubernetes (`discovery/kube.rs`) |
//! | `state` | what connections share (`state::Shared`): settings, routes, pools, cancel keys; reload |
//! | `server` | bind, serve, shut down |
//! | `config` | TOML → typed `config::Config`, every problem reported at once |
//! | `local_pg` | throwaway local PostgreSQL clusters for the demo and tests |
//! | `demo` | `pgcell demo` |

// Input from clients and the network never panics the process: no unwrap,
// expect or panic outside tests (each remaining invariant is spelled out).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub(crate) mod admin;
mod auth;
pub(crate) mod auth_query;
mod backend;
mod cancel;
pub(crate) mod channel_binding;
pub(crate) mod clients;
pub mod config;
mod demo;
mod discovery;
pub(crate) mod handshake;
pub(crate) mod health;
mod lifecycle;
mod listener;
mod local_pg;
mod metrics;
pub(crate) mod pool;
mod protocol;
mod proxy_protocol;
mod register;
pub(crate) mod replication;
pub(crate) mod route;
mod server;
mod session;
mod sql;
pub(crate) mod state;
pub(crate) mod stream;
pub(crate) mod tenant;
mod tls;

// The public surface, in one place: what the binary (`main.rs`), the
// integration tests, the benchmarks and the fuzz targets use. Every module
// but `config` (whose types are the configuration's shape) is private;
// what they need is re-exported here, and everything else is `pub(crate)`
// (`unreachable_pub` reports a `pub` item nothing re-exports).
pub use auth::scram::{ScramClient, ScramServer};
pub use auth::secret::ScramSecret;
pub use backend::server::parameter_status;
pub use backend::statements::BackendStatements;
pub use config::cancel::instance_id_of;
pub use config::{Config, DEFAULT_MAX_PREPARED_STATEMENTS};
pub use demo::run as run_demo;
#[cfg(feature = "kube")]
pub use discovery::crd;
#[cfg(feature = "kube")]
pub use discovery::kube::DEBOUNCE as DISCOVERY_DEBOUNCE;
pub use lifecycle::State as LifecycleState;
pub use listener::MAX_REFUSALS_IN_FLIGHT;
pub use local_pg::{free_port, Cluster};
pub use metrics::{render as render_metrics, BUILD_INFO, GIT_REVISION};
pub use protocol::framing::{split_message, FrameTracker, Message, HEADER_LEN};
pub use protocol::messages::{error_code, error_message, sasl_without_plus};
pub use protocol::startup::{
    self, body_len, parse_body, FrontendStartup, StartupMessage, MAX_STARTUP_PACKET_LEN,
    PROTOCOL_MINOR,
};
pub use proxy_protocol::build as proxy_header;
pub use proxy_protocol::{parse_v1, parse_v2, ProxyHeader, MAX_VPCE_ID_LEN};
pub use server::{Server, ServerHandle};
pub use session::engine::checkout::{CheckinPolicy, Checkout};
pub use session::prepared::ClientStatements;
pub use sql::lexer::{self, Dialect};
pub use sql::verdict::{custom_setting_names, judge, StateKind, Verdict};
pub use tls::{backend_client_config, server_config};
