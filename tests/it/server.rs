//! The credential routes against the in-process STS (`StsStub`: the embedded STS
//! emulator, which checks signatures, with the fake's knobs), through the real
//! router in this process (`TestApp`); the real binary where a process matters
//! (SIGTERM, the log output, the `credential-process` client).

use std::time::Duration;

use axum::body::Body;
use serde_json::{Value, json};

use crate::support::*;

fn is_sts_time(s: &str) -> bool {
    // YYYY-MM-DDThh:mm:ssZ, no fractional seconds (strict clients reject them).
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%SZ").is_ok() && s.len() == 20
}

#[tokio::test]
async fn legacy_path_returns_narrowed_credentials_and_caches_them() {
    let sts = StsStub::start();
    let app = TestApp::new(&config(&sts.endpoint)).await;

    let r = app.get("/get_sts_token_for_oss_upload").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["cache-control"], "no-store");
    assert!(!r.headers["x-request-id"].is_empty());
    let body: Value = r.json();
    assert_eq!(body["StatusCode"], 200);
    assert_eq!(body["Code"], "Success");
    assert!(body["AccessKeyId"].as_str().unwrap().starts_with("STS."));
    assert!(body["SecurityToken"].as_str().unwrap().len() > 1000);
    assert!(!body["AccessKeySecret"].as_str().unwrap().is_empty());
    assert!(
        is_sts_time(body["Expiration"].as_str().unwrap()),
        "{}",
        body["Expiration"]
    );
    assert!(is_sts_time(body["RefreshAfter"].as_str().unwrap()));
    assert_eq!(body["Bucket"], "examplebucket");
    assert_eq!(body["Region"], "oss-cn-hangzhou");
    assert_eq!(body["OssEndpoint"], "https://oss-cn-hangzhou.aliyuncs.com");
    assert_eq!(body["Prefix"], "uploads/");

    // What reached STS: a verified, narrowed AssumeRole.
    let calls = sts.calls().await;
    assert_eq!(calls.len(), 1);
    let c = &calls[0];
    assert_eq!(c["verified"], true);
    assert_eq!(c["outcome"], "OK");
    assert_eq!(c["method"], "POST");
    let p = &c["params"];
    assert_eq!(p["RoleArn"], ROLE_ARN);
    assert_eq!(p["RoleSessionName"], "ossvend");
    assert_eq!(p["DurationSeconds"], "3600");
    assert_eq!(
        p["Policy"],
        r#"{"Version":"1","Statement":[{"Effect":"Allow","Action":["oss:PutObject"],"Resource":["acs:oss:*:*:examplebucket/uploads/*"]}]}"#
    );
    assert_eq!(c["access_key_id_issued"], body["AccessKeyId"]);

    // The same grant again: served from cache, same credential, no new call.
    let again = app.get("/v1/grants/browser-upload/credentials").await.json();
    assert_eq!(again["AccessKeyId"], body["AccessKeyId"]);
    assert_eq!(sts.call_count().await, 1);

    // Another grant: its own policy, duration and session name, its own credential.
    let other = app.get("/v1/grants/avatars/credentials").await.json();
    assert_ne!(other["AccessKeyId"], body["AccessKeyId"]);
    assert_eq!(other["Prefix"], "avatars/");
    let calls = sts.calls().await;
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1]["params"]["DurationSeconds"], "7200");
    assert_eq!(calls[1]["params"]["RoleSessionName"], "avatars-session");
    assert!(
        calls[1]["params"]["Policy"]
            .as_str()
            .unwrap()
            .contains("examplebucket/avatars/*")
    );
    assert!(
        app.logs.wait_for("cache=\"miss\"", Duration::from_secs(5)).await,
        "{}",
        app.logs.text()
    );
}

#[tokio::test]
async fn five_hundred_concurrent_cold_requests_cost_one_sts_call() {
    let sts = StsStub::start();
    // Slow STS so that all requests really arrive while the first call is in flight.
    sts.mode(json!({ "delay_ms": 300 })).await;
    let app = TestApp::new(&config(&sts.endpoint)).await;
    let tasks: Vec<_> = (0..500)
        .map(|_| {
            let client = app.client();
            tokio::spawn(async move {
                let r = client.get("/v1/grants/browser-upload/credentials").await;
                assert_eq!(r.status, 200);
                r.json()["AccessKeyId"].as_str().unwrap().to_string()
            })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        ids.insert(t.await.unwrap());
    }
    let calls = sts.call_count().await;
    println!("500 concurrent cold requests -> {calls} AssumeRole call(s)");
    assert_eq!(calls, 1);
    assert_eq!(ids.len(), 1);
}

#[tokio::test]
async fn refreshes_ahead_of_expiry_in_the_background() {
    let sts = StsStub::start();
    // The first credential lives 100 s: above min_remaining (60 s) but already
    // inside refresh_before (120 s), so the next request triggers a refresh.
    sts.script(json!([{ "expires_in": 100 }])).await;
    let app = TestApp::with_env(
        &config(&sts.endpoint),
        &[
            ("OSSVEND_STS_MIN_REMAINING", "60s"),
            ("OSSVEND_STS_REFRESH_BEFORE", "120s"),
        ],
    )
    .await
    .unwrap();
    let get = || async { app.get("/v1/grants/browser-upload/credentials").await.json() };

    let first = get().await;
    let second = get().await; // served the still-valid one, refresh started
    assert_eq!(second["AccessKeyId"], first["AccessKeyId"]);
    assert_eq!(sts.wait_calls(2, Duration::from_secs(10)).await, 2);
    let mut third = get().await;
    for _ in 0..100 {
        if third["AccessKeyId"] != first["AccessKeyId"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        third = get().await;
    }
    assert_ne!(
        third["AccessKeyId"], first["AccessKeyId"],
        "refreshed credential is served"
    );
    assert_eq!(sts.call_count().await, 2, "exactly one background refresh");
}

#[tokio::test]
async fn stale_if_error_then_503_when_nothing_valid_is_left() {
    let sts = StsStub::start();
    // 63 s of life with min_remaining 60 s: valid for ~3 s, inside the refresh window.
    sts.script(json!([{ "expires_in": 63 }])).await;
    let app = TestApp::with_env(
        &config(&sts.endpoint),
        &[
            ("OSSVEND_STS_MIN_REMAINING", "60s"),
            ("OSSVEND_STS_REFRESH_BEFORE", "120s"),
            ("OSSVEND_STS_MAX_RETRIES", "0"),
        ],
    )
    .await
    .unwrap();
    let url = "/v1/grants/browser-upload/credentials";

    let first = app.get(url).await.json();
    sts.mode(json!({ "error": "ServiceUnavailable" })).await;
    // STS is down; the cached credential is still valid, so it keeps being served.
    let r = app.get(url).await;
    assert_eq!(r.status, 200);
    assert!(
        app.logs
            .wait_for("background refresh failed", Duration::from_secs(10))
            .await,
        "{}",
        app.logs.text()
    );
    let stale = app.get(url).await.json();
    assert_eq!(stale["AccessKeyId"], first["AccessKeyId"]);
    // The audit line is written as the response goes out.
    assert!(
        app.logs.wait_for("cache=\"stale\"", Duration::from_secs(5)).await,
        "{}",
        app.logs.text()
    );

    // Once less than min_remaining is left, nothing valid remains: 503.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let r = app.get(url).await;
    assert_eq!(r.status, 503);
    let header_id = r.header("x-request-id").to_string();
    let retry_after: u64 = r.header("retry-after").parse().unwrap();
    let body = r.json();
    assert_eq!(body["code"], "sts_unavailable");
    assert_eq!(body["sts_code"], "ServiceUnavailable");
    assert_eq!(body["request_id"], header_id.as_str());
    assert_eq!(body["StatusCode"], 503);
    assert_eq!(body["ErrorCode"], "sts_unavailable");

    // STS back: served again without a restart, once the announced back-off is over.
    sts.mode(json!({})).await;
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(app.get(url).await.status, 200);
}

#[tokio::test]
async fn throttling_is_retried_then_surfaced() {
    let sts = StsStub::start();
    let app = TestApp::new(&config(&sts.endpoint)).await;

    // Throttled once, then fine: the caller never notices.
    sts.script(json!([{ "error": "Throttling.User" }])).await;
    let r = app.get("/v1/grants/browser-upload/credentials").await;
    assert_eq!(r.status, 200);
    let calls = sts.calls().await;
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["outcome"], "Throttling.User");
    // A retry is signed anew: fresh nonce.
    assert_ne!(
        calls[0]["params"]["SignatureNonce"],
        calls[1]["params"]["SignatureNonce"]
    );

    // Throttled on every attempt: 1 + max_retries (2) calls, then 503 sts_throttled.
    sts.mode(json!({ "error": "Throttling.User" })).await;
    let r = app.get("/v1/grants/avatars/credentials").await;
    assert_eq!(r.status, 503);
    let body = r.json();
    assert_eq!(body["code"], "sts_throttled");
    assert_eq!(sts.call_count().await, 2 + 3);
}

#[tokio::test]
async fn sts_errors_map_to_stable_codes_and_permanent_ones_are_not_retried() {
    let sts = StsStub::start();
    let app = TestApp::new(&config(&sts.endpoint)).await;
    let cases = [
        (
            json!({ "error": "NoPermission" }),
            502,
            "sts_denied",
            "NoPermission",
            1,
        ),
        (
            json!({ "error": "EntityNotExist.Role" }),
            502,
            "sts_denied",
            "EntityNotExist.Role",
            1,
        ),
        (
            json!({ "error": "InvalidParameter.DurationSeconds" }),
            502,
            "sts_rejected_request",
            "InvalidParameter.DurationSeconds",
            1,
        ),
        (
            json!({ "status": 500 }),
            503,
            "sts_unavailable",
            "InternalError",
            3,
        ),
    ];
    let mut retry_after = None;
    for (behaviour, status, code, sts_code, calls) in cases {
        let before = sts.call_count().await;
        sts.mode(behaviour.clone()).await;
        let r = app.get("/get_sts_token_for_oss_upload").await;
        assert_eq!(r.status, status, "{behaviour}");
        // Only STS trouble (503) says when to come back.
        retry_after = r
            .headers
            .get("retry-after")
            .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
        assert_eq!(retry_after.is_some(), status == 503, "{behaviour}");
        let body = r.json();
        assert_eq!(body["code"], code, "{behaviour}");
        assert_eq!(body["sts_code"], sts_code, "{behaviour}");
        assert!(body["sts_request_id"].is_string());
        assert_eq!(sts.call_count().await - before, calls, "{behaviour}: calls");
        // Permanent errors are not cached: the next request asks STS again.
    }
    // After STS trouble, the grant backs off for the announced time, then asks again.
    sts.mode(json!({})).await;
    tokio::time::sleep(Duration::from_secs(retry_after.unwrap())).await;
    assert_eq!(app.get("/get_sts_token_for_oss_upload").await.status, 200);
}

#[tokio::test]
async fn malformed_sts_response_is_503_not_a_panic() {
    let sts = StsStub::start();
    let app = TestApp::with_env(&config(&sts.endpoint), &[("OSSVEND_STS_MAX_RETRIES", "0")])
        .await
        .unwrap();
    sts.script(json!([{ "raw": "<html>not json</html>" }])).await;
    let r = app.get("/get_sts_token_for_oss_upload").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["code"], "sts_unavailable");
}

#[tokio::test]
async fn unknown_grant_routes_and_methods_get_json_errors() {
    let sts = StsStub::start();
    let app = TestApp::new(&config(&sts.endpoint)).await;

    let r = app.get("/v1/grants/nope/credentials").await;
    assert_eq!(r.status, 404);
    let id = r.header("x-request-id").to_string();
    let body = r.json();
    assert_eq!(body["code"], "unknown_grant");
    assert_eq!(body["request_id"], id.as_str());
    assert_eq!(body["ErrorCode"], "unknown_grant");

    let r = app.get("/no/such/path").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["code"], "not_found");

    let r = app
        .request("POST", "/get_sts_token_for_oss_upload", &[], Body::empty())
        .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.json()["code"], "method_not_allowed");

    let big = Body::from(vec![b'x'; 200_000]);
    let r = app
        .request(
            "POST",
            "/get_sts_token_for_oss_upload",
            &[("content-length", "200000")],
            big,
        )
        .await;
    assert!(r.status == 413 || r.status == 405, "{}", r.status);

    // A caller's request id is kept when it is a safe token, replaced otherwise.
    let r = app
        .get_with("/healthz", &[("x-request-id", "trace-abc.123")])
        .await;
    assert_eq!(r.headers["x-request-id"], "trace-abc.123");
    // Not a valid header value for the builder: sent as raw bytes.
    let mut req = axum::http::Request::get("/healthz").body(Body::empty()).unwrap();
    req.headers_mut().insert(
        "x-request-id",
        axum::http::HeaderValue::from_bytes(b"bad id\twith spaces").unwrap(),
    );
    let r = app.send(req).await;
    assert_ne!(r.headers["x-request-id"], "bad id\twith spaces");
    assert_eq!(sts.call_count().await, 0);
}

#[tokio::test]
async fn health_and_readiness() {
    let mut sts = StsStub::start();
    let app = TestApp::new(&config(&sts.endpoint)).await;
    assert_eq!(app.get("/healthz").await.status, 200);
    let r = app.get("/readyz").await;
    assert_eq!(r.status, 200);
    let body = r.json();
    assert_eq!(body["sts"], "reachable");
    assert_eq!(body["identity"]["source"], "env");

    // STS gone and nothing cached: not ready (but still alive).
    sts.kill();
    let r = app.get("/readyz").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["status"], "unready");
    assert_eq!(app.get("/healthz").await.status, 200);
}

#[tokio::test]
async fn ready_with_a_cached_credential_while_sts_is_down() {
    let mut sts = StsStub::start();
    let app = TestApp::new(&config(&sts.endpoint)).await;
    assert_eq!(app.get("/get_sts_token_for_oss_upload").await.status, 200);
    sts.kill();
    let r = app.get("/readyz").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["sts"], "cached credential valid");
}

#[tokio::test]
async fn sigterm_shuts_down_gracefully() {
    let sts = StsStub::start();
    let mut server = Server::start(config(&sts.endpoint));
    assert_eq!(
        http().get(server.url("/healthz")).send().await.unwrap().status(),
        200
    );
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    assert!(server.logs.text().contains("SIGTERM received"));
    assert!(server.logs.text().contains("ossvend stopped"));
}

/// Runs a busy session with debug logging in both formats and checks that no
/// secret of any kind appears anywhere in the output.
#[tokio::test]
async fn no_secret_ever_appears_in_the_logs() {
    for format in ["json", "text"] {
        let sts = StsStub::start();
        let server = Server::start_with(
            ServerOptions::new(config(&sts.endpoint))
                .env("OSSVEND_SERVER_LOG_FORMAT", format)
                .env("RUST_LOG", "debug")
                .env("OSSVEND_STS_MIN_REMAINING", "60s")
                .env("OSSVEND_STS_REFRESH_BEFORE", "120s"),
        );
        let client = http();
        let mut secrets = vec![CALLER_SECRET.to_string()];
        // A refresh, an error and a stale serve, so every log path runs.
        sts.script(json!([{ "expires_in": 100 }, { "error": "SignatureDoesNotMatch" }]))
            .await;
        for path in [
            "/get_sts_token_for_oss_upload",
            "/get_sts_token_for_oss_upload",
            "/v1/grants/avatars/credentials",
        ] {
            let r = client.get(server.url(path)).send().await.unwrap();
            let body: Value = r.json().await.unwrap();
            if let Some(s) = body["AccessKeySecret"].as_str() {
                secrets.push(s.to_string());
                secrets.push(body["SecurityToken"].as_str().unwrap().to_string());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sts.wait_calls(3, Duration::from_secs(5)).await;
        server
            .logs
            .wait_for("issued credentials", Duration::from_secs(5))
            .await;
        let logs = server.logs.text();
        assert!(logs.contains("issued credentials"), "{format} logs:\n{logs}");
        assert!(
            logs.contains("STS says the AssumeRole signature does not match")
                || logs.contains("AssumeRole failed")
        );
        assert!(secrets.len() >= 3);
        for s in &secrets {
            assert!(
                !logs.contains(s.as_str()),
                "{format}: a secret leaked into the logs"
            );
            // A prefix long enough to be meaningful must not leak either.
            assert!(
                !logs.contains(&s[..s.len().min(16)]),
                "{format}: part of a secret leaked"
            );
        }
        // Issued key ids appear only as prefixes.
        let issued: Vec<Value> = sts
            .calls()
            .await
            .into_iter()
            .filter(|c| c["access_key_id_issued"].is_string())
            .collect();
        for c in issued {
            assert!(
                !logs.contains(c["access_key_id_issued"].as_str().unwrap()),
                "{format}: full issued AccessKeyId logged"
            );
        }
        if format == "json" {
            for line in logs.lines() {
                let v: Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
                assert!(v["level"].is_string());
            }
        }
    }
}

/// With a budget of 1 call/s, a second cold grant waits for a token, while a
/// cache hit issued during that wait is answered before the second STS call.
#[tokio::test]
async fn sts_budget_spaces_calls_and_never_delays_hits() {
    let sts = StsStub::start();
    let app = TestApp::with_env(
        &config(&sts.endpoint),
        &[("OSSVEND_STS_MAX_CALLS_PER_SECOND", "1")],
    )
    .await
    .unwrap();
    let warm = "/v1/grants/browser-upload/credentials";
    assert_eq!(app.get(warm).await.status, 200);

    let cold = {
        let client = app.client();
        tokio::spawn(async move { client.get("/v1/grants/avatars/credentials").await.status })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(app.get(warm).await.status, 200);
    let hit_done = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert_eq!(cold.await.unwrap(), 200);

    let calls = sts.calls().await;
    assert_eq!(calls.len(), 2);
    let (t1, t2) = (
        calls[0]["time"].as_f64().unwrap(),
        calls[1]["time"].as_f64().unwrap(),
    );
    assert!(
        t2 - t1 >= 0.8,
        "second STS call came {:.3}s after the first; the budget allows 1/s",
        t2 - t1
    );
    assert!(hit_done < t2, "the cache hit waited for the STS budget");
}

/// One credential, each client family's spelling; an unknown format is a 400.
#[tokio::test]
async fn credential_formats() {
    let sts = StsStub::start();
    let app = TestApp::new(&config(&sts.endpoint)).await;
    let app = &app;
    let get = |f: &str| {
        let path = format!("/v1/grants/browser-upload/credentials?format={f}");
        async move { app.get(&path).await }
    };
    let default = get("default").await.json();
    let (ak, secret, token, exp) = (
        &default["AccessKeyId"],
        &default["AccessKeySecret"],
        &default["SecurityToken"],
        &default["Expiration"],
    );

    let aws = get("aws").await.json();
    assert_eq!(
        aws,
        json!({ "AccessKeyId": ak, "SecretAccessKey": secret, "Token": token, "Expiration": exp })
    );
    let camel = get("camel").await.json();
    assert_eq!(
        camel,
        json!({ "accessKeyId": ak, "secretAccessKey": secret, "securityToken": token, "expiration": exp })
    );
    let r = get("credential-process").await;
    assert_eq!(r.headers["cache-control"], "no-store");
    let process = r.json();
    assert_eq!(
        process,
        json!({ "Version": 1, "AccessKeyId": ak, "SecretAccessKey": secret, "SessionToken": token, "Expiration": exp })
    );
    let r = get("bogus").await;
    assert_eq!(r.status, 400);
    let body = r.json();
    assert_eq!(body["code"], "unknown_format");
    assert!(body["message"].as_str().unwrap().contains("credential-process"));
    assert_eq!(sts.call_count().await, 1, "one credential behind every format");
}

/// `ossvend credential-process` prints what AWS's credential_process wants, and
/// fails with one line on stderr when ossvend refuses.
#[tokio::test]
async fn credential_process_client_mode() {
    let sts = StsStub::start();
    let server = Server::start(config(&sts.endpoint));
    // A `format` already in the URL is replaced, not appended after (the server takes the first).
    let url = server.url("/v1/grants/browser-upload/credentials?format=aws&x=1");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_ossvend"))
            .args(["credential-process", "--url", &url])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["Version"], 1);
    assert!(v["SessionToken"].as_str().unwrap().starts_with("CAIS"));

    let bad = server.url("/v1/grants/nope/credentials");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_ossvend"))
            .args(["credential-process", "--url", &bad])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("404 Not Found unknown_grant"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
}
