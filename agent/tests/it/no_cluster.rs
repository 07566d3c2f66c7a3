//! Without a cluster the agent keeps running: `/healthz` answers, `/readyz` says not ready,
//! one clear line per retry, no panic; SIGTERM ends it with status 0 within 5 s.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn keeps_running_unready_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (metrics, probes) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_localmodelnode-agent"))
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
            stopped.elapsed() < Duration::from_secs(5),
            "not stopped 5 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
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
