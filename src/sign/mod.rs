//! Pure signing functions. Every input is explicit, including the time, so each
//! signer can be checked byte-for-byte against the vectors in `tests/vectors/`
//! (the repository's copy of the SDK-made vectors; docs/signing.md §14).
//! Nothing here reads a clock, the environment, the config or the network, and
//! nothing panics on caller input: invalid input is a [`SignError`].
//!
//! Every result exposes its intermediate strings (canonical request,
//! string-to-sign) next to the final values, for `ossvend sign --explain`.

pub mod encode;
pub mod oss_v1;
pub mod oss_v4;
pub mod post;
pub mod s3;
pub mod sts_rpc;

use std::fmt;

use base64::Engine as _;
use chrono::{DateTime, Datelike as _, Utc};
use hmac::{Hmac, Mac};

/// HMAC-SHA1 of `msg` under `key`.
pub fn hmac_sha1(key: &[u8], msg: &[u8]) -> [u8; 20] {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

/// HMAC-SHA256 of `msg` under `key`.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

/// Lower-case hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex_lower(&sha2::Sha256::digest(data))
}

/// Lower-case hex. `hex::encode` collects a `char` iterator; this writes bytes.
pub fn hex_lower(bytes: &[u8]) -> String {
    let mut buf = vec![0u8; bytes.len() * 2];
    // Infallible: the buffer is exactly twice the input and hex digits are ASCII.
    let _ = hex::encode_to_slice(bytes, &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

/// Standard base64 with `=` padding.
pub fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// The key material a request is signed with. With STS credentials
/// `security_token` is `Some`; each scheme places it differently (docs/signing.md §13, item 6).
#[derive(Clone, Copy)]
pub struct SigningCredentials<'a> {
    pub access_key_id: &'a str,
    pub access_key_secret: &'a str,
    pub security_token: Option<&'a str>,
}

impl fmt::Debug for SigningCredentials<'_> {
    // The secret and the token never reach logs; the id only as its prefix.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::credentials::{KeyId, Redact};
        f.debug_struct("SigningCredentials")
            .field("access_key_id", &KeyId(self.access_key_id))
            .field("access_key_secret", &Redact)
            .field("security_token", &Redact::option(&self.security_token))
            .finish()
    }
}

impl SigningCredentials<'_> {
    /// The id and the token end up in headers, URLs and form fields, so they must
    /// be visible ASCII; the secret only has to be non-empty.
    pub(crate) fn check(&self) -> Result<(), SignError> {
        if !is_visible_ascii(self.access_key_id) {
            return Err(SignError::InvalidAccessKeyId);
        }
        if self.access_key_secret.is_empty() {
            return Err(SignError::EmptyAccessKeySecret);
        }
        if self.security_token.is_some_and(|t| !is_visible_ascii(t)) {
            return Err(SignError::InvalidSecurityToken);
        }
        Ok(())
    }
}

fn is_visible_ascii(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic())
}

/// Why a signer refused its input. Messages name fields, never secret values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignError {
    /// AccessKeyId empty or not visible ASCII.
    InvalidAccessKeyId,
    EmptyAccessKeySecret,
    /// Security token present but empty or not visible ASCII.
    InvalidSecurityToken,
    /// Method must be a non-empty upper-case word (`PUT`, `GET`, …).
    InvalidMethod(String),
    /// A bucket is required here (URLs are built on it) or it was given empty.
    EmptyBucket,
    /// Bucket names are `[a-z0-9-]`, not starting or ending with `-`.
    InvalidBucket(String),
    /// An object key without a bucket cannot be addressed.
    KeyWithoutBucket,
    /// A key with a `.` or `..` path segment: HTTP clients remove such segments
    /// from a URL before sending it, so the request would name another object.
    DotSegmentInKey,
    /// The V1 string-to-sign would be ambiguous (raw `?`/`&` in the resource); use V4.
    AmbiguousV1Resource(String),
    InvalidHeaderName(String),
    /// Control characters or leading/trailing whitespace in the value of this header.
    InvalidHeaderValue(String),
    /// Same header twice (names compare case-insensitively).
    DuplicateHeader(String),
    /// The signer sets this header itself.
    ReservedHeader(String),
    /// An additional (V4) header was requested but is not in the request.
    MissingAdditionalHeader(String),
    /// Query parameter names must be non-empty.
    InvalidQueryName,
    DuplicateQueryParam(String),
    /// The signer sets this query parameter itself.
    ReservedQueryParam(String),
    /// Expiry outside what the scheme allows (inclusive bounds, seconds).
    ExpiresOutOfRange {
        requested: u64,
        min: u64,
        max: u64,
    },
    /// Times must lie within years 1970..=9999 (and expiry must not overflow).
    TimeOutOfRange,
    /// Region id like `cn-hangzhou` (without the `oss-` prefix).
    InvalidRegion(String),
    InvalidProduct(String),
    /// Base must be `http(s)://host[:port]` with nothing after the authority.
    InvalidEndpoint(String),
    /// The policy text lacks something its signature depends on.
    PolicyMissing(String),
    InvalidFormFieldName(String),
    /// Same form field twice (names compare case-insensitively).
    DuplicateFormField(String),
    /// The signer sets this form field itself.
    ReservedFormField(String),
}

impl fmt::Display for SignError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use SignError::*;
        match self {
            InvalidAccessKeyId => f.write_str("access key id is empty or not visible ASCII"),
            EmptyAccessKeySecret => f.write_str("access key secret is empty"),
            InvalidSecurityToken => f.write_str("security token is empty or not visible ASCII"),
            InvalidMethod(m) => write!(f, "invalid HTTP method {m:?}"),
            EmptyBucket => f.write_str("a non-empty bucket is required"),
            InvalidBucket(b) => write!(f, "invalid bucket name {b:?}"),
            KeyWithoutBucket => f.write_str("an object key needs a bucket"),
            DotSegmentInKey => f.write_str(
                "an object key with a \".\" or \"..\" segment cannot be sent in a URL (clients remove such segments)",
            ),
            AmbiguousV1Resource(why) => write!(f, "V1 signature would be ambiguous: {why}"),
            InvalidHeaderName(n) => write!(f, "invalid header name {n:?}"),
            InvalidHeaderValue(n) => write!(
                f,
                "header {n:?} has control characters or leading/trailing whitespace"
            ),
            DuplicateHeader(n) => write!(f, "header {n:?} given more than once"),
            ReservedHeader(n) => write!(f, "header {n:?} is set by the signer"),
            MissingAdditionalHeader(n) => {
                write!(f, "additional header {n:?} is not present in the request")
            }
            InvalidQueryName => f.write_str("empty query parameter name"),
            DuplicateQueryParam(n) => write!(f, "query parameter {n:?} given more than once"),
            ReservedQueryParam(n) => write!(f, "query parameter {n:?} is set by the signer"),
            ExpiresOutOfRange { requested, min, max } => {
                write!(f, "expiry {requested}s outside {min}..={max}s")
            }
            TimeOutOfRange => f.write_str("time outside years 1970..=9999"),
            InvalidRegion(r) => write!(f, "invalid region id {r:?} (use e.g. cn-hangzhou)"),
            InvalidProduct(p) => write!(f, "invalid product {p:?}"),
            InvalidEndpoint(e) => write!(f, "invalid endpoint base {e:?}"),
            PolicyMissing(what) => write!(f, "policy JSON lacks {what}"),
            InvalidFormFieldName(n) => write!(f, "invalid form field name {n:?}"),
            DuplicateFormField(n) => write!(f, "form field {n:?} given more than once"),
            ReservedFormField(n) => write!(f, "form field {n:?} is set by the signer"),
        }
    }
}

impl std::error::Error for SignError {}

/// What to sign: one HTTP request to OSS (or its S3-compatible endpoint).
#[derive(Debug, Clone, Copy)]
pub struct RequestToSign<'a> {
    /// Upper-case HTTP method.
    pub method: &'a str,
    /// `None` only for service-level requests (header signing).
    pub bucket: Option<&'a str>,
    /// Object key, raw UTF-8; `""` addresses the bucket itself.
    pub key: &'a str,
    /// Headers the request carries (names case-insensitive). Which of them are
    /// signed depends on the scheme; signed ones must be sent byte-for-byte.
    pub headers: &'a [(&'a str, &'a str)],
    /// Query parameters, raw (not encoded); `""` value means a bare `name`.
    pub query: &'a [(&'a str, &'a str)],
}

/// How the bucket appears in a URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressingStyle {
    /// `https://<bucket>.<host>/<key>` — what OSS and its S3 endpoint expect.
    VirtualHosted,
    /// `http://<host>/<bucket>/<key>` — for local fakes.
    Path,
}

/// Where URLs point: `base` is `scheme://host[:port]` without the bucket, e.g.
/// `https://oss-cn-hangzhou.aliyuncs.com` or `http://127.0.0.1:9000`.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint<'a> {
    pub base: &'a str,
    pub style: AddressingStyle,
}

/// Where one object lives, as pieces of its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Location {
    /// `scheme://authority`
    pub origin: String,
    pub scheme: String,
    /// `host[:port]` exactly as in the URL (lower-cased).
    pub authority: String,
    /// Percent-encoded absolute path (`/` kept).
    pub path: String,
}

impl Location {
    /// The `host` header value as SigV4 signers compute it: the URL authority
    /// minus a default port (botocore does the same, and clients omit it).
    pub fn canonical_host(&self) -> &str {
        let default = if self.scheme == "https" { ":443" } else { ":80" };
        self.authority.strip_suffix(default).unwrap_or(&self.authority)
    }
}

impl Endpoint<'_> {
    pub(crate) fn locate(&self, bucket: &str, key: &str) -> Result<Location, SignError> {
        check_bucket(bucket)?;
        // Found by the round-trip property test: `a/../b` was signed as is, and
        // every URL parser then sent `b`.
        if key.split('/').any(|segment| segment == "." || segment == "..") {
            return Err(SignError::DotSegmentInKey);
        }
        let bad = || SignError::InvalidEndpoint(self.base.to_string());
        let (scheme, rest) = self.base.split_once("://").ok_or_else(bad)?;
        if scheme != "http" && scheme != "https" {
            return Err(bad());
        }
        let host = rest.strip_suffix('/').unwrap_or(rest).to_ascii_lowercase();
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"/?#@\\".contains(&b));
        if !host_ok {
            return Err(bad());
        }
        let (authority, path) = match self.style {
            AddressingStyle::VirtualHosted => {
                (format!("{bucket}.{host}"), format!("/{}", encode::pct_path(key)))
            }
            AddressingStyle::Path => (host, format!("/{bucket}/{}", encode::pct_path(key))),
        };
        Ok(Location {
            origin: format!("{scheme}://{authority}"),
            scheme: scheme.to_string(),
            authority,
            path,
        })
    }
}

/// A presigned URL and everything that went into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresignedUrl {
    /// The method the URL was signed for; any other method fails.
    pub method: String,
    /// The complete URL; the key keeps its `/`.
    pub url: String,
    /// The URL's query parameters, decoded, in URL order (signature included).
    pub query: Vec<(String, String)>,
    /// Headers inside the signature that the client must send exactly as given
    /// here (names as the caller spelled them, sorted by lower-case name).
    /// `host` is implied by the URL and not listed.
    pub required_headers: Vec<(String, String)>,
    /// `None` for OSS V1, which has no canonical request.
    pub canonical_request: Option<String>,
    pub string_to_sign: String,
    /// base64 for OSS V1, lower-case hex for V4 and SigV4 (decoded form).
    pub signature: String,
    /// Unix seconds after which the URL stops working (sooner if an STS token expires).
    pub expires_at_unix: i64,
}

/// A header-signed request: what to add to the request and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderSignature {
    /// Headers the signer adds (Date, x-oss-date, token, Authorization …); send
    /// them along with the request's own headers.
    pub headers_to_add: Vec<(String, String)>,
    /// `None` for OSS V1, which has no canonical request.
    pub canonical_request: Option<String>,
    pub string_to_sign: String,
    /// base64 for OSS V1, lower-case hex for V4.
    pub signature: String,
    /// Value of the `Authorization` header (also in `headers_to_add`).
    pub authorization: String,
}

/// A signed browser form upload (PostObject, or S3 POST policy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostForm {
    /// Every non-file form field, in sending order: the caller's fields first,
    /// then the signer's. The `file` part goes after all of these.
    pub fields: Vec<(String, String)>,
    /// base64 of the exact policy JSON bytes (the `policy` field).
    pub policy_base64: String,
    /// What was MACed; for every POST scheme this is `policy_base64` itself.
    pub string_to_sign: String,
    /// base64 for PostObject V1, lower-case hex for V4 and S3.
    pub signature: String,
}

/// `YYYYMMDDThhmmssZ` (UTC), as used by V4 and SigV4.
pub fn format_iso8601_basic(t: DateTime<Utc>) -> String {
    format_utc(t, false)
}

/// `YYYY-MM-DDThh:mm:ssZ` (UTC): STS's `Expiration`, the exact form strict clients parse.
pub fn format_iso8601_extended(t: DateTime<Utc>) -> String {
    format_utc(t, true)
}

/// Both ISO 8601 layouts, written digit by digit: they are formatted several
/// times per request, and chrono's `format` parses its pattern on every call.
/// Years outside 0..=9999 and leap seconds (which chrono prints as :60) take
/// chrono's own spelling, so the output is always chrono's.
fn format_utc(t: DateTime<Utc>, extended: bool) -> String {
    use chrono::Timelike as _;
    // Convert once: each accessor on a DateTime<Utc> converts again.
    let n = t.naive_utc();
    if !(0..=9999).contains(&n.year()) || n.nanosecond() >= 1_000_000_000 {
        let pattern = if extended {
            "%Y-%m-%dT%H:%M:%SZ"
        } else {
            "%Y%m%dT%H%M%SZ"
        };
        return t.format(pattern).to_string();
    }
    let mut b = *b"0000-00-00T00:00:00Z";
    for (at, width, v) in [
        (0, 4, n.year() as u32),
        (5, 2, n.month()),
        (8, 2, n.day()),
        (11, 2, n.hour()),
        (14, 2, n.minute()),
        (17, 2, n.second()),
    ] {
        let mut v = v;
        for d in b[at..at + width].iter_mut().rev() {
            *d = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }
    let bytes = if extended {
        b.to_vec()
    } else {
        b.into_iter().filter(|c| !matches!(c, b'-' | b':')).collect()
    };
    // Only ASCII digits and separators were written.
    String::from_utf8(bytes).unwrap_or_default()
}

/// RFC 1123 GMT, e.g. `Tue, 14 Nov 2023 22:13:21 GMT`, as in HTTP `Date`.
pub fn format_http_date(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// Years outside four digits would change the width of formatted dates.
pub(crate) fn check_time(t: DateTime<Utc>) -> Result<(), SignError> {
    if (1970..=9999).contains(&t.year()) {
        Ok(())
    } else {
        Err(SignError::TimeOutOfRange)
    }
}

/// `now + expires_in`, in Unix seconds, or an error if it leaves the supported range.
pub(crate) fn expiry(now: DateTime<Utc>, expires_in_secs: u64) -> Result<i64, SignError> {
    check_time(now)?;
    let at = i64::try_from(expires_in_secs)
        .ok()
        .and_then(|s| now.timestamp().checked_add(s))
        .ok_or(SignError::TimeOutOfRange)?;
    let end = DateTime::from_timestamp(at, 0).ok_or(SignError::TimeOutOfRange)?;
    check_time(end)?;
    Ok(at)
}

pub(crate) fn check_expires(requested: u64, min: u64, max: u64) -> Result<(), SignError> {
    if (min..=max).contains(&requested) {
        Ok(())
    } else {
        Err(SignError::ExpiresOutOfRange { requested, min, max })
    }
}

pub(crate) fn check_method(method: &str) -> Result<(), SignError> {
    if !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(SignError::InvalidMethod(method.to_string()))
    }
}

/// Bucket names end up unencoded in host names and resources.
pub(crate) fn check_bucket(bucket: &str) -> Result<(), SignError> {
    if bucket.is_empty() {
        return Err(SignError::EmptyBucket);
    }
    let chars_ok = bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !chars_ok || bucket.starts_with('-') || bucket.ends_with('-') {
        return Err(SignError::InvalidBucket(bucket.to_string()));
    }
    Ok(())
}

impl RequestToSign<'_> {
    /// Bucket is optional only for service-level requests; a key needs a bucket.
    pub(crate) fn check_target(&self) -> Result<(), SignError> {
        match self.bucket {
            Some(b) => check_bucket(b),
            None if self.key.is_empty() => Ok(()),
            None => Err(SignError::KeyWithoutBucket),
        }
    }

    pub(crate) fn required_bucket(&self) -> Result<&str, SignError> {
        let bucket = self.bucket.ok_or(SignError::EmptyBucket)?;
        check_bucket(bucket)?;
        Ok(bucket)
    }
}

/// Region ids (scopes) never carry the hostname's `oss-` prefix (docs/signing.md §13, item 8).
pub(crate) fn check_region(region: &str) -> Result<(), SignError> {
    let ok = !region.is_empty()
        && !region.starts_with("oss-")
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(SignError::InvalidRegion(region.to_string()))
    }
}

/// RFC 9110 `token`: what a header or form field name may contain.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A validated request header.
#[derive(Debug, Clone)]
pub(crate) struct Header<'a> {
    /// As the caller spelled it.
    pub name: &'a str,
    pub lower: String,
    pub value: &'a str,
}

/// Checks names, values, duplicates and signer-owned names (`reserved`, lower-case).
/// A CR/LF in a value could forge extra lines of a string-to-sign; outer
/// whitespace is trimmed by some servers/SDKs and not others.
pub(crate) fn check_headers<'a>(
    headers: &[(&'a str, &'a str)],
    reserved: &[&str],
) -> Result<Vec<Header<'a>>, SignError> {
    let mut out: Vec<Header<'a>> = Vec::with_capacity(headers.len());
    for &(name, value) in headers {
        if !is_token(name) {
            return Err(SignError::InvalidHeaderName(name.to_string()));
        }
        let lower = name.to_ascii_lowercase();
        let value_ok =
            value.chars().all(|c| c == '\t' || !c.is_control()) && value.trim_matches([' ', '\t']) == value;
        if !value_ok {
            return Err(SignError::InvalidHeaderValue(name.to_string()));
        }
        if reserved.contains(&lower.as_str()) {
            return Err(SignError::ReservedHeader(name.to_string()));
        }
        if out.iter().any(|h| h.lower == lower) {
            return Err(SignError::DuplicateHeader(name.to_string()));
        }
        out.push(Header { name, lower, value });
    }
    Ok(out)
}

/// Checks names, exact duplicates and signer-owned names (`reserved`, compared
/// case-insensitively so `x-oss-Signature` cannot sneak past either).
pub(crate) fn check_query(query: &[(&str, &str)], reserved: &[&str]) -> Result<(), SignError> {
    for (i, &(name, _)) in query.iter().enumerate() {
        if name.is_empty() {
            return Err(SignError::InvalidQueryName);
        }
        if reserved.iter().any(|r| r.eq_ignore_ascii_case(name)) {
            return Err(SignError::ReservedQueryParam(name.to_string()));
        }
        if query[..i].iter().any(|&(n, _)| n == name) {
            return Err(SignError::DuplicateQueryParam(name.to_string()));
        }
    }
    Ok(())
}

/// Wire form of a query: `pct(name)=pct(value)`; an empty value is written as a
/// bare `pct(name)` unless `empty_with_eq` (SigV4 style `name=`).
pub(crate) fn encode_query(pairs: &[(String, String)], empty_with_eq: bool) -> String {
    let len: usize = pairs.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    let mut out = String::with_capacity(len + len / 4);
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode::encode_into(&mut out, k, false);
        if !v.is_empty() || empty_with_eq {
            out.push('=');
            encode::encode_into(&mut out, v, false);
        }
    }
    out
}

/// Checks caller form fields: token names, no duplicates, none the signer owns.
pub(crate) fn check_form_fields(fields: &[(&str, &str)], reserved: &[&str]) -> Result<(), SignError> {
    for (i, &(name, _)) in fields.iter().enumerate() {
        if !is_token(name) {
            return Err(SignError::InvalidFormFieldName(name.to_string()));
        }
        // `file` must be last and is not ours to carry.
        if name.eq_ignore_ascii_case("file") || reserved.iter().any(|r| r.eq_ignore_ascii_case(name)) {
            return Err(SignError::ReservedFormField(name.to_string()));
        }
        if fields[..i].iter().any(|&(n, _)| n.eq_ignore_ascii_case(name)) {
            return Err(SignError::DuplicateFormField(name.to_string()));
        }
    }
    Ok(())
}

/// Cheap consistency check on policy text we cannot parse here: `"value"` must
/// occur as a JSON string (`/` may be escaped as `\/`). It catches a policy
/// built for another date, region or key — not a malformed policy.
pub(crate) fn check_policy_has(policy_json: &str, what: &str, value: &str) -> Result<(), SignError> {
    // The value (a 1 KB token, for one) is searched as is, then its quotes are
    // checked in place: no quoted copy of it is built for the common case.
    let text = policy_json.as_bytes();
    // Candidates come from a short prefix (building a searcher for the whole
    // value costs more than the search); each is then compared in full.
    let quoted = |value: &[u8]| {
        memchr::memmem::find_iter(text, &value[..value.len().min(16)]).any(|at| {
            at > 0
                && text[at - 1] == b'"'
                && text[at..].starts_with(value)
                && text.get(at + value.len()) == Some(&b'"')
        })
    };
    if quoted(value.as_bytes()) || (value.contains('/') && quoted(value.replace('/', "\\/").as_bytes())) {
        return Ok(());
    }
    Err(SignError::PolicyMissing(what.to_string()))
}

/// Both top-level members are required by OSS (docs/signing.md §10.1).
pub(crate) fn check_policy_shape(policy_json: &str) -> Result<(), SignError> {
    for member in ["expiration", "conditions"] {
        if !policy_json.contains(&format!("\"{member}\"")) {
            return Err(SignError::PolicyMissing(format!("\"{member}\"")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_layouts_match_chrono() {
        use chrono::TimeZone as _;
        let check = |t: DateTime<Utc>, what: &str| {
            assert_eq!(
                format_iso8601_basic(t),
                t.format("%Y%m%dT%H%M%SZ").to_string(),
                "{what}"
            );
            assert_eq!(
                format_iso8601_extended(t),
                t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                "{what}"
            );
        };
        let mut secs: i64 = -62_167_219_200; // 0000-01-01T00:00:00Z
        while secs < 253_402_300_800 + 86_400 * 400 {
            check(Utc.timestamp_opt(secs, 999_999_999).unwrap(), &secs.to_string());
            secs += 7_777_777; // about 90 days, with every field moving
        }
        check(
            Utc.timestamp_opt(1_483_228_799, 1_500_000_000).unwrap(),
            "leap second",
        );
        check(Utc.timestamp_opt(-62_167_219_201, 0).unwrap(), "before year 0");
        assert_eq!(hex_lower(&[0x00, 0x9f, 0xff]), "009fff");
        assert_eq!(hex_lower(&[0xab; 32]), hex::encode([0xab; 32]));
    }

    #[test]
    fn credentials_debug_redacts() {
        let c = SigningCredentials {
            access_key_id: "AK",
            access_key_secret: "topsecret",
            security_token: Some("tok+/="),
        };
        let s = format!("{c:?}");
        assert!(s.contains("AK") && !s.contains("topsecret") && !s.contains("tok+/="));
    }

    #[test]
    fn endpoint_styles() {
        let v = Endpoint {
            base: "https://oss-cn-hangzhou.aliyuncs.com",
            style: AddressingStyle::VirtualHosted,
        };
        for key in ["..", ".", "a/../b", "./a", "a/.", "a//./b"] {
            assert_eq!(
                v.locate("b", key).unwrap_err(),
                SignError::DotSegmentInKey,
                "{key}"
            );
        }
        assert!(v.locate("b", "a..b/.c/d.").is_ok());
        let l = v.locate("b", "a b/c").unwrap();
        assert_eq!(l.origin, "https://b.oss-cn-hangzhou.aliyuncs.com");
        assert_eq!(l.path, "/a%20b/c");
        let p = Endpoint {
            base: "http://127.0.0.1:9000/",
            style: AddressingStyle::Path,
        };
        let l = p.locate("b", "").unwrap();
        assert_eq!(
            (l.origin.as_str(), l.path.as_str()),
            ("http://127.0.0.1:9000", "/b/")
        );
        assert_eq!(l.canonical_host(), "127.0.0.1:9000");
        let d = Endpoint {
            base: "https://Example.COM:443",
            style: AddressingStyle::Path,
        };
        assert_eq!(d.locate("b", "k").unwrap().canonical_host(), "example.com");
        for bad in [
            "oss.aliyuncs.com",
            "ftp://x",
            "https://",
            "https://h/path",
            "https://u@h",
            "https://h?x",
        ] {
            let e = Endpoint {
                base: bad,
                style: AddressingStyle::Path,
            };
            assert!(
                matches!(e.locate("b", "k"), Err(SignError::InvalidEndpoint(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn bucket_and_method_rules() {
        assert_eq!(check_bucket(""), Err(SignError::EmptyBucket));
        assert!(check_bucket("Upper").is_err());
        assert!(check_bucket("a.b").is_err());
        assert!(check_bucket("-a").is_err());
        assert!(check_bucket("ok-bucket-1").is_ok());
        assert!(check_method("put").is_err());
        assert!(check_method("").is_err());
        assert!(check_method("GET ").is_err());
    }

    #[test]
    fn header_rules() {
        assert!(check_headers(&[("Content-Type", "a\r\nx-oss-acl: public-read")], &[]).is_err());
        assert!(check_headers(&[("Content-Type", " image/png")], &[]).is_err());
        assert!(check_headers(&[("Bad Name", "v")], &[]).is_err());
        assert_eq!(
            check_headers(&[("X-OSS-Meta-A", "1"), ("x-oss-meta-a", "2")], &[]).unwrap_err(),
            SignError::DuplicateHeader("x-oss-meta-a".into())
        );
        assert_eq!(
            check_headers(&[("Authorization", "x")], &["authorization"]).unwrap_err(),
            SignError::ReservedHeader("Authorization".into())
        );
        let h = check_headers(&[("X-Oss-Meta-A", "tab\tinside ok")], &[]).unwrap();
        assert_eq!(h[0].lower, "x-oss-meta-a");
    }

    #[test]
    fn time_bounds() {
        let t = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        assert_eq!(format_iso8601_basic(t), "20231114T221320Z");
        assert_eq!(format_http_date(t), "Tue, 14 Nov 2023 22:13:20 GMT");
        assert_eq!(expiry(t, 60), Ok(1_700_000_060));
        assert_eq!(expiry(t, u64::MAX), Err(SignError::TimeOutOfRange));
        let before_epoch = DateTime::from_timestamp(-1, 0).unwrap();
        assert_eq!(check_time(before_epoch), Err(SignError::TimeOutOfRange));
    }

    /// Odd values in every slot of every signer: errors are fine, panics are not.
    #[test]
    fn no_panic_on_odd_inputs() {
        let long = "a/".repeat(3000);
        let odd = [
            "",
            " ",
            "\n",
            "\0",
            "é",
            "?",
            "&",
            "%",
            "/",
            "=",
            "oss-",
            long.as_str(),
        ];
        let times = [
            DateTime::<Utc>::MIN_UTC,
            DateTime::<Utc>::MAX_UTC,
            DateTime::from_timestamp(0, 0).unwrap(),
        ];
        for &x in &odd {
            let creds = [
                SigningCredentials {
                    access_key_id: x,
                    access_key_secret: "s",
                    security_token: None,
                },
                SigningCredentials {
                    access_key_id: "a",
                    access_key_secret: x,
                    security_token: Some(x),
                },
            ];
            let headers = [(x, "v"), ("x-oss-meta-a", x)];
            let query = [(x, x)];
            let reqs = [
                RequestToSign {
                    method: x,
                    bucket: Some("b"),
                    key: "k",
                    headers: &[],
                    query: &[],
                },
                RequestToSign {
                    method: "PUT",
                    bucket: Some(x),
                    key: x,
                    headers: &headers,
                    query: &query,
                },
                RequestToSign {
                    method: "PUT",
                    bucket: None,
                    key: x,
                    headers: &headers[1..],
                    query: &[],
                },
            ];
            let endpoints = [
                Endpoint {
                    base: x,
                    style: AddressingStyle::VirtualHosted,
                },
                Endpoint {
                    base: "http://h:1",
                    style: AddressingStyle::Path,
                },
            ];
            let scope = oss_v4::V4Scope {
                region: x,
                product: x,
            };
            for c in &creds {
                for r in &reqs {
                    for e in &endpoints {
                        for &t in &times {
                            for exp in [0, 1, 604_800, u64::MAX] {
                                let _ = oss_v1::sign_header(c, r, t);
                                let _ = oss_v1::presign_url(c, r, e, t, exp);
                                let _ = oss_v4::sign_header(c, r, &scope, &[x], t);
                                let _ =
                                    oss_v4::presign_url(c, r, &oss_v4::V4Scope::oss("cn-x"), &[x], e, t, exp);
                                let _ = s3::presign_url(c, r, e, x, t, exp);
                            }
                            let _ = post::sign_v1(c, x, &[(x, x)]);
                            let _ = post::sign_v4(c, &scope, t, x, &[(x, x)]);
                            let _ = s3::sign_post_policy(c, x, t, x, &[(x, x)]);
                            let _ = post::post_url(e, x);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn policy_checks() {
        assert!(check_policy_has(r#"{"a":"x/y"}"#, "a", "x/y").is_ok());
        assert!(check_policy_has(r#"{"a":"x\/y"}"#, "a", "x/y").is_ok());
        assert!(check_policy_has(r#"{"a":"x/yz"}"#, "a", "x/y").is_err());
        assert!(check_policy_has(r#"{"a":"zx/y"}"#, "a", "x/y").is_err());
        assert!(check_policy_has(r#"x/y"}"#, "a", "x/y").is_err());
        assert!(check_policy_has(r#"{"a":"x/y"#, "a", "x/y").is_err());
        assert!(check_policy_has(r#"{"b":"x/y2","a":"x/y"}"#, "a", "x/y").is_ok());
        assert!(check_policy_has(r#"{"a":""}"#, "a", "").is_ok());
        assert!(check_policy_shape(r#"{"expiration":"e","conditions":[]}"#).is_ok());
        assert!(check_policy_shape(r#"{"conditions":[]}"#).is_err());
    }
}
