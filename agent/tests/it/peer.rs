//! The peer server of a running agent binary, read by the engine as a mirror: a published model
//! goes from one node to the next without the origin sending it again, a pull in progress
//! serves the chunks it has flushed, and nothing else under the models root is reachable.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use localmodelnode_agent::keys::storage_key;
use modelpull::runtime::Driver;
use modelpull::{Context, Error, Options, PullRequest, Target};
use modelpull_testkit::origin::Faults;
use modelpull_testkit::*;

use crate::util::{Agent, fixed_port};

const KIB: usize = 1024;

/// An agent without a cluster (no node name: it idles) serving `root`'s models to peers.
fn peer_agent(root: &Path) -> (Agent, u16) {
    peer_agent_with(root, &[])
}

/// [`peer_agent`] with `extra` arguments.
fn peer_agent_with(root: &Path, extra: &[&str]) -> (Agent, u16) {
    let port = fixed_port();
    let addr = format!("127.0.0.1:{port}");
    let mut args = vec!["--peer-bind-address", addr.as_str()];
    args.extend_from_slice(extra);
    let agent = Agent::start(Path::new("/nonexistent"), root, "", &args);
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the peer port never opened:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (agent, port)
}

/// The status line's code and the head of a `GET path` with extra header lines.
fn get(port: u16, path: &str, headers: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: peer\r\n{headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = Vec::new();
    s.read_to_end(&mut text).unwrap();
    let text = String::from_utf8_lossy(&text).into_owned();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let head = text.split("\r\n\r\n").next().unwrap().to_lowercase();
    (status, head)
}

/// An origin serving `w.bin` with `content`, and a models root where it is published under
/// its storage key, which is returned.
fn published(content: &[u8]) -> (Fixture, tempfile::TempDir, String) {
    let fx = Fixture::new(&[("w.bin", content)]);
    let seed = tempfile::tempdir().unwrap();
    let key = storage_key("hf://org/model");
    pull(
        vec![fx.target("w.bin", true)],
        &seed.path().join("models").join(&key),
        &options(Driver::Epoll),
    )
    .unwrap();
    (fx, seed, key)
}

/// Sends `GET path` on `s`, keeping the connection, and returns the response head, lowercase.
fn head_on(s: &mut TcpStream, path: &str) -> String {
    write!(s, "GET {path} HTTP/1.1\r\nHost: peer\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).unwrap(),
            1,
            "closed before the head ended"
        );
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).to_lowercase()
}

#[test]
fn requests_over_the_limit_are_told_busy_and_idle_connections_hold_no_place() {
    let content = data(22, 512 * KIB);
    let (_fx, seed, key) = published(&content);
    // One place, and 64 KiB/s: the whole file takes eight seconds to send.
    let (_agent, port) = peer_agent_with(
        seed.path(),
        &["--peer-max-connections", "1", "--peer-limit-rate", "64K"],
    );
    let connect = || {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    };
    let path = format!("/models/{key}/w.bin");
    // The connections that found the port open count until the server sees them closed.
    std::thread::sleep(Duration::from_millis(300));
    // An idle connection holds no place: the next request is served.
    let _idle = connect();
    std::thread::sleep(Duration::from_millis(100));
    let mut sending = connect();
    assert!(head_on(&mut sending, &path).starts_with("http/1.1 200"));
    // While that body is sent, a request on another connection is told to come back, and
    // may ask again on the same connection.
    let mut second = connect();
    let busy = head_on(&mut second, &path);
    assert!(busy.starts_with("http/1.1 503"), "{busy}");
    assert!(!busy.contains("connection: close"), "{busy}");
    // Four connections per place are open (with this fourth one): a fifth is told busy and
    // closed, as asking again on it would be told the same.
    let _fourth = connect();
    std::thread::sleep(Duration::from_millis(100));
    let mut fifth = connect();
    let refused = head_on(&mut fifth, &path);
    assert!(refused.starts_with("http/1.1 503"), "{refused}");
    assert!(refused.contains("connection: close"), "{refused}");
}

fn mirrored(fx: &Fixture, name: &str, port: u16, key: &str) -> Target {
    let mut t = fx.target(name, true);
    let base = format!("http://127.0.0.1:{port}/models/{key}/");
    t.add_mirrors(&[modelpull::mirror::parse_base(&base).unwrap()]);
    t
}

#[test]
fn a_published_model_goes_from_node_to_node_without_the_origin() {
    let content = data(21, 3 * 1024 * KIB + 17);
    let (fx, seed, key) = published(&content);
    let opts = options(Driver::Epoll);
    let (agent, port) = peer_agent(seed.path());

    let before = fx.origin.stats().body_bytes.load(Relaxed);
    let dest = fx.dest("follower");
    let report = pull(vec![mirrored(&fx, "w.bin", port, &key)], &dest, &opts).unwrap();
    assert_file(&dest, "w.bin", &content);
    let from_origin = fx.origin.stats().body_bytes.load(Relaxed) - before;
    assert_eq!(from_origin, 1, "only the probe's byte");
    let peer = report.connections.iter().find(|h| h.mirror).unwrap();
    assert_eq!(peer.bytes, content.len() as u64);
    assert!(!peer.dropped);

    // Each chunk's CRC comes with the bytes when asked for.
    let (status, head) = get(
        port,
        &format!("/models/{key}/w.bin"),
        "Range: bytes=65536-196607\r\nx-modelpull-chunk-size: 65536\r\n",
    );
    assert_eq!(status, 206);
    let crcs = modelpull::mirror::chunk_crcs(&content[65536..196608], 65536);
    let line = format!(
        "x-modelpull-crc32c: {}",
        modelpull::mirror::format_crcs(&crcs)
    );
    assert!(head.contains(&line), "{head}");
    assert!(head.contains(&format!(
        "content-range: bytes 65536-196607/{}",
        content.len()
    )));

    // Nothing but the files the marker lists, and never past the models root.
    std::fs::write(seed.path().join("models").join(&key).join("extra"), b"x").unwrap();
    std::fs::write(seed.path().join("secret"), b"x").unwrap();
    for path in [
        format!("/models/{key}/{}", modelpull::MARKER),
        format!("/models/{key}/extra"),
        format!("/models/{key}/"),
        format!("/models/{key}/../../secret"),
        format!("/models/{key}/%2e%2e/%2e%2e/secret"),
        "/models/.modelpull/markers".to_owned(),
        "/secret".to_owned(),
    ] {
        assert_eq!(get(port, &path, "").0, 404, "{path}");
    }
    let sent = agent.metric("modelpull_peer_sent_bytes_total").unwrap();
    assert!(sent >= content.len() as f64, "{sent}");
}

#[test]
fn a_pull_in_progress_serves_the_chunks_it_has_flushed() {
    let content = data(22, 2 * 1024 * KIB);
    let fx = Fixture::new(&[("w.bin", &content)]);
    let seed = tempfile::tempdir().unwrap();
    let key = storage_key("s3://bucket/model");
    // The seed's pull is slow, flushes often, and is stopped part way.
    fx.origin.set_faults(Faults {
        slow_rate: Some(400 * KIB as u64),
        slow_times: u32::MAX,
        ..Faults::default()
    });
    let seed_opts = Options {
        checkpoint_interval: Duration::from_millis(100),
        max_connections: 2,
        ..options(Driver::Epoll)
    };
    let cx = Context::default();
    let cancel = cx.cancel.clone();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        cancel.store(true, Relaxed);
    });
    let request = PullRequest {
        targets: vec![fx.target("w.bin", true)],
        dest: seed.path().join("models").join(&key),
        unpack: false,
        adopt: false,
        sources: Vec::new(),
    };
    let stopped = modelpull::pull(&request, &seed_opts, &cx);
    stopper.join().unwrap();
    assert!(matches!(stopped, Err(Error::Interrupted)), "{stopped:?}");
    fx.origin.set_faults(Faults::default());
    let (_agent, port) = peer_agent(seed.path());

    let (status, head) = get(
        port,
        &format!("/models/{key}/w.bin"),
        "Range: bytes=0-65535\r\nx-modelpull-chunk-size: 65536\r\n",
    );
    assert_eq!(status, 206, "{head}");
    let (status, _) = get(
        port,
        &format!("/models/{key}/w.bin"),
        &format!(
            "Range: bytes={}-{}\r\n",
            content.len() - 10,
            content.len() - 1
        ),
    );
    assert_eq!(status, 416, "the last chunk was never fetched");

    let before = fx.origin.stats().body_bytes.load(Relaxed);
    let dest = fx.dest("follower");
    let report = pull(
        vec![mirrored(&fx, "w.bin", port, &key)],
        &dest,
        &options(Driver::Epoll),
    )
    .unwrap();
    assert_file(&dest, "w.bin", &content);
    let peer = report.connections.iter().find(|h| h.mirror).unwrap();
    assert!(peer.bytes > 0 && !peer.dropped, "{peer:?}");
    let from_origin = fx.origin.stats().body_bytes.load(Relaxed) - before;
    assert!(
        from_origin < content.len() as u64,
        "the origin sent {from_origin} of {}",
        content.len()
    );
}
