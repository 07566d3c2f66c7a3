//! The container's resource limits, read from its cgroup, so a pull can fit inside them.
//!
//! A pull's memory is mostly its chunk buffers ([`crate::Options::memory_limit`], 192 MiB by
//! default), and its threads are one per engine core. In a container with a 1 GiB, 1 CPU
//! limit (KServe's storage-initializer) the defaults would ask for a core per host CPU and
//! fill memory the cgroup also charges for sockets, TLS and page cache; past the limit the
//! kernel kills the process. [`Limits::detect`] reads what the cgroup allows and
//! [`crate::Options::fit`] sizes a pull under it.
//!
//! Both cgroup versions are read: v2's `memory.max` and `cpu.max`, v1's
//! `memory.limit_in_bytes` and `cpu.cfs_quota_us` / `cpu.cfs_period_us`. The process's own
//! cgroup is found from `/proc/self/cgroup` and `/proc/self/mountinfo` (a container may see its
//! cgroup at the mount's root, or at its full path), and every level from it up to the mount's
//! root counts: the tightest limit wins. A file that is missing or unreadable means no limit
//! at that level, so outside a container nothing changes.
//!
//! [`CpuStat`] reads how long the quota held the process back (`cpu.stat` of its own cgroup:
//! v2's `nr_throttled` and `throttled_usec`, v1's `nr_throttled` and `throttled_time`): a
//! download under a tight quota is slow without any error, and this is the number that says why.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Memory the process needs besides chunk buffers: the program, its threads, TLS sessions,
/// listings, and what the kernel charges to the cgroup for it (socket buffers, page cache of
/// files read back).
const RESERVED: u64 = 64 * 1024 * 1024;

/// A further share of the limit kept free, since socket buffers and page cache grow with it.
const RESERVED_SHARE: u64 = 8;

/// v1 writes "no limit" as the largest page-aligned `i64`; anything this large is none.
const UNLIMITED_V1: u64 = 1 << 62;

/// What the cgroup allows this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Bytes of memory (`memory.max`; v1 `memory.limit_in_bytes`); `None`: no limit found.
    pub memory: Option<u64>,
    /// CPU time per period (`cpu.max`; v1 `cpu.cfs_quota_us`); `None`: no quota found.
    pub cpu: Option<CpuQuota>,
}

/// A CPU quota: `quota_us` of CPU time in every `period_us`, over all CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuQuota {
    /// Microseconds of CPU time per period.
    pub quota_us: u64,
    /// The period, in microseconds.
    pub period_us: u64,
}

impl CpuQuota {
    /// The quota in CPUs (`1.5` for 150 ms every 100 ms).
    pub fn cpus(&self) -> f64 {
        self.quota_us as f64 / self.period_us as f64
    }

    /// Threads that can be busy at once without being throttled: the quota rounded up, at
    /// least 1.
    pub fn cores(&self) -> usize {
        usize::try_from(self.quota_us.div_ceil(self.period_us))
            .unwrap_or(usize::MAX)
            .max(1)
    }
}

impl Limits {
    /// The limits of the cgroup this process runs in.
    pub fn detect() -> Self {
        Self::detect_at(Path::new("/"))
    }

    /// The limits as the files under `root` describe them: `root/proc/self/cgroup`,
    /// `root/proc/self/mountinfo` and the cgroup files under the mount points it names, taken
    /// relative to `root` (for tests, or a container's filesystem seen from outside).
    pub fn detect_at(root: &Path) -> Self {
        let mut limits = Limits::default();
        for dirs in own_cgroup_dirs(root) {
            for dir in dirs.chain() {
                limits.tighten(&dir, dirs.version);
            }
        }
        limits
    }

    /// Bytes of chunk buffers that fit under the memory limit with room for the rest of the
    /// process (64 MiB and an eighth of the limit); `None` without a limit.
    pub fn buffer_budget(&self) -> Option<usize> {
        let limit = self.memory?;
        let budget = limit.saturating_sub(RESERVED + limit / RESERVED_SHARE);
        Some(usize::try_from(budget).unwrap_or(usize::MAX))
    }

    /// Lowers these limits to those of one cgroup directory.
    fn tighten(&mut self, dir: &Path, version: Version) {
        let file = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
        let (memory, cpu) = match version {
            Version::V2 => (
                file("memory.max").and_then(|t| parse_memory(&t)),
                file("cpu.max").and_then(|t| parse_cpu_max(&t)),
            ),
            Version::V1Memory => (
                file("memory.limit_in_bytes").and_then(|t| parse_memory(&t)),
                None,
            ),
            Version::V1Cpu => (
                None,
                file("cpu.cfs_quota_us")
                    .zip(file("cpu.cfs_period_us"))
                    .and_then(|(q, p)| parse_cfs(&q, &p)),
            ),
        };
        if let Some(m) = memory {
            self.memory = Some(self.memory.map_or(m, |old| old.min(m)));
        }
        if let Some(c) = cpu {
            let tighter = self.cpu.is_none_or(|old| c.cpus() < old.cpus());
            if tighter {
                self.cpu = Some(c);
            }
        }
    }
}

/// How often and how long the CPU quota held the cgroup back, since it was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Throttling {
    /// Quota periods that had runnable threads (`nr_periods`).
    pub periods: u64,
    /// Periods in which the quota ran out (`nr_throttled`).
    pub throttled_periods: u64,
    /// Time runnable threads waited for the next period (v2 `throttled_usec`, v1
    /// `throttled_time` in nanoseconds).
    pub throttled: Duration,
}

/// The `cpu.stat` file of the process's own cgroup, found once and read on demand (a metrics
/// scrape reads one small file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuStat {
    path: PathBuf,
    v2: bool,
}

impl CpuStat {
    /// The process's `cpu.stat`; `None` without a cgroup CPU controller.
    pub fn locate() -> Option<Self> {
        Self::locate_at(Path::new("/"))
    }

    /// As [`CpuStat::locate`], with every path taken under `root` (see [`Limits::detect_at`]).
    pub fn locate_at(root: &Path) -> Option<Self> {
        own_cgroup_dirs(root)
            .into_iter()
            .filter(|d| matches!(d.version, Version::V2 | Version::V1Cpu))
            .map(|d| Self {
                path: d.own.join("cpu.stat"),
                v2: d.version == Version::V2,
            })
            .find(|s| s.path.is_file())
    }

    /// The counters now; `None` when the file cannot be read or lacks them.
    pub fn read(&self) -> Option<Throttling> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        if self.v2 {
            parse_cpu_stat_v2(&text)
        } else {
            parse_cpu_stat_v1(&text)
        }
    }
}

/// The value of `key` in a flat-keyed file (`key value` lines).
fn stat_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// v2 `cpu.stat`: `nr_periods`, `nr_throttled`, `throttled_usec` (and usage fields, ignored).
/// Without a quota the kernel leaves the three out: then nothing was throttled.
fn parse_cpu_stat_v2(text: &str) -> Option<Throttling> {
    stat_field(text, "usage_usec")?;
    Some(Throttling {
        periods: stat_field(text, "nr_periods").unwrap_or(0),
        throttled_periods: stat_field(text, "nr_throttled").unwrap_or(0),
        throttled: Duration::from_micros(stat_field(text, "throttled_usec").unwrap_or(0)),
    })
}

/// v1 `cpu.stat`: `nr_periods`, `nr_throttled`, `throttled_time` (nanoseconds).
fn parse_cpu_stat_v1(text: &str) -> Option<Throttling> {
    Some(Throttling {
        periods: stat_field(text, "nr_periods")?,
        throttled_periods: stat_field(text, "nr_throttled")?,
        throttled: Duration::from_nanos(stat_field(text, "throttled_time")?),
    })
}

/// Which files a cgroup directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V2,
    V1Memory,
    V1Cpu,
}

/// The process's cgroup directory for one hierarchy, and its mount point (where walking up
/// stops).
#[derive(Debug)]
struct Dirs {
    version: Version,
    mount: PathBuf,
    own: PathBuf,
}

impl Dirs {
    /// The process's directory, then each parent up to the mount point.
    fn chain(&self) -> impl Iterator<Item = PathBuf> + '_ {
        std::iter::successors(Some(self.own.clone()), |d| {
            (d != &self.mount)
                .then(|| d.parent().map(Path::to_owned))
                .flatten()
        })
    }
}

/// The process's cgroup folders, from `root/proc/self/cgroup` and `root/proc/self/mountinfo`.
fn own_cgroup_dirs(root: &Path) -> Vec<Dirs> {
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap_or_default();
    cgroup_dirs(
        root,
        &read("proc/self/cgroup"),
        &read("proc/self/mountinfo"),
    )
}

/// The directories of the hierarchies that hold limits: the v2 one, or v1's memory and cpu.
fn cgroup_dirs(root: &Path, cgroups: &str, mounts: &str) -> Vec<Dirs> {
    let mut found = Vec::new();
    for line in mounts.lines() {
        // `id parent major:minor root mount-point options [optional…] - type source super`
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = left.split(' ').collect();
        let mut right = right.split(' ');
        let (Some(fs), Some(_source), Some(options)) = (right.next(), right.next(), right.next())
        else {
            continue;
        };
        let (Some(&mount_root), Some(&mount_point)) = (fields.get(3), fields.get(4)) else {
            continue;
        };
        let wanted: Vec<(Version, &str)> = match fs {
            "cgroup2" => vec![(Version::V2, "")],
            "cgroup" => {
                let controllers: Vec<&str> = options.split(',').collect();
                [(Version::V1Memory, "memory"), (Version::V1Cpu, "cpu")]
                    .into_iter()
                    .filter(|(_, c)| controllers.contains(c))
                    .collect()
            }
            _ => continue,
        };
        for (version, controller) in wanted {
            let Some(path) = own_path(cgroups, controller) else {
                continue;
            };
            let mount = root.join(unescape(mount_point).trim_start_matches('/'));
            // The process's path relative to what is mounted there; a path outside it (a
            // cgroup namespace seen from the host) means the mount is the process's own.
            let relative = Path::new(path)
                .strip_prefix(unescape(mount_root))
                .map(Path::to_owned)
                .unwrap_or_default();
            let own = mount.join(&relative);
            let own = if own.is_dir() { own } else { mount.clone() };
            found.push(Dirs {
                version,
                mount,
                own,
            });
        }
    }
    found
}

/// A process's path in the hierarchy of `controller` (`""`: the v2 hierarchy), from the text of
/// its `/proc/PID/cgroup` (lines `id:controllers:path`). The benchmark harness uses it to check
/// that a process landed in the cgroup it made.
pub fn own_path<'a>(cgroups: &'a str, controller: &str) -> Option<&'a str> {
    cgroups.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = if controller.is_empty() {
            controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == controller)
        };
        matches.then_some(path)
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(char::from(c));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// `memory.max` (`max` or bytes) or v1's `memory.limit_in_bytes`.
fn parse_memory(text: &str) -> Option<u64> {
    text.trim().parse().ok().filter(|&n| n < UNLIMITED_V1)
}

/// `cpu.max`: `max 100000` (no quota) or `150000 100000`.
fn parse_cpu_max(text: &str) -> Option<CpuQuota> {
    let mut it = text.split_whitespace();
    let quota_us = it.next()?.parse().ok()?;
    let period_us = it.next().map_or(Some(100_000), |p| p.parse().ok())?;
    quota(quota_us, period_us)
}

/// v1's `cpu.cfs_quota_us` (`-1`: no quota) and `cpu.cfs_period_us`.
fn parse_cfs(quota_text: &str, period_text: &str) -> Option<CpuQuota> {
    let quota_us = quota_text.trim().parse().ok()?;
    quota(quota_us, period_text.trim().parse().ok()?)
}

fn quota(quota_us: u64, period_us: u64) -> Option<CpuQuota> {
    (quota_us > 0 && period_us > 0).then_some(CpuQuota {
        quota_us,
        period_us,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    /// A filesystem tree of `(path, content)` files, as the fixture of one test.
    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, content) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        dir
    }

    const V2_MOUNT: &str = "35 24 0:30 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw,nsdelegate,memory_recursiveprot\n";

    #[test]
    fn v2_in_its_own_namespace_reads_the_mount_root() {
        // Kubernetes on cgroup v2: the container sees its cgroup at /sys/fs/cgroup.
        let root = tree(&[
            ("proc/self/cgroup", "0::/\n"),
            ("proc/self/mountinfo", V2_MOUNT),
            ("sys/fs/cgroup/memory.max", "1073741824\n"),
            ("sys/fs/cgroup/cpu.max", "100000 100000\n"),
        ]);
        let limits = Limits::detect_at(root.path());
        assert_eq!(limits.memory, Some(GIB));
        let cpu = limits.cpu.unwrap();
        assert_eq!(cpu.cores(), 1);
        assert_eq!(cpu.cpus(), 1.0);
    }

    #[test]
    fn v2_at_a_full_path_takes_the_tightest_level() {
        // No cgroup namespace: the process's path, under a pod whose limit is larger and a
        // slice whose CPU quota is smaller.
        let pod = "sys/fs/cgroup/kubepods.slice/kubepods-pod1.slice";
        let container = format!("{pod}/cri-containerd-abc.scope");
        let paths = [
            format!("{pod}/memory.max"),
            format!("{pod}/cpu.max"),
            format!("{container}/memory.max"),
            format!("{container}/cpu.max"),
        ];
        let files = [
            (
                "proc/self/cgroup",
                "0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-abc.scope\n",
            ),
            ("proc/self/mountinfo", V2_MOUNT),
            ("sys/fs/cgroup/kubepods.slice/cpu.max", "50000 100000\n"),
            (&paths[0], "4294967296\n"),
            (&paths[1], "max 100000\n"),
            (&paths[2], "2147483648\n"),
            (&paths[3], "200000 100000\n"),
        ];
        let limits = Limits::detect_at(tree(&files).path());
        assert_eq!(limits.memory, Some(2 * GIB));
        let cpu = limits.cpu.unwrap();
        assert_eq!((cpu.quota_us, cpu.period_us), (50_000, 100_000));
        assert_eq!(cpu.cores(), 1, "half a CPU is still one thread");
    }

    #[test]
    fn v2_without_limits_has_none() {
        let root = tree(&[
            ("proc/self/cgroup", "0::/\n"),
            ("proc/self/mountinfo", V2_MOUNT),
            ("sys/fs/cgroup/memory.max", "max\n"),
            ("sys/fs/cgroup/cpu.max", "max 100000\n"),
        ]);
        assert_eq!(Limits::detect_at(root.path()), Limits::default());
    }

    #[test]
    fn v1_as_docker_mounts_it() {
        // Docker on cgroup v1: /proc/self/cgroup names the host's path, and the container's
        // own cgroup is what is mounted (mountinfo's root field says which).
        let id = "/docker/0123abcd";
        let root = tree(&[
            (
                "proc/self/cgroup",
                &format!(
                    "12:memory:{id}\n4:cpu,cpuacct:{id}\n1:name=systemd:{id}\n0::/system.slice/containerd.service\n"
                ),
            ),
            (
                "proc/self/mountinfo",
                &format!(
                    "700 699 0:40 {id} /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory\n\
                     701 699 0:41 {id} /sys/fs/cgroup/cpu,cpuacct ro,nosuid - cgroup cgroup rw,cpu,cpuacct\n"
                ),
            ),
            ("sys/fs/cgroup/memory/memory.limit_in_bytes", "1073741824\n"),
            ("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "150000\n"),
            ("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n"),
        ]);
        let limits = Limits::detect_at(root.path());
        assert_eq!(limits.memory, Some(GIB));
        assert_eq!(limits.cpu.unwrap().cores(), 2);
    }

    #[test]
    fn v1_unlimited_values_are_no_limit() {
        let root = tree(&[
            ("proc/self/cgroup", "12:memory:/\n4:cpu,cpuacct:/\n"),
            (
                "proc/self/mountinfo",
                "700 699 0:40 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                 701 699 0:41 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n",
            ),
            (
                "sys/fs/cgroup/memory/memory.limit_in_bytes",
                "9223372036854771712\n",
            ),
            ("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n"),
            ("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n"),
        ]);
        assert_eq!(Limits::detect_at(root.path()), Limits::default());
    }

    #[test]
    fn no_cgroup_files_means_no_limits() {
        assert_eq!(
            Limits::detect_at(tempfile::tempdir().unwrap().path()),
            Limits::default()
        );
    }

    #[test]
    fn mount_points_with_escapes() {
        let root = tree(&[
            ("proc/self/cgroup", "0::/\n"),
            (
                "proc/self/mountinfo",
                "35 24 0:30 / /cg\\040root rw - cgroup2 cgroup rw\n",
            ),
            ("cg root/memory.max", "536870912\n"),
        ]);
        assert_eq!(Limits::detect_at(root.path()).memory, Some(GIB / 2));
    }

    #[test]
    fn the_buffer_budget_leaves_room_under_the_limit() {
        let with = |memory| Limits {
            memory: Some(memory),
            cpu: None,
        };
        assert_eq!(Limits::default().buffer_budget(), None);
        // 1 GiB: 1024 − 64 − 128 MiB.
        assert_eq!(with(GIB).buffer_budget(), Some(832 << 20));
        assert_eq!(with(256 << 20).buffer_budget(), Some(160 << 20));
        assert_eq!(with(32 << 20).buffer_budget(), Some(0));
    }

    #[test]
    fn cpu_stat_v2_in_its_own_namespace() {
        let root = tree(&[
            ("proc/self/cgroup", "0::/\n"),
            ("proc/self/mountinfo", V2_MOUNT),
            (
                "sys/fs/cgroup/cpu.stat",
                "usage_usec 8017390\nuser_usec 6911843\nsystem_usec 1105547\n\
                 nr_periods 1200\nnr_throttled 314\nthrottled_usec 27182818\n\
                 nr_bursts 0\nburst_usec 0\n",
            ),
        ]);
        let stat = CpuStat::locate_at(root.path()).unwrap();
        assert_eq!(
            stat.read(),
            Some(Throttling {
                periods: 1200,
                throttled_periods: 314,
                throttled: Duration::from_micros(27_182_818),
            })
        );
    }

    #[test]
    fn cpu_stat_v2_without_a_quota_has_no_throttling() {
        // The kernel writes the throttling fields only where `cpu.max` sets a quota.
        let text = "usage_usec 120\nuser_usec 100\nsystem_usec 20\n";
        assert_eq!(parse_cpu_stat_v2(text), Some(Throttling::default()));
        assert_eq!(
            parse_cpu_stat_v2("nr_throttled 1\n"),
            None,
            "not a cpu.stat"
        );
    }

    #[test]
    fn cpu_stat_v1_as_docker_mounts_it() {
        let id = "/docker/0123abcd";
        let root = tree(&[
            (
                "proc/self/cgroup",
                &format!("12:memory:{id}\n4:cpu,cpuacct:{id}\n"),
            ),
            (
                "proc/self/mountinfo",
                &format!(
                    "700 699 0:40 {id} /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n\
                     701 699 0:41 {id} /sys/fs/cgroup/cpu,cpuacct ro - cgroup cgroup rw,cpu,cpuacct\n"
                ),
            ),
            (
                "sys/fs/cgroup/cpu,cpuacct/cpu.stat",
                "nr_periods 50\nnr_throttled 7\nthrottled_time 1500000000\nnr_bursts 0\nburst_time 0\n",
            ),
        ]);
        let stat = CpuStat::locate_at(root.path()).unwrap();
        let t = stat.read().unwrap();
        assert_eq!((t.periods, t.throttled_periods), (50, 7));
        assert_eq!(t.throttled, Duration::from_millis(1500));
        assert_eq!(parse_cpu_stat_v1("nr_periods 1\n"), None, "a field missing");
    }

    #[test]
    fn no_cpu_controller_no_cpu_stat() {
        let root = tree(&[
            ("proc/self/cgroup", "12:memory:/\n"),
            (
                "proc/self/mountinfo",
                "700 699 0:40 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n",
            ),
        ]);
        assert_eq!(CpuStat::locate_at(root.path()), None);
    }
}
