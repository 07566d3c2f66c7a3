//! The bounded set of chunk buffers: the engine's memory bound.
//!
//! A worker holds one buffer while it has a connection's work, taken within the bound (a
//! worker that finds none waits, and so does the connection it would open). A chunk that
//! arrives ahead of its file's hash cursor may be parked in memory only if a replacement
//! buffer can be had within the bound; otherwise it stays on disk and the hasher reads it back
//! when the cursor gets there. Parked chunks are given up to connections that need a buffer.
//! So memory never exceeds the bound, however many connections the tuners allow. Several
//! pulls of one process may share one pool ([`SharedBuffers`]): one bound over all of them.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::buf::AlignedBuf;

#[derive(Debug)]
pub struct BufPool {
    size: usize,
    max: usize,
    inner: Mutex<Inner>,
    /// Pulls drawing from the pool now (see [`BufPool::share`]).
    pulls: AtomicUsize,
}

#[derive(Debug, Default)]
struct Inner {
    free: Vec<AlignedBuf>,
    allocated: usize,
}

impl BufPool {
    /// A pool of at most `max` buffers of `size` bytes.
    pub fn new(size: usize, max: usize) -> Self {
        Self {
            size,
            max,
            inner: Mutex::new(Inner::default()),
            pulls: AtomicUsize::new(0),
        }
    }

    /// The size of each buffer.
    pub fn buffer_size(&self) -> usize {
        self.size
    }

    /// A pull starts drawing from the pool; [`BufPool::leave`] when it ends.
    pub fn join(&self) {
        self.pulls.fetch_add(1, Relaxed);
    }

    /// A pull that [joined](BufPool::join) has ended.
    pub fn leave(&self) {
        self.pulls.fetch_sub(1, Relaxed);
    }

    /// What one pull may hold: the whole pool, or an even share of it while several pulls
    /// draw from it, so one pull's many slow connections or parked chunks never starve
    /// another's; three buffers (what one connection needs) at least.
    pub fn share(&self) -> usize {
        (self.max / self.pulls.load(Relaxed).max(1)).max(3)
    }

    /// A buffer whose slot was freed by the loss of another: a step that failed consumed the
    /// buffer it was given (an error path of a worker). Within the bound, as it replaces one.
    pub fn replace_lost(&self) -> AlignedBuf {
        let mut inner = self.inner.lock().expect("pool lock");
        inner.allocated = inner.allocated.saturating_sub(1);
        self.take(inner)
    }

    /// A buffer whatever the bound (tests only: the engine takes buffers within it).
    #[cfg(test)]
    pub fn get(&self) -> AlignedBuf {
        self.take(self.inner.lock().expect("pool lock"))
    }

    /// A replacement buffer if one fits within the bound.
    pub fn try_get(&self) -> Option<AlignedBuf> {
        let inner = self.inner.lock().expect("pool lock");
        if inner.free.is_empty() && inner.allocated >= self.max {
            return None;
        }
        Some(self.take(inner))
    }

    /// A buffer to park a chunk in: [`BufPool::try_get`], but only while a quarter of the
    /// bound (two buffers at least) stays free for connections, so chunks waiting for a hash
    /// cursor never starve the connections of this pull or of another sharing the pool.
    pub fn try_get_spare(&self) -> Option<AlignedBuf> {
        let inner = self.inner.lock().expect("pool lock");
        let held = inner.allocated - inner.free.len();
        if held + (self.max / 4).max(2) >= self.max {
            return None;
        }
        Some(self.take(inner))
    }

    /// A free buffer, or a new one counted in `allocated`; the lock is released before a new
    /// buffer is allocated.
    fn take(&self, mut inner: MutexGuard<'_, Inner>) -> AlignedBuf {
        if let Some(mut b) = inner.free.pop() {
            b.set_len(0);
            return b;
        }
        inner.allocated += 1;
        drop(inner);
        AlignedBuf::new(self.size)
    }

    pub fn put(&self, buf: AlignedBuf) {
        if buf.capacity() != crate::buf::align_up(self.size) {
            return;
        }
        self.inner.lock().expect("pool lock").free.push(buf);
    }

    /// Buffers allocated so far (the high-water mark: buffers are reused, not freed).
    pub fn allocated(&self) -> usize {
        self.inner.lock().expect("pool lock").allocated
    }
}

/// Chunk buffers shared by the pulls of one process (the agent's downloads): one memory bound
/// over all of them, where each pull would otherwise get a fixed slice. Set it as
/// [`Options::shared_buffers`](crate::Options::shared_buffers) of every pull.
#[derive(Debug, Clone)]
pub struct SharedBuffers(pub(crate) Arc<BufPool>);

impl SharedBuffers {
    /// The buffers `opts` ask for (`chunk_size` each, `memory_limit` in all), for every
    /// pull to share.
    pub fn new(opts: &crate::Options) -> Self {
        Self(Arc::new(BufPool::new(opts.chunk_size, opts.buffers())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded() {
        let pool = BufPool::new(4096, 2);
        let a = pool.get();
        let b = pool.try_get().unwrap();
        assert!(pool.try_get().is_none());
        pool.put(a);
        assert!(pool.try_get().is_some());
        pool.put(b);
        assert_eq!(pool.allocated(), 2);
    }

    #[test]
    fn a_lost_buffer_gives_its_slot_to_its_replacement() {
        let pool = BufPool::new(4096, 2);
        let a = pool.try_get().unwrap();
        let _b = pool.try_get().unwrap();
        drop(a);
        let _c = pool.replace_lost();
        assert_eq!(pool.allocated(), 2);
        assert!(pool.try_get().is_none());
    }

    #[test]
    fn pulls_sharing_the_pool_get_even_shares() {
        let pool = BufPool::new(4096, 12);
        assert_eq!(pool.share(), 12);
        pool.join();
        pool.join();
        assert_eq!(pool.share(), 6);
        pool.join();
        pool.join();
        pool.join();
        assert_eq!(pool.share(), 3, "never below one connection's three");
        (0..4).for_each(|_| pool.leave());
        assert_eq!(pool.share(), 12);
    }

    #[test]
    fn parking_leaves_a_quarter_for_connections() {
        let pool = BufPool::new(4096, 12);
        let held: Vec<_> = std::iter::from_fn(|| pool.try_get_spare()).collect();
        assert_eq!(held.len(), 9);
        // Connections still get the rest.
        assert!((0..3).all(|_| pool.try_get().is_some()));
        assert!(pool.try_get().is_none());
    }
}
