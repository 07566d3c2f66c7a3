//! The agent's overhead: the same model (the `store` data set on the in-tree Hub fixture)
//! pulled by `modelpull pull hf://…` alone, and by `localmodelnode-agent` from the moment its
//! LocalModelNode is created on the test API server until the status says
//! `ModelDownloaded`. Both verify and flush everything; the difference is what the agent adds
//! (watch, reconcile, credentials lookup, status patches).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::data::DataSet;
use crate::report::median;
use crate::stores::{Proc, REPO, free_port};

const NODE: &str = "bench-node";

/// Paths the run needs.
pub struct Tools<'a> {
    pub modelpull: &'a Path,
    pub agent: &'a Path,
    pub python: &'a Path,
    pub peers: &'a Path,
    pub work: &'a Path,
}

/// Runs both `runs` times and returns the Markdown section.
pub fn run(t: &Tools<'_>, set: &DataSet, root: &Path, runs: usize) -> Result<String> {
    let hub = crate::stores::hub(root, set)?;
    let uri = format!("hf://{REPO}");

    let api_port = free_port()?;
    let apiserver = t.peers.join("../../agent/tests/support/apiserver.py");
    let mut child = Command::new(t.python)
        .arg(&apiserver)
        .args(["--port", &api_port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the test API server (run scripts/setup-bench.sh)")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("its stdout")?).read_line(&mut line)?;
    if line.trim() != "ready" {
        bail!("the test API server did not start");
    }
    let _api = Proc(child);
    let api_url = format!("http://127.0.0.1:{api_port}");
    let kubeconfig = t.work.join("bench-kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: b\n  cluster:\n    server: {api_url}\ncontexts:\n- name: b\n  context:\n    cluster: b\n    user: b\ncurrent-context: b\nusers:\n- name: b\n  user: {{}}\n"
        ),
    )?;
    let agent_root = t.work.join("agent-root");
    let _ = std::fs::remove_dir_all(&agent_root);
    std::fs::create_dir_all(&agent_root)?;
    let probes = free_port()?;
    let _agent = Proc(
        Command::new(t.agent)
            .env("NODE_NAME", NODE)
            .env("POD_NAMESPACE", "kserve")
            .env("HF_ENDPOINT", hub.endpoint())
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--models-root")
            .arg(&agent_root)
            .args(["--max-concurrent-downloads", "1"])
            .arg(format!("--metrics-bind-address=127.0.0.1:{}", free_port()?))
            .arg(format!("--health-probe-bind-address=127.0.0.1:{probes}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(t.work.join("agent.log"))?)
            .spawn()
            .with_context(|| format!("starting {}", t.agent.display()))?,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready(probes) {
        if Instant::now() > deadline {
            bail!(
                "the agent did not become ready; see {}",
                t.work.join("agent.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    let key = localmodelnode_agent::keys::storage_key(&uri);
    let mut engine = Vec::new();
    let mut agent = Vec::new();
    for run in 0..runs {
        let dest = t.work.join("engine-alone");
        let _ = std::fs::remove_dir_all(&dest);
        let started = Instant::now();
        let ok = Command::new(t.modelpull)
            .args(["pull", "--no-progress", &uri])
            .arg(&dest)
            .env("HF_ENDPOINT", hub.endpoint())
            .stdout(Stdio::null())
            .status()?
            .success();
        let seconds = started.elapsed().as_secs_f64();
        if !ok || !crate::verify_tree(&dest, set) {
            bail!("modelpull alone did not produce the model");
        }
        let _ = std::fs::remove_dir_all(&dest);
        engine.push(seconds);

        let folder = agent_root.join("models").join(&key);
        let _ = std::fs::remove_dir_all(&folder);
        let out = Command::new(t.python)
            .arg(t.peers.join("agent_bench.py"))
            .args([api_url.as_str(), NODE, uri.as_str()])
            .output()?;
        if !out.status.success() {
            bail!(
                "timing the agent failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let seconds: f64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
        if !crate::verify_tree(&folder, set) {
            bail!("the agent's model folder is not the data set");
        }
        agent.push(seconds);
        eprintln!(
            "agent / run {}: modelpull alone {:.2} s, agent {:.2} s",
            run + 1,
            engine[run],
            seconds
        );
    }
    let gb = set.bytes() as f64 / 1e9;
    let (e, a) = (median(engine.clone()), median(agent.clone()));
    let range = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        format!("{lo:.2}–{hi:.2}")
    };
    Ok(format!(
        "#### The agent end to end — hf:// from the in-tree Hub fixture, {}\n\n\
         | | seconds | min–max | GB/s |\n|---|---|---|---|\n\
         | `modelpull pull hf://…` alone | {e:.2} | {} | {:.3} |\n\
         | `localmodelnode-agent`, LocalModelNode created → `ModelDownloaded` | {a:.2} | {} | {:.3} |\n\n\
         Agent overhead: {:+.1}% (target under 5%).\n",
        set.title,
        range(&engine),
        gb / e,
        range(&agent),
        gb / a,
        (a / e - 1.0) * 100.0
    ))
}

fn ready(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = write!(
        s,
        "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.starts_with("HTTP/1.1 200")
}
