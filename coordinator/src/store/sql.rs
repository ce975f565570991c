//! The SQL both stores share. PostgreSQL and SQLite agree on everything the store needs here
//! (`$N` placeholders, `ON CONFLICT`, `RETURNING`, partial indexes); the few differences are passed
//! in as macro arguments: row-locking clauses, the settings a keyed transaction starts with
//! (PostgreSQL only), and how a subquery's ids are matched (an array built once on PostgreSQL, `IN`
//! on SQLite). The implementation is a macro, not generic code, so that each store is checked
//! by the compiler against its own concrete driver types and can override hot paths later.

/// Rows per multi-row statement: under both bind-parameter limits (SQLite 32,766, PostgreSQL 65,535)
/// for the widest statement here (7 columns): floor(32_766 / 7 × 0.9) = 4,212, rounded down.
pub(crate) const CHUNK_ROWS: usize = 4_000;

/// A submission batch's new work on one host, and the budget its job gives the host's leases.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HostWork {
    /// URLs added to the frontier.
    pub pending: i64,
    /// Leases the host may have at once.
    pub max_leases: i32,
    /// URLs one lease may hold (0: no bound of its own).
    pub lease_urls: i32,
}

/// Columns of `jobs` read into a [`super::JobRecord`], in the order `job_from_row` expects.
pub(crate) const JOB_COLS: &str = "id, name, state, priority, options, not_before, received, total, \
     duplicates, leased, checked, fresh, invalid, failed, cancelled, n_ok, n_redirected, n_broken, \
     n_error, created_at, sealed_at, finished_at";

/// Kinds whose class is one of `classes`.
pub(crate) fn kinds_of(classes: &[urlfleet_shared::OutcomeClass]) -> Vec<&'static str> {
    urlfleet_shared::OutcomeKind::ALL.into_iter().filter(|k| classes.contains(&k.class())).map(|k| k.as_str()).collect()
}

/// Where a URL goes when added to a job: `(state, url_order)`, given what is stored about it.
/// `url_order` sorts the frontier: job priority first, then never checked, broken, stale.
pub(crate) fn plan_state(
    priority: i16,
    stored_kind: Option<&str>,
    stored_status: Option<i32>,
    checked_at: Option<i64>,
    policy: &super::RecheckPolicy,
    now: i64,
) -> (&'static str, i16) {
    let base = priority * 10;
    let Some(checked_at) = checked_at else { return ("pending", base) };
    let failing = stored_status.is_some_and(|s| s >= 400)
        || stored_kind
            .and_then(|k| k.parse::<urlfleet_shared::OutcomeKind>().ok())
            .is_some_and(|k| k.class().is_failure());
    let age = now - checked_at;
    if failing {
        if policy.force || age >= urlfleet_shared::time::ms(policy.recheck_broken_after) {
            return ("pending", base + 1);
        }
    } else if policy.force || age >= urlfleet_shared::time::ms(policy.recheck_after) {
        return ("pending", base + 2);
    }
    ("fresh", base + 2)
}

macro_rules! sql_store {
    (
        $store:ident,
        $db:ty,
        skip_locked = $skip:literal,
        for_update = $lock:literal,
        for_share = $share:literal,
        keyed_plans = $keyed:expr,
        in_subquery = ($in_open:literal, $in_close:literal)
    ) => {
        use std::collections::{BTreeMap, BTreeSet, HashMap};
        use std::time::Duration;

        use sqlx::{QueryBuilder, Row};
        use urlfleet_shared::convert::ReportedResult;
        use urlfleet_shared::time::{ms, now_ms};
        use urlfleet_shared::{OutcomeClass, OutcomeKind};

        use crate::store::sql::{kinds_of, plan_state, HostWork, CHUNK_ROWS, JOB_COLS};
        use crate::store::{
            decode_redirects, delta, CounterDelta, InvalidEntry, JobCounts,
            JobRecord, JobState, LeaseGrant, LeaseRequest, NewJob, PlannedUrl, RecheckPolicy, Seal,
            ResultRow, Store, StoreError, StoreResult, Touched,
        };

        type Tx<'a> = sqlx::Transaction<'a, $db>;
        type Pool = sqlx::Pool<$db>;

        /// A URL row as stored: (url, id, kind, status, checked_at, inserted by this transaction).
        type StoredUrl = (String, i64, Option<String>, Option<i32>, Option<i64>, bool);

        /// A job_urls row to insert: `(url id, host, state, url_order, kept kind, seq)`.
        type PlannedRow<'a> = (i64, &'a str, &'static str, i16, Option<String>, i32);

        fn job_from_row(row: &<$db as sqlx::Database>::Row) -> StoreResult<JobRecord> {
            let u = |i: usize| -> StoreResult<u64> { Ok(row.try_get::<i64, _>(i)?.max(0) as u64) };
            Ok(JobRecord {
                id: row.try_get(0)?,
                name: row.try_get(1)?,
                state: JobState::parse(&row.try_get::<String, _>(2)?)?,
                priority: row.try_get(3)?,
                options: row.try_get(4)?,
                not_before_ms: row.try_get(5)?,
                counts: JobCounts {
                    received: u(6)?,
                    total: u(7)?,
                    duplicates: u(8)?,
                    leased: u(9)?,
                    checked: u(10)?,
                    fresh: u(11)?,
                    invalid: u(12)?,
                    failed: u(13)?,
                    cancelled: u(14)?,
                    ok: u(15)?,
                    redirected: u(16)?,
                    broken: u(17)?,
                    error: u(18)?,
                },
                created_at_ms: row.try_get(19)?,
                sealed_at_ms: row.try_get(20)?,
                finished_at_ms: row.try_get(21)?,
            })
        }

        async fn fetch_job(tx: &mut Tx<'_>, id: i64) -> StoreResult<Option<JobRecord>> {
            let sql = sqlx::AssertSqlSafe(format!("SELECT {JOB_COLS} FROM jobs WHERE id = $1"));
            let row = sqlx::query(sql).bind(id).fetch_optional(&mut **tx).await?;
            row.as_ref().map(job_from_row).transpose()
        }

        /// Applies counter changes, in ascending job id order (a fixed lock order avoids deadlocks
        /// between concurrent transactions on PostgreSQL).
        async fn apply_delta(tx: &mut Tx<'_>, d: &CounterDelta) -> StoreResult<()> {
            for (job, v) in d.rows() {
                sqlx::query(
                    "UPDATE jobs SET leased = leased + $2, checked = checked + $3, fresh = fresh + $4, \
                     failed = failed + $5, n_ok = n_ok + $6, n_redirected = n_redirected + $7, \
                     n_broken = n_broken + $8, n_error = n_error + $9, cancelled = cancelled + $10 \
                     WHERE id = $1",
                )
                .bind(job)
                .bind(v[delta::LEASED])
                .bind(v[delta::CHECKED])
                .bind(v[delta::FRESH])
                .bind(v[delta::FAILED])
                .bind(v[delta::OK])
                .bind(v[delta::REDIRECTED])
                .bind(v[delta::BROKEN])
                .bind(v[delta::ERROR])
                .bind(v[delta::CANCELLED])
                .execute(&mut **tx)
                .await?;
            }
            Ok(())
        }

        /// Completes the jobs whose every URL is resolved.
        async fn complete_if_done(tx: &mut Tx<'_>, jobs: &[i64], now: i64) -> StoreResult<()> {
            for job in jobs {
                sqlx::query(
                    "UPDATE jobs SET state = 'completed', finished_at = $2, unique_active = FALSE \
                     WHERE id = $1 AND sealed_at IS NOT NULL AND state IN ('scheduled', 'running') \
                     AND checked + fresh + invalid + failed + cancelled >= total",
                )
                .bind(job)
                .bind(now)
                .execute(&mut **tx)
                .await?;
            }
            Ok(())
        }

        /// Adds pending work to hosts' frontier counters (negative to remove).
        async fn add_host_pending(tx: &mut Tx<'_>, per_host: &BTreeMap<&str, i64>) -> StoreResult<()> {
            let rows: Vec<(&str, i64)> = per_host.iter().map(|(h, n)| (*h, *n)).collect();
            for chunk in rows.chunks(CHUNK_ROWS) {
                let mut qb = QueryBuilder::<$db>::new("INSERT INTO hosts (host, pending) ");
                qb.push_values(chunk, |mut b, (h, n)| {
                    b.push_bind(*h).push_bind(*n);
                });
                qb.push(" ON CONFLICT (host) DO UPDATE SET pending = hosts.pending + excluded.pending");
                qb.build().execute(&mut **tx).await?;
            }
            Ok(())
        }

        /// Adds new pending work to hosts, with each one's lease budget: how many leases it may have at
        /// once and how many URLs each may hold. A host keeps the stricter budget while it still has
        /// work — pending, or out in a lease — so a polite job is never overridden.
        async fn add_frontier(tx: &mut Tx<'_>, per_host: &BTreeMap<&str, HostWork>, priority: i16) -> StoreResult<()> {
            let rows: Vec<(&str, HostWork)> = per_host.iter().map(|(h, v)| (*h, *v)).collect();
            for chunk in rows.chunks(CHUNK_ROWS) {
                let mut qb =
                    QueryBuilder::<$db>::new("INSERT INTO hosts (host, pending, max_leases, lease_urls, priority) ");
                qb.push_values(chunk, |mut b, (h, w)| {
                    b.push_bind(*h).push_bind(w.pending).push_bind(w.max_leases).push_bind(w.lease_urls).push_bind(priority);
                });
                // While the host has work left (pending, or a lease out), its strictest budget holds:
                // the fewest leases at once and the smallest leases (0 is no bound of its own). Without
                // the leases, a job whose limits are lifted could open leases beside a polite job's.
                qb.push(
                    " ON CONFLICT (host) DO UPDATE SET pending = hosts.pending + excluded.pending, \
                     max_leases = CASE WHEN (hosts.pending > 0 OR hosts.active_leases > 0) \
                     AND hosts.max_leases < excluded.max_leases \
                     THEN hosts.max_leases ELSE excluded.max_leases END, \
                     lease_urls = CASE WHEN (hosts.pending > 0 OR hosts.active_leases > 0) AND hosts.lease_urls > 0 \
                     AND (excluded.lease_urls = 0 OR hosts.lease_urls < excluded.lease_urls) \
                     THEN hosts.lease_urls ELSE excluded.lease_urls END, \
                     priority = CASE WHEN hosts.pending > 0 AND hosts.priority < excluded.priority \
                     THEN hosts.priority ELSE excluded.priority END",
                );
                qb.build().execute(&mut **tx).await?;
            }
            Ok(())
        }

        /// Takes `closed` URLs off a lease's open count and ends the lease when none is left: the host
        /// gets the slot back and stays paused until `not_before`. Returns whether the lease ended.
        async fn close_lease_urls(tx: &mut Tx<'_>, lease_id: i64, closed: i64, not_before: i64) -> StoreResult<bool> {
            // The update locks the lease row, as a submission joining a URL to the lease does before
            // counting it in: the two are serialized, and this one sees the joined count.
            let ended: Option<(String, bool)> = sqlx::query_as(
                "UPDATE leases SET open = open - $2, active = open - $2 > 0 WHERE id = $1 AND active \
                 RETURNING host, active",
            )
            .bind(lease_id)
            .bind(closed)
            .fetch_optional(&mut **tx)
            .await?;
            let Some((host, false)) = ended else { return Ok(false) };
            sqlx::query(
                "UPDATE hosts SET active_leases = active_leases - 1, \
                 next_allowed_at = CASE WHEN next_allowed_at < $2 THEN $2 ELSE next_allowed_at END WHERE host = $1",
            )
            .bind(&host)
            .bind(not_before)
            .execute(&mut **tx)
            .await?;
            Ok(true)
        }

        /// The newest result of each URL in a batch (it sets the latest state and the job progress),
        /// in URL id order.
        fn newest_per_url(results: &[ReportedResult]) -> Vec<&ReportedResult> {
            let mut by_url: HashMap<i64, &ReportedResult> = HashMap::with_capacity(results.len());
            for r in results {
                let e = by_url.entry(r.url_id).or_insert(r);
                if r.outcome.checked_at_ms > e.outcome.checked_at_ms {
                    *e = r;
                }
            }
            let mut v: Vec<&ReportedResult> = by_url.into_values().collect();
            v.sort_by_key(|r| r.url_id);
            v
        }

        /// Cancels a job's pending URLs and takes them off the frontier; returns how many.
        async fn cancel_pending(tx: &mut Tx<'_>, job_id: i64) -> StoreResult<i64> {
            let hosts: Vec<(String,)> = sqlx::query_as(
                "UPDATE job_urls SET state = 'cancelled' WHERE job_id = $1 AND state = 'pending' RETURNING host",
            )
            .bind(job_id)
            .fetch_all(&mut **tx)
            .await?;
            let mut per_host: BTreeMap<&str, i64> = BTreeMap::new();
            for (h,) in &hosts {
                *per_host.entry(h.as_str()).or_default() -= 1;
            }
            add_host_pending(tx, &per_host).await?;
            Ok(hosts.len() as i64)
        }

        /// One attempt at [`Store::seal_job`], in one transaction.
        async fn seal_once(pool: &Pool, job_id: i64, seal: &Seal) -> StoreResult<(JobRecord, bool)> {
            let now = now_ms();
            let mut tx = pool.begin().await?;
            // The job's row is locked last, as leasing and ingest do: they lock frontier and URL
            // rows first and the job's counters at the end.
            let current: Option<(String, i16)> = sqlx::query_as("SELECT state, priority FROM jobs WHERE id = $1")
                .bind(job_id)
                .fetch_optional(&mut *tx)
                .await?;
            let Some((state, provisional)) = current else {
                return Err(StoreError::Corrupt(format!("job {job_id} vanished while receiving")));
            };
            if state != "receiving" && state != "cancelled" {
                // Sealed already (an earlier attempt committed): nothing to do again.
                let rec = fetch_job(&mut tx, job_id).await?.ok_or_else(|| StoreError::Corrupt("job vanished".into()))?;
                tx.commit().await?;
                return Ok((rec, false));
            }
            if state == "cancelled" {
                // Cancelled while its URLs arrived: it stays cancelled, and so do the URLs that came
                // after the cancellation.
                let late = cancel_pending(&mut tx, job_id).await?;
                sqlx::query(
                    "UPDATE jobs SET cancelled = cancelled + $2, received = $3, duplicates = $4, total = $5, \
                     sealed_at = $6 WHERE id = $1",
                )
                .bind(job_id)
                .bind(late)
                .bind(seal.received as i64)
                .bind(seal.duplicates as i64)
                .bind(seal.total as i64)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                let rec = fetch_job(&mut tx, job_id).await?.ok_or_else(|| StoreError::Corrupt("job vanished".into()))?;
                tx.commit().await?;
                return Ok((rec, false));
            }
            // An active job older than the uniqueness window no longer absorbs duplicates.
            sqlx::query("UPDATE jobs SET unique_active = FALSE WHERE unique_key = $1 AND unique_active AND created_at < $2")
                .bind(&seal.unique_key)
                .bind(now - ms(seal.unique_window))
                .execute(&mut *tx)
                .await?;
            let twin: Option<i64> =
                sqlx::query_scalar("SELECT id FROM jobs WHERE unique_key = $1 AND unique_active ORDER BY id LIMIT 1")
                    .bind(&seal.unique_key)
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some(twin) = twin {
                discard_receiving(&mut tx, job_id).await?;
                let rec = fetch_job(&mut tx, twin).await?.ok_or_else(|| StoreError::Corrupt("job vanished".into()))?;
                tx.commit().await?;
                return Ok((rec, true));
            }
            let priority = seal.priority.min(provisional);
            if priority < provisional {
                // Known small only now: its waiting URLs move up (a small job, so few rows).
                sqlx::query(
                    "UPDATE hosts SET priority = $2 WHERE priority > $2 AND host IN \
                     (SELECT host FROM job_urls WHERE job_id = $1 AND state = 'pending')",
                )
                .bind(job_id)
                .bind(priority)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "UPDATE job_urls SET url_order = url_order - $2 WHERE job_id = $1 AND state = 'pending'",
                )
                .bind(job_id)
                .bind((provisional - priority) * 10)
                .execute(&mut *tx)
                .await?;
            }
            let sealed = sqlx::query(
                "UPDATE jobs SET state = CASE WHEN leased > 0 OR checked > 0 OR failed > 0 THEN 'running' \
                 ELSE 'scheduled' END, unique_key = $2, unique_active = TRUE, received = $3, \
                 duplicates = $4, total = $5, priority = $6, not_before = $7, sealed_at = $8 \
                 WHERE id = $1 AND state = 'receiving'",
            )
            .bind(job_id)
            .bind(&seal.unique_key)
            .bind(seal.received as i64)
            .bind(seal.duplicates as i64)
            .bind(seal.total as i64)
            .bind(priority)
            .bind(seal.not_before_ms)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if sealed.rows_affected() == 0 {
                // Cancelled meanwhile: the next attempt takes the cancelled path.
                return Err(StoreError::Conflict);
            }
            complete_if_done(&mut tx, &[job_id], now).await?;
            let rec = fetch_job(&mut tx, job_id).await?.ok_or_else(|| StoreError::Corrupt("job vanished".into()))?;
            tx.commit().await?;
            Ok((rec, false))
        }

        /// Removes a `receiving` job and everything written for it, taking its waiting URLs off the
        /// frontier counters.
        async fn discard_receiving(tx: &mut Tx<'_>, job_id: i64) -> StoreResult<()> {
            let state: Option<String> = sqlx::query_scalar(concat!("SELECT state FROM jobs WHERE id = $1", $lock))
                .bind(job_id)
                .fetch_optional(&mut **tx)
                .await?;
            if state.as_deref() != Some("receiving") {
                return Ok(());
            }
            let waiting: Vec<(String, i64)> = sqlx::query_as(
                "SELECT host, COUNT(*) FROM job_urls WHERE job_id = $1 AND state = 'pending' GROUP BY host ORDER BY host",
            )
            .bind(job_id)
            .fetch_all(&mut **tx)
            .await?;
            let per_host: BTreeMap<&str, i64> = waiting.iter().map(|(h, n)| (h.as_str(), -n)).collect();
            add_host_pending(tx, &per_host).await?;
            // URLs leased while they arrived leave their leases, which end if nothing else is open.
            let leased: Vec<(Option<i64>, i64)> = sqlx::query_as(
                "SELECT lease_id, COUNT(*) FROM job_urls WHERE job_id = $1 AND state = 'leased' \
                 GROUP BY lease_id ORDER BY lease_id",
            )
            .bind(job_id)
            .fetch_all(&mut **tx)
            .await?;
            sqlx::query("DELETE FROM job_urls WHERE job_id = $1").bind(job_id).execute(&mut **tx).await?;
            for (lease, n) in leased {
                if let Some(lease) = lease {
                    close_lease_urls(tx, lease, n, 0).await?;
                }
            }
            sqlx::query("DELETE FROM job_invalid WHERE job_id = $1").bind(job_id).execute(&mut **tx).await?;
            sqlx::query("DELETE FROM jobs WHERE id = $1").bind(job_id).execute(&mut **tx).await?;
            Ok(())
        }

        /// The rest of an ingest once `urls`, `checks` and `job_urls` are written: `open` holds the
        /// `(job, url, lease, host)` rows this batch finished, `lease` `None` for a row that was pending.
        /// Counters, frontier, lease ends, host pauses and job completion, then commit.
        async fn settle_ingest(
            mut tx: Tx<'_>,
            open: Vec<(i64, i64, Option<i64>, String)>,
            newest: &[&ReportedResult],
            results: &[ReportedResult],
            now: i64,
        ) -> StoreResult<Touched> {
            let class_of: HashMap<i64, OutcomeClass> = newest.iter().map(|r| (r.url_id, r.outcome.kind.class())).collect();
            let mut d = CounterDelta::default();
            let mut per_host: BTreeMap<String, i64> = BTreeMap::new();
            // URLs each lease no longer holds open. A late report may finish rows that another lease
            // holds now: they are taken off that lease.
            let mut closed: BTreeMap<i64, i64> = BTreeMap::new();
            for (job, url_id, lease, host) in open {
                d.add(job, delta::CHECKED, 1);
                d.add_class(job, class_of.get(&url_id).copied().unwrap_or(OutcomeClass::Error));
                match lease {
                    Some(lease) => {
                        d.add(job, delta::LEASED, -1);
                        *closed.entry(lease).or_default() += 1;
                    }
                    None => *per_host.entry(host).or_default() -= 1,
                }
            }
            let per_host: BTreeMap<&str, i64> = per_host.iter().map(|(h, n)| (h.as_str(), *n)).collect();
            add_host_pending(&mut tx, &per_host).await?;
            let mut leases: BTreeMap<i64, i64> = BTreeMap::new();
            for r in results {
                let pause = leases.entry(r.lease_id).or_insert(0);
                *pause = (*pause).max(r.outcome.host_paused_until_ms.unwrap_or(0));
            }
            for (lease, pause) in &leases {
                if *pause > now {
                    // A host that asked to be left alone stays paused for every worker.
                    sqlx::query(
                        "UPDATE hosts SET next_allowed_at = CASE WHEN next_allowed_at < $2 THEN $2 ELSE next_allowed_at END \
                         WHERE host = (SELECT host FROM leases WHERE id = $1)",
                    )
                    .bind(lease)
                    .bind(pause)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            for (lease, n) in &closed {
                close_lease_urls(&mut tx, *lease, *n, now).await?;
            }
            // Job rows are the most contended: touch them last, in id order, to hold their locks briefly.
            apply_delta(&mut tx, &d).await?;
            let jobs = d.jobs();
            complete_if_done(&mut tx, &jobs, now).await?;
            tx.commit().await?;
            Ok(Touched { jobs, expired_leases: 0 })
        }

        #[async_trait::async_trait]
        impl Store for $store {
            async fn create_job(&self, job: NewJob) -> StoreResult<(JobRecord, bool)> {
                let now = now_ms();
                let mut tx = self.pool.begin().await?;
                // Unique key and counts come with the seal; until then the job absorbs no duplicates.
                let id: Option<i64> = sqlx::query_scalar(
                    "INSERT INTO jobs (name, state, priority, options, unique_key, unique_active, \
                     idempotency_key, not_before, created_at, trace_parent) \
                     VALUES ($1, 'receiving', $2, $3, '', FALSE, $4, $7, $5, $6) \
                     ON CONFLICT DO NOTHING RETURNING id",
                )
                .bind(&job.name)
                .bind(job.priority)
                .bind(&job.options)
                .bind(&job.idempotency_key)
                .bind(now)
                .bind(&job.trace_parent)
                .bind(job.not_before_ms)
                .fetch_optional(&mut *tx)
                .await?;
                let (id, existing) = match id {
                    Some(id) => (id, false),
                    None => {
                        // Only the idempotency key's unique index can conflict here.
                        let id: Option<i64> = sqlx::query_scalar("SELECT id FROM jobs WHERE idempotency_key = $1")
                            .bind(&job.idempotency_key)
                            .fetch_optional(&mut *tx)
                            .await?;
                        let id = id.ok_or_else(|| {
                            StoreError::Corrupt("job insert conflicted with no visible job".into())
                        })?;
                        (id, true)
                    }
                };
                let rec = fetch_job(&mut tx, id).await?.ok_or_else(|| StoreError::Corrupt("job vanished".into()))?;
                tx.commit().await?;
                Ok((rec, existing))
            }

            async fn seal_job(&self, job_id: i64, seal: Seal) -> StoreResult<(JobRecord, bool)> {
                // A twin sealing at the same moment makes the activation fail on the unique index
                // once the twin commits, and a lease or an ingest may deadlock with it: the next
                // attempt finds the twin, or gets through.
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    match seal_once(&self.pool, job_id, &seal).await {
                        Err(StoreError::Conflict) if attempt < 5 => {}
                        Err(StoreError::Query(sqlx::Error::Database(e)))
                            if attempt < 5
                                && (e.kind() == sqlx::error::ErrorKind::UniqueViolation
                                    || matches!(e.code().as_deref(), Some("40P01" | "40001"))) => {}
                        other => return other,
                    }
                }
            }

            async fn discard_job(&self, job_id: i64) -> StoreResult<()> {
                // The job's row is locked first here, and last by an ingest finishing its leased URLs:
                // a deadlock between the two is retried.
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    let once = async {
                        let mut tx = self.pool.begin().await?;
                        discard_receiving(&mut tx, job_id).await?;
                        tx.commit().await?;
                        Ok::<(), StoreError>(())
                    };
                    match once.await {
                        Err(StoreError::Query(sqlx::Error::Database(e)))
                            if attempt < 5 && matches!(e.code().as_deref(), Some("40P01" | "40001")) => {}
                        other => return other,
                    }
                }
            }

            async fn discard_abandoned(&self, before_ms: i64) -> StoreResult<u64> {
                let ids: Vec<i64> =
                    sqlx::query_scalar("SELECT id FROM jobs WHERE state = 'receiving' AND created_at < $1")
                        .bind(before_ms)
                        .fetch_all(&self.pool)
                        .await?;
                for id in &ids {
                    tracing::warn!(job.id = id, "discarding a job whose submission never ended");
                    self.discard_job(*id).await?;
                }
                Ok(ids.len() as u64)
            }

            async fn add_urls(&self, job_id: i64, urls: &[PlannedUrl], policy: RecheckPolicy) -> StoreResult<()> {
                let now = now_ms();
                let mut tx = self.pool.begin().await?;
                // Shared with the other batches of the submission and with the counter updates of
                // leases and ingest on the job's row, exclusive of a discard: no row is written for a
                // job that is going away.
                let priority: Option<i16> =
                    sqlx::query_scalar(concat!("SELECT priority FROM jobs WHERE id = $1 AND state <> 'completed'", $share))
                        .bind(job_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                let Some(priority) = priority else {
                    return Err(StoreError::Corrupt(format!("job {job_id} is gone or finished; its URLs cannot be added")));
                };
                let mut d = CounterDelta::default();
                let mut per_host: BTreeMap<&str, HostWork> = BTreeMap::new();
                for chunk in urls.chunks(CHUNK_ROWS) {
                    let rows = $store::upsert_urls(&mut tx, chunk).await?;
                    let mut stored: HashMap<String, (i64, Option<String>, Option<i32>, Option<i64>)> =
                        HashMap::with_capacity(rows.len());
                    // A URL that did not exist before this transaction cannot be in anyone's lease.
                    let mut new_ids: BTreeSet<i64> = BTreeSet::new();
                    for (url, id, kind, status, checked_at, new) in rows {
                        if new {
                            new_ids.insert(id);
                        }
                        stored.insert(url, (id, kind, status, checked_at));
                    }
                    let mut planned = Vec::with_capacity(chunk.len());
                    for u in chunk {
                        let (id, kind, status, checked_at) = stored
                            .get(&u.url)
                            .ok_or_else(|| StoreError::Corrupt(format!("url {} not stored", u.url)))?;
                        let (state, order) = plan_state(priority, kind.as_deref(), *status, *checked_at, &policy, now);
                        let kept_kind = if state == "fresh" { kind.clone() } else { None };
                        if state == "fresh" {
                            d.add(job_id, delta::FRESH, 1);
                            let class = kind
                                .as_deref()
                                .and_then(|k| k.parse::<OutcomeKind>().ok())
                                .map(|k| k.class())
                                .unwrap_or(OutcomeClass::Error);
                            d.add_class(job_id, class);
                        } else {
                            let e = per_host.entry(u.host.as_str()).or_insert(HostWork {
                                pending: 0,
                                max_leases: u.max_leases.max(1) as i32,
                                lease_urls: i32::try_from(u.lease_urls).unwrap_or(i32::MAX),
                            });
                            e.pending += 1;
                        }
                        let seq = i32::try_from(u.seq).unwrap_or(i32::MAX);
                        planned.push((*id, u.host.as_str(), state, order, kept_kind, seq));
                    }
                    $store::insert_job_urls(&mut tx, job_id, &planned).await?;
                    // A URL another job has leased right now joins that lease: checked once, its
                    // result counts for both jobs. Usually there is none, and a cheap lookup by URL
                    // id says so.
                    let pending_ids: Vec<i64> =
                        planned.iter().filter(|p| p.2 == "pending" && !new_ids.contains(&p.0)).map(|p| p.0).collect();
                    if pending_ids.is_empty() {
                        continue;
                    }
                    let mut qb = QueryBuilder::<$db>::new(
                        "SELECT url_id, MIN(lease_id) FROM job_urls WHERE state = 'leased' AND url_id IN (",
                    );
                    let mut sep = qb.separated(", ");
                    for id in &pending_ids {
                        sep.push_bind(*id);
                    }
                    qb.push(") GROUP BY url_id");
                    let running: Vec<(i64, Option<i64>)> = qb.build_query_as().fetch_all(&mut *tx).await?;
                    for (url_id, lease_id) in running {
                        // Only a lease that is still active, locked until this transaction ends so it
                        // cannot end unseen meanwhile.
                        let active: Option<i64> =
                            sqlx::query_scalar(concat!("SELECT id FROM leases WHERE id = $1 AND active", $lock))
                                .bind(lease_id)
                                .fetch_optional(&mut *tx)
                                .await?;
                        if active.is_none() {
                            continue;
                        }
                        let host: Option<String> = sqlx::query_scalar(
                            "UPDATE job_urls SET state = 'leased', lease_id = $3 \
                             WHERE job_id = $1 AND url_id = $2 AND state = 'pending' RETURNING host",
                        )
                        .bind(job_id)
                        .bind(url_id)
                        .bind(lease_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                        if let Some(e) = host.and_then(|h| per_host.get_mut(h.as_str())) {
                            e.pending -= 1;
                            d.add(job_id, delta::LEASED, 1);
                            sqlx::query("UPDATE leases SET open = open + 1 WHERE id = $1")
                                .bind(lease_id)
                                .execute(&mut *tx)
                                .await?;
                        }
                    }
                }
                add_frontier(&mut tx, &per_host, priority).await?;
                apply_delta(&mut tx, &d).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn add_invalid(&self, job_id: i64, first_seq: i64, entries: &[InvalidEntry]) -> StoreResult<()> {
                let mut tx = self.pool.begin().await?;
                let mut inserted = 0u64;
                for (ci, chunk) in entries.chunks(CHUNK_ROWS).enumerate() {
                    let base = first_seq + (ci * CHUNK_ROWS) as i64;
                    let mut qb = QueryBuilder::<$db>::new("INSERT INTO job_invalid (job_id, seq, input, reason) ");
                    qb.push_values(chunk.iter().enumerate(), |mut b, (i, e)| {
                        b.push_bind(job_id)
                            .push_bind(base + i as i64)
                            .push_bind(e.input.as_str())
                            .push_bind(e.reason.as_str());
                    });
                    qb.push(" ON CONFLICT DO NOTHING");
                    inserted += qb.build().execute(&mut *tx).await?.rows_affected();
                }
                sqlx::query("UPDATE jobs SET invalid = invalid + $2 WHERE id = $1")
                    .bind(job_id)
                    .bind(inserted as i64)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn get_job(&self, id: i64) -> StoreResult<Option<JobRecord>> {
                let sql = sqlx::AssertSqlSafe(format!("SELECT {JOB_COLS} FROM jobs WHERE id = $1"));
                let row = sqlx::query(sql).bind(id).fetch_optional(&self.pool).await?;
                row.as_ref().map(job_from_row).transpose()
            }

            async fn list_jobs(&self, states: &[JobState], before: Option<i64>, limit: u32) -> StoreResult<Vec<JobRecord>> {
                let mut qb = QueryBuilder::<$db>::new(format!("SELECT {JOB_COLS} FROM jobs WHERE id < "));
                qb.push_bind(before.unwrap_or(i64::MAX));
                if !states.is_empty() {
                    qb.push(" AND state IN (");
                    let mut sep = qb.separated(", ");
                    for s in states {
                        sep.push_bind(s.as_str());
                    }
                    qb.push(")");
                }
                qb.push(" ORDER BY id DESC LIMIT ");
                qb.push_bind(i64::from(limit));
                let rows = qb.build().fetch_all(&self.pool).await?;
                rows.iter().map(job_from_row).collect()
            }

            async fn cancel_job(&self, id: i64) -> StoreResult<Option<(JobRecord, Vec<i64>)>> {
                let now = now_ms();
                let mut tx = self.pool.begin().await?;
                let Some(job) = fetch_job(&mut tx, id).await? else { return Ok(None) };
                if job.state.is_final() {
                    return Ok(Some((job, Vec::new())));
                }
                let pending = cancel_pending(&mut tx, id).await?;
                // RETURNING yields new values, so read the lease ids before clearing them.
                let leased: Vec<(Option<i64>,)> =
                    sqlx::query_as(concat!("SELECT lease_id FROM job_urls WHERE job_id = $1 AND state = 'leased'", $lock))
                        .bind(id)
                        .fetch_all(&mut *tx)
                        .await?;
                sqlx::query("UPDATE job_urls SET state = 'cancelled', lease_id = NULL WHERE job_id = $1 AND state = 'leased'")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                let mut per_lease: BTreeMap<i64, i64> = BTreeMap::new();
                for l in leased.iter().filter_map(|(l,)| *l) {
                    *per_lease.entry(l).or_default() += 1;
                }
                let mut revoked = Vec::new();
                for (l, n) in per_lease {
                    // A lease that still holds URLs of other jobs keeps running for them.
                    if close_lease_urls(&mut tx, l, n, 0).await? {
                        revoked.push(l);
                    }
                }
                let n = pending + leased.len() as i64;
                sqlx::query(
                    "UPDATE jobs SET state = 'cancelled', finished_at = $2, unique_active = FALSE, \
                     cancelled = cancelled + $3, leased = leased - $4 WHERE id = $1",
                )
                .bind(id)
                .bind(now)
                .bind(n)
                .bind(leased.len() as i64)
                .execute(&mut *tx)
                .await?;
                let job = fetch_job(&mut tx, id).await?.ok_or_else(|| StoreError::Corrupt("job vanished".into()))?;
                tx.commit().await?;
                Ok(Some((job, revoked)))
            }

            async fn acquire_lease(&self, req: &LeaseRequest) -> StoreResult<Option<LeaseGrant>> {
                let now = now_ms();
                let mut tx = self.pool.begin().await?;
                if !$keyed.is_empty() {
                    sqlx::raw_sql($keyed).execute(&mut *tx).await?;
                }
                let candidates: Vec<(String, i64, i32, i32)> = sqlx::query_as(concat!(
                    "SELECT host, epoch, max_leases, lease_urls FROM hosts WHERE pending > 0 AND active_leases < max_leases \
                     AND next_allowed_at <= $1 ORDER BY priority, next_allowed_at, host LIMIT 4",
                    $skip
                ))
                .bind(now)
                .fetch_all(&mut *tx)
                .await?;
                for (host, epoch, max_leases, lease_urls) in candidates {
                    let max_urls = if max_leases > 1 { req.max_urls_lifted } else { req.max_urls };
                    // A polite host's lease holds about a lease span of work at its pace.
                    let max_urls = match u32::try_from(lease_urls) {
                        Ok(n) if n > 0 => max_urls.min(n),
                        _ => max_urls,
                    };
                    // The frontier index read in order, up to the lease's size. The jobs whose URLs
                    // may go are computed once by the subquery, not joined to every frontier row (a
                    // join makes the planner collect the host's whole frontier and sort it), and
                    // `job_id + 0` keeps the primary key's index (every row of the job) out of it.
                    let rows: Vec<(i64,)> = sqlx::query_as(concat!(
                        "SELECT url_id FROM job_urls WHERE host = $1 AND waiting AND job_id + 0 ",
                        $in_open,
                        "SELECT id FROM jobs WHERE state IN ('receiving', 'scheduled', 'running') AND not_before <= $2",
                        $in_close,
                        " ORDER BY url_order, seq, url_id LIMIT $3"
                    ))
                    .bind(&host)
                    .bind(now)
                    .bind(i64::from(max_urls.max(1)))
                    .fetch_all(&mut *tx)
                    .await?;
                    // In frontier order, each URL once (a URL pending for two jobs comes up twice):
                    // the worker checks a lease's URLs in the order given, so the most urgent go first.
                    let mut seen = std::collections::HashSet::with_capacity(rows.len());
                    let ids: Vec<i64> = rows.into_iter().map(|(id,)| id).filter(|id| seen.insert(*id)).collect();
                    if ids.is_empty() {
                        // The counter drifted or the host's work waits for `not_before`: recount and
                        // look again a little later.
                        sqlx::query(
                            "UPDATE hosts SET next_allowed_at = $2, pending = \
                             (SELECT COUNT(*) FROM job_urls WHERE host = $1 AND waiting) WHERE host = $1",
                        )
                        .bind(&host)
                        .bind(now + 1_000)
                        .execute(&mut *tx)
                        .await?;
                        continue;
                    }
                    let epoch = epoch + 1;
                    let lease_id: i64 = sqlx::query_scalar(
                        "INSERT INTO leases (host, epoch, holder, created_at, expires_at, active) \
                         VALUES ($1, $2, $3, $4, $5, TRUE) RETURNING id",
                    )
                    .bind(&host)
                    .bind(epoch)
                    .bind(&req.worker_id)
                    .bind(now)
                    .bind(now + ms(req.ttl))
                    .fetch_one(&mut *tx)
                    .await?;
                    let mut d = CounterDelta::default();
                    let mut n_rows = 0i64;
                    for chunk in ids.chunks(CHUNK_ROWS) {
                        let mut qb = QueryBuilder::<$db>::new("UPDATE job_urls SET state = 'leased', lease_id = ");
                        qb.push_bind(lease_id);
                        qb.push(" WHERE state = 'pending' AND url_id IN (");
                        let mut sep = qb.separated(", ");
                        for id in chunk {
                            sep.push_bind(*id);
                        }
                        qb.push(") RETURNING job_id");
                        let jobs: Vec<(i64,)> = qb.build_query_as().fetch_all(&mut *tx).await?;
                        for (j,) in jobs {
                            d.add(j, delta::LEASED, 1);
                            n_rows += 1;
                        }
                    }
                    sqlx::query("UPDATE leases SET open = $2 WHERE id = $1")
                        .bind(lease_id)
                        .bind(n_rows)
                        .execute(&mut *tx)
                        .await?;
                    let deadline = now + ms(req.ttl);
                    sqlx::query(
                        "UPDATE hosts SET active_leases = active_leases + 1, epoch = $2, pending = pending - $3, \
                         priority = COALESCE((SELECT url_order / 10 FROM job_urls WHERE host = $1 \
                         AND waiting ORDER BY url_order LIMIT 1), 9) WHERE host = $1",
                    )
                    .bind(&host)
                    .bind(epoch)
                    .bind(n_rows)
                    .execute(&mut *tx)
                    .await?;
                    apply_delta(&mut tx, &d).await?;
                    let jobs = d.jobs();
                    let mut options = Vec::new();
                    let mut trace_parent = None;
                    for j in &jobs {
                        sqlx::query("UPDATE jobs SET state = 'running' WHERE id = $1 AND state = 'scheduled'")
                            .bind(j)
                            .execute(&mut *tx)
                            .await?;
                        let (o, tp): (Vec<u8>, Option<String>) =
                            sqlx::query_as("SELECT options, trace_parent FROM jobs WHERE id = $1")
                                .bind(j)
                                .fetch_one(&mut *tx)
                                .await?;
                        if trace_parent.is_none() {
                            trace_parent = tp;
                        }
                        if !options.contains(&o) {
                            options.push(o);
                        }
                    }
                    let mut text: HashMap<i64, String> = HashMap::with_capacity(ids.len());
                    for chunk in ids.chunks(CHUNK_ROWS) {
                        let mut qb = QueryBuilder::<$db>::new("SELECT id, url FROM urls WHERE id IN (");
                        let mut sep = qb.separated(", ");
                        for id in chunk {
                            sep.push_bind(*id);
                        }
                        qb.push(")");
                        let rows: Vec<(i64, String)> = qb.build_query_as().fetch_all(&mut *tx).await?;
                        text.extend(rows);
                    }
                    let urls: Vec<(i64, String)> =
                        ids.iter().filter_map(|id| text.remove(id).map(|url| (*id, url))).collect();
                    tx.commit().await?;
                    return Ok(Some(LeaseGrant {
                        id: lease_id,
                        epoch,
                        host,
                        urls,
                        deadline_ms: deadline,
                        jobs,
                        job_options: options,
                        trace_parent,
                    }));
                }
                tx.commit().await?;
                Ok(None)
            }

            async fn renew_leases(&self, worker_id: &str, lease_ids: &[i64], ttl: Duration) -> StoreResult<()> {
                let until = now_ms() + ms(ttl);
                for id in lease_ids {
                    sqlx::query("UPDATE leases SET expires_at = $3 WHERE id = $1 AND holder = $2 AND active")
                        .bind(id)
                        .bind(worker_id)
                        .bind(until)
                        .execute(&self.pool)
                        .await?;
                }
                Ok(())
            }

            async fn expire_worker_leases(&self, worker_id: &str) -> StoreResult<()> {
                sqlx::query("UPDATE leases SET expires_at = 0 WHERE holder = $1 AND active")
                    .bind(worker_id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn reap_expired(&self, max_attempts: u32) -> StoreResult<Touched> {
                let now = now_ms();
                let mut tx = self.pool.begin().await?;
                let expired: Vec<(String, i64)> = sqlx::query_as(concat!(
                    "SELECT host, id FROM leases WHERE active AND expires_at < $1 ORDER BY id LIMIT 100",
                    $skip
                ))
                .bind(now)
                .fetch_all(&mut *tx)
                .await?;
                let mut d = CounterDelta::default();
                for (host, lease_id) in &expired {
                    let rows: Vec<(i64, String)> = sqlx::query_as(
                        "UPDATE job_urls SET attempts = attempts + 1, lease_id = NULL, \
                         state = CASE WHEN attempts + 1 >= $2 THEN 'failed' ELSE 'pending' END, \
                         kind = CASE WHEN attempts + 1 >= $2 THEN 'failed' ELSE kind END \
                         WHERE lease_id = $1 AND state = 'leased' RETURNING job_id, state",
                    )
                    .bind(lease_id)
                    .bind(i64::from(max_attempts))
                    .fetch_all(&mut *tx)
                    .await?;
                    let mut back = 0i64;
                    for (job, state) in &rows {
                        d.add(*job, delta::LEASED, -1);
                        if state == "failed" {
                            d.add(*job, delta::FAILED, 1);
                            d.add(*job, delta::ERROR, 1);
                        } else {
                            back += 1;
                        }
                    }
                    sqlx::query("UPDATE leases SET active = FALSE WHERE id = $1").bind(lease_id).execute(&mut *tx).await?;
                    sqlx::query(
                        "UPDATE hosts SET active_leases = active_leases - 1, pending = pending + $2 WHERE host = $1",
                    )
                    .bind(host)
                    .bind(back)
                    .execute(&mut *tx)
                    .await?;
                    tracing::info!(lease.id = lease_id, server.address = %host, urls = rows.len(), "lease expired");
                }
                apply_delta(&mut tx, &d).await?;
                let jobs = d.jobs();
                complete_if_done(&mut tx, &jobs, now).await?;
                tx.commit().await?;
                Ok(Touched { jobs, expired_leases: expired.len() as u64 })
            }

            async fn ingest(&self, results: &[ReportedResult]) -> StoreResult<Touched> {
                self.ingest_impl(results).await
            }

            async fn frontier_stats(&self) -> StoreResult<crate::store::FrontierStats> {
                let active: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM leases WHERE active").fetch_one(&self.pool).await?;
                let pending: Option<i64> = sqlx::query_scalar("SELECT CAST(SUM(pending) AS BIGINT) FROM hosts WHERE pending > 0")
                    .fetch_one(&self.pool)
                    .await?;
                Ok(crate::store::FrontierStats { active_leases: active, pending: pending.unwrap_or(0) })
            }

            async fn list_results(
                &self,
                job_id: i64,
                classes: &[OutcomeClass],
                after: Option<&str>,
                limit: u32,
            ) -> StoreResult<Vec<ResultRow>> {
                // Cursor: `u<url id>` within the URL rows, then `i<seq>` within the invalid entries.
                let (in_invalid, after_n) = match after {
                    None | Some("") => (false, 0),
                    Some(c) => {
                        let n = c.get(1..).and_then(|n| n.parse::<i64>().ok());
                        match (c.as_bytes()[0], n) {
                            (b'u', Some(n)) => (false, n),
                            (b'i', Some(n)) => (true, n),
                            _ => return Err(StoreError::Corrupt(format!("bad cursor {c:?}"))),
                        }
                    }
                };
                let kinds = kinds_of(classes);
                let want_urls = classes.is_empty() || kinds.iter().any(|k| *k != "invalid");
                let want_invalid = classes.is_empty() || classes.contains(&OutcomeClass::Invalid);
                let mut out = Vec::new();
                if want_urls && !in_invalid {
                    let mut qb = QueryBuilder::<$db>::new(
                        "SELECT u.id, u.url, ju.kind, ju.state, u.status, u.final_url, u.redirects, u.attempts, \
                         u.response_ms, u.content_type, u.content_length, u.checked_at, u.error \
                         FROM job_urls ju JOIN urls u ON u.id = ju.url_id WHERE ju.job_id = ",
                    );
                    qb.push_bind(job_id).push(" AND ju.url_id > ").push_bind(after_n);
                    if !classes.is_empty() {
                        qb.push(" AND ju.kind IN (");
                        let mut sep = qb.separated(", ");
                        for k in &kinds {
                            sep.push_bind(*k);
                        }
                        qb.push(")");
                    }
                    qb.push(" ORDER BY ju.url_id LIMIT ").push_bind(i64::from(limit));
                    for r in qb.build().fetch_all(&self.pool).await? {
                        let id: i64 = r.try_get(0)?;
                        let kind: Option<String> = r.try_get(2)?;
                        let state: String = r.try_get(3)?;
                        let resolved = matches!(state.as_str(), "done" | "fresh" | "failed");
                        out.push(ResultRow {
                            cursor: format!("u{id}"),
                            url: r.try_get(1)?,
                            kind: kind.as_deref().and_then(|k| k.parse().ok()),
                            fresh: state == "fresh",
                            status: if resolved { r.try_get::<Option<i32>, _>(4)?.map(|s| s as u16) } else { None },
                            final_url: if resolved { r.try_get(5)? } else { None },
                            redirects: if resolved { decode_redirects(r.try_get::<Option<String>, _>(6)?.as_deref()) } else { Vec::new() },
                            attempts: r.try_get::<Option<i32>, _>(7)?.unwrap_or(0).max(0) as u32,
                            response_time_ms: r.try_get::<Option<i64>, _>(8)?.unwrap_or(0).max(0) as u64,
                            content_type: r.try_get(9)?,
                            content_length: r.try_get::<Option<i64>, _>(10)?.map(|l| l.max(0) as u64),
                            checked_at_ms: r.try_get(11)?,
                            error: if state == "failed" {
                                Some("gave up: the URL's leases expired too many times".into())
                            } else {
                                r.try_get(12)?
                            },
                        });
                    }
                }
                let remaining = i64::from(limit) - out.len() as i64;
                if want_invalid && remaining > 0 {
                    let after_seq = if in_invalid { after_n } else { -1 };
                    let rows: Vec<(i64, String, String)> = sqlx::query_as(
                        "SELECT seq, input, reason FROM job_invalid WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                    )
                    .bind(job_id)
                    .bind(after_seq)
                    .bind(remaining)
                    .fetch_all(&self.pool)
                    .await?;
                    for (seq, input, reason) in rows {
                        out.push(ResultRow {
                            cursor: format!("i{seq}"),
                            url: input,
                            kind: Some(OutcomeKind::Invalid),
                            fresh: false,
                            status: None,
                            final_url: None,
                            redirects: Vec::new(),
                            attempts: 0,
                            response_time_ms: 0,
                            content_type: None,
                            content_length: None,
                            checked_at_ms: None,
                            error: Some(reason),
                        });
                    }
                }
                Ok(out)
            }
        }
    };
}

pub(crate) use sql_store;
