//! Keeping this replica's own NLB target registration right.
//!
//! [`Registration`] is what the server drives: `start` when ready (register,
//! then keep the registration with a DescribeTargetHealth loop),
//! `deregister` first thing in a drain, `wait_gone` until the target has
//! left the group. With `[aws] register = false` (the default) or without
//! the `aws` feature every step does nothing.

use std::time::Duration;

use crate::config::AwsConfig;

#[cfg(feature = "aws")]
pub mod aws;

/// Why self-registration could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// No address to register.
    #[error("aws.target_ip is not set and POD_IP is not in the environment")]
    NoTargetIp,
}

/// This replica's registration, or nothing when self-registration is off.
#[derive(Default)]
pub struct Registration {
    // Filled in by the aws module.
}

impl Registration {
    /// Sets up the ELBv2 client for `config`; registers nothing yet.
    pub async fn new(config: &AwsConfig, data_port: u16) -> Result<Registration, RegisterError> {
        let _ = (config, data_port);
        Ok(Registration::default())
    }

    /// Registers the target and keeps it registered, in the background.
    pub fn start(&self) {}

    /// Stops keeping the registration and deregisters the target;
    /// returns once DeregisterTargets succeeded or was given up on.
    pub async fn deregister(&self) {}

    /// Waits until DescribeTargetHealth no longer lists the target (or it
    /// is `unused`), at most `timeout`. Returns at once when
    /// self-registration is off.
    pub async fn wait_gone(&self, timeout: Duration) {
        let _ = timeout;
    }

    /// Whether self-registration is on.
    pub fn enabled(&self) -> bool {
        false
    }

    /// The target's state, for `/readyz` (`disabled` when off).
    pub fn state(&self) -> &'static str {
        "disabled"
    }
}
