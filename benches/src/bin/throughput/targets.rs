//! The product's speed targets, checked against what this run measured.
//!
//! The harness prints the verdicts itself so that "how close are we" is read from one run on
//! one machine, never pieced together by hand from tables of different days. A target whose
//! inputs were not measured (a scenario, data set or peer left out) is not printed. A target
//! that this run's own limits put out of reach of any tool that verifies sha256 says so, with
//! the arithmetic, so that a machine's bound is not read as the engine's shortfall.

use std::fmt::Write as _;

use crate::report::Cell;
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
}

const DISK_FRACTION: f64 = 0.75;
const OVER_BEST_PEER: f64 = 2.0;
const CAPPED_OVER_KSERVE: f64 = 10.0;
const CAPPED_OVER_ARIA2C: f64 = 1.3;
const CPU_PER_GB: f64 = 0.8;
const RSS_MIB: u64 = 256;

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
        });
    }
    out
}

/// The limits, modelpull as a fraction of the lowest, and every target with its verdict.
pub fn markdown(cells: &[Cell], limits: Option<&Limits>) -> String {
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
    let v = verdicts(cells, limits);
    if v.is_empty() {
        return md;
    }
    md.push_str("Targets:\n\n| target | measured | wanted | met |\n|---|---|---|---|\n");
    for t in &v {
        let met = match (t.met, &t.out_of_reach) {
            (true, _) => "yes".to_owned(),
            (false, None) => "**no**".to_owned(),
            (false, Some(why)) => format!("**no**, out of reach here: {why}"),
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
        let md = markdown(&cells, Some(&LIMITS));
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
            markdown(&cells, Some(&fast_disk)).contains("| **no**, out of reach here: 0.75 × 2.60")
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
}
