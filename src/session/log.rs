//! What a finished connection was ([`ConnectionLog`]), gathered while it
//! runs for the one line logged at its end.

use super::relay::RelayBytes;
use crate::protocol::startup::StartupMessage;
use crate::tenant::ClientInfo;

/// What a finished connection was, for its log line.
#[derive(Debug, Default)]
pub(super) struct ConnectionLog {
    pub(super) tenant: Option<String>,
    /// The user and database, as routed (the tenant's part taken off), or
    /// as the client sent them when it was refused before routing.
    pub(super) user: Option<String>,
    pub(super) database: Option<String>,
    pub(super) client: Option<ClientInfo>,
    pub(super) bytes: RelayBytes,
}

/// Notes the user and database a startup message names (PostgreSQL's
/// default database is the user's name).
pub(super) fn note_login(log: &mut ConnectionLog, startup: &StartupMessage) {
    let user = startup.get("user").unwrap_or_default();
    log.database = Some(startup.get("database").unwrap_or(user).to_owned());
    log.user = Some(user.to_owned());
}
