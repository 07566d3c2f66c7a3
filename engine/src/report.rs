//! The summary of a pull, printed as JSON with `--json` and used by the agent.

use std::path::PathBuf;

use serde::Serialize;

use crate::digest::{Algorithm, Digest};
use crate::runtime::Driver;

/// One published file.
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    pub path: String,
    pub size: u64,
    /// Digests computed while the file was written.
    pub digests: Vec<Digest>,
    /// Algorithms whose expected value (from the caller or the store) the file matched.
    pub verified: Vec<Algorithm>,
    /// Bytes kept from an interrupted earlier run.
    pub resumed_bytes: u64,
    /// What the file was verified against, in the store's words (`lfs.oid`,
    /// `x-amz-checksum-crc64nvme`, `size only`…).
    pub checksum: String,
}

/// A single downloaded archive that was unpacked in place (and removed).
#[derive(Debug, Clone, Serialize)]
pub struct Unpacked {
    pub archive: String,
    pub files: usize,
    pub bytes: u64,
}

/// The outcome of a successful pull.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub destination: PathBuf,
    /// The destination already held exactly this model; nothing was fetched.
    pub up_to_date: bool,
    pub driver: Option<Driver>,
    /// Why io_uring was not used, when `auto` fell back to epoll.
    pub driver_note: Option<String>,
    pub cores: usize,
    pub connections: usize,
    pub files: Vec<FileReport>,
    pub unpacked: Option<Unpacked>,
    pub total_bytes: u64,
    pub downloaded_bytes: u64,
    pub resumed_bytes: u64,
    pub seconds: f64,
    /// Downloaded bytes per second, in GB/s (10⁹), over the whole pull including publish.
    pub gigabytes_per_second: f64,
    pub retries: u64,
    /// Memory held in chunk buffers at the high-water mark.
    pub peak_buffer_bytes: u64,
}
