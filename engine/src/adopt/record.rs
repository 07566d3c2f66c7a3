//! Where a completion marker goes when the folder it vouches for cannot hold it.
//!
//! A folder another user wrote (KServe's download Jobs run as uid 1000, its folders mode
//! 0755) can be verified by anyone who can read it, but not written to. Its marker then goes
//! to `.modelpull/markers/NAME.json` beside it: a hidden folder, so no storage key (16 hex
//! digits) or other model name can collide with it. The recorded marker names the folder's
//! device and inode, so it vouches for that very folder only: a folder removed and written
//! again, or exchanged for a repaired copy, is not taken for the one that was checked.
//!
//! A folder is named by its device and inode, and, since a filesystem reuses the inode of a
//! removed folder (ext4 does, at once), by its birth time (where the filesystem reports one)
//! and its change time too: a folder removed and written again under the same inode was born
//! later, and adding, removing or renaming an entry in the folder changes its change time.

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
    #[serde(flatten)]
    folder: Identity,
    marker: Marker,
}

/// What tells a folder from another that took its place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Identity {
    device: u64,
    inode: u64,
    /// Its birth time (seconds, nanoseconds), when the filesystem reports it.
    birth: Option<(i64, u32)>,
    /// Its status change time (seconds, nanoseconds).
    changed: (i64, u32),
}

impl Identity {
    /// The identity of the folder at `dest` (not of a symlink's target); `None` when there is
    /// no folder there.
    fn of(dest: &Path) -> std::io::Result<Option<Identity>> {
        use rustix::fs::{AtFlags, CWD, StatxFlags};
        let flags = AtFlags::SYMLINK_NOFOLLOW;
        match rustix::fs::statx(
            CWD,
            dest,
            flags,
            StatxFlags::BASIC_STATS | StatxFlags::BTIME,
        ) {
            Ok(st) => {
                let is_dir = u32::from(st.stx_mode) & libc::S_IFMT == libc::S_IFDIR;
                let born = StatxFlags::from_bits_retain(st.stx_mask).contains(StatxFlags::BTIME);
                Ok(is_dir.then(|| Identity {
                    device: rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor),
                    inode: st.stx_ino,
                    birth: born.then_some((st.stx_btime.tv_sec, st.stx_btime.tv_nsec)),
                    changed: (st.stx_ctime.tv_sec, st.stx_ctime.tv_nsec),
                }))
            }
            // A kernel before 4.11 (or a sandbox without statx): no birth time to tell.
            Err(rustix::io::Errno::NOSYS) => {
                let meta = std::fs::symlink_metadata(dest)?;
                Ok(meta.is_dir().then(|| Identity {
                    device: meta.dev(),
                    inode: meta.ino(),
                    birth: None,
                    changed: (meta.ctime(), meta.ctime_nsec() as u32),
                }))
            }
            Err(e) => Err(e.into()),
        }
    }
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
    read_marker_matching(dest, |_| true)
}

/// The completion marker of `dest` that `wanted` accepts: its own when it does, else the one
/// recorded for this very folder when it does. A folder can hold a marker of an earlier
/// request (another version of the model) while the one recorded beside it is this request's.
pub fn read_marker_matching(dest: &Path, wanted: impl Fn(&Marker) -> bool) -> Option<Marker> {
    Marker::read(dest)
        .filter(&wanted)
        .or_else(|| read_recorded(dest).filter(&wanted))
}

fn read_recorded(dest: &Path) -> Option<Marker> {
    let text = std::fs::read(recorded_path(dest)?).ok()?;
    let recorded: Recorded = serde_json::from_slice(&text).ok()?;
    let same = Identity::of(dest).ok().flatten()? == recorded.folder;
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
    let folder = Identity::of(dest)
        .map_err(|e| Error::local("read", dest, e))?
        .ok_or_else(|| Error::Runtime(format!("{} is not a folder", dest.display())))?;
    let recorded = Recorded {
        folder,
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

    /// The recorded marker of `dest` with `edit` applied to its JSON.
    fn edit_recorded(dest: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
        let path = recorded_path(dest).unwrap();
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        edit(&mut json);
        std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    }

    #[test]
    fn a_recorded_marker_needs_the_birth_and_change_times_too() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("0123456789abcdef");
        std::fs::create_dir(&dest).unwrap();
        write_recorded(&dest, &marker()).unwrap();
        assert_eq!(read_marker(&dest), Some(marker()));

        // Same device and inode (as when ext4 reuses the inode), another birth time.
        let mut born = serde_json::Value::Null;
        edit_recorded(&dest, |j| {
            born = j["birth"].take();
            j["birth"] = serde_json::json!([1, 2]);
        });
        assert_eq!(read_marker(&dest), None);
        edit_recorded(&dest, |j| j["birth"] = born);
        assert_eq!(read_marker(&dest), Some(marker()));

        // An entry added to the folder changes its change time.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(dest.join("added"), b"x").unwrap();
        assert_eq!(read_marker(&dest), None);
    }

    #[test]
    fn the_marker_that_matches_the_request_wins() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("m");
        std::fs::create_dir(&dest).unwrap();
        let mut old = marker();
        old.sources = vec!["hf://o/old".into()];
        std::fs::write(dest.join(crate::MARKER), pretty(&old)).unwrap();
        write_recorded(&dest, &marker()).unwrap();
        let wanted = |m: &Marker| m.sources == ["hf://o/m"];
        assert_eq!(read_marker_matching(&dest, wanted), Some(marker()));
        let stale = |m: &Marker| m.sources == ["hf://o/old"];
        assert_eq!(read_marker_matching(&dest, stale), Some(old));
        assert_eq!(read_marker_matching(&dest, |_| false), None);
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
