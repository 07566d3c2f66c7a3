//! What modelpull's tests share, so each crate's tests use one kit instead of copies: test
//! data, origins ([`origin`], re-exported), the Hugging Face Hub fixture ([`hub`]), test PKI
//! ([`pki`]), the chaos proxy ([`chaos`]), the real servers the store tests run against
//! ([`servers`]), and pulls on each I/O driver.
//!
//! Not published: nothing here is part of a product.

pub mod chaos;
pub mod hub;
pub mod kserve;
pub mod pki;
pub mod servers;
pub mod stores;

pub use modelpull_origin as origin;

use std::path::{Path, PathBuf};
use std::time::Duration;

use modelpull::runtime::{Driver, DriverChoice};
use modelpull::{Algorithm, Digest};
use modelpull::{Context, Options, PullRequest, Target};
use modelpull_origin::Origin;
use sha2::Digest as _;

/// A small deterministic generator (xorshift64) for test data and fault schedules.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Deterministic pseudo-random bytes, different per seed.
pub fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// `url` with the `#sha256=` fragment of `content`, as the CLI and `Target::parse` take it.
pub fn with_sha256(url: &str, content: &[u8]) -> String {
    format!("{url}#sha256={}", sha256_hex(content))
}

/// A `.tar.gz` of `files` (path, content), each a regular file of mode 0644.
pub fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        tar.append_data(&mut h, path, *content).unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar.into_inner().unwrap()).unwrap();
    gz.finish().unwrap()
}

/// A directory of files served by an origin, plus a place to pull into.
#[derive(Debug)]
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub origin: Origin,
}

impl Fixture {
    /// Writes `files` (name, content) and serves them.
    pub fn new(files: &[(&str, &[u8])]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("origin");
        for (name, content) in files {
            let p = root.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        let origin = Origin::serve(&root).unwrap();
        Self { dir, origin }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("origin")
    }

    pub fn dest(&self, name: &str) -> PathBuf {
        self.dir.path().join("out").join(name)
    }

    /// A target for `name`, with its sha256 when `with_digest`.
    pub fn target(&self, name: &str, with_digest: bool) -> Target {
        let mut url = self.origin.url(name);
        if with_digest {
            url = with_sha256(&url, &std::fs::read(self.root().join(name)).unwrap());
        }
        Target::parse(&url).unwrap()
    }
}

/// Logs to the test's output when `RUST_LOG` is set.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Small chunks and short timeouts so tests exercise many ranges quickly.
pub fn options(driver: Driver) -> Options {
    init_logs();
    Options {
        cores: 2,
        driver: match driver {
            Driver::Uring => DriverChoice::Uring,
            Driver::Epoll => DriverChoice::Epoll,
        },
        max_connections: 6,
        chunk_size: 64 * 1024,
        range_size: 256 * 1024,
        memory_limit: 4 * 1024 * 1024,
        connect_timeout: Duration::from_secs(5),
        stall_timeout: Duration::from_secs(2),
        retries: 5,
        backoff_base: Duration::from_millis(10),
        backoff_cap: Duration::from_millis(200),
        ..Options::default()
    }
}

pub fn pull(
    targets: Vec<Target>,
    dest: &Path,
    opts: &Options,
) -> modelpull::Result<modelpull::Report> {
    modelpull::pull(
        &PullRequest {
            sources: Vec::new(),
            unpack: false,
            adopt: false,
            targets,
            dest: dest.to_owned(),
        },
        opts,
        &Context::default(),
    )
}

/// Asserts `dest/name` holds exactly `expected`.
pub fn assert_file(dest: &Path, name: &str, expected: &[u8]) {
    let got = std::fs::read(dest.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(got.len(), expected.len(), "{name}: size");
    assert!(got == expected, "{name}: content differs");
}

/// No temporary files left anywhere under `dir`.
pub fn assert_clean(dir: &Path) {
    for entry in walk(dir) {
        let name = entry.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !name.ends_with(".part")
                && !name.ends_with(".modelpull-journal")
                && !name.ends_with(".modelpull"),
            "leftover {}",
            entry.display()
        );
    }
}

pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}

pub fn sha256_of(report: &modelpull::Report, name: &str) -> String {
    report
        .files
        .iter()
        .find(|f| f.path == name)
        .and_then(|f| f.digests.iter().find(|d| d.algorithm == Algorithm::Sha256))
        .map(Digest::hex)
        .unwrap_or_default()
}

/// Runs `f` once per driver available here (io_uring and epoll).
pub fn each_driver(mut f: impl FnMut(Driver)) {
    for d in modelpull::runtime::test_drivers() {
        eprintln!("--- driver {}", d.name());
        f(d);
    }
}

/// Lists `uri` with `env` (never the process environment) and pulls it into `dest` as the
/// CLI does: the store's TLS needs applied, a single archive unpacked.
pub fn pull_uri(
    uri: &str,
    env: &modelpull::store::Env,
    dest: &Path,
    opts: &Options,
) -> modelpull::Result<modelpull::Report> {
    let control = modelpull::store::Control::new(&opts.client())?;
    let manifest = modelpull::store::resolve(uri, env, &control)?;
    let mut opts = opts.clone();
    opts.apply_tls(&manifest);
    modelpull::pull(
        &PullRequest {
            sources: Vec::new(),
            targets: manifest.files,
            dest: dest.to_owned(),
            unpack: true,
            adopt: false,
        },
        &opts,
        &Context::default(),
    )
}

/// Default engine options with short timeouts, on the automatic driver.
pub fn store_options() -> Options {
    init_logs();
    Options {
        connect_timeout: Duration::from_secs(5),
        stall_timeout: Duration::from_secs(10),
        backoff_base: Duration::from_millis(10),
        backoff_cap: Duration::from_millis(200),
        ..Options::default()
    }
}

/// The checksum label the report gives `path`.
pub fn checksum_of(report: &modelpull::Report, path: &str) -> String {
    report
        .files
        .iter()
        .find(|f| f.path == path)
        .map(|f| f.checksum.clone())
        .unwrap_or_else(|| panic!("{path} is not in the report"))
}

/// How many requests `origin` has recorded, once no more arrive for 100 ms: a request a
/// killed client sent just before it died may still be in the origin's hands.
pub fn settled_requests(origin: &Origin) -> usize {
    let count = || origin.stats().served.lock().unwrap().len();
    let mut last = count();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = count();
        if now == last {
            return now;
        }
        last = now;
    }
}

/// CLI flags for many small ranges on few connections, so that a pull a test kills has
/// finished some chunks and not others.
pub const SMALL_RANGES: [&str; 6] = [
    "--chunk-size",
    "256K",
    "--range-size",
    "1M",
    "--connections",
    "4",
];

/// Chunk indices a resume journal records as finished.
pub fn finished_chunks(journal: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(journal).unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["chunk"]["index"].as_u64())
        .collect()
}

/// Fails the test, with the program's stderr, unless it exited 0.
pub fn assert_success(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
