//! The live display of a pull on a terminal: bytes done of the total, rate, ETA, files
//! verified, and under it the files downloading right now.
//!
//! A small thread samples the engine's [`Progress`] ten times a second, so the engine never
//! waits on the terminal. Only a terminal on stderr gets it: a pipe or a log file would keep
//! every redraw, and scripts want stdout and stderr free of it.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::Duration;

use modelpull::progress::Progress;

/// File names shown at most; more become one "… and N more" line.
const FILE_LINES: usize = 4;
/// Characters of a file name shown at most, so that a line fits 80 columns and never wraps
/// (a wrapped line would throw the redraw off).
const NAME_CHARS: usize = 72;
const TEMPLATE: &str =
    "{bar:20.cyan/blue} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}";

/// The display on stderr, drawn by its own thread until [`Display::finish`].
pub struct Display {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Display {
    /// Starts drawing when `wanted` and stderr is a terminal; otherwise draws nothing.
    pub fn start(progress: Arc<Progress>, wanted: bool) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = (wanted && std::io::stderr().is_terminal()).then(|| {
            let stop = stop.clone();
            std::thread::spawn(move || draw(&progress, &stop))
        });
        Self { stop, thread }
    }

    /// Stops drawing and clears the display.
    pub fn finish(mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn draw(progress: &Progress, stop: &AtomicBool) {
    // Hidden until a size is known: a bar of 0 bytes would be drawn full.
    let bar =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::hidden());
    bar.set_style(indicatif::ProgressStyle::with_template(TEMPLATE).expect("progress template"));
    let mut shown = false;
    while !stop.load(Relaxed) {
        let s = progress.snapshot();
        if !shown && s.total_bytes > 0 {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            shown = true;
        }
        bar.set_length(s.total_bytes);
        bar.set_position(s.done_bytes.min(s.total_bytes));
        let retries = if s.retries > 0 {
            format!(", {} retries", s.retries)
        } else {
            String::new()
        };
        bar.set_message(format!(
            "files {}/{}{retries}{}",
            s.files_done,
            s.files_total,
            in_flight_lines(&progress.in_flight())
        ));
        std::thread::sleep(Duration::from_millis(100));
    }
    bar.finish_and_clear();
}

/// One line per file downloading, each starting with a newline, at most [`FILE_LINES`] names.
fn in_flight_lines(files: &[String]) -> String {
    let mut out = String::new();
    for name in files.iter().take(FILE_LINES) {
        out.push_str("\n  ");
        out.push_str(&shorten(name));
    }
    if files.len() > FILE_LINES {
        out.push_str(&format!("\n  … and {} more", files.len() - FILE_LINES));
    }
    out
}

/// `name`, or its end after `…` when it is longer than [`NAME_CHARS`]: shards differ at the
/// end of their names.
fn shorten(name: &str) -> String {
    let chars = name.chars().count();
    if chars <= NAME_CHARS {
        return name.to_owned();
    }
    let tail: String = name.chars().skip(chars - (NAME_CHARS - 1)).collect();
    format!("…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_lines_are_few_and_short() {
        let files: Vec<String> = (1..=6)
            .map(|i| format!("model-0000{i}-of-00006.safetensors"))
            .collect();
        let lines = in_flight_lines(&files);
        let shown: Vec<&str> = lines.lines().skip(1).collect();
        assert_eq!(shown.len(), FILE_LINES + 1, "{lines}");
        assert_eq!(shown[0], "  model-00001-of-00006.safetensors");
        assert_eq!(shown[FILE_LINES], "  … and 2 more");
        assert_eq!(in_flight_lines(&files[..1]).lines().count(), 2);
        assert_eq!(in_flight_lines(&[]), "");

        let long = format!("{}/model.safetensors", "deep/".repeat(30));
        let short = shorten(&long);
        assert_eq!(short.chars().count(), NAME_CHARS);
        assert!(short.starts_with('…') && short.ends_with("/model.safetensors"));
    }
}
