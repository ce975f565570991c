//! Per-host politeness and the worker's global bound on in-flight requests.
//!
//! A request first waits for its host — a free per-host concurrency slot, then the host's next
//! allowed start (interval since the previous start, or a pause after 429/503) — and only then takes
//! a global slot. A host's delay therefore never holds a global slot: requests to other hosts do not
//! wait behind a slow or paused host.
//!
//! A host that answers 429 or 503 without `Retry-After` is backed off exponentially: its spacing grows
//! by a penalty that doubles with every throttled answer (from [`PENALTY_START`] up to
//! [`PENALTY_MAX`]) and halves with every answer that is not throttled, so it recovers gradually.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use urlfleet_shared::HostPolicy;

/// First penalty added to a host's spacing after a throttled answer without `Retry-After`.
pub const PENALTY_START: Duration = Duration::from_millis(500);
/// Largest penalty.
pub const PENALTY_MAX: Duration = Duration::from_secs(60);
/// Added to every non-zero spacing, with [`margin`]: the server measures arrivals, which jitter by a
/// connection set-up or a scheduling hiccup on either side; the margin keeps a polite client polite by
/// the server's clock, also on a busy machine.
pub const INTERVAL_MARGIN: Duration = Duration::from_millis(2);

/// The safety margin added to a spacing: 10 % of it plus [`INTERVAL_MARGIN`] (12 ms at 100 ms).
pub fn margin(spacing: Duration) -> Duration {
    if spacing.is_zero() { Duration::ZERO } else { spacing / 10 + INTERVAL_MARGIN }
}

/// Per-host state.
#[derive(Debug)]
struct HostState {
    slots: Arc<Semaphore>,
    /// The slots' current capacity.
    concurrency: Mutex<u32>,
    /// Minimum spacing between request starts, in microseconds.
    interval_us: AtomicU64,
    /// Serializes the scheduling of request starts; holds the next allowed start.
    next_start: tokio::sync::Mutex<Instant>,
    paused_until: Mutex<Option<Instant>>,
    /// Extra spacing after throttled answers, in microseconds; decays on healthy answers. An atomic,
    /// because every answer touches it.
    penalty_us: AtomicU64,
}

impl HostState {
    /// Makes `policy` the host's limits: slots are added at once; removed ones are taken out as they
    /// come free (the rest on a later call).
    fn apply(&self, policy: HostPolicy) {
        self.interval_us.store(policy.interval.as_micros() as u64, Ordering::Relaxed);
        let want = policy.concurrency.max(1);
        let mut have = self.concurrency.lock().unwrap_or_else(|e| e.into_inner());
        if want > *have {
            self.slots.add_permits((want - *have) as usize);
            *have = want;
        } else if want < *have {
            let forgotten = self.slots.forget_permits((*have - want) as usize) as u32;
            *have -= forgotten;
        }
    }
}

/// The gate every request passes.
#[derive(Debug)]
pub struct Politeness {
    /// Read on every request, written when a host is first seen: a read-write lock.
    hosts: RwLock<HashMap<String, Arc<HostState>>>,
    global: Arc<Semaphore>,
}

/// Permission to send one request: a host slot and a global slot, released on drop.
#[derive(Debug)]
pub struct Permit {
    _host: OwnedSemaphorePermit,
    _global: OwnedSemaphorePermit,
}

impl Politeness {
    /// A gate with `global` in-flight requests at most.
    pub fn new(global: usize) -> Self {
        Self { hosts: RwLock::new(HashMap::new()), global: Arc::new(Semaphore::new(global.max(1))) }
    }

    fn get(&self, host: &str) -> Option<Arc<HostState>> {
        self.hosts.read().unwrap_or_else(|e| e.into_inner()).get(host).cloned()
    }

    /// The host's state, created on first sight; a given policy becomes the host's limits. One state
    /// per host for the worker's lifetime: swapping it would let requests on the old and the new
    /// state run side by side, over both limits.
    fn host(&self, host: &str, policy: Option<HostPolicy>) -> Arc<HostState> {
        let state = match self.get(host) {
            Some(s) => s,
            None => {
                let initial = policy.unwrap_or_default();
                let mut hosts = self.hosts.write().unwrap_or_else(|e| e.into_inner());
                hosts
                    .entry(host.to_string())
                    .or_insert_with(|| {
                        Arc::new(HostState {
                            slots: Arc::new(Semaphore::new(initial.concurrency.max(1) as usize)),
                            concurrency: Mutex::new(initial.concurrency.max(1)),
                            interval_us: AtomicU64::new(initial.interval.as_micros() as u64),
                            next_start: tokio::sync::Mutex::new(Instant::now()),
                            paused_until: Mutex::new(None),
                            penalty_us: AtomicU64::new(0),
                        })
                    })
                    .clone()
            }
        };
        if let Some(p) = policy {
            state.apply(p);
        }
        state
    }

    /// Waits until a request to `host` may start: under `policy` when given (the lease's host), else
    /// under the limits the host already has (a redirect target), or the defaults.
    pub async fn acquire(&self, host: &str, policy: Option<HostPolicy>) -> Permit {
        let state = self.host(host, policy);
        let host_slot = state.slots.clone().acquire_owned().await.expect("host semaphore never closes");
        let mut next = state.next_start.lock().await;
        loop {
            let paused = *state.paused_until.lock().unwrap_or_else(|e| e.into_inner());
            let wake = paused.map_or(*next, |p| p.max(*next));
            if wake <= Instant::now() {
                break;
            }
            tokio::time::sleep_until(wake).await;
        }
        let global = self.global.clone().acquire_owned().await.expect("global semaphore never closes");
        let penalty = Duration::from_micros(state.penalty_us.load(Ordering::Relaxed));
        let spacing = Duration::from_micros(state.interval_us.load(Ordering::Relaxed)) + penalty;
        *next = Instant::now() + spacing + margin(spacing);
        Permit { _host: host_slot, _global: global }
    }

    /// Pauses a host for everyone on this worker (Retry-After, back-off after 429/503).
    pub fn pause(&self, host: &str, for_: Duration) {
        if let Some(s) = self.get(host) {
            let until = Instant::now() + for_;
            let mut p = s.paused_until.lock().unwrap_or_else(|e| e.into_inner());
            if p.is_none_or(|p| p < until) {
                *p = Some(until);
            }
        }
    }

    /// A throttled answer (429/503) without `Retry-After`: doubles the host's penalty and pauses it
    /// for that long. Returns the pause.
    pub fn throttled(&self, host: &str) -> Duration {
        let Some(s) = self.get(host) else { return Duration::ZERO };
        let old = Duration::from_micros(s.penalty_us.load(Ordering::Relaxed));
        let pause = (old * 2).clamp(PENALTY_START, PENALTY_MAX);
        s.penalty_us.store(pause.as_micros() as u64, Ordering::Relaxed);
        let until = Instant::now() + pause;
        let mut paused = s.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        if paused.is_none_or(|q| q < until) {
            *paused = Some(until);
        }
        pause
    }

    /// An answer that was not throttled: the host's penalty halves (and vanishes below 10 ms).
    pub fn healthy(&self, host: &str) {
        let Some(s) = self.get(host) else { return };
        let p = s.penalty_us.load(Ordering::Relaxed);
        if p != 0 {
            let half = p / 2;
            s.penalty_us.store(if half < 10_000 { 0 } else { half }, Ordering::Relaxed);
        }
    }

    /// Requests in flight right now.
    pub fn in_flight(&self, capacity: usize) -> usize {
        capacity - self.global.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn starts_to_one_host_are_spaced_by_the_interval() {
        let gate = Arc::new(Politeness::new(8));
        let policy = HostPolicy { concurrency: 4, interval: Duration::from_millis(100) };
        let t0 = Instant::now();
        let mut starts = Vec::new();
        for _ in 0..5 {
            let p = gate.acquire("a.example", Some(policy)).await;
            starts.push(t0.elapsed());
            drop(p);
        }
        for w in starts.windows(2) {
            assert!(w[1] - w[0] >= Duration::from_millis(100), "{starts:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_changed_limit_keeps_one_state_and_spacing() {
        let gate = Politeness::new(8);
        let strict = HostPolicy { concurrency: 1, interval: Duration::from_millis(100) };
        let t0 = Instant::now();
        drop(gate.acquire("h.example", Some(strict)).await);
        // A redirect hop to the same host without a policy keeps the host's limits.
        drop(gate.acquire("h.example", None).await);
        assert!(t0.elapsed() >= Duration::from_millis(100), "the interval held across the hop");
        let held = gate.acquire("h.example", None).await;
        let g = Arc::new(gate);
        let g2 = g.clone();
        let second = tokio::spawn(async move { g2.acquire("h.example", None).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!second.is_finished(), "one slot: the second request waits for the first");
        drop(held);
        let _ = second.await;
        // Lifting the limit adds slots to the same state.
        let free = HostPolicy { concurrency: 3, interval: Duration::ZERO };
        let a = g.acquire("h.example", Some(free)).await;
        let b = g.acquire("h.example", Some(free)).await;
        let c = g.acquire("h.example", Some(free)).await;
        drop((a, b, c));
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_backs_a_host_off_exponentially_and_it_recovers_gradually() {
        let gate = Politeness::new(8);
        let policy = HostPolicy { concurrency: 1, interval: Duration::ZERO };
        drop(gate.acquire("t.example", Some(policy)).await);
        assert_eq!(gate.throttled("t.example"), PENALTY_START);
        assert_eq!(gate.throttled("t.example"), PENALTY_START * 2);
        let t0 = Instant::now();
        drop(gate.acquire("t.example", Some(policy)).await);
        assert!(t0.elapsed() >= PENALTY_START * 2, "paused for the penalty");
        // Spacing now includes the penalty; each healthy answer halves it.
        gate.healthy("t.example");
        let t1 = Instant::now();
        drop(gate.acquire("t.example", Some(policy)).await);
        assert!(t1.elapsed() >= PENALTY_START * 2, "the previous start was spaced by the old penalty");
        for _ in 0..10 {
            gate.healthy("t.example");
        }
        drop(gate.acquire("t.example", Some(policy)).await);
        let t2 = Instant::now();
        drop(gate.acquire("t.example", Some(policy)).await);
        assert!(t2.elapsed() < Duration::from_millis(5), "recovered: {:?}", t2.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_host_does_not_hold_back_other_hosts() {
        let gate = Arc::new(Politeness::new(1));
        let policy = HostPolicy { concurrency: 1, interval: Duration::ZERO };
        drop(gate.acquire("slow.example", Some(policy)).await);
        gate.pause("slow.example", Duration::from_secs(60));
        let g = gate.clone();
        let slow = tokio::spawn(async move { g.acquire("slow.example", Some(policy)).await });
        tokio::task::yield_now().await;
        let t0 = Instant::now();
        let other = gate.acquire("fast.example", Some(policy)).await;
        assert!(t0.elapsed() < Duration::from_secs(1), "the paused host held the only global slot");
        drop(other);
        let _ = slow.await;
        assert!(t0.elapsed() >= Duration::from_secs(59));
    }
}
