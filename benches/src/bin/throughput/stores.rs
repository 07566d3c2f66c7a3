//! The store rows: one model pulled through each store's own protocol, by `modelpull` and by
//! KServe's storage initializer, from servers on 127.0.0.1: the in-tree Hub fixture (with its
//! CDN), Garage for S3 (see `garage.rs`) and gcp-storage-emulator for GCS.
//!
//! The Hub fixture and the emulator are test servers; the emulator serves one request at a
//! time, so its row shows the store's path working end to end and the cost of its control
//! plane, not a network's speed. Garage is a real S3 server; the `s3` scenario measures it
//! with the large data sets and more clients.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use modelpull_testkit::hub::{Hub, HubRepo};

use crate::data::DataSet;
use crate::garage::{BUCKET, Garage};
use crate::tools::Tool;

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
            Store::S3 => "s3:// from Garage (SigV4, path-style)",
            Store::Gs => "gs:// from gcp-storage-emulator (crc32c)",
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
    _gcs: Proc,
    pub garage: Garage,
    /// What the probe of Garage found (see `Garage::seed`).
    pub garage_probe: String,
    /// The environment both tools get (endpoints and credentials).
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
    garage: &Path,
    root: &Path,
    set: &DataSet,
    work: &Path,
) -> Result<Servers> {
    let bin = python.parent().context("the virtualenv's bin directory")?;
    let dir = root.join(set.name);

    let hub = hub(root, set)?;

    let garage = Garage::start(garage, work)?;
    eprintln!("uploading the data set to s3 (Garage)…");
    let garage_probe = garage.seed(python, peers, &dir, PREFIX)?;
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
    let gs_url = format!("http://127.0.0.1:{gcs_port}");
    eprintln!("uploading the data set to gs…");
    let ok = Command::new(python)
        .arg(peers.join("store_seed.py"))
        .args(["gs", &gs_url, BUCKET, PREFIX])
        .arg(&dir)
        .status()?
        .success();
    if !ok {
        bail!(
            "uploading to gcp-storage-emulator failed (see its log, {})",
            work.join("gcs.log").display()
        );
    }
    let mut env: Vec<(String, String)> = [
        ("HF_ENDPOINT", hub.endpoint()),
        ("HF_HUB_DISABLE_TELEMETRY", "1".into()),
        ("HF_HUB_DISABLE_XET", "1".into()),
        ("HF_HUB_DISABLE_PROGRESS_BARS", "1".into()),
        ("HF_HOME", work.join("hf-home").display().to_string()),
        ("STORAGE_EMULATOR_HOST", gs_url),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    env.extend(garage.env());
    Ok(Servers {
        _hub: hub,
        _gcs: gcs,
        garage,
        garage_probe,
        env,
    })
}

/// The command that pulls `uri` (a store's URI) into `dest` with `tool`; `s3_endpoint` is
/// the S3 server's, for s5cmd, which takes it as a flag.
pub fn command(
    tool: Tool,
    uri: &str,
    dest: &Path,
    cx: &crate::tools::Ctx<'_>,
    s3_endpoint: &str,
) -> Result<Vec<String>> {
    let d = dest.display().to_string();
    let python = |script: &str| {
        vec![
            cx.python.display().to_string(),
            cx.peers.join(script).display().to_string(),
            uri.to_owned(),
            d.clone(),
        ]
    };
    Ok(match tool {
        // --json: the report says what each file was verified against.
        Tool::Modelpull => vec![
            cx.modelpull.display().to_string(),
            "pull".into(),
            "--json".into(),
            uri.to_owned(),
            d.clone(),
        ],
        Tool::Kserve => python("kserve_uri.py"),
        Tool::Boto3 => python("boto3_pull.py"),
        Tool::S5cmd => vec![
            cx.s5cmd.display().to_string(),
            "--endpoint-url".into(),
            s3_endpoint.to_owned(),
            "cp".into(),
            format!("{}/*", uri.trim_end_matches('/')),
            format!("{d}/"),
        ],
        other => bail!("{} does not pull from model stores", other.name()),
    })
}

/// Where a store pull puts a data set's file: at its path relative to the prefix.
pub fn output(dest: &Path, path: &str) -> PathBuf {
    dest.join(path)
}
