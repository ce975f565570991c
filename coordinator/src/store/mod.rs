//! Persistence, by concern. [`Store`] is the interface the services use; [`SqlStore`] implements it
//! on PostgreSQL (the cluster store) and SQLite (the embedded default) with the same statements,
//! written once, so the same conformance tests hold for both.
//!
//! # Layout
//! - [`db`]: the small interface to the two databases: statements, transactions, dialect differences.
//! - `rows`: how domain values are laid out in columns (`FromRow` types, redirect hops).
//! - `submission`: creating jobs and adding their URLs to the frontier as they arrive.
//! - `sealing`: the end of a submission — sealing it, or discarding it.
//! - `statistics`: the analyze a large upload starts when the URL tables' statistics go stale.
//! - `frontier`: the open work, apart from the record — what waits for a lease, what leases hold.
//! - `granting`: granting the next batches of many free hosts in one transaction.
//! - `leasing`: renewing, ending, expiring and reaping leases.
//! - `ingest`: storing reported results — history, monotonic latest state, job progress.
//! - `jobs`: reading, listing and cancelling jobs; job counters and completion.
//! - `results`: a job's per-URL results, page by page; frontier statistics.
//! - `postgres`, `sqlite`: connecting, migrations, and each database's bulk statements.

use std::time::Duration;

use async_trait::async_trait;
pub use urlfleet_shared::LeaseBudget;
pub use urlfleet_shared::job::{JobCounts, JobOptions, JobState, JobUrlState, Priority, RecheckPolicy, SitePoliteness};
pub use urlfleet_shared::plan::{InvalidEntry, PlannedUrl};
use urlfleet_shared::{OutcomeClass, OutcomeKind, RedirectHop, ReportedResult};

pub(crate) mod db;
pub use dashboard::{FailurePage, FailureQuery, FailureSort, HostRow, JobSample};
pub use db::is_transient;
pub(crate) use submission::owned_key;
mod dashboard;
mod frontier;
mod granting;
mod ingest;
mod jobs;
mod leasing;
mod postgres;
mod results;
mod rows;
mod sealing;
mod sqlite;
mod statistics;
mod submission;

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
    /// URLs were added to a job that is not receiving them any more (gone, or ended).
    #[error("job {0} is not receiving URLs")]
    NotReceiving(i64),
}

/// A job still receiving whose upload has not shown it is alive for this long lost its coordinator
/// (a live upload shows it every few seconds, whatever its client sends): its URLs are not leased
/// any more, and it is discarded.
pub const ABANDONED_UPLOAD: Duration = Duration::from_secs(15);

/// Result alias of the store.
pub type StoreResult<T> = Result<T, StoreError>;

/// A job to create. Its URLs follow in batches ([`Store::add_urls`]) and are leased as they arrive;
/// [`Store::seal_job`] then settles what the submission turned out to be (until then the job is
/// `receiving`, and it cannot complete).
#[derive(Debug, Clone)]
pub struct NewJob {
    /// The options as submitted (name and idempotency key included).
    pub options: JobOptions,
    /// Priority while the URLs arrive (the final one may be higher, see [`Seal::priority`]).
    pub priority: Priority,
    /// Earliest lease time while the URLs arrive (`i64::MAX` holds them all until the seal).
    pub not_before_ms: i64,
    /// W3C `traceparent` of the submission, so that the job's leases join its trace.
    pub trace_parent: Option<String>,
    /// The name of the token that submitted it ('' without tokens). Its idempotency key is its own:
    /// another owner's equal key is another job.
    pub owner: String,
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
    /// The options as submitted.
    pub options: JobOptions,
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
    /// The name of the token that submitted it ('' without tokens).
    pub owner: String,
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
    /// At most this many URLs of such hosts in all the leases of one grant: what the worker can get
    /// to soon, so that the rest of a fast job stays leasable by other workers (`u64::MAX`: only
    /// the credits bound it).
    pub lifted_room: u64,
    /// Lease time to live.
    pub ttl: Duration,
    /// How to judge a lease's politeness, so that the host's next lease waits for its spacing when
    /// this one ends; `None` gives leases no spacing of their own at the hand-over.
    pub politeness: Option<SitePoliteness>,
}

/// A granted lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseGrant {
    /// Lease id.
    pub id: i64,
    /// Fencing epoch of the host: results must carry it.
    pub epoch: i64,
    /// The worker holding it: only its results count.
    pub holder: String,
    /// Host.
    pub host: String,
    /// (url id, url), in the order to check them.
    pub urls: Vec<(i64, String)>,
    /// Deadline, ms since epoch.
    pub deadline_ms: i64,
    /// Jobs the URLs belong to.
    pub jobs: Vec<i64>,
    /// Options of those jobs (for politeness), deduplicated.
    pub job_options: Vec<JobOptions>,
    /// W3C `traceparent` of the first of those jobs that has one.
    pub trace_parent: Option<String>,
    /// The host's limits are lifted: it may have several leases at once, and this one counts
    /// against the worker's [`LeaseRequest::lifted_room`].
    pub lifted: bool,
}

/// What happened to the jobs touched by a write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    /// Jobs whose counters changed.
    pub jobs: Vec<i64>,
    /// Leases that expired (reaping only).
    pub expired_leases: u64,
    /// Results an ingest refused (see [`Store::ingest`]).
    pub refused: Vec<RefusedResult>,
}

/// A result an ingest refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedResult {
    /// The worker that reported it.
    pub reporter: std::sync::Arc<str>,
    /// Its lease id, as reported.
    pub lease_id: i64,
    /// Its URL id, as reported.
    pub url_id: i64,
    /// Why.
    pub reason: urlfleet_shared::outcome::Refusal,
}

/// The frontier at a glance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrontierStats {
    /// Leases active.
    pub active_leases: i64,
    /// URLs waiting for a lease.
    pub pending: i64,
}

/// Where a page of results starts: after a URL row, or after an invalid entry (which come last).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultCursor {
    /// After the URL with this id.
    Url(i64),
    /// After the invalid entry with this sequence number.
    Invalid(i64),
}

impl std::fmt::Display for ResultCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Url(id) => write!(f, "u{id}"),
            Self::Invalid(seq) => write!(f, "i{seq}"),
        }
    }
}

impl std::str::FromStr for ResultCursor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("malformed cursor {s:?}");
        let n = s.get(1..).and_then(|n| n.parse::<i64>().ok()).ok_or_else(bad)?;
        match s.as_bytes().first() {
            Some(b'u') => Ok(Self::Url(n)),
            Some(b'i') => Ok(Self::Invalid(n)),
            _ => Err(bad()),
        }
    }
}

/// Which page of a job's results to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultPage {
    /// The job.
    pub job_id: i64,
    /// Only these classes; all when empty.
    pub classes: Vec<OutcomeClass>,
    /// Start after this result; from the first when `None`.
    pub after: Option<ResultCursor>,
    /// At most this many results.
    pub limit: u32,
}

/// A stored result of one URL of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultRow {
    /// Paging cursor.
    pub cursor: ResultCursor,
    /// URL (or raw input for invalid entries).
    pub url: String,
    /// Outcome kind; `None` while unresolved.
    pub kind: Option<OutcomeKind>,
    /// Whether the result came from the re-check policy.
    pub fresh: bool,
    /// Where the URL stands in the job; `None` for an invalid entry (and in a URL's history).
    pub state: Option<JobUrlState>,
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

impl ResultRow {
    /// Whether the row is an invalid entry of its job (not a URL row).
    pub fn cursor_is_invalid(&self) -> bool {
        matches!(self.cursor, ResultCursor::Invalid(_))
    }
}

/// The persistence interface of a coordinator. Writes are idempotent where a retry can repeat them:
/// a replayed result, a re-sent heartbeat, a seal or discard tried again. `add_urls` is one
/// transaction, so a batch retried after a failure was not stored before.
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
    /// Discards the jobs still `receiving` whose upload last showed it was alive (see
    /// [`Store::touch_upload`]; else: was created) before `before_ms` (their submission died with its
    /// coordinator); returns how many.
    async fn discard_abandoned(&self, before_ms: i64) -> StoreResult<u64>;
    /// Records that a receiving job's upload is alive now.
    async fn touch_upload(&self, job_id: i64) -> StoreResult<()>;
    /// One job.
    async fn get_job(&self, id: i64) -> StoreResult<Option<JobRecord>>;
    /// Jobs newest first, with id below `before` when given, in the given states (all when empty).
    /// Only jobs of `owner` when given.
    async fn list_jobs(
        &self,
        states: &[JobState],
        owner: Option<&str>,
        before: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<JobRecord>>;
    /// Cancels a job; returns it and the ids of leases that now hold nothing but cancelled work.
    async fn cancel_job(&self, id: i64) -> StoreResult<Option<(JobRecord, Vec<i64>)>>;
    /// Leases a batch of URLs of one free, ready host; `None` when no work is ready.
    async fn acquire_lease(&self, req: &LeaseRequest) -> StoreResult<Option<LeaseGrant>> {
        Ok(self.acquire_leases(req, u64::MAX, 1).await?.pop())
    }
    /// Leases batches of up to `max_leases` free, ready hosts in one transaction, each sized by
    /// `req` and all together holding at most `credits` URLs; empty when no work is ready.
    async fn acquire_leases(&self, req: &LeaseRequest, credits: u64, max_leases: usize)
    -> StoreResult<Vec<LeaseGrant>>;
    /// Renews those of `lease_ids` that the worker holds and that have not ended for `ttl`, but
    /// never beyond `max_life` after each was granted; returns the leases renewed with their new
    /// expiry (ms). A lease past its expiry that the reaper has not ended is still its holder's and
    /// is renewed; an ended lease is never revived (its URLs may be re-leased).
    async fn renew_leases(
        &self,
        worker_id: &str,
        lease_ids: &[i64],
        ttl: Duration,
        max_life: Duration,
    ) -> StoreResult<Vec<(i64, i64)>>;
    /// Makes those of `lease_ids` that the worker holds expire at `at_ms` at the latest (the
    /// worker's session that held them went away).
    async fn expire_worker_leases(&self, worker_id: &str, lease_ids: &[i64], at_ms: i64) -> StoreResult<()>;
    /// After the database was out of reach since `since_ms`: the live leases that expired meanwhile,
    /// or would before `until_ms`, live until `until_ms`, so that their workers' next heartbeats renew
    /// them (an outage is no worker's fault), but never past `max_life` after each was granted.
    /// Returns how many were extended.
    async fn extend_leases_after_outage(&self, since_ms: i64, until_ms: i64, max_life: Duration) -> StoreResult<u64>;
    /// Returns the URLs of expired leases to the frontier, failing those whose leases expired
    /// `max_attempts` times.
    async fn reap_expired(&self, max_attempts: u32) -> StoreResult<Touched>;
    /// Persists reported results: latest state (monotonic), history (idempotent), job progress.
    /// A result is stored only for a URL its lease holds, under a live lease held by its reporter, at
    /// the lease's epoch; a replay of one stored before is accepted and changes nothing; any other
    /// is refused (listed in [`Touched::refused`]) and changes nothing. The coordinator's clock orders
    /// results: a result's time is clamped between its lease's grant and now.
    async fn ingest(&self, results: &[ReportedResult]) -> StoreResult<Touched>;
    /// Active leases and frontier depth, for metrics.
    async fn frontier_stats(&self) -> StoreResult<FrontierStats>;
    /// A page of a job's results.
    async fn list_results(&self, page: &ResultPage) -> StoreResult<Vec<ResultRow>>;
    /// The stored checks of a normalized URL, newest first (at most `limit`); `None` when the URL
    /// was never submitted.
    async fn url_history(&self, url: &str, limit: u32) -> StoreResult<Option<Vec<ResultRow>>>;
    /// A page of a job's failures, filtered and sorted, and how many match.
    async fn job_failures(&self, query: &FailureQuery) -> StoreResult<FailurePage>;
    /// The hosts with work waiting, leases out or a pace in force, busiest first.
    async fn frontier_hosts(&self, limit: u32) -> StoreResult<Vec<HostRow>>;
    /// Records the counters of every scheduled or running job as of `at` (ms).
    async fn sample_jobs(&self, at: i64) -> StoreResult<()>;
    /// A job's newest samples (at most `limit`), oldest first.
    async fn job_samples(&self, job_id: i64, limit: u32) -> StoreResult<Vec<JobSample>>;
}

/// The store on either database: one implementation of every concern, running the same statements.
#[derive(Debug, Clone)]
pub struct SqlStore {
    db: db::Db,
    /// What this store knows of the URL tables' statistics (PostgreSQL), shared by its clones.
    statistics: std::sync::Arc<std::sync::Mutex<statistics::Statistics>>,
}

#[async_trait]
impl Store for SqlStore {
    async fn create_job(&self, job: NewJob) -> StoreResult<(JobRecord, bool)> {
        self.create_job_impl(job).await
    }
    async fn add_urls(&self, job_id: i64, urls: &[PlannedUrl], policy: RecheckPolicy) -> StoreResult<()> {
        self.add_urls_impl(job_id, urls, policy).await
    }
    async fn add_invalid(&self, job_id: i64, first_seq: i64, entries: &[InvalidEntry]) -> StoreResult<()> {
        self.add_invalid_impl(job_id, first_seq, entries).await
    }
    async fn seal_job(&self, job_id: i64, seal: Seal) -> StoreResult<(JobRecord, bool)> {
        self.seal_job_impl(job_id, &seal).await
    }
    async fn discard_job(&self, job_id: i64) -> StoreResult<()> {
        self.discard_job_impl(job_id).await
    }
    async fn discard_abandoned(&self, before_ms: i64) -> StoreResult<u64> {
        self.discard_abandoned_impl(before_ms).await
    }
    async fn touch_upload(&self, job_id: i64) -> StoreResult<()> {
        db::sql("UPDATE jobs SET touched_at = $2 WHERE id = $1 AND state = 'receiving'")
            .bind(job_id)
            .bind(urlfleet_shared::time::now_ms())
            .execute(&mut self.db.acquire().await?)
            .await?;
        Ok(())
    }
    async fn get_job(&self, id: i64) -> StoreResult<Option<JobRecord>> {
        self.get_job_impl(id).await
    }
    async fn list_jobs(
        &self,
        states: &[JobState],
        owner: Option<&str>,
        before: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<JobRecord>> {
        self.list_jobs_impl(states, owner, before, limit).await
    }
    async fn cancel_job(&self, id: i64) -> StoreResult<Option<(JobRecord, Vec<i64>)>> {
        self.cancel_job_impl(id).await
    }
    async fn acquire_leases(
        &self,
        req: &LeaseRequest,
        credits: u64,
        max_leases: usize,
    ) -> StoreResult<Vec<LeaseGrant>> {
        self.acquire_leases_impl(req, credits, max_leases).await
    }
    async fn renew_leases(
        &self,
        worker_id: &str,
        lease_ids: &[i64],
        ttl: Duration,
        max_life: Duration,
    ) -> StoreResult<Vec<(i64, i64)>> {
        self.renew_leases_impl(worker_id, lease_ids, ttl, max_life).await
    }
    async fn expire_worker_leases(&self, worker_id: &str, lease_ids: &[i64], at_ms: i64) -> StoreResult<()> {
        self.expire_worker_leases_impl(worker_id, lease_ids, at_ms).await
    }
    async fn extend_leases_after_outage(&self, since_ms: i64, until_ms: i64, max_life: Duration) -> StoreResult<u64> {
        self.extend_leases_after_outage_impl(since_ms, until_ms, max_life).await
    }
    async fn reap_expired(&self, max_attempts: u32) -> StoreResult<Touched> {
        self.reap_expired_impl(max_attempts).await
    }
    async fn ingest(&self, results: &[ReportedResult]) -> StoreResult<Touched> {
        self.ingest_impl(results).await
    }
    async fn frontier_stats(&self) -> StoreResult<FrontierStats> {
        self.frontier_stats_impl().await
    }
    async fn list_results(&self, page: &ResultPage) -> StoreResult<Vec<ResultRow>> {
        self.list_results_impl(page).await
    }

    async fn url_history(&self, url: &str, limit: u32) -> StoreResult<Option<Vec<ResultRow>>> {
        self.url_history_impl(url, limit).await
    }

    async fn job_failures(&self, query: &FailureQuery) -> StoreResult<FailurePage> {
        self.job_failures_impl(query).await
    }

    async fn frontier_hosts(&self, limit: u32) -> StoreResult<Vec<HostRow>> {
        self.frontier_hosts_impl(limit).await
    }

    async fn sample_jobs(&self, at: i64) -> StoreResult<()> {
        self.sample_jobs_impl(at).await
    }

    async fn job_samples(&self, job_id: i64, limit: u32) -> StoreResult<Vec<JobSample>> {
        self.job_samples_impl(job_id, limit).await
    }
}

/// Opens the store a database URL names, creating an SQLite file when missing, and migrates it.
pub async fn connect(url: &str) -> StoreResult<std::sync::Arc<dyn Store>> {
    let db = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        db::Db::Pg(postgres::connect(url).await?)
    } else if url.starts_with("sqlite:") {
        db::Db::Lite(sqlite::connect(url).await?)
    } else {
        return Err(StoreError::UnsupportedUrl(mask_password(url)));
    };
    Ok(std::sync::Arc::new(SqlStore { db, statistics: Default::default() }))
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
    fn cursors_round_trip_and_malformed_ones_are_refused() {
        for c in [ResultCursor::Url(42), ResultCursor::Invalid(0)] {
            assert_eq!(c.to_string().parse::<ResultCursor>().unwrap(), c);
        }
        for bad in ["", "u", "x1", "uabc", "i-"] {
            assert!(bad.parse::<ResultCursor>().is_err(), "{bad:?}");
        }
    }
}
