//! Semantic checks. Every problem is collected, with its key path, so that an
//! operator fixes a config in one round instead of one error per restart.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::Duration;

use super::{Config, CorsConfig, GrantConfig, JwtConfig};
use crate::policy;

/// One thing wrong with a configuration, at a TOML key path such as `grants[0].bucket`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Problems collected so far, in report order.
#[derive(Debug, Default)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    pub fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }
}

pub const MIN_DURATION_SECONDS: u32 = 900;
/// PostObject accepts objects up to 5 GiB.
pub const MAX_OBJECT_BYTES: u64 = 5 * 1024 * 1024 * 1024;
pub const MAX_DURATION_SECONDS: u32 = 43_200;
/// Longer would let slow-header clients hold connections for no purpose.
pub const MAX_HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
pub const MAX_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);
/// Far above what one process can hold open (each connection is a file descriptor).
pub const MAX_CONNECTIONS: usize = 1_048_576;

/// The model's own checks of `config` as loaded, with no I/O; `env` is the
/// process environment (STS region overrides). The `[identity]` table is
/// checked by its owner, `identity::check`, which reads the environment and
/// local files; `crate::check::config` runs both, in report order.
pub fn validate(config: &Config, env: &BTreeMap<String, String>) -> Vec<Problem> {
    let mut p = Problems::default();
    check_before_identity(config, &mut p);
    check_after_identity(config, env, &mut p);
    p.0
}

/// The sections reported before `[identity]`: `[server]`, `[admin]`.
pub fn check_before_identity(config: &Config, p: &mut Problems) {
    check_server(config, p);
    check_admin(config, p);
}

/// The sections reported after `[identity]`: `[sts]`, `[auth]`, the grants.
pub fn check_after_identity(config: &Config, env: &BTreeMap<String, String>, p: &mut Problems) {
    check_sts(config, env, p);
    check_auth(config, p);
    check_grants(config, p);
    check_shared(config, env, p);
    check_webhooks(config, p);
}

/// `shared.ca_file`'s PEM text, if it is readable and every PEM certificate
/// in it parses (at least one). The error names the file, never its content.
pub fn read_ca_file(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| format!("{} is not a PEM certificate bundle", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(pem)
}

/// The shortest encryption key `[shared]` accepts (bytes of the variable's raw value).
pub const MIN_SHARED_KEY_BYTES: usize = 32;

/// `[shared]`: a URL without a password (the text of a problem never shows
/// the URL), a present and long enough encryption key, a fixed ticket secret.
fn check_shared(config: &Config, env: &BTreeMap<String, String>, p: &mut Problems) {
    let Some(s) = &config.shared else { return };
    match url::Url::parse(&s.url) {
        Err(_) => p.add(
            "shared.url",
            "is not a URL (redis://host:port or rediss://host:port)",
        ),
        Ok(u) if !matches!(u.scheme(), "redis" | "rediss") => {
            p.add("shared.url", "must start with redis:// or rediss://")
        }
        Ok(u) if u.password().is_some() => p.add(
            "shared.url",
            "must not carry a password: name the variable holding it in shared.password_env",
        ),
        Ok(u) if !u.username().is_empty() => p.add(
            "shared.url",
            "must not carry a user: name the variable holding it in shared.username_env",
        ),
        Ok(u) if u.host_str().is_none_or(str::is_empty) => p.add("shared.url", "has no host"),
        Ok(_) => {}
    }
    for (path, var) in [
        ("shared.username_env", &s.username_env),
        ("shared.password_env", &s.password_env),
    ] {
        match var {
            Some(v) if v.is_empty() => p.add(path, "must name an environment variable"),
            Some(v) if !env.contains_key(v) => {
                p.add(path, format!("the environment variable {v} is not set"))
            }
            _ => {}
        }
    }
    match env.get(&s.encryption_key_env) {
        _ if s.encryption_key_env.is_empty() => {
            p.add("shared.encryption_key_env", "must name an environment variable")
        }
        None => p.add(
            "shared.encryption_key_env",
            format!("the environment variable {} is not set", s.encryption_key_env),
        ),
        Some(k) if k.len() < MIN_SHARED_KEY_BYTES => p.add(
            "shared.encryption_key_env",
            format!(
                "{} holds {} bytes; the encryption key needs at least {MIN_SHARED_KEY_BYTES}",
                s.encryption_key_env,
                k.len()
            ),
        ),
        Some(_) => {}
    }
    if s.key_prefix.is_empty() {
        p.add(
            "shared.key_prefix",
            "must not be empty (it keeps deployments apart)",
        );
    }
    if s.replicas == 0 {
        p.add("shared.replicas", "must be at least 1");
    }
    if s.command_timeout.is_zero() || s.command_timeout > Duration::from_secs(10) {
        p.add("shared.command_timeout", "must be between 1 ms and 10 s");
    }
    if s.connect_timeout.is_zero() || s.connect_timeout > Duration::from_secs(30) {
        p.add("shared.connect_timeout", "must be between 1 ms and 30 s");
    }
    if let Some(path) = &s.ca_file {
        if !s.url.starts_with("rediss://") {
            p.add("shared.ca_file", "is only used with a rediss:// url");
        }
        if let Err(e) = read_ca_file(path) {
            p.add("shared.ca_file", e);
        }
    }
    if config.auth.tickets.secret_env.is_none() {
        p.add(
            "auth.tickets.secret_env",
            "fleet mode ([shared]) needs a ticket secret shared by every replica, or a ticket minted on one fails on the others",
        );
    }
}

/// `[webhooks]` and the grants' callbacks (docs/callbacks.md).
fn check_webhooks(config: &Config, p: &mut Problems) {
    let w = &config.webhooks;
    if let Some(url) = &w.url {
        check_endpoint("webhooks.url", url, p);
    }
    if w.secret_env.as_deref().is_some_and(str::is_empty) {
        p.add("webhooks.secret_env", "must name an environment variable");
    }
    if w.timeout.is_zero() || w.timeout > Duration::from_secs(4) {
        p.add(
            "webhooks.timeout",
            "must be between 1ms and 4s: OSS waits 5 seconds for ossvend's answer in all",
        );
    }
    if w.retry_max_interval < Duration::from_secs(5) {
        p.add("webhooks.retry_max_interval", "must be at least 5s");
    }
    for (i, g) in config.grants.iter().enumerate() {
        let Some(cb) = &g.callback else { continue };
        let at = |key: &str| format!("grants[{i}].callback.{key}");
        check_endpoint(&at("url"), &cb.url, p);
        if !w.local_echo && (w.url.is_none() || w.secret_env.is_none()) {
            p.add(
                at("url"),
                "a grant with a callback needs [webhooks] url and secret_env (where verified uploads are delivered)",
            );
        }
        if g.post_version == super::PostVersion::S3V4 || g.presign_scheme == super::PresignScheme::S3V4 {
            p.add(
                at("url"),
                "upload callbacks are an OSS feature: not with post_version or presign_scheme \"s3-v4\"",
            );
        }
        if cb
            .host
            .as_deref()
            .is_some_and(|h| h.is_empty() || h.contains(['/', ' ']))
        {
            p.add(at("host"), "must be a host name");
        }
    }
}

fn anonymous_grants(config: &Config) -> bool {
    config
        .grants
        .iter()
        .any(|g| g.auth.contains(&super::AuthMethod::None))
}

fn check_server(config: &Config, p: &mut Problems) {
    let server = &config.server;
    match server.listen_addr() {
        None => p.add(
            "server.listen",
            format!("{:?} is not an address like 127.0.0.1:8000", server.listen),
        ),
        // A grant that accepts anonymous callers hands credentials to anyone
        // who can reach the port.
        Some(addr) if !addr.ip().is_loopback() && !server.allow_anonymous && anonymous_grants(config) => p.add(
            "server.listen",
            format!(
                "{addr} is not a loopback address and a grant accepts anonymous callers (auth = [\"none\"], \
                 the default); anyone who can reach it could obtain upload credentials. Configure \
                 authentication on every grant, listen on 127.0.0.1, or set server.allow_anonymous = true \
                 if a gateway in front authenticates callers"
            ),
        ),
        Some(_) => {}
    }
    if let Some(name) = &server.default_grant
        && !config.grants.iter().any(|g| &g.name == name)
    {
        p.add("server.default_grant", format!("no grant is named {name:?}"));
    }
    if server.request_timeout.is_zero() {
        p.add("server.request_timeout", "must be greater than zero");
    }
    if server.body_limit_bytes == 0 {
        p.add("server.body_limit_bytes", "must be greater than zero");
    }
    for (key, value, max) in [
        (
            "server.header_read_timeout",
            server.header_read_timeout,
            MAX_HEADER_READ_TIMEOUT,
        ),
        ("server.idle_timeout", server.idle_timeout, MAX_IDLE_TIMEOUT),
    ] {
        if value.is_zero() || value > max {
            p.add(
                key,
                format!(
                    "{} must be greater than zero and at most {}",
                    humantime_serde::re::humantime::format_duration(value),
                    humantime_serde::re::humantime::format_duration(max)
                ),
            );
        }
    }
    if !(1..=MAX_CONNECTIONS).contains(&server.max_connections) {
        p.add(
            "server.max_connections",
            format!(
                "{} must be between 1 and {MAX_CONNECTIONS}",
                server.max_connections
            ),
        );
    }
}

fn check_admin(config: &Config, p: &mut Problems) {
    let admin = &config.admin;
    if let Some(t) = &admin.token_sha256
        && !is_sha256_hex(t)
    {
        p.add(
            "admin.token_sha256",
            "must be 64 lower-case hex digits: the SHA-256 of the token (ossvend hash-key prints it)",
        );
    }
    let Some(listen) = &admin.listen else { return };
    match listen.parse::<std::net::SocketAddr>() {
        Err(_) => p.add(
            "admin.listen",
            format!("{listen:?} is not an address like 127.0.0.1:9000"),
        ),
        Ok(addr) if !addr.ip().is_loopback() && admin.token_sha256.is_none() => p.add(
            "admin.listen",
            format!(
                "{addr} is not a loopback address: set admin.token_sha256 so that only holders of the \
                 admin token can reload the configuration, or listen on 127.0.0.1"
            ),
        ),
        Ok(addr) if Some(addr) == config.server.listen_addr() && addr.port() != 0 => p.add(
            "admin.listen",
            format!("{addr} is also server.listen; the admin listener needs an address of its own"),
        ),
        Ok(_) => {}
    }
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

pub fn is_oidc_provider_arn(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("acs:ram::") else {
        return false;
    };
    let Some((account, name)) = rest.split_once(":oidc-provider/") else {
        return false;
    };
    !account.is_empty()
        && account.chars().all(|c| c.is_ascii_digit())
        && !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".@_-".contains(c))
}

pub fn check_external_id(path: &str, ext: &str, p: &mut Problems) {
    let ok_chars = ext
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_+=,.@:/-".contains(c));
    if !(2..=1224).contains(&ext.len()) || !ok_chars {
        p.add(path, "must be 2-1224 characters of letters, digits and _+=,.@:/-");
    }
}

fn check_sts(config: &Config, env: &BTreeMap<String, String>, p: &mut Problems) {
    let sts = &config.sts;
    if let Some(region) = &sts.region
        && let Err(why) = check_region(region)
    {
        p.add("sts.region", format!("{region:?} {why}"));
    }
    match sts.resolve_endpoint(env) {
        Err(e) => p.add("sts.vpc", e),
        Ok(endpoint) => {
            let key = if sts.endpoint.is_some() {
                "sts.endpoint"
            } else {
                "sts.endpoint (from sts.region / ALIBABA_CLOUD_STS_REGION)"
            };
            check_endpoint(key, &endpoint, p);
        }
    }
    if !is_role_arn(&sts.role_arn) {
        p.add(
            "sts.role_arn",
            format!(
                "{:?} is not a role ARN like acs:ram::1234567890123456:role/oss-upload",
                sts.role_arn
            ),
        );
    }
    check_session_name("sts.session_name", &sts.session_name, p);
    check_duration("sts.duration_seconds", sts.duration_seconds, config, p);
    if sts.refresh_before < sts.min_remaining {
        p.add(
            "sts.refresh_before",
            format!(
                "({}s) must be at least sts.min_remaining ({}s), or entries would expire out of the cache before being refreshed",
                sts.refresh_before.as_secs(),
                sts.min_remaining.as_secs()
            ),
        );
    }
    if !(1..=100).contains(&sts.max_calls_per_second) {
        p.add(
            "sts.max_calls_per_second",
            "must be between 1 and 100 (STS allows about 100 calls/s per account)",
        );
    }
    if sts.timeout.is_zero() {
        p.add("sts.timeout", "must be greater than zero");
    }
    if sts.connect_timeout.is_zero() {
        p.add("sts.connect_timeout", "must be greater than zero");
    }
    if sts.max_retries > 10 {
        p.add("sts.max_retries", "must be at most 10");
    }
    if sts.cache_capacity == 0 {
        p.add("sts.cache_capacity", "must be at least 1");
    }
    if sts.failure_backoff > Duration::from_secs(300) {
        p.add("sts.failure_backoff", "must be at most 5m");
    }
    if sts.failure_backoff_max < sts.failure_backoff || sts.failure_backoff_max > Duration::from_secs(3600) {
        p.add(
            "sts.failure_backoff_max",
            format!(
                "({}s) must be at least sts.failure_backoff ({}s) and at most 1h",
                sts.failure_backoff_max.as_secs_f64(),
                sts.failure_backoff.as_secs_f64()
            ),
        );
    }
    if let Some(ext) = &sts.external_id {
        check_external_id("sts.external_id", ext, p);
    }
}

fn check_grants(config: &Config, p: &mut Problems) {
    if config.grants.is_empty() {
        p.add("grants", "at least one [[grants]] entry is needed");
    }
    let mut seen = HashSet::new();
    for (i, g) in config.grants.iter().enumerate() {
        let at = |key: &str| format!("grants[{i}].{key}");
        check_grant_name(&at("name"), g, &mut seen, p);
        check_grant_location(i, g, config, p);
        check_grant_actions(i, g, p);
        if let Some(d) = g.duration_seconds {
            check_duration(&at("duration_seconds"), d, config, p);
        }
        if let Some(s) = &g.session_name {
            check_grant_session_name(&at("session_name"), s, config, p);
        }
        if let Some(text) = &g.policy {
            check_policy_placeholders(&at("policy"), text, config, p);
        }
        check_grant_auth(i, g, config, p);
        check_grant_upload(i, g, config, p);
        match render_grant_policy(g) {
            Err(e) => p.add(at("policy"), e.to_string()),
            Ok(policy) if g.multipart => check_multipart_actions(&at("multipart"), &policy, p),
            Ok(_) => {}
        }
    }
}

/// The OSS actions an upload session needs from the grant's credential: the
/// server itself initiates, lists, completes and aborts with it.
pub const MULTIPART_ACTIONS: [&str; 3] = ["oss:PutObject", "oss:ListParts", "oss:AbortMultipartUpload"];

/// `multipart = true` needs [`MULTIPART_ACTIONS`] allowed by the grant's policy
/// (an `Allow` statement naming each, `oss:*` or `*`).
fn check_multipart_actions(path: &str, policy: &str, p: &mut Problems) {
    let doc: serde_json::Value = serde_json::from_str(policy).unwrap_or_default();
    let statements = match &doc["Statement"] {
        serde_json::Value::Array(a) => a.clone(),
        other => vec![other.clone()],
    };
    let allowed: Vec<String> = statements
        .iter()
        .filter(|s| s["Effect"] == "Allow")
        .flat_map(|s| match &s["Action"] {
            serde_json::Value::String(a) => vec![a.clone()],
            serde_json::Value::Array(a) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
            _ => Vec::new(),
        })
        .collect();
    let missing: Vec<&str> = MULTIPART_ACTIONS
        .into_iter()
        .filter(|need| !allowed.iter().any(|a| a == need || a == "oss:*" || a == "*"))
        .collect();
    if !missing.is_empty() {
        p.add(
            path,
            format!(
                "upload sessions need the grant's policy to allow {}; missing: {} (add them to actions)",
                MULTIPART_ACTIONS.join(", "),
                missing.join(", ")
            ),
        );
    }
}

/// 1-64 characters of `[A-Za-z0-9._-]`, unique among the grants.
fn check_grant_name<'a>(path: &str, g: &'a GrantConfig, seen: &mut HashSet<&'a str>, p: &mut Problems) {
    if g.name.is_empty()
        || g.name.len() > 64
        || !g
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        p.add(
            path,
            format!("{:?} must be 1-64 characters of letters, digits and ._-", g.name),
        );
    } else if !seen.insert(g.name.as_str()) {
        p.add(path, format!("{:?} is used by another grant", g.name));
    }
}

/// Where the grant's objects go: bucket, region, endpoint, prefix.
fn check_grant_location(i: usize, g: &GrantConfig, config: &Config, p: &mut Problems) {
    let at = |key: &str| format!("grants[{i}].{key}");
    if let Err(why) = check_bucket(&g.bucket) {
        p.add(at("bucket"), format!("{:?} {why}", g.bucket));
    }
    if let Err(why) = check_region(&g.region) {
        p.add(at("region"), format!("{:?} {why}", g.region));
    }
    if let Some(ep) = &g.endpoint {
        check_endpoint(&at("endpoint"), ep, p);
    }
    // Placeholders are checked here; the literal text around them like a plain prefix.
    check_template(&at("prefix"), &g.prefix, &["subject", "date"], config, p);
    if let Err(why) = check_prefix(&literal_text(&g.prefix)) {
        p.add(at("prefix"), format!("{:?} {why}", g.prefix));
    }
}

/// What the grant allows: OSS actions, none of which (nor the explicit policy)
/// may grant `PutObjectAcl` by a wildcard.
fn check_grant_actions(i: usize, g: &GrantConfig, p: &mut Problems) {
    if g.actions.is_empty() {
        p.add(
            format!("grants[{i}].actions"),
            "must list at least one action, e.g. [\"oss:PutObject\"]",
        );
    }
    for (j, a) in g.actions.iter().enumerate() {
        let ok = a.strip_prefix("oss:").is_some_and(|rest| {
            !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphabetic() || c == '*')
        });
        if !ok {
            p.add(
                format!("grants[{i}].actions[{j}]"),
                format!("{a:?} is not an OSS action like \"oss:PutObject\""),
            );
        } else if policy::wildcard_grants_object_acl(a) {
            p.add(
                format!("grants[{i}].actions[{j}]"),
                acl_by_wildcard(&format!("{a:?}")),
            );
        }
    }
    if g.policy.is_some()
        && let Ok(text) = render_grant_policy(g)
        && let Some(place) = policy::object_acl_by_wildcard(&text)
    {
        p.add(format!("grants[{i}].policy"), acl_by_wildcard(&place));
    }
}

fn check_grant_session_name(path: &str, s: &str, config: &Config, p: &mut Problems) {
    check_template(path, s, &["subject"], config, p);
    // A rendered name is sanitised; the literal part must already be valid.
    let lit = literal_text(s);
    if !lit
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || ".@_-".contains(c))
        || (lit == *s && s.len() < 2)
        || lit.len() > 64
    {
        p.add(
            path,
            format!("{s:?} must be 2-64 characters of letters, digits and .@_- (plus placeholders)"),
        );
    }
}

/// Placeholders live inside the document's string values; a document that is
/// not JSON is reported once, by `render_grant_policy`.
fn check_policy_placeholders(path: &str, text: &str, config: &Config, p: &mut Problems) {
    if let Ok(doc) = policy::PolicyTemplate::parse(text) {
        for s in doc.strings() {
            check_template(path, s, &["subject", "date"], config, p);
        }
        for k in doc.keys_with_braces() {
            p.add(
                path,
                format!("placeholders are filled only in string values, not in the key {k:?}"),
            );
        }
    }
}

/// The direct-upload settings: S3 endpoint, size, media types, key template,
/// validity and the PostObject success answer.
fn check_grant_upload(i: usize, g: &GrantConfig, config: &Config, p: &mut Problems) {
    let at = |key: &str| format!("grants[{i}].{key}");
    if let Some(ep) = &g.s3_endpoint {
        check_endpoint(&at("s3_endpoint"), ep, p);
    }
    if g.max_size_bytes == 0 || g.max_size_bytes > MAX_OBJECT_BYTES {
        p.add(
            at("max_size_bytes"),
            format!("must be between 1 and {MAX_OBJECT_BYTES} (5 GiB, the PostObject limit)"),
        );
    }
    for (j, ct) in g.content_types.iter().enumerate() {
        if !is_media_type(ct) {
            p.add(
                format!("grants[{i}].content_types[{j}]"),
                format!("{ct:?} is not a media type like \"image/png\""),
            );
        }
    }
    if let Err(why) = crate::policy::check_key_template(&g.key_template) {
        p.add(at("key_template"), why);
    }
    check_template(
        &at("key_template"),
        &g.key_template,
        &["prefix", "uuid", "date", "ext", "subject"],
        config,
        p,
    );
    let expires = g.upload_expires.as_secs();
    if !(1..=604_800).contains(&expires) {
        p.add(at("upload_expires"), "must be between 1 second and 7 days");
    }
    if ![200, 201, 204].contains(&g.success_action_status) {
        p.add(at("success_action_status"), "must be 200, 201 or 204");
    }
    if let Some(url) = &g.success_action_redirect {
        check_endpoint(&at("success_action_redirect"), url, p);
    }
}

/// The session policy a grant sends to STS (explicit, or rendered from its
/// bucket, prefix and actions), with every caller placeholder filled with a
/// 64-character value: the longest the default pattern admits, so a policy
/// that passes here fits the 2048-character limit for any caller.
pub fn render_grant_policy(g: &GrantConfig) -> Result<String, policy::PolicyError> {
    let worst = "x".repeat(64);
    // The longest namespace name in front of a namespaced subject.
    let worst_subject = if g.namespaced_subjects() {
        format!("api_key.{worst}")
    } else {
        worst.clone()
    };
    let fill = |t: &str| -> String {
        let mut out = t.to_string();
        for name in crate::policy::template::placeholder_names(t).unwrap_or_default() {
            let value = match name {
                "date" => "20260101",
                "subject" => worst_subject.as_str(),
                _ => worst.as_str(),
            };
            out = out.replace(&format!("{{{name}}}"), value);
        }
        out
    };
    match &g.policy {
        Some(text) => policy::PolicyTemplate::parse(text)?
            .render(|s| Ok::<_, std::convert::Infallible>(fill(s)))
            .unwrap_or_else(|never| match never {}),
        None => policy::render_prefix_policy(&g.bucket, &fill(&g.prefix), &g.actions),
    }
}

/// `t` without its `{placeholders}`.
fn literal_text(t: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for c in t.chars() {
        match c {
            '{' => depth += 1,
            '}' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// Every placeholder of `t` must be in `allowed`, or `claim.NAME` with NAME
/// listed in `auth.jwt.template_claims`.
fn check_template(path: &str, t: &str, allowed: &[&str], config: &Config, p: &mut Problems) {
    let names = match crate::policy::template::placeholder_names(t) {
        Ok(n) => n,
        Err(e) => return p.add(path, e),
    };
    let claims = config
        .auth
        .jwt
        .as_ref()
        .map(|j| j.template_claims.as_slice())
        .unwrap_or_default();
    for name in names {
        let ok = allowed.contains(&name)
            || name
                .strip_prefix("claim.")
                .is_some_and(|c| claims.iter().any(|x| x == c));
        if !ok {
            let hint = if name.starts_with("claim.") {
                " (list the claim in auth.jwt.template_claims)"
            } else {
                ""
            };
            p.add(
                path,
                format!("unknown placeholder {{{name}}}; allowed: {allowed:?} and {{claim.NAME}}{hint}"),
            );
        }
    }
}

/// Every template text of a grant; an explicit policy contributes the string
/// values of its JSON, where its placeholders stand (or its text, if it is not JSON).
fn grant_templates(g: &GrantConfig) -> Vec<String> {
    let mut out: Vec<String> = [Some(&g.prefix), g.session_name.as_ref(), Some(&g.key_template)]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    if let Some(text) = &g.policy {
        match policy::PolicyTemplate::parse(text) {
            Ok(doc) => out.extend(doc.strings().into_iter().map(str::to_owned)),
            Err(_) => out.push(text.clone()),
        }
    }
    out
}

fn uses_caller_values(g: &GrantConfig) -> bool {
    grant_templates(g)
        .iter()
        .any(|t| t.contains("{subject}") || t.contains("{claim."))
}

/// `x-oss-object-acl` on an upload has the effect of PutObjectACL: a grant
/// that hands out `oss:PutObjectAcl` lets its callers make objects public, so
/// that right is only ever given by name.
fn acl_by_wildcard(what: &str) -> String {
    format!(
        "{what} also grants oss:PutObjectAcl: callers could make their objects public (an upload carrying \
         x-oss-object-acl has the effect of PutObjectAcl). List the actions the grant needs, and name \
         \"oss:PutObjectAcl\" explicitly only if callers may set ACLs"
    )
}

/// Whether any template of the grant names `{subject}`.
fn uses_subject(g: &GrantConfig) -> bool {
    grant_templates(g)
        .iter()
        .any(|t| crate::policy::template::placeholder_names(t).is_ok_and(|n| n.contains(&"subject")))
}

/// API key ids and JWT subjects are separate id spaces: rendered into one
/// `{subject}` as they are, `alice` of one would get the prefix and cached
/// credential of `alice` of the other. A grant taking both must say which it
/// means; the default is no default, so that no existing deployment silently
/// starts writing elsewhere. (`{claim.*}` only ever comes from the one JWT
/// issuer, API keys carry no claims, so claims need no such choice.)
fn check_subjects(i: usize, g: &GrantConfig, p: &mut Problems) {
    if g.subjects.is_none() && g.mixes_subject_namespaces() && uses_subject(g) {
        p.add(
            format!("grants[{i}].subjects"),
            format!(
                "grant {:?} puts callers of api_key and jwt into {{subject}}, but API key ids and JWT subjects \
                 are separate namespaces: an API key \"alice\" and a JWT subject \"alice\" would share one \
                 prefix and one credential. Set subjects = \"namespaced\" ({{subject}} becomes \"api_key.alice\" \
                 or \"jwt.alice\"), or subjects = \"shared\" if both methods name the same users on purpose",
                g.name
            ),
        );
    }
}

fn check_grant_auth(i: usize, g: &GrantConfig, config: &Config, p: &mut Problems) {
    use super::AuthMethod;
    check_subjects(i, g, p);
    let at = format!("grants[{i}].auth");
    if g.auth.is_empty() {
        p.add(&at, "must list at least one method: api_key, jwt, ticket or none");
    }
    let only_methods_without_subject = g.auth.iter().all(|m| *m == AuthMethod::None);
    if only_methods_without_subject && uses_caller_values(g) {
        p.add(
            &at,
            "the grant's templates use {subject} or {claim.*} but it only accepts anonymous callers",
        );
    }
    for m in &g.auth {
        match m {
            AuthMethod::ApiKey if config.auth.api_keys.is_empty() => {
                p.add(&at, "accepts api_key but [[auth.api_keys]] lists no key")
            }
            AuthMethod::Jwt if config.auth.jwt.is_none() => p.add(&at, "accepts jwt but [auth.jwt] is not configured"),
            AuthMethod::Ticket if !g.auth.iter().any(|m| matches!(m, AuthMethod::ApiKey | AuthMethod::Jwt)) => p.add(
                &at,
                "accepts ticket, but tickets are minted by callers authenticated with api_key or jwt on this grant",
            ),
            _ => {}
        }
    }
}

fn check_auth(config: &Config, p: &mut Problems) {
    let auth = &config.auth;
    check_api_keys(config, p);
    if let Some(j) = &auth.jwt {
        check_jwt(j, p);
    }
    if let Err(e) = crate::policy::template::Placeholders::new(&auth.placeholders) {
        p.add("auth.placeholders", e);
    }
    if let Some(var) = &auth.tickets.secret_env
        && var.is_empty()
    {
        p.add("auth.tickets.secret_env", "must name an environment variable");
    }
    if auth.tickets.ttl.is_zero() || auth.tickets.ttl.as_secs() > 3600 {
        p.add("auth.tickets.ttl", "must be between 1 second and 1 hour");
    }
    check_cors(&config.cors, p);
    check_trusted_proxies(&config.rate_limit.trusted_proxies, p);
}

/// Each key: a SHA-256 digest, a unique id usable as `{subject}`, grants that exist.
fn check_api_keys(config: &Config, p: &mut Problems) {
    let auth = &config.auth;
    let mut ids = HashSet::new();
    for (i, k) in auth.api_keys.iter().enumerate() {
        let ok = k.sha256.len() == 64
            && k.sha256
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
        if !ok {
            p.add(
                format!("auth.api_keys[{i}].sha256"),
                "must be 64 lower-case hex digits (ossvend hash-key prints it)",
            );
        }
        if !crate::policy::template::Placeholders::default().allows("subject", &k.id) {
            p.add(
                format!("auth.api_keys[{i}].id"),
                format!("{:?} must match [A-Za-z0-9._@-]{{1,64}}", k.id),
            );
        }
        if !ids.insert(k.id.as_str()) {
            p.add(
                format!("auth.api_keys[{i}].id"),
                format!("{:?} is used by another key", k.id),
            );
        }
        for (j, g) in k.grants.iter().enumerate() {
            if !config.grants.iter().any(|x| &x.name == g) {
                p.add(
                    format!("auth.api_keys[{i}].grants[{j}]"),
                    format!("no grant is named {g:?}"),
                );
            }
        }
    }
}

fn check_jwt(j: &JwtConfig, p: &mut Problems) {
    check_endpoint("auth.jwt.jwks_url", &j.jwks_url, p);
    if j.issuer.is_empty() {
        p.add("auth.jwt.issuer", "must not be empty");
    }
    if j.audience.is_empty() {
        p.add("auth.jwt.audience", "must list at least one audience");
    }
    const ALLOWED: &[&str] = &[
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
    ];
    for (k, a) in j.algorithms.iter().enumerate() {
        if !ALLOWED.contains(&a.as_str()) {
            p.add(
                format!("auth.jwt.algorithms[{k}]"),
                format!("{a:?} is not allowed; use asymmetric algorithms only: {ALLOWED:?}"),
            );
        }
    }
    if j.algorithms.is_empty() {
        p.add("auth.jwt.algorithms", "must list at least one algorithm");
    }
}

fn check_cors(cors: &CorsConfig, p: &mut Problems) {
    for (i, o) in cors.allowed_origins.iter().enumerate() {
        if !is_browser_origin(o) {
            p.add(
                format!("cors.allowed_origins[{i}]"),
                format!(
                    "{o:?} is not an origin as a browser sends it: scheme://host[:port], http or https, \
                     lower case, no path, query or default port, like https://app.example.com \
                     (use allow_any_origin for *)"
                ),
            );
        }
    }
    for (i, o) in cors.allowed_origin_patterns.iter().enumerate() {
        if origin_pattern(o).is_none() {
            p.add(
                format!("cors.allowed_origin_patterns[{i}]"),
                format!(
                    "{o:?} must be scheme://*.host[:port] as a browser sends origins, like \
                     https://*.example.com (http or https, lower case, no path, query or default port)"
                ),
            );
        }
    }
    if cors.allow_any_origin_for_credentials && !cors.allow_any_origin {
        p.add(
            "cors.allow_any_origin_for_credentials",
            "only means something with cors.allow_any_origin = true",
        );
    }
}

fn check_trusted_proxies(trusted: &[String], p: &mut Problems) {
    for (i, t) in trusted.iter().enumerate() {
        if t.parse::<ipnet::IpNet>().is_err() && t.parse::<std::net::IpAddr>().is_err() {
            p.add(
                format!("rate_limit.trusted_proxies[{i}]"),
                format!("{t:?} is not an IP address or CIDR"),
            );
        }
    }
}

fn check_duration(path: &str, d: u32, config: &Config, p: &mut Problems) {
    if !(MIN_DURATION_SECONDS..=MAX_DURATION_SECONDS).contains(&d) {
        p.add(
            path,
            format!("{d} must be between {MIN_DURATION_SECONDS} and {MAX_DURATION_SECONDS} seconds"),
        );
        return;
    }
    let refresh = config.sts.refresh_before.as_secs();
    if u64::from(d) <= refresh {
        p.add(
            path,
            format!(
                "{d}s leaves no usable life: credentials are refreshed {refresh}s before expiry \
                 (sts.refresh_before) and served only with {}s left (sts.min_remaining)",
                config.sts.min_remaining.as_secs()
            ),
        );
    }
}

pub fn check_session_name(path: &str, s: &str, p: &mut Problems) {
    let ok =
        (2..=64).contains(&s.len()) && s.chars().all(|c| c.is_ascii_alphanumeric() || ".@_-".contains(c));
    if !ok {
        p.add(
            path,
            format!("{s:?} must be 2-64 characters of letters, digits and .@_-"),
        );
    }
}

fn check_endpoint(path: &str, value: &str, p: &mut Problems) {
    match url::Url::parse(value) {
        Err(e) => p.add(path, format!("{value:?} is not a URL: {e}")),
        Ok(u) => {
            let loopback = match u.host() {
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                Some(url::Host::Domain(d)) => d == "localhost",
                None => false,
            };
            match u.scheme() {
                "https" => {}
                // Plain HTTP would carry credentials in clear text; only loopback
                // (tests, local emulators) is exempt.
                "http" if loopback => {}
                "http" => p.add(
                    path,
                    format!("{value:?} must use https (plain http is allowed only for loopback)"),
                ),
                other => p.add(path, format!("{value:?} has scheme {other:?}; use https")),
            }
            if u.host().is_none() {
                p.add(path, format!("{value:?} has no host"));
            }
        }
    }
}

/// `type/subtype` with token characters only (parameters such as `; charset=`
/// would have to be matched byte for byte by every client, so they are refused).
pub fn is_media_type(s: &str) -> bool {
    let token = |t: &str| {
        !t.is_empty()
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$&^_.+-".contains(c))
    };
    s.split_once('/').is_some_and(|(a, b)| token(a) && token(b))
}

pub fn is_role_arn(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("acs:ram::") else {
        return false;
    };
    let Some((account, role)) = rest.split_once(":role/") else {
        return false;
    };
    !account.is_empty()
        && account.chars().all(|c| c.is_ascii_digit())
        && !role.is_empty()
        && role.len() <= 64
        && role
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".@_-".contains(c))
}

/// OSS bucket naming rules: 3-63 characters, lower-case letters, digits and
/// hyphens, starting and ending with a letter or digit.
pub fn check_bucket(b: &str) -> Result<(), &'static str> {
    if !(3..=63).contains(&b.len()) {
        return Err("must be 3-63 characters long");
    }
    if !b
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err("may contain only lower-case letters, digits and hyphens");
    }
    if b.starts_with('-') || b.ends_with('-') {
        return Err("must start and end with a letter or digit");
    }
    Ok(())
}

/// A region id like `cn-hangzhou` (hostnames add `oss-`, signatures do not).
pub fn check_region(r: &str) -> Result<(), &'static str> {
    if r.starts_with("oss-") {
        return Err("must be the region id without the \"oss-\" prefix, e.g. \"cn-hangzhou\"");
    }
    let parts: Vec<&str> = r.split('-').collect();
    let ok = parts.len() >= 2
        && parts[0].len() >= 2
        && parts[0].chars().all(|c| c.is_ascii_lowercase())
        && parts[1..]
            .iter()
            .all(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
    if ok {
        Ok(())
    } else {
        Err("is not a region id like \"cn-hangzhou\"")
    }
}

/// A key prefix is spliced into a policy resource, so wildcard and path-escape
/// characters are refused outright.
pub fn check_prefix(prefix: &str) -> Result<(), &'static str> {
    if prefix.starts_with('/') {
        return Err("must not start with \"/\" (OSS keys have no leading slash)");
    }
    if prefix.contains(['*', '?', '"', '\\']) || prefix.chars().any(char::is_control) {
        return Err("must not contain *, ?, quotes, backslashes or control characters");
    }
    if prefix.split('/').any(|seg| seg == ".." || seg == ".") {
        return Err("must not contain \".\" or \"..\" path segments");
    }
    if prefix.len() > 1023 {
        return Err("is longer than an OSS key may be");
    }
    Ok(())
}

/// True if `s` is an origin exactly as a browser serializes it in `Origin`:
/// `http(s)://host[:port]`, lower case, no default port, nothing else. Anything
/// else (`null`, `?`, `#`, `\\`, a path, user info) is never sent by a browser.
pub fn is_browser_origin(s: &str) -> bool {
    url::Url::parse(s)
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.origin().ascii_serialization() == s)
}

/// A CORS origin pattern `scheme://*.suffix[:port]` as (`scheme://`, `.suffix[:port]`),
/// if every origin it can match is a browser origin; `None` otherwise. The `*`
/// stands for one or more labels (`a.example.com`, `a.b.example.com`, not the apex).
pub fn origin_pattern(pattern: &str) -> Option<(String, String)> {
    let (scheme, rest) = pattern.split_once("://*.")?;
    let ok = matches!(scheme, "http" | "https")
        && !rest.contains('*')
        && is_browser_origin(&format!("{scheme}://x.{rest}"));
    ok.then(|| (format!("{scheme}://"), format!(".{rest}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[sts]
endpoint = "http://127.0.0.1:9"
role_arn = "acs:ram::1234567890123456:role/oss-upload"

[[grants]]
name = "g"
bucket = "examplebucket"
region = "cn-hangzhou"
prefix = "uploads/"
"#;

    fn server_problems(env: &[(&str, &str)]) -> Vec<String> {
        let env: BTreeMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let config = super::super::parse(MINIMAL, &env).unwrap();
        validate(&config, &env)
            .into_iter()
            .filter(|p| p.path.starts_with("server."))
            .map(|p| p.to_string())
            .collect()
    }

    #[test]
    fn upload_sessions_need_the_multipart_actions_in_the_policy() {
        let problems = |extra: &str| -> Vec<String> {
            let env = BTreeMap::new();
            let config = super::super::parse(&format!("{MINIMAL}{extra}"), &env).unwrap();
            validate(&config, &env)
                .into_iter()
                .filter(|p| p.path == "grants[0].multipart")
                .map(|p| p.to_string())
                .collect()
        };
        assert!(problems("").is_empty(), "off by default");
        let missing = problems("multipart = true\nactions = [\"oss:PutObject\"]\n");
        assert_eq!(missing.len(), 1, "{missing:?}");
        assert!(
            missing[0].contains("missing: oss:ListParts, oss:AbortMultipartUpload"),
            "{missing:?}"
        );
        let all = "multipart = true\nactions = [\"oss:PutObject\", \"oss:ListParts\", \"oss:AbortMultipartUpload\"]\n";
        assert!(problems(all).is_empty(), "{:?}", problems(all));
        let explicit = r#"multipart = true
policy = '{"Version":"1","Statement":[{"Effect":"Allow","Action":"oss:*","Resource":"acs:oss:*:*:examplebucket/uploads/*"}]}'
"#;
        assert!(problems(explicit).is_empty(), "{:?}", problems(explicit));
    }

    #[test]
    fn connection_settings_have_safe_defaults_and_refuse_zero_or_absurd_values() {
        let config = super::super::parse(MINIMAL, &BTreeMap::new()).unwrap();
        assert_eq!(
            config.server.header_read_timeout,
            std::time::Duration::from_secs(10)
        );
        assert_eq!(config.server.idle_timeout, std::time::Duration::from_secs(75));
        assert_eq!(config.server.max_connections, 4096);
        assert!(server_problems(&[]).is_empty());
        // Set through the environment, like every [server] key.
        assert!(
            server_problems(&[
                ("OSSVEND_SERVER_HEADER_READ_TIMEOUT", "2s"),
                ("OSSVEND_SERVER_IDLE_TIMEOUT", "90s"),
                ("OSSVEND_SERVER_MAX_CONNECTIONS", "100"),
            ])
            .is_empty()
        );
        let bad = server_problems(&[
            ("OSSVEND_SERVER_HEADER_READ_TIMEOUT", "0s"),
            ("OSSVEND_SERVER_IDLE_TIMEOUT", "2h"),
            ("OSSVEND_SERVER_MAX_CONNECTIONS", "0"),
        ]);
        assert_eq!(
            bad,
            [
                "server.header_read_timeout: 0s must be greater than zero and at most 5m",
                "server.idle_timeout: 2h must be greater than zero and at most 1h",
                "server.max_connections: 0 must be between 1 and 1048576",
            ]
        );
        let bad = server_problems(&[
            ("OSSVEND_SERVER_HEADER_READ_TIMEOUT", "10m"),
            ("OSSVEND_SERVER_MAX_CONNECTIONS", "2000000"),
        ]);
        assert_eq!(bad.len(), 2, "{bad:?}");
    }

    /// The 2048-character check renders the longest caller values, and a
    /// namespaced `{subject}` is longer by its namespace.
    #[test]
    fn the_policy_length_check_counts_the_subject_namespace() {
        let text = |extra: &str| {
            format!(
                "[sts]\nrole_arn = \"acs:ram::1234567890123456:role/r\"\n[[grants]]\nname = \"g\"\n\
                 bucket = \"b-1\"\nregion = \"cn-hangzhou\"\nprefix = \"u/{{subject}}/\"\n{extra}"
            )
        };
        let policy = |extra: &str| {
            let cfg = crate::config::parse(&text(extra), &BTreeMap::new()).unwrap();
            render_grant_policy(&cfg.grants[0]).unwrap()
        };
        let x64 = "x".repeat(64);
        assert!(policy("auth = [\"jwt\"]").contains(&format!("b-1/u/{x64}/*")));
        assert!(
            policy("auth = [\"jwt\", \"api_key\"]\nsubjects = \"namespaced\"")
                .contains(&format!("b-1/u/api_key.{x64}/*"))
        );
        assert!(
            policy("auth = [\"jwt\", \"api_key\"]\nsubjects = \"shared\"")
                .contains(&format!("b-1/u/{x64}/*"))
        );
    }

    #[test]
    fn names() {
        assert!(is_role_arn("acs:ram::1234567890123456:role/oss-upload"));
        assert!(!is_role_arn("acs:ram::12ab:role/x"));
        assert!(!is_role_arn("acs:ram::123:user/x"));
        assert!(check_bucket("examplebucket").is_ok());
        assert!(check_bucket("Example").is_err());
        assert!(check_bucket("ab").is_err());
        assert!(check_bucket("-ab").is_err());
        assert!(check_region("cn-hangzhou").is_ok());
        assert!(check_region("ap-southeast-1").is_ok());
        assert!(check_region("oss-cn-hangzhou").is_err());
        assert!(check_region("hangzhou").is_err());
        assert!(check_prefix("uploads/").is_ok());
        assert!(check_prefix("").is_ok());
        assert!(check_prefix("a/*").is_err());
        assert!(check_prefix("a/../b/").is_err());
        assert!(check_prefix("/a").is_err());
    }

    fn shared_problems(shared: &str, tickets: bool, env: &[(&str, &str)]) -> Vec<String> {
        let env: BTreeMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let tickets = if tickets {
            "[auth.tickets]\nsecret_env = \"T\"\n"
        } else {
            ""
        };
        let text = format!("{MINIMAL}\n{tickets}\n[shared]\n{shared}");
        let config = super::super::parse(&text, &env).unwrap();
        validate(&config, &env)
            .into_iter()
            .filter(|p| p.path.starts_with("shared.") || p.path == "auth.tickets.secret_env")
            .map(|p| p.to_string())
            .collect()
    }

    #[test]
    fn fleet_mode_needs_a_ticket_secret_a_long_key_and_no_password_in_the_url() {
        const KEY: (&str, &str) = ("K", "fake-fleet-key-of-at-least-32-bytes!!");
        let ok = "url = \"redis://127.0.0.1:6390\"\nencryption_key_env = \"K\"\n";
        assert_eq!(shared_problems(ok, true, &[KEY]), Vec::<String>::new());
        let c = super::super::parse(&format!("{MINIMAL}\n[shared]\n{ok}"), &BTreeMap::new()).unwrap();
        let s = c.shared.unwrap();
        assert_eq!(
            (
                s.key_prefix.as_str(),
                s.on_unavailable,
                s.replicas,
                s.command_timeout
            ),
            (
                "ossvend:",
                crate::config::OnUnavailable::Local,
                1,
                Duration::from_millis(250)
            )
        );
        // No ticket secret: refused (a ticket minted on one replica would fail on the others).
        let p = shared_problems(ok, false, &[KEY]);
        assert!(
            p.len() == 1 && p[0].starts_with("auth.tickets.secret_env: fleet mode"),
            "{p:?}"
        );
        // A missing or short key.
        assert!(shared_problems(ok, true, &[])[0].contains("K is not set"));
        let p = shared_problems(ok, true, &[("K", "short-key")]);
        assert!(p[0].contains("9 bytes") && !p[0].contains("short-key"), "{p:?}");
        // A password in the URL is refused, and the problem never shows it.
        let with_pw = "url = \"redis://:hunter2-fake@127.0.0.1:6390\"\nencryption_key_env = \"K\"\n";
        let p = shared_problems(with_pw, true, &[KEY]);
        assert!(
            p.len() == 1 && p[0].contains("must not carry a password"),
            "{p:?}"
        );
        assert!(!p[0].contains("hunter2"));
        let p = shared_problems(&with_pw.replace("redis://", "http://"), true, &[KEY]);
        assert!(
            p[0].contains("redis:// or rediss://") && !p[0].contains("hunter2"),
            "{p:?}"
        );
        // Variables named but unset; nonsense numbers.
        let more = format!("{ok}password_env = \"PW\"\nreplicas = 0\ncommand_timeout = \"0s\"\n");
        let p = shared_problems(&more, true, &[KEY]);
        assert_eq!(p.len(), 3, "{p:?}");
    }

    #[test]
    fn a_ca_file_must_be_a_readable_pem_bundle_for_a_tls_url() {
        const KEY: (&str, &str) = ("K", "fake-fleet-key-of-at-least-32-bytes!!");
        let dir = tempfile::tempdir().unwrap();
        // A self-signed certificate (any will do: only the PEM shape is checked here).
        let cert = "-----BEGIN CERTIFICATE-----\nMIIBVzCB/qADAgECAhQtYXRlc3QtY2EtZm9yLW9zc3ZlbmQwCgYIKoZIzj0EAwIw\n-----END CERTIFICATE-----\n";
        let files = [
            ("ca.pem", cert.to_string()),
            ("empty.pem", "# no certificate here\n".to_string()),
            (
                "key.pem",
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_string(),
            ),
        ];
        for (name, text) in &files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let cfg = |url: &str, file: &str| {
            let path = dir.path().join(file);
            format!(
                "url = \"{url}\"\nencryption_key_env = \"K\"\nca_file = \"{}\"\n",
                path.display()
            )
        };
        let tls = "rediss://r-bp1.redis.rds.aliyuncs.com:6380";
        assert_eq!(
            shared_problems(&cfg(tls, "ca.pem"), true, &[KEY]),
            Vec::<String>::new()
        );
        for (file, says) in [
            ("missing.pem", "cannot read"),
            ("empty.pem", "holds no PEM certificate"),
            ("key.pem", "holds no PEM certificate"),
        ] {
            let p = shared_problems(&cfg(tls, file), true, &[KEY]);
            assert!(
                p.len() == 1 && p[0].starts_with("shared.ca_file:") && p[0].contains(says),
                "{p:?}"
            );
        }
        let p = shared_problems(&cfg("redis://127.0.0.1:6390", "ca.pem"), true, &[KEY]);
        assert!(
            p.len() == 1 && p[0].contains("only used with a rediss:// url"),
            "{p:?}"
        );
    }
}
