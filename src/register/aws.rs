//! ELBv2 self-registration through `aws-sdk-elasticloadbalancingv2`.
//!
//! One [`Keeper`] per process. Its background task calls RegisterTargets
//! until it succeeds, then DescribeTargetHealth every `check_interval`,
//! and registers again when the target went missing (someone else's
//! DeregisterTargets). A drain stops that task first, so nothing
//! re-registers a target that is leaving, then calls DeregisterTargets and
//! polls until the target is gone.
//!
//! The SDK's own retries are off: pgcell retries throttling, 5xx, timeouts
//! and network errors itself ([`super::backoff`]) so that every retry is
//! counted in `pgcell_target_api_calls_total{outcome="retried"}` and a
//! drain can bound its DeregisterTargets retries in total time. Every
//! attempt is bounded by the SDK's attempt timeout, so no call hangs.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_elasticloadbalancingv2::config::http::HttpResponse;
use aws_sdk_elasticloadbalancingv2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_elasticloadbalancingv2::types::TargetDescription;
use aws_sdk_elasticloadbalancingv2::Client;
use aws_smithy_http_client::tls;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::backoff::Backoff;
use super::error::RegisterError;
use super::state::{Seen, StateCell, TargetState};
use crate::config::AwsConfig;
use crate::metrics::{TARGET_API_CALLS, TARGET_REREGISTRATIONS};

/// TCP connect to the ELBv2 endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// One API call attempt, response included.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// DeregisterTargets retries stop after this; the drain goes on without.
const DEREGISTER_BUDGET: Duration = Duration::from_secs(30);
/// DescribeTargetHealth pace while waiting for the target to leave.
const WAIT_POLL: Duration = Duration::from_secs(1);

/// ELBv2 error codes worth another attempt: throttling (the SDK's standard
/// retry classifier's list) and transient server-side errors.
const RETRYABLE_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "RequestThrottled",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
];

/// DeregisterTargets' answer for a target that is not registered.
const INVALID_TARGET: &str = "InvalidTarget";

const REGISTER: &str = "RegisterTargets";
const DEREGISTER: &str = "DeregisterTargets";
const DESCRIBE: &str = "DescribeTargetHealth";

/// The ELBv2 client and the registration it keeps.
pub(crate) struct Keeper {
    client: Client,
    group: String,
    target: TargetDescription,
    /// `ip:port`, for logs.
    label: String,
    check_interval: Duration,
    state: StateCell,
    /// True once a drain began: the keeper task ends at its next pause.
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
    /// The last failure logged at warn/error, so a persisting one is
    /// logged once: (operation, error code).
    last_error: Mutex<Option<(&'static str, Option<String>)>>,
}

impl Keeper {
    /// Builds the client (one HTTP/TLS stack: hyper 1 + rustls with ring)
    /// for the target `ip:port`.
    pub(crate) async fn new(
        config: &AwsConfig,
        ip: IpAddr,
        port: u16,
    ) -> Result<Keeper, RegisterError> {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .operation_attempt_timeout(ATTEMPT_TIMEOUT)
            .operation_timeout(ATTEMPT_TIMEOUT)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeouts);
        if let Some(region) = &config.region {
            loader = loader.region(Region::new(region.clone()));
        }
        let sdk = loader.load().await;
        if sdk.region().is_none() {
            return Err(RegisterError::NoRegion);
        }
        // The endpoint override applies to ELBv2 only, never to STS (which
        // the web identity credentials provider calls).
        let mut elb = aws_sdk_elasticloadbalancingv2::config::Builder::from(&sdk);
        if let Some(url) = &config.endpoint_url {
            elb = elb.endpoint_url(url);
        }
        let mut target = TargetDescription::builder()
            .id(ip.to_string())
            .port(i32::from(port));
        if let Some(az) = &config.availability_zone {
            target = target.availability_zone(az);
        }
        let label = match ip {
            IpAddr::V4(ip) => format!("{ip}:{port}"),
            IpAddr::V6(ip) => format!("[{ip}]:{port}"),
        };
        Ok(Keeper {
            client: Client::from_conf(elb.build()),
            group: config.target_group_arn.clone(),
            target: target.build(),
            label,
            check_interval: config.check_interval.max(Duration::from_millis(100)),
            state: StateCell::new(),
            stop: watch::channel(false).0,
            task: Mutex::new(None),
            last_error: Mutex::new(None),
        })
    }

    /// The current state.
    pub(crate) fn state(&self) -> TargetState {
        self.state.get()
    }

    /// Spawns the keeper task (once; never after a drain began).
    pub(crate) fn start(self: &Arc<Self>) {
        let mut task = lock(&self.task);
        if task.is_some() || *self.stop.borrow() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => *task = Some(runtime.spawn(self.clone().keep())),
            Err(_) => tracing::error!("self-registration started outside the async runtime"),
        }
    }

    /// Stops the keeper, then DeregisterTargets with retries for at most
    /// [`DEREGISTER_BUDGET`].
    pub(crate) async fn deregister(&self) {
        self.stop.send_replace(true);
        let task = lock(&self.task).take();
        if let Some(mut task) = task {
            // Let a RegisterTargets in flight finish, so it cannot land
            // after the DeregisterTargets below.
            let waited =
                tokio::time::timeout(ATTEMPT_TIMEOUT + Duration::from_secs(1), &mut task).await;
            if waited.is_err() {
                task.abort();
            }
        }
        self.state.set(TargetState::Deregistering);
        tracing::info!(target = %self.label, group = %self.group, "deregistering from the target group");
        let attempts = async {
            let mut backoff = Backoff::new();
            loop {
                let result = self
                    .client
                    .deregister_targets()
                    .target_group_arn(&self.group)
                    .targets(self.target.clone())
                    .send()
                    .await;
                match result {
                    Ok(_) => {
                        count(DEREGISTER, "ok");
                        self.recovered(DEREGISTER);
                        return true;
                    }
                    Err(e) if e.code() == Some(INVALID_TARGET) => {
                        count(DEREGISTER, "ok");
                        tracing::info!(target = %self.label, "the target was not registered");
                        self.state.set(TargetState::Deregistered);
                        return true;
                    }
                    Err(e) => {
                        let failure = Failure::of(&e);
                        self.complain(DEREGISTER, &failure);
                        if !failure.retryable {
                            count(DEREGISTER, "error");
                            return false;
                        }
                        count(DEREGISTER, "retried");
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                }
            }
        };
        match tokio::time::timeout(DEREGISTER_BUDGET, attempts).await {
            Ok(true) => {}
            Ok(false) => {
                self.state.set(TargetState::Error);
                tracing::error!(target = %self.label, "DeregisterTargets failed; draining without it");
            }
            Err(_) => {
                count(DEREGISTER, "error");
                self.state.set(TargetState::Error);
                tracing::error!(
                    target = %self.label,
                    budget_s = DEREGISTER_BUDGET.as_secs(),
                    "DeregisterTargets did not succeed in time; draining without it"
                );
            }
        }
    }

    /// Polls DescribeTargetHealth until the target is gone, at most
    /// `timeout`.
    pub(crate) async fn wait_gone(&self, timeout: Duration) {
        let poll = async {
            loop {
                match self.describe().await {
                    Some(seen) if seen.gone() => {
                        self.state.set(TargetState::Deregistered);
                        return;
                    }
                    Some(Seen::Present(state)) => self.state.set(state),
                    _ => {}
                }
                tokio::time::sleep(WAIT_POLL).await;
            }
        };
        match tokio::time::timeout(timeout, poll).await {
            Ok(()) => tracing::info!(target = %self.label, "the target left its target group"),
            Err(_) => tracing::warn!(
                target = %self.label,
                state = self.state().name(),
                timeout_s = timeout.as_secs_f64(),
                "the target is still in its target group; going on"
            ),
        }
    }

    /// The keeper task: register, then check every `check_interval` and
    /// register again when the target went missing. Ends when a drain
    /// begins.
    async fn keep(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let mut again = false;
        loop {
            if !self.register(&mut stop).await {
                return;
            }
            if again {
                metrics::counter!(TARGET_REREGISTRATIONS).increment(1);
                tracing::info!(target = %self.label, group = %self.group, "registered again");
            }
            loop {
                if pause(self.check_interval, &mut stop).await {
                    return;
                }
                match self.describe().await {
                    Some(Seen::Missing) => break,
                    Some(Seen::Present(state)) => self.state.set(state),
                    None => {}
                }
            }
            if *stop.borrow() {
                return;
            }
            tracing::warn!(
                target = %self.label,
                group = %self.group,
                "the target is missing from its target group; registering it again"
            );
            self.state.set(TargetState::Unregistered);
            again = true;
        }
    }

    /// RegisterTargets until it succeeds; false when a drain began first.
    /// Throttling and transient errors are retried with backoff; other
    /// errors (permissions, a wrong ARN) every `check_interval`.
    async fn register(&self, stop: &mut watch::Receiver<bool>) -> bool {
        self.state.set(TargetState::Registering);
        let mut backoff = Backoff::new();
        loop {
            if *stop.borrow() {
                return false;
            }
            let result = self
                .client
                .register_targets()
                .target_group_arn(&self.group)
                .targets(self.target.clone())
                .send()
                .await;
            let delay = match result {
                Ok(_) => {
                    count(REGISTER, "ok");
                    self.recovered(REGISTER);
                    tracing::info!(target = %self.label, group = %self.group, "registered in the target group");
                    // What ELBv2 reports for a new target until its first
                    // health checks pass; the next check tells the truth.
                    self.state.set(TargetState::Initial);
                    return true;
                }
                Err(e) => {
                    let failure = Failure::of(&e);
                    self.complain(REGISTER, &failure);
                    if failure.retryable {
                        count(REGISTER, "retried");
                        backoff.next_delay()
                    } else {
                        count(REGISTER, "error");
                        self.state.set(TargetState::Error);
                        backoff = Backoff::new();
                        self.check_interval
                    }
                }
            };
            if pause(delay, stop).await {
                return false;
            }
        }
    }

    /// One DescribeTargetHealth for this target; `None` when it failed
    /// (logged, counted; the state becomes `error` unless retrying may
    /// help).
    async fn describe(&self) -> Option<Seen> {
        let result = self
            .client
            .describe_target_health()
            .target_group_arn(&self.group)
            .targets(self.target.clone())
            .send()
            .await;
        match result {
            Ok(out) => {
                count(DESCRIBE, "ok");
                self.recovered(DESCRIBE);
                let ours = out.target_health_descriptions().iter().find(|d| {
                    d.target().is_some_and(|t| {
                        t.id() == self.target.id() && t.port() == self.target.port()
                    })
                });
                Some(Seen::of(ours.map(|d| {
                    let health = d.target_health();
                    (
                        health.and_then(|h| h.state()).map(|s| s.as_str()),
                        health.and_then(|h| h.reason()).map(|r| r.as_str()),
                    )
                })))
            }
            Err(e) => {
                let failure = Failure::of(&e);
                count(DESCRIBE, "error");
                self.complain(DESCRIBE, &failure);
                if !failure.retryable {
                    self.state.set(TargetState::Error);
                }
                None
            }
        }
    }

    /// Logs a failed call: at warn (retryable) or error the first time,
    /// at debug while the same failure repeats.
    fn complain(&self, operation: &'static str, failure: &Failure) {
        let key = (operation, failure.code.clone());
        let repeated = {
            let mut last = lock(&self.last_error);
            let repeated = last.as_ref() == Some(&key);
            *last = Some(key);
            repeated
        };
        let code = failure.code.as_deref().unwrap_or("-");
        if repeated {
            tracing::debug!(operation, code, error = %failure.detail, "ELBv2 call failed again");
        } else if failure.retryable {
            tracing::warn!(operation, code, error = %failure.detail, target = %self.label, "ELBv2 call failed; trying again");
        } else {
            tracing::error!(operation, code, error = %failure.detail, target = %self.label, group = %self.group, "ELBv2 call failed");
        }
    }

    /// Logs once that `operation` works again after a logged failure.
    fn recovered(&self, operation: &'static str) {
        let mut last = lock(&self.last_error);
        if last.as_ref().is_some_and(|(op, _)| *op == operation) {
            *last = None;
            drop(last);
            tracing::info!(operation, "ELBv2 call succeeded again");
        }
    }
}

/// A failed call, classified.
#[derive(Debug)]
struct Failure {
    retryable: bool,
    code: Option<String>,
    /// The SDK's error with its whole source chain (code and message).
    detail: String,
}

impl Failure {
    fn of<E>(e: &SdkError<E, HttpResponse>) -> Failure
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let code = e.code().map(str::to_owned);
        let status = e.raw_response().map(|r| r.status().as_u16());
        let retryable = match e {
            SdkError::TimeoutError(_)
            | SdkError::DispatchFailure(_)
            | SdkError::ResponseError(_) => true,
            SdkError::ServiceError(_) => retryable(code.as_deref(), status),
            _ => false,
        };
        Failure {
            retryable,
            code,
            detail: DisplayErrorContext(e).to_string(),
        }
    }
}

/// Whether a service error is worth another attempt: throttling, a
/// transient error code, 429 or any 5xx.
fn retryable(code: Option<&str>, status: Option<u16>) -> bool {
    code.is_some_and(|c| RETRYABLE_CODES.contains(&c))
        || status.is_some_and(|s| s == 429 || (500..600).contains(&s))
}

/// Sleeps `d`; true (at once) when a drain began.
async fn pause(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    let slept = tokio::select! {
        () = tokio::time::sleep(d) => true,
        _ = stop.wait_for(|s| *s) => false,
    };
    !slept || *stop.borrow()
}

fn count(operation: &'static str, outcome: &'static str) {
    metrics::counter!(TARGET_API_CALLS, "operation" => operation, "outcome" => outcome)
        .increment(1);
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values stay consistent whatever panicked while holding
    // them (a handle slot, a log key).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_classification() {
        assert!(retryable(Some("Throttling"), Some(400)));
        assert!(retryable(Some("RequestLimitExceeded"), Some(400)));
        assert!(retryable(None, Some(503)));
        assert!(retryable(None, Some(500)));
        assert!(retryable(None, Some(429)));
        assert!(!retryable(Some("AccessDenied"), Some(403)));
        assert!(!retryable(Some("TargetGroupNotFound"), Some(400)));
        assert!(!retryable(Some("ValidationError"), Some(400)));
        assert!(!retryable(None, None));
    }

    #[tokio::test]
    async fn pause_ends_at_drain() {
        let (tx, mut rx) = watch::channel(false);
        let started = std::time::Instant::now();
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            tx.send_replace(true);
            tx
        });
        assert!(pause(Duration::from_secs(30), &mut rx).await);
        assert!(started.elapsed() < Duration::from_secs(5));
        let tx = stopper.await.unwrap();
        assert!(pause(Duration::from_secs(30), &mut tx.subscribe()).await);
        let (_tx, mut rx) = watch::channel(false);
        assert!(!pause(Duration::from_millis(10), &mut rx).await);
    }
}
