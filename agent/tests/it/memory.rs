//! The agent inside KServe's memory limit for it (300 MiB), applied for real with a cgroup the
//! test makes: without `--memory-limit` it sizes its buffers under the limit by itself, pulls
//! two models at once, together larger than the limit, verifying their sha256, and is not
//! killed; its peak resident set (`VmHWM`) and the cgroup's peak charge stay under the limit.
//! Needs root and a cgroup memory controller (v1 or v2); skipped without either, or a failure
//! where servers are required (`MODELPULL_REQUIRE_SERVERS=1`). With 512 MiB
//! models and a release build it measured VmHWM 202 MiB, a cgroup peak of 194 MiB and 1.2
//! CPU-seconds for the GiB.

use std::collections::BTreeMap;
use std::time::Duration;

use kube::Api;
use kube::api::PostParams;
use localmodelnode_agent::crd::{LocalModelNode, LocalModelNodeSpec, ModelStatus};
use localmodelnode_agent::keys::storage_key;
use modelpull_testkit::origin::Origin;

use crate::util::cgroup::{Cgroup, Limits};
use crate::util::*;

const NODE: &str = "gpu-node-1";
/// KServe's DaemonSet: `limits.memory: 300Mi`.
const LIMIT: u64 = 300 << 20;
/// Each model is larger than the buffers, so both keep them full until the end.
const MODEL: usize = 160 << 20;

/// A `/proc/PID/status` field, in bytes.
fn status_bytes(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    localmodelnode_agent::fit::status_kib(&status, key).map_or(0, |kib| kib * 1024)
}

/// CPU seconds the process used so far (`utime` + `stime`, in clock ticks of 1/100 s).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Fields 14 and 15 of stat(5), counted here from field 3.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

#[tokio::test(flavor = "multi_thread")]
async fn two_downloads_fit_under_kserves_300_mib() {
    if !rustix::process::geteuid().is_root() {
        let _ = modelpull_testkit::servers::unavailable("making a cgroup needs root");
        return;
    }
    let limits = Limits {
        memory: LIMIT,
        cpu_millis: None,
    };
    let cgroup = match Cgroup::create("memory", limits) {
        Ok(c) => c,
        Err(e) => {
            let _ = modelpull_testkit::servers::unavailable(&format!(
                "no memory cgroup for the test: {e}"
            ));
            return;
        }
    };
    let Some(python) = python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("origin");
    std::fs::create_dir(&served).unwrap();
    let (a, b) = (
        modelpull_testkit::data(1, MODEL),
        modelpull_testkit::data(2, MODEL),
    );
    std::fs::write(served.join("a.bin"), &a).unwrap();
    std::fs::write(served.join("b.bin"), &b).unwrap();
    let origin = Origin::serve(&served).unwrap();
    // With their digests: every byte is verified, as a Hub or S3 model's is.
    let ua = modelpull_testkit::with_sha256(&origin.url("a.bin"), &a);
    let ub = modelpull_testkit::with_sha256(&origin.url("b.bin"), &b);
    let api = ApiServer::start(&python);
    let client = api.client(dir.path()).await;
    create_kserve_config(&client).await;
    let nodes: Api<LocalModelNode> = Api::all(client.clone());
    let mut lmn = LocalModelNode {
        spec: LocalModelNodeSpec {
            local_models: vec![entry("a", &ua), entry("b", &ub)],
        },
        ..Default::default()
    };
    lmn.metadata.name = Some(NODE.into());
    nodes.create(&PostParams::default(), &lmn).await.unwrap();

    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let kubeconfig = api.kubeconfig(dir.path());
    let agent = Agent::spawn(cgroup.wrap(None), &kubeconfig, &root, NODE, &[], &[]);
    let pid = agent.pid();
    wait_for(
        &nodes,
        NODE,
        &agent,
        "both downloaded",
        Duration::from_secs(300),
        |s: &BTreeMap<String, ModelStatus>| {
            s.get("a") == Some(&ModelStatus::Downloaded)
                && s.get("b") == Some(&ModelStatus::Downloaded)
        },
    )
    .await;
    let (hwm, cpu) = (status_bytes(pid, "VmHWM:"), cpu_seconds(pid));
    let log = agent.log();
    assert!(
        log.contains("memory limit 300.0 MiB: 192.0 MiB of download buffers"),
        "{log}"
    );
    assert_eq!(agent.readyz(), Some(200), "still running: {log}");
    assert_eq!(cgroup.oom_kills(), 0, "{log}");
    let peak = cgroup.peak();
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    eprintln!(
        "agent under {} MiB: VmHWM {:.1} MiB, cgroup peak {}, {cpu:.1} CPU-s for {} MiB",
        mib(LIMIT),
        mib(hwm),
        peak.map_or("unknown".into(), |p| format!("{:.1} MiB", mib(p))),
        mib(2 * MODEL as u64)
    );
    assert!(hwm > 0 && hwm < LIMIT, "VmHWM {hwm}");
    if let Some(peak) = peak {
        assert!(peak <= LIMIT, "cgroup peak {peak}");
    }
    let metrics = agent.metrics();
    assert!(
        metrics.contains("modelpull_cgroup_cpu_throttled_seconds_total"),
        "{metrics}"
    );
    drop(agent);
    for (name, uri, content) in [("a.bin", &ua, &a), ("b.bin", &ub, &b)] {
        let file = root.join("models").join(storage_key(uri)).join(name);
        let got = std::fs::read(&file).unwrap();
        assert!(got == *content, "{}", file.display());
    }
}
