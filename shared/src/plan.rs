//! Planning a submission as it streams in: normalize each entry, collapse duplicates, set aside
//! invalid entries, hand out distinct URLs in batches to be stored, and at the end derive the
//! priority and the unique key that makes duplicate submissions return the existing job.
//!
//! Only a 128-bit digest of each distinct URL stays in memory once its batch is taken, so a
//! million-URL submission costs tens of megabytes, not its text.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

use crate::job::{JobOptions, Priority};
use crate::policy::LeaseBudget;
use crate::url::NormalizedUrl;
use sha2::{Digest, Sha256};

/// A distinct valid URL of a submission, ready to persist or check.
#[derive(Debug, Clone)]
pub struct PlannedUrl {
    /// Normalized URL.
    pub url: String,
    /// Its host key.
    pub host: String,
    /// The leases this job's politeness gives the host.
    pub budget: LeaseBudget,
    /// Position among the submission's distinct URLs, in arrival order. A host's URLs of one
    /// priority and class are leased by it, so jobs of equal priority sharing a host advance in turn
    /// (the k-th URL of each before the (k+1)-th of any), and a job that arrives late is not queued
    /// behind everything an earlier one still has.
    pub seq: u64,
}

impl PlannedUrl {
    /// A URL of `host` at position `seq`, with a polite host's budget (one lease at a time, no bound
    /// of its own) until the submission sets the job's.
    pub fn new(url: impl Into<String>, host: impl Into<String>, seq: u64) -> Self {
        Self { url: url.into(), host: host.into(), budget: LeaseBudget { max_leases: 1, lease_urls: 0 }, seq }
    }
}

/// An input entry that is not a checkable URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidEntry {
    /// The input as given.
    pub input: String,
    /// Why it is invalid.
    pub reason: String,
}

/// One entry of an input: text to read as a URL, or something the reader found unreadable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// Text to normalize as a URL (it may still turn out invalid).
    Url(String),
    /// An entry the reader could not take as text at all, with its reason and place.
    Invalid(InvalidEntry),
}

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
    /// An invalid entry is kept cut to this many bytes.
    invalid_entry_bytes: usize,
}

/// Bytes of an invalid entry kept by default.
pub const DEFAULT_INVALID_ENTRY_BYTES: usize = 1_024;

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

/// The lane of a host (FNV-1a of its name).
fn lane_of(host: &str, lanes: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in host.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (h % lanes as u64) as usize
}

impl Planner {
    /// A planner that applies the options' normalization settings and splits URLs into `lanes` by
    /// host: batches of different lanes share no host, so writers working on them in parallel never
    /// wait for each other's rows of the host frontier.
    pub fn new(options: &JobOptions, lanes: usize) -> Self {
        Self {
            strip_tracking: options.strip_tracking_params,
            ready: (0..lanes.max(1)).map(|_| Vec::new()).collect(),
            invalid_entry_bytes: DEFAULT_INVALID_ENTRY_BYTES,
            ..Self::default()
        }
    }

    /// Distinct invalid entries so far (held in memory until the end).
    pub fn invalid_entries(&self) -> usize {
        self.invalid.len()
    }

    /// Keeps invalid entries cut to `bytes` (they are listed back, and held until the end).
    pub fn with_invalid_entry_bytes(mut self, bytes: usize) -> Self {
        self.invalid_entry_bytes = bytes.max(16);
        self
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
                    self.ready[lane].push(PlannedUrl::new(u.as_str(), u.host(), seq));
                } else {
                    self.duplicates += 1;
                }
            }
            Err(e) => {
                let kept = crate::convert::truncate(entry.to_string(), self.invalid_entry_bytes);
                if self.invalid_seen.insert(kept.clone()) {
                    // The reason may quote the entry (its scheme): it is bounded too.
                    let reason = crate::convert::truncate(e.to_string(), self.invalid_entry_bytes);
                    self.invalid.push(InvalidEntry { input: kept, reason });
                } else {
                    self.duplicates += 1;
                }
            }
        }
    }

    /// Adds an entry of either kind.
    pub fn push_entry(&mut self, entry: &Entry) {
        match entry {
            Entry::Url(u) => self.push(u),
            Entry::Invalid(e) => self.push_invalid(&e.input, &e.reason),
        }
    }

    /// Adds an entry the client could not read as a URL, with its reason (kept cut like any
    /// invalid entry). It counts as received, and as invalid.
    pub fn push_invalid(&mut self, input: &str, reason: &str) {
        self.received += 1;
        let kept = crate::convert::truncate(input.to_string(), self.invalid_entry_bytes);
        let reason = crate::convert::truncate(reason.to_string(), self.invalid_entry_bytes);
        // The reason names where the entry was: two unreadable lines are two entries.
        if self.invalid_seen.insert(format!("{reason}\0{kept}")) {
            self.invalid.push(InvalidEntry { input: kept, reason });
        } else {
            self.duplicates += 1;
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
    pub fn finish(self, options: &JobOptions) -> Plan {
        debug_assert!(self.ready.iter().all(Vec::is_empty), "URLs left untaken");
        let total = (self.seen.len() + self.invalid.len()) as u64;
        let priority = options.priority.unwrap_or_else(|| Priority::for_size(total));
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

    /// Finishes a plan that is not submitted (a check with no store): its counts and invalid
    /// entries, without the unique key a submission is known by. The digests of the URL set are
    /// freed here, before any URL is checked.
    pub fn tally(self) -> Tally {
        debug_assert!(self.ready.iter().all(Vec::is_empty), "URLs left untaken");
        Tally {
            total: (self.seen.len() + self.invalid.len()) as u64,
            invalid: self.invalid,
            received: self.received,
            duplicates: self.duplicates,
        }
    }
}

/// What a plan that is not submitted counts (see [`Planner::tally`]).
#[derive(Debug)]
pub struct Tally {
    /// Distinct invalid entries, in arrival order.
    pub invalid: Vec<InvalidEntry>,
    /// Entries received (blank entries excluded).
    pub received: u64,
    /// Entries that collapsed into an identical earlier one.
    pub duplicates: u64,
    /// Distinct entries, valid and invalid.
    pub total: u64,
}

/// SHA-256 of the check options (without name, labels and idempotency key, which do not change what
/// is checked), the sorted digests of the URL set and the sorted invalid entries.
fn unique_key(digests: &[u128], invalid: &[InvalidEntry], options: &JobOptions) -> String {
    let mut h = Sha256::new();
    h.update(options.check_fingerprint());
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
        let mut p = Planner::new(&JobOptions::default(), 1);
        for e in ["http://a.example/x", "HTTP://A.example:80/x#f", "", "ftp://b.example/", "nope", "nope"] {
            p.push(e);
        }
        let urls = p.take(0, 10);
        let plan = p.finish(&JobOptions::default());
        assert_eq!(plan.received, 5);
        assert_eq!(plan.duplicates, 2);
        assert_eq!(urls.len(), 1);
        assert_eq!(urls[0].url, "http://a.example/x");
        assert_eq!(plan.invalid.len(), 2);
        assert!(plan.invalid[0].reason.contains("scheme"));
        assert_eq!(plan.total, 3);
        assert_eq!(plan.priority, Priority::High);
    }

    #[test]
    fn a_tally_counts_as_the_finished_plan_does() {
        let entries = ["http://a.example/x", "HTTP://A.example:80/x#f", "", "ftp://b.example/", "nope", "nope"];
        let planned = |entries: &[&str]| {
            let mut p = Planner::new(&JobOptions::default(), 1);
            entries.iter().for_each(|e| p.push(e));
            p.take(0, usize::MAX);
            p
        };
        let plan = planned(&entries).finish(&JobOptions::default());
        let tally = planned(&entries).tally();
        assert_eq!((tally.received, tally.duplicates, tally.total), (plan.received, plan.duplicates, plan.total));
        assert_eq!((tally.received, tally.duplicates, tally.total), (5, 2, 3));
        assert_eq!(tally.invalid, plan.invalid);
    }

    #[test]
    fn unique_key_ignores_order_and_names_but_not_options() {
        let plan_of = |urls: &[&str], o: &JobOptions| {
            let mut p = Planner::new(&JobOptions::default(), 1);
            urls.iter().for_each(|u| p.push(u));
            p.take(0, usize::MAX);
            p.finish(o).unique_key
        };
        let a = plan_of(&["http://a.example/", "http://b.example/"], &JobOptions::default());
        let named = JobOptions { name: "x".into(), ..Default::default() };
        let b = plan_of(&["http://b.example/", "http://a.example/"], &named);
        assert_eq!(a, b);
        let forced = JobOptions { force: true, ..Default::default() };
        assert_ne!(a, plan_of(&["http://a.example/", "http://b.example/"], &forced));
    }

    #[test]
    fn tracking_parameters_collapse_when_asked() {
        let o = JobOptions { strip_tracking_params: true, ..Default::default() };
        let mut p = Planner::new(&o, 1);
        p.push("https://a.example/x?utm_source=mail");
        p.push("https://a.example/x?utm_source=feed&fbclid=1");
        p.push("https://a.example/x");
        let urls = p.take(0, 10);
        let plan = p.finish(&o);
        assert_eq!((urls.len(), plan.duplicates), (1, 2));
    }
}

#[cfg(test)]
mod lane_tests {
    use super::*;

    #[test]
    fn a_host_keeps_to_one_lane_and_every_url_is_taken_once() {
        let mut p = Planner::new(&JobOptions::default(), 3);
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
