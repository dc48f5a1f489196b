//! What every grant route does first, as extractors: which grant the path names
//! ([`RouteGrant`]), and who is calling it, within their rate limits, with the
//! grant resolved for them ([`Authorized`]); and the one place an issuance's
//! audit record is built ([`Authorized::audit`]).

use std::sync::Arc;

use axum::extract::rejection::RawPathParamsRejection;
use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};

use super::RequestCtx;
use crate::auth::{Presented, Principal};
use crate::config::AuthMethod;
use crate::error::ApiError;
use crate::grants::{Grant, Resolved};
use crate::state::AppState;

/// The grant a route serves: `{grant}` from the path, or `server.default_grant`
/// on the seeds' legacy paths (404 `unknown_grant` / `no_default_grant`).
/// Looked up once per request: later extractors get the same value.
#[derive(Clone)]
pub(crate) struct RouteGrant(pub Arc<Grant>);

impl FromRequestParts<Arc<AppState>> for RouteGrant {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Response> {
        if let Some(found) = parts.extensions.get::<RouteGrant>() {
            return Ok(found.clone());
        }
        let name = match RawPathParams::from_request_parts(parts, state).await {
            Ok(params) => params
                .iter()
                .find(|(k, _)| *k == "grant")
                .map(|(_, v)| v.to_owned()),
            Err(RawPathParamsRejection::MissingPathParams(_)) => None,
            Err(e) => return Err(e.into_response()),
        };
        let grant = match name {
            Some(name) => state.grants.get(&name),
            None => state.grants.default_grant(),
        }
        .map_err(IntoResponse::into_response)?;
        let found = RouteGrant(grant);
        parts.extensions.insert(found.clone());
        Ok(found)
    }
}

/// A caller allowed to use the route's grant: authenticated by one of the
/// grant's methods, within its rate limits, with the grant resolved for them.
pub(crate) struct Authorized {
    pub grant: Arc<Grant>,
    pub principal: Principal,
    pub resolved: Arc<Resolved>,
    pub ctx: RequestCtx,
}

impl FromRequestParts<Arc<AppState>> for Authorized {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Response> {
        let RouteGrant(grant) = RouteGrant::from_request_parts(parts, state).await?;
        let ctx = request_ctx(parts)?;
        let presented = Presented::from_request(&parts.headers, parts.uri.query());
        let methods = grant.auth.clone();
        Authorized::check(state, grant, &methods, &presented, ctx)
            .await
            .map_err(IntoResponse::into_response)
    }
}

fn request_ctx(parts: &Parts) -> Result<RequestCtx, Response> {
    parts
        .extensions
        .get::<RequestCtx>()
        .cloned()
        .ok_or_else(|| ApiError::internal("the request context middleware did not run").into_response())
}

/// What was issued, for the audit record.
pub(crate) struct Issued<'a> {
    /// `credentials`, `post-policy`, `presign`, `ticket` or `upload-session` (opened).
    pub kind: &'static str,
    /// The AccessKey id behind it (recorded as its prefix), `None` for a ticket.
    pub access_key_id: Option<&'a str>,
    pub expires_at: DateTime<Utc>,
    /// The cache outcome, for credentials.
    pub cache: Option<&'static str>,
    /// The object key or prefix it is bound to.
    pub key: &'a str,
}

impl Authorized {
    /// In order: the per-IP limit, authentication by one of `methods`, the
    /// per-subject limit, the grant resolved for the caller.
    pub async fn check(
        state: &AppState,
        grant: Arc<Grant>,
        methods: &[AuthMethod],
        presented: &Presented<'_>,
        ctx: RequestCtx,
    ) -> Result<Self, ApiError> {
        let now = Utc::now();
        state.limits.check_ip(&grant, ctx.client_ip).await?;
        let principal = state
            .auth
            .authenticate(&grant.name, methods, presented, now)
            .await?;
        state.limits.check_subject(&grant, &principal).await?;
        let resolved = grant.resolve(&principal, &state.auth.placeholders, now)?;
        Ok(Authorized {
            grant,
            principal,
            resolved,
            ctx,
        })
    }

    fn target<'a>(
        &'a self,
        placeholders: &'a crate::policy::template::Placeholders,
        callback_key: Option<&'a [u8]>,
    ) -> crate::grants::upload::Target<'a> {
        crate::grants::upload::Target {
            prefix: &self.resolved.prefix,
            principal: &self.principal,
            placeholders,
            request_id: &self.ctx.request_id,
            callback_key,
        }
    }

    /// [`Self::target`] with this state's placeholders and the key of ossvend's
    /// callback variables (`[webhooks]`), as every issuing route needs it.
    pub fn issuance_target<'a>(&'a self, state: &'a AppState) -> crate::grants::upload::Target<'a> {
        self.target(
            &state.auth.placeholders,
            state.webhooks.as_deref().map(|w| w.vars_key()),
        )
    }

    /// The audit record of an issuance to this caller.
    pub fn audit(&self, state: &AppState, issued: Issued<'_>) {
        let access_key_id = issued
            .access_key_id
            .map_or_else(|| "-".to_owned(), crate::identity::key_id_prefix);
        state.audit.record(&crate::audit::Record {
            time: Utc::now(),
            request_id: &self.ctx.request_id,
            client_ip: &self.ctx.ip_string(),
            subject: self.principal.display(),
            auth: self.principal.method.as_str(),
            grant: &self.grant.name,
            kind: issued.kind,
            policy_sha256: &self.resolved.policy_sha256,
            session_name: &self.resolved.request.session_name,
            access_key_id: &access_key_id,
            expiration: &crate::sign::format_iso8601_extended(issued.expires_at),
            cache: issued.cache,
            key: Some(issued.key),
        });
    }
}

/// A body `T` and an [`Authorized`] caller, in that order: a body that cannot
/// be read is refused before the caller is authorized, as when the handler
/// took the body itself and authorized afterwards.
pub(crate) struct WithBody<T>(pub T, pub Authorized);

impl<T> FromRequest<Arc<AppState>> for WithBody<T>
where
    T: FromRequest<Arc<AppState>> + Send,
    T::Rejection: IntoResponse,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let t = T::from_request(Request::from_parts(parts.clone(), body), state)
            .await
            .map_err(IntoResponse::into_response)?;
        let caller = Authorized::from_request_parts(&mut parts, state).await?;
        Ok(WithBody(t, caller))
    }
}
