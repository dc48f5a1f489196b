//! Signed, timed, recorded deliveries to the application (docs/callbacks.md).
//!
//! A verified upload callback becomes one `upload.completed` event, POSTed to
//! `[webhooks] url` with the Standard Webhooks headers (`webhook-id`,
//! `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "id.timestamp.body">`), so stock verifiers (svix, standardwebhooks) check it.
//! The id is the idempotency key of the object version (bucket, key, ETag): a
//! redelivery, or OSS calling twice, carries the same id.
//!
//! An event the application does not take within `timeout` (down, slow, non-2xx)
//! is never dropped: it is counted, logged to the audit trail, kept pending (in
//! `data_dir`'s journal when set, so a restart keeps it), redelivered with
//! back-off by a background task, and listed at `GET /admin/webhooks/pending`.
//!
//! In fleet mode (`[shared]`) pending events live in Redis instead, sealed like
//! the L2 cache (one hash; field = HMAC of the event id, value = AES-256-GCM of
//! the record, so neither subject nor object key shows): any replica lists
//! them and redelivers them (one at a time per event: a flight lock), so a pod
//! that dies takes nothing with it. While Redis does not answer, an event is
//! kept by the replica that has it (memory or `data_dir`), as without `[shared]`.

use std::collections::BTreeMap;
use std::io::{BufRead as _, Write as _};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tracing::{info, warn};

use crate::config::WebhooksConfig;
use crate::shared::Fleet;

/// The fleet-wide map (`Fleet::map_*`) of pending events.
const FLEET_MAP: &str = "webhooks-pending";

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// The journal's file name in `data_dir`.
pub const JOURNAL: &str = "webhooks-pending.jsonl";
/// First redelivery delay; doubles per failure up to `retry_max_interval`.
const FIRST_RETRY: Duration = Duration::from_secs(5);
/// Largest application reply passed back to OSS (OSS itself takes up to 3 MB).
const MAX_REPLY_BYTES: usize = 64 * 1024;

/// The webhook body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UploadEvent {
    /// Always `upload.completed`.
    pub event: String,
    pub grant: String,
    pub subject: String,
    pub bucket: String,
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub content_type: String,
    /// The request id of the issuance that allowed the upload.
    pub request_id: String,
    /// The upload session's OSS upload id (`x:upload`) for an upload completed by ossvend; `null`
    /// for a PostObject form or presigned PUT.
    #[serde(default)]
    pub upload: Option<String>,
    /// When ossvend received OSS's callback (RFC 3339).
    pub time: String,
}

impl UploadEvent {
    /// `webhook-id`: `upl_` and 32 hex digits of SHA-256(bucket, key, ETag).
    pub fn id(&self) -> String {
        let text = serde_json::json!([self.bucket, self.key, self.etag]).to_string();
        format!("upl_{}", &hex::encode(Sha256::digest(text.as_bytes()))[..32])
    }
}

/// An event not yet delivered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pending {
    pub id: String,
    /// The exact body (redeliveries sign the same bytes).
    pub body: String,
    pub attempts: u32,
    pub first_failed_at: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: String,
}

/// What became of a delivery attempt made while OSS waits.
#[derive(Debug)]
pub enum Outcome {
    /// The application took it; its JSON reply, if it sent one.
    Delivered(Option<serde_json::Value>),
    /// Not taken: recorded as pending, with the reason.
    Pending(String),
}

/// A journal line: an event added to or removed from the pending set.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Entry {
    Pending(Pending),
    Delivered(String),
}

pub struct Webhooks {
    /// Empty in local echo mode.
    url: String,
    /// `ossvend local` without `[webhooks] url`: no application to tell; the
    /// event itself is the answer (OSS hands it to the uploader).
    echo: bool,
    secret: Vec<u8>,
    vars_key: Vec<u8>,
    timeout: Duration,
    retry_max: Duration,
    http: reqwest::Client,
    pending: Mutex<BTreeMap<String, Pending>>,
    journal: Option<(PathBuf, Mutex<std::fs::File>)>,
    /// Fleet mode: pending events are kept in Redis while it answers.
    fleet: Option<Arc<Fleet>>,
}

/// The Standard Webhooks secret: `whsec_` and the base64 of 24 to 64 bytes.
pub fn parse_secret(text: &str) -> Result<Vec<u8>, String> {
    let b = text
        .trim()
        .strip_prefix("whsec_")
        .ok_or("the webhook secret must start with whsec_ (Standard Webhooks)")?;
    let key = B64
        .decode(b)
        .map_err(|_| "the webhook secret after whsec_ is not base64")?;
    if !(24..=64).contains(&key.len()) {
        return Err("the webhook secret must be 24 to 64 bytes (base64 after whsec_)".into());
    }
    Ok(key)
}

impl Webhooks {
    /// Built when `url` and `secret_env` are set; reads the secret from `env`
    /// and the journal from `data_dir`.
    pub fn from_config(
        cfg: &WebhooksConfig,
        env: &BTreeMap<String, String>,
        fleet: Option<Arc<Fleet>>,
    ) -> Result<Option<Arc<Self>>, String> {
        if cfg.local_echo && cfg.url.is_none() {
            return Ok(Some(Self::local_echo(cfg)));
        }
        let (Some(url), Some(var)) = (&cfg.url, &cfg.secret_env) else {
            return Ok(None);
        };
        let secret = env
            .get(var)
            .ok_or_else(|| format!("webhooks.secret_env: environment variable {var} is not set"))
            .and_then(|s| parse_secret(s).map_err(|e| format!("webhooks.secret_env ({var}): {e}")))?;
        crate::tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            // The configured URL is the one trusted; a redirect could go anywhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ossvend/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the webhook HTTP client: {e}"))?;
        let (pending, journal) = match &cfg.data_dir {
            Some(dir) => {
                let (pending, path, file) = open_journal(dir)?;
                (pending, Some((path, Mutex::new(file))))
            }
            None => (BTreeMap::new(), None),
        };
        crate::prom::webhooks_pending(pending.len());
        let hooks = Arc::new(Webhooks {
            url: url.clone(),
            echo: false,
            vars_key: crate::callbacks::vars_key(&secret),
            secret,
            timeout: cfg.timeout,
            retry_max: cfg.retry_max_interval,
            http,
            pending: Mutex::new(pending),
            journal,
            fleet,
        });
        spawn_redelivery(Arc::downgrade(&hooks));
        Ok(Some(hooks))
    }

    /// Local mode with no application: events are answered, never sent. The
    /// variables' key is random per process (local mode is one process).
    fn local_echo(cfg: &WebhooksConfig) -> Arc<Self> {
        let secret: [u8; 32] = rand::random();
        crate::tls::install_crypto_provider();
        Arc::new(Webhooks {
            url: String::new(),
            echo: true,
            vars_key: crate::callbacks::vars_key(&secret),
            secret: secret.to_vec(),
            timeout: cfg.timeout,
            retry_max: cfg.retry_max_interval,
            http: reqwest::Client::new(),
            pending: Mutex::new(BTreeMap::new()),
            journal: None,
            fleet: None,
        })
    }

    /// Whether verified events are answered back instead of delivered (local mode, no `[webhooks] url`).
    pub fn is_echo(&self) -> bool {
        self.echo
    }

    /// The key of ossvend's custom callback variables.
    pub fn vars_key(&self) -> &[u8] {
        &self.vars_key
    }

    /// Whether a reload may keep this instance (and its pending set and task).
    pub fn same_config(
        &self,
        cfg: &WebhooksConfig,
        env: &BTreeMap<String, String>,
        fleet: Option<&Arc<Fleet>>,
    ) -> bool {
        let secret = cfg
            .secret_env
            .as_ref()
            .and_then(|v| env.get(v))
            .and_then(|s| parse_secret(s).ok());
        if self.echo {
            return cfg.local_echo && cfg.url.is_none();
        }
        cfg.url.as_deref() == Some(self.url.as_str())
            && secret.as_deref() == Some(self.secret.as_slice())
            && cfg.timeout == self.timeout
            && cfg.retry_max_interval == self.retry_max
            && cfg.data_dir.as_ref().map(|d| d.join(JOURNAL)) == self.journal.as_ref().map(|(p, _)| p.clone())
            && match (fleet, &self.fleet) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }

    /// The three Standard Webhooks headers for `body` sent at `at`.
    pub fn headers(&self, id: &str, body: &str, at: DateTime<Utc>) -> [(&'static str, String); 3] {
        let ts = at.timestamp().to_string();
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(format!("{id}.{ts}.{body}").as_bytes());
        let sig = B64.encode(mac.finalize().into_bytes());
        [
            ("webhook-id", id.to_string()),
            ("webhook-timestamp", ts),
            ("webhook-signature", format!("v1,{sig}")),
        ]
    }

    /// Delivers `event` now (OSS is waiting), within `budget` (what is left of
    /// OSS's window) and `timeout`; an event not taken in time is kept pending.
    pub async fn deliver(&self, event: &UploadEvent, budget: Duration) -> Outcome {
        if self.echo {
            return Outcome::Delivered(serde_json::to_value(event).ok());
        }
        let id = event.id();
        let body = serde_json::to_string(event).unwrap_or_default();
        let sent = tokio::time::timeout(budget.min(self.timeout), self.send(&id, &body))
            .await
            .unwrap_or_else(|_| Err("the application did not answer in time".into()));
        match sent {
            Ok(reply) => {
                crate::prom::webhook_delivery("delivered");
                // OSS may call twice for one object: a pending copy is settled too.
                self.settle(&id).await;
                Outcome::Delivered(reply)
            }
            Err(why) => {
                crate::prom::webhook_delivery("failed");
                self.keep(id, body, why.clone()).await;
                Outcome::Pending(why)
            }
        }
    }

    async fn send(&self, id: &str, body: &str) -> Result<Option<serde_json::Value>, String> {
        let mut req = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .body(body.to_string());
        for (k, v) in self.headers(id, body, Utc::now()) {
            req = req.header(k, v);
        }
        let resp = req.send().await.map_err(short_error)?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("the application answered HTTP {}", status.as_u16()));
        }
        let json = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("application/json"));
        let bytes = resp.bytes().await.unwrap_or_default();
        Ok((json && bytes.len() <= MAX_REPLY_BYTES)
            .then(|| serde_json::from_slice(&bytes).ok())
            .flatten())
    }

    /// Records a failed attempt: in Redis when in fleet mode and it answers,
    /// else in this replica's set (and journal).
    async fn keep(&self, id: String, body: String, why: String) {
        if let Some(fleet) = &self.fleet
            && let Ok(known) = fleet.map_get(FLEET_MAP, &id).await
        {
            let known = known.and_then(|v| serde_json::from_slice::<Pending>(&v).ok());
            let entry = self.failed(known, id, body, why);
            let value = serde_json::to_vec(&entry).unwrap_or_default();
            if fleet.map_put(FLEET_MAP, &entry.id, &value).await.is_ok() {
                // Redis holds it now: a copy kept here would be sent twice.
                self.settle_local(&entry.id);
                return;
            }
            return self.keep_local(entry);
        }
        let known = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned();
        let entry = self.failed(known, id, body, why);
        self.keep_local(entry);
    }

    /// `known` (or a new record) after one more failed attempt.
    fn failed(&self, known: Option<Pending>, id: String, body: String, why: String) -> Pending {
        let now = Utc::now();
        let mut entry = known.unwrap_or_else(|| Pending {
            id,
            body,
            attempts: 0,
            first_failed_at: now,
            next_attempt_at: now,
            last_error: String::new(),
        });
        entry.attempts += 1;
        entry.last_error = why;
        entry.next_attempt_at = now + self.backoff(entry.attempts);
        entry
    }

    fn keep_local(&self, entry: Pending) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.insert(entry.id.clone(), entry.clone());
        let line = Entry::Pending(entry.clone());
        let n = pending.len();
        drop(pending);
        self.append(&line);
        crate::prom::webhooks_pending(n);
    }

    /// Delivered: removed here and, in fleet mode, from Redis (if Redis does
    /// not answer, its copy is redelivered later with the same webhook-id).
    async fn settle(&self, id: &str) {
        self.settle_local(id);
        if let Some(fleet) = &self.fleet {
            let _ = fleet.map_remove(FLEET_MAP, id).await;
        }
    }

    fn settle_local(&self, id: &str) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.remove(id).is_some() {
            let n = pending.len();
            drop(pending);
            self.append(&Entry::Delivered(id.to_string()));
            crate::prom::webhooks_pending(n);
        }
    }

    fn backoff(&self, attempts: u32) -> chrono::TimeDelta {
        let d = FIRST_RETRY
            .saturating_mul(1u32 << attempts.saturating_sub(1).min(20))
            .min(self.retry_max);
        chrono::TimeDelta::from_std(d).unwrap_or(chrono::TimeDelta::MAX)
    }

    fn append(&self, entry: &Entry) {
        let Some((path, file)) = &self.journal else { return };
        let mut line = serde_json::to_vec(entry).unwrap_or_default();
        line.push(b'\n');
        let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = f.write_all(&line).and_then(|()| f.sync_data()) {
            warn!(target: "ossvend::audit", error = %e, path = %path.display(), "cannot write the webhook journal");
        }
    }

    /// The pending events, oldest first: this replica's and, in fleet mode,
    /// the fleet's (while Redis answers).
    pub async fn pending(&self) -> Vec<Pending> {
        let mut all = self.pending_local();
        all.extend(self.pending_fleet().await);
        let mut by_id = BTreeMap::new();
        for p in all {
            by_id.entry(p.id.clone()).or_insert(p);
        }
        let mut out: Vec<Pending> = by_id.into_values().collect();
        out.sort_by_key(|p| p.first_failed_at);
        out
    }

    fn pending_local(&self) -> Vec<Pending> {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.values().cloned().collect()
    }

    async fn pending_fleet(&self) -> Vec<Pending> {
        let Some(fleet) = &self.fleet else {
            return Vec::new();
        };
        let values = fleet.map_all(FLEET_MAP).await.unwrap_or_default();
        values
            .iter()
            .filter_map(|v| serde_json::from_slice::<Pending>(v).ok())
            .collect()
    }

    /// One redelivery round: every due event is tried once; a fleet event
    /// only by the replica that takes its lock.
    pub async fn redeliver_due(&self) {
        let now = Utc::now();
        for p in self
            .pending_local()
            .into_iter()
            .filter(|p| p.next_attempt_at <= now)
        {
            self.redeliver(p).await;
        }
        let Some(fleet) = &self.fleet else { return };
        for p in self
            .pending_fleet()
            .await
            .into_iter()
            .filter(|p| p.next_attempt_at <= now)
        {
            let Ok(Some(lock)) = fleet.try_lock(&format!("webhook\0{}", p.id)).await else {
                continue;
            };
            // Another replica may have sent it since the listing: look again under the lock.
            let now_due = fleet.map_get(FLEET_MAP, &p.id).await.ok().flatten();
            let now_due = now_due.and_then(|v| serde_json::from_slice::<Pending>(&v).ok());
            if let Some(p) = now_due.filter(|p| p.next_attempt_at <= Utc::now()) {
                self.redeliver(p).await;
            }
            fleet.unlock(lock).await;
        }
    }

    async fn redeliver(&self, p: Pending) {
        match self.send(&p.id, &p.body).await {
            Ok(_) => {
                crate::prom::webhook_delivery("redelivered");
                info!(target: "ossvend::audit", webhook_id = %p.id, attempts = p.attempts + 1, "webhook redelivered");
                self.settle(&p.id).await;
            }
            Err(why) => {
                crate::prom::webhook_delivery("failed");
                warn!(target: "ossvend::audit", webhook_id = %p.id, attempts = p.attempts + 1, error = %why, "webhook still pending");
                self.keep(p.id, p.body, why).await;
            }
        }
    }
}

/// Reads the journal (replaying additions and removals), then rewrites it with
/// only the pending events, so it does not grow without bound.
fn open_journal(
    dir: &std::path::Path,
) -> Result<(BTreeMap<String, Pending>, PathBuf, std::fs::File), String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("webhooks.data_dir: cannot create {}: {e}", dir.display()))?;
    let path = dir.join(JOURNAL);
    let mut pending = BTreeMap::new();
    if let Ok(f) = std::fs::File::open(&path) {
        for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
            match serde_json::from_str::<Entry>(&line) {
                Ok(Entry::Pending(p)) => {
                    pending.insert(p.id.clone(), p);
                }
                Ok(Entry::Delivered(id)) => {
                    pending.remove(&id);
                }
                // A line cut short by a crash: what it would have said is re-learnt on the next failure.
                Err(_) => {}
            }
        }
    }
    let tmp = dir.join(format!("{JOURNAL}.tmp"));
    let mut text = Vec::new();
    for p in pending.values() {
        text.extend(serde_json::to_vec(&Entry::Pending(p.clone())).unwrap_or_default());
        text.push(b'\n');
    }
    std::fs::write(&tmp, &text)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| format!("webhooks.data_dir: cannot write {}: {e}", path.display()))?;
    let file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(|e| format!("webhooks.data_dir: cannot open {}: {e}", path.display()))?;
    if !pending.is_empty() {
        info!(target: "ossvend::audit", pending = pending.len(), "webhook events pending from before the restart");
    }
    Ok((pending, path, file))
}

/// Redelivers due events every second while the instance lives (a reload that
/// changes `[webhooks]` drops it, and the task ends).
fn spawn_redelivery(hooks: Weak<Webhooks>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(h) = hooks.upgrade() else { return };
            h.redeliver_due().await;
        }
    });
}

/// A transport error without the URL's query (it could carry a token).
fn short_error(e: reqwest::Error) -> String {
    if e.is_timeout() {
        "the application did not answer in time".into()
    } else if e.is_connect() {
        "the application could not be reached".into()
    } else {
        format!("delivery failed: {}", e.without_url())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_follow_the_standard_webhooks_form() {
        assert_eq!(
            parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
                .unwrap()
                .len(),
            24
        );
        assert!(parse_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(parse_secret("whsec_c2hvcnQ=").is_err());
        assert!(parse_secret("whsec_***").is_err());
    }

    /// `ossvend local` with no `[webhooks] url`: the event is the answer, nothing
    /// is sent or kept; `serve`'s config (no `local_echo`) builds no sender at all.
    #[tokio::test]
    async fn local_echo_answers_with_the_event_and_keeps_nothing() {
        let cfg = WebhooksConfig {
            local_echo: true,
            ..WebhooksConfig::default()
        };
        let env = BTreeMap::new();
        let hooks = Webhooks::from_config(&cfg, &env, None).unwrap().unwrap();
        assert!(hooks.is_echo() && hooks.same_config(&cfg, &env, None));
        assert_eq!(hooks.vars_key().len(), 32);
        let event = UploadEvent {
            event: "upload.completed".into(),
            grant: "g".into(),
            subject: "anonymous".into(),
            bucket: "b".into(),
            key: "uploads/a.png".into(),
            size: 3,
            etag: "ABC".into(),
            content_type: "image/png".into(),
            request_id: "r".into(),
            upload: None,
            time: "2026-12-04T21:00:00Z".into(),
        };
        match hooks.deliver(&event, Duration::from_secs(1)).await {
            Outcome::Delivered(Some(v)) => assert_eq!(v, serde_json::to_value(&event).unwrap()),
            other => panic!("{other:?}"),
        }
        assert!(hooks.pending().await.is_empty());
        assert!(
            Webhooks::from_config(&WebhooksConfig::default(), &env, None)
                .unwrap()
                .is_none()
        );
    }

    /// The Standard Webhooks libraries' own example (the same in svix's and
    /// standardwebhooks' test suites).
    #[tokio::test]
    async fn the_signature_matches_the_specs_example() {
        let cfg = WebhooksConfig {
            url: Some("http://127.0.0.1:9/hook".into()),
            secret_env: Some("S".into()),
            ..Default::default()
        };
        let env = BTreeMap::from([(
            "S".to_string(),
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string(),
        )]);
        let hooks = Webhooks::from_config(&cfg, &env, None).unwrap().unwrap();
        let at = DateTime::from_timestamp(1_614_265_330, 0).unwrap();
        let [id, ts, sig] = hooks.headers("msg_p5jXN8AQM9LWM0D4loKWxJek", r#"{"test": 2432232314}"#, at);
        assert_eq!(
            (id.1.as_str(), ts.1.as_str()),
            ("msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330")
        );
        assert_eq!(sig.1, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn the_id_is_one_per_object_version() {
        let e = UploadEvent {
            event: "upload.completed".into(),
            grant: "g".into(),
            subject: "s".into(),
            bucket: "b".into(),
            key: "k".into(),
            size: 1,
            etag: "E".into(),
            content_type: "text/plain".into(),
            request_id: "r".into(),
            upload: None,
            time: "t".into(),
        };
        let again = UploadEvent {
            request_id: "r2".into(),
            time: "t2".into(),
            ..e.clone()
        };
        assert_eq!(e.id(), again.id());
        assert_ne!(
            e.id(),
            UploadEvent {
                etag: "F".into(),
                ..e.clone()
            }
            .id()
        );
        assert!(e.id().starts_with("upl_") && e.id().len() == 36);
    }
}
