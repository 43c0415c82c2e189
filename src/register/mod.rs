//! Keeping this replica's own NLB target registration right.
//!
//! [`Registration`] is what the server drives: `start` when ready (register,
//! then keep the registration with a DescribeTargetHealth loop),
//! `deregister` first thing in a drain, `wait_gone` until the target has
//! left the group. With `[aws] register = false` (the default) or without
//! the `aws` feature every step does nothing.
//!
//! | file | job |
//! |---|---|
//! | `aws.rs` | the ELBv2 client, the keeper loop, DeregisterTargets, waiting |
//! | `state.rs` | [`TargetState`] and how a DescribeTargetHealth entry reads |
//! | `backoff.rs` | capped exponential backoff with jitter |
//! | `error.rs` | [`RegisterError`]: why self-registration could not be set up |

use std::net::IpAddr;
use std::time::Duration;

use crate::config::AwsConfig;

#[cfg(feature = "aws")]
pub(crate) mod aws;
#[cfg(any(feature = "aws", test))]
pub(crate) mod backoff;
mod error;
pub(crate) mod state;

pub(crate) use error::RegisterError;

/// This replica's registration, or nothing when self-registration is off.
#[derive(Default)]
pub(crate) struct Registration {
    #[cfg(feature = "aws")]
    keeper: Option<std::sync::Arc<aws::Keeper>>,
}

impl Registration {
    /// Sets up the ELBv2 client for `config`; registers nothing yet.
    ///
    /// The target is `aws.target_ip` (else `POD_IP`) on `aws.target_port`
    /// (else `data_port`). Credentials come from the SDK's default chain
    /// (environment, web identity token for IRSA, container credentials
    /// for EKS Pod Identity, instance profile).
    pub(crate) async fn new(
        config: &AwsConfig,
        data_port: u16,
    ) -> Result<Registration, RegisterError> {
        if !config.register {
            return Ok(Registration::default());
        }
        let ip = target_ip(config.target_ip, std::env::var("POD_IP").ok())?;
        let port = config.target_port.unwrap_or(data_port);
        #[cfg(feature = "aws")]
        {
            let keeper = aws::Keeper::new(config, ip, port).await?;
            Ok(Registration {
                keeper: Some(std::sync::Arc::new(keeper)),
            })
        }
        #[cfg(not(feature = "aws"))]
        {
            // Config::load rejects `register = true` without the feature.
            let _ = (ip, port);
            Ok(Registration::default())
        }
    }

    /// Registers the target and keeps it registered, in the background.
    /// Must be called inside the tokio runtime; a second call does nothing.
    pub(crate) fn start(&self) {
        #[cfg(feature = "aws")]
        if let Some(keeper) = &self.keeper {
            keeper.start();
        }
    }

    /// Stops keeping the registration and deregisters the target;
    /// returns once DeregisterTargets succeeded or was given up on (at most
    /// about 40 s: retries within 30 s, each attempt within 10 s).
    pub(crate) async fn deregister(&self) {
        #[cfg(feature = "aws")]
        if let Some(keeper) = &self.keeper {
            keeper.deregister().await;
        }
    }

    /// Waits until DescribeTargetHealth no longer lists the target (or it
    /// is `unused`), at most `timeout`. Returns at once when
    /// self-registration is off.
    pub(crate) async fn wait_gone(&self, timeout: Duration) {
        #[cfg(feature = "aws")]
        if let Some(keeper) = &self.keeper {
            keeper.wait_gone(timeout).await;
        }
        let _ = timeout;
    }

    /// Whether self-registration is on.
    pub(crate) fn enabled(&self) -> bool {
        #[cfg(feature = "aws")]
        {
            self.keeper.is_some()
        }
        #[cfg(not(feature = "aws"))]
        {
            false
        }
    }

    /// The target's state, for `/readyz` (`disabled` when off).
    pub(crate) fn state(&self) -> &'static str {
        #[cfg(feature = "aws")]
        if let Some(keeper) = &self.keeper {
            return keeper.state().name();
        }
        "disabled"
    }
}

/// The address to register: the configured one, else `POD_IP`.
fn target_ip(configured: Option<IpAddr>, pod_ip: Option<String>) -> Result<IpAddr, RegisterError> {
    if let Some(ip) = configured {
        return Ok(ip);
    }
    let pod_ip = pod_ip
        .filter(|s| !s.trim().is_empty())
        .ok_or(RegisterError::NoTargetIp)?;
    pod_ip
        .trim()
        .parse()
        .map_err(|_| RegisterError::BadPodIp(pod_ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_ip_sources() {
        let configured: IpAddr = "10.0.0.7".parse().unwrap();
        assert_eq!(
            target_ip(Some(configured), Some("10.9.9.9".into())).unwrap(),
            configured
        );
        assert_eq!(
            target_ip(None, Some("10.1.2.3".into())).unwrap(),
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
        assert!(matches!(
            target_ip(None, None),
            Err(RegisterError::NoTargetIp)
        ));
        assert!(matches!(
            target_ip(None, Some(" ".into())),
            Err(RegisterError::NoTargetIp)
        ));
        assert!(matches!(
            target_ip(None, Some("pod".into())),
            Err(RegisterError::BadPodIp(_))
        ));
    }

    #[tokio::test]
    async fn disabled_does_nothing() {
        let r = Registration::new(&AwsConfig::default(), 6432)
            .await
            .unwrap();
        assert!(!r.enabled());
        assert_eq!(r.state(), "disabled");
        r.start();
        r.deregister().await;
        r.wait_gone(Duration::from_secs(3600)).await;
    }
}
