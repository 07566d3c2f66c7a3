//! Shared pieces of the agent's whole-controller tests: the test API server
//! (`support/apiserver.py`), a kubeconfig for it, the agent binary as a process, and waiting
//! for a LocalModelNode's status.

pub mod cgroup;
pub mod rbac;
pub mod schema;
pub use modelpull_testkit::servers;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::PostParams;
use localmodelnode_agent::crd::{LocalModelInfo, LocalModelNode, ModelStatus};

pub use servers::free_port;

/// A free port below Linux's ephemeral range (32768 and up), for a server whose port must be
/// known before it starts (written into an EndpointSlice): a port [`free_port`] gives back can
/// be taken meanwhile by any outgoing connection, and peers open many.
pub fn fixed_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = 20_000 + (std::process::id() % 1000) as u16 * 10;
    loop {
        let port = start + NEXT.fetch_add(1, Ordering::Relaxed) % 2_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The test virtualenv's python (aiohttp, kubernetes); `None` (skip) when it is missing,
/// a failure when `MODELPULL_REQUIRE_SERVERS=1`.
pub fn python() -> Option<PathBuf> {
    servers::venv().map(|v| v.python())
}

fn stop(child: &mut Child) {
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_child(child),
        rustix::process::Signal::TERM,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The test API server; stopped when dropped.
pub struct ApiServer {
    python: PathBuf,
    pub port: u16,
    state: tempfile::TempDir,
    child: Option<Child>,
    /// Resources answered 403, as RBAC answers a ServiceAccount without a rule for them.
    forbidden: Vec<String>,
}

impl ApiServer {
    pub fn start(python: &Path) -> Self {
        Self::forbidding(python, &[])
    }

    /// A server that answers 403 to every request for `resources` (`plural.group`, e.g.
    /// `events.events.k8s.io`), as KServe's ClusterRole has the agent answered for Events.
    pub fn forbidding(python: &Path, resources: &[&str]) -> Self {
        let mut s = Self::stopped(python);
        s.forbidden = resources.iter().map(|r| (*r).to_owned()).collect();
        s.resume();
        s
    }

    /// A server with a port reserved but not started yet ([`ApiServer::resume`] starts it).
    pub fn stopped(python: &Path) -> Self {
        Self {
            python: python.to_owned(),
            port: free_port(),
            state: tempfile::tempdir().unwrap(),
            child: None,
            forbidden: Vec::new(),
        }
    }

    /// Starts the server (again) on the same port with the same objects.
    pub fn resume(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/apiserver.py");
        let mut child = Command::new(&self.python)
            .arg(script)
            .args(["--port", &self.port.to_string(), "--bookmark-interval", "1"])
            .arg("--state-dir")
            .arg(self.state.path())
            .args(self.forbidden.iter().flat_map(|r| ["--forbid", r.as_str()]))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the API server did not start");
        self.child = Some(child);
    }

    /// Stops the server (objects are kept for [`ApiServer::resume`]).
    pub fn pause(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop(&mut c);
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A kubeconfig for the server, written under `dir`.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\ncurrent-context: test\nusers:\n- name: test\n  user: {{}}\n",
                self.url()
            ),
        )
        .unwrap();
        path
    }

    pub async fn client(&self, dir: &Path) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(self.kubeconfig(dir)).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    /// Calls one of the server's test-only endpoints (not in its request log); returns the
    /// JSON body.
    fn inspect(&self, method: &str, path: &str) -> serde_json::Value {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            conn,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        conn.read_to_string(&mut text).unwrap();
        assert!(text.starts_with("HTTP/1.1 200"), "{method} {path}: {text}");
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        serde_json::from_str(body).unwrap_or_default()
    }

    /// Every request the server saw.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        self.inspect("GET", "/_requests")
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.pause();
    }
}

/// KServe's `inferenceservice-config` in `kserve`, every model checked again each second.
pub async fn create_kserve_config(client: &kube::Client) {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "kserve");
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "inferenceservice-config", "namespace": "kserve"},
        "data": {"localModel": r#"{"jobNamespace": "kserve-localmodel-jobs", "reconcilationFrequencyInSecs": 1}"#}
    }))
    .unwrap();
    maps.create(&PostParams::default(), &cm).await.unwrap();
}

/// A LocalModelNode entry: model `name` from `uri`, no credentials.
pub fn entry(name: &str, uri: &str) -> LocalModelInfo {
    LocalModelInfo {
        source_model_uri: uri.into(),
        model_name: name.into(),
        ..Default::default()
    }
}

/// The user the agent's image runs as (distroless `nonroot`), as KServe's DaemonSet runs it.
pub const AGENT_UID: u32 = 65532;

/// Waits until `check` holds, or fails naming `what`, with the agent's log.
pub async fn until(agent: &Agent, what: &str, timeout: Duration, check: impl AsyncFnMut() -> bool) {
    let mut check = check;
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; agent log:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The agent binary under test.
pub fn agent_binary() -> &'static str {
    env!("CARGO_BIN_EXE_localmodelnode-agent")
}

/// The agent binary, stopped (SIGTERM) when dropped.
pub struct Agent {
    child: Child,
    pub log: PathBuf,
    metrics: u16,
    health: u16,
}

impl Agent {
    pub fn start(kubeconfig: &Path, root: &Path, node: &str, extra: &[&str]) -> Self {
        Self::start_with_env(kubeconfig, root, node, extra, &[])
    }

    pub fn start_with_env(
        kubeconfig: &Path,
        root: &Path,
        node: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Self::spawn(
            Command::new(agent_binary()),
            kubeconfig,
            root,
            node,
            extra,
            env,
        )
    }

    /// The agent running as `uid` (gid the same), as KServe's DaemonSet runs it (65532); the
    /// test must run as root, and the binary, `kubeconfig` and `root` be reachable by `uid`.
    pub fn start_as(uid: u32, kubeconfig: &Path, root: &Path, node: &str) -> Self {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(agent_binary());
        command.uid(uid).gid(uid);
        Self::spawn(command, kubeconfig, root, node, &[], &[])
    }

    /// The agent as KServe's DaemonSet runs its image: `command` (the binary, or a wrapper
    /// that first puts it in the pod's cgroup as uid 65532) with no arguments and the default
    /// logs (zap's JSON, level info), in an environment of its own: the DaemonSet's
    /// `NODE_NAME` and `POD_NAMESPACE`, the image's `PATH`, and what stands in here for the
    /// cluster and the node: `KUBECONFIG` for the in-cluster ServiceAccount, `MODELS_ROOT` for
    /// the hostPath at `/mnt/models`, bind addresses on free ports for `:8080` and `:8081`;
    /// then `env`.
    pub fn as_kserve_runs_it(
        mut command: Command,
        kubeconfig: &Path,
        root: &Path,
        node: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let log = root.join("agent.log");
        let file = std::fs::File::create(&log).unwrap();
        let (metrics, health) = (free_port(), free_port());
        let child = command
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("NODE_NAME", node)
            .env("POD_NAMESPACE", "kserve")
            .env("KUBECONFIG", kubeconfig)
            .env("MODELS_ROOT", root)
            .env("METRICS_BIND_ADDRESS", format!("127.0.0.1:{metrics}"))
            .env("HEALTH_PROBE_BIND_ADDRESS", format!("127.0.0.1:{health}"))
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Self {
            child,
            log,
            metrics,
            health,
        }
    }

    /// The agent started by `command`, which runs the agent binary ([`agent_binary`]) with
    /// the arguments this adds (e.g. a shell that first moves itself into a cgroup).
    pub fn spawn(
        mut command: Command,
        kubeconfig: &Path,
        root: &Path,
        node: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let log = root.join("agent.log");
        let file = std::fs::File::create(&log).unwrap();
        let (metrics, health) = (free_port(), free_port());
        let child = command
            .env("NODE_NAME", node)
            .env("POD_NAMESPACE", "kserve")
            .env("RUST_LOG", "localmodelnode_agent=debug,modelpull=info")
            .envs(env.iter().copied())
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--models-root")
            .arg(root)
            .args([
                "--zap-encoder",
                "console",
                "--metrics-bind-address",
                &format!("127.0.0.1:{metrics}"),
                "--health-probe-bind-address",
                &format!("127.0.0.1:{health}"),
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Self {
            child,
            log,
            metrics,
            health,
        }
    }

    /// Kills the agent at once (SIGKILL): nothing it holds is given up.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The status code `/readyz` answers now; `None` while nothing listens.
    pub fn readyz(&self) -> Option<u16> {
        get(self.health, "/readyz")?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The value of the metric `name` (without labels) on `/metrics`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        get(self.metrics, "/metrics")?
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    /// What `/metrics` serves now.
    pub fn metrics(&self) -> String {
        get(self.metrics, "/metrics").expect("the agent serves /metrics")
    }
}

/// The whole HTTP answer to `GET path` on 127.0.0.1:`port`; `None` while nothing listens.
fn get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text)
}

impl Drop for Agent {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// The node's status map now.
pub async fn statuses(
    api: &Api<LocalModelNode>,
    node: &str,
) -> std::collections::BTreeMap<String, ModelStatus> {
    api.get(node)
        .await
        .ok()
        .and_then(|n| n.status)
        .and_then(|s| s.model_status)
        .unwrap_or_default()
}

type Statuses = std::collections::BTreeMap<String, ModelStatus>;

/// Reads the status map with `read` every 100 ms until `check` holds, or fails after
/// `timeout` with the last map and the agent's log.
async fn poll<F: std::future::Future<Output = Statuses>>(
    read: impl Fn() -> F,
    agent: &Agent,
    what: &str,
    timeout: Duration,
    check: impl Fn(&Statuses) -> bool,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let s = read().await;
        if check(&s) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; status {s:?}; agent log:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `check` holds for the node's status map, or fails with the agent's log.
pub async fn wait_for(
    api: &Api<LocalModelNode>,
    node: &str,
    agent: &Agent,
    what: &str,
    timeout: Duration,
    check: impl Fn(&Statuses) -> bool,
) {
    poll(|| statuses(api, node), agent, what, timeout, check).await;
}

impl ApiServer {
    /// The objects the server holds of `plural` (as stored, after every patch).
    pub fn objects(&self, plural: &str) -> Vec<serde_json::Value> {
        let all = self.inspect("GET", "/_objects");
        all.as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|o| o["resource"].as_str().is_some_and(|r| r.ends_with(plural)))
            .map(|o| o["object"].clone())
            .collect()
    }
}

impl ApiServer {
    /// Forgets the requests seen so far (the test's own setup), keeping the objects.
    pub fn reset_log(&self) {
        self.inspect("POST", "/_reset");
    }

    /// The status map of LocalModelNode `node`, read without an API request (so the request
    /// log holds only the agent's).
    pub fn status_of(&self, node: &str) -> Statuses {
        self.objects("localmodelnodes")
            .into_iter()
            .find(|o| o["metadata"]["name"] == node)
            .and_then(|o| serde_json::from_value(o["status"]["modelStatus"].clone()).ok())
            .unwrap_or_default()
    }

    /// [`wait_for`] without API requests.
    pub async fn wait_quietly(
        &self,
        node: &str,
        agent: &Agent,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Statuses) -> bool,
    ) {
        poll(
            || std::future::ready(self.status_of(node)),
            agent,
            what,
            timeout,
            check,
        )
        .await;
    }
}
