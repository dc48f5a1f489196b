//! The local OSS sink: an OSS-compatible HTTP endpoint for `ossvend local`,
//! served on its own loopback listener (SDKs cannot use an endpoint with a
//! path prefix), path-style at the root.
//!
//! The operations, checks and error codes follow OSS's documentation; the
//! official SDKs prove them (tests/it/local.rs). Authentication is [`super::verify`], session policies
//! [`super::access`], storage [`super::store`]; this file is the HTTP side:
//! routing, bodies, forms, XML and replies.
//!
//! ```text
//! PUT    /<b>/<k>                         PutObject                oss:PutObject
//! POST   /<b>  multipart/form-data        PostObject               oss:PutObject
//! POST   /<b>/<k>?uploads                 InitiateMultipartUpload  oss:PutObject
//! PUT    /<b>/<k>?partNumber=N&uploadId=U UploadPart               oss:PutObject
//! GET    /<b>/<k>?uploadId=U              ListParts                oss:ListParts
//! POST   /<b>/<k>?uploadId=U              CompleteMultipartUpload  oss:PutObject
//! DELETE /<b>/<k>?uploadId=U              AbortMultipartUpload     oss:AbortMultipartUpload
//! GET|HEAD /<b>/<k>                       GetObject                oss:GetObject
//! DELETE /<b>/<k>                         DeleteObject             oss:DeleteObject
//! OPTIONS *                               CORS preflight (always allowed)
//! ```
//! `x-oss-forbid-overwrite: true` on PutObject, InitiateMultipartUpload or
//! CompleteMultipartUpload refuses an existing key (409 FileAlreadyExists). A
//! wrong `Content-MD5` is 400 InvalidDigest, as OSS documents it (OSS has no
//! S3-style BadDigest). Anything else is authenticated, then answered 501 NotImplemented. ali-oss
//! with an IP endpoint sends `Host: <bucket>.oss-<region>.aliyuncs.com` and may
//! leave the bucket out of the path: when the Host names a bucket and the path's
//! first segment is not that bucket, the whole path is the key.

use std::future::poll_fn;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, ready};

use futures_util::Stream;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use chrono::{DateTime, Utc};
use md5::{Digest as _, Md5};
use regex::Regex;

use super::LocalState;
use super::access;
use super::error::{HOST_ID, OssError, xml_doc};
use super::store::{self, Spooled};
use super::verify::{self, AuthScheme, Credential, Payload, PostFields, Received};
use crate::sign::encode::{pct, pct_path};
use crate::sign::oss_v1;

mod body;
pub mod callback;
mod form;
mod ops;

use body::*;
use form::*;
#[cfg(test)]
pub(crate) use ops::parse_complete_body;
use ops::*;

// ---------------------------------------------------------------------------
// Router
// ---------------------------------------------------------------------------

/// The sink. Serve it on its own loopback listener.
pub fn router(state: Arc<LocalState>) -> Router {
    let key_state = state.clone();
    Router::new()
        .route(
            callback::KEY_PATH,
            axum::routing::get(move || async move { key_state.callbacks.public_pem() }),
        )
        .fallback(serve)
        // Bodies are capped by `max_object_bytes` while they stream in.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// What the sink knows as a key: the root key or an issued session.
fn credential(state: &LocalState, access_key_id: &str) -> Option<Credential> {
    if access_key_id == state.root.access_key_id {
        return Some(Credential {
            access_key_id: state.root.access_key_id.clone(),
            access_key_secret: state.root.access_key_secret.clone(),
            security_token: None,
            expiration: None,
            policy: None,
        });
    }
    state.sessions.get(access_key_id).map(|s| Credential {
        access_key_id: s.access_key_id.clone(),
        access_key_secret: s.access_key_secret.clone(),
        security_token: Some(s.security_token.clone()),
        expiration: Some(s.expiration),
        policy: s.policy.clone(),
    })
}

/// A request body: PUT bodies go to a temp file, PostObject forms are streamed by
/// [`post_object`] (the file part to a temp file), the rest (XML) stay in memory.
enum BodyData {
    Memory(Bytes),
    Spooled(Spooled),
    /// A form, not read yet: PostObject streams it; any other operation reads it
    /// whole first ([`Incoming::materialize`]).
    Unread(Capped),
}

/// One request, parsed.
struct Incoming {
    method: String,
    /// Decoded, in URL order.
    query: Vec<(String, String)>,
    /// Lower-case names, latin-1 values (as http.server gives them), repeats joined by `,`.
    headers: Vec<(String, String)>,
    bucket: Option<String>,
    key: Option<String>,
    /// Taken by the operation that stores it.
    body: Option<BodyData>,
}

impl Incoming {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn query_value(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Reads a form that PostObject does not stream into memory: every other
    /// operation wants its body whole (and checked against the cap) first.
    async fn materialize(&mut self) -> Result<(), OssError> {
        if let Some(BodyData::Unread(_)) = &self.body
            && let Some(BodyData::Unread(body)) = self.body.take()
        {
            self.body = Some(BodyData::Memory(body.into_memory().await?));
        }
        Ok(())
    }

    fn received(&self) -> Received<'_> {
        let payload = match &self.body {
            Some(BodyData::Memory(b)) => Payload::Bytes(b),
            Some(BodyData::Spooled(s)) => Payload::Sha256Hex(&s.sha256_hex),
            Some(BodyData::Unread(_)) | None => Payload::Bytes(b""),
        };
        Received {
            method: &self.method,
            bucket: self.bucket.as_deref(),
            key: self.key.as_deref(),
            query: &self.query,
            headers: &self.headers,
            payload,
        }
    }

    fn bucket(&self) -> &str {
        self.bucket.as_deref().unwrap_or("")
    }

    fn key(&self) -> &str {
        self.key.as_deref().unwrap_or("")
    }

    /// Query names that select an operation (sub-resources minus the token and `response-*`).
    fn operations(&self) -> Vec<String> {
        let mut ops: Vec<String> = self
            .query
            .iter()
            .map(|(n, _)| n.clone())
            .filter(|n| is_operation(n))
            .collect();
        ops.sort();
        ops.dedup();
        ops
    }
}

fn is_operation(name: &str) -> bool {
    // `callback` and `callback-var` are parameters of PutObject, not operations.
    oss_v1::is_sub_resource(name)
        && !matches!(name, "security-token" | "callback" | "callback-var")
        && !name.starts_with("response-")
}

/// A successful answer, or an error rendered as one.
struct Reply {
    status: u16,
    body: Bytes,
    headers: Vec<(&'static str, String)>,
    verdict: &'static str,
    auth: Option<AuthScheme>,
    access_key_id: Option<String>,
}

impl Reply {
    /// The answer after an upload callback (its JSON reply, or `CallbackFailed`).
    fn callback(mut self, answer: callback::Answer) -> Self {
        self.status = answer.status;
        self.body = Bytes::from(answer.body);
        if answer.status != 200 {
            self.verdict = "CallbackFailed";
        }
        self.header("Content-Type", answer.content_type)
    }

    fn new(status: u16, auth: Option<AuthScheme>, access_key_id: Option<&str>) -> Self {
        Reply {
            status,
            body: Bytes::new(),
            headers: Vec::new(),
            verdict: "OK",
            auth,
            access_key_id: access_key_id.map(str::to_string),
        }
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn xml(mut self, text: String) -> Self {
        self.body = Bytes::from(text);
        self.header("Content-Type", "application/xml")
    }

    fn error(err: OssError, request_id: &str) -> Self {
        Reply {
            status: err.status,
            body: Bytes::from(err.to_xml(request_id)),
            headers: vec![("Content-Type", "application/xml".to_string())],
            verdict: err.code,
            auth: err.auth,
            access_key_id: err.access_key_id,
        }
    }
}

async fn serve(State(state): State<Arc<LocalState>>, request: Request) -> Response {
    let now = state.now();
    let request_id = new_request_id();
    let (parts, body) = request.into_parts();
    let cors = cors_headers(&parts.headers);
    let method = parts.method.as_str().to_string();
    let query = parse_query(parts.uri.query().unwrap_or(""));
    let path = percent_encoding::percent_decode_str(parts.uri.path())
        .decode_utf8_lossy()
        .into_owned();
    let shown_ops: Vec<String> = {
        let mut ops: Vec<String> = query
            .iter()
            .map(|(n, _)| n.clone())
            .filter(|n| is_operation(n))
            .collect();
        ops.dedup();
        ops
    };

    let mut target: (Option<String>, Option<String>) = (None, None);
    let outcome = if parts.method == Method::OPTIONS {
        Ok(Reply::new(200, None, None).header("Access-Control-Max-Age", "600"))
    } else {
        let headers = received_headers(&parts.headers);
        let is_form = is_form(&headers);
        match read_body(&state, &parts, body, is_form).await {
            Err(err) => Err(err),
            Ok(body) => {
                let host = headers
                    .iter()
                    .find(|(n, _)| n == "host")
                    .map_or("", |(_, v)| v.as_str());
                let (bucket, key) = resolve_target(&path, host);
                target = (bucket.clone(), key.clone());
                let mut req = Incoming {
                    method: method.clone(),
                    query,
                    headers,
                    bucket,
                    key,
                    body: Some(body),
                };
                operate(&state, &mut req, now).await
            }
        }
    };
    let reply = outcome.unwrap_or_else(|err| Reply::error(err, &request_id));

    // Never a secret, token or signature: query values are not logged at all.
    tracing::info!(
        target: "ossvend::local::oss",
        method = %method,
        bucket = target.0.as_deref().unwrap_or("-"),
        key = target.1.as_deref().unwrap_or("-"),
        ops = %shown_ops.join("&"),
        status = reply.status,
        verdict = reply.verdict,
        auth = reply.auth.map_or("-", AuthScheme::as_str),
        access_key_id = %reply.access_key_id.as_deref().map_or("-".into(), crate::identity::key_id_prefix),
        "local OSS request"
    );
    render(reply, cors, &request_id)
}

fn render(reply: Reply, mut headers: HeaderMap, request_id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(HeaderName::from_static("x-oss-request-id"), v);
    }
    headers.insert(header::SERVER, HeaderValue::from_static("AliyunOSS"));
    for (name, value) in reply.headers {
        if let (Ok(name), Some(value)) = (HeaderName::from_bytes(name.as_bytes()), latin1_header(&value)) {
            headers.insert(name, value);
        }
    }
    let mut response = Response::new(Body::from(reply.body));
    *response.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    *response.headers_mut() = headers;
    response
}

/// Every answer allows any origin (echoed) and exposes ETag and the request id.
fn cors_headers(request: &HeaderMap) -> HeaderMap {
    let mut h = HeaderMap::new();
    let origin = request.get(header::ORIGIN).filter(|v| !v.is_empty());
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        origin.cloned().unwrap_or(HeaderValue::from_static("*")),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, PUT, POST, DELETE, HEAD"),
    );
    let asked = request
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .filter(|v| !v.is_empty());
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        asked.cloned().unwrap_or(HeaderValue::from_static("*")),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("ETag, x-oss-request-id"),
    );
    if origin.is_some() {
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    if request
        .get("access-control-request-private-network")
        .is_some_and(|v| !v.is_empty())
    {
        h.insert(
            HeaderName::from_static("access-control-allow-private-network"),
            HeaderValue::from_static("true"),
        );
    }
    h
}

/// 24 upper-case hex digits, like OSS request ids.
fn new_request_id() -> String {
    hex::encode_upper(rand::random::<[u8; 12]>())
}

/// A header value as latin-1 bytes when it fits (HTTP's historical charset), else UTF-8; `None` if invalid.
pub(super) fn latin1_header(text: &str) -> Option<HeaderValue> {
    let latin1: Option<Vec<u8>> = text.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect();
    HeaderValue::from_bytes(&latin1.unwrap_or_else(|| text.as_bytes().to_vec())).ok()
}

// ---------------------------------------------------------------------------
// Request parsing
// ---------------------------------------------------------------------------

/// `a=1&b&c=` → decoded pairs in order (`+` is a space, empty parts skipped).
pub(crate) fn parse_query(raw: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw.as_bytes()).into_owned().collect()
}

fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

fn received_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (name, value) in headers {
        let value = latin1(value.as_bytes());
        match out.iter_mut().find(|(n, _)| n == name.as_str()) {
            Some(slot) => {
                slot.1.push(',');
                slot.1.push_str(&value);
            }
            None => out.push((name.as_str().to_string(), value)),
        }
    }
    out
}

static BUCKET_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\A[a-z0-9][a-z0-9-]{1,61}[a-z0-9]\z").expect("valid regex"));
static VHOST_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\A([a-z0-9][a-z0-9-]{1,61}[a-z0-9])\.oss-[a-z0-9-]+\.aliyuncs\.com(?::\d+)?\z")
        .expect("valid regex")
});

/// (bucket, key) from the decoded path, or from a virtual-host `Host` header.
fn resolve_target(path: &str, host: &str) -> (Option<String>, Option<String>) {
    let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let rest = path.strip_prefix('/').unwrap_or(path);
    let (first, tail) = rest.split_once('/').unwrap_or((rest, ""));
    if let Some(c) = VHOST_RE.captures(host) {
        let bucket = c[1].to_lowercase();
        if first != bucket {
            return (Some(bucket), some(rest));
        }
    }
    (some(first), some(tail))
}

/// True for a `multipart/form-data` body (a PostObject form, if it goes to a bucket).
fn is_form(headers: &[(String, String)]) -> bool {
    headers
        .iter()
        .find(|(n, _)| n == "content-type")
        .is_some_and(|(_, v)| v.to_lowercase().starts_with("multipart/form-data"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::Session;
    use crate::sign::oss_v4::V4Scope;
    use crate::sign::{self, AddressingStyle, Endpoint, RequestToSign, SigningCredentials, post};
    use chrono::TimeDelta;
    use tower::ServiceExt as _;

    const BUCKET: &str = "local-bucket";

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn state_at(dir: &std::path::Path, now: DateTime<Utc>) -> Arc<LocalState> {
        let mut st = LocalState::new(dir.to_path_buf());
        st.clock = Arc::new(move || now);
        Arc::new(st)
    }

    fn upload_policy(prefix: &str) -> serde_json::Value {
        serde_json::json!({"Version": "1", "Statement": [{
            "Effect": "Allow",
            "Action": ["oss:PutObject", "oss:AbortMultipartUpload", "oss:GetObject"],
            "Resource": [format!("acs:oss:*:*:{BUCKET}/{prefix}*")]
        }]})
    }

    fn session(ak: &str, expiration: DateTime<Utc>, policy: Option<serde_json::Value>) -> Session {
        Session {
            access_key_id: ak.into(),
            access_key_secret: format!("{ak}-secret"),
            security_token: format!("CAIS+{ak}/token=="),
            expiration,
            policy,
            role_arn: "acs:ram::1000000000000001:role/uploader".into(),
            session_name: "test".into(),
        }
    }

    fn creds(s: &Session) -> SigningCredentials<'_> {
        SigningCredentials {
            access_key_id: &s.access_key_id,
            access_key_secret: &s.access_key_secret,
            security_token: Some(&s.security_token),
        }
    }

    fn code_of(body: &[u8]) -> String {
        let text = String::from_utf8_lossy(body);
        text.split("<Code>")
            .nth(1)
            .and_then(|r| r.split("</Code>").next())
            .unwrap_or("")
            .to_string()
    }

    /// One request through the router, in process.
    async fn send(
        app: &Router,
        method: &str,
        uri: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> (u16, HeaderMap, Vec<u8>) {
        let mut req = axum::http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = app
            .clone()
            .oneshot(req.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        (parts.status.as_u16(), parts.headers, bytes.to_vec())
    }

    fn outcome(r: &(u16, HeaderMap, Vec<u8>)) -> String {
        let code = code_of(&r.2);
        format!("{} {}", r.0, if code.is_empty() { "OK" } else { &code })
    }

    fn owned(headers: &[(&str, &str)]) -> Vec<(String, String)> {
        headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The acceptance smoke test: a real TCP listener, reqwest, V4 presigned URLs.
    #[tokio::test]
    async fn smoke_v4_presigned_put_over_tcp() {
        crate::tls::install_crypto_provider();
        let tmp = tempfile::tempdir().unwrap();
        let now = t0();
        let state = state_at(tmp.path(), now);
        let good = session(
            "STS.smoke",
            now + TimeDelta::hours(1),
            Some(upload_policy("uploads/")),
        );
        let expired = session("STS.expired", now - TimeDelta::seconds(1), None);
        state.sessions.insert(good.clone());
        state.sessions.insert(expired.clone());

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(axum::serve(listener, router(state.clone())).into_future());
        let base = format!("http://{addr}");
        let endpoint = Endpoint {
            base: &base,
            style: AddressingStyle::Path,
        };
        let scope = V4Scope::oss("cn-hangzhou");
        let presign = |c: &SigningCredentials<'_>, key: &str, at: DateTime<Utc>, expires: u64| {
            let headers = [("Content-Type", "text/plain")];
            let req = RequestToSign {
                method: "PUT",
                bucket: Some(BUCKET),
                key,
                headers: &headers,
                query: &[],
            };
            sign::oss_v4::presign_url(c, &req, &scope, &[], &endpoint, at, expires)
                .unwrap()
                .url
        };
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let put = |url: String| {
            let client = client.clone();
            async move {
                let resp = client
                    .put(url)
                    .header("Content-Type", "text/plain")
                    .header("Origin", "http://127.0.0.1:8000")
                    .body("hello")
                    .send()
                    .await
                    .unwrap();
                let status = resp.status().as_u16();
                let headers = resp.headers().clone();
                let body = resp.bytes().await.unwrap().to_vec();
                (status, headers, body)
            }
        };

        // Accepted, stored, listed.
        let (status, headers, _) = put(presign(&creds(&good), "uploads/a.txt", now, 900)).await;
        assert_eq!(status, 200);
        assert_eq!(headers["etag"], "\"5D41402ABC4B2A76B9719D911017C592\"");
        assert_eq!(headers["access-control-allow-origin"], "http://127.0.0.1:8000");
        assert_eq!(headers["x-oss-request-id"].len(), 24);
        let (meta, data) = store::read_object(tmp.path(), BUCKET, "uploads/a.txt")
            .unwrap()
            .unwrap();
        assert_eq!((meta.auth.as_str(), data.as_slice()), ("v4-query", &b"hello"[..]));
        assert_eq!(meta.content_type, "text/plain");

        // The token must be exactly the issued one.
        let wrong = SigningCredentials {
            security_token: Some("CAIS+forged"),
            ..creds(&good)
        };
        let (status, headers, body) = put(presign(&wrong, "uploads/b.txt", now, 900)).await;
        assert_eq!((status, code_of(&body).as_str()), (403, "InvalidSecurityToken"));
        assert_eq!(headers["content-type"], "application/xml");
        assert_eq!(headers["access-control-expose-headers"], "ETag, x-oss-request-id");

        // Outside the session policy's prefix.
        let (status, _, body) = put(presign(&creds(&good), "private/b.txt", now, 900)).await;
        assert_eq!((status, code_of(&body).as_str()), (403, "AccessDenied"));

        // An expired session, and an expired URL from a live session.
        let (status, _, body) = put(presign(
            &creds(&expired),
            "uploads/c.txt",
            now - TimeDelta::minutes(5),
            900,
        ))
        .await;
        assert_eq!((status, code_of(&body).as_str()), (403, "SecurityTokenExpired"));
        let (status, _, body) = put(presign(
            &creds(&good),
            "uploads/d.txt",
            now - TimeDelta::hours(2),
            60,
        ))
        .await;
        assert_eq!((status, code_of(&body).as_str()), (403, "AccessDenied"));
        assert!(String::from_utf8_lossy(&body).contains("Request has expired."));

        // A wrong secret, and an unknown key.
        let forged = SigningCredentials {
            access_key_secret: "nope",
            ..creds(&good)
        };
        let (status, _, body) = put(presign(&forged, "uploads/e.txt", now, 900)).await;
        assert_eq!((status, code_of(&body).as_str()), (403, "SignatureDoesNotMatch"));
        assert!(
            String::from_utf8_lossy(&body).contains("<CanonicalRequest>PUT\n/local-bucket/uploads/e.txt\n")
        );
        let stranger = SigningCredentials {
            access_key_id: "STS.nobody",
            ..creds(&good)
        };
        let (status, _, body) = put(presign(&stranger, "uploads/f.txt", now, 900)).await;
        assert_eq!((status, code_of(&body).as_str()), (403, "InvalidAccessKeyId"));

        let listed: Vec<String> = store::list_objects(tmp.path())
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(listed, ["uploads/a.txt"]);
        server.abort();
    }

    #[tokio::test]
    async fn v1_header_put_get_head_delete_with_root_key() {
        let tmp = tempfile::tempdir().unwrap();
        let state = state_at(tmp.path(), t0());
        let app = router(state.clone());
        let root = SigningCredentials {
            access_key_id: &state.root.access_key_id,
            access_key_secret: &state.root.access_key_secret,
            security_token: None,
        };
        let signed = |method: &'static str, key: &str, extra: &[(&str, &str)]| {
            let req = RequestToSign {
                method,
                bucket: Some(BUCKET),
                key,
                headers: extra,
                query: &[],
            };
            let s = sign::oss_v1::sign_header(&root, &req, t0()).unwrap();
            let mut h = owned(extra);
            h.extend(s.headers_to_add);
            h
        };
        let md5 = sign::b64(&Md5::digest(b"data"));
        let h = signed(
            "PUT",
            "dir/é x.bin",
            &[("Content-Type", "application/x-a"), ("Content-MD5", &md5)],
        );
        let uri = format!("/{BUCKET}/{}", pct_path("dir/é x.bin"));
        let r = send(&app, "PUT", &uri, &h, b"data".to_vec()).await;
        assert_eq!(outcome(&r), "200 OK");
        assert_eq!(r.1["content-md5"].to_str().unwrap(), md5);
        // A Content-MD5 that does not match the body.
        let bad = signed(
            "PUT",
            "dir/é x.bin",
            &[("Content-MD5", "AAAAAAAAAAAAAAAAAAAAAA==")],
        );
        assert_eq!(
            outcome(&send(&app, "PUT", &uri, &bad, b"data".to_vec()).await),
            "400 InvalidDigest"
        );

        let r = send(&app, "GET", &uri, &signed("GET", "dir/é x.bin", &[]), vec![]).await;
        assert_eq!((outcome(&r).as_str(), r.2.as_slice()), ("200 OK", &b"data"[..]));
        assert_eq!(r.1["content-type"], "application/x-a");
        assert_eq!(r.1["last-modified"], "Fri, 15 Jan 2027 08:00:00 GMT");
        let r = send(&app, "HEAD", &uri, &signed("HEAD", "dir/é x.bin", &[]), vec![]).await;
        assert_eq!(r.0, 200);
        let r = send(
            &app,
            "DELETE",
            &uri,
            &signed("DELETE", "dir/é x.bin", &[]),
            vec![],
        )
        .await;
        assert_eq!(outcome(&r), "204 OK");
        let r = send(&app, "GET", &uri, &signed("GET", "dir/é x.bin", &[]), vec![]).await;
        assert_eq!(outcome(&r), "404 NoSuchKey");
        // A date outside the 15-minute window.
        let mut late = LocalState::new(tmp.path().to_path_buf());
        late.root = state.root.clone();
        late.clock = Arc::new(|| t0() + TimeDelta::minutes(16));
        let r = send(
            &router(Arc::new(late)),
            "GET",
            &uri,
            &signed("GET", "dir/é x.bin", &[]),
            vec![],
        )
        .await;
        assert_eq!(outcome(&r), "403 RequestTimeTooSkewed");
    }

    #[tokio::test]
    async fn virtual_host_requests_route_on_the_host_header() {
        let tmp = tempfile::tempdir().unwrap();
        let state = state_at(tmp.path(), t0());
        let app = router(state.clone());
        let root = SigningCredentials {
            access_key_id: &state.root.access_key_id,
            access_key_secret: &state.root.access_key_secret,
            security_token: None,
        };
        let req = RequestToSign {
            method: "PUT",
            bucket: Some(BUCKET),
            key: "k/v.txt",
            headers: &[],
            query: &[],
        };
        let s = sign::oss_v4::sign_header(&root, &req, &V4Scope::oss("cn-hangzhou"), &[], t0()).unwrap();
        let mut h = s.headers_to_add;
        h.push(("Host".into(), format!("{BUCKET}.oss-cn-hangzhou.aliyuncs.com")));
        let r = send(&app, "PUT", "/k/v.txt", &h, b"v".to_vec()).await;
        assert_eq!(outcome(&r), "200 OK");
        let meta = store::read_object(tmp.path(), BUCKET, "k/v.txt")
            .unwrap()
            .unwrap()
            .0;
        assert_eq!(meta.auth, "v4-header");
        // With the bucket also in the path, the path's bucket is not part of the key.
        let r = send(&app, "PUT", &format!("/{BUCKET}/k/v.txt"), &h, b"w".to_vec()).await;
        assert_eq!(outcome(&r), "200 OK");
        assert_eq!(
            store::read_object(tmp.path(), BUCKET, "k/v.txt")
                .unwrap()
                .unwrap()
                .1,
            b"w"
        );
    }

    fn form_body(fields: &[(String, String)], file_name: &str, data: &[u8]) -> (String, Vec<u8>) {
        let boundary = "----ossvendBoundary7MA4YWxkTrZu0gW";
        let mut body = Vec::new();
        for (k, v) in fields {
            body.extend(
                format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n")
                    .bytes(),
            );
        }
        body.extend(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\n\
                 Content-Type: image/png\r\n\r\n"
            )
            .bytes(),
        );
        body.extend_from_slice(data);
        body.extend(format!("\r\n--{boundary}--\r\n").bytes());
        (format!("multipart/form-data; boundary={boundary}"), body)
    }

    #[tokio::test]
    async fn post_object_v4_with_session_policy() {
        let tmp = tempfile::tempdir().unwrap();
        let now = t0();
        let state = state_at(tmp.path(), now);
        let s = session(
            "STS.post",
            now + TimeDelta::hours(1),
            Some(upload_policy("uploads/")),
        );
        state.sessions.insert(s.clone());
        let app = router(state);
        let scope = V4Scope::oss("cn-hangzhou");
        let required: String = post::v4_required_conditions(&creds(&s), &scope, now)
            .unwrap()
            .iter()
            .map(|(k, v)| format!("{{\"{k}\":\"{v}\"}},"))
            .collect();
        let policy = format!(
            r#"{{"expiration":"2027-01-15T09:00:00.000Z","conditions":[{required}{{"bucket":"{BUCKET}"}},["content-length-range",1,100],["starts-with","$key",""]]}}"#
        );
        let post_with = |key: &str, status: &str| {
            let mut fields = vec![("key", key)];
            if !status.is_empty() {
                fields.push(("success_action_status", status));
            }
            post::sign_v4(&creds(&s), &scope, now, &policy, &fields)
                .unwrap()
                .fields
        };

        let (ct, body) = form_body(&post_with("uploads/${filename}", "201"), "photo.png", b"png!");
        let r = send(
            &app,
            "POST",
            &format!("/{BUCKET}"),
            &owned(&[("Content-Type", &ct)]),
            body,
        )
        .await;
        assert_eq!(outcome(&r), "201 OK");
        let xml = String::from_utf8(r.2).unwrap();
        assert!(xml.contains("<Key>uploads/photo.png</Key>") && xml.contains("<PostResponse>"));
        let meta = store::read_object(tmp.path(), BUCKET, "uploads/photo.png")
            .unwrap()
            .unwrap()
            .0;
        assert_eq!(
            (meta.auth.as_str(), meta.content_type.as_str()),
            ("post-v4", "image/png")
        );

        let (ct, body) = form_body(&post_with("uploads/x", ""), "x", b"png!");
        let r = send(
            &app,
            "POST",
            &format!("/{BUCKET}/"),
            &owned(&[("Content-Type", &ct)]),
            body,
        )
        .await;
        assert_eq!(outcome(&r), "204 OK");

        // Conditions pass, the session policy does not.
        let (ct, body) = form_body(&post_with("private/x", ""), "x", b"png!");
        let r = send(
            &app,
            "POST",
            &format!("/{BUCKET}"),
            &owned(&[("Content-Type", &ct)]),
            body,
        )
        .await;
        assert_eq!(outcome(&r), "403 AccessDenied");
        // Too big for content-length-range: counted whole (the answer names the
        // size) though only the first 100 bytes were worth writing.
        let (ct, body) = form_body(&post_with("uploads/y", ""), "y", &vec![b'x'; 1 << 20]);
        let r = send(
            &app,
            "POST",
            &format!("/{BUCKET}"),
            &owned(&[("Content-Type", &ct)]),
            body,
        )
        .await;
        assert_eq!(outcome(&r), "400 EntityTooLarge");
        assert!(
            String::from_utf8_lossy(&r.2).contains("(1048576 &gt; 100 bytes)"),
            "{}",
            String::from_utf8_lossy(&r.2)
        );
        // A form posted to an object path.
        let (ct, body) = form_body(&post_with("uploads/z", ""), "z", b"1");
        let r = send(
            &app,
            "POST",
            &format!("/{BUCKET}/uploads/z"),
            &owned(&[("Content-Type", &ct)]),
            body,
        )
        .await;
        assert_eq!(outcome(&r), "405 MethodNotAllowed");
        // A field after `file`: spliced in before the closing boundary.
        let (ct, mut body) = form_body(&post_with("uploads/w", ""), "w", b"1");
        let tail = format!(
            "--{}\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n",
            &ct[30..]
        );
        let end = body.len() - (ct.len() - 30 + 6);
        body.splice(end..end, tail.bytes());
        let r = send(
            &app,
            "POST",
            &format!("/{BUCKET}"),
            &owned(&[("Content-Type", &ct)]),
            body,
        )
        .await;
        assert_eq!(outcome(&r), "400 InvalidArgument");
    }

    fn complete_xml(parts: &[(u32, &str)]) -> Vec<u8> {
        let inner: String = parts
            .iter()
            .map(|(n, e)| format!("<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>"))
            .collect();
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<CompleteMultipartUpload>{inner}</CompleteMultipartUpload>")
            .into_bytes()
    }

    #[tokio::test]
    async fn multipart_upload_flow() {
        let tmp = tempfile::tempdir().unwrap();
        let now = t0();
        let state = state_at(tmp.path(), now);
        let s = session(
            "STS.mp",
            now + TimeDelta::hours(1),
            Some(serde_json::json!({"Version": "1", "Statement": [{
                "Effect": "Allow",
                "Action": ["oss:PutObject", "oss:ListParts", "oss:AbortMultipartUpload"],
                "Resource": [format!("acs:oss:*:*:{BUCKET}/uploads/*")]
            }]})),
        );
        state.sessions.insert(s.clone());
        let app = router(state);
        let key = "uploads/big.bin";
        let uri = format!("/{BUCKET}/{key}");
        let signed = |method: &'static str, query: &[(&str, &str)], extra: &[(&str, &str)]| {
            let req = RequestToSign {
                method,
                bucket: Some(BUCKET),
                key,
                headers: extra,
                query,
            };
            let sig = sign::oss_v1::sign_header(&creds(&s), &req, now).unwrap();
            let mut h = owned(extra);
            h.extend(sig.headers_to_add);
            h
        };
        let r = send(
            &app,
            "POST",
            &format!("{uri}?uploads"),
            &signed("POST", &[("uploads", "")], &[]),
            vec![],
        )
        .await;
        assert_eq!(outcome(&r), "200 OK");
        let xml = String::from_utf8(r.2).unwrap();
        let upload_id = xml
            .split("<UploadId>")
            .nth(1)
            .unwrap()
            .split("</UploadId>")
            .next()
            .unwrap()
            .to_string();

        let mut first = b"hello ".to_vec();
        first.resize(store::MIN_PART_SIZE as usize, b'.');
        let mut etags = Vec::new();
        for (n, data) in [(1, first.clone()), (2, b"world".to_vec())] {
            let number = n.to_string();
            let q = [("partNumber", number.as_str()), ("uploadId", upload_id.as_str())];
            let md5 = crate::sign::b64(&Md5::digest(&data));
            let put_with_md5 = |md5: String| {
                let (app, data, q) = (app.clone(), data.clone(), q);
                let uri = format!("{uri}?partNumber={n}&uploadId={upload_id}");
                let headers = signed("PUT", &q, &[("Content-MD5", &md5)]);
                async move { send(&app, "PUT", &uri, &headers, data).await }
            };
            // Content-MD5 not base64 of 16 bytes, or of other bytes: OSS answers InvalidDigest to both.
            for bad in ["not-md5".to_string(), crate::sign::b64(&Md5::digest(b"other"))] {
                assert_eq!(outcome(&put_with_md5(bad).await), "400 InvalidDigest");
            }
            let r = put_with_md5(md5).await;
            assert_eq!(outcome(&r), "200 OK");
            etags.push(r.1["etag"].to_str().unwrap().to_string());
        }
        // ListParts pages by part-number-marker / max-parts.
        let list = |query: &'static str| {
            let mut q = vec![("uploadId", upload_id.as_str())];
            let extra: Vec<(&str, &str)> = url::form_urlencoded::parse(query.as_bytes())
                .map(|(a, b)| (a.into_owned().leak() as &str, b.into_owned().leak() as &str))
                .collect();
            q.extend(extra);
            let headers = signed("GET", &q, &[]);
            let uri = format!("{uri}?uploadId={upload_id}&{query}");
            let app = app.clone();
            async move { send(&app, "GET", &uri, &headers, vec![]).await }
        };
        let r = list("max-parts=1").await;
        assert_eq!(outcome(&r), "200 OK");
        let xml = String::from_utf8(r.2).unwrap();
        assert!(xml.contains("<IsTruncated>true</IsTruncated>"), "{xml}");
        assert!(
            xml.contains("<NextPartNumberMarker>1</NextPartNumberMarker>"),
            "{xml}"
        );
        assert!(xml.contains("<PartNumber>1</PartNumber>") && !xml.contains("<PartNumber>2<"));
        assert!(xml.contains(&format!("<Size>{}</Size>", first.len())), "{xml}");
        let r = list("part-number-marker=1").await;
        let xml = String::from_utf8(r.2).unwrap();
        assert!(xml.contains("<IsTruncated>false</IsTruncated>"), "{xml}");
        assert!(xml.contains("<PartNumber>2</PartNumber><LastModified>"), "{xml}");
        assert!(
            xml.contains("<Size>5</Size>") && !xml.contains("<PartNumber>1<"),
            "{xml}"
        );
        for bad in ["max-parts=0", "max-parts=1001", "part-number-marker=x"] {
            assert_eq!(outcome(&list(bad).await), "400 InvalidArgument", "{bad}");
        }
        // Out-of-range part numbers never reach the store.
        for bad in ["0", "10001", "99999999999999999999999999", "x"] {
            let q = [("partNumber", bad), ("uploadId", upload_id.as_str())];
            let r = send(
                &app,
                "PUT",
                &format!("{uri}?partNumber={bad}&uploadId={upload_id}"),
                &signed("PUT", &q, &[]),
                vec![1],
            )
            .await;
            assert_eq!(outcome(&r), "400 InvalidArgument", "{bad}");
        }
        let q = [("uploadId", upload_id.as_str())];
        let complete_uri = format!("{uri}?uploadId={upload_id}");
        let r = send(
            &app,
            "POST",
            &complete_uri,
            &signed("POST", &q, &[]),
            b"<oops".to_vec(),
        )
        .await;
        assert_eq!(outcome(&r), "400 MalformedXML");
        let body = complete_xml(&[(2, &etags[1]), (1, &etags[0])]);
        let r = send(&app, "POST", &complete_uri, &signed("POST", &q, &[]), body).await;
        assert_eq!(outcome(&r), "400 InvalidPartOrder");
        let body = complete_xml(&[(1, &etags[1]), (2, &etags[1])]);
        let r = send(&app, "POST", &complete_uri, &signed("POST", &q, &[]), body).await;
        assert_eq!(outcome(&r), "400 InvalidPart");
        let forbid = [("x-oss-forbid-overwrite", "true")];
        let body = complete_xml(&[(1, &etags[0]), (2, &etags[1])]);
        let r = send(&app, "POST", &complete_uri, &signed("POST", &q, &forbid), body).await;
        assert_eq!(outcome(&r), "200 OK");
        let xml = String::from_utf8(r.2).unwrap();
        assert!(xml.contains("<CompleteMultipartUploadResult><Location>http://"));
        assert!(r.1["etag"].to_str().unwrap().ends_with("-2\""));
        let (meta, data) = store::read_object(tmp.path(), BUCKET, key).unwrap().unwrap();
        first.extend_from_slice(b"world");
        assert_eq!((meta.auth.as_str(), &data), ("multipart", &first));
        // The upload is gone now.
        let r = send(&app, "DELETE", &complete_uri, &signed("DELETE", &q, &[]), vec![]).await;
        assert_eq!(outcome(&r), "404 NoSuchUpload");
        // x-oss-forbid-overwrite: true on an existing key: Initiate and PutObject answer 409.
        let r = send(
            &app,
            "POST",
            &format!("{uri}?uploads"),
            &signed("POST", &[("uploads", "")], &forbid),
            vec![],
        )
        .await;
        assert_eq!(outcome(&r), "409 FileAlreadyExists");
        let r = send(&app, "PUT", &uri, &signed("PUT", &[], &forbid), b"new".to_vec()).await;
        assert_eq!(outcome(&r), "409 FileAlreadyExists");
        let (_, data) = store::read_object(tmp.path(), BUCKET, key).unwrap().unwrap();
        assert_eq!(data, first, "the original is intact");
        let r = send(&app, "PUT", &uri, &signed("PUT", &[], &[]), b"new".to_vec()).await;
        assert_eq!(outcome(&r), "200 OK", "without the header PutObject overwrites");
    }

    #[tokio::test]
    async fn cors_preflight_and_request_shapes() {
        let tmp = tempfile::tempdir().unwrap();
        let mut st = LocalState::new(tmp.path().to_path_buf());
        st.max_object_bytes = 10;
        let app = router(Arc::new(st));
        let pre = owned(&[
            ("Origin", "http://localhost:8000"),
            ("Access-Control-Request-Method", "PUT"),
            (
                "Access-Control-Request-Headers",
                "content-type,x-oss-security-token",
            ),
            ("Access-Control-Request-Private-Network", "true"),
        ]);
        let r = send(&app, "OPTIONS", "/any/thing?x=1", &pre, vec![]).await;
        assert_eq!(r.0, 200);
        assert_eq!(r.1["access-control-allow-origin"], "http://localhost:8000");
        assert_eq!(
            r.1["access-control-allow-headers"],
            "content-type,x-oss-security-token"
        );
        assert_eq!(
            r.1["access-control-allow-methods"],
            "GET, PUT, POST, DELETE, HEAD"
        );
        assert_eq!(r.1["access-control-max-age"], "600");
        assert_eq!(r.1["access-control-allow-private-network"], "true");
        assert_eq!(r.1["vary"], "Origin");

        let cases: &[(&str, &str, &str)] = &[
            ("PUT", "/b/k", "400 InvalidBucketName"),
            ("PUT", "/UPPER/k", "400 InvalidBucketName"),
            ("PUT", "/bucket/a/../k", "400 InvalidObjectName"),
            ("PUT", "/bucket/a//k", "400 InvalidObjectName"),
            ("PUT", "/bucket/%00", "400 InvalidObjectName"),
            ("PUT", "/bucket/k", "403 AccessDenied"),
            ("GET", "/", "403 AccessDenied"),
            ("GET", "/bucket", "403 AccessDenied"),
            ("PUT", "/bucket/k?acl", "403 AccessDenied"),
        ];
        for (method, uri, want) in cases {
            let r = send(&app, method, uri, &[], vec![]).await;
            assert_eq!(outcome(&r), *want, "{method} {uri}");
            assert_eq!(r.1["access-control-allow-origin"], "*");
        }
        let r = send(&app, "PUT", "/bucket/k", &[], vec![0; 11]).await;
        assert_eq!(outcome(&r), "400 EntityTooLarge");
        let r = send(
            &app,
            "POST",
            "/bucket",
            &owned(&[("Content-Type", "multipart/form-data")]),
            vec![0; 11],
        )
        .await;
        assert_eq!(outcome(&r), "400 EntityTooLarge");
        let auth = owned(&[(
            "Authorization",
            "OSS4-HMAC-SHA256 Credential=x/20270115/r/oss/aliyun_v4_request,Signature=0",
        )]);
        let r = send(&app, "PUT", "/bucket/k", &auth, vec![]).await;
        assert_eq!(outcome(&r), "403 InvalidAccessKeyId");
    }

    #[tokio::test]
    async fn garbage_never_panics() {
        let tmp = tempfile::tempdir().unwrap();
        let app = router(state_at(tmp.path(), t0()));
        let forms: &[&[u8]] = &[
            b"",
            b"--",
            b"--x",
            b"--x\r\n",
            b"--x\r\nContent-Disposition: form-data\r\n\r\nv\r\n--x--",
            b"--x\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nv\r\n--x--",
            b"--x\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n\xff\xfe\r\n--x--",
            b"--x\r\nContent-Disposition: form-data; name=\"policy\"\r\n\r\n!!!\r\n--x\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n1\r\n--x--",
            b"--x\r\nContent-Disposition: form-data; name=\"OSSAccessKeyId\"\r\n\r\nak\r\n--x\r\nContent-Disposition: form-data; name=\"policy\"\r\n\r\ne30=\r\n--x\r\nContent-Disposition: form-data; name=\"Signature\"\r\n\r\ns\r\n--x\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n1\r\n--x--",
        ];
        for content_type in [
            "multipart/form-data",
            "multipart/form-data; boundary=x",
            "multipart/form-data; boundary=\"x\"",
            "multipart/form-data; boundary=\"\u{e9}",
        ] {
            for body in forms {
                let r = send(
                    &app,
                    "POST",
                    "/bucket",
                    &owned(&[("Content-Type", content_type)]),
                    body.to_vec(),
                )
                .await;
                assert!(
                    (400..=403).contains(&r.0),
                    "{content_type} {:?} -> {}",
                    String::from_utf8_lossy(body),
                    outcome(&r)
                );
            }
        }
        let auths = [
            "OSS ",
            "OSS a:b:c",
            "OSS4-HMAC-SHA256",
            "OSS4-HMAC-SHA256 Credential=/////,Signature=",
            "OSS4-HMAC-SHA256 Credential=a/b/c/d/e/f,,,,=",
            "\u{ff}\u{fe}",
        ];
        for a in auths {
            for q in [
                "",
                "?uploads",
                "?partNumber=99999999999999999999&uploadId=..%2F..",
                "?uploadId=%FF%FE",
                "?x-oss-signature=&x-oss-expires=-1",
            ] {
                let h = owned(&[
                    ("Authorization", a),
                    ("Date", "garbage"),
                    ("x-oss-date", "99999999T999999Z"),
                ]);
                let r = send(&app, "PUT", &format!("/bucket/k{q}"), &h, vec![1, 2]).await;
                assert!(r.0 >= 400, "{a} {q}");
            }
        }
        for q in [
            "?x-oss-signature-version=OSS4-HMAC-SHA256&x-oss-credential=a%2F20270115%2Fr%2Foss%2Faliyun_v4_request&x-oss-date=20270115T080000Z&x-oss-expires=99999999999999999999999&x-oss-signature=0",
            "?OSSAccessKeyId=a&Expires=99999999999999999999999999999999999999999&Signature=x",
            "?OSSAccessKeyId=&Expires=&Signature=",
            "?%zz=%&&&==&a=%C3",
        ] {
            let r = send(&app, "GET", &format!("/bucket/k{q}"), &[], vec![]).await;
            assert!(r.0 >= 400, "{q}");
        }
        // Deeply nested XML does not overflow the stack.
        let deep = "<a>".repeat(200_000);
        assert!(parse_complete_body(deep.as_bytes()).is_err());
        let deep_ok = format!("{}{}", "<a>".repeat(100_000), "</a>".repeat(100_000));
        assert_eq!(parse_complete_body(deep_ok.as_bytes()).unwrap(), vec![]);
    }

    /// Captures what the fmt subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn one_log_line_per_request_without_secrets() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        // With a single scoped dispatcher, tracing-core judges a callsite's interest
        // from the thread that registers it first (another test's, with no
        // subscriber); a second live dispatcher makes it consult all of them.
        let _second = tracing::Dispatch::new(tracing_subscriber::registry());
        let _guard = tracing::subscriber::set_default(subscriber);
        tracing::callsite::rebuild_interest_cache();

        let tmp = tempfile::tempdir().unwrap();
        let now = t0();
        let state = state_at(tmp.path(), now);
        let s = session(
            "STS.log",
            now + TimeDelta::hours(1),
            Some(upload_policy("uploads/")),
        );
        state.sessions.insert(s.clone());
        let app = router(state);
        let endpoint = Endpoint {
            base: "http://127.0.0.1:1",
            style: AddressingStyle::Path,
        };
        let req = RequestToSign {
            method: "PUT",
            bucket: Some(BUCKET),
            key: "uploads/log.txt",
            headers: &[],
            query: &[],
        };
        let u = sign::oss_v4::presign_url(
            &creds(&s),
            &req,
            &V4Scope::oss("cn-hangzhou"),
            &[],
            &endpoint,
            now,
            60,
        )
        .unwrap();
        let path_and_query = &u.url["http://127.0.0.1:1".len()..];
        tracing::callsite::rebuild_interest_cache();
        assert_eq!(
            outcome(&send(&app, "PUT", path_and_query, &[], b"x".to_vec()).await),
            "200 OK"
        );
        let forged = path_and_query.replace(&u.signature, &"0".repeat(64));
        assert_eq!(
            outcome(&send(&app, "PUT", &forged, &[], b"x".to_vec()).await),
            "403 SignatureDoesNotMatch"
        );
        assert_eq!(outcome(&send(&app, "OPTIONS", "/x", &[], vec![]).await), "200 OK");

        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("local OSS request")).collect();
        assert_eq!(lines.len(), 3, "{log}");
        assert!(lines[0].contains("OK") && lines[0].contains("v4-query") && lines[0].contains("STS.log"));
        assert!(
            lines[0].contains("uploads/log.txt")
                && lines[0].contains("local-bucket")
                && lines[0].contains("200")
        );
        assert!(lines[1].contains("SignatureDoesNotMatch") && lines[1].contains("403"));
        assert!(lines.iter().all(|l| l.contains("ossvend::local::oss")));
        for secret in [
            s.access_key_secret.as_str(),
            s.security_token.as_str(),
            "CAIS",
            u.signature.as_str(),
        ] {
            assert!(!log.contains(secret), "{secret} leaked: {log}");
        }
    }

    #[test]
    fn complete_body_reads_the_documented_xml() {
        let parts = |xml: &str| parse_complete_body(xml.as_bytes()).map_err(|e| e.code);
        assert_eq!(
            parts(
                "<C><Part><PartNumber> 01 </PartNumber><ETag>\"ab\"</ETag></Part><Part><PartNumber>2</PartNumber><ETag>&quot;cd&quot;</ETag></Part></C>"
            ),
            Ok(vec![
                ("01".into(), "\"ab\"".into()),
                ("2".into(), "\"cd\"".into())
            ])
        );
        assert_eq!(
            parts(
                "<?xml version='1.0'?><!-- c --><C><Part><PartNumber><![CDATA[3]]></PartNumber><ETag/></Part></C>"
            ),
            Ok(vec![("3".into(), "".into())])
        );
        assert_eq!(parts("<CompleteMultipartUpload/>"), Ok(vec![]));
        for bad in [
            "",
            "<C>",
            "<C></D>",
            "<C><Part><PartNumber>x</PartNumber><ETag>e</ETag></Part></C>",
            "<C><Part><PartNumber>1</PartNumber></Part></C>",
            "<C><Part><ETag>e</ETag></Part></C>",
            "<C>&nope;</C>",
            "<C a='1' a='2'/>",
        ] {
            assert_eq!(parts(bad).map(|_| ()), Err("MalformedXML"), "{bad:?}");
        }
    }

    #[test]
    fn parsing_helpers() {
        assert_eq!(
            parse_query("uploads&partNumber=1&&x=&=v"),
            vec![
                ("uploads".into(), "".into()),
                ("partNumber".into(), "1".into()),
                ("x".into(), "".into()),
                ("".into(), "v".into())
            ]
        );
        assert_eq!(
            resolve_target("/b/k/x", ""),
            (Some("b".into()), Some("k/x".into()))
        );
        assert_eq!(resolve_target("/", ""), (None, None));
        assert_eq!(
            resolve_target("/k/x", "My-Bucket.oss-cn-hangzhou.aliyuncs.com:80"),
            (Some("my-bucket".into()), Some("k/x".into()))
        );
        assert_eq!(
            resolve_target("/", "bkt.oss-cn-hangzhou.aliyuncs.com"),
            (Some("bkt".into()), None)
        );
        assert!(
            is_operation("uploadId") && !is_operation("security-token") && !is_operation("response-expires")
        );
        let err = OssError::new("SignatureDoesNotMatch")
            .with_extra("OSSAccessKeyId", "ak")
            .with_extra("StringToSign", "a<b&c");
        let xml = err.to_xml("RID");
        assert!(xml.starts_with(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SignatureDoesNotMatch</Code>"
        ));
        assert!(xml.contains("<RequestId>RID</RequestId><HostId>127.0.0.1</HostId><OSSAccessKeyId>ak</OSSAccessKeyId><StringToSign>a&lt;b&amp;c</StringToSign></Error>"));
        assert_eq!(err.access_key_id.as_deref(), Some("ak"));
    }
}
