//! Request id, access log, and JSON bodies for every error response.

use std::time::Instant;

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use tracing::{Instrument, info, info_span, warn};

use crate::error::ApiError;

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Gives every request an id (kept from `X-Request-Id` when it is a safe token,
/// so ids follow a call across proxies), runs it inside a span carrying that id
/// so every log line has it, writes one access-log line, and makes sure every
/// error response has the JSON error body with the id in it.
pub async fn request_context(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_safe_id(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let method = req.method().clone();
    // The path only: query strings may carry tickets or filenames.
    let path = req.uri().path().to_owned();
    let span = info_span!("request", request_id = %id);
    let started = Instant::now();

    let mut resp = next.run(req).instrument(span.clone()).await;

    if let Some(err) = resp.extensions_mut().remove::<ApiError>() {
        resp = err.render(&id);
    } else if (resp.status().is_client_error() || resp.status().is_server_error()) && !is_json(&resp) {
        // Errors raised by layers (timeout, body limit) arrive without a body.
        resp = status_error(resp.status()).render(&id);
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    let status = resp.status().as_u16();
    let latency_ms = started.elapsed().as_millis() as u64;
    span.in_scope(|| {
        if status >= 500 {
            warn!(%method, %path, status, latency_ms, "request");
        } else {
            info!(%method, %path, status, latency_ms, "request");
        }
    });
    resp
}

fn is_safe_id(v: &str) -> bool {
    (1..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

fn is_json(resp: &Response) -> bool {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

fn status_error(status: StatusCode) -> ApiError {
    let (code, message) = match status {
        StatusCode::NOT_FOUND => ("not_found", "no such route"),
        StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "this path does not accept that method"),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "payload_too_large",
            "the request body is larger than server.body_limit_bytes",
        ),
        StatusCode::GATEWAY_TIMEOUT | StatusCode::REQUEST_TIMEOUT => {
            ("timeout", "the request took longer than server.request_timeout")
        }
        s if s.is_client_error() => ("bad_request", "the request was not understood"),
        _ => ("internal_error", "the server failed to handle the request"),
    };
    ApiError::new(status, code, message)
}
