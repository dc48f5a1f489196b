//! The credential cache.
//!
//! Guarantees (each covered by a test in this file and again end-to-end):
//! - **Minimum life**: a credential is handed out only while it has at least
//!   `min_remaining` left, so no client considers it stale on arrival.
//! - **Single flight**: concurrent lookups of one key share one AssumeRole call;
//!   callers that queued behind a failed call get that failure, not a call each.
//! - **Refresh ahead**: from `refresh_at` (`refresh_before` before expiry, minus up
//!   to 10 % jitter) the first lookup starts one background refresh and every
//!   caller keeps getting the still-valid credential meanwhile.
//! - **Stale if error**: if that refresh fails, the old credential keeps being
//!   served (with a warning) while it satisfies `min_remaining`; afterwards the
//!   lookup fails with the STS error.
//! - **Budget**: only calls to STS pass through the client's token bucket; a hit
//!   never waits for anything but a short read lock.
//!
//! The key holds everything that changes what a credential may do: the
//! identity that signs the call, the role, the SHA-256 of the exact policy text,
//! the duration and the session name.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use rand::Rng as _;
use tracing::{info, warn};

use super::client::AssumeRole;
use super::{AssumeRoleRequest, StsError, TempCredentials};
use crate::identity::{Credentials, key_id_prefix};

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

struct Entry {
    creds: Arc<TempCredentials>,
    refresh_at: DateTime<Utc>,
}

#[derive(Default)]
struct Slot {
    current: RwLock<Option<Arc<Entry>>>,
    /// Held while a call to STS for this key is in flight.
    fetching: tokio::sync::Mutex<()>,
    /// Bumped when a call finishes, so queued callers know one just happened.
    generation: AtomicU64,
    last_error: RwLock<Option<StsError>>,
    refreshing: AtomicBool,
    refresh_failed: AtomicBool,
    retry_refresh_at: RwLock<Option<DateTime<Utc>>>,
}

impl Slot {
    fn current(&self) -> Option<Arc<Entry>> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
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
}

impl CredentialCache {
    pub fn new(sts: Arc<dyn AssumeRole>, clock: Arc<dyn Clock>, timings: CacheTimings) -> Self {
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
                    .get_with(key, async { Arc::new(Slot::default()) })
                    .await
            }
        };
        let inner = &self.inner;

        let now = inner.clock.now();
        if let Some(entry) = slot.current()
            && inner.servable(&entry, now)
        {
            if now >= entry.refresh_at {
                self.refresh_in_background(&slot, identity, req, now);
            }
            let outcome = if slot.refresh_failed.load(Ordering::Acquire) {
                Outcome::Stale
            } else {
                Outcome::Hit
            };
            return Ok(inner.lookup(entry, outcome));
        }

        // Miss: one caller calls STS, the others queue on the lock and reuse its result.
        let seen = slot.generation.load(Ordering::Acquire);
        let _guard = slot.fetching.lock().await;
        if slot.generation.load(Ordering::Acquire) != seen {
            if let Some(entry) = slot.current()
                && inner.servable(&entry, inner.clock.now())
            {
                return Ok(inner.lookup(entry, Outcome::Hit));
            }
            if let Some(err) = slot.last_error.read().unwrap_or_else(|e| e.into_inner()).clone() {
                return Err(err);
            }
        }
        let entry = inner.fetch_into(&slot, identity, req).await?;
        Ok(inner.lookup(entry, Outcome::Miss))
    }

    fn refresh_in_background(
        &self,
        slot: &Arc<Slot>,
        identity: &Credentials,
        req: &AssumeRoleRequest,
        now: DateTime<Utc>,
    ) {
        if let Some(not_before) = *slot.retry_refresh_at.read().unwrap_or_else(|e| e.into_inner())
            && now < not_before
        {
            return;
        }
        if slot.refreshing.swap(true, Ordering::AcqRel) {
            return; // one refresh per key at a time
        }
        let (this, slot, identity, req) = (self.clone(), slot.clone(), identity.clone(), req.clone());
        tokio::spawn(async move {
            let inner = &this.inner;
            let _guard = slot.fetching.lock().await;
            // A synchronous miss may have replaced the entry while we waited.
            let still_due = slot.current().is_none_or(|e| inner.clock.now() >= e.refresh_at);
            if still_due {
                match inner.fetch_into(&slot, &identity, &req).await {
                    Ok(_) => {
                        crate::prom::cache_refresh(true);
                        slot.refresh_failed.store(false, Ordering::Release);
                        *slot.retry_refresh_at.write().unwrap_or_else(|e| e.into_inner()) = None;
                    }
                    Err(e) => {
                        crate::prom::cache_refresh(false);
                        let retry = inner.clock.now()
                            + TimeDelta::from_std(inner.timings.refresh_retry_after).unwrap_or_default();
                        slot.refresh_failed.store(true, Ordering::Release);
                        *slot.retry_refresh_at.write().unwrap_or_else(|e| e.into_inner()) = Some(retry);
                        let left = slot
                            .current()
                            .map(|c| (c.creds.expiration - inner.clock.now()).num_seconds());
                        warn!(
                            role_arn = %req.role_arn, session_name = %req.session_name, error = %e,
                            remaining_secs = left.unwrap_or(0),
                            "background refresh failed; serving the cached credential while it has min_remaining left"
                        );
                    }
                }
            }
            slot.refreshing.store(false, Ordering::Release);
        });
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

    /// Calls STS (the caller holds `slot.fetching`) and stores the result.
    async fn fetch_into(
        &self,
        slot: &Slot,
        identity: &Credentials,
        req: &AssumeRoleRequest,
    ) -> Result<Arc<Entry>, StsError> {
        let result = self.sts.assume_role(identity, req).await.and_then(|creds| {
            let left = remaining(&creds, self.clock.now());
            if left < self.timings.min_remaining {
                return Err(StsError::ShortLived {
                    remaining_secs: (creds.expiration - self.clock.now()).num_seconds(),
                    min_remaining_secs: self.timings.min_remaining.as_secs(),
                });
            }
            Ok(creds)
        });
        let out = match result {
            Ok(creds) => {
                let entry = Arc::new(Entry {
                    refresh_at: self.refresh_at(&creds),
                    creds: Arc::new(creds),
                });
                info!(
                    role_arn = %req.role_arn, session_name = %req.session_name,
                    access_key_id = %key_id_prefix(&entry.creds.access_key_id),
                    expiration = %super::format_expiration(entry.creds.expiration),
                    refresh_at = %super::format_expiration(entry.refresh_at),
                    "cached new STS credential"
                );
                *slot.current.write().unwrap_or_else(|e| e.into_inner()) = Some(entry.clone());
                *slot.last_error.write().unwrap_or_else(|e| e.into_inner()) = None;
                Ok(entry)
            }
            Err(e) => {
                *slot.last_error.write().unwrap_or_else(|e| e.into_inner()) = Some(e.clone());
                Err(e)
            }
        };
        slot.generation.fetch_add(1, Ordering::AcqRel);
        out
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
        let clock = Arc::new(ManualClock(Mutex::new(Utc::now())));
        let sts = Arc::new(FakeSts {
            clock: clock.clone(),
            calls: AtomicUsize::new(0),
            fail: AtomicBool::new(false),
            life: Mutex::new(Duration::from_secs(3600)),
            delay: Duration::from_millis(delay_ms),
        });
        let timings = CacheTimings {
            min_remaining: Duration::from_secs(15 * 60),
            refresh_before: Duration::from_secs(20 * 60),
            refresh_retry_after: Duration::from_secs(10),
            capacity: 1000,
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

    #[tokio::test]
    async fn refresh_after_is_the_last_servable_moment() {
        let (cache, _, _) = setup(0);
        let l = cache.get(&identity(), &request("p")).await.unwrap();
        assert_eq!(l.credentials.expiration - l.refresh_after, TimeDelta::minutes(15));
    }
}
