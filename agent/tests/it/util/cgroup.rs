//! A cgroup the test makes to hold the agent to a pod's limits (memory, and CPU as
//! `limits.cpu` sets them), in either cgroup version; removed when dropped. Needs root.

use std::path::PathBuf;
use std::process::Command;

use super::agent_binary;

/// The CFS period Kubernetes uses: a limit of `m` millicores is `m * 100` µs per period.
const PERIOD_US: u64 = 100_000;

/// A pod's limits: memory in bytes, CPU in millicores.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub memory: u64,
    pub cpu_millis: Option<u64>,
}

/// The groups one process is put in: one directory in v2, one per controller in v1.
pub struct Cgroup {
    dirs: Vec<PathBuf>,
    memory: PathBuf,
    v2: bool,
}

impl Cgroup {
    pub fn create(name: &str, limits: Limits) -> Result<Self, String> {
        let base = PathBuf::from("/sys/fs/cgroup");
        let name = format!("modelpull-it-{name}-{}", std::process::id());
        let fail = |what: &str, e: std::io::Error| format!("{what}: {e}");
        let v2 = base.join("cgroup.controllers").is_file();
        let (dirs, memory) = if v2 {
            // v2 keeps processes out of inner groups: a group of its own at the root.
            let wanted = if limits.cpu_millis.is_some() {
                "+memory +cpu"
            } else {
                "+memory"
            };
            std::fs::write(base.join("cgroup.subtree_control"), wanted)
                .map_err(|e| fail("enabling the controllers", e))?;
            let dir = base.join(&name);
            (vec![dir.clone()], dir)
        } else {
            let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
            let under = |controller: &str| -> Result<PathBuf, String> {
                let path = modelpull::limits::own_path(&own, controller)
                    .ok_or_else(|| format!("no {controller} cgroup"))?;
                Ok(base
                    .join(controller)
                    .join(path.trim_start_matches('/'))
                    .join(&name))
            };
            let memory = under("memory")?;
            let mut dirs = vec![memory.clone()];
            if limits.cpu_millis.is_some() {
                dirs.push(under("cpu")?);
            }
            (dirs, memory)
        };
        // Made one by one, so that a failure removes those made before.
        let mut group = Self {
            dirs: Vec::new(),
            memory,
            v2,
        };
        for dir in dirs {
            std::fs::create_dir(&dir).map_err(|e| fail("creating the cgroup", e))?;
            group.dirs.push(dir);
        }
        let set = |dir: &PathBuf, file: &str, value: &str| {
            std::fs::write(dir.join(file), value).map_err(|e| fail(file, e))
        };
        let memory = limits.memory.to_string();
        if v2 {
            set(&group.memory, "memory.max", &memory)?;
            if group.memory.join("memory.swap.max").is_file() {
                set(&group.memory, "memory.swap.max", "0")?;
            }
            if let Some(m) = limits.cpu_millis {
                set(
                    &group.memory,
                    "cpu.max",
                    &format!("{} {PERIOD_US}", m * PERIOD_US / 1000),
                )?;
            }
        } else {
            set(&group.memory, "memory.limit_in_bytes", &memory)?;
            if let (Some(m), Some(cpu)) = (limits.cpu_millis, group.dirs.get(1)) {
                set(cpu, "cpu.cfs_period_us", &PERIOD_US.to_string())?;
                set(cpu, "cpu.cfs_quota_us", &(m * PERIOD_US / 1000).to_string())?;
            }
        }
        Ok(group)
    }

    /// A command that moves itself into the group, then becomes the agent; as `uid` (gid the
    /// same, no other groups) when given, which may not move itself.
    pub fn wrap(&self, uid: Option<u32>) -> Command {
        let moves: Vec<String> = self
            .dirs
            .iter()
            .map(|d| format!("echo $$ > '{}'", d.join("cgroup.procs").display()))
            .collect();
        let become_user = uid.map_or(String::new(), |u| {
            format!("setpriv --reuid={u} --regid={u} --clear-groups ")
        });
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!(
                "{} && exec {become_user}\"$@\"",
                moves.join(" && ")
            ))
            .arg("sh")
            .arg(agent_binary());
        command
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.memory.join(file)).unwrap_or_default()
    }

    /// The most memory the group was charged, when the kernel says.
    pub fn peak(&self) -> Option<u64> {
        let file = if self.v2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        self.read(file).trim().parse().ok()
    }

    /// Processes of the group the kernel killed for memory.
    pub fn oom_kills(&self) -> u64 {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        self.read(file)
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for dir in &self.dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}
