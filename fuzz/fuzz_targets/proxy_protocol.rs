//! PROXY protocol headers: `parse_v2` and `parse_v1` on arbitrary bytes.
//!
//! Neither may panic; whatever they accept must be self-consistent.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pgcell::{parse_v1, parse_v2, ProxyHeader, MAX_VPCE_ID_LEN};

fuzz_target!(|data: &[u8]| {
    if let Ok(ProxyHeader::Proxy {
        vpce_id, version, ..
    }) = parse_v2(data)
    {
        assert_eq!(version, 2);
        if let Some(id) = vpce_id {
            assert!(!id.is_empty() && id.len() <= MAX_VPCE_ID_LEN);
            assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        }
    }
    if let Ok(ProxyHeader::Proxy {
        vpce_id, version, ..
    }) = parse_v1(data)
    {
        assert_eq!(version, 1);
        assert!(vpce_id.is_none());
    }
});
