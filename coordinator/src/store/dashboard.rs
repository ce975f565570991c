//! What the dashboard reads: a job's failures filtered, sorted and paged (found through a partial
//! index of failures, which are few among a job's URLs), the hosts of the frontier, and a job's
//! progress sampled over time.

use urlfleet_shared::{OutcomeClass, OutcomeKind};

use super::db::sql;
use super::results::{UrlResultRow, invalid_row, job_url_select};
use super::rows::{latest_check, latest_check_at};
use super::{ResultRow, SqlStore, StoreResult};

/// How a failures table is sorted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailureSort {
    /// In submission order (the order of URL ids): the index's own order, so the cheapest.
    #[default]
    Submitted,
    /// By URL.
    Url,
    /// By final status.
    Status,
    /// By check time.
    Time,
}

/// Which failures of a job to read.
#[derive(Debug, Clone, Default)]
pub struct FailureQuery {
    /// The job.
    pub job_id: i64,
    /// Only these classes (of broken, error, invalid); all three when empty.
    pub classes: Vec<OutcomeClass>,
    /// Only this kind.
    pub kind: Option<OutcomeKind>,
    /// Only this final status.
    pub status: Option<u16>,
    /// Only this host.
    pub host: Option<String>,
    /// Only URLs containing this text.
    pub search: Option<String>,
    /// Order.
    pub sort: FailureSort,
    /// Descending order.
    pub descending: bool,
    /// Rows skipped.
    pub offset: u32,
    /// Rows returned, at most.
    pub limit: u32,
}

/// A page of failures, and how many match in all.
#[derive(Debug, Clone, Default)]
pub struct FailurePage {
    /// The rows of the page.
    pub rows: Vec<ResultRow>,
    /// Rows matching the filter.
    pub total: u64,
}

/// A host of the frontier.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct HostRow {
    /// Host key.
    pub host: String,
    /// URLs waiting for a lease.
    pub pending: i64,
    /// Leases out now.
    pub active_leases: i32,
    /// Leases allowed at once (the pace in force: concurrency).
    pub max_leases: i32,
    /// No lease before this time (ms): the spacing from the last lease, or a pause.
    pub next_allowed_at: i64,
    /// The worker holding its lease, when one does.
    pub holder: Option<String>,
}

/// A job's counters at one time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct JobSample {
    /// When (ms).
    pub at: i64,
    /// URLs checked by then.
    pub checked: i64,
    /// Outcome classes by then.
    pub n_ok: i64,
    /// See `n_ok`.
    pub n_redirected: i64,
    /// See `n_ok`.
    pub n_broken: i64,
    /// See `n_ok`.
    pub n_error: i64,
}

impl SqlStore {
    pub(crate) async fn job_failures_impl(&self, q: &FailureQuery) -> StoreResult<FailurePage> {
        let classes: Vec<OutcomeClass> = if q.classes.is_empty() {
            vec![OutcomeClass::Broken, OutcomeClass::Error, OutcomeClass::Invalid]
        } else {
            q.classes.iter().copied().filter(|c| c.is_failure()).collect()
        };
        let kinds: Vec<&'static str> = classes
            .iter()
            .flat_map(|c| c.kinds())
            .filter(|k| *k != OutcomeKind::Invalid && q.kind.is_none_or(|want| want == *k))
            .map(|k| k.as_str())
            .collect();
        // Invalid entries have no status, host or URL row: they match only filters that leave them in.
        let want_invalid = classes.contains(&OutcomeClass::Invalid)
            && q.kind.is_none_or(|k| k == OutcomeKind::Invalid)
            && q.status.is_none()
            && q.host.is_none();
        let mut conn = self.db.acquire().await?;
        let filter = |s: &mut super::db::Sql<'_>| {
            // `failure` is `kind` for the failing kinds (all `kinds` are): the partial index's column.
            s.push(" AND ju.failure IN (").push_list(kinds.iter().copied()).push(")");
            if let Some(status) = q.status {
                s.push(&format!(" AND {} = ", latest_check("status", "ju.url_id"))).push_bind(i32::from(status));
            }
            if let Some(host) = &q.host {
                s.push(" AND ju.host = ").push_bind(host.clone());
            }
            if let Some(text) = &q.search {
                s.push(" AND u.url LIKE ").push_bind(format!("%{}%", like_escape(text))).push(" ESCAPE '\\'");
            }
        };
        let mut url_total = 0u64;
        let mut rows = Vec::new();
        if !kinds.is_empty() {
            // The URL rows join in only when a filter reads them: the count alone is the index's.
            let join = if q.search.is_some() { "JOIN urls u ON u.id = ju.url_id " } else { "" };
            let mut count = sql(format!("SELECT COUNT(*) FROM job_urls ju {join}WHERE ju.job_id = "));
            count.push_bind(q.job_id);
            filter(&mut count);
            url_total = count.scalar::<i64>(&mut conn).await?.unwrap_or(0).max(0) as u64;
            if u64::from(q.offset) < url_total {
                // The page is chosen among the failures alone (the partial index finds them; the URL
                // rows join in only for a filter or an order that reads them), then only its rows
                // are joined with their checks: no pass over the job's other URLs, nor over the
                // history. Sorting by status or time uses the URL's latest state (its newest check,
                // found through the history's primary key).
                let dir = if q.descending { "DESC" } else { "ASC" };
                // `|| ''` keeps the URL index out of the plan: walking every URL of the database in
                // order to find a job's few failures costs more, the deeper the page, than sorting
                // the failures.
                let (latest_status, latest_at) = (latest_check("status", "ju.url_id"), latest_check_at("ju.url_id"));
                let key = match q.sort {
                    FailureSort::Submitted => "ju.url_id",
                    FailureSort::Url => "u.url || ''",
                    FailureSort::Status => latest_status.as_str(),
                    FailureSort::Time => latest_at.as_str(),
                };
                let join = if q.sort == FailureSort::Url || q.search.is_some() {
                    "JOIN urls u ON u.id = ju.url_id "
                } else {
                    ""
                };
                let mut s = sql(format!(
                    "WITH p AS MATERIALIZED (SELECT ju.url_id, {key} AS sort_key FROM job_urls ju {join}WHERE ju.job_id = "
                ));
                s.push_bind(q.job_id);
                filter(&mut s);
                s.push(&format!(" ORDER BY sort_key {dir}, ju.url_id LIMIT ")).push_bind(i64::from(q.limit));
                s.push(" OFFSET ").push_bind(i64::from(q.offset)).push(") ");
                s.push(&job_url_select("JOIN p ON p.url_id = ju.url_id"));
                s.push_bind(q.job_id);
                s.push(&format!(" ORDER BY p.sort_key {dir}, ju.url_id"));
                for row in s.fetch_all::<UrlResultRow>(&mut conn).await? {
                    rows.push(row.into_result()?);
                }
            }
        }
        let mut invalid_total = 0u64;
        if want_invalid {
            let search = q.search.as_ref().map(|t| format!("%{}%", like_escape(t)));
            let mut count = sql("SELECT COUNT(*) FROM job_invalid WHERE job_id = ");
            count.push_bind(q.job_id);
            if let Some(p) = &search {
                count.push(" AND input LIKE ").push_bind(p.clone()).push(" ESCAPE '\\'");
            }
            invalid_total = count.scalar::<i64>(&mut conn).await?.unwrap_or(0).max(0) as u64;
            let room = i64::from(q.limit) - rows.len() as i64;
            if room > 0 {
                let skip = u64::from(q.offset).saturating_sub(url_total) as i64;
                let mut s = sql("SELECT seq, input, reason FROM job_invalid WHERE job_id = ");
                s.push_bind(q.job_id);
                if let Some(p) = &search {
                    s.push(" AND input LIKE ").push_bind(p.clone()).push(" ESCAPE '\\'");
                }
                s.push(" ORDER BY seq LIMIT ").push_bind(room).push(" OFFSET ").push_bind(skip);
                let found: Vec<(i64, String, String)> = s.fetch_all(&mut conn).await?;
                rows.extend(found.into_iter().map(|(seq, input, reason)| invalid_row(seq, input, reason)));
            }
        }
        Ok(FailurePage { rows, total: url_total + invalid_total })
    }

    pub(crate) async fn frontier_hosts_impl(&self, limit: u32) -> StoreResult<Vec<HostRow>> {
        // One row per host ever seen: a scan of the host table, not of URLs.
        let mut conn = self.db.acquire().await?;
        sql("SELECT host, pending, active_leases, max_leases, next_allowed_at, holder FROM hosts \
             WHERE pending > 0 OR active_leases > 0 OR next_allowed_at > $1 \
             ORDER BY active_leases DESC, pending DESC, host LIMIT $2")
        .bind(urlfleet_shared::time::now_ms())
        .bind(i64::from(limit))
        .fetch_all(&mut conn)
        .await
    }

    pub(crate) async fn sample_jobs_impl(&self, at: i64) -> StoreResult<()> {
        let mut conn = self.db.acquire().await?;
        // Several coordinators sample the same instant: one row is kept.
        sql("INSERT INTO job_samples (job_id, at, checked, n_ok, n_redirected, n_broken, n_error) \
             SELECT id, $1, checked + fresh, n_ok, n_redirected, n_broken, n_error FROM jobs \
             WHERE state IN ('scheduled', 'running') ON CONFLICT DO NOTHING")
        .bind(at)
        .execute(&mut conn)
        .await?;
        Ok(())
    }

    pub(crate) async fn job_samples_impl(&self, job_id: i64, limit: u32) -> StoreResult<Vec<JobSample>> {
        let mut conn = self.db.acquire().await?;
        let mut newest: Vec<JobSample> = sql("SELECT at, checked, n_ok, n_redirected, n_broken, n_error \
                                               FROM job_samples WHERE job_id = $1 ORDER BY at DESC LIMIT $2")
        .bind(job_id)
        .bind(i64::from(limit))
        .fetch_all(&mut conn)
        .await?;
        newest.reverse();
        Ok(newest)
    }
}

/// `text` with LIKE's wildcards taken literally.
fn like_escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}
