//! `localmodelnode-agent`: flags and environment, logging, the two ports, the connection to the
//! API server (retried with capped backoff, never a panic), and a clean stop on SIGTERM that
//! leaves every download resumable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use kube::config::{KubeConfigOptions, Kubeconfig};
use localmodelnode_agent::controller::{self, Ctx};
use localmodelnode_agent::disk::Root;
use localmodelnode_agent::fit;
use localmodelnode_agent::jobs::{Downloads, Engine, Settings};
use localmodelnode_agent::metrics::AgentMetrics;
use localmodelnode_agent::retry::RetryPolicy;
use localmodelnode_agent::root_watch::RootWatch;
use localmodelnode_agent::server::{self, Health};
use modelpull::store::Env;

/// Keeps the models of this node's LocalModelNode on local disk, downloaded in-process,
/// verified, and published atomically. A drop-in for KServe's LocalModelNode agent.
#[derive(Debug, Parser)]
#[command(name = "localmodelnode-agent", version, max_term_width = 100)]
struct Args {
    /// The node this agent serves (its LocalModelNode has the same name).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,

    /// Namespace of the inferenceservice-config ConfigMap.
    #[arg(long, env = "POD_NAMESPACE", default_value = "kserve")]
    namespace: String,

    /// Root of the models volume; models live in ROOT/models/<storage key>.
    #[arg(long, env = "MODELS_ROOT", default_value = "/mnt/models")]
    models_root: PathBuf,

    /// Address of the Prometheus metrics endpoint.
    #[arg(long, env = "METRICS_BIND_ADDRESS", default_value = ":8080", value_parser = parse_addr)]
    metrics_bind_address: SocketAddr,

    /// Address of the /healthz and /readyz endpoints.
    #[arg(long, env = "HEALTH_PROBE_BIND_ADDRESS", default_value = ":8081", value_parser = parse_addr)]
    health_probe_bind_address: SocketAddr,

    /// Kubeconfig file (else KUBECONFIG, ~/.kube/config, or the in-cluster service account).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,

    /// How long a model removed from the spec keeps its folder before it is deleted.
    #[arg(long, env = "GC_GRACE", default_value = "10m", value_parser = parse_duration)]
    gc_grace: Duration,

    /// Models downloading at once on this node.
    #[arg(long, env = "MAX_CONCURRENT_DOWNLOADS", default_value_t = 2)]
    max_concurrent_downloads: usize,

    /// HTTP connections for downloads on this node, in total.
    #[arg(long, env = "DOWNLOAD_CONNECTIONS", default_value_t = 16)]
    connections: usize,

    /// Buffer memory for downloads on this node, in total (e.g. 192M; at least 16M per
    /// concurrent download). Default: 192M, or what fits under the container's memory limit;
    /// a value above what fits is lowered to it.
    #[arg(long, env = "DOWNLOAD_MEMORY_LIMIT", value_parser = parse_bytes)]
    memory_limit: Option<usize>,

    /// Bandwidth cap for downloads on this node, bytes per second (e.g. 500M).
    #[arg(long, env = "DOWNLOAD_LIMIT_RATE", value_parser = parse_rate)]
    limit_rate: Option<u64>,

    /// KServe's flag; accepted, and ignored with a warning: every node's agent must reconcile
    /// its own node, so a DaemonSet must not elect a leader.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, default_value = "false")]
    leader_elect: bool,

    /// KServe's flag; accepted. The metrics endpoint is plain HTTP, as KServe's agent's is.
    #[arg(long)]
    tls_min_version: Option<String>,

    /// KServe's flag; accepted, see --tls-min-version.
    #[arg(long)]
    tls_cipher_suites: Option<String>,

    /// Log level: debug, info, error (zap's names; also warn, trace).
    #[arg(long, default_value = "info")]
    zap_log_level: String,

    /// Log format: json or console.
    #[arg(long, default_value = "json")]
    zap_encoder: String,

    /// Development logging: console format at debug level.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, default_value = "false")]
    zap_devel: bool,

    /// Accepted for compatibility; errors are logged without stack traces.
    #[arg(long)]
    zap_stacktrace_level: Option<String>,

    /// Accepted for compatibility; timestamps are RFC 3339.
    #[arg(long)]
    zap_time_encoding: Option<String>,
}

/// `:8080` (all interfaces, as Go writes it), `0.0.0.0:8080`, `127.0.0.1:0`.
fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_owned()
    };
    full.parse()
        .map_err(|_| format!("`{s}` is not an address (try :8080)"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (try 10m)"))?;
    Ok(Duration::from_secs(match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("`{s}`: use s, m or h")),
    }))
}

fn parse_bytes(s: &str) -> Result<usize, String> {
    parse_rate(s).map(|n| usize::try_from(n).unwrap_or(usize::MAX))
}

fn parse_rate(s: &str) -> Result<u64, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{s}` is not a rate (try 500M)"))?;
    let mult = match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => return Err(format!("`{s}`: use K, M or G")),
    };
    Ok(n * mult)
}

fn init_logging(args: &Args) {
    let level = if args.zap_devel {
        "debug".to_owned()
    } else {
        // controller-runtime's zap flag: names, or an integer verbosity (higher is more
        // verbose: 1 is debug, more is trace).
        match args.zap_log_level.as_str() {
            "dpanic" | "panic" | "fatal" => "error".to_owned(),
            l => match l.parse::<i32>() {
                Ok(n) if n <= 0 => "info".to_owned(),
                Ok(1) => "debug".to_owned(),
                Ok(_) => "trace".to_owned(),
                Err(_) => l.to_owned(),
            },
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "warn,localmodelnode_agent={level},modelpull={level}"
        ))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.zap_devel || args.zap_encoder == "console" {
        builder.init();
    } else {
        builder.json().flatten_event(true).init();
    }
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(&args);
    if args.leader_elect {
        tracing::warn!(
            "--leader-elect is ignored: each node's agent reconciles its own LocalModelNode, so a DaemonSet must not elect a leader"
        );
    }
    if args.tls_min_version.is_some() || args.tls_cipher_suites.is_some() {
        tracing::info!(
            "--tls-min-version and --tls-cipher-suites are accepted; the metrics endpoint is plain HTTP, as in KServe's agent"
        );
    }

    let registry = prometheus::Registry::new();
    let engine_metrics = modelpull::metrics::Metrics::new(&registry)?;
    let agent_metrics = AgentMetrics::new(&registry)?;
    localmodelnode_agent::throttling::CpuThrottling::register(&registry)?;
    let health = Health::default();
    tokio::spawn(serve_or_log(
        "metrics",
        server::metrics(args.metrics_bind_address, registry),
    ));
    tokio::spawn(serve_or_log(
        "health probes",
        server::probes(args.health_probe_bind_address, health.clone()),
    ));

    let root = Root::new(&args.models_root);
    let (changed_tx, changed_rx) = tokio::sync::mpsc::unbounded_channel();
    // A root that refuses new files does not stop the agent: it runs not ready until fixed.
    let root_watch = {
        let changed = changed_tx.clone();
        RootWatch::start(root.models_dir(), health.clone(), move || {
            let _ = changed.send(());
        })
    };
    // Buffers, connections and engine threads sized under the container's limits.
    let (fitted, engine) = fit::for_this_process(
        fit::Requested {
            memory_limit: args.memory_limit.map(|m| m as u64),
            concurrent: args.max_concurrent_downloads,
            connections: args.connections,
        },
        args.limit_rate,
    );
    let engine = Engine::new(
        Settings {
            models: root.models_dir().to_owned(),
            concurrent: fitted.concurrent,
            engine,
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
    tracing::info!(node = %args.node_name, root = %args.models_root.display(), "connected; watching this node's LocalModelNode");
    let node_env: Env = std::env::vars()
        .filter(|(k, _)| controller::NODE_ENV.contains(&k.as_str()))
        .collect();
    let ctx = Ctx::builder(
        client,
        &args.node_name,
        root,
        downloads.clone(),
        agent_metrics,
    )
    .namespace(&args.namespace)
    .grace(args.gc_grace)
    .health(health)
    .node_env(node_env)
    .root_watch(root_watch)
    .build();
    let ctx = Arc::new(ctx);
    controller::run(ctx, changed_rx, stopped(stop.clone())).await;
    let dl = downloads.clone();
    tokio::task::spawn_blocking(move || dl.shutdown(Duration::from_secs(4))).await?;
    Ok(())
}

async fn serve_or_log(
    what: &'static str,
    serving: impl std::future::Future<Output = std::io::Result<()>>,
) {
    if let Err(e) = serving.await {
        tracing::error!(error = %e, "the {what} endpoint cannot listen");
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
