//! API keys. The config stores only SHA-256 digests of the keys; a presented
//! key is hashed and compared with every stored digest in constant time.

use std::collections::BTreeSet;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

use super::error::AuthError;
use crate::config::ApiKeyConfig;

/// Prefix of keys made by [`generate_key`]; it makes them easy to spot in a
/// secret scanner. Keys without it are accepted as well.
pub const KEY_PREFIX: &str = "ovk_";

/// Lower-case hex SHA-256 of `key`: the value for `auth.api_keys[].sha256`.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A new key: `ovk_` followed by 32 random bytes, base64url without padding.
pub fn generate_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// The configured keys, ready for verification.
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
    configs: Vec<ApiKeyConfig>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.configs.iter().map(|c| c.id.as_str()).collect();
        f.debug_struct("ApiKeys").field("ids", &ids).finish()
    }
}

impl ApiKeys {
    /// Refuses digests that are not 64 hex digits, empty or duplicate ids, and
    /// two ids sharing one digest (the key would be ambiguous).
    pub fn new(keys: &[ApiKeyConfig]) -> Result<Self, String> {
        let mut ids = BTreeSet::new();
        let mut digests = Vec::with_capacity(keys.len());
        for (i, k) in keys.iter().enumerate() {
            if k.id.is_empty() {
                return Err(format!("auth.api_keys[{i}].id: must not be empty"));
            }
            if !ids.insert(k.id.as_str()) {
                return Err(format!("auth.api_keys[{i}].id: duplicate id {:?}", k.id));
            }
            let digest = parse_digest(&k.sha256).ok_or_else(|| {
                format!(
                    "auth.api_keys[{i}].sha256: must be the 64 hex digits of a SHA-256 digest \
                     (`ossvend hash-key` prints one)"
                )
            })?;
            if digests.contains(&digest) {
                return Err(format!(
                    "auth.api_keys[{i}].sha256: the same key is configured for another id"
                ));
            }
            digests.push(digest);
        }
        Ok(ApiKeys {
            digests,
            configs: keys.to_vec(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.configs.is_empty()
    }

    pub fn len(&self) -> usize {
        self.configs.len()
    }

    /// The key's config, or `Invalid("unknown_key")`. Every stored digest is
    /// compared, in constant time and without an early exit, so the time taken
    /// says nothing about which key (if any) matched.
    pub fn verify(&self, presented: &str) -> Result<&ApiKeyConfig, AuthError> {
        if presented.is_empty() {
            return Err(AuthError::Missing);
        }
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = Choice::from(0);
        let mut index = 0u64;
        for (i, stored) in self.digests.iter().enumerate() {
            let eq = stored.ct_eq(&digest);
            index = u64::conditional_select(&index, &(i as u64), eq);
            found |= eq;
        }
        if bool::from(found) {
            Ok(&self.configs[index as usize])
        } else {
            Err(AuthError::Invalid("unknown_key"))
        }
    }
}

fn parse_digest(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(id: &str, key: &str) -> ApiKeyConfig {
        ApiKeyConfig {
            id: id.into(),
            sha256: hash_key(key),
            grants: vec![],
        }
    }

    #[test]
    fn hash_is_lower_hex_sha256() {
        // sha256("abc"), FIPS 180-2 test vector.
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn generated_keys_are_prefixed_url_safe_and_distinct() {
        let a = generate_key();
        let b = generate_key();
        assert_ne!(a, b);
        let body = a.strip_prefix(KEY_PREFIX).unwrap();
        assert_eq!(body.len(), 43); // 32 bytes, unpadded base64
        assert_eq!(URL_SAFE_NO_PAD.decode(body).unwrap().len(), 32);
        assert!(
            body.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
    }

    #[test]
    fn good_key_maps_to_its_id() {
        let (ka, kb) = (generate_key(), generate_key());
        let keys = ApiKeys::new(&[cfg("alice", &ka), cfg("bob", &kb)]).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.verify(&ka).unwrap().id, "alice");
        assert_eq!(keys.verify(&kb).unwrap().id, "bob");
    }

    #[test]
    fn upper_case_digest_is_accepted() {
        let k = generate_key();
        let mut c = cfg("alice", &k);
        c.sha256 = c.sha256.to_uppercase();
        let keys = ApiKeys::new(&[c]).unwrap();
        assert_eq!(keys.verify(&k).unwrap().id, "alice");
    }

    #[test]
    fn wrong_key_of_the_same_length_is_rejected() {
        let k = generate_key();
        let keys = ApiKeys::new(&[cfg("alice", &k)]).unwrap();
        // Same length, one character different.
        let mut wrong = k.clone().into_bytes();
        let last = wrong.len() - 1;
        wrong[last] = if wrong[last] == b'A' { b'B' } else { b'A' };
        let wrong = String::from_utf8(wrong).unwrap();
        assert_eq!(wrong.len(), k.len());
        assert_eq!(
            keys.verify(&wrong).map(|c| c.id.as_str()),
            Err(AuthError::Invalid("unknown_key"))
        );
        assert_eq!(
            keys.verify(&generate_key()).map(|c| c.id.as_str()),
            Err(AuthError::Invalid("unknown_key"))
        );
        // The digest itself is not a key.
        assert_eq!(
            keys.verify(&hash_key(&k)).map(|c| c.id.as_str()),
            Err(AuthError::Invalid("unknown_key"))
        );
        assert_eq!(keys.verify("").map(|c| c.id.as_str()), Err(AuthError::Missing));
    }

    #[test]
    fn a_key_resolves_to_its_own_id_only() {
        // Bob's key is valid, but it is Bob's: it never authenticates as Alice,
        // whichever position the entries are in.
        let (ka, kb) = (generate_key(), generate_key());
        for keys in [
            ApiKeys::new(&[cfg("alice", &ka), cfg("bob", &kb)]).unwrap(),
            ApiKeys::new(&[cfg("bob", &kb), cfg("alice", &ka)]).unwrap(),
        ] {
            assert_eq!(keys.verify(&kb).unwrap().id, "bob");
            assert_eq!(keys.verify(&ka).unwrap().id, "alice");
        }
        let only_alice = ApiKeys::new(&[cfg("alice", &ka)]).unwrap();
        assert_eq!(
            only_alice.verify(&kb).map(|c| c.id.as_str()),
            Err(AuthError::Invalid("unknown_key"))
        );
    }

    #[test]
    fn empty_set_rejects_everything() {
        let keys = ApiKeys::new(&[]).unwrap();
        assert!(keys.is_empty());
        assert_eq!(
            keys.verify(&generate_key()).map(|c| c.id.as_str()),
            Err(AuthError::Invalid("unknown_key"))
        );
    }

    #[test]
    fn malformed_config_is_refused() {
        let k = generate_key();
        let mut short = cfg("a", &k);
        short.sha256.pop();
        assert!(ApiKeys::new(&[short]).unwrap_err().contains("sha256"));
        let mut not_hex = cfg("a", &k);
        not_hex.sha256.replace_range(0..1, "g");
        assert!(ApiKeys::new(&[not_hex]).unwrap_err().contains("sha256"));
        let mut raw_key = cfg("a", &k);
        raw_key.sha256 = k.clone();
        assert!(ApiKeys::new(&[raw_key]).is_err());

        let dup = ApiKeys::new(&[cfg("a", &k), cfg("a", &generate_key())]).unwrap_err();
        assert!(dup.contains("duplicate id"), "{dup}");
        let same_key = ApiKeys::new(&[cfg("a", &k), cfg("b", &k)]).unwrap_err();
        assert!(same_key.contains("another id"), "{same_key}");
        assert!(ApiKeys::new(&[cfg("", &k)]).is_err());
    }

    #[test]
    fn debug_shows_ids_not_digests() {
        let k = generate_key();
        let keys = ApiKeys::new(&[cfg("alice", &k)]).unwrap();
        let dbg = format!("{keys:?}");
        assert!(dbg.contains("alice"));
        assert!(!dbg.contains(&hash_key(&k)));
    }
}
