//! What a file's first answer sets up.
//!
//! A new file's probe tells its size, validator and whether the server honours `Range`: the
//! file gets its chunks, part file and journal, and its ranges are queued. A resumed file's
//! first answer only has to confirm that the server still has the same object. Either answer
//! may come from the URL a redirect led to, where later requests go until it stops working.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use url::Url;

use super::verify::UNKNOWN_SOURCE;
use super::{ActiveRange, Claim, Job, Phase};
use crate::digest::ordered::OrderedHashers;
use crate::disk::journal::{self, Header, Journal};
use crate::disk::part;
use crate::error::Error;
use crate::pull::plan;

impl Job {
    /// A new file's probe answered: sets up its chunks, part file and journal, queues the
    /// remaining ranges, and registers the probe's own span as in flight.
    /// Returns the span `[0, end)` the probe response carries (none when the probe only asked
    /// for the size: its file has mirrors to fetch from).
    pub fn start_file(
        &self,
        claim: &Claim,
        size: u64,
        validator: String,
        url: Url,
        ranged: bool,
    ) -> Result<u64, Error> {
        let meta = &self.metas[claim.file];
        let direct = part::create(&meta.part, Some(size))
            .map_err(|e| Error::local("create", &meta.part, e))?;
        let chunk = self.chunk_size();
        let header = Header {
            version: journal::VERSION,
            source: meta.source.clone(),
            size,
            validator: validator.clone(),
            chunk_size: chunk,
            algorithms: meta.algorithms(),
        };
        // A rewrite a crash interrupted (see `Journal::replace`) has nothing left to give.
        let _ = std::fs::remove_file(Journal::temp_path(&meta.journal));
        let journal = Journal::create(&meta.journal, &header)
            .map_err(|e| Error::local("create", &meta.journal, e))?;
        let mut st = self.lock();
        let fs = &mut st.files[claim.file];
        if fs.generation != claim.generation {
            return Ok(0);
        }
        let chunks = size.div_ceil(chunk);
        fs.size = size;
        fs.chunks = chunks;
        fs.validator = validator;
        fs.direct = direct;
        fs.ranged = ranged;
        fs.url = url;
        fs.done = vec![false; chunks as usize];
        fs.done_count = 0;
        fs.crcs = vec![vec![0; chunks as usize]; meta.crcs.len()];
        fs.served = vec![UNKNOWN_SOURCE; chunks as usize];
        fs.cursor = 0;
        fs.hashers = Some(OrderedHashers::new(meta.ordered.iter().copied(), size));
        fs.unwritten.clear();
        fs.journal = Some(journal);
        fs.records = 0;
        fs.synced_records = 0;
        fs.last_sync = Instant::now();
        fs.downloads += 1;
        fs.phase = Phase::Active;
        let first_end = if ranged {
            claim.end.min(chunks)
        } else {
            chunks
        };
        if first_end > 0 {
            fs.active.push(ActiveRange {
                id: claim.id,
                next: 0,
                end: first_end,
                since: Instant::now(),
            });
        }
        fs.queue(plan::ranges(first_end, chunks, self.range_chunks(), |_| {
            false
        }));
        self.progress.total_bytes.fetch_add(size, Relaxed);
        Ok(first_end)
    }

    /// A resumed file's first answer matched its journal: back to normal work. The validating
    /// claim's span (if any) becomes a range in flight.
    pub fn validated(&self, claim: &Claim, url: Url) {
        let mut st = self.lock();
        let fs = &mut st.files[claim.file];
        if fs.generation != claim.generation {
            return;
        }
        fs.phase = Phase::Active;
        fs.url = url;
        fs.probe_attempts = 0;
        if claim.end > claim.start {
            fs.active.push(ActiveRange {
                id: claim.id,
                next: claim.start,
                end: claim.end,
                since: Instant::now(),
            });
        }
    }

    /// Sends later requests for a file back to its source URL (a redirect target expired).
    pub fn reset_url(&self, file: usize) -> bool {
        let mut st = self.lock();
        let fs = &mut st.files[file];
        let original = &self.metas[file].target.url;
        if &fs.url == original {
            return false;
        }
        fs.url = original.clone();
        true
    }
}
