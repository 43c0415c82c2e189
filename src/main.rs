//! The `pgcell` command: `run`, `check`, `demo`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pgcell::config::{Config, LogFormat};
use pgcell::Server;

/// `pgcell --version`: the crate version and the git revision (`build.rs`).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("PGCELL_GIT_REVISION"),
    ")"
);

/// pgcell: the PostgreSQL data plane of a private database cell.
#[derive(Debug, Parser)]
#[command(version = VERSION, about)]
struct Cli {
    /// Configuration file (TOML). With no subcommand, `run` is implied.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve clients with the given configuration.
    Run,
    /// Validate the configuration and TLS files; print every problem.
    Check,
    /// Print the PgcellTenant CustomResourceDefinition (YAML).
    #[cfg(feature = "kube")]
    Crd,
    /// Start a throwaway PostgreSQL with two tenants behind pgcell.
    Demo {
        /// Data port for the proxy.
        #[arg(long, default_value_t = 6432)]
        port: u16,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Check) => check(cli.config),
        #[cfg(feature = "kube")]
        Some(Command::Crd) => crd(),
        Some(Command::Demo { port }) => {
            runtime().and_then(|rt| Ok(rt.block_on(pgcell::run_demo(port))?))
        }
        Some(Command::Run) | None => run(cli.config),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pgcell: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    runtime_with(None, false)
}

/// The runtime `[runtime]` asks for: the multi-threaded one with
/// `workers` threads (default one per CPU), or one thread for everything.
fn runtime_with(
    workers: Option<usize>,
    current_thread: bool,
) -> anyhow::Result<tokio::runtime::Runtime> {
    if current_thread {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime");
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn require_config(path: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    path.context("--config FILE is required (see config/pgcell.example.toml)")
}

/// `pgcell crd`: the manifest committed as
/// `deploy/kubernetes/base/pgcelltenant-crd.yaml`.
#[cfg(feature = "kube")]
fn crd() -> anyhow::Result<ExitCode> {
    print!("{}", pgcell::crd::crd_yaml()?);
    Ok(ExitCode::SUCCESS)
}

fn check(path: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let path = require_config(path)?;
    let mut problems = Vec::new();
    match Config::load(&path) {
        Ok(config) => {
            for warning in config.warnings() {
                eprintln!("warning: {warning}");
            }
            if let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) {
                if config.tls.mode != pgcell::config::TlsMode::Disable {
                    if let Err(e) = pgcell::server_config(cert, key) {
                        problems.push(format!("tls: {e}"));
                    }
                }
            }
            for (i, t) in config.tenants.iter().enumerate() {
                if let Err(e) =
                    pgcell::backend_client_config(t.backend_tls, t.backend_ca.as_deref())
                {
                    problems.push(format!("tenants[{i}].backend_ca: {e}"));
                }
            }
        }
        Err(e) => problems.extend(e.to_string().lines().map(str::to_owned)),
    }
    if problems.is_empty() {
        println!("{}: ok", path.display());
        Ok(ExitCode::SUCCESS)
    } else {
        for p in &problems {
            eprintln!("{}: {p}", path.display());
        }
        eprintln!("{} problem(s) found", problems.len());
        Ok(ExitCode::FAILURE)
    }
}

fn run(path: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let path = require_config(path)?;
    let config = Config::load(&path).map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
    init_logging(config.log.format, &config.log.level);
    let rt = runtime_with(config.worker_threads, config.current_thread)?;
    rt.block_on(async move {
        let server = Server::bind(config, Some(path)).await?;
        let handle = server.handle();
        tokio::spawn(forward_signals(handle));
        // On a worker, not on this thread: with the multi-threaded runtime
        // the future given to `block_on` runs outside the workers, and
        // every accepted connection (and every finished one) would then
        // cost a cross-thread wake-up.
        tokio::spawn(server.serve())
            .await
            .map_err(|e| anyhow::anyhow!("server task failed: {e}"))?;
        Ok(ExitCode::SUCCESS)
    })
}

/// SIGTERM/SIGINT → drain and graceful shutdown; a second one cuts the
/// drain's waits short, a third the sessions' grace period; a fourth exits
/// at once.
/// SIGHUP → reload.
async fn forward_signals(handle: pgcell::ServerHandle) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    let mut requests = 0;
    loop {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
            _ = hup.recv() => {
                handle.reload();
                continue;
            }
        }
        requests += 1;
        match requests {
            1 => tracing::info!("stop signal: draining"),
            2 => tracing::warn!("second stop signal: cutting the drain short"),
            3 => tracing::warn!("third stop signal: closing sessions now"),
            _ => {
                tracing::warn!("fourth stop signal: exiting");
                std::process::exit(1);
            }
        }
        handle.shutdown();
    }
}

/// Sets up tracing; `RUST_LOG` overrides the configured level.
pub fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
