//! The binary as KServe's storage-initializer: started under the entrypoint's name with bare
//! `SRC DEST` pairs, it pulls them in order into folders the serving container can read,
//! takes its credentials from the variables KServe injects (`STORAGE_CONFIG` included),
//! exits 1 at the first failure with one line that says why, and refuses at once what only
//! KServe's own image reads.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use modelpull_testkit::hub::{Hub, HubRepo};
use modelpull_testkit::stores::{Gcs, S3, none};
use modelpull_testkit::*;
use serde_json::json;

/// A link named like KServe's entrypoint to the binary, as in the image.
struct Entrypoint {
    dir: tempfile::TempDir,
}

impl Entrypoint {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("scripts")).unwrap();
        std::os::unix::fs::symlink(
            env!("CARGO_BIN_EXE_modelpull"),
            dir.path().join("scripts/initializer-entrypoint"),
        )
        .unwrap();
        Self { dir }
    }

    /// The entrypoint with `args`, under a umask that would hide files from other users, in
    /// an environment of `env` alone.
    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("umask 077; exec \"$0\" \"$@\"")
            .arg(self.dir.path().join("scripts/initializer-entrypoint"))
            .args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    fn models(&self, name: &str) -> PathBuf {
        self.dir.path().join("mnt").join(name)
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The last line on stderr: what `FallbackToLogsOnError` shows as the failure.
fn last_line(out: &Output) -> String {
    stderr(out).lines().last().unwrap_or_default().to_owned()
}

fn assert_failed(out: &Output) {
    assert_eq!(out.status.code(), Some(1), "{}", stderr(out));
}

/// Every file is 0644 and every folder 0755, whatever the umask; nothing of modelpull's is
/// left behind.
fn assert_readable_by_all(dest: &Path) {
    for path in walk(dest) {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        let want = if meta.is_dir() { 0o755 } else { 0o644 };
        assert_eq!(mode, want, "{}: {mode:o}", path.display());
        let name = path.file_name().unwrap().to_string_lossy();
        assert!(
            !name.contains("modelpull"),
            "{} left behind",
            path.display()
        );
    }
}

#[test]
fn anything_but_pairs_prints_the_usage_and_exits_1() {
    let ep = Entrypoint::new();
    for args in [&[][..], &["hf://org/model"], &["a", "/mnt/models", "b"]] {
        let out = ep.run(args, &[]);
        assert_failed(&out);
        assert!(
            String::from_utf8_lossy(&out.stdout)
                .starts_with("Usage: initializer-entrypoint SRC_URI DEST_PATH"),
            "{args:?}: {out:?}"
        );
    }
}

#[test]
fn pairs_are_pulled_in_order_readable_by_every_user() {
    let weights = data(1, 3_000_000);
    let config = br#"{"model_type": "test"}"#;
    let archive = tar_gz(&[
        ("model/weights.bin", &weights),
        ("model/config.json", config),
    ]);
    let fx = Fixture::new(&[("packed/model.tar.gz", &archive), ("single.bin", &weights)]);
    let repo = HubRepo::new("org/model")
        .file("config.json", &config[..])
        .lfs_file("model.safetensors", weights.clone());
    let hub = Hub::start(vec![repo]).unwrap();
    let ep = Entrypoint::new();
    let (packed, hf, single) = (ep.models("packed"), ep.models("hf"), ep.models("single"));
    let out = ep.run(
        &[
            &with_sha256(&fx.origin.url("packed/model.tar.gz"), &archive),
            packed.to_str().unwrap(),
            "hf://org/model",
            hf.to_str().unwrap(),
            &fx.origin.url("single.bin"),
            single.to_str().unwrap(),
        ],
        &[
            ("HF_ENDPOINT", &hub.endpoint()),
            // What KServe adds for its own Hub client; harmless here.
            ("HF_HUB_ENABLE_HF_TRANSFER", "1"),
            ("HF_XET_HIGH_PERFORMANCE", "1"),
            ("HF_XET_NUM_CONCURRENT_RANGE_GETS", "8"),
            ("S3_ENDPOINT", "s3.amazonaws.com"),
            ("S3_USE_HTTPS", "1"),
        ],
    );
    assert_success(&out);
    // A lone archive is unpacked in place and removed, as KServe does.
    assert_file(&packed, "model/weights.bin", &weights);
    assert_file(&packed, "model/config.json", config);
    assert!(!packed.join("packed").exists() && !packed.join("model.tar.gz").exists());
    assert_file(&hf, "config.json", config);
    assert_file(&hf, "model.safetensors", &weights);
    assert_file(&single, "single.bin", &weights);
    for dest in [&packed, &hf, &single] {
        assert_readable_by_all(dest);
        assert_eq!(
            std::fs::metadata(dest).unwrap().permissions().mode() & 0o777,
            0o755
        );
    }
    let err = stderr(&out);
    let order: Vec<usize> = ["model.tar.gz", "hf://org/model", "single.bin"]
        .iter()
        .map(|s| {
            err.find(&format!("{s} → "))
                .unwrap_or_else(|| panic!("{s}: {err}"))
        })
        .collect();
    assert!(order.is_sorted(), "{err}");
    assert!(
        err.contains(", model.tar.gz unpacked into 2 file(s)"),
        "{err}"
    );
}

#[test]
fn the_first_failure_stops_with_one_line_saying_why() {
    let good = data(2, 200_000);
    let fx = Fixture::new(&[("good.bin", &good), ("bad.bin", &data(3, 200_000))]);
    let ep = Entrypoint::new();
    let (a, b, c) = (ep.models("a"), ep.models("b"), ep.models("c"));
    let wrong = with_sha256(&fx.origin.url("bad.bin"), b"something else");
    let out = ep.run(
        &[
            &fx.origin.url("good.bin"),
            a.to_str().unwrap(),
            &wrong,
            b.to_str().unwrap(),
            &fx.origin.url("good.bin"),
            c.to_str().unwrap(),
        ],
        &[],
    );
    assert_failed(&out);
    assert_file(&a, "good.bin", &good);
    let line = last_line(&out);
    assert!(
        line.starts_with(&format!(
            "Storage initialization failed: pulling {} into {}: bad.bin failed verification",
            fx.origin.url("bad.bin"),
            b.display()
        )),
        "{line}"
    );
    assert!(!stderr(&out).contains('\x1b'), "no colours in a pod's log");
    // Every DEST is created first; the pair after the failure is never tried.
    assert!(c.is_dir());
    assert_eq!(std::fs::read_dir(&c).unwrap().count(), 0);
}

#[test]
fn sources_only_kserve_reads_fail_before_anything_is_downloaded() {
    let fx = Fixture::new(&[("good.bin", &data(4, 1000))]);
    let ep = Entrypoint::new();
    let (a, b) = (ep.models("a"), ep.models("b"));
    for (source, what) in [
        ("pvc://claim/models/m", "a PersistentVolumeClaim"),
        ("oci://registry.example/model:1", "an OCI image"),
        (
            "https://acct.blob.core.windows.net/models/m",
            "Azure Blob Storage",
        ),
        ("/mnt/pvc/models/m", "a local path"),
    ] {
        let out = ep.run(
            &[
                &fx.origin.url("good.bin"),
                a.to_str().unwrap(),
                source,
                b.to_str().unwrap(),
            ],
            &[],
        );
        assert_failed(&out);
        assert_eq!(
            last_line(&out),
            format!(
                "Storage initialization failed: {source}: {what} is not supported by modelpull's storage-initializer; use KServe's image kserve/storage-initializer for this URI"
            )
        );
        assert_eq!(
            fx.origin
                .stats()
                .requests
                .load(std::sync::atomic::Ordering::Relaxed),
            0,
            "{source}: nothing fetched"
        );
        assert!(a.is_dir() && b.is_dir());
    }
}

#[test]
fn confidential_models_are_left_to_kserve() {
    let fx = Fixture::new(&[("good.bin", &data(9, 1000))]);
    let ep = Entrypoint::new();
    let dest = ep.models("m");
    let out = ep.run(
        &[&fx.origin.url("good.bin"), dest.to_str().unwrap()],
        &[
            ("CONFIDENTIAL_ENABLED", "true"),
            ("CONFIDENTIAL_RESOURCE_ID", "kbs:///default/key/1"),
        ],
    );
    assert_failed(&out);
    assert_eq!(
        last_line(&out),
        "Storage initialization failed: CONFIDENTIAL_ENABLED: decrypting models is not supported by modelpull's storage-initializer; use KServe's image kserve/storage-initializer"
    );
    assert_eq!(
        fx.origin
            .stats()
            .requests
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[test]
fn a_source_under_mnt_models_is_already_in_place() {
    let ep = Entrypoint::new();
    let dest = ep.models("models");
    let out = ep.run(&["/mnt/models", dest.to_str().unwrap()], &[]);
    assert_success(&out);
    assert!(dest.is_dir());
    assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0);
}

#[test]
fn s3_credentials_come_from_the_storage_spec() {
    let weights = data(5, 400_000);
    let Some(s3) = S3::start(
        true,
        &[
            ("llama/config.json", b"{}".to_vec(), none()),
            (
                "llama/w.bin",
                weights.clone(),
                json!({"checksum": "CRC32C"}),
            ),
        ],
    ) else {
        return;
    };
    let ep = Entrypoint::new();
    let dest = ep.models("s3");
    // The storage-config Secret's entry, and the InferenceService's parameters over it.
    let spec = json!({
        "type": "s3",
        "access_key_id": s3.key.0,
        "secret_access_key": "not-the-secret",
        "endpoint_url": s3.server.url(),
        "region": "us-east-1",
    })
    .to_string();
    let run = |override_config: &str| {
        ep.run(
            &["s3://models/llama", dest.to_str().unwrap()],
            &[
                ("STORAGE_CONFIG", &spec),
                ("STORAGE_OVERRIDE_CONFIG", override_config),
            ],
        )
    };
    let denied = run("{}");
    assert_failed(&denied);
    let line = last_line(&denied);
    assert!(line.contains("access denied"), "{line}");
    assert!(!stderr(&denied).contains("not-the-secret"));

    let ok = run(&json!({"secret_access_key": s3.key.1}).to_string());
    assert_success(&ok);
    assert_file(&dest, "config.json", b"{}");
    assert_file(&dest, "w.bin", &weights);
    assert_readable_by_all(&dest);
    assert!(!stderr(&ok).contains(&s3.key.1));
}

#[test]
fn gcs_anonymous_with_patterns() {
    let weights = data(6, 300_000);
    let Some(gcs) = Gcs::start(&[("bert/model.bin", &weights), ("bert/notes.md", b"skip me")])
    else {
        return;
    };
    let ep = Entrypoint::new();
    let dest = ep.models("gcs");
    let host = format!("127.0.0.1:{}", gcs.server.port);
    let out = ep.run(
        &["gs://models/bert", dest.to_str().unwrap()],
        &[
            ("STORAGE_EMULATOR_HOST", &host),
            ("STORAGE_IGNORE_PATTERNS", r#"["*.md"]"#),
        ],
    );
    assert_success(&out);
    assert_file(&dest, "model.bin", &weights);
    assert!(!dest.join("notes.md").exists());
}

#[test]
fn the_ca_bundle_kserve_mounts_is_trusted() {
    let pki = pki::pki();
    let content = data(7, 100_000);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("o")).unwrap();
    std::fs::write(dir.path().join("o/model.bin"), &content).unwrap();
    let origin = origin::Origin::serve_tls(
        dir.path().join("o"),
        &pki::leaf(&pki, &["localhost"], false),
    )
    .unwrap();
    let certs = dir.path().join("custom-certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(certs.join("cabundle.crt"), &pki.ca_pem).unwrap();
    let ep = Entrypoint::new();
    let dest = ep.models("tls");
    let url = origin.url_for_host("localhost", "model.bin");
    let run = |env: &[(&str, &str)]| ep.run(&[&url, dest.to_str().unwrap()], env);

    let untrusted = run(&[]);
    assert_failed(&untrusted);
    let mounted = [
        ("CA_BUNDLE_CONFIGMAP_NAME", "global-ca-bundle"),
        ("CA_BUNDLE_VOLUME_MOUNT_POINT", certs.to_str().unwrap()),
    ];
    assert_success(&run(&mounted));
    assert_file(&dest, "model.bin", &content);

    let missing = run(&[mounted[0]]);
    assert_failed(&missing);
    assert!(
        last_line(&missing).ends_with(
            "/etc/ssl/custom-certs/cabundle.crt (CA_BUNDLE_CONFIGMAP_NAME) does not exist"
        ),
        "{}",
        last_line(&missing)
    );
}

#[test]
fn the_subcommand_is_the_same_program() {
    let content = data(8, 50_000);
    let fx = Fixture::new(&[("m.bin", &content)]);
    let dest = fx.dest("m");
    let out = Command::new(env!("CARGO_BIN_EXE_modelpull"))
        .args(["storage-initializer", &fx.origin.url("m.bin")])
        .arg(&dest)
        .output()
        .unwrap();
    assert_success(&out);
    assert_file(&dest, "m.bin", &content);
    let usage = Command::new(env!("CARGO_BIN_EXE_modelpull"))
        .arg("storage-initializer")
        .output()
        .unwrap();
    assert_failed(&usage);
    assert!(
        String::from_utf8_lossy(&usage.stdout).contains("modelpull storage-initializer SRC_URI")
    );
}
