//! The agent's command line: KServe's flags (`--leader-elect`, `--tls-*`, `--zap-*`,
//! `--kubeconfig`) and its own, with environment fallbacks, read with Go's flag syntax
//! ([`goflag`]) so that a command line written for KServe's agent means the same here.
//!
//! Exit codes are Go's: 2 for a command line the parser refuses (an unknown flag, a bad
//! boolean, a `--zap-*` value controller-runtime's flag values refuse), 0 for `--help`. TLS
//! flags that KServe's agent refuses after parsing ([`tls`]) are the caller's to report; KServe
//! exits 1 for them.

pub mod goflag;
pub mod tls;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{ArgAction, CommandFactory, FromArgMatches, Parser};

use crate::logging::{self, Encoder, TimeEncoding, ZapLevel};
use crate::server::BindAddress;

/// Keeps the models of this node's LocalModelNode on local disk, downloaded in-process,
/// verified, and published atomically. A drop-in for KServe's LocalModelNode agent; flags are
/// read as Go reads them (`-flag`, `--flag=value`, `-flag value`; booleans as `-flag` or
/// `-flag=false`).
#[derive(Debug, Parser)]
#[command(
    name = "localmodelnode-agent",
    version,
    max_term_width = 100,
    args_override_self = true
)]
pub struct Args {
    /// The node this agent serves (its LocalModelNode has the same name). In the DaemonSet,
    /// from the downward API: env NODE_NAME, valueFrom fieldRef fieldPath spec.nodeName.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// Namespace of the inferenceservice-config ConfigMap.
    #[arg(long, env = "POD_NAMESPACE", default_value = "kserve")]
    pub namespace: String,

    /// Root of the models volume; models live in ROOT/models/<storage key>.
    #[arg(long, env = "MODELS_ROOT", default_value = "/mnt/models")]
    pub models_root: PathBuf,

    /// Address of the Prometheus metrics endpoint (:PORT listens on IPv6 and IPv4).
    #[arg(long, env = "METRICS_BIND_ADDRESS", default_value = ":8080")]
    pub metrics_bind_address: BindAddress,

    /// Address of the /healthz and /readyz endpoints (:PORT listens on IPv6 and IPv4).
    #[arg(long, env = "HEALTH_PROBE_BIND_ADDRESS", default_value = ":8081")]
    pub health_probe_bind_address: BindAddress,

    /// Kubeconfig file (else KUBECONFIG, ~/.kube/config, or the in-cluster service account).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,

    /// How long a model removed from the spec keeps its folder before it is deleted.
    #[arg(long, env = "GC_GRACE", default_value = "10m", value_parser = parse_duration)]
    pub gc_grace: Duration,

    /// Models downloading at once on this node.
    #[arg(long, env = "MAX_CONCURRENT_DOWNLOADS", default_value_t = 2)]
    pub max_concurrent_downloads: usize,

    /// The most HTTP connections of one download. Each download finds its own count per host
    /// (16 at first, more while they raise the rate, fewer when the server says it is
    /// overloaded); the buffers, shared by all downloads, bound them all together.
    #[arg(long, env = "DOWNLOAD_MAX_CONNECTIONS", default_value_t = 256)]
    pub max_connections: usize,

    /// Exactly N connections to each host for each download, not adapted.
    #[arg(long, env = "DOWNLOAD_CONNECTIONS", value_name = "N", value_parser = at_least_one)]
    pub connections: Option<usize>,

    /// Buffer memory for downloads on this node, one budget shared by all of them (e.g. 192M;
    /// at least 16M per concurrent download). Default: 192M, or what fits under the container's memory limit;
    /// a value above what fits is lowered to it.
    #[arg(long, env = "DOWNLOAD_MEMORY_LIMIT", value_parser = parse_bytes)]
    pub memory_limit: Option<usize>,

    /// Bandwidth cap for downloads on this node, bytes per second (e.g. 500M).
    #[arg(long, env = "DOWNLOAD_LIMIT_RATE", value_parser = parse_rate)]
    pub limit_rate: Option<u64>,

    /// PEM CA of a proxy that intercepts HTTPS (Dragonfly's dfdaemon, on a model's
    /// HTTPS_PROXY): trusted only on connections through that proxy, never on direct ones.
    #[arg(long, env = "PROXY_CA_BUNDLE", value_name = "FILE")]
    pub proxy_ca_bundle: Option<PathBuf>,

    /// Serve the models this node holds to the other agents of its node group on this
    /// address (e.g. :8082): published files, and the flushed, checked chunks of downloads in
    /// progress, as HTTP ranges. Off when not given.
    #[arg(long, env = "PEER_BIND_ADDRESS")]
    pub peer_bind_address: Option<BindAddress>,

    /// Peers' requests served at once; more are answered 503 (busy) and ask again. Idle
    /// connections hold no place (up to four times as many are kept open).
    #[arg(long, env = "PEER_MAX_CONNECTIONS", default_value_t = 64, value_parser = at_least_one)]
    pub peer_max_connections: usize,

    /// Bandwidth cap for serving peers, bytes per second over all of them (e.g. 500M).
    #[arg(long, env = "PEER_LIMIT_RATE", value_parser = parse_rate)]
    pub peer_limit_rate: Option<u64>,

    /// The headless Service selecting the agents' pods (in --namespace): its EndpointSlices
    /// say where the other nodes' agents serve. With --peer-bind-address, the nodes that keep
    /// a model fetch it from the origin about once between them.
    #[arg(long, env = "PEER_SERVICE")]
    pub peer_service: Option<String>,

    /// How long a node's claim on its stripe of a model lasts without renewal; a stripe not
    /// renewed for this long is taken over by another node.
    #[arg(long, env = "PEER_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub peer_lease_duration: std::time::Duration,

    /// Bytes per block of a model dealt to the nodes' stripes.
    #[arg(long, env = "PEER_STRIPE_SIZE", default_value = "16M", value_parser = parse_rate)]
    pub peer_stripe_size: u64,

    /// KServe's flag; accepted, and ignored with a warning: every node's agent must reconcile
    /// its own node, so a DaemonSet must not elect a leader.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    pub leader_elect: bool,

    /// KServe's flag: VersionTLS12 or VersionTLS13 (empty: VersionTLS12). Checked as KServe
    /// checks it; the metrics endpoint is plain HTTP, as KServe's agent's is.
    #[arg(long)]
    pub tls_min_version: Option<String>,

    /// KServe's flag: Go's names of cipher suites, comma separated. Checked as KServe checks
    /// it; see --tls-min-version.
    #[arg(long)]
    pub tls_cipher_suites: Option<String>,

    /// Log level: debug, info, error, panic, or an integer > 0 for more verbose levels
    /// [default: info; debug with --zap-devel]
    #[arg(long, value_parser = ZapLevel::parse_log_level)]
    pub zap_log_level: Option<ZapLevel>,

    /// Log encoding: json or console [default: json; console with --zap-devel]
    #[arg(long, value_parser = str::parse::<Encoder>)]
    pub zap_encoder: Option<Encoder>,

    /// Development mode defaults (console, debug, stack traces from warn); production mode
    /// defaults are json, info, stack traces from error.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    pub zap_devel: bool,

    /// Level from which lines carry a stack trace: info, error or panic [default: error; warn
    /// with --zap-devel]
    #[arg(long, value_parser = ZapLevel::parse_stacktrace_level)]
    pub zap_stacktrace_level: Option<ZapLevel>,

    /// Time encoding: epoch, millis, nanos, iso8601, rfc3339 or rfc3339nano [default: rfc3339]
    #[arg(long, value_parser = str::parse::<TimeEncoding>)]
    pub zap_time_encoding: Option<TimeEncoding>,
}

/// A parsed command line.
#[derive(Debug)]
pub struct Invocation {
    pub args: Args,
    /// What Go's flag package would leave unparsed (from the first argument that is not a
    /// flag), which KServe's agent ignores; so does this one, saying so.
    pub ignored: Vec<OsString>,
}

impl Args {
    /// The process's command line; prints help, the version or the error and exits (0, 0, 2)
    /// when it is not one to run with.
    pub fn parse_go_style() -> Invocation {
        Self::try_parse_go_style(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// `argv` (the program name first), read with Go's flag syntax.
    pub fn try_parse_go_style(
        argv: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> Result<Invocation, clap::Error> {
        let mut cmd = Self::command();
        cmd.build();
        let normalised = goflag::normalise(argv, &goflag::Flags::of(&cmd)).map_err(|e| {
            let kind = match e {
                goflag::GoFlagError::Syntax(_) => ErrorKind::UnknownArgument,
                goflag::GoFlagError::Bool { .. } | goflag::GoFlagError::NeedsArgument(_) => {
                    ErrorKind::InvalidValue
                }
            };
            cmd.error(kind, e)
        })?;
        let matches = cmd.try_get_matches_from_mut(normalised.args)?;
        let args = Self::from_arg_matches(&matches).map_err(|e| e.with_cmd(&cmd))?;
        Ok(Invocation {
            args,
            ignored: normalised.ignored,
        })
    }

    /// This agent's node: `NODE_NAME` or `--node-name`, if set and not empty.
    pub fn node(&self) -> Option<&str> {
        self.node_name.as_deref().filter(|n| !n.is_empty())
    }

    /// How to log: the `--zap-*` flags with controller-runtime's defaults.
    pub fn log_options(&self) -> logging::Options {
        logging::Options::new(
            self.zap_devel,
            self.zap_encoder,
            self.zap_log_level,
            self.zap_stacktrace_level,
            self.zap_time_encoding,
        )
    }

    /// `--tls-min-version` and `--tls-cipher-suites`, checked as KServe checks them.
    pub fn tls(&self) -> Result<tls::Tls, tls::TlsError> {
        tls::resolve(
            self.tls_min_version.as_deref().unwrap_or(""),
            self.tls_cipher_suites.as_deref().unwrap_or(""),
        )
    }
}

/// A count of at least one.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> Result<Invocation, clap::Error> {
        Args::try_parse_go_style(std::iter::once("agent").chain(argv.iter().copied()))
    }

    fn args(argv: &[&str]) -> Args {
        let inv = parse(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        assert!(inv.ignored.is_empty(), "{:?}", inv.ignored);
        inv.args
    }

    /// Every form Go takes, for every value flag KServe's agent has, and ours.
    #[test]
    fn every_flag_in_every_go_form() {
        /// A flag, a value, and how to read it back.
        type Case = (&'static str, &'static str, fn(&Args) -> String);
        let cases: [Case; 10] = [
            ("tls-min-version", "VersionTLS13", |a| {
                format!("{:?}", a.tls_min_version)
            }),
            ("tls-cipher-suites", "TLS_AES_128_GCM_SHA256", |a| {
                format!("{:?}", a.tls_cipher_suites)
            }),
            ("zap-encoder", "console", |a| format!("{:?}", a.zap_encoder)),
            ("zap-log-level", "5", |a| format!("{:?}", a.zap_log_level)),
            ("zap-stacktrace-level", "panic", |a| {
                format!("{:?}", a.zap_stacktrace_level)
            }),
            ("zap-time-encoding", "epoch", |a| {
                format!("{:?}", a.zap_time_encoding)
            }),
            ("kubeconfig", "/k/config", |a| format!("{:?}", a.kubeconfig)),
            ("node-name", "gpu-1", |a| format!("{:?}", a.node_name)),
            ("metrics-bind-address", "127.0.0.1:9090", |a| {
                a.metrics_bind_address.to_string()
            }),
            ("health-probe-bind-address", "127.0.0.1:9091", |a| {
                a.health_probe_bind_address.to_string()
            }),
        ];
        let defaults = args(&[]);
        for (flag, value, get) in cases {
            let forms = [
                vec![format!("-{flag}"), value.to_owned()],
                vec![format!("-{flag}={value}")],
                vec![format!("--{flag}"), value.to_owned()],
                vec![format!("--{flag}={value}")],
            ];
            let mut seen = Vec::new();
            for form in &forms {
                let form: Vec<&str> = form.iter().map(String::as_str).collect();
                seen.push(get(&args(&form)));
            }
            assert!(seen.windows(2).all(|w| w[0] == w[1]), "{flag}: {seen:?}");
            assert_ne!(seen[0], get(&defaults), "{flag}: the value is read");
        }
        assert_eq!(
            args(&["-zap-log-level", "5"]).zap_log_level,
            Some(ZapLevel(-5))
        );
    }

    #[test]
    fn booleans_in_every_go_form() {
        for (form, leader, devel) in [
            (&[][..], false, false),
            (&["-leader-elect"], true, false),
            (&["--leader-elect"], true, false),
            (&["-leader-elect=false"], false, false),
            (&["--leader-elect=true", "-zap-devel"], true, true),
            (&["-zap-devel=1", "-leader-elect=F"], false, true),
            // Go: the last one wins.
            (&["-leader-elect", "-leader-elect=false"], false, false),
        ] {
            let a = args(form);
            assert_eq!((a.leader_elect, a.zap_devel), (leader, devel), "{form:?}");
        }
    }

    #[test]
    fn a_separate_boolean_value_ends_the_flags_as_in_go() {
        let inv = parse(&["-leader-elect", "false", "-zap-devel"]).unwrap();
        assert!(inv.args.leader_elect);
        assert!(!inv.args.zap_devel);
        assert_eq!(inv.ignored, ["false", "-zap-devel"]);
    }

    #[test]
    fn go_refusals_exit_2_and_help_exits_0() {
        for bad in [
            &["-leader-elect=yes"][..],
            &["-nope"],
            &["--nope=1"],
            &["-tls-min-version"],
            &["---zap-devel"],
            &["-zap-log-level=warn"],
            &["-zap-log-level", "0"],
            &["-zap-encoder=text"],
            &["-zap-stacktrace-level=debug"],
            &["-zap-time-encoding=nano"],
            &["-metrics-bind-address=8080"],
        ] {
            let err = parse(bad).map(|_| ()).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}: {err}");
        }
        let err = parse(&["-zap-log-level=verbose"]).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("invalid log level \"verbose\"") && message.contains("panic"),
            "{message}"
        );
        for help in [&["-h"][..], &["-help"], &["--help"]] {
            let err = parse(help).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::DisplayHelp, "{help:?}");
            assert_eq!(err.exit_code(), 0);
        }
        assert_eq!(
            parse(&["-V"]).unwrap_err().kind(),
            ErrorKind::DisplayVersion
        );
    }

    #[test]
    fn node_name_is_optional_and_empty_is_unset() {
        assert_eq!(args(&[]).node(), None);
        assert_eq!(args(&["--node-name="]).node(), None);
        assert_eq!(args(&["-node-name", "n1"]).node(), Some("n1"));
    }

    #[test]
    fn the_log_options_are_the_zap_flags_with_controller_runtimes_defaults() {
        let o = args(&["-zap-devel", "-zap-encoder=json"]).log_options();
        assert_eq!(o.encoder, Encoder::Json);
        assert_eq!(o.level, ZapLevel::DEBUG);
        let o = args(&[]).log_options();
        assert_eq!((o.encoder, o.level), (Encoder::Json, ZapLevel::INFO));
    }

    #[test]
    fn tls_flags_are_checked_as_kserve_checks_them() {
        assert!(args(&[]).tls().is_ok());
        let bad = args(&["-tls-min-version=VersionTLS10"]).tls().unwrap_err();
        assert_eq!(bad, tls::TlsError::Version("VersionTLS10".into()));
        let bad = args(&["-tls-cipher-suites=RC4"]).tls().unwrap_err();
        assert_eq!(bad, tls::TlsError::CipherSuites(vec!["RC4".into()]));
    }
}
