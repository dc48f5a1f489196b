//! OSS V1 (HMAC-SHA1): the `Authorization: OSS AK:signature` header and
//! presigned URLs (`OSSAccessKeyId`, `Expires`, `Signature`).

use super::*;

/// `Authorization: OSS <ak>:<signature>`; `rest` is what follows `OSS `.
pub(super) fn v1_header(
    req: &Received<'_>,
    rest: &str,
    lookup: Lookup<'_>,
    now: DateTime<Utc>,
) -> Result<Credential, OssError> {
    let (ak, signature) = rest.trim().rsplit_once(':').unwrap_or(("", ""));
    if ak.is_empty() || signature.is_empty() {
        return Err(OssError::msg(
            "InvalidArgument",
            "Authorization header is malformed; expected 'OSS ak:signature'.",
        ));
    }
    // alibabacloud-oss-v2's V1 mode sends the token as a bare `security-token`
    // header; it counts when x-oss-security-token is absent.
    let token = req
        .header("x-oss-security-token")
        .or_else(|| req.header("security-token"));
    let cred = credential_for(lookup, ak, token, now)?;
    let date = v1_date_slot(req);
    if date.is_empty() {
        return Err(OssError::msg("AccessDenied", "The request has no Date header."));
    }
    let sent = parse_http_date(date).ok_or_else(|| {
        OssError::msg(
            "AccessDenied",
            format!("The Date header is not an RFC 1123 date: {date:?}."),
        )
    })?;
    if (now - sent).abs() > TimeDelta::seconds(MAX_SKEW_SECS) {
        return Err(OssError::new("RequestTimeTooSkewed"));
    }
    check_v1_signature(req, &cred, signature, date, None)?;
    Ok(cred)
}

/// `?OSSAccessKeyId=…&Expires=…&Signature=…[&security-token=…]`.
pub(super) fn v1_query(
    req: &Received<'_>,
    lookup: Lookup<'_>,
    now: DateTime<Utc>,
) -> Result<Credential, OssError> {
    let value = |n: &str| req.query_value(n).unwrap_or("");
    let missing: Vec<&str> = ["OSSAccessKeyId", "Expires", "Signature"]
        .into_iter()
        .filter(|n| value(n).is_empty())
        .collect();
    if !missing.is_empty() {
        return Err(OssError::msg(
            "AccessDenied",
            format!("Presigned URL lacks {}.", missing.join(", ")),
        ));
    }
    let cred = credential_for(
        lookup,
        value("OSSAccessKeyId"),
        req.query_value("security-token"),
        now,
    )?;
    let expires = value("Expires");
    let Some(expires_at) = parse_decimal(expires) else {
        return Err(OssError::msg("InvalidArgument", "Expires must be unix seconds."));
    };
    if later_than(now, expires_at) {
        return Err(OssError::msg("AccessDenied", "Request has expired.")
            .with_extra("Expires", expires)
            .with_extra("ServerTime", now.timestamp().to_string()));
    }
    check_v1_signature(req, &cred, value("Signature"), expires, Some("Signature"))?;
    Ok(cred)
}

/// The Date slot of the header form: `x-oss-date` if non-empty, else `Date`.
pub(super) fn v1_date_slot<'r>(req: &'r Received<'_>) -> &'r str {
    let x_oss_date = req.header("x-oss-date").unwrap_or("");
    if x_oss_date.is_empty() {
        req.header("date").unwrap_or("")
    } else {
        x_oss_date
    }
}

/// Sub-resources V1 signs: oss2's list plus alibabacloud-oss-v2's `cloudboxes`.
pub(super) fn v1_signed_param(name: &str) -> bool {
    oss_v1::is_sub_resource(name) || name == "cloudboxes"
}

pub(super) fn check_v1_signature(
    req: &Received<'_>,
    cred: &Credential,
    given: &str,
    date_slot: &str,
    drop: Option<&str>,
) -> Result<(), OssError> {
    let query: Vec<(&str, &str)> = req
        .query
        .iter()
        .filter(|(n, _)| Some(n.as_str()) != drop)
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let resource = oss_v1::received_resource(req.bucket, req.key.unwrap_or(""), &query, v1_signed_param);
    let headers: Vec<(String, &str)> = req.headers.iter().map(|(n, v)| (n.clone(), v.as_str())).collect();
    let string_to_sign = oss_v1::received_string_to_sign(req.method, &headers, date_slot, &resource);
    let expected = sign::b64(&sign::hmac_sha1(
        cred.access_key_secret.as_bytes(),
        string_to_sign.as_bytes(),
    ));
    if same_secret(given, &expected) {
        Ok(())
    } else {
        Err(OssError::new("SignatureDoesNotMatch")
            .with_extra("OSSAccessKeyId", &cred.access_key_id)
            .with_extra("StringToSign", string_to_sign))
    }
}
