//! The PostgreSQL store: the cluster's shared state. Several coordinators may use one database:
//! frontier rows are claimed with `FOR UPDATE SKIP LOCKED`, so two coordinators never lease the
//! same host (and so never the same URL) at once.

use std::collections::HashSet;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Acquire, Connection};

use super::{OutcomeRow, mask_password};

/// Store on PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects and runs pending migrations.
    pub async fn connect(url: &str) -> Result<Self, super::StoreError> {
        // One direct connection first: a refused or misconfigured server fails at once instead of
        // after the pool's acquire timeout.
        let probe = sqlx::PgConnection::connect(url)
            .await
            .map_err(|source| super::StoreError::Connect { url: mask_password(url), source })?;
        let _ = probe.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(|source| super::StoreError::Connect { url: mask_password(url), source })?;
        Self::from_pool(pool).await
    }

    /// Wraps an existing pool and runs pending migrations.
    pub async fn from_pool(pool: PgPool) -> Result<Self, super::StoreError> {
        super::migrator(&[
            (1, "init", include_str!("../../migrations/postgres/0001_init.sql")),
            (2, "hot paths", include_str!("../../migrations/postgres/0002_hot_paths.sql")),
            (3, "hot finish", include_str!("../../migrations/postgres/0003_hot_finish.sql")),
            (4, "url host", include_str!("../../migrations/postgres/0004_url_host.sql")),
            (5, "lease urls", include_str!("../../migrations/postgres/0005_lease_urls.sql")),
        ])
        .run(&pool)
        .await?;
        Ok(Self { pool })
    }

    /// The connection pool (for tests and benchmarks).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Ingest and leasing touch a few thousand rows picked by key out of tables of millions: the plan
/// they need is an index probe per key, and for the frontier an index read in order that stops at the
/// lease's size. On a small table, or with statistics that say the picked state is rare, the planner
/// prefers to scan the whole table and hash it once per chunk, or to gather a host's whole frontier
/// in a bitmap and sort it for every lease; these settings, for one transaction, take that away.
const KEYED_PLANS: &str = "SET LOCAL enable_seqscan = off; SET LOCAL enable_hashjoin = off; \
                           SET LOCAL enable_mergejoin = off; SET LOCAL enable_bitmapscan = off";

super::sql::sql_store!(
    PgStore,
    sqlx::Postgres,
    skip_locked = " FOR UPDATE SKIP LOCKED",
    for_update = " FOR UPDATE",
    // A key-share lock: it does not wait for (or hold up) the counter updates of leases and ingest on
    // the job's row, only a discard's `FOR UPDATE`.
    for_share = " FOR KEY SHARE",
    keyed_plans = KEYED_PLANS,
    // An array built once by its subquery: the planner keeps the frontier index's order.
    in_subquery = ("= ANY(ARRAY(", "))")
);

impl PgStore {
    /// Inserts the URLs not stored yet and returns every URL's stored state; the rows travel as
    /// arrays. A new URL's id comes back from the insert itself, so only the URLs stored before are
    /// looked up again.
    async fn upsert_urls(tx: &mut Tx<'_>, chunk: &[PlannedUrl]) -> StoreResult<Vec<StoredUrl>> {
        let urls: Vec<&str> = chunk.iter().map(|u| u.url.as_str()).collect();
        let mut stored: Vec<StoredUrl> = plain_first!(tx, insert_urls, " ON CONFLICT (url) DO NOTHING", |sql, c| {
            sqlx::query_as(sql).bind(&urls).fetch_all(c)
        });
        if stored.len() < urls.len() {
            let new: HashSet<&str> = stored.iter().map(|s| s.0.as_str()).collect();
            let known: Vec<&str> = urls.iter().copied().filter(|u| !new.contains(u)).collect();
            let rows: Vec<StoredUrl> =
                sqlx::query_as("SELECT url, id, kind, status, checked_at, FALSE FROM urls WHERE url = ANY($1::text[])")
                    .bind(&known)
                    .fetch_all(&mut **tx)
                    .await?;
            stored.extend(rows);
        }
        Ok(stored)
    }

    async fn insert_job_urls(tx: &mut Tx<'_>, job_id: i64, planned: &[PlannedRow<'_>]) -> StoreResult<()> {
        let ids: Vec<i64> = planned.iter().map(|p| p.0).collect();
        let hosts: Vec<&str> = planned.iter().map(|p| p.1).collect();
        let states: Vec<&str> = planned.iter().map(|p| p.2).collect();
        let orders: Vec<i16> = planned.iter().map(|p| p.3).collect();
        let kinds: Vec<Option<&str>> = planned.iter().map(|p| p.4.as_deref()).collect();
        let seqs: Vec<i32> = planned.iter().map(|p| p.5).collect();
        plain_first!(tx, insert_job_urls, " ON CONFLICT DO NOTHING", |sql, c| {
            sqlx::query(sql)
                .bind(job_id)
                .bind(&ids)
                .bind(&hosts)
                .bind(&states)
                .bind(&orders)
                .bind(&kinds)
                .bind(&seqs)
                .execute(c)
        });
        Ok(())
    }

    /// Set-based ingest: a few statements for the whole batch — the `job_urls` finish, then the
    /// history and the latest state together — with the rows passed as arrays (`UNNEST`), so a batch
    /// costs a handful of round trips whatever its size.
    async fn ingest_impl(&self, results: &[ReportedResult]) -> StoreResult<Touched> {
        if results.is_empty() {
            return Ok(Touched::default());
        }
        let now = now_ms();
        let newest = newest_per_url(results);
        let ids: Vec<i64> = newest.iter().map(|r| r.url_id).collect();

        let mut tx = self.pool.begin().await?;
        sqlx::raw_sql(KEYED_PLANS).execute(&mut *tx).await?;
        // Progress: finish the open rows and learn what each was. Only an open URL can finish, so a
        // replay or a late report can neither double-count nor un-finish anything; a finished row keeps
        // its lease id, so a non-null one says the row was leased (a pending row never holds one). If
        // another transaction moves a row meanwhile, the condition is checked again on its new version.
        let kinds: Vec<&str> = newest.iter().map(|r| r.outcome.kind.as_str()).collect();
        let open: Vec<(i64, i64, Option<i64>, String)> = sqlx::query_as(
            "UPDATE job_urls ju SET state = 'done', kind = t.kind \
             FROM UNNEST($1::bigint[], $2::text[]) AS t(url_id, kind) \
             WHERE ju.url_id = t.url_id AND ju.state IN ('pending', 'leased') \
             RETURNING ju.job_id, ju.url_id, ju.lease_id, ju.host",
        )
        .bind(&ids)
        .bind(&kinds)
        .fetch_all(&mut *tx)
        .await?;
        // Without foreign keys on the hot tables, the URL ids are checked here, as a set: a result for
        // a URL that does not exist can never be stored. A URL with an open row in a job exists (the
        // rows are written in one transaction with their URLs), so only the others are looked up.
        let open_ids: HashSet<i64> = open.iter().map(|o| o.1).collect();
        let unverified: Vec<i64> = ids.iter().copied().filter(|id| !open_ids.contains(id)).collect();
        if !unverified.is_empty() {
            let known: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM urls WHERE id = ANY($1)")
                .bind(&unverified)
                .fetch_one(&mut *tx)
                .await?;
            if known < unverified.len() as i64 {
                return Err(super::StoreError::UnknownUrls(unverified.len() - known as usize));
            }
        }
        // History and latest state in one statement over one `UNNEST` of the results (unpacking the
        // arrays is about a third of each statement's time): every result becomes a `checks` row — a
        // replay hits the primary key and changes nothing — and the newest of each URL sets its
        // latest state, monotonic: an older result never overwrites a newer one. Rows go in URL id
        // order, the order concurrent chunks lock `urls` rows in, newest first within a URL: of
        // equally new results the first reported leads, so it is the one `checks` keeps (the later
        // ones conflict), the one that sets the latest state, and the one `newest_per_url` counts.
        let mut rows: Vec<(usize, &ReportedResult)> = results.iter().enumerate().collect();
        rows.sort_by_key(|(i, r)| (r.url_id, std::cmp::Reverse(r.outcome.checked_at_ms), *i));
        let h_newest: Vec<bool> = (0..rows.len()).map(|k| k == 0 || rows[k - 1].1.url_id != rows[k].1.url_id).collect();
        let h_ids: Vec<i64> = rows.iter().map(|(_, r)| r.url_id).collect();
        let h_lease: Vec<i64> = rows.iter().map(|(_, r)| r.lease_id).collect();
        let history = OutcomeColumns::of(rows.iter().map(|(_, r)| &r.outcome));
        let t = &mut tx;
        plain_first!(t, record_results, " ON CONFLICT (url_id, checked_at) DO NOTHING", |sql, c| {
            sqlx::query(sql)
                .bind(&h_ids)
                .bind(&history.checked_at)
                .bind(&h_lease)
                .bind(&history.kinds)
                .bind(&history.statuses)
                .bind(&history.final_urls)
                .bind(&history.redirects)
                .bind(&history.attempts)
                .bind(&history.response_ms)
                .bind(&history.content_types)
                .bind(&history.content_lengths)
                .bind(&history.errors)
                .bind(&h_newest)
                .execute(c)
        });

        settle_ingest(tx, open, &newest, results, now).await
    }
}

/// Runs an insert as the plain statement first, inside a savepoint, and again as the one that skips
/// conflicting rows if the plain one hits a unique violation. Handling conflicts makes PostgreSQL
/// check and reserve each row's key before inserting it (a speculative insertion): measured inside
/// the server, a plain insert costs about half of that for `checks`, two thirds for `urls` and four
/// fifths for `job_urls`. Conflicts are the exception — a URL stored before, a replayed report — and
/// what a failed attempt cost is lost: the rows before the first conflict (few when the batch starts
/// with known URLs), or, for the ingest's statement, whose `checks` insert runs last, all of it.
/// `$statement!` builds the statement with the conflict clause given; `$run` runs `$sql` on `$conn`.
macro_rules! plain_first {
    ($tx:ident, $statement:ident, $conflict:literal, |$sql:ident, $conn:ident| $run:expr) => {{
        let mut savepoint = $tx.begin().await?;
        let first = {
            let ($sql, $conn) = ($statement!(""), &mut *savepoint);
            $run.await
        };
        match first {
            Ok(v) => {
                savepoint.commit().await?;
                v
            }
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                savepoint.rollback().await?;
                let ($sql, $conn) = ($statement!($conflict), &mut **$tx);
                $run.await?
            }
            Err(e) => return Err(e.into()),
        }
    }};
}
use plain_first;

/// Inserts URLs passed as an array and returns each new one's stored state.
macro_rules! insert_urls {
    ($conflict:literal) => {
        concat!(
            "INSERT INTO urls (url) SELECT * FROM UNNEST($1::text[])",
            $conflict,
            " RETURNING url, id, kind, status, checked_at, TRUE"
        )
    };
}
use insert_urls;

/// Inserts a job's URL rows passed as column arrays.
macro_rules! insert_job_urls {
    ($conflict:literal) => {
        concat!(
            "INSERT INTO job_urls (job_id, url_id, host, state, url_order, kind, seq) \
             SELECT $1::bigint, * FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::smallint[], $6::text[], \
             $7::int[])",
            $conflict
        )
    };
}
use insert_job_urls;

/// Records a batch of results passed as column arrays: each one a `checks` row, and the ones marked
/// newest (one per URL) the URL's latest state unless it holds a newer one.
macro_rules! record_results {
    ($conflict:literal) => {
        concat!(
            "WITH t AS MATERIALIZED (SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], \
             $5::int[], $6::text[], $7::text[], $8::int[], $9::bigint[], $10::text[], $11::bigint[], $12::text[], \
             $13::bool[]) AS t(url_id, checked_at, lease_id, kind, status, final_url, redirects, attempts, \
             response_ms, content_type, content_length, error, newest)), \
             history AS (INSERT INTO checks (url_id, checked_at, lease_id, kind, status, final_url, redirects, \
             attempts, response_ms, content_type, content_length, error) \
             SELECT url_id, checked_at, lease_id, kind, status, final_url, redirects, attempts, response_ms, \
             content_type, content_length, error FROM t",
            $conflict,
            ") UPDATE urls u SET kind = t.kind, status = t.status, final_url = t.final_url, \
             redirects = t.redirects, attempts = t.attempts, response_ms = t.response_ms, \
             content_type = t.content_type, content_length = t.content_length, error = t.error, \
             checked_at = t.checked_at FROM t WHERE t.newest AND u.id = t.url_id \
             AND (u.checked_at IS NULL OR u.checked_at < t.checked_at)"
        )
    };
}
use record_results;

/// Outcome rows as column arrays, for `UNNEST`.
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
        let mut c = Self {
            kinds: Vec::new(),
            statuses: Vec::new(),
            final_urls: Vec::new(),
            redirects: Vec::new(),
            attempts: Vec::new(),
            response_ms: Vec::new(),
            content_types: Vec::new(),
            content_lengths: Vec::new(),
            errors: Vec::new(),
            checked_at: Vec::new(),
        };
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
