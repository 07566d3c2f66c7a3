//! Replacing KServe's agent on a node that has its cache: the models root is filled by
//! KServe's real storage initializer (PyPI `kserve-storage`, `Storage.download(uri,
//! out_dir)`, run as uid 1000 as KServe's Jobs run), then the agent starts as KServe's
//! DaemonSet runs it (uid 65532, `NODE_NAME` and `POD_NAMESPACE`, nothing else but the
//! test's models root, ports and a short grace period). `models/` is first root's, 0755, as
//! Kubernetes creates a hostPath: the agent waits not ready, naming the fix, and carries on
//! once it is made writable, without a restart. Every cached model is adopted without
//! a byte from the store, a damaged file is fetched alone, a new model is downloaded, and
//! folders no longer needed are reported (KServe's files are not the agent's to delete) until
//! their owner changes, then collected.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::*;
use kube::Api;
use kube::api::PostParams;
use localmodelnode_agent::crd::{LocalModelNode, LocalModelNodeSpec, ModelStatus};
use localmodelnode_agent::keys::storage_key;
use modelpull_testkit::hub::{Hub, HubRepo, RouteKind};
use modelpull_testkit::kserve::{self, KSERVE_UID};
use modelpull_testkit::sha256_hex as sha256;

const NODE: &str = "gpu-node-1";
/// The agent image's user.
const MIB: usize = 1 << 20;

/// `len` bytes that differ in every MiB, made fast: a random MiB with the MiB's index and
/// `seed` written over its start.
fn weights(seed: u64, len: usize) -> Vec<u8> {
    let block = modelpull_testkit::data(seed, MIB);
    let mut out = Vec::with_capacity(len);
    let mut i = 0u64;
    while out.len() < len {
        let start = out.len();
        out.extend_from_slice(&block);
        out[start..start + 16].copy_from_slice(&[seed.to_le_bytes(), i.to_le_bytes()].concat());
        i += 1;
    }
    out.truncate(len);
    out
}

/// Content bytes the Hub sent after its request number `from`, per file: the CDN's by LFS
/// sha256, `resolve`'s by path (`/acme/new/resolve/…/config.json`).
fn content_bytes(hub: &Hub, from: usize) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for r in hub.stats().requests.iter().skip(from) {
        let file = match r.kind {
            RouteKind::Cdn => r.path.rsplit('/').next().unwrap_or_default(),
            RouteKind::Resolve => r.path.as_str(),
            _ => continue,
        };
        if matches!(r.status, 200 | 206) && r.body_bytes > 0 {
            *out.entry(file.to_owned()).or_insert(0) += r.body_bytes;
        }
    }
    out
}

async fn is_downloaded(nodes: &Api<LocalModelNode>, key: &str) -> bool {
    statuses(nodes, NODE).await.get(key) == Some(&ModelStatus::Downloaded)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kserve_cache_is_adopted_in_place_by_the_agent_as_kserve_runs_it() {
    let Some(python) = python() else {
        return;
    };
    if !rustix::process::geteuid().is_root() {
        let _ = modelpull_testkit::servers::unavailable(
            "runs KServe's initializer and the agent under their own uids (needs root)",
        );
        return;
    }
    let Some(kserve_python) = kserve::python(&python) else {
        let _ = modelpull_testkit::servers::missing("kserve-storage (PyPI), runnable by uid 1000,");
        return;
    };
    // KServe's node: /models (mode 777, as KServe's docs ask), models/<storage key> written by
    // the initializer. Every folder on the way is searchable by both users.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = dir.path().join("models-root");
    let models = root.join("models");
    std::fs::create_dir_all(&models).unwrap();
    for d in [&root, &models] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let home = dir.path().join("kserve-home");
    std::fs::create_dir(&home).unwrap();
    kserve::chown_r(&home, KSERVE_UID);

    let shards: Vec<Vec<u8>> = (0..3).map(|i| weights(40 + i, 128 * MIB)).collect();
    let small_weights = weights(50, 8 * MIB);
    let new_weights = weights(60, 4 * MIB);
    let config = br#"{"architectures": ["LlamaForCausalLM"]}"#.to_vec();
    let mut big = HubRepo::new("acme/big").file("config.json", config.clone());
    for (i, s) in shards.iter().enumerate() {
        big = big.lfs_file(&format!("model-0000{i}-of-00003.safetensors"), s.clone());
    }
    let hub = Hub::start(vec![
        big,
        HubRepo::new("acme/small")
            .file("config.json", config.clone())
            .file("tokenizer.json", weights(51, 300_000))
            .lfs_file("model.safetensors", small_weights.clone()),
        HubRepo::new("acme/gone").lfs_file("model.safetensors", weights(70, 2 * MIB)),
        HubRepo::new("acme/new")
            .file("config.json", config.clone())
            .lfs_file("model.safetensors", new_weights.clone()),
    ])
    .unwrap();
    let (big_uri, small_uri, gone_uri, new_uri) = (
        "hf://acme/big",
        "hf://acme/small",
        "hf://acme/gone",
        "hf://acme/new",
    );
    let folder = |uri: &str| models.join(storage_key(uri));
    let t = Instant::now();
    kserve::initializer(
        &kserve_python,
        &hub,
        &home,
        &[
            (big_uri, folder(big_uri)),
            (small_uri, folder(small_uri)),
            (gone_uri, folder(gone_uri)),
        ],
    );
    let initializer_seconds = t.elapsed().as_secs_f64();
    let meta = std::fs::metadata(folder(big_uri)).unwrap();
    assert_eq!(
        (meta.uid(), meta.mode() & 0o777),
        (KSERVE_UID, 0o755),
        "KServe's folders belong to its initializer's user"
    );
    // A file damaged since (same size, one byte flipped), as a bad disk block leaves it.
    let damaged = folder(small_uri).join("model.safetensors");
    let mut bytes = std::fs::read(&damaged).unwrap();
    bytes[MIB + 7] ^= 0x40;
    std::fs::write(&damaged, &bytes).unwrap();
    let big_inodes: Vec<u64> = std::iter::once(folder(big_uri))
        .chain((0..3).map(|i| folder(big_uri).join(format!("model-0000{i}-of-00003.safetensors"))))
        .map(|p| std::fs::metadata(p).unwrap().ino())
        .collect();
    let small_before = std::fs::metadata(folder(small_uri)).unwrap().ino();
    // What a node that has run for a while holds: the cache on disk, not in memory.
    for uri in [big_uri, small_uri, gone_uri] {
        kserve::evict(&folder(uri));
    }

    // The cluster: KServe's ConfigMap and this node's LocalModelNode, without the removed model.
    let api = ApiServer::start(&python);
    let client = api.client(dir.path()).await;
    let kubeconfig = api.kubeconfig(dir.path());
    std::fs::set_permissions(&kubeconfig, std::fs::Permissions::from_mode(0o644)).unwrap();
    create_kserve_config(&client).await;
    let nodes: Api<LocalModelNode> = Api::all(client.clone());
    let mut lmn = LocalModelNode {
        spec: LocalModelNodeSpec {
            local_models: vec![
                entry("big", big_uri),
                entry("small", small_uri),
                entry("new", new_uri),
            ],
        },
        ..Default::default()
    };
    lmn.metadata.name = Some(NODE.into());
    nodes.create(&PostParams::default(), &lmn).await.unwrap();

    // Only the image changes. The node's `models/` is root's, 0755, as Kubernetes creates a
    // missing hostPath folder: the agent waits, not ready, naming the fix.
    std::fs::set_permissions(&models, std::fs::Permissions::from_mode(0o755)).unwrap();
    let seen_before = hub.stats().requests.len();
    // The agent as KServe's DaemonSet runs its image: uid 65532, its environment only.
    let mut command = Command::new(agent_binary());
    command
        .env_clear()
        .env("HF_ENDPOINT", hub.endpoint())
        .uid(AGENT_UID)
        .gid(AGENT_UID);
    let agent = Agent::spawn(
        command,
        &kubeconfig,
        &root,
        NODE,
        &["--gc-grace", "3s"],
        &[],
    );
    until(
        &agent,
        "not ready, naming the fix",
        Duration::from_secs(30),
        async || agent.readyz() == Some(503) && agent.log().contains("chown -R 65532:65532"),
    )
    .await;
    assert!(
        !is_downloaded(&nodes, "big").await,
        "nothing is adopted before the root is fixed"
    );
    // Fixed on the node: the agent carries on without a restart (it checks again within 5 s).
    std::fs::set_permissions(&models, std::fs::Permissions::from_mode(0o777)).unwrap();
    // Timed from the agent's last answer of not ready: it cannot have begun before.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut started = Instant::now();
    while agent.readyz() != Some(200) {
        assert!(
            Instant::now() < deadline,
            "not ready once fixed:\n{}",
            agent.log()
        );
        started = Instant::now();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    until(
        &agent,
        "the big model adopted",
        Duration::from_secs(120),
        async || is_downloaded(&nodes, "big").await,
    )
    .await;
    let big_seconds = started.elapsed().as_secs_f64();
    for key in ["small", "new"] {
        until(&agent, key, Duration::from_secs(60), async || {
            is_downloaded(&nodes, key).await
        })
        .await;
    }
    let all_seconds = started.elapsed().as_secs_f64();

    // Adopted: not a byte of the cached models from the store; only the damaged file and
    // the new model.
    let sent = content_bytes(&hub, seen_before);
    let small_sha = sha256(&small_weights);
    let new_sha = sha256(&new_weights);
    assert!(
        sent.keys()
            .all(|f| *f == small_sha || *f == new_sha || f.starts_with("/acme/new/")),
        "only the damaged file and the new model are fetched: {sent:?}"
    );
    let repaired_bytes = sent.get(&small_sha).copied().unwrap_or(0);
    assert!(
        repaired_bytes >= small_weights.len() as u64
            && repaired_bytes < 2 * small_weights.len() as u64,
        "the damaged file, fetched once: {repaired_bytes} bytes"
    );
    let big_bytes: u64 = shards.iter().map(|s| s.len() as u64).sum::<u64>() + config.len() as u64;

    // The big folder: not moved, not rewritten, still KServe's; its marker in the agent's state.
    let after: Vec<u64> = std::iter::once(folder(big_uri))
        .chain((0..3).map(|i| folder(big_uri).join(format!("model-0000{i}-of-00003.safetensors"))))
        .map(|p| std::fs::metadata(p).unwrap().ino())
        .collect();
    assert_eq!(
        after, big_inodes,
        "the adopted folder and its files stay where they were"
    );
    assert_eq!(
        std::fs::metadata(folder(big_uri)).unwrap().uid(),
        KSERVE_UID
    );
    let recorded = models.join(format!(".modelpull/markers/{}.json", storage_key(big_uri)));
    assert!(
        recorded.exists(),
        "the marker of a folder the agent cannot write to"
    );

    // The damaged model: a verified copy exchanged for KServe's folder, which went aside.
    assert_eq!(
        std::fs::read(folder(small_uri).join("model.safetensors")).unwrap(),
        small_weights
    );
    let small_meta = std::fs::metadata(folder(small_uri)).unwrap();
    assert_ne!(small_meta.ino(), small_before);
    assert_eq!(small_meta.uid(), AGENT_UID);
    assert!(folder(small_uri).join(modelpull::MARKER).exists());
    assert_eq!(
        std::fs::read(folder(new_uri).join("model.safetensors")).unwrap(),
        new_weights
    );

    // Folders no longer needed (the removed model, the replaced copy) are KServe's files:
    // reported once each after the grace, with the bytes they hold, and left.
    let events = |reason: &'static str| {
        api.requests()
            .iter()
            .filter(|r| r["body"]["reason"] == reason)
            .filter_map(|r| r["body"]["note"].as_str().map(str::to_owned))
            .collect::<Vec<_>>()
    };
    until(
        &agent,
        "both folders reported",
        Duration::from_secs(30),
        async || events("CannotRemove").len() >= 2,
    )
    .await;
    let notes = events("CannotRemove");
    let gone_path = folder(gone_uri);
    assert!(
        notes
            .iter()
            .any(|n| n.contains(&gone_path.display().to_string())
                && n.contains("chown -R 65532:65532")),
        "{notes:?}"
    );
    let undeletable = agent
        .metric("modelpull_agent_undeletable_bytes")
        .unwrap_or(0.0);
    assert!(undeletable >= (2 * MIB + 8 * MIB) as f64, "{undeletable}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        events("CannotRemove").len(),
        notes.len(),
        "reported once, not retried"
    );
    assert!(gone_path.exists());

    // The fix the Event names: the folders given to the agent, which then removes them.
    let leftovers: Vec<PathBuf> = std::fs::read_dir(&models)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.uid() == KSERVE_UID) && *p != folder(big_uri)
        })
        .collect();
    assert_eq!(leftovers.len(), 2, "{leftovers:?}");
    for p in &leftovers {
        kserve::chown_r(p, AGENT_UID);
    }
    until(
        &agent,
        "the leftovers collected",
        Duration::from_secs(30),
        async || {
            leftovers.iter().all(|p| !p.exists())
                && agent.metric("modelpull_agent_undeletable_bytes") == Some(0.0)
        },
    )
    .await;
    assert!(folder(big_uri).exists() && folder(small_uri).exists() && folder(new_uri).exists());

    eprintln!(
        "MEASURED migration: 3 cached models ({:.0} MiB), 2 adopted as they were, 1 repaired; \
         big model ({:.0} MiB, read from disk) adopted in {big_seconds:.2} s from the agent's last not-ready answer \
         ({:.2} GB/s), all Downloaded in {all_seconds:.2} s; store bytes for cached models: \
         {repaired_bytes} (the damaged file, {} bytes), for the new model: {}; KServe's \
         initializer took {initializer_seconds:.1} s to fill the cache",
        (big_bytes as f64 + small_weights.len() as f64) / MIB as f64,
        big_bytes as f64 / MIB as f64,
        big_bytes as f64 / big_seconds / 1e9,
        small_weights.len(),
        sent.get(&new_sha).copied().unwrap_or(0)
    );
}
