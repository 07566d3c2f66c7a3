//! Hugging Face tree API pages: parsed or refused, never a panic; the files go through the
//! listing check (listing_check.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "listing_check.rs"]
mod listing_check;

fuzz_target!(|data: &[u8]| {
    if let Ok(entries) = modelpull::fuzzing::hf_tree_page(data) {
        listing_check::check(
            entries
                .into_iter()
                .filter(|(kind, _, _)| kind == "file")
                .map(|(_, path, _)| path)
                .collect(),
        );
    }
});
