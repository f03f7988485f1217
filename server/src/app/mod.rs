//! What every part of the daemon shares: configuration, the ledger, the provider and metrics
//! (read-only handles), the node's identity, readiness and shutdown, and the pool manager's own
//! state ([`PoolState`]), each behind methods.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use enipool_api::ProviderEvent;
use enipool_storage::{Clock, Ledger, SystemClock};
use tokio::sync::{Notify, watch};

use crate::config::Config;
use crate::lock;
use crate::metrics::Metrics;
use crate::provider::{InstanceInfo, Provider, ProviderError};

mod pool_state;
pub use pool_state::{GrowthPause, PoolState, RECENT_EVENTS};

/// A call run off the async workers ([`App::blocking`]) died before it answered (it panicked).
#[derive(Debug, thiserror::Error)]
#[error("the ledger task failed: {0}")]
pub struct TaskDied(String);

impl TaskDied {
    pub fn new(why: String) -> TaskDied {
        TaskDied(why)
    }
}

/// A ledger call run off the async workers failed: the ledger refused, or the task died.
#[derive(Debug, thiserror::Error)]
pub enum LedgerCallError {
    #[error(transparent)]
    Ledger(#[from] enipool_storage::LedgerError),
    #[error(transparent)]
    TaskDied(#[from] TaskDied),
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

#[derive(Debug)]
pub struct App {
    pub config: Config,
    pub ledger: Ledger,
    pub provider: Arc<dyn Provider>,
    pub metrics: Arc<Metrics>,
    /// The pool manager's own state; the API reads it and wakes the manager through it.
    pub pool: PoolState,
    /// Who we are; until the provider's `init` succeeded, what the last run cached (or a
    /// placeholder), see `provider_initialised`.
    info: RwLock<InstanceInfo>,
    provider_initialised: AtomicBool,
    /// `info` came from the provider or from its cache, not from the placeholder.
    identity_real: AtomicBool,
    /// Told once, on SIGTERM.
    shutdown: Notify,
    shutting_down: AtomicBool,
    /// `--cni-conf-dir`: where the conflist was installed, or why it was not (yet).
    cni_conflist: Mutex<Option<Result<PathBuf, String>>>,
    ready: AtomicBool,
    /// Start-up has finished; from then on the pool manager's node check owns readiness.
    started: AtomicBool,
    /// Start-up has rebuilt from the node the leases the ledger lacked; allocations wait for it.
    rebuilt: watch::Sender<bool>,
    not_ready_reason: Mutex<Option<String>>,
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
        App {
            config,
            ledger,
            provider,
            metrics,
            pool: PoolState::default(),
            info: RwLock::new(info),
            provider_initialised: AtomicBool::new(identity == Identity::Provider),
            identity_real: AtomicBool::new(identity != Identity::Placeholder),
            shutdown: Notify::new(),
            shutting_down: AtomicBool::new(false),
            cni_conflist: Mutex::new(None),
            ready: AtomicBool::new(false),
            started: AtomicBool::new(false),
            rebuilt: watch::channel(false).0,
            not_ready_reason: Mutex::new(Some("starting".into())),
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

    /// Pauses growth for `for_`, with the reason the API shows.
    pub fn pause_growth(&self, for_: Duration, reason: String) {
        tracing::warn!(pause = ?for_, %reason, "growth paused");
        self.metrics.growth_paused();
        self.pool.pause_growth(for_, self.clock_now() + for_.as_millis() as u64, reason);
    }

    /// Prefix mode grows by single IPs for `for_`: EC2 has no free /28 (pods never wait for a
    /// prefix that cannot come).
    pub fn fall_back_from_prefixes(&self, for_: Duration, reason: String) {
        tracing::warn!(pause = ?for_, %reason, "no free prefix in the subnet: growing by single IPs meanwhile");
        self.metrics.prefix_fell_back();
        self.pool.fall_back_from_prefixes(for_, self.clock_now() + for_.as_millis() as u64, reason);
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
        if let Some(why) = self.growth_blocked() {
            return (false, Some(why));
        }
        (self.is_ready(), lock(&self.not_ready_reason).clone())
    }

    /// Custom networking: the subnet pod ENIs go to in this instance's zone (`None` when off, or
    /// the zone is not known yet, or has no `[eni-config.<zone>]` table).
    pub fn custom_subnet(&self) -> Option<String> {
        let zones = self.config.ec2.custom_network.as_ref()?;
        zones.get(self.info().zone.as_deref()?).map(|z| z.subnet.clone())
    }

    /// Custom networking: pods get addresses only from ENIs in the zone's subnet, so the ledger
    /// hands out only theirs: never the primary ENI's, nor those of ENIs elsewhere or not known
    /// yet to be there; with no subnet for the zone, none. Off: every ENI serves.
    pub fn refresh_served_enis(&self) {
        // Off, the ledger's default (every ENI) stands: nothing to take its lock for on every
        // pool step.
        if self.config.ec2.custom_network.is_none() {
            return;
        }
        let subnet = self.custom_subnet();
        let primary = self.info().primary_eni_id;
        let served = self
            .ledger
            .enis()
            .into_iter()
            .filter(|e| e.id != primary && subnet.is_some() && self.pool.subnet(&e.id).map(|(id, _)| id) == subnet)
            .map(|e| e.id)
            .collect();
        self.ledger.set_served_enis(Some(served));
    }

    /// Why the pool may not grow at all, if it may not: custom networking with no
    /// `[eni-config.<zone>]` table for this instance's zone. Shown in /readyz and /v1/pool.
    pub fn growth_blocked(&self) -> Option<String> {
        let zones = self.config.ec2.custom_network.as_ref()?;
        if !self.provider_initialised() {
            return None;
        }
        let Some(zone) = self.info().zone else {
            return Some(
                "custom networking is on but the instance's availability zone is not known: the pool does not grow"
                    .into(),
            );
        };
        (!zones.contains_key(&zone)).then(|| {
            format!(
                "custom networking is on but the config file has no [eni-config.{zone}] table for this instance's zone {zone}: the pool does not grow"
            )
        })
    }

    /// Start-up is done (`daemon::start_up`): readiness now follows the node's state.
    pub fn set_started(&self) {
        self.started.store(true, Ordering::Release);
    }

    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    pub fn set_ready(&self) {
        *lock(&self.not_ready_reason) = None;
        self.ready.store(true, Ordering::Release);
    }

    pub fn set_rebuilt(&self) {
        self.rebuilt.send_replace(true);
    }

    /// Waits (at most `for_`) until start-up has rebuilt leases from the node; whether it has.
    pub async fn wait_rebuilt(&self, for_: Duration) -> bool {
        // Every lease request asks; once rebuilt, without arming a timer.
        if *self.rebuilt.borrow() {
            return true;
        }
        let mut rx = self.rebuilt.subscribe();
        matches!(tokio::time::timeout(for_, rx.wait_for(|done| *done)).await, Ok(Ok(_)))
    }

    pub fn set_not_ready(&self, reason: String) {
        *lock(&self.not_ready_reason) = Some(reason);
        self.ready.store(false, Ordering::Release);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.shutdown.notify_waiters();
        self.pool.wake();
    }

    /// Resolves on SIGTERM (for a waiter registered before it).
    pub async fn shutdown_signalled(&self) {
        self.shutdown.notified().await
    }

    /// Records where the conflist was installed, or why it was not.
    pub fn set_cni_conflist(&self, outcome: Result<PathBuf, String>) {
        *lock(&self.cni_conflist) = Some(outcome);
    }

    /// Where the conflist was installed, or why it was not; None before the first attempt.
    pub fn cni_conflist(&self) -> Option<Result<PathBuf, String>> {
        lock(&self.cni_conflist).clone()
    }

    pub fn note_action(&self, action: &str, detail: String) {
        tracing::info!(action, %detail, "provider action");
        let event = ProviderEvent { action: action.into(), at: self.clock_now(), detail };
        self.pool.remember(false, event);
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
            self.pool.remember(true, event);
        }
        result
    }

    /// Runs a ledger call (which may wait on an fdatasync) off the async workers. The call's
    /// own error type is kept; a call that dies (panics) answers [`TaskDied`].
    pub async fn blocking<T, E>(&self, f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<TaskDied> + Send + 'static,
    {
        match tokio::task::spawn_blocking(f).await {
            Ok(result) => result,
            Err(join) => Err(TaskDied(join.to_string()).into()),
        }
    }

    /// [`App::blocking`] for a ledger call: its error stays a `LedgerError`, beside [`TaskDied`].
    pub async fn ledger_call<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, enipool_storage::LedgerError> + Send + 'static,
    ) -> Result<T, LedgerCallError> {
        self.blocking(move || f().map_err(LedgerCallError::from)).await
    }
}
