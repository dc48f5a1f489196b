//! Per-grant rate limits, per authenticated subject and per client IP
//! (governor's GCRA). A refused request gets 429 with `Retry-After`.
//! In fleet mode the same quotas are kept fleet-wide in Redis
//! (`shared::Fleet::gcra`); while Redis is unavailable, by each replica.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::http::StatusCode;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tracing::warn;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::grants::Grant;
use crate::shared::{Fleet, Quota as FleetQuota};

struct GrantLimits {
    per_subject: Option<DefaultKeyedRateLimiter<String>>,
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// The quotas these limiters were built with (per minute).
    quotas: (u32, u32),
}

pub struct Limits {
    by_grant: HashMap<String, Arc<GrantLimits>>,
    fleet: Option<Arc<Fleet>>,
}

fn keyed<K: std::hash::Hash + Eq + Clone>(per_minute: u32) -> Option<DefaultKeyedRateLimiter<K>> {
    NonZeroU32::new(per_minute).map(|n| RateLimiter::keyed(Quota::per_minute(n)))
}

/// Keyed limiters keep one cell per key; past this many, idle ones are dropped.
const MAX_KEYS: usize = 100_000;

impl Limits {
    pub fn new<'a>(grants: impl IntoIterator<Item = &'a Grant>) -> Self {
        Self::carry_over(grants, None)
    }

    /// Like [`Limits::new`], keeping `previous`'s counters for every grant
    /// whose limits are unchanged (a config reload does not reset them).
    pub fn carry_over<'a>(grants: impl IntoIterator<Item = &'a Grant>, previous: Option<&Limits>) -> Self {
        let by_grant = grants
            .into_iter()
            .map(|g| {
                let quotas = (g.per_subject_per_minute, g.per_ip_per_minute);
                let kept = previous
                    .and_then(|p| p.by_grant.get(&g.name))
                    .filter(|l| l.quotas == quotas)
                    .cloned();
                let limits = kept.unwrap_or_else(|| {
                    Arc::new(GrantLimits {
                        per_subject: keyed(quotas.0),
                        per_ip: keyed(quotas.1),
                        quotas,
                    })
                });
                (g.name.clone(), limits)
            })
            .collect();
        Limits {
            by_grant,
            fleet: None,
        }
    }

    /// Keeps the quotas fleet-wide in `fleet` (the local limiters stay, for the fallback).
    pub fn with_fleet(mut self, fleet: Option<Arc<Fleet>>) -> Self {
        self.fleet = fleet;
        self
    }

    /// The fleet's answer: `None` when not in fleet mode or Redis is unavailable.
    async fn fleet_take(
        &self,
        grant: &Grant,
        by: &str,
        key: &str,
        per_minute: u32,
    ) -> Option<Result<(), ApiError>> {
        let fleet = self.fleet.as_ref()?;
        let plain = format!("{}\n{by}\n{key}", grant.name);
        match fleet
            .gcra("rl", &plain, FleetQuota::per_minute(per_minute), false)
            .await
        {
            Ok(Ok(_)) => Some(Ok(())),
            Ok(Err(wait)) => Some(Err(limited(grant, by, wait))),
            Err(_) => None,
        }
    }

    /// Per client IP: checked before authentication, so that a flood of bad
    /// credentials is throttled too.
    pub async fn check_ip(&self, grant: &Grant, ip: Option<IpAddr>) -> Result<(), ApiError> {
        let Some(limits) = self.by_grant.get(&grant.name) else {
            return Ok(());
        };
        match (limits.per_ip.as_ref(), ip) {
            (Some(lim), Some(ip)) => {
                let shared = self
                    .fleet_take(grant, "client IP", &ip.to_string(), limits.quotas.1)
                    .await;
                shared
                    .unwrap_or_else(|| take(lim, &ip, grant, "client IP"))
                    .inspect_err(|_| {
                        crate::prom::rate_limited(&grant.name, "ip");
                    })
            }
            _ => Ok(()),
        }
    }

    /// Per authenticated subject: checked once the caller is known.
    pub async fn check_subject(&self, grant: &Grant, principal: &Principal) -> Result<(), ApiError> {
        let Some(limits) = self.by_grant.get(&grant.name) else {
            return Ok(());
        };
        // Qualified: an API key `alice` and a JWT user `alice` are two callers.
        match (limits.per_subject.as_ref(), principal.qualified_subject()) {
            (Some(lim), Some(subject)) => {
                let shared = self.fleet_take(grant, "subject", &subject, limits.quotas.0).await;
                shared
                    .unwrap_or_else(|| take(lim, &subject, grant, "subject"))
                    .inspect_err(|_| {
                        crate::prom::rate_limited(&grant.name, "subject");
                    })
            }
            _ => Ok(()),
        }
    }
}

fn take<K: std::hash::Hash + Eq + Clone>(
    lim: &DefaultKeyedRateLimiter<K>,
    key: &K,
    grant: &Grant,
    by: &str,
) -> Result<(), ApiError> {
    if lim.len() > MAX_KEYS {
        lim.retain_recent();
    }
    lim.check_key(key)
        .map_err(|not_until| limited(grant, by, not_until.wait_time_from(DefaultClock::default().now())))
}

fn limited(grant: &Grant, by: &str, wait: std::time::Duration) -> ApiError {
    warn!(grant = %grant.name, by, "rate limited");
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!(
            "too many requests for grant {:?} from this {by}; retry later",
            grant.name
        ),
    );
    e.retry_after = Some(wait.as_secs().max(1));
    e
}
