//! What the CLI prints: a progress bar on a terminal, a summary or a JSON report.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::Duration;

use modelpull::progress::Progress;
use modelpull::units::human_bytes;

/// A progress bar on stderr, fed from the engine's counters by a small thread.
pub struct ProgressBar {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ProgressBar {
    pub fn start(progress: Arc<Progress>, wanted: bool) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = (wanted && std::io::stderr().is_terminal()).then(|| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let bar = indicatif::ProgressBar::new(0);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{bar:40.cyan/blue} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
                    )
                    .expect("progress template"),
                );
                while !stop.load(Relaxed) {
                    let s = progress.snapshot();
                    bar.set_length(s.total_bytes);
                    bar.set_position(s.done_bytes.min(s.total_bytes));
                    let retries = if s.retries > 0 { format!(", {} retries", s.retries) } else { String::new() };
                    bar.set_message(format!("files {}/{}{retries}", s.files_done, s.files_total));
                    std::thread::sleep(Duration::from_millis(100));
                }
                bar.finish_and_clear();
            })
        });
        Self { stop, thread }
    }

    pub fn finish(mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn report(report: &modelpull::Report, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(report).expect("report serialises")
        );
        return;
    }
    if report.up_to_date {
        println!(
            "{} is complete and verified ({} files, {}); nothing to do",
            report.destination.display(),
            report.files.len(),
            human_bytes(report.total_bytes)
        );
        return;
    }
    let driver = report.driver.map_or("none", |d| d.name());
    println!(
        "pulled {} files, {} in {:.2} s ({:.2} GB/s) into {}",
        report.files.len(),
        human_bytes(report.total_bytes),
        report.seconds,
        report.gigabytes_per_second,
        report.destination.display()
    );
    let resumed = if report.resumed_bytes > 0 {
        format!(
            ", {} kept from an earlier run",
            human_bytes(report.resumed_bytes)
        )
    } else {
        String::new()
    };
    println!(
        "  driver {driver}, {} cores, {} connections, {} retries{resumed}",
        report.cores, report.connections, report.retries
    );
    if let Some(u) = &report.unpacked {
        println!(
            "  unpacked {} into {} files ({}) and removed it",
            u.archive,
            u.files,
            human_bytes(u.bytes)
        );
    }
    if let Some(note) = &report.driver_note {
        println!("  note: {note}; running on epoll");
    }
    for f in &report.files {
        let shown = f
            .digests
            .iter()
            .find(|d| f.verified.contains(&d.algorithm))
            .or_else(|| f.digests.first());
        let check = if f.verified.is_empty() {
            "computed"
        } else {
            "verified"
        };
        if let Some(d) = shown {
            println!(
                "  {check} {d}  {}  {}  ({})",
                human_bytes(f.size),
                f.path,
                f.checksum
            );
        }
    }
}

/// `modelpull ls`: one line per file, or the manifests as JSON.
pub fn listing(manifests: &[modelpull::store::Manifest], json: bool) {
    if json {
        let v: Vec<_> = manifests
            .iter()
            .map(|m| {
                serde_json::json!({
                    "uri": m.uri,
                    "store": m.store,
                    "revision": m.revision,
                    "total_bytes": m.total_size(),
                    "skipped": m.skipped,
                    "files": m.listing(),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&v).expect("listing serialises")
        );
        return;
    }
    for m in manifests {
        let revision = m
            .revision
            .as_deref()
            .map(|r| format!(" at {r}"))
            .unwrap_or_default();
        let total = m
            .total_size()
            .map_or_else(|| "size unknown".to_owned(), human_bytes);
        let skipped = if m.skipped > 0 {
            format!(", {} skipped", m.skipped)
        } else {
            String::new()
        };
        println!(
            "{}{revision}: {} files, {total}{skipped}",
            m.uri,
            m.files.len()
        );
        for f in m.listing() {
            let size = f.size.map_or_else(|| "?".to_owned(), human_bytes);
            println!("  {size:>10}  {:<26}  {}", f.checksum, f.path);
        }
    }
}

pub fn error(err: &anyhow::Error, code: modelpull::ExitCode, json: bool) {
    if json {
        let v = serde_json::json!({ "error": err.to_string(), "exit_code": code as u8 });
        println!("{v}");
    } else {
        eprintln!("modelpull: error: {err}");
    }
}
