//! `source = "static"`: the key id in the config file, the secret from an
//! environment variable (`secret_env`), a file (`secret_file`, e.g. a mounted
//! Kubernetes secret; read at start-up and again every minute, so a rotated
//! secret is picked up; trailing newline trimmed) or — only with
//! `allow_inline_secret = true` — the file itself (`access_key_secret`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;

use super::{Credentials, FILE_RELOAD_INTERVAL, Fetch, IdentityError, env_var};
use crate::config::IdentityConfig;
use crate::credentials::ConfigSecret;

pub const SOURCE: &str = "static";

/// A secret file is a few dozen bytes; anything huge is a mistake.
const MAX_SECRET_FILE: u64 = 64 * 1024;

enum Secret {
    Fixed(SecretString),
    File(PathBuf),
}

pub struct StaticKeySource {
    access_key_id: String,
    secret: Secret,
}

/// Reads a secret file: UTF-8, trailing `\n`/`\r\n` trimmed, not empty. The
/// error names the file, never its content.
pub fn read_secret_file(path: &Path) -> Result<SecretString, String> {
    let bytes = super::read_small_file(path, MAX_SECRET_FILE)?;
    let text = String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))?;
    let trimmed = text.trim_end_matches(['\n', '\r']);
    if trimmed.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(SecretString::from(trimmed.to_string()))
}

impl StaticKeySource {
    /// Reads the secret now: a missing variable or file stops start-up.
    pub fn from_config(cfg: &IdentityConfig, env: &BTreeMap<String, String>) -> Result<Self, IdentityError> {
        let err = |m: String| IdentityError::config(SOURCE, m);
        let access_key_id = cfg
            .access_key_id
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| err("identity.access_key_id is required".into()))?;
        let inline = cfg.access_key_secret.is_some();
        let given = [cfg.secret_env.is_some(), cfg.secret_file.is_some(), inline]
            .iter()
            .filter(|x| **x)
            .count();
        if given != 1 {
            return Err(err(
                "exactly one of identity.secret_env, identity.secret_file or identity.access_key_secret is needed"
                    .into(),
            ));
        }
        let secret = if let Some(var) = &cfg.secret_env {
            let value =
                env_var(env, var).ok_or_else(|| err(format!("{var} (identity.secret_env) is not set")))?;
            Secret::Fixed(SecretString::from(value.to_string()))
        } else if let Some(path) = &cfg.secret_file {
            let path = super::expand_home(path, env).map_err(err)?;
            read_secret_file(&path).map_err(|m| err(format!("identity.secret_file: {m}")))?;
            Secret::File(path)
        } else if cfg.allow_inline_secret {
            Secret::Fixed(
                cfg.access_key_secret
                    .as_ref()
                    .map(ConfigSecret::to_secret_string)
                    .unwrap_or_else(|| SecretString::from(String::new())),
            )
        } else {
            return Err(err(
                "identity.access_key_secret in the config file is refused unless identity.allow_inline_secret = true"
                    .into(),
            ));
        };
        Ok(StaticKeySource {
            access_key_id,
            secret,
        })
    }
}

#[async_trait::async_trait]
impl Fetch for StaticKeySource {
    async fn fetch(&self) -> Result<Credentials, IdentityError> {
        let access_key_secret = match &self.secret {
            Secret::Fixed(s) => s.clone(),
            Secret::File(path) => read_secret_file(path)
                .map_err(|m| IdentityError::config(SOURCE, format!("identity.secret_file: {m}")))?,
        };
        Ok(Credentials {
            access_key_id: self.access_key_id.clone(),
            access_key_secret,
            security_token: None,
            expiration: None,
        })
    }
    fn source_name(&self) -> &'static str {
        SOURCE
    }
    fn reload_every(&self) -> Option<Duration> {
        matches!(self.secret, Secret::File(_)).then_some(FILE_RELOAD_INTERVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::testutil::{ManualClock, env};
    use crate::identity::{CredentialProvider, ErrorKind, RefreshTimings, Refreshing};

    fn cfg() -> IdentityConfig {
        IdentityConfig {
            source: crate::config::IdentitySource::Static,
            access_key_id: Some("LTAIstatic".into()),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn secret_from_env_var() {
        let mut c = cfg();
        c.secret_env = Some("MY_SECRET".into());
        let s = StaticKeySource::from_config(&c, &env(&[("MY_SECRET", "s3cr3t")])).unwrap();
        let got = s.fetch().await.unwrap();
        assert_eq!(
            (got.access_key_id.as_str(), got.secret()),
            ("LTAIstatic", "s3cr3t")
        );
        assert!(s.reload_every().is_none());
        let e = StaticKeySource::from_config(&c, &env(&[])).err().unwrap();
        assert!(e.message.contains("MY_SECRET (identity.secret_env) is not set"));
    }

    #[tokio::test]
    async fn secret_file_is_trimmed_and_reread_on_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "first-secret\n").unwrap();
        let mut c = cfg();
        c.secret_file = Some(path.clone());
        let clock = ManualClock::new();
        let p = Refreshing::new(
            Box::new(StaticKeySource::from_config(&c, &env(&[])).unwrap()),
            clock.clone(),
            RefreshTimings::default(),
        );
        assert_eq!(p.credentials().await.unwrap().secret(), "first-secret");
        std::fs::write(&path, "second-secret\r\n").unwrap();
        clock.advance(Duration::from_secs(61));
        p.refresh_if_due().await;
        assert_eq!(p.credentials().await.unwrap().secret(), "second-secret");
        // The file disappears: the last good secret stays.
        std::fs::remove_file(&path).unwrap();
        clock.advance(Duration::from_secs(61));
        p.refresh_if_due().await;
        assert_eq!(p.credentials().await.unwrap().secret(), "second-secret");
        assert!(p.status().last_error.unwrap().contains("secret"));
    }

    #[test]
    fn missing_empty_or_ambiguous_secrets_fail_fast_without_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg();
        c.secret_file = Some(dir.path().join("absent"));
        let e = StaticKeySource::from_config(&c, &env(&[])).err().unwrap();
        assert_eq!(e.kind, ErrorKind::Config);
        assert!(e.message.contains("absent"));
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        c.secret_file = Some(empty);
        assert!(StaticKeySource::from_config(&c, &env(&[])).is_err());
        c.secret_env = Some("X".into());
        let e = StaticKeySource::from_config(&c, &env(&[("X", "y")]))
            .err()
            .unwrap();
        assert!(e.message.contains("exactly one"));
        let mut c = cfg();
        c.access_key_secret = Some("inline".to_string().into());
        assert!(StaticKeySource::from_config(&c, &env(&[])).is_err());
        c.allow_inline_secret = true;
        assert!(StaticKeySource::from_config(&c, &env(&[])).is_ok());
        let mut c = cfg();
        c.access_key_id = None;
        c.secret_env = Some("X".into());
        assert!(StaticKeySource::from_config(&c, &env(&[("X", "y")])).is_err());
    }
}
