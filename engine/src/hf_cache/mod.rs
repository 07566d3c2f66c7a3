//! The Hugging Face cache: `hf://` models laid out exactly as `huggingface_hub` lays them out,
//! so `from_pretrained`, `snapshot_download(local_files_only=True)`, `try_to_load_from_cache`
//! and `hf cache scan` find what modelpull pulled, and modelpull reuses what they downloaded.
//!
//! ```text
//! $HF_HUB_CACHE/models--ORG--MODEL/
//!   blobs/<etag>              one per distinct content: the LFS sha256, else the git blob sha1
//!   snapshots/<commit>/<path> relative links to ../../blobs/<etag>, one `..` more per folder
//!   refs/<revision>           the commit a branch or tag named (none when it is a commit)
//!   .modelpull/               modelpull's lock and work in progress
//! ```
//!
//! A pull fetches only the blobs that `blobs/` lacks, with the engine's own [`crate::pull()`]:
//! each is a file named by its blob name in `.modelpull/download`, so it is staged, journaled,
//! resumed after a kill, verified against the Hub's digest and published like any pull. The
//! verified files are then renamed into `blobs/`, which is why a blob found there at its size
//! is trusted and never fetched again, by any revision. The snapshot is built aside, flushed,
//! and renamed into `snapshots/` only when every blob it links to is in place; the ref is
//! written after it, by rename. So a kill at any moment leaves no snapshot or a whole one, and
//! the next pull carries on. A snapshot folder that another tool started file by file (as
//! `hf_hub_download` does) is completed in place, each link by rename.
//!
//! One modelpull process changes a repo at a time (`.modelpull/lock`); `huggingface_hub`
//! writes blobs and links by rename too, so the two can share a cache.

mod blobs;
mod layout;
mod snapshot;

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::pull::{Context, Options};
use crate::report::{FileReport, Report};
use crate::store::{Env, HfRepo, Manifest};
use crate::target::Target;
use layout::RepoDirs;

/// A Hugging Face cache folder (`HF_HUB_CACHE`) that `hf://` models are pulled into.
///
/// ```no_run
/// use modelpull::{Context, Control, Env, HfCache, Options};
///
/// # fn main() -> modelpull::Result<()> {
/// let env = Env::from_process();
/// let mut opts = Options::default();
/// let control = Control::new(&opts.client())?;
/// let manifest = modelpull::resolve("hf://openai-community/gpt2", &env, &control)?;
/// opts.apply_tls(&manifest);
/// let report = HfCache::from_env(&env)?.pull(&manifest, &opts, &Context::default())?;
/// println!("snapshot in {}", report.destination.display());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfCache {
    root: PathBuf,
}

impl HfCache {
    /// The cache at `root` (the folder that holds the `models--ORG--MODEL` folders).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The cache `huggingface_hub` uses with these variables: `HF_HUB_CACHE` (or the legacy
    /// `HUGGINGFACE_HUB_CACHE`), else `HF_HOME/hub`, else `XDG_CACHE_HOME/huggingface/hub`,
    /// else `~/.cache/huggingface/hub`. Fails only when the answer needs `HOME` and it is unset.
    pub fn from_env(env: &Env) -> Result<Self> {
        layout::cache_root(env).map(Self::new)
    }

    /// The cache folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the snapshot of `repo_id` (`org/name`) at `commit` is, or will be.
    pub fn snapshot_dir(&self, repo_id: &str, commit: &str) -> PathBuf {
        RepoDirs::new(&self.root, repo_id).snapshot(commit)
    }

    /// Pulls the files of an `hf://` manifest into the cache: the blobs it lacks are fetched
    /// and verified, the snapshot of the manifest's commit is published whole, and the ref of
    /// the revision the URI named points to it. The report's destination is the snapshot
    /// folder; a snapshot that already holds every file is [`Report::up_to_date`], and
    /// nothing is written (so a read-only cache serves it).
    ///
    /// A manifest filtered by `STORAGE_ALLOW_PATTERNS` or `STORAGE_IGNORE_PATTERNS` gives a
    /// snapshot of the files it lists, as `snapshot_download` with patterns does.
    pub fn pull(&self, manifest: &Manifest, opts: &Options, cx: &Context) -> Result<Report> {
        let started = Instant::now();
        let model = Model::of(manifest)?;
        let dirs = RepoDirs::new(&self.root, &model.repo_id);
        let snap = dirs.snapshot(&model.commit);
        if snapshot::is_complete(&snap, &model.files) && snapshot::ref_is_current(&dirs, &model)? {
            tracing::info!(snapshot = %snap.display(), "already in the cache; nothing to do");
            return Ok(model.report(&snap, None, true, started));
        }
        let work = dirs.work();
        std::fs::create_dir_all(&work).map_err(|e| Error::local("create directory", &work, e))?;
        tag_cache_dir(&self.root);
        let _lock = crate::disk::staging::lock(&dirs.lock())?;
        blobs::recover(&dirs, &model.commit)?;
        let complete = snapshot::is_complete(&snap, &model.files);
        let fetched = if complete {
            None
        } else {
            let fetched = blobs::fetch_missing(&dirs, &model, opts, cx)?;
            snapshot::publish(&dirs, &model)?;
            fetched
        };
        snapshot::write_ref(&dirs, &model)?;
        Ok(model.report(&snap, fetched.as_ref(), complete, started))
    }
}

/// What the cache holds for a manifest: the repo, the revision asked for, its commit, and
/// each file with its blob name.
#[derive(Debug)]
struct Model<'m> {
    uri: &'m str,
    repo_id: String,
    revision: String,
    commit: String,
    files: Vec<CachedFile<'m>>,
}

/// One file of a snapshot.
#[derive(Debug)]
struct CachedFile<'m> {
    target: &'m Target,
    blob: String,
    size: u64,
}

impl<'m> Model<'m> {
    fn of(manifest: &'m Manifest) -> Result<Self> {
        let uri = manifest.uri.as_str();
        let repo = HfRepo::parse(uri).map_err(|_| Error::InvalidSource {
            input: crate::redact_str(uri),
            reason: "the Hugging Face cache holds hf:// models only; pull other sources into a directory".into(),
        })?;
        let commit = manifest
            .revision
            .clone()
            .filter(|c| c.len() == 40 && c.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| Error::Store {
                uri: uri.to_owned(),
                message: "the listing names no commit, so there is no snapshot to file it under"
                    .into(),
            })?;
        let files = manifest
            .files
            .iter()
            .map(|target| {
                let bad = |what: &str| Error::Store {
                    uri: uri.to_owned(),
                    message: format!("`{}` has {what}", target.path.escape_debug()),
                };
                Ok(CachedFile {
                    target,
                    blob: layout::blob_name(target)
                        .ok_or_else(|| bad("no sha256 or git blob id to name its blob"))?,
                    size: target.size.ok_or_else(|| bad("no size"))?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            uri,
            repo_id: repo.id,
            revision: repo.revision,
            commit,
            files,
        })
    }

    /// The report of a pull into `snap`; `fetched` is the engine's report for the blobs it
    /// fetched (none: every blob was in the cache already), `up_to_date` says the snapshot
    /// was complete before this pull.
    fn report(
        &self,
        snap: &Path,
        fetched: Option<&Report>,
        up_to_date: bool,
        started: Instant,
    ) -> Report {
        let fetched_by_blob: std::collections::HashMap<&str, &FileReport> = fetched
            .map(|r| r.files.iter().map(|f| (f.path.as_str(), f)).collect())
            .unwrap_or_default();
        let files: Vec<FileReport> = self
            .files
            .iter()
            .map(|f| {
                let new = fetched_by_blob.get(f.blob.as_str()).copied();
                match new {
                    Some(r) => FileReport {
                        path: f.target.path.clone(),
                        ..r.clone()
                    },
                    None => FileReport {
                        path: f.target.path.clone(),
                        size: f.size,
                        digests: f.target.expected.clone(),
                        verified: f.target.expected.iter().map(|d| d.algorithm).collect(),
                        resumed_bytes: f.size,
                        checksum: "already in the cache".into(),
                    },
                }
            })
            .collect();
        let seconds = started.elapsed().as_secs_f64();
        let downloaded_bytes = fetched.map_or(0, |r| r.downloaded_bytes);
        Report {
            destination: snap.to_owned(),
            up_to_date,
            driver: fetched.and_then(|r| r.driver),
            driver_note: fetched.and_then(|r| r.driver_note.clone()),
            cores: fetched.map_or(0, |r| r.cores),
            connections: fetched.map(|r| r.connections.clone()).unwrap_or_default(),
            total_bytes: files.iter().map(|f| f.size).sum(),
            downloaded_bytes,
            resumed_bytes: files.iter().map(|f| f.resumed_bytes).sum(),
            files,
            unpacked: None,
            seconds,
            gigabytes_per_second: downloaded_bytes as f64 / seconds.max(1e-9) / 1e9,
            retries: fetched.map_or(0, |r| r.retries),
            peak_buffer_bytes: fetched.map_or(0, |r| r.peak_buffer_bytes),
            adoption: None,
        }
    }
}

/// Marks the cache folder for backup tools, as `huggingface_hub` does (the Cache Directory
/// Tagging Specification); best effort, like theirs.
fn tag_cache_dir(root: &Path) {
    let tag = root.join("CACHEDIR.TAG");
    if !tag.exists() {
        let _ = std::fs::write(
            tag,
            "Signature: 8a477f597d28d172789f06886806bc55\n\
             # This file is a cache directory tag created by modelpull for the Hugging Face cache.\n\
             # For information about cache directory tags, see:\n\
             #\thttps://bford.info/cachedir/\n",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::{Algorithm, Digest};

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
    const OLD_COMMIT: &str = "89abcdef0123456789abcdef0123456789abcdef";

    /// A file of the model: path, blob name (its digest) and content.
    struct File {
        path: &'static str,
        digest: Digest,
        bytes: &'static [u8],
    }

    fn files() -> Vec<File> {
        let git = |c: &str| Digest::from_hex(Algorithm::GitSha1, &c.repeat(40)).unwrap();
        let sha256 = |c: &str| Digest::from_hex(Algorithm::Sha256, &c.repeat(64)).unwrap();
        vec![
            File {
                path: "config.json",
                digest: git("1"),
                bytes: b"{}",
            },
            // The same content at another path: one blob, two links.
            File {
                path: "copy of config.json",
                digest: git("1"),
                bytes: b"{}",
            },
            File {
                path: "sub/dir/w.bin",
                digest: sha256("2"),
                bytes: b"weights",
            },
        ]
    }

    fn manifest(uri: &str, files: &[File]) -> Manifest {
        let targets = files
            .iter()
            .map(|f| Target {
                url: url::Url::parse(&format!(
                    "http://127.0.0.1:9/o/m/resolve/{COMMIT}/{}",
                    f.path
                ))
                .unwrap(),
                path: f.path.into(),
                expected: vec![f.digest.clone()],
                size: Some(f.bytes.len() as u64),
                checksum: None,
                auth: Default::default(),
                mirrors: Vec::new(),
            })
            .collect();
        Manifest {
            uri: uri.into(),
            store: "hf",
            revision: Some(COMMIT.into()),
            files: targets,
            skipped: 0,
            ca_bundle: None,
            insecure_hosts: Vec::new(),
        }
    }

    /// Puts every blob of `files` in the cache, so that a pull fetches nothing.
    fn seed_blobs(dirs: &RepoDirs, files: &[File]) {
        std::fs::create_dir_all(dirs.blobs()).unwrap();
        for f in files {
            std::fs::write(dirs.blob(&f.digest.hex()), f.bytes).unwrap();
        }
    }

    fn pull(cache: &HfCache, manifest: &Manifest) -> Result<Report> {
        cache.pull(manifest, &Options::default(), &Context::default())
    }

    fn assert_snapshot(snap: &Path, files: &[File]) {
        for f in files {
            let link = snap.join(f.path);
            let target = std::fs::read_link(&link).unwrap();
            assert_eq!(
                target,
                layout::link_target(f.path, &f.digest.hex()),
                "{}",
                f.path
            );
            assert_eq!(std::fs::read(&link).unwrap(), f.bytes, "{}", f.path);
        }
    }

    #[test]
    fn a_snapshot_of_cached_blobs_is_published_with_its_ref() {
        let root = tempfile::tempdir().unwrap();
        let cache = HfCache::new(root.path());
        let dirs = RepoDirs::new(root.path(), "o/m");
        seed_blobs(&dirs, &files());
        let report = pull(&cache, &manifest("hf://o/m", &files())).unwrap();
        let snap = cache.snapshot_dir("o/m", COMMIT);
        assert_eq!(report.destination, snap);
        assert!(!report.up_to_date);
        assert_eq!(report.downloaded_bytes, 0);
        assert_eq!(report.files.len(), 3);
        assert_snapshot(&snap, &files());
        assert_eq!(
            std::fs::read_to_string(dirs.root.join("refs/main")).unwrap(),
            COMMIT
        );
        assert!(root.path().join("CACHEDIR.TAG").exists());
        // Nothing of the work is left but the lock.
        let left: Vec<_> = std::fs::read_dir(dirs.work())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["lock"]);

        let again = pull(&cache, &manifest("hf://o/m", &files())).unwrap();
        assert!(again.up_to_date);
        assert_eq!(again.total_bytes, report.total_bytes);
    }

    #[test]
    fn a_commit_revision_gets_no_ref_and_a_moved_branch_a_new_one() {
        let root = tempfile::tempdir().unwrap();
        let cache = HfCache::new(root.path());
        let dirs = RepoDirs::new(root.path(), "o/m");
        seed_blobs(&dirs, &files());
        pull(&cache, &manifest(&format!("hf://o/m:{COMMIT}"), &files())).unwrap();
        assert_snapshot(&dirs.snapshot(COMMIT), &files());
        assert!(!dirs.root.join("refs").exists());

        let pr = dirs.ref_file("refs/pr/1").unwrap();
        std::fs::create_dir_all(pr.parent().unwrap()).unwrap();
        std::fs::write(&pr, OLD_COMMIT).unwrap();
        let report = pull(&cache, &manifest("hf://o/m:refs/pr/1", &files())).unwrap();
        assert!(
            report.up_to_date,
            "the snapshot was there; only the ref moved"
        );
        assert_eq!(std::fs::read_to_string(&pr).unwrap(), COMMIT);
    }

    #[test]
    fn a_snapshot_started_elsewhere_is_completed_in_place() {
        let root = tempfile::tempdir().unwrap();
        let cache = HfCache::new(root.path());
        let dirs = RepoDirs::new(root.path(), "o/m");
        let all = files();
        seed_blobs(&dirs, &all);
        // What `hf_hub_download` of one file leaves, plus a link to a blob of the wrong size.
        let snap = dirs.snapshot(COMMIT);
        std::fs::create_dir_all(snap.join("sub/dir")).unwrap();
        std::os::unix::fs::symlink(
            layout::link_target(all[0].path, &all[0].digest.hex()),
            snap.join(all[0].path),
        )
        .unwrap();
        std::fs::write(dirs.blob("stale"), b"old").unwrap();
        std::os::unix::fs::symlink("../../../../blobs/stale", snap.join(all[2].path)).unwrap();
        pull(&cache, &manifest("hf://o/m", &all)).unwrap();
        assert_snapshot(&snap, &all);
        assert!(!dirs.building(COMMIT).exists());
    }

    #[test]
    fn blobs_an_interrupted_pull_verified_are_used() {
        let root = tempfile::tempdir().unwrap();
        let cache = HfCache::new(root.path());
        let dirs = RepoDirs::new(root.path(), "o/m");
        let all = files();
        seed_blobs(&dirs, &all[..2]);
        // A pull killed after the engine published its download, before the blobs moved.
        let download = dirs.download();
        std::fs::create_dir_all(&download).unwrap();
        let name = all[2].digest.hex();
        std::fs::write(download.join(&name), all[2].bytes).unwrap();
        let record = crate::disk::staging::FileRecord {
            path: name,
            size: all[2].bytes.len() as u64,
            digests: vec![all[2].digest.clone()],
        };
        let marker = crate::Marker::new(vec![], vec![record]);
        std::fs::write(
            download.join(crate::MARKER),
            serde_json::to_vec(&marker).unwrap(),
        )
        .unwrap();
        // And a snapshot half built.
        std::fs::create_dir_all(dirs.building(COMMIT).join("sub")).unwrap();
        // No origin answers on port 9: the pull succeeds only if it fetches nothing.
        let report = pull(&cache, &manifest("hf://o/m", &all)).unwrap();
        assert_eq!(report.downloaded_bytes, 0);
        assert_snapshot(&dirs.snapshot(COMMIT), &all);
        assert!(!download.exists());
    }

    #[test]
    fn a_second_process_is_locked_out() {
        let root = tempfile::tempdir().unwrap();
        let cache = HfCache::new(root.path());
        let dirs = RepoDirs::new(root.path(), "o/m");
        seed_blobs(&dirs, &files());
        std::fs::create_dir_all(dirs.work()).unwrap();
        let _held = crate::disk::staging::lock(&dirs.lock()).unwrap();
        match pull(&cache, &manifest("hf://o/m", &files())) {
            Err(Error::Locked { path, .. }) => assert_eq!(path, dirs.lock()),
            other => panic!("expected Locked, got {other:?}"),
        }
        assert!(!dirs.snapshot(COMMIT).exists());
    }

    #[test]
    fn other_sources_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let mut m = manifest("s3://bucket/model", &files());
        m.store = "s3";
        let err = pull(&HfCache::new(root.path()), &m).unwrap_err();
        assert!(matches!(err, Error::InvalidSource { .. }), "{err}");
        assert!(err.to_string().contains("hf:// models only"), "{err}");
    }
}
