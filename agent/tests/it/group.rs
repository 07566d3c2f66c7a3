//! A node group on one machine: several agent binaries, each its own node with its own models
//! root and peer port, the test API server holding their LocalModelNodes, the EndpointSlices of
//! their Service (as Kubernetes' endpoint controller writes them) and the stripes' Leases, and
//! an origin that counts what it sends. The model crosses the group with the origin sending it
//! about once; when one agent is killed part way, or cut off (stopped with its connections
//! open), its stripe's lease is taken over and the others finish; a peer that flips bytes is
//! caught (by its chunk CRCs, or without them by the file's digest and a comparison with the
//! origin's copy) and nothing wrong is published; an agent restarted mid-pull resumes and
//! serves again. The origin sends at most 1.3 times the model in each, but for the copies a
//! digest failure fetches again and what a cut-off node's socket buffers take in. The last
//! node to remove the model deletes its leases.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use localmodelnode_agent::crd::{LocalModelNode, LocalModelNodeSpec, ModelStatus};
use localmodelnode_agent::keys::storage_key;
use modelpull_testkit::origin::{Faults, Origin};

use crate::util::*;

const SERVICE: &str = "modelpull-agents";
const MIB: usize = 1024 * 1024;

struct Group {
    dir: tempfile::TempDir,
    api: ApiServer,
    origin: Origin,
    client: kube::Client,
    content: Vec<u8>,
    uri: String,
}

struct Node {
    name: String,
    root: PathBuf,
    args: Vec<String>,
    agent: Option<Agent>,
}

impl Node {
    /// Starts (again) this node's agent.
    fn start(&mut self, kubeconfig: &std::path::Path) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.agent = Some(Agent::start(kubeconfig, &self.root, &self.name, &args));
    }
}

impl Group {
    async fn start(size: usize) -> Option<Self> {
        let python = python()?;
        let dir = tempfile::tempdir().unwrap();
        let served = dir.path().join("origin");
        std::fs::create_dir_all(&served).unwrap();
        let content = modelpull_testkit::data(31, size);
        std::fs::write(served.join("model.bin"), &content).unwrap();
        let origin = Origin::serve(&served).unwrap();
        let uri = modelpull_testkit::with_sha256(&origin.url("model.bin"), &content);
        let api = ApiServer::start(&python);
        let client = api.client(dir.path()).await;
        create_kserve_config(&client).await;
        Some(Self {
            dir,
            api,
            origin,
            client,
            content,
            uri,
        })
    }

    /// Registers node `name` as keeping the model, its agent serving on 127.0.0.1:`port`: its
    /// LocalModelNode, and its EndpointSlice as Kubernetes' endpoint controller writes it.
    async fn register(&self, name: &str, port: u16) {
        let nodes: Api<LocalModelNode> = Api::all(self.client.clone());
        let mut lmn = LocalModelNode {
            spec: LocalModelNodeSpec {
                local_models: vec![entry("llama", &self.uri)],
            },
            ..Default::default()
        };
        lmn.metadata.name = Some(name.to_owned());
        nodes.create(&PostParams::default(), &lmn).await.unwrap();
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), "kserve");
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": format!("{SERVICE}-{name}"),
                "labels": {"kubernetes.io/service-name": SERVICE},
            },
            "addressType": "IPv4",
            "ports": [{"name": "peer", "port": port, "protocol": "TCP"}],
            "endpoints": [{
                "addresses": ["127.0.0.1"],
                "nodeName": name,
                "conditions": {"ready": true},
            }],
        }))
        .unwrap();
        slices.create(&PostParams::default(), &slice).await.unwrap();
    }

    /// `count` nodes keeping the model, their agents serving each other, started together
    /// with `extra` arguments.
    async fn nodes(&self, count: usize, extra: &[&str]) -> Vec<Node> {
        let mut ports = Vec::new();
        for i in 0..count {
            let name = format!("gpu-{i}");
            let port = fixed_port();
            self.register(&name, port).await;
            ports.push((name, port));
        }
        // From here on, every request is an agent's.
        self.api.reset_log();
        let mut out = Vec::new();
        for (name, port) in ports {
            let root = self.dir.path().join(&name);
            std::fs::create_dir_all(&root).unwrap();
            let mut args = vec![
                "--peer-bind-address".to_owned(),
                format!("127.0.0.1:{port}"),
                "--peer-service".to_owned(),
                SERVICE.to_owned(),
                "--peer-stripe-size".to_owned(),
                "1M".to_owned(),
                "--peer-lease-duration".to_owned(),
                "3s".to_owned(),
            ];
            args.extend(extra.iter().map(|a| (*a).to_owned()));
            let mut node = Node {
                name,
                root,
                args,
                agent: None,
            };
            node.start(&self.api.kubeconfig(self.dir.path()));
            out.push(node);
        }
        out
    }

    async fn wait_all(&self, nodes: &[Node], timeout: Duration) {
        // On disk first, without asking the API server, so that what it logged until then
        // is the agents' requests alone.
        let key = storage_key(&self.uri);
        let started = std::time::Instant::now();
        for n in nodes.iter().filter(|n| n.agent.is_some()) {
            let folder = n.root.join("models").join(&key);
            while !folder.join(modelpull::MARKER).exists() {
                assert!(
                    started.elapsed() < timeout,
                    "{} has no model after {timeout:?}\n{}",
                    n.name,
                    Group::logs(nodes)
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let got = std::fs::read(folder.join("model.bin")).unwrap();
            assert!(got == self.content, "{}: the model differs", n.name);
        }
    }

    /// Waits until every running node's status says it has the model.
    async fn wait_statuses(&self, nodes: &[Node]) {
        let api: Api<LocalModelNode> = Api::all(self.client.clone());
        for n in nodes {
            let Some(agent) = &n.agent else { continue };
            wait_for(
                &api,
                &n.name,
                agent,
                "the model downloaded",
                Duration::from_secs(30),
                |s| s.get("llama") == Some(&ModelStatus::Downloaded),
            )
            .await;
        }
    }

    /// Everything the running agents of `nodes` logged, one after the other.
    fn all_logs(nodes: &[Node]) -> String {
        nodes
            .iter()
            .filter_map(|n| Some(n.agent.as_ref()?.log()))
            .collect()
    }

    /// The end of what each agent logged, for a failure's message.
    fn logs(nodes: &[Node]) -> String {
        let tail = |log: String| {
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(60)..].join("\n")
        };
        nodes
            .iter()
            .filter_map(|n| {
                Some(format!(
                    "--- {}\n{}\n",
                    n.name,
                    tail(n.agent.as_ref()?.log())
                ))
            })
            .collect()
    }

    /// Serves every response at `rate` bytes per second per connection; such responses count
    /// the bytes they really send.
    fn slow(&self, rate: u64) {
        self.origin.set_faults(Faults {
            slow_rate: Some(rate),
            slow_times: u32::MAX,
            ..Faults::default()
        });
    }

    /// Asserts the origin sent at most `factor` times the model; returns how many times it did.
    fn origin_at_most(&self, factor: f64, nodes: &[Node]) -> f64 {
        let sent = self.origin.stats().body_bytes.load(Relaxed);
        let size = self.content.len() as u64;
        assert!(
            sent as f64 <= factor * size as f64,
            "the origin sent {sent} bytes for a model of {size}\n{}",
            Group::logs(nodes)
        );
        sent as f64 / size as f64
    }

    /// Takes the model out of the spec of `nodes` and waits until each has removed its folder
    /// (their agents run with a short `--gc-grace`).
    async fn remove_model(&self, nodes: &[Node]) {
        let api: Api<LocalModelNode> = Api::all(self.client.clone());
        let patch = serde_json::json!({"spec": {"localModels": []}});
        for n in nodes {
            api.patch(&n.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
        }
        let key = storage_key(&self.uri);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        for n in nodes {
            while n.root.join("models").join(&key).exists() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{} kept the model's folder\n{}",
                    n.name,
                    Group::logs(nodes)
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// The stripes' leases (not the plan's).
    async fn leases(&self) -> Vec<Lease> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), "kserve");
        let plan = localmodelnode_agent::group::plan_name(&storage_key(&self.uri));
        let mut leases = api.list(&ListParams::default()).await.unwrap().items;
        leases.retain(|l| l.metadata.name.as_deref() != Some(plan.as_str()));
        leases
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_take_one_model_from_the_origin_about_once() {
    let Some(g) = Group::start(24 * MIB).await else {
        return;
    };
    // Slow enough that the three pulls overlap.
    g.slow(8 * MIB as u64);
    let started = std::time::Instant::now();
    let nodes = g.nodes(3, &["--gc-grace", "1s"]).await;
    g.wait_all(&nodes, Duration::from_secs(180)).await;
    let every_node = started.elapsed();
    // What the agents asked of the API server is allowed by the base and the peers component.
    crate::util::rbac::assert_allowed_with(&g.api.requests(), &["components/peers/rbac.yaml"]);
    g.wait_statuses(&nodes).await;
    let ratio = g.origin_at_most(1.1, &nodes);
    eprintln!(
        "3 nodes: the origin sent {ratio:.2} times the model; every node had it after {:.1} s",
        every_node.as_secs_f64()
    );
    // One lease per stripe, three different holders, each marked complete.
    let leases = g.leases().await;
    let holders: BTreeMap<String, String> = leases
        .iter()
        .map(|l| {
            (
                l.metadata.name.clone().unwrap(),
                l.spec.clone().unwrap().holder_identity.unwrap(),
            )
        })
        .collect();
    let key = storage_key(&g.uri);
    assert_eq!(
        holders.keys().cloned().collect::<Vec<_>>(),
        (0..3)
            .map(|i| localmodelnode_agent::group::lease_name(&key, 3, i))
            .collect::<Vec<_>>()
    );
    let distinct: std::collections::BTreeSet<&String> = holders.values().collect();
    assert_eq!(distinct.len(), 3, "{holders:?}");
    assert!(leases.iter().all(|l| {
        l.metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(localmodelnode_agent::group::lease::COMPLETE))
    }));

    for n in &nodes {
        let served = n
            .agent
            .as_ref()
            .unwrap()
            .metric("modelpull_peer_sent_bytes_total");
        assert!(served.is_some_and(|b| b > 0.0), "{} served no peer", n.name);
    }

    // The model leaves two nodes: they remove their folders, and its leases stay for the
    // node that keeps it. When it leaves the last, that node deletes them.
    let plan = localmodelnode_agent::group::plan_name(&key);
    let all_leases = || async {
        let api: Api<Lease> = Api::namespaced(g.client.clone(), "kserve");
        let mut names: Vec<String> = api
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|l| l.metadata.name)
            .collect();
        names.sort();
        names
    };
    let before = all_leases().await;
    assert_eq!(before.len(), 4, "three stripes and the plan: {before:?}");
    assert!(before.contains(&plan));
    g.api.reset_log();
    g.remove_model(&nodes[..2]).await;
    // Each asks whether a node keeps the model just after its folder goes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(all_leases().await, before, "a node still keeps the model");
    g.remove_model(&nodes[2..]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !all_leases().await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the last node did not delete the model's leases\n{}",
            Group::logs(&nodes)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // So is what they asked to clean up (the test's own patches of the specs and its lists of
    // every lease aside).
    let agents: Vec<serde_json::Value> = g
        .api
        .requests()
        .into_iter()
        .filter(|r| {
            let path = r["path"].as_str().unwrap_or_default();
            let spec_patch = r["method"] == "PATCH"
                && path.contains("/localmodelnodes/")
                && !path.ends_with("/status");
            let every_lease =
                path.ends_with("/leases") && r["params"].get("labelSelector").is_none();
            !spec_patch && !every_lease
        })
        .collect();
    assert!(
        agents.iter().any(|r| r["method"] == "DELETE"),
        "the leases were deleted by an agent: {agents:?}"
    );
    crate::util::rbac::assert_allowed_with(&agents, &["components/peers/rbac.yaml"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_killed_part_way_loses_its_stripe_and_the_others_finish() {
    let Some(g) = Group::start(24 * MIB).await else {
        return;
    };
    // Two connections of 1 MiB/s to the origin per node: four seconds for a stripe. (A slow
    // origin counts the bytes it really sends; a response cut short counts what left.)
    g.slow(MIB as u64);
    let mut nodes = g.nodes(3, &["--connections", "2"]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // SIGKILL: no chance to give anything up; its lease simply stops being renewed.
    let killed = nodes[0].agent.take().unwrap();
    killed.kill();
    g.wait_all(&nodes, Duration::from_secs(240)).await;
    g.wait_statuses(&nodes).await;
    let ratio = g.origin_at_most(1.3, &nodes);
    eprintln!("the origin sent {ratio:.2} times the model");
    let key = storage_key(&g.uri);
    let dead = localmodelnode_agent::group::lease_name(&key, 3, 0);
    let lease = g
        .leases()
        .await
        .into_iter()
        .find(|l| l.metadata.name.as_deref() == Some(dead.as_str()))
        .unwrap();
    let holder = lease.spec.unwrap().holder_identity.unwrap();
    assert_ne!(
        holder, nodes[0].name,
        "the killed node's stripe was not taken over"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cut_off_mid_transfer_loses_its_ranges_and_the_others_finish() {
    let Some(g) = Group::start(24 * MIB).await else {
        return;
    };
    g.slow(MIB as u64);
    let mut nodes = g.nodes(3, &["--connections", "2"]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // SIGSTOP: its connections stay open and carry nothing, and new ones are accepted by its
    // kernel and never answered, as when a node's network drops out under it; its lease stops
    // being renewed.
    let mut cut = nodes.remove(0);
    let port = cut.args[1].rsplit(':').next().unwrap().to_owned();
    let pid = cut.agent.as_ref().unwrap().pid();
    let stopped = std::time::Instant::now();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::STOP,
    )
    .unwrap();
    // The engine's stall timeout (30 s) moves what waits on it; the rest is the cut node's
    // stripe, taken over and fetched from the origin.
    g.wait_all(&nodes, Duration::from_secs(240)).await;
    let took = stopped.elapsed();
    g.wait_statuses(&nodes).await;
    cut.agent.take().unwrap().kill();
    let logs = Group::all_logs(&nodes);
    // Whoever asked it after the cut waited one stall timeout, then never asked it again.
    let dropped = logs.lines().any(|l| {
        l.contains("not using this mirror")
            && l.contains(&format!("127.0.0.1:{port}"))
            && l.contains("answered nothing")
    });
    assert!(
        dropped,
        "no node dropped the cut peer for answering nothing\n{}",
        Group::logs(&nodes)
    );
    assert!(
        took < Duration::from_secs(30 + 15),
        "the others took {took:?} after the cut\n{}",
        Group::logs(&nodes)
    );
    // The origin counts what it sent the cut node too: its sockets' buffers (megabytes on
    // loopback) fill though nothing reads them.
    let ratio = g.origin_at_most(2.0, &nodes);
    eprintln!(
        "every other node had the model {:.1} s after the cut; the origin sent {ratio:.2} times it",
        took.as_secs_f64()
    );
}

/// Registers a third node whose "agent" is a test server holding the model that flips a byte
/// of a block of its own stripe (with `omit_crcs`, sending no CRCs; else announcing the CRCs of
/// the true bytes), and never takes its stripe's lease: the others ask it for that block, and
/// it first, until they take the stripe over.
async fn lying_peer(g: &Group, omit_crcs: bool) -> Origin {
    let key = storage_key(&g.uri);
    let block = 8 * MIB as u64;
    let stripes = modelpull::mirror::Stripes::new(3, block);
    let liars = (0..3u64)
        .find(|b| stripes.stripe_of("model.bin", b * block) == 2)
        .expect("a block in each stripe");
    let liar_root = g.dir.path().join("liar");
    std::fs::create_dir_all(liar_root.join("models").join(&key)).unwrap();
    std::fs::write(
        liar_root.join("models").join(&key).join("model.bin"),
        &g.content,
    )
    .unwrap();
    let liar = Origin::serve(&liar_root).unwrap();
    liar.set_faults(Faults {
        corrupt_offset: Some(liars * block + 3 * MIB as u64 + 3),
        corrupt_times: u32::MAX,
        omit_crcs,
        ..Faults::default()
    });
    g.register("gpu-liar", liar.addr().port()).await;
    liar
}

/// The sum over `nodes` of the agent metric `name`.
fn sum_metric(nodes: &[Node], name: &str) -> f64 {
    nodes
        .iter()
        .filter_map(|n| n.agent.as_ref()?.metric(name))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_sends_flipped_bytes_is_dropped_and_nothing_wrong_is_published() {
    let Some(g) = Group::start(24 * MIB).await else {
        return;
    };
    g.slow(8 * MIB as u64);
    let liar = lying_peer(&g, false).await;
    let nodes = g.nodes(2, &[]).await;
    g.wait_all(&nodes, Duration::from_secs(180)).await;
    g.wait_statuses(&nodes).await;
    // Whoever asked it for the flipped chunk caught it by its CRC and stopped asking it.
    let dropped = sum_metric(&nodes, "modelpull_mirrors_dropped_total");
    assert!(
        liar.stats().requests.load(Relaxed) > 0 && dropped >= 1.0,
        "the lying peer was not caught\n{}",
        Group::logs(&nodes)
    );
    let ratio = g.origin_at_most(1.3, &nodes);
    eprintln!("the origin sent {ratio:.2} times the model");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_whose_flipped_bytes_only_the_digest_catches_is_caught_by_comparison() {
    let Some(g) = Group::start(24 * MIB).await else {
        return;
    };
    g.slow(8 * MIB as u64);
    // No CRCs: the chunk passes as it arrives, and the file's digest fails at its end.
    let liar = lying_peer(&g, true).await;
    let nodes = g.nodes(2, &[]).await;
    g.wait_all(&nodes, Duration::from_secs(240)).await;
    g.wait_statuses(&nodes).await;
    let logs = Group::all_logs(&nodes);
    let refetched = sum_metric(&nodes, "modelpull_verify_failures_total");
    // The file came again from the origin alone, and comparing its chunks with the failed
    // copy's named the liar: each drop names the mirror it drops.
    let liar_host = format!("127.0.0.1:{}", liar.addr().port());
    let caught = logs
        .lines()
        .filter(|l| l.contains("not using this mirror") && l.contains(&liar_host))
        .count();
    assert!(
        liar.stats().requests.load(Relaxed) > 0 && refetched >= 1.0 && caught >= 1,
        "the lying peer was not caught by the digest (verify failures: {refetched})\n{}",
        Group::logs(&nodes)
    );
    let acquitted = logs.matches("asking this mirror again").count();
    let ratio = g.origin_at_most(3.3, &nodes);
    eprintln!(
        "{refetched} copies failed their digest and came again from the origin; {acquitted} \
         honest peers were asked again; the origin sent {ratio:.2} times the model"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restarted_while_serving_resumes_and_every_node_finishes() {
    let Some(g) = Group::start(24 * MIB).await else {
        return;
    };
    g.slow(MIB as u64);
    let mut nodes = g.nodes(3, &["--connections", "2"]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // SIGTERM: the download pauses at a chunk boundary; the agent comes back on the same
    // root and port, resumes from its journal and serves its peers again.
    drop(nodes[1].agent.take());
    nodes[1].start(&g.api.kubeconfig(g.dir.path()));
    g.wait_all(&nodes, Duration::from_secs(240)).await;
    g.wait_statuses(&nodes).await;
    let ratio = g.origin_at_most(1.3, &nodes);
    eprintln!("the origin sent {ratio:.2} times the model");
    let resumed = nodes[1].agent.as_ref().unwrap().log();
    assert!(resumed.contains("resuming"), "{resumed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_joins_late_follows_the_plan_the_others_agreed_on() {
    let Some(g) = Group::start(24 * MIB).await else {
        return;
    };
    g.slow(MIB as u64);
    let mut nodes = g.nodes(2, &["--connections", "2"]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A third node's LocalModelNode appears while the first two pull: it sees a group of
    // three, but the model is already cut in two.
    let port = fixed_port();
    g.register("gpu-late", port).await;
    let root = g.dir.path().join("gpu-late");
    std::fs::create_dir_all(&root).unwrap();
    let mut late = Node {
        name: "gpu-late".into(),
        root,
        args: [
            "--peer-bind-address",
            &format!("127.0.0.1:{port}"),
            "--peer-service",
            SERVICE,
            "--peer-stripe-size",
            "1M",
            "--peer-lease-duration",
            "3s",
            "--connections",
            "2",
        ]
        .iter()
        .map(|a| (*a).to_owned())
        .collect(),
        agent: None,
    };
    late.start(&g.api.kubeconfig(g.dir.path()));
    nodes.push(late);
    g.wait_all(&nodes, Duration::from_secs(240)).await;
    g.wait_statuses(&nodes).await;
    let ratio = g.origin_at_most(1.1, &nodes);
    eprintln!("a late node: the origin sent {ratio:.2} times the model");
    let key = storage_key(&g.uri);
    let names: Vec<String> = g
        .leases()
        .await
        .iter()
        .filter_map(|l| l.metadata.name.clone())
        .collect();
    assert_eq!(
        names,
        (0..2)
            .map(|i| localmodelnode_agent::group::lease_name(&key, 2, i))
            .collect::<Vec<_>>(),
        "the late node must not make leases of another plan"
    );
}
