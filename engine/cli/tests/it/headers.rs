//! `http(s)://` sources as KServe's storage-initializer reads them: extra headers for a host
//! from the environment variable `<host>-headers`, sent to that host and nowhere else.

use std::process::Command;

use modelpull_testkit::*;

#[test]
fn host_headers_from_env_reach_only_their_host() {
    let content = data(1, 300_000);
    let fx = Fixture::new(&[("model.bin", &content)]);
    // The redirect target is another host name (localhost): it must not get the header.
    let cdn = Fixture::new(&[("model.bin", &content)]);
    fx.origin.set_faults(modelpull_testkit::origin::Faults {
        redirect_base: Some(
            cdn.origin
                .url_for_host("localhost", "")
                .trim_end_matches('/')
                .to_owned(),
        ),
        ..Default::default()
    });
    let dest = fx.dest("m");
    let out = Command::new(env!("CARGO_BIN_EXE_modelpull"))
        .args(["pull", "--no-progress"])
        .arg(fx.origin.url("redirect/model.bin"))
        .arg(&dest)
        .env(
            "127.0.0.1-headers",
            r#"{"Authorization": "Bearer from-env-1234"}"#,
        )
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_success(&out);
    assert_file(&dest, "model.bin", &content);
    let seen = fx.origin.requests_seen();
    assert!(
        seen.iter()
            .any(|(_, auth)| auth.as_deref() == Some("Bearer from-env-1234")),
        "{seen:?}"
    );
    let cdn_seen = cdn.origin.requests_seen();
    assert!(
        !cdn_seen.is_empty(),
        "the bytes came from the redirect target"
    );
    assert!(
        cdn_seen.iter().all(|(_, auth)| auth.is_none()),
        "{cdn_seen:?}"
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("from-env-1234"));
}

#[test]
fn malformed_host_headers_are_bad_input() {
    let fx = Fixture::new(&[("model.bin", b"x")]);
    let out = Command::new(env!("CARGO_BIN_EXE_modelpull"))
        .args(["pull", "--no-progress"])
        .arg(fx.origin.url("model.bin"))
        .arg(fx.dest("m"))
        .env("127.0.0.1-headers", "Authorization: Bearer x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("127.0.0.1-headers"), "{err}");
}
