//! `source = "ram_role_arn"` (chained): take another provider's credentials
//! (`[identity.base]`) and AssumeRole into an intermediate role; the resulting
//! temporary credentials are the server's identity. The base provider refreshes
//! itself; each refresh here signs with whatever valid credential it holds.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{CredentialProvider, Credentials, Fetch, IdentityError};
use crate::config::IdentityConfig;
use crate::sts::{AssumeRole, AssumeRoleRequest};

pub const SOURCE: &str = "ram_role_arn";

pub struct RamRoleSource {
    base: Arc<dyn CredentialProvider>,
    sts: Arc<dyn AssumeRole>,
    request: AssumeRoleRequest,
}

impl RamRoleSource {
    pub fn new(
        base: Arc<dyn CredentialProvider>,
        sts: Arc<dyn AssumeRole>,
        request: AssumeRoleRequest,
    ) -> Self {
        RamRoleSource { base, sts, request }
    }

    pub fn from_config(
        cfg: &IdentityConfig,
        env: &BTreeMap<String, String>,
        base: Arc<dyn CredentialProvider>,
        sts: Arc<dyn AssumeRole>,
    ) -> Result<Self, IdentityError> {
        let role_arn = cfg
            .role_arn
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| IdentityError::config(SOURCE, "identity.role_arn is required"))?;
        let request = AssumeRoleRequest {
            role_arn,
            session_name: super::session_name(cfg.role_session_name.as_deref(), env),
            duration_seconds: cfg.duration_seconds(),
            policy: None,
            external_id: cfg.external_id.clone().filter(|s| !s.is_empty()),
        };
        Ok(Self::new(base, sts, request))
    }
}

#[async_trait::async_trait]
impl Fetch for RamRoleSource {
    async fn fetch(&self) -> Result<Credentials, IdentityError> {
        let base = self.base.credentials().await.map_err(|e| {
            IdentityError::new(
                SOURCE,
                e.kind,
                format!("the base identity ({}): {}", e.source_name, e.message),
            )
        })?;
        self.sts
            .assume_role(&base, &self.request)
            .await
            .map(Credentials::from)
            .map_err(|e| IdentityError::from_sts(SOURCE, &e))
    }
    fn source_name(&self) -> &'static str {
        SOURCE
    }
    fn start(&self) {
        self.base.start();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::identity::testutil::{Recorded, TestServer, env, sts_client, sts_success};
    use crate::identity::{ErrorKind, RefreshTimings, Refreshing};

    fn base(pairs: &[(&str, &str)]) -> Result<Arc<dyn CredentialProvider>, IdentityError> {
        let cfg = IdentityConfig {
            source: crate::config::IdentitySource::Env,
            ..Default::default()
        };
        let src = crate::identity::env::EnvSource::from_config(&cfg, &env(pairs))?;
        Ok(Arc::new(Refreshing::new(
            Box::new(src),
            Arc::new(crate::sts::SystemClock),
            RefreshTimings::default(),
        )))
    }

    fn cfg() -> IdentityConfig {
        IdentityConfig {
            source: crate::config::IdentitySource::RamRoleArn,
            role_arn: Some("acs:ram::1234567890123456:role/intermediate".into()),
            role_session_name: Some("ossvend-chain".into()),
            external_id: Some("ext-1".into()),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn signs_assume_role_with_the_base_key() {
        let server =
            TestServer::start(|_: &Recorded| (200, sts_success("STS.NChain", Duration::from_secs(3600))))
                .await;
        let base = base(&[
            ("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAIbase"),
            ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "base-secret"),
        ])
        .unwrap();
        let src = RamRoleSource::from_config(&cfg(), &env(&[]), base, sts_client(&server.url)).unwrap();
        let c = src.fetch().await.unwrap();
        assert_eq!(c.access_key_id, "STS.NChain");
        let p = server.requests()[0].params();
        assert_eq!(p["Action"], "AssumeRole");
        assert_eq!(p["AccessKeyId"], "LTAIbase");
        assert_eq!(p["RoleArn"], "acs:ram::1234567890123456:role/intermediate");
        assert_eq!(p["RoleSessionName"], "ossvend-chain");
        assert_eq!(p["ExternalId"], "ext-1");
        assert_eq!(p["DurationSeconds"], "3600");
        let mut unsigned: Vec<(&str, &str)> = p
            .iter()
            .filter(|(k, _)| *k != "Signature")
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        unsigned.sort();
        let sig = crate::sign::sts_rpc::sign("POST", unsigned, "base-secret");
        assert_eq!(p["Signature"], sig.signature);
    }

    #[tokio::test]
    async fn a_base_failure_keeps_its_kind() {
        let server = TestServer::start(|_: &Recorded| (500, String::new())).await;
        let base = base(&[]);
        assert!(base.is_err());
        // A base that itself fails remotely: the chained source reports it as such.
        let remote_base = Arc::new(Refreshing::new(
            Box::new(crate::identity::uri::UriSource::new(&format!("{}/c", server.url)).unwrap()),
            Arc::new(crate::sts::SystemClock),
            RefreshTimings::default(),
        ));
        let src =
            RamRoleSource::from_config(&cfg(), &env(&[]), remote_base, sts_client(&server.url)).unwrap();
        let e = src.fetch().await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Rejected);
        assert!(e.message.contains("base identity"));
        let mut no_role = cfg();
        no_role.role_arn = None;
        let b = Arc::new(Refreshing::new(
            Box::new(crate::identity::uri::UriSource::new("http://127.0.0.1:1/").unwrap()),
            Arc::new(crate::sts::SystemClock),
            RefreshTimings::default(),
        ));
        assert!(RamRoleSource::from_config(&no_role, &env(&[]), b, sts_client(&server.url)).is_err());
    }
}
