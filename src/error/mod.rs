//! One error type for every route: JSON `{code, message, request_id}` with the
//! right status, plus `StatusCode`/`ErrorCode`/`ErrorMessage` because the OSS
//! mobile SDKs' auth-server providers read those names. Messages are written
//! for clients: no secrets, no internal hostnames.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::oss::OssCallError;
use crate::sts::{StsError, StsErrorKind};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable, machine-readable; documented in the README.
    pub code: &'static str,
    pub message: String,
    pub sts_code: Option<String>,
    pub sts_request_id: Option<String>,
    /// OSS's own error code and request id, when an OSS call of the server failed.
    pub oss_code: Option<String>,
    pub oss_request_id: Option<String>,
    /// Challenge for 401 responses.
    pub www_authenticate: Option<String>,
    /// Seconds, for 429 responses and 503s caused by STS trouble.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            sts_code: None,
            sts_request_id: None,
            oss_code: None,
            oss_request_id: None,
            www_authenticate: None,
            retry_after: None,
        }
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }
}

impl From<StsError> for ApiError {
    fn from(e: StsError) -> Self {
        let (status, code, message) = match (&e, e.kind()) {
            (StsError::ShortLived { .. }, _) => (
                StatusCode::BAD_GATEWAY,
                "sts_short_lived",
                "STS issued a credential too short-lived to hand out; check the role's MaxSessionDuration and sts.duration_seconds",
            ),
            (StsError::Identity(_), _) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "identity_unavailable",
                "the server's own cloud identity is unavailable",
            ),
            (_, StsErrorKind::Denied) => (
                StatusCode::BAD_GATEWAY,
                "sts_denied",
                "STS refused to issue credentials for this grant (permission, role or key problem on the server side)",
            ),
            (_, StsErrorKind::InvalidRequest) => (
                StatusCode::BAD_GATEWAY,
                "sts_rejected_request",
                "STS rejected the request the server built for this grant (policy, duration or session name)",
            ),
            (_, StsErrorKind::Throttled) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "sts_throttled",
                "STS is throttling the server; retry shortly",
            ),
            (_, StsErrorKind::Unavailable) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "sts_unavailable",
                "STS is unavailable and no valid cached credential is left",
            ),
        };
        // STS trouble passes: say when to come back. The back-off knows how
        // long no call will be made; otherwise a second is a fair guess.
        let retry_after = e
            .is_transient()
            .then(|| e.retry_after().map_or(1, crate::sts::retry_after_secs));
        ApiError {
            status,
            code,
            message: message.into(),
            sts_code: e.sts_code().map(str::to_owned),
            sts_request_id: e.sts_request_id().map(str::to_owned),
            oss_code: None,
            oss_request_id: None,
            www_authenticate: None,
            retry_after,
        }
    }
}

/// A failed OSS call of the server (upload sessions): OSS's code and request id
/// are passed on; OSS's message is not (it may name internal detail).
impl From<OssCallError> for ApiError {
    fn from(e: OssCallError) -> Self {
        let (status, code, message) = match (&e, e.oss_code()) {
            (_, Some("NoSuchUpload")) => (
                StatusCode::NOT_FOUND,
                "unknown_upload",
                "OSS no longer knows this upload (completed, aborted or expired)",
            ),
            (_, Some("FileAlreadyExists")) => (
                StatusCode::CONFLICT,
                "object_exists",
                "the object already exists and is not overwritten",
            ),
            (OssCallError::Service { status: 403, .. }, _) => (
                StatusCode::BAD_GATEWAY,
                "oss_denied",
                "OSS refused the server's request (the grant's credential or policy; oss_code says which)",
            ),
            (OssCallError::Service { status, .. }, _) if *status < 500 => (
                StatusCode::BAD_GATEWAY,
                "oss_rejected_request",
                "OSS rejected the server's request (oss_code says why)",
            ),
            (OssCallError::Sign(_), _) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "the OSS request could not be signed",
            ),
            _ => (
                StatusCode::SERVICE_UNAVAILABLE,
                "oss_unavailable",
                "OSS is unavailable (5xx, timeout or unreachable after retries); retry shortly",
            ),
        };
        let mut api = ApiError::new(status, code, message);
        api.oss_code = e.oss_code().map(str::to_owned);
        api.oss_request_id = e.oss_request_id().map(str::to_owned);
        if code == "oss_unavailable" {
            api.retry_after = Some(1);
        }
        api
    }
}

/// The body of every error response.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub(crate) struct Body<'a> {
    /// Stable, machine-readable error code, e.g. `unknown_grant`, `unauthenticated`, `sts_unavailable`.
    #[schema(example = "sts_unavailable")]
    code: &'a str,
    /// For humans; no secrets, no internal hostnames.
    #[schema(example = "STS is unavailable and no valid cached credential is left")]
    message: &'a str,
    /// The request id, also in the `X-Request-Id` response header.
    request_id: &'a str,
    /// STS's own error code, when STS refused or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    sts_code: Option<&'a str>,
    /// STS's `RequestId`, when STS answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    sts_request_id: Option<&'a str>,
    /// OSS's own error code, when an OSS call of the server failed (upload sessions).
    #[serde(skip_serializing_if = "Option::is_none")]
    oss_code: Option<&'a str>,
    /// OSS's `RequestId`, when OSS answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    oss_request_id: Option<&'a str>,
    /// The HTTP status again (read by the OSS mobile SDKs' auth-server providers).
    #[serde(rename = "StatusCode")]
    #[schema(example = 503)]
    status_code: u16,
    /// `code` again (read by the OSS mobile SDKs).
    #[serde(rename = "ErrorCode")]
    error_code: &'a str,
    /// `message` again (read by the OSS mobile SDKs).
    #[serde(rename = "ErrorMessage")]
    error_message: &'a str,
}

impl ApiError {
    /// Renders the response. Handlers do not know the request id, so
    /// `into_response` leaves it empty and stores the error in the response
    /// extensions; the request-id middleware renders it again with the id.
    pub fn render(&self, request_id: &str) -> Response {
        let body = Body {
            code: self.code,
            message: &self.message,
            request_id,
            sts_code: self.sts_code.as_deref(),
            sts_request_id: self.sts_request_id.as_deref(),
            oss_code: self.oss_code.as_deref(),
            oss_request_id: self.oss_request_id.as_deref(),
            status_code: self.status.as_u16(),
            error_code: self.code,
            error_message: &self.message,
        };
        let mut resp = (self.status, Json(body)).into_response();
        let headers = resp.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(v) = self
            .www_authenticate
            .as_deref()
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            headers.insert(header::WWW_AUTHENTICATE, v);
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = self.render("");
        resp.extensions_mut().insert(self);
        resp
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn api(status: u16, code: &str) -> StsError {
        StsError::Api {
            status,
            code: code.into(),
            message: String::new(),
            request_id: Some("r-1".into()),
        }
    }

    #[test]
    fn oss_failures_name_the_oss_code_and_never_its_message() {
        let service = |status, code: &str| OssCallError::Service {
            status,
            code: code.into(),
            message: "internal detail".into(),
            request_id: Some("oss-r-1".into()),
        };
        let cases = [
            (service(404, "NoSuchUpload"), 404, "unknown_upload"),
            (service(409, "FileAlreadyExists"), 409, "object_exists"),
            (service(403, "AccessDenied"), 502, "oss_denied"),
            (service(400, "InvalidPart"), 502, "oss_rejected_request"),
            (service(503, "ServiceUnavailable"), 503, "oss_unavailable"),
            (
                OssCallError::Transport("timed out".into()),
                503,
                "oss_unavailable",
            ),
        ];
        for (e, status, code) in cases {
            let api = ApiError::from(e.clone());
            assert_eq!((api.status.as_u16(), api.code), (status, code), "{e:?}");
            assert_eq!(api.oss_code.as_deref(), e.oss_code());
            assert!(!api.message.contains("internal detail"));
        }
        let api = ApiError::from(service(403, "AccessDenied"));
        let resp = api.render("id");
        assert!(resp.headers().get(header::RETRY_AFTER).is_none());
        let api = ApiError::from(OssCallError::Transport("x".into()));
        assert_eq!(api.render("id").headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn sts_trouble_says_when_to_come_back_in_whole_seconds() {
        let backing_off = |ms, e| ApiError::from(StsError::backing_off(Duration::from_millis(ms), e));
        let e = backing_off(1200, api(500, "InternalError"));
        assert_eq!((e.status.as_u16(), e.code), (503, "sts_unavailable"));
        assert_eq!(e.retry_after, Some(2), "rounded up");
        assert_eq!(e.sts_code.as_deref(), Some("InternalError"));
        assert_eq!(e.sts_request_id.as_deref(), Some("r-1"));
        let e = backing_off(300, api(400, "Throttling.User"));
        assert_eq!((e.status.as_u16(), e.code), (503, "sts_throttled"));
        assert_eq!(e.retry_after, Some(1), "never 0");
        let e = ApiError::from(StsError::Transport("timed out".into()));
        assert_eq!((e.code, e.retry_after), ("sts_unavailable", Some(1)));
        let resp = backing_off(29_001, api(503, "ServiceUnavailable")).render("id");
        assert_eq!(resp.headers()[header::RETRY_AFTER], "30");
        // Permanent refusals have nothing to wait for.
        assert_eq!(ApiError::from(api(403, "NoPermission")).retry_after, None);
    }
}
