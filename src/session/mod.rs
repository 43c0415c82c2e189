//! One client connection from accept to close: negotiation, routing and
//! policy, backend connection, authentication relay, relay. Every failure
//! becomes at most one `ErrorResponse` (through [`SessionError::client_error`]),
//! one metric increment labelled with its kind, and one log line.

pub(crate) mod auth_relay;
pub(crate) mod buffers;
pub(crate) mod client_auth;
pub(crate) mod console;
pub mod engine;
pub(crate) mod pooled;
pub mod prepared;
pub(crate) mod relay;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use crate::backend::topology::Role;
use crate::backend::{self, ConnectError};
use crate::handshake::{self, ClientStream, HandshakeConfig, HandshakeError, Negotiated};
use crate::lifecycle::State;
use crate::metrics as m;
use crate::protocol::framing::FramingError;
use crate::protocol::startup::StartupMessage;
use crate::protocol::{ClientError, Severity, SqlState};
use crate::route::{self, PolicyError, RouteError};
use crate::state::Shared;
use crate::tenant::ClientInfo;
use auth_relay::{AuthEnd, AuthRelayError};
use relay::{RelayBytes, RelayCounters, RelayEnd};

/// Who is to blame; the metric label of every error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The client sent something wrong or went away.
    Client,
    /// Routing or policy refused the client.
    Policy,
    /// The backend failed or refused.
    Backend,
    /// pgcell itself (shutting down, limits).
    Internal,
}

impl ErrorKind {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Client => "client",
            ErrorKind::Policy => "policy",
            ErrorKind::Backend => "backend",
            ErrorKind::Internal => "internal",
        }
    }
}

/// Why a session ended early.
#[derive(Debug, Error)]
pub enum SessionError {
    /// Negotiation failed (already reported to the client).
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// No tenant could be found.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The tenant's policy refused the client.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A replication connection: not served through pgcell.
    #[error("replication connection refused")]
    Replication,
    /// pgcell is shutting down.
    #[error("shutting down")]
    ShuttingDown,
    /// No backend could be reached.
    #[error(transparent)]
    BackendConnect(#[from] ConnectError),
    /// The authentication exchange broke.
    #[error(transparent)]
    AuthRelay(#[from] AuthRelayError),
    /// The backend did not finish authentication in time.
    #[error("backend authentication timed out")]
    AuthTimeout,
    /// The backend refused the client (its `ErrorResponse` was forwarded).
    #[error("backend refused the connection with SQLSTATE {0}")]
    BackendRejected(SqlState),
    /// The backend went away during the session.
    #[error("backend connection lost")]
    BackendLost,
    /// Session mode: the held backend's server no longer fits the client
    /// (a split brain, another primary named, a demotion).
    #[error("the session's server no longer fits it")]
    ServerNoLongerFits,
    /// A passthrough client's server reported a role that does not fit
    /// it at login (a read-write client and a server in recovery): the
    /// topology was stale.
    #[error("server {server} is now a {}", role.label())]
    WrongRole {
        /// The server.
        server: std::net::SocketAddr,
        /// The role it reported.
        role: Role,
    },
    /// The client connection failed during the session.
    #[error("client connection failed: {0}")]
    ClientIo(std::io::Error),
    /// pgcell refused the client's login.
    #[error(transparent)]
    ClientAuth(#[from] client_auth::ClientAuthError),
    /// No pooled backend could be had.
    #[error(transparent)]
    Acquire(crate::pool::AcquireError),
    /// `pool.max_client_connections` reached.
    #[error("pool client limit reached")]
    PoolFull,
    /// A reload removed the client's tenant (the client got `57P01`).
    #[error("tenant removed by a reload")]
    TenantRemoved,
    /// The client broke the protocol during the session.
    #[error("client protocol violation: {0}")]
    ClientProtocol(String),
    /// The client prepared more statements than pgcell keeps per client.
    #[error("too many prepared statements")]
    StatementLimit,
    /// No random bytes for the client's cancel key: refused, never
    /// guessable.
    #[error(transparent)]
    Random(crate::auth::RandomError),
    /// The client was already told (its error went out where it
    /// happened): nothing more is sent.
    #[error(transparent)]
    Reported(Box<SessionError>),
}

impl SessionError {
    /// Who is to blame.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SessionError::Reported(e) => e.kind(),
            SessionError::ClientAuth(client_auth::ClientAuthError::AuthQuery(_)) => {
                ErrorKind::Backend
            }
            SessionError::ClientAuth(client_auth::ClientAuthError::Random(_))
            | SessionError::AuthRelay(AuthRelayError::Random(_))
            | SessionError::Random(_)
            | SessionError::Acquire(crate::pool::AcquireError::Open(
                crate::backend::server::OpenError::Random(_),
            )) => ErrorKind::Internal,
            SessionError::Handshake(_)
            | SessionError::ClientIo(_)
            | SessionError::ClientAuth(_)
            | SessionError::ClientProtocol(_)
            | SessionError::StatementLimit => ErrorKind::Client,
            SessionError::Acquire(crate::pool::AcquireError::Timeout(_)) => ErrorKind::Internal,
            SessionError::Acquire(_) => ErrorKind::Backend,
            SessionError::Route(_) | SessionError::Policy(_) => ErrorKind::Policy,
            SessionError::ShuttingDown | SessionError::TenantRemoved | SessionError::PoolFull => {
                ErrorKind::Internal
            }
            SessionError::Replication => ErrorKind::Policy,
            SessionError::BackendConnect(_)
            | SessionError::AuthTimeout
            | SessionError::BackendRejected(_)
            | SessionError::BackendLost
            | SessionError::WrongRole { .. }
            | SessionError::ServerNoLongerFits => ErrorKind::Backend,
            SessionError::AuthRelay(
                AuthRelayError::Client(_) | AuthRelayError::UnexpectedClientMessage(_),
            ) => ErrorKind::Client,
            SessionError::AuthRelay(_) => ErrorKind::Backend,
        }
    }

    /// Short outcome label for logs.
    pub fn outcome(&self) -> &'static str {
        match self {
            SessionError::Reported(e) => e.outcome(),
            SessionError::Handshake(e) => e.kind(),
            SessionError::Route(e) => e.reason(),
            SessionError::Policy(e) => e.reason(),
            SessionError::Replication => "replication_refused",
            SessionError::ShuttingDown => "shutting_down",
            SessionError::TenantRemoved => "tenant_removed",
            SessionError::PoolFull => "pool_connection_limit",
            SessionError::BackendConnect(_) => "backend_unreachable",
            SessionError::AuthRelay(AuthRelayError::Random(_))
            | SessionError::Random(_)
            | SessionError::Acquire(crate::pool::AcquireError::Open(
                crate::backend::server::OpenError::Random(_),
            )) => "random_unavailable",
            SessionError::AuthRelay(_) => "auth_relay_failed",
            SessionError::AuthTimeout => "auth_timeout",
            SessionError::BackendRejected(_) => "backend_rejected",
            SessionError::BackendLost => "backend_lost",
            SessionError::WrongRole { .. } | SessionError::ServerNoLongerFits => {
                "server_role_changed"
            }
            SessionError::ClientIo(_) => "client_lost",
            SessionError::ClientAuth(e) => e.reason(),
            SessionError::Acquire(crate::pool::AcquireError::Timeout(_)) => "pool_timeout",
            SessionError::Acquire(_) => "backend_unreachable",
            SessionError::ClientProtocol(_) => "client_protocol",
            SessionError::StatementLimit => "statement_limit",
        }
    }

    /// What the client is told. Internal detail never reaches it: policy
    /// denials name no rule, backend failures name no address.
    pub fn client_error(&self, how_to_name_tenant: &str) -> Option<ClientError> {
        use crate::backend::server::OpenError;
        use crate::pool::AcquireError;
        let error = match self {
            SessionError::Reported(_) => return None,
            // Negotiation errors are reported where they happen (a
            // `HandshakeError` is always already told); a client whose
            // connection failed cannot be told anything.
            SessionError::Handshake(_)
            | SessionError::ClientIo(_)
            | SessionError::AuthRelay(AuthRelayError::Client(FramingError::Io(_))) => return None,
            // The backend's own ErrorResponse went to the client.
            SessionError::BackendRejected(_) => return None,
            SessionError::BackendLost => server_lost(),
            SessionError::ServerNoLongerFits => ClientError::fatal(
                SqlState::ADMIN_SHUTDOWN,
                "terminating connection: the server this session used changed role (failover, or two primaries)",
            )
            .hint("Reconnect: the next connection goes to the server that serves this client."),
            SessionError::WrongRole { role, .. } => ClientError::fatal(
                SqlState::CANNOT_CONNECT_NOW,
                format!(
                    "the database server changed role (it is now a {}): a failover is under way",
                    role.label()
                ),
            )
            .hint("Reconnect: the next connection goes to the server that serves this client."),
            SessionError::TenantRemoved => ClientError::fatal(
                SqlState::ADMIN_SHUTDOWN,
                "terminating connection: the tenant was removed from this server",
            ),
            SessionError::Route(RouteError::Missing) => {
                ClientError::fatal(SqlState::CONNECTION_REJECTED, "no tenant specified")
                    .hint(how_to_name_tenant.to_owned())
            }
            SessionError::Route(RouteError::Unknown(id)) => ClientError::fatal(
                SqlState::CONNECTION_REJECTED,
                format!("unknown tenant \"{id}\""),
            )
            .hint(how_to_name_tenant.to_owned()),
            SessionError::Route(RouteError::BadTarget(why)) => {
                ClientError::fatal(SqlState::INVALID_PARAMETER_VALUE, why.clone())
            }
            SessionError::Route(RouteError::Conflict { .. }) => ClientError::fatal(
                SqlState::CONNECTION_REJECTED,
                "the connection names more than one tenant",
            )
            .hint(format!("{self}. Name one tenant only.")),
            SessionError::Policy(PolicyError::TooManyConnections(_)) => ClientError::fatal(
                SqlState::TOO_MANY_CONNECTIONS,
                "too many connections for this tenant",
            ),
            SessionError::Policy(PolicyError::RateLimited(_)) => ClientError::fatal(
                SqlState::TOO_MANY_CONNECTIONS,
                "too many new connections for this tenant: connection rate limit exceeded",
            )
            .hint("Retry after a short pause, or reuse connections."),
            SessionError::Policy(PolicyError::TlsRequired) => {
                ClientError::fatal(SqlState::INVALID_AUTHORIZATION, "connection not authorized")
                    .hint("This tenant accepts TLS connections only: use sslmode=require.")
            }
            SessionError::Policy(_) => {
                ClientError::fatal(SqlState::INVALID_AUTHORIZATION, "connection not authorized")
            }
            SessionError::Replication => ClientError::fatal(
                SqlState::INVALID_AUTHORIZATION,
                "replication connections are not accepted",
            ),
            SessionError::ShuttingDown => {
                ClientError::fatal(SqlState::ADMIN_SHUTDOWN, "the server is shutting down")
                    .hint("Reconnect; another server will take the connection.")
            }
            SessionError::BackendConnect(ConnectError::NoServer(e)) => {
                ClientError::fatal(SqlState::CANNOT_CONNECT_NOW, e.client_message())
            }
            SessionError::BackendConnect(_) => ClientError::fatal(
                SqlState::CONNECTION_FAILURE,
                "could not connect to the database server",
            ),
            SessionError::AuthRelay(AuthRelayError::Client(_)) => ClientError::fatal(
                SqlState::PROTOCOL_VIOLATION,
                "invalid authentication message",
            ),
            SessionError::AuthRelay(AuthRelayError::UnexpectedClientMessage(_)) => {
                ClientError::fatal(
                    SqlState::PROTOCOL_VIOLATION,
                    "expected an authentication response",
                )
            }
            SessionError::AuthRelay(AuthRelayError::UnsupportedMethod(_)) => ClientError::fatal(
                SqlState::FEATURE_NOT_SUPPORTED,
                "the database server requested an authentication method that cannot be relayed",
            ),
            // PostgreSQL's words (auth-scram.c, postmaster.c) and code.
            SessionError::AuthRelay(AuthRelayError::Random(e))
            | SessionError::Random(e)
            | SessionError::Acquire(AcquireError::Open(OpenError::Random(e))) => {
                ClientError::fatal(
                    SqlState::INTERNAL_ERROR,
                    format!("could not generate random {}", e.what),
                )
            }
            SessionError::AuthRelay(_) | SessionError::AuthTimeout => ClientError::fatal(
                SqlState::CONNECTION_FAILURE,
                "the database server did not complete authentication",
            ),
            SessionError::PoolFull => ClientError::fatal(
                SqlState::TOO_MANY_CONNECTIONS,
                "too many connections for this database and user",
            ),
            SessionError::ClientAuth(e) => return e.client_error(),
            SessionError::Acquire(AcquireError::Timeout(wait)) => {
                pool_timeout(*wait, Severity::Fatal)
            }
            // No server fits (a split brain, no replica fit, no primary
            // within acquire_timeout): said as it is.
            SessionError::Acquire(AcquireError::Open(OpenError::Connect(
                ConnectError::NoServer(e),
            ))) => ClientError::fatal(SqlState::CANNOT_CONNECT_NOW, e.client_message()),
            // PostgreSQL's own refusal of what the client asked for, in its
            // words, as a direct connection gets it: a setting the server
            // cannot run (a standby and serializable), no such database,
            // too many connections, starting up or shutting down.
            SessionError::Acquire(AcquireError::Open(OpenError::Refused { code, message }))
                if [
                    SqlState::FEATURE_NOT_SUPPORTED,
                    SqlState::INVALID_CATALOG_NAME,
                    SqlState::TOO_MANY_CONNECTIONS,
                    SqlState::CANNOT_CONNECT_NOW,
                ]
                .contains(code) =>
            {
                ClientError::fatal(*code, message.clone())
            }
            SessionError::Acquire(_) => ClientError::fatal(
                SqlState::CONNECTION_FAILURE,
                "could not connect to the database server",
            ),
            SessionError::ClientProtocol(m) => {
                ClientError::fatal(SqlState::PROTOCOL_VIOLATION, m.clone())
            }
            SessionError::StatementLimit => ClientError::fatal(
                SqlState::PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "too many prepared statements on this connection (pgcell keeps at most {})",
                    prepared::MAX_PREPARED_PER_CLIENT
                ),
            )
            .hint("Close statements the application no longer uses."),
        };
        Some(error)
    }
}

/// The backend went away between two messages and did not say why.
pub(crate) fn server_lost() -> ClientError {
    ClientError::fatal(
        SqlState::CONNECTION_FAILURE,
        "server connection lost: the database closed the connection unexpectedly",
    )
}

/// No backend came free within `wait`: a statement's error in transaction
/// mode, the connection's at login.
pub(crate) fn pool_timeout(wait: Duration, severity: Severity) -> ClientError {
    ClientError {
        severity,
        code: SqlState::TOO_MANY_CONNECTIONS,
        message: format!("no server connection free within {} ms", wait.as_millis()).into(),
        hint: Some(
            "The tenant's pool is busy; retry, or raise pool.size or pool.acquire_timeout.".into(),
        ),
    }
}

/// What a finished connection was, for its log line.
#[derive(Debug, Default)]
struct ConnectionLog {
    tenant: Option<String>,
    /// The user and database, as routed (the tenant's part taken off), or
    /// as the client sent them when it was refused before routing.
    user: Option<String>,
    database: Option<String>,
    client: Option<ClientInfo>,
    bytes: RelayBytes,
}

/// Notes the user and database a startup message names (PostgreSQL's
/// default database is the user's name).
fn note_login(log: &mut ConnectionLog, startup: &StartupMessage) {
    let user = startup.get("user").unwrap_or_default();
    log.database = Some(startup.get("database").unwrap_or(user).to_owned());
    log.user = Some(user.to_owned());
}

/// Serves one accepted TCP connection to the end, logging one line.
///
/// `_slot` is the connection's share of `listen.max_client_connections`,
/// taken before the task was spawned and held until it ends.
pub async fn serve(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    _slot: OwnedSemaphorePermit,
) {
    let started = Instant::now();
    metrics::counter!(m::TCP_ACCEPTED).increment(1);
    // TCP_NODELAY, keepalive and TCP_USER_TIMEOUT come from the listening
    // socket (`server.rs`).
    let mut log = ConnectionLog::default();
    let result = serve_inner(&shared, tcp, peer, &mut log).await;
    let duration = started.elapsed();
    let outcome = match &result {
        Ok(outcome) => *outcome,
        Err(e) => e.outcome(),
    };
    let tenant = log.tenant.as_deref().unwrap_or("");
    let user = log.user.as_deref().unwrap_or("");
    let database = log.database.as_deref().unwrap_or("");
    let (client_addr, vpce, tls) = match &log.client {
        Some(c) => (
            c.addr.to_string(),
            c.vpce_id.clone().unwrap_or_default(),
            c.tls,
        ),
        None => (peer.to_string(), String::new(), false),
    };
    match &result {
        Ok("load_balancer_check") => {
            tracing::debug!(%peer, "load balancer health check");
        }
        Ok(_) => tracing::info!(
            tenant,
            user,
            database,
            client_addr,
            vpce_id = vpce,
            tls,
            duration_ms = duration.as_millis() as u64,
            bytes_in = log.bytes.from_client,
            bytes_out = log.bytes.to_client,
            outcome,
            "connection closed"
        ),
        Err(e) => {
            metrics::counter!(m::CONNECTION_ERRORS, "kind" => e.kind().label()).increment(1);
            tracing::info!(
                tenant,
                user,
                database,
                client_addr,
                vpce_id = vpce,
                tls,
                duration_ms = duration.as_millis() as u64,
                bytes_in = log.bytes.from_client,
                bytes_out = log.bytes.to_client,
                outcome,
                error = %e,
                kind = e.kind().label(),
                "connection closed"
            )
        }
    }
}

/// Answers a `CancelRequest`: forwards it to the backend (or the peer
/// replica) that holds its key, then closes.
async fn answer_cancel<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    key: crate::protocol::startup::CancelKey,
    client: ClientInfo,
    mut stream: S,
    log: &mut ConnectionLog,
) -> Result<&'static str, SessionError> {
    let outcome = shared
        .cancel
        .cancel(
            key,
            &client,
            shared.settings.connect_timeout,
            shared.settings.proxy_protocol,
        )
        .await;
    log.client = Some(client);
    // Counted before the close, which tells the client it was
    // handled: whoever reads the metrics next sees it.
    metrics::counter!(m::CANCEL_REQUESTS, "outcome" => outcome.label()).increment(1);
    // After the cancel, as PostgreSQL: the client learns it was
    // handled from the close. Over TLS that is a close_notify
    // (shutdown); bounded, the client may not be reading.
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
    Ok("cancel_request")
}

async fn serve_inner(
    shared: &Shared,
    tcp: TcpStream,
    peer: SocketAddr,
    log: &mut ConnectionLog,
) -> Result<&'static str, SessionError> {
    let deadline = tokio::time::Instant::now() + shared.settings.startup_timeout;
    let cfg = HandshakeConfig {
        proxy: shared.settings.proxy_protocol,
        tls_mode: shared.settings.tls_mode,
        tls: shared.tls.as_ref(),
        deadline,
    };
    // Boxed: the handshake's state is large and only needed at the start;
    // inline it would stay in every idle connection's task.
    // (Matched as a temporary: a named binding would keep its storage in
    // the task for the whole connection.)
    let (mut stream, mut startup, client) = match Box::pin(handshake::negotiate(tcp, peer, &cfg))
        .await
        .inspect_err(|e| {
            metrics::counter!(m::HANDSHAKE_ERRORS, "kind" => e.kind()).increment(1);
        })? {
        Negotiated::LoadBalancerCheck => return Ok("load_balancer_check"),
        // Boxed: its state would otherwise size every client's task.
        Negotiated::Cancel(key, client, stream) => {
            return Box::pin(answer_cancel(shared, key, client, stream, log)).await;
        }
        Negotiated::Startup {
            stream,
            startup,
            client,
        } => (stream, startup, client),
    };
    log.client = Some(client.clone());
    note_login(log, &startup);

    // The admin console is a database of pgcell's own, not a tenant's.
    if startup.get("database") == Some(console::DATABASE) && shared.console.load().enabled() {
        let result = Box::pin(console::serve(shared, &mut stream, &startup, &client)).await;
        if let Err(e) = &result {
            report(&mut stream, e, "").await;
        }
        return result.map(|()| "admin_console");
    }

    let table = shared.routes.load_full();
    let route = match admit(shared, &table, &mut startup, &client) {
        Ok(admitted) => admitted,
        Err((e, tenant)) => {
            if !tenant.is_empty() {
                log.tenant = Some(tenant.clone());
            }
            metrics::counter!(m::REJECTIONS, "reason" => e.outcome(), "tenant" => tenant)
                .increment(1);
            report(&mut stream, &e, &table.how_to_name_tenant()).await;
            return Err(e);
        }
    };
    let tenant_id = route.tenant.id().to_owned();
    log.tenant = Some(tenant_id.clone());
    note_login(log, &startup);
    let tls_label = if client.tls { "true" } else { "false" };
    metrics::counter!(m::CLIENT_ACCEPTED, "tenant" => tenant_id.clone(), "tls" => tls_label)
        .increment(1);
    let active =
        metrics::gauge!(m::CLIENT_ACTIVE, "tenant" => tenant_id.clone(), "tls" => tls_label);
    active.increment(1.0);
    let started = Instant::now();
    let is_passthrough = route.tenant.config.auth == crate::config::AuthMode::Passthrough;
    let user = startup.get("user").unwrap_or_default().to_owned();
    let listed = shared.connected.register(crate::clients::NewClient {
        tenant: tenant_id.clone(),
        database: startup.get("database").unwrap_or(&user).to_owned(),
        user,
        addr: client.addr,
        tls: client.tls,
        // A passthrough client holds its own backend throughout.
        state: if is_passthrough {
            crate::clients::ClientState::Active
        } else {
            crate::clients::ClientState::Idle
        },
    });
    let result = if is_passthrough {
        // Boxed: its relay state would otherwise size every pooled
        // client's task too.
        Box::pin(passthrough(shared, &mut stream, &startup, &route, log)).await
    } else {
        // The pooled relay counts bytes, queries and transactions in the
        // client's tally, not message by message in the exported
        // counters.
        let mut counted = crate::clients::Counted::new(&mut stream, &listed.entry.tally);
        crate::clients::scope(
            listed.entry.clone(),
            pooled::serve(
                shared,
                &mut counted,
                &startup,
                &route,
                &client,
                &mut log.bytes,
                &listed.entry,
            ),
        )
        .await
    };
    drop(listed);
    active.decrement(1.0);
    metrics::histogram!(m::SESSION_SECONDS, "tenant" => tenant_id)
        .record(started.elapsed().as_secs_f64());
    if let Err(e) = &result {
        report(&mut stream, e, "").await;
    }
    result.map(|()| "ok")
}

/// Routes and admits a client. A refusal carries the tenant label for its
/// metric: a configured tenant id, or empty, so that clients cannot mint
/// label values.
fn admit(
    shared: &Shared,
    table: &route::RoutingTable,
    startup: &mut StartupMessage,
    client: &ClientInfo,
) -> Result<route::Route, (SessionError, String)> {
    let no_tenant = |e: SessionError| (e, m::NO_TENANT.to_owned());
    if shared.lifecycle.state() == State::Stopping {
        return Err(no_tenant(SessionError::ShuttingDown));
    }
    if startup
        .get("replication")
        .is_some_and(|r| r != "false" && r != "off" && r != "0")
    {
        return Err(no_tenant(SessionError::Replication));
    }
    let tenant = table
        .resolve(startup, client.sni.as_deref())
        .map_err(|e| no_tenant(e.into()))?;
    let id = tenant.id().to_owned();
    let target = route::take_target(startup, &tenant).map_err(|e| (e.into(), id.clone()))?;
    route::admit(tenant, target, client).map_err(|e| (e.into(), id))
}

async fn passthrough<S>(
    shared: &Shared,
    client: &mut ClientStream<S>,
    startup: &StartupMessage,
    route: &route::Route,
    log: &mut ConnectionLog,
) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let tenant = &route.tenant;
    // Just started: the probe's first round tells the roles; without it
    // the first logins would try the servers in listed order, and a login
    // that finds a standby cannot go on to the next server.
    let replication = &tenant.config.replication;
    if replication.probe_user.is_some() && tenant.topology.servers().len() > 1 {
        let deadline = Instant::now() + replication.probe_timeout;
        while !tenant.topology.probed_once() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let connect_started = Instant::now();
    let connected = backend::connect(
        tenant.targets(route.target),
        shared.settings.connect_timeout,
        shared.settings.tcp_keepalive,
    )
    .await;
    let mut backend = match connected {
        Ok(b) => b,
        Err(e) => {
            metrics::counter!(m::BACKEND_CONNECT_ERRORS, "tenant" => tenant.id().to_owned())
                .increment(1);
            return Err(e.into());
        }
    };
    metrics::histogram!(m::BACKEND_CONNECT_SECONDS, "tenant" => tenant.id().to_owned())
        .record(connect_started.elapsed().as_secs_f64());

    let mut buf = BytesMut::new();
    startup.encode(&mut buf);
    backend
        .stream
        .write_all(&buf)
        .await
        .map_err(|e| AuthRelayError::Backend(e.into()))?;

    let vpce_id = log.client.as_ref().and_then(|c| c.vpce_id.clone());
    let auth = tokio::time::timeout(
        shared.settings.auth_timeout,
        auth_relay::relay(
            client,
            &mut backend.stream,
            &shared.cancel,
            backend.addr,
            vpce_id.as_deref(),
            |role| route.target.fits(role, backend.fallback),
        ),
    )
    .await
    .map_err(|_| SessionError::AuthTimeout)??;
    let _cancel_key = match auth {
        AuthEnd::Ready { cancel_key, role } => {
            if role != Role::Unknown {
                tenant.topology.saw_role(backend.server, role);
            }
            cancel_key
        }
        AuthEnd::WrongRole(role) => {
            // The topology was stale (a failover the probe has not seen
            // yet): the next login tries the right server.
            tenant.topology.saw_role(backend.server, role);
            return Err(SessionError::WrongRole {
                server: backend.addr,
                role,
            });
        }
        AuthEnd::Rejected { code } => return Err(SessionError::BackendRejected(code)),
        AuthEnd::ClientQuit => return Ok(()),
    };

    let counters = RelayCounters {
        from_client: metrics::counter!(m::CLIENT_BYTES_RECEIVED, "tenant" => tenant.id().to_owned()),
        to_client: metrics::counter!(m::CLIENT_BYTES_SENT, "tenant" => tenant.id().to_owned()),
    };
    let lifecycle = shared.lifecycle.subscribe();
    // The session ends, between transactions, once its server no longer
    // fits it: a writer's server is no longer the tenant's primary (a
    // split brain, another server named, a demotion), a replica client's
    // server was promoted (`Topology::session_fits`).
    let topology = &tenant.topology;
    let server = backend.server;
    let target = route.target;
    let server_changed = async {
        loop {
            let seen = topology.changes();
            if !topology.session_fits(server, target) {
                return;
            }
            topology.changed_since(seen).await;
        }
    };
    let end = relay::relay(
        client,
        backend.stream,
        &counters,
        &mut log.bytes,
        lifecycle,
        server_changed,
    )
    .await;
    match end {
        RelayEnd::ClientClosed => Ok(()),
        RelayEnd::ShuttingDown => {
            metrics::counter!(m::SHUTDOWN_CLOSED, "how" => "at_transaction_boundary").increment(1);
            Ok(())
        }
        RelayEnd::ServerChanged => Err(SessionError::Reported(Box::new(
            SessionError::ServerNoLongerFits,
        ))),
        RelayEnd::ClientError(e) => Err(SessionError::ClientIo(e)),
        RelayEnd::BackendLost { client_told, error } => {
            metrics::counter!(m::BACKEND_LOST, "tenant" => tenant.id().to_owned()).increment(1);
            match error {
                Some(e) => tracing::debug!(error = %e, client_told, "backend read failed"),
                None => tracing::debug!(client_told, "backend closed"),
            }
            // Passthrough: the client saw what the backend did (its
            // error, or the close), as on a direct connection.
            Err(SessionError::Reported(Box::new(SessionError::BackendLost)))
        }
    }
}

/// Sends the client the one `ErrorResponse` for `e`, if it gets one.
async fn report<W: AsyncWrite + Unpin>(stream: &mut W, e: &SessionError, how_to_name_tenant: &str) {
    let Some(error) = e.client_error(how_to_name_tenant) else {
        return;
    };
    // Bounded: a client that does not read must not hold the task.
    let _ = tokio::time::timeout(Duration::from_secs(1), error.send(stream)).await;
}
