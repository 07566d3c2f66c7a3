//! What a power cut may not undo, read from the system calls of a real pull (strace, on the
//! epoll driver, where file syncs are plain system calls; the io_uring driver submits the same
//! sequence as ring operations, which strace cannot show): every file is flushed after its
//! last write and its final truncation and before it is renamed into place, the staging
//! folder is flushed after its last entry and before it is renamed to the destination, and
//! the parent folder is flushed after that rename. A published model is never missing bytes.

use std::process::Command;

use modelpull_testkit::*;

#[test]
fn data_is_flushed_before_each_rename_and_folders_after() {
    if Command::new("strace").arg("-V").output().is_err() {
        assert!(
            std::env::var_os("MODELPULL_REQUIRE_SERVERS").is_none(),
            "strace is missing (scripts/setup-test.sh installs it)"
        );
        eprintln!("strace is not installed: skipped");
        return;
    }
    let big = data(5, 3 * 1024 * 1024 + 11);
    let fx = Fixture::new(&[("a.bin", &big), ("sub/b.txt", b"small file")]);
    let dest = fx.dest("m");
    let trace = fx.dir.path().join("trace");
    let out = Command::new("strace")
        .args([
            "-f",
            "-y",
            "-qq",
            "-e",
            "trace=fdatasync,fsync,rename,renameat,renameat2,pwrite64,pwritev,pwritev2,write,ftruncate,fallocate",
            "-o",
        ])
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_modelpull"))
        .args(["pull", "--driver", "epoll"])
        .arg(with_sha256(&fx.origin.url("a.bin"), &big))
        .arg(fx.origin.url("sub/b.txt"))
        .arg(&dest)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_success(&out);
    assert_file(&dest, "a.bin", &big);
    let text = std::fs::read_to_string(&trace).unwrap();
    // "PID call(args) = result"; of a call strace split in two, the first half is kept (it
    // has the name and arguments), the `resumed` half dropped.
    let calls: Vec<String> = text
        .lines()
        .filter(|l| !l.contains("resumed>"))
        .map(|l| l.split_once(' ').map_or(l, |(_, c)| c).trim().to_owned())
        .collect();
    let position = |what: &dyn Fn(&str) -> bool, name: &str| {
        calls
            .iter()
            .position(|c| what(c))
            .unwrap_or_else(|| panic!("no {name} in:\n{}", calls.join("\n")))
    };
    let parent = dest.parent().unwrap().canonicalize().unwrap();
    let staging = parent.join(".m.modelpull");
    let (parent, staging) = (parent.display().to_string(), staging.display().to_string());
    for file in ["a.bin", "b.txt"] {
        let part = format!("{staging}/{file}.part");
        let renamed = position(
            &|c| c.starts_with("rename") && c.contains(&format!("\"{part}\"")),
            &format!("rename of {part}"),
        );
        let on_part = |prefixes: &[&str]| {
            calls[..renamed].iter().rposition(|c| {
                prefixes.iter().any(|p| c.starts_with(p)) && c.contains(&format!("<{part}>"))
            })
        };
        let last_write = on_part(&["pwrite64(", "pwritev(", "pwritev2(", "write(", "ftruncate("])
            .unwrap_or_else(|| panic!("no write to {part}"));
        let synced = on_part(&["fdatasync(", "fsync("])
            .unwrap_or_else(|| panic!("no flush of {part} before its rename"));
        assert!(
            last_write < synced,
            "{file}: written or resized after its last flush"
        );
        assert!(
            synced < renamed,
            "{file}: renamed before its data was flushed"
        );
    }
    let published = position(
        &|c| c.starts_with("rename") && c.contains(&format!("\"{staging}\"")),
        "the rename to the destination",
    );
    let last_entry = calls[..published]
        .iter()
        .rposition(|c| c.starts_with("rename") && c.contains(&format!("\"{staging}/")))
        .expect("entries renamed inside the staging folder");
    let staging_synced = calls[last_entry..published]
        .iter()
        .any(|c| c.starts_with("fsync(") && c.contains(&format!("<{staging}>")));
    assert!(
        staging_synced,
        "the staging folder is not flushed between its last entry and the publish"
    );
    let parent_synced = calls[published..]
        .iter()
        .any(|c| c.starts_with("fsync(") && c.contains(&format!("<{parent}>")));
    assert!(
        parent_synced,
        "the parent folder is not flushed after the publish"
    );
}
