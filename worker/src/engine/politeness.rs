//! Per-host politeness and the worker's global bound on in-flight requests.
//!
//! A request first waits for its host — a free per-host concurrency slot, then the host's next
//! allowed start (interval since the previous start, or a pause after 429/503) — and only then takes
//! a global slot. A host's delay therefore never holds a global slot: requests to other hosts do not
//! wait behind a slow or paused host.
//!
//! Spacing is judged where the server judges it: a request's arrival is only known to lie between
//! its start and its answer, so the next start to a host waits for the earlier of the previous
//! request's answer and half a spacing after its start, plus the spacing. A handshake that delays one
//! request therefore delays the next as well, and two requests never reach the server closer than
//! the spacing however the machine schedules them (up to half a spacing of delay).
//!
//! Penalties follow evidence ([`Politeness::observe`]): a host is slowed when it says it is
//! overloaded (429, or a 5xx with `Retry-After`), or when most of its recent answers are strained
//! (503 without `Retry-After`, timeouts, refused connections) — never for one broken page. The rule
//! is multiplicative in both directions: each verdict of overload doubles the host's extra spacing
//! (from [`PENALTY_START`] to at most [`PENALTY_MAX`]) and pauses it that long; each healthy answer
//! takes a quarter of it off, down to none below 10 ms.
//!
//! A host's state lives while the host is in use: once nothing has asked for it for
//! [`FORGET_AFTER`], nobody holds or waits on it, and its next request could start at once, it is
//! forgotten (swept as the table grows), so a long-running worker's memory follows the hosts it works
//! on, not every host it has ever seen. Coming back after that is coming back to a new worker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use super::retry::Evidence;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use urlfleet_shared::HostPolicy;

/// First penalty added to a host's spacing after a throttled answer without `Retry-After`.
pub const PENALTY_START: Duration = Duration::from_millis(500);
/// Largest penalty.
pub const PENALTY_MAX: Duration = Duration::from_secs(60);
/// How long a host's state is kept after its last request was answered, once nothing holds or waits
/// on it and its spacing and any pause have run out. Longer than the largest penalty: a host that was
/// slowed and left alone for this long meets a worker's fresh state, as it would meet a new worker.
pub const FORGET_AFTER: Duration = Duration::from_secs(10 * 60);

/// The table of host states is first swept when it holds this many, then whenever it has doubled
/// since the last sweep: a sweep costs a pass over the table, paid for by the hosts added since.
const SWEEP_FROM: usize = 1_024;

/// Added to every non-zero spacing ([`margin`]). The next start is anchored on the previous
/// request's answer, which the server sent after it saw the request arrive, so the server sees the two
/// arrivals at least the spacing apart however late the first left this machine. What is left to
/// cover is a server that reads its clock in whole milliseconds (as nginx's `limit_req` does) and may
/// round the later arrival down by one. (An answer slower than half a spacing anchors on the cap of
/// `Started::arrived_by` instead, where no margin of a few milliseconds would decide anything.)
pub const INTERVAL_MARGIN: Duration = Duration::from_millis(2);

/// The safety margin added to a non-zero spacing: [`INTERVAL_MARGIN`], whatever the spacing. A margin
/// that grows with the spacing would cover a client clock that runs slow against the server's, which
/// no machine's clock does by a measurable share of a second.
pub fn margin(spacing: Duration) -> Duration {
    if spacing.is_zero() { Duration::ZERO } else { INTERVAL_MARGIN }
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
    /// The latest request started: when, its spacing, and when its answer came (if it has).
    last: Mutex<Option<Started>>,
    /// Wakes a request waiting for the previous one's answer.
    answered: tokio::sync::Notify,
    /// Recent answers, newest in bit 0: 1 for strained, 0 for healthy.
    recent: Mutex<Recent>,
    /// When the state was made: the start of its quiet time until a request is let through.
    created: Instant,
}

/// A request that was let through: the anchor of the next start.
#[derive(Debug, Clone, Copy)]
struct Started {
    at: Instant,
    spacing: Duration,
    answered: Option<Instant>,
}

impl Started {
    /// The latest the request can have reached the server, as far as the next start is concerned:
    /// its answer, but no later than half a spacing after it started.
    fn arrived_by(&self) -> Instant {
        let cap = self.at + self.spacing / 2;
        self.answered.map_or(cap, |a| a.min(cap))
    }
}

/// A window of recent answers of one host.
#[derive(Debug, Default)]
struct Recent {
    bits: u16,
    len: u8,
}

/// Answers a host's verdict of strain is judged on.
const WINDOW: u8 = 10;
/// Strained answers among the last [`WINDOW`] that make a verdict of overload: a majority.
const STRAINED_MAJORITY: u32 = 6;

impl Recent {
    /// Records an answer; true when the window now holds a majority of strained ones (the window
    /// then starts over, so the next verdict needs new evidence).
    fn push(&mut self, strained: bool) -> bool {
        self.bits = (self.bits << 1) | u16::from(strained);
        self.len = (self.len + 1).min(WINDOW);
        let mask = (1u16 << WINDOW) - 1;
        if self.len == WINDOW && (self.bits & mask).count_ones() >= STRAINED_MAJORITY {
            *self = Self::default();
            return true;
        }
        false
    }
}

impl HostState {
    fn new(initial: HostPolicy) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(initial.concurrency.max(1) as usize)),
            concurrency: Mutex::new(initial.concurrency.max(1)),
            interval_us: AtomicU64::new(initial.interval.as_micros() as u64),
            next_start: tokio::sync::Mutex::new(Instant::now()),
            paused_until: Mutex::new(None),
            penalty_us: AtomicU64::new(0),
            last: Mutex::new(None),
            answered: tokio::sync::Notify::new(),
            recent: Mutex::new(Recent::default()),
            created: Instant::now(),
        }
    }

    /// Whether the state can be forgotten: nobody holds it but the table (`held` is its count of
    /// other holders: a request in flight or waiting holds it), a request could start now — no pause,
    /// spacing run out — and its last request was answered [`FORGET_AFTER`] ago or more (or it was
    /// made that long ago and never let a request through).
    fn forgettable(&self, held: usize, now: Instant) -> bool {
        if held > 0 {
            return false;
        }
        if self.paused_until.lock().unwrap_or_else(|e| e.into_inner()).is_some_and(|p| p > now) {
            return false;
        }
        let Ok(next) = self.next_start.try_lock() else { return false };
        if *next > now {
            return false;
        }
        let quiet_since = match *self.last.lock().unwrap_or_else(|e| e.into_inner()) {
            None => self.created,
            Some(l) if l.arrived_by() + l.spacing + margin(l.spacing) > now => return false,
            Some(l) => l.answered.unwrap_or(l.at),
        };
        now.saturating_duration_since(quiet_since) >= FORGET_AFTER
    }

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
    hosts: RwLock<Hosts>,
    global: Arc<Semaphore>,
    /// Set to the number of host states whenever it changes.
    tracked: Gauge,
}

/// The host states, and the size at which they are next swept.
#[derive(Debug)]
struct Hosts {
    states: HashMap<String, Arc<HostState>>,
    sweep_at: usize,
}

impl Hosts {
    /// Forgets the states nobody needs any more ([`HostState::forgettable`]). Called with the table
    /// locked for writing: no request can take a state out of it meanwhile, so a state held by
    /// nobody but the table stays unused until it is gone.
    fn sweep(&mut self, now: Instant) {
        self.states.retain(|_, s| !s.forgettable(Arc::strong_count(s) - 1, now));
        self.sweep_at = (self.states.len() * 2).max(SWEEP_FROM);
    }
}

/// Permission to send one request: a host slot and a global slot, released on drop. Call
/// [`Permit::answered`] when the answer's head arrives (dropping it counts as the answer).
#[derive(Debug)]
pub struct Permit {
    state: Arc<HostState>,
    started: Instant,
    _host: OwnedSemaphorePermit,
    _global: OwnedSemaphorePermit,
}

impl Permit {
    /// The request's answer arrived (or it failed): the next request to the host is spaced from here.
    pub fn answered(&self) {
        let mut last = self.state.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = last.as_mut().filter(|l| l.at == self.started && l.answered.is_none()) {
            l.answered = Some(Instant::now());
            self.state.answered.notify_waiters();
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.answered();
    }
}

impl Politeness {
    /// A gate with `global` in-flight requests at most.
    pub fn new(global: usize) -> Self {
        let hosts = Hosts { states: HashMap::new(), sweep_at: SWEEP_FROM };
        Self { hosts: RwLock::new(hosts), global: Arc::new(Semaphore::new(global.max(1))), tracked: Gauge::default() }
    }

    /// Reports the number of host states kept in `gauge`.
    pub fn with_tracked_gauge(mut self, gauge: Gauge) -> Self {
        gauge.set(self.hosts_tracked() as i64);
        self.tracked = gauge;
        self
    }

    fn get(&self, host: &str) -> Option<Arc<HostState>> {
        self.hosts.read().unwrap_or_else(|e| e.into_inner()).states.get(host).cloned()
    }

    /// The host's state, created on first sight; a given policy becomes the host's limits. One state
    /// per host while anything holds it or its spacing runs: swapping it would let requests on the
    /// old and the new state run side by side, over both limits. States nobody needs any more are
    /// swept out as the table grows.
    fn host(&self, host: &str, policy: Option<HostPolicy>) -> Arc<HostState> {
        let state = match self.get(host) {
            Some(s) => s,
            None => {
                let mut hosts = self.hosts.write().unwrap_or_else(|e| e.into_inner());
                if hosts.states.len() >= hosts.sweep_at && !hosts.states.contains_key(host) {
                    hosts.sweep(Instant::now());
                }
                let state = hosts
                    .states
                    .entry(host.to_string())
                    .or_insert_with(|| Arc::new(HostState::new(policy.unwrap_or_default())))
                    .clone();
                self.tracked.set(hosts.states.len() as i64);
                state
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
            // Registered before the state is read, so an answer in between still wakes this wait.
            let answer = state.answered.notified();
            tokio::pin!(answer);
            answer.as_mut().enable();
            let paused = *state.paused_until.lock().unwrap_or_else(|e| e.into_inner());
            let mut wake = paused.map_or(*next, |p| p.max(*next));
            if let Some(prev) = *state.last.lock().unwrap_or_else(|e| e.into_inner()) {
                wake = wake.max(prev.arrived_by() + prev.spacing + margin(prev.spacing));
            }
            if wake <= Instant::now() {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                () = answer => {}
            }
        }
        let global = self.global.clone().acquire_owned().await.expect("global semaphore never closes");
        let penalty = Duration::from_micros(state.penalty_us.load(Ordering::Relaxed));
        let spacing = Duration::from_micros(state.interval_us.load(Ordering::Relaxed)) + penalty;
        let started = Instant::now();
        *next = started + spacing + margin(spacing);
        *state.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(Started { at: started, spacing, answered: None });
        Permit { state: state.clone(), started, _host: host_slot, _global: global }
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

    /// Weighs an answer of `host` ([`Evidence`]): a verdict of overload — the host said so, or most
    /// of its recent answers were strained — doubles its penalty and pauses it that long, unless
    /// `retry_after` names the pause; a healthy answer takes a quarter of the penalty off. Returns the
    /// pause the host was given, if any, for the cluster to share.
    pub fn observe(&self, host: &str, evidence: Evidence, retry_after: Option<Duration>) -> Option<Duration> {
        let s = self.get(host)?;
        let overloaded = match evidence {
            Evidence::Overloaded => true,
            Evidence::Strained => s.recent.lock().unwrap_or_else(|e| e.into_inner()).push(true),
            Evidence::Healthy => {
                s.recent.lock().unwrap_or_else(|e| e.into_inner()).push(false);
                let p = s.penalty_us.load(Ordering::Relaxed);
                if p != 0 {
                    let less = p - p / 4;
                    s.penalty_us.store(if less < 10_000 { 0 } else { less }, Ordering::Relaxed);
                }
                false
            }
            Evidence::Silent => false,
        };
        if !overloaded {
            return None;
        }
        let old = Duration::from_micros(s.penalty_us.load(Ordering::Relaxed));
        let penalty = (old * 2).clamp(PENALTY_START, PENALTY_MAX);
        s.penalty_us.store(penalty.as_micros() as u64, Ordering::Relaxed);
        let pause = retry_after.unwrap_or(penalty);
        let until = Instant::now() + pause;
        let mut paused = s.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        if paused.is_none_or(|q| q < until) {
            *paused = Some(until);
        }
        Some(pause)
    }

    /// Hosts whose state the gate keeps right now.
    pub fn hosts_tracked(&self) -> usize {
        self.hosts.read().unwrap_or_else(|e| e.into_inner()).states.len()
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
    async fn overload_backs_a_host_off_exponentially_and_it_recovers_gradually() {
        let gate = Politeness::new(8);
        let policy = HostPolicy { concurrency: 1, interval: Duration::ZERO };
        drop(gate.acquire("t.example", Some(policy)).await);
        assert_eq!(gate.observe("t.example", Evidence::Overloaded, None), Some(PENALTY_START));
        assert_eq!(gate.observe("t.example", Evidence::Overloaded, None), Some(PENALTY_START * 2));
        let t0 = Instant::now();
        drop(gate.acquire("t.example", Some(policy)).await);
        assert!(t0.elapsed() >= PENALTY_START * 2, "paused for the penalty");
        // Spacing now includes the penalty; each healthy answer takes a quarter off.
        gate.observe("t.example", Evidence::Healthy, None);
        let t1 = Instant::now();
        drop(gate.acquire("t.example", Some(policy)).await);
        assert!(t1.elapsed() >= PENALTY_START * 2, "the previous start was spaced by the old penalty");
        for _ in 0..30 {
            gate.observe("t.example", Evidence::Healthy, None);
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

    #[tokio::test(start_paused = true)]
    async fn one_failing_page_never_slows_its_host_but_a_strained_majority_does() {
        let gate = Politeness::new(8);
        let policy = HostPolicy { concurrency: 2, interval: Duration::from_millis(100) };
        drop(gate.acquire("h.example", Some(policy)).await);
        // One page in ten answers 503 without Retry-After, for a long time: no verdict, ever.
        for i in 0..200 {
            let e = if i % 10 == 0 { Evidence::Strained } else { Evidence::Healthy };
            assert_eq!(gate.observe("h.example", e, None), None, "answer {i}");
        }
        // Even half of them strained is not a majority.
        for i in 0..40 {
            let e = if i % 2 == 0 { Evidence::Strained } else { Evidence::Healthy };
            assert_eq!(gate.observe("h.example", e, None), None, "answer {i}");
        }
        // Most recent answers strained: the host is slowed, once per window of new evidence.
        let verdicts: Vec<_> = (0..20).filter_map(|_| gate.observe("h.example", Evidence::Strained, None)).collect();
        assert_eq!(verdicts, vec![PENALTY_START, PENALTY_START * 2]);
        // A Retry-After names the pause.
        let asked = gate.observe("h.example", Evidence::Overloaded, Some(Duration::from_secs(7)));
        assert_eq!(asked, Some(Duration::from_secs(7)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_next_start_waits_for_the_previous_answer_up_to_half_a_spacing() {
        let gate = Arc::new(Politeness::new(8));
        let policy = HostPolicy { concurrency: 2, interval: Duration::from_millis(100) };
        let spacing = Duration::from_millis(100) + margin(Duration::from_millis(100));
        // The first request's answer takes 30 ms (a handshake): the second starts 30 ms later than
        // the spacing alone would let it.
        let t0 = Instant::now();
        let first = gate.acquire("s.example", Some(policy)).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        first.answered();
        drop(first);
        let second = gate.acquire("s.example", Some(policy)).await;
        assert_eq!(t0.elapsed(), spacing + Duration::from_millis(30));
        // An answer that never comes holds the next start back by half a spacing at most.
        let second_at = t0 + spacing + Duration::from_millis(30);
        let g = gate.clone();
        let third = tokio::spawn(async move {
            let p = g.acquire("s.example", Some(policy)).await;
            (p, Instant::now())
        });
        let (third, third_at) = third.await.unwrap();
        let interval = Duration::from_millis(100);
        assert_eq!(third_at - second_at, interval / 2 + interval + margin(interval));
        drop((second, third));
        // Without an interval nothing waits for answers.
        let free = HostPolicy { concurrency: 4, interval: Duration::ZERO };
        let held = gate.acquire("f.example", Some(free)).await;
        let t2 = Instant::now();
        let next = gate.acquire("f.example", Some(free)).await;
        assert_eq!(t2.elapsed(), Duration::ZERO);
        drop((held, next));
    }

    #[tokio::test(start_paused = true)]
    async fn host_states_are_kept_while_needed_and_forgotten_when_long_quiet() {
        let gate = Arc::new(Politeness::new(64));
        let quick = HostPolicy { concurrency: 2, interval: Duration::ZERO };
        let polite = HostPolicy { concurrency: 1, interval: Duration::from_millis(100) };
        let name = |i: usize| format!("h{i}.example");
        // Hosts worked on and then left alone.
        for i in 0..2 * SWEEP_FROM {
            drop(gate.acquire(&name(i), Some(quick)).await);
        }
        // Hosts still needed when the sweep comes: a request in flight, a request waiting for a
        // paused host, a host paused beyond the quiet time, a host whose interval outlasts it.
        let held = gate.acquire("held.example", Some(quick)).await;
        drop(gate.acquire("waiting.example", Some(polite)).await);
        gate.pause("waiting.example", FORGET_AFTER * 2);
        let g = gate.clone();
        let waiting = tokio::spawn(async move { g.acquire("waiting.example", Some(polite)).await });
        drop(gate.acquire("paused.example", Some(quick)).await);
        gate.pause("paused.example", FORGET_AFTER * 2);
        let slow = HostPolicy { concurrency: 1, interval: FORGET_AFTER * 3 };
        drop(gate.acquire("slow.example", Some(slow)).await);
        let slow_at = Instant::now();
        tokio::task::yield_now().await;
        assert_eq!(gate.hosts_tracked(), 2 * SWEEP_FROM + 4);

        // Just short of the quiet time: nothing is forgotten, the table grows.
        tokio::time::advance(FORGET_AFTER - Duration::from_secs(1)).await;
        for i in 2 * SWEEP_FROM..4 * SWEEP_FROM {
            drop(gate.acquire(&name(i), Some(quick)).await);
        }
        assert_eq!(gate.hosts_tracked(), 4 * SWEEP_FROM + 4);

        // Past it for the first hosts: the next sweep forgets them and only them.
        tokio::time::advance(Duration::from_secs(2)).await;
        for i in 4 * SWEEP_FROM..8 * SWEEP_FROM {
            drop(gate.acquire(&name(i), Some(quick)).await);
        }
        let tracked = gate.hosts_tracked();
        assert!(tracked < 7 * SWEEP_FROM, "the first hosts were forgotten: {tracked}");
        for kept in ["held.example", "waiting.example", "paused.example", "slow.example"] {
            assert!(gate.get(kept).is_some(), "{kept} was forgotten while needed");
        }
        assert!(gate.get(&name(0)).is_none());
        assert!(gate.get(&name(3 * SWEEP_FROM)).is_some(), "a host used within the quiet time stays");
        // What was kept still holds: the slow host's interval, the paused host's pause.
        drop(gate.acquire("slow.example", Some(slow)).await);
        assert!(slow_at.elapsed() >= FORGET_AFTER * 3, "the slow host's spacing was kept: {:?}", slow_at.elapsed());
        assert!(waiting.is_finished(), "the paused host let its waiting request through after its pause");
        drop((held, waiting.await));
    }
}
