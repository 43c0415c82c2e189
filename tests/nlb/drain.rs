//! SIGTERM: DeregisterTargets comes first, while the data port still
//! accepts and serves new clients (the propagation window); then pgcell
//! waits for the target to leave, closes its ports and exits 0.

use std::time::{Duration, Instant};

use tokio_postgres::config::SslMode;
use tokio_postgres::NoTls;

use crate::common::*;
use crate::support::moto::*;

const LOCALHOST: &str = "127.0.0.1";

/// A client of tenant `t1` through pgcell's data port.
fn client_config(data: u16) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    c.host(LOCALHOST)
        .port(data)
        .user("app")
        .password(APP_PASSWORD)
        .dbname("app")
        .options("tenant=t1")
        .ssl_mode(SslMode::Disable)
        .connect_timeout(Duration::from_secs(5));
    c
}

/// Connects and runs `select 1`.
async fn query_through(data: u16) -> Result<i32, String> {
    let (client, conn) = client_config(data)
        .connect(NoTls)
        .await
        .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let row = client
        .query_one("select 1", &[])
        .await
        .map_err(|e| e.to_string())?;
    drop(client);
    let _ = conn.await;
    Ok(row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregisters_before_the_data_port_closes() {
    let cluster = cluster("nlb-drain");
    let moto = Moto::start().await;
    let group = moto.target_group("drain").await;
    let elb = moto.elb();
    let (data, admin) = (free_port(), free_port());
    let aws = Aws {
        endpoint_url: &moto.url,
        target_group_arn: &group,
        check_interval: "1s",
        target_ip: Some(LOCALHOST),
    };
    let shutdown = "propagation = \"3s\"\nderegistration_timeout = \"10s\"\ngrace = \"2s\"";
    let rest = format!(
        "[routing]\nsources = [\"options\"]\n\n[[tenants]]\nid = \"t1\"\nbackends = [\"{}\"]\n",
        cluster.addr()
    );
    let mut pgcell = Pgcell::spawn(
        data,
        admin,
        &Pgcell::config(data, admin, &aws, shutdown, &rest),
    );
    pgcell.wait_ready().await;
    eventually(Duration::from_secs(5), "the target is healthy", || async {
        target_state(&elb, &group, LOCALHOST, data).await.as_deref() == Some("healthy")
    })
    .await;
    assert_eq!(query_through(data).await, Ok(1));

    let term = Instant::now();
    pgcell.sigterm();
    eventually(
        Duration::from_secs(5),
        "the target leaves the group first",
        || async { target_state(&elb, &group, LOCALHOST, data).await.is_none() },
    )
    .await;
    let gone = term.elapsed();
    // The target is gone, and the data port still takes new clients.
    assert_eq!(
        query_through(data).await,
        Ok(1),
        "a new client {:?} after SIGTERM, target gone after {gone:?}",
        term.elapsed()
    );
    let m = pgcell.metrics().await;
    assert_eq!(api_calls(&m, "DeregisterTargets", "ok"), 1.0, "{m}");
    assert_eq!(
        metric_or_zero(&m, "pgcell_target_reregistrations_total", &[]),
        0.0,
        "nothing re-registers a draining target"
    );
    let (_, readyz) = pgcell.readyz().await.unwrap_or_default();
    assert!(
        readyz.contains("target deregister"),
        "/readyz during the drain: {readyz}"
    );

    let status = pgcell.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status}\n{}", pgcell.logs());
    assert!(
        term.elapsed() >= Duration::from_secs(3),
        "the data port stayed open for the propagation window"
    );
    assert!(tokio::net::TcpStream::connect((LOCALHOST, data))
        .await
        .is_err());
    // Still not registered again after the keeper stopped.
    assert!(target_state(&elb, &group, LOCALHOST, data).await.is_none());
    let logs = pgcell.logs();
    let dereg = logs.find("deregistering from the target group");
    let left = logs.find("the target left its target group");
    assert!(
        dereg.is_some() && left.is_some() && dereg < left,
        "deregistration logged before the wait ended:\n{logs}"
    );
}
