//! Replacing KServe's agent on a node that has its cache: the models root is filled by
//! KServe's real storage initializer (PyPI `kserve-storage`, `Storage.download(uri,
//! out_dir)`, run as uid 1000 as KServe's Jobs run), then the agent starts as KServe's
//! DaemonSet runs it: uid 65532, no arguments, default logs, in a cgroup with the DaemonSet's
//! limits (100m CPU, 300Mi), under a ServiceAccount whose ClusterRole has no Events (the test
//! API server answers them 403). Only what stands in for the cluster and the node differs
//! (`KUBECONFIG`, `MODELS_ROOT`, bind addresses on free ports, a short `GC_GRACE`). `models/`
//! is first root's, 0755, as Kubernetes creates a hostPath: the agent waits not ready, naming
//! the fix, and carries on once it is made writable, without a restart. Every cached model in
//! the spec is adopted without a byte of it from the store but the damaged file, a new model
//! is downloaded, and folders no longer needed are reported once (KServe's files are not the
//! agent's to delete) until their owner changes, then collected. The figures it prints are
//! computed from the statuses, the agent's adoption log lines and the origin's request log.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::util::cgroup::{Cgroup, Limits};
use crate::util::*;
use kube::Api;
use kube::api::PostParams;
use localmodelnode_agent::crd::{LocalModelNode, LocalModelNodeSpec, ModelStatus};
use localmodelnode_agent::keys::storage_key;
use modelpull_testkit::hub::{Hub, HubRepo, RouteKind};
use modelpull_testkit::kserve::{self, KSERVE_UID};
use modelpull_testkit::sha256_hex as sha256;
use serde_json::Value;

const NODE: &str = "gpu-node-1";
const MIB: usize = 1 << 20;
/// KServe's DaemonSet: `limits: {cpu: 100m, memory: 300Mi}`.
const KSERVE_LIMITS: Limits = Limits {
    memory: 300 << 20,
    cpu_millis: Some(100),
};

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

/// The agent's log lines (zap's JSON) whose message starts with `msg`.
fn logged(agent: &Agent, msg: &str) -> Vec<Value> {
    agent
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["msg"].as_str().is_some_and(|m| m.starts_with(msg)))
        .collect()
}

/// A number field of a log line, whether zap wrote it as a number or a string.
fn number(line: &Value, field: &str) -> u64 {
    line[field]
        .as_u64()
        .or_else(|| line[field].as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("no number `{field}` in {line}"))
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

    // The cluster: KServe's ConfigMap and this node's LocalModelNode, without the removed
    // model; KServe's ClusterRole, which has no Events.
    let api = ApiServer::forbidding(&python, &["events.events.k8s.io", "events"]);
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
    let cgroup = match Cgroup::create("migration", KSERVE_LIMITS) {
        Ok(c) => c,
        Err(e) => {
            let _ = modelpull_testkit::servers::unavailable(&format!(
                "no cgroup with KServe's limits for the agent: {e}"
            ));
            return;
        }
    };
    let agent = Agent::as_kserve_runs_it(
        cgroup.wrap(Some(AGENT_UID)),
        &kubeconfig,
        &root,
        NODE,
        &[("HF_ENDPOINT", &hub.endpoint()), ("GC_GRACE", "3s")],
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
    // It read the pod's limits and says what they allow.
    let cpu = logged(&agent, "cpu limit 0.10 cores: downloads will run near");
    assert!(
        cpu.len() == 1 && cpu[0]["level"] == "warn",
        "{}",
        agent.log()
    );
    let memory = logged(&agent, "memory limit 300.0 MiB: ");
    assert_eq!(memory.len(), 1, "{}", agent.log());
    let buffers = memory[0]["msg"].as_str().unwrap().to_owned();
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
        Duration::from_secs(300),
        async || is_downloaded(&nodes, "big").await,
    )
    .await;
    let big_seconds = started.elapsed().as_secs_f64();
    until(&agent, "small", Duration::from_secs(120), async || {
        is_downloaded(&nodes, "small").await
    })
    .await;
    let cached_seconds = started.elapsed().as_secs_f64();
    until(&agent, "new", Duration::from_secs(120), async || {
        is_downloaded(&nodes, "new").await
    })
    .await;
    let all_seconds = started.elapsed().as_secs_f64();

    // What the agent did with each cached folder, as it logged it.
    let adoptions = logged(&agent, "adopted the folder in place");
    let of = |uri: &str| {
        let dest = folder(uri).display().to_string();
        let found: Vec<&Value> = adoptions
            .iter()
            .filter(|l| l["dest"].as_str() == Some(dest.as_str()))
            .collect();
        assert_eq!(found.len(), 1, "{uri}: {adoptions:?}");
        found[0].clone()
    };
    let (big_adoption, small_adoption) = (of(big_uri), of(small_uri));
    let cached = [&big_adoption, &small_adoption];
    let untouched = cached
        .iter()
        .filter(|a| a["repair"] == "None" && number(a, "fetched_files") == 0)
        .count();
    let repaired: Vec<&&Value> = cached
        .iter()
        .filter(|a| number(a, "fetched_files") > 0)
        .collect();
    assert_eq!(
        (untouched, repaired.len()),
        (1, 1),
        "the intact model adopted as it is, the damaged one repaired: {adoptions:?}"
    );
    assert_eq!(big_adoption["repair"], "None");
    assert_eq!(small_adoption["repair"], "Exchanged", "{small_adoption}");
    assert_eq!(number(&small_adoption, "fetched_files"), 1);
    let adopted_bytes: u64 = cached.iter().map(|a| number(a, "adopted_bytes")).sum();
    let adopted_files: u64 = cached.iter().map(|a| number(a, "adopted_files")).sum();

    // Adopted: not a byte of the cached models from the store; only the damaged file and
    // the new model.
    let sent = content_bytes(&hub, seen_before);
    let small_sha = sha256(&small_weights);
    let new_sha = sha256(&new_weights);
    let is_new = |f: &str| f == new_sha || f.starts_with("/acme/new/");
    assert!(
        sent.keys().all(|f| *f == small_sha || is_new(f)),
        "only the damaged file and the new model are fetched: {sent:?}"
    );
    let cached_origin_bytes: u64 = sent
        .iter()
        .filter(|(f, _)| !is_new(f))
        .map(|(_, b)| b)
        .sum();
    let new_origin_bytes: u64 = sent.iter().filter(|(f, _)| is_new(f)).map(|(_, b)| b).sum();
    assert!(
        cached_origin_bytes >= small_weights.len() as u64
            && cached_origin_bytes < 2 * small_weights.len() as u64,
        "the damaged file, fetched once: {cached_origin_bytes} bytes"
    );
    let big_bytes: u64 = shards.iter().map(|s| s.len() as u64).sum::<u64>() + config.len() as u64;
    assert_eq!(number(&big_adoption, "adopted_bytes"), big_bytes);

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
    // reported once each after the grace, with the bytes they hold, and left. Events are
    // forbidden, so the report is the log line and the metric.
    let cannot_remove = || logged(&agent, "cannot remove a model folder no longer needed");
    until(
        &agent,
        "both folders reported",
        Duration::from_secs(30),
        async || cannot_remove().len() >= 2,
    )
    .await;
    let reports = cannot_remove();
    let gone_path = folder(gone_uri);
    assert!(
        reports
            .iter()
            .any(|r| r["path"].as_str() == Some(gone_path.to_str().unwrap())
                && r["msg"].as_str().unwrap().contains("chown -R 65532:65532")
                && r["level"] == "warn"),
        "{reports:?}"
    );
    let undeletable = agent
        .metric("modelpull_agent_undeletable_bytes")
        .unwrap_or(0.0);
    assert!(undeletable >= (2 * MIB + 8 * MIB) as f64, "{undeletable}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        cannot_remove().len(),
        reports.len(),
        "reported once, not retried"
    );
    assert!(gone_path.exists());

    // Events: refused once, never asked again, one warning naming the rule that allows them.
    let event_posts = api
        .requests()
        .iter()
        .filter(|r| r["path"].as_str().is_some_and(|p| p.ends_with("/events")))
        .map(|r| r["status"].as_u64())
        .collect::<Vec<_>>();
    assert_eq!(event_posts, [Some(403)], "one Event tried, refused");
    let warnings = logged(&agent, "Events are forbidden");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0]["level"], "warn");
    assert!(
        warnings[0]["msg"]
            .as_str()
            .unwrap()
            .contains(localmodelnode_agent::events::RBAC_RULE),
        "{warnings:?}"
    );

    // The fix the log names: the folders given to the agent, which then removes them.
    let leftovers: Vec<PathBuf> = std::fs::read_dir(&models)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.uid() == KSERVE_UID) && *p != folder(big_uri)
        })
        .collect();
    assert_eq!(leftovers.len(), 2, "{leftovers:?}");
    let chowned = Instant::now();
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
    let collected_seconds = chowned.elapsed().as_secs_f64();
    assert!(folder(big_uri).exists() && folder(small_uri).exists() && folder(new_uri).exists());
    assert_eq!(cgroup.oom_kills(), 0, "{}", agent.log());
    assert_eq!(agent.readyz(), Some(200));
    let peak = cgroup.peak();
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
    let hwm = localmodelnode_agent::fit::status_kib(&status, "VmHWM:").unwrap() * 1024;
    drop(agent);

    let statuses = statuses(&nodes, NODE).await;
    let downloaded = statuses
        .values()
        .filter(|s| **s == ModelStatus::Downloaded)
        .count();
    let mib = |b: u64| b as f64 / MIB as f64;
    eprintln!(
        "MEASURED migration under 100m CPU and 300Mi: {downloaded} of {} models Downloaded; \
         {} cached models in the spec ({:.0} MiB, {adopted_files} files): {untouched} adopted \
         as it was, {} repaired ({} file fetched); store bytes for the cached models: \
         {cached_origin_bytes} (the damaged file is {} bytes), for the new model: \
         {new_origin_bytes}; {:.3} GB adopted, the {:.0} MiB model in {big_seconds:.2} s from \
         the agent's last not-ready answer ({:.3} GB/s, read from disk), both cached models in \
         {cached_seconds:.2} s, all in {all_seconds:.2} s; the removed model and the replaced \
         copy reported once and left, then collected {collected_seconds:.1} s after chown; \
         agent's VmHWM {:.0} MiB, cgroup peak {} (with the page cache of what it read), the agent's own sizing: {buffers:?}; KServe's initializer took \
         {initializer_seconds:.1} s to fill the cache",
        statuses.len(),
        cached.len(),
        mib(big_bytes + small_weights.len() as u64 + 300_000 + config.len() as u64),
        repaired.len(),
        number(&small_adoption, "fetched_files"),
        small_weights.len(),
        adopted_bytes as f64 / 1e9,
        mib(big_bytes),
        big_bytes as f64 / big_seconds / 1e9,
        mib(hwm),
        peak.map_or("unknown".into(), |p| format!("{:.0} MiB", mib(p))),
    );
}
