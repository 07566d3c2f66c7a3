//! The node's downloads sized to fit the pod the agent is given. KServe's DaemonSet gives its
//! agent 300 MiB and 0.1 CPU (reference §11): enough for a controller that launches Jobs, not
//! for an engine that holds chunks in memory and hashes every byte. Past the memory limit
//! the kernel kills the process, and a killed agent restarts into the same downloads, so the
//! buffers must fit under the limit with the rest of the process; a CPU quota only slows
//! downloads down, so it is said once, with how fast they can go.
//!
//! Memory: what is left for buffers is the limit, less the process without buffers (measured
//! at start, plus what the API client, engine threads and sockets add later:
//! [`RUNTIME_RESERVE`]), less an eighth of the limit for the kernel's share (socket buffers,
//! page cache). Without `--memory-limit` the buffers are the default 192 MiB, or what fits
//! when that is less; an explicit value above what fits is lowered to it, with a warning.
//! Each concurrent download needs [`MIN_PER_DOWNLOAD`]; when even that does not fit for
//! every one, fewer run at once. CPU: the engine runs as many cores as the quota keeps busy,
//! unpinned (see [`modelpull::Options::fit`]).

use modelpull::limits::Limits;
use modelpull::units::human_bytes;
use modelpull::{Options, SharedBuffers};

const MIB: u64 = 1 << 20;

/// Buffers for the node's downloads when nothing else is said: the engine's default, which a
/// larger window does not beat (docs/decisions.md, "Speed: tried and not taken").
pub const DEFAULT_BUFFERS: u64 = 192 * MIB;

/// What the process grows by after start-up besides buffers: the API client and its watch,
/// each download's engine threads and io_uring rings, TLS sessions, listings.
pub const RUNTIME_RESERVE: u64 = 48 * MIB;

/// Buffers one download needs at least to run at a useful speed beside the others sharing
/// the pool: 8 chunks of the default 2 MiB (the engine itself needs three).
pub const MIN_PER_DOWNLOAD: u64 = 16 * MIB;

/// CPU time the engine spends per GB pulled: receiving, hashing and writing it.
pub const CPU_SECONDS_PER_GB: f64 = 1.0;

/// What the agent was asked for (flags or their defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requested {
    /// `--memory-limit`, when given.
    pub memory_limit: Option<u64>,
    /// `--max-concurrent-downloads`.
    pub concurrent: usize,
    /// `--connections`: exactly this many per host for each download.
    pub connections: Option<usize>,
    /// `--max-connections`.
    pub max_connections: usize,
}

/// The downloads as they will run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fitted {
    /// Buffer memory for all downloads.
    pub memory_limit: u64,
    /// Downloads at once.
    pub concurrent: usize,
    /// Connections the shared buffers allow, over all downloads together.
    pub connections: usize,
    /// What to log at start: one line about memory, one about CPU, warnings apart.
    pub notes: Vec<Note>,
}

/// A line to log once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    Info(String),
    Warn(String),
}

/// Sizes the downloads under `limits`, the process using `baseline` bytes now (its resident
/// set at start).
pub fn fit(requested: Requested, limits: &Limits, baseline: u64, chunk: u64) -> Fitted {
    let mut notes = Vec::new();
    let concurrent = requested.concurrent.max(1);
    let Some(limit) = limits.memory else {
        let memory_limit = requested.memory_limit.unwrap_or(DEFAULT_BUFFERS);
        notes.push(Note::Info(format!(
            "no memory limit: {} of download buffers",
            human_bytes(memory_limit)
        )));
        notes.push(cpu_note(limits));
        return Fitted {
            memory_limit,
            concurrent,
            connections: connection_cap(requested, memory_limit, chunk),
            notes,
        };
    };
    let headroom = limit / 8;
    let reserved = baseline + RUNTIME_RESERVE + headroom;
    let fits = limit.saturating_sub(reserved);
    let mut memory_limit = match requested.memory_limit {
        Some(asked) if asked > fits => {
            notes.push(Note::Warn(format!(
                "--memory-limit {} does not fit under the container's memory limit of {} with \
                 the rest of the process ({} measured and expected, {} kept free): using {}; \
                 raise the container's limit (deploy/components/kserve-daemonset) or lower the flag",
                human_bytes(asked),
                human_bytes(limit),
                human_bytes(baseline + RUNTIME_RESERVE),
                human_bytes(headroom),
                human_bytes(fits)
            )));
            fits
        }
        Some(asked) => asked,
        None => DEFAULT_BUFFERS.min(fits),
    };
    if memory_limit < MIN_PER_DOWNLOAD {
        notes.push(Note::Warn(format!(
            "the container's memory limit of {} leaves {} for download buffers, less than the {} \
             one download needs: using {}, which may get the agent killed for memory; raise the \
             limit (deploy/components/kserve-daemonset)",
            human_bytes(limit),
            human_bytes(fits),
            human_bytes(MIN_PER_DOWNLOAD),
            human_bytes(MIN_PER_DOWNLOAD)
        )));
        memory_limit = MIN_PER_DOWNLOAD;
    }
    let fitting = usize::try_from(memory_limit / MIN_PER_DOWNLOAD).unwrap_or(usize::MAX);
    let concurrent_fit = concurrent.min(fitting).max(1);
    if concurrent_fit < concurrent {
        notes.push(Note::Warn(format!(
            "{} of download buffers hold {concurrent_fit} download(s) at once, not the \
             {concurrent} asked for (each needs {}); raise the container's memory limit for more",
            human_bytes(memory_limit),
            human_bytes(MIN_PER_DOWNLOAD)
        )));
    }
    let connections = connection_cap(requested, memory_limit, chunk);
    notes.push(Note::Info(format!(
        "memory limit {}: {} of download buffers shared by {concurrent_fit} download(s) at \
         once, up to {connections} connections ({} for the process, {} kept free)",
        human_bytes(limit),
        human_bytes(memory_limit),
        human_bytes(baseline + RUNTIME_RESERVE),
        human_bytes(headroom)
    )));
    notes.push(cpu_note(limits));
    Fitted {
        memory_limit,
        concurrent: concurrent_fit,
        connections,
        notes,
    }
}

/// Connections the buffers allow, as the engine counts them ([`Options::connection_cap`]):
/// one chunk each, two kept for the hashers, within the maximum (or the fixed count) asked for.
fn connection_cap(requested: Requested, memory_limit: u64, chunk: u64) -> usize {
    Options {
        connections: requested.connections,
        max_connections: requested.max_connections,
        memory_limit: usize::try_from(memory_limit).unwrap_or(usize::MAX),
        chunk_size: usize::try_from(chunk).unwrap_or(usize::MAX),
        ..Options::default()
    }
    .connection_cap()
}

/// What the CPU quota allows, as a speed.
fn cpu_note(limits: &Limits) -> Note {
    match limits.cpu {
        Some(cpu) => {
            let cores = cpu.cpus();
            let speed = cores / CPU_SECONDS_PER_GB;
            let text = format!(
                "cpu limit {cores:.2} cores: downloads will run near {speed:.2} GB/s at most \
                 (about {CPU_SECONDS_PER_GB} CPU-second per GB received, verified and written)"
            );
            if cores < 1.0 {
                Note::Warn(format!(
                    "{text}; raise it (deploy/components/kserve-daemonset), and see \
                     modelpull_cgroup_cpu_throttled_seconds_total"
                ))
            } else {
                Note::Info(text)
            }
        }
        None => Note::Info("no cpu limit".into()),
    }
}

/// The engine's options for the node under `limits`: the fitted downloads, and the CPU half
/// of [`Options::fit`] (cores within the quota, unpinned); memory is fitted here instead.
pub fn engine_options(
    requested: Requested,
    fitted: &Fitted,
    limits: &Limits,
    limit_rate: Option<u64>,
) -> Options {
    let mut opts = Options {
        connections: requested.connections.map(|n| n.min(fitted.connections)),
        max_connections: fitted.connections,
        limit_rate,
        memory_limit: usize::try_from(fitted.memory_limit).unwrap_or(usize::MAX),
        ..Options::default()
    };
    opts.fit(&Limits {
        memory: None,
        cpu: limits.cpu,
    });
    opts.shared_buffers = Some(SharedBuffers::new(&opts));
    opts
}

/// [`fit`] under this process's cgroup limits, its notes logged; with the engine's options.
pub fn for_this_process(requested: Requested, limit_rate: Option<u64>) -> (Fitted, Options) {
    let limits = Limits::detect();
    let chunk = Options::default().chunk_size as u64;
    let fitted = fit(requested, &limits, resident_bytes(), chunk);
    for note in &fitted.notes {
        match note {
            Note::Info(text) => tracing::info!("{text}"),
            Note::Warn(text) => tracing::warn!("{text}"),
        }
    }
    let opts = engine_options(requested, &fitted, &limits, limit_rate);
    (fitted, opts)
}

/// This process's resident set now (`VmRSS`), 0 when it cannot be read.
pub fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| status_kib(&s, "VmRSS:"))
        .map_or(0, |kib| kib * 1024)
}

/// A `key:   N kB` line of `/proc/PID/status`, in KiB.
pub fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use modelpull::limits::CpuQuota;

    use super::*;

    const CHUNK: u64 = 2 * MIB;
    const BASELINE: u64 = 12 * MIB;

    fn defaults() -> Requested {
        Requested {
            memory_limit: None,
            concurrent: 2,
            connections: None,
            max_connections: 256,
        }
    }

    fn memory(limit: u64) -> Limits {
        Limits {
            memory: Some(limit),
            cpu: None,
        }
    }

    fn warnings(f: &Fitted) -> Vec<&str> {
        f.notes
            .iter()
            .filter_map(|n| match n {
                Note::Warn(w) => Some(w.as_str()),
                Note::Info(_) => None,
            })
            .collect()
    }

    #[test]
    fn without_limits_nothing_changes() {
        let f = fit(defaults(), &Limits::default(), BASELINE, CHUNK);
        assert_eq!(
            (f.memory_limit, f.concurrent, f.connections),
            (DEFAULT_BUFFERS, 2, 94)
        );
        let asked = Requested {
            memory_limit: Some(1 << 30),
            ..defaults()
        };
        assert_eq!(
            fit(asked, &Limits::default(), BASELINE, CHUNK).memory_limit,
            1 << 30
        );
    }

    #[test]
    fn kserves_300_mib_keep_the_default_buffers() {
        // 300 − 12 − 48 − 37.5 = 202.5 MiB fit: the default 192 MiB does.
        let f = fit(defaults(), &memory(300 * MIB), BASELINE, CHUNK);
        assert_eq!(
            (f.memory_limit, f.concurrent, f.connections),
            (DEFAULT_BUFFERS, 2, 94)
        );
        assert!(warnings(&f).is_empty(), "{:?}", f.notes);
        assert_eq!(
            f.notes[0],
            Note::Info(
                "memory limit 300.0 MiB: 192.0 MiB of download buffers shared by 2 download(s) \
                 at once, up to 94 connections (60.0 MiB for the process, 37.5 MiB kept free)"
                    .into()
            )
        );
    }

    #[test]
    fn a_smaller_limit_gets_smaller_buffers_and_fewer_connections() {
        // 200 − 60 − 25 = 115 MiB: 57 chunks, 55 connections over both downloads.
        let f = fit(defaults(), &memory(200 * MIB), BASELINE, CHUNK);
        assert_eq!(f.memory_limit, 115 * MIB);
        assert_eq!((f.concurrent, f.connections), (2, 55));
        // 128 − 60 − 16 = 52 MiB: 26 chunks, 24 connections.
        let f = fit(defaults(), &memory(128 * MIB), BASELINE, CHUNK);
        assert_eq!(f.memory_limit, 52 * MIB);
        assert_eq!((f.concurrent, f.connections), (2, 24));
        // A fixed count is kept when it fits.
        let fixed = Requested {
            connections: Some(16),
            ..defaults()
        };
        assert_eq!(
            fit(fixed, &memory(128 * MIB), BASELINE, CHUNK).connections,
            16
        );
        assert!(warnings(&f).is_empty());
    }

    #[test]
    fn fewer_downloads_at_once_when_their_floor_does_not_fit() {
        // 100 − 60 − 12.5 = 27.5 MiB: one download of 16 MiB fits, not two.
        let f = fit(defaults(), &memory(100 * MIB), BASELINE, CHUNK);
        assert_eq!(f.concurrent, 1);
        assert_eq!(f.connections, 11, "27.5 MiB hold 13 chunks: 11 connections");
        let w = warnings(&f);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("hold 1 download(s) at once, not the 2"),
            "{w:?}"
        );
        // 64 MiB leave nothing: one download at the floor, and a warning that says so.
        let f = fit(defaults(), &memory(64 * MIB), BASELINE, CHUNK);
        assert_eq!((f.memory_limit, f.concurrent), (MIN_PER_DOWNLOAD, 1));
        assert!(
            warnings(&f)[0].contains("may get the agent killed"),
            "{:?}",
            f.notes
        );
    }

    #[test]
    fn an_explicit_limit_above_what_fits_is_lowered_with_a_warning() {
        let asked = |m| Requested {
            memory_limit: Some(m),
            ..defaults()
        };
        let f = fit(asked(512 * MIB), &memory(300 * MIB), BASELINE, CHUNK);
        assert_eq!(f.memory_limit, 300 * MIB - 60 * MIB - 300 * MIB / 8);
        let w = warnings(&f);
        assert_eq!(w.len(), 1);
        assert!(
            w[0].starts_with("--memory-limit 512.0 MiB does not fit"),
            "{w:?}"
        );
        // Below what fits, it is kept, even above the default.
        let f = fit(asked(64 * MIB), &memory(300 * MIB), BASELINE, CHUNK);
        assert_eq!(f.memory_limit, 64 * MIB);
        let f = fit(asked(1 << 30), &memory(4 << 30), BASELINE, CHUNK);
        assert_eq!(f.memory_limit, 1 << 30);
        assert!(warnings(&f).is_empty());
    }

    #[test]
    fn the_cpu_quota_is_said_as_a_speed() {
        let cpu = |quota_us| Limits {
            memory: None,
            cpu: Some(CpuQuota {
                quota_us,
                period_us: 100_000,
            }),
        };
        let f = fit(defaults(), &cpu(10_000), BASELINE, CHUNK);
        let w = warnings(&f);
        assert_eq!(w.len(), 1);
        assert!(
            w[0].starts_with("cpu limit 0.10 cores: downloads will run near 0.10 GB/s"),
            "{w:?}"
        );
        assert!(w[0].contains("deploy/components/kserve-daemonset"), "{w:?}");
        let f = fit(defaults(), &cpu(200_000), BASELINE, CHUNK);
        assert!(warnings(&f).is_empty(), "two cores are not a warning");
        let opts = engine_options(defaults(), &f, &cpu(10_000), None);
        assert_eq!((opts.cores, opts.pin), (1, false));
        assert_eq!(opts.memory_limit as u64, DEFAULT_BUFFERS);
        opts.validate().unwrap();
    }

    #[test]
    fn fitted_options_are_valid_for_each_download() {
        for limit in [64, 100, 128, 200, 300, 512, 4096] {
            let f = fit(defaults(), &memory(limit * MIB), BASELINE, CHUNK);
            // Every download takes the node's options as they are: the buffers are shared.
            let opts = engine_options(defaults(), &f, &memory(limit * MIB), None);
            assert!(opts.shared_buffers.is_some());
            assert!(opts.connection_cap() <= f.connections);
            opts.validate()
                .unwrap_or_else(|e| panic!("{limit} MiB: {e} ({f:?})"));
        }
    }

    #[test]
    fn reads_proc_status() {
        let status = "Name:\tagent\nVmHWM:\t  250000 kB\nVmRSS:\t  123456 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(123_456));
        assert_eq!(status_kib(status, "VmHWM:"), Some(250_000));
        assert_eq!(status_kib(status, "VmSwap:"), None);
        assert!(resident_bytes() > 0);
    }
}
