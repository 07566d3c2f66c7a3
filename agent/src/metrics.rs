//! The agent's own metrics, next to the engine's on the same registry, with the families
//! KServe's agent serves: controller-runtime's ([`controller_runtime`]) and the process's
//! (`process_*`, see [`register_process`]).

pub mod controller_runtime;

use std::collections::BTreeMap;

use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::crd::ModelStatus;
use controller_runtime::ControllerMetrics;

/// The `result` of a download that finished, verified and published; a failed one's is its
/// class ([`crate::error::Class::metric_label`]).
pub const SUCCESS: &str = "ok";

#[derive(Debug, Clone)]
pub struct AgentMetrics {
    /// `modelpull_models{state}`: models of this node by status.
    pub models: IntGaugeVec,
    /// `modelpull_model_downloads_total{result}`: [`SUCCESS`], or the failure's class.
    pub downloads: IntCounterVec,
    /// controller-runtime's `controller_runtime_*` and `workqueue_*` families.
    pub controller: ControllerMetrics,
    /// `modelpull_agent_undeletable_bytes`: disk space held by model folders the agent no
    /// longer needs but may not delete (another user's files; the log and an Event say how
    /// to free it).
    pub undeletable_bytes: IntGauge,
}

impl AgentMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            models: IntGaugeVec::new(
                Opts::new("modelpull_models", "Models of this node by download state."),
                &["state"],
            )?,
            downloads: IntCounterVec::new(
                Opts::new(
                    "modelpull_model_downloads_total",
                    "Model downloads finished, by result: ok (verified and published), or the class of the failure: bad_input (not retried until the entry or the spec changes), access_denied (retried after a longer backoff), no_space (the disk cannot hold the model or the copy that repairs a folder the agent cannot write to; retried after a longer backoff still, or when the spec changes), transient (retried after a backoff).",
                ),
                &["result"],
            )?,
            controller: ControllerMetrics::new(registry)?,
            undeletable_bytes: IntGauge::new(
                "modelpull_agent_undeletable_bytes",
                "Disk space held by model folders the agent no longer needs but may not delete: their files belong to another user (KServe's download Jobs run as uid 1000). Remove them as root on the node, or chown them to the agent.",
            )?,
        };
        registry.register(Box::new(m.models.clone()))?;
        registry.register(Box::new(m.downloads.clone()))?;
        registry.register(Box::new(m.undeletable_bytes.clone()))?;
        Ok(m)
    }

    /// Sets the per-state gauges from a status map.
    pub fn set_models(&self, status: &BTreeMap<String, ModelStatus>) {
        for state in ModelStatus::ALL {
            let n = status.values().filter(|s| **s == state).count();
            let label = match state {
                ModelStatus::Unknown => "unknown",
                ModelStatus::Pending => "pending",
                ModelStatus::Downloading => "downloading",
                ModelStatus::Downloaded => "downloaded",
                ModelStatus::Error => "error",
            };
            self.models.with_label_values(&[label]).set(n as i64);
        }
    }
}

/// Serves the process's CPU time, memory, open and maximum file descriptors, threads and start
/// time (`process_*`, read from `/proc/self`), as controller-runtime's registry does.
pub fn register_process(registry: &Registry) -> prometheus::Result<()> {
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))
}
