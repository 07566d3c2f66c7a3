//! The shared state of one pull: every file's progress, the scheduler that hands out work, and
//! the bookkeeping of chunks, hash cursors and retries.
//!
//! One mutex guards it all. It is taken a few times per chunk (megabytes), never per byte, and
//! never across I/O: hashing, network and disk work happen outside it. That keeps every
//! invariant in one place, which matters more here than the last microsecond.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use url::Url;

use super::limits::RateLimiter;
use super::{Options, plan};
use crate::buf::AlignedBuf;
use crate::digest::ordered::OrderedHashers;
use crate::digest::{Algorithm, Digest, crc};
use crate::disk::journal::{Journal, Record};
use crate::disk::part;
use crate::disk::staging::FileRecord;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::pool::BufPool;
use crate::progress::Progress;
use crate::target::Target;

mod checkpoint;
mod hash;
mod probe;
mod retry;
mod schedule;
mod steal;
mod verify;
mod window;

/// What never changes about a file during a pull.
#[derive(Debug)]
pub(crate) struct FileMeta {
    pub target: Target,
    /// The source as logs and the journal may show it.
    pub source: String,
    pub host: String,
    /// Where the target's credentials may go: its own scheme, host and port only.
    pub origin: Option<crate::http::conn::Endpoint>,
    pub part: PathBuf,
    pub journal: PathBuf,
    pub final_path: PathBuf,
    /// Digests computed in order (sha256, sha1, md5).
    pub ordered: Vec<Algorithm>,
    /// CRCs computed per chunk; crc32c first, always.
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
        let mut crcs = vec![Algorithm::Crc32c];
        for d in &target.expected {
            if !d.algorithm.is_ordered() && !crcs.contains(&d.algorithm) {
                crcs.push(d.algorithm);
            }
        }
        Self {
            source: crate::redact(&target.url),
            host: target.url.host_str().unwrap_or_default().to_owned(),
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

#[derive(Debug)]
struct Pending {
    end: u64,
    attempts: u32,
    not_before: Option<Instant>,
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
            cursor: 0,
            hashers: None,
            unwritten: BTreeSet::new(),
            parked: BTreeMap::new(),
            pending: BTreeMap::new(),
            active: Vec::new(),
            journal: None,
            records: 0,
            syncing: false,
            last_sync: Instant::now(),
            probe_attempts: 0,
            not_before: None,
            downloads: 0,
            wrong: None,
            wrong_varied: false,
            restarts: 0,
            counted_bytes: 0,
            record: None,
            resumed_bytes: 0,
        }
    }
}

/// A unit of work handed to a worker.
#[derive(Debug, Clone)]
pub(crate) struct Claim {
    pub file: usize,
    pub generation: u32,
    pub id: u64,
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

#[derive(Debug)]
pub(crate) struct JobState {
    pub files: Vec<FileState>,
    failed: Option<Error>,
    next_id: u64,
    host_active: HashMap<String, usize>,
}

/// One pull's shared state and services.
#[derive(Debug)]
pub(crate) struct Job {
    pub opts: Options,
    pub metas: Vec<FileMeta>,
    pub state: Mutex<JobState>,
    pub pool: BufPool,
    pub progress: Arc<Progress>,
    pub metrics: Metrics,
    pub limiter: Option<RateLimiter>,
    pub cancel: Arc<AtomicBool>,
    /// Chunks a file may have in flight or parked ahead of its hash cursor.
    window_chunks: u64,
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
        let buffers = (opts.memory_limit / opts.chunk_size).max(opts.connections + 2);
        Self {
            window_chunks: window::window_chunks(&opts, buffers),
            pool: BufPool::new(opts.chunk_size, buffers),
            limiter: opts.limit_rate.map(RateLimiter::new),
            state: Mutex::new(JobState {
                files,
                failed: None,
                next_id: 0,
                host_active: HashMap::new(),
            }),
            opts,
            metas,
            progress,
            metrics,
            cancel,
        }
    }

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
        let start = c * self.chunk_size();
        (size - start).min(self.chunk_size()) as usize
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

/// What a worker should do for a file right after it was probed or validated.
pub(crate) enum Kick {
    Nothing,
    Hash(OrderedHashers),
    Finalize,
}

impl Job {}

impl FileState {
    /// A file the store lists as empty: nothing to fetch (a ranged GET of nothing is not
    /// even well-formed), only to create and check against the listed digests.
    fn empty(meta: &FileMeta) -> Result<Self, Error> {
        let file = std::fs::File::create(&meta.final_path)
            .map_err(|e| Error::local("create", &meta.final_path, e))?;
        file.sync_all()
            .map_err(|e| Error::local("flush", &meta.final_path, e))?;
        let mut digests = OrderedHashers::new(meta.ordered.iter().copied(), 0).finish();
        digests.extend(
            meta.crcs
                .iter()
                .map(|&alg| crc::combine(alg, std::iter::empty())),
        );
        if let Some((expected, actual)) = verify::first_mismatch(&meta.target.expected, &digests) {
            return Err(Error::Verify {
                file: meta.target.path.clone(),
                attempts: 0,
                expected,
                actual,
                varied: false,
            });
        }
        let mut fs = FileState::fresh(meta);
        fs.phase = Phase::Done;
        fs.record = Some(FileRecord {
            path: meta.target.path.clone(),
            size: 0,
            digests,
        });
        Ok(fs)
    }

    /// The state of a file at the start of a pull: finished earlier, resumable from its
    /// journal, or new.
    pub fn prepare(meta: &FileMeta, chunk: u64, range_chunks: u64) -> Result<Self, Error> {
        if meta.target.size == Some(0) {
            return FileState::empty(meta);
        }
        let fresh = |why: Option<&str>| {
            if let Some(why) = why {
                tracing::info!(file = %meta.target.path, reason = why, "not resuming; starting the file over");
            }
            let _ = std::fs::remove_file(&meta.part);
            let _ = std::fs::remove_file(&meta.journal);
            Ok(FileState::fresh(meta))
        };
        let Some(loaded) = Journal::load(&meta.journal) else {
            return fresh(
                meta.part
                    .exists()
                    .then_some("its journal is missing or unreadable"),
            );
        };
        let h = &loaded.header;
        if let Some(record) = loaded.done {
            let same = h.source == meta.source && h.algorithms == meta.algorithms();
            let mut on_disk = std::fs::metadata(&meta.final_path).map(|m| m.len()).ok();
            // Stopped between the verification and the rename: the part still holds the
            // verified bytes, unless a power cut lost what was not flushed yet, so it is
            // hashed again before it is published.
            if same
                && on_disk.is_none()
                && part_holds(&meta.part, &record)
                && part::publish(&meta.part, &meta.final_path, record.size).is_ok()
            {
                tracing::info!(file = %meta.target.path, "finishing the rename a stop interrupted");
                on_disk = Some(record.size);
            }
            if on_disk == Some(record.size) && same {
                let mut fs = FileState::fresh(meta);
                fs.phase = Phase::Done;
                fs.size = record.size;
                fs.resumed_bytes = record.size;
                fs.record = Some(record);
                return Ok(fs);
            }
            let _ = std::fs::remove_file(&meta.final_path);
            return fresh(Some("its finished copy is missing or damaged"));
        }
        if h.source != meta.source || h.chunk_size != chunk || h.algorithms != meta.algorithms() {
            return fresh(Some(
                "the journal was written for another source or other settings",
            ));
        }
        if h.validator.is_empty() {
            return fresh(Some(
                "the server gave no ETag or Last-Modified, so a partial file cannot be trusted",
            ));
        }
        let Ok(part_file) = std::fs::File::open(&meta.part) else {
            return fresh(Some("the partial file is missing"));
        };
        let size = h.size;
        let chunks = size.div_ceil(chunk);
        let len = |c: u64| (size - c * chunk).min(chunk) as usize;
        let mut trusted: Vec<(u64, Vec<u64>)> = loaded
            .synced
            .into_iter()
            .filter(|(_, c)| c.len() == meta.crcs.len())
            .collect();
        let mut data = vec![0u8; chunk as usize];
        for (i, crcs) in loaded.unsynced {
            use std::os::unix::fs::FileExt;
            let buf = &mut data[..len(i)];
            let intact = crcs.len() == meta.crcs.len()
                && part_file.read_exact_at(buf, i * chunk).is_ok()
                && u64::from(crc::chunk_crc32c(buf)) == crcs[0];
            if intact {
                trusted.push((i, crcs));
            } else {
                tracing::info!(file = %meta.target.path, chunk = i, "chunk did not reach the disk intact; fetching it again");
            }
        }
        drop(part_file);
        trusted.sort_by_key(|(i, _)| *i);
        trusted.dedup_by_key(|(i, _)| *i);

        let mut fs = FileState::fresh(meta);
        fs.done = vec![false; chunks as usize];
        fs.crcs = vec![vec![0; chunks as usize]; meta.crcs.len()];
        for (i, crcs) in &trusted {
            fs.done[*i as usize] = true;
            for (k, v) in crcs.iter().enumerate() {
                fs.crcs[k][*i as usize] = *v;
            }
            fs.counted_bytes += len(*i) as u64;
        }
        fs.done_count = trusted.len() as u64;
        let mut hashers = OrderedHashers::new(meta.ordered.iter().copied(), size);
        if let Some(h) = loaded
            .hash
            .as_ref()
            .and_then(|s| OrderedHashers::load(s, meta.ordered.iter().copied()))
        {
            let pos = h.position();
            let at = pos.div_ceil(chunk);
            if (pos % chunk == 0 || pos == size) && (0..at).all(|c| fs.done[c as usize]) {
                fs.cursor = at;
                hashers = h;
            }
        }
        let direct = part::create(&meta.part, Some(size))
            .map_err(|e| Error::local("open", &meta.part, e))?;
        std::fs::File::open(&meta.part)
            .and_then(|f| f.sync_data())
            .map_err(|e| Error::local("flush", &meta.part, e))?;
        let journal = Journal::replace(&meta.journal, h, |journal| {
            for (index, crcs) in &trusted {
                journal.append(&Record::Chunk {
                    index: *index,
                    crcs: crcs.clone(),
                })?;
            }
            journal.append(&Record::Sync {
                records: trusted.len() as u64,
                hash: (!hashers.is_empty()).then(|| hashers.save()),
            })
        })
        .map_err(|e| Error::local("write", &meta.journal, e))?;
        let missing = plan::ranges(0, chunks, range_chunks, |c| fs.done[c as usize]);
        fs.queue(missing);
        fs.phase = Phase::Validate;
        fs.size = size;
        fs.chunks = chunks;
        fs.validator = h.validator.clone();
        fs.direct = direct;
        fs.hashers = Some(hashers);
        fs.records = trusted.len() as u64;
        fs.journal = Some(journal);
        fs.downloads = 1;
        fs.resumed_bytes = fs.counted_bytes;
        tracing::info!(file = %meta.target.path, kept_bytes = fs.counted_bytes, size, "resuming");
        Ok(fs)
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
                },
            );
        }
    }

    /// Bytes of this file already accounted for (for progress).
    pub fn counted_bytes(&self) -> u64 {
        self.counted_bytes
    }
}

/// Whether the first `record.size` bytes of `part` have the record's ordered digests (a record
/// with none cannot be checked this way).
fn part_holds(part: &std::path::Path, record: &FileRecord) -> bool {
    use std::io::Read;
    let ordered: Vec<&Digest> = record
        .digests
        .iter()
        .filter(|d| d.algorithm.is_ordered())
        .collect();
    let Ok(file) = std::fs::File::open(part) else {
        return false;
    };
    if ordered.is_empty() || file.metadata().map_or(true, |m| m.len() < record.size) {
        return false;
    }
    let mut hashers = OrderedHashers::new(ordered.iter().map(|d| d.algorithm), record.size);
    let mut reader = file.take(record.size);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hashers.update(&buf[..n]),
            Err(_) => return false,
        }
    }
    hashers.position() == record.size && hashers.finish().iter().all(|d| ordered.contains(&d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::journal::{self, Header};
    use sha2::Digest as _;

    /// A part verified and journaled `done`, its rename not made: what a stop between
    /// the two leaves.
    fn stopped_before_rename(dir: &std::path::Path, content: &[u8]) -> FileMeta {
        let target = Target::parse("http://127.0.0.1:9/model.bin").unwrap();
        let meta = FileMeta::new(
            target,
            dir.join("model.bin.part"),
            dir.join("model.bin.modelpull-journal"),
            dir.join("model.bin"),
        );
        std::fs::write(&meta.part, content).unwrap();
        let header = Header {
            version: journal::VERSION,
            source: meta.source.clone(),
            size: content.len() as u64,
            validator: "\"v\"".into(),
            chunk_size: 4096,
            algorithms: meta.algorithms(),
        };
        let mut j = Journal::create(&meta.journal, &header).unwrap();
        j.append(&Record::Done {
            file: FileRecord {
                path: "model.bin".into(),
                size: content.len() as u64,
                digests: vec![Digest {
                    algorithm: Algorithm::Sha256,
                    value: sha2::Sha256::digest(b"verified bytes").to_vec(),
                }],
            },
        })
        .unwrap();
        meta
    }

    #[test]
    fn a_rename_a_stop_interrupted_is_finished_without_fetching_again() {
        let dir = tempfile::tempdir().unwrap();
        let meta = stopped_before_rename(dir.path(), b"verified bytes");
        let fs = FileState::prepare(&meta, 4096, 4).unwrap();
        assert_eq!(fs.phase, Phase::Done);
        assert_eq!(std::fs::read(&meta.final_path).unwrap(), b"verified bytes");
        assert!(!meta.part.exists());
    }

    #[test]
    fn a_part_that_no_longer_matches_its_record_is_fetched_again() {
        let dir = tempfile::tempdir().unwrap();
        let meta = stopped_before_rename(dir.path(), b"verified bytez");
        let fs = FileState::prepare(&meta, 4096, 4).unwrap();
        assert_eq!(fs.phase, Phase::New);
        assert!(!meta.final_path.exists());
    }
}
