//! `ossvend local`: the whole upload flow on one machine with no cloud account.
//!
//! A development tool, never a production mode: an STS emulator (`sts`) mints
//! temporary credentials with the caller's session policy, and an OSS-compatible
//! sink (`oss`) accepts uploads made with them only if real OSS would — it checks
//! signatures with `crate::sign`, the security token, expiry and the session
//! policy — and stores the bytes under the data directory. Both refuse to be
//! reached from anything but loopback.
//!
//! Its parts: `sts` (the AssumeRole emulator) and `session` (what it minted);
//! `oss` (the sink's HTTP side: routing and CORS in `oss/mod.rs`, bodies,
//! PostObject forms, the operations); `verify` (authentication: `v1`, `v4`,
//! PostObject `post`); `access` (session policies); `store` (objects on disk and
//! the listing); `error` (OSS's error codes and XML). Behind the cargo feature
//! `local` (on by default).

pub mod access;
pub mod error;
pub mod oss;
pub mod session;
pub mod store;
pub mod sts;
pub mod verify;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use axum::http::header;
use axum::response::Json;
use axum::routing::get;
use chrono::{DateTime, Utc};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::config::{self, Config, PostVersion, PresignScheme};
use crate::credentials::{KeyId, Redact};
use crate::state::AppState;

pub use session::{Session, Sessions};

/// The emulated account's long-lived key: what ossvend itself uses to call the
/// STS emulator (and what `signing = "access_key"` grants sign with). Random per
/// process, so nothing outside this process can ever have it.
#[derive(Clone)]
pub struct RootKey {
    pub access_key_id: String,
    pub access_key_secret: String,
}

impl fmt::Debug for RootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootKey")
            .field("access_key_id", &KeyId(&self.access_key_id))
            .field("access_key_secret", &Redact)
            .finish()
    }
}

impl RootKey {
    pub fn generate() -> Self {
        RootKey {
            access_key_id: format!("LTAIlocal{}", sts::alnum(15)),
            access_key_secret: sts::alnum(30),
        }
    }
}

/// Injectable time, so expiry checks can be tested without sleeping.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// Shared by the STS emulator, the OSS sink and the object listing.
pub struct LocalState {
    pub root: RootKey,
    pub sessions: Sessions,
    /// Objects live in `<data_dir>/objects/<bucket>/<key>`, multipart parts in `<data_dir>/uploads/`.
    pub data_dir: PathBuf,
    /// The emulated account id in role ARNs (`acs:ram::<account>:role/...`).
    pub account_id: String,
    /// Largest single PutObject / PostObject / part body the sink accepts (OSS: 5 GiB).
    pub max_object_bytes: u64,
    pub clock: Clock,
    /// Signs upload callbacks as OSS does, with a key made on first use.
    pub callbacks: oss::callback::Signer,
}

impl LocalState {
    pub fn new(data_dir: PathBuf) -> Self {
        LocalState {
            root: RootKey::generate(),
            sessions: Sessions::default(),
            data_dir,
            account_id: "1000000000000001".into(),
            max_object_bytes: 100 * 1024 * 1024,
            clock: Arc::new(Utc::now),
            callbacks: oss::callback::Signer::default(),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }
}

// ---------------------------------------------------------------------------
// The runner: `ossvend local`
// ---------------------------------------------------------------------------

/// The ready config (`config/ossvend.local.toml`), built in so the binary works anywhere.
pub const READY_CONFIG: &str = include_str!("../../config/ossvend.local.toml");

/// The demo page, built in for when `static_dir` does not exist (an installed binary).
const EMBEDDED_STATIC: [(&str, &str, &str); 3] = [
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../../static/index.html"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../static/app.js"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_str!("../../static/style.css"),
    ),
];

#[derive(Debug, Clone)]
pub struct Options {
    /// Main listener: the ossvend routes, the demo page, the STS emulator, the listing.
    pub listen: String,
    /// The OSS sink's own listener (SDKs cannot use an endpoint with a path);
    /// default: the next port after `listen` (or any free port when `listen` uses 0).
    pub oss_listen: Option<String>,
    pub data_dir: PathBuf,
    /// A config to use instead of the ready one.
    pub config: Option<PathBuf>,
    /// Give grants without `[grants.callback]` one to this process's receiver
    /// (default on; `--no-callbacks` turns it off).
    pub callbacks: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            listen: "127.0.0.1:8000".into(),
            oss_listen: None,
            data_dir: PathBuf::from(".ossvend-local"),
            config: None,
            callbacks: true,
        }
    }
}

/// A loopback socket address; `localhost` means 127.0.0.1. Anything else is
/// refused: the emulators accept any upload they can verify, which is only
/// acceptable on one's own machine.
pub fn loopback_addr(value: &str, what: &str) -> Result<SocketAddr, String> {
    let value = value.trim();
    let addr = match value.strip_prefix("localhost:") {
        Some(port) => port
            .parse::<u16>()
            .map(|p| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p))
            .map_err(|_| format!("{what}: {value:?} is not HOST:PORT"))?,
        None => value
            .parse::<SocketAddr>()
            .map_err(|_| format!("{what}: {value:?} is not IP:PORT (e.g. 127.0.0.1:8000)"))?,
    };
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{what}: local mode is a development tool and binds loopback only, not {}",
            addr.ip()
        ));
    }
    Ok(addr)
}

/// True when the environment names a cloud identity, so `ossvend serve` with no
/// config must not silently fall back to local mode.
pub fn env_has_cloud_identity(env: &BTreeMap<String, String>) -> bool {
    const NAMES: [&str; 7] = [
        "ALIBABA_CLOUD_ACCESS_KEY_ID",
        "ALIBABA_CLOUD_OIDC_TOKEN_FILE",
        "ALIBABA_CLOUD_ROLE_ARN",
        "ALIBABA_CLOUD_CREDENTIALS_URI",
        "ALIBABA_CLOUD_ECS_METADATA",
        "OSSVEND_IDENTITY_SOURCE",
        "OSSVEND_CONFIG",
    ];
    NAMES.iter().any(|n| env.get(*n).is_some_and(|v| !v.is_empty()))
}

/// `server.log_format` of the config local mode will use (`OSSVEND_SERVER_LOG_FORMAT`
/// applies), read before logging starts; text when the config does not load (its
/// problems are reported as usual once it is loaded for real).
pub fn log_format(opts: &Options, env: &BTreeMap<String, String>) -> config::LogFormat {
    let text = match &opts.config {
        Some(p) => std::fs::read_to_string(p).ok(),
        None => Some(READY_CONFIG.to_string()),
    };
    text.and_then(|t| config::parse(&t, env).ok())
        .map_or(config::LogFormat::Text, |c| c.server.log_format)
}

/// Loads the config (the ready one unless `opts.config`) and points it at the
/// emulators. Every problem is returned at once.
pub fn local_config(
    opts: &Options,
    main: SocketAddr,
    oss: SocketAddr,
    env: &BTreeMap<String, String>,
) -> Result<Config, Vec<String>> {
    let (origin, text) = match &opts.config {
        Some(p) => (
            p.display().to_string(),
            std::fs::read_to_string(p).map_err(|e| vec![format!("cannot read {}: {e}", p.display())])?,
        ),
        None => (
            "built-in config/ossvend.local.toml".to_string(),
            READY_CONFIG.to_string(),
        ),
    };
    let mut cfg = config::parse(&text, env).map_err(|e| vec![format!("{origin}: {e}")])?;
    let mut problems = Vec::new();
    cfg.server.listen = main.to_string();
    cfg.identity = toml::from_str("source = \"env\"").expect("a fixed identity table");
    cfg.sts.endpoint = Some(format!("http://{main}{}", sts::PATH));
    cfg.sts.region = None;
    cfg.sts.vpc = None;
    for (i, g) in cfg.grants.iter_mut().enumerate() {
        g.endpoint = Some(format!("http://{oss}"));
        if g.presign_scheme == PresignScheme::S3V4 || g.post_version == PostVersion::S3V4 {
            problems.push(format!(
                "{origin}: grants[{i}] ({}): local mode's sink speaks the OSS API (V1/V4), not the S3-compatible one",
                g.name
            ));
        }
    }
    // A frontend on its own dev server (http://localhost:5173, …) calls local mode.
    cfg.cors.allow_loopback_origins = true;
    // The sink signs its upload callbacks with a key it publishes on its own
    // listener; the receiver trusts that URL in this process only.
    cfg.webhooks.local_key_url = Some(format!("http://{oss}/"));
    default_callbacks(&mut cfg, main, opts.callbacks);
    if let Some(dir) = &cfg.server.static_dir
        && !dir.is_dir()
    {
        cfg.server.static_dir = None;
    }
    problems.extend(
        crate::check::config(&cfg, env)
            .iter()
            .map(|p| format!("{origin}: {p}")),
    );
    if problems.is_empty() {
        Ok(cfg)
    } else {
        Err(problems)
    }
}

/// The receiver URL the sink calls back in local mode.
pub fn callback_url(main: SocketAddr) -> String {
    format!("http://{main}/v1/callbacks/oss")
}

/// Local mode shows the whole loop: every OSS-API grant without its own
/// `[grants.callback]` gets one to this process's receiver, and with no
/// `[webhooks] url` (no application) the receiver answers with the verified
/// event itself (`local_echo`), which OSS hands to the uploader.
/// With `add` off (`--no-callbacks`) only the grants' own callbacks remain.
fn default_callbacks(cfg: &mut Config, main: SocketAddr, add: bool) {
    for g in cfg.grants.iter_mut().filter(|_| add) {
        let s3 = g.presign_scheme == PresignScheme::S3V4 || g.post_version == PostVersion::S3V4;
        if g.callback.is_none() && !s3 {
            g.callback = Some(config::CallbackConfig {
                url: callback_url(main),
                host: None,
                body_type: config::CallbackBodyType::Json,
                sni: false,
            });
        }
    }
    cfg.webhooks.local_echo = cfg.webhooks.url.is_none();
}

/// One line for the start-up log: what happens after an upload in local mode.
pub fn callbacks_summary(cfg: &Config) -> String {
    let with: Vec<&str> = cfg
        .grants
        .iter()
        .filter(|g| g.callback.is_some())
        .map(|g| g.name.as_str())
        .collect();
    if with.is_empty() {
        return "upload callbacks: off (no grant has one; --no-callbacks)".into();
    }
    let to = match &cfg.webhooks.url {
        Some(url) => format!("delivered as signed webhooks to {url}"),
        None => "answered to the uploader as the upload's response (no [webhooks] url)".into(),
    };
    format!(
        "upload callbacks: the sink calls back after form, presigned and session uploads of {}; verified events are {to}",
        with.join(", ")
    )
}

/// The environment ossvend sees in local mode: the caller's, minus any cloud
/// identity, plus the random root key.
fn local_env(env: &BTreeMap<String, String>, root: &RootKey) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = env
        .iter()
        .filter(|(k, _)| !k.starts_with("ALIBABA_CLOUD_") && !k.starts_with("OSSVEND_IDENTITY_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.insert("ALIBABA_CLOUD_ACCESS_KEY_ID".into(), root.access_key_id.clone());
    env.insert(
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET".into(),
        root.access_key_secret.clone(),
    );
    env
}

/// Runs local mode until Ctrl-C / SIGTERM.
pub async fn run(opts: Options, env: &BTreeMap<String, String>) -> Result<(), Vec<String>> {
    let main_addr = loopback_addr(&opts.listen, "--listen").map_err(|e| vec![e])?;
    let oss_addr = match &opts.oss_listen {
        Some(v) => loopback_addr(v, "--oss-listen").map_err(|e| vec![e])?,
        None if main_addr.port() == 0 => SocketAddr::new(main_addr.ip(), 0),
        None => SocketAddr::new(main_addr.ip(), main_addr.port().saturating_add(1)),
    };
    let main_listener = TcpListener::bind(main_addr)
        .await
        .map_err(|e| vec![format!("--listen: cannot bind {main_addr}: {e}")])?;
    let oss_listener = TcpListener::bind(oss_addr).await.map_err(|e| {
        vec![format!(
            "--oss-listen: cannot bind {oss_addr}: {e} (choose another with --oss-listen)"
        )]
    })?;
    let (main_addr, oss_addr) = (
        main_listener.local_addr().map_err(|e| vec![e.to_string()])?,
        oss_listener.local_addr().map_err(|e| vec![e.to_string()])?,
    );

    std::fs::create_dir_all(&opts.data_dir).map_err(|e| {
        vec![format!(
            "--data-dir: cannot create {}: {e}",
            opts.data_dir.display()
        )]
    })?;
    let data_dir = std::fs::canonicalize(&opts.data_dir).unwrap_or(opts.data_dir.clone());
    let local = Arc::new(LocalState::new(data_dir.clone()));
    let env = local_env(env, &local.root);
    let cfg = local_config(&opts, main_addr, oss_addr, &env)?;
    let embedded_page = cfg.server.static_dir.is_none();
    let connections =
        crate::connections::Connections::new(crate::connections::ConnectionLimits::from_config(&cfg.server));
    let grants: Vec<String> = cfg.grants.iter().map(|g| g.name.clone()).collect();
    let callbacks = callbacks_summary(&cfg);
    let status = serde_json::json!({
        "mode": "local",
        "warning": "development only: uploads go to the embedded OSS sink on this machine, not to Alibaba Cloud",
        "sts_endpoint": cfg.sts.endpoint(),
        "oss_endpoint": format!("http://{oss_addr}"),
        "data_dir": data_dir.display().to_string(),
        "objects": "/_local/objects",
        "grants": grants,
        "callbacks": callbacks,
    });
    let state = AppState::build(cfg, &env).await.map_err(|e| vec![e])?;

    let mut router = crate::routes::app(state)
        .merge(sts::router(local.clone()))
        .merge(store::objects_router(local.clone()))
        .route("/_local/status", get(move || async move { Json(status) }));
    if embedded_page {
        for (path, content_type, body) in EMBEDDED_STATIC {
            router = router.route(
                path,
                get(move || async move { ([(header::CONTENT_TYPE, content_type)], body) }),
            );
        }
    }
    let sink = oss::router(local.clone());

    warn!(
        "LOCAL MODE: a development tool — STS and OSS are emulated in this process; nothing reaches Alibaba Cloud"
    );
    info!(
        demo_page = %format!("http://{main_addr}/"),
        sts = %format!("http://{main_addr}{}", sts::PATH),
        oss = %format!("http://{oss_addr}"),
        objects = %format!("http://{main_addr}/_local/objects"),
        data_dir = %data_dir.display(),
        embedded_page,
        cors = "any loopback origin (http://localhost:*, http://127.0.0.1:*, http://[::1]:*)",
        "ossvend local listening on http://{main_addr}/ (uploads land in {})",
        data_dir.display()
    );
    info!("{callbacks}");
    let served = tokio::try_join!(
        crate::server::serve(router, main_listener, &connections),
        crate::server::serve(sink, oss_listener, &connections),
    );
    info!("ossvend local stopped");
    served.map(|_| ()).map_err(|e| vec![format!("server error: {e}")])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_with_root() -> BTreeMap<String, String> {
        local_env(&BTreeMap::new(), &RootKey::generate())
    }

    #[test]
    fn only_loopback_addresses_are_accepted() {
        assert_eq!(
            loopback_addr("localhost:8000", "--listen").unwrap(),
            "127.0.0.1:8000".parse().unwrap()
        );
        assert!(loopback_addr("[::1]:0", "--listen").is_ok());
        let e = loopback_addr("0.0.0.0:8000", "--listen").unwrap_err();
        assert!(e.contains("loopback"), "{e}");
        assert!(loopback_addr("192.168.1.10:8000", "--listen").is_err());
        assert!(loopback_addr("example.com:80", "--listen").is_err());
    }

    #[test]
    fn the_ready_config_points_every_grant_at_the_emulators() {
        let main: SocketAddr = "127.0.0.1:18000".parse().unwrap();
        let oss: SocketAddr = "127.0.0.1:18001".parse().unwrap();
        let cfg = local_config(&Options::default(), main, oss, &env_with_root()).unwrap();
        assert_eq!(cfg.server.listen, "127.0.0.1:18000");
        assert_eq!(cfg.sts.endpoint(), "http://127.0.0.1:18000/_local/sts");
        assert_eq!(cfg.identity.source, crate::config::IdentitySource::Env);
        assert!(cfg.grants.len() >= 3);
        for g in &cfg.grants {
            assert_eq!(
                g.endpoint.as_deref(),
                Some("http://127.0.0.1:18001"),
                "{}",
                g.name
            );
        }
    }

    #[test]
    fn grants_call_back_by_default_and_a_grants_own_callback_is_kept() {
        let main: SocketAddr = "127.0.0.1:18000".parse().unwrap();
        let oss: SocketAddr = "127.0.0.1:18001".parse().unwrap();
        let cfg = local_config(&Options::default(), main, oss, &env_with_root()).unwrap();
        for g in &cfg.grants {
            let cb = g.callback.as_ref().unwrap();
            assert_eq!(cb.url, "http://127.0.0.1:18000/v1/callbacks/oss", "{}", g.name);
        }
        // No application: the receiver answers with the event.
        assert!(cfg.webhooks.local_echo && cfg.webhooks.url.is_none());
        assert!(callbacks_summary(&cfg).contains("answered to the uploader"));
        let off = Options {
            callbacks: false,
            ..Options::default()
        };
        let cfg = local_config(&off, main, oss, &env_with_root()).unwrap();
        assert!(cfg.grants.iter().all(|g| g.callback.is_none()));
        assert!(callbacks_summary(&cfg).starts_with("upload callbacks: off"));

        let dir = tempfile_dir();
        let path = dir.join("own.toml");
        let own = READY_CONFIG.to_string()
            + "\n[grants.callback]\nurl = \"https://hooks.example.com/v1/callbacks/oss\"\n\
               [webhooks]\nurl = \"https://app.example.com/hook\"\nsecret_env = \"HOOK_SECRET\"\n";
        std::fs::write(&path, own).unwrap();
        let opts = Options {
            config: Some(path),
            ..Options::default()
        };
        let mut env = env_with_root();
        env.insert(
            "HOOK_SECRET".into(),
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
        );
        let cfg = local_config(&opts, main, oss, &env).unwrap();
        let last = cfg.grants.last().unwrap();
        assert_eq!(
            last.callback.as_ref().unwrap().url,
            "https://hooks.example.com/v1/callbacks/oss"
        );
        // An application is configured: as in `serve`, events go to it.
        assert!(!cfg.webhooks.local_echo);
        assert!(
            callbacks_summary(&cfg).contains("delivered as signed webhooks to https://app.example.com/hook")
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn s3_grants_and_bad_configs_are_reported() {
        let dir = tempfile_dir();
        let path = dir.join("s3.toml");
        std::fs::write(
            &path,
            "[sts]\nrole_arn = \"acs:ram::1:role/r\"\n[[grants]]\nname = \"g\"\nbucket = \"b-1\"\n\
             region = \"cn-hangzhou\"\nprefix = \"p/\"\npresign_scheme = \"s3-v4\"\n",
        )
        .unwrap();
        let opts = Options {
            config: Some(path),
            ..Options::default()
        };
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let problems = local_config(&opts, a, a, &env_with_root()).unwrap_err();
        assert!(
            problems.iter().any(|p| p.contains("S3-compatible")),
            "{problems:?}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn cloud_identity_in_the_environment_is_noticed() {
        let mut env = BTreeMap::new();
        assert!(!env_has_cloud_identity(&env));
        env.insert("ALIBABA_CLOUD_ACCESS_KEY_ID".to_string(), "LTAIfake".to_string());
        assert!(env_has_cloud_identity(&env));
        // Local mode itself never sees the caller's cloud identity.
        let local = local_env(&env, &RootKey::generate());
        assert!(local["ALIBABA_CLOUD_ACCESS_KEY_ID"].starts_with("LTAIlocal"));
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("ossvend-local-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
