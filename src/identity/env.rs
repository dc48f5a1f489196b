//! `source = "env"`: a fixed AccessKey from the environment —
//! `ALIBABA_CLOUD_ACCESS_KEY_ID` / `ALIBABA_CLOUD_ACCESS_KEY_SECRET` and the
//! optional `ALIBABA_CLOUD_SECURITY_TOKEN`, falling back to the OSS SDKs'
//! `OSS_ACCESS_KEY_ID` / `OSS_ACCESS_KEY_SECRET` / `OSS_SESSION_TOKEN` when no
//! `ALIBABA_CLOUD_*` key variable is set. The two families are never mixed.
//!
//! Kept from issue 2: `identity.access_key_id` may name the key id in the file,
//! and `access_key_secret` is accepted inline with `allow_inline_secret = true`.

use std::collections::BTreeMap;

use secrecy::SecretString;

use super::{Credentials, Fetch, IdentityError, env_var};
use crate::config::IdentityConfig;

pub const SOURCE: &str = "env";

/// The variable names of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvNames {
    pub id: &'static str,
    pub secret: &'static str,
    pub token: &'static str,
}

pub const ALIBABA: EnvNames = EnvNames {
    id: "ALIBABA_CLOUD_ACCESS_KEY_ID",
    secret: "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
    token: "ALIBABA_CLOUD_SECURITY_TOKEN",
};

pub const OSS: EnvNames = EnvNames {
    id: "OSS_ACCESS_KEY_ID",
    secret: "OSS_ACCESS_KEY_SECRET",
    token: "OSS_SESSION_TOKEN",
};

/// Which family to read: `ALIBABA_CLOUD_*` unless none of its key variables is
/// set and an `OSS_*` one is.
pub fn family(env: &BTreeMap<String, String>) -> EnvNames {
    let any = |n: &EnvNames| env_var(env, n.id).is_some() || env_var(env, n.secret).is_some();
    if !any(&ALIBABA) && any(&OSS) { OSS } else { ALIBABA }
}

pub struct EnvSource {
    creds: Credentials,
}

impl EnvSource {
    /// Reads the variables now (the environment of a process does not change).
    pub fn from_config(cfg: &IdentityConfig, env: &BTreeMap<String, String>) -> Result<Self, IdentityError> {
        let names = family(env);
        let fallback_note = |n: &EnvNames, var: &str| {
            if *n == ALIBABA {
                let oss = if var == ALIBABA.id { OSS.id } else { OSS.secret };
                format!("{var} is not set (nor {oss})")
            } else {
                format!("{var} is not set")
            }
        };
        let id = cfg
            .access_key_id
            .clone()
            .filter(|s| !s.is_empty())
            .or_else(|| env_var(env, names.id).map(str::to_string));
        let secret = match (&cfg.access_key_secret, cfg.allow_inline_secret) {
            (Some(s), true) => Some(s.to_secret_string()),
            _ => env_var(env, names.secret).map(|s| SecretString::from(s.to_string())),
        };
        let (access_key_id, access_key_secret) = match (id, secret) {
            (Some(id), Some(secret)) => (id, secret),
            (None, None) => {
                return Err(IdentityError::not_configured(
                    SOURCE,
                    format!(
                        "{}; {}",
                        fallback_note(&names, names.id),
                        fallback_note(&names, names.secret)
                    ),
                ));
            }
            (None, Some(_)) => return Err(IdentityError::config(SOURCE, fallback_note(&names, names.id))),
            (Some(_), None) => {
                return Err(IdentityError::config(SOURCE, fallback_note(&names, names.secret)));
            }
        };
        let security_token = env_var(env, names.token).map(|t| SecretString::from(t.to_string()));
        Ok(EnvSource {
            creds: Credentials {
                access_key_id,
                access_key_secret,
                security_token,
                expiration: None,
            },
        })
    }
}

#[async_trait::async_trait]
impl Fetch for EnvSource {
    async fn fetch(&self) -> Result<Credentials, IdentityError> {
        Ok(self.creds.clone())
    }
    fn source_name(&self) -> &'static str {
        SOURCE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::ErrorKind;
    use crate::identity::testutil::env;

    fn cfg() -> IdentityConfig {
        IdentityConfig {
            source: crate::config::IdentitySource::Env,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn alibaba_variables() {
        let e = env(&[
            ("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAIa"),
            ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "sa"),
            ("ALIBABA_CLOUD_SECURITY_TOKEN", "ta"),
            ("OSS_ACCESS_KEY_ID", "LTAIo"),
            ("OSS_ACCESS_KEY_SECRET", "so"),
        ]);
        let c = EnvSource::from_config(&cfg(), &e).unwrap().fetch().await.unwrap();
        assert_eq!(
            (c.access_key_id.as_str(), c.secret(), c.token()),
            ("LTAIa", "sa", Some("ta"))
        );
    }

    #[tokio::test]
    async fn oss_fallback_never_mixes_families() {
        let e = env(&[
            ("OSS_ACCESS_KEY_ID", "LTAIo"),
            ("OSS_ACCESS_KEY_SECRET", "so"),
            ("OSS_SESSION_TOKEN", "to"),
            ("ALIBABA_CLOUD_SECURITY_TOKEN", "ta"),
        ]);
        let c = EnvSource::from_config(&cfg(), &e).unwrap().fetch().await.unwrap();
        assert_eq!(
            (c.access_key_id.as_str(), c.secret(), c.token()),
            ("LTAIo", "so", Some("to"))
        );
        // Half an ALIBABA pair is an error, not an OSS fallback.
        let e = env(&[
            ("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAIa"),
            ("OSS_ACCESS_KEY_ID", "LTAIo"),
            ("OSS_ACCESS_KEY_SECRET", "so"),
        ]);
        let err = EnvSource::from_config(&cfg(), &e).err().unwrap();
        assert_eq!(err.kind, ErrorKind::Config);
        assert!(err.message.contains("ALIBABA_CLOUD_ACCESS_KEY_SECRET is not set"));
    }

    #[test]
    fn nothing_set_is_not_configured_and_names_both_variables() {
        let err = EnvSource::from_config(&cfg(), &env(&[])).err().unwrap();
        assert_eq!(err.kind, ErrorKind::NotConfigured);
        assert!(err.message.contains("ALIBABA_CLOUD_ACCESS_KEY_ID is not set"));
        assert!(err.message.contains("ALIBABA_CLOUD_ACCESS_KEY_SECRET is not set"));
    }

    #[tokio::test]
    async fn key_id_in_the_file_and_inline_secret_only_when_allowed() {
        let mut c = cfg();
        c.access_key_id = Some("LTAIfile".into());
        c.access_key_secret = Some("inline".to_string().into());
        let e = env(&[("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "fromenv")]);
        let got = EnvSource::from_config(&c, &e).unwrap().fetch().await.unwrap();
        assert_eq!(
            (got.access_key_id.as_str(), got.secret()),
            ("LTAIfile", "fromenv")
        );
        c.allow_inline_secret = true;
        let got = EnvSource::from_config(&c, &e).unwrap().fetch().await.unwrap();
        assert_eq!(got.secret(), "inline");
    }
}
