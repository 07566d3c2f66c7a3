//! Tables (Markdown) and the CSV the chart is drawn from.

use std::fmt::Write as _;

use crate::tools::Tool;

/// One timed run of one tool.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub seconds: f64,
    pub cpu_seconds: f64,
    /// The part of `cpu_seconds` spent in the kernel (socket reads, disk writes, copies).
    pub sys_seconds: f64,
    /// The share of the machine's cores busy during the run (the origin's included).
    pub busy: Option<f64>,
    pub max_rss_kib: u64,
    /// The tool succeeded and every output matched its sha256.
    pub correct: bool,
    /// The tool exited with an error (a failed pull, as opposed to wrong bytes).
    pub failed: bool,
    /// What modelpull's `--json` report said, when the tool printed one.
    pub report: Option<PullReport>,
    /// Responses the origin refused with 503 during this run, where it counts them.
    pub rejected: Option<u64>,
    /// Why the tool failed, when it says so on standard output (modelpull's `--json` error).
    pub error: Option<String>,
}

/// The parts of modelpull's JSON report (`pull --json`) the tables show.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PullReport {
    /// What the files were verified against, in the report's words, each once.
    pub checksums: Vec<String>,
    /// Connections per host the pull settled on, when the report says (`connections` as a
    /// list of `{host, settled, peak}`; older reports carry a plain number, which says
    /// nothing about settling).
    pub connections: Vec<HostConnections>,
    /// The connections the pull allowed itself over all cores, when `connections` is that
    /// number (the report before per-host settling).
    pub allowed: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostConnections {
    pub host: String,
    pub settled: u64,
    pub peak: u64,
}

impl PullReport {
    /// The `error` of a failed pull's JSON output, if that is what `stdout` holds.
    pub fn error(stdout: &[u8]) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(stdout).ok()?;
        Some(v.get("error")?.as_str()?.to_owned())
    }

    /// Reads a report from a tool's standard output; `None` when it is not one.
    pub fn parse(stdout: &[u8]) -> Option<Self> {
        let v: serde_json::Value = serde_json::from_slice(stdout).ok()?;
        let files = v.get("files")?.as_array()?;
        let mut checksums: Vec<String> = Vec::new();
        for label in files.iter().filter_map(|f| f.get("checksum")?.as_str()) {
            if !checksums.iter().any(|c| c == label) {
                checksums.push(label.to_owned());
            }
        }
        let connections = v
            .get("connections")
            .and_then(|c| c.as_array())
            .map(|list| {
                list.iter()
                    .filter_map(|c| {
                        Some(HostConnections {
                            host: c.get("host")?.as_str()?.to_owned(),
                            settled: c.get("settled")?.as_u64()?,
                            peak: c.get("peak")?.as_u64()?,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(PullReport {
            checksums,
            connections,
            allowed: v.get("connections").and_then(|c| c.as_u64()),
        })
    }
}

/// Lines under a table about how each tool's runs went: the pulls that failed and the 503s
/// the origin sent, where it counted them, and the connections modelpull settled on, where
/// its report says.
pub fn run_notes(rows: &[(Tool, Vec<Sample>)]) -> Vec<String> {
    let mut notes = Vec::new();
    for (tool, samples) in rows {
        let per_run: Vec<u64> = samples.iter().filter_map(|s| s.rejected).collect();
        if !per_run.is_empty() {
            let failed = samples.iter().filter(|s| s.failed).count();
            let list: Vec<String> = per_run.iter().map(u64::to_string).collect();
            notes.push(format!(
                "{}: {failed} of {} pulls failed; nginx answered {} requests with 503 ({} per \
                 run).",
                tool.title(),
                samples.len(),
                per_run.iter().sum::<u64>(),
                list.join(", ")
            ));
        }
        for (run, error) in samples
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i + 1, s.error.as_ref()?)))
        {
            notes.push(format!("{} run {run} failed: {error}.", tool.title()));
        }
        // host → settled counts of each run that reported one.
        let mut hosts: Vec<(String, Vec<u64>, u64)> = Vec::new();
        for c in samples
            .iter()
            .filter_map(|s| s.report.as_ref())
            .flat_map(|r| &r.connections)
        {
            match hosts.iter_mut().find(|(h, _, _)| *h == c.host) {
                Some((_, settled, peak)) => {
                    settled.push(c.settled);
                    *peak = (*peak).max(c.peak);
                }
                None => hosts.push((c.host.clone(), vec![c.settled], c.peak)),
            }
        }
        for (host, settled, peak) in hosts {
            let n = if settled.iter().all(|s| *s == settled[0]) {
                settled[0].to_string()
            } else {
                let each: Vec<String> = settled.iter().map(u64::to_string).collect();
                format!("{} (per run)", each.join(", "))
            };
            notes.push(format!(
                "{} settled on {n} connections to {host} (peak {peak}).",
                tool.title()
            ));
        }
    }
    notes
}

/// What modelpull's reports say its files were verified against, over all its runs.
pub fn verified_against(samples: &[Sample]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for label in samples
        .iter()
        .filter_map(|s| s.report.as_ref())
        .flat_map(|r| &r.checksums)
    {
        if !out.contains(label) {
            out.push(label.clone());
        }
    }
    out
}

/// All runs of every tool on one scenario and data set.
#[derive(Debug)]
pub struct Cell {
    pub scenario: String,
    pub scenario_title: String,
    pub dataset: String,
    pub dataset_title: String,
    pub bytes: u64,
    pub rows: Vec<(Tool, Vec<Sample>)>,
    /// A line printed under the heading.
    pub note: Option<String>,
    /// A start-up table: seconds to a model on disk first, then GB/s and CPU seconds.
    pub startup: bool,
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The lowest and highest of `v`.
fn spread(v: &[f64]) -> (f64, f64) {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(0.0, f64::max);
    (lo, hi)
}

impl Cell {
    fn gbps(&self, s: &Sample) -> f64 {
        self.bytes as f64 / s.seconds / 1e9
    }

    /// The runs of `tool`, if it ran here.
    fn samples(&self, tool: Tool) -> Option<&[Sample]> {
        self.rows
            .iter()
            .find(|(t, _)| *t == tool)
            .map(|(_, s)| s.as_slice())
    }

    /// The modelpull row the others are compared with: `modelpull pull`, else modelpull's
    /// storage-initializer.
    fn reference(&self) -> Option<Tool> {
        [Tool::Modelpull, Tool::ModelpullInitializer]
            .into_iter()
            .find(|t| self.samples(*t).is_some())
    }

    /// Median seconds of `tool`, if it ran here and every run wrote the right bytes.
    pub fn median_seconds(&self, tool: Tool) -> Option<f64> {
        let samples = self.samples(tool)?;
        samples
            .iter()
            .all(|s| s.correct)
            .then(|| median(samples.iter().map(|s| s.seconds).collect()))
    }

    pub fn median_gbps(&self, tool: Tool) -> Option<f64> {
        let samples = self.samples(tool)?;
        samples
            .iter()
            .all(|s| s.correct)
            .then(|| median(samples.iter().map(|s| self.gbps(s)).collect()))
    }

    /// Median CPU seconds per GB of `tool`, if it ran here.
    pub fn median_cpu_per_gb(&self, tool: Tool) -> Option<f64> {
        self.median_per_gb(tool, |s| s.cpu_seconds)
    }

    /// Median kernel CPU seconds per GB of `tool`, if it ran here.
    pub fn median_sys_per_gb(&self, tool: Tool) -> Option<f64> {
        self.median_per_gb(tool, |s| s.sys_seconds)
    }

    /// Median of `seconds` of each run of `tool` per GB, if it ran here.
    fn median_per_gb(&self, tool: Tool, seconds: impl Fn(&Sample) -> f64) -> Option<f64> {
        let samples = self.samples(tool)?;
        let gb = self.bytes as f64 / 1e9;
        Some(median(samples.iter().map(|s| seconds(s) / gb).collect()))
    }

    /// Median share of the machine's cores busy during `tool`'s runs, where measured.
    pub fn median_busy(&self, tool: Tool) -> Option<f64> {
        let busy: Vec<f64> = self.samples(tool)?.iter().filter_map(|s| s.busy).collect();
        (!busy.is_empty()).then(|| median(busy))
    }

    /// The lowest and highest GB/s of `tool`'s runs, if it ran here.
    pub fn gbps_range(&self, tool: Tool) -> Option<(f64, f64)> {
        let rates: Vec<f64> = self.samples(tool)?.iter().map(|s| self.gbps(s)).collect();
        Some(spread(&rates))
    }

    /// Runs of `tool` that exited with an error, if it ran here.
    pub fn failed_runs(&self, tool: Tool) -> Option<usize> {
        Some(self.samples(tool)?.iter().filter(|s| s.failed).count())
    }

    /// The runs of `tool`, if it ran here.
    pub fn runs(&self, tool: Tool) -> Option<&[Sample]> {
        self.samples(tool)
    }

    /// Highest peak RSS of `tool` over its runs, in MiB, if it ran here.
    pub fn max_rss_mib(&self, tool: Tool) -> Option<u64> {
        let samples = self.samples(tool)?;
        samples.iter().map(|s| s.max_rss_kib / 1024).max()
    }

    pub fn markdown(&self, out: &mut String) {
        let reference = self.reference();
        let _ = writeln!(
            out,
            "#### {} — {}\n",
            self.scenario_title, self.dataset_title
        );
        if let Some(note) = &self.note {
            let _ = writeln!(out, "{note}\n");
        }
        if self.startup {
            let _ = writeln!(
                out,
                "| tool | seconds | min–max | GB/s | CPU s | peak RSS | bytes | modelpull ÷ tool |"
            );
        } else {
            let _ = writeln!(
                out,
                "| tool | GB/s | min–max | CPU s/GB | peak RSS | bytes | modelpull ÷ tool |"
            );
        }
        let _ = writeln!(
            out,
            "|---|---|---|---|---|---|---|{}",
            if self.startup { "---|" } else { "" }
        );
        let gb = self.bytes as f64 / 1e9;
        for (tool, samples) in &self.rows {
            let ok = samples.iter().all(|s| s.correct);
            let ratio = match (reference, ok) {
                (_, false) => "not ranked".into(),
                // A ratio of the medians shown: the tool's seconds ÷ modelpull's in a start-up
                // table, modelpull's GB/s ÷ the tool's otherwise (the same for odd runs).
                (Some(r), true) if *tool != r && self.startup => self
                    .median_seconds(r)
                    .zip(self.median_seconds(*tool))
                    .map_or("—".into(), |(r, t)| format!("{:.2}×", t / r)),
                (Some(r), true) if *tool != r => self
                    .median_gbps(r)
                    .zip(self.median_gbps(*tool))
                    .map_or("—".into(), |(r, t)| format!("{:.2}×", r / t)),
                _ => "—".into(),
            };
            let bytes = if ok {
                "identical"
            } else if samples.iter().any(|s| s.failed) {
                "FAILED"
            } else {
                "WRONG"
            };
            let rss = self.max_rss_mib(*tool).unwrap_or_default();
            let cpu = median(samples.iter().map(|s| s.cpu_seconds).collect());
            if self.startup {
                let secs: Vec<f64> = samples.iter().map(|s| s.seconds).collect();
                let (lo, hi) = spread(&secs);
                let med = median(secs);
                let _ = writeln!(
                    out,
                    "| {} | {med:.2} | {lo:.2}–{hi:.2} | {:.3} | {cpu:.2} | {rss} MiB | {bytes} | {ratio} |",
                    tool.title(),
                    gb / med,
                );
            } else {
                let rates: Vec<f64> = samples.iter().map(|s| self.gbps(s)).collect();
                let (lo, hi) = spread(&rates);
                let med = median(rates);
                let _ = writeln!(
                    out,
                    "| {} | {med:.3} | {lo:.3}–{hi:.3} | {:.2} | {rss} MiB | {bytes} | {ratio} |",
                    tool.title(),
                    cpu / gb,
                );
            }
        }
        let _ = writeln!(out);
    }

    pub fn csv(&self, out: &mut String) {
        for (tool, samples) in &self.rows {
            let med = median(samples.iter().map(|s| self.gbps(s)).collect());
            let secs = median(samples.iter().map(|s| s.seconds).collect());
            let ok = samples.iter().all(|s| s.correct);
            let _ = writeln!(
                out,
                "{},{},{},{med:.4},{ok},{secs:.3},{}",
                self.scenario,
                self.dataset,
                tool.name(),
                self.bytes
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seconds: f64, cpu_seconds: f64) -> Sample {
        Sample {
            seconds,
            cpu_seconds,
            max_rss_kib: 100 << 10,
            correct: true,
            ..Sample::default()
        }
    }

    #[test]
    fn a_report_gives_its_checksums_and_the_connections_it_settled_on() {
        let new = br#"{"files": [{"checksum": "x-amz-checksum-crc64nvme"},
            {"checksum": "etag (md5)"}, {"checksum": "x-amz-checksum-crc64nvme"}],
            "connections": [{"host": "127.0.0.1", "settled": 8, "peak": 12}]}"#;
        let r = PullReport::parse(new).unwrap();
        assert_eq!(r.checksums, ["x-amz-checksum-crc64nvme", "etag (md5)"]);
        assert_eq!(
            r.connections,
            [HostConnections {
                host: "127.0.0.1".into(),
                settled: 8,
                peak: 12
            }]
        );
        // Today's report: `connections` is the number allowed, which says nothing of settling.
        let old = br#"{"files": [], "connections": 16}"#;
        assert!(PullReport::parse(old).unwrap().connections.is_empty());
        assert_eq!(PullReport::parse(old).unwrap().allowed, Some(16));
        assert_eq!(PullReport::parse(b"not json\n"), None);

        let run = |settled: Option<u64>, rejected: u64, failed: bool| Sample {
            failed,
            rejected: Some(rejected),
            report: Some(PullReport {
                checksums: vec![],
                allowed: None,
                connections: settled
                    .map(|n| HostConnections {
                        host: "127.0.0.1".into(),
                        settled: n,
                        peak: n + 2,
                    })
                    .into_iter()
                    .collect(),
            }),
            ..Sample::default()
        };
        let rows = vec![(
            Tool::Modelpull,
            vec![run(Some(8), 3, false), run(Some(8), 0, false)],
        )];
        assert_eq!(
            run_notes(&rows),
            [
                "modelpull (verified): 0 of 2 pulls failed; nginx answered 3 requests with 503 \
                 (3, 0 per run).",
                "modelpull (verified) settled on 8 connections to 127.0.0.1 (peak 10).",
            ]
        );
        let rows = vec![(Tool::Aria2c, vec![run(None, 9, true), run(None, 1, false)])];
        assert_eq!(
            run_notes(&rows),
            [
                "aria2c -x16 -s16: 1 of 2 pulls failed; nginx answered 10 requests with 503 (9, 1 \
              per run)."
            ]
        );
    }

    #[test]
    fn a_startup_table_shows_seconds_and_compares_with_the_initializer() {
        let cell = Cell {
            scenario: "initializer".into(),
            scenario_title: "start-up".into(),
            dataset: "file".into(),
            dataset_title: "one 4 GiB file".into(),
            bytes: 4_000_000_000,
            rows: vec![
                (
                    Tool::ModelpullInitializer,
                    vec![sample(4.0, 5.0), sample(5.0, 6.0), sample(8.0, 7.0)],
                ),
                (
                    Tool::Kserve,
                    vec![sample(10.0, 9.0), sample(12.0, 9.5), sample(11.0, 10.0)],
                ),
            ],
            note: Some("a note".into()),
            startup: true,
        };
        let mut md = String::new();
        cell.markdown(&mut md);
        assert!(
            md.contains("| tool | seconds | min–max | GB/s | CPU s |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| modelpull storage-initializer (verified) | 5.00 | 4.00–8.00 | 0.800 | 6.00 | 100 MiB | identical | — |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| KServe storage initializer | 11.00 | 10.00–12.00 | 0.364 | 9.50 | 100 MiB | identical | 2.20× |"
            ),
            "{md}"
        );
        let mut csv = String::new();
        cell.csv(&mut csv);
        assert_eq!(
            csv,
            "initializer,file,modelpull-initializer,0.8000,true,5.000,4000000000\n\
             initializer,file,kserve,0.3636,true,11.000,4000000000\n"
        );
    }
}
