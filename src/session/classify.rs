//! What a statement does to a pooled session that pgcell cannot carry to
//! another backend, judged by its first words.

/// The kind of session state a statement leaves on its backend, judged by
/// its first words: what a transaction-mode backend switch would lose.
/// Settings are carried by the engine (`session::engine`) and do not
/// count.
pub fn session_state_kind(sql: &[u8]) -> Option<&'static str> {
    let head = &sql[..sql.len().min(4096)];
    if !may_leave_session_state(head) {
        return None;
    }
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    let text = strip_leading_comments(&text);
    let mut words = text
        .split(|c: char| c.is_ascii_whitespace() || c == ';' || c == '(')
        .filter(|w| !w.is_empty());
    let first = words.next()?;
    let second = words.next().unwrap_or("");
    let third = words.next().unwrap_or("");
    match first {
        "listen" => Some("listen"),
        "prepare" => Some("prepare"),
        "declare" if text.contains(" with hold") => Some("cursor_with_hold"),
        "create"
            if matches!(second, "temp" | "temporary")
                || (matches!(second, "local" | "global")
                    && matches!(third, "temp" | "temporary")) =>
        {
            Some("temp_table")
        }
        _ if text.contains("pg_advisory_lock") || text.contains("pg_try_advisory_lock") => {
            Some("advisory_lock")
        }
        _ => None,
    }
}

/// A cheap filter run on every statement before [`session_state_kind`]
/// looks closer (it lower-cases a copy): false when the statement neither
/// starts with a keyword that can leave session state nor mentions an
/// advisory lock. Statements starting with a comment take the close look.
fn may_leave_session_state(sql: &[u8]) -> bool {
    if crate::session::engine::mentions(sql, b"advisory_lock") {
        return true;
    }
    let start = sql
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(sql.len());
    let rest = &sql[start..];
    if rest.starts_with(b"--") || rest.starts_with(b"/*") {
        return true;
    }
    let word_end = rest
        .iter()
        .position(|b| !b.is_ascii_alphabetic())
        .unwrap_or(rest.len());
    let word = &rest[..word_end];
    [&b"listen"[..], b"prepare", b"declare", b"create"]
        .iter()
        .any(|k| word.eq_ignore_ascii_case(k))
}

fn strip_leading_comments(mut s: &str) -> &str {
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix("--") {
            s = rest.split_once('\n').map(|(_, r)| r).unwrap_or("");
        } else if let Some(rest) = s.strip_prefix("/*") {
            s = rest.split_once("*/").map(|(_, r)| r).unwrap_or("");
        } else {
            return s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_state_kinds() {
        for (sql, kind) in [
            ("LISTEN chan", Some("listen")),
            ("  -- c\n/* x */ prepare p as select 1", Some("prepare")),
            (
                "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
                Some("cursor_with_hold"),
            ),
            ("declare c cursor for select 1", None),
            ("CREATE TEMP TABLE t (a int)", Some("temp_table")),
            (
                "create global temporary table t (a int)",
                Some("temp_table"),
            ),
            ("create table t (a int)", None),
            ("SET search_path = x", None),
            ("SET LOCAL work_mem = '1MB'", None),
            ("set timezone = 'UTC'", None),
            ("select pg_advisory_lock(1)", Some("advisory_lock")),
            ("select pg_advisory_xact_lock(1)", None),
            ("select 1", None),
        ] {
            assert_eq!(session_state_kind(sql.as_bytes()), kind, "{sql}");
        }
    }
}
