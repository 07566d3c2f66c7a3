//! What the CLI prints: a pull's path or JSON report, the summary, listings and errors. The
//! live progress display is in `progress`.

use std::fmt::Write as _;

use modelpull::units::human_bytes;

/// The end of a successful `pull`: with `json`, the report on stdout; otherwise the summary
/// on stderr (none when `quiet`) and the model directory's absolute path on stdout, the one
/// line `hf download` prints too, so `MODEL=$(modelpull pull -q …)` works.
pub fn pulled(report: &modelpull::Report, json: bool, quiet: bool) {
    if json {
        print_json(report);
        return;
    }
    if !quiet {
        eprint!("{}", summary(report));
    }
    let path =
        std::path::absolute(&report.destination).unwrap_or_else(|_| report.destination.clone());
    println!("{}", path.display());
}

/// `demo`'s result: the report on stdout, as JSON or as the summary.
pub fn report(report: &modelpull::Report, json: bool) {
    if json {
        print_json(report);
    } else {
        print!("{}", summary(report));
    }
}

fn print_json(report: &modelpull::Report) {
    println!(
        "{}",
        serde_json::to_string_pretty(report).expect("report serialises")
    );
}

/// What a pull did, for people: files, bytes, speed, driver, and each file's digest.
fn summary(report: &modelpull::Report) -> String {
    let mut out = String::new();
    if report.up_to_date {
        let _ = writeln!(
            out,
            "{} is complete and verified ({} files, {}); nothing to do",
            report.destination.display(),
            report.files.len(),
            human_bytes(report.total_bytes)
        );
        return out;
    }
    let driver = report.driver.map_or("none", |d| d.name());
    let _ = writeln!(
        out,
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
    let connections = report
        .connections
        .iter()
        .map(|h| {
            if h.peak > h.settled {
                format!("{} connections to {} (up to {})", h.settled, h.host, h.peak)
            } else {
                format!("{} connections to {}", h.settled, h.host)
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        out,
        "  driver {driver}, {} cores, {connections}, {} retries{resumed}",
        report.cores, report.retries
    );
    if report.connections.iter().any(|h| h.mirror) {
        let from = |mirror: bool| {
            let bytes = report.connections.iter().filter(|h| h.mirror == mirror);
            human_bytes(bytes.map(|h| h.bytes).sum())
        };
        let dropped = report.connections.iter().filter(|h| h.dropped).count();
        let dropped = match dropped {
            0 => String::new(),
            n => format!(", {n} mirror(s) dropped"),
        };
        let _ = writeln!(
            out,
            "  {} from mirrors, {} from origins{dropped}",
            from(true),
            from(false)
        );
    }
    if let Some(a) = &report.adoption {
        let how = match a.repair {
            modelpull::report::Repair::None => "nothing to repair".to_owned(),
            modelpull::report::Repair::InPlace => "repaired in place".to_owned(),
            modelpull::report::Repair::Exchanged => format!(
                "exchanged for a verified copy; the previous folder is {}",
                a.replaced
                    .as_ref()
                    .map_or_else(String::new, |p| p.display().to_string())
            ),
        };
        let _ = writeln!(
            out,
            "  adopted {} files ({}) checked in place in {:.2} s, fetched {} ({}); {how}",
            a.adopted_files,
            human_bytes(a.adopted_bytes),
            a.verify_seconds,
            a.fetched_files,
            human_bytes(a.fetched_bytes)
        );
    }
    if let Some(u) = &report.unpacked {
        let _ = writeln!(
            out,
            "  unpacked {} into {} files ({}) and removed it",
            u.archive,
            u.files,
            human_bytes(u.bytes)
        );
    }
    if let Some(note) = &report.driver_note {
        let _ = writeln!(out, "  note: {note}; running on epoll");
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
            let _ = writeln!(
                out,
                "  {check} {d}  {}  {}  ({})",
                human_bytes(f.size),
                f.path,
                f.checksum
            );
        }
    }
    out
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
