//! Connections per host: how many each host has, how many it may have, and what it said.
//!
//! A file's sources are its origin and its mirrors (see [`crate::mirror`]), each on a host.
//! Every claim counts against the host of the source it goes to until the worker releases it.
//! How many a host may have is its tuner's to say (see `pull::tune`): the scheduler feeds the
//! tuners the bytes each host sent and tells them when a claim waited for a connection; the
//! workers tell them when a host answered that it is overloaded. A mirror's host and an
//! origin's are never the same entry, even on one server: a mirror can be dropped, an origin
//! cannot.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::{Claim, FileMeta, Job, JobState, MirrorFault, Phase};
use crate::http::HttpError;
use crate::mirror;
use crate::pull::tune::Tuner;
use crate::report::HostConnections;

/// Where a range goes (see [`Job::source_for`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pick {
    /// To this source of the file.
    Source(usize),
    /// Nowhere yet: this host, where it should go, is full.
    Full(usize),
    /// Nowhere yet: the mirrors do not have it, and the origin gate keeps it from the origin.
    Wait,
}

/// Failures in a row after which a mirror is dropped for the rest of the pull.
const MIRROR_FAILURES: u32 = 3;

/// One host's connections.
#[derive(Debug)]
pub(crate) struct HostState {
    name: String,
    /// Serves mirrors, not origins.
    mirror: bool,
    /// A mirror that sent wrong bytes or failed too often: no more claims go to it.
    dropped: bool,
    /// Files whose digest failed after this mirror served part of them, and whose bytes from
    /// the origin have not yet said whether it was the culprit: no claims go to it meanwhile.
    suspected: u32,
    /// A mirror's failures since its last range that ended well.
    failures: u32,
    /// Claims open on the host.
    pub(super) active: usize,
    /// Of those, requests receiving a body.
    streaming: usize,
    /// When a body from it last began to come.
    streamed_at: Option<Instant>,
    /// Claims numbered up to this one were opened before the host's last cut.
    cut_at: u64,
    tuner: Tuner,
}

impl HostState {
    fn has_room(&self) -> bool {
        self.active < self.tuner.limit()
    }

    /// Whether claims may go to it.
    fn usable(&self) -> bool {
        !self.dropped && self.suspected == 0
    }
}

/// The hosts of `metas`, in order of first appearance, each with a copy of `tuner`, and each
/// file's source hosts: its origin's first, then its mirrors' in order — for files with a
/// cryptographic digest to check them by only ([`crate::Target::vouched`]). A mirror host in
/// `distrust` starts dropped.
pub(super) fn index(
    metas: &[FileMeta],
    tuner: &Tuner,
    distrust: Option<&mirror::Distrust>,
) -> (Vec<Vec<usize>>, Vec<HostState>) {
    let mut hosts: Vec<HostState> = Vec::new();
    let mut host = |url: &url::Url, mirror: bool| {
        // Two origins on one machine are two hosts to tune.
        let host = url.host_str().unwrap_or_default();
        let name = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        match hosts
            .iter()
            .position(|h| h.name == name && h.mirror == mirror)
        {
            Some(i) => i,
            None => {
                let dropped = mirror && distrust.is_some_and(|d| d.is_distrusted(&name));
                if dropped {
                    tracing::warn!(mirror = %name, "not asking this mirror: it sent bytes that contradict the origin to an earlier pull");
                }
                hosts.push(HostState {
                    tuner: if mirror {
                        tuner.for_mirror()
                    } else {
                        tuner.clone()
                    },
                    name,
                    mirror,
                    dropped,
                    suspected: 0,
                    failures: 0,
                    active: 0,
                    streaming: 0,
                    streamed_at: None,
                    cut_at: 0,
                });
                hosts.len() - 1
            }
        }
    };
    let sources = metas
        .iter()
        .map(|m| {
            let mirrors = if m.target.vouched() {
                m.target.mirrors.as_slice()
            } else {
                &[]
            };
            std::iter::once(host(&m.target.url, false))
                .chain(mirrors.iter().map(|u| host(u, true)))
                .collect()
        })
        .collect();
    let unvouched = metas
        .iter()
        .filter(|m| !m.target.mirrors.is_empty() && !m.target.vouched())
        .count();
    if unvouched > 0 {
        tracing::warn!(
            files = unvouched,
            "no mirror is asked for files the store gives no cryptographic digest for (size or CRC only: bytes could be forged to match); they come from the origin"
        );
    }
    (sources, hosts)
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
        HttpError::Connect { source, .. } => source.kind() == std::io::ErrorKind::ConnectionRefused,
        _ => false,
    }
}

impl Job {
    /// The index of the host of `file`'s source `source` (0: the origin, then its mirrors).
    pub fn host_of(&self, file: usize, source: usize) -> usize {
        self.sources[file][source]
    }

    /// Lets each host's tuner close its epoch (called by the scheduler with the lock held).
    pub(super) fn tune(&self, st: &mut JobState, now: Instant) {
        for (h, bytes) in st.hosts.iter_mut().zip(&self.host_bytes) {
            h.tuner.tick(now, bytes.load(Relaxed));
        }
    }

    /// Whether `host` has all the connections it may have, or the pull all it may have over
    /// every host.
    pub(super) fn host_full(&self, st: &JobState, host: usize) -> bool {
        !st.hosts[host].has_room() || self.connections_open(st) >= self.connection_cap
    }

    /// Where a range of `file` starting at chunk `start` goes. With an origin gate, a range
    /// it gives this pull goes to the origin first; the others, and every range without a
    /// gate, go to the mirror with the most connections to spare (a tuner gives a fast host
    /// more, so ranges follow the measured speed), and to the origin only when no mirror is
    /// left to the range: each is in `avoid` (bit `source`), lacks the file, was dropped, or
    /// the file must come from the origin alone. A mirror that is merely busy makes the range
    /// wait for it; so does a gate that keeps the range from the origin, unless every mirror
    /// of the file is gone or the range has waited since `waiting` for [`mirror::PATIENCE`].
    pub(super) fn source_for(
        &self,
        st: &JobState,
        file: usize,
        start: u64,
        avoid: u64,
        waiting: Option<Instant>,
    ) -> Pick {
        let sources = &self.sources[file];
        let fs = &st.files[file];
        let offset = start * self.chunk_size();
        let path = &self.metas[file].target.path;
        // Whether the gate lets the range go to the origin, and the mirror that fetches its
        // block from the origin, which goes first while it has room.
        let (gate, holder) = match &self.opts.origin_gate {
            Some(g) => (
                Some(g.allows(path, offset)),
                g.holder(path, offset).map(|m| m + 1),
            ),
            None => (None, None),
        };
        if !fs.origin_only && sources.len() > 1 && gate != Some(true) {
            let alive: Vec<(usize, usize)> = sources
                .iter()
                .copied()
                .enumerate()
                .skip(1)
                .filter(|&(i, h)| fs.lacking & (1 << i) == 0 && st.hosts[h].usable())
                .collect();
            let mut busy = None;
            let mut best: Option<(usize, usize)> = None;
            for &(i, h) in alive.iter().filter(|&&(i, _)| avoid & (1 << i) == 0) {
                let host = &st.hosts[h];
                let room = host.tuner.limit().saturating_sub(host.active);
                if room == 0 {
                    busy.get_or_insert(h);
                } else if best
                    .is_none_or(|(b, r)| (Some(i) == holder, room) > (Some(b) == holder, r))
                {
                    best = Some((i, room));
                }
            }
            let cap_full = self.connections_open(st) >= self.connection_cap;
            match (best, busy) {
                (Some((i, _)), _) if !cap_full => return Pick::Source(i),
                (Some((i, _)), _) => return Pick::Full(sources[i]),
                (None, Some(h)) => return Pick::Full(h),
                (None, None) => {}
            }
            // Patience runs out when the range waited that long and its block's holder has not
            // sent this node anything for as long either: a holder that sends other blocks is
            // working its way to this one (front to back, file by file, which may take longer
            // than `PATIENCE` on a large model), one that sends nothing may never get there.
            let holder_sends = holder.and_then(|m| sources.get(m)).is_some_and(|&h| {
                st.hosts[h]
                    .streamed_at
                    .is_some_and(|t| t.elapsed() < mirror::PATIENCE)
            });
            let patient =
                holder_sends || waiting.is_none_or(|since| since.elapsed() < mirror::PATIENCE);
            if gate == Some(false) && patient && !alive.is_empty() {
                return Pick::Wait;
            }
        }
        if self.host_full(st, sources[0]) {
            Pick::Full(sources[0])
        } else {
            Pick::Source(0)
        }
    }

    /// A claim was ready but `host` was full: when the host's own limit (not the pull's cap)
    /// stopped it, its tuner is told, which is what lets it judge a larger one.
    pub(super) fn held_back(&self, st: &mut JobState, host: usize) {
        let h = &mut st.hosts[host];
        if !h.has_room() {
            h.tuner.held_back();
        }
    }

    /// Claims open over every host.
    pub(super) fn connections_open(&self, st: &JobState) -> usize {
        st.hosts.iter().map(|h| h.active).sum()
    }

    /// Connections every host with files still to fetch may have, within the cap.
    pub(super) fn connections_allowed(&self, st: &JobState) -> usize {
        let mut working = vec![false; st.hosts.len()];
        for (fs, sources) in st.files.iter().zip(&self.sources) {
            if fs.phase != Phase::Done {
                for &h in sources {
                    working[h] = true;
                }
            }
        }
        let limits: usize = st
            .hosts
            .iter()
            .zip(working)
            .filter(|(h, working)| *working && h.usable())
            .map(|(h, _)| h.tuner.limit())
            .sum();
        limits.min(self.connection_cap)
    }

    /// Workers the cores should run: one per connection every host may have, within the cap,
    /// and one more, which finds a host full when work waits for it: that is how a tuner learns
    /// its limit holds work back.
    pub fn connection_target(&self) -> usize {
        self.connections_allowed(&self.lock()) + 1
    }

    /// Numbers a new claim on `file` and counts it against the host of its source `source`,
    /// and the file as in flight for the progress display, until [`Job::release_host`].
    pub(super) fn open_claim(&self, st: &mut JobState, file: usize, source: usize) -> u64 {
        st.next_id += 1;
        st.hosts[self.host_of(file, source)].active += 1;
        self.progress.request_started(&self.metas[file].target.path);
        st.next_id
    }

    /// A claim's response has come and its body is being received.
    pub fn streaming(&self, claim: &Claim) {
        let mut st = self.lock();
        let h = &mut st.hosts[self.host_of(claim.file, claim.source)];
        h.streaming += 1;
        h.streamed_at = Some(Instant::now());
        self.block_arrives(&mut st.files[claim.file], claim);
    }

    /// Called when a worker is done with a claim, whatever the outcome; `streamed` says
    /// whether [`Job::streaming`] was called for it.
    pub fn release_host(&self, claim: &Claim, streamed: bool) {
        let mut st = self.lock();
        let h = &mut st.hosts[self.host_of(claim.file, claim.source)];
        h.active = h.active.saturating_sub(1);
        if streamed {
            h.streaming = h.streaming.saturating_sub(1);
        }
        drop(st);
        self.progress
            .request_ended(&self.metas[claim.file].target.path);
    }

    /// A released request failed with `err`: when it says the host is overloaded, the host
    /// gets fewer connections, and the request is spared the attempt if it was opened before
    /// the cut.
    pub fn overloaded(&self, claim: &Claim, err: &HttpError) -> Overload {
        if !overload(err) {
            return Overload::No;
        }
        let mut st = self.lock();
        let next_id = st.next_id;
        let host = self.host_of(claim.file, claim.source);
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
        if h.streaming > 0 && claim.id <= h.cut_at {
            Overload::Spared
        } else {
            Overload::Counted
        }
    }

    /// A range from a mirror ended well: its count of failures in a row starts again.
    pub fn mirror_served(&self, claim: &Claim) {
        let host = self.host_of(claim.file, claim.source);
        self.lock().hosts[host].failures = 0;
    }

    /// Stops sending claims to the mirror on `host` (with the lock held), saying why once.
    pub(super) fn drop_mirror(&self, st: &mut JobState, host: usize, why: &str) {
        let h = &mut st.hosts[host];
        if h.mirror && !h.dropped {
            h.dropped = true;
            tracing::warn!(mirror = %h.name, reason = why, "not using this mirror for the rest of the pull");
            self.metrics.mirrors_dropped.inc();
        }
    }

    /// Drops the mirror on `host` for sending bytes or a range that contradict the origin,
    /// and remembers it in the pull's [`mirror::Distrust`] for pulls to come.
    pub(super) fn catch_mirror(&self, st: &mut JobState, host: usize, why: &str) {
        self.drop_mirror(st, host, why);
        if let Some(d) = &self.opts.distrust {
            d.caught(&st.hosts[host].name);
        }
    }

    /// Sets the mirror on `host` aside until a file it served part of, whose digest failed,
    /// comes again from the origin ([`Job::acquit`] then says whether it was the culprit).
    pub(super) fn suspect(&self, st: &mut JobState, host: usize) {
        st.hosts[host].suspected += 1;
    }

    /// The origin's copy of a file that the mirror on `host` was suspected for has verified:
    /// the mirror is caught when its chunks differ from the origin's (`guilty`), and asked
    /// again when nothing else holds it back.
    pub(super) fn acquit(&self, st: &mut JobState, host: usize, guilty: Option<&str>) {
        let h = &mut st.hosts[host];
        h.suspected = h.suspected.saturating_sub(1);
        match guilty {
            Some(why) => self.catch_mirror(st, host, why),
            None if h.usable() => {
                tracing::info!(mirror = %h.name, "asking this mirror again: its part of a file that failed verification matched the origin's");
            }
            None => {}
        }
    }

    /// A mirror failed a range: caught at once when it contradicted the origin, dropped at
    /// once when it answered nothing at all, else dropped after [`MIRROR_FAILURES`] in a row.
    pub(super) fn count_mirror_failure(
        &self,
        st: &mut JobState,
        host: usize,
        fault: MirrorFault,
        err: &HttpError,
    ) {
        let h = &mut st.hosts[host];
        h.failures += 1;
        if fault == MirrorFault::Untrusted {
            self.catch_mirror(st, host, &err.to_string());
        } else if fault == MirrorFault::Unresponsive {
            let why = format!("it answered nothing: {err}");
            self.drop_mirror(st, host, &why);
        } else if h.failures >= MIRROR_FAILURES {
            let why = format!("{} failures in a row, the last: {err}", h.failures);
            self.drop_mirror(st, host, &why);
        }
    }

    /// Each host's connections and bytes, for the report.
    pub fn host_connections(&self) -> Vec<HostConnections> {
        self.lock()
            .hosts
            .iter()
            .zip(&self.host_bytes)
            .map(|(h, bytes)| HostConnections {
                host: h.name.clone(),
                mirror: h.mirror,
                dropped: !h.usable(),
                settled: h.tuner.limit(),
                peak: h.tuner.peak(),
                bytes: bytes.load(Relaxed),
            })
            .collect()
    }
}
