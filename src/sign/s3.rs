//! AWS Signature V4 for the OSS S3-compatible endpoint (docs/signing.md §11): presigned
//! URLs (service `s3`, `UNSIGNED-PAYLOAD`) and S3-style POST policies.
//!
//! The same OSS AccessKey signs; the region in the scope is the OSS region id
//! without `oss-` (`cn-hangzhou`). Unlike OSS V4, the canonical URI is the URL's
//! actual path (no bucket for virtual-hosted style) and `host` is always signed.

use chrono::{DateTime, Utc};

use super::encode::pct;
use super::{
    Endpoint, PostForm, PresignedUrl, RequestToSign, SignError, SigningCredentials, check_form_fields,
    check_headers, check_method, check_policy_has, check_policy_shape, check_query, check_region,
    encode_query, expiry, format_iso8601_basic, hex_lower, hmac_sha256, sha256_hex,
};

/// The algorithm name in query parameters, form fields and string-to-sign.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// `X-Amz-Expires` upper bound: 7 days.
pub const MAX_PRESIGN_EXPIRES_SECS: u64 = 604_800;
const SERVICE: &str = "s3";
const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

const RESERVED_HEADERS: &[&str] = &[
    "host",
    "authorization",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
];
const RESERVED_QUERY: &[&str] = &[
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Security-Token",
    "X-Amz-Signature",
];
const RESERVED_FIELDS: &[&str] = &[
    "policy",
    "x-amz-algorithm",
    "x-amz-credential",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-signature",
];

/// `<yyyymmdd>/<region>/s3/aws4_request`.
pub fn credential_scope(date: &str, region: &str) -> String {
    format!("{date}/{region}/{SERVICE}/aws4_request")
}

/// SigV4 signing key: HMAC-SHA256 chain over `"AWS4"+secret`, `date`
/// (`yyyymmdd`), region, `s3`, `"aws4_request"`.
pub fn signing_key(secret_access_key: &str, date: &str, region: &str) -> [u8; 32] {
    let k1 = hmac_sha256(format!("AWS4{secret_access_key}").as_bytes(), date.as_bytes());
    let k2 = hmac_sha256(&k1, region.as_bytes());
    let k3 = hmac_sha256(&k2, SERVICE.as_bytes());
    hmac_sha256(&k3, b"aws4_request")
}

/// `AWS4-HMAC-SHA256\n<iso basic>\n<scope>\nhex(sha256(canonical_request))`.
pub fn string_to_sign(iso_basic_time: &str, credential_scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{iso_basic_time}\n{credential_scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

/// SigV4 header value canonicalization: runs of whitespace become one space.
fn canonical_header_value(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Builds a SigV4 presigned URL signed at `at`, valid for `expires_in_secs`
/// (1 ..= 604800), payload `UNSIGNED-PAYLOAD`.
///
/// Every header of `req` is signed (lower-cased, with `host` derived from the
/// endpoint: the URL authority minus a default port) and returned in
/// [`PresignedUrl::required_headers`]. With STS the token travels as
/// `X-Amz-Security-Token` (signed). `region` is the OSS region id, e.g. `cn-hangzhou`.
pub fn presign_url(
    creds: &SigningCredentials<'_>,
    req: &RequestToSign<'_>,
    endpoint: &Endpoint<'_>,
    region: &str,
    at: DateTime<Utc>,
    expires_in_secs: u64,
) -> Result<PresignedUrl, SignError> {
    creds.check()?;
    check_method(req.method)?;
    let bucket = req.required_bucket()?;
    let location = endpoint.locate(bucket, req.key)?;
    check_region(region)?;
    let headers = check_headers(req.headers, RESERVED_HEADERS)?;
    check_query(req.query, RESERVED_QUERY)?;
    super::check_expires(expires_in_secs, 1, MAX_PRESIGN_EXPIRES_SECS)?;
    let expires_at = expiry(at, expires_in_secs)?;

    let mut signed: Vec<(String, String)> = headers
        .iter()
        .map(|h| (h.lower.clone(), canonical_header_value(h.value)))
        .collect();
    signed.push(("host".into(), location.canonical_host().to_string()));
    signed.sort();
    let signed_names = signed
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(";");

    let iso = format_iso8601_basic(at);
    let scope = credential_scope(&iso[..8], region);
    // Parameter order as botocore writes it; the signature sorts them.
    let mut query: Vec<(String, String)> = req
        .query
        .iter()
        .map(|&(k, v)| (k.to_string(), v.to_string()))
        .collect();
    query.push(("X-Amz-Algorithm".into(), ALGORITHM.into()));
    query.push((
        "X-Amz-Credential".into(),
        format!("{}/{scope}", creds.access_key_id),
    ));
    query.push(("X-Amz-Date".into(), iso.clone()));
    query.push(("X-Amz-Expires".into(), expires_in_secs.to_string()));
    query.push(("X-Amz-SignedHeaders".into(), signed_names.clone()));
    if let Some(token) = creds.security_token {
        query.push(("X-Amz-Security-Token".into(), token.into()));
    }

    let mut canonical_query: Vec<(String, String)> = query.iter().map(|(k, v)| (pct(k), pct(v))).collect();
    canonical_query.sort();
    let canonical_query = canonical_query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let canonical_headers: String = signed.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
    let canonical_request = format!(
        "{}\n{}\n{canonical_query}\n{canonical_headers}\n{signed_names}\n{UNSIGNED_PAYLOAD}",
        req.method, location.path
    );
    let string_to_sign = string_to_sign(&iso, &scope, &canonical_request);
    let key = signing_key(creds.access_key_secret, &iso[..8], region);
    let signature = hex_lower(&hmac_sha256(&key, string_to_sign.as_bytes()));
    query.push(("X-Amz-Signature".into(), signature.clone()));
    let url = format!(
        "{}{}?{}",
        location.origin,
        location.path,
        encode_query(&query, true)
    );

    let mut required: Vec<(String, String)> = headers
        .iter()
        .map(|h| (h.name.to_string(), h.value.to_string()))
        .collect();
    required.sort_by_key(|(n, _)| n.to_ascii_lowercase());
    Ok(PresignedUrl {
        method: req.method.to_string(),
        url,
        query,
        required_headers: required,
        canonical_request: Some(canonical_request),
        string_to_sign,
        signature,
        expires_at_unix: expires_at,
    })
}

/// The exact-match conditions an S3 POST policy must contain for credentials
/// signing at `at`, in botocore's order. Put each in the policy as `{"<name>": "<value>"}`.
pub fn post_required_conditions(
    creds: &SigningCredentials<'_>,
    region: &str,
    at: DateTime<Utc>,
) -> Result<Vec<(&'static str, String)>, SignError> {
    creds.check()?;
    check_region(region)?;
    super::check_time(at)?;
    let iso = format_iso8601_basic(at);
    let mut out = vec![
        ("x-amz-algorithm", ALGORITHM.to_string()),
        (
            "x-amz-credential",
            format!("{}/{}", creds.access_key_id, credential_scope(&iso[..8], region)),
        ),
        ("x-amz-date", iso),
    ];
    if let Some(token) = creds.security_token {
        out.push(("x-amz-security-token", token.to_string()));
    }
    Ok(out)
}

/// S3 POST policy: `x-amz-signature = hex(HMAC-SHA256(SigV4 key, base64(policy_json)))`.
///
/// The policy must contain [`post_required_conditions`] for the same `at`
/// (checked in the text). `fields` (e.g. `key`, `Content-Type`) are sent first;
/// then `x-amz-algorithm`, `x-amz-credential`, `x-amz-date`,
/// `x-amz-security-token` (STS), `policy`, `x-amz-signature`. Whether OSS
/// accepts S3-style POST is unverified (docs/signing.md §11); prefer PostObject V4.
pub fn sign_post_policy(
    creds: &SigningCredentials<'_>,
    region: &str,
    at: DateTime<Utc>,
    policy_json: &str,
    fields: &[(&str, &str)],
) -> Result<PostForm, SignError> {
    let required = post_required_conditions(creds, region, at)?;
    check_form_fields(fields, RESERVED_FIELDS)?;
    check_policy_shape(policy_json)?;
    for (name, value) in &required {
        check_policy_has(policy_json, &format!("the {name} condition"), value)?;
    }

    let iso = format_iso8601_basic(at);
    let policy_base64 = super::b64(policy_json.as_bytes());
    let key = signing_key(creds.access_key_secret, &iso[..8], region);
    let signature = hex_lower(&hmac_sha256(&key, policy_base64.as_bytes()));
    let mut out = super::post::owned(fields);
    out.extend(required.into_iter().map(|(k, v)| (k.to_string(), v)));
    out.push(("policy".into(), policy_base64.clone()));
    out.push(("x-amz-signature".into(), signature.clone()));
    Ok(PostForm {
        fields: out,
        string_to_sign: policy_base64.clone(),
        policy_base64,
        signature,
    })
}

#[cfg(test)]
mod tests {
    use super::super::AddressingStyle;
    use super::*;

    const CREDS: SigningCredentials<'static> = SigningCredentials {
        access_key_id: "ak",
        access_key_secret: "sk",
        security_token: None,
    };

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    fn req<'a>(key: &'a str, headers: &'a [(&'a str, &'a str)]) -> RequestToSign<'a> {
        RequestToSign {
            method: "PUT",
            bucket: Some("b"),
            key,
            headers,
            query: &[],
        }
    }

    #[test]
    fn path_style_signs_bucket_path_and_port() {
        let e = Endpoint {
            base: "http://127.0.0.1:9000",
            style: AddressingStyle::Path,
        };
        let u = presign_url(&CREDS, &req("a b/ü", &[]), &e, "cn-hangzhou", at(0), 60).unwrap();
        let cr = u.canonical_request.unwrap();
        assert!(cr.starts_with("PUT\n/b/a%20b/%C3%BC\n"));
        assert!(cr.contains("\nhost:127.0.0.1:9000\n\nhost\nUNSIGNED-PAYLOAD"));
        assert!(
            u.url
                .starts_with("http://127.0.0.1:9000/b/a%20b/%C3%BC?X-Amz-Algorithm=")
        );
    }

    #[test]
    fn mixed_case_headers_signed_lowercase_collapsed() {
        let e = Endpoint {
            base: "https://s3.oss-cn-hangzhou.aliyuncs.com",
            style: AddressingStyle::VirtualHosted,
        };
        let h = [("X-Amz-Meta-A", "x  y"), ("Content-Type", "text/plain")];
        let u = presign_url(&CREDS, &req("", &h), &e, "cn-hangzhou", at(0), 60).unwrap();
        let cr = u.canonical_request.unwrap();
        assert!(cr.starts_with("PUT\n/\n"));
        assert!(cr.contains(
            "\ncontent-type:text/plain\nhost:b.s3.oss-cn-hangzhou.aliyuncs.com\nx-amz-meta-a:x y\n\ncontent-type;host;x-amz-meta-a\n"
        ));
        assert_eq!(u.required_headers[0].0, "Content-Type");
    }

    #[test]
    fn sts_token_and_rejections() {
        let e = Endpoint {
            base: "https://s3.oss-cn-hangzhou.aliyuncs.com",
            style: AddressingStyle::VirtualHosted,
        };
        let creds = SigningCredentials {
            security_token: Some("a+b/c="),
            ..CREDS
        };
        let u = presign_url(&creds, &req("k", &[]), &e, "cn-hangzhou", at(0), 60).unwrap();
        assert!(
            u.url
                .contains("&X-Amz-Security-Token=a%2Bb%2Fc%3D&X-Amz-Signature=")
        );
        assert!(matches!(
            presign_url(&CREDS, &req("k", &[("Host", "x")]), &e, "cn-hangzhou", at(0), 60),
            Err(SignError::ReservedHeader(_))
        ));
        assert!(matches!(
            presign_url(&CREDS, &req("k", &[]), &e, "cn-hangzhou", at(0), 604_801),
            Err(SignError::ExpiresOutOfRange { .. })
        ));
        assert!(matches!(
            presign_url(&CREDS, &req("k", &[]), &e, "oss-cn-hangzhou", at(0), 60),
            Err(SignError::InvalidRegion(_))
        ));
    }
}
