//! A snapshot folder and the ref that names it, published so a reader never sees half of one.
//!
//! A new snapshot is built under `.modelpull/<commit>` (links only: every blob is in place and
//! flushed by then), flushed, and renamed to `snapshots/<commit>` in one step. A snapshot
//! folder that exists already (`hf_hub_download` creates one file by file, and a pull filtered
//! by patterns holds some files only) cannot be replaced by a rename, so the links it lacks
//! are added in place, each written aside and renamed. The ref is written aside and renamed
//! over `refs/<revision>` after the snapshot is there, and only when it changes, so a pull of
//! a complete snapshot writes nothing.

use std::path::Path;

use super::layout::{RepoDirs, link_target};
use super::{CachedFile, Model, blobs};
use crate::disk::staging::{sync_dir, sync_dirs, write_durably};
use crate::error::{Error, Result};

/// Whether the snapshot folder `snap` holds every file, each (through its link) at its size.
pub(super) fn is_complete(snap: &Path, files: &[CachedFile<'_>]) -> bool {
    files.iter().all(|f| holds(snap, f))
}

/// Whether `snap/<path>` leads to a file of the right size.
fn holds(snap: &Path, file: &CachedFile<'_>) -> bool {
    std::fs::metadata(snap.join(&file.target.path))
        .is_ok_and(|m| m.is_file() && m.len() == file.size)
}

/// Whether the ref of the revision asked for already names the commit (or none is needed:
/// the revision is the commit itself).
pub(super) fn ref_is_current(dirs: &RepoDirs, model: &Model<'_>) -> Result<bool> {
    if model.revision == model.commit {
        return Ok(true);
    }
    let path = dirs.ref_file(&model.revision)?;
    Ok(std::fs::read_to_string(path).is_ok_and(|c| c == model.commit))
}

/// Publishes the snapshot of `model` once every blob it links to is in the cache: built
/// aside and renamed into place, or completed in place when a snapshot folder exists.
pub(super) fn publish(dirs: &RepoDirs, model: &Model<'_>) -> Result<()> {
    if let Some(f) = model
        .files
        .iter()
        .find(|f| !blobs::is_present(dirs, &f.blob, f.size))
    {
        return Err(Error::Runtime(format!(
            "the blob of {} ({}) is not in the cache after its pull",
            f.target.path, f.blob
        )));
    }
    let snap = dirs.snapshot(&model.commit);
    if snap.exists() {
        return complete_in_place(dirs, &snap, &model.files);
    }
    let building = dirs.building(&model.commit);
    for f in &model.files {
        let link = building.join(&f.target.path);
        create_parent(&link)?;
        std::os::unix::fs::symlink(link_target(&f.target.path, &f.blob), &link)
            .map_err(|e| Error::local("create link", &link, e))?;
    }
    std::fs::create_dir_all(&building)
        .map_err(|e| Error::local("create directory", &building, e))?;
    sync_dirs(&building).map_err(|e| Error::local("flush", &building, e))?;
    let snapshots = dirs.snapshots();
    std::fs::create_dir_all(&snapshots)
        .map_err(|e| Error::local("create directory", &snapshots, e))?;
    // The blobs/ and snapshots/ entries of a new repo must outlive a power loss as well.
    sync_dir(&dirs.root).map_err(|e| Error::local("flush", &dirs.root, e))?;
    match std::fs::rename(&building, &snap) {
        Ok(()) => {}
        // Another tool created the snapshot folder meanwhile: add what it lacks to it.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENOTEMPTY)) => {
            std::fs::remove_dir_all(&building).map_err(|e| Error::local("remove", &building, e))?;
            return complete_in_place(dirs, &snap, &model.files);
        }
        Err(e) => return Err(Error::local("publish (rename)", &snap, e)),
    }
    sync_dir(&snapshots).map_err(|e| Error::local("flush", &snapshots, e))
}

/// Adds to the existing snapshot folder `snap` a link for each file it lacks (or holds at
/// another size), each written aside and renamed over its place.
fn complete_in_place(dirs: &RepoDirs, snap: &Path, files: &[CachedFile<'_>]) -> Result<()> {
    let scratch = dirs.scratch("link");
    for f in files.iter().filter(|f| !holds(snap, f)) {
        let link = snap.join(&f.target.path);
        create_parent(&link)?;
        let _ = std::fs::remove_file(&scratch);
        std::os::unix::fs::symlink(link_target(&f.target.path, &f.blob), &scratch)
            .map_err(|e| Error::local("create link", &scratch, e))?;
        std::fs::rename(&scratch, &link).map_err(|e| Error::local("rename", &link, e))?;
    }
    sync_dirs(snap).map_err(|e| Error::local("flush", snap, e))
}

/// Points `refs/<revision>` at the commit, unless the revision is the commit itself (as
/// `huggingface_hub` does) or the ref says so already.
pub(super) fn write_ref(dirs: &RepoDirs, model: &Model<'_>) -> Result<()> {
    if ref_is_current(dirs, model)? {
        return Ok(());
    }
    let path = dirs.ref_file(&model.revision)?;
    create_parent(&path)?;
    let scratch = dirs.scratch("ref");
    write_durably(&scratch, model.commit.as_bytes())
        .map_err(|e| Error::local("write", &scratch, e))?;
    std::fs::rename(&scratch, &path).map_err(|e| Error::local("rename", &path, e))?;
    let parent = path.parent().unwrap_or(&dirs.root);
    sync_dir(parent).map_err(|e| Error::local("flush", parent, e))
}

fn create_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(parent) => {
            std::fs::create_dir_all(parent).map_err(|e| Error::local("create directory", parent, e))
        }
        None => Ok(()),
    }
}
