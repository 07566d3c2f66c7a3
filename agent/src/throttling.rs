//! How long the container's CPU quota held the agent back, read from its cgroup's `cpu.stat`
//! on every scrape (one small file; see [`modelpull::limits::CpuStat`]). Under KServe's 0.1
//! CPU a download is slow without any error; these counters say why:
//! `modelpull_cgroup_cpu_throttled_seconds_total` and
//! `modelpull_cgroup_cpu_throttled_periods_total`.

use modelpull::limits::CpuStat;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, IntCounter, Registry};

const SECONDS: &str = "modelpull_cgroup_cpu_throttled_seconds_total";
const SECONDS_HELP: &str = "Time the container's threads waited because its CPU quota (the pod's cpu limit) was used up, from the cgroup's cpu.stat.";
const PERIODS: &str = "modelpull_cgroup_cpu_throttled_periods_total";
const PERIODS_HELP: &str =
    "CPU quota periods (100 ms by default) in which the container's quota ran out.";

/// The counters of one `cpu.stat`.
#[derive(Debug)]
pub struct CpuThrottling {
    stat: CpuStat,
    descs: Vec<Desc>,
}

impl CpuThrottling {
    pub fn new(stat: CpuStat) -> prometheus::Result<Self> {
        let desc = |name: &str, help: &str| {
            Desc::new(name.into(), help.into(), Vec::new(), Default::default())
        };
        let descs = vec![desc(SECONDS, SECONDS_HELP)?, desc(PERIODS, PERIODS_HELP)?];
        Ok(Self { stat, descs })
    }

    /// Registers the counters of this process's cgroup; nothing (and `false`) without a cgroup
    /// CPU controller.
    pub fn register(registry: &Registry) -> prometheus::Result<bool> {
        let Some(stat) = CpuStat::locate() else {
            return Ok(false);
        };
        registry.register(Box::new(Self::new(stat)?))?;
        Ok(true)
    }
}

impl Collector for CpuThrottling {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(t) = self.stat.read() else {
            return Vec::new();
        };
        let (Ok(seconds), Ok(periods)) = (
            Counter::new(SECONDS, SECONDS_HELP),
            IntCounter::new(PERIODS, PERIODS_HELP),
        ) else {
            return Vec::new();
        };
        seconds.inc_by(t.throttled.as_secs_f64());
        periods.inc_by(t.throttled_periods);
        let mut families = seconds.collect();
        families.extend(periods.collect());
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrapes_read_the_file_each_time() {
        let root = tempfile::tempdir().unwrap();
        let files = [
            ("proc/self/cgroup", "0::/\n"),
            (
                "proc/self/mountinfo",
                "35 24 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup rw\n",
            ),
        ];
        for (path, text) in files {
            let p = root.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let stat_file = root.path().join("sys/fs/cgroup/cpu.stat");
        std::fs::create_dir_all(stat_file.parent().unwrap()).unwrap();
        std::fs::write(
            &stat_file,
            "usage_usec 10\nnr_periods 10\nnr_throttled 3\nthrottled_usec 1500000\n",
        )
        .unwrap();
        let registry = Registry::new();
        let stat = CpuStat::locate_at(root.path()).unwrap();
        registry
            .register(Box::new(CpuThrottling::new(stat).unwrap()))
            .unwrap();
        let scrape = || {
            let mut out = Vec::new();
            prometheus::Encoder::encode(
                &prometheus::TextEncoder::new(),
                &registry.gather(),
                &mut out,
            )
            .unwrap();
            String::from_utf8(out).unwrap()
        };
        let text = scrape();
        assert!(text.contains(&format!("{SECONDS} 1.5\n")), "{text}");
        assert!(text.contains(&format!("{PERIODS} 3\n")), "{text}");
        assert!(text.contains("# TYPE modelpull_cgroup_cpu_throttled_seconds_total counter"));
        std::fs::write(
            &stat_file,
            "usage_usec 20\nnr_periods 20\nnr_throttled 9\nthrottled_usec 4250000\n",
        )
        .unwrap();
        let text = scrape();
        assert!(text.contains(&format!("{SECONDS} 4.25\n")), "{text}");
        assert!(text.contains(&format!("{PERIODS} 9\n")), "{text}");
    }
}
