//! `source = "ecs_ram_role"`: the RAM role attached to the ECS instance, from
//! the instance metadata service (docs/signing.md §4), as alibabacloud-credentials 1.0.12
//! fetches it (`tests/vectors/cred_ecs_metadata.json`):
//!
//! 1. `PUT /latest/api/token` with `X-aliyun-ecs-metadata-token-ttl-seconds: 21600`
//!    (hardened mode) — a fresh token before each GET, as the SDK does;
//! 2. unless a role name is configured (or `ALIBABA_CLOUD_ECS_METADATA`):
//!    `GET /latest/meta-data/ram/security-credentials/` → the role name;
//! 3. `GET /latest/meta-data/ram/security-credentials/<role>` → JSON with
//!    `Code: "Success"` and a strict `Expiration`.
//!
//! Each GET carries `X-aliyun-ecs-metadata-token`. With `imds_v1_fallback =
//! false` (default) a failed token request fails the refresh; with `true` the
//! reads go without a token, and a credential read that failed with a token is
//! tried once more without one (what the SDK does unless IMDSv1 is disabled).

use std::collections::BTreeMap;
use std::time::Duration;

use tracing::warn;

use super::{Credentials, Fetch, IdentityError, env_var, parse_credentials_json, transport_error};
use crate::config::IdentityConfig;

pub const SOURCE: &str = "ecs_ram_role";

pub const TOKEN_PATH: &str = "/latest/api/token";
pub const ROLES_PATH: &str = "/latest/meta-data/ram/security-credentials/";
pub const TOKEN_TTL_HEADER: &str = "X-aliyun-ecs-metadata-token-ttl-seconds";
pub const TOKEN_HEADER: &str = "X-aliyun-ecs-metadata-token";
/// Six hours, the SDKs' value.
pub const TOKEN_TTL_SECONDS: &str = "21600";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const TOTAL_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_BODY: usize = 64 * 1024;
const MAX_TOKEN: usize = 4096;

/// Where and how to read the metadata service.
#[derive(Debug, Clone)]
pub struct EcsSettings {
    /// `http://100.100.100.200` on ECS; tests point it at loopback.
    pub endpoint: String,
    /// `None`: discovered from the metadata service.
    pub role_name: Option<String>,
    pub imds_v1_fallback: bool,
}

pub struct EcsSource {
    http: reqwest::Client,
    base: url::Url,
    role_name: Option<String>,
    fallback: bool,
}

/// RAM role names: letters, digits, `.`, `-`, `_` (and `@`), at most 64. Anything
/// else could change the path of the metadata request.
pub fn check_role_name(name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a RAM role name (1-64 letters, digits and ._-@)"
        ))
    }
}

/// The metadata endpoint must be an http(s) URL with a host (plain http is the norm here).
pub fn check_metadata_endpoint(s: &str) -> Result<url::Url, String> {
    let u = url::Url::parse(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
        return Err(format!("{s:?} must be an http:// URL with a host"));
    }
    Ok(u)
}

impl EcsSource {
    pub fn new(settings: EcsSettings) -> Result<Self, IdentityError> {
        let base = check_metadata_endpoint(&settings.endpoint)
            .map_err(|m| IdentityError::config(SOURCE, format!("identity.metadata_endpoint: {m}")))?;
        if let Some(r) = &settings.role_name {
            check_role_name(r).map_err(|m| IdentityError::config(SOURCE, format!("role name: {m}")))?;
        }
        let http = super::local_http_client(CONNECT_TIMEOUT, TOTAL_TIMEOUT)
            .map_err(|m| IdentityError::config(SOURCE, m))?;
        Ok(EcsSource {
            http,
            base,
            role_name: settings.role_name,
            fallback: settings.imds_v1_fallback,
        })
    }

    /// `role_name`, else env `ALIBABA_CLOUD_ECS_METADATA`, else discovered.
    pub fn settings(cfg: &IdentityConfig, env: &BTreeMap<String, String>) -> EcsSettings {
        EcsSettings {
            endpoint: cfg.metadata_endpoint().to_string(),
            role_name: cfg
                .role_name
                .clone()
                .filter(|r| !r.is_empty())
                .or_else(|| env_var(env, "ALIBABA_CLOUD_ECS_METADATA").map(str::to_string)),
            imds_v1_fallback: cfg.imds_v1_fallback,
        }
    }

    pub fn from_config(cfg: &IdentityConfig, env: &BTreeMap<String, String>) -> Result<Self, IdentityError> {
        Self::new(Self::settings(cfg, env))
    }

    fn url(&self, path: &str) -> url::Url {
        let mut u = self.base.clone();
        u.set_path(path);
        u.set_query(None);
        u
    }

    /// A metadata token; `None` when the token request failed and the fallback is on.
    async fn token(&self) -> Result<Option<String>, IdentityError> {
        let attempt = async {
            let resp = self
                .http
                .put(self.url(TOKEN_PATH))
                .header(TOKEN_TTL_HEADER, TOKEN_TTL_SECONDS)
                .send()
                .await
                .map_err(|e| transport_error(SOURCE, "metadata token request", &e))?;
            let status = resp.status().as_u16();
            let body = crate::sts::client::read_capped(resp, MAX_TOKEN)
                .await
                .map_err(|m| IdentityError::transport(SOURCE, format!("metadata token: {m}")))?;
            if status != 200 {
                return Err(IdentityError::rejected(
                    SOURCE,
                    format!("the metadata token request answered HTTP {status}"),
                ));
            }
            let token = String::from_utf8(body)
                .ok()
                .filter(|t| !t.is_empty() && reqwest::header::HeaderValue::from_str(t).is_ok())
                .ok_or_else(|| {
                    IdentityError::rejected(SOURCE, "the metadata token is not a usable header value")
                })?;
            Ok(token)
        };
        match attempt.await {
            Ok(t) => Ok(Some(t)),
            Err(e) if self.fallback => {
                warn!(error = %e, "no metadata token; reading without one (imds_v1_fallback = true)");
                Ok(None)
            }
            Err(e) => Err(IdentityError::new(
                SOURCE,
                e.kind,
                format!("{} (hardened mode; imds_v1_fallback = false)", e.message),
            )),
        }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Result<(u16, Vec<u8>), IdentityError> {
        let mut req = self.http.get(self.url(path));
        if let Some(t) = token {
            req = req.header(TOKEN_HEADER, t);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| transport_error(SOURCE, "metadata request", &e))?;
        let status = resp.status().as_u16();
        let body = crate::sts::client::read_capped(resp, MAX_BODY)
            .await
            .map_err(|m| IdentityError::transport(SOURCE, format!("metadata response: {m}")))?;
        Ok((status, body))
    }

    async fn discover_role(&self) -> Result<String, IdentityError> {
        let token = self.token().await?;
        let (status, body) = self.get(ROLES_PATH, token.as_deref()).await?;
        if status == 404 {
            return Err(IdentityError::rejected(
                SOURCE,
                "no RAM role is attached to this instance",
            ));
        }
        if status != 200 {
            return Err(IdentityError::rejected(
                SOURCE,
                format!("listing the instance's RAM role answered HTTP {status}"),
            ));
        }
        let text = String::from_utf8_lossy(&body);
        let role = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
        if role.is_empty() {
            return Err(IdentityError::rejected(
                SOURCE,
                "no RAM role is attached to this instance",
            ));
        }
        check_role_name(role)
            .map_err(|m| IdentityError::rejected(SOURCE, format!("the metadata service named {m}")))?;
        Ok(role.to_string())
    }

    async fn read_credentials(&self, role: &str, token: Option<&str>) -> Result<Credentials, IdentityError> {
        let (status, body) = self.get(&format!("{ROLES_PATH}{role}"), token).await?;
        if status != 200 {
            return Err(IdentityError::rejected(
                SOURCE,
                format!("reading the credentials of role {role:?} answered HTTP {status}"),
            ));
        }
        parse_credentials_json(SOURCE, &body)
    }
}

#[async_trait::async_trait]
impl Fetch for EcsSource {
    async fn fetch(&self) -> Result<Credentials, IdentityError> {
        let role = match &self.role_name {
            Some(r) => r.clone(),
            None => self.discover_role().await?,
        };
        let token = self.token().await?;
        match self.read_credentials(&role, token.as_deref()).await {
            Err(e) if token.is_some() && self.fallback => {
                warn!(error = %e, "reading the role credentials with a metadata token failed; trying once without (imds_v1_fallback = true)");
                self.read_credentials(&role, None).await
            }
            other => other,
        }
    }
    fn source_name(&self) -> &'static str {
        SOURCE
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::identity::ErrorKind;
    use crate::identity::testutil::{Recorded, TestServer};

    const CREDS: &str = r#"{"AccessKeyId":"STS.NEcs1","AccessKeySecret":"ecs-secret","Expiration":"2099-01-01T00:00:00Z","SecurityToken":"ecs-token","LastUpdated":"2098-12-31T18:00:00Z","Code":"Success"}"#;

    /// A metadata service double: issues numbered tokens, checks them, and
    /// serves `role` and `creds` (or fails as told).
    async fn imds(token_status: u16, creds: &'static str) -> (TestServer, Arc<AtomicUsize>) {
        let n = Arc::new(AtomicUsize::new(0));
        let n2 = n.clone();
        let server = TestServer::start(move |r: &Recorded| match (r.method.as_str(), r.path.as_str()) {
            ("PUT", TOKEN_PATH) => {
                if r.header(TOKEN_TTL_HEADER) != Some("21600") {
                    return (400, "ttl".into());
                }
                let i = n2.fetch_add(1, Ordering::SeqCst);
                (token_status, format!("tok-{i}"))
            }
            ("GET", p) => {
                let has_valid_token = r.header(TOKEN_HEADER).is_some_and(|t| t.starts_with("tok-"));
                if token_status == 200 && !has_valid_token {
                    return (401, "token required".into());
                }
                match p {
                    ROLES_PATH => (200, "EcsRamRoleOss\n".into()),
                    "/latest/meta-data/ram/security-credentials/EcsRamRoleOss" => (200, creds.into()),
                    _ => (404, "not found".into()),
                }
            }
            _ => (405, String::new()),
        })
        .await;
        (server, n)
    }

    fn settings(url: &str, role: Option<&str>, fallback: bool) -> EcsSettings {
        EcsSettings {
            endpoint: url.into(),
            role_name: role.map(str::to_string),
            imds_v1_fallback: fallback,
        }
    }

    #[tokio::test]
    async fn hardened_mode_discovers_the_role_with_a_fresh_token_per_read() {
        let (server, _) = imds(200, CREDS).await;
        let c = EcsSource::new(settings(&server.url, None, false))
            .unwrap()
            .fetch()
            .await
            .unwrap();
        assert_eq!(c.access_key_id, "STS.NEcs1");
        assert_eq!(c.secret(), "ecs-secret");
        assert_eq!(c.token(), Some("ecs-token"));
        assert_eq!(c.expiration.unwrap().timestamp(), 4_070_908_800);
        let reqs = server.requests();
        let seen: Vec<(String, String, Option<String>)> = reqs
            .iter()
            .map(|r| {
                (
                    r.method.clone(),
                    r.path.clone(),
                    r.header(TOKEN_HEADER).map(str::to_string),
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                ("PUT".into(), TOKEN_PATH.into(), None),
                ("GET".into(), ROLES_PATH.into(), Some("tok-0".into())),
                ("PUT".into(), TOKEN_PATH.into(), None),
                (
                    "GET".into(),
                    "/latest/meta-data/ram/security-credentials/EcsRamRoleOss".into(),
                    Some("tok-1".into())
                ),
            ]
        );
    }

    #[tokio::test]
    async fn a_token_failure_is_fatal_unless_the_v1_fallback_is_on() {
        let (server, _) = imds(403, CREDS).await;
        let e = EcsSource::new(settings(&server.url, Some("EcsRamRoleOss"), false))
            .unwrap()
            .fetch()
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Rejected);
        assert!(e.message.contains("hardened"));
        assert_eq!(server.requests().len(), 1);
        let c = EcsSource::new(settings(&server.url, Some("EcsRamRoleOss"), true))
            .unwrap()
            .fetch()
            .await
            .unwrap();
        assert_eq!(c.access_key_id, "STS.NEcs1");
        assert!(server.requests().last().unwrap().header(TOKEN_HEADER).is_none());
    }

    #[tokio::test]
    async fn metadata_service_down_is_a_transport_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let e = EcsSource::new(settings(&url, Some("r"), false))
            .unwrap()
            .fetch()
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Transport);
    }

    #[tokio::test]
    async fn code_other_than_success_and_loose_expirations_are_rejected() {
        for body in [
            r#"{"AccessKeyId":"STS.a","AccessKeySecret":"s","Expiration":"2099-01-01T00:00:00Z","SecurityToken":"t","Code":"Failed"}"#,
            r#"{"AccessKeyId":"STS.a","AccessKeySecret":"s","Expiration":"2099-01-01T00:00:00.000Z","SecurityToken":"t","Code":"Success"}"#,
            r#"{"AccessKeyId":"STS.a","Expiration":"2099-01-01T00:00:00Z","SecurityToken":"t","Code":"Success"}"#,
            "not json",
            "",
        ] {
            let body: &'static str = Box::leak(body.to_string().into_boxed_str());
            let (server, _) = imds(200, body).await;
            let e = EcsSource::new(settings(&server.url, Some("EcsRamRoleOss"), false))
                .unwrap()
                .fetch()
                .await
                .unwrap_err();
            assert_eq!(e.kind, ErrorKind::Rejected, "{body}");
            assert!(!e.message.contains("\"s\""));
        }
    }

    #[tokio::test]
    async fn huge_bodies_are_refused() {
        let big: &'static str = Box::leak("x".repeat(200_000).into_boxed_str());
        let (server, _) = imds(200, big).await;
        let e = EcsSource::new(settings(&server.url, Some("EcsRamRoleOss"), false))
            .unwrap()
            .fetch()
            .await
            .unwrap_err();
        assert!(e.message.contains("larger"), "{e}");
    }

    #[test]
    fn role_names_cannot_change_the_path() {
        for bad in ["", "a/b", "../x", "a?b", "a b", "a#b", &"x".repeat(65)] {
            assert!(check_role_name(bad).is_err(), "{bad}");
        }
        assert!(check_role_name("EcsRamRole-Oss_1.2").is_ok());
        assert!(EcsSource::new(settings("http://127.0.0.1:1", Some("a/b"), false)).is_err());
        assert!(EcsSource::new(settings("ftp://x", None, false)).is_err());
    }
}
