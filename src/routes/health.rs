//! Liveness and readiness.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;

use crate::error::ApiError;
use crate::state::AppState;

/// Liveness: always `{"status": "ok"}`.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Health {
    #[schema(example = "ok")]
    status: &'static str,
}

/// Readiness: whether the server can vend credentials now.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Readiness {
    /// `ready` or `unready`.
    #[schema(example = "ready")]
    status: &'static str,
    identity: IdentityReport,
    /// `cached credential valid`, `reachable` or `unreachable`.
    #[schema(example = "reachable")]
    sts: &'static str,
    sts_health: StsHealthReport,
    /// Fleet mode only: whether the state shared with the other replicas (Redis) answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    shared: Option<SharedReport>,
}

/// Fleet mode's backend. A replica on its fallback stays ready.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct SharedReport {
    /// `connected`, or `fallback` (Redis does not answer: this replica runs on
    /// its own cache, single flight, rate limits and share of the STS budget,
    /// or refuses new credentials with `on_unavailable = "refuse"`).
    #[schema(example = "connected")]
    status: &'static str,
    /// `local` or `refuse`.
    #[schema(example = "local")]
    on_unavailable: &'static str,
}

/// Whether the credential cache's calls to STS succeed. A failing STS does
/// not make the server unready while cached credentials can still be served.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct StsHealthReport {
    /// `ok`, or `failing` (the last AssumeRole failed: 5xx, timeout, throttling).
    #[schema(example = "failing")]
    status: &'static str,
    /// While failing: since when, `YYYY-MM-DDThh:mm:ssZ`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "2025-01-01T12:00:00Z")]
    since: Option<String>,
    /// While failing: the error code callers get, `sts_unavailable` or `sts_throttled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "sts_unavailable")]
    last_error: Option<&'static str>,
    /// While failing: STS's own error code, when STS answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "InternalError")]
    sts_code: Option<String>,
}

impl StsHealthReport {
    fn from(h: crate::sts::StsHealth) -> Self {
        let error = h.last_error.filter(|_| h.failing_since.is_some());
        StsHealthReport {
            status: if h.failing_since.is_some() {
                "failing"
            } else {
                "ok"
            },
            since: h.failing_since.map(crate::sign::format_iso8601_extended),
            last_error: error.as_ref().map(|e| ApiError::from(e.clone()).code),
            sts_code: error.as_ref().and_then(|e| e.sts_code()).map(str::to_owned),
        }
    }
}

/// The server's own cloud identity (never a secret).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct IdentityReport {
    /// A credential is held and still valid.
    ok: bool,
    /// The configured `identity.source` (`chain` for the chain).
    #[schema(example = "chain")]
    source: &'static str,
    /// For the chain: the member that yielded credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    chain_winner: Option<&'static str>,
    /// Prefix of the held credential's AccessKey id.
    #[serde(skip_serializing_if = "Option::is_none")]
    access_key_id: Option<String>,
    /// Expiry of a temporary identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    expiration: Option<String>,
    /// The last failure, while it is not followed by a success.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Liveness: the process is up and serving HTTP.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    params(("X-Request-Id" = Option<String>, Header, description = "The caller's request id")),
    responses((status = 200, description = "The process is up", body = Health)),
)]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Ready when the server holds a currently valid identity (asked without I/O:
/// the identity refreshes itself in the background) and can get credentials:
/// STS answers a TCP connect, or a cached credential is still valid
/// (stale-if-error keeps serving through a short STS outage, so the fleet is
/// not drained by it). `sts_health` says whether STS calls are failing.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    summary = "Readiness: an identity is held and STS answers or a cached credential is valid; sts_health tells an STS outage",
    params(("X-Request-Id" = Option<String>, Header, description = "The caller's request id")),
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready (no valid identity, or STS unreachable with nothing cached): the same readiness report, not an error body", body = Readiness),
    ),
)]
pub async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Readiness>) {
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
    let identity = IdentityReport {
        ok: status.valid,
        source: status.source,
        chain_winner: status.chain_winner,
        access_key_id: status.access_key_id,
        expiration: status.expiration,
        error: status.last_error,
    };
    (
        code,
        Json(Readiness {
            status: if ready { "ready" } else { "unready" },
            identity,
            sts,
            sts_health: StsHealthReport::from(state.issuer.cache.sts_health()),
            shared: state.fleet.as_ref().map(|f| SharedReport {
                status: if f.available() { "connected" } else { "fallback" },
                on_unavailable: match f.on_unavailable {
                    crate::config::OnUnavailable::Local => "local",
                    crate::config::OnUnavailable::Refuse => "refuse",
                },
            }),
        }),
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
