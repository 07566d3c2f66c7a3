//! Every fault the origin can inject: the pull either ends byte-identical or fails with the
//! documented error, never with a silent corrupt file and never hanging. Both drivers.

use std::time::{Duration, Instant};

use modelpull::{Error, ExitCode};
use modelpull_testkit::origin::Faults;
use modelpull_testkit::*;

const SIZE: usize = 2 * 1024 * 1024 + 4097;

/// One pull's outcome on one driver: the result, the source content and the fixture.
type Run = (
    modelpull::runtime::Driver,
    Result<modelpull::Report, Error>,
    Vec<u8>,
    Fixture,
);

fn run_with(faults: Faults, tweak: impl Fn(&mut modelpull::Options)) -> Vec<Run> {
    let content = data(7, SIZE);
    let mut out = Vec::new();
    for driver in modelpull::runtime::test_drivers() {
        let fx = Fixture::new(&[("model.bin", &content)]);
        fx.origin.set_faults(faults.clone());
        let mut opts = options(driver);
        tweak(&mut opts);
        let dest = fx.dest("m");
        let started = Instant::now();
        let res = pull(vec![fx.target("model.bin", true)], &dest, &opts);
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{}: pull took too long",
            driver.name()
        );
        if res.is_ok() {
            assert_file(&dest, "model.bin", &content);
            assert_clean(dest.parent().unwrap());
        } else {
            assert!(!dest.exists(), "a failed pull must not publish");
        }
        out.push((driver, res, content.clone(), fx));
    }
    out
}

fn assert_all_ok(faults: Faults) -> Vec<modelpull::Report> {
    run_with(faults, |_| {})
        .into_iter()
        .map(|(d, r, _, _)| r.unwrap_or_else(|e| panic!("{}: {e}", d.name())))
        .collect()
}

#[test]
fn connection_resets_are_retried() {
    for r in assert_all_ok(Faults {
        reset_after: Some(100_000),
        reset_times: 4,
        ..Faults::default()
    }) {
        assert!(r.retries >= 1);
    }
}

#[test]
fn stalls_are_detected_and_retried() {
    let runs = run_with(
        Faults {
            stall_after: Some(50_000),
            stall_times: 1,
            ..Faults::default()
        },
        |o| {
            o.stall_timeout = Duration::from_millis(500);
        },
    );
    for (d, r, _, _) in runs {
        let r = r.unwrap_or_else(|e| panic!("{}: {e}", d.name()));
        assert!(r.retries >= 1);
    }
}

#[test]
fn busy_server_is_retried_honouring_retry_after() {
    let started = Instant::now();
    for r in assert_all_ok(Faults {
        status: Some(503),
        retry_after: Some(1),
        status_times: 2,
        ..Faults::default()
    }) {
        assert!(r.retries >= 2);
    }
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "Retry-After: 1 was not honoured"
    );
    assert_all_ok(Faults {
        status: Some(429),
        status_times: 3,
        ..Faults::default()
    });
}

#[test]
fn missing_file_fails_fast_with_source_error() {
    for (d, r, _, _) in run_with(
        Faults {
            status: Some(404),
            status_times: 1000,
            ..Faults::default()
        },
        |_| {},
    ) {
        let err = r.expect_err(d.name());
        assert_eq!(err.exit_code(), ExitCode::Source, "{err}");
        assert!(err.to_string().contains("HTTP 404"), "{err}");
        assert!(err.to_string().contains("model.bin"), "{err}");
    }
}

#[test]
fn endless_errors_end_with_a_clear_failure() {
    for (d, r, _, fx) in run_with(
        Faults {
            status: Some(503),
            status_times: 1000,
            ..Faults::default()
        },
        |o| o.retries = 3,
    ) {
        let err = r.expect_err(d.name());
        assert_eq!(err.exit_code(), ExitCode::Source);
        assert!(
            err.to_string().contains("after 4 attempt(s)") && err.to_string().contains("503"),
            "{err}"
        );
        assert!(
            fx.origin
                .stats()
                .requests
                .load(std::sync::atomic::Ordering::Relaxed)
                <= 4
        );
    }
}

#[test]
fn one_corrupt_byte_is_caught_and_refetched() {
    for r in assert_all_ok(Faults {
        corrupt_offset: Some(SIZE as u64 / 2),
        corrupt_times: 1,
        ..Faults::default()
    }) {
        assert_eq!(r.files[0].size as usize, SIZE);
    }
}

#[test]
fn persistent_corruption_fails_verification_naming_the_digests() {
    for (d, r, content, _) in run_with(
        Faults {
            corrupt_offset: Some(10),
            corrupt_times: 1000,
            ..Faults::default()
        },
        |_| {},
    ) {
        let err = r.expect_err(d.name());
        assert_eq!(err.exit_code(), ExitCode::Verify, "{}: {err}", d.name());
        let msg = err.to_string();
        assert!(
            msg.contains("model.bin") && msg.contains(&sha256_hex(&content)),
            "{msg}"
        );
        assert!(msg.contains("after 3 download(s)"), "{msg}");
        // The same wrong bytes each time: the store's copy, not the way.
        assert!(msg.contains("the store's copy may be corrupt"), "{msg}");
    }
}

#[test]
fn server_ignoring_range_is_read_on_one_connection() {
    assert_all_ok(Faults {
        ignore_range: true,
        ..Faults::default()
    });
}

#[test]
fn wrong_content_range_is_refused_then_retried() {
    assert_all_ok(Faults {
        wrong_content_range_times: 2,
        ..Faults::default()
    });
    for (d, r, _, _) in run_with(
        Faults {
            wrong_content_range_times: 1000,
            ..Faults::default()
        },
        |o| o.retries = 3,
    ) {
        let err = r.expect_err(d.name());
        assert_eq!(err.exit_code(), ExitCode::Source);
        assert!(err.to_string().contains("for requested bytes"), "{err}");
    }
}

#[test]
fn chunked_bodies_are_decoded() {
    assert_all_ok(Faults {
        chunked: true,
        ..Faults::default()
    });
}

#[test]
fn a_slow_connection_does_not_hold_the_tail() {
    // One response crawls at 64 KiB/s; its range (256 KiB) alone would take 4 s. Idle
    // workers take over the rest of it.
    let started = Instant::now();
    for r in assert_all_ok(Faults {
        slow_rate: Some(64 * 1024),
        slow_times: 1,
        ..Faults::default()
    }) {
        assert_eq!(r.files[0].size as usize, SIZE);
    }
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn a_file_changing_on_the_server_is_started_over() {
    let content = data(9, SIZE);
    each_driver(|driver| {
        let fx = Fixture::new(&[("model.bin", &content)]);
        let mut opts = options(driver);
        opts.limit_rate = Some(4 * 1024 * 1024);
        let dest = fx.dest("m");
        let target = fx.target("model.bin", true);
        std::thread::scope(|s| {
            let h = s.spawn(|| pull(vec![target], &dest, &opts));
            while fx
                .origin
                .stats()
                .body_bytes
                .load(std::sync::atomic::Ordering::Relaxed)
                < (SIZE / 4) as u64
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            fx.origin.change_etags();
            h.join().unwrap().unwrap();
        });
        assert_file(&dest, "model.bin", &content);
        let served = fx
            .origin
            .stats()
            .body_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            served > SIZE as u64,
            "the file was not fetched again after the change"
        );
    });
}

#[test]
fn redirects_are_followed_and_credentials_stay_home() {
    let content = data(3, 300_000);
    each_driver(|driver| {
        let fx = Fixture::new(&[("model.bin", &content)]);
        let other = Fixture::new(&[("model.bin", &content)]);
        // The same machine under another name is another host.
        fx.origin.set_faults(Faults {
            redirect_base: Some(
                other
                    .origin
                    .url_for_host("localhost", "")
                    .trim_end_matches('/')
                    .to_owned(),
            ),
            ..Faults::default()
        });
        let mut opts = options(driver);
        opts.headers = vec![("Authorization".into(), "Bearer secret".into())];
        let dest = fx.dest("m");
        let target = modelpull::Target::parse(&fx.origin.url("redirect/model.bin")).unwrap();
        pull(vec![target], &dest, &opts).unwrap();
        assert_file(&dest, "model.bin", &content);
        assert!(
            fx.origin
                .requests_seen()
                .iter()
                .all(|(_, a)| a.as_deref() == Some("Bearer secret"))
        );
        let seen = other.origin.requests_seen();
        assert!(!seen.is_empty(), "fx saw {:?}", fx.origin.requests_seen());
        assert!(
            seen.iter().all(|(_, a)| a.is_none()),
            "credentials leaked across hosts: {seen:?}; home saw {:?}",
            fx.origin.requests_seen()
        );
    });
}

#[test]
fn redirect_loops_are_bounded() {
    let fx = Fixture::new(&[]);
    let target = modelpull::Target::parse(&fx.origin.url("loop")).unwrap();
    let err = pull(
        vec![target],
        &fx.dest("m"),
        &options(modelpull::runtime::Driver::Epoll),
    )
    .unwrap_err();
    assert_eq!(err.exit_code(), ExitCode::Source);
    assert!(err.to_string().contains("more than 10 redirects"), "{err}");
}
