//! What this coordinator sees of its fleet right now, for the dashboard: the workers connected to it
//! (their credits, the URLs they hold, their last word) and the recent answers of each host whose
//! results it ingested (status mix, latency). In memory, per coordinator: a fleet behind several
//! coordinators shows on each the part it serves.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use urlfleet_shared::OutcomeClass;

/// Answers remembered per host.
const RECENT_PER_HOST: usize = 200;
/// Hosts remembered, at most (the least recently seen are forgotten first).
const MAX_HOSTS: usize = 20_000;

/// One connected worker session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerView {
    /// The session's number on this coordinator.
    pub session: u64,
    /// The worker's id (as it said hello).
    pub worker_id: String,
    /// Its concurrency, as it said hello.
    pub capacity: u32,
    /// When it connected (ms).
    pub connected_at_ms: i64,
    /// URLs it may still be leased.
    pub credits: u64,
    /// URLs leased to it and not reported yet.
    pub in_hand: u64,
    /// Leases it holds through this session.
    pub leases: usize,
    /// Checks it has in flight, as its last heartbeat said.
    pub in_flight: u32,
    /// When it last sent anything (ms).
    pub last_heard_ms: i64,
}

/// A host's recent answers, at a glance.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostHealth {
    /// Answers remembered.
    pub answers: usize,
    /// Of those: ok, redirected, broken, error.
    pub mix: [usize; 4],
    /// Response time percentiles (ms) of those: p50, p90, p99.
    pub latency_ms: [u64; 3],
}

#[derive(Default)]
struct Recent {
    answers: VecDeque<(OutcomeClass, u64)>,
    seen: u64,
}

/// The dashboard's in-memory view.
#[derive(Default)]
pub struct Board {
    workers: Mutex<BTreeMap<u64, WorkerView>>,
    hosts: Mutex<(HashMap<String, Recent>, u64)>,
}

impl Board {
    /// A session's current state.
    pub fn worker(&self, view: WorkerView) {
        self.workers.lock().unwrap_or_else(|e| e.into_inner()).insert(view.session, view);
    }

    /// A session ended.
    pub fn worker_gone(&self, session: u64) {
        self.workers.lock().unwrap_or_else(|e| e.into_inner()).remove(&session);
    }

    /// The connected workers, by session.
    pub fn workers(&self) -> Vec<WorkerView> {
        self.workers.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// Remembers an answer of `host`.
    pub fn answer(&self, host: &str, class: OutcomeClass, response_ms: u64) {
        let mut guard = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        let (hosts, clock) = &mut *guard;
        *clock += 1;
        let now = *clock;
        if !hosts.contains_key(host)
            && hosts.len() >= MAX_HOSTS
            && let Some(oldest) = hosts.iter().min_by_key(|(_, r)| r.seen).map(|(h, _)| h.clone())
        {
            hosts.remove(&oldest);
        }
        let r = hosts.entry(host.to_string()).or_default();
        r.seen = now;
        if r.answers.len() == RECENT_PER_HOST {
            r.answers.pop_front();
        }
        r.answers.push_back((class, response_ms));
    }

    /// A host's recent answers; `None` when this coordinator has seen none.
    pub fn host(&self, host: &str) -> Option<HostHealth> {
        let guard = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        let r = guard.0.get(host)?;
        let mut mix = [0usize; 4];
        let mut times: Vec<u64> = Vec::with_capacity(r.answers.len());
        for (class, ms) in &r.answers {
            let i = match class {
                OutcomeClass::Ok => 0,
                OutcomeClass::Redirected => 1,
                OutcomeClass::Broken => 2,
                OutcomeClass::Error | OutcomeClass::Invalid => 3,
            };
            mix[i] += 1;
            times.push(*ms);
        }
        times.sort_unstable();
        let pick =
            |p: usize| times.get((times.len() * p / 100).min(times.len().saturating_sub(1))).copied().unwrap_or(0);
        Some(HostHealth { answers: times.len(), mix, latency_ms: [pick(50), pick(90), pick(99)] })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hosts_health_is_its_recent_answers() {
        let b = Board::default();
        for i in 0..300u64 {
            let class = if i % 10 == 0 { OutcomeClass::Broken } else { OutcomeClass::Ok };
            b.answer("a.example", class, i);
        }
        let h = b.host("a.example").unwrap();
        assert_eq!(h.answers, RECENT_PER_HOST);
        assert_eq!(h.mix, [180, 0, 20, 0]);
        assert_eq!(h.latency_ms, [200, 280, 298]);
        assert!(b.host("b.example").is_none());
    }
}
