//! An HTTP origin for the demo and the tests: serves a directory over HTTP/1.1 (hyper), with
//! or without TLS, honouring `Range` as object stores do, and with fault knobs that make it
//! misbehave the ways real servers and networks do.
//!
//! It runs on its own tokio runtime in a background thread, so the engine under test keeps its
//! cores to itself, and it counts every byte it serves so tests can prove what was fetched.
//! It is a crate of its own because `modelpull demo` serves from it as the tests do, and the
//! engine library must not link a server. [`synthetic`] writes the data it serves.

pub mod synthetic;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

/// Ways the origin can misbehave. Counters (`*_times`) say how many responses are affected.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Close the connection after this many body bytes of a response.
    pub reset_after: Option<u64>,
    pub reset_times: u32,
    /// Stop sending (but keep the connection open) after this many body bytes.
    pub stall_after: Option<u64>,
    pub stall_times: u32,
    /// Answer this status (with `Retry-After: retry_after` seconds when set).
    pub status: Option<u16>,
    pub retry_after: Option<u64>,
    pub status_times: u32,
    /// Flip the byte at this file offset in responses that cover it.
    pub corrupt_offset: Option<u64>,
    pub corrupt_times: u32,
    /// Answer 200 with the whole file, whatever the `Range`.
    pub ignore_range: bool,
    /// Answer with a `Content-Range` one byte off.
    pub wrong_content_range_times: u32,
    /// Send bodies at this many bytes per second.
    pub slow_rate: Option<u64>,
    pub slow_times: u32,
    /// Send bodies with chunked transfer encoding.
    pub chunked: bool,
    /// Where `/redirect/PATH` points: `BASE/PATH` (another origin), instead of `/PATH`.
    pub redirect_base: Option<String>,
    /// Send no chunk CRCs when asked for them (as a plain HTTP server, not a peer).
    pub omit_crcs: bool,
}

/// What the origin served, for assertions.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted.
    pub connections: AtomicU64,
    pub requests: AtomicU64,
    pub body_bytes: AtomicU64,
    /// `(path, first byte, bytes actually sent)` per response.
    pub served: Mutex<Vec<(String, u64, u64)>>,
}

#[derive(Debug)]
struct Shared {
    root: PathBuf,
    faults: Mutex<Faults>,
    /// Mixed into every ETag; bumping it makes every object look changed.
    etag_salt: AtomicU64,
    stats: Stats,
    maps: Mutex<HashMap<PathBuf, Bytes>>,
    headers_seen: Mutex<Vec<(String, Option<String>)>>,
    names_seen: Mutex<std::collections::BTreeSet<String>>,
}

/// A running origin; stopped when dropped.
#[derive(Debug)]
pub struct Origin {
    addr: SocketAddr,
    tls: bool,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// TLS identity for an https origin: PEM certificate chain and PEM private key.
#[derive(Debug, Clone)]
pub struct TlsIdentity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Origin {
    /// Serves `root` over plain HTTP on 127.0.0.1 (a free port).
    pub fn serve(root: impl Into<PathBuf>) -> std::io::Result<Self> {
        Self::start(root.into(), None)
    }

    /// Serves `root` over HTTPS with `identity`.
    pub fn serve_tls(root: impl Into<PathBuf>, identity: &TlsIdentity) -> std::io::Result<Self> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(std::io::Error::other)?;
        let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())
            .map_err(std::io::Error::other)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(std::io::Error::other)?;
        Self::start(
            root.into(),
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        )
    }

    fn start(root: PathBuf, tls: Option<tokio_rustls::TlsAcceptor>) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            root,
            faults: Mutex::new(Faults::default()),
            etag_salt: AtomicU64::new(0),
            stats: Stats::default(),
            maps: Mutex::new(HashMap::new()),
            headers_seen: Mutex::new(Vec::new()),
            names_seen: Mutex::default(),
        });
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let is_tls = tls.is_some();
        let shared2 = shared.clone();
        let thread = std::thread::Builder::new()
            .name("modelpull-origin".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("origin runtime");
                rt.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(std_listener).expect("origin listener");
                    tokio::pin!(stopped);
                    loop {
                        tokio::select! {
                            _ = &mut stopped => break,
                            accepted = listener.accept() => {
                                let Ok((stream, _)) = accepted else { continue };
                                let _ = stream.set_nodelay(true);
                                tokio::spawn(serve_conn(stream, tls.clone(), shared2.clone()));
                            }
                        }
                    }
                });
                rt.shutdown_timeout(Duration::from_millis(100));
            })?;
        Ok(Self {
            addr,
            tls: is_tls,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL of `path` (relative, `/`-separated) on this origin.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/{path}", self.addr)
    }

    /// Like [`Origin::url`], with the host name `localhost` (for TLS certificates).
    pub fn url_for_host(&self, host: &str, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{host}:{}/{path}", self.addr.port())
    }

    pub fn set_faults(&self, faults: Faults) {
        *self.shared.faults.lock().expect("faults") = faults;
    }

    /// Makes every object look changed (new ETag) from now on.
    pub fn change_etags(&self) {
        self.shared.etag_salt.fetch_add(1, Relaxed);
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// `(request target, Authorization header)` of every request so far.
    pub fn requests_seen(&self) -> Vec<(String, Option<String>)> {
        self.shared.headers_seen.lock().expect("headers").clone()
    }

    /// The name of every request header seen so far, lowercase.
    pub fn header_names_seen(&self) -> std::collections::BTreeSet<String> {
        self.shared.names_seen.lock().expect("names").clone()
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve_conn(
    stream: tokio::net::TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
) {
    shared.stats.connections.fetch_add(1, Relaxed);
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(&shared, req)) }
    });
    let http = hyper::server::conn::http1::Builder::new();
    match tls {
        None => {
            let _ = http
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        }
        Some(acceptor) => {
            if let Ok(s) = acceptor.accept(stream).await {
                let _ = http
                    .serve_connection(hyper_util::rt::TokioIo::new(s), service)
                    .await;
            }
        }
    }
}

type OriginBody = BoxBody<Bytes, std::io::Error>;

fn empty(status: StatusCode) -> Response<OriginBody> {
    let mut r = Response::new(
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r
}

fn take(counter: &mut u32) -> bool {
    if *counter > 0 {
        *counter -= 1;
        true
    } else {
        false
    }
}

fn handle(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<OriginBody> {
    shared.stats.requests.fetch_add(1, Relaxed);
    let target = req.uri().path().to_owned();
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    shared
        .headers_seen
        .lock()
        .expect("headers")
        .push((target.clone(), auth));
    shared
        .names_seen
        .lock()
        .expect("names")
        .extend(req.headers().keys().map(|k| k.as_str().to_owned()));

    if let Some(rest) = target.strip_prefix("/redirect/") {
        let base = shared
            .faults
            .lock()
            .expect("faults")
            .redirect_base
            .clone()
            .unwrap_or_default();
        let mut r = empty(StatusCode::FOUND);
        r.headers_mut().insert(
            header::LOCATION,
            HeaderValue::from_str(&format!("{base}/{rest}")).expect("location"),
        );
        return r;
    }
    if target == "/loop" {
        let mut r = empty(StatusCode::FOUND);
        r.headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static("/loop"));
        return r;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return empty(StatusCode::METHOD_NOT_ALLOWED);
    }
    let mut faults = shared.faults.lock().expect("faults");
    if faults.status.is_some() && take(&mut faults.status_times) {
        let status = StatusCode::from_u16(faults.status.unwrap_or(503))
            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let mut r = empty(status);
        if let Some(secs) = faults.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        return r;
    }
    let Some(path) = resolve(&shared.root, &target) else {
        return empty(StatusCode::NOT_FOUND);
    };
    let Some(data) = mapped(shared, &path) else {
        return empty(StatusCode::NOT_FOUND);
    };
    let size = data.len() as u64;
    let etag = etag_of(&path, size, shared.etag_salt.load(Relaxed));
    let range = if faults.ignore_range {
        None
    } else {
        req.headers()
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (status, first, last) = match range.as_deref().map(|r| parse_range(r, size)) {
        None => (StatusCode::OK, 0, size.saturating_sub(1)),
        Some(Some((f, l))) => (StatusCode::PARTIAL_CONTENT, f, l),
        Some(None) => {
            let mut r = empty(StatusCode::RANGE_NOT_SATISFIABLE);
            r.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{size}")).expect("header"),
            );
            return r;
        }
    };
    let len = if size == 0 { 0 } else { last - first + 1 };
    let mut body = data.slice(first as usize..(first + len) as usize);
    // Computed before any fault: a peer vouches for the bytes it holds, whatever reaches the
    // client.
    let crcs = (status == StatusCode::PARTIAL_CONTENT && !faults.omit_crcs)
        .then(|| chunk_crcs(&req, first, &body))
        .flatten();
    if let Some(off) = faults.corrupt_offset
        && off >= first
        && off < first + len
        && take(&mut faults.corrupt_times)
    {
        let mut copy = body.to_vec();
        copy[(off - first) as usize] ^= 0x55;
        body = Bytes::from(copy);
    }
    let reset = faults.reset_after.filter(|_| take(&mut faults.reset_times));
    let stall = faults.stall_after.filter(|_| take(&mut faults.stall_times));
    let slow = faults.slow_rate.filter(|_| take(&mut faults.slow_times));
    let shown_first =
        if status == StatusCode::PARTIAL_CONTENT && take(&mut faults.wrong_content_range_times) {
            first + 1
        } else {
            first
        };
    let chunked = faults.chunked;
    drop(faults);

    let mut resp = if reset.is_none() && stall.is_none() && slow.is_none() && !chunked {
        shared.stats.body_bytes.fetch_add(len, Relaxed);
        shared
            .stats
            .served
            .lock()
            .expect("stats")
            .push((target.clone(), first, len));
        Response::new(
            http_body_util::Full::new(body)
                .map_err(|never| match never {})
                .boxed(),
        )
    } else {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(produce(
            body,
            first,
            target.clone(),
            reset,
            stall,
            slow,
            tx,
            shared.clone(),
        ));
        Response::new(ChannelBody { rx }.boxed())
    };
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::ETAG, HeaderValue::from_str(&etag).expect("etag"));
    if !chunked {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    if let Some(crcs) = crcs {
        h.insert(
            modelpull::mirror::CRC32C,
            HeaderValue::from_str(&crcs).expect("crc list"),
        );
    }
    if status == StatusCode::PARTIAL_CONTENT {
        let cr = format!("bytes {shown_first}-{}/{size}", shown_first + len - 1);
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&cr).expect("content-range"),
        );
    }
    if req.method() == Method::HEAD {
        *resp.body_mut() = http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed();
    }
    resp
}

/// The CRC32C of each chunk of `body` (which starts at byte `first` of its file) when the
/// request asks for them with the chunk size, as the agent's peer server answers a mirrored
/// pull; `None` when not asked or when `first` is not at a chunk boundary.
fn chunk_crcs(req: &Request<Incoming>, first: u64, body: &Bytes) -> Option<String> {
    let chunk: usize = req
        .headers()
        .get(modelpull::mirror::CHUNK_SIZE)?
        .to_str()
        .ok()?
        .parse()
        .ok()
        .filter(|&c| c > 0)?;
    if !first.is_multiple_of(chunk as u64) {
        return None;
    }
    let crcs = modelpull::mirror::chunk_crcs(body, chunk);
    Some(modelpull::mirror::format_crcs(&crcs))
}

/// Sends `body` in 64 KiB frames, misbehaving as told, and counts what it sent.
#[allow(clippy::too_many_arguments)]
async fn produce(
    body: Bytes,
    first: u64,
    target: String,
    reset: Option<u64>,
    stall: Option<u64>,
    slow: Option<u64>,
    tx: tokio::sync::mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>,
    shared: Arc<Shared>,
) {
    const FRAME: usize = 64 * 1024;
    let mut sent = 0usize;
    let limit = reset
        .or(stall)
        .map_or(body.len(), |n| (n as usize).min(body.len()));
    while sent < limit {
        let n = FRAME.min(limit - sent);
        if let Some(rate) = slow {
            tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate.max(1) as f64)).await;
        }
        if tx
            .send(Ok(Frame::data(body.slice(sent..sent + n))))
            .await
            .is_err()
        {
            break;
        }
        sent += n;
        shared.stats.body_bytes.fetch_add(n as u64, Relaxed);
    }
    shared
        .stats
        .served
        .lock()
        .expect("stats")
        .push((target, first, sent as u64));
    if reset.is_some() && sent < body.len() {
        let _ = tx
            .send(Err(std::io::Error::other("fault: connection reset")))
            .await;
    } else if stall.is_some() && sent < body.len() {
        // Hold the connection open without sending, until the client gives up.
        tx.closed().await;
    }
}

struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.rx.poll_recv(cx)
    }
}

/// Maps a request path to a file under `root`; `None` for anything that would leave it.
fn resolve(root: &Path, target: &str) -> Option<PathBuf> {
    let decoded = percent_encoding::percent_decode_str(target.strip_prefix('/')?)
        .decode_utf8()
        .ok()?;
    modelpull::target::check_relative_path(&decoded).ok()?;
    let path = root.join(&*decoded);
    path.is_file().then_some(path)
}

/// The file's bytes, memory-mapped once and shared by every response.
fn mapped(shared: &Shared, path: &Path) -> Option<Bytes> {
    let mut maps = shared.maps.lock().expect("maps");
    if let Some(b) = maps.get(path) {
        return Some(b.clone());
    }
    let file = std::fs::File::open(path).ok()?;
    let bytes = if file.metadata().ok()?.len() == 0 {
        Bytes::new()
    } else {
        // SAFETY-free: memmap2's `Mmap::map` is unsafe because another process could change
        // the file; the origin serves files its own caller generated and does not modify.
        map(&file)?
    };
    maps.insert(path.to_owned(), bytes.clone());
    Some(bytes)
}

#[allow(unsafe_code)]
fn map(file: &std::fs::File) -> Option<Bytes> {
    // SAFETY: the origin serves files created by its caller for the demo or a test; they are
    // not truncated or modified while served (a test that changes content writes a new file).
    let mmap = unsafe { memmap2::Mmap::map(file) }.ok()?;
    Some(Bytes::from_owner(mmap))
}

fn etag_of(path: &Path, size: u64, salt: u64) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut h);
    size.hash(&mut h);
    salt.hash(&mut h);
    format!("\"{:016x}\"", h.finish())
}

/// Parses a single `bytes=` range against `size`; `None` when unsatisfiable.
fn parse_range(value: &str, size: u64) -> Option<(u64, u64)> {
    let spec = value.strip_prefix("bytes=")?.trim();
    let (a, b) = spec.split_once('-')?;
    if size == 0 {
        return None;
    }
    if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        return (n > 0).then(|| (size.saturating_sub(n), size - 1));
    }
    let first: u64 = a.parse().ok()?;
    let last: u64 = if b.is_empty() {
        size - 1
    } else {
        b.parse::<u64>().ok()?.min(size - 1)
    };
    (first <= last && first < size).then_some((first, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-200", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=0-0", 0), None);
    }
}
