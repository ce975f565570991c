//! The SQLite store: the embedded default of `urlfleet check`. One writer connection in WAL mode:
//! SQLite serializes writers anyway, and a single connection turns lock contention (`SQLITE_BUSY`)
//! into plain queueing.

use std::str::FromStr;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use super::{OutcomeRow, mask_password};

/// Store on SQLite.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating when missing) the database and runs pending migrations.
    pub async fn connect(url: &str) -> Result<Self, super::StoreError> {
        let err = |source| super::StoreError::Connect { url: mask_password(url), source };
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(err)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(std::time::Duration::from_secs(30))
            .foreign_keys(true)
            // A run writes each URL's rows several times over: keep the working set in memory
            // (64 MiB of pages) and checkpoint the log in larger steps.
            .pragma("cache_size", "-65536")
            .pragma("wal_autocheckpoint", "8192")
            .pragma("temp_store", "memory");
        let pool = SqlitePoolOptions::new().max_connections(1).connect_with(opts).await.map_err(err)?;
        super::migrator(&[
            (1, "init", include_str!("../../migrations/sqlite/0001_init.sql")),
            (2, "waiting", include_str!("../../migrations/sqlite/0002_waiting.sql")),
            (3, "url host", include_str!("../../migrations/sqlite/0003_url_host.sql")),
            (4, "lease urls", include_str!("../../migrations/sqlite/0004_lease_urls.sql")),
        ])
        .run(&pool)
        .await?;
        Ok(Self { pool })
    }

    /// The connection pool (for tests).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

// SQLite has a single writer connection: nothing to lock row by row.
super::sql::sql_store!(
    SqliteStore,
    sqlx::Sqlite,
    skip_locked = "",
    for_update = "",
    for_share = "",
    keyed_plans = "",
    in_subquery = ("IN (", ")")
);

/// Rows per set-based statement: 12 columns × 1,000 = 12,000 binds, under SQLite's 32,766.
const INGEST_ROWS: usize = 1_000;

impl SqliteStore {
    /// Inserts the URLs not stored yet and returns every URL's stored state; a new URL's id comes
    /// back from the insert itself, so only the URLs stored before are looked up again.
    async fn upsert_urls(tx: &mut Tx<'_>, chunk: &[PlannedUrl]) -> StoreResult<Vec<StoredUrl>> {
        let mut qb = QueryBuilder::<sqlx::Sqlite>::new("INSERT INTO urls (url) ");
        qb.push_values(chunk, |mut b, u| {
            b.push_bind(u.url.as_str());
        });
        qb.push(" ON CONFLICT (url) DO NOTHING RETURNING url, id, kind, status, checked_at, TRUE");
        let mut stored: Vec<StoredUrl> = qb.build_query_as().fetch_all(&mut **tx).await?;
        if stored.len() < chunk.len() {
            let new: std::collections::HashSet<&str> = stored.iter().map(|s| s.0.as_str()).collect();
            let mut qb = QueryBuilder::<sqlx::Sqlite>::new(
                "SELECT url, id, kind, status, checked_at, FALSE FROM urls WHERE url IN (",
            );
            let mut sep = qb.separated(", ");
            for u in chunk.iter().filter(|u| !new.contains(u.url.as_str())) {
                sep.push_bind(u.url.as_str());
            }
            qb.push(")");
            let rows: Vec<StoredUrl> = qb.build_query_as().fetch_all(&mut **tx).await?;
            stored.extend(rows);
        }
        Ok(stored)
    }

    async fn insert_job_urls(tx: &mut Tx<'_>, job_id: i64, planned: &[PlannedRow<'_>]) -> StoreResult<()> {
        let mut qb = QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO job_urls (job_id, url_id, host, state, url_order, kind, seq) ",
        );
        qb.push_values(planned, |mut b, (id, host, state, order, kind, seq)| {
            b.push_bind(job_id)
                .push_bind(*id)
                .push_bind(*host)
                .push_bind(*state)
                .push_bind(*order)
                .push_bind(kind.as_deref())
                .push_bind(*seq);
        });
        qb.push(" ON CONFLICT DO NOTHING");
        qb.build().execute(&mut **tx).await?;
        Ok(())
    }

    /// Set-based ingest: each table is written with one statement per 1,000 results, the rows passed
    /// as a `VALUES` list. Every statement costs a trip to SQLite's connection thread, so a handful per
    /// chunk instead of five per result is what keeps that thread from being the bottleneck.
    async fn ingest_impl(&self, results: &[ReportedResult]) -> StoreResult<Touched> {
        if results.is_empty() {
            return Ok(Touched::default());
        }
        let now = now_ms();
        let newest = newest_per_url(results);
        let mut tx = self.pool.begin().await?;
        for chunk in newest.chunks(INGEST_ROWS) {
            let mut qb = QueryBuilder::<sqlx::Sqlite>::new(
                "WITH v(id, kind, status, final_url, redirects, attempts, response_ms, content_type, \
                 content_length, error, checked_at) AS (",
            );
            qb.push_values(chunk, |mut b, r| {
                let o = OutcomeRow::of(&r.outcome);
                b.push_bind(r.url_id)
                    .push_bind(o.kind)
                    .push_bind(o.status)
                    .push_bind(o.final_url)
                    .push_bind(o.redirects)
                    .push_bind(o.attempts)
                    .push_bind(o.response_ms)
                    .push_bind(o.content_type)
                    .push_bind(o.content_length)
                    .push_bind(o.error)
                    .push_bind(o.checked_at);
            });
            // Monotonic: an older result never overwrites a newer one.
            qb.push(
                ") UPDATE urls SET kind = v.kind, status = v.status, final_url = v.final_url, redirects = v.redirects, \
                 attempts = v.attempts, response_ms = v.response_ms, content_type = v.content_type, \
                 content_length = v.content_length, error = v.error, checked_at = v.checked_at \
                 FROM v WHERE urls.id = v.id AND (urls.checked_at IS NULL OR urls.checked_at < v.checked_at)",
            );
            qb.build().execute(&mut *tx).await?;
        }
        for chunk in results.chunks(INGEST_ROWS) {
            let mut qb = QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO checks (url_id, checked_at, lease_id, kind, status, final_url, redirects, attempts, \
                 response_ms, content_type, content_length, error) ",
            );
            qb.push_values(chunk, |mut b, r| {
                let o = OutcomeRow::of(&r.outcome);
                b.push_bind(r.url_id)
                    .push_bind(o.checked_at)
                    .push_bind(r.lease_id)
                    .push_bind(o.kind)
                    .push_bind(o.status)
                    .push_bind(o.final_url)
                    .push_bind(o.redirects)
                    .push_bind(o.attempts)
                    .push_bind(o.response_ms)
                    .push_bind(o.content_type)
                    .push_bind(o.content_length)
                    .push_bind(o.error);
            });
            // History: a replayed report hits the primary key and changes nothing.
            qb.push(" ON CONFLICT (url_id, checked_at) DO NOTHING");
            qb.build().execute(&mut *tx).await?;
        }
        // Progress: finish the open rows and learn what each was. Only an open URL can finish, so a
        // replay or a late report can neither double-count nor un-finish anything; a finished row keeps
        // its lease id, so a non-null one says the row was leased (a pending row never holds one).
        let mut open_rows = Vec::new();
        for chunk in newest.chunks(INGEST_ROWS) {
            let mut qb = QueryBuilder::<sqlx::Sqlite>::new("WITH v(url_id, kind) AS (");
            qb.push_values(chunk, |mut b, r| {
                b.push_bind(r.url_id).push_bind(r.outcome.kind.as_str());
            });
            qb.push(
                ") UPDATE job_urls SET state = 'done', kind = v.kind FROM v \
                 WHERE job_urls.url_id = v.url_id AND job_urls.state IN ('pending', 'leased') \
                 RETURNING job_id, url_id, lease_id, host",
            );
            let open: Vec<(i64, i64, Option<i64>, String)> = qb.build_query_as().fetch_all(&mut *tx).await?;
            open_rows.extend(open);
        }
        settle_ingest(tx, open_rows, &newest, results, now).await
    }
}
