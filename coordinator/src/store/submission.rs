//! Submissions: creating a job and adding its URLs to the frontier as they arrive (sealing and
//! discarding are in `sealing`).

use std::collections::{BTreeMap, HashMap, HashSet};

use urlfleet_shared::LeaseBudget;
use urlfleet_shared::job::{CheckReason, CountsDelta, JobUrlState, Priority, Recheck, StoredCheck, frontier_order};
use urlfleet_shared::time::now_ms;

use super::db::{Tx, ladder_chunks, sql};
use super::frontier::{FrontierEntry, insert_frontier, unasked};
use super::jobs::{JobDeltas, require_job};
use super::rows::{options_json, parse_kind};
use super::{InvalidEntry, JobRecord, NewJob, PlannedUrl, RecheckPolicy, SqlStore, StoreError, StoreResult};

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
}

/// The URLs of a chunk that are not in `stored` yet (by text), in chunk order.
pub(crate) fn not_stored<'a>(chunk: &'a [PlannedUrl], stored: &[StoredUrl]) -> Vec<&'a str> {
    let new: HashSet<&str> = stored.iter().map(|s| s.url.as_str()).collect();
    chunk.iter().map(|u| u.url.as_str()).filter(|u| !new.contains(u)).collect()
}
