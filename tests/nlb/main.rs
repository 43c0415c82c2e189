//! NLB self-registration against `moto_server` (real ELBv2 API, real
//! aws-sdk-elasticloadbalancingv2 client in pgcell).
//!
//! Each test starts its own moto_server on a free loopback port (installed
//! into the test virtualenv when missing, see `moto.rs`), creates a VPC and
//! an `ip`/TCP target group in it, and runs the `pgcell` binary as a child
//! process with test credentials in the child's environment only.

/// Evaluates `$cond` (which may `.await`) every 100 ms until it is true;
/// fails the test with `$what` after `$within`.
macro_rules! eventually {
    ($within:expr, $what:expr, $cond:expr) => {{
        let within: std::time::Duration = $within;
        let deadline = std::time::Instant::now() + within;
        loop {
            if $cond {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not within {within:?}: {}",
                $what
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }};
}

mod common;
mod fault;
mod moto;

mod drain;
mod registration;
