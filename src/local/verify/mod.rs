//! Authentication for the local OSS sink: header and presigned-URL signatures
//! (V1 and V4), PostObject policies (V1 and V4) and their conditions, the
//! security token and the credential's expiry.
//!
//! The checks and error codes follow OSS's documentation (docs/signing.md has
//! the wire formats); the official SDKs (tests/it/local.rs) and the signing
//! vectors prove them. The expected signature is computed with [`crate::sign`] from what arrived and
//! compared in constant time. Everything here is a pure function of the received
//! request parts, a credential lookup and `now`.

use std::collections::HashMap;
use std::fmt;

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use subtle::ConstantTimeEq as _;

mod post;
mod v1;
mod v4;

pub use super::error::AuthScheme;
use super::error::OssError;
use crate::credentials::{KeyId, Redact};
use crate::sign::{self, oss_v1, oss_v4};
pub use post::{PostFields, PostUpload, verify_post};
use v1::*;
use v4::*;

/// Largest accepted distance between a request's own time and the server's.
pub const MAX_SKEW_SECS: i64 = 900;
/// Validity cap of presigned V4 URLs and V4 PostObject policies (7 days).
pub const V4_MAX_EXPIRES_SECS: i64 = 604_800;
const V4_TERMINATOR: &str = "aliyun_v4_request";

/// A key the sink knows: the emulated account's root key (no token, no expiry,
/// no policy) or a session the STS emulator issued.
#[derive(Clone)]
pub struct Credential {
    pub access_key_id: String,
    pub access_key_secret: String,
    /// Required security token; `None` for a permanent key, which must not send one.
    pub security_token: Option<String>,
    pub expiration: Option<DateTime<Utc>>,
    /// Session policy; `None` = unrestricted.
    pub policy: Option<serde_json::Value>,
}

impl fmt::Debug for Credential {
    // The secret and the token never reach logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("access_key_id", &KeyId(&self.access_key_id))
            .field("access_key_secret", &Redact)
            .field("security_token", &Redact::option(&self.security_token))
            .field("expiration", &self.expiration)
            .field("policy", &self.policy.is_some())
            .finish()
    }
}

/// The request body as far as signatures care: V4 may sign its SHA-256.
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    Bytes(&'a [u8]),
    /// Lower-case hex SHA-256 of a body that was spooled to disk.
    Sha256Hex(&'a str),
}

/// One request to the sink, as received.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    pub method: &'a str,
    pub bucket: Option<&'a str>,
    pub key: Option<&'a str>,
    /// Decoded query parameters in URL order (a bare `name` has value `""`).
    pub query: &'a [(String, String)],
    /// Lower-case names, values as received (latin-1 decoded); repeated
    /// headers joined with `,`.
    pub headers: &'a [(String, String)],
    pub payload: Payload<'a>,
}

impl Received<'_> {
    pub fn header(&self, lower_name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == lower_name)
            .map(|(_, v)| v.as_str())
    }

    /// The last value wins, as in `dict(pairs)`.
    pub fn query_value(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn has_query(&self, name: &str) -> bool {
        self.query.iter().any(|(n, _)| n == name)
    }

    fn payload_sha256(&self) -> String {
        match self.payload {
            Payload::Bytes(b) => sign::sha256_hex(b),
            Payload::Sha256Hex(h) => h.to_string(),
        }
    }
}

/// A request that passed authentication (authorization is [`super::access`]'s).
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub scheme: AuthScheme,
    pub credential: Credential,
}

/// Finds a credential by AccessKeyId.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<Credential>;

/// Authenticates a header-signed or presigned request.
/// Errors carry the scheme tried and the AccessKeyId claimed, for the log.
pub fn authenticate(
    req: &Received<'_>,
    lookup: Lookup<'_>,
    now: DateTime<Utc>,
) -> Result<Authenticated, OssError> {
    let auth = req.header("authorization").unwrap_or("");
    let (scheme, claimed, result) = if auth.starts_with(oss_v4::ALGORITHM) {
        let claimed = claimed_v4_header(auth);
        (AuthScheme::V4Header, claimed, v4_header(req, auth, lookup, now))
    } else if let Some(rest) = auth.strip_prefix("OSS ") {
        let claimed = rest.rsplit_once(':').map_or("", |(ak, _)| ak).trim().to_string();
        (AuthScheme::V1Header, claimed, v1_header(req, rest, lookup, now))
    } else if !auth.is_empty() {
        return Err(OssError::msg(
            "InvalidArgument",
            "Unsupported Authorization type.",
        ));
    } else if ["x-oss-signature-version", "x-oss-credential", "x-oss-signature"]
        .iter()
        .any(|n| req.has_query(n))
    {
        let credential = req.query_value("x-oss-credential").unwrap_or("");
        let claimed = credential.split('/').next().unwrap_or("").to_string();
        (AuthScheme::V4Query, claimed, v4_query(req, lookup, now))
    } else if req.has_query("OSSAccessKeyId") || req.has_query("Signature") {
        let claimed = req.query_value("OSSAccessKeyId").unwrap_or("").to_string();
        (AuthScheme::V1Query, claimed, v1_query(req, lookup, now))
    } else {
        return Err(OssError::msg(
            "AccessDenied",
            "Anonymous access is forbidden for this operation.",
        ));
    };
    match result {
        Ok(credential) => Ok(Authenticated { scheme, credential }),
        Err(e) => Err(e.tag(Some(scheme), non_empty(&claimed))),
    }
}

/// The credential check: known key, exactly the issued token in
/// the scheme's place (none for a permanent key), not expired.
fn credential_for(
    lookup: Lookup<'_>,
    access_key_id: &str,
    token: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Credential, OssError> {
    if access_key_id.is_empty() {
        return Err(OssError::msg(
            "InvalidAccessKeyId",
            "The OSS Access Key Id is empty.",
        ));
    }
    let cred = lookup(access_key_id).ok_or_else(|| OssError::new("InvalidAccessKeyId"))?;
    match (&cred.security_token, token.filter(|t| !t.is_empty())) {
        (None, Some(_)) => {
            return Err(OssError::msg(
                "InvalidSecurityToken",
                "A security token was sent with a permanent AccessKey.",
            ));
        }
        (Some(_), None) => {
            return Err(OssError::msg(
                "InvalidSecurityToken",
                "The security token is missing for temporary credentials.",
            ));
        }
        (Some(expected), Some(given)) if !same_secret(given, expected) => {
            return Err(OssError::msg(
                "InvalidSecurityToken",
                "The security token you provided is invalid.",
            ));
        }
        _ => {}
    }
    if cred.expiration.is_some_and(|exp| now >= exp) {
        return Err(OssError::new("SecurityTokenExpired"));
    }
    Ok(cred)
}

// ---------------------------------------------------------------------------
// Times
// ---------------------------------------------------------------------------

/// `x-oss-date` / `x-oss-date` form field: ISO 8601 basic, `20240301T080000Z`,
/// else 400 InvalidArgument.
pub fn parse_iso_basic(value: &str, what: &str) -> Result<DateTime<Utc>, OssError> {
    let shape_ok = value.len() == 16 && value.is_ascii();
    let parsed = shape_ok
        .then(|| NaiveDateTime::parse_from_str(value, "%Y%m%dT%H%M%SZ").ok())
        .flatten();
    parsed.map(|t| t.and_utc()).ok_or_else(|| {
        OssError::msg(
            "InvalidArgument",
            format!("{what} must be a date like 20240301T080000Z, got {value:?}."),
        )
    })
}

/// A PostObject policy's `expiration`: ISO 8601 (RFC 3339), `2024-03-01T08:00:00.000Z`.
pub fn parse_iso_extended(value: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value).ok().map(|t| t.to_utc())
}

/// An HTTP `Date` (RFC 1123, as the SDKs send it; RFC 850 and asctime are also
/// HTTP dates); `None` if it is none of them.
pub fn parse_http_date(value: &str) -> Option<DateTime<Utc>> {
    httpdate::parse_http_date(value.trim())
        .ok()
        .map(DateTime::<Utc>::from)
}

/// ASCII digits only; huge values saturate, which still compares as "later than any time".
fn parse_decimal(text: &str) -> Option<u128> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.parse::<u128>().unwrap_or(u128::MAX))
}

/// `now > seconds`, counting `now`'s fraction.
fn later_than(now: DateTime<Utc>, seconds: u128) -> bool {
    let Ok(s) = i64::try_from(seconds) else {
        return false;
    };
    now.timestamp() > s || (now.timestamp() == s && now.timestamp_subsec_nanos() > 0)
}

/// Constant-time comparison of a presented secret-derived value.
fn same_secret(given: &str, expected: &str) -> bool {
    bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::{AddressingStyle, Endpoint, RequestToSign, SigningCredentials, post};
    use serde_json::Value;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    fn vectors(name: &str) -> Vec<Value> {
        let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let doc: Value = serde_json::from_str(&text).unwrap();
        doc["vectors"].as_array().unwrap().clone()
    }

    fn cred_of(input: &Value) -> Credential {
        Credential {
            access_key_id: input["access_key_id"].as_str().unwrap().into(),
            access_key_secret: input["access_key_secret"].as_str().unwrap().into(),
            security_token: input["security_token"].as_str().map(str::to_string),
            expiration: None,
            policy: None,
        }
    }

    fn lookup_of(cred: Credential) -> impl Fn(&str) -> Option<Credential> {
        move |ak: &str| (ak == cred.access_key_id).then(|| cred.clone())
    }

    fn string_map(v: &Value) -> Vec<(String, String)> {
        v.as_object().map_or(Vec::new(), |m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect()
        })
    }

    fn lower(headers: Vec<(String, String)>) -> Vec<(String, String)> {
        headers
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect()
    }

    /// Changes one character of `s` (base64 and hex stay in their alphabet).
    fn flip(s: &str) -> String {
        let mut c: Vec<char> = s.chars().collect();
        c[3] = if c[3] == 'a' { 'b' } else { 'a' };
        c.into_iter().collect()
    }

    fn req<'a>(
        method: &'a str,
        bucket: &'a str,
        key: Option<&'a str>,
        query: &'a [(String, String)],
        headers: &'a [(String, String)],
    ) -> Received<'a> {
        Received {
            method,
            bucket: Some(bucket),
            key,
            query,
            headers,
            payload: Payload::Bytes(b""),
        }
    }

    fn code(r: Result<Authenticated, OssError>) -> &'static str {
        match r {
            Ok(_) => "OK",
            Err(e) => e.code,
        }
    }

    #[test]
    fn official_v1_header_vectors() {
        for v in vectors("oss_v1_header.json") {
            let (input, expected) = (&v["input"], &v["expected"]);
            let cred = cred_of(input);
            let lookup = lookup_of(cred);
            let mut headers = lower(string_map(&input["headers"]));
            headers.extend(lower(string_map(&expected["headers_added_by_signer"])));
            let query = string_map(&input["query"]);
            let key = input["key"].as_str().filter(|k| !k.is_empty());
            let now = parse_http_date(input["date"].as_str().unwrap()).unwrap() + TimeDelta::seconds(30);
            let r = req(
                input["method"].as_str().unwrap(),
                input["bucket"].as_str().unwrap(),
                key,
                &query,
                &headers,
            );
            let ok = authenticate(&r, &lookup, now).unwrap_or_else(|e| panic!("{}: {e:?}", v["id"]));
            assert_eq!(ok.scheme, AuthScheme::V1Header);

            let auth = expected["authorization"].as_str().unwrap();
            let (head, sig) = auth.rsplit_once(':').unwrap();
            let tampered: Vec<(String, String)> = headers
                .iter()
                .map(|(k, v)| {
                    let v = if k == "authorization" {
                        format!("{head}:{}", flip(sig))
                    } else {
                        v.clone()
                    };
                    (k.clone(), v)
                })
                .collect();
            let r = Received {
                headers: &tampered,
                ..r
            };
            let err = authenticate(&r, &lookup, now).unwrap_err();
            assert_eq!(err.code, "SignatureDoesNotMatch", "{}", v["id"]);
            let sts = err.extra.iter().find(|(n, _)| *n == "StringToSign").unwrap();
            assert_eq!(sts.1, expected["string_to_sign"].as_str().unwrap(), "{}", v["id"]);
            assert_eq!(err.auth, Some(AuthScheme::V1Header));
        }
    }

    #[test]
    fn official_v1_presign_vectors() {
        for v in vectors("oss_v1_presign.json") {
            let (input, expected) = (&v["input"], &v["expected"]);
            let lookup = lookup_of(cred_of(input));
            let headers = lower(string_map(&input["headers_client_will_send"]));
            let query = string_map(&expected["query_params"]);
            let now = at(input["now_epoch"].as_i64().unwrap() + 10);
            let r = req(
                input["method"].as_str().unwrap(),
                input["bucket"].as_str().unwrap(),
                input["key"].as_str(),
                &query,
                &headers,
            );
            assert_eq!(code(authenticate(&r, &lookup, now)), "OK", "{}", v["id"]);

            let tampered: Vec<(String, String)> = query
                .iter()
                .map(|(k, x)| (k.clone(), if k == "Signature" { flip(x) } else { x.clone() }))
                .collect();
            let err = authenticate(
                &Received {
                    query: &tampered,
                    ..r
                },
                &lookup,
                now,
            )
            .unwrap_err();
            assert_eq!(err.code, "SignatureDoesNotMatch", "{}", v["id"]);
            assert_eq!(err.extra[1].1, expected["string_to_sign"].as_str().unwrap());
            // Past Expires: refused before the signature is looked at.
            let late = at(expected["Expires"].as_str().unwrap().parse::<i64>().unwrap() + 1);
            assert_eq!(
                code(authenticate(&r, &lookup, late)),
                "AccessDenied",
                "{}",
                v["id"]
            );
        }
    }

    #[test]
    fn official_v4_header_vectors() {
        for v in vectors("oss_v4_header.json") {
            let (input, expected) = (&v["input"], &v["expected"]);
            let lookup = lookup_of(cred_of(input));
            let mut headers = lower(string_map(&input["headers"]));
            headers.extend(lower(string_map(&expected["headers_added_by_signer"])));
            let query = string_map(&input["query"]);
            let xdate = input["x_oss_date"].as_str().unwrap();
            let now = parse_iso_basic(xdate, "t").unwrap() + TimeDelta::seconds(60);
            let r = req(
                input["method"].as_str().unwrap(),
                input["bucket"].as_str().unwrap(),
                input["key"].as_str(),
                &query,
                &headers,
            );
            assert_eq!(code(authenticate(&r, &lookup, now)), "OK", "{}", v["id"]);

            let sig = expected["signature"].as_str().unwrap();
            let tampered: Vec<(String, String)> = headers
                .iter()
                .map(|(k, x)| (k.clone(), x.replace(sig, &flip(sig))))
                .collect();
            let err = authenticate(
                &Received {
                    headers: &tampered,
                    ..r
                },
                &lookup,
                now,
            )
            .unwrap_err();
            assert_eq!(err.code, "SignatureDoesNotMatch", "{}", v["id"]);
            let extra: HashMap<&str, &str> = err.extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
            assert_eq!(
                extra["CanonicalRequest"],
                expected["canonical_request"].as_str().unwrap()
            );
            assert_eq!(
                extra["StringToSign"],
                expected["string_to_sign"].as_str().unwrap()
            );
            // oss2's layout of the same Authorization value is accepted too.
            if let Some(oss2) = v["cross_check"]["oss2_authorization"].as_str() {
                let swapped: Vec<(String, String)> = headers
                    .iter()
                    .map(|(k, x)| {
                        (
                            k.clone(),
                            if k == "authorization" {
                                oss2.to_string()
                            } else {
                                x.clone()
                            },
                        )
                    })
                    .collect();
                let r2 = Received {
                    headers: &swapped,
                    ..r
                };
                assert_eq!(code(authenticate(&r2, &lookup, now)), "OK", "{} (oss2)", v["id"]);
            }
            let skewed = now + TimeDelta::seconds(MAX_SKEW_SECS);
            assert_eq!(code(authenticate(&r, &lookup, skewed)), "RequestTimeTooSkewed");
        }
    }

    #[test]
    fn official_v4_presign_vectors() {
        for v in vectors("oss_v4_presign.json") {
            let (input, expected) = (&v["input"], &v["expected"]);
            if expected.get("error").is_some() {
                continue;
            }
            let lookup = lookup_of(cred_of(input));
            let headers = lower(string_map(&input["headers_client_will_send"]));
            let mut query = string_map(&input["query"]);
            for (k, x) in string_map(&expected["query_params"]) {
                if !query.iter().any(|(n, _)| *n == k) {
                    query.push((k, x));
                }
            }
            let now = at(input["now_epoch"].as_i64().unwrap() + 1);
            let r = req(
                input["method"].as_str().unwrap(),
                input["bucket"].as_str().unwrap(),
                input["key"].as_str(),
                &query,
                &headers,
            );
            assert_eq!(code(authenticate(&r, &lookup, now)), "OK", "{}", v["id"]);

            let tampered: Vec<(String, String)> = query
                .iter()
                .map(|(k, x)| {
                    (
                        k.clone(),
                        if k == "x-oss-signature" {
                            flip(x)
                        } else {
                            x.clone()
                        },
                    )
                })
                .collect();
            let err = authenticate(
                &Received {
                    query: &tampered,
                    ..r
                },
                &lookup,
                now,
            )
            .unwrap_err();
            assert_eq!(err.code, "SignatureDoesNotMatch", "{}", v["id"]);
            assert_eq!(err.extra[2].1, expected["canonical_request"].as_str().unwrap());
            let expires = input["expires_in_seconds"].as_i64().unwrap();
            let late = at(input["now_epoch"].as_i64().unwrap() + expires + 1);
            assert_eq!(
                code(authenticate(&r, &lookup, late)),
                "AccessDenied",
                "{}",
                v["id"]
            );
        }
    }

    fn post_form(v: &Value) -> (Vec<(String, String)>, String) {
        let fields: Vec<(String, String)> = lower(string_map(&v["expected"]["form_fields"]));
        let policy: Value = serde_json::from_str(v["input"]["policy_json"].as_str().unwrap()).unwrap();
        let bucket = policy["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|c| c["bucket"].as_str())
            .unwrap_or("examplebucket")
            .to_string();
        (fields, bucket)
    }

    fn post_code(r: Result<PostUpload, OssError>) -> &'static str {
        match r {
            Ok(_) => "OK",
            Err(e) => e.code,
        }
    }

    #[test]
    fn official_post_vectors() {
        for (file, sig_field) in [
            ("oss_post_v1.json", "signature"),
            ("oss_post_v4.json", "x-oss-signature"),
        ] {
            for v in vectors(file) {
                let input = &v["input"];
                let lookup = lookup_of(cred_of(input));
                let (fields, bucket) = post_form(&v);
                let policy: Value = serde_json::from_str(input["policy_json"].as_str().unwrap()).unwrap();
                let expiration = parse_iso_extended(policy["expiration"].as_str().unwrap()).unwrap();
                let now = match input["x_oss_date"].as_str() {
                    Some(d) => parse_iso_basic(d, "t").unwrap() + TimeDelta::seconds(5),
                    None => expiration - TimeDelta::seconds(60),
                };
                let form = PostFields {
                    fields: &fields,
                    file_name: Some("a.jpg"),
                    file_content_type: None,
                    file_size: 5,
                };
                let ok = verify_post(&bucket, &form, &lookup, now)
                    .unwrap_or_else(|e| panic!("{}: {e:?}", v["id"]));
                assert!(!ok.key.contains("${filename}"));

                let tampered: Vec<(String, String)> = fields
                    .iter()
                    .map(|(k, x)| (k.clone(), if k == sig_field { flip(x) } else { x.clone() }))
                    .collect();
                let bad = PostFields {
                    fields: &tampered,
                    ..form
                };
                assert_eq!(
                    post_code(verify_post(&bucket, &bad, &lookup, now)),
                    "SignatureDoesNotMatch"
                );
                let late = expiration + TimeDelta::seconds(1);
                assert_eq!(
                    post_code(verify_post(&bucket, &form, &lookup, late)),
                    "AccessDenied"
                );
            }
        }
    }

    const CREDS: SigningCredentials<'static> = SigningCredentials {
        access_key_id: "STS.ak",
        access_key_secret: "sk",
        security_token: Some("tok+/="),
    };

    fn sts_cred() -> Credential {
        Credential {
            access_key_id: "STS.ak".into(),
            access_key_secret: "sk".into(),
            security_token: Some("tok+/=".into()),
            expiration: Some(at(2_000_000_000)),
            policy: None,
        }
    }

    #[test]
    fn own_signers_are_accepted_and_token_rules_hold() {
        let lookup = lookup_of(sts_cred());
        let t = at(1_700_000_000);
        let headers_in = [("Content-Type", "text/plain"), ("x-oss-meta-a", "1")];
        let to_sign = RequestToSign {
            method: "PUT",
            bucket: Some("b"),
            key: "dir/a b.txt",
            headers: &headers_in,
            query: &[],
        };
        let base: Vec<(String, String)> = lower(
            headers_in
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );

        // V1 header.
        let s = sign::oss_v1::sign_header(&CREDS, &to_sign, t).unwrap();
        let mut h = base.clone();
        h.extend(lower(s.headers_to_add.clone()));
        let r = req("PUT", "b", Some("dir/a b.txt"), &[], &h);
        assert_eq!(code(authenticate(&r, &lookup, t)), "OK");
        // Wrong token header; missing token; expired credential.
        let wrong: Vec<_> = h
            .iter()
            .map(|(k, v)| {
                let v = if k == "x-oss-security-token" {
                    "other".to_string()
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect();
        assert_eq!(
            code(authenticate(&Received { headers: &wrong, ..r }, &lookup, t)),
            "InvalidSecurityToken"
        );
        let missing: Vec<_> = h
            .iter()
            .filter(|(k, _)| k != "x-oss-security-token")
            .cloned()
            .collect();
        assert_eq!(
            code(authenticate(
                &Received {
                    headers: &missing,
                    ..r
                },
                &lookup,
                t
            )),
            "InvalidSecurityToken"
        );
        assert_eq!(
            code(authenticate(&r, &lookup, at(2_000_000_000))),
            "SecurityTokenExpired"
        );
        let nobody = |_: &str| None;
        let err = authenticate(&r, &nobody, t).unwrap_err();
        assert_eq!(
            (err.code, err.access_key_id.as_deref()),
            ("InvalidAccessKeyId", Some("STS.ak"))
        );

        // V4 header, with an additional header.
        let mut with_host = headers_in.to_vec();
        with_host.push(("Host", "b.oss-cn-hangzhou.aliyuncs.com"));
        let rq = RequestToSign {
            headers: &with_host,
            ..to_sign
        };
        let s = sign::oss_v4::sign_header(&CREDS, &rq, &oss_v4::V4Scope::oss("cn-hangzhou"), &["host"], t)
            .unwrap();
        let mut h4 = lower(
            with_host
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        h4.extend(lower(s.headers_to_add.clone()));
        let r4 = req("PUT", "b", Some("dir/a b.txt"), &[], &h4);
        assert_eq!(code(authenticate(&r4, &lookup, t)), "OK");
        // The additional header is bound: another Host breaks the signature.
        let moved: Vec<_> = h4
            .iter()
            .map(|(k, v)| (k.clone(), if k == "host" { "x".to_string() } else { v.clone() }))
            .collect();
        assert_eq!(
            code(authenticate(
                &Received {
                    headers: &moved,
                    ..r4
                },
                &lookup,
                t
            )),
            "SignatureDoesNotMatch"
        );
        // Another key breaks it too.
        let other_key = req("PUT", "b", Some("dir/a b.txT"), &[], &h4);
        assert_eq!(
            code(authenticate(&other_key, &lookup, t)),
            "SignatureDoesNotMatch"
        );

        // V1 presigned URL (token in `security-token`).
        let ep = Endpoint {
            base: "http://127.0.0.1:9",
            style: AddressingStyle::Path,
        };
        let u = sign::oss_v1::presign_url(&CREDS, &to_sign, &ep, t, 60).unwrap();
        let r = req("PUT", "b", Some("dir/a b.txt"), &u.query, &base);
        assert_eq!(code(authenticate(&r, &lookup, t)), "OK");
        // The Content-Type is bound.
        let other_ct: Vec<_> = base
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    if k == "content-type" {
                        "text/html".into()
                    } else {
                        v.clone()
                    },
                )
            })
            .collect();
        assert_eq!(
            code(authenticate(
                &Received {
                    headers: &other_ct,
                    ..r
                },
                &lookup,
                t
            )),
            "SignatureDoesNotMatch"
        );
    }

    #[test]
    fn v4_presign_expiry_and_future_dates() {
        let lookup = lookup_of(sts_cred());
        let t = at(1_700_000_000);
        let to_sign = RequestToSign {
            method: "PUT",
            bucket: Some("b"),
            key: "k",
            headers: &[],
            query: &[],
        };
        let ep = Endpoint {
            base: "http://127.0.0.1:9",
            style: AddressingStyle::Path,
        };
        let scope = oss_v4::V4Scope::oss("cn-hangzhou");
        let u = sign::oss_v4::presign_url(&CREDS, &to_sign, &scope, &[], &ep, t, 60).unwrap();
        let r = req("PUT", "b", Some("k"), &u.query, &[]);
        assert_eq!(code(authenticate(&r, &lookup, t + TimeDelta::seconds(60))), "OK");
        let err = authenticate(&r, &lookup, t + TimeDelta::seconds(61)).unwrap_err();
        assert_eq!(err.code, "AccessDenied");
        assert_eq!(err.extra[0], ("Expires", "1700000060".to_string()));
        assert_eq!(
            code(authenticate(&r, &lookup, t - TimeDelta::seconds(901))),
            "RequestTimeTooSkewed"
        );
        // Wrong method: the canonical request differs.
        let get = Received { method: "GET", ..r };
        assert_eq!(code(authenticate(&get, &lookup, t)), "SignatureDoesNotMatch");
        // Broken scope / expires.
        let mut q = u.query.clone();
        for (k, v) in q.iter_mut() {
            if k == "x-oss-expires" {
                *v = "604801".into();
            }
        }
        assert_eq!(
            code(authenticate(&Received { query: &q, ..r }, &lookup, t)),
            "InvalidArgument"
        );
    }

    #[test]
    fn v4_payload_hash_is_checked() {
        let lookup = lookup_of(sts_cred());
        let t = at(1_700_000_000);
        let body = b"hello";
        let hash = sign::sha256_hex(body);
        let headers_in = [("x-oss-content-sha256", hash.as_str())];
        let rq = RequestToSign {
            method: "PUT",
            bucket: Some("b"),
            key: "k",
            headers: &headers_in,
            query: &[],
        };
        let s = sign::oss_v4::sign_header(&CREDS, &rq, &oss_v4::V4Scope::oss("cn-x"), &[], t).unwrap();
        let mut h = vec![("x-oss-content-sha256".to_string(), hash.clone())];
        h.extend(lower(s.headers_to_add));
        let r = Received {
            payload: Payload::Bytes(body),
            ..req("PUT", "b", Some("k"), &[], &h)
        };
        assert_eq!(code(authenticate(&r, &lookup, t)), "OK");
        let other = Received {
            payload: Payload::Bytes(b"hellO"),
            ..r
        };
        assert_eq!(code(authenticate(&other, &lookup, t)), "InvalidDigest");
    }

    #[test]
    fn anonymous_and_malformed_authorization() {
        let lookup = |_: &str| None;
        let t = at(1_700_000_000);
        let cases: &[(&str, &str)] = &[
            ("", "AccessDenied"),
            ("Bearer x", "InvalidArgument"),
            ("OSS nocolon", "InvalidArgument"),
            ("OSS :sig", "InvalidArgument"),
            ("OSS4-HMAC-SHA256 Credential=ak", "InvalidArgument"),
            (
                "OSS4-HMAC-SHA256 Credential=ak/1/r/oss/x,Signature=s",
                "InvalidArgument",
            ),
            (
                "OSS4-HMAC-SHA256 Credential=ak/2023121/r/oss/aliyun_v4_request,Signature=s",
                "InvalidArgument",
            ),
            (
                "OSS4-HMAC-SHA256 Credential=ak/20231215/r/s3/aliyun_v4_request,Signature=s",
                "InvalidArgument",
            ),
            (
                "OSS4-HMAC-SHA256 Credential=ak/20231215/r/oss/aliyun_v4_request,Signature=s",
                "InvalidAccessKeyId",
            ),
            ("OSS4-HMAC-SHA256é,,=,Signature", "InvalidArgument"),
        ];
        for (auth, want) in cases {
            let h = vec![("authorization".to_string(), auth.to_string())];
            let h = if auth.is_empty() { vec![] } else { h };
            let r = req("PUT", "b", Some("k"), &[], &h);
            assert_eq!(code(authenticate(&r, &lookup, t)), *want, "{auth}");
        }
        let q = vec![("Signature".to_string(), "x".to_string())];
        let r = req("PUT", "b", Some("k"), &q, &[]);
        let err = authenticate(&r, &lookup, t).unwrap_err();
        assert_eq!((err.code, err.auth), ("AccessDenied", Some(AuthScheme::V1Query)));
    }

    #[test]
    fn http_dates() {
        let t = at(1_700_000_000);
        // RFC 1123 (what oss2, ali-oss and alibabacloud-oss-v2 send), RFC 850, asctime.
        for s in [
            "Tue, 14 Nov 2023 22:13:20 GMT",
            "Tuesday, 14-Nov-23 22:13:20 GMT",
            "Tue Nov 14 22:13:20 2023",
            " Tue, 14 Nov 2023 22:13:20 GMT ",
        ] {
            assert_eq!(parse_http_date(s), Some(t), "{s}");
        }
        for s in [
            "",
            "   ",
            "yesterday",
            "Tue, 32 Nov 2023 22:13:20 GMT",
            "Tue, 14 Nov 2023 24:13:20 GMT",
            "Tue, 14 Nov 2023 22:13:60 GMT",
            "Tue, 14 Foo 2023 22:13:20 GMT",
            "Tue, 14 Nov 2023 23:13:20 +0100",
            "Tue, 14 Nov 99999999999999999999 22:13:20 GMT",
            "20231114T221320Z",
        ] {
            assert_eq!(parse_http_date(s), None, "{s}");
        }
    }

    #[test]
    fn iso_dates() {
        assert_eq!(
            parse_iso_basic("20231114T221320Z", "d").unwrap(),
            at(1_700_000_000)
        );
        for bad in [
            "20231114T221320",
            "2023111T221320Z",
            "20230231T000000Z",
            "20231114T241320Z",
            "20231114T221361Z",
            "+2023114T221320Z",
        ] {
            assert_eq!(
                parse_iso_basic(bad, "d").unwrap_err().code,
                "InvalidArgument",
                "{bad}"
            );
        }
        assert_eq!(
            parse_iso_extended("2023-11-14T22:13:20Z"),
            Some(at(1_700_000_000))
        );
        assert_eq!(
            parse_iso_extended("2023-11-14T22:13:20.5Z"),
            Some(at(1_700_000_000) + TimeDelta::milliseconds(500))
        );
        for bad in ["2023-11-14T22:13:20", "2023-11-14T22:13:20.Z", "é"] {
            assert_eq!(parse_iso_extended(bad), None, "{bad}");
        }
    }

    fn v4_post(policy: &str, fields: &[(&str, &str)], t: DateTime<Utc>) -> Vec<(String, String)> {
        let scope = oss_v4::V4Scope::oss("cn-hangzhou");
        let form = post::sign_v4(&CREDS, &scope, t, policy, fields).unwrap();
        lower(form.fields)
    }

    fn required_v4(t: DateTime<Utc>) -> String {
        post::v4_required_conditions(&CREDS, &oss_v4::V4Scope::oss("cn-hangzhou"), t)
            .unwrap()
            .iter()
            .map(|(k, v)| format!("{{\"{k}\":\"{v}\"}}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    #[test]
    fn post_conditions_and_v4_rules() {
        let lookup = lookup_of(sts_cred());
        let t = at(1_700_000_000);
        let req4 = required_v4(t);
        let policy = |extra: &str| {
            format!(r#"{{"expiration":"2023-11-14T23:00:00.000Z","conditions":[{req4}{extra}]}}"#)
        };
        let run = |policy: &str, fields: &[(&str, &str)], size: u64, name: Option<&str>| {
            let f = v4_post(policy, fields, t);
            let form = PostFields {
                fields: &f,
                file_name: name,
                file_content_type: Some("image/png"),
                file_size: size,
            };
            match verify_post("b", &form, &lookup, t) {
                Ok(u) => format!("OK {} {}", u.key, u.content_type),
                Err(e) => e.code.to_string(),
            }
        };
        let key = [("key", "up/${filename}")];
        assert_eq!(
            run(&policy(""), &key, 1, Some("C:\\dir\\a.png")),
            "OK up/a.png image/png"
        );
        assert_eq!(run(&policy(""), &[], 1, None), "InvalidArgument");
        let p = policy(r#",["starts-with","$key","up/"],["content-length-range",1,3]"#);
        assert_eq!(run(&p, &key, 3, Some("x")), "OK up/x image/png");
        assert_eq!(run(&p, &key, 4, Some("x")), "EntityTooLarge");
        assert_eq!(run(&p, &key, 0, Some("x")), "EntityTooSmall");
        assert_eq!(run(&p, &[("key", "etc/x")], 1, None), "AccessDenied");
        let p = policy(r#",{"bucket":"other"}"#);
        assert_eq!(run(&p, &key, 1, None), "AccessDenied");
        let p = policy(r#",["in","$content-type",["image/png"]],["not-in","$cache-control",["no-cache"]]"#);
        assert_eq!(
            run(&p, &[("key", "k"), ("Content-Type", "image/png")], 1, None),
            "OK k image/png"
        );
        assert_eq!(
            run(&p, &[("key", "k"), ("Content-Type", "text/html")], 1, None),
            "AccessDenied"
        );
        assert_eq!(
            run(
                &p,
                &[
                    ("key", "k"),
                    ("Content-Type", "image/png"),
                    ("Cache-Control", "no-cache")
                ],
                1,
                None
            ),
            "AccessDenied"
        );
        assert_eq!(
            run(&policy(r#",["eq","$key",1]"#), &key, 1, None),
            "InvalidPolicyDocument"
        );
        assert_eq!(
            run(&policy(r#",["nope","$key","a"]"#), &key, 1, None),
            "InvalidPolicyDocument"
        );
        assert_eq!(
            run(&policy(r#",["content-length-range",1,2.5]"#), &key, 1, None),
            "InvalidPolicyDocument"
        );
        assert_eq!(
            run(&policy(r#",["content-length-range",true,3]"#), &key, 1, None),
            "InvalidPolicyDocument"
        );
        assert_eq!(run(&policy(r#",{}"#), &key, 1, None), "InvalidPolicyDocument");
        // A malformed condition is reported whatever its member order.
        assert_eq!(
            run(&policy(r#",{"key":"a","zz":1}"#), &key, 1, None),
            "InvalidPolicyDocument"
        );
        assert_eq!(
            run(&policy(r#",{"zz":1,"key":"a"}"#), &key, 1, None),
            "InvalidPolicyDocument"
        );

        // Without the token condition an STS policy is refused.
        let no_token: String = req4
            .split(",{\"x-oss-security-token\"")
            .next()
            .unwrap()
            .to_string()
            + &req4[req4.find("},{\"x-oss-date").unwrap() + 1..];
        let p = format!(r#"{{"expiration":"2023-11-14T23:00:00.000Z","conditions":[{no_token}]}}"#);
        // sign_v4 itself refuses such a policy, so sign by hand.
        let b64 = sign::b64(p.as_bytes());
        let key4 = oss_v4::signing_key("sk", "20231114", &oss_v4::V4Scope::oss("cn-hangzhou"));
        let sig = hex::encode(sign::hmac_sha256(&key4, b64.as_bytes()));
        let mut f = v4_post(&policy(""), &key, t);
        for (k, v) in f.iter_mut() {
            match k.as_str() {
                "policy" => *v = b64.clone(),
                "x-oss-signature" => *v = sig.clone(),
                _ => {}
            }
        }
        let form = PostFields {
            fields: &f,
            file_name: None,
            file_content_type: None,
            file_size: 1,
        };
        assert_eq!(
            post_code(verify_post("b", &form, &lookup, t)),
            "InvalidPolicyDocument"
        );

        // x-oss-date 20 minutes ahead of the server: too far in the future.
        let later = t + TimeDelta::minutes(20);
        let p = format!(
            r#"{{"expiration":"2023-11-14T23:00:00.000Z","conditions":[{}]}}"#,
            required_v4(later)
        );
        let f = v4_post(&p, &key, later);
        let form = PostFields {
            fields: &f,
            file_name: None,
            file_content_type: None,
            file_size: 1,
        };
        assert_eq!(
            post_code(verify_post("b", &form, &lookup, t)),
            "RequestTimeTooSkewed"
        );
    }

    #[test]
    fn post_v1_token_and_anonymous() {
        let lookup = lookup_of(sts_cred());
        let t = at(1_700_000_000);
        let p = r#"{"expiration":"2023-11-14T23:00:00.000Z","conditions":[]}"#;
        let form = post::sign_v1(&CREDS, p, &[("key", "k")]).unwrap();
        let fields = lower(form.fields);
        let run = |fields: &[(String, String)]| {
            let form = PostFields {
                fields,
                file_name: None,
                file_content_type: None,
                file_size: 0,
            };
            post_code(verify_post("b", &form, &lookup, t))
        };
        assert_eq!(run(&fields), "OK");
        let no_token: Vec<_> = fields
            .iter()
            .filter(|(k, _)| k != "x-oss-security-token")
            .cloned()
            .collect();
        assert_eq!(run(&no_token), "InvalidSecurityToken");
        assert_eq!(run(&[("key".into(), "k".into())]), "AccessDenied");
        let no_policy: Vec<_> = fields.iter().filter(|(k, _)| k != "policy").cloned().collect();
        assert_eq!(run(&no_policy), "InvalidArgument");
        // A policy that is not base64 JSON, signed as it is.
        for junk in ["bm90IGpzb24=", "e30=", "e30", "@@@@"] {
            let sig = sign::b64(&sign::hmac_sha1(b"sk", junk.as_bytes()));
            let f: Vec<_> = fields
                .iter()
                .map(|(k, v)| match k.as_str() {
                    "policy" => (k.clone(), junk.to_string()),
                    "signature" => (k.clone(), sig.clone()),
                    _ => (k.clone(), v.clone()),
                })
                .collect();
            assert_eq!(run(&f), "InvalidPolicyDocument", "{junk}");
        }
    }
}
