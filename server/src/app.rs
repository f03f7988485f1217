//! What every part of the daemon shares: configuration, the ledger, the provider, metrics, and
//! the signals between the API and the pool manager.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use enipool_api::ProviderEvent;
use enipool_storage::{Clock, Ledger, SystemClock};
use tokio::sync::{Notify, watch};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::provider::{InstanceInfo, Provider, ProviderError};

#[derive(Debug, Default)]
pub struct Events {
    pub last_action: Option<ProviderEvent>,
    pub last_error: Option<ProviderEvent>,
    /// The last `RECENT_EVENTS` actions and errors, oldest first (the status page shows them).
    pub recent: std::collections::VecDeque<(bool, ProviderEvent)>,
}

pub const RECENT_EVENTS: usize = 20;

impl Events {
    /// Remembers an action (`failed` false) or a failed call.
    fn remember(&mut self, failed: bool, event: ProviderEvent) {
        if self.recent.len() == RECENT_EVENTS {
            self.recent.pop_front();
        }
        self.recent.push_back((failed, event.clone()));
        if failed { self.last_error = Some(event) } else { self.last_action = Some(event) }
    }
}

/// Where the instance identity `App` starts with came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity {
    /// The provider's `init`.
    Provider,
    /// What the last run cached (`identity.rs`).
    Cached,
    /// Only what the flags say (`identity::placeholder`).
    Placeholder,
}

/// Growth is paused (the subnet ran out of addresses) until `until`.
#[derive(Clone, Debug)]
pub struct GrowthPause {
    pub until: Instant,
    /// The same instant, Unix milliseconds, for the API.
    pub until_ms: u64,
    pub reason: String,
}

#[derive(Debug)]
pub struct App {
    pub config: Config,
    pub ledger: Ledger,
    pub provider: Arc<dyn Provider>,
    /// Who we are; until the provider's `init` succeeded, what the last run cached (or a
    /// placeholder), see `provider_initialised`.
    info: RwLock<InstanceInfo>,
    provider_initialised: AtomicBool,
    /// `info` came from the provider or from its cache, not from the placeholder.
    identity_real: AtomicBool,
    pub metrics: Arc<Metrics>,
    /// Wakes the pool manager (after allocations, and when one found no free IP).
    pub pool_wake: Notify,
    /// Bumped whenever the pool gains IPs; allocations waiting for growth watch it.
    pub pool_generation: watch::Sender<u64>,
    /// Told once, on SIGTERM.
    pub shutdown: Notify,
    pub events: Mutex<Events>,
    pub exhausted_allocations: AtomicU64,
    growth_pause: Mutex<Option<GrowthPause>>,
    /// Where the ENIs' node side is done, when it is (`--eni-host-setup`).
    pub host: Option<crate::host::HostNet>,
    /// ENI id -> MAC, as the provider reported them.
    pub macs: Mutex<HashMap<String, String>>,
    /// ENIs whose node side is done (and the primary's node-wide settings, under its id).
    pub host_done: Mutex<HashSet<String>>,
    /// `--cni-conf-dir`: where the conflist was installed, or why it was not (yet).
    pub cni_conflist: Mutex<Option<Result<std::path::PathBuf, String>>>,
    ready: AtomicBool,
    /// Start-up has finished; from then on the pool manager's node check owns readiness.
    started: AtomicBool,
    /// Start-up has rebuilt from the node the leases the ledger lacked; allocations wait for it.
    rebuilt: watch::Sender<bool>,
    not_ready_reason: Mutex<Option<String>>,
    shutting_down: AtomicBool,
}

impl App {
    /// `identity`: where `info` came from (unless from the provider's `init`, the sync retries
    /// that).
    pub fn new(
        config: Config,
        ledger: Ledger,
        provider: Arc<dyn Provider>,
        info: InstanceInfo,
        identity: Identity,
        metrics: Arc<Metrics>,
    ) -> App {
        let host = config.eni_host_setup.then(|| crate::host::HostNet { netns: config.host_netns.clone() });
        App {
            config,
            ledger,
            provider,
            info: RwLock::new(info),
            provider_initialised: AtomicBool::new(identity == Identity::Provider),
            identity_real: AtomicBool::new(identity != Identity::Placeholder),
            metrics,
            pool_wake: Notify::new(),
            pool_generation: watch::channel(0).0,
            shutdown: Notify::new(),
            events: Mutex::new(Events::default()),
            exhausted_allocations: AtomicU64::new(0),
            growth_pause: Mutex::new(None),
            host,
            macs: Mutex::new(HashMap::new()),
            host_done: Mutex::new(HashSet::new()),
            cni_conflist: Mutex::new(None),
            ready: AtomicBool::new(false),
            started: AtomicBool::new(false),
            rebuilt: watch::channel(false).0,
            not_ready_reason: Mutex::new(Some("starting".into())),
            shutting_down: AtomicBool::new(false),
        }
    }

    /// Who we are (a copy).
    pub fn info(&self) -> InstanceInfo {
        self.info.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn provider_initialised(&self) -> bool {
        self.provider_initialised.load(Ordering::Acquire)
    }

    /// The provider's `init` succeeded with `info`.
    pub fn set_info(&self, info: InstanceInfo) {
        *self.info.write().unwrap_or_else(|e| e.into_inner()) = info;
        self.identity_real.store(true, Ordering::Release);
        self.provider_initialised.store(true, Ordering::Release);
    }

    /// Whether `info` is the node's (from the provider or its cache), not the placeholder a first
    /// start with the provider unreachable has: its node IP (0.0.0.0) and VPC CIDRs (none) must
    /// never reach the node's SNAT.
    pub fn identity_is_real(&self) -> bool {
        self.identity_real.load(Ordering::Acquire)
    }

    /// Remembers the MACs of ENIs the provider reported.
    pub fn note_macs<'a>(&self, enis: impl IntoIterator<Item = &'a crate::provider::ProviderEni>) {
        let mut macs = crate::lock(&self.macs);
        for e in enis {
            if let Some(m) = &e.mac {
                macs.insert(e.id.clone(), m.clone());
            }
        }
    }

    /// Pauses growth for `for_`, with the reason the API shows.
    pub fn pause_growth(&self, for_: Duration, reason: String) {
        tracing::warn!(pause = ?for_, %reason, "growth paused");
        self.metrics.growth_paused();
        let pause =
            GrowthPause { until: Instant::now() + for_, until_ms: self.clock_now() + for_.as_millis() as u64, reason };
        *crate::lock(&self.growth_pause) = Some(pause);
    }

    /// The pause in force, if any.
    pub fn growth_pause(&self) -> Option<GrowthPause> {
        let mut p = crate::lock(&self.growth_pause);
        if p.as_ref().is_some_and(|p| p.until <= Instant::now()) {
            *p = None;
        }
        p.clone()
    }

    pub fn clock_now(&self) -> u64 {
        SystemClock.now()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Ready, or why not. A ledger that stopped taking writes overrides everything else.
    pub fn readiness(&self) -> (bool, Option<String>) {
        if let Some(why) = self.ledger.health().write_failure {
            return (false, Some(format!("the ledger stopped taking writes: {why}")));
        }
        (self.is_ready(), crate::lock(&self.not_ready_reason).clone())
    }

    /// Start-up is done (`daemon::start_up`): readiness now follows the node's state.
    pub fn set_started(&self) {
        self.started.store(true, Ordering::Release);
    }

    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    pub fn set_ready(&self) {
        *crate::lock(&self.not_ready_reason) = None;
        self.ready.store(true, Ordering::Release);
    }

    pub fn set_rebuilt(&self) {
        self.rebuilt.send_replace(true);
    }

    /// Waits (at most `for_`) until start-up has rebuilt leases from the node; whether it has.
    pub async fn wait_rebuilt(&self, for_: Duration) -> bool {
        let mut rx = self.rebuilt.subscribe();
        matches!(tokio::time::timeout(for_, rx.wait_for(|done| *done)).await, Ok(Ok(_)))
    }

    pub fn set_not_ready(&self, reason: String) {
        *crate::lock(&self.not_ready_reason) = Some(reason);
        self.ready.store(false, Ordering::Release);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.shutdown.notify_waiters();
        self.pool_wake.notify_one();
    }

    pub fn pool_grew(&self) {
        self.pool_generation.send_modify(|g| *g += 1);
    }

    pub fn note_action(&self, action: &str, detail: String) {
        tracing::info!(action, %detail, "provider action");
        let event = ProviderEvent { action: action.into(), at: self.clock_now(), detail };
        crate::lock(&self.events).remember(false, event);
    }

    /// Runs one provider call with metrics, and records its error as the last provider error.
    pub async fn provider_call<T>(
        &self,
        action: &'static str,
        call: impl Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        let started = Instant::now();
        let result = call.await;
        self.metrics.provider_call(action, started.elapsed(), result.is_ok());
        if let Err(e) = &result {
            tracing::warn!(action, error = %e, "provider call failed");
            let event = ProviderEvent { action: action.into(), at: self.clock_now(), detail: e.to_string() };
            crate::lock(&self.events).remember(true, event);
        }
        result
    }

    /// Runs a ledger call (which may wait on an fdatasync) off the async workers.
    pub async fn blocking<T: Send + 'static, E: std::fmt::Display + Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, E> + Send + 'static,
    ) -> anyhow::Result<T> {
        match tokio::task::spawn_blocking(f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(anyhow::anyhow!("{e}")),
            Err(join) => Err(anyhow::anyhow!("ledger task failed: {join}")),
        }
    }
}
