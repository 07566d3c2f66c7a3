//! When a failed download is tried again, by the [`Class`] of its failure: transient failures
//! after an exponential backoff, refused access after a longer one (credentials are fixed by
//! people, and a store that refuses should not be asked every few seconds), a disk without
//! room after a longer one still (space is freed by people, or by a model removed from the
//! spec, which tries it at once; a repair copy that did not fit would read the whole model
//! again at each try), bad input not until its entry or the node's spec changes (see
//! [`crate::jobs::Downloads::release`]).
//! KServe's agent never retries a failed Job; a person has to delete it.

use std::time::Duration;

use crate::error::Class;

/// `base`, doubling with each failed attempt, up to `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// The wait after the `attempts`-th failed attempt (the first waits `base`).
    pub fn after(&self, attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(16);
        self.base.saturating_mul(1 << exp).min(self.cap)
    }
}

/// The wait of each class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub transient: Backoff,
    pub access_denied: Backoff,
    pub no_space: Backoff,
}

impl Default for RetryPolicy {
    /// Transient: 30 s doubling to 10 minutes. Access denied: 2 minutes doubling to 30. No
    /// space: 10 minutes doubling to 2 hours.
    fn default() -> Self {
        Self {
            transient: Backoff {
                base: Duration::from_secs(30),
                cap: Duration::from_secs(600),
            },
            access_denied: Backoff {
                base: Duration::from_secs(120),
                cap: Duration::from_secs(1800),
            },
            no_space: Backoff {
                base: Duration::from_secs(600),
                cap: Duration::from_secs(7200),
            },
        }
    }
}

impl RetryPolicy {
    /// How long after its `attempts`-th failure a download of `class` waits; `None`: until its
    /// entry or the spec changes.
    pub fn retry_in(&self, class: Class, attempts: u32) -> Option<Duration> {
        match class {
            Class::BadInput => None,
            Class::AccessDenied => Some(self.access_denied.after(attempts)),
            Class::NoSpace => Some(self.no_space.after(attempts)),
            Class::Transient => Some(self.transient.after(attempts)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap() {
        let b = RetryPolicy::default().transient;
        let got: Vec<u64> = (1..=7).map(|a| b.after(a).as_secs()).collect();
        assert_eq!(got, [30, 60, 120, 240, 480, 600, 600]);
        assert_eq!(b.after(1000).as_secs(), 600);
    }

    #[test]
    fn each_class_waits_its_own_way() {
        let p = RetryPolicy::default();
        let waits = |class| -> Vec<Option<u64>> {
            (1..=6)
                .map(|a| p.retry_in(class, a).map(|d| d.as_secs()))
                .collect()
        };
        assert_eq!(waits(Class::BadInput), [None; 6], "never by itself");
        assert_eq!(
            waits(Class::AccessDenied),
            [120, 240, 480, 960, 1800, 1800].map(Some)
        );
        assert_eq!(
            waits(Class::Transient),
            [30, 60, 120, 240, 480, 600].map(Some)
        );
        assert_eq!(
            waits(Class::NoSpace),
            [600, 1200, 2400, 4800, 7200, 7200].map(Some)
        );
        for a in 1..=20 {
            assert!(
                p.retry_in(Class::AccessDenied, a) > p.retry_in(Class::Transient, a),
                "refused access waits longer (attempt {a})"
            );
            assert!(
                p.retry_in(Class::NoSpace, a) > p.retry_in(Class::AccessDenied, a),
                "a full disk waits longer still (attempt {a})"
            );
        }
    }
}
