//! Where things go in the Hugging Face cache, by `huggingface_hub`'s rules: the cache root from
//! the environment (`constants.py`), a repo's folder (`repo_folder_name`), a file's blob name
//! (the ETag the Hub sends for it) and the relative link a snapshot holds (`_create_symlink`).
//! Pure functions of their inputs, so each rule is tested on its own.

use std::path::{Path, PathBuf};

use crate::digest::Algorithm;
use crate::error::{Error, Result};
use crate::store::Env;
use crate::target::Target;

/// The cache root, as `huggingface_hub.constants.HF_HUB_CACHE` computes it: `HF_HUB_CACHE`
/// (or its legacy name `HUGGINGFACE_HUB_CACHE`), else `HF_HOME/hub`, else
/// `XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`; a leading `~` is the
/// home directory, as Python's `expanduser` reads it.
pub(crate) fn cache_root(env: &Env) -> Result<PathBuf> {
    if let Some(dir) = env.first(&["HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"]) {
        return expand_user(Path::new(dir), env);
    }
    let home = match env.get("HF_HOME") {
        Some(home) => PathBuf::from(home),
        None => Path::new(env.get("XDG_CACHE_HOME").unwrap_or("~/.cache")).join("huggingface"),
    };
    Ok(expand_user(&home, env)?.join("hub"))
}

/// `path` with a leading `~` component replaced by `HOME`.
fn expand_user(path: &Path, env: &Env) -> Result<PathBuf> {
    let Ok(rest) = path.strip_prefix("~") else {
        return Ok(path.to_owned());
    };
    let home = env.get("HOME").ok_or_else(|| {
        Error::InvalidOption(format!(
            "cannot locate the Hugging Face cache: {} starts with `~` and HOME is not set; set HF_HUB_CACHE or HF_HOME, or pull into a directory (--local-dir)",
            path.display()
        ))
    })?;
    Ok(Path::new(home).join(rest))
}

/// The folder of model repo `org/name` in the cache: `models--org--name`.
pub(crate) fn repo_folder(repo_id: &str) -> String {
    format!("models--{}", repo_id.replace('/', "--"))
}

/// The name `huggingface_hub` gives the blob of `target`: the ETag the Hub sends for it, which
/// is the LFS sha256 for LFS files and the git blob sha1 for the others, both in lowercase hex.
pub(crate) fn blob_name(target: &Target) -> Option<String> {
    [Algorithm::Sha256, Algorithm::GitSha1]
        .into_iter()
        .find_map(|alg| target.expected.iter().find(|d| d.algorithm == alg))
        .map(|d| d.hex())
}

/// Whether `name` is a blob name this module writes (hex digits only), so that a name read
/// back from disk can be joined to `blobs/` safely.
pub(crate) fn is_blob_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The link `snapshots/<commit>/<path>` holds: `../../blobs/<blob>`, with one more `..` for
/// each folder in `path`, the relative path `os.path.relpath` gives `huggingface_hub`.
pub(crate) fn link_target(path: &str, blob: &str) -> PathBuf {
    let up = 2 + path.matches('/').count();
    let mut target = PathBuf::new();
    for _ in 0..up {
        target.push("..");
    }
    target.join("blobs").join(blob)
}

/// The folders of one repo in the cache.
#[derive(Debug, Clone)]
pub(crate) struct RepoDirs {
    /// `<cache>/models--org--name`.
    pub(crate) root: PathBuf,
}

impl RepoDirs {
    pub(crate) fn new(cache: &Path, repo_id: &str) -> Self {
        Self {
            root: cache.join(repo_folder(repo_id)),
        }
    }

    pub(crate) fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }

    pub(crate) fn blob(&self, name: &str) -> PathBuf {
        self.blobs().join(name)
    }

    pub(crate) fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    pub(crate) fn snapshot(&self, commit: &str) -> PathBuf {
        self.snapshots().join(commit)
    }

    /// `refs/<revision>`; a revision with an empty, `.` or `..` segment is refused, since it
    /// would land elsewhere.
    pub(crate) fn ref_file(&self, revision: &str) -> Result<PathBuf> {
        crate::target::check_relative_path(revision).map_err(|reason| Error::InvalidSource {
            input: revision.to_owned(),
            reason: format!("the revision cannot name a ref file: {reason}"),
        })?;
        Ok(self.root.join("refs").join(revision))
    }

    /// `.modelpull/`: this engine's lock and work in progress, out of the folders
    /// `huggingface_hub` scans (`snapshots/`, `refs/`, `blobs/*.incomplete`).
    pub(crate) fn work(&self) -> PathBuf {
        self.root.join(".modelpull")
    }

    /// The lock one modelpull process holds while it changes the repo. Never removed: a lock
    /// file removed while another process waits on it would let a third take a new one.
    pub(crate) fn lock(&self) -> PathBuf {
        self.work().join("lock")
    }

    /// Where the engine pulls the missing blobs, each under its blob name.
    pub(crate) fn download(&self) -> PathBuf {
        self.work().join("download")
    }

    /// Where the snapshot of `commit` is built: as deep as `snapshots/<commit>`, so its
    /// relative links resolve there as they will once it is renamed into place.
    pub(crate) fn building(&self, commit: &str) -> PathBuf {
        self.work().join(commit)
    }

    /// Where a single link or ref is written before its rename into place.
    pub(crate) fn scratch(&self, what: &str) -> PathBuf {
        self.work().join(format!("{what}.tmp"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    fn env(vars: &[(&str, &str)]) -> Env {
        vars.iter().copied().collect()
    }

    #[test]
    fn the_cache_root_follows_huggingface_hub_precedence() {
        let all = [
            ("HOME", "/home/u"),
            ("XDG_CACHE_HOME", "/xdg"),
            ("HF_HOME", "/hf-home"),
            ("HUGGINGFACE_HUB_CACHE", "/legacy"),
            ("HF_HUB_CACHE", "/hub-cache"),
        ];
        let root = |n: usize| cache_root(&env(&all[..n])).unwrap();
        assert_eq!(root(5), Path::new("/hub-cache"));
        assert_eq!(root(4), Path::new("/legacy"));
        assert_eq!(root(3), Path::new("/hf-home/hub"));
        assert_eq!(root(2), Path::new("/xdg/huggingface/hub"));
        assert_eq!(root(1), Path::new("/home/u/.cache/huggingface/hub"));
    }

    #[test]
    fn a_leading_tilde_is_the_home_directory() {
        let e = env(&[("HOME", "/home/u"), ("HF_HOME", "~/hf")]);
        assert_eq!(cache_root(&e).unwrap(), Path::new("/home/u/hf/hub"));
        let e = env(&[("HOME", "/home/u"), ("HF_HUB_CACHE", "~")]);
        assert_eq!(cache_root(&e).unwrap(), Path::new("/home/u"));
        // Only a whole `~` component is the home directory, as in Python.
        let e = env(&[("HOME", "/home/u"), ("HF_HUB_CACHE", "~x/c")]);
        assert_eq!(cache_root(&e).unwrap(), Path::new("~x/c"));
        let e = env(&[("HF_HUB_CACHE", "relative/c")]);
        assert_eq!(cache_root(&e).unwrap(), Path::new("relative/c"));
        // Empty values count as unset.
        let e = env(&[("HOME", "/h"), ("HF_HUB_CACHE", ""), ("HF_HOME", " ")]);
        assert_eq!(
            cache_root(&e).unwrap(),
            Path::new("/h/.cache/huggingface/hub")
        );
    }

    #[test]
    fn without_home_the_error_says_what_to_set() {
        let err = cache_root(&Env::default()).unwrap_err().to_string();
        assert!(err.contains("HOME is not set"), "{err}");
        assert!(err.contains("HF_HUB_CACHE"), "{err}");
        assert!(err.contains("--local-dir"), "{err}");
    }

    #[test]
    fn repo_folders() {
        assert_eq!(
            repo_folder("julien-c/EsperBERTo-small"),
            "models--julien-c--EsperBERTo-small"
        );
        let dirs = RepoDirs::new(Path::new("/c"), "o/m");
        assert_eq!(dirs.blob("ab"), Path::new("/c/models--o--m/blobs/ab"));
        assert_eq!(
            dirs.snapshot("c0ffee"),
            Path::new("/c/models--o--m/snapshots/c0ffee")
        );
    }

    #[test]
    fn links_climb_one_folder_more_per_folder_in_the_path() {
        assert_eq!(
            link_target("config.json", "ab"),
            Path::new("../../blobs/ab")
        );
        assert_eq!(link_target("a/w.bin", "ab"), Path::new("../../../blobs/ab"));
        assert_eq!(
            link_target("a/b/c d.txt", "ab"),
            Path::new("../../../../blobs/ab")
        );
        // Resolved from where the link sits, they all reach the repo's blobs/.
        let repo = Path::new("/c/models--o--m");
        for path in ["config.json", "a/w.bin", "a/b/c d.txt"] {
            let at = repo.join("snapshots/0123").join(path);
            let mut resolved = at.parent().unwrap().to_owned();
            for part in link_target(path, "ab").components() {
                match part {
                    std::path::Component::ParentDir => {
                        resolved.pop();
                    }
                    other => resolved.push(other),
                }
            }
            assert_eq!(resolved, repo.join("blobs/ab"), "{path}");
        }
    }

    #[test]
    fn blob_names_are_the_hub_etags() {
        let target = |expected: Vec<Digest>| Target {
            url: url::Url::parse("http://h/x").unwrap(),
            path: "x".into(),
            expected,
            size: Some(1),
            checksum: None,
            auth: Default::default(),
            mirrors: Vec::new(),
        };
        let sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let git = "f2ba8f84ab5c1bce84a7b441cb1959cfc7093b7f";
        let lfs = target(vec![Digest::from_hex(Algorithm::Sha256, sha256).unwrap()]);
        assert_eq!(blob_name(&lfs).as_deref(), Some(sha256));
        let small = target(vec![Digest::from_hex(Algorithm::GitSha1, git).unwrap()]);
        assert_eq!(blob_name(&small).as_deref(), Some(git));
        assert_eq!(blob_name(&target(vec![])), None);
        assert!(is_blob_name(sha256) && is_blob_name(git));
        assert!(!is_blob_name("") && !is_blob_name("../x") && !is_blob_name("ab.part"));
    }

    #[test]
    fn refs_are_files_under_refs() {
        let dirs = RepoDirs::new(Path::new("/c"), "o/m");
        assert_eq!(
            dirs.ref_file("main").unwrap(),
            Path::new("/c/models--o--m/refs/main")
        );
        assert_eq!(
            dirs.ref_file("refs/pr/1").unwrap(),
            Path::new("/c/models--o--m/refs/refs/pr/1")
        );
        for bad in ["", "/etc/passwd", "a/../../x", "a//b", "."] {
            assert!(dirs.ref_file(bad).is_err(), "{bad:?}");
        }
    }
}
