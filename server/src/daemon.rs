//! Start-up, listeners and shutdown.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use anyhow::Context;
use enipool_storage::{Ledger, LedgerConfig, SystemClock};
use tokio::net::{TcpListener, UnixListener};
use tracing::{info, warn};

use crate::api;
use crate::app::App;
use crate::config::{Config, ProviderKind};
use crate::pool;
use crate::provider::Provider;
use crate::provider::static_provider::StaticProvider;

/// Opens the ledger, initialises the provider, binds every listener, and serves until SIGTERM or
/// SIGINT; then finishes in-flight requests (bounded by the shutdown grace), flushes the ledger
/// and returns.
pub async fn run(config: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let ledger_config = LedgerConfig {
        cooldown: config.ip_cooldown,
        checkpoint_interval: Some(config.checkpoint_interval),
        ..LedgerConfig::default()
    };
    let ledger_dir = config.data_dir.join("ledger");
    let ledger =
        tokio::task::spawn_blocking(move || Ledger::open(&ledger_dir, ledger_config, Arc::new(SystemClock))).await??;
    let recovery = ledger.recovery();
    info!(path = %ledger.path().display(), replayed = recovery.replayed_records, torn_tail_bytes = recovery.torn_tail_bytes, "ledger open");

    let provider: Arc<dyn Provider> = match config.provider {
        ProviderKind::Static => Arc::new(StaticProvider::open(
            &config.data_dir,
            &config.instance_type,
            config.vpc_cidr,
            config.static_latency,
        )?),
        ProviderKind::Ec2 => anyhow::bail!("--provider ec2 is not built yet; use --provider static"),
    };
    let info = provider.init().await.context("initialising the provider")?;
    let app = Arc::new(App::new(config.clone(), ledger, provider, info));

    // Listeners first, so the operator sees where we are even while we sync.
    let socket = bind_socket(&config)?;
    let tcp = TcpListener::bind(config.listen).await.with_context(|| format!("binding --listen {}", config.listen))?;
    let metrics_tcp = match config.metrics_listen {
        Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| format!("binding --metrics-listen {addr}"))?),
        None => None,
    };
    println!("enipoold listening: socket {} (all routes)", config.socket.display());
    println!("enipoold listening: http://{} (read-only, /docs, /metrics)", tcp.local_addr()?);
    if let Some(m) = &metrics_tcp {
        println!("enipoold listening: http://{}/metrics", m.local_addr()?);
    }

    // Serve at once; the sync with the provider runs beside it. Until it has succeeded /readyz
    // answers 503 with the reason, and allocations are served from what the ledger holds.
    app.set_not_ready("starting: syncing the ledger with the provider".into());
    let syncing = Arc::clone(&app);
    tokio::spawn(async move {
        loop {
            match pool::sync_with_provider(&syncing).await {
                Ok(()) => {
                    syncing.set_ready();
                    syncing.pool_wake.notify_one();
                    return;
                }
                Err(e) => syncing.set_not_ready(format!("provider sync failed: {e}")),
            }
            tokio::select! {
                _ = tokio::time::sleep(syncing.config.pool_tick) => {}
                _ = syncing.shutdown.notified() => return,
            }
        }
    });
    let pool_task = tokio::spawn(pool::run(Arc::clone(&app)));

    let shutdown = {
        let app = Arc::clone(&app);
        async move {
            wait_for_signal().await;
            info!("shutting down: finishing in-flight requests");
            app.begin_shutdown();
        }
    };
    let stop = Arc::new(tokio::sync::Notify::new());
    let serve_socket = {
        let stop = Arc::clone(&stop);
        axum::serve(socket, api::router(Arc::clone(&app))).with_graceful_shutdown(async move { stop.notified().await })
    };
    let serve_tcp = {
        let stop = Arc::clone(&stop);
        axum::serve(tcp, api::read_only_router(Arc::clone(&app)))
            .with_graceful_shutdown(async move { stop.notified().await })
    };
    let serve_metrics = {
        let stop = Arc::clone(&stop);
        let app = Arc::clone(&app);
        async move {
            match metrics_tcp {
                Some(l) => {
                    axum::serve(l, api::metrics_router(app))
                        .with_graceful_shutdown(async move { stop.notified().await })
                        .await
                }
                None => Ok(()),
            }
        }
    };
    let servers = async { tokio::try_join!(serve_socket.into_future(), serve_tcp.into_future(), serve_metrics) };
    tokio::pin!(servers);
    tokio::select! {
        r = &mut servers => { r?; }
        () = shutdown => {
            stop.notify_waiters();
            if tokio::time::timeout(config.shutdown_grace, &mut servers).await.is_err() {
                warn!(grace = ?config.shutdown_grace, "in-flight requests did not finish in time");
            }
        }
    }
    pool_task.abort();
    let ledger = app.ledger.clone();
    tokio::task::spawn_blocking(move || ledger.checkpoint()).await??;
    let _ = std::fs::remove_file(&config.socket);
    info!("ledger flushed; bye");
    Ok(())
}

fn bind_socket(config: &Config) -> anyhow::Result<UnixListener> {
    let path = &config.socket;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // A socket left by a previous run that died; a live daemon holds the ledger lock, so we
    // would not have got this far if one were running on the same data dir.
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing stale socket {}", path.display()));
        }
        _ => {}
    }
    let listener = UnixListener::bind(path).with_context(|| format!("binding --socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting mode 0660 on {}", path.display()))?;
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
