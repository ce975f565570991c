//! Persistence: the [`Store`] trait and its two implementations, PostgreSQL (the cluster store) and
//! SQLite (the embedded default). Both run the same SQL where the dialects agree (see [`sql`]), so
//! the same conformance tests hold for both.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use urlfleet_shared::convert::ReportedResult;
use urlfleet_shared::{OutcomeClass, OutcomeKind, RedirectHop};

mod postgres;
mod sql;
mod sqlite;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// A store failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be reached or refused the connection.
    #[error("cannot connect to database {url}: {source}")]
    Connect {
        /// Database URL with the password masked.
        url: String,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// The database URL names no supported database.
    #[error("unsupported database URL {0} (expected postgres://… or sqlite:…)")]
    UnsupportedUrl(String),
    /// Migrations failed.
    #[error("migrating database failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
    /// Stored data that cannot be decoded.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// The row changed under the operation; trying again sees the new state.
    #[error("a concurrent change; try again")]
    Conflict,
    /// Results name URLs the store does not hold: storing them can never succeed.
    #[error("results for {0} unknown URL id(s)")]
    UnknownUrls(usize),
}

/// Result alias of the store.
pub type StoreResult<T> = Result<T, StoreError>;

/// Lifecycle state of a job, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    /// Its URLs are arriving (and those that arrived are being leased).
    Receiving,
    /// Accepted, nothing leased yet.
    Scheduled,
    /// Some URL leased, not all resolved.
    Running,
    /// Every URL resolved.
    Completed,
    /// Cancelled by a client.
    Cancelled,
}

impl JobState {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Receiving => "receiving",
            Self::Scheduled => "scheduled",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether the job has ended.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Cancelled)
    }

    fn parse(s: &str) -> StoreResult<Self> {
        Ok(match s {
            "receiving" => Self::Receiving,
            "scheduled" => Self::Scheduled,
            "running" => Self::Running,
            "completed" => Self::Completed,
            "cancelled" => Self::Cancelled,
            other => return Err(StoreError::Corrupt(format!("job state {other:?}"))),
        })
    }
}

/// Scheduling priority (1 high, 2 medium, 3 low).
pub type Priority = i16;

/// A job to create. Its URLs follow in batches ([`Store::add_urls`]) and are leased as they arrive;
/// [`Store::seal_job`] then settles what the submission turned out to be (until then the job is
/// `receiving`, and it cannot complete).
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Display name.
    pub name: String,
    /// Priority while the URLs arrive (the final one may be higher, see [`Seal::priority`]).
    pub priority: Priority,
    /// Encoded options (protobuf `JobOptions`), kept as submitted.
    pub options: Vec<u8>,
    /// Client idempotency key.
    pub idempotency_key: Option<String>,
    /// Earliest lease time while the URLs arrive (`i64::MAX` holds them all until the seal).
    pub not_before_ms: i64,
    /// W3C `traceparent` of the submission, so that the job's leases join its trace.
    pub trace_parent: Option<String>,
}

/// What a submission turned out to be, once its last entry is stored.
#[derive(Debug, Clone)]
pub struct Seal {
    /// Hash of the URL set and the options: duplicate submissions share it.
    pub unique_key: String,
    /// An active job with the same key older than this is not a duplicate any more.
    pub unique_window: Duration,
    /// Entries received (including duplicates and invalid ones).
    pub received: u64,
    /// Entries that collapsed into an identical earlier one.
    pub duplicates: u64,
    /// Distinct entries (valid and invalid).
    pub total: u64,
    /// Final priority; never lower than the one the job was created with.
    pub priority: Priority,
    /// Earliest lease time.
    pub not_before_ms: i64,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRecord {
    /// Id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// State.
    pub state: JobState,
    /// Priority.
    pub priority: Priority,
    /// Encoded options.
    pub options: Vec<u8>,
    /// Earliest lease time.
    pub not_before_ms: i64,
    /// Counters.
    pub counts: JobCounts,
    /// Creation time.
    pub created_at_ms: i64,
    /// When every URL was persisted.
    pub sealed_at_ms: Option<i64>,
    /// When the job ended.
    pub finished_at_ms: Option<i64>,
}

/// Counters of a job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobCounts {
    /// Entries received.
    pub received: u64,
    /// Distinct entries.
    pub total: u64,
    /// Collapsed duplicates.
    pub duplicates: u64,
    /// Leased right now.
    pub leased: u64,
    /// Checked by this job.
    pub checked: u64,
    /// Skipped by the re-check policy.
    pub fresh: u64,
    /// Invalid entries.
    pub invalid: u64,
    /// Given up after expired leases.
    pub failed: u64,
    /// Left unresolved by a cancellation.
    pub cancelled: u64,
    /// Outcome classes of checked and fresh URLs.
    pub ok: u64,
    /// See `ok`.
    pub redirected: u64,
    /// See `ok`.
    pub broken: u64,
    /// See `ok` (includes failed).
    pub error: u64,
}

impl JobCounts {
    /// URLs not resolved yet (waiting or leased).
    pub fn unresolved(&self) -> u64 {
        self.total.saturating_sub(self.checked + self.fresh + self.invalid + self.failed + self.cancelled)
    }

    /// URLs waiting for a lease.
    pub fn pending(&self) -> u64 {
        self.unresolved().saturating_sub(self.leased)
    }
}

/// A valid URL of a job, ready to persist.
#[derive(Debug, Clone)]
pub struct PlannedUrl {
    /// Normalized URL.
    pub url: String,
    /// Its host key.
    pub host: String,
    /// Leases the host may have at once: 1 for a polite host, more when its limits were lifted.
    pub max_leases: u32,
    /// URLs one lease of the host may hold: about a lease span of requests at its pace (0: no bound
    /// beyond the worker's request, as for a host whose limits were lifted).
    pub lease_urls: u32,
    /// Position among the submission's distinct URLs, in arrival order. A host's URLs of one
    /// priority and class are leased by it, so jobs of equal priority sharing a host advance in turn
    /// (the k-th URL of each before the (k+1)-th of any), and a job that arrives late is not queued
    /// behind everything an earlier one still has.
    pub seq: u64,
}

/// The re-check policy applied when URLs are added to a job.
#[derive(Debug, Clone, Copy)]
pub struct RecheckPolicy {
    /// Check everything.
    pub force: bool,
    /// A healthy URL checked more recently than this is fresh.
    pub recheck_after: Duration,
    /// A URL with stored status >= 400 checked more recently than this is fresh.
    pub recheck_broken_after: Duration,
}

/// An invalid input entry.
#[derive(Debug, Clone)]
pub struct InvalidEntry {
    /// The input as given.
    pub input: String,
    /// Why it is invalid.
    pub reason: String,
}

/// What a lease request asks for.
#[derive(Debug, Clone)]
pub struct LeaseRequest {
    /// Worker that will hold the lease.
    pub worker_id: String,
    /// At most this many URLs of a polite host (one lease at a time).
    pub max_urls: u32,
    /// At most this many URLs of a host whose limits are lifted (several leases at once): it gets
    /// through them so fast that small leases would cost more in round trips than in checks.
    pub max_urls_lifted: u32,
    /// Lease time to live.
    pub ttl: Duration,
}

/// A granted lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseGrant {
    /// Lease id.
    pub id: i64,
    /// Fencing epoch of the host.
    pub epoch: i64,
    /// Host.
    pub host: String,
    /// (url id, url).
    pub urls: Vec<(i64, String)>,
    /// Deadline, ms since epoch.
    pub deadline_ms: i64,
    /// Jobs the URLs belong to.
    pub jobs: Vec<i64>,
    /// Encoded options of those jobs (for politeness), deduplicated.
    pub job_options: Vec<Vec<u8>>,
    /// W3C `traceparent` of the first of those jobs that has one.
    pub trace_parent: Option<String>,
}

/// What happened to the jobs touched by a write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    /// Jobs whose counters changed.
    pub jobs: Vec<i64>,
    /// Leases that expired (reaping only).
    pub expired_leases: u64,
}

/// The frontier at a glance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrontierStats {
    /// Leases active.
    pub active_leases: i64,
    /// URLs waiting for a lease.
    pub pending: i64,
}

/// A stored result of one URL of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultRow {
    /// Paging cursor.
    pub cursor: String,
    /// URL (or raw input for invalid entries).
    pub url: String,
    /// Outcome kind; `None` while unresolved.
    pub kind: Option<OutcomeKind>,
    /// Whether the result came from the re-check policy.
    pub fresh: bool,
    /// Final status.
    pub status: Option<u16>,
    /// Final URL.
    pub final_url: Option<String>,
    /// Redirect hops.
    pub redirects: Vec<RedirectHop>,
    /// Attempts.
    pub attempts: u32,
    /// Response time.
    pub response_time_ms: u64,
    /// Content type.
    pub content_type: Option<String>,
    /// Content length.
    pub content_length: Option<u64>,
    /// Check time.
    pub checked_at_ms: Option<i64>,
    /// Reason for errors.
    pub error: Option<String>,
}

/// The persistence interface of a coordinator. Every write is idempotent; see the module docs of the
/// implementations for the SQL.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates a `receiving` job, or returns the job with the same idempotency key; the flag is true
    /// in that case.
    async fn create_job(&self, job: NewJob) -> StoreResult<(JobRecord, bool)>;
    /// Adds valid URLs to a job (applying the re-check policy), in one transaction per call.
    async fn add_urls(&self, job_id: i64, urls: &[PlannedUrl], policy: RecheckPolicy) -> StoreResult<()>;
    /// Adds invalid entries to a job; `first_seq` numbers them.
    async fn add_invalid(&self, job_id: i64, first_seq: i64, entries: &[InvalidEntry]) -> StoreResult<()>;
    /// Ends a job's submission. When an active job with the same unique key exists, this one is
    /// discarded and the earlier one returned, with the flag true; uniqueness is enforced by a unique
    /// index, so of two concurrent twins only one is accepted. An accepted job is `scheduled` (or
    /// completed at once when nothing is left to check). A job cancelled while receiving stays so.
    async fn seal_job(&self, job_id: i64, seal: Seal) -> StoreResult<(JobRecord, bool)>;
    /// Removes a job still `receiving` and everything written for it (a submission that failed).
    async fn discard_job(&self, job_id: i64) -> StoreResult<()>;
    /// Discards the jobs still `receiving` that were created before `before_ms` (their submission
    /// died with its coordinator); returns how many.
    async fn discard_abandoned(&self, before_ms: i64) -> StoreResult<u64>;
    /// One job.
    async fn get_job(&self, id: i64) -> StoreResult<Option<JobRecord>>;
    /// Jobs newest first, with id below `before` when given, in the given states (all when empty).
    async fn list_jobs(&self, states: &[JobState], before: Option<i64>, limit: u32) -> StoreResult<Vec<JobRecord>>;
    /// Cancels a job; returns it and the ids of leases that now hold nothing but cancelled work.
    async fn cancel_job(&self, id: i64) -> StoreResult<Option<(JobRecord, Vec<i64>)>>;
    /// Leases a batch of URLs of one free, ready host; `None` when no work is ready.
    async fn acquire_lease(&self, req: &LeaseRequest) -> StoreResult<Option<LeaseGrant>>;
    /// Renews the worker's leases.
    async fn renew_leases(&self, worker_id: &str, lease_ids: &[i64], ttl: Duration) -> StoreResult<()>;
    /// Makes every lease of the worker expire now (the worker went away).
    async fn expire_worker_leases(&self, worker_id: &str) -> StoreResult<()>;
    /// Returns the URLs of expired leases to the frontier, failing those whose leases expired
    /// `max_attempts` times.
    async fn reap_expired(&self, max_attempts: u32) -> StoreResult<Touched>;
    /// Persists reported results: latest state (monotonic), history (idempotent), job progress.
    async fn ingest(&self, results: &[ReportedResult]) -> StoreResult<Touched>;
    /// Active leases and frontier depth, for metrics.
    async fn frontier_stats(&self) -> StoreResult<FrontierStats>;
    /// A page of a job's results after `after`, filtered by class (all when empty).
    async fn list_results(
        &self,
        job_id: i64,
        classes: &[OutcomeClass],
        after: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<ResultRow>>;
}

/// The migrations of one dialect, embedded in the binary (so a single file is the whole program).
fn migrator(migrations: &[(i64, &'static str, &'static str)]) -> sqlx::migrate::Migrator {
    use sqlx::SqlSafeStr;
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    Migrator::with_migrations(
        migrations
            .iter()
            .map(|(version, name, sql)| {
                Migration::new(*version, (*name).into(), MigrationType::Simple, (*sql).into_sql_str(), false)
            })
            .collect(),
    )
}

/// Opens the store a database URL names, creating an SQLite file when missing, and migrates it.
pub async fn connect(url: &str) -> StoreResult<std::sync::Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(std::sync::Arc::new(PgStore::connect(url).await?))
    } else if url.starts_with("sqlite:") {
        Ok(std::sync::Arc::new(SqliteStore::connect(url).await?))
    } else {
        Err(StoreError::UnsupportedUrl(mask_password(url)))
    }
}

/// The URL with its password replaced by `***`, for messages and logs.
pub fn mask_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else { return url.to_string() };
    let rest = &url[scheme_end + 3..];
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let Some(at) = rest[..auth_end].rfind('@') else { return url.to_string() };
    let userinfo = &rest[..at];
    match userinfo.find(':') {
        Some(colon) => format!("{}://{}:***{}", &url[..scheme_end], &userinfo[..colon], &rest[at..]),
        None => url.to_string(),
    }
}

/// Aggregated counter changes per job, built while applying a write.
#[derive(Debug, Default)]
pub(crate) struct CounterDelta(BTreeMap<i64, [i64; 9]>);

/// Index of each counter in a [`CounterDelta`] row.
pub(crate) mod delta {
    pub const LEASED: usize = 0;
    pub const CHECKED: usize = 1;
    pub const FRESH: usize = 2;
    pub const FAILED: usize = 3;
    pub const OK: usize = 4;
    pub const REDIRECTED: usize = 5;
    pub const BROKEN: usize = 6;
    pub const ERROR: usize = 7;
    pub const CANCELLED: usize = 8;
}

impl CounterDelta {
    pub(crate) fn add(&mut self, job: i64, idx: usize, n: i64) {
        self.0.entry(job).or_default()[idx] += n;
    }

    pub(crate) fn add_class(&mut self, job: i64, class: OutcomeClass) {
        let idx = match class {
            OutcomeClass::Ok => delta::OK,
            OutcomeClass::Redirected => delta::REDIRECTED,
            OutcomeClass::Broken => delta::BROKEN,
            OutcomeClass::Error | OutcomeClass::Invalid => delta::ERROR,
        };
        self.add(job, idx, 1);
    }

    pub(crate) fn jobs(&self) -> Vec<i64> {
        self.0.keys().copied().collect()
    }

    pub(crate) fn rows(&self) -> impl Iterator<Item = (i64, &[i64; 9])> {
        self.0.iter().map(|(k, v)| (*k, v))
    }
}

/// An outcome as the `urls` and `checks` columns hold it: the one place that maps the domain value to
/// column types (unsigned values clamped into `BIGINT`, hops encoded).
pub(crate) struct OutcomeRow<'a> {
    pub kind: &'static str,
    pub status: Option<i32>,
    pub final_url: Option<&'a str>,
    pub redirects: Option<String>,
    pub attempts: i32,
    pub response_ms: i64,
    pub content_type: Option<&'a str>,
    pub content_length: Option<i64>,
    pub error: Option<&'a str>,
    pub checked_at: i64,
}

impl<'a> OutcomeRow<'a> {
    pub(crate) fn of(o: &'a urlfleet_shared::CheckOutcome) -> Self {
        let clamp = |v: u64| v.min(i64::MAX as u64) as i64;
        Self {
            kind: o.kind.as_str(),
            status: o.status.map(i32::from),
            final_url: o.final_url.as_deref(),
            redirects: encode_redirects(&o.redirects),
            attempts: i32::try_from(o.attempts).unwrap_or(i32::MAX),
            response_ms: clamp(o.response_time_ms),
            content_type: o.content_type.as_deref(),
            content_length: o.content_length.map(clamp),
            error: o.error.as_deref(),
            checked_at: o.checked_at_ms,
        }
    }
}

/// Redirect hops as stored: one `status url` pair per line.
pub(crate) fn encode_redirects(hops: &[RedirectHop]) -> Option<String> {
    if hops.is_empty() {
        return None;
    }
    Some(hops.iter().map(|h| format!("{} {}", h.status, h.url)).collect::<Vec<_>>().join("\n"))
}

pub(crate) fn decode_redirects(s: Option<&str>) -> Vec<RedirectHop> {
    s.unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (st, url) = l.split_once(' ')?;
            Some(RedirectHop { url: url.to_string(), status: st.parse().ok()? })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked() {
        assert_eq!(mask_password("postgres://u:secret@db:5432/x"), "postgres://u:***@db:5432/x");
        assert_eq!(mask_password("postgres://u@db/x"), "postgres://u@db/x");
        assert_eq!(mask_password("sqlite:./urlfleet.db"), "sqlite:./urlfleet.db");
    }

    #[test]
    fn redirects_round_trip() {
        let hops = vec![
            RedirectHop { url: "http://a.example/x y".into(), status: 301 },
            RedirectHop { url: "http://b.example/".into(), status: 308 },
        ];
        assert_eq!(decode_redirects(encode_redirects(&hops).as_deref()), hops);
        assert!(encode_redirects(&[]).is_none());
    }
}
