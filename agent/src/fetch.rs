//! Fetching one model into its folder: the only part of a download that talks to a store and
//! writes model bytes. It sits behind the [`Fetch`] trait so that the downloads' bookkeeping
//! ([`crate::jobs::Downloads`]) and the controller run in tests against a fake;
//! [`crate::jobs::Engine`] is the real one.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use modelpull::progress::Progress;
use modelpull::store::Env;

use crate::crd::LocalModelInfo;
use crate::error::Error;

/// One model to fetch.
#[derive(Debug, Clone, Copy)]
pub struct Order<'a> {
    /// Its storage key: the model goes to `models/<key>`.
    pub key: &'a str,
    pub entry: &'a LocalModelInfo,
    /// Its credentials and the node's proxy settings.
    pub env: &'a Env,
    /// Set to stop; the fetch then ends early, its partial work kept for a resume.
    pub cancel: &'a Arc<AtomicBool>,
    /// Where the fetch reports the bytes done so far.
    pub progress: &'a Arc<Progress>,
}

/// What a finished fetch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pulled {
    /// Bytes of the model.
    pub bytes: u64,
    /// Of them, bytes found in the folder already (KServe's, or an older version's), checked
    /// against the store's digests and kept where they lay.
    pub adopted_bytes: u64,
}

/// Fetches a model into `models/<key>`, verified and published. Blocks until done, failed or
/// cancelled.
pub trait Fetch: Send + Sync + std::fmt::Debug {
    fn fetch(&self, order: Order<'_>) -> Result<Pulled, Error>;
}

#[cfg(test)]
pub(crate) mod fake {
    //! A [`Fetch`] that runs a test's closure instead of a store and the engine.

    use std::path::Path;

    use modelpull::{MARKER, Marker};

    use super::*;

    struct FnFetch<F>(F);

    impl<F> std::fmt::Debug for FnFetch<F> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("FnFetch")
        }
    }

    impl<F: Fn(Order<'_>) -> Result<Pulled, Error> + Send + Sync> Fetch for FnFetch<F> {
        fn fetch(&self, order: Order<'_>) -> Result<Pulled, Error> {
            (self.0)(order)
        }
    }

    pub(crate) fn fetch(
        f: impl Fn(Order<'_>) -> Result<Pulled, Error> + Send + Sync + 'static,
    ) -> Arc<dyn Fetch> {
        Arc::new(FnFetch(f))
    }

    /// Leaves `models/<key>` as a finished pull does: a folder with a completion marker that
    /// names `uri`.
    pub(crate) fn publish(models: &Path, key: &str, uri: &str) {
        let folder = models.join(key);
        std::fs::create_dir_all(&folder).unwrap();
        let mut marker = Marker::new(Vec::new(), Vec::new());
        marker.sources = vec![modelpull::redact_str(uri)];
        std::fs::write(folder.join(MARKER), serde_json::to_vec(&marker).unwrap()).unwrap();
    }
}
