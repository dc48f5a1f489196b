//! The configured upload rights and what each one issues. Routes call into
//! here; this module knows nothing about HTTP.

use std::collections::HashMap;
use std::sync::Arc;

use tracing::info;

use crate::auth::Principal;
use crate::config::{Config, validate::render_grant_policy};
use crate::error::ApiError;
use crate::identity::{CredentialProvider, key_id_prefix};
use crate::policy;
use crate::sts::{AssumeRoleRequest, CredentialCache, Lookup, StsError, format_expiration};

/// One grant, resolved from config: every value it needs at request time.
#[derive(Debug, Clone)]
pub struct Grant {
    pub name: String,
    pub bucket: String,
    pub region: String,
    pub endpoint: String,
    pub prefix: String,
    /// Compact policy JSON sent to STS; its hash is part of the cache key.
    pub policy: String,
    pub policy_sha256: String,
    pub request: AssumeRoleRequest,
}

pub struct Grants {
    by_name: HashMap<String, Arc<Grant>>,
    default_grant: Option<String>,
}

impl Grants {
    /// Resolves every grant; the config must already have passed validation.
    pub fn from_config(cfg: &Config) -> Result<Self, String> {
        let mut by_name = HashMap::new();
        for g in &cfg.grants {
            let policy = render_grant_policy(g).map_err(|e| format!("grant {}: {e}", g.name))?;
            let request = AssumeRoleRequest {
                role_arn: cfg.sts.role_arn.clone(),
                session_name: g
                    .session_name
                    .clone()
                    .unwrap_or_else(|| cfg.sts.session_name.clone()),
                duration_seconds: g.duration_seconds.unwrap_or(cfg.sts.duration_seconds),
                policy: Some(policy.clone()),
                external_id: cfg.sts.external_id.clone(),
            };
            let grant = Grant {
                name: g.name.clone(),
                bucket: g.bucket.clone(),
                region: g.region.clone(),
                endpoint: g.endpoint(),
                prefix: g.prefix.clone(),
                policy_sha256: policy::policy_sha256(&policy),
                policy,
                request,
            };
            by_name.insert(g.name.clone(), Arc::new(grant));
        }
        Ok(Grants {
            by_name,
            default_grant: cfg.server.default_grant.clone(),
        })
    }

    pub fn get(&self, name: &str) -> Result<Arc<Grant>, ApiError> {
        self.by_name.get(name).cloned().ok_or_else(|| {
            ApiError::not_found("unknown_grant", format!("no grant is named {name:?}"))
        })
    }

    /// The grant behind the seeds' legacy paths.
    pub fn default_grant(&self) -> Result<Arc<Grant>, ApiError> {
        match &self.default_grant {
            Some(name) => self.get(name),
            None => Err(ApiError::not_found(
                "no_default_grant",
                "this path serves server.default_grant, which is not configured; use /v1/grants/{grant}/credentials",
            )),
        }
    }

    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }
}

/// Issues grants: combines the server identity, the cache and a grant.
pub struct Issuer {
    pub identity: Arc<dyn CredentialProvider>,
    pub cache: CredentialCache,
}

impl Issuer {
    /// Temporary credentials narrowed to `grant`, from cache or one STS call.
    pub async fn credentials(
        &self,
        grant: &Grant,
        principal: &Principal,
    ) -> Result<Lookup, ApiError> {
        let identity = self
            .identity
            .credentials()
            .await
            .map_err(|e| ApiError::from(StsError::Identity(e.to_string())))?;
        let lookup = self.cache.get(&identity, &grant.request).await?;
        // The one line per issued credential; never the secret or the token.
        info!(
            grant = %grant.name,
            subject = %principal.display(),
            session_name = %grant.request.session_name,
            access_key_id = %key_id_prefix(&lookup.credentials.access_key_id),
            expiration = %format_expiration(lookup.credentials.expiration),
            cache = lookup.outcome.as_str(),
            policy_sha256 = %grant.policy_sha256,
            "issued credentials"
        );
        Ok(lookup)
    }
}
