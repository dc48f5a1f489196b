//! Fleet mode (`[shared]`): the state replicas share through a Redis-protocol
//! server — the credential cache's second level (sealed, see [`seal`]), the
//! fleet-wide single flight (a lock per key), the fleet STS budget and rate
//! limits (GCRA in one Lua script on the server's clock, so the replicas'
//! clocks do not matter).
//!
//! Every operation is bounded by `command_timeout`. The first failure opens a
//! circuit: the replica stops asking Redis (each caller falls back at once,
//! see `shared.on_unavailable`) and a background probe PINGs until Redis
//! answers again, then sharing resumes by itself.

pub mod seal;

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use tracing::{info, warn};

use crate::config::{OnUnavailable, SharedConfig};
pub use seal::Sealer;

/// Redis could not answer (down, slow, refused): the caller falls back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

/// How often a replica on its fallback PINGs Redis.
const PROBE_EVERY: Duration = Duration::from_millis(500);
/// Keys that failed to open, remembered to log each once (bounded).
const MAX_BAD_KEYS: usize = 10_000;

pub struct Fleet {
    conn: ConnectionManager,
    sealer: Sealer,
    prefix: String,
    /// Marks this replica's locks (compare-and-delete).
    replica: String,
    locks: AtomicU64,
    command_timeout: Duration,
    pub on_unavailable: OnUnavailable,
    pub replicas: u32,
    /// How long a flight's lock lives without its holder renewing it.
    pub flight_ttl: Duration,
    /// Stands for the identity in shared cache keys (see [`Fleet::connect`]).
    pub identity_tag: String,
    up: AtomicBool,
    bad_keys: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("prefix", &self.prefix)
            .field("up", &self.available())
            .finish_non_exhaustive()
    }
}

/// A flight lock this replica holds.
#[derive(Debug)]
pub struct Lock {
    name: String,
    token: String,
}

// Deletes the lock only if it is still ours (it may have expired and been taken).
const UNLOCK: &str =
    r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";
const EXTEND: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0";
// GCRA on the server's clock. ARGV: emission interval (µs), tolerance (µs,
// emission × (burst − 1)), 1 = reserve (always take, return the wait) or 0 =
// check (take only if allowed now). Returns {taken, wait µs}.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local emission = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - now - tolerance
if wait < 0 then wait = 0 end
if wait > 0 and ARGV[3] ~= '1' then return {0, wait} end
local new_tat = tat + emission
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.floor((new_tat - now) / 1000) + 1000)
return {1, wait}
";

/// A GCRA quota: one token every `emission`, up to `burst` at once.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    pub emission: Duration,
    pub burst: u32,
}

impl Quota {
    pub fn per_minute(n: u32) -> Self {
        Quota {
            emission: Duration::from_secs(60) / n.max(1),
            burst: n.max(1),
        }
    }
}

impl Fleet {
    /// Connects lazily (the server starts even when Redis is down, on its
    /// fallback) and starts the probe. `flight_ttl`: the STS timeout.
    /// `identity_tag` replaces the AccessKey id of the moment in shared cache
    /// keys: a fingerprint of the `[identity]` section, the same on every
    /// replica, where the AccessKey id of a temporary identity (RRSA, ECS
    /// role) differs per pod and per hour and would share nothing.
    pub async fn connect(
        cfg: &SharedConfig,
        flight_ttl: Duration,
        identity_tag: String,
        env: &BTreeMap<String, String>,
    ) -> Result<Arc<Fleet>, String> {
        let key = env
            .get(&cfg.encryption_key_env)
            .filter(|k| k.len() >= crate::config::validate::MIN_SHARED_KEY_BYTES)
            .ok_or_else(|| {
                format!(
                    "shared.encryption_key_env: {} is unset or too short",
                    cfg.encryption_key_env
                )
            })?;
        let mut info = redis::IntoConnectionInfo::into_connection_info(cfg.url.as_str())
            .map_err(|_| "shared.url: not a Redis URL".to_string())?;
        let mut settings = info.redis_settings().clone();
        if let Some(v) = &cfg.username_env {
            settings = settings.set_username(env.get(v).map(String::as_str).unwrap_or_default());
        }
        if let Some(v) = &cfg.password_env {
            settings = settings.set_password(env.get(v).map(String::as_str).unwrap_or_default());
        }
        info = info.set_redis_settings(settings);
        let client = match &cfg.ca_file {
            // The bundle replaces the public roots: a private CA's server is
            // checked against that CA (hostname included), nothing else.
            Some(path) => {
                let pem = crate::config::validate::read_ca_file(path)
                    .map_err(|e| format!("shared.ca_file: {e}"))?;
                let certs = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                };
                redis::Client::build_with_tls(info, certs)
            }
            None => redis::Client::open(info),
        }
        .map_err(|e| format!("shared.url: {}", redis_error(&e)))?;
        let manager = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.connect_timeout))
            .set_response_timeout(Some(cfg.command_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client, manager)
            .map_err(|e| format!("shared: cannot set up the Redis client: {}", redis_error(&e)))?;
        let fleet = Arc::new(Fleet {
            conn,
            sealer: Sealer::new(key.as_bytes()),
            prefix: cfg.key_prefix.clone(),
            replica: uuid::Uuid::new_v4().simple().to_string(),
            locks: AtomicU64::new(0),
            command_timeout: cfg.command_timeout,
            on_unavailable: cfg.on_unavailable,
            replicas: cfg.replicas.max(1),
            flight_ttl: flight_ttl.max(Duration::from_secs(1)),
            identity_tag,
            // Closed until the first PING answers.
            up: AtomicBool::new(false),
            bad_keys: Mutex::new(HashSet::new()),
        });
        if fleet.ping().await {
            fleet.mark_up();
        } else {
            warn!("shared: Redis does not answer; running on the fallback until it does");
            crate::prom::shared_available(false);
        }
        spawn_probe(Arc::downgrade(&fleet));
        Ok(fleet)
    }

    /// Whether Redis answered the last command (false: on the fallback).
    pub fn available(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            info!("shared: Redis answers; sharing state with the fleet");
        }
        crate::prom::shared_available(true);
    }

    fn mark_down(&self, op: &'static str, why: &str) {
        crate::prom::shared_error(op);
        if self.up.swap(false, Ordering::AcqRel) {
            warn!(
                op,
                error = why,
                "shared: Redis unavailable; on the fallback until it answers again"
            );
        }
        crate::prom::shared_available(false);
    }

    async fn ping(&self) -> bool {
        let mut c = self.conn.clone();
        let ping = async move { redis::cmd("PING").query_async::<String>(&mut c).await };
        matches!(tokio::time::timeout(self.command_timeout, ping).await, Ok(Ok(_)))
    }

    /// One command, skipped while the circuit is open, bounded and measured.
    async fn run<T, F>(&self, op: &'static str, f: F) -> Result<T, Unavailable>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        if !self.available() {
            return Err(Unavailable);
        }
        let started = Instant::now();
        let result = tokio::time::timeout(self.command_timeout, f).await;
        crate::prom::shared_latency(op, started.elapsed());
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.mark_down(op, &redis_error(&e));
                Err(Unavailable)
            }
            Err(_) => {
                self.mark_down(op, "timed out");
                Err(Unavailable)
            }
        }
    }

    pub fn name(&self, kind: &str, plain: &str) -> String {
        self.sealer.name(&self.prefix, kind, plain)
    }

    /// The opened value under `plain` (a miss if absent or if it does not
    /// open: logged once per key and counted).
    pub async fn get_sealed(&self, kind: &str, plain: &str) -> Result<Option<Vec<u8>>, Unavailable> {
        let name = self.name(kind, plain);
        let mut c = self.conn.clone();
        let raw: Option<Vec<u8>> = self
            .run("get", redis::cmd("GET").arg(&name).query_async(&mut c))
            .await?;
        let Some(raw) = raw else { return Ok(None) };
        match self.sealer.open(plain, &raw) {
            Some(v) => Ok(Some(v)),
            None => {
                self.undecryptable(&name);
                Ok(None)
            }
        }
    }

    /// Counts an entry that did not open or parse; logs it once per key.
    pub fn undecryptable(&self, name: &str) {
        crate::prom::shared_undecryptable();
        let mut seen = self.bad_keys.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= MAX_BAD_KEYS {
            seen.clear();
        }
        if seen.insert(name.to_owned()) {
            warn!(
                key = name,
                "shared: an entry does not decrypt or parse with this replica's key; treated as a miss"
            );
        }
    }

    pub async fn put_sealed(
        &self,
        kind: &str,
        plain: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), Unavailable> {
        let ms = ttl.as_millis() as u64;
        if ms == 0 {
            return Ok(());
        }
        let (name, sealed) = (self.name(kind, plain), self.sealer.seal(plain, value));
        let mut c = self.conn.clone();
        let mut set = redis::cmd("SET");
        set.arg(&name).arg(sealed).arg("PX").arg(ms);
        self.run("set", set.query_async::<()>(&mut c)).await
    }

    /// Takes the flight lock of `plain` if nobody holds it.
    pub async fn try_lock(&self, plain: &str) -> Result<Option<Lock>, Unavailable> {
        let name = self.name("flight", plain);
        let token = format!("{}-{}", self.replica, self.locks.fetch_add(1, Ordering::Relaxed));
        let mut c = self.conn.clone();
        let ms = self.flight_ttl.as_millis() as u64;
        let mut set = redis::cmd("SET");
        set.arg(&name).arg(&token).arg("NX").arg("PX").arg(ms);
        let got: Option<String> = self.run("lock", set.query_async(&mut c)).await?;
        Ok(got.map(|_| Lock { name, token }))
    }

    pub async fn lock_held(&self, plain: &str) -> Result<bool, Unavailable> {
        let mut c = self.conn.clone();
        let mut exists = redis::cmd("EXISTS");
        exists.arg(self.name("flight", plain));
        Ok(self.run("exists", exists.query_async::<u32>(&mut c)).await? > 0)
    }

    /// Renews `lock` (its holder is alive, e.g. waiting for the STS budget).
    pub async fn extend(&self, lock: &Lock) -> Result<(), Unavailable> {
        let mut c = self.conn.clone();
        let script = redis::Script::new(EXTEND);
        let mut inv = script.key(&lock.name);
        inv.arg(&lock.token).arg(self.flight_ttl.as_millis() as u64);
        self.run("extend", inv.invoke_async::<u32>(&mut c))
            .await
            .map(drop)
    }

    pub async fn unlock(&self, lock: Lock) {
        let mut c = self.conn.clone();
        let script = redis::Script::new(UNLOCK);
        let mut inv = script.key(&lock.name);
        inv.arg(&lock.token);
        let _ = self.run("unlock", inv.invoke_async::<u32>(&mut c)).await;
    }

    /// GCRA under `<prefix><kind>:<hmac(plain)>`. `reserve`: always take a
    /// token and return how long to wait before using it (the STS budget);
    /// else take one only if allowed now and return `Err(wait)` when not.
    pub async fn gcra(
        &self,
        kind: &str,
        plain: &str,
        quota: Quota,
        reserve: bool,
    ) -> Result<Result<Duration, Duration>, Unavailable> {
        let emission = quota.emission.as_micros() as u64;
        let tolerance = emission * u64::from(quota.burst.max(1) - 1);
        let mut c = self.conn.clone();
        let script = redis::Script::new(GCRA);
        let mut inv = script.key(self.name(kind, plain));
        inv.arg(emission).arg(tolerance).arg(u8::from(reserve));
        let (taken, wait): (u8, u64) = self.run("gcra", inv.invoke_async(&mut c)).await?;
        let wait = Duration::from_micros(wait);
        Ok(if taken == 1 { Ok(wait) } else { Err(wait) })
    }

    /// A sealed member of the fleet-wide map `kind` (one Redis hash): the
    /// field is an HMAC of `member`, the value is sealed with the field as
    /// associated data (a value moved to another field does not open). No
    /// TTL: what the map holds (pending webhooks) must outlive any replica.
    pub async fn map_put(&self, kind: &str, member: &str, value: &[u8]) -> Result<(), Unavailable> {
        let field = self.name(kind, member);
        let sealed = self.sealer.seal(&field, value);
        let mut c = self.conn.clone();
        let mut hset = redis::cmd("HSET");
        hset.arg(self.name(kind, "")).arg(&field).arg(sealed);
        self.run("hset", hset.query_async::<()>(&mut c)).await
    }

    /// The opened value of `member` in the map `kind`, if any (one that does
    /// not open is a miss, counted).
    pub async fn map_get(&self, kind: &str, member: &str) -> Result<Option<Vec<u8>>, Unavailable> {
        let field = self.name(kind, member);
        let mut c = self.conn.clone();
        let mut hget = redis::cmd("HGET");
        hget.arg(self.name(kind, "")).arg(&field);
        let raw: Option<Vec<u8>> = self.run("hget", hget.query_async(&mut c)).await?;
        Ok(raw.and_then(|raw| self.open_field(&field, &raw)))
    }

    /// Every value of the map `kind` that opens with this replica's key.
    pub async fn map_all(&self, kind: &str) -> Result<Vec<Vec<u8>>, Unavailable> {
        let mut c = self.conn.clone();
        let mut hgetall = redis::cmd("HGETALL");
        hgetall.arg(self.name(kind, ""));
        let all: Vec<(String, Vec<u8>)> = self.run("hgetall", hgetall.query_async(&mut c)).await?;
        Ok(all
            .into_iter()
            .filter_map(|(field, raw)| self.open_field(&field, &raw))
            .collect())
    }

    /// Removes `member` from the map `kind`; true if it was there.
    pub async fn map_remove(&self, kind: &str, member: &str) -> Result<bool, Unavailable> {
        let mut c = self.conn.clone();
        let mut hdel = redis::cmd("HDEL");
        hdel.arg(self.name(kind, "")).arg(self.name(kind, member));
        Ok(self.run("hdel", hdel.query_async::<u32>(&mut c)).await? > 0)
    }

    fn open_field(&self, field: &str, raw: &[u8]) -> Option<Vec<u8>> {
        let opened = self.sealer.open(field, raw);
        if opened.is_none() {
            self.undecryptable(field);
        }
        opened
    }

    /// Keeps `lock` alive while its holder works; stops when dropped.
    pub fn keep_alive(self: &Arc<Self>, lock: &Lock) -> KeepAlive {
        let (fleet, lock) = (
            self.clone(),
            Lock {
                name: lock.name.clone(),
                token: lock.token.clone(),
            },
        );
        let every = self.flight_ttl / 3;
        KeepAlive(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let _ = fleet.extend(&lock).await;
            }
        }))
    }
}

/// Renews a flight lock until dropped.
pub struct KeepAlive(tokio::task::JoinHandle<()>);

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The error's kind and code only: its text may echo a command's arguments.
fn redis_error(e: &redis::RedisError) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connection_dropped() {
        "connection dropped"
    } else if e.is_connection_refusal() {
        "connection refused"
    } else {
        ""
    };
    format!("{:?} {} {what}", e.kind(), e.code().unwrap_or(""))
}

fn spawn_probe(fleet: Weak<Fleet>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(PROBE_EVERY).await;
            let Some(f) = fleet.upgrade() else { return };
            if !f.available() && f.ping().await {
                f.mark_up();
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: String) -> SharedConfig {
        SharedConfig {
            url,
            username_env: Some("U".into()),
            password_env: Some("P".into()),
            key_prefix: "t:".into(),
            encryption_key_env: "K".into(),
            on_unavailable: OnUnavailable::Local,
            replicas: 2,
            command_timeout: Duration::from_millis(100),
            connect_timeout: Duration::from_millis(100),
            ca_file: None,
        }
    }

    /// `rediss://` builds its rustls client (ring), and a Redis that is not
    /// there leaves the replica on its fallback, not failing to start.
    #[tokio::test]
    async fn tls_urls_build_and_an_absent_redis_is_the_fallback() {
        crate::tls::install_crypto_provider();
        let env = BTreeMap::from([
            ("K".to_string(), "k".repeat(32)),
            ("U".to_string(), "ossvend".to_string()),
            ("P".to_string(), "fake-password".to_string()),
        ]);
        for scheme in ["redis", "rediss"] {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let fleet = Fleet::connect(
                &config(format!("{scheme}://127.0.0.1:{port}")),
                Duration::from_secs(1),
                "id".into(),
                &env,
            )
            .await
            .unwrap();
            assert!(!fleet.available(), "{scheme}");
            assert_eq!(fleet.get_sealed("cred", "k").await, Err(Unavailable));
            assert!(!format!("{fleet:?}").contains("fake-password"));
        }
        // A short key is refused (the config check says so first).
        let short = BTreeMap::from([("K".to_string(), "short".to_string())]);
        let e = Fleet::connect(
            &config("redis://127.0.0.1:1".into()),
            Duration::from_secs(1),
            "id".into(),
            &short,
        )
        .await;
        assert!(e.unwrap_err().contains("too short"));
    }
}
