//! The admin console: a Postgres-protocol database named `pgcell` on the
//! data port, for the users in `[[admin.users]]`.
//!
//! pgcell authenticates the admin itself (SCRAM, as for pooled tenants) and
//! answers simple queries: `SHOW POOLS | CLIENTS | SERVERS | STATS |
//! TENANTS`, `RELOAD`, `PAUSE [tenant]`, `RESUME [tenant]`. Messages are
//! built and parsed with pgwire's codecs. Every figure shown is also a
//! Prometheus metric ([`show::publish_pool_gauges`] refreshes the pool
//! gauges; `SHOW STATS` reads the rendered registry itself).
//!
//! Spec: <https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-SIMPLE-QUERY>

mod show;
mod wire;

use bytes::{Buf, BytesMut};
use pgwire::messages::response::{
    CommandComplete, EmptyQueryResponse, ReadyForQuery, TransactionStatus,
};
use pgwire::messages::startup::ParameterStatus;
use pgwire::messages::{DecodeContext, PgWireFrontendMessage, ProtocolVersion};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::lifecycle::State;
use crate::metrics as m;
use crate::protocol::startup::StartupMessage;
use crate::protocol::{ClientError, SqlState};
use crate::session::client_auth::{self, ClientAuthError};
use crate::session::error::SessionError;
use crate::state::Shared;
use crate::tenant::ClientInfo;

pub(crate) use show::publish_pool_gauges;
use wire::encode;

/// The database name that reaches the console.
pub(crate) const DATABASE: &str = "pgcell";
/// Longest message an admin may send; console commands are short.
const MAX_CONSOLE_MESSAGE_LEN: usize = 64 * 1024;

/// A console command.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Command {
    Show(ShowWhat),
    Reload,
    Pause(Option<String>),
    Resume(Option<String>),
    Empty,
}

/// What `SHOW` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ShowWhat {
    Pools,
    Clients,
    Servers,
    Stats,
    Tenants,
    Replication,
}

impl Command {
    /// Parses one command: case-insensitive words, an optional trailing
    /// `;`, an optional quoted tenant id.
    fn parse(text: &str) -> Option<Command> {
        let text = text.trim().trim_end_matches(';').trim();
        let words: Vec<&str> = text.split_whitespace().collect();
        let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
        let upper: Vec<&str> = upper.iter().map(String::as_str).collect();
        let tenant = |w: &str| w.trim_matches('"').to_ascii_lowercase();
        Some(match upper.as_slice() {
            [] => Command::Empty,
            ["SHOW", what] => Command::Show(match *what {
                "POOLS" => ShowWhat::Pools,
                "CLIENTS" => ShowWhat::Clients,
                "SERVERS" => ShowWhat::Servers,
                "STATS" => ShowWhat::Stats,
                "TENANTS" => ShowWhat::Tenants,
                "REPLICATION" => ShowWhat::Replication,
                _ => return None,
            }),
            ["RELOAD"] => Command::Reload,
            ["PAUSE"] => Command::Pause(None),
            ["PAUSE", _] => Command::Pause(Some(tenant(words[1]))),
            ["RESUME"] => Command::Resume(None),
            ["RESUME", _] => Command::Resume(Some(tenant(words[1]))),
            _ => return None,
        })
    }

    /// Metric label.
    fn label(&self) -> &'static str {
        match self {
            Command::Show(ShowWhat::Pools) => "show_pools",
            Command::Show(ShowWhat::Clients) => "show_clients",
            Command::Show(ShowWhat::Servers) => "show_servers",
            Command::Show(ShowWhat::Stats) => "show_stats",
            Command::Show(ShowWhat::Tenants) => "show_tenants",
            Command::Show(ShowWhat::Replication) => "show_replication",
            Command::Reload => "reload",
            Command::Pause(_) => "pause",
            Command::Resume(_) => "resume",
            Command::Empty => "empty",
        }
    }
}

const COMMANDS_HINT: &str = "Commands: SHOW POOLS, SHOW CLIENTS, SHOW SERVERS, SHOW STATS, SHOW TENANTS, SHOW REPLICATION, RELOAD, PAUSE [tenant], RESUME [tenant].";

/// Serves an admin console session to the end: login, then commands until
/// the client leaves or pgcell stops. Errors that end the session are
/// returned for the caller to report. Not cancel safe.
pub(crate) async fn serve<C>(
    shared: &Shared,
    client: &mut C,
    startup: &StartupMessage,
    info: &ClientInfo,
) -> Result<(), SessionError>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    if shared.lifecycle.state() == State::Stopping {
        return Err(SessionError::ShuttingDown);
    }
    let user = startup.get("user").unwrap_or_default().to_owned();
    let console = shared.console.load_full();
    // Bounded like a tenant's login: a stalled client holds no slot.
    let verified = tokio::time::timeout(
        shared.settings.auth_timeout,
        client_auth::verify(
            client,
            &user,
            console.secrets.get(&user),
            info,
            &shared.mock_key,
        ),
    )
    .await
    .unwrap_or(Err(ClientAuthError::Timeout));
    if let Err(e) = verified {
        metrics::counter!(m::AUTH_FAILURES, "tenant" => m::NO_TENANT, "reason" => e.reason())
            .increment(1);
        if matches!(e, ClientAuthError::Failed(_)) {
            tokio::time::sleep(client_auth::AUTH_FAILURE_DELAY).await;
        }
        return Err(SessionError::ClientAuth(e));
    }
    tracing::info!(user, client_addr = %info.addr, "admin console login");

    let mut out = BytesMut::new();
    for (name, value) in [
        (
            "server_version",
            concat!("16.0 (pgcell ", env!("CARGO_PKG_VERSION"), ")"),
        ),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        (
            "application_name",
            startup.get("application_name").unwrap_or_default(),
        ),
    ] {
        encode(
            &mut out,
            &ParameterStatus::new(name.to_owned(), value.to_owned()),
        );
    }
    encode(&mut out, &ReadyForQuery::new(TransactionStatus::Idle));
    flush(client, &mut out).await?;

    let mut ctx = DecodeContext::new(ProtocolVersion::PROTOCOL3_0);
    ctx.awaiting_ssl = false;
    ctx.awaiting_startup = false;
    let mut stopping = shared.lifecycle.subscribe();
    let mut buf = BytesMut::with_capacity(1024);
    // After an extended-protocol message: its error is sent, the rest of
    // the sequence is skipped up to `Sync`.
    let mut skip_to_sync = false;
    loop {
        while let Some(message) = next_message(&mut buf, &ctx)? {
            match message {
                PgWireFrontendMessage::Query(q) => {
                    run(shared, &q.query, &mut out);
                    encode(&mut out, &ReadyForQuery::new(TransactionStatus::Idle));
                }
                PgWireFrontendMessage::Terminate(_) => {
                    flush(client, &mut out).await?;
                    return Ok(());
                }
                PgWireFrontendMessage::Sync(_) => {
                    skip_to_sync = false;
                    encode(&mut out, &ReadyForQuery::new(TransactionStatus::Idle));
                }
                m if m.is_extended_query() => {
                    if !skip_to_sync {
                        skip_to_sync = true;
                        ClientError::statement(
                            SqlState::FEATURE_NOT_SUPPORTED,
                            "the admin console supports the simple query protocol only",
                        )
                        .encode(&mut out);
                    }
                }
                // COPY data outside a COPY: nothing to do.
                PgWireFrontendMessage::CopyData(_)
                | PgWireFrontendMessage::CopyDone(_)
                | PgWireFrontendMessage::CopyFail(_) => {}
                _ => {
                    return Err(SessionError::ClientProtocol(
                        "unexpected message on the admin console".into(),
                    ))
                }
            }
        }
        flush(client, &mut out).await?;
        buf.reserve(4096);
        tokio::select! {
            read = client.read_buf(&mut buf) => match read {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(SessionError::ClientIo(e)),
            },
            _ = stopping.wait_for(|s| matches!(s, State::Stopping | State::Stopped)) => {
                return Err(SessionError::ShuttingDown);
            }
        }
    }
}

/// The next complete frontend message in `buf`, bounded by
/// [`MAX_CONSOLE_MESSAGE_LEN`] before pgwire decodes it.
fn next_message(
    buf: &mut BytesMut,
    ctx: &DecodeContext,
) -> Result<Option<PgWireFrontendMessage>, SessionError> {
    if buf.remaining() >= 5 {
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if !(4..=MAX_CONSOLE_MESSAGE_LEN).contains(&len) {
            return Err(SessionError::ClientProtocol(format!(
                "invalid message length {len} on the admin console"
            )));
        }
    }
    PgWireFrontendMessage::decode(buf, ctx)
        .map_err(|e| SessionError::ClientProtocol(format!("admin console: {e}")))
}

/// Runs one query string and appends its answer (without `ReadyForQuery`).
fn run(shared: &Shared, query: &str, out: &mut BytesMut) {
    let Some(command) = Command::parse(query) else {
        metrics::counter!(m::CONSOLE_COMMANDS, "command" => "unknown", "outcome" => "error")
            .increment(1);
        ClientError::statement(SqlState::SYNTAX_ERROR, "unrecognized admin console command")
            .hint(COMMANDS_HINT)
            .encode(out);
        return;
    };
    let result = execute(shared, &command, out);
    let outcome = if result.is_ok() { "ok" } else { "error" };
    metrics::counter!(m::CONSOLE_COMMANDS, "command" => command.label(), "outcome" => outcome)
        .increment(1);
    if let Err(e) = result {
        e.encode(out);
    }
}

fn execute(shared: &Shared, command: &Command, out: &mut BytesMut) -> Result<(), ClientError> {
    let console = shared.console.load_full();
    let tag = match command {
        Command::Empty => {
            encode(out, &EmptyQueryResponse::new());
            return Ok(());
        }
        Command::Show(what) => {
            let table = match what {
                ShowWhat::Pools => show::pools(shared),
                ShowWhat::Clients => show::clients(shared),
                ShowWhat::Servers => show::servers(shared),
                ShowWhat::Stats => show::stats(&console),
                ShowWhat::Tenants => show::tenants(shared, &console),
                ShowWhat::Replication => show::replication(shared),
            };
            table.encode(out);
            "SHOW"
        }
        Command::Reload => {
            shared.reload().map_err(|e| {
                tracing::error!(error = %e, "reload from the admin console failed; keeping the running configuration");
                // The admin operates pgcell: the config problems are for them.
                ClientError::statement(
                    SqlState::INVALID_PARAMETER_VALUE,
                    format!("reload failed; the running configuration stays: {e}"),
                )
            })?;
            tracing::info!("configuration and certificate reloaded from the admin console");
            "RELOAD"
        }
        Command::Pause(tenant) | Command::Resume(tenant) => {
            let pause = matches!(command, Command::Pause(_));
            let tenants: Vec<String> = match tenant {
                Some(t) if console.has_tenant(t) => vec![t.clone()],
                Some(t) => {
                    return Err(ClientError::statement(
                        SqlState::UNDEFINED_OBJECT,
                        format!("unknown tenant \"{t}\""),
                    )
                    .hint("SHOW TENANTS lists them."))
                }
                None => console.tenants.iter().map(|t| t.id.clone()).collect(),
            };
            for t in &tenants {
                if pause {
                    shared.pools.pause(t);
                } else {
                    shared.pools.resume(t);
                }
                tracing::info!(
                    tenant = t.as_str(),
                    "{} from the admin console",
                    if pause { "paused" } else { "resumed" }
                );
            }
            show::publish_pool_gauges(shared);
            if pause {
                "PAUSE"
            } else {
                "RESUME"
            }
        }
    };
    encode(out, &CommandComplete::new(tag.to_owned()));
    Ok(())
}

async fn flush<C: AsyncWrite + Unpin>(
    client: &mut C,
    out: &mut BytesMut,
) -> Result<(), SessionError> {
    if out.is_empty() {
        return Ok(());
    }
    client
        .write_all(out)
        .await
        .map_err(SessionError::ClientIo)?;
    client.flush().await.map_err(SessionError::ClientIo)?;
    out.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::secret::SaltKey;
    use crate::config::Config;
    use crate::state::ConsoleConfig;

    #[test]
    fn commands_parse_case_insensitively() {
        assert_eq!(
            Command::parse("show pools;"),
            Some(Command::Show(ShowWhat::Pools))
        );
        assert_eq!(
            Command::parse("  SHOW   Clients  "),
            Some(Command::Show(ShowWhat::Clients))
        );
        assert_eq!(
            Command::parse("pause \"Acme\";"),
            Some(Command::Pause(Some("acme".into())))
        );
        assert_eq!(Command::parse("RESUME"), Some(Command::Resume(None)));
        assert_eq!(Command::parse("reload"), Some(Command::Reload));
        assert_eq!(Command::parse(";"), Some(Command::Empty));
        assert_eq!(Command::parse("show databases"), None);
        assert_eq!(Command::parse("select 1"), None);
        assert_eq!(Command::parse("pause a b"), None);
    }

    #[test]
    fn admin_users_reuse_the_user_keys() {
        let text = r#"
            [listen]
            addr = "127.0.0.1:6432"
            [[admin.users]]
            name = "admin"
            scram_secret = "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0c2FsdA==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:ol3HQO7Z5CxUfbH0xHGI6JxLBCPEk9Wr/4ljTTO/IQU="
        "#;
        let config = Config::parse(text, std::path::Path::new(".")).unwrap();
        assert_eq!(config.admin.users.len(), 1);
        assert!(ConsoleConfig::from_config(&config, &SaltKey::from_secret(b"test")).enabled());

        let bad = r#"
            [listen]
            addr = "127.0.0.1:6432"
            [[admin.users]]
            name = "admin"
            [[admin.users]]
            name = "ops"
            password_env = "PGCELL_TEST_SURELY_UNSET"
            pool_size = 3
        "#;
        let err = Config::parse(bad, std::path::Path::new(".")).unwrap_err();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"admin.users[0]"), "{paths:?}");
        assert!(paths.contains(&"admin.users[1].password_env"), "{paths:?}");
    }

    #[test]
    fn no_admin_users_no_console() {
        let text = "[listen]\naddr = \"127.0.0.1:6432\"\n";
        let config = Config::parse(text, std::path::Path::new(".")).unwrap();
        assert!(!ConsoleConfig::from_config(&config, &SaltKey::from_secret(b"test")).enabled());
    }
}
