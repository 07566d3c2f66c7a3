//! Command-line definition.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::NonEmptyStringValueParser;
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
    /// Download a model into a new directory (or the Hugging Face cache), verified and
    /// published atomically.
    #[command(
        after_help = PULL_AFTER,
        override_usage = "modelpull pull [OPTIONS] <SOURCE>... [DEST]\n       modelpull pull [OPTIONS] <SOURCE>... --local-dir <DIR>\n       modelpull pull [OPTIONS] hf://ORG/MODEL[:REVISION]"
    )]
    Pull(PullArgs),
    /// List the files a source holds (path, size, what they are verified against).
    #[command(after_help = LS_AFTER)]
    Ls(LsArgs),
    /// Pull a generated model from a local origin and report throughput (needs nothing else).
    Demo(DemoArgs),
    /// Print a shell completion script.
    #[command(after_help = COMPLETIONS_AFTER)]
    Completions(CompletionsArgs),
}

/// The sources section shared by `pull` and `ls` (a macro so `concat!` can join it).
macro_rules! sources_help {
    () => {
        "\
SOURCES, as KServe's storage-initializer takes them:
  hf://ORG/MODEL[:REVISION]   Hugging Face Hub (HF_ENDPOINT, HF_TOKEN); files verified by sha256
                              (LFS) or git blob sha1
  s3://BUCKET/PREFIX          S3 or S3-compatible (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
                              AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL or S3_ENDPOINT +
                              S3_USE_HTTPS, S3_USER_VIRTUAL_BUCKET, awsAnonymousCredential,
                              S3_VERIFY_SSL, AWS_CA_BUNDLE); an exact key fetches that one object
  gs://BUCKET/PREFIX          Google Cloud Storage (GOOGLE_APPLICATION_CREDENTIALS, or the metadata
                              server; STORAGE_EMULATOR_HOST); verified by crc32c
  http(s)://HOST/PATH         one file; headers from the env variable `HOST-headers` (JSON);
                              append #sha256=<hex> (or sha1, md5, crc32, crc32c, crc64nvme) to verify
STORAGE_ALLOW_PATTERNS / STORAGE_IGNORE_PATTERNS (JSON or comma list of fnmatch patterns) filter
listed files, as --include / --exclude do. HTTPS_PROXY, HTTP_PROXY, NO_PROXY are honoured."
    };
}

/// How --include / --exclude / --revision work, shared by `pull` and `ls`.
macro_rules! selection_help {
    () => {
        "\
SELECTION: --include and --exclude take fnmatch patterns (`*`, `?`, `[seq]`; `*` crosses `/`)
matched against each file's path in the source; for hf://, a pattern ending in `/` matches
that folder's contents. They filter like STORAGE_ALLOW_PATTERNS / STORAGE_IGNORE_PATTERNS and
take their place, each on its own: --include replaces STORAGE_ALLOW_PATTERNS, --exclude
replaces STORAGE_IGNORE_PATTERNS, and a variable without its flag still applies. A file is
kept when it matches an include pattern (or none is given) and no exclude pattern. A single
file (an http(s) URL, an exact S3 key or GCS object) is fetched whatever the patterns.
--revision REV is hf://ORG/MODEL:REV for every hf:// source; it is refused with other schemes
and when a source names another revision.

"
    };
}

const COMPLETIONS_AFTER: &str = "\
Install, for example:
  bash  echo 'source <(modelpull completions bash)' >> ~/.bashrc
  zsh   modelpull completions zsh > \"${fpath[1]}/_modelpull\"
  fish  modelpull completions fish > ~/.config/fish/completions/modelpull.fish";

const LS_AFTER: &str = concat!(
    "\
Prints one line per file: size, what it will be verified against, path. --json prints the
manifest as JSON. Nothing is downloaded. Exit codes as for `modelpull pull`.

",
    selection_help!(),
    sources_help!()
);

const PULL_AFTER: &str = concat!(
    "\
See SOURCES below. Files of all sources land in DEST at their path relative to the source's
prefix. A pull that yields exactly one .tar, .tar.gz, .tgz or .zip unpacks it in place and
removes it (--keep-archive keeps it as it is).

DEST (or --local-dir DIR) is the model directory to create. Files are staged in a hidden
sibling directory and DEST appears only when every file is verified. Running the same command
again resumes an interrupted pull, or does nothing if DEST is already complete.

Without DEST, an hf:// model goes to the Hugging Face cache, laid out as huggingface_hub lays
it out (models--ORG--MODEL/blobs, snapshots/COMMIT, refs/REVISION): HF_HUB_CACHE, else
HF_HOME/hub, else ~/.cache/huggingface/hub. Blobs already there are not fetched again; the
snapshot appears only when every file is verified.

OUTPUT: stdout gets one line, the model directory's absolute path, as `hf download` prints it:
MODEL=$(modelpull pull -q SOURCE DEST). The summary goes to stderr; on a terminal, so do the
listing and a progress display (bytes, rate, ETA, the files downloading). --quiet leaves only
the path and errors; --json prints the JSON report on stdout instead of the path.

Sizes take K, M, G, T (powers of 1024; KB, MB, GB for powers of 1000).

Exit codes:
  0    success (or DEST already complete)
  1    internal error
  2    bad input: malformed URI, unsupported scheme, bad digest, invalid option, a store
       listing with unsafe paths, DEST occupied
  3    source, store or network failure after retries (HTTP error, TLS, timeouts, not found,
       refused archive)
  4    verification failure: a file did not match its digest or listed size
  5    local I/O failure: destination not writable, disk full, locked by another process
  6    the store refused access: wrong or missing credentials, gated or private model
  130  interrupted (SIGINT/SIGTERM); run again to resume

",
    selection_help!(),
    sources_help!()
);

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Models or files to fetch (hf://, s3://, gs://, http(s)://), then DEST, the model
    /// directory to create; without DEST, an hf:// model goes to the Hugging Face cache.
    #[arg(value_name = "SOURCE", num_args = 1.., required = true)]
    pub sources: Vec<String>,

    /// The model directory to create, files at their plain paths (the same as DEST).
    #[arg(long, value_name = "DIR")]
    pub local_dir: Option<PathBuf>,

    /// Keep a single downloaded archive as it is instead of unpacking it.
    #[arg(long)]
    pub keep_archive: bool,

    /// Take over a DEST another tool wrote (KServe's storage initializer, `hf download`):
    /// check its files where they lie, keep those that match the store's digests and fetch
    /// only the others. A DEST this user cannot write to is exchanged for a verified copy
    /// (the previous folder is left beside it, named `.DEST.modelpull-old-SECONDS`).
    #[arg(long)]
    pub adopt: bool,

    /// Another server with the same files: a file at path P is also at BASE_URL/P
    /// (repeatable). Ranges go to mirrors first and to the origin only when none can serve
    /// them; mirrors get no credentials, and every file is still checked against the
    /// origin's digest (one that fails is fetched again from the origin alone).
    #[arg(long, value_name = "BASE_URL")]
    pub mirror: Vec<String>,

    #[command(flatten)]
    pub select: SelectArgs,

    #[command(flatten)]
    pub engine: EngineArgs,

    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Models or files to list (hf://, s3://, gs://, http(s)://).
    #[arg(value_name = "SOURCE", num_args = 1.., required = true)]
    pub sources: Vec<String>,

    /// Print the manifest as JSON.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub select: SelectArgs,

    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Which files of the sources `pull` fetches and `ls` lists (see SELECTION in `--help`).
#[derive(Debug, Args)]
#[command(next_help_heading = "Selection")]
pub struct SelectArgs {
    /// Only files matching PATTERN (repeatable); replaces STORAGE_ALLOW_PATTERNS.
    #[arg(long, value_name = "PATTERN", value_parser = NonEmptyStringValueParser::new())]
    pub include: Vec<String>,

    /// No file matching PATTERN (repeatable); replaces STORAGE_IGNORE_PATTERNS.
    #[arg(long, value_name = "PATTERN", value_parser = NonEmptyStringValueParser::new())]
    pub exclude: Vec<String>,

    /// Branch, tag or commit of hf:// sources, as in hf://ORG/MODEL:REV.
    #[arg(long, value_name = "REV", value_parser = NonEmptyStringValueParser::new())]
    pub revision: Option<String>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete `modelpull` in.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
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

    /// No progress display, even on a terminal.
    #[arg(long)]
    pub no_progress: bool,

    /// Nothing on stderr but errors: no progress, listing, summary or warnings.
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Engine")]
pub struct EngineArgs {
    /// Engine cores (threads, each with its own I/O ring) [default: all CPUs].
    #[arg(long, env = "MODELPULL_CORES")]
    pub cores: Option<usize>,

    /// I/O driver: io_uring, epoll, or io_uring with fallback to epoll.
    #[arg(long, value_enum, default_value_t = Driver::Auto, env = "MODELPULL_DRIVER")]
    pub driver: Driver,

    /// Do not pin engine threads to CPUs.
    #[arg(long)]
    pub no_pin: bool,

    /// Exactly N connections to each host. Without it, each host starts with 16 and gets more
    /// while they raise its rate, fewer when it answers 429/503 or refuses connections.
    #[arg(long, value_name = "N", env = "MODELPULL_CONNECTIONS")]
    pub connections: Option<usize>,

    /// The most connections over all hosts; --memory-limit bounds them too (one chunk each).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 256,
        env = "MODELPULL_MAX_CONNECTIONS"
    )]
    pub max_connections: usize,

    /// Unit of buffering, writing and checksumming (multiple of 4K).
    #[arg(long, default_value = "2M", value_parser = parse_size)]
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

    /// PEM CA of a proxy that intercepts HTTPS (Dragonfly's dfdaemon, on `HTTPS_PROXY`):
    /// trusted only on connections through that proxy, never on direct ones.
    #[arg(long, value_name = "FILE", env = "MODELPULL_PROXY_CA_BUNDLE")]
    pub proxy_ca_bundle: Option<PathBuf>,

    /// Extra request header, `Name: value` (repeatable); sent only to each source's own host.
    #[arg(long = "header", short = 'H', value_name = "HEADER", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
}

impl EngineArgs {
    pub fn options(&self) -> modelpull::Options {
        let d = modelpull::Options::default();
        modelpull::Options {
            cores: self.cores.unwrap_or(d.cores),
            driver: self.driver.into(),
            pin: !self.no_pin,
            connections: self.connections,
            max_connections: self.max_connections,
            chunk_size: usize::try_from(self.chunk_size).unwrap_or(usize::MAX),
            range_size: self.range_size,
            memory_limit: usize::try_from(self.memory_limit).unwrap_or(usize::MAX),
            limit_rate: self.limit_rate,
            connect_timeout: self.connect_timeout,
            stall_timeout: self.stall_timeout,
            retries: self.retries,
            verify_attempts: self.verify_attempts,
            ca_bundle: self.ca_bundle.clone().map(Into::into),
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

/// `--driver`: the engine's [`DriverChoice`] as a command-line value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Driver {
    /// io_uring when the kernel allows it, epoll otherwise.
    Auto,
    /// io_uring, or fail.
    Uring,
    /// epoll, even where io_uring works.
    Epoll,
}

impl From<Driver> for DriverChoice {
    fn from(d: Driver) -> Self {
        match d {
            Driver::Auto => DriverChoice::Auto,
            Driver::Uring => DriverChoice::Uring,
            Driver::Epoll => DriverChoice::Epoll,
        }
    }
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
