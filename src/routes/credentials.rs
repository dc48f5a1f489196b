//! `GET /v1/grants/{grant}/credentials`, the seeds' `GET /get_sts_token_for_oss_upload`,
//! and `GET /v1/grants/{grant}/explain` (the dry run).

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use serde::Serialize;

use super::authorized::{Authorized, Issued, RouteGrant};
use super::openapi::CredentialsBody;
use crate::error::ApiError;
use crate::formats::{self, CredentialFormat, CredentialView};
use crate::state::AppState;

/// Temporary STS credentials for one grant.
///
/// Scoped by the grant's session policy to its bucket, prefix and actions, and served with at
/// least `sts.min_remaining` of life; `RefreshAfter` (default format) says when to come back.
#[utoipa::path(
    get,
    path = "/v1/grants/{grant}/credentials",
    tag = "credentials",
    params(
        ("grant" = String, Path, description = "The name of a configured grant", example = "browser-upload"),
        ("format" = inline(Option<CredentialFormat>), Query, description = "The body's spelling; default: the grant's `credentials_format` (`default` unless configured)"),
        Authorized,
    ),
    responses(
        (status = 200, description = "Temporary credentials in the spelling `format` selects", body = CredentialsBody, headers(("X-Request-Id" = String, description = "The request id"), ("Cache-Control" = String, description = "`no-store`"), ("Pragma" = String, description = "`no-cache`"))),
        (status = 400, response = super::responses::UnknownFormat),
        super::responses::GrantAuthErrors,
        super::responses::StsErrors,
    ),
    security((), ("api_key" = []), ("jwt" = []), ("ticket" = [])),
)]
pub async fn grant_credentials(
    State(state): State<Arc<AppState>>,
    Format(format): Format,
    caller: Authorized,
) -> Result<Response, ApiError> {
    issue(&state, format, &caller).await
}

/// Temporary STS credentials for `server.default_grant` (the seeds' legacy path).
#[utoipa::path(
    get,
    path = "/get_sts_token_for_oss_upload",
    tag = "credentials",
    params(
        ("format" = inline(Option<CredentialFormat>), Query, description = "The body's spelling; default: the grant's `credentials_format` (`default` unless configured)"),
        Authorized,
    ),
    responses(
        (status = 200, description = "Temporary credentials in the spelling `format` selects", body = CredentialsBody, headers(("X-Request-Id" = String, description = "The request id"), ("Cache-Control" = String, description = "`no-store`"), ("Pragma" = String, description = "`no-cache`"))),
        (status = 400, response = super::responses::UnknownFormat),
        super::responses::DefaultGrantAuthErrors,
        super::responses::StsErrors,
    ),
    security((), ("api_key" = []), ("jwt" = []), ("ticket" = [])),
)]
pub async fn legacy_credentials(
    State(state): State<Arc<AppState>>,
    Format(format): Format,
    caller: Authorized,
) -> Result<Response, ApiError> {
    issue(&state, format, &caller).await
}

async fn issue(
    state: &AppState,
    format: CredentialFormat,
    caller: &Authorized,
) -> Result<Response, ApiError> {
    let grant = &caller.grant;
    let lookup = state.issuer.credentials(&caller.resolved).await?;
    let c = &lookup.credentials;
    let prefix = &caller.resolved.prefix;
    caller.audit(
        state,
        Issued {
            kind: "credentials",
            access_key_id: Some(&c.access_key_id),
            expires_at: c.expiration,
            cache: Some(lookup.outcome.as_str()),
            key: prefix,
        },
    );
    // Every hit of a shared credential gets the same bytes: render them once.
    let body = grant.memo.body(c, lookup.refresh_after, format, prefix, || {
        formats::to_json(
            format,
            &CredentialView {
                access_key_id: &c.access_key_id,
                access_key_secret: c.secret(),
                security_token: c.token(),
                expiration: c.expiration,
                refresh_after: lookup.refresh_after,
                bucket: &grant.bucket,
                region: &grant.region,
                endpoint: &grant.endpoint,
                prefix,
            },
        )
    });
    let mut resp = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    // Secrets must not land in any shared or browser cache.
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    Ok(resp)
}

/// The body's spelling: `?format=` if given (an unknown one is a 400 listing the
/// valid ones, before the caller is authenticated), else the grant's default.
pub(crate) struct Format(CredentialFormat);

impl FromRequestParts<Arc<AppState>> for Format {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Response> {
        let RouteGrant(grant) = RouteGrant::from_request_parts(parts, state).await?;
        let asked = requested_format(parts.uri.query()).map_err(IntoResponse::into_response)?;
        Ok(Format(asked.unwrap_or(grant.credentials_format)))
    }
}

/// `?format=` if given; an unknown one is a 400 listing the valid ones.
fn requested_format(query: Option<&str>) -> Result<Option<CredentialFormat>, ApiError> {
    let Some(f) = query.and_then(|q| url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "format"))
    else {
        return Ok(None);
    };
    f.1.parse()
        .map(Some)
        .map_err(|e: String| ApiError::bad_request("unknown_format", e))
}

/// What this caller would get, without calling STS or signing anything.
///
/// A dry run, authenticated like the grant: the rendered policy, session name, prefix and limits.
#[utoipa::path(
    get,
    path = "/v1/grants/{grant}/explain",
    tag = "auth",
    params(
        ("grant" = String, Path, description = "The name of a configured grant", example = "browser-upload"),
        Authorized,
    ),
    responses(
        (status = 200, description = "What this caller would get from the grant", body = ExplainBody, headers(("X-Request-Id" = String, description = "The request id"))),
        super::responses::GrantAuthErrors,
        (status = 503, response = super::responses::AuthUnavailable),
    ),
    security((), ("api_key" = []), ("jwt" = []), ("ticket" = [])),
)]
pub async fn explain(caller: Authorized) -> Result<Response, ApiError> {
    let grant = &caller.grant;
    let r = &caller.resolved;
    let policy: serde_json::Value = serde_json::from_str(&r.policy).unwrap_or_default();
    let u = &grant.upload;
    let body = ExplainBody {
        grant: &grant.name,
        subject: caller.principal.subject.as_deref(),
        auth: caller.principal.method.as_str(),
        bucket: &grant.bucket,
        region: &grant.region,
        endpoint: &grant.endpoint,
        prefix: &r.prefix,
        policy,
        policy_text: &r.policy,
        policy_chars: r.policy.chars().count(),
        policy_sha256: &r.policy_sha256,
        role_arn: &r.request.role_arn,
        session_name: &r.request.session_name,
        duration_seconds: r.request.duration_seconds,
        limits: ExplainLimits {
            max_size_bytes: u.max_size_bytes,
            content_types: &u.content_types,
            upload_expires_seconds: u.upload_expires.as_secs(),
            per_subject_per_minute: grant.per_subject_per_minute,
            per_ip_per_minute: grant.per_ip_per_minute,
        },
    };
    Ok(Json(body).into_response())
}

/// The dry run's answer: what this caller would get from the grant.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Explain)]
pub(crate) struct ExplainBody<'a> {
    grant: &'a str,
    /// The caller's subject; `null` for an anonymous caller.
    subject: Option<&'a str>,
    /// How the caller authenticated: `api_key`, `jwt`, `ticket` or `none`.
    #[schema(example = "jwt")]
    auth: &'a str,
    bucket: &'a str,
    /// Region id, without `oss-`.
    #[schema(example = "cn-hangzhou")]
    region: &'a str,
    endpoint: &'a str,
    /// The key prefix, rendered for this caller.
    prefix: &'a str,
    /// The session policy STS would be sent, as JSON.
    #[schema(value_type = Object)]
    policy: serde_json::Value,
    /// The exact policy text sent to STS.
    policy_text: &'a str,
    /// Its length (STS allows 2048).
    policy_chars: usize,
    policy_sha256: &'a str,
    role_arn: &'a str,
    session_name: &'a str,
    duration_seconds: u32,
    limits: ExplainLimits<'a>,
}

/// The grant's upload and rate limits.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ExplainLimits<'a> {
    max_size_bytes: u64,
    /// The Content-Type allowlist; empty: any.
    content_types: &'a [String],
    /// How long PostObject forms and presigned URLs are valid (at most).
    upload_expires_seconds: u64,
    per_subject_per_minute: u32,
    per_ip_per_minute: u32,
}
