//! Hardening: faults injected into real PostgreSQL clusters, limits under
//! abuse, and tenant isolation, each against the `pgcell` binary run as a
//! child process (so its memory, file descriptors and log lines can be
//! measured apart from the test's own). `docs/reliability.md` lists every
//! case with what the client sees and the bound measured.
//!
//! The soak (`soak::soak`) is ignored by default and run on demand with
//! `scripts/soak.sh`.

// A test binary has no public API: its support modules' `pub` is for
// the test modules beside them.
#![allow(unreachable_pub, missing_docs)]

#[path = "../support/mod.rs"]
mod support;

mod common;

mod faults;
mod half_open;
mod isolation;
mod limits;
mod soak;
