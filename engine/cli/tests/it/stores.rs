//! The CLI against real stores on 127.0.0.1: what it prints and writes at trace level never
//! holds a credential (S3 secret and session token, HF token, a GCS service account's key and
//! access token), and an opt-out of TLS verification is never silent.

use std::path::Path;
use std::process::Command;

use modelpull_testkit::hub::{Hub, HubRepo};
use modelpull_testkit::stores::{Gcs, S3, rsa_key, service_account, token_endpoint};
use modelpull_testkit::*;
use serde_json::json;

const HF_TOKEN: &str = "hf_test_token_abcdef";

fn modelpull() -> Command {
    Command::new(env!("CARGO_BIN_EXE_modelpull"))
}

#[test]
fn s3_pull_never_prints_secrets() {
    let Some(s3) = S3::start(
        true,
        &[("m/w.bin", data(4, 300_000), json!({"checksum": "CRC32C"}))],
    ) else {
        return;
    };
    let dest = s3.dest("cli");
    let run = |secret: &str, token: Option<&str>, extra: &[&str]| {
        let mut cmd = modelpull();
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
fn s3_tls_opt_out_warns_at_the_default_verbosity() {
    let Some(venv) = servers::venv() else {
        return;
    };
    let pki = pki::pki();
    let identity = pki::leaf(&pki, &["localhost"], false);
    let server = servers::moto_tls(&venv, &identity.cert_pem, &identity.key_pem);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("obj"), data(6, 1000)).unwrap();
    let endpoint = format!("https://localhost:{}", server.port);
    let plan = json!({
        "endpoint": endpoint, "verify": false, "bucket": "models",
        "objects": [{"key": "m/w.bin", "file": dir.path().join("obj")}],
    });
    servers::python(&venv, "s3_seed.py", &[], &plan.to_string());
    let out = modelpull()
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

#[test]
fn gcs_service_account_key_and_token_stay_out_of_the_output() {
    let Some(gcs) = Gcs::start(&[("m/a.txt", b"hello")]) else {
        return;
    };
    let Some((pem, public)) = rsa_key(gcs.dir.path(), "sa.pem") else {
        return;
    };
    let (port, seen) = token_endpoint(public);
    let creds = service_account(&pem, port);
    let file = gcs.dir.path().join("sa.json");
    std::fs::write(&file, creds.to_string()).unwrap();
    let mut env = gcs.env();
    env.set("GOOGLE_APPLICATION_CREDENTIALS", file.to_str().unwrap());
    let dest = gcs.dest("cli");
    let out = modelpull()
        .args(["pull", "--json", "gs://models/m"])
        .arg(&dest)
        .env_clear()
        .envs(env.iter())
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    let marker = std::fs::read_to_string(dest.join(".modelpull.json")).unwrap_or_default();
    let text = format!(
        "{}{}{marker}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert_file(&dest, "a.txt", b"hello");
    assert_eq!(seen.lock().unwrap().len(), 1, "the CLI asked for a token");
    let key_line = pem.lines().nth(1).unwrap();
    assert!(!text.contains(key_line), "the private key leaked");
    assert!(!text.contains("ya29.test"), "the access token leaked");
}

#[test]
fn hf_lists_and_pulls_and_never_prints_the_token() {
    let r = HubRepo::new("acme/tiny")
        .file("config.json", "{\"layers\": 2}\n")
        .file("empty.txt", "")
        .lfs_file("model.safetensors", data(2, 2 * 1024 * 1024 + 3))
        .branch("v1.0");
    let hub = Hub::start(vec![r.clone()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        modelpull()
            .args(args)
            .env("HF_ENDPOINT", hub.endpoint())
            .env("HF_TOKEN", HF_TOKEN)
            .env("RUST_LOG", "trace")
            .output()
            .unwrap()
    };
    let ls = run(&["ls", "--json", "hf://acme/tiny"]);
    assert_success(&ls);
    let listing: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(
        listing[0]["files"].as_array().unwrap().len(),
        r.files().len()
    );
    assert_eq!(listing[0]["store"], "hf");
    let dest = dir.path().join("m");
    let pull = run(&["pull", "--json", "hf://acme/tiny", dest.to_str().unwrap()]);
    assert_success(&pull);
    for f in r.files() {
        assert_file(&dest, &f.path, &f.bytes);
    }
    let marker = std::fs::read(dest.join(".modelpull.json")).unwrap();
    // Not in the trace log, the listing, the JSON report or the marker.
    for out in [&ls.stdout, &ls.stderr, &pull.stdout, &pull.stderr, &marker] {
        assert!(
            !String::from_utf8_lossy(out).contains(HF_TOKEN),
            "the token leaked"
        );
    }
}

#[test]
fn s3_web_identity_without_its_token_file_exits_6_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("eks.amazonaws.com/serviceaccount/token");
    // Nothing listens at the endpoint: the refusal must come before any request.
    let out = modelpull()
        .args(["ls", "s3://models/m"])
        .env_clear()
        .env(
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", servers::free_port()),
        )
        .env("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/puller")
        .env("AWS_WEB_IDENTITY_TOKEN_FILE", &token)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(err.contains("AWS_WEB_IDENTITY_TOKEN_FILE"), "{err}");
    assert!(err.contains(token.to_str().unwrap()), "{err}");
}

#[test]
fn s3_without_any_credentials_exits_6_unless_anonymous_is_asked() {
    // Nothing listens at the endpoint: the refusal must come before any request.
    let endpoint = format!("http://127.0.0.1:{}", servers::free_port());
    let ls = |anonymous: bool| {
        let mut cmd = modelpull();
        cmd.args(["ls", "s3://models/m"])
            .env_clear()
            .env("AWS_ENDPOINT_URL", &endpoint);
        if anonymous {
            cmd.env("awsAnonymousCredential", "true");
        }
        cmd.output().unwrap()
    };
    let out = ls(false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(err.contains("no AWS credentials found"), "{err}");
    assert!(err.contains("awsAnonymousCredential=true"), "{err}");
    let out = ls(true);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(6),
        "asked for, it goes unsigned: {err}"
    );
    assert!(err.contains("request to the S3 endpoint failed"), "{err}");
}
