//! Wiring: builds the application state from a validated config and runs the
//! HTTP server until SIGTERM or Ctrl-C, letting in-flight requests finish.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::audit::Audit;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::grants::{Grants, Issuer};
use crate::identity::{self, RefreshTimings};
use crate::ratelimit::Limits;
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
}

impl AppState {
    /// `env` is the process environment (identity variables are read from it).
    ///
    /// Configuration problems of the identity (a missing variable, secret file
    /// or profile) stop start-up. A temporary identity whose first fetch fails
    /// remotely (metadata service or STS down) does not: the server starts
    /// unready and keeps retrying in the background.
    pub async fn build(mut config: Config, env: &BTreeMap<String, String>) -> Result<Arc<Self>, String> {
        // Region/VPC defaults from the environment are resolved once, here.
        config.sts.endpoint = Some(
            config
                .sts
                .resolve_endpoint(env)
                .map_err(|e| format!("sts: {e}"))?,
        );
        let sts = Arc::new(StsClient::new(&config.sts)?);
        let deps = identity::Deps {
            sts: sts.clone(),
            clock: Arc::new(SystemClock),
            timings: RefreshTimings::default(),
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
        };
        let cache = CredentialCache::new(sts, Arc::new(SystemClock), timings);
        let grants = Grants::from_config(&config)?;
        let auth = Authenticator::from_config(&config, env)?;
        let limits = Limits::new(grants.iter());
        let audit = Audit::open(&config.audit)?;
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
        Ok(Arc::new(AppState {
            grants,
            issuer: Issuer { identity, cache },
            auth,
            limits,
            audit,
            trusted_proxies,
            config,
        }))
    }
}

/// Serves `state` on `listener` until a shutdown signal.
pub async fn run(state: Arc<AppState>, listener: TcpListener) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    info!(
        listen = %addr,
        grants = ?state.grants.names(),
        default_grant = state.config.server.default_grant.as_deref().unwrap_or("-"),
        sts_endpoint = %state.config.sts.endpoint(),
        identity_source = state.issuer.identity.source_name(),
        "ossvend listening on http://{addr}"
    );
    serve(crate::routes::app(state), listener).await?;
    info!("ossvend stopped");
    Ok(())
}

/// Serves `router` on `listener` with connect info (the rate limits and the
/// audit trail need the client's address) until a shutdown signal, letting
/// in-flight requests finish.
pub async fn serve(router: axum::Router, listener: TcpListener) -> std::io::Result<()> {
    let app = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
}

/// Ctrl-C or SIGTERM. Every caller gets its own notification, so several
/// listeners can each drain on the same signal.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => info!("Ctrl-C received; finishing in-flight requests"),
        _ = term => info!("SIGTERM received; finishing in-flight requests"),
    }
}
