//! The configured upload rights and what each one issues. Routes call into
//! here; this module knows nothing about HTTP.

pub mod session;
pub mod upload;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};

use crate::auth::Principal;
use crate::config::{AuthMethod, Config, GrantConfig, PostVersion, PresignScheme, SigningSource};
use crate::error::ApiError;
use crate::identity::CredentialProvider;
use crate::policy::template::{self, Placeholders, TemplateError};
use crate::policy::{self, PolicyError};
use crate::sts::{AssumeRoleRequest, CredentialCache, Lookup, StsError};

/// One grant from config. Its prefix, session name and explicit policy may be
/// templates (`users/{subject}/`), resolved per caller by [`Grant::resolve`].
#[derive(Debug, Clone)]
pub struct Grant {
    pub name: String,
    pub bucket: String,
    pub region: String,
    pub endpoint: String,
    /// Prefix template, e.g. `uploads/` or `users/{subject}/`.
    pub prefix: String,
    pub actions: Vec<String>,
    /// Explicit policy template, instead of the one rendered from prefix and actions.
    pub policy: Option<policy::PolicyTemplate>,
    pub session_name: String,
    pub role_arn: String,
    pub duration_seconds: u32,
    pub external_id: Option<String>,
    /// Authentication methods accepted.
    pub auth: Vec<AuthMethod>,
    /// `{subject}` renders as `<namespace>.<subject>` (`subjects = "namespaced"`).
    pub namespaced_subjects: bool,
    pub per_subject_per_minute: u32,
    pub per_ip_per_minute: u32,
    pub upload: UploadSettings,
    pub credentials_format: crate::formats::CredentialFormat,
    /// Work done once per grant instead of once per request (see [`Memo`]).
    pub memo: Memo,
}

/// A grant as it applies to one caller: the exact prefix, policy and
/// AssumeRole parameters. Two callers with different prefixes get different
/// policies, hence different cache keys and different credentials.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub prefix: String,
    /// Compact policy JSON sent to STS; its hash is part of the cache key.
    pub policy: String,
    pub policy_sha256: String,
    pub request: AssumeRoleRequest,
}

/// Per-grant memory of results that repeat across requests.
///
/// A grant whose templates name no caller value (`{subject}`, `{claim.*}`)
/// resolves to the same prefix, policy and cache key for every caller on a given
/// day, so that is computed once per day. And most requests for such a grant get
/// the same cached STS credential in the same format, so its response body is
/// rendered once per credential. Nothing here outlives the grant: a config
/// reload builds new grants with empty memos.
#[derive(Default)]
pub struct Memo {
    /// Whether the templates name no caller value; decided on first use.
    caller_independent: std::sync::OnceLock<bool>,
    resolved: Mutex<Option<(NaiveDate, Arc<Resolved>)>>,
    bodies: Mutex<Vec<RenderedBody>>,
}

/// A response body and everything it was rendered from.
struct RenderedBody {
    credentials: Arc<crate::sts::TempCredentials>,
    refresh_after: DateTime<Utc>,
    format: crate::formats::CredentialFormat,
    prefix: String,
    body: axum::body::Bytes,
}

/// Bodies kept per grant: enough for every format of one credential plus the
/// next one, while per-user grants (a prefix each) cycle through it harmlessly.
const MEMO_BODIES: usize = 8;

impl Clone for Memo {
    /// A clone starts empty: memos are caches, never state.
    fn clone(&self) -> Self {
        Memo::default()
    }
}

impl std::fmt::Debug for Memo {
    // Bodies hold secrets; never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Memo")
    }
}

impl Memo {
    /// The body for `credentials` in `format` for `prefix`, rendered by
    /// `render` only the first time this exact combination is asked for.
    pub fn body(
        &self,
        credentials: &Arc<crate::sts::TempCredentials>,
        refresh_after: DateTime<Utc>,
        format: crate::formats::CredentialFormat,
        prefix: &str,
        render: impl FnOnce() -> String,
    ) -> axum::body::Bytes {
        let same = |b: &RenderedBody| {
            // Pointer identity: the Arc held here keeps the address from being reused.
            Arc::ptr_eq(&b.credentials, credentials)
                && b.refresh_after == refresh_after
                && b.format == format
                && b.prefix == prefix
        };
        let mut bodies = self.bodies.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = bodies.iter().find(|b| same(b)) {
            return b.body.clone();
        }
        let body = axum::body::Bytes::from(render());
        if bodies.len() >= MEMO_BODIES {
            bodies.remove(0);
        }
        bodies.push(RenderedBody {
            credentials: credentials.clone(),
            refresh_after,
            format,
            prefix: prefix.to_owned(),
            body: body.clone(),
        });
        body
    }
}

impl Grant {
    /// What this grant means for `principal` now; memoised per day when no
    /// template depends on the caller.
    pub fn resolve(
        &self,
        principal: &Principal,
        placeholders: &Placeholders,
        now: DateTime<Utc>,
    ) -> Result<Arc<Resolved>, ApiError> {
        let independent = *self
            .memo
            .caller_independent
            .get_or_init(|| self.is_caller_independent());
        if !independent {
            return self.render(principal, placeholders, now).map(Arc::new);
        }
        let today = now.date_naive();
        let mut memo = self.memo.resolved.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((day, r)) = memo.as_ref()
            && *day == today
        {
            return Ok(r.clone());
        }
        let r = Arc::new(self.render(principal, placeholders, now)?);
        *memo = Some((today, r.clone()));
        Ok(r)
    }

    /// Whether no template names a caller value (only server values such as `{date}`).
    fn is_caller_independent(&self) -> bool {
        let policy_strings = self.policy.as_ref().map(|p| p.strings()).unwrap_or_default();
        [self.prefix.as_str(), self.session_name.as_str()]
            .into_iter()
            .chain(policy_strings)
            .all(|t| template::placeholder_names(t).is_ok_and(|names| names.iter().all(|n| *n == "date")))
    }

    fn render(
        &self,
        principal: &Principal,
        placeholders: &Placeholders,
        now: DateTime<Utc>,
    ) -> Result<Resolved, ApiError> {
        let date = template::yyyymmdd(now);
        let server = [("date", date.as_str())];
        let values = template::Values {
            subject: principal.subject.as_deref(),
            subject_namespace: self.subject_namespace(principal)?,
            claims: &principal.claims,
            server: &server,
            placeholders,
        };
        let prefix = template::render(&self.prefix, &values).map_err(invalid_principal)?;
        let policy = match &self.policy {
            Some(t) => t
                .render(|s| template::render(s, &values))
                .map_err(invalid_principal)?,
            None => policy::render_prefix_policy(&self.bucket, &prefix, &self.actions),
        }
        .map_err(policy_error)?;
        let session_name = template::session_name(
            &template::render(&self.session_name, &values).map_err(invalid_principal)?,
        );
        Ok(Resolved {
            policy_sha256: policy::policy_sha256(&policy),
            request: AssumeRoleRequest {
                role_arn: self.role_arn.clone(),
                session_name,
                duration_seconds: self.duration_seconds,
                policy: Some(policy.clone()),
                external_id: self.external_id.clone(),
            },
            prefix,
            policy,
        })
    }
}

impl Grant {
    /// What `{subject}` is qualified with for `principal` on this grant:
    /// nothing unless the grant namespaces subjects.
    pub fn subject_namespace(&self, principal: &Principal) -> Result<Option<&'static str>, ApiError> {
        if !self.namespaced_subjects || principal.subject.is_none() {
            return Ok(None);
        }
        match principal.namespace {
            Some(ns) => Ok(Some(ns.as_str())),
            // Only a ticket minted by an older version has a subject without one.
            None => Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "invalid_principal",
                "this ticket does not say which kind of caller minted it; mint a new one",
            )),
        }
    }
}

fn invalid_principal(e: TemplateError) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::FORBIDDEN,
        "invalid_principal",
        e.to_string(),
    )
}

/// A rendered policy that STS would refuse (too long after substitution).
fn policy_error(e: PolicyError) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::FORBIDDEN,
        "invalid_principal",
        format!("the policy for this caller is unusable: {e}"),
    )
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
    pub success_action_redirect: Option<String>,
    pub s3_endpoint: String,
    pub path_style: bool,
    pub s3_path_style: bool,
    /// `[grants.callback]`: forms and presigned URLs carry an OSS upload callback.
    pub callback: Option<crate::config::CallbackConfig>,
    /// Upload sessions are served (`multipart = true`).
    pub multipart: bool,
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
            success_action_redirect: g.success_action_redirect.clone(),
            path_style: g.path_style.unwrap_or_else(|| is_ip_or_localhost(&endpoint)),
            s3_path_style: g.path_style.unwrap_or_else(|| is_ip_or_localhost(&s3_endpoint)),
            s3_endpoint,
            callback: g.callback.clone(),
            multipart: g.multipart,
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
    /// Builds every grant; the config must already have passed validation.
    pub fn from_config(cfg: &Config) -> Result<Self, String> {
        let mut by_name = HashMap::new();
        for g in &cfg.grants {
            let grant = Grant {
                name: g.name.clone(),
                bucket: g.bucket.clone(),
                region: g.region.clone(),
                endpoint: g.endpoint(),
                prefix: g.prefix.clone(),
                actions: g.actions.clone(),
                policy: g
                    .policy
                    .as_deref()
                    .map(policy::PolicyTemplate::parse)
                    .transpose()
                    .map_err(|e| format!("grant {:?}: policy {e}", g.name))?,
                session_name: g
                    .session_name
                    .clone()
                    .unwrap_or_else(|| cfg.sts.session_name.clone()),
                role_arn: cfg.sts.role_arn.clone(),
                duration_seconds: g.duration_seconds.unwrap_or(cfg.sts.duration_seconds),
                external_id: cfg.sts.external_id.clone(),
                auth: g.auth.clone(),
                namespaced_subjects: g.namespaced_subjects(),
                per_subject_per_minute: g
                    .per_subject_per_minute
                    .unwrap_or(cfg.rate_limit.per_subject_per_minute),
                per_ip_per_minute: g.per_ip_per_minute.unwrap_or(cfg.rate_limit.per_ip_per_minute),
                upload: UploadSettings::from_config(g),
                credentials_format: g.credentials_format,
                memo: Memo::default(),
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

    pub fn iter(&self) -> impl Iterator<Item = &Grant> {
        self.by_name.values().map(|g| g.as_ref())
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
    /// The caller's narrowed role credential, from cache or one STS call.
    pub async fn credentials(&self, resolved: &Resolved) -> Result<Lookup, ApiError> {
        let identity = self
            .identity
            .credentials()
            .await
            .map_err(|e| ApiError::from(StsError::Identity(e.to_string())))?;
        Ok(self
            .cache
            .get_hashed(&identity, &resolved.request, &resolved.policy_sha256)
            .await?)
    }

    /// The credential that signs this grant's policies and URLs: the caller's
    /// narrowed role credential (default), or the identity's own AccessKey.
    pub async fn signing_material(
        &self,
        grant: &Grant,
        resolved: &Resolved,
    ) -> Result<upload::SigningMaterial, ApiError> {
        match grant.upload.signing {
            SigningSource::Sts => {
                let lookup = self.credentials(resolved).await?;
                Ok(upload::SigningMaterial::Sts(lookup.credentials))
            }
            SigningSource::AccessKey => {
                let id = self
                    .identity
                    .credentials()
                    .await
                    .map_err(|e| ApiError::from(StsError::Identity(e.to_string())))?;
                Ok(upload::SigningMaterial::Identity(id))
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::auth::SubjectNamespace;

    /// Grant `g` on `examplebucket` with `extra` TOML lines.
    pub(crate) fn grant(extra: &str) -> Grant {
        let text = format!(
            r#"
[sts]
role_arn = "acs:ram::1234567890123456:role/oss-upload"

[[grants]]
name = "g"
bucket = "examplebucket"
region = "cn-hangzhou"
{extra}
"#
        );
        let cfg = crate::config::parse(&text, &BTreeMap::new()).unwrap();
        Grants::from_config(&cfg)
            .unwrap()
            .get("g")
            .unwrap()
            .as_ref()
            .clone()
    }

    fn caller(method: AuthMethod, namespace: Option<SubjectNamespace>, subject: &str) -> Principal {
        Principal {
            subject: Some(subject.into()),
            claims: BTreeMap::new(),
            method,
            namespace,
        }
    }

    fn prefix(g: &Grant, p: &Principal) -> Result<String, &'static str> {
        let now = chrono::DateTime::from_timestamp(1_772_352_000, 0).unwrap();
        g.resolve(p, &Placeholders::default(), now)
            .map(|r| r.prefix.clone())
            .map_err(|e| e.code)
    }

    /// Issue 13: single-method and `shared` grants render `{subject}` as
    /// before; `namespaced` ones qualify it, and so does a mixed grant that
    /// somehow skipped validation. The cache key is the rendered policy's hash,
    /// so different prefixes are different credentials.
    #[test]
    fn subjects_render_per_namespace_only_where_configured() {
        let key = caller(AuthMethod::ApiKey, Some(SubjectNamespace::ApiKey), "alice");
        let jwt = caller(AuthMethod::Jwt, Some(SubjectNamespace::Jwt), "alice");
        let jwt_ticket = caller(AuthMethod::Ticket, Some(SubjectNamespace::Jwt), "alice");
        let old_ticket = caller(AuthMethod::Ticket, None, "alice");
        let base = "prefix = \"u/{subject}/\"\n";

        let single = grant(&format!("{base}auth = [\"jwt\", \"ticket\"]"));
        for p in [&jwt, &jwt_ticket, &old_ticket] {
            assert_eq!(prefix(&single, p).unwrap(), "u/alice/");
        }
        let shared = grant(&format!(
            "{base}auth = [\"jwt\", \"api_key\"]\nsubjects = \"shared\""
        ));
        assert_eq!(prefix(&shared, &key), prefix(&shared, &jwt));

        for extra in ["subjects = \"namespaced\"", ""] {
            let g = grant(&format!(
                "{base}auth = [\"jwt\", \"api_key\", \"ticket\"]\n{extra}"
            ));
            assert_eq!(prefix(&g, &key).unwrap(), "u/api_key.alice/");
            assert_eq!(prefix(&g, &jwt).unwrap(), "u/jwt.alice/");
            assert_eq!(prefix(&g, &jwt_ticket).unwrap(), "u/jwt.alice/");
            assert_eq!(prefix(&g, &old_ticket), Err("invalid_principal"));
            let now = chrono::DateTime::from_timestamp(1_772_352_000, 0).unwrap();
            let hash = |p| {
                g.resolve(p, &Placeholders::default(), now)
                    .unwrap()
                    .policy_sha256
                    .clone()
            };
            assert_ne!(hash(&key), hash(&jwt));
            assert_eq!(hash(&jwt), hash(&jwt_ticket));
        }
    }
}
