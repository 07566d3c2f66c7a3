//! Ranges in flight, and work stealing: taking over the upper half of one.
//!
//! A worker reserves the chunks of its range one at a time ([`Job::begin_chunk`]), so the
//! range's end may move down while it works: when nothing is left to claim, another worker
//! is given the upper half of a range in flight and the first stops where the cut was made.
//! That way one slow connection never holds the end of the pull, nor, while the memory window
//! is full, the hash cursor that the window waits for.

use std::time::{Duration, Instant};

use super::{ActiveRange, Claim, ClaimKind, Job, JobState, Phase, Pick, Work};

/// A range in flight this long while its file's window is full counts as slow.
pub(super) const SLOW_RANGE: Duration = Duration::from_secs(2);

/// A range younger than this is not split at the end of a file: it most likely ends before a
/// new request would bring its first byte, and the bytes the server sends the first worker
/// past the cut are wasted (with 2 MiB chunks, a file of a few MiB is already splittable).
const YOUNG_RANGE: Duration = Duration::from_millis(200);

impl Job {
    /// Reserves chunk `c` for the worker holding range `id`. `false`: the range was cut short
    /// (split, or the file was reset) and the worker must stop.
    pub fn begin_chunk(&self, claim: &Claim, c: u64) -> bool {
        let mut st = self.lock();
        let fs = &mut st.files[claim.file];
        if fs.generation != claim.generation {
            return false;
        }
        let Some(pos) = fs.active.iter().position(|a| a.id == claim.id) else {
            return false;
        };
        if c >= fs.active[pos].end {
            fs.active.swap_remove(pos);
            return false;
        }
        fs.active[pos].next = c + 1;
        true
    }

    /// The worker finished its range.
    pub fn finish_range(&self, claim: &Claim) {
        let mut st = self.lock();
        let fs = &mut st.files[claim.file];
        if fs.generation == claim.generation {
            fs.active.retain(|a| a.id != claim.id);
        }
        self.metrics.ranges.inc();
    }

    /// Nothing to claim: at the end of a file (in a group's pull, none of its ranges pending),
    /// takes over the upper half of the range with the most left, so that one slow connection
    /// never holds the end of the pull. When a window is full instead (`blocked`), only a range
    /// that has been slow is split: one at a file's cursor, holding the window back (any
    /// file's, since the window is shared).
    pub(super) fn split_range(
        &self,
        st: &mut JobState,
        blocked: bool,
        now: Instant,
    ) -> Option<Work> {
        let (file, j, source) = self.split_victim(st, blocked, now)?;
        let id = self.open_claim(st, file, source);
        let fs = &mut st.files[file];
        let a = &mut fs.active[j];
        let mid = a.next + (a.end - a.next) / 2;
        let end = a.end;
        a.end = mid;
        fs.active.push(ActiveRange {
            id,
            next: mid,
            end,
            since: now,
        });
        tracing::debug!(file = %self.metas[file].target.path, from = mid, to = end, "split a range in flight");
        Some(Work::Fetch(Claim {
            file,
            generation: fs.generation,
            id,
            source,
            avoid: 0,
            waiting: None,
            kind: ClaimKind::Range,
            start: mid,
            end,
            attempts: 0,
        }))
    }

    /// The range in flight to split, as its file, its place in the file's `active` and the
    /// source the split half goes to: the one with the most chunks left (two at least, and an
    /// upper half no shorter than a new claim may be), in flight for [`YOUNG_RANGE`] at least,
    /// whose upper half has a source to go to now.
    fn split_victim(
        &self,
        st: &JobState,
        blocked: bool,
        now: Instant,
    ) -> Option<(usize, usize, usize)> {
        let slow = self.opts.stall_timeout.min(SLOW_RANGE);
        st.files
            .iter()
            .enumerate()
            .filter(|&(_, fs)| fs.phase == Phase::Active && fs.ranged)
            // In a group's pull, not blocked, only a file's end is split: while ranges of it
            // are pending (waiting for a peer, or, of the node's share, for their turn), a
            // split only cuts a request the origin has already sent past the cut into the
            // socket's buffers.
            .filter(|&(_, fs)| blocked || self.opts.origin_gate.is_none() || fs.pending.is_empty())
            .flat_map(|(i, fs)| {
                fs.active
                    .iter()
                    .enumerate()
                    .filter(move |(_, a)| {
                        let age = now.saturating_duration_since(a.since);
                        if blocked {
                            a.next <= fs.cursor + 1 && age >= slow
                        } else {
                            age >= YOUNG_RANGE
                        }
                    })
                    .map(move |(j, a)| (i, j, a.end - a.next, a.next + (a.end - a.next) / 2))
            })
            .filter(|&(_, _, left, _)| left >= 2 && left - left / 2 >= self.least_claim())
            .filter_map(
                |(i, j, left, mid)| match self.source_for(st, i, mid, 0, None) {
                    Pick::Source(source) => Some((i, j, source, left)),
                    Pick::Full(_) | Pick::Wait => None,
                },
            )
            .max_by_key(|&(_, _, _, left)| left)
            .map(|(i, j, source, _)| (i, j, source))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::super::{ClaimKind, Job, Work, test_job, test_meta};
    use super::YOUNG_RANGE;
    use crate::http::proxy::ProxyConfig;
    use crate::pull::{Options, PROXY_MIN_RANGE};

    const MIB: u64 = 1 << 20;

    /// One file of 16 MiB in 1 MiB chunks and 8 MiB ranges, both in flight (the probe's and
    /// one claimed) for longer than [`YOUNG_RANGE`], each with `done` chunks begun: the next
    /// claim can only split. `grouped`: a group's pull whose gate gives this node every block.
    fn ranges_in_flight(dir: &std::path::Path, proxied: bool, grouped: bool, done: u64) -> Job {
        let opts = Options {
            chunk_size: MIB as usize,
            range_size: 8 * MIB,
            memory_limit: 64 * MIB as usize,
            connections: Some(4),
            proxy: proxied.then(|| Arc::new(ProxyConfig::default())),
            origin_gate: grouped.then(|| Arc::new(AllMine) as Arc<dyn crate::mirror::OriginGate>),
            ..Options::default()
        };
        let metas = vec![test_meta(dir, "w.bin", "")];
        let job = test_job(opts, metas);
        let Work::Fetch(probe) = job.claim() else {
            panic!("a probe first");
        };
        assert_eq!(probe.kind, ClaimKind::Probe);
        let url = job.metas[0].target.url.clone();
        job.start_file(&probe, 16 * MIB, "\"v\"".into(), url, true)
            .unwrap();
        let Work::Fetch(second) = job.claim() else {
            panic!("the second range");
        };
        for c in [&probe, &second] {
            for k in 0..done {
                assert!(job.begin_chunk(c, c.start + k));
            }
        }
        let long_ago = Instant::now() - 2 * YOUNG_RANGE;
        for a in &mut job.lock().files[0].active {
            a.since = long_ago;
        }
        job
    }

    /// A group's gate that gives this node every block.
    #[derive(Debug)]
    struct AllMine;

    impl crate::mirror::OriginGate for AllMine {
        fn allows(&self, _: &str, _: u64) -> bool {
            true
        }

        fn block(&self) -> u64 {
            8 * MIB
        }
    }

    fn split(job: &Job) -> Option<(u64, u64)> {
        match job.claim() {
            Work::Fetch(c) => Some((c.start, c.end)),
            _ => None,
        }
    }

    #[test]
    fn the_end_of_a_file_is_split_from_the_range_with_most_left() {
        let dir = tempfile::tempdir().unwrap();
        let job = ranges_in_flight(dir.path(), false, false, 2);
        // Chunks 2..8 and 10..16 are left: the upper half of one goes to a new claim.
        let (start, end) = split(&job).unwrap();
        assert!(matches!((start, end), (5, 8) | (13, 16)), "{start}..{end}");
    }

    #[test]
    fn in_a_groups_pull_a_file_with_ranges_pending_is_not_split() {
        let dir = tempfile::tempdir().unwrap();
        // The second range's last chunks wait (their turn in a group's share, a peer's bytes,
        // a pause after a failure): in a group's pull the file is not at its end, and nothing
        // is cut; alone, the slow range is still split.
        for grouped in [true, false] {
            let job = ranges_in_flight(dir.path(), false, grouped, 2);
            {
                let mut st = job.lock();
                let fs = &mut st.files[0];
                let a = fs.active.iter_mut().find(|a| a.end == 16).unwrap();
                a.end = 14;
                fs.pending.insert(
                    14,
                    super::super::Pending {
                        end: 16,
                        attempts: 0,
                        not_before: Some(Instant::now() + std::time::Duration::from_secs(60)),
                        avoid: 0,
                        waiting: None,
                    },
                );
            }
            assert_eq!(split(&job).is_some(), !grouped, "grouped: {grouped}");
        }
    }

    #[test]
    fn through_a_proxy_a_split_half_is_no_shorter_than_a_claim() {
        let dir = tempfile::tempdir().unwrap();
        let least = PROXY_MIN_RANGE / MIB;
        // Six chunks left in each range: an upper half of three is shorter than a claim
        // through a proxy may be, so the ranges run to their ends.
        let job = ranges_in_flight(dir.path(), true, false, 2);
        assert_eq!(split(&job), None);
        // Eight left: the upper half is a whole claim.
        let job = ranges_in_flight(dir.path(), true, false, 0);
        let (start, end) = split(&job).unwrap();
        assert_eq!(end - start, least, "{start}..{end}");
    }
}
