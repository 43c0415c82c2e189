//! Backend message framing as the pooled relay reads it: `split_message`
//! over a backend byte stream, `FrameTracker` in the passthrough relay, and
//! the helpers that look into backend messages (`ParameterStatus`,
//! `ErrorResponse`, the `AuthenticationSASL` filter).
//!
//! No panic; the tracker counts exactly the `ReadyForQuery` messages the
//! framer splits and reports the last one's status byte.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgcell::parameter_status;
use pgcell::{split_message, FrameTracker};
use pgcell::{error_code, error_message, sasl_without_plus};

const MAX_BODY: usize = 1 << 16;

fuzz_target!(|stream: &[u8]| {
    let mut buf = BytesMut::from(stream);
    let mut readies = 0u64;
    let mut status = b'I';
    let mut valid = 0;
    loop {
        match split_message(&mut buf, MAX_BODY) {
            Ok(Some(msg)) => {
                valid += 5 + msg.body.len();
                match msg.tag {
                    b'S' => {
                        if let Some((name, value)) = parameter_status(&msg.body) {
                            assert!(!name.contains('\0') && !value.contains('\0'));
                        }
                    }
                    b'E' | b'N' => {
                        let _ = error_message(&msg.body);
                        assert_eq!(error_code(&msg.body).code().len(), 5);
                    }
                    b'R' => {
                        if let Some(filtered) = sasl_without_plus(&msg.body) {
                            assert!(filtered.len() <= msg.body.len());
                            assert!(!filtered[4..]
                                .split(|&b| b == 0)
                                .any(|m| m == b"SCRAM-SHA-256-PLUS"));
                        }
                    }
                    b'Z' => {
                        readies += 1;
                        if let Some(&s) = msg.body.first() {
                            status = s;
                        }
                    }
                    _ => {}
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    let mut tracker = FrameTracker::default();
    tracker.advance(&stream[..valid]);
    assert!(tracker.at_boundary());
    assert_eq!(tracker.readies(), readies);
    assert_eq!(tracker.status(), status);
});
