//! STS hanging, failing and throttling, against the real binary and the fake
//! STS (issue 13 items 2 and 3): the number of AssumeRole calls stays bounded,
//! errors say when to come back, recovery costs one call, and `/readyz` tells
//! the outage without draining the fleet.

use std::time::Duration;

use crate::support::*;
use serde_json::{Value, json};

const MAX_RETRIES: usize = 2;

/// Small deadlines with the proportions of the figures (`sts.timeout`
/// 10 s, `server.request_timeout` 15 s): a request gives up during the call's
/// second attempt.
fn hanging_options(sts: &StsStub) -> ServerOptions<'static> {
    ServerOptions::new(config(&sts.endpoint))
        .env("OSSVEND_STS_TIMEOUT", "1s")
        .env("OSSVEND_SERVER_REQUEST_TIMEOUT", "1500ms")
}

/// `n` concurrent GETs of `url`; their statuses.
async fn burst(client: &reqwest::Client, url: &str, n: usize) -> Vec<u16> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (client, url) = (client.clone(), url.to_string());
            tokio::spawn(async move { client.get(url).send().await.unwrap().status().as_u16() })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Seconds of the `Retry-After` header, which every 503 from STS trouble carries.
fn retry_after(r: &reqwest::Response) -> u64 {
    let v = r
        .headers()
        .get("retry-after")
        .unwrap_or_else(|| panic!("{} without Retry-After: {:?}", r.status(), r.headers()));
    v.to_str().unwrap().parse().expect("Retry-After in seconds")
}

#[tokio::test]
async fn hanging_sts_costs_one_call_chain_for_100_and_200_concurrent_cold_requests() {
    let _turn = serial().await;
    for n in [100, 200] {
        let sts = StsStub::start();
        sts.mode(json!({ "delay_ms": 20_000 })).await; // far beyond sts.timeout
        let server = Server::start_with(hanging_options(&sts));
        let client = http();
        let url = server.url("/v1/grants/browser-upload/credentials");

        // A first wave gives up during the call's second attempt; a second wave
        // arrives while that call is still retrying.
        let first = burst(&client, &url, n).await;
        let second = burst(&client, &url, n).await;
        for s in first.iter().chain(&second) {
            assert!(*s == 504 || *s == 503, "status {s}");
        }
        // The call chain ends after its last attempt times out (about 3 s).
        server
            .logs
            .wait_for(&format!("attempt={MAX_RETRIES}"), Duration::from_secs(15))
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let calls = sts.call_count().await;
        println!("hanging STS, 2 waves of {n} concurrent cold requests -> {calls} AssumeRole call(s)");
        assert!(
            calls <= 1 + MAX_RETRIES,
            "{n} requests: {calls} calls\n{}",
            server.logs.text()
        );
    }
}

#[tokio::test]
async fn an_sts_outage_costs_a_handful_of_calls_and_recovery_one() {
    let _turn = serial().await;
    let sts = StsStub::start();
    sts.mode(json!({ "status": 500 })).await;
    let server = Server::start(config(&sts.endpoint));
    let client = http();
    let url = server.url("/v1/grants/browser-upload/credentials");

    let mut last_retry_after = 0;
    for _ in 0..36 {
        let r = client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 503);
        last_retry_after = retry_after(&r);
        assert!((1..=30).contains(&last_retry_after), "{last_retry_after}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "sts_unavailable");
        assert_eq!(body["sts_code"], "InternalError");
    }
    let outage = sts.call_count().await;
    println!("36 sequential requests during a 500 outage -> {outage} AssumeRole call(s)");
    assert!(outage <= 2 * (1 + MAX_RETRIES), "{outage} calls");

    // STS is back: after the announced wait, one call serves everyone again.
    sts.mode(json!({})).await;
    tokio::time::sleep(Duration::from_secs(last_retry_after)).await;
    for _ in 0..5 {
        assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    }
    let recovery = sts.call_count().await - outage;
    println!("recovery -> {recovery} AssumeRole call(s)");
    assert_eq!(recovery, 1);
}

#[tokio::test]
async fn throttling_backs_the_whole_client_off() {
    let _turn = serial().await;
    let sts = StsStub::start();
    sts.mode(json!({ "error": "Throttling.User" })).await;
    let server = Server::start(config(&sts.endpoint));
    let client = http();
    let grants = ["browser-upload", "avatars"];

    for i in 0..36 {
        let url = server.url(&format!("/v1/grants/{}/credentials", grants[i % 2]));
        let r = client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 503);
        assert!((1..=30).contains(&retry_after(&r)));
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "sts_throttled");
        assert_eq!(body["sts_code"], "Throttling.User");
    }
    let calls = sts.call_count().await;
    println!("36 sequential requests on two grants while throttled -> {calls} AssumeRole call(s)");
    assert!(calls <= 2 * (1 + MAX_RETRIES), "{calls} calls");
}

#[tokio::test]
async fn readyz_stays_ready_but_tells_a_failing_sts_while_cached_credentials_are_served() {
    let _turn = serial().await;
    let sts = StsStub::start();
    let server = Server::start(config(&sts.endpoint));
    let client = http();
    let cached = server.url("/v1/grants/browser-upload/credentials");
    let cold = server.url("/v1/grants/avatars/credentials");
    let readyz = || async {
        let r = client.get(server.url("/readyz")).send().await.unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };

    assert_eq!(client.get(&cached).send().await.unwrap().status(), 200);
    let (status, body) = readyz().await;
    assert_eq!(status, 200);
    assert_eq!(body["sts_health"]["status"], "ok", "{body}");

    sts.mode(json!({ "status": 500 })).await;
    let r = client.get(&cold).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let wait = retry_after(&r);
    let (status, body) = readyz().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["sts"], "cached credential valid");
    let health = &body["sts_health"];
    assert_eq!(health["status"], "failing", "{body}");
    assert_eq!(health["last_error"], "sts_unavailable", "{body}");
    assert_eq!(health["sts_code"], "InternalError", "{body}");
    let since = health["since"].as_str().unwrap();
    assert!(
        chrono::NaiveDateTime::parse_from_str(since, "%Y-%m-%dT%H:%M:%SZ").is_ok(),
        "{since}"
    );
    // The cached credential is still served meanwhile.
    assert_eq!(client.get(&cached).send().await.unwrap().status(), 200);

    sts.mode(json!({})).await;
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(client.get(&cold).send().await.unwrap().status(), 200);
    let (status, body) = readyz().await;
    assert_eq!(status, 200);
    assert_eq!(body["sts_health"]["status"], "ok", "{body}");
    assert!(body["sts_health"].get("since").is_none(), "{body}");
}
