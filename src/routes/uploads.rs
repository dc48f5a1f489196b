//! Upload sessions: `POST /v1/grants/{grant}/uploads`, `GET …/uploads/{upload}/parts`,
//! `POST …/uploads/{upload}/complete`, `DELETE …/uploads/{upload}` (see
//! [`crate::grants::session`]). Thin: authorize, call `grants::session`, shape JSON.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::authorized::{Authorized, Issued, WithBody};
use crate::error::ApiError;
use crate::grants::session::{self, OpenRequest, Session};
use crate::sign::format_iso8601_extended;
use crate::state::AppState;

fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// An opened upload session.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = UploadSession)]
pub(crate) struct OpenedBody<'a> {
    /// The session handle for the other routes: opaque, HMAC-sealed, bound to the grant, the caller,
    /// the key, the upload id, the size and the part size.
    upload: &'a str,
    /// The object key the server chose from the grant's `key_template`.
    #[schema(example = "uploads/5f2c0b7e.mp4")]
    key: &'a str,
    /// OSS's upload id.
    upload_id: &'a str,
    /// Bytes per part; every part but the last is exactly this size.
    #[schema(example = 5242880)]
    part_size: u64,
    #[schema(example = 5)]
    part_count: u64,
    /// When the handle expires, `YYYY-MM-DDThh:mm:ssZ`.
    expires_at: String,
}

fn opened_body<'a>(handle: &'a str, s: &'a Session) -> OpenedBody<'a> {
    OpenedBody {
        upload: handle,
        key: &s.key,
        upload_id: &s.upload_id,
        part_size: s.part_size,
        part_count: s.part_count(),
        expires_at: format_iso8601_extended(s.expires_at()),
    }
}

/// Opens an upload session: the server checks the declared size and type, names the object and
/// initiates a multipart upload for it (`x-oss-forbid-overwrite: true`).
#[utoipa::path(
    post,
    path = "/v1/grants/{grant}/uploads",
    tag = "upload sessions",
    params(
        ("grant" = String, Path, description = "A grant with `multipart = true`", example = "large-files"),
        Authorized,
    ),
    request_body(content = OpenRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The session", body = OpenedBody, headers(("X-Request-Id" = String, description = "The request id"), ("Cache-Control" = String, description = "`no-store`"))),
        super::responses::SessionErrors,
    ),
    security((), ("api_key" = []), ("jwt" = []), ("ticket" = [])),
)]
pub async fn session_open(
    State(state): State<Arc<AppState>>,
    WithBody(Json(req), caller): WithBody<Json<OpenRequest>>,
) -> Result<Response, ApiError> {
    let now = Utc::now();
    let grant = &caller.grant;
    // Refuse what the server can check before an STS or OSS call.
    let target = caller.issuance_target(&state);
    let planned = session::plan(grant, &target, &req, now)?;
    let opened = open_audited(&state, &caller, planned).await?;
    let body = Json(opened_body(&opened.handle, &opened.session));
    Ok(no_store((StatusCode::CREATED, body).into_response()))
}

/// Opens a planned session with the grant's credential (InitiateMultipartUpload)
/// and writes its audit record: the native route and Companion's create both open this way.
pub(super) async fn open_audited(
    state: &AppState,
    caller: &Authorized,
    planned: Session,
) -> Result<session::Opened, ApiError> {
    let grant = &caller.grant;
    let material = state.issuer.signing_material(grant, &caller.resolved).await?;
    let opened = session::open(grant, &material, &state.oss, &state.auth.tickets, planned).await?;
    caller.audit(
        state,
        Issued {
            kind: "upload-session",
            access_key_id: Some(material.access_key_id()),
            expires_at: opened.session.expires_at(),
            cache: None,
            key: &opened.session.key,
        },
    );
    Ok(opened)
}

/// Which parts to sign.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PartsQuery {
    /// Part numbers: ascending numbers and ranges within `part_count`, at most 1,000.
    #[param(example = "1-4,7")]
    pub numbers: String,
    /// Optional `Content-MD5` per listed number, comma-separated in the same order (empty for
    /// none): each is signed into its URL, so OSS refuses any other bytes for that part.
    #[param(example = "1B2M2Y8AsgTpgAmY7PhCfg==,,")]
    pub md5: Option<String>,
}

/// One presigned UploadPart.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = PartUrl)]
pub(crate) struct PartBody<'a> {
    #[schema(example = 1)]
    number: u32,
    /// `PUT` the part's bytes here.
    url: &'a str,
    /// Send exactly these headers (`Content-MD5` when bound).
    #[schema(value_type = std::collections::HashMap<String, String>)]
    headers: std::collections::BTreeMap<&'a str, &'a str>,
    expires_at: String,
}

/// The part URLs.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = PartUrls)]
pub(crate) struct PartsBody<'a> {
    parts: Vec<PartBody<'a>>,
}

/// Presigned UploadPart URLs for exactly this session's key, upload id and part numbers.
/// Only the caller that opened the session may ask.
#[utoipa::path(
    get,
    path = "/v1/grants/{grant}/uploads/{upload}/parts",
    tag = "upload sessions",
    params(
        ("grant" = String, Path, description = "A grant with `multipart = true`", example = "large-files"),
        ("upload" = String, Path, description = "The session handle (`upload`)"),
        PartsQuery,
        Authorized,
    ),
    responses(
        (status = 200, description = "One URL per requested part", body = PartsBody, headers(("X-Request-Id" = String, description = "The request id"), ("Cache-Control" = String, description = "`no-store`"))),
        super::responses::SessionErrors,
    ),
    security((), ("api_key" = []), ("jwt" = []), ("ticket" = [])),
)]
pub async fn session_parts(
    State(state): State<Arc<AppState>>,
    Path((_, upload)): Path<(String, String)>,
    Query(q): Query<PartsQuery>,
    caller: Authorized,
) -> Result<Response, ApiError> {
    let now = Utc::now();
    let grant = &caller.grant;
    let s = session::unseal(&state.auth.tickets, &upload, grant, &caller.principal, now)?;
    let numbers = session::parse_numbers(&q.numbers, s.part_count())?;
    let md5s: Vec<Option<String>> = match &q.md5 {
        None => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|m| (!m.trim().is_empty()).then(|| m.trim().to_string()))
            .collect(),
    };
    if md5s.len() > numbers.len() {
        return Err(ApiError::bad_request(
            "invalid_upload_request",
            "md5 lists more values than numbers names parts",
        ));
    }
    let material = state.issuer.signing_material(grant, &caller.resolved).await?;
    let urls = session::part_urls(grant, &material, &s, &numbers, &md5s, now)?;
    let parts = urls
        .iter()
        .map(|u| PartBody {
            number: u.number,
            url: &u.url,
            headers: u.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
            expires_at: format_iso8601_extended(u.expires_at),
        })
        .collect();
    Ok(no_store(Json(PartsBody { parts }).into_response()))
}

/// A completed upload.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = CompletedUpload)]
pub(crate) struct CompletedBody<'a> {
    key: &'a str,
    #[schema(example = 26214400)]
    size: u64,
    #[schema(example = 5)]
    parts: usize,
    /// The object's ETag as OSS reports it.
    etag: &'a str,
    /// Only for a grant with an upload callback: OSS's answer after calling back, as OSS gives it to
    /// an uploader: `status` 200 and the callback's reply (`body`, the application's JSON), or 203
    /// and OSS's `CallbackFailed` error (the object is stored all the same; the route then answers 203).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    callback: Option<serde_json::Value>,
}

/// OSS's answer after a completion's callback, as JSON: `{status, body}`, the body
/// parsed when it is JSON (the callback's reply) and text otherwise (OSS's XML error).
pub(crate) fn callback_json(reply: &crate::oss::CallbackReply) -> serde_json::Value {
    let body = serde_json::from_slice::<serde_json::Value>(&reply.body)
        .unwrap_or_else(|_| String::from_utf8_lossy(&reply.body).into_owned().into());
    serde_json::json!({ "status": reply.status, "body": body })
}

/// Completes the upload: the server lists the parts (ListParts, every page), checks them against the
/// session (numbers 1..n, each but the last exactly `part_size`, total = the declared size ≤
/// `max_size_bytes`) and completes with `x-oss-forbid-overwrite: true` (and the grant's upload callback,
/// `x:upload` = the upload id); on any violation it aborts the upload and answers 413/422.
#[utoipa::path(
    post,
    path = "/v1/grants/{grant}/uploads/{upload}/complete",
    tag = "upload sessions",
    params(
        ("grant" = String, Path, description = "A grant with `multipart = true`", example = "large-files"),
        ("upload" = String, Path, description = "The session handle (`upload`)"),
        Authorized,
    ),
    responses(
        (status = 200, description = "The object is stored", body = CompletedBody, headers(("X-Request-Id" = String, description = "The request id"))),
        (status = 203, description = "The object is stored but OSS's upload callback failed (`callback` holds OSS's `CallbackFailed`)", body = CompletedBody),
        super::responses::SessionErrors,
    ),
    security((), ("api_key" = []), ("jwt" = []), ("ticket" = [])),
)]
pub async fn session_complete(
    State(state): State<Arc<AppState>>,
    Path((_, upload)): Path<(String, String)>,
    caller: Authorized,
) -> Result<Response, ApiError> {
    let grant = &caller.grant;
    let s = session::unseal(&state.auth.tickets, &upload, grant, &caller.principal, Utc::now())?;
    let material = state.issuer.signing_material(grant, &caller.resolved).await?;
    let target = caller.issuance_target(&state);
    let done = session::complete(grant, &target, &material, &state.oss, &s, None).await?;
    // As OSS answers an uploader: 203 when the object is stored but the callback failed.
    let status = match &done.callback {
        Some(reply) if reply.status != 200 => StatusCode::NON_AUTHORITATIVE_INFORMATION,
        _ => StatusCode::OK,
    };
    let body = CompletedBody {
        key: &s.key,
        size: s.size,
        parts: done.parts,
        etag: &done.etag,
        callback: done.callback.as_ref().map(callback_json),
    };
    Ok(no_store((status, Json(body)).into_response()))
}

/// Aborts the upload: OSS drops the uploaded parts.
#[utoipa::path(
    delete,
    path = "/v1/grants/{grant}/uploads/{upload}",
    tag = "upload sessions",
    params(
        ("grant" = String, Path, description = "A grant with `multipart = true`", example = "large-files"),
        ("upload" = String, Path, description = "The session handle (`upload`)"),
        Authorized,
    ),
    responses(
        (status = 204, description = "Aborted", headers(("X-Request-Id" = String, description = "The request id"))),
        super::responses::SessionErrors,
    ),
    security((), ("api_key" = []), ("jwt" = []), ("ticket" = [])),
)]
pub async fn session_abort(
    State(state): State<Arc<AppState>>,
    Path((_, upload)): Path<(String, String)>,
    caller: Authorized,
) -> Result<StatusCode, ApiError> {
    let grant = &caller.grant;
    let s = session::unseal(&state.auth.tickets, &upload, grant, &caller.principal, Utc::now())?;
    let material = state.issuer.signing_material(grant, &caller.resolved).await?;
    session::abort(grant, &material, &state.oss, &s).await?;
    Ok(StatusCode::NO_CONTENT)
}
