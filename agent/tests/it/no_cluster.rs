//! Without a cluster the agent keeps running: `/healthz` answers, `/readyz` says not ready,
//! one clear line per retry, no panic; SIGTERM ends it with status 0 within 5 s. Without
//! `NODE_NAME` (`docker run IMAGE`) it runs too, says once what is missing, and idles. What
//! KServe's agent refuses at start, it refuses with KServe's exit codes.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The status and body of `GET path` on `host:port`.
fn get(host: IpAddr, port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect((host, port)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

fn status(port: u16, path: &str) -> Option<u16> {
    get(IpAddr::V4(Ipv4Addr::LOCALHOST), port, path).map(|(status, _)| status)
}

/// SIGTERM, then the exit status (within `within`) and everything it wrote on stderr.
fn terminate(mut child: Child, within: Duration) -> (std::process::ExitStatus, String) {
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let stopped = Instant::now();
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            stopped.elapsed() < within,
            "not stopped {within:?} after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut log = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        stderr.read_to_string(&mut log).unwrap();
    }
    (code, log)
}

/// CPU time the process has used so far, in clock ticks (user + system, `/proc/PID/stat`).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command name in parentheses: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn keeps_running_unready_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (metrics, probes) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_localmodelnode-agent"))
        .env_clear()
        .env("NODE_NAME", "gpu-node-1")
        .env("KUBECONFIG", dir.path().join("missing-kubeconfig"))
        .env("HOME", dir.path())
        .args(["--zap-encoder", "console", "--leader-elect=false"])
        .arg("--models-root")
        .arg(dir.path())
        .arg(format!("--metrics-bind-address=127.0.0.1:{metrics}"))
        .arg(format!("--health-probe-bind-address=127.0.0.1:{probes}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(probes, "/healthz") != Some(200) {
        assert!(Instant::now() < deadline, "/healthz never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status(probes, "/readyz"), Some(503));
    assert_eq!(status(probes, "/nope"), Some(404));
    assert_eq!(status(metrics, "/metrics"), Some(200));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        dir.path().join("models").is_dir(),
        "the models folder is created"
    );

    let (code, log) = terminate(child, Duration::from_secs(5));
    assert!(code.success(), "{code}: {log}");
    assert!(
        log.contains("cannot reach the Kubernetes API server"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn a_models_root_it_cannot_write_is_not_ready_and_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the root should be: unwritable for every user, root included.
    let root = dir.path().join("not-a-folder");
    std::fs::write(&root, b"").unwrap();
    let probes = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_localmodelnode-agent"))
        .env_clear()
        .env("NODE_NAME", "gpu-node-1")
        .env("KUBECONFIG", dir.path().join("missing-kubeconfig"))
        .args(["--zap-encoder", "console"])
        .arg("--models-root")
        .arg(&root)
        .arg(format!("--metrics-bind-address=127.0.0.1:{}", free_port()))
        .arg(format!("--health-probe-bind-address=127.0.0.1:{probes}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(probes, "/healthz") != Some(200) {
        assert!(Instant::now() < deadline, "/healthz never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status(probes, "/readyz"), Some(503));
    // Past start-up (the SIGTERM handler), and still running.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(child.try_wait().unwrap().is_none(), "still running");
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("cannot create files in {}", dir.path().display())),
        "{err}"
    );
    assert!(err.contains("chown -R"), "{err}");
}

/// `docker run -d -p 8080:8080 -p 8081:8081 IMAGE`: no `NODE_NAME`, no cluster, no models
/// volume, wildcard ports.
#[test]
fn runs_without_node_name_serving_unready_until_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let (metrics, probes) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_localmodelnode-agent"))
        .env_clear()
        .env("HOME", dir.path())
        .env("KUBECONFIG", dir.path().join("missing-kubeconfig"))
        .arg(format!("--metrics-bind-address=:{metrics}"))
        .arg(format!("-health-probe-bind-address=:{probes}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let stderr = child.stderr.take().unwrap();
    let (line_tx, lines) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut log = String::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
            let line = line.unwrap();
            let _ = line_tx.send(line.clone());
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    let said = lines
        .iter()
        .find(|l| l.contains("NODE_NAME"))
        .expect("a line about NODE_NAME");
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(probes, "/healthz") != Some(200) {
        assert!(Instant::now() < deadline, "/healthz never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
    for host in [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ] {
        assert_eq!(get(host, probes, "/healthz").unwrap().0, 200, "{host}");
        let (code, why) = get(host, probes, "/readyz").unwrap();
        assert_eq!(code, 503, "{host}");
        assert!(why.contains("NODE_NAME is not set"), "{why}");
        let (code, text) = get(host, metrics, "/metrics").unwrap();
        assert_eq!(code, 200, "{host}");
        for family in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
        ] {
            assert!(
                text.contains(&format!("\n{family} ")),
                "{family} missing: {text}"
            );
        }
    }
    // Idle: no busy loop, no retries.
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_millis(1500));
    let used = cpu_ticks(pid) - before;
    assert!(used <= 5, "{used} ticks of CPU in 1.5 s while idle");

    let (code, _) = terminate(child, Duration::from_secs(2));
    let log = reader.join().unwrap();
    assert!(code.success(), "{code}: {log}");
    assert!(log.starts_with(&said), "{log}");
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let missing: Vec<&Value> = lines
        .iter()
        .filter(|l| l["msg"].as_str().unwrap().contains("NODE_NAME"))
        .collect();
    assert_eq!(missing.len(), 1, "one line says it: {log}");
    let line = missing[0];
    assert_eq!(line["level"], "error");
    assert_eq!(line["logger"], "setup");
    let msg = line["msg"].as_str().unwrap();
    assert!(
        msg.contains("fieldPath: spec.nodeName") && msg.contains("--node-name"),
        "{msg}"
    );
    assert!(
        !log.contains("cannot reach the Kubernetes API server"),
        "{log}"
    );
}

#[test]
fn refuses_tls_flags_as_kserve_does_with_exit_1() {
    for (flags, bad) in [
        (
            &["-tls-min-version", "VersionTLS11"][..],
            "\"VersionTLS11\"",
        ),
        (
            &["--tls-cipher-suites=TLS_RSA_WITH_AES_128_CBC_SHA"],
            "TLS_RSA_WITH_AES_128_CBC_SHA;",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_localmodelnode-agent"))
            .env_clear()
            .env("NODE_NAME", "gpu-node-1")
            .args(flags)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flags:?}: {err}");
        let line: Value = serde_json::from_str(err.lines().next().unwrap()).unwrap();
        assert_eq!(line["level"], "error");
        assert_eq!(line["logger"], "setup");
        let error = line["error"].as_str().unwrap();
        assert!(error.contains(bad), "names the bad value: {error}");
        assert!(
            error.contains("VersionTLS13")
                || error.contains("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
            "names the valid ones: {error}"
        );
        assert!(
            line["stacktrace"].is_string(),
            "zap's production stack trace on errors"
        );
    }
}

#[test]
fn refuses_what_gos_flag_package_refuses_with_exit_2() {
    for flags in [
        &["-zap-log-level=warn"][..],
        &["-zap-encoder", "text"],
        &["-zap-stacktrace-level=debug"],
        &["-zap-time-encoding=nano"],
        &["-leader-elect=maybe"],
        &["-no-such-flag"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_localmodelnode-agent"))
            .env_clear()
            .args(flags)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {err}");
        assert!(
            err.contains("invalid") || err.contains("unexpected argument"),
            "{flags:?}: {err}"
        );
    }
}
