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

mod common;

use std::time::Duration;

use common::*;
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
