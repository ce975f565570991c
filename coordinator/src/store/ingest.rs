//! Ingest: storing a chunk of reported results in one transaction — every result in the history (whose
//! newest row of a URL is its latest state), what its lease held of the URL and any job's waiting
//! rows of it taken off the open work, those jobs' `job_urls` rows finished by key — then the job
//! counters, the frontier, lease ends, host pauses and job completion. Replays change nothing.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use urlfleet_shared::outcome::Refusal;
use urlfleet_shared::time::now_ms;
use urlfleet_shared::{OutcomeClass, ReportedResult};

use super::db::{Dialect, Tx, sql};
use super::frontier::{FinishRow, add_host_pending, count_by, finish_job_urls, release, take_frontier, unasked};
use super::jobs::{JobDeltas, complete_if_done};
use super::leasing::close_leases;
use super::{RefusedResult, SqlStore, StoreResult, Touched};

/// The newest result of each URL in a batch (it finishes the URL's open rows, with its kind), in URL
/// id order; of equally new results, the first reported (the one `checks` keeps).
pub(crate) fn newest_per_url<'a>(results: &[&'a ReportedResult]) -> Vec<&'a ReportedResult> {
    let mut by_url: HashMap<i64, &'a ReportedResult> = HashMap::with_capacity(results.len());
    for &r in results {
        let e = by_url.entry(r.url_id).or_insert(r);
        if r.outcome.checked_at_ms > e.outcome.checked_at_ms {
            *e = r;
        }
    }
    let mut v: Vec<&'a ReportedResult> = by_url.into_values().collect();
    v.sort_by_key(|r| r.url_id);
    v
}

/// What the fence knows of one lease a chunk's results name.
#[derive(sqlx::FromRow)]
struct FencedLease {
    id: i64,
    epoch: i64,
    holder: String,
    active: bool,
    created_at: i64,
}

/// The check a lease stored for a URL, as the fence compares a result with it.
#[derive(sqlx::FromRow)]
struct StoredCheck {
    url_id: i64,
    lease_id: i64,
    checked_at: i64,
    kind: String,
    status: Option<i32>,
    response_ms: i64,
}

impl StoredCheck {
    /// Whether `r` is this stored result sent again. A result is stored at its own time, clamped
    /// to its lease's grant; one dated after its arrival was stored at the arrival time, so a later
    /// date with the same answer is the same result too.
    fn is_stored(&self, r: &ReportedResult, granted: i64) -> bool {
        let row = super::rows::OutcomeRow::of(&r.outcome);
        let same = self.kind == row.kind && self.status == row.status && self.response_ms == row.response_ms;
        same && r.outcome.checked_at_ms.max(granted) >= self.checked_at
    }
}

/// What the fence lets through, and what it learned on the way.
pub(crate) struct Fenced<'a> {
    pub accepted: Vec<Cow<'a, ReportedResult>>,
    pub refused: Vec<RefusedResult>,
}

/// Splits a chunk into the results that may be stored — each bounded by the coordinator's clock —
/// and the refused ones. A result counts only for a URL its lease holds open (`lease_urls`), under
/// a live lease held by its reporter, at the lease's epoch: one result per URL per lease. A result
/// stored under its lease before is a replay: it changes nothing, and is neither stored nor refused;
/// another result of a URL its lease already answered is refused ([`Refusal::Repeated`]).
///
/// The reported leases are locked first, in id order, and stay locked until the chunk commits (the
/// reaper's `SKIP LOCKED` passes over them): a lease judged live stays live, and what it holds is
/// read after the lock, so no cancel, reap or other ingest changes it meanwhile (each of them locks
/// the lease before it deletes what the lease holds).
async fn fence<'a>(tx: &mut Tx, results: &'a [ReportedResult], now: i64, dialect: &Dialect) -> StoreResult<Fenced<'a>> {
    let ids: BTreeSet<i64> = results.iter().map(|r| r.lease_id).collect();
    let mut q = sql("SELECT id, epoch, holder, active, created_at FROM leases WHERE id ");
    q.push_id_set(ids.iter().copied());
    q.push(" ORDER BY id").push(dialect.for_no_key_update);
    let leases: HashMap<i64, FencedLease> =
        q.fetch_all::<FencedLease>(tx).await?.into_iter().map(|l| (l.id, l)).collect();
    // By (URL, lease) pair: two sets would be probed as their product, every URL under every lease.
    let pairs: BTreeSet<(i64, i64)> =
        results.iter().filter(|r| leases.contains_key(&r.lease_id)).map(|r| (r.url_id, r.lease_id)).collect();
    let held: HashSet<(i64, i64)> =
        super::frontier::held(tx, pairs.into_iter().collect()).await?.into_iter().map(|(u, l)| (l, u)).collect();
    let mut accepted = Vec::with_capacity(results.len());
    let mut refused = Vec::new();
    // Results whose lease does not hold their URL open (any more): a replay, a repeat, or a refusal,
    // told apart by the history below.
    let mut answered: Vec<(&ReportedResult, i64)> = Vec::new();
    // One result per URL per lease in the chunk too.
    let mut first: HashMap<(i64, i64), i64> = HashMap::with_capacity(results.len());
    for r in results {
        let verdict = match leases.get(&r.lease_id) {
            None => Err(Refusal::NoSuchLease),
            Some(l) if l.holder != *r.reporter => Err(Refusal::NotHolder),
            Some(l) if l.epoch != r.epoch => Err(Refusal::StaleEpoch),
            Some(l) if !l.active || !held.contains(&(r.lease_id, r.url_id)) => {
                answered.push((r, l.created_at));
                continue;
            }
            Some(l) => Ok(l.created_at),
        };
        match verdict {
            Ok(granted) => {
                let at = r.outcome.checked_at_ms.clamp(granted, now.max(granted));
                match first.get(&(r.lease_id, r.url_id)) {
                    Some(t) if *t == at || r.outcome.checked_at_ms > now => {}
                    Some(_) => refused.push(refusal(r, Refusal::Repeated)),
                    None => {
                        first.insert((r.lease_id, r.url_id), at);
                        if at == r.outcome.checked_at_ms {
                            accepted.push(Cow::Borrowed(r));
                        } else {
                            let mut r = r.clone();
                            r.outcome.checked_at_ms = at;
                            accepted.push(Cow::Owned(r));
                        }
                    }
                }
            }
            Err(reason) => refused.push(refusal(r, reason)),
        }
    }
    if !answered.is_empty() {
        // What each lease stored for its URLs: at most one check per URL and lease, dated from the
        // lease's grant on (so the read is of the URL's history since then, not all of it).
        let since = answered.iter().map(|(_, granted)| *granted).min().unwrap_or(0);
        let mut q = sql("SELECT url_id, lease_id, checked_at, kind, status, response_ms FROM checks WHERE url_id ");
        q.push_id_set(answered.iter().map(|(r, _)| r.url_id).collect::<BTreeSet<_>>());
        q.push(" AND checked_at >= ").push_bind(since).push(" AND lease_id ");
        q.push_id_set(answered.iter().map(|(r, _)| r.lease_id).collect::<BTreeSet<_>>());
        let stored: HashMap<(i64, i64), StoredCheck> =
            q.fetch_all::<StoredCheck>(tx).await?.into_iter().map(|c| ((c.lease_id, c.url_id), c)).collect();
        for (r, granted) in answered {
            let active = leases.get(&r.lease_id).is_some_and(|l| l.active);
            match stored.get(&(r.lease_id, r.url_id)) {
                // The same result again (a resend after a lost ack): it was stored; nothing to do.
                Some(c) if c.is_stored(r, granted) => {}
                Some(_) => refused.push(refusal(r, Refusal::Repeated)),
                None if active => refused.push(refusal(r, Refusal::NotInLease)),
                None => refused.push(refusal(r, Refusal::LeaseEnded)),
            }
        }
    }
    Ok(Fenced { accepted, refused })
}

fn refusal(r: &ReportedResult, reason: Refusal) -> RefusedResult {
    RefusedResult { reporter: r.reporter.clone(), lease_id: r.lease_id, url_id: r.url_id, reason }
}

impl SqlStore {
    pub(crate) async fn ingest_impl(&self, results: &[ReportedResult]) -> StoreResult<Touched> {
        if results.is_empty() {
            return Ok(Touched::default());
        }
        let now = now_ms();
        let mut tx = self.db.begin_keyed().await?;
        let Fenced { accepted, refused } = fence(&mut tx, results, now, self.db.dialect()).await?;
        if !refused.is_empty() {
            tracing::warn!(
                refused = refused.len(),
                reason = refused[0].reason.as_str(),
                worker.id = %refused[0].reporter,
                "results refused: not under a live lease the reporter holds"
            );
        }
        if accepted.is_empty() {
            tx.commit().await?;
            return Ok(Touched { refused, ..Touched::default() });
        }
        let accepted: Vec<&ReportedResult> = accepted.iter().map(AsRef::as_ref).collect();
        match &mut tx {
            Tx::Pg(t) => super::postgres::record_results(t, &accepted).await?,
            Tx::Lite(t) => super::sqlite::record_results(t, &accepted).await?,
        }
        let newest = newest_per_url(&accepted);
        let mut touched = settle(tx, &newest, &accepted, now).await?;
        touched.refused = refused;
        Ok(touched)
    }
}

/// The rest of an ingest once `checks` is written: what the leases held of the reported URLs, and
/// every job's frontier rows of them (a URL checked once counts for every job that wants it), go;
/// those jobs' URLs are finished; then counters, frontier, lease ends, host pauses and job completion,
/// and commit.
async fn settle(mut tx: Tx, newest: &[&ReportedResult], results: &[&ReportedResult], now: i64) -> StoreResult<Touched> {
    let by_url: HashMap<i64, &ReportedResult> = newest.iter().map(|r| (r.url_id, *r)).collect();
    let released = release(&mut tx, results.iter().map(|r| (r.url_id, r.lease_id)).collect()).await?;
    let waiting = take_frontier(&mut tx, newest.iter().map(|r| r.url_id)).await?;
    let mut finish = Vec::with_capacity(released.len() + waiting.len());
    let mut from_lease: HashSet<(i64, i64)> = HashSet::with_capacity(released.len());
    for &(url_id, _, job_id) in &released {
        from_lease.insert((job_id, url_id));
    }
    for (job_id, url_id) in released.iter().map(|&(u, _, j)| (j, u)).chain(waiting.iter().map(|t| (t.job_id, t.url_id)))
    {
        let r = by_url.get(&url_id).ok_or_else(|| unasked("an open row"))?;
        finish.push(FinishRow {
            job_id,
            url_id,
            kind: r.outcome.kind.as_str(),
            lease_id: r.lease_id,
            checked_at: r.outcome.checked_at_ms,
        });
    }
    // In key order, the order concurrent transactions meet the rows in.
    finish.sort_by_key(|f| (f.job_id, f.url_id));
    finish.dedup_by_key(|f| (f.job_id, f.url_id));
    let finished = finish_job_urls(&mut tx, &finish).await?;
    let mut deltas = JobDeltas::default();
    for (job_id, url_id) in finished {
        let d = deltas.of(job_id);
        d.checked += 1;
        d.add_class(by_url.get(&url_id).map_or(OutcomeClass::Error, |r| r.outcome.kind.class()));
    }
    // Every row a lease held leaves it, finished here or not (another lease's result may have
    // finished it first).
    for &(job_id, _) in &from_lease {
        deltas.of(job_id).leased -= 1;
    }
    // URLs each lease no longer holds open.
    let closed =
        count_by(released.iter().map(|&(u, l, _)| (l, u)).collect::<BTreeSet<_>>().into_iter().map(|(l, _)| l), 1);
    let per_host = count_by(waiting.iter().map(|t| t.host.clone()), -1);
    let mut pauses: BTreeMap<i64, i64> = BTreeMap::new();
    for r in results {
        let pause = pauses.entry(r.lease_id).or_insert(0);
        *pause = (*pause).max(r.outcome.host_paused_until_ms.unwrap_or(0));
    }
    pauses.retain(|_, p| *p > now);
    // Hosts in name order, before the first is written. Usually no host changes before the leases
    // end, and `close_leases` locks the hosts of the leases that do end; a chunk that also takes
    // other jobs' waiting URLs off the frontier or pauses a host locks the hosts of all its leases
    // first (every URL it finishes is of its lease's host). The hosts of leases that go on stay free
    // for grants.
    if !per_host.is_empty() || !pauses.is_empty() {
        let leases: BTreeSet<i64> = results.iter().map(|r| r.lease_id).collect();
        super::leasing::lock_hosts_of_leases(&mut tx, leases).await?;
    }
    add_host_pending(&mut tx, &per_host).await?;
    if !pauses.is_empty() {
        // A host that asked to be left alone stays paused for every worker.
        let mut q = sql("UPDATE hosts SET next_allowed_at = CASE WHEN hosts.next_allowed_at < p.t \
                         THEN p.t ELSE hosts.next_allowed_at END FROM (SELECT l.host AS host, MAX(v.b) AS t FROM ");
        q.push_id_pairs(pauses.into_iter().collect());
        q.push(" AS v JOIN leases l ON l.id = v.a GROUP BY l.host) AS p WHERE hosts.host = p.host");
        q.execute(&mut tx).await?;
    }
    close_leases(&mut tx, &closed, now).await?;
    deltas.apply(&mut tx).await?;
    let jobs = deltas.jobs();
    complete_if_done(&mut tx, &jobs, now).await?;
    tx.commit().await?;
    Ok(Touched { jobs, expired_leases: 0, refused: Vec::new() })
}
