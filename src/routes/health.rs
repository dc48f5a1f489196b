//! Liveness and readiness.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::json;

use crate::server::AppState;

/// The process is up and serving HTTP.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when the server has an identity and can get credentials: STS answers
/// a TCP connect, or a cached credential is still valid (stale-if-error keeps
/// serving through a short STS outage).
pub async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, Json<serde_json::Value>) {
    let identity = match state.issuer.identity.credentials().await {
        Ok(_) => Ok(state.issuer.identity.source_name()),
        Err(e) => Err(e.to_string()),
    };
    let cached = state.issuer.cache.has_servable();
    let sts = if cached {
        "cached credential valid"
    } else if sts_reachable(&state).await {
        "reachable"
    } else {
        "unreachable"
    };
    let ready = identity.is_ok() && sts != "unreachable";
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let identity = match identity {
        Ok(source) => json!({ "ok": true, "source": source }),
        Err(e) => json!({ "ok": false, "error": e }),
    };
    (
        status,
        Json(json!({ "status": if ready { "ready" } else { "unready" }, "identity": identity, "sts": sts })),
    )
}

async fn sts_reachable(state: &AppState) -> bool {
    let Ok(url) = url::Url::parse(&state.config.sts.endpoint) else {
        return false;
    };
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let connect = tokio::net::TcpStream::connect((host, port));
    matches!(
        tokio::time::timeout(Duration::from_secs(2), connect).await,
        Ok(Ok(_))
    )
}
