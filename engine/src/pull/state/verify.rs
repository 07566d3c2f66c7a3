//! Verification: a complete file checked against what is expected, before it is published.
//!
//! The ordered digests come from the hashers; the CRCs are combined from each chunk's, so no
//! byte is read again. A file whose size or digest does not match is downloaded again, up to
//! `Options::verify_attempts` downloads in all; a digest's error then says whether the wrong
//! digest was the same every time (pointing at the store's copy) or not (at what carries the
//! bytes).
//!
//! A file whose digest fails after mirrors served part of it comes again from the origin alone,
//! its mirrors set aside meanwhile. Each chunk's CRC and the source that sent it are kept from
//! the failed copy ([`Suspects`]); once the origin's copy verifies, the two are compared chunk
//! by chunk: the mirrors whose chunks differ are caught, the others asked again. An honest peer
//! that served its share of a file a liar corrupted elsewhere keeps serving.

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
            if let Some(s) = fs.suspects.take() {
                let guilty = s.culprits(&fs.crcs[0]);
                for (source, host) in self.mirrors_in(file, s.mirrors) {
                    let why = (guilty & (1 << source) != 0).then(|| {
                        format!(
                            "it sent chunks of `{}` that differ from the origin's",
                            meta.target.path
                        )
                    });
                    self.acquit(&mut st, host, why.as_deref());
                }
            }
            let fs = &mut st.files[file];
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
        // the origin's attempts, and the mirrors that served it are set aside until the
        // origin's copy tells which of them sent other bytes.
        let mirrored = fs.mirrored;
        if !fs.origin_only
            && (mirrored != 0 || fs.resumed_bytes > 0 && self.sources[file].len() > 1)
        {
            fs.origin_only = true;
            fs.downloads -= 1;
            if mirrored != 0 {
                fs.suspects = Some(Suspects {
                    mirrors: mirrored,
                    served: fs.served.clone(),
                    crcs: fs.crcs[0].clone(),
                });
                for (_, host) in self.mirrors_in(file, mirrored) {
                    self.suspect(&mut st, host);
                }
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

    /// The mirrors of `file` in `mask` (bit per source index), as `(source, host)`.
    fn mirrors_in(&self, file: usize, mask: u64) -> impl Iterator<Item = (usize, usize)> + '_ {
        (1..self.sources[file].len())
            .filter(move |&i| mask & (1 << i) != 0)
            .map(move |i| (i, self.host_of(file, i)))
    }

    /// Marks a published file.
    pub fn published(&self) {
        self.progress.files_done.fetch_add(1, Relaxed);
        self.metrics.files.inc();
    }
}

/// [`FileState::served`](super::FileState) of a chunk this run did not fetch (resumed from a
/// journal).
pub(super) const UNKNOWN_SOURCE: u8 = u8::MAX;

/// What the mirrors sent of a copy of a file that failed verification.
#[derive(Debug)]
pub(super) struct Suspects {
    /// The mirrors that sent part of it (bit per source index).
    mirrors: u64,
    /// Per chunk, the source that sent it.
    served: Vec<u8>,
    /// Per chunk, its first CRC (as `FileState::crcs[0]`).
    crcs: Vec<u64>,
}

impl Suspects {
    /// The mirrors (bit per source index) to blame, given the first CRC of each chunk of the
    /// origin's copy: those that sent a chunk that differs from it. When no chunk differs, the
    /// comparison cannot tell (a chunk forged to keep its CRC), and every suspect is blamed;
    /// when only chunks from the origin or from an earlier run differ, none is. A copy of
    /// another size (the origin's object changed) blames none.
    fn culprits(&self, origin: &[u64]) -> u64 {
        if origin.len() != self.crcs.len() || origin.len() != self.served.len() {
            return 0;
        }
        let mut differed = false;
        let mut blamed = 0;
        for ((&source, &sent), &right) in self.served.iter().zip(&self.crcs).zip(origin) {
            if sent != right {
                differed = true;
                if source != 0 && source != UNKNOWN_SOURCE {
                    blamed |= 1 << source;
                }
            }
        }
        if differed {
            blamed & self.mirrors
        } else {
            self.mirrors
        }
    }
}

/// The first expected digest that `digests` computed otherwise, with the computed one.
pub(crate) fn first_mismatch(expected: &[Digest], digests: &[Digest]) -> Option<(Digest, Digest)> {
    expected.iter().find_map(|e| {
        let actual = digests.iter().find(|d| d.algorithm == e.algorithm)?;
        (actual != e).then(|| (e.clone(), actual.clone()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks 0–3 from the origin (0), mirror 1 and mirror 2, with CRCs 10, 11, 12, 13.
    fn suspects(served: [u8; 4]) -> Suspects {
        Suspects {
            mirrors: served
                .iter()
                .filter(|&&s| s != 0 && s != UNKNOWN_SOURCE)
                .fold(0, |m, &s| m | 1 << s),
            served: served.to_vec(),
            crcs: vec![10, 11, 12, 13],
        }
    }

    #[test]
    fn the_mirror_whose_chunk_differs_is_blamed_and_the_others_are_not() {
        let s = suspects([0, 1, 2, 2]);
        assert_eq!(s.culprits(&[10, 11, 12, 99]), 1 << 2);
        assert_eq!(s.culprits(&[10, 99, 12, 99]), 1 << 1 | 1 << 2);
    }

    #[test]
    fn a_difference_where_no_mirror_served_blames_none() {
        let s = suspects([0, 1, UNKNOWN_SOURCE, 2]);
        assert_eq!(s.culprits(&[99, 11, 12, 13]), 0);
        assert_eq!(s.culprits(&[10, 11, 99, 13]), 0);
    }

    #[test]
    fn no_chunk_that_differs_blames_every_suspect() {
        // The digest failed, yet every CRC matches: a chunk was forged to keep its CRC, and
        // the comparison cannot tell which mirror sent it.
        let s = suspects([0, 1, 2, 2]);
        assert_eq!(s.culprits(&[10, 11, 12, 13]), 1 << 1 | 1 << 2);
    }

    #[test]
    fn a_copy_of_another_size_blames_none() {
        let s = suspects([0, 1, 2, 2]);
        assert_eq!(s.culprits(&[10, 11, 12]), 0);
    }
}
