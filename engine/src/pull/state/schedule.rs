//! The scheduler: which piece of work a worker gets next.
//!
//! A file's first request (a probe, or the check that a resumed file's object is unchanged)
//! comes first, then the lowest pending range of the earliest file, so hash cursors keep
//! moving, within the memory window (see `window`). When nothing can be claimed, a range in
//! flight may be split instead (see `steal`). Each host's connection limit (see `hosts`) is
//! applied here: a claim counts against the host of the source it goes to (the origin for a
//! file's first request; a mirror, when the file has one that can take it, for a range) until
//! the worker releases it.

use std::time::{Duration, Instant};

use super::{
    ActiveRange, Claim, ClaimKind, FileState, Job, JobState, Pending, Phase, Pick, Waited, Work,
};

/// How long a worker waits before it asks again when nothing can be claimed.
const POLL: Duration = Duration::from_millis(5);

/// How many of a file's ready ranges one claim looks at for one whose source has room.
const SCAN: usize = 64;

/// How long a range no mirror has yet waits before the mirrors are asked again.
pub(super) const NOT_YET: Duration = Duration::from_millis(250);

impl Job {
    /// Hands out the next piece of work: probes first, then the lowest pending range of the
    /// earliest file (so hash cursors keep moving), then half of the largest range in flight.
    pub fn claim(&self) -> Work {
        let mut guard = self.lock();
        let now = Instant::now();
        let st = &mut *guard;
        if st.is_over() {
            return Work::Finished;
        }
        self.tune(st, now);
        let mut wait = POLL;
        let mut blocked = false;
        let committed = self.window_committed(&st.files);
        let window = self.window(st);
        let span = self.claim_span(st);
        let own = self.own_front(st);
        for file in 0..st.files.len() {
            let fs = &st.files[file];
            match fs.phase {
                Phase::New | Phase::Validate => {
                    if let Some(nb) = fs.not_before.filter(|&nb| nb > now) {
                        wait = wait.min(nb - now);
                        continue;
                    }
                    let origin = self.host_of(file, 0);
                    if self.host_full(st, origin) {
                        self.held_back(st, origin);
                        continue;
                    }
                    return self.claim_first_request(st, file);
                }
                Phase::Active => {
                    if let Some(nb) = fs.pending.values().filter_map(|p| p.not_before).min() {
                        wait = wait.min(nb.saturating_duration_since(now));
                    }
                    let meta = &self.metas[file];
                    let span_of = |(s, e): (u64, u64)| {
                        if meta.ordered.is_empty() {
                            e
                        } else {
                            e.min(s + span)
                        }
                    };
                    // The lowest ranges that fit the window, each to a source with room: one
                    // whose mirrors are all busy or have not got it yet does not hold back
                    // those after it that another peer can send now.
                    let mut candidates: Vec<_> = Vec::new();
                    let ready = fs.ready_ranges(now, ..);
                    for (s, e, avoid, waiting) in ready
                        .filter(|r| !self.owned_later(file, r.0, own.as_ref().map(|o| o.0)))
                        .take(SCAN)
                    {
                        if !self.fits_window(meta, fs, window, committed, s, span_of((s, e))) {
                            if candidates.is_empty()
                                && matches!(
                                    self.source_for(st, file, s, avoid, waiting.map(|w| w.since)),
                                    Pick::Source(_)
                                )
                            {
                                blocked = true;
                            }
                            break;
                        }
                        candidates.push((s, e, avoid, waiting));
                    }
                    // This node's own share of a group's pull (the gate gives it the origin)
                    // goes first, past the window too: the group's other nodes wait for it,
                    // and holding it back behind ranges that wait for them left the origin
                    // idle much of the time. What memory cannot park is read back to be
                    // hashed.
                    if let Some((f, block)) = &own
                        && *f == file
                        && let Some(first) = fs.ready_ranges(now, block.clone()).next()
                    {
                        candidates.retain(|c| c.0 != first.0);
                        candidates.insert(0, first);
                    }
                    for (s, e, avoid, waiting) in candidates {
                        let e = span_of((s, e));
                        match self.source_for(st, file, s, avoid, waiting.map(|w| w.since)) {
                            Pick::Source(source) => {
                                return self.claim_range(st, file, s, e, source, now);
                            }
                            Pick::Full(host) => self.held_back(st, host),
                            Pick::Wait => {
                                // Asked of every mirror: ask again, after a pause.
                                let p = st.files[file].pending.get_mut(&s).expect("pending range");
                                p.avoid = 0;
                                p.waiting.get_or_insert(Waited {
                                    since: now,
                                    not_yet: 0,
                                });
                                p.not_before = Some(now + NOT_YET);
                                wait = wait.min(NOT_YET);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        self.split_range(st, blocked, now)
            .unwrap_or(Work::Wait(wait))
    }

    /// The group's front as this node fetches it: the lowest block of the model (its earliest
    /// file first) of this node's own share of a group's pull (the blocks its
    /// [`crate::mirror::OriginGate`] gives it) that has chunks pending or in flight, as its
    /// file and chunks; `None` without a gate, or when no such block is left.
    ///
    /// Only that file's share goes to the origin: what of it fits the window, and past the
    /// window that one block. Fetched all at once, every block of the share arrives at the end
    /// together and no node can pass any on before then: each node's tuner grows its
    /// connections to the shared origin for a larger slice of it, and a group of 8 had the
    /// whole of a sharded model in flight at once, each block at 1/64 of the origin (the
    /// window judges each file's ranges by that file's own cursor, so every shard's share fit
    /// in it). Front to back, the group fetches the model at the origin's pace, and each block
    /// is passed on while the next ones come.
    fn own_front(&self, st: &JobState) -> Option<(usize, std::ops::Range<u64>)> {
        let gate = self.opts.origin_gate.as_ref()?;
        let block = self.block_chunks()?;
        st.files
            .iter()
            .zip(&self.metas)
            .enumerate()
            .filter(|(_, (fs, _))| fs.phase == Phase::Active)
            .find_map(|(file, (fs, meta))| {
                let own = |b: u64| gate.allows(&meta.target.path, b * block * self.chunk_size());
                let lowest = fs.lowest_own_block(block, own)?;
                Some((file, lowest * block..(lowest + 1) * block))
            })
    }

    /// Whether the range of `file` starting at chunk `start` is of this node's own share of a
    /// file after the one at its front (`front`, the file of [`Job::own_front`]): it waits its
    /// turn.
    fn owned_later(&self, file: usize, start: u64, front: Option<usize>) -> bool {
        let Some(gate) = &self.opts.origin_gate else {
            return false;
        };
        front != Some(file) && gate.allows(&self.metas[file].target.path, start * self.chunk_size())
    }

    /// Whether the pull is over: failed, or every file done.
    pub fn over(&self) -> bool {
        self.lock().is_over()
    }

    /// Claims a file's first request: the probe of a new file, or the check that a resumed
    /// file's object is unchanged, which also fetches its lowest pending range (if any).
    fn claim_first_request(&self, st: &mut JobState, file: usize) -> Work {
        let fs = &mut st.files[file];
        // With mirrors to fetch from, the origin is only asked for the size and validator.
        let mirrored = self.sources[file].len() > 1 && !fs.origin_only;
        let (kind, start, end, attempts) = if fs.phase == Phase::New {
            let span = if mirrored { 0 } else { self.range_chunks() };
            (ClaimKind::Probe, 0, span, fs.probe_attempts)
        } else if !mirrored && let Some((start, p)) = fs.pending.pop_first() {
            (
                ClaimKind::Validate,
                start,
                p.end,
                p.attempts.max(fs.probe_attempts),
            )
        } else {
            (ClaimKind::Validate, 0, 0, fs.probe_attempts)
        };
        fs.phase = Phase::Probing;
        let generation = fs.generation;
        let id = self.open_claim(st, file, 0);
        Work::Fetch(Claim {
            file,
            generation,
            id,
            source: 0,
            avoid: 0,
            waiting: None,
            kind,
            start,
            end,
            attempts,
        })
    }

    /// Claims chunks `[start, end)` of a file's pending range that starts at `start` for its
    /// source `source`: they become a range in flight, and the rest of the pending range, if
    /// any, stays pending as it was.
    fn claim_range(
        &self,
        st: &mut JobState,
        file: usize,
        start: u64,
        end: u64,
        source: usize,
        now: Instant,
    ) -> Work {
        let pending = &mut st.files[file].pending;
        let mut p = pending.remove(&start).expect("pending range");
        if end < p.end {
            pending.insert(
                end,
                Pending {
                    end: p.end,
                    ..p.clone()
                },
            );
            p.end = end;
        }
        let id = self.open_claim(st, file, source);
        let fs = &mut st.files[file];
        self.asking_for_block(fs, start, source, p.waiting, now);
        fs.active.push(ActiveRange {
            id,
            next: start,
            end: p.end,
            since: now,
        });
        Work::Fetch(Claim {
            file,
            generation: fs.generation,
            id,
            source,
            avoid: p.avoid,
            waiting: p.waiting,
            kind: ClaimKind::Range,
            start,
            end: p.end,
            attempts: p.attempts,
        })
    }
}

impl JobState {
    fn is_over(&self) -> bool {
        self.failed.is_some() || self.files.iter().all(|f| f.phase == Phase::Done)
    }
}

impl FileState {
    /// The lowest pending range whose pause (after a failure) is over, as `(start, end)`, the
    /// sources it must avoid and since when it has waited for a mirror.
    pub(super) fn ready_range(&self, now: Instant) -> Option<(u64, u64, u64, Option<Waited>)> {
        self.ready_ranges(now, ..).next()
    }

    /// The pending ranges starting within `starts` whose pause is over, lowest first, as
    /// [`FileState::ready_range`] gives them.
    pub(super) fn ready_ranges(
        &self,
        now: Instant,
        starts: impl std::ops::RangeBounds<u64>,
    ) -> impl Iterator<Item = (u64, u64, u64, Option<Waited>)> {
        self.pending
            .range(starts)
            .filter(move |(_, p)| p.not_before.is_none_or(|nb| nb <= now))
            .map(|(&s, p)| (s, p.end, p.avoid, p.waiting))
    }

    /// The lowest block (of `block` chunks) that `own` accepts and that has chunks pending or
    /// in flight: the one block of its own share a group's pull fetches past its window.
    pub(super) fn lowest_own_block(&self, block: u64, own: impl Fn(u64) -> bool) -> Option<u64> {
        let active = self
            .active
            .iter()
            .map(|a| (a.end - 1) / block)
            .filter(|&b| own(b))
            .min();
        // One question to `own` per block with ranges pending, not per range: it hashes the
        // file's path, and this runs on every claim.
        let mut next = self.pending.keys().next().map(|&s| s / block);
        while let Some(b) = next.filter(|&b| !own(b)) {
            next = self
                .pending
                .range((b + 1) * block..)
                .next()
                .map(|(&s, _)| s / block);
        }
        active.into_iter().chain(next).min()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{FileMeta, Work, test_job, test_meta, test_mirrored_meta, test_started};
    use crate::pull::Options;

    #[test]
    fn a_range_whose_mirror_is_full_does_not_hold_back_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let peers = ["http://127.0.0.1:8/p/", "http://127.0.0.2:8/p/"];
        let meta = test_mirrored_meta(dir.path(), "a.bin", &peers);
        let opts = Options {
            chunk_size: 4096,
            range_size: 4096,
            memory_limit: 64 * 4096,
            ..Options::default()
        };
        let job = test_job(opts, vec![meta]);
        test_started(&job, 8 * 4096);
        // The first peer has every connection it may have; the lowest range may go to it
        // only (the second said it has not got it), the next to either.
        {
            let mut st = job.lock();
            let first = job.sources[0][1];
            st.hosts[first].active = crate::pull::tune::MIRROR_MAX;
            st.files[0].pending.get_mut(&0).unwrap().avoid = 1 << 2;
        }
        match job.claim() {
            Work::Fetch(c) => assert_eq!((c.start, c.source), (1, 2), "{c:?}"),
            other => panic!("the next range, from the second peer, not {other:?}"),
        }
    }

    #[test]
    fn a_file_is_in_flight_while_a_claim_on_it_is_out() {
        let dir = tempfile::tempdir().unwrap();
        let metas: Vec<FileMeta> = ["a.bin", "b.bin"]
            .iter()
            .map(|name| test_meta(dir.path(), name, ""))
            .collect();
        let job = test_job(Options::default(), metas);
        let mut claimed = Vec::new();
        for _ in 0..2 {
            match job.claim() {
                Work::Fetch(c) => claimed.push(c),
                other => panic!("a probe, not {other:?}"),
            }
        }
        assert_eq!(job.progress.in_flight(), ["a.bin", "b.bin"]);
        job.release_host(&claimed[0], false);
        assert_eq!(job.progress.in_flight(), ["b.bin"]);
        job.release_host(&claimed[1], false);
        assert!(job.progress.in_flight().is_empty());
    }
}
