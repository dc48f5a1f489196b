//! Issue 18: OSS upload callbacks verified by ossvend, and the signed webhook to
//! the application.

mod common;

use std::collections::HashMap;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use common::*;
use ossvend::callbacks::{CallbackRequest, KeyHosts, KeySource, Refusal, Verifier};
use serde_json::{Value, json};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const OSS_KEY_URL: &str = "http://gosspublic.alicdn.com/callback_pub_key_v1.pem";

/// Signs `requests` with tests/fakes/oss_callback_signer.py (Python `cryptography`).
fn python_sign(requests: &Value) -> Value {
    let mut child = Command::new(venv_python())
        .arg(repo_root().join("tests/fakes/oss_callback_signer.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(json!({ "requests": requests }).to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Keys by URL, counting every fetch and remembering the URLs asked for.
#[derive(Default)]
struct Keys {
    pems: HashMap<String, String>,
    fetched: Mutex<Vec<String>>,
    count: AtomicUsize,
}

#[async_trait::async_trait]
impl KeySource for Keys {
    async fn fetch(&self, url: &str) -> Result<String, String> {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.fetched.lock().unwrap().push(url.to_string());
        self.pems.get(url).cloned().ok_or_else(|| "404".to_string())
    }
}

struct Case<'a> {
    path: &'a str,
    query: Option<&'a str>,
    body: &'a str,
    authorization: Option<&'a str>,
    key_url: Option<String>,
}

async fn check(v: &Verifier, c: &Case<'_>) -> Result<(), Refusal> {
    v.verify(&CallbackRequest {
        path: c.path,
        query: c.query,
        body: c.body.as_bytes(),
        authorization: c.authorization,
        pub_key_url: c.key_url.as_deref(),
    })
    .await
}

/// Requests signed by an independent implementation (Python `cryptography`,
/// signing as OSS documents) verify; each tampering, a key URL off the
/// allowlist, a wrong key and a missing header are refused, with the code the
/// receiver answers. Keys are fetched once per URL, only from the allowlist,
/// always over https.
#[tokio::test]
async fn python_signed_callbacks_verify_and_every_tampering_is_refused() {
    let json_body = r#"{"bucket":"b","object":"uploads/a.png","etag":"ABC","size":3,"mimeType":"image/png"}"#;
    let form_body = "bucket=b&object=uploads%2Fa.png&etag=ABC&size=3&mimeType=image%2Fpng";
    let reqs = json!([
        {"path": "/v1/callbacks/oss", "query": null, "body": json_body},
        {"path": "/v1/callbacks/o%73s", "query": "tenant=a%20b", "body": form_body},
    ]);
    let signed = python_sign(&reqs);
    let sig = |i: usize| signed["signatures"][i].as_str().unwrap().to_string();
    let other = |i: usize| signed["other_signatures"][i].as_str().unwrap().to_string();
    let https_url = OSS_KEY_URL.replace("http://", "https://");
    let keys = Arc::new(Keys {
        pems: HashMap::from([(
            https_url.clone(),
            signed["public_pem"].as_str().unwrap().to_string(),
        )]),
        ..Default::default()
    });
    let v = Verifier::new(KeyHosts::default(), keys.clone());
    let key_url = Some(B64.encode(OSS_KEY_URL));
    let (s0, s1) = (sig(0), sig(1));
    let good = [
        Case {
            path: "/v1/callbacks/oss",
            query: None,
            body: json_body,
            authorization: Some(&s0),
            key_url: key_url.clone(),
        },
        Case {
            path: "/v1/callbacks/o%73s",
            query: Some("tenant=a%20b"),
            body: form_body,
            authorization: Some(&s1),
            key_url: key_url.clone(),
        },
    ];
    for c in &good {
        assert_eq!(check(&v, c).await, Ok(()));
    }

    let bad_sig = Err(Refusal::BadSignature);
    let tampered_body = json_body.replace("\"size\":3", "\"size\":4");
    let w0 = other(0);
    let cases: Vec<(Case, Result<(), Refusal>, &str)> = vec![
        (
            Case {
                path: "/v1/callbacks/oss2",
                ..clone(&good[0])
            },
            bad_sig.clone(),
            "callback_signature_invalid",
        ),
        (
            Case {
                query: Some("tenant=b"),
                ..clone(&good[1])
            },
            bad_sig.clone(),
            "callback_signature_invalid",
        ),
        (
            Case {
                query: None,
                ..clone(&good[1])
            },
            bad_sig.clone(),
            "callback_signature_invalid",
        ),
        (
            Case {
                body: &tampered_body,
                ..clone(&good[0])
            },
            bad_sig.clone(),
            "callback_signature_invalid",
        ),
        (
            Case {
                authorization: Some(&w0),
                ..clone(&good[0])
            },
            bad_sig.clone(),
            "callback_signature_invalid",
        ),
        (
            Case {
                authorization: Some("not base64!"),
                ..clone(&good[0])
            },
            Err(Refusal::MalformedSignature),
            "callback_signature_invalid",
        ),
        (
            Case {
                authorization: None,
                ..clone(&good[0])
            },
            Err(Refusal::Unsigned("Authorization")),
            "callback_unsigned",
        ),
        (
            Case {
                key_url: None,
                ..clone(&good[0])
            },
            Err(Refusal::Unsigned("x-oss-pub-key-url")),
            "callback_unsigned",
        ),
        (
            Case {
                key_url: Some(B64.encode("http://127.0.0.1:1/attacker.pem")),
                ..clone(&good[0])
            },
            Err(Refusal::KeyUrlNotAllowed(
                "http://127.0.0.1:1/attacker.pem".into(),
            )),
            "callback_key_url_refused",
        ),
        (
            Case {
                key_url: Some("%%%".into()),
                ..clone(&good[0])
            },
            Err(Refusal::MalformedKeyUrl),
            "callback_key_url_refused",
        ),
    ];
    for (c, want, code) in &cases {
        let got = check(&v, c).await;
        assert_eq!(&got, want, "{} {:?}", c.path, c.query);
        assert_eq!(got.unwrap_err().code(), *code);
    }
    // An allowed URL whose key is not the one that signed: refused too.
    let v2 = Verifier::new(
        KeyHosts::default(),
        Arc::new(Keys {
            pems: HashMap::from([(
                https_url.clone(),
                signed["other_public_pem"].as_str().unwrap().to_string(),
            )]),
            ..Default::default()
        }),
    );
    assert_eq!(check(&v2, &good[0]).await, bad_sig);
    // An allowed URL with no key behind it: unavailable, not believed.
    let missing = Case {
        key_url: Some(B64.encode("https://gosspublic.alicdn.com/callback_pub_key_v9.pem")),
        ..clone(&good[0])
    };
    assert_eq!(
        check(&v, &missing).await.unwrap_err().code(),
        "callback_key_unavailable"
    );

    // One fetch for the good key (cached across 2 + 9 verifications), one for
    // the missing one; never a URL off the allowlist, never plain http.
    let fetched = keys.fetched.lock().unwrap().clone();
    assert_eq!(
        fetched,
        [
            https_url,
            "https://gosspublic.alicdn.com/callback_pub_key_v9.pem".into()
        ]
    );
}

fn clone<'a>(c: &Case<'a>) -> Case<'a> {
    Case {
        path: c.path,
        query: c.query,
        body: c.body,
        authorization: c.authorization,
        key_url: c.key_url.clone(),
    }
}
