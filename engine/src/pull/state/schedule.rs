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
                    let Some(mut ready) = fs.ready_range(now) else {
                        continue;
                    };
                    let meta = &self.metas[file];
                    let span_of = |(s, e): (u64, u64)| {
                        if meta.ordered.is_empty() { e } else { e.min(s + span) }
                    };
                    let mut fits = self.fits_window(
                        meta,
                        fs,
                        window,
                        committed,
                        ready.0,
                        span_of((ready.0, ready.1)),
                    );
                    // This node's own share of a group's pull (the gate gives it the origin)
                    // is claimed beyond the window: the group's other nodes wait for it, and
                    // holding it back behind ranges that wait for them left the origin idle
                    // much of the time. What memory cannot park is read back to be hashed.
                    let chunk = self.chunk_size();
                    if !fits
                        && let Some(gate) = &self.opts.origin_gate
                        && let Some(own) = fs
                            .ready_range_where(now, |s| gate.allows(&meta.target.path, s * chunk))
                    {
                        ready = own;
                        fits = true;
                    }
                    let (s, e, avoid, waiting) = ready;
                    let e = span_of((s, e));
                    match self.source_for(st, file, s, avoid, waiting.map(|w| w.since)) {
                        Pick::Source(source) if fits => {
                            return self.claim_range(st, file, s, e, source, now);
                        }
                        Pick::Source(_) => blocked = true,
                        Pick::Full(host) if fits => self.held_back(st, host),
                        Pick::Full(_) => {}
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
                _ => {}
            }
        }
        self.split_range(st, blocked, now)
            .unwrap_or(Work::Wait(wait))
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
        self.ready_range_where(now, |_| true)
    }

    /// [`FileState::ready_range`] among the ranges whose first chunk `take` accepts.
    pub(super) fn ready_range_where(
        &self,
        now: Instant,
        mut take: impl FnMut(u64) -> bool,
    ) -> Option<(u64, u64, u64, Option<Waited>)> {
        self.pending
            .iter()
            .find(|&(&s, p)| p.not_before.is_none_or(|nb| nb <= now) && take(s))
            .map(|(&s, p)| (s, p.end, p.avoid, p.waiting))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{FileMeta, Work, test_job, test_meta};
    use crate::pull::Options;

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
