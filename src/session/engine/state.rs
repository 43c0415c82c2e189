//! What a client's session is beyond its startup values, and what a
//! transaction may have done to it: the settings read back from a backend
//! and reset there ([`CAPTURE_AND_RESET`], [`RESET`]), replayed on the
//! next one ([`ClientSession`]), and the state that cannot be carried
//! ([`STATE_CHECK`]).

/// What a transaction did to the session, followed while a backend is
/// checked out.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SessionChanges {
    /// A statement or a `ParameterStatus` says settings may have changed:
    /// read them back and reset the backend before returning it.
    pub settings: bool,
    /// A statement pgcell could not judge ran: check the backend for
    /// state that cannot be carried ([`STATE_CHECK`]) before returning it.
    pub check_state: bool,
    /// A statement pgcell could not judge ran (`DO`, `CALL`, ...): it may
    /// have dropped the statements pgcell made on the backend.
    pub forget_statements: bool,
}

impl SessionChanges {
    /// Notes what a statement executed on the backend may have done.
    pub(crate) fn executed(&mut self, verdict: crate::sql::Verdict) {
        self.settings |= verdict.settings || verdict.unknown;
        self.check_state |= verdict.unknown || verdict.check_state;
        self.forget_statements |= verdict.unknown;
    }
}

/// Lists the session state a backend holds that a reset does not remove
/// and no client may inherit: one row (`pgcell:state`, kind) per kind.
/// Temporary objects of every kind (tables, functions, types, operators,
/// collations, text search objects, ...) depend on the temporary schema
/// in `pg_depend`, which is how PostgreSQL drops them at the session's
/// end.
/// Run, when asked for, in the same round trip as the settings read-back.
pub(crate) const STATE_CHECK: &str = "SELECT 'pgcell:state', s.k FROM (VALUES \
('temp_table', pg_catalog.pg_my_temp_schema() OPERATOR(pg_catalog.<>) 0 AND EXISTS (SELECT FROM pg_catalog.pg_depend \
WHERE refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_namespace'::pg_catalog.regclass \
AND refobjid OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema())), \
('cursor_with_hold', EXISTS (SELECT FROM pg_catalog.pg_cursors)), \
('prepare', EXISTS (SELECT FROM pg_catalog.pg_prepared_statements WHERE from_sql)), \
('listen', EXISTS (SELECT FROM pg_catalog.pg_listening_channels())), \
('advisory_lock', EXISTS (SELECT FROM pg_catalog.pg_locks WHERE locktype OPERATOR(pg_catalog.=) 'advisory' \
AND pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()))) AS s(k, held) WHERE s.held";

// pgcell's own queries name every function and operator by its schema
// (`OPERATOR(pg_catalog.=)`): a client may create an operator whose
// argument types match exactly (`<>(oid, int4)`), which PostgreSQL would
// pick over pg_catalog's (found by the third review).

/// The row name [`STATE_CHECK`] reports held state under.
const STATE_ROW: &str = "pgcell:state";

/// Read back what a client changed, then reset the backend to its login
/// state, in one round trip. Rows: (`name`, `value`): the session
/// authorization and the role first (they are replayed first: settings
/// may need the role's rights; the caller drops them when they are the
/// login user's and `none`), then every setting whose source is the
/// session, but the three of the current transaction
/// (`transaction_isolation`, `_read_only`, `_deferrable`): `SET
/// TRANSACTION` leaves their source at `session` after the transaction,
/// and `RESET ALL` does not touch them, so they would carry one client's
/// transaction into the next client's session (found by review). Values come as hex of their bytes in the database's encoding
/// ([`hex_value`]): the client's `client_encoding` (BIG5, SJIS) cannot
/// change them on the way, and replaying them is pure ASCII. For a client
/// that set custom (dotted) settings, see
/// [`CustomSettings::capture_and_reset`].
pub(crate) const CAPTURE_AND_RESET: &str = concat!(
    "SELECT 'session_authorization', \
pg_catalog.encode(pg_catalog.convert_to(pg_catalog.current_setting('session_authorization'), \
pg_catalog.getdatabaseencoding()), 'hex') \
UNION ALL SELECT 'role', pg_catalog.encode(pg_catalog.convert_to(pg_catalog.current_setting('role'), \
pg_catalog.getdatabaseencoding()), 'hex') \
UNION ALL SELECT name, pg_catalog.encode(pg_catalog.convert_to(pg_catalog.current_setting(name), \
pg_catalog.getdatabaseencoding()), 'hex') FROM pg_catalog.pg_settings \
WHERE source OPERATOR(pg_catalog.=) 'session' AND name OPERATOR(pg_catalog.<>) 'role' \
AND name OPERATOR(pg_catalog.<>) 'session_authorization' \
AND name OPERATOR(pg_catalog.<>) 'transaction_isolation' \
AND name OPERATOR(pg_catalog.<>) 'transaction_read_only' \
AND name OPERATOR(pg_catalog.<>) 'transaction_deferrable'",
    "; SET SESSION AUTHORIZATION DEFAULT; RESET ROLE; RESET ALL"
);

/// Where [`CAPTURE_AND_RESET`]'s read-back ends and its reset begins.
pub(super) const CAPTURE_END: usize = CAPTURE_AND_RESET.len() - RESET.len() - 2;

/// Most custom setting names followed per client; names beyond it are
/// not carried (docs/pooling.md lists the limit).
pub(crate) const MAX_CUSTOM_SETTINGS: usize = 64;

/// The custom settings (dotted names such as `myapp.tenant`) a client
/// may have set. PostgreSQL keeps such placeholders out of `pg_settings`,
/// so [`CAPTURE_AND_RESET`] cannot find them: their names are taken from
/// the client's `SET` statements and `set_config('…')` calls and read
/// back by name.
#[derive(Debug, Default, Clone)]
pub struct CustomSettings {
    names: Vec<String>,
}

impl CustomSettings {
    /// Notes the dotted setting names a statement sets (run only on
    /// statements judged to change settings).
    pub fn note(&mut self, sql: &[u8], dialect: crate::sql::Dialect) {
        crate::sql::verdict::custom_setting_names(sql, dialect, |name| self.add(name));
    }

    fn add(&mut self, name: String) {
        // Only names PostgreSQL accepts for a custom setting (identifier
        // parts of ASCII letters, digits, `_` and `$`, joined by dots): a
        // name is written into pgcell's own queries, and the client must
        // not be able to write into them.
        let part = |p: &str| {
            p.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
        };
        if !name.contains('.')
            || name.len() > 200
            || !name.split('.').all(part)
            || self.names.len() >= MAX_CUSTOM_SETTINGS
            || self.names.iter().any(|n| n.eq_ignore_ascii_case(&name))
        {
            return;
        }
        self.names.push(name);
    }

    /// The names noted so far.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// [`CAPTURE_AND_RESET`], also reading back the noted custom settings
    /// (those with a value on this backend: a name never set reads as
    /// NULL and yields no row).
    pub fn capture_and_reset(&self) -> std::borrow::Cow<'static, str> {
        if self.names.is_empty() {
            return CAPTURE_AND_RESET.into();
        }
        let values: Vec<String> = self
            .names
            .iter()
            .map(|n| format!("({})", quote(n)))
            .collect();
        format!(
            "{} UNION ALL SELECT c.n, pg_catalog.encode(pg_catalog.convert_to(\
pg_catalog.current_setting(c.n, true), pg_catalog.getdatabaseencoding()), 'hex') FROM (VALUES {}) AS c(n) \
WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_settings s \
WHERE pg_catalog.lower(s.name) OPERATOR(pg_catalog.=) pg_catalog.lower(c.n)){}",
            &CAPTURE_AND_RESET[..CAPTURE_END],
            values.join(", "),
            &CAPTURE_AND_RESET[CAPTURE_END..],
        )
        .into()
    }
}

/// Resets a backend to its login state (after a client whose session was
/// replayed on it changed nothing more).
pub(crate) const RESET: &str = "SET SESSION AUTHORIZATION DEFAULT; RESET ROLE; RESET ALL";

/// Turns the rows of [`CAPTURE_AND_RESET`] (and of [`STATE_CHECK`], when
/// it ran with it) into a client session and the kinds of session state
/// the backend holds; `user` is the user the backend logged in as. A
/// value that is not hex (never, from PostgreSQL) is left out.
pub(crate) fn captured(rows: Vec<(String, String)>, user: &str) -> (ClientSession, Vec<String>) {
    let mut held = Vec::new();
    let mut settings = Vec::new();
    for (name, value) in rows {
        if name == STATE_ROW {
            held.push(value);
            continue;
        }
        let Some(value) = hex_value(&value) else {
            continue;
        };
        let keep = match name.as_str() {
            "session_authorization" => value != user.as_bytes(),
            "role" => value != b"none",
            _ => true,
        };
        if keep {
            settings.push((name, value));
        }
    }
    (ClientSession { settings }, held)
}

/// The bytes of a value read back as hex.
fn hex_value(hex: &str) -> Option<Vec<u8>> {
    let digit = |b: u8| (b as char).to_digit(16);
    let bytes = hex.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks(2)
        .map(|pair| Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8))
        .collect()
}

/// The kinds of session state in rows of [`STATE_CHECK`].
pub(crate) fn held_state(rows: &[(String, String)]) -> Vec<String> {
    rows.iter()
        .filter(|(name, _)| name == STATE_ROW)
        .map(|(_, kind)| kind.clone())
        .collect()
}

/// Whether startup parameters set a `search_path` that names `pg_temp`
/// (as a parameter or in `options`): then a plain `CREATE TABLE` may make
/// a temporary table, and every checkin checks for one.
pub(crate) fn startup_searches_pg_temp(params: &[(String, String)]) -> bool {
    let names_pg_temp = |v: &str| v.to_ascii_lowercase().contains("pg_temp");
    params.iter().any(|(name, value)| match name.as_str() {
        "search_path" => names_pg_temp(value),
        "options" => crate::protocol::startup::option_settings(value)
            .iter()
            .any(|(n, v)| n == "search_path" && names_pg_temp(v)),
        _ => false,
    })
}

/// The session a client must see on every backend it gets, beyond its
/// startup values (which its backends log in with): the settings it
/// changed, as read back by [`CAPTURE_AND_RESET`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ClientSession {
    /// (name, value) in replay order; the value is its bytes in the
    /// database's encoding.
    pub settings: Vec<(String, Vec<u8>)>,
}

impl ClientSession {
    /// Whether its `search_path` names `pg_temp`: then a plain `CREATE
    /// TABLE` may create a temporary table, which no statement shows.
    pub(crate) fn searches_pg_temp(&self) -> bool {
        self.settings.iter().any(|(name, value)| {
            name == "search_path" && value.windows(7).any(|w| w.eq_ignore_ascii_case(b"pg_temp"))
        })
    }

    /// The value the client set for `name`, as read back.
    pub(crate) fn setting(&self, name: &str) -> Option<&[u8]> {
        self.settings
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Whether the client changed nothing (the common case: nothing to do
    /// on checkout).
    pub(crate) fn is_empty(&self) -> bool {
        self.settings.is_empty()
    }

    /// The statement that gives a freshly reset backend this session, or
    /// `None` when there is nothing to apply. Settings come first, while
    /// the backend still has its login user's privileges (a superuser's
    /// `session_replication_role`, say), then the session authorization
    /// and the role, which may drop them; [`Self::restore_query_role_first`]
    /// is the other order, for settings that need the role's privileges.
    pub(crate) fn restore_query(&self) -> Option<String> {
        self.restore(false)
    }

    /// [`Self::restore_query`] with the session authorization and the role
    /// first: tried when that one fails.
    pub(crate) fn restore_query_role_first(&self) -> Option<String> {
        self.restore(true)
    }

    fn restore(&self, identity_first: bool) -> Option<String> {
        if self.settings.is_empty() {
            return None;
        }
        let identity = |name: &str| name == "session_authorization" || name == "role";
        let mut ordered: Vec<&(String, Vec<u8>)> = self.settings.iter().collect();
        // Stable: within each group the read-back order stays (the session
        // authorization before the role).
        ordered.sort_by_key(|(name, _)| identity(name) != identity_first);
        let calls: Vec<String> = ordered
            .iter()
            .map(|(name, value)| {
                let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
                format!(
                    "pg_catalog.set_config({}, pg_catalog.convert_from(pg_catalog.decode('{hex}', 'hex'), \
pg_catalog.getdatabaseencoding()), false)",
                    quote(name),
                )
            })
            .collect();
        Some(format!("SELECT {}", calls.join(", ")))
    }
}

/// A string literal of `s` for pgcell's own queries: dollar-quoted, with a
/// tag `s` does not contain. No escape is read inside it whatever
/// `standard_conforming_strings` is, and `$` is never the second byte of
/// a character in any client encoding PostgreSQL has, so a value in the
/// client's encoding (BIG5, SJIS: where a backslash may be half of a
/// character) cannot end it early.
pub(crate) fn quote(s: &str) -> String {
    let mut n = 0u32;
    loop {
        let tag = if n == 0 {
            "$pgcell$".to_owned()
        } else {
            format!("$pgcell{n}$")
        };
        // The first occurrence of the tag after the opening one must be
        // the closing one.
        let body = format!("{s}{tag}");
        if body.find(&tag) == Some(s.len()) {
            return format!("{tag}{body}");
        }
        n += 1;
    }
}
