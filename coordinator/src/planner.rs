//! Planning a submission: normalize each entry, collapse duplicates, set aside invalid entries, derive
//! the priority and the unique key that makes duplicate submissions return the existing job.

use std::collections::{HashMap, HashSet};

use prost::Message;
use sha2::{Digest, Sha256};
use urlfleet_shared::NormalizedUrl;
use urlfleet_shared::proto::v1 as pb;

use crate::store::{InvalidEntry, PlannedUrl, Priority};

/// Accumulates the entries of one submission.
#[derive(Debug, Default)]
pub struct Planner {
    strip_tracking: bool,
    received: u64,
    duplicates: u64,
    urls: HashMap<Box<str>, Box<str>>,
    invalid: Vec<InvalidEntry>,
    invalid_seen: HashSet<String>,
}

/// A planned submission.
#[derive(Debug)]
pub struct Plan {
    /// Distinct valid URLs, sorted.
    pub urls: Vec<PlannedUrl>,
    /// Distinct invalid entries, in arrival order.
    pub invalid: Vec<InvalidEntry>,
    /// Entries received (blank entries excluded).
    pub received: u64,
    /// Entries that collapsed into an identical earlier one.
    pub duplicates: u64,
    /// Effective priority.
    pub priority: Priority,
    /// Hash of the URL set and the check options.
    pub unique_key: String,
}

impl Plan {
    /// Distinct entries, valid and invalid.
    pub fn total(&self) -> u64 {
        (self.urls.len() + self.invalid.len()) as u64
    }
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

impl Planner {
    /// A planner that applies the options' normalization settings.
    pub fn new(options: &pb::JobOptions) -> Self {
        Self { strip_tracking: options.strip_tracking_params, ..Self::default() }
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
                if self.urls.contains_key(u.as_str()) {
                    self.duplicates += 1;
                } else {
                    self.urls.insert(u.as_str().into(), u.host().into());
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

    /// Finishes the plan.
    pub fn finish(self, options: &pb::JobOptions) -> Plan {
        let mut urls: Vec<PlannedUrl> =
            self.urls.into_iter().map(|(u, h)| PlannedUrl { url: u.into(), host: h.into(), max_leases: 1 }).collect();
        urls.sort_unstable_by(|a, b| a.url.cmp(&b.url));
        let total = (urls.len() + self.invalid.len()) as u64;
        let priority = match pb::Priority::try_from(options.priority).unwrap_or(pb::Priority::Unspecified) {
            pb::Priority::High => 1,
            pb::Priority::Medium => 2,
            pb::Priority::Low => 3,
            pb::Priority::Unspecified => priority_for_size(total),
        };
        let unique_key = unique_key(&urls, &self.invalid, options);
        Plan { urls, invalid: self.invalid, received: self.received, duplicates: self.duplicates, priority, unique_key }
    }
}

/// SHA-256 of the check options (without name, labels and idempotency key, which do not change what
/// is checked) and the sorted URL set.
fn unique_key(urls: &[PlannedUrl], invalid: &[InvalidEntry], options: &pb::JobOptions) -> String {
    let mut o = options.clone();
    o.name.clear();
    o.labels.clear();
    o.idempotency_key.clear();
    let mut h = Sha256::new();
    h.update(o.encode_to_vec());
    for u in urls {
        h.update(u.url.as_bytes());
        h.update(b"\n");
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
        let mut p = Planner::default();
        for e in ["http://a.example/x", "HTTP://A.example:80/x#f", "", "ftp://b.example/", "nope", "nope"] {
            p.push(e);
        }
        let plan = p.finish(&pb::JobOptions::default());
        assert_eq!(plan.received, 5);
        assert_eq!(plan.duplicates, 2);
        assert_eq!(plan.urls.len(), 1);
        assert_eq!(plan.invalid.len(), 2);
        assert!(plan.invalid[0].reason.contains("scheme"));
        assert_eq!(plan.total(), 3);
        assert_eq!(plan.priority, 1);
    }

    #[test]
    fn unique_key_ignores_order_and_names_but_not_options() {
        let plan_of = |urls: &[&str], o: &pb::JobOptions| {
            let mut p = Planner::default();
            urls.iter().for_each(|u| p.push(u));
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
        let mut p = Planner::new(&o);
        p.push("https://a.example/x?utm_source=mail");
        p.push("https://a.example/x?utm_source=feed&fbclid=1");
        p.push("https://a.example/x");
        let plan = p.finish(&o);
        assert_eq!((plan.urls.len(), plan.duplicates), (1, 2));
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
