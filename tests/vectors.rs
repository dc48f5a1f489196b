//! Checks our signers against every vector in `tests/vectors/*.json` (copies of
//! `shared/spec/vectors/`, computed by running the official SDKs; spec §14) and
//! compares everything a vector states that they produce.
//! `OSSVEND_VECTORS_DIR` points the test at another directory of the same files.
//!
//! Every `*.json` there gets one line: `vectors: <file> checked=<n> skipped=<m>`.
//! Files of kinds not implemented yet show `checked=0 skipped=<all>`. In a file
//! of an implemented kind, a vector is either checked, or skipped with a printed
//! reason; anything else (a mismatch, a refusal, a vector left unhandled) is a
//! failure. The fake STS's own verifier is then run against the STS vectors.
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
    // sub-resources, spec §8), its URL is compared with its Signature replaced.
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
