//! The credential cache.
//!
//! Guarantees (each covered by a test in this file and again end-to-end):
//! - **Minimum life**: a credential is handed out only while it has at least
//!   `min_remaining` left, so no client considers it stale on arrival.
//! - **Single flight**: concurrent lookups of one key share one AssumeRole call;
//!   callers that queued behind a failed call get that failure, not a call each.
//!   The call belongs to the cache, not to the caller that started it: a caller
//!   whose deadline passes stops waiting, the call runs on (to its own timeout
//!   and retries) and its result serves whoever asks next.
//! - **Refresh ahead**: from `refresh_at` (`refresh_before` before expiry, minus up
//!   to 10 % jitter) the first lookup starts one background refresh and every
//!   caller keeps getting the still-valid credential meanwhile.
//! - **Stale if error**: if that refresh fails, the old credential keeps being
//!   served (with a warning) while it satisfies `min_remaining`; afterwards the
//!   lookup fails with the STS error.
//! - **Failure back-off**: after a call fails for STS's own reasons (5xx,
//!   timeout, throttling), misses of that key get the same failure, with the
//!   time to come back, without calling STS until a jittered back-off has
//!   passed (growing with failures in a row, reset by a success). Permission and
//!   parameter errors are not remembered: fixing the role takes effect at once.
//! - **Budget**: only calls to STS pass through the client's token bucket; a hit
//!   never waits for anything but a short read lock.
//!
//! The key holds everything that changes what a credential may do: the
//! identity that signs the call, the role, the SHA-256 of the exact policy text,
//! the duration and the session name.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use rand::Rng as _;
use tokio::sync::watch;
use tracing::{info, warn};

use super::backoff::Backoff;
use super::client::AssumeRole;
use super::{AssumeRoleRequest, StsError, TempCredentials};
use crate::credentials::{Credentials, key_id_prefix};
use crate::shared::Fleet;

mod fleet;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// AccessKey id of the identity that signs the AssumeRole call.
    pub identity: String,
    pub role_arn: String,
    pub policy_sha256: String,
    pub duration_seconds: u32,
    pub session_name: String,
}

impl CacheKey {
    pub fn new(identity: &Credentials, req: &AssumeRoleRequest) -> Self {
        let policy_sha256 = crate::policy::policy_sha256(req.policy.as_deref().unwrap_or(""));
        Self::with_policy_hash(identity, req, &policy_sha256)
    }

    /// The key when the caller already knows `policy_sha256(req.policy)`.
    pub fn with_policy_hash(identity: &Credentials, req: &AssumeRoleRequest, policy_sha256: &str) -> Self {
        CacheKey {
            identity: identity.access_key_id.clone(),
            role_arn: req.role_arn.clone(),
            policy_sha256: policy_sha256.to_owned(),
            duration_seconds: req.duration_seconds,
            session_name: req.session_name.clone(),
        }
    }
}

/// Injectable time, so the guarantees can be tested without waiting.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

#[derive(Debug, Clone, Copy)]
pub struct CacheTimings {
    pub min_remaining: Duration,
    pub refresh_before: Duration,
    /// Wait after a failed background refresh before the next one is tried.
    pub refresh_retry_after: Duration,
    /// Upper bound on the number of cached credentials.
    pub capacity: u64,
    /// How long a key's failed call is answered again without a call.
    pub failure_backoff: Backoff,
}

/// How a lookup was answered; logged with every issued credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
    /// Served from cache after a failed refresh (stale-if-error).
    Stale,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Stale => "stale",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Lookup {
    pub credentials: Arc<TempCredentials>,
    pub outcome: Outcome,
    /// When a client should come back: the last moment this credential is served.
    pub refresh_after: DateTime<Utc>,
}

/// Whether the cache's calls to STS are failing, for readiness.
#[derive(Debug, Clone, Default)]
pub struct StsHealth {
    /// Since when calls have failed for STS's own reasons, without a success since.
    pub failing_since: Option<DateTime<Utc>>,
    /// The last such failure.
    pub last_error: Option<StsError>,
}

struct Entry {
    creds: Arc<TempCredentials>,
    refresh_at: DateTime<Utc>,
}

type FlightResult = Result<Arc<Entry>, StsError>;

/// A receiver of the result of a call in flight.
type Flight = watch::Receiver<Option<FlightResult>>;

/// A failed call, answered again until `until`.
struct Failure {
    error: StsError,
    until: DateTime<Utc>,
}

#[derive(Default)]
struct Slot {
    current: RwLock<Option<Arc<Entry>>>,
    /// The call to STS in flight for this key: a task the cache owns, so that a
    /// caller giving up (its request deadline passed) does not cancel it.
    flight: Mutex<Option<Flight>>,
    /// Whether `flight` is set; lets hits in the refresh window skip the lock.
    in_flight: AtomicBool,
    /// The last failed call, while misses get its failure without a call.
    failure: RwLock<Option<Failure>>,
    /// Failed calls in a row (the back-off grows with it); 0 after a success.
    failures: AtomicU32,
    refresh_failed: AtomicBool,
    retry_refresh_at: RwLock<Option<DateTime<Utc>>>,
}

impl Slot {
    fn current(&self) -> Option<Arc<Entry>> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Clears a slot's flight when dropped.
struct Landed<'a>(&'a Slot);

impl Drop for Landed<'_> {
    fn drop(&mut self) {
        *self.0.flight.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.0.in_flight.store(false, Ordering::Release);
    }
}

/// What a lookup found under the flight lock.
enum Join {
    /// A call is (now) in flight: wait for it.
    Wait(Flight),
    /// No call: a call that ended just before answered already, or the key
    /// backs off after a failure.
    Answered(FlightResult),
}

#[derive(Clone)]
pub struct CredentialCache {
    inner: Arc<Inner>,
}

struct Inner {
    slots: moka::future::Cache<CacheKey, Arc<Slot>>,
    sts: Arc<dyn AssumeRole>,
    clock: Arc<dyn Clock>,
    timings: CacheTimings,
    health: RwLock<StsHealth>,
    /// Fleet mode: the second level and the fleet-wide single flight.
    fleet: Option<Arc<Fleet>>,
}

impl CredentialCache {
    pub fn new(sts: Arc<dyn AssumeRole>, clock: Arc<dyn Clock>, timings: CacheTimings) -> Self {
        Self::with_fleet(sts, clock, timings, None)
    }

    /// With `fleet`, a miss looks in Redis before calling STS and only one
    /// replica of the fleet calls STS for a key (see `cache/fleet.rs`).
    pub fn with_fleet(
        sts: Arc<dyn AssumeRole>,
        clock: Arc<dyn Clock>,
        timings: CacheTimings,
        fleet: Option<Arc<Fleet>>,
    ) -> Self {
        let slots = moka::future::Cache::builder()
            .max_capacity(timings.capacity)
            // Nothing outlives the longest STS session (12 h), so idle slots go.
            .time_to_idle(Duration::from_secs(43_200 + 3600))
            .build();
        CredentialCache {
            inner: Arc::new(Inner {
                slots,
                sts,
                clock,
                timings,
                health: RwLock::new(StsHealth::default()),
                fleet,
            }),
        }
    }

    /// Number of keys currently held (approximate, for metrics and benchmarks).
    pub fn entry_count(&self) -> u64 {
        self.inner.slots.entry_count()
    }

    /// Whether any cached credential is still servable (for readiness).
    pub fn has_servable(&self) -> bool {
        let now = self.inner.clock.now();
        self.inner
            .slots
            .iter()
            .any(|(_, slot)| slot.current().is_some_and(|e| self.inner.servable(&e, now)))
    }

    /// Whether calls to STS are failing, and since when (for readiness).
    pub fn sts_health(&self) -> StsHealth {
        self.inner
            .health
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub async fn get(&self, identity: &Credentials, req: &AssumeRoleRequest) -> Result<Lookup, StsError> {
        self.lookup(CacheKey::new(identity, req), identity, req).await
    }

    /// [`get`](Self::get) for a caller that has hashed the policy already
    /// (`policy_sha256` must be [`crate::policy::policy_sha256`] of `req.policy`).
    pub async fn get_hashed(
        &self,
        identity: &Credentials,
        req: &AssumeRoleRequest,
        policy_sha256: &str,
    ) -> Result<Lookup, StsError> {
        debug_assert_eq!(
            policy_sha256,
            crate::policy::policy_sha256(req.policy.as_deref().unwrap_or(""))
        );
        let key = CacheKey::with_policy_hash(identity, req, policy_sha256);
        self.lookup(key, identity, req).await
    }

    async fn lookup(
        &self,
        key: CacheKey,
        identity: &Credentials,
        req: &AssumeRoleRequest,
    ) -> Result<Lookup, StsError> {
        let result = self.find(key, identity, req).await;
        crate::prom::cache_lookup(match &result {
            Ok(l) => l.outcome.as_str(),
            Err(_) => "error",
        });
        result
    }

    async fn find(
        &self,
        key: CacheKey,
        identity: &Credentials,
        req: &AssumeRoleRequest,
    ) -> Result<Lookup, StsError> {
        // `get` borrows the key; `get_with` would allocate a shared copy even on a hit.
        let slot = match self.inner.slots.get(&key).await {
            Some(slot) => slot,
            None => {
                self.inner
                    .slots
                    .get_with(key.clone(), async { Arc::new(Slot::default()) })
                    .await
            }
        };
        let inner = &self.inner;

        let now = inner.clock.now();
        if let Some(entry) = slot.current()
            && inner.servable(&entry, now)
        {
            if now >= entry.refresh_at {
                self.refresh_in_background(&slot, &key, identity, req, now);
            }
            let outcome = if slot.refresh_failed.load(Ordering::Acquire) {
                Outcome::Stale
            } else {
                Outcome::Hit
            };
            return Ok(inner.lookup(entry, outcome));
        }

        // Miss: join the call in flight, or start one. Dropping this future
        // (the request's deadline) only stops the waiting, never the call.
        let mut flight = match self.join(&slot, &key, identity, req, false) {
            Join::Wait(flight) => flight,
            Join::Answered(result) => return result.map(|e| inner.lookup(e, Outcome::Hit)),
        };
        let result = match flight.wait_for(Option::is_some).await {
            Ok(done) => done.clone(),
            Err(_) => None,
        };
        match result {
            Some(result) => result.map(|e| inner.lookup(e, Outcome::Miss)),
            // The task ended without an answer (it panicked): nothing was stored.
            None => Err(StsError::Transport(
                "the call to STS ended without an answer".into(),
            )),
        }
    }

    /// The call in flight for `slot`, or a new one. Under the flight lock, so
    /// that a call ending meanwhile is seen: it stores its result before it
    /// clears the flight. A miss gets a still-valid credential instead of a new
    /// call; no call starts while the key backs off after a failure.
    fn join(
        &self,
        slot: &Arc<Slot>,
        key: &CacheKey,
        identity: &Credentials,
        req: &AssumeRoleRequest,
        refresh: bool,
    ) -> Join {
        let inner = &self.inner;
        let mut flight = slot.flight.lock().unwrap_or_else(|e| e.into_inner());
        // A closed channel is a task that died without answering: start anew.
        if let Some(running) = flight.as_ref().filter(|f| f.has_changed().is_ok()) {
            return Join::Wait(running.clone());
        }
        let now = inner.clock.now();
        if !refresh
            && let Some(entry) = slot.current()
            && inner.servable(&entry, now)
        {
            return Join::Answered(Ok(entry));
        }
        if let Some(f) = slot.failure.read().unwrap_or_else(|e| e.into_inner()).as_ref()
            && now < f.until
        {
            if !refresh {
                crate::prom::sts_backoff("key");
            }
            let left = (f.until - now).to_std().unwrap_or_default();
            return Join::Answered(Err(StsError::backing_off(left, f.error.clone())));
        }
        let (tx, rx) = watch::channel(None);
        *flight = Some(rx.clone());
        slot.in_flight.store(true, Ordering::Release);
        let (this, slot, key) = (self.clone(), slot.clone(), key.clone());
        let (identity, req) = (identity.clone(), req.clone());
        tokio::spawn(async move {
            let result = {
                // Cleared before the answer goes out (callers arriving later find
                // the stored result), and even if the call panics.
                let _landed = Landed(&slot);
                this.fly(&slot, &key, &identity, &req, refresh).await
            };
            let _ = tx.send(Some(result));
        });
        Join::Wait(rx)
    }

    fn refresh_in_background(
        &self,
        slot: &Arc<Slot>,
        key: &CacheKey,
        identity: &Credentials,
        req: &AssumeRoleRequest,
        now: DateTime<Utc>,
    ) {
        if let Some(not_before) = *slot.retry_refresh_at.read().unwrap_or_else(|e| e.into_inner())
            && now < not_before
        {
            return;
        }
        if slot.in_flight.load(Ordering::Acquire) {
            return; // one call per key at a time
        }
        // Nobody waits for it; the stored result serves the next lookups.
        let _ = self.join(slot, key, identity, req, true);
    }

    /// One call to STS for `slot` (run by the cache's own task) and its
    /// bookkeeping: the new entry, or the failure and its back-off.
    async fn fly(
        &self,
        slot: &Slot,
        key: &CacheKey,
        identity: &Credentials,
        req: &AssumeRoleRequest,
        refresh: bool,
    ) -> FlightResult {
        let inner = &self.inner;
        let fetched = match &inner.fleet {
            // A refresh wants a credential newer than the one held.
            Some(fleet) => {
                let older = refresh
                    .then(|| slot.current().map(|c| c.creds.expiration))
                    .flatten();
                inner.fetch_shared(fleet, key, identity, req, older).await
            }
            None => inner.fetch(identity, req).await,
        };
        match fetched {
            Ok(creds) => {
                let entry = Arc::new(Entry {
                    refresh_at: inner.refresh_at(&creds),
                    creds: Arc::new(creds),
                });
                info!(
                    role_arn = %req.role_arn, session_name = %req.session_name,
                    access_key_id = %key_id_prefix(&entry.creds.access_key_id),
                    expiration = %crate::sign::format_iso8601_extended(entry.creds.expiration),
                    refresh_at = %crate::sign::format_iso8601_extended(entry.refresh_at),
                    "cached new STS credential"
                );
                *slot.current.write().unwrap_or_else(|e| e.into_inner()) = Some(entry.clone());
                *slot.failure.write().unwrap_or_else(|e| e.into_inner()) = None;
                slot.failures.store(0, Ordering::Release);
                // A new credential is not stale, whichever call brought it.
                slot.refresh_failed.store(false, Ordering::Release);
                *slot.retry_refresh_at.write().unwrap_or_else(|e| e.into_inner()) = None;
                if refresh {
                    crate::prom::cache_refresh(true);
                }
                inner.record_health(None);
                Ok(entry)
            }
            Err(e) => {
                let now = inner.clock.now();
                let mut backoff = Duration::ZERO;
                let e = if e.is_transient() && !inner.timings.failure_backoff.is_off() {
                    let streak = slot.failures.fetch_add(1, Ordering::AcqRel).saturating_add(1);
                    // At least as long as the client's own throttling back-off, if it says so.
                    backoff = inner
                        .timings
                        .failure_backoff
                        .delay(streak)
                        .max(e.retry_after().unwrap_or_default());
                    let cause = e.into_cause();
                    *slot.failure.write().unwrap_or_else(|e| e.into_inner()) = Some(Failure {
                        error: cause.clone(),
                        until: now + TimeDelta::from_std(backoff).unwrap_or_default(),
                    });
                    warn!(
                        role_arn = %req.role_arn, session_name = %req.session_name, error = %cause,
                        backoff_ms = backoff.as_millis() as u64, failures_in_a_row = streak,
                        "STS call failed; misses of this key get this failure without a call until the back-off has passed"
                    );
                    StsError::backing_off(backoff, cause)
                } else {
                    e
                };
                if e.is_transient() {
                    inner.record_health(Some((now, &e)));
                }
                if refresh {
                    crate::prom::cache_refresh(false);
                    let wait = inner.timings.refresh_retry_after.max(backoff);
                    slot.refresh_failed.store(true, Ordering::Release);
                    *slot.retry_refresh_at.write().unwrap_or_else(|e| e.into_inner()) =
                        Some(now + TimeDelta::from_std(wait).unwrap_or_default());
                    let left = slot.current().map(|c| (c.creds.expiration - now).num_seconds());
                    warn!(
                        role_arn = %req.role_arn, session_name = %req.session_name, error = %e,
                        remaining_secs = left.unwrap_or(0),
                        "background refresh failed; serving the cached credential while it has min_remaining left"
                    );
                }
                Err(e)
            }
        }
    }
}

impl Inner {
    fn servable(&self, entry: &Entry, now: DateTime<Utc>) -> bool {
        remaining(&entry.creds, now) >= self.timings.min_remaining
    }

    fn lookup(&self, entry: Arc<Entry>, outcome: Outcome) -> Lookup {
        let min = TimeDelta::from_std(self.timings.min_remaining).unwrap_or_default();
        Lookup {
            refresh_after: entry.creds.expiration - min,
            credentials: entry.creds.clone(),
            outcome,
        }
    }

    /// Calls STS and refuses a credential too short-lived to hand out.
    async fn fetch(
        &self,
        identity: &Credentials,
        req: &AssumeRoleRequest,
    ) -> Result<TempCredentials, StsError> {
        let creds = self.sts.assume_role(identity, req).await?;
        let left = remaining(&creds, self.clock.now());
        if left < self.timings.min_remaining {
            return Err(StsError::ShortLived {
                remaining_secs: (creds.expiration - self.clock.now()).num_seconds(),
                min_remaining_secs: self.timings.min_remaining.as_secs(),
            });
        }
        Ok(creds)
    }

    /// A call succeeded (`None`) or failed for STS's own reasons.
    fn record_health(&self, failure: Option<(DateTime<Utc>, &StsError)>) {
        let mut h = self.health.write().unwrap_or_else(|e| e.into_inner());
        match failure {
            None => *h = StsHealth::default(),
            Some((now, e)) => {
                h.failing_since.get_or_insert(now);
                h.last_error = Some(e.clone().into_cause());
            }
        }
        crate::prom::sts_failing(h.failing_since.is_some());
    }

    /// `refresh_before` ahead of expiry, up to 10 % earlier so that entries minted
    /// together do not all refresh in the same second.
    fn refresh_at(&self, creds: &TempCredentials) -> DateTime<Utc> {
        let base = self.timings.refresh_before;
        let jitter_ms = rand::rng().random_range(0..=base.as_millis() as u64 / 10);
        let ahead = TimeDelta::from_std(base + Duration::from_millis(jitter_ms)).unwrap_or_default();
        creds.expiration - ahead
    }
}

fn remaining(creds: &TempCredentials, now: DateTime<Utc>) -> Duration {
    (creds.expiration - now).to_std().unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    /// A clock the test moves by hand.
    struct ManualClock(Mutex<DateTime<Utc>>);
    impl ManualClock {
        fn advance(&self, d: Duration) {
            let mut t = self.0.lock().unwrap();
            *t += TimeDelta::from_std(d).unwrap();
        }
    }
    impl Clock for ManualClock {
        fn now(&self) -> DateTime<Utc> {
            *self.0.lock().unwrap()
        }
    }

    /// Scripted STS double: counts calls, mints credentials valid for `life`,
    /// fails while `fail` is set, and can be slowed down.
    struct FakeSts {
        clock: Arc<ManualClock>,
        calls: AtomicUsize,
        fail: AtomicBool,
        /// Answered instead of `ServiceUnavailable` while `fail` is set.
        error: Mutex<Option<StsError>>,
        life: Mutex<Duration>,
        delay: Duration,
    }

    #[async_trait::async_trait]
    impl AssumeRole for FakeSts {
        async fn assume_role(
            &self,
            _: &Credentials,
            _: &AssumeRoleRequest,
        ) -> Result<TempCredentials, StsError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            if self.fail.load(Ordering::SeqCst) {
                if let Some(e) = self.error.lock().unwrap().clone() {
                    return Err(e);
                }
                return Err(StsError::Api {
                    status: 503,
                    code: "ServiceUnavailable".into(),
                    message: "down".into(),
                    request_id: None,
                });
            }
            let life = *self.life.lock().unwrap();
            Ok(TempCredentials {
                access_key_id: format!("STS.test{n}"),
                access_key_secret: "s".to_string().into(),
                security_token: "t".to_string().into(),
                expiration: self.clock.now() + TimeDelta::from_std(life).unwrap(),
                request_id: format!("req-{n}"),
            })
        }
    }

    fn setup(delay_ms: u64) -> (CredentialCache, Arc<FakeSts>, Arc<ManualClock>) {
        setup_timed(delay_ms, Backoff::OFF)
    }

    /// Like [`setup`], with the failure back-off of the defaults (1 s doubling
    /// to 30 s). The tests of the other guarantees run without it.
    fn setup_with_backoff(delay_ms: u64) -> (CredentialCache, Arc<FakeSts>, Arc<ManualClock>) {
        setup_timed(delay_ms, BACKOFF)
    }

    const BACKOFF: Backoff = Backoff {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(30),
    };

    fn setup_timed(
        delay_ms: u64,
        failure_backoff: Backoff,
    ) -> (CredentialCache, Arc<FakeSts>, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock(Mutex::new(Utc::now())));
        let sts = Arc::new(FakeSts {
            clock: clock.clone(),
            calls: AtomicUsize::new(0),
            fail: AtomicBool::new(false),
            error: Mutex::new(None),
            life: Mutex::new(Duration::from_secs(3600)),
            delay: Duration::from_millis(delay_ms),
        });
        let timings = CacheTimings {
            min_remaining: Duration::from_secs(15 * 60),
            refresh_before: Duration::from_secs(20 * 60),
            refresh_retry_after: Duration::from_secs(10),
            capacity: 1000,
            failure_backoff,
        };
        (
            CredentialCache::new(sts.clone(), clock.clone(), timings),
            sts,
            clock,
        )
    }

    fn identity() -> Credentials {
        Credentials {
            access_key_id: "LTAItest".into(),
            access_key_secret: "x".to_string().into(),
            security_token: None,
            expiration: None,
        }
    }

    fn request(policy: &str) -> AssumeRoleRequest {
        AssumeRoleRequest {
            role_arn: "acs:ram::1:role/r".into(),
            session_name: "s".into(),
            duration_seconds: 3600,
            policy: Some(policy.into()),
            external_id: None,
        }
    }

    /// Lets the spawned background refresh run to completion.
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[tokio::test]
    async fn concurrent_cold_lookups_make_one_call() {
        let (cache, sts, _) = setup(50);
        let req = request("p");
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let (c, r) = (cache.clone(), req.clone());
                tokio::spawn(async move { c.get(&identity(), &r).await.unwrap() })
            })
            .collect();
        let mut ids = std::collections::HashSet::new();
        for t in tasks {
            ids.insert(t.await.unwrap().credentials.access_key_id.clone());
        }
        assert_eq!(sts.calls.load(Ordering::SeqCst), 1);
        assert_eq!(ids.len(), 1);
    }

    #[tokio::test]
    async fn queued_callers_share_a_failure_instead_of_retrying_one_by_one() {
        let (cache, sts, _) = setup(50);
        sts.fail.store(true, Ordering::SeqCst);
        let req = request("p");
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (c, r) = (cache.clone(), req.clone());
                tokio::spawn(async move { c.get(&identity(), &r).await })
            })
            .collect();
        for t in tasks {
            assert!(t.await.unwrap().is_err());
        }
        assert_eq!(sts.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn keys_differ_by_policy() {
        let (cache, sts, _) = setup(0);
        let a = cache.get(&identity(), &request("a")).await.unwrap();
        let b = cache.get(&identity(), &request("b")).await.unwrap();
        assert_ne!(a.credentials.access_key_id, b.credentials.access_key_id);
        assert_eq!(sts.calls.load(Ordering::SeqCst), 2);
        let a2 = cache.get(&identity(), &request("a")).await.unwrap();
        assert_eq!(a2.outcome, Outcome::Hit);
        assert_eq!(a2.credentials.access_key_id, a.credentials.access_key_id);
    }

    #[tokio::test]
    async fn never_serves_less_than_min_remaining() {
        let (cache, sts, clock) = setup(0);
        let req = request("p");
        let first = cache.get(&identity(), &req).await.unwrap();
        // 46 minutes later 14 minutes remain: below min_remaining, so a new call.
        sts.fail.store(true, Ordering::SeqCst);
        clock.advance(Duration::from_secs(46 * 60));
        let err = cache.get(&identity(), &req).await.unwrap_err();
        assert_eq!(err.sts_code(), Some("ServiceUnavailable"));
        sts.fail.store(false, Ordering::SeqCst);
        let second = cache.get(&identity(), &req).await.unwrap();
        assert_ne!(first.credentials.access_key_id, second.credentials.access_key_id);
        assert!(second.credentials.expiration - clock.now() >= TimeDelta::minutes(15));
    }

    #[tokio::test]
    async fn a_fresh_credential_shorter_than_min_remaining_is_refused() {
        let (cache, sts, _) = setup(0);
        *sts.life.lock().unwrap() = Duration::from_secs(600);
        let err = cache.get(&identity(), &request("p")).await.unwrap_err();
        assert!(matches!(err, StsError::ShortLived { .. }));
    }

    #[tokio::test]
    async fn refreshes_ahead_in_background_while_serving_the_old_one() {
        let (cache, sts, clock) = setup(0);
        let req = request("p");
        let first = cache.get(&identity(), &req).await.unwrap();
        // 42 minutes in: 18 minutes left, inside refresh_before (20 min + jitter).
        clock.advance(Duration::from_secs(42 * 60));
        let during = cache.get(&identity(), &req).await.unwrap();
        assert_eq!(during.credentials.access_key_id, first.credentials.access_key_id);
        settle().await;
        assert_eq!(sts.calls.load(Ordering::SeqCst), 2);
        let after = cache.get(&identity(), &req).await.unwrap();
        assert_ne!(after.credentials.access_key_id, first.credentials.access_key_id);
        assert_eq!(after.outcome, Outcome::Hit);
    }

    #[tokio::test]
    async fn stale_if_error_then_fails_once_below_min_remaining() {
        let (cache, sts, clock) = setup(0);
        let req = request("p");
        let first = cache.get(&identity(), &req).await.unwrap();
        sts.fail.store(true, Ordering::SeqCst);
        clock.advance(Duration::from_secs(42 * 60));
        let _ = cache.get(&identity(), &req).await.unwrap(); // starts the refresh, which fails
        settle().await;
        let stale = cache.get(&identity(), &req).await.unwrap();
        assert_eq!(stale.outcome, Outcome::Stale);
        assert_eq!(stale.credentials.access_key_id, first.credentials.access_key_id);
        // Failed refreshes are retried only after refresh_retry_after.
        assert_eq!(sts.calls.load(Ordering::SeqCst), 2);
        clock.advance(Duration::from_secs(4 * 60)); // 14 minutes left
        assert!(cache.get(&identity(), &req).await.is_err());
        sts.fail.store(false, Ordering::SeqCst);
        let fresh = cache.get(&identity(), &req).await.unwrap();
        assert_eq!(fresh.outcome, Outcome::Miss);
    }

    /// Issue 13 item 2: a caller whose deadline passes stops waiting, but the
    /// call it started goes on and its result serves whoever asks next.
    #[tokio::test(start_paused = true)]
    async fn an_abandoned_caller_does_not_cancel_the_call() {
        let (cache, sts, _) = setup(1000);
        let req = request("p");
        let gave_up = tokio::time::timeout(Duration::from_millis(300), cache.get(&identity(), &req)).await;
        assert!(gave_up.is_err(), "the caller's deadline passes first");
        tokio::time::sleep(Duration::from_secs(2)).await; // the call finishes meanwhile
        let next = cache.get(&identity(), &req).await.unwrap();
        assert_eq!(sts.calls.load(Ordering::SeqCst), 1, "calls");
        assert_eq!(next.outcome, Outcome::Hit);
    }

    /// Waves of callers that each give up before STS answers share one call:
    /// every wave joins the call in flight instead of starting its own.
    #[tokio::test(start_paused = true)]
    async fn waves_of_impatient_callers_share_one_call() {
        let (cache, sts, _) = setup(1000);
        let req = request("p");
        for _wave in 0..3 {
            let tasks: Vec<_> = (0..50)
                .map(|_| {
                    let (c, r) = (cache.clone(), req.clone());
                    tokio::spawn(async move {
                        tokio::time::timeout(Duration::from_millis(300), c.get(&identity(), &r)).await
                    })
                })
                .collect();
            for t in tasks {
                assert!(t.await.unwrap().is_err(), "every caller of the wave gives up");
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let served = cache.get(&identity(), &req).await.unwrap();
        assert_eq!(sts.calls.load(Ordering::SeqCst), 1, "calls");
        assert_eq!(served.credentials.access_key_id, "STS.test0");
    }

    /// Issue 13 item 3: misses right after a failed call get its failure
    /// without calling STS again.
    #[tokio::test]
    async fn misses_after_a_failed_call_do_not_call_again_during_the_backoff() {
        let (cache, sts, _) = setup_with_backoff(0);
        sts.fail.store(true, Ordering::SeqCst);
        let req = request("p");
        for _ in 0..10 {
            let err = cache.get(&identity(), &req).await.unwrap_err();
            assert_eq!(err.sts_code(), Some("ServiceUnavailable"));
            let wait = err.retry_after().expect("says when to come back");
            assert!(wait > Duration::ZERO && wait <= BACKOFF.initial, "{wait:?}");
        }
        assert_eq!(sts.calls.load(Ordering::SeqCst), 1, "calls");
        // Other keys are not affected.
        cache.get(&identity(), &request("other")).await.unwrap_err();
        assert_eq!(sts.calls.load(Ordering::SeqCst), 2, "calls");
    }

    fn until_next_call(err: &StsError) -> Duration {
        err.retry_after()
            .expect("a transient failure says when to come back")
    }

    #[tokio::test]
    async fn the_backoff_grows_with_failures_in_a_row_and_a_success_resets_it() {
        let (cache, sts, clock) = setup_with_backoff(0);
        sts.fail.store(true, Ordering::SeqCst);
        let req = request("p");
        let calls = || sts.calls.load(Ordering::SeqCst);
        let mut waits = Vec::new();
        for n in 1..=4u32 {
            let err = cache.get(&identity(), &req).await.unwrap_err();
            assert_eq!(calls(), n as usize);
            let wait = until_next_call(&err);
            // Jittered: between half the step and the whole step (1, 2, 4, 8 s).
            let step = BACKOFF.initial * 2u32.pow(n - 1);
            assert!(wait * 2 >= step && wait <= step, "failure {n}: {wait:?}");
            // Just before the wait is over: still no call.
            clock.advance(wait - Duration::from_millis(1));
            assert!(cache.get(&identity(), &req).await.is_err());
            assert_eq!(calls(), n as usize);
            clock.advance(Duration::from_millis(1));
            waits.push(wait);
        }
        // STS is back: the next miss after the wait calls once and is served.
        sts.fail.store(false, Ordering::SeqCst);
        let fresh = cache.get(&identity(), &req).await.unwrap();
        assert_eq!(fresh.outcome, Outcome::Miss);
        assert_eq!(calls(), 5);
        // The next failure (once this credential is used up) starts over at the first step.
        sts.fail.store(true, Ordering::SeqCst);
        clock.advance(Duration::from_secs(46 * 60));
        let err = cache.get(&identity(), &req).await.unwrap_err();
        assert!(until_next_call(&err) <= BACKOFF.initial, "{waits:?}");
    }

    #[tokio::test]
    async fn permanent_errors_are_not_backed_off() {
        let (cache, sts, _) = setup_with_backoff(0);
        sts.fail.store(true, Ordering::SeqCst);
        *sts.error.lock().unwrap() = Some(StsError::Api {
            status: 403,
            code: "NoPermission".into(),
            message: "no".into(),
            request_id: None,
        });
        let req = request("p");
        for _ in 0..3 {
            let err = cache.get(&identity(), &req).await.unwrap_err();
            assert_eq!(err.sts_code(), Some("NoPermission"));
            assert_eq!(err.retry_after(), None);
        }
        // Fixing the role in RAM takes effect with the next request.
        assert_eq!(sts.calls.load(Ordering::SeqCst), 3);
        assert!(cache.sts_health().failing_since.is_none());
    }

    /// The client's throttling back-off (carried by its error) is honoured by
    /// the key's back-off when it is the longer one.
    #[tokio::test]
    async fn a_throttled_call_backs_the_key_off_as_long_as_the_client_says() {
        let (cache, sts, clock) = setup_with_backoff(0);
        sts.fail.store(true, Ordering::SeqCst);
        let throttled = StsError::Api {
            status: 400,
            code: "Throttling.User".into(),
            message: "flow control".into(),
            request_id: None,
        };
        *sts.error.lock().unwrap() = Some(StsError::backing_off(Duration::from_secs(5), throttled));
        let req = request("p");
        let err = cache.get(&identity(), &req).await.unwrap_err();
        assert_eq!(err.kind(), crate::sts::StsErrorKind::Throttled);
        assert_eq!(err.sts_code(), Some("Throttling.User"));
        assert_eq!(until_next_call(&err), Duration::from_secs(5));
        clock.advance(Duration::from_secs(3));
        let err = cache.get(&identity(), &req).await.unwrap_err();
        assert_eq!(until_next_call(&err), Duration::from_secs(2));
        assert_eq!(sts.calls.load(Ordering::SeqCst), 1);
        clock.advance(Duration::from_secs(2));
        sts.fail.store(false, Ordering::SeqCst);
        assert!(cache.get(&identity(), &req).await.is_ok());
        assert_eq!(sts.calls.load(Ordering::SeqCst), 2);
    }

    /// A call whose callers all gave up still leaves its failure behind.
    #[tokio::test(start_paused = true)]
    async fn an_abandoned_call_that_fails_still_backs_the_key_off() {
        let (cache, sts, _) = setup_with_backoff(1000);
        sts.fail.store(true, Ordering::SeqCst);
        let req = request("p");
        let gave_up = tokio::time::timeout(Duration::from_millis(300), cache.get(&identity(), &req)).await;
        assert!(gave_up.is_err());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let err = cache.get(&identity(), &req).await.unwrap_err();
        assert_eq!(err.sts_code(), Some("ServiceUnavailable"));
        assert_eq!(sts.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn health_tells_since_when_sts_is_failing() {
        let (cache, sts, clock) = setup_with_backoff(0);
        let req = request("p");
        assert!(cache.sts_health().failing_since.is_none());
        sts.fail.store(true, Ordering::SeqCst);
        let since = clock.now();
        cache.get(&identity(), &req).await.unwrap_err();
        clock.advance(Duration::from_secs(60));
        cache.get(&identity(), &req).await.unwrap_err();
        let h = cache.sts_health();
        assert_eq!(h.failing_since, Some(since), "the first failure of the streak");
        assert_eq!(h.last_error.unwrap().sts_code(), Some("ServiceUnavailable"));
        sts.fail.store(false, Ordering::SeqCst);
        clock.advance(Duration::from_secs(60));
        cache.get(&identity(), &req).await.unwrap();
        let h = cache.sts_health();
        assert!(h.failing_since.is_none() && h.last_error.is_none());
    }

    #[tokio::test]
    async fn refresh_after_is_the_last_servable_moment() {
        let (cache, _, _) = setup(0);
        let l = cache.get(&identity(), &request("p")).await.unwrap();
        assert_eq!(l.credentials.expiration - l.refresh_after, TimeDelta::minutes(15));
    }

    /// Fleet mode while Redis does not answer (here: nothing listens): `local`
    /// serves through this process's own single flight, `refuse` calls nothing.
    #[tokio::test]
    async fn fleet_fallback_is_local_single_flight_or_refusal() {
        use crate::config::{OnUnavailable, SharedConfig};
        for (mode, serves) in [(OnUnavailable::Local, true), (OnUnavailable::Refuse, false)] {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let cfg = SharedConfig {
                url: format!("redis://127.0.0.1:{port}"),
                username_env: None,
                password_env: None,
                key_prefix: "t:".into(),
                encryption_key_env: "K".into(),
                on_unavailable: mode,
                replicas: 3,
                command_timeout: Duration::from_millis(100),
                connect_timeout: Duration::from_millis(100),
                ca_file: None,
            };
            let env = std::collections::BTreeMap::from([("K".to_string(), "k".repeat(32))]);
            let fleet = Fleet::connect(&cfg, Duration::from_secs(1), "id".into(), &env)
                .await
                .unwrap();
            assert!(!fleet.available());
            let (plain, sts, clock) = setup(50);
            let cache = CredentialCache::with_fleet(sts.clone(), clock, plain.inner.timings, Some(fleet));
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..20 {
                let cache = cache.clone();
                set.spawn(async move { cache.get(&identity(), &request("{}")).await });
            }
            let results = set.join_all().await;
            if serves {
                assert!(results.iter().all(|r| r.is_ok()), "{mode:?}");
                assert_eq!(
                    sts.calls.load(Ordering::SeqCst),
                    1,
                    "one call per key per replica"
                );
            } else {
                assert!(
                    results
                        .iter()
                        .all(|r| matches!(r, Err(StsError::Transport(m)) if m.contains("refuse")))
                );
                assert_eq!(sts.calls.load(Ordering::SeqCst), 0);
            }
        }
    }
}
