//! `GET /v1/grants/{grant}/credentials` and the seeds' `GET /get_sts_token_for_oss_upload`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::grants::Grant;
use crate::server::AppState;
use crate::sts::{Lookup, format_expiration};

/// The superset body: ali-oss `refreshSTSToken`, the OSS Android/iOS
/// auth-server providers and the credentials-URI providers all accept it as is.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CredentialsBody<'a> {
    pub status_code: u16,
    pub code: &'static str,
    pub access_key_id: &'a str,
    pub access_key_secret: &'a str,
    pub security_token: &'a str,
    pub expiration: String,
    pub refresh_after: String,
    pub bucket: &'a str,
    /// ali-oss option form (`oss-cn-hangzhou`); signatures use the bare id.
    pub region: String,
    pub endpoint: &'a str,
    pub prefix: &'a str,
}

pub async fn grant_credentials(
    State(state): State<Arc<AppState>>,
    Path(grant): Path<String>,
) -> Result<Response, ApiError> {
    let grant = state.grants.get(&grant)?;
    issue(&state, &grant).await
}

pub async fn legacy_credentials(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let grant = state.grants.default_grant()?;
    issue(&state, &grant).await
}

async fn issue(state: &AppState, grant: &Grant) -> Result<Response, ApiError> {
    let principal = Principal::anonymous();
    let lookup = state.issuer.credentials(grant, &principal).await?;
    Ok(render(grant, &lookup))
}

fn render(grant: &Grant, lookup: &Lookup) -> Response {
    let c = &lookup.credentials;
    let body = CredentialsBody {
        status_code: 200,
        code: "Success",
        access_key_id: &c.access_key_id,
        access_key_secret: c.secret(),
        security_token: c.token(),
        expiration: format_expiration(c.expiration),
        refresh_after: format_expiration(lookup.refresh_after),
        bucket: &grant.bucket,
        region: format!("oss-{}", grant.region),
        endpoint: &grant.endpoint,
        prefix: &grant.prefix,
    };
    let mut resp = Json(body).into_response();
    // Secrets must not land in any shared or browser cache.
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}
