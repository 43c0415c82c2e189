//! Why self-registration could not be set up ([`RegisterError`]).

/// Why self-registration could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// No address to register.
    #[error("aws.target_ip is not set and POD_IP is not in the environment")]
    NoTargetIp,
    /// `POD_IP` is set to something that is not an address.
    #[error("POD_IP={0:?} is not an IP address (set aws.target_ip instead)")]
    BadPodIp(String),
    /// Neither the config nor the SDK's default chain names a region.
    #[error("aws.region is not set and the AWS SDK found no region (AWS_REGION, profile, instance metadata)")]
    NoRegion,
}
