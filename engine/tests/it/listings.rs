//! Store listings are untrusted: every unsafe name is refused before a byte is written, with
//! an error that names the entry. Keys go into a real S3 server (moto stores any key); what
//! S3 cannot hold (duplicates, NUL) comes from a GCS JSON listing served by the test.

use modelpull::store::{self, Control, Env};
use modelpull::{Error, ExitCode};
use modelpull_testkit::servers;
use modelpull_testkit::*;
use serde_json::json;

fn assert_refused(result: modelpull::Result<store::Manifest>, needle: &str) {
    let err = result.expect_err(needle);
    assert!(matches!(err, Error::InvalidSource { .. }), "{err}");
    assert_eq!(err.exit_code(), ExitCode::BadInput);
    let text = err.to_string();
    assert!(text.contains("unsafe"), "{text}");
    assert!(text.contains(needle), "{text} should name {needle}");
}

#[test]
fn hostile_s3_keys_are_refused_by_name() {
    let Some(venv) = servers::venv() else {
        return;
    };
    let moto = servers::moto(&venv, false);
    let cases = [
        ("p1", "p1/../../etc/passwd", ".."),
        ("p2", "p2//etc/cron.d/x", "/etc/cron.d/x"),
        ("p3", "p3/a/./b", "a/./b"),
        ("p4", "p4/a\\..\\b", "backslash"),
        ("p5", "p5/a//b", "a//b"),
    ];
    let mut objects: Vec<_> = cases
        .iter()
        .map(|(_, key, _)| json!({"key": key, "text": "x"}))
        .collect();
    // A name that is both a file and a folder.
    objects.push(json!({"key": "p6/a", "text": "file"}));
    objects.push(json!({"key": "p6/a/b", "text": "inside"}));
    let plan = json!({"endpoint": moto.url(), "bucket": "models", "objects": objects});
    servers::python(&venv, "s3_seed.py", &[], &plan.to_string());
    let env: Env = [
        ("AWS_ENDPOINT_URL", moto.url()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
    ]
    .into_iter()
    .collect();
    let control = Control::new(&store_options().client()).unwrap();
    for (prefix, _, needle) in cases {
        assert_refused(
            store::resolve(&format!("s3://models/{prefix}"), &env, &control),
            needle,
        );
    }
    assert_refused(
        store::resolve("s3://models/p6", &env, &control),
        "is both a file and a directory",
    );
    // Nothing was created anywhere: resolving writes nothing, and no pull starts.
    let dir = tempfile::tempdir().unwrap();
    let err = pull_uri(
        "s3://models/p1",
        &env,
        &dir.path().join("m"),
        &store_options(),
    );
    assert!(err.is_err());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// Serves one GCS listing page with `names` (each 1 byte long), for every request.
fn gcs_listing(names: &[&str]) -> Env {
    let items: Vec<_> = names
        .iter()
        .map(|n| json!({"name": format!("m/{n}"), "size": "1", "crc32c": "AAAAAA=="}))
        .collect();
    let body = json!({ "items": items }).to_string();
    let port = servers::responder(move |_, _| ("200 OK", body.clone()));
    [("STORAGE_EMULATOR_HOST", format!("127.0.0.1:{port}"))]
        .into_iter()
        .collect()
}

#[test]
fn hostile_gcs_names_are_refused_by_name() {
    let control = Control::new(&store_options().client()).unwrap();
    for (names, needle) in [
        (vec!["a", "a"], "`a`"),
        (vec!["ok", "nul\u{0}byte"], "control character"),
        (vec!["x/../../../root"], ".."),
        (vec!["name\nwith newline"], "control character"),
        (vec![".modelpull.json"], "reserved"),
        (vec!["a.bin", "a.bin.part"], "temporary file"),
    ] {
        let env = gcs_listing(&names);
        assert_refused(store::resolve("gs://models/m", &env, &control), needle);
    }
    let long = "x".repeat(300);
    let env = gcs_listing(&[long.as_str()]);
    assert_refused(
        store::resolve("gs://models/m", &env, &control),
        "longer than 255",
    );
}

#[test]
fn ten_thousand_entries_are_listed_and_one_4_kib_name_refuses_them_all() {
    let control = Control::new(&store_options().client()).unwrap();
    let names: Vec<String> = (0..10_000)
        .map(|i| format!("d{}/f{i}.bin", i % 100))
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let started = std::time::Instant::now();
    let manifest = store::resolve("gs://models/m", &gcs_listing(&refs), &control).unwrap();
    assert_eq!(manifest.files.len(), 10_000);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "10,000 entries took {:?} to check",
        started.elapsed()
    );
    let long = format!("{}/{}", "d".repeat(200), "n".repeat(4096));
    let mut hostile = refs.clone();
    hostile.push(&long);
    assert_refused(
        store::resolve("gs://models/m", &gcs_listing(&hostile), &control),
        "longer than",
    );
}
