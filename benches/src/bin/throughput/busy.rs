//! How busy the machine's cores were during a run, from `/proc/stat`.
//!
//! The origin, the tool and the harness share this machine's cores. When a target is missed,
//! "the cores were 98% busy" says the run was bound by CPU, not by the tool waiting on the
//! network or the disk; a figure from the same run rather than an argument after the fact.

/// Jiffies of all cores since boot: (busy, total). Busy is everything but idle and iowait.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ticks {
    busy: u64,
    total: u64,
}

impl Ticks {
    /// The machine's counters now, `None` where `/proc/stat` cannot be read.
    pub fn now() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    fn parse(stat: &str) -> Option<Self> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        let total: u64 = fields.iter().take(8).sum();
        let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
        Some(Ticks {
            busy: total - idle,
            total,
        })
    }

    /// The share of all cores busy between `self` and the later `end`, 0 to 1.
    pub fn busy_until(self, end: Ticks) -> Option<f64> {
        let total = end.total.checked_sub(self.total)?;
        let busy = end.busy.checked_sub(self.busy)?;
        (total > 0).then(|| busy as f64 / total as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_and_iowait_are_not_busy() {
        let before = Ticks::parse("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n").unwrap();
        let after = Ticks::parse("cpu  250 0 100 850 100 0 0 0 0 0\n").unwrap();
        // 200 busy of 300 jiffies.
        let busy = before.busy_until(after).unwrap();
        assert!((busy - 2.0 / 3.0).abs() < 1e-9, "{busy}");
    }

    #[test]
    fn no_time_or_no_counters_is_no_figure() {
        let t = Ticks::parse("cpu  1 2 3 4 5 6 7 8\n").unwrap();
        assert_eq!(t.busy_until(t), None);
        assert_eq!(Ticks::parse("intr 5\n"), None);
    }
}
