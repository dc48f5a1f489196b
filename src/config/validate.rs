//! Semantic checks. Every problem is collected, with its key path, so that an
//! operator fixes a config in one round instead of one error per restart.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use super::{Config, GrantConfig};
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

struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
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

/// Checks `config` as loaded; `env` is the process environment (for the identity).
pub fn validate(config: &Config, env: &BTreeMap<String, String>) -> Vec<Problem> {
    let mut p = Problems(Vec::new());
    check_server(config, &mut p);
    check_identity(config, env, &mut p);
    check_sts(config, &mut p);
    check_grants(config, &mut p);
    p.0
}

fn check_server(config: &Config, p: &mut Problems) {
    let server = &config.server;
    match server.listen_addr() {
        None => p.add(
            "server.listen",
            format!("{:?} is not an address like 127.0.0.1:8000", server.listen),
        ),
        // No client authentication exists yet, so every caller is anonymous.
        Some(addr) if !addr.ip().is_loopback() && !server.allow_anonymous => p.add(
            "server.listen",
            format!(
                "{addr} is not a loopback address and no client authentication is configured; \
                 anyone who can reach it could obtain upload credentials. Listen on 127.0.0.1, \
                 or set server.allow_anonymous = true if a gateway in front authenticates callers"
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
}

fn check_identity(config: &Config, env: &BTreeMap<String, String>, p: &mut Problems) {
    let id = &config.identity;
    if id.source != "env" {
        p.add(
            "identity.source",
            format!("{:?} is not supported; supported: \"env\"", id.source),
        );
        return;
    }
    if id.access_key_secret.is_some() && !id.allow_inline_secret {
        p.add(
            "identity.access_key_secret",
            "a secret written in the config file is refused; put it in ALIBABA_CLOUD_ACCESS_KEY_SECRET, \
             or set identity.allow_inline_secret = true if you really mean it",
        );
    }
    let has = |name: &str| env.get(name).is_some_and(|v| !v.is_empty());
    if id.access_key_id.is_none() && !has("ALIBABA_CLOUD_ACCESS_KEY_ID") {
        p.add(
            "identity",
            "source = \"env\" but ALIBABA_CLOUD_ACCESS_KEY_ID is not set",
        );
    }
    if id.access_key_secret.is_none() && !has("ALIBABA_CLOUD_ACCESS_KEY_SECRET") {
        p.add(
            "identity",
            "source = \"env\" but ALIBABA_CLOUD_ACCESS_KEY_SECRET is not set",
        );
    }
}

fn check_sts(config: &Config, p: &mut Problems) {
    let sts = &config.sts;
    check_endpoint("sts.endpoint", &sts.endpoint, p);
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
    if let Some(ext) = &sts.external_id {
        let ok_chars = ext
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+=,.@:/-".contains(c));
        if !(2..=1224).contains(&ext.len()) || !ok_chars {
            p.add(
                "sts.external_id",
                "must be 2-1224 characters of letters, digits and _+=,.@:/-",
            );
        }
    }
}

fn check_grants(config: &Config, p: &mut Problems) {
    if config.grants.is_empty() {
        p.add("grants", "at least one [[grants]] entry is needed");
    }
    let mut seen = HashSet::new();
    for (i, g) in config.grants.iter().enumerate() {
        let at = |key: &str| format!("grants[{i}].{key}");
        if g.name.is_empty()
            || g.name.len() > 64
            || !g
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            p.add(
                at("name"),
                format!("{:?} must be 1-64 characters of letters, digits and ._-", g.name),
            );
        } else if !seen.insert(g.name.as_str()) {
            p.add(at("name"), format!("{:?} is used by another grant", g.name));
        }
        if let Err(why) = check_bucket(&g.bucket) {
            p.add(at("bucket"), format!("{:?} {why}", g.bucket));
        }
        if let Err(why) = check_region(&g.region) {
            p.add(at("region"), format!("{:?} {why}", g.region));
        }
        if let Some(ep) = &g.endpoint {
            check_endpoint(&at("endpoint"), ep, p);
        }
        if let Err(why) = check_prefix(&g.prefix) {
            p.add(at("prefix"), format!("{:?} {why}", g.prefix));
        }
        if g.actions.is_empty() {
            p.add(
                at("actions"),
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
            }
        }
        if let Some(d) = g.duration_seconds {
            check_duration(&at("duration_seconds"), d, config, p);
        }
        if let Some(s) = &g.session_name {
            check_session_name(&at("session_name"), s, p);
        }
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
        let expires = g.upload_expires.as_secs();
        if !(1..=604_800).contains(&expires) {
            p.add(at("upload_expires"), "must be between 1 second and 7 days");
        }
        if ![200, 201, 204].contains(&g.success_action_status) {
            p.add(at("success_action_status"), "must be 200, 201 or 204");
        }
        if let Err(e) = render_grant_policy(g) {
            p.add(at("policy"), e.to_string());
        }
    }
}

/// The session policy a grant sends to STS (explicit, or rendered from its
/// bucket, prefix and actions).
pub fn render_grant_policy(g: &GrantConfig) -> Result<String, policy::PolicyError> {
    match &g.policy {
        Some(text) => policy::compact_explicit_policy(text),
        None => policy::render_prefix_policy(&g.bucket, &g.prefix, &g.actions),
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

fn check_session_name(path: &str, s: &str, p: &mut Problems) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
