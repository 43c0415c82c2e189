//! Tagged-message framing: `split_message` and `FrameTracker` on arbitrary
//! byte streams.
//!
//! Neither may panic, and on the part of the stream that `split_message`
//! accepts (everything before the first message it refuses) they agree:
//! the tracker is between two messages exactly at the offsets where
//! `split_message` ended a message, whether it is fed byte by byte or in the
//! chunk sizes the input chooses, and its last tag is that of the last
//! header it saw.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgcell::{split_message, FrameTracker, HEADER_LEN};

/// Bound passed to `split_message`; small so that refusals are reachable.
const MAX_BODY: usize = 4096;

fuzz_target!(|input: &[u8]| {
    // The first byte picks the chunk size of the second feeding; the rest is
    // the stream.
    let Some((&chunk_seed, stream)) = input.split_first() else {
        return;
    };
    let chunk_len = usize::from(chunk_seed % 64) + 1;

    // Split the whole stream; remember where each message ended.
    let mut buf = BytesMut::from(stream);
    let mut ends = vec![0usize];
    let mut tags = Vec::new();
    let mut consumed = 0;
    // Bytes of the stream `split_message` accepts: complete messages, plus
    // a trailing incomplete one when the stream ends inside it.
    let valid = loop {
        match split_message(&mut buf, MAX_BODY) {
            Ok(Some(message)) => {
                consumed += HEADER_LEN + message.body.len();
                ends.push(consumed);
                tags.push(message.tag);
            }
            Ok(None) => break stream.len(),
            Err(_) => break consumed,
        }
    };
    assert_eq!(consumed + buf.len(), stream.len());

    // Byte by byte.
    let mut tracker = FrameTracker::default();
    assert!(tracker.at_boundary());
    for (i, byte) in stream[..valid].iter().enumerate() {
        tracker.advance(std::slice::from_ref(byte));
        let offset = i + 1;
        assert_eq!(
            tracker.at_boundary(),
            ends.binary_search(&offset).is_ok(),
            "boundary disagreement at offset {offset}"
        );
    }
    // A complete header of a trailing incomplete message counts as seen.
    let trailing = &stream[consumed..valid];
    let expected_tag = if trailing.len() >= HEADER_LEN {
        Some(trailing[0])
    } else {
        tags.last().copied()
    };
    assert_eq!(tracker.last_tag(), expected_tag);

    // In chunks.
    let mut chunked = FrameTracker::default();
    let mut offset = 0;
    for chunk in stream[..valid].chunks(chunk_len) {
        chunked.advance(chunk);
        offset += chunk.len();
        assert_eq!(
            chunked.at_boundary(),
            ends.binary_search(&offset).is_ok(),
            "chunked boundary disagreement at offset {offset}"
        );
    }
    assert_eq!(chunked.last_tag(), expected_tag);

    // Past the first refused message the tracker must still not panic.
    chunked.advance(&stream[valid..]);
});
