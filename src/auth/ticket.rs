//! Short-lived signed tickets for clients that cannot send headers (the OSS
//! mobile SDKs' auth-server providers take a bare URL): an authenticated caller
//! mints one for a grant and passes it as `?ticket=`.
//!
//! Format: `base64url(payload).base64url(HMAC-SHA256(key, "ossvend-ticket-v1." + base64url(payload)))`,
//! no padding, payload `{"v":1,"sub":…,"ns":…,"grant":…,"exp":<unix seconds>,"claims":{…}}`,
//! `ns` being the subject's namespace (`api_key` or `jwt`: whoever minted the
//! ticket), so a ticket stands for exactly its minter. Tickets minted before
//! `ns` existed verify without one.
//! The MAC is checked (in constant time) before the payload is even decoded.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use secrecy::{ExposeSecret, SecretSlice};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::SubjectNamespace;
use super::error::AuthError;
use crate::config::TicketConfig;

/// Shortest key accepted from the environment.
pub const MIN_SECRET_BYTES: usize = 32;
/// Longest ticket looked at; anything longer is refused unread.
const MAX_TICKET_LEN: usize = 8 * 1024;
const MAC_DOMAIN: &[u8] = b"ossvend-ticket-v1.";
const VERSION: u32 = 1;

/// What a valid ticket vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketClaims {
    pub subject: String,
    pub namespace: Option<SubjectNamespace>,
    pub claims: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    v: u32,
    sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ns: Option<String>,
    grant: String,
    exp: i64,
    #[serde(default)]
    claims: BTreeMap<String, String>,
}

pub struct Tickets {
    key: SecretSlice<u8>,
    ttl: Duration,
}

impl std::fmt::Debug for Tickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tickets")
            .field("key", &crate::credentials::Redact)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl Tickets {
    /// `None`: a random 32-byte key (tickets then die with the process and are
    /// not valid on other replicas).
    pub fn new(secret: Option<Vec<u8>>, ttl: Duration) -> Self {
        let key = secret.unwrap_or_else(|| {
            let mut k = vec![0u8; 32];
            rand::rng().fill_bytes(&mut k);
            k
        });
        Tickets { key: key.into(), ttl }
    }

    /// The key is the raw value of the environment variable `cfg.secret_env`
    /// names (at least [`MIN_SECRET_BYTES`] bytes); no `secret_env`: random.
    pub fn from_config(cfg: &TicketConfig, env: &BTreeMap<String, String>) -> Result<Self, String> {
        if cfg.ttl.is_zero() {
            return Err("auth.tickets.ttl: must be more than zero".into());
        }
        let Some(name) = &cfg.secret_env else {
            return Ok(Tickets::new(None, cfg.ttl));
        };
        let value = env
            .get(name)
            .ok_or_else(|| format!("auth.tickets.secret_env: the environment variable {name} is not set"))?;
        if value.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "auth.tickets.secret_env: {name} holds {} bytes; the ticket key needs at least {MIN_SECRET_BYTES}",
                value.len()
            ));
        }
        Ok(Tickets::new(Some(value.as_bytes().to_vec()), cfg.ttl))
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The same key with another `ttl`: a config reload keeps a per-process
    /// random key, so tickets already handed out stay valid.
    pub fn with_ttl(&self, ttl: Duration) -> Tickets {
        Tickets {
            key: SecretSlice::from(self.key.expose_secret().to_vec()),
            ttl,
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(self.key.expose_secret()).expect("HMAC takes a key of any length");
        mac.update(MAC_DOMAIN);
        mac
    }

    /// `base64url(payload).base64url(HMAC(key, "ossvend-<domain>." + base64url(payload)))`:
    /// another value sealed with the ticket key (upload-session handles), its own
    /// domain keeping it from ever verifying as a ticket or vice versa.
    pub fn seal(&self, domain: &str, payload: &[u8]) -> String {
        let body = URL_SAFE_NO_PAD.encode(payload);
        let tag = URL_SAFE_NO_PAD.encode(self.domain_mac(domain, &body));
        format!("{body}.{tag}")
    }

    /// The payload of a [`Tickets::seal`]ed value, if its MAC verifies (constant time).
    pub fn open(&self, domain: &str, sealed: &str) -> Option<Vec<u8>> {
        let (body, tag) = sealed.split_once('.')?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        let mut mac = Hmac::<Sha256>::new_from_slice(self.key.expose_secret()).ok()?;
        mac.update(format!("ossvend-{domain}.").as_bytes());
        mac.update(body.as_bytes());
        mac.verify_slice(&tag).ok()?;
        URL_SAFE_NO_PAD.decode(body).ok()
    }

    fn domain_mac(&self, domain: &str, body: &str) -> Vec<u8> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(self.key.expose_secret()).expect("HMAC takes a key of any length");
        mac.update(format!("ossvend-{domain}.").as_bytes());
        mac.update(body.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// A ticket for `subject` (of `namespace`) on `grant`, and when it expires
    /// (`now + ttl`, whole seconds).
    pub fn mint(
        &self,
        subject: &str,
        namespace: Option<SubjectNamespace>,
        grant: &str,
        claims: &BTreeMap<String, String>,
        now: DateTime<Utc>,
    ) -> (String, DateTime<Utc>) {
        let ttl = chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::MAX);
        let exp = now
            .checked_add_signed(ttl)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
            .timestamp();
        let payload = Payload {
            v: VERSION,
            sub: subject.into(),
            ns: namespace.map(|n| n.as_str().to_owned()),
            grant: grant.into(),
            exp,
            claims: claims.clone(),
        };
        let json = serde_json::to_vec(&payload).expect("the payload serializes");
        let body = URL_SAFE_NO_PAD.encode(json);
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        let expires_at = DateTime::from_timestamp(exp, 0).expect("exp comes from a DateTime");
        (format!("{body}.{tag}"), expires_at)
    }

    /// The ticket's subject and claims. Checks, in order: the MAC (constant
    /// time, before anything in the payload is read), expiry, the grant.
    pub fn verify(&self, ticket: &str, grant: &str, now: DateTime<Utc>) -> Result<TicketClaims, AuthError> {
        if ticket.is_empty() {
            return Err(AuthError::Missing);
        }
        if ticket.len() > MAX_TICKET_LEN {
            return Err(AuthError::Invalid("malformed"));
        }
        let Some((body, tag)) = ticket.split_once('.') else {
            return Err(AuthError::Invalid("malformed"));
        };
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| AuthError::Invalid("malformed"))?;
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        // `verify_slice` compares in constant time (and refuses a wrong length).
        mac.verify_slice(&tag)
            .map_err(|_| AuthError::Invalid("bad_signature"))?;

        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| AuthError::Invalid("malformed"))?;
        let payload: Payload = serde_json::from_slice(&json).map_err(|_| AuthError::Invalid("malformed"))?;
        if payload.v != VERSION {
            return Err(AuthError::Invalid("malformed"));
        }
        if now.timestamp() >= payload.exp {
            return Err(AuthError::Expired);
        }
        if payload.grant != grant {
            return Err(AuthError::WrongGrant);
        }
        let namespace = match payload.ns.as_deref() {
            None => None,
            Some(ns) => Some(SubjectNamespace::parse(ns).ok_or(AuthError::Invalid("malformed"))?),
        };
        Ok(TicketClaims {
            subject: payload.sub,
            namespace,
            claims: payload.claims,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-01T08:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn tickets() -> Tickets {
        Tickets::new(
            Some(b"0123456789abcdef0123456789abcdef".to_vec()),
            Duration::from_secs(300),
        )
    }

    fn claims() -> BTreeMap<String, String> {
        BTreeMap::from([("tenant".to_string(), "acme".to_string())])
    }

    /// Alice's ticket (an API-key caller) for `avatars`, minted at `t0`.
    fn alice_ticket(t: &Tickets) -> (String, DateTime<Utc>) {
        t.mint(
            "alice",
            Some(SubjectNamespace::ApiKey),
            "avatars",
            &claims(),
            t0(),
        )
    }

    #[test]
    fn sealed_values_open_only_in_their_domain_and_untampered() {
        let t = tickets();
        let sealed = t.seal("upload-v1", br#"{"v":1}"#);
        assert_eq!(t.open("upload-v1", &sealed).as_deref(), Some(&br#"{"v":1}"#[..]));
        assert_eq!(t.open("other-v1", &sealed), None, "another domain");
        let other_key = Tickets::new(Some(vec![7; 32]), Duration::from_secs(300));
        assert_eq!(other_key.open("upload-v1", &sealed), None, "another key");
        for i in 0..sealed.len() {
            let mut chars: Vec<char> = sealed.chars().collect();
            chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
            let changed: String = chars.into_iter().collect();
            assert_eq!(t.open("upload-v1", &changed), None, "changed at {i}");
        }
        // A ticket is not a sealed upload, nor the other way round.
        let (ticket, _) = alice_ticket(&t);
        assert_eq!(t.open("upload-v1", &ticket), None);
        assert!(t.verify(&sealed, "avatars", t0()).is_err());
        assert_eq!(t.open("upload-v1", "no-dot"), None);
    }

    #[test]
    fn round_trip() {
        let t = tickets();
        let (ticket, exp) = alice_ticket(&t);
        assert_eq!(exp, t0() + chrono::Duration::seconds(300));
        // URL-safe as is: no padding, no `+`/`/`.
        assert!(
            ticket
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.')
        );
        assert_eq!(ticket.matches('.').count(), 1);
        let got = t.verify(&ticket, "avatars", t0()).unwrap();
        assert_eq!(got.subject, "alice");
        assert_eq!(got.namespace, Some(SubjectNamespace::ApiKey));
        assert_eq!(got.claims, claims());
        // Still valid one second before expiry.
        assert!(
            t.verify(&ticket, "avatars", exp - chrono::Duration::seconds(1))
                .is_ok()
        );

        // The documented payload layout.
        let (body, _) = ticket.split_once('.').unwrap();
        let v: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"v":1,"sub":"alice","ns":"api_key","grant":"avatars","exp":exp.timestamp(),"claims":{"tenant":"acme"}})
        );
    }

    /// A ticket from before `ns` still verifies (namespace unknown); a MAC-valid
    /// one naming a namespace this version does not know is refused.
    #[test]
    fn the_namespace_is_optional_but_must_be_known() {
        let t = tickets();
        let signed = |payload: serde_json::Value| {
            let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap());
            let mut mac = t.mac();
            mac.update(body.as_bytes());
            format!("{body}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
        };
        let exp = t0().timestamp() + 60;
        let old = signed(serde_json::json!({"v":1,"sub":"alice","grant":"g","exp":exp,"claims":{}}));
        let got = t.verify(&old, "g", t0()).unwrap();
        assert_eq!((got.subject.as_str(), got.namespace), ("alice", None));
        let (jwt, _) = t.mint("alice", Some(SubjectNamespace::Jwt), "g", &BTreeMap::new(), t0());
        assert_eq!(
            t.verify(&jwt, "g", t0()).unwrap().namespace,
            Some(SubjectNamespace::Jwt)
        );
        let odd = signed(serde_json::json!({"v":1,"sub":"alice","ns":"ldap","grant":"g","exp":exp}));
        assert_eq!(t.verify(&odd, "g", t0()), Err(AuthError::Invalid("malformed")));
    }

    #[test]
    fn the_mac_matches_the_documented_construction() {
        let t = tickets();
        let (ticket, _) = t.mint(
            "alice",
            Some(SubjectNamespace::ApiKey),
            "avatars",
            &BTreeMap::new(),
            t0(),
        );
        let (body, tag) = ticket.split_once('.').unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(b"0123456789abcdef0123456789abcdef").unwrap();
        mac.update(format!("ossvend-ticket-v1.{body}").as_bytes());
        assert_eq!(tag, URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()));
    }

    #[test]
    fn tampered_payload_is_rejected() {
        let t = tickets();
        let (ticket, _) = alice_ticket(&t);
        let (_, tag) = ticket.split_once('.').unwrap();
        let forged = serde_json::json!({"v":1,"sub":"mallory","grant":"avatars","exp":t0().timestamp()+300,"claims":{}});
        let forged_body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        assert_eq!(
            t.verify(&format!("{forged_body}.{tag}"), "avatars", t0()),
            Err(AuthError::Invalid("bad_signature"))
        );
        // A single flipped character in the body.
        let mut bytes = ticket.clone().into_bytes();
        bytes[3] = if bytes[3] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            t.verify(std::str::from_utf8(&bytes).unwrap(), "avatars", t0()),
            Err(AuthError::Invalid("bad_signature"))
        );
    }

    #[test]
    fn tampered_mac_is_rejected() {
        let t = tickets();
        let (ticket, _) = alice_ticket(&t);
        let (body, tag) = ticket.split_once('.').unwrap();
        let mut raw = URL_SAFE_NO_PAD.decode(tag).unwrap();
        raw[0] ^= 1;
        let flipped = format!("{body}.{}", URL_SAFE_NO_PAD.encode(&raw));
        assert_eq!(
            t.verify(&flipped, "avatars", t0()),
            Err(AuthError::Invalid("bad_signature"))
        );
        let truncated = format!("{body}.{}", URL_SAFE_NO_PAD.encode(&raw[..16]));
        assert_eq!(
            t.verify(&truncated, "avatars", t0()),
            Err(AuthError::Invalid("bad_signature"))
        );
        assert_eq!(
            t.verify(&format!("{body}."), "avatars", t0()),
            Err(AuthError::Invalid("bad_signature"))
        );
        // Another key's ticket.
        let other = Tickets::new(None, Duration::from_secs(300));
        let (theirs, _) = other.mint(
            "alice",
            Some(SubjectNamespace::ApiKey),
            "avatars",
            &claims(),
            t0(),
        );
        assert_eq!(
            t.verify(&theirs, "avatars", t0()),
            Err(AuthError::Invalid("bad_signature"))
        );
    }

    #[test]
    fn malformed_tickets_are_rejected() {
        let t = tickets();
        assert_eq!(t.verify("", "g", t0()), Err(AuthError::Missing));
        for bad in ["abc", "a.b.c", "a.!!", "é.x"] {
            assert!(
                matches!(t.verify(bad, "g", t0()), Err(AuthError::Invalid(_))),
                "{bad}"
            );
        }
        // Padded base64 is not the format.
        let (ticket, _) = alice_ticket(&t);
        assert!(t.verify(&format!("{ticket}="), "avatars", t0()).is_err());
        let huge = "a".repeat(MAX_TICKET_LEN + 1);
        assert_eq!(t.verify(&huge, "g", t0()), Err(AuthError::Invalid("malformed")));
    }

    #[test]
    fn expired_ticket_is_rejected() {
        let t = tickets();
        let (ticket, exp) = alice_ticket(&t);
        assert_eq!(t.verify(&ticket, "avatars", exp), Err(AuthError::Expired));
        assert_eq!(
            t.verify(&ticket, "avatars", exp + chrono::Duration::hours(1)),
            Err(AuthError::Expired)
        );
        // Expiry is checked before the grant.
        assert_eq!(t.verify(&ticket, "other", exp), Err(AuthError::Expired));
    }

    #[test]
    fn ticket_for_another_grant_is_rejected() {
        let t = tickets();
        let (ticket, _) = alice_ticket(&t);
        assert_eq!(t.verify(&ticket, "documents", t0()), Err(AuthError::WrongGrant));
        assert_eq!(t.verify(&ticket, "avatars2", t0()), Err(AuthError::WrongGrant));
    }

    #[test]
    fn random_keys_differ_per_instance() {
        let a = Tickets::new(None, Duration::from_secs(60));
        let b = Tickets::new(None, Duration::from_secs(60));
        let (ticket, _) = a.mint(
            "alice",
            Some(SubjectNamespace::ApiKey),
            "g",
            &BTreeMap::new(),
            t0(),
        );
        assert!(a.verify(&ticket, "g", t0()).is_ok());
        assert_eq!(
            b.verify(&ticket, "g", t0()),
            Err(AuthError::Invalid("bad_signature"))
        );
        assert!(!format!("{a:?}").contains("key: ["));
    }

    #[test]
    fn key_from_env() {
        let cfg = TicketConfig {
            ttl: Duration::from_secs(120),
            secret_env: Some("OSSVEND_TICKET_KEY".into()),
        };
        let secret = "k".repeat(32);
        let env = BTreeMap::from([("OSSVEND_TICKET_KEY".to_string(), secret.clone())]);
        let a = Tickets::from_config(&cfg, &env).unwrap();
        let b = Tickets::from_config(&cfg, &env).unwrap();
        assert_eq!(a.ttl(), Duration::from_secs(120));
        // Same key: a ticket minted by one replica verifies on another.
        let (ticket, exp) = a.mint(
            "alice",
            Some(SubjectNamespace::ApiKey),
            "g",
            &BTreeMap::new(),
            t0(),
        );
        assert_eq!(exp, t0() + chrono::Duration::seconds(120));
        assert!(b.verify(&ticket, "g", t0()).is_ok());

        let short = BTreeMap::from([("OSSVEND_TICKET_KEY".to_string(), "k".repeat(31))]);
        let err = Tickets::from_config(&cfg, &short).unwrap_err();
        assert!(err.contains("at least 32"), "{err}");
        assert!(
            !err.contains(&"k".repeat(31)),
            "the key must not be echoed: {err}"
        );

        let err = Tickets::from_config(&cfg, &BTreeMap::new()).unwrap_err();
        assert!(err.contains("not set"), "{err}");

        // No secret_env: a random key.
        let random = Tickets::from_config(&TicketConfig::default(), &BTreeMap::new()).unwrap();
        assert_eq!(random.ttl(), Duration::from_secs(300));
        assert_eq!(
            random.verify(&ticket, "g", t0()),
            Err(AuthError::Invalid("bad_signature"))
        );
    }
}
