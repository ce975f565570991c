//! Checking a list with no store: the entries are planned as a submission would be (normalized,
//! deduplicated, invalid ones set aside), then each host's URLs go to the check engine with the
//! politeness a lease of that host would carry, many hosts at once (a host waiting for its interval
//! holds no slot another host could use). Only failures are kept in memory.
//! Nothing is written anywhere: this is the verdict a CI gate needs, on the same rules as a stored run.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{Stream, StreamExt};

use crate::engine::check_batch;
use tokio_util::sync::CancellationToken;
use urlfleet_shared::job::{CountsDelta, JobCounts, JobOptions, PolicyOverride};
use urlfleet_shared::plan::{Entry, InvalidEntry, Planner};
use urlfleet_shared::{CheckOutcome, HostPolicy, OutcomeClass};

use crate::engine::{Engine, EngineConfig, EngineError};

/// What a store-less check runs with.
#[derive(Debug, Clone)]
pub struct DirectCheck {
    /// The check engine's settings.
    pub engine: EngineConfig,
    /// The job's options (politeness, normalization).
    pub options: JobOptions,
    /// Politeness of every host unless something says otherwise.
    pub base: HostPolicy,
    /// Politeness per host, between the job's default and its own per-host setting.
    pub site_policies: Vec<(String, PolicyOverride)>,
    /// The classes whose results are kept for the report (the failures by default); the others
    /// are only counted.
    pub keep: Vec<OutcomeClass>,
}

impl DirectCheck {
    /// A check keeping the failures.
    pub fn new(engine: EngineConfig, options: JobOptions, base: HostPolicy) -> Self {
        let keep = vec![OutcomeClass::Broken, OutcomeClass::Error];
        Self { engine, options, base, site_policies: Vec::new(), keep }
    }
}

/// How far a store-less check is: read by a progress display while it runs.
#[derive(Debug, Default)]
pub struct Progress {
    /// Distinct URLs to check (known once the list is read; 0 before).
    pub total: AtomicU64,
    /// URLs checked so far.
    pub checked: AtomicU64,
    /// Hosts being checked now.
    pub hosts_under_way: AtomicU64,
    /// The most hosts that were being checked at once.
    pub most_hosts_at_once: AtomicU64,
}

/// Hosts checked at once, per request the engine may have in flight. A polite host uses a slot for
/// a request's time once per interval, so the slots stay busy only with many hosts under way; but a
/// host under way holds a check parked at the gate, a few kilobytes, and a list of a million hosts
/// of one URL each would park a million of them. Past this many, a host starts when another is done.
const HOSTS_PER_SLOT: usize = 32;

/// A URL whose check failed, with its outcome.
#[derive(Debug, Clone)]
pub struct Failed {
    /// The normalized URL.
    pub url: String,
    /// Its outcome.
    pub outcome: CheckOutcome,
}

/// The verdict on a list.
#[derive(Debug, Default)]
pub struct Report {
    /// Counts, as a job's would be (nothing is fresh: there is no stored state).
    pub counts: JobCounts,
    /// Results of the kept classes, sorted by URL.
    pub failed: Vec<Failed>,
    /// Entries that are not checkable URLs, in input order.
    pub invalid: Vec<InvalidEntry>,
    /// Whether the run was cancelled before every URL was checked.
    pub interrupted: bool,
}

/// Entries planned between two takes of the planner's URLs.
const TAKE_EVERY: usize = 4_096;

/// Checks every entry of `entries` (blank entries are ignored). Cancelling `cancel` stops the checks
/// in progress: their URLs are reported as errors.
pub async fn check_list<E>(
    entries: impl Stream<Item = Result<Entry, E>>,
    check: &DirectCheck,
    cancel: &CancellationToken,
    progress: &Progress,
) -> Result<Report, DirectError<E>> {
    let mut planner = Planner::new(&check.options, 1);
    // Each URL is held once, in its host's text, from the moment it is planned: a planned URL also
    // carries its host and position, which only a submission needs.
    let mut by_host: BTreeMap<String, HostUrls> = BTreeMap::new();
    let mut take = |planner: &mut Planner| {
        for u in planner.take(0, usize::MAX) {
            by_host.entry(u.host).or_default().push(&u.url);
        }
    };
    futures::pin_mut!(entries);
    let mut planned = 0usize;
    while let Some(entry) = entries.next().await {
        planner.push_entry(&entry.map_err(DirectError::Input)?);
        planned += 1;
        if planned.is_multiple_of(TAKE_EVERY) {
            take(&mut planner);
        }
    }
    take(&mut planner);
    progress.total.store(by_host.values().map(|v| v.len() as u64).sum(), Ordering::Relaxed);
    let plan = planner.tally();
    let engine = Engine::new(check.engine.clone()).map_err(DirectError::Engine)?;
    // Many hosts at once: a host waiting for its interval holds no slot (see `check_batch`), so the
    // engine's bound on requests in flight, and each host's pace, are the limits that matter.
    let tally = Mutex::new((CountsDelta::default(), Vec::new()));
    let hosts = by_host.into_iter().map(|(host, urls)| {
        let site = check.site_policies.iter().find(|(h, _)| *h == host).map(|(_, p)| p);
        let policy = check.options.politeness_for(&host, check.base, site);
        let (engine, tally) = (&engine, &tally);
        async move {
            let now = progress.hosts_under_way.fetch_add(1, Ordering::Relaxed) + 1;
            progress.most_hosts_at_once.fetch_max(now, Ordering::Relaxed);
            // A URL's key is its place in the host's text, which names it in the report if it fails.
            check_batch(engine, urls.iter(), policy, cancel, None, |i, outcome| {
                let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                t.0.checked += 1;
                t.0.add_class(outcome.kind.class());
                progress.checked.fetch_add(1, Ordering::Relaxed);
                if check.keep.contains(&outcome.kind.class()) {
                    t.1.push(Failed { url: urls.get(i).to_string(), outcome });
                }
            })
            .await;
            progress.hosts_under_way.fetch_sub(1, Ordering::Relaxed);
        }
    });
    let at_once = check.engine.concurrency.max(1) * HOSTS_PER_SLOT;
    futures::stream::iter(hosts).buffer_unordered(at_once).for_each(|()| async {}).await;
    let (delta, mut failed) = tally.into_inner().unwrap_or_else(|e| e.into_inner());
    failed.sort_by(|a, b| a.url.cmp(&b.url));
    let n = |v: i64| v.max(0) as u64;
    let counts = JobCounts {
        received: plan.received,
        total: plan.total,
        duplicates: plan.duplicates,
        checked: n(delta.checked),
        invalid: plan.invalid.len() as u64,
        ok: n(delta.ok),
        redirected: n(delta.redirected),
        broken: n(delta.broken),
        error: n(delta.error),
        ..JobCounts::default()
    };
    Ok(Report { counts, failed, invalid: plan.invalid, interrupted: cancel.is_cancelled() })
}

/// One host's URLs as one text and where each ends: a million URLs cost their bytes and an offset
/// each, not an allocation each.
#[derive(Default)]
struct HostUrls {
    text: String,
    ends: Vec<usize>,
}

impl HostUrls {
    fn push(&mut self, url: &str) {
        self.text.push_str(url);
        self.ends.push(self.text.len());
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.text[start..self.ends[i]]
    }

    /// Each URL with its place, in order, as an owned string made when its check starts.
    fn iter(&self) -> impl ExactSizeIterator<Item = (usize, String)> + '_ {
        (0..self.len()).map(|i| (i, self.get(i).to_string()))
    }
}

/// Why a store-less check could not run.
#[derive(Debug, thiserror::Error)]
pub enum DirectError<E> {
    /// Reading the entries failed.
    #[error("reading the URL list: {0}")]
    Input(E),
    /// The engine could not be built (TLS setup).
    #[error(transparent)]
    Engine(EngineError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hosts_urls_come_back_as_they_went_in() {
        let urls = ["http://a.example/", "http://a.example/é?q=1", "http://a.example/x/y#", "http://a.example/"];
        let mut h = HostUrls::default();
        urls.iter().for_each(|u| h.push(u));
        assert_eq!(h.len(), 4);
        assert_eq!((0..h.len()).map(|i| h.get(i)).collect::<Vec<_>>(), urls);
        let listed: Vec<(usize, String)> = h.iter().collect();
        assert_eq!(listed, urls.iter().enumerate().map(|(i, u)| (i, u.to_string())).collect::<Vec<_>>());
        assert_eq!(h.iter().len(), 4);
    }
}
