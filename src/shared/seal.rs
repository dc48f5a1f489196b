//! What makes Redis's copy unreadable without the encryption key: values
//! sealed with AES-256-GCM (random 96-bit nonce, the plain key as associated
//! data, so a value moved to another key does not open), and key names that
//! are an HMAC of the plain key, so no subject, role or session name shows.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use sha2::Sha256;

use crate::credentials::Redact;

/// The first byte of every sealed value: the format, so a later one can be told apart.
const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;

pub struct Sealer {
    aead: Aes256Gcm,
    names: [u8; 32],
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer").field("key", &Redact).finish()
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

impl Sealer {
    /// Two independent keys derived from `key` (the raw value of
    /// `shared.encryption_key_env`): one encrypts, one names.
    pub fn new(key: &[u8]) -> Self {
        let aead_key = hmac(key, &[b"ossvend shared v1: aead"]);
        Sealer {
            aead: Aes256Gcm::new(&aead_key.into()),
            names: hmac(key, &[b"ossvend shared v1: names"]),
        }
    }

    /// `<prefix><kind>:<hex HMAC-SHA256(kind, plain)>`.
    pub fn name(&self, prefix: &str, kind: &str, plain: &str) -> String {
        let mac = hmac(&self.names, &[kind.as_bytes(), b"\0", plain.as_bytes()]);
        format!("{prefix}{kind}:{}", hex::encode(mac))
    }

    /// `VERSION || nonce || ciphertext+tag`, bound to `aad`.
    pub fn seal(&self, aad: &str, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .aead
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: aad.as_bytes(),
                },
            )
            .expect("AES-GCM encrypts any message below 64 GiB");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// The plain text, or `None` for anything that does not open with this key
    /// and `aad` (another key, another entry's value, a tampered byte).
    pub fn open(&self, aad: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        let rest = sealed.strip_prefix(&[VERSION])?;
        if rest.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ct) = rest.split_at(NONCE_LEN);
        self.aead
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: aad.as_bytes(),
                },
            )
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"an-obviously-fake-test-key-of-32-bytes!!";

    #[test]
    fn round_trip_and_every_tamper_is_refused() {
        let s = Sealer::new(KEY);
        let sealed = s.seal("key-a", b"secret text");
        assert_eq!(s.open("key-a", &sealed).as_deref(), Some(&b"secret text"[..]));
        assert!(
            !sealed.windows(6).any(|w| w == b"secret"),
            "plain text in the sealed value"
        );
        // Another entry's key (associated data), another encryption key, each flipped byte.
        assert_eq!(s.open("key-b", &sealed), None);
        assert_eq!(
            Sealer::new(b"another-fake-test-key-of-32-bytes-long!!").open("key-a", &sealed),
            None
        );
        for i in 0..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 0x01;
            assert_eq!(s.open("key-a", &t), None, "byte {i} flipped still opened");
        }
        assert_eq!(s.open("key-a", &sealed[..10]), None);
        assert_eq!(s.open("key-a", b""), None);
        // A fresh nonce each time.
        assert_ne!(s.seal("key-a", b"x"), s.seal("key-a", b"x"));
    }

    #[test]
    fn names_hide_the_plain_key_and_depend_on_the_key() {
        let s = Sealer::new(KEY);
        let n = s.name("ossvend:", "cred", "LTAIfake\nrole\nusers/alice-subject/");
        assert!(n.starts_with("ossvend:cred:"));
        assert_eq!(n.len(), "ossvend:cred:".len() + 64);
        assert!(!n.contains("alice"));
        assert_eq!(
            n,
            s.name("ossvend:", "cred", "LTAIfake\nrole\nusers/alice-subject/")
        );
        assert_ne!(n, s.name("ossvend:", "cred", "LTAIfake\nrole\nusers/bob/"));
        assert_ne!(
            n,
            s.name("ossvend:", "rl", "LTAIfake\nrole\nusers/alice-subject/")
        );
        let other = Sealer::new(b"another-fake-test-key-of-32-bytes-long!!");
        assert_ne!(
            n,
            other.name("ossvend:", "cred", "LTAIfake\nrole\nusers/alice-subject/")
        );
    }
}
