//! Events, sent for as long as the agent is allowed to. KServe's ClusterRole for its own agent
//! grants no `events` (reference §11), so an agent installed by swapping only the image of
//! KServe's DaemonSet is refused every Event. The first refusal (HTTP 403) turns Events off for
//! the life of the process, with one warning that names the RBAC rule that turns them on;
//! everything else (status, downloads, readiness) goes on as before. Any other failure is
//! logged and the next Event is tried, since an API server outage passes.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, Recorder, Reporter};

/// The rule an agent's ClusterRole needs for Events: kube's recorder writes `events.k8s.io/v1`
/// Events, and patches them to count a repeated one.
pub const RBAC_RULE: &str =
    r#"apiGroups: ["events.k8s.io"], resources: ["events"], verbs: ["create", "patch"]"#;

/// Publishes Events as the agent of one node.
pub struct Events {
    recorder: Recorder,
    forbidden: AtomicBool,
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
        }
    }

    /// Publishes `event` about `regarding`, unless Events were refused before.
    pub async fn publish(&self, event: &Event, regarding: &ObjectReference) {
        if self.forbidden.load(Relaxed) {
            return;
        }
        match self.recorder.publish(event, regarding).await {
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
