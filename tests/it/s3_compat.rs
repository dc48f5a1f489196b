//! ossvend's `s3-v4` presigned PUT URLs and POST policies against an independent,
//! verifying S3 implementation (s3s + s3s-fs, in-process; see `support::s3peer`).
//!
//! ossvend's router (in this process) signs with the grant's cached STS credential from the
//! in-process STS; the test reads that same credential from `/v1/grants/<g>/credentials`
//! and registers it with the peer. Every upload the peer rejects must leave nothing stored.

use std::fmt;
use std::time::Duration;

use crate::support::s3peer::S3Peer;
use crate::support::*;
use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::Value;

const BUCKET: &str = "s3bucket";
/// The fields of an S3 POST form with a Content-Type, sorted by name.
const SIGNED_FIELDS_SORTED: [&str; 9] = [
    "Content-Type",
    "key",
    "policy",
    "success_action_status",
    "x-amz-algorithm",
    "x-amz-credential",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-signature",
];
const PNG: &[u8] = b"\x89PNG\r\n\x1a\nnot really a picture, but bytes to compare";

fn s3_config(sts_endpoint: &str, s3_endpoint: &str) -> String {
    let grant = |name: &str, extra: &str| {
        format!(
            r#"
[[grants]]
name = "{name}"
bucket = "{BUCKET}"
region = "cn-hangzhou"
prefix = "uploads/"
actions = ["oss:PutObject"]
presign_scheme = "s3-v4"
post_version = "s3-v4"
s3_endpoint = "{s3_endpoint}"
max_size_bytes = 1024
{extra}
"#
        )
    };
    let types = r#"content_types = ["image/png", "text/plain"]"#;
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[identity]
source = "env"

[sts]
endpoint = "{sts_endpoint}"
role_arn = "{ROLE_ARN}"
{}{}{}"#,
        grant("s3", types),
        grant("s3-short", &format!("{types}\nupload_expires = \"1s\"")),
        grant("s3-open", ""),
    )
}

/// The peer, the in-process STS and ossvend's router (in this process), with each
/// grant's signing credential registered.
struct Setup {
    peer: S3Peer,
    _sts: StsStub,
    app: TestApp,
    client: reqwest::Client,
    /// AccessKeyId of grant `s3`'s cached STS credential.
    access_key_id: String,
}

async fn setup() -> Setup {
    let peer = S3Peer::start(&[BUCKET]);
    let sts = StsStub::start();
    let app = TestApp::new(&s3_config(&sts.endpoint, &peer.endpoint)).await;
    let client = http();
    let mut access_key_id = String::new();
    for grant in ["s3", "s3-short", "s3-open"] {
        let r = app.get(&format!("/v1/grants/{grant}/credentials")).await;
        assert_eq!(r.status, 200);
        let c: Value = serde_json::from_slice(&r.body).unwrap();
        let ak = c["AccessKeyId"].as_str().unwrap();
        peer.register(ak, c["AccessKeySecret"].as_str().unwrap());
        if grant == "s3" {
            access_key_id = ak.to_string();
        }
    }
    Setup {
        peer,
        _sts: sts,
        app,
        client,
        access_key_id,
    }
}

impl Setup {
    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.app.get(path).await;
        (r.status, serde_json::from_slice(&r.body).unwrap())
    }

    async fn presign(&self, grant: &str, query: &str) -> Presign {
        let (status, body) = self.get(&format!("/v1/grants/{grant}/presign?{query}")).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_value(body).unwrap()
    }

    async fn post_policy(&self, grant: &str, query: &str) -> PostPolicy {
        let r = self
            .app
            .get(&format!("/v1/grants/{grant}/post-policy?{query}"))
            .await;
        assert_eq!(r.status, 200);
        // Parsed from the text: `fields` is an ordered object.
        serde_json::from_str(&r.text()).unwrap()
    }

    /// PUTs `body` to `url` with exactly `headers`.
    async fn put(&self, url: &str, headers: &[(String, String)], body: &[u8]) -> Answer {
        let mut req = self.client.put(url).body(body.to_vec());
        for (k, v) in headers {
            req = req.header(k, v);
        }
        Answer::of(req.send().await.unwrap()).await
    }

    /// A browser-style multipart POST: `fields` in order, then the file.
    async fn post_form(
        &self,
        host: &str,
        fields: &[(String, String)],
        file: &[u8],
        file_type: &str,
    ) -> Answer {
        let (content_type, body) = multipart(fields, file, file_type);
        let r = self
            .client
            .post(host)
            .header("Content-Type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        Answer::of(r).await
    }
}

#[derive(Debug, Deserialize)]
struct Presign {
    method: String,
    url: String,
    headers: Fields,
    key: String,
    scheme: String,
}

#[derive(Debug, Deserialize)]
struct PostPolicy {
    host: String,
    dir: String,
    key: Option<String>,
    fields: Fields,
    version: String,
}

/// A JSON object kept in its order (serde_json's `Value` sorts keys).
#[derive(Debug, Clone)]
struct Fields(Vec<(String, String)>);

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Fields, A::Error> {
                let mut out = Vec::new();
                while let Some(kv) = m.next_entry::<String, String>()? {
                    out.push(kv);
                }
                Ok(Fields(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl Fields {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    fn names(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
    /// A copy with the value of field `name` replaced (which must exist).
    fn with(&self, name: &str, value: &str) -> Vec<(String, String)> {
        let mut out = self.0.clone();
        match out.iter_mut().find(|(k, _)| k == name) {
            Some(kv) => kv.1 = value.to_string(),
            None => panic!("no field {name} in {:?}", self.names()),
        }
        out
    }
}

/// A peer answer: status, S3 error code (if any) and the raw body.
#[derive(Debug)]
struct Answer {
    status: u16,
    code: Option<String>,
    body: String,
}

impl Answer {
    async fn of(r: reqwest::Response) -> Answer {
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        let code = between(&body, "<Code>", "</Code>").map(str::to_owned);
        Answer { status, code, body }
    }

    #[track_caller]
    fn assert(&self, status: u16, code: Option<&str>) {
        assert_eq!(
            (self.status, self.code.as_deref()),
            (status, code),
            "peer answered: {}",
            self.body
        );
    }
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = s.find(start)? + start.len();
    let to = from + s[from..].find(end)?;
    Some(&s[from..to])
}

/// `multipart/form-data` with `fields` in order and `file` last.
fn multipart(fields: &[(String, String)], file: &[u8], file_type: &str) -> (String, Vec<u8>) {
    const BOUNDARY: &str = "----ossvendS3CompatBoundary7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"upload.png\"\r\n\
             Content-Type: {file_type}\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={BOUNDARY}"), body)
}

/// The decoded value of query parameter `name` in `url`.
fn query_param(url: &str, name: &str) -> String {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("no {name} in {url}"))
}

/// `url` with the value of query parameter `name` replaced by `f(value)` (raw, as sent).
fn replace_param(url: &str, name: &str, f: impl Fn(&str) -> String) -> String {
    let (base, query) = url.split_once('?').unwrap();
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if k == name => format!("{k}={}", f(v)),
            _ => pair.to_string(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

/// The last hex digit changed.
fn tamper_hex(sig: &str) -> String {
    let (head, last) = sig.split_at(sig.len() - 1);
    format!("{head}{}", if last == "0" { "1" } else { "0" })
}

/// `<ak>/<yyyymmdd of x_amz_date>/cn-hangzhou/s3/aws4_request`.
fn credential(ak: &str, x_amz_date: &str) -> String {
    format!("{ak}/{}/cn-hangzhou/s3/aws4_request", &x_amz_date[..8])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_put_is_accepted_and_every_tampering_is_refused() {
    let s = setup().await;
    let p = s.presign("s3", "filename=a.png&content_type=image/png").await;
    assert_eq!((p.method.as_str(), p.scheme.as_str()), ("PUT", "s3-v4"));
    assert!(
        p.key.starts_with("uploads/") && p.key.ends_with(".png"),
        "{}",
        p.key
    );
    assert_eq!(
        p.headers.0,
        vec![("Content-Type".to_string(), "image/png".to_string())]
    );

    // Path-style on the loopback endpoint, signed with the grant's cached STS credential,
    // and the Content-Type is bound by the signature.
    assert!(
        p.url
            .starts_with(&format!("{}/{BUCKET}/{}?", s.peer.endpoint, p.key)),
        "{}",
        p.url
    );
    assert_eq!(query_param(&p.url, "X-Amz-Algorithm"), "AWS4-HMAC-SHA256");
    assert_eq!(
        query_param(&p.url, "X-Amz-Credential"),
        credential(&s.access_key_id, &query_param(&p.url, "X-Amz-Date"))
    );
    assert_eq!(query_param(&p.url, "X-Amz-SignedHeaders"), "content-type;host");
    assert!(!query_param(&p.url, "X-Amz-Security-Token").is_empty());

    let other_type = vec![("Content-Type".to_string(), "text/plain".to_string())];

    // Another Content-Type than the signed one.
    s.put(&p.url, &other_type, PNG)
        .await
        .assert(403, Some("SignatureDoesNotMatch"));
    // No Content-Type at all.
    s.put(&p.url, &[], PNG)
        .await
        .assert(403, Some("SignatureDoesNotMatch"));
    // A tampered signature.
    let tampered = replace_param(&p.url, "X-Amz-Signature", tamper_hex);
    s.put(&tampered, &p.headers.0, PNG)
        .await
        .assert(403, Some("SignatureDoesNotMatch"));
    // A tampered security token (it is covered by the signature).
    let token = replace_param(&p.url, "X-Amz-Security-Token", |t| format!("x{t}"));
    s.put(&token, &p.headers.0, PNG)
        .await
        .assert(403, Some("SignatureDoesNotMatch"));
    // The same URL pointed at another key.
    let elsewhere = p.url.replacen(&p.key, "uploads/elsewhere.png", 1);
    assert_ne!(elsewhere, p.url);
    s.put(&elsewhere, &p.headers.0, PNG)
        .await
        .assert(403, Some("SignatureDoesNotMatch"));
    assert!(s.peer.keys(BUCKET).is_empty(), "{:?}", s.peer.keys(BUCKET));

    // As issued: stored, byte for byte, with the signed Content-Type.
    s.put(&p.url, &p.headers.0, PNG).await.assert(200, None);
    assert_eq!(s.peer.object(BUCKET, &p.key).as_deref(), Some(PNG));
    assert_eq!(
        s.peer.keys(BUCKET).into_iter().collect::<Vec<_>>(),
        vec![p.key.clone()]
    );
    let head = s.peer.head(BUCKET, &p.key).await.unwrap();
    assert_eq!(head.content_type.as_deref(), Some("image/png"));
    assert_eq!(head.content_length, Some(PNG.len() as i64));

    // Every signature the peer checked named the vended credential.
    let lookups = s.peer.lookups();
    assert!(!lookups.is_empty());
    assert!(lookups.iter().all(|k| *k == s.access_key_id), "{lookups:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_presigned_url_is_refused() {
    let s = setup().await;
    let p = s
        .presign("s3-short", "filename=a.txt&content_type=text/plain")
        .await;
    assert_eq!(query_param(&p.url, "X-Amz-Expires"), "1");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let a = s.put(&p.url, &p.headers.0, b"too late").await;
    a.assert(403, Some("AccessDenied"));
    assert!(a.body.contains("Request has expired"), "{}", a.body);
    assert!(s.peer.keys(BUCKET).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disallowed_content_types_get_no_signature() {
    let s = setup().await;
    for route in ["presign", "post-policy"] {
        let (status, body) = s
            .get(&format!(
                "/v1/grants/s3/{route}?filename=a.html&content_type=text/html"
            ))
            .await;
        assert_eq!(status, 400, "{route}: {body}");
        assert_eq!(body["code"], "content_type_not_allowed", "{route}: {body}");
        // S3 POST policies have no `in`: the type must be named to be bound.
        let (status, body) = s.get(&format!("/v1/grants/s3/{route}?filename=a.png")).await;
        assert_eq!(status, 400, "{route}: {body}");
        assert_eq!(body["code"], "content_type_required", "{route}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_policy_upload_is_accepted_under_the_prefix() {
    let s = setup().await;

    // The client names the object under the prefix.
    let p = s.post_policy("s3", "content_type=image/png").await;
    assert_eq!(p.version, "s3-v4");
    assert_eq!(p.dir, "uploads/");
    assert_eq!(p.key, None);
    assert_eq!(p.host, format!("{}/{BUCKET}/", s.peer.endpoint));
    let mut names = p.fields.names();
    names.sort_unstable();
    assert_eq!(names, SIGNED_FIELDS_SORTED);
    assert_eq!(p.fields.get("key"), Some("uploads/${filename}"));
    assert_eq!(
        p.fields.get("x-amz-credential").unwrap(),
        credential(&s.access_key_id, p.fields.get("x-amz-date").unwrap())
    );
    let fields = p.fields.with("key", "uploads/b.png");
    s.post_form(&p.host, &fields, PNG, "image/png")
        .await
        .assert(200, None);
    assert_eq!(s.peer.object(BUCKET, "uploads/b.png").as_deref(), Some(PNG));
    let head = s.peer.head(BUCKET, "uploads/b.png").await.unwrap();
    assert_eq!(head.content_type.as_deref(), Some("image/png"));

    // The fields exactly as issued (`${filename}` is left to the server; s3s stores it as is).
    s.post_form(&p.host, &p.fields.0, b"second", "image/png")
        .await
        .assert(200, None);
    let keys = s.peer.keys(BUCKET);
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.iter().all(|k| k.starts_with("uploads/")), "{keys:?}");

    // The server names the object: exactly that key, and the largest allowed size.
    let p = s
        .post_policy("s3", "filename=c.txt&content_type=text/plain")
        .await;
    let key = p.key.clone().unwrap();
    assert!(key.starts_with("uploads/") && key.ends_with(".txt"), "{key}");
    assert_eq!(p.fields.get("key"), Some(key.as_str()));
    let max = vec![b'x'; 1024];
    s.post_form(&p.host, &p.fields.0, &max, "text/plain")
        .await
        .assert(200, None);
    assert_eq!(s.peer.object(BUCKET, &key), Some(max));
    assert_eq!(
        s.peer.head(BUCKET, &key).await.unwrap().content_type.as_deref(),
        Some("text/plain")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_policy_violations_are_refused_and_store_nothing() {
    let s = setup().await;
    let p = s.post_policy("s3", "content_type=image/png").await;
    let ok = p.fields.with("key", "uploads/ok.png");
    let ok_fields = Fields(ok.clone());

    // A tampered signature.
    let sig = tamper_hex(p.fields.get("x-amz-signature").unwrap());
    s.post_form(
        &p.host,
        &ok_fields.with("x-amz-signature", &sig),
        PNG,
        "image/png",
    )
    .await
    .assert(403, Some("SignatureDoesNotMatch"));
    // One byte over max_size_bytes.
    s.post_form(&p.host, &ok, &[b'x'; 1025], "image/png")
        .await
        .assert(400, Some("EntityTooLarge"));
    // A key outside the prefix.
    s.post_form(&p.host, &p.fields.with("key", "other/x.png"), PNG, "image/png")
        .await
        .assert(400, Some("InvalidPolicyDocument"));
    // A Content-Type other than the policy's.
    s.post_form(
        &p.host,
        &ok_fields.with("Content-Type", "text/plain"),
        PNG,
        "text/plain",
    )
    .await
    .assert(400, Some("InvalidPolicyDocument"));
    // A server-named key is bound exactly.
    let named = s.post_policy("s3", "filename=d.png&content_type=image/png").await;
    let other = format!("{}x", named.key.unwrap());
    s.post_form(&named.host, &named.fields.with("key", &other), PNG, "image/png")
        .await
        .assert(400, Some("InvalidPolicyDocument"));
    assert!(s.peer.keys(BUCKET).is_empty(), "{:?}", s.peer.keys(BUCKET));

    // An expired policy.
    let short = s.post_policy("s3-short", "content_type=image/png").await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let a = s
        .post_form(
            &short.host,
            &short.fields.with("key", "uploads/late.png"),
            PNG,
            "image/png",
        )
        .await;
    a.assert(403, Some("AccessDenied"));
    assert!(a.body.contains("Request has expired"), "{}", a.body);
    assert!(s.peer.keys(BUCKET).is_empty(), "{:?}", s.peer.keys(BUCKET));

    // The untouched form still works (the rejections were for the reasons given).
    s.post_form(&p.host, &ok, PNG, "image/png")
        .await
        .assert(200, None);
    assert_eq!(s.peer.object(BUCKET, "uploads/ok.png").as_deref(), Some(PNG));
}

/// A grant without a content-type allowlist: the declared Content-Type is sent as
/// a form field, so an S3 policy must name it (S3 refuses any field the policy
/// does not cover).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_policy_without_allowlist_covers_the_content_type_field() {
    let s = setup().await;
    let p = s.post_policy("s3-open", "content_type=image/png").await;
    let fields = p.fields.with("key", "uploads/open.png");
    s.post_form(&p.host, &fields, PNG, "image/png")
        .await
        .assert(200, None);
    assert_eq!(s.peer.object(BUCKET, "uploads/open.png").as_deref(), Some(PNG));
}

/// Without an allowlist any declared type is signed, and still bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_put_without_allowlist_binds_the_declared_type() {
    let s = setup().await;
    let u = s
        .presign("s3-open", "filename=a.bin&content_type=application/octet-stream")
        .await;
    assert_eq!(query_param(&u.url, "X-Amz-SignedHeaders"), "content-type;host");
    let other_type = [("Content-Type".to_string(), "text/html".to_string())];
    s.put(&u.url, &other_type, b"bin")
        .await
        .assert(403, Some("SignatureDoesNotMatch"));
    assert!(s.peer.keys(BUCKET).is_empty());
    s.put(&u.url, &u.headers.0, b"bin").await.assert(200, None);
    assert_eq!(s.peer.object(BUCKET, &u.key).as_deref(), Some(&b"bin"[..]));
    let head = s.peer.head(BUCKET, &u.key).await.unwrap();
    assert_eq!(head.content_type.as_deref(), Some("application/octet-stream"));
}

/// `fields` is documented as the order to send them in (the order they were signed:
/// the caller's fields, then `x-amz-*`, `policy`, `x-amz-signature`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_policy_fields_come_in_signing_order() {
    let s = setup().await;
    let p = s.post_policy("s3", "content_type=image/png").await;
    assert_eq!(
        p.fields.names(),
        [
            "key",
            "success_action_status",
            "Content-Type",
            "x-amz-algorithm",
            "x-amz-credential",
            "x-amz-date",
            "x-amz-security-token",
            "policy",
            "x-amz-signature"
        ]
    );
}
