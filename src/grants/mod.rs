//! The configured upload rights and what each one issues. Routes call into
//! here; this module knows nothing about HTTP.

pub mod upload;

use std::collections::HashMap;
use std::sync::Arc;

use tracing::info;

use crate::auth::Principal;
use std::time::Duration;

use crate::config::{
    Config, GrantConfig, PostVersion, PresignScheme, SigningSource, validate::render_grant_policy,
};
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
    pub upload: UploadSettings,
}

/// How a grant's PostObject policies and presigned URLs are made.
#[derive(Debug, Clone)]
pub struct UploadSettings {
    pub max_size_bytes: u64,
    pub content_types: Vec<String>,
    pub key_template: String,
    pub post_version: PostVersion,
    pub presign_scheme: PresignScheme,
    pub upload_expires: Duration,
    pub signing: SigningSource,
    pub success_action_status: u16,
    pub s3_endpoint: String,
    pub path_style: bool,
    pub s3_path_style: bool,
}

impl UploadSettings {
    fn from_config(g: &GrantConfig) -> Self {
        let endpoint = g.endpoint();
        let s3_endpoint = g.s3_endpoint();
        UploadSettings {
            max_size_bytes: g.max_size_bytes,
            content_types: g.content_types.clone(),
            key_template: g.key_template.clone(),
            post_version: g.post_version,
            presign_scheme: g.presign_scheme,
            upload_expires: g.upload_expires,
            signing: g.signing,
            success_action_status: g.success_action_status,
            path_style: g.path_style.unwrap_or_else(|| is_ip_or_localhost(&endpoint)),
            s3_path_style: g.path_style.unwrap_or_else(|| is_ip_or_localhost(&s3_endpoint)),
            s3_endpoint,
        }
    }
}

/// Buckets cannot be a subdomain of an IP address or `localhost` (local
/// emulators), so those endpoints get path-style URLs.
fn is_ip_or_localhost(endpoint: &str) -> bool {
    match url::Url::parse(endpoint)
        .ok()
        .and_then(|u| u.host().map(|h| h.to_owned()))
    {
        Some(url::Host::Ipv4(_) | url::Host::Ipv6(_)) => true,
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
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
                upload: UploadSettings::from_config(g),
            };
            by_name.insert(g.name.clone(), Arc::new(grant));
        }
        Ok(Grants {
            by_name,
            default_grant: cfg.server.default_grant.clone(),
        })
    }

    pub fn get(&self, name: &str) -> Result<Arc<Grant>, ApiError> {
        self.by_name
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::not_found("unknown_grant", format!("no grant is named {name:?}")))
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
    /// The grant's narrowed role credential, from cache or one STS call.
    async fn lookup(&self, grant: &Grant) -> Result<Lookup, ApiError> {
        let identity = self
            .identity
            .credentials()
            .await
            .map_err(|e| ApiError::from(StsError::Identity(e.to_string())))?;
        Ok(self.cache.get(&identity, &grant.request).await?)
    }

    /// Temporary credentials narrowed to `grant`, handed to the caller.
    pub async fn credentials(&self, grant: &Grant, principal: &Principal) -> Result<Lookup, ApiError> {
        let lookup = self.lookup(grant).await?;
        // The one line per issued credential; never the secret or the token.
        info!(
            kind = "credentials",
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

    /// The credential that signs this grant's policies and URLs: the grant's
    /// narrowed role credential (default), or the identity's own AccessKey.
    pub async fn signing_material(&self, grant: &Grant) -> Result<upload::SigningMaterial, ApiError> {
        match grant.upload.signing {
            SigningSource::Sts => {
                let lookup = self.lookup(grant).await?;
                let c = &lookup.credentials;
                Ok(upload::SigningMaterial {
                    access_key_id: c.access_key_id.clone(),
                    access_key_secret: c.secret().to_owned(),
                    security_token: Some(c.token().to_owned()),
                    expires: Some(c.expiration),
                })
            }
            SigningSource::AccessKey => {
                let id = self
                    .identity
                    .credentials()
                    .await
                    .map_err(|e| ApiError::from(StsError::Identity(e.to_string())))?;
                Ok(upload::SigningMaterial {
                    access_key_id: id.access_key_id.clone(),
                    access_key_secret: id.secret().to_owned(),
                    security_token: id.token().map(str::to_owned),
                    expires: id.expiration,
                })
            }
        }
    }
}
