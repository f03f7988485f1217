//! The pool manager's own state, behind methods: the provider events it recorded, the growth
//! pause, the ENIs' MACs, which ENIs' node side is done, and the signals between the API and
//! the manager (wake-ups, and a generation counter allocations waiting for growth watch).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use enipool_api::ProviderEvent;
use tokio::sync::{Notify, watch};

use crate::lock;
use crate::provider::ProviderEni;

/// How many provider actions and errors the status page shows.
pub const RECENT_EVENTS: usize = 20;

#[derive(Debug, Default)]
struct Events {
    last_action: Option<ProviderEvent>,
    last_error: Option<ProviderEvent>,
    /// The last `RECENT_EVENTS` actions and errors, oldest first.
    recent: VecDeque<(bool, ProviderEvent)>,
}

/// Growth is paused (the subnet ran out of addresses) until `until`.
#[derive(Clone, Debug)]
pub struct GrowthPause {
    pub until: Instant,
    /// The same instant, Unix milliseconds, for the API.
    pub until_ms: u64,
    pub reason: String,
}

/// An ENI whose subnet refused growth.
#[derive(Debug)]
struct Refusal {
    at: Instant,
    /// No free /28 there: single IPs may still come.
    prefixes_only: bool,
    reason: String,
}

#[derive(Debug)]
pub struct PoolState {
    events: Mutex<Events>,
    exhausted_allocations: AtomicU64,
    growth_pause: Mutex<Option<GrowthPause>>,
    /// Prefix mode growing by single IPs for a while: EC2 had no free /28.
    prefix_fallback: Mutex<Option<GrowthPause>>,
    /// The last prefix growth: when, and how many prefixes it asked for.
    last_prefix_growth: Mutex<Option<(Instant, u32)>>,
    /// ENIs whose subnet refused growth, and when: passed over for a while, as the provider
    /// passes over a refusing subnet for new ENIs.
    refused_enis: Mutex<HashMap<String, Refusal>>,
    /// ENI id -> MAC, as the provider reported them.
    macs: Mutex<HashMap<String, String>>,
    /// ENI id -> (subnet id, zone).
    subnets: Mutex<HashMap<String, (String, Option<String>)>>,
    /// ENIs whose node side is done.
    host_done: Mutex<HashSet<String>>,
    /// Wakes the manager (after allocations, and when one found no free IP).
    wake: Notify,
    /// Bumped whenever the pool gains IPs; allocations waiting for growth watch it.
    generation: watch::Sender<u64>,
}

impl Default for PoolState {
    fn default() -> PoolState {
        PoolState {
            events: Mutex::default(),
            exhausted_allocations: AtomicU64::new(0),
            growth_pause: Mutex::default(),
            prefix_fallback: Mutex::default(),
            last_prefix_growth: Mutex::default(),
            refused_enis: Mutex::default(),
            macs: Mutex::default(),
            subnets: Mutex::default(),
            host_done: Mutex::default(),
            wake: Notify::new(),
            generation: watch::channel(0).0,
        }
    }
}

impl PoolState {
    /// Remembers an action (`failed` false) or a failed call.
    pub fn remember(&self, failed: bool, event: ProviderEvent) {
        let mut events = lock(&self.events);
        if events.recent.len() == RECENT_EVENTS {
            events.recent.pop_front();
        }
        events.recent.push_back((failed, event.clone()));
        if failed { events.last_error = Some(event) } else { events.last_action = Some(event) }
    }

    pub fn last_action(&self) -> Option<ProviderEvent> {
        lock(&self.events).last_action.clone()
    }

    pub fn last_error(&self) -> Option<ProviderEvent> {
        lock(&self.events).last_error.clone()
    }

    /// The recent actions and errors, oldest first, each with whether it failed.
    pub fn recent_events(&self) -> Vec<(bool, ProviderEvent)> {
        lock(&self.events).recent.iter().cloned().collect()
    }

    /// An allocation found no free IP before its deadline.
    pub fn note_exhausted(&self) {
        self.exhausted_allocations.fetch_add(1, Ordering::Relaxed);
    }

    pub fn exhausted_allocations(&self) -> u64 {
        self.exhausted_allocations.load(Ordering::Relaxed)
    }

    /// Pauses growth until `until_ms` (`for_` from now), with the reason the API shows.
    pub fn pause_growth(&self, for_: Duration, until_ms: u64, reason: String) {
        *lock(&self.growth_pause) = Some(GrowthPause { until: Instant::now() + for_, until_ms, reason });
    }

    pub fn fall_back_from_prefixes(&self, for_: Duration, until_ms: u64, reason: String) {
        *lock(&self.prefix_fallback) = Some(GrowthPause { until: Instant::now() + for_, until_ms, reason });
    }

    /// Prefixes asked for by the last growth, if it was less than `window` ago.
    pub fn recent_prefix_growth(&self, window: Duration) -> Option<u32> {
        lock(&self.last_prefix_growth).and_then(|(at, n)| (at.elapsed() < window).then_some(n))
    }

    /// ENIs whose subnet refused growth of this kind (`prefixes`, or single IPs) recently, with
    /// EC2's reason: an exhausted subnet within `period`, one without a free /28 (prefixes
    /// only) within `prefix_period`.
    pub fn refused_enis(&self, prefixes: bool, period: Duration, prefix_period: Duration) -> Vec<(String, String)> {
        let mut refused = lock(&self.refused_enis);
        refused.retain(|_, r| r.at.elapsed() < if r.prefixes_only { prefix_period } else { period });
        refused
            .iter()
            .filter(|(_, r)| prefixes || !r.prefixes_only)
            .map(|(id, r)| (id.clone(), r.reason.clone()))
            .collect()
    }

    pub fn note_refused_eni(&self, eni_id: &str, prefixes_only: bool, reason: String) {
        lock(&self.refused_enis).insert(eni_id.to_string(), Refusal { at: Instant::now(), prefixes_only, reason });
    }

    pub fn note_prefix_growth(&self, asked: u32) {
        *lock(&self.last_prefix_growth) = Some((Instant::now(), asked));
    }

    /// The prefix fallback in force, if any.
    pub fn prefix_fallback(&self) -> Option<GrowthPause> {
        let mut p = lock(&self.prefix_fallback);
        if p.as_ref().is_some_and(|p| p.until <= Instant::now()) {
            *p = None;
        }
        p.clone()
    }

    /// The pause in force, if any.
    pub fn growth_pause(&self) -> Option<GrowthPause> {
        let mut p = lock(&self.growth_pause);
        if p.as_ref().is_some_and(|p| p.until <= Instant::now()) {
            *p = None;
        }
        p.clone()
    }

    /// Remembers the MACs of ENIs the provider reported.
    /// Notes what the provider says of ENIs beside the ledger's record: MACs (the node side
    /// finds interfaces by them) and subnet ids and zones (`/v1/enis` shows them).
    pub fn note_enis<'a>(&self, enis: impl IntoIterator<Item = &'a ProviderEni>) {
        let mut macs = lock(&self.macs);
        let mut subnets = lock(&self.subnets);
        for e in enis {
            if let Some(m) = &e.mac {
                macs.insert(e.id.clone(), m.clone());
            }
            if let Some(id) = &e.subnet_id {
                subnets.insert(e.id.clone(), (id.clone(), e.zone.clone()));
            }
        }
    }

    /// An ENI's subnet id and zone, where the provider said.
    pub fn subnet(&self, eni_id: &str) -> Option<(String, Option<String>)> {
        lock(&self.subnets).get(eni_id).cloned()
    }

    pub fn mac(&self, eni_id: &str) -> Option<String> {
        lock(&self.macs).get(eni_id).cloned()
    }

    pub fn host_done(&self, eni_id: &str) -> bool {
        lock(&self.host_done).contains(eni_id)
    }

    pub fn set_host_done(&self, eni_id: &str) {
        lock(&self.host_done).insert(eni_id.to_string());
    }

    /// Wakes the manager.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Resolves when the manager is woken.
    pub async fn woken(&self) {
        self.wake.notified().await
    }

    /// The pool gained IPs.
    pub fn grew(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Changes whenever the pool gains IPs.
    pub fn growth(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u64) -> ProviderEvent {
        ProviderEvent { action: "assign_ips".into(), at: n, detail: format!("#{n}") }
    }

    #[test]
    fn keeps_the_last_events_and_the_last_action_and_error_apart() {
        let s = PoolState::default();
        for n in 0..(RECENT_EVENTS as u64 + 5) {
            s.remember(n % 2 == 1, event(n));
        }
        let recent = s.recent_events();
        assert_eq!(recent.len(), RECENT_EVENTS);
        assert_eq!(recent.first().unwrap().1.at, 5, "the oldest went first");
        assert_eq!(s.last_action().unwrap().at, RECENT_EVENTS as u64 + 4);
        assert_eq!(s.last_error().unwrap().at, RECENT_EVENTS as u64 + 3);
    }
}
