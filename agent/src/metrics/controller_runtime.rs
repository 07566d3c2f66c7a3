//! controller-runtime's metric families, as KServe's agent serves them on `/metrics`, measured
//! on kube's controller: dashboards and alerts written for KServe's agent keep working.
//!
//! Names, labels, help texts and histogram buckets are controller-runtime v0.22.5's
//! (`pkg/internal/controller/metrics`, `pkg/internal/metrics/workqueue.go`), with KServe's
//! controller name, `localmodelnode` (the builder's lower-cased kind). Every value is measured,
//! by wrapping the reconciler and the error policy and by watching what goes into kube's
//! scheduler; where kube's controller and client-go's work queue differ, the value says what
//! happened here:
//!
//! - `controller_runtime_reconcile_total{result}`: `error`, or the action returned: `success`
//!   (await a change), `requeue` (at once), `requeue_after` (later). Exact.
//! - `controller_runtime_reconcile_errors_total`, `controller_runtime_reconcile_time_seconds`,
//!   `controller_runtime_active_workers`: exact. `controller_runtime_max_concurrent_reconciles`
//!   is the controller's concurrency (1, as KServe's).
//! - `controller_runtime_terminal_reconcile_errors_total`: 0, truthfully: every reconcile error
//!   here is retried; none is terminal.
//! - `workqueue_adds_total`, `workqueue_depth`, `workqueue_queue_duration_seconds`: a request
//!   (a watch event, a download's wake-up) counts as an add unless one is already waiting for
//!   the same object, as client-go's queue counts; its wait ends when the reconcile starts. A
//!   requeue is timed inside kube's scheduler, out of sight: it is counted as an add when its
//!   reconcile starts, and its wait is not observed (so the histogram holds requests only).
//! - `workqueue_work_duration_seconds`: the reconcile's time, as client-go's from `Get` to
//!   `Done`. `workqueue_retries_total`: the error policy's requeues (client-go's rate-limited
//!   adds).
//!
//! Not served: `controller_runtime_reconcile_panics_total` (a panic ends the agent),
//! `workqueue_unfinished_work_seconds` and `workqueue_longest_running_processor_seconds`, the
//! client-go REST client families, and Go's runtime families (`go_*`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// KServe's controller's name (controller-runtime's builder: the kind, lower-cased).
pub const CONTROLLER: &str = "localmodelnode";

/// controller-runtime's buckets for `controller_runtime_reconcile_time_seconds`.
const RECONCILE_BUCKETS: [f64; 40] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9,
    1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 15.0, 20.0,
    25.0, 30.0, 40.0, 50.0, 60.0,
];

/// How a reconcile ended, in controller-runtime's `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Requeue,
    RequeueAfter,
    Error,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Requeue => "requeue",
            Self::RequeueAfter => "requeue_after",
            Self::Error => "error",
        }
    }

    const ALL: [Self; 4] = [
        Self::Error,
        Self::RequeueAfter,
        Self::Requeue,
        Self::Success,
    ];
}

/// The families, with the controller's (and its queue's) labels set.
#[derive(Debug, Clone)]
pub struct ControllerMetrics {
    reconcile_total: IntCounterVec,
    reconcile_errors: IntCounter,
    terminal_errors: IntCounter,
    reconcile_time: Histogram,
    max_concurrent: IntGauge,
    active_workers: IntGauge,
    adds: IntCounter,
    depth: IntGauge,
    queue_duration: Histogram,
    work_duration: Histogram,
    retries: IntCounter,
    /// Objects with a request waiting, since when.
    waiting: Arc<Mutex<HashMap<String, Instant>>>,
}

impl ControllerMetrics {
    /// Registers the families on `registry`; `reconcile_total` by result and the workers'
    /// maximum are set once [`Self::started`] says the controller runs.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let c = [CONTROLLER];
        let queue = [CONTROLLER, CONTROLLER];
        let reconcile_total = IntCounterVec::new(
            Opts::new(
                "controller_runtime_reconcile_total",
                "Total number of reconciliations per controller",
            ),
            &["controller", "result"],
        )?;
        let reconcile_errors = IntCounterVec::new(
            Opts::new(
                "controller_runtime_reconcile_errors_total",
                "Total number of reconciliation errors per controller",
            ),
            &["controller"],
        )?;
        let terminal_errors = IntCounterVec::new(
            Opts::new(
                "controller_runtime_terminal_reconcile_errors_total",
                "Total number of terminal reconciliation errors per controller",
            ),
            &["controller"],
        )?;
        let reconcile_time = HistogramVec::new(
            HistogramOpts::new(
                "controller_runtime_reconcile_time_seconds",
                "Length of time per reconciliation per controller",
            )
            .buckets(RECONCILE_BUCKETS.to_vec()),
            &["controller"],
        )?;
        let max_concurrent = IntGaugeVec::new(
            Opts::new(
                "controller_runtime_max_concurrent_reconciles",
                "Maximum number of concurrent reconciles per controller",
            ),
            &["controller"],
        )?;
        let active_workers = IntGaugeVec::new(
            Opts::new(
                "controller_runtime_active_workers",
                "Number of currently used workers per controller",
            ),
            &["controller"],
        )?;
        let adds = IntCounterVec::new(
            Opts::new(
                "workqueue_adds_total",
                "Total number of adds handled by workqueue",
            ),
            &["name", "controller"],
        )?;
        let depth = IntGaugeVec::new(
            Opts::new(
                "workqueue_depth",
                "Current depth of workqueue by workqueue and priority",
            ),
            &["name", "controller", "priority"],
        )?;
        // client-go's buckets: 10ns to 1000s, ten times each.
        let queue_buckets = prometheus::exponential_buckets(10e-9, 10.0, 12)?;
        let queue_duration = HistogramVec::new(
            HistogramOpts::new(
                "workqueue_queue_duration_seconds",
                "How long in seconds an item stays in workqueue before being requested",
            )
            .buckets(queue_buckets.clone()),
            &["name", "controller"],
        )?;
        let work_duration = HistogramVec::new(
            HistogramOpts::new(
                "workqueue_work_duration_seconds",
                "How long in seconds processing an item from workqueue takes.",
            )
            .buckets(queue_buckets),
            &["name", "controller"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "workqueue_retries_total",
                "Total number of retries handled by workqueue",
            ),
            &["name", "controller"],
        )?;
        registry.register(Box::new(reconcile_total.clone()))?;
        registry.register(Box::new(reconcile_errors.clone()))?;
        registry.register(Box::new(terminal_errors.clone()))?;
        registry.register(Box::new(reconcile_time.clone()))?;
        registry.register(Box::new(max_concurrent.clone()))?;
        registry.register(Box::new(active_workers.clone()))?;
        registry.register(Box::new(adds.clone()))?;
        registry.register(Box::new(depth.clone()))?;
        registry.register(Box::new(queue_duration.clone()))?;
        registry.register(Box::new(work_duration.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        Ok(Self {
            reconcile_errors: reconcile_errors.with_label_values(&c),
            terminal_errors: terminal_errors.with_label_values(&c),
            reconcile_time: reconcile_time.with_label_values(&c),
            max_concurrent: max_concurrent.with_label_values(&c),
            active_workers: active_workers.with_label_values(&c),
            adds: adds.with_label_values(&queue),
            depth: depth.with_label_values(&[CONTROLLER, CONTROLLER, ""]),
            queue_duration: queue_duration.with_label_values(&queue),
            work_duration: work_duration.with_label_values(&queue),
            retries: retries.with_label_values(&queue),
            reconcile_total,
            waiting: Arc::default(),
        })
    }

    /// The controller starts with `concurrency` workers: every series is served from now on
    /// (controller-runtime's `initMetrics`).
    pub fn started(&self, concurrency: u16) {
        for outcome in Outcome::ALL {
            self.total(outcome).inc_by(0);
        }
        self.terminal_errors.inc_by(0);
        self.max_concurrent.set(i64::from(concurrency));
    }

    fn total(&self, outcome: Outcome) -> IntCounter {
        self.reconcile_total
            .with_label_values(&[CONTROLLER, outcome.label()])
    }

    /// A request to reconcile `object` reached kube's scheduler (a watch event, a wake-up).
    pub fn requested(&self, object: &str) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if !waiting.contains_key(object) {
            waiting.insert(object.to_owned(), Instant::now());
            self.adds.inc();
            self.depth.inc();
        }
    }

    /// `object` is gone: a request still waiting for it will find nothing to reconcile.
    pub fn forget(&self, object: &str) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if waiting.remove(object).is_some() {
            self.depth.dec();
        }
    }

    /// A worker starts reconciling `object`; [`Reconcile::finish`] says how it ended.
    pub fn reconcile(&self, object: &str) -> Reconcile {
        let now = Instant::now();
        let queued = self
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(object);
        match queued {
            Some(at) => {
                self.depth.dec();
                self.queue_duration
                    .observe(now.duration_since(at).as_secs_f64());
            }
            // A requeue whose timer ran in kube's scheduler.
            None => self.adds.inc(),
        }
        self.active_workers.inc();
        Reconcile {
            metrics: self.clone(),
            started: now,
            finished: false,
        }
    }

    /// The error policy asked for a retry.
    pub fn retried(&self) {
        self.retries.inc();
    }
}

/// A reconcile under way; a reconcile dropped unfinished (the controller stopped) still frees
/// its worker.
#[derive(Debug)]
pub struct Reconcile {
    metrics: ControllerMetrics,
    started: Instant,
    finished: bool,
}

impl Reconcile {
    pub fn finish(mut self, outcome: Outcome) {
        let m = &self.metrics;
        let seconds = self.started.elapsed().as_secs_f64();
        m.reconcile_time.observe(seconds);
        m.work_duration.observe(seconds);
        m.total(outcome).inc();
        if outcome == Outcome::Error {
            m.reconcile_errors.inc();
        }
        m.active_workers.dec();
        self.finished = true;
    }
}

impl Drop for Reconcile {
    fn drop(&mut self) {
        if !self.finished {
            self.metrics.active_workers.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prometheus::proto::MetricFamily;

    use super::*;

    fn family<'a>(families: &'a [MetricFamily], name: &str) -> &'a MetricFamily {
        families
            .iter()
            .find(|f| f.name() == name)
            .unwrap_or_else(|| panic!("{name} is not served"))
    }

    fn labels(m: &prometheus::proto::Metric) -> Vec<(String, String)> {
        m.get_label()
            .iter()
            .map(|l| (l.name().to_owned(), l.value().to_owned()))
            .collect()
    }

    #[test]
    fn started_serves_every_series_as_controller_runtime_does() {
        let registry = Registry::new();
        let m = ControllerMetrics::new(&registry).unwrap();
        m.started(1);
        let families = registry.gather();
        let total = family(&families, "controller_runtime_reconcile_total");
        let mut results: Vec<String> = total
            .get_metric()
            .iter()
            .map(|m| {
                assert_eq!(m.get_counter().get_value(), 0.0);
                labels(m)
                    .into_iter()
                    .find(|(k, _)| k == "result")
                    .unwrap()
                    .1
            })
            .collect();
        results.sort();
        assert_eq!(results, ["error", "requeue", "requeue_after", "success"]);
        let workers = family(&families, "controller_runtime_max_concurrent_reconciles");
        assert_eq!(workers.get_metric()[0].get_gauge().get_value(), 1.0);
        assert_eq!(
            labels(&workers.get_metric()[0]),
            [("controller".to_owned(), "localmodelnode".to_owned())]
        );
        let depth = family(&families, "workqueue_depth");
        assert_eq!(
            labels(&depth.get_metric()[0]),
            [
                ("controller".to_owned(), "localmodelnode".to_owned()),
                ("name".to_owned(), "localmodelnode".to_owned()),
                ("priority".to_owned(), String::new())
            ]
        );
        let buckets = family(&families, "controller_runtime_reconcile_time_seconds").get_metric()
            [0]
        .get_histogram()
        .get_bucket()
        .len();
        assert_eq!(buckets, 40);
        let buckets = family(&families, "workqueue_work_duration_seconds").get_metric()[0]
            .get_histogram()
            .get_bucket()
            .iter()
            .map(|b| b.upper_bound())
            .collect::<Vec<_>>();
        assert_eq!(buckets.len(), 12);
        assert!((buckets[0] - 1e-8).abs() < 1e-20 && (buckets[11] - 1e3).abs() < 1e-9);
    }

    #[test]
    fn requests_waiting_for_one_object_are_one_add() {
        let registry = Registry::new();
        let m = ControllerMetrics::new(&registry).unwrap();
        m.requested("a");
        m.requested("a");
        m.requested("b");
        assert_eq!((m.adds.get(), m.depth.get()), (2, 2));
        std::thread::sleep(Duration::from_millis(20));
        let run = m.reconcile("a");
        assert_eq!((m.depth.get(), m.active_workers.get()), (1, 1));
        assert_eq!(m.queue_duration.get_sample_count(), 1);
        assert!(m.queue_duration.get_sample_sum() >= 0.02);
        // A request while "a" is reconciled waits for the next reconcile: an add of its own.
        m.requested("a");
        assert_eq!((m.adds.get(), m.depth.get()), (3, 2));
        run.finish(Outcome::RequeueAfter);
        assert_eq!(m.active_workers.get(), 0);
        m.forget("b");
        assert_eq!(m.depth.get(), 1);
    }

    #[test]
    fn a_requeue_is_an_add_when_its_reconcile_starts() {
        let registry = Registry::new();
        let m = ControllerMetrics::new(&registry).unwrap();
        m.reconcile("a").finish(Outcome::Error);
        m.retried();
        assert_eq!(m.adds.get(), 1);
        assert_eq!(
            m.queue_duration.get_sample_count(),
            0,
            "its wait is not seen"
        );
        assert_eq!(m.retries.get(), 1);
        assert_eq!(m.reconcile_errors.get(), 1);
        assert_eq!(m.total(Outcome::Error).get(), 1);
        assert_eq!(m.reconcile_time.get_sample_count(), 1);
        assert_eq!(m.work_duration.get_sample_count(), 1);
    }

    #[test]
    fn a_reconcile_dropped_unfinished_frees_its_worker() {
        let registry = Registry::new();
        let m = ControllerMetrics::new(&registry).unwrap();
        drop(m.reconcile("a"));
        assert_eq!(m.active_workers.get(), 0);
        assert_eq!(m.reconcile_time.get_sample_count(), 0);
    }
}
