//! Politeness settings and the defaults every role shares (see `DESIGN.md` for their sources).

use std::time::Duration;

/// Default maximum concurrent requests to one host.
pub const DEFAULT_HOST_CONCURRENCY: u32 = 2;
/// Default minimum interval between two request starts to one host.
pub const DEFAULT_HOST_INTERVAL: Duration = Duration::from_millis(100);
/// Default maximum in-flight checks per worker.
pub const DEFAULT_WORKER_CONCURRENCY: u32 = 128;
/// Default lease time to live.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);
/// Default maximum URLs in one lease.
pub const DEFAULT_LEASE_SIZE: u32 = 100;
/// Work a lease of a polite host holds at the host's pace: 50 URLs at the default 100 ms interval.
pub const DEFAULT_LEASE_SPAN: Duration = Duration::from_secs(5);
/// URLs per lease of a host whose limits are lifted: at full speed a worker gets through 100 URLs of
/// one fast host in milliseconds, so leases that small would cost more in round trips than in checks.
pub const DEFAULT_LEASE_SIZE_LIFTED: u32 = 1_000;
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
