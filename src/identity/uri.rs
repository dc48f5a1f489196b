//! `source = "credentials_uri"`: `GET <uri>` (query string kept, no auth
//! header) answering the credentials-URI shape (docs/signing.md §6): HTTP 200, `Code:
//! "Success"`, the four fields, `Expiration` exactly `YYYY-MM-DDThh:mm:ssZ`.
//! Plain http only for loopback and link-local hosts.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Credentials, Fetch, IdentityError, env_var, parse_credentials_json, transport_error};
use crate::config::IdentityConfig;

pub const SOURCE: &str = "credentials_uri";
pub const ENV: &str = "ALIBABA_CLOUD_CREDENTIALS_URI";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const TOTAL_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BODY: usize = 64 * 1024;

/// https anywhere; http only for loopback (`127.0.0.0/8`, `::1`, `localhost`)
/// and link-local (`169.254.0.0/16`, `fe80::/10`) hosts.
pub fn check_uri(s: &str) -> Result<url::Url, String> {
    // The URI may carry a secret in its query: never echo it whole.
    let shown = s.split('?').next().unwrap_or("");
    let u = url::Url::parse(s).map_err(|e| format!("{shown:?} is not a URL: {e}"))?;
    let local = match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback() || ip.is_link_local(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback() || (ip.segments()[0] & 0xffc0) == 0xfe80,
        None => return Err(format!("{shown:?} has no host")),
    };
    match u.scheme() {
        "https" => Ok(u),
        "http" if local => Ok(u),
        "http" => Err(format!(
            "{shown:?} must use https (plain http only for loopback or link-local hosts)"
        )),
        other => Err(format!("{shown:?} has scheme {other:?}; use https")),
    }
}

/// `credentials_uri`, else env `ALIBABA_CLOUD_CREDENTIALS_URI`.
pub fn configured_uri<'a>(cfg: &'a IdentityConfig, env: &'a BTreeMap<String, String>) -> Option<&'a str> {
    cfg.credentials_uri
        .as_deref()
        .filter(|s| !s.is_empty())
        .or_else(|| env_var(env, ENV))
}

pub struct UriSource {
    http: reqwest::Client,
    url: url::Url,
}

impl UriSource {
    pub fn new(uri: &str) -> Result<Self, IdentityError> {
        let url = check_uri(uri).map_err(|m| IdentityError::config(SOURCE, m))?;
        let http = super::local_http_client(CONNECT_TIMEOUT, TOTAL_TIMEOUT)
            .map_err(|m| IdentityError::config(SOURCE, m))?;
        Ok(UriSource { http, url })
    }

    pub fn from_config(cfg: &IdentityConfig, env: &BTreeMap<String, String>) -> Result<Self, IdentityError> {
        let uri = configured_uri(cfg, env).ok_or_else(|| {
            IdentityError::not_configured(
                SOURCE,
                format!("neither identity.credentials_uri nor {ENV} is set"),
            )
        })?;
        Self::new(uri)
    }
}

#[async_trait::async_trait]
impl Fetch for UriSource {
    async fn fetch(&self) -> Result<Credentials, IdentityError> {
        let resp = self
            .http
            .get(self.url.clone())
            .send()
            .await
            .map_err(|e| transport_error(SOURCE, "credentials URI request", &e))?;
        let status = resp.status().as_u16();
        let body = crate::sts::client::read_capped(resp, MAX_BODY)
            .await
            .map_err(|m| IdentityError::transport(SOURCE, format!("credentials URI response: {m}")))?;
        if status != 200 {
            return Err(IdentityError::rejected(
                SOURCE,
                format!("the credentials URI answered HTTP {status}"),
            ));
        }
        parse_credentials_json(SOURCE, &body)
    }
    fn source_name(&self) -> &'static str {
        SOURCE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::ErrorKind;
    use crate::identity::testutil::{Recorded, TestServer};

    #[tokio::test]
    async fn get_with_the_query_kept_and_no_auth_header() {
        let server = TestServer::start(|_: &Recorded| {
            (
                200,
                r#"{"Code":"Success","AccessKeyId":"STS.NUri","AccessKeySecret":"u-s","SecurityToken":"u-t","Expiration":"2099-01-01T00:00:00Z","LastUpdated":"x","RequestId":"r"}"#.into(),
            )
        })
        .await;
        let src = UriSource::new(&format!("{}/v1/credentials?role=uploader&x=a%20b", server.url)).unwrap();
        let c = src.fetch().await.unwrap();
        assert_eq!(c.access_key_id, "STS.NUri");
        let r = &server.requests()[0];
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/v1/credentials");
        assert_eq!(r.query.as_deref(), Some("role=uploader&x=a%20b"));
        assert!(r.header("authorization").is_none());
        assert!(r.body.is_empty());
    }

    #[tokio::test]
    async fn refuses_what_strict_clients_refuse() {
        for (status, body) in [
            (
                200,
                r#"{"AccessKeyId":"a","AccessKeySecret":"b","SecurityToken":"c","Expiration":"2099-01-01T00:00:00Z"}"#,
            ),
            (
                500,
                r#"{"Code":"Success","AccessKeyId":"a","AccessKeySecret":"b","SecurityToken":"c","Expiration":"2099-01-01T00:00:00Z"}"#,
            ),
            (
                200,
                r#"{"Code":"Success","AccessKeyId":"a","AccessKeySecret":"b","SecurityToken":"c","Expiration":"2099-01-01T00:00:00.000Z"}"#,
            ),
            (
                200,
                r#"{"Code":"Success","AccessKeyId":"a","AccessKeySecret":"b","Expiration":"2099-01-01T00:00:00Z"}"#,
            ),
            (200, "<html>"),
        ] {
            let server = TestServer::start(move |_: &Recorded| (status, body.to_string())).await;
            let e = UriSource::new(&server.url).unwrap().fetch().await.unwrap_err();
            assert_eq!(e.kind, ErrorKind::Rejected, "{status} {body}");
        }
    }

    #[test]
    fn http_only_for_loopback_and_link_local() {
        for ok in [
            "http://127.0.0.1:8080/c?x=1",
            "http://localhost/c",
            "http://169.254.170.2/creds",
            "http://[::1]:9/x",
            "http://[fe80::1]/x",
            "https://creds.example.com/x",
        ] {
            assert!(check_uri(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.1/x",
            "http://creds.example.com/x",
            "ftp://127.0.0.1/",
            "not a url",
        ] {
            assert!(check_uri(bad).is_err(), "{bad}");
        }
        let e = check_uri("http://example.com/x?token=SECRET").unwrap_err();
        assert!(!e.contains("SECRET"));
    }
}
