//! A session's parts: presigned UploadPart URLs, the check of the uploaded parts
//! against the session, completion and abort.

use axum::http::StatusCode;
use chrono::{DateTime, Utc};

use super::{MAX_URLS_PER_REQUEST, Session, object_ref};
use crate::config::PresignScheme;
use crate::error::ApiError;
use crate::grants::Grant;
use crate::grants::upload::{self, SigningMaterial};
use crate::oss::{OssClient, Part};
use crate::sign::oss_v4::V4Scope;
use crate::sign::{self, RequestToSign};

/// One presigned UploadPart.
#[derive(Debug)]
pub struct PartUrl {
    pub number: u32,
    pub url: String,
    /// Exactly the headers that were signed (`Content-MD5` when bound).
    pub headers: Vec<(String, String)>,
    pub expires_at: DateTime<Utc>,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_upload_request", message)
}

/// `1-4,7` → `[1, 2, 3, 4, 7]`: ascending, no repeats, each in `1..=count`,
/// at most [`MAX_URLS_PER_REQUEST`].
pub fn parse_numbers(spec: &str, count: u64) -> Result<Vec<u32>, ApiError> {
    let number = |s: &str| -> Result<u64, ApiError> {
        let n: u64 = s
            .trim()
            .parse()
            .map_err(|_| invalid(format!("numbers: {s:?} is not a part number")))?;
        if n == 0 || n > count {
            return Err(invalid(format!("numbers: part {n} is outside 1..={count}")));
        }
        Ok(n)
    };
    let mut out: Vec<u32> = Vec::new();
    for item in spec.split(',') {
        let (a, b) = match item.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => {
                let n = number(item)?;
                (n, n)
            }
        };
        if b < a || out.last().is_some_and(|&last| u64::from(last) >= a) {
            return Err(invalid(
                "numbers must be ascending ranges without repeats, like 1-4,7",
            ));
        }
        if out.len() as u64 + (b - a + 1) > MAX_URLS_PER_REQUEST as u64 {
            return Err(invalid(format!(
                "at most {MAX_URLS_PER_REQUEST} part URLs per request"
            )));
        }
        out.extend((a..=b).map(|n| n as u32));
    }
    Ok(out)
}

/// A `Content-MD5` value: base64 of 16 bytes (400 `invalid_md5` otherwise).
pub fn check_md5(value: &str) -> Result<(), ApiError> {
    use base64::Engine as _;
    match base64::engine::general_purpose::STANDARD.decode(value) {
        Ok(bytes) if bytes.len() == 16 => Ok(()),
        _ => Err(ApiError::bad_request(
            "invalid_md5",
            format!("{value:?} is not a Content-MD5 value (base64 of the 16-byte MD5 digest)"),
        )),
    }
}

/// Presigned UploadPart URLs for `numbers` (OSS V1 for `oss-v1` grants, else OSS V4),
/// each bound to the session's key and upload id, and to `md5s[i]` when given.
pub fn part_urls(
    grant: &Grant,
    material: &SigningMaterial,
    session: &Session,
    numbers: &[u32],
    md5s: &[Option<String>],
    now: DateTime<Utc>,
) -> Result<Vec<PartUrl>, ApiError> {
    let secs = upload::validity(grant, material, now)?;
    let creds = material.creds();
    let endpoint = upload::endpoint(&grant.endpoint, grant.upload.path_style);
    let mut out = Vec::with_capacity(numbers.len());
    for (i, &n) in numbers.iter().enumerate() {
        let md5 = md5s.get(i).cloned().flatten();
        if let Some(m) = &md5 {
            check_md5(m)?;
        }
        let headers: Vec<(&str, &str)> = md5.iter().map(|m| ("Content-MD5", m.as_str())).collect();
        let number = n.to_string();
        let query = [
            ("partNumber", number.as_str()),
            ("uploadId", session.upload_id.as_str()),
        ];
        let req = RequestToSign {
            method: "PUT",
            bucket: Some(&grant.bucket),
            key: &session.key,
            headers: &headers,
            query: &query,
        };
        let signed = match grant.upload.presign_scheme {
            PresignScheme::OssV1 => sign::oss_v1::presign_url(&creds, &req, &endpoint, now, secs),
            PresignScheme::OssV4 | PresignScheme::S3V4 => {
                let scope = V4Scope::oss(&grant.region);
                sign::oss_v4::presign_url(&creds, &req, &scope, &[], &endpoint, now, secs)
            }
        }
        .map_err(upload::sign_error)?;
        out.push(PartUrl {
            number: n,
            url: signed.url,
            headers: signed.required_headers,
            expires_at: DateTime::from_timestamp(signed.expires_at_unix, 0).unwrap_or(now),
        });
    }
    Ok(out)
}

/// Why the uploaded parts do not make the declared file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

/// The parts OSS lists against the session: numbers exactly 1..=n, each but the
/// last exactly `part_size`, the last the rest, total = declared size ≤ `max`.
/// `Ok` is the (number, ETag) list to complete with.
pub fn check_parts(session: &Session, parts: &[Part], max: u64) -> Result<Vec<(u32, String)>, Violation> {
    if !session.declared() {
        return check_uniform_parts(parts, max);
    }
    let total: u64 = parts.iter().map(|p| p.size).sum();
    if total > max {
        return Err(violation(
            (StatusCode::PAYLOAD_TOO_LARGE, "upload_too_large"),
            format!("the parts hold {total} bytes, over this grant's max_size_bytes ({max})"),
        ));
    }
    let wrong = |message: String| {
        violation(
            (StatusCode::UNPROCESSABLE_ENTITY, "upload_parts_invalid"),
            message,
        )
    };
    let count = session.part_count();
    for (i, p) in parts.iter().enumerate() {
        let n = i as u64 + 1;
        if u64::from(p.number) != n {
            return Err(wrong(format!(
                "part {n} is missing (found part {} instead)",
                p.number
            )));
        }
        if n > count {
            return Err(wrong(format!("part {n} is beyond the session's {count} parts")));
        }
        let want = session.expected_size(n);
        if p.size != want {
            return Err(wrong(format!(
                "part {n} is {} bytes; the session expects {want} (part_size {}, size {})",
                p.size, session.part_size, session.size
            )));
        }
    }
    if parts.len() as u64 != count {
        return Err(wrong(format!(
            "{} of the session's {count} parts are uploaded",
            parts.len()
        )));
    }
    Ok(parts.iter().map(|p| (p.number, p.etag.clone())).collect())
}

/// The parts of a session without a declared size: numbers exactly 1..=n (n ≥ 1),
/// every part but the last the size of part 1, the last no bigger, total ≤ `max`.
fn check_uniform_parts(parts: &[Part], max: u64) -> Result<Vec<(u32, String)>, Violation> {
    let total: u64 = parts.iter().map(|p| p.size).sum();
    if total > max {
        return Err(violation(
            (StatusCode::PAYLOAD_TOO_LARGE, "upload_too_large"),
            format!("the parts hold {total} bytes, over this grant's max_size_bytes ({max})"),
        ));
    }
    let wrong = |m: String| violation((StatusCode::UNPROCESSABLE_ENTITY, "upload_parts_invalid"), m);
    let Some(first) = parts.first() else {
        return Err(wrong("no part is uploaded".into()));
    };
    for (i, p) in parts.iter().enumerate() {
        let n = i + 1;
        if p.number as usize != n {
            return Err(wrong(format!(
                "part {n} is missing (found part {} instead)",
                p.number
            )));
        }
        let last = n == parts.len();
        if (!last && p.size != first.size) || (last && p.size > first.size) {
            return Err(wrong(format!(
                "part {n} is {} bytes; parts must all be {} bytes (the last may be smaller)",
                p.size, first.size
            )));
        }
    }
    Ok(parts.iter().map(|p| (p.number, p.etag.clone())).collect())
}

fn violation((status, code): (StatusCode, &'static str), message: String) -> Violation {
    Violation {
        status,
        code,
        message,
    }
}

/// What completion did.
#[derive(Debug)]
pub struct Completed {
    pub etag: String,
    pub parts: usize,
    /// OSS's answer after the grant's upload callback, when the grant has one.
    pub callback: Option<crate::oss::CallbackReply>,
}

/// A client's own part list (Companion's complete) must be exactly what OSS lists.
fn agrees(
    chosen: Vec<(u32, String)>,
    claimed: Option<&[(u32, String)]>,
) -> Result<Vec<(u32, String)>, Violation> {
    let norm = |e: &str| e.trim().trim_matches('"').to_ascii_uppercase();
    let same = |c: &[(u32, String)]| {
        c.len() == chosen.len()
            && c.iter()
                .zip(&chosen)
                .all(|(a, b)| a.0 == b.0 && norm(&a.1) == norm(&b.1))
    };
    match claimed {
        Some(c) if !same(c) => Err(violation(
            (StatusCode::UNPROCESSABLE_ENTITY, "upload_parts_invalid"),
            "the client's part list is not the parts OSS lists for this upload".into(),
        )),
        _ => Ok(chosen),
    }
}

/// ListParts, the check (and, when the client sent one, its part list against
/// ListParts), then CompleteMultipartUpload (`x-oss-forbid-overwrite: true`, and
/// the grant's upload callback built for `target` with `x:upload` = the upload
/// id); on a violation the upload is aborted and the violation answered.
pub async fn complete(
    grant: &Grant,
    target: &upload::Target<'_>,
    material: &SigningMaterial,
    oss: &OssClient,
    session: &Session,
    claimed: Option<&[(u32, String)]>,
) -> Result<Completed, ApiError> {
    // Built first: a grant whose callback cannot be built must not complete without it.
    let callback = upload::callback_fields(grant, target, Some(&session.upload_id))?;
    let creds = material.creds();
    let object = object_ref(grant, &session.key);
    let parts = oss.list_parts(&creds, &object, &session.upload_id).await?;
    let checked = check_parts(session, &parts, grant.upload.max_size_bytes).and_then(|c| agrees(c, claimed));
    let chosen = match checked {
        Ok(chosen) => chosen,
        Err(v) => {
            // Nothing of a refused upload stays; an abort that fails is OSS's lifecycle rule's to clean.
            if let Err(e) = oss.abort(&creds, &object, &session.upload_id).await {
                tracing::warn!(grant = %grant.name, key = %session.key, error = %e, "abort after a refused completion failed");
            }
            return Err(ApiError::new(
                v.status,
                v.code,
                format!("{}; the upload was aborted", v.message),
            ));
        }
    };
    let headers = callback.as_ref().map(|c| crate::oss::CallbackHeaders {
        param: &c.param,
        vars: &c.vars_base64,
    });
    let done = oss
        .complete_with(&creds, &object, &session.upload_id, &chosen, true, headers)
        .await?;
    Ok(Completed {
        etag: done.etag,
        parts: chosen.len(),
        callback: done.callback,
    })
}

/// ListParts, every page.
pub async fn list(
    grant: &Grant,
    material: &SigningMaterial,
    oss: &OssClient,
    session: &Session,
) -> Result<Vec<Part>, ApiError> {
    let object = object_ref(grant, &session.key);
    Ok(oss
        .list_parts(&material.creds(), &object, &session.upload_id)
        .await?)
}

/// AbortMultipartUpload.
pub async fn abort(
    grant: &Grant,
    material: &SigningMaterial,
    oss: &OssClient,
    session: &Session,
) -> Result<(), ApiError> {
    let object = object_ref(grant, &session.key);
    oss.abort(&material.creds(), &object, &session.upload_id)
        .await
        .map_err(ApiError::from)
}
