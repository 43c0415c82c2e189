//! `[aws]`: NLB self-registration through the ELBv2 API.

use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;

use super::problems::Problems;

/// `[aws]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsConfig {
    /// Register this replica as a target when ready, deregister on drain.
    pub register: bool,
    /// The target group.
    pub target_group_arn: String,
    /// The region; the SDK's default chain when unset.
    pub region: Option<String>,
    /// An ELBv2 endpoint other than AWS's (tests: moto_server).
    pub endpoint_url: Option<String>,
    /// The address registered; `POD_IP` when unset.
    pub target_ip: Option<IpAddr>,
    /// The port registered; the data port when unset.
    pub target_port: Option<u16>,
    /// `all` for an IP outside the target group's VPC, else unset.
    pub availability_zone: Option<String>,
    /// How often DescribeTargetHealth checks the registration.
    pub check_interval: Duration,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawAws {
    #[serde(default)]
    register: bool,
    target_group_arn: Option<String>,
    region: Option<String>,
    endpoint_url: Option<String>,
    target_ip: Option<String>,
    target_port: Option<u16>,
    availability_zone: Option<String>,
    check_interval: Option<String>,
}

pub(super) fn aws_from_raw(raw: RawAws, p: &mut Problems) -> AwsConfig {
    if raw.register && !cfg!(feature = "aws") {
        p.push(
            "aws.register",
            "this pgcell was built without the \"aws\" feature",
        );
    }
    let target_group_arn = raw.target_group_arn.unwrap_or_default();
    if raw.register && !target_group_arn.starts_with("arn:") {
        p.push(
            "aws.target_group_arn",
            "required when aws.register = true: the target group's ARN (arn:aws:elasticloadbalancing:…)",
        );
    }
    let target_ip = raw.target_ip.and_then(|ip| match ip.parse() {
        Ok(ip) => Some(ip),
        Err(_) => {
            p.push("aws.target_ip", format!("{ip:?} is not an IP address"));
            None
        }
    });
    if raw.target_port == Some(0) {
        p.push("aws.target_port", "must be a port number (1-65535)");
    }
    let check_interval = p.duration(
        "aws.check_interval",
        raw.check_interval.as_deref().unwrap_or("30s"),
    );
    AwsConfig {
        register: raw.register,
        target_group_arn,
        region: raw.region,
        endpoint_url: raw.endpoint_url,
        target_ip,
        target_port: raw.target_port,
        availability_zone: raw.availability_zone,
        check_interval,
    }
}
