//! Live progress of a pull, shared between the engine cores and whoever displays it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters updated by the engine; read at any time from any thread.
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes of every file whose size is known so far.
    pub total_bytes: AtomicU64,
    /// Bytes on disk and accounted for, including those kept from an earlier run.
    pub done_bytes: AtomicU64,
    /// Bytes received in this run.
    pub downloaded_bytes: AtomicU64,
    /// Files in the pull.
    pub files_total: AtomicU64,
    /// Files verified so far.
    pub files_done: AtomicU64,
    /// Requests retried so far.
    pub retries: AtomicU64,
}

/// A consistent-enough copy of the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// See [`Progress::total_bytes`].
    pub total_bytes: u64,
    /// See [`Progress::done_bytes`].
    pub done_bytes: u64,
    /// See [`Progress::downloaded_bytes`].
    pub downloaded_bytes: u64,
    /// See [`Progress::files_total`].
    pub files_total: u64,
    /// See [`Progress::files_done`].
    pub files_done: u64,
    /// See [`Progress::retries`].
    pub retries: u64,
}

impl Progress {
    /// Reads every counter once.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            total_bytes: self.total_bytes.load(Relaxed),
            done_bytes: self.done_bytes.load(Relaxed),
            downloaded_bytes: self.downloaded_bytes.load(Relaxed),
            files_total: self.files_total.load(Relaxed),
            files_done: self.files_done.load(Relaxed),
            retries: self.retries.load(Relaxed),
        }
    }
}
