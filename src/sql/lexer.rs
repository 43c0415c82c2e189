//! Tokens of SQL text, following PostgreSQL's lexical rules (its
//! `scan.l`), and the split of a `Query` into statements.
//!
//! Only what decides where a token ends is modelled exactly: white space,
//! `--` and nested `/* */` comments, standard and escape strings (with
//! `standard_conforming_strings` as the backend has it), string
//! continuation across a newline, `B''` / `X''` / `N''` / `U&''` strings,
//! quoted identifiers (also `U&""`), dollar quotes with tags, parameters,
//! numbers, identifiers (which may contain `$`). Everything else is one
//! punctuation byte per token, so an operator is several tokens; a
//! comment start inside an operator is a comment, as in PostgreSQL.
//! Unterminated strings, identifiers and comments run to the end of the
//! text (PostgreSQL refuses such a text, so nothing of it runs).
//!
//! Spec: <https://www.postgresql.org/docs/current/sql-syntax-lexical.html>

/// One token. Slices borrow the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token<'a> {
    /// An unquoted identifier or key word, as written (not case-folded).
    Word(&'a [u8]),
    /// A quoted identifier's contents between the quotes (`""` not yet
    /// undoubled).
    Quoted(&'a [u8]),
    /// A `U&""` identifier or a `U&''` string: its text has escapes
    /// (`\005f`, `UESCAPE`) that pgcell does not decode, so it may name
    /// anything.
    Unicode(&'a [u8]),
    /// A string constant of any kind; `body` is its first segment's
    /// contents between the quotes, `escapes` whether backslashes escape
    /// in it.
    Str {
        /// The first segment's contents between the quotes.
        body: &'a [u8],
        /// Whether backslashes escape in it.
        escapes: bool,
    },
    /// A dollar-quoted string.
    Dollar,
    /// A numeric constant.
    Number,
    /// A parameter, `$1`.
    Param,
    /// Any other byte: operators, `(`, `)`, `,`, `.`, `;`, `::`...
    Punct(u8),
}

/// How the backend reads the text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dialect {
    /// `standard_conforming_strings` is off: plain `'...'` strings take
    /// backslash escapes.
    pub backslash_escapes: bool,
    /// The client's encoding is one whose multi-byte characters may hold
    /// the bytes of `\`, `'` or `"` (SJIS, BIG5, GBK, UHC, GB18030,
    /// JOHAB): PostgreSQL reads the text after converting it, so the
    /// bytes seen here cannot be trusted (the lexer ignores this; the
    /// verdict judges such text as anything).
    pub unsafe_encoding: bool,
}

/// The tokens of a text, each with its start offset.
#[derive(Debug, Clone)]
pub struct Lexer<'a> {
    sql: &'a [u8],
    pos: usize,
    dialect: Dialect,
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_ident_cont(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit() || b == b'$'
}

/// Dollar-quote tags: identifier characters without `$`.
fn is_tag_cont(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit()
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' | b'\x0b')
}

impl<'a> Lexer<'a> {
    /// A lexer over `sql` (a trailing NUL, as in a `Query` body, ends it).
    pub fn new(sql: &'a [u8], dialect: Dialect) -> Lexer<'a> {
        let end = sql.iter().position(|&b| b == 0).unwrap_or(sql.len());
        Lexer {
            sql: &sql[..end],
            pos: 0,
            dialect,
        }
    }

    /// The text being read (without a trailing NUL).
    pub fn text(&self) -> &'a [u8] {
        self.sql
    }

    /// Where the next token (or the white space before it) starts.
    pub fn offset(&self) -> usize {
        self.pos
    }

    fn at(&self, i: usize) -> Option<u8> {
        self.sql.get(i).copied()
    }

    /// Skips white space and comments.
    fn skip_blank(&mut self) {
        loop {
            match (self.at(self.pos), self.at(self.pos + 1)) {
                (Some(b), _) if is_space(b) => self.pos += 1,
                (Some(b'-'), Some(b'-')) => {
                    self.pos += 2;
                    while self.at(self.pos).is_some_and(|b| b != b'\n' && b != b'\r') {
                        self.pos += 1;
                    }
                }
                (Some(b'/'), Some(b'*')) => {
                    self.pos += 2;
                    let mut depth = 1usize;
                    while depth > 0 {
                        match (self.at(self.pos), self.at(self.pos + 1)) {
                            (None, _) => return,
                            (Some(b'/'), Some(b'*')) => {
                                depth += 1;
                                self.pos += 2;
                            }
                            (Some(b'*'), Some(b'/')) => {
                                depth -= 1;
                                self.pos += 2;
                            }
                            _ => self.pos += 1,
                        }
                    }
                }
                _ => return,
            }
        }
    }

    /// A quoted string whose opening quote is at `self.pos`; returns its
    /// first segment's body. Follows continuation segments (a quote after
    /// white space holding a newline), which keep the escape rule.
    fn string(&mut self, escapes: bool) -> &'a [u8] {
        let mut first = None;
        loop {
            // At an opening quote.
            self.pos += 1;
            let start = self.pos;
            loop {
                match self.at(self.pos) {
                    None => {
                        return first.unwrap_or(&self.sql[start..]);
                    }
                    // A backslash escapes the next byte (none at the end).
                    Some(b'\\') if escapes => self.pos = (self.pos + 2).min(self.sql.len()),
                    Some(b'\'') if self.at(self.pos + 1) == Some(b'\'') => self.pos += 2,
                    Some(b'\'') => break,
                    Some(_) => self.pos += 1,
                }
            }
            let end = self.pos.min(self.sql.len());
            let body = &self.sql[start..end];
            first.get_or_insert(body);
            self.pos += 1;
            match self.continuation() {
                Some(next_quote) => self.pos = next_quote,
                None => return first.unwrap_or(body),
            }
        }
    }

    /// After a closing quote: where the next segment's quote is, when
    /// white space with a newline (and `--` comments) leads to one.
    fn continuation(&self) -> Option<usize> {
        let mut i = self.pos;
        let mut newline = false;
        loop {
            match (self.at(i), self.at(i + 1)) {
                (Some(b'\n' | b'\r'), _) => {
                    newline = true;
                    i += 1;
                }
                (Some(b' ' | b'\t' | b'\x0c' | b'\x0b'), _) => i += 1,
                (Some(b'-'), Some(b'-')) => {
                    i += 2;
                    while self.at(i).is_some_and(|b| b != b'\n' && b != b'\r') {
                        i += 1;
                    }
                    // A comment at the end of the text has no newline.
                    self.at(i)?;
                }
                (Some(b'\''), _) if newline => return Some(i),
                _ => return None,
            }
        }
    }

    /// A quoted identifier whose opening quote is at `self.pos`.
    fn quoted(&mut self) -> &'a [u8] {
        self.pos += 1;
        let start = self.pos;
        loop {
            match self.at(self.pos) {
                None => return &self.sql[start..],
                Some(b'"') if self.at(self.pos + 1) == Some(b'"') => self.pos += 2,
                Some(b'"') => {
                    let body = &self.sql[start..self.pos];
                    self.pos += 1;
                    return body;
                }
                Some(_) => self.pos += 1,
            }
        }
    }

    /// The length of a dollar-quote delimiter (`$tag$`) at `i`, if one
    /// starts there.
    fn delimiter_at(&self, i: usize) -> Option<usize> {
        if self.at(i) != Some(b'$') {
            return None;
        }
        let mut j = i + 1;
        if self.at(j).is_some_and(is_ident_start) {
            j += 1;
            while self.at(j).is_some_and(is_tag_cont) {
                j += 1;
            }
        }
        (self.at(j) == Some(b'$')).then_some(j + 1 - i)
    }

    fn dollar(&mut self, len: usize) {
        let delimiter = &self.sql[self.pos..self.pos + len];
        self.pos += len;
        match self.sql[self.pos..]
            .windows(len)
            .position(|w| w == delimiter)
        {
            Some(at) => self.pos += at + len,
            None => self.pos = self.sql.len(),
        }
    }

    fn number(&mut self) {
        let digits = |l: &mut Lexer<'_>| {
            while l.at(l.pos).is_some_and(|b| b.is_ascii_digit()) {
                l.pos += 1;
            }
        };
        digits(self);
        if self.at(self.pos) == Some(b'.') && self.at(self.pos + 1) != Some(b'.') {
            self.pos += 1;
            digits(self);
        }
        if matches!(self.at(self.pos), Some(b'e' | b'E')) {
            let sign = usize::from(matches!(self.at(self.pos + 1), Some(b'+' | b'-')));
            if self
                .at(self.pos + 1 + sign)
                .is_some_and(|b| b.is_ascii_digit())
            {
                self.pos += 1 + sign;
                digits(self);
            }
        }
    }
}

impl<'a> Iterator for Lexer<'a> {
    type Item = (usize, Token<'a>);

    fn next(&mut self) -> Option<(usize, Token<'a>)> {
        self.skip_blank();
        let start = self.pos;
        let b = self.at(start)?;
        let next = self.at(start + 1);
        let token = match b {
            b'\'' => {
                let escapes = self.dialect.backslash_escapes;
                Token::Str {
                    body: self.string(escapes),
                    escapes,
                }
            }
            b'e' | b'E' if next == Some(b'\'') => {
                self.pos += 1;
                Token::Str {
                    body: self.string(true),
                    escapes: true,
                }
            }
            // Bit, hex and national strings.
            b'b' | b'B' | b'x' | b'X' | b'n' | b'N' if next == Some(b'\'') => {
                self.pos += 1;
                let escapes = matches!(b, b'n' | b'N') && self.dialect.backslash_escapes;
                Token::Str {
                    body: self.string(escapes),
                    escapes,
                }
            }
            b'u' | b'U' if next == Some(b'&') && self.at(start + 2) == Some(b'\'') => {
                self.pos += 2;
                Token::Unicode(self.string(false))
            }
            b'u' | b'U' if next == Some(b'&') && self.at(start + 2) == Some(b'"') => {
                self.pos += 2;
                Token::Unicode(self.quoted())
            }
            b'"' => Token::Quoted(self.quoted()),
            b'$' if next.is_some_and(|d| d.is_ascii_digit()) => {
                self.pos += 1;
                while self.at(self.pos).is_some_and(|d| d.is_ascii_digit()) {
                    self.pos += 1;
                }
                Token::Param
            }
            b'$' => match self.delimiter_at(start) {
                Some(len) => {
                    self.dollar(len);
                    Token::Dollar
                }
                None => {
                    self.pos += 1;
                    Token::Punct(b'$')
                }
            },
            b'0'..=b'9' => {
                self.number();
                Token::Number
            }
            b'.' if next.is_some_and(|d| d.is_ascii_digit()) => {
                self.number();
                Token::Number
            }
            b if is_ident_start(b) => {
                self.pos += 1;
                while self.at(self.pos).is_some_and(is_ident_cont) {
                    self.pos += 1;
                }
                Token::Word(&self.sql[start..self.pos])
            }
            b => {
                self.pos += 1;
                Token::Punct(b)
            }
        };
        Some((start, token))
    }
}

/// A token of a statement, or the end of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item<'a> {
    /// A token of the current statement (its terminating `;` is not one).
    Token(Token<'a>),
    /// The current statement ends here: at a `;` (the offset is just past
    /// it) or at the end of the text.
    End(usize),
    /// A `;` inside a `BEGIN ATOMIC` body: not the end of the statement
    /// for PostgreSQL, but a judge that splits here too cannot be misled
    /// by a body it took for one (the routine's statements are judged on
    /// their own, which errs on the safe side).
    Inner,
}

/// The tokens of a text, statement by statement: a `;` ends a statement
/// except inside a `BEGIN ATOMIC ... END` function body (as PostgreSQL's
/// grammar has it, and as psql splits).
#[derive(Debug, Clone)]
pub struct Splitter<'a> {
    lexer: Lexer<'a>,
    /// Words of the current statement seen (saturating).
    words: u8,
    /// Whether the statement is a `CREATE [OR REPLACE] FUNCTION/PROCEDURE`.
    head: Head,
    /// The previous token was the word `BEGIN` (of a routine).
    after_begin: bool,
    /// Open `BEGIN ATOMIC` / `CASE` blocks of a routine body.
    depth: u32,
    /// Open parentheses: `BEGIN ATOMIC` opens a body only outside them
    /// (`f(begin atomic)` is a parameter named `begin` of type `atomic`).
    parens: u32,
    /// The statement has tokens (an empty one yields no `End`).
    any: bool,
    done: bool,
}

impl<'a> Splitter<'a> {
    /// Splits `sql` read with `dialect`.
    pub fn new(sql: &'a [u8], dialect: Dialect) -> Splitter<'a> {
        Splitter {
            lexer: Lexer::new(sql, dialect),
            words: 0,
            head: Head::Other,
            after_begin: false,
            depth: 0,
            parens: 0,
            any: false,
            done: false,
        }
    }

    fn reset(&mut self) {
        self.words = 0;
        self.head = Head::Other;
        self.after_begin = false;
        self.depth = 0;
        self.parens = 0;
        self.any = false;
    }

    fn note_word(&mut self, word: &[u8]) {
        let is = |k: &str| word.eq_ignore_ascii_case(k.as_bytes());
        let routine_word = || is("function") || is("procedure");
        // CREATE [OR REPLACE] FUNCTION | PROCEDURE: only a routine's
        // head opens a body (`SELECT begin atomic FROM t` is a column and
        // its alias).
        self.head = match (self.words, self.head) {
            (0, _) if is("create") => Head::Create,
            (1, Head::Create) if routine_word() => Head::Routine,
            (1, Head::Create) if is("or") => Head::CreateOr,
            (2, Head::CreateOr) if is("replace") => Head::CreateOrReplace,
            (3, Head::CreateOrReplace) if routine_word() => Head::Routine,
            (_, Head::Routine) => Head::Routine,
            _ => Head::Other,
        };
        self.words = self.words.saturating_add(1);
        if self.head == Head::Routine {
            let opens = (self.after_begin && self.parens == 0 && is("atomic"))
                || (self.depth > 0 && is("case"));
            if opens {
                self.depth += 1;
            } else if self.depth > 0 && is("end") {
                self.depth -= 1;
            }
            self.after_begin = is("begin");
        }
    }
}

/// How far a statement's head is known to be a routine's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    Other,
    Create,
    CreateOr,
    CreateOrReplace,
    Routine,
}

impl<'a> Iterator for Splitter<'a> {
    type Item = Item<'a>;

    fn next(&mut self) -> Option<Item<'a>> {
        if self.done {
            return None;
        }
        loop {
            let Some((at, token)) = self.lexer.next() else {
                self.done = true;
                let any = self.any;
                self.reset();
                return any.then_some(Item::End(self.lexer.text().len()));
            };
            match token {
                Token::Punct(b';') if self.depth == 0 => {
                    let any = self.any;
                    self.reset();
                    if any {
                        return Some(Item::End(at + 1));
                    }
                    // An empty statement (`;;`): nothing to report.
                }
                Token::Punct(b';') => {
                    self.after_begin = false;
                    return Some(Item::Inner);
                }
                Token::Word(w) => {
                    self.note_word(w);
                    self.any = true;
                    return Some(Item::Token(token));
                }
                _ => {
                    match token {
                        Token::Punct(b'(') => self.parens += 1,
                        Token::Punct(b')') => self.parens = self.parens.saturating_sub(1),
                        _ => {}
                    }
                    self.after_begin = false;
                    self.any = true;
                    return Some(Item::Token(token));
                }
            }
        }
    }
}

/// The statements of `sql` as consecutive slices that together are the
/// whole text: each runs to just past its `;` (the last to the end), with
/// the white space and comments before it. Empty statements are merged
/// into the next one.
pub fn statements(sql: &[u8], dialect: Dialect) -> Vec<&[u8]> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    let mut from = 0;
    for item in Splitter::new(sql, dialect) {
        if let Item::End(end) = item {
            out.push((from, end));
            from = end;
        }
    }
    if from < sql.len() {
        // Trailing blanks, empty statements, a NUL: part of the last piece.
        match out.last_mut() {
            Some(last) => last.1 = sql.len(),
            None => out.push((0, sql.len())),
        }
    }
    out.into_iter().map(|(a, b)| &sql[a..b]).collect()
}

/// An identifier token's name as PostgreSQL resolves it: unquoted words
/// folded to lower case, quoted ones undoubled.
pub fn identifier(token: Token<'_>) -> Option<String> {
    match token {
        Token::Word(w) => Some(String::from_utf8_lossy(w).to_ascii_lowercase()),
        Token::Quoted(q) => Some(String::from_utf8_lossy(q).replace("\"\"", "\"")),
        _ => None,
    }
}

/// A standard string's value (`''` undoubled), when it has no escapes.
pub fn plain_string(token: Token<'_>) -> Option<String> {
    match token {
        Token::Str { body, escapes } if !(escapes && body.contains(&b'\\')) => {
            std::str::from_utf8(body).ok().map(|s| s.replace("''", "'"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(sql: &str) -> Vec<String> {
        statements(sql.as_bytes(), Dialect::default())
            .iter()
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect()
    }

    fn words(sql: &str, dialect: Dialect) -> Vec<String> {
        Lexer::new(sql.as_bytes(), dialect)
            .filter_map(|(_, t)| match t {
                Token::Word(w) => Some(String::from_utf8_lossy(w).into_owned()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn splits_at_semicolons_outside_quotes_and_comments() {
        assert_eq!(split("select 1; set role r"), ["select 1;", " set role r"]);
        assert_eq!(split("select ';'; x"), ["select ';';", " x"]);
        assert_eq!(split("select \"a;b\"; x"), ["select \"a;b\";", " x"]);
        assert_eq!(split("select 1 -- ;\n; x"), ["select 1 -- ;\n;", " x"]);
        assert_eq!(
            split("select /* /* ; */ ; */ 1; x"),
            ["select /* /* ; */ ; */ 1;", " x"]
        );
        assert_eq!(split("select $$;$$; x"), ["select $$;$$;", " x"]);
        assert_eq!(
            split("select $a$ $$; $b$ $a$; x"),
            ["select $a$ $$; $b$ $a$;", " x"]
        );
        assert_eq!(split("select a$b$c; x"), ["select a$b$c;", " x"]);
        assert_eq!(split("select $1; x"), ["select $1;", " x"]);
        assert_eq!(split(";;select 1;;"), [";;select 1;;"]);
        assert_eq!(split(""), Vec::<String>::new());
        assert_eq!(split("  "), ["  "]);
    }

    #[test]
    fn escape_strings_and_standard_conforming_strings() {
        // E'' takes backslash escapes whatever the setting.
        assert_eq!(split(r"select E'\'; x'; y"), [r"select E'\'; x';", " y"]);
        // A plain string does not by default ...
        assert_eq!(
            split(r"select 'a\'; set role r; --'"),
            [r"select 'a\';", " set role r; --'"]
        );
        // ... and does with standard_conforming_strings off.
        let off = Dialect {
            backslash_escapes: true,
            ..Dialect::default()
        };
        assert_eq!(
            statements(br"select 'a\'; set role r; --'", off).len(),
            1,
            "one string to the end"
        );
        // U&'' never does.
        assert_eq!(words(r"select U&'\'; set", off), ["select", "set"]);
    }

    #[test]
    fn continued_strings_keep_their_escapes() {
        // E'a' <newline> '\'...' continues the escape string.
        assert_eq!(
            words(
                "select E'a'\n'\\'; set role r; --'\n; x",
                Dialect::default()
            ),
            ["select", "x"]
        );
        // Without a newline, no continuation: a new standard string.
        assert_eq!(
            words("select E'a' '\\'; set role r; --'\n; x", Dialect::default()),
            ["select", "set", "role", "r", "x"]
        );
        // A -- comment between segments still continues.
        assert_eq!(
            words("select E'a' -- c\n '\\'; set'", Dialect::default()),
            ["select"]
        );
    }

    #[test]
    fn prefixes_only_at_token_start() {
        assert_eq!(words("select xe'a'", Dialect::default()), ["select", "xe"]);
        assert_eq!(words("select 1e'\\';x'", Dialect::default()), ["select"]);
        assert_eq!(
            words("select b'01', x'ff', n'a'", Dialect::default()),
            ["select"]
        );
        assert_eq!(
            words("select U&\"a;b\" u", Dialect::default()),
            ["select", "u"]
        );
    }

    #[test]
    fn atomic_bodies_are_one_statement() {
        let sql = "create or replace function f() returns int language sql \
                   begin atomic select case when true then 1 end; select 2; end; set role r";
        let parts = split(sql);
        assert_eq!(parts.len(), 2, "{parts:?}");
        assert_eq!(parts[1], " set role r");
        // Outside a routine, BEGIN ATOMIC means nothing special.
        assert_eq!(split("begin; atomic; x").len(), 3);
        assert_eq!(
            split("create table t as select begin atomic from s; set role r").len(),
            2
        );
        // A parameter named begin of type atomic opens no body.
        assert_eq!(
            split("create function f(begin atomic) returns int language sql as 'select 1'; set role r")
                .len(),
            2
        );
    }

    #[test]
    fn statements_rejoin_to_the_input() {
        for sql in [
            "select 1; select 2",
            "select 1;  ",
            ";;",
            "select 'unterminated; x",
            "select /* unterminated ; x",
            "a;b;;c;",
        ] {
            let joined: Vec<u8> = statements(sql.as_bytes(), Dialect::default()).concat();
            assert_eq!(joined, sql.as_bytes(), "{sql}");
        }
    }

    #[test]
    fn identifiers_and_strings() {
        assert_eq!(
            identifier(Token::Word(b"Set_Config")).unwrap(),
            "set_config"
        );
        assert_eq!(identifier(Token::Quoted(b"A\"\"b")).unwrap(), "A\"b");
        let strs: Vec<_> = Lexer::new(b"select 'it''s', E'a\\b'", Dialect::default())
            .map(|(_, t)| plain_string(t))
            .collect();
        assert_eq!(strs, [None, Some("it's".into()), None, None]);
    }
}
