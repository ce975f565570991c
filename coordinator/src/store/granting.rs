//! Granting leases: the next batch of URLs of many free hosts in one transaction, with a handful of
//! set-based statements whatever the number of hosts — the frontier read for every host at once, the
//! leases inserted together, their URLs moved from the frontier to the leases together, the hosts and
//! the jobs' counters written once — so a worker with credits for thousands of polite hosts gets them
//! quickly.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use urlfleet_shared::job::{FRONTIER_ORDERS_PER_PRIORITY, JobOptions};
use urlfleet_shared::time::{ms, now_ms};

use super::db::{Tx, ladder_chunks, sql};
use super::frontier::{insert_lease_urls, take_frontier, unasked};
use super::jobs::JobDeltas;
use super::leasing::HAND_OVER_MARGIN;
use super::{LeaseGrant, LeaseRequest, SqlStore, StoreError, StoreResult};

/// Hosts looked at beyond those asked for: some may turn out to have nothing ready.
const SPARE_CANDIDATES: usize = 4;

/// Hosts per frontier read: one statement text, prepared once, whatever the number of hosts leased.
const HOSTS_PER_READ: usize = 64;

/// Fewest URLs a lease of a host whose limits are lifted is planned for when the worker's room for
/// such hosts is shared among many: smaller leases would cost more in round trips than they spread.
const MIN_LIFTED_SHARE: u64 = 16;

/// Most rows per multi-row statement: well under both databases' bind-parameter limits (5 columns at
/// most), and short enough to prepare quickly — SQLite took about a tenth of a second to prepare a
/// 1,024-row insert, longer than running it four times at 256.
const ROWS_PER_STATEMENT: usize = 256;

/// A host that may be leased now, and how many URLs its lease may hold.
#[derive(sqlx::FromRow)]
struct Candidate {
    host: String,
    epoch: i64,
    max_leases: i32,
    lease_urls: i32,
}

impl Candidate {
    /// Several leases at once: a host whose limits are lifted.
    fn lifted(&self) -> bool {
        self.max_leases > 1
    }
}

/// A frontier row picked for a lease.
#[derive(sqlx::FromRow)]
pub(crate) struct Picked {
    host: String,
    url_id: i64,
    url: String,
    url_order: i16,
    seq: i32,
}

impl SqlStore {
    pub(crate) async fn acquire_leases_impl(
        &self,
        req: &LeaseRequest,
        credits: u64,
        max_leases: usize,
    ) -> StoreResult<Vec<LeaseGrant>> {
        // A grant races submissions, cancellations and ingest on the same rows: a deadlock or a
        // serialization failure is tried again rather than leaving the worker idle.
        super::db::retry_transient("grant", || self.acquire_once(req, credits, max_leases), |_| false).await
    }

    async fn acquire_once(
        &self,
        req: &LeaseRequest,
        mut credits: u64,
        max_leases: usize,
    ) -> StoreResult<Vec<LeaseGrant>> {
        let now = now_ms();
        let mut tx = self.db.begin_keyed().await?;
        let planned = self.candidates(&mut tx, req, credits, max_leases, now).await?;
        if planned.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let mut picked = self.pick_frontier(&mut tx, &planned, now).await?;
        let mut hosts: Vec<(Candidate, Vec<(i64, String)>)> = Vec::with_capacity(max_leases);
        let mut lifted_room = req.lifted_room;
        for (c, _) in planned {
            let room = if c.lifted() { credits.min(lifted_room) } else { credits };
            match picked.remove(&c.host) {
                // The spares fill in for hosts with nothing ready; the credits (and, of hosts whose
                // limits are lifted, the worker's room for them) bound what is taken.
                Some(mut urls) if hosts.len() < max_leases && room > 0 => {
                    urls.truncate(usize::try_from(room).unwrap_or(usize::MAX));
                    credits -= urls.len() as u64;
                    if c.lifted() {
                        lifted_room -= urls.len() as u64;
                    }
                    hosts.push((c, urls));
                }
                Some(_) => {}
                // The host's work waits for `not_before` (or its upload went silent), or is all out
                // in leases of other jobs (its rows wait for their results): look again a little
                // later. Its pending count is right (counters follow the rows written), so it is
                // not recounted: a recount read the host's whole frontier every second.
                None => {
                    sql("UPDATE hosts SET next_allowed_at = $2 WHERE host = $1")
                        .bind(c.host.clone())
                        .bind(now + 1_000)
                        .execute(&mut tx)
                        .await?;
                }
            }
        }
        let grants = if hosts.is_empty() { Vec::new() } else { grant(&mut tx, hosts, req, now).await? };
        tx.commit().await?;
        Ok(grants)
    }

    /// The free hosts to lease, best first, each with the most URLs its lease may hold (no more than
    /// `credits`), and a few spares in case some have nothing ready. A host is free when it has fewer leases than its budget — or, for the
    /// worker that holds its latest lease, one more: that worker's own gate keeps the host's pace,
    /// and its current lease may only be waiting on a failing URL's back-off. Hosts with no lease out
    /// come first, so second leases never hold back a host that has not started.
    async fn candidates(
        &self,
        tx: &mut Tx,
        req: &LeaseRequest,
        credits: u64,
        max_leases: usize,
        now: i64,
    ) -> StoreResult<Vec<(Candidate, u32)>> {
        // A worker with no room for more of the hosts whose limits are lifted is not offered them.
        let candidates: Vec<Candidate> = sql(format!(
            "SELECT host, epoch, max_leases, lease_urls FROM hosts WHERE pending > 0 \
             AND (active_leases < max_leases OR (active_leases = max_leases AND holder = $3)) \
             AND (max_leases <= 1 OR $4) \
             AND next_allowed_at <= $1 ORDER BY priority, active_leases, next_allowed_at, host LIMIT $2{}",
            self.db.dialect().skip_locked
        ))
        .bind(now)
        .bind((max_leases + SPARE_CANDIDATES) as i64)
        .bind(req.worker_id.clone())
        .bind(req.lifted_room > 0)
        .fetch_all(tx)
        .await?;
        // The room for lifted hosts is shared among them, so that a worker's share of a fast job
        // comes as leases of several hosts (each lease runs at its host's concurrency), not as one.
        let lifted = candidates.iter().filter(|c| c.lifted()).count().max(1) as u64;
        let lifted_share = req.lifted_room.div_ceil(lifted).max(MIN_LIFTED_SHARE);
        let mut planned = Vec::new();
        for c in candidates {
            let max_urls = if c.lifted() {
                req.max_urls_lifted.min(u32::try_from(lifted_share).unwrap_or(u32::MAX))
            } else {
                req.max_urls
            };
            // A polite host's lease holds about a lease span of work at its pace.
            let max_urls = match u32::try_from(c.lease_urls) {
                Ok(n) if n > 0 => max_urls.min(n),
                _ => max_urls,
            };
            let max_urls = max_urls.min(u32::try_from(credits).unwrap_or(u32::MAX)).max(1);
            planned.push((c, max_urls));
        }
        Ok(planned)
    }

    /// Each planned host's next URLs in frontier order, each URL once (a URL pending for two jobs
    /// comes up twice): per host, a read of the frontier's key in order up to the lease's size — a
    /// lateral join over all hosts on PostgreSQL, a branch per host of a `UNION ALL` on SQLite. The
    /// jobs whose URLs may go are a set tested on each row (a subquery on PostgreSQL, ids read
    /// beforehand on SQLite), not joined to every frontier row (a join makes the planner collect the
    /// host's whole frontier and sort it). A URL out in a lease is passed over: its row belongs to a
    /// job that added it meanwhile, and the lease's result will finish it.
    async fn pick_frontier(
        &self,
        tx: &mut Tx,
        planned: &[(Candidate, u32)],
        now: i64,
    ) -> StoreResult<HashMap<String, Vec<(i64, String)>>> {
        let mut rows: Vec<Picked> = if let Tx::Pg(t) = tx {
            let hosts: Vec<(&str, i64)> = planned.iter().map(|(c, n)| (c.host.as_str(), i64::from(*n))).collect();
            super::postgres::pick_frontier(t, &hosts, now).await?
        } else {
            // SQLite has no lateral join: a branch per host, in reads of a fixed width. The jobs
            // whose URLs may go are read once and bound to every branch: a subquery of `jobs` in
            // each branch was evaluated per branch, more than half of a read's time.
            let jobs: Vec<i64> =
                sql("SELECT id FROM jobs WHERE state IN ('receiving', 'scheduled', 'running') AND not_before <= $1 \
                     AND (state <> 'receiving' OR COALESCE(touched_at, created_at) >= $2)")
                .bind(now)
                .bind(now - ms(super::ABANDONED_UPLOAD))
                .fetch_all::<(i64,)>(tx)
                .await?
                .into_iter()
                .map(|(id,)| id)
                .collect();
            // With no job handing out work, no host has anything ready: nothing to read.
            let planned = if jobs.is_empty() { &[][..] } else { planned };
            let mut rows = Vec::new();
            for chunk in planned.chunks(HOSTS_PER_READ) {
                let mut q = sql("");
                for (i, (c, limit)) in chunk.iter().enumerate() {
                    if i > 0 {
                        q.push(" UNION ALL ");
                    }
                    q.push(
                        "SELECT * FROM (SELECT fr.host, fr.url_id, u.url, fr.url_order, fr.seq FROM frontier fr \
                         JOIN urls u ON u.id = fr.url_id WHERE fr.host = ",
                    );
                    q.push_bind(c.host.clone()).push(
                        " AND NOT EXISTS (SELECT 1 FROM lease_urls lu WHERE lu.url_id = fr.url_id) AND fr.job_id ",
                    );
                    // Most often one job hands out work: a value compared, rather than a set that
                    // every branch parses from JSON again.
                    match jobs.as_slice() {
                        [job] => q.push("= ").push_bind(*job),
                        _ => q.push_id_set(jobs.iter().copied()),
                    };
                    q.push(" ORDER BY fr.url_order, fr.seq, fr.url_id LIMIT ")
                        .push_bind(i64::from(*limit))
                        .push(") AS f");
                }
                rows.extend(q.fetch_all::<Picked>(tx).await?);
            }
            rows
        };
        // The worker checks a lease's URLs in the order given, so the most urgent go first.
        rows.sort_by(|a, b| (&a.host, a.url_order, a.seq, a.url_id).cmp(&(&b.host, b.url_order, b.seq, b.url_id)));
        let mut by_host: HashMap<String, Vec<(i64, String)>> = HashMap::new();
        let mut seen = HashSet::with_capacity(rows.len());
        for r in rows {
            if seen.insert(r.url_id) {
                by_host.entry(r.host).or_default().push((r.url_id, r.url));
            }
        }
        Ok(by_host)
    }
}

/// Writes the leases: their rows, their URLs' rows (across jobs: a URL pending in two jobs is checked
/// once and counts for both), the hosts' frontier rows, the jobs' counters and states, and each
/// lease's open count and hand-over spacing.
async fn grant(
    tx: &mut Tx,
    mut hosts: Vec<(Candidate, Vec<(i64, String)>)>,
    req: &LeaseRequest,
    now: i64,
) -> StoreResult<Vec<LeaseGrant>> {
    let deadline = now + ms(req.ttl);
    let mut ids: HashMap<String, i64> = HashMap::with_capacity(hosts.len());
    for run in ladder_chunks(&hosts, ROWS_PER_STATEMENT) {
        let mut q = sql("INSERT INTO leases (host, epoch, holder, created_at, expires_at, active) VALUES ");
        for (i, (c, _)) in run.iter().enumerate() {
            q.push(if i == 0 { "(" } else { ", (" });
            q.push_bind(c.host.clone()).push(", ").push_bind(c.epoch + 1).push(", ").push_bind(req.worker_id.clone());
            q.push(", ").push_bind(now).push(", ").push_bind(deadline).push(", TRUE)");
        }
        q.push(" RETURNING id, host");
        ids.extend(q.fetch_all::<(i64, String)>(tx).await?.into_iter().map(|(id, h)| (h, id)));
    }
    let lease_of =
        |host: &str| ids.get(host).copied().ok_or_else(|| StoreError::Corrupt(format!("no lease for {host}")));

    // Every job's frontier rows of the leased URLs move to the leases, in a few statements whatever
    // the number of leases: the grant writes one row per URL and job it leases, in `lease_urls`, and
    // nothing to the record.
    let mut lease_of_url: HashMap<i64, i64> = HashMap::with_capacity(hosts.iter().map(|(_, u)| u.len()).sum());
    for (c, urls) in &hosts {
        let lease = lease_of(&c.host)?;
        lease_of_url.extend(urls.iter().map(|(id, _)| (*id, lease)));
    }
    let taken = take_frontier(tx, lease_of_url.keys().copied()).await?;
    let mut deltas = JobDeltas::default();
    let mut open: BTreeMap<i64, i64> = BTreeMap::new();
    let mut jobs_of: BTreeMap<i64, BTreeSet<i64>> = BTreeMap::new();
    let mut taken_of_host: HashMap<String, i64> = HashMap::new();
    let mut marked: HashSet<i64> = HashSet::new();
    let mut held = Vec::with_capacity(taken.len());
    for t in &taken {
        let lease = *lease_of_url.get(&t.url_id).ok_or_else(|| unasked("a frontier row"))?;
        deltas.of(t.job_id).leased += 1;
        jobs_of.entry(lease).or_default().insert(t.job_id);
        *taken_of_host.entry(t.host.clone()).or_default() += 1;
        if marked.insert(t.url_id) {
            *open.entry(lease).or_default() += 1;
        }
        held.push((t.url_id, lease, t.job_id));
    }
    insert_lease_urls(tx, &held).await?;
    // A URL that another transaction finished, cancelled or is taking since the frontier was read is
    // not in the lease (a URL is in one lease of a grant at most: the frontier read takes each once).
    for (_, urls) in &mut hosts {
        urls.retain(|(id, _)| marked.contains(id));
    }

    // The hosts: one more lease each, their pending counts, epochs and holder, and their priority
    // from the best URL still waiting.
    for run in ladder_chunks(&hosts, ROWS_PER_STATEMENT) {
        let mut q = sql("WITH v(host, n, epoch, started) AS (VALUES ");
        for (i, (c, _)) in run.iter().enumerate() {
            let n = taken_of_host.get(&c.host).copied().unwrap_or(0);
            let started = open.get(&lease_of(&c.host)?).copied().unwrap_or(0) > 0;
            q.push(if i == 0 { "(" } else { ", (" }).push_bind(c.host.clone()).push(", ").push_bind(n);
            q.push(", ").push_bind(c.epoch + 1).push(", ").push_bind(i64::from(started)).push(")");
        }
        q.push(") UPDATE hosts SET active_leases = active_leases + v.started, epoch = v.epoch, pending = pending - v.n, holder = ");
        q.push_bind(req.worker_id.clone()).push(", priority = COALESCE((SELECT url_order / ");
        q.push_bind(FRONTIER_ORDERS_PER_PRIORITY);
        q.push(" FROM frontier WHERE frontier.host = hosts.host ORDER BY url_order LIMIT 1), 9) FROM v WHERE hosts.host = v.host");
        q.execute(tx).await?;
    }

    // Job rows are the most contended: written last, once each, in id order.
    deltas.apply(tx).await?;
    let mut options: HashMap<i64, (JobOptions, Option<String>)> = HashMap::new();
    for job in deltas.jobs() {
        sql("UPDATE jobs SET state = 'running' WHERE id = $1 AND state = 'scheduled'").bind(job).execute(tx).await?;
        let (o, tp): (String, Option<String>) =
            sql("SELECT options, trace_parent FROM jobs WHERE id = $1").bind(job).fetch_one(tx).await?;
        let o: JobOptions =
            serde_json::from_str(&o).map_err(|e| StoreError::Corrupt(format!("job {job}: options: {e}")))?;
        options.insert(job, (o, tp));
    }

    let mut grants = Vec::with_capacity(hosts.len());
    let mut ends = Vec::with_capacity(hosts.len());
    for (c, urls) in hosts {
        let id = lease_of(&c.host)?;
        let jobs: Vec<i64> = jobs_of.remove(&id).map(|j| j.into_iter().collect()).unwrap_or_default();
        let mut job_options: Vec<JobOptions> = Vec::new();
        let mut trace_parent = None;
        for job in &jobs {
            let (o, tp) = &options[job];
            trace_parent = trace_parent.or_else(|| tp.clone());
            if !job_options.contains(o) {
                job_options.push(o.clone());
            }
        }
        // The spacing the host's next lease keeps from this one's end (see `close_leases`).
        let spacing = req.politeness.as_ref().map_or(0, |site| {
            let policy = site.for_lease(&c.host, &job_options);
            if policy.interval.is_zero() { 0 } else { ms(policy.interval + HAND_OVER_MARGIN) }
        });
        ends.push((id, open.get(&id).copied().unwrap_or(0), spacing));
        grants.push(LeaseGrant {
            lifted: c.lifted(),
            id,
            epoch: c.epoch + 1,
            holder: req.worker_id.clone(),
            host: c.host,
            urls,
            deadline_ms: deadline,
            jobs,
            job_options,
            trace_parent,
        });
    }
    // A lease that got none of its URLs (all taken by others meanwhile) ends at once.
    for run in ladder_chunks(&ends, ROWS_PER_STATEMENT) {
        let mut q = sql("WITH v(id, open, spacing) AS (VALUES ");
        for (i, (id, open, spacing)) in run.iter().enumerate() {
            q.push(if i == 0 { "(" } else { ", (" }).push_bind(*id).push(", ");
            q.push_bind(*open).push(", ").push_bind(*spacing).push(")");
        }
        q.push(
            ") UPDATE leases SET open = v.open, spacing_ms = v.spacing, active = v.open > 0 FROM v WHERE leases.id = v.id",
        );
        q.execute(tx).await?;
    }
    grants.retain(|g| !g.urls.is_empty());
    Ok(grants)
}
