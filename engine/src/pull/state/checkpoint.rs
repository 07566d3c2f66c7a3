//! Checkpoints: when a file's journal vouches for what is on disk.
//!
//! Each chunk is journaled as it is written, but the part file is not flushed per chunk. Every
//! `Options::checkpoint_interval` the part is flushed and a sync record says how many chunk
//! records are durable, with the ordered digests' state at that point, so a resumed pull
//! trusts those chunks without reading them and hashes on from the saved cursor.

use std::time::Instant;

use super::{FileState, Job};
use crate::digest::ordered::OrderedHashers;
use crate::disk::journal::Record;
use crate::error::Error;

impl Job {
    /// Whether a file's next checkpoint is due: none is being written, and the interval has
    /// passed since the last.
    pub(super) fn checkpoint_due(&self, fs: &FileState) -> bool {
        !fs.syncing && fs.last_sync.elapsed() >= self.opts.checkpoint_interval
    }

    /// Writes a checkpoint after the part was flushed: the first `records` chunk records are
    /// durable, and the ordered digests stood at `hash`.
    pub fn checkpoint_done(
        &self,
        file: usize,
        generation: u32,
        records: u64,
        hash: Option<&OrderedHashers>,
    ) -> Result<(), Error> {
        let meta = &self.metas[file];
        let mut st = self.lock();
        let fs = &mut st.files[file];
        if fs.generation != generation {
            return Ok(());
        }
        fs.syncing = false;
        fs.last_sync = Instant::now();
        if let Some(j) = fs.journal.as_mut() {
            j.append(&Record::Sync {
                records,
                hash: hash.map(OrderedHashers::save),
            })
            .map_err(|e| Error::local("write", &meta.journal, e))?;
        }
        Ok(())
    }
}
