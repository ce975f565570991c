//! Proto ↔ domain conversions: the only place that knows both shapes.

use crate::job::{JobCounts, JobOptions, JobState, PolicyOverride, Priority};
use crate::outcome::{CheckOutcome, OutcomeClass, OutcomeKind, RedirectHop, ReportedResult};
use crate::policy::HostPolicy;
use crate::proto::v1 as pb;

/// A wire message that does not make sense as a domain value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct ConvertError {
    /// The offending field.
    pub field: &'static str,
    /// Why.
    pub reason: String,
}

impl From<OutcomeClass> for pb::OutcomeClass {
    fn from(c: OutcomeClass) -> Self {
        match c {
            OutcomeClass::Ok => Self::Ok,
            OutcomeClass::Redirected => Self::Redirected,
            OutcomeClass::Broken => Self::Broken,
            OutcomeClass::Error => Self::Error,
            OutcomeClass::Invalid => Self::Invalid,
        }
    }
}

/// The domain class of a wire value; `None` for unspecified (not resolved).
pub fn class_from_pb(c: i32) -> Option<OutcomeClass> {
    pb::OutcomeClass::try_from(c).ok().and_then(|c| OutcomeClass::try_from(c).ok())
}

impl TryFrom<pb::OutcomeClass> for OutcomeClass {
    type Error = ConvertError;
    fn try_from(c: pb::OutcomeClass) -> Result<Self, ConvertError> {
        Ok(match c {
            pb::OutcomeClass::Ok => Self::Ok,
            pb::OutcomeClass::Redirected => Self::Redirected,
            pb::OutcomeClass::Broken => Self::Broken,
            pb::OutcomeClass::Error => Self::Error,
            pb::OutcomeClass::Invalid => Self::Invalid,
            pb::OutcomeClass::Unspecified => {
                return Err(ConvertError { field: "class", reason: "unspecified".into() });
            }
        })
    }
}

impl From<HostPolicy> for pb::HostPolicy {
    fn from(p: HostPolicy) -> Self {
        Self { concurrency: Some(p.concurrency), interval_ms: Some(p.interval.as_millis() as u64) }
    }
}

impl From<&pb::HostPolicy> for PolicyOverride {
    fn from(p: &pb::HostPolicy) -> Self {
        Self { concurrency: p.concurrency.filter(|c| *c > 0), interval_ms: p.interval_ms }
    }
}

impl From<&PolicyOverride> for pb::HostPolicy {
    fn from(p: &PolicyOverride) -> Self {
        Self { concurrency: p.concurrency, interval_ms: p.interval_ms }
    }
}

/// Parses `HOST=CONCURRENCY/INTERVAL` (either side of the slash may be empty), e.g.
/// `example.com=16/0ms`.
pub fn parse_host_policy(s: &str) -> Result<(String, PolicyOverride), String> {
    let (host, rest) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected HOST=CONCURRENCY/INTERVAL"))?;
    let (c, i) = rest.split_once('/').unwrap_or((rest, ""));
    let concurrency = match c {
        "" => None,
        c => Some(c.parse::<u32>().map_err(|_| format!("{s:?}: bad concurrency {c:?}"))?),
    };
    let interval_ms = match i {
        "" => None,
        i => Some(humantime::parse_duration(i).map_err(|e| format!("{s:?}: bad interval: {e}"))?.as_millis() as u64),
    };
    Ok((host.to_ascii_lowercase(), PolicyOverride { concurrency, interval_ms }))
}

impl From<Priority> for pb::Priority {
    fn from(p: Priority) -> Self {
        match p {
            Priority::High => Self::High,
            Priority::Medium => Self::Medium,
            Priority::Low => Self::Low,
        }
    }
}

/// The priority a wire value asks for: `None` for unspecified (derive it from the size).
pub fn priority_from_pb(p: i32) -> Result<Option<Priority>, ConvertError> {
    match pb::Priority::try_from(p) {
        Ok(pb::Priority::High) => Ok(Some(Priority::High)),
        Ok(pb::Priority::Medium) => Ok(Some(Priority::Medium)),
        Ok(pb::Priority::Low) => Ok(Some(Priority::Low)),
        Ok(pb::Priority::Unspecified) => Ok(None),
        Err(_) => Err(ConvertError { field: "priority", reason: format!("unknown priority {p}") }),
    }
}

impl From<JobState> for pb::JobState {
    fn from(s: JobState) -> Self {
        match s {
            JobState::Receiving => Self::Receiving,
            JobState::Scheduled => Self::Scheduled,
            JobState::Running => Self::Running,
            JobState::Completed => Self::Completed,
            JobState::Cancelled => Self::Cancelled,
        }
    }
}

impl TryFrom<i32> for JobState {
    type Error = ConvertError;
    fn try_from(s: i32) -> Result<Self, ConvertError> {
        Ok(match pb::JobState::try_from(s) {
            Ok(pb::JobState::Receiving) => Self::Receiving,
            Ok(pb::JobState::Scheduled) => Self::Scheduled,
            Ok(pb::JobState::Running) => Self::Running,
            Ok(pb::JobState::Completed) => Self::Completed,
            Ok(pb::JobState::Cancelled) => Self::Cancelled,
            _ => return Err(ConvertError { field: "state", reason: format!("unknown job state {s}") }),
        })
    }
}

impl From<&JobCounts> for pb::JobCounts {
    fn from(c: &JobCounts) -> Self {
        Self {
            received: c.received,
            total: c.total,
            duplicates: c.duplicates,
            pending: c.pending(),
            leased: c.leased,
            checked: c.checked,
            fresh: c.fresh,
            invalid: c.invalid,
            failed: c.failed,
            ok: c.ok,
            redirected: c.redirected,
            broken: c.broken,
            error: c.error,
            cancelled: c.cancelled,
        }
    }
}

impl From<&pb::JobCounts> for JobCounts {
    fn from(c: &pb::JobCounts) -> Self {
        Self {
            received: c.received,
            total: c.total,
            duplicates: c.duplicates,
            leased: c.leased,
            checked: c.checked,
            fresh: c.fresh,
            invalid: c.invalid,
            failed: c.failed,
            cancelled: c.cancelled,
            ok: c.ok,
            redirected: c.redirected,
            broken: c.broken,
            error: c.error,
        }
    }
}

impl From<OutcomeKind> for pb::OutcomeKind {
    fn from(k: OutcomeKind) -> Self {
        match k {
            OutcomeKind::Ok => Self::Ok,
            OutcomeKind::Redirected => Self::Redirected,
            OutcomeKind::Broken => Self::Broken,
            OutcomeKind::Timeout => Self::Timeout,
            OutcomeKind::Dns => Self::Dns,
            OutcomeKind::Connect => Self::Connect,
            OutcomeKind::Tls => Self::Tls,
            OutcomeKind::TooManyRedirects => Self::TooManyRedirects,
            OutcomeKind::RedirectLoop => Self::RedirectLoop,
            OutcomeKind::Blocked => Self::Blocked,
            OutcomeKind::Invalid => Self::Invalid,
            OutcomeKind::Failed => Self::Failed,
            OutcomeKind::Other => Self::Other,
        }
    }
}

/// The domain kind of a wire value; `None` for unspecified (not resolved).
pub fn kind_from_pb(k: i32) -> Result<Option<OutcomeKind>, ConvertError> {
    let unknown = || ConvertError { field: "kind", reason: format!("unknown outcome kind {k}") };
    Ok(Some(match pb::OutcomeKind::try_from(k).map_err(|_| unknown())? {
        pb::OutcomeKind::Unspecified => return Ok(None),
        pb::OutcomeKind::Ok => OutcomeKind::Ok,
        pb::OutcomeKind::Redirected => OutcomeKind::Redirected,
        pb::OutcomeKind::Broken => OutcomeKind::Broken,
        pb::OutcomeKind::Timeout => OutcomeKind::Timeout,
        pb::OutcomeKind::Dns => OutcomeKind::Dns,
        pb::OutcomeKind::Connect => OutcomeKind::Connect,
        pb::OutcomeKind::Tls => OutcomeKind::Tls,
        pb::OutcomeKind::TooManyRedirects => OutcomeKind::TooManyRedirects,
        pb::OutcomeKind::RedirectLoop => OutcomeKind::RedirectLoop,
        pb::OutcomeKind::Blocked => OutcomeKind::Blocked,
        pb::OutcomeKind::Invalid => OutcomeKind::Invalid,
        pb::OutcomeKind::Failed => OutcomeKind::Failed,
        pb::OutcomeKind::Other => OutcomeKind::Other,
    }))
}

/// Longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;

impl TryFrom<&pb::JobOptions> for JobOptions {
    type Error = ConvertError;
    fn try_from(o: &pb::JobOptions) -> Result<Self, ConvertError> {
        for host in o.host_policies.keys() {
            if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/') {
                return Err(ConvertError { field: "host_policies", reason: format!("key {host:?} is not a host") });
            }
        }
        if o.idempotency_key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
            return Err(ConvertError {
                field: "idempotency_key",
                reason: format!("longer than {MAX_IDEMPOTENCY_KEY_BYTES} bytes"),
            });
        }
        if o.idempotency_key.chars().any(char::is_control) {
            return Err(ConvertError { field: "idempotency_key", reason: "holds a control character".into() });
        }
        if o.not_before_ms < 0 {
            return Err(ConvertError { field: "not_before_ms", reason: "negative".into() });
        }
        let positive = |v: u64| (v > 0).then_some(v);
        Ok(Self {
            name: o.name.clone(),
            priority: priority_from_pb(o.priority)?,
            force: o.force,
            politeness: o.politeness.as_ref().map(PolicyOverride::from).unwrap_or_default(),
            host_policies: o.host_policies.iter().map(|(h, p)| (h.to_ascii_lowercase(), p.into())).collect(),
            labels: o.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            idempotency_key: (!o.idempotency_key.is_empty()).then(|| o.idempotency_key.clone()),
            not_before_ms: (o.not_before_ms > 0).then_some(o.not_before_ms),
            recheck_after_ms: positive(o.recheck_after_ms),
            recheck_broken_after_ms: positive(o.recheck_broken_after_ms),
            strip_tracking_params: o.strip_tracking_params,
            delay_by_size: o.delay_by_size,
        })
    }
}

impl From<&JobOptions> for pb::JobOptions {
    fn from(o: &JobOptions) -> Self {
        Self {
            name: o.name.clone(),
            priority: o.priority.map_or(pb::Priority::Unspecified, Into::into) as i32,
            force: o.force,
            politeness: (o.politeness != PolicyOverride::default()).then(|| (&o.politeness).into()),
            host_policies: o.host_policies.iter().map(|(h, p)| (h.clone(), p.into())).collect(),
            labels: o.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            idempotency_key: o.idempotency_key.clone().unwrap_or_default(),
            not_before_ms: o.not_before_ms.unwrap_or(0),
            recheck_after_ms: o.recheck_after_ms.unwrap_or(0),
            recheck_broken_after_ms: o.recheck_broken_after_ms.unwrap_or(0),
            strip_tracking_params: o.strip_tracking_params,
            delay_by_size: o.delay_by_size,
        }
    }
}

impl From<&RedirectHop> for pb::RedirectHop {
    fn from(h: &RedirectHop) -> Self {
        Self { url: h.url.clone(), status: u32::from(h.status) }
    }
}

impl From<&pb::RedirectHop> for RedirectHop {
    fn from(h: &pb::RedirectHop) -> Self {
        Self { url: h.url.clone(), status: u16::try_from(h.status).unwrap_or(0) }
    }
}

impl From<&ReportedResult> for pb::CheckResult {
    fn from(r: &ReportedResult) -> Self {
        check_result(r.lease_id, r.epoch, r.url_id, &r.outcome)
    }
}

/// The wire form of one leased URL's outcome, as a worker reports it.
pub fn check_result(lease_id: i64, epoch: i64, url_id: i64, o: &CheckOutcome) -> pb::CheckResult {
    pb::CheckResult {
        lease_id,
        epoch,
        url_id,
        kind: pb::OutcomeKind::from(o.kind) as i32,
        status: o.status.map(u32::from).unwrap_or(0),
        final_url: o.final_url.clone().unwrap_or_default(),
        redirects: o.redirects.iter().map(Into::into).collect(),
        attempts: o.attempts,
        response_time_ms: o.response_time_ms,
        content_type: o.content_type.clone().unwrap_or_default(),
        content_length: o.content_length,
        checked_at_ms: o.checked_at_ms,
        error: o.error.clone().unwrap_or_default(),
        host_paused_until_ms: o.host_paused_until_ms.unwrap_or(0),
    }
}

/// Longest error text kept from a worker's result; longer text is cut at a character boundary.
pub const MAX_RESULT_ERROR_BYTES: usize = 2_048;
/// Longest content type kept from a worker's result.
pub const MAX_RESULT_CONTENT_TYPE_BYTES: usize = 256;
/// Most redirect hops a result may list (a worker follows at most 10 by default).
pub const MAX_RESULT_REDIRECTS: usize = 32;

/// A result as `reporter` sent it, bounded: text and URLs are cut to their limits and the hops to
/// [`MAX_RESULT_REDIRECTS`] (a site that redirects through a very long URL still gets its verdict).
pub fn reported_result(r: pb::CheckResult, reporter: std::sync::Arc<str>) -> Result<ReportedResult, ConvertError> {
    let kind = kind_from_pb(r.kind)?.ok_or_else(|| ConvertError { field: "kind", reason: "unspecified".into() })?;
    let status = match r.status {
        0 => None,
        s => Some(
            u16::try_from(s)
                .map_err(|_| ConvertError { field: "status", reason: format!("{s} is not an HTTP status") })?,
        ),
    };
    if r.checked_at_ms <= 0 {
        return Err(ConvertError { field: "checked_at_ms", reason: "must be set".into() });
    }
    let url = |u: String| truncate(text(u), crate::url::MAX_URL_LEN);
    let redirects = r
        .redirects
        .into_iter()
        .take(MAX_RESULT_REDIRECTS)
        .map(|h| RedirectHop::from(&pb::RedirectHop { url: url(h.url), status: h.status }))
        .collect();
    Ok(ReportedResult {
        reporter,
        lease_id: r.lease_id,
        epoch: r.epoch,
        url_id: r.url_id,
        outcome: CheckOutcome {
            kind,
            status,
            final_url: non_empty(url(r.final_url)),
            redirects,
            attempts: r.attempts.max(1),
            response_time_ms: r.response_time_ms,
            content_type: non_empty(truncate(text(r.content_type), MAX_RESULT_CONTENT_TYPE_BYTES)),
            content_length: r.content_length,
            checked_at_ms: r.checked_at_ms,
            error: non_empty(truncate(text(r.error), MAX_RESULT_ERROR_BYTES)),
            host_paused_until_ms: (r.host_paused_until_ms > 0).then_some(r.host_paused_until_ms),
        },
    })
}

/// Free text as a database column holds it: NUL, which PostgreSQL's text refuses, is replaced.
fn text(s: String) -> String {
    if s.contains('\0') { s.replace('\0', "\u{fffd}") } else { s }
}

/// `s` cut to at most `max` bytes at a character boundary, with an ellipsis when cut.
pub fn truncate(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push('…');
    s
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// Display name of a result's class; while it has none, where the URL stands (`pending`,
/// `leased`, `cancelled`).
pub fn class_name(r: &pb::UrlResult) -> &'static str {
    class_from_pb(r.outcome_class).map_or_else(|| state_name_of(r), |c| c.as_str())
}

/// Display name of a result's kind; while it has none, where the URL stands.
pub fn kind_name(r: &pb::UrlResult) -> &'static str {
    kind_from_pb(r.kind).ok().flatten().map_or_else(|| state_name_of(r), |k| k.as_str())
}

/// Where a URL stands in its job.
pub fn state_name_of(r: &pb::UrlResult) -> &'static str {
    match pb::UrlState::try_from(r.state).unwrap_or(pb::UrlState::Unspecified) {
        pb::UrlState::Unspecified | pb::UrlState::Pending => "pending",
        pb::UrlState::Leased => "leased",
        pb::UrlState::Checked => "checked",
        pb::UrlState::Fresh => "fresh",
        pb::UrlState::Invalid => "invalid",
        pb::UrlState::Failed => "failed",
        pb::UrlState::Cancelled => "cancelled",
    }
}

/// One result as JSON.
pub fn result_json(r: &pb::UrlResult) -> serde_json::Value {
    serde_json::json!({
        "url": r.url,
        "class": class_name(r),
        "kind": kind_name(r),
        "state": state_name_of(r),
        "status": (r.status != 0).then_some(r.status),
        "final_url": (!r.final_url.is_empty()).then_some(&r.final_url),
        "redirects": r.redirects.iter().map(|h| serde_json::json!({"url": h.url, "status": h.status})).collect::<Vec<_>>(),
        "attempts": r.attempts,
        "response_time_ms": r.response_time_ms,
        "content_type": (!r.content_type.is_empty()).then_some(&r.content_type),
        "content_length": r.content_length,
        "checked_at": (r.checked_at_ms > 0).then(|| crate::time::rfc3339(r.checked_at_ms)),
        "error": (!r.error.is_empty()).then_some(&r.error),
        "fresh": r.fresh,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_results_round_trip() {
        let reporter: std::sync::Arc<str> = "w".into();
        let r = ReportedResult {
            reporter: reporter.clone(),
            lease_id: 7,
            epoch: 3,
            url_id: 42,
            outcome: CheckOutcome {
                kind: OutcomeKind::Redirected,
                status: Some(200),
                final_url: Some("http://a.example/b".into()),
                redirects: vec![RedirectHop { url: "http://a.example/".into(), status: 301 }],
                attempts: 2,
                response_time_ms: 12,
                content_type: Some("text/html".into()),
                content_length: Some(10),
                checked_at_ms: 1_700_000_000_000,
                error: None,
                host_paused_until_ms: None,
            },
        };
        let wire = pb::CheckResult::from(&r);
        assert_eq!(reported_result(wire, reporter).unwrap(), r);
    }

    #[test]
    fn result_fields_are_bounded() {
        let wire = |f: &dyn Fn(&mut pb::CheckResult)| {
            let mut r = pb::CheckResult { kind: pb::OutcomeKind::Ok as i32, checked_at_ms: 1, ..Default::default() };
            f(&mut r);
            reported_result(r, "w".into())
        };
        let r = wire(&|r| r.error = "é".repeat(8 * 1024 * 1024)).unwrap();
        let e = r.outcome.error.unwrap();
        assert!(e.len() <= MAX_RESULT_ERROR_BYTES && e.ends_with('…'), "{}", e.len());
        let r = wire(&|r| r.content_type = "x".repeat(10_000)).unwrap();
        assert!(r.outcome.content_type.unwrap().len() <= MAX_RESULT_CONTENT_TYPE_BYTES);
        let long = wire(&|r| r.final_url = "h".repeat(9_000)).unwrap();
        assert!(
            long.outcome.final_url.unwrap().len() <= crate::url::MAX_URL_LEN,
            "a long URL is cut, the verdict kept"
        );
        let hop = pb::RedirectHop { url: "http://a.example/".into(), status: 301 };
        assert_eq!(wire(&|r| r.redirects = vec![hop.clone(); 40]).unwrap().outcome.redirects.len(), 32);
        assert_eq!(wire(&|r| r.redirects = vec![hop.clone(); 10]).unwrap().outcome.redirects.len(), 10);
        assert_eq!(truncate("abc".into(), 3), "abc");
        assert_eq!(wire(&|r| r.error = "a\0b".into()).unwrap().outcome.error.unwrap(), "a\u{fffd}b");
    }

    #[test]
    fn host_policies_parse() {
        let (h, p) = parse_host_policy("Example.com=16/0ms").unwrap();
        let _: PolicyOverride = p;
        assert_eq!((h.as_str(), p.concurrency, p.interval_ms), ("example.com", Some(16), Some(0)));
        let (_, p) = parse_host_policy("a.example=/250ms").unwrap();
        assert_eq!((p.concurrency, p.interval_ms), (None, Some(250)));
        let (_, p) = parse_host_policy("a.example=4").unwrap();
        assert_eq!((p.concurrency, p.interval_ms), (Some(4), None));
        assert!(parse_host_policy("a.example").is_err());
        assert!(parse_host_policy("a.example=x/1s").is_err());
    }

    #[test]
    fn unknown_kinds_are_rejected() {
        for kind in [0, 99] {
            let wire = pb::CheckResult { kind, checked_at_ms: 1, ..Default::default() };
            assert_eq!(reported_result(wire, "w".into()).unwrap_err().field, "kind");
        }
    }

    #[test]
    fn every_kind_crosses_the_wire() {
        for k in OutcomeKind::ALL {
            assert_eq!(kind_from_pb(pb::OutcomeKind::from(*k) as i32).unwrap(), Some(*k));
        }
    }

    #[test]
    fn job_options_cross_the_wire() {
        let mut wire = pb::JobOptions {
            name: "n".into(),
            priority: pb::Priority::Medium as i32,
            force: true,
            politeness: Some(pb::HostPolicy { concurrency: Some(4), interval_ms: None }),
            idempotency_key: "k".into(),
            recheck_after_ms: 5,
            ..Default::default()
        };
        wire.host_policies.insert("a.example".into(), pb::HostPolicy { concurrency: None, interval_ms: Some(0) });
        wire.labels.insert("team".into(), "seo".into());
        let domain = JobOptions::try_from(&wire).unwrap();
        assert_eq!(domain.priority, Some(Priority::Medium));
        assert_eq!(pb::JobOptions::from(&domain), wire);
        let bad = pb::JobOptions { priority: 9, ..Default::default() };
        assert_eq!(JobOptions::try_from(&bad).unwrap_err().field, "priority");
        let bad = pb::JobOptions { idempotency_key: "x".repeat(300), ..Default::default() };
        assert_eq!(JobOptions::try_from(&bad).unwrap_err().field, "idempotency_key");
        let bad = pb::JobOptions { idempotency_key: "\u{1f}seo/k".into(), ..Default::default() };
        assert_eq!(JobOptions::try_from(&bad).unwrap_err().field, "idempotency_key");
    }
}
