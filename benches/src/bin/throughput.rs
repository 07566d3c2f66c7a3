//! The throughput harness: `modelpull` side by side with the tools users would pick instead,
//! in one run, on the same data, from the same nginx on 127.0.0.1, to the same disk.
//!
//! Each row is timed from the tool's start until its output file is flushed (`fsync` counts),
//! checked byte for byte by sha256 afterwards (a tool that wrote wrong bytes is marked, not
//! ranked), and reported as the median of several runs with CPU time per GB and peak RSS from
//! GNU time. The machine's own limits are measured in the same run, so the numbers can be read
//! as fractions of what the disk, the loopback and one core's sha256 allow.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use sha2::Digest as _;

/// Measure modelpull against curl and aria2c pulling one large file from nginx on loopback.
#[derive(Debug, Parser)]
struct Args {
    /// Size of the test file.
    #[arg(long, default_value = "4G", value_parser = parse_size)]
    size: u64,
    /// Runs per tool (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Tools to compare.
    #[arg(long, value_delimiter = ',', default_value = "modelpull,aria2c,curl")]
    tools: Vec<String>,
    /// Destination directory (on the disk being measured).
    #[arg(long, default_value = "/var/tmp/modelpull-bench")]
    work: PathBuf,
    /// Directory nginx serves from (memory-backed, so the origin is not the bottleneck).
    #[arg(long, default_value = "/dev/shm/modelpull-bench")]
    origin: PathBuf,
    /// The modelpull binary [default: target/release/modelpull].
    #[arg(long)]
    modelpull: Option<PathBuf>,
    /// Where to write the Markdown results.
    #[arg(long, default_value = "benches/results")]
    out: PathBuf,
    /// Port for nginx on 127.0.0.1.
    #[arg(long, default_value_t = 18181)]
    port: u16,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().map_err(|_| format!("bad size {s}"))?;
    let mult = match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => return Err(format!("bad unit in {s} (use K, M or G)")),
    };
    Ok(n * mult)
}

/// One timed run of one tool.
#[derive(Debug, Clone)]
struct Sample {
    seconds: f64,
    cpu_seconds: f64,
    max_rss_kib: u64,
    correct: bool,
}

struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its workers; SIGKILL would orphan them.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    for tool in ["nginx", "curl", "/usr/bin/time"] {
        which(tool)
            .with_context(|| format!("{tool} is missing: run scripts/setup-bench.sh first"))?;
    }
    if args.tools.iter().any(|t| t == "aria2c") {
        which("aria2c").context("aria2c is missing: run scripts/setup-bench.sh first")?;
    }
    let modelpull = args
        .modelpull
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/release/modelpull"));
    if args.tools.iter().any(|t| t == "modelpull") && !modelpull.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p modelpull`",
            modelpull.display()
        );
    }
    std::fs::create_dir_all(&args.work)?;
    std::fs::create_dir_all(&args.origin)?;

    let file = args.origin.join("model.bin");
    let sha = prepare_data(&file, args.size)?;
    let _nginx = start_nginx(&args)?;
    let url = format!("http://127.0.0.1:{}/model.bin", args.port);

    eprintln!("measuring the machine's limits…");
    let disk = disk_limit(&args.work)?;
    let loopback = loopback_limit(&url, args.size)?;
    let sha_core = sha256_per_core();

    let mut results: Vec<(String, Vec<Sample>)> =
        args.tools.iter().map(|t| (t.clone(), Vec::new())).collect();
    for run in 0..args.runs {
        for k in 0..results.len() {
            // Rotate the order so no tool always runs first on a cold disk.
            let i = (k + run) % results.len();
            let tool = results[i].0.clone();
            eprintln!("run {}/{}: {tool}", run + 1, args.runs);
            let sample = run_tool(&tool, &modelpull, &url, &sha, &args.work, args.size)?;
            eprintln!(
                "  {:.2} GB/s, {:.2} CPU s/GB, {} MiB peak RSS{}",
                args.size as f64 / sample.seconds / 1e9,
                sample.cpu_seconds / (args.size as f64 / 1e9),
                sample.max_rss_kib / 1024,
                if sample.correct { "" } else { ", WRONG BYTES" }
            );
            results[i].1.push(sample);
        }
    }

    let table = render(&args, &results, disk, loopback, sha_core);
    println!("{table}");
    std::fs::create_dir_all(&args.out)?;
    let name = format!("loopback-{}.md", human(args.size));
    std::fs::write(args.out.join(&name), &table)?;
    eprintln!("written to {}", args.out.join(name).display());
    Ok(())
}

fn which(tool: &str) -> Result<()> {
    let ok = if tool.starts_with('/') {
        Path::new(tool).exists()
    } else {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()?
            .success()
    };
    if ok { Ok(()) } else { bail!("not found") }
}

/// Writes `size` pseudo-random bytes (or reuses a previous run's file) and returns its sha256.
fn prepare_data(file: &Path, size: u64) -> Result<String> {
    let sidecar = file.with_extension("sha256");
    if std::fs::metadata(file).is_ok_and(|m| m.len() == size)
        && let Ok(sha) = std::fs::read_to_string(&sidecar)
    {
        return Ok(sha.trim().to_owned());
    }
    eprintln!(
        "generating {} of test data in {}",
        human(size),
        file.display()
    );
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(file)?);
    let mut hasher = sha2::Sha256::new();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for w in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        out.write_all(&block[..n])?;
        hasher.update(&block[..n]);
        left -= n as u64;
    }
    out.flush()?;
    let sha = hex::encode(hasher.finalize());
    std::fs::write(&sidecar, &sha)?;
    Ok(sha)
}

fn start_nginx(args: &Args) -> Result<Nginx> {
    let prefix = args.work.join("nginx");
    std::fs::create_dir_all(prefix.join("logs"))?;
    let conf = prefix.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log;\nevents {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 100000;\n\
             default_type application/octet-stream;\n  client_body_temp_path {p};\n\
             server {{ listen 127.0.0.1:{port}; root {root}; }}\n}}\n",
            p = prefix.display(),
            port = args.port,
            root = args.origin.display()
        ),
    )?;
    let child = Command::new("nginx")
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&conf)
        .args(["-g", "daemon off;"])
        .spawn()
        .context("start nginx")?;
    let nginx = Nginx(child);
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", args.port)).is_err() {
        if started.elapsed() > Duration::from_secs(10) {
            bail!(
                "nginx did not start on 127.0.0.1:{} (see {}/logs/error.log)",
                args.port,
                prefix.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(nginx)
}

/// Sequential O_DIRECT write bandwidth of the destination disk, with fio (queue depth 8,
/// fsync at the end), in GB/s.
fn disk_limit(work: &Path) -> Result<f64> {
    let target = work.join("fio.test");
    let out = Command::new("fio")
        .args([
            "--name=disk",
            "--rw=write",
            "--bs=4M",
            "--size=2G",
            "--direct=1",
            "--ioengine=io_uring",
            "--iodepth=8",
            "--end_fsync=1",
            "--output-format=json",
        ])
        .arg(format!("--filename={}", target.display()))
        .output();
    let _ = std::fs::remove_file(&target);
    let out = out.context("fio is missing: run scripts/setup-bench.sh first")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("fio output")?;
    let bw_kib = v["jobs"][0]["write"]["bw"]
        .as_f64()
        .context("fio bandwidth")?;
    Ok(bw_kib * 1024.0 / 1e9)
}

/// One HTTP stream from nginx into /dev/null, in GB/s.
fn loopback_limit(url: &str, size: u64) -> Result<f64> {
    let started = Instant::now();
    let ok = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", url])
        .status()?
        .success();
    if !ok {
        bail!("curl could not fetch {url}");
    }
    Ok(size as f64 / started.elapsed().as_secs_f64() / 1e9)
}

/// sha256 on one core, in GB/s.
fn sha256_per_core() -> f64 {
    let data = vec![7u8; 256 << 20];
    let started = Instant::now();
    let mut h = sha2::Sha256::new();
    for _ in 0..4 {
        h.update(&data);
    }
    std::hint::black_box(h.finalize());
    (4 * data.len()) as f64 / started.elapsed().as_secs_f64() / 1e9
}

fn run_tool(
    tool: &str,
    modelpull: &Path,
    url: &str,
    sha: &str,
    work: &Path,
    size: u64,
) -> Result<Sample> {
    let dest = work.join(format!("out-{tool}"));
    let _ = std::fs::remove_dir_all(&dest);
    let _ = std::fs::remove_dir_all(work.join(format!(".out-{tool}.modelpull")));
    std::fs::create_dir_all(work)?;
    let output = match tool {
        "modelpull" => dest.join("model.bin"),
        _ => {
            std::fs::create_dir_all(&dest)?;
            dest.join("model.bin")
        }
    };
    let mut cmd: Vec<String> = match tool {
        "curl" => vec![
            "curl".into(),
            "-sS".into(),
            "-o".into(),
            output.display().to_string(),
            url.into(),
        ],
        "aria2c" => [
            "aria2c",
            "-x16",
            "-s16",
            "--file-allocation=falloc",
            "--allow-overwrite=true",
            "--auto-file-renaming=false",
            "--console-log-level=warn",
            "--summary-interval=0",
            "--download-result=hide",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([
            "-d".into(),
            dest.display().to_string(),
            "-o".into(),
            "model.bin".into(),
            url.into(),
        ])
        .collect(),
        "modelpull" => vec![
            modelpull.display().to_string(),
            "pull".into(),
            "--no-progress".into(),
            format!("{url}#sha256={sha}"),
            dest.display().to_string(),
        ],
        other => bail!("unknown tool {other} (use modelpull, aria2c, curl)"),
    };
    let timefile = work.join("time.out");
    let mut full = vec![
        "/usr/bin/time".to_string(),
        "-f".into(),
        "%U %S %M".into(),
        "-o".into(),
        timefile.display().to_string(),
    ];
    full.append(&mut cmd);
    let started = Instant::now();
    let status = Command::new(&full[0])
        .args(&full[1..])
        .stdout(Stdio::null())
        .status()?;
    if status.success() {
        // Durability is part of the job: flush what the tool left in the page cache.
        std::fs::File::open(&output)?.sync_all()?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let times = std::fs::read_to_string(&timefile)?;
    let fields: Vec<f64> = times
        .split_whitespace()
        .rev()
        .take(3)
        .filter_map(|f| f.parse().ok())
        .collect();
    let (rss, sys, user) = (
        fields.first().copied().unwrap_or(0.0),
        fields.get(1).copied().unwrap_or(0.0),
        fields.get(2).copied().unwrap_or(0.0),
    );
    let correct = status.success() && file_sha256(&output, size).is_ok_and(|s| s == sha);
    let _ = std::fs::remove_dir_all(&dest);
    Ok(Sample {
        seconds,
        cpu_seconds: user + sys,
        max_rss_kib: rss as u64,
        correct,
    })
}

fn file_sha256(path: &Path, size: u64) -> Result<String> {
    let mut f = std::fs::File::open(path)?;
    if f.metadata()?.len() != size {
        bail!("wrong size");
    }
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn render(
    args: &Args,
    results: &[(String, Vec<Sample>)],
    disk: f64,
    loopback: f64,
    sha_core: f64,
) -> String {
    let gb = args.size as f64 / 1e9;
    let rate = |s: &Sample| gb / s.seconds;
    let best_of = |tool: &str| -> Option<f64> {
        let (_, samples) = results.iter().find(|(t, _)| t == tool)?;
        samples
            .iter()
            .all(|s| s.correct)
            .then(|| median(samples.iter().map(rate).collect()))
    };
    let mp = best_of("modelpull");
    let mut out = String::new();
    let host = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "### Unlimited loopback, one {} file, nginx on 127.0.0.1 → disk, fsync included",
        human(args.size)
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Machine: {} cores ({host}), {} runs per tool, median (min–max).",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        args.runs
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| tool | GB/s | min–max | CPU s/GB | peak RSS | bytes | modelpull ÷ tool |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for (tool, samples) in results {
        let rates: Vec<f64> = samples.iter().map(rate).collect();
        let med = median(rates.clone());
        let lo = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = rates.iter().copied().fold(0.0, f64::max);
        let cpu = median(samples.iter().map(|s| s.cpu_seconds / gb).collect());
        let rss = samples.iter().map(|s| s.max_rss_kib).max().unwrap_or(0) / 1024;
        let ok = samples.iter().all(|s| s.correct);
        let ratio = match (mp, ok) {
            (Some(m), true) if tool != "modelpull" => format!("{:.2}×", m / med),
            (_, false) => "not ranked".into(),
            _ => "—".into(),
        };
        let tool_shown = match tool.as_str() {
            "aria2c" => "aria2c -x16 -s16",
            "modelpull" => "modelpull (sha256 verified)",
            t => t,
        };
        let _ = writeln!(
            out,
            "| {tool_shown} | {med:.2} | {lo:.2}–{hi:.2} | {cpu:.2} | {rss} MiB | {} | {ratio} |",
            if ok { "identical" } else { "WRONG" }
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Limits measured in the same run:");
    let _ = writeln!(
        out,
        "- disk, sequential O_DIRECT write (fio, 4 MiB, queue depth 8, fsync): {disk:.2} GB/s"
    );
    let _ = writeln!(
        out,
        "- loopback, one HTTP stream from nginx to /dev/null (curl): {loopback:.2} GB/s"
    );
    let _ = writeln!(out, "- sha256 on one core: {sha_core:.2} GB/s");
    if let Some(m) = mp {
        let lowest = disk.min(loopback).min(sha_core);
        let _ = writeln!(
            out,
            "- modelpull reaches {:.0}% of the lowest of these ({lowest:.2} GB/s)",
            100.0 * m / lowest
        );
    }
    out
}

fn human(n: u64) -> String {
    if n >= 1 << 30 && n.is_multiple_of(1 << 30) {
        format!("{}GiB", n >> 30)
    } else {
        format!("{}MiB", n >> 20)
    }
}
