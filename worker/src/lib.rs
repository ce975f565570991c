//! The urlfleet worker: it holds one session with a coordinator, checks the URLs leased to it with
//! bounded concurrency and per-host politeness, and reports results until they are acknowledged.
//!
//! # Layout
//! - [`direct`]: checking a list with no store or coordinator (`urlfleet check --no-store`).
//! - [`engine`]: the HTTP check engine (politeness gate, retries, redirects, SSRF guard).
//! - [`metrics`]: checks by outcome, latency, in-flight checks, host pauses.
//! - [`session`]: the coordinator session (credits, leases, result batches, acks, reconnects).
//! - [`config`]: the worker's typed configuration.

pub mod config;
pub mod direct;
pub mod engine;
pub mod metrics;
pub mod session;

pub use config::WorkerConfig;
pub use session::run;
