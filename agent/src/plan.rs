//! The reconcile decision, as a pure function: the node's spec, what is on disk and what the
//! downloads are doing in, the status to report and the downloads to start out. Everything
//! with side effects (the API server, the disk, the engine) lives elsewhere, so every case of
//! KServe's decision table, and every place this agent departs from it, is a unit test here.
//!
//! Departures from KServe (reference §4.1, §14): a folder counts as downloaded only with a
//! matching completion marker, never because it merely exists (a folder without one, such as
//! KServe's, is adopted: checked in place, only what differs fetched); a failed download is retried
//! with backoff instead of waiting for a human (unless its input is bad: then it waits for
//! its entry or the spec to change); an invalid entry gets an error status of its own instead
//! of failing the whole node.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use crate::crd::{LocalModelInfo, ModelStatus};
use crate::keys;

/// What is on disk for a storage key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disk {
    /// Published with a completion marker for this URI, every file present at its size.
    Verified,
    /// Nothing there.
    Absent,
    /// A folder without a matching marker: partial, damaged or foreign to this URI.
    Unverified,
}

/// What the download of a storage key is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Download {
    Queued,
    /// Running; `bytes` received so far.
    Running {
        bytes: u64,
    },
    /// Failed; tried again once `retry_at` has passed, or, when `None` (bad input), once the
    /// downloads are told that its entry or the spec changed.
    Failed {
        retry_at: Option<Instant>,
    },
}

/// A download to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    pub storage_key: String,
    pub entry: LocalModelInfo,
    /// A folder without a valid marker is there: the download checks it in place and keeps
    /// the files that match.
    pub adopt: bool,
}

/// An entry that cannot be served as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub status_key: String,
    /// The storage key its URI would have (it names the entry in Events).
    pub storage_key: String,
    pub reason: keys::InvalidEntry,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub status: BTreeMap<String, ModelStatus>,
    pub start: Vec<Start>,
    /// Storage keys the spec asks for (everything else may be collected).
    pub wanted: BTreeSet<String>,
    /// Storage keys of the spec whose folder is verified (a folder a repair replaced may go).
    pub verified: BTreeSet<String>,
    pub invalid: Vec<Invalid>,
}

/// Decides the status of every entry and which downloads to start.
pub fn plan(
    entries: &[LocalModelInfo],
    disk: impl Fn(&str) -> Disk,
    downloads: &BTreeMap<String, Download>,
    now: Instant,
) -> Plan {
    let mut out = Plan::default();
    let mut by_key: BTreeMap<String, ModelStatus> = BTreeMap::new();
    for entry in entries {
        let status_key = keys::status_key(entry);
        if let Err(reason) = keys::check_entry(entry) {
            out.status.insert(status_key.clone(), ModelStatus::Error);
            out.invalid.push(Invalid {
                status_key,
                storage_key: keys::storage_key(&entry.source_model_uri),
                reason,
            });
            continue;
        }
        let key = keys::storage_key(&entry.source_model_uri);
        out.wanted.insert(key.clone());
        // The same URI twice is one download; every entry gets its status.
        if let Some(status) = by_key.get(&key) {
            out.status.insert(status_key, *status);
            continue;
        }
        let on_disk = disk(&key);
        if on_disk == Disk::Verified {
            out.verified.insert(key.clone());
        }
        let status = match (on_disk, downloads.get(&key)) {
            (_, Some(Download::Running { bytes })) if *bytes > 0 => ModelStatus::Downloading,
            (_, Some(Download::Running { .. } | Download::Queued)) => ModelStatus::Pending,
            (Disk::Verified, _) => ModelStatus::Downloaded,
            (_, Some(Download::Failed { retry_at })) if retry_at.is_none_or(|at| at > now) => {
                ModelStatus::Error
            }
            (on_disk, _) => {
                out.start.push(Start {
                    storage_key: key.clone(),
                    entry: entry.clone(),
                    adopt: on_disk == Disk::Unverified,
                });
                ModelStatus::Pending
            }
        };
        by_key.insert(key, status);
        out.status.insert(status_key, status);
    }
    out
}

/// The merge patch turning `old` into `new`: changed and new keys with their value, removed
/// keys with `null`; `None` when nothing changed.
pub fn status_patch(
    old: &BTreeMap<String, ModelStatus>,
    new: &BTreeMap<String, ModelStatus>,
) -> Option<serde_json::Value> {
    let mut changes = serde_json::Map::new();
    for (k, v) in new {
        if old.get(k) != Some(v) {
            changes.insert(k.clone(), serde_json::Value::from(v.as_str()));
        }
    }
    for k in old.keys().filter(|k| !new.contains_key(*k)) {
        changes.insert(k.clone(), serde_json::Value::Null);
    }
    (!changes.is_empty()).then(|| serde_json::json!({ "status": { "modelStatus": changes } }))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn entry(name: &str, uri: &str) -> LocalModelInfo {
        LocalModelInfo {
            source_model_uri: uri.into(),
            model_name: name.into(),
            ..Default::default()
        }
    }

    fn run(
        entries: &[LocalModelInfo],
        disk: &[(&str, Disk)],
        downloads: &[(&str, Download)],
    ) -> Plan {
        let disk: BTreeMap<String, Disk> = disk
            .iter()
            .map(|(uri, d)| (keys::storage_key(uri), *d))
            .collect();
        let downloads: BTreeMap<String, Download> = downloads
            .iter()
            .map(|(uri, d)| (keys::storage_key(uri), d.clone()))
            .collect();
        plan(
            entries,
            |k| disk.get(k).copied().unwrap_or(Disk::Absent),
            &downloads,
            Instant::now(),
        )
    }

    #[test]
    fn new_models_start_and_verified_ones_stay() {
        let p = run(
            &[entry("a", "hf://o/a"), entry("b", "s3://b/m")],
            &[("s3://b/m", Disk::Verified)],
            &[],
        );
        assert_eq!(p.status["a"], ModelStatus::Pending);
        assert_eq!(p.status["b"], ModelStatus::Downloaded);
        assert_eq!(p.start.len(), 1);
        assert_eq!(p.start[0].entry.model_name, "a");
        assert!(!p.start[0].adopt);
        assert_eq!(p.verified, [keys::storage_key("s3://b/m")].into());
    }

    #[test]
    fn an_unverified_folder_is_adopted() {
        // KServe: an existing (even empty) folder counts as downloaded. Here it is checked.
        let p = run(
            &[entry("a", "hf://o/a")],
            &[("hf://o/a", Disk::Unverified)],
            &[],
        );
        assert_eq!(p.status["a"], ModelStatus::Pending);
        assert!(p.start[0].adopt);
        assert!(p.verified.is_empty());
    }

    #[test]
    fn running_and_failed_downloads() {
        let later = Instant::now() + Duration::from_secs(60);
        let failed = Download::Failed {
            retry_at: Some(later),
        };
        let p = run(
            &[
                entry("q", "hf://o/q"),
                entry("r", "hf://o/r"),
                entry("f", "hf://o/f"),
            ],
            &[],
            &[
                ("hf://o/q", Download::Queued),
                ("hf://o/r", Download::Running { bytes: 10 }),
                ("hf://o/f", failed),
            ],
        );
        assert_eq!(p.status["q"], ModelStatus::Pending);
        assert_eq!(p.status["r"], ModelStatus::Downloading);
        assert_eq!(p.status["f"], ModelStatus::Error);
        assert!(p.start.is_empty(), "nothing new while the backoff runs");

        // After the backoff the download is tried again (KServe waits for a human).
        let retry = Download::Failed {
            retry_at: Some(Instant::now() - Duration::from_secs(1)),
        };
        let p = run(&[entry("f", "hf://o/f")], &[], &[("hf://o/f", retry)]);
        assert_eq!(p.status["f"], ModelStatus::Pending);
        assert_eq!(p.start.len(), 1);

        // Bad input waits for a change, however long ago it failed; a verified folder wins.
        let waits = Download::Failed { retry_at: None };
        let p = run(
            &[entry("f", "hf://o/f"), entry("v", "hf://o/v")],
            &[("hf://o/v", Disk::Verified)],
            &[("hf://o/f", waits.clone()), ("hf://o/v", waits)],
        );
        assert_eq!(p.status["f"], ModelStatus::Error);
        assert_eq!(p.status["v"], ModelStatus::Downloaded);
        assert!(p.start.is_empty());
    }

    #[test]
    fn the_same_uri_twice_is_one_download() {
        let mut ns = entry("llama", "hf://o/llama");
        ns.namespace = Some("team-a".into());
        let p = run(&[entry("llama", "hf://o/llama"), ns], &[], &[]);
        assert_eq!(p.start.len(), 1);
        assert_eq!(p.status["llama"], ModelStatus::Pending);
        assert_eq!(p.status["team-a/llama"], ModelStatus::Pending);
        assert_eq!(p.wanted.len(), 1);
    }

    #[test]
    fn invalid_entries_get_an_error_of_their_own() {
        let p = run(
            &[entry("a/../b", "hf://o/a"), entry("ok", "hf://o/ok")],
            &[],
            &[],
        );
        assert_eq!(p.status["a/../b"], ModelStatus::Error);
        assert_eq!(p.invalid.len(), 1);
        assert_eq!(p.status["ok"], ModelStatus::Pending);
        assert_eq!(p.wanted.len(), 1, "an invalid entry protects no folder");
    }

    #[test]
    fn empty_and_large_specs() {
        assert_eq!(run(&[], &[], &[]), Plan::default());
        let many: Vec<_> = (0..1000)
            .map(|i| entry(&format!("m{i}"), &format!("s3://b/m{i}")))
            .collect();
        let p = run(&many, &[], &[]);
        assert_eq!(p.status.len(), 1000);
        assert_eq!(p.start.len(), 1000);
    }

    #[test]
    fn patches_carry_only_changes() {
        let old: BTreeMap<String, ModelStatus> = [
            ("a".to_owned(), ModelStatus::Pending),
            ("gone".to_owned(), ModelStatus::Downloaded),
            ("same".to_owned(), ModelStatus::Downloaded),
        ]
        .into();
        let new: BTreeMap<String, ModelStatus> = [
            ("a".to_owned(), ModelStatus::Downloading),
            ("same".to_owned(), ModelStatus::Downloaded),
        ]
        .into();
        assert_eq!(
            status_patch(&old, &new).unwrap(),
            serde_json::json!({"status": {"modelStatus": {"a": "ModelDownloading", "gone": null}}})
        );
        assert_eq!(status_patch(&new, &new), None);
    }
}
