//! The coordinator's configuration: one typed struct shared by flags and environment variables.

use std::net::SocketAddr;
use std::time::Duration;

use urlfleet_shared::HostPolicy;
use urlfleet_shared::job::{JobOptions, PolicyOverride};
use urlfleet_shared::policy;
use urlfleet_shared::{LeaseBudget, SitePoliteness};

/// The most concurrent requests to one host a job may ask for, by default.
pub const DEFAULT_MAX_HOST_CONCURRENCY: u32 = 1_024;
/// Largest gRPC message accepted by default.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Outstanding credits of one worker session, at most, by default (a worker's default grant).
pub const DEFAULT_MAX_WORKER_CREDITS: u32 = 65_536;

/// Configuration of a coordinator.
#[derive(Debug, Clone, clap::Args)]
pub struct CoordinatorConfig {
    /// Address to serve gRPC on.
    #[arg(long, env = "URLFLEET_LISTEN", default_value = policy::DEFAULT_COORDINATOR_ADDR)]
    pub listen: SocketAddr,
    /// Database URL: `postgres://…` for a cluster, `sqlite:PATH` for a single node.
    #[arg(long = "db", env = "DATABASE_URL", default_value = "sqlite:urlfleet.db")]
    pub database_url: String,
    /// Lease time to live; workers renew their leases by heartbeats.
    #[arg(long, env = "URLFLEET_LEASE_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub lease_ttl: Duration,
    /// Maximum URLs in one lease of a polite host.
    #[arg(long, env = "URLFLEET_LEASE_SIZE", default_value_t = policy::DEFAULT_LEASE_SIZE)]
    pub lease_size: u32,
    /// A polite host's lease holds about this much work at the host's pace (at one request per
    /// second, 5 URLs for 5 s), up to `lease_size`: an urgent job waits about that long at most for
    /// the lease in progress on a host, and a worker's credits spread over many slow hosts. 0 turns
    /// it off (leases of `lease_size`).
    #[arg(long, env = "URLFLEET_LEASE_SPAN", default_value = "5s", value_parser = humantime::parse_duration)]
    pub lease_span: Duration,
    /// Maximum URLs in one lease of a host whose limits are lifted (no interval), which workers get
    /// through far faster.
    #[arg(long, env = "URLFLEET_LEASE_SIZE_LIFTED", default_value_t = policy::DEFAULT_LEASE_SIZE_LIFTED)]
    pub lease_size_lifted: u32,
    /// Work of hosts whose limits are lifted that one worker holds at once, at the pace it has been
    /// reporting results (and at least 8 URLs per check it runs at once): the rest stays leasable,
    /// so a fast job spreads over every worker instead of going to the first that asks, and its
    /// tail is not left in one worker's queue. 0 turns it off (the worker's credits alone bound it).
    #[arg(long, env = "URLFLEET_LIFTED_SPAN", default_value = "250ms", value_parser = humantime::parse_duration)]
    pub lifted_span: Duration,
    /// Leases one host may have at once when its limits are lifted (no interval between requests);
    /// a polite host is leased to one worker at a time.
    #[arg(long, env = "URLFLEET_MAX_LEASES_PER_HOST", default_value_t = 8)]
    pub max_leases_per_host: u32,
    /// Leases of one URL that may expire before it is marked failed.
    #[arg(long, env = "URLFLEET_MAX_LEASE_ATTEMPTS", default_value_t = policy::DEFAULT_MAX_LEASE_ATTEMPTS)]
    pub max_lease_attempts: u32,
    /// How often expired leases are looked for.
    #[arg(long, env = "URLFLEET_REAP_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub reap_interval: Duration,
    /// Default concurrent requests per host, for jobs that do not set their own.
    #[arg(long, env = "URLFLEET_HOST_CONCURRENCY", default_value_t = policy::DEFAULT_HOST_CONCURRENCY)]
    pub host_concurrency: u32,
    /// Default minimum interval between request starts to one host.
    #[arg(long, env = "URLFLEET_HOST_INTERVAL", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub host_interval: Duration,
    /// Politeness for one host in every job, HOST=CONCURRENCY/INTERVAL, e.g. example.com=16/0ms
    /// (repeatable). A job's own per-host setting wins over it.
    #[arg(long = "host-policy", env = "URLFLEET_HOST_POLICIES", value_delimiter = ',', value_parser = urlfleet_shared::convert::parse_host_policy)]
    pub host_policies: Vec<(String, PolicyOverride)>,
    /// The shortest interval between requests to one host that a job may ask for.
    #[arg(long, env = "URLFLEET_MIN_HOST_INTERVAL", default_value = "0ms", value_parser = humantime::parse_duration)]
    pub min_host_interval: Duration,
    /// The longest interval between requests to one host that a job may ask for.
    #[arg(long, env = "URLFLEET_MAX_HOST_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub max_host_interval: Duration,
    /// The most concurrent requests to one host that a job may ask for.
    #[arg(long, env = "URLFLEET_MAX_HOST_CONCURRENCY", default_value_t = DEFAULT_MAX_HOST_CONCURRENCY)]
    pub max_host_concurrency: u32,
    /// Credits one worker session may hold outstanding (URLs leased or grantable to it); a worker
    /// granting more is held to this, and a heartbeat may list at most this many leases.
    #[arg(long, env = "URLFLEET_MAX_WORKER_CREDITS", default_value_t = DEFAULT_MAX_WORKER_CREDITS)]
    pub max_worker_credits: u32,
    /// The longest a lease lives from its grant, however often it is renewed: a worker that keeps
    /// renewing without reporting cannot hold a host's URLs beyond it.
    #[arg(long, env = "URLFLEET_MAX_LEASE_LIFE", default_value = "1h", value_parser = humantime::parse_duration)]
    pub max_lease_life: Duration,
    /// The longest pause a worker's report may put on a host (its `Retry-After`), from the report's
    /// arrival: no report can freeze a host for every job.
    #[arg(long, env = "URLFLEET_MAX_HOST_PAUSE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub max_host_pause: Duration,
    /// Token list file: one `ROLE NAME TOKEN` a line (roles worker, submitter, admin). Without a
    /// token list (here or in URLFLEET_TOKENS) every caller is an anonymous admin.
    #[arg(long, env = "URLFLEET_TOKENS_FILE")]
    pub tokens_file: Option<std::path::PathBuf>,
    /// The token list inline (`;` separates entries), e.g. from a Secret.
    #[arg(long = "tokens", env = "URLFLEET_TOKENS", hide_env_values = true)]
    pub tokens_inline: Option<String>,
    /// Serve without tokens on an address that is not loopback (anyone who reaches it is admin).
    #[arg(long, env = "URLFLEET_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,
    /// Serve the worker protocol on this address only (with its own TLS client-certificate check),
    /// not on `--listen`.
    #[arg(long, env = "URLFLEET_WORKER_LISTEN")]
    pub worker_listen: Option<SocketAddr>,
    /// Serve only the gRPC health service, in cleartext and without tokens, on this address too
    /// (for probes that speak neither TLS nor tokens, like Kubernetes' gRPC probe).
    #[arg(long, env = "URLFLEET_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,
    /// Serve gRPC server reflection (service discovery for tools like grpcurl).
    #[arg(long, env = "URLFLEET_REFLECTION")]
    pub reflection: bool,
    /// TLS certificate chain (PEM) of every listener; with `--tls-key`, the coordinator serves TLS only.
    #[arg(long, env = "URLFLEET_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "URLFLEET_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// CA (PEM) that signs worker client certificates: workers must then present one (mutual TLS).
    #[arg(long, env = "URLFLEET_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<std::path::PathBuf>,
    /// Concurrent gRPC streams one connection may open.
    #[arg(long, env = "URLFLEET_MAX_CONCURRENT_STREAMS", default_value_t = 64)]
    pub max_concurrent_streams: u32,
    /// HTTP/2 keepalive: a ping after this long without traffic…
    #[arg(long, env = "URLFLEET_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub keepalive_interval: Duration,
    /// …and the connection closes when its answer takes longer than this.
    #[arg(long, env = "URLFLEET_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub keepalive_timeout: Duration,
    /// Largest gRPC message accepted (a URL chunk or a result batch), in bytes.
    #[arg(long, env = "URLFLEET_MAX_MESSAGE_BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,
    /// Most entries (valid or not) one job may hold; a submission over it fails with RESOURCE_EXHAUSTED.
    #[arg(long, env = "URLFLEET_MAX_JOB_URLS", default_value_t = 10_000_000)]
    pub max_job_urls: u64,
    /// An invalid entry is kept (and listed) cut to this many bytes.
    #[arg(long, env = "URLFLEET_MAX_INVALID_ENTRY_BYTES", default_value_t = 1_024)]
    pub max_invalid_entry_bytes: usize,
    /// Most distinct invalid entries one job may hold (each is kept and listed); a submission over it
    /// fails with RESOURCE_EXHAUSTED.
    #[arg(long, env = "URLFLEET_MAX_INVALID_ENTRIES", default_value_t = 100_000)]
    pub max_invalid_entries: usize,
    /// Largest encoded job options (name, labels, per-host policies, …), in bytes.
    #[arg(long, env = "URLFLEET_MAX_OPTIONS_BYTES", default_value_t = 65_536)]
    pub max_options_bytes: usize,
    /// An identical submission within this window returns the existing job.
    #[arg(long, env = "URLFLEET_UNIQUE_WINDOW", default_value = "600s", value_parser = humantime::parse_duration)]
    pub unique_window: Duration,
    /// Serve Prometheus metrics on this address (`GET /metrics`).
    #[arg(long, env = "URLFLEET_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Serve the web dashboard and its JSON API on this address (HTTP; off by default). The same
    /// tokens and roles as the gRPC API apply.
    #[arg(long, env = "URLFLEET_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Results per ingest transaction (a chunk is also written 50 ms after its first result).
    #[arg(long, env = "URLFLEET_INGEST_CHUNK_ROWS", default_value_t = 4_000)]
    pub ingest_chunk_rows: usize,
    /// Ingest transactions written concurrently (PostgreSQL; SQLite writes one at a time).
    #[arg(long, env = "URLFLEET_INGEST_WRITERS", default_value_t = 2)]
    pub ingest_writers: usize,
    /// Results accepted and not yet committed, at most; above half of it no new leases are granted.
    #[arg(long, env = "URLFLEET_INGEST_MAX_BACKLOG", default_value_t = 200_000)]
    pub ingest_max_backlog: usize,
}

impl CoordinatorConfig {
    /// The ingest pipeline's tuning. On SQLite one writer: the store has one connection, so a second
    /// writer only splits the results into more, smaller transactions.
    pub fn ingest(&self) -> crate::ingest::IngestConfig {
        let writers = if self.database_url.starts_with("sqlite:") { 1 } else { self.ingest_writers.max(1) };
        crate::ingest::IngestConfig {
            chunk_rows: self.ingest_chunk_rows.max(1),
            writers,
            max_backlog: self.ingest_max_backlog.max(1),
            ..Default::default()
        }
    }

    /// The politeness a lease of `host` gets from one job's options: the coordinator's default,
    /// then the job's default, then the coordinator's setting for the host, then the job's.
    pub fn host_policy(&self, host: &str, job: &JobOptions) -> HostPolicy {
        self.site_politeness().for_job(host, job)
    }

    /// Whether a job's politeness stays within this coordinator's bounds; the error names the limit.
    pub fn check_bounds(&self, job: &JobOptions) -> Result<(), String> {
        let all = std::iter::once((None, &job.politeness)).chain(job.host_policies.iter().map(|(h, p)| (Some(h), p)));
        for (host, p) in all {
            let what = host.map_or_else(|| "politeness".to_string(), |h| format!("host_policies[{h:?}]"));
            if let Some(c) = p.concurrency.filter(|c| *c > self.max_host_concurrency) {
                return Err(format!(
                    "{what}.concurrency {c} is above this coordinator's --max-host-concurrency {}",
                    self.max_host_concurrency
                ));
            }
            if let Some(ms) = p.interval_ms {
                let interval = Duration::from_millis(ms);
                if interval < self.min_host_interval {
                    return Err(format!(
                        "{what}.interval_ms {ms} is below this coordinator's --min-host-interval {}",
                        humantime::format_duration(self.min_host_interval)
                    ));
                }
                if interval > self.max_host_interval {
                    return Err(format!(
                        "{what}.interval_ms {ms} is above this coordinator's --max-host-interval {}",
                        humantime::format_duration(self.max_host_interval)
                    ));
                }
            }
        }
        Ok(())
    }

    /// The TLS settings of the listeners, when a certificate is configured.
    pub fn server_tls(&self) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else { return Ok(None) };
        let read =
            |p: &std::path::PathBuf| std::fs::read(p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()));
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
        if let Some(ca) = &self.tls_client_ca {
            // The job API stays usable without a client certificate on a shared listener; the worker
            // protocol's gate demands one.
            tls = tls.client_ca_root(Certificate::from_pem(read(ca)?)).client_auth_optional(true);
        }
        Ok(Some(tls))
    }

    /// This coordinator's politeness settings.
    pub fn site_politeness(&self) -> SitePoliteness {
        SitePoliteness {
            base: HostPolicy { concurrency: self.host_concurrency.max(1), interval: self.host_interval },
            hosts: self.host_policies.clone(),
        }
    }

    /// The leases a host with `policy` gets (see [`LeaseBudget::for_policy`]).
    pub fn lease_budget(&self, policy: &HostPolicy) -> LeaseBudget {
        LeaseBudget::for_policy(policy, self.lease_span, self.max_leases_per_host)
    }

    /// A configuration with every default, serving on `listen` and storing in `database_url`.
    pub fn new(listen: SocketAddr, database_url: impl Into<String>) -> Self {
        Self {
            listen,
            database_url: database_url.into(),
            lease_ttl: policy::DEFAULT_LEASE_TTL,
            lease_size: policy::DEFAULT_LEASE_SIZE,
            lease_span: policy::DEFAULT_LEASE_SPAN,
            lease_size_lifted: policy::DEFAULT_LEASE_SIZE_LIFTED,
            lifted_span: policy::DEFAULT_LIFTED_SPAN,
            max_lease_attempts: policy::DEFAULT_MAX_LEASE_ATTEMPTS,
            max_leases_per_host: 8,
            reap_interval: Duration::from_secs(1),
            unique_window: policy::DEFAULT_UNIQUE_WINDOW,
            max_worker_credits: DEFAULT_MAX_WORKER_CREDITS,
            tokens_file: None,
            tokens_inline: None,
            allow_unauthenticated: false,
            worker_listen: None,
            health_listen: None,
            reflection: false,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            max_concurrent_streams: 64,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_job_urls: 10_000_000,
            max_invalid_entry_bytes: 1_024,
            max_invalid_entries: 100_000,
            max_options_bytes: 65_536,
            max_lease_life: Duration::from_secs(3_600),
            max_host_pause: Duration::from_secs(300),
            min_host_interval: Duration::ZERO,
            max_host_interval: Duration::from_secs(60),
            max_host_concurrency: DEFAULT_MAX_HOST_CONCURRENCY,
            host_concurrency: policy::DEFAULT_HOST_CONCURRENCY,
            host_interval: policy::DEFAULT_HOST_INTERVAL,
            host_policies: Vec::new(),
            metrics_listen: None,
            http_listen: None,
            ingest_chunk_rows: 4_000,
            ingest_writers: 2,
            ingest_max_backlog: 200_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use urlfleet_shared::job::PolicyOverride;

    #[test]
    fn politeness_beyond_the_bounds_is_refused_naming_the_limit() {
        let config = CoordinatorConfig {
            min_host_interval: Duration::from_millis(50),
            ..CoordinatorConfig::new("127.0.0.1:0".parse().unwrap(), "sqlite::memory:")
        };
        let with = |concurrency, interval_ms| JobOptions {
            politeness: PolicyOverride { concurrency, interval_ms },
            ..Default::default()
        };
        assert!(config.check_bounds(&with(Some(4), Some(100))).is_ok());
        assert!(config.check_bounds(&JobOptions::default()).is_ok(), "unset inherits the coordinator's");
        let e = config.check_bounds(&with(None, Some(u64::MAX))).unwrap_err();
        assert!(e.contains("--max-host-interval"), "{e}");
        let e = config.check_bounds(&with(None, Some(10))).unwrap_err();
        assert!(e.contains("--min-host-interval"), "{e}");
        let e = config.check_bounds(&with(Some(5_000), None)).unwrap_err();
        assert!(e.contains("--max-host-concurrency"), "{e}");
        let mut per_host = JobOptions::default();
        per_host.host_policies.insert("a.example".into(), PolicyOverride { concurrency: None, interval_ms: Some(0) });
        let e = config.check_bounds(&per_host).unwrap_err();
        assert!(e.contains("a.example") && e.contains("--min-host-interval"), "{e}");
    }
}
