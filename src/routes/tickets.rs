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
use serde::{Deserialize, Serialize};

use super::RequestCtx;
use super::authorized::{Authorized, Issued};
use super::openapi::AuthHeaders;
use crate::auth::Presented;
use crate::config::AuthMethod;
use crate::error::ApiError;
use crate::sign::format_iso8601_extended;
use crate::state::AppState;

/// Which grant the ticket is for.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct TicketRequest {
    /// A grant that accepts `ticket` and the caller's own method (`api_key` or `jwt`).
    #[schema(example = "user-uploads")]
    pub grant: String,
}

/// A minted ticket.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Ticket)]
pub(crate) struct TicketBody<'a> {
    /// Opaque, HMAC-signed; bound to the subject, the grant and the expiry.
    ticket: &'a str,
    grant: &'a str,
    /// Expiry, `YYYY-MM-DDThh:mm:ssZ` (`auth.tickets.ttl` from now).
    expires_at: &'a str,
    /// The credentials URL with the ticket, relative to this server.
    #[schema(example = "/v1/grants/user-uploads/credentials?ticket=...")]
    credentials_url: String,
}

/// Mints a short-lived ticket for a grant.
///
/// For clients that can only GET a URL (the OSS mobile SDKs' auth-server providers): the app's
/// backend, authenticated with an API key or a JWT (never anonymously, never with a ticket), mints a
/// ticket and hands the app `credentials_url`.
#[utoipa::path(
    post,
    path = "/v1/tickets",
    tag = "auth",
    params(
        AuthHeaders,
    ),
    request_body(content = TicketRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "A ticket for the grant, bound to the caller", body = TicketBody, headers(("X-Request-Id" = String, description = "The request id"), ("Cache-Control" = String, description = "`no-store`"))),
        (status = 400, response = super::responses::BadTicketRequest),
        (status = 401, response = super::responses::Unauthenticated),
        (status = 403, response = super::responses::TicketForbidden),
        (status = 404, response = super::responses::UnknownGrant),
        (status = 413, response = super::responses::PayloadTooLarge),
        (status = 429, response = super::responses::RateLimited),
        (status = 503, response = super::responses::AuthUnavailable),
        (status = 504, response = super::responses::Timeout),
    ),
    security(("api_key" = []), ("jwt" = [])),
)]
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
    let presented = Presented {
        ticket: None,
        ..Presented::from_request(&headers, None)
    };
    // Resolving the grant for this caller too proves the ticket will be usable.
    let caller = Authorized::check(&state, grant, &minters, &presented, ctx).await?;
    let (grant, principal) = (&caller.grant, &caller.principal);
    let subject = principal.subject.as_deref().unwrap_or_default();
    let (ticket, expires) = state.auth.tickets.mint(
        subject,
        principal.namespace,
        &grant.name,
        &principal.claims,
        Utc::now(),
    );
    caller.audit(
        &state,
        Issued {
            kind: "ticket",
            access_key_id: None,
            expires_at: expires,
            cache: None,
            key: &caller.resolved.prefix,
        },
    );
    let expires_at = format_iso8601_extended(expires);
    let body = TicketBody {
        ticket: &ticket,
        grant: &grant.name,
        expires_at: &expires_at,
        credentials_url: format!("/v1/grants/{}/credentials?ticket={ticket}", grant.name),
    };
    let mut resp = (StatusCode::CREATED, Json(body)).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}
