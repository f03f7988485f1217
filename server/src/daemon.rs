//! Start-up, listeners and shutdown.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use anyhow::Context;
use enipool_ec2::{CallObserver, CallPolicy, Ec2Config, Ec2Provider};
use enipool_storage::{Ledger, LedgerConfig, SystemClock};
use tokio::net::{TcpListener, UnixListener};
use tracing::{info, warn};

use crate::api;
use crate::app::App;
use crate::config::{Config, ProviderKind};
use crate::identity;
use crate::metrics::Metrics;
use crate::node;
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
        wal_segment_bytes: config.wal_segment_bytes,
        ..LedgerConfig::default()
    };
    let ledger_dir = config.data_dir.join("ledger");
    let ledger =
        tokio::task::spawn_blocking(move || Ledger::open(&ledger_dir, ledger_config, Arc::new(SystemClock))).await??;
    let recovery = ledger.recovery();
    info!(path = %ledger.path().display(), replayed = recovery.replayed_records, torn_tail_bytes = recovery.torn_tail_bytes, "ledger open");

    let metrics = Arc::new(Metrics::new());
    let app = match config.provider {
        ProviderKind::Static => {
            let provider: Arc<dyn Provider> = Arc::new(StaticProvider::open(
                &config.data_dir,
                &config.instance_type,
                config.vpc_cidr,
                config.static_latency,
            )?);
            let info = provider.init().await.context("initialising the provider")?;
            App::new(config.clone(), ledger, provider, info, true, metrics)
        }
        ProviderKind::Ec2 => {
            // EC2 may be unreachable now: start anyway with what the last run learnt (or a
            // placeholder), serve what the ledger holds, and let the sync task initialise it.
            let observer: Arc<dyn CallObserver> = metrics.clone();
            let provider: Arc<dyn Provider> = Arc::new(Ec2Provider::new(ec2_config(&config), Some(observer)));
            let info = identity::load(&config.data_dir).unwrap_or_else(|| identity::placeholder(&config));
            App::new(config.clone(), ledger, provider, info, false, metrics)
        }
    };
    let app = Arc::new(app);

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
        // Before anything is handed out: release what dead pods held, remove what they left.
        let report = node::reconcile(&syncing).await;
        info!(
            released = report.released.len(),
            young = report.young,
            veths_removed = report.veths_removed.len(),
            rules_removed = report.rules_removed,
            errors = report.errors.len(),
            "node reconciled"
        );
        tokio::spawn(node::run(Arc::clone(&syncing)));
        loop {
            if !syncing.provider_initialised() {
                match syncing.provider_call("init", syncing.provider.init()).await {
                    Ok(info) => {
                        if let Err(e) = identity::save(&syncing.config.data_dir, &info) {
                            warn!(error = %e, "could not cache the instance identity");
                        }
                        syncing.set_info(info);
                    }
                    Err(e) => {
                        syncing.set_not_ready(format!("provider init failed: {e}"));
                        tokio::select! {
                            _ = tokio::time::sleep(syncing.config.pool_tick) => {}
                            _ = syncing.shutdown.notified() => return,
                        }
                        continue;
                    }
                }
            }
            match pool::sync_with_provider(&syncing).await {
                Ok(()) => {
                    syncing.set_ready();
                    crate::cni_conf::install_when_ready(&syncing);
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
            // New connections fail at once (the plugin maps that to "try again later") instead
            // of waiting in the listen backlog until we exit; accepted ones are answered.
            if let Err(e) = std::fs::remove_file(&app.config.socket) {
                warn!(error = %e, "removing the socket at shutdown");
            }
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

/// The EC2 provider's configuration from the daemon's.
pub fn ec2_config(config: &Config) -> Ec2Config {
    let e = &config.ec2;
    Ec2Config {
        instance_id: e.instance_id.clone(),
        instance_type: e.instance_type.clone(),
        imds_endpoint: e.imds_endpoint.clone(),
        ec2_endpoint: e.ec2_endpoint.clone(),
        cluster_name: e.cluster_name.clone(),
        calls: CallPolicy {
            max_attempts: e.max_attempts,
            backoff_base: e.backoff_base,
            backoff_max: e.backoff_max,
            timeout: e.timeout,
            rate_per_second: e.rate_limit,
            burst: e.burst,
        },
        detach_wait: e.detach_wait,
        leaked_eni_age: config.leaked_eni_age,
        consistency_window: e.consistency_window,
    }
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
