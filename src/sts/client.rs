//! The AssumeRole HTTP client: RPC signature v1.0, bounded retries with
//! jittered exponential backoff, and the STS call budget.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::Rng as _;
use serde::Deserialize;
use tracing::{info, warn};

use super::{AssumeRoleRequest, StsError, TempCredentials};
use crate::config::StsConfig;
use crate::identity::{Credentials, key_id_prefix};
use crate::sign::sts_rpc;

/// Anything that can mint temporary credentials; the cache depends on this,
/// not on HTTP, so its guarantees can be tested with a scripted double.
#[async_trait::async_trait]
pub trait AssumeRole: Send + Sync + 'static {
    async fn assume_role(
        &self,
        identity: &Credentials,
        req: &AssumeRoleRequest,
    ) -> Result<TempCredentials, StsError>;
}

pub struct StsClient {
    http: reqwest::Client,
    endpoint: url::Url,
    max_retries: u32,
    retry_base: Duration,
    /// Every HTTP attempt (retries included) takes a token; cache hits never get here.
    budget: DefaultDirectRateLimiter,
}

impl StsClient {
    pub fn new(cfg: &StsConfig) -> Result<Self, String> {
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.timeout)
            .user_agent(concat!("ossvend/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the STS HTTP client: {e}"))?;
        let endpoint = url::Url::parse(&cfg.endpoint).map_err(|e| format!("sts.endpoint: {e}"))?;
        let rate = NonZeroU32::new(cfg.max_calls_per_second).unwrap_or(NonZeroU32::MIN);
        Ok(StsClient {
            http,
            endpoint,
            max_retries: cfg.max_retries,
            retry_base: cfg.retry_base_delay,
            budget: RateLimiter::direct(Quota::per_second(rate)),
        })
    }

    async fn attempt(
        &self,
        identity: &Credentials,
        req: &AssumeRoleRequest,
    ) -> Result<TempCredentials, StsError> {
        // A fresh nonce and timestamp per attempt: STS rejects a reused nonce.
        let timestamp = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let duration = req.duration_seconds.to_string();
        let mut params: Vec<(&str, &str)> = vec![
            ("Action", "AssumeRole"),
            ("Version", "2015-04-01"),
            ("Format", "JSON"),
            ("AccessKeyId", &identity.access_key_id),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureVersion", "1.0"),
            ("SignatureNonce", &nonce),
            ("Timestamp", &timestamp),
            ("RoleArn", &req.role_arn),
            ("RoleSessionName", &req.session_name),
            ("DurationSeconds", &duration),
        ];
        if let Some(token) = identity.token() {
            params.push(("SecurityToken", token));
        }
        if let Some(policy) = &req.policy {
            params.push(("Policy", policy));
        }
        if let Some(ext) = &req.external_id {
            params.push(("ExternalId", ext));
        }
        let sig = sts_rpc::sign("POST", params.iter().copied(), identity.secret());
        params.push(("Signature", &sig.signature));

        self.budget.until_ready().await;
        // Everything goes in the form body: the policy and tokens stay out of URLs and access logs.
        let resp = self
            .http
            .post(self.endpoint.clone())
            .form(&params)
            .send()
            .await
            .map_err(|e| {
                let what = if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "connection failed"
                } else {
                    "request failed"
                };
                StsError::Transport(format!("{what}: {}", without_url(&e)))
            })?;
        let status = resp.status().as_u16();
        let body = resp
            .bytes()
            .await
            .map_err(|e| StsError::Transport(format!("reading body: {}", without_url(&e))))?;
        if status == 200 {
            let ok: SuccessBody = serde_json::from_slice(&body).map_err(|e| {
                StsError::BadResponse(format!("HTTP 200 body is not an AssumeRole result: {e}"))
            })?;
            let c = ok.credentials;
            let expiration = DateTime::parse_from_rfc3339(&c.expiration)
                .map_err(|e| StsError::BadResponse(format!("Expiration {:?}: {e}", c.expiration)))?
                .with_timezone(&Utc);
            return Ok(TempCredentials {
                access_key_id: c.access_key_id,
                access_key_secret: c.access_key_secret.into(),
                security_token: c.security_token.into(),
                expiration,
                request_id: ok.request_id.unwrap_or_default(),
            });
        }
        let err: ErrorBody = serde_json::from_slice(&body).unwrap_or_default();
        if err.code == "SignatureDoesNotMatch" {
            // STS appends its string-to-sign; comparing it with ours finds encoding bugs at once.
            warn!(ours = %sig.string_to_sign, theirs = %err.message, "STS says the AssumeRole signature does not match");
        }
        Err(StsError::Api {
            status,
            code: if err.code.is_empty() {
                format!("HTTP{status}")
            } else {
                err.code
            },
            message: err.message,
            request_id: err.request_id,
        })
    }

    fn backoff(&self, attempt: u32) -> Duration {
        // Full jitter keeps many replicas from retrying in lock-step.
        let cap = self
            .retry_base
            .saturating_mul(1 << attempt.min(6))
            .min(Duration::from_secs(5));
        let ms = rand::rng().random_range(cap.as_millis() as u64 / 2..=cap.as_millis() as u64);
        Duration::from_millis(ms)
    }
}

#[async_trait::async_trait]
impl AssumeRole for StsClient {
    async fn assume_role(
        &self,
        identity: &Credentials,
        req: &AssumeRoleRequest,
    ) -> Result<TempCredentials, StsError> {
        let mut attempt = 0;
        loop {
            let started = Instant::now();
            let result = self.attempt(identity, req).await;
            let latency_ms = started.elapsed().as_millis() as u64;
            match &result {
                Ok(c) => info!(
                    sts_request_id = %c.request_id, role_arn = %req.role_arn, session_name = %req.session_name,
                    caller = %key_id_prefix(&identity.access_key_id), issued = %key_id_prefix(&c.access_key_id),
                    expiration = %super::format_expiration(c.expiration), latency_ms, attempt, "AssumeRole succeeded"
                ),
                Err(e) => warn!(
                    sts_request_id = e.sts_request_id().unwrap_or("-"), sts_code = e.sts_code().unwrap_or("-"),
                    role_arn = %req.role_arn, session_name = %req.session_name, latency_ms, attempt,
                    error = %e, "AssumeRole failed"
                ),
            }
            match result {
                Err(e) if e.retryable() && attempt < self.max_retries => {
                    tokio::time::sleep(self.backoff(attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// reqwest errors print the URL; ours has no secrets in it, but keep logs short.
fn without_url(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut msg = String::new();
    let mut cur: Option<&dyn std::error::Error> = e.source();
    while let Some(s) = cur {
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&s.to_string());
        cur = s.source();
    }
    if msg.is_empty() { e.to_string() } else { msg }
}

/// reqwest is built without a bundled crypto provider (no OpenSSL, no aws-lc);
/// ring is installed as the process default once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[derive(Deserialize)]
struct SuccessBody {
    #[serde(rename = "RequestId")]
    request_id: Option<String>,
    #[serde(rename = "Credentials")]
    credentials: CredentialsBody,
}

#[derive(Deserialize)]
struct CredentialsBody {
    #[serde(rename = "AccessKeyId")]
    access_key_id: String,
    #[serde(rename = "AccessKeySecret")]
    access_key_secret: String,
    #[serde(rename = "SecurityToken")]
    security_token: String,
    #[serde(rename = "Expiration")]
    expiration: String,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(rename = "Code", default)]
    code: String,
    #[serde(rename = "Message", default)]
    message: String,
    #[serde(rename = "RequestId")]
    request_id: Option<String>,
}
