//! Per-grant rate limits, per authenticated subject and per client IP
//! (governor's GCRA). A refused request gets 429 with `Retry-After`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;

use axum::http::StatusCode;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tracing::warn;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::grants::Grant;

struct GrantLimits {
    per_subject: Option<DefaultKeyedRateLimiter<String>>,
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

pub struct Limits {
    by_grant: HashMap<String, GrantLimits>,
}

fn keyed<K: std::hash::Hash + Eq + Clone>(per_minute: u32) -> Option<DefaultKeyedRateLimiter<K>> {
    NonZeroU32::new(per_minute).map(|n| RateLimiter::keyed(Quota::per_minute(n)))
}

/// Keyed limiters keep one cell per key; past this many, idle ones are dropped.
const MAX_KEYS: usize = 100_000;

impl Limits {
    pub fn new<'a>(grants: impl IntoIterator<Item = &'a Grant>) -> Self {
        let by_grant = grants
            .into_iter()
            .map(|g| {
                let limits = GrantLimits {
                    per_subject: keyed(g.per_subject_per_minute),
                    per_ip: keyed(g.per_ip_per_minute),
                };
                (g.name.clone(), limits)
            })
            .collect();
        Limits { by_grant }
    }

    pub fn check(&self, grant: &Grant, principal: &Principal, ip: Option<IpAddr>) -> Result<(), ApiError> {
        let Some(l) = self.by_grant.get(&grant.name) else {
            return Ok(());
        };
        if let (Some(lim), Some(ip)) = (&l.per_ip, ip) {
            if lim.len() > MAX_KEYS {
                lim.retain_recent();
            }
            if let Err(not_until) = lim.check_key(&ip) {
                return Err(limited(
                    grant,
                    "client IP",
                    not_until.wait_time_from(DefaultClock::default().now()),
                ));
            }
        }
        if let (Some(lim), Some(subject)) = (&l.per_subject, &principal.subject) {
            if lim.len() > MAX_KEYS {
                lim.retain_recent();
            }
            if let Err(not_until) = lim.check_key(subject) {
                return Err(limited(
                    grant,
                    "subject",
                    not_until.wait_time_from(DefaultClock::default().now()),
                ));
            }
        }
        Ok(())
    }
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
