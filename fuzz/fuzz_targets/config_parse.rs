//! The config parser: `Config::parse` on arbitrary text.
//!
//! It may refuse anything but must not panic, and every refusal names at
//! least one problem, each with a key path or a message.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pgcell::Config;
use std::path::Path;

fuzz_target!(|input: &[u8]| {
    // TOML is UTF-8; invalid bytes are the loader's concern (it reads a
    // String), so only text reaches the parser.
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    // A base directory that does not exist: relative paths (password and
    // CA files) resolve under it and are never found.
    match Config::parse(text, Path::new("/nonexistent-pgcell-fuzz")) {
        Ok(config) => {
            assert!(config.listen.max_client_connections >= 1);
            assert!(config.listen.max_message_size >= 10_000);
            for t in &config.tenants {
                assert!(!t.backends.is_empty());
                assert!(t.max_client_connections >= 1);
                assert_ne!(t.max_connection_rate, Some(0));
            }
        }
        Err(e) => {
            assert!(!e.problems.is_empty());
            assert!(!e.to_string().is_empty());
        }
    }
});
