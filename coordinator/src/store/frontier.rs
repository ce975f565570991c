//! Open work, kept apart from the record: the `frontier` (a job's URLs waiting for a lease, in lease
//! order per host) and `lease_urls` (what each live lease holds, per job). Rows of both are deleted
//! as the work is done, so they hold only what is open now; the record (`job_urls`, `checks`) is
//! written once per URL and once per check, and never read by URL on a hot path.
//!
//! The rules:
//! - A URL waits in the frontier once per job that wants it. A grant takes a URL's rows of every job
//!   at once and moves them to its lease: the URL is checked once for all of them.
//! - A URL out in a lease is not leased again: a grant passes over frontier rows of URLs that
//!   `lease_urls` holds (another job added them while the URL was out), and the lease's result
//!   finishes them as it finishes its own.
//! - A lease's rows go when its result is stored, when it is reaped (back to the frontier) and when
//!   their job is cancelled; every statement that deletes them first locks the lease.

use std::collections::BTreeMap;

use super::db::{Tx, ladder_chunks, sql};
use super::{StoreError, StoreResult};

/// Hosts per multi-row statement that writes host counters (4 binds a row at most).
const HOSTS_PER_STATEMENT: usize = 1_024;

/// A frontier row to insert.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrontierEntry<'a> {
    pub host: &'a str,
    pub url_order: i16,
    pub seq: i32,
    pub url_id: i64,
    pub job_id: i64,
}

/// A job's URL to finish with the result that answered it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FinishRow<'a> {
    pub job_id: i64,
    pub url_id: i64,
    pub kind: &'a str,
    pub lease_id: i64,
    pub checked_at: i64,
}

/// A frontier row taken out of the frontier.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct Taken {
    pub job_id: i64,
    pub url_id: i64,
    pub host: String,
}

/// Adds entries to the frontier; returns how many went in per host (an entry there already adds
/// nothing, so counters taken from this stay right whatever the frontier held).
pub(crate) async fn insert_frontier(tx: &mut Tx, entries: &[FrontierEntry<'_>]) -> StoreResult<BTreeMap<String, i64>> {
    if entries.is_empty() {
        return Ok(BTreeMap::new());
    }
    let skipped = match tx {
        Tx::Pg(t) => super::postgres::insert_frontier(t, entries).await?,
        Tx::Lite(t) => super::sqlite::insert_frontier(t, entries).await?,
    };
    Ok(match skipped {
        None => count_by(entries.iter().map(|e| e.host.to_string()), 1),
        Some(hosts) => {
            tracing::error!(
                skipped = entries.len() - hosts.len(),
                "frontier entries that were there already were not added again"
            );
            count_by(hosts, 1)
        }
    })
}

/// Takes every job's frontier rows of these URLs out of the frontier, and returns them. A row that
/// another transaction is taking or deleting right now is passed over (PostgreSQL): it is that
/// transaction's, and waiting for it could close a cycle with the host rows a grant holds.
pub(crate) async fn take_frontier(tx: &mut Tx, url_ids: impl IntoIterator<Item = i64>) -> StoreResult<Vec<Taken>> {
    let ids: Vec<i64> = url_ids.into_iter().collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    if let Tx::Pg(t) = tx {
        return super::postgres::take_frontier(t, &ids).await;
    }
    let mut q = sql("DELETE FROM frontier WHERE (host, url_order, seq, url_id, job_id) IN \
         (SELECT host, url_order, seq, url_id, job_id FROM frontier WHERE url_id ");
    q.push_id_set(ids).push(") RETURNING job_id, url_id, host");
    q.fetch_all(tx).await
}

/// Records what new leases hold: (URL, lease, job) triples.
pub(crate) async fn insert_lease_urls(tx: &mut Tx, held: &[(i64, i64, i64)]) -> StoreResult<()> {
    if held.is_empty() {
        return Ok(());
    }
    match tx {
        Tx::Pg(t) => super::postgres::insert_lease_urls(t, held).await,
        Tx::Lite(t) => super::sqlite::insert_lease_urls(t, held).await,
    }
}

/// Deletes what leases hold of these (URL, lease) pairs, every job's row; returns the rows deleted
/// as (URL, lease, job). The caller holds the leases' locks.
pub(crate) async fn release(tx: &mut Tx, pairs: Vec<(i64, i64)>) -> StoreResult<Vec<(i64, i64, i64)>> {
    if pairs.is_empty() {
        return Ok(Vec::new());
    }
    if let Tx::Pg(t) = tx {
        return super::postgres::release(t, &pairs).await;
    }
    let mut q = sql("DELETE FROM lease_urls WHERE (url_id, lease_id) IN (SELECT a, b FROM ");
    q.push_id_pairs(pairs).push(" AS v) RETURNING url_id, lease_id, job_id");
    q.fetch_all(tx).await
}

/// Which of these (URL, lease) pairs a lease holds open.
pub(crate) async fn held(tx: &mut Tx, pairs: Vec<(i64, i64)>) -> StoreResult<Vec<(i64, i64)>> {
    if pairs.is_empty() {
        return Ok(Vec::new());
    }
    if let Tx::Pg(t) = tx {
        return super::postgres::held(t, &pairs).await;
    }
    let mut q = sql("SELECT DISTINCT url_id, lease_id FROM lease_urls WHERE (url_id, lease_id) IN (SELECT a, b FROM ");
    q.push_id_pairs(pairs).push(" AS v)");
    q.fetch_all(tx).await
}

/// Finishes open `job_urls` rows with the result that answered them; returns the (job, URL) pairs
/// finished.
pub(crate) async fn finish_job_urls(tx: &mut Tx, rows: &[FinishRow<'_>]) -> StoreResult<Vec<(i64, i64)>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    match tx {
        Tx::Pg(t) => super::postgres::finish_job_urls(t, rows).await,
        Tx::Lite(t) => super::sqlite::finish_job_urls(t, rows).await,
    }
}

/// Adds to hosts' pending counters (negative to remove), a statement per run of hosts whatever
/// their number. The caller holds the host rows, or writes no other host in the transaction.
pub(crate) async fn add_host_pending(tx: &mut Tx, per_host: &BTreeMap<String, i64>) -> StoreResult<()> {
    let changed: Vec<(&String, &i64)> = per_host.iter().filter(|(_, n)| **n != 0).collect();
    for run in ladder_chunks(&changed, HOSTS_PER_STATEMENT) {
        let mut q = sql("WITH v(host, n) AS (VALUES ");
        for (i, (host, n)) in run.iter().enumerate() {
            q.push(if i == 0 { "(" } else { ", (" }).push_bind((*host).clone()).push(", ").push_bind(**n).push(")");
        }
        q.push(") UPDATE hosts SET pending = hosts.pending + v.n FROM v WHERE hosts.host = v.host");
        q.execute(tx).await?;
    }
    Ok(())
}

/// Counts per key.
pub(crate) fn count_by<K: Ord>(keys: impl IntoIterator<Item = K>, sign: i64) -> BTreeMap<K, i64> {
    let mut m = BTreeMap::new();
    for k in keys {
        *m.entry(k).or_default() += sign;
    }
    m
}

/// An error for a row a statement returned that the caller did not ask for.
pub(crate) fn unasked(what: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} returned that was not asked for"))
}
