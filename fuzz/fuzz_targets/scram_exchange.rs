//! SCRAM-SHA-256 server side: `ScramServer::client_first` and
//! `client_final` on arbitrary client messages.
//!
//! Neither may panic. Mode 0 feeds raw bytes (mechanism, client-first,
//! client-final separated by 0xFF); mode 1 runs a real client
//! (`ScramClient`) and flips the bytes the input names in its messages:
//! unchanged, the exchange must succeed; changed, the proof must fail
//! unless the change left the message's meaning intact.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pgcell::{ScramClient, ScramServer};
use pgcell::ScramSecret;
use std::sync::OnceLock;

const PASSWORD: &str = "pencil";

/// PBKDF2 once per process, with few iterations: the cost is not what is
/// tested.
fn secret() -> &'static ScramSecret {
    static SECRET: OnceLock<ScramSecret> = OnceLock::new();
    SECRET.get_or_init(|| ScramSecret::from_password(PASSWORD, b"0123456789abcdef", 16))
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let binding = (mode & 0x80 != 0).then(|| b"end-point-hash".to_vec());
    let mut server = ScramServer::new(secret().clone(), binding.clone(), [7; 18]);
    if mode & 1 == 0 {
        let mut parts = rest.splitn(3, |&b| b == 0xFF);
        let mechanism = parts.next().unwrap_or_default();
        let first = parts.next().unwrap_or_default();
        let last = parts.next().unwrap_or_default();
        let mechanism = String::from_utf8_lossy(mechanism);
        if server.client_first(&mechanism, first).is_ok() {
            let _ = server.client_final(last);
        } else {
            // After an error every further call fails.
            assert!(server.client_final(last).is_err());
        }
        return;
    }
    // Mode 1: a real exchange, with the input's byte flips applied to the
    // client-final message (pairs of position, xor mask).
    let mut client = ScramClient::with_password(PASSWORD, [9; 18]);
    let first = client.client_first();
    let Ok(server_first) = server.client_first("SCRAM-SHA-256", &first) else {
        // With channel-binding data the server refuses a client that says
        // it supports binding but did not use it (downgrade): only then.
        assert!(binding.is_some());
        return;
    };
    let Ok(mut last) = client.server_first(&server_first) else {
        panic!("client refused a genuine server-first-message");
    };
    let original = last.clone();
    for pair in rest.chunks_exact(2) {
        if !last.is_empty() {
            let at = usize::from(pair[0]) % last.len();
            last[at] ^= pair[1];
        }
    }
    match server.client_final(&last) {
        Ok(success) => {
            if last == original {
                assert!(client.server_final(&success.server_final).is_ok());
            }
        }
        Err(_) => assert_ne!(last, original, "a genuine exchange failed"),
    }
});
