//! PostgreSQL, the cluster store. Several coordinators may share one database: frontier rows are
//! claimed with `FOR UPDATE SKIP LOCKED`, so two coordinators never lease the same host (and so never
//! the same URL) at once. Its bulk statements take their rows as arrays (`UNNEST`), so a batch costs a
//! handful of round trips whatever its size.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Acquire, Connection, FromRow, Postgres};

use super::frontier::{FinishRow, FrontierEntry, Taken};
use super::granting::Picked;
use super::rows::{OutcomeRow, latest_check_at};
use super::submission::{PlannedRow, StoredUrl, not_stored};
use super::{PlannedUrl, StoreError, StoreResult, mask_password};
use urlfleet_shared::ReportedResult;
use urlfleet_shared::time::ms;

type PgTx = sqlx::Transaction<'static, Postgres>;

/// Ingest and leasing touch a few thousand rows picked by key out of tables of millions: the plan
/// they need is an index probe per key, and for the frontier an index read in order that stops at the
/// lease's size. On a small table, or with statistics that say the picked state is rare, the planner
/// prefers to scan the whole table and hash it once per chunk, or to gather a host's whole frontier
/// in a bitmap and sort it for every lease; these settings, for one transaction, take that away.
pub(crate) const KEYED_PLANS: &str = "SET LOCAL enable_seqscan = off; SET LOCAL enable_hashjoin = off; \
                                      SET LOCAL enable_mergejoin = off; SET LOCAL enable_bitmapscan = off";

/// Connects and runs pending migrations. Every statement of the store is a short keyed read or write:
/// compiling one with JIT (which a plan's cost estimate can trigger, more so with the keyed-plan
/// settings) took longer than running it, so it is off.
pub(crate) async fn connect(url: &str) -> StoreResult<PgPool> {
    let err = |source| StoreError::Connect { url: mask_password(url), source };
    // One direct connection first: a refused or misconfigured server fails at once instead of after
    // the pool's acquire timeout.
    let opts = PgConnectOptions::from_str(url).map_err(err)?.options([("jit", "off")]);
    let probe = sqlx::PgConnection::connect_with(&opts).await.map_err(err)?;
    let _ = probe.close().await;
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect_with(opts)
        .await
        .map_err(err)?;
    sqlx::migrate!("migrations/postgres").run(&pool).await?;
    Ok(pool)
}

/// Runs an insert as the plain statement first, inside a savepoint, and again with `conflict` (which
/// skips conflicting rows) if the plain one hits a unique violation. Handling conflicts makes
/// PostgreSQL check and reserve each row's key before inserting it (a speculative insertion), which
/// costs more than the plain insert; conflicts are the exception — a URL stored before, a replayed
/// report — and what a failed attempt did is lost (the rows before the first conflict). `statement`
/// builds the text from the conflict clause; `run` binds and runs it.
async fn plain_first<'q, F>(
    tx: &mut PgTx,
    statement: impl Fn(&str) -> String,
    conflict: &str,
    run: F,
) -> StoreResult<Vec<PgRow>>
where
    F: Fn(String) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
{
    Ok(plain_first_told(tx, statement, conflict, run).await?.0)
}

/// [`plain_first`], and whether the plain statement hit a conflict (the rows are then the second
/// statement's).
async fn plain_first_told<'q, F>(
    tx: &mut PgTx,
    statement: impl Fn(&str) -> String,
    conflict: &str,
    run: F,
) -> StoreResult<(Vec<PgRow>, bool)>
where
    F: Fn(String) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
{
    let mut savepoint = tx.begin().await?;
    match run(statement("")).fetch_all(&mut *savepoint).await {
        Ok(rows) => {
            savepoint.commit().await?;
            Ok((rows, false))
        }
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            savepoint.rollback().await?;
            Ok((run(statement(conflict)).fetch_all(&mut **tx).await?, true))
        }
        Err(e) => Err(e.into()),
    }
}

fn query(text: String) -> sqlx::query::Query<'static, Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sqlx::AssertSqlSafe(text))
}

/// Inserts the URLs not stored yet and returns every URL's stored state. A new URL's id comes back
/// from the insert itself, so only the URLs stored before are looked up again.
pub(crate) async fn upsert_urls(tx: &mut PgTx, chunk: &[PlannedUrl]) -> StoreResult<Vec<StoredUrl>> {
    let urls: Vec<&str> = chunk.iter().map(|u| u.url.as_str()).collect();
    let rows = plain_first(
        tx,
        |conflict| {
            format!(
                "INSERT INTO urls (url) SELECT * FROM UNNEST($1::text[]){conflict} \
                 RETURNING url, id, NULL::text AS kind, NULL::int AS status, NULL::bigint AS checked_at"
            )
        },
        " ON CONFLICT (url) DO NOTHING",
        |text| query(text).bind(&urls),
    )
    .await?;
    let mut stored = rows.iter().map(StoredUrl::from_row).collect::<Result<Vec<_>, _>>()?;
    if stored.len() < urls.len() {
        let known = not_stored(chunk, &stored);
        let rows: Vec<StoredUrl> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT u.url, u.id, c.kind, c.status, c.checked_at FROM urls u LEFT JOIN checks c \
             ON c.url_id = u.id AND c.checked_at = {} WHERE u.url = ANY($1::text[])",
            latest_check_at("u.id")
        )))
        .bind(&known)
        .fetch_all(&mut **tx)
        .await?;
        stored.extend(rows);
    }
    Ok(stored)
}

/// Each host's next URLs in frontier order, up to its limit, for any number of hosts in one short
/// statement: a lateral read of the frontier per host (see `granting::pick_frontier`).
pub(crate) async fn pick_frontier(tx: &mut PgTx, hosts: &[(&str, i64)], now: i64) -> StoreResult<Vec<Picked>> {
    let names: Vec<&str> = hosts.iter().map(|(h, _)| *h).collect();
    let limits: Vec<i64> = hosts.iter().map(|(_, n)| *n).collect();
    Ok(sqlx::query_as::<_, Picked>(
        "SELECT f.* FROM UNNEST($1::text[], $2::bigint[]) AS h(host, n) CROSS JOIN LATERAL \
         (SELECT fr.host, fr.url_id, u.url, fr.url_order, fr.seq FROM frontier fr JOIN urls u ON u.id = fr.url_id \
          WHERE fr.host = h.host AND fr.job_id = ANY(ARRAY(SELECT id FROM jobs \
          WHERE state IN ('receiving', 'scheduled', 'running') AND not_before <= $3 \
          AND (state <> 'receiving' OR COALESCE(touched_at, created_at) >= $4))) \
          AND NOT EXISTS (SELECT 1 FROM lease_urls lu WHERE lu.url_id = fr.url_id) \
          ORDER BY fr.url_order, fr.seq, fr.url_id LIMIT h.n) AS f",
    )
    .bind(&names)
    .bind(&limits)
    .bind(now)
    .bind(now - ms(super::ABANDONED_UPLOAD))
    .fetch_all(&mut **tx)
    .await?)
}

/// Inserts a job's URL rows, passed as column arrays; returns the rows inserted (a batch tried again
/// after a commit whose outcome was unknown inserts none).
pub(crate) async fn insert_job_urls(
    tx: &mut PgTx,
    job_id: i64,
    planned: &[PlannedRow<'_>],
) -> StoreResult<Vec<(i64, String)>> {
    let ids: Vec<i64> = planned.iter().map(|p| p.url_id).collect();
    let hosts: Vec<&str> = planned.iter().map(|p| p.host).collect();
    let states: Vec<&str> = planned.iter().map(|p| p.state.as_str()).collect();
    let orders: Vec<i16> = planned.iter().map(|p| p.url_order).collect();
    let kinds: Vec<Option<&str>> = planned.iter().map(|p| p.kind).collect();
    let seqs: Vec<i32> = planned.iter().map(|p| p.seq).collect();
    let rows = plain_first(
        tx,
        |conflict| {
            format!(
                "INSERT INTO job_urls (job_id, url_id, host, state, url_order, kind, seq) \
                 SELECT $1::bigint, * FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::smallint[], \
                 $6::text[], $7::int[]){conflict} RETURNING url_id, state"
            )
        },
        " ON CONFLICT DO NOTHING",
        |text| query(text).bind(job_id).bind(&ids).bind(&hosts).bind(&states).bind(&orders).bind(&kinds).bind(&seqs),
    )
    .await?;
    Ok(rows.iter().map(<(i64, String)>::from_row).collect::<Result<_, _>>()?)
}

/// Adds entries to the frontier, passed as column arrays: a plain insert, behind a savepoint; only
/// if an entry was there already (which the store's rules never leave) again, skipping conflicts
/// and returning the host of each entry inserted. `None`: every entry was inserted.
pub(crate) async fn insert_frontier(tx: &mut PgTx, entries: &[FrontierEntry<'_>]) -> StoreResult<Option<Vec<String>>> {
    let hosts: Vec<&str> = entries.iter().map(|e| e.host).collect();
    let orders: Vec<i16> = entries.iter().map(|e| e.url_order).collect();
    let seqs: Vec<i32> = entries.iter().map(|e| e.seq).collect();
    let urls: Vec<i64> = entries.iter().map(|e| e.url_id).collect();
    let jobs: Vec<i64> = entries.iter().map(|e| e.job_id).collect();
    let text = |tail: &str| {
        format!(
            "INSERT INTO frontier (host, url_order, seq, url_id, job_id) \
             SELECT * FROM UNNEST($1::text[], $2::smallint[], $3::int[], $4::bigint[], $5::bigint[]){tail}"
        )
    };
    let (rows, conflicted) = plain_first_told(tx, text, " ON CONFLICT DO NOTHING RETURNING host", |text| {
        query(text).bind(&hosts).bind(&orders).bind(&seqs).bind(&urls).bind(&jobs)
    })
    .await?;
    if !conflicted {
        return Ok(None);
    }
    Ok(Some(rows.iter().map(|r| <(String,)>::from_row(r).map(|(h,)| h)).collect::<Result<_, _>>()?))
}

/// Takes every job's frontier rows of these URLs out of the frontier (see `frontier::take_frontier`):
/// the rows are found through the URL index and locked, passing over those another transaction
/// holds, and deleted by their physical address — as a semi-join on the five-column key, the delete
/// had been the costliest statement of a run.
pub(crate) async fn take_frontier(tx: &mut PgTx, url_ids: &[i64]) -> StoreResult<Vec<Taken>> {
    Ok(sqlx::query_as(
        "DELETE FROM frontier WHERE ctid = ANY(ARRAY(SELECT ctid FROM frontier WHERE url_id = ANY($1) \
         FOR UPDATE SKIP LOCKED)) RETURNING job_id, url_id, host",
    )
    .bind(url_ids)
    .fetch_all(&mut **tx)
    .await?)
}

/// Deletes what leases hold of these (URL, lease) pairs, every job's row (see `frontier::release`).
/// Each pair is found by a lateral probe of the key (`OFFSET 0` keeps the planner from pulling it
/// up into a join): once `lease_urls` had statistics, a plain join of the pairs read the whole table
/// for every chunk and compared each row with every pair.
pub(crate) async fn release(tx: &mut PgTx, pairs: &[(i64, i64)]) -> StoreResult<Vec<(i64, i64, i64)>> {
    let urls: Vec<i64> = pairs.iter().map(|p| p.0).collect();
    let leases: Vec<i64> = pairs.iter().map(|p| p.1).collect();
    Ok(sqlx::query_as(
        "DELETE FROM lease_urls WHERE ctid = ANY(ARRAY(SELECT x.ctid FROM UNNEST($1::bigint[], $2::bigint[]) \
         AS v(url_id, lease_id) CROSS JOIN LATERAL (SELECT ctid FROM lease_urls \
         WHERE url_id = v.url_id AND lease_id = v.lease_id OFFSET 0) AS x)) RETURNING url_id, lease_id, job_id",
    )
    .bind(&urls)
    .bind(&leases)
    .fetch_all(&mut **tx)
    .await?)
}

/// Which of these (URL, lease) pairs a lease holds open (see `frontier::held`), a lateral probe of
/// the key per pair (see [`release`]).
pub(crate) async fn held(tx: &mut PgTx, pairs: &[(i64, i64)]) -> StoreResult<Vec<(i64, i64)>> {
    let urls: Vec<i64> = pairs.iter().map(|p| p.0).collect();
    let leases: Vec<i64> = pairs.iter().map(|p| p.1).collect();
    Ok(sqlx::query_as(
        "SELECT x.url_id, x.lease_id FROM UNNEST($1::bigint[], $2::bigint[]) AS v(url_id, lease_id) \
         CROSS JOIN LATERAL (SELECT url_id, lease_id FROM lease_urls WHERE url_id = v.url_id AND lease_id = v.lease_id \
         LIMIT 1) AS x",
    )
    .bind(&urls)
    .bind(&leases)
    .fetch_all(&mut **tx)
    .await?)
}

/// Records what new leases hold: (URL, lease, job) triples, as column arrays.
pub(crate) async fn insert_lease_urls(tx: &mut PgTx, held: &[(i64, i64, i64)]) -> StoreResult<()> {
    let urls: Vec<i64> = held.iter().map(|h| h.0).collect();
    let leases: Vec<i64> = held.iter().map(|h| h.1).collect();
    let jobs: Vec<i64> = held.iter().map(|h| h.2).collect();
    sqlx::query(
        "INSERT INTO lease_urls (url_id, lease_id, job_id) SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[])",
    )
    .bind(&urls)
    .bind(&leases)
    .bind(&jobs)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Finishes open `job_urls` rows by primary key with the result that answered them; returns those
/// finished (a row finished or cancelled before is left as it is).
pub(crate) async fn finish_job_urls(tx: &mut PgTx, rows: &[FinishRow<'_>]) -> StoreResult<Vec<(i64, i64)>> {
    let jobs: Vec<i64> = rows.iter().map(|r| r.job_id).collect();
    let urls: Vec<i64> = rows.iter().map(|r| r.url_id).collect();
    let kinds: Vec<&str> = rows.iter().map(|r| r.kind).collect();
    let leases: Vec<i64> = rows.iter().map(|r| r.lease_id).collect();
    let at: Vec<i64> = rows.iter().map(|r| r.checked_at).collect();
    Ok(sqlx::query_as(
        "UPDATE job_urls ju SET state = 'done', kind = v.kind, lease_id = v.lease_id, checked_at = v.at \
         FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::bigint[], $5::bigint[]) AS v(job_id, url_id, kind, lease_id, at) \
         WHERE ju.job_id = v.job_id AND ju.url_id = v.url_id AND ju.state = 'pending' RETURNING ju.job_id, ju.url_id",
    )
    .bind(&jobs)
    .bind(&urls)
    .bind(&kinds)
    .bind(&leases)
    .bind(&at)
    .fetch_all(&mut **tx)
    .await?)
}

/// Records a chunk's results in the history: every result a `checks` row, whose newest row of a URL
/// is its latest state. A replay hits the primary key and changes nothing.
pub(crate) async fn record_results(tx: &mut PgTx, results: &[&ReportedResult]) -> StoreResult<()> {
    // No foreign keys on the hot tables: every URL here exists, because the fence let through only
    // URLs a lease holds. Rows go in URL id order, the order concurrent chunks meet each other's keys
    // in, newest first within a URL: of equally new results the first reported leads, so it is the
    // one `checks` keeps and the one `newest_per_url` counts.
    let mut rows: Vec<(usize, &ReportedResult)> = results.iter().copied().enumerate().collect();
    rows.sort_by_key(|(i, r)| (r.url_id, std::cmp::Reverse(r.outcome.checked_at_ms), *i));
    let url_ids: Vec<i64> = rows.iter().map(|(_, r)| r.url_id).collect();
    let lease_ids: Vec<i64> = rows.iter().map(|(_, r)| r.lease_id).collect();
    let c = OutcomeColumns::of(rows.iter().map(|(_, r)| &r.outcome));
    plain_first(tx, record_statement, " ON CONFLICT (url_id, checked_at) DO NOTHING", |text| {
        query(text)
            .bind(&url_ids)
            .bind(&c.checked_at)
            .bind(&lease_ids)
            .bind(&c.kinds)
            .bind(&c.statuses)
            .bind(&c.final_urls)
            .bind(&c.redirects)
            .bind(&c.attempts)
            .bind(&c.response_ms)
            .bind(&c.content_types)
            .bind(&c.content_lengths)
            .bind(&c.errors)
    })
    .await?;
    Ok(())
}

/// Records results passed as column arrays, each one a `checks` row.
fn record_statement(conflict: &str) -> String {
    format!(
        "INSERT INTO checks (url_id, checked_at, lease_id, kind, status, final_url, redirects, attempts, \
         response_ms, content_type, content_length, error) \
         SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::int[], $6::text[], \
         $7::text[], $8::int[], $9::bigint[], $10::text[], $11::bigint[], $12::text[]){conflict}"
    )
}

/// Outcome rows as column arrays, for `UNNEST`.
#[derive(Default)]
struct OutcomeColumns<'a> {
    kinds: Vec<&'static str>,
    statuses: Vec<Option<i32>>,
    final_urls: Vec<Option<&'a str>>,
    redirects: Vec<Option<String>>,
    attempts: Vec<i32>,
    response_ms: Vec<i64>,
    content_types: Vec<Option<&'a str>>,
    content_lengths: Vec<Option<i64>>,
    errors: Vec<Option<&'a str>>,
    checked_at: Vec<i64>,
}

impl<'a> OutcomeColumns<'a> {
    fn of(outcomes: impl Iterator<Item = &'a urlfleet_shared::CheckOutcome>) -> Self {
        let mut c = Self::default();
        for o in outcomes {
            let r = OutcomeRow::of(o);
            c.kinds.push(r.kind);
            c.statuses.push(r.status);
            c.final_urls.push(r.final_url);
            c.redirects.push(r.redirects);
            c.attempts.push(r.attempts);
            c.response_ms.push(r.response_ms);
            c.content_types.push(r.content_type);
            c.content_lengths.push(r.content_length);
            c.errors.push(r.error);
            c.checked_at.push(r.checked_at);
        }
        c
    }
}
