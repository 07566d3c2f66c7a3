//! `localmodelnode-agent`: the command line and logging, the two ports, the connection to the
//! API server (retried with capped backoff, never a panic), and a clean stop on SIGTERM that
//! leaves every download resumable. Without `NODE_NAME` it keeps serving, never ready, until
//! stopped (`docker run IMAGE` shows it working and says what is missing).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kube::config::{KubeConfigOptions, Kubeconfig};
use localmodelnode_agent::cli::Args;
use localmodelnode_agent::controller::{self, Ctx};
use localmodelnode_agent::disk::Root;
use localmodelnode_agent::fit;
use localmodelnode_agent::group::{self, Coordinator};
use localmodelnode_agent::jobs::{Downloads, Engine, Settings};
use localmodelnode_agent::logging::{self, SETUP};
use localmodelnode_agent::metrics::{self, AgentMetrics};
use localmodelnode_agent::peer::{self, PeerMetrics};
use localmodelnode_agent::retry::RetryPolicy;
use localmodelnode_agent::root_watch::RootWatch;
use localmodelnode_agent::server::{self, Health};
use modelpull::store::Env;

/// What `/readyz` and the log say when the agent does not know its node.
const NO_NODE_NAME: &str = "NODE_NAME is not set, so this agent does not know which LocalModelNode is its own: \
     in the DaemonSet, set it from the downward API (env: - name: NODE_NAME, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}), \
     or pass --node-name";

#[tokio::main]
async fn main() -> ExitCode {
    let invocation = Args::parse_go_style();
    let args = invocation.args;
    logging::init(&args.log_options());
    if !invocation.ignored.is_empty() {
        tracing::warn!(
            target: SETUP,
            ignored = ?invocation.ignored,
            "arguments from the first that is not a flag are ignored, as KServe's agent (Go's flag package) ignores them; write a boolean as -flag=false, not -flag false"
        );
    }
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(target: SETUP, error = format!("{e:#}"), "unable to run the agent");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let tls = args
        .tls()
        .context("unable to resolve the TLS configuration")?;
    if args.tls_min_version.is_some() || args.tls_cipher_suites.is_some() {
        tracing::info!(target: SETUP, %tls, "TLS flags are valid; as in KServe's agent, they configure no listener (metrics are plain HTTP)");
    }
    if args.leader_elect {
        tracing::warn!(
            target: SETUP,
            "--leader-elect is ignored: each node's agent reconciles its own LocalModelNode, so a DaemonSet must not elect a leader"
        );
    }

    let registry = prometheus::Registry::new();
    let engine_metrics = modelpull::metrics::Metrics::new(&registry)?;
    let agent_metrics = AgentMetrics::new(&registry)?;
    metrics::register_process(&registry)?;
    localmodelnode_agent::throttling::CpuThrottling::register(&registry)?;
    let peer_metrics = match args.peer_bind_address {
        Some(_) => Some(PeerMetrics::new(&registry)?),
        None => None,
    };
    let health = Health::default();
    if args.node().is_none() {
        health.block(NO_NODE_NAME);
    }
    let listen = |what: &str, addr| {
        server::bind(addr).with_context(|| format!("cannot listen on {addr} for {what}"))
    };
    let metrics_listener = listen("/metrics", &args.metrics_bind_address)?;
    let probes_listener = listen("the health probes", &args.health_probe_bind_address)?;
    tokio::spawn(serve_or_log(
        "metrics",
        server::metrics(metrics_listener, registry),
    ));
    tokio::spawn(serve_or_log(
        "health probes",
        server::probes(probes_listener, health.clone()),
    ));
    if let (Some(addr), Some(metrics)) = (&args.peer_bind_address, peer_metrics) {
        let listener = listen("peers", addr)?;
        let limits = peer::Limits {
            max_connections: args.peer_max_connections,
            limit_rate: args.peer_limit_rate,
        };
        let models = args.models_root.join("models");
        tracing::info!(target: SETUP, address = %addr, "serving this node's models to its peers");
        tokio::spawn(serve_or_log(
            "peers",
            peer::serve(listener, models, limits, metrics),
        ));
    }

    let Some(node) = args.node() else {
        tracing::error!(target: SETUP, "{NO_NODE_NAME}");
        wait_for_signal().await;
        tracing::info!(target: SETUP, "stopping");
        return Ok(());
    };

    let root = Root::new(&args.models_root);
    // Sharing downloads with the node group needs both the peer server and the peers' Service.
    let coordinator = match (&args.peer_bind_address, &args.peer_service) {
        (Some(_), Some(service)) => Some(Arc::new(Coordinator::new(
            group::Settings {
                node: node.to_owned(),
                namespace: args.namespace.clone(),
                service: service.clone(),
                lease_duration: args.peer_lease_duration,
                stripe_size: args.peer_stripe_size,
            },
            tokio::runtime::Handle::current(),
        ))),
        (None, Some(_)) => {
            tracing::warn!(target: SETUP, "--peer-service is ignored without --peer-bind-address: a node that serves nothing takes nothing from its peers");
            None
        }
        _ => None,
    };
    let (changed_tx, changed_rx) = tokio::sync::mpsc::unbounded_channel();
    // A root that refuses new files does not stop the agent: it runs not ready until fixed.
    let root_watch = {
        let changed = changed_tx.clone();
        RootWatch::start(root.models_dir(), health.clone(), move || {
            let _ = changed.send(());
        })
    };
    let proxy_ca = args
        .proxy_ca_bundle
        .as_deref()
        .map(|path| {
            let bundle = modelpull::CaBundle::from(path);
            bundle
                .certificates()
                .map(|_| bundle)
                .context("--proxy-ca-bundle")
        })
        .transpose()?;
    // Buffers, connections and engine threads sized under the container's limits.
    let (fitted, engine) = fit::for_this_process(
        fit::Requested {
            memory_limit: args.memory_limit.map(|m| m as u64),
            concurrent: args.max_concurrent_downloads,
            connections: args.connections,
            max_connections: args.max_connections,
        },
        args.limit_rate,
    );
    let engine = Engine::new(
        Settings {
            models: root.models_dir().to_owned(),
            concurrent: fitted.concurrent,
            engine,
            group: coordinator.clone(),
            proxy_ca,
        },
        engine_metrics,
    );
    let downloads = Downloads::start(
        Arc::new(engine),
        fitted.concurrent,
        RetryPolicy::default(),
        changed_tx,
    );

    // A watch channel, not a Notify: a signal that arrives before anyone waits is not lost.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    {
        let downloads = downloads.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!(
                target: SETUP,
                "stopping: downloads pause at a chunk boundary and resume on the next start"
            );
            downloads.cancel_all();
            let _ = stop_tx.send(true);
        });
    }
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let mut delay = Duration::from_secs(1);
    let client = loop {
        match kube_client(&args).await {
            Ok(client) => break client,
            Err(e) => {
                tracing::warn!(
                    target: SETUP,
                    error = format!("{e:#}"),
                    retry_in_s = delay.as_secs(),
                    "cannot reach the Kubernetes API server; serving /healthz, not ready"
                );
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stopped(stop.clone()) => {
                        let dl = downloads.clone();
                        tokio::task::spawn_blocking(move || dl.shutdown(Duration::from_secs(4))).await?;
                        return Ok(());
                    }
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    };
    tracing::info!(target: SETUP, node, root = %args.models_root.display(), "connected; watching this node's LocalModelNode");
    if let Some(c) = &coordinator {
        c.connect(client.clone());
    }
    let node_env: Env = std::env::vars()
        .filter(|(k, _)| controller::NODE_ENV.contains(&k.as_str()))
        .collect();
    let ctx = Ctx::builder(client, node, root, downloads.clone(), agent_metrics)
        .namespace(&args.namespace)
        .grace(args.gc_grace)
        .health(health)
        .node_env(node_env)
        .root_watch(root_watch)
        .group(coordinator)
        .build();
    controller::run(Arc::new(ctx), changed_rx, stopped(stop.clone())).await;
    let dl = downloads.clone();
    tokio::task::spawn_blocking(move || dl.shutdown(Duration::from_secs(4))).await?;
    Ok(())
}

async fn kube_client(args: &Args) -> anyhow::Result<kube::Client> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?
        }
        None => kube::Config::infer().await.context(
            "no kubeconfig (--kubeconfig, KUBECONFIG, ~/.kube/config) and not in a cluster",
        )?,
    };
    let client = kube::Client::try_from(config)?;
    tokio::time::timeout(controller::API_TIMEOUT, client.apiserver_version())
        .await
        .context("the Kubernetes API server did not answer in time")?
        .context("the Kubernetes API server does not answer")?;
    Ok(client)
}

async fn serve_or_log(
    what: &'static str,
    serving: impl std::future::Future<Output = std::io::Result<()>>,
) {
    if let Err(e) = serving.await {
        tracing::error!(target: SETUP, error = %e, "the {what} endpoint stopped serving");
    }
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
