//! Reading results: a job's per-URL results page by page (URL rows by id, then invalid entries), and
//! the frontier at a glance for metrics.

use urlfleet_shared::job::JobUrlState;
use urlfleet_shared::{OutcomeClass, OutcomeKind};

use super::db::sql;
use super::rows::{decode_redirects, latest_check_at, parse_kind};
use super::{FrontierStats, ResultCursor, ResultPage, ResultRow, SqlStore, StoreResult};

/// Why a URL whose leases kept expiring has no result.
const GAVE_UP: &str = "gave up: the URL's leases expired too many times";

/// A job's URL row joined with the URL's latest state.
#[derive(sqlx::FromRow)]
pub(crate) struct UrlResultRow {
    id: i64,
    url: String,
    kind: Option<String>,
    state: String,
    status: Option<i32>,
    final_url: Option<String>,
    redirects: Option<String>,
    attempts: Option<i32>,
    response_ms: Option<i64>,
    content_type: Option<String>,
    content_length: Option<i64>,
    checked_at: Option<i64>,
    error: Option<String>,
}

/// One stored check of a URL.
#[derive(sqlx::FromRow)]
struct HistoryRow {
    checked_at: i64,
    kind: String,
    status: Option<i32>,
    final_url: Option<String>,
    redirects: Option<String>,
    attempts: i32,
    response_ms: i64,
    content_type: Option<String>,
    content_length: Option<i64>,
    error: Option<String>,
}

impl UrlResultRow {
    pub(crate) fn into_result(self) -> StoreResult<ResultRow> {
        let state: JobUrlState =
            self.state.parse().map_err(|_| super::StoreError::Corrupt(format!("job_urls state {:?}", self.state)))?;
        // A URL's latest state is shown only once the job has it (fresh, checked, or given up).
        let resolved = state.is_resolved();
        Ok(ResultRow {
            cursor: ResultCursor::Url(self.id),
            url: self.url,
            kind: self.kind.as_deref().map(parse_kind).transpose()?,
            fresh: state == JobUrlState::Fresh,
            state: Some(state),
            status: self.status.filter(|_| resolved).and_then(|s| u16::try_from(s).ok()),
            final_url: self.final_url.filter(|_| resolved),
            redirects: if resolved { decode_redirects(self.redirects.as_deref()) } else { Vec::new() },
            attempts: self.attempts.unwrap_or(0).max(0) as u32,
            response_time_ms: self.response_ms.unwrap_or(0).max(0) as u64,
            content_type: self.content_type,
            content_length: self.content_length.map(|l| l.max(0) as u64),
            checked_at_ms: self.checked_at,
            error: if state == JobUrlState::Failed { Some(GAVE_UP.into()) } else { self.error },
        })
    }
}

/// An invalid entry of a job as a result row.
pub(crate) fn invalid_row(seq: i64, input: String, reason: String) -> ResultRow {
    ResultRow {
        cursor: ResultCursor::Invalid(seq),
        url: input,
        kind: Some(OutcomeKind::Invalid),
        fresh: false,
        state: None,
        status: None,
        final_url: None,
        redirects: Vec::new(),
        attempts: 0,
        response_time_ms: 0,
        content_type: None,
        content_length: None,
        checked_at_ms: None,
        error: Some(reason),
    }
}

/// `SELECT … WHERE ju.job_id = ` (the job id to push next): a job's URL rows as [`UrlResultRow`]s.
/// A URL the job checked shows that check (its time is in the row), not the URL's latest state,
/// which a later job may have changed; any other URL (fresh, or not checked yet) shows its latest
/// state, the newest check of its history. An open URL that a lease holds shows as leased.
pub(crate) fn job_url_rows<'a>() -> super::db::Sql<'a> {
    sql(job_url_select(""))
}

/// The text of [`job_url_rows`], with `join` (a `JOIN … ON …` clause) after `job_urls ju`.
pub(crate) fn job_url_select(join: &str) -> String {
    // Rows finished before the job's check time was kept name the lease that checked them.
    format!(
        "SELECT u.id, u.url, ju.kind, CASE WHEN ju.state = 'pending' AND EXISTS (SELECT 1 FROM lease_urls lu \
         WHERE lu.url_id = ju.url_id AND lu.job_id = ju.job_id) THEN 'leased' ELSE ju.state END AS state, \
         c.status, c.final_url, c.redirects, c.attempts, c.response_ms, \
         c.content_type, c.content_length, c.checked_at, c.error FROM job_urls ju {join} JOIN urls u ON u.id = ju.url_id \
         LEFT JOIN checks c ON c.url_id = ju.url_id AND c.checked_at = COALESCE(ju.checked_at, CASE WHEN ju.state = 'done' \
         THEN (SELECT MAX(c2.checked_at) FROM checks c2 WHERE c2.url_id = ju.url_id AND c2.lease_id = ju.lease_id) END, \
         {}) WHERE ju.job_id = ",
        latest_check_at("ju.url_id")
    )
}

impl SqlStore {
    pub(crate) async fn list_results_impl(&self, page: &ResultPage) -> StoreResult<Vec<ResultRow>> {
        let ResultPage { job_id, ref classes, after, limit } = *page;
        let kinds: Vec<OutcomeKind> = classes.iter().flat_map(|c| c.kinds()).collect();
        let want_urls = classes.is_empty() || kinds.iter().any(|k| *k != OutcomeKind::Invalid);
        let want_invalid = classes.is_empty() || classes.contains(&OutcomeClass::Invalid);
        let mut conn = self.db.acquire().await?;
        let mut out = Vec::new();
        if want_urls && !matches!(after, Some(ResultCursor::Invalid(_))) {
            let after_id = match after {
                Some(ResultCursor::Url(id)) => id,
                _ => 0,
            };
            let mut q = job_url_rows();
            q.push_bind(job_id).push(" AND ju.url_id > ").push_bind(after_id);
            if !classes.is_empty() {
                q.push(" AND ju.kind IN (").push_list(kinds.iter().map(|k| k.as_str())).push(")");
            }
            q.push(" ORDER BY ju.url_id LIMIT ").push_bind(i64::from(limit));
            for row in q.fetch_all::<UrlResultRow>(&mut conn).await? {
                out.push(row.into_result()?);
            }
        }
        let remaining = i64::from(limit) - out.len() as i64;
        if want_invalid && remaining > 0 {
            let after_seq = match after {
                Some(ResultCursor::Invalid(seq)) => seq,
                _ => -1,
            };
            let rows: Vec<(i64, String, String)> = sql("SELECT seq, input, reason FROM job_invalid \
                                                        WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3")
            .bind(job_id)
            .bind(after_seq)
            .bind(remaining)
            .fetch_all(&mut conn)
            .await?;
            out.extend(rows.into_iter().map(|(seq, input, reason)| invalid_row(seq, input, reason)));
        }
        Ok(out)
    }

    pub(crate) async fn url_history_impl(&self, url: &str, limit: u32) -> StoreResult<Option<Vec<ResultRow>>> {
        let mut conn = self.db.acquire().await?;
        let Some(id) = sql("SELECT id FROM urls WHERE url = $1").bind(url).scalar::<i64>(&mut conn).await? else {
            return Ok(None);
        };
        let rows: Vec<HistoryRow> =
            sql("SELECT checked_at, kind, status, final_url, redirects, attempts, response_ms, \
                                         content_type, content_length, error FROM checks WHERE url_id = $1 \
                                         ORDER BY checked_at DESC LIMIT $2")
            .bind(id)
            .bind(i64::from(limit))
            .fetch_all(&mut conn)
            .await?;
        let checks = rows
            .into_iter()
            .map(|r| {
                Ok(ResultRow {
                    cursor: ResultCursor::Url(id),
                    url: url.to_string(),
                    kind: Some(parse_kind(&r.kind)?),
                    fresh: false,
                    state: None,
                    status: r.status.and_then(|s| u16::try_from(s).ok()),
                    final_url: r.final_url,
                    redirects: decode_redirects(r.redirects.as_deref()),
                    attempts: r.attempts.max(0) as u32,
                    response_time_ms: r.response_ms.max(0) as u64,
                    content_type: r.content_type,
                    content_length: r.content_length.map(|l| l.max(0) as u64),
                    checked_at_ms: Some(r.checked_at),
                    error: r.error,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(Some(checks))
    }

    pub(crate) async fn frontier_stats_impl(&self) -> StoreResult<FrontierStats> {
        let mut conn = self.db.acquire().await?;
        let (active_leases,): (i64,) = sql("SELECT COUNT(*) FROM leases WHERE active").fetch_one(&mut conn).await?;
        let pending: Option<i64> = sql("SELECT CAST(SUM(pending) AS BIGINT) FROM hosts WHERE pending > 0")
            .scalar::<Option<i64>>(&mut conn)
            .await?
            .flatten();
        Ok(FrontierStats { active_leases, pending: pending.unwrap_or(0) })
    }
}
