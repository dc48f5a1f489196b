//! `GET /v1/grants/{grant}/post-policy`, `GET|POST /v1/grants/{grant}/presign`
//! and the seeds' legacy `/get_post_signature_for_oss_upload` and
//! `/get_presigned_url_for_oss_upload`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Serialize;
use serde::ser::SerializeMap;

use super::authorized::{Authorized, Issued, WithBody};
use super::openapi::LegacyPostBody;
use crate::config::{PostVersion, PresignScheme};
use crate::error::ApiError;
use crate::grants::upload::{self, PostPolicy, Presigned, UploadRequest};
use crate::sign::format_iso8601_extended;
use crate::state::AppState;

/// Form fields as a JSON object that keeps their order (file goes after them).
pub(super) struct Ordered<'a>(pub(super) &'a [(String, String)]);

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
    caller: &Authorized,
    req: &UploadRequest,
) -> Result<PostPolicy, ApiError> {
    let grant = &caller.grant;
    let material = state.issuer.signing_material(grant, &caller.resolved).await?;
    let target = caller.issuance_target(state);
    let p = upload::post_policy(grant, &target, &material, Utc::now(), req)?;
    caller.audit(
        state,
        Issued {
            kind: "post-policy",
            access_key_id: Some(material.access_key_id()),
            expires_at: p.expires_at,
            cache: None,
            key: p.key.as_deref().unwrap_or(&p.dir),
        },
    );
    Ok(p)
}

// The PostObject response. A struct, not a `serde_json::Value`: a `Value`
// map would sort `fields`, and their order is part of the contract.
/// A signed PostObject form: POST `multipart/form-data` to `host` with every entry of
/// `fields`, in that order, then the file as the last part (named `file`).
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = PostPolicy)]
pub(crate) struct PostBody<'a> {
    /// Where the form is POSTed.
    #[schema(example = "https://examplebucket.oss-cn-hangzhou.aliyuncs.com/")]
    host: &'a str,
    /// The key prefix the policy allows.
    #[schema(example = "uploads/")]
    dir: &'a str,
    /// The object key, when the server named the object (`filename` was given).
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    /// Every non-file form field, in the order to send them (`key`, `policy`, the signature
    /// fields, `x-oss-security-token`, ...); the file goes after them.
    #[schema(value_type = std::collections::HashMap<String, String>)]
    fields: Ordered<'a>,
    /// Expiry in Unix seconds.
    expire: i64,
    /// Expiry, `YYYY-MM-DDThh:mm:ssZ`.
    #[schema(example = "2026-11-23T18:56:52Z")]
    expires_at: String,
    /// The signature version: `v4`, `v1` or `s3-v4`.
    #[schema(example = "v4")]
    version: &'static str,
    /// The seeds' web sample reads these flat fields (legacy route only).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    legacy: Option<LegacyPostFields>,
}

/// The flat fields of the seeds' web sample (`/get_post_signature_for_oss_upload` only).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct LegacyPostFields {
    /// The AccessKey id that signed.
    accessid: Option<String>,
    /// `accessid` again.
    #[serde(rename = "ossAccessKeyId")]
    oss_access_key_id: Option<String>,
    /// The base64 policy document.
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
        expires_at: format_iso8601_extended(p.expires_at),
        version: match p.version {
            PostVersion::V4 => "v4",
            PostVersion::V1 => "v1",
            PostVersion::S3V4 => "s3-v4",
        },
        legacy,
    }
}

/// A signed PostObject form (browser form upload) for one grant.
///
/// Signed locally with a cached credential: no STS call per upload. The policy binds the bucket,
/// the key prefix (or the exact key when `filename` is given), the size range, the grant's
/// Content-Type allowlist and, with STS, the security token.
#[utoipa::path(
    get,
    path = "/v1/grants/{grant}/post-policy",
    tag = "uploads",
    params(
        ("grant" = String, Path, description = "The name of a configured grant", example = "browser-upload"),
        UploadRequest,
        Authorized,
    ),
    responses(
        (status = 200, description = "A signed PostObject form", body = PostBody, headers(("X-Request-Id" = String, description = "The request id"), ("Cache-Control" = String, description = "`no-store`"))),
        super::responses::GrantAuthErrors,
        super::responses::UploadQueryErrors,
        super::responses::StsErrors,
    ),
    security((), ("api_key" = []), ("jwt" = []), ("ticket" = [])),
)]
pub async fn post_policy(
    State(state): State<Arc<AppState>>,
    Query(req): Query<UploadRequest>,
    caller: Authorized,
) -> Result<Response, ApiError> {
    let p = make_post_policy(&state, &caller, &req).await?;
    Ok(no_store(Json(post_body(&p, false)).into_response()))
}

/// A signed PostObject form for `server.default_grant` (the seeds' legacy path).
///
/// The seeds' web sample reads flat fields; they are added to the same body. The same as `/v1/grants/{grant}/post-policy` for `server.default_grant`, plus `accessid`,
/// `ossAccessKeyId`, `policy`, `signature`, `security_token` and the V4 fields flat.
#[utoipa::path(
    get,
    path = "/get_post_signature_for_oss_upload",
    tag = "uploads",
    params(
        UploadRequest,
        Authorized,
    ),
    responses(
        (status = 200, description = "A signed PostObject form with the seeds' flat fields", body = LegacyPostBody, headers(("X-Request-Id" = String, description = "The request id"), ("Cache-Control" = String, description = "`no-store`"))),
        super::responses::DefaultGrantAuthErrors,
        super::responses::UploadQueryErrors,
        super::responses::StsErrors,
    ),
    security((), ("api_key" = []), ("jwt" = []), ("ticket" = [])),
)]
pub async fn legacy_post_policy(
    State(state): State<Arc<AppState>>,
    Query(req): Query<UploadRequest>,
    caller: Authorized,
) -> Result<Response, ApiError> {
    let p = make_post_policy(&state, &caller, &req).await?;
    Ok(no_store(Json(post_body(&p, true)).into_response()))
}

async fn make_presigned(
    state: &AppState,
    caller: &Authorized,
    req: &UploadRequest,
) -> Result<Presigned, ApiError> {
    let grant = &caller.grant;
    let material = state.issuer.signing_material(grant, &caller.resolved).await?;
    let target = caller.issuance_target(state);
    let p = upload::presign(grant, &target, &material, Utc::now(), req)?;
    caller.audit(
        state,
        Issued {
            kind: "presign",
            access_key_id: Some(material.access_key_id()),
            expires_at: p.expires_at,
            cache: None,
            key: &p.key,
        },
    );
    Ok(p)
}

/// A presigned PUT: send the file with `method` to `url` with exactly `headers`.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Presigned)]
pub(crate) struct PresignBody<'a> {
    /// Always `PUT`.
    #[schema(example = "PUT")]
    method: &'static str,
    /// The presigned URL.
    url: &'a str,
    /// The headers that were signed: send exactly these (a different Content-Type is a
    /// `SignatureDoesNotMatch`).
    #[schema(value_type = std::collections::HashMap<String, String>)]
    headers: Ordered<'a>,
    /// The object key the server chose from the grant's `key_template`.
    #[schema(example = "uploads/5f2c0b7e.png")]
    key: &'a str,
    /// Expiry, `YYYY-MM-DDThh:mm:ssZ`.
    #[schema(example = "2026-11-23T18:56:52Z")]
    expires_at: String,
    /// The signing scheme: `oss-v4`, `oss-v1` or `s3-v4`.
    #[schema(example = "oss-v4")]
    scheme: &'static str,
}

fn presign_body(p: &Presigned) -> PresignBody<'_> {
    PresignBody {
        method: "PUT",
        url: &p.url,
        headers: Ordered(&p.headers),
        key: &p.key,
        expires_at: format_iso8601_extended(p.expires_at),
        scheme: match p.scheme {
            PresignScheme::OssV4 => "oss-v4",
            PresignScheme::OssV1 => "oss-v1",
            PresignScheme::S3V4 => "s3-v4",
        },
    }
}

/// A presigned PUT URL for one grant.
///
/// The server names the object from the grant's `key_template`; `filename` contributes only a
/// sanitised extension. Send exactly the returned `headers`.
#[utoipa::path(
    get,
    path = "/v1/grants/{grant}/presign",
    tag = "uploads",
    params(
        ("grant" = String, Path, description = "The name of a configured grant", example = "browser-upload"),
        UploadRequest,
        Authorized,
    ),
    responses(
        (status = 200, description = "A presigned PUT URL and the headers to send with it", body = PresignBody, headers(("X-Request-Id" = String, description = "The request id"), ("Cache-Control" = String, description = "`no-store`"))),
        super::responses::GrantAuthErrors,
        super::responses::UploadQueryErrors,
        super::responses::StsErrors,
    ),
    security((), ("api_key" = []), ("jwt" = []), ("ticket" = [])),
)]
pub async fn presign_get(
    State(state): State<Arc<AppState>>,
    Query(req): Query<UploadRequest>,
    caller: Authorized,
) -> Result<Response, ApiError> {
    let p = make_presigned(&state, &caller, &req).await?;
    Ok(no_store(Json(presign_body(&p)).into_response()))
}

/// A presigned PUT URL for one grant, with the upload described in a JSON body.
#[utoipa::path(
    post,
    path = "/v1/grants/{grant}/presign",
    tag = "uploads",
    params(
        ("grant" = String, Path, description = "The name of a configured grant", example = "browser-upload"),
        Authorized,
    ),
    request_body(content = Option<UploadRequest>, description = "`filename` and `content_type` as JSON (optional: without a JSON body, neither is given)", content_type = "application/json"),
    responses(
        (status = 200, description = "A presigned PUT URL and the headers to send with it", body = PresignBody, headers(("X-Request-Id" = String, description = "The request id"), ("Cache-Control" = String, description = "`no-store`"))),
        (status = 400, response = super::responses::BadUploadBody),
        (status = 413, response = super::responses::PayloadTooLarge),
        (status = 422, response = super::responses::DeclaredExtensionMismatch),
        (status = 500, response = super::responses::SigningFailed),
        super::responses::GrantAuthErrors,
        super::responses::StsErrors,
    ),
    security((), ("api_key" = []), ("jwt" = []), ("ticket" = [])),
)]
pub async fn presign_post(
    State(state): State<Arc<AppState>>,
    WithBody(body, caller): WithBody<Option<Json<UploadRequest>>>,
) -> Result<Response, ApiError> {
    let req = body.map(|Json(b)| b).unwrap_or_default();
    let p = make_presigned(&state, &caller, &req).await?;
    Ok(no_store(Json(presign_body(&p)).into_response()))
}

/// A presigned PUT URL for `server.default_grant`, as plain text (the seeds' legacy path).
///
/// The seeds return the URL as plain text. The same as `GET /v1/grants/{grant}/presign` for `server.default_grant`; the body is the URL
/// alone. Send the `Content-Type` given as `content_type`, if any.
#[utoipa::path(
    get,
    path = "/get_presigned_url_for_oss_upload",
    tag = "uploads",
    params(
        UploadRequest,
        Authorized,
    ),
    responses(
        (status = 200, description = "The presigned PUT URL", body = String, content_type = "text/plain", headers(("X-Request-Id" = String, description = "The request id"), ("Cache-Control" = String, description = "`no-store`"))),
        super::responses::DefaultGrantAuthErrors,
        super::responses::UploadQueryErrors,
        super::responses::StsErrors,
    ),
    security((), ("api_key" = []), ("jwt" = []), ("ticket" = [])),
)]
pub async fn legacy_presign(
    State(state): State<Arc<AppState>>,
    Query(req): Query<UploadRequest>,
    caller: Authorized,
) -> Result<Response, ApiError> {
    let p = make_presigned(&state, &caller, &req).await?;
    Ok(no_store(p.url.into_response()))
}
