//! Request id, access log, and JSON bodies for every error response.

use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, State};

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use tracing::{Instrument, debug, error_span, info, warn};

use crate::error::ApiError;
use crate::state::AppState;

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Per-request facts the handlers and the audit trail need.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    /// Shared, not copied: handlers clone the context.
    pub request_id: Arc<str>,
    /// The TCP peer, or the client named by `X-Forwarded-For` when the peer is
    /// a trusted proxy. `None` when the server runs without connect info (tests
    /// calling the router directly).
    pub client_ip: Option<IpAddr>,
}

impl RequestCtx {
    pub fn ip_string(&self) -> String {
        match self.client_ip {
            Some(IpAddr::V4(v4)) => ipv4_string(v4),
            Some(ip) => ip.to_string(),
            None => "-".into(),
        }
    }
}

/// Dotted quad, as `Ipv4Addr`'s `Display` writes it, without the formatting
/// machinery (padding support) that made it a visible cost per issuance.
fn ipv4_string(ip: std::net::Ipv4Addr) -> String {
    let mut s = String::with_capacity(15);
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        if octet >= 100 {
            s.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            s.push(char::from(b'0' + octet / 10 % 10));
        }
        s.push(char::from(b'0' + octet % 10));
    }
    s
}

/// Walks `X-Forwarded-For` from the right, skipping trusted proxies; the first
/// untrusted address is the client. Only consulted when the peer is trusted.
fn client_ip(peer: Option<IpAddr>, xff: Option<&str>, trusted: &[ipnet::IpNet]) -> Option<IpAddr> {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    let peer = peer?;
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let mut client = peer;
    for hop in xff.unwrap_or("").rsplit(',').map(str::trim) {
        match hop.parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(&ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    Some(client)
}

/// Gives every request an id (kept from `X-Request-Id` when it is a safe token,
/// so ids follow a call across proxies), runs it inside a span carrying that id
/// so every log line has it, writes one access-log line, and makes sure every
/// error response has the JSON error body with the id in it.
pub async fn request_context(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let id: Arc<str> = match req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_safe_id(v))
    {
        Some(v) => v.into(),
        None => new_request_id().into(),
    };
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let xff = req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok());
    let ctx = RequestCtx {
        request_id: id.clone(),
        client_ip: client_ip(peer, xff, &state.trusted_proxies),
    };
    req.extensions_mut().insert(ctx);
    let method = req.method().clone();
    // The path only: query strings may carry tickets or filenames.
    let path = req.uri().path().to_owned();
    // Metrics use the route template, never the raw path (unbounded, may carry names).
    let route = req.extensions().get::<MatchedPath>().cloned();
    // At ERROR level so that the span (and the id on every line inside it) is
    // enabled whatever RUST_LOG lets through: an info span would be filtered
    // out by RUST_LOG=warn, and the warnings would lose their request id.
    let span = error_span!("request", request_id = %id);
    let started = Instant::now();

    let (mut resp, audited) = crate::audit::AUDITED
        .scope(Cell::new(false), async {
            let resp = next.run(req).instrument(span.clone()).await;
            (resp, crate::audit::AUDITED.with(Cell::get))
        })
        .await;

    if let Some(err) = resp.extensions_mut().remove::<ApiError>() {
        resp = err.render(&id);
    } else if (resp.status().is_client_error() || resp.status().is_server_error()) && !is_json(&resp) {
        // Errors raised by layers (timeout, body limit) arrive without a body.
        resp = status_error(resp.status()).render(&id);
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    let status = resp.status().as_u16();
    let elapsed = started.elapsed();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    crate::prom::http_request(&method, route, status, elapsed);
    let latency_ms = elapsed.as_millis() as u64;
    // One line per request: an issuance already wrote its audit line (same
    // request id), so its access line is only wanted at debug level.
    span.in_scope(|| {
        if status >= 500 {
            warn!(%method, %path, status, latency_ms, "request");
        } else if audited {
            debug!(%method, %path, status, latency_ms, "request");
        } else {
            info!(%method, %path, status, latency_ms, "request");
        }
    });
    resp
}

/// A random (v4) UUID, from the thread's CSPRNG rather than a getrandom call each.
fn new_request_id() -> String {
    let bytes: [u8; 16] = rand::random();
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

pub(crate) fn is_safe_id(v: &str) -> bool {
    (1..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

fn is_json(resp: &Response) -> bool {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

fn status_error(status: StatusCode) -> ApiError {
    let (code, message) = match status {
        StatusCode::NOT_FOUND => ("not_found", "no such route"),
        StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "this path does not accept that method"),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "payload_too_large",
            "the request body is larger than server.body_limit_bytes",
        ),
        StatusCode::GATEWAY_TIMEOUT | StatusCode::REQUEST_TIMEOUT => {
            ("timeout", "the request took longer than server.request_timeout")
        }
        // Any other client error (a body axum could not extract: 415, 422, …)
        // is one documented answer, 400 `bad_request`.
        s if s.is_client_error() => {
            return ApiError::bad_request("bad_request", "the request was not understood");
        }
        _ => ("internal_error", "the server failed to handle the request"),
    };
    ApiError::new(status, code, message)
}

#[cfg(test)]
mod tests {
    use super::{client_ip, ipv4_string};

    #[test]
    fn ipv4_strings_match_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "1.100.9.99",
            "203.0.113.250",
        ] {
            let ip: std::net::Ipv4Addr = ip.parse().unwrap();
            assert_eq!(ipv4_string(ip), ip.to_string());
        }
        for n in (0..=u32::MAX).step_by(7_919_993) {
            let ip = std::net::Ipv4Addr::from(n);
            assert_eq!(ipv4_string(ip), ip.to_string());
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| Some(s.parse().unwrap());
        // Untrusted peer: the header is ignored.
        assert_eq!(
            client_ip(ip("203.0.113.9"), Some("1.2.3.4"), &trusted),
            ip("203.0.113.9")
        );
        // Trusted peer: the rightmost untrusted hop is the client.
        assert_eq!(
            client_ip(ip("10.0.0.2"), Some("1.2.3.4, 198.51.100.7, 10.0.0.5"), &trusted),
            ip("198.51.100.7")
        );
        // Garbage in the header stops the walk.
        assert_eq!(
            client_ip(ip("10.0.0.2"), Some("nonsense"), &trusted),
            ip("10.0.0.2")
        );
        assert_eq!(client_ip(None, Some("1.2.3.4"), &trusted), None);
    }
}
