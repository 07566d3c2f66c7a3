//! The staging directory a pull writes into, and the atomic publish.
//!
//! A pull into `DEST` writes under the hidden sibling `.NAME.modelpull/` (same filesystem, so
//! the final step is a rename) while holding an exclusive lock on `.NAME.modelpull.lock`.
//! Only when every file is verified are the files and directories flushed, the completion
//! marker written, the directory renamed to `DEST` and the parent directory flushed: a reader
//! sees either no `DEST` or the whole, verified model.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::disk::journal::Journal;
use crate::error::{Error, Result};

/// Name of the completion marker inside a published model directory.
pub const MARKER: &str = ".modelpull.json";
pub(crate) const MARKER_VERSION: u32 = 1;

/// One requested source, as the marker records it (no credentials).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRecord {
    pub path: String,
    pub source: String,
    pub expected: Vec<Digest>,
}

/// One published file with its size and the digests computed while it was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub path: String,
    pub size: u64,
    pub digests: Vec<Digest>,
}

/// The completion marker: what was asked for and what was verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// The marker format's version; a reader refuses one newer than it knows.
    pub version: u32,
    /// The request: each target's path, source and expected digests.
    pub request: Vec<SourceRecord>,
    /// What was verified and published.
    pub files: Vec<FileRecord>,
    /// The URIs the model was listed from, when the caller named them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    /// The downloaded archive `files` were unpacked from (and which was then removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unpacked_from: Option<FileRecord>,
}

impl Marker {
    /// A marker of the current version for `request`, whose result is `files`.
    pub fn new(request: Vec<SourceRecord>, files: Vec<FileRecord>) -> Self {
        Self {
            version: MARKER_VERSION,
            request,
            files,
            sources: Vec::new(),
            unpacked_from: None,
        }
    }

    /// Reads the marker of a published directory, if it has a valid one.
    pub fn read(dir: &Path) -> Option<Self> {
        let text = std::fs::read(dir.join(MARKER)).ok()?;
        let marker: Marker = serde_json::from_slice(&text).ok()?;
        (marker.version == MARKER_VERSION).then_some(marker)
    }

    /// Whether every recorded file is present with its recorded size.
    pub fn files_present(&self, dir: &Path) -> bool {
        self.files.iter().all(|f| {
            std::fs::symlink_metadata(dir.join(&f.path))
                .is_ok_and(|m| m.is_file() && m.len() == f.size)
        })
    }
}

/// What [`Staging::prepare`] found.
#[derive(Debug)]
pub enum Prepared {
    /// `DEST` already holds this exact request, verified.
    UpToDate(Marker),
    Ready(Staging),
}

/// A locked staging directory.
#[derive(Debug)]
pub struct Staging {
    pub dest: PathBuf,
    pub dir: PathBuf,
    lock_path: PathBuf,
    _lock: File,
}

impl Staging {
    /// Locks and opens the staging directory for `dest`, or reports that `dest` is complete.
    pub fn prepare(dest: &Path, request: &[SourceRecord]) -> Result<Prepared> {
        let (parent, name) = split(dest)?;
        std::fs::create_dir_all(&parent)
            .map_err(|e| Error::local("create directory", &parent, e))?;
        let lock_path = parent.join(format!(".{name}.modelpull.lock"));
        let lock = lock(&lock_path)?;

        if let Ok(meta) = std::fs::symlink_metadata(dest) {
            if let Some(marker) = Marker::read(dest)
                && marker.request == request
                && marker.files_present(dest)
            {
                return Ok(Prepared::UpToDate(marker));
            }
            let empty_dir = meta.is_dir()
                && std::fs::read_dir(dest)
                    .map_err(|e| Error::local("read directory", dest, e))?
                    .next()
                    .is_none();
            if !empty_dir {
                return Err(Error::DestinationOccupied {
                    path: dest.to_owned(),
                });
            }
        }
        let staging = Staging::locked(dest, &parent, &name, lock_path, lock)?;
        // A pull stopped after writing its marker and before its rename: the model is whole
        // and verified; publish it.
        if let Some(marker) = Marker::read(&staging.dir)
            && marker.request == request
            && marker.files_present(&staging.dir)
        {
            tracing::info!(dest = %dest.display(), "finishing the publish a stop interrupted");
            staging.rename(&marker)?;
            return Ok(Prepared::UpToDate(marker));
        }
        Ok(Prepared::Ready(staging))
    }

    /// Locks and opens the staging directory for `dest` whatever `dest` holds: for a pull
    /// that adopts the folder there (see `crate::adopt`), which decides itself what is done.
    pub fn open(dest: &Path) -> Result<Staging> {
        let (parent, name) = split(dest)?;
        std::fs::create_dir_all(&parent)
            .map_err(|e| Error::local("create directory", &parent, e))?;
        let lock_path = parent.join(format!(".{name}.modelpull.lock"));
        let lock = lock(&lock_path)?;
        Staging::locked(dest, &parent, &name, lock_path, lock)
    }

    fn locked(
        dest: &Path,
        parent: &Path,
        name: &str,
        lock_path: PathBuf,
        lock: File,
    ) -> Result<Self> {
        let dir = parent.join(format!(".{name}.modelpull"));
        std::fs::create_dir_all(&dir).map_err(|e| Error::local("create directory", &dir, e))?;
        Ok(Staging {
            dest: dest.to_owned(),
            dir,
            lock_path,
            _lock: lock,
        })
    }

    /// Where `rel` (already checked) is written, with its parent directories created.
    pub fn path_for(&self, rel: &str) -> Result<PathBuf> {
        let path = self.dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::local("create directory", parent, e))?;
        }
        Ok(path)
    }

    /// Writes the marker durably, removes the files' resume journals, flushes everything and
    /// renames the staging directory to `dest`. Once the marker is there, the journals are no
    /// longer needed: a pull stopped after it finishes the rename on its next run
    /// ([`Staging::prepare`]) instead of fetching anything again.
    pub fn publish(self, marker: &Marker) -> Result<()> {
        let marker_path = self.dir.join(MARKER);
        let tmp = self.dir.join(format!("{MARKER}.tmp"));
        let json = serde_json::to_vec_pretty(marker).expect("marker serialises");
        write_durably(&tmp, &json).map_err(|e| Error::local("write", &tmp, e))?;
        std::fs::rename(&tmp, &marker_path).map_err(|e| Error::local("rename", &tmp, e))?;
        self.rename(marker)
    }

    /// The end of [`Staging::publish`], after the marker is in place.
    fn rename(self, marker: &Marker) -> Result<()> {
        for f in marker.files.iter().chain(&marker.unpacked_from) {
            Journal::remove(&Journal::path_for(&self.dir.join(&f.path)));
        }
        sync_dirs(&self.dir).map_err(|e| Error::local("flush", &self.dir, e))?;
        std::fs::rename(&self.dir, &self.dest)
            .map_err(|e| Error::local("publish (rename)", &self.dest, e))?;
        let parent = self
            .dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        sync_dir(parent).map_err(|e| Error::local("flush", parent, e))?;
        let _ = std::fs::remove_file(&self.lock_path);
        Ok(())
    }

    /// Empties the staging directory (of an interrupted unpacking's leftovers).
    pub fn clear(&self) -> Result<()> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| Error::local("read directory", &self.dir, e))?;
        for entry in entries {
            let path = entry
                .map_err(|e| Error::local("read directory", &self.dir, e))?
                .path();
            let removed = if path.is_dir() && !path.is_symlink() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.map_err(|e| Error::local("remove", &path, e))?;
        }
        Ok(())
    }

    /// Removes the lock file and releases the lock, leaving the staging directory as it is.
    pub fn unlock(self) {
        let _ = std::fs::remove_file(&self.lock_path);
    }

    /// Removes the staging directory and everything in it (after a failure that resuming
    /// cannot fix, such as a full disk, or once its files are where they belong).
    pub fn discard(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

/// The parent folder of `dest` (`.` for a bare name) and its file name.
fn split(dest: &Path) -> Result<(PathBuf, String)> {
    let name = dest
        .file_name()
        .ok_or_else(|| {
            Error::InvalidOption(format!(
                "destination {} has no directory name",
                dest.display()
            ))
        })?
        .to_string_lossy()
        .into_owned();
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    Ok((parent, name))
}

/// Takes the exclusive lock on `path` (created if need be) and writes this process's id in
/// it; a lock another process holds is [`Error::Locked`], naming that process.
pub fn lock(path: &Path) -> Result<File> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| Error::local("open lock file", path, e))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(Error::Locked {
                path: path.to_owned(),
                pid: pid.trim().to_owned(),
            });
        }
        Err(e) => return Err(Error::local("lock", path, e.into())),
    }
    file.set_len(0)
        .map_err(|e| Error::local("write lock file", path, e))?;
    let _ = write!(file, "{}", std::process::id());
    Ok(file)
}

/// Writes `data` to a new file at `path` and flushes it to the disk. Whatever was at `path`
/// is removed first (`unlink` removes a symlink, never what it points to) and the file is
/// created with `O_EXCL | O_NOFOLLOW`: a symlink planted at a temporary file's name in a
/// folder another user can write to is never written through.
pub fn write_durably(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Flushes `dir`'s entries (the files created, renamed or removed in it) to the disk.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Flushes `dir` and every directory below it, so that renames inside are durable.
pub fn sync_dirs(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_dirs(&entry.path())?;
        }
    }
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Vec<SourceRecord> {
        vec![SourceRecord {
            path: "a".into(),
            source: "http://h/a".into(),
            expected: vec![],
        }]
    }

    /// The marker of a model holding one file `a` of 3 bytes.
    fn marker_of_a() -> Marker {
        Marker::new(
            request(),
            vec![FileRecord {
                path: "a".into(),
                size: 3,
                digests: vec![],
            }],
        )
    }

    fn ready(p: Prepared) -> Staging {
        match p {
            Prepared::Ready(s) => s,
            Prepared::UpToDate(_) => panic!("expected a staging directory"),
        }
    }

    #[test]
    fn a_publish_stopped_after_its_marker_is_finished_by_the_next_pull() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("m");
        let staging = ready(Staging::prepare(&dest, &request()).unwrap());
        std::fs::write(staging.path_for("a").unwrap(), b"xyz").unwrap();
        let journal = Journal::path_for(&staging.dir.join("a"));
        std::fs::write(&journal, b"{}").unwrap();
        let marker = marker_of_a();
        // What a stop between the marker and the rename leaves.
        std::fs::write(
            staging.dir.join(MARKER),
            serde_json::to_vec(&marker).unwrap(),
        )
        .unwrap();
        drop(staging);
        assert!(matches!(
            Staging::prepare(&dest, &request()).unwrap(),
            Prepared::UpToDate(_)
        ));
        assert_eq!(std::fs::read(dest.join("a")).unwrap(), b"xyz");
        assert!(!Journal::path_for(&dest.join("a")).exists());
        assert!(!root.path().join(".m.modelpull").exists());
    }

    #[test]
    fn publish_then_up_to_date() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("models/m");
        let staging = ready(Staging::prepare(&dest, &request()).unwrap());
        std::fs::write(staging.path_for("a").unwrap(), b"xyz").unwrap();
        assert!(!dest.exists());
        let marker = marker_of_a();
        staging.publish(&marker).unwrap();
        assert_eq!(std::fs::read(dest.join("a")).unwrap(), b"xyz");
        assert!(matches!(
            Staging::prepare(&dest, &request()).unwrap(),
            Prepared::UpToDate(_)
        ));
        // A different request into the same directory is refused, not merged.
        let mut other = request();
        other[0].source = "http://h/b".into();
        assert!(matches!(
            Staging::prepare(&dest, &other),
            Err(Error::DestinationOccupied { .. })
        ));
        // A damaged model is not up to date.
        std::fs::write(dest.join("a"), b"xy").unwrap();
        assert!(matches!(
            Staging::prepare(&dest, &request()),
            Err(Error::DestinationOccupied { .. })
        ));
    }

    #[test]
    fn a_durable_write_replaces_a_planted_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"theirs").unwrap();
        let tmp = dir.path().join("m.tmp");
        std::os::unix::fs::symlink(&outside, &tmp).unwrap();
        write_durably(&tmp, b"ours").unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"theirs");
        assert!(!tmp.is_symlink());
        assert_eq!(std::fs::read(&tmp).unwrap(), b"ours");
        write_durably(&tmp, b"again").unwrap();
        assert_eq!(
            std::fs::read(&tmp).unwrap(),
            b"again",
            "a stale file is replaced"
        );
    }

    #[test]
    fn second_process_is_locked_out() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("m");
        let _first = ready(Staging::prepare(&dest, &request()).unwrap());
        // flock locks belong to the open file description, so a second open conflicts even
        // within one process, as a second process would.
        match Staging::prepare(&dest, &request()) {
            Err(Error::Locked { pid, .. }) => assert_eq!(pid, std::process::id().to_string()),
            other => panic!("expected Locked, got {other:?}"),
        }
    }

    #[test]
    fn empty_destination_is_replaced() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("m");
        std::fs::create_dir(&dest).unwrap();
        let staging = ready(Staging::prepare(&dest, &request()).unwrap());
        std::fs::write(staging.path_for("a").unwrap(), b"1").unwrap();
        staging.publish(&Marker::new(request(), vec![])).unwrap();
        assert!(dest.join("a").exists());
    }
}
