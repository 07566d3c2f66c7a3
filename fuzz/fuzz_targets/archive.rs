//! Archives as a store could serve them (first byte: tar, tar.gz or zip): unpacked or refused,
//! never a panic, and nothing is ever written outside the unpack folder: no entry escapes, no
//! link or device is created.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use modelpull::archive::{self, Kind, Limits};

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let meta = std::fs::symlink_metadata(&p).unwrap();
        assert!(
            meta.is_dir() || meta.is_file(),
            "{} is neither file nor folder",
            p.display()
        );
        if meta.is_dir() {
            walk(&p, out);
        }
        out.push(p);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    let kind = match kind % 3 {
        0 => Kind::Tar,
        1 => Kind::TarGz,
        _ => Kind::Zip,
    };
    let sandbox = tempfile::tempdir().unwrap();
    let file = sandbox.path().join("archive");
    std::fs::write(&file, bytes).unwrap();
    let dir = sandbox.path().join("out");
    std::fs::create_dir(&dir).unwrap();
    let limits = Limits {
        max_bytes: 1 << 20,
        max_entries: 1000,
    };
    let _ = archive::unpack(&file, kind, &dir, limits);
    let mut top: Vec<_> = std::fs::read_dir(sandbox.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    top.sort();
    assert_eq!(
        top,
        ["archive", "out"],
        "something was written beside the unpack folder"
    );
    let mut found = Vec::new();
    walk(&dir, &mut found);
    let total: u64 = found
        .iter()
        .filter_map(|p| std::fs::symlink_metadata(p).ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    assert!(
        total <= limits.max_bytes,
        "{total} bytes unpacked, limit {}",
        limits.max_bytes
    );
});
