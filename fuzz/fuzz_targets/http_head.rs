//! HTTP/1.1 response heads as servers and proxies send them: parsed or refused, never a
//! panic, and a parsed head never claims more bytes than it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelpull::http::head;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((h, used))) = head::parse(data) {
        assert!(used <= data.len());
        assert!((100..600).contains(&h.status), "status {}", h.status);
        if let Some(head::ContentRange::Bytes { first, last, total }) = h.content_range {
            assert!(first <= last && total.is_none_or(|t| last < t));
        }
    }
});
