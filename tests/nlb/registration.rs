//! Register on ready, re-register after someone else's DeregisterTargets,
//! retries of throttling and 5xx answers, and the missing-address error.

use std::time::Duration;

use crate::common::*;
use crate::fault::{Fault, FaultProxy};
use crate::support::moto::*;

const LOCALHOST: &str = "127.0.0.1";

/// The target (POD_IP, data port) is in the group and healthy as soon as
/// pgcell is ready, and `/readyz` and the gauge say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_when_ready() {
    let moto = Moto::start().await;
    let group = moto.target_group("ready").await;
    let elb = moto.elb();
    assert!(targets(&elb, &group).await.is_empty());
    let (data, admin) = (free_port(), free_port());
    let aws = Aws {
        endpoint_url: &moto.url,
        target_group_arn: &group,
        check_interval: "1s",
        target_ip: None,
    };
    let config = Pgcell::config(data, admin, &aws, "", "");
    let mut pgcell = Pgcell::spawn_with_env(data, admin, &config, &[("POD_IP", LOCALHOST)]);
    pgcell.wait_ready().await;
    eventually(
        Duration::from_secs(5),
        "the target is healthy in the target group",
        || async {
            target_state(&elb, &group, LOCALHOST, data).await.as_deref() == Some("healthy")
        },
    )
    .await;
    let all = targets(&elb, &group).await;
    assert_eq!(all.len(), 1, "{all:?}");
    eventually(
        Duration::from_secs(10),
        "/readyz shows the target healthy",
        || async {
            pgcell
                .readyz()
                .await
                .is_some_and(|(status, body)| status == 200 && body.contains("target healthy"))
        },
    )
    .await;
    let m = pgcell.metrics().await;
    assert_eq!(
        metric_or_zero(&m, "pgcell_target_state", &[("state", "healthy")]),
        1.0
    );
    assert_eq!(
        metric_or_zero(&m, "pgcell_target_state", &[("state", "registering")]),
        0.0
    );
    assert_eq!(api_calls(&m, "RegisterTargets", "ok"), 1.0, "{m}");
    assert_eq!(api_calls(&m, "RegisterTargets", "retried"), 0.0);
    assert!(api_calls(&m, "DescribeTargetHealth", "ok") >= 1.0);
    assert_eq!(
        metric_or_zero(&m, "pgcell_target_reregistrations_total", &[]),
        0.0
    );
}

/// Someone else deregisters the target: within a check interval or two
/// pgcell registers it again and counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reregisters_after_external_deregistration() {
    let moto = Moto::start().await;
    let group = moto.target_group("reregister").await;
    let elb = moto.elb();
    let (data, admin) = (free_port(), free_port());
    let aws = Aws {
        endpoint_url: &moto.url,
        target_group_arn: &group,
        check_interval: "1s",
        target_ip: Some(LOCALHOST),
    };
    let mut pgcell = Pgcell::spawn(data, admin, &Pgcell::config(data, admin, &aws, "", ""));
    pgcell.wait_ready().await;
    eventually(Duration::from_secs(5), "the target is healthy", || async {
        target_state(&elb, &group, LOCALHOST, data).await.as_deref() == Some("healthy")
    })
    .await;
    deregister(&elb, &group, LOCALHOST, data).await;
    assert_eq!(target_state(&elb, &group, LOCALHOST, data).await, None);
    eventually(
        Duration::from_secs(10),
        "the target is registered again",
        || async {
            target_state(&elb, &group, LOCALHOST, data).await.as_deref() == Some("healthy")
        },
    )
    .await;
    eventually(
        Duration::from_secs(5),
        "the re-registration is counted",
        || async {
            metric_or_zero(
                &pgcell.metrics().await,
                "pgcell_target_reregistrations_total",
                &[],
            ) == 1.0
        },
    )
    .await;
    let m = pgcell.metrics().await;
    assert_eq!(api_calls(&m, "RegisterTargets", "ok"), 2.0, "{m}");
    assert!(pgcell.logs().contains("registering it again"));
}

/// Throttling (HTTP 400 `Throttling`) and 503 answers are retried with
/// backoff: RegisterTargets succeeds after them and every retry is counted;
/// a failed DescribeTargetHealth does not make pgcell re-register; on
/// SIGTERM DeregisterTargets is retried the same way and pgcell exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_throttling_and_5xx() {
    let moto = Moto::start().await;
    let group = moto.target_group("retries").await;
    let elb = moto.elb();
    let proxy = FaultProxy::start(moto.port).await;
    proxy.inject("RegisterTargets", Fault::Throttle);
    proxy.inject("RegisterTargets", Fault::Unavailable);
    proxy.inject("RegisterTargets", Fault::Throttle);
    proxy.inject("DescribeTargetHealth", Fault::Throttle);
    let (data, admin) = (free_port(), free_port());
    let url = proxy.url();
    let aws = Aws {
        endpoint_url: &url,
        target_group_arn: &group,
        check_interval: "500ms",
        target_ip: Some(LOCALHOST),
    };
    let shutdown = "propagation = \"3s\"\nderegistration_timeout = \"10s\"\ngrace = \"2s\"";
    let mut pgcell = Pgcell::spawn(
        data,
        admin,
        &Pgcell::config(data, admin, &aws, shutdown, ""),
    );
    pgcell.wait_ready().await;
    eventually(
        Duration::from_secs(10),
        "the target is healthy after the retries",
        || async {
            target_state(&elb, &group, LOCALHOST, data).await.as_deref() == Some("healthy")
        },
    )
    .await;
    assert_eq!(
        proxy.seen("RegisterTargets"),
        ["Throttle", "Unavailable", "Throttle", "forwarded"]
    );
    // The throttled DescribeTargetHealth, then good ones.
    eventually(
        Duration::from_secs(10),
        "DescribeTargetHealth works again after its throttled call",
        || async { api_calls(&pgcell.metrics().await, "DescribeTargetHealth", "ok") >= 2.0 },
    )
    .await;
    let m = pgcell.metrics().await;
    assert_eq!(api_calls(&m, "RegisterTargets", "retried"), 3.0, "{m}");
    assert_eq!(api_calls(&m, "RegisterTargets", "ok"), 1.0);
    assert_eq!(api_calls(&m, "RegisterTargets", "error"), 0.0);
    assert_eq!(api_calls(&m, "DescribeTargetHealth", "error"), 1.0);
    assert_eq!(
        metric_or_zero(&m, "pgcell_target_reregistrations_total", &[]),
        0.0
    );
    assert_eq!(
        metric_or_zero(&m, "pgcell_target_state", &[("state", "healthy")]),
        1.0
    );
    let logs = pgcell.logs();
    assert!(
        logs.contains("RegisterTargets") && logs.contains("Throttling"),
        "the first failure is logged with the operation and the error code:\n{logs}"
    );

    proxy.inject("DeregisterTargets", Fault::Unavailable);
    proxy.inject("DeregisterTargets", Fault::Throttle);
    pgcell.sigterm();
    eventually(
        Duration::from_secs(10),
        "the target leaves the group after the retried DeregisterTargets",
        || async { target_state(&elb, &group, LOCALHOST, data).await.is_none() },
    )
    .await;
    eventually(
        Duration::from_secs(5),
        "the DeregisterTargets retries are counted",
        || async { api_calls(&pgcell.metrics().await, "DeregisterTargets", "ok") == 1.0 },
    )
    .await;
    let m = pgcell.metrics().await;
    assert_eq!(api_calls(&m, "DeregisterTargets", "retried"), 2.0, "{m}");
    assert_eq!(proxy.pending(), 0);
    let status = pgcell.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status}\n{}", pgcell.logs());
}

/// Self-registration on, no `aws.target_ip` and no `POD_IP`: pgcell does
/// not start, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_to_start_without_an_address() {
    let (data, admin) = (free_port(), free_port());
    let aws = Aws {
        endpoint_url: "http://127.0.0.1:9",
        target_group_arn:
            "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/x/0123456789abcdef",
        check_interval: "1s",
        target_ip: None,
    };
    let mut pgcell = Pgcell::spawn(data, admin, &Pgcell::config(data, admin, &aws, "", ""));
    let status = pgcell.wait_exit(Duration::from_secs(20)).await;
    assert!(!status.success());
    let logs = pgcell.logs();
    assert!(logs.contains("POD_IP"), "{logs}");
}
