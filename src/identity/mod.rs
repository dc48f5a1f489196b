//! Where ossvend's own credentials come from: the identity that signs the
//! AssumeRole calls. It knows nothing about grants or HTTP routes.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};

use crate::config::IdentityConfig;

/// An AccessKey pair, optionally temporary (security token + expiry).
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub access_key_secret: SecretString,
    pub security_token: Option<SecretString>,
    pub expiration: Option<DateTime<Utc>>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &key_id_prefix(&self.access_key_id))
            .field("access_key_secret", &"[redacted]")
            .field(
                "security_token",
                &self.security_token.as_ref().map(|_| "[redacted]"),
            )
            .field("expiration", &self.expiration)
            .finish()
    }
}

impl Credentials {
    pub fn secret(&self) -> &str {
        self.access_key_secret.expose_secret()
    }
    pub fn token(&self) -> Option<&str> {
        self.security_token.as_ref().map(|t| t.expose_secret())
    }
}

/// What logs may show of an AccessKey id: enough to tell keys apart, not the whole id.
pub fn key_id_prefix(id: &str) -> String {
    let shown: String = id.chars().take(8).collect();
    format!("{shown}…")
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("identity source {source_name:?}: {message}")]
    Unavailable {
        source_name: &'static str,
        message: String,
    },
}

/// The server's identity. A trait object so temporary identities (ECS role,
/// OIDC) can refresh themselves behind the same interface.
#[async_trait::async_trait]
pub trait CredentialProvider: Send + Sync + 'static {
    /// Current credentials; never logs or exposes the secret.
    async fn credentials(&self) -> Result<Credentials, IdentityError>;
    /// Short name of the source, for logs (`env`, `ecs_ram_role`, ...).
    fn source_name(&self) -> &'static str;
}

/// A fixed AccessKey pair read once at start-up (env or config file).
pub struct StaticProvider {
    creds: Credentials,
    source: &'static str,
}

#[async_trait::async_trait]
impl CredentialProvider for StaticProvider {
    async fn credentials(&self) -> Result<Credentials, IdentityError> {
        Ok(self.creds.clone())
    }
    fn source_name(&self) -> &'static str {
        self.source
    }
}

/// Builds the provider selected by `[identity]`. `env` is the process
/// environment, passed in so tests control it.
pub fn from_config(
    cfg: &IdentityConfig,
    env: &BTreeMap<String, String>,
) -> Result<StaticProvider, IdentityError> {
    let get = |name: &str| env.get(name).filter(|v| !v.is_empty()).cloned();
    let unavailable = |message: String| IdentityError::Unavailable {
        source_name: "env",
        message,
    };
    let access_key_id = cfg
        .access_key_id
        .clone()
        .or_else(|| get("ALIBABA_CLOUD_ACCESS_KEY_ID"))
        .ok_or_else(|| unavailable("ALIBABA_CLOUD_ACCESS_KEY_ID is not set".into()))?;
    let access_key_secret = match (&cfg.access_key_secret, cfg.allow_inline_secret) {
        (Some(s), true) => s.clone(),
        _ => get("ALIBABA_CLOUD_ACCESS_KEY_SECRET")
            .map(SecretString::from)
            .ok_or_else(|| unavailable("ALIBABA_CLOUD_ACCESS_KEY_SECRET is not set".into()))?,
    };
    let security_token = get("ALIBABA_CLOUD_SECURITY_TOKEN").map(SecretString::from);
    Ok(StaticProvider {
        creds: Credentials {
            access_key_id,
            access_key_secret,
            security_token,
            expiration: None,
        },
        source: "env",
    })
}
