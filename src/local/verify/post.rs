//! PostObject V1/V4 (docs/signing.md): the policy's signature, its expiry, the
//! V4 date rules and required conditions, then every policy condition.

use std::collections::HashMap;

use base64::Engine as _;
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value as Json;

use super::{
    AuthScheme, Credential, Lookup, MAX_SKEW_SECS, OssError, Scope, V4_MAX_EXPIRES_SECS, credential_for,
    non_empty, parse_iso_basic, parse_iso_extended, parse_scope, same_secret,
};
use crate::sign::{self, oss_v4};

/// The non-file fields of a PostObject form (lower-case names, first occurrence
/// kept, form order) and what the `file` part says about itself.
#[derive(Debug, Clone, Copy)]
pub struct PostFields<'a> {
    pub fields: &'a [(String, String)],
    pub file_name: Option<&'a str>,
    pub file_content_type: Option<&'a str>,
    pub file_size: u64,
}

impl PostFields<'_> {
    pub fn get(&self, lower_name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == lower_name)
            .map(|(_, v)| v.as_str())
    }

    fn value(&self, lower_name: &str) -> &str {
        self.get(lower_name).unwrap_or("")
    }
}

/// A PostObject that passed signature, expiry and policy conditions.
#[derive(Debug, Clone)]
pub struct PostUpload {
    pub scheme: AuthScheme,
    pub credential: Credential,
    /// The `key` field with `${filename}` substituted.
    pub key: String,
    pub content_type: String,
}

/// PostObject V1/V4 (docs/signing.md §10): signature, expiry, V4 date rules and required
/// conditions, then every policy condition. The session policy is the caller's.
pub fn verify_post(
    bucket: &str,
    form: &PostFields<'_>,
    lookup: Lookup<'_>,
    now: DateTime<Utc>,
) -> Result<PostUpload, OssError> {
    let v4 = form.get("x-oss-signature-version").is_some() || form.get("x-oss-credential").is_some();
    let (scheme, claimed) = if v4 {
        (
            AuthScheme::PostV4,
            form.value("x-oss-credential").split('/').next().unwrap_or(""),
        )
    } else {
        (AuthScheme::PostV1, form.value("ossaccesskeyid"))
    };
    post_checks(bucket, form, scheme, lookup, now).map_err(|e| e.tag(Some(scheme), non_empty(claimed)))
}

fn post_checks(
    bucket: &str,
    form: &PostFields<'_>,
    scheme: AuthScheme,
    lookup: Lookup<'_>,
    now: DateTime<Utc>,
) -> Result<PostUpload, OssError> {
    let policy_b64 = policy_field(form, scheme)?;
    let (cred, scope) = check_policy_signature(form, scheme, policy_b64, lookup, now)?;
    let policy = decode_policy(policy_b64)?;
    let expires_at = check_expiration(&policy["expiration"], now)?;
    let Some(conditions) = policy["conditions"].as_array() else {
        // decode_policy guarantees a list.
        return Err(OssError::msg(
            "InvalidPolicyDocument",
            "Invalid Policy: conditions must be a list.",
        ));
    };
    if let Some(scope) = &scope {
        check_v4_rules(form, scope, &cred, conditions, expires_at, now)?;
    }
    let key_template = form.value("key");
    if key_template.is_empty() {
        return Err(OssError::msg("InvalidArgument", "The form has no key field."));
    }
    let mut values: HashMap<&str, &str> = HashMap::new();
    for (name, value) in form.fields {
        values.entry(name.as_str()).or_insert(value.as_str());
    }
    // The bucket condition is checked against the addressed bucket.
    values.insert("bucket", bucket);
    check_conditions(conditions, &values, form.file_size)?;
    Ok(upload_of(form, scheme, cred, key_template))
}

/// The `policy` field; a form without one is anonymous (refused) or malformed.
fn policy_field<'f>(form: &'f PostFields<'_>, scheme: AuthScheme) -> Result<&'f str, OssError> {
    let policy_b64 = form.get("policy").unwrap_or("");
    if !policy_b64.is_empty() {
        return Ok(policy_b64);
    }
    let signed = scheme == AuthScheme::PostV4
        || form.get("ossaccesskeyid").is_some()
        || form.get("signature").is_some();
    Err(if signed {
        OssError::msg("InvalidArgument", "The form has a signature but no policy field.")
    } else {
        OssError::msg(
            "AccessDenied",
            "Anonymous PostObject is forbidden (no policy and signature).",
        )
    })
}

/// The signature over the base64 policy: HMAC-SHA256 with the V4 signing key
/// (`Some(scope)`), or HMAC-SHA1 with the secret (V1).
fn check_policy_signature(
    form: &PostFields<'_>,
    scheme: AuthScheme,
    policy_b64: &str,
    lookup: Lookup<'_>,
    now: DateTime<Utc>,
) -> Result<(Credential, Option<Scope>), OssError> {
    let token = form.get("x-oss-security-token");
    let (cred, scope, expected, given) = if scheme == AuthScheme::PostV4 {
        if form.value("x-oss-signature-version") != oss_v4::ALGORITHM {
            return Err(OssError::msg(
                "InvalidArgument",
                format!("x-oss-signature-version must be {}.", oss_v4::ALGORITHM),
            ));
        }
        let missing: Vec<&str> = ["x-oss-credential", "x-oss-date", "x-oss-signature"]
            .into_iter()
            .filter(|n| form.value(n).is_empty())
            .collect();
        if !missing.is_empty() {
            return Err(OssError::msg(
                "InvalidArgument",
                format!("The form lacks {}.", missing.join(", ")),
            ));
        }
        let scope = parse_scope(form.value("x-oss-credential"))?;
        let cred = credential_for(lookup, &scope.access_key_id, token, now)?;
        let key = scope.signing_key(&cred.access_key_secret);
        let expected = hex::encode(sign::hmac_sha256(&key, policy_b64.as_bytes()));
        (cred, Some(scope), expected, form.value("x-oss-signature"))
    } else {
        if form.value("ossaccesskeyid").is_empty() || form.value("signature").is_empty() {
            return Err(OssError::msg(
                "InvalidArgument",
                "The form lacks OSSAccessKeyId or Signature.",
            ));
        }
        let cred = credential_for(lookup, form.value("ossaccesskeyid"), token, now)?;
        let expected = sign::b64(&sign::hmac_sha1(
            cred.access_key_secret.as_bytes(),
            policy_b64.as_bytes(),
        ));
        (cred, None, expected, form.value("signature"))
    };
    if !same_secret(given, &expected) {
        return Err(OssError::new("SignatureDoesNotMatch")
            .with_extra("OSSAccessKeyId", &cred.access_key_id)
            .with_extra("StringToSign", policy_b64));
    }
    Ok((cred, scope))
}

/// The policy's `expiration`: a valid ISO 8601 time not yet past.
fn check_expiration(expiration: &Json, now: DateTime<Utc>) -> Result<DateTime<Utc>, OssError> {
    let expires_at = expiration.as_str().and_then(parse_iso_extended).ok_or_else(|| {
        OssError::msg(
            "InvalidPolicyDocument",
            format!("Invalid Policy: expiration must be like 2024-03-01T08:00:00.000Z, got {expiration}."),
        )
    })?;
    if now > expires_at {
        let shown = expiration
            .as_str()
            .map_or_else(|| expiration.to_string(), str::to_string);
        return Err(OssError::msg("AccessDenied", "Request has expired.")
            .with_extra("Expires", shown)
            .with_extra("ServerTime", now.timestamp().to_string()));
    }
    Ok(expires_at)
}

/// V4 only: `x-oss-date` matches the scope's day and is not in the future, the
/// policy lives at most 7 days after it, and the V4 fields are exact-match conditions.
fn check_v4_rules(
    form: &PostFields<'_>,
    scope: &Scope,
    cred: &Credential,
    conditions: &[Json],
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), OssError> {
    let xdate = form.value("x-oss-date");
    let signed_at = parse_iso_basic(xdate, "x-oss-date")?;
    if xdate[..8] != scope.day {
        return Err(OssError::msg(
            "InvalidArgument",
            "The date in x-oss-credential is not the date of x-oss-date.",
        ));
    }
    if signed_at - now > TimeDelta::seconds(MAX_SKEW_SECS) {
        return Err(OssError::msg(
            "RequestTimeTooSkewed",
            "x-oss-date is more than 15 minutes in the future.",
        ));
    }
    let cap = TimeDelta::seconds(V4_MAX_EXPIRES_SECS);
    if expires_at - signed_at > cap || now > signed_at + cap {
        return Err(OssError::msg(
            "InvalidPolicyDocument",
            "Invalid Policy: a V4 policy is valid for at most 7 days after x-oss-date.",
        ));
    }
    let mut required = vec!["x-oss-signature-version", "x-oss-credential", "x-oss-date"];
    if cred.security_token.is_some() {
        required.push("x-oss-security-token");
    }
    let exact = exact_condition_names(conditions);
    let absent: Vec<&str> = required
        .into_iter()
        .filter(|n| !exact.iter().any(|e| e == n))
        .collect();
    if absent.is_empty() {
        return Ok(());
    }
    Err(OssError::msg(
        "InvalidPolicyDocument",
        format!(
            "Invalid Policy: a V4 policy must hold exact-match conditions for {}.",
            absent.join(", ")
        ),
    ))
}

/// What is stored: the key with `${filename}` filled in, the form's or the file's Content-Type.
fn upload_of(
    form: &PostFields<'_>,
    scheme: AuthScheme,
    credential: Credential,
    key_template: &str,
) -> PostUpload {
    let file_name = form.file_name.unwrap_or("").replace('\\', "/");
    let base_name = file_name.rsplit('/').next().unwrap_or("");
    let content_type = [form.value("content-type"), form.file_content_type.unwrap_or("")]
        .into_iter()
        .find(|c| !c.is_empty())
        .unwrap_or("application/octet-stream")
        .to_string();
    PostUpload {
        scheme,
        credential,
        key: key_template.replace("${filename}", base_name),
        content_type,
    }
}

/// Strict base64 (canonical padding; tolerates
/// non-zero trailing bits), then JSON with both members, `conditions` a list.
fn decode_policy(policy_b64: &str) -> Result<Json, OssError> {
    const ENGINE: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireCanonical),
    );
    let not_json = |why: String| {
        OssError::msg(
            "InvalidPolicyDocument",
            format!("Invalid Policy: the policy is not base64 JSON ({why})."),
        )
    };
    let bytes = ENGINE.decode(policy_b64).map_err(|e| not_json(e.to_string()))?;
    let text = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(&bytes);
    let doc: Json = serde_json::from_slice(text).map_err(|e| not_json(e.to_string()))?;
    let shape_ok = doc.get("expiration").is_some() && doc.get("conditions").is_some();
    if !shape_ok {
        return Err(OssError::msg(
            "InvalidPolicyDocument",
            "Invalid Policy: expiration and conditions are both required.",
        ));
    }
    if !doc["conditions"].is_array() {
        return Err(OssError::msg(
            "InvalidPolicyDocument",
            "Invalid Policy: conditions must be a list.",
        ));
    }
    Ok(doc)
}

/// Lower-case field names with an exact-match condition (`{f: v}` or `["eq", "$f", v]`).
fn exact_condition_names(conditions: &[Json]) -> Vec<String> {
    let mut found = Vec::new();
    for cond in conditions {
        match cond {
            Json::Object(members) => found.extend(members.keys().map(|k| k.to_lowercase())),
            Json::Array(items) if items.len() == 3 => {
                if let (Json::String(op), Json::String(field)) = (&items[0], &items[1])
                    && op.to_lowercase() == "eq"
                {
                    found.push(field.trim_start_matches('$').to_lowercase());
                }
            }
            _ => {}
        }
    }
    found
}

/// An integral JSON number (`content-length-range` bounds); floats are not.
fn integer(value: &Json) -> Option<i128> {
    value
        .as_i64()
        .map(i128::from)
        .or_else(|| value.as_u64().map(i128::from))
}

/// Evaluates every condition in order; the first failure decides the error.
fn check_conditions(conditions: &[Json], values: &HashMap<&str, &str>, size: u64) -> Result<(), OssError> {
    for cond in conditions {
        let bad =
            |why: &str| OssError::msg("InvalidPolicyDocument", format!("Invalid Policy: {why}: {cond}"));
        let failed = || {
            OssError::msg(
                "AccessDenied",
                format!("Invalid according to Policy: Policy Condition failed: {cond}"),
            )
        };
        let have = |field: &str| values.get(field.to_lowercase().as_str()).copied().unwrap_or("");
        match cond {
            Json::Object(members) => {
                // The document's shape first, then the values.
                if members.is_empty() {
                    return Err(bad("empty condition"));
                }
                if !members.values().all(Json::is_string) {
                    return Err(bad("an exact-match value must be a string"));
                }
                if members
                    .iter()
                    .any(|(name, want)| want.as_str() != Some(have(name)))
                {
                    return Err(failed());
                }
            }
            Json::Array(items) => {
                let Some(Json::String(op)) = items.first() else {
                    return Err(bad(
                        "a condition must be an object or a list starting with an operator",
                    ));
                };
                let op = op.to_lowercase();
                if op == "content-length-range" {
                    let (Some(low), Some(high), 3) = (
                        items.get(1).and_then(integer),
                        items.get(2).and_then(integer),
                        items.len(),
                    ) else {
                        return Err(bad("content-length-range needs two integers"));
                    };
                    let size = i128::from(size);
                    if size > high {
                        return Err(OssError::msg(
                            "EntityTooLarge",
                            format!(
                                "Your proposed upload exceeds the maximum allowed size ({size} > {high} bytes)."
                            ),
                        ));
                    }
                    if size < low {
                        return Err(OssError::msg(
                            "EntityTooSmall",
                            format!(
                                "Your proposed upload is smaller than the minimum allowed size ({size} < {low} bytes)."
                            ),
                        ));
                    }
                    continue;
                }
                if !matches!(op.as_str(), "eq" | "starts-with" | "in" | "not-in") {
                    return Err(bad(&format!("unknown operator {}", items[0])));
                }
                let field = match (items.len(), items.get(1)) {
                    (3, Some(Json::String(f))) if f.starts_with('$') => &f[1..],
                    _ => return Err(bad("expected [op, \"$field\", value]")),
                };
                let have = have(field);
                let ok = match (op.as_str(), &items[2]) {
                    ("eq", Json::String(want)) => have == want,
                    ("starts-with", Json::String(want)) => have.starts_with(want.as_str()),
                    ("eq" | "starts-with", _) => return Err(bad(&format!("{op} needs a string value"))),
                    (_, Json::Array(list)) if list.iter().all(Json::is_string) => {
                        let member = list.iter().any(|w| w.as_str() == Some(have));
                        member == (op == "in")
                    }
                    _ => return Err(bad(&format!("{op} needs a list of strings"))),
                };
                if !ok {
                    return Err(failed());
                }
            }
            _ => {
                return Err(bad(
                    "a condition must be an object or a list starting with an operator",
                ));
            }
        }
    }
    Ok(())
}
