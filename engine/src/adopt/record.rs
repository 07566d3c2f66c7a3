//! Where a completion marker goes when the folder it vouches for cannot hold it.
//!
//! A folder another user wrote (KServe's download Jobs run as uid 1000, its folders mode
//! 0755) can be verified by anyone who can read it, but not written to. Its marker then goes
//! to `.modelpull/markers/NAME.json` beside it: a hidden folder, so no storage key (16 hex
//! digits) or other model name can collide with it. The recorded marker names the folder's
//! device and inode, so it vouches for that very folder only: a folder removed and written
//! again, or exchanged for a repaired copy, is not taken for the one that was checked.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::disk::staging::{MARKER_VERSION, Marker, sync_dir, write_durably};
use crate::error::{Error, Result};

/// The folder of recorded markers beside the model folders.
pub const MARKERS: &str = ".modelpull/markers";

/// A recorded marker: the marker, and which folder it is for.
#[derive(Debug, Serialize, Deserialize)]
struct Recorded {
    device: u64,
    inode: u64,
    marker: Marker,
}

/// Where the marker of `dest` is recorded when `dest` cannot hold it.
pub fn recorded_path(dest: &Path) -> Option<PathBuf> {
    let name = dest.file_name()?.to_string_lossy().into_owned();
    let parent = dest.parent().filter(|p| !p.as_os_str().is_empty());
    Some(
        parent
            .unwrap_or(Path::new("."))
            .join(MARKERS)
            .join(format!("{name}.json")),
    )
}

/// The completion marker of `dest`: its own, else the one recorded for this very folder.
pub fn read_marker(dest: &Path) -> Option<Marker> {
    Marker::read(dest).or_else(|| read_recorded(dest))
}

fn read_recorded(dest: &Path) -> Option<Marker> {
    let text = std::fs::read(recorded_path(dest)?).ok()?;
    let recorded: Recorded = serde_json::from_slice(&text).ok()?;
    let meta = std::fs::symlink_metadata(dest).ok()?;
    let same = meta.is_dir() && meta.dev() == recorded.device && meta.ino() == recorded.inode;
    (same && recorded.marker.version == MARKER_VERSION).then_some(recorded.marker)
}

/// Writes `marker` into `dest` when this process can, else records it beside; returns where
/// it went. A recorded marker of `dest` that the new one supersedes is removed.
pub(crate) fn write_marker(dest: &Path, marker: &Marker) -> Result<PathBuf> {
    if !super::folder::writable(dest) {
        return write_recorded(dest, marker);
    }
    let path = dest.join(crate::MARKER);
    let tmp = dest.join(format!("{}.tmp", crate::MARKER));
    write_durably(&tmp, &pretty(marker)).map_err(|e| Error::local("write", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::local("rename", &tmp, e))?;
    sync_dir(dest).map_err(|e| Error::local("flush", dest, e))?;
    forget(dest);
    Ok(path)
}

/// Records `marker` for the folder `dest` in the markers folder beside it.
fn write_recorded(dest: &Path, marker: &Marker) -> Result<PathBuf> {
    let path = recorded_path(dest).ok_or_else(|| {
        Error::InvalidOption(format!("destination {} has no name", dest.display()))
    })?;
    let dir = path.parent().expect("a markers folder");
    std::fs::create_dir_all(dir).map_err(|e| Error::local("create directory", dir, e))?;
    let meta = std::fs::symlink_metadata(dest).map_err(|e| Error::local("read", dest, e))?;
    let recorded = Recorded {
        device: meta.dev(),
        inode: meta.ino(),
        marker: marker.clone(),
    };
    let tmp = path.with_extension("json.tmp");
    write_durably(&tmp, &pretty(&recorded)).map_err(|e| Error::local("write", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::local("rename", &tmp, e))?;
    sync_dir(dir).map_err(|e| Error::local("flush", dir, e))?;
    Ok(path)
}

/// Removes the marker recorded for `dest`, if any (the folder holds its own now, or is gone).
pub fn forget(dest: &Path) {
    if let Some(path) = recorded_path(dest) {
        let _ = std::fs::remove_file(path);
    }
}

/// A marker, or a recorded one, as markers are written.
fn pretty<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec_pretty(v).expect("a marker serialises")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::staging::FileRecord;

    fn marker() -> Marker {
        let mut m = Marker::new(
            Vec::new(),
            vec![FileRecord {
                path: "w.bin".into(),
                size: 1,
                digests: vec![],
            }],
        );
        m.sources = vec!["hf://o/m".into()];
        m
    }

    #[test]
    fn a_recorded_marker_vouches_for_its_folder_only() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("0123456789abcdef");
        std::fs::create_dir(&dest).unwrap();
        assert_eq!(
            recorded_path(&dest).unwrap(),
            root.path().join(".modelpull/markers/0123456789abcdef.json")
        );
        // What write_marker does for a folder it cannot write to.
        let path = write_recorded(&dest, &marker()).unwrap();
        assert_eq!(path, recorded_path(&dest).unwrap());
        assert_eq!(Marker::read(&dest), None, "nothing written into the folder");
        assert_eq!(read_marker(&dest), Some(marker()));

        // The same name, another folder: not vouched for.
        std::fs::remove_dir(&dest).unwrap();
        std::fs::create_dir(root.path().join("other")).unwrap();
        std::fs::create_dir(&dest).unwrap();
        assert_eq!(read_marker(&dest), None);

        forget(&dest);
        assert!(!path.exists());
    }

    #[test]
    fn a_writable_folder_holds_its_own_marker_and_drops_a_recorded_one() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("m");
        std::fs::create_dir(&dest).unwrap();
        let stale = recorded_path(&dest).unwrap();
        std::fs::create_dir_all(stale.parent().unwrap()).unwrap();
        std::fs::write(&stale, b"{}").unwrap();
        let at = write_marker(&dest, &marker()).unwrap();
        assert_eq!(at, dest.join(crate::MARKER));
        assert_eq!(Marker::read(&dest), Some(marker()));
        assert!(!stale.exists());
    }

    #[test]
    fn a_planted_temporary_symlink_is_not_written_through() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("m");
        std::fs::create_dir(&dest).unwrap();
        let outside = root.path().join("outside");
        std::fs::write(&outside, b"theirs").unwrap();
        let tmp = dest.join(format!("{}.tmp", crate::MARKER));
        std::os::unix::fs::symlink(&outside, &tmp).unwrap();
        write_marker(&dest, &marker()).unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"theirs");
        assert_eq!(Marker::read(&dest), Some(marker()));
    }
}
