//! `s3://` against a real S3 implementation (moto), seeded with boto3: SigV4 with signature
//! checking on, every checksum kind S3 keeps, multipart objects, pagination past 1000 keys,
//! KServe's layout rules, corrupt objects, wrong credentials, both addressing styles.

use modelpull::store::Env;
use modelpull::{Error, ExitCode};
use modelpull_testkit::servers;
use modelpull_testkit::stores::{self, S3, none};
use modelpull_testkit::*;
use serde_json::json;

const MIB: usize = 1024 * 1024;

#[test]
fn prefix_with_every_checksum_kind_signed() {
    let objects = vec![
        (
            "m/crc64.bin",
            data(1, 3 * MIB + 5),
            json!({"checksum": "CRC64NVME"}),
        ),
        ("m/crc32c.bin", data(2, MIB), json!({"checksum": "CRC32C"})),
        ("m/crc32.bin", data(3, MIB), json!({"checksum": "CRC32"})),
        ("m/sha256.bin", data(4, MIB), json!({"checksum": "SHA256"})),
        ("m/plain.bin", data(5, 2 * MIB + 1), none()),
        ("m/multi.bin", data(6, 11 * MIB), json!({"multipart": true})),
        (
            "m/multi-crc64.bin",
            data(7, 11 * MIB),
            json!({"multipart": true, "checksum": "CRC64NVME"}),
        ),
        (
            "m/multi-crc32.bin",
            data(8, 11 * MIB),
            json!({"multipart": true, "checksum": "CRC32"}),
        ),
        (
            "m/nested/deeper/config.json",
            b"{\"a\": 1}".to_vec(),
            none(),
        ),
        ("m/with space+plus.txt", b"x".to_vec(), none()),
        ("m/folder/", Vec::new(), none()),
        ("m/zero.bin", Vec::new(), none()),
        ("other/outside.bin", data(9, 100), none()),
    ];
    let Some(s3) = S3::start(true, &objects) else {
        return;
    };
    let dest = s3.dest("m");
    let report = pull_uri("s3://models/m", &s3.env(), &dest, &store_options()).unwrap();
    for (key, content, _) in &objects {
        let Some(rel) = key.strip_prefix("m/") else {
            assert!(!dest.join("outside.bin").exists());
            continue;
        };
        if content.is_empty() {
            assert!(
                !dest.join(rel).exists(),
                "{key} is a folder marker or empty: skipped"
            );
        } else {
            assert_file(&dest, rel, content);
        }
    }
    let expect = [
        ("crc64.bin", "x-amz-checksum-crc64nvme"),
        ("crc32c.bin", "x-amz-checksum-crc32c"),
        ("crc32.bin", "x-amz-checksum-crc32"),
        ("sha256.bin", "x-amz-checksum-sha256"),
        ("plain.bin", "etag (md5)"),
        ("multi.bin", "size only"),
        ("multi-crc64.bin", "x-amz-checksum-crc64nvme"),
        ("multi-crc32.bin", "size only"),
        ("nested/deeper/config.json", "etag (md5)"),
    ];
    for (path, label) in expect {
        assert_eq!(checksum_of(&report, path), label, "{path}");
    }
    assert_eq!(report.files.len(), 10);
    assert_clean(&s3.dir.path().join("out"));
}

#[test]
fn exact_key_keeps_its_basename_and_archives_unpack() {
    let weights = data(11, 300_000);
    let archive = tar_gz(&[("model/weights.bin", &weights)]);
    let objects = vec![
        ("m/nested/config.json", b"{}".to_vec(), none()),
        ("m/nested/config.json.bak", b"old".to_vec(), none()),
        ("packed/model.tar.gz", archive.clone(), none()),
        ("nested-pack/v1/model.tgz", archive, none()),
    ];
    let Some(s3) = S3::start(false, &objects) else {
        return;
    };
    let dest = s3.dest("exact");
    // The endpoint as KServe's credential builder gives it: host and port, scheme apart.
    let env: Env = [
        ("S3_ENDPOINT", format!("127.0.0.1:{}", s3.server.port)),
        ("S3_USE_HTTPS", "0".into()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
    ]
    .into_iter()
    .collect();
    pull_uri(
        "s3://models/m/nested/config.json",
        &env,
        &dest,
        &store_options(),
    )
    .unwrap();
    assert_file(&dest, "config.json", b"{}");
    assert_eq!(
        std::fs::read_dir(&dest).unwrap().count(),
        2,
        "config.json and the marker"
    );

    let dest = s3.dest("packed");
    let report = pull_uri("s3://models/packed", &s3.env(), &dest, &store_options()).unwrap();
    assert_file(&dest, "model/weights.bin", &weights);
    assert!(
        !dest.join("model.tar.gz").exists(),
        "the archive is removed"
    );
    assert_eq!(report.unpacked.as_ref().unwrap().files, 1);
    // An archive listed in a subfolder unpacks at the top, as KServe's does.
    let dest2 = s3.dest("nested-pack");
    pull_uri(
        "s3://models/nested-pack",
        &s3.env(),
        &dest2,
        &store_options(),
    )
    .unwrap();
    assert_file(&dest2, "model/weights.bin", &weights);
    assert!(!dest2.join("v1").exists());
    // The completion marker describes what is on disk: a second run is up to date.
    let again = pull_uri("s3://models/packed", &s3.env(), &dest, &store_options()).unwrap();
    assert!(again.up_to_date);
}

#[test]
fn paginates_past_1000_keys_and_filters() {
    let Some(venv) = servers::venv() else {
        return;
    };
    let s3 = S3::start_with(
        &venv,
        false,
        &[("many/README.md", b"readme".to_vec(), none())],
        Some(json!({"prefix": "many/", "count": 1003})),
    );
    let control = modelpull::store::Control::new(&store_options().client()).unwrap();
    let m = modelpull::store::resolve("s3://models/many", &s3.env(), &control).unwrap();
    assert_eq!(m.files.len(), 1004);
    assert_eq!(m.files[1003].path, "README.md");

    let mut env = s3.env();
    env.set("STORAGE_IGNORE_PATTERNS", r#"["0*.txt"]"#);
    let dest = s3.dest("filtered");
    let report = pull_uri("s3://models/many", &env, &dest, &store_options()).unwrap();
    assert_eq!(report.files.len(), 1);
    assert_file(&dest, "README.md", b"readme");

    env.set("STORAGE_IGNORE_PATTERNS", "");
    env.set("STORAGE_ALLOW_PATTERNS", "*.md,00001.txt");
    let control = modelpull::store::Control::new(&store_options().client()).unwrap();
    let m = modelpull::store::resolve("s3://models/many", &env, &control).unwrap();
    let paths: Vec<_> = m.files.iter().map(|t| t.path.as_str()).collect();
    assert_eq!(paths, ["00001.txt", "README.md"]);
    assert_eq!(m.skipped, 1002);
}

#[test]
fn wrong_or_missing_credentials_are_clear_and_secret() {
    let Some(s3) = S3::start(true, &[("m/a.bin", data(1, 1000), none())]) else {
        return;
    };
    let dest = s3.dest("denied");
    let mut env = s3.env();
    env.set("AWS_SECRET_ACCESS_KEY", "wrong-secret-value-0123456789");
    let err = pull_uri("s3://models/m", &env, &dest, &store_options()).unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err}");
    assert_eq!(err.exit_code(), ExitCode::Auth);
    let text = err.to_string();
    assert!(text.contains("SignatureDoesNotMatch"), "{text}");
    assert!(!text.contains("wrong-secret-value"), "{text}");
    assert!(!dest.exists());

    let mut env = s3.env();
    env.set("AWS_ACCESS_KEY_ID", "AKIDUNKNOWN");
    let err = pull_uri("s3://models/m", &env, &dest, &store_options()).unwrap_err();
    assert!(err.to_string().contains("InvalidAccessKeyId"), "{err}");
}

#[test]
fn corrupt_object_is_caught_and_nothing_published() {
    let objects = vec![
        (
            "m/good.bin",
            data(1, 100_000),
            json!({"checksum": "CRC32C"}),
        ),
        (
            "m/bad.bin",
            data(2, 200_000),
            json!({"wrong_checksum": {"algorithm": "CRC32C", "value": "AAAAAA=="}}),
        ),
    ];
    let Some(s3) = S3::start(false, &objects) else {
        return;
    };
    let dest = s3.dest("m");
    let err = pull_uri("s3://models/m", &s3.env(), &dest, &store_options()).unwrap_err();
    match &err {
        Error::Verify { file, .. } => assert_eq!(file, "bad.bin"),
        other => panic!("expected a verification failure, got {other}"),
    }
    assert_eq!(err.exit_code(), ExitCode::Verify);
    assert!(!dest.exists());
}

#[test]
fn virtual_hosted_anonymous_and_missing_bucket() {
    let public = json!({"acl": "public-read"});
    let Some(s3) = S3::start(false, &[("m/a.bin", data(3, 50_000), public)]) else {
        return;
    };
    let env: Env = [
        (
            "AWS_ENDPOINT_URL",
            format!("http://localhost:{}", s3.server.port),
        ),
        ("S3_USER_VIRTUAL_BUCKET", "true".into()),
        ("awsAnonymousCredential", "true".into()),
        ("AWS_ACCESS_KEY_ID", "ignored".into()),
        ("AWS_SECRET_ACCESS_KEY", "ignored".into()),
    ]
    .into_iter()
    .collect();
    let dest = s3.dest("virtual");
    pull_uri("s3://models/m", &env, &dest, &store_options()).unwrap();
    assert_file(&dest, "a.bin", &data(3, 50_000));
    let log = s3.server.log();
    assert!(
        log.contains("\"GET /?list-type=2"),
        "the listing went to the bucket's own host: {log}"
    );

    let err = pull_uri(
        "s3://nosuchbucket/m",
        &s3.env(),
        &s3.dest("x"),
        &store_options(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert_eq!(err.exit_code(), ExitCode::Source);

    let err = pull_uri(
        "s3://models/absent",
        &s3.env(),
        &s3.dest("y"),
        &store_options(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("no model files found"), "{err}");
}

#[test]
fn session_tokens_sign_requests() {
    let Some(venv) = servers::venv() else {
        return;
    };
    let server = servers::moto(&venv, true);
    let content = data(5, 400_000);
    let mut env = stores::session_bucket(&venv, &server, "m/w.bin", &content, none());
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out");
    pull_uri("s3://models/m", &env, &dest, &store_options()).unwrap();
    assert_file(&dest, "w.bin", &content);

    env.set("AWS_SESSION_TOKEN", "not-the-session-token");
    let err = pull_uri(
        "s3://models/m",
        &env,
        &dir.path().join("no"),
        &store_options(),
    )
    .unwrap_err();
    assert_eq!(err.exit_code(), ExitCode::Auth, "{err}");
    assert!(err.to_string().contains("InvalidToken"), "{err}");
}

#[test]
fn tls_endpoints_need_a_trusted_certificate_or_an_explicit_opt_out() {
    let Some(venv) = servers::venv() else {
        return;
    };
    let pki = modelpull_testkit::pki::pki();
    let identity = modelpull_testkit::pki::leaf(&pki, &["localhost"], false);
    let server = servers::moto_tls(&venv, &identity.cert_pem, &identity.key_pem);
    let dir = tempfile::tempdir().unwrap();
    let content = data(6, 250_000);
    std::fs::write(dir.path().join("obj"), &content).unwrap();
    let endpoint = format!("https://localhost:{}", server.port);
    let plan = json!({
        "endpoint": endpoint, "verify": false, "bucket": "models",
        "objects": [{"key": "m/w.bin", "file": dir.path().join("obj")}],
    });
    servers::python(&venv, "s3_seed.py", &[], &plan.to_string());
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let env = |extra: &[(&str, &str)]| -> Env {
        let mut e: Env = [
            ("AWS_ENDPOINT_URL", endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
        ]
        .into_iter()
        .collect();
        for (k, v) in extra {
            e.set(*k, *v);
        }
        e
    };
    let mut opts = store_options();
    opts.retries = 1;

    let err = pull_uri("s3://models/m", &env(&[]), &dir.path().join("a"), &opts).unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");

    let trusted = env(&[("AWS_CA_BUNDLE", ca.to_str().unwrap())]);
    pull_uri("s3://models/m", &trusted, &dir.path().join("b"), &opts).unwrap();
    assert_file(&dir.path().join("b"), "w.bin", &content);

    // The agent's handover of a ConfigMap's bundle: in memory, winning over the file.
    let in_memory = env(&[
        ("AWS_CA_BUNDLE_PEM", pki.ca_pem.as_str()),
        ("AWS_CA_BUNDLE", "/nonexistent/ca.pem"),
    ]);
    pull_uri("s3://models/m", &in_memory, &dir.path().join("d"), &opts).unwrap();
    assert_file(&dir.path().join("d"), "w.bin", &content);

    let unverified = env(&[("S3_VERIFY_SSL", "0")]);
    pull_uri("s3://models/m", &unverified, &dir.path().join("c"), &opts).unwrap();
    assert_file(&dir.path().join("c"), "w.bin", &content);
}
