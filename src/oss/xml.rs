//! The XML OSS answers (quick-xml's serde), and the CompleteMultipartUpload body.

use serde::Deserialize;

/// One uploaded part, as ListParts lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Part {
    #[serde(rename = "PartNumber")]
    pub number: u32,
    /// As OSS wrote it (quoted upper-case hex MD5).
    #[serde(rename = "ETag")]
    pub etag: String,
    #[serde(rename = "Size")]
    pub size: u64,
}

pub(super) struct PartsPage {
    pub parts: Vec<Part>,
    pub truncated: bool,
    pub next_marker: Option<u32>,
}

#[derive(Deserialize)]
struct InitiateResult {
    #[serde(rename = "UploadId")]
    upload_id: String,
}

#[derive(Deserialize)]
struct ListPartsResult {
    #[serde(rename = "IsTruncated", default)]
    is_truncated: Option<String>,
    #[serde(rename = "NextPartNumberMarker", default)]
    next_marker: Option<String>,
    #[serde(rename = "Part", default)]
    parts: Vec<Part>,
}

#[derive(Deserialize)]
struct CompleteResult {
    #[serde(rename = "ETag", default)]
    etag: Option<String>,
}

/// An `<Error>` body; any field may be missing (a proxy's HTML page has none).
#[derive(Debug, Default, Deserialize)]
pub(super) struct ErrorBody {
    #[serde(rename = "Code", default)]
    pub code: Option<String>,
    #[serde(rename = "Message", default)]
    pub message: Option<String>,
    #[serde(rename = "RequestId", default)]
    pub request_id: Option<String>,
}

fn text(body: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(body).map_err(|_| "OSS answered with a body that is not UTF-8".to_string())
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8], what: &str) -> Result<T, String> {
    quick_xml::de::from_str(text(body)?).map_err(|e| format!("OSS's {what} answer did not parse: {e}"))
}

pub(super) fn upload_id(body: &[u8]) -> Result<String, String> {
    let r: InitiateResult = parse(body, "InitiateMultipartUpload")?;
    if r.upload_id.is_empty() {
        return Err("OSS's InitiateMultipartUpload answer has no UploadId".into());
    }
    Ok(r.upload_id)
}

pub(super) fn list_parts(body: &[u8]) -> Result<PartsPage, String> {
    let r: ListPartsResult = parse(body, "ListParts")?;
    let truncated = r.is_truncated.as_deref().map(str::trim) == Some("true");
    let next_marker = r.next_marker.and_then(|m| m.trim().parse().ok());
    Ok(PartsPage {
        parts: r.parts,
        truncated,
        next_marker,
    })
}

pub(super) fn complete_etag(body: &[u8]) -> Option<String> {
    parse::<CompleteResult>(body, "CompleteMultipartUpload")
        .ok()
        .and_then(|r| r.etag)
}

pub(super) fn error(body: &[u8]) -> ErrorBody {
    text(body)
        .ok()
        .and_then(|t| quick_xml::de::from_str(t).ok())
        .unwrap_or_default()
}

/// `<CompleteMultipartUpload><Part><PartNumber>n</PartNumber><ETag>e</ETag></Part>…`.
pub(super) fn complete_body(parts: &[(u32, String)]) -> Vec<u8> {
    let inner: String = parts
        .iter()
        .map(|(n, etag)| {
            format!(
                "<Part><PartNumber>{n}</PartNumber><ETag>{}</ETag></Part>",
                quick_xml::escape::escape(etag.as_str())
            )
        })
        .collect();
    format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<CompleteMultipartUpload>{inner}</CompleteMultipartUpload>")
        .into_bytes()
}
