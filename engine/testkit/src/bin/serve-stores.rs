//! `serve-stores OUT`: the test kit's model stores on 127.0.0.1, seeded and served until
//! SIGTERM or SIGINT, for checks outside Rust (`scripts/test-image.sh` runs the
//! storage-initializer image against them).
//!
//! For each store it writes `OUT/<store>/uri` (the source URI), `OUT/<store>/env` (the
//! variables KServe would inject, in `docker run --env-file` form) and `OUT/<store>/expected/`
//! (the files the pull must produce), then `OUT/ready`. Stores: `http` (a lone `.tar.gz`
//! with its sha256, unpacked by the pull), `https` (a TLS origin whose certificate only the
//! CA in `OUT/https/cabundle.crt` signs, the file KServe mounts from its CA bundle ConfigMap),
//! `hf` (the Hub fixture, an LFS file on its CDN),
//! `s3` (moto, signed, credentials only in `STORAGE_CONFIG`), `gs` (gcp-storage-emulator,
//! with `STORAGE_IGNORE_PATTERNS`), and `bad-digest` (a URL whose `#sha256=` does not match).
//! Without the test virtualenv `s3` and `gs` are left out and the run says so, unless
//! `MODELPULL_REQUIRE_SERVERS=1`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use modelpull_testkit::hub::{Hub, HubRepo};
use modelpull_testkit::origin::Origin;
use modelpull_testkit::pki;
use modelpull_testkit::stores::{Gcs, S3, none};
use modelpull_testkit::{Fixture, data, tar_gz, with_sha256};
use serde_json::json;

/// Writes one store's description under `out`.
fn describe(out: &Path, store: &str, uri: &str, env: &[(&str, String)], files: &[(&str, &[u8])]) {
    let dir = out.join(store);
    for (path, content) in files {
        let p = dir.join("expected").join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("uri"), uri).unwrap();
    let env: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    std::fs::write(dir.join("env"), env).unwrap();
}

fn main() {
    let out = std::env::args_os()
        .nth(1)
        .expect("usage: serve-stores OUT_DIR");
    let out = Path::new(&out);
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone()).unwrap();
    }

    let weights = data(1, 6 << 20);
    let config: &[u8] = br#"{"model_type": "test"}"#;
    let archive = tar_gz(&[
        ("model/weights.bin", &weights),
        ("model/config.json", config),
    ]);
    let bad = data(2, 100_000);
    let http = Fixture::new(&[("packed/model.tar.gz", &archive), ("bad.bin", &bad)]);
    describe(
        out,
        "http",
        &with_sha256(&http.origin.url("packed/model.tar.gz"), &archive),
        &[],
        &[
            ("model/weights.bin", &weights),
            ("model/config.json", config),
        ],
    );
    describe(
        out,
        "bad-digest",
        &with_sha256(&http.origin.url("bad.bin"), b"not these bytes"),
        &[],
        &[],
    );

    let pki = pki::pki();
    let tls_root = tempfile::tempdir().unwrap();
    std::fs::write(tls_root.path().join("model.bin"), &weights).unwrap();
    let https =
        Origin::serve_tls(tls_root.path(), &pki::leaf(&pki, &["localhost"], false)).unwrap();
    describe(
        out,
        "https",
        &with_sha256(&https.url_for_host("localhost", "model.bin"), &weights),
        &[
            ("CA_BUNDLE_CONFIGMAP_NAME", "global-ca-bundle".into()),
            (
                "CA_BUNDLE_VOLUME_MOUNT_POINT",
                "/etc/ssl/custom-certs".into(),
            ),
        ],
        &[("model.bin", &weights)],
    );
    std::fs::write(out.join("https/cabundle.crt"), &pki.ca_pem).unwrap();

    let hub = Hub::start(vec![
        HubRepo::new("org/model")
            .file("config.json", config)
            .lfs_file("model.safetensors", weights.clone()),
    ])
    .unwrap();
    describe(
        out,
        "hf",
        "hf://org/model",
        &[
            ("HF_ENDPOINT", hub.endpoint()),
            ("HF_HUB_ENABLE_HF_TRANSFER", "1".into()),
            ("HF_XET_HIGH_PERFORMANCE", "1".into()),
            ("HF_XET_NUM_CONCURRENT_RANGE_GETS", "8".into()),
        ],
        &[("config.json", config), ("model.safetensors", &weights)],
    );

    let s3_weights = data(3, 5 << 20);
    let s3 = S3::start(
        true,
        &[
            ("llama/config.json", config.to_vec(), none()),
            (
                "llama/w.bin",
                s3_weights.clone(),
                json!({"checksum": "CRC32C"}),
            ),
        ],
    );
    if let Some(s3) = &s3 {
        let spec = json!({
            "type": "s3",
            "access_key_id": s3.key.0,
            "secret_access_key": s3.key.1,
            "endpoint_url": s3.server.url(),
            "region": "us-east-1",
        });
        describe(
            out,
            "s3",
            "s3://models/llama",
            &[("STORAGE_CONFIG", spec.to_string())],
            &[("config.json", config), ("w.bin", &s3_weights)],
        );
    }

    let gs_weights = data(4, 3 << 20);
    let gcs = Gcs::start(&[
        ("bert/model.bin", &gs_weights),
        ("bert/notes.md", b"left out"),
    ]);
    if let Some(gcs) = &gcs {
        describe(
            out,
            "gs",
            "gs://models/bert",
            &[
                (
                    "STORAGE_EMULATOR_HOST",
                    format!("127.0.0.1:{}", gcs.server.port),
                ),
                ("STORAGE_IGNORE_PATTERNS", r#"["*.md"]"#.into()),
            ],
            &[("model.bin", &gs_weights)],
        );
    }

    std::fs::write(out.join("ready"), "").unwrap();
    while !stop.load(Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
}
