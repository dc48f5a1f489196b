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
