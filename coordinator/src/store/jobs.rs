//! Jobs: reading, listing and cancelling them, and the counters and completion every write that
//! moves a job's URLs ends with.

use std::collections::{BTreeMap, BTreeSet};

use urlfleet_shared::job::{CountsDelta, JobState};
use urlfleet_shared::time::now_ms;

use super::db::{Executor, Tx, sql};
use super::frontier::{add_host_pending, count_by};
use super::rows::{JOB_COLUMNS, JobRow};
use super::{JobRecord, SqlStore, StoreError, StoreResult};

/// Counter changes per job, applied in ascending job id order: a fixed lock order keeps concurrent
/// transactions on PostgreSQL from deadlocking on job rows.
#[derive(Debug, Default)]
pub(crate) struct JobDeltas(BTreeMap<i64, CountsDelta>);

impl JobDeltas {
    /// The change of one job's counters.
    pub(crate) fn of(&mut self, job: i64) -> &mut CountsDelta {
        self.0.entry(job).or_default()
    }

    /// The jobs changed, in id order.
    pub(crate) fn jobs(&self) -> Vec<i64> {
        self.0.keys().copied().collect()
    }

    /// Adds every change to its job's row. Job rows are the most contended: writes touch them last.
    pub(crate) async fn apply(&self, tx: &mut Tx) -> StoreResult<()> {
        for (job, d) in &self.0 {
            sql("UPDATE jobs SET leased = leased + $2, checked = checked + $3, fresh = fresh + $4, \
                 failed = failed + $5, cancelled = cancelled + $6, n_ok = n_ok + $7, \
                 n_redirected = n_redirected + $8, n_broken = n_broken + $9, n_error = n_error + $10 WHERE id = $1")
            .bind(*job)
            .bind(d.leased)
            .bind(d.checked)
            .bind(d.fresh)
            .bind(d.failed)
            .bind(d.cancelled)
            .bind(d.ok)
            .bind(d.redirected)
            .bind(d.broken)
            .bind(d.error)
            .execute(tx)
            .await?;
        }
        Ok(())
    }
}

/// One job as stored.
pub(crate) async fn fetch_job(ex: &mut impl Executor, id: i64) -> StoreResult<Option<JobRecord>> {
    let row: Option<JobRow> =
        sql(format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1")).bind(id).fetch_optional(ex).await?;
    row.map(JobRecord::try_from).transpose()
}

/// One job that must exist (the caller holds it).
pub(crate) async fn require_job(ex: &mut impl Executor, id: i64) -> StoreResult<JobRecord> {
    fetch_job(ex, id).await?.ok_or_else(|| StoreError::Corrupt(format!("job {id} vanished")))
}

/// Completes the jobs whose every URL is resolved. The counters are taken from the rows each write
/// changed, so they add up to the total exactly; a sum past it is a bug, reported, and the job is
/// left open rather than completed early.
pub(crate) async fn complete_if_done(tx: &mut Tx, jobs: &[i64], now: i64) -> StoreResult<()> {
    for job in jobs {
        let done = sql("UPDATE jobs SET state = 'completed', finished_at = $2, unique_active = FALSE \
             WHERE id = $1 AND sealed_at IS NOT NULL AND state IN ('scheduled', 'running') \
             AND checked + fresh + invalid + failed + cancelled = total")
        .bind(*job)
        .bind(now)
        .execute(tx)
        .await?;
        if done == 0 {
            let over: Option<i64> = sql("SELECT checked + fresh + invalid + failed + cancelled - total FROM jobs \
                                         WHERE id = $1 AND sealed_at IS NOT NULL AND state IN ('scheduled', 'running')")
            .bind(*job)
            .scalar(tx)
            .await?;
            if let Some(over) = over.filter(|n| *n > 0) {
                tracing::error!(job.id = job, over, "job counters add up to more than its total");
            }
        }
    }
    Ok(())
}

/// Cancels a job's open URLs (waiting, and out in leases) and takes them off the frontier and the
/// leases. Returns how many were cancelled, how many of them were out in leases, and the leases
/// left holding nothing open (their hosts are released; the caller tells their holders).
pub(crate) async fn cancel_open(tx: &mut Tx, job_id: i64) -> StoreResult<(i64, i64, Vec<i64>)> {
    let (waiting, closed, leased) = super::leasing::take_job_open_work(tx, job_id).await?;
    let cancelled = sql("UPDATE job_urls SET state = 'cancelled' WHERE job_id = $1 AND state = 'pending'")
        .bind(job_id)
        .execute(tx)
        .await?;
    let hosts: BTreeSet<String> = waiting.iter().cloned().collect();
    super::leasing::lock_hosts(tx, &hosts).await?;
    add_host_pending(tx, &count_by(waiting, -1)).await?;
    // A lease that still holds URLs of other jobs keeps running for them.
    let revoked = super::leasing::close_leases(tx, &closed, 0).await?;
    Ok((cancelled as i64, leased, revoked))
}

impl SqlStore {
    pub(crate) async fn get_job_impl(&self, id: i64) -> StoreResult<Option<JobRecord>> {
        fetch_job(&mut self.db.acquire().await?, id).await
    }

    pub(crate) async fn list_jobs_impl(
        &self,
        states: &[JobState],
        owner: Option<&str>,
        before: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<JobRecord>> {
        let mut q = sql(format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id < "));
        q.push_bind(before.unwrap_or(i64::MAX));
        if let Some(owner) = owner {
            q.push(" AND owner = ").push_bind(owner.to_string());
        }
        if !states.is_empty() {
            q.push(" AND state IN (").push_list(states.iter().map(|s| s.as_str())).push(")");
        }
        q.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(limit));
        let rows: Vec<JobRow> = q.fetch_all(&mut self.db.acquire().await?).await?;
        rows.into_iter().map(JobRecord::try_from).collect()
    }

    pub(crate) async fn cancel_job_impl(&self, id: i64) -> StoreResult<Option<(JobRecord, Vec<i64>)>> {
        super::db::retry_transient("cancel", || self.cancel_once(id), |_| false).await
    }

    async fn cancel_once(&self, id: i64) -> StoreResult<Option<(JobRecord, Vec<i64>)>> {
        let now = now_ms();
        let mut tx = self.db.begin().await?;
        let Some(job) = fetch_job(&mut tx, id).await? else { return Ok(None) };
        if job.state.is_final() {
            return Ok(Some((job, Vec::new())));
        }
        // The store's lock order: the job's leases, its open work and URLs, then their hosts, the
        // job last.
        let (cancelled, leased, revoked) = cancel_open(&mut tx, id).await?;
        sql("UPDATE jobs SET state = 'cancelled', finished_at = $2, unique_active = FALSE, \
             cancelled = cancelled + $3, leased = leased - $4 WHERE id = $1")
        .bind(id)
        .bind(now)
        .bind(cancelled)
        .bind(leased)
        .execute(&mut tx)
        .await?;
        let job = require_job(&mut tx, id).await?;
        tx.commit().await?;
        Ok(Some((job, revoked)))
    }
}
