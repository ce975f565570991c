//! The check engine against real local servers: retries, politeness, redirects, timeouts, SSRF.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use urlfleet_shared::plan::Entry;

use http::Method;
use tokio_util::sync::CancellationToken;
use urlfleet_shared::{HostPolicy, OutcomeKind};
use urlfleet_tests::Fixture;
use urlfleet_tests::fixture::ResetThenServe;
use urlfleet_worker::engine::{Engine, EngineConfig};

fn engine(tweak: impl FnOnce(&mut EngineConfig)) -> Engine {
    let mut c = EngineConfig {
        allow: vec!["127.0.0.0/8".parse().unwrap()],
        backoff_base: Duration::from_millis(5),
        backoff_cap: Duration::from_millis(20),
        request_timeout: Duration::from_secs(5),
        ..EngineConfig::default()
    };
    tweak(&mut c);
    Engine::new(c).unwrap()
}

fn free() -> HostPolicy {
    HostPolicy { concurrency: 16, interval: Duration::ZERO }
}

async fn check(e: &Engine, url: &str) -> urlfleet_shared::CheckOutcome {
    e.check(url, free(), &CancellationToken::new()).await
}

/// `check --no-store` of `list` with `concurrency` requests in flight at most, every host at 2 at once
/// and 100 ms apart.
async fn check_polite_list(
    list: Vec<Result<Entry, std::io::Error>>,
    concurrency: usize,
) -> (urlfleet_worker::direct::Report, urlfleet_worker::direct::Progress) {
    let check = urlfleet_worker::direct::DirectCheck::new(
        EngineConfig { concurrency, allow: vec!["127.0.0.0/8".parse().unwrap()], ..EngineConfig::default() },
        Default::default(),
        HostPolicy { concurrency: 2, interval: Duration::from_millis(100) },
    );
    let progress = urlfleet_worker::direct::Progress::default();
    let report =
        urlfleet_worker::direct::check_list(futures::stream::iter(list), &check, &CancellationToken::new(), &progress)
            .await
            .unwrap();
    (report, progress)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_statuses_are_retried_until_they_succeed() {
    let site = Fixture::local().await;
    let e = engine(|_| {});
    for (code, k) in [(500, 1), (502, 2), (503, 3), (408, 2), (429, 1)] {
        let key = format!("s{code}");
        let o = check(&e, &site.url(&format!("/flaky/{key}/{k}/{code}"))).await;
        assert_eq!(o.kind, OutcomeKind::Ok, "{code}: {o:?}");
        assert_eq!(o.attempts, k + 1, "{code}");
        assert_eq!(site.count(&format!("/flaky/{key}/")), (k + 1) as usize, "{code}: exact request count");
    }
    // Past the retry budget, the last answer stands.
    let o = check(&e, &site.url("/flaky/always/10/500")).await;
    assert_eq!((o.kind, o.status, o.attempts), (OutcomeKind::Broken, Some(500), 4));
    assert_eq!(site.count("/flaky/always/"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_final() {
    let site = Fixture::local().await;
    let e = engine(|_| {});
    for code in [400, 401, 403, 404, 410] {
        let o = check(&e, &site.url(&format!("/status/{code}"))).await;
        assert_eq!((o.kind, o.status, o.attempts), (OutcomeKind::Broken, Some(code), 1));
        assert_eq!(site.count(&format!("/status/{code}")), 1, "{code} is not retried");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_are_retried_and_a_hung_server_is_cut_off() {
    let site = Fixture::local().await;
    let e = engine(|c| c.request_timeout = Duration::from_millis(300));
    let o = check(&e, &site.url("/flakyhang/h/2")).await;
    assert_eq!((o.kind, o.attempts), (OutcomeKind::Ok, 3), "{o:?}");
    assert_eq!(site.count("/flakyhang/h/"), 3);

    let started = Instant::now();
    let o = check(&e, &site.url("/hang")).await;
    assert_eq!((o.kind, o.attempts), (OutcomeKind::Timeout, 4), "{o:?}");
    // 4 attempts of 300 ms plus small back-offs: nothing outlives its deadline.
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_and_refused_connections_and_dns_failures_are_retried() {
    let flaky = ResetThenServe::start(2).await;
    let e = engine(|_| {});
    let o = check(&e, &flaky.url("/")).await;
    assert_eq!(o.kind, OutcomeKind::Ok, "{o:?}");
    assert_eq!(flaky.connections(), 3, "two resets, then the answer");
    // The HTTP client itself retries once a connection that reset before the request was written,
    // so two resets may cost one or two attempts of ours.
    assert!((2..=3).contains(&o.attempts), "{o:?}");

    // Nothing listens on port 1: refused every time.
    let o = check(&e, "http://127.0.0.1:1/").await;
    assert_eq!((o.kind, o.attempts), (OutcomeKind::Connect, 4), "{o:?}");

    // `.invalid` never resolves (RFC 2606): no packet leaves the machine.
    let o = check(&e, "http://does-not-exist.invalid/").await;
    assert_eq!((o.kind, o.attempts), (OutcomeKind::Dns, 4), "{o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let site = Fixture::local().await;
    let e = engine(|_| {});
    let o = check(&e, &site.url("/throttle/t/1")).await;
    assert_eq!((o.kind, o.attempts), (OutcomeKind::Ok, 2), "{o:?}");
    let seen: Vec<_> = site.seen().into_iter().filter(|s| s.path.starts_with("/throttle/")).collect();
    assert_eq!(seen.len(), 2);
    let gap = seen[1].at - seen[0].at;
    assert!(gap >= Duration::from_millis(990), "the server saw the retry after {gap:?}");
    assert!(gap < Duration::from_millis(2_000), "{gap:?}");
    assert!(o.host_paused_until_ms.is_some(), "the pause is reported for the whole cluster");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_falls_back_to_get_when_refused() {
    let site = Fixture::local().await;
    let e = engine(|_| {});
    let o = check(&e, &site.url("/head405")).await;
    assert_eq!((o.kind, o.status), (OutcomeKind::Ok, Some(200)));
    let methods: Vec<Method> = site.seen().into_iter().map(|s| s.method).collect();
    assert_eq!(methods, vec![Method::HEAD, Method::GET]);
    assert_eq!(o.content_type.as_deref(), Some("text/plain"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_chains_are_recorded_and_loops_detected() {
    let site = Fixture::local().await;
    let e = engine(|_| {});
    let o = check(&e, &site.url("/redirect/3")).await;
    assert_eq!((o.kind, o.status), (OutcomeKind::Redirected, Some(200)));
    let hops: Vec<(String, u16)> = o.redirects.iter().map(|h| (h.url.clone(), h.status)).collect();
    assert_eq!(
        hops,
        vec![(site.url("/redirect/3"), 301), (site.url("/redirect/2"), 301), (site.url("/redirect/1"), 301)]
    );
    assert_eq!(o.final_url, Some(site.url("/redirect/0")));

    let o = check(&e, &site.url("/loop/a")).await;
    assert_eq!(o.kind, OutcomeKind::RedirectLoop, "{o:?}");
    assert_eq!(o.redirects.len(), 2);
    assert_eq!(o.attempts, 1, "a loop is not retried");

    let o = check(&e, &site.url("/redirect/11")).await;
    assert_eq!(o.kind, OutcomeKind::TooManyRedirects, "{o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ssrf_guard_blocks_internal_targets_without_connecting() {
    let loopback = Fixture::local().await;
    let other = Fixture::start(IpAddr::from([127, 0, 0, 2])).await;
    let strict = engine(|c| c.allow = vec![]);
    let o = check(&strict, &loopback.url("/")).await;
    assert_eq!((o.kind, o.attempts), (OutcomeKind::Blocked, 1), "{o:?}");
    let o = check(&strict, &format!("http://localhost:{}/", loopback.addr().port())).await;
    assert_eq!(o.kind, OutcomeKind::Blocked, "a name that resolves to loopback: {o:?}");
    assert!(o.error.unwrap().contains("127.0.0.1"));
    assert_eq!(loopback.seen().len(), 0, "no connection was made");

    // Allowed: 127.0.0.1 only. A redirect to another internal address is blocked at the hop.
    let narrow = engine(|c| c.allow = vec!["127.0.0.1/32".parse().unwrap()]);
    let target = other.url("/status/200");
    let o = check(&narrow, &loopback.url(&format!("/to?u={target}"))).await;
    assert_eq!(o.kind, OutcomeKind::Blocked, "{o:?}");
    assert_eq!(o.redirects.len(), 1);
    assert_eq!(other.seen().len(), 0, "the redirect target was never contacted");

    // IPv6 addresses that carry 127.0.0.1, directly and as a redirect hop: blocked before any
    // connection is tried (they are judged as the IPv4 address they carry, which only 127.0.0.2 is
    // allowed of here).
    let port = loopback.addr().port();
    let only_other = engine(|c| c.allow = vec!["127.0.0.2/32".parse().unwrap()]);
    for v6 in ["::7f00:1", "64:ff9b::7f00:1", "::ffff:0:7f00:1", "2002:7f00:1::", "2001::80ff:fffe"] {
        let o = check(&strict, &format!("http://[{v6}]:{port}/")).await;
        assert_eq!((o.kind, o.attempts), (OutcomeKind::Blocked, 1), "{v6}: {o:?}");
        let hop = format!("http://[{v6}]:{port}/").replace(':', "%3A").replace('/', "%2F");
        let o = check(&only_other, &other.url(&format!("/to?u={hop}"))).await;
        assert_eq!((o.kind, o.redirects.len()), (OutcomeKind::Blocked, 1), "a hop to {v6}: {o:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_host_interval_holds_by_the_server_s_clock_and_hosts_do_not_wait_for_each_other() {
    let slow = Fixture::start(IpAddr::from([127, 0, 0, 3])).await;
    let fast = Fixture::start(IpAddr::from([127, 0, 0, 4])).await;
    let e = Arc::new(engine(|c| c.concurrency = 4));
    let polite = HostPolicy { concurrency: 2, interval: Duration::from_millis(100) };
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..10 {
        let (e, url) = (e.clone(), slow.url(&format!("/status/200?n={i}")));
        tasks.push(tokio::spawn(async move { e.check(&url, polite, &CancellationToken::new()).await }));
    }
    let mut fast_tasks = Vec::new();
    for i in 0..40 {
        let (e, url) = (e.clone(), fast.url(&format!("/status/200?n={i}")));
        fast_tasks.push(tokio::spawn(async move { e.check(&url, free(), &CancellationToken::new()).await }));
    }
    for t in fast_tasks {
        assert_eq!(t.await.unwrap().kind, OutcomeKind::Ok);
    }
    let fast_done = started.elapsed();
    for t in tasks {
        assert_eq!(t.await.unwrap().kind, OutcomeKind::Ok);
    }
    let slow_done = started.elapsed();
    let mut at: Vec<Instant> = slow.seen().into_iter().map(|s| s.at).collect();
    at.sort();
    assert_eq!(at.len(), 10);
    for w in at.windows(2) {
        assert!(w[1] - w[0] >= Duration::from_millis(100), "server-side gap {:?}", w[1] - w[0]);
    }
    assert!(slow_done >= Duration::from_millis(900));
    assert!(fast_done < Duration::from_millis(600), "the polite host held back another: {fast_done:?}");
}

/// Waiting for a host's turn costs a queue entry, not a slot: with 4 request slots and 40 polite
/// hosts of 3 URLs each, every host gets its first request before any gets its third. (If a host in
/// waiting held a slot, 4 hosts would go through all their URLs before the fifth started.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_waiting_for_their_interval_hold_no_slot() {
    let mut sites = Vec::new();
    for h in 0..40u8 {
        sites.push(Fixture::start(IpAddr::from([127, 0, 5, 1 + h])).await);
    }
    let list: Vec<Result<Entry, std::io::Error>> =
        (0..3).flat_map(|i| sites.iter().map(move |s| Ok(Entry::Url(s.url(&format!("/status/200?n={i}")))))).collect();
    let (report, progress) = check_polite_list(list, 4).await;
    assert_eq!(progress.checked.load(std::sync::atomic::Ordering::Relaxed), 120);
    assert_eq!((report.counts.checked, report.counts.ok), (120, 120));
    let starts: Vec<Vec<Instant>> = sites
        .iter()
        .map(|s| {
            let mut at: Vec<Instant> = s.seen().into_iter().map(|r| r.at).collect();
            at.sort();
            at
        })
        .collect();
    let last_first = starts.iter().map(|a| a[0]).max().unwrap();
    let first_third = starts.iter().map(|a| a[2]).min().unwrap();
    assert!(last_first < first_third, "a host waited for a slot that hosts in waiting held");
    // And each host's own spacing held at its server.
    for a in &starts {
        assert!(a.windows(2).all(|w| w[1] - w[0] >= Duration::from_millis(100)), "{a:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polite_host_whose_batch_is_done_keeps_no_idle_connection() {
    // Ten URLs of one polite host, and one URL of each of four more: every connection goes with the
    // answer of its host's last request instead of idling in the client's pool.
    let site = Fixture::local().await;
    let others = [
        Fixture::start(IpAddr::from([127, 0, 6, 1])).await,
        Fixture::start(IpAddr::from([127, 0, 6, 2])).await,
        Fixture::start(IpAddr::from([127, 0, 6, 3])).await,
        Fixture::start(IpAddr::from([127, 0, 6, 4])).await,
    ];
    let e = engine(|_| {});
    let polite = HostPolicy { concurrency: 2, interval: Duration::from_millis(20) };
    let cancel = CancellationToken::new();
    let urls: Vec<(usize, String)> = (0..10).map(|i| (i, site.url(&format!("/status/200?n={i}")))).collect();
    let mut outcomes = Vec::new();
    urlfleet_worker::engine::check_batch(&e, urls, polite, &cancel, None, |_, o| outcomes.push(o)).await;
    for s in &others {
        let one = vec![(0usize, s.url("/status/200"))];
        urlfleet_worker::engine::check_batch(&e, one, polite, &cancel, None, |_, o| outcomes.push(o)).await;
    }
    assert_eq!(outcomes.len(), 14);
    assert!(outcomes.iter().all(|o| o.kind == OutcomeKind::Ok), "{outcomes:?}");
    // The server sees the close at once; the pool would have kept them for its idle timeout (30 s).
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::iter::once(&site).chain(&others).any(|s| s.connections().1 > 0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (accepted, open) = site.connections();
    assert_eq!(open, 0, "an idle connection outlived the batch ({accepted} accepted)");
    assert!(accepted <= 2, "the batch's requests shared their connections: {accepted}");
    for s in &others {
        assert_eq!(s.connections(), (1, 0));
    }
    // A host whose limits are lifted keeps its connections for the next lease.
    let lifted = Fixture::start(IpAddr::from([127, 0, 6, 5])).await;
    let urls: Vec<(usize, String)> = (0..4).map(|i| (i, lifted.url(&format!("/status/200?n={i}")))).collect();
    urlfleet_worker::engine::check_batch(&e, urls, free(), &cancel, None, |_, _| {}).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(lifted.connections().1 > 0, "a lifted host's connections stay pooled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_of_many_hosts_checks_a_bounded_number_of_hosts_at_once() {
    // One request in flight at most: 32 hosts under way at once, not the list's 40 hosts of one URL.
    let mut sites = Vec::new();
    for h in 0..40u8 {
        sites.push(Fixture::start(IpAddr::from([127, 0, 9, 1 + h])).await);
    }
    let list: Vec<Result<Entry, std::io::Error>> = sites.iter().map(|s| Ok(Entry::Url(s.url("/delay/20")))).collect();
    let (report, progress) = check_polite_list(list, 1).await;
    assert_eq!((report.counts.checked, report.counts.ok), (40, 40));
    let most = progress.most_hosts_at_once.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(most, 32, "hosts under way at once");
    assert_eq!(progress.hosts_under_way.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert!(sites.iter().all(|s| s.seen().len() == 1));
}
