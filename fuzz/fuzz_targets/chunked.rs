//! Chunk-size lines of chunked bodies: a size or an error, never a panic or an overflow.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelpull::http::head;

fuzz_target!(|data: &[u8]| {
    let _ = head::parse_chunk_size(data);
});
