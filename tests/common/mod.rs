//! Shared harness for the integration tests: the Python fake STS and the real
//! `ossvend` binary, each on an ephemeral loopback port, with their output captured.

#![allow(dead_code)] // each test file uses a different part of the harness

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub mod s3peer;

/// The fake caller key the fake STS accepts. Obviously not a real credential.
pub const CALLER_AK: &str = "LTAIfakeTestKeyId0001";
pub const CALLER_SECRET: &str = "fakeTestSecretDoNotUse0001";
pub const ROLE_ARN: &str = "acs:ram::1234567890123456:role/oss-upload";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn http() -> reqwest::Client {
    ossvend::sts::client::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// Lines a child process writes, collected by a background thread.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<String>>);

impl Captured {
    pub fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }
    fn spawn_reader<R: Read + Send + 'static>(
        &self,
        r: R,
        first_match: Option<(&'static str, mpsc::Sender<String>)>,
    ) {
        let buf = self.0.clone();
        std::thread::spawn(move || {
            let mut first = first_match;
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                if let Some((needle, tx)) = &first
                    && let Some(pos) = line.find(needle)
                {
                    // The address runs up to the first character that cannot be in it (JSON logs quote it).
                    let rest = &line[pos + needle.len()..];
                    let addr: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || ".:[]".contains(*c))
                        .collect();
                    let _ = tx.send(addr);
                    first = None;
                }
                let mut b = buf.lock().unwrap();
                b.push_str(&line);
                b.push('\n');
            }
        });
    }
    /// Waits until `needle` appears in the output.
    pub async fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.text().contains(needle) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

/// GETs a fake's control endpoint and returns the array under `field`.
async fn json_list(client: &reqwest::Client, url: String, field: &str) -> Vec<Value> {
    let v: Value = client.get(url).send().await.unwrap().json().await.unwrap();
    v[field]
        .as_array()
        .unwrap_or_else(|| panic!("no {field} array in {v}"))
        .clone()
}

/// `tests/fakes/fake_sts.py` on an ephemeral port; killed on drop.
pub struct FakeSts {
    child: Child,
    pub endpoint: String,
    pub output: Captured,
    client: reqwest::Client,
}

impl FakeSts {
    pub fn start() -> FakeSts {
        Self::start_with_keys(&[])
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let r = self
            .client
            .post(format!("{}{path}", self.endpoint))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "fake STS control {path}: {}", r.status());
        r.json().await.unwrap()
    }

    /// Every AssumeRole request received so far.
    pub async fn calls(&self) -> Vec<Value> {
        json_list(&self.client, format!("{}/_fake/calls", self.endpoint), "calls").await
    }

    pub async fn call_count(&self) -> usize {
        self.calls().await.len()
    }

    /// Queues behaviours for the next verified calls (see the fake's docstring).
    pub async fn script(&self, responses: Value) {
        self.post("/_fake/script", json!({ "responses": responses }))
            .await;
    }

    /// Sets the behaviour used when the script is empty (`{}` = normal).
    pub async fn mode(&self, behaviour: Value) {
        self.post("/_fake/mode", behaviour).await;
    }

    /// Waits until at least `n` calls were recorded.
    pub async fn wait_calls(&self, n: usize, timeout: Duration) -> usize {
        let start = Instant::now();
        loop {
            let c = self.call_count().await;
            if c >= n || start.elapsed() > timeout {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for FakeSts {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A config with two grants, pointed at `sts_endpoint`, listening on an ephemeral port.
pub fn config(sts_endpoint: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
default_grant = "browser-upload"

[identity]
source = "env"

[sts]
endpoint = "{sts_endpoint}"
role_arn = "{ROLE_ARN}"
max_retries = 2
retry_base_delay = "10ms"

[[grants]]
name = "browser-upload"
bucket = "examplebucket"
region = "cn-hangzhou"
prefix = "uploads/"
actions = ["oss:PutObject"]

[[grants]]
name = "avatars"
bucket = "examplebucket"
region = "cn-hangzhou"
prefix = "avatars/"
actions = ["oss:PutObject", "oss:GetObject"]
duration_seconds = 7200
session_name = "avatars-session"
"#
    )
}

/// The real `ossvend` binary; killed on drop. Its whole stderr (the logs) is kept.
pub struct Server {
    child: Child,
    pub base: String,
    pub logs: Captured,
    _dir: tempfile::TempDir,
}

pub struct ServerOptions<'a> {
    pub config: String,
    pub env: Vec<(&'a str, &'a str)>,
}

impl<'a> ServerOptions<'a> {
    pub fn new(config: String) -> Self {
        ServerOptions {
            config,
            env: Vec::new(),
        }
    }
    pub fn env(mut self, k: &'a str, v: &'a str) -> Self {
        self.env.push((k, v));
        self
    }
}

/// The command with a clean environment: only what the test sets, plus the caller key
/// (which the test's own `env` may override).
pub fn ossvend_command(dir: &Path, config: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut all = vec![
        ("ALIBABA_CLOUD_ACCESS_KEY_ID", CALLER_AK),
        ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", CALLER_SECRET),
    ];
    all.extend_from_slice(env);
    ossvend_command_bare(dir, config, args, &all)
}

impl Server {
    pub fn start(config: String) -> Server {
        Self::start_with(ServerOptions::new(config))
    }

    pub fn start_with(opts: ServerOptions<'_>) -> Server {
        Self::try_start_opts(opts, true).unwrap_or_else(|logs| panic!("ossvend did not start; logs:\n{logs}"))
    }

    /// Spawns `cmd` (which owns `dir`) with its stderr captured and waits up to 30 s
    /// for `marker` followed by the address; `Err(logs)` when it exits or never says it.
    pub fn spawn_listening(
        cmd: &mut Command,
        dir: tempfile::TempDir,
        marker: &'static str,
    ) -> Result<Server, String> {
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let logs = Captured::default();
        let (tx, rx) = mpsc::channel();
        logs.spawn_reader(child.stderr.take().unwrap(), Some((marker, tx)));
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100)); // let the reader drain
                return Err(logs.text());
            }
        };
        Ok(Server {
            child,
            base: format!("http://{addr}"),
            logs,
            _dir: dir,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "ossvend did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Python interpreter of the test venv (made by `scripts/test-deps`).
pub fn venv_python() -> PathBuf {
    let p = repo_root().join(".venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/test-deps (scripts/test does) first",
        p.display()
    );
    p
}

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
    _dir: tempfile::TempDir,
}

impl EmbeddedOss {
    pub fn start(sts: &FakeSts, key: Option<(&str, &str)>) -> EmbeddedOss {
        use ossvend::local::{LocalState, RootKey};
        let dir = tempfile::tempdir().unwrap();
        let mut state = LocalState::new(dir.path().to_path_buf());
        if let Some((ak, sk)) = key {
            state.root = RootKey {
                access_key_id: ak.to_string(),
                access_key_secret: sk.to_string(),
            };
        }
        let state = Arc::new(state);
        let sts_url = sts.endpoint.clone();
        let synced = state.clone();
        // The sink, and the listing `ossvend local` serves (`/_local/objects`), on one port.
        let app = ossvend::local::oss::router(state.clone())
            .merge(ossvend::local::store::objects_router(state.clone()))
            .layer(axum::middleware::from_fn(
                move |req: axum::extract::Request, next: axum::middleware::Next| {
                    let (sts_url, state) = (sts_url.clone(), synced.clone());
                    async move {
                        sync_sessions(&sts_url, &state).await;
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
async fn sync_sessions(sts_url: &str, state: &ossvend::local::LocalState) {
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

/// The `fields` object of a JSON body, in document order (a `serde_json::Value`
/// would sort it, and the order of form fields is part of the contract).
pub fn ordered_fields(raw: &str) -> Vec<(String, String)> {
    struct Fields(Vec<(String, String)>);
    impl<'de> serde::Deserialize<'de> for Fields {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Fields;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an object of strings")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Fields, A::Error> {
                    let mut out = Vec::new();
                    while let Some(kv) = m.next_entry::<String, String>()? {
                        out.push(kv);
                    }
                    Ok(Fields(out))
                }
            }
            d.deserialize_map(V)
        }
    }
    #[derive(serde::Deserialize)]
    struct Body {
        fields: Fields,
    }
    serde_json::from_str::<Body>(raw)
        .expect("a body with fields")
        .fields
        .0
}

// ---------------------------------------------------------------------------
// Identity sources (issue 5): the fake STS's AssumeRoleWithOIDC, instance
// metadata and credentials-URI endpoints, and servers started without the
// default caller key in their environment.
// ---------------------------------------------------------------------------

impl FakeSts {
    /// Like [`FakeSts::start`], also accepting these long-term caller keys
    /// (the default [`CALLER_AK`] stays accepted).
    pub fn start_with_keys(keys: &[(&str, &str)]) -> FakeSts {
        let mut cmd = Command::new("python3");
        cmd.arg(repo_root().join("tests/fakes/fake_sts.py"))
            .args(["--port", "0", "--max-session-duration", "43200"])
            .args(["--key", &format!("{CALLER_AK}:{CALLER_SECRET}")]);
        for (ak, sk) in keys {
            cmd.args(["--key", &format!("{ak}:{sk}")]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 must be installed to run the fake STS");
        let output = Captured::default();
        let (tx, rx) = mpsc::channel();
        output.spawn_reader(child.stdout.take().unwrap(), Some(("listening on ", tx)));
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("fake STS did not start");
        FakeSts {
            child,
            endpoint: format!("http://{addr}"),
            output,
            client: http(),
        }
    }

    /// Partial update of the fake instance metadata service (see the fake's docstring).
    pub async fn imds(&self, config: Value) -> Value {
        self.post("/_fake/imds", config).await
    }

    /// Requests the fake instance metadata service received.
    pub async fn imds_calls(&self) -> Vec<Value> {
        json_list(&self.client, format!("{}/_fake/imds", self.endpoint), "calls").await
    }

    /// Partial update of the fake credentials URI (`GET /creds`).
    pub async fn uri(&self, config: Value) -> Value {
        self.post("/_fake/uri", config).await
    }

    /// Requests the fake credentials URI received.
    pub async fn uri_calls(&self) -> Vec<Value> {
        json_list(&self.client, format!("{}/_fake/uri", self.endpoint), "calls").await
    }

    /// Partial update of AssumeRoleWithOIDC: `valid_tokens`, `mode`, `script`.
    pub async fn oidc(&self, config: Value) -> Value {
        self.post("/_fake/oidc", config).await
    }

    /// The secret half of a credential this fake issued (any source), if it did.
    pub async fn issued(&self, access_key_id: &str) -> Option<Value> {
        let r = self
            .client
            .get(format!("{}/_fake/issued/{access_key_id}", self.endpoint))
            .send()
            .await
            .unwrap();
        if r.status().is_success() {
            Some(r.json().await.unwrap())
        } else {
            None
        }
    }

    /// Every secret and security token this fake issued so far (STS, OIDC, IMDS, URI).
    pub async fn issued_secrets(&self) -> Vec<String> {
        let mut aks: Vec<String> = Vec::new();
        for c in self
            .calls()
            .await
            .into_iter()
            .chain(self.imds_calls().await)
            .chain(self.uri_calls().await)
        {
            if let Some(ak) = c["access_key_id_issued"].as_str() {
                aks.push(ak.to_string());
            }
        }
        let mut out = Vec::new();
        for ak in aks {
            if let Some(v) = self.issued(&ak).await {
                for field in ["AccessKeySecret", "SecurityToken"] {
                    out.push(v[field].as_str().unwrap().to_string());
                }
            }
        }
        out
    }
}

/// [`ossvend_command`] without the default caller key: only PATH, RUST_LOG and `env`.
pub fn ossvend_command_bare(dir: &Path, config: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
    let path = dir.join("ossvend.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ossvend"));
    cmd.args(args)
        .arg("--config")
        .arg(&path)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

impl Server {
    /// Starts `ossvend serve` WITHOUT `ALIBABA_CLOUD_ACCESS_KEY_ID/SECRET` in its
    /// environment (only PATH, RUST_LOG and `opts.env`); panics if it does not start.
    pub fn start_bare(opts: ServerOptions<'_>) -> Server {
        Self::try_start_opts(opts, false)
            .unwrap_or_else(|logs| panic!("ossvend did not start; logs:\n{logs}"))
    }

    /// Starts `ossvend serve`, with (`caller_key`) or without the default caller key;
    /// `Err(logs)` when it exits or does not listen within 30 s.
    pub fn try_start_opts(opts: ServerOptions<'_>, caller_key: bool) -> Result<Server, String> {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = if caller_key {
            ossvend_command(dir.path(), &opts.config, &["serve"], &opts.env)
        } else {
            ossvend_command_bare(dir.path(), &opts.config, &["serve"], &opts.env)
        };
        Self::spawn_listening(&mut cmd, dir, "ossvend listening on http://")
    }
}

/// True if a log line has `key` = `value` in any of tracing's renderings:
/// `key=value`, `key="value"` or JSON `"key":"value"`.
pub fn log_has_field(logs: &str, key: &str, value: &str) -> bool {
    logs.lines().any(|l| {
        l.contains(&format!("{key}=\"{value}\""))
            || l.contains(&format!("\"{key}\":\"{value}\""))
            || l.split(|c: char| c.is_whitespace() || c == ',')
                .any(|w| w == format!("{key}={value}"))
    })
}

// ---------------------------------------------------------------------------
// Real clients (issue 6): ali-oss under Node (tests/clients/), the Python
// credentials SDKs and boto3 (.venv), each run as a child process with a
// clean environment and a bounded run time.
// ---------------------------------------------------------------------------

/// `tests/clients/`: the Node project with the pinned ali-oss, and the client scripts.
pub fn clients_dir() -> PathBuf {
    repo_root().join("tests/clients")
}

/// Fails (never skips) when a real client is not installed: `scripts/test-deps`
/// installs ali-oss (tests/clients/node_modules) and the Python clients (.venv).
pub fn require_client_deps() {
    let mut missing = Vec::new();
    let node_ok = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !node_ok {
        missing.push("node on PATH".to_string());
    }
    let alioss = clients_dir().join("node_modules/ali-oss/package.json");
    match std::fs::read_to_string(&alioss) {
        Ok(text) if text.contains("\"version\": \"6.23.0\"") => {}
        Ok(_) => missing.push(format!("{} is not ali-oss 6.23.0", alioss.display())),
        Err(_) => missing.push(format!("{} (npm ci in tests/clients)", alioss.display())),
    }
    let python = repo_root().join(".venv/bin/python");
    let imports_ok = python.exists()
        && Command::new(&python)
            .args([
                "-c",
                "import boto3, alibabacloud_credentials, alibabacloud_oss_v2",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !imports_ok {
        missing.push(format!(
            "{} with boto3, alibabacloud-credentials and alibabacloud-oss-v2",
            python.display()
        ));
    }
    assert!(
        missing.is_empty(),
        "the client tests need {}: run scripts/test-deps first (scripts/test does)",
        missing.join(", ")
    );
}

/// `program` with an empty environment but `PATH` and `HOME=home`: no credential
/// variable or profile of the machine running the tests can leak into a client.
pub fn client_command(program: impl AsRef<std::ffi::OsStr>, home: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("LANG", "C.UTF-8");
    cmd
}

/// What a client process printed (stdout and stderr, interleaved) and how it ended.
#[derive(Debug)]
pub struct ClientRun {
    /// `None`: killed after the time limit.
    pub code: Option<i32>,
    pub output: String,
}

impl ClientRun {
    pub fn succeeded(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs `cmd` to completion, or kills it after `timeout`. Output goes to a file
/// (a pipe could fill up while nobody reads it). Blocks the calling thread.
pub fn run_client(mut cmd: Command, timeout: Duration) -> ClientRun {
    let out = tempfile::NamedTempFile::new().unwrap();
    // One append-mode handle shared by both streams: nothing overwrites anything.
    let file = std::fs::OpenOptions::new().append(true).open(out.path()).unwrap();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let start = Instant::now();
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s.code().unwrap_or(-1));
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    ClientRun {
        code,
        output: std::fs::read_to_string(out.path()).unwrap_or_default(),
    }
}

/// `ossvend local` on free loopback ports; killed on drop (through `server`).
pub struct LocalServer {
    pub server: Server,
    /// The embedded OSS sink's endpoint, e.g. `http://127.0.0.1:41234`.
    pub oss: String,
    pub data_dir: PathBuf,
}

impl LocalServer {
    /// Runs `ossvend local --listen 127.0.0.1:0 --data-dir <temp> [--config <config>] extra…`
    /// with only PATH and RUST_LOG in its environment; panics if it does not start.
    pub fn start(config: Option<&str>, extra: &[&str]) -> LocalServer {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ossvend"));
        cmd.args(["local", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .args(extra)
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info");
        if let Some(text) = config {
            let path = dir.path().join("local.toml");
            std::fs::write(&path, text).unwrap();
            cmd.arg("--config").arg(path);
        }
        let server = Server::spawn_listening(&mut cmd, dir, "ossvend local listening on http://")
            .unwrap_or_else(|logs| panic!("ossvend local did not start; logs:\n{logs}"));
        let logs = &server.logs;
        // The same log line names the sink: oss=http://127.0.0.1:PORT, or
        // "oss":"http://…" in JSON logs (the reader reports the address before it
        // stores the line, so wait for the text).
        let start = Instant::now();
        let needle = || {
            let text = logs.text();
            ["oss=http://", "\"oss\":\"http://"]
                .into_iter()
                .find(|n| text.contains(n))
        };
        while needle().is_none() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let text = logs.text();
        let oss: String = text
            .split(needle().unwrap_or("oss=http://"))
            .nth(1)
            .map(|rest| {
                rest.chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || ".:[]".contains(*c))
                    .collect()
            })
            .unwrap_or_else(|| panic!("no oss= in the start-up line:\n{text}"));
        LocalServer {
            server,
            oss: format!("http://{oss}"),
            data_dir,
        }
    }
}

// ---------------------------------------------------------------------------
// Operations (issue 8): rewriting the config of a running server, signals,
// the admin listener.
// ---------------------------------------------------------------------------

impl Server {
    /// The config file the server was started with.
    pub fn config_path(&self) -> PathBuf {
        self._dir.path().join("ossvend.toml")
    }

    /// Replaces the config file atomically (write, then rename), so a reload
    /// never reads half a file.
    pub fn rewrite_config(&self, text: &str) {
        let tmp = self._dir.path().join("ossvend.toml.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.config_path()).unwrap();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`HUP`, `TERM`, ...).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{name} failed");
    }

    /// `http://ADDR` of the admin listener, from its start-up log line.
    pub fn admin_base(&self) -> String {
        let text = self.logs.text();
        let needle = "ossvend admin listening on http://";
        let rest = text
            .split(needle)
            .nth(1)
            .unwrap_or_else(|| panic!("no admin listener in the logs:\n{text}"));
        let addr: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || ".:[]".contains(*c))
            .collect();
        format!("http://{addr}")
    }
}

impl Captured {
    /// How many lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.text().lines().filter(|l| l.contains(needle)).count()
    }
}
