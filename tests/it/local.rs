//! `ossvend local` (issue 7): the offline mode, proven from the outside. Each test
//! starts the real binary (`ossvend local`, its own temp data dir) and talks HTTP:
//!
//! - the official SDKs spend what it vends on its embedded OSS sink: alibabacloud-oss-v2
//!   (V4 and V1, put + multipart) and ali-oss 6.23.0 (V1 and V4, put + multipartUpload),
//!   and the bytes read back from `/_local/objects` are the bytes sent;
//! - oss2 with the same kind of credential is refused outside the session policy's prefix
//!   (403 AccessDenied, nothing stored) and accepted inside it;
//! - the sink's verdicts are OSS's documented ones on one table of raw requests:
//!   signed with `ossvend::sign`, or made by ossvend's own `/presign` and
//!   `/post-policy` routes;
//! - the basics: the demo page, `/_local/status`, the loopback-only rule, and the STS
//!   emulator refusing keys it did not issue;
//! - upload callbacks on by default: an upload answered with the verified event,
//!   the start-up line, forged callbacks refused.
//!
//! Missing clients fail the tests (`scripts/test-deps` installs them); nothing is skipped.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;
use chrono::{DateTime, Utc};
use ossvend::sign::oss_v4::V4Scope;
use ossvend::sign::{AddressingStyle, Endpoint, RequestToSign, SigningCredentials, oss_v1, oss_v4, post};
use serde_json::Value;

const BUCKET: &str = "local-bucket";
const REGION: &str = "cn-hangzhou";
const RUN_LIMIT: Duration = Duration::from_secs(120);
const PART: usize = 100 * 1024;

// ---------------------------------------------------------------- helpers

fn script(name: &str) -> PathBuf {
    clients_dir().join(name)
}

/// Runs a client on a blocking thread (ossvend is another process).
async fn run(cmd: Command) -> ClientRun {
    tokio::task::spawn_blocking(move || run_client(cmd, RUN_LIMIT))
        .await
        .unwrap()
}

/// The bodies the client scripts send: byte i = (i * 31 + seed * 7 + (i >> 8)) % 256.
fn pattern(seed: usize, size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| ((i * 31 + seed * 7 + (i >> 8)) % 256) as u8)
        .collect()
}

fn md5_hex(data: &[u8]) -> String {
    use md5::Digest as _;
    hex::encode(md5::Md5::digest(data))
}

async fn get_json(url: &str) -> Value {
    let r = http().get(url).send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert!(status.is_success(), "GET {url}: {status}\n{text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {text}"))
}

fn creds_url(ls: &LocalServer, grant: &str) -> String {
    ls.server.url(&format!("/v1/grants/{grant}/credentials"))
}

/// `GET /_local/objects?format=json`: every stored object.
async fn listing(ls: &LocalServer) -> Vec<Value> {
    let v = get_json(&ls.server.url("/_local/objects?format=json")).await;
    v["objects"]
        .as_array()
        .unwrap_or_else(|| panic!("no objects array in {v}"))
        .clone()
}

/// `GET /_local/objects/{bucket}/{key}`: the stored bytes, if the object exists.
async fn stored(ls: &LocalServer, key: &str) -> Option<Vec<u8>> {
    let r = http()
        .get(ls.server.url(&format!("/_local/objects/{BUCKET}/{key}")))
        .send()
        .await
        .unwrap();
    if r.status().is_success() {
        Some(r.bytes().await.unwrap().to_vec())
    } else {
        None
    }
}

/// `RESULT <label> <key> <outcome…> [md5=… size=…]` lines: label -> (key, outcome).
fn results(output: &str) -> Vec<(String, String, String)> {
    output
        .lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .map(|rest| {
            let mut words = rest.split_whitespace();
            let label = words.next().unwrap_or_default().to_string();
            let key = words.next().unwrap_or_default().to_string();
            let outcome: Vec<&str> = words.take_while(|w| !w.starts_with("md5=")).collect();
            (label, key, outcome.join(" "))
        })
        .collect()
}

/// One upload a client script reports: its label, key, body and the sink's `auth`.
struct Expected {
    label: &'static str,
    key: &'static str,
    body: Vec<u8>,
    auth: &'static str,
}

/// The client said 200 for each upload, and the sink holds exactly those bytes.
async fn assert_uploaded(ls: &LocalServer, r: &ClientRun, expected: &[Expected]) {
    let context = || {
        format!(
            "client: {:?}\n{}\nossvend local logs:\n{}",
            r.code,
            r.output,
            ls.server.logs.text()
        )
    };
    assert!(r.succeeded(), "{}", context());
    let got = results(&r.output);
    for e in expected {
        let line = got.iter().find(|(label, _, _)| label == e.label);
        assert_eq!(
            line.map(|(_, k, o)| (k.as_str(), o.as_str())),
            Some((e.key, "200 OK")),
            "{}: the upload did not succeed\n{}",
            e.label,
            context()
        );
    }
    let objects = listing(ls).await;
    for e in expected {
        let found: Vec<&Value> = objects
            .iter()
            .filter(|o| o["bucket"] == BUCKET && o["key"] == e.key)
            .collect();
        assert_eq!(found.len(), 1, "{} in /_local/objects: {objects:?}", e.key);
        let o = found[0];
        assert_eq!(o["size"].as_u64(), Some(e.body.len() as u64), "{}: {o}", e.key);
        assert_eq!(
            o["md5"].as_str(),
            Some(md5_hex(&e.body).as_str()),
            "{}: {o}",
            e.key
        );
        assert_eq!(o["auth"].as_str(), Some(e.auth), "{}: {o}", e.key);
        let bytes = stored(ls, e.key).await;
        assert!(
            bytes.as_deref() == Some(&e.body[..]),
            "{}: the bytes read back from /_local/objects differ ({:?} bytes, expected {})",
            e.key,
            bytes.map(|b| b.len()),
            e.body.len()
        );
    }
}

// ---------------------------------------------------------------- 1. alibabacloud-oss-v2

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oss_v2_sdk_uploads_v4_and_v1_put_and_multipart_to_the_sink() {
    require_client_deps();
    let ls = LocalServer::start(None, &[]);
    let home = tempfile::tempdir().unwrap();
    let mut cmd = client_command(venv_python(), home.path());
    cmd.arg(script("local_sdk.py"))
        .arg("oss-v2")
        .args(["--creds-url", &creds_url(&ls, "sdk-upload")]);
    let r = run(cmd).await;
    print!("{}", r.output);
    let mp = 2 * PART + 37 * 1024;
    let expected = [
        Expected {
            label: "oss-v2-v4-put",
            key: "sdk/py-v2/v4-put.bin",
            body: pattern(1, 4096 + 7),
            auth: "v4-header",
        },
        Expected {
            label: "oss-v2-v4-multipart",
            key: "sdk/py-v2/v4-multipart.bin",
            body: pattern(2, mp),
            auth: "multipart",
        },
        Expected {
            label: "oss-v2-v1-put",
            key: "sdk/py-v2/v1-put.bin",
            body: pattern(3, 4096 + 7),
            auth: "v1-header",
        },
        Expected {
            label: "oss-v2-v1-multipart",
            key: "sdk/py-v2/v1-multipart.bin",
            body: pattern(4, mp),
            auth: "multipart",
        },
    ];
    assert_uploaded(&ls, &r, &expected).await;
    println!(
        "local: alibabacloud-oss-v2 1.4.1 V4 + V1 put_object and 3-part multipart -> ossvend local's sink, \
         bytes read back identical: OK"
    );
}

// ---------------------------------------------------------------- 2. ali-oss

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ali_oss_uploads_v1_and_v4_put_and_multipart_to_the_sink() {
    require_client_deps();
    let ls = LocalServer::start(None, &[]);
    let home = tempfile::tempdir().unwrap();
    let mut cmd = client_command("node", home.path());
    cmd.current_dir(clients_dir())
        .arg(script("local_alioss.js"))
        .args(["--creds-url", &creds_url(&ls, "sdk-upload")]);
    let r = run(cmd).await;
    print!("{}", r.output);
    let mp = 2 * PART + 50 * 1024;
    let expected = [
        Expected {
            label: "alioss-v1-put",
            key: "sdk/alioss/v1-put.bin",
            body: pattern(7, 3000 + 11),
            auth: "v1-header",
        },
        Expected {
            label: "alioss-v1-multipart",
            key: "sdk/alioss/v1-multipart.bin",
            body: pattern(8, mp),
            auth: "multipart",
        },
        Expected {
            label: "alioss-v4-put",
            key: "sdk/alioss/v4-put.bin",
            body: pattern(9, 3000 + 11),
            auth: "v4-header",
        },
        Expected {
            label: "alioss-v4-multipart",
            key: "sdk/alioss/v4-multipart.bin",
            body: pattern(10, mp),
            auth: "multipart",
        },
    ];
    assert_uploaded(&ls, &r, &expected).await;
    println!(
        "local: ali-oss 6.23.0 V1 + V4 put and multipartUpload (3 parts) -> ossvend local's sink, \
         bytes read back identical: OK"
    );
}

// ---------------------------------------------------------------- 3. oss2 and the session policy

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oss2_is_refused_outside_the_session_policy_prefix_and_accepted_inside() {
    require_client_deps();
    let ls = LocalServer::start(None, &[]);
    let home = tempfile::tempdir().unwrap();
    let mut cmd = client_command(venv_python(), home.path());
    cmd.arg(script("local_sdk.py"))
        .arg("oss2")
        .args(["--creds-url", &creds_url(&ls, "sdk-upload")]);
    let r = run(cmd).await;
    print!("{}", r.output);
    let context = || {
        format!(
            "client: {:?}\n{}\nossvend local logs:\n{}",
            r.code,
            r.output,
            ls.server.logs.text()
        )
    };
    assert!(r.succeeded(), "{}", context());
    let got = results(&r.output);
    for (label, key) in [
        ("oss2-v1-outside", "other/oss2-v1.txt"),
        ("oss2-v4-outside", "other/oss2-v4.txt"),
    ] {
        let line = got.iter().find(|(l, _, _)| l == label);
        assert_eq!(
            line.map(|(_, k, o)| (k.as_str(), o.as_str())),
            Some((key, "403 AccessDenied")),
            "{label}: a write outside sdk/ must be refused by the session policy\n{}",
            context()
        );
        assert_eq!(stored(&ls, key).await, None, "{key} was stored");
    }
    let objects = listing(&ls).await;
    assert!(
        !objects
            .iter()
            .any(|o| o["key"].as_str().unwrap_or_default().starts_with("other/")),
        "something outside the prefix was stored: {objects:?}"
    );
    assert!(
        !ls.data_dir.join("objects").join(BUCKET).join("other").exists(),
        "bytes outside the prefix reached the data dir"
    );
    // The same credential works inside the prefix: the refusal is the policy, not the setup.
    let inside = [
        Expected {
            label: "oss2-v1-inside",
            key: "sdk/oss2/v1-inside.txt",
            body: pattern(5, 1000),
            auth: "v1-header",
        },
        Expected {
            label: "oss2-v4-inside",
            key: "sdk/oss2/v4-inside.txt",
            body: pattern(6, 1000),
            auth: "v4-header",
        },
    ];
    assert_uploaded(&ls, &r, &inside).await;
    println!(
        "local: oss2 2.19.1 StsAuth (V1, V4): other/ -> 403 AccessDenied, nothing stored; sdk/ -> 200: OK"
    );
}

// ---------------------------------------------------------------- 4. sink verdicts

/// One raw HTTP request, sent byte-identical to both peers (signatures never cover the host).
#[derive(Clone)]
struct Raw {
    method: &'static str,
    /// `/<bucket>/<key>[?query]`, already encoded.
    path_query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

struct Case {
    name: String,
    req: Raw,
    /// What real OSS answers: `<status> <Code>`, or `<status> OK`.
    expect: &'static str,
}

/// Sends `r` to `base`; `<status> <Code>` (`OK` below 300, `?` without a Code).
async fn outcome(client: &reqwest::Client, base: &str, r: &Raw) -> String {
    let method = reqwest::Method::from_bytes(r.method.as_bytes()).unwrap();
    let mut b = client.request(method, format!("{base}{}", r.path_query));
    for (k, v) in &r.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    let resp = match b.body(r.body.clone()).send().await {
        Ok(resp) => resp,
        Err(e) => return format!("transport error: {e}"),
    };
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    let code = if status < 300 {
        "OK".to_string()
    } else {
        body.split_once("<Code>")
            .and_then(|(_, rest)| rest.split_once("</Code>"))
            .map(|(code, _)| code.to_string())
            .unwrap_or_else(|| "?".to_string())
    };
    format!("{status} {code}")
}

/// The part of a URL after `scheme://authority`.
fn path_query_of(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    rest.find('/')
        .map(|i| rest[i..].to_string())
        .unwrap_or_else(|| "/".into())
}

fn creds_of(c: &Value) -> SigningCredentials<'_> {
    SigningCredentials {
        access_key_id: c["AccessKeyId"].as_str().unwrap(),
        access_key_secret: c["AccessKeySecret"].as_str().unwrap(),
        security_token: c["SecurityToken"].as_str(),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Scheme {
    V1,
    V4,
}

impl Raw {
    fn with_body(self, body: &[u8]) -> Raw {
        Raw {
            body: body.to_vec(),
            ..self
        }
    }
}

/// A header-signed request (`Authorization: OSS …` or `OSS4-HMAC-SHA256 …`) at `at`,
/// without a body (see [`Raw::with_body`]).
fn header_signed(
    scheme: Scheme,
    creds: &SigningCredentials<'_>,
    method: &'static str,
    key: &str,
    query: &[(&str, &str)],
    headers: &[(&str, &str)],
    at: DateTime<Utc>,
) -> Raw {
    let req = RequestToSign {
        method,
        bucket: Some(BUCKET),
        key,
        headers,
        query,
    };
    let signed = match scheme {
        Scheme::V4 => oss_v4::sign_header(creds, &req, &V4Scope::oss(REGION), &[], at),
        Scheme::V1 => oss_v1::sign_header(creds, &req, at),
    }
    .unwrap();
    let mut all: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    all.extend(signed.headers_to_add);
    let q: Vec<String> = query
        .iter()
        .map(|(k, v)| {
            if v.is_empty() {
                k.to_string()
            } else {
                format!("{k}={v}")
            }
        })
        .collect();
    let path_query = if q.is_empty() {
        format!("/{BUCKET}/{key}")
    } else {
        format!("/{BUCKET}/{key}?{}", q.join("&"))
    };
    Raw {
        method,
        path_query,
        headers: all,
        body: Vec::new(),
    }
}

/// A presigned PUT (`text/plain`) signed at `at`, valid `secs`.
fn presigned_put(
    scheme: Scheme,
    creds: &SigningCredentials<'_>,
    key: &str,
    body: &[u8],
    at: DateTime<Utc>,
    secs: u64,
) -> Raw {
    let headers = [("Content-Type", "text/plain")];
    let req = RequestToSign {
        method: "PUT",
        bucket: Some(BUCKET),
        key,
        headers: &headers,
        query: &[],
    };
    let endpoint = Endpoint {
        base: "http://127.0.0.1:1",
        style: AddressingStyle::Path,
    };
    let p = match scheme {
        Scheme::V4 => oss_v4::presign_url(creds, &req, &V4Scope::oss(REGION), &[], &endpoint, at, secs),
        Scheme::V1 => oss_v1::presign_url(creds, &req, &endpoint, at, secs),
    }
    .unwrap();
    Raw {
        method: "PUT",
        path_query: path_query_of(&p.url),
        headers: p.required_headers,
        body: body.to_vec(),
    }
}

/// A PostObject form to `/<bucket>/`: the fields in order, the file last.
fn post_form(fields: &[(String, String)], filename: &str, content_type: &str, data: &[u8]) -> Raw {
    let boundary = "----ossvendlocaltest7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    for (k, v) in fields {
        body.extend(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n").as_bytes(),
        );
    }
    body.extend(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
             Content-Type: {content_type}\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend(data);
    body.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
    Raw {
        method: "POST",
        path_query: format!("/{BUCKET}/"),
        headers: vec![(
            "Content-Type".into(),
            format!("multipart/form-data; boundary={boundary}"),
        )],
        body,
    }
}

/// A PostObject form signed with `ossvend::sign::post`, with `conditions` (JSON
/// fragments) after the bucket and the scheme's required ones.
fn signed_form(
    scheme: Scheme,
    creds: &SigningCredentials<'_>,
    expiration: DateTime<Utc>,
    conditions: &[&str],
    fields: &[(&str, &str)],
    at: DateTime<Utc>,
) -> Vec<(String, String)> {
    let scope = V4Scope::oss(REGION);
    let mut conds: Vec<String> = vec![format!("{{\"bucket\":\"{BUCKET}\"}}")];
    conds.extend(conditions.iter().map(|c| c.to_string()));
    if scheme == Scheme::V4 {
        for (name, value) in post::v4_required_conditions(creds, &scope, at).unwrap() {
            conds.push(serde_json::json!({ name: value }).to_string());
        }
    }
    let policy = format!(
        "{{\"expiration\":\"{}\",\"conditions\":[{}]}}",
        expiration.format("%Y-%m-%dT%H:%M:%S.000Z"),
        conds.join(",")
    );
    match scheme {
        Scheme::V4 => post::sign_v4(creds, &scope, at, &policy, fields),
        Scheme::V1 => post::sign_v1(creds, &policy, fields),
    }
    .unwrap()
    .fields
}

/// Replaces the last character of a signature with another valid one.
fn tamper(sig: &str) -> String {
    let mut s = sig.to_string();
    let last = s.pop().unwrap();
    s.push(if last == 'a' { 'b' } else { 'a' });
    s
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    fields
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} in {fields:?}"))
}

/// The AccessKeyId a presigned URL or form carries (V4 credential scope or V1 field).
fn signer_ak(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .find_map(|(k, v)| match k.as_str() {
            "x-oss-credential" => v.split('/').next().map(str::to_owned),
            "OSSAccessKeyId" => Some(v.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

fn url_query(url: &str) -> Vec<(String, String)> {
    url::Url::parse(url).unwrap().query_pairs().into_owned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_verdicts_are_the_documented_ones() {
    require_client_deps();
    let ls = LocalServer::start(None, &[]);
    let client = http();

    // The vended credentials and the session policies they were issued with.
    let mut grants = Vec::new();
    for g in ["sdk-upload", "browser-upload", "browser-upload-v1"] {
        let c = get_json(&creds_url(&ls, g)).await;
        let explain = get_json(&ls.server.url(&format!("/v1/grants/{g}/explain"))).await;
        let policy = explain["policy_text"]
            .as_str()
            .unwrap_or_else(|| panic!("no policy_text: {explain}"))
            .to_string();
        grants.push((c, policy));
    }
    let (sdk, browser, browser_v1) = (&grants[0].0, &grants[1].0, &grants[2].0);
    assert_eq!(sdk["Prefix"], "sdk/");
    let c = creds_of(sdk);
    let now = Utc::now();
    let hour_ago = now - chrono::Duration::hours(1);
    let two_hours_ago = now - chrono::Duration::hours(2);
    let in_an_hour = now + chrono::Duration::hours(1);
    let text = [("Content-Type", "text/plain")];
    let body = b"hello from the cross-check".to_vec();

    let wrong_secret = SigningCredentials {
        access_key_secret: "fakeWrongSecretDoNotUse0001",
        ..c
    };
    let wrong_token_value = format!("{}x", c.security_token.unwrap());
    let wrong_token = SigningCredentials {
        security_token: Some(&wrong_token_value),
        ..c
    };
    let no_token = SigningCredentials {
        security_token: None,
        ..c
    };
    let unknown = SigningCredentials {
        access_key_id: "STS.NfakeUnknownKeyId000000001",
        ..c
    };

    let mut cases: Vec<Case> = Vec::new();
    let mut case = |name: &str, req: Raw, expect: &'static str| {
        cases.push(Case {
            name: name.to_string(),
            req,
            expect,
        })
    };

    // --- header-signed and presigned PUTs (grant sdk-upload, prefix sdk/)
    let put = |scheme, creds: &SigningCredentials<'_>, key: &str, at| {
        header_signed(scheme, creds, "PUT", key, &[], &text, at).with_body(&body)
    };
    case(
        "V4 header PUT",
        put(Scheme::V4, &c, "sdk/cross/v4-header.txt", now),
        "200 OK",
    );
    case(
        "V1 header PUT",
        put(Scheme::V1, &c, "sdk/cross/v1-header.txt", now),
        "200 OK",
    );
    let p = presigned_put(Scheme::V4, &c, "sdk/cross/v4-presigned.txt", &body, now, 600);
    case("V4 presigned PUT", p, "200 OK");
    let p = presigned_put(Scheme::V1, &c, "sdk/cross/v1-presigned.txt", &body, now, 600);
    case("V1 presigned PUT", p, "200 OK");

    let mut r = put(Scheme::V4, &c, "sdk/cross/tampered-v4.txt", now);
    for (k, v) in r.headers.iter_mut() {
        if k == "Authorization" {
            *v = tamper(v);
        }
    }
    case(
        "V4 header PUT, tampered signature",
        r,
        "403 SignatureDoesNotMatch",
    );
    let r = put(Scheme::V1, &wrong_secret, "sdk/cross/wrong-secret-v1.txt", now);
    case(
        "V1 header PUT, signed with a wrong secret",
        r,
        "403 SignatureDoesNotMatch",
    );
    let mut r = presigned_put(
        Scheme::V4,
        &c,
        "sdk/cross/tampered-presigned.txt",
        &body,
        now,
        600,
    );
    let sig = url_query(&format!("http://x{}", r.path_query))
        .into_iter()
        .find(|(k, _)| k == "x-oss-signature")
        .unwrap()
        .1;
    r.path_query = r.path_query.replace(
        &format!("x-oss-signature={sig}"),
        &format!("x-oss-signature={}", tamper(&sig)),
    );
    case(
        "V4 presigned PUT, tampered signature",
        r,
        "403 SignatureDoesNotMatch",
    );
    let r = put(Scheme::V4, &wrong_token, "sdk/cross/wrong-token.txt", now);
    case(
        "V4 header PUT, wrong security token",
        r,
        "403 InvalidSecurityToken",
    );
    let r = put(Scheme::V1, &no_token, "sdk/cross/no-token.txt", now);
    case("V1 header PUT, no security token", r, "403 InvalidSecurityToken");
    let r = presigned_put(
        Scheme::V4,
        &no_token,
        "sdk/cross/no-token-presigned.txt",
        &body,
        now,
        600,
    );
    case(
        "V4 presigned PUT, no security token",
        r,
        "403 InvalidSecurityToken",
    );
    let r = put(Scheme::V4, &unknown, "sdk/cross/unknown-ak.txt", now);
    case("V4 header PUT, unknown AccessKeyId", r, "403 InvalidAccessKeyId");
    case(
        "V4 header PUT, key outside the prefix",
        put(Scheme::V4, &c, "other/v4-header.txt", now),
        "403 AccessDenied",
    );
    let r = presigned_put(Scheme::V1, &c, "other/v1-presigned.txt", &body, now, 600);
    case("V1 presigned PUT, key outside the prefix", r, "403 AccessDenied");
    let r = presigned_put(
        Scheme::V4,
        &c,
        "sdk/cross/expired-v4.txt",
        &body,
        two_hours_ago,
        600,
    );
    case("V4 presigned PUT, expired", r, "403 AccessDenied");
    let r = presigned_put(
        Scheme::V1,
        &c,
        "sdk/cross/expired-v1.txt",
        &body,
        two_hours_ago,
        600,
    );
    case("V1 presigned PUT, expired", r, "403 AccessDenied");
    let r = put(Scheme::V4, &c, "sdk/cross/skewed.txt", hour_ago);
    case("V4 header PUT, x-oss-date 1 h ago", r, "403 RequestTimeTooSkewed");
    let md5 = [
        ("Content-Type", "text/plain"),
        ("Content-MD5", "1B2M2Y8AsgTpgAmY7PhCfg=="),
    ];
    let r = header_signed(Scheme::V4, &c, "PUT", "sdk/cross/bad-md5.txt", &[], &md5, now).with_body(&body);
    case(
        "V4 header PUT, Content-MD5 of another body",
        r,
        "400 InvalidDigest",
    );
    let r = Raw {
        method: "PUT",
        path_query: format!("/{BUCKET}/sdk/cross/anonymous.txt"),
        headers: vec![("Content-Type".into(), "text/plain".into())],
        body: body.clone(),
    };
    case("anonymous PUT", r, "403 AccessDenied");
    let r = header_signed(Scheme::V4, &c, "GET", "sdk/cross/v4-header.txt", &[], &[], now);
    case("V4 header GET (not in the session policy)", r, "403 AccessDenied");

    // --- object ACLs (issue 13): x-oss-object-acl on a write needs oss:PutObjectAcl,
    // which no grant's session policy holds; a value OSS does not know is refused first.
    let public = [
        ("Content-Type", "text/plain"),
        ("x-oss-object-acl", "public-read"),
    ];
    for (label, scheme) in [("V4", Scheme::V4), ("V1", Scheme::V1)] {
        let key = format!("sdk/cross/acl-{}.txt", label.to_lowercase());
        let r = header_signed(scheme, &c, "PUT", &key, &[], &public, now).with_body(&body);
        case(
            &format!("{label} header PUT, x-oss-object-acl public-read"),
            r,
            "403 AccessDenied",
        );
    }
    let bogus = [
        ("Content-Type", "text/plain"),
        ("x-oss-object-acl", "world-writable"),
    ];
    let r =
        header_signed(Scheme::V4, &c, "PUT", "sdk/cross/acl-bogus.txt", &[], &bogus, now).with_body(&body);
    case(
        "V4 header PUT, unknown x-oss-object-acl",
        r,
        "400 InvalidArgument",
    );
    let acl_only = [("x-oss-object-acl", "public-read-write")];
    let r = header_signed(
        Scheme::V4,
        &c,
        "POST",
        "sdk/cross/acl-mp.bin",
        &[("uploads", "")],
        &acl_only,
        now,
    );
    case(
        "V4 InitiateMultipartUpload, x-oss-object-acl public-read-write",
        r,
        "403 AccessDenied",
    );

    // --- multipart
    let uploads = [("uploads", "")];
    let r = header_signed(Scheme::V4, &c, "POST", "other/mp.bin", &uploads, &[], now);
    case(
        "V4 InitiateMultipartUpload outside the prefix",
        r,
        "403 AccessDenied",
    );
    let r = header_signed(Scheme::V4, &c, "POST", "sdk/cross/mp.bin", &uploads, &[], now);
    case("V4 InitiateMultipartUpload inside the prefix", r, "200 OK");
    let q = [
        ("partNumber", "1"),
        ("uploadId", "0004B9894A22E5B1888A1E29F823NOPE"),
    ];
    let r = header_signed(Scheme::V4, &c, "PUT", "sdk/cross/mp.bin", &q, &[], now).with_body(b"part");
    case("V4 UploadPart, unknown uploadId", r, "404 NoSuchUpload");
    let q = [("uploadId", "0004B9894A22E5B1888A1E29F823NOPE")];
    let r = header_signed(Scheme::V1, &c, "DELETE", "sdk/cross/mp.bin", &q, &[], now);
    case("V1 AbortMultipartUpload, unknown uploadId", r, "404 NoSuchUpload");

    // --- PostObject signed here (grant sdk-upload's credential)
    let range = r#"["content-length-range",0,1024]"#;
    let sdk_prefix = r#"["starts-with","$key","sdk/"]"#;
    let f = signed_form(
        Scheme::V4,
        &c,
        in_an_hour,
        &[sdk_prefix, range],
        &[("key", "sdk/cross/post-v4.txt")],
        now,
    );
    case(
        "PostObject V4",
        post_form(&f, "a.txt", "text/plain", &body),
        "204 OK",
    );
    let f = signed_form(
        Scheme::V1,
        &c,
        in_an_hour,
        &[sdk_prefix, range],
        &[("key", "sdk/cross/post-v1.txt")],
        now,
    );
    case(
        "PostObject V1",
        post_form(&f, "a.txt", "text/plain", &body),
        "204 OK",
    );
    let fields = [
        ("key", "sdk/cross/post-acl.txt"),
        ("x-oss-object-acl", "public-read"),
    ];
    let f = signed_form(Scheme::V4, &c, in_an_hour, &[sdk_prefix, range], &fields, now);
    case(
        "PostObject V4, x-oss-object-acl public-read field",
        post_form(&f, "a.txt", "text/plain", &body),
        "403 AccessDenied",
    );
    let small = r#"["content-length-range",0,10]"#;
    let f = signed_form(
        Scheme::V4,
        &c,
        in_an_hour,
        &[sdk_prefix, small],
        &[("key", "sdk/cross/post-big.txt")],
        now,
    );
    let r = post_form(&f, "a.txt", "text/plain", b"eleven byte");
    case(
        "PostObject V4, file over content-length-range",
        r,
        "400 EntityTooLarge",
    );
    let png = r#"["eq","$Content-Type","image/png"]"#;
    let fields = [("key", "sdk/cross/post-type.txt"), ("Content-Type", "text/plain")];
    let f = signed_form(Scheme::V4, &c, in_an_hour, &[sdk_prefix, png], &fields, now);
    let r = post_form(&f, "a.txt", "text/plain", &body);
    case(
        "PostObject V4, Content-Type condition violated",
        r,
        "403 AccessDenied",
    );
    let other = r#"["starts-with","$key","other/"]"#;
    let f = signed_form(
        Scheme::V1,
        &c,
        in_an_hour,
        &[other],
        &[("key", "other/post-v1.txt")],
        now,
    );
    let r = post_form(&f, "a.txt", "text/plain", &body);
    case(
        "PostObject V1, key outside the session policy",
        r,
        "403 AccessDenied",
    );
    let mut f = signed_form(
        Scheme::V4,
        &c,
        in_an_hour,
        &[sdk_prefix],
        &[("key", "sdk/cross/post-bad.txt")],
        now,
    );
    for (k, v) in f.iter_mut() {
        if k == "x-oss-signature" {
            *v = tamper(v);
        }
    }
    let r = post_form(&f, "a.txt", "text/plain", &body);
    case(
        "PostObject V4, tampered signature",
        r,
        "403 SignatureDoesNotMatch",
    );
    let f = signed_form(
        Scheme::V4,
        &c,
        hour_ago,
        &[sdk_prefix],
        &[("key", "sdk/cross/post-old.txt")],
        two_hours_ago,
    );
    let r = post_form(&f, "a.txt", "text/plain", &body);
    case("PostObject V4, policy expired", r, "403 AccessDenied");

    // --- made by ossvend's own routes (grants browser-upload and browser-upload-v1)
    for (grant, creds, label) in [
        ("browser-upload", browser, "V4"),
        ("browser-upload-v1", browser_v1, "V1"),
    ] {
        let raw = http()
            .get(
                ls.server
                    .url(&format!("/v1/grants/{grant}/post-policy?content_type=text/plain")),
            )
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let fields = ordered_fields(&raw);
        let form: Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(
            signer_ak(&fields),
            creds["AccessKeyId"].as_str().unwrap(),
            "the form is not signed with the credential /credentials served: {raw}"
        );
        let host = form["host"].as_str().unwrap();
        assert_eq!(path_query_of(host), format!("/{BUCKET}/"), "{raw}");
        let file = format!("route-{}.txt", label.to_lowercase());
        let r = post_form(&fields, &file, "text/plain", &body);
        case(&format!("ossvend /post-policy {label} form"), r, "200 OK");
        let mut bad = fields.clone();
        for (k, v) in bad.iter_mut() {
            if k.eq_ignore_ascii_case("Content-Type") {
                *v = "text/html".into();
            }
        }
        let r = post_form(&bad, "route-html.txt", "text/html", &body);
        case(
            &format!("ossvend /post-policy {label} form, Content-Type not allowed"),
            r,
            "403 AccessDenied",
        );
        // A client adding a public ACL to ossvend's form: not bound by the policy
        // (OSS checks only the fields its conditions name), refused by the session policy.
        let mut public = fields.clone();
        let at = public.iter().position(|(k, _)| k == "policy").unwrap();
        public.insert(at, ("x-oss-object-acl".into(), "public-read".into()));
        let r = post_form(&public, "route-public.txt", "text/plain", &body);
        case(
            &format!("ossvend /post-policy {label} form + x-oss-object-acl public-read"),
            r,
            "403 AccessDenied",
        );
        assert_eq!(
            field(&fields, "key"),
            format!("{}${{filename}}", creds["Prefix"].as_str().unwrap())
        );

        let p = get_json(
            &ls.server
                .url(&format!("/v1/grants/{grant}/presign?content_type=text/plain")),
        )
        .await;
        let url = p["url"].as_str().unwrap();
        assert_eq!(
            signer_ak(&url_query(url)),
            creds["AccessKeyId"].as_str().unwrap(),
            "the URL is not signed with the credential /credentials served: {p}"
        );
        let headers: Vec<(String, String)> = p["headers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        let r = Raw {
            method: "PUT",
            path_query: path_query_of(url),
            headers: headers.clone(),
            body: body.clone(),
        };
        case(&format!("ossvend /presign {label} URL"), r.clone(), "200 OK");
        let r = Raw {
            headers: vec![("Content-Type".into(), "image/png".into())],
            ..r
        };
        case(
            &format!("ossvend /presign {label} URL, another Content-Type sent"),
            r.clone(),
            "403 SignatureDoesNotMatch",
        );
        // V1 and V4 sign every x-oss-* header: an added ACL breaks the signature.
        let mut public = headers.clone();
        public.push(("x-oss-object-acl".into(), "public-read".into()));
        let r = Raw { headers: public, ..r };
        case(
            &format!("ossvend /presign {label} URL + x-oss-object-acl public-read"),
            r,
            "403 SignatureDoesNotMatch",
        );
    }

    // --- every request to the sink
    let mut rows = Vec::new();
    let mut bad = 0;
    for c in &cases {
        let sink = outcome(&client, &ls.oss, &c.req).await;
        let mark = if sink != c.expect {
            bad += 1;
            "UNEXPECTED"
        } else {
            "ok"
        };
        rows.push(format!("{mark:<10} {:<62} {:<28} {}", c.name, sink, c.expect));
    }
    let table = format!(
        "{:<10} {:<62} {:<28} {}\n{}",
        "",
        "case",
        "ossvend local sink",
        "expected",
        rows.join("\n")
    );
    println!("{table}");
    assert!(cases.len() >= 10);
    assert_eq!(
        bad,
        0,
        "the sink's verdicts are not the expected ones\n{table}\nossvend local logs:\n{}",
        ls.server.logs.text()
    );

    // It stored the accepted uploads, with the bytes sent.
    let mut in_sink: Vec<(String, String, u64)> = listing(&ls)
        .await
        .iter()
        .filter(|o| o["bucket"] == BUCKET)
        .map(|o| {
            (
                o["key"].as_str().unwrap().to_string(),
                o["md5"].as_str().unwrap().to_string(),
                o["size"].as_u64().unwrap(),
            )
        })
        .collect();
    in_sink.sort();
    assert_eq!(in_sink.len(), 10, "{in_sink:?}");
    println!(
        "local: {} raw requests -> the documented verdicts; {} objects stored: OK",
        cases.len(),
        in_sink.len()
    );
}

// ---------------------------------------------------------------- 5. basics

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mode_serves_the_demo_page_and_its_status() {
    let ls = LocalServer::start(None, &[]);
    let r = http().get(ls.server.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(ct.starts_with("text/html"), "{ct}");
    let page = r.text().await.unwrap();
    assert!(page.contains("<title>ossvend · upload demo</title>"), "{page}");

    let status = get_json(&ls.server.url("/_local/status")).await;
    assert_eq!(status["mode"], "local", "{status}");
    assert_eq!(status["oss_endpoint"].as_str(), Some(ls.oss.as_str()), "{status}");
    assert_eq!(
        status["sts_endpoint"].as_str(),
        Some(format!("{}/_local/sts", ls.server.base).as_str())
    );
    let grants: Vec<&str> = status["grants"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for g in ["browser-upload", "browser-upload-v1", "sdk-upload"] {
        assert!(grants.contains(&g), "{status}");
    }
    // The vended credential points at the sink.
    let c = get_json(&creds_url(&ls, "sdk-upload")).await;
    assert_eq!(c["OssEndpoint"].as_str(), Some(ls.oss.as_str()), "{c}");
    assert_eq!(
        (c["Bucket"].as_str(), c["Region"].as_str()),
        (Some(BUCKET), Some("oss-cn-hangzhou"))
    );
    assert!(c["AccessKeyId"].as_str().unwrap().starts_with("STS."), "{c}");
}

/// Issue 13 item 7f: `server.log_format = "json"` holds in local mode too: every
/// line on stderr — the start-up lines, ossvend's requests, the sink's — is JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mode_honours_json_logs() {
    let config = std::fs::read_to_string(repo_root().join("config/ossvend.local.toml"))
        .unwrap()
        .replacen("[server]\n", "[server]\nlog_format = \"json\"\n", 1);
    let ls = LocalServer::start(Some(&config), &[]);
    let c = get_json(&creds_url(&ls, "sdk-upload")).await;
    assert!(c["AccessKeyId"].is_string(), "{c}");
    let r = http()
        .get(format!("{}/{BUCKET}/nothing-here", ls.oss))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(
        ls.server
            .logs
            .wait_for("local OSS request", Duration::from_secs(10))
            .await,
        "{}",
        ls.server.logs.text()
    );
    let text = ls.server.logs.text();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{text}")))
        .collect();
    let message = |m: &str| {
        lines
            .iter()
            .find(|l| l["message"].as_str().is_some_and(|s| s.contains(m)))
            .unwrap_or_else(|| panic!("no {m:?} line in\n{text}"))
    };
    assert_eq!(message("LOCAL MODE")["level"], "WARN");
    assert!(
        message("ossvend local listening on")["oss"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:")
    );
    assert_eq!(message("local OSS request")["status"], 403);
}

/// Peak resident memory of a process (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in\n{status}"))
}

/// Issue 13 item 7a: the sink streams upload bodies to disk. A 64 MiB PostObject
/// form and a 64 MiB presigned PUT raise the local process's peak RSS by far less
/// than the body (a form used to be read whole: 16 -> 229 MB), and the stored
/// bytes are the bytes sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_uploads_stream_to_disk_in_bounded_memory() {
    const SIZE: usize = 64 * 1024 * 1024;
    let config = std::fs::read_to_string(repo_root().join("config/ossvend.local.toml"))
        .unwrap()
        .replace("max_size_bytes = 10485760", "max_size_bytes = 134217728");
    let ls = LocalServer::start(Some(&config), &[]);
    let pid = ls.server.pid();
    let client = http();
    let data = pattern(7, SIZE);
    let form_for = |fields: &[(String, String)], data: &[u8]| {
        let r = post_form(fields, "big.bin", "text/plain", data);
        client
            .post(format!("{}{}", ls.oss, r.path_query))
            .header("content-type", r.headers[0].1.clone())
            .body(r.body)
    };
    let policy = ls
        .server
        .url("/v1/grants/browser-upload/post-policy?content_type=text/plain");
    let fields = ordered_fields(&client.get(&policy).send().await.unwrap().text().await.unwrap());
    // Warm up on a small form, so the baseline has served one already.
    let r = form_for(&fields, b"small").send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let p = get_json(
        &ls.server
            .url("/v1/grants/browser-upload/presign?content_type=text/plain"),
    )
    .await;
    let put = |body: Vec<u8>| {
        let mut put = client.put(p["url"].as_str().unwrap()).body(body);
        for (k, v) in p["headers"].as_object().unwrap() {
            put = put.header(k.as_str(), v.as_str().unwrap());
        }
        put
    };
    let r = put(b"small".to_vec()).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let before = peak_rss_kib(pid);

    let r = put(data.clone()).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let after_put = peak_rss_kib(pid);

    let r = form_for(&fields, &data).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let after_post = peak_rss_kib(pid);
    eprintln!(
        "local sink peak RSS (VmHWM): {before} KiB before, {after_put} KiB after a {} MiB PutObject, \
         {after_post} KiB after a {} MiB PostObject",
        SIZE >> 20,
        SIZE >> 20
    );

    let want = md5_hex(&data);
    for key in [
        "uploads/big.bin".to_string(),
        p["key"].as_str().unwrap().to_string(),
    ] {
        let on_disk = std::fs::read(ls.data_dir.join("objects").join(BUCKET).join(&key)).unwrap();
        assert_eq!((on_disk.len(), md5_hex(&on_disk)), (SIZE, want.clone()), "{key}");
    }
    let budget = (SIZE / 1024 / 4) as u64; // a quarter of the body
    assert!(
        after_put - before < budget,
        "a {} MiB PUT raised the peak RSS by {} KiB",
        SIZE >> 20,
        after_put - before
    );
    assert!(
        after_post - after_put < budget,
        "a {} MiB form raised the peak RSS by {} KiB",
        SIZE >> 20,
        after_post - after_put
    );
}

/// Runs `ossvend local` with `args`; (exit code, stderr), or a panic if it keeps running.
fn run_local_expecting_exit(args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ossvend"))
        .arg("local")
        .args(args)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&out).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "ossvend local {args:?} kept running\n{}",
                std::fs::read_to_string(&out).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.code(), std::fs::read_to_string(&out).unwrap_or_default())
}

#[test]
fn local_mode_refuses_to_listen_beyond_loopback() {
    for args in [
        &["--listen", "0.0.0.0:0"][..],
        &["--listen", "127.0.0.1:0", "--oss-listen", "0.0.0.0:0"][..],
    ] {
        let (code, stderr) = run_local_expecting_exit(args);
        assert!(code.is_some_and(|c| c != 0), "{args:?}: exit {code:?}\n{stderr}");
        assert!(
            stderr.contains("loopback"),
            "{args:?}: no word about loopback\n{stderr}"
        );
        assert!(
            stderr.contains("0.0.0.0"),
            "{args:?}: the refused address is not named\n{stderr}"
        );
    }
}

/// The RPC parameters of an AssumeRole call made with `ak` (and `token`), signed with `secret`.
fn assume_role_form(ak: &str, secret: &str, token: Option<&str>) -> Vec<(String, String)> {
    let mut params: Vec<(String, String)> = [
        ("Action", "AssumeRole"),
        ("Version", "2015-04-01"),
        ("Format", "JSON"),
        ("AccessKeyId", ak),
        ("SignatureMethod", "HMAC-SHA1"),
        ("SignatureVersion", "1.0"),
        ("RoleArn", "acs:ram::1000000000000001:role/ossvend-local"),
        ("RoleSessionName", "local-test"),
        ("DurationSeconds", "900"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    params.push(("SignatureNonce".into(), uuid::Uuid::new_v4().to_string()));
    params.push((
        "Timestamp".into(),
        Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    ));
    if let Some(t) = token {
        params.push(("SecurityToken".into(), t.into()));
    }
    let sig = ossvend::sign::sts_rpc::sign(
        "POST",
        params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        secret,
    );
    params.push(("Signature".into(), sig.signature));
    params
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sts_emulator_refuses_keys_it_did_not_issue() {
    let ls = LocalServer::start(None, &[]);
    let sts = ls.server.url("/_local/sts");
    let call = |params: Vec<(String, String)>| {
        let sts = sts.clone();
        async move {
            let r = http().post(&sts).form(&params).send().await.unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            (status, body)
        }
    };
    // An AccessKeyId nobody issued.
    let (status, body) = call(assume_role_form(
        "LTAIfakeUnknownKey0001",
        "fakeSecretDoNotUse0001",
        None,
    ))
    .await;
    assert_eq!(
        (status, body["Code"].as_str()),
        (404, Some("InvalidAccessKeyId.NotFound")),
        "{body}"
    );
    assert!(body["Credentials"].is_null(), "{body}");
    // A temporary key the emulator minted (with its own secret) cannot mint more.
    let c = get_json(&creds_url(&ls, "sdk-upload")).await;
    let params = assume_role_form(
        c["AccessKeyId"].as_str().unwrap(),
        c["AccessKeySecret"].as_str().unwrap(),
        c["SecurityToken"].as_str(),
    );
    let (status, body) = call(params).await;
    assert_eq!(
        (status, body["Code"].as_str()),
        (404, Some("InvalidAccessKeyId.NotFound")),
        "{body}"
    );
    // An unsigned request.
    let mut params = assume_role_form("LTAIfakeUnknownKey0001", "fakeSecretDoNotUse0001", None);
    params.retain(|(k, _)| k != "Signature");
    let (status, body) = call(params).await;
    assert_eq!(
        (status, body["Code"].as_str()),
        (400, Some("MissingSignature")),
        "{body}"
    );
    // ossvend itself (holding the root key) still gets credentials from it.
    let again = get_json(&creds_url(&ls, "browser-upload")).await;
    assert!(
        again["AccessKeyId"].as_str().unwrap().starts_with("STS."),
        "{again}"
    );
}

// ---------------------------------------------------------------- README snippets

/// The top-level keys of a (possibly abbreviated, so not parseable) JSON
/// example: every `"name":` at brace depth 1.
fn documented_keys(example: &str) -> std::collections::BTreeSet<String> {
    let (mut depth, mut in_str, mut escaped, mut current, mut keys) =
        (0, false, false, String::new(), std::collections::BTreeSet::new());
    let mut last_str = None;
    for c in example.chars() {
        if in_str {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => {
                    in_str = false;
                    last_str = Some(std::mem::take(&mut current));
                }
                _ => {
                    escaped = false;
                    current.push(c);
                }
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '{' | '[' => depth += 1,
            '}' | ']' => depth -= 1,
            ':' if depth == 1 => {
                if let Some(k) = last_str.take() {
                    keys.insert(k);
                }
            }
            c if !c.is_whitespace() => last_str = None,
            _ => {}
        }
    }
    keys
}

/// The README's `$ curl -s http://127.0.0.1:8000/…` examples, run against
/// `ossvend local` (what the README's first command starts): each answers 200
/// with exactly the top-level keys the README shows.
#[tokio::test]
async fn the_readme_curl_examples_answer_as_shown() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let ls = LocalServer::start(None, &[]);
    let mut checked = 0;
    for block in readme.split("```sh\n").skip(1) {
        let block = block.split("```").next().unwrap();
        let Some(rest) = block.strip_prefix("$ curl -s ") else {
            continue;
        };
        let (cmd, output) = rest.split_once('\n').unwrap();
        let url = cmd.trim().trim_matches('\'');
        let path = url
            .strip_prefix("http://127.0.0.1:8000")
            .expect("examples use the local address");
        let output = output.split("\n$ ").next().unwrap();
        let r = http().get(ls.server.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
        let body: Value = r.json().await.unwrap();
        let actual: std::collections::BTreeSet<String> = body.as_object().unwrap().keys().cloned().collect();
        assert_eq!(documented_keys(output), actual, "README example for {url}");
        checked += 1;
    }
    assert_eq!(checked, 3, "the README's three curl examples");
}

// ---------------------------------------------------------------- upload callbacks (issue 18)

/// Issue 18, local mode: with the ready config (what the README's first command
/// runs) the sink calls back after a presigned PUT and, with no `[webhooks] url`,
/// the upload's answer is the verified event itself (real size, MD5 ETag, type);
/// the start-up log says so in one line; callbacks a client forges straight to the
/// receiver are refused and answered with no event; `--no-callbacks` turns it off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mode_answers_uploads_with_the_verified_event_and_refuses_forgeries() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let ls = LocalServer::start(None, &[]);
    let line =
        "upload callbacks: the sink calls back after form, presigned and session uploads of browser-upload";
    assert!(
        ls.server.logs.wait_for(line, Duration::from_secs(10)).await,
        "no start-up line about callbacks:\n{}",
        ls.server.logs.text()
    );
    assert!(
        ls.server
            .logs
            .text()
            .contains("answered to the uploader as the upload's response (no [webhooks] url)"),
        "{}",
        ls.server.logs.text()
    );

    let png = pattern(18, 3000);
    let p = get_json(
        &ls.server
            .url("/v1/grants/browser-upload/presign?filename=cb.png&content_type=image/png"),
    )
    .await;
    // Exactly the headers that were signed (Content-Type, x-oss-forbid-overwrite).
    let url = p["url"].as_str().unwrap();
    let mut put = http().put(url);
    for (name, value) in p["headers"].as_object().unwrap() {
        put = put.header(name.as_str(), value.as_str().unwrap());
    }
    let put = put.body(png.clone()).send().await.unwrap();
    assert_eq!(put.status().as_u16(), 200, "{}", ls.server.logs.text());
    let event: Value = put.json().await.unwrap();
    let key = p["key"].as_str().unwrap();
    assert_eq!(event["event"], "upload.completed", "{event}");
    assert_eq!(
        (event["key"].as_str(), event["size"].as_u64()),
        (Some(key), Some(3000))
    );
    assert_eq!(
        (event["etag"].as_str(), event["content_type"].as_str()),
        (Some(md5_hex(&png).to_uppercase().as_str()), Some("image/png"))
    );
    assert_eq!(
        (event["grant"].as_str(), event["bucket"].as_str()),
        (Some("browser-upload"), Some(BUCKET))
    );
    assert_eq!(stored(&ls, key).await.as_deref(), Some(png.as_slice()));

    // The body the sink would send for another object, with ossvend's own variables
    // (from the URL), posted by a client: no OSS signature, a wrong one, or a key URL
    // of its own choosing. Each is refused; none is answered with an event.
    let vars: Value = url_query(url)
        .iter()
        .find(|(k, _)| k == "callback-var")
        .map(|(_, v)| serde_json::from_slice(&b64.decode(v).unwrap()).unwrap())
        .unwrap();
    let body = serde_json::json!({
        "bucket": BUCKET, "object": "uploads/forged.png", "etag": "0123456789ABCDEF0123456789ABCDEF",
        "size": 1, "mimeType": "image/png", "grant": vars["x:grant"], "subject": vars["x:subject"],
        "request_id": vars["x:request_id"], "prefix": vars["x:prefix"], "sig": vars["x:sig"],
    })
    .to_string();
    let sink_key = b64.encode(format!("{}/_ossvend/callback_pub_key_v1.pem", ls.oss));
    let own_key = b64.encode("http://127.0.0.1:9/attacker.pem");
    let garbage = b64.encode([7u8; 128]);
    for (what, auth, key_url, code) in [
        ("unsigned", None, None, "callback_unsigned"),
        (
            "signature not the sink's",
            Some(&garbage),
            Some(&sink_key),
            "callback_signature_invalid",
        ),
        (
            "key URL of its own",
            Some(&garbage),
            Some(&own_key),
            "callback_key_url_refused",
        ),
    ] {
        let mut req = http()
            .post(ls.server.url("/v1/callbacks/oss"))
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(a) = auth {
            req = req.header("authorization", a.as_str());
        }
        if let Some(k) = key_url {
            req = req.header("x-oss-pub-key-url", k.as_str());
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let answer: Value = r.json().await.unwrap();
        assert_eq!(
            (status, answer["code"].as_str()),
            (403, Some(code)),
            "{what}: {answer}"
        );
        assert!(answer.get("event").is_none(), "{what}: {answer}");
    }

    // `--no-callbacks`: the previous behaviour, a plain upload answered with no body.
    let off = LocalServer::start(None, &["--no-callbacks"]);
    assert!(
        off.server
            .logs
            .wait_for("upload callbacks: off", Duration::from_secs(10))
            .await,
        "{}",
        off.server.logs.text()
    );
    let p = get_json(
        &off.server
            .url("/v1/grants/browser-upload/presign?filename=plain.png&content_type=image/png"),
    )
    .await;
    assert!(!p["url"].as_str().unwrap().contains("callback"), "{p}");
    let mut put = http().put(p["url"].as_str().unwrap());
    for (name, value) in p["headers"].as_object().unwrap() {
        put = put.header(name.as_str(), value.as_str().unwrap());
    }
    let put = put.body(png).send().await.unwrap();
    assert_eq!(put.status().as_u16(), 200);
    assert_eq!(put.text().await.unwrap(), "");
}
