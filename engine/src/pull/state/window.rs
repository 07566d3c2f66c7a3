//! The memory window: how far ahead of their hash cursors the files may fetch.
//!
//! Ordered digests (sha256, sha1, md5) take a file's chunks in order, so a chunk that arrives
//! ahead of its file's hash cursor waits in a buffer until the cursor reaches it, or, when no
//! buffer is free, is read back from disk to be hashed. The window bounds the chunks held or
//! promised ahead of the cursors to what the buffer pool can spare beside the connections'
//! own buffers, and the scheduler claims no range beyond it, so nothing has to be read back.
//! The window narrows as connections are added and widens as they close, but never below
//! one claim per connection the hosts may have (see [`Job::window`]); claims shrink from a
//! whole range to one chunk as connections outgrow the buffers (see [`Job::claim_span`]).

use std::time::Instant;

use super::{FileMeta, FileState, Job, JobState, Phase};
use crate::buf::AlignedBuf;

impl FileState {
    /// Chunks ahead of the hash cursor that hold a buffer or will: parked ones, and those
    /// still to come in ranges that do not start at the cursor.
    fn committed(&self) -> u64 {
        let in_flight: u64 = self
            .active
            .iter()
            .filter(|a| a.next > self.cursor)
            .map(|a| a.end - a.next)
            .sum();
        self.parked.len() as u64 + in_flight
    }
}

impl Job {
    /// Chunks the pull may have in flight or parked ahead of its hash cursors: the buffers
    /// that its open connections and the one being claimed do not hold, and never less than
    /// one claim per connection the hosts may have.
    ///
    /// The floor matters where connections are slow (an origin that caps each one): there the
    /// tuners add connections until the link is full, each needs a claim of its own, and
    /// their claims are all ahead of the cursor at once. Holding them back would cap the pull
    /// at the memory bound's worth of claims in flight; letting them run costs that the
    /// chunks memory cannot park are read back from disk. [`Job::claim_span`] keeps that
    /// small: claims as short as one chunk land in file order.
    pub(super) fn window(&self, st: &JobState) -> u64 {
        let held = self.connections_open(st) + 1;
        let free = self.buffers().saturating_sub(held) as u64;
        let allowed = self.connections_allowed(st) as u64;
        free.max(allowed * self.claim_span(st))
    }

    /// Chunks one claim takes of a pending range of a file hashed in order: the whole range
    /// while a range per connection fits in the buffers beside the connections' own, else
    /// what does, down to one chunk.
    ///
    /// Many slow connections each fetching a whole range land their chunks out of file order:
    /// the first chunks of every range arrive together, long before the last chunk of the
    /// range at the hash cursor. Memory cannot park them all, so most are written, then read
    /// back to be hashed, and a disk reads back one chunk at a time far slower than it writes
    /// (0.4 GB/s here against 1.7). Claims of one chunk, handed out in file order to
    /// connections of one speed, also land in file order: the chunk at the cursor comes first
    /// and nothing waits. Fast connections are few, and keep whole ranges (fewer requests).
    /// Through a proxy no claim is shorter than [`crate::pull::PROXY_MIN_RANGE`]: a P2P proxy
    /// (Dragonfly) sends shorter ranges straight to the origin.
    pub(super) fn claim_span(&self, st: &JobState) -> u64 {
        let allowed = self.connections_allowed(st).max(1) as u64;
        let spare = (self.buffers() as u64).saturating_sub(allowed);
        (spare / allowed).clamp(
            self.least_claim().min(self.range_chunks()),
            self.range_chunks(),
        )
    }

    /// The fewest chunks a new request may ask for: one, or through a proxy
    /// [`crate::pull::PROXY_MIN_RANGE`] worth (a file's last range may still be shorter).
    pub(super) fn least_claim(&self) -> u64 {
        if self.opts.proxy.is_some() {
            crate::pull::PROXY_MIN_RANGE.div_ceil(self.chunk_size())
        } else {
            1
        }
    }

    /// A buffer for a connection: a free one within the bound and the pull's share of it,
    /// or else, when work waits for a connection, the one of the chunk parked farthest ahead
    /// of its cursor. Parked chunks are on disk already, so the hasher reads that one back
    /// instead: a connection bringing new bytes comes first. `None` when every buffer the
    /// pull may have is held by a connection, or nothing waits.
    pub fn take_buffer(&self) -> Option<AlignedBuf> {
        let mut st = self.lock();
        if self.held(&st) < self.buffers()
            && let Some(b) = self.pool.try_get()
        {
            return Some(b);
        }
        if !self.work_waits(&st, Instant::now()) {
            return None;
        }
        let (file, chunk) = st
            .files
            .iter()
            .enumerate()
            .filter_map(|(i, fs)| {
                let (&c, _) = fs.parked.last_key_value()?;
                Some((c.saturating_sub(fs.cursor), i, c))
            })
            .max()
            .map(|(_, i, c)| (i, c))?;
        let mut buf = st.files[file].parked.remove(&chunk)?;
        buf.set_len(0);
        Some(buf)
    }

    /// Buffers the pull holds: one per open connection, and the parked chunks.
    pub(super) fn held(&self, st: &JobState) -> usize {
        let parked: usize = st.files.iter().map(|f| f.parked.len()).sum();
        self.connections_open(st) + parked
    }

    /// Whether a claim could be made now but for a connection: a file's first request, or a
    /// pending range, whose pause is over.
    fn work_waits(&self, st: &JobState, now: Instant) -> bool {
        st.files.iter().any(|fs| match fs.phase {
            Phase::New | Phase::Validate => fs.not_before.is_none_or(|nb| nb <= now),
            Phase::Active => fs.ready_range(now).is_some(),
            _ => false,
        })
    }

    /// Chunks of the window taken, over all files.
    ///
    /// The window is one budget for the whole pull, not one per file: with several files in
    /// flight, each filling its own window parks more chunks than the buffers hold, and the
    /// rest are read back from disk to be hashed.
    pub(super) fn window_committed(&self, files: &[FileState]) -> u64 {
        files
            .iter()
            .zip(&self.metas)
            .filter(|(fs, meta)| fs.phase == Phase::Active && !meta.ordered.is_empty())
            .map(|(fs, _)| fs.committed())
            .sum()
    }

    /// Whether a file may claim its pending range `[start, end)` while `committed` chunks of
    /// a `window` are taken. A range at the cursor always may: the hashers wait for it.
    pub(super) fn fits_window(
        &self,
        meta: &FileMeta,
        fs: &FileState,
        window: u64,
        committed: u64,
        start: u64,
        end: u64,
    ) -> bool {
        // Ordered digests hold chunks ahead of the cursor in memory: claim no further ahead
        // than memory can hold, so nothing has to be read back.
        start <= fs.cursor
            || meta.ordered.is_empty()
            || (end <= fs.cursor + window && committed + (end - start) <= window)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::super::steal::SLOW_RANGE;
    use super::super::{
        Claim, ClaimKind, FileMeta, Job, Work, test_claims, test_job, test_meta,
        test_mirrored_meta, test_started,
    };
    use crate::buf::AlignedBuf;
    use crate::pull::Options;

    fn claimed(job: &Job) -> Option<(usize, u64, u64)> {
        match job.claim() {
            Work::Fetch(c) => Some((c.file, c.start, c.end)),
            _ => None,
        }
    }

    /// Two files of 40 chunks of 4 KiB from one host, 2-chunk ranges, `buffers` buffers and
    /// `connections` connections, both probed and started.
    fn two_files(dir: &std::path::Path, buffers: usize, connections: usize) -> (Job, Vec<Claim>) {
        let metas: Vec<FileMeta> = ["a.bin", "b.bin"]
            .iter()
            .map(|name| test_meta(dir, name, ""))
            .collect();
        let opts = Options {
            chunk_size: 4096,
            range_size: 8192,
            memory_limit: buffers * 4096,
            connections: Some(connections),
            ..Options::default()
        };
        let job = test_job(opts, metas);
        let probes = start_both(&job);
        (job, probes)
    }

    /// Claims the probes of a job's two files and starts each at 40 chunks of 4 KiB, ranged;
    /// returns the probes, still open.
    fn start_both(job: &Job) -> Vec<Claim> {
        let probes: Vec<Claim> = (0..2)
            .map(|_| match job.claim() {
                Work::Fetch(probe) if probe.kind == ClaimKind::Probe => probe,
                other => panic!("a probe, not {other:?}"),
            })
            .collect();
        for probe in &probes {
            let url = job.metas[probe.file].target.url.clone();
            job.start_file(probe, 40 * 4096, "\"v\"".into(), url, true)
                .unwrap();
        }
        probes
    }

    /// The base URL of the peer that the group's files of these tests are also at.
    const PEER: &str = "http://127.0.0.1:9/peer/";

    #[test]
    fn the_window_is_the_free_buffers_or_a_claim_per_connection() {
        let dir = tempfile::tempdir().unwrap();
        // 40 buffers, two probes open: 37 are free beside them and the next claim's, and a
        // whole range per connection fits.
        let (job, _) = two_files(dir.path(), 40, 4);
        assert_eq!(job.window(&job.lock()), 37);
        assert_eq!(job.claim_span(&job.lock()), 2);
        // 38 connections: a chunk each, one more than the free buffers (slow connections are
        // not held back by memory; what it cannot park is read back).
        let (job, _) = two_files(dir.path(), 40, 38);
        assert_eq!(job.claim_span(&job.lock()), 1);
        assert_eq!(job.window(&job.lock()), 38);
    }

    #[test]
    fn connections_beyond_the_buffers_claim_one_chunk_at_a_time_in_file_order() {
        let dir = tempfile::tempdir().unwrap();
        // 30 connections and 10 buffers beside theirs: one chunk per claim.
        let (job, _) = two_files(dir.path(), 40, 30);
        let claims: Vec<_> = (0..5).map(|_| claimed(&job).unwrap()).collect();
        for (k, w) in claims.windows(2).enumerate() {
            assert_eq!(w[0].2 - w[0].1, 1, "claim {k} is one chunk: {claims:?}");
            assert_eq!(
                (w[1].0, w[1].1),
                (w[0].0, w[0].2),
                "claims follow each other"
            );
        }
        // The rest of each range stays pending and is claimed next, so none is lost.
        let job_files = &job.lock().files;
        let (first, last) = (claims[0].1, claims[4].2);
        assert!(!job_files[claims[0].0].pending.contains_key(&first));
        assert!(job_files[claims[0].0].pending.keys().all(|&s| s >= last));
    }

    /// A group's gate that gives this node the file's bytes from `0` on.
    #[derive(Debug)]
    struct OwnFrom(u64);

    impl crate::mirror::OriginGate for OwnFrom {
        fn allows(&self, _: &str, offset: u64) -> bool {
            offset >= self.0
        }

        fn block(&self) -> u64 {
            8192
        }
    }

    #[test]
    fn a_groups_own_share_is_claimed_beyond_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let meta = test_mirrored_meta(dir.path(), "a.bin", &[PEER]);
        // This node's share: chunks 32 to 39.
        let opts = Options {
            chunk_size: 4096,
            range_size: 8192,
            memory_limit: 12 * 4096,
            connections: Some(4),
            origin_gate: Some(std::sync::Arc::new(OwnFrom(32 * 4096))),
            ..Options::default()
        };
        let job = test_job(opts, vec![meta]);
        test_started(&job, 40 * 4096);
        // The window is spent by chunks parked far ahead of the cursor.
        for c in 20..28 {
            job.lock().files[0].parked.insert(c, AlignedBuf::new(4096));
        }
        // This node's own share goes to the origin first, past the window, one block (two
        // chunks here) at a time; the range at the cursor is claimed whatever the window (of
        // a peer: it is another node's share); the next ones are others' too and wait for
        // the window.
        match job.claim() {
            Work::Fetch(c) => assert_eq!((c.start, c.source), (32, 0), "{c:?}"),
            other => panic!("this node's share, not {other:?}"),
        }
        match job.claim() {
            Work::Fetch(c) => assert_eq!((c.start, c.source), (0, 1), "{c:?}"),
            other => panic!("the range at the cursor, not {other:?}"),
        }
        assert!(
            !matches!(job.claim(), Work::Fetch(_)),
            "the next block of its share waits for the first"
        );
    }

    /// Two started files of 40 chunks, a.bin and b.bin, each also at one peer, in a group's
    /// pull whose gate gives this node their chunks from `own_from` on, in blocks of two.
    fn two_shared(dir: &std::path::Path, own_from: u64) -> Job {
        let metas: Vec<FileMeta> = ["a.bin", "b.bin"]
            .iter()
            .map(|name| test_mirrored_meta(dir, name, &[PEER]))
            .collect();
        let opts = Options {
            chunk_size: 4096,
            range_size: 8192,
            memory_limit: 12 * 4096,
            connections: Some(4),
            origin_gate: Some(std::sync::Arc::new(OwnFrom(own_from * 4096))),
            ..Options::default()
        };
        let job = test_job(opts, metas);
        for p in &start_both(&job) {
            job.release_host(p, true);
        }
        job
    }

    #[test]
    fn a_groups_own_share_is_claimed_one_block_of_the_model_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        // This node's share of each file: chunks 32 to 39, four blocks of two chunks, past a
        // window spent by chunks parked far ahead of a's cursor.
        let job = two_shared(dir.path(), 32);
        for c in 20..28 {
            job.lock().files[0].parked.insert(c, AlignedBuf::new(4096));
        }
        // Of the whole model, only a's lowest block of the share goes to the origin; each
        // file's range at its cursor goes to the peer.
        let claims = test_claims(&job);
        let got: Vec<_> = claims.iter().map(|c| (c.file, c.start, c.source)).collect();
        assert_eq!(got, [(0, 32, 0), (0, 0, 1), (1, 0, 1)]);
        // Once a's share is all fetched, b's lowest block is next.
        job.release_host(&claims[0], true);
        {
            let mut st = job.lock();
            let fs = &mut st.files[0];
            fs.active.retain(|a| a.id != claims[0].id);
            fs.pending.retain(|&s, _| s < 32);
        }
        match job.claim() {
            Work::Fetch(c) => assert_eq!((c.file, c.start, c.source), (1, 32, 0), "{c:?}"),
            other => panic!("b's share, not {other:?}"),
        }
    }

    #[test]
    fn within_the_window_a_later_files_share_waits_for_the_front_files() {
        let dir = tempfile::tempdir().unwrap();
        // Every chunk is this node's to fetch. The first claims are a's; while a's other
        // ranges wait (after a failure, say), b's, its range at the cursor included, wait too.
        let job = two_shared(dir.path(), 0);
        let claims = test_claims(&job);
        assert!(
            claims.iter().all(|c| c.file == 0 && c.source == 0),
            "{claims:?}"
        );
        for c in &claims {
            job.release_host(c, true);
        }
        let later = Instant::now() + std::time::Duration::from_secs(60);
        for p in job.lock().files[0].pending.values_mut() {
            p.not_before = Some(later);
        }
        assert!(test_claims(&job).is_empty(), "b's share waits for a's");
        // Once a's share is done, b's goes to the origin.
        {
            let mut st = job.lock();
            st.files[0].active.clear();
            st.files[0].pending.clear();
        }
        let got: Vec<_> = test_claims(&job)
            .iter()
            .map(|c| (c.file, c.start, c.source))
            .collect();
        assert_eq!(got[0], (1, 0, 0), "then b's: {got:?}");
    }

    #[test]
    fn files_share_one_window_ahead_of_their_hash_cursors() {
        let dir = tempfile::tempdir().unwrap();
        // 12 buffers; the two probes and the next claim hold 3: the window is 9 chunks.
        let (job, probes) = two_files(dir.path(), 12, 4);
        // File a has 8 chunks parked far ahead of its cursor: neither file may claim a range
        // ahead of its cursor, b included, since the window is one for the pull.
        for c in 20..28 {
            job.lock().files[0].parked.insert(c, AlignedBuf::new(4096));
        }
        assert_eq!(claimed(&job), None, "the window is spent");
        // As the cursor takes them, ranges ahead are claimed again.
        for c in 20..24 {
            job.lock().files[0].parked.remove(&c);
        }
        assert_eq!(claimed(&job), Some((0, 2, 4)));
        // A slow range at any file's cursor holds the shared window back and is split, here
        // b's, though a was the file found blocked (a's probe has one chunk left to give).
        for c in 20..24 {
            job.lock().files[0].parked.insert(c, AlignedBuf::new(4096));
        }
        assert!(job.begin_chunk(&probes[0], 0));
        let long_ago = Instant::now() - 2 * SLOW_RANGE;
        for fs in &mut job.lock().files {
            fs.active.iter_mut().for_each(|a| a.since = long_ago);
        }
        assert_eq!(claimed(&job), Some((1, 1, 2)));
    }

    #[test]
    fn a_connection_without_a_free_buffer_takes_the_farthest_parked_one() {
        let dir = tempfile::tempdir().unwrap();
        let (job, _) = two_files(dir.path(), 12, 4);
        let held: Vec<AlignedBuf> = std::iter::from_fn(|| job.pool.try_get()).collect();
        assert_eq!(held.len(), 12);
        {
            let mut st = job.lock();
            st.files[0].parked.insert(5, AlignedBuf::new(4096));
            st.files[1].parked.insert(30, AlignedBuf::new(4096));
        }
        assert!(job.take_buffer().is_some());
        let st = job.lock();
        assert!(st.files[0].parked.contains_key(&5));
        assert!(
            st.files[1].parked.is_empty(),
            "chunk 30 of b is read back instead"
        );
        drop(st);
        assert!(job.take_buffer().is_some());
        assert!(
            job.take_buffer().is_none(),
            "every buffer is held by a connection"
        );
    }

    #[test]
    fn a_pull_that_ends_gives_its_parked_buffers_back() {
        let dir = tempfile::tempdir().unwrap();
        let (job, _) = two_files(dir.path(), 12, 4);
        let pool = job.pool.clone();
        for c in [10, 20] {
            let buf = pool.try_get().unwrap();
            job.lock().files[0].parked.insert(c, buf);
        }
        drop(job);
        assert_eq!(pool.share(), 12, "the pull left the pool");
        assert_eq!(std::iter::from_fn(|| pool.try_get()).count(), 12);
    }
}
