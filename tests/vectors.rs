//! Checks our signers against every vector in `tests/vectors/*.json` (the repository's own
//! copy, computed by running the official SDKs; docs/signing.md §14) and
//! compares everything a vector states that they produce.
//! `OSSVEND_VECTORS_DIR` points the test at another directory of the same files.
//!
//! Every `*.json` there gets one line: `vectors: <file> checked=<n> skipped=<m>`.
//! Files of kinds not implemented yet show `checked=0 skipped=<all>`. In a file
//! of an implemented kind, a vector is either checked, or skipped with a printed
//! reason; anything else (a mismatch, a refusal, a vector left unhandled) is a
//! failure. The fake STS's own verifier is then run against the STS vectors.
//!
//! The identity-source files (`cred_*.json`, `sts_oidc_request.json`) are
//! checked by driving ossvend's providers against a scripted HTTP server in this
//! process: what they send must be what the official SDK sent (method, path,
//! query, headers, body as the vector states, up to the transport variants the
//! spec lists as equivalent), and what they accept or reject must match.
//!
//! A plain `main` (harness = false), so the lines always print. The last line is
//! `vectors: <passed> passed, <failed> failed` (passed = vectors checked plus the
//! fake STS self-test); the exit status is non-zero on any failure.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chrono::{DateTime, NaiveDateTime, Utc};
use ossvend::sign;

use sign::encode::pct;
use sign::oss_v4::V4Scope;
use sign::{AddressingStyle, Endpoint, PresignedUrl, RequestToSign, SignError, SigningCredentials};

/// Checks one vector of a file: on success it counts it as checked (or calls
/// [`Run::skip`]); on a mismatch it records a failure.
type Checker = fn(&mut Run, &Value);

/// The kinds we implement, by file name. Any other `*.json` is not implemented yet.
const FILES: &[(&str, Checker)] = &[
    ("oss_v1_header.json", oss_v1_header),
    ("oss_v1_presign.json", oss_v1_presign),
    ("oss_v4_header.json", oss_v4_header),
    ("oss_v4_presign.json", oss_v4_presign),
    ("oss_post_v1.json", oss_post_v1),
    ("oss_post_v4.json", oss_post_v4),
    ("s3_sigv4_presign.json", s3_sigv4_presign),
    ("s3_post_policy.json", s3_post_policy),
    ("sts_rpc_hmac_sha1.json", sts_rpc_hmac_sha1),
    ("cred_ecs_metadata.json", cred_ecs_metadata),
    ("cred_uri_response.json", cred_uri_response),
    ("cred_sts_via_credentials_sdk.json", cred_sts_via_credentials_sdk),
    ("sts_oidc_request.json", sts_oidc_request),
    ("client_response_shapes.json", client_response_shapes),
];

fn main() -> ExitCode {
    let dir = vectors_dir();
    let (mut passed, mut failed) = (0usize, 0usize);
    let mut failures = Vec::new();

    let mut files: Vec<(String, PathBuf)> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), p))
            .collect(),
        Err(e) => {
            failures.push(format!("cannot read {}: {e}", dir.display()));
            failed += 1;
            Vec::new()
        }
    };
    files.sort();
    // An implemented kind whose file is missing is a failure, not a silent pass.
    for (file, _) in FILES {
        if !files.iter().any(|(name, _)| name == file) {
            failures.push(format!("{file}: missing from {}", dir.display()));
            failed += 1;
        }
    }

    for (name, path) in &files {
        let json: Value = match std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
        {
            Ok(j) => j,
            Err(e) => {
                failures.push(format!("{name}: cannot read as JSON: {e}"));
                failed += 1;
                println!("vectors: {name} checked=0 skipped=0");
                continue;
            }
        };
        let vectors = json["vectors"].as_array();
        let Some((_, check)) = FILES.iter().find(|(f, _)| f == name) else {
            println!("vectors: {name} checked=0 skipped={}", vectors.len());
            continue;
        };
        let mut run = Run {
            file: name.clone(),
            id: String::new(),
            checked: 0,
            skipped: 0,
            failures: Vec::new(),
        };
        let mut file_failed = 0;
        if vectors.is_empty() {
            run.failures
                .push(format!("{name}: no vectors in a file of an implemented kind"));
            file_failed += 1;
        }
        for v in vectors {
            run.id = s(&v["id"]).to_string();
            let before = (run.checked, run.skipped, run.failures.len());
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check(&mut run, v))) {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|m| m.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                run.fail(format!("checker panicked: {msg}"));
            }
            let (checked, skipped) = (run.checked - before.0, run.skipped - before.1);
            if run.failures.len() > before.2 {
                // A mismatch anywhere fails the vector, even if the checker got to the end.
                run.checked = before.0;
                run.skipped = before.1;
                file_failed += 1;
            } else if checked + skipped != 1 {
                run.fail(format!(
                    "neither checked nor skipped exactly once (checked={checked} skipped={skipped})"
                ));
                run.checked = before.0;
                run.skipped = before.1;
                file_failed += 1;
            }
        }
        if file_failed > 0 {
            println!(
                "vectors: {name} checked={} skipped={} failed={file_failed}",
                run.checked, run.skipped
            );
        } else {
            println!("vectors: {name} checked={} skipped={}", run.checked, run.skipped);
        }
        passed += run.checked;
        failed += file_failed;
        failures.extend(run.failures);
    }

    match fake_sts_selftest(&dir) {
        Ok(()) => passed += 1,
        Err(e) => {
            failures.push(format!("fake STS self-test: {e}"));
            failed += 1;
        }
    }

    for f in &failures {
        println!("MISMATCH {f}");
    }
    if passed == 0 && failed == 0 {
        println!("MISMATCH nothing was checked");
        failed = 1;
    }
    println!("vectors: {passed} passed, {failed} failed");
    if failed == 0 && failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn vectors_dir() -> PathBuf {
    std::env::var_os("OSSVEND_VECTORS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors"))
}

/// The fake STS used by the integration tests verifies signatures with its own
/// code; prove that code against the same official-SDK vectors.
fn fake_sts_selftest(dir: &Path) -> Result<(), String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("python3")
        .arg(root.join("tests/fakes/fake_sts.py"))
        .arg("--selftest")
        .arg(dir.join("sts_rpc_hmac_sha1.json"))
        .output()
        .map_err(|e| format!("python3 must be installed: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("fake STS {stdout}");
    if !out.status.success() || !stdout.contains("selftest:") {
        // Its stdout is printed above already.
        return Err(format!("{} {}", out.status, String::from_utf8_lossy(&out.stderr)));
    }
    Ok(())
}

struct Run {
    file: String,
    id: String,
    checked: usize,
    skipped: usize,
    failures: Vec<String>,
}

impl Run {
    fn eq<T: PartialEq + Debug>(&mut self, what: &str, got: T, want: T) {
        if got != want {
            self.failures.push(format!(
                "{} {} {what}:\n   got: {got:?}\n  want: {want:?}",
                self.file, self.id
            ));
        }
    }

    fn fail(&mut self, msg: impl std::fmt::Display) {
        self.failures.push(format!("{} {} {msg}", self.file, self.id));
    }

    fn skip(&mut self, reason: &str) {
        println!("vectors: {} {} skipped: {reason}", self.file, self.id);
        self.skipped += 1;
    }

    /// Unwraps a signer result; an unexpected error is a mismatch.
    fn ok<T>(&mut self, r: Result<T, SignError>) -> Option<T> {
        match r {
            Ok(t) => Some(t),
            Err(e) => {
                self.fail(format!("signer refused: {e}"));
                None
            }
        }
    }
}

// ---------------------------------------------------------------- client response shapes

/// What ali-oss's `refreshSTSToken` handling does with a returned object (docs/signing.md §12):
/// first letter of each key lower-cased, `securityToken` copied to `stsToken`,
/// and `accessKeyId`, `accessKeySecret` and a token required.
fn alioss_accepts(body: &Value) -> Option<Vec<(String, String)>> {
    let Value::Obj(fields) = body else { return None };
    let mut merged: Vec<(String, String)> = fields
        .iter()
        .map(|(k, v)| {
            let mut c = k.chars();
            let key = c
                .next()
                .map(|f| f.to_lowercase().collect::<String>() + c.as_str())
                .unwrap_or_default();
            let val = match v {
                Value::Str(s) => s.clone(),
                Value::Int(n) => n.to_string(),
                _ => String::new(),
            };
            (key, val)
        })
        .collect();
    let get = |m: &[(String, String)], k: &str| m.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    if get(&merged, "stsToken").is_none()
        && let Some(t) = get(&merged, "securityToken")
    {
        merged.push(("stsToken".into(), t));
    }
    (get(&merged, "accessKeyId").is_some()
        && get(&merged, "accessKeySecret").is_some()
        && get(&merged, "stsToken").is_some())
    .then_some(merged)
}

/// botocore's ContainerProvider: `AccessKeyId`, `SecretAccessKey`, `Token`, `Expiration` (KeyError otherwise).
fn botocore_container_token(body: &Value) -> Option<String> {
    ["AccessKeyId", "SecretAccessKey", "Expiration"]
        .iter()
        .all(|k| body[k].as_str().is_some())
        .then_some(())?;
    body["Token"].as_str().map(str::to_owned)
}

/// botocore's ProcessProvider: `Version` must be the integer 1; the token is `SessionToken` (a `Token` is ignored).
fn botocore_process(body: &Value) -> Option<Option<String>> {
    (body["Version"].as_i64() == Some(1)
        && body["AccessKeyId"].as_str().is_some()
        && body["SecretAccessKey"].as_str().is_some())
    .then(|| body["SessionToken"].as_str().map(str::to_owned))
}

fn our_body(format: ossvend::formats::CredentialFormat) -> Value {
    use ossvend::formats::{CredentialView, to_json};
    let t = chrono::DateTime::from_timestamp(4_070_908_800, 0).unwrap();
    let view = CredentialView {
        access_key_id: "STS.NOurAk",
        access_key_secret: "OurSecret",
        security_token: "CAISours+/=",
        expiration: t,
        refresh_after: t,
        bucket: "examplebucket",
        region: "cn-hangzhou",
        endpoint: "https://oss-cn-hangzhou.aliyuncs.com",
        prefix: "uploads/",
    };
    serde_json::from_str(&to_json(format, &view)).unwrap()
}

/// Each vector records what a real client did with a body. The emulated parser
/// must reproduce that record first; then our body for that client goes through it.
fn client_response_shapes(run: &mut Run, v: &Value) {
    use ossvend::formats::CredentialFormat as F;
    let id = s(&v["id"]).to_string();
    let input = &v["input"];
    let want = &v["expected"];
    let accepted = want["accepted"].as_bool();
    if id.starts_with("shape-alioss") {
        let got = alioss_accepts(&input["response_json"]);
        run.eq("ali-oss accepts", got.is_some(), accepted == Some(true));
        if let (Some(merged), Value::Obj(expected)) = (&got, &want["options_merged"]) {
            let expected: Vec<(String, String)> = expected
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str()
                            .map(str::to_owned)
                            .or(v.as_i64().map(|n| n.to_string()))
                            .unwrap_or_default(),
                    )
                })
                .collect();
            let mut a = merged.clone();
            let mut b = expected;
            a.sort();
            b.sort();
            run.eq("ali-oss merged options", a, b);
        }
        let ours = alioss_accepts(&our_body(F::Default));
        run.eq("ali-oss accepts our default body", ours.is_some(), true);
    } else if id.starts_with("shape-aws-container") {
        let got = botocore_container_token(&input["response_json"]);
        run.eq(
            "botocore container accepts",
            got.is_some(),
            accepted == Some(true),
        );
        if let Some(t) = want["token"].as_str() {
            run.eq("botocore container token", got.as_deref(), Some(t));
        }
        run.eq(
            "botocore container accepts our aws body",
            botocore_container_token(&our_body(F::Aws)).as_deref(),
            Some("CAISours+/="),
        );
        run.eq(
            "botocore container refuses our default body",
            botocore_container_token(&our_body(F::Default)).is_none(),
            true,
        );
    } else if id.starts_with("shape-aws-process") {
        let got = botocore_process(&input["stdout_json"]);
        run.eq("botocore process accepts", got.is_some(), accepted == Some(true));
        run.eq(
            "botocore process token",
            got.clone().flatten(),
            want["token"].as_str().map(str::to_owned),
        );
        run.eq(
            "botocore process takes our token",
            botocore_process(&our_body(F::CredentialProcess)),
            Some(Some("CAISours+/=".to_string())),
        );
    } else {
        run.fail("unknown client shape");
        return;
    }
    run.checked += 1;
}

// ---------------------------------------------------------------- JSON helpers

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

fn opt(v: &Value) -> Option<&str> {
    v.as_str()
}

/// A JSON object of strings as ordered pairs (file order).
fn pairs(v: &Value) -> Vec<(String, String)> {
    match v {
        Value::Obj(members) => members
            .iter()
            .map(|(k, v)| (k.clone(), s(v).to_string()))
            .collect(),
        _ => Vec::new(),
    }
}

fn refs(p: &[(String, String)]) -> Vec<(&str, &str)> {
    p.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Names compared case-insensitively (headers).
fn lower_map(p: &[(String, String)]) -> BTreeMap<String, String> {
    p.iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect()
}

fn exact_map(p: &[(String, String)]) -> BTreeMap<String, String> {
    p.iter().cloned().collect()
}

fn creds<'a>(
    input: &'a Value,
    id_field: &str,
    secret_field: &str,
    token_field: &str,
) -> SigningCredentials<'a> {
    SigningCredentials {
        access_key_id: s(&input[id_field]),
        access_key_secret: s(&input[secret_field]),
        security_token: opt(&input[token_field]),
    }
}

fn iso_basic(t: &str) -> DateTime<Utc> {
    NaiveDateTime::parse_from_str(t, "%Y%m%dT%H%M%SZ")
        .expect("ISO basic time")
        .and_utc()
}

fn epoch(v: &Value) -> DateTime<Utc> {
    DateTime::from_timestamp(v.as_i64().expect("epoch seconds"), 0).expect("epoch in range")
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex_byte = (b[i] == b'%' && i + 2 < b.len())
            .then(|| std::str::from_utf8(&b[i + 1..i + 3]).ok())
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        if let Some(byte) = hex_byte {
            out.push(byte);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `(scheme://authority, decoded path, decoded query pairs in order)`.
fn split_url(url: &str) -> (String, String, Vec<(String, String)>) {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let path_start = base
        .find("://")
        .map(|i| i + 3)
        .and_then(|i| base[i..].find('/').map(|j| i + j));
    let (origin, path) = match path_start {
        Some(p) => (&base[..p], &base[p..]),
        None => (base, "/"),
    };
    let q = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    (origin.to_string(), percent_decode(path), q)
}

/// Compares two URLs after decoding: same origin, path and query parameters
/// (order ignored). Different SDKs order and escape differently; OSS decodes.
fn same_url_decoded(run: &mut Run, what: &str, ours: &str, theirs: &str) {
    let (o1, p1, q1) = split_url(ours);
    let (o2, p2, q2) = split_url(theirs);
    run.eq(&format!("{what} origin"), &o1, &o2);
    run.eq(&format!("{what} decoded path"), &p1, &p2);
    run.eq(&format!("{what} decoded query"), &exact_map(&q1), &exact_map(&q2));
    run.eq(&format!("{what} query length"), &q1.len(), &q2.len());
}

/// Our URL's own query must decode to the reported `query`, in order.
fn self_consistent(run: &mut Run, u: &PresignedUrl) {
    let (_, _, q) = split_url(&u.url);
    run.eq("url query vs PresignedUrl.query", &q, &u.query);
}

/// Value of `name=` inside a comma/space separated Authorization header.
fn auth_part<'a>(auth: &'a str, name: &str) -> Option<&'a str> {
    auth.split([',', ' '])
        .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
}

// ---------------------------------------------------------------- files

fn oss_v1_header(run: &mut Run, v: &Value) {
    let (i, e) = (&v["input"], &v["expected"]);
    let headers = pairs(&i["headers"]);
    let query = pairs(&i["query"]);
    let (h, q) = (refs(&headers), refs(&query));
    let req = RequestToSign {
        method: s(&i["method"]),
        bucket: opt(&i["bucket"]),
        key: s(&i["key"]),
        headers: &h,
        query: &q,
    };
    let date = DateTime::parse_from_rfc2822(s(&i["date"]))
        .expect("RFC 1123 date")
        .to_utc();
    let Some(r) = run.ok(sign::oss_v1::sign_header(
        &creds(i, "access_key_id", "access_key_secret", "security_token"),
        &req,
        date,
    )) else {
        return;
    };
    run.eq(
        "string_to_sign",
        r.string_to_sign.as_str(),
        s(&e["string_to_sign"]),
    );
    run.eq("signature", r.signature.as_str(), s(&e["signature"]));
    run.eq("authorization", r.authorization.as_str(), s(&e["authorization"]));
    run.eq(
        "headers_added_by_signer",
        &lower_map(&r.headers_to_add),
        &lower_map(&pairs(&e["headers_added_by_signer"])),
    );
    run.eq("canonical_request", &r.canonical_request, &None);
    run.checked += 1;
}

fn oss_v1_presign(run: &mut Run, v: &Value) {
    let (i, e, x) = (&v["input"], &v["expected"], &v["cross_check"]);
    let headers = pairs(&i["headers_client_will_send"]);
    let query = pairs(&i["query"]);
    let (h, q) = (refs(&headers), refs(&query));
    let req = RequestToSign {
        method: s(&i["method"]),
        bucket: opt(&i["bucket"]),
        key: s(&i["key"]),
        headers: &h,
        query: &q,
    };
    let endpoint = Endpoint {
        base: s(&i["endpoint"]),
        style: AddressingStyle::VirtualHosted,
    };
    let expires_in = i["expires_in_seconds"].as_u64().expect("expires_in_seconds");
    let c = creds(i, "access_key_id", "access_key_secret", "security_token");
    let Some(u) = run.ok(sign::oss_v1::presign_url(
        &c,
        &req,
        &endpoint,
        epoch(&i["now_epoch"]),
        expires_in,
    )) else {
        return;
    };
    run.eq(
        "Expires",
        u.expires_at_unix.to_string().as_str(),
        s(&e["Expires"]),
    );
    run.eq(
        "string_to_sign",
        u.string_to_sign.as_str(),
        s(&e["string_to_sign"]),
    );
    run.eq("Signature", u.signature.as_str(), s(&e["Signature"]));
    run.eq(
        "query_params",
        &exact_map(&u.query),
        &exact_map(&pairs(&e["query_params"])),
    );
    run.eq(
        "query_params count",
        &u.query.len(),
        &pairs(&e["query_params"]).len(),
    );
    run.eq(
        "required_headers",
        &lower_map(&u.required_headers),
        &lower_map(&headers),
    );
    run.eq("method", u.method.as_str(), s(&i["method"]));
    self_consistent(run, &u);

    // Exact URL: the alibabacloud-oss-v2 form (key keeps '/', same parameter
    // order). Where that SDK signs differently (it omits x-oss-process from its
    // sub-resources, docs/signing.md §8), its URL is compared with its Signature replaced.
    let mut v2_url = s(&x["alibabacloud_oss_v2_url"]).to_string();
    if x["alibabacloud_oss_v2_presign_v1_signature_agrees"] != Value::Bool(true) {
        let (_, _, q) = split_url(&v2_url);
        let theirs = q
            .iter()
            .find(|(k, _)| k == "Signature")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        v2_url = v2_url.replace(
            &format!("Signature={}", pct(&theirs)),
            &format!("Signature={}", pct(&u.signature)),
        );
    }
    run.eq("url vs alibabacloud-oss-v2", u.url.as_str(), v2_url.as_str());
    // ali-oss and oss2 order and escape differently; decoded they must agree.
    same_url_decoded(run, "url vs ali-oss", &u.url, s(&x["ali_oss_url"]));
    same_url_decoded(run, "url vs oss2", &u.url, s(&e["url_as_built_by_oss2"]));
    run.checked += 1;
}

fn oss_v4_header(run: &mut Run, v: &Value) {
    let (i, e, x) = (&v["input"], &v["expected"], &v["cross_check"]);
    let headers = pairs(&i["headers"]);
    let query = pairs(&i["query"]);
    let (h, q) = (refs(&headers), refs(&query));
    let additional: Vec<&str> = i["additional_headers"].as_array().iter().map(s).collect();
    let req = RequestToSign {
        method: s(&i["method"]),
        bucket: opt(&i["bucket"]),
        key: s(&i["key"]),
        headers: &h,
        query: &q,
    };
    let scope = V4Scope {
        region: s(&i["region"]),
        product: s(&i["product"]),
    };
    let at = iso_basic(s(&i["x_oss_date"]));
    let c = creds(i, "access_key_id", "access_key_secret", "security_token");
    let Some(r) = run.ok(sign::oss_v4::sign_header(&c, &req, &scope, &additional, at)) else {
        return;
    };
    run.eq(
        "headers_added_by_signer",
        &lower_map(&r.headers_to_add),
        &lower_map(&pairs(&e["headers_added_by_signer"])),
    );
    run.eq(
        "canonical_request",
        r.canonical_request.as_deref(),
        Some(s(&e["canonical_request"])),
    );
    run.eq(
        "scope",
        scope.credential_scope(&s(&i["x_oss_date"])[..8]).as_str(),
        s(&e["scope"]),
    );
    run.eq(
        "string_to_sign",
        r.string_to_sign.as_str(),
        s(&e["string_to_sign"]),
    );
    run.eq("signature", r.signature.as_str(), s(&e["signature"]));
    run.eq("authorization", r.authorization.as_str(), s(&e["authorization"]));
    // oss2 writes another layout; its Signature and AdditionalHeaders must agree.
    let oss2 = s(&x["oss2_authorization"]);
    run.eq(
        "oss2 Signature",
        auth_part(oss2, "Signature"),
        Some(r.signature.as_str()),
    );
    run.eq(
        "oss2 AdditionalHeaders",
        auth_part(oss2, "AdditionalHeaders"),
        auth_part(&r.authorization, "AdditionalHeaders"),
    );
    run.checked += 1;
}

fn oss_v4_presign(run: &mut Run, v: &Value) {
    let (i, e, x) = (&v["input"], &v["expected"], &v["cross_check"]);
    if let Some(err) = opt(&e["error"]) {
        // Rejection vector: only the expiry and the time are given.
        run.eq("expected error kind", err, "PresignExpirationError");
        let expires_in = i["expires_in_seconds"].as_u64().expect("expires_in_seconds");
        let c = SigningCredentials {
            access_key_id: "ak",
            access_key_secret: "sk",
            security_token: None,
        };
        let req = RequestToSign {
            method: "GET",
            bucket: Some("examplebucket"),
            key: "k",
            headers: &[],
            query: &[],
        };
        let endpoint = Endpoint {
            base: "https://oss-cn-hangzhou.aliyuncs.com",
            style: AddressingStyle::VirtualHosted,
        };
        let r = sign::oss_v4::presign_url(
            &c,
            &req,
            &V4Scope::oss("cn-hangzhou"),
            &[],
            &endpoint,
            epoch(&i["now_epoch"]),
            expires_in,
        );
        run.eq(
            "rejection",
            &r.err(),
            &Some(SignError::ExpiresOutOfRange {
                requested: expires_in,
                min: 1,
                max: sign::oss_v4::MAX_PRESIGN_EXPIRES_SECS,
            }),
        );
        run.checked += 1;
        return;
    }
    let headers = pairs(&i["headers_client_will_send"]);
    let query = pairs(&i["query"]);
    let (h, q) = (refs(&headers), refs(&query));
    let req = RequestToSign {
        method: s(&i["method"]),
        bucket: opt(&i["bucket"]),
        key: s(&i["key"]),
        headers: &h,
        query: &q,
    };
    let scope = V4Scope {
        region: s(&i["region"]),
        product: s(&i["product"]),
    };
    let endpoint = Endpoint {
        base: s(&i["endpoint"]),
        style: AddressingStyle::VirtualHosted,
    };
    let at = iso_basic(s(&i["x_oss_date"]));
    run.eq(
        "now_epoch vs x_oss_date",
        &i["now_epoch"].as_i64(),
        &Some(at.timestamp()),
    );
    let expires_in = i["expires_in_seconds"].as_u64().expect("expires_in_seconds");
    let c = creds(i, "access_key_id", "access_key_secret", "security_token");
    let Some(u) = run.ok(sign::oss_v4::presign_url(
        &c,
        &req,
        &scope,
        &[],
        &endpoint,
        at,
        expires_in,
    )) else {
        return;
    };
    run.eq(
        "query_params",
        &exact_map(&u.query),
        &exact_map(&pairs(&e["query_params"])),
    );
    run.eq(
        "query_params count",
        &u.query.len(),
        &pairs(&e["query_params"]).len(),
    );
    run.eq(
        "canonical_request",
        u.canonical_request.as_deref(),
        Some(s(&e["canonical_request"])),
    );
    run.eq(
        "string_to_sign",
        u.string_to_sign.as_str(),
        s(&e["string_to_sign"]),
    );
    run.eq("x-oss-signature", u.signature.as_str(), s(&e["x-oss-signature"]));
    run.eq(
        "url_as_built_by_sdk",
        u.url.as_str(),
        s(&e["url_as_built_by_sdk"]),
    );
    run.eq(
        "required_headers",
        &lower_map(&u.required_headers),
        &lower_map(&headers),
    );
    run.eq(
        "expires_at_unix",
        &u.expires_at_unix,
        &(at.timestamp() + expires_in as i64),
    );
    self_consistent(run, &u);
    same_url_decoded(run, "url vs oss2", &u.url, s(&x["oss2_url"]));
    same_url_decoded(run, "url vs ali-oss", &u.url, s(&x["ali_oss_url"]));
    run.checked += 1;
}

/// Caller fields = the vector's form fields minus those the signer owns.
fn caller_fields(all: &[(String, String)], signer_owned: &[&str]) -> Vec<(String, String)> {
    all.iter()
        .filter(|(k, _)| !signer_owned.contains(&k.as_str()))
        .cloned()
        .collect()
}

fn oss_post_v1(run: &mut Run, v: &Value) {
    let (i, e) = (&v["input"], &v["expected"]);
    let want = pairs(&e["form_fields"]);
    let fields = caller_fields(
        &want,
        &["OSSAccessKeyId", "policy", "Signature", "x-oss-security-token"],
    );
    let c = creds(i, "access_key_id", "access_key_secret", "security_token");
    let Some(f) = run.ok(sign::post::sign_v1(&c, s(&i["policy_json"]), &refs(&fields))) else {
        return;
    };
    run.eq("policy_base64", f.policy_base64.as_str(), s(&e["policy_base64"]));
    run.eq(
        "string_to_sign",
        f.string_to_sign.as_str(),
        s(&e["string_to_sign"]),
    );
    run.eq("Signature", f.signature.as_str(), s(&e["Signature"]));
    run.eq("form_fields (in order)", &f.fields, &want);
    run.checked += 1;
}

fn oss_post_v4(run: &mut Run, v: &Value) {
    let (i, e) = (&v["input"], &v["expected"]);
    let want = pairs(&e["form_fields"]);
    let owned = [
        "policy",
        "x-oss-signature-version",
        "x-oss-credential",
        "x-oss-date",
        "x-oss-signature",
        "x-oss-security-token",
    ];
    let fields = caller_fields(&want, &owned);
    let c = creds(i, "access_key_id", "access_key_secret", "security_token");
    let scope = V4Scope::oss(s(&i["region"]));
    let date = s(&i["x_oss_date"]);
    let at = iso_basic(date);
    let key = sign::oss_v4::signing_key(c.access_key_secret, &date[..8], &scope);
    run.eq(
        "signing_key_hex",
        hex::encode(key).as_str(),
        s(&e["signing_key_hex"]),
    );
    let Some(f) = run.ok(sign::post::sign_v4(
        &c,
        &scope,
        at,
        s(&i["policy_json"]),
        &refs(&fields),
    )) else {
        return;
    };
    run.eq("policy_base64", f.policy_base64.as_str(), s(&e["policy_base64"]));
    run.eq(
        "string_to_sign",
        f.string_to_sign.as_str(),
        s(&e["string_to_sign"]),
    );
    run.eq("x-oss-signature", f.signature.as_str(), s(&e["x-oss-signature"]));
    run.eq("form_fields (in order)", &f.fields, &want);
    // The conditions we would put in a policy are exactly those this policy has.
    if let Some(conds) = run.ok(sign::post::v4_required_conditions(&c, &scope, at)) {
        for (name, value) in conds {
            let cond = format!("{{\"{name}\":\"{value}\"}}");
            run.eq(
                &format!("policy has {cond}"),
                &s(&i["policy_json"]).contains(&cond),
                &true,
            );
        }
    }
    run.checked += 1;
}

/// boto3 operation parameters as headers / query parameters of the request.
fn boto3_param(name: &str) -> Option<(bool, &'static str)> {
    // (is_header, wire name)
    Some(match name {
        "ContentType" => (true, "Content-Type"),
        "ContentMD5" => (true, "Content-MD5"),
        "ContentDisposition" => (true, "Content-Disposition"),
        "CacheControl" => (true, "Cache-Control"),
        "ResponseContentDisposition" => (false, "response-content-disposition"),
        "ResponseContentType" => (false, "response-content-type"),
        "ResponseCacheControl" => (false, "response-cache-control"),
        "VersionId" => (false, "versionId"),
        _ => return None,
    })
}

fn s3_sigv4_presign(run: &mut Run, v: &Value) {
    let (i, e) = (&v["input"], &v["expected"]);
    if s(&i["addressing_style"]) != "virtual" || s(&i["service"]) != "s3" {
        run.skip("only virtual-hosted addressing with service s3 is implemented");
        return;
    }
    let (mut headers, mut query) = (Vec::new(), Vec::new());
    for (k, val) in pairs(&i["boto3_params"]) {
        match boto3_param(&k) {
            Some((true, wire)) => headers.push((wire.to_string(), val)),
            Some((false, wire)) => query.push((wire.to_string(), val)),
            None => {
                run.skip(&format!("boto3 parameter {k} has no mapping here"));
                return;
            }
        }
    }
    let (h, q) = (refs(&headers), refs(&query));
    let req = RequestToSign {
        method: s(&i["http_method"]),
        bucket: opt(&i["bucket"]),
        key: s(&i["key"]),
        headers: &h,
        query: &q,
    };
    let endpoint = Endpoint {
        base: s(&i["endpoint_url"]),
        style: AddressingStyle::VirtualHosted,
    };
    let at = DateTime::parse_from_rfc3339(s(&i["now"]))
        .expect("RFC 3339 now")
        .to_utc();
    let expires_in = i["expires_in_seconds"].as_u64().expect("expires_in_seconds");
    let c = creds(i, "access_key_id", "secret_access_key", "session_token");
    let Some(u) = run.ok(sign::s3::presign_url(
        &c,
        &req,
        &endpoint,
        s(&i["signing_region"]),
        at,
        expires_in,
    )) else {
        return;
    };
    let (origin, _, _) = split_url(&u.url);
    run.eq("host", origin.trim_start_matches("https://"), s(&e["host"]));
    let raw_path = u
        .url
        .split_once("://")
        .and_then(|(_, r)| r.find('/').map(|p| &r[p..]))
        .unwrap_or("");
    run.eq("path", raw_path.split('?').next().unwrap_or(""), s(&e["path"]));
    run.eq(
        "query_params",
        &exact_map(&u.query),
        &exact_map(&pairs(&e["query_params"])),
    );
    run.eq(
        "query_params count",
        &u.query.len(),
        &pairs(&e["query_params"]).len(),
    );
    let signed = u
        .query
        .iter()
        .find(|(k, _)| k == "X-Amz-SignedHeaders")
        .map(|(_, v)| v.as_str());
    run.eq("signed_headers", signed, Some(s(&e["signed_headers"])));
    run.eq(
        "headers_client_must_send",
        &lower_map(&u.required_headers),
        &lower_map(&pairs(&e["headers_client_must_send"])),
    );
    run.eq(
        "canonical_request",
        u.canonical_request.as_deref(),
        Some(s(&e["canonical_request"])),
    );
    run.eq(
        "string_to_sign",
        u.string_to_sign.as_str(),
        s(&e["string_to_sign"]),
    );
    run.eq("X-Amz-Signature", u.signature.as_str(), s(&e["X-Amz-Signature"]));
    run.eq("url", u.url.as_str(), s(&e["url"]));
    self_consistent(run, &u);
    run.checked += 1;
}

fn s3_post_policy(run: &mut Run, v: &Value) {
    let (i, e) = (&v["input"], &v["expected"]);
    let want = pairs(&e["fields"]);
    let owned = [
        "policy",
        "x-amz-algorithm",
        "x-amz-credential",
        "x-amz-date",
        "x-amz-security-token",
        "x-amz-signature",
    ];
    let fields = caller_fields(&want, &owned);
    let c = creds(i, "access_key_id", "secret_access_key", "session_token");
    let at = DateTime::parse_from_rfc3339(s(&i["now"]))
        .expect("RFC 3339 now")
        .to_utc();
    let endpoint = Endpoint {
        base: s(&i["endpoint_url"]),
        style: AddressingStyle::VirtualHosted,
    };
    if let Some(url) = run.ok(sign::post::post_url(&endpoint, s(&i["bucket"]))) {
        run.eq("post_url", url.as_str(), s(&e["post_url"]));
    }
    let Some(f) = run.ok(sign::s3::sign_post_policy(
        &c,
        s(&i["signing_region"]),
        at,
        s(&e["policy_json"]),
        &refs(&fields),
    )) else {
        return;
    };
    run.eq("fields (in order)", &f.fields, &want);
    run.eq("x-amz-signature", f.signature.as_str(), s(&e["x-amz-signature"]));
    run.eq(
        "policy == base64(policy_json)",
        f.policy_base64.as_str(),
        exact_map(&want).get("policy").map_or("", String::as_str),
    );
    run.checked += 1;
}

/// RPC v1 (STS AssumeRole). `sts_rpc::sign` sorts the parameters itself; they
/// are given in file order all the same, and once more in wire order.
fn sts_rpc_hmac_sha1(run: &mut Run, v: &Value) {
    let (i, e) = (&v["input"], &v["expected"]);
    let params = pairs(&i["params"]);
    if params.is_empty() {
        run.fail("input.params missing or empty");
        return;
    }
    let secret = s(&i["access_key_secret"]);
    let sig = sign::sts_rpc::sign(s(&i["http_method"]), refs(&params), secret);
    run.eq(
        "canonicalized_query_string",
        sig.canonicalized_query.as_str(),
        s(&e["canonicalized_query_string"]),
    );
    run.eq(
        "string_to_sign",
        sig.string_to_sign.as_str(),
        s(&e["string_to_sign"]),
    );
    run.eq("signature", sig.signature.as_str(), s(&e["signature"]));
    let get = &e["get_variant"];
    if *get != Value::Null {
        let g = sign::sts_rpc::sign("GET", refs(&params), secret);
        run.eq(
            "get_variant.string_to_sign",
            g.string_to_sign.as_str(),
            s(&get["string_to_sign"]),
        );
        run.eq(
            "get_variant.signature",
            g.signature.as_str(),
            s(&get["signature"]),
        );
    }
    // What the SDK put on the wire (form-urlencoded, `+` for space) carries the
    // same parameters plus `Signature`; signing what we receive there must
    // reproduce that `Signature` (this is what a verifier does).
    if let Some(wire) = opt(&e["wire_query_as_sent_by_sdk"]) {
        let mut received: Vec<(String, String)> = wire
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (
                    percent_decode(&k.replace('+', " ")),
                    percent_decode(&v.replace('+', " ")),
                )
            })
            .collect();
        let sent_sig = received
            .iter()
            .position(|(k, _)| k == "Signature")
            .map(|at| received.remove(at).1);
        run.eq("wire Signature", sent_sig.as_deref(), Some(s(&e["signature"])));
        run.eq("wire params", &exact_map(&received), &exact_map(&params));
        let w = sign::sts_rpc::sign(s(&i["http_method"]), refs(&received), secret);
        run.eq(
            "signature over wire params",
            w.signature.as_str(),
            s(&e["signature"]),
        );
    }
    run.checked += 1;
}

// ---------------------------------------------------------------- identity sources

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};

use ossvend::config::{IdentityConfig, StsConfig};
use ossvend::identity::ecs::{EcsSettings, EcsSource};
use ossvend::identity::oidc::{OidcSettings, OidcSource};
use ossvend::identity::ram_role::RamRoleSource;
use ossvend::identity::uri::UriSource;
use ossvend::identity::{CredentialProvider, Credentials, ErrorKind, Fetch, IdentityError};
use ossvend::sts::{AssumeRoleRequest, Stamp, StsClient};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// One request as it arrived on the wire.
#[derive(Debug, Clone)]
struct Wire {
    method: String,
    path: String,
    /// Decoded query parameters, in order.
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Wire {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `application/x-www-form-urlencoded` body parameters.
    fn form(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(&self.body).into_owned().collect()
    }

    /// Query and body parameters together (what an RPC verifier sees).
    fn params(&self) -> BTreeMap<String, String> {
        self.query.iter().cloned().chain(self.form()).collect()
    }
}

/// What the scripted server does with the next request.
enum Script {
    Reply(u16, String),
    /// Read the request, then close the connection without answering.
    Drop,
}

/// A tiny HTTP/1.1 server on 127.0.0.1 that answers from a script, in order,
/// and records every request. Hand-rolled so it can also fail like a network.
struct ScriptServer {
    url: String,
    log: Arc<Mutex<Vec<Wire>>>,
}

impl ScriptServer {
    fn start(script: Vec<Script>) -> ScriptServer {
        rt().block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let url = format!("http://{}", listener.local_addr().expect("addr"));
            let log = Arc::new(Mutex::new(Vec::new()));
            let script = Arc::new(Mutex::new(VecDeque::from(script)));
            let log2 = log.clone();
            tokio::spawn(async move {
                while let Ok((sock, _)) = listener.accept().await {
                    let (log, script) = (log2.clone(), script.clone());
                    tokio::spawn(serve_one(sock, log, script));
                }
            });
            ScriptServer { url, log }
        })
    }

    fn requests(&self) -> Vec<Wire> {
        self.log.lock().unwrap().clone()
    }
}

async fn serve_one(
    mut sock: tokio::net::TcpStream,
    log: Arc<Mutex<Vec<Wire>>>,
    script: Arc<Mutex<VecDeque<Script>>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 1 << 20 {
            return;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let target = first.next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let (path, raw_query) = target.split_once('?').unwrap_or((&target, ""));
    let wire = Wire {
        method,
        path: path.to_string(),
        query: url::form_urlencoded::parse(raw_query.as_bytes())
            .into_owned()
            .collect(),
        headers,
        body,
    };
    log.lock().unwrap().push(wire);
    let next = script.lock().unwrap().pop_front();
    let (status, text) = match next {
        Some(Script::Reply(status, text)) => (status, text),
        Some(Script::Drop) => return, // the connection closes unanswered
        None => (599, "script exhausted".to_string()),
    };
    let response = format!(
        "HTTP/1.1 {status} Scripted\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = sock.write_all(response.as_bytes()).await;
    let _ = sock.shutdown().await;
}

/// The ordered JSON value back as JSON text (for scripted bodies).
fn to_json(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Int(n) => n.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Str(s) => serde_json::to_string(s).unwrap_or_default(),
        Value::Arr(a) => format!("[{}]", a.iter().map(to_json).collect::<Vec<_>>().join(",")),
        Value::Obj(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{}:{}", serde_json::to_string(k).unwrap_or_default(), to_json(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

/// An STS client for the scripted server, with the vector's timestamp and nonce.
fn scripted_sts(url: &str, timestamp: &str, nonce: &str) -> Arc<StsClient> {
    let cfg: StsConfig = toml::from_str(&format!(
        "endpoint = \"{url}\"\nrole_arn = \"acs:ram::1:role/r\"\nmax_retries = 0\n"
    ))
    .expect("sts config");
    let stamp = Stamp {
        timestamp: timestamp.to_string(),
        nonce: nonce.to_string(),
    };
    Arc::new(
        StsClient::new(&cfg)
            .expect("sts client")
            .with_stamp(move || stamp.clone()),
    )
}

/// Host of the STS endpoint our config computes for `region`/`vpc` (docs/signing.md §1.1).
fn sts_host(region: Option<&str>, vpc: bool) -> Result<String, String> {
    let mut toml_text = String::from("role_arn = \"acs:ram::1:role/r\"\n");
    if let Some(r) = region {
        toml_text.push_str(&format!("region = \"{r}\"\n"));
    }
    toml_text.push_str(&format!("vpc = {vpc}\n"));
    let cfg: StsConfig = toml::from_str(&toml_text).map_err(|e| e.to_string())?;
    let endpoint = cfg.resolve_endpoint(&BTreeMap::new())?;
    let u = url::Url::parse(&endpoint).map_err(|e| e.to_string())?;
    if u.scheme() != "https" {
        return Err(format!("{endpoint} is not https"));
    }
    Ok(u.host_str().unwrap_or_default().to_string())
}

/// Our error kinds in the SDK's terms: a network failure is its
/// `ConnectionError`; every refusal of an answer is its `CredentialException`.
fn sdk_error_type(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Transport => "ConnectionError",
        ErrorKind::Rejected | ErrorKind::Config | ErrorKind::NotConfigured => "CredentialException",
    }
}

/// Compares a provider's outcome with `expected.result`.
fn check_result(run: &mut Run, got: Result<Credentials, IdentityError>, want: &Value) {
    match (want["ok"].as_bool(), got) {
        (Some(true), Ok(c)) => {
            run.eq(
                "result.access_key_id",
                c.access_key_id.as_str(),
                s(&want["access_key_id"]),
            );
            if let Some(secret) = opt(&want["access_key_secret"]) {
                run.eq("result.access_key_secret", c.secret(), secret);
            }
            if let Some(token) = opt(&want["security_token"]) {
                run.eq("result.security_token", c.token(), Some(token));
            }
            let exp = c.expiration.map(|e| e.timestamp());
            run.eq("result.expiration_epoch", exp, want["expiration_epoch"].as_i64());
            // The SDK starts refreshing 15 min before expiry; we must start no later.
            let stale = want["stale_time_epoch"]
                .as_i64()
                .or_else(|| want["refresh_starts_at_epoch (stale_time)"].as_i64());
            if let (Some(stale), Some(exp)) = (stale, c.expiration) {
                let ours = ossvend::identity::refresh_at(Utc::now(), exp).timestamp();
                run.eq(
                    "refresh starts no later than the SDK's stale time",
                    ours <= stale,
                    true,
                );
            }
        }
        (Some(false), Err(e)) => {
            run.eq(
                "result.error_type",
                sdk_error_type(e.kind),
                s(&want["error_type"]),
            );
        }
        (Some(true), Err(e)) => run.fail(format!("the SDK accepted this, we refused: {e}")),
        (Some(false), Ok(c)) => run.fail(format!("the SDK refused this, we accepted {c:?}")),
        (None, _) => run.fail("expected.result.ok missing"),
    }
}

/// Compares what we sent with one request the SDK sent (docs/signing.md §4/§6 shapes):
/// method, path, decoded query, every header the vector lists (and no
/// credential header it does not list), and the body.
fn check_request(run: &mut Run, what: &str, ours: &Wire, want: &Value) {
    run.eq(
        &format!("{what} method"),
        ours.method.as_str(),
        s(&want["method"]),
    );
    run.eq(
        &format!("{what} pathname"),
        ours.path.as_str(),
        s(&want["pathname"]),
    );
    run.eq(
        &format!("{what} query"),
        &exact_map(&ours.query),
        &exact_map(&pairs(&want["query"])),
    );
    let listed = pairs(&want["headers"]);
    for (name, value) in &listed {
        run.eq(
            &format!("{what} header {name}"),
            ours.header(name),
            Some(value.as_str()),
        );
    }
    for (name, _) in &ours.headers {
        let lower = name.to_ascii_lowercase();
        let sensitive =
            lower.starts_with("x-aliyun-") || lower.starts_with("x-acs-") || lower == "authorization";
        if sensitive && !listed.iter().any(|(k, _)| k.eq_ignore_ascii_case(name)) {
            run.fail(format!("{what}: we sent header {name} the SDK did not"));
        }
    }
    if want["body"] == Value::Null {
        run.eq(&format!("{what} body is empty"), ours.body.is_empty(), true);
    }
}

fn cred_ecs_metadata(run: &mut Run, v: &Value) {
    let (i, e) = (&v["input"], &v["expected"]);
    let script = i["scripted_responses"]
        .as_array()
        .iter()
        .map(|r| match opt(&r["network_error"]) {
            Some(_) => Script::Drop,
            None => Script::Reply(
                r["status"].as_u64().unwrap_or(0) as u16,
                s(&r["body"]).to_string(),
            ),
        })
        .collect();
    let server = ScriptServer::start(script);
    // The vectors' "IMDSv1 disabled" is our default hardened mode.
    let settings = EcsSettings {
        endpoint: server.url.clone(),
        role_name: opt(&i["role_name_configured"]).map(str::to_string),
        imds_v1_fallback: !i["imds_v1_disabled"].as_bool().unwrap_or(false),
    };
    let got = rt().block_on(async {
        match EcsSource::new(settings) {
            Ok(src) => src.fetch().await,
            Err(e) => Err(e),
        }
    });
    // Host and scheme: our default metadata endpoint is the SDK's.
    let default = url::Url::parse(IdentityConfig::default().metadata_endpoint()).expect("default endpoint");
    let sent = server.requests();
    let want = e["requests"].as_array();
    run.eq("request count", sent.len(), want.len());
    for (n, (ours, theirs)) in sent.iter().zip(want).enumerate() {
        let what = format!("request {n}");
        run.eq(
            &format!("{what} host"),
            default.host_str(),
            Some(s(&theirs["host"])),
        );
        run.eq(
            &format!("{what} protocol"),
            default.scheme(),
            s(&theirs["protocol"]),
        );
        check_request(run, &what, ours, theirs);
    }
    check_result(run, got, &e["result"]);
    run.checked += 1;
}

fn cred_uri_response(run: &mut Run, v: &Value) {
    let (i, e) = (&v["input"], &v["expected"]);
    let Ok(mut uri) = url::Url::parse(s(&i["ALIBABA_CLOUD_CREDENTIALS_URI"])) else {
        run.fail("input URI is not a URL");
        return;
    };
    let status = i["response_status"].as_u64().unwrap_or(0) as u16;
    let server = ScriptServer::start(vec![Script::Reply(status, to_json(&i["response_body"]))]);
    // Same URI (path and query), on the scripted server's port.
    let port = url::Url::parse(&server.url).ok().and_then(|u| u.port());
    if uri.set_port(port).is_err() {
        run.fail("cannot point the URI at the scripted server");
        return;
    }
    // Through the environment variable, as the SDK reads it.
    let env = BTreeMap::from([("ALIBABA_CLOUD_CREDENTIALS_URI".to_string(), uri.to_string())]);
    let got = rt().block_on(async {
        match UriSource::from_config(&IdentityConfig::default(), &env) {
            Ok(src) => src.fetch().await,
            Err(e) => Err(e),
        }
    });
    let want = &e["request"];
    let sent = server.requests();
    run.eq("request count", sent.len(), 1);
    if let Some(ours) = sent.first() {
        let host = ours
            .header("host")
            .and_then(|h| h.rsplit_once(':'))
            .map(|(h, _)| h);
        run.eq("request host", host, Some(s(&want["host"])));
        run.eq("request protocol", uri.scheme(), s(&want["protocol"]));
        check_request(run, "request", ours, want);
    }
    check_result(run, got, &e["result"]);
    run.checked += 1;
}

/// Parameters we sent, minus `skip`, against the SDK's.
fn same_params(run: &mut Run, ours: &BTreeMap<String, String>, theirs: &[(String, String)], skip: &[&str]) {
    let ours: BTreeMap<String, String> = ours
        .iter()
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let theirs: Vec<(String, String)> = theirs
        .iter()
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .cloned()
        .collect();
    run.eq("parameters (query and body together)", &ours, &exact_map(&theirs));
    run.eq("parameter count", ours.len(), theirs.len());
}

fn sts_success_body(v: &Value) -> (u16, String) {
    (
        v["sts_response_status"].as_u64().unwrap_or(200) as u16,
        to_json(&v["sts_response_body"]),
    )
}

/// Python credentials SDK: GET with every parameter in the query. ossvend
/// sends POST (docs/signing.md §1.3: the transport variants verify identically; §3 prefers
/// the token out of the URL), so the parameters are compared as one set, the
/// host through our endpoint computation, and the signature by signing our
/// parameters for GET, which must give the SDK's signature.
fn cred_sts_via_credentials_sdk(run: &mut Run, v: &Value) {
    let (i, e) = (&v["input"], &v["expected"]);
    let want = &e["request"];
    match sts_host(opt(&i["region"]), i["vpc"].as_bool().unwrap_or(false)) {
        Ok(host) => run.eq("endpoint host from region/vpc", host.as_str(), s(&want["host"])),
        Err(err) => run.fail(format!("endpoint: {err}")),
    }
    run.eq("protocol", "https", s(&want["protocol"]));
    let (status, body) = sts_success_body(i);
    let server = ScriptServer::start(vec![Script::Reply(status, body)]);
    let theirs = pairs(&want["query"]);
    let got = match s(&i["kind"]) {
        "arn" => {
            let sts = scripted_sts(&server.url, s(&i["ts"]), s(&i["nonce"]));
            let mut env = BTreeMap::from([
                ("ALIBABA_CLOUD_ACCESS_KEY_ID".to_string(), s(&i["ak"]).to_string()),
                (
                    "ALIBABA_CLOUD_ACCESS_KEY_SECRET".to_string(),
                    s(&i["sk"]).to_string(),
                ),
            ]);
            if let Some(t) = opt(&i["token"]) {
                env.insert("ALIBABA_CLOUD_SECURITY_TOKEN".into(), t.to_string());
            }
            let base_cfg = IdentityConfig {
                source: ossvend::config::IdentitySource::Env,
                ..Default::default()
            };
            let request = AssumeRoleRequest {
                role_arn: s(&i["role_arn"]).to_string(),
                session_name: s(&i["session"]).to_string(),
                duration_seconds: i["duration"].as_u64().unwrap_or(3600) as u32,
                policy: opt(&i["policy"]).map(str::to_string),
                external_id: opt(&i["external_id"]).map(str::to_string),
            };
            rt().block_on(async {
                let deps = ossvend::identity::Deps {
                    sts: sts.clone(),
                    clock: Arc::new(ossvend::sts::SystemClock),
                    timings: Default::default(),
                };
                let base: Arc<dyn CredentialProvider> =
                    ossvend::identity::from_config(&base_cfg, &env, &deps)?;
                RamRoleSource::new(base, sts, request).fetch().await
            })
        }
        "oidc" => {
            let dir = tempfile::tempdir().expect("tempdir");
            let token_file = dir.path().join("token");
            std::fs::write(&token_file, s(&i["oidc_token"])).expect("token file");
            // This SDK sends no SignatureNonce; ours (like tea-openapi's) is ignored below.
            let sts = scripted_sts(&server.url, s(&i["ts"]), "nonce-not-in-this-vector");
            let settings = OidcSettings {
                role_arn: s(&i["role_arn"]).to_string(),
                oidc_provider_arn: s(&i["provider_arn"]).to_string(),
                token_file,
                session_name: s(&i["session"]).to_string(),
                duration_seconds: i["duration"].as_u64().unwrap_or(3600) as u32,
                policy: opt(&i["policy"]).map(str::to_string),
            };
            rt().block_on(OidcSource::new(sts, settings).fetch())
        }
        other => {
            run.skip(&format!("kind {other:?} is not a source ossvend has"));
            return;
        }
    };
    let sent = server.requests();
    run.eq("request count", sent.len(), 1);
    let Some(ours) = sent.first() else { return };
    run.eq(
        "method (POST; the SDK's GET is an equivalent transport, docs/signing.md §1.3)",
        ours.method.as_str(),
        "POST",
    );
    run.eq("path", ours.path.as_str(), "/");
    let params = ours.params();
    if s(&i["kind"]) == "arn" {
        same_params(run, &params, &theirs, &["Signature"]);
        let unsigned: Vec<(&str, &str)> = params
            .iter()
            .filter(|(k, _)| *k != "Signature")
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let sk = s(&i["sk"]);
        let post = sign::sts_rpc::sign("POST", unsigned.iter().copied(), sk);
        run.eq(
            "our Signature verifies for POST",
            params.get("Signature"),
            Some(&post.signature),
        );
        let get = sign::sts_rpc::sign("GET", unsigned.iter().copied(), sk);
        run.eq(
            "our parameters signed for GET = the SDK's Signature",
            get.signature.as_str(),
            s(&e["signature"]),
        );
        // Spec §1.5: this SDK form-encodes spaces; equal only without spaces.
        if !params.values().any(|p| p.contains(' ')) {
            run.eq(
                "string-to-sign (GET) = the SDK's",
                get.string_to_sign.as_str(),
                s(&e["string_to_sign_as_computed_by_this_sdk"]),
            );
        }
        run.eq(
            "no token in the URL",
            ours.query.iter().any(|(k, _)| k == "SecurityToken"),
            false,
        );
    } else {
        same_params(run, &params, &theirs, &["SignatureNonce"]);
        run.eq(
            "SignatureNonce sent (harmless, docs/signing.md §3)",
            params.contains_key("SignatureNonce"),
            true,
        );
        run.eq(
            "the JWT stays out of the URL",
            ours.query.iter().any(|(k, _)| k == "OIDCToken"),
            false,
        );
        for unsigned in ["Signature", "AccessKeyId", "SignatureMethod", "SignatureVersion"] {
            run.eq(
                &format!("anonymous: no {unsigned}"),
                params.contains_key(unsigned),
                false,
            );
        }
    }
    check_result(run, got, &e["result"]);
    run.checked += 1;
}

/// alibabacloud-sts20150401 sends POST with every parameter in the query;
/// ossvend keeps Action/Format/Version/Timestamp/SignatureNonce in the query and
/// sends the rest, the JWT included, as a form body (credentials-go's layout,
/// docs/signing.md §3). Compared: method, path, all parameters together (`Format` is
/// case-insensitive, docs/signing.md §1.2), the x-acs headers, the host through our
/// endpoint computation, and that nothing is signed.
fn sts_oidc_request(run: &mut Run, v: &Value) {
    let (i, e) = (&v["input"], &v["expected"]);
    let host = s(&i["endpoint_host"]);
    let parsed = host
        .strip_suffix(".aliyuncs.com")
        .and_then(|h| match h.split_once('.') {
            Some(("sts", region)) => Some((region, false)),
            Some(("sts-vpc", region)) => Some((region, true)),
            _ => None,
        });
    let Some((region, vpc)) = parsed else {
        run.skip(&format!("endpoint host {host:?} is not a regional STS endpoint"));
        return;
    };
    match sts_host(Some(region), vpc) {
        Ok(ours) => run.eq("endpoint host from region/vpc", ours.as_str(), host),
        Err(err) => run.fail(format!("endpoint: {err}")),
    }
    let server = ScriptServer::start(vec![Script::Reply(
        200,
        r#"{"RequestId":"r","Credentials":{"AccessKeyId":"STS.NOidcVec","AccessKeySecret":"s","SecurityToken":"t","Expiration":"2099-01-01T00:00:00Z"}}"#.into(),
    )]);
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, s(&i["OIDCToken"])).expect("token file");
    let sts = scripted_sts(&server.url, s(&i["Timestamp"]), s(&i["SignatureNonce"]));
    let settings = OidcSettings {
        role_arn: s(&i["RoleArn"]).to_string(),
        oidc_provider_arn: s(&i["OIDCProviderArn"]).to_string(),
        token_file,
        session_name: s(&i["RoleSessionName"]).to_string(),
        duration_seconds: i["DurationSeconds"].as_u64().unwrap_or(3600) as u32,
        policy: opt(&i["Policy"]).map(str::to_string),
    };
    let got = rt().block_on(OidcSource::new(sts, settings).fetch());
    if let Err(err) = &got {
        run.fail(format!("the provider failed: {err}"));
    }
    let sent = server.requests();
    run.eq("request count", sent.len(), 1);
    let Some(ours) = sent.first() else { return };
    run.eq("http_method", ours.method.as_str(), s(&e["http_method"]));
    run.eq("pathname", ours.path.as_str(), s(&e["pathname"]));
    let mut params = ours.params();
    let mut theirs = pairs(&e["query"]);
    for (k, val) in theirs.iter_mut() {
        if k == "Format" {
            *val = val.to_ascii_uppercase();
        }
    }
    if let Some(f) = params.get_mut("Format") {
        *f = f.to_ascii_uppercase();
    }
    same_params(run, &params, &theirs, &[]);
    let in_query: Vec<&str> = ours.query.iter().map(|(k, _)| k.as_str()).collect();
    run.eq(
        "query holds only the common parameters",
        in_query,
        vec!["Action", "Format", "Version", "Timestamp", "SignatureNonce"],
    );
    for (name, value) in pairs(&e["headers"]) {
        match name.as_str() {
            // The host is the endpoint's (checked above); the oracle's user-agent is a placeholder.
            "host" | "user-agent" => {}
            _ => run.eq(
                &format!("header {name}"),
                ours.header(&name),
                Some(value.as_str()),
            ),
        }
    }
    if e["signed"] == Value::Bool(false) {
        for unsigned in ["Signature", "AccessKeyId", "SignatureMethod", "SignatureVersion"] {
            run.eq(
                &format!("unsigned: no {unsigned}"),
                params.contains_key(unsigned),
                false,
            );
        }
        run.eq("unsigned: no Authorization", ours.header("authorization"), None);
    }
    run.checked += 1;
}

// ---------------------------------------------------------------- ordered JSON

/// A JSON value whose objects keep their members in file order, so headers,
/// query parameters and form fields reach the signers in the vector's order.
/// (serde_json's own `Value` sorts members unless its `preserve_order` feature
/// is on, and turning that on would also reorder the main crate's JSON output
/// in test builds.)
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Arr(Vec<Value>),
    Obj(Vec<(String, Value)>),
}

static NULL: Value = Value::Null;

impl Value {
    fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(n) => i64::try_from(*n).ok(),
            _ => None,
        }
    }

    fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Int(n) => u64::try_from(*n).ok(),
            _ => None,
        }
    }

    fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    fn as_array(&self) -> &[Value] {
        match self {
            Value::Arr(a) => a,
            _ => &[],
        }
    }
}

impl std::ops::Index<&str> for Value {
    type Output = Value;

    /// Missing members (and indexing a non-object) read as `null`.
    fn index(&self, key: &str) -> &Value {
        match self {
            Value::Obj(members) => members.iter().find(|(k, _)| k == key).map_or(&NULL, |(_, v)| v),
            _ => &NULL,
        }
    }
}

impl<'de> serde::Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> serde::de::Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Int(n.into()))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::Int(n.into()))
    }
    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        Ok(Value::Float(n))
    }
    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::Str(s.to_string()))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Arr(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, Value>()? {
            out.push((k, v));
        }
        Ok(Value::Obj(out))
    }
}
