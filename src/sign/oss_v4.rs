//! OSS signature V4 (`OSS4-HMAC-SHA256`, docs/signing.md §9): header form (§9.1) and
//! presigned-URL form (§9.2). Unlike V1 it signs the percent-encoded URI and
//! every query parameter.

use chrono::{DateTime, Utc};

use super::encode::{pct, pct_path};
use super::{
    Endpoint, Header, HeaderSignature, PresignedUrl, RequestToSign, SignError, SigningCredentials,
    check_headers, check_method, check_query, check_region, encode_query, expiry, format_http_date,
    format_iso8601_basic, hex_lower, hmac_sha256, is_token, sha256_hex,
};

/// The algorithm name in headers, query parameters and string-to-sign.
pub const ALGORITHM: &str = "OSS4-HMAC-SHA256";
/// Payload hash used when the body is not hashed (always, for ossvend).
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// `x-oss-expires` upper bound: 7 days.
pub const MAX_PRESIGN_EXPIRES_SECS: u64 = 604_800;

const RESERVED_HEADERS: &[&str] = &["authorization", "date", "x-oss-date", "x-oss-security-token"];
const RESERVED_URL_HEADERS: &[&str] = &["authorization", "x-oss-date", "x-oss-security-token"];
const RESERVED_URL_QUERY: &[&str] = &[
    "x-oss-signature-version",
    "x-oss-credential",
    "x-oss-date",
    "x-oss-expires",
    "x-oss-additional-headers",
    "x-oss-security-token",
    "x-oss-signature",
];

/// The region/product pair of a V4 scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct V4Scope<'a> {
    /// Region id without the `oss-` prefix, e.g. `cn-hangzhou`.
    pub region: &'a str,
    /// `oss`, or `oss-cloudbox` for CloudBox.
    pub product: &'a str,
}

impl<'a> V4Scope<'a> {
    /// The usual scope: product `oss` in `region`.
    pub fn oss(region: &'a str) -> Self {
        V4Scope {
            region,
            product: "oss",
        }
    }

    pub(crate) fn check(&self) -> Result<(), SignError> {
        check_region(self.region)?;
        let product_ok = !self.product.is_empty()
            && self
                .product
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !product_ok {
            return Err(SignError::InvalidProduct(self.product.to_string()));
        }
        Ok(())
    }

    /// `<yyyymmdd>/<region>/<product>/aliyun_v4_request`.
    pub fn credential_scope(&self, date: &str) -> String {
        format!("{date}/{}/{}/aliyun_v4_request", self.region, self.product)
    }
}

/// The V4 signing key: HMAC-SHA256 chain over `"aliyun_v4"+secret`, `date`
/// (`yyyymmdd`), region, product, `"aliyun_v4_request"`.
pub fn signing_key(access_key_secret: &str, date: &str, scope: &V4Scope<'_>) -> [u8; 32] {
    let k1 = hmac_sha256(
        format!("aliyun_v4{access_key_secret}").as_bytes(),
        date.as_bytes(),
    );
    let k2 = hmac_sha256(&k1, scope.region.as_bytes());
    let k3 = hmac_sha256(&k2, scope.product.as_bytes());
    hmac_sha256(&k3, b"aliyun_v4_request")
}

/// `OSS4-HMAC-SHA256\n<iso basic>\n<scope>\nhex(sha256(canonical_request))`.
pub fn string_to_sign(iso_basic_time: &str, credential_scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{iso_basic_time}\n{credential_scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

/// The V4 canonical request (docs/signing.md §9). `query` is raw and complete (minus
/// `x-oss-signature`); `signed_headers` are (lower-case name, value) pairs and
/// `additional_headers` the sorted lower-case list for the fifth line.
pub fn canonical_request(
    method: &str,
    bucket: Option<&str>,
    key: &str,
    query: &[(&str, &str)],
    signed_headers: &[(String, String)],
    additional_headers: &[String],
    hashed_payload: &str,
) -> String {
    let uri = match bucket {
        None => "/".to_string(),
        Some(b) => pct_path(&format!("/{b}/{key}")),
    };
    let mut q: Vec<(String, String)> = query.iter().map(|(k, v)| (pct(k), pct(v))).collect();
    q.sort();
    let mut h: Vec<&(String, String)> = signed_headers.iter().collect();
    h.sort();
    // One pre-sized buffer: the query carries the 1 KB security token.
    let len = method.len()
        + uri.len()
        + q.iter().map(|(k, v)| k.len() + v.len() + 2).sum::<usize>()
        + h.iter().map(|(n, v)| n.len() + v.len() + 2).sum::<usize>()
        + additional_headers.iter().map(|a| a.len() + 1).sum::<usize>()
        + hashed_payload.len()
        + 8;
    let mut out = String::with_capacity(len);
    out.push_str(method);
    out.push('\n');
    out.push_str(&uri);
    out.push('\n');
    for (i, (k, v)) in q.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        if !v.is_empty() {
            out.push('=');
            out.push_str(v);
        }
    }
    out.push('\n');
    for (n, v) in h {
        out.push_str(n);
        out.push(':');
        out.push_str(v);
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&additional_headers.join(";"));
    out.push('\n');
    out.push_str(hashed_payload);
    out
}

/// Always signed, so never listed as additional.
fn is_default_signed(lower: &str) -> bool {
    lower.starts_with("x-oss-") || lower == "content-type" || lower == "content-md5"
}

/// Lower-cases, drops always-signed names, de-duplicates and sorts the requested
/// additional headers; each must be present in the request.
fn normalize_additional(requested: &[&str], headers: &[Header<'_>]) -> Result<Vec<String>, SignError> {
    let mut out: Vec<String> = Vec::new();
    for name in requested {
        if !is_token(name) {
            return Err(SignError::InvalidHeaderName(name.to_string()));
        }
        let lower = name.to_ascii_lowercase();
        if is_default_signed(&lower) || out.contains(&lower) {
            continue;
        }
        if !headers.iter().any(|h| h.lower == lower) {
            return Err(SignError::MissingAdditionalHeader(lower));
        }
        out.push(lower);
    }
    out.sort();
    Ok(out)
}

/// The caller's headers that V4 signs: x-oss-*, content-type, content-md5, additional.
fn caller_signed<'h, 'a>(headers: &'h [Header<'a>], additional: &[String]) -> Vec<&'h Header<'a>> {
    headers
        .iter()
        .filter(|h| is_default_signed(&h.lower) || additional.contains(&h.lower))
        .collect()
}

fn payload_hash(headers: &[Header<'_>]) -> String {
    headers
        .iter()
        .find(|h| h.lower == "x-oss-content-sha256")
        .map_or(UNSIGNED_PAYLOAD, |h| h.value)
        .to_string()
}

/// Signs a request with the `Authorization: OSS4-HMAC-SHA256 …` header at `at`.
///
/// Adds (and signs) `x-oss-date`, `x-oss-content-sha256: UNSIGNED-PAYLOAD`
/// (unless the request carries its own) and, with STS, `x-oss-security-token`;
/// also adds an unsigned `Date`. `additional_headers` names extra headers to bind
/// (e.g. `host`); x-oss-*/content-type/content-md5 are signed anyway.
pub fn sign_header(
    creds: &SigningCredentials<'_>,
    req: &RequestToSign<'_>,
    scope: &V4Scope<'_>,
    additional_headers: &[&str],
    at: DateTime<Utc>,
) -> Result<HeaderSignature, SignError> {
    creds.check()?;
    check_method(req.method)?;
    req.check_target()?;
    scope.check()?;
    super::check_time(at)?;
    let headers = check_headers(req.headers, RESERVED_HEADERS)?;
    check_query(req.query, &[])?;
    let additional = normalize_additional(additional_headers, &headers)?;

    let iso = format_iso8601_basic(at);
    let credential_scope = scope.credential_scope(&iso[..8]);
    let hashed_payload = payload_hash(&headers);

    // Signer-added headers, in the order they are reported.
    let mut added: Vec<(String, String)> = vec![("x-oss-date".into(), iso.clone())];
    if !headers.iter().any(|h| h.lower == "x-oss-content-sha256") {
        added.push(("x-oss-content-sha256".into(), UNSIGNED_PAYLOAD.into()));
    }
    if let Some(token) = creds.security_token {
        added.push(("x-oss-security-token".into(), token.into()));
    }
    let mut signed: Vec<(String, String)> = caller_signed(&headers, &additional)
        .iter()
        .map(|h| (h.lower.clone(), h.value.to_string()))
        .collect();
    signed.extend(added.iter().cloned());

    let canonical_request = canonical_request(
        req.method,
        req.bucket,
        req.key,
        req.query,
        &signed,
        &additional,
        &hashed_payload,
    );
    let string_to_sign = string_to_sign(&iso, &credential_scope, &canonical_request);
    let key = signing_key(creds.access_key_secret, &iso[..8], scope);
    let signature = hex_lower(&hmac_sha256(&key, string_to_sign.as_bytes()));

    // alibabacloud-oss-v2's layout; oss2's ", "-separated one is accepted too.
    let mut authorization = format!(
        "{ALGORITHM} Credential={}/{credential_scope}",
        creds.access_key_id
    );
    if !additional.is_empty() {
        authorization.push_str(&format!(",AdditionalHeaders={}", additional.join(";")));
    }
    authorization.push_str(&format!(",Signature={signature}"));

    let mut headers_to_add = added;
    headers_to_add.insert(1, ("Date".into(), format_http_date(at)));
    headers_to_add.push(("Authorization".into(), authorization.clone()));
    Ok(HeaderSignature {
        headers_to_add,
        canonical_request: Some(canonical_request),
        string_to_sign,
        signature,
        authorization,
    })
}

/// Builds a V4 presigned URL signed at `at`, valid for `expires_in_secs`
/// (1 ..= 604800; `x-oss-expires` is relative to `x-oss-date`).
///
/// With STS the token travels as `x-oss-security-token` (signed). The request's
/// x-oss-*, content-type, content-md5 and additional headers are signed and
/// returned in [`PresignedUrl::required_headers`] (`host` excepted: the URL
/// implies it, but its value must still equal the URL's host).
pub fn presign_url(
    creds: &SigningCredentials<'_>,
    req: &RequestToSign<'_>,
    scope: &V4Scope<'_>,
    additional_headers: &[&str],
    endpoint: &Endpoint<'_>,
    at: DateTime<Utc>,
    expires_in_secs: u64,
) -> Result<PresignedUrl, SignError> {
    creds.check()?;
    check_method(req.method)?;
    let bucket = req.required_bucket()?;
    let location = endpoint.locate(bucket, req.key)?;
    scope.check()?;
    let headers = check_headers(req.headers, RESERVED_URL_HEADERS)?;
    check_query(req.query, RESERVED_URL_QUERY)?;
    let additional = normalize_additional(additional_headers, &headers)?;
    super::check_expires(expires_in_secs, 1, MAX_PRESIGN_EXPIRES_SECS)?;
    let expires_at = expiry(at, expires_in_secs)?;

    let iso = format_iso8601_basic(at);
    let credential_scope = scope.credential_scope(&iso[..8]);
    // Parameter order as alibabacloud-oss-v2 writes it; the signature sorts them.
    let mut query: Vec<(String, String)> = req
        .query
        .iter()
        .map(|&(k, v)| (k.to_string(), v.to_string()))
        .collect();
    query.push(("x-oss-signature-version".into(), ALGORITHM.into()));
    query.push(("x-oss-date".into(), iso.clone()));
    query.push(("x-oss-expires".into(), expires_in_secs.to_string()));
    query.push((
        "x-oss-credential".into(),
        format!("{}/{credential_scope}", creds.access_key_id),
    ));
    if let Some(token) = creds.security_token {
        query.push(("x-oss-security-token".into(), token.into()));
    }
    if !additional.is_empty() {
        query.push(("x-oss-additional-headers".into(), additional.join(";")));
    }

    let signed_headers = caller_signed(&headers, &additional);
    let signed: Vec<(String, String)> = signed_headers
        .iter()
        .map(|h| (h.lower.clone(), h.value.to_string()))
        .collect();
    let query_refs: Vec<(&str, &str)> = query.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let canonical_request = canonical_request(
        req.method,
        Some(bucket),
        req.key,
        &query_refs,
        &signed,
        &additional,
        &payload_hash(&headers),
    );
    let string_to_sign = string_to_sign(&iso, &credential_scope, &canonical_request);
    let key = signing_key(creds.access_key_secret, &iso[..8], scope);
    let signature = hex_lower(&hmac_sha256(&key, string_to_sign.as_bytes()));
    query.push(("x-oss-signature".into(), signature.clone()));
    let url = format!(
        "{}{}?{}",
        location.origin,
        location.path,
        encode_query(&query, false)
    );

    let mut required: Vec<&&Header<'_>> = signed_headers.iter().filter(|h| h.lower != "host").collect();
    required.sort_by(|a, b| a.lower.cmp(&b.lower));
    Ok(PresignedUrl {
        method: req.method.to_string(),
        url,
        query,
        required_headers: required
            .iter()
            .map(|h| (h.name.to_string(), h.value.to_string()))
            .collect(),
        canonical_request: Some(canonical_request),
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
    const HZ: V4Scope<'static> = V4Scope {
        region: "cn-hangzhou",
        product: "oss",
    };
    const EP: Endpoint<'static> = Endpoint {
        base: "https://oss-cn-hangzhou.aliyuncs.com",
        style: AddressingStyle::VirtualHosted,
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
    fn expiry_bounds() {
        for bad in [0, MAX_PRESIGN_EXPIRES_SECS + 1] {
            assert_eq!(
                presign_url(&CREDS, &req("k", &[]), &HZ, &[], &EP, at(0), bad),
                Err(SignError::ExpiresOutOfRange {
                    requested: bad,
                    min: 1,
                    max: MAX_PRESIGN_EXPIRES_SECS
                })
            );
        }
        let ok = presign_url(
            &CREDS,
            &req("k", &[]),
            &HZ,
            &[],
            &EP,
            at(0),
            MAX_PRESIGN_EXPIRES_SECS,
        )
        .unwrap();
        assert_eq!(ok.expires_at_unix, 604_800);
    }

    #[test]
    fn region_with_oss_prefix_refused() {
        let s = V4Scope::oss("oss-cn-hangzhou");
        assert!(matches!(
            sign_header(&CREDS, &req("k", &[]), &s, &[], at(0)),
            Err(SignError::InvalidRegion(_))
        ));
    }

    #[test]
    fn mixed_case_headers_and_additional() {
        let h = [
            ("Range", "bytes=0-1"),
            ("CONTENT-TYPE", "text/plain"),
            ("X-Oss-Meta-A", "1"),
        ];
        let s = sign_header(
            &CREDS,
            &req("k", &h),
            &HZ,
            &["RANGE", "Content-Type", "range"],
            at(0),
        )
        .unwrap();
        let cr = s.canonical_request.unwrap();
        assert!(cr.starts_with(
            "PUT\n/b/k\n\ncontent-type:text/plain\nrange:bytes=0-1\nx-oss-content-sha256:UNSIGNED-PAYLOAD\n"
        ));
        assert!(cr.ends_with("x-oss-meta-a:1\n\nrange\nUNSIGNED-PAYLOAD"));
        assert!(s.authorization.contains(",AdditionalHeaders=range,Signature="));
        assert_eq!(
            sign_header(&CREDS, &req("k", &[]), &HZ, &["host"], at(0)),
            Err(SignError::MissingAdditionalHeader("host".into()))
        );
    }

    #[test]
    fn empty_and_unicode_keys() {
        let u = presign_url(&CREDS, &req("", &[]), &HZ, &[], &EP, at(0), 60).unwrap();
        assert!(u.canonical_request.as_deref().unwrap().starts_with("PUT\n/b/\n"));
        assert!(
            u.url
                .starts_with("https://b.oss-cn-hangzhou.aliyuncs.com/?x-oss-signature-version=")
        );
        let u = presign_url(&CREDS, &req("ä/b c", &[]), &HZ, &[], &EP, at(0), 60).unwrap();
        assert!(
            u.canonical_request
                .as_deref()
                .unwrap()
                .starts_with("PUT\n/b/%C3%A4/b%20c\n")
        );
        assert!(
            u.url
                .starts_with("https://b.oss-cn-hangzhou.aliyuncs.com/%C3%A4/b%20c?")
        );
    }

    #[test]
    fn sts_token_with_reserved_chars() {
        let creds = SigningCredentials {
            security_token: Some("t+k/n=="),
            ..CREDS
        };
        let u = presign_url(&creds, &req("k", &[]), &HZ, &[], &EP, at(0), 60).unwrap();
        assert!(
            u.canonical_request
                .as_deref()
                .unwrap()
                .contains("&x-oss-security-token=t%2Bk%2Fn%3D%3D&")
        );
        assert!(
            u.url
                .contains("&x-oss-security-token=t%2Bk%2Fn%3D%3D&x-oss-signature=")
        );
        let h = sign_header(&creds, &req("k", &[]), &HZ, &[], at(0)).unwrap();
        assert!(
            h.canonical_request
                .unwrap()
                .contains("\nx-oss-security-token:t+k/n==\n")
        );
    }

    #[test]
    fn path_style_signs_the_same() {
        let path = Endpoint {
            base: "http://127.0.0.1:9000",
            style: AddressingStyle::Path,
        };
        let v = presign_url(&CREDS, &req("a/b", &[]), &HZ, &[], &EP, at(0), 60).unwrap();
        let p = presign_url(&CREDS, &req("a/b", &[]), &HZ, &[], &path, at(0), 60).unwrap();
        assert_eq!(v.signature, p.signature);
        assert!(p.url.starts_with("http://127.0.0.1:9000/b/a/b?"));
    }

    #[test]
    fn additional_header_host_is_signed_not_required() {
        let h = [
            ("Host", "b.oss-cn-hangzhou.aliyuncs.com"),
            ("Content-Type", "a/b"),
        ];
        let u = presign_url(&CREDS, &req("k", &h), &HZ, &["host"], &EP, at(0), 60).unwrap();
        assert!(u.url.contains("&x-oss-additional-headers=host&"));
        assert_eq!(u.required_headers, vec![("Content-Type".into(), "a/b".into())]);
        assert!(
            u.canonical_request
                .unwrap()
                .ends_with("\nhost:b.oss-cn-hangzhou.aliyuncs.com\n\nhost\nUNSIGNED-PAYLOAD")
        );
    }

    #[test]
    fn reserved_query_refused_case_insensitively() {
        let r = RequestToSign {
            query: &[("X-OSS-Signature", "x")],
            ..req("k", &[])
        };
        assert!(matches!(
            presign_url(&CREDS, &r, &HZ, &[], &EP, at(0), 60),
            Err(SignError::ReservedQueryParam(_))
        ));
    }
}
