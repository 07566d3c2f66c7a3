//! Resume: the state each file starts a pull in, from what an earlier run left on disk.
//!
//! A file is finished already (its journal says so and its copy is in place), resumable (its
//! journal was written for the same source and settings, with a validator to check the
//! server's object against), or started over, with whatever an earlier run left of it
//! removed. A resumed file keeps only the chunks a checkpoint made durable or whose CRC still
//! matches what is on disk, and its journal is rewritten to hold exactly those.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::verify::{UNKNOWN_SOURCE, first_mismatch};
use super::{FileMeta, FileState, Phase, chunk_len};
use crate::digest::ordered::{OrderedHashers, SavedHashers};
use crate::digest::{Digest, crc};
use crate::disk::journal::{Header, Journal, Record};
use crate::disk::part;
use crate::disk::staging::FileRecord;
use crate::error::Error;
use crate::pull::plan;

/// A chunk a resumed file keeps: its index, and its CRCs as in `FileMeta::crcs`.
type Trusted = (u64, Vec<u64>);

impl FileState {
    /// The state of a file at the start of a pull: finished earlier, resumable from its
    /// journal, or new.
    pub fn prepare(meta: &FileMeta, chunk: u64, range_chunks: u64) -> Result<Self, Error> {
        if meta.target.size == Some(0) {
            return FileState::empty(meta);
        }
        let Some(loaded) = Journal::load(&meta.journal) else {
            return Ok(FileState::start_over(
                meta,
                meta.part
                    .exists()
                    .then_some("its journal is missing or unreadable"),
            ));
        };
        let h = &loaded.header;
        if let Some(record) = loaded.done {
            return Ok(FileState::finished(meta, h, record));
        }
        if h.source != meta.source || h.chunk_size != chunk || h.algorithms != meta.algorithms() {
            return Ok(FileState::start_over(
                meta,
                Some("the journal was written for another source or other settings"),
            ));
        }
        if h.validator.is_empty() {
            return Ok(FileState::start_over(
                meta,
                Some(
                    "the server gave no ETag or Last-Modified, so a partial file cannot be trusted",
                ),
            ));
        }
        let Ok(part_file) = File::open(&meta.part) else {
            return Ok(FileState::start_over(
                meta,
                Some("the partial file is missing"),
            ));
        };
        let trusted = trusted_chunks(
            meta,
            &part_file,
            h.size,
            chunk,
            loaded.synced,
            loaded.unsynced,
        );
        drop(part_file);
        FileState::resumed(meta, h, loaded.hash.as_ref(), trusted, chunk, range_chunks)
    }

    /// A file the store lists as empty: nothing to fetch (a ranged GET of nothing is not
    /// even well-formed), only to create and check against the listed digests.
    fn empty(meta: &FileMeta) -> Result<Self, Error> {
        let file = File::create(&meta.final_path)
            .map_err(|e| Error::local("create", &meta.final_path, e))?;
        file.sync_all()
            .map_err(|e| Error::local("flush", &meta.final_path, e))?;
        let mut digests = OrderedHashers::new(meta.ordered.iter().copied(), 0).finish();
        digests.extend(
            meta.crcs
                .iter()
                .map(|&alg| crc::combine(alg, std::iter::empty())),
        );
        if let Some((expected, actual)) = first_mismatch(&meta.target.expected, &digests) {
            return Err(Error::Verify {
                file: meta.target.path.clone(),
                attempts: 0,
                expected,
                actual,
                varied: false,
            });
        }
        let mut fs = FileState::fresh(meta);
        fs.phase = Phase::Done;
        fs.record = Some(FileRecord {
            path: meta.target.path.clone(),
            size: 0,
            digests,
        });
        Ok(fs)
    }

    /// A file to fetch from the start, with what an earlier run left of it removed; `why` it
    /// is not resumed goes to the log (`None`: there was nothing to resume).
    fn start_over(meta: &FileMeta, why: Option<&str>) -> Self {
        if let Some(why) = why {
            tracing::info!(file = %meta.target.path, reason = why, "not resuming; starting the file over");
        }
        let _ = std::fs::remove_file(&meta.part);
        let _ = std::fs::remove_file(&meta.journal);
        FileState::fresh(meta)
    }

    /// A file its journal records as done (under `header`): kept when its finished copy is
    /// in place, finishing the rename a stop interrupted if need be; otherwise started over.
    fn finished(meta: &FileMeta, header: &Header, record: FileRecord) -> Self {
        let same = header.source == meta.source && header.algorithms == meta.algorithms();
        let mut on_disk = std::fs::metadata(&meta.final_path).map(|m| m.len()).ok();
        // Stopped between the verification and the rename: the part still holds the
        // verified bytes, unless a power cut lost what was not flushed yet, so it is
        // hashed again before it is published.
        if same
            && on_disk.is_none()
            && part_holds(&meta.part, &record)
            && part::publish(&meta.part, &meta.final_path, record.size).is_ok()
        {
            tracing::info!(file = %meta.target.path, "finishing the rename a stop interrupted");
            on_disk = Some(record.size);
        }
        if on_disk == Some(record.size) && same {
            let mut fs = FileState::fresh(meta);
            fs.phase = Phase::Done;
            fs.size = record.size;
            fs.resumed_bytes = record.size;
            fs.record = Some(record);
            return fs;
        }
        let _ = std::fs::remove_file(&meta.final_path);
        FileState::start_over(meta, Some("its finished copy is missing or damaged"))
    }

    /// A file resumed with the `trusted` chunks of its part, under its journal's `header`:
    /// the part is kept and flushed, the journal rewritten, the missing ranges queued, and
    /// the first request checks that the server still has the same object.
    fn resumed(
        meta: &FileMeta,
        header: &Header,
        saved: Option<&SavedHashers>,
        trusted: Vec<Trusted>,
        chunk: u64,
        range_chunks: u64,
    ) -> Result<Self, Error> {
        let size = header.size;
        let chunks = size.div_ceil(chunk);
        let mut fs = FileState::fresh(meta);
        fs.done = vec![false; chunks as usize];
        fs.crcs = vec![vec![0; chunks as usize]; meta.crcs.len()];
        fs.served = vec![UNKNOWN_SOURCE; chunks as usize];
        for (i, crcs) in &trusted {
            fs.done[*i as usize] = true;
            for (k, v) in crcs.iter().enumerate() {
                fs.crcs[k][*i as usize] = *v;
            }
            fs.counted_bytes += chunk_len(size, chunk, *i) as u64;
        }
        fs.done_count = trusted.len() as u64;
        let hashers = fs.restore_hashers(meta, saved, size, chunk);
        let direct = part::create(&meta.part, Some(size))
            .map_err(|e| Error::local("open", &meta.part, e))?;
        File::open(&meta.part)
            .and_then(|f| f.sync_data())
            .map_err(|e| Error::local("flush", &meta.part, e))?;
        let journal = rewrite_journal(meta, header, &trusted, &hashers)?;
        let missing = plan::ranges(0, chunks, range_chunks, |c| fs.done[c as usize]);
        fs.queue(missing);
        fs.phase = Phase::Validate;
        fs.size = size;
        fs.chunks = chunks;
        fs.validator = header.validator.clone();
        fs.direct = direct;
        fs.hashers = Some(hashers);
        fs.records = trusted.len() as u64;
        fs.synced_records = fs.records;
        fs.journal = Some(journal);
        fs.downloads = 1;
        fs.resumed_bytes = fs.counted_bytes;
        tracing::info!(file = %meta.target.path, kept_bytes = fs.counted_bytes, size, "resuming");
        Ok(fs)
    }

    /// The hashers a resumed file of `size` bytes goes on with: the `saved` ones when they
    /// stopped at a chunk boundary (or the end) with every chunk before it kept, and the hash
    /// cursor moves there; new ones from the start otherwise.
    fn restore_hashers(
        &mut self,
        meta: &FileMeta,
        saved: Option<&SavedHashers>,
        size: u64,
        chunk: u64,
    ) -> OrderedHashers {
        let mut hashers = OrderedHashers::new(meta.ordered.iter().copied(), size);
        if let Some(h) = saved.and_then(|s| OrderedHashers::load(s, meta.ordered.iter().copied())) {
            let pos = h.position();
            let at = pos.div_ceil(chunk);
            if (pos % chunk == 0 || pos == size) && (0..at).all(|c| self.done[c as usize]) {
                self.cursor = at;
                hashers = h;
            }
        }
        hashers
    }
}

/// The chunks of a file's part that its journal vouches for, in order and once each: those a
/// checkpoint made durable (`synced`), and those written after it (`unsynced`) whose CRC
/// still matches what `part_file` holds.
fn trusted_chunks(
    meta: &FileMeta,
    part_file: &File,
    size: u64,
    chunk: u64,
    synced: Vec<Trusted>,
    unsynced: Vec<Trusted>,
) -> Vec<Trusted> {
    let mut trusted: Vec<Trusted> = synced
        .into_iter()
        .filter(|(_, c)| c.len() == meta.crcs.len())
        .collect();
    let mut data = vec![0u8; chunk as usize];
    for (i, crcs) in unsynced {
        let buf = &mut data[..chunk_len(size, chunk, i)];
        let intact = crcs.len() == meta.crcs.len()
            && part_file.read_exact_at(buf, i * chunk).is_ok()
            && crc::checksum(meta.crcs[0], buf) == crcs[0];
        if intact {
            trusted.push((i, crcs));
        } else {
            tracing::info!(file = %meta.target.path, chunk = i, "chunk did not reach the disk intact; fetching it again");
        }
    }
    trusted.sort_by_key(|(i, _)| *i);
    trusted.dedup_by_key(|(i, _)| *i);
    trusted
}

/// Rewrites a resumed file's journal (beside the old one, see `Journal::replace`) to hold
/// exactly its `trusted` chunks, then a checkpoint of them with the digests at the cursor.
fn rewrite_journal(
    meta: &FileMeta,
    header: &Header,
    trusted: &[Trusted],
    hashers: &OrderedHashers,
) -> Result<Journal, Error> {
    Journal::replace(&meta.journal, header, |journal| {
        for (index, crcs) in trusted {
            journal.append(&Record::Chunk {
                index: *index,
                crcs: crcs.clone(),
            })?;
        }
        journal.append(&Record::Sync {
            records: trusted.len() as u64,
            hash: (!hashers.is_empty()).then(|| hashers.save()),
        })
    })
    .map_err(|e| Error::local("write", &meta.journal, e))
}

/// Whether the first `record.size` bytes of `part` have the record's ordered digests (a record
/// with none cannot be checked this way).
fn part_holds(part: &std::path::Path, record: &FileRecord) -> bool {
    use std::io::Read;
    let ordered: Vec<&Digest> = record
        .digests
        .iter()
        .filter(|d| d.algorithm.is_ordered())
        .collect();
    let Ok(file) = std::fs::File::open(part) else {
        return false;
    };
    if ordered.is_empty() || file.metadata().map_or(true, |m| m.len() < record.size) {
        return false;
    }
    let mut hashers = OrderedHashers::new(ordered.iter().map(|d| d.algorithm), record.size);
    let mut reader = file.take(record.size);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hashers.update(&buf[..n]),
            Err(_) => return false,
        }
    }
    hashers.position() == record.size && hashers.finish().iter().all(|d| ordered.contains(&d))
}

#[cfg(test)]
mod tests {
    use sha2::Digest as _;

    use super::super::{FileMeta, FileState, Phase};
    use crate::digest::{Algorithm, Digest};
    use crate::disk::journal::{self, Header, Journal, Record};
    use crate::disk::staging::FileRecord;
    use crate::target::Target;

    /// A part verified and journaled `done`, its rename not made: what a stop between
    /// the two leaves.
    fn stopped_before_rename(dir: &std::path::Path, content: &[u8]) -> FileMeta {
        let target = Target::parse("http://127.0.0.1:9/model.bin").unwrap();
        let meta = FileMeta::new(
            target,
            dir.join("model.bin.part"),
            dir.join("model.bin.modelpull-journal"),
            dir.join("model.bin"),
        );
        std::fs::write(&meta.part, content).unwrap();
        let header = Header {
            version: journal::VERSION,
            source: meta.source.clone(),
            size: content.len() as u64,
            validator: "\"v\"".into(),
            chunk_size: 4096,
            algorithms: meta.algorithms(),
        };
        let mut j = Journal::create(&meta.journal, &header).unwrap();
        j.append(&Record::Done {
            file: FileRecord {
                path: "model.bin".into(),
                size: content.len() as u64,
                digests: vec![Digest {
                    algorithm: Algorithm::Sha256,
                    value: sha2::Sha256::digest(b"verified bytes").to_vec(),
                }],
            },
        })
        .unwrap();
        meta
    }

    #[test]
    fn a_rename_a_stop_interrupted_is_finished_without_fetching_again() {
        let dir = tempfile::tempdir().unwrap();
        let meta = stopped_before_rename(dir.path(), b"verified bytes");
        let fs = FileState::prepare(&meta, 4096, 4).unwrap();
        assert_eq!(fs.phase, Phase::Done);
        assert_eq!(std::fs::read(&meta.final_path).unwrap(), b"verified bytes");
        assert!(!meta.part.exists());
    }

    #[test]
    fn a_part_that_no_longer_matches_its_record_is_fetched_again() {
        let dir = tempfile::tempdir().unwrap();
        let meta = stopped_before_rename(dir.path(), b"verified bytez");
        let fs = FileState::prepare(&meta, 4096, 4).unwrap();
        assert_eq!(fs.phase, Phase::New);
        assert!(!meta.final_path.exists());
    }

    #[test]
    fn the_journal_crc_is_crc32c_or_the_stores_own() {
        let crcs = |fragment: &str| {
            let target = Target::parse(&format!("http://127.0.0.1:9/m.bin{fragment}")).unwrap();
            let meta = FileMeta::new(target, "p".into(), "j".into(), "m.bin".into());
            meta.crcs
        };
        let h = "0".repeat(64);
        assert_eq!(crcs(""), [Algorithm::Crc32c]);
        assert_eq!(crcs(&format!("#sha256={h}")), [Algorithm::Crc32c]);
        assert_eq!(crcs("#crc32c=00000000"), [Algorithm::Crc32c]);
        assert_eq!(crcs("#crc64nvme=0000000000000000"), [Algorithm::Crc64nvme]);
        assert_eq!(
            crcs("#crc64nvme=0000000000000000&crc32c=00000000"),
            [Algorithm::Crc32c, Algorithm::Crc64nvme]
        );
        assert_eq!(
            crcs(&format!("#sha256={h}&crc32=00000000")),
            [Algorithm::Crc32]
        );
    }

    #[test]
    fn unsynced_chunks_are_checked_with_the_first_crc() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::parse("http://127.0.0.1:9/m.bin#crc64nvme=0000000000000000").unwrap();
        let meta = FileMeta::new(
            target,
            dir.path().join("m.bin.part"),
            dir.path().join("m.bin.modelpull-journal"),
            dir.path().join("m.bin"),
        );
        let chunk = 4096u64;
        let data: Vec<u8> = (0..chunk as usize * 3 - 100)
            .map(|i| (i * 7) as u8)
            .collect();
        std::fs::write(&meta.part, &data).unwrap();
        let crc = |c: u64| {
            let end = ((c + 1) * chunk).min(data.len() as u64) as usize;
            crate::digest::crc::checksum(Algorithm::Crc64nvme, &data[(c * chunk) as usize..end])
        };
        let part = std::fs::File::open(&meta.part).unwrap();
        let unsynced = vec![
            (0, vec![crc(0)]),
            // Recorded, but the bytes on disk are not those (lost in a power cut).
            (1, vec![crc(1) ^ 1]),
            (2, vec![crc(2)]),
            // A record from a journal with other CRCs.
            (1, vec![crc(1), 0]),
        ];
        let trusted =
            super::trusted_chunks(&meta, &part, data.len() as u64, chunk, vec![], unsynced);
        assert_eq!(trusted, [(0, vec![crc(0)]), (2, vec![crc(2)])]);
    }
}
