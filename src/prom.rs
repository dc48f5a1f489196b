//! Prometheus metrics (`GET /metrics`, text format), recorded with the
//! `metrics` facade into one process-wide recorder.
//!
//! Every metric is named `ossvend_*` and every label value is bounded and free
//! of secrets: route templates (never raw paths), status codes, grant names
//! (configured), method and outcome names, STS error codes. Never a subject,
//! a key name, a client address or a token.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `ossvend_http_requests_total` | counter | `method`, `route`, `status`, `class` |
//! | `ossvend_http_request_duration_seconds` | histogram | `method`, `route` |
//! | `ossvend_issued_total` | counter | `grant`, `kind` (`credentials`, `post-policy`, `presign`, `ticket`) |
//! | `ossvend_cache_lookups_total` | counter | `outcome` (`hit`, `miss`, `stale`, `error`) |
//! | `ossvend_cache_refreshes_total` | counter | `outcome` (`success`, `failure`): background refreshes |
//! | `ossvend_sts_calls_total` | counter | `action`, `outcome` (`success`, `error`), `code` |
//! | `ossvend_sts_call_duration_seconds` | histogram | `action` |
//! | `ossvend_sts_backoff_total` | counter | `scope` (`key`: a failed key's back-off, `client`: throttling): calls not made, answered 503 at once |
//! | `ossvend_sts_failing` | gauge | 1 while the last AssumeRole of the cache failed (5xx, timeout, throttling), else 0 |
//! | `ossvend_sts_budget_waits_total` | counter | calls that waited for the STS call budget |
//! | `ossvend_sts_budget_wait_duration_seconds` | histogram | how long those calls waited |
//! | `ossvend_identity_refreshes_total` | counter | `source`, `outcome` (`success`, `failure`) |
//! | `ossvend_identity_remaining_seconds` | gauge | life left of the server identity (`+Inf`: a fixed key, 0: none) |
//! | `ossvend_auth_failures_total` | counter | `grant`, `method`, `reason` |
//! | `ossvend_rate_limited_total` | counter | `grant`, `scope` (`ip`, `subject`) |
//! | `ossvend_config_reloads_total` | counter | `outcome` (`success`, `failure`) |
//! | `ossvend_connections_open` | gauge | client connections open, all listeners together |
//! | `ossvend_connections_closed_total` | counter | `reason` (`header_timeout`, `idle`, `evicted`): closed by ossvend |
//! | `ossvend_callbacks_total` | counter | `result` (`accepted` or a refusal code such as `callback_signature_invalid`) |
//! | `ossvend_webhook_deliveries_total` | counter | `outcome` (`delivered`, `failed`, `redelivered`) |
//! | `ossvend_webhooks_pending` | gauge | events not yet delivered to the application |

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};
use std::time::Duration;

use metrics::{
    Counter, Histogram, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets in seconds, for requests and STS calls.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the recorder (once per process; later calls return the same
/// handle). If another recorder was installed first, this one still renders,
/// but stays empty.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_duration_seconds".into()), LATENCY_BUCKETS)
            .expect("static, non-empty buckets")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_ok() {
            describe();
        }
        handle
    })
}

/// Drains histogram samples into their buckets; run now and then so memory
/// stays bounded when nobody scrapes.
pub fn spawn_upkeep() {
    let handle = install().clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    });
}

/// The text exposition of every metric, with the identity's remaining
/// lifetime (seconds, computed now by the caller; `+Inf` for a fixed key).
pub fn render(identity_remaining_seconds: f64) -> String {
    let handle = install();
    gauge!("ossvend_identity_remaining_seconds").set(identity_remaining_seconds);
    exposition_infinities(handle.render())
}

/// The exporter writes infinite values as Rust prints them (`inf`); the text
/// format spells them `+Inf` and `-Inf`.
fn exposition_infinities(text: String) -> String {
    if !text.contains(" inf\n") && !text.contains(" -inf\n") {
        return text;
    }
    text.replace(" inf\n", " +Inf\n").replace(" -inf\n", " -Inf\n")
}

fn describe() {
    describe_shared();
    describe_counter!(
        "ossvend_http_requests_total",
        "HTTP requests by method, route template and status"
    );
    describe_histogram!(
        "ossvend_http_request_duration_seconds",
        metrics::Unit::Seconds,
        "HTTP request latency by method and route template"
    );
    describe_counter!(
        "ossvend_issued_total",
        "Credentials, PostObject forms, presigned URLs and tickets issued, by grant and kind"
    );
    describe_counter!(
        "ossvend_cache_lookups_total",
        "Credential cache lookups by outcome (hit, miss, stale, error)"
    );
    describe_counter!(
        "ossvend_cache_refreshes_total",
        "Background refreshes of cached credentials by outcome"
    );
    describe_counter!(
        "ossvend_sts_calls_total",
        "STS calls (each attempt) by action, outcome and STS error code"
    );
    describe_histogram!(
        "ossvend_sts_call_duration_seconds",
        metrics::Unit::Seconds,
        "STS call latency (each attempt) by action"
    );
    describe_counter!(
        "ossvend_sts_backoff_total",
        "STS calls not made because of a back-off (scope: key after a failed call, client after throttling)"
    );
    describe_gauge!(
        "ossvend_sts_failing",
        "1 while the credential cache's last AssumeRole call failed (5xx, timeout, throttling), else 0"
    );
    describe_counter!(
        "ossvend_sts_budget_waits_total",
        "STS calls that had to wait for the call budget (sts.max_calls_per_second)"
    );
    describe_histogram!(
        "ossvend_sts_budget_wait_duration_seconds",
        metrics::Unit::Seconds,
        "How long STS calls waited for the call budget"
    );
    describe_counter!(
        "ossvend_identity_refreshes_total",
        "Fetches of the server's own identity by source and outcome"
    );
    describe_gauge!(
        "ossvend_identity_remaining_seconds",
        metrics::Unit::Seconds,
        "Remaining lifetime of the server identity (+Inf for a fixed AccessKey, 0 when none is valid)"
    );
    describe_counter!(
        "ossvend_auth_failures_total",
        "Refused client authentications by grant, method and reason"
    );
    describe_counter!(
        "ossvend_rate_limited_total",
        "Requests refused by a rate limit, by grant and scope (ip, subject)"
    );
    describe_counter!(
        "ossvend_config_reloads_total",
        "Configuration reloads (SIGHUP, POST /admin/reload) by outcome"
    );
    describe_gauge!(
        "ossvend_connections_open",
        "Client connections open, all listeners together"
    );
    describe_counter!(
        "ossvend_connections_closed_total",
        "Connections closed by ossvend: header_timeout (server.header_read_timeout), idle (server.idle_timeout), \
         evicted (to make room at server.max_connections)"
    );
    describe_counter!(
        "ossvend_callbacks_total",
        "OSS upload callbacks received: accepted, or the refusal code"
    );
    describe_counter!(
        "ossvend_webhook_deliveries_total",
        "Webhook attempts to the application: delivered, failed, redelivered"
    );
    describe_gauge!(
        "ossvend_webhooks_pending",
        "Upload events not yet delivered to the application (GET /admin/webhooks/pending)"
    );
}

/// One finished HTTP request. `route` is the matched route template, or
/// `unmatched`.
pub fn http_request(method: &axum::http::Method, route: &str, status: u16, elapsed: Duration) {
    let method: &'static str = match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "PATCH" => "PATCH",
        _ => "other",
    };
    let class = match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    static HANDLES: Handles<(&'static str, u16), (Counter, Histogram)> = Handles::new();
    let (requests, latency) = HANDLES.get(route, (method, status), || {
        (
            counter!(
                "ossvend_http_requests_total",
                "method" => method,
                "route" => route.to_owned(),
                "status" => status.to_string(),
                "class" => class
            ),
            histogram!(
                "ossvend_http_request_duration_seconds",
                "method" => method,
                "route" => route.to_owned()
            ),
        )
    });
    requests.increment(1);
    latency.record(elapsed.as_secs_f64());
}

pub fn issued(grant: &str, kind: &'static str) {
    static HANDLES: Handles<&'static str, Counter> = Handles::new();
    HANDLES
        .get(
            grant,
            kind,
            || counter!("ossvend_issued_total", "grant" => grant.to_owned(), "kind" => kind),
        )
        .increment(1);
}

pub fn cache_lookup(outcome: &'static str) {
    static HANDLES: Handles<&'static str, Counter> = Handles::new();
    HANDLES
        .get(
            "",
            outcome,
            || counter!("ossvend_cache_lookups_total", "outcome" => outcome),
        )
        .increment(1);
}

/// Metric handles by label values, for the series touched on every request.
///
/// `counter!` with labels builds, hashes and looks up its key on each call; a
/// handle points at the series directly. Keys are bounded like the labels
/// themselves (route templates, grant names, status codes). The recorder is
/// installed before the first handle is made, so no handle is a no-op one.
struct Handles<K, H> {
    by_name: RwLock<Option<HashMap<String, HashMap<K, H>>>>,
}

impl<K: Copy + Eq + std::hash::Hash, H: Clone> Handles<K, H> {
    const fn new() -> Self {
        Handles {
            by_name: RwLock::new(None),
        }
    }

    fn get(&self, name: &str, key: K, make: impl FnOnce() -> H) -> H {
        if let Some(h) = self
            .by_name
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|m| m.get(name))
            .and_then(|m| m.get(&key))
        {
            return h.clone();
        }
        install();
        let handle = make();
        self.by_name
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_default()
            .entry(name.to_owned())
            .or_default()
            .insert(key, handle.clone());
        handle
    }
}

pub fn cache_refresh(ok: bool) {
    counter!("ossvend_cache_refreshes_total", "outcome" => outcome(ok)).increment(1);
}

/// One STS attempt. `code` is STS's error `Code`, `transport`,
/// `bad_response` or `none` (success).
pub fn sts_call(action: &'static str, error_code: Option<&str>, elapsed: Duration) {
    let (result, code) = match error_code {
        None => ("success", "none".to_owned()),
        Some(c) => ("error", bounded_code(c)),
    };
    counter!("ossvend_sts_calls_total", "action" => action, "outcome" => result, "code" => code).increment(1);
    histogram!("ossvend_sts_call_duration_seconds", "action" => action).record(elapsed.as_secs_f64());
}

/// A call not made: the key (`key`) or the whole client (`client`) is backing off.
pub fn sts_backoff(scope: &'static str) {
    counter!("ossvend_sts_backoff_total", "scope" => scope).increment(1);
}

pub fn sts_failing(failing: bool) {
    gauge!("ossvend_sts_failing").set(if failing { 1.0 } else { 0.0 });
}

pub fn sts_budget_wait(waited: Duration) {
    counter!("ossvend_sts_budget_waits_total").increment(1);
    histogram!("ossvend_sts_budget_wait_duration_seconds").record(waited.as_secs_f64());
}

pub fn identity_refresh(source: &'static str, ok: bool) {
    counter!("ossvend_identity_refreshes_total", "source" => source, "outcome" => outcome(ok)).increment(1);
}

pub fn auth_failure(grant: &str, method: &'static str, reason: &'static str) {
    counter!(
        "ossvend_auth_failures_total",
        "grant" => grant.to_owned(),
        "method" => method,
        "reason" => reason
    )
    .increment(1);
}

pub fn rate_limited(grant: &str, scope: &'static str) {
    counter!("ossvend_rate_limited_total", "grant" => grant.to_owned(), "scope" => scope).increment(1);
}

pub fn config_reload(ok: bool) {
    counter!("ossvend_config_reloads_total", "outcome" => outcome(ok)).increment(1);
}

pub fn connections_open(n: usize) {
    gauge!("ossvend_connections_open").set(n as f64);
}

/// `reason`: `header_timeout`, `idle` or `evicted`.
pub fn connection_closed(reason: &'static str) {
    counter!("ossvend_connections_closed_total", "reason" => reason).increment(1);
}

/// An OSS callback: `accepted`, or the refusal code.
pub fn callback(result: &'static str) {
    counter!("ossvend_callbacks_total", "result" => result).increment(1);
}

/// A webhook attempt: `delivered` (first try), `failed`, `redelivered` (a pending event delivered later).
pub fn webhook_delivery(outcome: &'static str) {
    counter!("ossvend_webhook_deliveries_total", "outcome" => outcome).increment(1);
}

pub fn webhooks_pending(n: usize) {
    gauge!("ossvend_webhooks_pending").set(n as f64);
}

fn outcome(ok: bool) -> &'static str {
    if ok { "success" } else { "failure" }
}

/// STS error codes are short identifiers (`Throttling.User`, `HTTP503`);
/// anything else is cut down so that a label never carries free text.
fn bounded_code(code: &str) -> String {
    let clean: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
        .take(64)
        .collect();
    if clean.is_empty() { "unknown".into() } else { clean }
}

// Fleet mode (`[shared]`).

fn describe_shared() {
    describe_counter!(
        "ossvend_shared_lookups_total",
        "Credential cache second-level (Redis) lookups after an in-process miss: l2_hit or l2_miss"
    );
    describe_counter!(
        "ossvend_shared_flights_total",
        "Fleet single flights: won (this replica called STS) or waited (another replica did)"
    );
    describe_counter!(
        "ossvend_shared_errors_total",
        "Redis commands that failed or timed out, by operation"
    );
    describe_histogram!(
        "ossvend_shared_command_duration_seconds",
        metrics::Unit::Seconds,
        "Redis command latency by operation"
    );
    describe_gauge!(
        "ossvend_shared_available",
        "1 while Redis answers, 0 while on the fallback"
    );
    describe_counter!(
        "ossvend_shared_undecryptable_total",
        "Redis entries that did not decrypt or parse (served as a miss)"
    );
}

pub fn shared_lookup(hit: bool) {
    let outcome = if hit { "l2_hit" } else { "l2_miss" };
    counter!("ossvend_shared_lookups_total", "outcome" => outcome).increment(1);
}

pub fn shared_flight(won: bool) {
    let role = if won { "won" } else { "waited" };
    counter!("ossvend_shared_flights_total", "role" => role).increment(1);
}

pub fn shared_error(op: &'static str) {
    counter!("ossvend_shared_errors_total", "op" => op).increment(1);
}

pub fn shared_latency(op: &'static str, elapsed: Duration) {
    histogram!("ossvend_shared_command_duration_seconds", "op" => op).record(elapsed.as_secs_f64());
}

pub fn shared_available(up: bool) {
    gauge!("ossvend_shared_available").set(if up { 1.0 } else { 0.0 });
}

pub fn shared_undecryptable() {
    counter!("ossvend_shared_undecryptable_total").increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_bounded_identifiers() {
        assert_eq!(bounded_code("Throttling.User"), "Throttling.User");
        assert_eq!(bounded_code("a b\"c\n"), "abc");
        assert_eq!(bounded_code(""), "unknown");
        assert_eq!(bounded_code(&"x".repeat(500)).len(), 64);
    }

    #[test]
    fn infinities_are_spelled_as_the_text_format_wants() {
        assert_eq!(
            exposition_infinities("a inf\nb -inf\nc{le=\"+Inf\"} 1\n".into()),
            "a +Inf\nb -Inf\nc{le=\"+Inf\"} 1\n"
        );
    }

    #[test]
    fn install_is_idempotent_and_renders() {
        let a = install() as *const _;
        let b = install() as *const _;
        assert_eq!(a, b);
        rate_limited("g", "ip");
        let text = install().render();
        assert!(
            text.contains("ossvend_rate_limited_total{grant=\"g\",scope=\"ip\"}"),
            "{text}"
        );
    }
}
