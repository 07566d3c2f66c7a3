//! Command-line definition.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use modelpull::runtime::DriverChoice;

/// Fast, verified, resumable downloads of large ML models to local disk.
///
/// modelpull fetches every file with parallel ranged HTTP requests on a thread-per-core
/// io_uring engine, writes it with O_DIRECT, verifies it against its digest, and publishes the
/// model directory atomically: it either appears whole and verified, or not at all. An
/// interrupted pull continues where it stopped when run again.
#[derive(Debug, Parser)]
#[command(
    name = "modelpull",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// More log output (-v: info, -vv: debug). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Download files into a new model directory, verified and published atomically.
    #[command(after_help = PULL_AFTER)]
    Pull(PullArgs),
    /// Pull a generated model from a local origin and report throughput (needs nothing else).
    Demo(DemoArgs),
}

const PULL_AFTER: &str = "\
SOURCES are http(s) URLs. Append the expected digest as a fragment to have it checked:
  https://host/model.safetensors#sha256=<64 hex digits>   (also sha1, md5, crc32, crc32c, crc64nvme;
  several joined with &). Without one, sha256 is computed and reported.

DEST is the model directory to create. Files are staged in a hidden sibling directory and DEST
appears only when every file is verified. Running the same command again resumes an
interrupted pull, or does nothing if DEST is already complete.

Sizes take K, M, G, T (powers of 1024; KB, MB, GB for powers of 1000).

Exit codes:
  0    success (or DEST already complete)
  1    internal error
  2    bad input: malformed URL, unsupported scheme, bad digest, invalid option, DEST occupied
  3    source or network failure after retries (HTTP error, TLS, timeouts)
  4    verification failure: a file did not match its digest or listed size
  5    local I/O failure: destination not writable, disk full, locked by another process
  130  interrupted (SIGINT/SIGTERM); run again to resume";

#[derive(Debug, Args)]
pub struct PullArgs {
    /// URLs to fetch.
    #[arg(value_name = "SOURCE", num_args = 1.., required = true)]
    pub sources: Vec<String>,

    /// The model directory to create.
    #[arg(value_name = "DEST")]
    pub dest: PathBuf,

    #[command(flatten)]
    pub engine: EngineArgs,

    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Total size of the generated model shards.
    #[arg(long, default_value = "2G", value_parser = parse_size)]
    pub size: u64,

    /// Number of shards.
    #[arg(long, default_value_t = 4)]
    pub shards: usize,

    /// Directory for the temporary destination (default: the system temporary directory).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Keep the pulled model and print where it is.
    #[arg(long)]
    pub keep: bool,

    #[command(flatten)]
    pub engine: EngineArgs,

    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Output")]
pub struct OutputArgs {
    /// Print one JSON report on stdout (errors too) instead of text.
    #[arg(long)]
    pub json: bool,

    /// No progress bar, even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Engine")]
pub struct EngineArgs {
    /// Engine cores (threads, each with its own I/O ring) [default: all CPUs].
    #[arg(long, env = "MODELPULL_CORES")]
    pub cores: Option<usize>,

    /// I/O driver: io_uring, epoll, or io_uring with fallback to epoll.
    #[arg(long, value_enum, default_value_t = DriverChoice::Auto, env = "MODELPULL_DRIVER")]
    pub driver: DriverChoice,

    /// Do not pin engine threads to CPUs.
    #[arg(long)]
    pub no_pin: bool,

    /// Concurrent connections in total.
    #[arg(long, default_value_t = 16, env = "MODELPULL_CONNECTIONS")]
    pub connections: usize,

    /// Concurrent connections per host.
    #[arg(long, default_value_t = 16)]
    pub connections_per_host: usize,

    /// Unit of buffering, writing and checksumming (multiple of 4K).
    #[arg(long, default_value = "4M", value_parser = parse_size)]
    pub chunk_size: u64,

    /// Bytes per ranged request (multiple of --chunk-size).
    #[arg(long, default_value = "8M", value_parser = parse_size)]
    pub range_size: u64,

    /// Memory for chunk buffers, in total.
    #[arg(long, default_value = "192M", value_parser = parse_size, env = "MODELPULL_MEMORY_LIMIT")]
    pub memory_limit: u64,

    /// Cap on total bandwidth, bytes per second (e.g. 100M).
    #[arg(long, value_parser = parse_size, env = "MODELPULL_LIMIT_RATE")]
    pub limit_rate: Option<u64>,

    /// Seconds to wait for a connection (and TLS handshake).
    #[arg(long, default_value = "10", value_parser = parse_secs)]
    pub connect_timeout: Duration,

    /// Seconds without a byte before a connection is dropped and its range retried.
    #[arg(long, default_value = "30", value_parser = parse_secs)]
    pub stall_timeout: Duration,

    /// Attempts per request before the pull fails.
    #[arg(long, default_value_t = 8)]
    pub retries: u32,

    /// Downloads of a file that fails verification before the pull fails.
    #[arg(long, default_value_t = 3)]
    pub verify_attempts: u32,

    /// Extra PEM CA certificates to trust, besides the system's and Mozilla's.
    #[arg(long, value_name = "FILE", env = "MODELPULL_CA_BUNDLE")]
    pub ca_bundle: Option<PathBuf>,

    /// Extra request header, `Name: value` (repeatable); sent only to each source's own host.
    #[arg(long = "header", short = 'H', value_name = "HEADER", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
}

impl EngineArgs {
    pub fn options(&self) -> modelpull::Options {
        let d = modelpull::Options::default();
        modelpull::Options {
            cores: self.cores.unwrap_or(d.cores),
            driver: self.driver,
            pin: !self.no_pin,
            connections: self.connections,
            connections_per_host: self.connections_per_host,
            chunk_size: usize::try_from(self.chunk_size).unwrap_or(usize::MAX),
            range_size: self.range_size,
            memory_limit: usize::try_from(self.memory_limit).unwrap_or(usize::MAX),
            limit_rate: self.limit_rate,
            connect_timeout: self.connect_timeout,
            stall_timeout: self.stall_timeout,
            retries: self.retries,
            verify_attempts: self.verify_attempts,
            ca_bundle: self.ca_bundle.clone(),
            headers: self.headers.clone(),
            ..d
        }
    }
}

/// Parses `4096`, `64K`, `4M`, `1.5G`, `2GiB`, `100MB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (try 4M or 2G)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024f64.powi(2),
        "g" | "gib" => 1024f64.powi(3),
        "t" | "tib" => 1024f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        other => {
            return Err(format!(
                "unknown size unit `{other}` (use K, M, G, T or KB, MB, GB, TB)"
            ));
        }
    };
    let bytes = value * mult;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(bytes as u64)
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(v > 0.0 && v.is_finite()) {
        return Err("must be a positive number of seconds".into());
    }
    Ok(Duration::from_secs_f64(v))
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s.split_once(':').ok_or("expected `Name: value`")?;
    let name = name.trim();
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
    {
        return Err(format!("`{name}` is not a valid header name"));
    }
    if value.contains(['\r', '\n']) {
        return Err("header values cannot contain line breaks".into());
    }
    Ok((name.to_owned(), value.trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1.5k"), Ok(1536));
        assert_eq!(parse_size("100MB"), Ok(100_000_000));
        assert!(parse_size("4X").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn headers() {
        assert_eq!(
            parse_header("Authorization: Bearer x"),
            Ok(("Authorization".into(), "Bearer x".into()))
        );
        assert!(parse_header("no colon").is_err());
        assert!(parse_header("Bad Name: x").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
