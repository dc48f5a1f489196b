//! PostObject policies and presigned PUT URLs from the running server, used for
//! real uploads to the embedded OSS sink of `ossvend local` (in this process,
//! [`EmbeddedOss`]), which verifies every signature, checks policy conditions and
//! the session policy of the STS credential, and stores the bytes. The
//! credentials come from the in-process STS ([`StsStub`]), whose state the sink
//! shares; the routes run in-process ([`TestApp`]).

use serde_json::{Value, json};

use crate::support::*;

fn upload_config(sts: &StsStub, oss: &EmbeddedOss, extra_grant: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
default_grant = "web"

[identity]
source = "env"

[sts]
endpoint = "{sts}"
role_arn = "{ROLE_ARN}"
retry_base_delay = "10ms"

[[grants]]
name = "web"
bucket = "examplebucket"
region = "cn-hangzhou"
endpoint = "{oss}"
prefix = "uploads/"
content_types = ["image/png", "text/plain"]
max_size_bytes = 1024

[[grants]]
name = "v1"
bucket = "examplebucket"
region = "cn-hangzhou"
endpoint = "{oss}"
prefix = "v1/"
post_version = "v1"
presign_scheme = "oss-v1"
{extra_grant}
"#,
        sts = sts.endpoint,
        oss = oss.endpoint
    )
}

/// A multipart/form-data body: the fields in order, the file last.
fn form_body(
    fields: &[(String, String)],
    filename: &str,
    content_type: &str,
    data: &[u8],
) -> (String, Vec<u8>) {
    let boundary = format!("----ossvendtest{}", uuid::Uuid::new_v4().simple());
    let mut body = Vec::new();
    for (k, v) in fields {
        body.extend(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n").as_bytes(),
        );
    }
    body.extend(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\nContent-Type: {content_type}\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend(data);
    body.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn fields_of(policy: &Value) -> Vec<(String, String)> {
    ordered_fields(policy["_raw"].as_str().expect("body fetched with get_json"))
}

async fn post_form(
    host: &str,
    fields: &[(String, String)],
    filename: &str,
    ct: &str,
    data: &[u8],
) -> (u16, String) {
    let (content_type, body) = form_body(fields, filename, ct, data);
    let r = http()
        .post(host)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn presign_put(p: &Value, data: &[u8], override_ct: Option<&str>) -> (u16, String) {
    let mut req = http().put(p["url"].as_str().unwrap()).body(data.to_vec());
    for (k, v) in p["headers"].as_object().unwrap() {
        let v = if k.eq_ignore_ascii_case("content-type") {
            override_ct.unwrap_or(v.as_str().unwrap())
        } else {
            v.as_str().unwrap()
        };
        req = req.header(k, v);
    }
    if p["headers"].as_object().unwrap().is_empty()
        && let Some(ct) = override_ct
    {
        req = req.header("content-type", ct);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

struct Env {
    sts: StsStub,
    oss: EmbeddedOss,
    app: TestApp,
}

async fn start(extra_grant: &str) -> Env {
    let sts = StsStub::start();
    let oss = EmbeddedOss::for_stub(&sts);
    let app = TestApp::new(&upload_config(&sts, &oss, extra_grant)).await;
    Env { sts, oss, app }
}

/// The parsed body, with the raw text kept under `_raw` (for field order).
async fn get_json(app: &TestApp, path: &str) -> (u16, Value) {
    let r = app.get(path).await;
    let status = r.status;
    let raw = r.text();
    let mut v: Value = serde_json::from_str(&raw).unwrap();
    if let Some(o) = v.as_object_mut() {
        o.insert("_raw".into(), Value::String(raw));
    }
    (status, v)
}

#[tokio::test]
async fn presigned_put_v4_and_v1_upload_and_are_bound_to_their_content_type() {
    let e = start("").await;
    for grant in ["web", "v1"] {
        let (status, p) = get_json(
            &e.app,
            &format!("/v1/grants/{grant}/presign?filename=Cat.PNG&content_type=image/png"),
        )
        .await;
        assert_eq!(status, 200, "{p}");
        let key = p["key"].as_str().unwrap();
        let prefix = if grant == "web" { "uploads/" } else { "v1/" };
        assert!(key.starts_with(prefix) && key.ends_with(".png"), "{key}");
        assert_eq!(p["method"], "PUT");
        // A client-given filename shapes the key: the URL may never overwrite (issue 17).
        assert_eq!(
            p["headers"],
            json!({ "Content-Type": "image/png", "x-oss-forbid-overwrite": "true" })
        );
        assert_eq!(p["scheme"], if grant == "web" { "oss-v4" } else { "oss-v1" });
        let url = p["url"].as_str().unwrap();
        assert!(
            url.starts_with(&format!("{}/examplebucket/{prefix}", e.oss.endpoint)),
            "{url}"
        );

        // Another Content-Type than the signed one is refused by OSS.
        let (status, body) = presign_put(&p, b"png bytes", Some("image/jpeg")).await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("SignatureDoesNotMatch"), "{body}");
        // Tampering with the signature is refused.
        let tampered = json!({ "url": url.replace("ignature=", "ignature=0"), "headers": p["headers"] });
        assert_eq!(presign_put(&tampered, b"x", None).await.0, 403);
        // The URL as issued uploads.
        let (status, body) = presign_put(&p, b"png bytes", None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            e.oss.object("examplebucket", key).await.as_deref(),
            Some(&b"png bytes"[..])
        );
    }
    // A credential for one grant is not valid in another grant's prefix.
    assert_eq!(e.oss.objects().await.len(), 2);
}

#[tokio::test]
async fn presign_refuses_disallowed_or_missing_content_types_and_unknown_grants() {
    let e = start("").await;
    let (status, body) = get_json(
        &e.app,
        "/v1/grants/web/presign?filename=x.html&content_type=text/html",
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str().unwrap()),
        (400, "content_type_not_allowed")
    );
    let (status, body) = get_json(&e.app, "/v1/grants/web/presign?filename=x.png").await;
    assert_eq!(
        (status, body["code"].as_str().unwrap()),
        (400, "content_type_required")
    );
    // A server-named key's extension must fit the type it is bound to (issue 13).
    for route in ["presign", "post-policy"] {
        let (status, body) = get_json(
            &e.app,
            &format!("/v1/grants/web/{route}?filename=evil.html&content_type=image/png"),
        )
        .await;
        assert_eq!(
            (status, body["code"].as_str().unwrap()),
            (422, "extension_mismatch"),
            "{body}"
        );
        assert!(body["message"].as_str().unwrap().contains(".png"), "{body}");
    }
    let (status, body) = get_json(&e.app, "/v1/grants/nope/presign").await;
    assert_eq!((status, body["code"].as_str().unwrap()), (404, "unknown_grant"));
    // The server names keys: a hostile filename contributes nothing but a clean extension.
    let (status, p) = get_json(
        &e.app,
        "/v1/grants/web/presign?filename=../../etc/passwd&content_type=text/plain",
    )
    .await;
    assert_eq!(status, 200);
    let key = p["key"].as_str().unwrap();
    assert!(
        key.starts_with("uploads/") && !key.contains("..") && !key.contains("passwd"),
        "{key}"
    );
    // POST with a JSON body works like GET.
    let r = e
        .app
        .post_json(
            "/v1/grants/web/presign",
            &[],
            &json!({ "filename": "a.txt", "content_type": "text/plain" }),
        )
        .await;
    assert_eq!(r.status, 200);
    let p = r.json();
    assert!(p["key"].as_str().unwrap().ends_with(".txt"));
    assert_eq!(presign_put(&p, b"hello", None).await.0, 200);
    assert_eq!(
        e.sts.call_count().await,
        1,
        "one STS call serves every signed upload of a grant"
    );
}

#[tokio::test]
async fn post_policy_v4_and_v1_forms_upload_and_enforce_their_conditions() {
    let e = start("").await;
    for grant in ["web", "v1"] {
        let ct = "text/plain";
        let (status, policy) = get_json(
            &e.app,
            &format!("/v1/grants/{grant}/post-policy?content_type={ct}"),
        )
        .await;
        assert_eq!(status, 200, "{policy}");
        let prefix = if grant == "web" { "uploads/" } else { "v1/" };
        assert_eq!(policy["dir"], prefix);
        assert_eq!(policy["version"], if grant == "web" { "v4" } else { "v1" });
        let host = policy["host"].as_str().unwrap();
        assert_eq!(host, format!("{}/examplebucket/", e.oss.endpoint));
        let fields = fields_of(&policy);
        assert_eq!(fields[0], ("key".to_string(), format!("{prefix}${{filename}}")));
        assert!(
            fields.iter().any(|(k, _)| k == "x-oss-security-token"),
            "STS-signed forms carry the token"
        );

        let (status, body) = post_form(host, &fields, "hello.txt", ct, b"hello form").await;
        assert_eq!(status, 200, "{grant}: {body}");
        assert_eq!(
            e.oss
                .object("examplebucket", &format!("{prefix}hello.txt"))
                .await
                .as_deref(),
            Some(&b"hello form"[..])
        );

        // A key outside the prefix.
        let mut outside = fields.clone();
        outside[0].1 = "elsewhere/x.txt".into();
        let (status, body) = post_form(host, &outside, "x.txt", ct, b"x").await;
        assert_eq!(status, 403, "{grant}: {body}");
        // Tampered signature.
        let mut tampered = fields.clone();
        for (k, v) in tampered.iter_mut() {
            if k.eq_ignore_ascii_case("signature") || k == "x-oss-signature" {
                v.replace_range(0..1, if v.starts_with('0') { "1" } else { "0" });
            }
        }
        let (status, body) = post_form(host, &tampered, "t.txt", ct, b"t").await;
        assert_eq!(status, 403, "{grant}: {body}");
        assert!(body.contains("SignatureDoesNotMatch"), "{body}");
        // Missing security token.
        let no_token: Vec<_> = fields
            .iter()
            .filter(|(k, _)| k != "x-oss-security-token")
            .cloned()
            .collect();
        let (status, _) = post_form(host, &no_token, "n.txt", ct, b"n").await;
        assert_eq!(status, 403, "{grant}: missing token accepted");
        for name in ["x.txt", "t.txt", "n.txt"] {
            assert!(
                e.oss
                    .object("examplebucket", &format!("{prefix}{name}"))
                    .await
                    .is_none()
            );
        }
    }
    // Over max_size_bytes (web grant: 1024).
    let (_, policy) = get_json(&e.app, "/v1/grants/web/post-policy?content_type=text/plain").await;
    let host = policy["host"].as_str().unwrap();
    let (status, body) = post_form(host, &fields_of(&policy), "big.txt", "text/plain", &[b'a'; 2000]).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("EntityTooLarge"), "{body}");
    // A content type outside the allowlist (the policy's `in` condition).
    let mut fields = fields_of(&policy);
    fields.iter_mut().find(|(k, _)| k == "Content-Type").unwrap().1 = "text/html".into();
    let (status, body) = post_form(host, &fields, "page.html", "text/html", b"<p>").await;
    assert_eq!(status, 403, "{body}");
    assert!(e.oss.object("examplebucket", "uploads/big.txt").await.is_none());
    assert!(e.oss.object("examplebucket", "uploads/page.html").await.is_none());
}

#[tokio::test]
async fn post_policy_with_a_filename_names_the_key_on_the_server() {
    let e = start("").await;
    let (status, policy) = get_json(
        &e.app,
        "/v1/grants/web/post-policy?filename=me.png&content_type=image/png",
    )
    .await;
    assert_eq!(status, 200);
    let key = policy["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("uploads/") && key.ends_with(".png"));
    let fields = fields_of(&policy);
    assert_eq!(fields[0], ("key".to_string(), key.clone()));
    let host = policy["host"].as_str().unwrap();
    // The policy binds that exact key: another one under the prefix is refused.
    let mut other = fields.clone();
    other[0].1 = "uploads/other.png".into();
    assert_eq!(
        post_form(host, &other, "me.png", "image/png", b"png").await.0,
        403
    );
    let (status, body) = post_form(host, &fields, "me.png", "image/png", b"png").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        e.oss.object("examplebucket", &key).await.as_deref(),
        Some(&b"png"[..])
    );
}

#[tokio::test]
async fn legacy_routes_keep_the_seed_shapes() {
    let e = start("").await;
    let (status, body) = get_json(
        &e.app,
        "/get_post_signature_for_oss_upload?content_type=text/plain",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for k in [
        "accessid",
        "ossAccessKeyId",
        "policy",
        "signature",
        "host",
        "dir",
        "expire",
        "fields",
        "security_token",
    ] {
        assert!(!body[k].is_null(), "missing {k} in {body}");
    }
    assert!(body["expire"].is_i64());
    assert!(body["accessid"].as_str().unwrap().starts_with("STS."));
    // The legacy presign returns the URL as plain text.
    let r = e
        .app
        .get("/get_presigned_url_for_oss_upload?content_type=text/plain")
        .await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").starts_with("text/plain"));
    let url = r.text();
    let put = http()
        .put(&url)
        .header("content-type", "text/plain")
        .body("legacy")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200, "{}", put.text().await.unwrap());
}

#[tokio::test]
async fn signed_uploads_never_outlive_the_signing_credential() {
    let sts = StsStub::start();
    // A credential with 100 s left, min_remaining 60 s: a 1 h upload window must shrink to it.
    sts.script(json!([{ "expires_in": 100 }])).await;
    let oss = EmbeddedOss::for_stub(&sts);
    let app = TestApp::with_env(
        &upload_config(&sts, &oss, "upload_expires = \"1h\""),
        &[
            ("OSSVEND_STS_MIN_REMAINING", "60s"),
            ("OSSVEND_STS_REFRESH_BEFORE", "120s"),
        ],
    )
    .await
    .unwrap();
    let cred_exp = sts.calls().await;
    let (_, p) = get_json(&app, "/v1/grants/v1/presign?filename=a.txt").await;
    let (_, f) = get_json(&app, "/v1/grants/v1/post-policy").await;
    let issued = sts.calls().await;
    let exp = issued.last().or(cred_exp.last()).unwrap()["expiration_issued"]
        .as_str()
        .unwrap()
        .to_string();
    let exp = chrono::DateTime::parse_from_rfc3339(&exp).unwrap();
    for at in [
        p["expires_at"].as_str().unwrap(),
        f["expires_at"].as_str().unwrap(),
    ] {
        let at = chrono::DateTime::parse_from_rfc3339(at).unwrap();
        assert!(at <= exp, "upload valid until {at}, credential only until {exp}");
        assert!(at > chrono::Utc::now(), "{at} is already past");
    }
}

#[tokio::test]
async fn access_key_signing_uses_the_identity_without_a_token() {
    let sts = StsStub::start();
    // The sink shares the STS's state: its root key is the caller key.
    let oss = EmbeddedOss::for_stub(&sts);
    let app = TestApp::new(&upload_config(&sts, &oss, "signing = \"access_key\"")).await;
    let (status, p) = get_json(
        &app,
        "/v1/grants/v1/presign?filename=k.txt&content_type=text/plain",
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        p["url"]
            .as_str()
            .unwrap()
            .contains(&format!("OSSAccessKeyId={CALLER_AK}"))
    );
    assert!(!p["url"].as_str().unwrap().contains("security-token"));
    assert_eq!(presign_put(&p, b"k", None).await.0, 200);
    assert_eq!(sts.call_count().await, 0, "access_key signing needs no STS call");
}
