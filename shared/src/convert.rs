//! Proto ↔ domain conversions: the only place that knows both shapes.

use std::time::Duration;

use crate::outcome::{CheckOutcome, OutcomeClass, OutcomeKind, RedirectHop};
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

/// Parses `HOST=CONCURRENCY/INTERVAL` (either side of the slash may be empty), e.g.
/// `example.com=16/0ms`.
pub fn parse_host_policy(s: &str) -> Result<(String, pb::HostPolicy), String> {
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
    Ok((host.to_ascii_lowercase(), pb::HostPolicy { concurrency, interval_ms }))
}

/// Overlays a wire policy (whose unset fields inherit) on a base policy.
pub fn overlay_policy(base: HostPolicy, p: Option<&pb::HostPolicy>) -> HostPolicy {
    match p {
        None => base,
        Some(p) => base.with(p.concurrency, p.interval_ms.map(Duration::from_millis)),
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

/// A check result as reported by a worker: which leased URL, and its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedResult {
    /// Lease the URL came from.
    pub lease_id: i64,
    /// Epoch of that lease.
    pub epoch: i64,
    /// URL id.
    pub url_id: i64,
    /// The outcome.
    pub outcome: CheckOutcome,
}

impl From<&ReportedResult> for pb::CheckResult {
    fn from(r: &ReportedResult) -> Self {
        let o = &r.outcome;
        Self {
            lease_id: r.lease_id,
            epoch: r.epoch,
            url_id: r.url_id,
            kind: o.kind.as_str().to_string(),
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
}

impl TryFrom<pb::CheckResult> for ReportedResult {
    type Error = ConvertError;
    fn try_from(r: pb::CheckResult) -> Result<Self, ConvertError> {
        let kind: OutcomeKind = r.kind.parse().map_err(|reason| ConvertError { field: "kind", reason })?;
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
        Ok(Self {
            lease_id: r.lease_id,
            epoch: r.epoch,
            url_id: r.url_id,
            outcome: CheckOutcome {
                kind,
                status,
                final_url: non_empty(r.final_url),
                redirects: r.redirects.iter().map(Into::into).collect(),
                attempts: r.attempts.max(1),
                response_time_ms: r.response_time_ms,
                content_type: non_empty(r.content_type),
                content_length: r.content_length,
                checked_at_ms: r.checked_at_ms,
                error: non_empty(r.error),
                host_paused_until_ms: (r.host_paused_until_ms > 0).then_some(r.host_paused_until_ms),
            },
        })
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_results_round_trip() {
        let r = ReportedResult {
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
        assert_eq!(ReportedResult::try_from(wire).unwrap(), r);
    }

    #[test]
    fn host_policies_parse() {
        let (h, p) = parse_host_policy("Example.com=16/0ms").unwrap();
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
        let wire = pb::CheckResult { kind: "maybe".into(), checked_at_ms: 1, ..Default::default() };
        assert_eq!(ReportedResult::try_from(wire).unwrap_err().field, "kind");
    }
}
