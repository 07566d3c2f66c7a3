//! The shared state of one pull: every file's progress, the scheduler that hands out work, and
//! the bookkeeping of chunks, hash cursors and retries.
//!
//! One mutex guards it all. It is taken a few times per chunk (megabytes), never per byte, and
//! never across I/O: hashing, network and disk work happen outside it. That keeps every
//! invariant in one place, which matters more here than the last microsecond.
//!
//! This module holds the types and the lock. The code that works on them is split by concern
//! into child modules, each adding `impl Job` (or `impl FileState`) blocks whose methods take
//! the lock themselves; being children, they see the fields that stay private to `state`:
//!
//! - `schedule`: which claim a worker gets next, within each host's connection limit;
//! - `hosts`: the connections each host has, and the tuners that set how many it may have;
//! - `window`: how far ahead of their hash cursors the files may fetch;
//! - `steal`: ranges in flight, and splitting one when nothing else can be claimed;
//! - `probe`: what a file's first answer sets up, and where its requests go;
//! - `hash`: the hash cursor: who hashes which chunk next, and when a file is complete;
//! - `checkpoint`: when the journal vouches for what is on disk;
//! - `verify`: a complete file checked against what is expected;
//! - `retry`: requests tried again, files started over, and when the pull gives up;
//! - `resume`: the state each file starts a pull in, from what an earlier run left.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use url::Url;

use super::Options;
use super::limits::RateLimiter;
use super::tune::Tuner;
use crate::buf::AlignedBuf;
use crate::digest::ordered::OrderedHashers;
use crate::digest::{Algorithm, Digest};
use crate::disk::journal::Journal;
use crate::disk::staging::FileRecord;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::pool::BufPool;
use crate::progress::Progress;
use crate::target::Target;

mod checkpoint;
mod hash;
mod hosts;
mod peer_wait;
mod probe;
mod resume;
mod retry;
mod schedule;
mod steal;
mod verify;
mod window;

pub(crate) use hosts::Overload;
use hosts::Pick;
pub(crate) use retry::MirrorFault;
pub(crate) use verify::first_mismatch;

/// What never changes about a file during a pull.
#[derive(Debug)]
pub(crate) struct FileMeta {
    pub target: Target,
    /// The source as logs and the journal may show it.
    pub source: String,
    /// Where the target's credentials may go: its own scheme, host and port only.
    pub origin: Option<crate::http::conn::Endpoint>,
    pub part: PathBuf,
    pub journal: PathBuf,
    pub final_path: PathBuf,
    /// Digests computed in order (sha256, sha1, md5).
    pub ordered: Vec<Algorithm>,
    /// CRCs computed per chunk, never empty. The first is the one the journal checks a chunk
    /// with on resume: crc32c, unless the store lists other CRCs and not crc32c, when the
    /// first of those does the job (it is computed anyway).
    pub crcs: Vec<Algorithm>,
}

impl FileMeta {
    pub fn new(target: Target, part: PathBuf, journal: PathBuf, final_path: PathBuf) -> Self {
        let mut ordered: Vec<Algorithm> = target
            .expected
            .iter()
            .map(|d| d.algorithm)
            .filter(|a| a.is_ordered())
            .collect();
        if target.expected.is_empty() {
            // Nothing to check against: compute sha256 anyway so the report can vouch for it.
            ordered.push(Algorithm::Sha256);
        }
        ordered.sort();
        ordered.dedup();
        // A second CRC over every byte for the journal alone cost 0.04 CPU-s/GB (S3 objects
        // with crc64nvme); any of these CRCs catches a chunk that did not reach the disk.
        let listed: Vec<Algorithm> = target
            .expected
            .iter()
            .map(|d| d.algorithm)
            .filter(|a| !a.is_ordered())
            .collect();
        let mut crcs = Vec::new();
        if listed.is_empty() || listed.contains(&Algorithm::Crc32c) {
            crcs.push(Algorithm::Crc32c);
        }
        for a in listed {
            if !crcs.contains(&a) {
                crcs.push(a);
            }
        }
        Self {
            source: crate::redact(&target.url),
            origin: crate::http::conn::Endpoint::of(&target.url).ok(),
            target,
            part,
            journal,
            final_path,
            ordered,
            crcs,
        }
    }

    pub fn algorithms(&self) -> Vec<Algorithm> {
        self.ordered.iter().chain(&self.crcs).copied().collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Nothing known: the first request probes size and validator.
    New,
    /// Resumed from a journal: the first request checks the server still has the same object.
    Validate,
    /// A worker is on the first request.
    Probing,
    Active,
    Done,
}

#[derive(Debug, Clone)]
struct Pending {
    end: u64,
    attempts: u32,
    not_before: Option<Instant>,
    /// Sources (bit per index in the file's sources) this range failed on: it goes to
    /// another one.
    avoid: u64,
    /// Since when the range waits for a mirror to have it (see `OriginGate`).
    waiting: Option<Waited>,
}

/// How long a range has waited for a mirror to have it, and how many times the mirror that
/// fetches its block from the origin (`OriginGate::holder`) has answered that it has not yet.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Waited {
    pub since: Instant,
    pub not_yet: u32,
}

#[derive(Debug)]
struct ActiveRange {
    id: u64,
    /// First chunk not yet reserved by the worker.
    next: u64,
    end: u64,
    since: Instant,
}

#[derive(Debug)]
pub(crate) struct FileState {
    pub phase: Phase,
    pub generation: u32,
    pub size: u64,
    pub chunks: u64,
    pub validator: String,
    pub direct: bool,
    /// Whether the server honours `Range`.
    pub ranged: bool,
    /// Where requests go: the source, or the URL a redirect led to.
    pub url: Url,
    done: Vec<bool>,
    done_count: u64,
    /// Per CRC algorithm (as in `FileMeta::crcs`), per chunk.
    crcs: Vec<Vec<u64>>,
    /// Per chunk, the source that sent it in this run, or [`verify::UNKNOWN_SOURCE`].
    served: Vec<u8>,
    cursor: u64,
    hashers: Option<OrderedHashers>,
    /// Chunks the hashers took from a worker's buffer before the worker wrote them: the cursor
    /// is past them but they are not on disk yet, so no checkpoint and no finalize until they
    /// are.
    unwritten: BTreeSet<u64>,
    parked: BTreeMap<u64, AlignedBuf>,
    pending: BTreeMap<u64, Pending>,
    active: Vec<ActiveRange>,
    journal: Option<Journal>,
    records: u64,
    /// Of `records`, those the last checkpoint made durable.
    synced_records: u64,
    syncing: bool,
    last_sync: Instant,
    probe_attempts: u32,
    not_before: Option<Instant>,
    downloads: u32,
    /// The wrong digest of the last failed verification, and whether earlier ones differed.
    wrong: Option<Digest>,
    wrong_varied: bool,
    restarts: u32,
    counted_bytes: u64,
    /// Mirrors (bit per source index) that delivered chunks of this generation.
    mirrored: u64,
    /// Mirrors (bit per source index) that answered they do not have the file.
    lacking: u64,
    /// The file's digest failed after mirrors served part of it: only the origin sends it now.
    origin_only: bool,
    /// What the mirrors sent of that failed copy, to compare with the origin's.
    suspects: Option<verify::Suspects>,
    pub record: Option<FileRecord>,
    pub resumed_bytes: u64,
}

impl FileState {
    fn fresh(meta: &FileMeta) -> Self {
        Self {
            phase: Phase::New,
            generation: 0,
            size: 0,
            chunks: 0,
            validator: String::new(),
            direct: false,
            ranged: true,
            url: meta.target.url.clone(),
            done: Vec::new(),
            done_count: 0,
            crcs: vec![Vec::new(); meta.crcs.len()],
            served: Vec::new(),
            cursor: 0,
            hashers: None,
            unwritten: BTreeSet::new(),
            parked: BTreeMap::new(),
            pending: BTreeMap::new(),
            active: Vec::new(),
            journal: None,
            records: 0,
            synced_records: 0,
            syncing: false,
            last_sync: Instant::now(),
            probe_attempts: 0,
            not_before: None,
            downloads: 0,
            wrong: None,
            wrong_varied: false,
            restarts: 0,
            counted_bytes: 0,
            mirrored: 0,
            lacking: 0,
            origin_only: false,
            suspects: None,
            record: None,
            resumed_bytes: 0,
        }
    }

    /// Queues ranges that have not been tried yet.
    fn queue(&mut self, ranges: Vec<(u64, u64)>) {
        for (start, end) in ranges {
            self.pending.insert(
                start,
                Pending {
                    end,
                    attempts: 0,
                    not_before: None,
                    avoid: 0,
                    waiting: None,
                },
            );
        }
    }

    /// Bytes of this file already accounted for (for progress).
    pub fn counted_bytes(&self) -> u64 {
        self.counted_bytes
    }
}

/// A unit of work handed to a worker.
#[derive(Debug, Clone)]
pub(crate) struct Claim {
    pub file: usize,
    pub generation: u32,
    pub id: u64,
    /// Where the request goes: 0 for the origin, `i` for the file's mirror `i - 1`.
    pub source: usize,
    /// Sources the range failed on before (bit per source index).
    pub avoid: u64,
    /// Since when the range has waited for a mirror to have it.
    pub waiting: Option<Waited>,
    pub kind: ClaimKind,
    /// Chunk span `[start, end)`; for a probe of a new file, the span the probe asks for.
    pub start: u64,
    pub end: u64,
    pub attempts: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClaimKind {
    Probe,
    Validate,
    Range,
}

#[derive(Debug)]
pub(crate) enum Work {
    Fetch(Claim),
    Wait(Duration),
    Finished,
}

/// What a worker must do after recording a chunk.
pub(crate) enum AfterChunk {
    Nothing(AlignedBuf),
    /// The chunk is at the hash cursor: hash it (and whatever follows) with these hashers.
    Hash(OrderedHashers, AlignedBuf),
    /// The hashers took the chunk before it was written and are free: go on from their
    /// cursor (read back, checkpoint or finalize may have waited for this write).
    Resume(OrderedHashers, AlignedBuf),
    /// Every chunk is in: verify and publish the file.
    Finalize(AlignedBuf),
    /// Flush the part, then record the checkpoint.
    Checkpoint {
        records: u64,
        buf: AlignedBuf,
    },
}

/// What the hasher must do next.
pub(crate) enum HashStep {
    /// Hash this buffer (the chunk at the cursor).
    Buffer(AlignedBuf),
    /// Read the chunk at the cursor back from disk, then hash it.
    Read,
    /// Flush and checkpoint, then ask again.
    Checkpoint { records: u64 },
    /// Hashing is complete: finalize.
    Finalize,
    /// The hashers were put back; nothing to hash now.
    Stop,
    /// The file was reset meanwhile.
    Stale,
}

/// What a worker should do for a file right after it was probed or validated.
pub(crate) enum Kick {
    Nothing,
    Hash(OrderedHashers),
    Finalize,
}

#[derive(Debug)]
pub(crate) struct JobState {
    pub files: Vec<FileState>,
    failed: Option<Error>,
    next_id: u64,
    hosts: Vec<hosts::HostState>,
}

/// One pull's shared state and services.
#[derive(Debug)]
pub(crate) struct Job {
    pub opts: Options,
    pub metas: Vec<FileMeta>,
    pub state: Mutex<JobState>,
    pub pool: Arc<BufPool>,
    pub progress: Arc<Progress>,
    pub metrics: Metrics,
    pub limiter: Option<RateLimiter>,
    pub cancel: Arc<AtomicBool>,
    /// Connections over all hosts at most: the fixed or maximum count, within the buffers.
    connection_cap: usize,
    /// Per file, the index in `JobState::hosts` and `host_bytes` of each source's host: the
    /// origin's first, then its mirrors'.
    sources: Vec<Vec<usize>>,
    /// Bytes received from each host, counted by the workers as they read.
    pub host_bytes: Vec<AtomicU64>,
}

impl Job {
    pub fn new(
        opts: Options,
        metas: Vec<FileMeta>,
        files: Vec<FileState>,
        progress: Arc<Progress>,
        metrics: Metrics,
        cancel: Arc<AtomicBool>,
    ) -> Self {
        let connection_cap = opts.connection_cap();
        let pool = match &opts.shared_buffers {
            Some(shared) => shared.0.clone(),
            None => Arc::new(BufPool::new(opts.chunk_size, opts.buffers())),
        };
        pool.join();
        let tuner = match opts.connections {
            Some(n) => Tuner::fixed(n.min(connection_cap)),
            None => Tuner::adaptive(connection_cap),
        };
        let (sources, hosts) = hosts::index(&metas, &tuner, opts.distrust.as_deref());
        Self {
            connection_cap,
            host_bytes: hosts.iter().map(|_| AtomicU64::new(0)).collect(),
            sources,
            pool,
            limiter: opts.limit_rate.map(RateLimiter::new),
            state: Mutex::new(JobState {
                files,
                failed: None,
                next_id: 0,
                hosts,
            }),
            opts,
            metas,
            progress,
            metrics,
            cancel,
        }
    }

    /// Buffers the pull may hold: the pool, or its share of a pool other pulls draw from.
    fn buffers(&self) -> usize {
        self.pool.share()
    }

    /// Takes the one lock over the pull's state (the module doc says why there is one).
    pub fn lock(&self) -> MutexGuard<'_, JobState> {
        self.state.lock().expect("job state lock")
    }

    pub fn chunk_size(&self) -> u64 {
        self.opts.chunk_size as u64
    }

    fn range_chunks(&self) -> u64 {
        (self.opts.range_size / self.chunk_size()).max(1)
    }

    /// Length of chunk `c` of a file of `size` bytes.
    pub fn chunk_len(&self, size: u64, c: u64) -> usize {
        chunk_len(size, self.chunk_size(), c)
    }

    /// Records a failure that ends the pull (the first one wins).
    pub fn fail(&self, err: Error) {
        let mut st = self.lock();
        if st.failed.is_none() {
            tracing::debug!(error = %err, "pull failed");
            st.failed = Some(err);
        }
    }

    pub fn take_failure(&self) -> Option<Error> {
        self.lock().failed.take()
    }

    pub fn is_failed(&self) -> bool {
        self.lock().failed.is_some()
    }

    pub fn cancelled(&self) -> bool {
        self.cancel.load(Relaxed)
    }

    /// Whether `generation` is still the file's current one (it was not started over).
    pub fn is_current(&self, file: usize, generation: u32) -> bool {
        self.lock().files[file].generation == generation
    }

    /// Size and chunk count of a file, and whether it is written with O_DIRECT; `None` when
    /// `generation` is no longer the file's current one.
    pub fn layout(&self, file: usize, generation: u32) -> Option<(u64, u64, bool)> {
        let st = self.lock();
        let fs = &st.files[file];
        (fs.generation == generation).then_some((fs.size, fs.chunks, fs.direct))
    }
}

/// Gives the parked chunks' buffers back: a pool shared by the pulls of a process outlives
/// each of them, and a pull that fails or is cancelled may end with chunks parked.
impl Drop for Job {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        for fs in &mut st.files {
            for (_, buf) in std::mem::take(&mut fs.parked) {
                self.pool.put(buf);
            }
        }
        self.pool.leave();
    }
}

/// A job of `metas`, each file fresh, for the state's unit tests.
#[cfg(test)]
fn test_job(opts: Options, metas: Vec<FileMeta>) -> Job {
    let files = metas.iter().map(FileState::fresh).collect();
    Job::new(
        opts,
        metas,
        files,
        Arc::default(),
        Metrics::default(),
        Arc::default(),
    )
}

/// Claims the probe of the job's first file and starts the file at `size` bytes, ranged, as
/// its answer would: the state's unit tests' common start.
#[cfg(test)]
fn test_started(job: &Job, size: u64) {
    let probe = match job.claim() {
        Work::Fetch(p) => p,
        other => panic!("a probe, not {other:?}"),
    };
    assert_eq!(probe.kind, ClaimKind::Probe);
    let url = job.metas[0].target.url.clone();
    job.start_file(&probe, size, "\"v\"".into(), url, true)
        .unwrap();
}

/// What the job hands out until it has nothing to fetch now (at most 16 claims), for the
/// state's unit tests.
#[cfg(test)]
fn test_claims(job: &Job) -> Vec<Claim> {
    std::iter::from_fn(|| match job.claim() {
        Work::Fetch(c) => Some(c),
        _ => None,
    })
    .take(16)
    .collect()
}

/// A file `name` in `dir` for the state's unit tests: fetched from a port nothing answers,
/// `fragment` appended to its URL (`""` or `#sha256=…`), its part and journal beside it.
#[cfg(test)]
fn test_meta(dir: &std::path::Path, name: &str, fragment: &str) -> FileMeta {
    let target = Target::parse(&format!("http://127.0.0.1:9/{name}{fragment}")).unwrap();
    let at = |suffix: &str| dir.join(format!("{name}{suffix}"));
    FileMeta::new(
        target,
        at(crate::disk::part::SUFFIX),
        Journal::path_for(&at("")),
        at(""),
    )
}

/// A file `name` in `dir` for the state's unit tests, as [`test_meta`] makes it, with a
/// sha256 (so that mirrors may serve it) and at each of the `mirrors` (base URLs) too.
#[cfg(test)]
fn test_mirrored_meta(dir: &std::path::Path, name: &str, mirrors: &[&str]) -> FileMeta {
    let mut meta = test_meta(dir, name, &format!("#sha256={}", "0".repeat(64)));
    let bases: Vec<Url> = mirrors
        .iter()
        .map(|u| crate::mirror::parse_base(u).unwrap())
        .collect();
    meta.target.add_mirrors(&bases);
    meta
}

/// Length of chunk `c` of a file of `size` bytes cut in chunks of `chunk` bytes.
fn chunk_len(size: u64, chunk: u64, c: u64) -> usize {
    (size - c * chunk).min(chunk) as usize
}
