//! STS emulator: `AssumeRole` (API 2015-04-01) in the real wire format, so the
//! ordinary `sts` client talks to it unchanged. It verifies the RPC v1
//! signature against the process's root key, rejects replayed nonces and skewed
//! timestamps, validates the parameters as STS does, and mints `STS.` credentials
//! whose session policy the OSS sink later enforces.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use base64::Engine;
use chrono::{DateTime, Duration, NaiveDateTime, Utc};
use rand::Rng;
use rand::distr::Alphanumeric;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tracing::info;

use super::{LocalState, Session};
use crate::sign::sts_rpc;

/// Where the emulator answers on the main listener.
pub const PATH: &str = "/_local/sts";

const VERSION: &str = "2015-04-01";
const MIN_DURATION: u64 = 900;
const MAX_DURATION: u64 = 43_200;
const MAX_POLICY_CHARS: usize = 2048;
/// How far a request's Timestamp may be from our clock (the gateway allows 15 minutes).
const MAX_SKEW_SECS: i64 = 900;
const REQUIRED_COMMON: [&str; 6] = [
    "AccessKeyId",
    "SignatureMethod",
    "SignatureVersion",
    "SignatureNonce",
    "Timestamp",
    "Signature",
];

/// Nonces seen within the skew window; a replayed request is refused.
#[derive(Default)]
struct Nonces(Mutex<HashMap<String, DateTime<Utc>>>);

impl Nonces {
    fn use_once(&self, nonce: &str, now: DateTime<Utc>) -> bool {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        seen.retain(|_, at| now - *at <= Duration::seconds(2 * MAX_SKEW_SECS));
        seen.insert(nonce.to_string(), now).is_none()
    }
}

#[derive(Clone)]
struct Emulator {
    local: Arc<LocalState>,
    nonces: Arc<Nonces>,
}

pub fn router(local: Arc<LocalState>) -> Router {
    let state = Emulator {
        local,
        nonces: Arc::default(),
    };
    Router::new().route(PATH, any(handle)).with_state(state)
}

/// An STS error: Code, HTTP status, Message.
#[derive(Debug)]
struct StsError {
    code: String,
    status: StatusCode,
    message: String,
}

fn err(code: &str, message: impl Into<String>) -> StsError {
    let status = match code {
        "NoPermission" => StatusCode::FORBIDDEN,
        "InvalidAccessKeyId.NotFound" | "InvalidAction.NotFound" | "EntityNotExist.Role" => {
            StatusCode::NOT_FOUND
        }
        _ => StatusCode::BAD_REQUEST,
    };
    StsError {
        code: code.to_string(),
        status,
        message: message.into(),
    }
}

fn request_id() -> String {
    uuid::Uuid::new_v4().to_string().to_uppercase()
}

async fn handle(
    State(em): State<Emulator>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let now = em.local.now();
    let params = decode_params(query.as_deref().unwrap_or(""), &body, &headers);
    let result = match (method.as_str(), params) {
        ("GET" | "POST", Ok(params)) => assume_role(&em, method.as_str(), &params, now),
        (_, Ok(_)) => Err(err(
            "InvalidAction.NotFound",
            "Specified api is not found, please check your url and method.",
        )),
        (_, Err(e)) => Err(e),
    };
    let request_id = request_id();
    match result {
        Ok(session) => {
            info!(
                target: "ossvend::local::sts",
                verdict = "OK", access_key_id = %crate::identity::key_id_prefix(&session.access_key_id),
                session_name = %session.session_name, expiration = %session.expiration.format("%Y-%m-%dT%H:%M:%SZ"),
                policy = session.policy.is_some(),
                "AssumeRole"
            );
            let body = json!({
                "RequestId": request_id,
                "AssumedRoleUser": {
                    "Arn": format!("{}/{}", session.role_arn.to_lowercase(), session.session_name),
                    "AssumedRoleId": format!("300000000000000001:{}", session.session_name),
                },
                "Credentials": {
                    "AccessKeyId": session.access_key_id,
                    "AccessKeySecret": session.access_key_secret,
                    "SecurityToken": session.security_token,
                    "Expiration": session.expiration.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                },
            });
            em.local.sessions.insert(session);
            em.local.sessions.prune(now);
            json_response(StatusCode::OK, &body)
        }
        Err(e) => {
            info!(target: "ossvend::local::sts", verdict = %e.code, status = e.status.as_u16(), "AssumeRole refused");
            let body = json!({
                "RequestId": request_id,
                "HostId": "sts.aliyuncs.com",
                "Code": e.code,
                "Message": e.message,
                "Recommend": format!("https://api.aliyun.com/troubleshoot?q={}&product=Sts", e.code),
            });
            json_response(e.status, &body)
        }
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json;charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

/// Query and form-body parameters, both form-decoded as the gateway does; the
/// body wins on a duplicate name.
fn decode_params(query: &str, body: &[u8], headers: &HeaderMap) -> Result<HashMap<String, String>, StsError> {
    let mut params: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
    if is_form && !body.is_empty() {
        if std::str::from_utf8(body).is_err() {
            return Err(err("InvalidParameter", "The request body is not valid UTF-8."));
        }
        params.extend(url::form_urlencoded::parse(body).into_owned());
    }
    Ok(params)
}

fn assume_role(
    em: &Emulator,
    method: &str,
    params: &HashMap<String, String>,
    now: DateTime<Utc>,
) -> Result<Session, StsError> {
    let get = |name: &str| params.get(name).map(String::as_str).filter(|v| !v.is_empty());
    // The gateway resolves the action before it looks at credentials.
    match get("Action") {
        None => return Err(err("MissingAction", "Action is mandatory for this action.")),
        Some("AssumeRole") => {}
        Some(_) => {
            return Err(err(
                "InvalidAction.NotFound",
                "Specified api is not found, please check your url and method.",
            ));
        }
    }
    match get("Version") {
        None => return Err(err("MissingVersion", "Version is mandatory for this action.")),
        Some(VERSION) => {}
        Some(_) => return Err(err("InvalidVersion", "Specified parameter Version is not valid.")),
    }
    authenticate(em, method, params, now)?;
    validate_and_mint(params, now)
}

fn authenticate(
    em: &Emulator,
    method: &str,
    params: &HashMap<String, String>,
    now: DateTime<Utc>,
) -> Result<(), StsError> {
    for name in REQUIRED_COMMON {
        if params.get(name).is_none_or(|v| v.is_empty()) {
            return Err(err(
                &format!("Missing{name}"),
                format!("{name} is mandatory for this action."),
            ));
        }
    }
    if params["SignatureMethod"] != "HMAC-SHA1" {
        return Err(err(
            "InvalidSignatureMethod",
            "Specified signature method is not supported.",
        ));
    }
    if params["SignatureVersion"] != "1.0" {
        return Err(err(
            "InvalidSignatureVersion",
            "Specified signature version is not supported.",
        ));
    }
    let sent_at = parse_timestamp(&params["Timestamp"])?;
    // Only the root key may call: temporary keys minted here are for OSS.
    let root = &em.local.root;
    if params["AccessKeyId"] != root.access_key_id {
        return Err(err(
            "InvalidAccessKeyId.NotFound",
            "Specified access key is not found.",
        ));
    }
    let expected = sts_rpc::sign(
        method,
        params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        &root.access_key_secret,
    );
    if !bool::from(
        expected
            .signature
            .as_bytes()
            .ct_eq(params["Signature"].as_bytes()),
    ) {
        // SDKs compare the text after ':' with their own string-to-sign.
        return Err(err(
            "SignatureDoesNotMatch",
            format!(
                "Specified signature is not matched with our calculation. server string to sign is:{}",
                expected.string_to_sign
            ),
        ));
    }
    if params.get("SecurityToken").is_some_and(|t| !t.is_empty()) {
        return Err(err(
            "InvalidSecurityToken.MismatchWithAccessKey",
            "A SecurityToken was sent with a long-term AccessKey.",
        ));
    }
    // Skew after the signature (an unauthenticated caller learns nothing), nonce last.
    if (now - sent_at).num_seconds().abs() > MAX_SKEW_SECS {
        return Err(err(
            "InvalidTimeStamp.Expired",
            "Specified time stamp or date value is expired.",
        ));
    }
    if !em.nonces.use_once(&params["SignatureNonce"], now) {
        return Err(err(
            "SignatureNonceUsed",
            "Specified signature nonce was used already.",
        ));
    }
    Ok(())
}

/// `YYYY-MM-DDThh:mm:ssZ`, optionally with `.mmm`.
fn parse_timestamp(value: &str) -> Result<DateTime<Utc>, StsError> {
    let bad = || {
        err(
            "InvalidTimeStamp.Format",
            "Specified time stamp or date value is not well formatted.",
        )
    };
    let body = value.strip_suffix('Z').ok_or_else(bad)?;
    let (whole, millis) = match body.split_once('.') {
        Some((w, ms)) if ms.len() == 3 && ms.bytes().all(|b| b.is_ascii_digit()) => {
            (w, ms.parse().unwrap_or(0))
        }
        Some(_) => return Err(bad()),
        None => (body, 0),
    };
    if whole.len() != 19 {
        return Err(bad());
    }
    let t = NaiveDateTime::parse_from_str(whole, "%Y-%m-%dT%H:%M:%S").map_err(|_| bad())?;
    Ok(t.and_utc() + Duration::milliseconds(millis))
}

fn validate_and_mint(params: &HashMap<String, String>, now: DateTime<Utc>) -> Result<Session, StsError> {
    let arn = params.get("RoleArn").filter(|v| !v.is_empty()).ok_or_else(|| {
        err(
            "MissingParameter.RoleArn",
            "RoleArn is mandatory for this action.",
        )
    })?;
    if !valid_role_arn(arn) {
        return Err(err(
            "InvalidParameter.RoleArn",
            "The parameter RoleArn is wrongly formed.",
        ));
    }
    let session_name = params.get("RoleSessionName").map(String::as_str).unwrap_or("");
    let name_ok = (2..=64).contains(&session_name.len())
        && session_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".@_-".contains(&b));
    if !name_ok {
        return Err(err(
            "InvalidParameter.RoleSessionName",
            "The parameter RoleSessionName is wrongly formed.",
        ));
    }
    let duration = params
        .get("DurationSeconds")
        .map(String::as_str)
        .unwrap_or("3600");
    let duration = duration
        .parse::<u64>()
        .ok()
        .filter(|d| duration.bytes().all(|b| b.is_ascii_digit()) && (MIN_DURATION..=MAX_DURATION).contains(d))
        .ok_or_else(|| {
            err(
                "InvalidParameter.DurationSeconds",
                format!("The Min/Max value of DurationSeconds is {MIN_DURATION}/{MAX_DURATION} seconds."),
            )
        })?;
    let policy = match params.get("Policy") {
        None => None,
        Some(p) => Some(check_policy(p)?),
    };
    Ok(Session {
        access_key_id: format!("STS.N{}", alnum(23)),
        access_key_secret: alnum(44),
        security_token: security_token(),
        // Whole seconds: Expiration is sent without a fraction.
        expiration: DateTime::from_timestamp(now.timestamp() + duration as i64, 0).unwrap_or(now),
        policy,
        role_arn: arn.clone(),
        session_name: session_name.to_string(),
    })
}

fn valid_role_arn(arn: &str) -> bool {
    let Some(rest) = arn.strip_prefix("acs:ram::") else {
        return false;
    };
    let Some((account, role)) = rest.split_once(":role/") else {
        return false;
    };
    !account.is_empty()
        && account.bytes().all(|b| b.is_ascii_digit())
        && (1..=64).contains(&role.len())
        && role
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn check_policy(policy: &str) -> Result<Value, StsError> {
    let grammar = |m: String| err("InvalidParameter.PolicyGrammar", m);
    if !(1..=MAX_POLICY_CHARS).contains(&policy.chars().count()) {
        return Err(grammar(format!(
            "The policy length must be between 1 and {MAX_POLICY_CHARS} characters."
        )));
    }
    let doc: Value =
        serde_json::from_str(policy).map_err(|e| grammar(format!("The policy is not valid JSON: {e}.")))?;
    if !doc.is_object() || doc.get("Version").is_none() || doc.get("Statement").is_none() {
        return Err(grammar("The policy must contain Version and Statement.".into()));
    }
    Ok(doc)
}

/// `n` random letters and digits (key ids, secrets).
pub(super) fn alnum(n: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

/// Opaque like the real thing: "CAIS" + base64 with '+', '/' and '=' in it, so a
/// client that forgets to URL-encode the token fails here as it would on OSS.
fn security_token() -> String {
    loop {
        let bytes: Vec<u8> = (0..820).map(|_| rand::random::<u8>()).collect();
        let body = base64::engine::general_purpose::STANDARD.encode(bytes);
        if body.contains('+') && body.contains('/') {
            return format!("CAIS{body}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_strictly() {
        assert!(parse_timestamp("2026-11-23T21:00:00Z").is_ok());
        assert!(parse_timestamp("2026-11-23T21:00:00.123Z").is_ok());
        for bad in [
            "2026-11-23T21:00:00",
            "2026-13-23T21:00:00Z",
            "2026-11-23 21:00:00Z",
            "x",
            "",
        ] {
            assert_eq!(
                parse_timestamp(bad).unwrap_err().code,
                "InvalidTimeStamp.Format",
                "{bad}"
            );
        }
    }

    #[test]
    fn role_arns_and_policies_are_checked() {
        assert!(valid_role_arn("acs:ram::1000000000000001:role/ossvend-local"));
        assert!(!valid_role_arn("acs:ram::abc:role/x"));
        assert!(!valid_role_arn("acs:ram::1:user/x"));
        assert!(check_policy(r#"{"Version":"1","Statement":[]}"#).is_ok());
        assert_eq!(
            check_policy("{").unwrap_err().code,
            "InvalidParameter.PolicyGrammar"
        );
        assert_eq!(
            check_policy("[]").unwrap_err().code,
            "InvalidParameter.PolicyGrammar"
        );
    }

    #[test]
    fn nonces_are_single_use() {
        let n = Nonces::default();
        let now = Utc::now();
        assert!(n.use_once("a", now));
        assert!(!n.use_once("a", now));
        assert!(n.use_once("b", now));
    }

    #[test]
    fn tokens_look_like_sts_tokens() {
        let t = security_token();
        assert!(t.starts_with("CAIS") && t.len() > 1000 && t.contains('+') && t.contains('/'));
    }
}
