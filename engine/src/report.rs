//! The summary of a pull, printed as JSON with `--json` and used by the agent.

use std::path::PathBuf;

use serde::Serialize;

use crate::digest::{Algorithm, Digest};
use crate::runtime::Driver;

/// One published file.
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    /// Where the file landed, relative to the destination.
    pub path: String,
    /// Its size in bytes.
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
    /// The archive's path, relative to the destination.
    pub archive: String,
    /// Regular files unpacked from it.
    pub files: usize,
    /// Bytes unpacked from it.
    pub bytes: u64,
}

/// How a pull that adopts its destination (`PullRequest::adopt`) completed the folder there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Repair {
    /// Every file matched: nothing was fetched or moved.
    None,
    /// The files that did not match were fetched and renamed over them one by one.
    InPlace,
    /// The folder could not be written to: a verified copy (the matching files copied, the
    /// others fetched) was exchanged with it in one atomic rename.
    Exchanged,
}

/// What a pull that adopts its destination found there and did.
#[derive(Debug, Clone, Serialize)]
pub struct Adoption {
    /// Files that matched their digests where they lay, kept untouched.
    pub adopted_files: usize,
    /// Their bytes.
    pub adopted_bytes: u64,
    /// Files that were missing or did not match, fetched.
    pub fetched_files: usize,
    /// Their bytes.
    pub fetched_bytes: u64,
    /// How the folder was completed.
    pub repair: Repair,
    /// Where the previous folder went after an exchange: it is the caller's to remove once
    /// nothing reads it any more (a pod that mounted it keeps it open).
    pub replaced: Option<PathBuf>,
    /// Where the completion marker was written: inside the folder, or, when the folder cannot
    /// be written to, in `.modelpull/markers/` beside it.
    pub marker: PathBuf,
    /// Seconds spent reading and hashing the files in place.
    pub verify_seconds: f64,
}

/// The connections and bytes one host gave a pull.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostConnections {
    /// The source's host name (`host:port` when the URL has a port).
    pub host: String,
    /// A mirror's host, not an origin's.
    pub mirror: bool,
    /// A mirror dropped during the pull (it sent wrong bytes or failed too often).
    pub dropped: bool,
    /// Body bytes received from it, including bytes of chunks later refused.
    pub bytes: u64,
    /// Connections it had when the pull ended: where the tuner settled, or the fixed count.
    pub settled: usize,
    /// The most it had at once.
    pub peak: usize,
}

/// The outcome of a successful pull.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The published model directory.
    pub destination: PathBuf,
    /// The destination already held exactly this model; nothing was fetched.
    pub up_to_date: bool,
    /// The I/O driver used; `None` when nothing was fetched.
    pub driver: Option<Driver>,
    /// Why io_uring was not used, when `auto` fell back to epoll.
    pub driver_note: Option<String>,
    /// Engine cores used.
    pub cores: usize,
    /// Connections each host got: where its tuner settled and the most it had (none when
    /// nothing was fetched).
    pub connections: Vec<HostConnections>,
    /// Every published file.
    pub files: Vec<FileReport>,
    /// The archive unpacked in place, when the pull was one.
    pub unpacked: Option<Unpacked>,
    /// Bytes of every file.
    pub total_bytes: u64,
    /// Bytes received in this run.
    pub downloaded_bytes: u64,
    /// Bytes kept from an interrupted earlier run.
    pub resumed_bytes: u64,
    /// Wall-clock seconds, publish included.
    pub seconds: f64,
    /// Downloaded bytes per second, in GB/s (10⁹), over the whole pull including publish.
    pub gigabytes_per_second: f64,
    /// Requests retried.
    pub retries: u64,
    /// Memory held in chunk buffers at the high-water mark: the pull's, or, when it shared
    /// its buffers with other pulls (`Options::shared_buffers`), the pool's since it was made.
    pub peak_buffer_bytes: u64,
    /// What adopting the destination found and did, when the pull adopted one.
    pub adoption: Option<Adoption>,
}
