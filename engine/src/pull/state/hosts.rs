//! Connections per host: how many each host has, how many it may have, and what it said.
//!
//! Every claim counts against its file's source host until the worker releases it. How many
//! a host may have is its tuner's to say (see `pull::tune`): the scheduler feeds the tuners
//! the bytes each host sent and tells them when a claim waited for a connection; the workers
//! tell them when a host answered that it is overloaded.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::{FileMeta, Job, JobState, Phase};
use crate::http::HttpError;
use crate::pull::tune::Tuner;
use crate::report::HostConnections;

/// One host's connections.
#[derive(Debug)]
pub(crate) struct HostState {
    name: String,
    /// Claims open on the host.
    active: usize,
    /// Of those, requests receiving a body.
    streaming: usize,
    /// Claims numbered up to this one were opened before the host's last cut.
    cut_at: u64,
    tuner: Tuner,
}

/// The hosts of `metas`, in order of first appearance, each with a copy of `tuner`, and each
/// file's host index.
pub(super) fn index(metas: &[FileMeta], tuner: &Tuner) -> (Vec<usize>, Vec<HostState>) {
    let mut hosts: Vec<HostState> = Vec::new();
    let host_of = metas
        .iter()
        .map(|m| {
            // Two origins on one machine are two hosts to tune.
            let name = match m.target.url.port() {
                Some(port) => format!("{}:{port}", m.host),
                None => m.host.clone(),
            };
            match hosts.iter().position(|h| h.name == name) {
                Some(i) => i,
                None => {
                    hosts.push(HostState {
                        tuner: tuner.clone(),
                        name,
                        active: 0,
                        streaming: 0,
                        cut_at: 0,
                    });
                    hosts.len() - 1
                }
            }
        })
        .collect();
    (host_of, hosts)
}

/// What a failed request said about its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overload {
    /// Nothing: an ordinary failure.
    No,
    /// The host is overloaded and the request was one too many: retried without spending an
    /// attempt, after a longer pause.
    Spared,
    /// The host is overloaded: retried as any failure, logged only at debug (the cut is
    /// logged once).
    Counted,
}

/// Whether a failed request says its host has more connections than it will serve: 429, 503
/// (S3's `SlowDown` is a 503) or a refused connection.
fn overload(err: &HttpError) -> bool {
    match err {
        HttpError::Status { status, .. } => matches!(status, 429 | 503),
        HttpError::Connect { source, .. } => {
            source.kind() == std::io::ErrorKind::ConnectionRefused
        }
        _ => false,
    }
}

impl Job {
    /// The index of `file`'s host.
    pub fn host_of(&self, file: usize) -> usize {
        self.host_of[file]
    }

    /// Lets each host's tuner close its epoch (called by the scheduler with the lock held).
    pub(super) fn tune(&self, st: &mut JobState, now: Instant) {
        for (h, bytes) in st.hosts.iter_mut().zip(&self.host_bytes) {
            h.tuner.tick(now, bytes.load(Relaxed));
        }
    }

    /// Whether the host of `file` has all the connections it may have, or the pull all it
    /// may have over every host.
    pub(super) fn host_full(&self, st: &JobState, file: usize) -> bool {
        let h = &st.hosts[self.host_of[file]];
        h.active >= h.tuner.limit() || self.connections_open(st) >= self.connection_cap
    }

    /// A claim for `file` was ready but its host was full: when the host's own limit (not
    /// the pull's cap) stopped it, its tuner is told, which is what lets it judge a larger one.
    pub(super) fn held_back(&self, st: &mut JobState, file: usize) {
        let h = &mut st.hosts[self.host_of[file]];
        if h.active >= h.tuner.limit() {
            h.tuner.held_back();
        }
    }

    /// Claims open over every host.
    pub(super) fn connections_open(&self, st: &JobState) -> usize {
        st.hosts.iter().map(|h| h.active).sum()
    }

    /// Connections every host with files still to fetch may have, within the cap.
    pub(super) fn connections_allowed(&self, st: &JobState) -> usize {
        let has_work = |host: usize| {
            st.files
                .iter()
                .zip(&self.host_of)
                .any(|(fs, &h)| h == host && fs.phase != Phase::Done)
        };
        let limits: usize = st
            .hosts
            .iter()
            .enumerate()
            .filter(|&(i, _)| has_work(i))
            .map(|(_, h)| h.tuner.limit())
            .sum();
        limits.min(self.connection_cap)
    }

    /// Workers the cores should run: one per connection every host may have, within the cap,
    /// and one more, which finds a host full when work waits for it: that is how a tuner learns
    /// its limit holds work back.
    pub fn connection_target(&self) -> usize {
        self.connections_allowed(&self.lock()) + 1
    }

    /// Numbers a new claim on `file` and counts it against the file's host, and the file as
    /// in flight for the progress display, until [`Job::release_host`].
    pub(super) fn open_claim(&self, st: &mut JobState, file: usize) -> u64 {
        st.next_id += 1;
        st.hosts[self.host_of[file]].active += 1;
        self.progress
            .request_started(&self.metas[file].target.path);
        st.next_id
    }

    /// A claim's response has come and its body is being received.
    pub fn streaming(&self, file: usize) {
        self.lock().hosts[self.host_of[file]].streaming += 1;
    }

    /// Called when a worker is done with a claim, whatever the outcome; `streamed` says
    /// whether [`Job::streaming`] was called for it.
    pub fn release_host(&self, file: usize, streamed: bool) {
        let mut st = self.lock();
        let h = &mut st.hosts[self.host_of[file]];
        h.active = h.active.saturating_sub(1);
        if streamed {
            h.streaming = h.streaming.saturating_sub(1);
        }
        drop(st);
        self.progress.request_ended(&self.metas[file].target.path);
    }

    /// A released request (claim `id` on `file`) failed with `err`: when it says the host is
    /// overloaded, the host gets fewer connections, and the request is spared the attempt if
    /// it was opened before the cut.
    pub fn overloaded(&self, file: usize, id: u64, err: &HttpError) -> Overload {
        if !overload(err) {
            return Overload::No;
        }
        let mut st = self.lock();
        let next_id = st.next_id;
        let host = self.host_of[file];
        let bytes = self.host_bytes[host].load(Relaxed);
        let h = &mut st.hosts[host];
        if let Some(limit) = h.tuner.overloaded(Instant::now(), h.streaming, bytes) {
            h.cut_at = next_id;
            tracing::info!(
                host = %h.name,
                connections = limit,
                error = %err,
                "the server is overloaded: fewer connections to it"
            );
            self.metrics.overloads.inc();
        }
        // Opened before the last cut (this one's, or an epoch's before): the server refused a
        // request the cut has since taken back. While others stream, that is the server pacing
        // the pull, not the range failing. A request opened after the cut counts, so one
        // object refused for good still runs out of attempts.
        if h.streaming > 0 && id <= h.cut_at {
            Overload::Spared
        } else {
            Overload::Counted
        }
    }

    /// Each host's connections, for the report.
    pub fn host_connections(&self) -> Vec<HostConnections> {
        self.lock()
            .hosts
            .iter()
            .map(|h| HostConnections {
                host: h.name.clone(),
                settled: h.tuner.limit(),
                peak: h.tuner.peak(),
            })
            .collect()
    }
}
