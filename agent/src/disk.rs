//! The models root on the node (`/mnt/models` by default): KServe's layout, `models/<storage
//! key>/`, with the engine's staging directories (`models/.<key>.modelpull/`) beside the
//! folders they become, on the same filesystem so publishing is a rename.
//!
//! What is on disk is the truth, but only verified truth: a folder is a downloaded model when
//! its completion marker names the same URI and every file it lists is there at its size. The
//! marker is in the folder, or, for a folder the agent adopted but cannot write to (KServe's
//! Jobs wrote it as uid 1000), in `models/.modelpull/markers/<key>.json`
//! ([`modelpull::adopt::read_marker_matching`]).
//!
//! Garbage collection touches only folders (and staging leftovers) whose names are storage
//! keys, and only after they have been unwanted for the grace period; anything else in
//! `models/` is logged once and left alone. A folder a repair replaced (set aside by the
//! engine once the verified copy was in place) goes after the grace period too. A folder the
//! agent may not delete (its files belong to another user) is reported once and not tried
//! again until its owner or mode changes: see [`Collected::undeletable`].

use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    /// A folder a repair replaced with its verified copy; removed after the grace period
    /// even while its model is wanted (pods may still read it until then).
    Aside(String),
    /// The agent's own state: the markers of folders it cannot write to.
    State,
    Foreign,
}

fn classify(name: &str) -> Entry {
    if keys::is_storage_key(name) {
        return Entry::Model(name.to_owned());
    }
    if name == ".modelpull" {
        return Entry::State;
    }
    let Some(hidden) = name.strip_prefix('.') else {
        return Entry::Foreign;
    };
    // `.<key>.modelpull-old-<seconds>`: a folder a repair replaced.
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
    /// Folders the agent may not delete, with what their metadata looked like then (a
    /// `chown` changes it: then it is tried again) and the bytes they hold.
    undeletable: HashMap<PathBuf, (Changed, u64)>,
}

/// When an entry's metadata last changed (its ctime, in nanoseconds).
type Changed = (i64, i64);

fn changed(path: &Path) -> Changed {
    std::fs::symlink_metadata(path).map_or((0, 0), |m| (m.ctime(), m.ctime_nsec()))
}

/// What one garbage collection did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// What was removed: model folders, staging leftovers, folders a repair replaced.
    pub removed: Vec<PathBuf>,
    /// Folders found undeletable in this collection (each reported once), with the bytes
    /// they hold: their files belong to another user (KServe's Jobs run as uid 1000).
    pub undeletable: Vec<(PathBuf, u64)>,
}

impl Collected {
    /// The storage keys whose model folders were removed.
    pub fn removed_models(&self) -> Vec<String> {
        self.removed
            .iter()
            .filter_map(|p| match classify(&p.file_name()?.to_string_lossy()) {
                Entry::Model(key) => Some(key),
                _ => None,
            })
            .collect()
    }
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
        let source = [modelpull::redact_str(uri)];
        let verified = modelpull::adopt::read_marker_matching(&folder, |m| m.sources == source)
            .is_some_and(|m| m.files_present(&folder));
        if verified {
            Disk::Verified
        } else {
            Disk::Unverified
        }
    }

    /// Bytes held by the folders found undeletable and still there.
    pub fn undeletable_bytes(&self) -> u64 {
        self.collector.undeletable.values().map(|(_, b)| b).sum()
    }

    /// Removes what no longer belongs: model folders and staging leftovers of storage keys not
    /// in `wanted` (and not downloading), once unwanted for `grace`; folders a repair replaced
    /// once `grace` has passed and their model is `verified` (or no longer wanted).
    pub fn collect(
        &mut self,
        wanted: &BTreeSet<String>,
        busy: &BTreeSet<String>,
        verified: &BTreeSet<String>,
        grace: Duration,
        now: Instant,
    ) -> Collected {
        let mut out = Collected::default();
        let Ok(entries) = std::fs::read_dir(&self.models) else {
            return out;
        };
        let mut seen = HashSet::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let (key, aside) = match classify(&name) {
                Entry::Model(k) | Entry::Staging(k) => (k, false),
                Entry::Aside(k) => (k, true),
                Entry::State => {
                    self.forget_stale_markers();
                    continue;
                }
                Entry::Foreign => {
                    if self.collector.foreign_logged.insert(path.clone()) {
                        tracing::warn!(path = %path.display(), "not a model folder of this agent; leaving it alone");
                    }
                    continue;
                }
            };
            let in_use = wanted.contains(&key) || busy.contains(&key);
            if in_use && (!aside || !verified.contains(&key)) {
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
            let stamp = changed(&path);
            if self
                .collector
                .undeletable
                .get(&path)
                .is_some_and(|(at, _)| *at == stamp)
            {
                continue;
            }
            let result = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match result {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "removed a model folder no longer needed");
                    if !aside {
                        modelpull::adopt::forget(&path);
                    }
                    self.collector.undeletable.remove(&path);
                    out.removed.push(path.clone());
                }
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    let bytes = allocated_bytes(&path);
                    let stamp = changed(&path);
                    tracing::warn!(
                        path = %path.display(),
                        bytes,
                        error = %e,
                        "cannot remove a model folder no longer needed: its files belong to another user (KServe's download Jobs run as uid 1000). Remove it as root on the node (rm -rf), or give it to the agent (chown -R 65532:65532) and the agent removes it; not tried again until then"
                    );
                    self.collector
                        .undeletable
                        .insert(path.clone(), (stamp, bytes));
                    out.undeletable.push((path.clone(), bytes));
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove a model folder no longer needed")
                }
            }
            self.collector.unwanted_since.remove(&path);
        }
        self.collector
            .unwanted_since
            .retain(|p, _| seen.contains(p));
        self.collector.undeletable.retain(|p, _| p.exists());
        out
    }

    /// Removes the recorded markers (`models/.modelpull/markers/<key>.json`) whose folder is
    /// gone: removed by someone else, or exchanged for a copy that holds its own.
    fn forget_stale_markers(&self) {
        let dir = self.models.join(modelpull::adopt::MARKERS);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(key) = name.strip_suffix(".json") else {
                continue;
            };
            let folder = self.folder(key);
            if keys::is_storage_key(key) && modelpull::adopt::read_marker(&folder).is_none() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Disk space the files under `path` take (what removing them would free).
fn allocated_bytes(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let own = meta.blocks() * 512;
    if !meta.is_dir() {
        return own;
    }
    let children = std::fs::read_dir(path).map_or(0, |entries| {
        entries.flatten().map(|e| allocated_bytes(&e.path())).sum()
    });
    own + children
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use modelpull::Marker;

    use super::*;

    fn none() -> BTreeSet<String> {
        BTreeSet::new()
    }

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
            "0123456789abcdeF",
            ".x.modelpull",
            ".modelpull-other",
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
            root.collect(&wanted, &none(), &none(), grace, t0)
                .removed
                .is_empty()
        );
        assert!(
            root.collect(
                &wanted,
                &none(),
                &none(),
                grace,
                t0 + Duration::from_secs(599)
            )
            .removed
            .is_empty()
        );
        let removed = root
            .collect(&wanted, &none(), &none(), grace, t0 + grace)
            .removed;
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
        let none = none();
        let wanted: BTreeSet<String> = [key.clone()].into();
        root.collect(&none, &none, &none, grace, t0);
        root.collect(&wanted, &none, &none, grace, t0 + Duration::from_secs(5));
        root.collect(&none, &none, &none, grace, t0 + Duration::from_secs(11));
        assert!(root.folder(&key).exists(), "the grace started over at 11 s");
        root.collect(&none, &none, &none, grace, t0 + Duration::from_secs(21));
        assert!(!root.folder(&key).exists());
    }

    #[test]
    fn a_replaced_folder_goes_after_the_grace_once_its_copy_is_verified() {
        let dir = tempfile::tempdir().unwrap();
        let mut root = Root::open(dir.path()).unwrap();
        let key = keys::storage_key("hf://a/b");
        let aside = root
            .models_dir()
            .join(format!(".{key}.modelpull-old-1700000000"));
        std::fs::create_dir_all(aside.join("legacy")).unwrap();
        assert_eq!(
            classify(&format!(".{key}.modelpull-old-1700000000")),
            Entry::Aside(key.clone())
        );
        let wanted: BTreeSet<String> = [key.clone()].into();
        let t0 = Instant::now();
        let grace = Duration::from_secs(10);
        root.collect(&wanted, &none(), &none(), grace, t0);
        assert!(
            root.collect(&wanted, &none(), &none(), grace, t0 + grace)
                .removed
                .is_empty(),
            "the model is wanted and not verified: the old copy may be all there is"
        );
        assert!(aside.exists());
        root.collect(&wanted, &none(), &wanted, grace, t0 + grace);
        let removed = root
            .collect(&wanted, &none(), &wanted, grace, t0 + grace * 2)
            .removed;
        assert_eq!(removed, [aside]);
    }

    #[test]
    fn a_folder_that_cannot_be_removed_is_reported_once_and_tried_after_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let mut root = Root::open(dir.path()).unwrap();
        let key = keys::storage_key("hf://a/gone");
        let folder = root.folder(&key);
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("w.bin"), vec![7u8; 64 << 10]).unwrap();
        // Root may delete anything but an immutable file: the nearest to another user's.
        let immutable = Command::new("chattr")
            .arg("+i")
            .arg(folder.join("w.bin"))
            .status()
            .is_ok_and(|s| s.success());
        if !immutable {
            eprintln!("SKIPPED: chattr +i is not available here");
            return;
        }
        let (t0, grace) = (Instant::now(), Duration::ZERO);
        let first = root.collect(&none(), &none(), &none(), grace, t0);
        let chattr = |flag: &str| {
            Command::new("chattr")
                .arg(flag)
                .arg(folder.join("w.bin"))
                .status()
                .unwrap()
        };
        assert_eq!(first.undeletable.len(), 1, "{first:?}");
        assert_eq!(first.undeletable[0].0, folder);
        assert!(first.undeletable[0].1 >= 64 << 10);
        assert_eq!(root.undeletable_bytes(), first.undeletable[0].1);
        let again = root.collect(&none(), &none(), &none(), grace, t0);
        assert_eq!(
            again,
            Collected::default(),
            "reported once, not tried again"
        );
        // The fix: the flag cleared, and the folder's ctime changed as `chown -R` changes it.
        chattr("-i");
        std::fs::write(folder.join("touch"), b"").unwrap();
        let fixed = root.collect(&none(), &none(), &none(), grace, t0);
        assert_eq!(fixed.removed, [folder]);
        assert_eq!(root.undeletable_bytes(), 0);
    }

    #[test]
    fn a_marker_recorded_beside_the_folder_verifies_it_and_goes_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut root = Root::open(dir.path()).unwrap();
        let uri = "hf://a/kserve";
        let key = keys::storage_key(uri);
        std::fs::create_dir(root.folder(&key)).unwrap();
        assert_eq!(root.state(&key, uri), Disk::Unverified);
        let recorded = modelpull::adopt::recorded_path(&root.folder(&key)).unwrap();
        assert_eq!(
            recorded,
            root.models_dir()
                .join(format!(".modelpull/markers/{key}.json"))
        );
        assert_eq!(classify(".modelpull"), Entry::State);
        let meta = std::fs::metadata(root.folder(&key)).unwrap();
        let mut marker = Marker::new(Vec::new(), Vec::new());
        marker.sources = vec![uri.into()];
        std::fs::create_dir_all(recorded.parent().unwrap()).unwrap();
        // What the engine records for a folder it cannot write: its identity, birth and
        // change time included.
        use rustix::fs::{AtFlags, CWD, StatxFlags};
        let wanted = StatxFlags::BASIC_STATS | StatxFlags::BTIME;
        let st =
            rustix::fs::statx(CWD, root.folder(&key), AtFlags::SYMLINK_NOFOLLOW, wanted).unwrap();
        let birth = StatxFlags::from_bits_retain(st.stx_mask)
            .contains(StatxFlags::BTIME)
            .then_some((st.stx_btime.tv_sec, st.stx_btime.tv_nsec));
        std::fs::write(
            &recorded,
            serde_json::to_vec(&serde_json::json!({
                "device": meta.dev(), "inode": meta.ino(), "birth": birth,
                "changed": (st.stx_ctime.tv_sec, st.stx_ctime.tv_nsec), "marker": marker
            }))
            .unwrap(),
        )
        .unwrap();
        assert_eq!(root.state(&key, uri), Disk::Verified);
        // Unwanted: the folder goes after the grace, and its marker with it.
        let t0 = Instant::now();
        root.collect(&none(), &none(), &none(), Duration::ZERO, t0);
        assert!(!root.folder(&key).exists() && !recorded.exists());
        assert!(
            root.models_dir().join(".modelpull").exists(),
            "the state folder stays"
        );

        // A marker whose folder went some other way is dropped too.
        std::fs::write(&recorded, b"{}").unwrap();
        root.collect(&none(), &none(), &none(), Duration::ZERO, t0);
        assert!(!recorded.exists());
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
