//! Whole runs of the agent binary against a test API server (support/apiserver.py), with
//! models served by the in-tree origin: statuses go Pending → Downloading → Downloaded and
//! the folders verify; a removed model's folder goes after the grace period (foreign folders
//! stay); a damaged file is fetched again; an API server outage does not stop a download
//! and the status catches up; bad entries get an error of their own. Everything the agent
//! writes is checked against KServe's CRD schema.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::util::*;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use localmodelnode_agent::crd::{LocalModelInfo, LocalModelNode, LocalModelNodeSpec, ModelStatus};
use localmodelnode_agent::keys::storage_key;
use modelpull_testkit::origin::{Faults, Origin};

const NODE: &str = "gpu-node-1";

fn data(seed: u8, len: usize) -> Vec<u8> {
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_le_bytes()[0]
        })
        .collect()
}

struct World {
    dir: tempfile::TempDir,
    api: ApiServer,
    origin: Origin,
    client: kube::Client,
}

impl World {
    async fn start(files: &[(&str, Vec<u8>)]) -> Option<Self> {
        let python = python()?;
        let dir = tempfile::tempdir().unwrap();
        let served = dir.path().join("origin");
        for (name, content) in files {
            std::fs::create_dir_all(served.join(name).parent().unwrap()).unwrap();
            std::fs::write(served.join(name), content).unwrap();
        }
        let origin = Origin::serve(&served).unwrap();
        let api = ApiServer::start(&python);
        let client = api.client(dir.path()).await;
        create_kserve_config(&client).await;
        Some(Self {
            dir,
            api,
            origin,
            client,
        })
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Serves every response at `rate` bytes per second per connection.
    fn slow(&self, rate: u64) {
        self.origin.set_faults(Faults {
            slow_rate: Some(rate),
            slow_times: u32::MAX,
            ..Faults::default()
        });
    }

    /// The notes of the Events with `reason` the agent posted.
    fn event_notes(&self, reason: &str) -> Vec<String> {
        self.api
            .requests()
            .iter()
            .filter(|r| r["body"]["reason"] == reason)
            .filter_map(|r| r["body"]["note"].as_str().map(str::to_owned))
            .collect()
    }

    fn agent(&self, extra: &[&str]) -> Agent {
        let kubeconfig = self.api.kubeconfig(self.dir.path());
        Agent::start(&kubeconfig, self.root(), NODE, extra)
    }

    fn nodes(&self) -> Api<LocalModelNode> {
        Api::all(self.client.clone())
    }

    /// [`wait_for`] on this world's node.
    async fn wait(
        &self,
        agent: &Agent,
        what: &str,
        timeout: Duration,
        check: impl Fn(&std::collections::BTreeMap<String, ModelStatus>) -> bool,
    ) {
        wait_for(&self.nodes(), NODE, agent, what, timeout, check).await;
    }

    async fn create_node(&self, models: Vec<LocalModelInfo>) {
        let mut lmn = LocalModelNode {
            spec: LocalModelNodeSpec {
                local_models: models,
            },
            ..Default::default()
        };
        lmn.metadata.name = Some(NODE.into());
        self.nodes()
            .create(&PostParams::default(), &lmn)
            .await
            .unwrap();
    }

    async fn set_models(&self, models: Vec<LocalModelInfo>) {
        let patch = serde_json::json!({"spec": {"localModels": models}});
        self.nodes()
            .patch(NODE, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }

    fn folder(&self, uri: &str) -> std::path::PathBuf {
        self.root().join("models").join(storage_key(uri))
    }

    /// Status values the agent wrote for `key`, in order, from the server's request log; and
    /// every written object checked against the CRD.
    fn written(&self, key: &str) -> Vec<String> {
        let mut seen = Vec::new();
        for r in self.api.requests() {
            let is_status_patch = r["method"] == "PATCH"
                && r["path"].as_str().is_some_and(|p| p.ends_with("/status"));
            if !is_status_patch {
                continue;
            }
            assert_eq!(r["content_type"], "application/merge-patch+json", "{r}");
            if let Some(v) = r["body"]["status"]["modelStatus"][key].as_str() {
                seen.push(v.to_owned());
            }
        }
        seen
    }
}

fn all_downloaded(
    keys: &'static [&'static str],
) -> impl Fn(&BTreeMap<String, ModelStatus>) -> bool {
    move |s| {
        keys.iter()
            .all(|k| s.get(*k) == Some(&ModelStatus::Downloaded))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn models_are_downloaded_verified_and_deduplicated() {
    let big = data(1, 24 << 20);
    let small = data(2, 300_000);
    let Some(w) = World::start(&[
        ("llama/model.bin", big.clone()),
        ("bert/model.bin", small.clone()),
    ])
    .await
    else {
        return;
    };
    // 1 MiB/s per connection: each 8 MiB range of the big model takes 8 s, so the status
    // refresh (every 2 s while downloading) sees it Downloading.
    w.slow(1 << 20);
    let llama = w.origin.url("llama/model.bin");
    let bert = w.origin.url("bert/model.bin");
    let mut shared = entry("llama", &llama);
    shared.namespace = Some("team-a".into());
    w.create_node(vec![entry("llama", &llama), shared, entry("bert", &bert)])
        .await;
    let agent = w.agent(&[]);
    w.wait(
        &agent,
        "every model downloaded",
        Duration::from_secs(60),
        all_downloaded(&["llama", "team-a/llama", "bert"]),
    )
    .await;
    assert_eq!(
        std::fs::read(w.folder(&llama).join("model.bin")).unwrap(),
        big
    );
    assert_eq!(
        std::fs::read(w.folder(&bert).join("model.bin")).unwrap(),
        small
    );
    assert!(w.folder(&llama).join(".modelpull.json").exists());

    let written = w.written("llama");
    assert_eq!(
        written.first().map(String::as_str),
        Some("ModelDownloadPending"),
        "{written:?}"
    );
    assert!(
        written.iter().any(|s| s == "ModelDownloading"),
        "{written:?}"
    );
    assert_eq!(written.last().map(String::as_str), Some("ModelDownloaded"));
    // One download for the URI both entries name.
    let fetched: u64 = w
        .origin
        .stats()
        .served
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _, _)| p.contains("llama"))
        .map(|(_, _, n)| *n)
        .sum();
    assert!(
        fetched <= big.len() as u64 + (16 << 20),
        "fetched {fetched} bytes"
    );

    // What the server holds after every write of the agent is a valid LocalModelNode.
    let schema = crate::util::schema::schema();
    let objects = w.api.objects("localmodelnodes");
    assert_eq!(objects.len(), 1);
    for object in objects {
        let mut errors = Vec::new();
        crate::util::schema::validate(&object, &schema, "", &mut errors);
        assert!(errors.is_empty(), "{errors:#?}\n{object:#}");
    }

    let reasons: Vec<String> = w
        .api
        .requests()
        .iter()
        .filter(|r| {
            r["method"] == "POST" && r["path"].as_str().is_some_and(|p| p.ends_with("/events"))
        })
        .filter_map(|r| r["body"]["reason"].as_str().map(str::to_owned))
        .collect();
    assert!(
        reasons.iter().any(|r| r == "DownloadStarted"),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r == "Downloaded"), "{reasons:?}");

    // controller-runtime's families, as KServe's agent serves them, counted on kube's
    // controller: the watch event and the download wake-ups reached the queue, and every
    // reconcile here asked to be requeued later.
    let metrics = agent.metrics();
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{series} is not served: {metrics}"))
    };
    let c = r#"{controller="localmodelnode""#;
    let q = r#"{controller="localmodelnode",name="localmodelnode""#;
    let requeued = value(&format!(
        r#"controller_runtime_reconcile_total{c},result="requeue_after"}}"#
    ));
    assert!(requeued >= 2.0, "{requeued}");
    assert_eq!(
        value(&format!(
            "controller_runtime_max_concurrent_reconciles{c}}}"
        )),
        1.0
    );
    assert!(value(&format!("workqueue_adds_total{q}}}")) >= 2.0);
    assert!(value(&format!("workqueue_queue_duration_seconds_count{q}}}")) >= 1.0);
    assert_eq!(
        value(&format!("workqueue_work_duration_seconds_count{q}}}")),
        value(&format!(
            "controller_runtime_reconcile_time_seconds_count{c}}}"
        ))
    );
    assert!(value("process_resident_memory_bytes") > 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn removed_models_go_after_the_grace_and_damaged_ones_come_back() {
    let a = data(3, 200_000);
    let b = data(4, 100_000);
    let Some(w) = World::start(&[("a/w.bin", a.clone()), ("b/w.bin", b.clone())]).await else {
        return;
    };
    let (ua, ub) = (w.origin.url("a/w.bin"), w.origin.url("b/w.bin"));
    std::fs::create_dir_all(w.root().join("models/not-ours")).unwrap();
    w.create_node(vec![entry("a", &ua), entry("b", &ub)]).await;
    let agent = w.agent(&["--gc-grace", "2s"]);
    let nodes = w.nodes();
    wait_for(
        &nodes,
        NODE,
        &agent,
        "both downloaded",
        Duration::from_secs(30),
        all_downloaded(&["a", "b"]),
    )
    .await;

    // Damage a: the next periodic check notices and downloads it again.
    std::fs::write(w.folder(&ua).join("w.bin"), b"truncated").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ok = std::fs::read(w.folder(&ua).join("w.bin")).is_ok_and(|c| c == a);
        if ok && statuses(&nodes, NODE).await.get("a") == Some(&ModelStatus::Downloaded) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a was not repaired: {}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Remove b: its status key goes at once, its folder after the grace.
    w.set_models(vec![entry("a", &ua)]).await;
    wait_for(
        &nodes,
        NODE,
        &agent,
        "b's status removed",
        Duration::from_secs(20),
        |s| !s.contains_key("b"),
    )
    .await;
    assert!(w.folder(&ub).exists(), "still within the grace period");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while w.folder(&ub).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "b was not collected: {}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(w.folder(&ua).exists());
    assert!(
        w.root().join("models/not-ours").exists(),
        "foreign folders are left alone"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn api_server_outage_does_not_stop_a_download() {
    let big = data(5, 16 << 20);
    let Some(mut w) = World::start(&[("m/w.bin", big.clone())]).await else {
        return;
    };
    w.slow(1 << 20);
    let uri = w.origin.url("m/w.bin");
    w.create_node(vec![entry("m", &uri)]).await;
    let agent = w.agent(&[]);
    w.wait(&agent, "downloading", Duration::from_secs(30), |s| {
        s.get("m") == Some(&ModelStatus::Downloading)
    })
    .await;
    w.api.pause();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !w.folder(&uri).join("w.bin").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no download without the API server: {}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.api.resume();
    w.wait(
        &agent,
        "status caught up",
        Duration::from_secs(60),
        all_downloaded(&["m"]),
    )
    .await;
    assert_eq!(std::fs::read(w.folder(&uri).join("w.bin")).unwrap(), big);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_entries_get_their_own_error() {
    let Some(w) = World::start(&[("ok/w.bin", data(6, 1000))]).await else {
        return;
    };
    let ok = w.origin.url("ok/w.bin");
    let before: Vec<_> = std::fs::read_dir(w.root())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    w.create_node(vec![
        entry("unknown-scheme", "ftp://example.com/model"),
        entry("a/../b", &ok),
        entry("ok", &ok),
    ])
    .await;
    let agent = w.agent(&[]);
    w.wait(
        &agent,
        "errors and a download",
        Duration::from_secs(30),
        |s| {
            s.get("unknown-scheme") == Some(&ModelStatus::Error)
                && s.get("a/../b") == Some(&ModelStatus::Error)
                && s.get("ok") == Some(&ModelStatus::Downloaded)
        },
    )
    .await;
    let after: Vec<_> = std::fs::read_dir(w.root())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    let new: Vec<_> = after.iter().filter(|p| !before.contains(p)).collect();
    assert!(
        new.iter()
            .all(|p| p.ends_with("models") || p.ends_with("agent.log")),
        "nothing outside models/: {new:?}"
    );
    let notes = w.event_notes("DownloadFailed");
    assert!(
        notes.iter().any(|n| n.contains("ftp")),
        "{notes:?} {}",
        agent.log()
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("not a valid Kubernetes object name")),
        "{notes:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_agent_resumes_and_fetches_nothing_twice() {
    let big = data(7, 24 << 20);
    let done = data(8, 200_000);
    let Some(w) = World::start(&[("big/w.bin", big.clone()), ("done/w.bin", done.clone())]).await
    else {
        return;
    };
    let (ubig, udone) = (w.origin.url("big/w.bin"), w.origin.url("done/w.bin"));
    w.create_node(vec![entry("done", &udone)]).await;
    let agent = w.agent(&[]);
    w.wait(
        &agent,
        "done downloaded",
        Duration::from_secs(30),
        all_downloaded(&["done"]),
    )
    .await;
    // 256 KiB/s per connection: 24 MiB take several seconds.
    w.slow(256 << 10);
    let bytes = |w: &World| {
        w.origin
            .stats()
            .body_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let start = bytes(&w);
    w.set_models(vec![entry("done", &udone), entry("big", &ubig)])
        .await;
    w.wait(&agent, "big downloading", Duration::from_secs(30), |s| {
        s.get("big") == Some(&ModelStatus::Downloading)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(agent); // SIGTERM: the download pauses at a chunk boundary
    let served = |w: &World, name: &str| -> u64 {
        w.origin
            .stats()
            .served
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _, _)| p.contains(name))
            .map(|(_, _, n)| *n)
            .sum()
    };
    let before = bytes(&w) - start;
    assert!(
        before > 0 && before < big.len() as u64,
        "interrupted mid-way ({before})"
    );
    w.origin.set_faults(Faults::default());
    let agent = w.agent(&[]);
    w.wait(
        &agent,
        "big downloaded after a restart",
        Duration::from_secs(60),
        all_downloaded(&["done", "big"]),
    )
    .await;
    assert_eq!(std::fs::read(w.folder(&ubig).join("w.bin")).unwrap(), big);
    let total = bytes(&w) - start;
    assert!(
        total < big.len() as u64 + (before / 2) + (16 << 20),
        "resumed, not started over: {total} bytes served for {} ({before} before the restart)",
        big.len()
    );
    assert_eq!(
        served(&w, "done/"),
        done.len() as u64,
        "a verified model is not fetched again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn not_enough_space_is_an_error_that_says_how_much() {
    let Some(w) = World::start(&[]).await else {
        return;
    };
    // hf:// lists sizes, so the space is checked before anything is fetched.
    let hub = modelpull_testkit::hub::Hub::start(vec![
        modelpull_testkit::hub::HubRepo::new("acme/big")
            .lfs_file("w.safetensors", data(9, 12 << 20)),
    ])
    .unwrap();
    // A 4 MiB filesystem as the models root (needs root, as the engine's disk-full test).
    let small = w.root().join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&small)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        let _ = modelpull_testkit::servers::unavailable("cannot mount a small tmpfs (needs root)");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(small.clone());
    w.create_node(vec![entry("big", "hf://acme/big")]).await;
    let kubeconfig = w.api.kubeconfig(w.root());
    let endpoint = hub.endpoint();
    let agent = Agent::start_with_env(
        &kubeconfig,
        &small,
        NODE,
        &[],
        &[("HF_ENDPOINT", endpoint.as_str())],
    );
    w.wait(&agent, "an error", Duration::from_secs(30), |s| {
        s.get("big") == Some(&ModelStatus::Error)
    })
    .await;
    let notes = w.event_notes("DownloadFailed");
    assert!(
        notes
            .iter()
            .any(|n| n.contains("not enough disk space: the model needs 12.0 MiB")),
        "{notes:?}"
    );
    assert_eq!(
        hub.stats().count(modelpull_testkit::hub::RouteKind::Cdn),
        0,
        "nothing was downloaded"
    );
    drop(agent);
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_come_from_the_service_accounts_secrets() {
    let Some(w) = World::start(&[]).await else {
        return;
    };
    let token = "hf_agent_test_token";
    let repo = modelpull_testkit::hub::HubRepo::new("acme/gated")
        .file("config.json", "{}")
        .lfs_file("w.safetensors", data(10, 3 << 20))
        .gated(token);
    let hub = modelpull_testkit::hub::Hub::start(vec![repo.clone()]).unwrap();
    let ns = "kserve-localmodel-jobs";
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(w.client.clone(), ns);
    let secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "hf-secret", "namespace": ns},
        "stringData": {"HF_TOKEN": token}
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(w.client.clone(), ns);
    let sa = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "hf-puller", "namespace": ns},
        "secrets": [{"name": "hf-secret"}]
    }))
    .unwrap();
    accounts.create(&PostParams::default(), &sa).await.unwrap();

    let mut with_sa = entry("gated", "hf://acme/gated");
    with_sa.service_account_name = Some("hf-puller".into());
    w.create_node(vec![with_sa, entry("no-token", "hf://acme/gated:main")])
        .await;
    let endpoint = hub.endpoint();
    let kubeconfig = w.api.kubeconfig(w.root());
    // From here on the request log is the agent's alone (waiting reads objects directly).
    w.api.reset_log();
    let agent = Agent::start_with_env(
        &kubeconfig,
        w.root(),
        NODE,
        &[],
        &[
            ("HF_ENDPOINT", endpoint.as_str()),
            ("RUST_LOG", "localmodelnode_agent=trace,modelpull=trace"),
        ],
    );
    w.api
        .wait_quietly(
            NODE,
            &agent,
            "gated downloaded, the other refused",
            Duration::from_secs(30),
            |s| {
                s.get("gated") == Some(&ModelStatus::Downloaded)
                    && s.get("no-token") == Some(&ModelStatus::Error)
            },
        )
        .await;
    // Everything the agent asked of the API server is allowed by the shipped RBAC rules.
    crate::util::rbac::assert_allowed(&w.api.requests());
    for f in repo.files() {
        assert_eq!(
            std::fs::read(w.folder("hf://acme/gated").join(&f.path)).unwrap(),
            f.bytes.to_vec()
        );
    }
    // Nowhere the agent writes: its log at trace level, any request it sent (Events, status
    // patches), its metrics, the completion markers.
    assert!(!agent.log().contains(token), "the token is never logged");
    assert!(
        !w.api
            .requests()
            .iter()
            .any(|r| r.to_string().contains(token)),
        "nor sent to the API server"
    );
    let metrics = agent.metrics();
    assert!(metrics.contains("modelpull_"), "{metrics}");
    assert!(!metrics.contains(token), "nor put in a metric");
    let marker =
        std::fs::read_to_string(w.folder("hf://acme/gated").join(".modelpull.json")).unwrap();
    assert!(!marker.contains(token), "nor written next to the model");
    let events: Vec<String> = w
        .api
        .requests()
        .iter()
        .filter(|r| r["path"].as_str().is_some_and(|p| p.contains("/events")))
        .map(|r| r["body"].to_string())
        .collect();
    assert!(
        events.iter().all(|e| !e.contains(token)),
        "nor put in an Event"
    );
    assert!(
        events.iter().any(|e| e.contains("gated repository")),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_removed_while_downloading_is_cancelled() {
    let big = data(11, 24 << 20);
    let Some(w) = World::start(&[("big/w.bin", big)]).await else {
        return;
    };
    w.slow(256 << 10);
    let uri = w.origin.url("big/w.bin");
    w.create_node(vec![entry("big", &uri)]).await;
    let agent = w.agent(&["--gc-grace", "1s"]);
    w.wait(&agent, "downloading", Duration::from_secs(30), |s| {
        s.get("big") == Some(&ModelStatus::Downloading)
    })
    .await;
    w.set_models(vec![]).await;
    w.wait(&agent, "status removed", Duration::from_secs(20), |s| {
        s.is_empty()
    })
    .await;
    let models = w.root().join("models");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left: Vec<_> = std::fs::read_dir(&models)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the staging of a cancelled download stays: {left:?}\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bytes = |w: &World| {
        w.origin
            .stats()
            .body_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let after = bytes(&w);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(bytes(&w) - after < 1 << 20, "the download stopped");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_started_before_its_cluster_picks_up_when_it_answers() {
    let Some(python) = python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut api = ApiServer::stopped(&python);
    let kubeconfig = api.kubeconfig(dir.path());
    let agent = Agent::start(&kubeconfig, dir.path(), NODE, &[]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        agent
            .log()
            .contains("cannot reach the Kubernetes API server")
    );
    api.resume();
    let client = api.client(dir.path()).await;
    let mut lmn = LocalModelNode::default();
    lmn.metadata.name = Some(NODE.into());
    lmn.spec.local_models = vec![entry("bad", "ftp://example.com/m")];
    let nodes: Api<LocalModelNode> = Api::all(client);
    nodes.create(&PostParams::default(), &lmn).await.unwrap();
    wait_for(
        &nodes,
        NODE,
        &agent,
        "the agent connected and reconciled",
        Duration::from_secs(60),
        |s| s.get("bad") == Some(&ModelStatus::Error),
    )
    .await;
    assert!(!agent.log().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_entries_share_ten_downloads() {
    let files: Vec<(String, Vec<u8>)> = (0..10u8)
        .map(|i| (format!("m{i}/w.bin"), data(20 + i, 50_000)))
        .collect();
    let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, c)| (n.as_str(), c.clone())).collect();
    let Some(w) = World::start(&refs).await else {
        return;
    };
    let entries: Vec<LocalModelInfo> = (0..1000)
        .map(|i| {
            let mut e = entry(
                &format!("model-{i}"),
                &w.origin.url(&format!("m{}/w.bin", i % 10)),
            );
            e.namespace = Some(format!("team-{}", i % 7));
            e
        })
        .collect();
    w.create_node(entries).await;
    let agent = w.agent(&[]);
    w.wait(&agent, "1,000 statuses", Duration::from_secs(60), |s| {
        s.len() == 1000 && s.values().all(|v| *v == ModelStatus::Downloaded)
    })
    .await;
    let folders = std::fs::read_dir(w.root().join("models")).unwrap().count();
    assert_eq!(folders, 10, "one folder per distinct URI");
    let requests = w.api.requests();
    let patches = requests
        .iter()
        .filter(|r| {
            r["method"] == "PATCH" && r["path"].as_str().is_some_and(|p| p.ends_with("/status"))
        })
        .count();
    assert!(
        patches < 20,
        "status written in a few patches, not per entry ({patches})"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_folder_left_by_kserves_agent_is_repaired_and_other_nodes_are_ignored() {
    let content = data(30, 150_000);
    let Some(w) = World::start(&[("m/w.bin", content.clone())]).await else {
        return;
    };
    let uri = w.origin.url("m/w.bin");
    // What KServe's agent leaves: the folder, no completion marker (maybe partial).
    std::fs::create_dir_all(w.folder(&uri)).unwrap();
    std::fs::write(w.folder(&uri).join("w.bin"), b"partial").unwrap();
    let mut other = LocalModelNode::default();
    other.metadata.name = Some("another-node".into());
    other.spec.local_models = vec![entry("theirs", &uri)];
    w.nodes()
        .create(&PostParams::default(), &other)
        .await
        .unwrap();
    w.create_node(vec![entry("m", &uri)]).await;
    let agent = w.agent(&["--gc-grace", "2s"]);
    w.wait(
        &agent,
        "downloaded",
        Duration::from_secs(30),
        all_downloaded(&["m"]),
    )
    .await;
    assert_eq!(
        std::fs::read(w.folder(&uri).join("w.bin")).unwrap(),
        content
    );
    let models = w.root().join("models");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::fs::read_dir(&models).unwrap().count() > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "staging leftovers beside the repaired folder: {:?}",
            std::fs::read_dir(&models)
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        statuses(&w.nodes(), "another-node").await.is_empty(),
        "another node's LocalModelNode is not this agent's business"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_credentials_as_kserves_builder_with_a_ca_bundle_configmap() {
    use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
    let Some(w) = World::start(&[]).await else {
        return;
    };
    let Some(venv) = modelpull_testkit::servers::venv() else {
        return;
    };
    // An S3 endpoint whose certificate only the ConfigMap's CA vouches for.
    let pki = modelpull_testkit::pki::pki();
    let identity = modelpull_testkit::pki::leaf(&pki, &["localhost"], false);
    let moto = modelpull_testkit::servers::moto_tls(&venv, &identity.cert_pem, &identity.key_pem);
    let endpoint = format!("https://localhost:{}", moto.port);
    let content = data(21, 200_000);
    let object = w.root().join("object");
    std::fs::write(&object, &content).unwrap();
    let plan = serde_json::json!({
        "endpoint": endpoint, "verify": false, "bucket": "models",
        "objects": [{"key": "llama/w.bin", "file": object}],
    });
    modelpull_testkit::servers::python(&venv, "s3_seed.py", &[], &plan.to_string());

    // As a KServe user writes them: the key names of KServe's code defaults (the test's
    // ConfigMap has no `credentials`), the endpoint with its scheme, the CA in a ConfigMap.
    let ns = "kserve-localmodel-jobs";
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "minio", "namespace": ns, "annotations": {
            "serving.kserve.io/s3-endpoint": endpoint,
            "serving.kserve.io/s3-cabundle-configmap": "minio-ca",
        }},
        "stringData": {"awsAccessKeyID": "testing", "awsSecretAccessKey": "testing"}
    }))
    .unwrap();
    Api::<Secret>::namespaced(w.client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let ca: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "minio-ca", "namespace": ns},
        "data": {"cabundle.crt": pki.ca_pem}
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(w.client.clone(), ns)
        .create(&PostParams::default(), &ca)
        .await
        .unwrap();
    let sa: ServiceAccount = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "s3-puller", "namespace": ns},
        "secrets": [{"name": "minio"}]
    }))
    .unwrap();
    Api::<ServiceAccount>::namespaced(w.client.clone(), ns)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();

    let mut model = entry("llama", "s3://models/llama");
    model.service_account_name = Some("s3-puller".into());
    w.create_node(vec![model]).await;
    w.api.reset_log();
    let agent = w.agent(&[]);
    w.api
        .wait_quietly(
            NODE,
            &agent,
            "llama downloaded",
            Duration::from_secs(30),
            |s| s.get("llama") == Some(&ModelStatus::Downloaded),
        )
        .await;
    // The ConfigMap read in the job namespace is among what the shipped RBAC rules allow.
    crate::util::rbac::assert_allowed(&w.api.requests());
    assert_eq!(
        std::fs::read(w.folder("s3://models/llama").join("w.bin")).unwrap(),
        content
    );
    drop(agent);
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_with_the_pods_irsa_identity_and_the_service_accounts_endpoint() {
    use k8s_openapi::api::core::v1::ServiceAccount;
    use modelpull_testkit::stores::{S3, none};
    let Some(w) = World::start(&[]).await else {
        return;
    };
    let content = data(22, 300_000);
    let Some(s3) = S3::start(true, &[("llama/w.bin", content.clone(), none())]) else {
        return;
    };
    // As on EKS: the agent's pod has IRSA's role and projected token (and its STS); the
    // model's ServiceAccount carries the role annotation and the S3 endpoint, no Secret.
    let token = w.root().join("eks.amazonaws.com/serviceaccount/token");
    std::fs::create_dir_all(token.parent().unwrap()).unwrap();
    std::fs::write(&token, "eyJhbGciOiJSUzI1NiJ9.projected.token\n").unwrap();
    let ns = "kserve-localmodel-jobs";
    let sa: ServiceAccount = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "irsa-puller", "namespace": ns, "annotations": {
            "eks.amazonaws.com/role-arn": s3.role_arn.clone().unwrap(),
            "serving.kserve.io/s3-endpoint": format!("127.0.0.1:{}", s3.server.port),
            "serving.kserve.io/s3-usehttps": "0",
        }},
    }))
    .unwrap();
    Api::<ServiceAccount>::namespaced(w.client.clone(), ns)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    let mut model = entry("llama", "s3://models/llama");
    model.service_account_name = Some("irsa-puller".into());
    w.create_node(vec![model]).await;
    // AssumeRoleWithWebIdentity is unsigned; every S3 request after it must be signed with
    // the role's temporary keys (the agent is given no keys), or moto refuses it.
    s3.allow_unsigned(1);
    let kubeconfig = w.api.kubeconfig(w.root());
    let role_arn = s3.role_arn.clone().unwrap();
    let sts = s3.server.url();
    let agent = Agent::start_with_env(
        &kubeconfig,
        w.root(),
        NODE,
        &[],
        &[
            ("AWS_ROLE_ARN", role_arn.as_str()),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token.to_str().unwrap()),
            ("AWS_ENDPOINT_URL_STS", sts.as_str()),
        ],
    );
    w.wait(&agent, "llama downloaded", Duration::from_secs(60), |s| {
        s.get("llama") == Some(&ModelStatus::Downloaded)
    })
    .await;
    assert_eq!(
        std::fs::read(w.folder("s3://models/llama").join("w.bin")).unwrap(),
        content
    );
    drop(agent);
}
