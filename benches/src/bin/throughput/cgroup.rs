//! The init container's limits, applied for real: a cgroup the harness creates with KServe's
//! shipped storage-initializer limits (`inferenceservice-config`: `cpuLimit: 1`,
//! `memoryLimit: 1Gi`), written the way the kubelet writes a container's: a CFS quota of one
//! CPU per 100 ms period and a memory limit of 1 GiB.
//!
//! On cgroup v1 there are two groups, one in the `cpu` hierarchy and one in `memory`, each
//! created under the harness's own cgroup there (so whatever already limits or accounts for
//! the harness still covers its tools); on cgroup v2 one group at the root of the unified
//! hierarchy (v2 puts no group beside processes, and the harness's own group has some). A
//! tool is moved in by a shell that writes its own pid to each `cgroup.procs` and then
//! `exec`s the tool, so everything it starts, GNU time included, runs inside. The groups are
//! removed when the [`Group`] is dropped.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use modelpull::limits::own_path;

/// The folder's name in each hierarchy.
pub const NAME: &str = "modelpull-bench-init";
/// `cpuLimit: 1`: 100 ms of CPU time every 100 ms.
pub const CPU_QUOTA_US: u64 = 100_000;
pub const CPU_PERIOD_US: u64 = 100_000;
/// `memoryLimit: 1Gi`.
pub const MEMORY_BYTES: u64 = 1 << 30;

/// Which cgroup interface the machine has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// A cgroup with the init container's limits; removed on drop.
#[derive(Debug)]
pub struct Group {
    pub version: Version,
    /// The group's folder in each hierarchy (one on v2; `cpu` then `memory` on v1).
    dirs: Vec<PathBuf>,
}

impl Group {
    /// Creates the group on this machine, or says why it cannot (not root, no cgroup fs).
    pub fn create() -> Result<Self> {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let group = Self::create_in(Path::new("/sys/fs/cgroup"), &own)?;
        group.check_membership()?;
        Ok(group)
    }

    /// Creates the group under the cgroup file systems mounted at `root`, the harness being
    /// in the cgroups `own` lists (`/proc/self/cgroup`).
    fn create_in(root: &Path, own: &str) -> Result<Self> {
        if root.join("cgroup.controllers").is_file() {
            let controllers = std::fs::read_to_string(root.join("cgroup.controllers"))?;
            for c in ["cpu", "memory"] {
                if !controllers.split_whitespace().any(|have| have == c) {
                    bail!("cgroup v2 at {} has no {c} controller", root.display());
                }
            }
            // Children of the root get the controllers only if the root hands them down.
            let subtree = std::fs::read_to_string(root.join("cgroup.subtree_control"))?;
            for c in ["cpu", "memory"] {
                if !subtree.split_whitespace().any(|have| have == c) {
                    write_control(&root.join("cgroup.subtree_control"), &format!("+{c}"))?;
                }
            }
            let dir = make_dir(&root.join(NAME))?;
            let group = Group {
                version: Version::V2,
                dirs: vec![dir.clone()],
            };
            set(&dir, "cpu.max", &format!("{CPU_QUOTA_US} {CPU_PERIOD_US}"))?;
            set(&dir, "memory.max", &MEMORY_BYTES.to_string())?;
            // The kubelet gives containers no swap unless asked; this machine may have some.
            if dir.join("memory.swap.max").is_file() {
                set(&dir, "memory.swap.max", "0")?;
            }
            return Ok(group);
        }
        let cpu_root = root.join("cpu");
        let memory_root = root.join("memory");
        if !cpu_root.join("cpu.cfs_quota_us").is_file()
            || !memory_root.join("memory.limit_in_bytes").is_file()
        {
            bail!(
                "no cgroup v2 at {root} and no cgroup v1 cpu and memory hierarchies under it",
                root = root.display()
            );
        }
        let cpu = make_dir(&parent(&cpu_root, own_path(own, "cpu")).join(NAME))?;
        let mut group = Group {
            version: Version::V1,
            dirs: vec![cpu.clone()],
        };
        let memory = make_dir(&parent(&memory_root, own_path(own, "memory")).join(NAME))?;
        group.dirs.push(memory.clone());
        set(&cpu, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
        set(&cpu, "cpu.cfs_quota_us", &CPU_QUOTA_US.to_string())?;
        set(&memory, "memory.limit_in_bytes", &MEMORY_BYTES.to_string())?;
        Ok(group)
    }

    /// `argv` run inside the group: a shell moves itself in, then becomes the command.
    pub fn wrap(&self, argv: Vec<String>) -> Vec<String> {
        let mut script = String::new();
        for dir in &self.dirs {
            let procs = dir.join("cgroup.procs").display().to_string();
            let _ = write!(script, "echo $$ > {} && ", quote(&procs));
        }
        script.push_str("exec \"$@\"");
        let mut v = vec!["sh".into(), "-c".into(), script, "sh".into()];
        v.extend(argv);
        v
    }

    /// Runs a probe through [`Group::wrap`] and checks that it lands in the group.
    fn check_membership(&self) -> Result<()> {
        let argv = self.wrap(vec!["cat".into(), "/proc/self/cgroup".into()]);
        let out = Command::new(&argv[0]).args(&argv[1..]).output()?;
        if !out.status.success() {
            bail!(
                "cannot move a process into {}: {}",
                self.dirs[0].display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let controllers: &[&str] = match self.version {
            Version::V1 => &["cpu", "memory"],
            Version::V2 => &[""],
        };
        for c in controllers {
            let inside = own_path(&text, c).is_some_and(|p| p.ends_with(&format!("/{NAME}")));
            if !inside {
                bail!("a process moved into the {NAME} cgroup is not in it:\n{text}");
            }
        }
        Ok(())
    }

    /// The limits as the table's note states them.
    pub fn describe(&self) -> String {
        match self.version {
            Version::V1 => format!(
                "cgroup v1: `cpu.cfs_quota_us` {CPU_QUOTA_US} per `cpu.cfs_period_us` \
                 {CPU_PERIOD_US}, `memory.limit_in_bytes` {MEMORY_BYTES}"
            ),
            Version::V2 => format!(
                "cgroup v2: `cpu.max` \"{CPU_QUOTA_US} {CPU_PERIOD_US}\", `memory.max` \
                 {MEMORY_BYTES}, `memory.swap.max` 0"
            ),
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // The tools have exited; the kernel may take a moment to let the group go.
        for dir in self.dirs.iter().rev() {
            for _ in 0..50 {
                match std::fs::remove_dir(dir) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    _ => break,
                }
            }
            if dir.exists() {
                eprintln!("could not remove the cgroup {}", dir.display());
            }
        }
    }
}

/// Where to create the group in a v1 hierarchy mounted at `mount`: under the process's own
/// cgroup when this mount shows it, else at the mount's root.
fn parent(mount: &Path, own: Option<&str>) -> PathBuf {
    let own = own.map(|p| mount.join(p.trim_start_matches('/')));
    own.filter(|d| d.is_dir())
        .unwrap_or_else(|| mount.to_owned())
}

fn make_dir(dir: &Path) -> Result<PathBuf> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(dir.to_owned()),
        // Left by a run that was killed: reuse it, its limits are written again.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(dir.to_owned()),
        Err(e) => Err(e).with_context(|| format!("cannot create the cgroup {}", dir.display())),
    }
}

/// Writes `value` to an existing control file (a cgroup file system creates them; a plain
/// folder has none, so nothing is faked there).
fn write_control(path: &Path, value: &str) -> Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .with_context(|| format!("cannot write {value:?} to {}", path.display()))
}

/// Sets `file` of the group `dir` to `value` and checks that it reads back.
fn set(dir: &Path, file: &str, value: &str) -> Result<()> {
    let path = dir.join(file);
    write_control(&path, value)?;
    let read = std::fs::read_to_string(&path)?;
    if read.split_whitespace().collect::<Vec<_>>() != value.split_whitespace().collect::<Vec<_>>() {
        bail!(
            "{} reads {:?} after writing {value:?}",
            path.display(),
            read.trim()
        );
    }
    Ok(())
}

/// `s` as one word for `sh`.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree of `(path, content)` files, as a cgroup file system would show them.
    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, content) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        dir
    }

    fn read(root: &Path, path: &str) -> String {
        std::fs::read_to_string(root.join(path)).unwrap()
    }

    #[test]
    fn v1_nests_under_the_own_cgroup_of_each_hierarchy() {
        let g = format!("memory/session/abc/{NAME}");
        let root = tree(&[
            ("cpu/cpu.cfs_quota_us", "-1\n"),
            ("memory/memory.limit_in_bytes", "9223372036854771712\n"),
            ("memory/session/abc/cgroup.procs", ""),
            // What the kernel creates with the folder.
            (&format!("cpu/{NAME}/cpu.cfs_quota_us"), "-1\n"),
            (&format!("cpu/{NAME}/cpu.cfs_period_us"), "100000\n"),
            (
                &format!("{g}/memory.limit_in_bytes"),
                "9223372036854771712\n",
            ),
        ]);
        let own = "4:memory:/session/abc\n2:cpuacct:/\n1:cpu:/\n0::/\n";
        let group = Group::create_in(root.path(), own).unwrap();
        assert_eq!(group.version, Version::V1);
        assert_eq!(
            read(root.path(), &format!("cpu/{NAME}/cpu.cfs_quota_us")),
            "100000"
        );
        assert_eq!(
            read(root.path(), &format!("{g}/memory.limit_in_bytes")),
            "1073741824"
        );
        let argv = group.wrap(vec!["tool".into(), "a b".into()]);
        let r = root.path().display();
        assert_eq!(
            argv,
            [
                "sh".to_owned(),
                "-c".into(),
                format!(
                    "echo $$ > '{r}/cpu/{NAME}/cgroup.procs' && echo $$ > '{r}/{g}/cgroup.procs' && exec \"$@\""
                ),
                "sh".into(),
                "tool".into(),
                "a b".into(),
            ]
        );
        assert!(group.describe().starts_with("cgroup v1"));
    }

    #[test]
    fn v2_uses_one_folder_with_cpu_max_and_memory_max() {
        let root = tree(&[
            ("cgroup.controllers", "cpuset cpu io memory pids\n"),
            ("cgroup.subtree_control", "cpu memory\n"),
            (&format!("{NAME}/cpu.max"), "max 100000\n"),
            (&format!("{NAME}/memory.max"), "max\n"),
        ]);
        let group = Group::create_in(root.path(), "0::/user.slice/x\n").unwrap();
        assert_eq!(group.version, Version::V2);
        assert_eq!(
            read(root.path(), &format!("{NAME}/cpu.max")),
            "100000 100000"
        );
        assert_eq!(
            read(root.path(), &format!("{NAME}/memory.max")),
            "1073741824"
        );
        assert_eq!(group.dirs.len(), 1);
    }

    #[test]
    fn without_a_cgroup_file_system_nothing_is_faked() {
        let root = tree(&[("unrelated", "")]);
        let err = Group::create_in(root.path(), "0::/\n").unwrap_err();
        assert!(err.to_string().contains("no cgroup v2"), "{err:#}");
        // A folder that is not a cgroup gets no control files, so writing the limit fails.
        let root = tree(&[
            ("cpu/cpu.cfs_quota_us", "-1\n"),
            ("memory/memory.limit_in_bytes", "0\n"),
        ]);
        let err = Group::create_in(root.path(), "1:cpu:/\n").unwrap_err();
        assert!(format!("{err:#}").contains("cpu.cfs_period_us"), "{err:#}");
    }

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(quote("a'b"), r"'a'\''b'");
    }
}
