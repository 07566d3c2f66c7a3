//! `Content-Range` and `Retry-After` values: what is accepted is consistent.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use modelpull::http::head;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(head::ContentRange::Bytes { first, last, total }) = head::parse_content_range(text) {
        assert!(first <= last, "{text:?}");
        assert!(total.is_none_or(|t| last < t), "{text:?}");
    }
    let _ = head::retry_after(text, UNIX_EPOCH + Duration::from_secs(1_800_000_000));
});
