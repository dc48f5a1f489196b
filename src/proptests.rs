//! Property tests over the parsers and renderers that take outside input:
//! templates and principals, the explicit policy template, percent-encoding and
//! the presigned-URL round trip, tickets, the credential headers, config text.
//!
//! Bounded for CI: each property runs `PROPTEST_CASES` cases (proptest's
//! default, 256; the whole module takes seconds). A longer run, e.g. before a
//! release:
//!
//! ```sh
//! PROPTEST_CASES=50000 cargo test --release --lib proptests
//! ```
//!
//! A failing case is shrunk and written to `proptest-regressions/`, which is
//! committed so every later run replays it first. Cases found and fixed are
//! listed in `docs/testing.md`.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone as _, Utc};
use proptest::prelude::*;
use serde_json::Value;

use crate::policy::template::{self, Placeholders, Values};
use crate::policy::{self, MAX_POLICY_CHARS, PolicyTemplate};
use crate::sign::{self, AddressingStyle, Endpoint, RequestToSign, SigningCredentials};

/// Any string, weighted towards the characters that matter to templates,
/// JSON, URLs and paths.
fn hostile_string(max: usize) -> impl Strategy<Value = String> {
    let interesting = prop::sample::select(vec![
        '/', '.', '*', '?', '"', '\'', '\\', '{', '}', '$', '%', '+', ' ', '\t', '\n', '\0', '#', '&', '=',
        ':', ',', '[', ']', '~', '-', '_', '@', 'é', '中', '\u{202e}', '\u{feff}',
    ]);
    prop::collection::vec(
        prop_oneof![3 => any::<char>(), 2 => interesting, 5 => prop::char::range('a', 'z')],
        0..max,
    )
    .prop_map(|cs| cs.into_iter().collect())
}

fn values<'a>(
    subject: Option<&'a str>,
    claims: &'a BTreeMap<String, String>,
    p: &'a Placeholders,
) -> Values<'a> {
    Values {
        subject,
        subject_namespace: None,
        claims,
        server: &[("date", "20260101")],
        placeholders: p,
    }
}

/// A rendered session policy is JSON, fits STS's limit, and every resource
/// stays under the literal part of the grant's prefix.
fn assert_policy_stays_inside(doc: &str, bucket: &str, literal_prefix: &str) {
    assert!(doc.chars().count() <= MAX_POLICY_CHARS);
    let v: Value = serde_json::from_str(doc).expect("a rendered policy is JSON");
    for st in v["Statement"].as_array().expect("statements") {
        let resources = match &st["Resource"] {
            Value::String(s) => vec![s.clone()],
            Value::Array(a) => a.iter().map(|r| r.as_str().unwrap().to_owned()).collect(),
            other => panic!("resource {other}"),
        };
        for r in resources {
            let rest = r
                .strip_prefix(&format!("acs:oss:*:*:{bucket}/{literal_prefix}"))
                .unwrap_or_else(|| panic!("{r} leaves {bucket}/{literal_prefix}"));
            // The caller's part adds no wildcard and no path step; only the template's final `*`.
            let caller_part = rest.strip_suffix('*').unwrap_or(rest);
            assert!(!caller_part.contains(['*', '?']), "{r}");
            assert!(!caller_part.contains(".."), "{r}");
        }
    }
}

proptest! {
    /// `{subject}` and `{claim.*}` values either render verbatim into a safe
    /// prefix and policy, or are refused; never escaped into something wider.
    #[test]
    fn templates_render_safe_prefixes_or_refuse(subject in hostile_string(80), tenant in hostile_string(20)) {
        let claims = BTreeMap::from([("tenant".to_string(), tenant.clone())]);
        let p = Placeholders::default();
        let v = values(Some(&subject), &claims, &p);
        match template::render("users/{claim.tenant}/{subject}/", &v) {
            Ok(prefix) => {
                let expected = ["users/", &tenant, "/", &subject, "/"].concat();
                prop_assert_eq!(&prefix, &expected);
                prop_assert!(p.allows("subject", &subject) && p.allows("claim.tenant", &tenant));
                prop_assert_eq!(prefix.matches('/').count(), 3);
                let doc = policy::render_prefix_policy("examplebucket", &prefix, &["oss:PutObject".into()]).unwrap();
                assert_policy_stays_inside(&doc, "examplebucket", "users/");
                let session = template::session_name(&prefix);
                prop_assert!((2..=64).contains(&session.len()));
                prop_assert!(session.bytes().all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b)));
            }
            Err(template::TemplateError::InvalidPrincipal(_)) => {
                prop_assert!(!p.allows("subject", &subject) || !p.allows("claim.tenant", &tenant));
            }
        }
    }

    /// An explicit policy template: placeholders only inside strings; the
    /// document's structure never changes, whatever the caller's value.
    #[test]
    fn explicit_policy_templates_keep_their_structure(subject in hostile_string(80)) {
        let t = PolicyTemplate::parse(
            r#"{"Version":"1","Statement":[
                {"Effect":"Allow","Action":["oss:PutObject"],"Resource":["acs:oss:*:*:b/users/{subject}/*"]},
                {"Effect":"Deny","Action":"oss:*","Resource":"acs:oss:*:*:b/users/{subject}/private/*"}]}"#,
        )
        .unwrap();
        let claims = BTreeMap::new();
        let p = Placeholders::default();
        let v = values(Some(&subject), &claims, &p);
        match t.render(|s| template::render(s, &v)) {
            Ok(Ok(doc)) => {
                assert_policy_stays_inside(&doc, "b", "users/");
                let parsed: Value = serde_json::from_str(&doc).unwrap();
                prop_assert_eq!(parsed["Statement"].as_array().unwrap().len(), 2);
                prop_assert_eq!(&parsed["Statement"][1]["Effect"], "Deny");
            }
            Ok(Err(policy::PolicyError::TooLong(_))) => {}
            Ok(Err(e)) => prop_assert!(false, "{e}"),
            Err(_) => prop_assert!(!p.allows("subject", &subject)),
        }
        // Even a renderer that inserts anything at all cannot change the shape.
        let raw = t.render(|s| Ok::<_, ()>(s.replace("{subject}", &subject))).unwrap();
        if let Ok(doc) = raw {
            let parsed: Value = serde_json::from_str(&doc).unwrap();
            prop_assert_eq!(parsed["Statement"].as_array().unwrap().len(), 2);
        }
    }

    /// Only a clean extension of a client's filename reaches a key.
    #[test]
    fn filename_extensions_are_sanitised(filename in hostile_string(40)) {
        let ext = policy::sanitize_ext(&filename);
        prop_assert!(ext.is_empty() || (ext.starts_with('.') && (2..=11).contains(&ext.len())));
        prop_assert!(ext.chars().skip(1).all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
    }

    /// The signers' encoder is RFC 3986's: it agrees with an independent
    /// implementation and decodes back to its input.
    #[test]
    fn percent_encoding_agrees_and_round_trips(s in hostile_string(60)) {
        use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
        const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
        const PATH: &AsciiSet = &UNRESERVED.remove(b'/');
        let e = sign::encode::pct(&s);
        prop_assert_eq!(&e, &utf8_percent_encode(&s, UNRESERVED).to_string());
        prop_assert_eq!(sign::encode::pct_path(&s), utf8_percent_encode(&s, PATH).to_string());
        prop_assert_eq!(percent_decode_str(&e).decode_utf8().unwrap(), s.as_str());
    }

    /// A presigned URL, as a client sends it and a server parses it back,
    /// verifies for exactly the object, method and headers it was signed for.
    #[test]
    #[cfg(feature = "local")]
    fn presigned_urls_verify_after_a_round_trip_through_the_wire(
        key in "[^/\\x00-\\x1f][^\\x00-\\x1f]{0,40}",
        content_type in "[a-z]{1,8}/[a-z0-9.+-]{1,12}",
        secs in 946_684_800i64..3_786_912_000,
        v4 in any::<bool>(),
        token in proptest::option::of("CAIS[A-Za-z0-9+/=]{8,40}"),
    ) {
        let at = Utc.timestamp_opt(secs, 0).unwrap();
        let creds = SigningCredentials {
            access_key_id: "STS.NPropTestFakeKey",
            access_key_secret: "fakePropTestSecret",
            security_token: token.as_deref(),
        };
        let headers = [("Content-Type", content_type.as_str())];
        let req = RequestToSign { method: "PUT", bucket: Some("local-bucket"), key: &key, headers: &headers, query: &[] };
        let ep = Endpoint { base: "http://127.0.0.1:8001", style: AddressingStyle::Path };
        let signed = if v4 {
            sign::oss_v4::presign_url(&creds, &req, &sign::oss_v4::V4Scope::oss("cn-hangzhou"), &[], &ep, at, 900)
        } else {
            sign::oss_v1::presign_url(&creds, &req, &ep, at, 900)
        };
        let Ok(signed) = signed else { return Ok(()) }; // a key the signer refuses is not sent
        let verdict = |method: &str, key: &str, ct: &str| wire_verdict(&signed.url, method, key, ct, &creds, at);
        let url = url::Url::parse(&signed.url).unwrap();
        let path = percent_encoding::percent_decode_str(url.path()).decode_utf8().unwrap().into_owned();
        prop_assert_eq!(path.strip_prefix("/local-bucket/"), Some(key.as_str()));
        prop_assert_eq!(verdict("PUT", &key, &content_type), Ok(()));
        let other_key = key.clone() + "x";
        prop_assert!(verdict("PUT", &other_key, &content_type).is_err());
        prop_assert!(verdict("GET", &key, &content_type).is_err());
        prop_assert!(verdict("PUT", &key, "text/html").is_err());
    }

    /// Tickets: what is minted verifies to what went in; anything else, and
    /// any one-character change of a real ticket, is refused without a panic.
    #[test]
    fn tickets_round_trip_and_refuse_tampering(
        subject in hostile_string(40),
        claim in hostile_string(20),
        garbage in hostile_string(120),
        flip in any::<prop::sample::Index>(),
    ) {
        let tickets = crate::auth::ticket::Tickets::new(Some(vec![7; 32]), std::time::Duration::from_secs(300));
        let now = Utc.timestamp_opt(1_800_000_000, 0).unwrap();
        let claims = BTreeMap::from([("tenant".to_string(), claim)]);
        let (t, _) = tickets.mint(&subject, None, "g", &claims, now);
        let ok = tickets.verify(&t, "g", now).unwrap();
        prop_assert_eq!(&ok.subject, &subject);
        prop_assert_eq!(&ok.claims, &claims);
        prop_assert!(tickets.verify(&t, "other", now).is_err());
        prop_assert!(tickets.verify(&garbage, "g", now).is_err());
        let mut bytes = t.into_bytes();
        let i = flip.index(bytes.len());
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        prop_assert!(tickets.verify(&tampered, "g", now).is_err());
    }

    /// Whatever the headers and query hold, reading the presented credentials
    /// never panics, and a value is only ever taken from its own scheme.
    #[test]
    fn presented_credentials_parse_without_panics(
        authorization in proptest::collection::vec(any::<u8>(), 0..80),
        api_key in proptest::collection::vec(any::<u8>(), 0..40),
        query in hostile_string(80),
    ) {
        use axum::http::{HeaderMap, HeaderValue};
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_bytes(&authorization) {
            h.insert("authorization", v);
        }
        if let Ok(v) = HeaderValue::from_bytes(&api_key) {
            h.insert("x-api-key", v);
        }
        let p = crate::auth::Presented::from_request(&h, Some(&query));
        if let Some(b) = p.bearer {
            let a = h.get("authorization").unwrap().to_str().unwrap();
            prop_assert!(a.get(..6).is_some_and(|s| s.eq_ignore_ascii_case("bearer")));
            prop_assert!(a.contains(b));
        }
    }

    /// Config text from anywhere: parsing never panics, and an error never
    /// repeats the value of a secret.
    #[test]
    fn config_parsing_never_panics_nor_echoes_secrets(text in hostile_string(200), secret in "[A-Za-z0-9]{24}") {
        let env = BTreeMap::new();
        let _ = crate::config::parse(&text, &env);
        // The secret's line itself broken (text right after the value), or a later one.
        for with_secret in [
            format!("[identity]\naccess_key_secret = \"{secret}\"{text}\n"),
            format!("[identity]\naccess_key_secret = \"{secret}{text}\n"),
            format!("[identity]\naccess_key_secret = \"{secret}\"\n{text}"),
        ] {
            if let Err(e) = crate::config::parse(&with_secret, &env) {
                prop_assert!(!e.contains(&secret), "{}", e);
            }
        }
    }
}

#[cfg(feature = "local")]
/// Sends the presigned URL through a URL parser, as the sink's HTTP layer
/// receives it, with `method`, object `key` and Content-Type possibly changed,
/// and returns the sink's verdict.
fn wire_verdict(
    signed_url: &str,
    method: &str,
    key: &str,
    content_type: &str,
    creds: &SigningCredentials<'_>,
    at: DateTime<Utc>,
) -> Result<(), String> {
    use crate::local::verify::{Credential, Payload, Received, authenticate};
    let url = url::Url::parse(signed_url).map_err(|e| e.to_string())?;
    let query: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let headers = vec![
        ("host".to_string(), "127.0.0.1:8001".to_string()),
        ("content-type".to_string(), content_type.to_string()),
    ];
    let received = Received {
        method,
        bucket: Some("local-bucket"),
        key: Some(key),
        query: &query,
        headers: &headers,
        payload: Payload::Bytes(b""),
    };
    let known = Credential {
        access_key_id: creds.access_key_id.to_string(),
        access_key_secret: creds.access_key_secret.to_string(),
        security_token: creds.security_token.map(str::to_string),
        expiration: None,
        policy: None,
    };
    let lookup = move |id: &str| (id == known.access_key_id).then(|| known.clone());
    authenticate(&received, &lookup, at + chrono::TimeDelta::seconds(1))
        .map(|_| ())
        .map_err(|e| format!("{} {}", e.code, e.message))
}

#[cfg(feature = "local")]
/// A JSON value shaped like a PostObject policy condition, or not quite.
fn condition() -> impl Strategy<Value = Value> {
    let field = prop_oneof![
        Just("$key".to_string()),
        Just("$success_action_status".to_string()),
        Just("$content-type".to_string()),
        Just("$x-oss-object-acl".to_string()),
        Just("bucket".to_string()),
        hostile_string(12),
    ];
    let op = prop_oneof![
        Just("eq"),
        Just("starts-with"),
        Just("in"),
        Just("not-in"),
        Just("content-length-range"),
        Just("ends-with"),
    ];
    let scalar = prop_oneof![
        hostile_string(16).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        Just(Value::Null),
    ];
    let list = prop::collection::vec(scalar.clone(), 0..4).prop_map(Value::Array);
    prop_oneof![
        (op, field.clone(), prop_oneof![scalar.clone(), list])
            .prop_map(|(o, f, v)| serde_json::json!([o, f, v])),
        (any::<i64>(), any::<i64>()).prop_map(|(a, b)| serde_json::json!(["content-length-range", a, b])),
        (field, scalar.clone()).prop_map(|(f, v)| serde_json::json!({ f.trim_start_matches('$'): v })),
        scalar,
    ]
}

#[cfg(feature = "local")]
proptest! {
    /// The local sink's PostObject checks (policy JSON, every condition form,
    /// expiry, fields) take whatever a signed form holds without a panic, and
    /// never accept a file larger than a size condition allows.
    #[test]
    fn the_sinks_post_policy_checks_take_any_signed_policy(
        conditions in prop::collection::vec(condition(), 0..6),
        expiration in prop_oneof![Just("2030-01-01T00:00:00.000Z".to_string()), hostile_string(30)],
        key in hostile_string(30),
        file_size in 0u64..5000,
        extra in prop::collection::vec((hostile_string(12), hostile_string(12)), 0..4),
    ) {
        use crate::local::verify::{Credential, PostFields, verify_post};
        let policy = serde_json::json!({ "expiration": expiration, "conditions": conditions }).to_string();
        let creds = SigningCredentials { access_key_id: "LTAIPropFake", access_key_secret: "fakeSecret", security_token: None };
        let Ok(signed) = sign::post::sign_v1(&creds, &policy, &[("key", &key)]) else { return Ok(()) };
        let mut fields: Vec<(String, String)> = signed.fields.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect();
        fields.extend(extra.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)));
        let form = PostFields { fields: &fields, file_name: Some("a.bin"), file_content_type: None, file_size };
        let known = Credential {
            access_key_id: "LTAIPropFake".into(),
            access_key_secret: "fakeSecret".into(),
            security_token: None,
            expiration: None,
            policy: None,
        };
        let lookup = |id: &str| (id == known.access_key_id).then(|| known.clone());
        let now = Utc.timestamp_opt(1_800_000_000, 0).unwrap();
        if verify_post("local-bucket", &form, &lookup, now).is_ok() {
            for c in &conditions {
                if let Some([op, lo, hi]) = c.as_array().map(Vec::as_slice)
                    && op == "content-length-range"
                    && let (Some(lo), Some(hi)) = (lo.as_i64(), hi.as_i64())
                {
                    prop_assert!(lo <= file_size as i64 && file_size as i64 <= hi, "{policy}");
                }
            }
        }
    }

    /// The sink's other parsers of outside input: query strings, the
    /// CompleteMultipartUpload XML, the three date forms (which also read back
    /// what the signers write), and resource patterns of session policies.
    #[test]
    fn the_sinks_small_parsers_take_anything(
        text in hostile_string(120),
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        secs in 0i64..253_402_300_799,
        pattern in hostile_string(30),
    ) {
        use crate::local::{access, oss, verify};
        let _ = oss::parse_query(&text);
        let _ = oss::parse_complete_body(&bytes);
        let _ = oss::parse_complete_body(text.as_bytes());
        let _ = verify::parse_http_date(&text);
        let _ = verify::parse_iso_basic(&text, "x-oss-date");
        let _ = verify::parse_iso_extended(&text);
        let t = Utc.timestamp_opt(secs, 0).unwrap();
        prop_assert_eq!(verify::parse_http_date(&sign::format_http_date(t)), Some(t));
        prop_assert_eq!(verify::parse_iso_basic(&sign::format_iso8601_basic(t), "x-oss-date").ok(), Some(t));
        let _ = access::resource_matches(&pattern, "local-bucket", Some(&text));
        let exact = format!("acs:oss:*:*:local-bucket/{}", text);
        prop_assert!(access::resource_matches(&exact, "local-bucket", Some(&text)));
    }
}
