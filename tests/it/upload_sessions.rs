//! Upload sessions (issue 17), proven from the outside.
//!
//! - The embedded OSS sink runs multipart uploads as OSS does, with the official SDKs as
//!   clients (tests/clients/local_multipart.py against the real `ossvend local`): oss2
//!   (V1 and V4) and alibabacloud-oss-v2 (presigned UploadPart URLs sent by plain HTTP),
//!   Content-MD5, ListParts paging, `x-oss-forbid-overwrite`, and OSS's refusals
//!   (InvalidDigest, InvalidPart, InvalidPartOrder, EntityTooSmall, FileAlreadyExists,
//!   NoSuchUpload, SignatureDoesNotMatch); the bytes read back are the bytes sent.
//!
//! Missing clients fail the tests (`scripts/test-deps` installs them); nothing is skipped.

use std::time::Duration;

use crate::support::*;
use serde_json::Value;

const BUCKET: &str = "local-bucket";
const PART: usize = 100 * 1024;

/// The bodies the client script sends: byte i = (i * 31 + seed * 7 + (i >> 8)) % 256.
fn pattern(seed: usize, size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| ((i * 31 + seed * 7 + (i >> 8)) % 256) as u8)
        .collect()
}

/// Runs `tests/clients/local_multipart.py <sdk>` against `ls`; its output.
async fn run_script(ls: &LocalServer, sdk: &str) -> String {
    require_client_deps();
    let home = tempfile::tempdir().unwrap();
    let mut cmd = client_command(venv_python(), home.path());
    cmd.arg(clients_dir().join("local_multipart.py"))
        .arg(sdk)
        .args(["--creds-url", &ls.server.url("/v1/grants/sdk-upload/credentials")]);
    let r = tokio::task::spawn_blocking(move || run_client(cmd, Duration::from_secs(120)))
        .await
        .unwrap();
    print!("{}", r.output);
    assert!(
        r.succeeded(),
        "{sdk}: {:?}\n{}\nlogs:\n{}",
        r.code,
        r.output,
        ls.server.logs.text()
    );
    r.output
}

/// The outcome (`200 OK`, `400 InvalidDigest`, …) the script printed for `label`.
fn outcome<'a>(output: &'a str, label: &str) -> &'a str {
    let prefix = format!("RESULT {label} ");
    let line = output
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no result for {label}:\n{output}"));
    let rest = line[prefix.len()..].split_once(' ').map_or("", |(_, r)| r);
    rest.split(" md5=").next().unwrap_or("").trim()
}

fn listed<'a>(output: &'a str, label: &str) -> &'a str {
    let prefix = format!("LISTED {label} ");
    output
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no listing for {label}:\n{output}"))
}

/// The stored object's bytes, read back from `/_local/objects`.
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

async fn object_auth(ls: &LocalServer, key: &str) -> Option<String> {
    let v: Value = http()
        .get(ls.server.url("/_local/objects?format=json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["objects"]
        .as_array()?
        .iter()
        .find(|o| o["key"] == key)
        .and_then(|o| o["auth"].as_str().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_runs_multipart_like_oss_for_oss2_v1_and_v4() {
    let ls = LocalServer::start(None, &[]);
    let out = run_script(&ls, "oss2").await;
    for (version, seed) in [("v1", 21), ("v4", 22)] {
        let lab = |step: &str| format!("oss2-{version}-{step}");
        let expected = [
            ("init", "200 OK"),
            ("wrong-md5", "400 InvalidDigest"),
            ("wrong-etag", "400 InvalidPart"),
            ("complete", "200 OK"),
            ("init-existing", "409 FileAlreadyExists"),
            ("too-small", "400 EntityTooSmall"),
            ("overwrite", "409 FileAlreadyExists"),
            ("abort", "204 OK"),
            ("abort-again", "404 NoSuchUpload"),
        ];
        for (step, want) in expected {
            assert_eq!(outcome(&out, &lab(step)), want, "{}", lab(step));
        }
        assert_eq!(
            listed(&out, &format!("oss2-{version}")),
            "pages=3 parts=1:102400,2:102400,3:37888",
            "ListParts with max-parts=1 pages through the three parts"
        );
        let key = format!("sdk/mp/oss2-{version}.bin");
        let body = pattern(seed, 2 * PART + 37 * 1024);
        assert!(
            stored(&ls, &key).await == Some(body),
            "{key}: the bytes read back differ (the refused second upload must not touch them)"
        );
        assert_eq!(object_auth(&ls, &key).await.as_deref(), Some("multipart"));
    }
    println!(
        "upload_sessions: oss2 2.19.1 V1 + V4 multipart against the sink, 9 verdicts each, bytes identical: OK"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_accepts_presigned_upload_part_urls_from_oss_v2() {
    let ls = LocalServer::start(None, &[]);
    let out = run_script(&ls, "oss-v2").await;
    let expected = [
        ("v2-init", "200 OK"),
        ("v2-other-part-number", "403 SignatureDoesNotMatch"),
        ("v2-body-not-md5", "400 InvalidDigest"),
        ("v2-part-1", "200 OK"),
        ("v2-part-2", "200 OK"),
        ("v2-part-3", "200 OK"),
        ("v2-wrong-order", "400 InvalidPartOrder"),
        ("v2-complete", "200 OK"),
    ];
    for (label, want) in expected {
        assert_eq!(outcome(&out, label), want, "{label}");
    }
    assert_eq!(listed(&out, "v2"), "pages=3 parts=1:102400,2:102400,3:5");
    let key = "sdk/mp/v2-presigned.bin";
    assert!(
        stored(&ls, key).await == Some(pattern(11, 2 * PART + 5)),
        "{key}: bytes differ"
    );
    println!(
        "upload_sessions: alibabacloud-oss-v2 1.4.1 presigned UploadPart URLs (V4, Content-MD5 bound) \
         by plain HTTP, 3 parts, ListParts paginator, bytes identical: OK"
    );
}

// ---------------------------------------------------------------- ossvend's OSS client (src/oss)

mod client {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use ossvend::oss::{ObjectRef, OssCallError, OssClient, OssSettings, OssSigning};
    use ossvend::sign::oss_v4::V4Scope;
    use ossvend::sign::{AddressingStyle, Endpoint, RequestToSign, SigningCredentials};

    const AK: &str = "LTAI5tFakeRootKeyForTests";
    const SK: &str = "fake-root-secret-for-tests";

    fn creds() -> SigningCredentials<'static> {
        SigningCredentials {
            access_key_id: AK,
            access_key_secret: SK,
            security_token: None,
        }
    }

    fn object<'a>(endpoint: &'a str, key: &'a str, signing: OssSigning) -> ObjectRef<'a> {
        ObjectRef {
            endpoint: Endpoint {
                base: endpoint,
                style: AddressingStyle::Path,
            },
            region: "cn-hangzhou",
            bucket: BUCKET,
            key,
            signing,
        }
    }

    fn fast() -> OssSettings {
        OssSettings {
            retry_base_delay: Duration::from_millis(1),
            ..OssSettings::default()
        }
    }

    /// UploadPart through a V4 presigned URL, as a browser would send it.
    async fn put_part(o: &ObjectRef<'_>, upload_id: &str, n: u32, data: Vec<u8>) -> u16 {
        let number = n.to_string();
        let query = [("partNumber", number.as_str()), ("uploadId", upload_id)];
        let req = RequestToSign {
            method: "PUT",
            bucket: Some(o.bucket),
            key: o.key,
            headers: &[],
            query: &query,
        };
        let url = ossvend::sign::oss_v4::presign_url(
            &creds(),
            &req,
            &V4Scope::oss(o.region),
            &[],
            &o.endpoint,
            chrono::Utc::now(),
            600,
        )
        .unwrap();
        http()
            .put(url.url)
            .body(data)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_initiate_list_complete_abort_against_the_sink_v4_and_v1() {
        let sts = FakeSts::start();
        let sink = EmbeddedOss::start(&sts, Some((AK, SK)));
        let client = OssClient::new(fast()).unwrap();
        for (signing, seed) in [(OssSigning::V4, 31), (OssSigning::V1, 32)] {
            let key = format!("sessions/{signing:?}.bin");
            let o = object(&sink.endpoint, &key, signing);
            let id = client
                .initiate(&creds(), &o, "application/x-test", true)
                .await
                .unwrap();
            let body = pattern(seed, 2 * PART + 5);
            for (i, chunk) in body.chunks(PART).enumerate() {
                assert_eq!(put_part(&o, &id, i as u32 + 1, chunk.to_vec()).await, 200);
            }
            let parts = client.list_parts(&creds(), &o, &id).await.unwrap();
            assert_eq!(
                parts.iter().map(|p| (p.number, p.size)).collect::<Vec<_>>(),
                [(1, PART as u64), (2, PART as u64), (3, 5)]
            );
            let chosen: Vec<(u32, String)> = parts.iter().map(|p| (p.number, p.etag.clone())).collect();
            let etag = client.complete(&creds(), &o, &id, &chosen, true).await.unwrap();
            assert!(etag.ends_with("-3\""), "{etag}");
            assert!(
                sink.object(BUCKET, &key).await == Some(body.clone()),
                "{key}: bytes differ"
            );

            // OSS's refusals come back with OSS's code.
            let again = client.complete(&creds(), &o, &id, &chosen, true).await;
            assert_eq!(again.unwrap_err().oss_code(), Some("NoSuchUpload"));
            let exists = client.initiate(&creds(), &o, "application/x-test", true).await;
            let e = exists.unwrap_err();
            assert!(
                matches!(&e, OssCallError::Service { status: 409, code, request_id: Some(_), .. } if code == "FileAlreadyExists"),
                "{e:?}"
            );
            let id = client
                .initiate(&creds(), &o, "application/x-test", false)
                .await
                .unwrap();
            client.abort(&creds(), &o, &id).await.unwrap();
            let gone = client.abort(&creds(), &o, &id).await.unwrap_err();
            assert_eq!(gone.oss_code(), Some("NoSuchUpload"));
        }
        let wrong = SigningCredentials {
            access_key_secret: "not-the-secret",
            ..creds()
        };
        let o = object(&sink.endpoint, "sessions/denied.bin", OssSigning::V4);
        let e = client.initiate(&wrong, &o, "text/plain", true).await.unwrap_err();
        assert_eq!(e.oss_code(), Some("SignatureDoesNotMatch"));
        assert!(!format!("{e} {e:?}").contains(SK), "no secret in the error");
        println!("upload_sessions: OssClient V4 + V1 Initiate/ListParts/Complete/Abort against the sink: OK");
    }

    /// A stand-in OSS: `/b/flaky` always 503, `/b/denied` 403, `/b/paged` two ListParts pages.
    async fn scripted_oss() -> (String, Arc<AtomicUsize>) {
        use axum::http::StatusCode;
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let error = |status: StatusCode, code: &str| {
                    let xml = format!("<Error><Code>{code}</Code><Message>m</Message><RequestId>R{code}</RequestId></Error>");
                    (status, xml)
                };
                let query = req.uri().query().unwrap_or("").to_string();
                match req.uri().path() {
                    "/local-bucket/flaky" => error(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
                    "/local-bucket/denied" => error(StatusCode::FORBIDDEN, "AccessDenied"),
                    _ if query.contains("part-number-marker=0") => (
                        StatusCode::OK,
                        "<ListPartsResult><IsTruncated>true</IsTruncated><NextPartNumberMarker>1</NextPartNumberMarker>\
                         <Part><PartNumber>1</PartNumber><ETag>\"A\"</ETag><Size>102400</Size></Part></ListPartsResult>"
                            .to_string(),
                    ),
                    _ => (
                        StatusCode::OK,
                        "<ListPartsResult><IsTruncated>false</IsTruncated><NextPartNumberMarker>2</NextPartNumberMarker>\
                         <Part><PartNumber>2</PartNumber><ETag>\"B\"</ETag><Size>7</Size></Part></ListPartsResult>"
                            .to_string(),
                    ),
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (endpoint, hits)
    }

    #[tokio::test]
    async fn retries_5xx_a_bounded_number_of_times_never_4xx_and_reads_every_page() {
        let (endpoint, hits) = scripted_oss().await;
        let client = OssClient::new(fast()).unwrap();
        let e = client
            .abort(&creds(), &object(&endpoint, "flaky", OssSigning::V4), "U")
            .await
            .unwrap_err();
        assert_eq!(
            (e.oss_code(), e.oss_request_id()),
            (Some("ServiceUnavailable"), Some("RServiceUnavailable"))
        );
        assert_eq!(hits.swap(0, Ordering::SeqCst), 3, "1 + max_retries (2) attempts");
        let e = client
            .abort(&creds(), &object(&endpoint, "denied", OssSigning::V4), "U")
            .await
            .unwrap_err();
        assert_eq!(e.oss_code(), Some("AccessDenied"));
        assert_eq!(hits.swap(0, Ordering::SeqCst), 1, "a 4xx is never retried");
        let parts = client
            .list_parts(&creds(), &object(&endpoint, "paged", OssSigning::V1), "U")
            .await
            .unwrap();
        assert_eq!(
            parts.iter().map(|p| (p.number, p.size)).collect::<Vec<_>>(),
            [(1, 102400), (2, 7)]
        );
        assert_eq!(hits.swap(0, Ordering::SeqCst), 2, "two pages, two calls");
        let unreachable = client
            .abort(&creds(), &object("http://127.0.0.1:9", "k", OssSigning::V4), "U")
            .await
            .unwrap_err();
        assert!(
            matches!(unreachable, OssCallError::Transport(_)),
            "{unreachable:?}"
        );
    }
}

// ---------------------------------------------------------------- the native API

mod native {
    use super::*;
    use md5::Digest as _;
    use ossvend::sign::oss_v4::V4Scope;
    use ossvend::sign::{AddressingStyle, Endpoint, RequestToSign, SigningCredentials};

    const ALICE: &str = "alice-key-0123456789-abcdef";
    const BOB: &str = "bob-key-0123456789-abcdefgh";
    const ROOT_AK: &str = "LTAI5tFakeRootKeyForSessions";
    const ROOT_SK: &str = "fake-root-secret-for-sessions";
    const MAX: usize = 4 * PART;

    fn sha256_hex(s: &str) -> String {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(s.as_bytes()))
    }

    fn b64_md5(data: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(data))
    }

    struct Env {
        _sts: FakeSts,
        oss: EmbeddedOss,
        server: Server,
    }

    fn start() -> Env {
        let sts = FakeSts::start();
        let oss = EmbeddedOss::start(&sts, Some((ROOT_AK, ROOT_SK)));
        let config = format!(
            r#"
[server]
listen = "127.0.0.1:0"

[identity]
source = "env"

[sts]
endpoint = "{sts}"
role_arn = "{ROLE_ARN}"
retry_base_delay = "10ms"

[[auth.api_keys]]
id = "alice"
sha256 = "{alice}"

[[auth.api_keys]]
id = "bob"
sha256 = "{bob}"

[[grants]]
name = "big"
bucket = "{BUCKET}"
region = "cn-hangzhou"
endpoint = "{endpoint}"
prefix = "big/"
actions = ["oss:PutObject", "oss:ListParts", "oss:AbortMultipartUpload"]
content_types = ["application/octet-stream", "text/plain"]
max_size_bytes = {MAX}
multipart = true
auth = ["api_key"]

[[grants]]
name = "small"
bucket = "{BUCKET}"
region = "cn-hangzhou"
endpoint = "{endpoint}"
prefix = "small/"
auth = ["api_key"]
"#,
            sts = sts.endpoint,
            endpoint = oss.endpoint,
            alice = sha256_hex(ALICE),
            bob = sha256_hex(BOB),
        );
        let server = Server::start(config);
        Env {
            _sts: sts,
            oss,
            server,
        }
    }

    async fn call(env: &Env, method: &str, path: &str, key: &str, body: Option<Value>) -> (u16, Value) {
        let url = env.server.url(path);
        let req = match method {
            "POST" => http().post(url),
            "DELETE" => http().delete(url),
            _ => http().get(url),
        }
        .header("X-Api-Key", key);
        let req = match body {
            Some(b) => req.json(&b),
            None => req,
        };
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn open(env: &Env, size: usize) -> Value {
        let body = serde_json::json!({"filename": "movie.bin", "content_type": "application/octet-stream",
                                      "size": size, "part_size": PART});
        let (status, v) = call(env, "POST", "/v1/grants/big/uploads", ALICE, Some(body)).await;
        assert_eq!(status, 201, "{v}");
        v
    }

    async fn part_urls(env: &Env, s: &Value, query: &str, key: &str) -> (u16, Value) {
        let path = format!(
            "/v1/grants/big/uploads/{}/parts?{query}",
            s["upload"].as_str().unwrap()
        );
        call(env, "GET", &path, key, None).await
    }

    /// PUTs `data` to a part URL with its signed headers; the sink's status and error code.
    async fn put(url: &str, headers: &Value, data: Vec<u8>) -> (u16, String) {
        let mut req = http().put(url).body(data);
        for (k, v) in headers.as_object().unwrap() {
            req = req.header(k.as_str(), v.as_str().unwrap());
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        let code = text
            .split("<Code>")
            .nth(1)
            .and_then(|t| t.split("</Code>").next())
            .unwrap_or("OK")
            .to_string();
        (status, code)
    }

    /// Uploads `sizes[i]` bytes as part i+1 through the session's URLs; returns the bytes.
    async fn upload_parts(env: &Env, s: &Value, sizes: &[usize], seed: usize) -> Vec<u8> {
        let (status, urls) = part_urls(env, s, &format!("numbers=1-{}", sizes.len()), ALICE).await;
        assert_eq!(status, 200, "{urls}");
        let mut all = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            let data = pattern(seed + i, size);
            let p = &urls["parts"][i];
            assert_eq!(
                put(p["url"].as_str().unwrap(), &p["headers"], data.clone()).await,
                (200, "OK".into())
            );
            all.extend(data);
        }
        all
    }

    async fn complete(env: &Env, s: &Value) -> (u16, Value) {
        let path = format!(
            "/v1/grants/big/uploads/{}/complete",
            s["upload"].as_str().unwrap()
        );
        call(env, "POST", &path, ALICE, None).await
    }

    async fn abort(env: &Env, s: &Value) -> (u16, Value) {
        let path = format!("/v1/grants/big/uploads/{}", s["upload"].as_str().unwrap());
        call(env, "DELETE", &path, ALICE, None).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_uploads_only_its_parts_and_completes_after_checking_them() {
        let env = start();
        let size = 3 * PART + 5;
        let s = open(&env, size).await;
        assert_eq!(
            (s["part_size"].as_u64(), s["part_count"].as_u64()),
            (Some(PART as u64), Some(4))
        );
        let key = s["key"].as_str().unwrap().to_string();
        assert!(key.starts_with("big/") && key.ends_with(".bin"), "{key}");

        // Part URLs are bound to their number, upload id and key: the sink refuses any other.
        let (_, urls) = part_urls(&env, &s, "numbers=1", ALICE).await;
        let url = urls["parts"][0]["url"].as_str().unwrap().to_string();
        let none = serde_json::json!({});
        let data = pattern(1, PART);
        let other_number = url.replace("partNumber=1&", "partNumber=2&");
        let upload_id = s["upload_id"].as_str().unwrap();
        let other_upload = url.replace(upload_id, "0123456789ABCDEF0123456789ABCDEF");
        let other_key = url.replace(&key, "big/other.bin");
        for (what, u) in [
            ("number", other_number),
            ("upload id", other_upload),
            ("key", other_key),
        ] {
            assert_ne!(u, url, "{what}");
            assert_eq!(
                put(&u, &none, data.clone()).await,
                (403, "SignatureDoesNotMatch".into()),
                "{what}"
            );
        }
        // A bound md5 refuses other bytes.
        let (_, urls) = part_urls(&env, &s, &format!("numbers=1&md5={}", b64_md5(b"other")), ALICE).await;
        let p = &urls["parts"][0];
        assert_eq!(p["headers"]["Content-MD5"], b64_md5(b"other"));
        assert_eq!(
            put(p["url"].as_str().unwrap(), &p["headers"], data.clone()).await,
            (400, "InvalidDigest".into())
        );
        // Another caller, a forged handle, numbers outside the session.
        let (status, v) = part_urls(&env, &s, "numbers=1", BOB).await;
        assert_eq!((status, v["code"].as_str()), (403, Some("upload_not_yours")));
        let mut forged = s.clone();
        forged["upload"] = Value::String(format!("{}x", s["upload"].as_str().unwrap()));
        let (status, v) = part_urls(&env, &forged, "numbers=1", ALICE).await;
        assert_eq!((status, v["code"].as_str()), (404, Some("unknown_upload")));
        let (status, v) = part_urls(&env, &s, "numbers=5", ALICE).await;
        assert_eq!(
            (status, v["code"].as_str()),
            (400, Some("invalid_upload_request"))
        );
        let (status, v) = complete(&env, &forged).await;
        assert_eq!((status, v["code"].as_str()), (404, Some("unknown_upload")));

        let body = upload_parts(&env, &s, &[PART, PART, PART, 5], 10).await;
        let (status, v) = complete(&env, &s).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(
            (v["key"].as_str(), v["size"].as_u64(), v["parts"].as_u64()),
            (Some(key.as_str()), Some(size as u64), Some(4))
        );
        assert!(
            env.oss.object(BUCKET, &key).await == Some(body),
            "the bytes at the sink differ"
        );
        let (status, v) = complete(&env, &s).await;
        assert_eq!(
            (status, v["code"].as_str(), v["oss_code"].as_str()),
            (404, Some("unknown_upload"), Some("NoSuchUpload"))
        );
        println!(
            "upload_sessions: native session, 4 parts ({size} bytes) via part URLs, 3 rebound URLs + a wrong md5 refused by the sink, bytes identical: OK"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wrong_parts_are_refused_and_aborted_and_nothing_is_stored() {
        let env = start();
        // A part bigger than part_size (the total still fits).
        let s = open(&env, 2 * PART + 5).await;
        upload_parts(&env, &s, &[PART + 5, PART], 20).await;
        let (status, v) = complete(&env, &s).await;
        assert_eq!(
            (status, v["code"].as_str()),
            (422, Some("upload_parts_invalid")),
            "{v}"
        );
        assert_eq!(
            abort(&env, &s).await.1["oss_code"],
            "NoSuchUpload",
            "already aborted"
        );
        // The parts' total over max_size_bytes.
        let s2 = open(&env, MAX).await;
        upload_parts(&env, &s2, &[PART, PART, PART, PART + 1], 30).await;
        let (status, v) = complete(&env, &s2).await;
        assert_eq!(
            (status, v["code"].as_str()),
            (413, Some("upload_too_large")),
            "{v}"
        );
        assert!(
            env.oss.objects().await.is_empty(),
            "nothing stored: {:?}",
            env.oss.objects().await
        );
        // Declared over the limit, a grant without sessions, an explicit abort.
        let body = serde_json::json!({"content_type": "text/plain", "size": MAX + 1});
        let (status, v) = call(&env, "POST", "/v1/grants/big/uploads", ALICE, Some(body.clone())).await;
        assert_eq!((status, v["code"].as_str()), (413, Some("upload_too_large")));
        let (status, v) = call(&env, "POST", "/v1/grants/small/uploads", ALICE, Some(body)).await;
        assert_eq!((status, v["code"].as_str()), (403, Some("multipart_not_enabled")));
        let s3 = open(&env, 5).await;
        assert_eq!(abort(&env, &s3).await.0, 204);
        let (status, v) = complete(&env, &s3).await;
        assert_eq!((status, v["oss_code"].as_str()), (404, Some("NoSuchUpload")));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn completion_never_overwrites_an_existing_object() {
        let env = start();
        let s = open(&env, PART + 1).await;
        let key = s["key"].as_str().unwrap().to_string();
        // Someone else writes the key meanwhile (the sink's root key, a V4 presigned PUT).
        let creds = SigningCredentials {
            access_key_id: ROOT_AK,
            access_key_secret: ROOT_SK,
            security_token: None,
        };
        let req = RequestToSign {
            method: "PUT",
            bucket: Some(BUCKET),
            key: &key,
            headers: &[],
            query: &[],
        };
        let endpoint = Endpoint {
            base: &env.oss.endpoint,
            style: AddressingStyle::Path,
        };
        let signed = ossvend::sign::oss_v4::presign_url(
            &creds,
            &req,
            &V4Scope::oss("cn-hangzhou"),
            &[],
            &endpoint,
            chrono::Utc::now(),
            600,
        )
        .unwrap();
        assert_eq!(
            put(&signed.url, &serde_json::json!({}), b"original".to_vec())
                .await
                .0,
            200
        );
        upload_parts(&env, &s, &[PART, 1], 40).await;
        let (status, v) = complete(&env, &s).await;
        assert_eq!(
            (status, v["code"].as_str(), v["oss_code"].as_str()),
            (409, Some("object_exists"), Some("FileAlreadyExists")),
            "{v}"
        );
        assert_eq!(
            env.oss.object(BUCKET, &key).await.as_deref(),
            Some(&b"original"[..]),
            "the original is intact"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn presign_binds_md5_and_forbids_overwrite_when_the_client_names_the_file() {
        let env = start();
        let data = b"hello, single PUT".to_vec();
        let md5 = b64_md5(&data);
        let q = format!(
            "/v1/grants/big/presign?filename=a.txt&content_type=text/plain&md5={}",
            urlencoding(&md5)
        );
        let (status, p) = call(&env, "GET", &q, ALICE, None).await;
        assert_eq!(status, 200, "{p}");
        assert_eq!(p["headers"]["Content-MD5"], md5.as_str());
        assert_eq!(p["headers"]["x-oss-forbid-overwrite"], "true");
        let url = p["url"].as_str().unwrap();
        assert_eq!(
            put(url, &p["headers"], b"other bytes".to_vec()).await,
            (400, "InvalidDigest".into())
        );
        assert_eq!(put(url, &p["headers"], data.clone()).await, (200, "OK".into()));
        assert_eq!(
            put(url, &p["headers"], data.clone()).await,
            (409, "FileAlreadyExists".into()),
            "a replayed URL never overwrites"
        );
        let (status, v) = call(
            &env,
            "GET",
            "/v1/grants/big/presign?content_type=text/plain&md5=abc",
            ALICE,
            None,
        )
        .await;
        assert_eq!((status, v["code"].as_str()), (400, Some("invalid_md5")));
    }

    fn urlencoding(s: &str) -> String {
        url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
    }
}

// ---------------------------------------------------------------- Companion's S3 API (for @uppy/aws-s3)

/// The requests @uppy/aws-s3 6.3.1's `CompanionS3` client makes (src/s3-client/CompanionS3.ts),
/// byte for byte in shape, against `companionEndpoint = <ossvend>/v1/grants/{grant}/companion`.
mod companion {
    use super::*;

    const MAX: usize = 4 * PART;

    struct Env {
        _sts: FakeSts,
        oss: EmbeddedOss,
        server: Server,
    }

    fn start() -> Env {
        let sts = FakeSts::start();
        let oss = EmbeddedOss::start(&sts, None);
        let config = format!(
            r#"
[server]
listen = "127.0.0.1:0"

[identity]
source = "env"

[sts]
endpoint = "{sts}"
role_arn = "{ROLE_ARN}"
retry_base_delay = "10ms"

[[grants]]
name = "uppy"
bucket = "{BUCKET}"
region = "cn-hangzhou"
endpoint = "{endpoint}"
prefix = "uppy/"
actions = ["oss:PutObject", "oss:ListParts", "oss:AbortMultipartUpload"]
max_size_bytes = {MAX}
multipart = true
"#,
            sts = sts.endpoint,
            endpoint = oss.endpoint,
        );
        let server = Server::start(config);
        Env {
            _sts: sts,
            oss,
            server,
        }
    }

    fn s3(env: &Env, path: &str) -> String {
        env.server.url(&format!("/v1/grants/uppy/companion/s3{path}"))
    }

    async fn json(r: reqwest::RequestBuilder) -> (u16, Value) {
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// `createMultipartUpload` → `{uploadId, key}`.
    async fn create(env: &Env) -> (String, String) {
        let body = serde_json::json!({"filename": "clip.bin", "metadata": {"name": "clip.bin"}, "type": "application/octet-stream"});
        let (status, v) = json(http().post(s3(env, "/multipart")).json(&body)).await;
        assert_eq!(status, 200, "{v}");
        (
            v["uploadId"].as_str().unwrap().to_string(),
            v["key"].as_str().unwrap().to_string(),
        )
    }

    fn enc(s: &str) -> String {
        url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
    }

    /// `uploadPart`: GET the URL, PUT the bytes, read the ETag header (as Uppy does).
    async fn upload_part(env: &Env, id: &str, key: &str, n: u32, data: Vec<u8>) -> String {
        let path = format!("/multipart/{}/{n}?key={}", enc(id), enc(key));
        let (status, v) = json(http().get(s3(env, &path))).await;
        assert_eq!(status, 200, "{v}");
        let r = http()
            .put(v["url"].as_str().unwrap())
            .body(data)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.headers()["etag"]
            .to_str()
            .unwrap()
            .trim_matches('"')
            .to_string()
    }

    async fn complete(env: &Env, id: &str, key: &str, parts: &[(u32, String)]) -> (u16, Value) {
        let body = serde_json::json!({"parts": parts.iter().map(|(n, e)| serde_json::json!({"PartNumber": n, "ETag": e})).collect::<Vec<_>>()});
        let path = format!("/multipart/{}/complete?key={}", enc(id), enc(key));
        json(http().post(s3(env, &path)).json(&body)).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn uppy_shaped_requests_upload_single_and_multipart_files() {
        let env = start();
        // putObject: GET /s3/params, then a PostObject form with the fields, the file last.
        let (status, p) = json(http().get(s3(
            &env,
            "/params?filename=a.txt&type=text%2Fplain&metadata%5Bname%5D=a.txt",
        )))
        .await;
        assert_eq!(status, 200, "{p}");
        assert_eq!(p["method"], "POST");
        let small = b"a small file through /s3/params".to_vec();
        // buildPostPolicyForm: every field in order, then the file.
        let boundary = "uppyformboundary7MA4YWxk";
        let mut form = Vec::new();
        for (k, v) in p["fields"].as_object().unwrap() {
            let v = v.as_str().unwrap();
            form.extend(
                format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n")
                    .bytes(),
            );
        }
        form.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\n").bytes());
        form.extend(&small);
        form.extend(format!("\r\n--{boundary}--\r\n").bytes());
        let r = http()
            .post(p["url"].as_str().unwrap())
            .header(
                "Content-Type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(form)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        let key = p["fields"]["key"].as_str().unwrap();
        assert!(key.starts_with("uppy/") && key.ends_with(".txt"), "{key}");
        assert_eq!(env.oss.object(BUCKET, key).await, Some(small));

        // Multipart: create, uploadPart x3, listParts, complete with Uppy's own list.
        let (id, key) = create(&env).await;
        assert!(key.starts_with("uppy/"), "{key}");
        let body = pattern(50, 2 * PART + 77);
        let mut parts = Vec::new();
        for (i, chunk) in body.chunks(PART).enumerate() {
            let n = i as u32 + 1;
            parts.push((n, upload_part(&env, &id, &key, n, chunk.to_vec()).await));
        }
        let (status, listed) =
            json(http().get(s3(&env, &format!("/multipart/{}?key={}", enc(&id), enc(&key))))).await;
        assert_eq!(status, 200, "{listed}");
        assert_eq!(listed.as_array().unwrap().len(), 3);
        assert_eq!(listed[2]["PartNumber"], 3);
        // Uppy's list is checked against ListParts: a list naming a wrong ETag is refused (and aborted).
        let (id2, key2) = create(&env).await;
        let e1 = upload_part(&env, &id2, &key2, 1, pattern(60, PART)).await;
        let (status, v) = complete(&env, &id2, &key2, &[(1, format!("{e1}00"))]).await;
        assert_eq!(
            (status, v["code"].as_str()),
            (422, Some("upload_parts_invalid")),
            "{v}"
        );
        // Another key than the session's is refused.
        let (status, _) = complete(&env, &id, "uppy/other.bin", &parts).await;
        assert_eq!(status, 400);
        let (status, v) = complete(&env, &id, &key, &parts).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["key"], key.as_str());
        assert!(v["location"].as_str().unwrap().ends_with(&key), "{v}");
        assert!(
            env.oss.object(BUCKET, &key).await == Some(body),
            "multipart bytes differ"
        );
        assert_eq!(env.oss.object(BUCKET, &key2).await, None);
        println!(
            "upload_sessions: Companion S3 API in @uppy/aws-s3 6.3.1's shapes: /s3/params form + 3-part multipart, bytes identical: OK"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn uneven_or_oversized_parts_are_refused_without_a_declared_size() {
        let env = start();
        let (id, key) = create(&env).await;
        // Part 2 bigger than part 1.
        let parts = vec![
            (1, upload_part(&env, &id, &key, 1, pattern(70, PART)).await),
            (2, upload_part(&env, &id, &key, 2, pattern(71, PART + 1)).await),
        ];
        let (status, v) = complete(&env, &id, &key, &parts).await;
        assert_eq!(
            (status, v["code"].as_str()),
            (422, Some("upload_parts_invalid")),
            "{v}"
        );
        // Over max_size_bytes in uniform parts.
        let (id, key) = create(&env).await;
        let mut parts = Vec::new();
        for n in 1..=5u32 {
            parts.push((
                n,
                upload_part(&env, &id, &key, n, pattern(80 + n as usize, PART)).await,
            ));
        }
        let (status, v) = complete(&env, &id, &key, &parts).await;
        assert_eq!(
            (status, v["code"].as_str()),
            (413, Some("upload_too_large")),
            "{v}"
        );
        assert!(env.oss.objects().await.is_empty());
        let (status, v) =
            json(http().delete(s3(&env, &format!("/multipart/{}?key={}", enc(&id), enc(&key))))).await;
        assert_eq!(
            (status, v["oss_code"].as_str()),
            (404, Some("NoSuchUpload")),
            "aborted already: {v}"
        );
    }
}

// ---------------------------------------------------------------- the real Uppy in Chromium

/// `tests/browser/uppy.js`: @uppy/core + @uppy/aws-s3 6.3.1 (pinned in tests/browser/package.json,
/// bundled with esbuild) in Debian's Chromium, with `companionEndpoint` pointing at `ossvend local`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_uppy_in_chromium_uploads_a_small_file_and_a_12_mib_multipart_file() {
    let browser_dir = repo_root().join("tests/browser");
    let mut missing = Vec::new();
    if !std::path::Path::new("/usr/bin/chromium").exists() {
        missing.push("/usr/bin/chromium");
    }
    if !browser_dir
        .join("node_modules/@uppy/aws-s3/package.json")
        .exists()
        || !browser_dir.join("node_modules/esbuild/package.json").exists()
    {
        missing.push("tests/browser/node_modules with @uppy/core, @uppy/aws-s3, esbuild (scripts/test-deps)");
    }
    assert!(missing.is_empty(), "missing: {missing:?}");
    let config = r#"
[server]
listen = "127.0.0.1:8000"

[identity]
source = "env"

[sts]
endpoint = "http://127.0.0.1:8000/_local/sts"
role_arn = "acs:ram::1000000000000001:role/ossvend-local"
session_name = "ossvend-local"

[[grants]]
name = "uppy"
bucket = "local-bucket"
region = "cn-hangzhou"
endpoint = "http://127.0.0.1:8001"
prefix = "uppy/"
actions = ["oss:PutObject", "oss:ListParts", "oss:AbortMultipartUpload"]
max_size_bytes = 20971520
multipart = true
"#;
    let ls = LocalServer::start(Some(config), &[]);
    let mut cmd = std::process::Command::new("node");
    cmd.arg(browser_dir.join("uppy.js"))
        .args(["--ossvend", ls.server.base.as_str(), "--grant", "uppy"])
        .current_dir(&browser_dir);
    let r = tokio::task::spawn_blocking(move || run_client(cmd, Duration::from_secs(180)))
        .await
        .unwrap();
    let context = || format!("{}\nlogs:\n{}", r.output, ls.server.logs.text());
    assert!(r.succeeded(), "{}", context());
    let line = r
        .output
        .lines()
        .find_map(|l| l.strip_prefix("UPPY "))
        .unwrap_or_else(|| panic!("{}", context()));
    let result: Value = serde_json::from_str(line).unwrap();
    assert_eq!(
        result["failed"].as_array().map(Vec::len),
        Some(0),
        "{}",
        context()
    );
    for (name, seed, size, ext) in [("small.txt", 1, 1000, ".txt"), ("big.bin", 2, 12 << 20, ".bin")] {
        let file = result["successful"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("{name} not uploaded: {}", context()));
        let key = file["key"].as_str().unwrap();
        assert!(key.starts_with("uppy/") && key.ends_with(ext), "{key}");
        let got = http()
            .get(ls.server.url(&format!("/_local/objects/{BUCKET}/{key}")))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(
            got.as_ref() == pattern(seed, size).as_slice(),
            "{name}: {} bytes at the sink, not the file's",
            got.len()
        );
    }
    // The 12 MiB file went through the session routes: create, 3 part URLs, complete.
    let logs = ls.server.logs.text();
    assert!(logs.contains("/companion/s3/multipart"), "{logs}");
    println!(
        "upload_sessions: @uppy/core + @uppy/aws-s3 6.3.1 in Chromium: 1000 B via /s3/params + 12 MiB multipart, bytes identical at the sink: OK"
    );
}

/// A browser aborts a session with DELETE: the CORS preflight must allow it (it allowed GET and POST only).
#[tokio::test]
async fn cors_preflight_allows_delete_for_aborts() {
    let sts = FakeSts::start();
    let server = Server::start(format!(
        "{}\n[cors]\nallowed_origins = [\"http://app.test\"]\n",
        config(&sts.endpoint)
    ));
    let r = http()
        .request(
            reqwest::Method::OPTIONS,
            server.url("/v1/grants/browser-upload/uploads/handle"),
        )
        .header("Origin", "http://app.test")
        .header("Access-Control-Request-Method", "DELETE")
        .send()
        .await
        .unwrap();
    let methods = r
        .headers()
        .get("access-control-allow-methods")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(methods.contains("DELETE"), "{} {methods:?}", r.status());
}

/// The demo page's "Large file" method (`tests/browser/large.js`) in Chromium against `ossvend local`
/// alone (its embedded config's `large-files` grant): 25 MiB in 5 MiB parts through the native API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_large_file_method_uploads_25_mib_in_chromium() {
    let browser_dir = repo_root().join("tests/browser");
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists()
            && browser_dir
                .join("node_modules/playwright-core/package.json")
                .exists(),
        "missing /usr/bin/chromium or tests/browser/node_modules (scripts/test-deps)"
    );
    let ls = LocalServer::start(None, &[]);
    let mut cmd = std::process::Command::new("node");
    cmd.arg(browser_dir.join("large.js"))
        .args(["--ossvend", ls.server.base.as_str()])
        .current_dir(&browser_dir);
    let r = tokio::task::spawn_blocking(move || run_client(cmd, Duration::from_secs(240)))
        .await
        .unwrap();
    let context = || format!("{}\nlogs:\n{}", r.output, ls.server.logs.text());
    assert!(r.succeeded(), "{}", context());
    let line = r
        .output
        .lines()
        .find_map(|l| l.strip_prefix("LARGE "))
        .unwrap_or_else(|| panic!("{}", context()));
    let runs: Value = serde_json::from_str(line).unwrap();
    assert_eq!(runs[0]["status"], "ok", "{}", context());
    assert_eq!(
        runs[0]["steps"],
        8,
        "open, one parts request, 5 PUTs, complete: {}",
        context()
    );
    let key = runs[0]["key"].as_str().unwrap();
    assert!(key.starts_with("large/") && key.ends_with(".bin"), "{key}");
    // Local mode calls back on completion too: the page shows the verified event.
    assert_eq!(runs[0]["callback"], "json", "{}", context());
    let event: Value = serde_json::from_str(runs[0]["callback_text"].as_str().unwrap()).unwrap();
    assert_eq!(
        (
            event["event"].as_str(),
            event["key"].as_str(),
            event["size"].as_u64()
        ),
        (Some("upload.completed"), Some(key), Some(25 * 1024 * 1024)),
        "{event}"
    );
    let got = http()
        .get(ls.server.url(&format!("/_local/objects/{BUCKET}/{key}")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(
        got.as_ref() == pattern(3, 25 << 20).as_slice(),
        "{} bytes at the sink",
        got.len()
    );
    assert_eq!(
        (runs[1]["status"].as_str(), runs[1]["code"].as_str()),
        (Some("error"), Some("multipart_not_enabled")),
        "{}",
        context()
    );
    let refusals: Value = serde_json::from_str(
        r.output
            .lines()
            .find_map(|l| l.strip_prefix("REFUSALS "))
            .unwrap_or_else(|| panic!("{}", context())),
    )
    .unwrap();
    let expected = serde_json::json!({
        "otherNumber": "403 SignatureDoesNotMatch",
        "otherUpload": "403 SignatureDoesNotMatch",
        "otherKey": "403 SignatureDoesNotMatch",
        "wrongMd5": "400 InvalidDigest",
        "parts": ["200 OK", "200 OK", "200 OK"],
        "complete": "422 upload_parts_invalid",
        "abortAfter": "404 NoSuchUpload",
    });
    assert_eq!(refusals, expected, "{}", context());
    let listing = http()
        .get(ls.server.url("/_local/objects?format=json"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(
        listing["objects"].as_array().map(Vec::len),
        Some(1),
        "only the 25 MiB file is stored: {listing}"
    );
    println!(
        "upload_sessions: demo page 'Large file' in Chromium: 25 MiB in 5 parts, bytes identical; from the page: \
         3 rebound part URLs + a wrong md5 refused by the sink, a wrong part size refused at completion and aborted: OK"
    );
}
