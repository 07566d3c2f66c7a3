//! How many connections one host gets: found while the pull runs, not fixed beforehand.
//!
//! Origins cap each connection (S3 and GCS near 80–100 MB/s, a CDN by its round trip), so a
//! fixed count either wastes a fast link or floods a narrow server. Each host's tuner starts at
//! [`START`] connections and doubles them, one measured epoch per step, while the host's rate
//! still rises by half ([`GROW_GAIN`]; a last step short of a doubling, up to the maximum, by
//! as much less); where it no longer does, twice in a row (one dip of a busy machine is not a
//! knee), it settles on the smaller count that gave (nearly) the same rate. Settled, it tries
//! a quarter more now and then ([`PROBE_EVERY`]) and keeps them only if they pay.
//! A mirror's tuner works the same way, up to [`MIRROR_MAX`] connections.
//!
//! A server that says it is overloaded (503, 429, S3's `SlowDown`, a refused connection) gets
//! fewer at once: half as many, or as many as were receiving bodies when it answered if that
//! is more, and no more than that for [`COOL_DOWN`]. Cuts come at most once per epoch, so one
//! burst of refusals is one cut; a server still refusing an epoch later is cut again.
//!
//! A step is judged only when the limit held work back during the epoch: a pull near its end,
//! or one with fewer ranges than connections, says nothing about what more connections give.
//! The tuner is plain arithmetic over the host's byte counter and the clock, called from the
//! scheduler with the pull's lock held; the numbers are in docs/decisions.md.

use std::time::{Duration, Instant};

/// Connections a host starts with.
pub const START: usize = 16;
/// The most connections a mirror gets. A node group's peers answer from a disk on the same
/// network, where a few connections fill a link; more only split a peer's uplink into more
/// slow requests, and the one at a hash cursor arrives that much later.
pub const MIRROR_MAX: usize = 4;
/// How long one measurement runs; also the least an overloaded host's refused request waits.
pub const EPOCH: Duration = Duration::from_millis(500);
/// Time for connections just opened to reach their speed before their bytes are measured.
const SETTLE: Duration = Duration::from_millis(250);
/// Doubling goes on while the rate rises by at least this much per step: twice the
/// connections give twice the rate where each is capped, next to nothing where the host (or
/// this machine's CPU) is the limit, and a busy machine's rate wanders by a fifth.
const GROW_GAIN: f64 = 0.5;
/// The larger count of the last step is kept only if it gained this much too, twice: extra
/// connections that the memory window cannot serve cost more than they bring.
const KEEP_GAIN: f64 = GROW_GAIN;
/// A probe's quarter more connections are kept only if they gained at least this much.
const PROBE_GAIN: f64 = 0.15;
/// A settled tuner tries more connections this often (when work waits for them).
const PROBE_EVERY: Duration = Duration::from_secs(5);
/// After an overload, the limit stays at or under the cut for this long.
const COOL_DOWN: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Doubling; `prev` is the last step's `(limit, rate)`; `doubted`: the current limit's
    /// first epoch did not gain enough, and one more decides (a busy machine's rate dips).
    /// `warm`: the first epoch is over; it only warms up (probes, first connections, the
    /// first hashes), and judged against it anything looks like a gain.
    Growing {
        prev: Option<(usize, f64)>,
        doubted: bool,
        warm: bool,
    },
    /// Settled; a probe of a larger limit is judged against `(limit, rate)` of before.
    Settled { probing: Option<(usize, f64)> },
    /// A fixed count (`--connections`): never changes.
    Fixed,
}

/// How much a step from `from` connections to `to` grew them: 1 for a doubling, less for the
/// last step, which stops at the maximum. The gains asked of a step scale with it: capped
/// connections give at most as much more rate as there are more of them.
fn grown(from: usize, to: usize) -> f64 {
    (to as f64 / from.max(1) as f64 - 1.0).clamp(0.0, 1.0)
}

/// One host's connection limit and what it has measured.
#[derive(Debug, Clone)]
pub struct Tuner {
    limit: usize,
    max: usize,
    phase: Phase,
    /// Measuring from `since`, when the byte counter read `since_bytes`; `None` until the
    /// first bytes are asked for.
    since: Option<Instant>,
    since_bytes: u64,
    /// Whether the limit held a claim back since `since`.
    held_back: bool,
    next_probe: Option<Instant>,
    /// After an overload: the limit may not pass `ceiling` before `until`.
    ceiling: Option<(usize, Instant)>,
    last_cut: Option<Instant>,
    peak: usize,
}

impl Tuner {
    /// A tuner that finds the count by itself, up to `max`.
    pub fn adaptive(max: usize) -> Self {
        let max = max.max(1);
        Self::new(
            START.min(max),
            max,
            Phase::Growing {
                prev: None,
                doubted: false,
                warm: false,
            },
        )
    }

    /// This tuner for a mirror: an adaptive one gets at most [`MIRROR_MAX`] (a fixed
    /// count stays as it is).
    pub fn for_mirror(&self) -> Self {
        match self.phase {
            Phase::Fixed => self.clone(),
            _ => Self::adaptive(self.max.min(MIRROR_MAX)),
        }
    }

    /// Exactly `n` connections, always.
    pub fn fixed(n: usize) -> Self {
        let n = n.max(1);
        Self::new(n, n, Phase::Fixed)
    }

    fn new(limit: usize, max: usize, phase: Phase) -> Self {
        Self {
            limit,
            max,
            phase,
            since: None,
            since_bytes: 0,
            held_back: false,
            next_probe: None,
            ceiling: None,
            last_cut: None,
            peak: limit,
        }
    }

    /// Connections the host may have now.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The highest limit the host had.
    pub fn peak(&self) -> usize {
        self.peak
    }

    /// A claim for this host waited because the limit was reached.
    pub fn held_back(&mut self) {
        self.held_back = true;
    }

    /// Called whenever the scheduler runs: `bytes` is everything the host sent so far. Closes
    /// the epoch when it is over and takes the step it calls for.
    pub fn tick(&mut self, now: Instant, bytes: u64) {
        if self.phase == Phase::Fixed {
            return;
        }
        let Some(since) = self.since else {
            self.restart(now + SETTLE, bytes);
            return;
        };
        if now < since {
            // Settling: bytes counted from the end of it.
            self.since_bytes = bytes;
            self.held_back = false;
            return;
        }
        let elapsed = now - since;
        if elapsed < EPOCH {
            return;
        }
        let rate = bytes.saturating_sub(self.since_bytes) as f64 / elapsed.as_secs_f64();
        let judged = self.held_back;
        let before = self.limit;
        if judged {
            self.step(now, rate);
        }
        self.restart(
            if self.limit != before {
                now + SETTLE
            } else {
                now
            },
            bytes,
        );
        if self.limit != before {
            tracing::debug!(
                from = before,
                to = self.limit,
                mb_per_s = rate / 1e6,
                "connections to a host changed"
            );
        }
    }

    fn restart(&mut self, since: Instant, bytes: u64) {
        self.since = Some(since);
        self.since_bytes = bytes;
        self.held_back = false;
    }

    /// One judged epoch at `self.limit` measured `rate`.
    fn step(&mut self, now: Instant, rate: f64) {
        match self.phase {
            Phase::Fixed => {}
            Phase::Growing { warm: false, .. } => {
                self.phase = Phase::Growing {
                    prev: None,
                    doubted: false,
                    warm: true,
                };
            }
            Phase::Growing { prev, doubted, .. } => match prev {
                Some((l, r)) if rate < r * (1.0 + GROW_GAIN * grown(l, self.limit)) => {
                    if !doubted {
                        self.phase = Phase::Growing {
                            prev,
                            doubted: true,
                            warm: true,
                        };
                        return;
                    }
                    if rate < r * (1.0 + KEEP_GAIN * grown(l, self.limit)) {
                        self.limit = l;
                    }
                    self.settle(now);
                }
                _ if self.limit >= self.allowed(now) => self.settle(now),
                _ => {
                    self.phase = Phase::Growing {
                        prev: Some((self.limit, rate)),
                        doubted: false,
                        warm: true,
                    };
                    self.raise(now, self.limit * 2);
                }
            },
            Phase::Settled {
                probing: Some((l, r)),
            } => {
                if rate < r * (1.0 + PROBE_GAIN) {
                    self.limit = l;
                }
                self.settle(now);
            }
            Phase::Settled { probing: None } => {
                let due = self.next_probe.is_none_or(|t| now >= t);
                if due && self.limit < self.allowed(now) {
                    self.phase = Phase::Settled {
                        probing: Some((self.limit, rate)),
                    };
                    self.raise(now, self.limit + self.limit.div_ceil(4));
                }
            }
        }
    }

    fn settle(&mut self, now: Instant) {
        self.phase = Phase::Settled { probing: None };
        self.next_probe = Some(now + PROBE_EVERY);
    }

    /// The most the limit may be now: `max`, or the ceiling an overload left.
    fn allowed(&self, now: Instant) -> usize {
        match self.ceiling {
            Some((c, until)) if now < until => c.min(self.max),
            _ => self.max,
        }
    }

    fn raise(&mut self, now: Instant, to: usize) {
        self.limit = to.min(self.allowed(now)).max(1);
        self.peak = self.peak.max(self.limit);
    }

    /// The host said it is overloaded while `streaming` of its connections were receiving
    /// bodies. Returns the new limit when this cut it (at most once per epoch).
    /// `bytes`: everything the host sent so far, where the next epoch starts counting.
    pub fn overloaded(&mut self, now: Instant, streaming: usize, bytes: u64) -> Option<usize> {
        if self.phase == Phase::Fixed || self.last_cut.is_some_and(|t| now - t < EPOCH) {
            return None;
        }
        // Refusals of a burst may be read before the answers that were served, so what is
        // streaming can be fewer than the server serves: never cut by more than half at once.
        let limit = streaming
            .max(self.limit / 2)
            .min(self.limit.saturating_sub(1))
            .max(1);
        self.last_cut = Some(now);
        self.ceiling = Some((limit, now + COOL_DOWN));
        self.limit = limit;
        self.settle(now);
        self.restart(now + SETTLE, bytes);
        Some(limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a tuner against a host whose rate is `rate(connections)` bytes per second,
    /// always with work waiting, for `secs` seconds in 10 ms ticks.
    fn run(t: &mut Tuner, start: Instant, secs: f64, rate: impl Fn(usize) -> f64) -> Instant {
        let mut now = start;
        let mut bytes = 0.0;
        let tick = Duration::from_millis(10);
        while now < start + Duration::from_secs_f64(secs) {
            t.held_back();
            t.tick(now, bytes as u64);
            bytes += rate(t.limit()) * tick.as_secs_f64();
            now += tick;
        }
        now
    }

    /// Each connection capped at `per`, the host at `total`.
    fn capped(per: f64, total: f64) -> impl Fn(usize) -> f64 {
        move |n| (n as f64 * per).min(total)
    }

    #[test]
    fn thin_connections_grow_until_the_link_is_full() {
        // 10 MB/s per connection, 1.2 GB/s in all: 120 connections fill it.
        let mut t = Tuner::adaptive(256);
        run(&mut t, Instant::now(), 10.0, capped(10e6, 1.2e9));
        assert!((120..=256).contains(&t.limit()), "settled on {}", t.limit());
    }

    #[test]
    fn growth_is_quick_enough_for_a_few_gigabytes() {
        // 16 → 128 takes three doublings of under a second each.
        let mut t = Tuner::adaptive(256);
        run(&mut t, Instant::now(), 3.5, capped(10e6, 10e9));
        assert!(t.limit() >= 128, "only {} after 3.5 s", t.limit());
    }

    #[test]
    fn a_last_step_short_of_a_doubling_is_kept_when_it_gains_in_proportion() {
        // 94 connections allowed (the buffers'): 64 → 94 is half as much more as a doubling,
        // and every one of them adds its 10 MB/s.
        let mut t = Tuner::adaptive(94);
        run(&mut t, Instant::now(), 6.0, capped(10e6, 10e9));
        assert_eq!(t.limit(), 94);
    }

    #[test]
    fn a_host_that_is_already_full_keeps_few_connections() {
        // Loopback bound by CPU: as fast with 16 as with 256.
        let mut t = Tuner::adaptive(256);
        run(&mut t, Instant::now(), 10.0, |_| 1.2e9);
        assert_eq!(t.limit(), START);
        assert!(t.peak() <= 2 * START, "probed up to {}", t.peak());
    }

    #[test]
    fn a_knee_between_steps_keeps_the_larger_count_when_it_paid() {
        // 30 connections fill the host: 16 gives half of it, 32 the rest (+87%), 64 nothing.
        let mut t = Tuner::adaptive(256);
        run(&mut t, Instant::now(), 6.0, capped(40e6, 1.2e9));
        assert_eq!(t.limit(), 32);
        // 24 fill it: 32 gains half over 16, 64 nothing.
        let mut t = Tuner::adaptive(256);
        run(&mut t, Instant::now(), 6.0, capped(50e6, 1.2e9));
        assert_eq!(t.limit(), 32);
        // 20 fill it: 32 gains a quarter over 16, not worth its connections.
        let mut t = Tuner::adaptive(256);
        run(&mut t, Instant::now(), 6.0, capped(60e6, 1.2e9));
        assert_eq!(t.limit(), 16);
        // 18 fill it: 32 gains an eighth over 16, not worth its connections.
        let mut t = Tuner::adaptive(256);
        run(&mut t, Instant::now(), 6.0, capped(66e6, 1.2e9));
        assert_eq!(t.limit(), 16);
    }

    #[test]
    fn the_maximum_is_never_passed() {
        let mut t = Tuner::adaptive(20);
        run(&mut t, Instant::now(), 20.0, capped(10e6, 10e9));
        assert_eq!((t.limit(), t.peak()), (20, 20));
        let mut t = Tuner::adaptive(3);
        assert_eq!(t.limit(), 3);
        run(&mut t, Instant::now(), 5.0, capped(10e6, 10e9));
        assert_eq!(t.peak(), 3);
    }

    #[test]
    fn one_slow_epoch_does_not_stop_the_growth() {
        // The host would give 10 MB/s per connection, but the epoch judging 64 dips to half.
        let mut t = Tuner::adaptive(256);
        let start = Instant::now();
        let dip = start + Duration::from_millis(2300)..start + Duration::from_millis(2750);
        let mut now = start;
        let mut bytes = 0.0;
        while now < start + Duration::from_secs(6) {
            t.held_back();
            t.tick(now, bytes as u64);
            let rate = (t.limit() as f64 * 10e6).min(1.2e9);
            let factor = if dip.contains(&now) { 0.5 } else { 1.0 };
            bytes += rate * factor * 0.01;
            now += Duration::from_millis(10);
        }
        assert!(t.limit() >= 64, "stopped at {}", t.limit());
    }

    #[test]
    fn a_fixed_count_never_moves() {
        let mut t = Tuner::fixed(16);
        let now = run(&mut t, Instant::now(), 5.0, capped(10e6, 10e9));
        assert_eq!(t.overloaded(now, 4, 0), None);
        assert_eq!(t.limit(), 16);
    }

    #[test]
    fn an_overloaded_host_gets_what_it_was_serving_and_no_more_for_a_while() {
        let mut t = Tuner::adaptive(256);
        let start = Instant::now();
        let now = run(&mut t, start, 2.5, capped(10e6, 10e9));
        assert_eq!(t.limit(), 64);
        // The server serves 8 at once and refuses the rest: one burst of refusals, one cut,
        // by half; the refusals go on, and an epoch later the next cut reaches the 8.
        assert_eq!(t.overloaded(now, 8, 0), Some(32));
        assert_eq!(t.overloaded(now + Duration::from_millis(10), 3, 0), None);
        let now = now + Duration::from_millis(600);
        assert_eq!(t.overloaded(now, 8, 0), Some(16));
        let now = now + Duration::from_millis(600);
        assert_eq!(t.overloaded(now, 8, 0), Some(8));
        // Within the cool-down the limit stays at 8 however well the 8 do.
        let later = run(&mut t, now, 20.0, capped(10e6, 10e9));
        assert_eq!(t.limit(), 8);
        // After it, probing resumes.
        run(&mut t, later, 15.0, capped(10e6, 10e9));
        assert!(t.limit() > 8);
    }

    #[test]
    fn an_overload_with_nothing_streaming_leaves_one_connection() {
        let mut t = Tuner::adaptive(2);
        assert_eq!(t.overloaded(Instant::now(), 0, 0), Some(1));
    }

    #[test]
    fn epochs_without_waiting_work_change_nothing() {
        let mut t = Tuner::adaptive(256);
        let start = Instant::now();
        let mut bytes = 0u64;
        for i in 0..1000 {
            t.tick(start + Duration::from_millis(10 * i), bytes);
            bytes += 1 << 20;
        }
        assert_eq!(t.limit(), START);
    }
}
