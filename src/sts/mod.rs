//! STS: the AssumeRole client, its error mapping, the call budget, and the
//! credential cache that makes a storm of requests cost one STS call.

pub mod cache;
pub mod client;

use std::fmt;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};

pub use cache::{CacheKey, CacheTimings, Clock, CredentialCache, Lookup, Outcome, SystemClock};
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

/// `AssumeRoleWithOIDC` (spec §3): an anonymous call that trades a Kubernetes
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
            .field("oidc_token", &"[redacted]")
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
            .field(
                "access_key_id",
                &crate::identity::key_id_prefix(&self.access_key_id),
            )
            .field("expiration", &self.expiration)
            .field("request_id", &self.request_id)
            .finish_non_exhaustive()
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
                if code.starts_with("Throttling") {
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
        }
    }

    /// Only throttling and server-side failures are worth another attempt;
    /// parameter and permission errors are permanent (spec §2).
    pub fn retryable(&self) -> bool {
        matches!(self.kind(), StsErrorKind::Throttled | StsErrorKind::Unavailable)
            && !matches!(self, StsError::BadResponse(_))
    }

    pub fn sts_code(&self) -> Option<&str> {
        match self {
            StsError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    pub fn sts_request_id(&self) -> Option<&str> {
        match self {
            StsError::Api { request_id, .. } => request_id.as_deref(),
            _ => None,
        }
    }
}

/// `YYYY-MM-DDThh:mm:ssZ`: the exact form STS uses and strict clients parse
/// (written without chrono's pattern interpreter; see `sign::format_iso8601_extended`).
pub fn format_expiration(t: DateTime<Utc>) -> String {
    crate::sign::format_iso8601_extended(t)
}
