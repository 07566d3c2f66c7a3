//! A pull: targets in, a verified model directory out.
//!
//! [`pull`] checks the request, locks and opens the staging directory (or finds the model
//! already complete), restores what an interrupted run left, runs the engine cores until
//! every file is verified, then publishes atomically and reports.

pub(crate) mod limits;
pub mod plan;
mod state;
mod tune;
mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::buf::ALIGN;
use crate::disk::journal::Journal;
use crate::disk::part;
use crate::disk::staging::{Marker, Prepared, SourceRecord, Staging};
use crate::error::{Error, Result};
use crate::http::proxy::ProxyConfig;
use crate::http::{ClientConfig, Timeouts, tls};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::progress::Progress;
use crate::report::{FileReport, Report};
use crate::runtime::{self, DriverChoice};
use crate::target::Target;
pub(crate) use state::first_mismatch;
use state::{FileMeta, FileState, Job, Phase};

const MIB: usize = 1024 * 1024;

/// The smallest range sent through a proxy. Dragonfly's dfdaemon serves a smaller range
/// straight from the origin, past its peers, which would leave a pull through it with no
/// P2P at all (docs/decisions.md, "Dragonfly: an intercepting proxy's CA for proxied
/// connections only").
pub const PROXY_MIN_RANGE: u64 = 4 * MIB as u64;

/// Tunables of a pull. `Default` gives what the CLI uses without flags.
#[derive(Debug, Clone)]
pub struct Options {
    /// Engine cores (threads with their own runtime).
    pub cores: usize,
    /// io_uring, epoll, or io_uring with fallback to epoll.
    pub driver: DriverChoice,
    /// Pin each core's thread to a CPU.
    pub pin: bool,
    /// Exactly this many connections to each host, never adapted (`--connections`). `None`:
    /// each host's count is found while the pull runs (see `tune`), up to `max_connections`.
    pub connections: Option<usize>,
    /// The most connections over all hosts (`--max-connections`). The buffers bound them too:
    /// each connection holds one chunk, and the pull never holds more than `memory_limit`.
    pub max_connections: usize,
    /// Unit of buffering, writing and checksumming; a multiple of 4096.
    pub chunk_size: usize,
    /// Bytes per ranged request; a multiple of the chunk size.
    pub range_size: u64,
    /// Bound on chunk buffers in memory.
    pub memory_limit: usize,
    /// Buffers shared with other pulls of the process (the agent's one budget over all its
    /// downloads); `None`: the pull has its own, `memory_limit` of them. When shared,
    /// `memory_limit` should be the pool's size and `chunk_size` its buffers' size.
    pub shared_buffers: Option<crate::SharedBuffers>,
    /// Total bandwidth cap, bytes per second.
    pub limit_rate: Option<u64>,
    /// How long opening a connection (TCP, proxy, TLS) may take.
    pub connect_timeout: Duration,
    /// No byte received for this long: the connection is dropped and the range retried.
    pub stall_timeout: Duration,
    /// Attempts per range (and per probe) before the pull fails.
    pub retries: u32,
    /// Downloads of a file whose digest does not match before the pull fails.
    pub verify_attempts: u32,
    /// First retry delay; doubled per attempt, with jitter.
    pub backoff_base: Duration,
    /// Longest retry delay (a server's `Retry-After` may ask for more).
    pub backoff_cap: Duration,
    /// How often the resume journal records a durable checkpoint.
    pub checkpoint_interval: Duration,
    /// Extra CA certificates (PEM) trusted besides the system's and webpki's roots.
    pub ca_bundle: Option<crate::http::tls::CaBundle>,
    /// Hosts whose TLS certificates are not verified (`S3_VERIFY_SSL=0`); a warning is
    /// logged for each.
    pub insecure_hosts: Vec<String>,
    /// Extra request headers, sent only to each source's own host.
    pub headers: Vec<(String, String)>,
    /// Forward proxies (`HTTPS_PROXY`…), `None` for direct connections.
    pub proxy: Option<Arc<ProxyConfig>>,
    /// Which ranges may come from the origin while the file has mirrors (see
    /// [`crate::mirror::OriginGate`]); `None`: any the mirrors cannot serve.
    pub origin_gate: Option<Arc<dyn crate::mirror::OriginGate>>,
    /// Mirror hosts caught lying to an earlier pull, not asked by this one; the hosts this
    /// pull catches are added (see [`crate::mirror::Distrust`]).
    pub distrust: Option<Arc<crate::mirror::Distrust>>,
}

impl Options {
    /// Adds the TLS settings a store's environment asks for (`manifest` lists what this pull
    /// fetches): its CA bundle unless one is set already, and its unverified hosts.
    pub fn apply_tls(&mut self, manifest: &crate::store::Manifest) {
        if self.ca_bundle.is_none() {
            self.ca_bundle.clone_from(&manifest.ca_bundle);
        }
        self.insecure_hosts
            .extend(manifest.insecure_hosts.iter().cloned());
    }

    /// Fits these options under a container's limits, lowering them only: no more cores than
    /// the CPU quota keeps busy, unpinned (a quota is a share of time on any CPU, not CPUs of
    /// the container's own, so pinning would crowd whichever CPUs come first), and chunk
    /// buffers within [`Limits::buffer_budget`]. Buffers never go below what one connection
    /// needs (three chunks); fewer buffers allow fewer connections (see
    /// [`Options::connection_cap`]).
    ///
    /// ```
    /// use modelpull::Options;
    /// use modelpull::limits::{CpuQuota, Limits};
    ///
    /// let mut opts = Options::default();
    /// opts.fit(&Limits {
    ///     memory: Some(256 << 20),
    ///     cpu: Some(CpuQuota { quota_us: 100_000, period_us: 100_000 }),
    /// });
    /// assert_eq!((opts.cores, opts.pin), (1, false));
    /// assert_eq!(opts.memory_limit, 160 << 20);
    /// ```
    pub fn fit(&mut self, limits: &Limits) {
        if let Some(cpu) = limits.cpu {
            self.cores = self.cores.min(cpu.cores()).max(1);
            self.pin = false;
        }
        if let Some(budget) = limits.buffer_budget() {
            let chunks = (budget / self.chunk_size).max(3);
            if chunks * self.chunk_size < self.memory_limit {
                self.memory_limit = chunks * self.chunk_size;
                self.connections = self.connections.map(|n| n.min(chunks - 2));
            }
        }
    }

    /// Chunk buffers within the memory limit.
    pub fn buffers(&self) -> usize {
        (self.memory_limit / self.chunk_size.max(1)).max(3)
    }

    /// The most connections the pull opens over all hosts: the fixed count, or the maximum,
    /// within what the buffers allow (each connection holds one, and two more are kept for
    /// the hashers).
    pub fn connection_cap(&self) -> usize {
        self.connections
            .unwrap_or(self.max_connections)
            .min(self.buffers() - 2)
            .max(1)
    }

    /// Trusts `bundle`, the CA of a proxy that intercepts HTTPS (Dragonfly's dfdaemon), on
    /// connections through the configured proxy and on no other. Returns whether there is a
    /// proxy to trust it for.
    pub fn trust_proxy_ca(&mut self, bundle: crate::http::tls::CaBundle) -> bool {
        let Some(proxy) = &mut self.proxy else {
            return false;
        };
        Arc::make_mut(proxy).ca_bundle = Some(bundle);
        true
    }

    /// These options with ranges of at least [`PROXY_MIN_RANGE`] when a proxy is configured:
    /// a smaller `range_size` is raised to the first multiple of the chunk size above the
    /// floor, with a warning. Without a proxy, or with ranges large enough, they are unchanged.
    pub fn through_proxy(&self) -> std::borrow::Cow<'_, Self> {
        if self.proxy.is_none() || self.range_size >= PROXY_MIN_RANGE {
            return std::borrow::Cow::Borrowed(self);
        }
        let chunk = (self.chunk_size as u64).max(1);
        let raised = PROXY_MIN_RANGE.div_ceil(chunk) * chunk;
        tracing::warn!(
            from = self.range_size,
            to = raised,
            "raising --range-size: through a proxy, ranges under 4 MiB would bypass a P2P proxy's peers (Dragonfly)"
        );
        std::borrow::Cow::Owned(Self {
            range_size: raised,
            ..self.clone()
        })
    }

    /// The settings every request of this pull shares, for the control plane.
    pub fn client(&self) -> ClientConfig {
        ClientConfig {
            driver: self.driver,
            ca_bundle: self.ca_bundle.clone(),
            insecure_hosts: self.insecure_hosts.clone(),
            timeouts: Timeouts {
                connect: self.connect_timeout,
                stall: self.stall_timeout,
            },
            proxy: self.proxy.clone(),
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            cores: runtime::default_cores(),
            driver: DriverChoice::Auto,
            pin: true,
            connections: None,
            max_connections: 256,
            chunk_size: 2 * MIB,
            range_size: 8 * MIB as u64,
            memory_limit: 192 * MIB,
            shared_buffers: None,
            limit_rate: None,
            connect_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(30),
            retries: 8,
            verify_attempts: 3,
            backoff_base: Duration::from_millis(250),
            backoff_cap: Duration::from_secs(30),
            checkpoint_interval: Duration::from_secs(5),
            ca_bundle: None,
            insecure_hosts: Vec::new(),
            headers: Vec::new(),
            proxy: None,
            origin_gate: None,
            distrust: None,
        }
    }
}

impl Options {
    /// Checks the options against each other.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidOption(m));
        if self.cores == 0 {
            return bad("--cores must be at least 1".into());
        }
        if self.connections == Some(0) || self.max_connections == 0 {
            return bad("--connections and --max-connections must be at least 1".into());
        }
        if self.chunk_size == 0 || !self.chunk_size.is_multiple_of(ALIGN) {
            return bad(format!(
                "--chunk-size must be a positive multiple of {ALIGN} bytes"
            ));
        }
        if self.range_size < self.chunk_size as u64
            || !self.range_size.is_multiple_of(self.chunk_size as u64)
        {
            return bad("--range-size must be a multiple of --chunk-size".into());
        }
        // A fixed count must fit whole; an adaptive one stops where the buffers do.
        let connections = self.connections.unwrap_or(1);
        let needed = (connections + 2) * self.chunk_size;
        if self.memory_limit < needed {
            return bad(format!(
                "--memory-limit {} MiB is too small for {} connections with {} KiB chunks (needs at least {} MiB)",
                self.memory_limit / MIB,
                connections,
                self.chunk_size / 1024,
                needed.div_ceil(MIB)
            ));
        }
        if self.retries == 0 || self.verify_attempts == 0 {
            return bad("--retries and --verify-attempts must be at least 1".into());
        }
        if let Some(shared) = &self.shared_buffers
            && shared.0.buffer_size() != self.chunk_size
        {
            return bad(format!(
                "--chunk-size {} KiB differs from the shared buffers' {} KiB",
                self.chunk_size / 1024,
                shared.0.buffer_size() / 1024
            ));
        }
        if let Some(gate) = &self.origin_gate
            && !gate.block().is_multiple_of(self.range_size)
        {
            return bad(format!(
                "the origin gate decides per block of {} bytes, not a multiple of --range-size ({} bytes): a range would span two blocks",
                gate.block(),
                self.range_size
            ));
        }
        if self.limit_rate == Some(0) {
            return bad("--limit-rate must be positive".into());
        }
        Ok(())
    }
}

/// What to pull and where.
#[derive(Debug, Clone)]
pub struct PullRequest {
    /// The files to fetch, each with where it lands and what it must match.
    pub targets: Vec<Target>,
    /// The model directory to create.
    pub dest: PathBuf,
    /// When the pull is a single `.tar`, `.tar.gz`, `.tgz` or `.zip`, unpack it in place and
    /// remove it, as KServe's storage-initializer does.
    pub unpack: bool,
    /// The URIs the targets were listed from (`hf://…`, `s3://…`), recorded in the completion
    /// marker so a later check can tell which model a directory holds.
    pub sources: Vec<String>,
    /// When `dest` exists without a completion marker for this request (a folder another
    /// tool wrote, or an older version of the model), check its files where they lie and
    /// fetch only those that do not match, instead of refusing it: see [`crate::adopt`].
    pub adopt: bool,
}

/// Shared handles a pull reports into.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// Prometheus counters the pull updates.
    pub metrics: Metrics,
    /// Counters for progress displays, readable while the pull runs.
    pub progress: Arc<Progress>,
    /// Set to stop the pull; it ends with [`Error::Interrupted`], resumable.
    pub cancel: Arc<AtomicBool>,
}

fn check_request(req: &PullRequest) -> Result<()> {
    if req.targets.is_empty() {
        return Err(Error::InvalidOption(
            "nothing to pull: give at least one source".into(),
        ));
    }
    crate::target::check_targets(&req.targets)
}

/// Pulls `req.targets` into `req.dest`: verified, resumable, published atomically.
///
/// A target may also be a plain URL whose fragment carries the digest to check:
///
/// ```no_run
/// use modelpull::{Context, Options, PullRequest, Target};
///
/// # fn main() -> modelpull::Result<()> {
/// let url = "https://example.com/model.safetensors#sha256=\
///            2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
/// let request = PullRequest {
///     targets: vec![Target::parse(url)?],
///     dest: "/mnt/models/example".into(),
///     unpack: false,
///     sources: Vec::new(),
///     adopt: false,
/// };
/// let cx = Context::default();
/// let report = modelpull::pull(&request, &Options::default(), &cx)?;
/// assert_eq!(report.files[0].path, "model.safetensors");
/// # Ok(())
/// # }
/// ```
pub fn pull(req: &PullRequest, opts: &Options, cx: &Context) -> Result<Report> {
    let started = Instant::now();
    let opts = opts.through_proxy();
    let opts = &*opts;
    opts.validate()?;
    check_request(req)?;
    let request: Vec<SourceRecord> = req
        .targets
        .iter()
        .map(|t| SourceRecord {
            path: t.path.clone(),
            source: crate::redact(&t.url),
            expected: t.expected.clone(),
        })
        .collect();
    if req.adopt && std::fs::symlink_metadata(&req.dest).is_ok() {
        return crate::adopt::pull(req, request, opts, cx, started);
    }
    let staging = match Staging::prepare(&req.dest, &request)? {
        Prepared::UpToDate(marker) => {
            tracing::info!(dest = %req.dest.display(), "already complete and verified; nothing to do");
            return Ok(up_to_date_report(req, &marker, started));
        }
        Prepared::Ready(s) => s,
    };
    let fetched = match fetch_into(&staging, &req.targets, opts, cx) {
        Ok(f) => f,
        Err(err) => {
            if is_disk_full(&err) {
                tracing::info!(dir = %staging.dir.display(), "disk full: removing the staging directory to free its space");
                staging.discard();
            }
            return Err(err);
        }
    };
    let Fetched {
        job,
        reports,
        records,
        driver,
        note,
        cores,
        peak_buffer_bytes,
    } = fetched;
    let mut marker = Marker::new(request, records);
    marker.sources.clone_from(&req.sources);
    let unpacked = if req.unpack {
        unpack_single(&staging, &job.metas, &mut marker)?
    } else {
        None
    };
    staging.publish(&marker)?;
    cx.metrics.pulls.with_label_values(&["ok"]).inc();

    let seconds = started.elapsed().as_secs_f64();
    let snap = cx.progress.snapshot();
    let total_bytes: u64 = reports.iter().map(|f| f.size).sum();
    Ok(Report {
        destination: req.dest.clone(),
        up_to_date: false,
        driver: Some(driver),
        driver_note: note,
        cores,
        connections: job.host_connections(),
        total_bytes,
        downloaded_bytes: snap.downloaded_bytes,
        resumed_bytes: reports.iter().map(|f| f.resumed_bytes).sum(),
        files: reports,
        unpacked,
        seconds,
        gigabytes_per_second: snap.downloaded_bytes as f64 / seconds.max(1e-9) / 1e9,
        retries: snap.retries,
        peak_buffer_bytes,
        adoption: None,
    })
}

/// What [`fetch_into`] fetched: every file verified in the staging directory.
pub(crate) struct Fetched {
    /// The finished pull's state (its files' metadata, for unpacking).
    pub job: Arc<Job>,
    pub reports: Vec<FileReport>,
    pub records: Vec<crate::disk::staging::FileRecord>,
    pub driver: runtime::Driver,
    pub note: Option<String>,
    pub cores: usize,
    pub peak_buffer_bytes: u64,
}

/// Fetches `targets` into `staging` (resuming what an earlier run left there) until every
/// one is verified at its place in the staging directory; publishing is the caller's.
pub(crate) fn fetch_into(
    staging: &Staging,
    targets: &[Target],
    opts: &Options,
    cx: &Context,
) -> Result<Fetched> {
    let trust = tls::trust(
        opts.ca_bundle.as_ref(),
        &opts.insecure_hosts,
        opts.proxy.as_deref(),
    )
    .map_err(|e| Error::InvalidOption(e.to_string()))?;
    let (driver, note) = runtime::resolve(opts.driver)?;
    match &note {
        Some(why) => {
            tracing::warn!(driver = driver.name(), reason = %why, "using the epoll driver")
        }
        None => tracing::info!(
            driver = driver.name(),
            cores = opts.cores,
            "engine starting"
        ),
    }
    cx.metrics.driver.with_label_values(&[driver.name()]).set(1);

    let chunk = opts.chunk_size as u64;
    let range_chunks = opts.range_size / chunk;
    let mut metas = Vec::new();
    let mut files = Vec::new();
    for t in targets {
        let final_path = staging.path_for(&t.path)?;
        let meta = FileMeta::new(
            t.clone(),
            final_path.with_file_name(format!("{}{}", file_name(&t.path), part::SUFFIX)),
            Journal::path_for(&final_path),
            final_path,
        );
        let fs = FileState::prepare(&meta, chunk, range_chunks)?;
        let p = &cx.progress;
        p.files_total.fetch_add(1, Relaxed);
        if fs.phase == Phase::Done {
            p.files_done.fetch_add(1, Relaxed);
            p.total_bytes.fetch_add(fs.size, Relaxed);
            p.done_bytes.fetch_add(fs.size, Relaxed);
        } else if fs.phase == Phase::Validate {
            p.total_bytes.fetch_add(fs.size, Relaxed);
            p.done_bytes.fetch_add(fs.counted_bytes(), Relaxed);
        }
        metas.push(meta);
        files.push(fs);
    }

    let cores = opts.cores.min(opts.connection_cap()).max(1);
    let job = Arc::new(Job::new(
        opts.clone(),
        metas,
        files,
        cx.progress.clone(),
        cx.metrics.clone(),
        cx.cancel.clone(),
    ));
    runtime::run_cores(cores, driver, opts.pin, |core| {
        worker::run_core(job.clone(), trust.clone(), worker::Share { core, cores })
    })?;

    if let Some(err) = job.take_failure() {
        cx.metrics
            .pulls
            .with_label_values(&[err.metric_label()])
            .inc();
        return Err(err);
    }

    let state = job.lock();
    let mut reports = Vec::new();
    let mut records = Vec::new();
    for (meta, fs) in job.metas.iter().zip(&state.files) {
        let record = fs
            .record
            .clone()
            .ok_or_else(|| Error::Runtime(format!("{} was not completed", meta.target.path)))?;
        reports.push(FileReport {
            path: record.path.clone(),
            size: record.size,
            digests: record.digests.clone(),
            verified: meta.target.expected.iter().map(|d| d.algorithm).collect(),
            resumed_bytes: fs.resumed_bytes,
            checksum: meta
                .target
                .checksum
                .clone()
                .unwrap_or_else(|| meta.target.checksum_label()),
        });
        records.push(record);
    }
    drop(state);
    let peak_buffer_bytes = (job.pool.allocated() * opts.chunk_size) as u64;
    Ok(Fetched {
        job,
        reports,
        records,
        driver,
        note,
        cores,
        peak_buffer_bytes,
    })
}

/// Unpacks the pull's only file when it is an archive: leftovers of an interrupted attempt
/// are cleared first, the archive is removed after, and the marker lists the unpacked files.
pub(crate) fn unpack_single(
    staging: &Staging,
    metas: &[state::FileMeta],
    marker: &mut Marker,
) -> Result<Option<crate::report::Unpacked>> {
    let [meta] = metas else {
        return Ok(None);
    };
    let Some(kind) = crate::archive::Kind::of(&meta.target.path) else {
        return Ok(None);
    };
    // The archive leaves the staging directory (for a sibling on the same filesystem) so the
    // directory can be emptied of an interrupted attempt's leftovers, whatever folder the
    // archive was listed in.
    let aside = staging.dir.with_extension("modelpull-archive");
    std::fs::rename(&meta.final_path, &aside)
        .map_err(|e| Error::local("move aside", &meta.final_path, e))?;
    staging.clear()?;
    let size = marker.files.first().map_or(0, |f| f.size);
    tracing::info!(archive = %meta.target.path, "unpacking the downloaded archive in place");
    let unpacked = crate::archive::unpack(
        &aside,
        kind,
        &staging.dir,
        crate::archive::Limits::for_archive(size),
    );
    let _ = std::fs::remove_file(&aside);
    let files = unpacked?;
    let unpacked = crate::report::Unpacked {
        archive: meta.target.path.clone(),
        files: files.len(),
        bytes: files.iter().map(|f| f.size).sum(),
    };
    marker.unpacked_from = std::mem::replace(&mut marker.files, files).pop();
    Ok(Some(unpacked))
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

pub(crate) fn is_disk_full(err: &Error) -> bool {
    matches!(err, Error::Local { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) || source.raw_os_error() == Some(libc::EDQUOT))
}

pub(crate) fn up_to_date_report(req: &PullRequest, marker: &Marker, started: Instant) -> Report {
    let files: Vec<FileReport> = marker
        .files
        .iter()
        .map(|f| FileReport {
            path: f.path.clone(),
            size: f.size,
            digests: f.digests.clone(),
            verified: Vec::new(),
            resumed_bytes: f.size,
            checksum: "verified by an earlier pull".into(),
        })
        .collect();
    let total: u64 = files.iter().map(|f| f.size).sum();
    Report {
        destination: req.dest.clone(),
        up_to_date: true,
        driver: None,
        driver_note: None,
        cores: 0,
        connections: Vec::new(),
        total_bytes: total,
        downloaded_bytes: 0,
        resumed_bytes: total,
        files,
        unpacked: None,
        seconds: started.elapsed().as_secs_f64(),
        gigabytes_per_second: 0.0,
        retries: 0,
        peak_buffer_bytes: 0,
        adoption: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::CpuQuota;

    #[test]
    fn ranges_through_a_proxy_are_raised_to_the_floor() {
        let small = Options {
            chunk_size: 3 * MIB,
            range_size: 3 * MIB as u64,
            ..Options::default()
        };
        assert_eq!(small.through_proxy().range_size, 3 * MIB as u64);
        let proxied = Options {
            proxy: Some(Arc::new(ProxyConfig::default())),
            ..small
        };
        let raised = proxied.through_proxy();
        assert_eq!(raised.range_size, 6 * MIB as u64);
        raised.validate().unwrap();
        let default = Options {
            proxy: proxied.proxy.clone(),
            ..Options::default()
        };
        assert_eq!(default.through_proxy().range_size, 8 * MIB as u64);
    }

    #[test]
    fn a_proxy_ca_needs_a_proxy() {
        let ca = crate::CaBundle::File("/ca.pem".into());
        let mut direct = Options::default();
        assert!(!direct.trust_proxy_ca(ca.clone()));
        assert!(direct.proxy.is_none());
        let mut proxied = Options {
            proxy: Some(Arc::new(ProxyConfig::default())),
            ..Options::default()
        };
        assert!(proxied.trust_proxy_ca(ca.clone()));
        assert_eq!(proxied.proxy.unwrap().ca_bundle, Some(ca));
    }

    #[test]
    fn fitting_only_lowers_and_keeps_a_pull_valid() {
        let defaults = Options {
            cores: 8,
            ..Options::default()
        };
        let fitted = |limits: Limits| {
            let mut opts = defaults.clone();
            opts.fit(&limits);
            opts.validate().unwrap();
            opts
        };
        let none = fitted(Limits::default());
        assert_eq!(
            (
                none.cores,
                none.pin,
                none.memory_limit,
                none.connection_cap()
            ),
            (8, true, 192 * MIB, 94)
        );

        // KServe's storage-initializer: 1 CPU, 1 GiB; the default buffers fit.
        let kserve = fitted(Limits {
            memory: Some(1 << 30),
            cpu: Some(CpuQuota {
                quota_us: 100_000,
                period_us: 100_000,
            }),
        });
        assert_eq!((kserve.cores, kserve.pin), (1, false));
        assert_eq!(
            (kserve.memory_limit, kserve.connection_cap()),
            (192 * MIB, 94)
        );

        // 128 MiB: 48 MiB of buffers, 24 chunks, 22 connections; a fixed count is lowered.
        let small = fitted(Limits {
            memory: Some(128 << 20),
            cpu: None,
        });
        assert_eq!((small.cores, small.pin), (8, true));
        assert_eq!(small.memory_limit, 48 * MIB);
        assert_eq!(small.connection_cap(), 22);
        let mut fixed = Options {
            connections: Some(64),
            ..defaults.clone()
        };
        fixed.fit(&Limits {
            memory: Some(128 << 20),
            cpu: None,
        });
        assert_eq!((fixed.connections, fixed.connection_cap()), (Some(22), 22));
        fixed.validate().unwrap();

        // Below what the process itself needs: one connection's three chunks, no fewer.
        let tiny = fitted(Limits {
            memory: Some(32 << 20),
            cpu: None,
        });
        assert_eq!((tiny.memory_limit, tiny.connection_cap()), (6 * MIB, 1));
    }
}
