//! What a node may serve its peers, read from its own models folder: the files of a model it
//! published, and the chunks of a pull still running that are on stable storage.
//!
//! A published file is one its model's completion marker lists (the marker is written only
//! after every file was verified): a path the marker does not list is not served, so the
//! marker, the journals and anything else in the folder stay private. A running pull's file
//! is served chunk by chunk from its part file: only chunks its journal records as flushed
//! (behind a sync line), each read back and checked against the CRC the journal holds before it
//! leaves; once its journal says it is verified, whole (it waits in staging for the model's
//! other files), so a follower can start before the seed finishes without ever being sent a chunk the
//! seed did not write and check. Files are opened beneath their folder without following a
//! symlink at any component.
//!
//! A peer is still never trusted: the node reading from it checks what it gets against the
//! origin's digest (see [`crate::mirror`]). What this module guarantees is only that a node
//! serves what it holds, as it holds it, and nothing else.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rustix::fs::{Mode, OFlags};

use crate::adopt::beneath;
use crate::digest::Algorithm;
use crate::digest::crc;
use crate::disk::journal::{Follower, Journal};
use crate::disk::part;
use crate::target::check_relative_path;

/// The most bytes one read may cover: a peer's memory per request.
pub const MAX_READ: u64 = 64 << 20;

/// A file a peer asked for and this node holds, whole or in part.
#[derive(Debug)]
pub struct Held {
    file: File,
    size: u64,
    /// For a pull in progress: the chunk size and, per chunk, the CRC its journal recorded for
    /// it once flushed (with the algorithm), or `None` while it is not.
    partial: Option<Partial>,
}

#[derive(Debug)]
struct Partial {
    chunk: u64,
    algorithm: Algorithm,
    crcs: Vec<Option<u64>>,
}

/// Why a read was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The range is not within the file, or is larger than [`MAX_READ`].
    #[error("bytes {first}-{last} are not a range this node serves of a file of {size} bytes")]
    Range {
        /// First byte asked for.
        first: u64,
        /// Last byte asked for.
        last: u64,
        /// The file's size.
        size: u64,
    },
    /// Part of the range is not on this node's disk yet.
    #[error("bytes {first}-{last} are not all downloaded here yet")]
    NotYet {
        /// First byte asked for.
        first: u64,
        /// Last byte asked for.
        last: u64,
    },
    /// A chunk read back does not match the CRC recorded when it was written.
    #[error("chunk {chunk} on disk does not match the CRC recorded when it was written")]
    Damaged {
        /// The chunk's index, in the running pull's chunk size.
        chunk: u64,
    },
    /// Reading failed.
    #[error("cannot read: {0}")]
    Io(#[from] io::Error),
}

/// The journals of running pulls as last read, so that each request reads only what was
/// appended since (see [`Follower`]). One per server.
#[derive(Debug, Default)]
pub struct Journals(Mutex<HashMap<PathBuf, Follower>>);

/// Journals a [`Journals`] keeps; past this it forgets them all (finished pulls' included)
/// and reads anew.
const MAX_FOLLOWED: usize = 1024;

impl Journals {
    /// Reads the journal at `path` on from where it was last read, and gives `f` what it says.
    fn read<R>(&self, path: &Path, f: impl FnOnce(&Follower) -> R) -> Option<R> {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let prev = map.remove(path);
        let follower = Follower::read(prev, path)?;
        let out = f(&follower);
        if map.len() >= MAX_FOLLOWED {
            map.clear();
        }
        map.insert(path.to_owned(), follower);
        Some(out)
    }
}

/// The file at `path` of the model whose folder is `model_dir` (`ROOT/models/<key>`): from
/// the published folder when its marker lists it, else from the model's pull in progress when
/// that has flushed chunks of it (its journal read through `journals`); `Ok(None)` when this
/// node has none of it to serve.
pub fn open(model_dir: &Path, path: &str, journals: &Journals) -> io::Result<Option<Held>> {
    if check_relative_path(path).is_err() {
        return Ok(None);
    }
    if let Some(held) = published(model_dir, path)? {
        return Ok(Some(held));
    }
    in_progress(model_dir, path, journals)
}

fn published(model_dir: &Path, path: &str) -> io::Result<Option<Held>> {
    let Some(marker) = crate::adopt::read_marker(model_dir) else {
        return Ok(None);
    };
    let Some(listed) = marker.files.iter().find(|f| f.path == path) else {
        return Ok(None);
    };
    let dir = match beneath::open_dir(model_dir) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let file = File::from(beneath::open(
        dir.as_fd(),
        Path::new(path),
        OFlags::RDONLY,
        Mode::empty(),
    )?);
    let size = file.metadata()?.len();
    if size != listed.size {
        // Changed since it was published: not what the marker vouches for.
        return Ok(None);
    }
    Ok(Some(Held {
        file,
        size,
        partial: None,
    }))
}

/// What a running pull's journal says of a file: its size and chunk size, the CRC it
/// records per chunk, whether the file is verified, and per chunk its CRC once flushed.
struct Journaled {
    size: u64,
    chunk: u64,
    algorithm: Algorithm,
    done: bool,
    crcs: Vec<Option<u64>>,
}

fn in_progress(model_dir: &Path, path: &str, journals: &Journals) -> io::Result<Option<Held>> {
    let (Some(parent), Some(name)) = (model_dir.parent(), model_dir.file_name()) else {
        return Ok(None);
    };
    let staging = parent.join(format!(".{}.modelpull", name.to_string_lossy()));
    let dir = match beneath::open_dir(&staging) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // Loaded before the part is opened: every chunk it calls flushed is in that part, unless
    // the file was started over in between, which the CRC check on each read catches.
    let journal = Journal::path_for(&staging.join(path));
    let Some(Some(loaded)) = journals.read(&journal, |f| {
        let header = f.header();
        let algorithm = header
            .algorithms
            .iter()
            .copied()
            .find(|a| !a.is_ordered())?;
        let mut crcs = vec![None; header.size.div_ceil(header.chunk_size) as usize];
        if !f.done() {
            for (index, recorded) in f.synced() {
                crcs[*index as usize] = recorded.first().copied();
            }
        }
        Some(Journaled {
            size: header.size,
            chunk: header.chunk_size,
            algorithm,
            done: f.done(),
            crcs,
        })
    }) else {
        return Ok(None);
    };
    if loaded.done {
        // Verified, renamed from its part, waiting for the model's other files: whole.
        return match beneath::open(dir.as_fd(), Path::new(path), OFlags::RDONLY, Mode::empty()) {
            Ok(f) => {
                let file = File::from(f);
                let size = file.metadata()?.len();
                Ok((size == loaded.size).then_some(Held {
                    file,
                    size,
                    partial: None,
                }))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        };
    }
    if loaded.crcs.iter().all(Option::is_none) {
        return Ok(None);
    }
    let part_name = format!("{path}{}", part::SUFFIX);
    let file = match beneath::open(
        dir.as_fd(),
        Path::new(&part_name),
        OFlags::RDONLY,
        Mode::empty(),
    ) {
        Ok(f) => File::from(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(Some(Held {
        file,
        size: loaded.size,
        partial: Some(Partial {
            chunk: loaded.chunk,
            algorithm: loaded.algorithm,
            crcs: loaded.crcs,
        }),
    }))
}

impl Held {
    /// The file's size (of the object it is a copy of, for a pull in progress).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the file is published (every byte held), not a pull in progress.
    pub fn is_complete(&self) -> bool {
        self.partial.is_none()
    }

    /// The last byte of the longest run from `first` up to `last` that this node holds:
    /// `last` for a published file; for a pull in progress, the end of its flushed chunks from
    /// `first` on, cut back to a multiple of `align` bytes (the reader's chunk size) unless it
    /// is the file's end. `None` when it holds no such run.
    pub fn held_through(&self, first: u64, last: u64, align: u64) -> Option<u64> {
        if first > last || last >= self.size {
            return None;
        }
        let Some(p) = &self.partial else {
            return Some(last);
        };
        let mut end = first / p.chunk * p.chunk;
        while end <= last && p.crcs[(end / p.chunk) as usize].is_some() {
            end = (end + p.chunk).min(self.size);
        }
        let end = end.min(last + 1);
        let end = if end == self.size || end == last + 1 {
            end
        } else {
            end / align.max(1) * align.max(1)
        };
        (end > first).then(|| end - 1)
    }

    /// Reads bytes `first..=last`, refused unless every one of them is held here. A chunk of
    /// a pull in progress is checked against its recorded CRC as it is read.
    pub fn read(&self, first: u64, last: u64) -> Result<Vec<u8>, ReadError> {
        if first > last || last >= self.size || last - first + 1 > MAX_READ {
            return Err(ReadError::Range {
                first,
                last,
                size: self.size,
            });
        }
        let Some(p) = &self.partial else {
            return Ok(self.read_at(first, last - first + 1)?);
        };
        // Whole chunks are read so each can be checked, then the range is cut out of them.
        let (c0, c1) = (first / p.chunk, last / p.chunk);
        if (c0..=c1).any(|c| p.crcs[c as usize].is_none()) {
            return Err(ReadError::NotYet { first, last });
        }
        let start = c0 * p.chunk;
        let end = ((c1 + 1) * p.chunk).min(self.size);
        let mut bytes = self.read_at(start, end - start)?;
        for (i, piece) in bytes.chunks(p.chunk as usize).enumerate() {
            let c = c0 + i as u64;
            if Some(crc::checksum(p.algorithm, piece)) != p.crcs[c as usize] {
                return Err(ReadError::Damaged { chunk: c });
            }
        }
        // Cut in place: readers ask from a chunk boundary, so nothing moves.
        bytes.truncate((last - start + 1) as usize);
        bytes.drain(..(first - start) as usize);
        Ok(bytes)
    }

    /// Reads `len` bytes at `offset` into a buffer that is not zeroed first: every byte a peer
    /// is sent is read once from the page cache, never written twice.
    fn read_at(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let mut buf = Vec::with_capacity(len as usize);
        while (buf.len() as u64) < len {
            let at = offset + buf.len() as u64;
            match rustix::io::pread(&self.file, rustix::buffer::spare_capacity(&mut buf), at) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::journal::{self, Header, Record};
    use crate::disk::staging::{FileRecord, Marker};

    fn bytes(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// `models/k/` published with `files` listed in its marker.
    fn published_model(root: &Path, files: &[(&str, &[u8])]) -> std::path::PathBuf {
        let dir = root.join("models/k");
        std::fs::create_dir_all(&dir).unwrap();
        let mut records = Vec::new();
        for (path, content) in files {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, content).unwrap();
            records.push(FileRecord {
                path: (*path).to_owned(),
                size: content.len() as u64,
                digests: Vec::new(),
            });
        }
        let marker = Marker::new(Vec::new(), records);
        std::fs::write(
            dir.join(crate::MARKER),
            serde_json::to_vec(&marker).unwrap(),
        )
        .unwrap();
        dir
    }

    #[test]
    fn a_published_file_is_served_and_nothing_the_marker_does_not_list() {
        let root = tempfile::tempdir().unwrap();
        let content = bytes(10_000);
        let dir = published_model(root.path(), &[("sub/w.bin", &content)]);
        std::fs::write(dir.join("unlisted.bin"), b"private").unwrap();
        let held = open(&dir, "sub/w.bin", &Journals::default())
            .unwrap()
            .unwrap();
        assert!(held.is_complete());
        assert_eq!(held.size(), 10_000);
        assert_eq!(held.read(100, 199).unwrap(), &content[100..200]);
        assert_eq!(held.held_through(100, 9_999, 4096), Some(9_999));
        assert_eq!(held.held_through(100, 10_000, 4096), None);
        assert!(matches!(held.read(0, 10_000), Err(ReadError::Range { .. })));
        for path in [
            "unlisted.bin",
            crate::MARKER,
            "../k/sub/w.bin",
            "/etc/passwd",
            "",
        ] {
            assert!(
                open(&dir, path, &Journals::default()).unwrap().is_none(),
                "{path}"
            );
        }
    }

    #[test]
    fn a_listed_path_swapped_for_a_symlink_is_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let content = bytes(100);
        let dir = published_model(root.path(), &[("w.bin", &content)]);
        std::fs::write(root.path().join("secret"), bytes(100)).unwrap();
        std::fs::remove_file(dir.join("w.bin")).unwrap();
        std::os::unix::fs::symlink(root.path().join("secret"), dir.join("w.bin")).unwrap();
        assert!(open(&dir, "w.bin", &Journals::default()).is_err());
    }

    #[test]
    fn a_pull_in_progress_serves_its_flushed_chunks_checked() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("models/k");
        let staging = root.path().join("models/.k.modelpull");
        std::fs::create_dir_all(&staging).unwrap();
        let chunk = 4096u64;
        let content = bytes(4 * chunk as usize + 100);
        let mut part = content.clone();
        // Chunk 3 is written but not flushed; chunk 4 is not there at all.
        part[4 * chunk as usize..].fill(0);
        std::fs::write(staging.join("w.bin.part"), &part).unwrap();
        let header = Header {
            version: journal::VERSION,
            source: "http://origin/w.bin".into(),
            size: content.len() as u64,
            validator: "etag:x".into(),
            chunk_size: chunk,
            algorithms: vec![Algorithm::Sha256, Algorithm::Crc32c],
        };
        let mut j = Journal::create(&Journal::path_for(&staging.join("w.bin")), &header).unwrap();
        let crc_of = |c: u64| {
            let end = ((c + 1) * chunk).min(content.len() as u64);
            crc::checksum(
                Algorithm::Crc32c,
                &content[(c * chunk) as usize..end as usize],
            )
        };
        for c in 0..4 {
            j.append(&Record::Chunk {
                index: c,
                crcs: vec![crc_of(c)],
            })
            .unwrap();
            if c == 2 {
                j.append(&Record::Sync {
                    records: 3,
                    hash: None,
                })
                .unwrap();
            }
        }
        let journals = Journals::default();
        let held = open(&dir, "w.bin", &journals).unwrap().unwrap();
        assert!(!held.is_complete());
        assert_eq!(held.size(), content.len() as u64);
        assert_eq!(
            held.read(10, 3 * chunk - 1).unwrap(),
            &content[10..3 * chunk as usize]
        );
        assert!(matches!(
            held.read(0, 3 * chunk),
            Err(ReadError::NotYet { .. })
        ));
        // What it holds from a byte on: up to its flushed chunks, cut to the reader's chunks.
        assert_eq!(held.held_through(0, 4 * chunk, chunk), Some(3 * chunk - 1));
        assert_eq!(
            held.held_through(0, 4 * chunk, 2 * chunk),
            Some(2 * chunk - 1)
        );
        assert_eq!(held.held_through(10, 100, chunk), Some(100));
        assert_eq!(held.held_through(3 * chunk, 4 * chunk, chunk), None);
        // A flushed chunk that changed on disk since is refused, not served.
        let mut damaged = part.clone();
        damaged[chunk as usize + 1] ^= 1;
        std::fs::write(staging.join("w.bin.part"), &damaged).unwrap();
        let held = open(&dir, "w.bin", &journals).unwrap().unwrap();
        assert!(held.read(0, chunk - 1).is_ok());
        assert!(matches!(
            held.read(chunk, chunk),
            Err(ReadError::Damaged { chunk: 1 })
        ));
        // Chunk 3 flushed later: the journal is read on from where it was, and serves it.
        std::fs::write(staging.join("w.bin.part"), &content).unwrap();
        j.append(&Record::Sync {
            records: 4,
            hash: None,
        })
        .unwrap();
        let held = open(&dir, "w.bin", &journals).unwrap().unwrap();
        assert_eq!(held.held_through(0, 4 * chunk, chunk), Some(4 * chunk - 1));
        assert_eq!(
            held.read(3 * chunk, 4 * chunk - 1).unwrap(),
            &content[3 * chunk as usize..4 * chunk as usize]
        );
    }

    #[test]
    fn a_verified_file_waiting_in_staging_is_served_whole() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("models/k");
        let staging = root.path().join("models/.k.modelpull");
        std::fs::create_dir_all(&staging).unwrap();
        let content = bytes(9000);
        std::fs::write(staging.join("w.bin"), &content).unwrap();
        let header = Header {
            version: journal::VERSION,
            source: "http://origin/w.bin".into(),
            size: content.len() as u64,
            validator: String::new(),
            chunk_size: 4096,
            algorithms: vec![Algorithm::Sha256, Algorithm::Crc32c],
        };
        let mut j = Journal::create(&Journal::path_for(&staging.join("w.bin")), &header).unwrap();
        j.append(&Record::Done {
            file: FileRecord {
                path: "w.bin".into(),
                size: content.len() as u64,
                digests: Vec::new(),
            },
        })
        .unwrap();
        let held = open(&dir, "w.bin", &Journals::default()).unwrap().unwrap();
        assert!(held.is_complete());
        assert_eq!(held.read(0, 8999).unwrap(), content);
    }

    #[test]
    fn nothing_held_is_nothing_served() {
        let root = tempfile::tempdir().unwrap();
        assert!(
            open(&root.path().join("models/k"), "w.bin", &Journals::default())
                .unwrap()
                .is_none()
        );
    }
}
