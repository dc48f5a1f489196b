//! The real `ossvend serve` binary against the signature-checking fake STS.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn is_sts_time(s: &str) -> bool {
    // YYYY-MM-DDThh:mm:ssZ, no fractional seconds (strict clients reject them).
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%SZ").is_ok() && s.len() == 20
}

#[tokio::test]
async fn legacy_path_returns_narrowed_credentials_and_caches_them() {
    let sts = FakeSts::start();
    let server = Server::start(config(&sts.endpoint));
    let client = http();

    let r = client
        .get(server.url("/get_sts_token_for_oss_upload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert!(!r.headers()["x-request-id"].is_empty());
    let body: Value = r.json().await.unwrap();
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
    let again: Value = client
        .get(server.url("/v1/grants/browser-upload/credentials"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["AccessKeyId"], body["AccessKeyId"]);
    assert_eq!(sts.call_count().await, 1);

    // Another grant: its own policy, duration and session name, its own credential.
    let other: Value = client
        .get(server.url("/v1/grants/avatars/credentials"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
        server
            .logs
            .wait_for("cache=\"miss\"", Duration::from_secs(5))
            .await,
        "{}",
        server.logs.text()
    );
}

#[tokio::test]
async fn five_hundred_concurrent_cold_requests_cost_one_sts_call() {
    let sts = FakeSts::start();
    // Slow STS so that all requests really arrive while the first call is in flight.
    sts.mode(json!({ "delay_ms": 300 })).await;
    let server = Server::start(config(&sts.endpoint));
    let client = http();
    let url = server.url("/v1/grants/browser-upload/credentials");
    let tasks: Vec<_> = (0..500)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let r = client.get(url).send().await.unwrap();
                assert_eq!(r.status(), 200);
                r.json::<Value>().await.unwrap()["AccessKeyId"]
                    .as_str()
                    .unwrap()
                    .to_string()
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
    let sts = FakeSts::start();
    // The first credential lives 100 s: above min_remaining (60 s) but already
    // inside refresh_before (120 s), so the next request triggers a refresh.
    sts.script(json!([{ "expires_in": 100 }])).await;
    let server = Server::start_with(
        ServerOptions::new(config(&sts.endpoint))
            .env("OSSVEND_STS_MIN_REMAINING", "60s")
            .env("OSSVEND_STS_REFRESH_BEFORE", "120s"),
    );
    let client = http();
    let url = server.url("/v1/grants/browser-upload/credentials");
    let get = || async {
        client
            .get(&url)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };

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
    let sts = FakeSts::start();
    // 63 s of life with min_remaining 60 s: valid for ~3 s, inside the refresh window.
    sts.script(json!([{ "expires_in": 63 }])).await;
    let server = Server::start_with(
        ServerOptions::new(config(&sts.endpoint))
            .env("OSSVEND_STS_MIN_REMAINING", "60s")
            .env("OSSVEND_STS_REFRESH_BEFORE", "120s")
            .env("OSSVEND_STS_MAX_RETRIES", "0"),
    );
    let client = http();
    let url = server.url("/v1/grants/browser-upload/credentials");

    let first: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
    sts.mode(json!({ "error": "ServiceUnavailable" })).await;
    // STS is down; the cached credential is still valid, so it keeps being served.
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        server
            .logs
            .wait_for("background refresh failed", Duration::from_secs(10))
            .await,
        "{}",
        server.logs.text()
    );
    let stale: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(stale["AccessKeyId"], first["AccessKeyId"]);
    // The audit line is written as the response goes out; stderr is read by another thread.
    assert!(
        server
            .logs
            .wait_for("cache=\"stale\"", Duration::from_secs(5))
            .await,
        "{}",
        server.logs.text()
    );

    // Once less than min_remaining is left, nothing valid remains: 503.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let header_id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let retry_after: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "sts_unavailable");
    assert_eq!(body["sts_code"], "ServiceUnavailable");
    assert_eq!(body["request_id"], header_id.as_str());
    assert_eq!(body["StatusCode"], 503);
    assert_eq!(body["ErrorCode"], "sts_unavailable");

    // STS back: served again without a restart, once the announced back-off is over.
    sts.mode(json!({})).await;
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn throttling_is_retried_then_surfaced() {
    let sts = FakeSts::start();
    let server = Server::start(config(&sts.endpoint));
    let client = http();

    // Throttled once, then fine: the caller never notices.
    sts.script(json!([{ "error": "Throttling.User" }])).await;
    let r = client
        .get(server.url("/v1/grants/browser-upload/credentials"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
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
    let r = client
        .get(server.url("/v1/grants/avatars/credentials"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "sts_throttled");
    assert_eq!(sts.call_count().await, 2 + 3);
}

#[tokio::test]
async fn sts_errors_map_to_stable_codes_and_permanent_ones_are_not_retried() {
    let sts = FakeSts::start();
    let server = Server::start(config(&sts.endpoint));
    let client = http();
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
        let r = client
            .get(server.url("/get_sts_token_for_oss_upload"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{behaviour}");
        // Only STS trouble (503) says when to come back.
        retry_after = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
        assert_eq!(retry_after.is_some(), status == 503, "{behaviour}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], code, "{behaviour}");
        assert_eq!(body["sts_code"], sts_code, "{behaviour}");
        assert!(body["sts_request_id"].is_string());
        assert_eq!(sts.call_count().await - before, calls, "{behaviour}: calls");
        // Permanent errors are not cached: the next request asks STS again.
    }
    // After STS trouble, the grant backs off for the announced time, then asks again.
    sts.mode(json!({})).await;
    tokio::time::sleep(Duration::from_secs(retry_after.unwrap())).await;
    let r = client
        .get(server.url("/get_sts_token_for_oss_upload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn malformed_sts_response_is_503_not_a_panic() {
    let sts = FakeSts::start();
    let server =
        Server::start_with(ServerOptions::new(config(&sts.endpoint)).env("OSSVEND_STS_MAX_RETRIES", "0"));
    sts.script(json!([{ "raw": "<html>not json</html>" }])).await;
    let r = http()
        .get(server.url("/get_sts_token_for_oss_upload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "sts_unavailable");
}

#[tokio::test]
async fn unknown_grant_routes_and_methods_get_json_errors() {
    let sts = FakeSts::start();
    let server = Server::start(config(&sts.endpoint));
    let client = http();

    let r = client
        .get(server.url("/v1/grants/nope/credentials"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "unknown_grant");
    assert_eq!(body["request_id"], id.as_str());
    assert_eq!(body["ErrorCode"], "unknown_grant");

    let r = client.get(server.url("/no/such/path")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "not_found");

    let r = client
        .post(server.url("/get_sts_token_for_oss_upload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "method_not_allowed");

    let r = client
        .post(server.url("/get_sts_token_for_oss_upload"))
        .body(vec![b'x'; 200_000])
        .send()
        .await
        .unwrap();
    assert!(r.status() == 413 || r.status() == 405, "{}", r.status());

    // A caller's request id is kept when it is a safe token, replaced otherwise.
    let r = client
        .get(server.url("/healthz"))
        .header("x-request-id", "trace-abc.123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-abc.123");
    let r = client
        .get(server.url("/healthz"))
        .header("x-request-id", "bad id\twith spaces")
        .send()
        .await
        .unwrap();
    assert_ne!(r.headers()["x-request-id"], "bad id\twith spaces");
    assert_eq!(sts.call_count().await, 0);
}

#[tokio::test]
async fn health_and_readiness() {
    let mut sts = FakeSts::start();
    let server = Server::start(config(&sts.endpoint));
    let client = http();
    let r = client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["sts"], "reachable");
    assert_eq!(body["identity"]["source"], "env");

    // STS gone and nothing cached: not ready (but still alive).
    sts.kill();
    let r = client.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "unready");
    assert_eq!(
        client.get(server.url("/healthz")).send().await.unwrap().status(),
        200
    );
}

#[tokio::test]
async fn ready_with_a_cached_credential_while_sts_is_down() {
    let mut sts = FakeSts::start();
    let server = Server::start(config(&sts.endpoint));
    let client = http();
    assert_eq!(
        client
            .get(server.url("/get_sts_token_for_oss_upload"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    sts.kill();
    let r = client.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["sts"], "cached credential valid");
}

#[tokio::test]
async fn sigterm_shuts_down_gracefully() {
    let sts = FakeSts::start();
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
        let sts = FakeSts::start();
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
    let sts = FakeSts::start();
    let server = Server::start_with(
        ServerOptions::new(config(&sts.endpoint)).env("OSSVEND_STS_MAX_CALLS_PER_SECOND", "1"),
    );
    let client = http();
    let warm = server.url("/v1/grants/browser-upload/credentials");
    assert_eq!(client.get(&warm).send().await.unwrap().status(), 200);

    let cold = {
        let (client, url) = (client.clone(), server.url("/v1/grants/avatars/credentials"));
        tokio::spawn(async move { client.get(url).send().await.unwrap().status() })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(client.get(&warm).send().await.unwrap().status(), 200);
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
    let sts = FakeSts::start();
    let server = Server::start(config(&sts.endpoint));
    let client = http();
    let get = |f: &str| {
        client
            .get(server.url(&format!("/v1/grants/browser-upload/credentials?format={f}")))
            .send()
    };
    let default: Value = get("default").await.unwrap().json().await.unwrap();
    let (ak, secret, token, exp) = (
        &default["AccessKeyId"],
        &default["AccessKeySecret"],
        &default["SecurityToken"],
        &default["Expiration"],
    );

    let aws: Value = get("aws").await.unwrap().json().await.unwrap();
    assert_eq!(
        aws,
        json!({ "AccessKeyId": ak, "SecretAccessKey": secret, "Token": token, "Expiration": exp })
    );
    let camel: Value = get("camel").await.unwrap().json().await.unwrap();
    assert_eq!(
        camel,
        json!({ "accessKeyId": ak, "secretAccessKey": secret, "securityToken": token, "expiration": exp })
    );
    let r = get("credential-process").await.unwrap();
    assert_eq!(r.headers()["cache-control"], "no-store");
    let process: Value = r.json().await.unwrap();
    assert_eq!(
        process,
        json!({ "Version": 1, "AccessKeyId": ak, "SecretAccessKey": secret, "SessionToken": token, "Expiration": exp })
    );
    let r = get("bogus").await.unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "unknown_format");
    assert!(body["message"].as_str().unwrap().contains("credential-process"));
    assert_eq!(sts.call_count().await, 1, "one credential behind every format");
}

/// `ossvend credential-process` prints what AWS's credential_process wants, and
/// fails with one line on stderr when ossvend refuses.
#[tokio::test]
async fn credential_process_client_mode() {
    let sts = FakeSts::start();
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
