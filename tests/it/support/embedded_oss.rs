//! The embedded OSS sink of `ossvend local`, in this process, trusting what the fake STS issued.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use super::fake_sts::json_list;
use ossvend::local::LocalState;

use super::{FakeSts, ROLE_ARN, StsStub, http};

/// The embedded OSS sink of `ossvend local` (`ossvend::local::oss`), in this
/// process on an ephemeral loopback port, accepting what the fake STS issued
/// (fetched from its `/_fake/calls` and `/_fake/issued/<ak>` before each request,
/// with the session policy sent) and, with `key`, one long-term AccessKey. Stops
/// when dropped.
pub struct EmbeddedOss {
    pub endpoint: String,
    state: Arc<ossvend::local::LocalState>,
    requests: SinkLog,
    _shutdown: tokio::sync::oneshot::Sender<()>,
    _dir: Option<tempfile::TempDir>,
}

impl EmbeddedOss {
    #[allow(dead_code)] // the tests use `for_stub` now; kept for tests folded in later
    pub fn start(sts: &FakeSts, key: Option<(&str, &str)>) -> EmbeddedOss {
        use ossvend::local::RootKey;
        let dir = tempfile::tempdir().unwrap();
        let mut state = LocalState::new(dir.path().to_path_buf());
        if let Some((ak, sk)) = key {
            state.root = RootKey {
                access_key_id: ak.to_string(),
                access_key_secret: sk.to_string(),
            };
        }
        Self::serve(Arc::new(state), Some(sts.endpoint.clone()), Some(dir))
    }

    /// The sink sharing the in-process STS's state: it knows every credential the
    /// STS issued as soon as it is issued, and the STS's caller key as its root key.
    pub fn for_stub(sts: &StsStub) -> EmbeddedOss {
        Self::serve(sts.local.clone(), None, None)
    }

    /// Serves `state`'s sink (copying what the Python fake at `sync_from` issued
    /// before each request) on an ephemeral port.
    fn serve(
        state: Arc<LocalState>,
        sync_from: Option<String>,
        dir: Option<tempfile::TempDir>,
    ) -> EmbeddedOss {
        let synced = state.clone();
        // The sink, and the listing `ossvend local` serves (`/_local/objects`), on one port.
        let app = ossvend::local::oss::router(state.clone())
            .merge(ossvend::local::store::objects_router(state.clone()))
            .layer(axum::middleware::from_fn(
                move |req: axum::extract::Request, next: axum::middleware::Next| {
                    let (sync_from, state) = (sync_from.clone(), synced.clone());
                    async move {
                        if let Some(url) = sync_from {
                            sync_sessions(&url, &state).await;
                        }
                        next.run(req).await
                    }
                },
            ));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let requests = SinkLog::default();
        let layer = requests.clone();
        // One thread: the sink's per-request log line is recorded by this thread's subscriber.
        std::thread::spawn(move || {
            use tracing_subscriber::layer::SubscriberExt as _;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let subscriber = tracing_subscriber::registry().with(layer);
            tracing::subscriber::with_default(subscriber, || {
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async move {
                            let _ = rx.await;
                        })
                        .await;
                })
            });
        });
        EmbeddedOss {
            endpoint,
            state,
            requests,
            _shutdown: tx,
            _dir: dir,
        }
    }

    /// The stored bytes of an object, if it exists.
    pub async fn object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        ossvend::local::store::read_object(&self.state.data_dir, bucket, key)
            .unwrap()
            .map(|(_, bytes)| bytes)
    }

    pub async fn objects(&self) -> Vec<ossvend::local::store::ObjectMeta> {
        ossvend::local::store::list_objects(&self.state.data_dir).unwrap()
    }

    /// Every request the sink answered, in order, from its `local OSS request` log
    /// line: `method`, `bucket`, `key`, `query` (the operation parameters), `status`,
    /// `verdict` ("OK" or the error code), `auth` (the scheme) and `access_key_id`
    /// (as logged: the first 8 characters and `…`).
    pub async fn requests(&self) -> Vec<Value> {
        self.requests.0.lock().unwrap().clone()
    }

    /// The requests, one line each, for failure messages.
    pub fn log_text(&self) -> String {
        self.requests
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|r| format!("{r}\n"))
            .collect()
    }
}

/// Records the sink's `local OSS request` events as JSON objects.
#[derive(Clone, Default)]
struct SinkLog(Arc<Mutex<Vec<Value>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for SinkLog {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: tracing_subscriber::layer::Context<'_, S>) {
        struct Fields(serde_json::Map<String, Value>);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0
                    .insert(field.name().into(), Value::String(format!("{value:?}")));
            }
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                self.0.insert(field.name().into(), Value::String(value.into()));
            }
            fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
                self.0.insert(field.name().into(), json!(value));
            }
            fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
                self.0.insert(field.name().into(), json!(value));
            }
        }
        let mut f = Fields(serde_json::Map::new());
        event.record(&mut f);
        if f.0.get("message").and_then(Value::as_str) != Some("local OSS request") {
            return;
        }
        let ops = f.0.get("ops").and_then(Value::as_str).unwrap_or("").to_string();
        let query: Vec<&str> = ops.split('&').filter(|o| !o.is_empty()).collect();
        f.0.insert("query".into(), json!(query));
        self.0.lock().unwrap().push(Value::Object(f.0));
    }
}

/// Copies every credential the fake STS issued that the sink does not know yet.
async fn sync_sessions(sts_url: &str, state: &LocalState) {
    let client = http();
    let calls = json_list(&client, format!("{sts_url}/_fake/calls"), "calls").await;
    for ak in calls.iter().filter_map(|c| c["access_key_id_issued"].as_str()) {
        if state.sessions.get(ak).is_some() {
            continue;
        }
        let r = client
            .get(format!("{sts_url}/_fake/issued/{ak}"))
            .send()
            .await
            .unwrap();
        if !r.status().is_success() {
            continue;
        }
        let issued: Value = r.json().await.unwrap();
        let policy = issued["Policy"]
            .as_str()
            .map(|p| serde_json::from_str(p).expect("the fake STS keeps the policy as sent"));
        state.sessions.insert(ossvend::local::Session {
            access_key_id: ak.to_string(),
            access_key_secret: issued["AccessKeySecret"].as_str().unwrap().to_string(),
            security_token: issued["SecurityToken"].as_str().unwrap().to_string(),
            expiration: chrono::DateTime::parse_from_rfc3339(issued["Expiration"].as_str().unwrap())
                .unwrap()
                .to_utc(),
            policy,
            role_arn: ROLE_ARN.to_string(),
            session_name: "fake-sts".to_string(),
        });
    }
}
