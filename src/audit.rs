//! The audit trail: one record per issuance (credentials, PostObject policy,
//! presigned URL, ticket), to the log (target `ossvend::audit`) and, when
//! `audit.file` is set, as a JSON line appended to that file. Records carry
//! AccessKey id prefixes and policy hashes, never a secret or a token.

use std::io::Write as _;
use std::sync::Mutex;

use serde::Serialize;
use tracing::{info, warn};

use crate::config::AuditConfig;

#[derive(Debug, Serialize)]
pub struct Record<'a> {
    /// Formatted only when the record is written to `audit.file`.
    #[serde(serialize_with = "utc_seconds")]
    pub time: chrono::DateTime<chrono::Utc>,
    pub request_id: &'a str,
    pub client_ip: &'a str,
    pub subject: &'a str,
    /// How the caller authenticated.
    pub auth: &'a str,
    pub grant: &'a str,
    /// `credentials`, `post-policy`, `presign` or `ticket`.
    pub kind: &'static str,
    pub policy_sha256: &'a str,
    pub session_name: &'a str,
    /// Prefix only.
    pub access_key_id: &'a str,
    pub expiration: &'a str,
    /// Cache outcome for credentials: `hit`, `miss`, `stale`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<&'a str>,
    /// The object key or prefix a signed upload is bound to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<&'a str>,
}

/// An upload OSS confirmed (a verified callback), and what became of its webhook.
#[derive(Debug, Serialize)]
pub struct UploadRecord<'a> {
    #[serde(serialize_with = "utc_seconds")]
    pub time: chrono::DateTime<chrono::Utc>,
    /// Always `upload.completed`.
    pub kind: &'static str,
    pub grant: &'a str,
    pub subject: &'a str,
    pub bucket: &'a str,
    pub key: &'a str,
    pub size: u64,
    pub etag: &'a str,
    /// The request id of the issuance that allowed the upload.
    pub request_id: &'a str,
    pub webhook_id: &'a str,
    /// `delivered` or `pending`.
    pub delivery: &'static str,
}

tokio::task_local! {
    /// Set when the request being served wrote an audit record: the access-log
    /// middleware then keeps its own line for that request at debug level.
    pub(crate) static AUDITED: std::cell::Cell<bool>;
}

fn utc_seconds<S: serde::Serializer>(t: &chrono::DateTime<chrono::Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::sign::format_iso8601_extended(*t))
}

pub struct Audit {
    file: Option<Mutex<std::fs::File>>,
}

impl Audit {
    pub fn open(cfg: &AuditConfig) -> Result<Self, String> {
        let file = match &cfg.file {
            Some(path) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("audit.file: cannot open {}: {e}", path.display()))?,
            )),
            None => None,
        };
        Ok(Audit { file })
    }

    /// An upload confirmed by OSS: the log line is the caller's; here the file line.
    pub fn upload(&self, r: &UploadRecord<'_>) {
        let _ = AUDITED.try_with(|a| a.set(true));
        self.write_line(r);
    }

    fn write_line<T: Serialize>(&self, r: &T) {
        if let Some(f) = &self.file {
            let mut line = serde_json::to_vec(r).unwrap_or_default();
            line.push(b'\n');
            let mut f = f.lock().unwrap_or_else(|e| e.into_inner());
            // One write per record keeps lines whole even with concurrent writers.
            if let Err(e) = f.write_all(&line) {
                warn!(error = %e, "cannot write the audit file");
            }
        }
    }

    pub fn record(&self, r: &Record<'_>) {
        crate::prom::issued(r.grant, r.kind);
        // Outside a request (tests, tools) there is no access line to spare.
        let _ = AUDITED.try_with(|a| a.set(true));
        info!(
            target: "ossvend::audit",
            kind = r.kind, grant = r.grant, subject = r.subject, auth = r.auth, client_ip = r.client_ip,
            session_name = r.session_name, access_key_id = r.access_key_id, expiration = r.expiration,
            cache = r.cache.unwrap_or("-"), key = r.key.unwrap_or("-"), policy_sha256 = r.policy_sha256,
            "issued {}", r.kind
        );
        self.write_line(r);
    }
}
