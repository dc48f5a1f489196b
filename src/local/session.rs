//! What the local STS emulator minted, shared with the local OSS sink: the sink
//! accepts a temporary credential only if it was issued here, with exactly its
//! token, before its expiry, and only within its session policy.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};

use crate::credentials::{KeyId, Redact};

/// One AssumeRole result. `policy` is the parsed inline session policy; `None`
/// means the session was issued without one (the emulated role allows all of OSS).
#[derive(Clone)]
pub struct Session {
    pub access_key_id: String,
    pub access_key_secret: String,
    pub security_token: String,
    pub expiration: DateTime<Utc>,
    pub policy: Option<serde_json::Value>,
    pub role_arn: String,
    pub session_name: String,
}

impl std::fmt::Debug for Session {
    // The secret and the token never reach logs; the id only as its prefix.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("access_key_id", &KeyId(&self.access_key_id))
            .field("access_key_secret", &Redact)
            .field("security_token", &Redact)
            .field("expiration", &self.expiration)
            .field("policy", &self.policy.is_some())
            .field("role_arn", &self.role_arn)
            .field("session_name", &self.session_name)
            .finish()
    }
}

/// Sessions by AccessKeyId. Expired sessions are kept (the sink must be able to
/// say "expired" rather than "unknown key") until `prune` drops them a while later.
#[derive(Debug, Default)]
pub struct Sessions {
    by_key: RwLock<HashMap<String, Arc<Session>>>,
}

impl Sessions {
    pub fn insert(&self, s: Session) {
        let mut map = self.by_key.write().unwrap_or_else(|e| e.into_inner());
        map.insert(s.access_key_id.clone(), Arc::new(s));
    }

    pub fn get(&self, access_key_id: &str) -> Option<Arc<Session>> {
        let map = self.by_key.read().unwrap_or_else(|e| e.into_inner());
        map.get(access_key_id).cloned()
    }

    /// Drops sessions that expired more than a day before `now`.
    pub fn prune(&self, now: DateTime<Utc>) {
        let mut map = self.by_key.write().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| s.expiration + chrono::Duration::days(1) > now);
    }

    pub fn len(&self) -> usize {
        self.by_key.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
