//! Adopting a folder in place: a model folder that exists without a completion marker for the
//! request (written by another tool, such as KServe's download Jobs, or an older version of
//! the same model) is checked where it lies instead of fetched again.
//!
//! A pull with [`PullRequest::adopt`] set checks each listed file at its path in the
//! destination: its size, then the store's own digests (sha256 or git sha1 for the Hub,
//! CRC, md5 or sha256 for S3 and GCS: whatever the listing vouches for; the size alone when
//! the listing gives no digest, as a fresh pull of such a file is verified by size only), read
//! at disk speed on every core, each file opened without following a symlink (`beneath`). Files that match are kept untouched: never rewritten, never moved. The others
//! are fetched into the staging directory as any pull's files are (journaled, resumable,
//! verified), then put in place so that the folder a pod may mount is never emptied:
//!
//! - when this process may write where they go, each is renamed over the file it replaces
//!   ([`Repair::InPlace`]);
//! - otherwise (the folder belongs to another user, or the model is one archive to unpack), a
//!   complete copy is built in staging, the matching files cloned into it (a reflink where
//!   the filesystem can) from descriptors opened without following any symlink, each copy
//!   checked again against the digests the check computed (a file changed since is fetched
//!   instead), and the two folders are exchanged in one atomic rename
//!   ([`Repair::Exchanged`]). Files the listing does not name stay in a folder repaired in
//!   place, and are not carried into an exchanged copy. The previous folder is left at
//!   `.NAME.modelpull-old-SECONDS` ([`Adoption::replaced`]) for the caller to remove once no
//!   reader needs it.
//!
//! The completion marker goes into the folder when it is writable, else it is recorded beside
//! it ([`read_marker`], `record`), so the next pull, and whoever asks whether the model is
//! there, finds the folder complete without reading it again. [`survey`] tells, before a pull,
//! how many bytes it still has to write.
//!
//! [`PullRequest::adopt`]: crate::PullRequest::adopt

pub(crate) mod beneath;
mod check;
mod folder;
mod record;

use std::collections::HashSet;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use crate::disk::staging::{FileRecord, Marker, SourceRecord, Staging, sync_dir, sync_dirs};
use crate::error::{Error, Result};
use crate::pull::{Context, Fetched, Options, PullRequest};
use crate::report::{Adoption, FileReport, Repair, Report};
use crate::target::Target;
use check::Verdict;

pub use record::{MARKERS, forget, read_marker, read_marker_matching, recorded_path};

/// What a folder holds for a list of targets, by size alone (nothing is read): what a pull
/// that adopts it will have to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Survey {
    /// Bytes of the files present at their listed size (still to be checked).
    pub present_bytes: u64,
    /// Bytes of the files missing or of another size.
    pub missing_bytes: u64,
    /// Whether every file can be renamed into the folder by this process (or there is no
    /// folder yet); when not, a repair builds a whole copy.
    pub writable: bool,
}

impl Survey {
    /// Bytes a pull that adopts the folder may need on the disk: the missing files, plus,
    /// when the folder is not writable, a copy of the present ones. Those are checked only
    /// by the pull: one that holds other bytes at its listed size is fetched, and then the
    /// folder is exchanged for a repaired copy (a reflink copies nothing, but whether the
    /// filesystem makes one is not known in advance).
    pub fn bytes_needed(&self) -> u64 {
        if self.writable {
            self.missing_bytes
        } else {
            self.missing_bytes + self.present_bytes
        }
    }
}

/// Surveys `dest` for `targets` (see [`Survey`]). A missing folder has every byte missing.
pub fn survey(targets: &[Target], dest: &Path) -> Survey {
    let mut s = Survey::default();
    for t in targets {
        let size = t.size.unwrap_or(0);
        let present = std::fs::symlink_metadata(dest.join(&t.path))
            .is_ok_and(|m| m.is_file() && t.size.is_some_and(|s| s == m.len()));
        if present {
            s.present_bytes += size;
        } else {
            s.missing_bytes += size;
        }
    }
    s.writable = std::fs::symlink_metadata(dest).is_err()
        || folder::can_swap(dest, targets.iter().map(|t| t.path.as_str()));
    s
}

/// The pull of `req` into a `req.dest` that exists: see the module documentation.
pub(crate) fn pull(
    req: &PullRequest,
    request: Vec<SourceRecord>,
    opts: &Options,
    cx: &Context,
    started: Instant,
) -> Result<Report> {
    let dest = &req.dest;
    let staging = Staging::open(dest)?;
    let mut marker = Marker::new(request, Vec::new());
    marker.sources.clone_from(&req.sources);

    if let Some(found) = read_marker_matching(dest, |m| m.request == marker.request)
        && found.files_present(dest)
    {
        tracing::info!(dest = %dest.display(), "already complete and verified; nothing to do");
        leave_aside(staging)?;
        return Ok(crate::pull::up_to_date_report(req, &found, started));
    }
    if let Some(built) = Marker::read(&staging.dir)
        && built.request == marker.request
        && built.files_present(&staging.dir)
    {
        tracing::info!(dest = %dest.display(), "finishing the exchange a stop interrupted");
        let adopted = Outcome::default();
        return exchange(req, staging, built, None, adopted, cx, started);
    }
    let archive = req.unpack
        && matches!(&req.targets[..], [t] if crate::archive::Kind::of(&t.path).is_some());
    let checked = Instant::now();
    let verdicts = if archive {
        // What the folder holds is the unpacked archive, which no listing vouches for.
        vec![Verdict::Fetch("the model is an archive to unpack".into()); 1]
    } else {
        check::check_all(dest, &req.targets, opts.cores, cx)?
    };
    let mut outcome = Outcome {
        verify_seconds: checked.elapsed().as_secs_f64(),
        ..Outcome::default()
    };
    let mut bad = Vec::new();
    for (t, v) in req.targets.iter().zip(verdicts) {
        match v {
            Verdict::Keep(record) => {
                outcome.adopted_bytes += record.size;
                outcome.kept.push(record);
            }
            Verdict::Fetch(why) => {
                tracing::info!(file = %t.path, reason = %why, "fetching a file the folder lacks or holds otherwise");
                bad.push(t.clone());
            }
        }
    }
    cx.progress
        .files_total
        .fetch_add(outcome.kept.len() as u64, Relaxed);
    cx.progress
        .files_done
        .fetch_add(outcome.kept.len() as u64, Relaxed);
    tracing::info!(
        dest = %dest.display(),
        adopted_files = outcome.kept.len(),
        adopted_bytes = outcome.adopted_bytes,
        fetch = bad.len(),
        seconds = outcome.verify_seconds,
        "checked the folder in place"
    );
    if bad.is_empty() {
        marker.files = in_target_order(&req.targets, outcome.kept.clone(), Vec::new());
        let at = record::write_marker(dest, &marker)?;
        staging.discard();
        cx.metrics.pulls.with_label_values(&["ok"]).inc();
        return Ok(outcome.report(req, cx, None, Repair::None, at, None, started));
    }
    let in_place = !archive && folder::can_swap(dest, bad.iter().map(|t| t.path.as_str()));
    if !in_place {
        clone_kept(dest, &staging, &req.targets, &mut outcome, &mut bad, cx)?;
    }
    let fetched = fetch(&staging, &bad, opts, cx)?;
    if in_place {
        for t in &bad {
            let from = staging.dir.join(&t.path);
            folder::swap_in(dest, &from, Path::new(&t.path))
                .map_err(|e| Error::local("rename", dest.join(&t.path), e))?;
        }
        marker.files = in_target_order(&req.targets, outcome.kept.clone(), fetched.records.clone());
        let at = record::write_marker(dest, &marker)?;
        staging.discard();
        cx.metrics.pulls.with_label_values(&["ok"]).inc();
        let report = outcome.report(req, cx, Some(&fetched), Repair::InPlace, at, None, started);
        return Ok(report);
    }
    let mut built = marker;
    built.files = in_target_order(&req.targets, outcome.kept.clone(), fetched.records.clone());
    if archive {
        built.files = fetched.records.clone();
        outcome.unpacked = crate::pull::unpack_single(&staging, &fetched.job.metas, &mut built)?;
    }
    exchange(req, staging, built, Some(fetched), outcome, cx, started)
}

/// What checking the folder kept, and how long it took.
#[derive(Debug, Default)]
struct Outcome {
    kept: Vec<FileRecord>,
    unpacked: Option<crate::report::Unpacked>,
    adopted_bytes: u64,
    verify_seconds: f64,
}

/// Fetches `targets` into the staging directory, which a full disk empties.
fn fetch(staging: &Staging, targets: &[Target], opts: &Options, cx: &Context) -> Result<Fetched> {
    crate::pull::fetch_into(staging, targets, opts, cx)
        .inspect_err(|err| free_if_full(staging, err))
}

/// Removes the staging directory when `err` is a full disk (or quota), to give its space back:
/// what it holds is worth less than a disk other writers can use.
fn free_if_full(staging: &Staging, err: &Error) {
    if crate::pull::is_disk_full(err) {
        tracing::info!(dir = %staging.dir.display(), "disk full: removing the staging directory to free its space");
        let _ = std::fs::remove_dir_all(&staging.dir);
    }
}

/// Clones the files the check kept into the staging directory, for an exchange, and checks
/// each copy again against what the check computed: the folder's owner may have changed a
/// file since, and only the copy, in this process's own folder, is what gets published. A
/// copy that no longer matches, or a file that can no longer be opened as it was, joins `bad`
/// to be fetched from the store instead.
fn clone_kept(
    dest: &Path,
    staging: &Staging,
    targets: &[Target],
    outcome: &mut Outcome,
    bad: &mut Vec<Target>,
    cx: &Context,
) -> Result<()> {
    let dir = beneath::open_dir(dest).map_err(|e| Error::local("open", dest, e))?;
    let mut buf = vec![0u8; check::READ];
    let mut still = Vec::with_capacity(outcome.kept.len());
    for record in std::mem::take(&mut outcome.kept) {
        let to = staging.dir.join(&record.path);
        let why = match check::open_file(dir.as_fd(), Path::new(&record.path)) {
            Ok(Some((from, _))) => {
                folder::clone_file(&from, &to)
                    .map_err(|e| Error::local("copy", &to, e))
                    .inspect_err(|err| free_if_full(staging, err))?;
                match check::copy_matches(&to, &record, &mut buf, cx) {
                    Ok(Some(true)) => None,
                    Ok(Some(false)) => Some("it changed after it was checked".to_owned()),
                    Ok(None) => return Err(Error::Interrupted),
                    Err(e) => return Err(Error::local("read", &to, e)),
                }
            }
            Ok(None) => Some("it is no longer a regular file".to_owned()),
            Err(e) => Some(format!("it can no longer be opened as it was checked: {e}")),
        };
        match why {
            None => still.push(record),
            Some(why) => {
                tracing::warn!(file = %record.path, reason = %why, "fetching a file the folder held when it was checked");
                let _ = std::fs::remove_file(&to);
                outcome.adopted_bytes -= record.size;
                cx.progress.files_total.fetch_sub(1, Relaxed);
                cx.progress.files_done.fetch_sub(1, Relaxed);
                bad.extend(targets.iter().find(|t| t.path == record.path).cloned());
            }
        }
    }
    outcome.kept = still;
    Ok(())
}

/// The records of every target, in the targets' order, from those kept and those fetched.
fn in_target_order(
    targets: &[Target],
    kept: Vec<FileRecord>,
    fetched: Vec<FileRecord>,
) -> Vec<FileRecord> {
    let mut by_path: std::collections::HashMap<String, FileRecord> = kept
        .into_iter()
        .chain(fetched)
        .map(|r| (r.path.clone(), r))
        .collect();
    targets
        .iter()
        .filter_map(|t| by_path.remove(&t.path))
        .collect()
}

/// Completes the copy in staging with clones of the kept files, writes its marker, exchanges
/// it with the destination and moves the previous folder aside.
fn exchange(
    req: &PullRequest,
    staging: Staging,
    built: Marker,
    fetched: Option<Fetched>,
    outcome: Outcome,
    cx: &Context,
    started: Instant,
) -> Result<Report> {
    let dest = &req.dest;
    let keep: HashSet<PathBuf> = built.files.iter().map(|f| PathBuf::from(&f.path)).collect();
    folder::prune(&staging.dir, &keep).map_err(|e| Error::local("clean", &staging.dir, e))?;
    if !built.files_present(&staging.dir) {
        return Err(Error::Runtime(format!(
            "the copy built in {} lacks files its marker lists",
            staging.dir.display()
        )));
    }
    let marker_path = staging.dir.join(crate::MARKER);
    let tmp = staging.dir.join(format!("{}.tmp", crate::MARKER));
    let json = serde_json::to_vec_pretty(&built).expect("marker serialises");
    crate::disk::staging::write_durably(&tmp, &json).map_err(|e| Error::local("write", &tmp, e))?;
    std::fs::rename(&tmp, &marker_path).map_err(|e| Error::local("rename", &tmp, e))?;
    sync_dirs(&staging.dir).map_err(|e| Error::local("flush", &staging.dir, e))?;
    folder::exchange(&staging.dir, dest)
        .map_err(|e| Error::local("exchange (renameat2)", dest, e))?;
    let aside = folder::aside_path(dest);
    std::fs::rename(&staging.dir, &aside).map_err(|e| Error::local("move aside", &aside, e))?;
    let parent = aside.parent().unwrap_or(Path::new("."));
    sync_dir(parent).map_err(|e| Error::local("flush", parent, e))?;
    forget(dest);
    staging.unlock();
    tracing::info!(dest = %dest.display(), previous = %aside.display(), "exchanged the folder for its verified copy");
    cx.metrics.pulls.with_label_values(&["ok"]).inc();
    let at = dest.join(crate::MARKER);
    Ok(outcome.report(
        req,
        cx,
        fetched.as_ref(),
        Repair::Exchanged,
        at,
        Some(aside),
        started,
    ))
}

/// Moves what the staging directory holds aside (the previous folder, when a stop came
/// between an exchange and its end; else leftovers no longer needed) for the caller to
/// collect, and releases the lock.
fn leave_aside(staging: Staging) -> Result<()> {
    let empty = std::fs::read_dir(&staging.dir).is_ok_and(|mut d| d.next().is_none());
    if empty {
        let _ = std::fs::remove_dir(&staging.dir);
    } else if staging.dir.exists() {
        let aside = folder::aside_path(&staging.dest);
        std::fs::rename(&staging.dir, &aside).map_err(|e| Error::local("move aside", &aside, e))?;
    }
    staging.unlock();
    Ok(())
}

impl Outcome {
    #[allow(clippy::too_many_arguments)]
    fn report(
        self,
        req: &PullRequest,
        cx: &Context,
        fetched: Option<&Fetched>,
        repair: Repair,
        marker: PathBuf,
        replaced: Option<PathBuf>,
        started: Instant,
    ) -> Report {
        let labels = |t: &Target| t.checksum.clone().unwrap_or_else(|| t.checksum_label());
        let kept = self.kept.iter().map(|r| {
            let t = req.targets.iter().find(|t| t.path == r.path);
            FileReport {
                path: r.path.clone(),
                size: r.size,
                digests: r.digests.clone(),
                verified: t.map_or_else(Vec::new, |t| {
                    t.expected.iter().map(|d| d.algorithm).collect()
                }),
                resumed_bytes: 0,
                checksum: t.map_or_else(String::new, labels),
            }
        });
        let files: Vec<FileReport> = kept
            .chain(fetched.iter().flat_map(|f| f.reports.iter().cloned()))
            .collect();
        let seconds = started.elapsed().as_secs_f64();
        let snap = cx.progress.snapshot();
        let fetched_bytes: u64 = fetched.map_or(0, |f| f.reports.iter().map(|r| r.size).sum());
        Report {
            destination: req.dest.clone(),
            up_to_date: false,
            driver: fetched.map(|f| f.driver),
            driver_note: fetched.and_then(|f| f.note.clone()),
            cores: fetched.map_or(0, |f| f.cores),
            connections: fetched
                .map(|f| f.job.host_connections())
                .unwrap_or_default(),
            total_bytes: files.iter().map(|f| f.size).sum(),
            downloaded_bytes: snap.downloaded_bytes,
            resumed_bytes: files.iter().map(|f| f.resumed_bytes).sum(),
            unpacked: self.unpacked,
            seconds,
            gigabytes_per_second: snap.downloaded_bytes as f64 / seconds.max(1e-9) / 1e9,
            retries: snap.retries,
            peak_buffer_bytes: fetched.map_or(0, |f| f.peak_buffer_bytes),
            adoption: Some(Adoption {
                adopted_files: self.kept.len(),
                adopted_bytes: self.adopted_bytes,
                fetched_files: fetched.map_or(0, |f| f.reports.len()),
                fetched_bytes,
                repair,
                replaced,
                marker,
                verify_seconds: self.verify_seconds,
            }),
            files,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(path: &str, size: u64) -> Target {
        let mut t = Target::parse(&format!("http://127.0.0.1:9/{path}")).unwrap();
        t.path = path.into();
        t.size = Some(size);
        t
    }

    fn record(path: &str, content: &[u8]) -> FileRecord {
        use sha2::Digest as _;
        FileRecord {
            path: path.into(),
            size: content.len() as u64,
            digests: vec![crate::digest::Digest {
                algorithm: crate::digest::Algorithm::Sha256,
                value: sha2::Sha256::digest(content).to_vec(),
            }],
        }
    }

    #[test]
    fn a_clone_publishes_only_what_was_checked() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("m");
        let outside = root.path().join("outside");
        std::fs::create_dir_all(dest.join("sub")).unwrap();
        std::fs::create_dir_all(outside.join("sub")).unwrap();
        for f in ["same", "token", "changed", "sub/b"] {
            std::fs::write(dest.join(f), b"weights").unwrap();
        }
        let staging = Staging::open(&dest).unwrap();
        let kept = ["same", "token", "changed", "sub/b"].map(|f| record(f, b"weights"));
        let targets: Vec<Target> = kept.iter().map(|r| target(&r.path, 7)).collect();
        let mut outcome = Outcome {
            adopted_bytes: 28,
            kept: kept.to_vec(),
            ..Outcome::default()
        };
        // Between the check and the clone, the folder's owner swaps a file for a symlink to a
        // file outside the root, a folder for one to a folder outside, and rewrites a file.
        std::fs::write(outside.join("token"), b"secrets").unwrap();
        std::fs::write(outside.join("sub/b"), b"weights").unwrap();
        std::fs::remove_file(dest.join("token")).unwrap();
        std::os::unix::fs::symlink(outside.join("token"), dest.join("token")).unwrap();
        std::fs::remove_dir_all(dest.join("sub")).unwrap();
        std::os::unix::fs::symlink(outside.join("sub"), dest.join("sub")).unwrap();
        std::fs::write(dest.join("changed"), b"WEIGHTS").unwrap();

        let mut bad = Vec::new();
        let cx = Context::default();
        clone_kept(&dest, &staging, &targets, &mut outcome, &mut bad, &cx).unwrap();
        let kept: Vec<&str> = outcome.kept.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(kept, ["same"]);
        let refetch: Vec<&str> = bad.iter().map(|t| t.path.as_str()).collect();
        assert_eq!(refetch, ["token", "changed", "sub/b"]);
        assert_eq!(outcome.adopted_bytes, 7);
        assert_eq!(std::fs::read(staging.dir.join("same")).unwrap(), b"weights");
        for f in ["token", "changed", "sub/b"] {
            assert!(!staging.dir.join(f).exists(), "{f} is not in the copy");
        }
    }

    #[test]
    fn a_survey_counts_what_is_there_at_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("m");
        let targets = [target("a", 3), target("sub/b", 5), target("c", 7)];
        assert_eq!(
            survey(&targets, &dest),
            Survey {
                present_bytes: 0,
                missing_bytes: 15,
                writable: true
            },
            "no folder: everything is missing"
        );
        std::fs::create_dir_all(dest.join("sub")).unwrap();
        std::fs::write(dest.join("a"), b"abc").unwrap();
        std::fs::write(dest.join("sub/b"), b"wrong size").unwrap();
        let s = survey(&targets, &dest);
        assert_eq!(
            (s.present_bytes, s.missing_bytes, s.writable),
            (3, 12, true)
        );
        assert_eq!(s.bytes_needed(), 12);
        let copied = Survey {
            writable: false,
            ..s
        };
        assert_eq!(
            copied.bytes_needed(),
            15,
            "a repair by exchange copies the rest"
        );
        let complete = Survey {
            missing_bytes: 0,
            ..s
        };
        assert_eq!(complete.bytes_needed(), 0);
        let unwritable = Survey {
            writable: false,
            ..complete
        };
        assert_eq!(
            unwritable.bytes_needed(),
            3,
            "a damaged file of the listed size forces a whole copy"
        );
    }

    #[test]
    fn a_survey_of_a_complete_folder_it_cannot_swap_into_counts_a_copy() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("m");
        std::fs::create_dir_all(dir.path().join("elsewhere")).unwrap();
        std::fs::create_dir(&dest).unwrap();
        std::fs::write(dest.join("a"), b"abc").unwrap();
        std::fs::write(dir.path().join("elsewhere/b"), b"defg").unwrap();
        // A folder on the way that no rename goes through (as one of another user's is not).
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), dest.join("sub")).unwrap();
        let s = survey(&[target("a", 3), target("sub/b", 4)], &dest);
        assert_eq!(
            (s.present_bytes, s.missing_bytes, s.writable),
            (7, 0, false)
        );
        assert_eq!(
            s.bytes_needed(),
            7,
            "nothing missing, yet a repair copies it all"
        );
    }

    #[test]
    fn a_full_disk_while_cloning_empties_the_staging_directory() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("m");
        let staging = Staging::open(&dest).unwrap();
        std::fs::write(staging.dir.join("partial"), b"x").unwrap();
        let other = Error::local("copy", &dest, std::io::Error::from_raw_os_error(libc::EIO));
        free_if_full(&staging, &other);
        assert!(staging.dir.join("partial").exists(), "kept for a retry");
        for code in [libc::ENOSPC, libc::EDQUOT] {
            std::fs::create_dir_all(&staging.dir).unwrap();
            let full = Error::local("copy", &dest, std::io::Error::from_raw_os_error(code));
            free_if_full(&staging, &full);
            assert!(!staging.dir.exists());
        }
    }
}
