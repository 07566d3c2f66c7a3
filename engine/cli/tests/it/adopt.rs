//! `modelpull pull --adopt` on folders KServe's storage initializer wrote (as uid 1000), run
//! by another user (65532, the agent image's): an intact folder is taken over without a byte
//! from the store and without being written to, a damaged one is exchanged for a verified
//! copy with only the damaged file fetched; without `--adopt` such a folder is refused.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};

use modelpull_testkit::hub::{Hub, HubRepo, RouteKind};
use modelpull_testkit::kserve;

const USER: u32 = 65532;

fn pull(hub: &Hub, dest: &Path, adopt: bool) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_modelpull"));
    cmd.env_clear()
        .env("HF_ENDPOINT", hub.endpoint())
        .args(["pull", "hf://acme/m"])
        .arg(dest)
        .uid(USER)
        .gid(USER);
    if adopt {
        cmd.arg("--adopt");
    }
    cmd.output().unwrap()
}

fn cdn_bytes(hub: &Hub) -> u64 {
    hub.stats().of(RouteKind::Cdn).map(|r| r.body_bytes).sum()
}

#[test]
fn folders_kserve_wrote_are_adopted_by_another_user() {
    if !rustix::process::geteuid().is_root() {
        let _ = modelpull_testkit::servers::unavailable(
            "runs KServe's initializer and modelpull under their own uids (needs root)",
        );
        return;
    }
    let Some(venv) = modelpull_testkit::servers::venv() else {
        return;
    };
    let Some(python) = kserve::python(&venv.python()) else {
        let _ = modelpull_testkit::servers::missing("kserve-storage (PyPI), runnable by uid 1000,");
        return;
    };
    let weights = modelpull_testkit::data(80, 24 << 20);
    let hub = Hub::start(vec![
        HubRepo::new("acme/m")
            .file("config.json", b"{}".to_vec())
            .lfs_file("model.safetensors", weights.clone()),
    ])
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    std::fs::set_permissions(&models, std::fs::Permissions::from_mode(0o777)).unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    kserve::chown_r(&home, kserve::KSERVE_UID);
    let (intact, damaged) = (models.join("intact"), models.join("damaged"));
    kserve::initializer(
        &python,
        &hub,
        &home,
        &[
            ("hf://acme/m", intact.clone()),
            ("hf://acme/m", damaged.clone()),
        ],
    );
    let mut bytes = std::fs::read(damaged.join("model.safetensors")).unwrap();
    bytes[12345] ^= 1;
    std::fs::write(damaged.join("model.safetensors"), &bytes).unwrap();
    let cdn_before = cdn_bytes(&hub);

    let refused = pull(&hub, &intact, false);
    assert_eq!(
        refused.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let inode = std::fs::metadata(&intact).unwrap().ino();
    let out = pull(&hub, &intact, true);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        intact.display().to_string()
    );
    assert!(stderr.contains("adopted 2 files"), "{stderr}");
    assert_eq!(
        cdn_bytes(&hub),
        cdn_before,
        "nothing fetched for an intact folder"
    );
    assert_eq!(std::fs::metadata(&intact).unwrap().ino(), inode);
    assert!(models.join(".modelpull/markers/intact.json").exists());
    assert!(
        !intact.join(modelpull::MARKER).exists(),
        "KServe's folder is not written to"
    );
    let again = pull(&hub, &intact, true);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("nothing to do"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    let out = pull(&hub, &damaged, true);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("exchanged for a verified copy"), "{stderr}");
    // The CDN serves LFS files only: these are the damaged file's bytes (a response is counted
    // whole when it starts, so a range the engine split counts twice).
    let fetched = cdn_bytes(&hub) - cdn_before;
    let size = weights.len() as u64;
    assert!(
        (size..2 * size).contains(&fetched),
        "only the damaged file: {fetched}"
    );
    assert_eq!(
        std::fs::read(damaged.join("model.safetensors")).unwrap(),
        weights
    );
    assert_eq!(std::fs::metadata(&damaged).unwrap().uid(), USER);
}

#[test]
fn adopt_needs_a_folder_to_take_over() {
    let out = Command::new(env!("CARGO_BIN_EXE_modelpull"))
        .args(["pull", "--adopt", "hf://acme/m"])
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("give DEST or --local-dir"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
