//! HTTP surface: the router, thin handlers and the request-id middleware.
//! Handlers extract, call `grants`, and format; no signing or policy logic here.

mod credentials;
mod health;
mod middleware;
mod upload;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::services::ServeDir;
use tower_http::timeout::TimeoutLayer;

use crate::error::ApiError;
use crate::server::AppState;

pub use middleware::REQUEST_ID_HEADER;

/// The whole application; shared by `main` and the tests.
pub fn app(state: Arc<AppState>) -> Router {
    let static_dir = state.config.server.static_dir.clone();
    let mut router = Router::new()
        .route(
            "/v1/grants/{grant}/credentials",
            get(credentials::grant_credentials),
        )
        .route(
            "/get_sts_token_for_oss_upload",
            get(credentials::legacy_credentials),
        )
        .route("/v1/grants/{grant}/post-policy", get(upload::post_policy))
        .route(
            "/get_post_signature_for_oss_upload",
            get(upload::legacy_post_policy),
        )
        .route(
            "/v1/grants/{grant}/presign",
            get(upload::presign_get).post(upload::presign_post),
        )
        .route("/get_presigned_url_for_oss_upload", get(upload::legacy_presign))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this path does not accept that method",
            )
        });
    router = match static_dir {
        Some(dir) => router.fallback_service(ServeDir::new(dir).fallback(axum::routing::any(not_found))),
        None => router.fallback(not_found),
    };
    router
        .layer(TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            state.config.server.request_timeout,
        ))
        .layer(RequestBodyLimitLayer::new(state.config.server.body_limit_bytes))
        .layer(axum::middleware::from_fn(middleware::request_context))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such route")
}
