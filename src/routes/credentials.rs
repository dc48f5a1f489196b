//! `GET /v1/grants/{grant}/credentials`, the seeds' `GET /get_sts_token_for_oss_upload`,
//! and `GET /v1/grants/{grant}/explain` (the dry run).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::{RequestCtx, authorize};
use crate::audit::Record;
use crate::error::ApiError;
use crate::formats::{self, CredentialFormat, CredentialView};
use crate::grants::Grant;
use crate::identity::key_id_prefix;
use crate::server::AppState;
use crate::sts::format_expiration;

pub async fn grant_credentials(
    State(state): State<Arc<AppState>>,
    Path(grant): Path<String>,
    Extension(ctx): Extension<RequestCtx>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let grant = state.grants.get(&grant)?;
    issue(&state, &grant, &ctx, &headers, query.as_deref()).await
}

pub async fn legacy_credentials(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<RequestCtx>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let grant = state.grants.default_grant()?;
    issue(&state, &grant, &ctx, &headers, query.as_deref()).await
}

async fn issue(
    state: &AppState,
    grant: &Grant,
    ctx: &RequestCtx,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let format = requested_format(query)?.unwrap_or(grant.credentials_format);
    let caller = authorize(state, grant, headers, query, ctx).await?;
    let lookup = state.issuer.credentials(&caller.resolved).await?;
    let c = &lookup.credentials;
    let expiration = format_expiration(c.expiration);
    state.audit.record(&Record {
        time: format_expiration(chrono::Utc::now()),
        request_id: &ctx.request_id,
        client_ip: &ctx.ip_string(),
        subject: caller.principal.display(),
        auth: caller.principal.method.as_str(),
        grant: &grant.name,
        kind: "credentials",
        policy_sha256: &caller.resolved.policy_sha256,
        session_name: &caller.resolved.request.session_name,
        access_key_id: &key_id_prefix(&c.access_key_id),
        expiration: &expiration,
        cache: Some(lookup.outcome.as_str()),
        key: Some(&caller.resolved.prefix),
    });
    let view = CredentialView {
        access_key_id: &c.access_key_id,
        access_key_secret: c.secret(),
        security_token: c.token(),
        expiration: c.expiration,
        refresh_after: lookup.refresh_after,
        bucket: &grant.bucket,
        region: &grant.region,
        endpoint: &grant.endpoint,
        prefix: &caller.resolved.prefix,
    };
    let mut resp = (
        [(header::CONTENT_TYPE, "application/json")],
        formats::to_json(format, &view),
    )
        .into_response();
    // Secrets must not land in any shared or browser cache.
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    Ok(resp)
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
pub async fn explain(
    State(state): State<Arc<AppState>>,
    Path(grant): Path<String>,
    Extension(ctx): Extension<RequestCtx>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let grant = state.grants.get(&grant)?;
    let caller = authorize(&state, &grant, &headers, query.as_deref(), &ctx).await?;
    let r = &caller.resolved;
    let policy: serde_json::Value = serde_json::from_str(&r.policy).unwrap_or_default();
    let u = &grant.upload;
    let body = serde_json::json!({
        "grant": grant.name,
        "subject": caller.principal.subject,
        "auth": caller.principal.method.as_str(),
        "bucket": grant.bucket,
        "region": grant.region,
        "endpoint": grant.endpoint,
        "prefix": r.prefix,
        "policy": policy,
        "policy_text": r.policy,
        "policy_chars": r.policy.chars().count(),
        "policy_sha256": r.policy_sha256,
        "role_arn": r.request.role_arn,
        "session_name": r.request.session_name,
        "duration_seconds": r.request.duration_seconds,
        "limits": {
            "max_size_bytes": u.max_size_bytes,
            "content_types": u.content_types,
            "upload_expires_seconds": u.upload_expires.as_secs(),
            "per_subject_per_minute": grant.per_subject_per_minute,
            "per_ip_per_minute": grant.per_ip_per_minute,
        },
    });
    Ok(Json(body).into_response())
}
