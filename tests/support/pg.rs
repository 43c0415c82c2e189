//! Throwaway PostgreSQL clusters and the clients that talk to them (or to
//! pgcell in front of them): tokio-postgres, psql, pgbench.

use std::future::Future;
use std::process::Command;
use std::time::Duration;

use pgcell::Cluster;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, NoTls};

use super::process::assert_success;

/// Password of the `app` role in every test cluster. Unusual enough that
/// finding it in a log or on `/metrics` means it leaked.
pub const APP_PASSWORD: &str = "app-secret-Hx7q";

/// A cluster with role `app` (password [`APP_PASSWORD`]) owning database
/// `app`; its `cluster_name` is `name`.
pub fn cluster(name: &str) -> Cluster {
    cluster_with(name, &[], &[])
}

/// [`cluster`] with extra `postgresql.conf` lines and data-directory files.
pub fn cluster_with(name: &str, conf: &[&str], files: &[(&str, &[u8])]) -> Cluster {
    let c = Cluster::start_with_files(name, conf, files).expect("start PostgreSQL");
    c.psql(
        "postgres",
        &format!("CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}'"),
    )
    .expect("create role");
    c.psql("postgres", "CREATE DATABASE app OWNER app")
        .expect("create db");
    c
}

/// The SQLSTATE of a tokio-postgres error, or its text.
pub fn code_of(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_owned())
        .unwrap_or_else(|| format!("no code: {e}"))
}

/// Plain connect; the connection task's result comes back through the
/// returned handle.
pub async fn connect(
    config: &tokio_postgres::Config,
) -> Result<(Client, JoinHandle<Result<(), tokio_postgres::Error>>), tokio_postgres::Error> {
    let (client, conn) = config.connect(NoTls).await?;
    Ok((client, tokio::spawn(conn)))
}

/// Runs tokio-postgres's startup over an already-open stream (TLS done by
/// the caller, PROXY header written by the caller).
pub async fn connect_over<S>(
    config: &tokio_postgres::Config,
    stream: S,
) -> Result<Client, tokio_postgres::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut config = config.clone();
    config.ssl_mode(SslMode::Disable);
    let (client, conn) = config.connect_raw(stream, NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// The one text value `sql` returns on `client`.
pub async fn query_text(client: &Client, sql: &str) -> String {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// `current_setting('cluster_name')` on `client`: which cluster answered.
pub async fn cluster_name(client: &Client) -> String {
    query_text(client, "select current_setting('cluster_name')").await
}

/// `current_user` on `client`: the role the backend logged in.
pub async fn current_user(client: &Client) -> String {
    query_text(client, "select current_user::text").await
}

/// Sends cancels through `send` until `running` ends (a cancel that arrives
/// before the query started is ignored by PostgreSQL, so one is not enough
/// on a loaded machine) and returns how it ended.
pub async fn cancel_until_done<T, F, Fut>(running: &mut JoinHandle<T>, mut send: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    for _ in 0..40 {
        send().await;
        if let Ok(done) = tokio::time::timeout(Duration::from_millis(500), &mut *running).await {
            return done.expect("query task");
        }
    }
    panic!("the query was not cancelled within 20 s");
}

/// How many sessions of `cluster` are running `query` right now
/// (`pg_stat_activity`, state `active`); 0 when psql fails.
pub fn sessions_running(cluster: &Cluster, query: &str) -> usize {
    let sql = format!(
        "select count(*) from pg_stat_activity where query = '{}' and state = 'active'",
        query.replace('\'', "''")
    );
    cluster
        .psql("postgres", &sql)
        .ok()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Runs psql with `conninfo` and `sql` as [`APP_PASSWORD`]; Ok(stdout) or
/// Err(stderr).
pub fn psql(conninfo: &str, sql: &str) -> Result<String, String> {
    psql_with(conninfo, sql, APP_PASSWORD)
}

/// [`psql`] with another password.
pub fn psql_with(conninfo: &str, sql: &str, password: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            conninfo,
            "-c",
            sql,
        ])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGSSLMODE")
        .output()
        .expect("run psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// Runs pgbench against `port` with `args`; returns (success, output).
pub fn pgbench(port: u16, user: &str, args: &[&str]) -> (bool, String) {
    pgbench_with(port, user, args, &[])
}

/// [`pgbench`] with extra environment variables (`PGOPTIONS`, say).
pub fn pgbench_with(port: u16, user: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new("pgbench")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", user, "-n"])
        .args(args)
        .arg("app")
        .env("PGPASSWORD", APP_PASSWORD)
        .env("PGCONNECT_TIMEOUT", "10")
        .envs(env.iter().copied())
        .output()
        .expect("run pgbench");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// `pgbench -i -s 1` straight into `cluster`'s `app` database.
pub fn init_pgbench(cluster: &Cluster) {
    let out = Command::new("pgbench")
        .args([
            "-i",
            "-q",
            "-s",
            "1",
            "-h",
            "127.0.0.1",
            "-p",
            &cluster.port().to_string(),
            "-U",
            "app",
            "app",
        ])
        .env("PGPASSWORD", APP_PASSWORD)
        .output()
        .expect("run pgbench");
    assert_success(&out, "pgbench -i");
}
