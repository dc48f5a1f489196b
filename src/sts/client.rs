//! The AssumeRole HTTP client: RPC signature v1.0, bounded retries with
//! jittered exponential backoff, the client-wide back-off after throttling,
//! and the STS call budget.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::Rng as _;
use serde::Deserialize;
use tokio::time::Instant;
use tracing::{info, warn};

use secrecy::ExposeSecret as _;

use super::backoff::Gate;
use super::{AssumeRoleRequest, OidcRequest, StsError, StsErrorKind, TempCredentials};
use crate::config::StsConfig;
use crate::credentials::{Credentials, key_id_prefix};
use crate::shared::{Fleet, Quota as FleetQuota};
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
    /// Closed by a throttling answer: no attempt, of any caller, goes out until it opens.
    gate: Gate,
    stamp: Arc<dyn Fn() -> Stamp + Send + Sync>,
    /// Fleet mode: `budget`'s figure is the fleet's, taken from Redis; while
    /// Redis is unavailable, `fallback_budget` (the fleet's / `replicas`).
    fleet: Option<(Arc<Fleet>, DefaultDirectRateLimiter)>,
    calls_per_second: u32,
}

/// The `Timestamp` and `SignatureNonce` of one attempt. Fresh for every attempt
/// (STS rejects a reused nonce); injectable so that tests can reproduce the
/// official SDKs' requests byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub timestamp: String,
    pub nonce: String,
}

impl Stamp {
    pub fn now() -> Stamp {
        Stamp {
            timestamp: Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
            nonce: uuid::Uuid::new_v4().simple().to_string(),
        }
    }
}

/// STS answers are small; anything bigger is not an STS answer.
const MAX_STS_BODY: usize = 1024 * 1024;

/// The longest a retry waits for the throttling back-off; beyond it the call
/// gives up and says when to come back (a call that sleeps keeps every caller
/// of its key waiting until their deadlines).
const MAX_RETRY_WAIT: Duration = Duration::from_secs(5);

/// What the retry loop logs about a call.
struct CallInfo<'a> {
    action: &'static str,
    role_arn: &'a str,
    session_name: &'a str,
    caller: String,
}

impl StsClient {
    /// Uses `cfg.endpoint()`: the server resolves the environment defaults
    /// (region, VPC) into `cfg.endpoint` before building the client.
    pub fn new(cfg: &StsConfig) -> Result<Self, String> {
        crate::tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.timeout)
            .user_agent(concat!("ossvend/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the STS HTTP client: {e}"))?;
        let endpoint = url::Url::parse(&cfg.endpoint()).map_err(|e| format!("sts.endpoint: {e}"))?;
        let rate = NonZeroU32::new(cfg.max_calls_per_second).unwrap_or(NonZeroU32::MIN);
        Ok(StsClient {
            http,
            endpoint,
            max_retries: cfg.max_retries,
            retry_base: cfg.retry_base_delay,
            budget: RateLimiter::direct(Quota::per_second(rate)),
            gate: Gate::new(super::Backoff::from_config(cfg)),
            stamp: Arc::new(Stamp::now),
            fleet: None,
            calls_per_second: rate.get(),
        })
    }

    /// Makes `sts.max_calls_per_second` the fleet's budget: one GCRA in Redis
    /// (burst 1: calls are spaced `1/rate` apart across the fleet). While
    /// Redis is unavailable each replica takes `rate / replicas`.
    pub fn with_fleet(mut self, fleet: Arc<Fleet>) -> Self {
        let period = Duration::from_secs_f64(f64::from(fleet.replicas) / f64::from(self.calls_per_second));
        let quota = Quota::with_period(period).unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN));
        self.fleet = Some((fleet, RateLimiter::direct(quota)));
        self
    }

    /// Waits for a token of the budget: the fleet's, its fallback share, or this process's.
    async fn take_budget(&self) {
        let local = match &self.fleet {
            None => &self.budget,
            Some((fleet, fallback)) => {
                let quota = FleetQuota {
                    emission: Duration::from_secs(1) / self.calls_per_second,
                    burst: 1,
                };
                match fleet.gcra("budget", "sts", quota, true).await {
                    Ok(Ok(wait)) | Ok(Err(wait)) => {
                        if !wait.is_zero() {
                            tokio::time::sleep(wait).await;
                            crate::prom::sts_budget_wait(wait);
                        }
                        // Redis went away meanwhile: the fleet's schedule no longer
                        // holds, so this call takes a fallback token too.
                        if fleet.available() {
                            return;
                        }
                        fallback
                    }
                    Err(_) => fallback,
                }
            }
        };
        if local.check().is_err() {
            let waiting = Instant::now();
            local.until_ready().await;
            crate::prom::sts_budget_wait(waiting.elapsed());
        }
    }

    /// Replaces the source of timestamps and nonces (tests only need this).
    pub fn with_stamp(mut self, stamp: impl Fn() -> Stamp + Send + Sync + 'static) -> Self {
        self.stamp = Arc::new(stamp);
        self
    }

    pub fn endpoint(&self) -> &url::Url {
        &self.endpoint
    }

    async fn attempt(
        &self,
        identity: &Credentials,
        req: &AssumeRoleRequest,
    ) -> Result<TempCredentials, StsError> {
        // A fresh nonce and timestamp per attempt: STS rejects a reused nonce.
        let Stamp { timestamp, nonce } = (self.stamp)();
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
        // Everything goes in the form body: the policy and tokens stay out of URLs and access logs.
        let request = self.http.post(self.endpoint.clone()).form(&params);
        self.exchange(request, Some(&sig.string_to_sign), identity.token())
            .await
    }

    /// `AssumeRoleWithOIDC` (docs/signing.md §3): anonymous, so nothing is signed. Like
    /// credentials-go: POST with `Action/Format/Version/Timestamp` (and a
    /// `SignatureNonce`, as tea-openapi sends) in the query and the rest, the
    /// JWT included, as a form body, so the token stays out of URLs and logs.
    /// Same retries, budget and error mapping as AssumeRole.
    pub async fn assume_role_with_oidc(&self, req: &OidcRequest) -> Result<TempCredentials, StsError> {
        let info = CallInfo {
            action: "AssumeRoleWithOIDC",
            role_arn: &req.role_arn,
            session_name: &req.session_name,
            caller: "oidc".into(),
        };
        self.retrying(info, || self.oidc_attempt(req)).await
    }

    async fn oidc_attempt(&self, req: &OidcRequest) -> Result<TempCredentials, StsError> {
        let Stamp { timestamp, nonce } = (self.stamp)();
        let mut url = self.endpoint.clone();
        url.query_pairs_mut()
            .append_pair("Action", "AssumeRoleWithOIDC")
            .append_pair("Format", "JSON")
            .append_pair("Version", "2015-04-01")
            .append_pair("Timestamp", &timestamp)
            .append_pair("SignatureNonce", &nonce);
        let duration = req.duration_seconds.to_string();
        let mut form: Vec<(&str, &str)> = vec![
            ("RoleArn", &req.role_arn),
            ("OIDCProviderArn", &req.oidc_provider_arn),
            ("OIDCToken", req.oidc_token.expose_secret()),
            ("RoleSessionName", &req.session_name),
            ("DurationSeconds", &duration),
        ];
        if let Some(policy) = &req.policy {
            form.push(("Policy", policy));
        }
        let request = self
            .http
            .post(url)
            .header("x-acs-action", "AssumeRoleWithOIDC")
            .header("x-acs-version", "2015-04-01")
            .form(&form);
        self.exchange(request, None, Some(req.oidc_token.expose_secret()))
            .await
    }

    /// Sends one attempt (after taking a budget token) and maps the answer.
    /// `string_to_sign` is ours, logged next to STS's on `SignatureDoesNotMatch`.
    /// `secret` (the caller's security token, or the OIDC token) is blanked out
    /// of everything logged or returned: STS echoes its string-to-sign, which
    /// contains it.
    async fn exchange(
        &self,
        request: reqwest::RequestBuilder,
        string_to_sign: Option<&str>,
        secret: Option<&str>,
    ) -> Result<TempCredentials, StsError> {
        self.take_budget().await;
        let resp = request.send().await.map_err(|e| {
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
        let body = read_capped(resp, MAX_STS_BODY)
            .await
            .map_err(|e| StsError::Transport(format!("reading body: {e}")))?;
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
        let mut err: ErrorBody = serde_json::from_slice(&body).unwrap_or_default();
        err.message = redact(&err.message, secret);
        if err.code == "SignatureDoesNotMatch"
            && let Some(ours) = string_to_sign
        {
            // STS appends its string-to-sign; comparing it with ours finds encoding bugs at once.
            warn!(ours = %redact(ours, secret), theirs = %err.message, "STS says the AssumeRole signature does not match");
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

    /// Runs `attempt` until it succeeds, fails permanently, or the retries are
    /// spent. While the throttling back-off is on, no attempt goes out: the
    /// first one fails at once with its remaining time, a retry waits for it.
    async fn retrying<F, Fut>(
        &self,
        info: CallInfo<'_>,
        mut attempt_fn: F,
    ) -> Result<TempCredentials, StsError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<TempCredentials, StsError>>,
    {
        let CallInfo {
            action,
            role_arn,
            session_name,
            caller,
        } = info;
        let mut attempt = 0;
        loop {
            if let Some((wait, cause)) = self.gate.closed(Instant::now()) {
                crate::prom::sts_backoff("client");
                return Err(StsError::backing_off(wait, cause));
            }
            let started = Instant::now();
            let result = attempt_fn().await;
            let latency_ms = started.elapsed().as_millis() as u64;
            crate::prom::sts_call(
                action,
                result.as_ref().err().map(|e| match e {
                    StsError::Api { code, .. } => code.as_str(),
                    StsError::Transport(_) => "transport",
                    StsError::BadResponse(_) => "bad_response",
                    StsError::ShortLived { .. } => "short_lived",
                    StsError::Identity(_) => "identity",
                    StsError::BackingOff { .. } => "backoff",
                }),
                started.elapsed(),
            );
            match &result {
                Ok(c) => info!(
                    sts_request_id = %c.request_id, role_arn = %role_arn, session_name = %session_name,
                    caller = %caller, issued = %key_id_prefix(&c.access_key_id),
                    expiration = %crate::sign::format_iso8601_extended(c.expiration), latency_ms, attempt, "{action} succeeded"
                ),
                Err(e) => warn!(
                    sts_request_id = e.sts_request_id().unwrap_or("-"), sts_code = e.sts_code().unwrap_or("-"),
                    role_arn = %role_arn, session_name = %session_name, latency_ms, attempt,
                    error = %e, "{action} failed"
                ),
            }
            match &result {
                Ok(_) => self.gate.answered(),
                Err(e) if e.kind() == StsErrorKind::Throttled => self.gate.throttled(Instant::now(), e),
                Err(_) => {}
            }
            let e = match result {
                Err(e) if e.retryable() => e,
                other => return other,
            };
            let gate = self.gate.closed(Instant::now()).map(|(wait, _)| wait);
            match gate {
                // Throttled: say when to come back rather than sleep long or retry early.
                Some(wait) if attempt >= self.max_retries || wait > MAX_RETRY_WAIT => {
                    return Err(StsError::backing_off(wait, e));
                }
                _ if attempt >= self.max_retries => return Err(e),
                _ => {
                    let delay = self.backoff(attempt).max(gate.unwrap_or_default());
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
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
        let info = CallInfo {
            action: "AssumeRole",
            role_arn: &req.role_arn,
            session_name: &req.session_name,
            caller: key_id_prefix(&identity.access_key_id),
        };
        self.retrying(info, || self.attempt(identity, req)).await
    }
}

/// `text` with `secret` blanked out, raw and in its single and double
/// percent-encoded forms (a string-to-sign encodes values twice).
fn redact(text: &str, secret: Option<&str>) -> String {
    let Some(secret) = secret.filter(|s| s.len() >= 4) else {
        return text.to_string();
    };
    let once = crate::sign::encode::pct(secret);
    let twice = crate::sign::encode::pct(&once);
    let mut out = text.to_string();
    for form in [twice, once, secret.to_string()] {
        out = out.replace(&form, "[redacted]");
    }
    out
}

/// Reads a response body, refusing more than `cap` bytes (a broken or hostile
/// peer must not make us buffer without bound).
pub(crate) async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<Vec<u8>, String> {
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Err(format!("the body is larger than {cap} bytes"));
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| without_url(&e))? {
        if out.len() + chunk.len() > cap {
            return Err(format!("the body is larger than {cap} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// reqwest errors print the URL; keep it out of logs (short, and a credentials
/// URI may carry a secret in its query).
pub(crate) fn without_url(e: &reqwest::Error) -> String {
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
    if !msg.is_empty() {
        return msg;
    }
    // reqwest's own Display names the URL; describe the kind instead.
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_redirect() {
        "redirect refused"
    } else if e.is_body() || e.is_decode() {
        "broken response body"
    } else if e.is_status() {
        "unexpected status"
    } else {
        "request failed"
    };
    what.to_string()
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn client(max_retries: u32) -> StsClient {
        let cfg: StsConfig = toml::from_str(&format!(
            "endpoint = \"http://127.0.0.1:9\"\nrole_arn = \"acs:ram::1:role/r\"\nretry_base_delay = \"10ms\"\nmax_retries = {max_retries}\n"
        ))
        .unwrap();
        StsClient::new(&cfg).unwrap()
    }

    fn info() -> CallInfo<'static> {
        CallInfo {
            action: "AssumeRole",
            role_arn: "acs:ram::1:role/r",
            session_name: "s",
            caller: "test".into(),
        }
    }

    fn throttling() -> Result<TempCredentials, StsError> {
        Err(StsError::Api {
            status: 400,
            code: "Throttling.User".into(),
            message: "Request was denied due to user flow control.".into(),
            request_id: Some("r-1".into()),
        })
    }

    fn minted() -> Result<TempCredentials, StsError> {
        Ok(TempCredentials {
            access_key_id: "STS.test".into(),
            access_key_secret: "s".to_string().into(),
            security_token: "t".to_string().into(),
            expiration: Utc::now() + chrono::TimeDelta::hours(1),
            request_id: "r-2".into(),
        })
    }

    /// Issue 13 item 3: a throttling answer backs the whole client off. The
    /// retry loop waits for the back-off, and a call of any other caller made
    /// meanwhile fails at once, without reaching STS, saying when to come back.
    #[tokio::test(start_paused = true)]
    async fn throttling_backs_every_caller_off_and_retries_wait_for_it() {
        let sts = client(2);
        let calls = AtomicUsize::new(0);
        let started = Instant::now();
        let err = sts
            .retrying(info(), || async {
                calls.fetch_add(1, Ordering::SeqCst);
                throttling()
            })
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 3, "1 + max_retries attempts");
        // Jittered back-off steps of at least 0.5 s and 1 s came between them.
        assert!(
            started.elapsed() >= Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(err.kind(), StsErrorKind::Throttled);
        assert_eq!(err.sts_code(), Some("Throttling.User"));
        let wait = err.retry_after().expect("says when to come back");
        assert!(
            wait >= Duration::from_secs(2) && wait <= Duration::from_secs(4),
            "{wait:?}"
        );

        // Another caller (another key, the identity's refresh, …): no call.
        let others = AtomicUsize::new(0);
        let turned_away = sts
            .retrying(info(), || async {
                others.fetch_add(1, Ordering::SeqCst);
                minted()
            })
            .await
            .unwrap_err();
        assert_eq!(others.load(Ordering::SeqCst), 0, "calls while backing off");
        assert_eq!(turned_away.sts_code(), Some("Throttling.User"));
        assert!(turned_away.retry_after().unwrap() <= wait);

        // Once the wait is over, calls go out again; a success starts the back-off over.
        tokio::time::sleep(wait).await;
        assert!(sts.retrying(info(), || async { minted() }).await.is_ok());
        assert!(sts.gate.closed(Instant::now()).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn throttled_once_then_fine_is_not_seen_by_the_caller() {
        let sts = client(2);
        let calls = AtomicUsize::new(0);
        let got = sts
            .retrying(info(), || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0 => throttling(),
                    _ => minted(),
                }
            })
            .await;
        assert!(got.is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    /// A wait longer than a retry may sleep ends the call with the time to come back.
    #[tokio::test(start_paused = true)]
    async fn a_long_throttling_backoff_ends_the_retries_early() {
        let sts = client(10);
        let calls = AtomicUsize::new(0);
        let err = sts
            .retrying(info(), || async {
                calls.fetch_add(1, Ordering::SeqCst);
                throttling()
            })
            .await
            .unwrap_err();
        // Waits of at most 1, 2, 4 s are slept; the 4th (4-8 s) may exceed MAX_RETRY_WAIT.
        let n = calls.load(Ordering::SeqCst);
        assert!((3..=5).contains(&n), "{n} attempts");
        assert!(err.retry_after().is_some());
    }

    #[test]
    fn redaction_covers_every_encoding_of_the_token() {
        let token = "CAIS+ab/c=d";
        let sts = sts_rpc::sign(
            "POST",
            [("SecurityToken", token), ("Action", "AssumeRole")],
            "secret",
        );
        let echoed = format!(
            "Specified signature is not matched. server string to sign is:{}",
            sts.string_to_sign
        );
        for text in [echoed.as_str(), sts.canonicalized_query.as_str(), token] {
            let r = redact(text, Some(token));
            assert!(!r.contains("CAIS"), "{r}");
        }
        assert_eq!(redact("nothing here", None), "nothing here");
    }
}
