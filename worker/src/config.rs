//! The worker's configuration: one typed struct shared by flags and environment variables.

use std::time::Duration;

use urlfleet_shared::policy;

use crate::engine::{self, Cidr, EngineConfig};

/// URLs a worker holds by default: enough for a few thousand polite hosts' leases at once.
pub const DEFAULT_CREDITS: u32 = 65_536;

/// Configuration of a worker.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerConfig {
    /// Coordinator to work for.
    #[arg(long, env = "URLFLEET_COORDINATOR", default_value = "http://127.0.0.1:7700")]
    pub coordinator: String,
    /// Worker id, unique in the cluster (default: host name, process id and a random suffix).
    #[arg(long, env = "URLFLEET_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Maximum in-flight checks.
    #[arg(long, env = "URLFLEET_CONCURRENCY", default_value_t = policy::DEFAULT_WORKER_CONCURRENCY as usize)]
    pub concurrency: usize,
    /// URLs the worker holds at most (leased and not finished). Politeness throttles each host, so
    /// keeping many hosts in hand is what keeps the slots busy; a URL in hand is a queue entry, not a
    /// slot or a task, so holding many is cheap.
    #[arg(long, env = "URLFLEET_CREDITS", default_value_t = DEFAULT_CREDITS)]
    pub credits: u32,
    /// Connect timeout of one request.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// Total timeout of one attempt.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Retries after the first attempt of a transient failure.
    #[arg(long, default_value_t = engine::DEFAULT_RETRIES)]
    pub retries: u32,
    /// Back-off base between retries.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub backoff_base: Duration,
    /// Back-off cap between retries.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub backoff_cap: Duration,
    /// Redirects followed at most.
    #[arg(long, default_value_t = engine::DEFAULT_MAX_REDIRECTS)]
    pub max_redirects: usize,
    /// Networks the SSRF guard lets through (CIDR, repeatable or comma-separated), e.g. 127.0.0.0/8
    /// to check services on this machine. Everything non-public is refused otherwise.
    #[arg(long, env = "URLFLEET_ALLOW", value_delimiter = ',')]
    pub allow: Vec<Cidr>,
    /// Results per batch sent to the coordinator.
    #[arg(long, default_value_t = 500)]
    pub batch_size: usize,
    /// Longest a finished result waits before its batch is sent.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    pub batch_delay: Duration,
    /// Serve Prometheus metrics on this address (`GET /metrics`).
    #[arg(long, env = "URLFLEET_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// On shutdown, how long leased checks may run before they are abandoned.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// Token and TLS settings for the coordinator connection.
    #[command(flatten)]
    pub auth: urlfleet_shared::connect::ClientAuth,
    /// A coordinator in this process, reached without a socket (instead of `coordinator`).
    #[arg(skip)]
    pub in_process: Option<urlfleet_shared::inprocess::Connector>,
}

impl WorkerConfig {
    /// A configuration with every default, working for `coordinator`.
    pub fn new(coordinator: impl Into<String>) -> Self {
        Self {
            coordinator: coordinator.into(),
            worker_id: None,
            concurrency: policy::DEFAULT_WORKER_CONCURRENCY as usize,
            credits: DEFAULT_CREDITS,
            connect_timeout: engine::DEFAULT_CONNECT_TIMEOUT,
            timeout: engine::DEFAULT_REQUEST_TIMEOUT,
            retries: engine::DEFAULT_RETRIES,
            backoff_base: engine::DEFAULT_BACKOFF_BASE,
            backoff_cap: engine::DEFAULT_BACKOFF_CAP,
            max_redirects: engine::DEFAULT_MAX_REDIRECTS,
            allow: Vec::new(),
            batch_size: 500,
            batch_delay: Duration::from_millis(50),
            auth: Default::default(),
            in_process: None,
            shutdown_grace: Duration::from_secs(10),
            metrics_listen: None,
        }
    }

    /// The engine settings this configuration implies.
    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            concurrency: self.concurrency,
            connect_timeout: self.connect_timeout,
            request_timeout: self.timeout,
            retries: self.retries,
            backoff_base: self.backoff_base,
            backoff_cap: self.backoff_cap,
            max_redirects: self.max_redirects,
            allow: self.allow.clone(),
            ..EngineConfig::default()
        }
    }
}
