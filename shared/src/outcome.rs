//! The outcome of a URL check, as data. A failed check is not an `Err`: timeouts, DNS failures and
//! blocked targets are answers a user wants to see, counted and stored like any status code.

use strum::{Display, EnumString, IntoStaticStr, VariantArray};

/// What happened when a URL was checked. Stored and shown by its lowercase name (`too_many_redirects`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Display, EnumString, IntoStaticStr, VariantArray)]
#[strum(serialize_all = "snake_case", parse_err_fn = unknown_kind, parse_err_ty = String)]
#[non_exhaustive]
pub enum OutcomeKind {
    /// A 2xx answer without redirects.
    Ok,
    /// A 2xx answer after one or more redirects.
    Redirected,
    /// A final 4xx/5xx (or other non-success) status.
    Broken,
    /// No answer within the deadline.
    Timeout,
    /// The host name did not resolve.
    Dns,
    /// The connection was refused, reset or otherwise failed.
    Connect,
    /// The TLS handshake failed.
    Tls,
    /// More redirects than the limit.
    TooManyRedirects,
    /// A redirect led back to a URL already visited.
    RedirectLoop,
    /// The target address is refused by the SSRF guard; no connection was made.
    Blocked,
    /// The input is not a checkable URL.
    Invalid,
    /// The URL was given up after its leases expired too often.
    Failed,
    /// Any other transport error (protocol violation, body error).
    Other,
}

fn unknown_kind(s: &str) -> String {
    format!("unknown outcome kind {s:?}")
}

/// Coarse class of an outcome, used for counts, filters and exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Display, EnumString, IntoStaticStr, VariantArray)]
#[strum(serialize_all = "lowercase", parse_err_fn = unknown_class, parse_err_ty = String)]
pub enum OutcomeClass {
    /// 2xx without redirects.
    Ok,
    /// 2xx after redirects.
    Redirected,
    /// 4xx / 5xx.
    Broken,
    /// No usable HTTP answer.
    #[strum(to_string = "error", serialize = "errors")]
    Error,
    /// Not a checkable URL.
    Invalid,
}

fn unknown_class(s: &str) -> String {
    format!("unknown outcome class {s:?} (ok, redirected, broken, error, invalid)")
}

impl OutcomeKind {
    /// Every kind, in a stable order.
    pub const ALL: &[OutcomeKind] = <Self as VariantArray>::VARIANTS;

    /// Stable lowercase name, as stored.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// The class this kind counts in.
    pub fn class(self) -> OutcomeClass {
        match self {
            Self::Ok => OutcomeClass::Ok,
            Self::Redirected => OutcomeClass::Redirected,
            Self::Broken => OutcomeClass::Broken,
            Self::Invalid => OutcomeClass::Invalid,
            _ => OutcomeClass::Error,
        }
    }

    /// The kind for a final HTTP status reached after `redirects` hops.
    pub fn from_status(status: u16, redirects: usize) -> Self {
        match status {
            200..=299 if redirects == 0 => Self::Ok,
            200..=299 => Self::Redirected,
            _ => Self::Broken,
        }
    }
}

impl OutcomeClass {
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Every class.
    pub const ALL: &[OutcomeClass] = <Self as VariantArray>::VARIANTS;

    /// Whether a link-checking gate should fail on this class.
    pub fn is_failure(self) -> bool {
        !matches!(self, Self::Ok | Self::Redirected)
    }

    /// The kinds that count in this class.
    pub fn kinds(self) -> impl Iterator<Item = OutcomeKind> {
        OutcomeKind::ALL.iter().copied().filter(move |k| k.class() == self)
    }
}

/// One hop of a redirect chain: the URL requested and the 3xx status it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectHop {
    /// URL requested at this hop.
    pub url: String,
    /// Its 3xx status.
    pub status: u16,
}

/// The full outcome of checking one URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOutcome {
    /// What happened.
    pub kind: OutcomeKind,
    /// Final HTTP status, when there was one.
    pub status: Option<u16>,
    /// URL of the final response (after redirects).
    pub final_url: Option<String>,
    /// Every redirect hop, in order.
    pub redirects: Vec<RedirectHop>,
    /// Attempts made (1 when the first succeeded).
    pub attempts: u32,
    /// Response time of the final attempt (time to first byte), in milliseconds.
    pub response_time_ms: u64,
    /// Content-Type of the final response.
    pub content_type: Option<String>,
    /// Content-Length of the final response.
    pub content_length: Option<u64>,
    /// When the check finished, ms since epoch.
    pub checked_at_ms: i64,
    /// Human-readable reason for non-HTTP outcomes.
    pub error: Option<String>,
    /// The host asked to be left alone until this time (ms since epoch), e.g. by `Retry-After`.
    pub host_paused_until_ms: Option<i64>,
}

impl CheckOutcome {
    /// An outcome without an HTTP answer.
    pub fn error(kind: OutcomeKind, error: impl Into<String>, attempts: u32) -> Self {
        Self {
            kind,
            status: None,
            final_url: None,
            redirects: Vec::new(),
            attempts,
            response_time_ms: 0,
            content_type: None,
            content_length: None,
            checked_at_ms: crate::time::now_ms(),
            error: Some(error.into()),
            host_paused_until_ms: None,
        }
    }
}

/// A check result as a worker reports it: which leased URL, under which lease and epoch, by which
/// worker, and its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedResult {
    /// The worker that reported it, as its session authenticated it: the result counts only when
    /// this worker holds the lease.
    pub reporter: std::sync::Arc<str>,
    /// Lease the URL came from.
    pub lease_id: i64,
    /// Epoch of that lease.
    pub epoch: i64,
    /// URL id.
    pub url_id: i64,
    /// The outcome.
    pub outcome: CheckOutcome,
}

/// Why a coordinator refused a reported result. A refused result changes nothing; the worker is told,
/// so that it does not send it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Display, EnumString, IntoStaticStr, VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum Refusal {
    /// No lease with that id was ever granted.
    NoSuchLease,
    /// The lease is held by another worker.
    NotHolder,
    /// The lease's epoch is not the one reported.
    StaleEpoch,
    /// The lease ended (its URLs were reported, it expired or was revoked) and this result was not
    /// stored under it before.
    LeaseEnded,
    /// The URL is not one the lease holds (or its job was cancelled).
    NotInLease,
    /// The lease's holder reported another result of this URL under it before: a lease gets one
    /// result per URL.
    Repeated,
    /// The result does not decode or breaks a bound (see the protocol's `CheckResult`).
    Malformed,
}

impl Refusal {
    /// The name the wire and the logs use.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_names() {
        for k in OutcomeKind::ALL {
            assert_eq!(k.as_str().parse::<OutcomeKind>().unwrap(), *k);
        }
        assert_eq!(OutcomeKind::TooManyRedirects.as_str(), "too_many_redirects");
        assert!("nope".parse::<OutcomeKind>().is_err());
        for c in OutcomeClass::ALL {
            assert_eq!(c.to_string().parse::<OutcomeClass>().unwrap(), *c);
        }
        assert_eq!("errors".parse::<OutcomeClass>().unwrap(), OutcomeClass::Error);
        assert_eq!(OutcomeClass::Error.as_str(), "error");
    }

    #[test]
    fn status_decides_the_kind() {
        assert_eq!(OutcomeKind::from_status(204, 0), OutcomeKind::Ok);
        assert_eq!(OutcomeKind::from_status(200, 2), OutcomeKind::Redirected);
        assert_eq!(OutcomeKind::from_status(404, 1), OutcomeKind::Broken);
        assert_eq!(OutcomeKind::from_status(301, 10), OutcomeKind::Broken);
        assert_eq!(OutcomeKind::Timeout.class(), OutcomeClass::Error);
    }
}
