//! Where ossvend's own credentials come from: the identity that signs the
//! AssumeRole calls. It knows nothing about grants or HTTP routes.
//!
//! Every source is a [`Fetch`] (one attempt to obtain credentials) wrapped in a
//! [`Refreshing`] provider, which holds the last good credential, refreshes it
//! in the background ahead of expiry, single-flight, with backoff on failure:
//!
//! | source | module | kind |
//! |---|---|---|
//! | `env` | [`env`] | fixed AccessKey from the environment |
//! | `static` | [`static_key`] | key id in the file, secret from an env var or a file |
//! | `profile` | [`profile`] | Alibaba Cloud CLI `config.json` / credentials ini file |
//! | `ecs_ram_role` | [`ecs`] | instance metadata (IMDS, hardened mode) |
//! | `oidc` | [`oidc`] | Kubernetes RRSA: `AssumeRoleWithOIDC` |
//! | `credentials_uri` | [`uri`] | a local credentials endpoint |
//! | `ram_role_arn` | [`ram_role`] | AssumeRole into an intermediate role with another provider's key |
//! | `chain` | [`chain`] | the credentials SDKs' default chain |

pub mod chain;
pub mod check;
pub mod ecs;
pub mod env;
pub mod oidc;
pub mod profile;
pub mod ram_role;
pub mod refresh;
pub mod static_key;
pub mod uri;

use std::collections::BTreeMap;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use secrecy::SecretString;

use crate::config::{IdentityConfig, IdentitySource};
use crate::sts::{Clock, StsClient, StsError, StsErrorKind};

pub use refresh::{RefreshTimings, Refreshing, refresh_at};

pub use crate::credentials::{Credentials, key_id_prefix};

/// Why a source gave no credentials. The kind decides what happens next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The source is not set up here (variables or files absent); a chain moves on.
    NotConfigured,
    /// The source is set up wrongly (bad file, missing field, unreadable secret).
    Config,
    /// The remote end could not be reached or is unavailable (connect, timeout, 5xx).
    Transport,
    /// The remote end answered, but not with usable credentials.
    Rejected,
}

/// Never carries a secret: messages name variables, files and profiles only.
#[derive(Debug, Clone, thiserror::Error)]
#[error("identity source {source_name:?}: {message}")]
pub struct IdentityError {
    pub source_name: &'static str,
    pub kind: ErrorKind,
    pub message: String,
}

impl IdentityError {
    pub fn new(source_name: &'static str, kind: ErrorKind, message: impl Into<String>) -> Self {
        IdentityError {
            source_name,
            kind,
            message: message.into(),
        }
    }
    pub fn not_configured(source_name: &'static str, message: impl Into<String>) -> Self {
        Self::new(source_name, ErrorKind::NotConfigured, message)
    }
    pub fn config(source_name: &'static str, message: impl Into<String>) -> Self {
        Self::new(source_name, ErrorKind::Config, message)
    }
    pub fn transport(source_name: &'static str, message: impl Into<String>) -> Self {
        Self::new(source_name, ErrorKind::Transport, message)
    }
    pub fn rejected(source_name: &'static str, message: impl Into<String>) -> Self {
        Self::new(source_name, ErrorKind::Rejected, message)
    }

    /// Configuration problems stop start-up; a remote source that is down does
    /// not (the server starts unready and keeps retrying).
    pub fn is_fatal_at_startup(&self) -> bool {
        matches!(self.kind, ErrorKind::NotConfigured | ErrorKind::Config)
    }

    /// An STS failure of the identity's own call (oidc, ram_role_arn).
    pub fn from_sts(source_name: &'static str, e: &StsError) -> Self {
        let kind = match (e, e.kind()) {
            (StsError::BadResponse(_), _) => ErrorKind::Rejected,
            (StsError::Identity(_), _) => ErrorKind::Config,
            (_, StsErrorKind::Throttled | StsErrorKind::Unavailable) => ErrorKind::Transport,
            (_, StsErrorKind::Denied | StsErrorKind::InvalidRequest) => ErrorKind::Rejected,
        };
        Self::new(source_name, kind, e.to_string())
    }
}

/// What readiness and logs report about the identity, computed without I/O.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IdentityStatus {
    /// The configured source (`chain` for the chain).
    pub source: &'static str,
    /// For the chain: the member that yielded credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain_winner: Option<&'static str>,
    /// A credential is held and still valid.
    pub valid: bool,
    /// Prefix of the held credential's AccessKey id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration: Option<String>,
    /// The last failure, while it is not followed by a success.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl IdentityStatus {
    /// Life left of the held credential, in seconds: `+Inf` for a fixed key,
    /// 0 when none is held (`ossvend_identity_remaining_seconds`).
    pub fn remaining_seconds(&self) -> f64 {
        let s = self;
        if !s.valid {
            return 0.0;
        }
        match &s.expiration {
            None => f64::INFINITY,
            Some(text) => chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%SZ")
                .map(|t| {
                    let left = t.and_utc() - chrono::Utc::now();
                    (left.num_milliseconds() as f64 / 1000.0).max(0.0)
                })
                .unwrap_or(0.0),
        }
    }
}

/// The server's identity. A trait object so temporary identities (ECS role,
/// OIDC) can refresh themselves behind the same interface.
#[async_trait::async_trait]
pub trait CredentialProvider: Send + Sync + 'static {
    /// Current credentials; never logs or exposes the secret. Cheap while a
    /// valid credential is held (a short read lock, no I/O).
    async fn credentials(&self) -> Result<Credentials, IdentityError>;
    /// Short name of the source, for logs (`env`, `ecs_ram_role`, ...).
    fn source_name(&self) -> &'static str;
    /// Whether a valid credential is held right now, and what failed last.
    /// Never does I/O (readiness asks this on every probe).
    fn status(&self) -> IdentityStatus;
    /// Starts background refresh. Needs a Tokio runtime; calling it twice is harmless.
    fn start(&self) {}
}

/// One attempt to obtain credentials from a source; [`Refreshing`] decides when.
#[async_trait::async_trait]
pub trait Fetch: Send + Sync + 'static {
    async fn fetch(&self) -> Result<Credentials, IdentityError>;
    fn source_name(&self) -> &'static str;
    /// For the chain: the member that won.
    fn chain_winner(&self) -> Option<&'static str> {
        None
    }
    /// For credentials without expiry: how often to read them again (a secret
    /// file, a profile file). `None`: never.
    fn reload_every(&self) -> Option<Duration> {
        None
    }
    /// Starts what the source depends on (the base provider of `ram_role_arn`).
    fn start(&self) {}
}

/// How often fixed credentials read from files are read again.
pub const FILE_RELOAD_INTERVAL: Duration = Duration::from_secs(60);

/// What building a provider needs besides the config.
#[derive(Clone)]
pub struct Deps {
    /// The grants' STS client: the identity's own STS calls go to the same endpoint.
    pub sts: Arc<StsClient>,
    pub clock: Arc<dyn Clock>,
    pub timings: RefreshTimings,
}

/// Builds the provider selected by `[identity]`. `env` is the process
/// environment, passed in so tests control it. No network I/O happens here;
/// files that a source needs at start-up (a secret file, a profile) are read,
/// so that their absence stops start-up.
pub fn from_config(
    cfg: &IdentityConfig,
    env: &BTreeMap<String, String>,
    deps: &Deps,
) -> Result<Arc<dyn CredentialProvider>, IdentityError> {
    Ok(Arc::new(build(cfg, env, deps, 0)?))
}

/// `[identity.base]` may nest, but not without end.
const MAX_BASE_DEPTH: usize = 4;

fn build(
    cfg: &IdentityConfig,
    env: &BTreeMap<String, String>,
    deps: &Deps,
    depth: usize,
) -> Result<Refreshing, IdentityError> {
    let fetch: Box<dyn Fetch> = match cfg.source {
        IdentitySource::Env => Box::new(env::EnvSource::from_config(cfg, env)?),
        IdentitySource::Static => Box::new(static_key::StaticKeySource::from_config(cfg, env)?),
        IdentitySource::Profile => {
            let source = profile::ProfileSource::new(cfg, env, deps.sts.clone())?;
            // A missing or broken profile stops start-up.
            source.resolve()?;
            Box::new(source)
        }
        IdentitySource::EcsRamRole => Box::new(ecs::EcsSource::from_config(cfg, env)?),
        IdentitySource::Oidc => {
            let source = oidc::OidcSource::from_config(cfg, env, deps.sts.clone())?;
            source.read_token()?;
            Box::new(source)
        }
        IdentitySource::CredentialsUri => Box::new(uri::UriSource::from_config(cfg, env)?),
        IdentitySource::RamRoleArn => {
            if depth >= MAX_BASE_DEPTH {
                return Err(IdentityError::config(
                    "ram_role_arn",
                    format!("[identity.base] is nested more than {MAX_BASE_DEPTH} deep"),
                ));
            }
            let base_cfg = cfg.base.as_deref().ok_or_else(|| {
                IdentityError::config(
                    "ram_role_arn",
                    "[identity.base] is required: the provider whose credentials sign the AssumeRole",
                )
            })?;
            let base = Arc::new(build(base_cfg, env, deps, depth + 1)?);
            Box::new(ram_role::RamRoleSource::from_config(
                cfg,
                env,
                base,
                deps.sts.clone(),
            )?)
        }
        IdentitySource::Chain => Box::new(chain::ChainSource::from_config(cfg, env, deps.sts.clone())),
    };
    Ok(Refreshing::new(fetch, deps.clock.clone(), deps.timings))
}

/// A non-empty environment variable.
pub(crate) fn env_var<'a>(env: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    env.get(name).map(String::as_str).filter(|v| !v.is_empty())
}

/// `role_session_name`, else env `ALIBABA_CLOUD_ROLE_SESSION_NAME`, else
/// `ossvend-<unix-seconds>` (the credentials SDKs use `credentials-<lang>-<time>`).
pub(crate) fn session_name(configured: Option<&str>, env: &BTreeMap<String, String>) -> String {
    configured
        .filter(|s| !s.is_empty())
        .or_else(|| env_var(env, "ALIBABA_CLOUD_ROLE_SESSION_NAME"))
        .map(str::to_string)
        .unwrap_or_else(|| format!("ossvend-{}", Utc::now().timestamp()))
}

/// `Expiration` exactly as `YYYY-MM-DDThh:mm:ssZ` (what Python's
/// `strptime('%Y-%m-%dT%H:%M:%SZ')` accepts from IMDS and credentials URIs);
/// fractional seconds, offsets and short fields are refused.
pub fn parse_expiration_strict(s: &str) -> Option<DateTime<Utc>> {
    let b = s.as_bytes();
    if b.len() != 20 {
        return None;
    }
    let shape_ok = b.iter().enumerate().all(|(i, c)| match i {
        4 | 7 => *c == b'-',
        10 => *c == b'T',
        13 | 16 => *c == b':',
        19 => *c == b'Z',
        _ => c.is_ascii_digit(),
    });
    if !shape_ok {
        return None;
    }
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%SZ")
        .ok()
        .map(|n| n.and_utc())
}

/// Credentials from a JSON body of the IMDS / credentials-URI shape: `Code`
/// must be `Success`, the four fields non-empty strings, `Expiration` strict.
pub(crate) fn parse_credentials_json(
    source: &'static str,
    body: &[u8],
) -> Result<Credentials, IdentityError> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| IdentityError::rejected(source, format!("the body is not JSON ({e})")))?;
    if !v.is_object() {
        return Err(IdentityError::rejected(source, "the body is not a JSON object"));
    }
    match v.get("Code").and_then(|c| c.as_str()) {
        Some("Success") => {}
        Some(other) => {
            let shown: String = other.chars().take(64).collect();
            return Err(IdentityError::rejected(
                source,
                format!("Code is {shown:?}, not \"Success\""),
            ));
        }
        None => return Err(IdentityError::rejected(source, "Code \"Success\" is missing")),
    }
    let field = |name: &str| -> Result<String, IdentityError> {
        v.get(name)
            .and_then(|x| x.as_str())
            .filter(|x| !x.is_empty())
            .map(str::to_string)
            .ok_or_else(|| IdentityError::rejected(source, format!("{name} is missing or empty")))
    };
    let access_key_id = field("AccessKeyId")?;
    let access_key_secret = SecretString::from(field("AccessKeySecret")?);
    let security_token = SecretString::from(field("SecurityToken")?);
    let raw = field("Expiration")?;
    let expiration = parse_expiration_strict(&raw).ok_or_else(|| {
        let shown: String = raw.chars().take(40).collect();
        IdentityError::rejected(
            source,
            format!("Expiration {shown:?} is not YYYY-MM-DDThh:mm:ssZ"),
        )
    })?;
    Ok(Credentials {
        access_key_id,
        access_key_secret,
        security_token: Some(security_token),
        expiration: Some(expiration),
    })
}

/// A small HTTP client for local credential endpoints (IMDS, credentials URI):
/// short timeouts, no proxy, no redirects.
pub(crate) fn local_http_client(connect: Duration, total: Duration) -> Result<reqwest::Client, String> {
    crate::tls::install_crypto_provider();
    reqwest::Client::builder()
        .connect_timeout(connect)
        .timeout(total)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("ossvend/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))
}

/// A transport failure, described without the URL.
pub(crate) fn transport_error(source: &'static str, what: &str, e: &reqwest::Error) -> IdentityError {
    IdentityError::transport(source, format!("{what}: {}", crate::sts::client::without_url(e)))
}

/// `~` and `~/…` expand to `$HOME` (from `env`).
pub(crate) fn expand_home(
    path: &std::path::Path,
    env: &BTreeMap<String, String>,
) -> Result<std::path::PathBuf, String> {
    let Some(s) = path.to_str() else {
        return Ok(path.to_path_buf());
    };
    let rest = if s == "~" {
        ""
    } else if let Some(r) = s.strip_prefix("~/") {
        r
    } else {
        return Ok(path.to_path_buf());
    };
    let home = env_var(env, "HOME").ok_or_else(|| format!("HOME is not set, so {s:?} cannot be expanded"))?;
    Ok(std::path::Path::new(home).join(rest))
}

/// Reads a small local file (a secret, a token, a profile), refusing huge ones.
pub(crate) fn read_small_file(path: &std::path::Path, cap: u64) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut buf = Vec::new();
    file.take(cap + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if buf.len() as u64 > cap {
        return Err(format!("{} is larger than {cap} bytes", path.display()));
    }
    Ok(buf)
}

#[cfg(test)]
pub(crate) mod testutil;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_expiration() {
        let t = parse_expiration_strict("2099-01-01T00:00:00Z").unwrap();
        assert_eq!(t.timestamp(), 4_070_908_800);
        for bad in [
            "2099-01-01T00:00:00.000Z",
            "2099-01-01T00:00:00+00:00",
            "2099-1-01T00:00:00Z",
            "2099-01-01 00:00:00Z",
            "2099-13-01T00:00:00Z",
            "2099-02-30T00:00:00Z",
            "",
            "x",
            "２099-01-01T00:00:00Z",
        ] {
            assert!(parse_expiration_strict(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn credentials_json_rules() {
        let ok = br#"{"Code":"Success","AccessKeyId":"STS.a","AccessKeySecret":"s","SecurityToken":"t","Expiration":"2099-01-01T00:00:00Z","LastUpdated":"x"}"#;
        let c = parse_credentials_json("t", ok).unwrap();
        assert_eq!(c.access_key_id, "STS.a");
        assert_eq!(c.token(), Some("t"));
        for bad in [
            &br#"{"AccessKeyId":"STS.a","AccessKeySecret":"s","SecurityToken":"t","Expiration":"2099-01-01T00:00:00Z"}"#[..],
            br#"{"Code":"Failed","AccessKeyId":"STS.a","AccessKeySecret":"s","SecurityToken":"t","Expiration":"2099-01-01T00:00:00Z"}"#,
            br#"{"Code":"Success","AccessKeyId":"STS.a","AccessKeySecret":"s","Expiration":"2099-01-01T00:00:00Z"}"#,
            br#"{"Code":"Success","AccessKeyId":"STS.a","AccessKeySecret":"","SecurityToken":"t","Expiration":"2099-01-01T00:00:00Z"}"#,
            br#"{"Code":"Success","AccessKeyId":"STS.a","AccessKeySecret":"s","SecurityToken":"t","Expiration":"2099-01-01T00:00:00.000Z"}"#,
            br#"{"Code":"Success","AccessKeyId":1,"AccessKeySecret":"s","SecurityToken":"t","Expiration":"2099-01-01T00:00:00Z"}"#,
            br#"[1,2]"#,
            br#"{"Code":"Success""#,
            b"\xff\xfe",
        ] {
            let e = parse_credentials_json("t", bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Rejected);
            assert!(!e.message.contains("\"s\""));
        }
    }

    #[test]
    fn home_expansion() {
        let env = BTreeMap::from([("HOME".to_string(), "/home/u".to_string())]);
        assert_eq!(
            expand_home(std::path::Path::new("~/.aliyun/config.json"), &env).unwrap(),
            std::path::PathBuf::from("/home/u/.aliyun/config.json")
        );
        assert_eq!(
            expand_home(std::path::Path::new("/etc/x"), &env).unwrap(),
            std::path::PathBuf::from("/etc/x")
        );
        assert!(expand_home(std::path::Path::new("~/x"), &BTreeMap::new()).is_err());
    }

    #[test]
    fn debug_redacts() {
        let c = Credentials {
            access_key_id: "LTAI5tVerySecretIdTail".into(),
            access_key_secret: "the-secret".to_string().into(),
            security_token: Some("the-token".to_string().into()),
            expiration: None,
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("the-secret") && !shown.contains("the-token") && !shown.contains("IdTail"));
    }
}
