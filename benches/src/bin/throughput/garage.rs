//! Garage, the S3 server of the S3 rows: a real S3 implementation (Rust, one node on
//! 127.0.0.1), where moto, which the engine's tests keep, copies a whole object into memory
//! for every ranged GET and is too slow to measure anything.
//!
//! The harness runs it in a fresh directory under the work directory: a generated
//! `garage.toml` (replication factor 1, compression off, the S3 API on a free port, region
//! [`REGION`]), a one-node layout, one key and one bucket the key owns. Removed when dropped.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::stores::free_port;

/// The region Garage signs for; every client is told it.
pub const REGION: &str = "garage";
/// The bucket the data sets are put into.
pub const BUCKET: &str = "bench";
const KEY_NAME: &str = "bench";

/// A running Garage node with a bucket and a key that owns it.
pub struct Garage {
    child: Child,
    bin: PathBuf,
    dir: PathBuf,
    conf: PathBuf,
    /// `http://127.0.0.1:PORT`, the S3 API.
    pub endpoint: String,
    key_id: String,
    secret: String,
    /// What `garage --version` says.
    pub version: String,
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Garage {
    /// Starts a node under `work/garage`, lays it out and creates the key and the bucket.
    pub fn start(bin: &Path, work: &Path) -> Result<Self> {
        if !bin.exists() {
            bail!(
                "{} not found: run scripts/setup-bench.sh (it builds Garage into benches/.tools), \
                 or pass --garage PATH",
                bin.display()
            );
        }
        let bin = std::fs::canonicalize(bin)?;
        let dir = work.join("garage");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("meta"))?;
        std::fs::create_dir_all(dir.join("data"))?;
        let rpc_port = free_port()?;
        let s3_port = free_port()?;
        let mut secret = [0u8; 32];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut secret)?;
        let conf = dir.join("garage.toml");
        std::fs::write(
            &conf,
            format!(
                "metadata_dir = \"{meta}\"\n\
                 data_dir = \"{data}\"\n\
                 db_engine = \"lmdb\"\n\
                 replication_factor = 1\n\
                 compression_level = \"none\"\n\
                 rpc_bind_addr = \"127.0.0.1:{rpc_port}\"\n\
                 rpc_public_addr = \"127.0.0.1:{rpc_port}\"\n\
                 rpc_secret = \"{secret}\"\n\
                 \n\
                 [s3_api]\n\
                 s3_region = \"{REGION}\"\n\
                 api_bind_addr = \"127.0.0.1:{s3_port}\"\n\
                 root_domain = \".s3.garage.localhost\"\n",
                meta = dir.join("meta").display(),
                data = dir.join("data").display(),
                secret = hex::encode(secret),
            ),
        )?;
        let version = Command::new(&bin)
            .arg("--version")
            .output()
            .ok()
            // `garage cargo:2.5.0 [features: …]`: the name and the version are enough.
            .map(|o| {
                let text = String::from_utf8_lossy(&o.stdout);
                let head = text.split(" [").next().unwrap_or_default().trim();
                head.replace("cargo:", "v")
            })
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "garage".into());
        let log = std::fs::File::create(dir.join("garage.log"))?;
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&conf)
            .arg("server")
            .env("RUST_LOG", "garage=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut garage = Garage {
            child,
            bin,
            dir,
            conf,
            endpoint: format!("http://127.0.0.1:{s3_port}"),
            key_id: String::new(),
            secret: String::new(),
            version,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", s3_port)).is_err() {
            if let Ok(Some(status)) = garage.child.try_wait() {
                bail!(
                    "Garage exited at start ({status}): see {}",
                    garage.dir.join("garage.log").display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "Garage did not listen on 127.0.0.1:{s3_port} within 30 s: see {}",
                    garage.dir.join("garage.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // `node id` prints `<id>@<address>`; the layout wants the id.
        let node = garage.cli(&["node", "id", "-q"])?;
        let id = node
            .trim()
            .split('@')
            .next()
            .filter(|id| !id.is_empty())
            .with_context(|| format!("no node id in `garage node id`: {node}"))?
            .to_owned();
        garage.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &id])?;
        garage.cli(&["layout", "apply", "--version", "1"])?;
        let key = garage.cli(&["key", "create", KEY_NAME])?;
        let field = |name: &str| {
            key.lines()
                .find_map(|l| l.trim().strip_prefix(name))
                .map(|v| v.trim().to_owned())
                .with_context(|| format!("no `{name}` in `garage key create`: {key}"))
        };
        garage.key_id = field("Key ID:")?;
        garage.secret = field("Secret key:")?;
        garage.cli(&["bucket", "create", BUCKET])?;
        garage.cli(&[
            "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", KEY_NAME,
        ])?;
        Ok(garage)
    }

    /// Runs the `garage` CLI against this node; its standard output.
    fn cli(&self, args: &[&str]) -> Result<String> {
        // The node answers RPC a moment after its S3 port opens, and a new layout takes a
        // moment to be active: retry briefly.
        let mut last = String::new();
        for _ in 0..50 {
            let out = Command::new(&self.bin)
                .arg("-c")
                .arg(&self.conf)
                .args(args)
                .env("RUST_LOG", "garage=warn")
                .output()
                .with_context(|| format!("running {}", self.bin.display()))?;
            if out.status.success() {
                return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
            }
            last = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("garage {} failed: {last}", args.join(" "))
    }

    /// The environment every S3 client gets: the endpoint, the key and the region.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
            ("AWS_REGION", REGION.into()),
            ("AWS_DEFAULT_REGION", REGION.into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Uploads `dir` under `prefix` (single-part PUTs with a CRC64NVME checksum, as S3 now
    /// adds by default) and probes what modelpull relies on; the probe's findings, in words.
    pub fn seed(&self, python: &Path, peers: &Path, dir: &Path, prefix: &str) -> Result<String> {
        let out = Command::new(python)
            .arg(peers.join("store_seed.py"))
            .args(["s3", &self.endpoint, BUCKET, prefix])
            .arg(dir)
            .envs(self.env())
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("running {}", python.display()))?;
        if !out.status.success() {
            bail!(
                "uploading {} to Garage failed (see the messages above; Garage's log is {})",
                dir.display(),
                self.dir.join("garage.log").display()
            );
        }
        let probe: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| "store_seed.py printed no probe report")?;
        Ok(describe_probe(&probe))
    }
}

/// The probe's findings (see `store_seed.py`), as a sentence for a table's note.
fn describe_probe(p: &serde_json::Value) -> String {
    let yes = |k: &str| p[k].as_bool().unwrap_or(false);
    let ok = |k: &str| if yes(k) { "works" } else { "FAILED" };
    let checksums: Vec<&str> = p["checksums"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    let sent = p["sent"].as_str().unwrap_or("none");
    format!(
        "Checked on this server: ListObjectsV2 {} ({} of {} keys), HEAD {}, ranged GET {} \
         (206 with the right bytes), ETag {}. Uploaded with `x-amz-checksum-{}`, HEAD with \
         `x-amz-checksum-mode: ENABLED` returns {}.",
        ok("listed_all"),
        p["listed"].as_u64().unwrap_or(0),
        p["uploaded"].as_u64().unwrap_or(0),
        ok("head"),
        ok("range"),
        if yes("etag_md5") {
            "is the md5 of a single-part object"
        } else {
            "is not the md5 of a single-part object"
        },
        sent.to_ascii_lowercase(),
        if checksums.is_empty() {
            "no `x-amz-checksum-*` header".to_owned()
        } else {
            checksums
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_reads_as_a_sentence() {
        let p = serde_json::json!({
            "listed": 2, "uploaded": 2, "listed_all": true, "head": true, "range": true,
            "etag_md5": true, "sent": "CRC64NVME", "checksums": []
        });
        assert_eq!(
            describe_probe(&p),
            "Checked on this server: ListObjectsV2 works (2 of 2 keys), HEAD works, ranged GET \
             works (206 with the right bytes), ETag is the md5 of a single-part object. \
             Uploaded with `x-amz-checksum-crc64nvme`, HEAD with `x-amz-checksum-mode: ENABLED` \
             returns no `x-amz-checksum-*` header."
        );
    }
}
