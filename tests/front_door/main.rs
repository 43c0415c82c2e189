//! The front door against real PostgreSQL clusters and real clients.
//!
//! Every test starts its own clusters and its own pgcell on 127.0.0.1 with
//! kernel-chosen ports and fresh certificates.

// A test binary has no public API: its support modules' `pub` is for
// the test modules beside them.
#![allow(unreachable_pub, missing_docs)]

#[path = "../support/mod.rs"]
mod support;
/// The shared test support, by the name the tests here import it under.
use support as harness;

mod auth_query;
mod bad_input;
mod cancel_peers;
mod console;
mod differential;
mod drain;
mod drivers;
mod isolation;
mod negotiation;
mod operations;
mod pooling;
mod pre_startup;
mod proxy_header;
mod replicas;
mod replication;
mod routing;
