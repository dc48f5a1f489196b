//! Production operations (issue 8): Prometheus metrics, the admin listener,
//! hot reload (SIGHUP and `POST /admin/reload`) under load, request ids and
//! `RUST_LOG` filtering. Every test runs the real binary against the fake STS.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::*;
use serde_json::{Value, json};

const API_KEY: &str = "ovk_opsTestKeyDoNotUse0001";
const SUBJECT: &str = "backend-svc-7";
const ADMIN_TOKEN: &str = "adm_opsTestTokenDoNotUse0001";

// ---------------------------------------------------------------------------
// A tiny Prometheus text-format parser: `name{label="value",...} number`.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Series {
    name: String,
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
struct Metrics(BTreeMap<Series, f64>);

fn parse_metrics(text: &str) -> Metrics {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            // Rust would also read `inf`, `infinity`, `nan`: the text format does not have them.
            v if v.bytes().all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) => {
                v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"))
            }
            _ => panic!("not a text-format value in {line:?}"),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("bad labels in {line:?}"));
                (name.to_string(), parse_labels(body))
            }
        };
        out.insert(Series { name, labels }, value);
    }
    Metrics(out)
}

/// `a="x",b="y\"z"`: values are quoted with `\\`, `\"` and `\n` escapes.
fn parse_labels(body: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = body.chars().peekable();
    loop {
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if name.is_empty() {
            break;
        }
        assert_eq!(chars.next(), Some('"'), "label {name} is not quoted in {body:?}");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(name.trim_start_matches(',').to_string(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    labels
}

impl Metrics {
    /// The value of the series `name` with exactly these labels; 0 if absent.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.0
            .get(&Series {
                name: name.into(),
                labels: want,
            })
            .copied()
            .unwrap_or(0.0)
    }

    /// Sum over every series of `name` whose labels include these.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(s, _)| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, v)| v)
            .sum()
    }

    fn label_values(&self) -> Vec<&str> {
        self.0
            .keys()
            .flat_map(|s| s.labels.values().map(String::as_str))
            .collect()
    }
}

async fn scrape(client: &reqwest::Client, url: &str) -> (String, Metrics) {
    let r = client.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200, "GET {url}");
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/plain"), "{ct}");
    let text = r.text().await.unwrap();
    let m = parse_metrics(&text);
    (text, m)
}

#[test]
fn the_parser_reads_labels_escapes_and_infinities() {
    let m = parse_metrics(
        "# HELP x y\n# TYPE x counter\nx_total{a=\"1\",b=\"q\\\"uote, and \\\\ more\"} 3\nup 1\ng +Inf\n",
    );
    assert!(std::panic::catch_unwind(|| parse_metrics("g inf\n")).is_err());
    assert_eq!(
        m.get("x_total", &[("a", "1"), ("b", "q\"uote, and \\ more")]),
        3.0
    );
    assert_eq!(m.get("up", &[]), 1.0);
    assert_eq!(m.get("g", &[]), f64::INFINITY);
    assert_eq!(m.get("x_total", &[("a", "1")]), 0.0, "labels must match exactly");
    assert_eq!(m.sum("x_total", &[("a", "1")]), 3.0);
}

fn ops_config(sts_endpoint: &str, admin: bool, extra_grants: &str) -> String {
    let key_hash = ossvend::auth::api_key::hash_key(API_KEY);
    let admin = if admin {
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_sha256 = \"{}\"\n",
            ossvend::auth::api_key::hash_key(ADMIN_TOKEN)
        )
    } else {
        String::new()
    };
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[identity]
source = "env"

[sts]
endpoint = "{sts_endpoint}"
role_arn = "{ROLE_ARN}"
max_retries = 0

{admin}

[[auth.api_keys]]
id = "{SUBJECT}"
sha256 = "{key_hash}"

[[grants]]
name = "browser-upload"
bucket = "examplebucket"
region = "cn-hangzhou"
prefix = "uploads/"

[[grants]]
name = "avatars"
bucket = "examplebucket"
region = "cn-hangzhou"
prefix = "avatars/"

[[grants]]
name = "keyed"
bucket = "examplebucket"
region = "cn-hangzhou"
prefix = "keyed/{{subject}}/"
auth = ["api_key"]

[[grants]]
name = "limited"
bucket = "examplebucket"
region = "cn-hangzhou"
prefix = "limited/"
per_ip_per_minute = 1
{extra_grants}
"#
    )
}

fn grant(name: &str) -> String {
    format!(
        "\n[[grants]]\nname = \"{name}\"\nbucket = \"examplebucket\"\nregion = \"cn-hangzhou\"\nprefix = \"{name}/\"\n"
    )
}

#[tokio::test]
async fn metrics_count_a_scripted_sequence_exactly() {
    let sts = StsStub::start();
    // The first credential lives 63 s: servable (min_remaining 60 s) but already
    // inside refresh_before (120 s), so the next lookup refreshes it in the background.
    sts.script(json!([{ "expires_in": 63 }])).await;
    let server = Server::start_with(
        ServerOptions::new(ops_config(&sts.endpoint, false, ""))
            .env("OSSVEND_STS_MIN_REMAINING", "60s")
            .env("OSSVEND_STS_REFRESH_BEFORE", "120s"),
    );
    let client = http();
    let metrics_url = server.url("/metrics");
    let creds = |g: &str| server.url(&format!("/v1/grants/{g}/credentials"));
    let get = |url: String| {
        let client = client.clone();
        async move { client.get(url).send().await.unwrap() }
    };

    let (_, before) = scrape(&client, &metrics_url).await;
    // The env identity was loaded once, at start-up, and never expires.
    assert_eq!(
        before.get(
            "ossvend_identity_refreshes_total",
            &[("source", "env"), ("outcome", "success")]
        ),
        1.0
    );

    // 1. A miss (one STS call), 2. a hit that starts a background refresh.
    assert_eq!(get(creds("browser-upload")).await.status(), 200);
    assert_eq!(get(creds("browser-upload")).await.status(), 200);
    assert_eq!(sts.wait_calls(2, Duration::from_secs(10)).await, 2);
    // The refresh is counted when it finishes, after the STS answer.
    let mut refreshed = 0.0;
    for _ in 0..250 {
        let (_, m) = scrape(&client, &metrics_url).await;
        refreshed = m.get("ossvend_cache_refreshes_total", &[("outcome", "success")]);
        if refreshed >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(refreshed, 1.0);
    // 3. A hit on the refreshed credential.
    assert_eq!(get(creds("browser-upload")).await.status(), 200);
    // 4. An STS error (not retried: NoPermission is permanent).
    sts.script(json!([{ "error": "NoPermission" }])).await;
    let r = get(creds("avatars")).await;
    assert_eq!(r.status(), 502);
    assert_eq!(r.json::<Value>().await.unwrap()["sts_code"], "NoPermission");
    // 5. An authentication failure, 6. the right key (a miss).
    let r = client
        .get(creds("keyed"))
        .header("x-api-key", "ovk_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .get(creds("keyed"))
        .header("x-api-key", API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let keyed: Value = r.json().await.unwrap();
    // 7. Within the per-IP limit (a miss), 8. over it.
    assert_eq!(get(creds("limited")).await.status(), 200);
    assert_eq!(get(creds("limited")).await.status(), 429);
    // 9. No such route.
    assert_eq!(
        get(server.url("/no/such/route/browser-upload")).await.status(),
        404
    );

    let (text, after) = scrape(&client, &metrics_url).await;
    let delta = |name: &str, labels: &[(&str, &str)]| after.get(name, labels) - before.get(name, labels);

    assert_eq!(
        delta("ossvend_cache_lookups_total", &[("outcome", "miss")]),
        3.0,
        "{text}"
    );
    assert_eq!(
        delta("ossvend_cache_lookups_total", &[("outcome", "hit")]),
        2.0,
        "{text}"
    );
    assert_eq!(
        delta("ossvend_cache_lookups_total", &[("outcome", "stale")]),
        0.0,
        "{text}"
    );
    assert_eq!(
        delta("ossvend_cache_lookups_total", &[("outcome", "error")]),
        1.0,
        "{text}"
    );
    assert_eq!(
        delta("ossvend_cache_refreshes_total", &[("outcome", "success")]),
        1.0
    );
    assert_eq!(
        delta("ossvend_cache_refreshes_total", &[("outcome", "failure")]),
        0.0
    );
    let sts_ok = [("action", "AssumeRole"), ("outcome", "success"), ("code", "none")];
    let sts_denied = [
        ("action", "AssumeRole"),
        ("outcome", "error"),
        ("code", "NoPermission"),
    ];
    assert_eq!(delta("ossvend_sts_calls_total", &sts_ok), 4.0, "{text}");
    assert_eq!(delta("ossvend_sts_calls_total", &sts_denied), 1.0, "{text}");
    assert_eq!(sts.call_count().await, 5, "the fake saw as many calls as counted");
    assert_eq!(
        delta(
            "ossvend_sts_call_duration_seconds_count",
            &[("action", "AssumeRole")]
        ),
        5.0,
        "{text}"
    );
    let issued = |g: &str| delta("ossvend_issued_total", &[("grant", g), ("kind", "credentials")]);
    assert_eq!(issued("browser-upload"), 3.0);
    assert_eq!(issued("avatars"), 0.0);
    assert_eq!(issued("keyed"), 1.0);
    assert_eq!(issued("limited"), 1.0);
    assert_eq!(
        delta(
            "ossvend_auth_failures_total",
            &[
                ("grant", "keyed"),
                ("method", "api_key"),
                ("reason", "unknown_key")
            ]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        after.sum("ossvend_auth_failures_total", &[]) - before.sum("ossvend_auth_failures_total", &[]),
        1.0
    );
    assert_eq!(
        delta(
            "ossvend_rate_limited_total",
            &[("grant", "limited"), ("scope", "ip")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "ossvend_rate_limited_total",
            &[("grant", "limited"), ("scope", "subject")]
        ),
        0.0
    );

    // Requests by route template and status, never by raw path.
    let route = "/v1/grants/{grant}/credentials";
    let http = |status: &str, class: &str| {
        delta(
            "ossvend_http_requests_total",
            &[
                ("method", "GET"),
                ("route", route),
                ("status", status),
                ("class", class),
            ],
        )
    };
    assert_eq!(http("200", "2xx"), 5.0, "{text}");
    assert_eq!(http("502", "5xx"), 1.0);
    assert_eq!(http("401", "4xx"), 1.0);
    assert_eq!(http("429", "4xx"), 1.0);
    assert_eq!(
        delta(
            "ossvend_http_request_duration_seconds_count",
            &[("method", "GET"), ("route", route)]
        ),
        8.0
    );
    assert_eq!(
        delta(
            "ossvend_http_requests_total",
            &[
                ("method", "GET"),
                ("route", "unmatched"),
                ("status", "404"),
                ("class", "4xx")
            ]
        ),
        1.0
    );
    // The first scrape itself was counted once it was answered; the refresh polls too.
    assert!(
        delta(
            "ossvend_http_requests_total",
            &[
                ("method", "GET"),
                ("route", "/metrics"),
                ("status", "200"),
                ("class", "2xx")
            ]
        ) >= 1.0
    );
    // A fixed AccessKey never expires.
    assert_eq!(
        after.get("ossvend_identity_remaining_seconds", &[]),
        f64::INFINITY
    );
    assert!(
        text.contains("\nossvend_identity_remaining_seconds +Inf\n"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE ossvend_http_request_duration_seconds histogram"),
        "{text}"
    );

    // No label carries a secret, a token, a subject, a raw path or an address.
    let mut forbidden = vec![
        CALLER_SECRET.to_string(),
        CALLER_AK.to_string(),
        API_KEY.to_string(),
        "ovk_wrong".to_string(),
        SUBJECT.to_string(),
        "/v1/grants/browser-upload/credentials".to_string(),
        "/no/such/route".to_string(),
        "127.0.0.1".to_string(),
        keyed["AccessKeyId"].as_str().unwrap().to_string(),
    ];
    forbidden.extend(sts.issued_secrets().await);
    for value in after.label_values() {
        for f in &forbidden {
            assert!(
                !value.contains(f.as_str()),
                "label value {value:?} contains {f:?}"
            );
        }
    }
    for f in &forbidden[..5] {
        assert!(!text.contains(f.as_str()), "/metrics contains {f:?}");
    }
}

#[tokio::test]
async fn the_admin_listener_serves_metrics_and_reload_and_the_main_one_does_not() {
    let sts = StsStub::start();
    let server = Server::start(ops_config(&sts.endpoint, true, ""));
    let admin = server.admin_base();
    let client = http();

    let (text, m) = scrape(&client, &format!("{admin}/metrics")).await;
    assert!(text.contains("ossvend_identity_refreshes_total"), "{text}");
    assert_eq!(m.get("ossvend_identity_remaining_seconds", &[]), f64::INFINITY);

    // Not on the main listener when an admin listener is configured.
    for (method, path) in [("GET", "/metrics"), ("POST", "/admin/reload")] {
        let r = client
            .request(method.parse().unwrap(), server.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{method} {path} on the main listener");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "not_found");
    }

    let reload = format!("{admin}/admin/reload");
    // No token: 401 with a challenge.
    let r = client.post(&reload).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "unauthenticated");
    assert_eq!(body["request_id"], id.as_str());
    assert_eq!(body["StatusCode"], 401);
    // A wrong token, or the right one under another scheme: 403 / 401.
    let r = client
        .post(&reload)
        .bearer_auth("adm_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "invalid_admin_token");
    assert!(!body.to_string().contains("adm_wrong"));
    let r = client
        .post(&reload)
        .header("authorization", format!("ApiKey {ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Reload needs POST.
    let r = client.get(&reload).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "method_not_allowed");
    // The right token: reloaded (nothing changed).
    let r = client
        .post(&reload)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "reloaded");
    assert_eq!(body["changes"]["identity"], "kept");
    assert_eq!(body["changes"]["grants_added"], json!([]));
    let (_, m) = scrape(&client, &format!("{admin}/metrics")).await;
    assert_eq!(
        m.get("ossvend_config_reloads_total", &[("outcome", "success")]),
        1.0
    );
    assert_eq!(
        m.get("ossvend_config_reloads_total", &[("outcome", "failure")]),
        0.0
    );
    assert!(
        !server.logs.text().contains(ADMIN_TOKEN),
        "the admin token must never be logged"
    );
}

/// Problems an invalid config has, each of which must be reported.
fn invalid_config(sts_endpoint: &str) -> String {
    ops_config(sts_endpoint, true, &grant("reports"))
        .replace("max_retries = 0", "max_retries = 50")
        .replace("prefix = \"avatars/\"", "prefix = \"avatars/\"\nbucket_typo = 1")
}

#[tokio::test]
async fn reloads_under_load_lose_no_request_and_keep_the_cache() {
    let sts = StsStub::start();
    let server = Server::start(ops_config(&sts.endpoint, true, ""));
    let admin = server.admin_base();
    let client = http();
    let url = server.url("/v1/grants/browser-upload/credentials");
    let token = |c: reqwest::RequestBuilder| c.bearer_auth(ADMIN_TOKEN);

    let first: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(sts.call_count().await, 1);

    // The load: workers hammering one grant until told to stop (bounded: 60 s at most).
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for _ in 0..16 {
        let (stop, done, failures, url) = (stop.clone(), done.clone(), failures.clone(), url.clone());
        let client = client.clone();
        let expected = first["AccessKeyId"].clone();
        workers.push(tokio::spawn(async move {
            let started = std::time::Instant::now();
            while !stop.load(Ordering::Acquire) && started.elapsed() < Duration::from_secs(60) {
                match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {
                        let body: Value = r.json().await.unwrap_or_default();
                        if body["AccessKeyId"] != expected {
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("another credential: {body}"));
                        }
                    }
                    Ok(r) => failures.lock().unwrap().push(format!("HTTP {}", r.status())),
                    Err(e) => failures.lock().unwrap().push(format!("request failed: {e}")),
                }
                done.fetch_add(1, Ordering::AcqRel);
            }
        }));
    }
    // Waits until the load made `n` more requests (so it overlaps what just happened).
    let progress = |n: usize| {
        let done = done.clone();
        async move {
            let target = done.load(Ordering::Acquire) + n;
            for _ in 0..3000 {
                if done.load(Ordering::Acquire) >= target {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the load stalled");
        }
    };
    progress(50).await;

    // 1. A valid config with a new grant, by SIGHUP.
    let reports = server.url("/v1/grants/reports/credentials");
    assert_eq!(client.get(&reports).send().await.unwrap().status(), 404);
    server.rewrite_config(&ops_config(&sts.endpoint, true, &grant("reports")));
    server.signal("HUP");
    assert!(
        server
            .logs
            .wait_for("config reloaded", Duration::from_secs(20))
            .await,
        "{}",
        server.logs.text()
    );
    assert!(log_has_field(&server.logs.text(), "trigger", "SIGHUP"));
    assert!(
        server.logs.text().contains("grants_added=[\"reports\"]"),
        "{}",
        server.logs.text()
    );
    progress(50).await;
    let r = client.get(&reports).send().await.unwrap();
    assert_eq!(r.status(), 200, "the new grant is served after the reload");

    // 2. Another grant, by POST /admin/reload.
    server.rewrite_config(&ops_config(
        &sts.endpoint,
        true,
        &format!("{}{}", grant("reports"), grant("docs")),
    ));
    let r = token(client.post(format!("{admin}/admin/reload")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["changes"]["grants_added"], json!(["docs"]));
    assert_eq!(body["changes"]["grants_removed"], json!([]));
    assert_eq!(body["changes"]["identity"], "kept");
    progress(50).await;
    assert_eq!(
        client
            .get(server.url("/v1/grants/docs/credentials"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // 3. An invalid config: refused with every problem listed, by both triggers.
    server.rewrite_config(&invalid_config(&sts.endpoint));
    let r = token(client.post(format!("{admin}/admin/reload")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "invalid_config");
    let problems = body["problems"].as_array().unwrap();
    assert!(!problems.is_empty());
    let all = body["problems"].to_string();
    assert!(all.contains("bucket_typo"), "{all}");
    // A file that parses but is wrong: every problem is listed.
    server.rewrite_config(
        &ops_config(&sts.endpoint, true, &grant("reports"))
            .replace("max_retries = 0", "max_retries = 50")
            .replace(
                "region = \"cn-hangzhou\"\nprefix = \"avatars/\"",
                "region = \"Nowhere\"\nprefix = \"avatars/\"",
            ),
    );
    let r = token(client.post(format!("{admin}/admin/reload")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    let problems: Vec<&str> = body["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems.iter().any(|p| p.starts_with("sts.max_retries")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.starts_with("grants[1].region")),
        "{problems:?}"
    );
    let failed_before = server.logs.count("config reload failed");
    server.signal("HUP");
    let start = std::time::Instant::now();
    while server.logs.count("config reload failed") <= failed_before
        && start.elapsed() < Duration::from_secs(20)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let logs = server.logs.text();
    let line = logs
        .lines()
        .rev()
        .find(|l| l.contains("config reload failed"))
        .unwrap_or_else(|| panic!("no failure logged:\n{logs}"));
    assert!(
        line.contains("sts.max_retries") && line.contains("grants[1].region"),
        "{line}"
    );
    progress(50).await;
    // The old config keeps serving: every grant of the last good one.
    for g in ["browser-upload", "reports", "docs"] {
        let r = client
            .get(server.url(&format!("/v1/grants/{g}/credentials")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{g} after a refused reload");
    }

    stop.store(true, Ordering::Release);
    for w in workers {
        w.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let total = done.load(Ordering::Acquire);
    assert!(total >= 250, "{total} requests");

    // The unchanged grant's cached credential outlived every reload: its only
    // AssumeRole call is the first one. Two more for the two new grants.
    let calls = sts.calls().await;
    let for_uploads = calls
        .iter()
        .filter(|c| {
            c["params"]["Policy"]
                .as_str()
                .unwrap_or("")
                .contains("examplebucket/uploads/")
        })
        .count();
    assert_eq!(for_uploads, 1, "{calls:#?}");
    assert_eq!(calls.len(), 3);

    let (_, m) = scrape(&client, &format!("{admin}/metrics")).await;
    assert_eq!(
        m.get("ossvend_config_reloads_total", &[("outcome", "success")]),
        2.0
    );
    assert_eq!(
        m.get("ossvend_config_reloads_total", &[("outcome", "failure")]),
        3.0
    );
}

#[tokio::test]
async fn request_ids_reach_the_logs_and_rust_log_filters_them() {
    let sts = StsStub::start();
    // Only warnings, plus the start-up line the harness waits for.
    let server = Server::start_with(
        ServerOptions::new(ops_config(&sts.endpoint, false, "")).env("RUST_LOG", "warn,ossvend::server=info"),
    );
    let client = http();
    let r = client
        .get(server.url("/v1/grants/keyed/credentials"))
        .header("x-request-id", "ops-trace-4711")
        .header("x-api-key", "ovk_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["x-request-id"], "ops-trace-4711");
    let r = client
        .get(server.url("/v1/grants/browser-upload/credentials"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        server
            .logs
            .wait_for("authentication failed", Duration::from_secs(5))
            .await,
        "{}",
        server.logs.text()
    );
    let logs = server.logs.text();
    let line = logs
        .lines()
        .find(|l| l.contains("authentication failed"))
        .unwrap();
    assert!(
        line.contains("ops-trace-4711"),
        "the warning carries the request id: {line}"
    );
    // Info lines (access log, audit) are filtered out.
    assert!(!logs.contains("ossvend::audit"), "{logs}");
    assert!(!logs.contains("status=200"), "{logs}");

    // With info, the access log line carries the caller's id.
    let server = Server::start(ops_config(&sts.endpoint, false, ""));
    client
        .get(server.url("/healthz"))
        .header("x-request-id", "ops-trace-4712")
        .send()
        .await
        .unwrap();
    assert!(
        server
            .logs
            .wait_for("ops-trace-4712", Duration::from_secs(5))
            .await,
        "{}",
        server.logs.text()
    );
    let logs = server.logs.text();
    let line = logs.lines().find(|l| l.contains("ops-trace-4712")).unwrap();
    assert!(line.contains("status=200") && line.contains("/healthz"), "{line}");
}

#[test]
fn admin_settings_are_validated() {
    let problems = |admin: &str, env: &[(&str, &str)]| -> Vec<String> {
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain([
                ("ALIBABA_CLOUD_ACCESS_KEY_ID".to_string(), CALLER_AK.to_string()),
                (
                    "ALIBABA_CLOUD_ACCESS_KEY_SECRET".to_string(),
                    CALLER_SECRET.to_string(),
                ),
            ])
            .collect();
        let text =
            ops_config("http://127.0.0.1:9", false, "").replace("[server]", &format!("{admin}\n[server]"));
        let cfg = ossvend::config::parse(&text, &env).unwrap();
        ossvend::check::config(&cfg, &env)
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    let hash = ossvend::auth::api_key::hash_key(ADMIN_TOKEN);
    assert_eq!(problems("", &[]), Vec::<String>::new());
    assert_eq!(
        problems("[admin]\nlisten = \"127.0.0.1:9000\"", &[]),
        Vec::<String>::new()
    );
    let p = problems("[admin]\nlisten = \"nonsense\"", &[]);
    assert!(p.len() == 1 && p[0].starts_with("admin.listen:"), "{p:?}");
    // Beyond loopback, reloading must need the token.
    let p = problems("[admin]\nlisten = \"0.0.0.0:9000\"", &[]);
    assert!(
        p.len() == 1 && p[0].starts_with("admin.listen:") && p[0].contains("token_sha256"),
        "{p:?}"
    );
    let with_token = format!("[admin]\nlisten = \"0.0.0.0:9000\"\ntoken_sha256 = \"{hash}\"");
    assert_eq!(problems(&with_token, &[]), Vec::<String>::new());
    let p = problems("[admin]\ntoken_sha256 = \"not-a-digest\"", &[]);
    assert!(p.len() == 1 && p[0].starts_with("admin.token_sha256:"), "{p:?}");
    let p = problems(
        &format!("[admin]\ntoken_sha256 = \"{}\"", hash.to_uppercase()),
        &[],
    );
    assert!(p.len() == 1 && p[0].starts_with("admin.token_sha256:"), "{p:?}");
    // The environment overrides [admin] like the other sections.
    let p = problems("", &[("OSSVEND_ADMIN_LISTEN", "0.0.0.0:9000")]);
    assert!(p.len() == 1 && p[0].starts_with("admin.listen:"), "{p:?}");
    // Unknown keys are refused.
    let text = ops_config("http://127.0.0.1:9", false, "").replace("[server]", "[admin]\nport = 1\n[server]");
    assert!(ossvend::config::parse(&text, &BTreeMap::new()).is_err());
}

#[tokio::test]
async fn without_an_admin_token_reloading_over_http_is_refused() {
    let sts = StsStub::start();
    let config = ops_config(&sts.endpoint, false, "")
        .replace("[server]", "[admin]\nlisten = \"127.0.0.1:0\"\n[server]");
    let server = Server::start(config);
    let client = http();
    // With or without a token, as the example config says: 403, never a 401 asking for a token.
    for token in [Some(ADMIN_TOKEN), None] {
        let mut req = client.post(format!("{}/admin/reload", server.admin_base()));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 403, "token {token:?}");
        assert_eq!(
            r.json::<Value>().await.unwrap()["code"],
            "admin_token_not_configured"
        );
    }
    // SIGHUP still reloads.
    server.signal("HUP");
    assert!(
        server
            .logs
            .wait_for("config reloaded", Duration::from_secs(20))
            .await,
        "{}",
        server.logs.text()
    );
}

/// Issue 13 item 6: a config broken on the line of a secret is refused by
/// `POST /admin/reload` (422), by SIGHUP (the log) and at start-up without the
/// secret in the answer or the log; the line number is still given.
#[tokio::test]
async fn a_broken_secret_line_is_never_echoed() {
    const SECRET: &str = "NotARealSecretButSecretAnyway42";
    let sts = StsStub::start();
    let good = ops_config(&sts.endpoint, true, "");
    let server = Server::start(good.clone());
    let client = http();
    let broken = good.replace(
        "source = \"env\"",
        &format!("source = \"env\"\naccess_key_secret = \"{SECRET}"),
    );
    server.rewrite_config(&broken);

    let r = client
        .post(format!("{}/admin/reload", server.admin_base()))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body = r.text().await.unwrap();
    assert!(!body.contains(SECRET), "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["code"], "invalid_config");
    assert!(body["problems"].to_string().contains("line "), "{body}");

    let failed_before = server.logs.count("config reload failed");
    server.signal("HUP");
    let start = std::time::Instant::now();
    while server.logs.count("config reload failed") <= failed_before
        && start.elapsed() < Duration::from_secs(20)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let logs = server.logs.text();
    assert!(
        server.logs.count("config reload failed") > failed_before,
        "{logs}"
    );
    assert!(!logs.contains(SECRET), "{logs}");

    let logs = Server::try_start_opts(ServerOptions::new(broken), true)
        .err()
        .expect("a broken config must not start");
    assert!(logs.contains("line "), "{logs}");
    assert!(!logs.contains(SECRET), "{logs}");
}

/// Issue 13 items 7d/7e on the admin listener: two `Authorization` headers are
/// refused (400 `ambiguous_credentials`), and `Bearer<TAB>token` is a bearer token.
#[tokio::test]
async fn admin_reload_parses_the_scheme_and_refuses_two_tokens() {
    let sts = StsStub::start();
    let server = Server::start(ops_config(&sts.endpoint, true, ""));
    let reload = format!("{}/admin/reload", server.admin_base());
    let client = http();
    let mut two = reqwest::header::HeaderMap::new();
    for token in [ADMIN_TOKEN, "adm_wrong"] {
        two.append("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let r = client.post(&reload).headers(two).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "ambiguous_credentials");
    let r = client
        .post(&reload)
        .header("authorization", format!("Bearer\t{ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}
