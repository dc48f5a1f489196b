//! The local OSS sink: an OSS-compatible HTTP endpoint for `ossvend local`,
//! served on its own loopback listener (SDKs cannot use an endpoint with a
//! path prefix), path-style at the root.
//!
//! The operations, checks and error codes follow OSS's documentation; the
//! official SDKs prove them (tests/local.rs). Authentication is [`super::verify`], session policies
//! [`super::access`], storage [`super::store`]; this file is the HTTP side:
//! routing, bodies, forms, XML and replies.
//!
//! ```text
//! PUT    /<b>/<k>                         PutObject                oss:PutObject
//! POST   /<b>  multipart/form-data        PostObject               oss:PutObject
//! POST   /<b>/<k>?uploads                 InitiateMultipartUpload  oss:PutObject
//! PUT    /<b>/<k>?partNumber=N&uploadId=U UploadPart               oss:PutObject
//! POST   /<b>/<k>?uploadId=U              CompleteMultipartUpload  oss:PutObject
//! DELETE /<b>/<k>?uploadId=U              AbortMultipartUpload     oss:AbortMultipartUpload
//! GET|HEAD /<b>/<k>                       GetObject                oss:GetObject
//! DELETE /<b>/<k>                         DeleteObject             oss:DeleteObject
//! OPTIONS *                               CORS preflight (always allowed)
//! ```
//! Anything else is authenticated, then answered 501 NotImplemented. ali-oss
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

// ---------------------------------------------------------------------------
// Router
// ---------------------------------------------------------------------------

/// The sink. Serve it on its own loopback listener.
pub fn router(state: Arc<LocalState>) -> Router {
    Router::new()
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

/// One request, parsed as the fake parses it.
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
    oss_v1::is_sub_resource(name) && name != "security-token" && !name.starts_with("response-")
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

/// A header value as Python's http.server sends it (latin-1), else UTF-8; `None` if invalid.
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

/// Why a [`Capped`] body ended early.
#[derive(Debug, Clone, Copy)]
enum Cut {
    TooLarge,
    Unreadable,
}

impl Cut {
    fn error(self) -> OssError {
        match self {
            Cut::TooLarge => OssError::new("EntityTooLarge"),
            Cut::Unreadable => OssError::msg("InvalidArgument", "The request body could not be read."),
        }
    }
}

/// A request body as a stream of chunks, cut off beyond `max_object_bytes`
/// (EntityTooLarge), so that no body is ever held or stored whole by accident.
struct Capped {
    inner: axum::body::BodyDataStream,
    total: u64,
    cap: u64,
    cut: Option<Cut>,
    /// Bytes handed out since the stream last answered `Pending`.
    burst: usize,
}

/// multer buffers every chunk that is ready before it parses, and over loopback
/// a fast client keeps the socket ready: its buffer would grow at the client's
/// pace, not the disk's. After this many bytes the stream yields once, so the
/// parser (and the spool's bounded queue) sets the pace.
const BURST_BYTES: usize = 256 * 1024;

impl Stream for Capped {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.cut.is_some() {
            return Poll::Ready(None);
        }
        if self.burst >= BURST_BYTES {
            self.burst = 0;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let cut = match ready!(Pin::new(&mut self.inner).poll_next(cx)) {
            None => return Poll::Ready(None),
            Some(Ok(data)) => {
                self.burst += data.len();
                self.total += data.len() as u64;
                if self.total <= self.cap {
                    return Poll::Ready(Some(Ok(data)));
                }
                Cut::TooLarge
            }
            Some(Err(_)) => Cut::Unreadable,
        };
        self.cut = Some(cut);
        Poll::Ready(Some(Err(std::io::Error::other(format!("{cut:?}")))))
    }
}

impl Capped {
    fn new(body: Body, cap: u64) -> Self {
        Capped {
            inner: body.into_data_stream(),
            total: 0,
            cap,
            cut: None,
            burst: 0,
        }
    }

    async fn next_chunk(&mut self) -> Option<Result<Bytes, OssError>> {
        let next = poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await?;
        Some(next.map_err(|_| self.cut.unwrap_or(Cut::Unreadable).error()))
    }

    /// Reads and drops the rest: the error a read-it-all-first reader meets first
    /// (too large, unreadable) wins over what the parser found.
    async fn drain(&mut self) -> Result<(), OssError> {
        while let Some(chunk) = self.next_chunk().await {
            chunk?;
        }
        self.cut.map_or(Ok(()), |c| Err(c.error()))
    }

    async fn into_memory(mut self) -> Result<Bytes, OssError> {
        let mut buf = Vec::new();
        while let Some(chunk) = self.next_chunk().await {
            buf.extend_from_slice(&chunk?);
        }
        Ok(Bytes::from(buf))
    }
}

/// A body being written to `tmp/` by a blocking task, chunk by chunk (hashed on
/// the way); a bounded queue, so a fast client never piles chunks up in memory.
/// Dropped unfinished, the temp file is deleted.
struct SpoolTask {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    task: tokio::task::JoinHandle<std::io::Result<Spooled>>,
}

impl SpoolTask {
    fn start(data_dir: PathBuf) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(8);
        let task = tokio::task::spawn_blocking(move || {
            let mut spool = store::Spool::create(&data_dir)?;
            while let Some(chunk) = rx.blocking_recv() {
                spool.write(&chunk)?;
            }
            spool.finish()
        });
        SpoolTask { tx, task }
    }

    /// False once the writer has failed (`finish` says why).
    async fn write(&self, data: Bytes) -> bool {
        self.tx.send(data).await.is_ok()
    }

    async fn finish(self) -> Result<Spooled, OssError> {
        drop(self.tx);
        let failed = || OssError::msg("InternalError", "The request body could not be stored.");
        match self.task.await {
            Ok(Ok(spooled)) => Ok(spooled),
            Ok(Err(e)) => {
                tracing::warn!(target: "ossvend::local::oss", error = %e, "could not spool a request body");
                Err(failed())
            }
            Err(_) => Err(failed()),
        }
    }
}

/// Reads the body up to `max_object_bytes` (EntityTooLarge beyond, as soon as
/// the length is known). PUT bodies are spooled to disk, forms left to stream,
/// others kept in memory.
async fn read_body(
    state: &LocalState,
    parts: &axum::http::request::Parts,
    body: Body,
    is_form: bool,
) -> Result<BodyData, OssError> {
    let cap = state.max_object_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > cap) {
        return Err(OssError::new("EntityTooLarge"));
    }
    let mut body = Capped::new(body, cap);
    if parts.method == Method::POST && is_form {
        return Ok(BodyData::Unread(body));
    }
    if parts.method != Method::PUT {
        return body.into_memory().await.map(BodyData::Memory);
    }
    let spool = SpoolTask::start(state.data_dir.clone());
    let mut outcome = Ok(());
    while let Some(chunk) = body.next_chunk().await {
        match chunk {
            Ok(data) => {
                if !spool.write(data).await {
                    break; // the writer failed: `finish` reports it
                }
            }
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    let written = spool.finish().await;
    outcome?;
    written.map(BodyData::Spooled)
}

// ---------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------

async fn operate(state: &Arc<LocalState>, req: &mut Incoming, now: DateTime<Utc>) -> Result<Reply, OssError> {
    let ops = req.operations();
    let ops: Vec<&str> = ops.iter().map(String::as_str).collect();
    let is_form = req
        .header("content-type")
        .unwrap_or("")
        .to_lowercase()
        .starts_with("multipart/form-data");
    let method = req.method.clone();
    let post_object_route = method == "POST"
        && ops.is_empty()
        && is_form
        && req.key.is_none()
        && req.bucket.as_deref().is_some_and(|b| BUCKET_RE.is_match(b));
    if !post_object_route {
        req.materialize().await?;
    }

    let Some(bucket) = req.bucket.as_deref() else {
        authenticate(state, req, now)?;
        return Err(OssError::msg(
            "NotImplemented",
            "Service-level operations are not implemented by the local sink.",
        ));
    };
    if !BUCKET_RE.is_match(bucket) {
        return Err(OssError::msg(
            "InvalidBucketName",
            format!("The specified bucket is not valid: {bucket:?}."),
        ));
    }
    if method == "POST" && ops.is_empty() && is_form {
        if req.key.is_none() {
            return post_object(state, req, now).await;
        }
        return Err(OssError::msg(
            "MethodNotAllowed",
            "PostObject goes to the bucket (/<bucket>), not to an object path.",
        ));
    }
    let Some(key) = req.key.as_deref() else {
        authenticate(state, req, now)?;
        return Err(OssError::msg(
            "NotImplemented",
            "Bucket-level operations are not implemented by the local sink.",
        ));
    };
    store::check_key(key)?;

    match (method.as_str(), ops.as_slice()) {
        ("PUT", []) => put_object(state, req, now).await,
        ("POST", ["uploads"]) => initiate_upload(state, req, now).await,
        ("PUT", ["partNumber", "uploadId"]) => upload_part(state, req, now).await,
        ("POST", ["uploadId"]) => complete_upload(state, req, now).await,
        ("DELETE", ["uploadId"]) => abort_upload(state, req, now).await,
        ("GET" | "HEAD", []) => get_object(state, req, now).await,
        ("DELETE", []) => delete_object(state, req, now).await,
        _ => {
            authenticate(state, req, now)?;
            Err(OssError::msg(
                "NotImplemented",
                format!(
                    "{method} with ?{} is not implemented by the local sink.",
                    ops.join("&")
                ),
            ))
        }
    }
}

fn authenticate(
    state: &LocalState,
    req: &Incoming,
    now: DateTime<Utc>,
) -> Result<verify::Authenticated, OssError> {
    let lookup = |ak: &str| credential(state, ak);
    verify::authenticate(&req.received(), &lookup, now)
}

/// Authentication plus the session policy for `action` on this object.
fn authorized(
    state: &LocalState,
    req: &Incoming,
    now: DateTime<Utc>,
    action: &str,
) -> Result<(AuthScheme, String), OssError> {
    let ok = authenticate(state, req, now)?;
    let ak = ok.credential.access_key_id;
    access::authorize(
        ok.credential.policy.as_ref(),
        action,
        req.bucket(),
        req.key.as_deref(),
    )
    .map_err(|e| e.tag(Some(ok.scheme), Some(&ak)))?;
    Ok((ok.scheme, ak))
}

/// [`authorized`] for a write that may set the object's ACL (PutObject,
/// InitiateMultipartUpload): `x-oss-object-acl` needs `oss:PutObjectAcl` too.
fn authorized_write(
    state: &LocalState,
    req: &Incoming,
    now: DateTime<Utc>,
) -> Result<(AuthScheme, String), OssError> {
    let ok = authenticate(state, req, now)?;
    let ak = ok.credential.access_key_id;
    let policy = ok.credential.policy.as_ref();
    access::authorize(policy, "oss:PutObject", req.bucket(), req.key.as_deref())
        .and_then(|()| {
            let acl = req.header("x-oss-object-acl");
            access::authorize_object_acl(policy, acl, req.bucket(), req.key())
        })
        .map_err(|e| e.tag(Some(ok.scheme), Some(&ak)))?;
    Ok((ok.scheme, ak))
}

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, OssError> + Send + 'static,
) -> Result<T, OssError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|_| Err(OssError::msg("InternalError", "A local store task failed.")))
}

/// `Content-MD5`, when sent, must be the base64 MD5 of the body.
fn check_md5(req: &Incoming) -> Result<(), OssError> {
    let Some(given) = req.header("content-md5") else {
        return Ok(());
    };
    let digest: Vec<u8> = match &req.body {
        Some(BodyData::Spooled(s)) => hex::decode(&s.md5_hex).unwrap_or_default(),
        Some(BodyData::Memory(b)) => Md5::digest(b).to_vec(),
        Some(BodyData::Unread(_)) | None => Md5::digest(b"").to_vec(),
    };
    if given == crate::sign::b64(&digest) {
        Ok(())
    } else {
        Err(OssError::new("InvalidDigest"))
    }
}

/// The body as a file in `tmp/` (PUT bodies already are).
async fn take_spooled(state: &LocalState, req: &mut Incoming) -> Result<Spooled, OssError> {
    let bytes = match req.body.take() {
        Some(BodyData::Spooled(s)) => return Ok(s),
        Some(BodyData::Memory(b)) => b,
        Some(BodyData::Unread(_)) | None => Bytes::new(),
    };
    let dir = state.data_dir.clone();
    blocking(move || {
        Spooled::from_bytes(&dir, &bytes)
            .map_err(|_| OssError::msg("InternalError", "The body could not be stored."))
    })
    .await
}

fn take_memory(req: &mut Incoming) -> Bytes {
    match req.body.take() {
        Some(BodyData::Memory(b)) => b,
        // Only PUT bodies are spooled, and no PUT operation reads its body back;
        // only PostObject leaves a form unread, and it streams it.
        Some(BodyData::Spooled(_) | BodyData::Unread(_)) | None => Bytes::new(),
    }
}

fn content_type_or_default(req: &Incoming) -> String {
    req.header("content-type")
        .filter(|c| !c.is_empty())
        .unwrap_or("application/octet-stream")
        .to_string()
}

/// `Host` as received, for `Location` values.
fn host_of(req: &Incoming) -> String {
    req.header("host").unwrap_or(HOST_ID).to_string()
}

async fn put_object(
    state: &Arc<LocalState>,
    req: &mut Incoming,
    now: DateTime<Utc>,
) -> Result<Reply, OssError> {
    let (scheme, ak) = authorized_write(state, req, now)?;
    let tag = |e: OssError| e.tag(Some(scheme), Some(&ak));
    if req.header("x-oss-copy-source").is_some() {
        return Err(tag(OssError::msg(
            "NotImplemented",
            "CopyObject is not implemented by the local sink.",
        )));
    }
    check_md5(req).map_err(tag)?;
    let content_type = content_type_or_default(req);
    let body = take_spooled(state, req).await.map_err(tag)?;
    let md5 = hex::decode(&body.md5_hex).unwrap_or_default();
    let (dir, bucket, key) = (
        state.data_dir.clone(),
        req.bucket().to_string(),
        req.key().to_string(),
    );
    let meta = blocking(move || {
        store::commit(
            &dir,
            &bucket,
            &key,
            body,
            &content_type,
            scheme.as_str(),
            None,
            now,
        )
    })
    .await
    .map_err(tag)?;
    Ok(Reply::new(200, Some(scheme), Some(&ak))
        .header("ETag", meta.etag)
        .header("Content-MD5", crate::sign::b64(&md5)))
}

async fn initiate_upload(
    state: &Arc<LocalState>,
    req: &mut Incoming,
    now: DateTime<Utc>,
) -> Result<Reply, OssError> {
    let (scheme, ak) = authorized_write(state, req, now)?;
    let content_type = content_type_or_default(req);
    let (dir, bucket, key) = (
        state.data_dir.clone(),
        req.bucket().to_string(),
        req.key().to_string(),
    );
    let (b, k) = (bucket.clone(), key.clone());
    let upload_id = blocking(move || store::create_upload(&dir, &b, &k, &content_type, now))
        .await
        .map_err(|e| e.tag(Some(scheme), Some(&ak)))?;
    let shown_key = if req.query_value("encoding-type") == Some("url") {
        pct(&key)
    } else {
        key
    };
    let xml = xml_doc(
        "InitiateMultipartUploadResult",
        &[("Bucket", &bucket), ("Key", &shown_key), ("UploadId", &upload_id)],
    );
    Ok(Reply::new(200, Some(scheme), Some(&ak)).xml(xml))
}

async fn upload_part(
    state: &Arc<LocalState>,
    req: &mut Incoming,
    now: DateTime<Utc>,
) -> Result<Reply, OssError> {
    let (scheme, ak) = authorized(state, req, now, "oss:PutObject")?;
    let tag = |e: OssError| e.tag(Some(scheme), Some(&ak));
    let raw = req.query_value("partNumber").unwrap_or("");
    let number = (!raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()))
        .then(|| raw.parse::<u32>().ok())
        .flatten()
        .filter(|n| (1..=10_000).contains(n))
        .ok_or_else(|| tag(OssError::msg("InvalidArgument", "partNumber must be 1..10000.")))?;
    check_md5(req).map_err(tag)?;
    let upload_id = req.query_value("uploadId").unwrap_or("").to_string();
    let body = take_spooled(state, req).await.map_err(tag)?;
    let (dir, bucket, key) = (
        state.data_dir.clone(),
        req.bucket().to_string(),
        req.key().to_string(),
    );
    let etag = blocking(move || store::put_part(&dir, &upload_id, &bucket, &key, number, body))
        .await
        .map_err(tag)?;
    Ok(Reply::new(200, Some(scheme), Some(&ak)).header("ETag", etag))
}

async fn complete_upload(
    state: &Arc<LocalState>,
    req: &mut Incoming,
    now: DateTime<Utc>,
) -> Result<Reply, OssError> {
    let (scheme, ak) = authorized(state, req, now, "oss:PutObject")?;
    let tag = |e: OssError| e.tag(Some(scheme), Some(&ak));
    let all = req.header("x-oss-complete-all").unwrap_or("").to_lowercase() == "yes";
    let body = take_memory(req);
    let chosen = if all {
        None
    } else {
        Some(parse_complete_body(&body).map_err(tag)?)
    };
    let upload_id = req.query_value("uploadId").unwrap_or("").to_string();
    let url_encoded = req.query_value("encoding-type") == Some("url");
    let (dir, bucket, key) = (
        state.data_dir.clone(),
        req.bucket().to_string(),
        req.key().to_string(),
    );
    let (b, k) = (bucket.clone(), key.clone());
    let meta = blocking(move || store::complete(&dir, &upload_id, &b, &k, chosen, now))
        .await
        .map_err(tag)?;
    let location = format!("http://{}/{bucket}/{}", host_of(req), pct_path(&key));
    let shown_key = if url_encoded { pct(&key) } else { key };
    let mut children: Vec<(&str, &str)> = Vec::new();
    if url_encoded {
        children.push(("EncodingType", "url"));
    }
    children.extend([
        ("Location", location.as_str()),
        ("Bucket", bucket.as_str()),
        ("Key", shown_key.as_str()),
        ("ETag", meta.etag.as_str()),
    ]);
    let xml = xml_doc("CompleteMultipartUploadResult", &children);
    Ok(Reply::new(200, Some(scheme), Some(&ak))
        .xml(xml)
        .header("ETag", meta.etag.clone()))
}

async fn abort_upload(
    state: &Arc<LocalState>,
    req: &mut Incoming,
    now: DateTime<Utc>,
) -> Result<Reply, OssError> {
    let (scheme, ak) = authorized(state, req, now, "oss:AbortMultipartUpload")?;
    let upload_id = req.query_value("uploadId").unwrap_or("").to_string();
    let (dir, bucket, key) = (
        state.data_dir.clone(),
        req.bucket().to_string(),
        req.key().to_string(),
    );
    blocking(move || store::abort(&dir, &upload_id, &bucket, &key))
        .await
        .map_err(|e| e.tag(Some(scheme), Some(&ak)))?;
    Ok(Reply::new(204, Some(scheme), Some(&ak)))
}

async fn get_object(
    state: &Arc<LocalState>,
    req: &mut Incoming,
    now: DateTime<Utc>,
) -> Result<Reply, OssError> {
    let (scheme, ak) = authorized(state, req, now, "oss:GetObject")?;
    let tag = |e: OssError| e.tag(Some(scheme), Some(&ak));
    let (dir, bucket, key) = (
        state.data_dir.clone(),
        req.bucket().to_string(),
        req.key().to_string(),
    );
    let found = blocking(move || store::read_object(&dir, &bucket, &key))
        .await
        .map_err(tag)?;
    let Some((meta, data)) = found else {
        return Err(tag(OssError::new("NoSuchKey")));
    };
    let mut reply = Reply::new(200, Some(scheme), Some(&ak))
        .header("ETag", meta.etag)
        .header("Content-Type", meta.content_type)
        .header("Last-Modified", crate::sign::format_http_date(meta.last_modified));
    reply.body = Bytes::from(data);
    Ok(reply)
}

async fn delete_object(
    state: &Arc<LocalState>,
    req: &mut Incoming,
    now: DateTime<Utc>,
) -> Result<Reply, OssError> {
    let (scheme, ak) = authorized(state, req, now, "oss:DeleteObject")?;
    let (dir, bucket, key) = (
        state.data_dir.clone(),
        req.bucket().to_string(),
        req.key().to_string(),
    );
    blocking(move || store::delete_object(&dir, &bucket, &key))
        .await
        .map_err(|e| e.tag(Some(scheme), Some(&ak)))?;
    Ok(Reply::new(204, Some(scheme), Some(&ak)))
}

async fn post_object(
    state: &Arc<LocalState>,
    req: &mut Incoming,
    now: DateTime<Utc>,
) -> Result<Reply, OssError> {
    let content_type = req.header("content-type").unwrap_or("").to_string();
    let Some(BodyData::Unread(body)) = req.body.take() else {
        return Err(OssError::msg(
            "InternalError",
            "The form was read before PostObject.",
        ));
    };
    let form = read_form(&state.data_dir, &content_type, body).await?;
    if form.file_not_last {
        return Err(OssError::msg(
            "InvalidArgument",
            "The file field must be the last field of the form.",
        ));
    }
    let Some(file) = form.file else {
        return Err(OssError::msg("InvalidArgument", "The form has no file field."));
    };
    let fields = form.fields;
    let post = PostFields {
        fields: &fields,
        file_name: file.filename.as_deref(),
        file_content_type: file.content_type.as_deref(),
        file_size: file.size,
    };
    let bucket = req.bucket().to_string();
    let lookup = |ak: &str| credential(state, ak);
    let upload = verify::verify_post(&bucket, &post, &lookup, now)?;
    let (scheme, ak) = (upload.scheme, upload.credential.access_key_id.clone());
    let tag = |e: OssError| e.tag(Some(scheme), Some(&ak));
    store::check_key(&upload.key).map_err(tag)?;
    access::authorize(
        upload.credential.policy.as_ref(),
        "oss:PutObject",
        &bucket,
        Some(&upload.key),
    )
    .map_err(tag)?;
    let acl = fields
        .iter()
        .find(|(name, _)| name == "x-oss-object-acl")
        .map(|(_, v)| v.as_str());
    access::authorize_object_acl(upload.credential.policy.as_ref(), acl, &bucket, &upload.key)
        .map_err(tag)?;

    let spooled = file.spool.finish().await.map_err(tag)?;
    if !file.complete {
        // Only if reading the policy's size limit here disagreed with the verifier:
        // never store a file cut short.
        return Err(tag(OssError::msg(
            "InternalError",
            "The file was not stored whole.",
        )));
    }
    let dir: PathBuf = state.data_dir.clone();
    let (b, k, ct) = (bucket.clone(), upload.key.clone(), upload.content_type.clone());
    let meta = blocking(move || store::commit(&dir, &b, &k, spooled, &ct, scheme.as_str(), None, now))
        .await
        .map_err(tag)?;

    let field = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    let mut reply = Reply::new(204, Some(scheme), Some(&ak)).header("ETag", meta.etag.clone());
    let redirect = field("success_action_redirect");
    let status = field("success_action_status");
    if !redirect.is_empty() {
        let sep = if redirect.contains('?') { '&' } else { '?' };
        reply.status = 303;
        reply = reply.header(
            "Location",
            format!(
                "{redirect}{sep}bucket={}&key={}&etag={}",
                pct(&bucket),
                pct(&upload.key),
                pct(&meta.etag)
            ),
        );
    } else if status == "200" || status == "201" {
        reply.status = if status == "200" { 200 } else { 201 };
        if status == "201" {
            let location = format!("http://{}/{bucket}/{}", host_of(req), pct_path(&upload.key));
            let xml = xml_doc(
                "PostResponse",
                &[
                    ("Bucket", &bucket),
                    ("Location", &location),
                    ("Key", &upload.key),
                    ("ETag", &meta.etag),
                ],
            );
            reply = reply.xml(xml);
        }
    }
    Ok(reply)
}

// ---------------------------------------------------------------------------
// multipart/form-data (PostObject)
// ---------------------------------------------------------------------------

fn malformed(why: &str) -> OssError {
    OssError::msg("MalformedPOSTRequest", why)
}

/// A form's non-file fields: lower-case names, the first of a name counts, form order.
type FormFields = Vec<(String, String)>;

/// A PostObject form as read: the fields before the file, and the file, spooled.
#[derive(Default)]
struct Form {
    fields: FormFields,
    file: Option<FilePart>,
    /// A part came after the first `file` part (the file must be the last field).
    file_not_last: bool,
}

struct FilePart {
    filename: Option<String>,
    content_type: Option<String>,
    /// Every byte received, stored or not.
    size: u64,
    spool: SpoolTask,
    /// False when bytes beyond the policy's `content-length-range` were not stored.
    complete: bool,
}

/// Reads a PostObject form — boundary from the Content-Type, a named
/// Content-Disposition on every part, the `file` part last — streaming: [multer]
/// splits the parts, fields stay in memory, the file goes to a temp file as it arrives. The whole body is read whatever
/// the parser finds, so a body over the cap is EntityTooLarge first, as before.
async fn read_form(
    data_dir: &std::path::Path,
    content_type: &str,
    mut body: Capped,
) -> Result<Form, OssError> {
    let parsed = match multer::parse_boundary(content_type) {
        Err(_) => Err(malformed("multipart/form-data without a boundary.")),
        Ok(b) => parse_form(data_dir, &b, &mut body).await,
    };
    body.drain().await?;
    parsed
}

async fn parse_form(data_dir: &std::path::Path, boundary: &str, body: &mut Capped) -> Result<Form, OssError> {
    let bad = |e: multer::Error| malformed(&format!("The form could not be parsed: {e}."));
    let mut multipart = multer::Multipart::new(body, boundary);
    let mut form = Form::default();
    while let Some(mut part) = multipart.next_field().await.map_err(bad)? {
        let Some(name) = part.name().map(str::to_lowercase) else {
            return Err(malformed(
                "A form part lacks Content-Disposition: form-data; name=...",
            ));
        };
        let filename = part.file_name().map(str::to_string);
        let content_type = part.content_type().map(ToString::to_string);
        if form.file.is_some() {
            // Refused once the form is read; its bytes are not kept.
            form.file_not_last = true;
            while part.chunk().await.map_err(bad)?.is_some() {}
            continue;
        }
        if name != "file" {
            let value = part.bytes().await.map_err(bad)?;
            if !form.fields.iter().any(|(n, _)| *n == name) {
                form.fields
                    .push((name, String::from_utf8_lossy(&value).into_owned()));
            }
            continue;
        }
        // The policy, sent before the file, bounds what is worth storing; the
        // rest is counted (the verdict names the size) but not written.
        let limit = policy_size_limit(&form.fields);
        let spool = SpoolTask::start(data_dir.to_path_buf());
        let (mut size, mut complete) = (0u64, true);
        while let Some(chunk) = part.chunk().await.map_err(bad)? {
            size += chunk.len() as u64;
            complete = complete && size <= limit && spool.write(chunk).await;
        }
        form.file = Some(FilePart {
            filename,
            content_type,
            size,
            spool,
            complete,
        });
    }
    Ok(form)
}

/// The smallest `content-length-range` maximum in the form's policy, or
/// `u64::MAX` when none can be read. A file larger than it is refused by
/// [`verify::verify_post`] whatever else the policy says.
fn policy_size_limit(fields: &[(String, String)]) -> u64 {
    use base64::Engine as _;
    let doc = fields
        .iter()
        .find(|(n, _)| n == "policy")
        .and_then(|(_, b64)| base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok())
        .and_then(|raw| serde_json::from_slice::<serde_json::Value>(&raw).ok());
    let Some(conditions) = doc.as_ref().and_then(|d| d["conditions"].as_array()) else {
        return u64::MAX;
    };
    conditions
        .iter()
        .filter_map(|c| {
            let items = c.as_array().filter(|i| i.len() == 3)?;
            let op = items[0].as_str()?;
            if !op.eq_ignore_ascii_case("content-length-range") {
                return None;
            }
            let high = items[2].as_i64()?;
            Some(u64::try_from(high).unwrap_or(0))
        })
        .min()
        .unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------
// CompleteMultipartUpload body
// ---------------------------------------------------------------------------

/// The body OSS documents for CompleteMultipartUpload (the root's name is not checked).
#[derive(serde::Deserialize)]
struct CompleteBody {
    #[serde(rename = "Part", default)]
    parts: Vec<CompletePart>,
}

#[derive(serde::Deserialize)]
struct CompletePart {
    #[serde(rename = "PartNumber")]
    number: String,
    #[serde(rename = "ETag")]
    etag: String,
}

/// Every `Part` as (PartNumber digits, ETag); MalformedXML if the XML does not
/// parse or a part lacks an ETag or a decimal PartNumber.
pub(crate) fn parse_complete_body(body: &[u8]) -> Result<Vec<(String, String)>, OssError> {
    let text = std::str::from_utf8(body).map_err(|_| OssError::new("MalformedXML"))?;
    let doc: CompleteBody = quick_xml::de::from_str(text).map_err(|e| {
        OssError::msg(
            "MalformedXML",
            format!("The XML you provided was not well-formed: {e}."),
        )
    })?;
    doc.parts
        .into_iter()
        .map(|p| {
            let number = p.number.trim();
            if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
                return Err(OssError::msg(
                    "MalformedXML",
                    "Each Part needs a decimal PartNumber and an ETag.",
                ));
            }
            Ok((number.to_string(), p.etag.trim().to_string()))
        })
        .collect()
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
        crate::sts::client::install_crypto_provider();
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
            Some(upload_policy("uploads/")),
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

        let mut etags = Vec::new();
        for (n, data) in [(1, b"hello ".to_vec()), (2, b"world".to_vec())] {
            let number = n.to_string();
            let q = [("partNumber", number.as_str()), ("uploadId", upload_id.as_str())];
            let r = send(
                &app,
                "PUT",
                &format!("{uri}?partNumber={n}&uploadId={upload_id}"),
                &signed("PUT", &q, &[]),
                data,
            )
            .await;
            assert_eq!(outcome(&r), "200 OK");
            etags.push(r.1["etag"].to_str().unwrap().to_string());
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
        let body = complete_xml(&[(1, &etags[0]), (2, &etags[1])]);
        let r = send(&app, "POST", &complete_uri, &signed("POST", &q, &[]), body).await;
        assert_eq!(outcome(&r), "200 OK");
        let xml = String::from_utf8(r.2).unwrap();
        assert!(xml.contains("<CompleteMultipartUploadResult><Location>http://"));
        assert!(r.1["etag"].to_str().unwrap().ends_with("-2\""));
        let (meta, data) = store::read_object(tmp.path(), BUCKET, key).unwrap().unwrap();
        assert_eq!(
            (meta.auth.as_str(), data.as_slice()),
            ("multipart", &b"hello world"[..])
        );
        // The upload is gone now.
        let r = send(&app, "DELETE", &complete_uri, &signed("DELETE", &q, &[]), vec![]).await;
        assert_eq!(outcome(&r), "404 NoSuchUpload");
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
