//! SQLSTATE codes pgcell reports to clients.
//!
//! Spec: <https://www.postgresql.org/docs/current/errcodes-appendix.html>

/// A five-character SQLSTATE error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlState(&'static str);

impl SqlState {
    /// `08P01` protocol_violation.
    pub const PROTOCOL_VIOLATION: SqlState = SqlState("08P01");
    /// `08004` sqlserver_rejected_establishment_of_sqlconnection.
    pub const CONNECTION_REJECTED: SqlState = SqlState("08004");
    /// `08006` connection_failure.
    pub const CONNECTION_FAILURE: SqlState = SqlState("08006");
    /// `28P01` invalid_password.
    pub const INVALID_PASSWORD: SqlState = SqlState("28P01");
    /// `28000` invalid_authorization_specification.
    pub const INVALID_AUTHORIZATION: SqlState = SqlState("28000");
    /// `53300` too_many_connections.
    pub const TOO_MANY_CONNECTIONS: SqlState = SqlState("53300");
    /// `57P01` admin_shutdown.
    pub const ADMIN_SHUTDOWN: SqlState = SqlState("57P01");
    /// `0A000` feature_not_supported.
    pub const FEATURE_NOT_SUPPORTED: SqlState = SqlState("0A000");
    /// `22023` invalid_parameter_value.
    pub const INVALID_PARAMETER_VALUE: SqlState = SqlState("22023");
    /// `42601` syntax_error.
    pub const SYNTAX_ERROR: SqlState = SqlState("42601");
    /// `42704` undefined_object.
    pub const UNDEFINED_OBJECT: SqlState = SqlState("42704");
    /// `54000` program_limit_exceeded.
    pub const PROGRAM_LIMIT_EXCEEDED: SqlState = SqlState("54000");
    /// `XX000` internal_error.
    pub const INTERNAL_ERROR: SqlState = SqlState("XX000");

    /// The five-character code.
    pub fn code(self) -> &'static str {
        self.0
    }
}

impl std::fmt::Display for SqlState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}
