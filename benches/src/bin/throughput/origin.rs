//! The origin: nginx serving the data sets from tmpfs on 127.0.0.1, optionally capped per
//! connection (`limit_rate`), optionally limited to a few concurrent connections
//! (`limit_conn`, 503 beyond them), optionally inside a network namespace whose loopback
//! delays every packet (`tc netem`) to model a distant store.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How the origin behaves in one scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Loopback without limits: CPU and disk bound.
    Loopback,
    /// nginx `limit_rate 85m` per connection, about what one S3 GET gets.
    Capped,
    /// Every packet delayed 10 ms each way on a namespaced loopback (20 ms RTT).
    Latency,
    /// Loopback without limits on the origin; the tools run inside a cgroup with the init
    /// container's limits (see `cgroup.rs`).
    Initializer,
    /// The same cgroup, with the origin capped as in `Capped`: a store that limits each
    /// connection, as S3, GCS and CDNs do.
    InitializerCapped,
    /// nginx `limit_rate 10m` per connection: thin connections, where only many of them add
    /// up to a fast pull.
    Thin,
    /// Thin connections and at most [`NARROW_CONNECTIONS`] at once (`limit_conn`), 503 for
    /// the others: a server that punishes a client opening more than it allows.
    Narrow,
}

/// The concurrent connections the narrow server allows.
pub const NARROW_CONNECTIONS: u32 = 8;
/// nginx's `limit_rate 10m`, in bytes per second (nginx's `m` is MiB).
pub const THIN_RATE: f64 = 10.0 * 1024.0 * 1024.0;

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Loopback => "loopback",
            Scenario::Capped => "capped",
            Scenario::Latency => "latency",
            Scenario::Initializer => "initializer",
            Scenario::InitializerCapped => "initializer-capped",
            Scenario::Thin => "thin",
            Scenario::Narrow => "narrow",
        }
    }

    /// nginx's `limit_rate` per connection, if it caps them.
    pub fn rate(self) -> Option<&'static str> {
        match self {
            Scenario::Capped | Scenario::InitializerCapped => Some("85m"),
            Scenario::Thin | Scenario::Narrow => Some("10m"),
            _ => None,
        }
    }

    /// How many requests nginx serves at once (503 for the others), if it limits them.
    pub fn max_connections(self) -> Option<u32> {
        (self == Scenario::Narrow).then_some(NARROW_CONNECTIONS)
    }

    /// Whether the tools run in the init container's cgroup.
    pub fn confined(self) -> bool {
        matches!(self, Scenario::Initializer | Scenario::InitializerCapped)
    }

    pub fn title(self) -> &'static str {
        match self {
            Scenario::Loopback => "unlimited loopback",
            Scenario::Capped => "85 MB/s per connection (nginx limit_rate 85m)",
            Scenario::Latency => "20 ms RTT (netem on a namespaced loopback)",
            Scenario::Initializer => {
                "start-up in KServe's init-container limits (1 CPU, 1 GiB), unlimited loopback"
            }
            Scenario::InitializerCapped => {
                "start-up in KServe's init-container limits (1 CPU, 1 GiB), 85 MB/s per connection"
            }
            Scenario::Thin => "thin connections, 10 MiB/s each (nginx limit_rate 10m)",
            Scenario::Narrow => {
                "narrow server: at most 8 connections, 10 MiB/s each, 503 beyond (nginx \
                 limit_conn 8, limit_rate 10m)"
            }
        }
    }
}

/// The network namespace of the latency scenario; removed when dropped.
pub struct Netns(pub String);

impl Netns {
    /// Creates a namespace with a delayed loopback, or says why it cannot.
    pub fn create() -> Result<Self> {
        let name = format!("modelpull-bench-{}", std::process::id());
        run(&["ip", "netns", "add", &name])
            .context("cannot create a network namespace (needs root and iproute2)")?;
        let ns = Netns(name);
        run(&[
            "ip", "netns", "exec", &ns.0, "ip", "link", "set", "lo", "up",
        ])?;
        run(&[
            "ip", "netns", "exec", &ns.0, "tc", "qdisc", "add", "dev", "lo", "root", "netem",
            "delay", "10ms",
        ])
        .context("cannot add a netem delay (the kernel lacks sch_netem, or tc is missing)")?;
        Ok(ns)
    }

    /// Prefix that runs a command inside the namespace.
    pub fn prefix(&self) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.0.clone()]
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(cmd: &[&str]) -> Result<()> {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output()?;
    if !out.status.success() {
        bail!(
            "{}: {}",
            cmd.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A running nginx; stopped when dropped.
pub struct Nginx {
    child: Child,
    /// Its access log (one status code per line), when the scenario counts rejections.
    access_log: Option<PathBuf>,
}

impl Nginx {
    /// Where the access log ends now: count from here with [`Nginx::count_status`].
    pub fn log_mark(&self) -> u64 {
        self.access_log
            .as_ref()
            .and_then(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| m.len())
    }

    /// Responses with `status` logged since `mark`, or `None` when nginx keeps no log here.
    /// nginx writes a request's line when it ends, so this is read after the tool exits.
    pub fn count_status(&self, mark: u64, status: &str) -> Result<Option<u64>> {
        let Some(path) = &self.access_log else {
            return Ok(None);
        };
        let mut text = String::new();
        let mut f = std::fs::File::open(path)
            .with_context(|| format!("reading nginx's access log {}", path.display()))?;
        f.seek(SeekFrom::Start(mark))?;
        f.read_to_string(&mut text)?;
        Ok(Some(
            text.lines().filter(|l| l.trim() == status).count() as u64
        ))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its workers; SIGKILL would orphan them.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

pub fn start(
    work: &Path,
    root: &Path,
    port: u16,
    scenario: Scenario,
    netns: Option<&Netns>,
) -> Result<Nginx> {
    let prefix: PathBuf = work.join(format!("nginx-{}", scenario.name()));
    std::fs::create_dir_all(prefix.join("logs"))?;
    let conf = prefix.join("nginx.conf");
    let rate = scenario
        .rate()
        .map(|r| format!("limit_rate {r};"))
        .unwrap_or_default();
    // The narrow server logs each response's status, so the harness can count its 503s;
    // limit_conn needs a non-empty key, hence the server_name.
    let access_log = scenario
        .max_connections()
        .map(|_| prefix.join("logs/access.log"));
    let _ = std::fs::remove_file(prefix.join("logs/access.log"));
    let (log, zone, conn) = match (scenario.max_connections(), &access_log) {
        (Some(n), Some(path)) => (
            format!(
                "log_format status '$status';\n  access_log {} status;",
                path.display()
            ),
            "limit_conn_zone $server_name zone=narrow:1m;".to_owned(),
            format!("limit_conn narrow {n}; limit_conn_status 503;"),
        ),
        _ => ("access_log off;".to_owned(), String::new(), String::new()),
    };
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log;\nevents {{ worker_connections 1024; }}\n\
             http {{\n  {log}\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 100000;\n\
             default_type application/octet-stream;\n  client_body_temp_path {p};\n  {rate}\n  {zone}\n\
             server {{ listen 127.0.0.1:{port}; server_name bench; root {root}; {conn} }}\n}}\n",
            p = prefix.display(),
            root = root.display()
        ),
    )?;
    let mut argv: Vec<String> = netns.map(Netns::prefix).unwrap_or_default();
    argv.extend([
        "nginx".into(),
        "-p".into(),
        prefix.display().to_string(),
        "-c".into(),
        conf.display().to_string(),
    ]);
    argv.extend(["-g".into(), "daemon off;".into()]);
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .spawn()
        .context("start nginx")?;
    let nginx = Nginx { child, access_log };
    let started = Instant::now();
    loop {
        let up = match netns {
            None => TcpStream::connect(("127.0.0.1", port)).is_ok(),
            Some(ns) => Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &ns.0,
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "-r",
                    "0-0",
                ])
                .arg(format!("http://127.0.0.1:{port}/"))
                .status()
                .is_ok_and(|s| s.code() != Some(7)),
        };
        if up {
            return Ok(nginx);
        }
        if started.elapsed() > Duration::from_secs(10) {
            bail!(
                "nginx did not start on 127.0.0.1:{port} (see {}/logs/error.log)",
                prefix.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
