//! What this coordinator sees of its fleet right now, for the dashboard: the workers connected to it
//! (their credits, the URLs they hold, their last word) and the recent answers of each host whose
//! results it ingested (status mix, latency). In memory, per coordinator: a fleet behind several
//! coordinators shows on each the part it serves.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use hashlink::LruCache;
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
}

/// The dashboard's in-memory view.
pub struct Board {
    workers: Mutex<BTreeMap<u64, WorkerView>>,
    /// Hosts in the order of their latest answer: a new host past the bound forgets the one whose
    /// latest answer is oldest, in constant time (a job of a million hosts brings a new one with
    /// almost every answer).
    hosts: Mutex<LruCache<String, Recent>>,
}

impl Default for Board {
    fn default() -> Self {
        Self { workers: Mutex::default(), hosts: Mutex::new(LruCache::new(MAX_HOSTS)) }
    }
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
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        let r = match hosts.get_mut(host) {
            Some(r) => r,
            None => {
                hosts.insert(host.to_string(), Recent::default());
                hosts.get_mut(host).expect("just inserted")
            }
        };
        if r.answers.len() == RECENT_PER_HOST {
            r.answers.pop_front();
        }
        r.answers.push_back((class, response_ms));
    }

    /// A host's recent answers; `None` when this coordinator has seen none.
    pub fn host(&self, host: &str) -> Option<HostHealth> {
        let hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        let r = hosts.peek(host)?;
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

    #[test]
    fn past_the_bound_the_host_answered_longest_ago_is_forgotten() {
        let b = Board::default();
        for i in 0..MAX_HOSTS {
            b.answer(&format!("h{i}.example"), OutcomeClass::Ok, 1);
        }
        // h0 answers again: h1 is now the one whose latest answer is oldest.
        b.answer("h0.example", OutcomeClass::Broken, 2);
        for i in 0..3 * MAX_HOSTS {
            b.answer(&format!("new{i}.example"), OutcomeClass::Ok, 1);
            if i == 0 {
                assert!(b.host("h1.example").is_none(), "the oldest answer's host goes first");
                assert_eq!(b.host("h0.example").map(|h| h.answers), Some(2), "a host that answered again stays");
                assert!(b.host("h2.example").is_some());
            }
        }
        assert_eq!(b.hosts.lock().unwrap().len(), MAX_HOSTS);
        assert!(b.host(&format!("new{}.example", 3 * MAX_HOSTS - 1)).is_some());
        assert!(b.host("h0.example").is_none());
    }
}
