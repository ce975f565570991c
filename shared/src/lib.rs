//! Shared pieces of urlfleet: the wire contract, the domain types every role speaks, and the process
//! plumbing (telemetry, shutdown) that every binary uses the same way.
//!
//! # Layout
//! - [`proto`]: code generated from `proto/urlfleet/v1` (tonic + prost) and the reflection descriptor.
//! - [`url`]: URL normalization — the one place that decides what "the same URL" means.
//! - [`outcome`]: the outcome of a check as data, and its classes.
//! - [`policy`]: politeness settings and the defaults every role shares.
//! - [`convert`]: proto ↔ domain conversions, so wire types stay at the edge.
//! - [`telemetry`]: logs, OpenTelemetry traces and W3C context propagation.
//! - [`metrics`]: Prometheus text rendering and the `/metrics` endpoint.
//! - [`shutdown`]: one future for SIGINT / SIGTERM.
//! - [`time`]: wall-clock milliseconds, the unit of every stored timestamp.

pub mod convert;
pub mod metrics;
pub mod outcome;
pub mod policy;
pub mod proto;
pub mod shutdown;
pub mod telemetry;
pub mod time;
pub mod url;

pub use outcome::{CheckOutcome, OutcomeClass, OutcomeKind, RedirectHop};
pub use policy::HostPolicy;
pub use url::{NormalizedUrl, UrlError};
