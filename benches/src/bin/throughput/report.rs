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
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
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
        let mp = self.median_gbps(Tool::Modelpull);
        let _ = writeln!(
            out,
            "#### {} — {}\n",
            self.scenario_title, self.dataset_title
        );
        if let Some(note) = &self.note {
            let _ = writeln!(out, "{note}\n");
        }
        let _ = writeln!(
            out,
            "| tool | GB/s | min–max | CPU s/GB | peak RSS | bytes | modelpull ÷ tool |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|");
        for (tool, samples) in &self.rows {
            let rates: Vec<f64> = samples.iter().map(|s| self.gbps(s)).collect();
            let med = median(rates.clone());
            let lo = rates.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = rates.iter().copied().fold(0.0, f64::max);
            let cpu = self.median_cpu_per_gb(*tool).unwrap_or_default();
            let rss = self.max_rss_mib(*tool).unwrap_or_default();
            let ok = samples.iter().all(|s| s.correct);
            let ratio = match (mp, ok) {
                (_, false) => "not ranked".into(),
                (Some(m), true) if *tool != Tool::Modelpull => format!("{:.2}×", m / med),
                _ => "—".into(),
            };
            let _ = writeln!(
                out,
                "| {} | {med:.3} | {lo:.3}–{hi:.3} | {cpu:.2} | {rss} MiB | {} | {ratio} |",
                tool.title(),
                if ok { "identical" } else { "WRONG" }
            );
        }
        let _ = writeln!(out);
    }

    pub fn csv(&self, out: &mut String) {
        for (tool, samples) in &self.rows {
            let med = median(samples.iter().map(|s| self.gbps(s)).collect());
            let ok = samples.iter().all(|s| s.correct);
            let _ = writeln!(
                out,
                "{},{},{},{med:.4},{ok}",
                self.scenario,
                self.dataset,
                tool.name()
            );
        }
    }
}
