//! SQL text, read in one place: the tokens and statements of a `Query`
//! or a `Parse` ([`lexer`]) and what each statement may do to the session
//! of the backend it runs on ([`verdict`]). Sans-I/O.

pub mod lexer;
pub(crate) mod verdict;

pub(crate) use lexer::Dialect;
pub(crate) use verdict::{judge, one_read_only_transaction, StateKind, Verdict};
