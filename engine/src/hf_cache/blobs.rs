//! The blobs of a repo: which ones a snapshot lacks, fetching them with the engine, and moving
//! them into `blobs/` once verified.
//!
//! The engine pulls the missing blobs into `.modelpull/download`, each file named by its blob
//! name; it stages, resumes and verifies them and publishes the folder with a completion
//! marker when every one matches the Hub's digest. Only files that marker lists are renamed
//! into `blobs/`, so nothing unverified ever gets a blob name. A kill between the engine's
//! publish and the last rename leaves the folder behind; [`recover`] finishes the job.

use std::collections::HashSet;

use super::Model;
use super::layout::{self, RepoDirs};
use crate::disk::staging::{Marker, sync_dir};
use crate::error::{Error, Result};
use crate::pull::{Context, Options, PullRequest};
use crate::report::Report;
use crate::target::Target;

/// Whether `blobs/<name>` is there at `size` bytes. A blob gets its name only once verified
/// (by modelpull, or downloaded by `huggingface_hub`), so its name and size are trusted.
pub(super) fn is_present(dirs: &RepoDirs, name: &str, size: u64) -> bool {
    std::fs::metadata(dirs.blob(name)).is_ok_and(|m| m.is_file() && m.len() == size)
}

/// Finishes what an interrupted pull left in `.modelpull/`: verified blobs the engine
/// published are moved into `blobs/`, and a snapshot of `commit` half built is dropped (it
/// holds links only; it is built again).
pub(super) fn recover(dirs: &RepoDirs, commit: &str) -> Result<()> {
    if dirs.download().exists() {
        tracing::info!(dir = %dirs.download().display(), "moving the blobs an interrupted pull verified into the cache");
        adopt(dirs)?;
    }
    let building = dirs.building(commit);
    if building.exists() {
        std::fs::remove_dir_all(&building).map_err(|e| Error::local("remove", &building, e))?;
    }
    Ok(())
}

/// Fetches the blobs of `model` that the cache lacks (each once, however many paths share
/// it) and moves them into `blobs/`. Returns the engine's report, or `None` when every blob
/// was there.
pub(super) fn fetch_missing(
    dirs: &RepoDirs,
    model: &Model<'_>,
    opts: &Options,
    cx: &Context,
) -> Result<Option<Report>> {
    let mut wanted = HashSet::new();
    let targets: Vec<Target> = model
        .files
        .iter()
        .filter(|f| !is_present(dirs, &f.blob, f.size))
        .filter(|f| wanted.insert(f.blob.as_str()))
        .map(|f| Target {
            path: f.blob.clone(),
            ..f.target.clone()
        })
        .collect();
    let reused = model.files.len() - targets.len();
    if targets.is_empty() {
        tracing::info!(files = reused, "every blob is in the cache already");
        return Ok(None);
    }
    tracing::info!(
        fetch = targets.len(),
        reused,
        "fetching the blobs the cache lacks"
    );
    let request = PullRequest {
        targets,
        dest: dirs.download(),
        unpack: false,
        adopt: false,
        sources: vec![crate::redact_str(model.uri)],
    };
    let report = crate::pull::pull(&request, opts, cx)?;
    adopt(dirs)?;
    Ok(Some(report))
}

/// Renames the verified files of the engine's published download folder into `blobs/`, flushes
/// `blobs/`, then removes the folder (with whatever else it holds: leftovers of a pull that
/// asked for other blobs).
fn adopt(dirs: &RepoDirs) -> Result<()> {
    let download = dirs.download();
    let blobs = dirs.blobs();
    std::fs::create_dir_all(&blobs).map_err(|e| Error::local("create directory", &blobs, e))?;
    let marker = Marker::read(&download);
    for f in marker.iter().flat_map(|m| &m.files) {
        let from = download.join(&f.path);
        let verified = layout::is_blob_name(&f.path)
            && std::fs::symlink_metadata(&from).is_ok_and(|m| m.is_file() && m.len() == f.size);
        if verified {
            let to = dirs.blob(&f.path);
            std::fs::rename(&from, &to).map_err(|e| Error::local("rename", &to, e))?;
        }
    }
    sync_dir(&blobs).map_err(|e| Error::local("flush", &blobs, e))?;
    std::fs::remove_dir_all(&download).map_err(|e| Error::local("remove", &download, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::staging::{FileRecord, MARKER};

    #[test]
    fn only_what_the_marker_vouches_for_becomes_a_blob() {
        let root = tempfile::tempdir().unwrap();
        let dirs = RepoDirs::new(root.path(), "o/m");
        let download = dirs.download();
        std::fs::create_dir_all(&download).unwrap();
        for (name, bytes) in [("aa", &b"xyz"[..]), ("bb", b"12"), ("cc", b"junk")] {
            std::fs::write(download.join(name), bytes).unwrap();
        }
        let record = |path: &str, size| FileRecord {
            path: path.into(),
            size,
            digests: vec![],
        };
        // `bb` has the wrong size, `cc` is not listed: neither is trusted.
        let marker = Marker::new(vec![], vec![record("aa", 3), record("bb", 5)]);
        std::fs::write(download.join(MARKER), serde_json::to_vec(&marker).unwrap()).unwrap();
        recover(&dirs, "c0ffee").unwrap();
        assert_eq!(std::fs::read(dirs.blob("aa")).unwrap(), b"xyz");
        assert!(!dirs.blob("bb").exists() && !dirs.blob("cc").exists());
        assert!(!download.exists());
        assert!(is_present(&dirs, "aa", 3));
        assert!(!is_present(&dirs, "aa", 4));
    }

    #[test]
    fn a_folder_without_a_marker_is_dropped() {
        let root = tempfile::tempdir().unwrap();
        let dirs = RepoDirs::new(root.path(), "o/m");
        std::fs::create_dir_all(dirs.download()).unwrap();
        std::fs::write(dirs.download().join("aa"), b"?").unwrap();
        std::fs::create_dir_all(dirs.building("c0ffee").join("sub")).unwrap();
        recover(&dirs, "c0ffee").unwrap();
        assert!(!dirs.download().exists() && !dirs.blob("aa").exists());
        assert!(!dirs.building("c0ffee").exists());
    }
}
