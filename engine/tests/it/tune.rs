//! Connections found per host while the pull runs, against nginx capping each connection's
//! rate (`limit_rate`, as S3, GCS and CDNs do) or the number of connections (`limit_conn`,
//! answered with 503).

use std::path::Path;

use modelpull::runtime::Driver;
use modelpull::{Options, Target};
use modelpull_testkit::servers::{self, Server};
use modelpull_testkit::*;

const MIB: usize = 1024 * 1024;

/// nginx serving `files` with `directives`, and the directory they are in.
fn nginx_with(files: &[(&str, &[u8])], directives: &str) -> Option<(Server, tempfile::TempDir)> {
    let root = tempfile::tempdir().unwrap();
    for (name, content) in files {
        std::fs::write(root.path().join(name), content).unwrap();
    }
    Some((servers::nginx(root.path(), directives)?, root))
}

fn target(server: &Server, name: &str, content: &[u8]) -> Target {
    Target::parse(&format!(
        "{}/{name}#sha256={}",
        server.url(),
        sha256_hex(content)
    ))
    .unwrap()
}

/// Responses nginx answered with `status`.
fn answered(server: &Server, status: u16) -> usize {
    let log = std::fs::read_to_string(server.dir.path().join("access.log")).unwrap_or_default();
    let needle = format!("\" {status} ");
    log.lines().filter(|l| l.contains(&needle)).count()
}

/// Small chunks and ranges, room for 64 connections.
fn slow_origin_options(driver: Driver) -> Options {
    Options {
        max_connections: 64,
        memory_limit: 8 * MIB,
        ..options(driver)
    }
}

fn pull_one(server: &Server, name: &str, content: &[u8], dest: &Path, opts: &Options) -> Report {
    let report = pull(vec![target(server, name, content)], dest, opts)
        .unwrap_or_else(|e| panic!("pull from {}: {e}\n{}", server.url(), server.log()));
    assert_file(dest, name, content);
    report
}

type Report = modelpull::Report;

#[test]
fn slow_connections_get_company_until_the_rate_stops_rising() {
    // 1 MB/s per connection: sixteen connections fill nothing, the tuner must add more.
    let content = data(71, 24 * MIB);
    let Some((server, _root)) = nginx_with(&[("m.bin", &content)], "limit_rate 1m;") else {
        return;
    };
    each_driver(|driver| {
        let dest = tempfile::tempdir().unwrap();
        let report = pull_one(
            &server,
            "m.bin",
            &content,
            &dest.path().join("m"),
            &slow_origin_options(driver),
        );
        let [host] = report.connections.as_slice() else {
            panic!("one host: {:?}", report.connections)
        };
        assert_eq!(host.host, server.url().trim_start_matches("http://"));
        // Each host starts with 16.
        assert!(
            host.peak > 16,
            "{driver:?}: still {} connections at most",
            host.peak
        );
        assert!(host.peak <= 64);
    });
}

#[test]
fn a_server_that_refuses_past_a_count_gets_that_count_without_a_storm() {
    // At most 4 requests at once, the rest answered 503 at once, each connection slow enough
    // that the tuner wants more: it must settle at 4, not retry into the wall.
    let content = data(72, 12 * MIB);
    let directives = "limit_rate 2m; limit_conn per_client 4; limit_conn_status 503;";
    let Some((server, _root)) = nginx_with(&[("m.bin", &content)], directives) else {
        return;
    };
    each_driver(|driver| {
        let before = answered(&server, 503);
        let dest = tempfile::tempdir().unwrap();
        let report = pull_one(
            &server,
            "m.bin",
            &content,
            &dest.path().join("m"),
            &slow_origin_options(driver),
        );
        let refused = answered(&server, 503) - before;
        let host = &report.connections[0];
        assert!(host.settled <= 4, "{driver:?}: settled on {}", host.settled);
        assert!(
            refused >= 12,
            "{driver:?}: 16 connections at first, 4 served"
        );
        // Halved per epoch, 16 → 8 → 4, each refused range retried after its backoff: a few
        // dozen refusals at most (a fixed 16 got over a thousand from 8 shards).
        assert!(
            refused <= 48,
            "{driver:?}: {refused} refusals: the cuts should stop them"
        );
        assert_eq!(report.retries as usize, refused);
    });
}

#[test]
fn a_fixed_count_is_kept_whatever_the_rate() {
    let content = data(73, 6 * MIB);
    let Some((server, _root)) = nginx_with(&[("m.bin", &content)], "limit_rate 2m;") else {
        return;
    };
    each_driver(|driver| {
        let dest = tempfile::tempdir().unwrap();
        let opts = Options {
            connections: Some(3),
            ..slow_origin_options(driver)
        };
        let report = pull_one(&server, "m.bin", &content, &dest.path().join("m"), &opts);
        let host = &report.connections[0];
        assert_eq!((host.settled, host.peak), (3, 3));
    });
}
