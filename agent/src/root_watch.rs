//! The models root, waited for until it takes new files. KServe's DaemonSet mounts a hostPath
//! that `DirectoryOrCreate` creates owned by root, and runs its agent as uid 65532 (reference
//! §11): unless the node was prepared, the agent cannot create a single file there. Exiting
//! would only make a crash loop that says little. Instead the agent runs not ready, says once
//! what to fix (in its log, and as an Event on its Node, see [`crate::controller`]), checks
//! again with a capped backoff, and carries on as soon as the folder is fixed, without a
//! restart. Meanwhile the models already there are reported as they are: verifying a folder
//! only reads it. Models still to download are `ModelDownloadError` until then, as with
//! KServe's agent, whose download Job fails on the same folder.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::watch;

use crate::disk;
use crate::retry::Backoff;
use crate::server::Health;

/// The first wait before checking again; it doubles up to [`LONGEST_RETRY`].
pub const FIRST_RETRY: Duration = Duration::from_secs(5);
/// The longest wait between two checks.
pub const LONGEST_RETRY: Duration = Duration::from_secs(300);

/// Whether the models root takes new files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootState {
    Writable,
    Unwritable(Unwritable),
}

/// Why the models root refuses new files; its `Display` says what fixes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unwritable {
    /// The folder the agent needs to write to: `<root>/models`.
    pub models: PathBuf,
    /// The folder that refused: `models` itself, or the nearest existing folder above it when
    /// `models` could not be created.
    pub folder: PathBuf,
    /// Who the agent runs as.
    pub uid: u32,
    pub gid: u32,
    /// The folder's owner uid, gid and permission bits, when they can be read.
    pub owner: Option<(u32, u32, u32)>,
    /// What the system answered.
    pub error: String,
}

impl Unwritable {
    fn diagnose(models: &Path, error: &std::io::Error) -> Self {
        let folder = models
            .ancestors()
            .find(|p| p.is_dir())
            .unwrap_or(models)
            .to_owned();
        let owner = std::fs::metadata(&folder)
            .ok()
            .map(|m| (m.uid(), m.gid(), m.mode() & 0o7777));
        Self {
            models: models.to_owned(),
            folder,
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
            owner,
            error: error.to_string(),
        }
    }
}

impl std::fmt::Display for Unwritable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            models,
            folder,
            uid,
            gid,
            owner,
            error,
        } = self;
        let shown = models.display();
        write!(
            f,
            "cannot create files in {shown} as uid {uid} gid {gid}: {error}"
        )?;
        let owned = owner.map(|(owner_uid, owner_gid, mode)| {
            format!("owned by uid {owner_uid} gid {owner_gid}, mode {mode:o}")
        });
        match (folder == models, owned) {
            (true, Some(owned)) => write!(f, " ({owned})")?,
            (true, None) => {}
            (false, Some(owned)) => write!(
                f,
                " (there is no folder {shown}, and {}, {owned}, takes no new one)",
                folder.display()
            )?,
            (false, None) => write!(
                f,
                " (there is no folder {shown}, and {} takes no new one)",
                folder.display()
            )?,
        }
        write!(
            f,
            ". Fix: make it writable by uid {uid}: on the node, `chown -R {uid}:{gid}` the \
             hostPath folder mounted here (KServe's DaemonSet mounts /models, which Kubernetes \
             creates owned by root), or run an init container as root with `chown -R \
             {uid}:{gid} {shown}`; a pod fsGroup does not change a hostPath's owner"
        )
    }
}

/// Checks that `models` takes new files (creating it if missing).
pub fn check(models: &Path) -> RootState {
    match disk::check_writable(models) {
        Ok(()) => RootState::Writable,
        Err(e) => RootState::Unwritable(Unwritable::diagnose(models, &e)),
    }
}

/// The waits between checks: [`FIRST_RETRY`], doubling, at most [`LONGEST_RETRY`].
pub fn retry_delays() -> impl Iterator<Item = Duration> {
    let backoff = Backoff {
        base: FIRST_RETRY,
        cap: LONGEST_RETRY,
    };
    (1..).map(move |attempt| backoff.after(attempt))
}

/// The state of the models root, as the controller reads it.
#[derive(Debug, Clone)]
pub struct RootWatch {
    rx: watch::Receiver<RootState>,
}

impl RootWatch {
    /// Checks `models` now and sets `health` from the answer. When it refuses new files, says
    /// once why and what to do, then checks again in the background after each of [`retry_delays`]
    /// until it takes them: then `health` turns ready and `on_writable` is called (to start
    /// a reconcile). Must be called within a tokio runtime.
    pub fn start(
        models: &Path,
        health: Health,
        on_writable: impl FnOnce() + Send + 'static,
    ) -> Self {
        let state = check(models);
        health
            .models_root_writable
            .store(state == RootState::Writable, Relaxed);
        let (tx, rx) = watch::channel(state.clone());
        if let RootState::Unwritable(why) = state {
            tracing::error!(
                "{why}. Not ready; models already downloaded are still reported; checking again in {} s, then less often (up to every {} s), no restart needed",
                FIRST_RETRY.as_secs(),
                LONGEST_RETRY.as_secs()
            );
            let models = models.to_owned();
            tokio::spawn(async move {
                for delay in retry_delays() {
                    tokio::time::sleep(delay).await;
                    match check(&models) {
                        RootState::Writable => {
                            health.models_root_writable.store(true, Relaxed);
                            tracing::info!(folder = %models.display(), "the models root takes new files now; downloading");
                            let _ = tx.send(RootState::Writable);
                            on_writable();
                            return;
                        }
                        RootState::Unwritable(why) => {
                            tracing::debug!(error = %why.error, "the models root still refuses new files")
                        }
                    }
                }
            });
        }
        Self { rx }
    }

    /// A root already known to be writable (opened with [`disk::Root::open`]).
    pub fn writable() -> Self {
        let (_, rx) = watch::channel(RootState::Writable);
        Self { rx }
    }

    /// The state now.
    pub fn state(&self) -> RootState {
        self.rx.borrow().clone()
    }

    pub fn is_writable(&self) -> bool {
        *self.rx.borrow() == RootState::Writable
    }

    /// Resolves once the root is writable (at once when it is); never when it stays not.
    pub async fn until_writable(&mut self) {
        if self
            .rx
            .wait_for(|s| *s == RootState::Writable)
            .await
            .is_err()
        {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use super::*;

    #[test]
    fn waits_double_up_to_five_minutes() {
        let secs: Vec<u64> = retry_delays().take(9).map(|d| d.as_secs()).collect();
        assert_eq!(secs, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
    }

    #[test]
    fn the_message_names_the_folder_its_owner_and_the_fix() {
        let why = Unwritable {
            models: "/mnt/models/models".into(),
            folder: "/mnt/models/models".into(),
            uid: 65532,
            gid: 65532,
            owner: Some((0, 0, 0o755)),
            error: "Permission denied (os error 13)".into(),
        };
        let text = why.to_string();
        assert!(
            text.starts_with(
                "cannot create files in /mnt/models/models as uid 65532 gid 65532: Permission \
                 denied (os error 13) (owned by uid 0 gid 0, mode 755). Fix: "
            ),
            "{text}"
        );
        assert!(text.contains("`chown -R 65532:65532`"), "{text}");
        assert!(text.contains("fsGroup"), "{text}");
        // An Event's note holds at most 1 kB.
        assert!(text.len() < 1024, "{}", text.len());
    }

    #[tokio::test(start_paused = true)]
    async fn becomes_ready_once_the_root_takes_files() {
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().join("models");
        // A file where the folder should be: refused even to root, as the tests run.
        std::fs::write(&models, b"in the way").unwrap();
        let health = Health::default();
        health.ready.store(true, Relaxed);
        let woken = Arc::new(AtomicBool::new(false));
        let mut watch = {
            let woken = woken.clone();
            RootWatch::start(&models, health.clone(), move || woken.store(true, Relaxed))
        };
        let RootState::Unwritable(why) = watch.state() else {
            panic!("a file in the way is not a folder");
        };
        assert_eq!(why.folder, dir.path());
        assert_eq!(why.models, models);
        let text = why.to_string();
        assert!(
            text.starts_with(&format!(
                "cannot create files in {} as uid ",
                models.display()
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "chown -R {}:{} {}`",
                why.uid,
                why.gid,
                models.display()
            )),
            "{text}"
        );
        assert!(!health.models_root_writable.load(Relaxed));

        // Still in the way at the first check again (5 s): nothing changes.
        tokio::time::sleep(FIRST_RETRY + Duration::from_millis(1)).await;
        assert!(!watch.is_writable());
        std::fs::remove_file(&models).unwrap();
        // Fixed before the next check (10 s later).
        tokio::time::timeout(
            2 * FIRST_RETRY + Duration::from_secs(1),
            watch.until_writable(),
        )
        .await
        .expect("writable at the second check");
        assert!(health.models_root_writable.load(Relaxed));
        assert!(woken.load(Relaxed), "a reconcile is started");
        assert!(models.is_dir());
    }

    #[tokio::test]
    async fn a_writable_root_is_ready_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let health = Health::default();
        let watch = RootWatch::start(&dir.path().join("models"), health.clone(), || {
            panic!("nothing to wait for")
        });
        assert!(watch.is_writable());
        assert!(health.models_root_writable.load(Relaxed));
    }
}
