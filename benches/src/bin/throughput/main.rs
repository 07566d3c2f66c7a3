//! The throughput harness: `modelpull` side by side with the tools users would pick instead,
//! in one run, on the same data, from the same nginx on 127.0.0.1, to the same disk.
//!
//! Each row is timed from the tool's start until its output files are flushed (`fsync`
//! counts), checked byte for byte by sha256 afterwards (a tool that wrote wrong bytes is
//! marked, not ranked), and reported as the median of several runs with CPU time per GB and
//! peak RSS from GNU time. The machine's own limits are measured in the same run, so the
//! numbers read as fractions of what the disk, the loopback and one core's sha256 allow.

mod agent;
mod busy;
mod cgroup;
mod data;
mod garage;
mod origin;
mod report;
mod stores;
mod targets;
mod tools;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use sha2::Digest as _;

use origin::Scenario;
use report::{Cell, Sample};
use tools::Tool;

/// Measure modelpull against aria2c, curl, hf_transfer and KServe's storage initializer.
#[derive(Debug, Parser)]
struct Args {
    /// Scenarios to run, each alone or together.
    /// `loopback`, `capped` (85 MB/s per connection) and `latency` (20 ms RTT) pull from nginx
    /// with every tool; `thin` caps each connection at 10 MiB/s and `narrow` also allows at
    /// most 8 connections (503 beyond, counted from nginx's log), both with modelpull and
    /// aria2c on `file` and `shards`; `s3` pulls `file` and `shards` from Garage, a real S3
    /// server, with modelpull, s5cmd, boto3 and KServe's initializer; `stores` pulls a 1 GiB
    /// model through each model store (hf, s3 on Garage, gs) with modelpull and KServe's
    /// storage initializer; `agent` times localmodelnode-agent end to end against modelpull
    /// alone; `initializer` times KServe's storage initializer against modelpull's, each in a
    /// cgroup with the init container's limits (1 CPU, 1 GiB; needs root), and
    /// `initializer-capped` does the same from an origin capped at 85 MB/s per connection.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "loopback,capped,latency,thin,narrow,s3,stores,agent,initializer,initializer-capped"
    )]
    scenarios: Vec<String>,
    /// Data sets: file (one large file), shards (8 × 512 MiB), mixed (200 small + 4 × 512 MiB).
    /// Default: all three for loopback, capped and latency; `file` and `shards` for thin,
    /// narrow and s3; only `file` for the initializer scenarios.
    #[arg(long, value_delimiter = ',')]
    datasets: Option<Vec<String>>,
    /// Size of the single-file data set.
    #[arg(long, default_value = "4G", value_parser = parse_size)]
    size: u64,
    /// Runs per tool (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Tools to compare; each scenario runs those of them it can. The initializer scenario
    /// runs `kserve` and `modelpull-initializer` (modelpull's storage-initializer mode, also
    /// chosen by `modelpull`); thin and narrow run `modelpull` and `aria2c` (one connection
    /// at 10 MiB/s would take minutes); `s5cmd` and `boto3` run in the s3 scenario only.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "modelpull,aria2c,curl,hf_transfer,kserve,s5cmd,boto3"
    )]
    tools: Vec<String>,
    /// Destination directory (on the disk being measured).
    #[arg(long, default_value = "/var/tmp/modelpull-bench")]
    work: PathBuf,
    /// Directory nginx serves from (memory-backed, so the origin is not the bottleneck).
    #[arg(long, default_value = "/dev/shm/modelpull-bench")]
    origin: PathBuf,
    /// The modelpull binary.
    #[arg(long, default_value = "target/release/modelpull")]
    modelpull: PathBuf,
    /// The agent binary.
    #[arg(long, default_value = "target/release/localmodelnode-agent")]
    agent: PathBuf,
    /// Python of the virtualenv with hf_transfer and kserve-storage.
    #[arg(long, default_value = "benches/.venv/bin/python")]
    python: PathBuf,
    /// The Garage binary (the S3 server of the s3 and stores scenarios).
    #[arg(long, default_value = "benches/.tools/bin/garage")]
    garage: PathBuf,
    /// The s5cmd binary.
    #[arg(long, default_value = "benches/.venv/bin/s5cmd")]
    s5cmd: PathBuf,
    /// Results of an earlier run (its latest.csv) that the unlimited and 85 MB/s rows must
    /// not be slower than; read before this run writes its own. Missing: no comparison.
    #[arg(long, default_value = "benches/results/latest.csv")]
    baseline: PathBuf,
    /// Where to write results (Markdown, CSV, PNG).
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

pub fn human(n: u64) -> String {
    if n >= 1 << 30 && n.is_multiple_of(1 << 30) {
        format!("{} GiB", n >> 30)
    } else {
        format!("{} MiB", n >> 20)
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let tools: Vec<Tool> = args
        .tools
        .iter()
        .map(|t| Tool::parse(t))
        .collect::<Result<_>>()?;
    check_prerequisites(&args, &tools)?;
    std::fs::create_dir_all(&args.work)?;
    std::fs::create_dir_all(&args.origin)?;
    let peers = std::fs::canonicalize("benches/peers").context("run from the repository root")?;

    // The nginx and s3 scenarios share these data sets; the store rows have their own.
    let mut names: Vec<&str> = Vec::new();
    for scenario in &args.scenarios {
        for name in datasets_for(scenario, args.datasets.as_deref()) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    // Read before this run replaces it.
    let baseline = targets::Baseline::read(&args.baseline)?;
    let mut sets = Vec::new();
    for name in names {
        let name: &'static str = match name {
            "file" => "file",
            "shards" => "shards",
            "mixed" => "mixed",
            other => bail!("unknown data set {other} (file, shards, mixed)"),
        };
        eprintln!("preparing data set {name}…");
        sets.push(data::prepare(&args.origin, name, args.size)?);
    }

    let mut cells: Vec<Cell> = Vec::new();
    // Markdown sections that are not tool-by-tool tables.
    let mut sections: Vec<String> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let mut limits = None;
    for scenario in &args.scenarios {
        if scenario == "stores" {
            cells.extend(run_stores(&args, &tools, &peers)?);
            continue;
        }
        if scenario == "s3" {
            let wanted = datasets_for("s3", args.datasets.as_deref());
            let here: Vec<&data::DataSet> =
                sets.iter().filter(|s| wanted.contains(&s.name)).collect();
            cells.extend(run_s3(&args, &tools, &peers, &here)?);
            continue;
        }
        if scenario == "agent" {
            eprintln!("preparing data set store…");
            let set = data::prepare(&args.origin, "store", args.size)?;
            let t = agent::Tools {
                modelpull: &args.modelpull,
                agent: &args.agent,
                python: &args.python,
                peers: &peers,
                work: &args.work,
            };
            sections.push(agent::run(&t, &set, &args.origin, args.runs)?);
            continue;
        }
        let scenario = match scenario.as_str() {
            "loopback" => Scenario::Loopback,
            "capped" => Scenario::Capped,
            "latency" => Scenario::Latency,
            "initializer" => Scenario::Initializer,
            "initializer-capped" => Scenario::InitializerCapped,
            "thin" => Scenario::Thin,
            "narrow" => Scenario::Narrow,
            other => bail!(
                "unknown scenario {other} (loopback, capped, latency, thin, narrow, s3, stores, \
                 agent, initializer, initializer-capped)"
            ),
        };
        // The initializer scenario runs its tools in the init container's cgroup, on its own
        // data sets; the others run every tool asked for, unconfined.
        let (tools_here, sets_here, group) = if scenario.confined() {
            let group = match cgroup::Group::create() {
                Ok(g) => g,
                Err(e) => {
                    let note = format!(
                        "Scenario \"{}\" skipped: cannot run the tools in a cgroup with the \
                         init container's limits (needs root and a cgroup v1 or v2 file \
                         system with the cpu and memory controllers): {e:#}.",
                        scenario.title()
                    );
                    eprintln!("{note}");
                    notes.push(note);
                    continue;
                }
            };
            let chosen = |t: Tool| tools.contains(&t);
            let mut here = Vec::new();
            if chosen(Tool::ModelpullInitializer) || chosen(Tool::Modelpull) {
                here.push(Tool::ModelpullInitializer);
            }
            if chosen(Tool::Kserve) {
                here.push(Tool::Kserve);
            }
            let wanted = args.datasets.clone().unwrap_or_else(|| vec!["file".into()]);
            let sets: Vec<&data::DataSet> = sets
                .iter()
                .filter(|s| wanted.iter().any(|w| w == s.name))
                .collect();
            (here, sets, Some(group))
        } else {
            let wanted = datasets_for(scenario.name(), args.datasets.as_deref());
            let sets: Vec<&data::DataSet> =
                sets.iter().filter(|s| wanted.contains(&s.name)).collect();
            let thin = matches!(scenario, Scenario::Thin | Scenario::Narrow);
            let here: Vec<Tool> = tools
                .iter()
                .copied()
                .filter(|t| !t.s3_only())
                .filter(|t| !thin || matches!(t, Tool::Modelpull | Tool::Aria2c))
                .collect();
            (here, sets, None)
        };
        let netns = if scenario == Scenario::Latency {
            match origin::Netns::create() {
                Ok(ns) => Some(ns),
                Err(e) => {
                    let note = format!("Scenario \"{}\" skipped: {e:#}.", scenario.title());
                    eprintln!("{note}");
                    notes.push(note);
                    continue;
                }
            }
        } else {
            None
        };
        let nginx = origin::start(
            &args.work,
            &args.origin,
            args.port,
            scenario,
            netns.as_ref(),
        )?;
        let base_url = format!("http://127.0.0.1:{}", args.port);
        if scenario == Scenario::Loopback {
            eprintln!("measuring the machine's limits…");
            limits = Some(measure_limits(&args, &base_url, &sets)?);
        }
        let cx = tools::Ctx {
            modelpull: &args.modelpull,
            python: &args.python,
            s5cmd: &args.s5cmd,
            peers: &peers,
            base_url: &base_url,
            work: &args.work,
        };
        let mut prefix: Vec<String> = netns
            .as_ref()
            .map(origin::Netns::prefix)
            .unwrap_or_default();
        if let Some(g) = &group {
            prefix = g.wrap(prefix);
        }
        for set in sets_here {
            let mut rows: Vec<(Tool, Vec<Sample>)> =
                tools_here.iter().map(|t| (*t, Vec::new())).collect();
            for run in 0..args.runs {
                for k in 0..rows.len() {
                    // Rotate the order so no tool always runs first.
                    let i = (k + run) % rows.len();
                    let tool = rows[i].0;
                    let mark = nginx.log_mark();
                    let mut sample = run_tool(tool, set, &cx, &prefix, &args.work)?;
                    sample.rejected = nginx.count_status(mark, "503")?;
                    let label = format!("{} / {}", scenario.name(), set.name);
                    log_sample(&label, run, tool, &sample, set.bytes());
                    rows[i].1.push(sample);
                }
            }
            let mut note: Vec<String> = group
                .as_ref()
                .map(|g| initializer_note(g, set))
                .into_iter()
                .collect();
            note.extend(report::run_notes(&rows));
            cells.push(Cell {
                scenario: scenario.name().into(),
                scenario_title: scenario.title().into(),
                dataset: set.name.into(),
                dataset_title: set.title.clone(),
                bytes: set.bytes(),
                rows,
                note: (!note.is_empty()).then(|| note.join(" ")),
                startup: group.is_some(),
            });
        }
    }

    let mut md = String::new();
    md.push_str(&format!(
        "Run of {} on {} ({} cores), {} runs per tool, median (min–max); every output checked by sha256; fsync included.\n\n",
        today(),
        cpu_model(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        args.runs
    ));
    for c in &cells {
        c.markdown(&mut md);
    }
    for section in &sections {
        md.push_str(section);
        md.push('\n');
    }
    md.push_str(&targets::markdown(
        &cells,
        limits.as_ref(),
        baseline.as_ref(),
    ));
    for n in &notes {
        md.push_str(&format!("\n{n}\n"));
    }
    let mut csv = String::from("scenario,dataset,tool,gbps,correct,seconds,bytes\n");
    for c in &cells {
        c.csv(&mut csv);
    }
    println!("{md}");
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("latest.md"), &md)?;
    std::fs::write(args.out.join("latest.csv"), &csv)?;
    let png = args.out.join("latest.png");
    let drawn = !cells.is_empty()
        && Command::new(&args.python)
            .arg(peers.join("chart.py"))
            .arg(args.out.join("latest.csv"))
            .arg(&png)
            .status()
            .is_ok_and(|s| s.success());
    eprintln!(
        "results in {}/latest.md and latest.csv{}",
        args.out.display(),
        if drawn {
            ", chart in latest.png"
        } else {
            " (no chart: no tool-by-tool table, or matplotlib missing)"
        }
    );
    Ok(())
}

fn check_prerequisites(args: &Args, tools: &[Tool]) -> Result<()> {
    let have = |cmd: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {cmd}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    for cmd in ["nginx", "curl", "fio"] {
        if !have(cmd) {
            bail!("{cmd} is missing: run scripts/setup-bench.sh first");
        }
    }
    if !Path::new("/usr/bin/time").exists() {
        bail!("GNU time is missing: run scripts/setup-bench.sh first");
    }
    if tools.contains(&Tool::Aria2c) && !have("aria2c") {
        bail!("aria2c is missing: run scripts/setup-bench.sh first");
    }
    if (tools.contains(&Tool::HfTransfer) || tools.contains(&Tool::Kserve)) && !args.python.exists()
    {
        bail!(
            "{} is missing: run scripts/setup-bench.sh first",
            args.python.display()
        );
    }
    let s3 = args.scenarios.iter().any(|s| s == "s3" || s == "stores");
    if s3 && !args.garage.exists() {
        bail!(
            "{} not found: run scripts/setup-bench.sh (it builds Garage, the S3 server of the \
             s3 and stores scenarios), or pass --garage",
            args.garage.display()
        );
    }
    if s3 && tools.contains(&Tool::S5cmd) && !args.s5cmd.exists() {
        bail!(
            "{} not found: run scripts/setup-bench.sh (it installs s5cmd into benches/.venv), \
             or pass --s5cmd",
            args.s5cmd.display()
        );
    }
    if s3 && !args.python.exists() {
        bail!(
            "{} is missing (the S3 data sets are uploaded with boto3): run \
             scripts/setup-bench.sh first",
            args.python.display()
        );
    }
    if args.scenarios.iter().any(|s| s == "agent") && !args.agent.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p localmodelnode-agent`",
            args.agent.display()
        );
    }
    if (tools.contains(&Tool::Modelpull) || tools.contains(&Tool::ModelpullInitializer))
        && !args.modelpull.exists()
    {
        bail!(
            "{} not found: build it with `cargo build --release -p modelpull-cli`",
            args.modelpull.display()
        );
    }
    Ok(())
}

/// The model-store rows: each store holds the `store` data set; every tool pulls it from
/// each, `args.runs` times.
fn run_stores(args: &Args, tools: &[Tool], peers: &Path) -> Result<Vec<Cell>> {
    let tools: Vec<Tool> = tools
        .iter()
        .copied()
        .filter(|t| matches!(t, Tool::Modelpull | Tool::Kserve))
        .collect();
    eprintln!("preparing data set store…");
    let set = data::prepare(&args.origin, "store", args.size)?;
    let servers = stores::start(
        &args.python,
        peers,
        &args.garage,
        &args.origin,
        &set,
        &args.work,
    )?;
    let mut cells = Vec::new();
    for store in stores::Store::ALL {
        let rows = pull_rows(
            args,
            peers,
            &tools,
            &set,
            &store.uri(),
            &servers.env,
            &servers.garage.endpoint,
            &format!("stores / {}", store.name()),
        )?;
        let mut note = format!(
            "modelpull verifies every file against {}; KServe checks nothing.",
            verified_words(&rows)
        );
        if store == stores::Store::S3 {
            note.push_str(&format!(
                " Server: {}, one node. {}",
                servers.garage.version, servers.garage_probe
            ));
        }
        cells.push(Cell {
            scenario: "stores".into(),
            scenario_title: "Model stores on 127.0.0.1".into(),
            dataset: store.name().into(),
            dataset_title: format!("{}, {}", store.title(), set.title),
            bytes: set.bytes(),
            rows,
            note: Some(note),
            startup: false,
        });
    }
    Ok(cells)
}

/// What modelpull's reports say the files were verified against, in words.
fn verified_words(rows: &[(Tool, Vec<Sample>)]) -> String {
    let labels = rows
        .iter()
        .find(|(t, _)| *t == Tool::Modelpull)
        .map(|(_, s)| report::verified_against(s))
        .unwrap_or_default();
    if labels.is_empty() {
        "what its store gives (its report was not read)".into()
    } else {
        labels
            .iter()
            .map(|l| format!("`{l}`"))
            .collect::<Vec<_>>()
            .join(", ")
            + " (from its report)"
    }
}

/// Every tool pulls `uri` (which holds `set`) `args.runs` times, in rotating order.
#[allow(clippy::too_many_arguments)]
fn pull_rows(
    args: &Args,
    peers: &Path,
    tools: &[Tool],
    set: &data::DataSet,
    uri: &str,
    env: &[(String, String)],
    s3_endpoint: &str,
    label: &str,
) -> Result<Vec<(Tool, Vec<Sample>)>> {
    let cx = tools::Ctx {
        modelpull: &args.modelpull,
        python: &args.python,
        s5cmd: &args.s5cmd,
        peers,
        base_url: "",
        work: &args.work,
    };
    let mut rows: Vec<(Tool, Vec<Sample>)> = tools.iter().map(|t| (*t, Vec::new())).collect();
    for run in 0..args.runs {
        for k in 0..rows.len() {
            let i = (k + run) % rows.len();
            let tool = rows[i].0;
            let dest = fresh_dest(tool, &args.work, false)?;
            let argv = stores::command(tool, uri, &dest, &cx, s3_endpoint)?;
            let outputs = set
                .files
                .iter()
                .map(|f| (stores::output(&dest, &f.path), f.size, f.sha256.clone()))
                .collect();
            let sample = measure(argv, env, &dest, outputs, &[], &args.work)?;
            log_sample(label, run, tool, &sample, set.bytes());
            rows[i].1.push(sample);
        }
    }
    Ok(rows)
}

/// Prints one run's figures as it ends.
fn log_sample(label: &str, run: usize, tool: Tool, sample: &Sample, bytes: u64) {
    eprintln!(
        "{label} / run {}: {:<12} {:.2} s, {:.3} GB/s, {:.2} CPU s/GB, {} MiB{}{}",
        run + 1,
        tool.name(),
        sample.seconds,
        bytes as f64 / sample.seconds / 1e9,
        sample.cpu_seconds / (bytes as f64 / 1e9),
        sample.max_rss_kib / 1024,
        sample
            .rejected
            .map(|n| format!(", {n} × 503"))
            .unwrap_or_default(),
        match (sample.failed, sample.correct) {
            (true, _) => "  FAILED",
            (false, false) => "  WRONG BYTES",
            _ => "",
        }
    );
}

/// The S3 rows: Garage on 127.0.0.1 holds each data set under its name; modelpull, s5cmd,
/// boto3's TransferManager and KServe's initializer pull it from the same server.
fn run_s3(args: &Args, tools: &[Tool], peers: &Path, sets: &[&data::DataSet]) -> Result<Vec<Cell>> {
    let tools: Vec<Tool> = tools
        .iter()
        .copied()
        .filter(|t| {
            matches!(
                t,
                Tool::Modelpull | Tool::S5cmd | Tool::Boto3 | Tool::Kserve
            )
        })
        .collect();
    let garage = garage::Garage::start(&args.garage, &args.work)?;
    let env = garage.env();
    let mut cells = Vec::new();
    for set in sets {
        eprintln!("uploading data set {} to Garage…", set.name);
        let probe = garage.seed(&args.python, peers, &args.origin.join(set.name), set.name)?;
        let uri = format!("s3://{}/{}", garage::BUCKET, set.name);
        let rows = pull_rows(
            args,
            peers,
            &tools,
            set,
            &uri,
            &env,
            &garage.endpoint,
            &format!("s3 / {}", set.name),
        )?;
        let note = format!(
            "{}, one node on 127.0.0.1 (replication 1, compression off, data on the work \
             disk), path-style, region `{}`; objects uploaded in one PUT each. {probe} \
             modelpull verifies every file against {}; s5cmd, boto3 and KServe are not asked \
             to verify; the harness checks every output's sha256.",
            garage.version,
            garage::REGION,
            verified_words(&rows)
        );
        cells.push(Cell {
            scenario: "s3".into(),
            scenario_title: "S3 from Garage on 127.0.0.1".into(),
            dataset: set.name.into(),
            dataset_title: set.title.clone(),
            bytes: set.bytes(),
            rows,
            note: Some(note),
            startup: false,
        });
    }
    Ok(cells)
}

/// An empty destination for `tool` (modelpull creates its own, and refuses a non-empty one).
fn fresh_dest(tool: Tool, work: &Path, create: bool) -> Result<PathBuf> {
    let dest = work.join(format!("out-{}", tool.name()));
    let _ = std::fs::remove_dir_all(&dest);
    let _ = std::fs::remove_dir_all(work.join(format!(".out-{}.modelpull", tool.name())));
    if create && tool != Tool::Modelpull {
        std::fs::create_dir_all(&dest)?;
    }
    Ok(dest)
}

/// The data sets `scenario` pulls: those asked for, else its own default (none for the
/// scenarios with their own data set: stores, agent).
fn datasets_for<'a>(scenario: &str, asked: Option<&'a [String]>) -> Vec<&'a str> {
    let default: &[&'static str] = match scenario {
        "loopback" | "capped" | "latency" => &["file", "shards", "mixed"],
        "thin" | "narrow" | "s3" => &["file", "shards"],
        "initializer" | "initializer-capped" => &["file"],
        _ => &[],
    };
    match asked {
        Some(list) if !default.is_empty() => list.iter().map(String::as_str).collect(),
        _ => default.to_vec(),
    }
}

/// The line under an initializer table: the limits, and what is timed.
fn initializer_note(group: &cgroup::Group, set: &data::DataSet) -> String {
    format!(
        "Each tool runs in a cgroup with the limits KServe's `inferenceservice-config` ships \
         for its storage-initializer (cpuLimit 1, memoryLimit 1Gi; {}); nginx runs outside \
         it. **seconds**: from the tool's start until the model ({}) is on disk and flushed, \
         i.e. model-ready; GB/s is the data set ÷ seconds; **CPU s** the CPU time of \
         the whole run; **modelpull ÷ tool** the tool's seconds ÷ modelpull's. modelpull \
         verifies each file's sha256 (`#sha256=`); KServe checks nothing; the harness checks \
         both afterwards.",
        group.describe(),
        match set.files.len() {
            1 => "1 file".to_owned(),
            n => format!("{n} files"),
        }
    )
}

fn run_tool(
    tool: Tool,
    set: &data::DataSet,
    cx: &tools::Ctx<'_>,
    prefix: &[String],
    work: &Path,
) -> Result<Sample> {
    let dest = fresh_dest(tool, work, true)?;
    let argv = tools::command(tool, set, &dest, cx)?;
    let outputs = set
        .files
        .iter()
        .map(|f| {
            (
                tools::output(tool, &dest, &f.path),
                f.size,
                f.sha256.clone(),
            )
        })
        .collect();
    measure(argv, &[], &dest, outputs, prefix, work)
}

/// Runs `command` under GNU time, after `prefix` (a network namespace, a cgroup), flushes
/// its `outputs` (path, size, sha256), checks them and removes `dest`.
fn measure(
    command: Vec<String>,
    env: &[(String, String)],
    dest: &Path,
    outputs: Vec<(PathBuf, u64, String)>,
    prefix: &[String],
    work: &Path,
) -> Result<Sample> {
    let timefile = work.join("time.out");
    let _ = std::fs::remove_file(&timefile);
    let mut argv: Vec<String> = prefix.to_vec();
    argv.extend([
        "/usr/bin/time".into(),
        "-f".into(),
        "%U %S %M".into(),
        "-o".into(),
        timefile.display().to_string(),
    ]);
    argv.extend(command);
    // The tool's standard output goes to a file: modelpull's is its JSON report.
    let stdout_path = work.join("stdout.out");
    let stdout = std::fs::File::create(&stdout_path)?;
    let started = Instant::now();
    let ticks = busy::Ticks::now();
    let status = Command::new(&argv[0])
        .args(&argv[1..])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(stdout)
        .status()
        .with_context(|| format!("running {}", argv[0]))?;
    if status.success() {
        // Durability is part of the job: flush what the tool left in the page cache.
        for (path, _, _) in &outputs {
            if let Ok(file) = std::fs::File::open(path) {
                file.sync_all()?;
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let busy = ticks
        .zip(busy::Ticks::now())
        .and_then(|(a, b)| a.busy_until(b));
    let times = std::fs::read_to_string(&timefile).unwrap_or_default();
    let last = times.lines().last().unwrap_or_default();
    let fields: Vec<f64> = last
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let (user, sys, rss) = match fields.as_slice() {
        [u, s, m] => (*u, *s, *m),
        _ => (0.0, 0.0, 0.0),
    };
    let correct = status.success()
        && outputs
            .iter()
            .all(|(path, size, sha)| file_sha256(path, *size).is_ok_and(|s| s == *sha));
    let _ = std::fs::remove_dir_all(dest);
    let out = std::fs::read(&stdout_path).unwrap_or_default();
    let report = report::PullReport::parse(&out);
    let error = (!status.success())
        .then(|| report::PullReport::error(&out))
        .flatten();
    Ok(Sample {
        seconds,
        cpu_seconds: user + sys,
        sys_seconds: sys,
        busy,
        max_rss_kib: rss as u64,
        correct,
        failed: !status.success(),
        report,
        rejected: None,
        error,
    })
}

/// Whether `dir` holds every file of `set` with its content.
pub fn verify_tree(dir: &Path, set: &data::DataSet) -> bool {
    set.files
        .iter()
        .all(|f| file_sha256(&dir.join(&f.path), f.size).is_ok_and(|s| s == f.sha256))
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

/// The machine's limits: disk write, one loopback stream, sha256 on one core.
fn measure_limits(args: &Args, base_url: &str, sets: &[data::DataSet]) -> Result<targets::Limits> {
    let target = args.work.join("fio.test");
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
        .output()?;
    let _ = std::fs::remove_file(&target);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("fio output")?;
    let disk = v["jobs"][0]["write"]["bw"]
        .as_f64()
        .context("fio bandwidth")?
        * 1024.0
        / 1e9;

    let biggest = sets
        .iter()
        .flat_map(|s| s.files.iter().map(move |f| (s, f)))
        .max_by_key(|(_, f)| f.size)
        .context("no data")?;
    let url = format!("{base_url}/{}/{}", biggest.0.name, biggest.1.path);
    let mut loopback: f64 = 0.0;
    for _ in 0..2 {
        let started = Instant::now();
        if !Command::new("curl")
            .args(["-sS", "-o", "/dev/null", &url])
            .status()?
            .success()
        {
            bail!("curl could not fetch {url}");
        }
        loopback = loopback.max(biggest.1.size as f64 / started.elapsed().as_secs_f64() / 1e9);
    }

    let data = vec![7u8; 256 << 20];
    let started = Instant::now();
    let mut h = sha2::Sha256::new();
    for _ in 0..4 {
        h.update(&data);
    }
    std::hint::black_box(h.finalize());
    let sha = (4 * data.len()) as f64 / started.elapsed().as_secs_f64() / 1e9;

    Ok(targets::Limits {
        disk,
        loopback,
        sha256: sha,
    })
}

fn today() -> String {
    Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
