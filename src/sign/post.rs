//! PostObject (browser form upload, docs/signing.md §10): signs the exact policy JSON text
//! it is given and returns every non-file form field to send.
//!
//! The signature covers the base64 of the policy bytes, so the caller must send
//! exactly the text passed here (pitfall §13.14): build the JSON once, sign it,
//! and never re-serialize it.

use chrono::{DateTime, Utc};

use super::oss_v4::{ALGORITHM, V4Scope, signing_key};
use super::{
    AddressingStyle, Endpoint, PostForm, SignError, SigningCredentials, b64, check_form_fields,
    check_policy_has, check_policy_shape, format_iso8601_basic, hex_lower, hmac_sha1, hmac_sha256,
};

const RESERVED_V1: &[&str] = &["OSSAccessKeyId", "policy", "Signature", "x-oss-security-token"];
const RESERVED_V4: &[&str] = &[
    "policy",
    "x-oss-signature-version",
    "x-oss-credential",
    "x-oss-date",
    "x-oss-signature",
    "x-oss-security-token",
];

/// Where the browser POSTs the form: the bucket root (`https://<bucket>.<host>/`,
/// or `<base>/<bucket>/` path-style), never the object's path.
pub fn post_url(endpoint: &Endpoint<'_>, bucket: &str) -> Result<String, SignError> {
    let location = endpoint.locate(bucket, "")?;
    Ok(match endpoint.style {
        AddressingStyle::VirtualHosted => format!("{}/", location.origin),
        AddressingStyle::Path => format!("{}{}", location.origin, location.path),
    })
}

/// PostObject V1: `Signature = base64(HMAC-SHA1(secret, base64(policy_json)))`.
///
/// `fields` are the caller's other form fields (`key`, `success_action_status`,
/// `Content-Type`, `x-oss-meta-*` …), sent first and in the given order; then
/// `OSSAccessKeyId`, `policy`, `Signature` and, with STS, `x-oss-security-token`.
pub fn sign_v1(
    creds: &SigningCredentials<'_>,
    policy_json: &str,
    fields: &[(&str, &str)],
) -> Result<PostForm, SignError> {
    creds.check()?;
    check_form_fields(fields, RESERVED_V1)?;
    check_policy_shape(policy_json)?;

    let policy_base64 = b64(policy_json.as_bytes());
    let signature = b64(&hmac_sha1(
        creds.access_key_secret.as_bytes(),
        policy_base64.as_bytes(),
    ));
    let mut out = owned(fields);
    out.push(("OSSAccessKeyId".into(), creds.access_key_id.into()));
    out.push(("policy".into(), policy_base64.clone()));
    out.push(("Signature".into(), signature.clone()));
    if let Some(token) = creds.security_token {
        out.push(("x-oss-security-token".into(), token.into()));
    }
    Ok(PostForm {
        fields: out,
        string_to_sign: policy_base64.clone(),
        policy_base64,
        signature,
    })
}

/// The exact-match conditions a V4 policy must contain for credentials signing
/// at `at` (docs/signing.md §10.3), in the order ali-oss writes them. Put each in the
/// policy as `{"<name>": "<value>"}`; `x-oss-date` and the credential's date come
/// from the one timestamp, so they cannot straddle UTC midnight.
pub fn v4_required_conditions(
    creds: &SigningCredentials<'_>,
    scope: &V4Scope<'_>,
    at: DateTime<Utc>,
) -> Result<Vec<(&'static str, String)>, SignError> {
    creds.check()?;
    scope.check()?;
    super::check_time(at)?;
    let iso = format_iso8601_basic(at);
    let mut out = vec![
        ("x-oss-signature-version", ALGORITHM.to_string()),
        (
            "x-oss-credential",
            format!("{}/{}", creds.access_key_id, scope.credential_scope(&iso[..8])),
        ),
    ];
    if let Some(token) = creds.security_token {
        out.push(("x-oss-security-token", token.to_string()));
    }
    out.push(("x-oss-date", iso));
    Ok(out)
}

/// PostObject V4: `x-oss-signature = hex(HMAC-SHA256(V4 key for at's date, base64(policy_json)))`.
///
/// The policy must already contain [`v4_required_conditions`] for the same
/// `at`; their values are looked for in the text and a policy built for another
/// date, region or credential is refused. `fields` are the caller's other form
/// fields, sent first; then `policy`, `x-oss-signature-version`,
/// `x-oss-credential`, `x-oss-date`, `x-oss-signature` and, with STS,
/// `x-oss-security-token`.
pub fn sign_v4(
    creds: &SigningCredentials<'_>,
    scope: &V4Scope<'_>,
    at: DateTime<Utc>,
    policy_json: &str,
    fields: &[(&str, &str)],
) -> Result<PostForm, SignError> {
    let required = v4_required_conditions(creds, scope, at)?;
    check_form_fields(fields, RESERVED_V4)?;
    check_policy_shape(policy_json)?;
    for (name, value) in &required {
        check_policy_has(policy_json, &format!("the {name} condition"), value)?;
    }

    let iso = format_iso8601_basic(at);
    let policy_base64 = b64(policy_json.as_bytes());
    let key = signing_key(creds.access_key_secret, &iso[..8], scope);
    let signature = hex_lower(&hmac_sha256(&key, policy_base64.as_bytes()));
    let value_of = |n: &str| {
        required
            .iter()
            .find(|(k, _)| *k == n)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };

    let mut out = owned(fields);
    out.push(("policy".into(), policy_base64.clone()));
    out.push(("x-oss-signature-version".into(), ALGORITHM.into()));
    out.push(("x-oss-credential".into(), value_of("x-oss-credential")));
    out.push(("x-oss-date".into(), iso));
    out.push(("x-oss-signature".into(), signature.clone()));
    if let Some(token) = creds.security_token {
        out.push(("x-oss-security-token".into(), token.into()));
    }
    Ok(PostForm {
        fields: out,
        string_to_sign: policy_base64.clone(),
        policy_base64,
        signature,
    })
}

pub(crate) fn owned(fields: &[(&str, &str)]) -> Vec<(String, String)> {
    fields
        .iter()
        .map(|&(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREDS: SigningCredentials<'static> = SigningCredentials {
        access_key_id: "ak",
        access_key_secret: "sk",
        security_token: None,
    };

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    fn v4_policy(conds: &[(&str, String)]) -> String {
        let c: Vec<String> = conds
            .iter()
            .map(|(k, v)| format!("{{\"{k}\":\"{v}\"}}"))
            .collect();
        format!(
            "{{\"expiration\":\"2030-01-01T00:00:00.000Z\",\"conditions\":[{}]}}",
            c.join(",")
        )
    }

    #[test]
    fn v4_roundtrip_and_date_mismatch() {
        let creds = SigningCredentials {
            security_token: Some("t+/="),
            ..CREDS
        };
        let scope = V4Scope::oss("cn-hangzhou");
        let conds = v4_required_conditions(&creds, &scope, at(86_399)).unwrap();
        let policy = v4_policy(&conds);
        let form = sign_v4(&creds, &scope, at(86_399), &policy, &[("key", "k")]).unwrap();
        assert_eq!(form.fields[0], ("key".into(), "k".into()));
        assert_eq!(
            form.fields.last().unwrap(),
            &("x-oss-security-token".into(), "t+/=".into())
        );
        // One second later is the next UTC day: the policy no longer matches.
        assert!(matches!(
            sign_v4(&creds, &scope, at(86_400), &policy, &[]),
            Err(SignError::PolicyMissing(_))
        ));
        // Without the token condition an STS policy is refused.
        let no_token: Vec<_> = conds
            .into_iter()
            .filter(|(k, _)| *k != "x-oss-security-token")
            .collect();
        assert!(sign_v4(&creds, &scope, at(86_399), &v4_policy(&no_token), &[]).is_err());
    }

    #[test]
    fn reserved_and_duplicate_fields() {
        let p = r#"{"expiration":"2030-01-01T00:00:00Z","conditions":[]}"#;
        assert!(matches!(
            sign_v1(&CREDS, p, &[("signature", "x")]),
            Err(SignError::ReservedFormField(_))
        ));
        assert!(matches!(
            sign_v1(&CREDS, p, &[("File", "x")]),
            Err(SignError::ReservedFormField(_))
        ));
        assert!(matches!(
            sign_v1(&CREDS, p, &[("key", "a"), ("Key", "b")]),
            Err(SignError::DuplicateFormField(_))
        ));
        assert!(matches!(
            sign_v1(&CREDS, "{}", &[]),
            Err(SignError::PolicyMissing(_))
        ));
    }

    #[test]
    fn post_urls() {
        let v = Endpoint {
            base: "https://oss-cn-hangzhou.aliyuncs.com",
            style: AddressingStyle::VirtualHosted,
        };
        assert_eq!(
            post_url(&v, "b").unwrap(),
            "https://b.oss-cn-hangzhou.aliyuncs.com/"
        );
        let p = Endpoint {
            base: "http://127.0.0.1:9000",
            style: AddressingStyle::Path,
        };
        assert_eq!(post_url(&p, "b").unwrap(), "http://127.0.0.1:9000/b/");
        assert_eq!(post_url(&p, ""), Err(SignError::EmptyBucket));
    }
}
