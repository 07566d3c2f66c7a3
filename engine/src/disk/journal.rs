//! The resume journal beside each `.part`: an append-only file of JSON lines.
//!
//! - line 1, the header: which remote object this is (source without query string, size,
//!   validator), the chunk size and the digests being computed. A restart with any of these
//!   different starts the file over.
//! - `{"chunk":{"index":i,"crcs":[…]}}` after chunk `i` was written, with its CRCs (the one
//!   resume checks first: crc32c, or the store's own CRC when it lists one but not crc32c);
//!   appended without fsync, so a killed process loses nothing that reached the kernel.
//! - `{"sync":{"records":n,"hash":…}}` after the part was `fdatasync`ed: the first `n` chunk
//!   records are on stable storage, and `hash` is the saved state of the ordered digests at
//!   their cursor (all of whose bytes were among those flushed).
//! - `{"done":{…}}` once the file is verified, just before `.part` is renamed: a restart finds
//!   the file finished and its digests recorded.
//!
//! On restart, chunks recorded after the last sync line are read back and checked against
//! their first CRC before they are trusted (a power cut can keep the record and lose the data).
//! A torn last line is ignored. A resumed pull rewrites the journal from what it verified, so
//! a journal is only ever appended to by the process that created it.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Algorithm;
use crate::digest::ordered::SavedHashers;
use crate::disk::staging::FileRecord;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub version: u32,
    /// The source URL without query string, fragment or credentials.
    pub source: String,
    pub size: u64,
    /// ETag, or Last-Modified when the server has no ETag.
    pub validator: String,
    pub chunk_size: u64,
    pub algorithms: Vec<Algorithm>,
}

pub const VERSION: u32 = 1;

/// What a journal's name adds to its file's.
pub const SUFFIX: &str = ".modelpull-journal";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Record {
    Chunk {
        index: u64,
        crcs: Vec<u64>,
    },
    Sync {
        records: u64,
        hash: Option<SavedHashers>,
    },
    Done {
        file: FileRecord,
    },
}

/// What a journal says after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub header: Header,
    /// Chunks written and made durable, with their CRCs.
    pub synced: Vec<(u64, Vec<u64>)>,
    /// Chunks written but not known to be flushed: to be checked before they are trusted.
    pub unsynced: Vec<(u64, Vec<u64>)>,
    /// Digest state at the cursor, from the last sync line that had one.
    pub hash: Option<SavedHashers>,
    /// The finished file, when the journal says so.
    pub done: Option<FileRecord>,
}

/// An open journal, appended to as chunks complete.
#[derive(Debug)]
pub struct Journal {
    file: File,
    path: PathBuf,
}

impl Journal {
    /// Starts a new journal, replacing any old one.
    pub fn create(path: &Path, header: &Header) -> io::Result<Self> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        let mut line = serde_json::to_vec(header).map_err(io::Error::other)?;
        line.push(b'\n');
        file.write_all(&line)?;
        Ok(Self {
            file,
            path: path.to_owned(),
        })
    }

    /// Writes a new journal beside `path` with `fill`, then renames it over `path`: a crash
    /// while a resumed pull rewrites its journal leaves the old one whole, so no finished
    /// chunk is forgotten (and fetched again).
    pub fn replace(
        path: &Path,
        header: &Header,
        fill: impl FnOnce(&mut Journal) -> io::Result<()>,
    ) -> io::Result<Self> {
        let temp = Self::temp_path(path);
        let mut journal = Self::create(&temp, header)?;
        fill(&mut journal)?;
        std::fs::rename(&temp, path)?;
        journal.path = path.to_owned();
        Ok(journal)
    }

    /// The journal of the file at `file`: beside it, named after it.
    pub fn path_for(file: &Path) -> PathBuf {
        let mut name = file.as_os_str().to_owned();
        name.push(SUFFIX);
        PathBuf::from(name)
    }

    /// Removes the journal at `path` and any rewrite of it a stop left unfinished.
    pub fn remove(path: &Path) {
        let _ = std::fs::remove_file(Self::temp_path(path));
        let _ = std::fs::remove_file(path);
    }

    /// Where [`Journal::replace`] writes before the rename.
    pub fn temp_path(path: &Path) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(".tmp");
        PathBuf::from(name)
    }

    pub fn append(&mut self, record: &Record) -> io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
        line.push(b'\n');
        // One write per record: a crash leaves at most one torn line, at the end.
        self.file.write_all(&line)
    }

    /// Reads a journal; `None` when it is missing, of another version, or unreadable.
    pub fn load(path: &Path) -> Option<Loaded> {
        let bytes = std::fs::read(path).ok()?;
        let mut lines = bytes.split(|&b| b == b'\n');
        let header = read_header(lines.next()?)?;
        let mut records = Records::default();
        for line in lines {
            match records.take(&header, line) {
                Line::Taken => {}
                Line::NotARecord => break,
                Line::Invalid => return None,
            }
        }
        let Records {
            mut chunks,
            flushed,
            hash,
            done,
        } = records;
        let unsynced = chunks.split_off(flushed);
        Some(Loaded {
            header,
            synced: chunks,
            unsynced,
            hash,
            done,
        })
    }
}

/// The header line of a journal; `None` when it is of another version or invalid.
fn read_header(line: &[u8]) -> Option<Header> {
    let header: Header = serde_json::from_slice(line).ok()?;
    (header.version == VERSION && header.chunk_size > 0).then_some(header)
}

/// What the lines after a journal's header said, as far as they were read: what
/// [`Journal::load`] and [`Follower`] both make of them.
#[derive(Debug, Clone, Default)]
struct Records {
    /// Chunks written, with their CRCs, in the order recorded.
    chunks: Vec<(u64, Vec<u64>)>,
    /// How many of `chunks` are flushed.
    flushed: usize,
    /// Digest state at the cursor, from the last sync line that had one.
    hash: Option<SavedHashers>,
    /// The finished file, when the journal says so.
    done: Option<FileRecord>,
}

/// What one line after the header was.
enum Line {
    Taken,
    /// Not a record (a torn line, say): nothing after it counts.
    NotARecord,
    /// A record no journal of this header holds: the journal is not to be trusted.
    Invalid,
}

impl Records {
    /// Takes in `line` of the journal of `header`.
    fn take(&mut self, header: &Header, line: &[u8]) -> Line {
        let Ok(record) = serde_json::from_slice::<Record>(line) else {
            return Line::NotARecord;
        };
        match record {
            Record::Chunk { index, crcs }
                if index < header.size.div_ceil(header.chunk_size) && !crcs.is_empty() =>
            {
                self.chunks.push((index, crcs));
            }
            Record::Chunk { .. } => return Line::Invalid,
            Record::Sync { records: n, hash } => {
                self.flushed = self.flushed.max((n as usize).min(self.chunks.len()));
                if hash.is_some() {
                    self.hash = hash;
                }
            }
            Record::Done { file } => self.done = Some(file),
        }
        Line::Taken
    }
}

/// A journal read up to its last whole line, read on from there as it grows: what a peer
/// server keeps of each running pull, so serving a chunk does not parse the whole journal
/// again (a 4 GiB file's has 2,048 records, and parsing them per request cost a node group's
/// agents more CPU than hashing). It makes of each line what [`Journal::load`] does, but
/// leaves a line still being written for the next read.
#[derive(Debug, Clone)]
pub struct Follower {
    /// Device and inode of the file read: a journal rewritten by rename is another file.
    id: (u64, u64),
    /// Bytes of whole lines read.
    offset: u64,
    header: Header,
    records: Records,
    /// A whole line that is not a record was read: nothing after it counts.
    stopped: bool,
}

impl Follower {
    /// Reads the journal at `path`, or what was appended to it since `self` read it; a journal
    /// replaced or truncated since is read again from its start. `None` when it is missing, of
    /// another version, unreadable, or invalid.
    pub fn read(prev: Option<Self>, path: &Path) -> Option<Self> {
        use std::io::{Read, Seek, SeekFrom};
        use std::os::unix::fs::MetadataExt;

        let mut file = File::open(path).ok()?;
        let meta = file.metadata().ok()?;
        let id = (meta.dev(), meta.ino());
        let mut follower = prev.filter(|f| f.id == id && f.offset <= meta.len());
        let from = follower.as_ref().map_or(0, |f| f.offset);
        file.seek(SeekFrom::Start(from)).ok()?;
        let mut bytes = Vec::with_capacity(meta.len().saturating_sub(from) as usize);
        file.read_to_end(&mut bytes).ok()?;
        let mut lines = bytes.split_inclusive(|&b| b == b'\n');
        let mut follower = match follower.take() {
            Some(f) => f,
            None => {
                let line = lines.next().filter(|l| l.ends_with(b"\n"))?;
                Self {
                    id,
                    offset: line.len() as u64,
                    header: read_header(line)?,
                    records: Records::default(),
                    stopped: false,
                }
            }
        };
        for line in lines.take_while(|l| l.ends_with(b"\n")) {
            follower.offset += line.len() as u64;
            if follower.stopped {
                continue;
            }
            match follower.records.take(&follower.header, line) {
                Line::Taken => {}
                Line::NotARecord => follower.stopped = true,
                Line::Invalid => return None,
            }
        }
        Some(follower)
    }

    /// The remote object and chunking the journal is of.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Chunks written and made durable, with their CRCs.
    pub fn synced(&self) -> &[(u64, Vec<u64>)] {
        &self.records.chunks[..self.records.flushed]
    }

    /// Whether the journal says the file is verified.
    pub fn done(&self) -> bool {
        self.records.done.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::ordered::OrderedHashers;

    fn header() -> Header {
        Header {
            version: VERSION,
            source: "http://h/x".into(),
            size: 10 * 4096,
            validator: "\"e\"".into(),
            chunk_size: 4096,
            algorithms: vec![Algorithm::Sha256],
        }
    }

    fn chunk(index: u64, crc: u64) -> Record {
        Record::Chunk {
            index,
            crcs: vec![crc],
        }
    }

    #[test]
    fn records_survive_and_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let mut j = Journal::create(&path, &header()).unwrap();
        j.append(&chunk(0, 1)).unwrap();
        j.append(&chunk(3, 2)).unwrap();
        j.append(&chunk(5, 5)).unwrap();
        let saved = OrderedHashers::new([Algorithm::Sha256], 0).save();
        // The sync covers the first two records only: the third was written during the flush.
        j.append(&Record::Sync {
            records: 2,
            hash: Some(saved.clone()),
        })
        .unwrap();
        j.append(&Record::Sync {
            records: 1,
            hash: None,
        })
        .unwrap();
        j.append(&chunk(1, 3)).unwrap();
        drop(j);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"chunk\":{\"ind").unwrap();

        let loaded = Journal::load(&path).unwrap();
        assert_eq!(loaded.header, header());
        assert_eq!(loaded.synced, vec![(0, vec![1]), (3, vec![2])]);
        assert_eq!(loaded.unsynced, vec![(5, vec![5]), (1, vec![3])]);
        assert_eq!(loaded.hash, Some(saved));
        assert_eq!(loaded.done, None);
    }

    #[test]
    fn an_interrupted_rewrite_leaves_the_old_journal_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.modelpull-journal");
        let mut j = Journal::create(&path, &header()).unwrap();
        j.append(&chunk(3, 7)).unwrap();
        drop(j);
        let failed = Journal::replace(&path, &header(), |j| {
            j.append(&chunk(4, 8))?;
            Err(io::Error::other("killed here"))
        });
        assert!(failed.is_err());
        let loaded = Journal::load(&path).unwrap();
        assert_eq!(
            loaded.unsynced,
            vec![(3, vec![7])],
            "the old records are all there"
        );
        let mut j = Journal::replace(&path, &header(), |j| j.append(&chunk(4, 8))).unwrap();
        j.append(&chunk(5, 9)).unwrap();
        let loaded = Journal::load(&path).unwrap();
        assert_eq!(loaded.unsynced, vec![(4, vec![8]), (5, vec![9])]);
        assert!(!Journal::temp_path(&path).exists());
    }

    #[test]
    fn a_follower_reads_on_as_the_journal_grows_and_again_when_it_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let mut j = Journal::create(&path, &header()).unwrap();
        j.append(&chunk(0, 10)).unwrap();
        j.append(&chunk(1, 11)).unwrap();
        j.append(&Record::Sync {
            records: 1,
            hash: None,
        })
        .unwrap();
        let f = Follower::read(None, &path).unwrap();
        assert_eq!(f.synced(), [(0, vec![10])]);
        let read_to = f.offset;
        // A line still being written is left for the next read.
        j.append(&chunk(2, 12)).unwrap();
        j.file.write_all(br#"{"sync":{"records":3,"#).unwrap();
        let f = Follower::read(Some(f), &path).unwrap();
        assert!(f.offset > read_to);
        assert_eq!(f.synced().len(), 1);
        j.file.write_all(b"\"hash\":null}}\n").unwrap();
        let f = Follower::read(Some(f), &path).unwrap();
        assert_eq!(f.synced(), [(0, vec![10]), (1, vec![11]), (2, vec![12])]);
        assert!(!f.done());
        // Read on, it says what reading the whole journal says.
        let whole = Journal::load(&path).unwrap();
        assert_eq!(f.synced(), whole.synced);
        assert_eq!(f.header(), &whole.header);
        // Rewritten by rename (a resumed pull): read again from its start.
        let j = Journal::replace(&path, &header(), |j| j.append(&chunk(5, 15))).unwrap();
        drop(j);
        let f = Follower::read(Some(f), &path).unwrap();
        assert!(f.synced().is_empty());
        assert_eq!(f.records.chunks, [(5, vec![15])]);
        std::fs::remove_file(&path).unwrap();
        assert!(Follower::read(Some(f), &path).is_none());
    }

    #[test]
    fn refuses_foreign_or_out_of_range() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        assert!(Journal::load(&path).is_none());
        std::fs::write(&path, "garbage\n").unwrap();
        assert!(Journal::load(&path).is_none());
        let mut j = Journal::create(&path, &header()).unwrap();
        j.append(&chunk(99, 0)).unwrap();
        assert!(Journal::load(&path).is_none());
    }
}
