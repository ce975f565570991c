//! How domain values are laid out in columns: the row types statements decode into, and the one
//! mapping of an outcome onto the `checks` columns, whose newest row of a URL is its latest state.

use urlfleet_shared::job::{JobCounts, JobOptions, JobState, Priority};
use urlfleet_shared::{CheckOutcome, OutcomeKind, RedirectHop};

use super::{JobRecord, StoreError, StoreResult};

/// Columns of `jobs` that [`JobRow`] reads.
pub(crate) const JOB_COLUMNS: &str = "id, name, state, priority, options, not_before, received, total, duplicates, \
     leased, checked, fresh, invalid, failed, cancelled, n_ok, n_redirected, n_broken, n_error, created_at, \
     sealed_at, finished_at, owner";

/// `column` of a URL's latest state — its newest check — for the URL id `url_id` (an SQL
/// expression): an index probe of the last `checks` primary key entry of the URL.
pub(crate) fn latest_check(column: &str, url_id: &str) -> String {
    format!("(SELECT lc.{column} FROM checks lc WHERE lc.url_id = {url_id} ORDER BY lc.checked_at DESC LIMIT 1)")
}

/// The time of a URL's latest state ([`latest_check`]).
pub(crate) fn latest_check_at(url_id: &str) -> String {
    latest_check("checked_at", url_id)
}

/// A `jobs` row as stored.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct JobRow {
    id: i64,
    name: String,
    state: String,
    priority: i16,
    options: String,
    not_before: i64,
    received: i64,
    total: i64,
    duplicates: i64,
    leased: i64,
    checked: i64,
    fresh: i64,
    invalid: i64,
    failed: i64,
    cancelled: i64,
    n_ok: i64,
    n_redirected: i64,
    n_broken: i64,
    n_error: i64,
    created_at: i64,
    sealed_at: Option<i64>,
    finished_at: Option<i64>,
    owner: String,
}

impl TryFrom<JobRow> for JobRecord {
    type Error = StoreError;
    fn try_from(r: JobRow) -> StoreResult<Self> {
        let corrupt = |what: String| StoreError::Corrupt(format!("job {}: {what}", r.id));
        let state = r.state.parse::<JobState>().map_err(|_| corrupt(format!("state {:?}", r.state)))?;
        let priority = Priority::from_rank(r.priority).ok_or_else(|| corrupt(format!("priority {}", r.priority)))?;
        let options: JobOptions =
            serde_json::from_str(&r.options).map_err(|e| corrupt(format!("options {:?}: {e}", r.options)))?;
        let n = |v: i64| v.max(0) as u64;
        Ok(JobRecord {
            id: r.id,
            name: r.name,
            state,
            priority,
            options,
            not_before_ms: r.not_before,
            counts: JobCounts {
                received: n(r.received),
                total: n(r.total),
                duplicates: n(r.duplicates),
                leased: n(r.leased),
                checked: n(r.checked),
                fresh: n(r.fresh),
                invalid: n(r.invalid),
                failed: n(r.failed),
                cancelled: n(r.cancelled),
                ok: n(r.n_ok),
                redirected: n(r.n_redirected),
                broken: n(r.n_broken),
                error: n(r.n_error),
            },
            created_at_ms: r.created_at,
            sealed_at_ms: r.sealed_at,
            finished_at_ms: r.finished_at,
            owner: r.owner,
        })
    }
}

/// Options as the `jobs.options` column holds them.
pub(crate) fn options_json(o: &JobOptions) -> String {
    serde_json::to_string(o).expect("job options serialize")
}

/// An outcome kind as stored; an unknown name is corrupt data, not a default.
pub(crate) fn parse_kind(kind: &str) -> StoreResult<OutcomeKind> {
    kind.parse().map_err(|e: String| StoreError::Corrupt(e))
}

/// An outcome as the `checks` columns hold it: the one place that maps the domain value to
/// column types (unsigned values clamped into `BIGINT`, hops encoded).
pub(crate) struct OutcomeRow<'a> {
    pub kind: &'static str,
    pub status: Option<i32>,
    pub final_url: Option<&'a str>,
    pub redirects: Option<String>,
    pub attempts: i32,
    pub response_ms: i64,
    pub content_type: Option<&'a str>,
    pub content_length: Option<i64>,
    pub error: Option<&'a str>,
    pub checked_at: i64,
}

impl<'a> OutcomeRow<'a> {
    pub(crate) fn of(o: &'a CheckOutcome) -> Self {
        let clamp = |v: u64| v.min(i64::MAX as u64) as i64;
        Self {
            kind: o.kind.as_str(),
            status: o.status.map(i32::from),
            final_url: o.final_url.as_deref(),
            redirects: encode_redirects(&o.redirects),
            attempts: i32::try_from(o.attempts).unwrap_or(i32::MAX),
            response_ms: clamp(o.response_time_ms),
            content_type: o.content_type.as_deref(),
            content_length: o.content_length.map(clamp),
            error: o.error.as_deref(),
            checked_at: o.checked_at_ms,
        }
    }
}

/// Redirect hops as stored: one `status url` pair per line.
pub(crate) fn encode_redirects(hops: &[RedirectHop]) -> Option<String> {
    if hops.is_empty() {
        return None;
    }
    Some(hops.iter().map(|h| format!("{} {}", h.status, h.url)).collect::<Vec<_>>().join("\n"))
}

/// Redirect hops from their stored form.
pub(crate) fn decode_redirects(s: Option<&str>) -> Vec<RedirectHop> {
    s.unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (st, url) = l.split_once(' ')?;
            Some(RedirectHop { url: url.to_string(), status: st.parse().ok()? })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_round_trip() {
        let hops = vec![
            RedirectHop { url: "http://a.example/x y".into(), status: 301 },
            RedirectHop { url: "http://b.example/".into(), status: 308 },
        ];
        assert_eq!(decode_redirects(encode_redirects(&hops).as_deref()), hops);
        assert!(encode_redirects(&[]).is_none());
    }

    #[test]
    fn corrupt_options_are_an_error_not_defaults() {
        let row = JobRow {
            id: 1,
            name: "n".into(),
            state: "running".into(),
            priority: 2,
            options: "\u{8}\u{2}garbage".into(),
            not_before: 0,
            received: 0,
            total: 0,
            duplicates: 0,
            leased: 0,
            checked: 0,
            fresh: 0,
            invalid: 0,
            failed: 0,
            cancelled: 0,
            n_ok: 0,
            n_redirected: 0,
            n_broken: 0,
            n_error: 0,
            created_at: 0,
            sealed_at: None,
            finished_at: None,
            owner: String::new(),
        };
        assert!(matches!(JobRecord::try_from(row), Err(StoreError::Corrupt(_))));
    }
}
