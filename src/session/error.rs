//! Why a session ended early, who is to blame (the metric label), and the
//! one `ErrorResponse` the client is told, if any.

use std::time::Duration;

use thiserror::Error;

use super::auth_relay::AuthRelayError;
use super::client_auth;
use crate::backend::topology::Role;
use crate::backend::ConnectError;
use crate::handshake::HandshakeError;
use crate::protocol::framing::FramingError;
use crate::protocol::{ClientError, Severity, SqlState};
use crate::route::{PolicyError, RouteError};

/// Who is to blame; the metric label of every error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
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
    pub(crate) fn label(self) -> &'static str {
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
pub(crate) enum SessionError {
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
    /// The client prepared more statements than pgcell keeps per client
    /// (the limit).
    #[error("too many prepared statements")]
    StatementLimit(usize),
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
    pub(crate) fn kind(&self) -> ErrorKind {
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
            | SessionError::StatementLimit(_) => ErrorKind::Client,
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
    pub(crate) fn outcome(&self) -> &'static str {
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
            SessionError::StatementLimit(_) => "statement_limit",
        }
    }

    /// What the client is told. Internal detail never reaches it: policy
    /// denials name no rule, backend failures name no address.
    pub(crate) fn client_error(&self, how_to_name_tenant: &str) -> Option<ClientError> {
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
            SessionError::StatementLimit(limit) => ClientError::fatal(
                SqlState::PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "too many prepared statements on this connection (pgcell keeps at most {limit})"
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

impl From<crate::pool::AcquireError> for SessionError {
    fn from(e: crate::pool::AcquireError) -> Self {
        SessionError::Acquire(e)
    }
}
