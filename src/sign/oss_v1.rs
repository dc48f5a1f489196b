//! OSS signature V1 (HMAC-SHA1): the `Authorization: OSS <ak>:<sig>` header
//! (docs/signing.md §7) and the `?OSSAccessKeyId=…&Expires=…&Signature=…` URL (docs/signing.md §8).
//!
//! V1 signs the resource *raw* (not percent-encoded) and only the query
//! parameters that are OSS sub-resources; V4 ([`super::oss_v4`]) signs everything.

use chrono::{DateTime, Utc};

use super::{
    Endpoint, Header, HeaderSignature, PresignedUrl, RequestToSign, SignError, SigningCredentials, b64,
    check_headers, check_method, check_query, encode_query, expiry, format_http_date, hmac_sha1,
};

/// Query parameters that are part of the V1 `CanonicalizedResource`: oss2 2.19.1's
/// list (docs/signing.md §7 says follow it; alibabacloud-oss-v2 omits e.g. `x-oss-process`).
pub const SUB_RESOURCES: &[&str] = &[
    "response-content-type",
    "response-content-language",
    "response-cache-control",
    "logging",
    "response-content-encoding",
    "acl",
    "uploadId",
    "uploads",
    "partNumber",
    "group",
    "link",
    "delete",
    "website",
    "location",
    "objectInfo",
    "objectMeta",
    "response-expires",
    "response-content-disposition",
    "cors",
    "lifecycle",
    "restore",
    "qos",
    "referer",
    "stat",
    "bucketInfo",
    "append",
    "position",
    "security-token",
    "live",
    "comp",
    "status",
    "vod",
    "startTime",
    "endTime",
    "x-oss-process",
    "symlink",
    "callback",
    "callback-var",
    "tagging",
    "encryption",
    "versions",
    "versioning",
    "versionId",
    "policy",
    "requestPayment",
    "x-oss-traffic-limit",
    "qosInfo",
    "asyncFetch",
    "x-oss-request-payer",
    "sequential",
    "inventory",
    "inventoryId",
    "continuation-token",
    "worm",
    "wormId",
    "wormExtend",
    "replication",
    "replicationLocation",
    "replicationProgress",
    "transferAcceleration",
    "cname",
    "metaQuery",
    "x-oss-ac-source-ip",
    "x-oss-ac-subnet-mask",
    "x-oss-ac-vpc-id",
    "x-oss-ac-forward-allow",
    "resourceGroup",
    "style",
    "styleName",
    "x-oss-async-process",
    "regionList",
    "x-oss-write-get-object-response",
    "bucketArchiveDirectRead",
    "httpsConfig",
    "redundancyTransition",
    "x-oss-target-redundancy-type",
    "x-oss-redundancy-transition-taskid",
    "accessPoint",
    "accessPointPolicy",
    "publicAccessBlock",
    "x-oss-access-point-name",
    "requesterQosInfo",
    "qosRequester",
    "resourcePoolInfo",
    "resourcePool",
    "resourcePoolBuckets",
];

/// Whether `name` is signed by V1 (names are case-sensitive, as in the SDKs).
pub fn is_sub_resource(name: &str) -> bool {
    SUB_RESOURCES.contains(&name)
}

/// Headers the V1 header signer owns.
const RESERVED_HEADERS: &[&str] = &["authorization", "date", "x-oss-security-token"];
/// For URLs the Date slot holds `Expires`, so `x-oss-date` would silently replace it.
const RESERVED_URL_HEADERS: &[&str] = &["authorization", "date", "x-oss-date", "x-oss-security-token"];
const RESERVED_URL_QUERY: &[&str] = &["OSSAccessKeyId", "Expires", "Signature", "security-token"];

/// `CanonicalizedResource`: `/`, `/<bucket>/` or `/<bucket>/<raw key>`, then the
/// sub-resources sorted by name as `?name[=raw value]&…`.
///
/// Raw text makes some inputs collide (key `a?acl` vs key `a` + `?acl`; a value
/// containing `&`); those are refused with [`SignError::AmbiguousV1Resource`].
pub fn canonicalized_resource(
    bucket: Option<&str>,
    key: &str,
    query: &[(&str, &str)],
) -> Result<String, SignError> {
    if key.contains('?') {
        return Err(SignError::AmbiguousV1Resource("object key contains '?'".into()));
    }
    let mut subs: Vec<(&str, &str)> = query
        .iter()
        .copied()
        .filter(|(k, _)| is_sub_resource(k))
        .collect();
    if let Some((k, _)) = subs.iter().find(|(_, v)| v.contains('&')) {
        return Err(SignError::AmbiguousV1Resource(format!(
            "value of {k:?} contains '&'"
        )));
    }
    subs.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut out = match bucket {
        None => "/".to_string(),
        Some(b) => format!("/{b}/{key}"),
    };
    for (i, (k, v)) in subs.iter().enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        out.push_str(k);
        if !v.is_empty() {
            out.push('=');
            out.push_str(v);
        }
    }
    Ok(out)
}

/// `CanonicalizedResource` rebuilt by a verifier from a request as received (the
/// local OSS sink). Same layout as [`canonicalized_resource`], but nothing is
/// refused — the client signed whatever raw text it had — and parameters with
/// equal names sort by value, as alibabacloud-oss-v2 does. `is_signed` picks the
/// signed parameters (at least [`is_sub_resource`]); values are raw (decoded).
pub fn received_resource(
    bucket: Option<&str>,
    key: &str,
    query: &[(&str, &str)],
    is_signed: impl Fn(&str) -> bool,
) -> String {
    let mut subs: Vec<(&str, &str)> = query.iter().copied().filter(|(k, _)| is_signed(k)).collect();
    subs.sort();
    let mut out = match bucket {
        None => "/".to_string(),
        Some(b) => format!("/{b}/{key}"),
    };
    for (i, (k, v)) in subs.iter().enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        out.push_str(k);
        if !v.is_empty() {
            out.push('=');
            out.push_str(v);
        }
    }
    out
}

/// The V1 string-to-sign of a request as received, for verifiers: `headers` are
/// every received header as (lower-case name, value), `date_slot` is the
/// `x-oss-date`/`Date` value (header form) or `Expires` (URL form), `resource`
/// comes from [`received_resource`]. The signers above build the same string.
pub fn received_string_to_sign(
    method: &str,
    headers: &[(String, &str)],
    date_slot: &str,
    resource: &str,
) -> String {
    string_to_sign(method, headers, date_slot, resource)
}

/// `lowername:value\n` for every `x-oss-*` header, sorted by name.
fn canonicalized_oss_headers(headers: &[(String, &str)]) -> String {
    let mut oss: Vec<&(String, &str)> = headers.iter().filter(|(n, _)| n.starts_with("x-oss-")).collect();
    oss.sort_by(|a, b| a.0.cmp(&b.0));
    oss.iter().map(|(n, v)| format!("{n}:{v}\n")).collect()
}

fn header_value<'a>(headers: &[(String, &'a str)], lower: &str) -> &'a str {
    headers.iter().find(|(n, _)| n == lower).map_or("", |(_, v)| *v)
}

/// `VERB\nContent-MD5\nContent-Type\n<date slot>\n` + x-oss headers + resource.
/// `headers` are (lower-case name, value) and include the token header if any.
fn string_to_sign(method: &str, headers: &[(String, &str)], date_slot: &str, resource: &str) -> String {
    format!(
        "{method}\n{}\n{}\n{date_slot}\n{}{resource}",
        header_value(headers, "content-md5"),
        header_value(headers, "content-type"),
        canonicalized_oss_headers(headers),
    )
}

fn lowered<'a>(headers: &[Header<'a>]) -> Vec<(String, &'a str)> {
    headers.iter().map(|h| (h.lower.clone(), h.value)).collect()
}

/// Signs a request with the `Authorization: OSS <ak>:<sig>` header at time `date`.
///
/// The `Date` slot is the `x-oss-date` header when the request has one, else
/// `date` (the signer adds a `Date` header either way). With STS credentials the
/// signer adds and signs `x-oss-security-token`.
pub fn sign_header(
    creds: &SigningCredentials<'_>,
    req: &RequestToSign<'_>,
    date: DateTime<Utc>,
) -> Result<HeaderSignature, SignError> {
    creds.check()?;
    check_method(req.method)?;
    req.check_target()?;
    super::check_time(date)?;
    let headers = check_headers(req.headers, RESERVED_HEADERS)?;
    check_query(req.query, &[])?;

    let http_date = format_http_date(date);
    let mut signed = lowered(&headers);
    if let Some(token) = creds.security_token {
        signed.push(("x-oss-security-token".to_string(), token));
    }
    let date_slot = match header_value(&signed, "x-oss-date") {
        "" => http_date.as_str(),
        x_oss_date => x_oss_date,
    };
    let resource = canonicalized_resource(req.bucket, req.key, req.query)?;
    let string_to_sign = string_to_sign(req.method, &signed, date_slot, &resource);
    let signature = b64(&hmac_sha1(
        creds.access_key_secret.as_bytes(),
        string_to_sign.as_bytes(),
    ));
    let authorization = format!("OSS {}:{signature}", creds.access_key_id);

    let mut headers_to_add = Vec::with_capacity(3);
    if let Some(token) = creds.security_token {
        headers_to_add.push(("x-oss-security-token".to_string(), token.to_string()));
    }
    headers_to_add.push(("Date".to_string(), http_date));
    headers_to_add.push(("Authorization".to_string(), authorization.clone()));
    Ok(HeaderSignature {
        headers_to_add,
        canonical_request: None,
        string_to_sign,
        signature,
        authorization,
    })
}

/// Builds a V1 presigned URL valid until `now + expires_in_secs` (absolute
/// `Expires`; V1 has no upper bound, but prefer V4 for new URLs).
///
/// `Content-Type`, `Content-MD5` and `x-oss-*` headers of `req` are signed and
/// returned in [`PresignedUrl::required_headers`]. With STS credentials the
/// token travels as the `security-token` query parameter (a signed sub-resource).
/// The key keeps its `/` in the URL path.
pub fn presign_url(
    creds: &SigningCredentials<'_>,
    req: &RequestToSign<'_>,
    endpoint: &Endpoint<'_>,
    now: DateTime<Utc>,
    expires_in_secs: u64,
) -> Result<PresignedUrl, SignError> {
    creds.check()?;
    check_method(req.method)?;
    let bucket = req.required_bucket()?;
    let location = endpoint.locate(bucket, req.key)?;
    let headers = check_headers(req.headers, RESERVED_URL_HEADERS)?;
    check_query(req.query, RESERVED_URL_QUERY)?;
    super::check_expires(expires_in_secs, 1, u64::MAX)?;
    let expires_at = expiry(now, expires_in_secs)?;
    let expires = expires_at.to_string();

    let mut signed_query: Vec<(&str, &str)> = req.query.to_vec();
    if let Some(token) = creds.security_token {
        signed_query.push(("security-token", token));
    }
    let resource = canonicalized_resource(Some(bucket), req.key, &signed_query)?;
    let lower = lowered(&headers);
    let string_to_sign = string_to_sign(req.method, &lower, &expires, &resource);
    let signature = b64(&hmac_sha1(
        creds.access_key_secret.as_bytes(),
        string_to_sign.as_bytes(),
    ));

    // Parameter order as alibabacloud-oss-v2 writes it; OSS does not care.
    let mut query: Vec<(String, String)> = req
        .query
        .iter()
        .map(|&(k, v)| (k.to_string(), v.to_string()))
        .collect();
    query.push(("OSSAccessKeyId".into(), creds.access_key_id.into()));
    query.push(("Expires".into(), expires));
    if let Some(token) = creds.security_token {
        query.push(("security-token".into(), token.into()));
    }
    query.push(("Signature".into(), signature.clone()));
    let url = format!(
        "{}{}?{}",
        location.origin,
        location.path,
        encode_query(&query, false)
    );

    let mut required: Vec<&Header<'_>> = headers
        .iter()
        .filter(|h| h.lower.starts_with("x-oss-") || h.lower == "content-type" || h.lower == "content-md5")
        .collect();
    required.sort_by(|a, b| a.lower.cmp(&b.lower));
    Ok(PresignedUrl {
        method: req.method.to_string(),
        url,
        query,
        required_headers: required
            .iter()
            .map(|h| (h.name.to_string(), h.value.to_string()))
            .collect(),
        canonical_request: None,
        string_to_sign,
        signature,
        expires_at_unix: expires_at,
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

    fn req<'a>(
        key: &'a str,
        headers: &'a [(&'a str, &'a str)],
        query: &'a [(&'a str, &'a str)],
    ) -> RequestToSign<'a> {
        RequestToSign {
            method: "PUT",
            bucket: Some("b"),
            key,
            headers,
            query,
        }
    }

    #[test]
    fn resource_forms() {
        assert_eq!(canonicalized_resource(None, "", &[]).unwrap(), "/");
        assert_eq!(
            canonicalized_resource(Some("b"), "", &[("acl", "")]).unwrap(),
            "/b/?acl"
        );
        assert_eq!(
            canonicalized_resource(
                Some("b"),
                "k 1",
                &[("prefix", "x"), ("versionId", "v"), ("acl", "")]
            )
            .unwrap(),
            "/b/k 1?acl&versionId=v"
        );
    }

    #[test]
    fn ambiguous_resources_refused() {
        assert!(matches!(
            canonicalized_resource(Some("b"), "a?acl", &[]),
            Err(SignError::AmbiguousV1Resource(_))
        ));
        assert!(matches!(
            canonicalized_resource(Some("b"), "a", &[("response-content-type", "a&acl")]),
            Err(SignError::AmbiguousV1Resource(_))
        ));
        // Not a sub-resource: not signed, so not ambiguous.
        assert!(canonicalized_resource(Some("b"), "a", &[("prefix", "a&b")]).is_ok());
    }

    #[test]
    fn mixed_case_header_names_are_lowered_and_sorted() {
        let h = [
            ("X-Oss-Meta-Z", "z"),
            ("x-OSS-meta-a", "a"),
            ("CONTENT-TYPE", "text/plain"),
        ];
        let s = sign_header(&CREDS, &req("k", &h, &[]), at(0)).unwrap();
        assert_eq!(
            s.string_to_sign,
            "PUT\n\ntext/plain\nThu, 01 Jan 1970 00:00:00 GMT\nx-oss-meta-a:a\nx-oss-meta-z:z\n/b/k"
        );
    }

    #[test]
    fn empty_key_is_bucket_level() {
        let s = sign_header(&CREDS, &req("", &[], &[]), at(0)).unwrap();
        assert!(s.string_to_sign.ends_with("\n/b/"));
        let e = Endpoint {
            base: "https://oss-cn-hangzhou.aliyuncs.com",
            style: AddressingStyle::VirtualHosted,
        };
        let u = presign_url(&CREDS, &req("", &[], &[]), &e, at(0), 60).unwrap();
        assert!(
            u.url
                .starts_with("https://b.oss-cn-hangzhou.aliyuncs.com/?OSSAccessKeyId=ak&")
        );
    }

    #[test]
    fn unicode_key_raw_in_resource_encoded_in_url() {
        let e = Endpoint {
            base: "http://127.0.0.1:9000",
            style: AddressingStyle::Path,
        };
        let u = presign_url(&CREDS, &req("é/ü x", &[], &[]), &e, at(0), 60).unwrap();
        assert!(u.string_to_sign.ends_with("\n/b/é/ü x"));
        assert!(u.url.starts_with("http://127.0.0.1:9000/b/%C3%A9/%C3%BC%20x?"));
    }

    #[test]
    fn sts_token_with_reserved_chars() {
        let creds = SigningCredentials {
            security_token: Some("a+b/c=="),
            ..CREDS
        };
        let e = Endpoint {
            base: "https://oss-cn-hangzhou.aliyuncs.com",
            style: AddressingStyle::VirtualHosted,
        };
        let u = presign_url(&creds, &req("k", &[], &[]), &e, at(0), 60).unwrap();
        assert!(u.string_to_sign.ends_with("/b/k?security-token=a+b/c=="));
        assert!(u.url.contains("&security-token=a%2Bb%2Fc%3D%3D&"));
        let h = sign_header(&creds, &req("k", &[], &[]), at(0)).unwrap();
        assert!(h.string_to_sign.contains("\nx-oss-security-token:a+b/c==\n/b/k"));
        assert_eq!(
            h.headers_to_add[0],
            ("x-oss-security-token".into(), "a+b/c==".into())
        );
    }

    #[test]
    fn required_headers_and_rejections() {
        let e = Endpoint {
            base: "https://oss-cn-hangzhou.aliyuncs.com",
            style: AddressingStyle::VirtualHosted,
        };
        let h = [
            ("x-oss-meta-a", "1"),
            ("Cache-Control", "no-cache"),
            ("Content-Type", "image/png"),
        ];
        let u = presign_url(&CREDS, &req("k", &h, &[]), &e, at(0), 60).unwrap();
        assert_eq!(
            u.required_headers,
            vec![
                ("Content-Type".into(), "image/png".into()),
                ("x-oss-meta-a".into(), "1".into())
            ]
        );
        assert_eq!(u.expires_at_unix, 60);
        assert!(matches!(
            presign_url(&CREDS, &req("k", &[], &[("Signature", "x")]), &e, at(0), 60),
            Err(SignError::ReservedQueryParam(_))
        ));
        assert!(matches!(
            presign_url(&CREDS, &req("k", &[], &[]), &e, at(0), 0),
            Err(SignError::ExpiresOutOfRange { .. })
        ));
        let no_bucket = RequestToSign {
            bucket: None,
            ..req("", &[], &[])
        };
        assert_eq!(
            presign_url(&CREDS, &no_bucket, &e, at(0), 60),
            Err(SignError::EmptyBucket)
        );
        let key_no_bucket = RequestToSign {
            bucket: None,
            ..req("k", &[], &[])
        };
        assert_eq!(
            sign_header(&CREDS, &key_no_bucket, at(0)),
            Err(SignError::KeyWithoutBucket)
        );
    }
}
