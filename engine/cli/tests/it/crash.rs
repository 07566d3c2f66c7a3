//! `kill -9` at 20 moments of one multi-file pull while it downloads, then up to 5 more once
//! every large file is verified (while the run finishes the small files, flushes and
//! publishes; a run may finish before such a kill lands, so their number is reported, and the
//! two stops inside publishing are proved exactly by unit tests in `disk::staging` and
//! `pull::state`), each run resuming the last: the result is complete and identical, nothing temporary is
//! left, and no chunk a journal recorded as finished before a kill is fetched again.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use modelpull_testkit::*;

const CHUNK: u64 = 256 * 1024;
const KILLS: usize = 20;
const LATE_KILLS: usize = 5;

/// Whether a journal says its file is verified (the line written just before publishing).
fn journal_done(path: &std::path::Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| t.lines().any(|l| l.starts_with("{\"done\"")))
}

fn spawn(args: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_modelpull"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn kill_9_at_twenty_moments_then_the_pull_completes_identical() {
    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("a.bin".into(), data(31, 12 * 1024 * 1024 + 5)),
        ("b.bin".into(), data(32, 6 * 1024 * 1024 - 3)),
    ];
    for i in 0..60 {
        files.push((format!("cfg-{i:02}.json"), data(40 + i, 700 + i as usize)));
    }
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, c)| (n.as_str(), c.as_slice()))
        .collect();
    let fx = Fixture::new(&refs);
    let large = ["a.bin", "b.bin"];

    each_driver(|driver| {
        let dest = fx.dest(&format!("m-{}", driver.name()));
        let staging = dest
            .parent()
            .unwrap()
            .join(format!(".m-{}.modelpull", driver.name()));
        let mut args: Vec<String> = ["pull", "--driver", driver.name(), "--limit-rate", "4M"]
            .into_iter()
            .chain(SMALL_RANGES)
            .map(String::from)
            .collect();
        for (name, content) in &files {
            args.push(with_sha256(&fx.origin.url(name), content));
        }
        args.push(dest.to_str().unwrap().to_owned());

        let mut rng = Rng::new(driver.name().len() as u64);
        let mut finished: HashMap<&str, HashSet<u64>> = HashMap::new();
        let (mut kills, mut late_kills) = (0, 0);
        let started = Instant::now();
        loop {
            let served_before = settled_requests(&fx.origin);
            let mut child = spawn(&args);
            let draw = rng.next();
            let verified = || {
                large
                    .iter()
                    .all(|n| journal_done(&staging.join(format!("{n}.modelpull-journal"))))
            };
            // While downloading: 40–300 ms into a run. Late: 0–15 ms after the large files
            // are verified (or after the start, when a run resumes with them verified).
            let early_at = Duration::from_millis(40 + draw % 260);
            let late_delay = Duration::from_millis(draw % 15);
            let mut late_since: Option<Instant> = None;
            let run = Instant::now();
            let (exited, late) = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break (Some(status), false);
                }
                if kills < KILLS {
                    if run.elapsed() >= early_at {
                        break (None, false);
                    }
                } else if late_kills < LATE_KILLS {
                    if late_since.is_none() && verified() {
                        late_since = Some(Instant::now());
                    }
                    if late_since.is_some_and(|t| t.elapsed() >= late_delay) {
                        break (None, true);
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            };
            // No chunk finished before an earlier kill was fetched in this run.
            let served = fx.origin.stats().served.lock().unwrap()[served_before..].to_vec();
            if exited.is_none() {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                if late {
                    late_kills += 1;
                } else {
                    kills += 1;
                }
            }
            for (path, first, len) in &served {
                let name = path.trim_start_matches('/');
                for &c in finished.get(name).into_iter().flatten() {
                    assert!(
                        first + len <= c * CHUNK || *first >= (c + 1) * CHUNK,
                        "{name}: bytes {first}+{len} fetched again after kill {kills}, but chunk {c} was finished"
                    );
                }
            }
            for name in large {
                let journal = staging.join(format!("{name}.modelpull-journal"));
                finished
                    .entry(name)
                    .or_default()
                    .extend(finished_chunks(&journal));
            }
            if let Some(status) = exited {
                let mut err = String::new();
                std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
                assert!(status.success(), "run after {kills} kills: {status}: {err}");
                assert!(
                    kills >= KILLS,
                    "the pull finished after only {kills} kills: slow it down"
                );
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "no completion after {kills} kills"
            );
        }
        for (name, content) in &files {
            assert_file(&dest, name, content);
        }
        assert_clean(dest.parent().unwrap());
        let chunks: usize = finished.values().map(HashSet::len).sum();
        eprintln!(
            "{}: {kills} kills while downloading, {late_kills} after the large files were verified; {chunks} chunks journaled as finished before a kill, none fetched again",
            driver.name()
        );
        assert!(chunks > 0, "no kill landed after a finished chunk");
    });
}
