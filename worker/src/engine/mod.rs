//! The check engine: one HTTP check of one URL, honestly reported.
//!
//! A check sends HEAD (falling back to GET when HEAD is refused), follows redirects by hand so every
//! hop is recorded and judged by the SSRF guard, retries transient failures with exponential
//! back-off and full jitter, honours `Retry-After`, and passes every request through the politeness
//! gate. Its result is data ([`CheckOutcome`]), never an `Err`.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::{Method, StatusCode, header};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span};
use urlfleet_shared::time::now_ms;
use urlfleet_shared::url::host_key;
use urlfleet_shared::url::redact;
use urlfleet_shared::{CheckOutcome, HostPolicy, OutcomeKind, RedirectHop, policy};

mod batch;
pub mod politeness;
mod retry;
pub mod ssrf;

pub use batch::check_batch;
pub use politeness::Politeness;
pub use retry::Evidence;
pub use ssrf::{AddressPolicy, Cidr};

use retry::{Attempt, Transport};

/// Default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default total timeout of one attempt.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default retries after the first attempt.
pub const DEFAULT_RETRIES: u32 = 3;
/// Default back-off base.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Default back-off cap.
pub const DEFAULT_BACKOFF_CAP: Duration = Duration::from_secs(30);
/// Longest `Retry-After` honoured.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Default redirect limit.
pub const DEFAULT_MAX_REDIRECTS: usize = 10;
/// Most body bytes a GET reads before the connection is let go.
pub const BODY_CAP: usize = 64 * 1024;

/// Settings of the check engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Maximum in-flight requests of this worker.
    pub concurrency: usize,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Total timeout of one attempt (connect, headers and the capped body).
    pub request_timeout: Duration,
    /// Retries after the first attempt.
    pub retries: u32,
    /// Back-off base.
    pub backoff_base: Duration,
    /// Back-off cap.
    pub backoff_cap: Duration,
    /// Redirect limit.
    pub max_redirects: usize,
    /// User-Agent header.
    pub user_agent: String,
    /// Networks the SSRF guard lets through on top of public addresses.
    pub allow: Vec<Cidr>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            concurrency: policy::DEFAULT_WORKER_CONCURRENCY as usize,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            retries: DEFAULT_RETRIES,
            backoff_base: DEFAULT_BACKOFF_BASE,
            backoff_cap: DEFAULT_BACKOFF_CAP,
            max_redirects: DEFAULT_MAX_REDIRECTS,
            user_agent: format!("urlfleet/{} (+link checker)", env!("CARGO_PKG_VERSION")),
            allow: Vec::new(),
        }
    }
}

/// The check engine; cheap to share (`Arc`).
#[derive(Debug)]
pub struct Engine {
    client: reqwest::Client,
    config: EngineConfig,
    addresses: Arc<AddressPolicy>,
    gate: Politeness,
    metrics: crate::metrics::EngineMetrics,
}

/// A failure to build the engine.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client: {0}")]
pub struct EngineError(#[from] reqwest::Error);

impl Engine {
    /// Builds the engine and its HTTP client.
    pub fn new(config: EngineConfig) -> Result<Self, EngineError> {
        // One process-wide TLS provider (ring); a second install attempt is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let addresses = Arc::new(AddressPolicy::with_allowed(config.allow.clone()));
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .pool_max_idle_per_host(config.concurrency.max(1))
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .no_proxy()
            .user_agent(config.user_agent.clone())
            .dns_resolver(GuardedResolver { policy: addresses.clone() })
            .build()?;
        let metrics = crate::metrics::EngineMetrics::default();
        let gate = Politeness::new(config.concurrency).with_tracked_gauge(metrics.hosts_tracked());
        Ok(Self { client, config, addresses, gate, metrics })
    }

    /// The engine's settings.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The engine's metrics.
    pub fn metrics(&self) -> &crate::metrics::EngineMetrics {
        &self.metrics
    }

    /// Requests in flight right now.
    pub fn in_flight(&self) -> usize {
        self.gate.in_flight(self.config.concurrency.max(1))
    }

    /// Checks one URL. `policy` applies to the URL's own host; redirect targets on other hosts get the
    /// default politeness. Cancelling `cancel` ends the check early with whatever it has.
    pub async fn check(&self, url: &str, policy: HostPolicy, cancel: &CancellationToken) -> CheckOutcome {
        let mut check = match self.begin(url) {
            Ok(c) => c,
            Err(outcome) => return *outcome,
        };
        loop {
            match self.step(&mut check, policy, cancel).await {
                Step::Done(outcome) => return outcome,
                Step::RetryAfter(delay) => {
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = cancel.cancelled() => return self.give_up(&mut check),
                    }
                }
            }
        }
    }

    /// Starts a check of `url`: its first attempt is the next [`Engine::step`]. A URL that cannot be
    /// checked at all is its outcome at once.
    pub fn begin(&self, url: &str) -> Result<InProgress, Box<CheckOutcome>> {
        let span = info_span!(
            "check",
            url.full = %redact(url),
            attempts = tracing::field::Empty,
            outcome = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
        );
        self.metrics.started();
        let started = Instant::now();
        let invalid = |why: String| {
            let outcome = CheckOutcome::error(OutcomeKind::Invalid, why, 0);
            Err(Box::new(self.conclude(url, &span, started, outcome)))
        };
        let parsed = match url::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => u,
            Ok(u) => return invalid(format!("cannot check a {} URL", u.scheme())),
            Err(e) => return invalid(format!("not a valid URL: {e}")),
        };
        let home = host_key(&parsed).unwrap_or_default();
        Ok(InProgress { parsed, home, last_of_host: false, attempt: 0, paused_until: None, last: None, span, started })
    }

    /// One attempt of a check: its outcome, or how long to wait before the next attempt (a wait that
    /// holds no slot: the caller decides where the check waits).
    pub async fn step(&self, check: &mut InProgress, policy: HostPolicy, cancel: &CancellationToken) -> Step {
        check.attempt += 1;
        let attempt = check.attempt;
        let mut result = tokio::select! {
            r = self.attempt(&check.parsed, &check.home, check.last_of_host, policy).instrument(check.span.clone()) => r,
            () = cancel.cancelled() => {
                let outcome = CheckOutcome::error(OutcomeKind::Other, "check cancelled", attempt);
                return Step::Done(self.conclude(check.parsed.as_str(), &check.span, check.started, outcome));
            }
        };
        if let Some(host) = result.last_host.clone() {
            let pause = self.gate.observe(&host, result.evidence(), result.pause_host);
            if pause.is_some() {
                self.metrics.host_paused();
                result.pause_host = pause;
            }
        }
        // Reported for the cluster only when the lease's own host asked: the coordinator pauses the
        // lease's host, and a redirect target's pause is this worker's business.
        if let Some(pause) = result.pause_host
            && result.last_host.as_deref() == Some(check.home.as_str())
        {
            check.paused_until = check.paused_until.max(Some(wall_ms_after(pause)));
        }
        let retry = result.retry_delay(attempt, &self.config).filter(|_| attempt <= self.config.retries);
        let outcome = result.into_outcome(attempt, check.paused_until);
        match retry {
            Some(delay) => {
                debug!(parent: &check.span, attempt, delay_ms = delay.as_millis() as u64, "retrying");
                check.last = Some(outcome);
                Step::RetryAfter(delay)
            }
            None => Step::Done(self.conclude(check.parsed.as_str(), &check.span, check.started, outcome)),
        }
    }

    /// The outcome of a check given up while it waits for its next attempt: its latest attempt's.
    pub fn give_up(&self, check: &mut InProgress) -> CheckOutcome {
        let outcome = check
            .last
            .take()
            .unwrap_or_else(|| CheckOutcome::error(OutcomeKind::Other, "check cancelled", check.attempt));
        self.conclude(check.parsed.as_str(), &check.span, check.started, outcome)
    }

    /// Ends a check: its span's fields, its metrics, and a span that keeps a failure in the trace.
    fn conclude(&self, url: &str, span: &tracing::Span, started: Instant, mut outcome: CheckOutcome) -> CheckOutcome {
        // What the check learnt leaves it without the credentials of any URL (the final one, a hop, a
        // URL quoted in an error): only the request itself needs them.
        let strip = |s: &mut String| {
            if let std::borrow::Cow::Owned(r) = redact(s) {
                *s = r;
            }
        };
        outcome.final_url.iter_mut().chain(outcome.error.iter_mut()).for_each(strip);
        outcome.redirects.iter_mut().for_each(|h| strip(&mut h.url));
        self.metrics.finished(&outcome, started.elapsed().as_secs_f64());
        span.record("attempts", outcome.attempts);
        span.record("outcome", outcome.kind.as_str());
        if let Some(s) = outcome.status {
            span.record("http.response.status_code", s);
        }
        if outcome.kind.class().is_failure() && !urlfleet_shared::telemetry::is_sampled(span) {
            // Most checks are sampled out of the trace; a failed one is always kept, as a span
            // whose `error.type` makes the sampler keep it.
            let kept = info_span!(
                "check",
                url.full = %redact(url),
                error.type = outcome.kind.as_str(),
                attempts = outcome.attempts,
                http.response.status_code = outcome.status.unwrap_or(0),
                error.message = outcome.error.as_deref().unwrap_or(""),
            );
            drop(kept.entered());
        }
        outcome
    }

    /// One attempt: a request and the redirects it leads to.
    async fn attempt(&self, start: &url::Url, home: &str, last_of_host: bool, policy: HostPolicy) -> Attempt {
        let mut current = start.clone();
        let mut hops: Vec<RedirectHop> = Vec::new();
        let mut seen: HashSet<String> = HashSet::from([current.as_str().to_string()]);
        loop {
            let host = host_key(&current).unwrap_or_default();
            if let Some(blocked) = self.blocked_literal(&current) {
                return Attempt::transport(Transport::Blocked(blocked), hops, Some(host));
            }
            // The lease's policy governs its own host; a redirect target keeps whatever limits it has.
            let host_policy = (host == home).then_some(policy);
            let close = last_of_host && host == home;
            let sent = self.request(&current, &host, host_policy, close).await;
            let (status, headers, elapsed) = match sent {
                Ok(r) => r,
                Err(t) => return Attempt::transport(t, hops, Some(host)),
            };
            if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
                let Some(next) =
                    headers.get(header::LOCATION).and_then(|l| l.to_str().ok()).and_then(|l| current.join(l).ok())
                else {
                    // A 3xx without a usable Location is the final answer.
                    return Attempt::http(status, headers, elapsed, current, hops);
                };
                hops.push(RedirectHop { url: current.to_string(), status: status.as_u16() });
                let mut next = next;
                next.set_fragment(None);
                if !matches!(next.scheme(), "http" | "https") {
                    return Attempt::transport(
                        Transport::Other(format!("redirect to unsupported scheme {}", next.scheme())),
                        hops,
                        Some(host),
                    );
                }
                if !seen.insert(next.as_str().to_string()) {
                    return Attempt::transport(Transport::RedirectLoop(next.to_string()), hops, Some(host));
                }
                if hops.len() > self.config.max_redirects {
                    return Attempt::transport(
                        Transport::TooManyRedirects(self.config.max_redirects),
                        hops,
                        Some(host),
                    );
                }
                current = next;
                continue;
            }
            let mut a = Attempt::http(status, headers, elapsed, current, hops);
            a.last_host = Some(host);
            return a;
        }
    }

    /// Sends HEAD, then GET when HEAD is refused; returns the status, headers and time to first byte.
    /// With `close`, each request asks the server to close its connection after answering.
    async fn request(
        &self,
        url: &url::Url,
        host: &str,
        policy: Option<HostPolicy>,
        close: bool,
    ) -> Result<(StatusCode, header::HeaderMap, Duration), Transport> {
        match self.send(Method::HEAD, url, host, policy, close).await {
            Ok((StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED, ..)) => {
                self.send(Method::GET, url, host, policy, close).await
            }
            // Servers that mishandle HEAD (a body after the headers, a garbled answer) often serve GET.
            Err(Transport::Other(_)) => self.send(Method::GET, url, host, policy, close).await,
            other => other,
        }
    }

    async fn send(
        &self,
        method: Method,
        url: &url::Url,
        host: &str,
        policy: Option<HostPolicy>,
        close: bool,
    ) -> Result<(StatusCode, header::HeaderMap, Duration), Transport> {
        let permit = self.gate.acquire(host, policy).await;
        let span = info_span!(
            "http",
            otel.kind = "client",
            http.request.method = %method,
            url.full = %redact(url.as_ref()),
            server.address = url.host_str().unwrap_or_default(),
            http.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        let started = Instant::now();
        let is_get = method == Method::GET;
        let fut = async {
            let mut request = self.client.request(method, url.as_str());
            if close {
                // The connection goes with the answer instead of idling in the pool.
                request = request.header(header::CONNECTION, "close");
            }
            let sent = request.send().await;
            // The answer's head is in (or the request failed): the request has certainly reached the
            // server, and the host's next request is spaced from now.
            permit.answered();
            let mut resp = sent.map_err(Transport::from_reqwest)?;
            let elapsed = started.elapsed();
            let status = resp.status();
            let headers = std::mem::take(resp.headers_mut());
            if is_get {
                // Read a little of the body so a well-behaved server can finish; then let it go.
                let mut read = 0usize;
                while read < BODY_CAP {
                    match resp.chunk().await {
                        Ok(Some(c)) => read += c.len(),
                        Ok(None) | Err(_) => break,
                    }
                }
            }
            Ok((status, headers, elapsed))
        };
        let r: Result<_, Transport> = fut.instrument(span.clone()).await;
        match &r {
            Ok((s, _, _)) => {
                span.record("http.response.status_code", s.as_u16());
            }
            Err(t) => {
                span.record("error.type", t.kind().as_str());
            }
        }
        r
    }

    /// Downloads a document (a sitemap) with GET, through the same guard as a check: the SSRF
    /// policy on every address and redirect hop, the host's default politeness, the engine's
    /// timeouts and redirect limit. At most `max_bytes` are read (more is an error). A final status
    /// other than 2xx is an error, as is any transport failure: the reason is returned.
    pub async fn fetch(&self, url: &str, max_bytes: usize) -> Result<Vec<u8>, String> {
        let mut current = url::Url::parse(url).map_err(|e| format!("not a valid URL: {e}"))?;
        let polite = HostPolicy {
            concurrency: urlfleet_shared::policy::DEFAULT_HOST_CONCURRENCY,
            interval: urlfleet_shared::policy::DEFAULT_HOST_INTERVAL,
        };
        for _ in 0..=self.config.max_redirects {
            if !matches!(current.scheme(), "http" | "https") {
                return Err(format!("cannot fetch a {} URL", current.scheme()));
            }
            if let Some(ip) = self.blocked_literal(&current) {
                return Err(Transport::Blocked(ip).message());
            }
            let host = host_key(&current).unwrap_or_default();
            let permit = self.gate.acquire(&host, Some(polite)).await;
            let sent = self.client.get(current.as_str()).send().await;
            permit.answered();
            let mut resp = sent.map_err(|e| Transport::from_reqwest(e).message())?;
            let status = resp.status();
            if status.is_redirection() {
                let next = resp
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .and_then(|l| current.join(l).ok())
                    .ok_or_else(|| format!("HTTP {} without a usable Location", status.as_u16()))?;
                current = next;
                continue;
            }
            if !status.is_success() {
                return Err(format!("HTTP {}", status.as_u16()));
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| Transport::from_reqwest(e).message())? {
                if body.len() + chunk.len() > max_bytes {
                    return Err(format!("larger than {max_bytes} bytes"));
                }
                body.extend_from_slice(&chunk);
            }
            return Ok(body);
        }
        Err(Transport::TooManyRedirects(self.config.max_redirects).message())
    }

    fn blocked_literal(&self, url: &url::Url) -> Option<IpAddr> {
        let ip = match url.host()? {
            url::Host::Ipv4(v4) => IpAddr::V4(v4),
            url::Host::Ipv6(v6) => IpAddr::V6(v6),
            url::Host::Domain(_) => return None,
        };
        (!self.addresses.permits(ip)).then_some(ip)
    }
}

/// A check between attempts.
#[derive(Debug)]
pub struct InProgress {
    parsed: url::Url,
    home: String,
    /// The next attempt's requests to the home host ask the server to close the connection after
    /// answering: no request of the host's batch will need it again.
    last_of_host: bool,
    attempt: u32,
    paused_until: Option<i64>,
    last: Option<CheckOutcome>,
    span: tracing::Span,
    started: Instant,
}

/// What one attempt of a check led to.
#[derive(Debug)]
pub enum Step {
    /// The check is over.
    Done(CheckOutcome),
    /// Try again after this long.
    RetryAfter(Duration),
}

/// Full-jitter exponential back-off: a uniform delay in [0, min(cap, base × 2^(attempt-1))].
pub fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let ceiling = exp.min(cap);
    if ceiling.is_zero() {
        return ceiling;
    }
    Duration::from_micros(rand::rng().random_range(0..=ceiling.as_micros() as u64))
}

/// A DNS resolver that drops addresses the SSRF guard refuses, so a name that resolves to an
/// internal address is never connected to.
#[derive(Debug)]
struct GuardedResolver {
    policy: Arc<AddressPolicy>,
}

/// Every resolved address was refused by the SSRF guard.
#[derive(Debug, thiserror::Error)]
#[error("{name} resolves only to refused addresses ({addrs})")]
pub(crate) struct BlockedAddress {
    name: String,
    addrs: String,
}

/// The name did not resolve.
#[derive(Debug, thiserror::Error)]
#[error("cannot resolve {name}: {source}")]
pub(crate) struct DnsFailure {
    name: String,
    source: std::io::Error,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|source| DnsFailure { name: host.clone(), source })?
                .collect();
            if addrs.is_empty() {
                return Err(Box::new(DnsFailure { name: host, source: std::io::Error::other("no addresses") })
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            let allowed: Vec<SocketAddr> = addrs.iter().copied().filter(|a| policy.permits(a.ip())).collect();
            if allowed.is_empty() {
                let list = addrs.iter().map(|a| a.ip().to_string()).collect::<Vec<_>>().join(", ");
                return Err(
                    Box::new(BlockedAddress { name: host, addrs: list }) as Box<dyn std::error::Error + Send + Sync>
                );
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// Milliseconds since the epoch of an [`Instant`] in the future, for `host_paused_until`.
pub(crate) fn wall_ms_after(d: Duration) -> i64 {
    now_ms() + urlfleet_shared::time::ms(d)
}
