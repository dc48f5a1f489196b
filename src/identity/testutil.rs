//! Test doubles shared by the identity tests: a manual clock, a scripted
//! source, and a recording HTTP server on loopback (IMDS, credentials URI, STS).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::{Credentials, Fetch, IdentityError};
use crate::sts::Clock;

/// A clock the test moves by hand.
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn new() -> Arc<Self> {
        Arc::new(ManualClock(Mutex::new(Utc::now())))
    }
    pub fn advance(&self, d: Duration) {
        *self.0.lock().unwrap() += TimeDelta::from_std(d).unwrap();
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

/// A source that counts its calls, mints `STS.test<n>` credentials valid for
/// `life` by its clock (or fixed ones), fails while told to, and can be slow.
#[derive(Clone)]
pub struct ScriptedFetch(Arc<Script>);

struct Script {
    clock: Option<Arc<dyn Clock>>,
    life: Option<Duration>,
    reload: Option<Duration>,
    calls: AtomicUsize,
    fail: AtomicBool,
    delay: Mutex<Duration>,
}

impl ScriptedFetch {
    pub fn new(clock: Arc<dyn Clock>, life: Duration) -> Self {
        Self::make(Some(clock), Some(life), None)
    }
    /// Fixed credentials (no expiry) re-read every `reload`.
    pub fn fixed(reload: Duration) -> Self {
        Self::make(None, None, Some(reload))
    }
    fn make(clock: Option<Arc<dyn Clock>>, life: Option<Duration>, reload: Option<Duration>) -> Self {
        ScriptedFetch(Arc::new(Script {
            clock,
            life,
            reload,
            calls: AtomicUsize::new(0),
            fail: AtomicBool::new(false),
            delay: Mutex::new(Duration::ZERO),
        }))
    }
    pub fn handle(&self) -> Self {
        self.clone()
    }
    pub fn calls(&self) -> usize {
        self.0.calls.load(Ordering::SeqCst)
    }
    pub fn fail(&self, yes: bool) {
        self.0.fail.store(yes, Ordering::SeqCst);
    }
    pub fn set_delay(&self, d: Duration) {
        *self.0.delay.lock().unwrap() = d;
    }
}

#[async_trait::async_trait]
impl Fetch for ScriptedFetch {
    async fn fetch(&self) -> Result<Credentials, IdentityError> {
        let n = self.0.calls.fetch_add(1, Ordering::SeqCst);
        let delay = *self.0.delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if self.0.fail.load(Ordering::SeqCst) {
            return Err(IdentityError::transport("scripted", "down"));
        }
        let expiration = match (&self.0.clock, self.0.life) {
            (Some(c), Some(l)) => Some(c.now() + TimeDelta::from_std(l).unwrap()),
            _ => None,
        };
        Ok(Credentials {
            access_key_id: format!("STS.test{n}"),
            access_key_secret: format!("secret{n}").into(),
            security_token: expiration.map(|_| format!("token{n}").into()),
            expiration,
        })
    }
    fn source_name(&self) -> &'static str {
        "scripted"
    }
    fn reload_every(&self) -> Option<Duration> {
        self.0.reload
    }
}

/// One request a [`TestServer`] received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }
    /// Query and form body parameters together, decoded.
    pub fn params(&self) -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, String> =
            url::form_urlencoded::parse(self.query.as_deref().unwrap_or("").as_bytes())
                .into_owned()
                .collect();
        out.extend(url::form_urlencoded::parse(&self.body).into_owned());
        out
    }
}

type Handler = dyn Fn(&Recorded) -> (u16, String) + Send + Sync;

/// An axum server on 127.0.0.1:0 that records every request and answers with `handler`.
pub struct TestServer {
    pub url: String,
    log: Arc<Mutex<Vec<Recorded>>>,
}

impl TestServer {
    pub async fn start(handler: impl Fn(&Recorded) -> (u16, String) + Send + Sync + 'static) -> Self {
        let handler: Arc<Handler> = Arc::new(handler);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let (log, handler) = (log2.clone(), handler.clone());
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
                let rec = Recorded {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_string(),
                    query: parts.uri.query().map(str::to_string),
                    headers: parts
                        .headers
                        .iter()
                        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
                        .collect(),
                    body: body.to_vec(),
                };
                let (status, body) = handler(&rec);
                log.lock().unwrap().push(rec);
                (axum::http::StatusCode::from_u16(status).unwrap(), body)
            }
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TestServer {
            url: format!("http://{addr}"),
            log,
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().clone()
    }
}

/// An STS success body for `id`, expiring `life` from now.
pub fn sts_success(id: &str, life: Duration) -> String {
    let exp = crate::sign::format_iso8601_extended(Utc::now() + TimeDelta::from_std(life).unwrap());
    format!(
        r#"{{"RequestId":"r-1","Credentials":{{"AccessKeyId":"{id}","AccessKeySecret":"sec-{id}","SecurityToken":"tok-{id}","Expiration":"{exp}"}}}}"#
    )
}

/// An STS client for `endpoint` with fast retries.
pub fn sts_client(endpoint: &str) -> Arc<crate::sts::StsClient> {
    let cfg: crate::config::StsConfig = toml::from_str(&format!(
        "endpoint = \"{endpoint}\"\nrole_arn = \"acs:ram::1:role/r\"\nretry_base_delay = \"5ms\"\nmax_retries = 1\n"
    ))
    .unwrap();
    Arc::new(crate::sts::StsClient::new(&cfg).unwrap())
}

pub fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
