//! Ingest: storing a chunk of reported results in one transaction — every result in the history, the
//! newest of each URL as its latest state (monotonic), its open `job_urls` rows finished — then the
//! job counters, the frontier, lease ends, host pauses and job completion. Replays change nothing.

use std::collections::{BTreeMap, HashMap, HashSet};

use urlfleet_shared::time::now_ms;
use urlfleet_shared::{OutcomeClass, ReportedResult};

use super::db::{Tx, sql};
use super::jobs::{JobDeltas, add_host_pending, complete_if_done};
use super::leasing::close_lease_urls;
use super::{SqlStore, StoreResult, Touched};

/// A `job_urls` row an ingest finished: its job, URL, lease (`None` for a row that was still
/// pending: a pending row never holds a lease) and host.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct Finished {
    pub job_id: i64,
    pub url_id: i64,
    pub lease_id: Option<i64>,
    pub host: String,
}

/// The newest result of each URL in a batch (it sets the latest state and the job progress), in URL
/// id order; of equally new results, the first reported.
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

impl SqlStore {
    pub(crate) async fn ingest_impl(&self, results: &[ReportedResult]) -> StoreResult<Touched> {
        if results.is_empty() {
            return Ok(Touched::default());
        }
        let now = now_ms();
        let mut tx = self.db.begin_keyed().await?;
        // Fencing: a result counts only under a lease that was granted, at that lease's epoch.
        let lease_ids: HashSet<i64> = results.iter().map(|r| r.lease_id).collect();
        let mut q = sql("SELECT id, epoch FROM leases WHERE id IN (");
        q.push_list(lease_ids).push(")");
        let epochs: HashMap<i64, i64> = q.fetch_all::<(i64, i64)>(&mut tx).await?.into_iter().collect();
        let accepted: Vec<&ReportedResult> =
            results.iter().filter(|r| epochs.get(&r.lease_id) == Some(&r.epoch)).collect();
        let refused = (results.len() - accepted.len()) as u64;
        if refused > 0 {
            tracing::warn!(refused, "results under no granted lease or at a stale epoch refused");
        }
        if accepted.is_empty() {
            tx.commit().await?;
            return Ok(Touched { refused, ..Touched::default() });
        }
        let newest = newest_per_url(&accepted);
        let finished = match &mut tx {
            Tx::Pg(t) => super::postgres::record_results(t, &accepted, &newest).await?,
            Tx::Lite(t) => super::sqlite::record_results(t, &accepted, &newest).await?,
        };
        let mut touched = settle(tx, finished, &newest, &accepted, now).await?;
        touched.refused = refused;
        Ok(touched)
    }
}

/// The rest of an ingest once `urls`, `checks` and `job_urls` are written: counters, frontier, lease
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
    add_host_pending(&mut tx, &per_host).await?;
    let mut pauses: BTreeMap<i64, i64> = BTreeMap::new();
    for r in results {
        let pause = pauses.entry(r.lease_id).or_insert(0);
        *pause = (*pause).max(r.outcome.host_paused_until_ms.unwrap_or(0));
    }
    for (lease, pause) in pauses.into_iter().filter(|(_, p)| *p > now) {
        // A host that asked to be left alone stays paused for every worker.
        sql("UPDATE hosts SET next_allowed_at = CASE WHEN next_allowed_at < $2 THEN $2 ELSE next_allowed_at END \
             WHERE host = (SELECT host FROM leases WHERE id = $1)")
        .bind(lease)
        .bind(pause)
        .execute(&mut tx)
        .await?;
    }
    for (lease, n) in &closed {
        close_lease_urls(&mut tx, *lease, *n, now).await?;
    }
    deltas.apply(&mut tx).await?;
    let jobs = deltas.jobs();
    complete_if_done(&mut tx, &jobs, now).await?;
    tx.commit().await?;
    Ok(Touched { jobs, expired_leases: 0, refused: 0 })
}
