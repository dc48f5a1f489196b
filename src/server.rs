//! Runs the HTTP server (the live application and the admin one) until
//! SIGTERM or Ctrl-C, letting in-flight requests finish.

use std::sync::Arc;

use tokio::net::TcpListener;
use tracing::info;

use crate::connections::{ConnectionLimits, Connections};

/// Serves the live (reloadable) application on `listener` and, when
/// `[admin] listen` is configured, the admin application (`/metrics`,
/// `POST /admin/reload`) on `admin`; reloads the config on SIGHUP; runs until
/// a shutdown signal, letting in-flight requests finish. Both listeners share
/// one connection budget (`server.max_connections`).
pub async fn run_live(
    live: Arc<crate::reload::Live>,
    listener: TcpListener,
    admin: Option<TcpListener>,
) -> std::io::Result<()> {
    // Before the "listening" line: a SIGHUP sent after it must never kill the process.
    crate::reload::spawn_sighup(live.clone())?;
    crate::prom::spawn_upkeep();
    let state = live.state();
    // Connection settings are read once: a reload that changes them asks for a restart.
    let connections = Connections::new(ConnectionLimits::from_config(&state.config.server));
    if let Some(a) = &admin {
        let addr = a.local_addr()?;
        info!(admin_listen = %addr, "ossvend admin listening on http://{addr} (GET /metrics, POST /admin/reload)");
    }
    let addr = listener.local_addr()?;
    info!(
        listen = %addr,
        grants = ?state.grants.names(),
        default_grant = state.config.server.default_grant.as_deref().unwrap_or("-"),
        sts_endpoint = %state.config.sts.endpoint(),
        identity_source = state.issuer.identity.source_name(),
        "ossvend listening on http://{addr}"
    );
    drop(state);
    let main = serve(live.service(), listener, &connections);
    match admin {
        Some(a) => {
            tokio::try_join!(main, serve(crate::routes::admin_app(live), a, &connections))?;
        }
        None => main.await?,
    }
    info!("ossvend stopped");
    Ok(())
}

/// Serves `service` on `listener` within `connections`' limits, with connect
/// info (the rate limits and the audit trail need the client's address),
/// until a shutdown signal, letting in-flight requests finish.
pub async fn serve<S>(
    service: S,
    listener: TcpListener,
    connections: &Arc<Connections>,
) -> std::io::Result<()>
where
    S: tower::Service<
            axum::extract::Request,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    connections.serve(listener, service, shutdown_signal()).await
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
