//! `--mirror BASE_URL`: the bytes come from the mirror, the origin's digest decides, and
//! credentials stay with the origin.

use std::process::Command;

use modelpull_testkit::*;

#[test]
fn a_pull_with_a_mirror_takes_the_bytes_from_it_and_says_so() {
    let content = data(11, 3 * 1024 * 1024 + 5);
    let fx = Fixture::new(&[("model.bin", &content)]);
    let mirror = Fixture::new(&[("model.bin", &content)]);
    let dest = fx.dest("m");
    let out = Command::new(env!("CARGO_BIN_EXE_modelpull"))
        .args(["pull", "--json", "--mirror"])
        .arg(mirror.origin.url(""))
        .arg(with_sha256(&fx.origin.url("model.bin"), &content))
        .arg(&dest)
        .env(
            "127.0.0.1-headers",
            r#"{"Authorization": "Bearer origin-only"}"#,
        )
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_success(&out);
    assert_file(&dest, "model.bin", &content);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let hosts = report["connections"].as_array().unwrap();
    let from_mirrors: u64 = hosts
        .iter()
        .filter(|h| h["mirror"] == true)
        .map(|h| h["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(from_mirrors, content.len() as u64, "{hosts:?}");
    // Both are 127.0.0.1: the header for that host must still not reach the mirror.
    let seen = mirror.origin.requests_seen();
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|(_, a)| a.is_none()), "{seen:?}");
    assert!(
        fx.origin
            .requests_seen()
            .iter()
            .all(|(_, a)| a.as_deref() == Some("Bearer origin-only"))
    );
}

#[test]
fn a_mirror_url_with_credentials_is_refused_without_echoing_them() {
    let out = Command::new(env!("CARGO_BIN_EXE_modelpull"))
        .args([
            "pull",
            "--mirror",
            "http://peer:hunter2@127.0.0.1:9/models",
            "http://127.0.0.1:9/model.bin",
            "/nonexistent/dest",
        ])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("credentials never go to a mirror"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}
