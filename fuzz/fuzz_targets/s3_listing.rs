//! S3 ListObjectsV2 XML: parsed or refused, never a panic; what parses goes through the
//! listing check (listing_check.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "listing_check.rs"]
mod listing_check;

fuzz_target!(|data: &[u8]| {
    if let Ok((objects, _next)) = modelpull::fuzzing::s3_listing_page(data) {
        listing_check::check(objects.into_iter().map(|(key, _)| key).collect());
    }
});
