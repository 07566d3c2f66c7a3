//! Pulls that adopt a folder another tool wrote: matching files kept where they lie, the
//! others fetched alone, in place or by exchanging the folder for a verified copy.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;

use modelpull::report::Repair;
use modelpull::{Context, PullRequest, Target};
use modelpull_testkit::*;

fn adopt(targets: Vec<Target>, dest: &Path) -> modelpull::Result<modelpull::Report> {
    let driver = modelpull::runtime::test_drivers()[0];
    modelpull::pull(
        &PullRequest {
            targets,
            dest: dest.to_owned(),
            unpack: false,
            sources: vec!["http://origin/model".into()],
            adopt: true,
        },
        &options(driver),
        &Context::default(),
    )
}

/// Targets for `names` with their sha256 and size, as a store's listing gives them.
fn listed(fx: &Fixture, names: &[&str]) -> Vec<Target> {
    names
        .iter()
        .map(|n| {
            let mut t = fx.target(n, true);
            t.path = (*n).into();
            t.size = Some(std::fs::metadata(fx.root().join(n)).unwrap().len());
            t
        })
        .collect()
}

/// The paths the origin served, each once.
fn served(fx: &Fixture) -> Vec<String> {
    let mut paths: Vec<String> = fx
        .origin
        .stats()
        .served
        .lock()
        .unwrap()
        .iter()
        .map(|(p, _, _)| p.trim_start_matches('/').to_owned())
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

fn ino(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

#[test]
fn a_folder_another_tool_wrote_is_adopted_and_repaired_in_place() {
    let (a, b, c, d) = (
        data(31, 3 << 20),
        data(32, 70_000),
        data(33, 1 << 20),
        data(34, 5000),
    );
    let fx = Fixture::new(&[
        ("a.bin", &a),
        ("sub/b.json", &b),
        ("c.bin", &c),
        ("d.bin", &d),
    ]);
    let dest = fx.dest("m");
    std::fs::create_dir_all(dest.join("sub")).unwrap();
    std::fs::create_dir_all(dest.join(".cache/huggingface")).unwrap();
    std::fs::write(dest.join("a.bin"), &a).unwrap();
    std::fs::write(dest.join("sub/b.json"), &b).unwrap();
    let mut damaged = c.clone();
    damaged[1000] ^= 0xff;
    std::fs::write(dest.join("c.bin"), &damaged).unwrap();
    std::fs::write(dest.join(".cache/huggingface/x.metadata"), b"theirs").unwrap();
    let (ino_a, ino_b, ino_dest) = (
        ino(&dest.join("a.bin")),
        ino(&dest.join("sub/b.json")),
        ino(&dest),
    );
    let targets = listed(&fx, &["a.bin", "sub/b.json", "c.bin", "d.bin"]);

    let report = adopt(targets.clone(), &dest).unwrap();
    let adoption = report.adoption.clone().expect("an adoption");
    assert_eq!(adoption.repair, Repair::InPlace);
    assert_eq!((adoption.adopted_files, adoption.fetched_files), (2, 2));
    assert_eq!(adoption.adopted_bytes, (a.len() + b.len()) as u64);
    assert_eq!(adoption.fetched_bytes, (c.len() + d.len()) as u64);
    assert_eq!(
        served(&fx),
        ["c.bin", "d.bin"],
        "only the damaged and the missing file were fetched"
    );
    let sent = fx.origin.stats().body_bytes.load(Relaxed);
    for (name, content) in [
        ("a.bin", &a),
        ("sub/b.json", &b),
        ("c.bin", &c),
        ("d.bin", &d),
    ] {
        assert_file(&dest, name, content);
    }
    assert_eq!(ino(&dest.join("a.bin")), ino_a, "kept, not rewritten");
    assert_eq!(ino(&dest.join("sub/b.json")), ino_b);
    assert_eq!(ino(&dest), ino_dest, "the folder itself stays");
    assert!(dest.join(".cache/huggingface/x.metadata").exists());
    assert_eq!(adoption.marker, dest.join(modelpull::MARKER));
    assert!(modelpull::Marker::read(&dest).unwrap().files_present(&dest));
    assert_clean(dest.parent().unwrap());
    assert!(!dest.with_file_name(".m.modelpull.lock").exists());

    let again = adopt(targets, &dest).unwrap();
    assert!(again.up_to_date && again.adoption.is_none());
    assert_eq!(fx.origin.stats().body_bytes.load(Relaxed), sent);
}

#[test]
fn a_folder_that_cannot_be_repaired_in_place_is_exchanged_for_a_verified_copy() {
    let (a, c) = (data(35, 2 << 20), data(36, 300_000));
    let fx = Fixture::new(&[("a.bin", &a), ("c.bin", &c)]);
    let dest = fx.dest("m");
    // A folder where the file c.bin goes: no rename can replace it in place.
    std::fs::create_dir_all(dest.join("c.bin/in-the-way")).unwrap();
    std::fs::write(dest.join("a.bin"), &a).unwrap();
    let before = ino(&dest);
    let targets = listed(&fx, &["a.bin", "c.bin"]);

    let report = adopt(targets.clone(), &dest).unwrap();
    let adoption = report.adoption.expect("an adoption");
    assert_eq!(adoption.repair, Repair::Exchanged);
    assert_eq!((adoption.adopted_files, adoption.fetched_files), (1, 1));
    assert_eq!(served(&fx), ["c.bin"]);
    assert_file(&dest, "a.bin", &a);
    assert_file(&dest, "c.bin", &c);
    assert_ne!(ino(&dest), before, "a new folder in the same place");
    let old = adoption.replaced.expect("the previous folder, aside");
    assert_eq!(ino(&old), before);
    assert!(old.join("c.bin/in-the-way").is_dir());
    assert!(
        old.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(".m.modelpull-old-")
    );
    assert!(!dest.with_file_name(".m.modelpull").exists());
    assert!(adopt(targets, &dest).unwrap().up_to_date);
}

#[test]
fn without_adopt_a_foreign_folder_is_refused() {
    let a = data(37, 1000);
    let fx = Fixture::new(&[("a.bin", &a)]);
    let dest = fx.dest("m");
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::write(dest.join("a.bin"), &a).unwrap();
    let err = pull(
        listed(&fx, &["a.bin"]),
        &dest,
        &options(modelpull::runtime::test_drivers()[0]),
    )
    .unwrap_err();
    assert!(
        matches!(err, modelpull::Error::DestinationOccupied { .. }),
        "{err}"
    );
}
