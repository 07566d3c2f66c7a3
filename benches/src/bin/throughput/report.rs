//! Tables (Markdown) and the CSV the chart is drawn from.

use std::fmt::Write as _;

use crate::tools::Tool;

/// One timed run of one tool.
#[derive(Debug, Clone)]
pub struct Sample {
    pub seconds: f64,
    pub cpu_seconds: f64,
    pub max_rss_kib: u64,
    pub correct: bool,
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
        let samples = self.samples(tool)?;
        let gb = self.bytes as f64 / 1e9;
        Some(median(samples.iter().map(|s| s.cpu_seconds / gb).collect()))
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
            let bytes = if ok { "identical" } else { "WRONG" };
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
                "{},{},{},{med:.4},{ok},{secs:.3}",
                self.scenario,
                self.dataset,
                tool.name()
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
        }
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
            "initializer,file,modelpull-initializer,0.8000,true,5.000\n\
             initializer,file,kserve,0.3636,true,11.000\n"
        );
    }
}
