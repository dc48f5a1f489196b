//! Companion's S3 API for a grant, so `@uppy/aws-s3` works unchanged with
//! `companionEndpoint: "<ossvend>/v1/grants/{grant}/companion"`. The shapes are
//! @uppy/aws-s3 6.3.1's `CompanionS3` client and @uppy/companion 6.2.2's s3
//! controller; underneath are ossvend's upload sessions ([`crate::grants::session`]):
//! the server names the key, Uppy's `uploadId` is the sealed session handle, and
//! the part list Uppy sends at completion is checked against ListParts, not trusted.
//! Uppy sends no size when it opens a multipart upload, so completion checks that
//! the parts are uniform and that their total fits `max_size_bytes`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::authorized::{Authorized, Issued, WithBody};
use super::upload::Ordered;
use crate::error::ApiError;
use crate::grants::session::{self, Session};
use crate::grants::upload::{self, UploadRequest};
use crate::state::AppState;

/// `GET /s3/params`'s query: the file's name and type (Uppy also sends `metadata[…]`, ignored).
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ParamsQuery {
    /// The file's name; only its sanitised extension is used (the server names the key).
    pub filename: Option<String>,
    /// The file's media type.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub content_type: Option<String>,
}

/// A PostObject form as Companion answers it.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = CompanionParams)]
pub(crate) struct ParamsBody<'a> {
    #[schema(example = "POST")]
    method: &'static str,
    url: &'a str,
    /// Every form field in order; the file goes last.
    #[schema(value_type = std::collections::HashMap<String, String>)]
    fields: Ordered<'a>,
    /// Seconds until the form expires.
    expires: i64,
}

/// Companion's `GET /s3/params`: a PostObject form for one file (the policy binds the server-named
/// key, the type and `content-length-range` up to `max_size_bytes`).
#[utoipa::path(
    get,
    path = "/v1/grants/{grant}/companion/s3/params",
    tag = "upload sessions",
    params(("grant" = String, Path, description = "The grant", example = "large-files"), ParamsQuery, Authorized),
    responses(
        (status = 200, description = "The form", body = ParamsBody),
        super::responses::SessionErrors,
    ),
    security((), ("api_key" = []), ("jwt" = []), ("ticket" = [])),
)]
pub async fn companion_params(
    State(state): State<Arc<AppState>>,
    Query(q): Query<ParamsQuery>,
    caller: Authorized,
) -> Result<Response, ApiError> {
    let now = Utc::now();
    let grant = &caller.grant;
    let req = UploadRequest {
        filename: Some(q.filename.unwrap_or_default()),
        content_type: q.content_type,
        md5: None,
    };
    let material = state.issuer.signing_material(grant, &caller.resolved).await?;
    let target = caller.issuance_target(&state);
    let p = upload::post_policy(grant, &target, &material, now, &req)?;
    let key = p.key.clone().unwrap_or_default();
    caller.audit(
        &state,
        Issued {
            kind: "post-policy",
            access_key_id: Some(material.access_key_id()),
            expires_at: p.expires_at,
            cache: None,
            key: &key,
        },
    );
    let body = ParamsBody {
        method: "POST",
        url: &p.host,
        fields: Ordered(&p.fields),
        expires: (p.expires_at - now).num_seconds(),
    };
    Ok(Json(body).into_response())
}

/// `POST /s3/multipart`'s body.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct CreateBody {
    pub filename: Option<String>,
    #[serde(rename = "type")]
    pub content_type: Option<String>,
    // Uppy's `metadata` is accepted and not stored.
}

/// Companion's `POST /s3/multipart`: opens an upload session; `uploadId` is its handle.
#[utoipa::path(
    post,
    path = "/v1/grants/{grant}/companion/s3/multipart",
    tag = "upload sessions",
    params(("grant" = String, Path, description = "A grant with `multipart = true`", example = "large-files"), Authorized),
    request_body(content = CreateBody, content_type = "application/json"),
    responses(
        (status = 200, description = "`{key, uploadId, bucket}`", body = Object),
        super::responses::SessionErrors,
    ),
    security((), ("api_key" = []), ("jwt" = []), ("ticket" = [])),
)]
pub async fn companion_create(
    State(state): State<Arc<AppState>>,
    WithBody(Json(body), caller): WithBody<Json<CreateBody>>,
) -> Result<Response, ApiError> {
    let now = Utc::now();
    let grant = &caller.grant;
    let target = caller.issuance_target(&state);
    let ct = body.content_type.as_deref();
    let planned = session::plan_undeclared(grant, &target, body.filename.as_deref(), ct, now)?;
    let opened = super::uploads::open_audited(&state, &caller, planned).await?;
    let answer = json!({"key": opened.session.key, "uploadId": opened.handle, "bucket": grant.bucket});
    Ok(Json(answer).into_response())
}

/// The `key` Uppy repeats in the query; when given it must be the session's.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct KeyQuery {
    pub key: Option<String>,
}

/// The session named by Uppy's `uploadId`, for this caller, with Uppy's `key` checked.
fn session_of(
    state: &AppState,
    caller: &Authorized,
    upload_id: &str,
    key: Option<&str>,
) -> Result<Session, ApiError> {
    let s = session::unseal(
        &state.auth.tickets,
        upload_id,
        &caller.grant,
        &caller.principal,
        Utc::now(),
    )?;
    if key.is_some_and(|k| k != s.key) {
        return Err(ApiError::bad_request(
            "invalid_upload_request",
            "key is not this upload's key",
        ));
    }
    Ok(s)
}

/// Companion's `GET /s3/multipart/{uploadId}/{partNumber}`: one presigned UploadPart URL.
#[utoipa::path(
    get,
    path = "/v1/grants/{grant}/companion/s3/multipart/{upload_id}/{part_number}",
    tag = "upload sessions",
    params(
        ("grant" = String, Path, description = "A grant with `multipart = true`", example = "large-files"),
        ("upload_id" = String, Path, description = "The session handle (Companion's `uploadId`)"),
        ("part_number" = String, Path, description = "1..=10000"),
        KeyQuery,
        Authorized,
    ),
    responses(
        (status = 200, description = "`{url, expires}`", body = Object),
        super::responses::SessionErrors,
    ),
    security((), ("api_key" = []), ("jwt" = []), ("ticket" = [])),
)]
pub async fn companion_sign_part(
    State(state): State<Arc<AppState>>,
    Path((_, upload_id, part_number)): Path<(String, String, String)>,
    Query(q): Query<KeyQuery>,
    caller: Authorized,
) -> Result<Response, ApiError> {
    let now = Utc::now();
    let s = session_of(&state, &caller, &upload_id, q.key.as_deref())?;
    // One part number: a range would sign URLs Uppy never asked for.
    let numbers = session::parse_numbers(&part_number, s.part_count())?;
    if numbers.len() != 1 {
        return Err(ApiError::bad_request(
            "invalid_upload_request",
            "one part number per request",
        ));
    }
    let material = state
        .issuer
        .signing_material(&caller.grant, &caller.resolved)
        .await?;
    let urls = session::part_urls(&caller.grant, &material, &s, &numbers, &[], now)?;
    let url = urls
        .first()
        .map(|u| (u.url.as_str(), (u.expires_at - now).num_seconds()));
    let (url, expires) = url.ok_or_else(|| ApiError::internal("no part URL was signed"))?;
    Ok(Json(json!({"url": url, "expires": expires})).into_response())
}

/// Companion's `GET /s3/multipart/{uploadId}`: the uploaded parts (ListParts, every page).
#[utoipa::path(
    get,
    path = "/v1/grants/{grant}/companion/s3/multipart/{upload_id}",
    tag = "upload sessions",
    params(
        ("grant" = String, Path, description = "A grant with `multipart = true`", example = "large-files"),
        ("upload_id" = String, Path, description = "The session handle (Companion's `uploadId`)"),
        KeyQuery,
        Authorized,
    ),
    responses(
        (status = 200, description = "`[{PartNumber, ETag, Size}]`", body = Vec<Object>),
        super::responses::SessionErrors,
    ),
    security((), ("api_key" = []), ("jwt" = []), ("ticket" = [])),
)]
pub async fn companion_list_parts(
    State(state): State<Arc<AppState>>,
    Path((_, upload_id)): Path<(String, String)>,
    Query(q): Query<KeyQuery>,
    caller: Authorized,
) -> Result<Response, ApiError> {
    let s = session_of(&state, &caller, &upload_id, q.key.as_deref())?;
    let material = state
        .issuer
        .signing_material(&caller.grant, &caller.resolved)
        .await?;
    let parts = session::list(&caller.grant, &material, &state.oss, &s).await?;
    let parts: Vec<Value> = parts
        .iter()
        .map(|p| json!({"PartNumber": p.number, "ETag": p.etag, "Size": p.size}))
        .collect();
    Ok(Json(parts).into_response())
}

/// `POST /s3/multipart/{uploadId}/complete`'s body: Uppy's own part list.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct CompleteBody {
    pub parts: Vec<ClaimedPart>,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct ClaimedPart {
    #[serde(rename = "PartNumber")]
    pub number: u32,
    #[serde(rename = "ETag")]
    pub etag: String,
}

/// Companion's `POST /s3/multipart/{uploadId}/complete`: the server checks the parts (and Uppy's
/// list against them) and completes, or aborts.
#[utoipa::path(
    post,
    path = "/v1/grants/{grant}/companion/s3/multipart/{upload_id}/complete",
    tag = "upload sessions",
    params(
        ("grant" = String, Path, description = "A grant with `multipart = true`", example = "large-files"),
        ("upload_id" = String, Path, description = "The session handle (Companion's `uploadId`)"),
        KeyQuery,
        Authorized,
    ),
    request_body(content = CompleteBody, content_type = "application/json"),
    responses(
        (status = 200, description = "`{location, key, bucket}`", body = Object),
        super::responses::SessionErrors,
    ),
    security((), ("api_key" = []), ("jwt" = []), ("ticket" = [])),
)]
pub async fn companion_complete(
    State(state): State<Arc<AppState>>,
    Path((_, upload_id)): Path<(String, String)>,
    Query(q): Query<KeyQuery>,
    WithBody(Json(body), caller): WithBody<Json<CompleteBody>>,
) -> Result<Response, ApiError> {
    let s = session_of(&state, &caller, &upload_id, q.key.as_deref())?;
    let grant = &caller.grant;
    let claimed: Vec<(u32, String)> = body.parts.into_iter().map(|p| (p.number, p.etag)).collect();
    let material = state.issuer.signing_material(grant, &caller.resolved).await?;
    let target = caller.issuance_target(&state);
    let done = session::complete(grant, &target, &material, &state.oss, &s, Some(&claimed)).await?;
    let location = session::object_url(grant, &s.key)?;
    let mut answer = json!({"location": location, "key": s.key, "bucket": grant.bucket});
    // Uppy reads `location`; the callback's outcome rides along for the page.
    if let Some(reply) = &done.callback {
        answer["callback"] = super::uploads::callback_json(reply);
    }
    Ok(Json(answer).into_response())
}

/// Companion's `DELETE /s3/multipart/{uploadId}`: aborts.
#[utoipa::path(
    delete,
    path = "/v1/grants/{grant}/companion/s3/multipart/{upload_id}",
    tag = "upload sessions",
    params(
        ("grant" = String, Path, description = "A grant with `multipart = true`", example = "large-files"),
        ("upload_id" = String, Path, description = "The session handle (Companion's `uploadId`)"),
        KeyQuery,
        Authorized,
    ),
    responses(
        (status = 200, description = "`{}`", body = Object),
        super::responses::SessionErrors,
    ),
    security((), ("api_key" = []), ("jwt" = []), ("ticket" = [])),
)]
pub async fn companion_abort(
    State(state): State<Arc<AppState>>,
    Path((_, upload_id)): Path<(String, String)>,
    Query(q): Query<KeyQuery>,
    caller: Authorized,
) -> Result<Response, ApiError> {
    let s = session_of(&state, &caller, &upload_id, q.key.as_deref())?;
    let material = state
        .issuer
        .signing_material(&caller.grant, &caller.resolved)
        .await?;
    session::abort(&caller.grant, &material, &state.oss, &s).await?;
    Ok(Json(json!({})).into_response())
}
