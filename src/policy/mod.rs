//! Inline session policies. The effective right of a vended credential is the
//! role's own policy intersected with the document built here, so each grant
//! narrows the role to its bucket, prefix and actions.
//!
//! Pure: no network, no clock.

pub mod template;

use serde::Serialize;
use serde_json::Value;

/// STS refuses a `Policy` parameter longer than this (docs/signing.md §1.2).
pub const MAX_POLICY_CHARS: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("policy is not valid JSON: {0}")]
    Json(String),
    #[error("policy {0}")]
    Shape(String),
    #[error("rendered policy is {0} characters; STS accepts at most {MAX_POLICY_CHARS}")]
    TooLong(usize),
}

#[derive(Serialize)]
struct Document<'a> {
    #[serde(rename = "Version")]
    version: &'a str,
    #[serde(rename = "Statement")]
    statement: [Statement<'a>; 1],
}

#[derive(Serialize)]
struct Statement<'a> {
    #[serde(rename = "Effect")]
    effect: &'a str,
    #[serde(rename = "Action")]
    action: &'a [String],
    #[serde(rename = "Resource")]
    resource: [String; 1],
}

/// `Allow <actions> on acs:oss:*:*:<bucket>/<prefix>*`, as compact JSON.
pub fn render_prefix_policy(bucket: &str, prefix: &str, actions: &[String]) -> Result<String, PolicyError> {
    let doc = Document {
        version: "1",
        statement: [Statement {
            effect: "Allow",
            action: actions,
            resource: [object_resource(bucket, prefix)],
        }],
    };
    let text = serde_json::to_string(&doc).map_err(|e| PolicyError::Json(e.to_string()))?;
    check_length(text)
}

/// The OSS resource ARN for every object under `prefix`.
pub fn object_resource(bucket: &str, prefix: &str) -> String {
    format!("acs:oss:*:*:{bucket}/{prefix}*")
}

/// An explicit policy document whose string values may hold placeholders
/// (`"acs:oss:*:*:b/users/{subject}/*"`). It is parsed as JSON once, so the
/// document's own braces are never taken for placeholders, and a filled-in
/// value can only ever land inside a JSON string (serde escapes it again).
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyTemplate(Value);

impl PolicyTemplate {
    /// Parses and checks the document's shape (placeholders still unfilled).
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let value: Value = serde_json::from_str(text).map_err(|e| PolicyError::Json(e.to_string()))?;
        check_shape(&value)?;
        Ok(PolicyTemplate(value))
    }

    /// Every string value of the document, in order: where placeholders may stand.
    pub fn strings(&self) -> Vec<&str> {
        fn walk<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
            match v {
                Value::String(s) => out.push(s),
                Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
                Value::Object(map) => map.values().for_each(|i| walk(i, out)),
                _ => {}
            }
        }
        let mut out = Vec::new();
        walk(&self.0, &mut out);
        out
    }

    /// Object keys that look like templates (`{`/`}`): placeholders are only
    /// filled in string values, so such a key is a mistake worth reporting.
    pub fn keys_with_braces(&self) -> Vec<&str> {
        fn walk<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
            match v {
                Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
                Value::Object(map) => {
                    for (k, i) in map {
                        if k.contains(['{', '}']) {
                            out.push(k);
                        }
                        walk(i, out);
                    }
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        walk(&self.0, &mut out);
        out
    }

    /// Fills every string value with `fill` and returns the compact document
    /// (STS counts characters, and whitespace would also trip one official
    /// SDK's signer); the outer error is `fill`'s, the inner one the length check.
    pub fn render<E>(
        &self,
        mut fill: impl FnMut(&str) -> Result<String, E>,
    ) -> Result<Result<String, PolicyError>, E> {
        fn walk<E>(v: &Value, fill: &mut dyn FnMut(&str) -> Result<String, E>) -> Result<Value, E> {
            Ok(match v {
                Value::String(s) if s.contains('{') => Value::String(fill(s)?),
                Value::Array(items) => {
                    Value::Array(items.iter().map(|i| walk(i, fill)).collect::<Result<_, E>>()?)
                }
                Value::Object(map) => Value::Object(
                    map.iter()
                        .map(|(k, i)| Ok((k.clone(), walk(i, fill)?)))
                        .collect::<Result<_, E>>()?,
                ),
                other => other.clone(),
            })
        }
        let filled = walk(&self.0, &mut fill)?;
        Ok(serde_json::to_string(&filled)
            .map_err(|e| PolicyError::Json(e.to_string()))
            .and_then(check_length))
    }
}

fn check_length(text: String) -> Result<String, PolicyError> {
    let chars = text.chars().count();
    if chars > MAX_POLICY_CHARS {
        return Err(PolicyError::TooLong(chars));
    }
    Ok(text)
}

fn check_shape(doc: &Value) -> Result<(), PolicyError> {
    let obj = doc
        .as_object()
        .ok_or_else(|| PolicyError::Shape("must be a JSON object".into()))?;
    match obj.get("Version") {
        Some(Value::String(v)) if v == "1" => {}
        _ => return Err(PolicyError::Shape("must have \"Version\": \"1\"".into())),
    }
    let statements = match obj.get("Statement") {
        Some(Value::Array(s)) if !s.is_empty() => s,
        _ => {
            return Err(PolicyError::Shape(
                "must have a non-empty \"Statement\" array".into(),
            ));
        }
    };
    for (i, st) in statements.iter().enumerate() {
        let st = st
            .as_object()
            .ok_or_else(|| PolicyError::Shape(format!("Statement[{i}] must be an object")))?;
        match st.get("Effect") {
            Some(Value::String(e)) if e == "Allow" || e == "Deny" => {}
            _ => {
                return Err(PolicyError::Shape(format!(
                    "Statement[{i}].Effect must be \"Allow\" or \"Deny\""
                )));
            }
        }
        for field in ["Action", "Resource"] {
            if !is_string_or_string_list(st.get(field)) {
                return Err(PolicyError::Shape(format!(
                    "Statement[{i}].{field} must be a string or a non-empty list of strings"
                )));
            }
        }
    }
    Ok(())
}

fn is_string_or_string_list(v: Option<&Value>) -> bool {
    match v {
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(items)) => {
            !items.is_empty() && items.iter().all(|i| i.as_str().is_some_and(|s| !s.is_empty()))
        }
        _ => false,
    }
}

/// Actions that change who may read an object. An upload carrying
/// `x-oss-object-acl` has the effect of PutObjectACL and needs the first
/// (OSS PutObjectACL doc), so a grant never holds them unless it names them.
pub const OBJECT_ACL_ACTIONS: [&str; 2] = ["oss:PutObjectAcl", "oss:PutObjectVersionAcl"];

/// Whether an action pattern grants an ACL action without naming it (`oss:*`, `oss:Put*`).
pub fn wildcard_grants_object_acl(pattern: &str) -> bool {
    pattern.contains(['*', '?'])
        && OBJECT_ACL_ACTIONS
            .iter()
            .any(|a| wildcard_match(pattern, a, false))
}

/// Where a policy document lets the ACL actions through without naming them:
/// an `Allow` whose `Action` has such a wildcard, or an `Allow` with a
/// `NotAction` that does not exclude them. `None`: nowhere (or not a document).
pub fn object_acl_by_wildcard(policy_json: &str) -> Option<String> {
    let doc: Value = serde_json::from_str(policy_json).ok()?;
    let statements: Vec<&Value> = match doc.get("Statement")? {
        Value::Array(items) => items.iter().collect(),
        one => vec![one],
    };
    let strings = |v: Option<&Value>| -> Vec<String> {
        match v {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    };
    for (i, st) in statements.iter().enumerate() {
        let allow = st
            .get("Effect")
            .and_then(Value::as_str)
            .is_some_and(|e| e.eq_ignore_ascii_case("allow"));
        if !allow {
            continue;
        }
        if let Some(p) = strings(st.get("Action"))
            .into_iter()
            .find(|p| wildcard_grants_object_acl(p))
        {
            return Some(format!("Statement[{i}].Action {p:?}"));
        }
        if st.get("NotAction").is_some() {
            let excluded = strings(st.get("NotAction"));
            if let Some(a) = OBJECT_ACL_ACTIONS
                .iter()
                .find(|a| !excluded.iter().any(|p| wildcard_match(p, a, false)))
            {
                return Some(format!("Statement[{i}].NotAction (it does not exclude {a})"));
            }
        }
    }
    None
}

/// RAM wildcards: `*` any run of characters (`/` and `:` included), `?` exactly one.
pub fn wildcard_match(pattern: &str, value: &str, case_sensitive: bool) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let v: Vec<char> = value.chars().collect();
    let same = |a: char, b: char| a == b || (!case_sensitive && a.to_lowercase().eq(b.to_lowercase()));
    // Greedy match with backtracking to the last `*`: linear for typical patterns.
    let (mut pi, mut vi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while vi < v.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, vi));
            pi += 1;
        } else if pi < p.len() && (p[pi] == '?' || same(p[pi], v[vi])) {
            pi += 1;
            vi += 1;
        } else if let Some((sp, sv)) = star {
            pi = sp + 1;
            vi = sv + 1;
            star = Some((sp, sv + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Lower-case hex SHA-256 of the rendered policy: part of the cache key and of
/// audit records (the policy text itself can be long).
pub fn policy_sha256(policy: &str) -> String {
    crate::sign::sha256_hex(policy.as_bytes())
}

/// Structure of a key template (which placeholders it may use is checked with
/// the other templates): `{prefix}` first so that a key can never leave the
/// grant's prefix, and `{uuid}` so that two uploads never collide.
pub fn check_key_template(t: &str) -> Result<(), String> {
    if !t.starts_with("{prefix}") {
        return Err(format!(
            "{t:?} must start with {{prefix}} so keys stay inside the grant's prefix"
        ));
    }
    if !t.contains("{uuid}") {
        return Err(format!(
            "{t:?} must contain {{uuid}}, or two uploads would overwrite each other"
        ));
    }
    // Placeholders stand for non-empty values without `/`, a prefix usually
    // ends in one: a segment is `.`/`..` only if the template writes it so.
    let filled = |prefix: &str| -> String {
        t.split(['{', '}'])
            .enumerate()
            .map(|(i, part)| match (i % 2, part) {
                (1, "prefix") => prefix,
                (1, _) => "x",
                _ => part,
            })
            .collect()
    };
    let dot_segment = |k: String| k.split('/').any(|seg| seg == "." || seg == "..");
    if dot_segment(filled("p/")) || dot_segment(filled("p")) {
        return Err(format!(
            "{t:?} has a \".\" or \"..\" path segment, which URL clients remove"
        ));
    }
    let literal: String = t.split(['{', '}']).step_by(2).collect();
    if literal.contains(['*', '?', '"', '\\', '$']) || literal.chars().any(char::is_control) {
        return Err(format!(
            "{t:?} contains characters that do not belong in an object key"
        ));
    }
    Ok(())
}

/// The only part of a client's filename that reaches a key: its extension,
/// lower-cased, if it is 1-10 ASCII letters or digits; otherwise nothing.
pub fn sanitize_ext(filename: &str) -> String {
    let Some((stem, ext)) = filename.rsplit_once('.') else {
        return String::new();
    };
    let ok =
        !stem.is_empty() && (1..=10).contains(&ext.len()) && ext.chars().all(|c| c.is_ascii_alphanumeric());
    if ok {
        format!(".{}", ext.to_ascii_lowercase())
    } else {
        String::new()
    }
}

/// How a PostObject policy constrains the object key.
pub enum KeyCondition<'a> {
    /// The server named the key: `["eq", "$key", key]`.
    Exact(&'a str),
    /// The client names it under the prefix: `["starts-with", "$key", prefix]`.
    Prefix(&'a str),
}

/// How a PostObject policy constrains the Content-Type form field.
pub enum ContentTypeCondition<'a> {
    Any,
    /// `["in", "$content-type", [...]]` (OSS only; S3 has no `in`).
    OneOf(&'a [String]),
    /// `["eq", "$Content-Type", value]`.
    Exact(&'a str),
}

/// Inputs of a PostObject policy document (docs/signing.md §10.1).
pub struct PostPolicySpec<'a> {
    /// `YYYY-MM-DDThh:mm:ss.000Z`
    pub expiration: &'a str,
    pub bucket: &'a str,
    pub key: KeyCondition<'a>,
    pub max_size_bytes: u64,
    pub content_type: ContentTypeCondition<'a>,
    pub success_action_status: u16,
    /// Pinned with `eq` when set. (None cannot be enforced: OSS checks only
    /// the form fields that some condition names.)
    pub success_action_redirect: Option<&'a str>,
    /// Exact-match conditions the signature version requires (V4 auth fields,
    /// security token), in order.
    pub required: &'a [(&'a str, String)],
    /// Other form fields pinned with `eq` (the upload callback's `callback`), in order.
    pub bound: &'a [(&'a str, &'a str)],
}

/// The policy JSON text, compact and deterministic. The signature covers these
/// exact bytes (base64-encoded), so they are produced once and never re-serialized.
pub fn post_policy_json(spec: &PostPolicySpec<'_>) -> String {
    use serde_json::json;
    let mut conditions: Vec<Value> = spec.required.iter().map(|(k, v)| json!({ *k: v })).collect();
    conditions.push(json!({ "bucket": spec.bucket }));
    conditions.push(match spec.key {
        KeyCondition::Exact(k) => json!(["eq", "$key", k]),
        KeyCondition::Prefix(p) => json!(["starts-with", "$key", p]),
    });
    conditions.push(json!(["content-length-range", 0, spec.max_size_bytes]));
    conditions.push(json!([
        "eq",
        "$success_action_status",
        spec.success_action_status.to_string()
    ]));
    if let Some(url) = spec.success_action_redirect {
        conditions.push(json!(["eq", "$success_action_redirect", url]));
    }
    for (name, value) in spec.bound {
        conditions.push(json!(["eq", format!("${name}"), value]));
    }
    match spec.content_type {
        ContentTypeCondition::Any => {}
        ContentTypeCondition::OneOf(list) => conditions.push(json!(["in", "$content-type", list])),
        ContentTypeCondition::Exact(ct) => conditions.push(json!(["eq", "$Content-Type", ct])),
    }
    // "expiration" first, as in the documentation; a struct keeps the order.
    #[derive(Serialize)]
    struct Doc<'a> {
        expiration: &'a str,
        conditions: Vec<Value>,
    }
    serde_json::to_string(&Doc {
        expiration: spec.expiration,
        conditions,
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_templates() {
        assert!(check_key_template("{prefix}{uuid}{ext}").is_ok());
        assert!(check_key_template("{prefix}{date}/{uuid}{ext}").is_ok());
        assert!(check_key_template("{uuid}{ext}").is_err());
        assert!(check_key_template("{prefix}fixed").is_err());
        assert!(check_key_template("{prefix}{uuid}*").is_err());
        assert!(check_key_template("{prefix}../{uuid}{ext}").is_err());
        assert!(check_key_template("{prefix}./{uuid}").is_err());
        assert!(check_key_template("{prefix}{date}.{uuid}").is_ok());
    }

    #[test]
    fn only_a_clean_extension_survives_from_a_filename() {
        assert_eq!(sanitize_ext("cat.PNG"), ".png");
        assert_eq!(sanitize_ext("archive.tar.gz"), ".gz");
        assert_eq!(sanitize_ext("../../etc/passwd"), "");
        assert_eq!(sanitize_ext("x.p*g"), "");
        assert_eq!(sanitize_ext(".bashrc"), "");
        assert_eq!(sanitize_ext("noext"), "");
        assert_eq!(sanitize_ext("a.verylongextension"), "");
        assert_eq!(sanitize_ext("a.ä"), "");
    }

    #[test]
    fn post_policy_document() {
        let req = [("x-oss-date", "20260101T000000Z".to_string())];
        let p = post_policy_json(&PostPolicySpec {
            expiration: "2026-01-01T00:15:00.000Z",
            bucket: "b",
            key: KeyCondition::Prefix("uploads/"),
            max_size_bytes: 10,
            content_type: ContentTypeCondition::OneOf(&["image/png".into()]),
            success_action_status: 200,
            success_action_redirect: None,
            required: &req,
            bound: &[],
        });
        assert_eq!(
            p,
            r#"{"expiration":"2026-01-01T00:15:00.000Z","conditions":[{"x-oss-date":"20260101T000000Z"},{"bucket":"b"},["starts-with","$key","uploads/"],["content-length-range",0,10],["eq","$success_action_status","200"],["in","$content-type",["image/png"]]]}"#
        );
    }

    /// Issue 13: no rendered session policy lets a caller change an object's
    /// ACL (an upload with `x-oss-object-acl: public-read` needs it), and the
    /// wildcards that would are recognised.
    #[test]
    fn rendered_session_policies_never_grant_put_object_acl() {
        let default = render_prefix_policy("b", "uploads/", &["oss:PutObject".into()]).unwrap();
        let local_sdk: Vec<String> = ["oss:PutObject", "oss:AbortMultipartUpload", "oss:ListParts"]
            .map(String::from)
            .to_vec();
        for text in [default, render_prefix_policy("b", "sdk/", &local_sdk).unwrap()] {
            assert!(!text.to_ascii_lowercase().contains("acl"), "{text}");
            assert!(!text.contains('*') || text.contains("\"Resource\":[\"acs:oss:*:*:b/"));
            assert_eq!(object_acl_by_wildcard(&text), None, "{text}");
        }
        for p in [
            "oss:*",
            "*",
            "oss:Put*",
            "OSS:PUTOBJECT*",
            "oss:PutObject?cl",
            "oss:*Acl",
        ] {
            assert!(wildcard_grants_object_acl(p), "{p}");
        }
        for p in [
            "oss:PutObject",
            "oss:PutObjectAcl",
            "oss:Get*",
            "oss:PutObjectTagging",
            "oss:Put*Tagging",
        ] {
            assert!(!wildcard_grants_object_acl(p), "{p}");
        }
        let doc = |st: &str| format!(r#"{{"Version":"1","Statement":[{st}]}}"#);
        let r = r#""Resource":"acs:oss:*:*:b/u/*""#;
        assert_eq!(
            object_acl_by_wildcard(&doc(&format!(
                r#"{{"Effect":"Allow","Action":["oss:PutObject","oss:*"],{r}}}"#
            ))),
            Some("Statement[0].Action \"oss:*\"".into())
        );
        assert!(
            object_acl_by_wildcard(&doc(&format!(
                r#"{{"Effect":"Allow","NotAction":"oss:Delete*",{r}}}"#
            )))
            .is_some_and(|w| w.contains("NotAction"))
        );
        for ok in [
            format!(r#"{{"Effect":"Deny","Action":"oss:*",{r}}}"#),
            format!(r#"{{"Effect":"Allow","Action":["oss:PutObject","oss:PutObjectAcl"],{r}}}"#),
            format!(r#"{{"Effect":"Allow","NotAction":["oss:*Acl","oss:Delete*"],{r}}}"#),
        ] {
            assert_eq!(object_acl_by_wildcard(&doc(&ok)), None, "{ok}");
        }
    }

    #[test]
    fn renders_compact_prefix_policy() {
        let p = render_prefix_policy("examplebucket", "uploads/", &["oss:PutObject".into()]).unwrap();
        assert_eq!(
            p,
            r#"{"Version":"1","Statement":[{"Effect":"Allow","Action":["oss:PutObject"],"Resource":["acs:oss:*:*:examplebucket/uploads/*"]}]}"#
        );
    }

    fn compact(text: &str) -> Result<String, PolicyError> {
        PolicyTemplate::parse(text)?
            .render(|s| Ok::<_, ()>(s.to_owned()))
            .unwrap()
    }

    #[test]
    fn explicit_policy_is_compacted_and_checked() {
        let p = compact(
            r#"{ "Version": "1", "Statement": [ { "Effect": "Allow", "Action": "oss:PutObject", "Resource": ["acs:oss:*:*:b/x/*"] } ] }"#,
        )
        .unwrap();
        assert!(!p.contains(' '));
        assert!(matches!(compact("{"), Err(PolicyError::Json(_))));
        assert!(matches!(
            compact(r#"{"Version":"2","Statement":[]}"#),
            Err(PolicyError::Shape(_))
        ));
        assert!(matches!(
            compact(r#"{"Version":"1","Statement":[{"Effect":"Maybe","Action":"a","Resource":"r"}]}"#),
            Err(PolicyError::Shape(_))
        ));
        assert!(matches!(
            compact(r#"{"Version":"1","Statement":[{"Effect":"Allow","Action":[],"Resource":"r"}]}"#),
            Err(PolicyError::Shape(_))
        ));
    }

    /// A realistic multi-statement document: its own braces are JSON, only
    /// `{subject}` inside strings is a placeholder, and whatever a value holds
    /// stays inside its string.
    #[test]
    fn explicit_policy_template_fills_strings_only() {
        let t = PolicyTemplate::parse(
            r#"{"Version":"1","Statement":[
                {"Effect":"Allow","Action":["oss:PutObject"],"Resource":["acs:oss:*:*:b/users/{subject}/*"]},
                {"Effect":"Allow","Action":"oss:ListObjects","Resource":"acs:oss:*:*:b",
                 "Condition":{"StringLike":{"oss:Prefix":["users/{subject}/*"]}}},
                {"Effect":"Deny","Action":"oss:*","Resource":"*",
                 "Condition":{"NotIpAddress":{"acs:SourceIp":["192.0.2.0/24"]}}}]}"#,
        )
        .unwrap();
        assert_eq!(t.strings().iter().filter(|s| s.contains("{subject}")).count(), 2);
        let doc = t
            .render(|s| Ok::<_, ()>(s.replace("{subject}", "alice")))
            .unwrap()
            .unwrap();
        assert!(doc.contains(r#""acs:oss:*:*:b/users/alice/*""#) && doc.contains(r#""users/alice/*""#));
        // Even a value that tries to close the string and add a statement stays one string.
        let evil = r#"x"]},{"Effect":"Allow","Action":"oss:*","Resource":"*"#;
        let doc = t
            .render(|s| Ok::<_, ()>(s.replace("{subject}", evil)))
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(v["Statement"].as_array().unwrap().len(), 3);
        assert_eq!(
            v["Statement"][0]["Resource"][0],
            Value::String(format!("acs:oss:*:*:b/users/{evil}/*"))
        );
        // The fill's own error comes first.
        assert_eq!(t.render(|_| Err::<String, _>("nope")), Err("nope"));
        // With the real template renderer such a caller value is refused outright.
        let claims = std::collections::BTreeMap::new();
        let placeholders = template::Placeholders::default();
        let values = template::Values {
            subject: Some(evil),
            subject_namespace: None,
            claims: &claims,
            server: &[],
            placeholders: &placeholders,
        };
        assert!(matches!(
            t.render(|s| template::render(s, &values)),
            Err(template::TemplateError::InvalidPrincipal(_))
        ));
    }

    #[test]
    fn too_long_policy_is_refused() {
        let actions: Vec<String> = (0..200).map(|i| format!("oss:Action{i}")).collect();
        assert!(matches!(
            render_prefix_policy("b", "p/", &actions),
            Err(PolicyError::TooLong(_))
        ));
    }
}
