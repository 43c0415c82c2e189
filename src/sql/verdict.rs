//! What a statement may do to the session of the backend it runs on,
//! judged from its tokens ([`super::lexer`]), every statement of a text.
//!
//! The judgement errs on the safe side: a statement whose leading words
//! are not known here is [`Verdict::unknown`], and the pooled session then
//! reads its settings back and checks the backend for state before it
//! returns it to the pool.

use super::lexer::{identifier, plain_string, Dialect, Item, Splitter, Token};

/// What a text's statements may do to a session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Verdict {
    /// May change settings (`SET`, `RESET`, `set_config`, `SET ROLE`,
    /// `UPDATE pg_settings`, ...): read them back when the transaction
    /// ends.
    pub settings: bool,
    /// Leaves state on the backend that cannot be carried to another one
    /// (the first kind found).
    pub state: Option<StateKind>,
    /// A statement this judgement does not understand (or one that runs
    /// arbitrary code: `DO`, `CALL`, `EXECUTE`, `EXPLAIN ANALYZE`): read
    /// settings back and check the backend for state.
    pub unknown: bool,
    /// `DISCARD ALL` or `DEALLOCATE ALL`: every prepared statement on the
    /// backend goes (its `CommandComplete` says when).
    pub drops_statements: bool,
    /// May make session state that no statement names: `set_config` of a
    /// name pgcell cannot read, or of `search_path` to a value it cannot
    /// read (`'pg_' || 'temp'`, a parameter: a plain `CREATE TABLE` then
    /// makes a temporary table). Check the backend for state.
    pub check_state: bool,
    /// `EXECUTE`, `DEALLOCATE` or `PREPARE` of a name in pgcell's own
    /// namespace (`pgcell_...`): another client's statement on a shared
    /// backend, which this client must not reach.
    pub foreign_statement: bool,
}

impl Verdict {
    /// Both verdicts at once (a transaction that ran both statements).
    pub fn merge(self, other: Verdict) -> Verdict {
        Verdict {
            settings: self.settings || other.settings,
            state: self.state.or(other.state),
            unknown: self.unknown || other.unknown,
            drops_statements: self.drops_statements || other.drops_statements,
            check_state: self.check_state || other.check_state,
            foreign_statement: self.foreign_statement || other.foreign_statement,
        }
    }

    /// Changes nothing of the session (the common case).
    pub fn is_quiet(&self) -> bool {
        *self == Verdict::default()
    }

    /// What is judged of text that cannot be read reliably.
    fn anything() -> Verdict {
        Verdict {
            settings: true,
            state: None,
            unknown: true,
            drops_statements: true,
            check_state: true,
            foreign_statement: false,
        }
    }
}

/// Session state that cannot be carried from one backend to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateKind {
    /// `LISTEN`.
    Listen,
    /// SQL `PREPARE`.
    Prepare,
    /// `DECLARE ... WITH HOLD`.
    CursorWithHold,
    /// A temporary table, view, sequence or function (`CREATE TEMP`,
    /// `SELECT ... INTO TEMP`, anything naming `pg_temp`).
    TempObject,
    /// A session-level advisory lock.
    AdvisoryLock,
    /// `LOAD`: a library loaded into the backend.
    Load,
}

impl StateKind {
    /// The metric label (`pgcell_session_state_total{kind}`).
    pub fn label(self) -> &'static str {
        match self {
            StateKind::Listen => "listen",
            StateKind::Prepare => "prepare",
            StateKind::CursorWithHold => "cursor_with_hold",
            StateKind::TempObject => "temp_table",
            StateKind::AdvisoryLock => "advisory_lock",
            StateKind::Load => "load",
        }
    }
}

/// Statements that leave nothing on the session beyond their transaction.
const HARMLESS: &[&str] = &[
    "select",
    "with",
    "values",
    "table",
    "insert",
    "update",
    "delete",
    "merge",
    "begin",
    "start",
    "commit",
    "end",
    "rollback",
    "abort",
    "savepoint",
    "release",
    "copy",
    "fetch",
    "move",
    "close",
    "show",
    "alter",
    "drop",
    "grant",
    "revoke",
    "truncate",
    "comment",
    "analyze",
    "analyse",
    "vacuum",
    "lock",
    "notify",
    "unlisten",
    "checkpoint",
    "reindex",
    "cluster",
    "refresh",
    "security",
    "import",
    "reassign",
];

/// Functions that take a session-level advisory lock.
const ADVISORY: &[&str] = &[
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
];

fn is(token: Option<Token<'_>>, word: &str) -> bool {
    matches!(token, Some(Token::Word(w)) if w.eq_ignore_ascii_case(word.as_bytes()))
}

/// An identifier (unquoted in any case, or quoted exactly) equal to a
/// lower-case name: `"set_config"(...)` calls the function too.
fn names(token: Token<'_>, name: &str) -> bool {
    match token {
        Token::Word(w) => w.eq_ignore_ascii_case(name.as_bytes()),
        Token::Quoted(q) => q == name.as_bytes(),
        _ => false,
    }
}

/// `pg_temp`, `pg_temp_<n>` or `pg_toast_temp_<n>`, in any case.
fn temporary_schema(name: &[u8]) -> bool {
    let numbered = |prefix: &[u8]| {
        name.len() > prefix.len()
            && name[..prefix.len()].eq_ignore_ascii_case(prefix)
            && name[prefix.len()..].iter().all(u8::is_ascii_digit)
    };
    name.eq_ignore_ascii_case(b"pg_temp") || numbered(b"pg_temp_") || numbered(b"pg_toast_temp_")
}

/// One statement as it is read.
#[derive(Default)]
struct Statement<'a> {
    /// Its first tokens, after any opening parentheses.
    head: [Option<Token<'a>>; 6],
    len: usize,
    previous: Option<Token<'a>>,
    /// Mentions `set_config` or `pg_settings`.
    settings: bool,
    state: Option<StateKind>,
    /// `INTO TEMP` (or `INTO LOCAL/GLOBAL TEMP`).
    into_temp: bool,
    /// `WITH HOLD`.
    with_hold: bool,
    /// The word `ANALYZE` anywhere (EXPLAIN runs the statement then).
    analyze: bool,
    /// Names a statement in pgcell's namespace.
    foreign: bool,
    /// Has a `U&` identifier or string.
    unicode: bool,
    /// Where a `set_config` call's arguments have been read to.
    set_config: SetConfigArgs,
    /// A `set_config` whose effect pgcell cannot read.
    opaque_set_config: bool,
}

/// Reading `set_config ( name , value ...`.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum SetConfigArgs {
    /// Not in a call.
    #[default]
    Outside,
    /// After `set_config`: `(` next.
    Open,
    /// After `(`: the name next.
    Name,
    /// After a plain literal name other than `search_path`: `,` next.
    NameEnd,
    /// After a plain literal `search_path`: `,` next.
    SearchPathComma,
    /// After `search_path ,`: the value next.
    SearchPathValue,
    /// After a plain literal value: `,` or `)` next.
    ValueEnd,
}

impl<'a> Statement<'a> {
    fn token(&mut self, token: Token<'a>) {
        if self.len == 0 && token == Token::Punct(b'(') {
            return;
        }
        self.follow_set_config(token);
        if let Some(slot) = self.head.get_mut(self.len) {
            *slot = Some(token);
        }
        self.len += 1;
        match token {
            Token::Word(_) | Token::Quoted(_) => self.identifier(token),
            // `U&"set\005fconfig"` calls set_config: a name pgcell cannot
            // read may be any name.
            Token::Unicode(_) => {
                self.unicode = true;
                if ["execute", "deallocate", "prepare"]
                    .iter()
                    .any(|k| is(self.previous, k))
                {
                    self.foreign = true;
                }
            }
            // `SET search_path = 'pg_temp'` makes CREATE TABLE temporary.
            Token::Str { body, .. }
                if body.len() >= 7
                    && body.windows(7).any(|w| w.eq_ignore_ascii_case(b"pg_temp")) =>
            {
                self.state.get_or_insert(StateKind::TempObject);
            }
            _ => {}
        }
        self.previous = Some(token);
    }

    /// Reads the first arguments of `set_config`: a name that is not a
    /// plain literal, or `search_path` set to a value that is not one,
    /// may leave state no statement names.
    fn follow_set_config(&mut self, token: Token<'a>) {
        use SetConfigArgs::*;
        self.set_config = match (self.set_config, token) {
            (_, t @ (Token::Word(_) | Token::Quoted(_))) if names(t, "set_config") => Open,
            (Open, Token::Punct(b'(')) => Name,
            // A literal read the same whatever its escapes: no backslash.
            (Name, Token::Str { body, .. }) if !body.contains(&b'\\') => {
                if body.eq_ignore_ascii_case(b"search_path") {
                    SearchPathComma
                } else {
                    NameEnd
                }
            }
            (NameEnd, Token::Punct(b',')) => Outside,
            (SearchPathComma, Token::Punct(b',')) => SearchPathValue,
            (SearchPathValue, Token::Str { body, .. }) if !body.contains(&b'\\') => ValueEnd,
            (ValueEnd, Token::Punct(b',' | b')')) => Outside,
            (Name | NameEnd | SearchPathComma | SearchPathValue | ValueEnd, _) => {
                self.opaque_set_config = true;
                Outside
            }
            _ => Outside,
        };
    }

    fn identifier(&mut self, token: Token<'a>) {
        let (Token::Word(w) | Token::Quoted(w)) = token else {
            return;
        };
        if w.len() > 7
            && w[..7].eq_ignore_ascii_case(b"pgcell_")
            && ["execute", "deallocate", "prepare"]
                .iter()
                .any(|k| is(self.previous, k))
        {
            self.foreign = true;
        }
        // Most identifiers are none of these: a length check each.
        match w.len() {
            10 | 11 if names(token, "set_config") || names(token, "pg_settings") => {
                self.settings = true;
            }
            // `pg_temp`, and the temporary schemas by their own names
            // (`pg_temp_3`, `pg_toast_temp_3`).
            n if n >= 7 && temporary_schema(w) => {
                self.state.get_or_insert(StateKind::TempObject);
            }
            16 | 20 | 23 | 27 if ADVISORY.iter().any(|n| names(token, n)) => {
                self.state.get_or_insert(StateKind::AdvisoryLock);
            }
            4..=9 => {
                if is(self.previous, "into")
                    && ["temp", "temporary", "local", "global"]
                        .iter()
                        .any(|k| is(Some(token), k))
                {
                    self.into_temp = true;
                } else if is(self.previous, "with") && is(Some(token), "hold") {
                    self.with_hold = true;
                } else if is(Some(token), "analyze") || is(Some(token), "analyse") {
                    self.analyze = true;
                }
            }
            _ => {}
        }
    }

    fn verdict(&self) -> Verdict {
        let mut v = Verdict {
            settings: self.settings,
            state: self.state,
            foreign_statement: self.foreign,
            unknown: self.unicode,
            check_state: self.opaque_set_config,
            ..Verdict::default()
        };
        let [h0, h1, h2, h3, h4, _] = self.head;
        let Some(Token::Word(first)) = h0 else {
            v.unknown = true;
            return v;
        };
        let first = |k: &str| first.eq_ignore_ascii_case(k.as_bytes());
        if first("select") || first("with") {
            if self.into_temp {
                v.state.get_or_insert(StateKind::TempObject);
            }
        } else if first("create") {
            // CREATE [OR REPLACE] [LOCAL | GLOBAL] TEMP | TEMPORARY ...
            let (a, b) = if is(h1, "or") && is(h2, "replace") {
                (h3, h4)
            } else {
                (h1, h2)
            };
            let temp = |t| is(t, "temp") || is(t, "temporary");
            if temp(a) || ((is(a, "local") || is(a, "global")) && temp(b)) {
                v.state.get_or_insert(StateKind::TempObject);
            }
        } else if first("set") {
            // `SET LOCAL x`, `SET TRANSACTION …`, `SET CONSTRAINTS …` last
            // the transaction; `SET local.x` is a custom setting of the
            // session (found by review).
            let scoped = is(h1, "local") || is(h1, "transaction") || is(h1, "constraints");
            if !scoped || h2 == Some(Token::Punct(b'.')) {
                v.settings = true;
            }
        } else if first("reset") {
            v.settings = true;
        } else if first("discard") {
            v.settings = true;
            v.drops_statements = is(h1, "all");
        } else if first("deallocate") {
            v.drops_statements = is(h1, "all") || (is(h1, "prepare") && is(h2, "all"));
        } else if first("listen") {
            v.state.get_or_insert(StateKind::Listen);
        } else if first("prepare") {
            // PREPARE TRANSACTION 'gid' is two-phase commit.
            if !(is(h1, "transaction") && matches!(h2, Some(Token::Str { .. }))) {
                v.state.get_or_insert(StateKind::Prepare);
            }
        } else if first("declare") {
            if self.with_hold {
                v.state.get_or_insert(StateKind::CursorWithHold);
            }
        } else if first("load") {
            v.settings = true;
            v.state.get_or_insert(StateKind::Load);
        } else if first("explain") {
            v.unknown |= self.analyze;
        } else if first("do")
            || first("call")
            || first("execute")
            || !HARMLESS.iter().any(|k| first(k))
        {
            // Runs code pgcell cannot see, or is not known here.
            v.unknown = true;
        }
        v
    }
}

/// Judges every statement of `sql` (a `Query` body or a `Parse`'s query
/// text), as the backend will read it with `dialect` or with the other
/// `standard_conforming_strings`: a message pipelined behind a `SET` of
/// it is read by the backend with a value pgcell has not seen yet, so a
/// text with a backslash is judged both ways. A backslash in a text with
/// bytes above 0x7F may be the second byte of a multi-byte character
/// (SJIS, BIG5, GBK, JOHAB: what the backend reads after converting the
/// client's encoding): such a text is judged as anything.
pub fn judge(sql: &[u8], dialect: Dialect) -> Verdict {
    if dialect.unsafe_encoding {
        return Verdict::anything();
    }
    if !sql.contains(&b'\\') {
        return judge_read_as(sql, dialect);
    }
    if sql.iter().any(|&b| b >= 0x80) {
        return Verdict::anything();
    }
    let other = Dialect {
        backslash_escapes: !dialect.backslash_escapes,
        ..dialect
    };
    judge_read_as(sql, dialect).merge(judge_read_as(sql, other))
}

fn judge_read_as(sql: &[u8], dialect: Dialect) -> Verdict {
    let mut verdict = Verdict::default();
    let mut statement = Statement::default();
    for item in Splitter::new(sql, dialect) {
        match item {
            Item::Token(token) => statement.token(token),
            Item::End(_) | Item::Inner => {
                verdict = verdict.merge(statement.verdict());
                statement = Statement::default();
            }
        }
    }
    verdict
}

/// Whether the statements of `texts` (a `Query`'s, or the `Parse`s of one
/// pipeline up to its `Sync`, in order) make one read-only transaction:
/// the first opens a transaction `READ ONLY` (or any transaction is read
/// only, `default_read_only`, and the first does not open one `READ
/// WRITE`), and no statement ends it, opens another, changes the access
/// mode, or runs code that could (`DO`, `CALL`, statements pgcell does not
/// know). Only then may the whole of it run on a replica.
pub(crate) fn one_read_only_transaction(
    texts: &[&[u8]],
    dialect: Dialect,
    default_read_only: bool,
) -> bool {
    let mut first = true;
    // A statement ended the transaction: nothing may follow.
    let mut ended = false;
    for text in texts {
        if dialect.unsafe_encoding || text.contains(&b'\\') {
            return false;
        }
        let mut words: Vec<&[u8]> = Vec::new();
        let mut other = false;
        for item in Splitter::new(text, dialect) {
            match item {
                // A quoted identifier names a setting as well as a bare
                // one (`SET "transaction_read_only" = off`).
                Item::Token(Token::Word(w) | Token::Quoted(w)) => {
                    if NEEDS_PRIMARY
                        .iter()
                        .any(|n| w.eq_ignore_ascii_case(n.as_bytes()))
                    {
                        return false;
                    }
                    if words.len() < 16 {
                        words.push(w);
                    }
                }
                // `U&"…"` may spell any name: not judged.
                Item::Token(Token::Unicode(_)) => return false,
                Item::Token(_) => other = true,
                Item::Inner => return false,
                Item::End(_) => {
                    if !words.is_empty() || other {
                        if ended {
                            return false;
                        }
                        match statement_keeps_read_only(&words, first, default_read_only) {
                            Some(ends) => ended = ends,
                            None => return false,
                        }
                        first = false;
                    }
                    words.clear();
                    other = false;
                }
            }
        }
    }
    !first
}

/// Names of statements and functions that a read-only transaction may
/// use on a primary but not on a hot standby: a transaction that names
/// one anywhere stays on the primary.
const NEEDS_PRIMARY: &[&str] = &[
    "notify",
    "listen",
    "unlisten",
    "pg_notify",
    "txid_current",
    "pg_current_xact_id",
    // No serializable transactions on a hot standby, however they are
    // asked for (a quoted value is not a word: the setting's name is).
    "serializable",
    "transaction_isolation",
    "default_transaction_isolation",
];

/// One statement of [`one_read_only_transaction`], by its first words:
/// `Some(ends)` when it keeps the transaction read only (`ends`: it is
/// the `COMMIT` / `ROLLBACK` that closes it), `None` when it does not.
fn statement_keeps_read_only(
    words: &[&[u8]],
    first: bool,
    default_read_only: bool,
) -> Option<bool> {
    let is = |i: usize, k: &str| {
        words
            .get(i)
            .is_some_and(|w| w.eq_ignore_ascii_case(k.as_bytes()))
    };
    let any = |k: &str| words.iter().any(|w| w.eq_ignore_ascii_case(k.as_bytes()));
    let opens = is(0, "begin") || (is(0, "start") && is(1, "transaction"));
    if first && opens {
        let read_only = if any("only") && any("read") {
            !any("write")
        } else {
            !any("write") && default_read_only
        };
        return read_only.then_some(false);
    }
    if first && !default_read_only {
        return None;
    }
    if opens || (is(0, "prepare") && is(1, "transaction")) {
        return None;
    }
    // What closes the transaction: the last statement it may be.
    let ends =
        is(0, "commit") || is(0, "end") || is(0, "abort") || (is(0, "rollback") && !is(1, "to"));
    let mode = (is(0, "set") || is(0, "reset"))
        && (any("characteristics")
            || any("transaction")
            || any("default_transaction_read_only")
            || any("transaction_read_only")
            || any("all")
            || any("session"))
        || is(0, "discard")
        || any("set_config");
    let code = is(0, "do") || is(0, "call") || is(0, "execute") || words.is_empty();
    if mode || code || (ends && any("chain")) {
        return None;
    }
    Some(ends)
}

/// What a `FunctionCall` message may do: anything (it names a function by
/// its OID, `set_config` or `pg_advisory_lock` among them).
pub(crate) fn function_call() -> Verdict {
    Verdict {
        settings: true,
        state: None,
        unknown: true,
        drops_statements: false,
        check_state: true,
        foreign_statement: false,
    }
}

/// The custom (dotted) setting names `sql` sets by name: `SET [SESSION]
/// a.b` and `set_config('a.b', ...)` with a plain literal.
pub fn custom_setting_names(sql: &[u8], dialect: Dialect, mut found: impl FnMut(String)) {
    names_read_as(sql, dialect, &mut found);
    if sql.contains(&b'\\') {
        let other = Dialect {
            backslash_escapes: !dialect.backslash_escapes,
            ..dialect
        };
        names_read_as(sql, other, &mut found);
    }
}

fn names_read_as(sql: &[u8], dialect: Dialect, found: &mut impl FnMut(String)) {
    let mut index = 0usize;
    let mut set_name: Option<String> = None;
    let mut in_set = false;
    let mut previous: [Option<Token<'_>>; 2] = [None, None];
    for item in Splitter::new(sql, dialect) {
        let token = match item {
            Item::End(_) | Item::Inner => {
                if let Some(name) = set_name.take() {
                    found(name);
                }
                index = 0;
                in_set = false;
                previous = [None, None];
                continue;
            }
            Item::Token(token) => token,
        };
        match index {
            0 => in_set = is(Some(token), "set"),
            1 if in_set && is(Some(token), "session") => {}
            _ if in_set => {
                let wants_part = set_name.as_deref().is_some_and(|n| n.ends_with('.'));
                match (set_name.is_some(), wants_part, token) {
                    // `local` may be `SET LOCAL` or the start of
                    // `local.x`: the next token tells.
                    (false, _, t) => match identifier(t) {
                        Some(name) => set_name = Some(name),
                        None => in_set = false,
                    },
                    (true, false, Token::Punct(b'.')) => {
                        if let Some(name) = set_name.as_mut() {
                            name.push('.');
                        }
                    }
                    (true, true, t) => match (identifier(t), set_name.as_mut()) {
                        (Some(part), Some(name)) => name.push_str(&part),
                        _ => {
                            set_name = None;
                            in_set = false;
                        }
                    },
                    (true, false, _) => {
                        // The name is complete (`local` alone was the
                        // keyword of `SET LOCAL`: transaction-scoped).
                        if let Some(name) = set_name.take() {
                            if !name.eq_ignore_ascii_case("local") {
                                found(name);
                            }
                        }
                        in_set = false;
                    }
                }
            }
            _ => {}
        }
        // set_config ( 'name'
        if let [Some(call), Some(Token::Punct(b'('))] = previous {
            if names(call, "set_config") {
                if let Some(name) = plain_string(token) {
                    found(name);
                }
            }
        }
        previous = [previous[1], Some(token)];
        index += 1;
    }
    if let Some(name) = set_name {
        found(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(sql: &str) -> Verdict {
        judge(sql.as_bytes(), Dialect::default())
    }

    fn state(sql: &str) -> Option<&'static str> {
        v(sql).state.map(StateKind::label)
    }

    #[test]
    fn set_config_that_may_hide_a_temporary_schema_asks_for_a_check() {
        for sql in [
            "select set_config('search_path', 'pg_'||'temp', true)",
            "select set_config('search_path', $1, true); create table t (a int)",
            "select set_config($1, 'pg_temp', true)",
            "select set_config('SEARCH_PATH', E'pg\\x5ftemp', true)",
            "select pg_catalog.set_config(name, 'x', false) from t",
        ] {
            assert!(v(sql).check_state, "{sql}");
        }
        for sql in [
            "select set_config('myapp.tenant', $1, false)",
            "select set_config('search_path', 'a, public', false)",
            "select 1",
        ] {
            assert!(!v(sql).check_state, "{sql}");
        }
    }

    #[test]
    fn custom_settings_named_like_scoping_key_words_are_the_sessions() {
        for sql in [
            "set local.x = 'a'",
            "SET transaction.x = 1",
            "set constraints.y to 2",
            "set session local.x = 1",
        ] {
            assert!(v(sql).settings, "{sql}");
        }
        assert!(!v("SET LOCAL work_mem = '1MB'").settings);
        assert!(!v("SET TRANSACTION READ ONLY").settings);
        let mut names = Vec::new();
        custom_setting_names(
            b"set local.x = 1; SET LOCAL myapp.y = 2; set session local.z = 3; set transaction.t = 4",
            Dialect::default(),
            |n| names.push(n),
        );
        assert_eq!(names, ["local.x", "local.z", "transaction.t"]);
    }

    #[test]
    fn only_one_read_only_transaction_may_go_to_a_replica() {
        let d = Dialect::default();
        let one = |texts: &[&str], default: bool| {
            let texts: Vec<&[u8]> = texts.iter().map(|t| t.as_bytes()).collect();
            one_read_only_transaction(&texts, d, default)
        };
        assert!(one(&["BEGIN READ ONLY; SELECT 1; COMMIT"], false));
        assert!(one(&["BEGIN READ ONLY", "SELECT 1", "COMMIT"], false));
        assert!(one(&["SELECT 1"], true));
        assert!(one(&["BEGIN; SELECT 1; END"], true));
        assert!(!one(&["SELECT 1"], false));
        assert!(!one(
            &["BEGIN READ ONLY; COMMIT; INSERT INTO t VALUES (1)"],
            false
        ));
        assert!(!one(
            &["BEGIN READ ONLY", "COMMIT", "INSERT INTO t VALUES (1)"],
            false
        ));
        assert!(!one(
            &["BEGIN READ ONLY; ROLLBACK; BEGIN; INSERT INTO t VALUES (1); COMMIT"],
            false
        ));
        assert!(!one(&["BEGIN READ ONLY READ WRITE"], false));
        assert!(!one(&["BEGIN READ WRITE; SELECT 1"], true));
        assert!(!one(&["SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE; COMMIT; INSERT INTO t VALUES (1)"], true));
        assert!(!one(
            &["SELECT 1; SET default_transaction_read_only = off"],
            true
        ));
        assert!(!one(&["SELECT 1; CALL p()"], true));
        assert!(!one(
            &["BEGIN READ ONLY; SELECT set_config('default_transaction_read_only', 'off', false)"],
            false
        ));
        assert!(one(
            &["BEGIN READ ONLY; SAVEPOINT a; SELECT 1; ROLLBACK TO a; COMMIT"],
            false
        ));
        assert!(!one(&[], true));
        // Found by review: a quoted setting name, what a standby cannot
        // run, serializable.
        assert!(!one(
            &["BEGIN READ ONLY; SET \"transaction_read_only\" = off; COMMIT"],
            false
        ));
        assert!(!one(
            &["BEGIN READ ONLY; SET U&\"transaction_read_only\" = off"],
            false
        ));
        assert!(!one(&["BEGIN READ ONLY; NOTIFY chan; COMMIT"], false));
        assert!(!one(
            &["BEGIN READ ONLY; SELECT 1, pg_notify('c', 'x')"],
            false
        ));
        assert!(!one(&["SELECT txid_current()"], true));
        assert!(!one(
            &["BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE; SELECT 1; COMMIT"],
            false
        ));
        assert!(one(
            &["BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT 'notify'; COMMIT"],
            false
        ));
        assert!(!one(
            &["BEGIN READ ONLY; SET LOCAL transaction_isolation = 'serializable'; SELECT 1; COMMIT"],
            false
        ));
        assert!(!one(
            &["SET default_transaction_isolation = $$serializable$$"],
            true
        ));
    }

    #[test]
    fn settings_statements() {
        for (sql, changes) in [
            ("SET search_path = a", true),
            ("  /* x */ -- y\n set role r", true),
            ("SET LOCAL work_mem = '1MB'", false),
            ("set transaction isolation level serializable", false),
            ("SET CONSTRAINTS ALL DEFERRED", false),
            ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", true),
            ("RESET ALL", true),
            ("discard all", true),
            ("select pg_catalog.set_config('a.b', 'c', false)", true),
            ("select \"set_config\"('a.b', 'c', false)", true),
            (
                "UPDATE pg_settings SET setting = '1MB' WHERE name = 'work_mem'",
                true,
            ),
            ("SELECT 1", false),
            ("UPDATE t SET a = 1", false),
            ("BEGIN; SET ROLE r; COMMIT", true),
            ("begin;set local work_mem = 1", false),
            ("select 1; set role r", true),
            ("select 'x;'; /* ; */ set role r", true),
            ("SELECT 'a;b'", false),
            ("SELECT 'set role r'", false),
            ("SELECT $$; set role r; $$", false),
            ("(SELECT 1)", false),
            ("", false),
            ("LOAD 'plpgsql'", true),
        ] {
            assert_eq!(v(sql).settings, changes, "{sql}");
        }
    }

    #[test]
    fn state_statements() {
        for (sql, kind) in [
            ("LISTEN chan", Some("listen")),
            ("select 1; listen chan", Some("listen")),
            ("  -- c\n/* x */ prepare p as select 1", Some("prepare")),
            ("PREPARE TRANSACTION 'gid'", None),
            ("prepare transaction as select 1", Some("prepare")),
            (
                "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
                Some("cursor_with_hold"),
            ),
            ("declare c cursor without hold for select 1", None),
            ("declare c cursor for select 1", None),
            ("CREATE TEMP TABLE t (a int)", Some("temp_table")),
            (
                "create global temporary table t (a int)",
                Some("temp_table"),
            ),
            (
                "create or replace temp view v as select 1",
                Some("temp_table"),
            ),
            ("create table pg_temp.t (a int)", Some("temp_table")),
            (
                "create or replace local temp view v as select 1",
                Some("temp_table"),
            ),
            ("set search_path = 'pg_temp', public", Some("temp_table")),
            ("select 1 into temp t", Some("temp_table")),
            ("select 1 into local temporary t", Some("temp_table")),
            ("select 1 into t", None),
            (
                "begin; create temp table s2 as select 1; commit",
                Some("temp_table"),
            ),
            ("create table t (a int)", None),
            ("select pg_advisory_lock(1)", Some("advisory_lock")),
            ("select \"pg_try_advisory_lock\"(1)", Some("advisory_lock")),
            ("select pg_advisory_xact_lock(1)", None),
            ("select 'pg_advisory_lock(1)'", None),
            ("select 1 -- listen x", None),
            ("select 1", None),
        ] {
            assert_eq!(state(sql), kind, "{sql}");
        }
    }

    #[test]
    fn unknown_statements_are_on_the_safe_side() {
        for (sql, unknown) in [
            ("DO $$ BEGIN PERFORM 1; END $$", true),
            ("call p()", true),
            ("execute p", true),
            ("explain select 1", false),
            ("explain analyze select 1", true),
            (
                "explain (analyze, costs off) create table t as select 1",
                true,
            ),
            ("frobnicate", true),
            ("select 1; frobnicate", true),
            ("$1", true),
            ("select 1", false),
            ("vacuum t", false),
        ] {
            assert_eq!(v(sql).unknown, unknown, "{sql}");
        }
        let odd = Dialect {
            unsafe_encoding: true,
            ..Dialect::default()
        };
        assert!(judge(b"select 1", odd).unknown);
        // A backslash after a byte above 0x7F may belong to a character.
        assert!(judge(b"select E'\x83\\'; listen x; --'", Dialect::default()).unknown);
        // An atomic body taken for one hides nothing: the judge splits at
        // every `;`.
        assert!(
            v("create function f(begin atomic) returns int language sql as 'select 1'; set role r")
                .settings
        );
        assert!(
            v("create function f() returns int language sql begin atomic select 1; end; set role r")
                .settings
        );
        assert!(
            v("create function f() begin atomic select 1; listen x; end")
                .state
                .is_some()
        );
    }

    #[test]
    fn a_backslash_is_read_both_ways() {
        // With standard_conforming_strings on, the string ends at the
        // second quote; off (a SET pipelined before it), it runs on.
        for sql in [
            "select 'a\\'; listen x; --'",
            "select 'a\\' , pg_advisory_lock(1) --'",
        ] {
            assert!(v(sql).state.is_some(), "{sql}");
            let off = Dialect {
                backslash_escapes: true,
                ..Dialect::default()
            };
            assert!(judge(sql.as_bytes(), off).state.is_some(), "{sql}");
        }
    }

    #[test]
    fn unicode_escapes_and_temporary_schemas_by_name() {
        // Found by review: U& escapes hide any name.
        for sql in [
            "SELECT U&\"set\\005fconfig\"('role', 'r1', false)",
            "UPDATE U&\"pg\\005fsettings\" SET setting = 'x' WHERE name = 'search_path'",
            "SELECT U&\"pg\\005fadvisory\\005flock\"(42)",
            "SET search_path = U&'pg\\005ftemp'",
        ] {
            assert!(v(sql).unknown, "{sql}");
        }
        assert!(v("EXECUTE U&\"pgcell\\005f1\"('y')").foreign_statement);
        assert!(v("deallocate U&\"pgcell\\005f1\"").foreign_statement);
        for sql in [
            "CREATE TABLE pg_temp_3.leak (a int)",
            "create table PG_TOAST_TEMP_3.x (a int)",
            "insert into \"pg_temp_12\".t values (1)",
        ] {
            assert_eq!(state(sql), Some("temp_table"), "{sql}");
        }
        assert_eq!(state("select pg_temporary_thing()"), None);
    }

    #[test]
    fn statements_in_pgcells_namespace() {
        for (sql, foreign) in [
            ("EXECUTE pgcell_3(1)", true),
            ("deallocate PGCELL_3", true),
            ("deallocate prepare pgcell_3", true),
            ("create table t as execute pgcell_3", true),
            ("explain analyze execute \"pgcell_3\"", true),
            ("execute mine", false),
            ("select pgcell_3", false),
            ("select 'execute pgcell_3'", false),
        ] {
            assert_eq!(v(sql).foreign_statement, foreign, "{sql}");
        }
    }

    #[test]
    fn dropping_statements() {
        assert!(v("DISCARD ALL").drops_statements);
        assert!(v("select 1; deallocate all").drops_statements);
        assert!(v("DEALLOCATE PREPARE ALL").drops_statements);
        assert!(!v("DEALLOCATE p").drops_statements);
        assert!(!v("discard temp").drops_statements);
        assert!(!v("select 'deallocate all'").drops_statements);
    }

    #[test]
    fn custom_setting_names_from_statements() {
        let mut names = Vec::new();
        for sql in [
            "SET myapp.tenant = 'a'; set Session App.\"User Id\" TO 1",
            "SELECT pg_catalog.set_config( 'x.y', $1, false), set_config('plain', 'v', false)",
            "SET search_path = a; SET LOCAL l.m = 1; SET MYAPP.TENANT = 'b'",
            "select set_config(E'e.f', '1', false), set_config('g''h.i', '1', false)",
            "select 'set a.b = 1'",
        ] {
            custom_setting_names(sql.as_bytes(), Dialect::default(), |n| names.push(n));
        }
        assert_eq!(
            names,
            [
                "myapp.tenant",
                "app.User Id",
                "x.y",
                "plain",
                "search_path",
                "myapp.tenant",
                "e.f",
                "g'h.i"
            ]
        );
    }
}
