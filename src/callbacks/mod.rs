//! OSS upload callbacks (docs/callbacks.md): what ossvend puts into a form or
//! URL so that OSS calls back after storing the object (the `callback`
//! parameter and ossvend's signed custom variables), and what it checks when
//! the call arrives ([`verify`], [`Notification::parse`], [`check_vars`]).

pub mod verify;

use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

pub use verify::{CallbackRequest, HttpKeySource, KeyHosts, KeySource, Refusal, Verifier};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The custom variables ossvend fills per issuance, in the order sent.
/// `x:upload` is the upload id of a session's CompleteMultipartUpload, empty for a form or URL.
pub const VAR_NAMES: [&str; 6] = [
    "x:grant",
    "x:subject",
    "x:request_id",
    "x:prefix",
    "x:upload",
    "x:sig",
];

/// The callback body OSS sends, as JSON: OSS writes each variable as a JSON
/// value (strings quoted and escaped), so the template leaves them unquoted.
pub const JSON_BODY: &str = concat!(
    r#"{"bucket":${bucket},"object":${object},"etag":${etag},"size":${size},"mimeType":${mimeType},"#,
    r#""grant":${x:grant},"subject":${x:subject},"request_id":${x:request_id},"prefix":${x:prefix},"upload":${x:upload},"sig":${x:sig}}"#
);

/// The same body as a form (`callbackBodyType = application/x-www-form-urlencoded`).
pub const FORM_BODY: &str = concat!(
    "bucket=${bucket}&object=${object}&etag=${etag}&size=${size}&mimeType=${mimeType}",
    "&grant=${x:grant}&subject=${x:subject}&request_id=${x:request_id}&prefix=${x:prefix}&upload=${x:upload}&sig=${x:sig}"
);

/// The callback parameter of one grant (from `[grants.callback]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackParam<'a> {
    /// ossvend's public receiver, e.g. `https://ossvend.example.com/v1/callbacks/oss`.
    pub url: &'a str,
    /// `Host` header OSS sends, when it differs from the URL's.
    pub host: Option<&'a str>,
    /// JSON (default) or form body.
    pub form_body: bool,
    /// `callbackSNI`: OSS sends SNI on an https callback (needed behind SNI-routed proxies).
    pub sni: bool,
}

impl CallbackParam<'_> {
    /// `base64(JSON)`: the `callback` form field or query parameter.
    pub fn to_base64(&self) -> String {
        let mut doc = serde_json::Map::new();
        doc.insert("callbackUrl".into(), self.url.into());
        if let Some(h) = self.host {
            doc.insert("callbackHost".into(), h.into());
        }
        let (body, ty) = if self.form_body {
            (FORM_BODY, "application/x-www-form-urlencoded")
        } else {
            (JSON_BODY, "application/json")
        };
        doc.insert("callbackBody".into(), body.into());
        doc.insert("callbackBodyType".into(), ty.into());
        if self.sni {
            doc.insert("callbackSNI".into(), true.into());
        }
        B64.encode(serde_json::Value::Object(doc).to_string())
    }
}

/// Who an upload right was issued to: what ossvend signs into the custom
/// variables and believes back from a verified callback.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Issuance {
    pub grant: String,
    pub subject: String,
    pub request_id: String,
    /// The prefix the upload was bound to (a per-caller prefix resolved).
    pub prefix: String,
    /// The session's OSS upload id (CompleteMultipartUpload); empty for a form or presigned URL.
    pub upload: String,
}

/// `x:sig`: base64url(HMAC-SHA256(key, JSON [grant, subject, request_id, prefix, upload])).
/// JSON makes the joining unambiguous whatever the values contain.
fn var_signature(key: &[u8], i: &Issuance) -> Vec<u8> {
    let text = serde_json::json!([
        "ossvend-callback-v1",
        i.grant,
        i.subject,
        i.request_id,
        i.prefix,
        i.upload
    ])
    .to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(text.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// The custom variables for one issuance, `x:sig` last.
pub fn custom_vars(key: &[u8], i: &Issuance) -> Vec<(&'static str, String)> {
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(var_signature(key, i));
    VAR_NAMES
        .into_iter()
        .zip([
            i.grant.clone(),
            i.subject.clone(),
            i.request_id.clone(),
            i.prefix.clone(),
            i.upload.clone(),
            sig,
        ])
        .collect()
}

/// `base64(JSON {"x:grant": …})`: the `callback-var` field or query parameter.
pub fn vars_to_base64(vars: &[(&str, String)]) -> String {
    let doc: serde_json::Map<String, serde_json::Value> = vars
        .iter()
        .map(|(k, v)| ((*k).to_string(), v.clone().into()))
        .collect();
    B64.encode(serde_json::Value::Object(doc).to_string())
}

/// The key that signs custom variables, derived from the webhook secret so
/// that replicas sharing it agree and one secret is managed, not two.
pub fn vars_key(webhook_secret: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(webhook_secret).expect("HMAC takes any key length");
    mac.update(b"ossvend callback variables v1");
    mac.finalize().into_bytes().to_vec()
}

/// What a verified callback says about the stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub bucket: String,
    pub key: String,
    pub etag: String,
    pub size: u64,
    pub content_type: String,
    pub issuance: Issuance,
    pub sig: String,
}

/// Why a signed callback's content is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the callback body is not the JSON or form ossvend asked OSS for: {0}")]
    Malformed(String),
    #[error("the callback's custom variables were not issued by ossvend")]
    ForeignVars,
    #[error("the object {0:?} is not under the issued prefix")]
    OutsidePrefix(String),
    #[error("grant {0:?} is unknown or has no callback")]
    UnknownGrant(String),
}

impl BodyError {
    pub fn code(&self) -> &'static str {
        match self {
            BodyError::Malformed(_) => "callback_body_invalid",
            BodyError::ForeignVars => "callback_vars_invalid",
            BodyError::OutsidePrefix(_) => "callback_key_outside_prefix",
            BodyError::UnknownGrant(_) => "callback_grant_unknown",
        }
    }
}

impl Notification {
    /// Parses the body of [`JSON_BODY`] or [`FORM_BODY`], by its Content-Type.
    pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Self, BodyError> {
        let form = content_type.is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
        let fields: std::collections::HashMap<String, String> = if form {
            url::form_urlencoded::parse(body).into_owned().collect()
        } else {
            let v: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(body).map_err(|e| BodyError::Malformed(e.to_string()))?;
            v.into_iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => (k, s),
                    other => (k, other.to_string()),
                })
                .collect()
        };
        let get = |name: &str| {
            fields
                .get(name)
                .cloned()
                .ok_or_else(|| BodyError::Malformed(format!("no {name:?}")))
        };
        let size = get("size")?
            .parse::<u64>()
            .map_err(|_| BodyError::Malformed("size is not a number".into()))?;
        Ok(Notification {
            bucket: get("bucket")?,
            key: get("object")?,
            etag: get("etag")?.trim_matches('"').to_string(),
            size,
            content_type: get("mimeType")?,
            issuance: Issuance {
                grant: get("grant")?,
                subject: get("subject")?,
                request_id: get("request_id")?,
                prefix: get("prefix")?,
                upload: get("upload")?,
            },
            sig: get("sig")?,
        })
    }
}

/// The custom variables are ossvend's own (`x:sig` matches, in constant time)
/// and the object lies under the prefix they name.
pub fn check_vars(key: &[u8], n: &Notification) -> Result<(), BodyError> {
    use subtle::ConstantTimeEq as _;
    let sent = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(n.sig.as_bytes())
        .map_err(|_| BodyError::ForeignVars)?;
    let want = var_signature(key, &n.issuance);
    if !bool::from(sent.ct_eq(&want)) {
        return Err(BodyError::ForeignVars);
    }
    if !n.key.starts_with(&n.issuance.prefix) || n.key.len() == n.issuance.prefix.len() {
        return Err(BodyError::OutsidePrefix(n.key.clone()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuance() -> Issuance {
        Issuance {
            grant: "avatars".into(),
            subject: "api_key.alice".into(),
            request_id: "r-1".into(),
            prefix: "users/alice/".into(),
            upload: String::new(),
        }
    }

    /// Fills a body template as OSS does (JSON values / form-encoded).
    fn filled(form: bool, key: &str, vars: &[(&str, String)]) -> Vec<u8> {
        let mut values: Vec<(String, String)> = vec![
            ("bucket".into(), "b".into()),
            ("object".into(), key.into()),
            ("etag".into(), "ABC".into()),
            ("size".into(), "3".into()),
            ("mimeType".into(), "image/png".into()),
        ];
        values.extend(vars.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let mut out = if form { FORM_BODY } else { JSON_BODY }.to_string();
        for (k, v) in values {
            let rendered = if form {
                url::form_urlencoded::byte_serialize(v.as_bytes()).collect()
            } else if k == "size" {
                v
            } else {
                serde_json::Value::from(v).to_string()
            };
            out = out.replace(&format!("${{{k}}}"), &rendered);
        }
        out.into_bytes()
    }

    #[test]
    fn ossvends_own_vars_pass_and_a_swapped_subject_or_prefix_does_not() {
        let key = vars_key(b"whsec-test-not-a-secret");
        let vars = custom_vars(&key, &issuance());
        for form in [false, true] {
            let ct = form.then_some("application/x-www-form-urlencoded");
            let n = Notification::parse(ct, &filled(form, "users/alice/a.png", &vars)).unwrap();
            assert_eq!(n.issuance, issuance());
            assert_eq!((n.size, n.etag.as_str()), (3, "ABC"));
            check_vars(&key, &n).unwrap();

            let outside = Notification::parse(ct, &filled(form, "users/bob/a.png", &vars)).unwrap();
            assert_eq!(
                check_vars(&key, &outside),
                Err(BodyError::OutsidePrefix("users/bob/a.png".into()))
            );

            let mut swapped = vars.clone();
            swapped[1].1 = "api_key.bob".into();
            let n = Notification::parse(ct, &filled(form, "users/alice/a.png", &swapped)).unwrap();
            assert_eq!(check_vars(&key, &n), Err(BodyError::ForeignVars));
            let mut widened = vars.clone();
            widened[3].1 = "users/".into();
            let n = Notification::parse(ct, &filled(form, "users/bob/a.png", &widened)).unwrap();
            assert_eq!(check_vars(&key, &n), Err(BodyError::ForeignVars));

            // A session's upload id is covered by x:sig: another upload's id is refused.
            let session = Issuance {
                upload: "U-1".into(),
                ..issuance()
            };
            let mut rebound = custom_vars(&key, &session);
            let n = Notification::parse(ct, &filled(form, "users/alice/a.png", &rebound)).unwrap();
            assert_eq!(n.issuance.upload, "U-1");
            check_vars(&key, &n).unwrap();
            rebound[4].1 = "U-2".into();
            let n = Notification::parse(ct, &filled(form, "users/alice/a.png", &rebound)).unwrap();
            assert_eq!(check_vars(&key, &n), Err(BodyError::ForeignVars));
        }
        let other_key = vars_key(b"another-secret");
        let n = Notification::parse(None, &filled(false, "users/alice/a.png", &vars)).unwrap();
        assert_eq!(check_vars(&other_key, &n), Err(BodyError::ForeignVars));
    }

    #[test]
    fn the_callback_parameter_is_base64_json_as_oss_documents() {
        let p = CallbackParam {
            url: "https://ossvend.example.com/v1/callbacks/oss",
            host: None,
            form_body: false,
            sni: true,
        };
        let doc: serde_json::Value = serde_json::from_slice(&B64.decode(p.to_base64()).unwrap()).unwrap();
        assert_eq!(doc["callbackUrl"], "https://ossvend.example.com/v1/callbacks/oss");
        assert_eq!(doc["callbackBodyType"], "application/json");
        assert_eq!(doc["callbackBody"], JSON_BODY);
        assert_eq!(doc["callbackSNI"], true);
        assert!(doc.get("callbackHost").is_none());
    }
}
