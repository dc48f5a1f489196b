//! Upload callbacks as OSS performs them (docs/callbacks.md): after storing an
//! object uploaded with a `callback` parameter, the sink POSTs the filled
//! `callbackBody` to `callbackUrl`, signed with RSA PKCS#1 v1.5 over MD5 of
//! `path + ?query + "\n" + body`, naming its key in `x-oss-pub-key-url`; the
//! callback's 200 JSON reply becomes the upload's answer, anything else a 203
//! `CallbackFailed` (the object stays stored).
//!
//! The key is a throwaway 1024-bit pair (as OSS's own key) made on first use and
//! published at [`KEY_PATH`] on the sink's listener. It signs with the `rsa`
//! crate's private-key operation (RUSTSEC-2023-0071: a timing side channel),
//! acceptable here only: loopback, development, a key that never leaves the process.

use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use md5_rsa::{Digest as _, Md5};
use rsa::pkcs8::{EncodePublicKey as _, LineEnding};
use rsa::{Pkcs1v15Sign, RsaPrivateKey};

use super::OssError;
use crate::callbacks::CallbackRequest;
use crate::local::store::ObjectMeta;

/// Where the sink publishes its callback key (`_` keeps it clear of bucket names).
pub const KEY_PATH: &str = "/_ossvend/callback_pub_key_v1.pem";
/// OSS waits 5 seconds for the callback server.
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(5);

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[derive(Default)]
pub struct Signer {
    key: OnceLock<(RsaPrivateKey, String)>,
}

impl Signer {
    fn key(&self) -> &(RsaPrivateKey, String) {
        self.key.get_or_init(|| {
            let key = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024).expect("RSA key generation");
            let pem = key
                .to_public_key()
                .to_public_key_pem(LineEnding::LF)
                .expect("PEM encoding");
            (key, pem)
        })
    }

    /// The public key, PEM (served at [`KEY_PATH`]).
    pub fn public_pem(&self) -> String {
        self.key().1.clone()
    }

    fn sign(&self, message: &[u8]) -> String {
        let digest = Md5::digest(message);
        let sig = self
            .key()
            .0
            .sign(Pkcs1v15Sign::new::<Md5>(), &digest)
            .unwrap_or_default();
        B64.encode(sig)
    }
}

/// The `callback` parameter (base64 JSON) as OSS reads it.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Param {
    callback_url: String,
    #[serde(default)]
    callback_host: Option<String>,
    #[serde(default)]
    callback_body: String,
    #[serde(default)]
    callback_body_type: Option<String>,
}

/// What OSS answers the uploader after the callback.
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

fn invalid(msg: &str) -> OssError {
    OssError::msg("InvalidArgument", msg.to_string())
}

/// Decodes `callback` and the custom variables (base64 JSON `callback-var`,
/// or `x:` form fields), before the object is stored: a malformed callback
/// fails the upload, as with OSS.
pub fn parse(
    param: &str,
    vars_b64: Option<&str>,
    x_fields: &[(String, String)],
) -> Result<Prepared, OssError> {
    let param: Param = B64
        .decode(param.trim())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| invalid("The callback parameter is not base64 JSON."))?;
    let mut vars: Vec<(String, String)> = x_fields
        .iter()
        .filter(|(k, _)| k.starts_with("x:"))
        .cloned()
        .collect();
    if let Some(v) = vars_b64.filter(|v| !v.is_empty()) {
        let map: serde_json::Map<String, serde_json::Value> = B64
            .decode(v.trim())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| invalid("The callback-var parameter is not base64 JSON."))?;
        vars = map
            .into_iter()
            .map(|(k, v)| (k, v.as_str().map_or_else(|| v.to_string(), str::to_string)))
            .collect();
    }
    let url = param
        .callback_url
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(invalid("The callbackUrl is not an http(s) URL."));
    }
    Ok(Prepared {
        url,
        host: param.callback_host,
        body: param.callback_body,
        form: param.callback_body_type.as_deref() == Some("application/x-www-form-urlencoded"),
        vars,
    })
}

/// A PostObject form's callback: the `callback` field, and as OSS takes them
/// from a form, the custom variables as `x:` fields.
pub fn from_form(fields: &[(String, String)]) -> Result<Option<Prepared>, OssError> {
    match fields.iter().find(|(n, _)| n == "callback") {
        Some((_, param)) => parse(param, None, fields).map(Some),
        None => Ok(None),
    }
}

pub struct Prepared {
    url: String,
    host: Option<String>,
    body: String,
    form: bool,
    vars: Vec<(String, String)>,
}

impl Prepared {
    /// `callbackBody` with `${var}` filled: JSON values for a JSON body (size a
    /// number), form-encoded for a form body; an unknown variable is empty.
    fn fill(&self, meta: &ObjectMeta) -> String {
        let etag = meta.etag.trim_matches('"').to_string();
        let size = meta.size.to_string();
        let value = |name: &str| -> (String, bool) {
            match name {
                "bucket" => (meta.bucket.clone(), false),
                "object" => (meta.key.clone(), false),
                "etag" => (etag.clone(), false),
                "size" => (size.clone(), true),
                "mimeType" => (meta.content_type.clone(), false),
                _ => (
                    self.vars
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default(),
                    false,
                ),
            }
        };
        let mut out = String::new();
        let mut rest = self.body.as_str();
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let Some(end) = rest[start..].find('}') else { break };
            let (v, number) = value(&rest[start + 2..start + end]);
            if self.form {
                out.extend(url::form_urlencoded::byte_serialize(v.as_bytes()));
            } else if number {
                out.push_str(&v);
            } else {
                out.push_str(&serde_json::Value::from(v).to_string());
            }
            rest = &rest[start + end + 1..];
        }
        out.push_str(rest);
        out
    }

    /// Calls back for the stored object, as OSS does; `sink` is the sink's own
    /// origin (`http://127.0.0.1:PORT`), where its key is published.
    pub async fn perform(&self, signer: &Signer, meta: &ObjectMeta, sink: &str) -> Answer {
        let body = self.fill(meta);
        let Ok(url) = url::Url::parse(&self.url) else {
            return failed("The callbackUrl is not a URL.");
        };
        let to_sign = crate::callbacks::verify::string_to_sign(&CallbackRequest {
            path: url.path(),
            query: url.query(),
            body: body.as_bytes(),
            authorization: None,
            pub_key_url: None,
        });
        let signature = signer.sign(&to_sign);
        let content_type = if self.form {
            "application/x-www-form-urlencoded"
        } else {
            "application/json"
        };
        let client = match reqwest::Client::builder()
            .no_proxy()
            .timeout(CALLBACK_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
        {
            Ok(c) => c,
            Err(e) => return failed(&e.to_string()),
        };
        let mut req = client
            .post(url.clone())
            .header("content-type", content_type)
            .header("authorization", signature)
            .header("x-oss-pub-key-url", B64.encode(format!("{sink}{KEY_PATH}")))
            .body(body);
        if let Some(h) = &self.host {
            req = req.header("host", h.as_str());
        }
        match req.send().await {
            Ok(resp) if resp.status().as_u16() == 200 => {
                let text = resp.text().await.unwrap_or_default();
                if serde_json::from_str::<serde_json::Value>(&text).is_ok() {
                    Answer {
                        status: 200,
                        content_type: "application/json",
                        body: text,
                    }
                } else {
                    failed("The callback server's reply is not JSON.")
                }
            }
            Ok(resp) => failed(&format!(
                "Response body is not valid json format. (HTTP {})",
                resp.status().as_u16()
            )),
            Err(e) => failed(&format!("Error status : -1. {}", e.without_url())),
        }
    }
}

/// OSS's answer when the callback fails: 203 `CallbackFailed`; the object is stored.
fn failed(message: &str) -> Answer {
    Answer {
        status: 203,
        content_type: "application/xml",
        body: super::xml_doc(
            "Error",
            &[
                ("Code", "CallbackFailed"),
                ("Message", message),
                ("HostId", super::HOST_ID),
            ],
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_filled_as_oss_fills_it() {
        let vars = B64.encode(r#"{"x:grant":"g","x:sig":"a\"b"}"#);
        let param = B64.encode(
            serde_json::json!({
                "callbackUrl": "http://127.0.0.1:1/cb",
                "callbackBody": crate::callbacks::JSON_BODY,
                "callbackBodyType": "application/json",
            })
            .to_string(),
        );
        let p = parse(&param, Some(&vars), &[]).unwrap();
        let meta = ObjectMeta {
            bucket: "b".into(),
            key: "k \"1\".png".into(),
            size: 3,
            md5: String::new(),
            etag: "\"ABC\"".into(),
            content_type: "image/png".into(),
            auth: String::new(),
            last_modified: chrono::Utc::now(),
        };
        let body: serde_json::Value = serde_json::from_str(&p.fill(&meta)).unwrap();
        assert_eq!(body["object"], "k \"1\".png");
        assert_eq!(
            (body["size"].as_u64(), body["etag"].as_str()),
            (Some(3), Some("ABC"))
        );
        assert_eq!(
            (
                body["grant"].as_str(),
                body["sig"].as_str(),
                body["subject"].as_str()
            ),
            (Some("g"), Some("a\"b"), Some(""))
        );
        assert!(parse("not base64", None, &[]).is_err());
    }
}
