//! The configuration model: a TOML file, overridden by `OSSVEND_<SECTION>_<KEY>`
//! environment variables, then validated with every problem reported at once.
//!
//! This module reads the file and the environment and nothing else; it never
//! touches the network.

pub mod redact;
pub mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::credentials::ConfigSecret;

pub use validate::{Problem, validate};

/// Where `serve` and `check-config` look when no `--config` is given.
pub const DEFAULT_CONFIG_PATH: &str = "config/ossvend.toml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub identity: IdentityConfig,
    pub sts: StsConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub cors: CorsConfig,
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub grants: Vec<GrantConfig>,
    /// Fleet mode (`[shared]`): replicas share state through Redis. Absent: each
    /// process keeps everything to itself, as without fleet mode.
    #[serde(default)]
    pub shared: Option<SharedConfig>,
    #[serde(default)]
    pub webhooks: WebhooksConfig,
}

/// The optional admin listener (`[admin]`): `GET /metrics` and
/// `POST /admin/reload`, on an address of its own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// e.g. `127.0.0.1:9000`. Unset: no admin listener, and `/metrics` is
    /// served on the main listener (`POST /admin/reload` is then not served;
    /// SIGHUP still reloads).
    pub listen: Option<String>,
    /// Lower-case hex SHA-256 of the admin token (`ossvend hash-key` prints
    /// it), sent as `Authorization: Bearer <token>` to `POST /admin/reload`.
    /// Unset: the reload endpoint refuses every request. Required when
    /// `listen` is not a loopback address.
    pub token_sha256: Option<String>,
}

/// How callers prove who they are. Each grant lists the methods it accepts.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// API keys, stored as SHA-256 digests (`ossvend hash-key` prints one).
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
    pub jwt: Option<JwtConfig>,
    #[serde(default)]
    pub tickets: TicketConfig,
    /// Pattern a value substituted into a template must match, per placeholder
    /// (`subject`, `claim.tenant`, ...); default `[A-Za-z0-9._@-]{1,64}`.
    #[serde(default)]
    pub placeholders: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// The caller's subject (used in templates, logs and session names).
    pub id: String,
    /// Lower-case hex SHA-256 of the key.
    pub sha256: String,
    /// Grants this key may use; empty = every grant that accepts api_key.
    #[serde(default)]
    pub grants: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Where the issuer publishes its keys (https, or http on loopback).
    pub jwks_url: String,
    /// Required `iss`.
    pub issuer: String,
    /// Accepted `aud` values (one must match).
    pub audience: Vec<String>,
    /// Allowed algorithms: RS256, RS384, RS512, PS256, ES256, ES384, EdDSA. Never `none` or HS*.
    #[serde(default = "default_jwt_algorithms")]
    pub algorithms: Vec<String>,
    /// Claim that names the caller.
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// Claims templates may use as `{claim.NAME}`.
    #[serde(default)]
    pub template_claims: Vec<String>,
    /// Clock skew tolerated on `exp`/`nbf`.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// How long fetched keys are trusted before a refetch.
    #[serde(default = "default_jwks_ttl", with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// Minimum time between refetches triggered by an unknown `kid`.
    #[serde(default = "default_refetch_cooldown", with = "humantime_serde")]
    pub refetch_cooldown: Duration,
}

fn default_jwt_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into(), "EdDSA".into()]
}
fn default_subject_claim() -> String {
    "sub".into()
}
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_jwks_ttl() -> Duration {
    Duration::from_secs(600)
}
fn default_refetch_cooldown() -> Duration {
    Duration::from_secs(30)
}

/// Short-lived signed tickets for clients that cannot send headers (the OSS
/// mobile SDKs' auth-server providers), minted by `POST /v1/tickets`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TicketConfig {
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Environment variable holding the HMAC key (at least 32 bytes). Unset:
    /// a random key per process (tickets then do not survive a restart and are
    /// not valid across replicas).
    pub secret_env: Option<String>,
}

impl Default for TicketConfig {
    fn default() -> Self {
        TicketConfig {
            ttl: Duration::from_secs(300),
            secret_env: None,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Exact origins as browsers send them, e.g. `https://app.example.com`.
    pub allowed_origins: Vec<String>,
    /// Origins by pattern: `https://*.example.com` (the `*` is one or more labels).
    pub allowed_origin_patterns: Vec<String>,
    /// Every well-formed origin (answered with itself and `Vary: Origin`, not
    /// `*`). Refused on routes that return credentials unless
    /// `allow_any_origin_for_credentials` is also set.
    pub allow_any_origin: bool,
    pub allow_any_origin_for_credentials: bool,
    #[serde(with = "humantime_serde::option")]
    pub max_age: Option<Duration>,
    /// Every loopback origin (`http://localhost:*`, `http://127.0.0.1:*`,
    /// `http://[::1]:*`), credential routes included. Not a config key: only
    /// `ossvend local` sets it, for a frontend on its own dev server.
    #[serde(skip)]
    pub allow_loopback_origins: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Requests per minute per authenticated subject, per grant (0 = off).
    pub per_subject_per_minute: u32,
    /// Requests per minute per client IP, per grant (0 = off).
    pub per_ip_per_minute: u32,
    /// Proxies whose `X-Forwarded-For` is believed (IPs or CIDRs). Empty: the
    /// header is ignored and the TCP peer is the client.
    pub trusted_proxies: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Append one JSON line per issuance to this file; unset: the log
    /// (target `ossvend::audit`).
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Loopback by default: a token vendor must be exposed on purpose.
    pub listen: String,
    /// Grant served on the seeds' legacy paths (`/get_sts_token_for_oss_upload`).
    pub default_grant: Option<String>,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    pub body_limit_bytes: usize,
    pub log_format: LogFormat,
    /// Required to listen beyond loopback without client authentication.
    pub allow_anonymous: bool,
    /// Serve this directory at `/` (the demo upload page).
    pub static_dir: Option<PathBuf>,
    /// How long a client has to send a complete request header, counted from
    /// the connection's start, or on a kept-alive connection from the first
    /// byte of the next request. Cuts off slow-header (slowloris) clients.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// How long a connection with no request in flight and none arriving
    /// (kept alive after a response) stays open.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Most connections open at once, all listeners together; lowered at
    /// start-up to fit the open-file limit. At the cap, the oldest connection
    /// with no request in flight is closed to make room for the new one.
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8000".into(),
            default_grant: None,
            request_timeout: Duration::from_secs(15),
            body_limit_bytes: 64 * 1024,
            log_format: LogFormat::Text,
            allow_anonymous: false,
            static_dir: None,
            header_read_timeout: Duration::from_secs(10),
            // Longer than ingress-nginx's 60 s upstream keep-alive, so that a
            // proxy in front closes first and never reuses a connection
            // ossvend is closing.
            idle_timeout: Duration::from_secs(75),
            max_connections: 4096,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Where ossvend's own credentials come from (`[identity]`). Which keys a
/// source reads is listed in [`IdentityConfig::keys_used_by`]; the rest must be
/// left unset (check-config says so). `PartialEq` tells a reload whether the
/// identity must be rebuilt (secrets compare in constant time, unexposed).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Which source; `chain` by default.
    pub source: IdentitySource,
    /// `static` (and, kept from issue 2, `env`): the key id written in the file.
    pub access_key_id: Option<String>,
    /// `static`: the environment variable that holds the secret.
    pub secret_env: Option<String>,
    /// `static`: a file holding the secret (a mounted Kubernetes secret); read at
    /// start-up and on every reload, trailing newline trimmed.
    pub secret_file: Option<PathBuf>,
    /// Inline secret: refused unless `allow_inline_secret`.
    pub access_key_secret: Option<ConfigSecret>,
    /// Opt-in for a secret written in the file; off because config files leak.
    pub allow_inline_secret: bool,
    /// `profile`: profile name (default env `ALIBABA_CLOUD_PROFILE`, else the
    /// CLI file's `current`, else `default`).
    pub profile: Option<String>,
    /// `profile`: the Alibaba Cloud CLI file (default env `ALIBABA_CLOUD_CONFIG_FILE`,
    /// else `~/.aliyun/config.json`).
    pub cli_config_file: Option<PathBuf>,
    /// `profile`: the credentials-SDK ini file (default env
    /// `ALIBABA_CLOUD_CREDENTIALS_FILE`, else `~/.alibabacloud/credentials`, then
    /// `~/.alibabacloud/credentials.ini`).
    pub credentials_file: Option<PathBuf>,
    /// `ecs_ram_role`: the instance's RAM role (default env
    /// `ALIBABA_CLOUD_ECS_METADATA`, else discovered from the metadata service).
    pub role_name: Option<String>,
    /// Instance metadata service (default `http://100.100.100.200`).
    pub metadata_endpoint: Option<String>,
    /// Fall back to reads without a metadata token when the token request fails.
    /// Off: hardened (token) mode only.
    pub imds_v1_fallback: bool,
    /// `oidc` (default env `ALIBABA_CLOUD_ROLE_ARN`) and `ram_role_arn`: the role to assume.
    pub role_arn: Option<String>,
    /// `oidc`: default env `ALIBABA_CLOUD_OIDC_PROVIDER_ARN`.
    pub oidc_provider_arn: Option<String>,
    /// `oidc`: the projected service-account token, re-read on every refresh
    /// (default env `ALIBABA_CLOUD_OIDC_TOKEN_FILE`).
    pub oidc_token_file: Option<PathBuf>,
    /// `oidc`, `ram_role_arn`: default env `ALIBABA_CLOUD_ROLE_SESSION_NAME`, else
    /// `ossvend-<unix-seconds>`.
    pub role_session_name: Option<String>,
    /// `oidc`, `ram_role_arn`: lifetime of the identity's own credential (default 3600).
    pub duration_seconds: Option<u32>,
    /// `credentials_uri`: default env `ALIBABA_CLOUD_CREDENTIALS_URI`.
    pub credentials_uri: Option<String>,
    /// `ram_role_arn`: ExternalId of the intermediate role's trust policy.
    pub external_id: Option<String>,
    /// `ram_role_arn`: the provider whose credentials sign that AssumeRole.
    pub base: Option<Box<IdentityConfig>>,
}

/// `identity.source`, spelt in the TOML as `env`, `static`, `profile`,
/// `ecs_ram_role`, `oidc`, `credentials_uri`, `ram_role_arn` or `chain`. A value
/// outside the list is refused when the config is read, and the error names
/// the allowed values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentitySource {
    Env,
    Static,
    Profile,
    EcsRamRole,
    Oidc,
    CredentialsUri,
    RamRoleArn,
    #[default]
    Chain,
}

impl IdentitySource {
    /// Every source, in the order the docs list them.
    pub const ALL: [IdentitySource; 8] = [
        IdentitySource::Env,
        IdentitySource::Static,
        IdentitySource::Profile,
        IdentitySource::EcsRamRole,
        IdentitySource::Oidc,
        IdentitySource::CredentialsUri,
        IdentitySource::RamRoleArn,
        IdentitySource::Chain,
    ];

    /// The spelling in the TOML (and in logs and messages).
    pub fn as_str(self) -> &'static str {
        match self {
            IdentitySource::Env => "env",
            IdentitySource::Static => "static",
            IdentitySource::Profile => "profile",
            IdentitySource::EcsRamRole => "ecs_ram_role",
            IdentitySource::Oidc => "oidc",
            IdentitySource::CredentialsUri => "credentials_uri",
            IdentitySource::RamRoleArn => "ram_role_arn",
            IdentitySource::Chain => "chain",
        }
    }
}

/// Compares with the TOML spelling (`source == "env"`), as tests read best.
impl std::fmt::Display for IdentitySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Default instance metadata endpoint (plain http, link-local to the instance).
pub const DEFAULT_METADATA_ENDPOINT: &str = "http://100.100.100.200";

/// Default lifetime of the identity's own STS credentials (oidc, ram_role_arn).
pub const DEFAULT_IDENTITY_DURATION_SECONDS: u32 = 3600;

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            source: IdentitySource::Chain,
            access_key_id: None,
            secret_env: None,
            secret_file: None,
            access_key_secret: None,
            allow_inline_secret: false,
            profile: None,
            cli_config_file: None,
            credentials_file: None,
            role_name: None,
            metadata_endpoint: None,
            imds_v1_fallback: false,
            role_arn: None,
            oidc_provider_arn: None,
            oidc_token_file: None,
            role_session_name: None,
            duration_seconds: None,
            credentials_uri: None,
            external_id: None,
            base: None,
        }
    }
}

impl IdentityConfig {
    pub fn metadata_endpoint(&self) -> &str {
        self.metadata_endpoint
            .as_deref()
            .unwrap_or(DEFAULT_METADATA_ENDPOINT)
    }

    pub fn duration_seconds(&self) -> u32 {
        self.duration_seconds.unwrap_or(DEFAULT_IDENTITY_DURATION_SECONDS)
    }

    /// The keys `source` reads (besides `source` and `allow_inline_secret`).
    pub fn keys_used_by(source: IdentitySource) -> &'static [&'static str] {
        const ECS: [&str; 3] = ["role_name", "metadata_endpoint", "imds_v1_fallback"];
        match source {
            IdentitySource::Env => &["access_key_id", "access_key_secret"],
            IdentitySource::Static => &["access_key_id", "secret_env", "secret_file", "access_key_secret"],
            // A profile may be in EcsRamRole, RamRoleArn or OIDC mode.
            IdentitySource::Profile => &[
                "profile",
                "cli_config_file",
                "credentials_file",
                ECS[1],
                ECS[2],
                "role_session_name",
                "duration_seconds",
            ],
            IdentitySource::EcsRamRole => &ECS,
            IdentitySource::Oidc => &[
                "role_arn",
                "oidc_provider_arn",
                "oidc_token_file",
                "role_session_name",
                "duration_seconds",
            ],
            IdentitySource::CredentialsUri => &["credentials_uri"],
            IdentitySource::RamRoleArn => &[
                "role_arn",
                "external_id",
                "role_session_name",
                "duration_seconds",
                "base",
            ],
            // The chain's members take their settings from the environment; these
            // keys tune them (profile files, the metadata service, OIDC session).
            IdentitySource::Chain => &[
                "profile",
                "cli_config_file",
                "credentials_file",
                ECS[0],
                ECS[1],
                ECS[2],
                "role_session_name",
                "duration_seconds",
                "credentials_uri",
            ],
        }
    }

    /// The keys set in this table (other than `source` and `allow_inline_secret`).
    pub fn keys_set(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut add = |set: bool, name: &'static str| {
            if set {
                out.push(name);
            }
        };
        add(self.access_key_id.is_some(), "access_key_id");
        add(self.secret_env.is_some(), "secret_env");
        add(self.secret_file.is_some(), "secret_file");
        add(self.access_key_secret.is_some(), "access_key_secret");
        add(self.profile.is_some(), "profile");
        add(self.cli_config_file.is_some(), "cli_config_file");
        add(self.credentials_file.is_some(), "credentials_file");
        add(self.role_name.is_some(), "role_name");
        add(self.metadata_endpoint.is_some(), "metadata_endpoint");
        add(self.imds_v1_fallback, "imds_v1_fallback");
        add(self.role_arn.is_some(), "role_arn");
        add(self.oidc_provider_arn.is_some(), "oidc_provider_arn");
        add(self.oidc_token_file.is_some(), "oidc_token_file");
        add(self.role_session_name.is_some(), "role_session_name");
        add(self.duration_seconds.is_some(), "duration_seconds");
        add(self.credentials_uri.is_some(), "credentials_uri");
        add(self.external_id.is_some(), "external_id");
        add(self.base.is_some(), "base");
        out
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StsConfig {
    /// Explicit STS endpoint; wins over `region`/`vpc`. Unset: see [`StsConfig::resolve_endpoint`].
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Regional endpoint `https://sts.<region>.aliyuncs.com` (default env
    /// `ALIBABA_CLOUD_STS_REGION`).
    #[serde(default)]
    pub region: Option<String>,
    /// VPC endpoint `https://sts-vpc.<region>.aliyuncs.com`; needs a region
    /// (default env `ALIBABA_CLOUD_VPC_ENDPOINT_ENABLED=true`).
    #[serde(default)]
    pub vpc: Option<bool>,
    pub role_arn: String,
    #[serde(default = "default_session_name")]
    pub session_name: String,
    #[serde(default = "default_duration_seconds")]
    pub duration_seconds: u32,
    /// Optional ExternalId for the role's trust policy.
    #[serde(default)]
    pub external_id: Option<String>,
    /// A credential is handed out only with at least this much life left. The
    /// official credentials SDKs treat the last 15 minutes as stale.
    #[serde(default = "default_min_remaining", with = "humantime_serde")]
    pub min_remaining: Duration,
    /// Inside this window before expiry an entry is refreshed in the background.
    #[serde(default = "default_refresh_before", with = "humantime_serde")]
    pub refresh_before: Duration,
    /// Budget for AssumeRole calls (STS allows about 100/s per account).
    #[serde(default = "default_max_calls_per_second")]
    pub max_calls_per_second: u32,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(default = "default_call_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Retries on throttling, 5xx and transport errors only.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    #[serde(default = "default_retry_base", with = "humantime_serde")]
    pub retry_base_delay: Duration,
    /// After a failed AssumeRole (5xx, timeout, throttling), misses of that key
    /// get the same 503 without a call for this long, doubling per failure in
    /// a row up to `failure_backoff_max` (jittered down by up to half; reset on
    /// success). Throttling backs every call of the client off the same way.
    /// `0s` turns both off.
    #[serde(default = "default_failure_backoff", with = "humantime_serde")]
    pub failure_backoff: Duration,
    #[serde(default = "default_failure_backoff_max", with = "humantime_serde")]
    pub failure_backoff_max: Duration,
    /// Upper bound on cached credentials (one per grant, user and policy).
    #[serde(default = "default_cache_capacity")]
    pub cache_capacity: u64,
}

/// Which spelling of the credential body to return (`?format=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialFormat {
    #[default]
    Default,
    Aws,
    Camel,
    CredentialProcess,
}

pub const FORMAT_NAMES: &str = "default, aws, camel, credential-process";

impl FromStr for CredentialFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "default" => Ok(CredentialFormat::Default),
            "aws" => Ok(CredentialFormat::Aws),
            "camel" => Ok(CredentialFormat::Camel),
            "credential-process" => Ok(CredentialFormat::CredentialProcess),
            other => Err(format!("unknown format {other:?}; valid: {FORMAT_NAMES}")),
        }
    }
}

/// The global endpoint, default of every credentials SDK (docs/signing.md §1.1).
pub const DEFAULT_STS_ENDPOINT: &str = "https://sts.aliyuncs.com";

impl StsConfig {
    /// The endpoint from this table alone: explicit `endpoint`, else built from
    /// `region`/`vpc`, else the global endpoint. After start-up the server has
    /// stored the environment-resolved value in `endpoint`, so this is what it uses.
    pub fn endpoint(&self) -> String {
        self.resolve_endpoint(&BTreeMap::new())
            .unwrap_or_else(|_| DEFAULT_STS_ENDPOINT.to_string())
    }

    /// Spec §1.1: explicit `endpoint` wins; otherwise `region` (default env
    /// `ALIBABA_CLOUD_STS_REGION`) gives `https://sts.<region>.aliyuncs.com`, and
    /// `vpc` (default env `ALIBABA_CLOUD_VPC_ENDPOINT_ENABLED=true`) gives
    /// `https://sts-vpc.<region>.aliyuncs.com`; neither: `https://sts.aliyuncs.com`.
    pub fn resolve_endpoint(&self, env: &BTreeMap<String, String>) -> Result<String, String> {
        if let Some(e) = &self.endpoint {
            return Ok(e.clone());
        }
        let region = self
            .region
            .clone()
            .or_else(|| env.get("ALIBABA_CLOUD_STS_REGION").cloned())
            .filter(|r| !r.is_empty());
        let vpc = self.vpc.unwrap_or_else(|| {
            env.get("ALIBABA_CLOUD_VPC_ENDPOINT_ENABLED")
                .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        });
        match (region, vpc) {
            (Some(r), true) => Ok(format!("https://sts-vpc.{r}.aliyuncs.com")),
            (Some(r), false) => Ok(format!("https://sts.{r}.aliyuncs.com")),
            (None, true) => Err(
                "the VPC endpoint needs a region: set sts.region (or ALIBABA_CLOUD_STS_REGION), or sts.endpoint"
                    .into(),
            ),
            (None, false) => Ok(DEFAULT_STS_ENDPOINT.to_string()),
        }
    }
}

fn default_session_name() -> String {
    "ossvend".into()
}
fn default_duration_seconds() -> u32 {
    3600
}
fn default_min_remaining() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_refresh_before() -> Duration {
    Duration::from_secs(20 * 60)
}
fn default_max_calls_per_second() -> u32 {
    50
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(3)
}
fn default_call_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_retries() -> u32 {
    2
}
fn default_retry_base() -> Duration {
    Duration::from_millis(200)
}
fn default_failure_backoff() -> Duration {
    Duration::from_secs(1)
}
fn default_failure_backoff_max() -> Duration {
    Duration::from_secs(30)
}
fn default_cache_capacity() -> u64 {
    100_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantConfig {
    pub name: String,
    pub bucket: String,
    /// OSS region id without the `oss-` prefix, e.g. `cn-hangzhou`.
    pub region: String,
    /// Defaults to `https://oss-<region>.aliyuncs.com`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Key prefix the grant may write under, e.g. `uploads/`.
    #[serde(default)]
    pub prefix: String,
    #[serde(default = "default_actions")]
    pub actions: Vec<String>,
    /// Overrides `sts.duration_seconds` for this grant.
    #[serde(default)]
    pub duration_seconds: Option<u32>,
    /// An explicit session policy document (JSON text) instead of the one
    /// rendered from bucket, prefix and actions.
    #[serde(default)]
    pub policy: Option<String>,
    /// Overrides `sts.session_name` for this grant.
    #[serde(default)]
    pub session_name: Option<String>,
    /// Largest object a PostObject policy allows (`content-length-range`).
    #[serde(default = "default_max_size_bytes")]
    pub max_size_bytes: u64,
    /// Allowed Content-Types for form and presigned uploads; empty = any.
    #[serde(default)]
    pub content_types: Vec<String>,
    /// How the server names objects for presigned URLs (and PostObject when the
    /// client sends a filename): `{prefix}`, `{uuid}`, `{date}` (YYYYMMDD), `{ext}`.
    #[serde(default = "default_key_template")]
    pub key_template: String,
    /// PostObject signature version: `v4` (default), `v1`, or `s3-v4` (S3-compatible endpoint).
    #[serde(default)]
    pub post_version: PostVersion,
    /// Presigned URL scheme: `oss-v4` (default), `oss-v1` or `s3-v4`.
    #[serde(default)]
    pub presign_scheme: PresignScheme,
    /// Validity of PostObject policies and presigned URLs; capped by the life of
    /// the signing credential and by 7 days.
    #[serde(default = "default_upload_expires", with = "humantime_serde")]
    pub upload_expires: Duration,
    /// Which credential signs policies and URLs: `sts` (the grant's narrowed role
    /// credential from the cache, default) or `access_key` (the identity itself).
    #[serde(default)]
    pub signing: SigningSource,
    /// `success_action_status` for PostObject (200, 201 or 204).
    #[serde(default = "default_success_action_status")]
    pub success_action_status: u16,
    /// Where the browser goes after a PostObject upload (https, or http on
    /// loopback): sent in the form and pinned by the policy. Unset: no redirect
    /// is sent (the status above is the answer).
    #[serde(default)]
    pub success_action_redirect: Option<String>,
    /// S3-compatible endpoint for `presign_scheme = "s3-v4"`; default
    /// `https://s3.oss-<region>.aliyuncs.com`.
    #[serde(default)]
    pub s3_endpoint: Option<String>,
    /// Path-style URLs (`<endpoint>/<bucket>/<key>`) instead of virtual-hosted;
    /// default: path-style only for IP-address and localhost endpoints.
    #[serde(default)]
    pub path_style: Option<bool>,
    /// Body of the credentials route when the client sends no `?format=`:
    /// `default`, `aws`, `camel` or `credential-process`.
    #[serde(default)]
    pub credentials_format: CredentialFormat,
    /// Authentication methods this grant accepts: `api_key`, `jwt`, `ticket`,
    /// `none`. Default `["none"]` (anonymous; loopback only unless
    /// `server.allow_anonymous`).
    #[serde(default = "default_grant_auth")]
    pub auth: Vec<AuthMethod>,
    /// How `{subject}` renders when callers come from separate id spaces
    /// (`api_key` ids and JWT subjects): `namespaced` (`api_key.alice`,
    /// `jwt.alice`) or `shared` (as is: the ids are one namespace on purpose).
    /// Unset: as is, and a grant accepting both methods with `{subject}` in a
    /// template is a config error until one is chosen.
    #[serde(default)]
    pub subjects: Option<SubjectsMode>,
    /// Upload sessions (multipart uploads run by the server, `/v1/grants/{grant}/uploads`).
    /// Off by default; the grant's policy must allow oss:PutObject, oss:ListParts and
    /// oss:AbortMultipartUpload.
    #[serde(default)]
    pub multipart: bool,
    /// Overrides `[rate_limit]` for this grant.
    #[serde(default)]
    pub per_subject_per_minute: Option<u32>,
    #[serde(default)]
    pub per_ip_per_minute: Option<u32>,
    /// OSS upload callback (`[grants.callback]`): forms and presigned URLs of
    /// this grant make OSS call ossvend after storing the object, and ossvend
    /// tells the application (`[webhooks]`). Unset: no callback.
    #[serde(default)]
    pub callback: Option<CallbackConfig>,
}

/// `[grants.callback]`: how OSS reaches ossvend after an upload (docs/callbacks.md).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbackConfig {
    /// ossvend's public receiver, as OSS reaches it:
    /// `https://ossvend.example.com/v1/callbacks/oss` (https, or http on loopback).
    pub url: String,
    /// `Host` header OSS sends, when it differs from the URL's host.
    #[serde(default)]
    pub host: Option<String>,
    /// Body OSS sends: `json` (default) or `form`.
    #[serde(default)]
    pub body_type: CallbackBodyType,
    /// OSS sends SNI on an https callback (`callbackSNI`); default on, as
    /// SNI-routed proxies and CDNs need it.
    #[serde(default = "default_true")]
    pub sni: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallbackBodyType {
    #[default]
    Json,
    Form,
}

fn default_true() -> bool {
    true
}

/// `[webhooks]`: where verified upload callbacks are delivered (docs/callbacks.md).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// The application's endpoint (https, or http on loopback). Needed by any
    /// grant with a callback.
    pub url: Option<String>,
    /// Environment variable holding the Standard Webhooks secret
    /// (`whsec_<base64>`, at least 24 bytes). It signs the webhooks and (a key
    /// derived from it) ossvend's custom callback variables.
    pub secret_env: Option<String>,
    /// How long the application has to answer; OSS gives ossvend 5 seconds in
    /// all, so at most 4 s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Directory of the pending-deliveries journal (`webhooks-pending.jsonl`):
    /// undelivered events survive a restart. Unset: kept in memory only.
    pub data_dir: Option<PathBuf>,
    /// Longest wait between redeliveries of a pending event (back-off doubles from 5 s up to this).
    #[serde(with = "humantime_serde")]
    pub retry_max_interval: Duration,
    /// The local sink's key URL prefix: trusted only by `ossvend local`, never a config key.
    #[serde(skip)]
    pub local_key_url: Option<String>,
    /// Set by `ossvend local` only when no `url` is configured (never a config
    /// key): a verified callback is answered with the event itself, so the
    /// uploader sees what the application would get.
    #[serde(skip)]
    pub local_echo: bool,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            url: None,
            secret_env: None,
            timeout: Duration::from_secs(3),
            data_dir: None,
            retry_max_interval: Duration::from_secs(600),
            local_key_url: None,
            local_echo: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    ApiKey,
    Jwt,
    Ticket,
    None,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ApiKey => "api_key",
            AuthMethod::Jwt => "jwt",
            AuthMethod::Ticket => "ticket",
            AuthMethod::None => "none",
        }
    }
}

/// See [`GrantConfig::subjects`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubjectsMode {
    Namespaced,
    Shared,
}

impl GrantConfig {
    /// Whether callers from more than one subject namespace reach this grant:
    /// API keys and JWTs both (a ticket carries the namespace of the API key
    /// or JWT that minted it, and only this grant's own methods may mint).
    pub fn mixes_subject_namespaces(&self) -> bool {
        self.auth.contains(&AuthMethod::ApiKey) && self.auth.contains(&AuthMethod::Jwt)
    }

    /// Whether `{subject}` renders as `<method>.<subject>`: chosen with
    /// `subjects`, and the safe reading of a mixed grant that chose nothing
    /// (validation refuses that config, so it only matters if it is bypassed).
    pub fn namespaced_subjects(&self) -> bool {
        match self.subjects {
            Some(m) => m == SubjectsMode::Namespaced,
            None => self.mixes_subject_namespaces(),
        }
    }
}

fn default_grant_auth() -> Vec<AuthMethod> {
    vec![AuthMethod::None]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PostVersion {
    V1,
    #[default]
    V4,
    /// AWS SigV4 POST policy for the S3-compatible endpoint (`x-amz-*` fields).
    #[serde(rename = "s3-v4")]
    S3V4,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum PresignScheme {
    #[serde(rename = "oss-v1")]
    OssV1,
    #[default]
    #[serde(rename = "oss-v4")]
    OssV4,
    #[serde(rename = "s3-v4")]
    S3V4,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SigningSource {
    #[default]
    Sts,
    AccessKey,
}

fn default_max_size_bytes() -> u64 {
    10 * 1024 * 1024
}
fn default_key_template() -> String {
    "{prefix}{uuid}{ext}".into()
}
fn default_upload_expires() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_success_action_status() -> u16 {
    200
}

fn default_actions() -> Vec<String> {
    vec!["oss:PutObject".into()]
}

impl GrantConfig {
    pub fn endpoint(&self) -> String {
        self.endpoint
            .clone()
            .unwrap_or_else(|| format!("https://oss-{}.aliyuncs.com", self.region))
    }

    pub fn s3_endpoint(&self) -> String {
        self.s3_endpoint
            .clone()
            .unwrap_or_else(|| format!("https://s3.oss-{}.aliyuncs.com", self.region))
    }
}

impl ServerConfig {
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// Reads `path`, applies `OSSVEND_*` overrides from `env`, and deserializes.
/// Semantic checks are separate ([`validate`]) so that all of them can be
/// reported together.
pub fn load(path: &Path, env: &BTreeMap<String, String>) -> Result<Config, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.into(),
        source,
    })?;
    parse(&text, env).map_err(|message| LoadError::Parse {
        path: path.into(),
        message,
    })
}

/// Errors say where, never what, when the place holds a secret (see [`redact`]).
pub fn parse(text: &str, env: &BTreeMap<String, String>) -> Result<Config, String> {
    let mut doc: toml::Table = toml::from_str(text).map_err(|e| redact::syntax_error(text, &e))?;
    apply_env_overrides(&mut doc, env)?;
    let secrets = redact::secret_values(&doc);
    toml::Value::Table(doc)
        .try_into::<Config>()
        .map_err(|e| redact::value_error(&e, &secrets))
}

/// The sections whose keys `OSSVEND_<SECTION>_<KEY>` variables override.
pub const ENV_SECTIONS: [&str; 4] = ["server", "identity", "sts", "admin"];

/// `OSSVEND_SERVER_LISTEN=0.0.0.0:8000` sets `server.listen`, and so on for the
/// `server`, `identity`, `sts` and `admin` sections. Values are read as TOML when they
/// parse as such (numbers, booleans) and as plain strings otherwise; keys that name a
/// secret ([`redact::names_secret`]) are always plain strings.
fn apply_env_overrides(doc: &mut toml::Table, env: &BTreeMap<String, String>) -> Result<(), String> {
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix("OSSVEND_") else {
            continue;
        };
        let lower = rest.to_ascii_lowercase();
        let Some((section, key)) = ENV_SECTIONS.iter().find_map(|s| {
            lower
                .strip_prefix(s)
                .and_then(|k| k.strip_prefix('_'))
                .map(|k| (*s, k))
        }) else {
            // A variable aimed at a section that cannot be overridden would
            // otherwise be ignored in silence (OSSVEND_CORS_MAX_AGE, say).
            if let Some(s) = ["cors", "rate_limit", "audit", "auth", "grants"]
                .iter()
                .find(|s| lower.strip_prefix(*s).is_some_and(|k| k.starts_with('_')))
            {
                return Err(format!(
                    "{name}: [{s}] cannot be set from the environment; only {} can (OSSVEND_<SECTION>_<KEY>)",
                    ENV_SECTIONS.map(|s| format!("[{s}]")).join(", ")
                ));
            }
            continue;
        };
        // A secret is a string even when it looks like a number or a boolean.
        let value = if redact::names_secret(key) {
            toml::Value::String(raw.clone())
        } else {
            toml::from_str::<toml::Table>(&format!("v = {raw}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(raw.clone()))
        };
        let table = doc
            .entry(section)
            .or_insert_with(|| toml::Value::Table(Default::default()))
            .as_table_mut()
            .ok_or_else(|| format!("{section} must be a table"))?;
        table.insert(key.to_string(), value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_sources_read_as_they_are_spelt() {
        for source in IdentitySource::ALL {
            let id: IdentityConfig = toml::from_str(&format!("source = {:?}", source.as_str())).unwrap();
            assert_eq!(id.source, source);
        }
        let id: IdentityConfig = toml::from_str("").unwrap();
        assert_eq!(id.source, IdentitySource::Chain);
        assert!(toml::from_str::<IdentityConfig>("source = \"EcsRamRole\"").is_err());
    }

    #[test]
    fn identity_tables_compare_by_value_secrets_included() {
        let read = |t: &str| toml::from_str::<IdentityConfig>(t).unwrap();
        let a = "source = \"env\"\naccess_key_secret = \"fakeSecretOne\"\nallow_inline_secret = true\n";
        assert_eq!(read(a), read(a));
        assert_ne!(read(a), read(&a.replace("fakeSecretOne", "fakeSecretTwo")));
        assert_ne!(read(a), read(&a.replace("\"env\"", "\"static\"")));
        let nested =
            "source = \"ram_role_arn\"\n[base]\nsource = \"env\"\naccess_key_secret = \"fakeSecretOne\"\n";
        assert_eq!(read(nested), read(nested));
        assert_ne!(
            read(nested),
            read(&nested.replace("fakeSecretOne", "fakeSecretTwo"))
        );
        assert!(!format!("{:?}", read(a)).contains("fakeSecretOne"));
    }
}

/// `[shared]`: fleet mode. Replicas share the credential cache (encrypted),
/// single flight, the STS budget and rate limits through a Redis-protocol
/// server (Redis, Valkey, Tair / ApsaraDB for Redis).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedConfig {
    /// `redis://host:port[/db]` or `rediss://…` (TLS through rustls). Never a
    /// password: that comes from `password_env`.
    pub url: String,
    /// Environment variable holding the ACL user name (optional).
    #[serde(default)]
    pub username_env: Option<String>,
    /// Environment variable holding the password (optional).
    #[serde(default)]
    pub password_env: Option<String>,
    /// Prefix of every key ossvend writes, so deployments can share one Redis.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Environment variable holding the encryption key: its raw value, at least
    /// 32 bytes. Values and key names in Redis are derived from it.
    pub encryption_key_env: String,
    #[serde(default)]
    pub on_unavailable: OnUnavailable,
    /// How many replicas run: while Redis is unavailable each replica's STS
    /// budget is `sts.max_calls_per_second / replicas`.
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    /// Longest wait for one Redis command; past it the replica falls back.
    #[serde(default = "default_command_timeout", with = "humantime_serde")]
    pub command_timeout: Duration,
    #[serde(default = "default_shared_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// PEM bundle of the CAs a `rediss://` server's certificate must chain to
    /// (a private CA: self-hosted Redis/Valkey, some Tair setups). Set, it
    /// replaces the public (webpki) roots for this connection; unset, only
    /// the public roots are trusted.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// What a replica does while Redis cannot be reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUnavailable {
    /// Its own cache, single flight and rate limits, and `1/replicas` of the STS budget.
    #[default]
    Local,
    /// No new credential (cache misses fail with `sts_unavailable`); L1 hits are still served.
    Refuse,
}

fn default_key_prefix() -> String {
    "ossvend:".into()
}
fn default_replicas() -> u32 {
    1
}
fn default_command_timeout() -> Duration {
    Duration::from_millis(250)
}
fn default_shared_connect_timeout() -> Duration {
    Duration::from_secs(1)
}
