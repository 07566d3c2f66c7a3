//! Reconciles run in-process: a mock API server (tower-test) answers and checks every request
//! the agent makes, in order; a fake stands behind the fetch seam, its downloads run one at a
//! time when the test says (`Downloads::run_next`, no worker threads); the models root is a
//! temporary directory.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::core::Status;
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};

use super::*;
use crate::crd::{LocalModelInfo, LocalModelNodeSpec, LocalModelNodeStatus};
use crate::error::Error as DownloadError;
use crate::fetch::{Fetch, Pulled, fake};
use crate::retry::RetryPolicy;

const NODE: &str = "gpu-node-1";
const CONFIG_PATH: &str = "/api/v1/namespaces/kserve/configmaps/inferenceservice-config";
const STATUS_PATH: &str = "/apis/serving.kserve.io/v1alpha1/localmodelnodes/gpu-node-1/status";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/default/events";
/// The periodic check the test ConfigMap sets.
const EVERY: Duration = Duration::from_secs(300);

/// How the mock API server answers a request it expects.
enum Reply {
    Json(Value),
    /// The request's own body (what the API server returns for a created Event).
    Echo,
    NotFound,
    /// 403, as KServe's role answers an Event.
    Forbidden,
    /// No answer ever (the request is held open).
    Never,
}

/// A request the agent must make next, and its answer.
struct Expect {
    method: Method,
    path: String,
    reply: Reply,
}

fn get(path: &str, reply: Value) -> Expect {
    Expect {
        method: Method::GET,
        path: path.into(),
        reply: Reply::Json(reply),
    }
}

/// KServe's ConfigMap, with its own job namespace and a 300 s periodic check.
fn config() -> Expect {
    get(
        CONFIG_PATH,
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "inferenceservice-config", "namespace": "kserve"},
            "data": {"localModel": "{\"jobNamespace\": \"models-jobs\", \"reconcilationFrequencyInSecs\": 300}"}
        }),
    )
}

fn event() -> Expect {
    Expect {
        method: Method::POST,
        path: EVENTS_PATH.into(),
        reply: Reply::Echo,
    }
}

fn status_patch() -> Expect {
    Expect {
        method: Method::PATCH,
        path: STATUS_PATH.into(),
        reply: Reply::Json(serde_json::to_value(node(1, vec![], &[])).unwrap()),
    }
}

/// A request the agent made.
#[derive(Debug)]
struct Seen {
    body: Value,
}

impl Seen {
    /// The status patch's `modelStatus`, checking that the patch holds nothing else.
    fn model_status(&self) -> &Value {
        let only = |v: &Value| v.as_object().map(|o| o.len()) == Some(1);
        assert!(only(&self.body), "{}", self.body);
        assert!(only(&self.body["status"]), "{}", self.body);
        &self.body["status"]["modelStatus"]
    }

    /// Checks an Event: its type and reason, that it regards this node's LocalModelNode, and
    /// returns its note.
    fn event(&self, type_: &str, reason: &str) -> &str {
        assert_eq!(self.body["type"], type_, "{}", self.body);
        assert_eq!(self.body["reason"], reason, "{}", self.body);
        assert_eq!(self.body["regarding"]["kind"], "LocalModelNode");
        assert_eq!(self.body["regarding"]["name"], NODE);
        self.body["note"].as_str().expect("a note")
    }
}

struct ApiServer(Handle<Request<Body>, Response<Body>>);

impl ApiServer {
    /// Runs `work` while answering its requests, which must be `expected`, in order, and no
    /// other.
    async fn serve<T>(
        &mut self,
        work: impl Future<Output = T>,
        expected: Vec<Expect>,
    ) -> (T, Vec<Seen>) {
        let mut work = std::pin::pin!(work);
        let mut expected = expected.into_iter();
        let mut seen = Vec::new();
        let mut unanswered = Vec::new();
        let served = async {
            loop {
                tokio::select! {
                    out = &mut work => return out,
                    next = self.0.next_request() => {
                        let (request, send) = next.expect("the client is alive");
                        let method = request.method().clone();
                        let path = request.uri().path().to_owned();
                        if method == Method::PATCH {
                            assert_eq!(request.headers()["content-type"], "application/merge-patch+json");
                        }
                        let bytes = request.into_body().collect_bytes().await.unwrap();
                        let body: Value = if bytes.is_empty() {
                            Value::Null
                        } else {
                            serde_json::from_slice(&bytes).unwrap()
                        };
                        let Some(want) = expected.next() else {
                            panic!("an unexpected request: {method} {path} {body}");
                        };
                        assert_eq!(
                            (&method, path.as_str()),
                            (&want.method, want.path.as_str()),
                            "request {} (body {body})",
                            seen.len() + 1
                        );
                        if let Reply::Never = want.reply {
                            unanswered.push(send);
                            seen.push(Seen { body });
                            continue;
                        }
                        let response = match want.reply {
                            Reply::Json(v) => Response::new(Body::from(serde_json::to_vec(&v).unwrap())),
                            Reply::Echo => Response::new(Body::from(bytes.to_vec())),
                            Reply::NotFound => {
                                let status = Status::failure("not found", "NotFound").with_code(404);
                                Response::builder()
                                    .status(StatusCode::NOT_FOUND)
                                    .body(Body::from(serde_json::to_vec(&status).unwrap()))
                                    .unwrap()
                            }
                            Reply::Forbidden => {
                                let message = "events.events.k8s.io is forbidden: User \"system:serviceaccount:kserve:kserve-localmodelnode-agent\" cannot create resource \"events\" in API group \"events.k8s.io\" in the namespace \"default\"";
                                let status = Status::failure(message, "Forbidden").with_code(403);
                                Response::builder()
                                    .status(StatusCode::FORBIDDEN)
                                    .body(Body::from(serde_json::to_vec(&status).unwrap()))
                                    .unwrap()
                            }
                            Reply::Never => unreachable!("held above"),
                        };
                        send.send_response(response);
                        seen.push(Seen { body });
                    }
                }
            }
        };
        // Longer than an API call's own bound, which a test may let run out.
        let out = tokio::time::timeout(API_TIMEOUT + Duration::from_secs(10), served)
            .await
            .expect("the reconcile ends");
        let missing: Vec<String> = expected
            .map(|e| format!("{} {}", e.method, e.path))
            .collect();
        assert!(missing.is_empty(), "requests not made: {missing:?}");
        (out, seen)
    }
}

struct World {
    ctx: Arc<Ctx>,
    downloads: Downloads,
    api: ApiServer,
    registry: prometheus::Registry,
    dir: tempfile::TempDir,
}

impl World {
    /// An agent of `NODE` whose downloads go through the fetch `make` returns (given the
    /// models folder); nothing downloads until the test calls [`Downloads::run_next`].
    fn new(grace: Duration, make: impl FnOnce(PathBuf) -> Arc<dyn Fetch>) -> Self {
        Self::with_root_watch(grace, make, RootWatch::writable())
    }

    /// As [`World::new`], the models root's state told by `root_watch`.
    fn with_root_watch(
        grace: Duration,
        make: impl FnOnce(PathBuf) -> Arc<dyn Fetch>,
        root_watch: RootWatch,
    ) -> Self {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        let (changed, _) = tokio::sync::mpsc::unbounded_channel();
        let fetch = make(root.models_dir().to_owned());
        let downloads = Downloads::start(fetch, 0, RetryPolicy::default(), changed);
        let registry = prometheus::Registry::new();
        let metrics = AgentMetrics::new(&registry).unwrap();
        let ctx = Ctx::builder(client, NODE, root, downloads.clone(), metrics)
            .grace(grace)
            .root_watch(root_watch)
            .build();
        Self {
            ctx: Arc::new(ctx),
            downloads,
            api: ApiServer(handle),
            registry,
            dir,
        }
    }

    fn folder(&self, uri: &str) -> PathBuf {
        self.dir.path().join("models").join(keys::storage_key(uri))
    }

    /// One reconcile of `lmn`, which must make exactly the `expected` requests.
    async fn reconcile(
        &mut self,
        lmn: &LocalModelNode,
        expected: Vec<Expect>,
    ) -> (Action, Vec<Seen>) {
        let work = reconcile(Arc::new(lmn.clone()), self.ctx.clone());
        let (result, seen) = self.api.serve(work, expected).await;
        (result.expect("the reconcile succeeds"), seen)
    }

    /// Runs the queued download (on another thread, as a worker would).
    async fn run_next(&self) -> bool {
        let downloads = self.downloads.clone();
        tokio::task::spawn_blocking(move || downloads.run_next())
            .await
            .unwrap()
    }

    /// `modelpull_model_downloads_total` by `result`, as scraped.
    fn downloads_total(&self) -> BTreeMap<String, u64> {
        let families = self.registry.gather();
        let family = families
            .iter()
            .find(|f| f.name() == "modelpull_model_downloads_total");
        family
            .map(|f| {
                f.get_metric()
                    .iter()
                    .map(|m| {
                        let label = m.get_label()[0].value().to_owned();
                        (label, m.get_counter().get_value() as u64)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn entry(name: &str, uri: &str) -> LocalModelInfo {
    LocalModelInfo {
        source_model_uri: uri.into(),
        model_name: name.into(),
        ..Default::default()
    }
}

/// This node's LocalModelNode at `generation`, with `entries` and the status the API server
/// holds.
fn node(
    generation: i64,
    entries: Vec<LocalModelInfo>,
    status: &[(&str, ModelStatus)],
) -> LocalModelNode {
    let mut lmn = LocalModelNode {
        spec: LocalModelNodeSpec {
            local_models: entries,
        },
        status: Some(LocalModelNodeStatus {
            model_status: Some(status.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()),
        }),
        ..Default::default()
    };
    lmn.metadata.name = Some(NODE.into());
    lmn.metadata.uid = Some("6a1e3c1e-0000-4000-8000-000000000001".into());
    lmn.metadata.generation = Some(generation);
    lmn
}

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

const LLAMA: &str = "hf://acme/llama";

#[tokio::test]
async fn a_new_entry_goes_pending_then_downloading_then_downloaded() {
    let (started_tx, started) = mpsc::channel();
    let (go, go_rx) = mpsc::channel::<()>();
    let go_rx = Mutex::new(go_rx);
    let mut w = World::new(Duration::from_secs(600), |models| {
        fake::fetch(move |order| {
            order.progress.total_bytes.store(100, Relaxed);
            order.progress.done_bytes.store(40, Relaxed);
            started_tx.send(()).unwrap();
            go_rx.lock().unwrap().recv().unwrap();
            fake::publish(&models, order.key, &order.entry.source_model_uri);
            Ok(Pulled {
                bytes: 100,
                adopted_bytes: 0,
            })
        })
    });
    let entries = || vec![entry("llama", LLAMA)];

    // Planned and queued: Pending; checked again soon while it downloads.
    let lmn = node(1, entries(), &[]);
    let (action, seen) = w.reconcile(&lmn, vec![config(), status_patch()]).await;
    assert_eq!(
        seen[1].model_status(),
        &json!({"llama": "ModelDownloadPending"})
    );
    assert_eq!(action, Action::requeue(BUSY_REFRESH));

    // Running with bytes on disk: Downloading, and an Event that it started.
    let downloads = w.downloads.clone();
    let running = std::thread::spawn(move || downloads.run_next());
    started.recv_timeout(Duration::from_secs(10)).unwrap();
    let lmn = node(1, entries(), &[("llama", ModelStatus::Pending)]);
    let (action, seen) = w
        .reconcile(&lmn, vec![config(), event(), status_patch()])
        .await;
    assert_eq!(seen[1].event("Normal", "DownloadStarted"), LLAMA);
    assert_eq!(
        seen[2].model_status(),
        &json!({"llama": "ModelDownloading"})
    );
    assert_eq!(action, Action::requeue(BUSY_REFRESH));

    // Published: Downloaded, an Event, a success counted; back to the periodic check.
    go.send(()).unwrap();
    assert!(running.join().unwrap());
    let lmn = node(1, entries(), &[("llama", ModelStatus::Downloading)]);
    let (action, seen) = w
        .reconcile(&lmn, vec![config(), event(), status_patch()])
        .await;
    let note = seen[1].event("Normal", "Downloaded");
    assert!(note.starts_with("hf://acme/llama: "), "{note}");
    assert!(note.ends_with("verified and published"), "{note}");
    assert_eq!(seen[2].model_status(), &json!({"llama": "ModelDownloaded"}));
    assert_eq!(action, Action::requeue(EVERY));
    assert_eq!(w.downloads_total(), counts(&[("ok", 1)]));

    // Nothing changed: the ConfigMap is read, nothing is written.
    let lmn = node(1, entries(), &[("llama", ModelStatus::Downloaded)]);
    let (action, _) = w.reconcile(&lmn, vec![config()]).await;
    assert_eq!(action, Action::requeue(EVERY));
}

#[tokio::test]
async fn a_removed_entry_loses_its_status_and_its_folder_after_the_grace() {
    let grace = Duration::from_millis(300);
    let mut w = World::new(grace, |models| {
        for uri in [LLAMA, "hf://acme/old"] {
            fake::publish(&models, &keys::storage_key(uri), uri);
        }
        fake::fetch(|order| panic!("nothing is downloaded, yet {} was", order.key))
    });
    let entries = || vec![entry("llama", LLAMA)];

    let lmn = node(
        2,
        entries(),
        &[
            ("llama", ModelStatus::Downloaded),
            ("old", ModelStatus::Downloaded),
        ],
    );
    let (action, seen) = w.reconcile(&lmn, vec![config(), status_patch()]).await;
    assert_eq!(seen[1].model_status(), &json!({"old": null}));
    assert_eq!(action, Action::requeue(EVERY));
    assert!(
        w.folder("hf://acme/old").exists(),
        "kept for the grace period"
    );

    tokio::time::sleep(grace).await;
    let lmn = node(2, entries(), &[("llama", ModelStatus::Downloaded)]);
    w.reconcile(&lmn, vec![config()]).await;
    assert!(!w.folder("hf://acme/old").exists(), "collected after it");
    assert!(w.folder(LLAMA).exists(), "a wanted model stays");
}

#[tokio::test]
async fn bad_input_is_an_error_with_its_event_and_waits_for_the_spec_to_change() {
    const FTP: &str = "ftp://example.com/model";
    let mut w = World::new(Duration::from_secs(600), |_| {
        fake::fetch(|order| {
            Err(DownloadError::Engine(modelpull::Error::InvalidSource {
                input: order.entry.source_model_uri.clone(),
                reason: "unsupported scheme `ftp`: use hf://, s3://, gs://, http:// or https://"
                    .into(),
            }))
        })
    });
    let entries = || vec![entry("bad", FTP)];

    let lmn = node(1, entries(), &[]);
    let (_, seen) = w.reconcile(&lmn, vec![config(), status_patch()]).await;
    assert_eq!(
        seen[1].model_status(),
        &json!({"bad": "ModelDownloadPending"})
    );

    assert!(w.run_next().await);
    let lmn = node(1, entries(), &[("bad", ModelStatus::Pending)]);
    let expected = vec![config(), event(), event(), status_patch()];
    let (action, seen) = w.reconcile(&lmn, expected).await;
    seen[1].event("Normal", "DownloadStarted");
    let note = seen[2].event("Warning", "DownloadFailed");
    assert_eq!(
        note,
        "ftp://example.com/model: invalid source `ftp://example.com/model`: unsupported scheme \
         `ftp`: use hf://, s3://, gs://, http:// or https://; not tried again until its entry \
         or the LocalModelNode's spec changes"
    );
    assert_eq!(
        seen[3].model_status(),
        &json!({"bad": "ModelDownloadError"})
    );
    assert_eq!(action, Action::requeue(EVERY), "no retry of its own");
    assert_eq!(w.downloads_total(), counts(&[("bad_input", 1)]));

    // The same spec again: nothing is started, written or reported.
    let lmn = node(1, entries(), &[("bad", ModelStatus::Error)]);
    let (action, _) = w.reconcile(&lmn, vec![config()]).await;
    assert_eq!(action, Action::requeue(EVERY));
    assert!(!w.run_next().await, "nothing queued");

    // A new generation of the spec: tried again.
    let lmn = node(2, entries(), &[("bad", ModelStatus::Error)]);
    let (_, seen) = w.reconcile(&lmn, vec![config(), status_patch()]).await;
    assert_eq!(
        seen[1].model_status(),
        &json!({"bad": "ModelDownloadPending"})
    );
    assert!(w.run_next().await);
}

#[tokio::test(start_paused = true)]
async fn event_posts_that_are_never_answered_do_not_hold_the_reconcile() {
    let mut w = World::new(Duration::from_secs(600), |_| {
        fake::fetch(|order| {
            Err(DownloadError::Engine(modelpull::Error::InvalidSource {
                input: order.entry.source_model_uri.clone(),
                reason: "unsupported scheme `ftp`".into(),
            }))
        })
    });
    let entries = || vec![entry("bad", "ftp://example.com/model")];
    let lmn = node(1, entries(), &[]);
    w.reconcile(&lmn, vec![config(), status_patch()]).await;
    assert!(w.run_next().await);

    let never = || Expect {
        method: Method::POST,
        path: EVENTS_PATH.into(),
        reply: Reply::Never,
    };
    let lmn = node(1, entries(), &[("bad", ModelStatus::Pending)]);
    let started = tokio::time::Instant::now();
    let (action, seen) = w
        .reconcile(&lmn, vec![config(), never(), event(), status_patch()])
        .await;
    assert_eq!(
        started.elapsed(),
        API_TIMEOUT,
        "the Event waited for its bound only"
    );
    seen[2].event("Warning", "DownloadFailed");
    assert_eq!(
        seen[3].model_status(),
        &json!({"bad": "ModelDownloadError"})
    );
    assert_eq!(action, Action::requeue(EVERY));
    assert!(
        !w.ctx.events.forbidden(),
        "a timeout does not turn Events off"
    );
}

#[tokio::test]
async fn refused_access_backs_off_longer_and_its_event_names_the_credentials() {
    const TOKEN: &str = "hf_reconcile_test_token";
    const GATED: &str = "hf://acme/gated";
    let mut w = World::new(Duration::from_secs(600), |_| {
        fake::fetch(|order| {
            assert_eq!(order.env.get("HF_TOKEN"), Some(TOKEN), "the Secret's token");
            Err(DownloadError::Engine(modelpull::Error::Auth {
                uri: order.entry.source_model_uri.clone(),
                message: "acme/gated is a gated repository".into(),
            }))
        })
    });
    let mut gated = entry("gated", GATED);
    gated.service_account_name = Some("hf-puller".into());

    let lmn = node(1, vec![gated.clone()], &[]);
    let expected = vec![
        config(),
        get(
            "/api/v1/namespaces/models-jobs/serviceaccounts/hf-puller",
            json!({
                "apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": "hf-puller", "namespace": "models-jobs"},
                "secrets": [{"name": "hf-secret"}, {"name": "gone"}]
            }),
        ),
        get(
            "/api/v1/namespaces/models-jobs/secrets/hf-secret",
            json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "hf-secret", "namespace": "models-jobs"},
                "data": {"HF_TOKEN": "aGZfcmVjb25jaWxlX3Rlc3RfdG9rZW4="}
            }),
        ),
        Expect {
            method: Method::GET,
            path: "/api/v1/namespaces/models-jobs/secrets/gone".into(),
            reply: Reply::NotFound,
        },
        status_patch(),
    ];
    let (_, seen) = w.reconcile(&lmn, expected).await;
    assert_eq!(
        seen[4].model_status(),
        &json!({"gated": "ModelDownloadPending"})
    );

    assert!(w.run_next().await);
    let lmn = node(1, vec![gated], &[("gated", ModelStatus::Pending)]);
    let expected = vec![config(), event(), event(), status_patch()];
    let (action, seen) = w.reconcile(&lmn, expected).await;
    seen[1].event("Normal", "DownloadStarted");
    let note = seen[2].event("Warning", "DownloadFailed");
    assert_eq!(
        note,
        "hf://acme/gated: hf://acme/gated: access denied: acme/gated is a gated repository; \
         credentials used: ServiceAccount models-jobs/hf-puller (Secrets hf-secret); trying \
         again in 120 s"
    );
    assert_eq!(
        seen[3].model_status(),
        &json!({"gated": "ModelDownloadError"})
    );
    assert_eq!(
        action,
        Action::requeue(Duration::from_secs(120)),
        "the longer backoff"
    );
    assert_eq!(w.downloads_total(), counts(&[("access_denied", 1)]));
}

#[tokio::test]
async fn a_transient_failure_is_tried_again_when_its_backoff_ends() {
    let mut w = World::new(Duration::from_secs(600), |_| {
        fake::fetch(|order| {
            Err(DownloadError::Engine(modelpull::Error::Store {
                uri: order.entry.source_model_uri.clone(),
                message: "the Hub answered HTTP 503: try later".into(),
            }))
        })
    });
    let lmn = node(1, vec![entry("llama", LLAMA)], &[]);
    w.reconcile(&lmn, vec![config(), status_patch()]).await;
    assert!(w.run_next().await);
    let lmn = node(
        1,
        vec![entry("llama", LLAMA)],
        &[("llama", ModelStatus::Pending)],
    );
    let expected = vec![config(), event(), event(), status_patch()];
    let (action, seen) = w.reconcile(&lmn, expected).await;
    seen[1].event("Normal", "DownloadStarted");
    let note = seen[2].event("Warning", "DownloadFailed");
    assert!(note.ends_with("; trying again in 30 s"), "{note}");
    assert_eq!(
        seen[3].model_status(),
        &json!({"llama": "ModelDownloadError"})
    );
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    assert_eq!(w.downloads_total(), counts(&[("transient", 1)]));
}

/// What the agent logs at warning level or above while the guard lives, on this thread (a
/// `#[tokio::test]` runs every task here).
#[derive(Clone, Default)]
struct Warnings(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Warnings {
    fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let out = Self::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(out.clone())
            .finish();
        (out, tracing::subscriber::set_default(subscriber))
    }

    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl std::io::Write for Warnings {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Warnings {
    type Writer = Self;

    fn make_writer(&'a self) -> Self {
        self.clone()
    }
}

#[tokio::test]
async fn forbidden_events_are_not_sent_again_and_status_goes_on() {
    let (warnings, _guard) = Warnings::capture();
    let mut w = World::new(Duration::from_secs(600), |models| {
        fake::fetch(move |order| {
            fake::publish(&models, order.key, &order.entry.source_model_uri);
            Ok(Pulled {
                bytes: 100,
                adopted_bytes: 0,
            })
        })
    });
    let lmn = node(1, vec![entry("llama", LLAMA)], &[]);
    w.reconcile(&lmn, vec![config(), status_patch()]).await;
    assert!(w.run_next().await);

    // Two Events are due (started, downloaded): the first is refused, the second not tried,
    // and the status is still written.
    let lmn = node(
        1,
        vec![entry("llama", LLAMA)],
        &[("llama", ModelStatus::Pending)],
    );
    let refused = Expect {
        method: Method::POST,
        path: EVENTS_PATH.into(),
        reply: Reply::Forbidden,
    };
    let (action, seen) = w
        .reconcile(&lmn, vec![config(), refused, status_patch()])
        .await;
    seen[1].event("Normal", "DownloadStarted");
    assert_eq!(seen[2].model_status(), &json!({"llama": "ModelDownloaded"}));
    assert_eq!(action, Action::requeue(EVERY));
    assert!(w.ctx.events.forbidden());
    assert_eq!(w.downloads_total(), counts(&[("ok", 1)]));

    // An invalid entry, which would get an Event of its own: its status only.
    let entries = vec![entry("llama", LLAMA), entry("a/../b", LLAMA)];
    let lmn = node(2, entries, &[("llama", ModelStatus::Downloaded)]);
    let (_, seen) = w.reconcile(&lmn, vec![config(), status_patch()]).await;
    assert_eq!(
        seen[1].model_status(),
        &json!({"a/../b": "ModelDownloadError"})
    );

    // One warning in all, naming the rule that turns Events on.
    let about_events: Vec<String> = warnings
        .lines()
        .into_iter()
        .filter(|l| l.contains("Events are forbidden"))
        .collect();
    assert_eq!(about_events.len(), 1, "{about_events:?}");
    assert!(about_events[0].contains(" WARN "), "{about_events:?}");
    assert!(
        about_events[0].contains(crate::events::RBAC_RULE),
        "{about_events:?}"
    );
}

#[tokio::test]
async fn an_unwritable_root_reports_what_is_there_and_starts_nothing() {
    const OLD: &str = "hf://acme/old";
    const BERT: &str = "hf://acme/bert";
    // A root that refuses new files: a file stands where its folder would be.
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::write(elsewhere.path().join("in-the-way"), b"").unwrap();
    let watch = RootWatch::start(
        &elsewhere.path().join("in-the-way/models"),
        Health::default(),
        || {},
    );
    assert!(!watch.is_writable());
    let grace = Duration::from_millis(1);
    let mut w = World::with_root_watch(
        grace,
        |models| {
            for uri in [LLAMA, OLD] {
                fake::publish(&models, &keys::storage_key(uri), uri);
            }
            fake::fetch(|order| panic!("{} was downloaded", order.key))
        },
        watch,
    );
    let entries = vec![entry("llama", LLAMA), entry("bert", BERT)];
    let lmn = node(1, entries.clone(), &[]);
    let (action, seen) = w.reconcile(&lmn, vec![config(), status_patch()]).await;
    assert_eq!(
        seen[1].model_status(),
        &json!({"llama": "ModelDownloaded", "bert": "ModelDownloadError"})
    );
    assert_eq!(action, Action::requeue(EVERY));
    assert!(!w.run_next().await, "nothing queued");
    tokio::time::sleep(grace * 10).await;
    let lmn = node(
        1,
        entries,
        &[
            ("llama", ModelStatus::Downloaded),
            ("bert", ModelStatus::Error),
        ],
    );
    w.reconcile(&lmn, vec![config()]).await;
    assert!(w.folder(OLD).exists(), "nothing is collected");
}

/// Scrapes `/metrics`, served from `registry` on 127.0.0.1: each series (`name{labels}`) and
/// its value.
async fn scrape(registry: &prometheus::Registry) -> BTreeMap<String, f64> {
    use crate::server::{self, BindAddress};
    use std::io::{Read, Write};
    let listener = server::bind(&BindAddress::Exact("127.0.0.1:0".parse().unwrap())).unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = tokio::spawn(server::metrics(listener, registry.clone()));
    let text = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    })
    .await
    .unwrap();
    serving.abort();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

#[tokio::test]
async fn reconciles_are_served_as_controller_runtimes_metrics() {
    let mut w = World::new(Duration::from_secs(600), |_| {
        fake::fetch(|order| panic!("nothing is downloaded, yet {} was", order.key))
    });
    let queue = &w.ctx.metrics.controller;
    queue.started(1);
    let lmn = Arc::new(node(1, vec![], &[]));

    // A watch event, then its reconcile: nothing to do until the periodic check.
    queue.requested(NODE);
    let work = metered_reconcile(lmn.clone(), w.ctx.clone());
    let (result, _) = w.api.serve(work, vec![config()]).await;
    assert_eq!(result.unwrap(), Action::requeue(EVERY));

    // The requeue, failing: the API server answers something that is not a ConfigMap.
    let work = metered_reconcile(lmn.clone(), w.ctx.clone());
    let (result, _) = w
        .api
        .serve(work, vec![get(CONFIG_PATH, json!("not a ConfigMap"))])
        .await;
    let err = result.unwrap_err();
    assert!(matches!(err, Error::Kube(_)), "{err}");
    let retry = metered_error_policy(lmn, &err, w.ctx.clone());
    assert_eq!(retry, Action::requeue(Duration::from_secs(1)));

    let metrics = scrape(&w.registry).await;
    let c = r#"controller="localmodelnode""#;
    let q = r#"controller="localmodelnode",name="localmodelnode""#;
    for (series, want) in [
        (
            format!("controller_runtime_reconcile_total{{{c},result=\"requeue_after\"}}"),
            1.0,
        ),
        (
            format!("controller_runtime_reconcile_total{{{c},result=\"error\"}}"),
            1.0,
        ),
        (
            format!("controller_runtime_reconcile_total{{{c},result=\"success\"}}"),
            0.0,
        ),
        (
            format!("controller_runtime_reconcile_total{{{c},result=\"requeue\"}}"),
            0.0,
        ),
        (
            format!("controller_runtime_reconcile_errors_total{{{c}}}"),
            1.0,
        ),
        (
            format!("controller_runtime_terminal_reconcile_errors_total{{{c}}}"),
            0.0,
        ),
        (
            format!("controller_runtime_reconcile_time_seconds_count{{{c}}}"),
            2.0,
        ),
        (
            format!("controller_runtime_max_concurrent_reconciles{{{c}}}"),
            1.0,
        ),
        (format!("controller_runtime_active_workers{{{c}}}"), 0.0),
        // The watch event, and the requeue when its reconcile started.
        (format!("workqueue_adds_total{{{q}}}"), 2.0),
        (format!("workqueue_depth{{{q},priority=\"\"}}"), 0.0),
        (
            format!("workqueue_queue_duration_seconds_count{{{q}}}"),
            1.0,
        ),
        (format!("workqueue_work_duration_seconds_count{{{q}}}"), 2.0),
        (format!("workqueue_retries_total{{{q}}}"), 1.0),
    ] {
        assert_eq!(metrics.get(&series), Some(&want), "{series}: {metrics:#?}");
    }
    let took = metrics[&format!("controller_runtime_reconcile_time_seconds_sum{{{c}}}")];
    assert!(took > 0.0 && took < 10.0, "{took}");
    let within_60s =
        metrics[&format!("controller_runtime_reconcile_time_seconds_bucket{{{c},le=\"60\"}}")];
    assert_eq!(
        within_60s, 2.0,
        "both within controller-runtime's last bucket"
    );
}
