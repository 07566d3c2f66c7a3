//! Checkpoints: when a file's journal vouches for what is on disk.
//!
//! Each chunk is journaled as it is written, but the part file is not flushed per chunk. Every
//! `Options::checkpoint_interval` the part is flushed and a sync record says how many chunk
//! records are durable, with the ordered digests' state at that point, so a resumed pull
//! trusts those chunks without reading them and hashes on from the saved cursor.

use std::time::Instant;

use super::{FileState, Job, Phase};
use crate::digest::ordered::OrderedHashers;
use crate::disk::journal::Record;
use crate::error::Error;

impl Job {
    /// Whether a file's next checkpoint is due: none is being written, and the interval has
    /// passed since the last.
    pub(super) fn checkpoint_due(&self, fs: &FileState) -> bool {
        !fs.syncing && fs.last_sync.elapsed() >= self.opts.checkpoint_interval
    }

    /// A file whose chunks wait for a checkpoint the hasher cannot write, as
    /// `(file, generation, records)`: its cursor waits for a chunk still to come while chunks
    /// past it are on disk, unflushed, for twice the interval. A resumed pull and the peers
    /// reading a pull in progress trust only flushed chunks; in a node group each node's cursor
    /// may wait for a chunk another node fetches, so without this two nodes could each wait for
    /// the other's flush. The checkpoint is written without a digest state.
    pub fn idle_checkpoint(&self) -> Option<(usize, u32, u64)> {
        let mut st = self.lock();
        let interval = self.opts.checkpoint_interval * 2;
        st.files.iter_mut().enumerate().find_map(|(i, fs)| {
            let idle = fs.phase == Phase::Active
                && fs.journal.is_some()
                && fs.records > fs.synced_records
                && !fs.syncing
                && fs.last_sync.elapsed() >= interval;
            idle.then(|| {
                fs.syncing = true;
                (i, fs.generation, fs.records)
            })
        })
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
        fs.synced_records = records;
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
