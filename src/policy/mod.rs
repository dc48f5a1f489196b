//! Inline session policies. The effective right of a vended credential is the
//! role's own policy intersected with the document built here, so each grant
//! narrows the role to its bucket, prefix and actions.
//!
//! Pure: no network, no clock.

use serde::Serialize;
use serde_json::Value;

/// STS refuses a `Policy` parameter longer than this (spec §1.2).
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
pub fn render_prefix_policy(
    bucket: &str,
    prefix: &str,
    actions: &[String],
) -> Result<String, PolicyError> {
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

/// Validates an explicit policy document and returns it compacted (STS counts
/// characters, and whitespace would also trip one official SDK's signer).
pub fn compact_explicit_policy(text: &str) -> Result<String, PolicyError> {
    let value: Value = serde_json::from_str(text).map_err(|e| PolicyError::Json(e.to_string()))?;
    check_shape(&value)?;
    let compact = serde_json::to_string(&value).map_err(|e| PolicyError::Json(e.to_string()))?;
    check_length(compact)
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
            !items.is_empty()
                && items
                    .iter()
                    .all(|i| i.as_str().is_some_and(|s| !s.is_empty()))
        }
        _ => false,
    }
}

/// Lower-case hex SHA-256 of the rendered policy: part of the cache key and of
/// audit records (the policy text itself can be long).
pub fn policy_sha256(policy: &str) -> String {
    crate::sign::sha256_hex(policy.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_compact_prefix_policy() {
        let p =
            render_prefix_policy("examplebucket", "uploads/", &["oss:PutObject".into()]).unwrap();
        assert_eq!(
            p,
            r#"{"Version":"1","Statement":[{"Effect":"Allow","Action":["oss:PutObject"],"Resource":["acs:oss:*:*:examplebucket/uploads/*"]}]}"#
        );
    }

    #[test]
    fn explicit_policy_is_compacted_and_checked() {
        let p = compact_explicit_policy(
            r#"{ "Version": "1", "Statement": [ { "Effect": "Allow", "Action": "oss:PutObject", "Resource": ["acs:oss:*:*:b/x/*"] } ] }"#,
        )
        .unwrap();
        assert!(!p.contains(' '));
        assert!(matches!(
            compact_explicit_policy("{"),
            Err(PolicyError::Json(_))
        ));
        assert!(matches!(
            compact_explicit_policy(r#"{"Version":"2","Statement":[]}"#),
            Err(PolicyError::Shape(_))
        ));
        assert!(matches!(
            compact_explicit_policy(
                r#"{"Version":"1","Statement":[{"Effect":"Maybe","Action":"a","Resource":"r"}]}"#
            ),
            Err(PolicyError::Shape(_))
        ));
        assert!(matches!(
            compact_explicit_policy(
                r#"{"Version":"1","Statement":[{"Effect":"Allow","Action":[],"Resource":"r"}]}"#
            ),
            Err(PolicyError::Shape(_))
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
