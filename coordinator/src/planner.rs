//! Planning a submission as it streams in: normalize each entry, collapse duplicates, set aside
//! invalid entries, hand out distinct URLs in batches to be stored, and at the end derive the
//! priority and the unique key that makes duplicate submissions return the existing job.
//!
//! Only a 128-bit digest of each distinct URL stays in memory once its batch is taken, so a
//! million-URL submission costs tens of megabytes, not its text.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

use prost::Message;
use sha2::{Digest, Sha256};
use urlfleet_shared::NormalizedUrl;
use urlfleet_shared::proto::v1 as pb;

use crate::store::{InvalidEntry, PlannedUrl, Priority};

/// Hashes keys that are digests already: their low 64 bits are the hash.
#[derive(Debug, Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }
}

/// Accumulates the entries of one submission.
#[derive(Debug, Default)]
pub struct Planner {
    strip_tracking: bool,
    received: u64,
    duplicates: u64,
    seen: HashSet<u128, BuildHasherDefault<DigestHasher>>,
    /// Distinct URLs not taken yet, by lane: every URL of a host goes to the same lane.
    ready: Vec<Vec<PlannedUrl>>,
    invalid: Vec<InvalidEntry>,
    invalid_seen: HashSet<String>,
}

/// What a whole submission turned out to be.
#[derive(Debug)]
pub struct Plan {
    /// Distinct invalid entries, in arrival order.
    pub invalid: Vec<InvalidEntry>,
    /// Entries received (blank entries excluded).
    pub received: u64,
    /// Entries that collapsed into an identical earlier one.
    pub duplicates: u64,
    /// Distinct entries, valid and invalid.
    pub total: u64,
    /// Effective priority.
    pub priority: Priority,
    /// Hash of the URL set and the check options.
    pub unique_key: String,
}

/// The optional delay of a job by its size: < 500 URLs 1 min, < 2,000 5 min, < 5,000 15 min, else
/// 30 min.
pub fn delay_for_size(n: u64) -> std::time::Duration {
    let min = match n {
        0..500 => 1,
        500..2_000 => 5,
        2_000..5_000 => 15,
        _ => 30,
    };
    std::time::Duration::from_secs(60 * min)
}

/// Priority derived from a job's size: < 500 URLs high, < 5,000 medium, otherwise low.
pub fn priority_for_size(n: u64) -> Priority {
    match n {
        0..500 => 1,
        500..5_000 => 2,
        _ => 3,
    }
}

/// The lane of a host (FNV-1a of its name).
fn lane_of(host: &str, lanes: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in host.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (h % lanes as u64) as usize
}

/// The priority the options ask for, if any.
pub fn explicit_priority(options: &pb::JobOptions) -> Option<Priority> {
    match pb::Priority::try_from(options.priority).unwrap_or(pb::Priority::Unspecified) {
        pb::Priority::High => Some(1),
        pb::Priority::Medium => Some(2),
        pb::Priority::Low => Some(3),
        pb::Priority::Unspecified => None,
    }
}

impl Planner {
    /// A planner that applies the options' normalization settings and splits URLs into `lanes` by
    /// host: batches of different lanes share no host, so writers working on them in parallel never
    /// wait for each other's rows of the host frontier.
    pub fn new(options: &pb::JobOptions, lanes: usize) -> Self {
        Self {
            strip_tracking: options.strip_tracking_params,
            ready: (0..lanes.max(1)).map(|_| Vec::new()).collect(),
            ..Self::default()
        }
    }

    /// Adds one entry; blank entries are ignored.
    pub fn push(&mut self, entry: &str) {
        let entry = entry.trim();
        if entry.is_empty() {
            return;
        }
        self.received += 1;
        match NormalizedUrl::parse_with(entry, self.strip_tracking) {
            Ok(u) => {
                let digest = Sha256::digest(u.as_str().as_bytes());
                let key = u128::from_le_bytes(digest[..16].try_into().expect("a SHA-256 digest has 32 bytes"));
                let seq = self.seen.len() as u64;
                if self.seen.insert(key) {
                    if self.ready.is_empty() {
                        self.ready.push(Vec::new());
                    }
                    let lane = lane_of(u.host(), self.ready.len());
                    self.ready[lane].push(PlannedUrl {
                        url: u.as_str().into(),
                        host: u.host().into(),
                        max_leases: 1,
                        lease_urls: 0,
                        seq,
                    });
                } else {
                    self.duplicates += 1;
                }
            }
            Err(e) => {
                if self.invalid_seen.insert(entry.to_string()) {
                    self.invalid.push(InvalidEntry { input: entry.to_string(), reason: e.to_string() });
                } else {
                    self.duplicates += 1;
                }
            }
        }
    }

    /// Entries received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Lanes the URLs are split into.
    pub fn lanes(&self) -> usize {
        self.ready.len()
    }

    /// Distinct valid URLs of a lane not taken yet.
    pub fn ready(&self, lane: usize) -> usize {
        self.ready.get(lane).map_or(0, Vec::len)
    }

    /// Distinct valid URLs not taken yet, in all lanes.
    pub fn ready_total(&self) -> usize {
        self.ready.iter().map(Vec::len).sum()
    }

    /// Takes up to `max` distinct URLs of a lane to store, sorted (so writers lock rows in one order).
    pub fn take(&mut self, lane: usize, max: usize) -> Vec<PlannedUrl> {
        let Some(ready) = self.ready.get_mut(lane) else { return Vec::new() };
        let at = ready.len().saturating_sub(max);
        let mut batch = ready.split_off(at);
        batch.sort_unstable_by(|a, b| a.url.cmp(&b.url));
        batch
    }

    /// Finishes the plan; every URL must have been taken.
    pub fn finish(self, options: &pb::JobOptions) -> Plan {
        debug_assert!(self.ready.iter().all(Vec::is_empty), "URLs left untaken");
        let total = (self.seen.len() + self.invalid.len()) as u64;
        let priority = explicit_priority(options).unwrap_or_else(|| priority_for_size(total));
        let mut digests: Vec<u128> = self.seen.into_iter().collect();
        digests.sort_unstable();
        let unique_key = unique_key(&digests, &self.invalid, options);
        Plan {
            invalid: self.invalid,
            received: self.received,
            duplicates: self.duplicates,
            total,
            priority,
            unique_key,
        }
    }
}

/// SHA-256 of the check options (without name, labels and idempotency key, which do not change what
/// is checked), the sorted digests of the URL set and the sorted invalid entries.
fn unique_key(digests: &[u128], invalid: &[InvalidEntry], options: &pb::JobOptions) -> String {
    let mut o = options.clone();
    o.name.clear();
    o.labels.clear();
    o.idempotency_key.clear();
    let mut h = Sha256::new();
    h.update(o.encode_to_vec());
    for d in digests {
        h.update(d.to_le_bytes());
    }
    let mut inv: Vec<&str> = invalid.iter().map(|e| e.input.as_str()).collect();
    inv.sort_unstable();
    for i in inv {
        h.update(b"!");
        h.update(i.as_bytes());
        h.update(b"\n");
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_collapse_and_invalid_entries_are_kept_with_reasons() {
        let mut p = Planner::new(&pb::JobOptions::default(), 1);
        for e in ["http://a.example/x", "HTTP://A.example:80/x#f", "", "ftp://b.example/", "nope", "nope"] {
            p.push(e);
        }
        let urls = p.take(0, 10);
        let plan = p.finish(&pb::JobOptions::default());
        assert_eq!(plan.received, 5);
        assert_eq!(plan.duplicates, 2);
        assert_eq!(urls.len(), 1);
        assert_eq!(urls[0].url, "http://a.example/x");
        assert_eq!(plan.invalid.len(), 2);
        assert!(plan.invalid[0].reason.contains("scheme"));
        assert_eq!(plan.total, 3);
        assert_eq!(plan.priority, 1);
    }

    #[test]
    fn unique_key_ignores_order_and_names_but_not_options() {
        let plan_of = |urls: &[&str], o: &pb::JobOptions| {
            let mut p = Planner::new(&pb::JobOptions::default(), 1);
            urls.iter().for_each(|u| p.push(u));
            p.take(0, usize::MAX);
            p.finish(o).unique_key
        };
        let a = plan_of(&["http://a.example/", "http://b.example/"], &pb::JobOptions::default());
        let named = pb::JobOptions { name: "x".into(), ..Default::default() };
        let b = plan_of(&["http://b.example/", "http://a.example/"], &named);
        assert_eq!(a, b);
        let forced = pb::JobOptions { force: true, ..Default::default() };
        assert_ne!(a, plan_of(&["http://a.example/", "http://b.example/"], &forced));
    }

    #[test]
    fn tracking_parameters_collapse_when_asked() {
        let o = pb::JobOptions { strip_tracking_params: true, ..Default::default() };
        let mut p = Planner::new(&o, 1);
        p.push("https://a.example/x?utm_source=mail");
        p.push("https://a.example/x?utm_source=feed&fbclid=1");
        p.push("https://a.example/x");
        let urls = p.take(0, 10);
        let plan = p.finish(&o);
        assert_eq!((urls.len(), plan.duplicates), (1, 2));
    }

    #[test]
    fn delay_follows_size() {
        assert_eq!(delay_for_size(10).as_secs(), 60);
        assert_eq!(delay_for_size(1_999).as_secs(), 300);
        assert_eq!(delay_for_size(4_999).as_secs(), 900);
        assert_eq!(delay_for_size(5_000).as_secs(), 1_800);
    }

    #[test]
    fn priority_follows_size() {
        assert_eq!(priority_for_size(499), 1);
        assert_eq!(priority_for_size(500), 2);
        assert_eq!(priority_for_size(4_999), 2);
        assert_eq!(priority_for_size(5_000), 3);
    }
}

#[cfg(test)]
mod lane_tests {
    use super::*;

    #[test]
    fn a_host_keeps_to_one_lane_and_every_url_is_taken_once() {
        let mut p = Planner::new(&pb::JobOptions::default(), 3);
        for i in 0..300 {
            p.push(&format!("http://h{}.example/{i}", i % 7));
        }
        assert_eq!(p.ready_total(), 300);
        let mut all = Vec::new();
        for lane in 0..p.lanes() {
            let batch = p.take(lane, usize::MAX);
            let hosts: HashSet<&str> = batch.iter().map(|u| u.host.as_str()).collect();
            for h in &hosts {
                assert_eq!(lane_of(h, 3), lane);
            }
            all.extend(batch.into_iter().map(|u| u.url));
        }
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 300);
        assert_eq!(p.ready_total(), 0);
    }
}
