//! `s3://` against a real S3 implementation (moto), seeded with boto3: SigV4 with signature
//! checking on, every checksum kind S3 keeps, multipart objects, pagination past 1000 keys,
//! KServe's layout rules, corrupt objects, wrong credentials, both addressing styles.

mod util;

use std::path::Path;

use modelpull::store::Env;
use modelpull::{Error, ExitCode};
use serde_json::json;
use util::servers::{self, Server, Venv};
use util::*;

const MIB: usize = 1024 * 1024;

struct S3 {
    server: Server,
    key: (String, String),
    dir: tempfile::TempDir,
}

impl S3 {
    /// A moto server with bucket `models` holding `objects` (key, content, extra plan fields).
    fn start(auth: bool, objects: &[(&str, Vec<u8>, serde_json::Value)]) -> Option<Self> {
        let venv = servers::venv()?;
        Some(Self::start_with(&venv, auth, objects, None))
    }

    fn start_with(
        venv: &Venv,
        auth: bool,
        objects: &[(&str, Vec<u8>, serde_json::Value)],
        many: Option<serde_json::Value>,
    ) -> Self {
        let server = servers::moto(venv, auth);
        let dir = tempfile::tempdir().unwrap();
        let mut plan_objects = Vec::new();
        for (i, (key, content, extra)) in objects.iter().enumerate() {
            let file = dir.path().join(format!("object-{i}"));
            std::fs::write(&file, content).unwrap();
            let mut o = json!({ "key": key, "file": file });
            if let serde_json::Value::Object(m) = extra {
                for (k, v) in m {
                    o[k] = v.clone();
                }
            }
            plan_objects.push(o);
        }
        let plan = json!({
            "endpoint": server.url(),
            "auth": auth,
            "bucket": "models",
            "objects": plan_objects,
            "many": many,
        });
        let out = servers::python(venv, "s3_seed.py", &[], &plan.to_string());
        let key: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        Self {
            key: (
                key["access_key_id"].as_str().unwrap().to_owned(),
                key["secret_access_key"].as_str().unwrap().to_owned(),
            ),
            server,
            dir,
        }
    }

    fn env(&self) -> Env {
        [
            ("AWS_ENDPOINT_URL", self.server.url()),
            ("AWS_ACCESS_KEY_ID", self.key.0.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.key.1.clone()),
            ("AWS_DEFAULT_REGION", "us-east-1".into()),
        ]
        .into_iter()
        .collect()
    }

    fn dest(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join("out").join(name)
    }
}

fn none() -> serde_json::Value {
    json!({})
}

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
    let mut tar = tar::Builder::new(Vec::new());
    let weights = data(11, 300_000);
    let mut h = tar::Header::new_gnu();
    h.set_size(weights.len() as u64);
    h.set_mode(0o644);
    tar.append_data(&mut h, "model/weights.bin", &weights[..])
        .unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar.into_inner().unwrap()).unwrap();
    let archive = gz.finish().unwrap();
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
    let control = modelpull::store::Control::new(&store_options()).unwrap();
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
    let control = modelpull::store::Control::new(&store_options()).unwrap();
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
fn cli_pulls_s3_and_never_prints_secrets() {
    let Some(s3) = S3::start(
        true,
        &[("m/w.bin", data(4, 300_000), json!({"checksum": "CRC32C"}))],
    ) else {
        return;
    };
    let dest = s3.dest("cli");
    let run = |secret: &str, token: Option<&str>, extra: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_modelpull"));
        cmd.args(extra)
            .env_clear()
            .env("RUST_LOG", "trace")
            .env("AWS_ENDPOINT_URL", s3.server.url())
            .env("AWS_ACCESS_KEY_ID", &s3.key.0)
            .env("AWS_SECRET_ACCESS_KEY", secret);
        if let Some(t) = token {
            cmd.env("AWS_SESSION_TOKEN", t);
        }
        cmd.output().unwrap()
    };
    let dest_s = dest.to_str().unwrap();
    let ok = run(
        &s3.key.1,
        None,
        &["pull", "--json", "s3://models/m", dest_s],
    );
    let out = String::from_utf8_lossy(&ok.stdout);
    let err = String::from_utf8_lossy(&ok.stderr);
    assert!(ok.status.success(), "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["files"][0]["checksum"], "x-amz-checksum-crc32c");
    for text in [&out, &err] {
        assert!(!text.contains(&s3.key.1), "the secret key leaked");
    }
    let marker = std::fs::read_to_string(Path::new(dest_s).join(".modelpull.json")).unwrap();
    assert!(!marker.contains(&s3.key.1));

    let denied = run(
        "not-the-secret-at-all",
        Some("session-token-should-not-appear"),
        &["ls", "s3://models/m"],
    );
    assert!(matches!(denied.status.code(), Some(6)), "{denied:?}");
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(err.contains("access denied"), "{err}");
    assert!(!err.contains("not-the-secret-at-all"));
    assert!(!err.contains("session-token-should-not-appear"));
}

#[test]
fn session_tokens_sign_requests() {
    let Some(venv) = servers::venv() else {
        return;
    };
    let server = servers::moto(&venv, true);
    let dir = tempfile::tempdir().unwrap();
    let content = data(5, 400_000);
    std::fs::write(dir.path().join("obj"), &content).unwrap();
    let plan = json!({
        "endpoint": server.url(), "auth": true, "sts": true, "bucket": "models",
        "objects": [{"key": "m/w.bin", "file": dir.path().join("obj")}],
    });
    let out: serde_json::Value =
        serde_json::from_str(servers::python(&venv, "s3_seed.py", &[], &plan.to_string()).trim())
            .unwrap();
    let session = &out["session"];
    let mut env: Env = [
        ("AWS_ENDPOINT_URL", server.url()),
        (
            "AWS_ACCESS_KEY_ID",
            session["access_key_id"].as_str().unwrap().to_owned(),
        ),
        (
            "AWS_SECRET_ACCESS_KEY",
            session["secret_access_key"].as_str().unwrap().to_owned(),
        ),
        (
            "AWS_SESSION_TOKEN",
            session["session_token"].as_str().unwrap().to_owned(),
        ),
    ]
    .into_iter()
    .collect();
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
    let pki = util::pki::pki();
    let identity = util::pki::leaf(&pki, &["localhost"], false);
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

    let unverified = env(&[("S3_VERIFY_SSL", "0")]);
    pull_uri("s3://models/m", &unverified, &dir.path().join("c"), &opts).unwrap();
    assert_file(&dir.path().join("c"), "w.bin", &content);

    // The opt-out is never silent: the CLI warns at its default verbosity.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_modelpull"))
        .args(["ls", "s3://models/m"])
        .env_remove("RUST_LOG")
        .env("AWS_ENDPOINT_URL", &endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("S3_VERIFY_SSL", "0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("S3_VERIFY_SSL is off") && err.contains("not verified"),
        "{err}"
    );
}
