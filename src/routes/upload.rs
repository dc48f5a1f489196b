//! `GET /v1/grants/{grant}/post-policy`, `GET|POST /v1/grants/{grant}/presign`
//! and the seeds' legacy `/get_post_signature_for_oss_upload` and
//! `/get_presigned_url_for_oss_upload`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Path, Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Serialize;
use serde::ser::SerializeMap;

use super::{RequestCtx, authorize};
use crate::config::{PostVersion, PresignScheme};
use crate::error::ApiError;
use crate::grants::Grant;
use crate::grants::upload::{self, PostPolicy, Presigned, UploadRequest};
use crate::server::AppState;
use crate::sts::format_expiration;

/// Form fields as a JSON object that keeps their order (file goes after them).
struct Ordered<'a>(&'a [(String, String)]);

impl Serialize for Ordered<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn make_post_policy(
    state: &AppState,
    grant: &Grant,
    ctx: &RequestCtx,
    headers: &HeaderMap,
    query: Option<&str>,
    req: &UploadRequest,
) -> Result<PostPolicy, ApiError> {
    let caller = authorize(state, grant, headers, query, ctx).await?;
    let material = state.issuer.signing_material(grant, &caller.resolved).await?;
    let target = caller.target(&state.auth.placeholders);
    let p = upload::post_policy(grant, &target, &material, Utc::now(), req)?;
    caller.audit(
        state,
        grant,
        ctx,
        "post-policy",
        &material,
        p.expires_at,
        p.key.as_deref().unwrap_or(&p.dir),
    );
    Ok(p)
}

/// The PostObject response. A struct, not a `serde_json::Value`: a `Value`
/// map would sort `fields`, and their order is part of the contract.
#[derive(Serialize)]
struct PostBody<'a> {
    host: &'a str,
    dir: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    fields: Ordered<'a>,
    expire: i64,
    expires_at: String,
    version: &'static str,
    /// The seeds' web sample reads these flat fields (legacy route only).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    legacy: Option<LegacyPostFields>,
}

#[derive(Serialize)]
struct LegacyPostFields {
    accessid: Option<String>,
    #[serde(rename = "ossAccessKeyId")]
    oss_access_key_id: Option<String>,
    policy: String,
    signature: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    security_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    x_oss_signature_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    x_oss_credential: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    x_oss_date: Option<String>,
}

fn post_body(p: &PostPolicy, legacy: bool) -> PostBody<'_> {
    let field = |name: &str| {
        p.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let legacy = legacy.then(|| {
        let ak = field("OSSAccessKeyId")
            .or_else(|| field("x-oss-credential").and_then(|c| c.split('/').next().map(str::to_owned)));
        LegacyPostFields {
            accessid: ak.clone(),
            oss_access_key_id: ak,
            policy: p.policy_base64.clone(),
            signature: p.signature.clone(),
            security_token: field("x-oss-security-token"),
            x_oss_signature_version: field("x-oss-signature-version"),
            x_oss_credential: field("x-oss-credential"),
            x_oss_date: field("x-oss-date"),
        }
    });
    PostBody {
        host: &p.host,
        dir: &p.dir,
        key: p.key.as_deref(),
        fields: Ordered(&p.fields),
        expire: p.expires_at.timestamp(),
        expires_at: format_expiration(p.expires_at),
        version: match p.version {
            PostVersion::V4 => "v4",
            PostVersion::V1 => "v1",
            PostVersion::S3V4 => "s3-v4",
        },
        legacy,
    }
}

pub async fn post_policy(
    State(state): State<Arc<AppState>>,
    Path(grant): Path<String>,
    Extension(ctx): Extension<RequestCtx>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    Query(req): Query<UploadRequest>,
) -> Result<Response, ApiError> {
    let grant = state.grants.get(&grant)?;
    let p = make_post_policy(&state, &grant, &ctx, &headers, raw.as_deref(), &req).await?;
    Ok(no_store(Json(post_body(&p, false)).into_response()))
}

/// The seeds' web sample reads flat fields; they are added to the same body.
pub async fn legacy_post_policy(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<RequestCtx>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    Query(req): Query<UploadRequest>,
) -> Result<Response, ApiError> {
    let grant = state.grants.default_grant()?;
    let p = make_post_policy(&state, &grant, &ctx, &headers, raw.as_deref(), &req).await?;
    Ok(no_store(Json(post_body(&p, true)).into_response()))
}

async fn make_presigned(
    state: &AppState,
    grant: &Grant,
    ctx: &RequestCtx,
    headers: &HeaderMap,
    query: Option<&str>,
    req: &UploadRequest,
) -> Result<Presigned, ApiError> {
    let caller = authorize(state, grant, headers, query, ctx).await?;
    let material = state.issuer.signing_material(grant, &caller.resolved).await?;
    let target = caller.target(&state.auth.placeholders);
    let p = upload::presign(grant, &target, &material, Utc::now(), req)?;
    caller.audit(state, grant, ctx, "presign", &material, p.expires_at, &p.key);
    Ok(p)
}

#[derive(Serialize)]
struct PresignBody<'a> {
    method: &'static str,
    url: &'a str,
    headers: Ordered<'a>,
    key: &'a str,
    expires_at: String,
    scheme: &'static str,
}

fn presign_body(p: &Presigned) -> PresignBody<'_> {
    PresignBody {
        method: "PUT",
        url: &p.url,
        headers: Ordered(&p.headers),
        key: &p.key,
        expires_at: format_expiration(p.expires_at),
        scheme: match p.scheme {
            PresignScheme::OssV4 => "oss-v4",
            PresignScheme::OssV1 => "oss-v1",
            PresignScheme::S3V4 => "s3-v4",
        },
    }
}

pub async fn presign_get(
    State(state): State<Arc<AppState>>,
    Path(grant): Path<String>,
    Extension(ctx): Extension<RequestCtx>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    Query(req): Query<UploadRequest>,
) -> Result<Response, ApiError> {
    let grant = state.grants.get(&grant)?;
    let p = make_presigned(&state, &grant, &ctx, &headers, raw.as_deref(), &req).await?;
    Ok(no_store(Json(presign_body(&p)).into_response()))
}

pub async fn presign_post(
    State(state): State<Arc<AppState>>,
    Path(grant): Path<String>,
    Extension(ctx): Extension<RequestCtx>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Option<Json<UploadRequest>>,
) -> Result<Response, ApiError> {
    let grant = state.grants.get(&grant)?;
    let req = body.map(|Json(b)| b).unwrap_or_default();
    let p = make_presigned(&state, &grant, &ctx, &headers, raw.as_deref(), &req).await?;
    Ok(no_store(Json(presign_body(&p)).into_response()))
}

/// The seeds return the URL as plain text.
pub async fn legacy_presign(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<RequestCtx>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    Query(req): Query<UploadRequest>,
) -> Result<Response, ApiError> {
    let grant = state.grants.default_grant()?;
    let p = make_presigned(&state, &grant, &ctx, &headers, raw.as_deref(), &req).await?;
    Ok(no_store(p.url.into_response()))
}
