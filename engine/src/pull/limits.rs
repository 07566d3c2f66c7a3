//! Pacing: the bandwidth cap shared by all cores, and the backoff between retries.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A byte-rate cap shared by every core (generic cell rate: each read books its time slot);
/// the agent's peer server paces what it sends with one too.
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_sec: u64,
    next: Mutex<Instant>,
}

/// Reads may run ahead of the rate by this much, so short bursts are not chopped up.
const BURST: Duration = Duration::from_millis(50);

impl RateLimiter {
    /// A cap of `bytes_per_sec` (at least 1).
    pub fn new(bytes_per_sec: u64) -> Self {
        Self {
            bytes_per_sec: bytes_per_sec.max(1),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Books `bytes` and returns how long the caller must wait before reading on.
    pub fn book(&self, bytes: usize) -> Duration {
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        let now = Instant::now();
        let mut next = self.next.lock().expect("rate lock");
        let start = (*next).max(now.checked_sub(BURST).unwrap_or(now));
        *next = start + cost;
        next.saturating_duration_since(now + BURST)
    }
}

/// Exponential backoff with full jitter: attempt 1 waits up to `base`, attempt n up to
/// `base·2ⁿ⁻¹`, never more than `cap`. A server's `Retry-After` wins when given (capped too).
pub fn backoff(
    attempt: u32,
    base: Duration,
    cap: Duration,
    retry_after: Option<Duration>,
) -> Duration {
    if let Some(ra) = retry_after {
        return ra.min(cap.max(Duration::from_secs(300)));
    }
    let exp = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(cap);
    exp.mul_f64(rand::random::<f64>())
        .max(Duration::from_millis(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_books_time() {
        let r = RateLimiter::new(1_000_000);
        assert_eq!(r.book(10_000), Duration::ZERO, "within burst");
        let mut total = Duration::ZERO;
        for _ in 0..10 {
            total = r.book(100_000);
        }
        // 1 MB booked at 1 MB/s: the last read waits about a second, less the burst.
        assert!(
            total > Duration::from_millis(800) && total < Duration::from_millis(1100),
            "{total:?}"
        );
    }

    #[test]
    fn backoff_is_bounded() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(2);
        for attempt in 1..40 {
            let d = backoff(attempt, base, cap, None);
            assert!(d <= cap, "{d:?}");
        }
        assert_eq!(
            backoff(3, base, cap, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(
            backoff(3, base, cap, Some(Duration::from_secs(9999))),
            Duration::from_secs(300)
        );
    }
}
