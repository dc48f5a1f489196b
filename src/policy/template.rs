//! Templates for prefixes, key names, session names and explicit policies.
//!
//! A value that comes from a caller (`{subject}`, `{claim.NAME}`) must match a
//! strict pattern, and some characters are refused whatever the pattern says:
//! a value is spliced into a policy resource ARN or an object key, and `*`, `?`,
//! `/`, `..`, quotes or whitespace there would widen the grant or break the
//! JSON. Such a value is refused, never escaped.

use std::collections::{BTreeMap, HashMap};

use regex::Regex;

/// The default pattern for caller-supplied values.
pub const DEFAULT_PATTERN: &str = "[A-Za-z0-9._@-]{1,64}";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A caller-derived value is missing or fails its pattern.
    #[error("the caller's {0} cannot be used in this grant's templates")]
    InvalidPrincipal(String),
}

/// Compiled patterns, per placeholder name (`subject`, `claim.tenant`).
#[derive(Debug, Clone)]
pub struct Placeholders {
    default: Regex,
    by_name: HashMap<String, Regex>,
}

fn anchored(p: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{p})$")).map_err(|e| format!("pattern {p:?}: {e}"))
}

impl Placeholders {
    pub fn new(patterns: &BTreeMap<String, String>) -> Result<Self, String> {
        let mut by_name = HashMap::new();
        for (name, p) in patterns {
            by_name.insert(name.clone(), anchored(p)?);
        }
        Ok(Placeholders {
            default: anchored(DEFAULT_PATTERN)?,
            by_name,
        })
    }

    /// Whether `value` may be substituted for placeholder `name`.
    pub fn allows(&self, name: &str, value: &str) -> bool {
        let re = self.by_name.get(name).unwrap_or(&self.default);
        re.is_match(value) && !is_dangerous(value)
    }
}

impl Default for Placeholders {
    fn default() -> Self {
        Placeholders::new(&BTreeMap::new()).expect("the default pattern compiles")
    }
}

/// Refused in any caller value, whatever the configured pattern.
fn is_dangerous(v: &str) -> bool {
    // `.` alone is a path segment that URL clients remove (`users/./`).
    v.is_empty()
        || v == "."
        || v.contains("..")
        || v.chars().any(|c| {
            matches!(c, '*' | '?' | '/' | '\\' | '"' | '\'' | '$' | '{' | '}')
                || c.is_whitespace()
                || c.is_control()
        })
}

/// What a template can refer to for one request.
pub struct Values<'a> {
    pub subject: Option<&'a str>,
    /// Set on grants whose callers come from several id spaces: `{subject}`
    /// renders as `<namespace>.<subject>`. The subject itself is checked
    /// against its pattern first; the namespace is the server's.
    pub subject_namespace: Option<&'a str>,
    pub claims: &'a BTreeMap<String, String>,
    /// Values the server produced itself (`prefix`, `uuid`, `date`, `ext`), not checked.
    pub server: &'a [(&'a str, &'a str)],
    pub placeholders: &'a Placeholders,
}

/// `{date}`: the UTC day as `yyyymmdd` (chrono's `%Y%m%d` for years 0..=9999).
pub fn yyyymmdd(t: chrono::DateTime<chrono::Utc>) -> String {
    // `format_iso8601_extended` is `YYYY-MM-DDT…`; keep the digits of the date.
    let full = crate::sign::format_iso8601_extended(t);
    match full.get(..10) {
        Some(d) if full.as_bytes().get(10) == Some(&b'T') => d.replace('-', ""),
        _ => t.format("%Y%m%d").to_string(),
    }
}

/// Placeholder names used in `t`, e.g. `["prefix", "subject", "claim.tenant"]`.
pub fn placeholder_names(t: &str) -> Result<Vec<&str>, String> {
    let mut names = Vec::new();
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("{t:?} has an unclosed {{"))?
            + open;
        names.push(&rest[open + 1..close]);
        rest = &rest[close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("{t:?} has a }} without {{"));
    }
    Ok(names)
}

/// Substitutes every `{name}` in `t`. Caller values are checked; anything
/// missing or refused is `InvalidPrincipal`.
pub fn render(t: &str, v: &Values<'_>) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(t.len() + 32);
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(len) = rest[open..].find('}') else { break };
        let name = &rest[open + 1..open + len];
        let value = if let Some((_, s)) = v.server.iter().find(|(n, _)| *n == name) {
            (*s).to_string()
        } else {
            let caller = match name.strip_prefix("claim.") {
                Some(claim) => v.claims.get(claim).map(String::as_str),
                None if name == "subject" => v.subject,
                None => None,
            };
            match (caller, v.subject_namespace) {
                (Some(val), _) if !v.placeholders.allows(name, val) => {
                    return Err(TemplateError::InvalidPrincipal(name.to_string()));
                }
                (Some(val), Some(ns)) if name == "subject" => format!("{ns}.{val}"),
                (Some(val), _) => val.to_string(),
                (None, _) => return Err(TemplateError::InvalidPrincipal(name.to_string())),
            }
        };
        out.push_str(&value);
        rest = &rest[open + len + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A RoleSessionName from a rendered template: characters STS refuses become
/// `-`, and the result is cut to 64 (and padded to 2) characters, so OSS and
/// ActionTrail logs show who got each credential.
pub fn session_name(rendered: &str) -> String {
    let mut s: String = rendered
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".@_-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    while s.len() < 2 {
        s.push('-');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_placeholder_is_chronos_ymd() {
        use chrono::TimeZone as _;
        for secs in [
            0i64,
            86_399,
            951_782_400,
            1_795_000_000,
            253_402_300_799,
            -62_167_219_200,
        ] {
            let t = chrono::Utc.timestamp_opt(secs, 0).unwrap();
            assert_eq!(yyyymmdd(t), t.format("%Y%m%d").to_string(), "{secs}");
        }
    }

    fn vals<'a>(
        subject: Option<&'a str>,
        claims: &'a BTreeMap<String, String>,
        p: &'a Placeholders,
    ) -> Values<'a> {
        Values {
            subject,
            subject_namespace: None,
            claims,
            server: &[("prefix", "users/"), ("date", "20260101")],
            placeholders: p,
        }
    }

    /// Namespaced `{subject}`: `<namespace>.<subject>`, injective because no
    /// namespace name contains `.` (so an API key whose id is `jwt.alice`
    /// cannot become the JWT user `alice`); the pattern still applies to the
    /// subject alone, and claims are never namespaced.
    #[test]
    fn namespaced_subjects_never_collide() {
        let p = Placeholders::default();
        let claims = BTreeMap::from([("tenant".to_string(), "acme".to_string())]);
        let render_as = |ns: &str, sub: &str| {
            let v = Values {
                subject_namespace: Some(ns),
                ..vals(Some(sub), &claims, &p)
            };
            render("u/{claim.tenant}/{subject}/", &v)
        };
        let mut seen = std::collections::HashMap::new();
        for ns in ["api_key", "jwt"] {
            for sub in ["alice", "jwt.alice", "api_key.alice", "a.b", "jwt", ".x", "x."] {
                let r = render_as(ns, sub).unwrap();
                assert!(r.starts_with("u/acme/") && r.ends_with('/'), "{r}");
                if let Some(prev) = seen.insert(r.clone(), (ns, sub)) {
                    panic!("{prev:?} and {:?} both render {r}", (ns, sub));
                }
                // Read back: up to the first `.` is the namespace.
                let value = &r["u/acme/".len()..r.len() - 1];
                assert_eq!(value.split_once('.'), Some((ns, sub)));
            }
        }
        assert_eq!(
            render_as("api_key", "jwt.alice").unwrap(),
            "u/acme/api_key.jwt.alice/"
        );
        assert_eq!(render_as("jwt", "alice").unwrap(), "u/acme/jwt.alice/");
        // 64 characters fit the default pattern; the namespace does not count.
        let long = "a".repeat(64);
        assert_eq!(render_as("jwt", &long).unwrap(), format!("u/acme/jwt.{long}/"));
        for bad in ["*", "a/b", "", &"a".repeat(65)] {
            assert!(render_as("jwt", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn renders_caller_and_server_values() {
        let p = Placeholders::default();
        let claims = BTreeMap::from([("tenant".to_string(), "acme".to_string())]);
        let r = render(
            "{prefix}{claim.tenant}/{subject}/{date}/",
            &vals(Some("alice"), &claims, &p),
        )
        .unwrap();
        assert_eq!(r, "users/acme/alice/20260101/");
    }

    #[test]
    fn refuses_dangerous_or_missing_values() {
        let p = Placeholders::default();
        let none = BTreeMap::new();
        for bad in [
            "*",
            "a*",
            "../x",
            "a/b",
            "\"",
            "%2F",
            "a b",
            "",
            "аlice", /* Cyrillic а */
            &"a".repeat(65),
            "a\u{0}b",
            ".", // a path segment URL clients remove
        ] {
            assert_eq!(
                render("u/{subject}/", &vals(Some(bad), &none, &p)),
                Err(TemplateError::InvalidPrincipal("subject".into())),
                "{bad:?}"
            );
        }
        assert!(render("u/{subject}/", &vals(None, &none, &p)).is_err());
        assert!(render("u/{claim.tenant}/", &vals(Some("a"), &none, &p)).is_err());
        // A permissive configured pattern still cannot let wildcards through.
        let loose = Placeholders::new(&BTreeMap::from([("subject".to_string(), ".*".to_string())])).unwrap();
        assert!(render("u/{subject}/", &vals(Some("a*"), &none, &loose)).is_err());
        assert_eq!(
            render("u/{subject}/", &vals(Some("a+b"), &none, &loose)).unwrap(),
            "u/a+b/"
        );
    }

    #[test]
    fn session_names_are_sanitised() {
        assert_eq!(session_name("u-alice@example.com"), "u-alice@example.com");
        assert_eq!(session_name("a+b"), "a-b");
        assert_eq!(session_name("x"), "x-");
        assert_eq!(session_name(&"a".repeat(80)).len(), 64);
    }

    #[test]
    fn placeholder_names_are_listed() {
        assert_eq!(
            placeholder_names("{prefix}{subject}/{claim.t}").unwrap(),
            vec!["prefix", "subject", "claim.t"]
        );
        assert!(placeholder_names("{prefix").is_err());
        assert!(placeholder_names("a}").is_err());
    }
}
