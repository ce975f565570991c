//! Jobs as the domain sees them: options, priority, states, counters and the re-check policy. No wire
//! type appears here; `convert` maps the protobuf messages onto these at the edge, and the store keeps
//! them as columns and JSON.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::outcome::{OutcomeClass, OutcomeKind};
use crate::policy::{self, HostPolicy};

/// Scheduling priority: every URL of a higher priority is leased before any of a lower one on the
/// same host, and hosts with higher-priority work are leased first.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, strum::Display, strum::EnumString,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Priority {
    /// Small jobs (< 500 URLs) and urgent ones.
    High,
    /// Jobs of < 5,000 URLs.
    Medium,
    /// Everything else; also the priority of a job whose size is not known yet.
    Low,
}

impl Priority {
    /// The priority of a job of `n` distinct entries: < 500 high, < 5,000 medium, otherwise low.
    pub fn for_size(n: u64) -> Self {
        match n {
            0..500 => Self::High,
            500..5_000 => Self::Medium,
            _ => Self::Low,
        }
    }

    /// The stored rank: 1 high, 2 medium, 3 low (lower ranks are leased first).
    pub fn rank(self) -> i16 {
        match self {
            Self::High => 1,
            Self::Medium => 2,
            Self::Low => 3,
        }
    }

    /// The priority of a stored rank; `None` for a rank no priority has.
    pub fn from_rank(rank: i16) -> Option<Self> {
        match rank {
            1 => Some(Self::High),
            2 => Some(Self::Medium),
            3 => Some(Self::Low),
            _ => None,
        }
    }
}

/// Lifecycle state of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, strum::Display, strum::EnumString, strum::IntoStaticStr)]
#[strum(serialize_all = "lowercase")]
pub enum JobState {
    /// Its URLs are arriving (and those that arrived are being leased).
    Receiving,
    /// Accepted, nothing leased yet.
    Scheduled,
    /// Some URL leased, not all resolved.
    Running,
    /// Every URL resolved.
    Completed,
    /// Cancelled by a client.
    Cancelled,
}

impl JobState {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Whether the job has ended.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Cancelled)
    }
}

/// Where one URL of a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, strum::Display, strum::EnumString, strum::IntoStaticStr)]
#[strum(serialize_all = "lowercase")]
pub enum JobUrlState {
    /// Waiting in the frontier for a lease.
    Pending,
    /// In a worker's lease.
    Leased,
    /// Checked by this job.
    Done,
    /// Skipped by the re-check policy: its stored result counts.
    Fresh,
    /// Given up after its leases expired too often.
    Failed,
    /// Left unresolved by a cancellation.
    Cancelled,
}

impl JobUrlState {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Whether the URL has its answer for the job (a stored result or a verdict of failure).
    pub fn is_resolved(self) -> bool {
        matches!(self, Self::Done | Self::Fresh | Self::Failed)
    }
}

/// Counters of a job. Every distinct entry is in exactly one of `pending()`, `leased`, `checked`,
/// `fresh`, `invalid`, `failed` and `cancelled`; `ok` … `error` split the checked and fresh ones
/// (and the failed ones, which count as errors) by class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCounts {
    /// Entries received.
    pub received: u64,
    /// Distinct entries.
    pub total: u64,
    /// Collapsed duplicates.
    pub duplicates: u64,
    /// Leased right now.
    pub leased: u64,
    /// Checked by this job.
    pub checked: u64,
    /// Skipped by the re-check policy.
    pub fresh: u64,
    /// Invalid entries.
    pub invalid: u64,
    /// Given up after expired leases.
    pub failed: u64,
    /// Left unresolved by a cancellation.
    pub cancelled: u64,
    /// Outcome classes of checked and fresh URLs.
    pub ok: u64,
    /// See `ok`.
    pub redirected: u64,
    /// See `ok`.
    pub broken: u64,
    /// See `ok` (includes failed).
    pub error: u64,
}

impl JobCounts {
    /// URLs not resolved yet (waiting or leased).
    pub fn unresolved(&self) -> u64 {
        self.total.saturating_sub(self.checked + self.fresh + self.invalid + self.failed + self.cancelled)
    }

    /// URLs waiting for a lease.
    pub fn pending(&self) -> u64 {
        self.unresolved().saturating_sub(self.leased)
    }

    /// URLs whose outcome a CI gate fails on: broken, errors (failed included) and invalid entries.
    pub fn failures(&self) -> u64 {
        self.broken + self.error + self.invalid
    }
}

/// A change to a job's counters, built while a write is applied and added to the stored row at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CountsDelta {
    /// Change of `leased`.
    pub leased: i64,
    /// Change of `checked`.
    pub checked: i64,
    /// Change of `fresh`.
    pub fresh: i64,
    /// Change of `failed`.
    pub failed: i64,
    /// Change of `cancelled`.
    pub cancelled: i64,
    /// Change of `ok`.
    pub ok: i64,
    /// Change of `redirected`.
    pub redirected: i64,
    /// Change of `broken`.
    pub broken: i64,
    /// Change of `error`.
    pub error: i64,
}

impl CountsDelta {
    /// Counts one URL in its outcome class (invalid outcomes count as errors: an invalid entry has
    /// its own counter, so a URL that reaches a check never is one).
    pub fn add_class(&mut self, class: OutcomeClass) {
        match class {
            OutcomeClass::Ok => self.ok += 1,
            OutcomeClass::Redirected => self.redirected += 1,
            OutcomeClass::Broken => self.broken += 1,
            OutcomeClass::Error | OutcomeClass::Invalid => self.error += 1,
        }
    }
}

/// Politeness a job asks for, on top of the coordinator's: unset fields inherit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PolicyOverride {
    /// Maximum concurrent requests to the host.
    pub concurrency: Option<u32>,
    /// Minimum interval between two request starts, in milliseconds.
    pub interval_ms: Option<u64>,
}

impl PolicyOverride {
    /// The policy with these settings laid over `base`.
    pub fn over(&self, base: HostPolicy) -> HostPolicy {
        base.with(self.concurrency, self.interval_ms.map(Duration::from_millis))
    }
}

/// The options of a job, as the client gave them (defaults filled in where the wire says "unset").
/// Stored as JSON: a field this version does not know (written by a newer coordinator sharing the
/// database during an upgrade) is ignored; a value that does not parse is an error.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobOptions {
    /// Display name.
    pub name: String,
    /// Explicit priority; `None` derives it from the size.
    pub priority: Option<Priority>,
    /// Check every URL even when its stored result is fresh.
    pub force: bool,
    /// Politeness for every host of the job.
    pub politeness: PolicyOverride,
    /// Politeness per host (lowercase punycode host, with port when not the default).
    pub host_policies: BTreeMap<String, PolicyOverride>,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
    /// Client idempotency key.
    pub idempotency_key: Option<String>,
    /// Earliest lease time (ms since epoch); `None` for now.
    pub not_before_ms: Option<i64>,
    /// A healthy URL checked more recently than this is fresh (default 7 days).
    pub recheck_after_ms: Option<u64>,
    /// A URL whose stored outcome is a failure checked more recently than this is fresh (default 3 days).
    pub recheck_broken_after_ms: Option<u64>,
    /// Drop tracking parameters when normalizing.
    pub strip_tracking_params: bool,
    /// Delay the job by its size (see [`delay_for_size`]) when no `not_before_ms` is given.
    pub delay_by_size: bool,
}

impl JobOptions {
    /// The re-check policy these options ask for.
    pub fn recheck(&self) -> RecheckPolicy {
        let or = |ms: Option<u64>, d: Duration| ms.filter(|m| *m > 0).map_or(d, Duration::from_millis);
        RecheckPolicy {
            force: self.force,
            recheck_after: or(self.recheck_after_ms, policy::DEFAULT_RECHECK_AFTER),
            recheck_broken_after: or(self.recheck_broken_after_ms, policy::DEFAULT_RECHECK_BROKEN_AFTER),
        }
    }

    /// What decides which URLs are checked and how, for the duplicate check: the options without
    /// name, labels and idempotency key. Stable across runs (maps are ordered).
    pub fn check_fingerprint(&self) -> Vec<u8> {
        let o = Self { name: String::new(), labels: BTreeMap::new(), idempotency_key: None, ..self.clone() };
        serde_json::to_vec(&o).expect("job options serialize")
    }

    /// Whether the job waits until its size is known, to be delayed by it.
    pub fn waits_for_size(&self) -> bool {
        self.not_before_ms.is_none() && self.delay_by_size
    }

    /// The politeness one of the job's hosts gets from the job: its default, then its setting for
    /// the host, over `base`; the coordinator's own setting for the host (`site`) goes between the two.
    pub fn politeness_for(&self, host: &str, base: HostPolicy, site: Option<&PolicyOverride>) -> HostPolicy {
        let p = self.politeness.over(base);
        let p = site.map_or(p, |s| s.over(p));
        self.host_policies.get(host).map_or(p, |o| o.over(p))
    }
}

/// How a coordinator judges politeness: its default for every host and its settings per host, under
/// each job's own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SitePoliteness {
    /// Politeness of every host unless something says otherwise.
    pub base: HostPolicy,
    /// Per-host settings, between a job's default and the job's own per-host setting.
    pub hosts: Vec<(String, PolicyOverride)>,
}

impl SitePoliteness {
    /// The politeness one job gets for `host`.
    pub fn for_job(&self, host: &str, job: &JobOptions) -> HostPolicy {
        let site = self.hosts.iter().find(|(h, _)| h == host).map(|(_, p)| p);
        job.politeness_for(host, self.base, site)
    }

    /// The politeness of a lease of `host` whose URLs belong to `jobs`: the strictest of theirs, so
    /// sharing a URL between jobs never makes a host's limits looser than any of them asked for.
    pub fn for_lease(&self, host: &str, jobs: &[JobOptions]) -> HostPolicy {
        jobs.iter()
            .map(|o| self.for_job(host, o))
            .reduce(HostPolicy::strictest)
            .unwrap_or_else(|| self.for_job(host, &JobOptions::default()))
    }
}

/// The optional delay of a job by its size: < 500 URLs 1 min, < 2,000 5 min, < 5,000 15 min, else
/// 30 min.
pub fn delay_for_size(n: u64) -> Duration {
    let min = match n {
        0..500 => 1,
        500..2_000 => 5,
        2_000..5_000 => 15,
        _ => 30,
    };
    Duration::from_secs(60 * min)
}

/// The re-check policy applied when URLs are added to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecheckPolicy {
    /// Check everything.
    pub force: bool,
    /// A healthy URL checked more recently than this is fresh.
    pub recheck_after: Duration,
    /// A URL with a failing stored outcome checked more recently than this is fresh.
    pub recheck_broken_after: Duration,
}

impl Default for RecheckPolicy {
    fn default() -> Self {
        JobOptions::default().recheck()
    }
}

/// What is stored about a URL when a job asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredCheck {
    /// Outcome kind of the latest check.
    pub kind: Option<OutcomeKind>,
    /// Its status.
    pub status: Option<u16>,
    /// When it was made.
    pub checked_at_ms: i64,
}

impl StoredCheck {
    /// Whether the stored outcome is a failure: a status ≥ 400 or a failing kind.
    pub fn is_failing(&self) -> bool {
        self.status.is_some_and(|s| s >= 400) || self.kind.is_some_and(|k| k.class().is_failure())
    }
}

/// Why a URL is checked: the frontier leases never-checked URLs first, then failing ones, then stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CheckReason {
    /// No stored result.
    NeverChecked,
    /// The stored result is a failure older than the broken re-check age (or forced).
    Failing,
    /// The stored result is older than the re-check age (or forced).
    Stale,
}

/// The verdict of the re-check policy on one URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recheck {
    /// Check it.
    Check(CheckReason),
    /// Keep its stored result.
    Fresh,
}

impl RecheckPolicy {
    /// The re-check rule, the one place it lives: never checked → check; a failing stored outcome
    /// older than `recheck_broken_after` → check; any other older than `recheck_after` → check;
    /// `force` checks everything stored; otherwise the stored result is fresh.
    pub fn judge(&self, stored: Option<&StoredCheck>, now_ms: i64) -> Recheck {
        let Some(s) = stored else { return Recheck::Check(CheckReason::NeverChecked) };
        let age = Duration::from_millis(u64::try_from(now_ms - s.checked_at_ms).unwrap_or(0));
        if s.is_failing() {
            if self.force || age >= self.recheck_broken_after {
                return Recheck::Check(CheckReason::Failing);
            }
        } else if self.force || age >= self.recheck_after {
            return Recheck::Check(CheckReason::Stale);
        }
        Recheck::Fresh
    }
}

/// The frontier's order of a URL: its job's priority first, then why it is checked. Stored as one
/// small integer per `job_urls` row, so a host's frontier is one index read in order.
pub fn frontier_order(priority: Priority, reason: CheckReason) -> i16 {
    priority.rank() * FRONTIER_ORDERS_PER_PRIORITY + reason as i16
}

/// How many frontier orders one priority spans: `order / FRONTIER_ORDERS_PER_PRIORITY` is the rank.
pub const FRONTIER_ORDERS_PER_PRIORITY: i16 = 10;

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 24 * 3600 * 1000;

    fn stored(status: u16, age_days: i64) -> StoredCheck {
        let kind = OutcomeKind::from_status(status, 0);
        StoredCheck { kind: Some(kind), status: Some(status), checked_at_ms: 100 * DAY - age_days * DAY }
    }

    #[test]
    fn the_recheck_policy_checks_new_stale_and_broken_urls() {
        let p = RecheckPolicy::default();
        let now = 100 * DAY;
        assert_eq!(p.judge(None, now), Recheck::Check(CheckReason::NeverChecked));
        assert_eq!(p.judge(Some(&stored(200, 6)), now), Recheck::Fresh);
        assert_eq!(p.judge(Some(&stored(200, 7)), now), Recheck::Check(CheckReason::Stale));
        assert_eq!(p.judge(Some(&stored(404, 2)), now), Recheck::Fresh);
        assert_eq!(p.judge(Some(&stored(404, 3)), now), Recheck::Check(CheckReason::Failing));
        let timeout = StoredCheck { kind: Some(OutcomeKind::Timeout), status: None, checked_at_ms: now - 3 * DAY };
        assert_eq!(p.judge(Some(&timeout), now), Recheck::Check(CheckReason::Failing));
        let forced = RecheckPolicy { force: true, ..p };
        assert_eq!(forced.judge(Some(&stored(200, 0)), now), Recheck::Check(CheckReason::Stale));
    }

    #[test]
    fn priority_follows_size_and_orders_the_frontier() {
        assert_eq!(Priority::for_size(499), Priority::High);
        assert_eq!(Priority::for_size(500), Priority::Medium);
        assert_eq!(Priority::for_size(4_999), Priority::Medium);
        assert_eq!(Priority::for_size(5_000), Priority::Low);
        let high_stale = frontier_order(Priority::High, CheckReason::Stale);
        let low_new = frontier_order(Priority::Low, CheckReason::NeverChecked);
        assert!(high_stale < low_new, "priority before reason");
        assert!(
            frontier_order(Priority::Low, CheckReason::Failing) < frontier_order(Priority::Low, CheckReason::Stale)
        );
        assert_eq!(low_new / FRONTIER_ORDERS_PER_PRIORITY, Priority::Low.rank());
        for p in [Priority::High, Priority::Medium, Priority::Low] {
            assert_eq!(Priority::from_rank(p.rank()), Some(p));
            assert_eq!(p.to_string().parse::<Priority>().unwrap(), p);
        }
    }

    #[test]
    fn delay_follows_size() {
        assert_eq!(delay_for_size(10).as_secs(), 60);
        assert_eq!(delay_for_size(1_999).as_secs(), 300);
        assert_eq!(delay_for_size(4_999).as_secs(), 900);
        assert_eq!(delay_for_size(5_000).as_secs(), 1_800);
    }

    #[test]
    fn options_round_trip_as_json_and_bad_values_are_errors() {
        let mut o = JobOptions { name: "n".into(), priority: Some(Priority::High), force: true, ..Default::default() };
        o.host_policies.insert("a.example".into(), PolicyOverride { concurrency: Some(4), interval_ms: Some(0) });
        o.labels.insert("team".into(), "seo".into());
        let json = serde_json::to_string(&o).unwrap();
        assert_eq!(serde_json::from_str::<JobOptions>(&json).unwrap(), o);
        assert!(serde_json::from_str::<JobOptions>(r#"{"force":"yes"}"#).is_err());
        assert!(serde_json::from_str::<JobOptions>("not json").is_err());
        let newer = serde_json::from_str::<JobOptions>(r#"{"force":true,"a_later_field":1}"#).unwrap();
        assert!(newer.force, "a newer coordinator's field is ignored, the rest read");
        let renamed = JobOptions { name: "other".into(), labels: BTreeMap::new(), ..o.clone() };
        assert_eq!(o.check_fingerprint(), renamed.check_fingerprint());
        assert_ne!(o.check_fingerprint(), JobOptions { force: false, ..o.clone() }.check_fingerprint());
    }

    #[test]
    fn host_politeness_layers_job_default_site_and_job_host() {
        let mut o =
            JobOptions { politeness: PolicyOverride { concurrency: Some(4), interval_ms: None }, ..Default::default() };
        o.host_policies.insert("a.example".into(), PolicyOverride { concurrency: None, interval_ms: Some(0) });
        let site = PolicyOverride { concurrency: Some(16), interval_ms: Some(250) };
        let base = HostPolicy::default();
        let a = o.politeness_for("a.example", base, Some(&site));
        assert_eq!((a.concurrency, a.interval), (16, Duration::ZERO), "the job's host setting wins");
        let b = o.politeness_for("b.example", base, None);
        assert_eq!((b.concurrency, b.interval), (4, base.interval));
    }
}
