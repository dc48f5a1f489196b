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

/// Ready when the server holds a currently valid identity (asked without I/O:
/// the identity refreshes itself in the background) and can get credentials:
/// STS answers a TCP connect, or a cached credential is still valid
/// (stale-if-error keeps serving through a short STS outage).
pub async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, Json<serde_json::Value>) {
    let status = state.issuer.identity.status();
    let cached = state.issuer.cache.has_servable();
    let sts = if cached {
        "cached credential valid"
    } else if sts_reachable(&state).await {
        "reachable"
    } else {
        "unreachable"
    };
    let ready = status.valid && sts != "unreachable";
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut identity = json!({ "ok": status.valid, "source": status.source });
    if let Some(w) = status.chain_winner {
        identity["chain_winner"] = json!(w);
    }
    if let Some(k) = &status.access_key_id {
        identity["access_key_id"] = json!(k);
    }
    if let Some(e) = &status.expiration {
        identity["expiration"] = json!(e);
    }
    if let Some(e) = &status.last_error {
        identity["error"] = json!(e);
    }
    (
        code,
        Json(json!({ "status": if ready { "ready" } else { "unready" }, "identity": identity, "sts": sts })),
    )
}

async fn sts_reachable(state: &AppState) -> bool {
    let Ok(url) = url::Url::parse(&state.config.sts.endpoint()) else {
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
