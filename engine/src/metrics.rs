//! Prometheus metrics of the engine, registered on a registry the caller owns (the agent
//! exports it on `/metrics`; the CLI uses a private one).

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// The engine's counters and gauges. Cloning is cheap: metrics are shared handles.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Body bytes received from sources.
    pub downloaded_bytes: IntCounter,
    /// Ranged requests that completed.
    pub ranges: IntCounter,
    /// Requests retried after a failure.
    pub retries: IntCounter,
    /// Files whose digest did not match and were fetched again.
    pub verify_failures: IntCounter,
    /// Files verified and published.
    pub files: IntCounter,
    /// Connections open now.
    pub connections_active: IntGauge,
    /// Times a server said it was overloaded (429, 503, `SlowDown`, a refused connection)
    /// and got fewer connections.
    pub overloads: IntCounter,
    /// Of the bytes received, those that came from mirrors rather than origins.
    pub mirror_bytes: IntCounter,
    /// Mirrors dropped during a pull: they sent bytes that contradict the origin's checksums or
    /// failed too often.
    pub mirrors_dropped: IntCounter,
    /// 1 for the I/O driver in use, by driver name.
    pub driver: IntGaugeVec,
    /// Pulls that ended, by result.
    pub pulls: IntCounterVec,
}

impl Metrics {
    /// Creates the metrics and registers them on `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self::unregistered();
        registry.register(Box::new(m.downloaded_bytes.clone()))?;
        registry.register(Box::new(m.ranges.clone()))?;
        registry.register(Box::new(m.retries.clone()))?;
        registry.register(Box::new(m.verify_failures.clone()))?;
        registry.register(Box::new(m.files.clone()))?;
        registry.register(Box::new(m.connections_active.clone()))?;
        registry.register(Box::new(m.overloads.clone()))?;
        registry.register(Box::new(m.mirror_bytes.clone()))?;
        registry.register(Box::new(m.mirrors_dropped.clone()))?;
        registry.register(Box::new(m.driver.clone()))?;
        registry.register(Box::new(m.pulls.clone()))?;
        Ok(m)
    }

    /// Metrics that are counted but not exported.
    pub fn unregistered() -> Self {
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric");
        Self {
            downloaded_bytes: counter(
                "modelpull_downloaded_bytes_total",
                "Bytes received from model stores and written to disk.",
            ),
            ranges: counter("modelpull_ranges_total", "Ranged requests completed."),
            retries: counter(
                "modelpull_retries_total",
                "Requests retried after a failure.",
            ),
            verify_failures: counter(
                "modelpull_verify_failures_total",
                "Files whose digest or size did not match and were fetched again.",
            ),
            files: counter(
                "modelpull_files_total",
                "Files downloaded, verified and published.",
            ),
            connections_active: IntGauge::new(
                "modelpull_connections_active",
                "HTTP requests in flight on the engine cores.",
            )
            .expect("valid metric"),
            overloads: counter(
                "modelpull_overloads_total",
                "Times a server answered that it was overloaded and got fewer connections.",
            ),
            mirror_bytes: counter(
                "modelpull_mirror_bytes_total",
                "Bytes received from mirrors and peers rather than from the origin.",
            ),
            mirrors_dropped: counter(
                "modelpull_mirrors_dropped_total",
                "Mirrors no longer used in a pull: wrong bytes, or too many failures in a row.",
            ),
            driver: IntGaugeVec::new(
                Opts::new(
                    "modelpull_io_driver",
                    "I/O driver in use by the engine cores (1 = in use).",
                ),
                &["driver"],
            )
            .expect("valid metric"),
            pulls: IntCounterVec::new(
                Opts::new("modelpull_pulls_total", "Pulls finished, by result."),
                &["result"],
            )
            .expect("valid metric"),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::unregistered()
    }
}
