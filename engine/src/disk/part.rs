//! A file being written: `NAME.part`, allocated up front, written at positions from aligned
//! buffers, made durable and renamed when verified.
//!
//! With O_DIRECT, offsets and lengths must be multiples of the block size. Chunks start at
//! multiples of the chunk size; the last one is padded with zeros to the next boundary and the
//! file is truncated to its real size before it is published, so the padding never shows.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use monoio::buf::IoBufMut;

use crate::buf::AlignedBuf;

/// Appended to a file's name while it is written and until it is verified (its journal's
/// beside it ends in [`super::journal::SUFFIX`]).
pub const SUFFIX: &str = ".part";

/// Creates (or reopens, when resuming) a part file and allocates `size` bytes.
/// Returns whether the filesystem accepts O_DIRECT.
pub fn create(path: &Path, size: Option<u64>) -> io::Result<bool> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    if let Some(size) = size.filter(|&s| s > 0) {
        match rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, size) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => {
                if file.metadata()?.len() < size {
                    file.set_len(size)?;
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    drop(file);
    match open_std(path, true) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(e) => Err(e),
    }
}

fn open_std(path: &Path, direct: bool) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(true).write(true);
    if direct {
        opts.custom_flags(libc::O_DIRECT);
    }
    opts.open(path)
}

/// Opens a part file for this core's runtime.
pub fn open(path: &Path, direct: bool) -> io::Result<monoio::fs::File> {
    monoio::fs::File::from_std(open_std(path, direct)?)
}

/// Writes `buf` (one chunk) at `offset`. With `direct`, the tail is padded to the alignment.
pub async fn write_chunk(
    file: &monoio::fs::File,
    mut buf: AlignedBuf,
    offset: u64,
    direct: bool,
) -> (io::Result<()>, AlignedBuf) {
    let len = buf.len();
    if direct {
        let padded = buf.pad_to_alignment();
        buf.set_len(padded);
    }
    let (res, mut buf) = file.write_all_at(buf, offset).await;
    buf.set_len(len);
    (res, buf)
}

/// Reads `len` bytes at `offset` into `buf` (replacing its content).
pub async fn read_chunk(
    file: &monoio::fs::File,
    mut buf: AlignedBuf,
    offset: u64,
    len: usize,
    direct: bool,
) -> (io::Result<()>, AlignedBuf) {
    buf.set_len(0);
    let want = if direct {
        crate::buf::align_up(len).min(buf.capacity())
    } else {
        len
    };
    let mut filled = 0;
    while filled < len {
        let (res, slice) = file
            .read_at(buf.slice_mut(filled..want), offset + filled as u64)
            .await;
        buf = slice.into_inner();
        match res {
            Ok(0) => {
                return (
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "part file shorter than recorded",
                    )),
                    buf,
                );
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (Err(e), buf),
        }
    }
    buf.set_len(len);
    (Ok(()), buf)
}

/// Truncates the part to its real size, flushes it to stable storage and renames it.
pub fn publish(part: &Path, dest: &Path, size: u64) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(part)?;
    file.set_len(size)?;
    file.sync_data()?;
    drop(file);
    std::fs::rename(part, dest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{Driver, block_on};

    fn roundtrip(driver: Driver, dir: &Path) {
        let path = dir.join(format!("x-{}.part", driver.name()));
        let size = 4096 * 3 + 100;
        let direct = create(&path, Some(size)).unwrap();
        block_on(driver, async {
            let f = open(&path, direct).unwrap();
            let mut buf = AlignedBuf::new(8192);
            for (offset, len, byte) in [(8192u64, 4096 + 100, 3u8), (0, 8192, 1)] {
                buf.full_mut()[..len].fill(byte);
                buf.set_len(len);
                let (res, b) = write_chunk(&f, buf, offset, direct).await;
                res.unwrap();
                assert_eq!(b.len(), len);
                buf = b;
            }
            let (res, b) = read_chunk(&f, buf, 8192, 4196, direct).await;
            res.unwrap();
            assert!(b.as_slice().iter().all(|&x| x == 3));
        })
        .unwrap();
        let dest = dir.join(format!("x-{}", driver.name()));
        publish(&path, &dest, size).unwrap();
        let data = std::fs::read(&dest).unwrap();
        assert_eq!(data.len() as u64, size);
        assert!(data[..8192].iter().all(|&x| x == 1));
        assert!(data[8192..].iter().all(|&x| x == 3));
    }

    #[test]
    fn writes_on_both_drivers_on_disk_and_tmpfs() {
        let disk = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
        let shm = tempfile::tempdir_in("/dev/shm").ok();
        for driver in crate::runtime::test_drivers() {
            roundtrip(driver, disk.path());
            if let Some(shm) = &shm {
                roundtrip(driver, shm.path());
            }
        }
    }
}
