//! Relative paths as any listing could name them, one per line: the listing check's
//! invariants (listing_check.rs) hold for every accepted set.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "listing_check.rs"]
mod listing_check;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    listing_check::check(text.split('\n').map(str::to_owned).collect());
});
