//! The product's speed targets, checked against what this run measured.
//!
//! The harness prints the verdicts itself so that "how close are we" is read from one run on
//! one machine, never pieced together by hand from tables of different days. A target whose
//! inputs were not measured (a scenario, data set or peer left out) is not printed. A target
//! that this run's own limits put out of reach of any tool that verifies sha256 says so, with
//! the arithmetic, so that a machine's bound is not read as the engine's shortfall.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use crate::origin::{NARROW_CONNECTIONS, THIN_RATE};
use crate::report::{Cell, verified_against};
use crate::tools::Tool;

/// The machine's limits measured in the same run, in GB/s.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub disk: f64,
    pub loopback: f64,
    pub sha256: f64,
}

impl Limits {
    pub fn markdown(&self) -> String {
        format!(
            "Limits of this machine, measured in the same run:\n\
             - disk, sequential O_DIRECT write (fio, 4 MiB blocks, queue depth 8, fsync): {:.2} GB/s\n\
             - one HTTP stream on loopback (curl to /dev/null, best of 2): {:.2} GB/s\n\
             - sha256 on one core: {:.2} GB/s\n",
            self.disk, self.loopback, self.sha256
        )
    }

    /// The lowest limit and its name.
    fn lowest(&self) -> (f64, &'static str) {
        [
            (self.disk, "the disk"),
            (self.loopback, "one loopback stream"),
            (self.sha256, "one core's sha256"),
        ]
        .into_iter()
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .expect("three limits")
    }
}

/// One target: what was measured, against what.
#[derive(Debug, PartialEq)]
struct Verdict {
    what: String,
    measured: String,
    target: String,
    met: bool,
    /// Why no tool that verifies sha256 could meet it on this machine, if none could.
    out_of_reach: Option<String>,
    /// Why it is met or not, where the run says more than the numbers.
    why: Option<String>,
}

impl Verdict {
    fn new(what: String, measured: String, target: String, met: bool) -> Self {
        Verdict {
            what,
            measured,
            target,
            met,
            out_of_reach: None,
            why: None,
        }
    }

    fn because(mut self, why: Option<String>) -> Self {
        self.why = why;
        self
    }
}

/// modelpull's GB/s per data set in an earlier run (its `latest.csv`), for the "not slower"
/// targets.
#[derive(Debug, Clone)]
pub struct Baseline {
    /// Where it was read from.
    pub source: String,
    /// (scenario, data set, GB/s, bytes when the file says) of modelpull's correct rows.
    rows: Vec<(String, String, f64, Option<u64>)>,
}

impl Baseline {
    /// Reads `path`; `None` when there is no such file.
    pub fn read(path: &Path) -> Result<Option<Self>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("reading the baseline {}", path.display()));
            }
        };
        Ok(Some(Self::parse(&path.display().to_string(), &text)))
    }

    fn parse(source: &str, text: &str) -> Self {
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
        let col = |name: &str| header.iter().position(|h| h.trim() == name);
        let (Some(sc), Some(ds), Some(tl), Some(gb), Some(ok)) = (
            col("scenario"),
            col("dataset"),
            col("tool"),
            col("gbps"),
            col("correct"),
        ) else {
            return Baseline {
                source: source.into(),
                rows: Vec::new(),
            };
        };
        let by = col("bytes");
        let rows = lines
            .filter_map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                if f.get(tl)?.trim() != "modelpull" || f.get(ok)?.trim() != "true" {
                    return None;
                }
                Some((
                    f.get(sc)?.trim().to_owned(),
                    f.get(ds)?.trim().to_owned(),
                    f.get(gb)?.trim().parse().ok()?,
                    by.and_then(|b| f.get(b)?.trim().parse().ok()),
                ))
            })
            .collect();
        Baseline {
            source: source.into(),
            rows,
        }
    }

    /// modelpull's GB/s for `cell`'s scenario and data set, when the earlier run pulled the
    /// same bytes. A file without sizes is taken to hold the default data sets (4 GiB file).
    fn gbps(&self, cell: &Cell) -> Option<f64> {
        self.rows
            .iter()
            .find(|(sc, ds, _, _)| *sc == cell.scenario && *ds == cell.dataset)
            .filter(|(_, ds, _, bytes)| match bytes {
                Some(b) => *b == cell.bytes,
                None => ds != "file" || cell.bytes == 4 << 30,
            })
            .map(|r| r.2)
    }
}

const DISK_FRACTION: f64 = 0.75;
const OVER_BEST_PEER: f64 = 2.0;
const CAPPED_OVER_KSERVE: f64 = 10.0;
const CAPPED_OVER_ARIA2C: f64 = 1.3;
const CPU_PER_GB: f64 = 0.8;
const RSS_MIB: u64 = 256;
const THIN_GBPS: f64 = 0.6;
const THIN_OVER_ARIA2C: f64 = 4.0;
const CPU_PER_GB_ONE_FILE: f64 = 0.85;
const CPU_PER_GB_CRC: f64 = 0.35;
const ONE_FILE_FRACTION: f64 = 0.85;

/// The one-file cell of unlimited loopback, which the disk and best-peer targets read.
fn loopback_file(cells: &[Cell]) -> Option<&Cell> {
    cells
        .iter()
        .find(|c| c.scenario == "loopback" && c.dataset == "file")
}

fn verdicts(cells: &[Cell], limits: Option<&Limits>) -> Vec<Verdict> {
    let mut out = Vec::new();
    let file = loopback_file(cells);
    let mp_file = file.and_then(|c| c.median_gbps(Tool::Modelpull));
    if let (Some(mp), Some(l)) = (mp_file, limits) {
        // A file's sha256 is one sequential pass: one file is never verified faster than one
        // core hashes, however many connections and cores fetch it.
        let wanted = DISK_FRACTION * l.disk;
        out.push(Verdict {
            what: "unlimited loopback, one file: modelpull ÷ O_DIRECT disk write".into(),
            measured: format!("{mp:.3} ÷ {:.2} = {:.2}", l.disk, mp / l.disk),
            target: format!("≥ {DISK_FRACTION}"),
            met: mp / l.disk >= DISK_FRACTION,
            why: None,
            out_of_reach: (wanted > l.sha256).then(|| {
                format!(
                    "{DISK_FRACTION} × {:.2} = {wanted:.2} GB/s is more than one core hashes \
                     ({:.2} GB/s), and one file's sha256 runs on one core",
                    l.disk, l.sha256
                )
            }),
        });
    }
    if let (Some(c), Some(mp)) = (file, mp_file) {
        let best = c
            .rows
            .iter()
            .filter(|(t, _)| *t != Tool::Modelpull)
            .filter_map(|(t, _)| c.median_gbps(*t).map(|g| (g, t.name())))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        if let Some((g, name)) = best {
            out.push(Verdict {
                what: "unlimited loopback, one file: modelpull ÷ best peer".into(),
                measured: format!("{:.2}× ({name})", mp / g),
                target: format!("≥ {OVER_BEST_PEER}×"),
                met: mp / g >= OVER_BEST_PEER,
                out_of_reach: None,
                why: None,
            });
        }
    }
    for (peer, want) in [
        (Tool::Kserve, CAPPED_OVER_KSERVE),
        (Tool::Aria2c, CAPPED_OVER_ARIA2C),
    ] {
        // The lowest ratio over the capped data sets: the target holds for each of them.
        let worst = cells
            .iter()
            .filter(|c| c.scenario == "capped")
            .filter_map(|c| {
                let r = c.median_gbps(Tool::Modelpull)? / c.median_gbps(peer)?;
                Some((r, c.dataset.as_str()))
            })
            .min_by(|a, b| a.0.total_cmp(&b.0));
        if let Some((r, dataset)) = worst {
            out.push(Verdict {
                what: format!("85 MB/s per connection: modelpull ÷ {}", peer.name()),
                measured: format!("{r:.2}× (lowest, {dataset})"),
                target: format!("≥ {want}×"),
                met: r >= want,
                out_of_reach: None,
                why: None,
            });
        }
    }
    let cpu = cells
        .iter()
        .filter(|c| c.scenario == "loopback" || c.scenario == "capped")
        .filter_map(|c| Some((c.median_cpu_per_gb(Tool::Modelpull)?, c)))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    if let Some((cpu, c)) = cpu {
        // The hash alone, at this run's one-core rate, is the share of the budget no
        // verifying tool can give back.
        let hash = limits.map(|l| format!("; sha256 alone {:.2} s", 1.0 / l.sha256));
        out.push(Verdict {
            what: "CPU per GB, sha256 included".into(),
            measured: format!(
                "{cpu:.2} s (highest, {} / {}){}",
                c.scenario,
                c.dataset,
                hash.unwrap_or_default()
            ),
            target: format!("≤ {CPU_PER_GB} s"),
            met: cpu <= CPU_PER_GB,
            out_of_reach: None,
            why: None,
        });
    }
    let rss = cells
        .iter()
        .filter_map(|c| Some((c.max_rss_mib(Tool::Modelpull)?, c)))
        .max_by_key(|(r, _)| *r);
    if let Some((rss, c)) = rss {
        out.push(Verdict {
            what: "peak RSS, every data set".into(),
            measured: format!("{rss} MiB (highest, {} / {})", c.scenario, c.dataset),
            target: format!("≤ {RSS_MIB} MiB"),
            met: rss <= RSS_MIB,
            out_of_reach: None,
            why: None,
        });
    }
    out
}

/// The cells of `scenario` where modelpull ran, each with its median GB/s (`None` when a run
/// failed or wrote wrong bytes).
fn modelpull_cells<'a>(cells: &'a [Cell], scenario: &str) -> Vec<(&'a Cell, Option<f64>)> {
    cells
        .iter()
        .filter(|c| c.scenario == scenario && c.runs(Tool::Modelpull).is_some())
        .map(|c| (c, c.median_gbps(Tool::Modelpull)))
        .collect()
}

/// What modelpull's reports in `cells` say about its connections, for a "why".
fn connections_said(cells: &[&Cell]) -> Option<String> {
    let reports: Vec<_> = cells
        .iter()
        .filter_map(|c| c.runs(Tool::Modelpull))
        .flatten()
        .filter_map(|s| s.report.as_ref())
        .collect();
    let settled: Vec<u64> = reports
        .iter()
        .flat_map(|r| r.connections.iter().map(|c| c.settled))
        .collect();
    if let (Some(lo), Some(hi)) = (settled.iter().min(), settled.iter().max()) {
        return Some(if lo == hi {
            format!("modelpull settled on {lo} connections")
        } else {
            format!("modelpull settled on {lo}–{hi} connections")
        });
    }
    reports
        .iter()
        .filter_map(|r| r.allowed)
        .max()
        .map(|n| format!("modelpull allowed itself {n} connections (its report)"))
}

/// How busy the machine's cores were during modelpull's runs in `cells`, for a "why": a pull
/// that misses a rate with every core busy was bound by CPU (the origin's included).
fn busy_said(cells: &[&Cell]) -> Option<String> {
    let busy: Vec<f64> = cells
        .iter()
        .filter_map(|c| c.median_busy(Tool::Modelpull))
        .collect();
    let lo = busy.iter().copied().reduce(f64::min)?;
    let hi = busy.iter().copied().fold(lo, f64::max);
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let pct = |b: f64| (b * 100.0).round();
    Some(if pct(lo) == pct(hi) {
        format!(
            "the machine's {cores} cores were {}% busy (origin included)",
            pct(lo)
        )
    } else {
        format!(
            "the machine's {cores} cores were {}–{}% busy (origin included)",
            pct(lo),
            pct(hi)
        )
    })
}

/// The kernel's share of modelpull's CPU per GB in `cell`, for a "why".
fn kernel_said(cell: &Cell) -> Option<String> {
    let sys = cell.median_sys_per_gb(Tool::Modelpull)?;
    Some(format!(
        "{sys:.2} s/GB of it in the kernel (socket reads, copies, disk writes)"
    ))
}

/// Issue 19's targets: thin connections, the narrow server, CPU per GB, one verified file
/// against the machine's limits, and no slower than the previous results.
fn scaling_targets(
    cells: &[Cell],
    limits: Option<&Limits>,
    baseline: Option<&Baseline>,
) -> Vec<Verdict> {
    let mut out = Vec::new();
    let per_conn = THIN_RATE / 1e9;

    let thin = modelpull_cells(cells, "thin");
    if !thin.is_empty() {
        let each: Vec<String> = thin
            .iter()
            .map(|(c, g)| match g {
                Some(g) => format!("{} {g:.3}", c.dataset),
                None => format!("{} failed", c.dataset),
            })
            .collect();
        let lowest = thin
            .iter()
            .map(|(_, g)| g.unwrap_or(0.0))
            .fold(f64::INFINITY, f64::min);
        let met = lowest >= THIN_GBPS;
        let needed = (THIN_GBPS / per_conn).ceil();
        let why = (!met).then(|| {
            let cs: Vec<&Cell> = thin.iter().map(|(c, _)| *c).collect();
            let said: Vec<String> = connections_said(&cs)
                .into_iter()
                .chain(busy_said(&cs))
                .collect();
            format!(
                "{THIN_GBPS} GB/s at 10 MiB/s per connection takes {needed} connections{}",
                said.iter().map(|s| format!("; {s}")).collect::<String>()
            )
        });
        out.push(
            Verdict::new(
                "thin connections (10 MiB/s each): modelpull, default flags".into(),
                format!("{} GB/s", each.join(", ")),
                format!("≥ {THIN_GBPS} GB/s"),
                met,
            )
            .because(why),
        );
        let ratios: Vec<(f64, &Cell, f64)> = thin
            .iter()
            .filter_map(|(c, g)| {
                let aria = c.median_gbps(Tool::Aria2c)?;
                Some((g.as_ref()? / aria, *c, aria))
            })
            .collect();
        if let Some(&(r, c, aria)) = ratios.iter().min_by(|a, b| a.0.total_cmp(&b.0)) {
            let met = r >= THIN_OVER_ARIA2C;
            // aria2c's rate over one connection's cap is how many connections it kept busy:
            // several files at once each get their own 16.
            let wanted = THIN_OVER_ARIA2C * aria;
            let unlimited = cells
                .iter()
                .find(|u| u.scenario == "loopback" && u.dataset == c.dataset)
                .and_then(|u| u.median_gbps(Tool::Modelpull));
            let why = (!met).then(|| {
                let mut why = format!(
                    "aria2c -x16 kept {:.0} connections' worth busy on {} ({aria:.3} GB/s), so \
                     {THIN_OVER_ARIA2C}× is {wanted:.2} GB/s",
                    aria / per_conn,
                    c.dataset
                );
                if let Some(u) = unlimited.filter(|u| *u < wanted) {
                    let _ = write!(
                        why,
                        ", more than modelpull pulls {} with no cap per connection ({u:.3} GB/s \
                         on unlimited loopback)",
                        c.dataset
                    );
                }
                why
            });
            out.push(
                Verdict::new(
                    "thin connections: modelpull ÷ aria2c -x16".into(),
                    format!("{r:.2}× (lowest, {})", c.dataset),
                    format!("≥ {THIN_OVER_ARIA2C}×"),
                    met,
                )
                .because(why),
            );
        }
    }

    let narrow = modelpull_cells(cells, "narrow");
    if !narrow.is_empty() {
        let runs: usize = narrow
            .iter()
            .filter_map(|(c, _)| c.runs(Tool::Modelpull))
            .map(<[_]>::len)
            .sum();
        let failed: usize = narrow
            .iter()
            .filter_map(|(c, _)| c.failed_runs(Tool::Modelpull))
            .sum();
        // Wrong bytes from a pull that said it succeeded, as opposed to a failed pull.
        let wrong = narrow
            .iter()
            .filter_map(|(c, _)| c.runs(Tool::Modelpull))
            .flatten()
            .any(|s| !s.failed && !s.correct);
        let errors: Vec<&str> = narrow
            .iter()
            .filter_map(|(c, _)| c.runs(Tool::Modelpull))
            .flatten()
            .filter_map(|s| s.error.as_deref())
            .collect();
        let rejected: u64 = narrow
            .iter()
            .filter_map(|(c, _)| c.runs(Tool::Modelpull))
            .flatten()
            .filter_map(|s| s.rejected)
            .sum();
        let ceiling = f64::from(NARROW_CONNECTIONS) * per_conn;
        let rates: Vec<String> = narrow
            .iter()
            .filter_map(|(c, g)| {
                g.map(|g| {
                    format!(
                        "{} {g:.3} GB/s = {:.2} × 8 × 10 MiB/s",
                        c.dataset,
                        g / ceiling
                    )
                })
            })
            .collect();
        out.push(
            Verdict::new(
                "narrow server (8 connections, 10 MiB/s each): modelpull completes".into(),
                format!(
                    "{failed} of {runs} pulls failed, {rejected} × 503; {}",
                    if rates.is_empty() {
                        "no correct pull".to_owned()
                    } else {
                        rates.join(", ")
                    }
                ),
                format!("no failed pull; GB/s against 8 × 10 MiB/s = {ceiling:.3} GB/s"),
                failed == 0 && !wrong,
            )
            .because(if wrong {
                Some("a pull wrote wrong bytes".to_owned())
            } else {
                errors.first().map(|e| format!("modelpull: {e}"))
            }),
        );
    }

    let file = loopback_file(cells);
    if let Some((c, cpu)) = file.and_then(|c| Some((c, c.median_cpu_per_gb(Tool::Modelpull)?))) {
        let said: Vec<String> = limits
            .map(|l| {
                format!(
                    "sha256 alone is {:.2} s/GB at this run's one-core rate",
                    1.0 / l.sha256
                )
            })
            .into_iter()
            .chain(kernel_said(c))
            .collect();
        let why = (!said.is_empty()).then(|| said.join("; "));
        out.push(
            Verdict::new(
                format!(
                    "CPU per GB, verified {} pull on loopback",
                    file.map_or("", |c| c.dataset_title.as_str())
                ),
                format!("{cpu:.2} s"),
                format!("≤ {CPU_PER_GB_ONE_FILE} s"),
                cpu <= CPU_PER_GB_ONE_FILE,
            )
            .because(why),
        );
    }

    // Pulls whose files need only CRCs: modelpull's report names only CRC checksums.
    let store_cells: Vec<(&Cell, Vec<String>)> = cells
        .iter()
        .filter(|c| c.scenario == "stores" || c.scenario == "s3")
        .filter_map(|c| Some((c, verified_against(c.runs(Tool::Modelpull)?))))
        .collect();
    let crc_only = store_cells
        .iter()
        .filter(|(_, l)| !l.is_empty() && l.iter().all(|l| l.to_ascii_lowercase().contains("crc")))
        .filter_map(|(c, l)| Some((c.median_cpu_per_gb(Tool::Modelpull)?, *c, l)))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match crc_only {
        Some((cpu, c, labels)) => out.push(
            Verdict::new(
                "CPU per GB, a pull whose files need only CRCs".into(),
                format!(
                    "{cpu:.2} s (highest, {} / {}: {})",
                    c.scenario,
                    c.dataset,
                    labels.join(", ")
                ),
                format!("≤ {CPU_PER_GB_CRC} s"),
                cpu <= CPU_PER_GB_CRC,
            )
            .because(kernel_said(c)),
        ),
        None if !store_cells.is_empty() => {
            let said: Vec<String> = store_cells
                .iter()
                .map(|(c, l)| {
                    format!(
                        "{} / {}: {}",
                        c.scenario,
                        c.dataset,
                        if l.is_empty() {
                            "no report".to_owned()
                        } else {
                            l.join(", ")
                        }
                    )
                })
                .collect();
            out.push(
                Verdict::new(
                    "CPU per GB, a pull whose files need only CRCs".into(),
                    "not measured".into(),
                    format!("≤ {CPU_PER_GB_CRC} s"),
                    false,
                )
                .because(Some(format!(
                    "no store row of this run was verified by CRCs alone ({})",
                    said.join("; ")
                ))),
            );
        }
        None => {}
    }

    if let (Some((c, g)), Some(l)) = (
        file.and_then(|c| Some((c, c.median_gbps(Tool::Modelpull)?))),
        limits,
    ) {
        let (bound, name) = if l.disk <= l.sha256 {
            (l.disk, "the disk's O_DIRECT write")
        } else {
            (l.sha256, "one core's sha256")
        };
        let busy = busy_said(&[c])
            .map(|b| format!("; {b}"))
            .unwrap_or_default();
        out.push(
            Verdict::new(
                "one verified file on loopback ÷ min(disk, one core's sha256)".into(),
                format!("{g:.3} ÷ {bound:.2} = {:.2}", g / bound),
                format!("≥ {ONE_FILE_FRACTION}"),
                g / bound >= ONE_FILE_FRACTION,
            )
            .because(Some(format!("the lower limit is {name}{busy}"))),
        );
    }

    if let Some(b) = baseline {
        for (scenario, name) in [
            ("loopback", "unlimited loopback"),
            ("capped", "85 MB/s per connection"),
        ] {
            let compared: Vec<(&Cell, f64, f64)> = cells
                .iter()
                .filter(|c| c.scenario == scenario)
                .filter_map(|c| Some((c, c.median_gbps(Tool::Modelpull)?, b.gbps(c)?)))
                .collect();
            if compared.is_empty() {
                continue;
            }
            let each: Vec<String> = compared
                .iter()
                .map(|(c, now, before)| {
                    format!(
                        "{} {now:.3} vs {before:.3} ({:.2}×)",
                        c.dataset,
                        now / before
                    )
                })
                .collect();
            let slower: Vec<&(&Cell, f64, f64)> = compared
                .iter()
                .filter(|(_, now, before)| now < before)
                .collect();
            let why = (!slower.is_empty()).then(|| {
                let inside: Vec<&str> = slower
                    .iter()
                    .filter(|(c, _, before)| {
                        c.gbps_range(Tool::Modelpull)
                            .is_some_and(|(lo, hi)| (lo..=hi).contains(before))
                    })
                    .map(|(c, _, _)| c.dataset.as_str())
                    .collect();
                if inside.is_empty() {
                    "slower beyond this run's spread".to_owned()
                } else {
                    format!(
                        "the previous median lies within this run's min–max for {}",
                        inside.join(", ")
                    )
                }
            });
            out.push(
                Verdict::new(
                    format!("{name}: modelpull not slower than {}", b.source),
                    format!("{} GB/s", each.join(", ")),
                    "≥ 1.00×".into(),
                    slower.is_empty(),
                )
                .because(why),
            );
        }
    }
    out
}

/// The limits, modelpull as a fraction of the lowest, and every target with its verdict.
pub fn markdown(cells: &[Cell], limits: Option<&Limits>, baseline: Option<&Baseline>) -> String {
    let mut md = String::new();
    if let Some(l) = limits {
        md.push_str(&l.markdown());
        if let Some(mp) = loopback_file(cells).and_then(|c| c.median_gbps(Tool::Modelpull)) {
            let (low, name) = l.lowest();
            let _ = writeln!(
                md,
                "- modelpull, unlimited loopback, one file: {mp:.3} GB/s = {:.2} × the lowest \
                 of them ({name})",
                mp / low
            );
        }
        md.push('\n');
    }
    let mut v = verdicts(cells, limits);
    v.extend(scaling_targets(cells, limits, baseline));
    if v.is_empty() {
        return md;
    }
    md.push_str("Targets:\n\n| target | measured | wanted | met |\n|---|---|---|---|\n");
    for t in &v {
        let met = match (t.met, &t.out_of_reach, &t.why) {
            (true, _, None) => "yes".to_owned(),
            (true, _, Some(why)) => format!("yes ({why})"),
            (false, Some(reach), _) => format!("**no**, out of reach here: {reach}"),
            (false, None, None) => "**no**".to_owned(),
            (false, None, Some(why)) => format!("**no**: {why}"),
        };
        let _ = writeln!(md, "| {} | {} | {} | {met} |", t.what, t.measured, t.target);
    }
    md.push('\n');
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Sample;

    fn run(gbps: f64, cpu_per_gb: f64, rss_mib: u64) -> Sample {
        // 1 GB per cell, so seconds and CPU seconds read directly as rates.
        Sample {
            seconds: 1.0 / gbps,
            cpu_seconds: cpu_per_gb,
            max_rss_kib: rss_mib * 1024,
            correct: true,
            ..Sample::default()
        }
    }

    fn cell(scenario: &str, dataset: &str, rows: &[(Tool, f64)]) -> Cell {
        Cell {
            scenario: scenario.into(),
            scenario_title: scenario.into(),
            dataset: dataset.into(),
            dataset_title: dataset.into(),
            bytes: 1_000_000_000,
            rows: rows
                .iter()
                .map(|&(t, g)| (t, vec![run(g, 0.9, 190), run(g * 1.1, 0.7, 200)]))
                .collect(),
            note: None,
            startup: false,
        }
    }

    const LIMITS: Limits = Limits {
        disk: 2.0,
        loopback: 1.5,
        sha256: 1.8,
    };

    #[test]
    fn each_target_from_its_cells() {
        use Tool::{Aria2c, Curl, Kserve, Modelpull};
        let cells = vec![
            cell(
                "loopback",
                "file",
                &[(Modelpull, 1.6), (Aria2c, 0.5), (Curl, 0.9)],
            ),
            cell(
                "capped",
                "file",
                &[(Modelpull, 1.0), (Kserve, 0.08), (Aria2c, 0.5)],
            ),
            cell(
                "capped",
                "shards",
                &[(Modelpull, 0.9), (Kserve, 0.1), (Aria2c, 0.6)],
            ),
        ];
        let v = verdicts(&cells, Some(&LIMITS));
        let by = |what: &str| v.iter().find(|t| t.what.contains(what)).unwrap();
        // The median of two runs is the faster one (index len / 2).
        assert_eq!(by("disk").measured, "1.760 ÷ 2.00 = 0.88");
        assert!(by("disk").met);
        // 0.75 × 2.00 = 1.50 GB/s is within one core's sha256 (1.80).
        assert_eq!(by("disk").out_of_reach, None);
        // curl at 0.99 is the best peer: 1.76 / 0.99 < 2.
        assert_eq!(by("best peer").measured, "1.78× (curl)");
        assert!(!by("best peer").met);
        // KServe: 12.5× on file, 9× on shards; the lowest decides.
        assert_eq!(by("kserve").measured, "9.00× (lowest, shards)");
        assert!(!by("kserve").met);
        assert_eq!(by("aria2c").measured, "1.50× (lowest, shards)");
        assert!(by("aria2c").met);
        assert!(!by("CPU").met, "median of 0.9 and 0.7 is 0.9");
        assert_eq!(
            by("CPU").measured,
            "0.90 s (highest, capped / shards); sha256 alone 0.56 s"
        );
        assert!(by("RSS").measured.starts_with("200 MiB (highest, "));
        assert!(by("RSS").met);
        let md = markdown(&cells, Some(&LIMITS), None);
        assert!(md.contains("1.760 GB/s = 1.17 × the lowest of them (one loopback stream)"));
        assert!(md.contains("| **no** |"));
    }

    #[test]
    fn a_disk_faster_than_one_core_hashes_puts_the_disk_target_out_of_reach() {
        let cells = vec![cell("loopback", "file", &[(Tool::Modelpull, 1.3)])];
        let fast_disk = Limits {
            disk: 2.6,
            ..LIMITS
        };
        let v = verdicts(&cells, Some(&fast_disk));
        let disk = v.iter().find(|t| t.what.contains("disk")).unwrap();
        assert!(!disk.met);
        assert_eq!(
            disk.out_of_reach.as_deref(),
            Some(
                "0.75 × 2.60 = 1.95 GB/s is more than one core hashes (1.80 GB/s), and one \
                 file's sha256 runs on one core"
            )
        );
        // Met stays met, however the limits compare.
        let v = verdicts(
            &[cell("loopback", "file", &[(Tool::Modelpull, 2.0)])],
            Some(&fast_disk),
        );
        assert!(v[0].met);
        assert!(
            markdown(&cells, Some(&fast_disk), None)
                .contains("| **no**, out of reach here: 0.75 × 2.60")
        );
    }

    #[test]
    fn unmeasured_targets_are_left_out() {
        let cells = vec![cell("capped", "mixed", &[(Tool::Modelpull, 1.0)])];
        let v = verdicts(&cells, None);
        let names: Vec<&str> = v.iter().map(|t| t.what.as_str()).collect();
        assert_eq!(
            names,
            ["CPU per GB, sha256 included", "peak RSS, every data set"]
        );
        let mut wrong = cell("loopback", "file", &[(Tool::Modelpull, 1.0)]);
        wrong.rows[0].1[0].correct = false;
        assert!(
            verdicts(&[wrong], Some(&LIMITS))
                .iter()
                .all(|t| !t.what.contains("disk"))
        );
    }

    #[test]
    fn scaling_targets_from_their_cells() {
        use crate::report::PullReport;
        use Tool::{Aria2c, Modelpull};
        // Each cell's median is the faster run: 1.1 × the rate given.
        let mut narrow = cell("narrow", "file", &[(Modelpull, 0.07)]);
        narrow.rows[0].1[0].failed = true;
        narrow.rows[0].1[0].correct = false;
        for (s, n) in narrow.rows[0].1.iter_mut().zip([5, 2]) {
            s.rejected = Some(n);
        }
        let mut gs = cell("stores", "gs", &[(Modelpull, 0.9)]);
        for s in &mut gs.rows[0].1 {
            s.report = Some(PullReport {
                checksums: vec!["crc32c".into()],
                ..PullReport::default()
            });
        }
        let mut thin_file = cell("thin", "file", &[(Modelpull, 0.5), (Aria2c, 0.1)]);
        thin_file.rows[0].1[1].report = Some(PullReport {
            allowed: Some(16),
            ..PullReport::default()
        });
        let cells = vec![
            cell("loopback", "file", &[(Modelpull, 1.2)]),
            cell("loopback", "shards", &[(Modelpull, 1.0)]),
            thin_file,
            cell("thin", "shards", &[(Modelpull, 0.7), (Aria2c, 0.15)]),
            narrow,
            gs,
        ];
        let baseline = Baseline::parse(
            "old.csv",
            "scenario,dataset,tool,gbps,correct,seconds\n\
             loopback,file,modelpull,1.2,true,3\n\
             loopback,shards,modelpull,1.2,true,3\n\
             loopback,shards,curl,0.5,true,3\n",
        );
        let v = scaling_targets(&cells, Some(&LIMITS), Some(&baseline));
        let by = |what: &str| v.iter().find(|t| t.what.contains(what)).unwrap();
        let thin = by("thin connections (10 MiB/s each)");
        assert_eq!(thin.measured, "file 0.550, shards 0.770 GB/s");
        assert!(!thin.met);
        assert_eq!(
            thin.why.as_deref(),
            Some(
                "0.6 GB/s at 10 MiB/s per connection takes 58 connections; modelpull allowed \
                 itself 16 connections (its report)"
            )
        );
        let aria = by("aria2c");
        assert_eq!(aria.measured, "4.67× (lowest, shards)");
        assert!(aria.met);
        let narrow = by("narrow");
        assert_eq!(
            narrow.measured,
            "1 of 2 pulls failed, 7 × 503; no correct pull"
        );
        assert!(!narrow.met);
        assert_eq!(narrow.why, None, "failed, not wrong bytes, and no message");
        let cpu = by("CPU per GB, verified");
        assert_eq!(cpu.measured, "0.90 s");
        assert!(!cpu.met);
        let crc = by("only CRCs");
        assert_eq!(crc.measured, "0.90 s (highest, stores / gs: crc32c)");
        assert!(!crc.met);
        // 1.32 ÷ min(2.0, 1.8) = 0.73.
        let one = by("min(disk");
        assert_eq!(one.measured, "1.320 ÷ 1.80 = 0.73");
        assert_eq!(
            one.why.as_deref(),
            Some("the lower limit is one core's sha256")
        );
        // The baseline has no sizes: its 4 GiB file is not this 1 GB one; shards compare.
        let prev = by("not slower");
        assert_eq!(prev.measured, "shards 1.100 vs 1.200 (0.92×) GB/s");
        assert!(!prev.met);
        assert_eq!(prev.why.as_deref(), Some("slower beyond this run's spread"));
        let md = markdown(&cells, Some(&LIMITS), Some(&baseline));
        assert!(md.contains("| **no**: 0.6 GB/s at 10 MiB/s"), "{md}");
    }

    #[test]
    fn a_missed_target_says_what_the_run_measured_about_it() {
        use crate::report::PullReport;
        use Tool::{Aria2c, Modelpull};
        let mut loopback = cell("loopback", "file", &[(Modelpull, 1.0)]);
        for s in &mut loopback.rows[0].1 {
            s.sys_seconds = 0.3;
            s.busy = Some(0.95);
        }
        let mut s3 = cell("s3", "file", &[(Modelpull, 0.5)]);
        for s in &mut s3.rows[0].1 {
            s.sys_seconds = 0.25;
            s.report = Some(PullReport {
                checksums: vec!["x-amz-checksum-crc64nvme".into()],
                ..PullReport::default()
            });
        }
        let cells = vec![
            loopback,
            cell("loopback", "shards", &[(Modelpull, 0.8)]),
            cell("thin", "shards", &[(Modelpull, 0.5), (Aria2c, 0.25)]),
            s3,
        ];
        let v = scaling_targets(&cells, Some(&LIMITS), None);
        let by = |what: &str| v.iter().find(|t| t.what.contains(what)).unwrap();
        // aria2c's median 0.275 GB/s is 26 connections at 10 MiB/s; 4× that is more than
        // modelpull's 0.880 with no cap at all.
        let aria = by("aria2c");
        assert!(!aria.met);
        assert_eq!(
            aria.why.as_deref(),
            Some(
                "aria2c -x16 kept 26 connections' worth busy on shards (0.275 GB/s), so 4× is \
                 1.10 GB/s, more than modelpull pulls shards with no cap per connection (0.880 \
                 GB/s on unlimited loopback)"
            )
        );
        let cpu = by("CPU per GB, verified");
        assert_eq!(
            cpu.why.as_deref(),
            Some(
                "sha256 alone is 0.56 s/GB at this run's one-core rate; 0.30 s/GB of it in the \
                 kernel (socket reads, copies, disk writes)"
            )
        );
        let crc = by("only CRCs");
        assert!(!crc.met);
        assert_eq!(
            crc.why.as_deref(),
            Some("0.25 s/GB of it in the kernel (socket reads, copies, disk writes)")
        );
        let one = by("min(disk");
        let why = one.why.as_deref().unwrap();
        assert!(why.starts_with("the lower limit is one core's sha256; the machine's "));
        assert!(
            why.ends_with(" cores were 95% busy (origin included)"),
            "{why}"
        );
    }

    #[test]
    fn a_baseline_with_sizes_compares_only_the_same_bytes() {
        let b = Baseline::parse(
            "b",
            "scenario,dataset,tool,gbps,correct,seconds,bytes\n\
             capped,file,modelpull,0.9,true,1,1000000000\n\
             capped,shards,modelpull,0.9,false,1,1000000000\n",
        );
        let cells = vec![
            cell("capped", "file", &[(Tool::Modelpull, 1.0)]),
            cell("capped", "shards", &[(Tool::Modelpull, 1.0)]),
        ];
        let v = scaling_targets(&cells, None, Some(&b));
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].measured, "file 1.100 vs 0.900 (1.22×) GB/s");
        assert!(v[0].met);
        assert_eq!(v[0].why, None);
    }
}
