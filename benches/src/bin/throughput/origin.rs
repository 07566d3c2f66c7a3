//! The origin: nginx serving the data sets from tmpfs on 127.0.0.1, optionally capped per
//! connection (`limit_rate`), optionally inside a network namespace whose loopback delays every
//! packet (`tc netem`) to model a distant store.

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
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Loopback => "loopback",
            Scenario::Capped => "capped",
            Scenario::Latency => "latency",
            Scenario::Initializer => "initializer",
            Scenario::InitializerCapped => "initializer-capped",
        }
    }

    /// Whether nginx caps each connection (`limit_rate 85m`).
    pub fn capped(self) -> bool {
        matches!(self, Scenario::Capped | Scenario::InitializerCapped)
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
    let limit = if scenario.capped() {
        "limit_rate 85m;"
    } else {
        ""
    };
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log;\nevents {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 100000;\n\
             default_type application/octet-stream;\n  client_body_temp_path {p};\n  {limit}\n\
             server {{ listen 127.0.0.1:{port}; root {root}; }}\n}}\n",
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
    let nginx = Nginx { child };
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
