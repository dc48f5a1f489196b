//! ossvend's own calls to OSS: the multipart-upload operations an upload session
//! needs (InitiateMultipartUpload, ListParts, CompleteMultipartUpload,
//! AbortMultipartUpload). One reqwest client (rustls) with timeouts; bounded
//! retries on 5xx and transport errors only; requests header-signed with
//! [`crate::sign`] (OSS V4 by default, V1 for grants that sign V1); OSS's XML
//! error bodies parsed into [`OssCallError`], which names OSS's code and request
//! id. Nothing secret is logged: the key id only as its prefix, never a token,
//! signature or query value.
//!
//! ossvend never carries upload bytes: UploadPart goes from the client straight to
//! OSS with a presigned URL.

mod xml;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng as _;

use crate::credentials::key_id_prefix;
use crate::sign::oss_v4::V4Scope;
use crate::sign::{self, Endpoint, RequestToSign, SigningCredentials, encode};

pub use xml::Part;

/// The request timeout, the connect timeout and the retries of every OSS call.
#[derive(Debug, Clone, Copy)]
pub struct OssSettings {
    pub connect_timeout: Duration,
    pub timeout: Duration,
    /// Retries after the first attempt, for 5xx answers and transport errors only.
    pub max_retries: u32,
    pub retry_base_delay: Duration,
}

impl Default for OssSettings {
    fn default() -> Self {
        OssSettings {
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
            max_retries: 2,
            retry_base_delay: Duration::from_millis(200),
        }
    }
}

/// How the requests are signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OssSigning {
    V1,
    V4,
}

/// The object an operation is about, and where it lives.
#[derive(Debug, Clone, Copy)]
pub struct ObjectRef<'a> {
    pub endpoint: Endpoint<'a>,
    /// Region id without `oss-` (the V4 scope).
    pub region: &'a str,
    pub bucket: &'a str,
    pub key: &'a str,
    pub signing: OssSigning,
}

/// Why an OSS call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OssCallError {
    /// OSS answered with an error: its status, `Code`, `Message` and `RequestId`.
    Service {
        status: u16,
        code: String,
        message: String,
        request_id: Option<String>,
    },
    /// No usable answer (connection, timeout, an unreadable body), after the retries.
    Transport(String),
    /// The request could not be signed (a bad endpoint, key or credential).
    Sign(String),
}

impl OssCallError {
    /// OSS's error code, when OSS answered.
    pub fn oss_code(&self) -> Option<&str> {
        match self {
            OssCallError::Service { code, .. } => Some(code),
            _ => None,
        }
    }

    pub fn oss_request_id(&self) -> Option<&str> {
        match self {
            OssCallError::Service { request_id, .. } => request_id.as_deref(),
            _ => None,
        }
    }

    fn retryable(&self) -> bool {
        match self {
            OssCallError::Service { status, .. } => *status >= 500,
            OssCallError::Transport(_) => true,
            OssCallError::Sign(_) => false,
        }
    }
}

impl std::fmt::Display for OssCallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OssCallError::Service {
                status,
                code,
                message,
                ..
            } => write!(f, "OSS answered {status} {code}: {message}"),
            OssCallError::Transport(e) => write!(f, "OSS could not be reached: {e}"),
            OssCallError::Sign(e) => write!(f, "the OSS request could not be signed: {e}"),
        }
    }
}

impl std::error::Error for OssCallError {}

/// One request before signing: method, sub-resource query, extra headers, body.
struct Call<'a> {
    op: &'static str,
    method: &'static str,
    query: Vec<(&'a str, String)>,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

/// A 2xx answer: what completion with a callback needs besides the body.
struct Answer {
    status: u16,
    etag: Option<String>,
    content_type: Option<String>,
    body: Vec<u8>,
}

/// The upload callback for CompleteMultipartUpload: the base64 `callback` and
/// `callback-var` values (see `grants::upload::callback_fields`).
#[derive(Debug, Clone, Copy)]
pub struct CallbackHeaders<'a> {
    pub param: &'a str,
    pub vars: &'a str,
}

/// What CompleteMultipartUpload did.
#[derive(Debug)]
pub struct Completion {
    /// The object's ETag as OSS gives it (the XML result's, or with a callback the `ETag` header).
    pub etag: String,
    /// With a callback: OSS's answer, as OSS gives it to the uploader.
    pub callback: Option<CallbackReply>,
}

/// OSS's answer to a completion with a callback: 200 and the callback server's
/// reply, or 203 and a `CallbackFailed` error (the object is stored).
#[derive(Debug)]
pub struct CallbackReply {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The OSS client. Cheap to clone (reqwest's pool is shared).
#[derive(Clone)]
pub struct OssClient {
    http: reqwest::Client,
    settings: OssSettings,
    clock: Clock,
}

impl std::fmt::Debug for OssClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OssClient")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The most ListParts pages read for one upload (OSS allows 10,000 parts, 1,000 a page).
const MAX_LIST_PAGES: usize = 11;

impl OssClient {
    pub fn new(settings: OssSettings) -> Result<Self, String> {
        // reqwest is built without a bundled provider; ring, as the STS client installs it.
        crate::tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.timeout)
            .user_agent(concat!("ossvend/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the OSS HTTP client: {e}"))?;
        Ok(OssClient {
            http,
            settings,
            clock: Arc::new(Utc::now),
        })
    }

    /// Replaces the signing clock (tests).
    pub fn with_clock(mut self, clock: impl Fn() -> DateTime<Utc> + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// InitiateMultipartUpload; returns the upload id.
    pub async fn initiate(
        &self,
        creds: &SigningCredentials<'_>,
        object: &ObjectRef<'_>,
        content_type: &str,
        forbid_overwrite: bool,
    ) -> Result<String, OssCallError> {
        let mut headers = vec![("Content-Type", content_type.to_string())];
        if forbid_overwrite {
            headers.push(("x-oss-forbid-overwrite", "true".into()));
        }
        let call = Call {
            op: "InitiateMultipartUpload",
            method: "POST",
            query: vec![("uploads", String::new())],
            headers,
            body: Vec::new(),
        };
        let body = self.send(creds, object, &call).await?.body;
        xml::upload_id(&body).map_err(OssCallError::Transport)
    }

    /// ListParts, every page (bounded): the parts in number order.
    pub async fn list_parts(
        &self,
        creds: &SigningCredentials<'_>,
        object: &ObjectRef<'_>,
        upload_id: &str,
    ) -> Result<Vec<Part>, OssCallError> {
        let mut parts = Vec::new();
        let mut marker = 0u32;
        for _ in 0..MAX_LIST_PAGES {
            let call = Call {
                op: "ListParts",
                method: "GET",
                query: vec![
                    ("max-parts", "1000".into()),
                    ("part-number-marker", marker.to_string()),
                    ("uploadId", upload_id.to_string()),
                ],
                headers: Vec::new(),
                body: Vec::new(),
            };
            let body = self.send(creds, object, &call).await?.body;
            let page = xml::list_parts(&body).map_err(OssCallError::Transport)?;
            parts.extend(page.parts);
            match page.next_marker {
                Some(next) if page.truncated && next > marker => marker = next,
                _ => return Ok(parts),
            }
        }
        Err(OssCallError::Transport(format!(
            "ListParts did not end after {MAX_LIST_PAGES} pages"
        )))
    }

    /// CompleteMultipartUpload with exactly `parts` (number, ETag); returns the object's ETag.
    pub async fn complete(
        &self,
        creds: &SigningCredentials<'_>,
        object: &ObjectRef<'_>,
        upload_id: &str,
        parts: &[(u32, String)],
        forbid_overwrite: bool,
    ) -> Result<String, OssCallError> {
        let done = self
            .complete_with(creds, object, upload_id, parts, forbid_overwrite, None)
            .await?;
        Ok(done.etag)
    }

    /// CompleteMultipartUpload, with an upload callback when `callback` is set
    /// (`x-oss-callback`, `x-oss-callback-var`: OSS calls back once the object is
    /// stored and answers with the callback's reply instead of the XML result).
    pub async fn complete_with(
        &self,
        creds: &SigningCredentials<'_>,
        object: &ObjectRef<'_>,
        upload_id: &str,
        parts: &[(u32, String)],
        forbid_overwrite: bool,
        callback: Option<CallbackHeaders<'_>>,
    ) -> Result<Completion, OssCallError> {
        let body = xml::complete_body(parts);
        let mut headers = vec![
            ("Content-Type", "application/xml".to_string()),
            ("Content-MD5", sign::b64(&md5_digest(&body))),
        ];
        if forbid_overwrite {
            headers.push(("x-oss-forbid-overwrite", "true".into()));
        }
        if let Some(cb) = &callback {
            headers.push(("x-oss-callback", cb.param.to_string()));
            if !cb.vars.is_empty() {
                headers.push(("x-oss-callback-var", cb.vars.to_string()));
            }
        }
        let call = Call {
            op: "CompleteMultipartUpload",
            method: "POST",
            query: vec![("uploadId", upload_id.to_string())],
            headers,
            body,
        };
        let answer = self.send(creds, object, &call).await?;
        if callback.is_none() {
            let etag = xml::complete_etag(&answer.body).unwrap_or_default();
            return Ok(Completion { etag, callback: None });
        }
        // With a callback the body is the callback's reply (200) or OSS's
        // CallbackFailed error (203, the object is stored all the same).
        Ok(Completion {
            etag: answer.etag.unwrap_or_default(),
            callback: Some(CallbackReply {
                status: answer.status,
                content_type: answer.content_type,
                body: answer.body,
            }),
        })
    }

    /// AbortMultipartUpload.
    pub async fn abort(
        &self,
        creds: &SigningCredentials<'_>,
        object: &ObjectRef<'_>,
        upload_id: &str,
    ) -> Result<(), OssCallError> {
        let call = Call {
            op: "AbortMultipartUpload",
            method: "DELETE",
            query: vec![("uploadId", upload_id.to_string())],
            headers: Vec::new(),
            body: Vec::new(),
        };
        self.send(creds, object, &call).await.map(|_| ())
    }

    /// Signs and sends `call`, retrying 5xx and transport errors; a 2xx answer.
    async fn send(
        &self,
        creds: &SigningCredentials<'_>,
        object: &ObjectRef<'_>,
        call: &Call<'_>,
    ) -> Result<Answer, OssCallError> {
        let mut attempt = 0;
        loop {
            let result = self.attempt(creds, object, call).await;
            let outcome = match &result {
                Ok(_) => "ok".to_string(),
                Err(e) => e.oss_code().unwrap_or("transport").to_string(),
            };
            tracing::info!(
                target: "ossvend::oss",
                op = call.op,
                bucket = object.bucket,
                key = object.key,
                access_key_id = %key_id_prefix(creds.access_key_id),
                attempt,
                outcome = %outcome,
                "OSS call"
            );
            match result {
                Err(e) if e.retryable() && attempt < self.settings.max_retries => {
                    tokio::time::sleep(self.backoff(attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        // Full jitter, as the STS client does.
        let cap = self
            .settings
            .retry_base_delay
            .saturating_mul(2u32.saturating_pow(attempt.min(10)));
        let millis = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX).max(1);
        Duration::from_millis(rand::rng().random_range(0..=millis))
    }

    async fn attempt(
        &self,
        creds: &SigningCredentials<'_>,
        object: &ObjectRef<'_>,
        call: &Call<'_>,
    ) -> Result<Answer, OssCallError> {
        let (url, headers) = self.signed(creds, object, call)?;
        let mut request = self
            .http
            .request(
                reqwest::Method::from_bytes(call.method.as_bytes()).unwrap_or(reqwest::Method::GET),
                url,
            )
            .body(call.body.clone());
        for (name, value) in &headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let response = request
            .send()
            .await
            .map_err(|e| OssCallError::Transport(transport_text(&e)))?;
        let status = response.status().as_u16();
        let header = |name: reqwest::header::HeaderName| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let etag = header(reqwest::header::ETAG);
        let content_type = header(reqwest::header::CONTENT_TYPE);
        let body = response
            .bytes()
            .await
            .map_err(|e| OssCallError::Transport(transport_text(&e)))?;
        if (200..300).contains(&status) {
            return Ok(Answer {
                status,
                etag,
                content_type,
                body: body.to_vec(),
            });
        }
        let e = xml::error(&body);
        Err(OssCallError::Service {
            status,
            code: e.code.unwrap_or_else(|| format!("HTTP{status}")),
            message: e.message.unwrap_or_default(),
            request_id: e.request_id,
        })
    }

    /// The URL and every header to send, signed at the clock's time.
    fn signed(
        &self,
        creds: &SigningCredentials<'_>,
        object: &ObjectRef<'_>,
        call: &Call<'_>,
    ) -> Result<(String, Vec<(String, String)>), OssCallError> {
        let location = object
            .endpoint
            .locate(object.bucket, object.key)
            .map_err(|e| OssCallError::Sign(e.to_string()))?;
        let query: Vec<(&str, &str)> = call.query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let headers: Vec<(&str, &str)> = call.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let req = RequestToSign {
            method: call.method,
            bucket: Some(object.bucket),
            key: object.key,
            headers: &headers,
            query: &query,
        };
        let now = (self.clock)();
        let signature = match object.signing {
            OssSigning::V4 => sign::oss_v4::sign_header(creds, &req, &V4Scope::oss(object.region), &[], now),
            OssSigning::V1 => sign::oss_v1::sign_header(creds, &req, now),
        }
        .map_err(|e| OssCallError::Sign(e.to_string()))?;
        let query_text: Vec<String> = query
            .iter()
            .map(|(k, v)| {
                if v.is_empty() {
                    encode::pct(k)
                } else {
                    format!("{}={}", encode::pct(k), encode::pct(v))
                }
            })
            .collect();
        let url = format!("{}{}?{}", location.origin, location.path, query_text.join("&"));
        let mut all: Vec<(String, String)> = call
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        all.extend(signature.headers_to_add);
        Ok((url, all))
    }
}

fn md5_digest(data: &[u8]) -> [u8; 16] {
    use md5::Digest as _;
    md5::Md5::digest(data).into()
}

/// What a transport error was, without the URL (it may hold a token).
fn transport_text(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "the answer could not be read"
    } else {
        "request failed"
    };
    what.to_string()
}

#[cfg(test)]
mod tests;
