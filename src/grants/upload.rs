//! PostObject policies and presigned PUT URLs, signed locally with one cached
//! credential: per-upload scoping lives in the signed policy or URL, so it costs
//! no STS call.

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};

use super::Grant;
use crate::auth::Principal;
use crate::config::{PostVersion, PresignScheme};
use crate::credentials::Credentials;
use crate::error::ApiError;
use crate::policy::template::{self, Placeholders};
use crate::policy::{self, ContentTypeCondition, KeyCondition, PostPolicySpec};
use crate::sign::oss_v4::V4Scope;
use crate::sign::{self, AddressingStyle, Endpoint, RequestToSign, SignError, SigningCredentials};
use crate::sts::TempCredentials;

/// What the client may say about its upload. Everything else is the server's choice.
#[derive(Debug, Default, Clone, serde::Deserialize, utoipa::ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadRequest {
    /// The client's file name. Only its sanitised extension is used (the server names the object), and it must fit the content type.
    #[schema(example = "cat.png")]
    #[param(example = "cat.png")]
    pub filename: Option<String>,
    /// The upload's media type; required (and checked) when the grant has a `content_types` allowlist.
    #[schema(example = "image/png")]
    #[param(example = "image/png")]
    pub content_type: Option<String>,
    /// presign only: the body's `Content-MD5` (base64 of its MD5 digest), signed into the URL, so OSS
    /// refuses any other body.
    #[schema(example = "1B2M2Y8AsgTpgAmY7PhCfg==")]
    #[param(example = "1B2M2Y8AsgTpgAmY7PhCfg==")]
    pub md5: Option<String>,
}

/// The credential that signs, and when it stops working. It holds the
/// credential as the cache or the identity handed it over (secrets stay
/// `SecretString`); they are exposed only as borrows for the signing call.
pub enum SigningMaterial {
    /// The caller's narrowed role credential, shared with the STS cache.
    Sts(Arc<TempCredentials>),
    /// The identity's own credential (a long-term AccessKey or its STS token).
    Identity(Credentials),
}

impl SigningMaterial {
    pub fn access_key_id(&self) -> &str {
        match self {
            SigningMaterial::Sts(c) => &c.access_key_id,
            SigningMaterial::Identity(c) => &c.access_key_id,
        }
    }

    /// `None` for a long-term AccessKey.
    pub fn expires(&self) -> Option<DateTime<Utc>> {
        match self {
            SigningMaterial::Sts(c) => Some(c.expiration),
            SigningMaterial::Identity(c) => c.expiration,
        }
    }

    pub(crate) fn creds(&self) -> SigningCredentials<'_> {
        match self {
            SigningMaterial::Sts(c) => SigningCredentials {
                access_key_id: &c.access_key_id,
                access_key_secret: c.secret(),
                security_token: Some(c.token()),
            },
            SigningMaterial::Identity(c) => SigningCredentials {
                access_key_id: &c.access_key_id,
                access_key_secret: c.secret(),
                security_token: c.token(),
            },
        }
    }
}

/// A signed PostObject form.
#[derive(Debug)]
pub struct PostPolicy {
    /// Where the form is POSTed.
    pub host: String,
    pub dir: String,
    /// Set when the server named the object.
    pub key: Option<String>,
    /// Every non-file form field, in the order to send; `file` goes last.
    pub fields: Vec<(String, String)>,
    pub policy_base64: String,
    pub signature: String,
    pub version: PostVersion,
    pub expires_at: DateTime<Utc>,
}

/// A presigned PUT.
#[derive(Debug)]
pub struct Presigned {
    pub url: String,
    /// Exactly the headers that were signed and must be sent.
    pub headers: Vec<(String, String)>,
    pub key: String,
    pub expires_at: DateTime<Utc>,
    pub scheme: PresignScheme,
}

/// Validity: the configured time, never past the signing credential, never over 7 days.
pub(super) fn validity(
    grant: &Grant,
    material: &SigningMaterial,
    now: DateTime<Utc>,
) -> Result<u64, ApiError> {
    let mut secs = grant.upload.upload_expires.as_secs().min(604_800);
    if let Some(exp) = material.expires() {
        let left = (exp - now).num_seconds();
        if left < 1 {
            return Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "sts_unavailable",
                "no valid signing credential is available",
            ));
        }
        secs = secs.min(left as u64);
    }
    Ok(secs.max(1))
}

pub(super) fn check_content_type(grant: &Grant, ct: Option<&str>, required: bool) -> Result<(), ApiError> {
    let allowed = &grant.upload.content_types;
    match ct {
        Some(ct) if !allowed.is_empty() && !allowed.iter().any(|a| a == ct) => Err(ApiError::bad_request(
            "content_type_not_allowed",
            format!(
                "content type {ct:?} is not allowed for this grant; allowed: {}",
                allowed.join(", ")
            ),
        )),
        Some(ct) if !crate::config::validate::is_media_type(ct) => Err(ApiError::bad_request(
            "invalid_content_type",
            format!("{ct:?} is not a media type like image/png"),
        )),
        None if required && !allowed.is_empty() => Err(ApiError::bad_request(
            "content_type_required",
            format!(
                "this grant binds the upload to a content type; send content_type (one of: {})",
                allowed.join(", ")
            ),
        )),
        _ => Ok(()),
    }
}

/// Whose upload this is: the grant's prefix as resolved for this caller, and
/// what key templates may use.
pub struct Target<'a> {
    pub prefix: &'a str,
    pub principal: &'a Principal,
    pub placeholders: &'a Placeholders,
    /// The issuing request's id (carried in a callback's custom variables).
    pub request_id: &'a str,
    /// The key of the custom callback variables (`[webhooks]`); needed by a grant with a callback.
    pub callback_key: Option<&'a [u8]>,
}

/// A grant's upload callback for one issuance, as OSS takes it: the base64
/// `callback` and `callback-var` values and the custom variables themselves.
pub struct CallbackFields {
    /// `callback` (form field, query parameter or `x-oss-callback` header).
    pub param: String,
    /// `callback-var` (query parameter or `x-oss-callback-var` header).
    pub vars_base64: String,
    /// The variables one by one (a form's `x:` fields).
    pub vars: Vec<(&'static str, String)>,
}

/// The grant's callback for one issuance, or `None` when it has none: the one
/// place that builds it for forms, presigned URLs and sessions' completion.
/// `upload` is a session's upload id (`x:upload`), `None` for a form or URL.
pub fn callback_fields(
    grant: &Grant,
    target: &Target<'_>,
    upload: Option<&str>,
) -> Result<Option<CallbackFields>, ApiError> {
    let Some(cb) = &grant.upload.callback else {
        return Ok(None);
    };
    let key = target
        .callback_key
        .ok_or_else(|| ApiError::internal("grant has a callback but [webhooks] is not configured"))?;
    let param = crate::callbacks::CallbackParam {
        url: &cb.url,
        host: cb.host.as_deref(),
        form_body: cb.body_type == crate::config::CallbackBodyType::Form,
        sni: cb.sni && cb.url.starts_with("https:"),
    };
    let vars = crate::callbacks::custom_vars(
        key,
        &crate::callbacks::Issuance {
            grant: grant.name.clone(),
            subject: target.principal.display().to_string(),
            request_id: target.request_id.to_string(),
            prefix: target.prefix.to_string(),
            upload: upload.unwrap_or_default().to_string(),
        },
    );
    Ok(Some(CallbackFields {
        param: param.to_base64(),
        vars_base64: crate::callbacks::vars_to_base64(&vars),
        vars,
    }))
}

/// `{ext}` (`.png`) must fit the type the upload is bound to: the declared
/// Content-Type, or when none is declared (a form may leave it to the browser)
/// one of the grant's allowed types; with neither there is nothing to
/// contradict. A `.html` key for an `image/png` upload would be served by
/// anything that trusts extensions (CDNs, downloads) as a page, so a mismatch is
/// refused rather than renamed: the client learns its file and type disagree.
fn check_extension(grant: &Grant, ext: &str, ct: Option<&str>) -> Result<(), ApiError> {
    let Some(ext) = ext.strip_prefix('.') else {
        return Ok(());
    };
    let types: Vec<&str> = match ct {
        Some(ct) => vec![ct],
        None => grant.upload.content_types.iter().map(String::as_str).collect(),
    };
    if types.is_empty() || !grant.upload.key_template.contains("{ext}") {
        return Ok(());
    }
    let known = |t: &str| {
        let essence = t.split(';').next().unwrap_or(t).trim().to_ascii_lowercase();
        mime_guess::get_mime_extensions_str(&essence).unwrap_or_default()
    };
    if types.iter().any(|t| known(t).contains(&ext)) {
        return Ok(());
    }
    let mut fitting: Vec<String> = types
        .iter()
        .flat_map(|t| known(t))
        .map(|e| format!(".{e}"))
        .collect();
    fitting.sort();
    fitting.dedup();
    let fitting = if fitting.is_empty() {
        "none is known: send the file name without an extension".to_string()
    } else {
        format!("it takes {}", fitting.join(", "))
    };
    Err(ApiError::new(
        axum::http::StatusCode::UNPROCESSABLE_ENTITY,
        "extension_mismatch",
        format!(
            "the file name's extension .{ext} does not fit content type {} ({fitting}); send the file's real \
             content type or a file name that fits it",
            types.join(" or ")
        ),
    ))
}

pub(super) fn new_key(
    grant: &Grant,
    target: &Target<'_>,
    filename: Option<&str>,
    content_type: Option<&str>,
    now: DateTime<Utc>,
) -> Result<String, ApiError> {
    // From the thread's CSPRNG: `Uuid::new_v4` makes a getrandom call each time.
    let uuid = uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .simple()
        .to_string();
    let date = crate::policy::template::yyyymmdd(now);
    let ext = filename.map(policy::sanitize_ext).unwrap_or_default();
    check_extension(grant, &ext, content_type)?;
    let server = [
        ("prefix", target.prefix),
        ("uuid", uuid.as_str()),
        ("date", date.as_str()),
        ("ext", ext.as_str()),
    ];
    let values = template::Values {
        subject: target.principal.subject.as_deref(),
        subject_namespace: grant.subject_namespace(target.principal)?,
        claims: &target.principal.claims,
        server: &server,
        placeholders: target.placeholders,
    };
    template::render(&grant.upload.key_template, &values).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "invalid_principal",
            e.to_string(),
        )
    })
}

pub(super) fn endpoint<'a>(base: &'a str, path_style: bool) -> Endpoint<'a> {
    Endpoint {
        base,
        style: if path_style {
            AddressingStyle::Path
        } else {
            AddressingStyle::VirtualHosted
        },
    }
}

pub(super) fn sign_error(e: SignError) -> ApiError {
    ApiError::internal(format!("signing failed: {e}"))
}

/// The policy's Content-Type condition. S3 requires a condition for every form
/// field and has no `in`: a declared type is bound exactly. OSS takes the
/// grant's allowlist with `in`.
fn content_type_condition<'a>(
    grant: &'a Grant,
    version: PostVersion,
    ct: Option<&'a str>,
) -> ContentTypeCondition<'a> {
    match (version, ct) {
        (PostVersion::S3V4, Some(ct)) => ContentTypeCondition::Exact(ct),
        (PostVersion::S3V4, None) => ContentTypeCondition::Any,
        _ if grant.upload.content_types.is_empty() => ContentTypeCondition::Any,
        _ => ContentTypeCondition::OneOf(&grant.upload.content_types),
    }
}

/// The form's own fields, in the order sent (the signer adds its own after them).
fn form_fields<'a>(
    grant: &'a Grant,
    key_field: &'a str,
    status: &'a str,
    ct: Option<&'a str>,
    bound: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut fields: Vec<(&str, &str)> = vec![("key", key_field), ("success_action_status", status)];
    if let Some(url) = &grant.upload.success_action_redirect {
        fields.push(("success_action_redirect", url));
    }
    if let Some(ct) = ct {
        fields.push(("Content-Type", ct));
    }
    fields.extend(bound.iter().copied());
    fields
}

/// Where the form is POSTed: the bucket root of the OSS or S3-compatible endpoint.
fn form_host(grant: &Grant, version: PostVersion) -> Result<String, ApiError> {
    let form_endpoint = match version {
        PostVersion::S3V4 => endpoint(&grant.upload.s3_endpoint, grant.upload.s3_path_style),
        _ => endpoint(&grant.endpoint, grant.upload.path_style),
    };
    sign::post::post_url(&form_endpoint, &grant.bucket).map_err(sign_error)
}

pub fn post_policy(
    grant: &Grant,
    target: &Target<'_>,
    material: &SigningMaterial,
    now: DateTime<Utc>,
    req: &UploadRequest,
) -> Result<PostPolicy, ApiError> {
    let ct = req.content_type.as_deref();
    let version = grant.upload.post_version;
    // S3 policies have no `in`: an allowlist binds the declared type exactly.
    check_content_type(grant, ct, version == PostVersion::S3V4)?;
    let secs = validity(grant, material, now)?;
    let expires_at = now + TimeDelta::seconds(secs as i64);
    let expiration = expires_at.to_rfc3339_opts(SecondsFormat::Millis, true);
    let creds = material.creds();
    let scope = V4Scope::oss(&grant.region);

    // A filename means the server names the object; otherwise the client picks
    // a key under the prefix (the browser substitutes ${filename}).
    let key = req
        .filename
        .as_deref()
        .map(|f| new_key(grant, target, Some(f), ct, now))
        .transpose()?;
    let key_field = key
        .clone()
        .unwrap_or_else(|| format!("{}${{filename}}", target.prefix));
    let key_condition = match &key {
        Some(k) => KeyCondition::Exact(k),
        None => KeyCondition::Prefix(target.prefix),
    };
    let required = match version {
        PostVersion::V4 => sign::post::v4_required_conditions(&creds, &scope, now),
        PostVersion::V1 => Ok(Vec::new()),
        PostVersion::S3V4 => sign::s3::post_required_conditions(&creds, &grant.region, now),
    }
    .map_err(sign_error)?;
    let content_type = content_type_condition(grant, version, ct);
    let callback = callback_fields(grant, target, None)?;
    // `callback` is pinned: a client cannot drop or redirect the callback.
    // (A form carries no `callback-var`: OSS takes each variable as an `x:` field.)
    let bound: Vec<(&str, &str)> = callback.iter().map(|c| ("callback", c.param.as_str())).collect();
    let policy_json = policy::post_policy_json(&PostPolicySpec {
        expiration: &expiration,
        bucket: &grant.bucket,
        key: key_condition,
        max_size_bytes: grant.upload.max_size_bytes,
        content_type,
        success_action_status: grant.upload.success_action_status,
        success_action_redirect: grant.upload.success_action_redirect.as_deref(),
        required: &required,
        bound: &bound,
    });
    let status = grant.upload.success_action_status.to_string();
    let fields = form_fields(grant, &key_field, &status, ct, &bound);
    let mut form = match version {
        PostVersion::V4 => sign::post::sign_v4(&creds, &scope, now, &policy_json, &fields),
        PostVersion::V1 => sign::post::sign_v1(&creds, &policy_json, &fields),
        PostVersion::S3V4 => sign::s3::sign_post_policy(&creds, &grant.region, now, &policy_json, &fields),
    }
    .map_err(sign_error)?;
    // The variables as `x:` fields, as PostObject takes them (added after
    // signing: `:` is not a token character the signer's field check admits).
    // Their own signature (`x:sig`) protects them, not the policy.
    if let Some(c) = &callback {
        form.fields
            .extend(c.vars.iter().map(|(k, v)| ((*k).to_string(), v.clone())));
    }
    Ok(PostPolicy {
        host: form_host(grant, version)?,
        dir: target.prefix.to_string(),
        key,
        fields: form.fields,
        policy_base64: form.policy_base64,
        signature: form.signature,
        version,
        expires_at,
    })
}

pub fn presign(
    grant: &Grant,
    target: &Target<'_>,
    material: &SigningMaterial,
    now: DateTime<Utc>,
    req: &UploadRequest,
) -> Result<Presigned, ApiError> {
    let ct = req.content_type.as_deref();
    check_content_type(grant, ct, true)?;
    let secs = validity(grant, material, now)?;
    let key = new_key(grant, target, req.filename.as_deref(), ct, now)?;
    let mut headers: Vec<(&str, &str)> = ct.map(|c| vec![("Content-Type", c)]).unwrap_or_default();
    if let Some(md5) = req.md5.as_deref() {
        super::session::check_md5(md5)?;
        headers.push(("Content-MD5", md5));
    }
    // The client's filename shapes the key: never let it replace an existing object
    // (an OSS header; the S3-compatible endpoint is not sent it).
    if req.filename.is_some() && grant.upload.presign_scheme != PresignScheme::S3V4 {
        headers.push(("x-oss-forbid-overwrite", "true"));
    }
    let callback = callback_fields(grant, target, None)?;
    // Signed query parameters: the URL does not work without them or with others.
    let query: Vec<(&str, &str)> = callback
        .iter()
        .flat_map(|c| {
            [
                ("callback", c.param.as_str()),
                ("callback-var", c.vars_base64.as_str()),
            ]
        })
        .collect();
    let to_sign = RequestToSign {
        method: "PUT",
        bucket: Some(&grant.bucket),
        key: &key,
        headers: &headers,
        query: &query,
    };
    let creds = material.creds();
    let scheme = grant.upload.presign_scheme;
    let signed = match scheme {
        PresignScheme::OssV4 => sign::oss_v4::presign_url(
            &creds,
            &to_sign,
            &V4Scope::oss(&grant.region),
            &[],
            &endpoint(&grant.endpoint, grant.upload.path_style),
            now,
            secs,
        ),
        PresignScheme::OssV1 => sign::oss_v1::presign_url(
            &creds,
            &to_sign,
            &endpoint(&grant.endpoint, grant.upload.path_style),
            now,
            secs,
        ),
        PresignScheme::S3V4 => sign::s3::presign_url(
            &creds,
            &to_sign,
            &endpoint(&grant.upload.s3_endpoint, grant.upload.s3_path_style),
            &grant.region,
            now,
            secs,
        ),
    }
    .map_err(sign_error)?;
    Ok(Presigned {
        url: signed.url,
        headers: signed.required_headers,
        key,
        expires_at: DateTime::from_timestamp(signed.expires_at_unix, 0).unwrap_or(now),
        scheme,
    })
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;

    use super::*;

    fn grant(extra: &str) -> Grant {
        crate::grants::tests::grant(&format!("prefix = \"uploads/\"\n{extra}"))
    }

    fn material() -> SigningMaterial {
        SigningMaterial::Identity(Credentials {
            access_key_id: "LTAItestKeyIdNotASecret".into(),
            access_key_secret: "testSecretNotASecret".into(),
            security_token: None,
            expiration: None,
        })
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 8, 0, 0).unwrap()
    }

    fn req(filename: &str, content_type: Option<&str>) -> UploadRequest {
        UploadRequest {
            filename: Some(filename.into()),
            content_type: content_type.map(str::to_owned),
            md5: None,
        }
    }

    /// Presign and PostObject (server-named key) for `req`: the key, or the error code and status.
    fn keys(grant: &Grant, req: &UploadRequest) -> [Result<String, (u16, &'static str)>; 2] {
        let principal = Principal::anonymous();
        let placeholders = Placeholders::default();
        let target = Target {
            prefix: "uploads/",
            principal: &principal,
            placeholders: &placeholders,
            request_id: "req-1",
            callback_key: None,
        };
        let err = |e: ApiError| (e.status.as_u16(), e.code);
        [
            presign(grant, &target, &material(), now(), req)
                .map(|p| p.key)
                .map_err(err),
            post_policy(grant, &target, &material(), now(), req)
                .map(|p| p.key.unwrap())
                .map_err(err),
        ]
    }

    fn policy_conditions(p: &PostPolicy) -> Vec<serde_json::Value> {
        use base64::Engine as _;
        let json = base64::engine::general_purpose::STANDARD
            .decode(&p.policy_base64)
            .unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&json).unwrap();
        doc["conditions"].as_array().unwrap().clone()
    }

    /// Issue 13: a form never leaves a redirect of ossvend's own choosing
    /// unbound. Without `success_action_redirect` there is none to send (OSS
    /// checks only the fields a condition names, so one a client adds is its
    /// own); with it, the form carries it and the policy pins it exactly.
    #[test]
    fn a_configured_redirect_is_sent_and_pinned() {
        let principal = Principal::anonymous();
        let placeholders = Placeholders::default();
        let target = Target {
            prefix: "uploads/",
            principal: &principal,
            placeholders: &placeholders,
            request_id: "req-1",
            callback_key: None,
        };
        let plain = grant("");
        let p = post_policy(&plain, &target, &material(), now(), &UploadRequest::default()).unwrap();
        assert!(!p.fields.iter().any(|(k, _)| k == "success_action_redirect"));
        assert!(
            !policy_conditions(&p)
                .iter()
                .any(|c| c.to_string().contains("redirect"))
        );

        let url = "https://app.example.com/uploaded?from=ossvend";
        for version in ["v4", "v1", "s3-v4"] {
            let g = grant(&format!(
                "success_action_redirect = \"{url}\"\npost_version = \"{version}\""
            ));
            let p = post_policy(&g, &target, &material(), now(), &UploadRequest::default()).unwrap();
            let sent: Vec<&str> = p
                .fields
                .iter()
                .filter(|(k, _)| k == "success_action_redirect")
                .map(|(_, v)| v.as_str())
                .collect();
            assert_eq!(sent, [url], "{version}");
            assert!(
                policy_conditions(&p).contains(&serde_json::json!(["eq", "$success_action_redirect", url])),
                "{version}"
            );
        }
    }

    /// Issue 13: the extension of a server-named key follows the declared
    /// (allowed) content type, never just the client's filename.
    #[test]
    fn a_key_extension_that_contradicts_the_content_type_is_refused() {
        let g = grant(r#"content_types = ["image/png", "image/jpeg"]"#);
        for r in keys(&g, &req("evil.html", Some("image/png"))) {
            assert_eq!(r, Err((422, "extension_mismatch")));
        }
        for (file, ext) in [("cat.PNG", ".png"), ("cat", "")] {
            for r in keys(&g, &req(file, Some("image/png"))) {
                let key = r.unwrap();
                assert!(key.starts_with("uploads/") && key.ends_with(ext), "{key}");
                assert_eq!(key.len(), "uploads/".len() + 32 + ext.len(), "{key}");
            }
        }
        // Either of a type's usual extensions is the client's choice.
        for file in ["me.jpg", "me.jpeg"] {
            for r in keys(&g, &req(file, Some("image/jpeg"))) {
                assert!(r.unwrap().ends_with(&file[2..]));
            }
        }
        // A PostObject form may leave the type to the browser: the extension
        // must then fit one of the allowed types.
        let [_, post] = keys(&g, &req("page.html", None));
        assert_eq!(post, Err((422, "extension_mismatch")));
        let [_, post] = keys(&g, &req("photo.jpg", None));
        assert!(post.unwrap().ends_with(".jpg"));

        // Without an allowlist a declared type still has to fit; an undeclared one cannot contradict.
        let open = grant("");
        for r in keys(&open, &req("x.html", Some("image/png"))) {
            assert_eq!(r, Err((422, "extension_mismatch")));
        }
        for r in keys(&open, &req("notes.txt", Some("text/plain"))) {
            assert!(r.unwrap().ends_with(".txt"));
        }
        for r in keys(&open, &req("x.html", None)) {
            assert!(r.unwrap().ends_with(".html"));
        }
    }
}
