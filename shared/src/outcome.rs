//! The outcome of a URL check, as data. A failed check is not an `Err`: timeouts, DNS failures and
//! blocked targets are answers a user wants to see, counted and stored like any status code.

use std::fmt;
use std::str::FromStr;

/// What happened when a URL was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

/// Coarse class of an outcome, used for counts, filters and exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutcomeClass {
    /// 2xx without redirects.
    Ok,
    /// 2xx after redirects.
    Redirected,
    /// 4xx / 5xx.
    Broken,
    /// No usable HTTP answer.
    Error,
    /// Not a checkable URL.
    Invalid,
}

impl OutcomeKind {
    /// Every kind, in a stable order.
    pub const ALL: [OutcomeKind; 13] = [
        Self::Ok,
        Self::Redirected,
        Self::Broken,
        Self::Timeout,
        Self::Dns,
        Self::Connect,
        Self::Tls,
        Self::TooManyRedirects,
        Self::RedirectLoop,
        Self::Blocked,
        Self::Invalid,
        Self::Failed,
        Self::Other,
    ];

    /// Stable lowercase name, as stored and sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Redirected => "redirected",
            Self::Broken => "broken",
            Self::Timeout => "timeout",
            Self::Dns => "dns",
            Self::Connect => "connect",
            Self::Tls => "tls",
            Self::TooManyRedirects => "too_many_redirects",
            Self::RedirectLoop => "redirect_loop",
            Self::Blocked => "blocked",
            Self::Invalid => "invalid",
            Self::Failed => "failed",
            Self::Other => "other",
        }
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

impl fmt::Display for OutcomeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OutcomeKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| format!("unknown outcome kind {s:?}"))
    }
}

impl OutcomeClass {
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Redirected => "redirected",
            Self::Broken => "broken",
            Self::Error => "error",
            Self::Invalid => "invalid",
        }
    }

    /// Every class.
    pub const ALL: [OutcomeClass; 5] = [Self::Ok, Self::Redirected, Self::Broken, Self::Error, Self::Invalid];

    /// Whether a link-checking gate should fail on this class.
    pub fn is_failure(self) -> bool {
        !matches!(self, Self::Ok | Self::Redirected)
    }
}

impl fmt::Display for OutcomeClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OutcomeClass {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "errors" => return Ok(Self::Error),
            "ok" | "redirected" | "broken" | "error" | "invalid" => {}
            _ => return Err(format!("unknown outcome class {s:?} (ok, redirected, broken, error, invalid)")),
        }
        Ok(Self::ALL.into_iter().find(|c| c.as_str() == s).unwrap_or(Self::Error))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_names() {
        for k in OutcomeKind::ALL {
            assert_eq!(k.as_str().parse::<OutcomeKind>().unwrap(), k);
        }
        assert!("nope".parse::<OutcomeKind>().is_err());
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
