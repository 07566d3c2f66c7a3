//! Checking files where they lie: size first (free), then the store's own digests, read at disk
//! speed with large sequential reads and hashed on every core at once, one file per core, the
//! largest first so that the last file to finish is a small one.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use rustix::fs::{Mode, OFlags};

use crate::digest::ordered::OrderedHashers;
use crate::digest::{Algorithm, Digest, crc};
use crate::disk::staging::FileRecord;
use crate::error::{Error, Result};
use crate::pull::Context;
use crate::target::Target;

/// Bytes read per system call: large enough that the disk, not the calls, sets the pace.
pub(crate) const READ: usize = 8 << 20;

/// What checking one file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// It matches what the store vouches for: kept as it is, with what was computed.
    Keep(FileRecord),
    /// It is missing or does not match; the reason goes to the log.
    Fetch(String),
}

/// Checks every target against the file at its path under `dest`, on up to `cores` threads.
/// Each file is opened without following a symlink at any component (see `super::beneath`):
/// the folder's owner could otherwise point a checked path anywhere. The verdicts come in the
/// order of `targets`. A stop request (`cx.cancel`) ends the check
/// with [`Error::Interrupted`].
pub(crate) fn check_all(
    dest: &Path,
    targets: &[Target],
    cores: usize,
    cx: &Context,
) -> Result<Vec<Verdict>> {
    let dir = match super::beneath::open_dir(dest) {
        Ok(dir) => dir,
        Err(e) => {
            let why = format!("the folder cannot be opened as a folder: {e}");
            return Ok(vec![Verdict::Fetch(why); targets.len()]);
        }
    };
    let mut order: Vec<usize> = (0..targets.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(targets[i].size.unwrap_or(0)));
    let next = AtomicUsize::new(0);
    let verdicts: Mutex<Vec<Option<Verdict>>> = Mutex::new(vec![None; targets.len()]);
    let threads = cores.clamp(1, targets.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut buf = vec![0u8; READ];
                while let Some(&i) = order.get(next.fetch_add(1, Relaxed)) {
                    if cx.cancel.load(Relaxed) {
                        return;
                    }
                    let verdict = check(dir.as_fd(), &targets[i], &mut buf, cx);
                    verdicts.lock().expect("verdicts lock")[i] = verdict;
                }
            });
        }
    });
    let verdicts = verdicts.into_inner().expect("verdicts lock");
    if cx.cancel.load(Relaxed) || verdicts.iter().any(Option::is_none) {
        return Err(Error::Interrupted);
    }
    Ok(verdicts.into_iter().flatten().collect())
}

/// Checks one file; `None` when stopped half way.
fn check(dir: BorrowedFd<'_>, target: &Target, buf: &mut [u8], cx: &Context) -> Option<Verdict> {
    let fetch = |why: String| Some(Verdict::Fetch(why));
    let (file, size) = match open_file(dir, Path::new(&target.path)) {
        Ok(Some(opened)) => opened,
        Ok(None) => return fetch("it is not a regular file".into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return fetch("it is missing".into()),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return fetch("it or a folder on its way is a symlink".into());
        }
        Err(e) => return fetch(format!("it cannot be read: {e}")),
    };
    if let Some(listed) = target.size.filter(|&s| s != size) {
        return fetch(format!("it has {size} bytes, the store lists {listed}"));
    }
    if target.size.is_none() && target.expected.is_empty() {
        return fetch("the store gives neither a size nor a digest to check it against".into());
    }
    let digests = match hash(&file, size, &target.expected, buf, cx) {
        Ok(Some(d)) => d,
        Ok(None) => return None,
        Err(e) => return fetch(format!("it cannot be read: {e}")),
    };
    cx.progress.total_bytes.fetch_add(size, Relaxed);
    cx.progress.done_bytes.fetch_add(size, Relaxed);
    if let Some((expected, actual)) = crate::pull::first_mismatch(&target.expected, &digests) {
        return fetch(format!("expected {expected}, found {actual}"));
    }
    Some(Verdict::Keep(FileRecord {
        path: target.path.clone(),
        size,
        digests,
    }))
}

/// Opens the regular file `rel` under `dir` (see `super::beneath`) and tells its size; `None`
/// when something else is there. Non-blocking, so that a FIFO put there does not hang the open.
pub(crate) fn open_file(dir: BorrowedFd<'_>, rel: &Path) -> std::io::Result<Option<(File, u64)>> {
    let flags = OFlags::RDONLY | OFlags::NONBLOCK;
    let file = File::from(super::beneath::open(dir, rel, flags, Mode::empty())?);
    let meta = file.metadata()?;
    Ok(meta.is_file().then_some((file, meta.len())))
}

/// Whether the copy at `path` (in the staging directory, which is this process's) holds what
/// `record` says was checked: its size and every digest computed then. `None` when stopped.
pub(crate) fn copy_matches(
    path: &Path,
    record: &FileRecord,
    buf: &mut [u8],
    cx: &Context,
) -> std::io::Result<Option<bool>> {
    let file = File::open(path)?;
    if file.metadata()?.len() != record.size {
        return Ok(Some(false));
    }
    let found = hash(&file, record.size, &record.digests, buf, cx)?;
    Ok(found.map(|d| crate::pull::first_mismatch(&record.digests, &d).is_none()))
}

/// The digests `expected` names (sha256 when it names none, so the record vouches for the
/// bytes as a fetched file's does) of the first `size` bytes of `file`; `None` when stopped.
fn hash(
    file: &File,
    size: u64,
    expected: &[Digest],
    buf: &mut [u8],
    cx: &Context,
) -> std::io::Result<Option<Vec<Digest>>> {
    let mut ordered: Vec<Algorithm> = expected
        .iter()
        .map(|d| d.algorithm)
        .filter(|a| a.is_ordered())
        .collect();
    if expected.is_empty() {
        ordered.push(Algorithm::Sha256);
    }
    let mut crcs: Vec<Algorithm> = expected
        .iter()
        .map(|d| d.algorithm)
        .filter(|a| !a.is_ordered())
        .collect();
    crcs.sort();
    crcs.dedup();
    let mut hashers = OrderedHashers::new(ordered, size);
    let mut running = crc::Running::new(&crcs);
    let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::Sequential);
    let mut at = 0u64;
    while at < size {
        if cx.cancel.load(Relaxed) {
            return Ok(None);
        }
        let want = ((size - at) as usize).min(buf.len());
        let n = file.read_at(&mut buf[..want], at)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file shrank while it was read",
            ));
        }
        hashers.update(&buf[..n]);
        running.update(&buf[..n]);
        at += n as u64;
    }
    let mut digests = hashers.finish();
    digests.extend(
        crcs.iter()
            .zip(running.finish())
            .map(|(&a, v)| Digest::from_crc(a, v)),
    );
    Ok(Some(digests))
}

#[cfg(test)]
mod tests {
    use sha2::Digest as _;

    use super::*;

    fn target(path: &str, content: &[u8], expected: Vec<Digest>) -> Target {
        let mut t = Target::parse(&format!("http://127.0.0.1:9/{path}")).unwrap();
        t.path = path.into();
        t.size = Some(content.len() as u64);
        t.expected = expected;
        t
    }

    fn sha256(content: &[u8]) -> Digest {
        Digest {
            algorithm: Algorithm::Sha256,
            value: sha2::Sha256::digest(content).to_vec(),
        }
    }

    #[test]
    fn each_rule_decides_keep_or_fetch() {
        let dir = tempfile::tempdir().unwrap();
        let good = b"the weights".repeat(1000);
        let crc = Digest::from_crc(
            Algorithm::Crc32c,
            crc::checksum(Algorithm::Crc32c, b"crc file"),
        );
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/good.bin"), &good).unwrap();
        std::fs::write(dir.path().join("crc.bin"), b"crc file").unwrap();
        std::fs::write(dir.path().join("flipped.bin"), b"Xhe weights").unwrap();
        std::fs::write(dir.path().join("short.bin"), b"the").unwrap();
        std::fs::write(dir.path().join("sized.bin"), b"no digest").unwrap();
        std::os::unix::fs::symlink(dir.path().join("sub/good.bin"), dir.path().join("link.bin"))
            .unwrap();
        let mut no_size = target("unsized.bin", b"x", vec![]);
        no_size.size = None;
        std::fs::write(dir.path().join("unsized.bin"), b"x").unwrap();
        let targets = vec![
            target("sub/good.bin", &good, vec![sha256(&good)]),
            target("crc.bin", b"crc file", vec![crc.clone()]),
            target("flipped.bin", b"the weights", vec![sha256(b"the weights")]),
            target("short.bin", b"the weights", vec![sha256(b"the weights")]),
            target("missing.bin", b"x", vec![]),
            target("sized.bin", b"no digest", vec![]),
            target("link.bin", &good, vec![sha256(&good)]),
            no_size,
        ];
        let verdicts = check_all(dir.path(), &targets, 3, &Context::default()).unwrap();
        let kept: Vec<bool> = verdicts
            .iter()
            .map(|v| matches!(v, Verdict::Keep(_)))
            .collect();
        assert_eq!(
            kept,
            [true, true, false, false, false, true, false, false],
            "{verdicts:?}"
        );
        let Verdict::Keep(record) = &verdicts[0] else {
            unreachable!()
        };
        assert_eq!(record.size, good.len() as u64);
        assert_eq!(record.digests, [sha256(&good)]);
        let Verdict::Keep(record) = &verdicts[5] else {
            unreachable!()
        };
        assert_eq!(
            record.digests,
            [sha256(b"no digest")],
            "a size-only file is vouched for with its sha256"
        );
        let Verdict::Fetch(why) = &verdicts[2] else {
            unreachable!()
        };
        assert!(why.starts_with("expected sha256:"), "{why}");
        let Verdict::Fetch(why) = &verdicts[3] else {
            unreachable!()
        };
        assert_eq!(why, "it has 3 bytes, the store lists 11");
    }

    #[test]
    fn a_stop_interrupts_the_check() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"abc").unwrap();
        let cx = Context::default();
        cx.cancel.store(true, Relaxed);
        let targets = [target("a", b"abc", vec![sha256(b"abc")])];
        assert!(matches!(
            check_all(dir.path(), &targets, 2, &cx),
            Err(Error::Interrupted)
        ));
    }
}
