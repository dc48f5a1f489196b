//! Who is asking, through the real router in this process (`TestApp`, with the
//! in-process STS): API keys, JWTs verified against a
//! JWKS server run by the test (keys made here), tickets, per-user templates and
//! the injection table, CORS, rate limits and the audit trail.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::HeaderMap;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::support::*;

const ISSUER: &str = "https://issuer.test/";
const BACKEND_KEY: &str = "ovk_test-backend-key-not-a-secret";
const LIMITED_KEY: &str = "ovk_test-limited-key-not-a-secret";
/// API keys whose ids collide with JWT subjects on grant `mixed`.
const ALICE_KEY: &str = "ovk_test-alice-key-not-a-secret";
const JWT_ALICE_KEY: &str = "ovk_test-jwt-dot-alice-key-not-a-secret";

/// A signing key and its public JWK.
struct TestKey {
    kid: String,
    alg: Algorithm,
    enc: EncodingKey,
    jwk: Value,
}

fn es256(kid: &str) -> TestKey {
    use p256::pkcs8::EncodePrivateKey as _;
    let sk = p256::ecdsa::SigningKey::random(&mut rsa::rand_core::OsRng);
    let enc = EncodingKey::from_ec_der(sk.to_pkcs8_der().unwrap().as_bytes());
    let mut jwk =
        serde_json::to_value(jsonwebtoken::jwk::Jwk::from_encoding_key(&enc, Algorithm::ES256).unwrap())
            .unwrap();
    jwk["kid"] = json!(kid);
    TestKey {
        kid: kid.into(),
        alg: Algorithm::ES256,
        enc,
        jwk,
    }
}

fn ed25519(kid: &str) -> TestKey {
    use ed25519_dalek::pkcs8::EncodePrivateKey as _;
    let mut seed = [0u8; 32];
    rsa::rand_core::RngCore::fill_bytes(&mut rsa::rand_core::OsRng, &mut seed);
    let sk = ed25519_dalek::SigningKey::from_bytes(&seed);
    let enc = EncodingKey::from_ed_der(sk.to_pkcs8_der().unwrap().as_bytes());
    let x = URL_SAFE_NO_PAD.encode(sk.verifying_key().as_bytes());
    TestKey {
        kid: kid.into(),
        alg: Algorithm::EdDSA,
        enc,
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid}),
    }
}

impl TestKey {
    fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &self.enc).unwrap()
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn claims(sub: &str) -> Value {
    json!({ "iss": ISSUER, "aud": "ossvend", "sub": sub, "exp": now() + 600, "iat": now() })
}

/// The issuer's JWKS endpoint, run inside the test; counts fetches, keys swappable.
struct Jwks {
    url: String,
    keys: Arc<Mutex<Vec<Value>>>,
    hits: Arc<AtomicUsize>,
}

async fn start_jwks(keys: Vec<Value>) -> Jwks {
    let keys = Arc::new(Mutex::new(keys));
    let hits = Arc::new(AtomicUsize::new(0));
    let (k, h) = (keys.clone(), hits.clone());
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let (k, h) = (k.clone(), h.clone());
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                axum::Json(json!({ "keys": *k.lock().unwrap() }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Jwks { url, keys, hits }
}

fn auth_config(sts: &StsStub, jwks: &Jwks, audit_file: &std::path::Path) -> String {
    use ossvend::auth::api_key::hash_key;
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
default_grant = "users"

[identity]
source = "env"

[sts]
endpoint = "{sts}"
role_arn = "{ROLE_ARN}"
retry_base_delay = "10ms"

[auth.jwt]
jwks_url = "{jwks}"
issuer = "{ISSUER}"
audience = ["ossvend"]
template_claims = ["tenant"]
leeway = "5s"
refetch_cooldown = "1s"

[auth.tickets]
ttl = "2s"

[[auth.api_keys]]
id = "backend"
sha256 = "{backend}"

[[auth.api_keys]]
id = "limited"
sha256 = "{limited}"
grants = ["public"]

[[auth.api_keys]]
id = "alice"
sha256 = "{alice}"
grants = ["mixed"]

# An id that looks like a namespaced JWT subject.
[[auth.api_keys]]
id = "jwt.alice"
sha256 = "{jwt_alice}"
grants = ["mixed"]

[cors]
allowed_origins = ["http://app.test"]
allowed_origin_patterns = ["https://*.example.com"]
max_age = "60s"

[audit]
file = "{audit}"

[[grants]]
name = "users"
bucket = "examplebucket"
region = "cn-hangzhou"
prefix = "users/{{subject}}/"
session_name = "u-{{subject}}"
auth = ["jwt", "api_key", "ticket"]
# The API key ids here are the same users as the JWT subjects.
subjects = "shared"

# API keys and JWTs are separate id spaces here.
[[grants]]
name = "mixed"
bucket = "examplebucket"
region = "cn-hangzhou"
prefix = "m/{{subject}}/"
auth = ["api_key", "jwt", "ticket"]
subjects = "namespaced"

[[grants]]
name = "users2"
bucket = "examplebucket"
region = "cn-hangzhou"
prefix = "u2/{{subject}}/"
auth = ["api_key", "ticket"]

[[grants]]
name = "tenants"
bucket = "examplebucket"
region = "cn-hangzhou"
prefix = "t/{{claim.tenant}}/{{subject}}/"
auth = ["jwt"]

[[grants]]
name = "public"
bucket = "examplebucket"
region = "cn-hangzhou"
prefix = "pub/"
auth = ["none", "api_key"]
per_ip_per_minute = 120

[[grants]]
name = "limited"
bucket = "examplebucket"
region = "cn-hangzhou"
prefix = "lim/"
auth = ["api_key"]
per_subject_per_minute = 120
"#,
        sts = sts.endpoint,
        jwks = jwks.url,
        backend = hash_key(BACKEND_KEY),
        limited = hash_key(LIMITED_KEY),
        alice = hash_key(ALICE_KEY),
        jwt_alice = hash_key(JWT_ALICE_KEY),
        audit = audit_file.display(),
    )
}

struct Env {
    sts: StsStub,
    app: TestApp,
    jwks: Jwks,
    key: TestKey,
    audit: tempfile::NamedTempFile,
}

async fn start() -> Env {
    let key = es256("k1");
    let jwks = start_jwks(vec![key.jwk.clone()]).await;
    let sts = StsStub::start();
    let audit = tempfile::NamedTempFile::new().unwrap();
    let app = TestApp::new(&auth_config(&sts, &jwks, audit.path())).await;
    Env {
        sts,
        app,
        jwks,
        key,
        audit,
    }
}

async fn get(app: &TestApp, path: impl AsRef<str>, auth: Option<(&str, &str)>) -> (u16, HeaderMap, Value) {
    let headers: Vec<(&str, &str)> = auth.into_iter().collect();
    let r = app.get_with(path.as_ref(), &headers).await;
    let body = r.json();
    (r.status, r.headers, body)
}

fn bearer(token: &str) -> Option<(&'static str, String)> {
    Some(("authorization", format!("Bearer {token}")))
}

async fn get_as(
    app: &TestApp,
    path: impl AsRef<str>,
    auth: Option<(&str, String)>,
) -> (u16, HeaderMap, Value) {
    get(app, path, auth.as_ref().map(|(k, v)| (*k, v.as_str()))).await
}

#[tokio::test]
async fn each_user_gets_only_their_own_prefix_and_credential() {
    let e = start().await;
    let url = String::from("/v1/grants/users/credentials");
    let (s, _, alice) = get_as(&e.app, url.clone(), bearer(&e.key.sign(&claims("alice")))).await;
    assert_eq!(s, 200, "{alice}");
    let (s, _, bob) = get_as(&e.app, url.clone(), bearer(&e.key.sign(&claims("bob")))).await;
    assert_eq!(s, 200, "{bob}");
    assert_eq!(alice["Prefix"], "users/alice/");
    assert_eq!(bob["Prefix"], "users/bob/");
    assert_ne!(alice["AccessKeyId"], bob["AccessKeyId"]);
    // Alice again: her own cached credential, never Bob's.
    let (_, _, again) = get_as(&e.app, url, bearer(&e.key.sign(&claims("alice")))).await;
    assert_eq!(again["AccessKeyId"], alice["AccessKeyId"]);

    let calls = e.sts.calls().await;
    assert_eq!(calls.len(), 2);
    for (call, user) in calls.iter().zip(["alice", "bob"]) {
        let policy: Value = serde_json::from_str(call["params"]["Policy"].as_str().unwrap()).unwrap();
        assert_eq!(
            policy["Statement"][0]["Resource"],
            json!([format!("acs:oss:*:*:examplebucket/users/{user}/*")])
        );
        assert_eq!(call["params"]["RoleSessionName"], format!("u-{user}"));
    }
    // The audit trail: one record per issuance, who and what, never a secret.
    let audit = std::fs::read_to_string(e.audit.path()).unwrap();
    let records: Vec<Value> = audit.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 3);
    assert_eq!(records[0]["subject"], "alice");
    assert_eq!(records[0]["auth"], "jwt");
    assert_eq!(records[0]["kind"], "credentials");
    assert_eq!(records[0]["session_name"], "u-alice");
    assert_eq!(records[0]["client_ip"], "127.0.0.1");
    assert_eq!(records[2]["cache"], "hit");
    for field in [
        "time",
        "request_id",
        "grant",
        "policy_sha256",
        "access_key_id",
        "expiration",
    ] {
        assert!(records[0][field].is_string(), "audit record lacks {field}");
    }
    for secret in [
        &alice["AccessKeySecret"],
        &alice["SecurityToken"],
        &bob["AccessKeySecret"],
    ] {
        assert!(!audit.contains(secret.as_str().unwrap()));
        assert!(!e.app.logs.text().contains(secret.as_str().unwrap()));
    }
    assert!(
        !audit.contains(alice["AccessKeyId"].as_str().unwrap()),
        "full AccessKeyId in the audit"
    );
}

#[tokio::test]
async fn bad_tokens_are_401_with_a_challenge_and_cost_no_sts_call() {
    let e = start().await;
    let url = String::from("/v1/grants/users/credentials");
    let other = es256("k1"); // same kid, different key: a forged signature
    let mut wrong_aud = claims("alice");
    wrong_aud["aud"] = json!("someone-else");
    let mut wrong_iss = claims("alice");
    wrong_iss["iss"] = json!("https://evil.test/");
    let mut expired = claims("alice");
    expired["exp"] = json!(now() - 120);
    let mut not_yet = claims("alice");
    not_yet["nbf"] = json!(now() + 600);
    let alg_none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#),
        URL_SAFE_NO_PAD.encode(claims("alice").to_string())
    );
    let cases = [
        ("expired", e.key.sign(&expired)),
        ("not yet valid", e.key.sign(&not_yet)),
        ("wrong audience", e.key.sign(&wrong_aud)),
        ("wrong issuer", e.key.sign(&wrong_iss)),
        ("bad signature", other.sign(&claims("alice"))),
        ("alg none", alg_none),
        ("garbage", "not.a.jwt".into()),
    ];
    for (name, token) in cases {
        let (s, h, body) = get_as(&e.app, url.clone(), bearer(&token)).await;
        assert_eq!(s, 401, "{name}: {body}");
        assert_eq!(body["code"], "invalid_credentials", "{name}");
        let challenge = h["www-authenticate"].to_str().unwrap();
        assert!(
            challenge.contains("Bearer realm=\"ossvend\", error=\"invalid_token\""),
            "{name}: {challenge}"
        );
    }
    // No credentials at all on a grant that needs them.
    let (s, h, body) = get(&e.app, url, None).await;
    assert_eq!((s, body["code"].as_str().unwrap()), (401, "unauthenticated"));
    let challenge = h["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains("Bearer") && challenge.contains("ApiKey") && challenge.contains("Ticket"),
        "{challenge}"
    );
    assert_eq!(e.sts.call_count().await, 0);
    // A bad token is an error even where anonymous callers are welcome.
    let (s, _, _) = get_as(&e.app, "/v1/grants/public/credentials", bearer("not.a.jwt")).await;
    assert_eq!(
        s, 403,
        "a bearer token on a grant that does not accept jwt is refused, not ignored"
    );
    // Logs are written by a background thread: wait for the line.
    assert!(
        e.app
            .logs
            .wait_for("authentication failed", Duration::from_secs(5))
            .await
    );
    let logs = e.app.logs.text();
    assert!(
        !logs.contains(&e.key.sign(&claims("alice"))[..40]),
        "a token reached the logs"
    );
}

#[tokio::test]
async fn unknown_kid_refetches_once_then_key_rotation_is_picked_up() {
    let e = start().await;
    let url = String::from("/v1/grants/users/credentials");
    assert_eq!(
        get_as(&e.app, url.clone(), bearer(&e.key.sign(&claims("alice"))))
            .await
            .0,
        200
    );
    let fetches = e.jwks.hits.load(Ordering::SeqCst);
    assert_eq!(fetches, 1);

    // A token from a key the issuer has not published: one refetch (once the
    // cooldown since the last fetch has passed), then 401.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let new_key = ed25519("k2");
    let (s, _, body) = get_as(&e.app, url.clone(), bearer(&new_key.sign(&claims("alice")))).await;
    assert_eq!(s, 401, "{body}");
    assert_eq!(e.jwks.hits.load(Ordering::SeqCst), 2);
    // Within the cooldown, more unknown kids do not hammer the issuer.
    for _ in 0..5 {
        assert_eq!(
            get_as(&e.app, url.clone(), bearer(&new_key.sign(&claims("alice"))))
                .await
                .0,
            401
        );
    }
    assert_eq!(e.jwks.hits.load(Ordering::SeqCst), 2);

    // The issuer rotates: k2 published, k1 retired. After the cooldown k2 works.
    *e.jwks.keys.lock().unwrap() = vec![new_key.jwk.clone()];
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (s, _, body) = get_as(&e.app, url.clone(), bearer(&new_key.sign(&claims("alice")))).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["Prefix"], "users/alice/");
}

#[tokio::test]
async fn api_keys_are_checked_and_bound_to_their_grants() {
    let e = start().await;
    let key = |k: &'static str| Some(("x-api-key", k));
    let (s, _, body) = get(&e.app, "/v1/grants/users/credentials", key(BACKEND_KEY)).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["Prefix"], "users/backend/");
    let (s, _, body) = get(
        &e.app,
        "/v1/grants/users/credentials",
        Some(("authorization", "ApiKey ovk_wrong")),
    )
    .await;
    assert_eq!((s, body["code"].as_str().unwrap()), (401, "invalid_credentials"));
    // AWS SDKs send AWS_CONTAINER_AUTHORIZATION_TOKEN verbatim: a bare key works too.
    let (s, _, body) = get(
        &e.app,
        "/v1/grants/users/credentials?format=aws",
        Some(("authorization", BACKEND_KEY)),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert!(body["SecretAccessKey"].is_string());
    // A valid key outside its allowed grants.
    let (s, _, body) = get(&e.app, "/v1/grants/users/credentials", key(LIMITED_KEY)).await;
    assert_eq!((s, body["code"].as_str().unwrap()), (403, "grant_not_allowed"));
    assert_eq!(
        get(&e.app, "/v1/grants/public/credentials", key(LIMITED_KEY))
            .await
            .0,
        200
    );
    // A valid key on a grant that does not accept API keys.
    let (s, _, body) = get(&e.app, "/v1/grants/tenants/credentials", key(BACKEND_KEY)).await;
    assert_eq!(
        (s, body["code"].as_str().unwrap()),
        (403, "auth_method_not_allowed")
    );
}

async fn mint(e: &Env, grant: &str, auth: Option<(&str, &str)>) -> (u16, Value) {
    let headers: Vec<(&str, &str)> = auth.into_iter().collect();
    let r = e
        .app
        .post_json("/v1/tickets", &headers, &json!({ "grant": grant }))
        .await;
    (r.status, serde_json::from_slice(&r.body).unwrap())
}

#[tokio::test]
async fn tickets_are_bound_to_subject_grant_and_expiry() {
    let e = start().await;
    let (s, t) = mint(&e, "users", Some(("x-api-key", BACKEND_KEY))).await;
    assert_eq!(s, 201, "{t}");
    let ticket = t["ticket"].as_str().unwrap().to_string();
    assert!(
        t["credentials_url"]
            .as_str()
            .unwrap()
            .starts_with("/v1/grants/users/credentials?ticket=")
    );

    // What a mobile SDK does: a plain GET of the URL, no headers.
    let (s, _, body) = get(&e.app, t["credentials_url"].as_str().unwrap(), None).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["Prefix"], "users/backend/");
    assert_eq!(body["StatusCode"], 200);
    // Another grant that accepts tickets: this one was not issued for it.
    let (s, _, body) = get(
        &e.app,
        format!("/v1/grants/users2/credentials?ticket={ticket}"),
        None,
    )
    .await;
    assert_eq!((s, body["code"].as_str().unwrap()), (403, "wrong_grant"));
    // A tampered ticket.
    let mut tampered = ticket.clone();
    tampered.insert(3, if tampered.as_bytes()[3] == b'A' { 'B' } else { 'A' });
    let (s, _, _) = get(
        &e.app,
        format!("/v1/grants/users/credentials?ticket={tampered}"),
        None,
    )
    .await;
    assert_eq!(s, 401);
    // Minting needs an authenticated caller, and a grant that takes tickets.
    assert_eq!(mint(&e, "users", None).await.0, 401);
    assert_eq!(mint(&e, "public", Some(("x-api-key", BACKEND_KEY))).await.0, 403);
    // Replay after expiry (ttl 2 s).
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let (s, _, body) = get(
        &e.app,
        format!("/v1/grants/users/credentials?ticket={ticket}"),
        None,
    )
    .await;
    assert_eq!((s, body["code"].as_str().unwrap()), (401, "invalid_credentials"));
    assert!(!e.app.logs.text().contains(&ticket), "a ticket reached the logs");
    // A body that is JSON but lacks the fields, or is not JSON: one answer, 400 bad_request (was 422 for `{}`).
    for (body, content_type) in [
        ("{}", "application/json"),
        ("grant=users", "application/x-www-form-urlencoded"),
    ] {
        let headers = [("x-api-key", BACKEND_KEY), ("content-type", content_type)];
        let r = e
            .app
            .request("POST", "/v1/tickets", &headers, Body::from(body))
            .await;
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(
            serde_json::from_slice::<Value>(&r.body).unwrap()["code"],
            "bad_request",
            "{body}"
        );
    }
}

/// Issue 13 item 4: an API key whose id is `alice` and a JWT whose `sub` is
/// `alice` are different callers. On a grant accepting both they must get
/// different prefixes, policies and STS credentials, and so must an API key
/// whose id itself looks namespaced (`jwt.alice`); tickets keep the namespace
/// of whoever minted them.
#[tokio::test]
async fn api_key_and_jwt_subjects_with_the_same_name_never_share_a_prefix_or_credential() {
    let e = start().await;
    let url = String::from("/v1/grants/mixed/credentials");
    let (s, _, by_key) = get(&e.app, url.clone(), Some(("x-api-key", ALICE_KEY))).await;
    assert_eq!(s, 200, "{by_key}");
    let (s, _, by_jwt) = get_as(&e.app, url.clone(), bearer(&e.key.sign(&claims("alice")))).await;
    assert_eq!(s, 200, "{by_jwt}");
    let (s, _, by_dotted_key) = get(&e.app, url.clone(), Some(("x-api-key", JWT_ALICE_KEY))).await;
    assert_eq!(s, 200, "{by_dotted_key}");
    let prefixes = [&by_key["Prefix"], &by_jwt["Prefix"], &by_dotted_key["Prefix"]];
    let key_ids = [
        &by_key["AccessKeyId"],
        &by_jwt["AccessKeyId"],
        &by_dotted_key["AccessKeyId"],
    ];
    println!(
        "prefixes {prefixes:?}, credentials {key_ids:?}, STS calls {}",
        e.sts.call_count().await
    );
    assert_eq!(
        prefixes,
        [
            &json!("m/api_key.alice/"),
            &json!("m/jwt.alice/"),
            &json!("m/api_key.jwt.alice/")
        ]
    );
    assert_ne!(by_key["AccessKeyId"], by_jwt["AccessKeyId"]);
    assert_ne!(by_dotted_key["AccessKeyId"], by_jwt["AccessKeyId"]);
    assert_ne!(by_dotted_key["AccessKeyId"], by_key["AccessKeyId"]);
    // One AssumeRole per principal, each narrowed to its own prefix.
    let calls = e.sts.calls().await;
    assert_eq!(calls.len(), 3);
    let resources: Vec<Value> = calls
        .iter()
        .map(|c| {
            let policy: Value = serde_json::from_str(c["params"]["Policy"].as_str().unwrap()).unwrap();
            policy["Statement"][0]["Resource"].clone()
        })
        .collect();
    assert_eq!(
        resources,
        [
            json!(["acs:oss:*:*:examplebucket/m/api_key.alice/*"]),
            json!(["acs:oss:*:*:examplebucket/m/jwt.alice/*"]),
            json!(["acs:oss:*:*:examplebucket/m/api_key.jwt.alice/*"]),
        ]
    );

    // A ticket carries the namespace of whoever minted it: the API key's
    // ticket gets the API key's cached credential, never the JWT user's.
    let (s, t) = mint(&e, "mixed", Some(("x-api-key", ALICE_KEY))).await;
    assert_eq!(s, 201, "{t}");
    let (s, _, by_ticket) = get(&e.app, t["credentials_url"].as_str().unwrap(), None).await;
    assert_eq!(s, 200, "{by_ticket}");
    assert_eq!(by_ticket["Prefix"], "m/api_key.alice/");
    assert_eq!(by_ticket["AccessKeyId"], by_key["AccessKeyId"]);
    let token = e.key.sign(&claims("alice"));
    let (s, t) = mint(&e, "mixed", Some(("authorization", &format!("Bearer {token}")))).await;
    assert_eq!(s, 201, "{t}");
    let (s, _, by_ticket) = get(&e.app, t["credentials_url"].as_str().unwrap(), None).await;
    assert_eq!(s, 200, "{by_ticket}");
    assert_eq!(by_ticket["Prefix"], "m/jwt.alice/");
    assert_eq!(by_ticket["AccessKeyId"], by_jwt["AccessKeyId"]);
    assert_eq!(
        e.sts.call_count().await,
        3,
        "tickets reuse their minter's credential"
    );
}

/// Subjects and claims that must never reach a policy, and ones that must,
/// verbatim. Printed as a table for the issue note.
#[tokio::test]
async fn injection_table() {
    let e = start().await;
    let long65 = "a".repeat(65);
    let long64 = "b".repeat(64);
    let refused = [
        "*", "a*", "../x", "a/b", "\"", "%2F", "a?b", "a b", "tab\tx", "аlice", /* Cyrillic а */
        "ａlice", /* fullwidth */ &long65, "", "a..b", "x}{y",
    ];
    println!("| subject | credentials | explain |");
    for sub in refused {
        let token = e.key.sign(&claims(sub));
        let (s1, _, b1) = get_as(&e.app, "/v1/grants/users/credentials", bearer(&token)).await;
        let (s2, _, b2) = get_as(&e.app, "/v1/grants/users/explain", bearer(&token)).await;
        println!("| {sub:?} | {s1} {} | {s2} {} |", b1["code"], b2["code"]);
        // An empty subject is no subject at all (401); every other value is 403.
        let expected = if sub.is_empty() { 401 } else { 403 };
        assert_eq!(s1, expected, "{sub:?}: {b1}");
        assert_eq!(s2, expected, "{sub:?}: {b2}");
        if !sub.is_empty() {
            assert_eq!(b1["code"], "invalid_principal", "{sub:?}");
        }
    }
    // The same through a claim.
    for tenant in ["*", "a/b", "../t"] {
        let mut c = claims("alice");
        c["tenant"] = json!(tenant);
        let (s, _, b) = get_as(&e.app, "/v1/grants/tenants/credentials", bearer(&e.key.sign(&c))).await;
        println!("| tenant {tenant:?} | {s} {} | |", b["code"]);
        assert_eq!(
            (s, b["code"].as_str().unwrap()),
            (403, "invalid_principal"),
            "tenant {tenant:?}"
        );
    }
    assert_eq!(
        e.sts.call_count().await,
        0,
        "a refused caller must cost no STS call"
    );

    for sub in ["alice", "a.b-c_d@e.f", long64.as_str()] {
        let (s, _, b) = get_as(
            &e.app,
            "/v1/grants/users/explain",
            bearer(&e.key.sign(&claims(sub))),
        )
        .await;
        println!("| {sub:?} | | {s} {} |", b["policy"]["Statement"][0]["Resource"]);
        assert_eq!(s, 200, "{sub:?}: {b}");
        assert_eq!(
            b["policy"]["Statement"][0]["Resource"],
            json!([format!("acs:oss:*:*:examplebucket/users/{sub}/*")])
        );
        assert_eq!(b["prefix"], format!("users/{sub}/"));
        assert_eq!(
            b["session_name"],
            format!("u-{sub}").chars().take(64).collect::<String>()
        );
    }
    let mut c = claims("alice");
    c["tenant"] = json!("acme");
    let (s, _, b) = get_as(&e.app, "/v1/grants/tenants/explain", bearer(&e.key.sign(&c))).await;
    assert_eq!(s, 200);
    assert_eq!(
        b["policy"]["Statement"][0]["Resource"],
        json!(["acs:oss:*:*:examplebucket/t/acme/alice/*"])
    );
    assert_eq!(e.sts.call_count().await, 0, "explain never calls STS");
}

#[tokio::test]
async fn cors_preflight_allows_only_configured_origins() {
    let e = start().await;
    let preflight = |origin: &'static str| {
        let headers = [
            ("origin", origin),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "authorization"),
        ];
        let app = &e.app;
        async move {
            app.request("OPTIONS", "/v1/grants/users/credentials", &headers, Body::empty())
                .await
        }
    };
    for origin in ["http://app.test", "https://shop.example.com"] {
        let r = preflight(origin).await;
        assert!((200..300).contains(&r.status), "{origin}: {}", r.status);
        assert_eq!(r.headers["access-control-allow-origin"], origin);
        assert!(r.header("access-control-allow-headers").contains("authorization"));
        assert_eq!(r.headers["access-control-max-age"], "60");
        assert!(r.headers.get("access-control-allow-credentials").is_none());
    }
    for origin in [
        "http://evil.test",
        "https://example.com.evil.test",
        "https://example.com",
    ] {
        let r = preflight(origin).await;
        assert!(
            r.headers.get("access-control-allow-origin").is_none(),
            "{origin} was allowed"
        );
    }
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after_then_recover() {
    let e = start().await;
    // 120 per minute: a burst of 120, then one more every half second. The loop
    // bound is generous so a slow machine (refills while it loops) still gets there.
    for (grant, auth) in [("limited", Some(("x-api-key", BACKEND_KEY))), ("public", None)] {
        let url = format!("/v1/grants/{grant}/explain");
        let mut limited = None;
        for i in 0..2000 {
            let (s, h, body) = get(&e.app, url.clone(), auth).await;
            if s == 429 {
                assert_eq!(body["code"], "rate_limited");
                limited = Some((i, h["retry-after"].to_str().unwrap().parse::<u64>().unwrap()));
                break;
            }
            assert_eq!(s, 200, "{grant}: {body}");
        }
        let (at, retry_after) = limited.unwrap_or_else(|| panic!("{grant}: never limited"));
        assert!(at >= 100, "{grant}: limited after only {at} requests");
        assert!(retry_after >= 1);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(get(&e.app, url, auth).await.0, 200, "{grant}: did not recover");
    }
}

/// Issue 13 item 7d/7e: credentials are never guessed. Two of the same kind
/// (headers, ticket parameters, or an X-Api-Key and an `Authorization` key that
/// disagree) are refused 400 `ambiguous_credentials` instead of first-wins; the
/// auth scheme is parsed per RFC 9110, so `Bearer<TAB>token` is a bearer token,
/// not an API key.
#[tokio::test]
async fn ambiguous_credentials_are_refused_and_schemes_are_parsed() {
    let e = start().await;
    let mut c = claims("alice");
    c["tenant"] = json!("acme");
    let jwt = e.key.sign(&c);
    let explain = |grant: &str, query: &str| format!("/v1/grants/{grant}/explain{query}");
    let app = &e.app;
    let send = |url: String, headers: Vec<(&'static str, String)>| async move {
        let mut req = axum::http::Request::get(url);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let r = app.send(req.body(Body::empty()).unwrap()).await;
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        (r.status, body)
    };

    // A tab (or several spaces) after the scheme: still Bearer, on a JWT-only grant.
    for sep in ["\t", "  ", " \t "] {
        let (s, body) = send(
            explain("tenants", ""),
            vec![("authorization", format!("Bearer{sep}{jwt}"))],
        )
        .await;
        assert_eq!(s, 200, "Bearer{sep:?}: {body}");
    }
    // A bad token after a tab is a bad bearer token (401), not an unknown API key.
    let (s, body) = send(
        explain("tenants", ""),
        vec![("authorization", "Bearer\tnot-a-jwt".into())],
    )
    .await;
    assert_eq!(
        (s, body["code"].as_str().unwrap()),
        (401, "invalid_credentials"),
        "{body}"
    );

    let (_, t) = mint(&e, "users", Some(("x-api-key", BACKEND_KEY))).await;
    let ticket = t["ticket"].as_str().unwrap().to_string();
    let ambiguous: Vec<(String, Vec<(&'static str, String)>)> = vec![
        (
            explain("users", ""),
            vec![
                ("authorization", format!("Bearer {jwt}")),
                ("authorization", format!("Bearer {jwt}")),
            ],
        ),
        (
            explain("users", ""),
            vec![
                ("authorization", format!("ApiKey {BACKEND_KEY}")),
                ("authorization", format!("Bearer {jwt}")),
            ],
        ),
        (
            explain("users", ""),
            vec![
                ("x-api-key", BACKEND_KEY.into()),
                ("x-api-key", LIMITED_KEY.into()),
            ],
        ),
        (
            explain("users", ""),
            vec![
                ("x-api-key", BACKEND_KEY.into()),
                ("authorization", format!("ApiKey {LIMITED_KEY}")),
            ],
        ),
        (
            explain("users", ""),
            vec![
                ("x-api-key", BACKEND_KEY.into()),
                ("authorization", LIMITED_KEY.into()),
            ],
        ),
        (
            explain("users", &format!("?ticket={ticket}&ticket={ticket}")),
            vec![],
        ),
        (
            explain("users", &format!("?ticket={ticket}&ticket=other")),
            vec![],
        ),
    ];
    for (url, headers) in ambiguous {
        let shown = format!("{url} {headers:?}");
        let (s, body) = send(url, headers).await;
        assert_eq!(
            (s, body["code"].as_str().unwrap_or_default()),
            (400, "ambiguous_credentials"),
            "{shown}: {body}"
        );
        assert!(!body.to_string().contains(BACKEND_KEY), "{body}");
    }
    // The same key both ways is not ambiguous.
    let (s, body) = send(
        explain("users", ""),
        vec![
            ("x-api-key", BACKEND_KEY.into()),
            ("authorization", format!("ApiKey {BACKEND_KEY}")),
        ],
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(e.sts.call_count().await, 0);
}

/// Issue 15: the grant routes authorize through one extractor; what a request
/// with several faults is refused for first stays as it was when each handler
/// looked up the grant, parsed `format` and read its body before authenticating.
#[tokio::test]
async fn what_is_refused_first_is_unchanged_by_the_extractor() {
    let e = start().await;
    let code = |v: &Value| v["code"].as_str().unwrap_or_default().to_owned();
    // An unknown grant before a bad `format`, a bad `format` before authentication.
    for (path, want) in [
        ("/v1/grants/nope/credentials?format=bogus", (404, "unknown_grant")),
        (
            "/v1/grants/users/credentials?format=bogus",
            (400, "unknown_format"),
        ),
        ("/v1/grants/nope/post-policy", (404, "unknown_grant")),
        ("/v1/grants/users/post-policy", (401, "unauthenticated")),
        ("/v1/grants/nope/explain", (404, "unknown_grant")),
        ("/v1/grants/users/explain", (401, "unauthenticated")),
    ] {
        let (s, _, body) = get(&e.app, path, None).await;
        assert_eq!((s, code(&body).as_str()), want, "{path}: {body}");
    }
    // A presign body that is not JSON is refused before the grant and the caller.
    for grant in ["nope", "users"] {
        let r = e
            .app
            .request(
                "POST",
                &format!("/v1/grants/{grant}/presign"),
                &[("content-type", "application/json")],
                Body::from("{"),
            )
            .await;
        let s = r.status;
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!((s, code(&body).as_str()), (400, "bad_request"), "{grant}: {body}");
    }
    assert_eq!(e.sts.call_count().await, 0);
}
