//! `modelpull demo`: a whole pull on this machine with nothing else installed.
//!
//! It generates a synthetic model (a config, a tokenizer and safetensors-sized shards of
//! pseudo-random bytes, sha256 computed as they are written), serves it from the in-tree
//! origin on 127.0.0.1, pulls it with the engine into a temporary directory on disk with every
//! digest checked, reports the throughput, and removes everything.

use std::path::{Path, PathBuf};

use modelpull::units::human_bytes;
use modelpull::{Context, Error, Options, PullRequest, Report, Result, Target};
use modelpull_origin::Origin;
use modelpull_origin::synthetic::write_random;
use sha2::Digest as _;

/// What the demo generates and where.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Total bytes of the shards.
    pub size: u64,
    pub shards: usize,
    /// Where the destination (and, without room in /dev/shm, the origin's files) go.
    pub base_dir: Option<PathBuf>,
    /// Keep the pulled model instead of removing it.
    pub keep: bool,
}

/// The demo's result: the pull's report and where things were.
#[derive(Debug)]
pub struct DemoOutcome {
    pub report: Report,
    /// The pulled model, when kept.
    pub kept: Option<PathBuf>,
}

/// Runs the demo. `on_stage` is told what is happening (for the CLI to print).
pub fn run(
    demo: &DemoOptions,
    opts: &Options,
    cx: &Context,
    on_stage: &mut dyn FnMut(&str),
) -> Result<DemoOutcome> {
    if demo.shards == 0 || demo.size < demo.shards as u64 {
        return Err(Error::InvalidOption(
            "--size must give every shard at least one byte".into(),
        ));
    }
    let base = demo.base_dir.clone().unwrap_or_else(std::env::temp_dir);
    let work = tempfile::Builder::new()
        .prefix("modelpull-demo-")
        .tempdir_in(&base)
        .map_err(|e| Error::local("create temporary directory in", &base, e))?;
    // Serve from memory-backed /dev/shm when it has room, so the origin's reads do not compete
    // with the pull's writes for the disk being measured.
    let shm = Path::new("/dev/shm");
    let origin_parent =
        if free_bytes(shm).is_some_and(|free| free > demo.size + demo.size / 4 + (64 << 20)) {
            shm.to_owned()
        } else {
            work.path().to_owned()
        };
    let origin_dir = tempfile::Builder::new()
        .prefix("modelpull-demo-origin-")
        .tempdir_in(&origin_parent)
        .map_err(|e| Error::local("create temporary directory in", &origin_parent, e))?;

    on_stage(&format!(
        "generating a {} synthetic model ({} shards) in {}",
        human_bytes(demo.size),
        demo.shards,
        origin_dir.path().display()
    ));
    let files = generate(origin_dir.path(), demo.size, demo.shards)?;

    let origin = Origin::serve(origin_dir.path())
        .map_err(|e| Error::Runtime(format!("cannot start the demo origin: {e}")))?;
    let origin_url = origin.url("");
    let targets = files
        .iter()
        .map(|(name, sha)| Target::parse(&format!("{}#sha256={sha}", origin.url(name))))
        .collect::<Result<Vec<_>>>()?;
    let dest = work.path().join("model");
    on_stage(&format!(
        "pulling from {origin_url} into {}",
        dest.display()
    ));
    let report = modelpull::pull(
        &PullRequest {
            sources: Vec::new(),
            unpack: false,
            adopt: false,
            targets,
            dest: dest.clone(),
        },
        opts,
        cx,
    )?;
    drop(origin);
    drop(origin_dir);
    let kept = if demo.keep {
        let path = work.keep();
        Some(path.join("model"))
    } else {
        None
    };
    Ok(DemoOutcome { report, kept })
}

/// Writes the synthetic model; returns each file's name and sha256.
fn generate(dir: &Path, size: u64, shards: usize) -> Result<Vec<(String, String)>> {
    let mut jobs: Vec<(String, u64, u64)> = vec![
        ("config.json".into(), 0, 0),
        ("tokenizer.json".into(), 1, 2 << 20),
    ];
    let per = size / shards as u64;
    for i in 0..shards {
        let len = if i + 1 == shards {
            size - per * (shards as u64 - 1)
        } else {
            per
        };
        jobs.push((
            format!("model-{:05}-of-{shards:05}.safetensors", i + 1),
            100 + i as u64,
            len,
        ));
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(jobs.len());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: std::sync::Mutex<Vec<Option<Result<String>>>> =
        std::sync::Mutex::new((0..jobs.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((name, seed, len)) = jobs.get(i) else { break };
                    let path = dir.join(name);
                    let res = if name == "config.json" {
                        let cfg = format!(
                            "{{\"architectures\":[\"DemoForCausalLM\"],\"model_type\":\"demo\",\"num_shards\":{shards},\"total_bytes\":{size}}}\n"
                        );
                        std::fs::write(&path, &cfg).map(|()| hex::encode(sha2::Sha256::digest(cfg.as_bytes())))
                    } else {
                        write_random(&path, *seed, *len)
                    };
                    results.lock().expect("results")[i] = Some(res.map_err(|e| Error::local("write", &path, e)));
                }
            });
        }
    });
    jobs.into_iter()
        .zip(results.into_inner().expect("results"))
        .map(|((name, _, _), r)| r.expect("every file generated").map(|sha| (name, sha)))
        .collect()
}

fn free_bytes(path: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some(st.f_bavail * st.f_frsize)
}
