//! Hostile servers: a head of 1 MiB, a chunked body that never ends, a Content-Length that
//! lies, redirects to `file://` and to other schemes. Each pull ends within its bounds, with
//! an error naming what failed and nothing published (or, where the bytes it needs are there
//! and verified, with exactly those bytes). Both drivers.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use modelpull::ExitCode;
use modelpull_testkit::*;

/// Serves every connection with `reply(request head, stream)` on its own thread.
fn serve(reply: fn(&str, &mut TcpStream)) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                loop {
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        head.push_str(&line);
                    }
                    reply(&head, &mut conn);
                }
            });
        }
    });
    addr
}

const BODY: &[u8] = b"0123456789abcdef";

fn run(addr: SocketAddr, size: Option<u64>) -> Vec<(String, modelpull::Result<modelpull::Report>)> {
    let mut out = Vec::new();
    each_driver(|driver| {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("m");
        let mut target =
            modelpull::Target::parse(&with_sha256(&format!("http://{addr}/f.bin"), BODY)).unwrap();
        target.size = size;
        let mut opts = options(driver);
        opts.retries = 2;
        opts.stall_timeout = Duration::from_secs(1);
        let started = Instant::now();
        let res = pull(vec![target], &dest, &opts);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{}: took {:?}",
            driver.name(),
            started.elapsed()
        );
        match &res {
            Ok(_) => assert_file(&dest, "f.bin", BODY),
            Err(_) => assert!(!dest.exists(), "a failed pull published"),
        }
        out.push((driver.name().to_owned(), res));
    });
    out
}

fn assert_fails(addr: SocketAddr, size: Option<u64>, needle: &str) {
    for (driver, res) in run(addr, size) {
        let err = res.expect_err(&driver);
        assert!(err.to_string().contains(needle), "{driver}: {err}");
        assert_ne!(err.exit_code(), ExitCode::Internal, "{driver}: {err}");
    }
}

#[test]
fn a_one_mib_head_is_refused() {
    let addr = serve(|_, conn| {
        let _ = write!(
            conn,
            "HTTP/1.1 200 OK\r\nX-Big: {}\r\n",
            "a".repeat(1 << 20)
        );
        let _ = conn.write_all(b"Content-Length: 16\r\n\r\n0123456789abcdef");
    });
    assert_fails(addr, None, "response head larger than");
}

/// After `head`, the 16 bytes, then 4 KiB chunks for a minute.
fn endless_chunked(head: &[u8], conn: &mut TcpStream) {
    let _ = conn.write_all(head);
    let _ = conn.write_all(b"10\r\n0123456789abcdef\r\n");
    let chunk = format!("1000\r\n{}\r\n", "x".repeat(4096));
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until && conn.write_all(chunk.as_bytes()).is_ok() {}
}

#[test]
fn a_chunked_body_that_never_ends_is_refused_without_a_size() {
    let addr = serve(|_, conn| {
        endless_chunked(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            conn,
        );
    });
    assert_fails(addr, Some(BODY.len() as u64), "its size cannot be known");
}

#[test]
fn a_chunked_range_that_never_ends_stops_at_the_range() {
    let addr = serve(|_, conn| {
        endless_chunked(
            b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-15/16\r\nTransfer-Encoding: chunked\r\n\r\n",
            conn,
        );
    });
    // `run` checks the file holds exactly the 16 bytes.
    for (driver, res) in run(addr, Some(BODY.len() as u64)) {
        if let Err(e) = res {
            panic!("{driver}: {e}");
        }
    }
}

#[test]
fn a_content_length_longer_than_the_body_is_a_short_read() {
    let addr = serve(|_, conn| {
        let _ =
            conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n0123456789abcdef");
        let _ = conn.shutdown(std::net::Shutdown::Both);
    });
    for (driver, res) in run(addr, None) {
        let err = res.expect_err(&driver);
        assert_eq!(err.exit_code(), ExitCode::Source, "{driver}: {err}");
    }
}

#[test]
fn redirects_to_file_and_other_schemes_are_refused() {
    let file = serve(|_, conn| {
        let _ = conn.write_all(
            b"HTTP/1.1 302 Found\r\nLocation: file:///etc/passwd\r\nContent-Length: 0\r\n\r\n",
        );
    });
    assert_fails(file, None, "redirects to a `file:` URL");
    let ftp = serve(|_, conn| {
        let _ = conn.write_all(
            b"HTTP/1.1 301 Moved\r\nLocation: ftp://127.0.0.1/f.bin\r\nContent-Length: 0\r\n\r\n",
        );
    });
    assert_fails(ftp, None, "redirects to a `ftp:` URL");
}

#[test]
fn corruption_on_the_way_is_told_from_a_corrupt_store() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static SERVED: AtomicUsize = AtomicUsize::new(0);
    // Every answer flips a different byte: the same file never arrives the same twice.
    let addr = serve(|_, conn| {
        let n = SERVED.fetch_add(1, Ordering::Relaxed);
        let mut body = BODY.to_vec();
        body[n % BODY.len()] ^= 1;
        let _ = write!(
            conn,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let _ = conn.write_all(&body);
    });
    for (driver, res) in run(addr, None) {
        let err = res.expect_err(&driver);
        assert_eq!(err.exit_code(), ExitCode::Verify, "{driver}: {err}");
        assert!(
            err.to_string()
                .contains("the downloads did not all give the same bytes: something between the store and this machine corrupts data"),
            "{driver}: {err}"
        );
    }
}
