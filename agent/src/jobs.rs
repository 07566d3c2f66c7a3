//! Downloads run in-process: a few worker threads, each running one engine pull at a time
//! (the engine starts its own pinned cores for it), instead of one Kubernetes Job with a
//! Python pod per model.
//!
//! A download lists its source, checks the free space against the listed size, and pulls into
//! `models/<storage key>` (staged beside it, published atomically, resumable from its
//! journals). A failure is retried with exponential backoff (30 s doubling to 10 minutes),
//! never left for a human. Connections, buffer memory and bandwidth are the node's, shared
//! between the downloads running at once. Every change wakes the controller, which reports it. Credentials
//! arrive in an in-memory [`Env`] and go nowhere else.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use modelpull::metrics::Metrics;
use modelpull::progress::Progress;
use modelpull::store::{self, Control, Env};
use modelpull::{Context, Options, PullRequest};

use crate::crd::LocalModelInfo;
use crate::plan::Download;

/// How downloads run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `<root>/models`.
    pub models: PathBuf,
    /// Models downloading at once.
    pub concurrent: usize,
    /// Engine options for one pull; connections and rate are split between concurrent pulls.
    pub engine: Options,
    pub retry_base: Duration,
    pub retry_cap: Duration,
}

/// Something the controller should tell the cluster about (as an Event).
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    Started {
        key: String,
        uri: String,
    },
    Done {
        key: String,
        uri: String,
        bytes: u64,
        seconds: f64,
    },
    Failed {
        key: String,
        uri: String,
        message: String,
        retry_in: Duration,
    },
}

#[derive(Debug)]
enum State {
    Queued,
    Running,
    Failed { retry_at: Instant },
}

#[derive(Debug)]
struct Job {
    entry: LocalModelInfo,
    env: Env,
    state: State,
    attempts: u32,
    cancel: Arc<AtomicBool>,
    progress: Arc<Progress>,
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
    settings: Settings,
    metrics: Metrics,
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
    /// Starts the workers. `changed` receives a message after every state change.
    pub fn start(
        settings: Settings,
        metrics: Metrics,
        changed: tokio::sync::mpsc::UnboundedSender<()>,
    ) -> Self {
        let workers = settings.concurrent.max(1);
        let inner = Arc::new(Inner {
            settings,
            metrics,
            shared: Mutex::new(Shared::default()),
            wake_workers: Condvar::new(),
            changed,
        });
        let handles = (0..workers)
            .map(|i| {
                let inner = inner.clone();
                std::thread::Builder::new()
                    .name(format!("download-{i}"))
                    .spawn(move || worker(&inner))
                    .expect("spawn a download worker")
            })
            .collect();
        Self {
            inner,
            workers: Arc::new(Mutex::new(handles)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.inner.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues (or queues again, after a failure) the download of `key`.
    pub fn start_download(&self, key: &str, entry: LocalModelInfo, env: Env) {
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
        s.jobs.insert(
            key.to_owned(),
            Job {
                entry,
                env,
                state: State::Queued,
                attempts,
                cancel: Arc::new(AtomicBool::new(false)),
                progress: Arc::new(Progress::default()),
            },
        );
        s.queue.push_back(key.to_owned());
        drop(s);
        self.inner.wake_workers.notify_one();
    }

    /// Records that the download of `key` could not even start (its credentials or its
    /// folder): it counts as failed, with the same backoff and report as a failed pull.
    pub fn fail(&self, key: &str, entry: LocalModelInfo, message: String) {
        let mut s = self.lock();
        let attempts = s.jobs.get(key).map_or(0, |j| j.attempts) + 1;
        s.jobs.insert(
            key.to_owned(),
            Job {
                entry,
                env: Env::default(),
                state: State::Queued,
                attempts,
                cancel: Arc::new(AtomicBool::new(false)),
                progress: Arc::new(Progress::default()),
            },
        );
        s.record_failure(&self.inner.settings, key, message);
    }

    /// Stops everything (the LocalModelNode was deleted).
    pub fn cancel_all(&self) {
        let keys: Vec<String> = self.lock().jobs.keys().cloned().collect();
        for key in keys {
            self.cancel(&key);
        }
    }

    /// When the earliest failed download is due to be tried again.
    pub fn next_retry(&self) -> Option<Instant> {
        self.lock()
            .jobs
            .values()
            .filter_map(|j| match j.state {
                State::Failed { retry_at, .. } => Some(retry_at),
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
                    State::Failed { retry_at, .. } => Download::Failed {
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
}

fn worker(inner: &Inner) {
    loop {
        let (key, entry, env, cancel, progress) = {
            let mut s = inner.shared.lock().unwrap_or_else(|p| p.into_inner());
            let key = loop {
                if s.stopping {
                    return;
                }
                if let Some(k) = s.queue.pop_front() {
                    break k;
                }
                s = inner
                    .wake_workers
                    .wait(s)
                    .unwrap_or_else(|p| p.into_inner());
            };
            let Some(job) = s.jobs.get_mut(&key) else {
                continue;
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
                key: key.clone(),
                uri: modelpull::redact_str(&started.1.source_model_uri),
            });
            started
        };
        let _ = inner.changed.send(());
        let started = Instant::now();
        let result = pull(inner, &key, &entry, &env, cancel.clone(), progress);
        let mut s = inner.shared.lock().unwrap_or_else(|p| p.into_inner());
        let uri = modelpull::redact_str(&entry.source_model_uri);
        match result {
            _ if cancel.load(Relaxed) => {
                s.jobs.remove(&key);
            }
            Ok(bytes) => {
                s.jobs.remove(&key);
                s.reports.push(Report::Done {
                    key: key.clone(),
                    uri,
                    bytes,
                    seconds: started.elapsed().as_secs_f64(),
                });
            }
            Err(message) => s.record_failure(&inner.settings, &key, message),
        }
        drop(s);
        let _ = inner.changed.send(());
    }
}

impl Shared {
    /// Marks the download of `key` failed: retried after the backoff its attempts so far
    /// give, and reported.
    fn record_failure(&mut self, settings: &Settings, key: &str, message: String) {
        let Some(job) = self.jobs.get_mut(key) else {
            return;
        };
        let retry_in = backoff(settings, job.attempts);
        job.state = State::Failed {
            retry_at: Instant::now() + retry_in,
        };
        let uri = modelpull::redact_str(&job.entry.source_model_uri);
        tracing::warn!(model = %uri, error = %message, retry_in_s = retry_in.as_secs(), "download failed; it will be retried");
        self.reports.push(Report::Failed {
            key: key.to_owned(),
            uri,
            message,
            retry_in,
        });
    }
}

fn backoff(settings: &Settings, attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(16);
    settings
        .retry_base
        .saturating_mul(1 << exp)
        .min(settings.retry_cap)
}

/// Lists, checks space, pulls. Returns the bytes of the model, or a message for the status
/// Event (which names what failed and what to do).
fn pull(
    inner: &Inner,
    key: &str,
    entry: &LocalModelInfo,
    env: &Env,
    cancel: Arc<AtomicBool>,
    progress: Arc<Progress>,
) -> Result<u64, String> {
    let settings = &inner.settings;
    let mut opts = settings.engine.clone();
    let share = settings.concurrent.max(1);
    opts.connections = (opts.connections / share).max(1);
    opts.memory_limit = (opts.memory_limit / share).max((opts.connections + 2) * opts.chunk_size);
    opts.connections_per_host = opts.connections_per_host.min(opts.connections);
    opts.limit_rate = opts.limit_rate.map(|r| (r / share as u64).max(1));
    opts.proxy = env.proxy()?;
    let uri = &entry.source_model_uri;
    let control = Control::new(&opts.client())
        .map_err(|e| e.to_string())?
        .with_cancel(cancel.clone());
    let manifest = store::resolve(uri, env, &control).map_err(|e| e.to_string())?;
    if let Some(need) = manifest.total_size() {
        let free =
            crate::disk::free_bytes(&settings.models).map_err(|e| format!("models root: {e}"))?;
        if need > free {
            return Err(format!(
                "not enough disk space: the model needs {} and {} is free on {}",
                modelpull::units::human_bytes(need),
                modelpull::units::human_bytes(free),
                settings.models.display()
            ));
        }
    }
    opts.apply_tls(&manifest);
    let request = PullRequest {
        targets: manifest.files,
        dest: settings.models.join(key),
        unpack: true,
        sources: vec![modelpull::redact_str(uri)],
    };
    let cx = Context {
        metrics: inner.metrics.clone(),
        progress,
        cancel,
    };
    modelpull::pull(&request, &opts, &cx)
        .map(|r| r.total_bytes)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap() {
        let s = Settings {
            models: PathBuf::new(),
            concurrent: 1,
            engine: Options::default(),
            retry_base: Duration::from_secs(30),
            retry_cap: Duration::from_secs(600),
        };
        let got: Vec<u64> = (1..=7).map(|a| backoff(&s, a).as_secs()).collect();
        assert_eq!(got, [30, 60, 120, 240, 480, 600, 600]);
        assert_eq!(backoff(&s, 1000).as_secs(), 600);
    }
}
