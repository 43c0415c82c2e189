//! What every integration test binary shares: one way to start a
//! PostgreSQL cluster and an in-process pgcell, to read a metric, to name a
//! SQLSTATE, to wait for a condition, and to install what Python tools a
//! test needs.
//!
//! Each test crate includes it with
//! `#[path = "../support/mod.rs"] mod support;` (`tests/counters.rs`:
//! `#[path = "support/mod.rs"]`) and uses the parts it needs, so it allows
//! dead code.
//!
//! - [`pg`]: throwaway clusters with the `app` role, clients (tokio-postgres,
//!   psql, pgbench), `code_of`, cancelling until a query ends.
//! - [`proxy`]: an in-process pgcell on kernel-chosen ports with fresh
//!   certificates, and the config text it starts from.
//! - [`wire`]: protocol bytes written and read by hand.
//! - [`http`]: a minimal HTTP/1.1 client (admin port, moto).
//! - [`metrics`]: one series out of Prometheus text.
//! - [`poll`]: `eventually`, polling with a bounded deadline instead of
//!   sleeping before an assertion.
//! - [`process`]: stopping a child process by its pid.
//! - [`python`]: the test virtualenv, with the packages a test needs.
//! - `moto` (feature `aws`): `moto_server` installed, started and stopped,
//!   and an ELBv2 client for it.

#![allow(dead_code, unused_imports)]

pub mod http;
pub mod metrics;
#[cfg(feature = "aws")]
pub mod moto;
pub mod pg;
pub mod poll;
pub mod process;
pub mod proxy;
pub mod python;
pub mod wire;

pub use http::{http_get, http_request};
pub use metrics::{metric, metric_or_zero};
pub use pg::*;
pub use poll::{eventually, poll};
pub use process::{assert_success, pgcell_bin, spawn_pgcell};
pub use proxy::*;
pub use wire::*;
