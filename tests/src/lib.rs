//! Test support for urlfleet's black-box tests: a fixture HTTP server, fresh databases, and helpers
//! that spawn coordinators and workers on port 0 — one helper crate, used by every test.
//!
//! # Layout
//! - [`fixture`]: the fixture HTTP server.
//! - [`db`]: a fresh SQLite file or PostgreSQL database per test.
//! - [`conformance`]: helpers of the store conformance suite, which runs every rule on both stores.
//! - [`cluster`]: coordinators and workers on port 0, a client, and [`cluster::eventually`].
//! - [`proxy`]: a TCP proxy a test can cut, freeze and restore (outages and partitions).

pub mod cluster;
pub mod conformance;
pub mod db;
pub mod fixture;
pub mod proxy;

pub use cluster::{Coordinator, Worker, eventually};
pub use db::{Backend, TestDb};
pub use fixture::Fixture;
pub use proxy::Proxy;
