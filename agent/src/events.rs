//! Events, sent for as long as the agent is allowed to. KServe's ClusterRole for its own agent
//! grants no `events` (reference §11), so an agent installed by swapping only the image of
//! KServe's DaemonSet is refused every Event. The first refusal (HTTP 403) turns Events off for
//! the life of the process, with one warning that names the RBAC rule that turns them on;
//! everything else (status, downloads, readiness) goes on as before. Any other failure is
//! logged and the next Event is tried, since an API server outage passes. Each Event is given
//! [`API_TIMEOUT`]: an API server that accepts it but never answers delays a reconcile by
//! that much, not by kube's own read timeout (295 s). A timeout is warned of once, until the
//! API server answers an Event again.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, Recorder, Reporter};

use crate::controller::API_TIMEOUT;

/// The rule an agent's ClusterRole needs for Events: kube's recorder writes `events.k8s.io/v1`
/// Events, and patches them to count a repeated one.
pub const RBAC_RULE: &str =
    r#"apiGroups: ["events.k8s.io"], resources: ["events"], verbs: ["create", "patch"]"#;

/// Publishes Events as the agent of one node.
pub struct Events {
    recorder: Recorder,
    forbidden: AtomicBool,
    /// The last Event timed out (and its warning was given).
    timed_out: AtomicBool,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("forbidden", &self.forbidden.load(Relaxed))
            .finish_non_exhaustive()
    }
}

impl Events {
    /// Events reported by `localmodelnode-agent` on `node`.
    pub fn new(client: Client, node: &str) -> Self {
        let reporter = Reporter {
            controller: "localmodelnode-agent".into(),
            instance: Some(node.to_owned()),
        };
        Self {
            recorder: Recorder::new(client, reporter),
            forbidden: AtomicBool::new(false),
            timed_out: AtomicBool::new(false),
        }
    }

    /// Publishes `event` about `regarding`, unless Events were refused before.
    pub async fn publish(&self, event: &Event, regarding: &ObjectReference) {
        if self.forbidden.load(Relaxed) {
            return;
        }
        let Ok(published) =
            tokio::time::timeout(API_TIMEOUT, self.recorder.publish(event, regarding)).await
        else {
            if self.timed_out.swap(true, Relaxed) {
                tracing::debug!(reason = %event.reason, "publishing an Event timed out again");
            } else {
                tracing::warn!(
                    reason = %event.reason,
                    timeout_s = API_TIMEOUT.as_secs(),
                    "publishing an Event timed out; going on without it (further timeouts are \
                     logged at debug level until the API server answers an Event again)"
                );
            }
            return;
        };
        self.timed_out.store(false, Relaxed);
        match published {
            Ok(()) => {}
            Err(kube::Error::Api(status)) if status.is_forbidden() => {
                if !self.forbidden.swap(true, Relaxed) {
                    tracing::warn!(
                        error = %status.message,
                        "Events are forbidden to this agent's ServiceAccount: none will be sent; \
                         status and downloads are not affected. To get them, add to its \
                         ClusterRole the rule {RBAC_RULE} (deploy/base/rbac.yaml has it; for \
                         KServe's own DaemonSet, deploy/components/kserve-daemonset adds it)"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, reason = %event.reason, "cannot publish an Event");
            }
        }
    }

    /// Whether Events were refused and are no longer sent.
    pub fn forbidden(&self) -> bool {
        self.forbidden.load(Relaxed)
    }
}

/// A reference to the Node `name` as the kubelet writes it in its own Events (its name as
/// the uid), which `kubectl describe node` lists; it needs no read access to Nodes.
pub fn node_ref(name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(name.to_owned()),
        uid: Some(name.to_owned()),
        ..ObjectReference::default()
    }
}
