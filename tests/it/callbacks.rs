//! Issue 18: OSS upload callbacks verified by ossvend, and the signed webhook to
//! the application.

use std::collections::HashMap;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::support::*;
use base64::Engine as _;
use ossvend::callbacks::{CallbackRequest, KeyHosts, KeySource, Refusal, Verifier};
use serde_json::{Value, json};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const OSS_KEY_URL: &str = "http://gosspublic.alicdn.com/callback_pub_key_v1.pem";

/// Signs `requests` with tests/fakes/oss_callback_signer.py (Python `cryptography`).
fn python_sign(requests: &Value) -> Value {
    let mut child = Command::new(venv_python())
        .arg(repo_root().join("tests/fakes/oss_callback_signer.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(json!({ "requests": requests }).to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Keys by URL, counting every fetch and remembering the URLs asked for.
#[derive(Default)]
struct Keys {
    pems: HashMap<String, String>,
    fetched: Mutex<Vec<String>>,
    count: AtomicUsize,
}

#[async_trait::async_trait]
impl KeySource for Keys {
    async fn fetch(&self, url: &str) -> Result<String, String> {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.fetched.lock().unwrap().push(url.to_string());
        self.pems.get(url).cloned().ok_or_else(|| "404".to_string())
    }
}

struct Case<'a> {
    path: &'a str,
    query: Option<&'a str>,
    body: &'a str,
    authorization: Option<&'a str>,
    key_url: Option<String>,
}

async fn check(v: &Verifier, c: &Case<'_>) -> Result<(), Refusal> {
    v.verify(&CallbackRequest {
        path: c.path,
        query: c.query,
        body: c.body.as_bytes(),
        authorization: c.authorization,
        pub_key_url: c.key_url.as_deref(),
    })
    .await
}

/// Requests signed by an independent implementation (Python `cryptography`,
/// signing as OSS documents) verify; each tampering, a key URL off the
/// allowlist, a wrong key and a missing header are refused, with the code the
/// receiver answers. Keys are fetched once per URL, only from the allowlist,
/// always over https.
#[tokio::test]
async fn python_signed_callbacks_verify_and_every_tampering_is_refused() {
    let json_body = r#"{"bucket":"b","object":"uploads/a.png","etag":"ABC","size":3,"mimeType":"image/png"}"#;
    let form_body = "bucket=b&object=uploads%2Fa.png&etag=ABC&size=3&mimeType=image%2Fpng";
    let reqs = json!([
        {"path": "/v1/callbacks/oss", "query": null, "body": json_body},
        {"path": "/v1/callbacks/o%73s", "query": "tenant=a%20b", "body": form_body},
    ]);
    let signed = python_sign(&reqs);
    let sig = |i: usize| signed["signatures"][i].as_str().unwrap().to_string();
    let other = |i: usize| signed["other_signatures"][i].as_str().unwrap().to_string();
    let https_url = OSS_KEY_URL.replace("http://", "https://");
    let keys = Arc::new(Keys {
        pems: HashMap::from([(
            https_url.clone(),
            signed["public_pem"].as_str().unwrap().to_string(),
        )]),
        ..Default::default()
    });
    let v = Verifier::new(KeyHosts::default(), keys.clone());
    let key_url = Some(B64.encode(OSS_KEY_URL));
    let (s0, s1) = (sig(0), sig(1));
    let good = [
        Case {
            path: "/v1/callbacks/oss",
            query: None,
            body: json_body,
            authorization: Some(&s0),
            key_url: key_url.clone(),
        },
        Case {
            path: "/v1/callbacks/o%73s",
            query: Some("tenant=a%20b"),
            body: form_body,
            authorization: Some(&s1),
            key_url: key_url.clone(),
        },
    ];
    for c in &good {
        assert_eq!(check(&v, c).await, Ok(()));
    }

    let bad_sig = Err(Refusal::BadSignature);
    let tampered_body = json_body.replace("\"size\":3", "\"size\":4");
    let w0 = other(0);
    let cases: Vec<(Case, Result<(), Refusal>, &str)> = vec![
        (
            Case {
                path: "/v1/callbacks/oss2",
                ..clone(&good[0])
            },
            bad_sig.clone(),
            "callback_signature_invalid",
        ),
        (
            Case {
                query: Some("tenant=b"),
                ..clone(&good[1])
            },
            bad_sig.clone(),
            "callback_signature_invalid",
        ),
        (
            Case {
                query: None,
                ..clone(&good[1])
            },
            bad_sig.clone(),
            "callback_signature_invalid",
        ),
        (
            Case {
                body: &tampered_body,
                ..clone(&good[0])
            },
            bad_sig.clone(),
            "callback_signature_invalid",
        ),
        (
            Case {
                authorization: Some(&w0),
                ..clone(&good[0])
            },
            bad_sig.clone(),
            "callback_signature_invalid",
        ),
        (
            Case {
                authorization: Some("not base64!"),
                ..clone(&good[0])
            },
            Err(Refusal::MalformedSignature),
            "callback_signature_invalid",
        ),
        (
            Case {
                authorization: None,
                ..clone(&good[0])
            },
            Err(Refusal::Unsigned("Authorization")),
            "callback_unsigned",
        ),
        (
            Case {
                key_url: None,
                ..clone(&good[0])
            },
            Err(Refusal::Unsigned("x-oss-pub-key-url")),
            "callback_unsigned",
        ),
        (
            Case {
                key_url: Some(B64.encode("http://127.0.0.1:1/attacker.pem")),
                ..clone(&good[0])
            },
            Err(Refusal::KeyUrlNotAllowed(
                "http://127.0.0.1:1/attacker.pem".into(),
            )),
            "callback_key_url_refused",
        ),
        (
            Case {
                key_url: Some("%%%".into()),
                ..clone(&good[0])
            },
            Err(Refusal::MalformedKeyUrl),
            "callback_key_url_refused",
        ),
    ];
    for (c, want, code) in &cases {
        let got = check(&v, c).await;
        assert_eq!(&got, want, "{} {:?}", c.path, c.query);
        assert_eq!(got.unwrap_err().code(), *code);
    }
    // An allowed URL whose key is not the one that signed: refused too.
    let v2 = Verifier::new(
        KeyHosts::default(),
        Arc::new(Keys {
            pems: HashMap::from([(
                https_url.clone(),
                signed["other_public_pem"].as_str().unwrap().to_string(),
            )]),
            ..Default::default()
        }),
    );
    assert_eq!(check(&v2, &good[0]).await, bad_sig);
    // An allowed URL with no key behind it: unavailable, not believed.
    let missing = Case {
        key_url: Some(B64.encode("https://gosspublic.alicdn.com/callback_pub_key_v9.pem")),
        ..clone(&good[0])
    };
    // Twice: the failure is remembered, a second forged callback costs no fetch.
    for _ in 0..2 {
        assert_eq!(
            check(&v, &missing).await.unwrap_err().code(),
            "callback_key_unavailable"
        );
    }

    // One fetch for the good key (cached across 2 + 9 verifications), one for
    // the missing one; never a URL off the allowlist, never plain http.
    let fetched = keys.fetched.lock().unwrap().clone();
    assert_eq!(
        fetched,
        [
            https_url,
            "https://gosspublic.alicdn.com/callback_pub_key_v9.pem".into()
        ]
    );
}

fn clone<'a>(c: &Case<'a>) -> Case<'a> {
    Case {
        path: c.path,
        query: c.query,
        body: c.body,
        authorization: c.authorization,
        key_url: c.key_url.clone(),
    }
}

// ---------------------------------------------------------------------------
// The receiver and the webhook, in process against the real router.

/// Obviously fake Standard Webhooks secret (24 bytes of base64).
const WEBHOOK_SECRET: &str = "whsec_dGVzdC1zZWNyZXQtbm90LWEtc2VjcmV0IQ==";

/// One webhook as the application received it: headers and body.
type Seen = (HashMap<String, String>, String);

/// What the test application saw, and whether it is "up".
#[derive(Clone, Default)]
struct App {
    seen: Arc<Mutex<Vec<Seen>>>,
    down: Arc<std::sync::atomic::AtomicBool>,
    key_pem: Arc<Mutex<String>>,
    /// Milliseconds the key server and the webhook endpoint wait before answering.
    key_delay_ms: Arc<std::sync::atomic::AtomicU64>,
    hook_delay_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl App {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// The test application's webhook endpoint (`/hook`) and a key server
/// (`/key.pem`, standing in for the local sink's key URL), on one loopback port.
async fn start_app(app: App) -> String {
    use axum::routing::{get, post};
    let hook = {
        let app = app.clone();
        move |headers: axum::http::HeaderMap, body: String| {
            let app = app.clone();
            async move {
                if app.down.load(Ordering::SeqCst) {
                    return (axum::http::StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({})))
                        .into_response_parts();
                }
                let delay = app.hook_delay_ms.load(Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                let h = headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                    .collect();
                app.seen.lock().unwrap().push((h, body));
                (
                    axum::http::StatusCode::OK,
                    axum::Json(json!({"recorded": true, "photo_id": 42})),
                )
                    .into_response_parts()
            }
        }
    };
    let key = {
        let app = app.clone();
        move || {
            let app = app.clone();
            async move {
                let delay = app.key_delay_ms.load(Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                app.key_pem.lock().unwrap().clone()
            }
        }
    };
    let router = axum::Router::new()
        .route("/hook", post(hook))
        .route("/key.pem", get(key));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

trait IntoParts {
    fn into_response_parts(self) -> axum::response::Response;
}
impl<T: axum::response::IntoResponse> IntoParts for T {
    fn into_response_parts(self) -> axum::response::Response {
        self.into_response()
    }
}

fn env_map() -> std::collections::BTreeMap<String, String> {
    std::collections::BTreeMap::from([
        ("ALIBABA_CLOUD_ACCESS_KEY_ID".to_string(), CALLER_AK.to_string()),
        (
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET".to_string(),
            CALLER_SECRET.to_string(),
        ),
        ("OSSVEND_WEBHOOK_SECRET".to_string(), WEBHOOK_SECRET.to_string()),
        // Fleet mode (obviously fake, 32+ bytes).
        (
            "OSSVEND_SHARED_KEY".to_string(),
            "callbacks-test-shared-key-not-secret-0001".to_string(),
        ),
        (
            "OSSVEND_TICKET_KEY".to_string(),
            "callbacks-test-ticket-key-not-secret-0001".to_string(),
        ),
    ])
}

fn callback_config(app_base: &str, extra_webhooks: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[identity]
source = "env"

[sts]
endpoint = "http://127.0.0.1:9"
role_arn = "{ROLE_ARN}"

[[grants]]
name = "photos"
bucket = "examplebucket"
region = "cn-hangzhou"
prefix = "photos/"
signing = "access_key"
content_types = ["image/png"]

[grants.callback]
url = "https://ossvend.example.com/v1/callbacks/oss"

[[grants]]
name = "plain"
bucket = "examplebucket"
region = "cn-hangzhou"
prefix = "plain/"
signing = "access_key"

[webhooks]
url = "{app_base}/hook"
secret_env = "OSSVEND_WEBHOOK_SECRET"
{extra_webhooks}
"#
    )
}

async fn state_for(config: &str, app_base: &str) -> Arc<ossvend::state::AppState> {
    let env = env_map();
    let mut cfg = ossvend::config::parse(config, &env).unwrap();
    let problems = ossvend::config::validate(&cfg, &env);
    assert!(problems.is_empty(), "{problems:?}");
    // As `ossvend local` does for its sink: a loopback key URL trusted in this process only.
    cfg.webhooks.local_key_url = Some(format!("{app_base}/"));
    ossvend::state::AppState::build(cfg, &env).await.unwrap()
}

async fn call(
    router: &axum::Router,
    method: &str,
    uri: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> (u16, Value) {
    use tower::ServiceExt as _;
    let mut req = axum::http::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let mut req = req.body(axum::body::Body::from(body)).unwrap();
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
            [127, 0, 0, 1],
            40000,
        ))));
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// base64 JSON → JSON.
fn unb64(s: &str) -> Value {
    serde_json::from_slice(&B64.decode(s).unwrap()).unwrap()
}

/// A callback body as OSS fills `callbackBody` (JSON type): each variable
/// written as a JSON value, `${size}` a number.
fn oss_fill(callback: &Value, vars: &Value, key: &str, size: u64, etag: &str) -> String {
    let mut body = callback["callbackBody"].as_str().unwrap().to_string();
    let system = [
        ("bucket", "examplebucket"),
        ("object", key),
        ("etag", etag),
        ("mimeType", "image/png"),
    ];
    for (k, v) in system {
        body = body.replace(&format!("${{{k}}}"), &Value::from(v).to_string());
    }
    body = body.replace("${size}", &size.to_string());
    for (k, v) in vars.as_object().unwrap() {
        body = body.replace(&format!("${{{k}}}"), &v.to_string());
    }
    body
}

/// Verifies webhooks with the stock `standardwebhooks` 1.1.0 package (PyPI):
/// the decoded payloads, or the error of the first that fails.
fn python_verify_webhooks(seen: &[Seen]) -> Result<Vec<Value>, String> {
    let script = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
req = json.load(sys.stdin)
wh = Webhook(req["secret"])
out = []
for m in req["messages"]:
    try:
        out.append(wh.verify(m["body"], m["headers"]))
    except Exception as e:
        print(json.dumps({"error": repr(e)})); sys.exit(0)
print(json.dumps({"ok": out}))
"#;
    let messages: Vec<Value> = seen
        .iter()
        .map(|(h, b)| json!({"headers": h, "body": b}))
        .collect();
    let mut child = Command::new(venv_python())
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            json!({"secret": WEBHOOK_SECRET, "messages": messages})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
    let out: Value = serde_json::from_slice(&child.wait_with_output().unwrap().stdout).unwrap();
    match out.get("ok") {
        Some(v) => Ok(v.as_array().unwrap().clone()),
        None => Err(out["error"].to_string()),
    }
}

/// What ossvend issued for one upload: the decoded callback parameter and variables.
async fn issue_presign(router: &axum::Router) -> (String, Value, Value) {
    let (status, body) = call(
        router,
        "GET",
        "/v1/grants/photos/presign?filename=cat.png&content_type=image/png",
        &[("x-request-id", "req-presign-1".into())],
        vec![],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let url = url::Url::parse(body["url"].as_str().unwrap()).unwrap();
    let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
    (
        body["key"].as_str().unwrap().to_string(),
        unb64(&q["callback"]),
        unb64(&q["callback-var"]),
    )
}

/// Issue 18 through the real router: a presigned PUT and a PostObject form of a
/// grant with `[grants.callback]` carry OSS's callback parameter and ossvend's
/// signed variables (signed into the URL, pinned by the policy); a callback
/// signed as OSS signs (Python) is accepted and becomes exactly one webhook,
/// verified by the stock `standardwebhooks` verifier, whose JSON reply goes
/// back to OSS; forged, swapped or misplaced callbacks are refused with nothing
/// forwarded; a grant without a callback issues none.
#[tokio::test]
async fn a_verified_callback_becomes_one_signed_webhook_and_forgeries_none() {
    let app = App::default();
    let base = start_app(app.clone()).await;
    let state = state_for(&callback_config(&base, ""), &base).await;
    let router = ossvend::app(state.clone());

    let (key, callback, vars) = issue_presign(&router).await;
    assert_eq!(
        callback["callbackUrl"],
        "https://ossvend.example.com/v1/callbacks/oss"
    );
    assert_eq!(callback["callbackSNI"], true);
    assert_eq!(vars["x:grant"], "photos");
    assert_eq!(vars["x:request_id"], "req-presign-1");
    assert_eq!(vars["x:prefix"], "photos/");
    assert!(key.starts_with("photos/") && key.ends_with(".png"));

    // The form: `callback` sent and pinned by the policy; the variables as `x:`
    // fields (OSS's PostObject takes no `callback-var` field).
    let (status, form) = call(
        &router,
        "GET",
        "/v1/grants/photos/post-policy?content_type=image/png",
        &[],
        vec![],
    )
    .await;
    assert_eq!(status, 200, "{form}");
    let fields = &form["fields"];
    let policy = unb64(fields["policy"].as_str().unwrap());
    let cb = fields["callback"].as_str().unwrap();
    assert!(
        policy["conditions"]
            .as_array()
            .unwrap()
            .contains(&json!(["eq", "$callback", cb])),
        "{policy}"
    );
    assert_eq!(unb64(cb), callback);
    assert!(fields.get("callback-var").is_none());
    assert_eq!(
        (fields["x:grant"].as_str(), fields["x:prefix"].as_str()),
        (Some("photos"), Some("photos/"))
    );
    assert!(fields["x:sig"].as_str().is_some_and(|s| s.len() == 43));
    // A grant without a callback issues none.
    let (_, plain) = call(
        &router,
        "GET",
        "/v1/grants/plain/presign?filename=a.txt",
        &[],
        vec![],
    )
    .await;
    assert!(!plain["url"].as_str().unwrap().contains("callback"), "{plain}");

    // OSS's callbacks: the genuine one, then forgeries.
    let genuine = oss_fill(&callback, &vars, &key, 3, "5EB63BBBE01EEED093CB22BB8F5ACDC3");
    let mut swapped_vars = vars.clone();
    swapped_vars["x:subject"] = json!("mallory");
    let swapped = oss_fill(
        &callback,
        &swapped_vars,
        &key,
        3,
        "5EB63BBBE01EEED093CB22BB8F5ACDC3",
    );
    let outside = oss_fill(
        &callback,
        &vars,
        "plain/evil.png",
        3,
        "5EB63BBBE01EEED093CB22BB8F5ACDC3",
    );
    let path = "/v1/callbacks/oss";
    let reqs = json!([
        {"path": path, "query": null, "body": genuine},
        {"path": path, "query": null, "body": swapped},
        {"path": path, "query": null, "body": outside},
    ]);
    let signed = python_sign(&reqs);
    *app.key_pem.lock().unwrap() = signed["public_pem"].as_str().unwrap().to_string();
    let local_key = B64.encode(format!("{base}/key.pem"));
    let post = |body: &str, sig: &str, key_url: &str| {
        let router = router.clone();
        let (body, sig, key_url) = (body.to_string(), sig.to_string(), key_url.to_string());
        async move {
            call(
                &router,
                "POST",
                path,
                &[
                    ("content-type", "application/json".into()),
                    ("authorization", sig),
                    ("x-oss-pub-key-url", key_url),
                ],
                body.into_bytes(),
            )
            .await
        }
    };
    let s = |name: &str, i: usize| signed[name][i].as_str().unwrap().to_string();

    // Forged by a client (its own key), a key URL off the allowlist, unsigned, swapped, outside the prefix.
    let refusals = [
        (
            post(&genuine, &s("other_signatures", 0), &local_key).await,
            403,
            "callback_signature_invalid",
        ),
        (
            post(
                &genuine,
                &s("signatures", 0),
                &B64.encode("http://127.0.0.1:1/attacker.pem"),
            )
            .await,
            403,
            "callback_key_url_refused",
        ),
        (
            post(&genuine, "", &local_key).await,
            403,
            "callback_signature_invalid",
        ),
        (
            post(&swapped, &s("signatures", 1), &local_key).await,
            403,
            "callback_vars_invalid",
        ),
        (
            post(&outside, &s("signatures", 2), &local_key).await,
            403,
            "callback_key_outside_prefix",
        ),
    ];
    for ((status, body), want_status, code) in refusals {
        assert_eq!(
            (status, body["code"].as_str().unwrap()),
            (want_status, code),
            "{body}"
        );
    }
    let (status, body) = call(
        &router,
        "POST",
        path,
        &[("content-type", "application/json".into())],
        genuine.clone().into_bytes(),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str().unwrap()),
        (403, "callback_unsigned")
    );
    assert!(
        app.seen().is_empty(),
        "a refused callback reached the application"
    );

    // The genuine callback: one webhook; the application's JSON reply goes back to OSS.
    let (status, reply) = post(&genuine, &s("signatures", 0), &local_key).await;
    assert_eq!(
        (status, &reply),
        (200, &json!({"recorded": true, "photo_id": 42}))
    );
    let seen = app.seen();
    assert_eq!(seen.len(), 1);
    let payloads = python_verify_webhooks(&seen).unwrap();
    let event = &payloads[0];
    assert_eq!(event["event"], "upload.completed");
    assert_eq!(
        (event["grant"].as_str(), event["subject"].as_str()),
        (Some("photos"), Some("anonymous"))
    );
    assert_eq!(
        (event["key"].as_str(), event["size"].as_u64()),
        (Some(key.as_str()), Some(3))
    );
    assert_eq!(event["etag"], "5EB63BBBE01EEED093CB22BB8F5ACDC3");
    assert_eq!(event["content_type"], "image/png");
    assert_eq!(event["request_id"], "req-presign-1");
    assert!(seen[0].0["webhook-id"].starts_with("upl_"));
    // A tampered webhook fails the same stock verifier (it is really checking).
    let mut tampered = seen.clone();
    tampered[0].1 = tampered[0].1.replace("\"size\":3", "\"size\":4");
    assert!(python_verify_webhooks(&tampered).is_err());
}

/// The application is down: OSS is answered 503 `webhook_pending` (it then
/// reports CallbackFailed to the uploader; the object is stored), the event is
/// journalled in `data_dir`, survives a restart (a new state reading the same
/// journal), is listed as pending, and is redelivered with the same
/// `webhook-id` once the application is back: exactly one delivery, verified by
/// the stock verifier.
#[tokio::test]
async fn an_event_the_application_missed_is_kept_across_a_restart_and_redelivered() {
    let app = App::default();
    let base = start_app(app.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let admin_token = "admin-token-not-a-secret";
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(admin_token.as_bytes()));
    let config = callback_config(
        &base,
        &format!(
            "data_dir = {:?}\n\n[admin]\ntoken_sha256 = \"{digest}\"\n\n[audit]\nfile = {:?}\n",
            dir.path().display().to_string(),
            dir.path().join("audit.jsonl").display().to_string()
        ),
    );
    let state = state_for(&config, &base).await;
    let router = ossvend::app(state.clone());
    let (key, callback, vars) = issue_presign(&router).await;
    let body = oss_fill(&callback, &vars, &key, 7, "0123456789ABCDEF0123456789ABCDEF");
    let signed = python_sign(&json!([{"path": "/v1/callbacks/oss", "query": null, "body": body}]));
    *app.key_pem.lock().unwrap() = signed["public_pem"].as_str().unwrap().to_string();

    app.down.store(true, Ordering::SeqCst);
    let (status, reply) = call(
        &router,
        "POST",
        "/v1/callbacks/oss",
        &[
            ("content-type", "application/json".into()),
            ("authorization", signed["signatures"][0].as_str().unwrap().into()),
            ("x-oss-pub-key-url", B64.encode(format!("{base}/key.pem"))),
        ],
        body.into_bytes(),
    )
    .await;
    assert_eq!(
        (status, reply["code"].as_str()),
        (503, Some("webhook_pending")),
        "{reply}"
    );
    let pending = state.webhooks.as_ref().unwrap().pending().await;
    assert_eq!(pending.len(), 1);
    let id = pending[0].id.clone();
    let journal = std::fs::read_to_string(dir.path().join(ossvend::webhooks::JOURNAL)).unwrap();
    assert!(journal.contains(&id), "{journal}");
    // The audit file has the upload, with what became of its webhook.
    let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    let line: Value = serde_json::from_str(audit.lines().last().unwrap()).unwrap();
    assert_eq!(
        (line["kind"].as_str(), line["delivery"].as_str()),
        (Some("upload.completed"), Some("pending"))
    );
    assert_eq!(
        (line["webhook_id"].as_str(), line["key"].as_str()),
        (Some(id.as_str()), Some(key.as_str()))
    );

    // Listed for reconciliation on the admin listener (admin token), with the exact body.
    let live = ossvend::reload::Live::new(
        state.clone(),
        ossvend::app,
        dir.path().join("unused.toml"),
        env_map(),
    );
    let admin = ossvend::routes::admin_app(live);
    let (status, _) = call(&admin, "GET", "/admin/webhooks/pending", &[], vec![]).await;
    assert_eq!(status, 401);
    let bearer = [("authorization", format!("Bearer {admin_token}"))];
    let (status, listed) = call(&admin, "GET", "/admin/webhooks/pending", &bearer, vec![]).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["pending"][0]["id"], id.as_str());
    assert_eq!(listed["pending"][0]["attempts"], 1);
    let listed_event: Value = serde_json::from_str(listed["pending"][0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        (listed_event["key"].as_str(), listed_event["size"].as_u64()),
        (Some(key.as_str()), Some(7))
    );
    drop(admin);

    // "Restart": the old state goes, a new one reads the journal.
    drop(router);
    drop(state);
    let state = state_for(&config, &base).await;
    let hooks = state.webhooks.clone().unwrap();
    assert_eq!(
        hooks
            .pending()
            .await
            .iter()
            .map(|p| p.id.as_str())
            .collect::<Vec<_>>(),
        [id.as_str()]
    );

    app.down.store(false, Ordering::SeqCst);
    let start = std::time::Instant::now();
    // Back-off starts at 5 s; a generous liveness bound.
    while !hooks.pending().await.is_empty() && start.elapsed() < std::time::Duration::from_secs(60) {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(hooks.pending().await.is_empty(), "not redelivered");
    let seen = app.seen();
    assert_eq!(seen.len(), 1, "exactly one delivery");
    assert_eq!(seen[0].0["webhook-id"], id);
    let events = python_verify_webhooks(&seen).unwrap();
    assert_eq!(
        (events[0]["key"].as_str(), events[0]["size"].as_u64()),
        (Some(key.as_str()), Some(7))
    );
    // The journal records the delivery: a further restart has nothing pending.
    drop(hooks);
    drop(state);
    let state = state_for(&config, &base).await;
    assert!(state.webhooks.as_ref().unwrap().pending().await.is_empty());
}

/// Fleet mode: an event pending on replica A is kept in Redis (sealed: no
/// object key, subject or webhook id in plain text), so when A goes (its state
/// dropped, no `data_dir`: its memory was all it had) replica B lists it at
/// `/admin/webhooks/pending` and redelivers it: one delivery, same webhook-id.
#[tokio::test]
async fn fleet_mode_a_pending_event_outlives_its_replica_and_another_redelivers_it() {
    let app = App::default();
    let base = start_app(app.clone()).await;
    let redis = crate::fleet::Redis::start();
    let admin_token = "admin-token-not-a-secret";
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(admin_token.as_bytes()));
    let config = callback_config(
        &base,
        &format!(
            "\n[admin]\ntoken_sha256 = \"{digest}\"\n\n[auth.tickets]\nsecret_env = \"OSSVEND_TICKET_KEY\"\n\n\
             [shared]\nurl = \"{}\"\nencryption_key_env = \"OSSVEND_SHARED_KEY\"\ncommand_timeout = \"3s\"\n",
            redis.url()
        ),
    );
    let a = state_for(&config, &base).await;
    let b = state_for(&config, &base).await;
    let router = ossvend::app(a.clone());
    let (key, callback, vars) = issue_presign(&router).await;
    let body = oss_fill(&callback, &vars, &key, 7, "0123456789ABCDEF0123456789ABCDEF");
    let signed = python_sign(&json!([{"path": "/v1/callbacks/oss", "query": null, "body": body}]));
    *app.key_pem.lock().unwrap() = signed["public_pem"].as_str().unwrap().to_string();

    app.down.store(true, Ordering::SeqCst);
    let (status, reply) = call(
        &router,
        "POST",
        "/v1/callbacks/oss",
        &[
            ("content-type", "application/json".into()),
            ("authorization", signed["signatures"][0].as_str().unwrap().into()),
            ("x-oss-pub-key-url", B64.encode(format!("{base}/key.pem"))),
        ],
        body.into_bytes(),
    )
    .await;
    assert_eq!(
        (status, reply["code"].as_str()),
        (503, Some("webhook_pending")),
        "{reply}"
    );
    let pending = a.webhooks.as_ref().unwrap().pending().await;
    assert_eq!(pending.len(), 1);
    let id = pending[0].id.clone();

    // Redis holds one sealed record: nothing readable in names or values.
    let dump = redis.dump();
    assert!(!dump.is_empty());
    for (k, v) in &dump {
        for word in [key.as_str(), id.as_str(), "photos", "upload.completed"] {
            assert!(!String::from_utf8_lossy(k).contains(word), "{word} in a key");
            assert!(!String::from_utf8_lossy(v).contains(word), "{word} in a value");
        }
    }

    // A goes away; its redelivery task with it (nothing else holds its sender).
    let a_hooks = Arc::downgrade(a.webhooks.as_ref().unwrap());
    drop(router);
    drop(a);
    assert!(
        a_hooks.upgrade().is_none(),
        "replica A's webhook sender still lives"
    );

    // B lists the fleet's pending event on its admin listener.
    let live = ossvend::reload::Live::new(b.clone(), ossvend::app, base.clone().into(), env_map());
    let admin = ossvend::routes::admin_app(live);
    let bearer = [("authorization", format!("Bearer {admin_token}"))];
    let (status, listed) = call(&admin, "GET", "/admin/webhooks/pending", &bearer, vec![]).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["pending"][0]["id"], id.as_str(), "{listed}");
    drop(admin);

    app.down.store(false, Ordering::SeqCst);
    let hooks = b.webhooks.clone().unwrap();
    let start = std::time::Instant::now();
    // Back-off starts at 5 s; a generous liveness bound.
    while !hooks.pending().await.is_empty() && start.elapsed() < std::time::Duration::from_secs(60) {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(hooks.pending().await.is_empty(), "not redelivered by B");
    let seen = app.seen();
    assert_eq!(seen.len(), 1, "exactly one delivery");
    assert_eq!(seen[0].0["webhook-id"], id);
    assert!(
        redis
            .dump()
            .iter()
            .all(|(k, _)| !String::from_utf8_lossy(k).contains("webhooks-pending"))
    );
}

/// A grant with a callback needs `[webhooks]`; S3-compatible signing cannot
/// carry one. The loopback key URL is trusted only as `ossvend local` sets it:
/// no config file can.
#[test]
fn callback_config_is_checked() {
    let env = env_map();
    let local = callback_config("http://127.0.0.1:1", "local_key_url = \"http://127.0.0.1:9/\"");
    let err = ossvend::config::parse(&local, &env).unwrap_err();
    assert!(err.contains("local_key_url"), "{err}");
    assert_eq!(
        ossvend::config::parse(&callback_config("http://127.0.0.1:1", ""), &env)
            .unwrap()
            .webhooks
            .local_key_url,
        None
    );
    let opts = ossvend::local::Options::default();
    let (main, oss) = (
        "127.0.0.1:8000".parse().unwrap(),
        "127.0.0.1:8001".parse().unwrap(),
    );
    let cfg = ossvend::local::local_config(&opts, main, oss, &env).unwrap();
    assert_eq!(
        cfg.webhooks.local_key_url.as_deref(),
        Some("http://127.0.0.1:8001/")
    );

    let text = callback_config("http://127.0.0.1:1", "").replace("[webhooks]", "[unused]");
    let text = text.replace(
        "url = \"http://127.0.0.1:1/hook\"\nsecret_env = \"OSSVEND_WEBHOOK_SECRET\"\n",
        "",
    );
    let cfg = ossvend::config::parse(&text.replace("[unused]", ""), &env).unwrap();
    let problems: Vec<String> = ossvend::config::validate(&cfg, &env)
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("grants[0].callback.url: a grant with a callback needs [webhooks]")),
        "{problems:?}"
    );

    let s3 = callback_config("http://127.0.0.1:1", "timeout = \"5s\"")
        .replace("content_types = [\"image/png\"]", "presign_scheme = \"s3-v4\"");
    let cfg = ossvend::config::parse(&s3, &env).unwrap();
    let problems: Vec<String> = ossvend::config::validate(&cfg, &env)
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("upload callbacks are an OSS feature")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.starts_with("webhooks.timeout")),
        "{problems:?}"
    );
}

// ---------------------------------------------------------------------------
// End to end in local mode: the embedded OSS sink performs the callbacks.

/// A multipart form: `fields` in order, then the file.
fn multipart(fields: &[(String, String)], file: &[u8], content_type: &str) -> (String, Vec<u8>) {
    let boundary = "----ossvendcallbacktest0b3e1f";
    let mut body = Vec::new();
    for (k, v) in fields {
        body.extend(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n").as_bytes(),
        );
    }
    body.extend(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"cat.png\"\r\nContent-Type: {content_type}\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend(file);
    body.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// ossvend's routes served over loopback TCP (the sink calls back over the network, as OSS does).
async fn serve_ossvend(listener: tokio::net::TcpListener, state: Arc<ossvend::state::AppState>) {
    let app = ossvend::app(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
}

/// Issue 18, end to end in local mode: a presigned PUT and a PostObject form,
/// each uploaded to the embedded sink, make the sink call ossvend back as OSS
/// does (its own RSA key, published on its listener and trusted only because
/// local mode says so); ossvend verifies and sends exactly one webhook per
/// upload with the stored object's real size, ETag and type (checked by the
/// stock `standardwebhooks` verifier); the application's reply reaches the
/// uploader. With the application down the uploader gets OSS's 203
/// `CallbackFailed`, the object is stored, and the event is pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_to_the_local_sink_call_back_and_each_makes_one_webhook() {
    let sts = FakeSts::start();
    let sink = EmbeddedOss::start(&sts, Some((CALLER_AK, CALLER_SECRET)));
    let app = App::default();
    let base = start_app(app.clone()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ossvend_base = format!("http://{}", listener.local_addr().unwrap());
    let config = callback_config(&base, "")
        .replace(
            "https://ossvend.example.com/v1/callbacks/oss",
            &format!("{ossvend_base}/v1/callbacks/oss"),
        )
        .replace(
            "signing = \"access_key\"\n",
            &format!("signing = \"access_key\"\nendpoint = \"{}\"\n", sink.endpoint),
        );
    let env = env_map();
    let mut cfg = ossvend::config::parse(&config, &env).unwrap();
    assert!(ossvend::config::validate(&cfg, &env).is_empty());
    cfg.webhooks.local_key_url = Some(format!("{}/", sink.endpoint));
    let state = ossvend::state::AppState::build(cfg, &env).await.unwrap();
    serve_ossvend(listener, state.clone()).await;
    let client = http();
    let png: Vec<u8> = b"\x89PNG\r\n\x1a\nnot really a picture, 43 bytes long".to_vec();

    // Presigned PUT.
    let presign: Value = client
        .get(format!(
            "{ossvend_base}/v1/grants/photos/presign?filename=cat.png&content_type=image/png"
        ))
        .header("x-request-id", "req-put-1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Exactly the headers that were signed (Content-Type, x-oss-forbid-overwrite).
    let mut put = client.put(presign["url"].as_str().unwrap());
    for (name, value) in presign["headers"].as_object().unwrap() {
        put = put.header(name.as_str(), value.as_str().unwrap());
    }
    let put = put.body(png.clone()).send().await.unwrap();
    let status = put.status().as_u16();
    let put_etag = put.headers()["etag"]
        .to_str()
        .unwrap()
        .trim_matches('"')
        .to_string();
    let reply: Value = put.json().await.unwrap();
    assert_eq!(
        (status, &reply),
        (200, &json!({"recorded": true, "photo_id": 42})),
        "{}",
        sink.log_text()
    );

    // PostObject form, the fields in order, the file last.
    let raw = client
        .get(format!(
            "{ossvend_base}/v1/grants/photos/post-policy?filename=dog.png&content_type=image/png"
        ))
        .header("x-request-id", "req-form-1")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let form: Value = serde_json::from_str(&raw).unwrap();
    let (ct, body) = multipart(&ordered_fields(&raw), &png[..20], "image/png");
    let post = client
        .post(form["host"].as_str().unwrap())
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = post.status().as_u16();
    let post_etag = post.headers()["etag"]
        .to_str()
        .unwrap()
        .trim_matches('"')
        .to_string();
    let reply = post.text().await.unwrap();
    assert_eq!(status, 200, "{reply}\n{}", sink.log_text());
    assert_eq!(serde_json::from_str::<Value>(&reply).unwrap()["photo_id"], 42);

    // Exactly one verified webhook per upload, with what the sink stored.
    let seen = app.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let events = python_verify_webhooks(&seen).unwrap();
    let stored = sink.objects().await;
    for (event, (request_id, key, size, etag)) in events.iter().zip([
        (
            "req-put-1",
            presign["key"].as_str().unwrap(),
            png.len() as u64,
            put_etag.as_str(),
        ),
        (
            "req-form-1",
            form["key"].as_str().unwrap(),
            20,
            post_etag.as_str(),
        ),
    ]) {
        assert_eq!(event["request_id"], request_id);
        assert_eq!(
            (event["key"].as_str(), event["size"].as_u64()),
            (Some(key), Some(size))
        );
        assert_eq!(
            (event["etag"].as_str(), event["content_type"].as_str()),
            (Some(etag), Some("image/png"))
        );
        let meta = stored.iter().find(|m| m.key == key).unwrap();
        assert_eq!((meta.size, meta.etag.trim_matches('"')), (size, etag));
    }

    // A client forging the callback straight to ossvend (its own key) is refused.
    let forged = client
        .post(format!("{ossvend_base}/v1/callbacks/oss"))
        .header("content-type", "application/json")
        .header("authorization", B64.encode([7u8; 128]))
        .header(
            "x-oss-pub-key-url",
            B64.encode(format!("{}/_ossvend/callback_pub_key_v1.pem", sink.endpoint)),
        )
        .body(seen[0].1.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 403);
    assert_eq!(app.seen().len(), 2);

    // The application down: the uploader gets 203 CallbackFailed, the object is kept, the event pending.
    app.down.store(true, Ordering::SeqCst);
    let presign: Value = client
        .get(format!(
            "{ossvend_base}/v1/grants/photos/presign?filename=late.png&content_type=image/png"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut put = client.put(presign["url"].as_str().unwrap());
    for (name, value) in presign["headers"].as_object().unwrap() {
        put = put.header(name.as_str(), value.as_str().unwrap());
    }
    let put = put.body(png.clone()).send().await.unwrap();
    assert_eq!(put.status().as_u16(), 203);
    assert!(put.text().await.unwrap().contains("<Code>CallbackFailed</Code>"));
    assert!(
        sink.objects()
            .await
            .iter()
            .any(|m| m.key == presign["key"].as_str().unwrap())
    );
    let pending = state.webhooks.as_ref().unwrap().pending().await;
    assert_eq!(pending.len(), 1);
    assert!(pending[0].body.contains(presign["key"].as_str().unwrap()));
}

/// A reload that leaves `[webhooks]` alone keeps the running sender (its
/// pending events and redelivery task); one that changes it builds a new one.
/// The local key URL (`ossvend local`'s, never in a file) survives a reload:
/// before the fix a reload dropped it, and the sink's callbacks were refused.
#[tokio::test]
async fn a_reload_keeps_the_webhook_sender_unless_webhooks_change() {
    let app = App::default();
    let base = start_app(app.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ossvend.toml");
    let config = callback_config(&base, "");
    std::fs::write(&path, &config).unwrap();
    let state = state_for(&config, &base).await;
    let live = ossvend::reload::Live::new(state.clone(), ossvend::app, path.clone(), env_map());
    let before = state.webhooks.clone().unwrap();

    std::fs::write(
        &path,
        config.replace("prefix = \"plain/\"", "prefix = \"other/\""),
    )
    .unwrap();
    let changes = live.reload("test").await.unwrap();
    assert!(
        !changes.sections_changed.contains(&"webhooks"),
        "{:?}",
        changes.sections_changed
    );
    assert!(Arc::ptr_eq(&before, live.state().webhooks.as_ref().unwrap()));
    assert_eq!(
        live.state().config.webhooks.local_key_url,
        Some(format!("{base}/"))
    );

    std::fs::write(
        &path,
        config.replace("[webhooks]\n", "[webhooks]\ntimeout = \"2s\"\n"),
    )
    .unwrap();
    let changes = live.reload("test").await.unwrap();
    assert!(
        changes.sections_changed.contains(&"webhooks"),
        "{:?}",
        changes.sections_changed
    );
    assert!(!Arc::ptr_eq(&before, live.state().webhooks.as_ref().unwrap()));
}

/// OSS waits 5 s in all: the webhook gets what verification left of a 4.5 s
/// window, not the full `webhooks.timeout`. A slow key fetch (2 s, a cold
/// cache) leaves 2.5 s, so an application taking 3 s misses it and the event
/// goes pending (OSS is answered in time); with the key cached, the same 3 s
/// application is within the 4 s timeout and gets it delivered.
#[tokio::test]
async fn the_webhook_gets_what_is_left_of_osss_window() {
    let app = App::default();
    let base = start_app(app.clone()).await;
    let state = state_for(&callback_config(&base, "timeout = \"4s\""), &base).await;
    let router = ossvend::app(state.clone());
    let (key, callback, vars) = issue_presign(&router).await;
    let bodies = [
        oss_fill(&callback, &vars, &key, 1, "11111111111111111111111111111111"),
        oss_fill(&callback, &vars, &key, 2, "22222222222222222222222222222222"),
    ];
    let reqs: Vec<Value> = bodies
        .iter()
        .map(|b| json!({"path": "/v1/callbacks/oss", "query": null, "body": b}))
        .collect();
    let signed = python_sign(&json!(reqs));
    *app.key_pem.lock().unwrap() = signed["public_pem"].as_str().unwrap().to_string();
    app.key_delay_ms.store(2000, Ordering::SeqCst);
    app.hook_delay_ms.store(3000, Ordering::SeqCst);
    let mut outcomes = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let (status, reply) = call(
            &router,
            "POST",
            "/v1/callbacks/oss",
            &[
                ("content-type", "application/json".into()),
                ("authorization", signed["signatures"][i].as_str().unwrap().into()),
                ("x-oss-pub-key-url", B64.encode(format!("{base}/key.pem"))),
            ],
            body.clone().into_bytes(),
        )
        .await;
        outcomes.push((status, reply["code"].as_str().map(str::to_string)));
    }
    assert_eq!(
        outcomes,
        [(503, Some("webhook_pending".to_string())), (200, None)]
    );
    let pending = state.webhooks.as_ref().unwrap().pending().await;
    assert_eq!(pending.len(), 1);
    assert!(pending[0].body.contains("\"size\":1"), "{}", pending[0].body);
}

/// Issue 18 × 17: an upload session's CompleteMultipartUpload, done by ossvend,
/// carries the grant's callback (`x-oss-callback`, `x-oss-callback-var`) with
/// `x:upload` = the upload id; the embedded sink calls back as OSS does, ossvend
/// verifies and sends exactly one webhook (stock `standardwebhooks` verifier)
/// with the stored object's real size, ETag, type and `upload`, and the complete
/// route hands back the callback's reply. A completion whose `x:upload` was
/// swapped (the other variables as ossvend signed them) is refused by the
/// receiver: OSS's 203 CallbackFailed, no webhook. Companion's complete (Uppy)
/// makes one webhook too. With the application down the complete route answers
/// 203 and the event is pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_upload_calls_back_once_with_its_upload_id_and_a_swapped_one_is_refused() {
    use ossvend::oss::{CallbackHeaders, ObjectRef, OssClient, OssSettings, OssSigning};
    use ossvend::sign::{AddressingStyle, Endpoint, SigningCredentials};

    let sts = FakeSts::start();
    let sink = EmbeddedOss::start(&sts, Some((CALLER_AK, CALLER_SECRET)));
    let app = App::default();
    let base = start_app(app.clone()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ossvend_base = format!("http://{}", listener.local_addr().unwrap());
    let receiver = format!("{ossvend_base}/v1/callbacks/oss");
    let videos = format!(
        r#"
[[grants]]
name = "videos"
bucket = "examplebucket"
region = "cn-hangzhou"
endpoint = "{}"
prefix = "videos/"
signing = "access_key"
actions = ["oss:PutObject", "oss:ListParts", "oss:AbortMultipartUpload"]
content_types = ["video/mp4"]
max_size_bytes = 1048576
multipart = true

[grants.callback]
url = "{receiver}"
"#,
        sink.endpoint
    );
    let config = callback_config(&base, "").replacen("\n[webhooks]", &format!("{videos}\n[webhooks]"), 1);
    let env = env_map();
    let mut cfg = ossvend::config::parse(&config, &env).unwrap();
    let problems = ossvend::config::validate(&cfg, &env);
    assert!(problems.is_empty(), "{problems:?}");
    cfg.webhooks.local_key_url = Some(format!("{}/", sink.endpoint));
    let state = ossvend::state::AppState::build(cfg, &env).await.unwrap();
    serve_ossvend(listener, state.clone()).await;
    let client = http();
    const PART: usize = 100 * 1024;
    let data: Vec<u8> = (0..PART + 4321).map(|i| (i * 7 % 251) as u8).collect();

    // Open, upload both parts through their presigned URLs, complete.
    let open = |name: &str| {
        client
            .post(format!("{ossvend_base}/v1/grants/videos/uploads"))
            .header("x-request-id", format!("req-{name}"))
            .json(
                &json!({"filename": format!("{name}.mp4"), "content_type": "video/mp4",
                          "size": data.len(), "part_size": PART}),
            )
            .send()
    };
    let base_ref = &ossvend_base;
    let upload_parts = |session: Value| {
        let client = client.clone();
        let data = data.clone();
        let ossvend_base = base_ref.clone();
        async move {
            let handle = session["upload"].as_str().unwrap();
            let parts: Value = client
                .get(format!(
                    "{ossvend_base}/v1/grants/videos/uploads/{handle}/parts?numbers=1-2"
                ))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            for (part, chunk) in parts["parts"].as_array().unwrap().iter().zip(data.chunks(PART)) {
                let put = client.put(part["url"].as_str().unwrap()).body(chunk.to_vec());
                assert_eq!(put.send().await.unwrap().status().as_u16(), 200);
            }
        }
    };
    let session: Value = open("clip").await.unwrap().json().await.unwrap();
    upload_parts(session.clone()).await;
    let handle = session["upload"].as_str().unwrap();
    let done = client
        .post(format!(
            "{ossvend_base}/v1/grants/videos/uploads/{handle}/complete"
        ))
        .header("x-request-id", "req-clip-complete")
        .send()
        .await
        .unwrap();
    let status = done.status().as_u16();
    let done: Value = done.json().await.unwrap();
    assert_eq!(status, 200, "{done}\n{}", sink.log_text());
    assert_eq!(
        done["callback"],
        json!({"status": 200, "body": {"recorded": true, "photo_id": 42}}),
        "{done}"
    );

    // Exactly one verified webhook, with what the sink stored and the upload id.
    let seen = app.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let events = python_verify_webhooks(&seen).unwrap();
    let key = session["key"].as_str().unwrap();
    let stored = sink.objects().await;
    let meta = stored.iter().find(|m| m.key == key).unwrap();
    assert_eq!(meta.size, data.len() as u64);
    let event = &events[0];
    assert_eq!(
        (
            event["key"].as_str(),
            event["size"].as_u64(),
            event["content_type"].as_str()
        ),
        (Some(key), Some(data.len() as u64), Some("video/mp4"))
    );
    assert_eq!(event["etag"].as_str(), Some(meta.etag.trim_matches('"')));
    assert_eq!(
        done["etag"].as_str().map(|e| e.trim_matches('"')),
        event["etag"].as_str()
    );
    assert!(event["etag"].as_str().unwrap().ends_with("-2"), "{event}");
    assert_eq!(event["upload"], session["upload_id"]);
    assert_eq!(
        (event["grant"].as_str(), event["request_id"].as_str()),
        (Some("videos"), Some("req-clip-complete"))
    );

    // A second session completed directly at the sink (as a holder of the grant's
    // credentials could) with variables ossvend signed for the first upload id but
    // x:upload swapped for the second's: the receiver refuses, OSS reports 203.
    let second: Value = open("swap").await.unwrap().json().await.unwrap();
    upload_parts(second.clone()).await;
    let signed_for_first = ossvend::callbacks::custom_vars(
        state.webhooks.as_ref().unwrap().vars_key(),
        &ossvend::callbacks::Issuance {
            grant: "videos".into(),
            subject: event["subject"].as_str().unwrap().into(),
            request_id: "req-swap".into(),
            prefix: "videos/".into(),
            upload: session["upload_id"].as_str().unwrap().into(),
        },
    );
    let mut swapped = signed_for_first.clone();
    swapped[4].1 = second["upload_id"].as_str().unwrap().into();
    let param = ossvend::callbacks::CallbackParam {
        url: &receiver,
        host: None,
        form_body: false,
        sni: false,
    }
    .to_base64();
    let oss = OssClient::new(OssSettings::default()).unwrap();
    let creds = SigningCredentials {
        access_key_id: CALLER_AK,
        access_key_secret: CALLER_SECRET,
        security_token: None,
    };
    let object = ObjectRef {
        endpoint: Endpoint {
            base: &sink.endpoint,
            style: AddressingStyle::Path,
        },
        region: "cn-hangzhou",
        bucket: "examplebucket",
        key: second["key"].as_str().unwrap(),
        signing: OssSigning::V4,
    };
    let second_id = second["upload_id"].as_str().unwrap();
    let listed = oss.list_parts(&creds, &object, second_id).await.unwrap();
    let chosen: Vec<(u32, String)> = listed.iter().map(|p| (p.number, p.etag.clone())).collect();
    let vars = ossvend::callbacks::vars_to_base64(&swapped);
    let headers = CallbackHeaders {
        param: &param,
        vars: &vars,
    };
    let refused = oss
        .complete_with(&creds, &object, second_id, &chosen, true, Some(headers))
        .await
        .unwrap();
    let reply = refused.callback.unwrap();
    assert_eq!(reply.status, 203, "{}", String::from_utf8_lossy(&reply.body));
    assert!(String::from_utf8_lossy(&reply.body).contains("CallbackFailed"));
    assert_eq!(app.seen().len(), 1, "no webhook for the swapped x:upload");
    assert!(state.webhooks.as_ref().unwrap().pending().await.is_empty());

    // Companion's S3 API (Uppy) over the same sessions: its complete carries the callback
    // too; Uppy's `{location, key, bucket}` answer gains `callback`.
    let companion = format!("{ossvend_base}/v1/grants/videos/companion/s3/multipart");
    let created: Value = client
        .post(&companion)
        .json(&json!({"filename": "uppy.mp4", "type": "video/mp4"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (uppy_handle, uppy_key) = (
        created["uploadId"].as_str().unwrap(),
        created["key"].as_str().unwrap(),
    );
    let key_q: String = url::form_urlencoded::byte_serialize(uppy_key.as_bytes()).collect();
    let mut claimed = Vec::new();
    for (i, chunk) in data.chunks(PART).enumerate() {
        let n = i + 1;
        let signed: Value = client
            .get(format!("{companion}/{uppy_handle}/{n}?key={key_q}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let put = client
            .put(signed["url"].as_str().unwrap())
            .body(chunk.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(put.status().as_u16(), 200);
        claimed.push(json!({"PartNumber": n, "ETag": put.headers()["etag"].to_str().unwrap()}));
    }
    let uppy_done = client
        .post(format!("{companion}/{uppy_handle}/complete?key={key_q}"))
        .json(&json!({ "parts": claimed }))
        .send()
        .await
        .unwrap();
    assert_eq!(uppy_done.status().as_u16(), 200);
    let uppy_done: Value = uppy_done.json().await.unwrap();
    assert_eq!(uppy_done["callback"]["body"]["photo_id"], 42, "{uppy_done}");
    assert!(uppy_done["location"].as_str().unwrap().ends_with(uppy_key));
    let seen = app.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let uppy_event = &python_verify_webhooks(&seen).unwrap()[1];
    assert_eq!(
        (uppy_event["key"].as_str(), uppy_event["size"].as_u64()),
        (Some(uppy_key), Some(data.len() as u64))
    );
    assert!(uppy_event["upload"].as_str().is_some_and(|u| !u.is_empty()));

    // The application down: the complete route answers 203 as OSS does, the object is
    // stored, and the event (with its upload id) is pending for redelivery.
    app.down.store(true, Ordering::SeqCst);
    let third: Value = open("late").await.unwrap().json().await.unwrap();
    upload_parts(third.clone()).await;
    let handle = third["upload"].as_str().unwrap();
    let late = client
        .post(format!(
            "{ossvend_base}/v1/grants/videos/uploads/{handle}/complete"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(late.status().as_u16(), 203);
    let late: Value = late.json().await.unwrap();
    assert_eq!(late["callback"]["status"], 203, "{late}");
    assert!(
        late["callback"]["body"]
            .as_str()
            .unwrap()
            .contains("CallbackFailed")
    );
    let third_key = third["key"].as_str().unwrap();
    assert!(sink.objects().await.iter().any(|m| m.key == third_key));
    let pending = state.webhooks.as_ref().unwrap().pending().await;
    assert_eq!(pending.len(), 1);
    let body: Value = serde_json::from_str(&pending[0].body).unwrap();
    assert_eq!(
        (&body["key"], &body["upload"]),
        (&third["key"], &third["upload_id"])
    );
}
