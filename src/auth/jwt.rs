//! Bearer JWTs from an external issuer, verified against its JWKS.
//!
//! * The header is read first: `alg` must be one of the configured asymmetric
//!   algorithms (never `none` or HS*) and fit the key's type and curve; `kid`
//!   picks the key and is required when the JWKS has more than one. Keys named
//!   by the token itself (`jku`, `jwk`, `x5u`) are ignored, and a `crit` header
//!   is refused.
//! * Keys are fetched from `jwks_url` and cached for `cache_ttl`. An unknown
//!   `kid` triggers one refetch (key rotation), at most once per
//!   `refetch_cooldown`; fetches are single-flight, so a burst of tokens signed
//!   by a new key costs the issuer one request. A failed fetch keeps the cached
//!   keys.
//! * Signatures are verified by `jsonwebtoken`; `exp` (required), `nbf`, `iss`
//!   and `aud` are checked here against an explicit clock, with `leeway`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use tracing::{debug, info, warn};

use super::error::AuthError;
use crate::config::JwtConfig;

/// The algorithms `auth.jwt.algorithms` may list.
pub const ALLOWED_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];
/// Longest token looked at.
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Largest JWKS document read.
const MAX_JWKS_BYTES: usize = 512 * 1024;
/// RSA keys with a shorter modulus are ignored.
const MIN_RSA_BITS: usize = 2048;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// While no keys at all are cached, a failed fetch is retried after at most this.
const EMPTY_CACHE_RETRY: Duration = Duration::from_secs(1);

/// A verified token: who it names and the template claims it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedJwt {
    pub subject: String,
    /// Only the configured `template_claims` present in the token: strings as
    /// they are, numbers and booleans in their JSON form; other values skipped.
    pub claims: BTreeMap<String, String>,
}

/// The name → algorithm map for [`ALLOWED_ALGORITHMS`], with the reason for
/// anything else.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    Ok(match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        n if n.eq_ignore_ascii_case("none") => {
            return Err(format!("{n:?} is refused: unsigned tokens are never accepted"));
        }
        n if n.to_ascii_uppercase().starts_with("HS") => {
            return Err(format!(
                "{n:?} is refused: HMAC needs a shared secret, and a JWKS publishes public keys \
                 (accepting it would let anyone who can read them forge tokens)"
            ));
        }
        n => {
            return Err(format!(
                "{n:?} is not supported; use one of {}",
                ALLOWED_ALGORITHMS.join(", ")
            ));
        }
    })
}

/// What a JWK can verify: RSA for RS*/PS*, one curve per ES*, Ed25519 for EdDSA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    fn fits(self, alg: Algorithm) -> bool {
        match self {
            KeyKind::Rsa => matches!(
                alg,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ),
            KeyKind::P256 => alg == Algorithm::ES256,
            KeyKind::P384 => alg == Algorithm::ES384,
            KeyKind::Ed25519 => alg == Algorithm::EdDSA,
        }
    }

    /// An algorithm of this kind, to check that the key parses.
    fn probe_algorithm(self) -> Algorithm {
        match self {
            KeyKind::Rsa => Algorithm::RS256,
            KeyKind::P256 => Algorithm::ES256,
            KeyKind::P384 => Algorithm::ES384,
            KeyKind::Ed25519 => Algorithm::EdDSA,
        }
    }
}

struct VerifyKey {
    kid: Option<String>,
    kind: KeyKind,
    /// The JWK's own `alg`, when it states one: then only that algorithm.
    alg: Option<Algorithm>,
    key: DecodingKey,
}

impl VerifyKey {
    fn fits(&self, alg: Algorithm) -> bool {
        self.kind.fits(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

#[derive(Default)]
struct KeyState {
    keys: Arc<Vec<VerifyKey>>,
    /// Last successful fetch.
    fetched_at: Option<Instant>,
    /// Last fetch attempt, successful or not.
    last_attempt: Option<Instant>,
    last_failed: bool,
    /// Bumped after every attempt, so that callers that waited for an attempt
    /// in flight use its outcome instead of fetching again.
    generation: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// Nothing cached yet, or the cache is older than `cache_ttl`.
    Stale,
    /// A token names a `kid` the cache does not have.
    UnknownKid,
}

enum Lookup {
    Found(DecodingKey),
    Unknown,
}

pub struct JwtVerifier {
    jwks_url: url::Url,
    http: reqwest::Client,
    issuer: String,
    audience: Vec<String>,
    algorithms: Vec<Algorithm>,
    subject_claim: String,
    template_claims: Vec<String>,
    leeway: i64,
    cache_ttl: Duration,
    refetch_cooldown: Duration,
    state: RwLock<KeyState>,
    /// Held for the whole of a fetch: the single flight.
    fetch_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("jwks_url", &self.jwks_url.as_str())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// Checks the configuration (URL, algorithms, issuer, audience) and builds
    /// the HTTP client; no request is made until the first token.
    pub fn new(cfg: &JwtConfig) -> Result<Self, String> {
        let jwks_url = url::Url::parse(&cfg.jwks_url).map_err(|e| format!("auth.jwt.jwks_url: {e}"))?;
        match jwks_url.scheme() {
            "https" => {}
            "http" if is_loopback(&jwks_url) => {}
            _ => {
                return Err("auth.jwt.jwks_url: must be https (http only on loopback)".into());
            }
        }
        if cfg.algorithms.is_empty() {
            return Err("auth.jwt.algorithms: must list at least one algorithm".into());
        }
        let mut algorithms = Vec::new();
        for name in &cfg.algorithms {
            let alg = parse_algorithm(name).map_err(|e| format!("auth.jwt.algorithms: {e}"))?;
            if !algorithms.contains(&alg) {
                algorithms.push(alg);
            }
        }
        if cfg.issuer.is_empty() {
            return Err("auth.jwt.issuer: must not be empty".into());
        }
        if cfg.audience.is_empty() || cfg.audience.iter().any(String::is_empty) {
            return Err("auth.jwt.audience: must list at least one non-empty audience".into());
        }
        if cfg.subject_claim.is_empty() {
            return Err("auth.jwt.subject_claim: must not be empty".into());
        }
        crate::tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(FETCH_TIMEOUT)
            // A redirect could leave https; the configured URL is the one trusted.
            .redirect(reqwest::redirect::Policy::none())
            // Fetches are minutes apart: nothing is gained by idle connections.
            .pool_max_idle_per_host(0)
            .user_agent(concat!("ossvend/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the JWKS HTTP client: {e}"))?;
        Ok(JwtVerifier {
            jwks_url,
            http,
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            algorithms,
            subject_claim: cfg.subject_claim.clone(),
            template_claims: cfg.template_claims.clone(),
            leeway: i64::try_from(cfg.leeway.as_secs()).unwrap_or(i64::MAX),
            cache_ttl: cfg.cache_ttl,
            refetch_cooldown: cfg.refetch_cooldown,
            state: RwLock::new(KeyState::default()),
            fetch_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// Fetches the keys now unless fresh ones are cached (e.g. at startup);
    /// returns how many are cached.
    pub async fn warm_up(&self) -> Result<usize, AuthError> {
        let (keys, generation, fresh) = self.snapshot();
        let keys = if fresh {
            keys
        } else {
            self.refresh(generation, Trigger::Stale).await;
            self.snapshot().0
        };
        if keys.is_empty() {
            Err(AuthError::KeysUnavailable)
        } else {
            Ok(keys.len())
        }
    }

    pub async fn verify(&self, token: &str) -> Result<VerifiedJwt, AuthError> {
        self.verify_at(token, Utc::now()).await
    }

    /// [`verify`](Self::verify) with an explicit clock for `exp` and `nbf`.
    pub async fn verify_at(&self, token: &str, now: DateTime<Utc>) -> Result<VerifiedJwt, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Invalid("malformed"));
        }
        let (alg, kid) = self.read_header(token)?;
        let key = self.key_for(kid.as_deref(), alg).await?;
        let mut validation = Validation::new(alg);
        // Claims are checked below, against `now`; jsonwebtoken checks the
        // signature (and that `alg` is the one expected for this key).
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation).map_err(|e| {
            AuthError::Invalid(match e.kind() {
                ErrorKind::InvalidSignature => "bad_signature",
                ErrorKind::InvalidAlgorithm => "alg_key_mismatch",
                ErrorKind::InvalidEcdsaKey
                | ErrorKind::InvalidEddsaKey
                | ErrorKind::InvalidRsaKey(_)
                | ErrorKind::InvalidKeyFormat => "bad_key",
                _ => "malformed",
            })
        })?;
        self.check_claims(&data.claims, now.timestamp())
    }

    /// `alg` (allowed) and `kid` from the header, before any key is touched.
    fn read_header(&self, token: &str) -> Result<(Algorithm, Option<String>), AuthError> {
        const MALFORMED: AuthError = AuthError::Invalid("malformed");
        let mut parts = token.split('.');
        let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(MALFORMED);
        };
        let bytes = URL_SAFE_NO_PAD.decode(header).map_err(|_| MALFORMED)?;
        let header: Map<String, Value> = serde_json::from_slice(&bytes).map_err(|_| MALFORMED)?;
        let name = header.get("alg").and_then(Value::as_str).ok_or(MALFORMED)?;
        let alg = parse_algorithm(name).map_err(|_| AuthError::Invalid("alg_not_allowed"))?;
        if !self.algorithms.contains(&alg) {
            return Err(AuthError::Invalid("alg_not_allowed"));
        }
        if header.contains_key("crit") {
            return Err(AuthError::Invalid("unsupported_header"));
        }
        let kid = match header.get("kid") {
            None | Some(Value::Null) => None,
            Some(Value::String(kid)) => Some(kid.clone()),
            Some(_) => return Err(MALFORMED),
        };
        Ok((alg, kid))
    }

    fn snapshot(&self) -> (Arc<Vec<VerifyKey>>, u64, bool) {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        let fresh = st.fetched_at.is_some_and(|t| t.elapsed() < self.cache_ttl);
        (st.keys.clone(), st.generation, fresh)
    }

    async fn key_for(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, AuthError> {
        let (mut keys, mut generation, fresh) = self.snapshot();
        if !fresh {
            self.refresh(generation, Trigger::Stale).await;
            (keys, generation, _) = self.snapshot();
        }
        if keys.is_empty() {
            return Err(AuthError::KeysUnavailable);
        }
        if let Lookup::Found(key) = select(&keys, kid, alg)? {
            return Ok(key);
        }
        // An unknown kid: perhaps the issuer rotated its keys.
        self.refresh(generation, Trigger::UnknownKid).await;
        let (keys, _, _) = self.snapshot();
        match select(&keys, kid, alg)? {
            Lookup::Found(key) => Ok(key),
            Lookup::Unknown => Err(AuthError::Invalid("unknown_kid")),
        }
    }

    /// Fetches the JWKS unless another caller did (or tried) since `seen` was
    /// read, or the cooldown forbids it. Never fails: the outcome is in the
    /// state.
    async fn refresh(&self, seen: u64, trigger: Trigger) {
        let _flight = self.fetch_lock.lock().await;
        {
            let st = self.state.read().unwrap_or_else(|e| e.into_inner());
            if st.generation != seen {
                return;
            }
            if let Some(last) = st.last_attempt {
                let since = last.elapsed();
                let wait = match trigger {
                    Trigger::UnknownKid => self.refetch_cooldown,
                    Trigger::Stale if st.last_failed && st.keys.is_empty() => {
                        self.refetch_cooldown.min(EMPTY_CACHE_RETRY)
                    }
                    Trigger::Stale if st.last_failed => self.refetch_cooldown,
                    Trigger::Stale => Duration::ZERO,
                };
                if since < wait {
                    debug!(?trigger, "JWKS refetch skipped: cooldown");
                    return;
                }
            }
        }
        let result = self.fetch().await;
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        st.generation += 1;
        st.last_attempt = Some(now);
        match result {
            Ok((keys, skipped)) => {
                info!(
                    url = %self.jwks_url,
                    keys = keys.len(),
                    skipped,
                    ?trigger,
                    "fetched the JWKS"
                );
                st.keys = Arc::new(keys);
                st.fetched_at = Some(now);
                st.last_failed = false;
            }
            Err(e) => {
                warn!(
                    url = %self.jwks_url,
                    error = %e,
                    cached_keys = st.keys.len(),
                    ?trigger,
                    "JWKS fetch failed; keeping the cached keys"
                );
                st.last_failed = true;
            }
        }
    }

    /// The usable signing keys of the JWKS, and how many entries were skipped.
    async fn fetch(&self) -> Result<(Vec<VerifyKey>, usize), String> {
        let mut resp = self
            .http
            .get(self.jwks_url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| describe(&e))?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status().as_u16()));
        }
        if resp.content_length().is_some_and(|n| n > MAX_JWKS_BYTES as u64) {
            return Err(format!("the JWKS is larger than {MAX_JWKS_BYTES} bytes"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| describe(&e))? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_JWKS_BYTES {
                return Err(format!("the JWKS is larger than {MAX_JWKS_BYTES} bytes"));
            }
        }
        #[derive(serde::Deserialize)]
        struct Set {
            keys: Vec<Value>,
        }
        let set: Set = serde_json::from_slice(&body).map_err(|e| format!("not a JWKS: {e}"))?;
        let total = set.keys.len();
        let keys: Vec<VerifyKey> = set.keys.into_iter().filter_map(usable_key).collect();
        if keys.is_empty() {
            return Err(format!("no usable signing key among {total}"));
        }
        let skipped = total - keys.len();
        Ok((keys, skipped))
    }

    fn check_claims(&self, claims: &Map<String, Value>, now: i64) -> Result<VerifiedJwt, AuthError> {
        let exp = numeric_date(claims.get("exp"))?.ok_or(AuthError::Invalid("missing_exp"))?;
        if now >= exp.saturating_add(self.leeway) {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = numeric_date(claims.get("nbf"))?
            && nbf > now.saturating_add(self.leeway)
        {
            return Err(AuthError::NotYetValid);
        }
        if claims.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err(AuthError::Invalid("wrong_issuer"));
        }
        let audience_ok = match claims.get("aud") {
            Some(Value::String(aud)) => self.audience.contains(aud),
            Some(Value::Array(auds)) => auds
                .iter()
                .filter_map(Value::as_str)
                .any(|aud| self.audience.iter().any(|a| a == aud)),
            _ => false,
        };
        if !audience_ok {
            return Err(AuthError::Invalid("wrong_audience"));
        }
        let subject = match claims.get(&self.subject_claim) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(AuthError::Invalid("missing_subject")),
        };
        let claims = self
            .template_claims
            .iter()
            .filter_map(|name| {
                let value = match claims.get(name)? {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => return None,
                };
                Some((name.clone(), value))
            })
            .collect();
        Ok(VerifiedJwt { subject, claims })
    }
}

/// The key for `kid` and `alg`: `Unknown` when no key has that kid (worth a
/// refetch), an error when the token cannot be matched to a key at all.
fn select(keys: &[VerifyKey], kid: Option<&str>, alg: Algorithm) -> Result<Lookup, AuthError> {
    let candidates: Vec<&VerifyKey> = match kid {
        Some(kid) => {
            let named: Vec<&VerifyKey> = keys.iter().filter(|k| k.kid.as_deref() == Some(kid)).collect();
            match (named.is_empty(), keys) {
                (false, _) => named,
                // One key and it has no kid: the token's kid is only a hint.
                (true, [only]) if only.kid.is_none() => vec![only],
                (true, _) => return Ok(Lookup::Unknown),
            }
        }
        None => match keys {
            [only] => vec![only],
            _ => return Err(AuthError::Invalid("missing_kid")),
        },
    };
    candidates
        .into_iter()
        .find(|k| k.fits(alg))
        .map(|k| Lookup::Found(k.key.clone()))
        .ok_or(AuthError::Invalid("alg_key_mismatch"))
}

/// A JWK worth keeping: a public signing key of a supported type and size.
fn usable_key(value: Value) -> Option<VerifyKey> {
    let jwk: Jwk = serde_json::from_value(value).ok()?;
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return None;
    }
    if jwk
        .common
        .key_operations
        .as_ref()
        .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
    {
        return None;
    }
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            let n = URL_SAFE_NO_PAD.decode(&p.n).ok()?;
            if rsa_bits(&n) < MIN_RSA_BITS {
                return None;
            }
            KeyKind::Rsa
        }
        AlgorithmParameters::EllipticCurve(p) => {
            let (kind, len) = match p.curve {
                EllipticCurve::P256 => (KeyKind::P256, 32),
                EllipticCurve::P384 => (KeyKind::P384, 48),
                _ => return None,
            };
            if decoded_len(&p.x) != Some(len) || decoded_len(&p.y) != Some(len) {
                return None;
            }
            kind
        }
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            // Exactly 32 bytes: jsonwebtoken 11 panics on a shorter `x`.
            if decoded_len(&p.x) != Some(32) {
                return None;
            }
            KeyKind::Ed25519
        }
        // Symmetric (`oct`) keys never verify anything here.
        _ => return None,
    };
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(a) => {
            let alg = Algorithm::try_from(a).ok()?;
            if !kind.fits(alg) {
                return None;
            }
            Some(alg)
        }
    };
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    if kind != KeyKind::Rsa {
        // EC points and Ed25519 keys are parsed when a verifier is made: an
        // unparseable key is an error, a bad signature merely `false`.
        jsonwebtoken::crypto::verify("", b"", &key, kind.probe_algorithm()).ok()?;
    }
    Some(VerifyKey {
        kid: jwk.common.key_id.clone(),
        kind,
        alg,
        key,
    })
}

fn decoded_len(b64: &str) -> Option<usize> {
    URL_SAFE_NO_PAD.decode(b64).ok().map(|v| v.len())
}

fn rsa_bits(n: &[u8]) -> usize {
    match n.iter().position(|&b| b != 0) {
        Some(i) => (n.len() - i) * 8 - n[i].leading_zeros() as usize,
        None => 0,
    }
}

/// A NumericDate claim in whole seconds; `None` when absent.
fn numeric_date(v: Option<&Value>) -> Result<Option<i64>, AuthError> {
    match v {
        None => Ok(None),
        Some(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Ok(Some(i)),
            (None, Some(f)) if f.is_finite() => Ok(Some(f.floor() as i64)),
            _ => Err(AuthError::Invalid("malformed")),
        },
        Some(_) => Err(AuthError::Invalid("malformed")),
    }
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// A transport error without the URL (it is logged separately).
fn describe(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut msg = what.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        cur = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;
    use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};

    use axum::extract::State;
    use axum::response::{IntoResponse, Response};
    use hmac::{Hmac, Mac};
    use jsonwebtoken::{EncodingKey, Header};
    use rand::RngCore as _;
    use serde_json::json;

    use super::*;

    const ISS: &str = "https://issuer.example";
    const AUD: &str = "ossvend";

    // ---- keys ---------------------------------------------------------------

    /// RSA key generation is slow in debug builds: one 2048-bit key for all tests.
    static RSA_DER: LazyLock<Vec<u8>> = LazyLock::new(|| {
        use rsa::pkcs1::EncodeRsaPrivateKey as _;
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        key.to_pkcs1_der().unwrap().as_bytes().to_vec()
    });

    struct TestKey {
        alg: Algorithm,
        kid: Option<String>,
        enc: EncodingKey,
        /// The public JWK as published.
        jwk: Value,
    }

    impl TestKey {
        fn rsa(kid: &str, declared: Option<Algorithm>) -> TestKey {
            let enc = EncodingKey::from_rsa_der(&RSA_DER);
            let mut jwk = Jwk::from_encoding_key(&enc, Algorithm::RS256).unwrap();
            jwk.common.key_algorithm = declared.map(Into::into);
            jwk.common.key_id = Some(kid.into());
            TestKey {
                alg: declared.unwrap_or(Algorithm::RS256),
                kid: Some(kid.into()),
                enc,
                jwk: serde_json::to_value(&jwk).unwrap(),
            }
        }

        fn es256(kid: &str) -> TestKey {
            use p256::pkcs8::EncodePrivateKey as _;
            let sk = p256::ecdsa::SigningKey::random(&mut rsa::rand_core::OsRng);
            let enc = EncodingKey::from_ec_der(sk.to_pkcs8_der().unwrap().as_bytes());
            let mut jwk = Jwk::from_encoding_key(&enc, Algorithm::ES256).unwrap();
            jwk.common.key_id = Some(kid.into());
            TestKey {
                alg: Algorithm::ES256,
                kid: Some(kid.into()),
                enc,
                jwk: serde_json::to_value(&jwk).unwrap(),
            }
        }

        fn ed25519(kid: &str) -> TestKey {
            use ed25519_dalek::pkcs8::EncodePrivateKey as _;
            let mut seed = [0u8; 32];
            rand::rng().fill_bytes(&mut seed);
            let sk = ed25519_dalek::SigningKey::from_bytes(&seed);
            let enc = EncodingKey::from_ed_der(sk.to_pkcs8_der().unwrap().as_bytes());
            let x = URL_SAFE_NO_PAD.encode(sk.verifying_key().as_bytes());
            TestKey {
                alg: Algorithm::EdDSA,
                kid: Some(kid.into()),
                enc,
                jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "use": "sig"}),
            }
        }

        fn without_kid(mut self) -> TestKey {
            self.kid = None;
            self.jwk.as_object_mut().unwrap().remove("kid");
            self
        }

        fn sign(&self, claims: &Value) -> String {
            self.sign_with(self.alg, self.kid.as_deref(), claims)
        }

        fn sign_with(&self, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
            let mut header = Header::new(alg);
            header.kid = kid.map(Into::into);
            jsonwebtoken::encode(&header, claims, &self.enc).unwrap()
        }
    }

    fn now() -> i64 {
        Utc::now().timestamp()
    }

    fn claims() -> Value {
        json!({
            "iss": ISS, "aud": AUD, "sub": "alice", "iat": now(), "exp": now() + 600,
            "tenant": "acme", "n": 42, "flag": true, "obj": {"a": 1}, "list": [1],
        })
    }

    fn with(mut claims: Value, changes: Value) -> Value {
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        claims
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A token put together by hand: any header, any signature.
    fn hand_made(header: &Value, claims: &Value, sign: impl FnOnce(&str) -> Vec<u8>) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = sign(&input);
        format!("{input}.{}", b64(&sig))
    }

    // ---- a JWKS endpoint on loopback ------------------------------------------

    #[derive(Default)]
    struct Issuer {
        jwks: std::sync::Mutex<Value>,
        hits: AtomicUsize,
        delay_ms: AtomicU64,
        /// 0: serve the JWKS; anything else: answer with that status.
        status: AtomicU16,
    }

    impl Issuer {
        fn publish(&self, keys: &[&TestKey]) {
            let keys: Vec<Value> = keys.iter().map(|k| k.jwk.clone()).collect();
            *self.jwks.lock().unwrap() = json!({ "keys": keys });
        }
        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }
    }

    async fn jwks(State(issuer): State<Arc<Issuer>>) -> Response {
        issuer.hits.fetch_add(1, Ordering::SeqCst);
        let delay = issuer.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        match issuer.status.load(Ordering::SeqCst) {
            0 => axum::Json(issuer.jwks.lock().unwrap().clone()).into_response(),
            s => (axum::http::StatusCode::from_u16(s).unwrap(), "unavailable").into_response(),
        }
    }

    struct Server {
        issuer: Arc<Issuer>,
        url: String,
        task: tokio::task::JoinHandle<()>,
    }

    async fn serve(keys: &[&TestKey]) -> Server {
        let issuer = Arc::new(Issuer::default());
        issuer.publish(keys);
        let app = axum::Router::new()
            .route("/.well-known/jwks.json", axum::routing::get(jwks))
            .with_state(issuer.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Server {
            issuer,
            url: format!("http://{addr}/.well-known/jwks.json"),
            task,
        }
    }

    fn config(url: &str) -> JwtConfig {
        JwtConfig {
            jwks_url: url.into(),
            issuer: ISS.into(),
            audience: vec![AUD.into(), "ossvend-staging".into()],
            algorithms: vec!["RS256".into(), "PS256".into(), "ES256".into(), "EdDSA".into()],
            subject_claim: "sub".into(),
            template_claims: vec![
                "tenant".into(),
                "n".into(),
                "flag".into(),
                "obj".into(),
                "list".into(),
                "absent".into(),
            ],
            leeway: Duration::from_secs(30),
            cache_ttl: Duration::from_secs(600),
            refetch_cooldown: Duration::ZERO,
        }
    }

    fn verifier(cfg: &JwtConfig) -> JwtVerifier {
        JwtVerifier::new(cfg).unwrap()
    }

    fn invalid(reason: &'static str) -> Result<VerifiedJwt, AuthError> {
        Err(AuthError::Invalid(reason))
    }

    // ---- configuration ------------------------------------------------------

    #[test]
    fn config_refuses_unsafe_algorithms_and_urls() {
        let ok = config("https://issuer.example/jwks.json");
        assert!(JwtVerifier::new(&ok).is_ok());
        for url in [
            "http://127.0.0.1:9/jwks",
            "http://localhost/jwks",
            "http://[::1]:8/jwks",
        ] {
            assert!(
                JwtVerifier::new(&JwtConfig {
                    jwks_url: url.into(),
                    ..ok.clone()
                })
                .is_ok(),
                "{url}"
            );
        }
        for url in [
            "http://issuer.example/jwks",
            "ftp://issuer.example/jwks",
            "not a url",
        ] {
            let err = JwtVerifier::new(&JwtConfig {
                jwks_url: url.into(),
                ..ok.clone()
            })
            .unwrap_err();
            assert!(err.starts_with("auth.jwt.jwks_url"), "{url}: {err}");
        }
        for alg in [
            "none", "None", "HS256", "HS384", "HS512", "hs256", "ES512", "RSA-OAEP", "",
        ] {
            let cfg = JwtConfig {
                algorithms: vec!["RS256".into(), alg.into()],
                ..ok.clone()
            };
            let err = JwtVerifier::new(&cfg).unwrap_err();
            assert!(err.starts_with("auth.jwt.algorithms"), "{alg}: {err}");
        }
        for alg in ALLOWED_ALGORITHMS {
            let cfg = JwtConfig {
                algorithms: vec![alg.to_string()],
                ..ok.clone()
            };
            assert!(JwtVerifier::new(&cfg).is_ok(), "{alg}");
        }
        assert!(
            JwtVerifier::new(&JwtConfig {
                algorithms: vec![],
                ..ok.clone()
            })
            .is_err()
        );
        assert!(
            JwtVerifier::new(&JwtConfig {
                audience: vec![],
                ..ok.clone()
            })
            .is_err()
        );
        assert!(
            JwtVerifier::new(&JwtConfig {
                audience: vec!["".into()],
                ..ok.clone()
            })
            .is_err()
        );
        assert!(
            JwtVerifier::new(&JwtConfig {
                issuer: "".into(),
                ..ok.clone()
            })
            .is_err()
        );
        assert!(
            JwtVerifier::new(&JwtConfig {
                subject_claim: "".into(),
                ..ok
            })
            .is_err()
        );
    }

    // ---- valid tokens -------------------------------------------------------

    #[tokio::test]
    async fn valid_rs256_ps256_es256_and_eddsa_tokens() {
        let rs = TestKey::rsa("rsa-1", Some(Algorithm::RS256));
        // The same RSA key published again without a declared `alg`: any RSA algorithm.
        let rsa_any = TestKey::rsa("rsa-any", None);
        let es = TestKey::es256("ec-1");
        let ed = TestKey::ed25519("ed-1");
        let server = serve(&[&rs, &rsa_any, &es, &ed]).await;
        let v = verifier(&config(&server.url));

        let expected_claims = BTreeMap::from([
            ("tenant".to_string(), "acme".to_string()),
            ("n".to_string(), "42".to_string()),
            ("flag".to_string(), "true".to_string()),
        ]);
        for token in [
            rs.sign(&claims()),
            rsa_any.sign_with(Algorithm::PS256, Some("rsa-any"), &claims()),
            rsa_any.sign_with(Algorithm::RS256, Some("rsa-any"), &claims()),
            es.sign(&claims()),
            ed.sign(&claims()),
        ] {
            let got = v.verify(&token).await.unwrap();
            assert_eq!(got.subject, "alice");
            assert_eq!(got.claims, expected_claims);
        }
        // `aud` as an array; the second configured audience.
        let token = es.sign(&with(
            claims(),
            json!({"aud": ["someone-else", "ossvend-staging"]}),
        ));
        assert!(v.verify(&token).await.is_ok());
        // One fetch for all of it.
        assert_eq!(server.issuer.hits(), 1);
        assert_eq!(v.warm_up().await, Ok(4));
        assert_eq!(server.issuer.hits(), 1);
    }

    #[tokio::test]
    async fn subject_comes_from_the_configured_claim() {
        let es = TestKey::es256("ec-1");
        let server = serve(&[&es]).await;
        let v = verifier(&JwtConfig {
            subject_claim: "email".into(),
            template_claims: vec![],
            ..config(&server.url)
        });
        let got = v
            .verify(&es.sign(&with(claims(), json!({"email": "alice@example.com"}))))
            .await
            .unwrap();
        assert_eq!(got.subject, "alice@example.com");
        assert!(got.claims.is_empty());
        for bad in [json!({"email": null}), json!({"email": ""}), json!({"email": 7})] {
            assert_eq!(
                v.verify(&es.sign(&with(claims(), bad.clone()))).await,
                invalid("missing_subject"),
                "{bad}"
            );
        }
    }

    // ---- claims -------------------------------------------------------------

    #[tokio::test]
    async fn expiry_with_leeway() {
        let es = TestKey::es256("ec-1");
        let server = serve(&[&es]).await;
        let v = verifier(&config(&server.url));
        let t = |exp: Value| es.sign(&with(claims(), json!({ "exp": exp })));

        assert_eq!(v.verify(&t(json!(now() - 31))).await, Err(AuthError::Expired));
        assert_eq!(v.verify(&t(json!(now() - 3600))).await, Err(AuthError::Expired));
        // Within the 30 s leeway.
        assert!(v.verify(&t(json!(now() - 10))).await.is_ok());
        // Fractional NumericDate.
        assert!(v.verify(&t(json!(now() as f64 + 60.5))).await.is_ok());
        assert_eq!(v.verify(&t(json!("tomorrow"))).await, invalid("malformed"));
        assert_eq!(
            v.verify(&es.sign(&with(claims(), json!({"exp": null})))).await,
            invalid("missing_exp")
        );

        // The clock is injectable.
        let token = t(json!(now() + 600));
        let later = Utc::now() + chrono::Duration::seconds(700);
        assert_eq!(v.verify_at(&token, later).await, Err(AuthError::Expired));
        assert!(v.verify_at(&token, Utc::now()).await.is_ok());
    }

    #[tokio::test]
    async fn not_before_in_the_future() {
        let es = TestKey::es256("ec-1");
        let server = serve(&[&es]).await;
        let v = verifier(&config(&server.url));
        let t = |nbf: i64| es.sign(&with(claims(), json!({ "nbf": nbf })));
        assert_eq!(v.verify(&t(now() + 60)).await, Err(AuthError::NotYetValid));
        assert!(v.verify(&t(now() + 10)).await.is_ok()); // leeway
        assert!(v.verify(&t(now() - 10)).await.is_ok());
        let token = t(now() + 600);
        let later = Utc::now() + chrono::Duration::seconds(590);
        assert!(v.verify_at(&token, later).await.is_ok());
    }

    #[tokio::test]
    async fn wrong_audience_or_issuer() {
        let es = TestKey::es256("ec-1");
        let server = serve(&[&es]).await;
        let v = verifier(&config(&server.url));
        for aud in [
            json!("someone-else"),
            json!(["a", "b"]),
            json!([]),
            json!(null),
            json!(7),
        ] {
            let token = es.sign(&with(claims(), json!({ "aud": aud })));
            assert_eq!(v.verify(&token).await, invalid("wrong_audience"), "{aud}");
        }
        for iss in [
            json!("https://evil.example"),
            json!(null),
            json!([ISS]),
            json!(""),
        ] {
            let token = es.sign(&with(claims(), json!({ "iss": iss })));
            assert_eq!(v.verify(&token).await, invalid("wrong_issuer"), "{iss}");
        }
    }

    // ---- signatures and algorithms --------------------------------------------

    #[tokio::test]
    async fn bad_signature() {
        let es = TestKey::es256("ec-1");
        let rs = TestKey::rsa("rsa-1", Some(Algorithm::RS256));
        let server = serve(&[&es, &rs]).await;
        let v = verifier(&config(&server.url));

        for token in [es.sign(&claims()), rs.sign(&claims())] {
            let (input, sig) = token.rsplit_once('.').unwrap();
            let mut raw = URL_SAFE_NO_PAD.decode(sig).unwrap();
            raw[10] ^= 0x01;
            let tampered = format!("{input}.{}", b64(&raw));
            assert_eq!(v.verify(&tampered).await, invalid("bad_signature"));
            // Claims changed under the original signature.
            let (header, _) = input.split_once('.').unwrap();
            let forged_claims = b64(with(claims(), json!({"sub": "root"})).to_string().as_bytes());
            assert_eq!(
                v.verify(&format!("{header}.{forged_claims}.{sig}")).await,
                invalid("bad_signature")
            );
        }
        // Signed by another key that claims the published kid.
        let impostor = TestKey::es256("ec-1");
        assert_eq!(
            v.verify(&impostor.sign(&claims())).await,
            invalid("bad_signature")
        );
    }

    #[tokio::test]
    async fn alg_none_is_refused() {
        let es = TestKey::es256("ec-1");
        let server = serve(&[&es]).await;
        let v = verifier(&config(&server.url));
        for alg in ["none", "None", "NONE"] {
            let token = hand_made(&json!({"alg": alg, "typ": "JWT"}), &claims(), |_| vec![]);
            assert!(token.ends_with('.'));
            assert_eq!(v.verify(&token).await, invalid("alg_not_allowed"), "{alg}");
            let token = hand_made(&json!({"alg": alg, "kid": "ec-1"}), &claims(), |_| vec![]);
            assert_eq!(v.verify(&token).await, invalid("alg_not_allowed"), "{alg}");
        }
        // Refused before the JWKS is even fetched.
        assert_eq!(server.issuer.hits(), 0);
    }

    #[tokio::test]
    async fn hs256_is_refused_even_when_keyed_with_the_public_key() {
        let rs = TestKey::rsa("rsa-1", Some(Algorithm::RS256));
        let server = serve(&[&rs]).await;
        let v = verifier(&config(&server.url));
        let n = URL_SAFE_NO_PAD.decode(rs.jwk["n"].as_str().unwrap()).unwrap();
        // The classic confusion attack: HMAC keyed with public material.
        let secrets: [Vec<u8>; 3] = [rs.jwk.to_string().into_bytes(), n, RSA_DER.clone()];
        for secret in secrets {
            for alg in ["HS256", "HS384", "HS512"] {
                let header = json!({"alg": alg, "typ": "JWT", "kid": "rsa-1"});
                let token = hand_made(&header, &claims(), |input| {
                    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&secret).unwrap();
                    mac.update(input.as_bytes());
                    mac.finalize().into_bytes().to_vec()
                });
                assert_eq!(v.verify(&token).await, invalid("alg_not_allowed"));
            }
        }
        // A symmetric key in the JWKS is never used: a JWKS of only that is unusable.
        server.issuer.publish(&[]);
        *server.issuer.jwks.lock().unwrap() =
            json!({"keys": [{"kty": "oct", "k": b64(b"secret"), "kid": "hmac"}]});
        let v = verifier(&config(&server.url));
        let token = hand_made(&json!({"alg": "ES256", "kid": "hmac"}), &claims(), |_| {
            vec![0; 64]
        });
        assert_eq!(v.verify(&token).await, Err(AuthError::KeysUnavailable));
    }

    #[tokio::test]
    async fn algorithm_must_fit_the_key() {
        let rs = TestKey::rsa("rsa-1", Some(Algorithm::RS256));
        let es = TestKey::es256("ec-1");
        let ed = TestKey::ed25519("ed-1");
        let server = serve(&[&rs, &es, &ed]).await;
        let v = verifier(&config(&server.url));

        // An EC signature presented for the RSA key, and the reverse.
        let token = es.sign_with(Algorithm::ES256, Some("rsa-1"), &claims());
        assert_eq!(v.verify(&token).await, invalid("alg_key_mismatch"));
        let token = rs.sign_with(Algorithm::RS256, Some("ec-1"), &claims());
        assert_eq!(v.verify(&token).await, invalid("alg_key_mismatch"));
        // EdDSA against the EC key.
        let token = ed.sign_with(Algorithm::EdDSA, Some("ec-1"), &claims());
        assert_eq!(v.verify(&token).await, invalid("alg_key_mismatch"));
        // The JWK declares RS256: a PS256 token is refused, though the key is RSA.
        let token = rs.sign_with(Algorithm::PS256, Some("rsa-1"), &claims());
        assert_eq!(v.verify(&token).await, invalid("alg_key_mismatch"));
        // A valid algorithm the configuration does not list.
        let token = rs.sign_with(Algorithm::RS512, Some("rsa-1"), &claims());
        assert_eq!(v.verify(&token).await, invalid("alg_not_allowed"));
        let token = hand_made(&json!({"alg": "ES384", "kid": "ec-1"}), &claims(), |_| {
            vec![0; 96]
        });
        assert_eq!(v.verify(&token).await, invalid("alg_not_allowed"));
    }

    #[tokio::test]
    async fn kid_is_required_when_there_are_several_keys() {
        let es = TestKey::es256("ec-1");
        let ed = TestKey::ed25519("ed-1");
        let server = serve(&[&es, &ed]).await;
        let v = verifier(&config(&server.url));
        let token = es.sign_with(Algorithm::ES256, None, &claims());
        assert_eq!(v.verify(&token).await, invalid("missing_kid"));

        // A single key: no kid needed on either side.
        let only = TestKey::es256("x").without_kid();
        let server = serve(&[&only]).await;
        let v = verifier(&config(&server.url));
        assert!(v.verify(&only.sign(&claims())).await.is_ok());
        // The token's kid is only a hint when the one key has none.
        assert!(
            v.verify(&only.sign_with(Algorithm::ES256, Some("k7"), &claims()))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn malformed_tokens() {
        let es = TestKey::es256("ec-1");
        let server = serve(&[&es]).await;
        let v = verifier(&config(&server.url));
        assert_eq!(v.verify("").await, Err(AuthError::Missing));
        let good = es.sign(&claims());
        let (h, rest) = good.split_once('.').unwrap();
        for bad in [
            "abc".to_string(),
            "a.b".to_string(),
            format!("{good}.x"),
            format!("!!.{rest}"),
            format!("{}.{rest}", b64(b"not json")),
            format!("{}.{rest}", b64(br#"{"alg":256}"#)),
            format!("{}.{rest}", b64(br#"{"alg":"ES256","kid":5}"#)),
            format!("{h}.{}.{}", b64(b"not json"), rest.split_once('.').unwrap().1),
            "a".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert!(
                matches!(
                    v.verify(&bad).await,
                    Err(AuthError::Invalid("malformed" | "bad_signature"))
                ),
                "{bad:.80}"
            );
        }
        let crit = hand_made(
            &json!({"alg": "ES256", "kid": "ec-1", "crit": ["exp"]}),
            &claims(),
            |_| vec![0; 64],
        );
        assert_eq!(v.verify(&crit).await, invalid("unsupported_header"));
    }

    // ---- the JWKS cache -----------------------------------------------------

    #[tokio::test]
    async fn unknown_kid_refetches_once_and_accepts_a_rotated_key() {
        let old = TestKey::es256("2025");
        let new = TestKey::ed25519("2026");
        let server = serve(&[&old]).await;
        let v = verifier(&config(&server.url));
        assert!(v.verify(&old.sign(&claims())).await.is_ok());
        assert_eq!(server.issuer.hits(), 1);

        // The issuer rotates; the first token from the new key triggers one refetch.
        server.issuer.publish(&[&old, &new]);
        assert!(v.verify(&new.sign(&claims())).await.is_ok());
        assert_eq!(server.issuer.hits(), 2);
        assert!(v.verify(&new.sign(&claims())).await.is_ok());
        assert!(v.verify(&old.sign(&claims())).await.is_ok());
        assert_eq!(server.issuer.hits(), 2);

        // A kid the issuer does not publish: one refetch, then refused.
        let stranger = TestKey::es256("unknown");
        assert_eq!(v.verify(&stranger.sign(&claims())).await, invalid("unknown_kid"));
        assert_eq!(server.issuer.hits(), 3);

        // The old key is retired: once refetched, its tokens are refused.
        server.issuer.publish(&[&new]);
        assert_eq!(v.verify(&stranger.sign(&claims())).await, invalid("unknown_kid"));
        assert_eq!(server.issuer.hits(), 4);
        assert_eq!(v.verify(&old.sign(&claims())).await, invalid("unknown_kid"));
    }

    #[tokio::test]
    async fn refetch_cooldown_is_respected() {
        let old = TestKey::es256("2025");
        let new = TestKey::es256("2026");
        let server = serve(&[&old]).await;
        let v = verifier(&JwtConfig {
            refetch_cooldown: Duration::from_secs(3600),
            ..config(&server.url)
        });
        assert!(v.verify(&old.sign(&claims())).await.is_ok());
        server.issuer.publish(&[&old, &new]);
        for _ in 0..5 {
            assert_eq!(v.verify(&new.sign(&claims())).await, invalid("unknown_kid"));
            assert_eq!(
                v.verify(&TestKey::es256("junk").sign(&claims())).await,
                invalid("unknown_kid")
            );
        }
        assert_eq!(server.issuer.hits(), 1);
        assert!(v.verify(&old.sign(&claims())).await.is_ok());

        // A short cooldown: the next unknown kid after it has passed refetches.
        let v = verifier(&JwtConfig {
            refetch_cooldown: Duration::from_millis(300),
            ..config(&server.url)
        });
        server.issuer.publish(&[&old]);
        assert!(v.verify(&old.sign(&claims())).await.is_ok());
        server.issuer.publish(&[&old, &new]);
        assert_eq!(v.verify(&new.sign(&claims())).await, invalid("unknown_kid"));
        assert_eq!(server.issuer.hits(), 2);
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(v.verify(&new.sign(&claims())).await.is_ok());
        assert_eq!(server.issuer.hits(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_verifications_share_one_fetch() {
        let old = TestKey::es256("2025");
        let new = TestKey::es256("2026");
        let server = serve(&[&old]).await;
        server.issuer.delay_ms.store(200, Ordering::SeqCst);
        let v = Arc::new(verifier(&config(&server.url)));

        let burst = |token: String| {
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..16 {
                let (v, token) = (v.clone(), token.clone());
                set.spawn(async move { v.verify(&token).await });
            }
            set
        };
        // Cold start: sixteen callers, one fetch.
        let results = burst(old.sign(&claims())).join_all().await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(server.issuer.hits(), 1);

        // Rotation: sixteen tokens with the new kid at once, one refetch.
        server.issuer.publish(&[&old, &new]);
        let results = burst(new.sign(&claims())).join_all().await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(server.issuer.hits(), 2);

        // Unknown kid at once: one refetch, all refused.
        let results = burst(TestKey::es256("junk").sign(&claims())).join_all().await;
        assert!(
            results.iter().all(|r| *r == invalid("unknown_kid")),
            "{results:?}"
        );
        assert_eq!(server.issuer.hits(), 3);
    }

    #[tokio::test]
    async fn keys_are_cached_for_cache_ttl() {
        let es = TestKey::es256("ec-1");
        let server = serve(&[&es]).await;
        let cached = verifier(&config(&server.url));
        for _ in 0..3 {
            assert!(cached.verify(&es.sign(&claims())).await.is_ok());
        }
        assert_eq!(server.issuer.hits(), 1);

        let uncached = verifier(&JwtConfig {
            cache_ttl: Duration::ZERO,
            refetch_cooldown: Duration::from_secs(3600),
            ..config(&server.url)
        });
        for _ in 0..3 {
            assert!(uncached.verify(&es.sign(&claims())).await.is_ok());
        }
        assert_eq!(server.issuer.hits(), 4);
    }

    #[tokio::test]
    async fn cached_keys_outlive_the_key_server() {
        let es = TestKey::es256("ec-1");
        let server = serve(&[&es]).await;
        // Every verification wants a refetch.
        let v = verifier(&JwtConfig {
            cache_ttl: Duration::ZERO,
            ..config(&server.url)
        });
        assert!(v.verify(&es.sign(&claims())).await.is_ok());
        assert_eq!(server.issuer.hits(), 1);

        // Errors first, then no server at all.
        server.issuer.status.store(503, Ordering::SeqCst);
        assert!(v.verify(&es.sign(&claims())).await.is_ok());
        assert_eq!(server.issuer.hits(), 2);
        server.task.abort();
        let _ = server.task.await;
        for _ in 0..3 {
            assert!(v.verify(&es.sign(&claims())).await.is_ok());
        }
        // Still checked properly.
        assert_eq!(
            v.verify(&es.sign(&with(claims(), json!({"aud": "x"})))).await,
            invalid("wrong_audience")
        );
    }

    #[tokio::test]
    async fn no_keys_at_all_is_keys_unavailable() {
        // Nothing listens on this port.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        drop(listener);
        let es = TestKey::es256("ec-1");
        let v = verifier(&config(&url));
        assert_eq!(
            v.verify(&es.sign(&claims())).await,
            Err(AuthError::KeysUnavailable)
        );
        assert_eq!(v.warm_up().await, Err(AuthError::KeysUnavailable));

        // An issuer answering 500, then recovering: failed attempts are spaced
        // (at most a second apart while nothing is cached).
        let server = serve(&[&es]).await;
        server.issuer.status.store(500, Ordering::SeqCst);
        let v = verifier(&JwtConfig {
            refetch_cooldown: Duration::from_secs(30),
            ..config(&server.url)
        });
        assert_eq!(
            v.verify(&es.sign(&claims())).await,
            Err(AuthError::KeysUnavailable)
        );
        assert_eq!(
            v.verify(&es.sign(&claims())).await,
            Err(AuthError::KeysUnavailable)
        );
        assert_eq!(server.issuer.hits(), 1);
        server.issuer.status.store(0, Ordering::SeqCst);
        tokio::time::sleep(EMPTY_CACHE_RETRY + Duration::from_millis(100)).await;
        assert!(v.verify(&es.sign(&claims())).await.is_ok());
        assert_eq!(server.issuer.hits(), 2);

        // A document that is not a JWKS.
        *server.issuer.jwks.lock().unwrap() = json!({"hello": "world"});
        let v = verifier(&config(&server.url));
        assert_eq!(
            v.verify(&es.sign(&claims())).await,
            Err(AuthError::KeysUnavailable)
        );
    }

    #[test]
    fn unusable_jwks_entries_are_skipped() {
        let rs = TestKey::rsa("rsa-1", Some(Algorithm::RS256));
        let es = TestKey::es256("ec-1");
        let ed = TestKey::ed25519("ed-1");
        for good in [&rs.jwk, &es.jwk, &ed.jwk] {
            assert!(usable_key(good.clone()).is_some(), "{good}");
        }
        let with_field = |jwk: &Value, k: &str, v: Value| {
            let mut jwk = jwk.clone();
            jwk[k] = v;
            jwk
        };
        let mut weak = [0u8; 128];
        rand::rng().fill_bytes(&mut weak);
        weak[0] |= 0x80;
        let mut off_curve = [0u8; 32];
        rand::rng().fill_bytes(&mut off_curve);
        for bad in [
            with_field(&rs.jwk, "n", json!(b64(&weak))), // 1024-bit RSA
            with_field(&rs.jwk, "use", json!("enc")),
            with_field(&rs.jwk, "key_ops", json!(["sign"])),
            with_field(&rs.jwk, "alg", json!("HS256")),
            with_field(&rs.jwk, "alg", json!("RSA-OAEP")),
            with_field(&rs.jwk, "alg", json!("ES256")),
            with_field(&es.jwk, "alg", json!("RS256")),
            with_field(&es.jwk, "crv", json!("P-521")),
            with_field(&es.jwk, "x", json!(b64(&off_curve))),
            with_field(&ed.jwk, "x", json!(b64(&[1, 2, 3]))),
            with_field(&ed.jwk, "x", json!(b64(&[7; 33]))),
            with_field(&es.jwk, "y", json!(b64(&[1, 2, 3]))),
            with_field(&ed.jwk, "crv", json!("X25519")),
            json!({"kty": "oct", "k": b64(b"secret")}),
            json!({"kty": "RSA"}),
            json!("not an object"),
        ] {
            assert!(usable_key(bad.clone()).is_none(), "{bad}");
        }
        assert!(usable_key(with_field(&rs.jwk, "key_ops", json!(["verify"]))).is_some());
        assert!(usable_key(with_field(&rs.jwk, "use", json!("sig"))).is_some());
        assert_eq!(rsa_bits(&[0, 0, 0x01, 0xff]), 9);
        assert_eq!(rsa_bits(&[0x80; 256]), 2048);
    }
}
