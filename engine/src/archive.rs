//! Unpacking a model that arrives as one archive (`.tar`, `.tar.gz`, `.tgz`, `.zip`), as
//! KServe's storage-initializer does when a pull yields exactly one such file.
//!
//! An archive is untrusted input, so every entry name goes through the same check as a store
//! listing, only regular files and directories are accepted (no symlinks, hard links or
//! devices, which could point outside the model), no path may appear twice or be both a file
//! and a directory, and the expansion is bounded so a zip bomb fails cleanly instead of
//! filling the disk. Files are created fresh (never through an existing path), with plain
//! permissions, flushed to disk, and hashed (sha256) on the way so the completion marker can
//! vouch for them.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use sha2::Digest as _;

use crate::digest::{Algorithm, Digest};
use crate::disk::staging::FileRecord;
use crate::error::{Error, Result};

/// Archive formats recognised by file name, as Python's `mimetypes` does for KServe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tar,
    TarGz,
    Zip,
}

impl Kind {
    pub fn of(path: &str) -> Option<Self> {
        let lower = path.to_ascii_lowercase();
        if lower.ends_with(".tar.gz") || lower.ends_with(".tgz") {
            Some(Kind::TarGz)
        } else if lower.ends_with(".tar") {
            Some(Kind::Tar)
        } else if lower.ends_with(".zip") {
            Some(Kind::Zip)
        } else {
            None
        }
    }
}

/// Bounds on what one archive may expand to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_entries: usize,
}

impl Limits {
    /// Generous for real models (weights barely compress) and fatal for bombs: 64 times the
    /// archive plus 1 GiB, and at most a million entries.
    pub fn for_archive(size: u64) -> Self {
        Self {
            max_bytes: size.saturating_mul(64).saturating_add(1 << 30),
            max_entries: 1_000_000,
        }
    }
}

/// Unpacks `archive` into `dir` and returns the files written, sorted by path.
pub fn unpack(archive: &Path, kind: Kind, dir: &Path, limits: Limits) -> Result<Vec<FileRecord>> {
    let name = archive
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let fail = |message: String| Error::Archive {
        file: name.clone(),
        message,
    };
    let file = File::open(archive).map_err(|e| Error::local("open", archive, e))?;
    let mut out = Unpacker {
        dir,
        limits,
        written: 0,
        seen: BTreeSet::new(),
        files: Vec::new(),
    };
    match kind {
        Kind::Tar => out.tar(tar::Archive::new(io::BufReader::new(file))),
        Kind::TarGz => out.tar(tar::Archive::new(flate2::read::MultiGzDecoder::new(
            io::BufReader::new(file),
        ))),
        Kind::Zip => out.zip(file),
    }
    .map_err(|e| match e {
        Failure::Refused(m) => fail(m),
        Failure::Io(e) => fail(e.to_string()),
        Failure::Local(e) => e,
    })?;
    out.files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out.files)
}

enum Failure {
    /// The archive is unacceptable (hostile or corrupt).
    Refused(String),
    /// Reading the archive failed.
    Io(io::Error),
    /// Writing the model failed (disk full…).
    Local(Error),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Io(e)
    }
}

struct Unpacker<'a> {
    dir: &'a Path,
    limits: Limits,
    written: u64,
    /// Paths seen, directories with a trailing `/`.
    seen: BTreeSet<String>,
    files: Vec<FileRecord>,
}

impl Unpacker<'_> {
    fn tar<R: Read>(&mut self, mut archive: tar::Archive<R>) -> Result<(), Failure> {
        for entry in archive.entries()? {
            let mut entry = entry?;
            let raw = String::from_utf8(entry.path_bytes().into_owned())
                .map_err(|_| Failure::Refused("an entry name is not UTF-8".into()))?;
            let kind = entry.header().entry_type();
            match kind {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    if let Some(path) = self.admit(&raw, false)? {
                        self.write(&path, &mut entry)?;
                    }
                }
                tar::EntryType::Directory => {
                    if let Some(path) = self.admit(&raw, true)? {
                        self.mkdir(&path)?;
                    }
                }
                // Metadata entries the tar crate folds into the next entry.
                tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink => {}
                other => {
                    return Err(Failure::Refused(format!(
                        "entry `{}` is a {}; only regular files and directories are accepted",
                        raw.escape_debug(),
                        describe(other)
                    )));
                }
            }
        }
        Ok(())
    }

    fn zip(&mut self, file: File) -> Result<(), Failure> {
        let mut archive = zip::ZipArchive::new(io::BufReader::new(file))
            .map_err(|e| Failure::Refused(format!("not a valid zip archive: {e}")))?;
        for i in 0..archive.len() {
            let mut entry = archive
                .by_index(i)
                .map_err(|e| Failure::Refused(format!("entry {i}: {e}")))?;
            let raw = entry
                .name()
                .map_err(|e| Failure::Refused(format!("entry {i} has an unusable name: {e}")))?
                .into_owned();
            if entry.encrypted() {
                return Err(Failure::Refused(format!(
                    "entry `{}` is encrypted",
                    raw.escape_debug()
                )));
            }
            if entry.is_symlink() {
                return Err(Failure::Refused(format!(
                    "entry `{}` is a symbolic link; only regular files and directories are accepted",
                    raw.escape_debug()
                )));
            }
            let file_type = entry.unix_mode().map(|m| m & 0o170000);
            if file_type.is_some_and(|t| t != 0 && t != 0o100000 && t != 0o040000) {
                return Err(Failure::Refused(format!(
                    "entry `{}` is not a regular file or directory",
                    raw.escape_debug()
                )));
            }
            if entry.is_dir() {
                if let Some(path) = self.admit(&raw, true)? {
                    self.mkdir(&path)?;
                }
            } else if let Some(path) = self.admit(&raw, false)? {
                self.write(&path, &mut entry)?;
            }
        }
        Ok(())
    }

    /// Checks an entry name; `None` for the archive's root (`./`).
    fn admit(&mut self, raw: &str, dir: bool) -> Result<Option<String>, Failure> {
        let mut name = raw;
        while let Some(rest) = name.strip_prefix("./") {
            name = rest;
        }
        let name = name.trim_end_matches('/');
        if name.is_empty() || name == "." {
            return Ok(None);
        }
        let marker = crate::disk::staging::MARKER;
        if name == marker || name.strip_prefix(marker) == Some(".tmp") {
            return Err(Failure::Refused(format!(
                "entry `{name}` is reserved for the completion marker"
            )));
        }
        crate::target::check_relative_path(name).map_err(|reason| {
            Failure::Refused(format!(
                "entry `{}` is unsafe: path {reason}",
                raw.escape_debug()
            ))
        })?;
        if self.seen.len() >= self.limits.max_entries {
            return Err(Failure::Refused(format!(
                "more than {} entries",
                self.limits.max_entries
            )));
        }
        // Every ancestor must be a directory (seen as one, or new).
        let mut prefix = String::new();
        for segment in name.split('/') {
            if !prefix.is_empty() {
                if self.seen.contains(&prefix) {
                    return Err(Failure::Refused(format!(
                        "`{prefix}` is both a file and a directory"
                    )));
                }
                prefix.push('/');
            }
            prefix.push_str(segment);
        }
        let as_dir = format!("{name}/");
        let conflict = if dir {
            self.seen.contains(name)
        } else {
            self.seen.contains(name) || self.seen.contains(&as_dir)
        };
        if conflict {
            return Err(Failure::Refused(format!(
                "entry `{}` appears twice or is both a file and a directory",
                raw.escape_debug()
            )));
        }
        if dir {
            // A directory may be listed after files inside it; that is not a conflict.
            self.seen.insert(as_dir);
        } else {
            if self
                .seen
                .range(as_dir.clone()..)
                .next()
                .is_some_and(|p| p.starts_with(&as_dir))
            {
                return Err(Failure::Refused(format!(
                    "`{name}` is both a file and a directory"
                )));
            }
            self.seen.insert(name.to_owned());
        }
        Ok(Some(name.to_owned()))
    }

    fn mkdir(&self, rel: &str) -> Result<(), Failure> {
        let path = self.dir.join(rel);
        std::fs::create_dir_all(&path)
            .map_err(|e| Failure::Local(Error::local("create directory", &path, e)))
    }

    fn write(&mut self, rel: &str, data: &mut dyn Read) -> Result<(), Failure> {
        let path = self.dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Failure::Local(Error::local("create directory", parent, e)))?;
        }
        let local = |op, e| Failure::Local(Error::local(op, &path, e));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| local("create", e))?;
        let mut hasher = sha2::Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0; 1 << 20];
        loop {
            let n = data.read(&mut buf)?;
            if n == 0 {
                break;
            }
            size += n as u64;
            self.written += n as u64;
            if self.written > self.limits.max_bytes {
                return Err(Failure::Refused(format!(
                    "it expands to more than {} bytes; refusing a possible archive bomb",
                    self.limits.max_bytes
                )));
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).map_err(|e| local("write", e))?;
        }
        file.sync_data().map_err(|e| local("flush", e))?;
        self.files.push(FileRecord {
            path: rel.to_owned(),
            size,
            digests: vec![Digest {
                algorithm: Algorithm::Sha256,
                value: hasher.finalize().to_vec(),
            }],
        });
        Ok(())
    }
}

fn describe(t: tar::EntryType) -> &'static str {
    match t {
        tar::EntryType::Symlink => "symbolic link",
        tar::EntryType::Link => "hard link",
        tar::EntryType::Char => "character device",
        tar::EntryType::Block => "block device",
        tar::EntryType::Fifo => "FIFO",
        _ => "special entry",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o4755);
            if *kind == tar::EntryType::Symlink || *kind == tar::EntryType::Link {
                h.set_link_name("/etc/passwd").unwrap();
            }
            // Bypass the builder's own path checks: hostile archives do not use it.
            let bytes = name.as_bytes();
            h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn unpack_bytes(
        kind: Kind,
        bytes: &[u8],
        limits: Limits,
    ) -> (tempfile::TempDir, Result<Vec<FileRecord>>) {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.archive");
        std::fs::write(&archive, bytes).unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let r = unpack(&archive, kind, &out, limits);
        (dir, r)
    }

    #[test]
    fn kinds_by_name() {
        assert_eq!(Kind::of("m.tar.gz"), Some(Kind::TarGz));
        assert_eq!(Kind::of("M.TGZ"), Some(Kind::TarGz));
        assert_eq!(Kind::of("m.tar"), Some(Kind::Tar));
        assert_eq!(Kind::of("m.zip"), Some(Kind::Zip));
        assert_eq!(Kind::of("m.safetensors"), None);
        assert_eq!(Kind::of("tar"), None);
    }

    #[test]
    fn unpacks_files_and_dirs() {
        let t = tar_with(&[
            ("./", tar::EntryType::Directory, b""),
            ("./model/", tar::EntryType::Directory, b""),
            ("./model/w.bin", tar::EntryType::Regular, b"weights"),
            ("config.json", tar::EntryType::Regular, b"{}"),
        ]);
        let (dir, r) = unpack_bytes(Kind::Tar, &t, Limits::for_archive(1));
        let files = r.unwrap();
        assert_eq!(
            files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
            ["config.json", "model/w.bin"]
        );
        let out = dir.path().join("out");
        assert_eq!(std::fs::read(out.join("model/w.bin")).unwrap(), b"weights");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("model/w.bin"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o644, "no setuid bits from the archive");
    }

    #[test]
    fn refuses_hostile_tar_entries() {
        for entries in [
            vec![("../evil", tar::EntryType::Regular, &b"x"[..])],
            vec![("/etc/evil", tar::EntryType::Regular, &b"x"[..])],
            vec![("a/../../evil", tar::EntryType::Regular, &b"x"[..])],
            vec![("link", tar::EntryType::Symlink, &b""[..])],
            vec![("hard", tar::EntryType::Link, &b""[..])],
            vec![("dev", tar::EntryType::Char, &b""[..])],
            vec![("fifo", tar::EntryType::Fifo, &b""[..])],
            vec![
                ("a", tar::EntryType::Regular, &b"x"[..]),
                ("a", tar::EntryType::Regular, &b"y"[..]),
            ],
            vec![
                ("a", tar::EntryType::Regular, &b"x"[..]),
                ("a/b", tar::EntryType::Regular, &b"y"[..]),
            ],
            vec![
                ("a/b", tar::EntryType::Regular, &b"x"[..]),
                ("a", tar::EntryType::Regular, &b"y"[..]),
            ],
        ] {
            let t = tar_with(&entries);
            let (dir, r) = unpack_bytes(Kind::Tar, &t, Limits::for_archive(1));
            let err = r.expect_err(&format!("{:?}", entries[0].0));
            assert!(matches!(err, Error::Archive { .. }), "{err}");
            assert!(!dir.path().join("evil").exists());
        }
    }

    #[test]
    fn bounds_expansion() {
        let big = vec![0u8; 4 << 20];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&tar_with(&[("zeros", tar::EntryType::Regular, &big)]))
            .unwrap();
        let bytes = gz.finish().unwrap();
        let limits = Limits {
            max_bytes: 1 << 20,
            max_entries: 10,
        };
        let (_dir, r) = unpack_bytes(Kind::TarGz, &bytes, limits);
        assert!(r.unwrap_err().to_string().contains("archive bomb"));
    }

    #[test]
    fn zip_archives() {
        let mut w = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default();
        w.add_directory("m/", opts).unwrap();
        w.start_file("m/a.txt", opts).unwrap();
        w.write_all(b"hello").unwrap();
        let bytes = w.finish().unwrap().into_inner();
        let (dir, r) = unpack_bytes(Kind::Zip, &bytes, Limits::for_archive(1));
        assert_eq!(r.unwrap()[0].path, "m/a.txt");
        assert_eq!(
            std::fs::read(dir.path().join("out/m/a.txt")).unwrap(),
            b"hello"
        );

        let mut w = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        w.start_file("../escape.txt", opts).unwrap();
        w.write_all(b"x").unwrap();
        let bytes = w.finish().unwrap().into_inner();
        assert!(
            unpack_bytes(Kind::Zip, &bytes, Limits::for_archive(1))
                .1
                .is_err()
        );

        let mut w = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        w.add_symlink("link", "/etc/passwd", opts).unwrap();
        let bytes = w.finish().unwrap().into_inner();
        let err = unpack_bytes(Kind::Zip, &bytes, Limits::for_archive(1))
            .1
            .unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");

        assert!(
            unpack_bytes(Kind::Zip, b"not a zip", Limits::for_archive(1))
                .1
                .is_err()
        );
    }
}
