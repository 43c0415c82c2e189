//! Pre-startup packets: `SSLRequest`, `GSSENCRequest`, `CancelRequest` and
//! `StartupMessage`.
//!
//! These are the only untagged messages in the protocol: a 4-byte length
//! (including itself) followed by a 4-byte code. Spec:
//! <https://www.postgresql.org/docs/current/protocol-message-formats.html>

use bytes::{BufMut, BytesMut};
use thiserror::Error;

/// Longest pre-startup packet body (after the length word) accepted, as
/// PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`: postmaster.c compares it with
/// the length minus the 4 bytes of the length itself.
pub const MAX_STARTUP_PACKET_LEN: usize = 10_000;
/// Shortest pre-startup packet: length and code.
pub const MIN_STARTUP_PACKET_LEN: usize = 8;
/// Length of a protocol 3.0 `CancelRequest`: length, code, pid, secret.
pub const CANCEL_REQUEST_LEN: usize = 16;
/// `SSLRequest` code (1234 << 16 | 5679).
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
/// `GSSENCRequest` code (1234 << 16 | 5680).
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
/// `CancelRequest` code (1234 << 16 | 5678).
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;
/// Protocol major version pgcell speaks.
pub const PROTOCOL_MAJOR: u16 = 3;
/// Newest protocol minor version pgcell speaks.
pub const PROTOCOL_MINOR: u16 = 0;
/// Prefix of protocol extension options (`_pq_.name`).
pub const PROTOCOL_OPTION_PREFIX: &str = "_pq_.";

/// One pre-startup packet from a frontend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontendStartup {
    /// `SSLRequest`: the client asks for TLS.
    SslRequest,
    /// `GSSENCRequest`: the client asks for GSSAPI encryption.
    GssEncRequest,
    /// `CancelRequest` with the key the client was given.
    CancelRequest(CancelKey),
    /// `StartupMessage`: protocol version and parameters.
    Startup(StartupMessage),
}

/// The (process id, secret) pair of `BackendKeyData` and `CancelRequest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CancelKey {
    /// Process id as the client knows it.
    pub pid: i32,
    /// Secret key.
    pub secret: i32,
}

/// A parsed `StartupMessage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    /// Requested protocol minor version (major is always 3).
    pub minor: u16,
    /// Parameters in the order the client sent them.
    pub params: Vec<(String, String)>,
}

/// Why a pre-startup packet was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StartupError {
    /// Length field below the minimum.
    #[error("invalid length of startup packet: {0}")]
    TooShort(usize),
    /// Length field above [`MAX_STARTUP_PACKET_LEN`] plus the length word.
    #[error("startup packet too long: {0} bytes")]
    TooLong(usize),
    /// A `CancelRequest` whose length is not [`CANCEL_REQUEST_LEN`].
    #[error("invalid length of cancel request packet: {0}")]
    InvalidCancelLength(usize),
    /// A protocol major version other than 3.
    #[error("unsupported frontend protocol {0}.{1}: server supports 3.0")]
    UnsupportedProtocol(u16, u16),
    /// Structure does not match the message format.
    #[error("malformed startup packet: {0}")]
    Malformed(&'static str),
}

/// Validates the 4-byte length that starts a pre-startup packet and returns
/// the number of bytes that follow it.
pub fn body_len(header: [u8; 4]) -> Result<usize, StartupError> {
    let len = u32::from_be_bytes(header) as usize;
    if len < MIN_STARTUP_PACKET_LEN {
        return Err(StartupError::TooShort(len));
    }
    if len - 4 > MAX_STARTUP_PACKET_LEN {
        return Err(StartupError::TooLong(len));
    }
    Ok(len - 4)
}

/// Parses the body (everything after the length) of a pre-startup packet.
pub fn parse_body(body: &[u8]) -> Result<FrontendStartup, StartupError> {
    let (code, rest) = body
        .split_first_chunk::<4>()
        .ok_or(StartupError::Malformed("missing request code"))?;
    match u32::from_be_bytes(*code) {
        SSL_REQUEST_CODE if rest.is_empty() => Ok(FrontendStartup::SslRequest),
        GSSENC_REQUEST_CODE if rest.is_empty() => Ok(FrontendStartup::GssEncRequest),
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => {
            Err(StartupError::Malformed("encryption request with a body"))
        }
        CANCEL_REQUEST_CODE => {
            // Protocol 3.0 keys are exactly 4 bytes; longer keys (3.2) are
            // never issued by pgcell, so they cannot match anything.
            if rest.len() != 8 {
                return Err(StartupError::InvalidCancelLength(body.len() + 4));
            }
            let pid = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
            let secret = i32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
            Ok(FrontendStartup::CancelRequest(CancelKey { pid, secret }))
        }
        version => {
            let major = (version >> 16) as u16;
            let minor = (version & 0xffff) as u16;
            if major != PROTOCOL_MAJOR {
                return Err(StartupError::UnsupportedProtocol(major, minor));
            }
            let params = parse_params(rest)?;
            Ok(FrontendStartup::Startup(StartupMessage { minor, params }))
        }
    }
}

/// Parses `name\0value\0 … \0`.
fn parse_params(mut rest: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    let mut params = Vec::new();
    loop {
        let name = take_cstr(&mut rest)?;
        if name.is_empty() {
            break;
        }
        let value = take_cstr(&mut rest)?;
        if params.iter().any(|(n, _)| *n == name) {
            return Err(StartupError::Malformed("duplicate parameter"));
        }
        params.push((name, value));
    }
    if !rest.is_empty() {
        return Err(StartupError::Malformed("data after the parameter list"));
    }
    Ok(params)
}

fn take_cstr(rest: &mut &[u8]) -> Result<String, StartupError> {
    let end = rest
        .iter()
        .position(|&b| b == 0)
        .ok_or(StartupError::Malformed("unterminated string"))?;
    let s = std::str::from_utf8(&rest[..end])
        .map_err(|_| StartupError::Malformed("parameter is not valid UTF-8"))?
        .to_owned();
    *rest = &rest[end + 1..];
    Ok(s)
}

impl StartupMessage {
    /// The value of parameter `name`, if sent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets `name` to `value`, replacing an existing value in place.
    pub fn set(&mut self, name: &str, value: String) {
        match self.params.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value,
            None => self.params.push((name.to_owned(), value)),
        }
    }

    /// Removes `name`.
    pub fn remove(&mut self, name: &str) {
        self.params.retain(|(n, _)| n != name);
    }

    /// Names of `_pq_.` protocol options the client asked for.
    pub fn protocol_options(&self) -> Vec<String> {
        self.params
            .iter()
            .filter(|(n, _)| n.starts_with(PROTOCOL_OPTION_PREFIX))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Appends this message, as protocol 3.0, to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        let start = buf.len();
        buf.put_u32(0);
        buf.put_u32(u32::from(PROTOCOL_MAJOR) << 16 | u32::from(PROTOCOL_MINOR));
        for (name, value) in &self.params {
            buf.put_slice(name.as_bytes());
            buf.put_u8(0);
            buf.put_slice(value.as_bytes());
            buf.put_u8(0);
        }
        buf.put_u8(0);
        let len = (buf.len() - start) as u32;
        buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }
}

impl CancelKey {
    /// Appends a `CancelRequest` carrying this key to `buf`.
    pub fn encode_cancel_request(&self, buf: &mut BytesMut) {
        buf.put_u32(16);
        buf.put_u32(CANCEL_REQUEST_CODE);
        buf.put_i32(self.pid);
        buf.put_i32(self.secret);
    }
}

/// One argument of the `options` startup parameter, split as PostgreSQL's
/// `pg_split_opts` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionArg {
    /// As the client wrote it, escapes included (what goes on to a backend).
    pub raw: String,
    /// With `\` escapes resolved (what PostgreSQL's switch parser reads).
    pub text: String,
}

/// A `name=value` setting in `options`, found by PostgreSQL's switch grammar:
/// `-c name=value`, `-cname=value`, `--name=value`, and `c` after other
/// flags in one argument (`-ec name=value`), as getopt reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionSetting {
    /// Setting name, `-` replaced by `_` as PostgreSQL's `ParseLongOption`
    /// does.
    pub name: String,
    /// Its value.
    pub value: String,
    /// Index of the first argument that carries it.
    pub first_arg: usize,
    /// How many arguments carry it: 2 for `-c name=value`, else 1.
    pub arg_count: usize,
    /// Flags before `c` in the first argument (`-e` of `-ecname=value`):
    /// they stay if the setting is removed.
    pub leading_flags: Option<String>,
}

/// The `options` startup parameter, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartupOptions {
    /// Every argument, in order.
    pub args: Vec<OptionArg>,
    /// The settings PostgreSQL would apply.
    pub settings: Vec<OptionSetting>,
    /// Indices of arguments that are no switch nor a switch's argument
    /// (PostgreSQL refuses them; pgcell reads its own `tenant=ID` there).
    pub bare: Vec<usize>,
}

/// Switches of PostgreSQL's `process_postgres_switches` that take an
/// argument (its getopt string `B:bc:C:D:d:EeFf:h:ijk:lN:nOPp:r:S:sTt:v:W:-:`).
const SWITCHES_WITH_ARGUMENT: &[char] = &[
    'B', 'c', 'C', 'D', 'd', 'f', 'h', 'k', 'N', 'p', 'r', 'S', 't', 'v', 'W', '-',
];

/// Whitespace as C's `isspace` in the C locale, which `pg_split_opts` uses.
fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0B' | '\x0C' | '\r')
}

/// Splits `options` into arguments as PostgreSQL's `pg_split_opts`: on
/// whitespace, a `\` escaping the next character (a trailing `\` is
/// dropped).
pub fn split_options(options: &str) -> Vec<OptionArg> {
    let mut args = Vec::new();
    let mut chars = options.chars().peekable();
    loop {
        while chars.next_if(|&c| is_c_space(c)).is_some() {}
        if chars.peek().is_none() {
            return args;
        }
        let mut raw = String::new();
        let mut text = String::new();
        while let Some(c) = chars.next_if(|&c| !is_c_space(c)) {
            raw.push(c);
            if c == '\\' {
                if let Some(next) = chars.next() {
                    raw.push(next);
                    text.push(next);
                }
            } else {
                text.push(c);
            }
        }
        args.push(OptionArg { raw, text });
    }
}

/// Parses `options` as PostgreSQL's backend does: [`split_options`], then
/// its getopt switch grammar. Switches PostgreSQL would refuse are skipped
/// here, not reported: the backend reports them.
pub fn parse_startup_options(options: &str) -> StartupOptions {
    let args = split_options(options);
    let mut settings = Vec::new();
    let mut bare = Vec::new();
    let mut i = 0;
    let mut options_ended = false;
    while i < args.len() {
        let text = args[i].text.as_str();
        let Some(switches) = text
            .strip_prefix('-')
            .filter(|s| !s.is_empty() && !options_ended)
        else {
            bare.push(i);
            i += 1;
            continue;
        };
        if switches == "-" {
            // getopt: `--` ends the switches.
            options_ended = true;
            i += 1;
            continue;
        }
        let mut consumed = 1;
        for (at, flag) in switches.char_indices() {
            if !SWITCHES_WITH_ARGUMENT.contains(&flag) {
                continue;
            }
            let attached = &switches[at + flag.len_utf8()..];
            let argument = if !attached.is_empty() {
                Some(attached)
            } else {
                consumed = 2;
                args.get(i + 1).map(|a| a.text.as_str())
            };
            if matches!(flag, 'c' | '-') {
                if let Some((name, value)) = argument.and_then(|a| a.split_once('=')) {
                    settings.push(OptionSetting {
                        name: name.replace('-', "_"),
                        value: value.to_owned(),
                        first_arg: i,
                        arg_count: consumed.min(args.len() - i),
                        leading_flags: (at > 0).then(|| format!("-{}", &switches[..at])),
                    });
                }
            }
            break;
        }
        i += consumed;
    }
    StartupOptions {
        args,
        settings,
        bare,
    }
}

/// A boolean setting's value as PostgreSQL reads it (`parse_bool`): `on`,
/// `off`, `1`, `0`, and any prefix of `true`, `false`, `yes`, `no` (`on`
/// and `off` need two letters), case-insensitively. None: not a boolean.
pub fn parse_bool(value: &str) -> Option<bool> {
    let v = value.trim().to_ascii_lowercase();
    let prefix_of = |word: &str, min: usize| v.len() >= min && word.starts_with(v.as_str());
    if prefix_of("true", 1) || prefix_of("yes", 1) || v == "on" || v == "1" {
        Some(true)
    } else if prefix_of("false", 1) || prefix_of("no", 1) || prefix_of("off", 2) || v == "0" {
        Some(false)
    } else {
        None
    }
}

/// The `name=value` settings of `options`, in order, as PostgreSQL applies
/// them (names with `-` as `_`).
pub fn option_settings(options: &str) -> Vec<(String, String)> {
    parse_startup_options(options)
        .settings
        .into_iter()
        .map(|s| (s.name, s.value))
        .collect()
}

impl StartupOptions {
    /// The `options` text without the settings at `drop_settings` and the
    /// bare arguments at `drop_bare` (indices into `settings` and `args`),
    /// arguments kept as the client wrote them.
    pub fn without(&self, drop_settings: &[usize], drop_bare: &[usize]) -> String {
        let mut kept: Vec<Option<String>> = self.args.iter().map(|a| Some(a.raw.clone())).collect();
        for &s in drop_settings {
            let Some(setting) = self.settings.get(s) else {
                continue;
            };
            for (n, slot) in kept
                .iter_mut()
                .enumerate()
                .skip(setting.first_arg)
                .take(setting.arg_count)
            {
                *slot = (n == setting.first_arg)
                    .then(|| setting.leading_flags.clone())
                    .flatten();
            }
        }
        for &b in drop_bare {
            if let Some(slot) = kept.get_mut(b) {
                *slot = None;
            }
        }
        kept.into_iter().flatten().collect::<Vec<_>>().join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_are_read_as_postgresql_reads_them() {
        for (text, want) in [
            ("on", Some(true)),
            ("ON", Some(true)),
            ("t", Some(true)),
            ("tru", Some(true)),
            ("y", Some(true)),
            ("1", Some(true)),
            (" yes ", Some(true)),
            ("of", Some(false)),
            ("off", Some(false)),
            ("f", Some(false)),
            ("n", Some(false)),
            ("0", Some(false)),
            ("o", None),
            ("2", None),
            ("", None),
            ("truer", None),
        ] {
            assert_eq!(parse_bool(text), want, "{text:?}");
        }
    }

    fn packet(body: &[u8]) -> Vec<u8> {
        let mut p = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        p.extend_from_slice(body);
        p
    }

    #[test]
    fn startup_round_trip() {
        let msg = StartupMessage {
            minor: 0,
            params: vec![
                ("user".into(), "alice".into()),
                ("database".into(), "db".into()),
            ],
        };
        let mut buf = BytesMut::new();
        msg.encode(&mut buf);
        let len = body_len([buf[0], buf[1], buf[2], buf[3]]).unwrap();
        assert_eq!(len, buf.len() - 4);
        assert_eq!(
            parse_body(&buf[4..]).unwrap(),
            FrontendStartup::Startup(msg)
        );
    }

    #[test]
    fn ssl_gss_cancel() {
        let p = packet(&SSL_REQUEST_CODE.to_be_bytes());
        assert_eq!(parse_body(&p[4..]).unwrap(), FrontendStartup::SslRequest);
        let p = packet(&GSSENC_REQUEST_CODE.to_be_bytes());
        assert_eq!(parse_body(&p[4..]).unwrap(), FrontendStartup::GssEncRequest);
        let mut buf = BytesMut::new();
        CancelKey { pid: 7, secret: -3 }.encode_cancel_request(&mut buf);
        assert_eq!(
            parse_body(&buf[4..]).unwrap(),
            FrontendStartup::CancelRequest(CancelKey { pid: 7, secret: -3 })
        );
    }

    #[test]
    fn bounds() {
        assert_eq!(body_len(4u32.to_be_bytes()), Err(StartupError::TooShort(4)));
        assert_eq!(body_len(7u32.to_be_bytes()), Err(StartupError::TooShort(7)));
        assert_eq!(body_len(8u32.to_be_bytes()), Ok(4));
        // PostgreSQL bounds the body, not the packet: 10,004 bytes pass.
        assert_eq!(
            body_len(10_005u32.to_be_bytes()),
            Err(StartupError::TooLong(10_005))
        );
        assert_eq!(body_len(10_004u32.to_be_bytes()), Ok(10_000));
        // node-postgres' Terminate (`X 00 00 00 04`) read as a length.
        assert!(matches!(
            body_len(*b"X\0\0\0"),
            Err(StartupError::TooLong(_))
        ));
    }

    #[test]
    fn malformed() {
        // Unterminated parameter list.
        let mut body = (196_608u32).to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0bob");
        assert!(matches!(parse_body(&body), Err(StartupError::Malformed(_))));
        // Protocol 2.
        let body = (131_072u32).to_be_bytes();
        assert_eq!(
            parse_body(&body),
            Err(StartupError::UnsupportedProtocol(2, 0))
        );
        // Duplicate parameter.
        let mut body = (196_608u32).to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0a\0user\0b\0\0");
        assert!(matches!(parse_body(&body), Err(StartupError::Malformed(_))));
        // Too short for a code.
        assert!(parse_body(&[0, 3]).is_err());
    }

    #[test]
    fn newer_minor_and_options() {
        let mut body = (196_610u32).to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0a\0_pq_.foo\0on\0\0");
        let FrontendStartup::Startup(m) = parse_body(&body).unwrap() else {
            panic!("not a startup message")
        };
        assert_eq!(m.minor, 2);
        assert_eq!(m.protocol_options(), vec!["_pq_.foo".to_string()]);
    }

    #[test]
    fn options_split_like_pg_split_opts() {
        let args = split_options("  -c\ta=b\\ c  \\\\x\x0Bend\\");
        let texts: Vec<&str> = args.iter().map(|a| a.text.as_str()).collect();
        assert_eq!(texts, ["-c", "a=b c", "\\x", "end"]);
        assert_eq!(args[1].raw, "a=b\\ c");
    }

    #[test]
    fn options_switch_grammar() {
        let o = parse_startup_options(
            "-c search_path=a,b --work-mem=4MB -cstatement_timeout=5s x -ec tenant=t1 \
             -d 5 -D c=d -c",
        );
        let got: Vec<(&str, &str, usize, usize)> = o
            .settings
            .iter()
            .map(|s| (s.name.as_str(), s.value.as_str(), s.first_arg, s.arg_count))
            .collect();
        assert_eq!(
            got,
            [
                ("search_path", "a,b", 0, 2),
                ("work_mem", "4MB", 2, 1),
                ("statement_timeout", "5s", 3, 1),
                ("tenant", "t1", 5, 2),
            ]
        );
        assert_eq!(o.settings[3].leading_flags.as_deref(), Some("-e"));
        // `x` is bare; `-d 5` and `-D c=d` take their argument; a last `-c`
        // without one sets nothing.
        assert_eq!(o.bare, [4]);
        assert_eq!(
            option_settings("--a-b=1 -- -c x=y"),
            [("a_b".to_owned(), "1".to_owned())]
        );
    }

    #[test]
    fn options_without_settings() {
        let o = parse_startup_options("-c a=1 -ctenant=x --b=\\ 2 -ec tenant=x tenant=x -cc=3");
        let tenant: Vec<usize> = o
            .settings
            .iter()
            .enumerate()
            .filter(|(_, s)| s.name == "tenant")
            .map(|(i, _)| i)
            .collect();
        assert_eq!(o.without(&tenant, &o.bare), "-c a=1 --b=\\ 2 -e -cc=3");
    }
}
