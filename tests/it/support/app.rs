//! [`TestApp`]: the real application (`AppState` + `ossvend::routes::app`, built
//! from a config text the way `ossvend serve` builds it) in this process. Requests
//! go through `tower::ServiceExt::oneshot`, with the peer address a listener would
//! attach (`ConnectInfo`); log lines of the test's thread are captured.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Method, Request};
use serde_json::Value;
use tower::ServiceExt as _;

use ossvend::identity::RefreshTimings;
use ossvend::state::AppState;

use super::{CALLER_AK, CALLER_SECRET, Captured, ServerOptions};

/// See the module documentation.
pub struct TestApp {
    client: AppClient,
    /// What the application logged on this thread (the test's, for `#[tokio::test]`).
    pub logs: Captured,
    _log_guard: tracing::subscriber::DefaultGuard,
}

/// A response, read to the end.
#[derive(Debug)]
pub struct TestResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl TestResponse {
    /// The body as JSON, or as a JSON string when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| Value::String(self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

impl TestApp {
    /// The app with the default caller key in its environment (`source = "env"`).
    pub async fn new(config: &str) -> TestApp {
        Self::with_env(config, &[])
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The app with the caller key and `env` (which may override it) as its
    /// environment; `Err` with every problem when the config is refused.
    pub async fn with_env(config: &str, env: &[(&str, &str)]) -> Result<TestApp, String> {
        let opts = ServerOptions {
            config: config.to_string(),
            env: env.to_vec(),
        };
        Self::try_start_opts(opts, true).await
    }

    /// What [`Server::start_with`] runs, in this process.
    pub async fn start_with(opts: ServerOptions<'_>) -> TestApp {
        Self::try_start_opts(opts, true)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// What [`Server::start_bare`] runs (no caller key in the environment), in this process.
    pub async fn start_bare(opts: ServerOptions<'_>) -> TestApp {
        Self::try_start_opts(opts, false)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The environment is `opts.env`, after the default caller key when `caller_key`;
    /// `Err` with every problem when the config is refused or the state cannot be built.
    pub async fn try_start_opts(opts: ServerOptions<'_>, caller_key: bool) -> Result<TestApp, String> {
        Self::build(opts, caller_key, RefreshTimings::default()).await
    }

    /// Like [`TestApp::try_start_opts`], with the identity refresh loop's `timings`
    /// (a short expiry margin makes a refresh happen within seconds).
    pub async fn build(
        opts: ServerOptions<'_>,
        caller_key: bool,
        timings: RefreshTimings,
    ) -> Result<TestApp, String> {
        let mut env = BTreeMap::new();
        if caller_key {
            env.insert("ALIBABA_CLOUD_ACCESS_KEY_ID".to_string(), CALLER_AK.to_string());
            env.insert(
                "ALIBABA_CLOUD_ACCESS_KEY_SECRET".to_string(),
                CALLER_SECRET.to_string(),
            );
        }
        env.extend(opts.env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let logs = Captured::default();
        let writer = logs.clone();
        // The app's log lines (and its background tasks', on this thread's runtime).
        let guard = tracing::subscriber::set_default(
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::INFO)
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .finish(),
        );
        let cfg = ossvend::config::parse(&opts.config, &env)?;
        let problems = ossvend::check::config(&cfg, &env);
        if !problems.is_empty() {
            let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
            return Err(text.join("\n"));
        }
        let state = AppState::build_with_timings(cfg, &env, timings).await?;
        Ok(TestApp {
            client: AppClient {
                router: ossvend::routes::app(state),
                peer: "127.0.0.1:40000".parse().unwrap(),
            },
            logs,
            _log_guard: guard,
        })
    }

    /// A handle that sends requests to this app from other tasks.
    pub fn client(&self) -> AppClient {
        self.client.clone()
    }
}

/// The request helpers ([`AppClient`]'s) on the app itself.
impl std::ops::Deref for TestApp {
    type Target = AppClient;
    fn deref(&self) -> &AppClient {
        &self.client
    }
}

/// The router and the peer address its requests come from; `Send`, cheap to clone.
#[derive(Clone)]
pub struct AppClient {
    router: axum::Router,
    peer: SocketAddr,
}

impl AppClient {
    /// Sends `req` through the router; adds the peer address unless it has one.
    pub async fn send(&self, mut req: Request<Body>) -> TestResponse {
        if req.extensions().get::<ConnectInfo<SocketAddr>>().is_none() {
            req.extensions_mut().insert(ConnectInfo(self.peer));
        }
        let res = self.router.clone().oneshot(req).await.unwrap();
        let (parts, body) = res.into_parts();
        TestResponse {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: axum::body::to_bytes(body, usize::MAX).await.unwrap(),
        }
    }

    /// `method path` with `headers` and `body`.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> TestResponse {
        let mut req = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req.body(body).unwrap()).await
    }

    pub async fn get(&self, path: &str) -> TestResponse {
        self.request("GET", path, &[], Body::empty()).await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> TestResponse {
        self.request("GET", path, headers, Body::empty()).await
    }

    /// POST with a JSON body (and `Content-Type: application/json`).
    pub async fn post_json(&self, path: &str, headers: &[(&str, &str)], body: &Value) -> TestResponse {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        self.request("POST", path, &all, Body::from(body.to_string()))
            .await
    }
}
