//! STS: the AssumeRole client, its error mapping, the call budget, and the
//! credential cache that makes a storm of requests cost one STS call.

pub mod backoff;
pub mod cache;
pub mod client;

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};

use crate::credentials::{Credentials, KeyId, Redact};
pub use backoff::Backoff;
pub use cache::{CacheKey, CacheTimings, Clock, CredentialCache, Lookup, Outcome, StsHealth, SystemClock};
pub use client::{AssumeRole, Stamp, StsClient};

/// The AssumeRole parameters that decide what a credential can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssumeRoleRequest {
    pub role_arn: String,
    pub session_name: String,
    pub duration_seconds: u32,
    /// Compact JSON; the cache key hashes exactly this text.
    pub policy: Option<String>,
    pub external_id: Option<String>,
}

/// `AssumeRoleWithOIDC` (docs/signing.md §3): an anonymous call that trades a Kubernetes
/// service-account token (RRSA) for role credentials.
#[derive(Clone)]
pub struct OidcRequest {
    pub role_arn: String,
    pub oidc_provider_arn: String,
    /// The raw JWT text, as read from the token file.
    pub oidc_token: SecretString,
    pub session_name: String,
    pub duration_seconds: u32,
    pub policy: Option<String>,
}

impl fmt::Debug for OidcRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcRequest")
            .field("role_arn", &self.role_arn)
            .field("oidc_provider_arn", &self.oidc_provider_arn)
            .field("oidc_token", &Redact)
            .field("session_name", &self.session_name)
            .field("duration_seconds", &self.duration_seconds)
            .field("policy", &self.policy)
            .finish()
    }
}

/// Temporary credentials as returned by STS.
#[derive(Clone)]
pub struct TempCredentials {
    pub access_key_id: String,
    pub access_key_secret: SecretString,
    pub security_token: SecretString,
    pub expiration: DateTime<Utc>,
    /// STS `RequestId` of the call that minted them, for support tickets.
    pub request_id: String,
}

impl TempCredentials {
    pub fn secret(&self) -> &str {
        self.access_key_secret.expose_secret()
    }
    pub fn token(&self) -> &str {
        self.security_token.expose_secret()
    }
}

impl fmt::Debug for TempCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TempCredentials")
            .field("access_key_id", &KeyId(&self.access_key_id))
            .field("access_key_secret", &Redact)
            .field("security_token", &Redact)
            .field("expiration", &self.expiration)
            .field("request_id", &self.request_id)
            .finish()
    }
}

impl From<TempCredentials> for Credentials {
    fn from(t: TempCredentials) -> Self {
        Credentials {
            access_key_id: t.access_key_id,
            access_key_secret: t.access_key_secret,
            security_token: Some(t.security_token),
            expiration: Some(t.expiration),
        }
    }
}

/// What went wrong talking to STS. Cloneable so that every caller waiting on
/// one in-flight call receives the same answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StsError {
    #[error("STS answered HTTP {status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        request_id: Option<String>,
    },
    #[error("STS could not be reached: {0}")]
    Transport(String),
    #[error("STS sent an unusable response: {0}")]
    BadResponse(String),
    #[error(
        "STS returned a credential that expires in {remaining_secs}s, less than the {min_remaining_secs}s ossvend must guarantee"
    )]
    ShortLived {
        remaining_secs: i64,
        min_remaining_secs: u64,
    },
    #[error("the server's own identity is unavailable: {0}")]
    Identity(String),
    /// A recent failure (`cause`), answered again without calling STS until
    /// `retry_after` has passed: the key's back-off after a failed call, or the
    /// client-wide back-off after a throttling answer.
    #[error("{cause} (not calling STS again for {}s)", retry_after_secs(*.retry_after))]
    BackingOff {
        retry_after: Duration,
        cause: Box<StsError>,
    },
}

/// How a caller should see an STS failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StsErrorKind {
    /// Permission, role or key problems: permanent until the config or RAM changes.
    Denied,
    /// STS rejected a parameter we sent (policy grammar, duration, session name).
    InvalidRequest,
    /// Still throttled after our bounded retries.
    Throttled,
    /// 5xx, timeouts, connection failures, garbage responses.
    Unavailable,
}

impl StsError {
    pub fn kind(&self) -> StsErrorKind {
        match self {
            StsError::Api { status, code, .. } => {
                // `Throttling`, `Throttling.User`, `Throttling.Api`, …; a bare 429 from a gateway too.
                if code.starts_with("Throttling") || *status == 429 {
                    StsErrorKind::Throttled
                } else if code == "InternalError" || code == "ServiceUnavailable" || *status >= 500 {
                    StsErrorKind::Unavailable
                } else if code.starts_with("InvalidParameter") || code.starts_with("MissingParameter") {
                    StsErrorKind::InvalidRequest
                } else {
                    StsErrorKind::Denied
                }
            }
            StsError::Transport(_) | StsError::BadResponse(_) => StsErrorKind::Unavailable,
            StsError::ShortLived { .. } => StsErrorKind::InvalidRequest,
            StsError::Identity(_) => StsErrorKind::Denied,
            StsError::BackingOff { cause, .. } => cause.kind(),
        }
    }

    /// Wraps a failure that is answered again without a call for `retry_after`
    /// (never nested: a back-off of a back-off keeps the original cause).
    pub fn backing_off(retry_after: Duration, cause: StsError) -> StsError {
        StsError::BackingOff {
            retry_after,
            cause: Box::new(cause.into_cause()),
        }
    }

    /// The failure itself, without a back-off wrapper.
    pub fn into_cause(self) -> StsError {
        match self {
            StsError::BackingOff { cause, .. } => cause.into_cause(),
            other => other,
        }
    }

    /// How long a caller should wait before asking again, when known.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            StsError::BackingOff { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// Failures of STS itself (throttling, 5xx, timeouts, garbage), as opposed
    /// to answers about this request: only these are backed off from.
    pub fn is_transient(&self) -> bool {
        matches!(self.kind(), StsErrorKind::Throttled | StsErrorKind::Unavailable)
    }

    /// Only throttling and server-side failures are worth another attempt;
    /// parameter and permission errors are permanent (docs/signing.md §2).
    /// A back-off is not retried either: it says when to come back.
    pub fn retryable(&self) -> bool {
        self.is_transient() && !matches!(self, StsError::BadResponse(_) | StsError::BackingOff { .. })
    }

    pub fn sts_code(&self) -> Option<&str> {
        match self {
            StsError::Api { code, .. } => Some(code),
            StsError::BackingOff { cause, .. } => cause.sts_code(),
            _ => None,
        }
    }

    pub fn sts_request_id(&self) -> Option<&str> {
        match self {
            StsError::Api { request_id, .. } => request_id.as_deref(),
            StsError::BackingOff { cause, .. } => cause.sts_request_id(),
            _ => None,
        }
    }
}

/// Whole seconds, rounded up and at least 1: the form of `Retry-After`.
pub fn retry_after_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str) -> StsError {
        StsError::Api {
            status,
            code: code.into(),
            message: String::new(),
            request_id: None,
        }
    }

    #[test]
    fn throttling_codes_and_http_429_are_throttling() {
        for (status, code) in [
            (400, "Throttling"),
            (400, "Throttling.User"),
            (400, "Throttling.Api"),
            (429, "HTTP429"),
            (429, "TooManyRequests"),
        ] {
            let e = api(status, code);
            assert_eq!(e.kind(), StsErrorKind::Throttled, "{status} {code}");
            assert!(e.retryable(), "{status} {code}");
        }
        assert_eq!(api(403, "NoPermission").kind(), StsErrorKind::Denied);
        assert_eq!(api(500, "InternalError").kind(), StsErrorKind::Unavailable);
    }

    #[test]
    fn a_back_off_keeps_what_sts_said_and_is_not_retried() {
        let cause = api(400, "Throttling.Api");
        let once = StsError::backing_off(Duration::from_millis(1500), cause);
        let twice = StsError::backing_off(Duration::from_secs(3), once.clone());
        assert!(
            matches!(&twice, StsError::BackingOff { cause, .. } if matches!(**cause, StsError::Api { .. }))
        );
        assert_eq!(twice.retry_after(), Some(Duration::from_secs(3)));
        assert_eq!(once.kind(), StsErrorKind::Throttled);
        assert_eq!(once.sts_code(), Some("Throttling.Api"));
        assert!(once.is_transient() && !once.retryable());
        assert!(
            once.to_string().ends_with("(not calling STS again for 2s)"),
            "{once}"
        );
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(30)), 30);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
