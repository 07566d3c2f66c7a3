//! Waiting for a group's peers: a block whose holder has not got it yet is asked about by one
//! request at a time.
//!
//! In a node group's pull (an [`crate::mirror::OriginGate`]), each block of a file is fetched
//! from the origin by one peer, its holder, front to back, and the others ask that peer for it.
//! While the holder answers "not yet" (416, or 404 before its pull has the file), the block's
//! pending ranges wait [`NOT_YET`] together. When they are ready again, the first one claimed
//! asks for the block and the others wait for its answer: bytes let them all go at once (the
//! holder has the block from there on), another "not yet" parks the block again. Before, each
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

    /// A range of `fs` that waited for a peer (`claim_waiting`) starts at `start` is claimed:
    /// it asks for its block, and the block's other pending ranges wait for the answer.
    pub(super) fn asking_for_block(
        &self,
        fs: &mut FileState,
        start: u64,
        claim_waiting: Option<Waited>,
        now: Instant,
    ) {
        if let (Some(waited), Some(block)) = (claim_waiting, self.block_around(start)) {
            fs.park(block, now + NOT_YET, waited.since);
        }
    }

    /// A peer's bytes for `claim` are coming: when the claim asked for a block its ranges
    /// waited on, they may all go now.
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
    use std::time::Instant;

    use super::super::{test_claims, test_job, test_mirrored_meta, test_started};
    use crate::http::HttpError;
    use crate::pull::Options;
    use crate::pull::state::MirrorFault;

    /// A group's gate: the block of every range is another node's, the first mirror's.
    #[derive(Debug)]
    struct PeersHold;

    impl crate::mirror::OriginGate for PeersHold {
        fn allows(&self, _: &str, _: u64) -> bool {
            false
        }

        fn block(&self) -> u64 {
            8 * 4096
        }

        fn holder(&self, _: &str, _: u64) -> Option<usize> {
            Some(0)
        }
    }

    fn not_yet() -> HttpError {
        HttpError::Status {
            status: 416,
            url: "http://127.0.0.1:8/p/a.bin".into(),
            retry_after: None,
        }
    }

    #[test]
    fn a_block_its_holder_has_not_got_is_asked_for_by_one_range_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let meta = test_mirrored_meta(dir.path(), "a.bin", &["http://127.0.0.1:8/p/"]);
        let opts = Options {
            chunk_size: 4096,
            range_size: 4096,
            memory_limit: 64 * 4096,
            connections: Some(16),
            origin_gate: Some(std::sync::Arc::new(PeersHold)),
            ..Options::default()
        };
        let job = test_job(opts, vec![meta]);
        test_started(&job, 8 * 4096);
        // The first round asks for each chunk of the block (nothing is known yet); the holder
        // has none of them.
        let first = test_claims(&job);
        assert!(first.len() > 1, "{first:?}");
        for c in &first {
            job.release_host(c, false);
            job.mirror_failed(c, c.start, not_yet(), MirrorFault::Failed);
        }
        assert!(test_claims(&job).is_empty(), "the block waits");
        // Once the pause is over, one range asks; the rest wait for its answer.
        let past = Instant::now() - std::time::Duration::from_secs(1);
        for p in job.lock().files[0].pending.values_mut() {
            p.not_before = Some(past);
        }
        let asking = test_claims(&job);
        assert_eq!(asking.len(), 1, "{asking:?}");
        assert_eq!((asking[0].start, asking[0].source), (0, 1));
        // Its bytes come: the holder has the block from there on, and every range goes.
        job.streaming(&asking[0]);
        let rest = test_claims(&job);
        let starts: Vec<u64> = rest.iter().map(|c| c.start).collect();
        assert_eq!(starts, (1..8).collect::<Vec<_>>());
    }
}
