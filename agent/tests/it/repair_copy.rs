//! A damaged file in a folder KServe's Jobs wrote (uid 1000, 0755), on a disk too full for the
//! whole copy that repairs such a folder: the agent, as uid 65532, fails the model once with
//! `no_space`, naming the `chown -R` that repairs it in place, gives the disk back, leaves the
//! folder as it was, and does not try again at the pace of a transient failure. Needs root
//! (a small tmpfs, another uid).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use kube::Api;
use kube::api::PostParams;
use localmodelnode_agent::crd::{LocalModelNode, LocalModelNodeSpec, ModelStatus};
use localmodelnode_agent::keys::storage_key;
use modelpull_testkit::hub::{Hub, HubRepo, RouteKind};
use modelpull_testkit::kserve::{self, KSERVE_UID};

use crate::util::*;

const NODE: &str = "gpu-node-1";
const URI: &str = "hf://acme/kserve";
const MIB: usize = 1 << 20;

/// Unmounts the tmpfs when dropped.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repair_copy_that_does_not_fit_fails_once_naming_the_chown() {
    if !rustix::process::geteuid().is_root() {
        let _ = servers::unavailable(&format!(
            "a small tmpfs and the agent as uid {AGENT_UID} need root"
        ));
        return;
    }
    let Some(python) = python() else {
        return;
    };
    let weights = modelpull_testkit::data(81, 10 * MIB);
    let hub = Hub::start(vec![
        HubRepo::new("acme/kserve")
            .file("config.json", "{}")
            .lfs_file("model.safetensors", weights.clone()),
    ])
    .unwrap();

    // The node: a 16 MiB disk, /models open to all as KServe asks, and the model as KServe's
    // initializer left it, but for one flipped bit.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs"])
        .arg(&root)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        let _ = servers::unavailable("cannot mount a small tmpfs (needs root)");
        return;
    }
    let _unmount = Unmount(root.clone());
    let models = root.join("models");
    std::fs::create_dir(&models).unwrap();
    std::fs::set_permissions(&models, std::fs::Permissions::from_mode(0o777)).unwrap();
    let folder = models.join(storage_key(URI));
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("config.json"), "{}").unwrap();
    let mut damaged = weights.clone();
    damaged[3 * MIB] ^= 0x01;
    std::fs::write(folder.join("model.safetensors"), &damaged).unwrap();
    kserve::chown_r(&folder, KSERVE_UID);
    let inode = std::fs::metadata(folder.join("model.safetensors"))
        .unwrap()
        .ino();
    let free_before = rustix::fs::statvfs(&root).unwrap().f_bavail;

    let api = ApiServer::start(&python);
    let client = api.client(dir.path()).await;
    let kubeconfig = api.kubeconfig(dir.path());
    std::fs::set_permissions(&kubeconfig, std::fs::Permissions::from_mode(0o644)).unwrap();
    create_kserve_config(&client).await;
    let nodes: Api<LocalModelNode> = Api::all(client.clone());
    let mut lmn = LocalModelNode {
        spec: LocalModelNodeSpec {
            local_models: vec![entry("kserve", URI)],
        },
        ..Default::default()
    };
    lmn.metadata.name = Some(NODE.into());
    nodes.create(&PostParams::default(), &lmn).await.unwrap();

    let mut command = Command::new(agent_binary());
    command.uid(AGENT_UID).gid(AGENT_UID);
    let agent = Agent::spawn(
        command,
        &kubeconfig,
        &root,
        NODE,
        &[],
        &[("HF_ENDPOINT", &hub.endpoint())],
    );
    wait_for(
        &nodes,
        NODE,
        &agent,
        "the model failed",
        Duration::from_secs(60),
        |s| s.get("kserve") == Some(&ModelStatus::Error),
    )
    .await;
    let notes = || {
        api.requests()
            .iter()
            .filter(|r| r["body"]["reason"] == "DownloadFailed")
            .filter_map(|r| r["body"]["note"].as_str().map(str::to_owned))
            .collect::<Vec<_>>()
    };
    let failed = notes();
    assert_eq!(failed.len(), 1, "{failed:?}");
    for named in [
        format!("not enough disk space to repair {}", folder.display()),
        format!("chown -R 65532:65532 {}", folder.display()),
        "trying again in 600 s".into(),
    ] {
        assert!(failed[0].contains(&named), "{named}: {failed:?}");
    }
    let served = || hub.stats().count(RouteKind::Cdn);
    let fetched = served();
    assert!(fetched >= 1, "the damaged file was fetched for the copy");

    // Not at the pace of a transient failure: the node's LocalModelNode is checked every
    // second, and nothing is fetched or reported again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(served(), fetched, "not fetched again");
    assert_eq!(notes().len(), 1, "reported once");
    let metrics = agent.metrics();
    assert!(
        metrics.contains(r#"modelpull_model_downloads_total{result="no_space"} 1"#),
        "{metrics}"
    );

    // KServe's folder as it was, the copy's space given back.
    let meta = std::fs::metadata(folder.join("model.safetensors")).unwrap();
    assert_eq!((meta.ino(), meta.uid()), (inode, KSERVE_UID));
    assert_eq!(
        std::fs::read(folder.join("model.safetensors")).unwrap(),
        damaged
    );
    let free_after = rustix::fs::statvfs(&root).unwrap().f_bavail;
    assert!(
        free_after + 64 >= free_before,
        "the staging copy was removed: {free_before} blocks free before, {free_after} after"
    );
    drop(agent);
}
