//! Thread-per-core: one monoio runtime per core, pinned, on io_uring or on epoll.
//!
//! io_uring is the fast path. It is often unavailable: Docker's default seccomp profile blocks
//! `io_uring_setup` (EPERM), old kernels lack it (ENOSYS) and some hosts set
//! `kernel.io_uring_disabled`. `auto` tries io_uring once and falls back to epoll, saying why;
//! the driver in use goes to the log, the report and the metrics.

use std::future::Future;
use std::str::FromStr;

use crate::error::{Error, Result};

/// The driver the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DriverChoice {
    /// io_uring when the kernel allows it, epoll otherwise.
    #[default]
    Auto,
    /// io_uring, or fail.
    Uring,
    /// epoll, even where io_uring works.
    Epoll,
}

/// The driver in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// io_uring.
    Uring,
    /// epoll (monoio's legacy driver).
    Epoll,
}

impl Driver {
    /// `uring` or `epoll`, as in logs, reports and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Driver::Uring => "uring",
            Driver::Epoll => "epoll",
        }
    }
}

impl FromStr for DriverChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "uring" => Ok(Self::Uring),
            "epoll" => Ok(Self::Epoll),
            _ => Err(format!(
                "unknown driver {s:?}: expected auto, uring or epoll"
            )),
        }
    }
}

const RING_ENTRIES: u32 = 1024;

/// Picks the driver: `auto` probes io_uring by building a runtime on it.
/// Returns the driver and, when `auto` fell back, why.
pub fn resolve(choice: DriverChoice) -> Result<(Driver, Option<String>)> {
    match choice {
        DriverChoice::Epoll => Ok((Driver::Epoll, None)),
        DriverChoice::Uring => match probe_uring() {
            Ok(()) => Ok((Driver::Uring, None)),
            Err(e) => Err(Error::Runtime(format!(
                "io_uring was requested but cannot be set up: {e} (use --driver auto or epoll)"
            ))),
        },
        DriverChoice::Auto => match probe_uring() {
            Ok(()) => Ok((Driver::Uring, None)),
            Err(e) => Ok((Driver::Epoll, Some(format!("io_uring unavailable ({e})")))),
        },
    }
}

fn probe_uring() -> std::io::Result<()> {
    if std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").is_ok_and(|v| v.trim() == "2")
    {
        return Err(std::io::Error::other("kernel.io_uring_disabled = 2"));
    }
    monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(8)
        .build()
        .map(drop)
}

/// Runs `make(core_index)` on `cores` threads, each with its own runtime of `driver`,
/// pinned to a CPU when `pin` is set. Returns each core's output in order.
pub fn run_cores<F, Fut, T>(cores: usize, driver: Driver, pin: bool, make: F) -> Result<Vec<T>>
where
    F: Fn(usize) -> Fut + Send + Sync,
    Fut: Future<Output = T>,
    T: Send,
{
    let cpus = if pin {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..cores)
            .map(|i| {
                let make = &make;
                let cpu = (!cpus.is_empty()).then(|| cpus[i % cpus.len()]);
                std::thread::Builder::new()
                    .name(format!("modelpull-core-{i}"))
                    .spawn_scoped(scope, move || {
                        if let Some(cpu) = cpu {
                            core_affinity::set_for_current(cpu);
                        }
                        block_on(driver, make(i))
                    })
                    .map_err(|e| Error::Runtime(format!("cannot start core thread: {e}")))
            })
            .collect::<Result<_>>()?;
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| Error::Runtime("an engine core panicked".into()))?
            })
            .collect()
    })
}

/// Runs one future to completion on a fresh runtime of `driver` in the current thread.
pub fn block_on<Fut: Future>(driver: Driver, fut: Fut) -> Result<Fut::Output> {
    let built = |e: std::io::Error| Error::Runtime(format!("{} runtime: {e}", driver.name()));
    Ok(match driver {
        Driver::Uring => monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(RING_ENTRIES)
            .enable_timer()
            .build()
            .map_err(built)?
            .block_on(fut),
        Driver::Epoll => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .map_err(built)?
            .block_on(fut),
    })
}

/// Number of cores to use when the user did not say: every CPU this process may run on.
pub fn default_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The drivers every I/O test runs on: epoll always, io_uring where the kernel allows it.
/// `MODELPULL_TEST_DRIVER=epoll|uring` narrows the matrix to one.
#[doc(hidden)]
pub fn test_drivers() -> Vec<Driver> {
    let mut drivers = Vec::new();
    let only = std::env::var("MODELPULL_TEST_DRIVER").ok();
    if only.as_deref() != Some("epoll") {
        match probe_uring() {
            Ok(()) => drivers.push(Driver::Uring),
            Err(e) if only.as_deref() == Some("uring") => {
                panic!("io_uring required but unavailable: {e}")
            }
            Err(e) => eprintln!("io_uring unavailable here ({e}); testing epoll only"),
        }
    }
    if only.as_deref() != Some("uring") {
        drivers.push(Driver::Epoll);
    }
    drivers
}
