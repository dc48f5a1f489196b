//! Fleet mode's part of the cache: behind the in-process cache (whose hits
//! never get here), a second level in Redis and a fleet-wide single flight.
//!
//! A miss (or a refresh) of this replica's own single flight: looks in Redis;
//! else takes the key's flight lock (`SET NX PX`, renewed while its holder
//! works) and calls STS, writes the sealed credential and drops the lock; a
//! replica that finds the lock taken polls Redis for the credential, and takes
//! the lock itself if it vanishes with nothing written (a dead holder blocks
//! the others at most `flight_ttl`, the STS timeout). Redis unavailable: the
//! fallback (`shared.on_unavailable`).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use secrecy::ExposeSecret as _;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{CacheKey, Inner, remaining};
use crate::config::OnUnavailable;
use crate::credentials::Credentials;
use crate::shared::{Fleet, Unavailable};
use crate::sts::{AssumeRoleRequest, StsError, TempCredentials};

/// Redis key kind of cached credentials.
const KIND: &str = "cred";
/// The longest a replica waits for another replica's flight, whatever happens.
const MAX_FLIGHT_WAIT: Duration = Duration::from_secs(300);
const POLL_FIRST: Duration = Duration::from_millis(20);
const POLL_MAX: Duration = Duration::from_millis(200);

/// The sealed value: the credential and its expiry.
#[derive(Serialize, Deserialize)]
struct Stored {
    ak: String,
    sk: String,
    token: String,
    exp: DateTime<Utc>,
    rid: String,
}

impl CacheKey {
    /// Today's cache key as text, the identity given as `identity_tag` (see
    /// `Fleet::connect`): the associated data of the sealed value and what the
    /// Redis key name is an HMAC of.
    pub fn fleet_text(&self, identity_tag: &str) -> String {
        format!(
            "{identity_tag}\n{}\n{}\n{}\n{}",
            self.role_arn, self.policy_sha256, self.duration_seconds, self.session_name
        )
    }
}

enum Waited {
    Landed(TempCredentials),
    /// The lock is gone and nothing was written: take it.
    Vanished,
    Unavailable,
}

impl Inner {
    /// A credential for `key` from Redis or from the one STS call of the
    /// fleet; `older`: for a refresh, the expiry of the credential held (only
    /// a newer one will do).
    pub(super) async fn fetch_shared(
        &self,
        fleet: &Arc<Fleet>,
        key: &CacheKey,
        identity: &Credentials,
        req: &AssumeRoleRequest,
        older: Option<DateTime<Utc>>,
    ) -> Result<TempCredentials, StsError> {
        let plain = key.fleet_text(&fleet.identity_tag);
        match self.l2_get(fleet, &plain, older).await {
            Ok(Some(c)) => return Ok(c),
            Ok(None) => {}
            Err(Unavailable) => return self.fallback(fleet, identity, req).await,
        }
        let deadline = Instant::now() + MAX_FLIGHT_WAIT;
        loop {
            match fleet.try_lock(&plain).await {
                Err(Unavailable) => return self.fallback(fleet, identity, req).await,
                Ok(Some(lock)) => {
                    crate::prom::shared_flight(true);
                    // Another replica may have landed between the look and the lock.
                    if let Ok(Some(c)) = self.l2_get(fleet, &plain, older).await {
                        fleet.unlock(lock).await;
                        return Ok(c);
                    }
                    let keep = fleet.keep_alive(&lock);
                    let result = self.fetch(identity, req).await;
                    if let Ok(c) = &result {
                        self.l2_put(fleet, &plain, c).await;
                    }
                    drop(keep);
                    fleet.unlock(lock).await;
                    return result;
                }
                Ok(None) => crate::prom::shared_flight(false),
            }
            match self.wait_flight(fleet, &plain, older, deadline).await {
                Some(Waited::Landed(c)) => return Ok(c),
                Some(Waited::Vanished) => continue,
                Some(Waited::Unavailable) => return self.fallback(fleet, identity, req).await,
                None => {
                    return Err(StsError::Transport(
                        "another replica's call to STS for this key did not land in time".into(),
                    ));
                }
            }
        }
    }

    /// Polls for another replica's flight; `None` past `deadline`.
    async fn wait_flight(
        &self,
        fleet: &Fleet,
        plain: &str,
        older: Option<DateTime<Utc>>,
        deadline: Instant,
    ) -> Option<Waited> {
        let mut every = POLL_FIRST;
        while Instant::now() < deadline {
            tokio::time::sleep(every).await;
            every = (every * 3 / 2).min(POLL_MAX);
            match self.l2_get(fleet, plain, older).await {
                Ok(Some(c)) => return Some(Waited::Landed(c)),
                Ok(None) => {}
                Err(Unavailable) => return Some(Waited::Unavailable),
            }
            match fleet.lock_held(plain).await {
                Ok(true) => {}
                Ok(false) => return Some(Waited::Vanished),
                Err(Unavailable) => return Some(Waited::Unavailable),
            }
        }
        None
    }

    /// Redis unavailable: this replica alone (its own single flight, the
    /// fallback budget), or no new credential at all.
    async fn fallback(
        &self,
        fleet: &Fleet,
        identity: &Credentials,
        req: &AssumeRoleRequest,
    ) -> Result<TempCredentials, StsError> {
        match fleet.on_unavailable {
            OnUnavailable::Local => self.fetch(identity, req).await,
            OnUnavailable::Refuse => Err(StsError::Transport(
                "the fleet's shared state (Redis) is unavailable and shared.on_unavailable is \"refuse\""
                    .into(),
            )),
        }
    }

    /// A servable credential (newer than `older`, if given) from Redis.
    async fn l2_get(
        &self,
        fleet: &Fleet,
        plain: &str,
        older: Option<DateTime<Utc>>,
    ) -> Result<Option<TempCredentials>, Unavailable> {
        let found = fleet.get_sealed(KIND, plain).await?.and_then(|bytes| {
            let parsed = serde_json::from_slice::<Stored>(&bytes).ok();
            if parsed.is_none() {
                fleet.undecryptable(&fleet.name(KIND, plain));
            }
            parsed
        });
        let now = self.clock.now();
        let usable = found
            .filter(|s| older.is_none_or(|old| s.exp > old))
            .map(|s| TempCredentials {
                access_key_id: s.ak,
                access_key_secret: s.sk.into(),
                security_token: s.token.into(),
                expiration: s.exp,
                request_id: s.rid,
            })
            .filter(|c| remaining(c, now) >= self.timings.min_remaining);
        crate::prom::shared_lookup(usable.is_some());
        Ok(usable)
    }

    /// Stores `c` for as long as it may be served (`expiry − min_remaining`).
    async fn l2_put(&self, fleet: &Fleet, plain: &str, c: &TempCredentials) {
        let min = TimeDelta::from_std(self.timings.min_remaining).unwrap_or_default();
        let ttl = (c.expiration - min - self.clock.now())
            .to_std()
            .unwrap_or_default();
        let stored = Stored {
            ak: c.access_key_id.clone(),
            sk: c.access_key_secret.expose_secret().to_owned(),
            token: c.security_token.expose_secret().to_owned(),
            exp: c.expiration,
            rid: c.request_id.clone(),
        };
        let bytes = serde_json::to_vec(&stored).expect("plain strings and a time serialize");
        let _ = fleet.put_sealed(KIND, plain, &bytes, ttl).await;
    }
}
