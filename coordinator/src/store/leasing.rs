//! Leases: granting a host's next batch of URLs, renewing and expiring leases, and returning the URLs
//! of expired ones to the frontier.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use urlfleet_shared::job::{FRONTIER_ORDERS_PER_PRIORITY, JobOptions, JobUrlState};
use urlfleet_shared::time::{ms, now_ms};

use super::db::{Tx, sql};
use super::jobs::{JobDeltas, complete_if_done};
use super::{LeaseGrant, LeaseRequest, SqlStore, StoreResult, Touched};

/// Rows per `IN (…)` list: under both databases' bind-parameter limits.
const IDS_PER_STATEMENT: usize = 4_000;

/// Hosts looked at per lease request: the first may turn out to have nothing ready.
const CANDIDATE_HOSTS: i64 = 4;

/// Added to a polite lease's spacing at the hand-over: the coordinator's clock, not the server's,
/// decides when the next lease may start, and the last request may have arrived late.
pub(crate) const HAND_OVER_MARGIN: std::time::Duration = std::time::Duration::from_millis(20);

/// Expired leases reaped per transaction.
const REAP_BATCH: i64 = 100;

/// Leases granted in one transaction, settled together: each job's counters, state and options
/// are written or read once, however many of the batch's leases hold its URLs.
#[derive(Default)]
struct GrantBatch {
    deltas: JobDeltas,
    pending: Vec<Pending>,
}

/// A lease written but not settled yet.
struct Pending {
    grant: LeaseGrant,
    open: i64,
    politeness: Option<urlfleet_shared::SitePoliteness>,
}

impl GrantBatch {
    /// Counters, job states and options, then each lease's open count and spacing.
    async fn finish(self, tx: &mut Tx) -> StoreResult<Vec<LeaseGrant>> {
        self.deltas.apply(tx).await?;
        let mut options: HashMap<i64, (JobOptions, Option<String>)> = HashMap::new();
        for job in self.deltas.jobs() {
            sql("UPDATE jobs SET state = 'running' WHERE id = $1 AND state = 'scheduled'")
                .bind(job)
                .execute(tx)
                .await?;
            let (o, tp): (String, Option<String>) =
                sql("SELECT options, trace_parent FROM jobs WHERE id = $1").bind(job).fetch_one(tx).await?;
            let o: JobOptions =
                serde_json::from_str(&o).map_err(|e| super::StoreError::Corrupt(format!("job {job}: options: {e}")))?;
            options.insert(job, (o, tp));
        }
        let mut grants = Vec::with_capacity(self.pending.len());
        for Pending { mut grant, open, politeness } in self.pending {
            for job in &grant.jobs {
                let (o, tp) = &options[job];
                grant.trace_parent = grant.trace_parent.take().or_else(|| tp.clone());
                if !grant.job_options.contains(o) {
                    grant.job_options.push(o.clone());
                }
            }
            // The spacing the host's next lease keeps from this one's end (see `close_lease_urls`).
            let spacing = politeness.map_or(0, |site| {
                let policy = site.for_lease(&grant.host, &grant.job_options);
                if policy.interval.is_zero() { 0 } else { ms(policy.interval + HAND_OVER_MARGIN) }
            });
            sql("UPDATE leases SET open = $2, spacing_ms = $3 WHERE id = $1")
                .bind(grant.id)
                .bind(open)
                .bind(spacing)
                .execute(tx)
                .await?;
            grants.push(grant);
        }
        Ok(grants)
    }
}

/// A host that may be leased now.
#[derive(sqlx::FromRow)]
struct Candidate {
    host: String,
    epoch: i64,
    max_leases: i32,
    lease_urls: i32,
}

/// Takes `closed` URLs off a lease's open count and ends the lease when none is left: the host gets
/// the slot back and stays paused until `not_before`. Returns whether the lease ended.
pub(crate) async fn close_lease_urls(tx: &mut Tx, lease_id: i64, closed: i64, not_before: i64) -> StoreResult<bool> {
    // The update locks the lease row, as a submission joining a URL to the lease does before counting
    // it in: the two are serialized, and this one sees the joined count.
    let ended: Option<(String, bool, i64)> = sql("UPDATE leases SET open = open - $2, active = open - $2 > 0 \
                                                  WHERE id = $1 AND active RETURNING host, active, spacing_ms")
    .bind(lease_id)
    .bind(closed)
    .fetch_optional(tx)
    .await?;
    let Some((host, false, spacing)) = ended else { return Ok(false) };
    // The host's next lease keeps the spacing from this one's last request, whoever holds it.
    let not_before = not_before.max(now_ms() + spacing);
    sql("UPDATE hosts SET active_leases = active_leases - 1, \
         next_allowed_at = CASE WHEN next_allowed_at < $2 THEN $2 ELSE next_allowed_at END WHERE host = $1")
    .bind(host)
    .bind(not_before)
    .execute(tx)
    .await?;
    Ok(true)
}

impl SqlStore {
    pub(crate) async fn acquire_leases_impl(
        &self,
        req: &LeaseRequest,
        mut credits: u64,
        max_leases: usize,
    ) -> StoreResult<Vec<LeaseGrant>> {
        let now = now_ms();
        let dialect = self.db.dialect();
        let mut tx = self.db.begin_keyed().await?;
        // A host is free when it has fewer leases than its budget — or, for the worker that holds its
        // latest lease, one more: that worker's own gate keeps the host's pace, and its current lease
        // may only be waiting on a failing URL's back-off. Hosts with no lease out come first, so
        // second leases never hold back a host that has not started.
        let candidates: Vec<Candidate> = sql(format!(
            "SELECT host, epoch, max_leases, lease_urls FROM hosts WHERE pending > 0 \
             AND (active_leases < max_leases OR (active_leases = max_leases AND holder = $3)) \
             AND next_allowed_at <= $1 ORDER BY priority, active_leases, next_allowed_at, host LIMIT $2{}",
            dialect.skip_locked
        ))
        .bind(now)
        .bind(CANDIDATE_HOSTS + max_leases as i64)
        .bind(req.worker_id.clone())
        .fetch_all(&mut tx)
        .await?;
        let mut batch = GrantBatch::default();
        for c in candidates {
            if batch.pending.len() >= max_leases || credits == 0 {
                break;
            }
            let max_urls = if c.max_leases > 1 { req.max_urls_lifted } else { req.max_urls };
            let max_urls = max_urls.min(u32::try_from(credits).unwrap_or(u32::MAX));
            // A polite host's lease holds about a lease span of work at its pace.
            let max_urls = match u32::try_from(c.lease_urls) {
                Ok(n) if n > 0 => max_urls.min(n),
                _ => max_urls,
            };
            // The frontier index read in order, up to the lease's size. The jobs whose URLs may go are
            // computed once by the subquery, not joined to every frontier row (a join makes the
            // planner collect the host's whole frontier and sort it), and `job_id + 0` keeps the
            // primary key's index (every row of the job) out of it.
            let (open, close) = dialect.in_subquery;
            let rows: Vec<(i64, String)> = sql(format!(
                "SELECT ju.url_id, u.url FROM job_urls ju JOIN urls u ON u.id = ju.url_id \
                 WHERE ju.host = $1 AND ju.waiting AND ju.job_id + 0 {open}\
                 SELECT id FROM jobs WHERE state IN ('receiving', 'scheduled', 'running') AND not_before <= $2{close} \
                 ORDER BY ju.url_order, ju.seq, ju.url_id LIMIT $3"
            ))
            .bind(c.host.as_str())
            .bind(now)
            .bind(i64::from(max_urls.max(1)))
            .fetch_all(&mut tx)
            .await?;
            // In frontier order, each URL once (a URL pending for two jobs comes up twice): the worker
            // checks a lease's URLs in the order given, so the most urgent go first.
            let mut seen = HashSet::with_capacity(rows.len());
            let urls: Vec<(i64, String)> = rows.into_iter().filter(|(id, _)| seen.insert(*id)).collect();
            if urls.is_empty() {
                // The counter drifted or the host's work waits for `not_before`: recount and look
                // again a little later.
                sql("UPDATE hosts SET next_allowed_at = $2, pending = \
                     (SELECT COUNT(*) FROM job_urls WHERE host = $1 AND waiting) WHERE host = $1")
                .bind(c.host.as_str())
                .bind(now + 1_000)
                .execute(&mut tx)
                .await?;
                continue;
            }
            let n = self.grant(&mut tx, &mut batch, c, urls, req, now).await?;
            credits = credits.saturating_sub(n);
        }
        let grants = batch.finish(&mut tx).await?;
        tx.commit().await?;
        Ok(grants)
    }

    /// Writes a lease of `urls` on the candidate host: the lease row, its URLs' rows (across jobs: a
    /// URL pending in two jobs is checked once and counts for both) and the host's frontier row; the
    /// jobs' counters and options are settled once for the whole batch. Returns the URLs leased.
    async fn grant(
        &self,
        tx: &mut Tx,
        batch: &mut GrantBatch,
        c: Candidate,
        urls: Vec<(i64, String)>,
        req: &LeaseRequest,
        now: i64,
    ) -> StoreResult<u64> {
        let ids: Vec<i64> = urls.iter().map(|(id, _)| *id).collect();
        let epoch = c.epoch + 1;
        let deadline = now + ms(req.ttl);
        let lease_id: i64 = sql("INSERT INTO leases (host, epoch, holder, created_at, expires_at, active) \
                                 VALUES ($1, $2, $3, $4, $5, TRUE) RETURNING id")
        .bind(c.host.as_str())
        .bind(epoch)
        .bind(req.worker_id.clone())
        .bind(now)
        .bind(deadline)
        .fetch_one::<(i64,)>(tx)
        .await?
        .0;
        let mut jobs = BTreeSet::new();
        let mut n_rows = 0i64;
        for chunk in ids.chunks(IDS_PER_STATEMENT) {
            let mut q = sql("UPDATE job_urls SET state = 'leased', lease_id = ");
            q.push_bind(lease_id).push(" WHERE state = 'pending' AND url_id IN (").push_list(chunk.iter().copied());
            q.push(") RETURNING job_id");
            for (job,) in q.fetch_all::<(i64,)>(tx).await? {
                batch.deltas.of(job).leased += 1;
                jobs.insert(job);
                n_rows += 1;
            }
        }
        sql("UPDATE hosts SET active_leases = active_leases + 1, epoch = $2, pending = pending - $3, holder = $5, \
             priority = COALESCE((SELECT url_order / $4 FROM job_urls WHERE host = $1 \
             AND waiting ORDER BY url_order LIMIT 1), 9) WHERE host = $1")
        .bind(c.host.as_str())
        .bind(epoch)
        .bind(n_rows)
        .bind(FRONTIER_ORDERS_PER_PRIORITY)
        .bind(req.worker_id.clone())
        .execute(tx)
        .await?;
        let n = urls.len() as u64;
        batch.pending.push(Pending {
            grant: LeaseGrant {
                id: lease_id,
                epoch,
                host: c.host,
                urls,
                deadline_ms: deadline,
                jobs: jobs.into_iter().collect(),
                job_options: Vec::new(),
                trace_parent: None,
            },
            open: n_rows,
            politeness: req.politeness.clone(),
        });
        Ok(n)
    }

    pub(crate) async fn renew_leases_impl(&self, worker_id: &str, lease_ids: &[i64], ttl: Duration) -> StoreResult<()> {
        let until = now_ms() + ms(ttl);
        let mut conn = self.db.acquire().await?;
        for chunk in lease_ids.chunks(IDS_PER_STATEMENT) {
            let mut q = sql("UPDATE leases SET expires_at = ");
            q.push_bind(until).push(" WHERE holder = ").push_bind(worker_id.to_string());
            q.push(" AND active AND id IN (").push_list(chunk.iter().copied()).push(")");
            q.execute(&mut conn).await?;
        }
        Ok(())
    }

    pub(crate) async fn expire_worker_leases_impl(&self, worker_id: &str) -> StoreResult<()> {
        sql("UPDATE leases SET expires_at = 0 WHERE holder = $1 AND active")
            .bind(worker_id.to_string())
            .execute(&mut self.db.acquire().await?)
            .await?;
        Ok(())
    }

    pub(crate) async fn reap_expired_impl(&self, max_attempts: u32) -> StoreResult<Touched> {
        let now = now_ms();
        let mut tx = self.db.begin().await?;
        let expired: Vec<(String, i64, i64)> = sql(format!(
            "SELECT host, id, spacing_ms FROM leases WHERE active AND expires_at < $1 ORDER BY id LIMIT $2{}",
            self.db.dialect().skip_locked
        ))
        .bind(now)
        .bind(REAP_BATCH)
        .fetch_all(&mut tx)
        .await?;
        let mut deltas = JobDeltas::default();
        for (host, lease_id, spacing) in &expired {
            let rows: Vec<(i64, String)> = sql("UPDATE job_urls SET attempts = attempts + 1, lease_id = NULL, \
                 state = CASE WHEN attempts + 1 >= $2 THEN 'failed' ELSE 'pending' END, \
                 kind = CASE WHEN attempts + 1 >= $2 THEN 'failed' ELSE kind END \
                 WHERE lease_id = $1 AND state = 'leased' RETURNING job_id, state")
            .bind(*lease_id)
            .bind(i64::from(max_attempts))
            .fetch_all(&mut tx)
            .await?;
            let mut back = 0i64;
            for (job, state) in &rows {
                let d = deltas.of(*job);
                d.leased -= 1;
                if state.parse() == Ok(JobUrlState::Failed) {
                    d.failed += 1;
                    d.error += 1;
                } else {
                    back += 1;
                }
            }
            sql("UPDATE leases SET active = FALSE WHERE id = $1").bind(*lease_id).execute(&mut tx).await?;
            // The expired holder may still be sending: the host's next lease keeps the spacing.
            sql("UPDATE hosts SET active_leases = active_leases - 1, pending = pending + $2, \
                 next_allowed_at = CASE WHEN next_allowed_at < $3 THEN $3 ELSE next_allowed_at END WHERE host = $1")
            .bind(host.as_str())
            .bind(back)
            .bind(now + *spacing)
            .execute(&mut tx)
            .await?;
            tracing::info!(lease.id = lease_id, server.address = %host, urls = rows.len(), "lease expired");
        }
        deltas.apply(&mut tx).await?;
        let jobs = deltas.jobs();
        complete_if_done(&mut tx, &jobs, now).await?;
        tx.commit().await?;
        Ok(Touched { jobs, expired_leases: expired.len() as u64, refused: 0 })
    }
}
