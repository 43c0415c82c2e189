//! The SQL reader (`pgcell::sql`): the lexer, the statement split and the
//! verdict, on any bytes (a `Query` body or a `Parse`'s query text comes
//! from the client as bytes, in whatever encoding).
//!
//! For both `standard_conforming_strings` settings it checks:
//!
//! - nothing panics (`Lexer`, `Splitter`, `statements`, `judge`,
//!   `custom_setting_names`, `identifier`, `plain_string`);
//! - the pieces `statements` returns are consecutive and together are the
//!   input, byte for byte;
//! - token offsets increase strictly, each token starts where the previous
//!   one ended or later and ends within the text (up to a NUL), and the
//!   slices a token borrows lie inside it; the `Splitter`'s statement
//!   ends increase and lie within the text;
//! - a piece is a complete statement on its own: lexing each piece alone
//!   gives exactly the tokens of the whole text (shifted by the piece's
//!   offset), and judging the whole text equals merging the judgement of
//!   each piece (`Verdict::merge`, in order). This holds with unterminated
//!   strings, identifiers, comments and dollar quotes too: such a construct
//!   runs to the end of the text, so it can only be in the last piece, and
//!   nothing after a `;` depends on what came before it. (Restricted for
//!   text with a backslash: see `check`);
//! - a comment in front changes nothing: `judge` of the text equals `judge`
//!   of `"/* x */ " + text` and of `"\n-- c\n" + text`;
//! - `judge` reads a text with a backslash both ways (a `SET
//!   standard_conforming_strings` pipelined before it changes how the
//!   backend reads it), so which setting it is given does not matter; a
//!   text with a backslash and a byte above 0x7F, or any text in an unsafe
//!   client encoding, is judged as anything.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pgcell::lexer::{identifier, plain_string, statements, Item, Lexer, Splitter, Token};
use pgcell::custom_setting_names;
use pgcell::{judge, Dialect, StateKind, Verdict};

/// Where `inner` lies in `outer`, when it is a slice of it.
fn range_in(outer: &[u8], inner: &[u8]) -> Option<(usize, usize)> {
    let start = (inner.as_ptr() as usize).checked_sub(outer.as_ptr() as usize)?;
    let end = start + inner.len();
    (end <= outer.len()).then_some((start, end))
}

/// The tokens of `sql` with their offsets, checking the offsets on the way.
fn tokens(sql: &[u8], dialect: Dialect) -> Vec<(usize, Token<'_>)> {
    let mut lexer = Lexer::new(sql, dialect);
    let text = lexer.text();
    assert!(text.len() <= sql.len());
    assert!(!text.contains(&0), "the text runs past a NUL");
    let mut out = Vec::new();
    let mut end = 0;
    while let Some((at, token)) = lexer.next() {
        assert!(
            at >= end,
            "token at {at} starts before the previous ended ({end})"
        );
        assert!(
            at < text.len(),
            "token at {at} past the text ({})",
            text.len()
        );
        end = lexer.offset();
        assert!(end > at, "empty token at {at}");
        // `corpus/sql_lexer/regression_escape_backslash_at_end` (`E'\`: an
        // escape string ending in a backslash) checks the very end.
        assert!(end <= text.len(), "token at {at} ends past the text");
        // What a token borrows lies inside the token.
        if let Token::Word(s) | Token::Quoted(s) | Token::Str { body: s, .. } = token {
            let (a, b) = range_in(text, s).expect("token slice outside the text");
            assert!(at <= a && b <= end, "token slice outside its token");
        }
        // Never panic.
        let _ = identifier(token);
        let _ = plain_string(token);
        out.push((at, token));
    }
    assert!(lexer.offset() <= text.len(), "the lexer ends past the text");
    out
}

fn check(sql: &[u8], dialect: Dialect) {
    let whole = tokens(sql, dialect);

    // The split: consecutive pieces that rejoin to the input.
    let pieces = statements(sql, dialect);
    assert_eq!(pieces.concat(), sql, "pieces do not rejoin to the input");
    let mut at = 0;
    for piece in &pieces {
        let (a, b) = range_in(sql, piece).expect("piece outside the input");
        assert_eq!(a, at, "pieces not consecutive");
        assert!(b > a || sql.is_empty(), "empty piece");
        at = b;
    }

    // The Splitter's ends increase and lie within the text.
    let text_len = Lexer::new(sql, dialect).text().len();
    let mut last_end = 0;
    for item in Splitter::new(sql, dialect) {
        if let Item::End(end) = item {
            assert!(end > last_end && end <= text_len, "statement end {end}");
            last_end = end;
        }
    }

    // Each piece alone lexes as it does within the whole text.
    let mut from_pieces = Vec::new();
    for piece in &pieces {
        let offset = range_in(sql, piece).map_or(0, |(a, _)| a);
        // What follows a NUL is part of the last piece, which stops at
        // the same NUL.
        from_pieces.extend(
            tokens(piece, dialect)
                .into_iter()
                .map(|(at, token)| (at + offset, token)),
        );
    }
    assert_eq!(from_pieces, whole, "pieces lex differently alone");

    // ... and judges as it does within the whole text.
    let verdict = judge(sql, dialect);
    let merged = pieces.iter().fold(Verdict::default(), |v, piece| {
        v.merge(judge(piece, dialect))
    });
    let backslash = sql.contains(&b'\\');
    if !backslash {
        assert_eq!(verdict, merged, "whole text judged unlike its statements");
    } else if sql.iter().any(|&b| b >= 0x80) {
        // A backslash may be the second byte of a multi-byte character.
        assert!(is_anything(verdict), "{verdict:?}");
    } else if pieces == statements(sql, other(dialect)) {
        // `judge` reads a text with a backslash with both settings, and
        // the split is per setting: `'a\'; x` is one statement or two. So
        // the pieces of this setting are statements under the other one
        // only when both split alike; then the whole is judged like its
        // pieces, except which state kind comes first (the whole's reading
        // with this setting is preferred over the other, a piece's over
        // the next piece).
        assert_eq!(
            shape(verdict),
            shape(merged),
            "whole text judged unlike its statements: {verdict:?} {merged:?}"
        );
    }

    // A leading comment changes nothing.
    for prefix in [&b"/* x */ "[..], &b"\n-- c\n"[..]] {
        let prefixed = [prefix, sql].concat();
        assert_eq!(
            judge(&prefixed, dialect),
            verdict,
            "a leading {:?} changes the verdict",
            String::from_utf8_lossy(prefix)
        );
    }

    // Either setting judges alike (state kinds aside, found in another
    // order).
    assert_eq!(
        shape(verdict),
        shape(judge(sql, other(dialect))),
        "judged unlike with the other standard_conforming_strings"
    );

    custom_setting_names(sql, dialect, |_| {});
}

/// The other `standard_conforming_strings`.
fn other(dialect: Dialect) -> Dialect {
    Dialect {
        backslash_escapes: !dialect.backslash_escapes,
        ..dialect
    }
}

/// A verdict without which state kind came first.
fn shape(v: Verdict) -> Verdict {
    Verdict {
        state: v.state.map(|_| StateKind::Listen),
        ..v
    }
}

/// What `judge` answers for text it cannot read reliably.
fn is_anything(v: Verdict) -> bool {
    v.settings && v.unknown && v.drops_statements
}

fuzz_target!(|input: &[u8]| {
    check(input, Dialect::default());
    check(
        input,
        Dialect {
            backslash_escapes: true,
            ..Dialect::default()
        },
    );
    // Text that cannot be read reliably is judged as anything.
    let unsafe_encoding = Dialect {
        unsafe_encoding: true,
        ..Dialect::default()
    };
    assert!(is_anything(judge(input, unsafe_encoding)));
});
