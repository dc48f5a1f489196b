//! Operations endpoints: `GET /metrics` (Prometheus text format) and, on the
//! admin listener only, `POST /admin/reload`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Extension, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::middleware::{REQUEST_ID_HEADER, RequestCtx, is_safe_id};
use crate::config::ApiKeyConfig;
use crate::error::ApiError;
use crate::reload::Live;
use crate::state::AppState;

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The Prometheus metrics in the text exposition format.
///
/// Served here only when no admin listener (`admin.listen`) is configured; otherwise on the
/// admin listener.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    params(("X-Request-Id" = Option<String>, Header, description = "The caller's request id")),
    responses(
        (status = 200, description = "Prometheus text format (version 0.0.4)", body = String,
            content_type = "text/plain; version=0.0.4; charset=utf-8"),
    ),
)]
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    render_metrics(&state)
}

fn render_metrics(state: &AppState) -> Response {
    let body = crate::prom::render(state.issuer.identity.status().remaining_seconds());
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(PROMETHEUS_TEXT)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}

/// The admin listener's application: `/metrics` and `POST /admin/reload`.
pub fn admin_app(live: Arc<Live>) -> Router {
    Router::new()
        .route("/metrics", get(admin_metrics))
        .route("/admin/reload", post(reload))
        .route("/admin/webhooks/pending", get(pending_webhooks))
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this path does not accept that method",
            )
        })
        .fallback(|| async { ApiError::not_found("not_found", "no such route") })
        .layer(axum::middleware::from_fn(admin_context))
        .with_state(live)
}

async fn admin_metrics(State(live): State<Arc<Live>>) -> Response {
    render_metrics(&live.state())
}

/// `POST /admin/reload`, with `Authorization: Bearer <admin token>`.
async fn reload(
    State(live): State<Arc<Live>>,
    Extension(ctx): Extension<RequestCtx>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = check_token(&live.state(), &headers) {
        return e.into_response();
    }
    match live.reload("admin").await {
        Ok(changes) => (
            StatusCode::OK,
            [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
            axum::Json(json!({ "status": "reloaded", "changes": changes, "request_id": &*ctx.request_id })),
        )
            .into_response(),
        Err(problems) => {
            let message = "the new configuration was not applied; the running one is kept";
            let body = json!({
                "code": "invalid_config",
                "message": message,
                "problems": problems,
                "request_id": &*ctx.request_id,
                "StatusCode": 422,
                "ErrorCode": "invalid_config",
                "ErrorMessage": message,
            });
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
                axum::Json(body),
            )
                .into_response()
        }
    }
}

/// `GET /admin/webhooks/pending` (admin token): the upload events the
/// application has not taken yet, oldest first, each with its exact body, so
/// an application can reconcile without waiting for the next redelivery.
async fn pending_webhooks(State(live): State<Arc<Live>>, headers: HeaderMap) -> Response {
    let state = live.state();
    if let Err(e) = check_token(&state, &headers) {
        return e.into_response();
    }
    let pending = match &state.webhooks {
        Some(w) => w.pending().await,
        None => Vec::new(),
    };
    (
        StatusCode::OK,
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        axum::Json(json!({ "pending": pending })),
    )
        .into_response()
}

/// 403 when no admin token is configured (no token could help, so none is
/// asked for), else 401 without a bearer token and 403 with a wrong one. The
/// digest is compared like an API key's (constant time).
fn check_token(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(digest) = &state.config.admin.token_sha256 else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_token_not_configured",
            "admin.token_sha256 is not set: reloading over HTTP is disabled (SIGHUP still works)",
        ));
    };
    if headers.get_all(header::AUTHORIZATION).iter().nth(1).is_some() {
        return Err(ApiError::bad_request(
            "ambiguous_credentials",
            "send exactly one Authorization header",
        ));
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::auth::split_scheme)
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token)
        .filter(|t| !t.is_empty());
    let Some(token) = presented else {
        let mut e = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "send the admin token as Authorization: Bearer <token>",
        );
        e.www_authenticate = Some("Bearer realm=\"ossvend-admin\"".into());
        return Err(e);
    };
    let keys = crate::auth::api_key::ApiKeys::new(&[ApiKeyConfig {
        id: "admin".into(),
        sha256: digest.clone(),
        grants: Vec::new(),
    }])
    .map_err(|_| ApiError::internal("admin.token_sha256 is not a SHA-256 digest"))?;
    keys.verify(token).map(|_| ()).map_err(|_| {
        tracing::warn!("admin reload refused: wrong admin token");
        ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid_admin_token",
            "the admin token is not valid",
        )
    })
}

/// Request id and JSON error bodies, as on the main listener.
async fn admin_context(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_safe_id(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.extensions_mut().insert(RequestCtx {
        request_id: id.as_str().into(),
        client_ip: None,
    });
    let span = tracing::error_span!("admin", request_id = %id);
    let mut resp = tracing::Instrument::instrument(next.run(req), span).await;
    if let Some(err) = resp.extensions_mut().remove::<ApiError>() {
        resp = err.render(&id);
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    resp
}
