//! `POST /v1/tickets {"grant": …}`: a short-lived ticket for clients that
//! cannot send headers to their auth server (the OSS mobile SDKs' providers
//! take a plain URL): the app backend, authenticated, mints one and hands the
//! app `…/credentials?ticket=…`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;

use super::RequestCtx;
use crate::audit::Record;
use crate::auth::Presented;
use crate::config::AuthMethod;
use crate::error::ApiError;
use crate::server::AppState;
use crate::sts::format_expiration;

#[derive(Deserialize)]
pub struct TicketRequest {
    pub grant: String,
}

pub async fn mint(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<RequestCtx>,
    headers: HeaderMap,
    body: Option<Json<TicketRequest>>,
) -> Result<Response, ApiError> {
    let Some(Json(req)) = body else {
        return Err(ApiError::bad_request(
            "bad_request",
            "send a JSON body {\"grant\": \"<name>\"}",
        ));
    };
    let grant = state.grants.get(&req.grant)?;
    if !grant.auth.contains(&AuthMethod::Ticket) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "auth_method_not_allowed",
            format!("grant {:?} does not accept tickets", grant.name),
        ));
    }
    // Only a caller who proved who they are may mint: never anonymous, never a ticket.
    let minters: Vec<AuthMethod> = grant
        .auth
        .iter()
        .copied()
        .filter(|m| matches!(m, AuthMethod::ApiKey | AuthMethod::Jwt))
        .collect();
    let now = Utc::now();
    state.limits.check_ip(&grant, ctx.client_ip)?;
    let presented = Presented {
        ticket: None,
        ..Presented::from_request(&headers, None)
    };
    let principal = state
        .auth
        .authenticate(&grant.name, &minters, &presented, now)
        .await?;
    state.limits.check_subject(&grant, &principal)?;
    // The ticket must be usable: resolve the grant for this caller now.
    let resolved = grant.resolve(&principal, &state.auth.placeholders, now)?;
    let subject = principal.subject.as_deref().unwrap_or_default();
    let (ticket, expires) = state
        .auth
        .tickets
        .mint(subject, &grant.name, &principal.claims, now);
    let expires_at = format_expiration(expires);
    state.audit.record(&Record {
        time: format_expiration(now),
        request_id: &ctx.request_id,
        client_ip: &ctx.ip_string(),
        subject,
        auth: principal.method.as_str(),
        grant: &grant.name,
        kind: "ticket",
        policy_sha256: &resolved.policy_sha256,
        session_name: &resolved.request.session_name,
        access_key_id: "-",
        expiration: &expires_at,
        cache: None,
        key: Some(&resolved.prefix),
    });
    let body = serde_json::json!({
        "ticket": ticket,
        "grant": grant.name,
        "expires_at": expires_at,
        "credentials_url": format!("/v1/grants/{}/credentials?ticket={ticket}", grant.name),
    });
    let mut resp = (StatusCode::CREATED, Json(body)).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}
