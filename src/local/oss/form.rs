//! PostObject's multipart/form-data, streamed: fields in memory, the file to a temp file.

use super::*;

// ---------------------------------------------------------------------------
// multipart/form-data (PostObject)
// ---------------------------------------------------------------------------

pub(super) fn malformed(why: &str) -> OssError {
    OssError::msg("MalformedPOSTRequest", why)
}

/// A form's non-file fields: lower-case names, the first of a name counts, form order.
pub(super) type FormFields = Vec<(String, String)>;

/// A PostObject form as read: the fields before the file, and the file, spooled.
#[derive(Default)]
pub(super) struct Form {
    pub(super) fields: FormFields,
    pub(super) file: Option<FilePart>,
    /// A part came after the first `file` part (the file must be the last field).
    pub(super) file_not_last: bool,
}

pub(super) struct FilePart {
    pub(super) filename: Option<String>,
    pub(super) content_type: Option<String>,
    /// Every byte received, stored or not.
    pub(super) size: u64,
    pub(super) spool: SpoolTask,
    /// False when bytes beyond the policy's `content-length-range` were not stored.
    pub(super) complete: bool,
}

/// Reads a PostObject form — boundary from the Content-Type, a named
/// Content-Disposition on every part, the `file` part last — streaming: [multer]
/// splits the parts, fields stay in memory, the file goes to a temp file as it arrives. The whole body is read whatever
/// the parser finds, so a body over the cap is EntityTooLarge first, as before.
pub(super) async fn read_form(
    data_dir: &std::path::Path,
    content_type: &str,
    mut body: Capped,
) -> Result<Form, OssError> {
    let parsed = match multer::parse_boundary(content_type) {
        Err(_) => Err(malformed("multipart/form-data without a boundary.")),
        Ok(b) => parse_form(data_dir, &b, &mut body).await,
    };
    body.drain().await?;
    parsed
}

pub(super) async fn parse_form(
    data_dir: &std::path::Path,
    boundary: &str,
    body: &mut Capped,
) -> Result<Form, OssError> {
    let bad = |e: multer::Error| malformed(&format!("The form could not be parsed: {e}."));
    let mut multipart = multer::Multipart::new(body, boundary);
    let mut form = Form::default();
    while let Some(mut part) = multipart.next_field().await.map_err(bad)? {
        let Some(name) = part.name().map(str::to_lowercase) else {
            return Err(malformed(
                "A form part lacks Content-Disposition: form-data; name=...",
            ));
        };
        let filename = part.file_name().map(str::to_string);
        let content_type = part.content_type().map(ToString::to_string);
        if form.file.is_some() {
            // Refused once the form is read; its bytes are not kept.
            form.file_not_last = true;
            while part.chunk().await.map_err(bad)?.is_some() {}
            continue;
        }
        if name != "file" {
            let value = part.bytes().await.map_err(bad)?;
            if !form.fields.iter().any(|(n, _)| *n == name) {
                form.fields
                    .push((name, String::from_utf8_lossy(&value).into_owned()));
            }
            continue;
        }
        // The policy, sent before the file, bounds what is worth storing; the
        // rest is counted (the verdict names the size) but not written.
        let limit = policy_size_limit(&form.fields);
        let spool = SpoolTask::start(data_dir.to_path_buf());
        let (mut size, mut complete) = (0u64, true);
        while let Some(chunk) = part.chunk().await.map_err(bad)? {
            size += chunk.len() as u64;
            complete = complete && size <= limit && spool.write(chunk).await;
        }
        form.file = Some(FilePart {
            filename,
            content_type,
            size,
            spool,
            complete,
        });
    }
    Ok(form)
}

/// The smallest `content-length-range` maximum in the form's policy, or
/// `u64::MAX` when none can be read. A file larger than it is refused by
/// [`verify::verify_post`] whatever else the policy says.
pub(super) fn policy_size_limit(fields: &[(String, String)]) -> u64 {
    use base64::Engine as _;
    let doc = fields
        .iter()
        .find(|(n, _)| n == "policy")
        .and_then(|(_, b64)| base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok())
        .and_then(|raw| serde_json::from_slice::<serde_json::Value>(&raw).ok());
    let Some(conditions) = doc.as_ref().and_then(|d| d["conditions"].as_array()) else {
        return u64::MAX;
    };
    conditions
        .iter()
        .filter_map(|c| {
            let items = c.as_array().filter(|i| i.len() == 3)?;
            let op = items[0].as_str()?;
            if !op.eq_ignore_ascii_case("content-length-range") {
                return None;
            }
            let high = items[2].as_i64()?;
            Some(u64::try_from(high).unwrap_or(0))
        })
        .min()
        .unwrap_or(u64::MAX)
}
