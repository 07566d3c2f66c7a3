//! The resume journal beside each `.part`: an append-only file of JSON lines.
//!
//! - line 1, the header: which remote object this is (source without query string, size,
//!   validator), the chunk size and the digests being computed. A restart with any of these
//!   different starts the file over.
//! - `{"chunk":{"index":i,"crc32c":c}}` after chunk `i` was written; appended without fsync, so
//!   a killed process loses nothing that reached the kernel.
//! - `{"sync":{"hash":…}}` after the part was `fdatasync`ed: every chunk recorded before it is
//!   on stable storage, and `hash` is the saved state of the ordered digests at their cursor.
//!
//! On restart, chunks recorded after the last sync line are read back and checked against
//! their crc32c before they are trusted (a power cut can keep the record and lose the data).
//! A torn last line is ignored. A resumed pull rewrites the journal from what it verified, so
//! a journal is only ever appended to by the process that created it.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Algorithm;
use crate::digest::ordered::SavedHashers;

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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Record {
    Chunk { index: u64, crc32c: u32 },
    Sync { hash: Option<SavedHashers> },
}

/// What a journal says after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub header: Header,
    /// Chunks written and made durable by a later sync line.
    pub synced: Vec<(u64, u32)>,
    /// Chunks written after the last sync line: to be checked before they are trusted.
    pub unsynced: Vec<(u64, u32)>,
    /// Digest state at the cursor, from the last sync line.
    pub hash: Option<SavedHashers>,
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
        let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(path)?;
        let mut line = serde_json::to_vec(header).map_err(io::Error::other)?;
        line.push(b'\n');
        file.write_all(&line)?;
        Ok(Self {
            file,
            path: path.to_owned(),
        })
    }

    pub fn append(&mut self, record: &Record) -> io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
        line.push(b'\n');
        // One write per record: a crash leaves at most one torn line, at the end.
        self.file.write_all(&line)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads a journal; `None` when it is missing, of another version, or unreadable.
    pub fn load(path: &Path) -> Option<Loaded> {
        let file = File::open(path).ok()?;
        let mut lines = BufReader::new(file).lines();
        let header: Header = serde_json::from_str(&lines.next()?.ok()?).ok()?;
        if header.version != VERSION || header.chunk_size == 0 {
            return None;
        }
        let chunks = header.size.div_ceil(header.chunk_size);
        let mut loaded = Loaded {
            header,
            synced: Vec::new(),
            unsynced: Vec::new(),
            hash: None,
        };
        for line in lines {
            let Ok(line) = line else { break };
            let Ok(record) = serde_json::from_str::<Record>(&line) else {
                break;
            };
            match record {
                Record::Chunk { index, crc32c } if index < chunks => loaded.unsynced.push((index, crc32c)),
                Record::Chunk { .. } => return None,
                Record::Sync { hash } => {
                    loaded.synced.append(&mut loaded.unsynced);
                    loaded.hash = hash;
                }
            }
        }
        Some(loaded)
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

    #[test]
    fn records_survive_and_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let mut j = Journal::create(&path, &header()).unwrap();
        j.append(&Record::Chunk { index: 0, crc32c: 1 }).unwrap();
        j.append(&Record::Chunk { index: 3, crc32c: 2 }).unwrap();
        let saved = OrderedHashers::new([Algorithm::Sha256]).save();
        j.append(&Record::Sync {
            hash: Some(saved.clone()),
        })
        .unwrap();
        j.append(&Record::Chunk { index: 1, crc32c: 3 }).unwrap();
        drop(j);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"chunk\":{\"ind").unwrap();

        let loaded = Journal::load(&path).unwrap();
        assert_eq!(loaded.header, header());
        assert_eq!(loaded.synced, vec![(0, 1), (3, 2)]);
        assert_eq!(loaded.unsynced, vec![(1, 3)]);
        assert_eq!(loaded.hash, Some(saved));

    }

    #[test]
    fn refuses_foreign_or_out_of_range() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        assert!(Journal::load(&path).is_none());
        std::fs::write(&path, "garbage\n").unwrap();
        assert!(Journal::load(&path).is_none());
        let mut j = Journal::create(&path, &header()).unwrap();
        j.append(&Record::Chunk { index: 99, crc32c: 0 }).unwrap();
        assert!(Journal::load(&path).is_none());
    }
}
