//! Recovering from failures: a request tried again after a pause, a file started over.
//!
//! Both are bounded, and past the bounds the pull fails: a range (or a probe) gets
//! `Options::retries` attempts, counted again from one once a range makes progress; a file may
//! start over `MAX_RESTARTS` times when it cannot go on (its object changed on the server, or a
//! transfer without `Range` broke), and is downloaded at most `Options::verify_attempts` times
//! when its digest does not match (see `verify`).

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use super::schedule::NOT_YET;
use super::{Claim, ClaimKind, FileState, Job, Overload, Pending, Phase, Waited};
use crate::error::Error;
use crate::http::HttpError;
use crate::pull::limits::backoff;
use crate::pull::tune;

/// Times a file may change on the server mid-download before the pull gives up.
const MAX_RESTARTS: u32 = 3;

/// How a mirror failed a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MirrorFault {
    /// An error, a stall mid-body, or an answer without the bytes: the range goes on, and
    /// errors (not answers) three in a row drop the mirror.
    Failed,
    /// It answered nothing for the whole connect or stall timeout: cut off from this node, or
    /// hung. Asking it again would cost every range another timeout, so it is dropped at once.
    Unresponsive,
    /// It contradicted the origin (a chunk's CRC, a range, a size): caught, and not asked again.
    Untrusted,
}

/// While the mirror that fetches a block from the origin answers that it has not got a range
/// of it yet, the other mirrors are asked for it every this many of its answers only.
const ASK_OTHERS_EVERY: u32 = 8;

impl Job {
    /// A request failed at chunk `from`: queue the rest again after a pause, or end the pull
    /// when the attempts are spent. `overload`: what the failure said about the host (see
    /// `hosts`); a cut is logged once there, so its retries only at debug.
    pub fn retry(&self, claim: &Claim, from: u64, err: HttpError, overload: Overload) {
        let meta = &self.metas[claim.file];
        let mut st = self.lock();
        if st.failed.is_some() {
            return;
        }
        let fs = &mut st.files[claim.file];
        if fs.generation != claim.generation {
            return;
        }
        let progressed = claim.kind == ClaimKind::Range && from > claim.start;
        let attempts = match overload {
            _ if progressed => 1,
            Overload::Spared => claim.attempts,
            Overload::No | Overload::Counted => claim.attempts + 1,
        };
        if attempts > self.opts.retries {
            drop(st);
            self.fail(Error::Source {
                file: meta.target.path.clone(),
                attempts,
                source: err,
            });
            return;
        }
        // An overloaded host's refusals wait one step longer than their attempt says, and at
        // least until its tuner has judged the cut (an epoch, plus jitter so they do not come
        // back together): sooner, they would only meet the same refusal.
        let step = attempts + u32::from(overload != Overload::No);
        let mut delay = backoff(
            step,
            self.opts.backoff_base,
            self.opts.backoff_cap,
            err.retry_after(),
        );
        if overload != Overload::No {
            delay = delay.max(tune::EPOCH.mul_f64(1.0 + rand::random::<f64>()));
        }
        let delay_ms = delay.as_millis() as u64;
        if overload != Overload::No {
            tracing::debug!(file = %meta.target.path, error = %err, attempt = attempts, delay_ms, "retrying");
        } else {
            tracing::warn!(file = %meta.target.path, error = %err, attempt = attempts, delay_ms, "retrying");
        }
        self.progress.retries.fetch_add(1, Relaxed);
        self.metrics.retries.inc();
        let not_before = Some(Instant::now() + delay);
        match fs.phase {
            Phase::Probing if claim.kind == ClaimKind::Probe => {
                fs.phase = Phase::New;
                fs.probe_attempts = attempts;
                fs.not_before = not_before;
            }
            Phase::Probing => {
                fs.phase = Phase::Validate;
                fs.probe_attempts = attempts;
                fs.not_before = not_before;
                if claim.end > claim.start {
                    fs.pending.insert(
                        claim.start,
                        Pending {
                            end: claim.end,
                            attempts,
                            not_before,
                            avoid: claim.avoid,
                            waiting: claim.waiting,
                        },
                    );
                }
            }
            _ if !fs.ranged => {
                // Without Range support the only way to continue is from the start.
                drop(st);
                self.restart(
                    claim.file,
                    claim.generation,
                    "the server does not support ranges and the transfer broke",
                    Some(delay),
                    false,
                );
            }
            _ => fs.requeue(claim.id, from, |end| Pending {
                end,
                attempts,
                not_before,
                avoid: claim.avoid,
                waiting: claim.waiting,
            }),
        }
    }

    /// A request to a mirror failed at chunk `from`: the rest of its range goes to another
    /// source at once, without spending an attempt (a range's attempts are the origin's).
    /// `fault` says what it costs the mirror. Answering that it is busy (429, 503) or does not
    /// hold these bytes (416) is no mark against it, nor is answering that it does not have
    /// the file (404, 410: no more of the file's ranges go to it).
    pub fn mirror_failed(&self, claim: &Claim, from: u64, err: HttpError, fault: MirrorFault) {
        let meta = &self.metas[claim.file];
        let mut st = self.lock();
        if st.failed.is_some() {
            return;
        }
        let host = self.host_of(claim.file, claim.source);
        // A mirror without the file says so once per file; that is no mark against it.
        // 416: not these bytes (a peer whose own pull has not reached them yet). With an
        // origin gate the mirrors are peers pulling the same model, so a 404 only means that a
        // peer's pull has not started the file yet.
        let peers = self.opts.origin_gate.is_some();
        let (lacking, not_yet, no_mark) = match err {
            HttpError::Status { status, .. } => {
                let not_yet = status == 416 || peers && matches!(status, 404 | 410);
                (
                    !peers && matches!(status, 404 | 410),
                    not_yet,
                    not_yet || matches!(status, 429 | 503),
                )
            }
            _ => (false, false, false),
        };
        if lacking && st.files[claim.file].generation == claim.generation {
            st.files[claim.file].lacking |= 1 << claim.source;
        } else if !no_mark {
            self.count_mirror_failure(&mut st, host, fault, &err);
        }
        tracing::debug!(file = %meta.target.path, error = %err, "a mirror failed a range; it goes to another source");
        self.progress.retries.fetch_add(1, Relaxed);
        self.metrics.retries.inc();
        // The peer that fetches the block from the origin has not got these bytes yet. The
        // others get the block from it, so they have not either, unless the stripe changed
        // hands: the range waits for it, and asks the others only now and then. (Asking every
        // peer each time made each node of a group of 8 send over a hundred "not yet" a
        // second.)
        let holder_not_yet = not_yet
            && self
                .opts
                .origin_gate
                .as_ref()
                .and_then(|g| g.holder(&meta.target.path, from * self.chunk_size()))
                .map(|m| m + 1)
                == Some(claim.source);
        let waited = claim.waiting.map_or(0, |w| w.not_yet) + 1;
        let wait = holder_not_yet && !waited.is_multiple_of(ASK_OTHERS_EVERY);
        let fs = &mut st.files[claim.file];
        if fs.generation != claim.generation {
            return;
        }
        let now = Instant::now();
        if wait && let Some(block) = self.block_around(from) {
            // The holder fetches its block in order, so the rest of the block is not there
            // either: its pending ranges wait too (see `peer_wait`).
            fs.park(block, now + NOT_YET, claim.waiting.map_or(now, |w| w.since));
        }
        fs.requeue(claim.id, from, |end| Pending {
            end,
            attempts: claim.attempts,
            not_before: wait.then(|| now + NOT_YET),
            avoid: if wait {
                claim.avoid
            } else {
                claim.avoid | 1 << claim.source
            },
            waiting: if holder_not_yet {
                Some(Waited {
                    since: claim.waiting.map_or(now, |w| w.since),
                    not_yet: waited,
                })
            } else {
                claim.waiting
            },
        });
    }

    /// Starts a file over: the server's object changed, the digest did not match, or a broken
    /// transfer cannot be resumed. `verify` says whether this counts as a verification attempt.
    pub fn restart(
        &self,
        file: usize,
        generation: u32,
        reason: &str,
        delay: Option<Duration>,
        verify: bool,
    ) {
        let meta = &self.metas[file];
        let mut st = self.lock();
        let fs = &mut st.files[file];
        if fs.generation != generation || fs.phase == Phase::Done {
            return;
        }
        let restarts = fs.restarts + u32::from(!verify);
        if restarts > MAX_RESTARTS {
            drop(st);
            self.fail(Error::Remote {
                file: meta.target.path.clone(),
                message: format!("{reason}; gave up after {MAX_RESTARTS} restarts"),
            });
            return;
        }
        tracing::warn!(file = %meta.target.path, reason, "starting the file over");
        let downloads = fs.downloads;
        let (wrong, wrong_varied) = (fs.wrong.take(), fs.wrong_varied);
        let origin_only = fs.origin_only;
        let suspects = fs.suspects.take();
        let counted = fs.counted_bytes;
        let size_known = fs.chunks > 0 || fs.size > 0;
        let size = fs.size;
        for (_, buf) in std::mem::take(&mut fs.parked) {
            self.pool.put(buf);
        }
        let mut fresh = FileState::fresh(meta);
        fresh.generation = generation + 1;
        fresh.downloads = downloads;
        fresh.wrong = wrong;
        fresh.wrong_varied = wrong_varied;
        fresh.restarts = restarts;
        fresh.origin_only = origin_only;
        fresh.suspects = suspects;
        fresh.not_before = delay.map(|d| Instant::now() + d);
        *fs = fresh;
        // Before the lock is released: once it is, a worker may create the next generation's
        // part and journal at these paths, which a later removal would take away.
        let _ = std::fs::remove_file(&meta.journal);
        let _ = std::fs::remove_file(&meta.part);
        drop(st);
        self.progress.done_bytes.fetch_sub(counted, Relaxed);
        if size_known {
            self.progress.total_bytes.fetch_sub(size, Relaxed);
        }
    }
}

impl FileState {
    /// Takes range `id` out of flight and queues what is left of it from chunk `from`, as
    /// `pending` makes it for its end.
    fn requeue(&mut self, id: u64, from: u64, pending: impl FnOnce(u64) -> Pending) {
        let Some(pos) = self.active.iter().position(|a| a.id == id) else {
            return;
        };
        let a = self.active.swap_remove(pos);
        if from < a.end {
            self.pending.insert(from, pending(a.end));
        }
    }
}
