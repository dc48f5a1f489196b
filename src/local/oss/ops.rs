//! The operations: PutObject, multipart upload, GetObject/HeadObject, DeleteObject, PostObject.

use super::*;

// ---------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------

pub(super) async fn operate(
    state: &Arc<LocalState>,
    req: &mut Incoming,
    now: DateTime<Utc>,
) -> Result<Reply, OssError> {
    let ops = req.operations();
    let ops: Vec<&str> = ops.iter().map(String::as_str).collect();
    let is_form = req
        .header("content-type")
        .unwrap_or("")
        .to_lowercase()
        .starts_with("multipart/form-data");
    let method = req.method.clone();
    let post_object_route = method == "POST"
        && ops.is_empty()
        && is_form
        && req.key.is_none()
        && req.bucket.as_deref().is_some_and(|b| BUCKET_RE.is_match(b));
    if !post_object_route {
        req.materialize().await?;
    }

    let Some(bucket) = req.bucket.as_deref() else {
        authenticate(state, req, now)?;
        return Err(OssError::msg(
            "NotImplemented",
            "Service-level operations are not implemented by the local sink.",
        ));
    };
    if !BUCKET_RE.is_match(bucket) {
        return Err(OssError::msg(
            "InvalidBucketName",
            format!("The specified bucket is not valid: {bucket:?}."),
        ));
    }
    if method == "POST" && ops.is_empty() && is_form {
        if req.key.is_none() {
            return post_object(state, req, now).await;
        }
        return Err(OssError::msg(
            "MethodNotAllowed",
            "PostObject goes to the bucket (/<bucket>), not to an object path.",
        ));
    }
    let Some(key) = req.key.as_deref() else {
        authenticate(state, req, now)?;
        return Err(OssError::msg(
            "NotImplemented",
            "Bucket-level operations are not implemented by the local sink.",
        ));
    };
    store::check_key(key)?;

    match (method.as_str(), ops.as_slice()) {
        ("PUT", []) => put_object(state, req, now).await,
        ("POST", ["uploads"]) => initiate_upload(state, req, now).await,
        ("PUT", ["partNumber", "uploadId"]) => upload_part(state, req, now).await,
        ("POST", ["uploadId"]) => complete_upload(state, req, now).await,
        ("GET", ["uploadId"]) => list_parts(state, req, now).await,
        ("DELETE", ["uploadId"]) => abort_upload(state, req, now).await,
        ("GET" | "HEAD", []) => get_object(state, req, now).await,
        ("DELETE", []) => delete_object(state, req, now).await,
        _ => {
            authenticate(state, req, now)?;
            Err(OssError::msg(
                "NotImplemented",
                format!(
                    "{method} with ?{} is not implemented by the local sink.",
                    ops.join("&")
                ),
            ))
        }
    }
}

pub(super) fn authenticate(
    state: &LocalState,
    req: &Incoming,
    now: DateTime<Utc>,
) -> Result<verify::Authenticated, OssError> {
    let lookup = |ak: &str| credential(state, ak);
    verify::authenticate(&req.received(), &lookup, now)
}

/// Authentication plus the session policy for `action` on this object.
pub(super) fn authorized(
    state: &LocalState,
    req: &Incoming,
    now: DateTime<Utc>,
    action: &str,
) -> Result<(AuthScheme, String), OssError> {
    let ok = authenticate(state, req, now)?;
    let ak = ok.credential.access_key_id;
    access::authorize(
        ok.credential.policy.as_ref(),
        action,
        req.bucket(),
        req.key.as_deref(),
    )
    .map_err(|e| e.tag(Some(ok.scheme), Some(&ak)))?;
    Ok((ok.scheme, ak))
}

/// [`authorized`] for a write that may set the object's ACL (PutObject,
/// InitiateMultipartUpload): `x-oss-object-acl` needs `oss:PutObjectAcl` too.
pub(super) fn authorized_write(
    state: &LocalState,
    req: &Incoming,
    now: DateTime<Utc>,
) -> Result<(AuthScheme, String), OssError> {
    let ok = authenticate(state, req, now)?;
    let ak = ok.credential.access_key_id;
    let policy = ok.credential.policy.as_ref();
    access::authorize(policy, "oss:PutObject", req.bucket(), req.key.as_deref())
        .and_then(|()| {
            let acl = req.header("x-oss-object-acl");
            access::authorize_object_acl(policy, acl, req.bucket(), req.key())
        })
        .map_err(|e| e.tag(Some(ok.scheme), Some(&ak)))?;
    Ok((ok.scheme, ak))
}

/// `x-oss-forbid-overwrite: true` (OSS reads the value case-insensitively; anything else is false).
pub(super) fn forbid_overwrite(req: &Incoming) -> bool {
    req.header("x-oss-forbid-overwrite")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// The data dir, bucket and key of `req`, owned, for a [`blocking`] store call.
fn owned_target(state: &LocalState, req: &Incoming) -> (std::path::PathBuf, String, String) {
    (
        state.data_dir.clone(),
        req.bucket().to_string(),
        req.key().to_string(),
    )
}

/// Runs blocking store work off the async threads.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, OssError> + Send + 'static,
) -> Result<T, OssError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|_| Err(OssError::msg("InternalError", "A local store task failed.")))
}

/// `Content-MD5`, when sent, must be the base64 MD5 of the body.
pub(super) fn check_md5(req: &Incoming) -> Result<(), OssError> {
    let Some(given) = req.header("content-md5") else {
        return Ok(());
    };
    let digest: Vec<u8> = match &req.body {
        Some(BodyData::Spooled(s)) => hex::decode(&s.md5_hex).unwrap_or_default(),
        Some(BodyData::Memory(b)) => Md5::digest(b).to_vec(),
        Some(BodyData::Unread(_)) | None => Md5::digest(b"").to_vec(),
    };
    if given == crate::sign::b64(&digest) {
        Ok(())
    } else {
        Err(OssError::new("InvalidDigest"))
    }
}

/// The body as a file in `tmp/` (PUT bodies already are).
pub(super) async fn take_spooled(state: &LocalState, req: &mut Incoming) -> Result<Spooled, OssError> {
    let bytes = match req.body.take() {
        Some(BodyData::Spooled(s)) => return Ok(s),
        Some(BodyData::Memory(b)) => b,
        Some(BodyData::Unread(_)) | None => Bytes::new(),
    };
    let dir = state.data_dir.clone();
    blocking(move || {
        Spooled::from_bytes(&dir, &bytes)
            .map_err(|_| OssError::msg("InternalError", "The body could not be stored."))
    })
    .await
}

pub(super) fn take_memory(req: &mut Incoming) -> Bytes {
    match req.body.take() {
        Some(BodyData::Memory(b)) => b,
        // Only PUT bodies are spooled, and no PUT operation reads its body back;
        // only PostObject leaves a form unread, and it streams it.
        Some(BodyData::Spooled(_) | BodyData::Unread(_)) | None => Bytes::new(),
    }
}

pub(super) fn content_type_or_default(req: &Incoming) -> String {
    req.header("content-type")
        .filter(|c| !c.is_empty())
        .unwrap_or("application/octet-stream")
        .to_string()
}

/// `Host` as received, for `Location` values.
pub(super) fn host_of(req: &Incoming) -> String {
    req.header("host").unwrap_or(HOST_ID).to_string()
}

pub(super) async fn put_object(
    state: &Arc<LocalState>,
    req: &mut Incoming,
    now: DateTime<Utc>,
) -> Result<Reply, OssError> {
    let (scheme, ak) = authorized_write(state, req, now)?;
    let tag = |e: OssError| e.tag(Some(scheme), Some(&ak));
    if req.header("x-oss-copy-source").is_some() {
        return Err(tag(OssError::msg(
            "NotImplemented",
            "CopyObject is not implemented by the local sink.",
        )));
    }
    check_md5(req).map_err(tag)?;
    let callback = callback_of(req).map_err(tag)?;
    let content_type = content_type_or_default(req);
    let body = take_spooled(state, req).await.map_err(tag)?;
    let md5 = hex::decode(&body.md5_hex).unwrap_or_default();
    let (dir, bucket, key) = owned_target(state, req);
    let forbid = forbid_overwrite(req);
    let meta = blocking(move || {
        store::commit(
            &dir,
            &bucket,
            &key,
            body,
            &content_type,
            scheme.as_str(),
            None,
            forbid,
            now,
        )
    })
    .await
    .map_err(tag)?;
    let reply = Reply::new(200, Some(scheme), Some(&ak))
        .header("ETag", meta.etag.clone())
        .header("Content-MD5", crate::sign::b64(&md5));
    Ok(match callback {
        Some(cb) => {
            let sink = format!("http://{}", host_of(req));
            reply.callback(cb.perform(&state.callbacks, &meta, &sink).await)
        }
        None => reply,
    })
}

pub(super) async fn initiate_upload(
    state: &Arc<LocalState>,
    req: &mut Incoming,
    now: DateTime<Utc>,
) -> Result<Reply, OssError> {
    let (scheme, ak) = authorized_write(state, req, now)?;
    let content_type = content_type_or_default(req);
    let (dir, bucket, key) = owned_target(state, req);
    let (b, k) = (bucket.clone(), key.clone());
    let forbid = forbid_overwrite(req);
    let upload_id = blocking(move || {
        if forbid {
            store::check_not_exists(&dir, &b, &k)?;
        }
        store::create_upload(&dir, &b, &k, &content_type, now)
    })
    .await
    .map_err(|e| e.tag(Some(scheme), Some(&ak)))?;
    let shown_key = if req.query_value("encoding-type") == Some("url") {
        pct(&key)
    } else {
        key
    };
    let xml = xml_doc(
        "InitiateMultipartUploadResult",
        &[("Bucket", &bucket), ("Key", &shown_key), ("UploadId", &upload_id)],
    );
    Ok(Reply::new(200, Some(scheme), Some(&ak)).xml(xml))
}

pub(super) async fn upload_part(
    state: &Arc<LocalState>,
    req: &mut Incoming,
    now: DateTime<Utc>,
) -> Result<Reply, OssError> {
    let (scheme, ak) = authorized(state, req, now, "oss:PutObject")?;
    let tag = |e: OssError| e.tag(Some(scheme), Some(&ak));
    let raw = req.query_value("partNumber").unwrap_or("");
    let number = (!raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()))
        .then(|| raw.parse::<u32>().ok())
        .flatten()
        .filter(|n| (1..=10_000).contains(n))
        .ok_or_else(|| tag(OssError::msg("InvalidArgument", "partNumber must be 1..10000.")))?;
    check_md5(req).map_err(tag)?;
    let upload_id = req.query_value("uploadId").unwrap_or("").to_string();
    let body = take_spooled(state, req).await.map_err(tag)?;
    let (dir, bucket, key) = owned_target(state, req);
    let etag = blocking(move || store::put_part(&dir, &upload_id, &bucket, &key, number, body, now))
        .await
        .map_err(tag)?;
    Ok(Reply::new(200, Some(scheme), Some(&ak)).header("ETag", etag))
}

pub(super) async fn complete_upload(
    state: &Arc<LocalState>,
    req: &mut Incoming,
    now: DateTime<Utc>,
) -> Result<Reply, OssError> {
    let (scheme, ak) = authorized(state, req, now, "oss:PutObject")?;
    let tag = |e: OssError| e.tag(Some(scheme), Some(&ak));
    let all = req.header("x-oss-complete-all").unwrap_or("").to_lowercase() == "yes";
    let callback = callback_of(req).map_err(tag)?;
    let body = take_memory(req);
    let chosen = if all {
        None
    } else {
        Some(parse_complete_body(&body).map_err(tag)?)
    };
    let upload_id = req.query_value("uploadId").unwrap_or("").to_string();
    let url_encoded = req.query_value("encoding-type") == Some("url");
    let (dir, bucket, key) = owned_target(state, req);
    let (b, k) = (bucket.clone(), key.clone());
    let forbid = forbid_overwrite(req);
    let meta = blocking(move || store::complete(&dir, &upload_id, &b, &k, chosen, forbid, now))
        .await
        .map_err(tag)?;
    let location = format!("http://{}/{bucket}/{}", host_of(req), pct_path(&key));
    let shown_key = if url_encoded { pct(&key) } else { key };
    let mut children: Vec<(&str, &str)> = Vec::new();
    if url_encoded {
        children.push(("EncodingType", "url"));
    }
    children.extend([
        ("Location", location.as_str()),
        ("Bucket", bucket.as_str()),
        ("Key", shown_key.as_str()),
        ("ETag", meta.etag.as_str()),
    ]);
    let xml = xml_doc("CompleteMultipartUploadResult", &children);
    let reply = Reply::new(200, Some(scheme), Some(&ak)).header("ETag", meta.etag.clone());
    // With a callback, OSS answers with the callback's reply instead of the XML result.
    Ok(match callback {
        Some(cb) => {
            let sink = format!("http://{}", host_of(req));
            reply.callback(cb.perform(&state.callbacks, &meta, &sink).await)
        }
        None => reply.xml(xml),
    })
}

/// The upload callback of a PutObject or CompleteMultipartUpload: the
/// `callback`/`callback-var` query parameters or `x-oss-callback`/`x-oss-callback-var` headers.
fn callback_of(req: &Incoming) -> Result<Option<super::callback::Prepared>, OssError> {
    let Some(param) = req.query_value("callback").or(req.header("x-oss-callback")) else {
        return Ok(None);
    };
    let vars = req
        .query_value("callback-var")
        .or(req.header("x-oss-callback-var"));
    super::callback::parse(param, vars, &[]).map(Some)
}

/// ListParts: `max-parts` (1..=1000, default 1000) after `part-number-marker`.
pub(super) async fn list_parts(
    state: &Arc<LocalState>,
    req: &mut Incoming,
    now: DateTime<Utc>,
) -> Result<Reply, OssError> {
    let (scheme, ak) = authorized(state, req, now, "oss:ListParts")?;
    let tag = |e: OssError| e.tag(Some(scheme), Some(&ak));
    let max_parts = paging_number(req, "max-parts", 1000)
        .filter(|n| (1..=1000).contains(n))
        .ok_or_else(|| tag(OssError::msg("InvalidArgument", "max-parts must be 1..1000.")))?;
    let marker = paging_number(req, "part-number-marker", 0).ok_or_else(|| {
        tag(OssError::msg(
            "InvalidArgument",
            "part-number-marker must be a number.",
        ))
    })?;
    let upload_id = req.query_value("uploadId").unwrap_or("").to_string();
    let (dir, bucket, key) = owned_target(state, req);
    let (b, k, u) = (bucket.clone(), key.clone(), upload_id.clone());
    let parts = blocking(move || store::list_parts(&dir, &u, &b, &k))
        .await
        .map_err(tag)?;
    let after: Vec<&store::PartInfo> = parts.iter().filter(|p| u64::from(p.number) > marker).collect();
    let page = &after[..after.len().min(max_parts as usize)];
    let truncated = after.len() > page.len();
    let next = page.last().map_or(marker, |p| u64::from(p.number));
    let url_encoded = req.query_value("encoding-type") == Some("url");
    let shown_key = if url_encoded { pct(&key) } else { key };
    let el = |name: &str, value: &str| format!("<{name}>{}</{name}>", quick_xml::escape::escape(value));
    let mut inner = String::new();
    if url_encoded {
        inner.push_str(&el("EncodingType", "url"));
    }
    for (name, value) in [
        ("Bucket", bucket.as_str()),
        ("Key", &shown_key),
        ("UploadId", &upload_id),
        ("PartNumberMarker", &marker.to_string()),
        ("NextPartNumberMarker", &next.to_string()),
        ("MaxParts", &max_parts.to_string()),
        ("IsTruncated", if truncated { "true" } else { "false" }),
    ] {
        inner.push_str(&el(name, value));
    }
    for p in page {
        inner.push_str("<Part>");
        inner.push_str(&el("PartNumber", &p.number.to_string()));
        // OSS writes whole seconds with `.000` (oss2 parses exactly that shape).
        let stored = p.last_modified.format("%Y-%m-%dT%H:%M:%S.000Z").to_string();
        inner.push_str(&el("LastModified", &stored));
        inner.push_str(&el("ETag", &p.etag));
        inner.push_str(&el("Size", &p.size.to_string()));
        inner.push_str("</Part>");
    }
    let xml =
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListPartsResult>{inner}</ListPartsResult>");
    Ok(Reply::new(200, Some(scheme), Some(&ak)).xml(xml))
}

/// A decimal query parameter, `default` when absent; `None` when not a number.
fn paging_number(req: &Incoming, name: &str, default: u64) -> Option<u64> {
    match req.query_value(name) {
        None => Some(default),
        Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => v.parse().ok(),
        Some(_) => None,
    }
}

pub(super) async fn abort_upload(
    state: &Arc<LocalState>,
    req: &mut Incoming,
    now: DateTime<Utc>,
) -> Result<Reply, OssError> {
    let (scheme, ak) = authorized(state, req, now, "oss:AbortMultipartUpload")?;
    let upload_id = req.query_value("uploadId").unwrap_or("").to_string();
    let (dir, bucket, key) = owned_target(state, req);
    blocking(move || store::abort(&dir, &upload_id, &bucket, &key))
        .await
        .map_err(|e| e.tag(Some(scheme), Some(&ak)))?;
    Ok(Reply::new(204, Some(scheme), Some(&ak)))
}

pub(super) async fn get_object(
    state: &Arc<LocalState>,
    req: &mut Incoming,
    now: DateTime<Utc>,
) -> Result<Reply, OssError> {
    let (scheme, ak) = authorized(state, req, now, "oss:GetObject")?;
    let tag = |e: OssError| e.tag(Some(scheme), Some(&ak));
    let (dir, bucket, key) = owned_target(state, req);
    let found = blocking(move || store::read_object(&dir, &bucket, &key))
        .await
        .map_err(tag)?;
    let Some((meta, data)) = found else {
        return Err(tag(OssError::new("NoSuchKey")));
    };
    let mut reply = Reply::new(200, Some(scheme), Some(&ak))
        .header("ETag", meta.etag)
        .header("Content-Type", meta.content_type)
        .header("Last-Modified", crate::sign::format_http_date(meta.last_modified));
    reply.body = Bytes::from(data);
    Ok(reply)
}

pub(super) async fn delete_object(
    state: &Arc<LocalState>,
    req: &mut Incoming,
    now: DateTime<Utc>,
) -> Result<Reply, OssError> {
    let (scheme, ak) = authorized(state, req, now, "oss:DeleteObject")?;
    let (dir, bucket, key) = owned_target(state, req);
    blocking(move || store::delete_object(&dir, &bucket, &key))
        .await
        .map_err(|e| e.tag(Some(scheme), Some(&ak)))?;
    Ok(Reply::new(204, Some(scheme), Some(&ak)))
}

pub(super) async fn post_object(
    state: &Arc<LocalState>,
    req: &mut Incoming,
    now: DateTime<Utc>,
) -> Result<Reply, OssError> {
    let content_type = req.header("content-type").unwrap_or("").to_string();
    let Some(BodyData::Unread(body)) = req.body.take() else {
        return Err(OssError::msg(
            "InternalError",
            "The form was read before PostObject.",
        ));
    };
    let form = read_form(&state.data_dir, &content_type, body).await?;
    if form.file_not_last {
        return Err(OssError::msg(
            "InvalidArgument",
            "The file field must be the last field of the form.",
        ));
    }
    let Some(file) = form.file else {
        return Err(OssError::msg("InvalidArgument", "The form has no file field."));
    };
    let fields = form.fields;
    let post = PostFields {
        fields: &fields,
        file_name: file.filename.as_deref(),
        file_content_type: file.content_type.as_deref(),
        file_size: file.size,
    };
    let bucket = req.bucket().to_string();
    let lookup = |ak: &str| credential(state, ak);
    let upload = verify::verify_post(&bucket, &post, &lookup, now)?;
    let (scheme, ak) = (upload.scheme, upload.credential.access_key_id.clone());
    let tag = |e: OssError| e.tag(Some(scheme), Some(&ak));
    store::check_key(&upload.key).map_err(tag)?;
    access::authorize(
        upload.credential.policy.as_ref(),
        "oss:PutObject",
        &bucket,
        Some(&upload.key),
    )
    .map_err(tag)?;
    let acl = fields
        .iter()
        .find(|(name, _)| name == "x-oss-object-acl")
        .map(|(_, v)| v.as_str());
    access::authorize_object_acl(upload.credential.policy.as_ref(), acl, &bucket, &upload.key)
        .map_err(tag)?;

    let callback = super::callback::from_form(&fields).map_err(tag)?;
    let spooled = file.spool.finish().await.map_err(tag)?;
    if !file.complete {
        // Only if reading the policy's size limit here disagreed with the verifier:
        // never store a file cut short.
        return Err(tag(OssError::msg(
            "InternalError",
            "The file was not stored whole.",
        )));
    }
    let dir: PathBuf = state.data_dir.clone();
    let (b, k, ct) = (bucket.clone(), upload.key.clone(), upload.content_type.clone());
    let meta = blocking(move || store::commit(&dir, &b, &k, spooled, &ct, scheme.as_str(), None, false, now))
        .await
        .map_err(tag)?;

    let field = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    let mut reply = Reply::new(204, Some(scheme), Some(&ak)).header("ETag", meta.etag.clone());
    if let Some(cb) = callback {
        // With a callback, OSS answers with the callback's reply (or CallbackFailed).
        return Ok(reply.callback(
            cb.perform(&state.callbacks, &meta, &format!("http://{}", host_of(req)))
                .await,
        ));
    }
    let redirect = field("success_action_redirect");
    let status = field("success_action_status");
    if !redirect.is_empty() {
        let sep = if redirect.contains('?') { '&' } else { '?' };
        reply.status = 303;
        reply = reply.header(
            "Location",
            format!(
                "{redirect}{sep}bucket={}&key={}&etag={}",
                pct(&bucket),
                pct(&upload.key),
                pct(&meta.etag)
            ),
        );
    } else if status == "200" || status == "201" {
        reply.status = if status == "200" { 200 } else { 201 };
        if status == "201" {
            let location = format!("http://{}/{bucket}/{}", host_of(req), pct_path(&upload.key));
            let xml = xml_doc(
                "PostResponse",
                &[
                    ("Bucket", &bucket),
                    ("Location", &location),
                    ("Key", &upload.key),
                    ("ETag", &meta.etag),
                ],
            );
            reply = reply.xml(xml);
        }
    }
    Ok(reply)
}

// ---------------------------------------------------------------------------
// CompleteMultipartUpload body
// ---------------------------------------------------------------------------

/// The body OSS documents for CompleteMultipartUpload (the root's name is not checked).
#[derive(serde::Deserialize)]
pub(super) struct CompleteBody {
    #[serde(rename = "Part", default)]
    pub(super) parts: Vec<CompletePart>,
}

#[derive(serde::Deserialize)]
pub(super) struct CompletePart {
    #[serde(rename = "PartNumber")]
    pub(super) number: String,
    #[serde(rename = "ETag")]
    pub(super) etag: String,
}

/// Every `Part` as (PartNumber digits, ETag); MalformedXML if the XML does not
/// parse or a part lacks an ETag or a decimal PartNumber.
pub(crate) fn parse_complete_body(body: &[u8]) -> Result<Vec<(String, String)>, OssError> {
    let text = std::str::from_utf8(body).map_err(|_| OssError::new("MalformedXML"))?;
    let doc: CompleteBody = quick_xml::de::from_str(text).map_err(|e| {
        OssError::msg(
            "MalformedXML",
            format!("The XML you provided was not well-formed: {e}."),
        )
    })?;
    doc.parts
        .into_iter()
        .map(|p| {
            let number = p.number.trim();
            if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
                return Err(OssError::msg(
                    "MalformedXML",
                    "Each Part needs a decimal PartNumber and an ETag.",
                ));
            }
            Ok((number.to_string(), p.etag.trim().to_string()))
        })
        .collect()
}
