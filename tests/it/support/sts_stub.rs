//! An in-process STS on an ephemeral loopback port: the embedded STS emulator of
//! `ossvend local` (`ossvend::local::sts`: RPC signature, nonce, timestamp and
//! parameter checks, real wire format) trusting [`CALLER_AK`], behind a layer with
//! the Python fake's test knobs: every call recorded, scripted or standing
//! behaviours (`error`, `status`, `delay_ms`, `expires_in`, `raw`) applied to calls
//! that passed verification. Starts in milliseconds (the Python fake: ~0.3 s) and
//! needs no interpreter. The same control methods as [`super::FakeSts`], so a test
//! switches by changing the constructor.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{CALLER_AK, CALLER_SECRET, ROLE_ARN};

/// Scripted behaviours (one per verified call, in order) and the standing one.
#[derive(Default)]
struct Knobs {
    script: VecDeque<Value>,
    mode: Value,
    calls: Vec<Value>,
}

/// See the module documentation. Stops when dropped.
pub struct StsStub {
    /// The AssumeRole endpoint (`http://127.0.0.1:PORT/_local/sts`) for `[sts] endpoint`.
    pub endpoint: String,
    /// The emulator's state: the sessions it issued, for an in-process OSS sink.
    pub local: Arc<ossvend::local::LocalState>,
    knobs: Arc<Mutex<Knobs>>,
    shutdown: Option<Stop>,
    _dir: tempfile::TempDir,
}

impl StsStub {
    pub fn start() -> StsStub {
        let dir = tempfile::tempdir().unwrap();
        let mut local = ossvend::local::LocalState::new(dir.path().to_path_buf());
        local.root = ossvend::local::RootKey {
            access_key_id: CALLER_AK.to_string(),
            access_key_secret: CALLER_SECRET.to_string(),
        };
        local.account_id = ROLE_ARN.split(':').nth(3).unwrap().to_string();
        let local = Arc::new(local);
        let knobs = Arc::new(Mutex::new(Knobs {
            mode: json!({}),
            ..Knobs::default()
        }));
        let layer_knobs = knobs.clone();
        let app = ossvend::local::sts::router(local.clone()).layer(axum::middleware::from_fn(
            move |req: Request, next: Next| record_and_apply(layer_knobs.clone(), req, next),
        ));
        let (endpoint, stop) = serve_on_own_thread(app);
        StsStub {
            endpoint: format!("{endpoint}{}", ossvend::local::sts::PATH),
            local,
            knobs,
            shutdown: Some(stop),
            _dir: dir,
        }
    }

    /// Every AssumeRole request received so far: `seq`, `time` (Unix seconds), `method`, `params`, `verified`,
    /// `outcome` ("OK", "RAW" or the error code), `access_key_id_issued`, `expiration_issued`.
    pub async fn calls(&self) -> Vec<Value> {
        self.knobs.lock().unwrap().calls.clone()
    }

    pub async fn call_count(&self) -> usize {
        self.knobs.lock().unwrap().calls.len()
    }

    /// Queues behaviours for the next verified calls, one per call.
    pub async fn script(&self, responses: Value) {
        let list = responses.as_array().expect("a script is an array").clone();
        self.knobs.lock().unwrap().script.extend(list);
    }

    /// Sets the behaviour used when the script is empty (`{}` = normal).
    pub async fn mode(&self, behaviour: Value) {
        self.knobs.lock().unwrap().mode = behaviour;
    }

    /// The secret and the security token of every credential this STS issued.
    pub async fn issued_secrets(&self) -> Vec<String> {
        let mut out = Vec::new();
        for call in self.calls().await {
            if let Some(s) = call["access_key_id_issued"]
                .as_str()
                .and_then(|ak| self.local.sessions.get(ak))
            {
                out.push(s.access_key_secret.clone());
                out.push(s.security_token.clone());
            }
        }
        out
    }

    /// Stops answering: the port is closed when this returns (STS unreachable).
    pub fn kill(&mut self) {
        if let Some(stop) = self.shutdown.take() {
            stop.stop();
        }
    }

    /// Waits until at least `n` calls were recorded.
    pub async fn wait_calls(&self, n: usize, timeout: Duration) -> usize {
        let start = Instant::now();
        loop {
            let c = self.call_count().await;
            if c >= n || start.elapsed() > timeout {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for StsStub {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Stops a server of [`serve_on_own_thread`]: dropped, it stops it without waiting.
pub(super) struct Stop {
    tx: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Stop {
    /// Stops the server and waits until its listener is closed.
    pub(super) fn stop(self) {
        let _ = self.tx.send(());
        let _ = self.thread.join();
    }
}

/// Serves `app` on an ephemeral loopback port from a thread with its own runtime,
/// so it outlives any one test runtime and works from plain `#[test]`s. Open
/// connections are not waited for when it stops.
pub(super) fn serve_on_own_thread(app: axum::Router) -> (String, Stop) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let serve = axum::serve(listener, app);
            // Not graceful: a killed STS drops its keep-alive connections too.
            tokio::select! {
                _ = serve => {}
                _ = rx => {}
            }
        });
        // The runtime drops here, and with it every connection task.
    });
    (endpoint, Stop { tx, thread })
}

/// The RPC parameters of a request: its query, then its form body.
fn params(query: Option<&str>, body: &[u8]) -> serde_json::Map<String, Value> {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .chain(url::form_urlencoded::parse(body))
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect()
}

/// Records the call, lets the emulator verify and answer it, then applies the
/// next scripted (or the standing) behaviour to a verified call.
async fn record_and_apply(knobs: Arc<Mutex<Knobs>>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    let params = params(parts.uri.query(), &body);
    let method = parts.method.to_string();
    let answer = next.run(Request::from_parts(parts, Body::from(body))).await;
    let (status, bytes) = (
        answer.status(),
        axum::body::to_bytes(answer.into_body(), usize::MAX)
            .await
            .unwrap_or_default(),
    );
    let reply: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let verified = status.is_success();
    let behaviour = if verified {
        let mut k = knobs.lock().unwrap();
        k.script.pop_front().unwrap_or_else(|| k.mode.clone())
    } else {
        json!({})
    };
    let (status, bytes, outcome) = if verified {
        apply(&behaviour, reply.clone(), bytes)
    } else {
        (status, bytes, reply["Code"].as_str().unwrap_or("?").to_string())
    };
    let credentials = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .filter(|_| outcome == "OK")
        .map(|v| v["Credentials"].clone())
        .unwrap_or(Value::Null);
    {
        let mut k = knobs.lock().unwrap();
        let seq = k.calls.len() + 1;
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        k.calls.push(json!({
            "seq": seq,
            "time": time,
            "method": method,
            "params": params,
            "verified": verified,
            "outcome": outcome,
            "access_key_id_issued": credentials["AccessKeyId"],
            "expiration_issued": credentials["Expiration"],
        }));
    }
    if let Some(ms) = behaviour["delay_ms"].as_u64() {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    (
        status,
        [(header::CONTENT_TYPE, "application/json;charset=utf-8")],
        bytes,
    )
        .into_response()
}

/// A behaviour applied to the emulator's success `reply`: status, body, outcome.
fn apply(b: &Value, mut reply: Value, bytes: Bytes) -> (StatusCode, Bytes, String) {
    let status = b["status"]
        .as_u64()
        .map(|s| StatusCode::from_u16(s as u16).unwrap());
    if let Some(raw) = b["raw"].as_str() {
        return (
            status.unwrap_or(StatusCode::OK),
            Bytes::from(raw.to_string()),
            "RAW".into(),
        );
    }
    if b.get("error").is_some() || status.is_some_and(|s| s.as_u16() >= 400) {
        let code = b["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| code_for_status(status.unwrap()).to_string());
        let status = status.unwrap_or_else(|| status_for_code(&code));
        let body = json!({
            "RequestId": reply["RequestId"],
            "HostId": "sts.aliyuncs.com",
            "Code": code,
            "Message": format!("scripted {code}"),
        });
        return (status, Bytes::from(body.to_string()), code);
    }
    if let Some(secs) = b["expires_in"].as_i64() {
        let at = chrono::Utc::now() + chrono::TimeDelta::seconds(secs);
        reply["Credentials"]["Expiration"] = json!(at.format("%Y-%m-%dT%H:%M:%SZ").to_string());
        return (
            status.unwrap_or(StatusCode::OK),
            Bytes::from(reply.to_string()),
            "OK".into(),
        );
    }
    (status.unwrap_or(StatusCode::OK), bytes, "OK".into())
}

/// The HTTP status real STS answers an error code with (as the Python fake's table).
fn status_for_code(code: &str) -> StatusCode {
    match code {
        "InternalError" => StatusCode::INTERNAL_SERVER_ERROR,
        "ServiceUnavailable" => StatusCode::SERVICE_UNAVAILABLE,
        "NoPermission" => StatusCode::FORBIDDEN,
        "EntityNotExist.Role" | "InvalidAccessKeyId.NotFound" => StatusCode::NOT_FOUND,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// The code a status-only behaviour (`{"status": 503}`) answers with.
fn code_for_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        403 => "NoPermission",
        404 => "EntityNotExist.Role",
        429 => "Throttling.User",
        503 => "ServiceUnavailable",
        s if s >= 500 => "InternalError",
        _ => "InvalidParameter",
    }
}
