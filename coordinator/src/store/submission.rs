//! Submissions: creating a job, adding its URLs to the frontier as they arrive, sealing it (or
//! finding it is a duplicate) and discarding one that failed.

use std::collections::{BTreeMap, HashMap, HashSet};

use urlfleet_shared::LeaseBudget;
use urlfleet_shared::job::{CheckReason, CountsDelta, JobUrlState, Priority, Recheck, StoredCheck, frontier_order};
use urlfleet_shared::time::{ms, now_ms};

use super::db::{Tx, ladder_chunks, retry_transient, sql};
use super::frontier::{FrontierEntry, insert_frontier, unasked};
use super::jobs::{JobDeltas, cancel_open, complete_if_done, require_job};
use super::rows::{options_json, parse_kind};
use super::{InvalidEntry, JobRecord, NewJob, PlannedUrl, RecheckPolicy, Seal, SqlStore, StoreError, StoreResult};

/// Rows per multi-row statement: under both bind-parameter limits (SQLite 32,766, PostgreSQL 65,535)
/// for the widest statement here (7 columns): floor(32,766 / 7 × 0.9) = 4,212, rounded down.
pub(crate) const CHUNK_ROWS: usize = 4_000;

/// What is stored about a URL, read or written while it is added to a job.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct StoredUrl {
    pub url: String,
    pub id: i64,
    pub kind: Option<String>,
    pub status: Option<i32>,
    pub checked_at: Option<i64>,
}

impl StoredUrl {
    fn check(&self) -> StoreResult<Option<StoredCheck>> {
        let Some(checked_at_ms) = self.checked_at else { return Ok(None) };
        Ok(Some(StoredCheck {
            kind: self.kind.as_deref().map(parse_kind).transpose()?,
            status: self.status.and_then(|s| u16::try_from(s).ok()),
            checked_at_ms,
        }))
    }
}

/// A `job_urls` row to insert.
#[derive(Debug)]
pub(crate) struct PlannedRow<'a> {
    pub url_id: i64,
    pub host: &'a str,
    pub state: JobUrlState,
    pub url_order: i16,
    /// The stored kind of a fresh URL (it counts as the job's result).
    pub kind: Option<&'a str>,
    pub seq: i32,
}

/// A host's new work from one submission batch.
#[derive(Debug, Clone, Copy)]
struct HostWork {
    pending: i64,
    budget: LeaseBudget,
}

/// A frontier row as a submission merges into it.
#[derive(sqlx::FromRow)]
struct FrontierRow {
    host: String,
    pending: i64,
    active_leases: i32,
    max_leases: i32,
    lease_urls: i32,
    priority: i16,
}

/// A key scoped to its owner: `\u{1f}owner/key`, or the key alone for the anonymous owner (as keys
/// were stored before owners). No submitted key holds a control character, so no key of one owner
/// can spell another's.
pub(crate) fn owned_key(owner: &str, key: &str) -> String {
    if owner.is_empty() { key.to_string() } else { format!("\u{1f}{owner}/{key}") }
}

/// The URL tables are analyzed (PostgreSQL) once uploads have added at least this many rows to
/// `job_urls` since their statistics were taken, and at least three times the rows those statistics
/// describe: the tables are then at least four times what the planner believes (always, for the first
/// large job on a new database).
const ANALYZE_AFTER_URLS: u64 = 10_000;

/// What this store knows of the URL tables' statistics: the rows of `job_urls` the last statistics
/// describe (read from the catalog the first time it matters), the rows its uploads added since, and
/// whether an analyze is running. One store has one analyze at a time: uploads in several lanes, or
/// several jobs at once, each reaching the threshold would otherwise each start one, on the cores the
/// leases and the ingest need at that moment.
#[derive(Debug, Default)]
pub(crate) struct Statistics {
    described: Option<u64>,
    added: u64,
    running: bool,
}

impl Statistics {
    /// Counts `rows` added; true when an analyze should start now (and marks it running).
    fn added(&mut self, rows: u64) -> bool {
        self.added = self.added.saturating_add(rows);
        if self.running || !self.stale() {
            return false;
        }
        self.running = true;
        true
    }

    /// Whether the rows added since the statistics make them stale (see [`ANALYZE_AFTER_URLS`]); not
    /// knowing what they describe yet counts as stale until it is read.
    fn stale(&self) -> bool {
        self.added >= ANALYZE_AFTER_URLS && self.described.is_none_or(|d| self.added >= d.saturating_mul(3))
    }
}

impl SqlStore {
    pub(crate) async fn create_job_impl(&self, job: NewJob) -> StoreResult<(JobRecord, bool)> {
        let now = now_ms();
        let mut tx = self.db.begin().await?;
        // Unique key and counts come with the seal; until then the job absorbs no duplicates.
        // An idempotency key is its owner's: the column holds both (a token name has no '/').
        let key = job.options.idempotency_key.as_ref().map(|k| owned_key(&job.owner, k));
        let id: Option<i64> = sql("INSERT INTO jobs (name, state, priority, options, unique_key, unique_active, \
                                   idempotency_key, not_before, created_at, trace_parent, owner) \
                                   VALUES ($1, 'receiving', $2, $3, '', FALSE, $4, $5, $6, $7, $8) \
                                   ON CONFLICT DO NOTHING RETURNING id")
        .bind(job.options.name.clone())
        .bind(job.priority.rank())
        .bind(options_json(&job.options))
        .bind(key.clone())
        .bind(job.not_before_ms)
        .bind(now)
        .bind(job.trace_parent)
        .bind(job.owner.clone())
        .scalar(&mut tx)
        .await?;
        let (id, existing) = match id {
            Some(id) => (id, false),
            None => {
                // Only the idempotency key's unique index can conflict here.
                let id: Option<i64> =
                    sql("SELECT id FROM jobs WHERE idempotency_key = $1").bind(key).scalar(&mut tx).await?;
                (id.ok_or_else(|| StoreError::Corrupt("job insert conflicted with no visible job".into()))?, true)
            }
        };
        let rec = require_job(&mut tx, id).await?;
        if existing && rec.owner != job.owner {
            return Err(StoreError::Corrupt(format!("job {id} matched another owner's idempotency key")));
        }
        tx.commit().await?;
        Ok((rec, existing))
    }

    pub(crate) async fn add_urls_impl(
        &self,
        job_id: i64,
        urls: &[PlannedUrl],
        policy: RecheckPolicy,
    ) -> StoreResult<()> {
        let now = now_ms();
        let dialect = self.db.dialect();
        let mut tx = self.db.begin().await?;
        // Shared with the other batches of the submission and with the counter updates of leases and
        // ingest on the job's row, exclusive of a discard: no row is written for a job going away.
        let priority: Option<i16> =
            sql(format!("SELECT priority FROM jobs WHERE id = $1 AND state <> 'completed'{}", dialect.for_key_share))
                .bind(job_id)
                .scalar(&mut tx)
                .await?;
        let priority = priority.and_then(Priority::from_rank).ok_or(StoreError::NotReceiving(job_id))?;
        let state: Option<String> = sql("SELECT state FROM jobs WHERE id = $1").bind(job_id).scalar(&mut tx).await?;
        // A job cancelled while its URLs arrive keeps them as cancelled: none joins the frontier.
        let cancelled = state.as_deref() == Some(urlfleet_shared::JobState::Cancelled.as_str());
        let mut delta = CountsDelta::default();
        let mut budgets: HashMap<&str, LeaseBudget> = HashMap::new();
        let mut per_host: BTreeMap<&str, HostWork> = BTreeMap::new();
        let mut waiting_rows: Vec<FrontierEntry<'_>> = Vec::new();
        for chunk in urls.chunks(CHUNK_ROWS) {
            let stored = match &mut tx {
                Tx::Pg(t) => super::postgres::upsert_urls(t, chunk).await?,
                Tx::Lite(t) => super::sqlite::upsert_urls(t, chunk).await?,
            };
            let stored: HashMap<&str, &StoredUrl> = stored.iter().map(|s| (s.url.as_str(), s)).collect();
            let mut planned = Vec::with_capacity(chunk.len());
            let mut classes: HashMap<i64, urlfleet_shared::OutcomeClass> = HashMap::new();
            for u in chunk {
                let s = stored.get(u.url.as_str()).ok_or_else(|| {
                    StoreError::Corrupt(format!("url {} not stored", urlfleet_shared::url::redact(&u.url)))
                })?;
                let check = s.check()?;
                let (state, reason) = match policy.judge(check.as_ref(), now) {
                    Recheck::Check(_) if cancelled => (JobUrlState::Cancelled, CheckReason::Stale),
                    Recheck::Check(reason) => (JobUrlState::Pending, reason),
                    Recheck::Fresh => (JobUrlState::Fresh, CheckReason::Stale),
                };
                if state == JobUrlState::Fresh {
                    classes.insert(
                        s.id,
                        check.and_then(|c| c.kind).map_or(urlfleet_shared::OutcomeClass::Error, |k| k.class()),
                    );
                }
                budgets.entry(u.host.as_str()).or_insert(u.budget);
                planned.push(PlannedRow {
                    url_id: s.id,
                    host: u.host.as_str(),
                    state,
                    url_order: frontier_order(priority, reason),
                    kind: if state == JobUrlState::Fresh { s.kind.as_deref() } else { None },
                    seq: i32::try_from(u.seq).unwrap_or(i32::MAX),
                });
            }
            // The counters and the frontier follow the rows this batch inserted, not the plan: a
            // batch tried again after a commit whose outcome was unknown finds its rows there and
            // counts nothing twice.
            let inserted = match &mut tx {
                Tx::Pg(t) => super::postgres::insert_job_urls(t, job_id, &planned).await?,
                Tx::Lite(t) => super::sqlite::insert_job_urls(t, job_id, &planned).await?,
            };
            let mut waiting: HashSet<i64> = HashSet::with_capacity(inserted.len());
            for (url_id, state) in inserted {
                match state.parse::<JobUrlState>() {
                    Ok(JobUrlState::Fresh) => {
                        delta.fresh += 1;
                        delta.add_class(classes.get(&url_id).copied().unwrap_or(urlfleet_shared::OutcomeClass::Error));
                    }
                    Ok(JobUrlState::Cancelled) => delta.cancelled += 1,
                    Ok(JobUrlState::Pending) => {
                        waiting.insert(url_id);
                    }
                    _ => return Err(StoreError::Corrupt(format!("job_urls state {state:?} inserted"))),
                }
            }
            // The host is borrowed from the batch (`planned` also borrows this chunk's stored rows).
            waiting_rows.extend(chunk.iter().zip(&planned).filter(|(_, p)| waiting.contains(&p.url_id)).map(
                |(u, p)| FrontierEntry {
                    host: u.host.as_str(),
                    url_order: p.url_order,
                    seq: p.seq,
                    url_id: p.url_id,
                    job_id,
                },
            ));
        }
        // A URL out in another job's lease right now joins that lease: it is checked once, and its
        // result counts for both jobs. The others wait in the frontier.
        let joined = self.join_running_leases(&mut tx, job_id, waiting_rows.iter().map(|e| e.url_id)).await?;
        delta.leased += joined.len() as i64;
        waiting_rows.retain(|e| !joined.contains(&e.url_id));
        for (host, n) in insert_frontier(&mut tx, &waiting_rows).await? {
            let (host, budget) = budgets
                .get_key_value(host.as_str())
                .map(|(h, b)| (*h, *b))
                .ok_or_else(|| unasked("a frontier host"))?;
            per_host.entry(host).or_insert(HostWork { pending: 0, budget }).pending += n;
        }
        self.add_frontier(&mut tx, &per_host, priority).await?;
        let mut deltas = JobDeltas::default();
        *deltas.of(job_id) = delta;
        deltas.apply(&mut tx).await?;
        tx.commit().await?;
        // A job's URLs are leased and reported while its upload goes on: its first results are
        // ingested while the tables may still hold statistics of when they were nearly empty.
        self.analyze_when_stale(urls.len() as u64);
        Ok(())
    }

    /// Counts `rows` added to `job_urls` and, when that makes the statistics stale, has PostgreSQL
    /// analyze the URL tables in the background (it blocks no reader or writer). A large job can be
    /// most of the tables (always, on a new database): until PostgreSQL's own analyze comes round,
    /// the prepared ingest and lease statements would be planned without statistics — as scans of
    /// the whole table per chunk, or nested loops over all of it.
    fn analyze_when_stale(&self, rows: u64) {
        let super::db::Db::Pg(pool) = &self.db else { return };
        if !self.statistics().added(rows) {
            return;
        }
        let (pool, store) = (pool.clone(), self.clone());
        tokio::spawn(async move {
            if let Err(e) = store.refresh_statistics(&pool).await {
                tracing::warn!(error = %e, "analyzing the URL tables after a large upload failed");
            }
            store.statistics().running = false;
        });
    }

    /// Reads what the statistics describe, if this store does not know yet, and analyzes the URL
    /// tables if they are stale.
    async fn refresh_statistics(&self, pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
        let described = || async {
            let rows = "SELECT GREATEST(reltuples, 0)::BIGINT FROM pg_class WHERE oid = 'job_urls'::regclass";
            sqlx::query_scalar::<_, i64>(rows).fetch_one(pool).await.map(|d| d.max(0) as u64)
        };
        if self.statistics().described.is_none() {
            let d = described().await?;
            let mut stats = self.statistics();
            stats.described = Some(d);
            if !stats.stale() {
                return Ok(());
            }
        }
        let added = self.statistics().added;
        sqlx::query("ANALYZE job_urls, urls").execute(pool).await?;
        let d = described().await?;
        let mut stats = self.statistics();
        stats.described = Some(d);
        stats.added -= added.min(stats.added);
        Ok(())
    }

    fn statistics(&self) -> std::sync::MutexGuard<'_, Statistics> {
        self.statistics.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins those of a job's new open URLs that another job's live lease holds right now to that
    /// lease, and returns them. Usually there is none, and a probe of `lease_urls` by URL says so.
    /// The leases found are locked in id order, once for the whole batch (as every transaction locks
    /// leases, before any host), and what they hold is read again under the lock: an ingest that
    /// stored a URL's result meanwhile took it out, and the URL then waits in the frontier.
    async fn join_running_leases(
        &self,
        tx: &mut Tx,
        job_id: i64,
        url_ids: impl Iterator<Item = i64>,
    ) -> StoreResult<HashSet<i64>> {
        let ids: Vec<i64> = url_ids.collect();
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        let mut q = sql("SELECT DISTINCT lease_id FROM lease_urls WHERE url_id ");
        q.push_id_set(ids.iter().copied());
        let mut leases: Vec<i64> = q.fetch_all::<(i64,)>(tx).await?.into_iter().map(|(id,)| id).collect();
        if leases.is_empty() {
            return Ok(HashSet::new());
        }
        leases.sort_unstable();
        let mut q = sql("SELECT id FROM leases WHERE active AND id ");
        q.push_id_set(leases).push(" ORDER BY id").push(self.db.dialect().for_no_key_update);
        let live: Vec<i64> = q.fetch_all::<(i64,)>(tx).await?.into_iter().map(|(id,)| id).collect();
        if live.is_empty() {
            return Ok(HashSet::new());
        }
        let mut q = sql("INSERT INTO lease_urls (url_id, lease_id, job_id) SELECT DISTINCT url_id, lease_id, ");
        q.push_bind(job_id).push(" FROM lease_urls WHERE url_id ").push_id_set(ids);
        q.push(" AND lease_id ").push_id_set(live).push(" ON CONFLICT DO NOTHING RETURNING url_id");
        Ok(q.fetch_all::<(i64,)>(tx).await?.into_iter().map(|(id,)| id).collect())
    }

    /// Adds a batch's new pending work to its hosts' frontier rows, with the lease budget the job
    /// gives each host. While a host has work left (pending, or out in a lease) the stricter budget
    /// of the stored one and the new one holds ([`LeaseBudget::stricter`]), and so does the better
    /// priority; a host with nothing left takes the new job's. The rows are read locked, in host
    /// order, and written back in one statement.
    async fn add_frontier(
        &self,
        tx: &mut Tx,
        per_host: &BTreeMap<&str, HostWork>,
        priority: Priority,
    ) -> StoreResult<()> {
        let hosts: Vec<&str> = per_host.keys().copied().collect();
        for chunk in ladder_chunks(&hosts, CHUNK_ROWS) {
            let mut q = sql("INSERT INTO hosts (host) VALUES ");
            for (i, h) in chunk.iter().enumerate() {
                q.push(if i == 0 { "(" } else { ", (" }).push_bind(*h).push(")");
            }
            q.push(" ON CONFLICT (host) DO NOTHING");
            q.execute(tx).await?;
            let mut q =
                sql("SELECT host, pending, active_leases, max_leases, lease_urls, priority FROM hosts WHERE host IN (");
            q.push_list(chunk.iter().copied()).push(") ORDER BY host").push(self.db.dialect().for_update);
            let rows: Vec<FrontierRow> = q.fetch_all(tx).await?;
            let mut q = sql("WITH v(host, pending, max_leases, lease_urls, priority) AS (VALUES ");
            for (i, row) in rows.iter().enumerate() {
                let work = per_host
                    .get(row.host.as_str())
                    .ok_or_else(|| StoreError::Corrupt(format!("host {} read but not asked for", row.host)))?;
                let busy = row.pending > 0 || row.active_leases > 0;
                let stored = LeaseBudget {
                    max_leases: u32::try_from(row.max_leases).unwrap_or(1),
                    lease_urls: u32::try_from(row.lease_urls).unwrap_or(0),
                };
                let budget = if busy { stored.stricter(work.budget) } else { work.budget };
                let rank = if row.pending > 0 { row.priority.min(priority.rank()) } else { priority.rank() };
                q.push(if i == 0 { "(" } else { ", (" });
                q.push_bind(row.host.clone()).push(", ").push_bind(work.pending).push(", ");
                q.push_bind(i32::try_from(budget.max_leases).unwrap_or(i32::MAX)).push(", ");
                q.push_bind(i32::try_from(budget.lease_urls).unwrap_or(i32::MAX)).push(", ").push_bind(rank).push(")");
            }
            q.push(
                ") UPDATE hosts SET pending = hosts.pending + v.pending, max_leases = v.max_leases, \
                 lease_urls = v.lease_urls, priority = v.priority FROM v WHERE hosts.host = v.host",
            );
            q.execute(tx).await?;
        }
        Ok(())
    }

    pub(crate) async fn add_invalid_impl(
        &self,
        job_id: i64,
        first_seq: i64,
        entries: &[InvalidEntry],
    ) -> StoreResult<()> {
        let mut tx = self.db.begin().await?;
        let mut inserted = 0u64;
        for (ci, chunk) in entries.chunks(CHUNK_ROWS).enumerate() {
            let base = first_seq + (ci * CHUNK_ROWS) as i64;
            let mut q = sql("INSERT INTO job_invalid (job_id, seq, input, reason) VALUES ");
            for (i, e) in chunk.iter().enumerate() {
                q.push(if i == 0 { "(" } else { ", (" }).push_bind(job_id).push(", ").push_bind(base + i as i64);
                q.push(", ").push_bind(e.input.as_str()).push(", ").push_bind(e.reason.as_str()).push(")");
            }
            q.push(" ON CONFLICT DO NOTHING");
            inserted += q.execute(&mut tx).await?;
        }
        sql("UPDATE jobs SET invalid = invalid + $2 WHERE id = $1")
            .bind(job_id)
            .bind(inserted as i64)
            .execute(&mut tx)
            .await?;
        tx.commit().await
    }

    pub(crate) async fn seal_job_impl(&self, job_id: i64, seal: &Seal) -> StoreResult<(JobRecord, bool)> {
        // A twin sealing at the same moment makes the activation fail on the unique index once the
        // twin commits, and a lease or an ingest may deadlock with it: the next attempt finds the
        // twin, or gets through.
        let sealed = retry_transient(
            "seal",
            || self.seal_once(job_id, seal),
            |e| matches!(e, StoreError::Query(sqlx::Error::Database(d)) if d.is_unique_violation()),
        )
        .await?;
        Ok(sealed)
    }

    /// One attempt at the seal, in one transaction.
    async fn seal_once(&self, job_id: i64, seal: &Seal) -> StoreResult<(JobRecord, bool)> {
        let now = now_ms();
        let mut tx = self.db.begin().await?;
        // The job's row is locked last, as leasing and ingest do: they lock frontier and URL rows
        // first and the job's counters at the end.
        let current: Option<(String, i16)> =
            sql("SELECT state, priority FROM jobs WHERE id = $1").bind(job_id).fetch_optional(&mut tx).await?;
        let Some((state, provisional)) = current else {
            return Err(StoreError::Corrupt(format!("job {job_id} vanished while receiving")));
        };
        match state.as_str() {
            "receiving" => {}
            "cancelled" => {
                // Cancelled while its URLs arrived: it stays cancelled, and so do the URLs that came
                // after the cancellation. A second seal finds it sealed and changes nothing.
                let (late, _, _) = cancel_open(&mut tx, job_id).await?;
                sql("UPDATE jobs SET cancelled = cancelled + $2, received = $3, duplicates = $4, total = $5, \
                     sealed_at = $6 WHERE id = $1 AND sealed_at IS NULL")
                .bind(job_id)
                .bind(late)
                .bind(seal.received as i64)
                .bind(seal.duplicates as i64)
                .bind(seal.total as i64)
                .bind(now)
                .execute(&mut tx)
                .await?;
                let rec = require_job(&mut tx, job_id).await?;
                tx.commit().await?;
                return Ok((rec, false));
            }
            // Sealed already (an earlier attempt committed): nothing to do again.
            _ => {
                let rec = require_job(&mut tx, job_id).await?;
                tx.commit().await?;
                return Ok((rec, false));
            }
        }
        // An active job older than the uniqueness window no longer absorbs duplicates.
        sql("UPDATE jobs SET unique_active = FALSE WHERE unique_key = $1 AND unique_active AND created_at < $2")
            .bind(seal.unique_key.as_str())
            .bind(now - ms(seal.unique_window))
            .execute(&mut tx)
            .await?;
        let twin: Option<i64> = sql("SELECT id FROM jobs WHERE unique_key = $1 AND unique_active ORDER BY id LIMIT 1")
            .bind(seal.unique_key.as_str())
            .scalar(&mut tx)
            .await?;
        if let Some(twin) = twin {
            self.discard_receiving(&mut tx, job_id).await?;
            let rec = require_job(&mut tx, twin).await?;
            tx.commit().await?;
            return Ok((rec, true));
        }
        let priority = seal.priority.rank().min(provisional);
        if priority < provisional {
            // Known small only now: its waiting URLs move up (a small job, so few rows). In the
            // store's lock order: its open work (an ingest takes frontier rows before it finishes
            // URL rows, and never waits for one), its URL rows by URL (the order an ingest finishes
            // them in), then their hosts by name.
            let dialect = self.db.dialect();
            let shift = (provisional - priority) * urlfleet_shared::job::FRONTIER_ORDERS_PER_PRIORITY;
            sql("UPDATE frontier SET url_order = url_order - $2 WHERE job_id = $1 AND url_id IN \
                 (SELECT url_id FROM job_urls WHERE job_id = $1 AND state = 'pending')")
            .bind(job_id)
            .bind(shift)
            .execute(&mut tx)
            .await?;
            sql(format!(
                "SELECT url_id FROM job_urls WHERE job_id = $1 AND state = 'pending' ORDER BY url_id{}",
                dialect.for_update
            ))
            .bind(job_id)
            .execute(&mut tx)
            .await?;
            sql("UPDATE job_urls SET url_order = url_order - $2 WHERE job_id = $1 AND state = 'pending'")
                .bind(job_id)
                .bind(shift)
                .execute(&mut tx)
                .await?;
            sql(format!(
                "SELECT host FROM hosts WHERE host IN (SELECT host FROM job_urls WHERE job_id = $1 \
                 AND state = 'pending') ORDER BY host{}",
                dialect.for_no_key_update
            ))
            .bind(job_id)
            .execute(&mut tx)
            .await?;
            sql("UPDATE hosts SET priority = $2 WHERE priority > $2 AND host IN \
                 (SELECT host FROM job_urls WHERE job_id = $1 AND state = 'pending')")
            .bind(job_id)
            .bind(priority)
            .execute(&mut tx)
            .await?;
        }
        let sealed = sql("UPDATE jobs SET state = CASE WHEN leased > 0 OR checked > 0 OR failed > 0 THEN 'running' \
                          ELSE 'scheduled' END, unique_key = $2, unique_active = TRUE, received = $3, \
                          duplicates = $4, total = $5, priority = $6, not_before = $7, sealed_at = $8 \
                          WHERE id = $1 AND state = 'receiving'")
        .bind(job_id)
        .bind(seal.unique_key.as_str())
        .bind(seal.received as i64)
        .bind(seal.duplicates as i64)
        .bind(seal.total as i64)
        .bind(priority)
        .bind(seal.not_before_ms)
        .bind(now)
        .execute(&mut tx)
        .await?;
        if sealed == 0 {
            // Cancelled meanwhile: the next attempt takes the cancelled path.
            return Err(StoreError::Conflict);
        }
        complete_if_done(&mut tx, &[job_id], now).await?;
        let rec = require_job(&mut tx, job_id).await?;
        tx.commit().await?;
        Ok((rec, false))
    }

    pub(crate) async fn discard_job_impl(&self, job_id: i64) -> StoreResult<()> {
        retry_transient(
            "discard",
            || async {
                let mut tx = self.db.begin().await?;
                self.discard_receiving(&mut tx, job_id).await?;
                tx.commit().await
            },
            |_| false,
        )
        .await
    }

    pub(crate) async fn discard_abandoned_impl(&self, before_ms: i64) -> StoreResult<u64> {
        let ids: Vec<(i64,)> =
            sql("SELECT id FROM jobs WHERE state = 'receiving' AND COALESCE(touched_at, created_at) < $1")
                .bind(before_ms)
                .fetch_all(&mut self.db.acquire().await?)
                .await?;
        // One job that cannot be discarded now must not hold back the others: each is tried, and
        // the first failure is returned once all were.
        let (mut discarded, mut failure) = (0, None);
        for (id,) in &ids {
            tracing::warn!(job.id = id, "discarding a job whose submission never ended");
            match self.discard_job_impl(*id).await {
                Ok(()) => discarded += 1,
                Err(e) => {
                    tracing::error!(job.id = id, error = %e, "discarding an abandoned submission failed");
                    failure.get_or_insert(e);
                }
            }
        }
        match failure {
            Some(e) if discarded == 0 => Err(e),
            _ => Ok(discarded),
        }
    }

    /// Removes a `receiving` job and everything written for it, taking its waiting URLs off the
    /// frontier counters and its leased ones off their leases (a lease left with none ends).
    async fn discard_receiving(&self, tx: &mut Tx, job_id: i64) -> StoreResult<()> {
        let receiving = Some(urlfleet_shared::JobState::Receiving.as_str());
        let state: Option<String> = sql("SELECT state FROM jobs WHERE id = $1").bind(job_id).scalar(tx).await?;
        if state.as_deref() != receiving {
            return Ok(());
        }
        // In the store's lock order: leases, the job's open work and URLs, hosts, and the job
        // itself last.
        cancel_open(tx, job_id).await?;
        sql("DELETE FROM job_urls WHERE job_id = $1").bind(job_id).execute(tx).await?;
        let state: Option<String> =
            sql(format!("SELECT state FROM jobs WHERE id = $1{}", self.db.dialect().for_update))
                .bind(job_id)
                .scalar(tx)
                .await?;
        if state.as_deref() != receiving {
            // Sealed or cancelled meanwhile: nothing of this is kept, and the next attempt leaves it.
            return Err(super::StoreError::Conflict);
        }
        sql("DELETE FROM job_invalid WHERE job_id = $1").bind(job_id).execute(tx).await?;
        sql("DELETE FROM jobs WHERE id = $1").bind(job_id).execute(tx).await?;
        Ok(())
    }
}

/// The URLs of a chunk that are not in `stored` yet (by text), in chunk order.
pub(crate) fn not_stored<'a>(chunk: &'a [PlannedUrl], stored: &[StoredUrl]) -> Vec<&'a str> {
    let new: HashSet<&str> = stored.iter().map(|s| s.url.as_str()).collect();
    chunk.iter().map(|u| u.url.as_str()).filter(|u| !new.contains(u)).collect()
}

#[cfg(test)]
mod tests {
    use super::Statistics;

    #[test]
    fn statistics_go_stale_at_ten_thousand_rows_added_and_three_times_what_they_describe() {
        let mut s = Statistics::default();
        assert!(!s.added(9_999));
        assert!(s.added(1), "10,000 rows added to tables whose statistics are not known yet");
        assert!(!s.added(50_000), "one analyze at a time");
        // The analyze found the tables at 60,000 rows and counted what it saw.
        (s.described, s.added, s.running) = (Some(60_000), 0, false);
        assert!(!s.added(100_000));
        assert!(s.added(80_000), "180,000 rows added: the tables are four times what the statistics describe");
        (s.described, s.added, s.running) = (Some(0), 0, false);
        assert!(!s.added(9_999), "a new database: below 10,000 rows nothing is planned differently");
        assert!(s.added(1));
        (s.described, s.added, s.running) = (Some(u64::MAX), 0, false);
        assert!(!s.added(u64::MAX - 1), "no overflow");
    }
}
