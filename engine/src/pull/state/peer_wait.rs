//! Waiting for a group's peers: a block whose holder has not got it yet is asked about by one
//! request at a time.
//!
//! In a node group's pull (an [`crate::mirror::OriginGate`]), each block of a file is fetched
//! from the origin by one peer, its holder, front to back, and the others ask that peer for it.
//! While the holder answers "not yet" (416, or 404 before its pull has the file), the block's
//! pending ranges wait [`NOT_YET`] together. When they are ready again, the first one claimed
//! asks for the block and the others wait for its answer: bytes let them all go at once (those
//! the holder has not got yet park the block again), another "not yet" parks it again. Before, each
//! range of one chunk asked on its own every quarter second, and a group of 8 pulling a sharded
//! model answered each other about 3,000 "not yet" a second, which used the CPU its transfers
//! needed.

use std::ops::Range;
use std::time::Instant;

use super::schedule::NOT_YET;
use super::{Claim, FileState, Job, Waited};

impl Job {
    /// Chunks per block of the pull's origin gate; `None` without a gate.
    pub(super) fn block_chunks(&self) -> Option<u64> {
        let gate = self.opts.origin_gate.as_ref()?;
        Some((gate.block() / self.chunk_size()).max(1))
    }

    /// The chunks of the gate's block that holds chunk `c`; `None` without a gate.
    pub(super) fn block_around(&self, c: u64) -> Option<Range<u64>> {
        let n = self.block_chunks()?;
        Some(c / n * n..(c / n + 1) * n)
    }

    /// A range of `fs` that waited for a peer (`claim_waiting`) and starts at `start` is
    /// claimed for source `source`. Asking a peer, it asks for its block, and the block's other
    /// pending ranges wait for the answer. Going to the origin (the block became this node's
    /// share, or the peers were given up on), nothing waits for a peer any more: the block's
    /// ranges go as any others.
    pub(super) fn asking_for_block(
        &self,
        fs: &mut FileState,
        start: u64,
        source: usize,
        claim_waiting: Option<Waited>,
        now: Instant,
    ) {
        let (Some(waited), Some(block)) = (claim_waiting, self.block_around(start)) else {
            return;
        };
        if source > 0 {
            fs.park(block, now + NOT_YET, waited.since);
        } else {
            fs.unpark(block);
        }
    }

    /// A peer's bytes for `claim` are coming: when the claim asked for a block its ranges
    /// waited on, they may all go now. The peer may hold only part of what was asked (it sends
    /// what it has from the first byte on): ranges past that part then hear "not yet" and park
    /// the block again.
    pub(super) fn block_arrives(&self, fs: &mut FileState, claim: &Claim) {
        if claim.source > 0
            && claim.waiting.is_some()
            && fs.generation == claim.generation
            && let Some(block) = self.block_around(claim.start)
        {
            fs.unpark(block);
        }
    }
}

impl FileState {
    /// The pending ranges starting in `block` wait until `until` at least, and are marked as
    /// waiting for a peer (since `since`, unless they already were).
    pub(super) fn park(&mut self, block: Range<u64>, until: Instant, since: Instant) {
        for (_, p) in self.pending.range_mut(block) {
            if p.not_before.is_none_or(|nb| nb < until) {
                p.not_before = Some(until);
            }
            p.waiting.get_or_insert(Waited { since, not_yet: 0 });
        }
    }

    /// The pending ranges starting in `block` that wait for a peer are ready now, and wait no
    /// longer.
    fn unpark(&mut self, block: Range<u64>) {
        for (_, p) in self.pending.range_mut(block) {
            if p.waiting.take().is_some() {
                p.not_before = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use super::super::{Claim, Job, test_claims, test_job, test_mirrored_meta, test_started};
    use crate::http::HttpError;
    use crate::pull::Options;
    use crate::pull::state::MirrorFault;

    /// A group's gate: every block is the first mirror's to fetch from the origin, until
    /// `mine` says it is this node's.
    #[derive(Debug, Default)]
    struct PeerHolds {
        mine: AtomicBool,
    }

    impl crate::mirror::OriginGate for PeerHolds {
        fn allows(&self, _: &str, _: u64) -> bool {
            self.mine.load(Ordering::Relaxed)
        }

        fn block(&self) -> u64 {
            8 * 4096
        }

        fn holder(&self, _: &str, _: u64) -> Option<usize> {
            Some(0)
        }
    }

    /// A file of one block of 8 chunks, at one peer that holds it, in a group's pull through
    /// `gate`: the first round of claims (a chunk each, to the peer) has been answered "not
    /// yet", so the block waits. Returns the job and those claims.
    fn waiting_block(dir: &std::path::Path, gate: Arc<PeerHolds>) -> (Job, Vec<Claim>) {
        let meta = test_mirrored_meta(dir, "a.bin", &["http://127.0.0.1:8/p/"]);
        let opts = Options {
            chunk_size: 4096,
            range_size: 4096,
            memory_limit: 64 * 4096,
            connections: Some(16),
            origin_gate: Some(gate),
            ..Options::default()
        };
        let job = test_job(opts, vec![meta]);
        test_started(&job, 8 * 4096);
        let first = test_claims(&job);
        assert!(first.len() > 1, "{first:?}");
        for c in &first {
            assert_eq!(c.source, 1, "{c:?}");
            job.release_host(c, false);
            job.mirror_failed(c, c.start, not_yet(), MirrorFault::Failed);
        }
        assert!(test_claims(&job).is_empty(), "the block waits");
        (job, first)
    }

    /// The block's pause is over.
    fn pause_over(job: &Job) {
        let past = Instant::now() - Duration::from_secs(1);
        for p in job.lock().files[0].pending.values_mut() {
            p.not_before = Some(past);
        }
    }

    fn not_yet() -> HttpError {
        HttpError::Status {
            status: 416,
            url: "http://127.0.0.1:8/p/a.bin".into(),
            retry_after: None,
        }
    }

    fn starts(claims: &[Claim]) -> Vec<(u64, usize)> {
        claims.iter().map(|c| (c.start, c.source)).collect()
    }

    #[test]
    fn a_block_its_holder_has_not_got_is_asked_for_by_one_range_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let (job, _) = waiting_block(dir.path(), Arc::default());
        // Once the pause is over, one range asks; the rest wait for its answer.
        pause_over(&job);
        let asking = test_claims(&job);
        assert_eq!(starts(&asking), [(0, 1)]);
        // Its bytes come: the holder has the block from there on, and every range goes.
        job.streaming(&asking[0]);
        let rest = test_claims(&job);
        assert_eq!(starts(&rest), (1..8).map(|c| (c, 1)).collect::<Vec<_>>());
    }

    #[test]
    fn a_waiting_block_that_becomes_this_nodes_goes_to_the_origin_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let gate = Arc::new(PeerHolds::default());
        let (job, _) = waiting_block(dir.path(), gate.clone());
        // The holder's stripe is taken over by this node: the block's ranges all go to the
        // origin together, not one per pause.
        gate.mine.store(true, Ordering::Relaxed);
        pause_over(&job);
        let claims = test_claims(&job);
        assert_eq!(starts(&claims), (0..8).map(|c| (c, 0)).collect::<Vec<_>>());
    }

    #[test]
    fn a_range_waits_past_patience_while_its_holder_sends_other_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let long_ago = Instant::now() - crate::mirror::PATIENCE - Duration::from_secs(1);
        // The block's ranges have waited longer than `PATIENCE`, and were just asked of every
        // peer.
        let waited_long = |job: &Job| {
            for p in job.lock().files[0].pending.values_mut() {
                p.waiting.as_mut().unwrap().since = long_ago;
                p.avoid = 1 << 1;
            }
            pause_over(job);
        };
        // The holder has sent this node nothing: the ranges go to the origin.
        let (job, _) = waiting_block(dir.path(), Arc::default());
        waited_long(&job);
        let claims = test_claims(&job);
        assert!(
            !claims.is_empty() && claims.iter().all(|c| c.source == 0),
            "{claims:?}"
        );
        // It sent bytes a moment ago (of another block): it is working its way to this one,
        // and the ranges wait for it still.
        let (job, first) = waiting_block(dir.path(), Arc::default());
        job.streaming(&first[0]);
        waited_long(&job);
        assert!(
            test_claims(&job).is_empty(),
            "the ranges wait for the holder"
        );
    }
}
