//! Politeness: the defaults every role shares (see `DESIGN.md` for their sources), a host's policy
//! and the strictest of two, and the lease budget a host's policy gives it.

use std::time::Duration;

/// Default maximum concurrent requests to one host.
pub const DEFAULT_HOST_CONCURRENCY: u32 = 2;
/// Default minimum interval between two request starts to one host.
pub const DEFAULT_HOST_INTERVAL: Duration = Duration::from_millis(100);
/// Default maximum in-flight checks per worker.
pub const DEFAULT_WORKER_CONCURRENCY: u32 = 128;
/// Default lease time to live.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);
/// How often a worker sends a heartbeat (leases or not): a tenth of the lease TTL, between 100 ms and
/// 3 s. Both sides derive their timing from the TTL the coordinator announces in its welcome.
pub fn heartbeat_interval(lease_ttl: Duration) -> Duration {
    (lease_ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(3))
}

/// How long after sending a heartbeat that renewed a lease a worker may still start checks of it:
/// three heartbeat intervals. A session whose worker has been silent that long gets no new leases,
/// and one silent a heartbeat longer is ended and its leases given up: by then the worker has
/// stopped working on them, so giving them to another worker keeps each host's requests in one
/// place.
pub fn confirmation_window(lease_ttl: Duration) -> Duration {
    heartbeat_interval(lease_ttl) * 3
}

/// Default maximum URLs in one lease.
pub const DEFAULT_LEASE_SIZE: u32 = 100;
/// Work a lease of a polite host holds at the host's pace: 50 URLs at the default 100 ms interval.
pub const DEFAULT_LEASE_SPAN: Duration = Duration::from_secs(5);
/// URLs per lease of a host whose limits are lifted: at full speed a worker gets through 100 URLs of
/// one fast host in milliseconds, so leases that small would cost more in round trips than in checks.
pub const DEFAULT_LEASE_SIZE_LIFTED: u32 = 1_000;
/// Work of hosts whose limits are lifted that a worker holds at once, at the pace it has been
/// reporting: the rest of a fast job stays leasable, so every worker gets a share of it.
pub const DEFAULT_LIFTED_SPAN: Duration = Duration::from_millis(250);
/// Leases of one URL that may expire before it is given up as failed.
pub const DEFAULT_MAX_LEASE_ATTEMPTS: u32 = 3;
/// Default re-check age for healthy URLs.
pub const DEFAULT_RECHECK_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default re-check age for URLs whose stored status is >= 400.
pub const DEFAULT_RECHECK_BROKEN_AFTER: Duration = Duration::from_secs(3 * 24 * 3600);
/// Window in which an identical submission returns the existing job.
pub const DEFAULT_UNIQUE_WINDOW: Duration = Duration::from_secs(600);
/// Default coordinator gRPC address.
pub const DEFAULT_COORDINATOR_ADDR: &str = "127.0.0.1:7700";

/// Effective politeness for one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPolicy {
    /// Maximum concurrent requests to the host (at least 1).
    pub concurrency: u32,
    /// Minimum interval between request starts.
    pub interval: Duration,
}

impl Default for HostPolicy {
    fn default() -> Self {
        Self { concurrency: DEFAULT_HOST_CONCURRENCY, interval: DEFAULT_HOST_INTERVAL }
    }
}

impl HostPolicy {
    /// No politeness limits beyond the worker's global bound (for one's own site).
    pub fn unlimited() -> Self {
        Self { concurrency: DEFAULT_WORKER_CONCURRENCY, interval: Duration::ZERO }
    }

    /// The stricter of two policies: the fewer concurrent requests and the longer interval. A lease
    /// whose URLs belong to several jobs gets the strictest of their policies.
    pub fn strictest(self, other: Self) -> Self {
        Self { concurrency: self.concurrency.min(other.concurrency), interval: self.interval.max(other.interval) }
    }

    /// Overlays optional settings on this policy.
    pub fn with(self, concurrency: Option<u32>, interval: Option<Duration>) -> Self {
        Self {
            concurrency: concurrency.filter(|c| *c > 0).unwrap_or(self.concurrency),
            interval: interval.unwrap_or(self.interval),
        }
    }
}

/// The leases one host gets: how many at once and how many URLs each may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseBudget {
    /// Leases the host may have at once: 1 for a polite host, more when its limits were lifted.
    pub max_leases: u32,
    /// URLs one lease may hold; 0 is no bound of its own (the request's bound holds).
    pub lease_urls: u32,
}

impl LeaseBudget {
    /// The budget of a host with `policy`: a polite host is leased to one worker at a time, in leases
    /// of about `span` of requests at its pace (no bound of its own when `span` is zero); a host
    /// whose limits are lifted may be leased `lifted_leases` times at once.
    pub fn for_policy(policy: &HostPolicy, span: Duration, lifted_leases: u32) -> Self {
        if policy.interval.is_zero() {
            return Self { max_leases: lifted_leases.max(1), lease_urls: 0 };
        }
        if span.is_zero() {
            return Self { max_leases: 1, lease_urls: 0 };
        }
        let at_pace = span.as_nanos() / policy.interval.as_nanos();
        Self { max_leases: 1, lease_urls: u32::try_from(at_pace).unwrap_or(u32::MAX).max(1) }
    }

    /// The stricter of two budgets, field by field: the fewest leases at once and the smallest
    /// leases (a bound beats no bound). While a host has work of several jobs, this holds.
    pub fn stricter(self, other: Self) -> Self {
        let lease_urls = match (self.lease_urls, other.lease_urls) {
            (0, n) | (n, 0) => n,
            (a, b) => a.min(b),
        };
        Self { max_leases: self.max_leases.min(other.max_leases).max(1), lease_urls }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_polite_host_is_leased_a_span_of_work_at_its_pace() {
        let span = Duration::from_secs(5);
        let at = |ms: u64| {
            let b =
                LeaseBudget::for_policy(&HostPolicy { concurrency: 2, interval: Duration::from_millis(ms) }, span, 8);
            (b.max_leases, b.lease_urls)
        };
        assert_eq!(at(100), (1, 50), "the default pace: 50 URLs for 5 s");
        assert_eq!(at(1_000), (1, 5));
        assert_eq!(at(7_000), (1, 1), "at least one URL");
        assert_eq!(at(0), (8, 0), "lifted limits: several leases, no bound of their own");
        let polite = HostPolicy { concurrency: 2, interval: Duration::from_millis(100) };
        assert_eq!(LeaseBudget::for_policy(&polite, Duration::ZERO, 8), LeaseBudget { max_leases: 1, lease_urls: 0 });
    }

    #[test]
    fn the_stricter_budget_wins_field_by_field() {
        let polite = LeaseBudget { max_leases: 1, lease_urls: 50 };
        let lifted = LeaseBudget { max_leases: 8, lease_urls: 0 };
        let slow = LeaseBudget { max_leases: 1, lease_urls: 5 };
        assert_eq!(polite.stricter(lifted), polite);
        assert_eq!(lifted.stricter(polite), polite);
        assert_eq!(polite.stricter(slow), slow);
        assert_eq!(lifted.stricter(lifted), lifted);
        assert_eq!(LeaseBudget { max_leases: 1, lease_urls: 0 }.stricter(slow), slow);
    }
}
