//! Classification of one attempt: what the outcome is, and whether and when to retry. The only place
//! that decides what is transient.
//!
//! Retried: 5xx, 408, 429, timeouts, refused or reset connections, DNS failures. Never retried: other
//! 4xx, invalid URLs, blocked targets, redirect loops and limits, TLS failures (a bad certificate does
//! not heal in a second).

use std::error::Error as StdError;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use reqwest::{StatusCode, header};
use urlfleet_shared::{CheckOutcome, OutcomeKind, RedirectHop};

use super::{BlockedAddress, DnsFailure, EngineConfig, MAX_RETRY_AFTER, backoff};

/// A failure below HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Transport {
    Timeout(String),
    Dns(String),
    Connect(String),
    Tls(String),
    Blocked(IpAddr),
    BlockedName(String),
    RedirectLoop(String),
    TooManyRedirects(usize),
    Other(String),
}

impl Transport {
    pub(crate) fn from_reqwest(e: reqwest::Error) -> Self {
        let text = chain_text(&e);
        let mut source: Option<&(dyn StdError + 'static)> = Some(&e);
        while let Some(s) = source {
            if s.downcast_ref::<BlockedAddress>().is_some() {
                return Self::BlockedName(s.to_string());
            }
            if s.downcast_ref::<DnsFailure>().is_some() {
                return Self::Dns(s.to_string());
            }
            if s.downcast_ref::<rustls::Error>().is_some() {
                return Self::Tls(text);
            }
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                use std::io::ErrorKind::*;
                match io.kind() {
                    TimedOut => return Self::Timeout(text),
                    ConnectionRefused | ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => {
                        return Self::Connect(text);
                    }
                    _ => {}
                }
                if io.get_ref().is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some()) {
                    return Self::Tls(text);
                }
            }
            source = s.source();
        }
        if e.is_timeout() {
            Self::Timeout(text)
        } else if e.is_connect()
            || text.contains("connection closed")
            || text.contains("connection reset")
            // hyper's `Canceled`: a pooled connection closed (a reset) before the request was
            // written on it, so nothing was sent; as retryable as the reset itself.
            || text.contains("operation was canceled")
        {
            Self::Connect(text)
        } else {
            Self::Other(text)
        }
    }

    pub(crate) fn kind(&self) -> OutcomeKind {
        match self {
            Self::Timeout(_) => OutcomeKind::Timeout,
            Self::Dns(_) => OutcomeKind::Dns,
            Self::Connect(_) => OutcomeKind::Connect,
            Self::Tls(_) => OutcomeKind::Tls,
            Self::Blocked(_) | Self::BlockedName(_) => OutcomeKind::Blocked,
            Self::RedirectLoop(_) => OutcomeKind::RedirectLoop,
            Self::TooManyRedirects(_) => OutcomeKind::TooManyRedirects,
            Self::Other(_) => OutcomeKind::Other,
        }
    }

    fn retryable(&self) -> bool {
        matches!(self, Self::Timeout(_) | Self::Dns(_) | Self::Connect(_))
    }

    pub(crate) fn message(&self) -> String {
        match self {
            Self::Blocked(ip) => format!("refused by the SSRF guard: {ip} is not a public address"),
            Self::BlockedName(m) => format!("refused by the SSRF guard: {m}"),
            Self::RedirectLoop(u) => format!("redirect loop back to {u}"),
            Self::TooManyRedirects(n) => format!("more than {n} redirects"),
            Self::Timeout(m) | Self::Dns(m) | Self::Connect(m) | Self::Tls(m) | Self::Other(m) => m.clone(),
        }
    }
}

/// The error and its causes as one line, without reqwest's generic "error sending request" prefix.
fn chain_text(e: &(dyn StdError + 'static)) -> String {
    let mut s = String::new();
    let mut src = e.source();
    if src.is_none() {
        return e.to_string();
    }
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) && !t.starts_with("client error") {
            if !s.is_empty() {
                s.push_str(": ");
            }
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

/// The HTTP answer of an attempt.
#[derive(Debug)]
pub(crate) struct Http {
    status: StatusCode,
    headers: header::HeaderMap,
    elapsed: Duration,
    final_url: url::Url,
}

/// What an attempt says about its host's load (see `Politeness::observe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// An answer that is not a sign of overload (any status but the ones below, 4xx included).
    Healthy,
    /// The host said it is overloaded: 429, or a 5xx with `Retry-After`.
    Overloaded,
    /// A sign of strain that one URL can cause on its own: a 503 without `Retry-After`, a timeout,
    /// a refused or reset connection. It slows the host only when most recent answers are like it.
    Strained,
    /// Nothing to judge the host by (a blocked target, a DNS failure, a redirect loop).
    Silent,
}

/// One attempt (a request and its redirects).
#[derive(Debug)]
pub(crate) struct Attempt {
    result: Result<Http, Transport>,
    hops: Vec<RedirectHop>,
    /// Host of the last request made.
    pub(crate) last_host: Option<String>,
    /// The host asked to be left alone this long.
    pub(crate) pause_host: Option<Duration>,
    retry_after: Option<Duration>,
}

impl Attempt {
    pub(crate) fn transport(t: Transport, hops: Vec<RedirectHop>, last_host: Option<String>) -> Self {
        Self { result: Err(t), hops, last_host, pause_host: None, retry_after: None }
    }

    pub(crate) fn http(
        status: StatusCode,
        headers: header::HeaderMap,
        elapsed: Duration,
        final_url: url::Url,
        hops: Vec<RedirectHop>,
    ) -> Self {
        // A `Retry-After` counts on a 429 and on any 5xx: the server says when to come back.
        let asks_pause = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
        let retry_after = if asks_pause { retry_after(&headers) } else { None };
        Self {
            result: Ok(Http { status, headers, elapsed, final_url }),
            hops,
            last_host: None,
            pause_host: retry_after,
            retry_after,
        }
    }

    /// What this attempt says about its host's load: the one place that decides.
    pub(crate) fn evidence(&self) -> Evidence {
        match &self.result {
            Ok(h) if h.status == StatusCode::TOO_MANY_REQUESTS => Evidence::Overloaded,
            Ok(h) if h.status.is_server_error() && self.retry_after.is_some() => Evidence::Overloaded,
            Ok(h) if h.status == StatusCode::SERVICE_UNAVAILABLE => Evidence::Strained,
            Ok(_) => Evidence::Healthy,
            Err(Transport::Timeout(_) | Transport::Connect(_)) => Evidence::Strained,
            Err(_) => Evidence::Silent,
        }
    }

    fn retryable(&self) -> bool {
        match &self.result {
            Ok(h) => {
                // 501 and 505 say the server will not do it: asking again changes nothing.
                (h.status.is_server_error()
                    && !matches!(h.status, StatusCode::NOT_IMPLEMENTED | StatusCode::HTTP_VERSION_NOT_SUPPORTED))
                    || h.status == StatusCode::REQUEST_TIMEOUT
                    || h.status == StatusCode::TOO_MANY_REQUESTS
            }
            Err(t) => t.retryable(),
        }
    }

    /// How long to wait before the next attempt, or `None` when this outcome is final.
    pub(crate) fn retry_delay(&self, attempt: u32, config: &EngineConfig) -> Option<Duration> {
        if !self.retryable() {
            return None;
        }
        Some(self.retry_after.unwrap_or_else(|| backoff(attempt, config.backoff_base, config.backoff_cap)))
    }

    pub(crate) fn into_outcome(self, attempts: u32, paused: Option<i64>) -> CheckOutcome {
        match self.result {
            Ok(h) => {
                let header_str =
                    |name: header::HeaderName| h.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
                let mut o =
                    CheckOutcome::error(OutcomeKind::from_status(h.status.as_u16(), self.hops.len()), "", attempts);
                o.error = None;
                o.status = Some(h.status.as_u16());
                o.final_url = Some(h.final_url.to_string());
                o.redirects = self.hops;
                o.response_time_ms = h.elapsed.as_millis() as u64;
                o.content_type = header_str(header::CONTENT_TYPE);
                o.content_length = header_str(header::CONTENT_LENGTH).and_then(|l| l.parse().ok());
                o.host_paused_until_ms = paused;
                o
            }
            Err(t) => {
                let mut o = CheckOutcome::error(t.kind(), t.message(), attempts);
                o.redirects = self.hops;
                o.host_paused_until_ms = paused;
                o
            }
        }
    }
}

/// `Retry-After` as a delay (seconds or an HTTP date), capped at [`MAX_RETRY_AFTER`].
pub(crate) fn retry_after(headers: &header::HeaderMap) -> Option<Duration> {
    let v = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    let d = if let Ok(secs) = v.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = httpdate::parse_http_date(v).ok()?;
        at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO)
    };
    Some(d.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> header::HeaderMap {
        let mut h = header::HeaderMap::new();
        h.insert(header::RETRY_AFTER, v.parse().unwrap());
        h
    }

    #[test]
    fn retry_after_reads_seconds_and_dates_and_is_capped() {
        assert_eq!(retry_after(&headers("3")), Some(Duration::from_secs(3)));
        assert_eq!(retry_after(&headers("3600")), Some(MAX_RETRY_AFTER));
        let soon = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(10));
        let d = retry_after(&headers(&soon)).unwrap();
        assert!(d > Duration::from_secs(8) && d <= Duration::from_secs(10), "{d:?}");
        assert_eq!(retry_after(&headers("garbage")), None);
    }

    #[test]
    fn statuses_are_classified() {
        let a = |s: u16| {
            Attempt::http(
                StatusCode::from_u16(s).unwrap(),
                header::HeaderMap::new(),
                Duration::ZERO,
                "http://a.example/".parse().unwrap(),
                vec![],
            )
        };
        for s in [500, 502, 503, 408, 429] {
            assert!(a(s).retryable(), "{s} is transient");
        }
        for s in [200, 301, 400, 401, 403, 404, 410] {
            assert!(!a(s).retryable(), "{s} is final");
        }
        assert!(!Attempt::transport(Transport::Blocked("127.0.0.1".parse().unwrap()), vec![], None).retryable());
        assert!(Attempt::transport(Transport::Dns("x".into()), vec![], None).retryable());
    }

    #[test]
    fn only_overload_and_strain_count_against_a_host() {
        let a = |s: u16, h: header::HeaderMap| {
            Attempt::http(
                StatusCode::from_u16(s).unwrap(),
                h,
                Duration::ZERO,
                "http://a.example/".parse().unwrap(),
                vec![],
            )
        };
        let none = header::HeaderMap::new;
        assert_eq!(a(429, none()).evidence(), Evidence::Overloaded);
        assert_eq!(a(503, headers("2")).evidence(), Evidence::Overloaded);
        assert_eq!(a(500, headers("2")).evidence(), Evidence::Overloaded);
        assert_eq!(a(503, none()).evidence(), Evidence::Strained);
        assert_eq!(a(500, none()).evidence(), Evidence::Healthy, "one broken page is not overload");
        assert_eq!(a(404, none()).evidence(), Evidence::Healthy);
        assert_eq!(a(500, headers("2")).pause_host, Some(Duration::from_secs(2)));
        assert_eq!(Attempt::transport(Transport::Timeout("t".into()), vec![], None).evidence(), Evidence::Strained);
        assert_eq!(Attempt::transport(Transport::Dns("d".into()), vec![], None).evidence(), Evidence::Silent);
    }
}
