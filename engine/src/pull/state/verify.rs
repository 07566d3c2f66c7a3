//! Verification: a complete file checked against what is expected, before it is published.
//!
//! The ordered digests come from the hashers; the CRCs are combined from each chunk's, so no
//! byte is read again. A file whose size or digest does not match is downloaded again, up to
//! `Options::verify_attempts` downloads in all; a digest's error then says whether the wrong
//! digest was the same every time (pointing at the store's copy) or not (at what carries the
//! bytes).

use std::sync::atomic::Ordering::Relaxed;

use super::{Job, Phase};
use crate::digest::ordered::OrderedHashers;
use crate::digest::{Digest, crc};
use crate::disk::journal::Record;
use crate::disk::staging::FileRecord;
use crate::error::Error;

impl Job {
    /// Checks a complete file against what is expected. `Ok(Some(record))`: publish it;
    /// `Ok(None)`: it was reset for another download; `Err`: the pull fails.
    pub fn verify(
        &self,
        file: usize,
        generation: u32,
        hashers: Option<OrderedHashers>,
    ) -> Result<Option<FileRecord>, Error> {
        let meta = &self.metas[file];
        let mut st = self.lock();
        let fs = &mut st.files[file];
        if fs.generation != generation || fs.phase != Phase::Active {
            return Ok(None);
        }
        let hashers = hashers
            .or_else(|| fs.hashers.take())
            .unwrap_or_else(|| OrderedHashers::new([], 0));
        let mut digests = hashers.finish();
        for (k, &alg) in meta.crcs.iter().enumerate() {
            let parts =
                (0..fs.chunks).map(|c| (fs.crcs[k][c as usize], self.chunk_len(fs.size, c) as u64));
            digests.push(crc::combine(alg, parts));
        }
        let size_mismatch = meta.target.size.filter(|&s| s != fs.size);
        let mismatch = first_mismatch(&meta.target.expected, &digests);
        if size_mismatch.is_none() && mismatch.is_none() {
            fs.phase = Phase::Done;
            let record = FileRecord {
                path: meta.target.path.clone(),
                size: fs.size,
                digests,
            };
            if let Some(j) = fs.journal.as_mut() {
                j.append(&Record::Done {
                    file: record.clone(),
                })
                .map_err(|e| Error::local("write", &meta.journal, e))?;
            }
            fs.journal = None;
            fs.record = Some(record.clone());
            return Ok(Some(record));
        }
        self.metrics.verify_failures.inc();
        let downloads = fs.downloads;
        let failure = match (size_mismatch, mismatch) {
            (Some(expected), _) => Error::SizeMismatch {
                file: meta.target.path.clone(),
                attempts: downloads,
                expected,
                actual: fs.size,
            },
            (None, Some((expected, actual))) => {
                if fs.wrong.as_ref().is_some_and(|w| *w != actual) {
                    fs.wrong_varied = true;
                }
                fs.wrong = Some(actual.clone());
                Error::Verify {
                    file: meta.target.path.clone(),
                    attempts: downloads,
                    expected,
                    actual,
                    varied: fs.wrong_varied,
                }
            }
            (None, None) => unreachable!("a mismatch was found"),
        };
        // Bytes from mirrors (this run's, or a resumed run's that may have had them) are the
        // first suspects: the file comes again from the origin alone, without spending one of
        // the origin's attempts, and the mirrors that served it serve nothing more.
        let mirrored = fs.mirrored;
        if !fs.origin_only && (mirrored != 0 || fs.resumed_bytes > 0 && self.sources[file].len() > 1) {
            fs.origin_only = true;
            fs.downloads -= 1;
            for source in (1..self.sources[file].len()).filter(|&i| mirrored & (1 << i) != 0) {
                let why = format!("it served part of `{}`, which then failed verification", meta.target.path);
                self.drop_mirror(&mut st, self.host_of(file, source), &why);
            }
            drop(st);
            tracing::warn!(file = %meta.target.path, error = %failure, "verification failed after mirrors served part of the file; fetching it again from the origin alone");
            self.restart(file, generation, "verification failed", None, true);
            return Ok(None);
        }
        drop(st);
        if downloads < self.opts.verify_attempts {
            tracing::warn!(file = %meta.target.path, error = %failure, "verification failed; downloading the file again");
            self.restart(file, generation, "verification failed", None, true);
            Ok(None)
        } else {
            Err(failure)
        }
    }

    /// Marks a published file.
    pub fn published(&self) {
        self.progress.files_done.fetch_add(1, Relaxed);
        self.metrics.files.inc();
    }
}

/// The first expected digest that `digests` computed otherwise, with the computed one.
pub(crate) fn first_mismatch(expected: &[Digest], digests: &[Digest]) -> Option<(Digest, Digest)> {
    expected.iter().find_map(|e| {
        let actual = digests.iter().find(|d| d.algorithm == e.algorithm)?;
        (actual != e).then(|| (e.clone(), actual.clone()))
    })
}
