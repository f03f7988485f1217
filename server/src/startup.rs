//! Start-up, listeners and shutdown.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[cfg(feature = "ec2")]
use enipool_ec2::{CallObserver, Ec2Provider};
use enipool_storage::{Ledger, LedgerConfig, LedgerError, OpenError, SystemClock};
use tokio::net::{TcpListener, UnixListener};
use tracing::{info, warn};

use crate::api;
use crate::app::{App, Identity, TaskDied};
use crate::config::{Config, ProviderKind};
use crate::identity;
use crate::metrics::Metrics;
use crate::node;
use crate::pool;
use crate::provider::static_provider::StaticProvider;
use crate::provider::{Provider, ProviderError};
use crate::serve::{self, Listener};

/// Why the daemon could not start (or flush its ledger at shutdown). `main` prints it and exits 1.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{what} {}: {error}", .path.display())]
    Io { what: &'static str, path: PathBuf, error: std::io::Error },
    #[error("binding {flag} {addr}: {error}")]
    Bind { flag: &'static str, addr: String, error: std::io::Error },
    #[error(transparent)]
    LedgerOpen(#[from] OpenError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    TaskDied(#[from] TaskDied),
    #[error(transparent)]
    StaticProvider(ProviderError),
    #[error("initialising the provider: {0}")]
    ProviderInit(ProviderError),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StartupError {
    let path = path.to_path_buf();
    move |error| StartupError::Io { what, path, error }
}

fn bind(flag: &'static str, addr: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> StartupError {
    let addr = addr.to_string();
    move |error| StartupError::Bind { flag, addr, error }
}

/// Runs a blocking ledger call (open, checkpoint) off the runtime's workers.
async fn ledger_task<T: Send + 'static, E: Into<StartupError> + Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, StartupError> {
    let outcome = tokio::task::spawn_blocking(f).await.map_err(|e| TaskDied::new(e.to_string()))?;
    outcome.map_err(Into::into)
}

/// Opens the ledger, initialises the provider, binds every listener, and serves until SIGTERM or
/// SIGINT; then finishes in-flight requests (bounded by the shutdown grace), flushes the ledger
/// and returns.
pub async fn run(config: Config) -> Result<(), StartupError> {
    // Every connection, ledger file and netlink socket is a file descriptor: take all the
    // kernel allows this process (a soft limit of 1,024 is a common default).
    match serve::raise_nofile_limit() {
        Ok((before, after)) if before != after => info!(before, after, "raised the open-files limit"),
        Ok(_) => {}
        Err(e) => warn!(error = %e, "could not raise the open-files limit"),
    }
    std::fs::create_dir_all(&config.data_dir).map_err(io("creating data dir", &config.data_dir))?;
    let ledger_config = LedgerConfig {
        cooldown: config.ip_cooldown,
        checkpoint_interval: Some(config.checkpoint_interval),
        wal_segment_bytes: config.wal_segment_bytes,
        ..LedgerConfig::default()
    };
    let ledger_dir = config.data_dir.join("ledger");
    let ledger = ledger_task(move || Ledger::open(&ledger_dir, ledger_config, Arc::new(SystemClock))).await?;
    let recovery = ledger.recovery();
    info!(path = %ledger.path().display(), replayed = recovery.replayed_records, torn_tail_bytes = recovery.torn_tail_bytes, "ledger open");

    let metrics = Arc::new(Metrics::new());
    let app = match config.provider {
        ProviderKind::Static => {
            let provider: Arc<dyn Provider> = Arc::new(
                StaticProvider::open(&config.data_dir, &config.instance_type, config.vpc_cidr, config.static_latency)
                    .map_err(StartupError::StaticProvider)?,
            );
            let info = provider.init().await.map_err(StartupError::ProviderInit)?;
            App::new(config.clone(), ledger, provider, info, Identity::Provider, metrics)
        }
        #[cfg(not(feature = "ec2"))]
        ProviderKind::Ec2 => unreachable!("the configuration refuses --provider ec2 without the ec2 feature"),
        #[cfg(feature = "ec2")]
        ProviderKind::Ec2 => {
            // EC2 may be unreachable now: start anyway with what the last run learnt (or a
            // placeholder), serve what the ledger holds, and let the sync task initialise it.
            if config.ec2.cluster_name.is_none() {
                warn!(
                    "no --cluster-name: the leaked-ENI sweep is off (this cluster's ENIs cannot be told from another's); ENIs a killed node leaves behind are not deleted"
                );
            }
            let observer: Arc<dyn CallObserver> = metrics.clone();
            let provider: Arc<dyn Provider> = Arc::new(Ec2Provider::new(config.ec2.clone(), Some(observer)));
            let (info, identity) = match identity::load(&config.data_dir) {
                Some(info) => (info, Identity::Cached),
                None => (identity::placeholder(&config), Identity::Placeholder),
            };
            App::new(config.clone(), ledger, provider, info, identity, metrics)
        }
    };
    let app = Arc::new(app);

    // Listeners first, so the operator sees where we are even while we sync.
    let socket = bind_socket(&config)?;
    let tcp = TcpListener::bind(config.listen).await.map_err(bind("--listen", config.listen))?;
    let metrics_tcp = match config.metrics_listen {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(bind("--metrics-listen", addr))?),
        None => None,
    };
    println!("enipoold listening: socket {} (all routes)", config.socket.display());
    println!(
        "enipoold listening: http://{} (read-only, /docs, /metrics)",
        tcp.local_addr().map_err(bind("--listen", config.listen))?
    );
    if let Some(m) = &metrics_tcp {
        println!("enipoold listening: http://{}/metrics", m.local_addr().map_err(bind("--metrics-listen", "?"))?);
    }

    // Serve at once; the sync with the provider runs beside it. Until it has succeeded /readyz
    // answers 503 with the reason, and allocations are served from what the ledger holds.
    app.set_not_ready("starting: rebuilding leases from the node".into());
    let syncing = Arc::clone(&app);
    tokio::spawn(async move {
        start_up(&syncing).await;
    });
    let pool_task = tokio::spawn(pool::run(Arc::clone(&app)));

    let shutdown = {
        let app = Arc::clone(&app);
        async move {
            wait_for_signal().await;
            info!("shutting down: finishing in-flight requests");
            app.begin_shutdown();
            // New connections fail at once (the plugin maps that to "try again later") instead
            // of waiting in the listen backlog until we exit; accepted ones are answered.
            if let Err(e) = std::fs::remove_file(&app.config.socket) {
                warn!(error = %e, "removing the socket at shutdown");
            }
        }
    };
    // Each listener has its own connection cap and timeouts (serve.rs), so TCP clients never
    // take what the unix socket needs.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let limits = config.listener_limits;
    let mut servers = tokio::task::JoinSet::new();
    servers.spawn(serve::serve(Listener::Unix(socket), api::router(Arc::clone(&app)), limits, stopped.clone()));
    servers.spawn(serve::serve(Listener::Tcp(tcp), api::read_only_router(Arc::clone(&app)), limits, stopped.clone()));
    if let Some(l) = metrics_tcp {
        servers.spawn(serve::serve(Listener::Tcp(l), api::metrics_router(Arc::clone(&app)), limits, stopped));
    }
    shutdown.await;
    stop.send_replace(true);
    let finished = async {
        while let Some(r) = servers.join_next().await {
            if let Err(e) = r {
                warn!(error = %e, "a listener's task failed");
            }
        }
    };
    if tokio::time::timeout(config.shutdown_grace, finished).await.is_err() {
        warn!(grace = ?config.shutdown_grace, "in-flight requests did not finish in time");
    }
    pool_task.abort();
    let ledger = app.ledger.clone();
    ledger_task(move || ledger.checkpoint()).await?;
    let _ = std::fs::remove_file(&config.socket);
    info!("ledger flushed; bye");
    Ok(())
}

/// What start-up does beside the listeners, in this order (ARCHITECTURE.md, "Start-up"):
/// 1. rebuild from the node the leases of live pods whose IPs the ledger knows and has not
///    leased; allocations wait for this step, no longer;
/// 2. initialise and list the provider (retried every pool tick), which adopts the IPs the
///    ledger lacks, leased to the node's pods that use them; while the provider is unreachable,
///    one node pass runs without cleanup (leases of gone pods are released, nothing is deleted);
/// 3. the node pass with cleanup;
/// 4. with ENI host setup, the node's sysctls checked (written where the daemon can), then ready.
async fn start_up(app: &Arc<App>) {
    // Fails closed: until the node has been read, a lease's absence proves nothing, so nothing
    // is leased (retried every pool tick, the reason in /readyz).
    loop {
        let rebuilt = async {
            let pods = node::read_attachments(app).await.map_err(|e| format!("reading the node's pods failed: {e}"))?;
            let r = node::rebuild(app, &pods)
                .await
                .map_err(|e| format!("rebuilding leases from the node failed: {e:#}"))?;
            info!(pods = pods.len(), restored = r.restored.len(), ip_not_in_ledger = r.unknown_ip, "node read");
            Ok::<_, String>(())
        };
        match rebuilt.await {
            Ok(()) => break,
            Err(why) => {
                warn!(reason = %why, "start-up cannot go on until the node is read");
                app.set_not_ready(format!("starting: {why}"));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(app.config.pool_tick) => {}
            _ = app.shutdown_signalled() => return,
        }
    }
    app.set_rebuilt();
    app.set_not_ready("starting: syncing the ledger with the provider".into());
    let mut passed_without_cleanup = false;
    loop {
        let synced = async {
            if !app.provider_initialised() {
                let info = app
                    .provider_call("init", app.provider.init())
                    .await
                    .map_err(|e| format!("provider init failed: {e}"))?;
                if let Err(e) = identity::save(&app.config.data_dir, &info) {
                    warn!(error = %e, "could not cache the instance identity");
                }
                app.set_info(info);
            }
            pool::sync_with_provider(app).await.map_err(|e| format!("provider sync failed: {e}"))
        };
        match synced.await {
            Ok(()) => break,
            Err(why) => {
                app.set_not_ready(why);
                if !passed_without_cleanup {
                    passed_without_cleanup = true;
                    log_node_pass(&node::reconcile_with(app, false).await, false);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(app.config.pool_tick) => {}
            _ = app.shutdown_signalled() => return,
        }
    }
    // Before anything is cleaned: the provider is listed and the leases are rebuilt.
    log_node_pass(&node::reconcile(app).await, app.config.node_cleanup);
    tokio::spawn(node::run(Arc::clone(app)));
    // Pods get no traffic on a node that does not forward: not ready (so no conflist) until the
    // node's sysctls are right, which the DaemonSet's init container sees to (node::eni_setup).
    loop {
        match pool::prepare_node(app).await {
            Ok(()) => break,
            Err(why) => {
                warn!(reason = %why, "start-up waits for the node to be prepared");
                app.set_not_ready(why);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(app.config.pool_tick) => {}
            _ = app.shutdown_signalled() => return,
        }
    }
    app.set_ready();
    app.set_started();
    crate::node::cni_conf::install_when_ready(app);
    app.pool.wake();
}

fn log_node_pass(report: &node::NodeReport, cleanup: bool) {
    info!(
        released = report.released.len(),
        young = report.young,
        veths_removed = report.veths_removed.len(),
        rules_removed = report.rules_removed,
        errors = report.errors.len(),
        cleanup,
        "node reconciled"
    );
}

fn bind_socket(config: &Config) -> Result<UnixListener, StartupError> {
    let path = &config.socket;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    }
    // A socket left by a previous run that died; a live daemon holds the ledger lock, so we
    // would not have got this far if one were running on the same data dir.
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io("removing stale socket", path)(e));
        }
        _ => {}
    }
    let listener = UnixListener::bind(path).map_err(bind("--socket", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io("setting mode 0660 on", path))?;
    Ok(listener)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
