//! Shared pieces of urlfleet: the wire contract, the domain types every role speaks, and the process
//! plumbing (telemetry, shutdown) that every binary uses the same way.
//!
//! # Layout
//! - [`proto`]: code generated from `proto/urlfleet/v1` (tonic + prost) and the reflection descriptor.
//! - [`url`]: URL normalization — the one place that decides what "the same URL" means.
//! - [`job`]: the domain core of jobs — options, priority, states, counters, the re-check policy —
//!   with no wire type in it.
//! - [`outcome`]: the outcome of a check as data, its classes, and a result as a worker reports it.
//! - [`plan`]: planning a submission as it streams in: normalize, collapse duplicates, set invalid
//!   entries aside, derive the priority and the unique key.
//! - [`policy`]: politeness: defaults, host policies and the strictest of two, lease budgets.
//! - [`convert`]: proto ↔ domain conversions, so wire types stay at the edge.
//! - [`telemetry`]: logs, OpenTelemetry traces and W3C context propagation.
//! - [`metrics`]: Prometheus text rendering and the `/metrics` endpoint.
//! - [`shutdown`]: one future for SIGINT / SIGTERM.
//! - [`time`]: wall-clock milliseconds, the unit of every stored timestamp.

pub mod connect;
pub mod convert;
pub mod inprocess;
pub mod job;
pub mod metrics;
pub mod outcome;
pub mod plan;
pub mod policy;
pub mod proto;
pub mod shutdown;
pub mod telemetry;
pub mod time;
pub mod url;

pub use job::{JobCounts, JobOptions, JobState, JobUrlState, Priority, RecheckPolicy, SitePoliteness};
pub use outcome::{CheckOutcome, OutcomeClass, OutcomeKind, RedirectHop, ReportedResult};
pub use policy::{HostPolicy, LeaseBudget};
pub use url::{NormalizedUrl, UrlError};
