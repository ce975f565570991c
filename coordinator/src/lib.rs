//! The urlfleet coordinator: it accepts jobs, plans their URLs into a per-host frontier, leases
//! host-partitioned batches to workers over one bidirectional stream each, ingests their results
//! idempotently and reports progress.
//!
//! # Layout
//! - [`store`]: the [`store::Store`] trait, PostgreSQL and SQLite implementations, migrations.
//! - [`jobs`]: the `JobService` gRPC handlers.
//! - [`work`]: the `WorkerService` gRPC handler: worker sessions, credits, leases, ingest, acks.
//! - [`events`]: in-process notifications (new work, job progress, revoked leases).
//! - [`metrics`]: leases, frontier depth, ingest rows, latency and backlog.
//! - [`ingest`]: the shared ingest pipeline: chunks, concurrent writers, ack after commit, backlog.
//! - [`server`]: wiring: [`server::run`] serves both services (plus health and reflection) on a
//!   listener until a shutdown future completes.
//! - [`config`]: the coordinator's typed configuration.

pub mod auth;
pub mod board;
pub mod config;
pub mod events;
pub mod ingest;
pub mod jobs;
pub mod metrics;
pub mod server;
pub mod store;
pub mod web;
pub mod work;

pub use config::CoordinatorConfig;
pub use server::{run, serve};
