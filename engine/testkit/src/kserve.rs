//! KServe's own storage initializer (PyPI `kserve-storage`) as the tests run it: under
//! KServe's user, uid 1000, as its download Jobs and init containers run, to fill a models
//! root the way a cluster that ran KServe leaves it.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::hub::Hub;

/// The user KServe's storage-initializer image runs as.
pub const KSERVE_UID: u32 = 1000;

/// A Python that KServe's user can run with the test virtualenv's packages: the venv's own
/// interpreter may live where only root can reach it (pyenv under /root), then the system's
/// interpreter of the same version is used with the venv's site-packages.
pub fn python(venv_python: &Path) -> Option<(PathBuf, Option<String>)> {
    let query = Command::new(venv_python)
        .args(["-c", "import site, sys; print(site.getsitepackages()[0]); print(sys.version_info[0], sys.version_info[1], sep='.')"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&query.stdout).into_owned();
    let mut lines = text.lines();
    let (site, version) = (lines.next()?.to_owned(), lines.next()?.to_owned());
    let candidates = [
        (venv_python.to_owned(), None),
        (
            PathBuf::from(format!("/usr/bin/python{version}")),
            Some(site.clone()),
        ),
    ];
    candidates.into_iter().find(|(python, path)| {
        let mut cmd = Command::new(python);
        if let Some(path) = path {
            cmd.env("PYTHONPATH", path);
        }
        cmd.args(["-c", "import kserve_storage"])
            .uid(KSERVE_UID)
            .gid(KSERVE_UID)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Runs KServe's storage initializer as its Jobs do (uid 1000), one `(uri, folder)` after
/// the other.
pub fn initializer(
    (python, pythonpath): &(PathBuf, Option<String>),
    hub: &Hub,
    home: &Path,
    pulls: &[(&str, PathBuf)],
) {
    let script = "import logging, os, sys\n\
        from kserve_storage import Storage\n\
        logging.disable(logging.INFO)\n\
        for uri, out in zip(sys.argv[1::2], sys.argv[2::2]):\n    \
            os.makedirs(out, exist_ok=True)\n    \
            Storage.download(uri, out)\n";
    let mut cmd = Command::new(python);
    cmd.arg("-c").arg(script);
    for (uri, out) in pulls {
        cmd.arg(uri).arg(out);
    }
    cmd.env_clear();
    if let Some(path) = pythonpath {
        cmd.env("PYTHONPATH", path);
    }
    let out = cmd
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", home)
        .env("HF_HOME", home.join("hf"))
        .env("HF_ENDPOINT", hub.endpoint())
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .uid(KSERVE_UID)
        .gid(KSERVE_UID)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kserve-storage failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Flushes the files under `path` and drops them from the page cache, so reading them again
/// goes to the disk.
pub fn evict(path: &Path) {
    for e in std::fs::read_dir(path).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            evict(&e.path());
        } else {
            let f = std::fs::File::open(e.path()).unwrap();
            f.sync_all().unwrap();
            rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        }
    }
}

pub fn chown_r(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap();
    if std::fs::symlink_metadata(path).unwrap().is_dir() {
        for e in std::fs::read_dir(path).unwrap().flatten() {
            chown_r(&e.path(), uid);
        }
    }
}
