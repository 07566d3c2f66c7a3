//! The models root on the node (`/mnt/models` by default): KServe's layout, `models/<storage
//! key>/`, with the engine's staging directories (`models/.<key>.modelpull/`) beside the
//! folders they become, on the same filesystem so publishing is a rename.
//!
//! What is on disk is the truth, but only verified truth: a folder is a downloaded model when
//! its completion marker names the same URI and every file it lists is there at its size.
//! Garbage collection touches only folders (and staging leftovers) whose names are storage
//! keys, and only after they have been unwanted for the grace period; anything else in
//! `models/` is logged once and left alone.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use modelpull::Marker;

use crate::keys;
use crate::plan::Disk;

/// Bytes available to this (unprivileged) process on the filesystem of `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

#[derive(Debug)]
pub struct Root {
    models: PathBuf,
    collector: Collector,
}

/// An entry of `models/` as GC sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    /// A model folder, by storage key.
    Model(String),
    /// The engine's staging directory or lock file for a storage key.
    Staging(String),
    /// An unverified folder moved out of the way of a new download; removed after the grace
    /// period even while its model is wanted (pods may still read it until then).
    Aside(String),
    Foreign,
}

fn classify(name: &str) -> Entry {
    if keys::is_storage_key(name) {
        return Entry::Model(name.to_owned());
    }
    let Some(hidden) = name.strip_prefix('.') else {
        return Entry::Foreign;
    };
    // `.<key>.modelpull-old-<seconds>`: a folder set aside for a fresh download.
    if let Some((key, _)) = hidden.split_once(".modelpull-old-")
        && keys::is_storage_key(key)
    {
        return Entry::Aside(key.to_owned());
    }
    // The engine's staging directory, its lock, and an archive set aside while unpacking.
    let staged = [".modelpull", ".modelpull.lock", ".modelpull-archive"]
        .iter()
        .find_map(|suffix| hidden.strip_suffix(suffix));
    match staged {
        Some(key) if keys::is_storage_key(key) => Entry::Staging(key.to_owned()),
        _ => Entry::Foreign,
    }
}

#[derive(Debug, Default)]
struct Collector {
    unwanted_since: HashMap<PathBuf, Instant>,
    foreign_logged: HashSet<PathBuf>,
}

/// Creates `models` if it is missing and proves, by creating and removing a file there, that
/// this process can add entries to it.
pub fn check_writable(models: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(models)?;
    let probe = models.join(format!(".modelpull-write-check-{}", std::process::id()));
    std::fs::File::create(&probe)?;
    std::fs::remove_file(&probe)
}

impl Root {
    /// The models root at `root` (models in `root/models`), not touched yet: it may not be
    /// writable (see [`crate::root_watch`]); reading what is verified there needs no more.
    pub fn new(root: &Path) -> Self {
        Self {
            models: root.join("models"),
            collector: Collector::default(),
        }
    }

    /// [`Root::new`], having proved with [`check_writable`] that the agent can create
    /// entries there.
    pub fn open(root: &Path) -> std::io::Result<Self> {
        let root = Self::new(root);
        check_writable(&root.models)?;
        Ok(root)
    }

    pub fn models_dir(&self) -> &Path {
        &self.models
    }

    pub fn folder(&self, key: &str) -> PathBuf {
        self.models.join(key)
    }

    /// What the folder of `key` holds for `uri`.
    pub fn state(&self, key: &str, uri: &str) -> Disk {
        let folder = self.folder(key);
        if std::fs::symlink_metadata(&folder).is_err() {
            return Disk::Absent;
        }
        let verified = Marker::read(&folder)
            .is_some_and(|m| m.sources == [modelpull::redact_str(uri)] && m.files_present(&folder));
        if verified {
            Disk::Verified
        } else {
            Disk::Unverified
        }
    }

    /// Moves the folder of `key` (unverified, in the way of a new download) aside, for the
    /// collector to remove after the grace period: a pod may still be reading it (a folder
    /// from KServe's own agent has no completion marker), and a rename keeps its files alive.
    pub fn set_aside(&self, key: &str) -> std::io::Result<()> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let aside = self.models.join(format!(".{key}.modelpull-old-{stamp}"));
        match std::fs::rename(self.folder(key), aside) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Removes what no longer belongs: model folders and staging leftovers of storage keys not
    /// in `wanted` (and not downloading), once unwanted for `grace`. Returns what was removed.
    pub fn collect(
        &mut self,
        wanted: &BTreeSet<String>,
        busy: &BTreeSet<String>,
        grace: Duration,
        now: Instant,
    ) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.models) else {
            return Vec::new();
        };
        let mut seen = HashSet::new();
        let mut removed = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let (key, aside) = match classify(&name) {
                Entry::Model(k) | Entry::Staging(k) => (k, false),
                Entry::Aside(k) => (k, true),
                Entry::Foreign => {
                    if self.collector.foreign_logged.insert(path.clone()) {
                        tracing::warn!(path = %path.display(), "not a model folder of this agent; leaving it alone");
                    }
                    continue;
                }
            };
            if !aside && (wanted.contains(&key) || busy.contains(&key)) {
                self.collector.unwanted_since.remove(&path);
                continue;
            }
            seen.insert(path.clone());
            let since = *self
                .collector
                .unwanted_since
                .entry(path.clone())
                .or_insert(now);
            if now.duration_since(since) < grace {
                continue;
            }
            let result = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match result {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "removed a model no longer in the spec");
                    removed.push(path.clone());
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove a model no longer in the spec")
                }
            }
            self.collector.unwanted_since.remove(&path);
        }
        self.collector
            .unwanted_since
            .retain(|p, _| seen.contains(p));
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let key = keys::storage_key("hf://a/b");
        assert_eq!(classify(&key), Entry::Model(key.clone()));
        assert_eq!(
            classify(&format!(".{key}.modelpull")),
            Entry::Staging(key.clone())
        );
        assert_eq!(
            classify(&format!(".{key}.modelpull.lock")),
            Entry::Staging(key.clone())
        );
        for foreign in [
            "llama",
            "lost+found",
            ".modelpull",
            "0123456789abcdeF",
            ".x.modelpull",
        ] {
            assert_eq!(classify(foreign), Entry::Foreign, "{foreign}");
        }
    }

    #[test]
    fn collects_only_unwanted_keys_after_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let mut root = Root::open(dir.path()).unwrap();
        let keep = keys::storage_key("hf://a/keep");
        let drop = keys::storage_key("hf://a/drop");
        for name in [keep.as_str(), drop.as_str(), "foreign-model"] {
            std::fs::create_dir_all(root.models_dir().join(name).join("sub")).unwrap();
        }
        std::fs::create_dir(root.models_dir().join(format!(".{drop}.modelpull"))).unwrap();
        let wanted: BTreeSet<String> = [keep.clone()].into();
        let t0 = Instant::now();
        let grace = Duration::from_secs(600);
        assert!(
            root.collect(&wanted, &BTreeSet::new(), grace, t0)
                .is_empty()
        );
        assert!(
            root.collect(
                &wanted,
                &BTreeSet::new(),
                grace,
                t0 + Duration::from_secs(599)
            )
            .is_empty()
        );
        let removed = root.collect(&wanted, &BTreeSet::new(), grace, t0 + grace);
        assert_eq!(removed.len(), 2);
        assert!(root.folder(&keep).exists());
        assert!(!root.folder(&drop).exists());
        assert!(root.models_dir().join("foreign-model/sub").exists());
    }

    #[test]
    fn a_model_wanted_again_restarts_its_grace() {
        let dir = tempfile::tempdir().unwrap();
        let mut root = Root::open(dir.path()).unwrap();
        let key = keys::storage_key("hf://a/b");
        std::fs::create_dir(root.folder(&key)).unwrap();
        let t0 = Instant::now();
        let grace = Duration::from_secs(10);
        let none = BTreeSet::new();
        let wanted: BTreeSet<String> = [key.clone()].into();
        root.collect(&none, &none, grace, t0);
        root.collect(&wanted, &none, grace, t0 + Duration::from_secs(5));
        root.collect(&none, &none, grace, t0 + Duration::from_secs(11));
        assert!(root.folder(&key).exists(), "the grace started over at 11 s");
        root.collect(&none, &none, grace, t0 + Duration::from_secs(21));
        assert!(!root.folder(&key).exists());
    }

    #[test]
    fn a_folder_set_aside_goes_after_the_grace_even_when_wanted() {
        let dir = tempfile::tempdir().unwrap();
        let mut root = Root::open(dir.path()).unwrap();
        let key = keys::storage_key("hf://a/b");
        std::fs::create_dir_all(root.folder(&key).join("legacy")).unwrap();
        root.set_aside(&key).unwrap();
        assert!(!root.folder(&key).exists());
        let wanted: BTreeSet<String> = [key.clone()].into();
        let t0 = Instant::now();
        let grace = Duration::from_secs(10);
        assert!(
            root.collect(&wanted, &BTreeSet::new(), grace, t0)
                .is_empty()
        );
        assert_eq!(
            root.collect(&wanted, &BTreeSet::new(), grace, t0 + grace)
                .len(),
            1
        );
        assert_eq!(std::fs::read_dir(root.models_dir()).unwrap().count(), 0);
    }

    #[test]
    fn only_a_matching_marker_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        let key = keys::storage_key("hf://a/b");
        assert_eq!(root.state(&key, "hf://a/b"), Disk::Absent);
        std::fs::create_dir(root.folder(&key)).unwrap();
        assert_eq!(
            root.state(&key, "hf://a/b"),
            Disk::Unverified,
            "an empty folder"
        );
        let mut marker = Marker::new(Vec::new(), Vec::new());
        marker.sources = vec!["hf://a/other".into()];
        std::fs::write(
            root.folder(&key).join(modelpull::MARKER),
            serde_json::to_vec(&marker).unwrap(),
        )
        .unwrap();
        assert_eq!(
            root.state(&key, "hf://a/b"),
            Disk::Unverified,
            "another model's marker"
        );
        marker.sources = vec!["hf://a/b".into()];
        std::fs::write(
            root.folder(&key).join(modelpull::MARKER),
            serde_json::to_vec(&marker).unwrap(),
        )
        .unwrap();
        assert_eq!(root.state(&key, "hf://a/b"), Disk::Verified);
    }
}
