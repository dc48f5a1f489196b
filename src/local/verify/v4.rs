//! OSS V4 (HMAC-SHA256, `OSS4-HMAC-SHA256`): the `Authorization` header and
//! presigned URLs (`x-oss-credential`, `x-oss-date`, `x-oss-expires`, `x-oss-signature`).

use super::*;

/// A parsed `<ak>/<yyyymmdd>/<region>/<product>/aliyun_v4_request`.
#[derive(Debug, Clone)]
pub(super) struct Scope {
    pub(super) access_key_id: String,
    pub(super) day: String,
    pub(super) region: String,
    pub(super) product: String,
}

impl Scope {
    pub(super) fn text(&self) -> String {
        format!("{}/{}/{}/{V4_TERMINATOR}", self.day, self.region, self.product)
    }

    pub(super) fn signing_key(&self, secret: &str) -> [u8; 32] {
        let scope = oss_v4::V4Scope {
            region: &self.region,
            product: &self.product,
        };
        oss_v4::signing_key(secret, &self.day, &scope)
    }
}

/// Any region is accepted (the sink has none of its own); the product must be OSS's.
pub(super) fn parse_scope(credential: &str) -> Result<Scope, OssError> {
    let fields: Vec<&str> = credential.split('/').collect();
    if fields.len() != 5 || fields.iter().any(|f| f.is_empty()) || fields[4] != V4_TERMINATOR {
        return Err(OssError::msg(
            "InvalidArgument",
            "Credential must be <ak>/<yyyymmdd>/<region>/oss/aliyun_v4_request.",
        ));
    }
    let day = fields[1];
    if !(day.len() == 8 && day.bytes().all(|b| b.is_ascii_digit())) {
        return Err(OssError::msg(
            "InvalidArgument",
            format!("Invalid date in the credential scope: {day:?}."),
        ));
    }
    if fields[3] != "oss" && fields[3] != "oss-cloudbox" {
        return Err(OssError::msg(
            "InvalidArgument",
            format!("Invalid product in the credential scope: {:?}.", fields[3]),
        ));
    }
    Ok(Scope {
        access_key_id: fields[0].to_string(),
        day: day.to_string(),
        region: fields[2].to_string(),
        product: fields[3].to_string(),
    })
}

/// The AccessKeyId a V4 Authorization header claims (`Credential=<ak>/…`).
pub(super) fn claimed_v4_header(auth: &str) -> String {
    auth.find("Credential=").map_or(String::new(), |i| {
        auth[i + "Credential=".len()..]
            .chars()
            .take_while(|&c| c != '/' && c != ',' && !c.is_whitespace())
            .collect()
    })
}

/// `Authorization: OSS4-HMAC-SHA256 Credential=…,AdditionalHeaders=…,Signature=…`
/// (oss2's `, `-separated order is accepted too).
pub(super) fn v4_header(
    req: &Received<'_>,
    auth: &str,
    lookup: Lookup<'_>,
    now: DateTime<Utc>,
) -> Result<Credential, OssError> {
    let mut fields: HashMap<&str, &str> = HashMap::new();
    for item in auth[oss_v4::ALGORITHM.len()..].split(',') {
        if let Some((name, value)) = item.trim().split_once('=') {
            fields.insert(name, value.trim());
        }
    }
    let credential = fields.get("Credential").copied().unwrap_or("");
    let signature = fields.get("Signature").copied().unwrap_or("");
    if credential.is_empty() || signature.is_empty() {
        return Err(OssError::msg(
            "InvalidArgument",
            "Authorization header lacks Credential or Signature.",
        ));
    }
    let scope = parse_scope(credential)?;
    let cred = credential_for(
        lookup,
        &scope.access_key_id,
        req.header("x-oss-security-token"),
        now,
    )?;
    let xdate = req.header("x-oss-date").unwrap_or("");
    if xdate.is_empty() {
        return Err(OssError::msg(
            "InvalidArgument",
            "V4 requests need an x-oss-date header.",
        ));
    }
    let sent = parse_iso_basic(xdate, "x-oss-date")?;
    if xdate[..8] != scope.day {
        return Err(OssError::msg(
            "InvalidArgument",
            "The date in the credential scope is not the date of x-oss-date.",
        ));
    }
    if (now - sent).abs() > TimeDelta::seconds(MAX_SKEW_SECS) {
        return Err(OssError::new("RequestTimeTooSkewed"));
    }
    let payload = req.header("x-oss-content-sha256").unwrap_or("");
    if payload.is_empty() {
        return Err(OssError::msg(
            "InvalidArgument",
            "V4 requests need an x-oss-content-sha256 header.",
        ));
    }
    let is_hex64 = payload.len() == 64
        && payload
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if payload != oss_v4::UNSIGNED_PAYLOAD && (!is_hex64 || payload != req.payload_sha256()) {
        return Err(OssError::msg(
            "InvalidDigest",
            "x-oss-content-sha256 does not match the payload.",
        ));
    }
    let additional = fields.get("AdditionalHeaders").copied();
    check_v4_signature(req, None, &scope, &cred, xdate, additional, signature)?;
    Ok(cred)
}

/// `?x-oss-signature-version=…&x-oss-credential=…&x-oss-date=…&x-oss-expires=…&x-oss-signature=…`.
pub(super) fn v4_query(
    req: &Received<'_>,
    lookup: Lookup<'_>,
    now: DateTime<Utc>,
) -> Result<Credential, OssError> {
    let value = |n: &str| req.query_value(n).unwrap_or("");
    if value("x-oss-signature-version") != oss_v4::ALGORITHM {
        return Err(OssError::msg(
            "InvalidArgument",
            format!("x-oss-signature-version must be {}.", oss_v4::ALGORITHM),
        ));
    }
    let missing: Vec<&str> = [
        "x-oss-credential",
        "x-oss-date",
        "x-oss-expires",
        "x-oss-signature",
    ]
    .into_iter()
    .filter(|n| value(n).is_empty())
    .collect();
    if !missing.is_empty() {
        return Err(OssError::msg(
            "InvalidArgument",
            format!("Presigned URL lacks {}.", missing.join(", ")),
        ));
    }
    let scope = parse_scope(value("x-oss-credential"))?;
    let cred = credential_for(
        lookup,
        &scope.access_key_id,
        req.query_value("x-oss-security-token"),
        now,
    )?;
    let xdate = value("x-oss-date");
    let signed_at = parse_iso_basic(xdate, "x-oss-date")?;
    if xdate[..8] != scope.day {
        return Err(OssError::msg(
            "InvalidArgument",
            "The date in the credential scope is not the date of x-oss-date.",
        ));
    }
    let raw_expires = value("x-oss-expires");
    let expires = parse_decimal(raw_expires)
        .filter(|e| (1..=V4_MAX_EXPIRES_SECS as u128).contains(e))
        .ok_or_else(|| {
            OssError::msg(
                "InvalidArgument",
                format!("x-oss-expires must be 1..{V4_MAX_EXPIRES_SECS} seconds, got {raw_expires:?}."),
            )
        })? as i64;
    if signed_at - now > TimeDelta::seconds(MAX_SKEW_SECS) {
        return Err(OssError::msg(
            "RequestTimeTooSkewed",
            "x-oss-date is in the future.",
        ));
    }
    let deadline = signed_at + TimeDelta::seconds(expires);
    if now > deadline {
        return Err(OssError::msg("AccessDenied", "Request has expired.")
            .with_extra("Expires", deadline.timestamp().to_string())
            .with_extra("ServerTime", now.timestamp().to_string()));
    }
    let additional = req.query_value("x-oss-additional-headers");
    check_v4_signature(
        req,
        Some("x-oss-signature"),
        &scope,
        &cred,
        xdate,
        additional,
        value("x-oss-signature"),
    )?;
    Ok(cred)
}

/// Always signed by V4, so never an additional header.
pub(super) fn v4_default_signed(lower: &str) -> bool {
    lower.starts_with("x-oss-") || lower == "content-type" || lower == "content-md5"
}

pub(super) fn check_v4_signature(
    req: &Received<'_>,
    drop: Option<&str>,
    scope: &Scope,
    cred: &Credential,
    xdate: &str,
    additional: Option<&str>,
    given: &str,
) -> Result<(), OssError> {
    // Listed names that are present with a non-empty value, as alibabacloud-oss-v2 keeps them.
    let mut extra: Vec<String> = additional
        .unwrap_or("")
        .split(';')
        .map(|n| n.trim().to_lowercase())
        .filter(|n| !n.is_empty() && !v4_default_signed(n) && req.header(n).is_some_and(|v| !v.is_empty()))
        .collect();
    extra.sort();
    extra.dedup();
    let signed: Vec<(String, String)> = req
        .headers
        .iter()
        .filter(|(n, _)| v4_default_signed(n) || extra.contains(n))
        .cloned()
        .collect();
    let query: Vec<(&str, &str)> = req
        .query
        .iter()
        .filter(|(n, _)| Some(n.as_str()) != drop)
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let hashed_payload = req
        .header("x-oss-content-sha256")
        .unwrap_or(oss_v4::UNSIGNED_PAYLOAD);
    let canonical = oss_v4::canonical_request(
        req.method,
        req.bucket,
        req.key.unwrap_or(""),
        &query,
        &signed,
        &extra,
        hashed_payload,
    );
    let string_to_sign = oss_v4::string_to_sign(xdate, &scope.text(), &canonical);
    let key = scope.signing_key(&cred.access_key_secret);
    let expected = hex::encode(sign::hmac_sha256(&key, string_to_sign.as_bytes()));
    if same_secret(given, &expected) {
        Ok(())
    } else {
        Err(OssError::new("SignatureDoesNotMatch")
            .with_extra("OSSAccessKeyId", &cred.access_key_id)
            .with_extra("StringToSign", string_to_sign)
            .with_extra("CanonicalRequest", canonical))
    }
}
