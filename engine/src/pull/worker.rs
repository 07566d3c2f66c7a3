//! What runs on an engine core: its share of the pull's workers, each one connection looping
//! over claims from the shared scheduler, holding a chunk buffer while it has work.
//!
//! The per-byte path is here: read from the socket straight into the aligned buffer, CRC each
//! slice as it lands, hash the chunk at once when it is at a free hash cursor, write it to the
//! part file at its offset, then record it (and hand it to the hash cursor if it was not hashed
//! yet). Everything else (bookkeeping, retries) is a call into [`Job`] between chunks.
//!
//! It stays one file, longer than most, because it is the per-byte path: whoever checks what
//! happens to a chunk's bytes, from the socket to the journal, finds every step here.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::state::{
    AfterChunk, Claim, ClaimKind, HashStep, Job, Kick, MirrorFault, Overload, Work,
};
use crate::buf::AlignedBuf;
use crate::digest::Algorithm;
use crate::digest::crc;
use crate::digest::ordered::OrderedHashers;
use crate::disk::part;
use crate::error::Error;
use crate::http::head::ContentRange;
use crate::http::{Client, HttpError, Request, Response, Timeouts, tls};
use crate::mirror;

/// Per-core resources shared by the core's workers.
struct CoreCtx {
    client: Client,
    files: RefCell<HashMap<usize, (u32, Rc<monoio::fs::File>)>>,
}

/// Open part files a core keeps at most; beyond, the cache is emptied and files reopened.
const MAX_OPEN: usize = 64;

impl CoreCtx {
    /// This core's handle on a file's part; `None` when the file was started over since
    /// `generation` (the caller's work on it is void).
    fn file(
        &self,
        job: &Job,
        file: usize,
        generation: u32,
    ) -> Result<Option<Rc<monoio::fs::File>>, Error> {
        if let Some((g, f)) = self.files.borrow().get(&file)
            && *g == generation
        {
            return Ok(Some(f.clone()));
        }
        let path = &job.metas[file].part;
        let Some((_, _, direct)) = job.layout(file, generation) else {
            // Started over: a handle cached for an older generation holds a removed part.
            self.forget(file);
            return Ok(None);
        };
        let opened = part::open(path, direct);
        // The file may have been started over between the check and the open: its part is
        // then gone, or is the next generation's, which this generation must never write.
        if job.layout(file, generation).is_none() {
            self.forget(file);
            return Ok(None);
        }
        let f = Rc::new(opened.map_err(|e| Error::local("open", path, e))?);
        let mut files = self.files.borrow_mut();
        if files.len() >= MAX_OPEN {
            files.clear();
        }
        files.insert(file, (generation, f.clone()));
        Ok(Some(f))
    }

    fn forget(&self, file: usize) {
        self.files.borrow_mut().remove(&file);
    }
}

/// How a fetch ended badly.
enum Failure {
    /// Worth another try from chunk `from`.
    Retry { from: u64, err: HttpError },
    /// A mirror sent what contradicts the origin (a chunk's CRC, a range, a size): the rest
    /// goes elsewhere from chunk `from`, and the mirror is not asked again.
    Untrusted { from: u64, err: HttpError },
    /// A mirror answered nothing within the connect or stall timeout: the range goes
    /// elsewhere, and the mirror is not asked again.
    Unresponsive { err: HttpError },
    /// The pull cannot succeed.
    Fatal(Error),
}

/// A mirror's failure to answer as asked: it is not trusted again.
fn distrust(f: Failure) -> Failure {
    match f {
        Failure::Retry { from, err } => Failure::Untrusted { from, err },
        f => f,
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Fatal(e)
    }
}

/// Which of the pull's cores this is, and how many there are.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Share {
    pub core: usize,
    pub cores: usize,
}

impl Share {
    /// This core's part of `total` workers.
    fn of(self, total: usize) -> usize {
        total / self.cores + usize::from(self.core < total % self.cores)
    }
}

/// How often a core matches its workers to the pull's connection target.
const SUPERVISE: Duration = Duration::from_millis(20);

/// A core's workers: how many run, and how many of them have a claim in hand.
#[derive(Debug, Default)]
struct Workers {
    running: Cell<usize>,
    busy: Cell<usize>,
}

impl Workers {
    /// Whether one more worker should start: the core is under its share of the target and
    /// every worker it runs is busy. One idle worker per core keeps asking for work, and finds
    /// a host full when work waits for a connection (which is how a tuner learns to add one);
    /// more idle ones would only poll the scheduler.
    /// `target`: this core's share of the pull's connection target.
    fn wants_one(&self, target: usize) -> bool {
        let running = self.running.get();
        running < target && running <= self.busy.get()
    }
}

/// Runs this core's share of the pull's workers until the pull is finished or failed: up to
/// its share of the connections the hosts' tuners allow, started as they are needed (a worker
/// that takes work starts the next) and stopped when idle or over the share.
pub(crate) async fn run_core(job: Arc<Job>, trust: tls::Trust, share: Share) {
    let ctx = Rc::new(CoreCtx {
        client: Client::new(
            trust,
            Timeouts {
                connect: job.opts.connect_timeout,
                stall: job.opts.stall_timeout,
            },
            job.opts.proxy.clone(),
        ),
        files: RefCell::new(HashMap::new()),
    });
    let _guard = FailOnPanic(job.clone());
    let workers = Rc::new(Workers::default());
    loop {
        if workers.wants_one(share.of(job.connection_target())) {
            start(&job, &ctx, &workers, share);
        }
        if job.over() {
            break;
        }
        if let Some((file, generation, records)) = job.idle_checkpoint() {
            let flushed = flush(&job, &ctx, file, generation).await;
            if let Err(e) =
                flushed.and_then(|()| job.checkpoint_done(file, generation, records, None))
            {
                job.fail(e);
            }
        }
        monoio::time::sleep(SUPERVISE).await;
    }
    while workers.running.get() > 0 {
        monoio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn start(job: &Arc<Job>, ctx: &Rc<CoreCtx>, workers: &Rc<Workers>, share: Share) {
    workers.running.set(workers.running.get() + 1);
    monoio::spawn(worker(job.clone(), ctx.clone(), workers.clone(), share));
}

/// Ends the pull when a core dies of a bug, so that the other cores stop instead of waiting
/// for work the dead core held.
struct FailOnPanic(Arc<Job>);

impl Drop for FailOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.fail(Error::Runtime(
                "an engine core panicked; this is a bug".into(),
            ));
        }
    }
}

/// One connection's loop: a buffer, a claim, the fetch, and again. The buffer is taken only
/// for work and given back while waiting, so idle workers hold no memory; a worker that finds
/// none (every buffer the pull may have is held) waits, as the connection it would open does.
async fn worker(job: Arc<Job>, ctx: Rc<CoreCtx>, workers: Rc<Workers>, share: Share) {
    let mut held: Option<AlignedBuf> = None;
    loop {
        if job.cancelled() {
            job.fail(Error::Interrupted);
            break;
        }
        let target = share.of(job.connection_target());
        if workers.running.get() > target {
            break;
        }
        let Some(buf) = held.take().or_else(|| job.take_buffer()) else {
            if job.over() {
                break;
            }
            monoio::time::sleep(POLL).await;
            continue;
        };
        match job.claim() {
            Work::Finished => {
                job.pool.put(buf);
                break;
            }
            Work::Wait(d) => {
                job.pool.put(buf);
                // A second idle worker on this core only polls: it stops.
                if workers.running.get() > workers.busy.get() + 1 {
                    break;
                }
                monoio::time::sleep(d.max(Duration::from_millis(1))).await;
            }
            Work::Fetch(claim) => {
                workers.busy.set(workers.busy.get() + 1);
                if workers.wants_one(target) {
                    start(&job, &ctx, &workers, share);
                }
                job.metrics.connections_active.inc();
                let mut streamed = false;
                let (outcome, b) = fetch(&job, &ctx, &claim, buf, &mut streamed).await;
                held = Some(b);
                job.metrics.connections_active.dec();
                job.release_host(&claim, streamed);
                workers.busy.set(workers.busy.get() - 1);
                match outcome {
                    Ok(()) if claim.source > 0 => job.mirror_served(&claim),
                    Ok(()) => {}
                    Err(Failure::Retry { from, err }) => {
                        let overload = job.overloaded(&claim, &err);
                        if claim.source == 0 || overload == Overload::Spared {
                            // A mirror refusing a request its cut took back paces the pull: it
                            // stays the range's source.
                            job.retry(&claim, from, err, overload);
                        } else {
                            job.mirror_failed(&claim, from, err, MirrorFault::Failed);
                        }
                    }
                    Err(Failure::Untrusted { from, err }) => {
                        job.mirror_failed(&claim, from, err, MirrorFault::Untrusted);
                    }
                    Err(Failure::Unresponsive { err }) => {
                        job.mirror_failed(&claim, claim.start, err, MirrorFault::Unresponsive);
                    }
                    Err(Failure::Fatal(e)) => job.fail(e),
                }
            }
        }
    }
    if let Some(buf) = held {
        job.pool.put(buf);
    }
    workers.running.set(workers.running.get() - 1);
}

/// How long a worker without a buffer waits before it looks again.
const POLL: Duration = Duration::from_millis(5);

fn validator(resp: &Response) -> String {
    match (&resp.head.etag, &resp.head.last_modified) {
        (Some(e), _) => format!("etag:{e}"),
        (None, Some(lm)) => format!("lm:{lm}"),
        (None, None) => String::new(),
    }
}

/// Whether the response's validator contradicts the one recorded for the file.
fn changed(recorded: &str, resp: &Response) -> bool {
    if let (Some(e), Some(r)) = (&resp.head.etag, recorded.strip_prefix("etag:")) {
        return e != r;
    }
    if let (Some(lm), Some(r)) = (&resp.head.last_modified, recorded.strip_prefix("lm:")) {
        return lm != r;
    }
    false
}

/// Turns a request error into a retry or a fatal error. A redirect target that stopped
/// working (presigned URLs expire) sends the file back to its source URL first.
fn classify(job: &Job, claim: &Claim, from: u64, err: HttpError) -> Failure {
    // A refusal from somewhere other than the source itself comes from a redirect target
    // (a CDN's presigned URL that expired): the file goes back to its source URL, which
    // hands out a fresh one. Other workers may have reset it already.
    let expired = matches!(
        &err,
        HttpError::Status {
            status: 401 | 403 | 404 | 410,
            url,
            ..
        } if *url != job.metas[claim.file].source
    );
    if expired {
        job.reset_url(claim.file);
    }
    if err.is_retryable() || expired {
        return Failure::Retry { from, err };
    }
    Failure::Fatal(Error::Source {
        file: job.metas[claim.file].target.path.clone(),
        attempts: claim.attempts + 1,
        source: err,
    })
}

fn protocol(from: u64, message: String) -> Failure {
    Failure::Retry {
        from,
        err: HttpError::Protocol(message),
    }
}

/// Checks a 206's `Content-Range` against the bytes asked for.
fn check_range(
    resp: &Response,
    first: u64,
    last: u64,
    total: Option<u64>,
    from: u64,
) -> Result<Option<u64>, Failure> {
    match resp.head.content_range {
        Some(ContentRange::Bytes {
            first: f,
            last: l,
            total: t,
        }) if f == first && l == last && (total.is_none() || t == total) => {
            if resp.remaining().is_some_and(|n| n != last - first + 1) {
                return Err(protocol(
                    from,
                    format!(
                        "Content-Length does not match Content-Range {f}-{l} from {}",
                        crate::redact(&resp.url)
                    ),
                ));
            }
            Ok(t)
        }
        Some(ContentRange::Bytes {
            first: f,
            last: l,
            total: t,
        }) => Err(protocol(
            from,
            format!(
                "{} answered bytes {f}-{l}/{} for requested bytes {first}-{last}",
                crate::redact(&resp.url),
                t.map_or("*".to_owned(), |t| t.to_string())
            ),
        )),
        _ => Err(protocol(
            from,
            format!(
                "{} answered 206 without a usable Content-Range",
                crate::redact(&resp.url)
            ),
        )),
    }
}

/// A chunk span and the CRC32C the mirror sent for each of its chunks, if it sent them.
type MirroredSpan = ((u64, u64), Option<Vec<u32>>);

/// Checks a mirror's answer to a range: a 206 with the bytes asked for (or, from a peer whose
/// pull is in progress, whole chunks of them from the first on), out of a file of the origin's
/// size, and one CRC32C per chunk when it sends them. A mirror that answers
/// otherwise contradicts the origin and is not trusted again; one that refuses (an error
/// status) only loses the range.
fn mirrored_span(
    claim: &Claim,
    chunk: u64,
    size: u64,
    resp: &Response,
) -> Result<Option<MirroredSpan>, Failure> {
    let from = claim.start;
    match resp.status() {
        206 => {}
        200 => {
            let message = format!(
                "{} ignored the Range header (HTTP 200)",
                crate::redact(&resp.url)
            );
            return Err(distrust(protocol(from, message)));
        }
        _ => {
            let err = resp.error_for_status();
            return Err(Failure::Retry { from, err });
        }
    }
    // A peer may send the part of the range it holds from its first byte on, in whole chunks.
    let asked = (claim.end * chunk).min(size) - 1;
    let last = match resp.head.content_range {
        Some(ContentRange::Bytes { first, last: l, .. })
            if first == from * chunk && l < asked && (l + 1).is_multiple_of(chunk) =>
        {
            l
        }
        _ => asked,
    };
    check_range(resp, from * chunk, last, Some(size), from).map_err(distrust)?;
    let end = (last + 1).div_ceil(chunk);
    let crcs = match resp.head.header(mirror::CRC32C) {
        None => None,
        Some(value) => match mirror::parse_crcs(value) {
            Some(crcs) if crcs.len() as u64 == end - claim.start => Some(crcs),
            _ => {
                let message = format!(
                    "{} sent a malformed `{}` header for chunks {from}..{}",
                    crate::redact(&resp.url),
                    mirror::CRC32C,
                    claim.end
                );
                return Err(distrust(protocol(from, message)));
            }
        },
    };
    Ok(Some(((claim.start, end), crcs)))
}

/// Interprets the answer to a claim's request; returns the chunk span the body carries, or
/// `None` when there is nothing more to do with this response.
fn interpret(
    job: &Job,
    claim: &Claim,
    size: u64,
    resp: &Response,
) -> Result<Option<(u64, u64)>, Failure> {
    let meta = &job.metas[claim.file];
    let chunk = job.chunk_size();
    let status = resp.status();
    match claim.kind {
        ClaimKind::Probe => {
            let (size, ranged) = match status {
                206 => {
                    // A probe with an empty span asked for the first byte only.
                    let want_last = (claim.end * chunk).saturating_sub(1);
                    let total = match resp.head.content_range {
                        Some(ContentRange::Bytes { total: Some(t), .. }) => t,
                        Some(ContentRange::Bytes { total: None, .. }) => {
                            return Err(Failure::Fatal(Error::Remote {
                                file: meta.target.path.clone(),
                                message: format!(
                                    "{} does not state the file's size (Content-Range total `*`)",
                                    meta.source
                                ),
                            }));
                        }
                        _ => {
                            return Err(protocol(
                                0,
                                format!(
                                    "{} answered 206 without a usable Content-Range",
                                    meta.source
                                ),
                            ));
                        }
                    };
                    check_range(
                        resp,
                        0,
                        want_last.min(total.saturating_sub(1)),
                        Some(total),
                        0,
                    )?;
                    (total, true)
                }
                200 => match resp.remaining() {
                    Some(len) => (len, false),
                    None => {
                        return Err(Failure::Fatal(Error::Remote {
                            file: meta.target.path.clone(),
                            message: format!(
                                "{} supports neither ranges nor a Content-Length; its size cannot be known",
                                meta.source
                            ),
                        }));
                    }
                },
                416 if resp.head.content_range == Some(ContentRange::Unsatisfied { total: 0 }) => {
                    (0, true)
                }
                _ => return Err(classify(job, claim, 0, resp.error_for_status())),
            };
            if !ranged {
                tracing::info!(file = %meta.target.path, "the server ignores Range; fetching on one connection");
            }
            let end = job.start_file(claim, size, validator(resp), resp.url.clone(), ranged)?;
            Ok((status != 416 && end > 0).then_some((0, end)))
        }
        ClaimKind::Validate => {
            let recorded = job.lock().files[claim.file].validator.clone();
            let total = match status {
                206 => {
                    let (first, last) = if claim.end > claim.start {
                        (claim.start * chunk, (claim.end * chunk).min(size) - 1)
                    } else {
                        (0, 0)
                    };
                    check_range(resp, first, last, None, claim.start)?
                }
                200 => None,
                _ => return Err(classify(job, claim, claim.start, resp.error_for_status())),
            };
            if status == 200
                || total != Some(size)
                || changed(&recorded, resp)
                || validator(resp).is_empty()
            {
                job.restart(
                    claim.file,
                    claim.generation,
                    "the file on the server is not the one the interrupted pull was fetching",
                    None,
                    false,
                );
                return Ok(None);
            }
            job.validated(claim, resp.url.clone());
            Ok((claim.end > claim.start).then_some((claim.start, claim.end)))
        }
        ClaimKind::Range => {
            if status == 200 {
                return Err(protocol(
                    claim.start,
                    format!("{} ignored the Range header (HTTP 200)", meta.source),
                ));
            }
            if status != 206 {
                return Err(classify(job, claim, claim.start, resp.error_for_status()));
            }
            let recorded = job.lock().files[claim.file].validator.clone();
            if changed(&recorded, resp) {
                job.restart(
                    claim.file,
                    claim.generation,
                    "the file changed on the server during the download",
                    None,
                    false,
                );
                return Ok(None);
            }
            check_range(
                resp,
                claim.start * chunk,
                (claim.end * chunk).min(size) - 1,
                Some(size),
                claim.start,
            )?;
            Ok(Some((claim.start, claim.end)))
        }
    }
}

async fn fetch(
    job: &Job,
    ctx: &CoreCtx,
    claim: &Claim,
    buf: AlignedBuf,
    streamed: &mut bool,
) -> (Result<(), Failure>, AlignedBuf) {
    let chunk = job.chunk_size();
    let meta = &job.metas[claim.file];
    let mirror = claim.source.checked_sub(1).map(|i| &meta.target.mirrors[i]);
    let (url, size) = {
        let st = job.lock();
        let fs = &st.files[claim.file];
        if fs.generation != claim.generation {
            return (Ok(()), buf);
        }
        // Within one generation a file's size never changes.
        (mirror.unwrap_or(&fs.url).clone(), fs.size)
    };
    let range = match claim.kind {
        ClaimKind::Probe | ClaimKind::Validate if claim.end == claim.start => (0, 0),
        ClaimKind::Probe => (0, claim.end * chunk - 1),
        _ => (claim.start * chunk, (claim.end * chunk).min(size) - 1),
    };
    let auth = match mirror {
        // A mirror gets no credentials, neither the store's nor the caller's headers.
        Some(_) => Ok(vec![(mirror::CHUNK_SIZE.to_owned(), chunk.to_string())]),
        None => meta.target.auth.headers("GET", &url),
    };
    let headers = match auth {
        Ok(h) if mirror.is_some() => h,
        Ok(h) if h.is_empty() => job.opts.headers.clone(),
        Ok(h) => job.opts.headers.iter().cloned().chain(h).collect(),
        Err(message) => {
            // A token endpoint that failed once may answer next time: retried like a request.
            let err = HttpError::Protocol(format!("cannot authorise the request: {message}"));
            return (
                Err(Failure::Retry {
                    from: claim.start,
                    err,
                }),
                buf,
            );
        }
    };
    let request = Request {
        method: "GET",
        url: &url,
        range: Some(range),
        headers: &headers,
        headers_for: if mirror.is_some() {
            None
        } else {
            meta.origin.as_ref()
        },
        body: None,
    };
    let mut resp = match ctx.client.send(&request).await {
        Ok(r) => r,
        Err(err @ HttpError::Timeout { .. }) if mirror.is_some() => {
            return (Err(Failure::Unresponsive { err }), buf);
        }
        Err(err) if mirror.is_some() => {
            return (
                Err(Failure::Retry {
                    from: claim.start,
                    err,
                }),
                buf,
            );
        }
        Err(e) => return (Err(classify(job, claim, claim.start, e)), buf),
    };
    let answer = match mirror {
        Some(_) => mirrored_span(claim, chunk, size, &resp),
        None => interpret(job, claim, size, &resp).map(|s| s.map(|span| (span, None))),
    };
    let (span, sent_crcs) = match answer {
        Ok(Some(span)) => span,
        Ok(None) => return kick(job, ctx, claim, buf).await,
        Err(f) => {
            // An answer without the bytes (a peer's "not yet", a busy or missing file): its
            // short body is read, and the connection serves the next request instead of a new
            // one. Peers of a group answer "not yet" several times a second.
            if !(200..300).contains(&resp.status()) {
                resp.discard(&ctx.client).await;
            }
            return (Err(f), buf);
        }
    };
    let Some((size, _, direct)) = job.layout(claim.file, claim.generation) else {
        return (Ok(()), buf);
    };
    job.streaming(claim);
    *streamed = true;
    let host_bytes = &job.host_bytes[job.host_of(claim.file, claim.source)];
    let mirror_bytes = mirror.map(|_| &job.metrics.mirror_bytes);
    // The CRC32C a mirror vouches for is checked even where the file's own CRCs do not
    // include it (a store that lists crc64nvme).
    let crc32c_at = job.metas[claim.file]
        .crcs
        .iter()
        .position(|&a| a == Algorithm::Crc32c);
    let mut buf = buf;
    for c in span.0..span.1 {
        if job.cancelled() || job.is_failed() || !job.begin_chunk(claim, c) {
            // Cut short: the connection is dropped mid-body, never reused.
            return (Ok(()), buf);
        }
        let len = job.chunk_len(size, c);
        buf.set_len(0);
        let mut crcs = crc::Running::new(&job.metas[claim.file].crcs);
        while buf.len() < len {
            let want = len - buf.len();
            let before = buf.len();
            let (res, b) = resp.read_body(buf, want).await;
            buf = b;
            match res {
                Ok(0) => {
                    let err = HttpError::Protocol(format!(
                        "{} ended the body early",
                        crate::redact(&resp.url)
                    ));
                    return (Err(Failure::Retry { from: c, err }), buf);
                }
                Ok(n) => {
                    crcs.update(&buf.as_slice()[before..before + n]);
                    job.progress.downloaded_bytes.fetch_add(n as u64, Relaxed);
                    host_bytes.fetch_add(n as u64, Relaxed);
                    if let Some(m) = mirror_bytes {
                        m.inc_by(n as u64);
                    }
                    job.metrics.downloaded_bytes.inc_by(n as u64);
                    if let Some(limiter) = &job.limiter {
                        let wait = limiter.book(n);
                        if !wait.is_zero() {
                            monoio::time::sleep(wait).await;
                        }
                    }
                }
                Err(err) => return (Err(Failure::Retry { from: c, err }), buf),
            }
        }
        let crcs = crcs.finish();
        if let Some(sent) = &sent_crcs {
            let got = match crc32c_at {
                Some(k) => crcs[k] as u32,
                None => crc::checksum(Algorithm::Crc32c, buf.as_slice()) as u32,
            };
            let want = sent[(c - span.0) as usize];
            if got != want {
                let err = HttpError::Protocol(format!(
                    "{} sent chunk {c} with CRC32C {got:08x}, not the {want:08x} it announced",
                    crate::redact(&resp.url)
                ));
                return (Err(Failure::Untrusted { from: c, err }), buf);
            }
        }
        if let Some(h) = job.hashers_before_write(claim, c) {
            hash_before_write(job, claim.file, claim.generation, h, &buf);
        }
        let file = match ctx.file(job, claim.file, claim.generation) {
            Ok(Some(f)) => f,
            // The file was started over meanwhile: this worker's bytes are not wanted.
            Ok(None) => return (Ok(()), buf),
            Err(_) if !job.is_current(claim.file, claim.generation) => return (Ok(()), buf),
            Err(e) => return (Err(e.into()), buf),
        };
        let (res, b) = part::write_chunk(&file, buf, c * chunk, direct).await;
        buf = b;
        if let Err(e) = res {
            return (
                Err(Error::local("write", &job.metas[claim.file].part, e).into()),
                buf,
            );
        }
        let (res, b) = after_chunk(job, ctx, claim, c, buf, crcs).await;
        buf = b;
        if let Err(e) = res {
            return (Err(e.into()), buf);
        }
    }
    // A peer that sent the part it holds: the rest is asked of the next source, as a range
    // the peer does not hold yet is.
    let partial =
        (span.1 < claim.end && claim.kind == ClaimKind::Range).then(|| HttpError::Status {
            status: 416,
            url: crate::redact(&resp.url),
            retry_after: None,
        });
    if resp.body_done() {
        resp.release(&ctx.client);
    }
    if let Some(err) = partial {
        return (Err(Failure::Retry { from: span.1, err }), buf);
    }
    job.finish_range(claim);
    if claim.kind != ClaimKind::Range {
        return kick(job, ctx, claim, buf).await;
    }
    (Ok(()), buf)
}

/// Hashes or publishes a file that needs no more bytes, if it is in that state.
async fn kick(
    job: &Job,
    ctx: &CoreCtx,
    claim: &Claim,
    buf: AlignedBuf,
) -> (Result<(), Failure>, AlignedBuf) {
    let res = match job.kick(claim) {
        Kick::Nothing => return (Ok(()), buf),
        Kick::Finalize => finalize(job, ctx, claim.file, claim.generation, None)
            .await
            .map(|()| buf),
        Kick::Hash(h) => hash_loop(job, ctx, claim.file, claim.generation, h, buf, false).await,
    };
    match res {
        Ok(buf) => (Ok(()), buf),
        Err(e) => (Err(e.into()), job.pool.replace_lost()),
    }
}

/// Records a written chunk and does what follows from it.
async fn after_chunk(
    job: &Job,
    ctx: &CoreCtx,
    claim: &Claim,
    c: u64,
    buf: AlignedBuf,
    crcs: Vec<u64>,
) -> (Result<(), Error>, AlignedBuf) {
    let next = match job.complete_chunk(claim, c, buf, crcs) {
        Ok(n) => n,
        Err(e) => return (Err(e), job.pool.replace_lost()),
    };
    let res = match next {
        AfterChunk::Nothing(buf) => Ok(buf),
        AfterChunk::Hash(h, buf) => {
            hash_loop(job, ctx, claim.file, claim.generation, h, buf, true).await
        }
        AfterChunk::Resume(h, buf) => {
            hash_loop(job, ctx, claim.file, claim.generation, h, buf, false).await
        }
        AfterChunk::Finalize(buf) => finalize(job, ctx, claim.file, claim.generation, None)
            .await
            .map(|()| buf),
        AfterChunk::Checkpoint { records, buf } => {
            match flush(job, ctx, claim.file, claim.generation).await {
                Ok(()) => job
                    .checkpoint_done(claim.file, claim.generation, records, None)
                    .map(|()| buf),
                Err(e) => Err(e),
            }
        }
    };
    match res {
        Ok(buf) => (Ok(()), buf),
        Err(e) => (Err(e), job.pool.replace_lost()),
    }
}

async fn flush(job: &Job, ctx: &CoreCtx, file: usize, generation: u32) -> Result<(), Error> {
    let Some(f) = ctx.file(job, file, generation)? else {
        return Ok(());
    };
    f.sync_data()
        .await
        .map_err(|e| Error::local("flush", &job.metas[file].part, e))
}

/// Hashes the chunk at the cursor from the buffer it arrived in, before it is written, then
/// the chunks parked after it. What needs the buffer or a flushed part (reading a chunk back,
/// a checkpoint, finalizing) waits until the chunk is written and the hashers are resumed.
fn hash_before_write(
    job: &Job,
    file: usize,
    generation: u32,
    hashers: OrderedHashers,
    buf: &AlignedBuf,
) {
    let mut hashers = Some(hashers);
    hashers
        .as_mut()
        .expect("hashers in hand")
        .update(buf.as_slice());
    while let HashStep::Buffer(parked) = job.hash_step(file, generation, &mut hashers, false, true)
    {
        hashers
            .as_mut()
            .expect("hashers in hand")
            .update(parked.as_slice());
        job.pool.put(parked);
    }
}

/// Moves a file's hash cursor as far as the chunks on hand allow. `buf` holds the chunk at
/// the cursor when `have` is set; chunks parked in memory are taken from the window, chunks
/// that were not kept are read back from the part file.
async fn hash_loop(
    job: &Job,
    ctx: &CoreCtx,
    file: usize,
    generation: u32,
    hashers: OrderedHashers,
    mut buf: AlignedBuf,
    mut have: bool,
) -> Result<AlignedBuf, Error> {
    let mut hashers = Some(hashers);
    let Some((size, _, direct)) = job.layout(file, generation) else {
        return Ok(buf);
    };
    let chunk = job.chunk_size();
    let mut checkpointed = false;
    loop {
        if have {
            hashers
                .as_mut()
                .expect("hashers in hand")
                .update(buf.as_slice());
            have = false;
            checkpointed = false;
        }
        match job.hash_step(file, generation, &mut hashers, checkpointed, false) {
            HashStep::Buffer(parked) => {
                job.pool.put(std::mem::replace(&mut buf, parked));
                have = true;
            }
            HashStep::Read => {
                let c = hashers.as_ref().expect("hashers in hand").position() / chunk;
                let Some(f) = ctx.file(job, file, generation)? else {
                    return Ok(buf);
                };
                let (res, b) =
                    part::read_chunk(&f, buf, c * chunk, job.chunk_len(size, c), direct).await;
                buf = b;
                res.map_err(|e| Error::local("read back", &job.metas[file].part, e))?;
                have = true;
            }
            HashStep::Checkpoint { records } => {
                flush(job, ctx, file, generation).await?;
                job.checkpoint_done(file, generation, records, hashers.as_ref())?;
                checkpointed = true;
            }
            HashStep::Finalize => {
                finalize(job, ctx, file, generation, hashers.take()).await?;
                return Ok(buf);
            }
            HashStep::Stop | HashStep::Stale => return Ok(buf),
        }
    }
}

/// Verifies a complete file and renames it into the staging directory.
async fn finalize(
    job: &Job,
    ctx: &CoreCtx,
    file: usize,
    generation: u32,
    hashers: Option<OrderedHashers>,
) -> Result<(), Error> {
    let Some(record) = job.verify(file, generation, hashers)? else {
        return Ok(());
    };
    let meta = &job.metas[file];
    ctx.forget(file);
    part::publish(&meta.part, &meta.final_path, record.size)
        .map_err(|e| Error::local("publish", &meta.final_path, e))?;
    job.published();
    tracing::info!(file = %meta.target.path, size = record.size, digests = ?record.digests, "verified");
    Ok(())
}
