//! The node's downloads, in-process: which are queued, running or failed, when a failed one is
//! tried again, and what to tell the cluster. A few worker threads each run one download at a
//! time through a [`Fetch`] — in production the engine ([`Engine`]), which starts its own
//! pinned cores for it — instead of one Kubernetes Job with a Python pod per model.
//!
//! What follows a failure depends on its [`Class`] (see [`crate::error`] and
//! [`RetryPolicy`]): a transient failure is tried again after a backoff, refused access after a
//! longer one, a disk without room after a longer one still, bad input only once its entry or
//! the node's spec changes
//! ([`Downloads::release`], which also cuts any backoff short). None is left for a human, as
//! KServe's failed Jobs are. Every change wakes the controller, which reports it. Credentials
//! arrive in an in-memory [`Env`] and go nowhere else.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use modelpull::metrics::Metrics;
use modelpull::progress::Progress;
use modelpull::store::{self, Control, Env};
use modelpull::{Context, Options, PullRequest};

use crate::crd::LocalModelInfo;
use crate::credentials::{Credentials, Source};
use crate::error::{Class, Error};
use crate::fetch::{Fetch, Order, Pulled};
use crate::plan::Download;
use crate::retry::RetryPolicy;

/// How often a pull shared with peers flushes and records its chunks (they serve only those).
const SHARED_CHECKPOINT: Duration = Duration::from_millis(250);

/// How the engine pulls.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `<root>/models`.
    pub models: PathBuf,
    /// Models downloading at once: each gets this share of the bandwidth cap; the buffers are
    /// shared, evenly while several pulls draw from them.
    pub concurrent: usize,
    /// Engine options for the node: the buffers are shared by its pulls, the rate is split.
    pub engine: Options,
    /// The node group's coordination, when this agent shares downloads with its peers.
    pub group: Option<Arc<crate::group::Coordinator>>,
    /// The CA of a proxy that intercepts HTTPS, trusted on connections through a model's
    /// proxy only.
    pub proxy_ca: Option<modelpull::CaBundle>,
}

/// The production [`Fetch`]: lists the source, checks the free space against the bytes still
/// missing, and pulls into `models/<storage key>` with the modelpull engine (staged beside
/// it, published atomically, resumable from its journals). A folder already there without a
/// marker (KServe's) is adopted: its files are checked where they lie and only those that
/// differ are fetched ([`modelpull::adopt`]).
#[derive(Debug)]
pub struct Engine {
    settings: Settings,
    metrics: Metrics,
}

impl Engine {
    pub fn new(settings: Settings, metrics: Metrics) -> Self {
        Self { settings, metrics }
    }
}

impl Fetch for Engine {
    fn fetch(&self, order: Order<'_>) -> Result<Pulled, Error> {
        pull(&self.settings, &self.metrics, order)
    }
}

/// A download that failed, as the controller reports it.
#[derive(Debug)]
pub struct Failure {
    pub key: String,
    /// The source, redacted.
    pub uri: String,
    pub error: Error,
    /// When it is tried again; `None`: once its entry or the spec changes.
    pub retry_in: Option<Duration>,
    /// The credentials it used; `None` when it failed before any were found.
    pub credentials: Option<Source>,
}

impl Failure {
    /// The note of its Event: what failed, which credentials were refused, what happens next.
    pub fn note(&self) -> String {
        let mut note = format!("{}: {}", self.uri, self.error);
        if let (Class::AccessDenied, Some(source)) = (self.error.class(), &self.credentials) {
            note.push_str(&format!("; credentials used: {source}"));
        }
        match self.retry_in {
            Some(wait) => note.push_str(&format!("; trying again in {} s", wait.as_secs())),
            None => note
                .push_str("; not tried again until its entry or the LocalModelNode's spec changes"),
        }
        note
    }
}

/// Something the controller should tell the cluster about (as an Event).
#[derive(Debug)]
pub enum Report {
    Started {
        key: String,
        uri: String,
    },
    Done {
        key: String,
        uri: String,
        pulled: Pulled,
        seconds: f64,
    },
    Failed(Box<Failure>),
}

#[derive(Debug)]
enum State {
    Queued,
    Running,
    /// Tried again once `retry_at` has passed; never by itself when `None`.
    Failed {
        retry_at: Option<Instant>,
    },
}

#[derive(Debug)]
struct Job {
    entry: LocalModelInfo,
    env: Env,
    /// Where `env`'s credentials came from; `None` when the download never started.
    source: Option<Source>,
    state: State,
    attempts: u32,
    cancel: Arc<AtomicBool>,
    progress: Arc<Progress>,
}

impl Job {
    fn new(entry: LocalModelInfo, credentials: Option<Credentials>, attempts: u32) -> Self {
        let (env, source) = match credentials {
            Some(c) => (c.env, Some(c.source)),
            None => (Env::default(), None),
        };
        Self {
            entry,
            env,
            source,
            state: State::Queued,
            attempts,
            cancel: Arc::new(AtomicBool::new(false)),
            progress: Arc::new(Progress::default()),
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    jobs: HashMap<String, Job>,
    queue: VecDeque<String>,
    reports: Vec<Report>,
    stopping: bool,
}

#[derive(Debug)]
struct Inner {
    fetch: Arc<dyn Fetch>,
    retry: RetryPolicy,
    shared: Mutex<Shared>,
    wake_workers: Condvar,
    /// Tells the controller that something changed.
    changed: tokio::sync::mpsc::UnboundedSender<()>,
}

/// The node's downloads.
#[derive(Debug, Clone)]
pub struct Downloads {
    inner: Arc<Inner>,
    workers: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Downloads {
    /// Starts `workers` threads, each running one download at a time through `fetch`; with
    /// none, a download runs only when [`Downloads::run_next`] is called. `changed` receives a
    /// message after every state change.
    pub fn start(
        fetch: Arc<dyn Fetch>,
        workers: usize,
        retry: RetryPolicy,
        changed: tokio::sync::mpsc::UnboundedSender<()>,
    ) -> Self {
        let downloads = Self {
            inner: Arc::new(Inner {
                fetch,
                retry,
                shared: Mutex::new(Shared::default()),
                wake_workers: Condvar::new(),
                changed,
            }),
            workers: Arc::new(Mutex::new(Vec::new())),
        };
        let handles = (0..workers)
            .map(|i| {
                let downloads = downloads.clone();
                std::thread::Builder::new()
                    .name(format!("download-{i}"))
                    .spawn(move || downloads.work())
                    .expect("spawn a download worker")
            })
            .collect();
        *downloads.workers.lock().unwrap_or_else(|p| p.into_inner()) = handles;
        downloads
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.inner.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues (or queues again, after a failure) the download of `key`.
    pub fn start_download(&self, key: &str, entry: LocalModelInfo, credentials: Credentials) {
        let mut s = self.lock();
        if s.stopping {
            return;
        }
        let attempts = match s.jobs.get(key) {
            Some(Job {
                state: State::Queued | State::Running,
                ..
            }) => return,
            Some(job) => job.attempts,
            None => 0,
        };
        s.jobs
            .insert(key.to_owned(), Job::new(entry, Some(credentials), attempts));
        s.queue.push_back(key.to_owned());
        drop(s);
        self.inner.wake_workers.notify_one();
    }

    /// Records that the download of `key` could not even start (its credentials or its
    /// folder): it counts as failed, with the same policy and report as a failed fetch.
    pub fn fail(&self, key: &str, entry: LocalModelInfo, error: Error) {
        let mut s = self.lock();
        let attempts = s.jobs.get(key).map_or(0, |j| j.attempts) + 1;
        s.jobs
            .insert(key.to_owned(), Job::new(entry, None, attempts));
        s.record_failure(&self.inner.retry, key, error);
    }

    /// Makes each failed download for which `changed(key, the entry it failed with)` holds
    /// due now: a failure waits for its backoff (bad input: indefinitely) only while nothing
    /// it depends on changes. Its attempts so far still count for the next backoff.
    pub fn release(&self, changed: impl Fn(&str, &LocalModelInfo) -> bool) {
        let now = Instant::now();
        for (key, job) in self.lock().jobs.iter_mut() {
            if let State::Failed { retry_at } = &mut job.state
                && retry_at.is_none_or(|at| at > now)
                && changed(key, &job.entry)
            {
                tracing::info!(key = %key, "its entry or the spec changed; the failed download is tried again");
                *retry_at = Some(now);
            }
        }
    }

    /// Stops everything (the LocalModelNode was deleted).
    pub fn cancel_all(&self) {
        let keys: Vec<String> = self.lock().jobs.keys().cloned().collect();
        for key in keys {
            self.cancel(&key);
        }
    }

    /// When the earliest failed download is due to be tried again (bad input never is).
    pub fn next_retry(&self) -> Option<Instant> {
        self.lock()
            .jobs
            .values()
            .filter_map(|j| match j.state {
                State::Failed { retry_at } => retry_at,
                _ => None,
            })
            .min()
    }

    /// Every storage key with a download in any state (queued, running, failed).
    pub fn keys(&self) -> BTreeSet<String> {
        self.lock().jobs.keys().cloned().collect()
    }

    /// Stops the download of `key` (a model removed from the spec) and forgets a failed one;
    /// a partial download's staging stays for the grace period, so putting the model back
    /// resumes it.
    pub fn cancel(&self, key: &str) {
        let mut s = self.lock();
        s.queue.retain(|k| k != key);
        if let Some(job) = s.jobs.get(key) {
            job.cancel.store(true, Relaxed);
            if !matches!(job.state, State::Running) {
                s.jobs.remove(key);
            }
        }
    }

    /// What each download is doing, for the plan.
    pub fn snapshot(&self) -> BTreeMap<String, Download> {
        self.lock()
            .jobs
            .iter()
            .map(|(k, j)| {
                let d = match &j.state {
                    State::Queued => Download::Queued,
                    State::Running => Download::Running {
                        bytes: j.progress.snapshot().done_bytes,
                    },
                    State::Failed { retry_at } => Download::Failed {
                        retry_at: *retry_at,
                    },
                };
                (k.clone(), d)
            })
            .collect()
    }

    /// Storage keys with a download queued or running.
    pub fn busy(&self) -> BTreeSet<String> {
        self.lock()
            .jobs
            .iter()
            .filter(|(_, j)| matches!(j.state, State::Queued | State::Running))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Progress of running downloads: (key, uri, bytes done, bytes total).
    pub fn progress(&self) -> Vec<(String, String, u64, u64)> {
        self.lock()
            .jobs
            .iter()
            .filter(|(_, j)| matches!(j.state, State::Running))
            .map(|(k, j)| {
                let p = j.progress.snapshot();
                (
                    k.clone(),
                    modelpull::redact_str(&j.entry.source_model_uri),
                    p.done_bytes,
                    p.total_bytes,
                )
            })
            .collect()
    }

    /// Reports since the last call.
    pub fn take_reports(&self) -> Vec<Report> {
        std::mem::take(&mut self.lock().reports)
    }

    /// Cancels everything and waits (up to `timeout`) for the workers: each running pull stops
    /// at a chunk boundary with its journal consistent, to resume on the next start.
    pub fn shutdown(&self, timeout: Duration) {
        {
            let mut s = self.lock();
            s.stopping = true;
            s.queue.clear();
            for job in s.jobs.values() {
                job.cancel.store(true, Relaxed);
            }
        }
        self.inner.wake_workers.notify_all();
        let deadline = Instant::now() + timeout;
        let handles = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|p| p.into_inner()));
        for h in handles {
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
    }

    /// A worker thread: runs queued downloads, one at a time, until shutdown.
    fn work(&self) {
        loop {
            if self.run_next() {
                continue;
            }
            let mut s = self.lock();
            while s.queue.is_empty() && !s.stopping {
                s = self
                    .inner
                    .wake_workers
                    .wait(s)
                    .unwrap_or_else(|p| p.into_inner());
            }
            if s.stopping {
                return;
            }
        }
    }

    /// Runs the next queued download to its end on this thread and records how it ended;
    /// `false` when none is queued (or everything is stopping).
    pub fn run_next(&self) -> bool {
        let (key, entry, env, cancel, progress) = {
            let mut s = self.lock();
            if s.stopping {
                return false;
            }
            let key = loop {
                match s.queue.pop_front() {
                    None => return false,
                    Some(key) if s.jobs.contains_key(&key) => break key,
                    // Cancelled while queued.
                    Some(_) => {}
                }
            };
            let Some(job) = s.jobs.get_mut(&key) else {
                return false;
            };
            job.state = State::Running;
            job.attempts += 1;
            let started = (
                key.clone(),
                job.entry.clone(),
                job.env.clone(),
                job.cancel.clone(),
                job.progress.clone(),
            );
            s.reports.push(Report::Started {
                key,
                uri: modelpull::redact_str(&started.1.source_model_uri),
            });
            started
        };
        let _ = self.inner.changed.send(());
        let started = Instant::now();
        let result = self.inner.fetch.fetch(Order {
            key: &key,
            entry: &entry,
            env: &env,
            cancel: &cancel,
            progress: &progress,
        });
        let mut s = self.lock();
        let uri = modelpull::redact_str(&entry.source_model_uri);
        match result {
            _ if cancel.load(Relaxed) => {
                s.jobs.remove(&key);
            }
            Ok(pulled) => {
                s.jobs.remove(&key);
                s.reports.push(Report::Done {
                    key: key.clone(),
                    uri,
                    pulled,
                    seconds: started.elapsed().as_secs_f64(),
                });
            }
            Err(error) => s.record_failure(&self.inner.retry, &key, error),
        }
        drop(s);
        let _ = self.inner.changed.send(());
        true
    }
}

impl Shared {
    /// Marks the download of `key` failed as its class says (tried again after a backoff, or
    /// once something changes) and reports it.
    fn record_failure(&mut self, retry: &RetryPolicy, key: &str, error: Error) {
        let Some(job) = self.jobs.get_mut(key) else {
            return;
        };
        let class = error.class();
        let retry_in = retry.retry_in(class, job.attempts);
        job.state = State::Failed {
            retry_at: retry_in.map(|wait| Instant::now() + wait),
        };
        let uri = modelpull::redact_str(&job.entry.source_model_uri);
        let class = class.metric_label();
        match retry_in {
            Some(wait) => {
                tracing::warn!(model = %uri, error = %error, class, retry_in_s = wait.as_secs(), "download failed; it will be tried again")
            }
            None => {
                tracing::warn!(model = %uri, error = %error, class, "download failed; it waits for its entry or the spec to change")
            }
        }
        self.reports.push(Report::Failed(Box::new(Failure {
            key: key.to_owned(),
            uri,
            error,
            retry_in,
            credentials: job.source.clone(),
        })));
    }
}

/// Lists, checks space, pulls (adopting what is in the folder already).
fn pull(settings: &Settings, metrics: &Metrics, order: Order<'_>) -> Result<Pulled, Error> {
    let Order {
        key,
        entry,
        env,
        cancel,
        progress,
    } = order;
    // The buffers are one pool for every download (`Options::shared_buffers`); only the
    // bandwidth cap is split.
    let mut opts = settings.engine.clone();
    let share = settings.concurrent.max(1);
    opts.limit_rate = opts.limit_rate.map(|r| (r / share as u64).max(1));
    opts.proxy = env.proxy().map_err(Error::Proxy)?;
    if let Some(ca) = &settings.proxy_ca {
        opts.trust_proxy_ca(ca.clone());
    }
    let uri = &entry.source_model_uri;
    let control = Control::new(&opts.client())?.with_cancel(cancel.clone());
    let manifest = store::resolve(uri, env, &control)?;
    let dest = settings.models.join(key);
    let survey = modelpull::adopt::survey(&manifest.files, &dest);
    if manifest.total_size().is_some() {
        check_space(&survey, &settings.models, &dest)?;
    }
    opts.apply_tls(&manifest);
    let mut targets = manifest.files;
    // Peers' bytes are taken only for files with a cryptographic digest to check them by.
    let share = if targets.iter().any(modelpull::Target::vouched) {
        settings
            .group
            .as_ref()
            .and_then(|g| g.join(key, entry, opts.range_size))
    } else {
        None
    };
    if let Some(share) = &share {
        for t in &mut targets {
            t.add_mirrors(&share.mirrors);
        }
        opts.origin_gate = share
            .stripes
            .clone()
            .map(|s| s as Arc<dyn modelpull::mirror::OriginGate>);
        opts.distrust = Some(share.distrust.clone());
        // Peers serve only flushed chunks: flushing often keeps them close behind this pull.
        opts.checkpoint_interval = opts.checkpoint_interval.min(SHARED_CHECKPOINT);
    }
    let request = PullRequest {
        targets,
        dest,
        unpack: true,
        adopt: true,
        sources: vec![modelpull::redact_str(uri)],
    };
    let cx = Context {
        metrics: metrics.clone(),
        progress: progress.clone(),
        cancel: cancel.clone(),
    };
    let pulled = modelpull::pull(&request, &opts, &cx);
    if let Some(share) = share {
        share.finish(pulled.is_ok());
    }
    let report =
        pulled.map_err(|e| copy_did_not_fit(e, &survey, &settings.models, &request.dest))?;
    if let Some(a) = &report.adoption {
        tracing::info!(
            dest = %report.destination.display(),
            adopted_files = a.adopted_files,
            adopted_bytes = a.adopted_bytes,
            fetched_files = a.fetched_files,
            fetched_bytes = a.fetched_bytes,
            repair = ?a.repair,
            verify_s = a.verify_seconds,
            "adopted the folder in place"
        );
    }
    // Where the bytes came from, host by host (origins and peers): what a node group's
    // sharing did for this download.
    let from: Vec<String> = report
        .connections
        .iter()
        .filter(|h| h.bytes > 0)
        .map(|h| format!("{}={}", h.host, h.bytes))
        .collect();
    tracing::info!(
        dest = %report.destination.display(),
        bytes = report.total_bytes,
        downloaded_bytes = report.downloaded_bytes,
        from = from.join(","),
        seconds = report.seconds,
        "pulled"
    );
    Ok(Pulled {
        bytes: report.total_bytes,
        adopted_bytes: report.adoption.map_or(0, |a| a.adopted_bytes),
    })
}

/// Fails with how much is needed when the folder's missing bytes do not fit on the disk. A
/// folder the agent cannot write to is repaired by a whole copy (see
/// [`modelpull::adopt::Survey::bytes_needed`]); the message says how to avoid that. A folder
/// with nothing missing is let through whatever the copy would take: checking it needs no
/// room, most such folders are intact, and should a damaged file force the copy, a full disk
/// ends that pull (its staging directory emptied) with the disk as the cause, retried as such.
fn check_space(survey: &modelpull::adopt::Survey, models: &Path, dest: &Path) -> Result<(), Error> {
    let need = survey.bytes_needed();
    if need == 0 || survey.missing_bytes == 0 {
        return Ok(());
    }
    let free = crate::disk::free_bytes(models).map_err(Error::ModelsRoot)?;
    if need <= free {
        return Ok(());
    }
    let human = modelpull::units::human_bytes;
    let mut message = format!(
        "not enough disk space: the model needs {} and {} is free on {}",
        human(need),
        human(free),
        models.display()
    );
    if survey.present_bytes > 0 {
        message.push_str(&format!(
            "; {} of it is in {} already",
            human(survey.present_bytes),
            dest.display()
        ));
        if !survey.writable {
            message.push_str(&format!(
                ", which the agent cannot write to, so it is copied whole to be repaired: give the folder to the agent (chown -R 65532:65532 {}) to repair it in place",
                dest.display()
            ));
        }
    }
    Err(Error::NoSpace(message))
}

/// A full disk while repairing a folder the agent cannot write to is the whole copy that such a
/// repair builds (the copy of what is present was let through [`check_space`] as it may not be
/// needed): said once, with the fix that avoids the copy, and retried as a full disk, not at the
/// normal pace. Any other error is the engine's.
fn copy_did_not_fit(
    error: modelpull::Error,
    survey: &modelpull::adopt::Survey,
    models: &Path,
    dest: &Path,
) -> Error {
    let full = matches!(&error, modelpull::Error::Local { source, .. }
        if matches!(source.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded));
    if !full || survey.writable || survey.present_bytes == 0 {
        return Error::Engine(error);
    }
    let human = modelpull::units::human_bytes;
    let free = crate::disk::free_bytes(models).map_or_else(|_| "?".into(), human);
    Error::CopyDoesNotFit(format!(
        "not enough disk space to repair {dest}: the agent cannot write to this folder (its \
         files belong to another user, as KServe's download Jobs leave them), so a damaged or \
         missing file is repaired by a verified copy of the whole model ({need}), which does not \
         fit on {models} ({free} free once the copy was removed; {error}). Give the folder to \
         the agent and it repairs only the damaged files, in place: on the node, chown -R \
         65532:65532 {dest} (or the whole hostPath folder), or an init container running as \
         root that does the same (a pod fsGroup does not change a hostPath's owner)",
        dest = dest.display(),
        need = human(survey.present_bytes + survey.missing_bytes),
        models = models.display(),
    ))
}

#[cfg(test)]
mod tests {
    use crate::credentials::CredentialError;
    use crate::fetch::fake;

    use super::*;

    fn entry(uri: &str) -> LocalModelInfo {
        LocalModelInfo {
            source_model_uri: uri.into(),
            model_name: "m".into(),
            ..Default::default()
        }
    }

    fn sa() -> Source {
        Source::ServiceAccount {
            namespace: "jobs".into(),
            name: "hf-puller".into(),
            secrets: vec!["hf-secret".into()],
        }
    }

    fn credentials() -> Credentials {
        Credentials {
            env: [("HF_TOKEN", "hf_value")].into_iter().collect(),
            source: sa(),
        }
    }

    /// Downloads without workers whose fetch fails as the URI says.
    fn failing() -> Downloads {
        let fetch = fake::fetch(|order| {
            let uri = order.entry.source_model_uri.clone();
            Err(Error::Engine(match uri.as_str() {
                "ftp://x/bad" => modelpull::Error::InvalidSource {
                    input: uri,
                    reason: "unsupported scheme `ftp`".into(),
                },
                "hf://acme/denied" => modelpull::Error::Auth {
                    uri,
                    message: "acme/denied is a gated repository".into(),
                },
                _ => modelpull::Error::Store {
                    uri,
                    message: "the Hub answered HTTP 503".into(),
                },
            }))
        });
        let (tx, _) = tokio::sync::mpsc::unbounded_channel();
        Downloads::start(fetch, 0, RetryPolicy::default(), tx)
    }

    fn failures(downloads: &Downloads) -> Vec<Failure> {
        downloads
            .take_reports()
            .into_iter()
            .filter_map(|r| match r {
                Report::Failed(f) => Some(*f),
                _ => None,
            })
            .collect()
    }

    /// Seconds from now until a failed download of `key` is due; `None` when it never is.
    fn due_in(downloads: &Downloads, key: &str) -> Option<u64> {
        match downloads.snapshot().get(key) {
            Some(Download::Failed { retry_at }) => retry_at.map(|at| {
                (at.saturating_duration_since(Instant::now()).as_secs_f64()).round() as u64
            }),
            other => panic!("{key}: not failed but {other:?}"),
        }
    }

    #[test]
    fn each_class_fails_into_its_own_wait() {
        let d = failing();
        for uri in ["ftp://x/bad", "hf://acme/denied", "hf://acme/flaky"] {
            d.start_download(uri, entry(uri), credentials());
        }
        assert!(d.run_next() && d.run_next() && d.run_next());
        assert!(
            !d.run_next(),
            "nothing left: no failure is queued again by itself"
        );
        assert_eq!(
            due_in(&d, "ftp://x/bad"),
            None,
            "bad input waits for a change"
        );
        assert_eq!(due_in(&d, "hf://acme/denied"), Some(120));
        assert_eq!(due_in(&d, "hf://acme/flaky"), Some(30));
        let next = d.next_retry().expect("the transient one");
        assert_eq!(
            next.saturating_duration_since(Instant::now())
                .as_secs_f64()
                .round(),
            30.0
        );
        let waits: Vec<(String, Option<u64>)> = failures(&d)
            .into_iter()
            .map(|f| (f.key, f.retry_in.map(|w| w.as_secs())))
            .collect();
        assert_eq!(
            waits,
            [
                ("ftp://x/bad".to_owned(), None),
                ("hf://acme/denied".to_owned(), Some(120)),
                ("hf://acme/flaky".to_owned(), Some(30)),
            ]
        );
    }

    #[test]
    fn a_change_releases_a_failure_and_its_attempts_still_count() {
        let d = failing();
        for uri in ["ftp://x/bad", "hf://acme/flaky"] {
            d.start_download(uri, entry(uri), credentials());
            assert!(d.run_next());
        }
        d.release(|_, _| false);
        assert_eq!(due_in(&d, "ftp://x/bad"), None, "nothing changed");
        d.release(|key, e| key == "ftp://x/bad" && e.source_model_uri == "ftp://x/bad");
        assert_eq!(due_in(&d, "ftp://x/bad"), Some(0), "due now");
        assert_eq!(due_in(&d, "hf://acme/flaky"), Some(30), "not released");
        d.release(|_, _| true);
        for uri in ["ftp://x/bad", "hf://acme/flaky"] {
            d.start_download(uri, entry(uri), credentials());
            assert!(d.run_next());
        }
        assert_eq!(due_in(&d, "ftp://x/bad"), None, "waits again");
        assert_eq!(
            due_in(&d, "hf://acme/flaky"),
            Some(60),
            "the second attempt"
        );
    }

    #[test]
    fn free_space_counts_only_the_bytes_still_missing() {
        use modelpull::adopt::Survey;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("0123456789abcdef");
        let free = crate::disk::free_bytes(dir.path()).unwrap();
        let fits = Survey {
            present_bytes: u64::MAX / 2,
            missing_bytes: free / 2,
            writable: true,
        };
        assert!(
            check_space(&fits, dir.path(), &dest).is_ok(),
            "what is in place needs no room"
        );
        let complete = Survey {
            present_bytes: u64::MAX / 2,
            missing_bytes: 0,
            writable: false,
        };
        assert_eq!(complete.bytes_needed(), u64::MAX / 2);
        assert!(
            check_space(&complete, dir.path(), &dest).is_ok(),
            "nothing missing: checked first, copied only if damaged"
        );
        let copied = Survey {
            writable: false,
            ..fits
        };
        let Err(Error::NoSpace(message)) = check_space(&copied, dir.path(), &dest) else {
            panic!("a whole copy of a model larger than the disk cannot fit");
        };
        assert!(
            message.starts_with("not enough disk space: the model needs "),
            "{message}"
        );
        assert!(
            message.contains(&format!("chown -R 65532:65532 {}", dest.display())),
            "{message}"
        );
    }

    #[test]
    fn a_repair_copy_that_fills_the_disk_names_the_fix_and_waits_long() {
        use modelpull::adopt::Survey;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("0123456789abcdef");
        let local = |errno: rustix::io::Errno| modelpull::Error::Local {
            op: "write",
            path: dir
                .path()
                .join(".0123456789abcdef.modelpull-staging/model.safetensors"),
            source: std::io::Error::from_raw_os_error(errno.raw_os_error()),
        };
        use rustix::io::Errno;
        let kserves = Survey {
            present_bytes: 10 << 20,
            missing_bytes: 0,
            writable: false,
        };
        let error = copy_did_not_fit(local(Errno::NOSPC), &kserves, dir.path(), &dest);
        let Error::CopyDoesNotFit(message) = &error else {
            panic!("{error}");
        };
        for named in [
            format!("not enough disk space to repair {}", dest.display()),
            "a verified copy of the whole model (10.0 MiB)".into(),
            format!("chown -R 65532:65532 {}", dest.display()),
            "an init container running as root".into(),
            "No space left on device".into(),
        ] {
            assert!(message.contains(&named), "{named}: {message}");
        }
        assert_eq!(error.class(), Class::NoSpace);
        let d = failing();
        d.start_download("hf://acme/kserve", entry("hf://acme/kserve"), credentials());
        d.fail("hf://acme/kserve", entry("hf://acme/kserve"), error);
        let notes: Vec<String> = failures(&d).iter().map(Failure::note).collect();
        assert!(
            notes.last().unwrap().ends_with("; trying again in 600 s"),
            "{notes:?}"
        );

        // Not the copy: a folder the agent writes to, nothing present, or another error.
        let own = Survey {
            writable: true,
            ..kserves
        };
        let fresh = Survey {
            present_bytes: 0,
            missing_bytes: 10 << 20,
            writable: false,
        };
        for (errno, survey) in [
            (Errno::NOSPC, own),
            (Errno::NOSPC, fresh),
            (Errno::ACCESS, kserves),
        ] {
            let error = copy_did_not_fit(local(errno), &survey, dir.path(), &dest);
            assert!(matches!(error, Error::Engine(_)), "{error}");
        }
        assert_eq!(
            copy_did_not_fit(local(Errno::DQUOT), &kserves, dir.path(), &dest).class(),
            Class::NoSpace,
            "a quota is a full disk too"
        );
    }

    #[test]
    fn notes_say_what_follows_and_which_credentials_were_refused() {
        let d = failing();
        for uri in ["ftp://x/bad", "hf://acme/denied", "hf://acme/flaky"] {
            d.start_download(uri, entry(uri), credentials());
            assert!(d.run_next());
        }
        d.fail(
            "s3://b/m",
            entry("s3://b/m"),
            Error::from(CredentialError::MissingSecret {
                namespace: "jobs".into(),
                name: "storage-config".into(),
            }),
        );
        let notes: Vec<String> = failures(&d).iter().map(Failure::note).collect();
        assert_eq!(
            notes,
            [
                "ftp://x/bad: invalid source `ftp://x/bad`: unsupported scheme `ftp`; not tried again until its entry or the LocalModelNode's spec changes",
                "hf://acme/denied: hf://acme/denied: access denied: acme/denied is a gated repository; credentials used: ServiceAccount jobs/hf-puller (Secrets hf-secret); trying again in 120 s",
                "hf://acme/flaky: hf://acme/flaky: the Hub answered HTTP 503; trying again in 30 s",
                "s3://b/m: credentials: Secret jobs/storage-config does not exist; trying again in 120 s",
            ]
        );
        assert!(notes.iter().all(|n| !n.contains("hf_value")));
    }
}
