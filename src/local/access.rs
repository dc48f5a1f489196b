//! Session-policy evaluation for the local OSS sink: the subset of RAM policy
//! the sink needs.
//!
//! Allow/Deny statements with `Action`/`NotAction` and `Resource`/`NotResource`
//! (a string or a list; `*`/`?` wildcards; actions case-insensitive). A matching
//! Deny wins, else a matching Allow is needed. Region and account of a resource
//! pattern are not compared (the sink has neither). A `Condition` cannot be
//! evaluated here, so an Allow with one never grants and a Deny with one applies:
//! both err on the side of refusing. A write carrying `x-oss-object-acl` also
//! needs `oss:PutObjectAcl`, as on OSS ([`authorize_object_acl`]).

use serde_json::Value;

use super::error::OssError;
pub use crate::policy::wildcard_match;

/// `acs:oss:<region>:<account>:<bucket>[/<key>]`; region and account are not compared.
pub fn resource_matches(pattern: &str, bucket: &str, key: Option<&str>) -> bool {
    let path = match key {
        None => bucket.to_string(),
        Some(k) => format!("{bucket}/{k}"),
    };
    let fields: Vec<&str> = pattern.splitn(5, ':').collect();
    if let [service, product, _, _, target] = fields[..] {
        wildcard_match(service, "acs", true)
            && wildcard_match(product, "oss", true)
            && wildcard_match(target, &path, true)
    } else {
        wildcard_match(pattern, &format!("acs:oss:*:*:{path}"), true)
    }
}

/// A string or a list of them; other JSON types match nothing.
fn strings(value: Option<&Value>) -> Vec<&str> {
    match value {
        None => Vec::new(),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        Some(other) => other.as_str().into_iter().collect(),
    }
}

fn statement_applies(
    st: &serde_json::Map<String, Value>,
    action: &str,
    bucket: &str,
    key: Option<&str>,
) -> bool {
    let any_action = |names: Option<&Value>| strings(names).iter().any(|n| wildcard_match(n, action, false));
    let any_resource =
        |patterns: Option<&Value>| strings(patterns).iter().any(|p| resource_matches(p, bucket, key));
    let action_ok = if st.contains_key("NotAction") {
        !any_action(st.get("NotAction"))
    } else {
        any_action(st.get("Action"))
    };
    let resource_ok = if st.contains_key("NotResource") {
        !any_resource(st.get("NotResource"))
    } else {
        any_resource(st.get("Resource"))
    };
    action_ok && resource_ok
}

/// Whether a `Condition` member is present and non-empty.
fn truthy(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
    }
}

/// Whether `policy` lets `action` touch `bucket`/`key` (`key` `None` = the bucket).
pub fn policy_allows(policy: &Value, action: &str, bucket: &str, key: Option<&str>) -> bool {
    let statements: Vec<&Value> = match policy.get("Statement") {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(one) => vec![one],
        None => Vec::new(),
    };
    let mut allowed = false;
    for st in statements {
        let Value::Object(st) = st else { continue };
        let effect = st
            .get("Effect")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_lowercase();
        if truthy(st.get("Condition")) && effect == "allow" {
            continue;
        }
        if !statement_applies(st, action, bucket, key) {
            continue;
        }
        match effect.as_str() {
            "deny" => return false,
            "allow" => allowed = true,
            _ => {}
        }
    }
    allowed
}

/// The session-policy gate: `None` is unrestricted (root key, or a session
/// issued without a policy); an unusable policy denies everything.
pub fn authorize(
    policy: Option<&Value>,
    action: &str,
    bucket: &str,
    key: Option<&str>,
) -> Result<(), OssError> {
    let Some(policy) = policy else {
        return Ok(());
    };
    let usable = matches!(policy.get("Statement"), Some(Value::Array(_) | Value::Object(_)));
    if !usable {
        return Err(OssError::msg(
            "AccessDenied",
            "You are denied by session policy (session policy has no Statement).",
        ));
    }
    if policy_allows(policy, action, bucket, key) {
        return Ok(());
    }
    let target = match key {
        None => bucket.to_string(),
        Some(k) => format!("{bucket}/{k}"),
    };
    Err(OssError::msg(
        "AccessDenied",
        format!("You are denied by session policy: {action} on {target}."),
    ))
}

/// The ACL names `x-oss-object-acl` takes.
pub const OBJECT_ACLS: [&str; 4] = ["private", "public-read", "public-read-write", "default"];

/// A write that sets the object's ACL (`x-oss-object-acl` on PutObject,
/// PostObject or InitiateMultipartUpload) has the effect of PutObjectACL, so a
/// session needs `oss:PutObjectAcl` on the object besides the write itself (OSS
/// PutObjectACL doc); an ACL name OSS does not know is refused first.
pub fn authorize_object_acl(
    policy: Option<&Value>,
    acl: Option<&str>,
    bucket: &str,
    key: &str,
) -> Result<(), OssError> {
    let Some(acl) = acl else {
        return Ok(());
    };
    if !OBJECT_ACLS.contains(&acl) {
        return Err(OssError::msg(
            "InvalidArgument",
            format!(
                "x-oss-object-acl {acl:?} is not one of {}.",
                OBJECT_ACLS.join(", ")
            ),
        ));
    }
    authorize(policy, "oss:PutObjectAcl", bucket, Some(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn allows(policy: &Value, action: &str, key: &str) -> bool {
        policy_allows(policy, action, "b", Some(key))
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match("*", "", true));
        assert!(wildcard_match("a*", "a/b:c", true));
        assert!(wildcard_match("a?c", "abc", true));
        assert!(!wildcard_match("a?c", "ac", true));
        assert!(wildcard_match("*a", "*ba", true));
        assert!(wildcard_match("a*b*c", "axxbyyc", true));
        assert!(!wildcard_match("a*b*c", "axxbyy", true));
        assert!(wildcard_match("up/*/x?", "up/a/b/xy", true));
        assert!(!wildcard_match("ABC", "abc", true));
        assert!(wildcard_match("oss:put*", "oss:PutObject", false));
        // Regex metacharacters are literal.
        assert!(wildcard_match("a.b", "a.b", true));
        assert!(!wildcard_match("a.b", "axb", true));
        assert!(wildcard_match("?", "é", true));
    }

    #[test]
    fn resources() {
        assert!(resource_matches("acs:oss:*:*:b/up/*", "b", Some("up/a")));
        assert!(resource_matches("acs:oss:cn-x:123:b/up/*", "b", Some("up/a")));
        assert!(!resource_matches("acs:oss:*:*:b/up/*", "b", Some("down/a")));
        assert!(!resource_matches("acs:ecs:*:*:b/*", "b", Some("a")));
        assert!(resource_matches("acs:oss:*:*:b", "b", None));
        assert!(!resource_matches("acs:oss:*:*:b", "b", Some("k")));
        assert!(resource_matches("*", "b", Some("k")));
        // A key with ':' stays in the last field.
        assert!(resource_matches("acs:oss:*:*:b/a:b", "b", Some("a:b")));
    }

    #[test]
    fn allow_prefix_and_default_deny() {
        let p = json!({"Version":"1","Statement":[
            {"Effect":"Allow","Action":["oss:PutObject"],"Resource":["acs:oss:*:*:b/uploads/*"]}]});
        assert!(allows(&p, "oss:PutObject", "uploads/a.png"));
        assert!(allows(&p, "OSS:putobject", "uploads/a.png"));
        assert!(!allows(&p, "oss:PutObject", "other/a.png"));
        assert!(!allows(&p, "oss:GetObject", "uploads/a.png"));
        assert!(!policy_allows(&p, "oss:PutObject", "c", Some("uploads/a.png")));
        assert!(!policy_allows(
            &json!({"Statement":[]}),
            "oss:PutObject",
            "b",
            Some("k")
        ));
    }

    #[test]
    fn deny_wins_and_not_forms() {
        let p = json!({"Statement":[
            {"Effect":"Allow","Action":"oss:*","Resource":"acs:oss:*:*:b/*"},
            {"Effect":"Deny","Action":"oss:DeleteObject","Resource":"acs:oss:*:*:b/keep/*"}]});
        assert!(allows(&p, "oss:DeleteObject", "tmp/x"));
        assert!(!allows(&p, "oss:DeleteObject", "keep/x"));
        assert!(allows(&p, "oss:PutObject", "keep/x"));

        let p = json!({"Statement":{"Effect":"Allow","NotAction":"oss:Delete*","NotResource":["acs:oss:*:*:b/secret/*"]}});
        assert!(allows(&p, "oss:PutObject", "a"));
        assert!(!allows(&p, "oss:DeleteObject", "a"));
        assert!(!allows(&p, "oss:PutObject", "secret/a"));
        // A null NotAction excludes nothing.
        let p = json!({"Statement":[{"Effect":"Allow","NotAction":null,"Resource":"*"}]});
        assert!(allows(&p, "oss:PutObject", "a"));
    }

    #[test]
    fn conditions_never_grant_but_deny() {
        let p = json!({"Statement":[
            {"Effect":"Allow","Action":"oss:PutObject","Resource":"*","Condition":{"IpAddress":{"acs:SourceIp":"1.2.3.4"}}}]});
        assert!(!allows(&p, "oss:PutObject", "a"));
        // An empty Condition is no condition.
        let p =
            json!({"Statement":[{"Effect":"Allow","Action":"oss:PutObject","Resource":"*","Condition":{}}]});
        assert!(allows(&p, "oss:PutObject", "a"));
        let p = json!({"Statement":[
            {"Effect":"Allow","Action":"oss:PutObject","Resource":"*"},
            {"Effect":"Deny","Action":"oss:PutObject","Resource":"*","Condition":{"Bool":{"acs:SecureTransport":"false"}}}]});
        assert!(!allows(&p, "oss:PutObject", "a"));
    }

    #[test]
    fn odd_statements_are_skipped() {
        let p = json!({"Statement":[
            "junk", 1, null,
            {"Effect":"ALLOW","Action":[1, "oss:PutObject"],"Resource":[null, "*"]},
            {"Effect":true,"Action":"*","Resource":"*"}]});
        assert!(allows(&p, "oss:PutObject", "a"));
        assert!(!allows(&p, "oss:GetObject", "a"));
    }

    #[test]
    fn setting_an_acl_needs_put_object_acl() {
        let upload = json!({"Statement":[{"Effect":"Allow","Action":"oss:PutObject","Resource":"acs:oss:*:*:b/up/*"}]});
        let with_acl = json!({"Statement":[{"Effect":"Allow","Action":["oss:PutObject","oss:PutObjectAcl"],"Resource":"acs:oss:*:*:b/up/*"}]});
        let code = |policy: Option<&Value>, acl: Option<&str>| {
            authorize_object_acl(policy, acl, "b", "up/k")
                .err()
                .map(|e| (e.status, e.code))
        };
        // No header: nothing more to check.
        assert_eq!(code(Some(&upload), None), None);
        for acl in OBJECT_ACLS {
            assert_eq!(
                code(Some(&upload), Some(acl)),
                Some((403, "AccessDenied")),
                "{acl}"
            );
            assert_eq!(code(Some(&with_acl), Some(acl)), None, "{acl}");
            // The account's own key has no session policy.
            assert_eq!(code(None, Some(acl)), None, "{acl}");
        }
        for bad in ["", "Public-Read", "authenticated-read", "public-read "] {
            assert_eq!(code(None, Some(bad)), Some((400, "InvalidArgument")), "{bad:?}");
        }
        let err = authorize_object_acl(Some(&upload), Some("public-read"), "b", "up/k").unwrap_err();
        assert!(
            err.message.contains("oss:PutObjectAcl on b/up/k"),
            "{}",
            err.message
        );
    }

    #[test]
    fn authorize_gate() {
        assert!(authorize(None, "oss:PutObject", "b", Some("k")).is_ok());
        let err = authorize(Some(&json!({"Version":"1"})), "oss:PutObject", "b", Some("k")).unwrap_err();
        assert_eq!((err.code, err.status), ("AccessDenied", 403));
        let p = json!({"Statement":[{"Effect":"Allow","Action":"oss:PutObject","Resource":"acs:oss:*:*:b/up/*"}]});
        assert!(authorize(Some(&p), "oss:PutObject", "b", Some("up/k")).is_ok());
        let err = authorize(Some(&p), "oss:PutObject", "b", Some("k")).unwrap_err();
        assert!(err.message.contains("oss:PutObject on b/k"));
    }
}
