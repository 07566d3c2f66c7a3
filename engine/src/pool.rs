//! The bounded set of chunk buffers: the engine's memory bound.
//!
//! Every worker owns one buffer. A chunk that arrives ahead of its file's hash cursor may be
//! parked in memory only if a replacement buffer can be had within the bound; otherwise it
//! stays on disk and the hasher reads it back when the cursor gets there. So memory never
//! exceeds the bound and no worker ever waits for a buffer.

use std::sync::Mutex;

use crate::buf::AlignedBuf;

#[derive(Debug)]
pub struct BufPool {
    size: usize,
    max: usize,
    inner: Mutex<Inner>,
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
        }
    }

    /// A buffer for a worker. Workers are counted in the bound when the pool is sized, so
    /// this always succeeds.
    pub fn get(&self) -> AlignedBuf {
        let mut inner = self.inner.lock().expect("pool lock");
        if let Some(mut b) = inner.free.pop() {
            b.set_len(0);
            return b;
        }
        inner.allocated += 1;
        drop(inner);
        AlignedBuf::new(self.size)
    }

    /// A replacement buffer if one fits within the bound.
    pub fn try_get(&self) -> Option<AlignedBuf> {
        let mut inner = self.inner.lock().expect("pool lock");
        if let Some(mut b) = inner.free.pop() {
            b.set_len(0);
            return Some(b);
        }
        if inner.allocated >= self.max {
            return None;
        }
        inner.allocated += 1;
        drop(inner);
        Some(AlignedBuf::new(self.size))
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
}
