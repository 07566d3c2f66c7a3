//! A models root the agent cannot write, as KServe's DaemonSet makes it (a hostPath created
//! owned by root, the agent running as uid 65532): the agent keeps running not ready, says what
//! to fix once in its log and in an Event on its Node, still reports the models already there,
//! and once the folder is fixed becomes ready and downloads the rest, without a restart. The
//! test runs the agent binary as uid 65532, so it needs root; without it, it is skipped, or
//! fails where servers are required (`MODELPULL_REQUIRE_SERVERS=1`).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use localmodelnode_agent::crd::{LocalModelNode, LocalModelNodeSpec, ModelStatus};
use localmodelnode_agent::keys::storage_key;
use modelpull_testkit::origin::Origin;

use crate::util::*;

const NODE: &str = "gpu-node-1";

/// The Events the agent posted about its Node, as `(reason, note)`.
fn node_events(api: &ApiServer) -> Vec<(String, String)> {
    api.requests()
        .iter()
        .filter(|r| r["method"] == "POST" && r["body"]["regarding"]["kind"] == "Node")
        .map(|r| {
            assert_eq!(r["body"]["regarding"]["name"], NODE, "{r}");
            let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
            (s(&r["body"]["reason"]), s(&r["body"]["note"]))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unwritable_root_waits_and_recovers_without_a_restart() {
    if !rustix::process::geteuid().is_root() {
        let _ = modelpull_testkit::servers::unavailable(&format!(
            "running the agent as uid {AGENT_UID} needs root"
        ));
        return;
    }
    let Some(python) = python() else {
        return;
    };
    // Everything the agent reads sits under a folder uid 65532 may enter.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let served = dir.path().join("origin");
    let (a, b) = (vec![7u8; 300_000], vec![9u8; 200_000]);
    for (name, content) in [("a/w.bin", &a), ("b/w.bin", &b)] {
        std::fs::create_dir_all(served.join(name).parent().unwrap()).unwrap();
        std::fs::write(served.join(name), content).unwrap();
    }
    let origin = Origin::serve(&served).unwrap();
    let (ua, ub) = (origin.url("a/w.bin"), origin.url("b/w.bin"));
    let api = ApiServer::start(&python);
    let client = api.client(dir.path()).await;
    let kubeconfig = api.kubeconfig(dir.path());
    create_kserve_config(&client).await;
    let nodes: Api<LocalModelNode> = Api::all(client.clone());
    let mut lmn = LocalModelNode {
        spec: LocalModelNodeSpec {
            local_models: vec![entry("a", &ua)],
        },
        ..Default::default()
    };
    lmn.metadata.name = Some(NODE.into());
    nodes.create(&PostParams::default(), &lmn).await.unwrap();

    // A model downloaded before, by an agent running as root: models/ is root's, 0755.
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let agent = Agent::start(&kubeconfig, &root, NODE, &[]);
    let downloaded = |m: &'static str| {
        move |s: &BTreeMap<String, ModelStatus>| s.get(m) == Some(&ModelStatus::Downloaded)
    };
    wait_for(
        &nodes,
        NODE,
        &agent,
        "a downloaded",
        Duration::from_secs(30),
        downloaded("a"),
    )
    .await;
    drop(agent);
    let models = root.join("models");
    assert_eq!(
        std::fs::metadata(&models).unwrap().permissions().mode() & 0o777,
        0o755
    );

    // As uid 65532 with a second model to download: not ready, a is still reported, b is an
    // error, and the agent keeps running.
    let patch = serde_json::json!({"spec": {"localModels": [entry("a", &ua), entry("b", &ub)]}});
    nodes
        .patch(NODE, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    api.reset_log();
    let agent = Agent::start_as(AGENT_UID, &kubeconfig, &root, NODE);
    wait_for(
        &nodes,
        NODE,
        &agent,
        "a reported, b an error",
        Duration::from_secs(30),
        |s| s.get("a") == Some(&ModelStatus::Downloaded) && s.get("b") == Some(&ModelStatus::Error),
    )
    .await;
    assert_eq!(agent.readyz(), Some(503), "{}", agent.log());
    let log = agent.log();
    let fix = format!(
        "cannot create files in {} as uid {AGENT_UID}",
        models.display()
    );
    assert_eq!(
        log.matches(&fix).count(),
        1,
        "one line names the fix:\n{log}"
    );
    assert!(
        log.contains(&format!("chown -R {AGENT_UID}:{AGENT_UID}")),
        "{log}"
    );
    let events = node_events(&api);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "ModelsRootNotWritable");
    assert!(events[0].1.starts_with(&fix), "{events:?}");
    assert!(!root.join("models").join(storage_key(&ub)).exists());

    // Fixed as the log says: within the next check (5 s after the start), ready and b
    // downloaded.
    std::os::unix::fs::chown(&models, Some(AGENT_UID), Some(AGENT_UID)).unwrap();
    wait_for(
        &nodes,
        NODE,
        &agent,
        "b downloaded",
        Duration::from_secs(30),
        downloaded("b"),
    )
    .await;
    until(&agent, "ready", Duration::from_secs(10), async || {
        agent.readyz() == Some(200)
    })
    .await;
    assert_eq!(
        std::fs::read(models.join(storage_key(&ub)).join("w.bin")).unwrap(),
        b
    );
    assert_eq!(
        std::fs::read(models.join(storage_key(&ua)).join("w.bin")).unwrap(),
        a,
        "the model downloaded before is left as it was"
    );
    let reasons: Vec<String> = node_events(&api).into_iter().map(|(r, _)| r).collect();
    assert_eq!(reasons, ["ModelsRootNotWritable", "ModelsRootWritable"]);
}
