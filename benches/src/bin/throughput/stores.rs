//! The store rows: one model pulled through each store's own protocol, by `modelpull` and by
//! KServe's storage initializer, from servers on 127.0.0.1: the in-tree Hub fixture (with its
//! CDN), moto for S3 and gcp-storage-emulator for GCS.
//!
//! These servers are Python (moto, the emulator) or test fixtures; moto closes every
//! connection and the emulator serves one request at a time, so the rows show each store's
//! path working end to end and the cost of its control plane, not a network's speed. S3's
//! data path is plain ranged GETs of the same size as the nginx rows, which are the ones to
//! judge speed by.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use modelpull_testkit::hub::{Hub, HubRepo};

use crate::data::DataSet;

const BUCKET: &str = "bench";
const PREFIX: &str = "model";
/// The Hub repository the data set is served as.
pub const REPO: &str = "bench/model";

/// A model store under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    Hf,
    S3,
    Gs,
}

impl Store {
    pub const ALL: [Store; 3] = [Store::Hf, Store::S3, Store::Gs];

    pub fn name(self) -> &'static str {
        match self {
            Store::Hf => "hf",
            Store::S3 => "s3",
            Store::Gs => "gs",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Store::Hf => "hf:// from the in-tree Hub fixture (LFS files through its CDN)",
            Store::S3 => "s3:// from moto (CRC64NVME checksums, SigV4)",
            Store::Gs => "gs:// from gcp-storage-emulator (crc32c)",
        }
    }

    /// What modelpull verifies files from this store against.
    pub fn checks(self) -> &'static str {
        match self {
            Store::Hf => "its sha256 (LFS) or git blob sha1",
            Store::S3 => "its x-amz-checksum-crc64nvme",
            Store::Gs => "its crc32c",
        }
    }

    pub fn uri(self) -> String {
        match self {
            Store::Hf => format!("hf://{REPO}"),
            Store::S3 => format!("s3://{BUCKET}/{PREFIX}"),
            Store::Gs => format!("gs://{BUCKET}/{PREFIX}"),
        }
    }
}

/// A server process, killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The three stores, holding the data set.
pub struct Servers {
    _hub: Hub,
    _moto: Proc,
    _gcs: Proc,
    /// The environment both tools get (endpoints and dummy credentials).
    pub env: Vec<(String, String)>,
}

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn spawn(venv_bin: &Path, name: &str, args: &[String], log: &Path) -> Result<(Proc, u16)> {
    let port = free_port()?;
    let args: Vec<String> = args
        .iter()
        .map(|a| a.replace("{port}", &port.to_string()))
        .collect();
    let log = std::fs::File::create(log)?;
    let child = Command::new(venv_bin.join(name))
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {name}: run scripts/setup-bench.sh"))?;
    let proc = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("{name} did not listen on port {port} within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((proc, port))
}

/// The in-tree Hub serving data set `set` (under `root`) as [`REPO`], files over 10 MiB in
/// LFS (through its CDN).
pub fn hub(root: &Path, set: &DataSet) -> Result<Hub> {
    let dir = root.join(set.name);
    let mut repo = HubRepo::new(REPO);
    for f in &set.files {
        let bytes = std::fs::read(dir.join(&f.path))?;
        repo = if f.size > 10 << 20 {
            repo.lfs_file(&f.path, bytes)
        } else {
            repo.file(&f.path, bytes)
        };
    }
    Ok(Hub::start(vec![repo])?)
}

/// Starts the stores and fills each with `set` (its files under `root/<set name>`).
pub fn start(
    python: &Path,
    peers: &Path,
    root: &Path,
    set: &DataSet,
    work: &Path,
) -> Result<Servers> {
    let bin = python.parent().context("the virtualenv's bin directory")?;
    let dir = root.join(set.name);

    let hub = hub(root, set)?;

    let (moto, moto_port) = spawn(
        bin,
        "moto_server",
        &[
            "-H".into(),
            "127.0.0.1".into(),
            "-p".into(),
            "{port}".into(),
        ],
        &work.join("moto.log"),
    )?;
    let (gcs, gcs_port) = spawn(
        bin,
        "gcp-storage-emulator",
        &[
            "start".into(),
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            "{port}".into(),
            "--in-memory".into(),
        ],
        &work.join("gcs.log"),
    )?;
    let s3_url = format!("http://127.0.0.1:{moto_port}");
    let gs_url = format!("http://127.0.0.1:{gcs_port}");
    for (kind, url) in [("s3", &s3_url), ("gs", &gs_url)] {
        eprintln!("uploading the data set to {kind}…");
        let ok = Command::new(python)
            .arg(peers.join("store_seed.py"))
            .args([kind, url, BUCKET, PREFIX])
            .arg(&dir)
            .status()?
            .success();
        if !ok {
            bail!("uploading to the {kind} server failed");
        }
    }
    let env = [
        ("HF_ENDPOINT", hub.endpoint()),
        ("HF_HUB_DISABLE_TELEMETRY", "1".into()),
        ("HF_HUB_DISABLE_XET", "1".into()),
        ("HF_HUB_DISABLE_PROGRESS_BARS", "1".into()),
        ("HF_HOME", work.join("hf-home").display().to_string()),
        ("AWS_ENDPOINT_URL", s3_url),
        ("AWS_ACCESS_KEY_ID", "bench".into()),
        ("AWS_SECRET_ACCESS_KEY", "bench".into()),
        ("AWS_DEFAULT_REGION", "us-east-1".into()),
        ("STORAGE_EMULATOR_HOST", gs_url),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    Ok(Servers {
        _hub: hub,
        _moto: moto,
        _gcs: gcs,
        env,
    })
}

/// The command that pulls `store`'s copy into `dest`.
pub fn command(
    tool: crate::tools::Tool,
    store: Store,
    dest: &Path,
    cx: &crate::tools::Ctx<'_>,
) -> Vec<String> {
    let d = dest.display().to_string();
    match tool {
        crate::tools::Tool::Modelpull => vec![
            cx.modelpull.display().to_string(),
            "pull".into(),
            "--no-progress".into(),
            store.uri(),
            d,
        ],
        _ => vec![
            cx.python.display().to_string(),
            cx.peers.join("kserve_uri.py").display().to_string(),
            store.uri(),
            d,
        ],
    }
}

/// Where a store pull puts a data set's file: at its path relative to the prefix.
pub fn output(dest: &Path, path: &str) -> PathBuf {
    dest.join(path)
}
