//! HTTP surface: the router, thin handlers and the request middleware.
//! Handlers extract, authenticate, call `grants`, and format; no signing or
//! policy logic here.

mod admin;
mod authorized;
mod callbacks;
mod companion;
mod credentials;
mod health;
mod middleware;
mod openapi;
mod responses;
mod tickets;
mod upload;
mod uploads;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, Method, StatusCode, header, request::Parts};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::services::ServeDir;
use tower_http::timeout::TimeoutLayer;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::CorsConfig;
use crate::error::ApiError;
use crate::state::AppState;

pub use admin::admin_app;
pub use middleware::{REQUEST_ID_HEADER, RequestCtx};

/// Every documented route, declared once: [`app`] serves what this returns and
/// [`openapi::document`] describes it. `metrics_here`: `GET /metrics` is served on
/// this listener (no admin listener is configured); the document always lists it.
fn api(metrics_here: bool) -> OpenApiRouter<Arc<AppState>> {
    let mut api = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(credentials::grant_credentials))
        .routes(routes!(credentials::legacy_credentials))
        .routes(routes!(upload::post_policy))
        .routes(routes!(upload::legacy_post_policy))
        .routes(routes!(upload::presign_get, upload::presign_post))
        .routes(routes!(upload::legacy_presign))
        .routes(routes!(credentials::explain))
        .routes(routes!(uploads::session_open))
        .routes(routes!(uploads::session_parts))
        .routes(routes!(uploads::session_complete))
        .routes(routes!(uploads::session_abort))
        .routes(routes!(companion::companion_params))
        .routes(routes!(companion::companion_create))
        .routes(routes!(companion::companion_sign_part))
        .routes(routes!(
            companion::companion_list_parts,
            companion::companion_abort
        ))
        .routes(routes!(companion::companion_complete))
        .routes(routes!(tickets::mint))
        .routes(routes!(callbacks::oss_callback))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz));
    if metrics_here {
        api = api.routes(routes!(admin::metrics));
    }
    api.routes(routes!(openapi::openapi_json))
}

/// The whole application: the documented routes, the fallbacks and the middleware.
pub fn app(state: Arc<AppState>) -> Router {
    let static_dir = state.config.server.static_dir.clone();
    let (router, _) = api(state.config.admin.listen.is_none()).split_for_parts();
    let mut router = router.method_not_allowed_fallback(|| async {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this path does not accept that method",
        )
    });
    router = match static_dir {
        Some(dir) => router.fallback_service(ServeDir::new(dir).fallback(axum::routing::any(not_found))),
        None => router.fallback(not_found),
    };
    // One `layer` call for the whole stack (outermost first): each call boxes
    // every route once more, and each box is cloned on every request.
    let stack = tower::ServiceBuilder::new()
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::request_context,
        ))
        .option_layer(cors_layer(&state.config.cors))
        .layer(RequestBodyLimitLayer::new(state.config.server.body_limit_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            state.config.server.request_timeout,
        ));
    router.layer(stack).with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such route")
}

/// Routes whose response carries a secret.
fn returns_credentials(path: &str) -> bool {
    path.ends_with("/credentials") || path == "/get_sts_token_for_oss_upload"
}

/// CORS from config: explicit origins, `https://*.example.com` patterns, or any
/// origin when configured (never on credential routes unless that is configured
/// too). An allowed origin is answered with itself in `Access-Control-Allow-Origin`
/// and `Vary: Origin` — also for `allow_any_origin`, because whether any origin
/// is allowed depends on the route, and a cache must not hand one route's answer
/// to another origin. No cookies are used, so credentials mode is never allowed.
/// Patterns and "any" match only origins a browser can send (see
/// [`crate::config::validate::is_browser_origin`]): no `null`, `?`, `#`, `\\`, path.
fn cors_layer(cfg: &CorsConfig) -> Option<CorsLayer> {
    use crate::config::validate::{is_browser_origin, origin_pattern};
    if cfg.allowed_origins.is_empty()
        && cfg.allowed_origin_patterns.is_empty()
        && !cfg.allow_any_origin
        && !cfg.allow_loopback_origins
    {
        return None;
    }
    let exact: Vec<String> = cfg.allowed_origins.clone();
    let patterns: Vec<(String, String)> = cfg
        .allowed_origin_patterns
        .iter()
        .filter_map(|p| origin_pattern(p))
        .collect();
    let (any, any_for_credentials) = (cfg.allow_any_origin, cfg.allow_any_origin_for_credentials);
    let loopback = cfg.allow_loopback_origins;
    let allow = AllowOrigin::predicate(move |origin: &HeaderValue, parts: &Parts| {
        let Ok(origin) = origin.to_str() else { return false };
        if exact.iter().any(|o| o == origin) {
            return true;
        }
        if !is_browser_origin(origin) {
            return false;
        }
        if loopback && is_loopback_origin(origin) {
            return true;
        }
        let matches_pattern = patterns.iter().any(|(scheme, suffix)| {
            origin
                .strip_prefix(scheme.as_str())
                .is_some_and(|host| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
        });
        matches_pattern || (any && (any_for_credentials || !returns_credentials(parts.uri.path())))
    });
    let mut layer = CorsLayer::new()
        .allow_origin(allow)
        // DELETE: a browser aborts an upload session (`DELETE …/uploads/{upload}`, Uppy's abort).
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            "x-api-key".parse().unwrap(),
            "x-request-id".parse().unwrap(),
        ])
        .expose_headers(["x-request-id".parse().unwrap()]);
    if let Some(age) = cfg.max_age {
        layer = layer.max_age(age);
    }
    Some(layer)
}

/// `http(s)://localhost|127.0.0.1|[::1][:port]`, for an already well-formed origin.
fn is_loopback_origin(origin: &str) -> bool {
    url::Url::parse(origin).is_ok_and(|u| match u.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{HeaderMap, Request};
    use tower::ServiceExt as _;

    /// What the CORS layer answers a GET from `origin` to `path`.
    async fn answer(cfg: &CorsConfig, path: &str, origin: &str) -> HeaderMap {
        let svc = tower::ServiceBuilder::new()
            .layer(cors_layer(cfg).expect("a CORS layer"))
            .service_fn(|_req: Request<Body>| async {
                Ok::<_, std::convert::Infallible>(axum::response::Response::new(Body::empty()))
            });
        let req = Request::get(path)
            .header(
                header::ORIGIN,
                HeaderValue::from_bytes(origin.as_bytes()).unwrap(),
            )
            .body(Body::empty())
            .unwrap();
        svc.oneshot(req).await.unwrap().headers().clone()
    }

    fn allowed(h: &HeaderMap) -> Option<&str> {
        h.get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .map(|v| v.to_str().unwrap())
    }

    fn varies_on_origin(h: &HeaderMap) -> bool {
        h.get_all(header::VARY)
            .iter()
            .flat_map(|v| v.to_str().unwrap().split(','))
            .any(|v| v.trim().eq_ignore_ascii_case("origin"))
    }

    /// Issue 15: `ossvend local` admits any loopback origin, credential routes included, and nothing else.
    #[tokio::test]
    async fn loopback_origins_are_admitted_when_local_mode_asks() {
        let cfg = CorsConfig {
            allow_loopback_origins: true,
            ..CorsConfig::default()
        };
        for origin in [
            "http://localhost:5173",
            "http://127.0.0.1:3000",
            "http://[::1]:8080",
            "http://localhost",
            "https://127.0.0.1:8443",
        ] {
            let h = answer(&cfg, "/v1/grants/g/credentials", origin).await;
            assert_eq!(allowed(&h), Some(origin), "{origin}");
            assert!(varies_on_origin(&h), "{origin}");
        }
        for origin in [
            "http://localhost.example.com:5173",
            "http://127.0.0.1.nip.io",
            "http://192.168.1.10:3000",
            "http://localhost:5173/",
            "null",
        ] {
            let h = answer(&cfg, "/v1/grants/g/credentials", origin).await;
            assert_eq!(allowed(&h), None, "{origin}");
        }
        assert!(cors_layer(&CorsConfig::default()).is_none());
    }

    /// Issue 13 item 7b: a pattern matches only origins a browser can send.
    #[tokio::test]
    async fn patterns_match_only_well_formed_origins() {
        let cfg = CorsConfig {
            allowed_origin_patterns: vec!["https://*.example.com".into(), "http://*.localhost:3000".into()],
            ..CorsConfig::default()
        };
        for origin in [
            "https://shop.example.com",
            "https://a.b.example.com",
            "https://xn--bcher-kva.example.com",
            "http://app.localhost:3000",
        ] {
            let h = answer(&cfg, "/v1/grants/g/post-policy", origin).await;
            assert_eq!(allowed(&h), Some(origin), "{origin}");
            assert!(varies_on_origin(&h), "{origin}: {h:?}");
        }
        for origin in [
            "https://evil?.example.com",
            "https://evil#.example.com",
            "https://evil\\.example.com",
            "https://evil/.example.com",
            "https://evil@x.example.com",
            "https://EVIL.example.com",
            "https://evil .example.com",
            "https://x.example.com/",
            "https://x.example.com:443",
            "https://.example.com",
            "https://example.com",
            "http://shop.example.com",
            "http://app.localhost:3001",
            "null",
        ] {
            let h = answer(&cfg, "/v1/grants/g/post-policy", origin).await;
            assert_eq!(allowed(&h), None, "{origin} was allowed");
        }
    }

    /// Issue 13 item 7c: `allow_any_origin` answers with the caller's origin
    /// (never `*`, never credentials) and `Vary: Origin`, for well-formed origins
    /// only, and not on credential routes unless that is configured too.
    #[tokio::test]
    async fn any_origin_reflects_valid_origins_with_vary() {
        let any = CorsConfig {
            allow_any_origin: true,
            ..CorsConfig::default()
        };
        let h = answer(&any, "/v1/grants/g/presign", "https://anyone.test:8443").await;
        assert_eq!(allowed(&h), Some("https://anyone.test:8443"));
        assert!(varies_on_origin(&h), "{h:?}");
        assert!(h.get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none());
        for origin in ["null", "https://a.test/x", "https://a.test?x", "file://", "*"] {
            let h = answer(&any, "/v1/grants/g/presign", origin).await;
            assert_eq!(allowed(&h), None, "{origin} was allowed");
        }
        let h = answer(&any, "/v1/grants/g/credentials", "https://anyone.test").await;
        assert_eq!(allowed(&h), None);
        let h = answer(&any, "/get_sts_token_for_oss_upload", "https://anyone.test").await;
        assert_eq!(allowed(&h), None);
        let for_credentials = CorsConfig {
            allow_any_origin_for_credentials: true,
            ..any
        };
        let h = answer(
            &for_credentials,
            "/v1/grants/g/credentials",
            "https://anyone.test",
        )
        .await;
        assert_eq!(allowed(&h), Some("https://anyone.test"));
        assert!(varies_on_origin(&h));
    }
}
