//! The peer server: other agents of the node group read, over plain HTTP ranges, the model
//! files this node holds, so the origin sends a model about once (`--peer-bind-address`, off by
//! default).
//!
//! `GET /models/<storage key>/<path>` with `Range: bytes=A-B` is all it answers (at most 64
//! MiB of it at a time, 256 MiB over all readers; a connection idle for 30 s is closed): a file its
//! model's completion marker lists, or, of a pull still running, the chunks its journal records
//! as flushed, each checked against its CRC as it is read ([`modelpull::peer`]). Nothing else:
//! no listing, no file the marker does not list, no folder that is not a storage key, no path
//! out of the models root, no symlink followed. When the request names its chunk size
//! (`x-modelpull-chunk-size`), the response carries each chunk's CRC32C
//! (`x-modelpull-crc32c`), which the reading engine checks before it keeps a byte.
//!
//! Answers mean what a pulling engine needs them to mean ([`modelpull::mirror`]): 206 with
//! the range asked for, or, of a pull in progress, with the part of it held from its first byte
//! on (the reader asks elsewhere for the rest); 404, this node has none of the file; 416, not
//! the first of these bytes (not yet: ask again later); 503, too busy (the connections are all taken); 500, a chunk on disk no longer matches
//! its CRC. The connections are bounded (`--peer-max-connections`) and what is sent is paced
//! to `--peer-limit-rate`, so serving peers never starves the node's own downloads or pods.

use std::convert::Infallible;
use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use modelpull::RateLimiter;
use modelpull::peer::{Held, Journals, MAX_READ, ReadError};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::keys;

/// How the peer server is bounded.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Requests served at once; more are answered 503. Idle connections hold no place; open
    /// connections are bounded at [`CONNECTIONS_PER_PLACE`] times this.
    pub max_connections: usize,
    /// Bytes per second over every connection, if capped.
    pub limit_rate: Option<u64>,
}

/// The peer server's counters.
#[derive(Debug, Clone)]
pub struct PeerMetrics {
    /// Requests, by how they were answered.
    pub requests: IntCounterVec,
    /// Body bytes sent to peers.
    pub sent_bytes: IntCounter,
}

impl PeerMetrics {
    /// Creates the counters and registers them on `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            requests: IntCounterVec::new(
                Opts::new(
                    "modelpull_peer_requests_total",
                    "Requests from peers, by answer: ok, not_found, not_yet, busy, damaged, bad_request, error.",
                ),
                &["result"],
            )?,
            sent_bytes: IntCounter::new(
                "modelpull_peer_sent_bytes_total",
                "Bytes of model files sent to peers.",
            )?,
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.sent_bytes.clone()))?;
        Ok(m)
    }
}

/// Bytes sent per body frame, each booked with the rate limiter before it goes.
const FRAME: usize = 256 << 10;

type Body = BoxBody<Bytes, Infallible>;

struct State {
    models: PathBuf,
    limiter: Option<RateLimiter>,
    metrics: PeerMetrics,
    /// Mebibytes of file data read for peers and not sent yet, at most [`MEMORY_MIB`].
    memory: Arc<Semaphore>,
    /// Running pulls' journals as last read: each request reads only what was appended since.
    journals: Arc<Journals>,
    /// Places for requests being answered: one from the request until its body is sent.
    places: Arc<Semaphore>,
}

/// Open connections per place: readers keep idle connections for their next requests (and a
/// reader whose tuner lowered its count may keep more than it uses), which cost a socket each,
/// not a place.
pub const CONNECTIONS_PER_PLACE: usize = 4;

/// Mebibytes of file data the peer server holds at once, over every connection.
const MEMORY_MIB: usize = 256;

/// A connection that sends no request for this long is closed: idle readers do not keep
/// the connections others need.
const IDLE: Duration = Duration::from_secs(30);

/// Serves the files under `models` (`ROOT/models`) to peers on `listener` until the process
/// ends.
pub async fn serve(
    listener: TcpListener,
    models: PathBuf,
    limits: Limits,
    metrics: PeerMetrics,
) -> io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let places = limits.max_connections.max(1);
    let permits = Arc::new(Semaphore::new(places * CONNECTIONS_PER_PLACE));
    let state = Arc::new(State {
        models,
        limiter: limits.limit_rate.map(RateLimiter::new),
        metrics,
        memory: Arc::new(Semaphore::new(MEMORY_MIB)),
        journals: Arc::default(),
        places: Arc::new(Semaphore::new(places)),
    });
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a peer's connection failed");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let permit = permits.clone().try_acquire_owned().ok();
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                let over = permit.is_none();
                async move {
                    Ok::<_, Infallible>(if over {
                        // Over the connections' bound: every request on it would be told the
                        // same, so it is closed, and the peer asks again on a new one.
                        state.metrics.requests.with_label_values(&["busy"]).inc();
                        let mut r = busy();
                        r.headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                        r
                    } else {
                        answer(&state, &req).await
                    })
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(IDLE)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A range as the request asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wanted {
    Whole,
    /// `first`, and `last` when given (`bytes=A-B` or `bytes=A-`).
    Range(u64, Option<u64>),
}

async fn answer(state: &Arc<State>, req: &Request<Incoming>) -> Response<Body> {
    let count = |result: &str| state.metrics.requests.with_label_values(&[result]).inc();
    let Ok(place) = state.places.clone().try_acquire_owned() else {
        count("busy");
        return busy();
    };
    if req.method() != Method::GET {
        count("bad_request");
        return plain(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    let Some((key, path)) = route(req.uri().path()) else {
        count("not_found");
        return plain(StatusCode::NOT_FOUND, "not found\n");
    };
    let Some(wanted) = wanted_range(req.headers().get(header::RANGE)) else {
        count("bad_request");
        return plain(
            StatusCode::BAD_REQUEST,
            "one byte range, as bytes=A-B, is all this server reads\n",
        );
    };
    let chunk = req
        .headers()
        .get(modelpull::mirror::CHUNK_SIZE)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .filter(|&c| c > 0 && c <= MAX_READ);
    let dir = state.models.join(key);
    let align = chunk.unwrap_or(1);
    // What one read may hold in memory, booked before it is read and held until it is sent:
    // many readers wait for each other instead of growing the agent past its limit.
    let most = match wanted {
        Wanted::Range(first, Some(last)) => (last.saturating_sub(first) + 1).min(MAX_READ),
        _ => MAX_READ,
    };
    let Ok(memory) = state
        .memory
        .clone()
        .acquire_many_owned(most.div_ceil(1 << 20) as u32)
        .await
    else {
        return busy();
    };
    let journals = state.journals.clone();
    let read =
        tokio::task::spawn_blocking(move || read(&dir, &path, wanted, align, &journals)).await;
    let (held_size, first, bytes) = match read {
        Ok(Ok(Some(found))) => found,
        Ok(Ok(None)) => {
            count("not_found");
            return plain(StatusCode::NOT_FOUND, "not found\n");
        }
        Ok(Err((size, ReadError::Range { .. } | ReadError::NotYet { .. }))) => {
            count("not_yet");
            let mut r = plain(StatusCode::RANGE_NOT_SATISFIABLE, "not these bytes\n");
            r.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{size}")).expect("a header value"),
            );
            return r;
        }
        Ok(Err((_, ReadError::Damaged { chunk }))) => {
            count("damaged");
            tracing::warn!(
                chunk,
                path = req.uri().path(),
                "a chunk on disk no longer matches the CRC recorded when it was written; not serving it"
            );
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "damaged on this node\n");
        }
        Ok(Err((_, ReadError::Io(e)))) => {
            count("not_found");
            tracing::debug!(error = %e, path = req.uri().path(), "a peer asked for a file that cannot be read");
            return plain(StatusCode::NOT_FOUND, "not found\n");
        }
        Err(e) => {
            count("error");
            tracing::warn!(error = %e, "reading for a peer failed");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
        }
    };
    count("ok");
    let len = bytes.len() as u64;
    let crcs = chunk.filter(|c| first % c == 0).map(|c| {
        modelpull::mirror::format_crcs(&modelpull::mirror::chunk_crcs(&bytes, c as usize))
    });
    let body = paced(Bytes::from(bytes), state, (memory, place));
    let mut r = Response::new(body);
    *r.status_mut() = if wanted == Wanted::Whole {
        StatusCode::OK
    } else {
        StatusCode::PARTIAL_CONTENT
    };
    let h = r.headers_mut();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(crcs) = crcs {
        h.insert(
            modelpull::mirror::CRC32C,
            HeaderValue::from_str(&crcs).expect("a header value"),
        );
    }
    if wanted != Wanted::Whole {
        let range = format!("bytes {first}-{}/{held_size}", first + len - 1);
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&range).expect("a header value"),
        );
    }
    r
}

/// What a read found: the file's size, the first byte read, and the bytes.
type Found = (u64, u64, Vec<u8>);

/// Reads what `wanted` asks of `path` in `dir`, or of a pull in progress the part of it held
/// from its first byte on (whole chunks of `align` bytes): a reader takes that prefix and asks
/// someone else for the rest. `None` when this node has none of the file, or the file's size
/// with why not.
fn read(
    dir: &Path,
    path: &str,
    wanted: Wanted,
    align: u64,
    journals: &Journals,
) -> Result<Option<Found>, (u64, ReadError)> {
    let held: Held = match modelpull::peer::open(dir, path, journals) {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(None),
        Err(e) => return Err((0, ReadError::Io(e))),
    };
    let size = held.size();
    let (first, last) = match wanted {
        Wanted::Whole if size == 0 => return Ok(Some((0, 0, Vec::new()))),
        Wanted::Whole => (0, size - 1),
        Wanted::Range(first, last) => (first, last.unwrap_or(u64::MAX).min(size.saturating_sub(1))),
    };
    let last = match wanted {
        Wanted::Range(..) => {
            // At most MAX_READ bytes, in whole chunks of the reader's: it takes the prefix and
            // asks again for the rest.
            let cap = first.saturating_add(MAX_READ);
            let last = if last >= cap {
                (cap / align * align).max(first + 1) - 1
            } else {
                last
            };
            held.held_through(first, last, align).unwrap_or(last)
        }
        Wanted::Whole => last,
    };
    match held.read(first, last) {
        Ok(bytes) => Ok(Some((size, first, bytes))),
        Err(e) => Err((size, e)),
    }
}

/// `/models/<storage key>/<path>` → the key and the path, percent-decoded, each segment a plain
/// name (the engine checks the path again before it opens anything).
fn route(uri_path: &str) -> Option<(String, String)> {
    let rest = uri_path.strip_prefix("/models/")?;
    let (key, path) = rest.split_once('/')?;
    if !keys::is_storage_key(key) || path.is_empty() {
        return None;
    }
    let mut segments = Vec::new();
    for raw in path.split('/') {
        let segment = percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .ok()?;
        if segment.is_empty() || segment.contains(['/', '\0']) {
            return None;
        }
        segments.push(segment.into_owned());
    }
    Some((key.to_owned(), segments.join("/")))
}

/// The byte range a `Range` header asks for: one range, `bytes=A-B` or `bytes=A-`; `None`
/// for anything else (several ranges, a suffix range, another unit).
fn wanted_range(value: Option<&HeaderValue>) -> Option<Wanted> {
    let Some(value) = value else {
        return Some(Wanted::Whole);
    };
    let spec = value.to_str().ok()?.trim().strip_prefix("bytes=")?;
    let (first, last) = spec.split_once('-')?;
    let first = first.trim().parse().ok()?;
    let last = match last.trim() {
        "" => None,
        l => Some(l.parse().ok()?),
    };
    Some(Wanted::Range(first, last))
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// The answer to come back later: no place (or memory) for the request now.
fn busy() -> Response<Body> {
    plain(StatusCode::SERVICE_UNAVAILABLE, "busy: ask again\n")
}

/// `bytes` as a body of [`FRAME`]-sized frames, each booked with the rate limiter first;
/// `held` (its memory and its place) is given back once the last frame is sent.
fn paced(
    bytes: Bytes,
    state: &Arc<State>,
    held: (OwnedSemaphorePermit, OwnedSemaphorePermit),
) -> Body {
    let state = (state.clone(), held);
    let frames = futures::stream::unfold((bytes, state), |(mut rest, state)| async move {
        if rest.is_empty() {
            return None;
        }
        let (state, held) = state;
        let n = rest.len().min(FRAME);
        if let Some(limiter) = &state.limiter {
            let wait = limiter.book(n);
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        state.metrics.sent_bytes.inc_by(n as u64);
        let frame = rest.split_to(n);
        Some((
            Ok::<_, Infallible>(Frame::data(frame)),
            (rest, (state, held)),
        ))
    });
    StreamBody::new(frames).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_take_a_storage_key_and_plain_segments() {
        assert_eq!(
            route("/models/0123456789abcdef/sub/model%201.bin"),
            Some(("0123456789abcdef".into(), "sub/model 1.bin".into()))
        );
        for bad in [
            "/models/0123456789abcdef/",
            "/models/0123456789abcdef",
            "/models/0123456789ABCDEF/x",
            "/models/.modelpull/markers/x",
            "/models/0123456789abcdef/a%2Fb",
            "/models/0123456789abcdef/a//b",
            "/models/0123456789abcdef/%00",
            "/models/0123456789abcdef/%ff",
            "/metrics",
            "/models/../etc/passwd",
        ] {
            assert_eq!(route(bad), None, "{bad}");
        }
    }

    #[test]
    fn one_plain_byte_range_is_understood() {
        let v = |s: &'static str| Some(HeaderValue::from_static(s));
        assert_eq!(wanted_range(None), Some(Wanted::Whole));
        assert_eq!(
            wanted_range(v("bytes=0-99").as_ref()),
            Some(Wanted::Range(0, Some(99)))
        );
        assert_eq!(
            wanted_range(v("bytes=5-").as_ref()),
            Some(Wanted::Range(5, None))
        );
        for bad in ["bytes=-5", "bytes=0-1,3-4", "items=0-1", "bytes=a-b"] {
            assert_eq!(wanted_range(v(bad).as_ref()), None, "{bad}");
        }
    }
}
