//! Live progress of a pull, shared between the engine cores and whoever displays it.
//!
//! Counters are atomics, read at any time without stopping the engine. The files in flight
//! (those with a request out right now) are a short list behind a mutex: a display names
//! them, which counters cannot. The list has one entry per file with requests out, so it never
//! grows past the pull's connections, however many files the model has.

use std::sync::Mutex;
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
    /// Files with requests out, in the order their first one left, with how many are out.
    in_flight: Mutex<Vec<(String, u32)>>,
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

    /// The paths of the files being downloaded right now (a request for them is out), oldest
    /// first; at most one per connection of the pull.
    pub fn in_flight(&self) -> Vec<String> {
        self.files().iter().map(|(path, _)| path.clone()).collect()
    }

    /// A request for `path` left.
    pub(crate) fn request_started(&self, path: &str) {
        let mut files = self.files();
        match files.iter_mut().find(|(p, _)| p == path) {
            Some((_, requests)) => *requests += 1,
            None => files.push((path.to_owned(), 1)),
        }
    }

    /// A request for `path` ended, whatever its outcome; the file leaves the list with its
    /// last request.
    pub(crate) fn request_ended(&self, path: &str) {
        let mut files = self.files();
        if let Some(i) = files.iter().position(|(p, _)| p == path) {
            files[i].1 -= 1;
            if files[i].1 == 0 {
                files.remove(i);
            }
        }
    }

    fn files(&self) -> std::sync::MutexGuard<'_, Vec<(String, u32)>> {
        // The list is only ever left consistent, so a panic elsewhere does not spoil it.
        self.in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_stay_in_flight_until_their_last_request_ends() {
        let p = Progress::default();
        assert!(p.in_flight().is_empty());
        p.request_started("a.safetensors");
        p.request_started("b.json");
        p.request_started("a.safetensors");
        assert_eq!(p.in_flight(), ["a.safetensors", "b.json"]);
        p.request_ended("a.safetensors");
        assert_eq!(
            p.in_flight(),
            ["a.safetensors", "b.json"],
            "a has a request out still"
        );
        p.request_ended("b.json");
        p.request_ended("a.safetensors");
        assert!(p.in_flight().is_empty());
        p.request_ended("never-started");
        assert!(p.in_flight().is_empty());
    }
}
