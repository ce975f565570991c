//! The worker's metrics: checks by outcome class and status, check latency, checks in flight, host
//! pauses, hosts tracked.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use urlfleet_shared::CheckOutcome;
use urlfleet_shared::metrics::Registry;

/// Labels of a finished check.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    /// Outcome class: ok, redirected, broken, error, invalid.
    pub class: String,
    /// Outcome kind: ok, broken, timeout, dns, …
    pub kind: String,
    /// Final HTTP status, or "none".
    pub status: String,
}

/// The check engine's metrics.
#[derive(Debug)]
pub struct EngineMetrics {
    checks: Family<CheckLabels, Counter>,
    latency: Histogram,
    in_flight: Gauge,
    host_pauses: Counter,
    hosts_tracked: Gauge,
    registry: Arc<Registry>,
}

impl Default for EngineMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let checks = Family::<CheckLabels, Counter>::default();
        registry.register("urlfleet_checks", "Finished checks by outcome", checks.clone());
        let latency = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register("urlfleet_check_duration_seconds", "Duration of a check, retries included", latency.clone());
        let in_flight = Gauge::default();
        registry.register("urlfleet_checks_in_flight", "Checks running now", in_flight.clone());
        let host_pauses = Counter::default();
        registry.register("urlfleet_host_pauses", "Hosts paused after 429/503", host_pauses.clone());
        let hosts_tracked = Gauge::default();
        registry.register(
            "urlfleet_hosts_tracked",
            "Hosts whose politeness state (spacing, pause, penalty) the worker keeps",
            hosts_tracked.clone(),
        );
        Self { checks, latency, in_flight, host_pauses, hosts_tracked, registry: Arc::new(registry) }
    }
}

impl EngineMetrics {
    /// The registry to serve.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    pub(crate) fn started(&self) {
        self.in_flight.inc();
    }

    pub(crate) fn finished(&self, outcome: &CheckOutcome, seconds: f64) {
        self.in_flight.dec();
        self.latency.observe(seconds);
        let labels = CheckLabels {
            class: outcome.kind.class().as_str().to_string(),
            kind: outcome.kind.as_str().to_string(),
            status: outcome.status.map(|s| s.to_string()).unwrap_or_else(|| "none".into()),
        };
        self.checks.get_or_create(&labels).inc();
    }

    /// The gauge of hosts the politeness gate keeps a state for, which the gate sets.
    pub(crate) fn hosts_tracked(&self) -> Gauge {
        self.hosts_tracked.clone()
    }

    pub(crate) fn host_paused(&self) {
        self.host_pauses.inc();
    }
}
