//! End-to-end pulls against the in-tree origin, on both drivers.

use modelpull_testkit::*;

#[test]
fn pulls_several_files_verified() {
    let big = data(1, 3 * 1024 * 1024 + 1234);
    let small = data(2, 100);
    let fx = Fixture::new(&[("big.bin", &big), ("small.json", &small), ("empty", b"")]);
    each_driver(|driver| {
        let dest = fx.dest(&format!("m-{}", driver.name()));
        let targets = vec![
            fx.target("big.bin", true),
            fx.target("small.json", false),
            fx.target("empty", false),
        ];
        let report = pull(targets, &dest, &options(driver)).unwrap();
        assert_file(&dest, "big.bin", &big);
        assert_file(&dest, "small.json", &small);
        assert_file(&dest, "empty", b"");
        assert_eq!(report.driver, Some(driver));
        assert_eq!(sha256_of(&report, "small.json"), sha256_hex(&small));
        assert_eq!(sha256_of(&report, "empty"), sha256_hex(b""));
        assert_clean(dest.parent().unwrap());
    });
}

#[test]
fn tight_memory_spills_to_disk_and_stays_correct() {
    // Two buffers beyond one per connection: most chunks ahead of the cursor cannot be kept
    // in memory and are read back from the part file for hashing.
    let a = data(21, 5 * 1024 * 1024 + 17);
    let b = data(22, 3 * 1024 * 1024);
    let fx = Fixture::new(&[("a.bin", &a), ("b.bin", &b)]);
    each_driver(|driver| {
        let mut opts = options(driver);
        opts.memory_limit = (opts.max_connections + 2) * opts.chunk_size;
        let dest = fx.dest(&format!("m-{}", driver.name()));
        let report = pull(
            vec![fx.target("a.bin", true), fx.target("b.bin", true)],
            &dest,
            &opts,
        )
        .unwrap();
        assert_file(&dest, "a.bin", &a);
        assert_file(&dest, "b.bin", &b);
        assert!(
            report.peak_buffer_bytes <= opts.memory_limit as u64,
            "{}",
            report.peak_buffer_bytes
        );
    });
}

#[test]
fn many_small_files_in_nested_directories() {
    let files: Vec<(String, Vec<u8>)> = (0..200)
        .map(|i| {
            (
                format!("tok/{}/f{i}.json", i % 7),
                data(100 + i, (i as usize * 37) % 5000),
            )
        })
        .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, c)| (n.as_str(), c.as_slice()))
        .collect();
    let fx = Fixture::new(&refs);
    each_driver(|driver| {
        let dest = fx.dest(&format!("m-{}", driver.name()));
        let targets: Vec<_> = files
            .iter()
            .map(|(n, _)| {
                let mut t = fx.target(n, true);
                t.path = n.clone();
                t
            })
            .collect();
        pull(targets, &dest, &options(driver)).unwrap();
        for (n, c) in &files {
            assert_file(&dest, n, c);
        }
        assert_clean(dest.parent().unwrap());
    });
}

#[test]
fn metrics_count_what_happened() {
    let content = data(31, 1024 * 1024);
    let fx = Fixture::new(&[("model.bin", &content)]);
    fx.origin.set_faults(modelpull_testkit::origin::Faults {
        reset_after: Some(10_000),
        reset_times: 1,
        ..Default::default()
    });
    let registry = prometheus::Registry::new();
    let cx = modelpull::Context {
        metrics: modelpull::metrics::Metrics::new(&registry).unwrap(),
        ..Default::default()
    };
    let opts = options(modelpull::runtime::Driver::Epoll);
    let req = modelpull::PullRequest {
        sources: Vec::new(),
        unpack: false,
        adopt: false,
        targets: vec![fx.target("model.bin", true)],
        dest: fx.dest("m"),
    };
    modelpull::pull(&req, &opts, &cx).unwrap();
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
    };
    assert!(value("modelpull_downloaded_bytes_total") >= content.len() as f64);
    assert_eq!(value("modelpull_files_total"), 1.0);
    assert!(value("modelpull_retries_total") >= 1.0);
    assert!(value("modelpull_ranges_total") >= 4.0);
    assert_eq!(value("modelpull_connections_active"), 0.0);
    assert_eq!(value("modelpull_io_driver{driver=\"epoll\"}"), 1.0);
    assert_eq!(value("modelpull_pulls_total{result=\"ok\"}"), 1.0);
}

#[test]
fn resume_discards_a_file_that_changed_on_the_server() {
    use std::sync::atomic::Ordering::Relaxed;
    let content = data(41, 4 * 1024 * 1024);
    let fx = Fixture::new(&[("model.bin", &content)]);
    each_driver(|driver| {
        let dest = fx.dest(&format!("m-{}", driver.name()));
        let mut opts = options(driver);
        opts.limit_rate = Some(4 * 1024 * 1024);
        let cx = modelpull::Context::default();
        let req = modelpull::PullRequest {
            sources: Vec::new(),
            unpack: false,
            adopt: false,
            targets: vec![fx.target("model.bin", true)],
            dest: dest.clone(),
        };
        let before = fx.origin.stats().body_bytes.load(Relaxed);
        std::thread::scope(|s| {
            let h = s.spawn(|| modelpull::pull(&req, &opts, &cx));
            while cx.progress.done_bytes.load(Relaxed) < 1024 * 1024 {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            cx.cancel.store(true, Relaxed);
            let err = h.join().unwrap().unwrap_err();
            assert_eq!(err.exit_code(), modelpull::ExitCode::Interrupted);
        });
        assert!(!dest.exists());
        fx.origin.change_etags();
        opts.limit_rate = None;
        let report = pull(req.targets.clone(), &dest, &opts).unwrap();
        assert_file(&dest, "model.bin", &content);
        assert_eq!(
            report.resumed_bytes, 0,
            "a changed file must not keep old bytes"
        );
        let served = fx.origin.stats().body_bytes.load(Relaxed) - before;
        assert!(
            served >= content.len() as u64 + 1024 * 1024,
            "served {served}"
        );
    });
}
