//! Pulling once per node group: the agents of the nodes that keep one model fetch it from the
//! origin about once between them and share the bytes over their peer servers
//! ([`crate::peer`]), coordinated through Kubernetes objects only.
//!
//! When a download starts, the agent finds the model's group ([`peers`]): the nodes whose
//! LocalModelNode lists the same URI, and the peers among them that serve it. If one of them
//! has the model already, it is a mirror like any other and the origin answers only what no
//! peer can. If none has it, the model is cut into stripes, one per node of the group
//! ([`modelpull::mirror::Stripes`]), and each node fetches its own stripe from the origin and
//! every other stripe from the peer that fetches it, as that peer's flushed chunks appear. A
//! stripe is held through a `coordination.k8s.io` Lease ([`lease`]) renewed while the pull runs;
//! a lease that is not renewed (its agent stopped, its node died) is taken over by another node
//! of the group, whose running pull then fetches that stripe from the origin, resuming where
//! its own journal stands. Every byte is still checked against the origin's digest by the
//! engine: a peer can make a pull slower, never wrong. The leases of a model are deleted by
//! the last node to remove it ([`Coordinator::forget`]).

pub mod lease;
pub mod peers;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use modelpull::mirror::{Distrust, Stripes};
use url::Url;

use crate::crd::{LocalModelInfo, ModelStatus};
use lease::Leases;

/// How the group is found and coordinated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This agent's node.
    pub node: String,
    /// Namespace of the agents' pods, their Service and the leases.
    pub namespace: String,
    /// The headless Service that selects the agents' pods.
    pub service: String,
    /// How long a stripe's lease lasts without renewal; renewed every third of it.
    pub lease_duration: Duration,
    /// Bytes per block dealt to the stripes, at least; rounded up to a multiple of the
    /// engine's range size (no range may span two stripes).
    pub stripe_size: u64,
}

/// How long a peer caught sending bytes that contradict the origin is not asked again, by any
/// download of this agent: long enough that a download tried again after a failure does not
/// meet it again, short enough that a peer whose disk was replaced is asked again.
const DISTRUST_TERM: Duration = Duration::from_secs(3600);

/// The group coordination of one agent; connected once the API server answers.
pub struct Coordinator {
    settings: Settings,
    client: OnceLock<kube::Client>,
    runtime: tokio::runtime::Handle,
    distrust: Arc<Distrust>,
}

/// What a download takes from its group: the peers to read from, and, when the group splits
/// the origin's work, which stripes this node fetches from the origin.
#[derive(Debug)]
pub struct Share {
    pub mirrors: Vec<Url>,
    pub stripes: Option<Arc<Stripes>>,
    /// The peers this agent caught lying, for [`modelpull::Options::distrust`].
    pub distrust: Arc<Distrust>,
    keeper: Option<Keeper>,
}

#[derive(Debug)]
struct Keeper {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("settings", &self.settings)
            .field("connected", &self.client.get().is_some())
            .finish()
    }
}

impl Coordinator {
    /// A coordinator whose lease keepers run on `runtime`.
    pub fn new(settings: Settings, runtime: tokio::runtime::Handle) -> Self {
        Self {
            settings,
            client: OnceLock::new(),
            runtime,
            distrust: Arc::new(Distrust::new(DISTRUST_TERM)),
        }
    }

    /// Gives it the API client (once connected).
    pub fn connect(&self, client: kube::Client) {
        let _ = self.client.set(client);
    }

    /// This node's share of the download of `entry` into `models/<key>`, pulled in ranges of
    /// `range_size` bytes (called from a download thread, blocking). `None` when there is no group to share with, or it cannot be
    /// read: the download then goes to the origin as it would alone.
    pub fn join(&self, key: &str, entry: &LocalModelInfo, range_size: u64) -> Option<Share> {
        let client = self.client.get()?.clone();
        let s = &self.settings;
        let found = self.runtime.block_on(peers::find(
            &client,
            &s.namespace,
            &s.service,
            &s.node,
            key,
            entry,
        ));
        let group = match found {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(error = %e, model = %entry.model_name, "cannot read the model's node group; fetching from the origin alone");
                return None;
            }
        };
        if group.peers.is_empty() {
            return None;
        }
        let mirrors: Vec<Url> = group.peers.iter().map(|p| p.base.clone()).collect();
        let complete = group
            .peers
            .iter()
            .filter(|p| p.status == Some(ModelStatus::Downloaded))
            .count();
        if complete > 0 {
            tracing::info!(model = %entry.model_name, peers = mirrors.len(), complete, "fetching from peers that have the model; the origin serves what they cannot");
            return Some(Share {
                mirrors,
                stripes: None,
                distrust: self.distrust.clone(),
                keeper: None,
            });
        }
        let api = kube::Api::<Lease>::namespaced(client, &s.namespace);
        let labels = labels(key);
        let agreed =
            self.runtime
                .block_on(lease::agree(&api, &plan_name(key), &labels, &group.nodes));
        let nodes = match agreed {
            Ok(nodes) => nodes,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the model's plan lease; fetching from the origin alone");
                return None;
            }
        };
        let count = nodes.len();
        let block = s.stripe_size.max(1).div_ceil(range_size) * range_size;
        let stripes = Arc::new(Stripes::new(count, block));
        for (stripe, node) in nodes.iter().enumerate() {
            stripes.set_holder(stripe, group.peers.iter().position(|p| p.node == *node));
        }
        let mut leases = Leases::new(api, &s.node, s.lease_duration, group.nodes.iter().cloned());
        let names: Vec<String> = (0..count).map(|i| lease_name(key, count, i)).collect();
        // A node the plan was made without holds no stripe of its own; it takes over those
        // whose holders stop renewing, like any node of the group.
        if let Some(own) = nodes.iter().position(|n| *n == s.node) {
            match self
                .runtime
                .block_on(leases.acquire(&names[own], &labels, true))
            {
                Ok(true) => stripes.hold(own, true),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take this node's stripe lease; fetching from the origin alone");
                    return None;
                }
            }
        }
        tracing::info!(
            model = %entry.model_name,
            nodes = count,
            peers = mirrors.len(),
            stripes = ?stripes.held(),
            "the node group splits the model: this node fetches its stripes from the origin, the rest from its peers"
        );
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = self.runtime.spawn(keep(
            leases,
            names,
            labels,
            stripes.clone(),
            s.lease_duration,
            stopped,
        ));
        Some(Share {
            mirrors,
            stripes: Some(stripes),
            distrust: self.distrust.clone(),
            keeper: Some(Keeper {
                stop,
                task,
                runtime: self.runtime.clone(),
            }),
        })
    }

    /// Deletes the plan and stripe leases of the model at `key` once no node keeps it: called
    /// when this node has removed the model's folder. While any LocalModelNode still lists the
    /// model, its leases stay (the group may be pulling it, and a node that pulls it again
    /// follows the same plan); once none does, a later pull starts a new plan from the group
    /// it finds then, instead of one made for nodes that may be gone.
    pub async fn forget(&self, key: &str) {
        let Some(client) = self.client.get().cloned() else {
            return;
        };
        match forget(&client, &self.settings.namespace, key).await {
            Ok(None | Some(0)) => {}
            Ok(Some(n)) => {
                tracing::info!(
                    key,
                    leases = n,
                    "no node keeps the model any more: deleted its leases"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, key, "cannot delete the leases of a model no node keeps; they stay until deleted (kubectl delete leases -l {KEY_LABEL}={key})");
            }
        }
    }
}

/// [`Coordinator::forget`]: `None` when a node still keeps the model, else how many leases
/// were deleted.
async fn forget(client: &kube::Client, namespace: &str, key: &str) -> kube::Result<Option<usize>> {
    let nodes: kube::Api<crate::crd::LocalModelNode> = kube::Api::all(client.clone());
    let kept = nodes
        .list(&kube::api::ListParams::default())
        .await?
        .items
        .iter()
        .flat_map(|n| &n.spec.local_models)
        .any(|m| crate::keys::storage_key(&m.source_model_uri) == key);
    if kept {
        return Ok(None);
    }
    let api = kube::Api::<Lease>::namespaced(client.clone(), namespace);
    lease::delete_all(&api, &format!("{KEY_LABEL}={key}"))
        .await
        .map(Some)
}

impl Share {
    /// Ends the share when the download ends: its leases stop being renewed (they expire, and
    /// are taken over if the stripe is still needed), or, when `complete`, they are marked so:
    /// this node serves the whole model from now on.
    pub fn finish(self, complete: bool) {
        if let Some(k) = self.keeper {
            let _ = k.stop.send(complete);
            let _ = k.runtime.block_on(k.task);
        }
    }
}

/// Renews the stripes held (first, so a slow API server does not cost them), takes over those
/// whose holder stopped renewing, and marks the held ones complete when told so on `stop`. A
/// stripe whose lease could not be renewed for `duration` is given up: another node may have
/// taken it over by then, and two nodes must not both fetch it from the origin.
async fn keep(
    mut leases: Leases,
    names: Vec<String>,
    labels: BTreeMap<String, String>,
    stripes: Arc<Stripes>,
    duration: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut renewed: HashMap<usize, Instant> = stripes
        .held()
        .into_iter()
        .map(|s| (s, Instant::now()))
        .collect();
    loop {
        tokio::select! {
            () = tokio::time::sleep(duration / 3) => {}
            changed = stop.changed() => {
                if changed.is_ok() && *stop.borrow() {
                    for s in stripes.held() {
                        if let Err(e) = leases.complete(&names[s]).await {
                            tracing::warn!(error = %e, lease = %names[s], "cannot mark the stripe's lease complete; it will expire instead");
                        }
                    }
                }
                return;
            }
        }
        for s in stripes.held() {
            match leases.renew(&names[s]).await {
                Ok(true) => {
                    renewed.insert(s, Instant::now());
                }
                Ok(false) => {
                    stripes.hold(s, false);
                    tracing::warn!(lease = %names[s], stripe = s, "lost a stripe's lease to another node");
                }
                Err(e) if renewed.get(&s).is_none_or(|t| t.elapsed() >= duration) => {
                    stripes.hold(s, false);
                    tracing::warn!(error = %e, lease = %names[s], stripe = s, "could not renew a stripe's lease for its duration; leaving the stripe to others");
                }
                Err(e) => {
                    tracing::warn!(error = %e, lease = %names[s], "cannot renew the stripe's lease; trying again");
                }
            }
        }
        for (s, name) in names.iter().enumerate() {
            if stripes.held().contains(&s) {
                continue;
            }
            match leases.acquire(name, &labels, false).await {
                Ok(true) => {
                    stripes.hold(s, true);
                    renewed.insert(s, Instant::now());
                    tracing::info!(lease = %name, stripe = s, "took over a stripe whose holder stopped renewing its lease: fetching it from the origin");
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, lease = %name, "cannot read the stripe's lease; trying again");
                }
            }
        }
    }
}

/// The lease that records which nodes the stripes of the model at `key` are dealt to.
pub fn plan_name(key: &str) -> String {
    format!("modelpull-{key}")
}

/// The lease of stripe `stripe` of `count` of the model at `key`.
pub fn lease_name(key: &str, count: usize, stripe: usize) -> String {
    format!("modelpull-{key}-{count}-{stripe}")
}

/// The label of every lease of a model, valued with its storage key.
pub const KEY_LABEL: &str = "modelpull.io/storage-key";

fn labels(key: &str) -> BTreeMap<String, String> {
    [
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "modelpull".to_owned(),
        ),
        (KEY_LABEL.to_owned(), key.to_owned()),
    ]
    .into()
}
