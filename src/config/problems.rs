//! What is wrong with a configuration: every [`Problem`] found, with its
//! key path, gathered in [`Problems`] while parsing goes on, and the
//! limits the shared checks (durations, connection counts, message
//! sizes) hold values to.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// Everything wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Problems in the order found.
    pub problems: Vec<Problem>,
}

/// One problem, with the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path such as `tenants[1].allowed_cidrs[0]`; empty for the file.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if p.path.is_empty() {
                write!(f, "{}", p.message)?;
            } else {
                write!(f, "{}: {}", p.path, p.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Longest duration any key accepts; keeps deadline arithmetic far from
/// overflow.
const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Largest connection limit any key accepts.
const MAX_CONNECTIONS: usize = 1_000_000;
/// Default `listen.max_message_size`: 64 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 << 20;
/// Bounds of `listen.max_message_size`: a `StartupMessage`'s own limit
/// below, PostgreSQL's 1 GiB message limit above.
const MESSAGE_SIZE_RANGE: std::ops::RangeInclusive<usize> = 10_000..=(1 << 30);

/// The problems found so far, and the checks that add to them: each
/// `from_raw` takes one and pushes what it finds instead of stopping.
#[derive(Default)]
pub(super) struct Problems(pub(super) Vec<Problem>);

impl Problems {
    pub(super) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    pub(super) fn into_error(self) -> ConfigError {
        ConfigError { problems: self.0 }
    }

    pub(super) fn socket_addr(&mut self, path: &str, s: &str) -> Option<SocketAddr> {
        match s.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.push(path, format!("{s:?} is not an IP:port address"));
                None
            }
        }
    }

    pub(super) fn duration(&mut self, path: &str, s: &str) -> Duration {
        match humantime::parse_duration(s) {
            Ok(d) if d > MAX_DURATION => {
                self.push(path, format!("{s:?} is longer than the maximum of 30 days"));
                Duration::from_secs(1)
            }
            Ok(d) if !d.is_zero() => d,
            _ => {
                self.push(
                    path,
                    format!("{s:?} is not a positive duration such as \"10s\""),
                );
                Duration::from_secs(1)
            }
        }
    }

    pub(super) fn message_size(&mut self, path: &str, n: usize) -> usize {
        if MESSAGE_SIZE_RANGE.contains(&n) {
            return n;
        }
        self.push(
            path,
            format!(
                "must be between {} and {} bytes",
                MESSAGE_SIZE_RANGE.start(),
                MESSAGE_SIZE_RANGE.end()
            ),
        );
        DEFAULT_MAX_MESSAGE_SIZE
    }

    pub(super) fn positive(&mut self, path: &str, n: usize) -> usize {
        if n == 0 {
            self.push(path, "must be at least 1");
        }
        if n > MAX_CONNECTIONS {
            self.push(path, format!("must be at most {MAX_CONNECTIONS}"));
            return MAX_CONNECTIONS;
        }
        n
    }
}
