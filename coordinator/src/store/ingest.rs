//! Ingest: storing a chunk of reported results in one transaction — every result in the history, the
//! newest of each URL as its latest state (monotonic), its open `job_urls` rows finished — then the
//! job counters, the frontier, lease ends, host pauses and job completion. Replays change nothing.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use urlfleet_shared::outcome::Refusal;
use urlfleet_shared::time::now_ms;
use urlfleet_shared::{OutcomeClass, ReportedResult};

use super::db::{Dialect, Tx, sql};
use super::jobs::{JobDeltas, add_host_pending, complete_if_done};
use super::leasing::close_leases;
use super::{RefusedResult, SqlStore, StoreResult, Touched};

/// A `job_urls` row an ingest finished: its job, URL, lease (`None` for a row that was still
/// pending: a pending row never holds a lease) and host.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct Finished {
    pub job_id: i64,
    pub url_id: i64,
    pub lease_id: Option<i64>,
    pub host: String,
}

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

/// A `job_urls` row of a reported URL under a lease, read before the fence locks the leases.
#[derive(sqlx::FromRow)]
struct LeasedRow {
    url_id: i64,
    lease_id: i64,
    state: String,
}

/// What the fence lets through, and what it learned on the way.
pub(crate) struct Fenced<'a> {
    pub accepted: Vec<Cow<'a, ReportedResult>>,
    pub refused: Vec<RefusedResult>,
    /// The leases it locked, in id order: the only leases whose rows the chunk may finish.
    pub locked: Vec<i64>,
}

/// Splits a chunk into the results that may be stored — each bounded by the coordinator's clock —
/// and the refused ones. A result counts only for a URL its lease holds (a `job_urls` row names the
/// lease), under a live lease held by its reporter, at the lease's epoch. A result stored under its
/// lease before is a replay: it is accepted, and changes nothing.
///
/// The leases read stay locked until the chunk commits (the reaper's `SKIP LOCKED` passes over
/// them): a lease judged live stays live, and no cancel or discard changes its URLs meanwhile. The
/// URL rows are read once, before the leases are locked (the leases to lock are found by it): a row
/// that a cancel or a discard takes off its lease between that read and the lock still counts as
/// held, so its result — a check the lease's holder really made — goes to the history and finishes
/// the URL's rows that are still open, as any check does; the row taken off stays as it was left.
async fn fence<'a>(tx: &mut Tx, results: &'a [ReportedResult], now: i64, dialect: &Dialect) -> StoreResult<Fenced<'a>> {
    // The store's lock order starts with leases: the reported ones, and those holding the reported
    // URLs in other jobs (whose rows this chunk may finish), in id order, before any URL is written.
    // One read of the reported URLs' rows under a lease finds those leases, and which reported
    // (URL, lease) pairs a row holds. It goes by URL (`+ 0` keeps the lease index out of it), so it
    // is the size of the chunk, not of every URL its leases hold. The leases are read apart and
    // locked below: in one statement, as an `OR` of two tests or a union, the planner read every
    // lease ever granted for every chunk (bitmap scans are off in keyed plans), or ran the URLs'
    // read once per lease.
    let mut ids: BTreeSet<i64> = results.iter().map(|r| r.lease_id).collect();
    let mut q = sql("SELECT url_id, lease_id, state FROM job_urls WHERE url_id ");
    q.push_id_set(results.iter().map(|r| r.url_id).collect::<BTreeSet<_>>());
    q.push(" AND (state = 'leased' OR lease_id + 0 ").push_id_set(ids.iter().copied()).push(")");
    let rows = q.fetch_all::<LeasedRow>(tx).await?;
    ids.extend(rows.iter().filter(|r| r.state == "leased").map(|r| r.lease_id));
    let mut q = sql("SELECT id, epoch, holder, active, created_at FROM leases WHERE id ");
    q.push_id_set(ids);
    q.push(" ORDER BY id").push(dialect.for_no_key_update);
    let leases: HashMap<i64, FencedLease> =
        q.fetch_all::<FencedLease>(tx).await?.into_iter().map(|l| (l.id, l)).collect();
    let mut locked: Vec<i64> = leases.keys().copied().collect();
    locked.sort_unstable();
    let held: HashSet<(i64, i64)> = rows.iter().map(|r| (r.lease_id, r.url_id)).collect();
    let mut accepted = Vec::with_capacity(results.len());
    let mut ended = Vec::new();
    let mut refused = Vec::new();
    // Results dated after their arrival, whose stored time is the arrival: a resend would arrive
    // later and be stored again, so they are looked up as replays below.
    let mut future = Vec::new();
    for r in results {
        let verdict = match leases.get(&r.lease_id) {
            None => Err(Refusal::NoSuchLease),
            Some(l) if l.holder != *r.reporter => Err(Refusal::NotHolder),
            Some(l) if l.epoch != r.epoch => Err(Refusal::StaleEpoch),
            Some(l) if !l.active => Err(Refusal::LeaseEnded),
            Some(_) if !held.contains(&(r.lease_id, r.url_id)) => Err(Refusal::NotInLease),
            Some(l) => Ok(l.created_at),
        };
        match verdict {
            Ok(granted) => {
                if r.outcome.checked_at_ms > now {
                    future.push(accepted.len());
                }
                let at = r.outcome.checked_at_ms.clamp(granted, now.max(granted));
                if at == r.outcome.checked_at_ms {
                    accepted.push(Cow::Borrowed(r));
                } else {
                    let mut r = r.clone();
                    r.outcome.checked_at_ms = at;
                    accepted.push(Cow::Owned(r));
                }
            }
            Err(Refusal::LeaseEnded) => ended.push(r),
            Err(reason) => refused.push(refusal(r, reason)),
        }
    }
    // A replay of a result stored under its lease before: its history row names the lease.
    let replays: Vec<(i64, i64)> = ended
        .iter()
        .map(|r| (r.url_id, r.lease_id))
        .chain(future.iter().map(|i| (accepted[*i].url_id, accepted[*i].lease_id)))
        .collect();
    if !replays.is_empty() {
        let mut q = sql("SELECT url_id, lease_id FROM checks WHERE url_id ");
        q.push_id_set(replays.iter().map(|k| k.0).collect::<BTreeSet<_>>()).push(" AND lease_id ");
        q.push_id_set(replays.iter().map(|k| k.1).collect::<BTreeSet<_>>());
        let stored: HashSet<(i64, i64)> = q.fetch_all::<(i64, i64)>(tx).await?.into_iter().collect();
        refused.extend(
            ended
                .into_iter()
                .filter(|r| !stored.contains(&(r.url_id, r.lease_id)))
                .map(|r| refusal(r, Refusal::LeaseEnded)),
        );
        let replayed: HashSet<usize> =
            future.into_iter().filter(|i| stored.contains(&(accepted[*i].url_id, accepted[*i].lease_id))).collect();
        if !replayed.is_empty() {
            accepted =
                accepted.into_iter().enumerate().filter(|(i, _)| !replayed.contains(i)).map(|(_, r)| r).collect();
        }
    }
    Ok(Fenced { accepted, refused, locked })
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
        let Fenced { accepted, refused, locked } = fence(&mut tx, results, now, self.db.dialect()).await?;
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
        let newest = newest_per_url(&accepted);
        let finished = match &mut tx {
            Tx::Pg(t) => super::postgres::record_results(t, &accepted, &newest, &locked).await?,
            Tx::Lite(t) => super::sqlite::record_results(t, &accepted, &newest).await?,
        };
        let mut touched = settle(tx, finished, &newest, &accepted, now).await?;
        touched.refused = refused;
        Ok(touched)
    }
}

/// The rest of an ingest once `checks` and `job_urls` are written: counters, frontier, lease
/// ends, host pauses and job completion, then commit.
async fn settle(
    mut tx: Tx,
    finished: Vec<Finished>,
    newest: &[&ReportedResult],
    results: &[&ReportedResult],
    now: i64,
) -> StoreResult<Touched> {
    let class_of: HashMap<i64, OutcomeClass> = newest.iter().map(|r| (r.url_id, r.outcome.kind.class())).collect();
    let mut deltas = JobDeltas::default();
    let mut per_host: BTreeMap<String, i64> = BTreeMap::new();
    // URLs each lease no longer holds open. A late report may finish rows that another lease holds
    // now: they are taken off that lease.
    let mut closed: BTreeMap<i64, i64> = BTreeMap::new();
    for f in finished {
        let d = deltas.of(f.job_id);
        d.checked += 1;
        d.add_class(class_of.get(&f.url_id).copied().unwrap_or(OutcomeClass::Error));
        match f.lease_id {
            Some(lease) => {
                d.leased -= 1;
                *closed.entry(lease).or_default() += 1;
            }
            None => *per_host.entry(f.host).or_default() -= 1,
        }
    }
    let mut pauses: BTreeMap<i64, i64> = BTreeMap::new();
    for r in results {
        let pause = pauses.entry(r.lease_id).or_insert(0);
        *pause = (*pause).max(r.outcome.host_paused_until_ms.unwrap_or(0));
    }
    pauses.retain(|_, p| *p > now);
    per_host.retain(|_, n| *n != 0);
    // Hosts in name order, before the first is written. Usually no host changes before the leases
    // end, and `close_leases` locks the hosts of the leases that do end; a chunk that also takes
    // pending URLs off the frontier or pauses a host locks the hosts of all its leases first (every
    // URL it finishes is of its lease's host). The hosts of leases that go on stay free for grants.
    if !per_host.is_empty() || !pauses.is_empty() {
        let mut leases: BTreeSet<i64> = closed.keys().copied().collect();
        leases.extend(results.iter().map(|r| r.lease_id));
        super::leasing::lock_hosts_of_leases(&mut tx, leases).await?;
    }
    add_host_pending(&mut tx, &per_host).await?;
    for (lease, pause) in pauses {
        // A host that asked to be left alone stays paused for every worker.
        sql("UPDATE hosts SET next_allowed_at = CASE WHEN next_allowed_at < $2 THEN $2 ELSE next_allowed_at END \
             WHERE host = (SELECT host FROM leases WHERE id = $1)")
        .bind(lease)
        .bind(pause)
        .execute(&mut tx)
        .await?;
    }
    close_leases(&mut tx, &closed, now).await?;
    deltas.apply(&mut tx).await?;
    let jobs = deltas.jobs();
    complete_if_done(&mut tx, &jobs, now).await?;
    tx.commit().await?;
    Ok(Touched { jobs, expired_leases: 0, refused: Vec::new() })
}
