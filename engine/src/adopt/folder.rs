//! The folder operations a repair is made of, each atomic where a reader could see it: a
//! fetched file renamed over the one it replaces, a file cloned (or copied) into a new folder,
//! and two folders exchanged in one `renameat2(RENAME_EXCHANGE)`, so the model's path never
//! names a missing or half-built folder.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Component;

use rustix::fs::{Access, AtFlags, CWD, FileType, RenameFlags};
use rustix::io::Errno;

use super::beneath;

/// Whether this process may create, rename and remove entries in `dir`.
pub(crate) fn writable(dir: &Path) -> bool {
    rustix::fs::access(dir, Access::WRITE_OK | Access::EXEC_OK).is_ok()
}

/// Whether each of `paths` (relative to `dest`) can be replaced in place by a rename: the
/// deepest folder that already exists on its way is writable, no symlink is on the way (a
/// rename through one would write outside the folder) and nothing but a file is where the
/// file goes.
pub(crate) fn can_swap<'a>(dest: &Path, paths: impl IntoIterator<Item = &'a str>) -> bool {
    let Ok(root) = beneath::open_dir(dest) else {
        return false;
    };
    paths
        .into_iter()
        .all(|rel| swappable(root.as_fd(), Path::new(rel)))
}

/// [`can_swap`] for one path under the folder open as `root`.
fn swappable(root: BorrowedFd<'_>, rel: &Path) -> bool {
    let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
        return false;
    };
    let mut at = match rustix::io::dup(root) {
        Ok(fd) => fd,
        Err(_) => return false,
    };
    for c in parent.components() {
        let Component::Normal(dir) = c else {
            return false;
        };
        match beneath::open_subdir(at.as_fd(), Path::new(dir)) {
            Ok(next) => at = next,
            // The folders from here on are created by the repair, in this one.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return writable_fd(at.as_fd()),
            Err(_) => return false,
        }
    }
    match rustix::fs::statat(&at, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => false,
        Ok(_) | Err(Errno::NOENT) => writable_fd(at.as_fd()),
        Err(_) => false,
    }
}

/// Whether this process may create, rename and remove entries in the open folder `dir`.
fn writable_fd(dir: BorrowedFd<'_>) -> bool {
    rustix::fs::accessat(
        dir,
        ".",
        Access::WRITE_OK | Access::EXEC_OK,
        AtFlags::empty(),
    )
    .is_ok()
}

/// Renames `from` (in the staging directory) to `rel` under the folder `dest`, creating the
/// folders on its way, and flushes the folder renamed into: a reader of the file sees the old
/// file or the new one, never neither. The folder is resolved without following a symlink at
/// any component, so a symlinked folder the folder's owner planted is refused, not written
/// through.
pub(crate) fn swap_in(dest: &Path, from: &Path, rel: &Path) -> io::Result<()> {
    let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
        return Err(Errno::INVAL.into());
    };
    let root = beneath::open_dir(dest)?;
    let dir = beneath::make_subdir(root.as_fd(), parent)?;
    rustix::fs::renameat(CWD, from, &dir, name)?;
    rustix::fs::fsync(&dir)?;
    Ok(())
}

/// Puts a copy of `src` (an open file) at `dst` in the staging directory, replacing what is
/// there, and flushes it: a reflink where the filesystem shares blocks (Btrfs, XFS), else the
/// kernel's own copy (`copy_file_range`), else a plain one. Only the descriptor is read, never
/// a path another user could point elsewhere in the meantime.
pub(crate) fn clone_file(src: &File, dst: &Path) -> io::Result<()> {
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::remove_file(dst) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut to = File::options().write(true).create_new(true).open(dst)?;
    if rustix::fs::ioctl_ficlone(&to, src).is_err() {
        copy_fd(src, &mut to)?;
    }
    to.sync_data()
}

/// Copies all of `src` into the empty `to`, in the kernel where it can.
fn copy_fd(src: &File, to: &mut File) -> io::Result<()> {
    let size = src.metadata()?.len();
    let (mut from_at, mut to_at) = (0u64, 0u64);
    while from_at < size {
        let want = usize::try_from(size - from_at)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        match rustix::fs::copy_file_range(src, Some(&mut from_at), &*to, Some(&mut to_at), want) {
            Ok(0) => break,
            Ok(_) => {}
            Err(Errno::XDEV | Errno::NOSYS | Errno::INVAL | Errno::OPNOTSUPP) if from_at == 0 => {
                let mut reader = src;
                io::copy(&mut reader, to)?;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Exchanges the folders (or files) at `a` and `b` in one atomic step; both must exist.
pub(crate) fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        a,
        rustix::fs::CWD,
        b,
        RenameFlags::EXCHANGE,
    )
    .map_err(io::Error::from)
}

/// Where a folder replaced by an exchange goes: `.NAME.modelpull-old-SECONDS` beside `dest`,
/// a name that tells whoever collects leftovers what it is and since when.
pub(crate) fn aside_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut path = dest.with_file_name(format!(".{name}.modelpull-old-{stamp}"));
    let mut n = 1;
    while std::fs::symlink_metadata(&path).is_ok() {
        path = dest.with_file_name(format!(".{name}.modelpull-old-{stamp}-{n}"));
        n += 1;
    }
    path
}

/// Removes from `dir` every file and folder that is none of `keep` (relative paths) or a
/// folder on their way: what an earlier, different pull left in a staging directory must not
/// become part of the model.
pub(crate) fn prune(dir: &Path, keep: &std::collections::HashSet<PathBuf>) -> io::Result<()> {
    prune_under(dir, Path::new(""), keep)
}

fn prune_under(
    root: &Path,
    rel: &Path,
    keep: &std::collections::HashSet<PathBuf>,
) -> io::Result<()> {
    for entry in std::fs::read_dir(root.join(rel))? {
        let entry = entry?;
        let path = rel.join(entry.file_name());
        let is_dir = entry.file_type()?.is_dir();
        let on_the_way = is_dir && keep.iter().any(|k| k.starts_with(&path) && *k != path);
        if keep.contains(&path) && !is_dir {
            continue;
        }
        if on_the_way {
            prune_under(root, &path, keep)?;
        } else if is_dir {
            std::fs::remove_dir_all(root.join(&path))?;
        } else {
            std::fs::remove_file(root.join(&path))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn an_exchange_swaps_two_folders_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        std::fs::write(a.join("old"), b"1").unwrap();
        std::fs::write(b.join("new"), b"2").unwrap();
        let ino = std::fs::metadata(&b).unwrap().ino();
        exchange(&b, &a).unwrap();
        assert!(a.join("new").exists() && b.join("old").exists());
        assert_eq!(std::fs::metadata(&a).unwrap().ino(), ino);
        assert!(exchange(&a, &dir.path().join("absent")).is_err());
    }

    #[test]
    fn a_clone_is_a_flushed_copy() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("src"), b"bytes").unwrap();
        let dst = dir.path().join("deep/er/dst");
        let src = File::open(dir.path().join("src")).unwrap();
        clone_file(&src, &dst).unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), b"bytes");
        let mut by_copy = File::create(dir.path().join("copied")).unwrap();
        copy_fd(&src, &mut by_copy).unwrap();
        assert_eq!(std::fs::read(dir.path().join("copied")).unwrap(), b"bytes");
        assert_eq!(std::fs::read(&dst).unwrap(), b"bytes");
        std::fs::write(dir.path().join("src"), b"other").unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), b"bytes", "a copy, not a link");
    }

    #[test]
    fn swaps_need_a_writable_folder_and_a_file_in_the_way_at_most() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("m");
        std::fs::create_dir_all(dest.join("dir.bin")).unwrap();
        std::fs::write(dest.join("f.bin"), b"x").unwrap();
        assert!(can_swap(&dest, ["f.bin", "new/deep.bin"]));
        assert!(
            !can_swap(&dest, ["dir.bin"]),
            "a folder where the file goes"
        );
        assert!(!can_swap(&dest, ["f.bin/x"]), "a file on the way");
        assert!(!can_swap(&dir.path().join("absent"), ["f.bin"]));
        swap_in(&dest, &dest.join("f.bin"), Path::new("new/deep.bin")).unwrap();
        assert!(dest.join("new/deep.bin").exists() && !dest.join("f.bin").exists());
    }

    #[test]
    fn no_swap_goes_through_a_symlinked_folder() {
        let dir = tempfile::tempdir().unwrap();
        let (dest, target) = (dir.path().join("m"), dir.path().join("T"));
        std::fs::create_dir_all(dest.join("real")).unwrap();
        std::fs::create_dir_all(target.join("b")).unwrap();
        std::fs::write(target.join("b/f"), b"theirs").unwrap();
        std::os::unix::fs::symlink(&target, dest.join("a")).unwrap();
        assert!(can_swap(&dest, ["real/f"]));
        assert!(!can_swap(&dest, ["a/b/f"]), "a symlinked folder on the way");
        assert!(
            !can_swap(&dest, ["a/new/f"]),
            "a symlinked folder before a missing one"
        );
        let from = dir.path().join("fetched");
        std::fs::write(&from, b"ours").unwrap();
        assert!(swap_in(&dest, &from, Path::new("a/b/f")).is_err());
        assert_eq!(std::fs::read(target.join("b/f")).unwrap(), b"theirs");
        assert!(from.exists(), "nothing was renamed");
        swap_in(&dest, &from, Path::new("real/f")).unwrap();
        assert_eq!(std::fs::read(dest.join("real/f")).unwrap(), b"ours");
    }

    #[test]
    fn an_aside_name_is_new_and_says_what_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("0123456789abcdef");
        let first = aside_path(&dest);
        let name = first.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with(".0123456789abcdef.modelpull-old-"),
            "{name}"
        );
        std::fs::create_dir(&first).unwrap();
        assert_ne!(aside_path(&dest), first);
    }

    #[test]
    fn pruning_keeps_only_the_model() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["a", "sub/b", "sub/junk", "other/c", "old.part"] {
            let p = dir.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
        let keep: HashSet<PathBuf> = ["a", "sub/b"].into_iter().map(PathBuf::from).collect();
        prune(dir.path(), &keep).unwrap();
        let mut left: Vec<String> = walk(dir.path());
        left.sort();
        assert_eq!(left, ["a", "sub/b"]);
    }

    fn walk(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type().unwrap().is_dir() {
                out.extend(walk(&e.path()).into_iter().map(|s| format!("{name}/{s}")));
            } else {
                out.push(name);
            }
        }
        out
    }
}
