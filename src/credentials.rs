//! The bottom layer: the AccessKey credential type and how secrets look in
//! `Debug` output and logs. Imports nothing from the crate, so every layer may
//! use it (see docs/architecture.md).

use std::fmt;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};

/// An AccessKey pair, optionally temporary (security token + expiry).
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub access_key_secret: SecretString,
    pub security_token: Option<SecretString>,
    pub expiration: Option<DateTime<Utc>>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &KeyId(&self.access_key_id))
            .field("access_key_secret", &Redact)
            .field("security_token", &Redact::option(&self.security_token))
            .field("expiration", &self.expiration)
            .finish()
    }
}

impl Credentials {
    pub fn secret(&self) -> &str {
        self.access_key_secret.expose_secret()
    }
    pub fn token(&self) -> Option<&str> {
        self.security_token.as_ref().map(|t| t.expose_secret())
    }
}

/// What logs may show of an AccessKey id: enough to tell keys apart, not the whole id.
pub fn key_id_prefix(id: &str) -> String {
    KeyId(id).to_string()
}

/// An AccessKey id as `Debug` and `Display` show it: its first eight characters and `…`.
#[derive(Clone, Copy)]
pub struct KeyId<'a>(pub &'a str);

impl fmt::Display for KeyId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = self.0;
        let end = id.char_indices().nth(8).map_or(id.len(), |(i, _)| i);
        write!(f, "{}…", &id[..end])
    }
}

impl fmt::Debug for KeyId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// The text put where a secret was, in `Debug` output and config errors alike:
/// one spelling, so a grep of logs for it finds every hidden value.
pub const REDACTED: &str = "<redacted>";

/// What every hand-written `Debug` shows in place of a secret: [`REDACTED`].
#[derive(Clone, Copy)]
pub struct Redact;

impl Redact {
    /// For an optional secret: `None` stays visible (whether a token is set is
    /// not secret), `Some(_)` becomes `Some(<redacted>)`.
    pub fn option<T>(v: &Option<T>) -> Option<Redact> {
        v.as_ref().map(|_| Redact)
    }
}

impl fmt::Debug for Redact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// A secret written in the config (`identity.access_key_secret`). Compared by
/// value, in constant time, so a reload can tell whether it changed without
/// turning it into a `String`; its `Debug` is [`Redact`].
#[derive(Clone, serde::Deserialize)]
#[serde(transparent)]
pub struct ConfigSecret(SecretString);

impl ConfigSecret {
    /// The secret for a credential built from it.
    pub fn to_secret_string(&self) -> SecretString {
        self.0.clone()
    }
}

impl ExposeSecret<str> for ConfigSecret {
    fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

impl PartialEq for ConfigSecret {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq as _;
        bool::from(
            self.expose_secret()
                .as_bytes()
                .ct_eq(other.expose_secret().as_bytes()),
        )
    }
}

impl Eq for ConfigSecret {}

impl fmt::Debug for ConfigSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Redact.fmt(f)
    }
}

impl From<String> for ConfigSecret {
    fn from(s: String) -> Self {
        ConfigSecret(SecretString::from(s))
    }
}

impl From<&str> for ConfigSecret {
    fn from(s: &str) -> Self {
        ConfigSecret(SecretString::from(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_prefixes_keep_eight_characters() {
        assert_eq!(key_id_prefix("STS.NSNfakeBenchAccessKeyId01"), "STS.NSNf…");
        assert_eq!(key_id_prefix("short"), "short…");
        assert_eq!(key_id_prefix("ééééééééé"), "éééééééé…");
        assert_eq!(key_id_prefix(""), "…");
    }

    #[test]
    fn debug_shows_neither_secret_nor_token_nor_the_whole_id() {
        let c = Credentials {
            access_key_id: "LTAIfakeKeyIdForDebug".into(),
            access_key_secret: SecretString::from("fakeSecretValue123"),
            security_token: Some(SecretString::from("fakeTokenValue456")),
            expiration: None,
        };
        let text = format!("{c:?}");
        assert!(!text.contains("fakeSecretValue123"), "{text}");
        assert!(!text.contains("fakeTokenValue456"), "{text}");
        assert!(!text.contains("LTAIfakeKeyIdForDebug"), "{text}");
        assert!(text.contains("\"LTAIfake…\""), "{text}");
        assert!(text.contains("security_token: Some(<redacted>)"), "{text}");
        assert_eq!(format!("{:?}", Redact::option(&None::<String>)), "None");
        assert_eq!(format!("{:?}", Redact), "<redacted>");
    }

    #[test]
    fn config_secrets_compare_by_value_and_never_show() {
        let a = ConfigSecret::from("fakeConfigSecretA");
        assert_eq!(a, ConfigSecret::from("fakeConfigSecretA".to_string()));
        assert_ne!(a, ConfigSecret::from("fakeConfigSecretB"));
        assert_ne!(a, ConfigSecret::from("fakeConfigSecret"));
        assert_eq!(format!("{a:?}"), REDACTED);
        assert_eq!(a.to_secret_string().expose_secret(), "fakeConfigSecretA");
    }
}
