//! The controller: watches this node's `LocalModelNode` only (a field selector on
//! `metadata.name`, where KServe's agent watches them all), and on every change, every
//! download event and every `reconcilationFrequencyInSecs`:
//!
//! 1. re-reads `inferenceservice-config`;
//! 2. plans (see [`crate::plan`]) from the spec, the disk and the downloads;
//! 3. starts downloads with their credentials, cancels those no longer wanted;
//! 4. collects folders unwanted for longer than the grace period;
//! 5. patches `status.modelStatus` with what changed, and reports Events.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{self, reflector};
use kube::runtime::watcher::{self, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use modelpull::store::Env;

use crate::config::{CONFIG_MAP, Config, ConfigError};
use crate::crd::{LocalModelInfo, LocalModelNode, ModelStatus};
use crate::disk::Root;
use crate::events::{self, Events};
use crate::group::Coordinator;
use crate::jobs::{Downloads, Report};
use crate::metrics::controller_runtime::Outcome;
use crate::metrics::{AgentMetrics, SUCCESS};
use crate::plan::{self, Download};
use crate::root_watch::{RootState, RootWatch};
use crate::server::Health;
use crate::{credentials, keys};

/// Variables of the agent's own environment that every model's environment inherits: proxies
/// and mirrors are the node's business, credentials are the model's. The pod's AWS identity
/// (IRSA's token, EKS Pod Identity, the instance metadata settings) stands in for the identity
/// a KServe download Job's pod would have; a model's own keys still come first. The pod's web
/// identity token goes to the agent's STS, never to a model's endpoint (see
/// [`credentials::inherit`]).
pub const NODE_ENV: [&str; 21] = [
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
    "HF_ENDPOINT",
    "STORAGE_EMULATOR_HOST",
    "GCE_METADATA_HOST",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_SESSION_NAME",
    "AWS_ENDPOINT_URL_STS",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_EC2_METADATA_DISABLED",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE",
];

/// Bound on one API call outside the watch, so a server that accepts but never answers cannot
/// hold a reconcile (or shutdown) forever.
pub const API_TIMEOUT: Duration = Duration::from_secs(30);

/// How often a running download reports progress as an Event.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);
/// How often status is refreshed while downloads run.
const BUSY_REFRESH: Duration = Duration::from_secs(2);

/// Everything a reconcile needs; made with [`Ctx::builder`].
pub struct Ctx {
    client: Client,
    node: String,
    /// Where `inferenceservice-config` lives (`POD_NAMESPACE`).
    namespace: String,
    root: Mutex<Root>,
    /// Whether the root takes new files; until it does, nothing is downloaded or collected.
    root_watch: RootWatch,
    downloads: Downloads,
    grace: Duration,
    health: Health,
    metrics: AgentMetrics,
    /// The node's own settings every model inherits (see [`NODE_ENV`]).
    node_env: Env,
    events: Events,
    progress_sent: Mutex<HashMap<String, Instant>>,
    invalid_reported: Mutex<HashSet<(String, keys::InvalidEntry)>>,
    /// Reconciles failed in a row (for the backoff).
    failures: AtomicU32,
    /// The LocalModelNode's generation at the last reconcile: a new one releases failed
    /// downloads (see [`Downloads::release`]).
    generation: Mutex<Option<i64>>,
    /// The node group's coordination, told when a model's folder is removed.
    group: Option<Arc<Coordinator>>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").field("node", &self.node).finish()
    }
}

/// Why a reconcile failed (a download's failure is not one: it shows in the model's status).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("reading {CONFIG_MAP} timed out")]
    ConfigTimeout,
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Makes a [`Ctx`]: what it cannot do without up front, the rest with defaults.
pub struct CtxBuilder {
    client: Client,
    node: String,
    root: Root,
    downloads: Downloads,
    metrics: AgentMetrics,
    namespace: String,
    grace: Duration,
    health: Health,
    node_env: Env,
    root_watch: RootWatch,
    group: Option<Arc<Coordinator>>,
}

impl std::fmt::Debug for CtxBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CtxBuilder")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl CtxBuilder {
    /// Where `inferenceservice-config` lives (`POD_NAMESPACE`); KServe's `kserve` by default.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// How long a folder stays unwanted before it is collected; 10 minutes by default.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// What `/readyz` reports; a fresh one by default.
    pub fn health(mut self, health: Health) -> Self {
        self.health = health;
        self
    }

    /// The node's own settings every model inherits (see [`NODE_ENV`]); none by default.
    pub fn node_env(mut self, node_env: Env) -> Self {
        self.node_env = node_env;
        self
    }

    /// Whether the models root takes new files; by default it does (it was opened with
    /// [`Root::open`]).
    pub fn root_watch(mut self, root_watch: RootWatch) -> Self {
        self.root_watch = root_watch;
        self
    }

    /// The node group's coordination, when this agent shares downloads with its peers: the
    /// last node to remove a model deletes its leases.
    pub fn group(mut self, group: Option<Arc<Coordinator>>) -> Self {
        self.group = group;
        self
    }

    pub fn build(self) -> Ctx {
        let events = Events::new(self.client.clone(), &self.node);
        Ctx {
            client: self.client,
            node: self.node,
            namespace: self.namespace,
            root: Mutex::new(self.root),
            root_watch: self.root_watch,
            downloads: self.downloads,
            grace: self.grace,
            health: self.health,
            metrics: self.metrics,
            node_env: self.node_env,
            events,
            progress_sent: Mutex::new(HashMap::new()),
            invalid_reported: Mutex::new(HashSet::new()),
            failures: AtomicU32::new(0),
            generation: Mutex::new(None),
            group: self.group,
        }
    }
}

impl Ctx {
    /// The context of the agent of `node`, with its models root, its downloads and the
    /// metrics it counts them in.
    pub fn builder(
        client: Client,
        node: impl Into<String>,
        root: Root,
        downloads: Downloads,
        metrics: AgentMetrics,
    ) -> CtxBuilder {
        CtxBuilder {
            client,
            node: node.into(),
            root,
            downloads,
            metrics,
            namespace: "kserve".into(),
            grace: Duration::from_secs(600),
            health: Health::default(),
            node_env: Env::default(),
            root_watch: RootWatch::writable(),
            group: None,
        }
    }

    async fn config(&self) -> Result<Config, Error> {
        let maps: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let got = tokio::time::timeout(API_TIMEOUT, maps.get_opt(CONFIG_MAP))
            .await
            .map_err(|_| Error::ConfigTimeout)?;
        match got? {
            Some(cm) => Ok(Config::parse(&cm.data.unwrap_or_default())?),
            None => {
                tracing::warn!(namespace = %self.namespace, "ConfigMap {CONFIG_MAP} not found; using KServe's defaults");
                Ok(Config::default())
            }
        }
    }

    /// Publishes an Event on the node's LocalModelNode, unless Events were refused (see
    /// [`crate::events`]). Events of one reason and action are aggregated into a series
    /// (kube's recorder keeps the first note), so the action names the model (by storage key)
    /// and, for progress, the step reached.
    async fn event(
        &self,
        lmn: &LocalModelNode,
        type_: EventType,
        reason: &str,
        action: String,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action,
            secondary: None,
        };
        self.events.publish(&event, &lmn.object_ref(&())).await;
    }
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Ctx>,
    changed: tokio::sync::mpsc::UnboundedReceiver<()>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<LocalModelNode> = Api::all(ctx.client.clone());
    let selector = format!("metadata.name={}", ctx.node);
    // Ready once this node's LocalModelNodes can be listed (there may be none yet, and then
    // no reconcile would ever say so); errors later turn it off, reconciles on again.
    let params = kube::api::ListParams::default().fields(&selector);
    match tokio::time::timeout(API_TIMEOUT, api.list(&params)).await {
        Ok(Ok(_)) => ctx.health.ready.store(true, Relaxed),
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot list LocalModelNodes yet; not ready"),
        Err(_) => tracing::warn!("listing LocalModelNodes timed out; not ready"),
    }
    // Deleting the LocalModelNode does not reach reconcile: a watch of our own stops its
    // downloads (the folders stay, as with KServe's agent).
    let deletions = {
        let (api, ctx) = (api.clone(), ctx.clone());
        let config = watcher::Config::default().fields(&selector);
        tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher(api, config));
            while let Some(event) = events.next().await {
                if let Ok(watcher::Event::Delete(_)) = event {
                    tracing::info!("the LocalModelNode was deleted; stopping its downloads");
                    ctx.downloads.cancel_all();
                }
            }
        })
    };
    // What Controller::new watches, with each request counted on its way to the scheduler
    // (controller-runtime's workqueue metrics).
    let queue = ctx.metrics.controller.clone();
    let (reader, writer) = reflector::store();
    let requests = reflector(
        writer,
        watcher(api, watcher::Config::default().fields(&selector)),
    )
    .inspect_ok({
        let queue = queue.clone();
        move |event| match event {
            watcher::Event::Apply(lmn) | watcher::Event::InitApply(lmn) => {
                queue.requested(&lmn.name_any());
            }
            watcher::Event::Delete(lmn) => queue.forget(&lmn.name_any()),
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
    })
    .applied_objects();
    let wakeups = futures::stream::unfold(changed, |mut rx| async move {
        rx.recv().await.map(|()| ((), rx))
    })
    .inspect({
        let (queue, reader) = (queue.clone(), reader.clone());
        move |()| {
            for lmn in reader.state() {
                queue.requested(&lmn.name_any());
            }
        }
    });
    // One worker, as KServe's controller has (MaxConcurrentReconciles = 1).
    let concurrency = 1;
    queue.started(concurrency);
    let root_events = tokio::spawn(report_root(ctx.clone()));
    Controller::for_stream(requests, reader)
        .with_config(controller::Config::default().concurrency(concurrency))
        .reconcile_all_on(wakeups)
        .graceful_shutdown_on(shutdown)
        .run(metered_reconcile, metered_error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::warn!(error = %e, "the controller reported an error");
            }
        })
        .await;
    deletions.abort();
    root_events.abort();
}

/// Events on this agent's Node about a models root that refuses new files: one when the agent
/// starts so, one when it is fixed. On the Node, not the LocalModelNode: the Node exists
/// before any LocalModelNode does (KServe creates one with the first cache for the node), the
/// fix is on the node's disk, and `kubectl describe node` is where its other disk troubles
/// show.
async fn report_root(ctx: Arc<Ctx>) {
    let mut watch = ctx.root_watch.clone();
    let RootState::Unwritable(why) = watch.state() else {
        return;
    };
    let node = events::node_ref(&ctx.node);
    let event = Event {
        type_: EventType::Warning,
        reason: "ModelsRootNotWritable".into(),
        note: Some(why.to_string()),
        action: "CheckModelsRoot".into(),
        secondary: None,
    };
    ctx.events.publish(&event, &node).await;
    watch.until_writable().await;
    let event = Event {
        type_: EventType::Normal,
        reason: "ModelsRootWritable".into(),
        note: Some(format!(
            "{} takes new files now; downloads start",
            why.folder.display()
        )),
        action: "CheckModelsRoot".into(),
        secondary: None,
    };
    ctx.events.publish(&event, &node).await;
}

/// [`reconcile`], counted in controller-runtime's metrics.
async fn metered_reconcile(lmn: Arc<LocalModelNode>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let run = ctx.metrics.controller.reconcile(&lmn.name_any());
    let result = reconcile(lmn, ctx.clone()).await;
    run.finish(match &result {
        Err(_) => Outcome::Error,
        Ok(action) if *action == Action::await_change() => Outcome::Success,
        Ok(action) if *action == Action::requeue(Duration::ZERO) => Outcome::Requeue,
        Ok(_) => Outcome::RequeueAfter,
    });
    result
}

/// [`error_policy`], counted in controller-runtime's metrics (a retry).
fn metered_error_policy(lmn: Arc<LocalModelNode>, err: &Error, ctx: Arc<Ctx>) -> Action {
    ctx.metrics.controller.retried();
    error_policy(lmn, err, ctx)
}

/// Failed reconciles are tried again after 1 s, doubling to 5 minutes; a success resets it.
fn error_policy(_: Arc<LocalModelNode>, err: &Error, ctx: Arc<Ctx>) -> Action {
    if matches!(err, Error::Kube(_)) {
        ctx.health.ready.store(false, Relaxed);
    }
    let failures = ctx.failures.fetch_add(1, Relaxed).min(9);
    let delay = Duration::from_secs(1 << failures).min(Duration::from_secs(300));
    tracing::warn!(error = %err, retry_in_s = delay.as_secs(), "reconcile failed");
    Action::requeue(delay)
}

async fn reconcile(lmn: Arc<LocalModelNode>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let name = lmn.metadata.name.clone().unwrap_or_default();
    if name != ctx.node {
        return Ok(Action::await_change());
    }
    let config = ctx.config().await?;
    ctx.health.ready.store(true, Relaxed);
    ctx.failures.store(0, Relaxed);
    let entries = &lmn.spec.local_models;
    let uris: BTreeMap<String, String> = entries
        .iter()
        .map(|e| {
            (
                keys::storage_key(&e.source_model_uri),
                e.source_model_uri.clone(),
            )
        })
        .collect();
    release_on_change(&lmn, &ctx);
    let snapshot = ctx.downloads.snapshot();
    let now = Instant::now();
    let mut plan = {
        let root = ctx.root.lock().unwrap_or_else(|p| p.into_inner());
        plan::plan(
            entries,
            |key| root.state(key, uris.get(key).map_or("", String::as_str)),
            &snapshot,
            now,
        )
    };

    // A root that refuses new files: what is verified there is reported, the rest is an
    // error until it is fixed (see crate::root_watch), and nothing is collected.
    let writable = ctx.root_watch.is_writable();
    if !writable {
        for start in std::mem::take(&mut plan.start) {
            mark_failed(&mut plan, &start.storage_key, &entries[..]);
        }
    }
    for start in std::mem::take(&mut plan.start) {
        let key = &start.storage_key;
        let shown = modelpull::redact_str(&start.entry.source_model_uri);
        if start.adopt {
            tracing::info!(model = %shown, "the model folder has no marker of this agent; checking its files in place and fetching only those that differ");
        }
        let env = credentials::for_entry(
            &ctx.client,
            &config.local_model.job_namespace,
            &start.entry,
            &config.credentials,
        )
        .await;
        match env {
            Ok(mut credentials) => {
                credentials::inherit(&mut credentials.env, &ctx.node_env);
                ctx.downloads
                    .start_download(key, start.entry.clone(), credentials);
            }
            Err(e) => {
                mark_failed(&mut plan, key, &entries[..]);
                ctx.downloads.fail(key, start.entry.clone(), e.into());
            }
        }
    }

    // Downloads (queued, running or failed) of models no longer in the spec stop.
    for key in ctx.downloads.keys().difference(&plan.wanted) {
        tracing::info!(key = %key, "model removed from the spec; cancelling its download");
        ctx.downloads.cancel(key);
    }
    // Removing folders of hundreds of GB takes a while: not on the runtime's threads.
    let gc = writable.then(|| {
        let ctx = ctx.clone();
        let (wanted, verified) = (plan.wanted.clone(), plan.verified.clone());
        tokio::task::spawn_blocking(move || {
            let busy = ctx.downloads.busy();
            let mut root = ctx.root.lock().unwrap_or_else(|p| p.into_inner());
            let collected = root.collect(&wanted, &busy, &verified, ctx.grace, now);
            ctx.metrics
                .undeletable_bytes
                .set(i64::try_from(root.undeletable_bytes()).unwrap_or(i64::MAX));
            collected
        })
    });
    let collected = match gc {
        Some(gc) => gc.await.unwrap_or_default(),
        None => Default::default(),
    };
    if let Some(group) = &ctx.group {
        for key in collected.removed_models() {
            if tokio::time::timeout(API_TIMEOUT, group.forget(&key))
                .await
                .is_err()
            {
                tracing::warn!(key = %key, "the API server did not answer in time; the leases of a removed model stay");
            }
        }
    }

    report(&lmn, &ctx, &plan).await;
    for (path, bytes) in collected.undeletable {
        let note = format!(
            "cannot remove {} ({}): its files belong to another user (KServe's download Jobs run as uid 1000); remove it as root on the node (rm -rf {}) or give it to the agent (chown -R 65532:65532 {}), which then removes it",
            path.display(),
            modelpull::units::human_bytes(bytes),
            path.display(),
            path.display()
        );
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        ctx.event(
            &lmn,
            EventType::Warning,
            "CannotRemove",
            format!("Remove {name}"),
            note,
        )
        .await;
    }

    let old = lmn
        .status
        .as_ref()
        .and_then(|s| s.model_status.clone())
        .unwrap_or_default();
    write_status(&ctx.client, &name, &old, &plan.status).await?;
    ctx.metrics.set_models(&plan.status);

    let downloading = ctx
        .downloads
        .snapshot()
        .values()
        .any(|d| !matches!(d, Download::Failed { .. }));
    let next = if downloading {
        BUSY_REFRESH
    } else {
        config.local_model.reconcile_every
    };
    // A failed download is retried when its backoff ends, not at the next periodic check (in
    // whole seconds, rounded up: never before it is due).
    let retry = ctx.downloads.next_retry().map(|at| {
        let wait = at.saturating_duration_since(Instant::now());
        Duration::from_secs(wait.as_millis().div_ceil(1000) as u64)
    });
    Ok(Action::requeue(retry.map_or(next, |r| r.min(next))))
}

/// Makes failed downloads due now when the spec's generation changed since the last reconcile,
/// or when the entry a download failed with is no longer the spec's first entry of its URI:
/// a failure waits (bad input: for good) only while nothing it depends on changes.
fn release_on_change(lmn: &LocalModelNode, ctx: &Ctx) {
    let generation = lmn.metadata.generation;
    let new_generation = {
        let mut seen = ctx.generation.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *seen, generation) != generation
    };
    let mut first: HashMap<String, &LocalModelInfo> = HashMap::new();
    for e in &lmn.spec.local_models {
        first
            .entry(keys::storage_key(&e.source_model_uri))
            .or_insert(e);
    }
    // A model no longer in the spec is not released: its download is cancelled.
    ctx.downloads.release(|key, failed_with| {
        first
            .get(key)
            .is_some_and(|e| new_generation || *e != failed_with)
    });
}

/// Sets every entry of storage key `key` to Error (a download that could not start).
fn mark_failed(plan: &mut plan::Plan, key: &str, entries: &[crate::crd::LocalModelInfo]) {
    for e in entries {
        if keys::storage_key(&e.source_model_uri) == key && keys::check_entry(e).is_ok() {
            plan.status.insert(keys::status_key(e), ModelStatus::Error);
        }
    }
}

/// Patches `status.modelStatus` of `name` from `old` to `new` (a JSON merge patch of the
/// changed keys only, `null` for removed ones); nothing when they are equal. Returns whether
/// a request was made.
pub async fn write_status(
    client: &Client,
    name: &str,
    old: &BTreeMap<String, ModelStatus>,
    new: &BTreeMap<String, ModelStatus>,
) -> Result<bool, kube::Error> {
    let Some(patch) = plan::status_patch(old, new) else {
        return Ok(false);
    };
    let api: Api<LocalModelNode> = Api::all(client.clone());
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(true)
}

/// Events for invalid entries (once each), finished and failed downloads, and progress.
async fn report(lmn: &LocalModelNode, ctx: &Ctx, plan: &plan::Plan) {
    for invalid in &plan.invalid {
        let first = ctx
            .invalid_reported
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((invalid.status_key.clone(), invalid.reason.clone()));
        if first {
            ctx.event(
                lmn,
                EventType::Warning,
                "DownloadFailed",
                format!("Validate {}", invalid.storage_key),
                format!("{}: {}", invalid.status_key, invalid.reason),
            )
            .await;
        }
    }
    for r in ctx.downloads.take_reports() {
        match r {
            Report::Started { key, uri } => {
                ctx.event(
                    lmn,
                    EventType::Normal,
                    "DownloadStarted",
                    format!("Download {key}"),
                    uri,
                )
                .await;
            }
            Report::Done {
                key,
                uri,
                pulled,
                seconds,
            } => {
                ctx.metrics.downloads.with_label_values(&[SUCCESS]).inc();
                let human = modelpull::units::human_bytes;
                let adopted = match pulled.adopted_bytes {
                    0 => String::new(),
                    kept => format!(
                        "; {} was in the folder already and kept, {} fetched",
                        human(kept),
                        human(pulled.bytes - kept)
                    ),
                };
                let note = format!(
                    "{uri}: {} in {seconds:.1} s ({:.2} GB/s){adopted}, verified and published",
                    human(pulled.bytes),
                    pulled.bytes as f64 / seconds.max(1e-9) / 1e9
                );
                ctx.event(
                    lmn,
                    EventType::Normal,
                    "Downloaded",
                    format!("Download {key}"),
                    note,
                )
                .await;
            }
            Report::Failed(failure) => {
                let class = failure.error.class();
                ctx.metrics
                    .downloads
                    .with_label_values(&[class.metric_label()])
                    .inc();
                ctx.event(
                    lmn,
                    EventType::Warning,
                    "DownloadFailed",
                    format!("Download {}", failure.key),
                    failure.note(),
                )
                .await;
            }
        }
    }
    let now = Instant::now();
    for (key, uri, done, total) in ctx.downloads.progress() {
        let due = {
            let mut sent = ctx.progress_sent.lock().unwrap_or_else(|p| p.into_inner());
            let last = sent.entry(key.clone()).or_insert(now);
            if now.duration_since(*last) >= PROGRESS_EVERY {
                *last = now;
                true
            } else {
                false
            }
        };
        if due && total > 0 {
            let note = format!(
                "{uri}: {} of {} ({:.0}%)",
                modelpull::units::human_bytes(done),
                modelpull::units::human_bytes(total),
                done as f64 * 100.0 / total as f64
            );
            let step = done * 10 / total * 10;
            ctx.event(
                lmn,
                EventType::Normal,
                "DownloadProgress",
                format!("Download {key} {step}%"),
                note,
            )
            .await;
        }
    }
}

#[cfg(test)]
mod tests;
