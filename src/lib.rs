//! portal-bot: `/portal <enduser>` in Slack and Discord mints a Planhat portal login link and
//! shows it only to the asker.
//!
//! The crate is a platform-neutral [`core`] (config, Planhat client, the portal-link use case,
//! access policy, rate limit, audit) and thin [`adapters`] around it (HTTP server, Slack,
//! Discord, terminal). This file assembles the running app from a [`Config`]; `main.rs` only
//! parses the command line. See ARCHITECTURE.md for the map and the invariants.

pub mod adapters;
pub mod cli;
pub mod core;
pub mod readiness;
pub mod sandbox;
pub mod shutdown;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::core::access::AccessPolicy;
use crate::core::audit::Audit;
use crate::core::click::Clicks;
pub use crate::core::config::Config;
use crate::core::metrics::Metrics;
use crate::core::onetime::GoIds;
use crate::core::planhat::Planhat;
use crate::core::portal::PortalService;
use crate::core::seal::Sealer;
use crate::core::state::SharedState;
use crate::readiness::Readiness;
use crate::shutdown::{Shutdown, ShutdownTrigger};

/// Why the app could not start. One line for the operator.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] crate::core::config::ConfigError),
    #[error("{0}")]
    Audit(#[from] crate::core::audit::AuditError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Planhat(#[from] crate::core::planhat::PlanhatError),
    #[error("Slack: {0}")]
    Slack(String),
    #[error("Discord: {0}")]
    Discord(String),
    #[error("{0}")]
    State(#[from] crate::adapters::state::RedisConfigError),
    #[error("{0}")]
    SignIn(String),
}

/// Everything a request handler needs, built once from the config and shared.
pub struct App {
    pub config: Config,
    pub portal: Arc<PortalService>,
    /// `/go/` clicks: the browser hop that finishes a request.
    pub clicks: Arc<Clicks>,
    /// `[approvals]`: asking the owner, break-glass.
    pub approvals: Option<Arc<crate::core::approvals::Approvals>>,
    /// `[planhat.notes]`: the Notes queue's outlet, taken by the writer task at start.
    notes_outlet: std::sync::Mutex<Option<crate::core::notes::Outlet>>,
    /// Seals what the adapters keep in shared state (Discord's scheduled edits).
    pub sealer: Arc<Sealer>,
    pub metrics: Arc<Metrics>,
    pub audit: Arc<Audit>,
    /// Rate limits, `/go/` ids, delivery claims, scheduled edits: in memory or on Redis.
    pub state: Arc<dyn SharedState>,
    /// What `/readyz` reports.
    pub readiness: Readiness,
    /// Work that outlives its request (late deliveries); shutdown waits for it.
    pub tasks: TaskTracker,
    shutdown: ShutdownTrigger,
}

impl App {
    /// Builds the core from the config. Makes no network call (a Redis connection is made on
    /// first use); must run inside the tokio runtime.
    pub fn build(config: Config) -> Result<Arc<App>, StartError> {
        let metrics = Arc::new(Metrics::new());
        let planhat = Planhat::new(&config.planhat, metrics.clone())?;
        let audit = Arc::new(Audit::from_config(&config.audit, metrics.clone())?);
        let (shutdown, _) = crate::shutdown::channel();
        let readiness = Readiness::default();
        let state_check = if config.state.redis_url.is_some() {
            readiness.check("redis")
        } else {
            Arc::default()
        };
        let state =
            adapters::state::build(&config, metrics.clone(), state_check, shutdown.subscribe())?;
        let sealer = Arc::new(match config.seal_root() {
            Some(root) => Sealer::new(root.expose().as_bytes()),
            None => Sealer::random(),
        });
        let sign_in = adapters::signin::build(&config).map_err(StartError::SignIn)?;
        let ids = Arc::new(GoIds::new(
            state.clone(),
            sealer.clone(),
            config.server.go_lifetime,
        ));
        let search = config
            .search
            .as_ref()
            .map(|s| Arc::new(crate::core::search::Search::new(s.max_end_users)));
        // `[planhat.notes]`: the queue's outlet waits here until `start` runs its writer.
        let (notes, notes_outlet) = match config.planhat.notes {
            true => {
                let (notes, outlet) = crate::core::notes::Notes::channel(metrics.clone());
                (Some(notes), Some(outlet))
            }
            false => (None, None),
        };
        let portal = Arc::new(
            PortalService::new(
                planhat,
                AccessPolicy::new(&config.access),
                state.clone(),
                config.limits.per_user_per_minute,
                audit.clone(),
                metrics.clone(),
                config.planhat.link_lifetime,
                config.server.public_url.as_ref(),
                ids.clone(),
                // Signed-in browsers prove who is there (without sign-in, for Slack, its click event).
                sign_in.is_some(),
                crate::core::ownership::MaxAge {
                    ttl: config.access.ownership_ttl,
                    at_click: config.access.ownership_at_click,
                },
            )
            .with_search(search)
            .with_approvals(config.approvals.clone(), sealer.clone())
            .with_notes(notes),
        );
        let approvals = config.approvals.clone().map(|a| {
            Arc::new(crate::core::approvals::Approvals::new(
                portal.clone(),
                a,
                state.clone(),
                sealer.clone(),
                shutdown.subscribe(),
            ))
        });
        let clicks = Arc::new(Clicks::new(
            portal.clone(),
            ids,
            sign_in,
            audit.clone(),
            metrics.clone(),
        ));
        // What holds memory, by name, on `/metrics` (issue 23).
        metrics.register_collector(Box::new(crate::core::held::HeldCollector(vec![
            portal.clone(),
            state.clone(),
        ])));
        Ok(Arc::new(App {
            config,
            portal,
            clicks,
            approvals,
            notes_outlet: std::sync::Mutex::new(notes_outlet),
            sealer,
            metrics,
            audit,
            state,
            readiness,
            tasks: TaskTracker::new(),
            shutdown,
        }))
    }

    /// A receiver for the process shutdown.
    pub fn shutdown(&self) -> Shutdown {
        self.shutdown.subscribe()
    }
}

/// A running server: its addresses, and the handle to stop it.
pub struct Running {
    /// The public listener: webhooks, `/go/`, `/healthz`.
    pub addr: SocketAddr,
    /// The operator's listener: `/metrics`, and the probes `/healthz` and `/readyz`.
    pub metrics_addr: SocketAddr,
    pub app: Arc<App>,
    servers: Vec<tokio::task::JoinHandle<()>>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

/// How long shutdown waits for in-flight requests and late deliveries.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(20);

/// Starts everything the config turns on: the HTTP server, Slack, Discord, housekeeping.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let (listener, addr) = bind(config.server.listen)?;
    let (metrics_listener, metrics_addr) = bind(config.server.metrics_listen)?;
    let app = App::build(config)?;
    if app.config.state.redis_url.is_some() {
        // Know at once whether Redis answers, rather than at the first probe.
        match app.state.ping().await {
            Ok(()) => tracing::info!("shared state on Redis"),
            Err(e) => {
                tracing::warn!(error = %e, "Redis does not answer yet; running on this process's own state until it does")
            }
        }
    }

    let mut background = vec![tokio::spawn(housekeeping(app.clone(), app.shutdown()))];
    if app.config.access.scope == crate::core::config::Scope::Owned {
        background.push(tokio::spawn(refresh_owners(app.clone(), app.shutdown())));
    }
    if app.config.state.redis_url.is_some() {
        background.push(tokio::spawn(share_budget(app.clone(), app.shutdown())));
    }
    let outlet = app
        .notes_outlet
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some(outlet) = outlet {
        background.push(tokio::spawn(crate::core::notes::run(
            outlet,
            app.portal.planhat().clone(),
            app.metrics.clone(),
            app.shutdown(),
        )));
    }
    if app.portal.search().is_some() {
        background.push(tokio::spawn(refresh_search(app.clone(), app.shutdown())));
    }
    // Warm the pool so the first asker after a deploy doesn't pay DNS + TCP + TLS.
    let planhat = app.portal.planhat().clone();
    background.push(tokio::spawn(async move {
        if let Err(e) = planhat.probe().await {
            tracing::warn!(error = %e, "Planhat is not answering at start-up");
        }
    }));

    let mut router = adapters::http::router(app.clone());
    if app.config.server.public_url.is_some() {
        router = router.merge(adapters::go::router(app.clone()));
    }
    if let Some(slack) = adapters::slack::start(&app).await? {
        router = router.merge(slack.router);
        background.extend(slack.tasks);
    }
    if let Some(discord) = adapters::discord::start(&app).await? {
        router = router.merge(discord.router);
        background.extend(discord.tasks);
    }
    let timeout = app.config.server.request_timeout;
    let router = adapters::http::with_limits(router, timeout);
    let metrics_router =
        adapters::http::with_limits(adapters::http::metrics_router(app.clone()), timeout);
    // The metrics listener has its own small connection budget, so probes never wait behind
    // the public cap.
    let limits = adapters::serve::Connections::new(&app.config.server, app.metrics.clone());
    let probe_limits =
        adapters::serve::Connections::probes(&app.config.server, app.metrics.clone());
    let servers = vec![
        tokio::spawn(adapters::serve::serve(
            listener,
            router,
            limits,
            app.shutdown(),
        )),
        tokio::spawn(adapters::serve::serve(
            metrics_listener,
            metrics_router,
            probe_limits,
            app.shutdown(),
        )),
    ];
    tracing::info!(%addr, %metrics_addr, "portal-bot is listening");
    Ok(Running {
        addr,
        metrics_addr,
        app,
        servers,
        background,
    })
}

/// Binds `addr` (see [`listen`]); the address actually bound (port 0 picks one).
fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let listener = listen(addr).map_err(|source| StartError::Listen { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| StartError::Listen { addr, source })?;
    Ok((listener, bound))
}

impl Running {
    /// Graceful stop: no new requests, in-flight ones and late deliveries finish (within
    /// [`SHUTDOWN_DEADLINE`]), background connections close, the audit trail is flushed.
    pub async fn stop(mut self) {
        self.app.shutdown.fire();
        let finish = async {
            for server in self.servers.drain(..) {
                let _ = server.await;
            }
            self.app.tasks.close();
            self.app.tasks.wait().await;
        };
        if tokio::time::timeout(SHUTDOWN_DEADLINE, finish)
            .await
            .is_err()
        {
            tracing::warn!("shutdown deadline reached; some late deliveries were dropped");
        }
        // Background connections (Socket Mode, gateway) close themselves on the signal; give
        // them a moment to do it cleanly before anything left is aborted.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        for task in &mut self.background {
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                tracing::warn!("a background task did not stop in time; aborting it");
            }
        }
        for task in &self.background {
            task.abort();
        }
        self.app.audit.close().await;
        tracing::info!("portal-bot stopped");
    }
}

/// A listening socket with a deep accept queue: when a whole team asks at once, connections
/// wait in the queue instead of having their SYN dropped (which costs the client a 1 s
/// retransmit). The kernel caps it at `net.core.somaxconn`.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(8192)
}

/// `scope = "owned"`: keeps Planhat's user list (owner ids → emails) fresh in the background,
/// so a link's path never waits for it.
async fn refresh_owners(app: Arc<App>, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(app.portal.ownership().refresh_every());
    loop {
        tokio::select! {
            _ = tick.tick() => app.portal.ownership().refresh_users().await,
            _ = shutdown.fired() => return,
        }
    }
}

/// `[search]`: reads the end-user index at start and every `search.refresh`, off the request
/// path. Each replica starts at a random moment of its first minute and refreshes at a
/// randomised interval (±10 %), so replicas sharing a Planhat token never all read at once. A
/// failed read keeps the index it had and is tried again a minute later.
async fn refresh_search(app: Arc<App>, mut shutdown: Shutdown) {
    use rand::RngExt;
    let (Some(search), Some(config)) = (app.portal.search().cloned(), app.config.search.clone())
    else {
        return;
    };
    let owners = app.config.access.scope == crate::core::config::Scope::Owned;
    let mut wait = Duration::from_millis(rand::rng().random_range(0..2_000));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.fired() => return,
        }
        let users = if owners {
            app.portal.ownership().user_emails().await
        } else {
            Vec::new()
        };
        let read =
            crate::core::search::refresh::refresh(&search, app.portal.planhat(), owners, users);
        let outcome = tokio::select! {
            r = read => r,
            _ = shutdown.fired() => return,
        };
        wait = match outcome {
            Ok(r) => {
                tracing::info!(
                    end_users = r.end_users,
                    companies = r.companies,
                    planhat_calls = r.calls,
                    took_ms = r.took.as_millis() as u64,
                    heap_kib = r.heap_bytes / 1024,
                    "search index read"
                );
                if r.end_users >= config.max_end_users {
                    tracing::warn!(
                        max = config.max_end_users,
                        "the search index is full: end users beyond search.max_end_users are not searchable"
                    );
                }
                if config.refresh.is_zero() {
                    return;
                }
                let jitter = config.refresh.as_millis() as u64 / 10;
                config.refresh - Duration::from_millis(jitter)
                    + Duration::from_millis(rand::rng().random_range(0..=2 * jitter))
            }
            Err(e) => {
                tracing::warn!(error = %e, "the search index could not be read; trying again in a minute (ids and emails work meanwhile)");
                Duration::from_secs(60)
            }
        };
    }
}

/// With Redis: once a second, this replica's Planhat calls go into the cluster's count and the
/// cluster's minute comes back, so every replica's optional calls (name lookups, the search
/// index) wait for the same budget.
async fn share_budget(app: Arc<App>, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => app.portal.planhat().share_budget(app.state.as_ref()).await,
            _ = shutdown.fired() => return,
        }
    }
}

/// Periodic clean-up so nothing grows without bound.
async fn housekeeping(app: Arc<App>, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = tick.tick() => app.portal.sweep(),
            _ = shutdown.fired() => return,
        }
    }
}
