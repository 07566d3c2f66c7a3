//! Opening what lies under a folder another user controls without following a symlink at any
//! component: a file the folder's owner swaps for a symlink (to a service-account token, to
//! another model) between a check and a later open must fail to open, not be read through.
//!
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` from a descriptor of the folder does that
//! in one call; on a kernel without it (before 5.6, `ENOSYS`) the path is walked one folder at
//! a time with `O_NOFOLLOW | O_DIRECTORY`, which refuses the same symlinks.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Flags every folder on the way is opened with.
const DIR: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Opens the folder `dir` itself, refusing a symlink in its place.
pub(crate) fn open_dir(dir: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(dir, DIR, Mode::empty())?)
}

/// Opens `rel` under the folder `dir` with `flags` (and `mode` when it creates), refusing a
/// symlink at any component and any path that leaves `dir`.
pub(crate) fn open(
    dir: BorrowedFd<'_>,
    rel: &Path,
    flags: OFlags,
    mode: Mode,
) -> io::Result<OwnedFd> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS;
    match rustix::fs::openat2(dir, rel, flags, mode, how) {
        Err(Errno::NOSYS) => walk(dir, rel, flags, mode),
        opened => Ok(opened?),
    }
}

/// Opens the folder `rel` under `dir` as [`open`] does.
pub(crate) fn open_subdir(dir: BorrowedFd<'_>, rel: &Path) -> io::Result<OwnedFd> {
    if rel.as_os_str().is_empty() {
        return Ok(rustix::io::dup(dir)?);
    }
    open(dir, rel, DIR, Mode::empty())
}

/// Opens the folder `rel` under `dir`, creating (mode 0755, each flushed into its parent) the
/// folders of it that are missing, one at a time and refusing a symlink at each as [`open`] does.
pub(crate) fn make_subdir(dir: BorrowedFd<'_>, rel: &Path) -> io::Result<OwnedFd> {
    let mut at = rustix::io::dup(dir)?;
    for c in rel.components() {
        let Component::Normal(name) = c else {
            return Err(Errno::XDEV.into());
        };
        let next = match open(at.as_fd(), Path::new(name), DIR, Mode::empty()) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match rustix::fs::mkdirat(&at, name, Mode::from_raw_mode(0o755)) {
                    // The new entry is durable once the folder holding it is flushed.
                    Ok(()) => rustix::fs::fsync(&at)?,
                    Err(Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                open(at.as_fd(), Path::new(name), DIR, Mode::empty())?
            }
            opened => opened?,
        };
        at = next;
    }
    Ok(at)
}

/// [`open`] without `openat2`: each folder on the way opened from the one before it.
fn walk(dir: BorrowedFd<'_>, rel: &Path, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
    let mut names = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(name) => names.push(name),
            Component::CurDir => {}
            // What RESOLVE_BENEATH answers for a path that leaves the folder.
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(Errno::XDEV.into());
            }
        }
    }
    let Some((last, folders)) = names.split_last() else {
        return Err(Errno::INVAL.into());
    };
    let mut at: Option<OwnedFd> = None;
    for name in folders {
        let from = at.as_ref().map_or(dir, AsFd::as_fd);
        at = Some(rustix::fs::openat(from, *name, DIR, Mode::empty())?);
    }
    let from = at.as_ref().map_or(dir, AsFd::as_fd);
    Ok(rustix::fs::openat(from, *last, flags, mode)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("m");
        std::fs::create_dir_all(dest.join("sub")).unwrap();
        std::fs::write(dest.join("sub/f"), b"inside").unwrap();
        std::fs::create_dir(root.path().join("out")).unwrap();
        std::fs::write(root.path().join("out/f"), b"secret").unwrap();
        std::fs::write(root.path().join("secret"), b"secret").unwrap();
        std::os::unix::fs::symlink(root.path().join("out"), dest.join("linked")).unwrap();
        std::os::unix::fs::symlink(root.path().join("secret"), dest.join("token")).unwrap();
        root
    }

    fn read(fd: OwnedFd) -> Vec<u8> {
        std::io::read_to_string(std::fs::File::from(fd))
            .unwrap()
            .into_bytes()
    }

    #[test]
    fn no_symlink_is_followed_at_any_component() {
        let root = tree();
        let dest = open_dir(&root.path().join("m")).unwrap();
        type Opener = fn(BorrowedFd<'_>, &Path, OFlags, Mode) -> io::Result<OwnedFd>;
        for (name, opener) in [("openat2", open as Opener), ("walk", walk as Opener)] {
            let ro = |rel: &str| {
                opener(
                    dest.as_fd(),
                    Path::new(rel),
                    OFlags::RDONLY | OFlags::NOFOLLOW,
                    Mode::empty(),
                )
            };
            assert_eq!(read(ro("sub/f").unwrap()), b"inside", "{name}");
            assert!(ro("token").is_err(), "{name}: a symlinked file");
            assert!(ro("linked/f").is_err(), "{name}: a symlinked folder");
            assert!(ro("../secret").is_err(), "{name}: a path out of the folder");
        }
        std::os::unix::fs::symlink(root.path().join("out"), root.path().join("alias")).unwrap();
        assert!(
            open_dir(&root.path().join("alias")).is_err(),
            "the folder itself a symlink"
        );
    }
}
