//! SQLite, the embedded default of `urlfleet check`. One writer connection in WAL mode: SQLite
//! serializes writers anyway, and a single connection turns lock contention (`SQLITE_BUSY`) into plain
//! queueing. Its bulk statements take their rows as `VALUES` lists: every statement is a trip to the
//! connection's thread, so a handful per chunk instead of several per result keeps that thread from
//! being the bottleneck.

use std::str::FromStr;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Sqlite};
use urlfleet_shared::{CheckOutcome, ReportedResult};

use super::db::ladder_chunks;
use super::frontier::{FinishRow, FrontierEntry};
use super::rows::{OutcomeRow, latest_check_at};
use super::submission::{PlannedRow, StoredUrl, not_stored};
use super::{PlannedUrl, StoreError, StoreResult, mask_password};

type LiteTx = sqlx::Transaction<'static, Sqlite>;

/// Most rows per set-based ingest statement: 12 columns × 1,000 = 12,000 binds, under SQLite's 32,766.
const INGEST_ROWS: usize = 1_000;

/// Most rows per submission statement (7 columns × 1,024 binds): a longer statement takes longer to
/// prepare than the runs it saves.
const SUBMIT_ROWS: usize = 1_024;

/// Opens (creating when missing) the database and runs pending migrations.
pub(crate) async fn connect(url: &str) -> StoreResult<SqlitePool> {
    let err = |source| StoreError::Connect { url: mask_password(url), source };
    let opts = SqliteConnectOptions::from_str(url)
        .map_err(err)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(std::time::Duration::from_secs(30))
        .foreign_keys(true)
        // A run writes each URL's rows several times over: keep the working set in memory (32 MiB of
        // pages; a larger cache only held more memory, as a million URLs' database outgrows either)
        // and checkpoint the log in larger steps.
        .pragma("cache_size", "-32768")
        .pragma("wal_autocheckpoint", "8192")
        .pragma("temp_store", "memory")
        // Rows cross from SQLite's thread to the async side in buffers: a grant's frontier read or
        // an ingest chunk's rows in one hand-over rather than one per 50 rows.
        .row_buffer_size(4_096)
        // Every statement text a run uses stays prepared (see `ladder_chunks`).
        .statement_cache_capacity(512);
    let pool = SqlitePoolOptions::new().max_connections(1).connect_with(opts).await.map_err(err)?;
    sqlx::migrate!("migrations/sqlite").run(&pool).await?;
    Ok(pool)
}

/// Inserts the URLs not stored yet and returns every URL's stored state; a new URL's id comes back
/// from the insert itself, so only the URLs stored before are looked up again.
pub(crate) async fn upsert_urls(tx: &mut LiteTx, chunk: &[PlannedUrl]) -> StoreResult<Vec<StoredUrl>> {
    let mut stored: Vec<StoredUrl> = Vec::with_capacity(chunk.len());
    for run in ladder_chunks(chunk, SUBMIT_ROWS) {
        let mut qb = QueryBuilder::<Sqlite>::new("INSERT INTO urls (url) ");
        qb.push_values(run, |mut b, u| {
            b.push_bind(u.url.as_str());
        });
        qb.push(" ON CONFLICT (url) DO NOTHING RETURNING url, id, NULL AS kind, NULL AS status, NULL AS checked_at");
        stored.extend(qb.build_query_as::<StoredUrl>().fetch_all(&mut **tx).await?);
    }
    if stored.len() < chunk.len() {
        let known = not_stored(chunk, &stored);
        for run in ladder_chunks(&known, SUBMIT_ROWS) {
            let mut qb = QueryBuilder::<Sqlite>::new(format!(
                "SELECT u.url, u.id, c.kind, c.status, c.checked_at FROM urls u LEFT JOIN checks c \
                 ON c.url_id = u.id AND c.checked_at = {} WHERE u.url IN (",
                latest_check_at("u.id")
            ));
            let mut sep = qb.separated(", ");
            for u in run {
                sep.push_bind(*u);
            }
            qb.push(")");
            stored.extend(qb.build_query_as::<StoredUrl>().fetch_all(&mut **tx).await?);
        }
    }
    Ok(stored)
}

/// Inserts a job's URL rows; returns the rows inserted (a batch tried again after a commit whose
/// outcome was unknown inserts none).
pub(crate) async fn insert_job_urls(
    tx: &mut LiteTx,
    job_id: i64,
    planned: &[PlannedRow<'_>],
) -> StoreResult<Vec<(i64, String)>> {
    let mut inserted = Vec::with_capacity(planned.len());
    for run in ladder_chunks(planned, SUBMIT_ROWS) {
        let mut qb =
            QueryBuilder::<Sqlite>::new("INSERT INTO job_urls (job_id, url_id, host, state, url_order, kind, seq) ");
        qb.push_values(run, |mut b, p| {
            b.push_bind(job_id)
                .push_bind(p.url_id)
                .push_bind(p.host)
                .push_bind(p.state.as_str())
                .push_bind(p.url_order)
                .push_bind(p.kind)
                .push_bind(p.seq);
        });
        qb.push(" ON CONFLICT DO NOTHING RETURNING url_id, state");
        inserted.extend(qb.build_query_as::<(i64, String)>().fetch_all(&mut **tx).await?);
    }
    Ok(inserted)
}

/// Adds entries to the frontier: plain inserts, behind a savepoint; only if an entry was there
/// already (which the store's rules never leave) again, skipping conflicts and returning the host of
/// each entry inserted. `None`: every entry was inserted.
pub(crate) async fn insert_frontier(
    tx: &mut LiteTx,
    entries: &[FrontierEntry<'_>],
) -> StoreResult<Option<Vec<String>>> {
    let statement = |run: &[FrontierEntry<'_>], tail: &str| {
        let mut qb = QueryBuilder::<Sqlite>::new("INSERT INTO frontier (host, url_order, seq, url_id, job_id) ");
        qb.push_values(run, |mut b, e| {
            b.push_bind(e.host).push_bind(e.url_order).push_bind(e.seq).push_bind(e.url_id).push_bind(e.job_id);
        });
        qb.push(tail);
        qb
    };
    let mut savepoint = sqlx::Acquire::begin(&mut **tx).await?;
    let mut plain = Ok(());
    for run in ladder_chunks(entries, SUBMIT_ROWS) {
        if let Err(e) = statement(run, "").build().execute(&mut *savepoint).await {
            plain = Err(e);
            break;
        }
    }
    match plain {
        Ok(()) => {
            savepoint.commit().await?;
            Ok(None)
        }
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            savepoint.rollback().await?;
            let mut hosts = Vec::new();
            for run in ladder_chunks(entries, SUBMIT_ROWS) {
                let mut qb = statement(run, " ON CONFLICT DO NOTHING RETURNING host");
                hosts.extend(qb.build_query_as::<(String,)>().fetch_all(&mut **tx).await?.into_iter().map(|(h,)| h));
            }
            Ok(Some(hosts))
        }
        Err(e) => Err(e.into()),
    }
}

/// Records what new leases hold: (URL, lease, job) triples.
pub(crate) async fn insert_lease_urls(tx: &mut LiteTx, held: &[(i64, i64, i64)]) -> StoreResult<()> {
    for run in ladder_chunks(held, SUBMIT_ROWS) {
        let mut qb = QueryBuilder::<Sqlite>::new("INSERT INTO lease_urls (url_id, lease_id, job_id) ");
        qb.push_values(run, |mut b, h| {
            b.push_bind(h.0).push_bind(h.1).push_bind(h.2);
        });
        qb.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// Finishes open `job_urls` rows by primary key with the result that answered them; returns those
/// finished.
pub(crate) async fn finish_job_urls(tx: &mut LiteTx, rows: &[FinishRow<'_>]) -> StoreResult<Vec<(i64, i64)>> {
    let mut finished = Vec::with_capacity(rows.len());
    for run in ladder_chunks(rows, INGEST_ROWS) {
        let mut qb = QueryBuilder::<Sqlite>::new("WITH v(job_id, url_id, kind, lease_id, at) AS (");
        qb.push_values(run, |mut b, r| {
            b.push_bind(r.job_id).push_bind(r.url_id).push_bind(r.kind).push_bind(r.lease_id).push_bind(r.checked_at);
        });
        qb.push(
            ") UPDATE job_urls SET state = 'done', kind = v.kind, lease_id = v.lease_id, checked_at = v.at FROM v \
             WHERE job_urls.job_id = v.job_id AND job_urls.url_id = v.url_id AND job_urls.state = 'pending' \
             RETURNING job_urls.job_id, job_urls.url_id",
        );
        finished.extend(qb.build_query_as::<(i64, i64)>().fetch_all(&mut **tx).await?);
    }
    Ok(finished)
}

/// Records a chunk's results in the history (a replay hits the primary key and changes nothing; the
/// newest `checks` row of a URL is its latest state). A result for a URL that does not exist fails
/// on the foreign keys.
pub(crate) async fn record_results(tx: &mut LiteTx, results: &[&ReportedResult]) -> StoreResult<()> {
    for chunk in ladder_chunks(results, INGEST_ROWS) {
        let mut qb = QueryBuilder::<Sqlite>::new(format!("INSERT INTO checks (url_id, lease_id, {OUTCOME_COLUMNS}) "));
        qb.push_values(chunk, |mut b, r| {
            b.push_bind(r.url_id).push_bind(r.lease_id);
            push_outcome(&mut b, &r.outcome);
        });
        qb.push(" ON CONFLICT (url_id, checked_at) DO NOTHING");
        qb.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// The outcome columns of `checks`, in the order [`push_outcome`] binds them.
const OUTCOME_COLUMNS: &str =
    "kind, status, final_url, redirects, attempts, response_ms, content_type, content_length, error, checked_at";

/// Binds an outcome's columns ([`OUTCOME_COLUMNS`]) to a row of a `VALUES` list.
fn push_outcome(b: &mut sqlx::query_builder::Separated<'_, Sqlite, &'static str>, o: &CheckOutcome) {
    let o = OutcomeRow::of(o);
    b.push_bind(o.kind)
        .push_bind(o.status)
        .push_bind(o.final_url)
        .push_bind(o.redirects)
        .push_bind(o.attempts)
        .push_bind(o.response_ms)
        .push_bind(o.content_type)
        .push_bind(o.content_length)
        .push_bind(o.error)
        .push_bind(o.checked_at);
}
