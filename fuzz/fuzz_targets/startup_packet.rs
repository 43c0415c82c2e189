//! Pre-startup packets: the length check (`body_len`) and `parse_body`, as
//! the handshake uses them.
//!
//! Neither may panic. A packet whose length passes `body_len` and whose
//! body parses as a `StartupMessage` must survive an encode/parse round trip.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgcell::{
    body_len, parse_body, FrontendStartup, MAX_STARTUP_PACKET_LEN, PROTOCOL_MINOR,
};

fuzz_target!(|data: &[u8]| {
    // Exactly what the handshake does: four length bytes, then that many
    // more minus four, then the parser.
    let Some((header, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let Ok(len) = body_len(*header) else {
        return;
    };
    assert!(len <= MAX_STARTUP_PACKET_LEN);
    let Some(body) = rest.get(..len) else {
        return;
    };
    // The raw input, unframed, must not panic either.
    let _ = parse_body(rest);
    if let Ok(FrontendStartup::Startup(mut message)) = parse_body(body) {
        // encode() writes protocol 3.0 whatever minor the client asked for.
        message.minor = PROTOCOL_MINOR;
        let mut buf = BytesMut::new();
        message.encode(&mut buf);
        let again = parse_body(&buf[4..]).expect("an encoded StartupMessage parses");
        assert_eq!(again, FrontendStartup::Startup(message));
    }
});
