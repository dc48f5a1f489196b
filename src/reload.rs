//! Hot reload: SIGHUP or `POST /admin/reload` re-reads the config file the
//! server was started with (same `OSSVEND_*` overrides), validates it, and
//! swaps it in atomically.
//!
//! The running application (its [`AppState`] and the router built from it)
//! sits behind a lock that is held only to clone or replace it: every request
//! takes the current router when it arrives and finishes on it, so in-flight
//! requests complete on the old config while new ones see the new config. The
//! server identity and the credential cache are kept when `[identity]` and
//! `[sts]` are unchanged (see [`AppState::build_reusing`]). A config that does
//! not load, validate or build is refused as a whole; the running one stays.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::Request;
use axum::response::Response;
use serde::Serialize;
use tower::ServiceExt as _;
use tracing::{error, info, warn};

use crate::config::{self, Config};
use crate::state::AppState;

/// The application currently served, and how to rebuild it.
pub struct Live {
    current: RwLock<Current>,
    /// Builds the router for a state; handed in, so this module need not know the routes.
    app: fn(Arc<AppState>) -> Router,
    path: PathBuf,
    env: BTreeMap<String, String>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
}

struct Current {
    state: Arc<AppState>,
    router: Router,
}

/// What a successful reload changed.
#[derive(Debug, Clone, Serialize)]
pub struct Changes {
    pub grants_added: Vec<String>,
    pub grants_removed: Vec<String>,
    pub grants_changed: Vec<String>,
    /// Other top-level sections whose settings changed.
    pub sections_changed: Vec<&'static str>,
    /// `kept`: `[identity]` and `[sts]` unchanged, identity and cache reused;
    /// `rebuilt` otherwise.
    pub identity: &'static str,
    /// Settings that changed but only take effect after a restart.
    pub restart_needed: Vec<&'static str>,
}

impl Live {
    /// `path` and `env`: the file and environment the server was started with.
    /// `app` builds the router served for a state (`routes::app`).
    pub fn new(
        state: Arc<AppState>,
        app: fn(Arc<AppState>) -> Router,
        path: PathBuf,
        env: BTreeMap<String, String>,
    ) -> Arc<Live> {
        let router = app(state.clone());
        Arc::new(Live {
            current: RwLock::new(Current { state, router }),
            app,
            path,
            env,
            reloading: tokio::sync::Mutex::new(()),
        })
    }

    /// The state new requests are served with.
    pub fn state(&self) -> Arc<AppState> {
        self.read().state.clone()
    }

    fn router(&self) -> Router {
        self.read().router.clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(|e| e.into_inner())
    }

    /// A service that hands every request to the router current when it arrives.
    pub fn service(
        self: &Arc<Self>,
    ) -> impl tower::Service<
        Request,
        Response = Response,
        Error = Infallible,
        Future = impl Future<Output = Result<Response, Infallible>> + Send + 'static,
    > + Clone
    + Send
    + 'static {
        let live = self.clone();
        tower::service_fn(move |req: Request| {
            let router = live.router();
            async move { router.oneshot(req).await }
        })
    }

    /// Re-reads, validates and swaps in the config file. `trigger` names the
    /// cause in the logs (`SIGHUP`, `admin`). On failure nothing changes and
    /// every problem is returned (and logged on one line).
    pub async fn reload(&self, trigger: &'static str) -> Result<Changes, Vec<String>> {
        let _one_at_a_time = self.reloading.lock().await;
        let result = self.try_reload().await;
        crate::prom::config_reload(result.is_ok());
        match &result {
            Ok(c) => {
                for setting in &c.restart_needed {
                    warn!(
                        trigger,
                        setting, "{setting} changed; it takes effect only after a restart"
                    );
                }
                info!(
                    trigger,
                    config = %self.path.display(),
                    grants_added = ?c.grants_added,
                    grants_removed = ?c.grants_removed,
                    grants_changed = ?c.grants_changed,
                    sections_changed = ?c.sections_changed,
                    identity = c.identity,
                    "config reloaded"
                );
            }
            Err(problems) => error!(
                trigger,
                config = %self.path.display(),
                problems = %problems.join("; "),
                "config reload failed ({} problem(s)); keeping the running config",
                problems.len()
            ),
        }
        result
    }

    async fn try_reload(&self) -> Result<Changes, Vec<String>> {
        let new = config::load(&self.path, &self.env).map_err(|e| vec![e.to_string()])?;
        let problems = crate::check::config(&new, &self.env);
        if !problems.is_empty() {
            return Err(problems.iter().map(ToString::to_string).collect());
        }
        let old = self.state();
        let state = AppState::build_reusing(new, &self.env, Some(&old))
            .await
            .map_err(|e| vec![e])?;
        let changes = diff(&old, &state);
        let router = (self.app)(state.clone());
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Current { state, router };
        Ok(changes)
    }
}

fn diff(old: &AppState, new: &AppState) -> Changes {
    let by_name = |c: &Config| -> BTreeMap<String, String> {
        c.grants
            .iter()
            .map(|g| (g.name.clone(), format!("{g:?}")))
            .collect()
    };
    let (before, after) = (by_name(&old.config), by_name(&new.config));
    let grants_added = after
        .keys()
        .filter(|k| !before.contains_key(*k))
        .cloned()
        .collect();
    let grants_removed = before
        .keys()
        .filter(|k| !after.contains_key(*k))
        .cloned()
        .collect();
    let grants_changed = after
        .iter()
        .filter(|(k, v)| before.get(*k).is_some_and(|b| b != *v))
        .map(|(k, _)| k.clone())
        .collect();
    let (o, n) = (&old.config, &new.config);
    let same = |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") == format!("{b:?}");
    let mut sections_changed = Vec::new();
    for (name, unchanged) in [
        ("server", same(&o.server, &n.server)),
        ("identity", same(&o.identity, &n.identity)),
        ("sts", same(&o.sts, &n.sts)),
        ("auth", same(&o.auth, &n.auth)),
        ("cors", same(&o.cors, &n.cors)),
        ("rate_limit", same(&o.rate_limit, &n.rate_limit)),
        ("audit", same(&o.audit, &n.audit)),
        ("admin", same(&o.admin, &n.admin)),
        ("webhooks", same(&o.webhooks, &n.webhooks)),
    ] {
        if !unchanged {
            sections_changed.push(name);
        }
    }
    let mut restart_needed = Vec::new();
    if o.server.listen != n.server.listen {
        restart_needed.push("server.listen");
    }
    if o.server.log_format != n.server.log_format {
        restart_needed.push("server.log_format");
    }
    // Read once by the accept loop (src/connections.rs).
    if o.server.header_read_timeout != n.server.header_read_timeout {
        restart_needed.push("server.header_read_timeout");
    }
    if o.server.idle_timeout != n.server.idle_timeout {
        restart_needed.push("server.idle_timeout");
    }
    if o.server.max_connections != n.server.max_connections {
        restart_needed.push("server.max_connections");
    }
    if o.admin.listen != n.admin.listen {
        restart_needed.push("admin.listen");
    }
    let kept = Arc::ptr_eq(&old.issuer.identity, &new.issuer.identity);
    Changes {
        grants_added,
        grants_removed,
        grants_changed,
        sections_changed,
        identity: if kept { "kept" } else { "rebuilt" },
        restart_needed,
    }
}

/// Reloads on every SIGHUP. The handler is installed before this returns, so
/// a SIGHUP sent once the server logged that it listens never kills it.
#[cfg(unix)]
pub fn spawn_sighup(live: Arc<Live>) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            info!("SIGHUP received; reloading the config");
            let _ = live.reload("SIGHUP").await;
        }
    });
    Ok(())
}

#[cfg(not(unix))]
pub fn spawn_sighup(_live: Arc<Live>) -> std::io::Result<()> {
    Ok(())
}
