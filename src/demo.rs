//! `pgcell demo`: a throwaway PostgreSQL with two tenant databases behind
//! pgcell on 127.0.0.1, with copy-paste `psql` lines; everything is removed
//! on Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use thiserror::Error;

use crate::config::Config;
use crate::local_pg::Cluster;
use crate::server::{Server, StartError};

/// Password of the demo's `app` role.
pub(crate) const DEMO_PASSWORD: &str = "app-password";
/// The demo's SNI suffix; `*.localhost` needs no DNS with `hostaddr`.
pub(crate) const DEMO_SNI_SUFFIX: &str = "pg.localhost";

/// Why the demo could not run.
#[derive(Debug, Error)]
pub enum DemoError {
    /// The PostgreSQL cluster could not be set up.
    #[error("throwaway PostgreSQL: {0}")]
    Cluster(std::io::Error),
    /// Files could not be written.
    #[error("demo files: {0}")]
    Files(std::io::Error),
    /// The certificate could not be generated.
    #[error("self-signed certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// The generated configuration was refused (a bug).
    #[error("demo configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// pgcell could not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// A background task failed.
    #[error("setup task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Runs the demo until Ctrl-C or SIGTERM.
pub async fn run(port: u16) -> Result<ExitCode, DemoError> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    eprintln!("starting a throwaway PostgreSQL cluster…");
    let cluster = tokio::task::spawn_blocking(setup_cluster).await??;
    let dir = std::env::temp_dir().join(format!("pgcell-demo-{}", std::process::id()));
    let result = serve(&cluster, &dir, port).await;
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("demo cluster and files removed");
    result
}

fn setup_cluster() -> Result<Cluster, DemoError> {
    let cluster = Cluster::start("pgcell-demo", &[]).map_err(DemoError::Cluster)?;
    let sql = [
        format!("CREATE ROLE app LOGIN PASSWORD '{DEMO_PASSWORD}'"),
        "CREATE DATABASE acme OWNER app".to_owned(),
        "CREATE DATABASE globex OWNER app".to_owned(),
    ];
    for statement in &sql {
        cluster
            .psql("postgres", statement)
            .map_err(DemoError::Cluster)?;
    }
    Ok(cluster)
}

async fn serve(cluster: &Cluster, dir: &PathBuf, port: u16) -> Result<ExitCode, DemoError> {
    std::fs::create_dir_all(dir).map_err(DemoError::Files)?;
    let (cert, key) = crate::tls::self_signed(&["localhost", &format!("*.{DEMO_SNI_SUFFIX}")])?;
    std::fs::write(dir.join("server.crt"), cert).map_err(DemoError::Files)?;
    std::fs::write(dir.join("server.key"), key).map_err(DemoError::Files)?;
    let backend = cluster.addr();
    let health = port.wrapping_add(1);
    let admin = port.wrapping_add(2);
    let toml = format!(
        r#"# Written by `pgcell demo`.
[listen]
addr = "127.0.0.1:{port}"
health_addr = "127.0.0.1:{health}"
admin_addr = "127.0.0.1:{admin}"
proxy_protocol = "off"

[tls]
cert = "server.crt"
key = "server.key"
mode = "allow"

[shutdown]
# No load balancer to leave: stop at once (the default waits 10 s for an
# NLB to stop sending new connections).
propagation = "1ms"
grace = "500ms"

[routing]
sni_suffix = "{DEMO_SNI_SUFFIX}"
sources = ["sni", "options", "user"]

[[tenants]]
id = "acme"
backends = ["{backend}"]
database = "acme"

[[tenants]]
id = "globex"
backends = ["{backend}"]
database = "globex"
"#
    );
    let config_path = dir.join("pgcell.toml");
    std::fs::write(&config_path, &toml).map_err(DemoError::Files)?;
    let config = Config::load(&config_path)?;
    let server = Server::bind(config, Some(config_path.clone())).await?;
    let handle = server.handle();
    let addr = server.addr();
    println!(
        r#"
pgcell demo is up: PostgreSQL {pg_port} (databases acme, globex) behind pgcell on {addr}.
Configuration: {config}

Each tenant lands on its own database:

  # tenant from the options parameter
  PGPASSWORD={DEMO_PASSWORD} psql "host=127.0.0.1 port={port} user=app options='tenant=acme' sslmode=require" -c "select current_database()"
  # tenant from the user name suffix
  PGPASSWORD={DEMO_PASSWORD} psql "host=127.0.0.1 port={port} user=app.globex sslmode=require" -c "select current_database()"
  # tenant from the TLS server name (SNI)
  PGPASSWORD={DEMO_PASSWORD} psql "host=globex.{DEMO_SNI_SUFFIX} hostaddr=127.0.0.1 port={port} user=app sslmode=require" -c "select current_database()"
  # no tenant: a clear error
  PGPASSWORD={DEMO_PASSWORD} psql "host=127.0.0.1 port={port} user=app sslmode=require" -c "select 1"

Health port: curl -s http://127.0.0.1:{health}/     (the NLB only needs the TCP connect)
Metrics:     curl -s http://127.0.0.1:{admin}/metrics | grep ^pgcell_client

Ctrl-C stops pgcell and removes the cluster.
"#,
        pg_port = cluster.port(),
        config = config_path.display(),
    );
    // First Ctrl-C/SIGTERM drains, a second closes open sessions at once;
    // either way the cluster is removed afterwards.
    let stop = async {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            handle.shutdown();
            return;
        };
        for _ in 0..2 {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            handle.shutdown();
        }
    };
    let serve = server.serve();
    tokio::pin!(serve);
    tokio::select! {
        () = &mut serve => {}
        () = async { stop.await; std::future::pending::<()>().await } => {}
    }
    Ok(ExitCode::SUCCESS)
}
