//! The chaos soak: pulls of mixed sizes, on both drivers, through a proxy that resets, stalls,
//! truncates, drips, flips bytes, refuses connections and answers 503 storms
//! (util/chaos.rs). Every pull must end byte-identical to the source, with no temporary file
//! left, or fail with an error naming what failed and publish nothing; no pull may hang; no
//! file descriptor may be left open once the proxy is gone.
//!
//! The test runs a short soak (8 pulls). The long one is the same test with more pulls:
//!   MODELPULL_SOAK_PULLS=60 cargo test --release -p modelpull --test it chaos:: -- --nocapture
//! MODELPULL_SOAK_SEED picks another fault sequence (faults are drawn in the order connections
//! are accepted, which thread timing decides, so a seed does not replay a run exactly).

use std::sync::mpsc;
use std::time::{Duration, Instant};

use modelpull_testkit::chaos::{Chaos, Mix};
use modelpull_testkit::origin::Origin;
use modelpull_testkit::*;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What this process has open, by descriptor target.
fn open_fds() -> Vec<String> {
    let mut fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|t| t.display().to_string())
        .collect();
    fds.sort();
    fds
}

/// The soak runs in a process of its own: its leak check reads every descriptor of the process,
/// and the other tests of this binary open sockets and files at the same time.
#[test]
fn pulls_through_chaos_end_identical_or_with_a_clear_error() {
    const ALONE: &str = "MODELPULL_SOAK_ALONE";
    if std::env::var_os(ALONE).is_some() {
        return soak();
    }
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "chaos::pulls_through_chaos_end_identical_or_with_a_clear_error",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ALONE, "1")
        .status()
        .unwrap();
    assert!(status.success(), "the soak failed: {status}");
}

fn soak() {
    let pulls = env_or("MODELPULL_SOAK_PULLS", 8) as usize;
    let seed = env_or("MODELPULL_SOAK_SEED", 20261127);
    let mut rng = Rng::new(seed);
    let mut next = move || rng.next();

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("origin");
    std::fs::create_dir_all(&root).unwrap();
    let sizes: [usize; 10] = [
        0, 1, 4095, 65_539, 300_000, 1_048_593, 2_097_152, 3_145_733, 5_242_880, 8_388_609,
    ];
    let files: Vec<(String, Vec<u8>)> = sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| (format!("f{i}.bin"), data(100 + i as u64, len)))
        .collect();
    for (name, content) in &files {
        std::fs::write(root.join(name), content).unwrap();
    }
    let origin = Origin::serve(&root).unwrap();
    let mut chaos = Chaos::start(origin.addr(), seed, Mix::default(), Duration::from_secs(3));
    // Taken after the first pull: what the engine and the origin open once per process (their
    // runtimes' pollers) is not a leak; anything more after the soak is.
    let mut fds_before = Vec::new();

    let drivers = modelpull::runtime::test_drivers();
    let (mut ok, mut bytes_checked, mut failures) = (0usize, 0u64, Vec::new());
    let started = Instant::now();
    for i in 0..pulls {
        let driver = drivers[i % drivers.len()];
        let count = 1 + (next() % 4) as usize;
        let mut picked: Vec<usize> = (0..count)
            .map(|_| (next() % files.len() as u64) as usize)
            .collect();
        picked.sort();
        picked.dedup();
        let targets: Vec<modelpull::Target> = picked
            .iter()
            .map(|&f| {
                let (name, content) = &files[f];
                modelpull::Target::parse(&with_sha256(&chaos.url(name), content)).unwrap()
            })
            .collect();
        let mut opts = options(driver);
        opts.stall_timeout = Duration::from_secs(1);
        opts.retries = 8;
        // A folder per pull: a failed pull leaves its staging folder there, to resume from.
        let dest = dir.path().join(format!("pull-{i}")).join("model");

        let (tx, rx) = mpsc::channel();
        let (d, o) = (dest.clone(), opts.clone());
        let worker = std::thread::spawn(move || {
            let _ = tx.send(pull(targets, &d, &o));
        });
        let pulled = rx
            .recv_timeout(Duration::from_secs(90))
            .unwrap_or_else(|_| panic!("pull {i} ({}) hung for 90 s", driver.name()));
        worker.join().unwrap();
        match pulled {
            Ok(_) => {
                for &f in &picked {
                    let (name, content) = &files[f];
                    assert_file(&dest, name, content);
                    bytes_checked += content.len() as u64;
                }
                assert_clean(dest.parent().unwrap());
                ok += 1;
            }
            Err(e) => {
                assert!(!dest.exists(), "pull {i} failed ({e}) but published");
                let message = e.to_string();
                assert!(
                    picked.iter().any(|&f| message.contains(&files[f].0))
                        || message.contains("127.0.0.1"),
                    "pull {i}: the error names neither a file nor the source: {message}"
                );
                failures.push(format!("pull {i} ({}): {message}", driver.name()));
            }
        }
        if i == 0 {
            // Once the proxy holds no connection of the first pull.
            assert!(
                chaos.wait_idle(Duration::from_secs(10)),
                "connections still open after pull 0"
            );
            fds_before = open_fds();
        }
    }
    chaos.stop();
    let summary = format!(
        "chaos soak, seed {seed}: {pulls} pulls in {:.0} s, {ok} byte-identical ({:.1} MiB checked), {} failed cleanly; {}",
        started.elapsed().as_secs_f64(),
        bytes_checked as f64 / (1 << 20) as f64,
        failures.len(),
        chaos.counts.summary(),
    );
    eprintln!("{summary}");
    for f in &failures {
        eprintln!("  {f}");
    }

    assert!(chaos.counts.injected() > 0, "no fault was injected");
    assert!(ok * 2 >= pulls, "most pulls must get through: {summary}");
    // Connections the origin still holds close once it sees the proxy's side go.
    let deadline = Instant::now() + Duration::from_secs(10);
    // Every descriptor open now was open before (a new socket or file has a new name).
    let new = |now: &[String]| -> Vec<String> {
        let mut before = fds_before.clone();
        now.iter()
            .filter(|fd| match before.iter().position(|b| b == *fd) {
                Some(i) => {
                    before.swap_remove(i);
                    false
                }
                None => true,
            })
            .cloned()
            .collect()
    };
    while !new(&open_fds()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "file descriptors opened during the soak and still open: {:?}",
            new(&open_fds())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
