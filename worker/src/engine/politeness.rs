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
/// the server's clock (measured: a 102 ms client spacing arrived 99 ms apart on a loaded machine).
pub const INTERVAL_MARGIN: Duration = Duration::from_millis(2);

/// The safety margin added to a spacing: 5 % of it plus [`INTERVAL_MARGIN`] (7 ms at 100 ms).
pub fn margin(spacing: Duration) -> Duration {
    if spacing.is_zero() { Duration::ZERO } else { spacing / 20 + INTERVAL_MARGIN }
}

/// Per-host state.
#[derive(Debug)]
struct HostState {
    slots: Arc<Semaphore>,
    concurrency: u32,
    /// Serializes the scheduling of request starts; holds the next allowed start.
    next_start: tokio::sync::Mutex<Instant>,
    paused_until: Mutex<Option<Instant>>,
    /// Extra spacing after throttled answers, in microseconds; decays on healthy answers. An atomic,
    /// because every answer touches it.
    penalty_us: AtomicU64,
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

    fn host(&self, host: &str, policy: HostPolicy) -> Arc<HostState> {
        let concurrency = policy.concurrency.max(1);
        if let Some(s) = self.get(host).filter(|s| s.concurrency == concurrency) {
            return s;
        }
        let mut hosts = self.hosts.write().unwrap_or_else(|e| e.into_inner());
        match hosts.get(host) {
            Some(s) if s.concurrency == concurrency => s.clone(),
            existing => {
                // A changed limit takes effect for new requests; the next start time carries over.
                let next = existing.and_then(|s| s.next_start.try_lock().ok().map(|n| *n)).unwrap_or_else(Instant::now);
                let paused = existing.and_then(|s| *s.paused_until.lock().unwrap_or_else(|e| e.into_inner()));
                let penalty = existing.map(|s| s.penalty_us.load(Ordering::Relaxed)).unwrap_or_default();
                let s = Arc::new(HostState {
                    slots: Arc::new(Semaphore::new(concurrency as usize)),
                    concurrency,
                    next_start: tokio::sync::Mutex::new(next),
                    paused_until: Mutex::new(paused),
                    penalty_us: AtomicU64::new(penalty),
                });
                hosts.insert(host.to_string(), s.clone());
                s
            }
        }
    }

    /// Waits until a request to `host` may start under `policy`.
    pub async fn acquire(&self, host: &str, policy: HostPolicy) -> Permit {
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
        let spacing = policy.interval + penalty;
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
            let p = gate.acquire("a.example", policy).await;
            starts.push(t0.elapsed());
            drop(p);
        }
        for w in starts.windows(2) {
            assert!(w[1] - w[0] >= Duration::from_millis(100), "{starts:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_backs_a_host_off_exponentially_and_it_recovers_gradually() {
        let gate = Politeness::new(8);
        let policy = HostPolicy { concurrency: 1, interval: Duration::ZERO };
        drop(gate.acquire("t.example", policy).await);
        assert_eq!(gate.throttled("t.example"), PENALTY_START);
        assert_eq!(gate.throttled("t.example"), PENALTY_START * 2);
        let t0 = Instant::now();
        drop(gate.acquire("t.example", policy).await);
        assert!(t0.elapsed() >= PENALTY_START * 2, "paused for the penalty");
        // Spacing now includes the penalty; each healthy answer halves it.
        gate.healthy("t.example");
        let t1 = Instant::now();
        drop(gate.acquire("t.example", policy).await);
        assert!(t1.elapsed() >= PENALTY_START * 2, "the previous start was spaced by the old penalty");
        for _ in 0..10 {
            gate.healthy("t.example");
        }
        drop(gate.acquire("t.example", policy).await);
        let t2 = Instant::now();
        drop(gate.acquire("t.example", policy).await);
        assert!(t2.elapsed() < Duration::from_millis(5), "recovered: {:?}", t2.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_host_does_not_hold_back_other_hosts() {
        let gate = Arc::new(Politeness::new(1));
        let policy = HostPolicy { concurrency: 1, interval: Duration::ZERO };
        drop(gate.acquire("slow.example", policy).await);
        gate.pause("slow.example", Duration::from_secs(60));
        let g = gate.clone();
        let slow = tokio::spawn(async move { g.acquire("slow.example", policy).await });
        tokio::task::yield_now().await;
        let t0 = Instant::now();
        let other = gate.acquire("fast.example", policy).await;
        assert!(t0.elapsed() < Duration::from_secs(1), "the paused host held the only global slot");
        drop(other);
        let _ = slow.await;
        assert!(t0.elapsed() >= Duration::from_secs(59));
    }
}
