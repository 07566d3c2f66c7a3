//! The memory window: how far ahead of their hash cursors the files may fetch.
//!
//! Ordered digests (sha256, sha1, md5) take a file's chunks in order, so a chunk that arrives
//! ahead of its file's hash cursor waits in a buffer until the cursor reaches it, or, when no
//! buffer is free, is read back from disk to be hashed. The window bounds the chunks held or
//! promised ahead of the cursors to what the buffer pool can spare, and the scheduler claims
//! no range beyond it, so nothing has to be read back.

use super::{FileMeta, FileState, Job, Phase};
use crate::pull::Options;

/// Chunks the pull may have in flight or parked ahead of its hash cursors: the buffers the
/// connections do not hold, and never less than one range.
pub(super) fn window_chunks(opts: &Options, buffers: usize) -> u64 {
    let range_chunks = (opts.range_size / opts.chunk_size as u64).max(1);
    ((buffers - opts.connections) as u64).max(range_chunks)
}

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
    /// the window are taken. A range at the cursor always may: the hashers wait for it.
    pub(super) fn fits_window(
        &self,
        meta: &FileMeta,
        fs: &FileState,
        committed: u64,
        start: u64,
        end: u64,
    ) -> bool {
        // Ordered digests hold chunks ahead of the cursor in memory: claim no further ahead
        // than memory can hold, so nothing has to be read back.
        start <= fs.cursor
            || meta.ordered.is_empty()
            || (end <= fs.cursor + self.window_chunks
                && committed + (end - start) <= self.window_chunks)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::super::steal::SLOW_RANGE;
    use super::super::{Claim, ClaimKind, FileMeta, FileState, Job, Work, test_meta};
    use crate::metrics::Metrics;
    use crate::pull::Options;

    fn claimed(job: &Job) -> Option<(usize, u64, u64)> {
        match job.claim() {
            Work::Fetch(c) => Some((c.file, c.start, c.end)),
            _ => None,
        }
    }

    #[test]
    fn files_share_one_window_ahead_of_their_hash_cursors() {
        let dir = tempfile::tempdir().unwrap();
        let metas: Vec<FileMeta> = ["a.bin", "b.bin"]
            .iter()
            .map(|name| test_meta(dir.path(), name, ""))
            .collect();
        // 8 buffers of 4 KiB, 2 connections: 6 chunks may wait for the hashers, in all.
        let opts = Options {
            chunk_size: 4096,
            range_size: 8192,
            connections: 2,
            memory_limit: 8 * 4096,
            ..Options::default()
        };
        let files = metas.iter().map(FileState::fresh).collect();
        let job = Job::new(
            opts,
            metas,
            files,
            Arc::default(),
            Metrics::default(),
            Arc::default(),
        );
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
        // The probes hold each file's cursor range; ranges ahead take from the shared window.
        assert_eq!(claimed(&job), Some((0, 2, 4)));
        assert_eq!(claimed(&job), Some((0, 4, 6)));
        // File a's own limit (cursor + 6) stops it; b gets what is left of the window, 2 chunks.
        assert_eq!(claimed(&job), Some((1, 2, 4)));
        assert_eq!(claimed(&job), None, "the window is spent");
        // A slow range at any file's cursor holds the shared window back and is split, here
        // b's, though a was the file found blocked (a's has one chunk left to give).
        assert!(job.begin_chunk(&probes[0], 0));
        let long_ago = Instant::now() - 2 * SLOW_RANGE;
        for fs in &mut job.lock().files {
            fs.active.iter_mut().for_each(|a| a.since = long_ago);
        }
        assert_eq!(claimed(&job), Some((1, 1, 2)));
    }
}
