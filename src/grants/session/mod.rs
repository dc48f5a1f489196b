//! Upload sessions (issue 17): multipart uploads the server runs for a client
//! that holds no credential. The server initiates the upload (naming the key,
//! `x-oss-forbid-overwrite: true`), hands out presigned UploadPart URLs for
//! exactly that key and upload id, and completes it only after ListParts shows
//! parts that match the session (numbers 1..n, each but the last exactly
//! `part_size`, total = the declared size ≤ `max_size_bytes`); otherwise it
//! aborts. ossvend never carries the bytes.
//!
//! The session handle is stateless: `Tickets::seal` (HMAC-SHA256 with the
//! ticket key, domain `upload-v1`) over the grant, the caller's qualified
//! subject, key, upload id, size, part size, content type and expiry. Any
//! replica sharing `auth.tickets.secret_env` can serve it; without that key each
//! process has a random one (local mode) and handles die with the process.

use std::time::Duration;

use axum::http::StatusCode;
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use super::Grant;
use super::upload::{self, SigningMaterial, Target};
use crate::auth::Principal;
use crate::auth::ticket::Tickets;
use crate::config::PresignScheme;
use crate::error::ApiError;
use crate::oss::{ObjectRef, OssClient, OssSigning};

/// How long a session handle is valid (the part URLs it yields expire sooner).
pub const SESSION_TTL: Duration = Duration::from_secs(24 * 3600);
/// OSS: every part but the last is at least 100 KiB, at most 5 GiB; at most 10,000 parts.
pub const MIN_PART_SIZE: u64 = 100 * 1024;
pub const MAX_PART_SIZE: u64 = 5 << 30;
pub const MAX_PARTS: u64 = 10_000;
/// The part size when the client names none (more if 10,000 parts would not hold the file).
pub const DEFAULT_PART_SIZE: u64 = 8 << 20;
/// Part URLs per request.
pub const MAX_URLS_PER_REQUEST: usize = 1_000;

const SEAL_DOMAIN: &str = "upload-v1";

/// What the client says about the file it will upload.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct OpenRequest {
    /// The client's file name; only its sanitised extension is used.
    #[schema(example = "video.mp4")]
    pub filename: Option<String>,
    /// The file's media type (checked against the grant's allowlist).
    #[schema(example = "video/mp4")]
    pub content_type: Option<String>,
    /// The exact size in bytes; at most the grant's `max_size_bytes`.
    #[schema(example = 26214400)]
    pub size: u64,
    /// Bytes per part (100 KiB ..= 5 GiB, at most 10,000 parts); default 8 MiB.
    #[schema(example = 5242880)]
    pub part_size: Option<u64>,
}

/// The sealed session: everything a later call needs, bound together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub v: u8,
    pub grant: String,
    /// `namespace.subject`, or `""` for an anonymous caller.
    pub sub: String,
    pub key: String,
    pub upload_id: String,
    pub size: u64,
    pub part_size: u64,
    pub content_type: String,
    /// Unix seconds.
    pub exp: i64,
}

impl Session {
    /// Whether the client declared the size (the native API); Companion's S3 API
    /// does not (`size` 0: the parts must be uniform and fit `max_size_bytes`).
    pub fn declared(&self) -> bool {
        self.size > 0
    }

    pub fn part_count(&self) -> u64 {
        if !self.declared() {
            return MAX_PARTS;
        }
        self.size.div_ceil(self.part_size.max(1))
    }

    /// The expected size of part `n` (1-based).
    fn expected_size(&self, n: u64) -> u64 {
        if n < self.part_count() {
            self.part_size
        } else {
            self.size - (self.part_count() - 1) * self.part_size
        }
    }

    pub fn expires_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(self.exp, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
    }
}

/// An opened session, as answered to the client.
pub struct Opened {
    pub handle: String,
    pub session: Session,
}

fn subject_of(principal: &Principal) -> String {
    principal.qualified_subject().unwrap_or_default()
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_upload_request", message)
}

fn multipart_enabled(grant: &Grant) -> Result<(), ApiError> {
    if grant.upload.multipart {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "multipart_not_enabled",
        format!(
            "grant {:?} does not serve upload sessions (multipart = true)",
            grant.name
        ),
    ))
}

/// The part size for `size` bytes: the client's, checked, or the default (grown so
/// 10,000 parts hold the file).
fn part_size_for(size: u64, asked: Option<u64>) -> Result<u64, ApiError> {
    let part_size = match asked {
        Some(p) if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&p) => {
            return Err(invalid(format!(
                "part_size must be {MIN_PART_SIZE}..={MAX_PART_SIZE} bytes"
            )));
        }
        Some(p) => p,
        None => DEFAULT_PART_SIZE.max(size.div_ceil(MAX_PARTS)),
    };
    if size.div_ceil(part_size) > MAX_PARTS {
        return Err(invalid(format!(
            "{size} bytes in parts of {part_size} would be more than {MAX_PARTS} parts; use bigger parts"
        )));
    }
    Ok(part_size)
}

/// Checks the declared size and type, names the key, makes the session (not yet
/// initiated: the upload id is filled in by [`open`]).
pub fn plan(
    grant: &Grant,
    target: &Target<'_>,
    req: &OpenRequest,
    now: DateTime<Utc>,
) -> Result<Session, ApiError> {
    multipart_enabled(grant)?;
    if req.size == 0 {
        return Err(invalid("size must be at least 1 byte"));
    }
    if req.size > grant.upload.max_size_bytes {
        return Err(too_large(req.size, grant.upload.max_size_bytes, "declared"));
    }
    let part_size = part_size_for(req.size, req.part_size)?;
    let ct = req.content_type.as_deref();
    new_session(
        grant,
        target,
        req.filename.as_deref(),
        ct,
        (req.size, part_size),
        now,
    )
}

/// A session without a declared size (Companion's `POST /s3/multipart` sends none):
/// completion then checks that the parts are uniform and fit `max_size_bytes`.
pub fn plan_undeclared(
    grant: &Grant,
    target: &Target<'_>,
    filename: Option<&str>,
    content_type: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Session, ApiError> {
    new_session(grant, target, filename, content_type, (0, 0), now)
}

fn new_session(
    grant: &Grant,
    target: &Target<'_>,
    filename: Option<&str>,
    ct: Option<&str>,
    (size, part_size): (u64, u64),
    now: DateTime<Utc>,
) -> Result<Session, ApiError> {
    multipart_enabled(grant)?;
    upload::check_content_type(grant, ct, true)?;
    let key = upload::new_key(grant, target, filename, ct, now)?;
    let ttl = TimeDelta::from_std(SESSION_TTL).unwrap_or(TimeDelta::MAX);
    Ok(Session {
        v: 1,
        grant: grant.name.clone(),
        sub: subject_of(target.principal),
        key,
        upload_id: String::new(),
        size,
        part_size,
        content_type: ct.unwrap_or("application/octet-stream").to_string(),
        exp: (now + ttl).timestamp(),
    })
}

fn too_large(size: u64, max: u64, what: &str) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "upload_too_large",
        format!("the {what} size {size} is over this grant's max_size_bytes ({max})"),
    )
}

/// Where the grant's objects live, for ossvend's own OSS calls.
pub fn object_ref<'a>(grant: &'a Grant, key: &'a str) -> ObjectRef<'a> {
    ObjectRef {
        endpoint: upload::endpoint(&grant.endpoint, grant.upload.path_style),
        region: &grant.region,
        bucket: &grant.bucket,
        key,
        signing: match grant.upload.presign_scheme {
            PresignScheme::OssV1 => OssSigning::V1,
            PresignScheme::OssV4 | PresignScheme::S3V4 => OssSigning::V4,
        },
    }
}

/// The object's URL (`location` in Companion's answers).
pub fn object_url(grant: &Grant, key: &str) -> Result<String, ApiError> {
    let endpoint = upload::endpoint(&grant.endpoint, grant.upload.path_style);
    let at = endpoint.locate(&grant.bucket, key).map_err(upload::sign_error)?;
    Ok(format!("{}{}", at.origin, at.path))
}

/// InitiateMultipartUpload for a planned session (with `x-oss-forbid-overwrite: true`), then seals it.
pub async fn open(
    grant: &Grant,
    material: &SigningMaterial,
    oss: &OssClient,
    tickets: &Tickets,
    mut session: Session,
) -> Result<Opened, ApiError> {
    let object = object_ref(grant, &session.key);
    session.upload_id = oss
        .initiate(&material.creds(), &object, &session.content_type, true)
        .await?;
    let payload = serde_json::to_vec(&session).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Opened {
        handle: tickets.seal(SEAL_DOMAIN, &payload),
        session,
    })
}

/// The session a handle names, for this grant and caller: 404 `unknown_upload`
/// (not sealed by this server, expired, another grant's), 403 `upload_not_yours`.
pub fn unseal(
    tickets: &Tickets,
    handle: &str,
    grant: &Grant,
    principal: &Principal,
    now: DateTime<Utc>,
) -> Result<Session, ApiError> {
    multipart_enabled(grant)?;
    let unknown = || {
        ApiError::not_found(
            "unknown_upload",
            "no such upload session (unknown, expired or another grant's)",
        )
    };
    let payload = tickets.open(SEAL_DOMAIN, handle).ok_or_else(unknown)?;
    let session: Session = serde_json::from_slice(&payload).map_err(|_| unknown())?;
    if session.v != 1 || session.grant != grant.name || session.exp <= now.timestamp() {
        return Err(unknown());
    }
    if session.sub != subject_of(principal) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "upload_not_yours",
            "this upload session belongs to another caller",
        ));
    }
    Ok(session)
}

mod parts;
pub use parts::*;

#[cfg(test)]
mod tests;
