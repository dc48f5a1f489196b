//! `source = "oidc"` (Kubernetes RRSA): `AssumeRoleWithOIDC` with the pod's
//! projected service-account token (docs/signing.md §3). The token file is read again on
//! every refresh (the kubelet rotates it) and never logged.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use secrecy::SecretString;

use super::{Credentials, Fetch, IdentityError, env_var};
use crate::config::IdentityConfig;
use crate::sts::{OidcRequest, StsClient};

pub const SOURCE: &str = "oidc";

pub const ROLE_ARN_ENV: &str = "ALIBABA_CLOUD_ROLE_ARN";
pub const PROVIDER_ARN_ENV: &str = "ALIBABA_CLOUD_OIDC_PROVIDER_ARN";
pub const TOKEN_FILE_ENV: &str = "ALIBABA_CLOUD_OIDC_TOKEN_FILE";

/// STS accepts 4-20000 characters; read a little more to say "too long".
const MAX_TOKEN_FILE: u64 = 64 * 1024;
const MAX_TOKEN_CHARS: usize = 20_000;

#[derive(Debug, Clone)]
pub struct OidcSettings {
    pub role_arn: String,
    pub oidc_provider_arn: String,
    pub token_file: PathBuf,
    pub session_name: String,
    pub duration_seconds: u32,
    pub policy: Option<String>,
}

impl OidcSettings {
    /// Config keys, else the `ALIBABA_CLOUD_*` variables the credentials SDKs read.
    pub fn from_config(cfg: &IdentityConfig, env: &BTreeMap<String, String>) -> Result<Self, IdentityError> {
        let pick = |configured: Option<String>, var: &str, key: &str| {
            configured
                .filter(|s| !s.is_empty())
                .or_else(|| env_var(env, var).map(str::to_string))
                .ok_or_else(|| {
                    IdentityError::not_configured(SOURCE, format!("neither identity.{key} nor {var} is set"))
                })
        };
        let role_arn = pick(cfg.role_arn.clone(), ROLE_ARN_ENV, "role_arn")?;
        let oidc_provider_arn = pick(
            cfg.oidc_provider_arn.clone(),
            PROVIDER_ARN_ENV,
            "oidc_provider_arn",
        )?;
        let token_file = pick(
            cfg.oidc_token_file
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned()),
            TOKEN_FILE_ENV,
            "oidc_token_file",
        )?;
        let token_file = super::expand_home(std::path::Path::new(&token_file), env)
            .map_err(|m| IdentityError::config(SOURCE, m))?;
        Ok(OidcSettings {
            role_arn,
            oidc_provider_arn,
            token_file,
            session_name: super::session_name(cfg.role_session_name.as_deref(), env),
            duration_seconds: cfg.duration_seconds(),
            policy: None,
        })
    }
}

/// Reads the JWT: whitespace around it trimmed (a JWT has none inside), 4-20000
/// characters. Errors name the file only.
pub fn read_token_file(path: &std::path::Path) -> Result<SecretString, String> {
    let bytes = super::read_small_file(path, MAX_TOKEN_FILE)?;
    let text = String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))?;
    let token = text.trim();
    if token.len() < 4 {
        return Err(format!("{} holds no OIDC token", path.display()));
    }
    if token.len() > MAX_TOKEN_CHARS {
        return Err(format!(
            "{} holds more than {MAX_TOKEN_CHARS} characters",
            path.display()
        ));
    }
    Ok(SecretString::from(token.to_string()))
}

pub struct OidcSource {
    sts: Arc<StsClient>,
    settings: OidcSettings,
}

impl OidcSource {
    pub fn new(sts: Arc<StsClient>, settings: OidcSettings) -> Self {
        OidcSource { sts, settings }
    }

    pub fn from_config(
        cfg: &IdentityConfig,
        env: &BTreeMap<String, String>,
        sts: Arc<StsClient>,
    ) -> Result<Self, IdentityError> {
        Ok(Self::new(sts, OidcSettings::from_config(cfg, env)?))
    }

    pub fn read_token(&self) -> Result<SecretString, IdentityError> {
        read_token_file(&self.settings.token_file)
            .map_err(|m| IdentityError::config(SOURCE, format!("OIDC token file: {m}")))
    }
}

#[async_trait::async_trait]
impl Fetch for OidcSource {
    async fn fetch(&self) -> Result<Credentials, IdentityError> {
        let s = &self.settings;
        let req = OidcRequest {
            role_arn: s.role_arn.clone(),
            oidc_provider_arn: s.oidc_provider_arn.clone(),
            oidc_token: self.read_token()?,
            session_name: s.session_name.clone(),
            duration_seconds: s.duration_seconds,
            policy: s.policy.clone(),
        };
        self.sts
            .assume_role_with_oidc(&req)
            .await
            .map(Credentials::from)
            .map_err(|e| IdentityError::from_sts(SOURCE, &e))
    }
    fn source_name(&self) -> &'static str {
        SOURCE
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::identity::ErrorKind;
    use crate::identity::testutil::{Recorded, TestServer, env, sts_client, sts_success};

    fn settings(token_file: PathBuf) -> OidcSettings {
        OidcSettings {
            role_arn: "acs:ram::1234567890123456:role/ack-pod-role".into(),
            oidc_provider_arn: "acs:ram::1234567890123456:oidc-provider/ack-rrsa".into(),
            token_file,
            session_name: "pod-session".into(),
            duration_seconds: 3600,
            policy: None,
        }
    }

    #[tokio::test]
    async fn anonymous_post_with_the_token_in_the_body_reread_on_every_refresh() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "header.payload1.sig\n").unwrap();
        let server =
            TestServer::start(|_: &Recorded| (200, sts_success("STS.NOidc1", Duration::from_secs(3600))))
                .await;
        let src = OidcSource::new(sts_client(&server.url), settings(file.clone()));
        let c = src.fetch().await.unwrap();
        assert_eq!(c.access_key_id, "STS.NOidc1");
        assert!(c.token().is_some() && c.expiration.is_some());

        let r = &server.requests()[0];
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/");
        let query: BTreeMap<String, String> =
            url::form_urlencoded::parse(r.query.as_deref().unwrap_or("").as_bytes())
                .into_owned()
                .collect();
        let names: Vec<&str> = query.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ["Action", "Format", "SignatureNonce", "Timestamp", "Version"]
        );
        assert_eq!(query["Action"], "AssumeRoleWithOIDC");
        let all = r.params();
        assert_eq!(all["OIDCToken"], "header.payload1.sig");
        assert_eq!(all["RoleSessionName"], "pod-session");
        assert_eq!(all["DurationSeconds"], "3600");
        for unsigned in ["Signature", "AccessKeyId", "SignatureMethod", "SignatureVersion"] {
            assert!(!all.contains_key(unsigned), "{unsigned}");
        }
        assert_eq!(r.header("x-acs-action"), Some("AssumeRoleWithOIDC"));

        // The kubelet rotates the file: the next refresh sends the new token.
        std::fs::write(&file, "header.payload2.sig").unwrap();
        src.fetch().await.unwrap();
        assert_eq!(server.requests()[1].params()["OIDCToken"], "header.payload2.sig");
    }

    #[tokio::test]
    async fn sts_errors_map_and_are_retried_only_when_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "h.p.s").unwrap();
        let answers = Mutex::new(vec![
            (
                400,
                r#"{"Code":"AuthenticationFail.OIDCToken.Expired","Message":"expired"}"#,
            ),
            (503, r#"{"Code":"ServiceUnavailable"}"#),
            (503, r#"{"Code":"ServiceUnavailable"}"#),
        ]);
        let server = TestServer::start(move |_: &Recorded| {
            let (s, b) = answers.lock().unwrap().remove(0);
            (s, b.to_string())
        })
        .await;
        let src = OidcSource::new(sts_client(&server.url), settings(file));
        let e = src.fetch().await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Rejected);
        assert!(!e.message.contains("h.p.s"));
        assert_eq!(server.requests().len(), 1, "permanent errors are not retried");
        let e = src.fetch().await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Transport);
        assert_eq!(server.requests().len(), 3, "one retry (max_retries = 1)");
    }

    #[test]
    fn settings_default_from_the_environment() {
        let e = env(&[
            (ROLE_ARN_ENV, "acs:ram::1:role/r"),
            (PROVIDER_ARN_ENV, "acs:ram::1:oidc-provider/p"),
            (TOKEN_FILE_ENV, "/var/run/token"),
            ("ALIBABA_CLOUD_ROLE_SESSION_NAME", "from-env"),
        ]);
        let s = OidcSettings::from_config(&IdentityConfig::default(), &e).unwrap();
        assert_eq!(s.role_arn, "acs:ram::1:role/r");
        assert_eq!(s.token_file, PathBuf::from("/var/run/token"));
        assert_eq!(s.session_name, "from-env");
        assert_eq!(s.duration_seconds, 3600);
        let s = OidcSettings::from_config(
            &IdentityConfig::default(),
            &env(&[
                (ROLE_ARN_ENV, "x"),
                (PROVIDER_ARN_ENV, "y"),
                (TOKEN_FILE_ENV, "/t"),
            ]),
        )
        .unwrap();
        assert!(s.session_name.starts_with("ossvend-"));
        let err =
            OidcSettings::from_config(&IdentityConfig::default(), &env(&[(ROLE_ARN_ENV, "x")])).unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotConfigured);
    }

    #[test]
    fn token_file_rules() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t");
        assert!(read_token_file(&f).is_err());
        std::fs::write(&f, "  \n").unwrap();
        assert!(read_token_file(&f).is_err());
        std::fs::write(&f, "a".repeat(20_001)).unwrap();
        assert!(read_token_file(&f).is_err());
        std::fs::write(&f, "eyJh.eyJp.c2ln\n").unwrap();
        assert!(read_token_file(&f).is_ok());
    }
}
