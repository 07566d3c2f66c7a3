//! The hash cursor: the one sequential step of a file.
//!
//! Ordered digests take a file's bytes in order, one hasher at a time, while its chunks arrive
//! in any order from several connections. Whoever holds a file's hashers moves its cursor: a
//! worker whose chunk lands at the cursor hashes it (before its write, when it can), parked
//! chunks follow from memory and the others are read back from disk. This module decides, at
//! each chunk and at each step of the hasher, who hashes what next, and when the file is
//! complete.

use std::sync::atomic::Ordering::Relaxed;

use super::{AfterChunk, Claim, HashStep, Job, Kick, Phase};
use crate::buf::AlignedBuf;
use crate::digest::ordered::OrderedHashers;
use crate::disk::journal::Record;
use crate::error::Error;

impl Job {
    /// Records a written chunk and says what the worker must do next.
    pub fn complete_chunk(
        &self,
        claim: &Claim,
        c: u64,
        buf: AlignedBuf,
        crcs: Vec<u64>,
    ) -> Result<AfterChunk, Error> {
        let meta = &self.metas[claim.file];
        let mut st = self.lock();
        let may_park = self.held(&st) < self.buffers();
        let fs = &mut st.files[claim.file];
        if fs.generation != claim.generation {
            return Ok(AfterChunk::Nothing(buf));
        }
        let hashed = fs.unwritten.remove(&c);
        if fs.done[c as usize] {
            return Ok(AfterChunk::Nothing(buf));
        }
        if let Some(j) = fs.journal.as_mut() {
            j.append(&Record::Chunk {
                index: c,
                crcs: crcs.clone(),
            })
            .map_err(|e| Error::local("write", &meta.journal, e))?;
        }
        fs.records += 1;
        fs.done[c as usize] = true;
        fs.done_count += 1;
        if claim.source > 0 {
            fs.mirrored |= 1 << claim.source;
        }
        if let Some(s) = fs.served.get_mut(c as usize) {
            *s = claim.source as u8;
        }
        for (k, v) in crcs.into_iter().enumerate() {
            fs.crcs[k][c as usize] = v;
        }
        let len = buf.len() as u64;
        fs.counted_bytes += len;
        self.progress.done_bytes.fetch_add(len, Relaxed);
        if meta.ordered.is_empty() {
            if fs.done_count == fs.chunks {
                return Ok(AfterChunk::Finalize(buf));
            }
            if self.checkpoint_due(fs) {
                fs.syncing = true;
                return Ok(AfterChunk::Checkpoint {
                    records: fs.records,
                    buf,
                });
            }
            return Ok(AfterChunk::Nothing(buf));
        }
        if hashed {
            return Ok(match fs.hashers.take() {
                Some(h) => AfterChunk::Resume(h, buf),
                None => AfterChunk::Nothing(buf),
            });
        }
        if c == fs.cursor
            && let Some(h) = fs.hashers.take()
        {
            return Ok(AfterChunk::Hash(h, buf));
        }
        // Ahead of the cursor (or the hasher is busy): keep it in memory if the bound and the
        // pull's share of it allow, otherwise it is on disk already and will be read back.
        let replacement = if may_park {
            self.pool.try_get_spare()
        } else {
            None
        };
        match replacement {
            Some(replacement) => {
                fs.parked.insert(c, buf);
                Ok(AfterChunk::Nothing(replacement))
            }
            None => Ok(AfterChunk::Nothing(buf)),
        }
    }

    /// The chunk `c` a worker has just received, before it writes it: when it is at the hash
    /// cursor and the hashers are free, they are handed over to hash it from the worker's
    /// buffer at once, so the hash (the one sequential step of a file) never waits for a disk
    /// write. Not while a checkpoint is due: it needs every chunk the hashers passed on disk.
    pub fn hashers_before_write(&self, claim: &Claim, c: u64) -> Option<OrderedHashers> {
        if self.metas[claim.file].ordered.is_empty() {
            return None;
        }
        let mut st = self.lock();
        let fs = &mut st.files[claim.file];
        if fs.generation != claim.generation || c != fs.cursor || self.checkpoint_due(fs) {
            return None;
        }
        let h = fs.hashers.take()?;
        fs.unwritten.insert(c);
        Some(h)
    }

    /// The hasher has hashed up to `position`: decides what it does next. `checkpointed`
    /// says a checkpoint was just written, so another is not due. `before_write`: the hasher
    /// holds a chunk not yet written, so it may only hash parked chunks.
    pub fn hash_step(
        &self,
        file: usize,
        generation: u32,
        hashers: &mut Option<OrderedHashers>,
        checkpointed: bool,
        before_write: bool,
    ) -> HashStep {
        let mut st = self.lock();
        let fs = &mut st.files[file];
        let h = hashers.as_ref().expect("hashers in hand");
        if fs.generation != generation {
            return HashStep::Stale;
        }
        fs.cursor = h.position().div_ceil(self.chunk_size());
        // Chunks hashed before they were written must reach the disk before the file is
        // finalized or a checkpoint vouches for them; their writers resume the hashers then.
        let all_written = fs.unwritten.is_empty();
        if fs.cursor >= fs.chunks && all_written {
            return HashStep::Finalize;
        }
        if let Some(buf) = fs.parked.remove(&fs.cursor) {
            return HashStep::Buffer(buf);
        }
        if !before_write && fs.cursor < fs.chunks && fs.done[fs.cursor as usize] {
            return HashStep::Read;
        }
        if !before_write && !checkpointed && all_written && self.checkpoint_due(fs) {
            fs.syncing = true;
            return HashStep::Checkpoint {
                records: fs.records,
            };
        }
        fs.hashers = hashers.take();
        HashStep::Stop
    }

    /// After a probe or validation: a file with nothing left to fetch (empty, or resumed with
    /// every chunk on disk) still needs hashing and publishing.
    pub fn kick(&self, claim: &Claim) -> Kick {
        let meta = &self.metas[claim.file];
        let mut st = self.lock();
        let fs = &mut st.files[claim.file];
        if fs.generation != claim.generation || fs.phase != Phase::Active {
            return Kick::Nothing;
        }
        if meta.ordered.is_empty() {
            return if fs.done_count == fs.chunks {
                Kick::Finalize
            } else {
                Kick::Nothing
            };
        }
        let ready = fs.cursor >= fs.chunks || fs.done[fs.cursor as usize];
        match fs.hashers.take() {
            Some(h) if ready => Kick::Hash(h),
            other => {
                fs.hashers = other;
                Kick::Nothing
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use sha2::Digest as _;

    use super::super::{AfterChunk, HashStep, Kick, Work, test_job, test_meta};
    use crate::digest::crc;
    use crate::digest::ordered::OrderedHashers;
    use crate::pull::Options;

    /// A chunk the hashers took before it was written: they go on with the chunks parked
    /// after it, but no checkpoint vouches for it and the file is not finalized until its
    /// writer has recorded it and resumed them.
    #[test]
    fn a_chunk_hashed_before_its_write_holds_back_checkpoints_and_the_finalize() {
        const CHUNK: usize = 4096;
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..4 * CHUNK).map(|i| (i * 7 % 251) as u8).collect();
        let sha = hex::encode(sha2::Sha256::digest(&data));
        let meta = test_meta(dir.path(), "m.bin", &format!("#sha256={sha}"));
        let opts = Options {
            chunk_size: CHUNK,
            range_size: 2 * CHUNK as u64,
            connections: Some(2),
            memory_limit: 8 * CHUNK,
            checkpoint_interval: Duration::from_secs(3600),
            ..Options::default()
        };
        let job = test_job(opts, vec![meta]);
        let Work::Fetch(claim) = job.claim() else {
            panic!("a probe")
        };
        let url = job.metas[0].target.url.clone();
        job.start_file(&claim, data.len() as u64, "\"v\"".into(), url, true)
            .unwrap();
        let chunk = |c: usize| {
            let mut buf = job.pool.get();
            let bytes = &data[c * CHUNK..(c + 1) * CHUNK];
            buf.full_mut()[..CHUNK].copy_from_slice(bytes);
            buf.set_len(CHUNK);
            (buf, vec![crc::checksum(crate::Algorithm::Crc32c, bytes)])
        };
        let complete = |c: usize| {
            let (buf, crcs) = chunk(c);
            job.complete_chunk(&claim, c as u64, buf, crcs).unwrap()
        };
        let step = |h: &mut Option<OrderedHashers>, before_write: bool| {
            job.hash_step(0, claim.generation, h, false, before_write)
        };

        // Chunk 1 arrives first and is parked; chunk 0, at the cursor, is hashed before its
        // write, and the parked chunk after it.
        assert!(matches!(complete(1), AfterChunk::Nothing(_)));
        let mut h = job.hashers_before_write(&claim, 0);
        h.as_mut().unwrap().update(&data[..CHUNK]);
        let HashStep::Buffer(parked) = step(&mut h, true) else {
            panic!("the parked chunk 1")
        };
        h.as_mut().unwrap().update(parked.as_slice());
        assert!(matches!(step(&mut h, true), HashStep::Stop));
        assert!(h.is_none(), "the hashers were put back");

        // A checkpoint falls due: no chunk is hashed ahead of its write meanwhile, and the
        // hasher of chunk 2 may not checkpoint while chunk 0 is not on disk.
        job.lock().files[0].last_sync = Instant::now() - Duration::from_secs(7200);
        assert!(job.hashers_before_write(&claim, 2).is_none());
        let AfterChunk::Hash(h2, buf) = complete(2) else {
            panic!("chunk 2 is at the cursor")
        };
        let mut h = Some(h2);
        h.as_mut().unwrap().update(buf.as_slice());
        assert!(matches!(step(&mut h, false), HashStep::Stop));

        // Chunk 0 is written: its writer resumes the hashers, which checkpoint now.
        let AfterChunk::Resume(h0, _) = complete(0) else {
            panic!("the writer of chunk 0 resumes the hashers")
        };
        let mut h = Some(h0);
        assert!(matches!(
            step(&mut h, false),
            HashStep::Checkpoint { records: 3 }
        ));
        job.checkpoint_done(0, claim.generation, 3, h.as_ref())
            .unwrap();
        assert!(matches!(
            job.hash_step(0, claim.generation, &mut h, true, false),
            HashStep::Stop
        ));

        // The last chunk, hashed before its write, completes the hash but not the file.
        let mut h = job.hashers_before_write(&claim, 3);
        h.as_mut().unwrap().update(&data[3 * CHUNK..]);
        assert!(matches!(step(&mut h, true), HashStep::Stop));
        let Kick::Hash(h3) = job.kick(&claim) else {
            panic!("the hashers are free at the end of the file")
        };
        let mut h = Some(h3);
        assert!(matches!(step(&mut h, false), HashStep::Stop));
        let AfterChunk::Resume(h3, _) = complete(3) else {
            panic!("the writer of chunk 3 resumes the hashers")
        };
        let mut h = Some(h3);
        assert!(matches!(step(&mut h, false), HashStep::Finalize));
        let record = job.verify(0, claim.generation, h).unwrap().unwrap();
        assert_eq!(hex::encode(&record.digests[0].value), sha);
    }
}
