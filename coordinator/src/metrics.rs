//! The coordinator's metrics: leases granted and expired, leases active and frontier depth (read
//! from the store by the reaper), rows ingested, ingest latency and backlog.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use urlfleet_shared::metrics::Registry;

/// Counters of one coordinator.
#[derive(Debug)]
pub struct CoordinatorMetrics {
    /// Leases granted by this coordinator.
    pub leases_granted: Counter,
    /// Leases this coordinator found expired.
    pub leases_expired: Counter,
    /// Leases active in the store (all coordinators).
    pub leases_active: Gauge,
    /// Pending URLs on the frontier (all coordinators).
    pub frontier_pending: Gauge,
    /// Result rows committed by this coordinator.
    pub ingest_rows: Counter,
    /// Duration of one ingest transaction.
    pub ingest_seconds: Histogram,
    /// Results accepted and not yet committed.
    pub ingest_backlog: Gauge,
    /// Results refused: malformed, or not under a live lease the reporter holds.
    pub results_refused: Counter,
    registry: Arc<Registry>,
}

impl Default for CoordinatorMetrics {
    fn default() -> Self {
        let mut r = Registry::default();
        let leases_granted = Counter::default();
        r.register("urlfleet_leases_granted", "Leases granted", leases_granted.clone());
        let leases_expired = Counter::default();
        r.register("urlfleet_leases_expired", "Leases that expired", leases_expired.clone());
        let leases_active = Gauge::default();
        r.register("urlfleet_leases_active", "Leases active in the store", leases_active.clone());
        let frontier_pending = Gauge::default();
        r.register("urlfleet_frontier_pending", "URLs waiting for a lease", frontier_pending.clone());
        let ingest_rows = Counter::default();
        r.register("urlfleet_ingest_rows", "Result rows committed", ingest_rows.clone());
        let ingest_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        r.register(
            "urlfleet_ingest_chunk_duration_seconds",
            "Duration of one ingest transaction",
            ingest_seconds.clone(),
        );
        let ingest_backlog = Gauge::default();
        r.register("urlfleet_ingest_backlog", "Results accepted and not yet committed", ingest_backlog.clone());
        let results_refused = Counter::default();
        r.register(
            "urlfleet_results_refused",
            "Results refused: malformed, or not under a live lease the reporting worker holds",
            results_refused.clone(),
        );
        Self {
            results_refused,
            leases_granted,
            leases_expired,
            leases_active,
            frontier_pending,
            ingest_rows,
            ingest_seconds,
            ingest_backlog,
            registry: Arc::new(r),
        }
    }
}

impl CoordinatorMetrics {
    /// The registry to serve.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }
}
