//! `source = "chain"` (the default): the credentials SDKs' default chain
//! (docs/signing.md §5), in this order:
//!
//! 1. `env` — when an AccessKey pair is in the environment;
//! 2. `oidc` — only when `ALIBABA_CLOUD_ROLE_ARN`, `ALIBABA_CLOUD_OIDC_PROVIDER_ARN`
//!    and `ALIBABA_CLOUD_OIDC_TOKEN_FILE` are all set;
//! 3. `profile` — the CLI and ini files, unless `ALIBABA_CLOUD_CLI_PROFILE_DISABLED=true`;
//! 4. `ecs_ram_role` — unless `ALIBABA_CLOUD_ECS_METADATA_DISABLED=true`;
//! 5. `credentials_uri` — when `ALIBABA_CLOUD_CREDENTIALS_URI` (or `identity.credentials_uri`) is set.
//!
//! The first member that yields credentials wins and is remembered: later
//! refreshes ask only it (as the SDKs do).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tracing::{debug, info};

use super::{Credentials, ErrorKind, Fetch, IdentityError, env_var};
use crate::config::IdentityConfig;
use crate::sts::StsClient;

pub const SOURCE: &str = "chain";

enum Member {
    Ready(Box<dyn Fetch>),
    /// Not enabled here, with the reason (reported when nothing wins).
    Skipped(&'static str, String),
}

impl Member {
    fn name(&self) -> &'static str {
        match self {
            Member::Ready(f) => f.source_name(),
            Member::Skipped(name, _) => name,
        }
    }
}

pub struct ChainSource {
    members: Vec<Member>,
    winner: OnceLock<usize>,
}

fn switched_off(env: &BTreeMap<String, String>, var: &str) -> bool {
    env_var(env, var).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

impl ChainSource {
    /// No I/O: each member is checked when the chain is walked.
    pub fn from_config(cfg: &IdentityConfig, env: &BTreeMap<String, String>, sts: Arc<StsClient>) -> Self {
        let mut members = Vec::new();
        let plain = IdentityConfig {
            source: crate::config::IdentitySource::Env,
            ..Default::default()
        };
        members.push(match super::env::EnvSource::from_config(&plain, env) {
            Ok(s) => Member::Ready(Box::new(s)),
            Err(e) => Member::Skipped(super::env::SOURCE, e.message),
        });

        use super::oidc::{PROVIDER_ARN_ENV, ROLE_ARN_ENV, TOKEN_FILE_ENV};
        let oidc_env = [ROLE_ARN_ENV, PROVIDER_ARN_ENV, TOKEN_FILE_ENV];
        members.push(if oidc_env.iter().all(|v| env_var(env, v).is_some()) {
            // Only the environment selects OIDC here; the session settings may come from the file.
            let oidc_cfg = IdentityConfig {
                role_session_name: cfg.role_session_name.clone(),
                duration_seconds: cfg.duration_seconds,
                ..Default::default()
            };
            match super::oidc::OidcSource::from_config(&oidc_cfg, env, sts.clone()) {
                Ok(s) => Member::Ready(Box::new(s)),
                Err(e) => Member::Skipped(super::oidc::SOURCE, e.message),
            }
        } else {
            Member::Skipped(
                super::oidc::SOURCE,
                format!("not all of {} are set", oidc_env.join(", ")),
            )
        });

        members.push(if switched_off(env, "ALIBABA_CLOUD_CLI_PROFILE_DISABLED") {
            Member::Skipped(
                super::profile::SOURCE,
                "disabled by ALIBABA_CLOUD_CLI_PROFILE_DISABLED=true".into(),
            )
        } else {
            match super::profile::ProfileSource::new(cfg, env, sts) {
                Ok(s) => Member::Ready(Box::new(s)),
                Err(e) => Member::Skipped(super::profile::SOURCE, e.message),
            }
        });

        members.push(if switched_off(env, "ALIBABA_CLOUD_ECS_METADATA_DISABLED") {
            Member::Skipped(
                super::ecs::SOURCE,
                "disabled by ALIBABA_CLOUD_ECS_METADATA_DISABLED=true".into(),
            )
        } else {
            match super::ecs::EcsSource::from_config(cfg, env) {
                Ok(s) => Member::Ready(Box::new(s)),
                Err(e) => Member::Skipped(super::ecs::SOURCE, e.message),
            }
        });

        members.push(match super::uri::configured_uri(cfg, env) {
            Some(uri) => match super::uri::UriSource::new(uri) {
                Ok(s) => Member::Ready(Box::new(s)),
                Err(e) => Member::Skipped(super::uri::SOURCE, e.message),
            },
            None => Member::Skipped(super::uri::SOURCE, format!("{} is not set", super::uri::ENV)),
        });
        ChainSource {
            members,
            winner: OnceLock::new(),
        }
    }

    #[cfg(test)]
    fn from_members(members: Vec<Box<dyn Fetch>>) -> Self {
        ChainSource {
            members: members.into_iter().map(Member::Ready).collect(),
            winner: OnceLock::new(),
        }
    }

    /// The members in order, and whether each is enabled here (for diagnostics).
    pub fn members(&self) -> Vec<(&'static str, bool)> {
        self.members
            .iter()
            .map(|m| (m.name(), matches!(m, Member::Ready(_))))
            .collect()
    }

    fn winner_fetch(&self) -> Option<&dyn Fetch> {
        match self.members.get(*self.winner.get()?) {
            Some(Member::Ready(f)) => Some(f.as_ref()),
            _ => None,
        }
    }
}

#[async_trait::async_trait]
impl Fetch for ChainSource {
    async fn fetch(&self) -> Result<Credentials, IdentityError> {
        if let Some(f) = self.winner_fetch() {
            return f.fetch().await;
        }
        // The wrapper runs one fetch at a time, so one walk at a time.
        let mut failures = Vec::new();
        let mut kinds = Vec::new();
        for (i, m) in self.members.iter().enumerate() {
            match m {
                Member::Skipped(name, why) => failures.push(format!("{name}: {why}")),
                Member::Ready(f) => match f.fetch().await {
                    Ok(c) => {
                        let _ = self.winner.set(i);
                        info!(chain_winner = %f.source_name(), "identity chain: {} yields credentials", f.source_name());
                        return Ok(c);
                    }
                    Err(e) => {
                        debug!(member = f.source_name(), error = %e, "identity chain: member yields nothing");
                        kinds.push(e.kind);
                        failures.push(format!("{}: {}", f.source_name(), e.message));
                    }
                },
            }
        }
        // A member that exists but failed remotely may come up later (retry);
        // nothing configured at all is a configuration problem.
        let kind = [ErrorKind::Transport, ErrorKind::Rejected, ErrorKind::Config]
            .into_iter()
            .find(|k| kinds.contains(k))
            .unwrap_or(ErrorKind::NotConfigured);
        Err(IdentityError::new(
            SOURCE,
            kind,
            format!(
                "no source in the chain yielded credentials — {}",
                failures.join("; ")
            ),
        ))
    }
    fn source_name(&self) -> &'static str {
        SOURCE
    }
    fn chain_winner(&self) -> Option<&'static str> {
        self.winner_fetch().map(|f| f.source_name())
    }
    fn reload_every(&self) -> Option<Duration> {
        self.winner_fetch().and_then(|f| f.reload_every())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::testutil::{Recorded, ScriptedFetch, TestServer, env, sts_client};
    use crate::identity::{CredentialProvider, RefreshTimings, Refreshing};

    struct Named(&'static str, ScriptedFetch);

    #[async_trait::async_trait]
    impl Fetch for Named {
        async fn fetch(&self) -> Result<Credentials, IdentityError> {
            self.1.fetch().await
        }
        fn source_name(&self) -> &'static str {
            self.0
        }
    }

    fn names(chain: &ChainSource) -> Vec<(&'static str, bool)> {
        chain.members()
    }

    #[test]
    fn order_and_switches() {
        let sts = sts_client("http://127.0.0.1:1");
        let all = env(&[
            ("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAI"),
            ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "s"),
            ("ALIBABA_CLOUD_ROLE_ARN", "acs:ram::1:role/r"),
            ("ALIBABA_CLOUD_OIDC_PROVIDER_ARN", "acs:ram::1:oidc-provider/p"),
            ("ALIBABA_CLOUD_OIDC_TOKEN_FILE", "/t"),
            ("ALIBABA_CLOUD_CREDENTIALS_URI", "http://127.0.0.1:9/c"),
        ]);
        let c = ChainSource::from_config(&IdentityConfig::default(), &all, sts.clone());
        assert_eq!(
            names(&c),
            [
                ("env", true),
                ("oidc", true),
                ("profile", true),
                ("ecs_ram_role", true),
                ("credentials_uri", true)
            ]
        );
        let off = env(&[
            ("ALIBABA_CLOUD_ROLE_ARN", "acs:ram::1:role/r"),
            ("ALIBABA_CLOUD_CLI_PROFILE_DISABLED", "true"),
            ("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "TRUE"),
        ]);
        let c = ChainSource::from_config(&IdentityConfig::default(), &off, sts);
        assert_eq!(
            names(&c),
            [
                ("env", false),
                ("oidc", false),
                ("profile", false),
                ("ecs_ram_role", false),
                ("credentials_uri", false)
            ]
        );
    }

    #[tokio::test]
    async fn first_member_with_credentials_wins_and_is_remembered() {
        let clock = crate::identity::testutil::ManualClock::new();
        let (a, b, c) = (
            ScriptedFetch::new(clock.clone(), Duration::from_secs(3600)),
            ScriptedFetch::new(clock.clone(), Duration::from_secs(3600)),
            ScriptedFetch::new(clock.clone(), Duration::from_secs(3600)),
        );
        a.fail(true);
        let chain = ChainSource::from_members(vec![
            Box::new(Named("first", a.handle())),
            Box::new(Named("second", b.handle())),
            Box::new(Named("third", c.handle())),
        ]);
        let p = Refreshing::new(Box::new(chain), clock.clone(), RefreshTimings::default());
        p.credentials().await.unwrap();
        assert_eq!((a.calls(), b.calls(), c.calls()), (1, 1, 0));
        assert_eq!(p.status().chain_winner, Some("second"));
        assert_eq!(p.status().source, "chain");
        // Later refreshes ask the winner only, even if an earlier member came up.
        a.fail(false);
        clock.advance(Duration::from_secs(50 * 60));
        p.refresh_if_due().await;
        assert_eq!((a.calls(), b.calls(), c.calls()), (1, 2, 0));
    }

    #[tokio::test]
    async fn nothing_configured_is_fatal_and_says_why_for_each_member() {
        let cfg = IdentityConfig {
            cli_config_file: Some("/nonexistent/config.json".into()),
            credentials_file: Some("/nonexistent/credentials".into()),
            ..Default::default()
        };
        let e = env(&[("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true")]);
        let chain = ChainSource::from_config(&cfg, &e, sts_client("http://127.0.0.1:1"));
        let err = chain.fetch().await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotConfigured);
        assert!(err.is_fatal_at_startup());
        for part in ["env:", "oidc:", "profile:", "ecs_ram_role:", "credentials_uri:"] {
            assert!(err.message.contains(part), "{part} in {}", err.message);
        }
    }

    #[tokio::test]
    async fn ecs_down_is_not_fatal_and_env_wins_over_ecs() {
        let imds = TestServer::start(|r: &Recorded| match r.method.as_str() {
            "PUT" => (200, "tok".into()),
            _ if r.path.ends_with("/security-credentials/") => (200, "Role".into()),
            _ => (
                200,
                r#"{"Code":"Success","AccessKeyId":"STS.NChainEcs","AccessKeySecret":"s","SecurityToken":"t","Expiration":"2099-01-01T00:00:00Z"}"#.into(),
            ),
        })
        .await;
        let cfg = IdentityConfig {
            cli_config_file: Some("/nonexistent/config.json".into()),
            credentials_file: Some("/nonexistent/credentials".into()),
            metadata_endpoint: Some(imds.url.clone()),
            ..Default::default()
        };
        let sts = sts_client("http://127.0.0.1:1");
        let chain = ChainSource::from_config(&cfg, &env(&[]), sts.clone());
        assert_eq!(chain.fetch().await.unwrap().access_key_id, "STS.NChainEcs");
        assert_eq!(chain.chain_winner(), Some("ecs_ram_role"));

        let with_env = env(&[
            ("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAIenv"),
            ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "s"),
        ]);
        let chain = ChainSource::from_config(&cfg, &with_env, sts.clone());
        assert_eq!(chain.fetch().await.unwrap().access_key_id, "LTAIenv");
        assert_eq!(chain.chain_winner(), Some("env"));

        let down = IdentityConfig {
            metadata_endpoint: Some("http://127.0.0.1:1".into()),
            ..cfg
        };
        let err = ChainSource::from_config(&down, &env(&[]), sts)
            .fetch()
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Transport);
        assert!(!err.is_fatal_at_startup());
    }
}
