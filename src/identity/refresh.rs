//! The refreshing wrapper every source runs in.
//!
//! Rules (tested below with a manual clock):
//! - **Refresh ahead**: a temporary credential is refreshed in the background
//!   once less than max(15 min, 25 % of its lifetime) remains, capped at half
//!   its lifetime, so a 2-minute test identity is refreshed after one minute and
//!   a 1-hour one 15 minutes before expiry.
//! - **Single flight**: one fetch at a time; callers waiting for a credential
//!   share the result (or the failure) of the fetch in flight.
//! - **Last good**: a failed refresh keeps the held credential while it is
//!   valid (a warning is logged) and retries with exponential backoff.
//!   If that point is not before the credential stops being usable (very short
//!   lives), the refresh is due halfway through the usable window instead.
//! - **Unready when expired**: a credential within `expiry_margin` of its
//!   expiry is no longer handed out; `status().valid` turns false.
//! - **No lock across I/O**: the state lock is held only to copy or store a
//!   credential; the hot path is a read lock and a clone.
//! - Fixed credentials read from files are read again every `reload_every`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use rand::Rng as _;
use tokio::sync::Notify;
use tracing::{debug, error, info, warn};

use super::{
    CredentialProvider, Credentials, ErrorKind, Fetch, IdentityError, IdentityStatus, key_id_prefix,
};
use crate::sign::format_iso8601_extended as format_expiration;
use crate::sts::Clock;

/// Knobs of the refresh loop; [`RefreshTimings::default`] is what the server uses.
#[derive(Debug, Clone, Copy)]
pub struct RefreshTimings {
    /// A credential this close to expiry is treated as expired.
    pub expiry_margin: Duration,
    /// First retry delay after a failure; doubles per failure up to `backoff_max`
    /// (each delay jittered down to half).
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Longest sleep of the background loop between checks (wall-clock jumps,
    /// suspended hosts and injected clocks are noticed within this).
    pub max_sleep: Duration,
}

impl Default for RefreshTimings {
    fn default() -> Self {
        RefreshTimings {
            expiry_margin: Duration::from_secs(30),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(10),
            max_sleep: Duration::from_secs(5),
        }
    }
}

/// When to refresh a credential fetched at `fetched_at` that expires at
/// `expiration`: max(15 min, 25 % of the lifetime) ahead of expiry, but never
/// more than half the lifetime ahead (schema, issue 5; docs/signing.md §5).
pub fn refresh_at(fetched_at: DateTime<Utc>, expiration: DateTime<Utc>) -> DateTime<Utc> {
    let life = (expiration - fetched_at).max(TimeDelta::zero());
    let ahead = TimeDelta::minutes(15).max(life / 4).min(life / 2);
    expiration - ahead
}

/// A [`Fetch`] source made into a [`CredentialProvider`] that refreshes itself.
pub struct Refreshing {
    inner: Arc<Inner>,
}

struct Inner {
    fetcher: Box<dyn Fetch>,
    clock: Arc<dyn Clock>,
    timings: RefreshTimings,
    state: RwLock<State>,
    /// Held while a fetch is in flight.
    flight: tokio::sync::Mutex<()>,
    wake: Arc<Notify>,
    started: AtomicBool,
    /// A hot-path refresh task is pending (only without a background loop).
    kicked: AtomicBool,
}

#[derive(Default)]
struct State {
    current: Option<Held>,
    last_error: Option<IdentityError>,
    failures: u32,
    /// No new attempt before this (backoff after a failure).
    retry_at: Option<DateTime<Utc>>,
    /// Bumped by every finished fetch, so waiters know one just happened.
    generation: u64,
}

struct Held {
    creds: Credentials,
    /// Refresh (temporary) or reload (fixed, from a file) from then on; `None`: never.
    next_at: Option<DateTime<Utc>>,
}

impl Refreshing {
    pub fn new(fetcher: Box<dyn Fetch>, clock: Arc<dyn Clock>, timings: RefreshTimings) -> Self {
        Refreshing {
            inner: Arc::new(Inner {
                fetcher,
                clock,
                timings,
                state: RwLock::new(State::default()),
                flight: tokio::sync::Mutex::new(()),
                wake: Arc::new(Notify::new()),
                started: AtomicBool::new(false),
                kicked: AtomicBool::new(false),
            }),
        }
    }

    /// One step of the background loop: fetches if a refresh or retry is due
    /// (and none is in flight). Public so tests with a manual clock can drive it.
    pub async fn refresh_if_due(&self) {
        self.inner.refresh_if_due().await;
    }

    /// The held credential if it is valid now (no I/O).
    pub fn current(&self) -> Option<Credentials> {
        self.inner.snapshot(self.inner.clock.now())
    }

    /// The moment the next refresh (or reload) is due, if any.
    pub fn next_refresh_at(&self) -> Option<DateTime<Utc>> {
        self.inner.read().current.as_ref().and_then(|h| h.next_at)
    }

    fn kick(&self) {
        if self.inner.started.load(Ordering::Acquire) {
            self.inner.wake.notify_one();
        } else if !self.inner.kicked.swap(true, Ordering::AcqRel) {
            let inner = self.inner.clone();
            tokio::spawn(async move {
                inner.refresh_if_due().await;
                inner.kicked.store(false, Ordering::Release);
            });
        }
    }
}

#[async_trait::async_trait]
impl CredentialProvider for Refreshing {
    async fn credentials(&self) -> Result<Credentials, IdentityError> {
        let inner = &self.inner;
        let now = inner.clock.now();
        let (seen, backoff_error) = {
            let st = inner.read();
            if let Some(h) = st.current.as_ref().filter(|h| inner.valid(h, now)) {
                let creds = h.creds.clone();
                let due = inner.due(&st, now);
                drop(st);
                if due {
                    self.kick();
                }
                return Ok(creds);
            }
            let backoff_error = st.retry_at.filter(|at| now < *at).and(st.last_error.clone());
            (st.generation, backoff_error)
        };
        // Nothing valid held. Inside a backoff window the last failure stands.
        if let Some(e) = backoff_error {
            return Err(e);
        }
        let _flight = inner.flight.lock().await;
        {
            let st = inner.read();
            if st.generation != seen {
                // A fetch finished while we queued: share its outcome.
                let now = inner.clock.now();
                if let Some(h) = st.current.as_ref().filter(|h| inner.valid(h, now)) {
                    return Ok(h.creds.clone());
                }
                if let Some(e) = st.last_error.clone() {
                    return Err(e);
                }
            }
        }
        inner.fetch_locked().await
    }

    fn source_name(&self) -> &'static str {
        self.inner.fetcher.source_name()
    }

    fn status(&self) -> IdentityStatus {
        let inner = &self.inner;
        let now = inner.clock.now();
        let st = inner.read();
        let held = st.current.as_ref();
        IdentityStatus {
            source: inner.fetcher.source_name(),
            chain_winner: inner.fetcher.chain_winner(),
            valid: held.is_some_and(|h| inner.valid(h, now)),
            access_key_id: held.map(|h| key_id_prefix(&h.creds.access_key_id)),
            expiration: held.and_then(|h| h.creds.expiration).map(format_expiration),
            last_error: st.last_error.as_ref().map(ToString::to_string),
        }
    }

    fn start(&self) {
        if self.inner.started.swap(true, Ordering::AcqRel) {
            return;
        }
        self.inner.fetcher.start();
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let wake = self.inner.wake.clone();
        tokio::spawn(async move {
            loop {
                let wait = match weak.upgrade() {
                    Some(inner) => inner.until_next(inner.clock.now()),
                    None => return,
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = wake.notified() => {}
                }
                match weak.upgrade() {
                    Some(inner) => inner.refresh_if_due().await,
                    None => return,
                }
            }
        });
    }
}

impl Inner {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn margin(&self) -> TimeDelta {
        TimeDelta::from_std(self.timings.expiry_margin).unwrap_or_default()
    }

    fn valid(&self, h: &Held, now: DateTime<Utc>) -> bool {
        h.creds.expiration.is_none_or(|e| now + self.margin() < e)
    }

    fn snapshot(&self, now: DateTime<Utc>) -> Option<Credentials> {
        let st = self.read();
        st.current
            .as_ref()
            .filter(|h| self.valid(h, now))
            .map(|h| h.creds.clone())
    }

    /// A fetch is due: nothing valid held, or the refresh point has passed,
    /// and no backoff window is open.
    fn due(&self, st: &State, now: DateTime<Utc>) -> bool {
        if st.retry_at.is_some_and(|at| now < at) {
            return false;
        }
        match &st.current {
            None => true,
            Some(h) => !self.valid(h, now) || h.next_at.is_some_and(|at| now >= at),
        }
    }

    /// How long the background loop may sleep.
    fn until_next(&self, now: DateTime<Utc>) -> Duration {
        let st = self.read();
        let mut next: Option<DateTime<Utc>> = st.retry_at;
        if st.retry_at.is_none_or(|at| at <= now) {
            next = match &st.current {
                None => Some(now),
                Some(h) if !self.valid(h, now) => Some(now),
                Some(h) => h.next_at,
            };
            if let (Some(n), Some(r)) = (next, st.retry_at) {
                next = Some(n.max(r));
            }
        }
        let wait = next
            .map(|at| (at - now).to_std().unwrap_or(Duration::ZERO))
            .unwrap_or(self.timings.max_sleep);
        // Never a busy loop, whatever the timings say (no `clamp`: it panics when min > max).
        wait.min(self.timings.max_sleep).max(Duration::from_millis(10))
    }

    async fn refresh_if_due(&self) {
        let Ok(_flight) = self.flight.try_lock() else {
            return; // one is in flight already
        };
        let due = {
            let st = self.read();
            self.due(&st, self.clock.now())
        };
        if due {
            let _ = self.fetch_locked().await;
        }
    }

    /// Fetches and stores the outcome. The caller holds `flight`; the state
    /// lock is taken only after the I/O.
    async fn fetch_locked(&self) -> Result<Credentials, IdentityError> {
        let source = self.fetcher.source_name();
        let result = self.fetcher.fetch().await;
        let now = self.clock.now();
        let result = result.and_then(|c| match c.expiration {
            Some(e) if e <= now + self.margin() => Err(IdentityError::new(
                source,
                ErrorKind::Rejected,
                format!(
                    "the credential obtained expires at {}, which is already (nearly) past",
                    format_expiration(e)
                ),
            )),
            _ => Ok(c),
        });
        crate::prom::identity_refresh(source, result.is_ok());
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        st.generation += 1;
        match result {
            Ok(creds) => {
                let previous = st.current.as_ref().map(|h| h.creds.access_key_id.clone());
                let recovered = st.failures > 0;
                let next_at = match creds.expiration {
                    Some(e) => Some(self.refresh_point(now, e)),
                    None => self
                        .fetcher
                        .reload_every()
                        .and_then(|d| TimeDelta::from_std(d).ok())
                        .map(|d| now + d),
                };
                st.current = Some(Held {
                    creds: creds.clone(),
                    next_at,
                });
                st.failures = 0;
                st.retry_at = None;
                st.last_error = None;
                drop(st);
                self.log_success(&creds, previous.as_deref(), recovered, next_at);
                Ok(creds)
            }
            Err(e) => {
                st.failures = st.failures.saturating_add(1);
                let delay = self.backoff(st.failures);
                st.retry_at = Some(now + TimeDelta::from_std(delay).unwrap_or_default());
                st.last_error = Some(e.clone());
                let held = st
                    .current
                    .as_ref()
                    .filter(|h| self.valid(h, now))
                    .map(|h| (h.creds.expiration, key_id_prefix(&h.creds.access_key_id)));
                let failures = st.failures;
                drop(st);
                let retry_in_ms = delay.as_millis() as u64;
                match held {
                    Some((expiration, key)) => warn!(
                        source, error = %e, failures, retry_in_ms, access_key_id = %key,
                        expiration = %expiration.map(format_expiration).unwrap_or_else(|| "-".into()),
                        "identity refresh failed; keeping the last good credential while it is valid"
                    ),
                    None => error!(
                        source, error = %e, failures, retry_in_ms,
                        "server identity unavailable; not ready until a fetch succeeds"
                    ),
                }
                Err(e)
            }
        }
    }

    fn log_success(
        &self,
        creds: &Credentials,
        previous: Option<&str>,
        recovered: bool,
        next_at: Option<DateTime<Utc>>,
    ) {
        let source = self.fetcher.source_name();
        let key = key_id_prefix(&creds.access_key_id);
        let expiration = creds
            .expiration
            .map(format_expiration)
            .unwrap_or_else(|| "never".into());
        let refresh = next_at.map(format_expiration).unwrap_or_else(|| "-".into());
        match (previous, self.fetcher.chain_winner()) {
            (None, Some(winner)) => info!(
                source, chain_winner = %winner, access_key_id = %key, expiration = %expiration,
                refresh_at = %refresh, "server identity loaded"
            ),
            (None, None) => info!(
                source, access_key_id = %key, expiration = %expiration, refresh_at = %refresh,
                "server identity loaded"
            ),
            // A fixed key read again and unchanged: nothing to tell at info.
            (Some(prev), _) if creds.expiration.is_none() && prev == creds.access_key_id && !recovered => {
                debug!(source, access_key_id = %key, "server identity reloaded, unchanged")
            }
            (Some(_), _) => info!(
                source, access_key_id = %key, expiration = %expiration, refresh_at = %refresh,
                "server identity refreshed"
            ),
        }
    }

    /// [`refresh_at`], unless that is not before the credential stops being
    /// usable (`expiry_margin` before expiry, e.g. a 37 s credential with a 30 s
    /// margin): then halfway through the usable window, so a refresh (and its
    /// retries) still happen while the credential is valid.
    fn refresh_point(&self, now: DateTime<Utc>, expiration: DateTime<Utc>) -> DateTime<Utc> {
        let usable_until = expiration - self.margin();
        let at = refresh_at(now, expiration);
        if at < usable_until {
            at
        } else {
            now + (usable_until - now) / 2
        }
    }

    fn backoff(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(16);
        let cap = self
            .timings
            .backoff_base
            .saturating_mul(1u32 << exp)
            .min(self.timings.backoff_max);
        let ms = cap.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(ms / 2..=ms.max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::testutil::{ManualClock, ScriptedFetch};

    fn timings() -> RefreshTimings {
        RefreshTimings {
            expiry_margin: Duration::from_secs(30),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(8),
            max_sleep: Duration::from_millis(50),
        }
    }

    fn setup(life: Duration) -> (Refreshing, ScriptedFetch, Arc<ManualClock>) {
        let clock = ManualClock::new();
        let fetch = ScriptedFetch::new(clock.clone(), life);
        let p = Refreshing::new(Box::new(fetch.handle()), clock.clone(), timings());
        (p, fetch, clock)
    }

    #[test]
    fn refresh_point() {
        let t0 = Utc::now();
        let at = |life_s: i64| (refresh_at(t0, t0 + TimeDelta::seconds(life_s)) - t0).num_seconds();
        assert_eq!(at(120), 60); // short test identity: half its life
        assert_eq!(at(3600), 2700); // 1 h: 15 min ahead
        assert_eq!(at(6 * 3600), 6 * 3600 - 5400); // 6 h (ECS): 25 % ahead
        assert_eq!(at(0), 0);
    }

    #[tokio::test]
    async fn refreshes_before_expiry_and_serves_the_old_one_meanwhile() {
        let (p, fetch, clock) = setup(Duration::from_secs(120));
        let first = p.credentials().await.unwrap();
        assert_eq!(fetch.calls(), 1);
        clock.advance(Duration::from_secs(59));
        p.refresh_if_due().await;
        assert_eq!(fetch.calls(), 1, "not due before half the life");
        clock.advance(Duration::from_secs(2));
        p.refresh_if_due().await;
        assert_eq!(fetch.calls(), 2);
        let second = p.credentials().await.unwrap();
        assert_ne!(first.access_key_id, second.access_key_id);
        assert!(p.status().valid);
    }

    #[tokio::test]
    async fn a_very_short_credential_is_refreshed_while_still_usable() {
        // 37 s of life, 30 s margin: usable for 7 s, so refreshed after 3.5 s
        // (half its life, 18.5 s, would be too late).
        let (p, fetch, clock) = setup(Duration::from_secs(37));
        p.credentials().await.unwrap();
        let due = (p.next_refresh_at().unwrap() - clock.now()).num_milliseconds();
        assert_eq!(due, 3500);
        clock.advance(Duration::from_millis(3600));
        p.refresh_if_due().await;
        assert_eq!(fetch.calls(), 2);
    }

    #[tokio::test]
    async fn hot_path_kicks_a_background_refresh_when_due() {
        let (p, fetch, clock) = setup(Duration::from_secs(3600));
        let first = p.credentials().await.unwrap();
        clock.advance(Duration::from_secs(46 * 60)); // 14 min left: due
        let during = p.credentials().await.unwrap();
        assert_eq!(
            during.access_key_id, first.access_key_id,
            "the caller is not kept waiting"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(fetch.calls(), 2);
        assert_ne!(p.credentials().await.unwrap().access_key_id, first.access_key_id);
    }

    #[tokio::test]
    async fn single_flight_under_concurrency() {
        let (p, fetch, _) = setup(Duration::from_secs(3600));
        fetch.set_delay(Duration::from_millis(100));
        let p = Arc::new(p);
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let p = p.clone();
                tokio::spawn(async move { p.credentials().await.unwrap().access_key_id })
            })
            .collect();
        let mut ids = std::collections::HashSet::new();
        for t in tasks {
            ids.insert(t.await.unwrap());
        }
        assert_eq!(fetch.calls(), 1);
        assert_eq!(ids.len(), 1);
    }

    #[tokio::test]
    async fn waiters_share_a_failure() {
        let (p, fetch, _) = setup(Duration::from_secs(3600));
        fetch.set_delay(Duration::from_millis(100));
        fetch.fail(true);
        let p = Arc::new(p);
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let p = p.clone();
                tokio::spawn(async move { p.credentials().await })
            })
            .collect();
        for t in tasks {
            assert!(t.await.unwrap().is_err());
        }
        assert_eq!(fetch.calls(), 1);
    }

    #[tokio::test]
    async fn keeps_the_last_good_credential_then_turns_unready_when_it_expires() {
        let (p, fetch, clock) = setup(Duration::from_secs(120));
        let good = p.credentials().await.unwrap();
        fetch.fail(true);
        clock.advance(Duration::from_secs(61));
        p.refresh_if_due().await;
        assert_eq!(fetch.calls(), 2);
        let st = p.status();
        assert!(st.valid, "still valid for a minute");
        assert!(st.last_error.is_some());
        assert_eq!(p.credentials().await.unwrap().access_key_id, good.access_key_id);
        // Within 30 s of expiry (the margin) it is no longer handed out.
        clock.advance(Duration::from_secs(30));
        assert!(!p.status().valid);
        assert!(p.current().is_none());
        clock.advance(Duration::from_secs(30));
        assert!(p.credentials().await.is_err());
        // A successful refresh makes it ready again.
        fetch.fail(false);
        clock.advance(Duration::from_secs(10));
        p.refresh_if_due().await;
        let st = p.status();
        assert!(st.valid && st.last_error.is_none());
        assert_ne!(p.credentials().await.unwrap().access_key_id, good.access_key_id);
    }

    #[tokio::test]
    async fn backs_off_exponentially_after_failures() {
        let (p, fetch, clock) = setup(Duration::from_secs(3600));
        fetch.fail(true);
        let mut attempts = 0;
        // Over 20 s of failures with a 1 s base and 8 s cap: about 1+2+4+8+8 → 5 or 6 attempts, not 200.
        for _ in 0..200 {
            clock.advance(Duration::from_millis(100));
            p.refresh_if_due().await;
            attempts = fetch.calls();
        }
        assert!((4..=8).contains(&attempts), "{attempts} attempts");
        // Inside the backoff window a caller gets the last error without a new fetch.
        let before = fetch.calls();
        assert!(p.credentials().await.is_err());
        assert!(fetch.calls() <= before + 1);
    }

    #[tokio::test]
    async fn background_loop_retries_until_the_source_comes_up() {
        let clock_real = Arc::new(crate::sts::SystemClock);
        let fake_clock = ManualClock::new();
        let fetch = ScriptedFetch::new(fake_clock, Duration::from_secs(3600));
        fetch.fail(true);
        let mut t = timings();
        t.backoff_base = Duration::from_millis(20);
        t.backoff_max = Duration::from_millis(40);
        let p = Refreshing::new(Box::new(fetch.handle()), clock_real, t);
        assert!(p.credentials().await.is_err());
        p.start();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!p.status().valid);
        assert!(fetch.calls() >= 2, "retried in the background");
        fetch.fail(false);
        for _ in 0..100 {
            if p.status().valid {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(p.status().valid);
    }

    #[tokio::test]
    async fn a_credential_that_arrives_expired_is_refused() {
        let (p, fetch, _) = setup(Duration::from_secs(10)); // inside the 30 s margin
        let e = p.credentials().await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Rejected);
        assert_eq!(fetch.calls(), 1);
        assert!(!p.status().valid);
    }

    #[tokio::test]
    async fn fixed_credentials_reload_on_their_interval_and_keep_the_last_good() {
        let clock = ManualClock::new();
        let fetch = ScriptedFetch::fixed(Duration::from_secs(60));
        let p = Refreshing::new(Box::new(fetch.handle()), clock.clone(), timings());
        p.credentials().await.unwrap();
        clock.advance(Duration::from_secs(30));
        p.refresh_if_due().await;
        assert_eq!(fetch.calls(), 1);
        clock.advance(Duration::from_secs(31));
        fetch.fail(true);
        p.refresh_if_due().await;
        assert_eq!(fetch.calls(), 2);
        assert!(p.status().valid, "a fixed key never expires");
        assert!(p.credentials().await.is_ok());
    }

    #[tokio::test]
    async fn dropping_the_provider_stops_its_loop() {
        let fetch = ScriptedFetch::fixed(Duration::from_millis(10));
        let mut t = timings();
        t.max_sleep = Duration::from_millis(10);
        let p = Refreshing::new(Box::new(fetch.handle()), Arc::new(crate::sts::SystemClock), t);
        p.start();
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(fetch.calls() >= 3, "reloaded in the background");
        drop(p);
        tokio::time::sleep(Duration::from_millis(30)).await;
        let after_drop = fetch.calls();
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(fetch.calls(), after_drop);
    }
}
