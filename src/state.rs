//! The application state: everything a request needs, built from a validated
//! config (and, on reload, from the previous state where nothing changed).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use crate::audit::Audit;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::grants::{Grants, Issuer};
use crate::identity::{self, RefreshTimings};
use crate::ratelimit::Limits;
use crate::shared::Fleet;
use crate::sts::{CacheTimings, CredentialCache, StsClient, SystemClock};

pub struct AppState {
    pub config: Config,
    pub grants: Grants,
    pub issuer: Issuer,
    pub auth: Authenticator,
    pub limits: Limits,
    pub audit: Audit,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Fleet mode (`[shared]`): the Redis-backed state the replicas share.
    pub fleet: Option<Arc<Fleet>>,
    /// Verifies OSS upload callbacks (`POST /v1/callbacks/oss`).
    pub callbacks: crate::callbacks::Verifier,
    /// Where verified uploads are delivered; `None` without `[webhooks]` url and secret.
    pub webhooks: Option<Arc<crate::webhooks::Webhooks>>,
    /// ossvend's own OSS calls (upload sessions).
    pub oss: crate::oss::OssClient,
}

/// The `[identity]` section's fingerprint (its secrets show redacted): what
/// stands for the identity in the fleet's shared cache keys.
fn identity_tag(config: &Config) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(format!("{:?}", config.identity)))
}

impl AppState {
    /// `env` is the process environment (identity variables are read from it).
    ///
    /// Configuration problems of the identity (a missing variable, secret file
    /// or profile) stop start-up. A temporary identity whose first fetch fails
    /// remotely (metadata service or STS down) does not: the server starts
    /// unready and keeps retrying in the background.
    pub async fn build(config: Config, env: &BTreeMap<String, String>) -> Result<Arc<Self>, String> {
        Self::build_inner(config, env, None, RefreshTimings::default()).await
    }

    /// Like [`AppState::build`], with other timings of the identity's refresh
    /// loop: in-process tests shorten the expiry margin so that an identity's
    /// refresh, outage and recovery take seconds, not minutes.
    pub async fn build_with_timings(
        config: Config,
        env: &BTreeMap<String, String>,
        timings: RefreshTimings,
    ) -> Result<Arc<Self>, String> {
        Self::build_inner(config, env, None, timings).await
    }

    /// Like [`AppState::build`], for a reload: when `[identity]` and `[sts]`
    /// are unchanged from `previous`, its identity and credential cache are
    /// kept (cached credentials of unchanged grants keep being served without
    /// an STS call), and so are its rate-limit counters for grants whose limits
    /// did not change and its per-process ticket key.
    pub async fn build_reusing(
        config: Config,
        env: &BTreeMap<String, String>,
        previous: Option<&AppState>,
    ) -> Result<Arc<Self>, String> {
        Self::build_inner(config, env, previous, RefreshTimings::default()).await
    }

    async fn build_inner(
        mut config: Config,
        env: &BTreeMap<String, String>,
        previous: Option<&AppState>,
        timings: RefreshTimings,
    ) -> Result<Arc<Self>, String> {
        crate::prom::install();
        // Region/VPC defaults from the environment are resolved once, here.
        config.sts.endpoint = Some(
            config
                .sts
                .resolve_endpoint(env)
                .map_err(|e| format!("sts: {e}"))?,
        );
        let (issuer, fleet) = match previous.filter(|p| p.issuer_unchanged(&config)) {
            Some(p) => (
                Issuer {
                    identity: p.issuer.identity.clone(),
                    cache: p.issuer.cache.clone(),
                },
                p.fleet.clone(),
            ),
            None => {
                // rediss:// builds its TLS client config with the process's provider (ring).
                crate::tls::install_crypto_provider();
                let fleet = match &config.shared {
                    Some(s) => Some(Fleet::connect(s, config.sts.timeout, identity_tag(&config), env).await?),
                    None => None,
                };
                (
                    Self::build_issuer(&config, env, timings, fleet.clone()).await?,
                    fleet,
                )
            }
        };
        let grants = Grants::from_config(&config)?;
        let mut auth = Authenticator::from_config(&config, env)?;
        if let Some(p) = previous
            && config.auth.tickets.secret_env.is_none()
            && p.config.auth.tickets.secret_env.is_none()
        {
            // A random per-process key: keep it, or every ticket out there would turn invalid.
            auth.tickets = p.auth.tickets.with_ttl(config.auth.tickets.ttl);
        }
        let limits = Limits::carry_over(grants.iter(), previous.map(|p| &p.limits)).with_fleet(fleet.clone());
        let audit = Audit::open(&config.audit)?;
        // Set by `ossvend local` only, never read from a file: a reload keeps it.
        if let Some(p) = previous
            && config.webhooks.local_key_url.is_none()
        {
            config.webhooks.local_key_url = p.config.webhooks.local_key_url.clone();
        }
        // An unchanged [webhooks] keeps its pending events and redelivery task.
        let webhooks = match previous.and_then(|p| p.webhooks.clone()) {
            Some(w) if w.same_config(&config.webhooks, env, fleet.as_ref()) => Some(w),
            _ => crate::webhooks::Webhooks::from_config(&config.webhooks, env, fleet.clone())?,
        };
        let callbacks = crate::callbacks::Verifier::new(
            crate::callbacks::KeyHosts {
                local: config.webhooks.local_key_url.clone(),
            },
            Arc::new(crate::callbacks::HttpKeySource::new()?),
        );
        let trusted_proxies = config
            .rate_limit
            .trusted_proxies
            .iter()
            .filter_map(|t| {
                t.parse::<ipnet::IpNet>()
                    .ok()
                    .or_else(|| t.parse::<std::net::IpAddr>().ok().map(Into::into))
            })
            .collect();
        let oss = match previous {
            Some(p) => p.oss.clone(),
            None => crate::oss::OssClient::new(crate::oss::OssSettings::default())?,
        };
        Ok(Arc::new(AppState {
            oss,
            grants,
            issuer,
            auth,
            limits,
            audit,
            trusted_proxies,
            fleet,
            callbacks,
            webhooks,
            config,
        }))
    }

    /// Whether `new` (its STS endpoint already resolved) has the same
    /// `[identity]` and `[sts]` as this state, so its identity and cache can be kept.
    pub fn issuer_unchanged(&self, new: &Config) -> bool {
        self.config.identity == new.identity && self.config.sts == new.sts && self.config.shared == new.shared
    }

    async fn build_issuer(
        config: &Config,
        env: &BTreeMap<String, String>,
        timings: RefreshTimings,
        fleet: Option<Arc<Fleet>>,
    ) -> Result<Issuer, String> {
        let mut client = StsClient::new(&config.sts)?;
        if let Some(f) = &fleet {
            client = client.with_fleet(f.clone());
        }
        let sts = Arc::new(client);
        let deps = identity::Deps {
            sts: sts.clone(),
            clock: Arc::new(SystemClock),
            timings,
        };
        let identity = identity::from_config(&config.identity, env, &deps).map_err(|e| e.to_string())?;
        // Success is logged by the provider ("server identity loaded", with the source).
        if let Err(e) = identity.credentials().await {
            if e.is_fatal_at_startup() {
                return Err(e.to_string());
            }
            warn!(
                source = identity.source_name(), error = %e,
                "starting without a server identity; /readyz stays 503 until a background retry succeeds"
            );
        }
        identity.start();
        let timings = CacheTimings {
            min_remaining: config.sts.min_remaining,
            refresh_before: config.sts.refresh_before,
            refresh_retry_after: Duration::from_secs(10),
            capacity: config.sts.cache_capacity,
            failure_backoff: crate::sts::Backoff::from_config(&config.sts),
        };
        let cache = CredentialCache::with_fleet(sts, Arc::new(SystemClock), timings, fleet);
        Ok(Issuer { identity, cache })
    }
}
