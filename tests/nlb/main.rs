//! NLB self-registration against `moto_server` (real ELBv2 API, real
//! aws-sdk-elasticloadbalancingv2 client in pgcell).
//!
//! Each test starts its own moto_server on a free loopback port (installed
//! into the test virtualenv when missing, see `tests/support/moto.rs`), creates a VPC and
//! an `ip`/TCP target group in it, and runs the `pgcell` binary as a child
//! process with test credentials in the child's environment only.

// A test binary has no public API: its support modules' `pub` is for
// the test modules beside them.
#![allow(unreachable_pub, missing_docs)]

#[path = "../support/mod.rs"]
mod support;

mod common;
mod fault;

mod drain;
mod registration;
