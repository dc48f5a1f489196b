//! `POST /v1/callbacks/oss`: OSS's upload callback (docs/callbacks.md).
//! Verified before anything is believed: OSS's RSA signature (keys only from
//! Alibaba's key host), then ossvend's own signature over the custom variables,
//! then the object's bucket and prefix. Only then is the application told.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, OriginalUri, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tracing::{info, warn};

use super::RequestCtx;
use crate::callbacks::{BodyError, CallbackRequest, Notification, Refusal};
use crate::error::ApiError;
use crate::state::AppState;
use crate::webhooks::{Outcome, UploadEvent};

/// OSS waits 5 seconds for the answer; the webhook gets what verification
/// (a key fetch, on a cold cache) left of it, with room for the answer's way back.
const OSS_WINDOW: std::time::Duration = std::time::Duration::from_millis(4500);

/// Receives OSS's upload callback and tells the application.
///
/// Called by OSS (never by clients) after storing an object uploaded with a form or presigned URL of a grant
/// with `[grants.callback]`. The request must carry OSS's signature (`Authorization`, `x-oss-pub-key-url`);
/// the public key is fetched only from `gosspublic.alicdn.com` (over https). Answers 200 with the
/// application's JSON reply (OSS hands it to the uploader) once the `upload.completed` webhook is delivered;
/// when the application does not take it in time, 503 `webhook_pending` (OSS reports `CallbackFailed` to the
/// uploader and keeps the object) and the event is redelivered later.
#[utoipa::path(
    post,
    path = "/v1/callbacks/oss",
    tag = "callbacks",
    params(
        ("Authorization" = String, Header, description = "OSS's base64 RSA signature"),
        ("x-oss-pub-key-url" = String, Header, description = "Base64 of the URL of OSS's public key"),
    ),
    request_body(content = String, description = "The callback body ossvend asked OSS for (JSON or form)", content_type = "application/json"),
    responses(
        (status = 200, description = "Delivered: the application's JSON reply, or `{\"status\": \"delivered\", \"webhook_id\": …}`", body = serde_json::Value),
        (status = 400, description = "`callback_body_invalid`: not the body ossvend asked OSS for", body = crate::error::Body),
        (status = 403, description = "`callback_unsigned`, `callback_key_url_refused`, `callback_signature_invalid` (not OSS's signature), `callback_vars_invalid` (custom variables not ossvend's own), `callback_key_outside_prefix` (the object is not where the issuance allowed) or `callback_grant_unknown`", body = crate::error::Body),
        (status = 503, description = "`callback_key_unavailable` (OSS's key could not be fetched), `webhooks_not_configured`, or `webhook_pending`: the application did not take the event in time; it is kept and redelivered", body = crate::error::Body),
    ),
)]
pub async fn oss_callback(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<RequestCtx>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let req = CallbackRequest {
        path: uri.path(),
        query: uri.query(),
        body: &body,
        authorization: header("authorization"),
        pub_key_url: header("x-oss-pub-key-url"),
    };
    if let Err(e) = state.callbacks.verify(&req).await {
        return Err(refused(refusal(&e), &ctx));
    }
    let Some(hooks) = state.webhooks.as_deref() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "webhooks_not_configured",
            "[webhooks] url and secret_env are not configured: a verified callback has nowhere to go",
        ));
    };
    let n = Notification::parse(header("content-type"), &body).map_err(|e| refused(body_error(&e), &ctx))?;
    check_target(&state, &n).map_err(|e| refused(body_error(&e), &ctx))?;
    crate::callbacks::check_vars(hooks.vars_key(), &n).map_err(|e| refused(body_error(&e), &ctx))?;
    crate::prom::callback("accepted");

    let event = UploadEvent {
        event: "upload.completed".into(),
        grant: n.issuance.grant,
        subject: n.issuance.subject,
        bucket: n.bucket,
        key: n.key,
        size: n.size,
        etag: n.etag,
        content_type: n.content_type,
        request_id: n.issuance.request_id,
        upload: Some(n.issuance.upload).filter(|u| !u.is_empty()),
        time: crate::sign::format_iso8601_extended(chrono::Utc::now()),
    };
    let id = event.id();
    let budget = OSS_WINDOW.saturating_sub(started.elapsed());
    let outcome = hooks.deliver(&event, budget).await;
    audit(&state, &event, &id, &outcome);
    match outcome {
        Outcome::Delivered(Some(reply)) => Ok(Json(reply).into_response()),
        Outcome::Delivered(None) => {
            Ok(Json(json!({ "status": "delivered", "webhook_id": id })).into_response())
        }
        Outcome::Pending(why) => {
            warn!(target: "ossvend::audit", webhook_id = %id, error = %why, "webhook pending: the application did not take the upload event");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "webhook_pending",
                format!(
                    "the upload is stored; the application has not taken event {id} yet ({why}); it is kept and redelivered"
                ),
            ))
        }
    }
}

/// The audit trail of a confirmed upload: the log line and the `audit.file` line.
fn audit(state: &AppState, event: &UploadEvent, id: &str, outcome: &Outcome) {
    let echo = state.webhooks.as_deref().is_some_and(|w| w.is_echo());
    let delivery = match outcome {
        // `ossvend local` with no application: the event went back to the uploader.
        Outcome::Delivered(_) if echo => "answered_to_uploader",
        Outcome::Delivered(_) => "delivered",
        Outcome::Pending(_) => "pending",
    };
    info!(
        target: "ossvend::audit",
        kind = "upload.completed", grant = %event.grant, subject = %event.subject, key = %event.key,
        size = event.size, etag = %event.etag, webhook_id = %id, delivery, issued_request_id = %event.request_id,
        "upload completed"
    );
    state.audit.upload(&crate::audit::UploadRecord {
        time: chrono::Utc::now(),
        kind: "upload.completed",
        grant: &event.grant,
        subject: &event.subject,
        bucket: &event.bucket,
        key: &event.key,
        size: event.size,
        etag: &event.etag,
        request_id: &event.request_id,
        webhook_id: id,
        delivery,
    });
}

/// The grant named by the (still unverified) variables exists, has a callback,
/// and owns the bucket; `check_vars` then proves the variables are ossvend's.
fn check_target(state: &AppState, n: &Notification) -> Result<(), BodyError> {
    let unknown = || BodyError::UnknownGrant(n.issuance.grant.clone());
    let grant = state.grants.get(&n.issuance.grant).map_err(|_| unknown())?;
    if grant.upload.callback.is_none() {
        return Err(unknown());
    }
    if grant.bucket != n.bucket {
        return Err(BodyError::OutsidePrefix(format!("{}/{}", n.bucket, n.key)));
    }
    Ok(())
}

fn refused(e: ApiError, ctx: &RequestCtx) -> ApiError {
    crate::prom::callback(e.code);
    warn!(code = e.code, client_ip = %ctx.ip_string(), reason = %e.message, "OSS callback refused");
    e
}

fn refusal(e: &Refusal) -> ApiError {
    let msg = e.to_string();
    match e {
        Refusal::Unsigned(_) => ApiError::new(StatusCode::FORBIDDEN, "callback_unsigned", msg),
        Refusal::MalformedKeyUrl | Refusal::KeyUrlNotAllowed(_) => {
            ApiError::new(StatusCode::FORBIDDEN, "callback_key_url_refused", msg)
        }
        Refusal::KeyUnavailable(_) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "callback_key_unavailable", msg)
        }
        Refusal::MalformedSignature | Refusal::BadSignature => {
            ApiError::new(StatusCode::FORBIDDEN, "callback_signature_invalid", msg)
        }
    }
}

fn body_error(e: &BodyError) -> ApiError {
    let msg = e.to_string();
    match e {
        BodyError::Malformed(_) => ApiError::new(StatusCode::BAD_REQUEST, "callback_body_invalid", msg),
        BodyError::ForeignVars => ApiError::new(StatusCode::FORBIDDEN, "callback_vars_invalid", msg),
        BodyError::OutsidePrefix(_) => {
            ApiError::new(StatusCode::FORBIDDEN, "callback_key_outside_prefix", msg)
        }
        BodyError::UnknownGrant(_) => ApiError::new(StatusCode::FORBIDDEN, "callback_grant_unknown", msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The route's codes are the verifier's own (`Refusal::code`, `BodyError::code`).
    #[test]
    fn codes_agree_with_the_callbacks_module() {
        for r in [
            Refusal::Unsigned("Authorization"),
            Refusal::MalformedKeyUrl,
            Refusal::KeyUrlNotAllowed("x".into()),
            Refusal::KeyUnavailable("x".into()),
            Refusal::MalformedSignature,
            Refusal::BadSignature,
        ] {
            assert_eq!(refusal(&r).code, r.code());
        }
        for b in [
            BodyError::Malformed("x".into()),
            BodyError::ForeignVars,
            BodyError::OutsidePrefix("x".into()),
            BodyError::UnknownGrant("x".into()),
        ] {
            assert_eq!(body_error(&b).code, b.code());
        }
    }
}
