//! Credentials fetched at the first request and renewed before they expire, without holding
//! up the requests that sign with them.
//!
//! Every signing asks [`Cached::current`]. While the credentials have more than five minutes
//! left (or half their life, for short-lived ones) it answers from memory. Past that point the
//! first caller starts a renewal on a thread of its own and every caller keeps signing with
//! the old credentials, which are still valid; a renewal that fails is tried again 30 s later,
//! the old credentials serving until they expire. Only when none are held, or they have
//! expired, does a caller wait for a fetch, and then one fetch serves all waiting callers. A
//! fetch that fails is not tried again for 10 s: meanwhile callers fail at once with its
//! error, instead of each waiting (up to 30 s) for a fetch of its own.
//!
//! Fetches run on a thread of their own because callers are often engine cores: the control
//! plane starts a runtime on its thread, which a core's thread already has.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use super::{CredentialError, Creds};

/// Renewal starts this long before credentials expire.
const REFRESH_BEFORE: Duration = Duration::from_secs(300);
/// Credentials this close to their expiry are not used: a request signed now must still be
/// valid when it arrives.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);
/// A failed background renewal is tried again after this long.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// A failed fetch that callers waited for is answered from memory for this long.
const FAILURE_HELD: Duration = Duration::from_secs(10);

/// A source of credentials.
pub trait Fetch: Send + Sync + 'static {
    /// Fetches credentials now (blocking); `Ok(None)` when the source has none.
    fn fetch(&self) -> Result<Option<Creds>, CredentialError>;
    /// Which source, for messages.
    fn describe(&self) -> String;
}

/// The wall clock (expiry times are wall-clock times); tests give a fake one.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> SystemTime + Send + Sync>);

impl Clock {
    pub fn system() -> Self {
        Self(Arc::new(SystemTime::now))
    }

    #[cfg(test)]
    pub fn new(now: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        Self(Arc::new(now))
    }

    fn now(&self) -> SystemTime {
        (self.0)()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

/// Credentials from `F`, cached and renewed ahead of their expiry.
pub struct Cached<F> {
    inner: Arc<Inner<F>>,
}

impl<F: Fetch> std::fmt::Debug for Cached<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cached")
            .field("source", &self.inner.fetcher.describe())
            .finish_non_exhaustive()
    }
}

struct Inner<F> {
    fetcher: F,
    clock: Clock,
    state: Mutex<State>,
    /// Held by the one caller that fetches while others wait.
    fetching: Mutex<()>,
}

#[derive(Default)]
struct State {
    /// `None`: not fetched yet; `Some(None)`: the source has no credentials.
    found: Option<Option<Creds>>,
    /// When a background renewal is due.
    refresh_at: Option<SystemTime>,
    /// A background renewal is under way.
    refreshing: bool,
    /// The last fetch callers waited for failed: when, and its message.
    failed: Option<(SystemTime, String)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// When to renew credentials fetched at `now` that expire at `expires`: five minutes before,
/// or half-way through their life if that is later (short-lived ones would otherwise be
/// renewed at every request).
fn refresh_at(now: SystemTime, expires: SystemTime) -> SystemTime {
    let life = expires.duration_since(now).unwrap_or_default();
    let early = expires.checked_sub(REFRESH_BEFORE).unwrap_or(now);
    early.max(now + life / 2)
}

impl<F: Fetch> Cached<F> {
    pub fn new(fetcher: F, clock: Clock) -> Self {
        Self {
            inner: Arc::new(Inner {
                fetcher,
                clock,
                state: Mutex::new(State::default()),
                fetching: Mutex::new(()),
            }),
        }
    }

    pub fn describe(&self) -> String {
        self.inner.fetcher.describe()
    }

    /// The credentials to sign with now (`None`: the source has none).
    pub fn current(&self) -> Result<Option<Creds>, CredentialError> {
        if let Some(found) = self.cached() {
            return Ok(found);
        }
        self.recent_failure()?;
        let _one = lock(&self.inner.fetching);
        if let Some(found) = self.cached() {
            return Ok(found);
        }
        self.recent_failure()?;
        let inner = self.inner.clone();
        let fetched = std::thread::spawn(move || inner.fetcher.fetch())
            .join()
            .map_err(|_| CredentialError::Runtime("the credential request panicked".into()))
            .and_then(|fetched| fetched);
        match fetched {
            Ok(found) => {
                self.inner.store(found.clone());
                Ok(found)
            }
            Err(e) => {
                lock(&self.inner.state).failed = Some((self.inner.clock.now(), e.to_string()));
                Err(e)
            }
        }
    }

    /// The error of a fetch that failed less than [`FAILURE_HELD`] ago.
    fn recent_failure(&self) -> Result<(), CredentialError> {
        let now = self.inner.clock.now();
        let state = lock(&self.inner.state);
        let Some((at, last)) = &state.failed else {
            return Ok(());
        };
        let ago = now.duration_since(*at).unwrap_or_default();
        if ago >= FAILURE_HELD {
            return Ok(());
        }
        Err(CredentialError::Failing {
            last: last.clone(),
            ago: ago.as_secs(),
            next: (FAILURE_HELD - ago).as_secs_f32().ceil() as u64,
        })
    }

    /// What is held, if it can still be used; starts a background renewal when one is due.
    fn cached(&self) -> Option<Option<Creds>> {
        let now = self.inner.clock.now();
        let mut state = lock(&self.inner.state);
        let Some(creds) = state.found.clone()? else {
            return Some(None);
        };
        if creds.expires.is_some_and(|e| now + EXPIRY_MARGIN >= e) {
            return None;
        }
        if state.refresh_at.is_some_and(|at| now >= at) && !state.refreshing {
            state.refreshing = true;
            let inner = self.inner.clone();
            std::thread::spawn(move || inner.renew());
        }
        Some(Some(creds))
    }

    /// Waits until no background renewal is under way (tests).
    #[cfg(test)]
    fn settle(&self) {
        while lock(&self.inner.state).refreshing {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl<F: Fetch> Inner<F> {
    fn store(&self, found: Option<Creds>) {
        let now = self.clock.now();
        let mut state = lock(&self.state);
        state.refresh_at = found
            .as_ref()
            .and_then(|c| c.expires)
            .map(|e| refresh_at(now, e));
        state.found = Some(found);
        state.failed = None;
    }

    /// A background renewal: new credentials replace the old; a failure keeps the old ones
    /// (until they expire) and is tried again later.
    fn renew(&self) {
        let outcome = self.fetcher.fetch();
        let retry = self.clock.now() + RETRY_AFTER;
        match outcome {
            Ok(Some(creds)) => {
                tracing::debug!(source = %self.fetcher.describe(), "AWS credentials renewed");
                self.store(Some(creds));
            }
            Ok(None) => {
                tracing::warn!(source = %self.fetcher.describe(), "renewing AWS credentials: the source has none now; the current ones are used until they expire");
                lock(&self.state).refresh_at = Some(retry);
            }
            Err(e) => {
                tracing::warn!(error = %e, "renewing AWS credentials failed; the current ones are used until they expire, and renewal is tried again in 30 s");
                lock(&self.state).refresh_at = Some(retry);
            }
        }
        lock(&self.state).refreshing = false;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};

    use super::*;

    const T0: u64 = 1_800_000_000;

    /// Hands out scripted answers and counts the calls.
    struct Script {
        answers: Mutex<VecDeque<Result<Option<Creds>, CredentialError>>>,
        calls: Arc<AtomicUsize>,
    }

    impl Fetch for Script {
        fn fetch(&self) -> Result<Option<Creds>, CredentialError> {
            self.calls.fetch_add(1, SeqCst);
            lock(&self.answers)
                .pop_front()
                .expect("no more scripted answers")
        }

        fn describe(&self) -> String {
            "script".into()
        }
    }

    fn creds(id: &str, expires_at: u64) -> Creds {
        Creds {
            access_key_id: id.into(),
            secret_access_key: "secret".into(),
            session_token: Some("token".into()),
            expires: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(expires_at)),
        }
    }

    fn failure() -> CredentialError {
        CredentialError::Unreachable {
            provider: "test",
            origin: "sts".into(),
            message: "down".into(),
        }
    }

    fn cached(
        answers: Vec<Result<Option<Creds>, CredentialError>>,
    ) -> (Cached<Script>, Arc<AtomicU64>, Arc<AtomicUsize>) {
        let now = Arc::new(AtomicU64::new(T0));
        let calls = Arc::new(AtomicUsize::new(0));
        let clock = {
            let now = now.clone();
            Clock::new(move || SystemTime::UNIX_EPOCH + Duration::from_secs(now.load(SeqCst)))
        };
        let script = Script {
            answers: Mutex::new(answers.into()),
            calls: calls.clone(),
        };
        (Cached::new(script, clock), now, calls)
    }

    fn id(c: &Cached<Script>) -> String {
        c.current().unwrap().unwrap().access_key_id
    }

    #[test]
    fn renewed_in_the_background_before_expiry_while_the_old_ones_serve() {
        let hour = T0 + 3600;
        let (c, now, calls) = cached(vec![
            Ok(Some(creds("first", hour))),
            Ok(Some(creds("second", hour + 3600))),
        ]);
        assert_eq!(id(&c), "first");
        now.store(T0 + 3000, SeqCst);
        assert_eq!(id(&c), "first", "not yet due: 10 min left");
        assert_eq!(calls.load(SeqCst), 1);
        now.store(hour - 299, SeqCst);
        assert_eq!(id(&c), "first", "due: the old ones serve while renewing");
        c.settle();
        assert_eq!(calls.load(SeqCst), 2);
        assert_eq!(id(&c), "second");
        assert_eq!(calls.load(SeqCst), 2, "renewed once");
    }

    #[test]
    fn a_failed_renewal_keeps_the_old_ones_until_they_expire() {
        let exp = T0 + 3600;
        let (c, now, calls) = cached(vec![
            Ok(Some(creds("first", exp))),
            Err(failure()),
            Err(failure()),
            Err(failure()),
        ]);
        assert_eq!(id(&c), "first");
        now.store(exp - 200, SeqCst);
        assert_eq!(id(&c), "first");
        c.settle();
        assert_eq!(calls.load(SeqCst), 2);
        now.store(exp - 190, SeqCst);
        assert_eq!(id(&c), "first", "the retry waits 30 s");
        c.settle();
        assert_eq!(calls.load(SeqCst), 2);
        now.store(exp - 160, SeqCst);
        assert_eq!(id(&c), "first");
        c.settle();
        assert_eq!(calls.load(SeqCst), 3);
        now.store(exp - 5, SeqCst);
        let err = c.current().unwrap_err().to_string();
        assert!(err.contains("cannot reach sts"), "{err}");
        assert_eq!(
            calls.load(SeqCst),
            4,
            "expired: the caller waits for a fetch"
        );
    }

    #[test]
    fn a_failed_fetch_is_answered_from_memory_for_a_while() {
        let exp = T0 + 3600;
        let (c, now, calls) = cached(vec![
            Err(failure()),
            Ok(Some(creds("first", exp))),
            Err(failure()),
            Ok(Some(creds("second", exp + 3600))),
        ]);
        let err = c.current().unwrap_err().to_string();
        assert!(err.contains("cannot reach sts"), "{err}");
        now.store(T0 + 3, SeqCst);
        let err = c.current().unwrap_err();
        assert!(
            matches!(
                err,
                CredentialError::Failing {
                    ago: 3,
                    next: 7,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().starts_with("test: cannot reach sts"),
            "{err}"
        );
        now.store(T0 + 9, SeqCst);
        assert!(c.current().is_err());
        assert_eq!(calls.load(SeqCst), 1, "failing fast, not fetching again");
        now.store(T0 + 10, SeqCst);
        assert_eq!(id(&c), "first");
        assert_eq!(calls.load(SeqCst), 2);
        // Expired after failed renewals: one caller waits, the next ones fail fast.
        now.store(exp - 5, SeqCst);
        assert!(c.current().is_err());
        c.settle();
        let calls_then = calls.load(SeqCst);
        assert!(matches!(c.current(), Err(CredentialError::Failing { .. })));
        assert_eq!(calls.load(SeqCst), calls_then);
        now.store(exp + 5, SeqCst);
        assert_eq!(id(&c), "second");
    }

    #[test]
    fn short_lived_credentials_are_renewed_half_way_not_at_every_request() {
        let (c, now, calls) = cached(vec![
            Ok(Some(creds("first", T0 + 120))),
            Ok(Some(creds("second", T0 + 240))),
        ]);
        assert_eq!(id(&c), "first");
        now.store(T0 + 59, SeqCst);
        assert_eq!(id(&c), "first");
        c.settle();
        assert_eq!(calls.load(SeqCst), 1);
        now.store(T0 + 60, SeqCst);
        id(&c);
        c.settle();
        assert_eq!(calls.load(SeqCst), 2);
        assert_eq!(id(&c), "second");
    }

    #[test]
    fn long_term_keys_and_nothing_are_fetched_once() {
        let (c, now, calls) = cached(vec![Ok(None)]);
        assert!(c.current().unwrap().is_none());
        now.store(T0 + 86_400, SeqCst);
        assert!(c.current().unwrap().is_none());
        assert_eq!(calls.load(SeqCst), 1);
        let mut forever = creds("keys", 0);
        forever.expires = None;
        let (c, now, calls) = cached(vec![Ok(Some(forever))]);
        id(&c);
        now.store(T0 + 10 * 86_400, SeqCst);
        id(&c);
        assert_eq!(calls.load(SeqCst), 1);
    }

    #[test]
    fn concurrent_first_requests_share_one_fetch() {
        let (c, _, calls) = cached(vec![Ok(Some(creds("only", T0 + 3600)))]);
        let c = Arc::new(c);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || id(&c))
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), "only");
        }
        assert_eq!(calls.load(SeqCst), 1);
    }
}
