//! Resume journals as a crash or a hostile disk could leave them: loaded or ignored, never a
//! panic, and what loads only names chunks inside the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelpull::disk::journal;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.modelpull-journal");
    std::fs::write(&path, data).unwrap();
    if let Some(loaded) = journal::Journal::load(&path) {
        let chunks = loaded.header.size.div_ceil(loaded.header.chunk_size);
        for (index, crcs) in loaded.synced.iter().chain(&loaded.unsynced) {
            assert!(*index < chunks, "chunk {index} of {chunks}");
            assert!(!crcs.is_empty());
        }
    }
});
