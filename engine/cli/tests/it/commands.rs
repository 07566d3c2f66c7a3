//! The `modelpull` binary as users meet it: exit codes, one-line errors, JSON output, nothing
//! half-written after a failure, and resume after `kill -9`.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use modelpull_testkit::*;

fn modelpull(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_modelpull"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run modelpull")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A failure: the exit code, one line on stderr that contains `needle`, nothing at `dest`.
fn assert_fails(args: &[&str], code: i32, needle: &str, dest: &Path) {
    let o = modelpull(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{args:?}: not one line: {err}"
    );
    assert!(err.contains(needle), "{args:?}: {err}");
    assert!(!dest.exists(), "{args:?}: {} was created", dest.display());
}

#[test]
fn bad_input_exits_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m");
    let d = dest.to_str().unwrap();
    assert_fails(
        &["pull", "not a url", d],
        2,
        "invalid source `not a url`",
        &dest,
    );
    assert_fails(
        &["pull", "ftp://example.com/x", d],
        2,
        "unsupported scheme `ftp`",
        &dest,
    );
    assert_fails(
        &["pull", "http://127.0.0.1:9/x#sha256=abcd", d],
        2,
        "sha256 digest must be 64 hex digits, got 4",
        &dest,
    );
    assert_fails(
        &["pull", "http://127.0.0.1:9/x#sha999=00", d],
        2,
        "unknown digest algorithm",
        &dest,
    );
    assert_fails(
        &["pull", "http://127.0.0.1:9/dir/", d],
        2,
        "names no file",
        &dest,
    );
    assert_fails(
        &[
            "pull",
            "http://127.0.0.1:9/a/x",
            "http://127.0.0.1:9/b/x",
            d,
        ],
        2,
        "same path `x`",
        &dest,
    );
    assert_fails(
        &["pull", "--chunk-size", "1000", "http://127.0.0.1:9/x", d],
        2,
        "multiple of 4096",
        &dest,
    );
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let missing = dir.path().join("missing.pem");
    for (bundle, needle) in [
        (&junk, "holds no usable PEM certificate"),
        (&missing, "cannot read CA bundle"),
    ] {
        assert_fails(
            &[
                "pull",
                "--proxy-ca-bundle",
                bundle.to_str().unwrap(),
                "http://127.0.0.1:9/x",
                d,
            ],
            2,
            needle,
            &dest,
        );
    }
    // A usage error gets clap's usage text, and the same exit code.
    assert_eq!(
        modelpull(&["pull", "http://127.0.0.1:9/x"]).status.code(),
        Some(2)
    );
}

#[test]
fn json_errors_are_machine_readable() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m");
    let o = modelpull(&["pull", "--json", "gopher://h/x", dest.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["exit_code"], 2);
    assert!(v["error"].as_str().unwrap().contains("gopher"));
}

#[test]
fn unwritable_destination_exits_5() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let fx = Fixture::new(&[("model.bin", b"hello")]);
    let dest = file.join("m");
    assert_fails(
        &["pull", &fx.origin.url("model.bin"), dest.to_str().unwrap()],
        5,
        "create directory",
        &dest,
    );
}

#[test]
fn unreachable_server_exits_3_after_retries() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m");
    let o = modelpull(&[
        "pull",
        "--retries",
        "2",
        "http://127.0.0.1:9/model.bin",
        dest.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let err = stderr(&o);
    let last = err.trim_end().lines().last().unwrap();
    assert!(
        last.contains("fetching model.bin failed after 3 attempt(s): cannot connect to 127.0.0.1"),
        "{err}"
    );
    assert!(!dest.exists());
}

#[test]
fn disk_full_exits_5_and_frees_its_staging_space() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&mnt)
        .status();
    if !mounted.is_ok_and(|s| s.success()) {
        let _ = servers::unavailable(
            "cannot mount a small tmpfs here (needs root); the disk-full path is untested in this run",
        );
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(&mnt);
    let content = data(11, 8 * 1024 * 1024);
    let fx = Fixture::new(&[("model.bin", &content), ("small.bin", b"fits")]);
    let dest = mnt.join("m");
    assert_fails(
        &[
            "pull",
            &fx.origin.url("small.bin"),
            &fx.origin.url("model.bin"),
            dest.to_str().unwrap(),
        ],
        5,
        "No space left on device",
        &dest,
    );
    let left: Vec<_> = std::fs::read_dir(&mnt)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "staging space not freed: {left:?}");
    // With the space back, the same command succeeds.
    let dest2 = mnt.join("m2");
    let o = modelpull(&["pull", &fx.origin.url("small.bin"), dest2.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn json_report_then_up_to_date_then_occupied() {
    let content = data(12, 1_000_000);
    let fx = Fixture::new(&[("model.bin", &content)]);
    let dest = fx.dest("m");
    let url = with_sha256(&fx.origin.url("model.bin"), &content);
    let o = modelpull(&[
        "pull",
        "--json",
        "--chunk-size",
        "64K",
        "--range-size",
        "256K",
        &url,
        dest.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["files"][0]["path"], "model.bin");
    assert_eq!(v["files"][0]["size"], 1_000_000);
    assert_eq!(v["files"][0]["verified"][0], "sha256");
    assert!(["uring", "epoll"].contains(&v["driver"].as_str().unwrap()));
    assert!(v["gigabytes_per_second"].as_f64().unwrap() > 0.0);
    assert_file(&dest, "model.bin", &content);

    let o = modelpull(&["pull", &url, dest.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("nothing to do"));

    let other = fx.origin.url("model.bin");
    let o = modelpull(&["pull", &other, dest.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("already exists and holds other files"));
}

#[test]
fn kill_9_then_resume_refetches_no_finished_chunk() {
    const CHUNK: u64 = 256 * 1024;
    let content = data(13, 24 * 1024 * 1024 + 333);
    let fx = Fixture::new(&[("model.bin", &content), ("other.bin", b"second file")]);
    each_driver(|driver| {
        let dest = fx.dest(&format!("m-{}", driver.name()));
        let journal = dest.parent().unwrap().join(format!(
            ".m-{}.modelpull/model.bin.modelpull-journal",
            driver.name()
        ));
        let url = with_sha256(&fx.origin.url("model.bin"), &content);
        let other = fx.origin.url("other.bin");
        let mut common = vec!["--driver", driver.name()];
        common.extend(SMALL_RANGES);
        let mut first: Vec<&str> = vec!["pull"];
        first.extend(&common);
        first.extend(["--limit-rate", "6M", &url, &other, dest.to_str().unwrap()]);
        let mut child = Command::new(env!("CARGO_BIN_EXE_modelpull"))
            .args(&first)
            .spawn()
            .unwrap();
        let started = Instant::now();
        while finished_chunks(&journal).len() < 20 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the first run made no progress"
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "the first run ended before it was killed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let finished = finished_chunks(&journal);
        assert!(
            finished.len() < content.len().div_ceil(CHUNK as usize),
            "killed too late to prove anything"
        );
        let served_before = settled_requests(&fx.origin);

        let mut second: Vec<&str> = vec!["pull"];
        second.extend(&common);
        second.extend(["--json", &url, &other, dest.to_str().unwrap()]);
        let o = modelpull(&second);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert_file(&dest, "model.bin", &content);
        assert_file(&dest, "other.bin", b"second file");
        assert_clean(dest.parent().unwrap());
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(report["resumed_bytes"].as_u64().unwrap() >= finished.len() as u64 * CHUNK - CHUNK);

        let served = fx.origin.stats().served.lock().unwrap();
        for (path, first, len) in served[served_before..]
            .iter()
            .filter(|(p, _, _)| p == "/model.bin")
        {
            for &c in &finished {
                let (a, b) = (c * CHUNK, (c + 1) * CHUNK);
                assert!(
                    first + len <= a || *first >= b,
                    "{path}: bytes {first}+{len} fetched again, but chunk {c} was finished"
                );
            }
        }
    });
}

#[test]
fn help_reads_well() {
    let o = modelpull(&["pull", "--help"]);
    let help = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "<SOURCE>... [DEST]",
        "--local-dir <DIR>",
        "Exit codes:",
        "--limit-rate",
        "--ca-bundle",
        "--driver",
        "--include <PATTERN>",
        "--exclude <PATTERN>",
        "--revision <REV>",
        "-q, --quiet",
        "SELECTION:",
        "OUTPUT:",
    ] {
        assert!(help.contains(needle), "missing {needle}:\n{help}");
    }
}

#[test]
fn sigterm_stops_cleanly_with_130_and_the_pull_resumes() {
    let content = data(14, 8 * 1024 * 1024);
    let fx = Fixture::new(&[("model.bin", &content)]);
    let dest = fx.dest("m");
    let url = fx.origin.url("model.bin");
    let args = [
        "pull",
        "--chunk-size",
        "256K",
        "--range-size",
        "1M",
        "--limit-rate",
        "2M",
        &url,
        dest.to_str().unwrap(),
    ];
    let child = Command::new(env!("CARGO_BIN_EXE_modelpull"))
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let journal = dest
        .parent()
        .unwrap()
        .join(".m.modelpull/model.bin.modelpull-journal");
    let started = Instant::now();
    while finished_chunks(&journal).len() < 4 {
        assert!(started.elapsed() < Duration::from_secs(30), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    let stopping = Instant::now();
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "SIGTERM took too long"
    );
    assert_eq!(out.status.code(), Some(130));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("interrupted; run the same command again to resume")
    );
    assert!(!dest.exists());
    let o = modelpull(
        &args
            .iter()
            .filter(|a| **a != "--limit-rate" && **a != "2M")
            .copied()
            .collect::<Vec<_>>(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_file(&dest, "model.bin", &content);
}

#[test]
fn a_second_pull_into_the_same_destination_refuses_and_the_first_completes() {
    let content = data(17, 8 * 1024 * 1024 + 9);
    let fx = Fixture::new(&[("model.bin", &content)]);
    let dest = fx.dest("m");
    let url = with_sha256(&fx.origin.url("model.bin"), &content);
    let args = ["pull", "--limit-rate", "4M", &url, dest.to_str().unwrap()];
    let mut first = Command::new(env!("CARGO_BIN_EXE_modelpull"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let staging = dest.parent().unwrap().join(".m.modelpull");
    let started = Instant::now();
    while !staging.join("model.bin.part").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the first pull never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let second = modelpull(&args);
    let err = stderr(&second);
    assert_eq!(second.status.code(), Some(5), "{err}");
    assert!(
        err.contains("is locked by another modelpull process")
            && err.contains(&first.id().to_string()),
        "{err}"
    );
    assert!(first.wait().unwrap().success());
    assert_file(&dest, "model.bin", &content);
    assert_clean(dest.parent().unwrap());
}
