//! The server's own identity (issue 5), each source tested through the real
//! application in this process (`TestApp`, built as `ossvend serve` builds it, with
//! only the environment the test gives it): a grant's credentials are requested and the fake STS must
//! show that the grant's AssumeRole was signed by that identity's key (and, for
//! temporary identities, carried its SecurityToken). The fake STS also plays
//! instance metadata, the credentials URI and AssumeRoleWithOIDC, and accepts
//! every credential it issued as a caller key until it expires.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::*;
use base64::Engine;
use serde_json::{Value, json};

const STATIC_AK: &str = "LTAIstaticTestKey0002";
const STATIC_SECRET: &str = "staticTestSecretDoNotUse0002";
const OSS_AK: &str = "LTAIossEnvTestKeyId0003";
const OSS_SECRET: &str = "ossEnvTestSecretDoNotUse0003";
const PROFILE_AK: &str = "LTAIprofileTestKey0004";
const PROFILE_SECRET: &str = "profileTestSecretDoNotUse0004";
const OTHER_PROFILE_AK: &str = "LTAIotherProfileKey0005";
const OTHER_PROFILE_SECRET: &str = "otherProfileSecretDoNotUse0005";
const CHAIN_PROFILE_AK: &str = "LTAIchainProfileKey0006";
const CHAIN_PROFILE_SECRET: &str = "chainProfileSecretDoNotUse0006";
const INI_AK: &str = "LTAIiniTestKeyId0007";
const INI_SECRET: &str = "iniTestSecretDoNotUse0007";
const INI_ROLE_AK: &str = "LTAIiniRoleTestKey0008";
const INI_ROLE_SECRET: &str = "iniRoleTestSecretDoNotUse0008";

const INTERMEDIATE_ARN: &str = "acs:ram::1234567890123456:role/intermediate";
const OIDC_ROLE_ARN: &str = "acs:ram::1234567890123456:role/ack-pod-role";
const OIDC_PROVIDER_ARN: &str = "acs:ram::1234567890123456:oidc-provider/ack-rrsa-c0ffee";

/// Every long-term key of this file, registered with the fake STS.
const KEYS: &[(&str, &str)] = &[
    (STATIC_AK, STATIC_SECRET),
    (OSS_AK, OSS_SECRET),
    (PROFILE_AK, PROFILE_SECRET),
    (OTHER_PROFILE_AK, OTHER_PROFILE_SECRET),
    (CHAIN_PROFILE_AK, CHAIN_PROFILE_SECRET),
    (INI_AK, INI_SECRET),
    (INI_ROLE_AK, INI_ROLE_SECRET),
];

/// Long-term secrets that must never reach a log.
const LONG_TERM_SECRETS: &[&str] = &[
    CALLER_SECRET,
    STATIC_SECRET,
    OSS_SECRET,
    PROFILE_SECRET,
    OTHER_PROFILE_SECRET,
    CHAIN_PROFILE_SECRET,
    INI_SECRET,
    INI_ROLE_SECRET,
];

fn fake_sts() -> FakeSts {
    FakeSts::start_with_keys(KEYS)
}

/// Two grants (so a cache miss can be forced), the given identity block
/// (empty = no `[identity]` section: the default chain).
fn cfg(sts: &str, identity: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
default_grant = "browser-upload"

{identity}

[sts]
endpoint = "{sts}"
role_arn = "{ROLE_ARN}"
max_retries = 2
retry_base_delay = "10ms"

[[grants]]
name = "browser-upload"
bucket = "examplebucket"
region = "cn-hangzhou"
prefix = "uploads/"
actions = ["oss:PutObject"]

[[grants]]
name = "avatars"
bucket = "examplebucket"
region = "cn-hangzhou"
prefix = "avatars/"
actions = ["oss:PutObject", "oss:GetObject"]
"#
    )
}

async fn get(server: &TestApp, path: &str) -> (u16, Value) {
    let r = server.get(path).await;
    let body = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r.status, body)
}

/// A grant's credentials; must succeed.
async fn creds(server: &TestApp, grant: &str) -> Value {
    let (status, body) = get(server, &format!("/v1/grants/{grant}/credentials")).await;
    assert_eq!(
        status,
        200,
        "GET credentials of {grant}: {body}\nlogs:\n{}",
        server.logs.text()
    );
    assert!(body["AccessKeyId"].as_str().unwrap().starts_with("STS."));
    body
}

async fn readyz(server: &TestApp) -> (u16, Value) {
    get(server, "/readyz").await
}

/// The grants' AssumeRole calls (the role every grant assumes), in order.
async fn grant_calls(sts: &FakeSts) -> Vec<Value> {
    sts.calls()
        .await
        .into_iter()
        .filter(|c| c["params"]["Action"] == "AssumeRole" && c["params"]["RoleArn"] == ROLE_ARN)
        .collect()
}

async fn calls_of(sts: &FakeSts, action: &str) -> Vec<Value> {
    sts.calls()
        .await
        .into_iter()
        .filter(|c| c["params"]["Action"] == action)
        .collect()
}

/// The call passed verification and was signed by `ak`, with `token` as its
/// SecurityToken parameter (`None`: no SecurityToken at all).
fn assert_signed_by(call: &Value, ak: &str, token: Option<&str>) {
    assert_eq!(call["verified"], true, "not verified: {call}");
    assert_eq!(call["outcome"], "OK", "{call}");
    assert_eq!(call["params"]["AccessKeyId"], ak, "signed by another key: {call}");
    match token {
        Some(t) => assert_eq!(
            call["params"]["SecurityToken"].as_str(),
            Some(t),
            "wrong or missing SecurityToken: {call}"
        ),
        None => assert!(
            call["params"].get("SecurityToken").is_none(),
            "a long-term key sent a SecurityToken: {call}"
        ),
    }
}

/// The call was signed by a temporary credential the fake issued, with its token;
/// returns that AccessKeyId.
async fn assert_signed_by_issued(sts: &FakeSts, call: &Value, candidates: &[String]) -> String {
    let ak = call["params"]["AccessKeyId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        candidates.contains(&ak),
        "grant AssumeRole signed by {ak}, expected one of {candidates:?}: {call}"
    );
    let issued = sts.issued(&ak).await.expect("issued by the fake");
    assert_signed_by(call, &ak, issued["SecurityToken"].as_str());
    ak
}

fn issued_aks(calls: &[Value]) -> Vec<String> {
    calls
        .iter()
        .filter_map(|c| c["access_key_id_issued"].as_str().map(str::to_string))
        .collect()
}

/// No long-term secret, no secret or token the fake issued, no `extra` value
/// (OIDC tokens...) appears in the server's logs; the fake's stdout has no
/// OIDC token either.
async fn assert_no_secrets(sts: &FakeSts, server: &TestApp, extra: &[&str]) {
    let logs = server.logs.text();
    let mut secrets: Vec<String> = LONG_TERM_SECRETS.iter().map(|s| s.to_string()).collect();
    secrets.extend(sts.issued_secrets().await);
    secrets.extend(extra.iter().map(|s| s.to_string()));
    for s in &secrets {
        assert!(
            !logs.contains(s.as_str()),
            "a secret appears in the logs: {s}\n{logs}"
        );
    }
    let fake_out = sts.output.text();
    for s in extra {
        assert!(!fake_out.contains(s), "the fake STS printed a token: {s}");
    }
}

/// The log line `server identity loaded source="<source>"` is there.
async fn assert_identity_logged(server: &TestApp, source: &str) {
    // Logs are written by a background thread: the line may trail the request.
    server
        .logs
        .wait_for("server identity loaded", Duration::from_secs(5))
        .await;
    let logs = server.logs.text();
    assert!(
        logs.lines()
            .any(|l| l.contains("server identity loaded") && log_has_field(l, "source", source)),
        "no `server identity loaded source={source}` line:\n{logs}"
    );
}

/// A temp HOME with these files (relative path, content).
fn home_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    for (rel, content) in files {
        let p = home.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    home
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A well-formed test JWT (header.payload.signature, base64url without padding),
/// valid for an hour; `tag` makes it unique.
fn jwt(tag: &str) -> String {
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let now = chrono::Utc::now().timestamp();
    format!(
        "{}.{}.{}",
        b64(json!({"alg": "RS256", "kid": "test"})),
        b64(
            json!({"iss": "https://oidc-ack.cn-hangzhou.aliyuncs.com/test", "sub": format!("system:serviceaccount:ossvend:{tag}"),
                   "aud": "sts.aliyuncs.com", "iat": now, "exp": now + 3600, "jti": tag})
        ),
        b64(json!(format!("signature-{tag}")))
    )
}

fn epoch(sts_time: &str) -> f64 {
    chrono::NaiveDateTime::parse_from_str(sts_time, "%Y-%m-%dT%H:%M:%SZ")
        .unwrap()
        .and_utc()
        .timestamp() as f64
}

fn now_epoch() -> f64 {
    chrono::Utc::now().timestamp_millis() as f64 / 1000.0
}

/// Polls `f` every 200 ms until it is true or `timeout` passes.
async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

// ---------------------------------------------------------------------------
// env
// ---------------------------------------------------------------------------

#[tokio::test]
async fn env_identity_signs_the_grants_assume_role() {
    let sts = fake_sts();
    // ALIBABA_CLOUD_* (the harness sets them to CALLER_AK) win over OSS_*.
    let server = TestApp::start_with(
        ServerOptions::new(cfg(&sts.endpoint, "[identity]\nsource = \"env\""))
            .env("OSS_ACCESS_KEY_ID", OSS_AK)
            .env("OSS_ACCESS_KEY_SECRET", OSS_SECRET),
    )
    .await;
    creds(&server, "browser-upload").await;
    let calls = grant_calls(&sts).await;
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_signed_by(&calls[0], CALLER_AK, None);
    assert_identity_logged(&server, "env").await;
    assert_no_secrets(&sts, &server, &[]).await;
}

#[tokio::test]
async fn env_identity_reads_the_oss_names_and_session_tokens() {
    let sts = fake_sts();
    let id = "[identity]\nsource = \"env\"";

    // OSS_ACCESS_KEY_ID / OSS_ACCESS_KEY_SECRET alone.
    let server = TestApp::start_bare(
        ServerOptions::new(cfg(&sts.endpoint, id))
            .env("OSS_ACCESS_KEY_ID", OSS_AK)
            .env("OSS_ACCESS_KEY_SECRET", OSS_SECRET),
    )
    .await;
    creds(&server, "browser-upload").await;
    assert_signed_by(&grant_calls(&sts).await[0], OSS_AK, None);
    assert_no_secrets(&sts, &server, &[]).await;
    drop(server);

    // A temporary key in the environment: its token goes along (OSS_SESSION_TOKEN).
    let temp: Value = http()
        .get(format!("{}/creds", sts.endpoint))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (tak, tsk, ttok) = (
        temp["AccessKeyId"].as_str().unwrap(),
        temp["AccessKeySecret"].as_str().unwrap(),
        temp["SecurityToken"].as_str().unwrap(),
    );
    let server = TestApp::start_bare(
        ServerOptions::new(cfg(&sts.endpoint, id))
            .env("OSS_ACCESS_KEY_ID", tak)
            .env("OSS_ACCESS_KEY_SECRET", tsk)
            .env("OSS_SESSION_TOKEN", ttok),
    )
    .await;
    creds(&server, "browser-upload").await;
    let calls = grant_calls(&sts).await;
    assert_signed_by(calls.last().unwrap(), tak, Some(ttok));
    assert_no_secrets(&sts, &server, &[]).await;
    drop(server);

    // The same with the ALIBABA_CLOUD_* names (ALIBABA_CLOUD_SECURITY_TOKEN).
    let server = TestApp::start_bare(
        ServerOptions::new(cfg(&sts.endpoint, id))
            .env("ALIBABA_CLOUD_ACCESS_KEY_ID", tak)
            .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", tsk)
            .env("ALIBABA_CLOUD_SECURITY_TOKEN", ttok),
    )
    .await;
    creds(&server, "avatars").await;
    let calls = grant_calls(&sts).await;
    assert_eq!(calls.len(), 3);
    assert_signed_by(calls.last().unwrap(), tak, Some(ttok));
    assert_no_secrets(&sts, &server, &[]).await;
}

// ---------------------------------------------------------------------------
// static
// ---------------------------------------------------------------------------

#[tokio::test]
async fn static_identity_takes_its_secret_from_an_env_var_or_a_file() {
    let sts = fake_sts();
    let server = TestApp::start_bare(ServerOptions::new(cfg(
            &sts.endpoint,
            &format!(
                "[identity]\nsource = \"static\"\naccess_key_id = \"{STATIC_AK}\"\nsecret_env = \"MY_SECRET_VAR\""
            ),
        ))
        .env("MY_SECRET_VAR", STATIC_SECRET)).await;
    creds(&server, "browser-upload").await;
    assert_signed_by(&grant_calls(&sts).await[0], STATIC_AK, None);
    assert_identity_logged(&server, "static").await;
    assert_no_secrets(&sts, &server, &[]).await;
    drop(server);

    // A mounted secret file, with the trailing newline kubectl/echo leave.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access-key-secret");
    std::fs::write(&file, format!("{STATIC_SECRET}\n")).unwrap();
    let server = TestApp::start_bare(ServerOptions::new(cfg(
        &sts.endpoint,
        &format!(
            "[identity]\nsource = \"static\"\naccess_key_id = \"{STATIC_AK}\"\nsecret_file = \"{}\"",
            path_str(&file)
        ),
    )))
    .await;
    creds(&server, "avatars").await;
    let calls = grant_calls(&sts).await;
    assert_eq!(calls.len(), 2);
    assert_signed_by(&calls[1], STATIC_AK, None);
    assert_no_secrets(&sts, &server, &[]).await;
}

// ---------------------------------------------------------------------------
// profile files
// ---------------------------------------------------------------------------

fn cli_config() -> String {
    json!({
        "current": "default",
        "profiles": [
            {"name": "default", "mode": "AK", "access_key_id": PROFILE_AK,
             "access_key_secret": PROFILE_SECRET, "sts_token": "", "ram_role_arn": "",
             "ram_session_name": "", "expired_seconds": 0, "region_id": "cn-hangzhou",
             "output_format": "json", "language": "en"},
            {"name": "other", "mode": "AK", "access_key_id": OTHER_PROFILE_AK,
             "access_key_secret": OTHER_PROFILE_SECRET, "region_id": "cn-hangzhou"},
            {"name": "chained", "mode": "RamRoleArn", "access_key_id": CHAIN_PROFILE_AK,
             "access_key_secret": CHAIN_PROFILE_SECRET, "ram_role_arn": INTERMEDIATE_ARN,
             "ram_session_name": "cli-session", "expired_seconds": 3600, "region_id": "cn-hangzhou"}
        ],
        "meta_path": ""
    })
    .to_string()
}

#[tokio::test]
async fn profile_identity_reads_the_cli_config_json() {
    let sts = fake_sts();
    let home = home_with(&[(".aliyun/config.json", &cli_config())]);
    let h = path_str(home.path());

    // No `profile`: the file's "current".
    let server = TestApp::start_bare(
        ServerOptions::new(cfg(&sts.endpoint, "[identity]\nsource = \"profile\"")).env("HOME", h),
    )
    .await;
    creds(&server, "browser-upload").await;
    assert_signed_by(&grant_calls(&sts).await[0], PROFILE_AK, None);
    assert_identity_logged(&server, "profile").await;
    assert_no_secrets(&sts, &server, &[]).await;
    drop(server);

    // An explicit profile.
    let server = TestApp::start_bare(
        ServerOptions::new(cfg(
            &sts.endpoint,
            "[identity]\nsource = \"profile\"\nprofile = \"other\"",
        ))
        .env("HOME", h),
    )
    .await;
    creds(&server, "browser-upload").await;
    assert_signed_by(grant_calls(&sts).await.last().unwrap(), OTHER_PROFILE_AK, None);
    drop(server);

    // ALIBABA_CLOUD_PROFILE picks a RamRoleArn profile: AssumeRole into the
    // intermediate role with the profile's key, then the grant with that credential.
    let before = sts.call_count().await;
    let server = TestApp::start_bare(
        ServerOptions::new(cfg(&sts.endpoint, "[identity]\nsource = \"profile\""))
            .env("HOME", h)
            .env("ALIBABA_CLOUD_PROFILE", "chained"),
    )
    .await;
    creds(&server, "browser-upload").await;
    let calls: Vec<Value> = sts.calls().await.into_iter().skip(before).collect();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0]["params"]["RoleArn"], INTERMEDIATE_ARN);
    assert_eq!(calls[0]["params"]["RoleSessionName"], "cli-session");
    assert_signed_by(&calls[0], CHAIN_PROFILE_AK, None);
    assert_eq!(calls[1]["params"]["RoleArn"], ROLE_ARN);
    assert_signed_by_issued(&sts, &calls[1], &issued_aks(&calls[..1])).await;
    assert_no_secrets(&sts, &server, &[]).await;
}

#[tokio::test]
async fn profile_identity_reads_the_credentials_sdk_ini_file() {
    let sts = fake_sts();
    let ini = format!(
        "[default]\ntype = access_key\naccess_key_id = {INI_AK}\naccess_key_secret = {INI_SECRET}\n\n\
         [roled]\ntype = ram_role_arn\naccess_key_id = {INI_ROLE_AK}\naccess_key_secret = {INI_ROLE_SECRET}\n\
         role_arn = {INTERMEDIATE_ARN}\nrole_session_name = ini-session\n"
    );
    let home = home_with(&[(".alibabacloud/credentials", &ini)]);
    let h = path_str(home.path());
    let id = "[identity]\nsource = \"profile\"";

    let server = TestApp::start_bare(ServerOptions::new(cfg(&sts.endpoint, id)).env("HOME", h)).await;
    creds(&server, "browser-upload").await;
    assert_signed_by(&grant_calls(&sts).await[0], INI_AK, None);
    assert_no_secrets(&sts, &server, &[]).await;
    drop(server);

    // A ram_role_arn section.
    let before = sts.call_count().await;
    let server = TestApp::start_bare(
        ServerOptions::new(cfg(&sts.endpoint, id))
            .env("HOME", h)
            .env("ALIBABA_CLOUD_PROFILE", "roled"),
    )
    .await;
    creds(&server, "browser-upload").await;
    let calls: Vec<Value> = sts.calls().await.into_iter().skip(before).collect();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0]["params"]["RoleArn"], INTERMEDIATE_ARN);
    assert_eq!(calls[0]["params"]["RoleSessionName"], "ini-session");
    assert_signed_by(&calls[0], INI_ROLE_AK, None);
    assert_signed_by_issued(&sts, &calls[1], &issued_aks(&calls[..1])).await;
    assert_no_secrets(&sts, &server, &[]).await;
    drop(server);

    // The Python SDK's name for the same file: credentials.ini.
    let home = home_with(&[(".alibabacloud/credentials.ini", &ini)]);
    let server =
        TestApp::start_bare(ServerOptions::new(cfg(&sts.endpoint, id)).env("HOME", path_str(home.path())))
            .await;
    creds(&server, "avatars").await;
    assert_signed_by(grant_calls(&sts).await.last().unwrap(), INI_AK, None);
}

// ---------------------------------------------------------------------------
// ECS RAM role (instance metadata)
// ---------------------------------------------------------------------------

fn ecs_identity(sts: &FakeSts, extra: &str) -> String {
    format!(
        "[identity]\nsource = \"ecs_ram_role\"\nmetadata_endpoint = \"{}\"\n{extra}",
        sts.endpoint
    )
}

async fn imds_issued(sts: &FakeSts) -> Vec<String> {
    issued_aks(&sts.imds_calls().await)
}

#[tokio::test]
async fn ecs_ram_role_identity_discovers_the_role_in_hardened_mode() {
    let sts = fake_sts();
    let server = TestApp::start_bare(ServerOptions::new(cfg(&sts.endpoint, &ecs_identity(&sts, "")))).await;
    creds(&server, "browser-upload").await;

    let imds = sts.imds_calls().await;
    let token_put = imds
        .iter()
        .find(|c| c["kind"] == "token")
        .unwrap_or_else(|| panic!("no token PUT: {imds:?}"));
    assert_eq!(token_put["method"], "PUT");
    assert_eq!(token_put["status"], 200);
    let ttl: u64 = token_put["ttl"]
        .as_str()
        .expect("ttl header sent")
        .parse()
        .unwrap();
    assert!((1..=21600).contains(&ttl), "{token_put}");
    assert!(
        imds.iter().any(|c| c["kind"] == "role" && c["status"] == 200),
        "role not discovered: {imds:?}"
    );
    let cred_gets: Vec<&Value> = imds.iter().filter(|c| c["kind"] == "credentials").collect();
    assert!(!cred_gets.is_empty());
    for c in &cred_gets {
        assert_eq!(
            c["path"],
            "/latest/meta-data/ram/security-credentials/EcsRamRoleOss"
        );
    }
    for c in imds.iter().filter(|c| c["kind"] != "token") {
        assert_eq!(
            c["token"], "valid",
            "hardened mode: every read carries the token: {c}"
        );
        assert_eq!(c["status"], 200, "{c}");
    }
    let calls = grant_calls(&sts).await;
    assert_eq!(calls.len(), 1);
    assert_signed_by_issued(&sts, &calls[0], &imds_issued(&sts).await).await;
    assert_identity_logged(&server, "ecs_ram_role").await;
    assert_no_secrets(&sts, &server, &[]).await;
    drop(server);

    // A configured role name: no discovery.
    sts.imds(json!({ "role_name": "MyEcsRole" })).await;
    let seen = sts.imds_calls().await.len();
    let server = TestApp::start_bare(ServerOptions::new(cfg(
        &sts.endpoint,
        &ecs_identity(&sts, "role_name = \"MyEcsRole\""),
    )))
    .await;
    creds(&server, "avatars").await;
    let imds: Vec<Value> = sts.imds_calls().await.into_iter().skip(seen).collect();
    assert!(imds.iter().all(|c| c["kind"] != "role"), "{imds:?}");
    assert!(
        imds.iter().any(
            |c| c["path"] == "/latest/meta-data/ram/security-credentials/MyEcsRole" && c["status"] == 200
        )
    );
    assert_signed_by_issued(
        &sts,
        grant_calls(&sts).await.last().unwrap(),
        &imds_issued(&sts).await,
    )
    .await;
}

#[tokio::test]
async fn ecs_ram_role_falls_back_to_v1_only_when_allowed() {
    let sts = fake_sts();
    // A metadata service without the token API (old IMDS).
    sts.imds(json!({ "token_fail": "404", "require_token": false }))
        .await;

    let server = TestApp::start_bare(ServerOptions::new(cfg(
        &sts.endpoint,
        &ecs_identity(&sts, "imds_v1_fallback = true"),
    )))
    .await;
    creds(&server, "browser-upload").await;
    let imds = sts.imds_calls().await;
    assert!(
        imds.iter()
            .any(|c| c["kind"] == "credentials" && c["token"] == "none" && c["status"] == 200),
        "{imds:?}"
    );
    assert_signed_by_issued(&sts, &grant_calls(&sts).await[0], &imds_issued(&sts).await).await;
    drop(server);

    // Hardened only (the default): the failed token PUT is fatal, no token-less read.
    let seen = sts.imds_calls().await.len();
    let before = grant_calls(&sts).await.len();
    match TestApp::try_start_opts(
        ServerOptions::new(cfg(&sts.endpoint, &ecs_identity(&sts, ""))),
        false,
    )
    .await
    {
        Err(logs) => println!("ossvend refused to start without an identity:\n{logs}"),
        Ok(server) => {
            let (status, body) = readyz(&server).await;
            assert_eq!(status, 503, "{body}");
            assert_eq!(body["identity"]["ok"], false, "{body}");
            let (status, body) = get(&server, "/v1/grants/browser-upload/credentials").await;
            assert_eq!(status, 503, "{body}");
            assert_eq!(body["code"], "identity_unavailable", "{body}");
        }
    }
    let imds: Vec<Value> = sts.imds_calls().await.into_iter().skip(seen).collect();
    assert!(
        imds.iter().all(|c| c["kind"] == "token"),
        "read without a token: {imds:?}"
    );
    assert_eq!(grant_calls(&sts).await.len(), before);
}

/// A fake records a fetch when it answers; the server installs the new
/// identity a moment later, then logs it. Until then a request is (rightly)
/// still served with the previous identity, so tests wait for the log line.
async fn wait_installed(server: &TestApp) {
    let installed = server
        .logs
        .wait_for("server identity refreshed", Duration::from_secs(5))
        .await;
    assert!(
        installed,
        "refreshed identity not installed; logs:\n{}",
        server.logs.text()
    );
}

/// The refresh tests' identity refresh loop: an identity within `expiry_margin`
/// (EXPIRY_MARGIN s) of its Expiration is treated as expired (not handed out, not
/// ready). The server's default margin is 30 s; 5 s lets a refresh, an outage and a
/// recovery happen within seconds, with the same slack around each step.
const EXPIRY_MARGIN: f64 = 5.0;

fn refresh_timings() -> ossvend::identity::RefreshTimings {
    ossvend::identity::RefreshTimings {
        expiry_margin: Duration::from_secs(EXPIRY_MARGIN as u64),
        backoff_base: Duration::from_millis(500),
        backoff_max: Duration::from_secs(2),
        max_sleep: Duration::from_secs(1),
    }
}

/// An ECS identity is refreshed in the background at half its life, before it
/// expires, with no failed request; while IMDS is down the last good identity
/// keeps signing while it is valid, then /readyz is 503; when IMDS is back, the
/// server recovers.
#[tokio::test]
async fn ecs_identity_refreshes_survives_an_outage_and_recovers() {
    // The first identity lives 16 s: refreshed at half its life, when 8 s are
    // left, before the 5 s margin. The refreshed one lives 12 s, i.e. it is valid
    // for only ~7 s, so the outage phase is short (the whole test takes ~20 s).
    const LIFE_1: i64 = 16;
    const LIFE_2: i64 = 12;
    let sts = fake_sts();
    sts.imds(json!({ "expires_in": LIFE_1 })).await;
    let opts = ServerOptions::new(cfg(&sts.endpoint, &ecs_identity(&sts, "")));
    let server = TestApp::build(opts, false, refresh_timings()).await.unwrap();
    creds(&server, "browser-upload").await;
    sts.imds(json!({ "expires_in": LIFE_2 })).await; // for the refresh
    let fetches = || async {
        sts.imds_calls()
            .await
            .into_iter()
            .filter(|c| c["kind"] == "credentials" && c["status"] == 200)
            .collect::<Vec<Value>>()
    };
    assert_eq!(fetches().await.len(), 1, "fetched twice at start-up");

    // 1. Requests across the refresh: none fails. As soon as the refreshed
    //    identity is fetched, IMDS goes down.
    let start = Instant::now();
    let mut n = 0;
    loop {
        creds(&server, "browser-upload").await;
        n += 1;
        if fetches().await.len() >= 2 {
            sts.imds(json!({ "fail": "503" })).await;
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(LIFE_1 as u64),
            "not refreshed; logs:\n{}",
            server.logs.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_installed(&server).await;
    creds(&server, "browser-upload").await; // with the refreshed identity
    let f = fetches().await;
    assert_eq!(f.len(), 2, "{f:?}");
    let first_exp = epoch(f[0]["expiration_issued"].as_str().unwrap());
    let refreshed_at = f[1]["time"].as_f64().unwrap();
    assert!(
        refreshed_at < first_exp - EXPIRY_MARGIN,
        "refreshed only {:.1}s before expiry: not ahead of time",
        first_exp - refreshed_at
    );
    let calls = grant_calls(&sts).await;
    assert_eq!(
        calls.len(),
        2,
        "one grant credential per identity ({n} requests): {calls:?}"
    );
    let imds_aks = issued_aks(&f);
    for (c, ak) in calls.iter().zip(&imds_aks) {
        assert_signed_by_issued(&sts, c, std::slice::from_ref(ak)).await;
    }

    // 2. IMDS down: the last good identity is still used while it is valid.
    let last_ak = imds_aks[1].clone();
    let last_exp = epoch(f[1]["expiration_issued"].as_str().unwrap());
    assert!(
        last_exp - EXPIRY_MARGIN - now_epoch() > 2.0,
        "test too slow: the identity is about to expire"
    );
    let (status, body) = readyz(&server).await;
    assert_eq!(status, 200, "identity still valid: {body}");
    creds(&server, "avatars").await; // a cache miss: needs an AssumeRole now
    creds(&server, "browser-upload").await;
    let calls = grant_calls(&sts).await;
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert_signed_by_issued(&sts, &calls[2], std::slice::from_ref(&last_ak)).await;

    // ... and once it has expired, the server is not ready.
    let unready = eventually(Duration::from_secs(LIFE_2 as u64), || async {
        readyz(&server).await.0 == 503
    })
    .await;
    assert!(
        unready,
        "still ready {:.0}s after the identity expired",
        now_epoch() - last_exp
    );
    assert!(
        now_epoch() > last_exp - EXPIRY_MARGIN - 2.0,
        "unready {:.1}s before the identity expired",
        last_exp - now_epoch()
    );
    let (_, body) = readyz(&server).await;
    assert_eq!(body["identity"]["ok"], false, "{body}");
    // The refresher keeps trying while IMDS is down (and fails).
    let tried = eventually(Duration::from_secs(15), || async {
        sts.imds_calls().await.iter().any(|c| c["status"] == 503)
    })
    .await;
    assert!(tried, "the refresh never tried IMDS while it was down");
    assert_eq!(readyz(&server).await.0, 503);

    // 3. IMDS back: recovers.
    sts.imds(json!({ "fail": null, "expires_in": 3600 })).await;
    let ready = eventually(Duration::from_secs(30), || async {
        readyz(&server).await.0 == 200
    })
    .await;
    assert!(
        ready,
        "not ready again after IMDS came back; logs:\n{}",
        server.logs.text()
    );
    creds(&server, "browser-upload").await;
    creds(&server, "avatars").await;
    let calls = grant_calls(&sts).await;
    let newest = imds_issued(&sts).await.last().cloned().unwrap();
    assert_ne!(newest, last_ak);
    assert_eq!(calls.len(), 5, "{calls:?}");
    for c in &calls[3..] {
        assert_signed_by_issued(&sts, c, std::slice::from_ref(&newest)).await;
    }
    assert!(calls.iter().all(|c| c["outcome"] == "OK"), "{calls:?}");
    assert_no_secrets(&sts, &server, &[]).await;
}

// ---------------------------------------------------------------------------
// OIDC (RRSA)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn oidc_identity_rereads_the_token_file_on_every_refresh() {
    let sts = fake_sts();
    let (token_a, token_b) = (jwt("a"), jwt("b"));
    // A 14 s identity: refreshed in the background when 7 s are left (just
    // before the 5 s margin), i.e. after about 7 s.
    sts.oidc(json!({ "valid_tokens": [token_a], "mode": { "expires_in": 14 } }))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &token_a).unwrap(); // as the kubelet writes it: no newline
    let opts = ServerOptions::new(cfg(
        &sts.endpoint,
        &format!(
            "[identity]\nsource = \"oidc\"\nrole_arn = \"{OIDC_ROLE_ARN}\"\n\
             oidc_provider_arn = \"{OIDC_PROVIDER_ARN}\"\noidc_token_file = \"{}\"\n\
             role_session_name = \"ossvend-oidc\"\nduration_seconds = 3600",
            path_str(&token_file)
        ),
    ));
    let server = TestApp::build(opts, false, refresh_timings()).await.unwrap();
    creds(&server, "browser-upload").await;

    let oidc = calls_of(&sts, "AssumeRoleWithOIDC").await;
    assert!(!oidc.is_empty());
    let first = &oidc[0];
    assert_eq!(first["outcome"], "OK", "{first}");
    let p = &first["params"];
    for absent in [
        "AccessKeyId",
        "Signature",
        "SignatureMethod",
        "SignatureVersion",
        "SecurityToken",
    ] {
        assert!(p.get(absent).is_none(), "anonymous call sent {absent}: {p}");
    }
    assert_eq!(p["OIDCToken"], token_a.as_str());
    assert_eq!(p["RoleArn"], OIDC_ROLE_ARN);
    assert_eq!(p["OIDCProviderArn"], OIDC_PROVIDER_ARN);
    assert_eq!(p["RoleSessionName"], "ossvend-oidc");
    assert_eq!(p["DurationSeconds"], "3600");
    assert_eq!(p["Version"], "2015-04-01");
    let calls = grant_calls(&sts).await;
    assert_eq!(calls.len(), 1);
    assert_signed_by_issued(&sts, &calls[0], &issued_aks(&oidc)).await;
    assert_identity_logged(&server, "oidc").await;

    // The kubelet rotates the token; then the old one stops being accepted (in
    // this order, so that only a token read before the rotation can be refused).
    sts.oidc(json!({ "valid_tokens": [token_a, token_b] })).await;
    std::fs::write(&token_file, &token_b).unwrap();
    sts.oidc(json!({ "valid_tokens": [token_b] })).await;
    let refreshed = eventually(Duration::from_secs(50), || async {
        calls_of(&sts, "AssumeRoleWithOIDC")
            .await
            .iter()
            .any(|c| c["params"]["OIDCToken"] == token_b.as_str() && c["outcome"] == "OK")
    })
    .await;
    let oidc = calls_of(&sts, "AssumeRoleWithOIDC").await;
    assert!(refreshed, "no refresh with the new token: {oidc:?}");
    assert!(
        oidc.iter().all(|c| c["outcome"] == "OK"),
        "the old token was sent after the file changed: {oidc:?}"
    );
    let new_ak = oidc
        .iter()
        .rev()
        .find(|c| c["params"]["OIDCToken"] == token_b.as_str())
        .and_then(|c| c["access_key_id_issued"].as_str())
        .unwrap()
        .to_string();
    wait_installed(&server).await;
    creds(&server, "browser-upload").await;
    let calls = grant_calls(&sts).await;
    assert_eq!(
        calls.len(),
        2,
        "the new identity must mint a new grant credential: {calls:?}"
    );
    assert_signed_by_issued(&sts, &calls[1], &[new_ak]).await;
    assert_no_secrets(&sts, &server, &[&token_a, &token_b]).await;
}

// ---------------------------------------------------------------------------
// credentials URI
// ---------------------------------------------------------------------------

#[tokio::test]
async fn credentials_uri_identity_keeps_the_query_and_signs_with_the_result() {
    let sts = fake_sts();
    let server = TestApp::start_bare(ServerOptions::new(cfg(
        &sts.endpoint,
        &format!(
            "[identity]\nsource = \"credentials_uri\"\ncredentials_uri = \"{}/creds?role=uploader\"",
            sts.endpoint
        ),
    )))
    .await;
    creds(&server, "browser-upload").await;
    let uri = sts.uri_calls().await;
    assert!(!uri.is_empty());
    for c in &uri {
        assert_eq!(c["method"], "GET");
        assert_eq!(c["path"], "/creds");
        assert_eq!(c["query"], "role=uploader");
        assert_eq!(c["authorization"], false);
    }
    let calls = grant_calls(&sts).await;
    assert_eq!(calls.len(), 1);
    assert_signed_by_issued(&sts, &calls[0], &issued_aks(&uri)).await;
    assert_identity_logged(&server, "credentials_uri").await;
    assert_no_secrets(&sts, &server, &[]).await;
}

#[tokio::test]
async fn credentials_uri_answers_without_code_success_are_refused() {
    let sts = fake_sts();
    sts.uri(json!({ "fail": "not_success" })).await;
    // No `credentials_uri` key: the env var is the default.
    let uri = format!("{}/creds", sts.endpoint);
    let opts = ServerOptions::new(cfg(&sts.endpoint, "[identity]\nsource = \"credentials_uri\""))
        .env("ALIBABA_CLOUD_CREDENTIALS_URI", &uri);
    match TestApp::try_start_opts(opts, false).await {
        Err(logs) => {
            println!("ossvend refused to start without an identity:\n{logs}");
            assert_eq!(grant_calls(&sts).await.len(), 0);
        }
        Ok(server) => {
            let (status, body) = readyz(&server).await;
            assert_eq!(status, 503, "{body}");
            let (status, body) = get(&server, "/v1/grants/browser-upload/credentials").await;
            assert_eq!(
                (status, body["code"].as_str()),
                (503, Some("identity_unavailable")),
                "{body}"
            );
            assert_eq!(
                grant_calls(&sts).await.len(),
                0,
                "signed with a refused credential"
            );
            // The URI recovers: so does the server.
            sts.uri(json!({ "fail": null })).await;
            let ready = eventually(Duration::from_secs(30), || async {
                readyz(&server).await.0 == 200
            })
            .await;
            assert!(ready, "logs:\n{}", server.logs.text());
            creds(&server, "browser-upload").await;
            let uri_calls = sts.uri_calls().await;
            assert_signed_by_issued(&sts, &grant_calls(&sts).await[0], &issued_aks(&uri_calls)).await;
            assert_no_secrets(&sts, &server, &[]).await;
        }
    }
}

// ---------------------------------------------------------------------------
// ram_role_arn (chained)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn ram_role_arn_identity_chains_on_the_env_key() {
    let sts = fake_sts();
    let server = TestApp::start_with(ServerOptions::new(cfg(
        &sts.endpoint,
        &format!(
            "[identity]\nsource = \"ram_role_arn\"\nrole_arn = \"{INTERMEDIATE_ARN}\"\n\
             external_id = \"ext-1\"\nrole_session_name = \"ossvend-chain\"\nduration_seconds = 3600\n\n\
             [identity.base]\nsource = \"env\""
        ),
    )))
    .await;
    creds(&server, "browser-upload").await;
    let calls = sts.calls().await;
    assert_eq!(calls.len(), 2, "{calls:?}");
    let chain = &calls[0];
    assert_eq!(chain["params"]["Action"], "AssumeRole");
    assert_eq!(chain["params"]["RoleArn"], INTERMEDIATE_ARN);
    assert_eq!(chain["params"]["RoleSessionName"], "ossvend-chain");
    assert_eq!(chain["params"]["ExternalId"], "ext-1");
    assert_eq!(chain["params"]["DurationSeconds"], "3600");
    assert!(chain["params"].get("Policy").is_none(), "{chain}");
    assert_signed_by(chain, CALLER_AK, None);
    let grant = &calls[1];
    assert_eq!(grant["params"]["RoleArn"], ROLE_ARN);
    assert!(grant["seq"].as_u64() > chain["seq"].as_u64());
    assert_signed_by_issued(&sts, grant, &issued_aks(&calls[..1])).await;
    assert_identity_logged(&server, "ram_role_arn").await;
    assert_no_secrets(&sts, &server, &[]).await;
}

// ---------------------------------------------------------------------------
// the default chain
// ---------------------------------------------------------------------------

/// Never let a chain test reach 100.100.100.200 or a developer's profile files.
fn chain_env<'a>(opts: ServerOptions<'a>, home: &'a str) -> ServerOptions<'a> {
    opts.env("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true")
        .env("HOME", home)
}

async fn assert_chain_winner(server: &TestApp, source: &str) {
    server
        .logs
        .wait_for("server identity loaded", Duration::from_secs(5))
        .await;
    let logs = server.logs.text();
    assert!(
        logs.lines().any(|l| l.contains("server identity loaded")
            && log_has_field(l, "chain_winner", source)
            && (log_has_field(l, "source", "chain") || log_has_field(l, "source", source))),
        "no `server identity loaded ... chain_winner={source}` line:\n{logs}"
    );
}

#[tokio::test]
async fn chain_prefers_env_keys_over_a_credentials_uri() {
    let sts = fake_sts();
    let home = tempfile::tempdir().unwrap();
    let uri = format!("{}/creds", sts.endpoint);
    // The harness's env key (ALIBABA_CLOUD_ACCESS_KEY_ID/SECRET) plus a URI.
    let server = TestApp::start_with(
        chain_env(
            ServerOptions::new(cfg(&sts.endpoint, "[identity]\nsource = \"chain\"")),
            path_str(home.path()),
        )
        .env("ALIBABA_CLOUD_CREDENTIALS_URI", &uri),
    )
    .await;
    creds(&server, "browser-upload").await;
    assert_chain_winner(&server, "env").await;
    assert_signed_by(&grant_calls(&sts).await[0], CALLER_AK, None);
    assert_eq!(
        sts.uri_calls().await.len(),
        0,
        "the chain went on past its winner"
    );
    assert_eq!(sts.imds_calls().await.len(), 0);
    assert_no_secrets(&sts, &server, &[]).await;
}

#[tokio::test]
async fn chain_without_env_keys_falls_through_to_the_credentials_uri() {
    let sts = fake_sts();
    let home = tempfile::tempdir().unwrap(); // no profile files
    let uri = format!("{}/creds?from=chain", sts.endpoint);
    // No [identity] section at all: the default is the chain.
    let server = TestApp::start_bare(
        chain_env(ServerOptions::new(cfg(&sts.endpoint, "")), path_str(home.path()))
            .env("ALIBABA_CLOUD_CREDENTIALS_URI", &uri),
    )
    .await;
    creds(&server, "browser-upload").await;
    assert_chain_winner(&server, "credentials_uri").await;
    let uri_calls = sts.uri_calls().await;
    assert!(
        uri_calls.iter().all(|c| c["query"] == "from=chain"),
        "{uri_calls:?}"
    );
    assert_signed_by_issued(&sts, &grant_calls(&sts).await[0], &issued_aks(&uri_calls)).await;
    assert_eq!(sts.imds_calls().await.len(), 0);
    assert_no_secrets(&sts, &server, &[]).await;
}

#[tokio::test]
async fn chain_tries_oidc_env_then_profile_files_before_the_uri() {
    let sts = fake_sts();
    let uri = format!("{}/creds", sts.endpoint);
    let home = home_with(&[(".aliyun/config.json", &cli_config())]);
    let h = path_str(home.path());
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    let token = jwt("chain");
    std::fs::write(&token_file, &token).unwrap();

    // The three OIDC variables: OIDC wins over the profile file and the URI.
    let server = TestApp::start_bare(
        chain_env(
            ServerOptions::new(cfg(&sts.endpoint, "[identity]\nsource = \"chain\"")),
            h,
        )
        .env("ALIBABA_CLOUD_CREDENTIALS_URI", &uri)
        .env("ALIBABA_CLOUD_ROLE_ARN", OIDC_ROLE_ARN)
        .env("ALIBABA_CLOUD_OIDC_PROVIDER_ARN", OIDC_PROVIDER_ARN)
        .env("ALIBABA_CLOUD_OIDC_TOKEN_FILE", path_str(&token_file))
        .env("ALIBABA_CLOUD_ROLE_SESSION_NAME", "chain-oidc"),
    )
    .await;
    creds(&server, "browser-upload").await;
    assert_chain_winner(&server, "oidc").await;
    let oidc = calls_of(&sts, "AssumeRoleWithOIDC").await;
    assert_eq!(oidc[0]["params"]["RoleSessionName"], "chain-oidc");
    assert_eq!(oidc[0]["params"]["OIDCToken"], token.as_str());
    assert_signed_by_issued(&sts, &grant_calls(&sts).await[0], &issued_aks(&oidc)).await;
    assert_no_secrets(&sts, &server, &[&token]).await;
    drop(server);

    // Only two of the three OIDC variables: not OIDC; the profile file wins.
    let server = TestApp::start_bare(
        chain_env(
            ServerOptions::new(cfg(&sts.endpoint, "[identity]\nsource = \"chain\"")),
            h,
        )
        .env("ALIBABA_CLOUD_CREDENTIALS_URI", &uri)
        .env("ALIBABA_CLOUD_ROLE_ARN", OIDC_ROLE_ARN)
        .env("ALIBABA_CLOUD_OIDC_TOKEN_FILE", path_str(&token_file)),
    )
    .await;
    creds(&server, "browser-upload").await;
    assert_chain_winner(&server, "profile").await;
    assert_signed_by(grant_calls(&sts).await.last().unwrap(), PROFILE_AK, None);
    assert_eq!(calls_of(&sts, "AssumeRoleWithOIDC").await.len(), 1);
    drop(server);

    // Profiles disabled: the URI.
    let server = TestApp::start_bare(
        chain_env(
            ServerOptions::new(cfg(&sts.endpoint, "[identity]\nsource = \"chain\"")),
            h,
        )
        .env("ALIBABA_CLOUD_CREDENTIALS_URI", &uri)
        .env("ALIBABA_CLOUD_CLI_PROFILE_DISABLED", "true"),
    )
    .await;
    creds(&server, "browser-upload").await;
    assert_chain_winner(&server, "credentials_uri").await;
    assert_signed_by_issued(
        &sts,
        grant_calls(&sts).await.last().unwrap(),
        &issued_aks(&sts.uri_calls().await),
    )
    .await;
    assert_no_secrets(&sts, &server, &[&token]).await;
}
