//! SQLSTATE codes: the ones pgcell reports to clients, and any a backend
//! sends.
//!
//! Spec: <https://www.postgresql.org/docs/current/errcodes-appendix.html>

/// A five-character SQLSTATE error code (ASCII digits and upper-case
/// letters).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SqlState([u8; 5]);

impl SqlState {
    /// `08P01` protocol_violation.
    pub const PROTOCOL_VIOLATION: SqlState = SqlState::of("08P01");
    /// `08004` sqlserver_rejected_establishment_of_sqlconnection.
    pub const CONNECTION_REJECTED: SqlState = SqlState::of("08004");
    /// `08006` connection_failure.
    pub const CONNECTION_FAILURE: SqlState = SqlState::of("08006");
    /// `28P01` invalid_password.
    pub const INVALID_PASSWORD: SqlState = SqlState::of("28P01");
    /// `28000` invalid_authorization_specification.
    pub const INVALID_AUTHORIZATION: SqlState = SqlState::of("28000");
    /// `53300` too_many_connections.
    pub const TOO_MANY_CONNECTIONS: SqlState = SqlState::of("53300");
    /// `57P01` admin_shutdown.
    pub const ADMIN_SHUTDOWN: SqlState = SqlState::of("57P01");
    /// `57P03` cannot_connect_now.
    pub const CANNOT_CONNECT_NOW: SqlState = SqlState::of("57P03");
    /// `57P02` crash_shutdown.
    pub const CRASH_SHUTDOWN: SqlState = SqlState::of("57P02");
    /// `0A000` feature_not_supported.
    pub const FEATURE_NOT_SUPPORTED: SqlState = SqlState::of("0A000");
    /// invalid_catalog_name: no such database.
    pub const INVALID_CATALOG_NAME: SqlState = SqlState::of("3D000");
    /// `22023` invalid_parameter_value.
    pub const INVALID_PARAMETER_VALUE: SqlState = SqlState::of("22023");
    /// `42601` syntax_error.
    pub const SYNTAX_ERROR: SqlState = SqlState::of("42601");
    /// `42704` undefined_object.
    pub const UNDEFINED_OBJECT: SqlState = SqlState::of("42704");
    /// `54000` program_limit_exceeded.
    pub const PROGRAM_LIMIT_EXCEEDED: SqlState = SqlState::of("54000");
    /// `XX000` internal_error.
    pub const INTERNAL_ERROR: SqlState = SqlState::of("XX000");

    /// A code known at compile time (a malformed one fails the build).
    const fn of(code: &'static str) -> SqlState {
        let b = code.as_bytes();
        assert!(b.len() == 5);
        let mut i = 0;
        while i < 5 {
            assert!(b[i].is_ascii_digit() || b[i].is_ascii_uppercase());
            i += 1;
        }
        SqlState([b[0], b[1], b[2], b[3], b[4]])
    }

    /// A code as a backend sends it (an `ErrorResponse`'s `C` field);
    /// `None` unless it is five digits or upper-case letters.
    pub fn parse(code: &[u8]) -> Option<SqlState> {
        let code: [u8; 5] = code.try_into().ok()?;
        code.iter()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
            .then_some(SqlState(code))
    }

    /// The five-character code.
    pub fn code(&self) -> &str {
        // Checked ASCII at construction; the fallback is unreachable.
        std::str::from_utf8(&self.0).unwrap_or("XX000")
    }
}

impl std::fmt::Display for SqlState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

impl std::fmt::Debug for SqlState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SqlState({})", self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_well_formed_codes() {
        assert_eq!(SqlState::parse(b"57P01"), Some(SqlState::ADMIN_SHUTDOWN));
        assert_eq!(
            SqlState::parse(b"57P01").map(|c| c.to_string()).as_deref(),
            Some("57P01")
        );
        assert_eq!(SqlState::parse(b"57p01"), None);
        assert_eq!(SqlState::parse(b"5701"), None);
        assert_eq!(SqlState::parse(b"\xff7P01"), None);
    }
}
