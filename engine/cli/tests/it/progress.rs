//! The progress display as a person sees it: a pull from a slowed origin runs in a tmux pane
//! (a real pseudo-terminal), and the captured screen must show bytes of the total, a rate, an
//! ETA and the name of a file downloading; the display is cleared at the end. Without a
//! terminal, stderr gets the summary and none of the display.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use modelpull_testkit::origin::Faults;
use modelpull_testkit::*;

const SHARDS: [&str; 2] = [
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
];

/// Two shards of `size` bytes, served at `rate` bytes per second per response.
fn slow_fixture(size: usize, rate: u64) -> Fixture {
    let contents: Vec<Vec<u8>> = (0..SHARDS.len())
        .map(|i| data(20 + i as u64, size))
        .collect();
    let files: Vec<(&str, &[u8])> = SHARDS
        .iter()
        .zip(&contents)
        .map(|(name, bytes)| (*name, bytes.as_slice()))
        .collect();
    let fx = Fixture::new(&files);
    fx.origin.set_faults(Faults {
        slow_rate: Some(rate),
        slow_times: u32::MAX,
        ..Faults::default()
    });
    fx
}

fn pull_args(fx: &Fixture, dest: &Path) -> Vec<String> {
    let mut args: Vec<String> = [
        "pull",
        "--connections",
        "2",
        "--chunk-size",
        "256K",
        "--range-size",
        "1M",
    ]
    .map(String::from)
    .to_vec();
    args.extend(SHARDS.iter().map(|s| fx.origin.url(s)));
    args.push(dest.display().to_string());
    args
}

/// A tmux server of this test's own (its own socket, no configuration), killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(command: &str) -> Option<Self> {
        if Command::new("tmux").arg("-V").output().is_err() {
            servers::missing("tmux")?;
        }
        let tmux = Self {
            socket: format!("modelpull-test-{}", std::process::id()),
        };
        let started = tmux
            .command()
            .args([
                "new-session",
                "-d",
                "-s",
                "pull",
                "-x",
                "100",
                "-y",
                "30",
                command,
            ])
            .status()
            .unwrap();
        assert!(started.success(), "tmux new-session failed");
        Some(tmux)
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.args(["-L", &self.socket, "-f", "/dev/null"]);
        cmd
    }

    /// The pane's screen, as text.
    fn screen(&self) -> String {
        let out = self
            .command()
            .args(["capture-pane", "-p", "-t", "pull"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command().arg("kill-server").status();
    }
}

/// Whether `screen` has a line naming one shard alone, as the display lists files in flight
/// (the listing and the summary name them among other words).
fn file_line(screen: &str) -> bool {
    screen
        .lines()
        .any(|l| SHARDS.iter().any(|s| l.trim() == *s))
}

/// Whether `screen` shows a number right before `unit` somewhere, as in `1.50 MiB/s`.
fn number_before(screen: &str, units: &[&str]) -> bool {
    units.iter().any(|unit| {
        screen.match_indices(unit).any(|(at, _)| {
            screen[..at]
                .strip_suffix(' ')
                .and_then(|s| s.chars().last())
                .is_some_and(|c| c.is_ascii_digit())
        })
    })
}

#[test]
fn a_terminal_shows_bytes_rate_eta_and_the_files_downloading() {
    // 12 MiB at 2 × 1 MiB/s: about 6 s on screen.
    let fx = slow_fixture(6 * 1024 * 1024, 1024 * 1024);
    let dest = fx.dest("m");
    let rc = fx.dir.path().join("rc");
    let mut line = format!("'{}'", env!("CARGO_BIN_EXE_modelpull"));
    for arg in pull_args(&fx, &dest) {
        line.push_str(&format!(" '{arg}'"));
    }
    line.push_str(&format!("; echo $? > '{}'; sleep 600", rc.display()));
    let Some(tmux) = Tmux::start(&line) else {
        return;
    };

    // Wait for the display with both sizes known, bytes flowing and a file downloading.
    let started = Instant::now();
    let during = loop {
        let screen = tmux.screen();
        if screen.contains("/12.00 MiB") && !screen.contains(" 0 B/s") && file_line(&screen) {
            break screen;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30) && !rc.exists(),
            "no display of bytes of the total (12.00 MiB) at a rate with a file downloading; \
             the screen:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        number_before(&during, &["B/s", "KiB/s", "MiB/s", "GiB/s"]),
        "a rate:\n{during}"
    );
    assert!(
        during
            .match_indices("eta ")
            .any(|(at, _)| during[at + 4..].starts_with(|c: char| c.is_ascii_digit())),
        "an ETA:\n{during}"
    );

    while !rc.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the pull did not end"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(std::fs::read_to_string(&rc).unwrap().trim(), "0");
    let after = tmux.screen();
    assert!(
        !after.contains("eta "),
        "the display was not cleared:\n{after}"
    );
    assert!(after.contains("pulled 2 files"), "{after}");
    assert!(after.contains(&dest.display().to_string()), "{after}");
}

#[test]
fn without_a_terminal_stderr_has_no_progress_display() {
    let fx = slow_fixture(1024 * 1024, 1024 * 1024);
    let dest = fx.dest("m");
    let out = Command::new(env!("CARGO_BIN_EXE_modelpull"))
        .args(pull_args(&fx, &dest))
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.starts_with("pulled 2 files"), "{err}");
    for display in ["eta ", "iB/s", "\r", "\x1b["] {
        assert!(!err.contains(display), "{display:?} on stderr:\n{err}");
    }
    assert!(!file_line(&err), "no in-flight file lines:\n{err}");
}
