//! Scheduling across jobs and coordinators.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use urlfleet_coordinator::store::{LeaseRequest, PlannedUrl, RecheckPolicy, Store};
use urlfleet_shared::proto::v1 as pb;
use urlfleet_tests::cluster::{stored_job, submit, wait_done};
use urlfleet_tests::{Backend, Coordinator, Fixture, TestDb, Worker, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_coordinators_on_one_postgres_database_never_lease_the_same_url() {
    let db = TestDb::fresh(Backend::Postgres).await;
    let a = urlfleet_coordinator::store::connect(&db.url).await.unwrap();
    let b = urlfleet_coordinator::store::connect(&db.url).await.unwrap();
    let urls: Vec<PlannedUrl> = (0..4_000)
        .map(|i| PlannedUrl {
            budget: urlfleet_shared::LeaseBudget { max_leases: 4, lease_urls: 0 },
            ..PlannedUrl::new(format!("http://h{}.example/{i}", i % 40), format!("h{}.example", i % 40), i as u64)
        })
        .collect();
    let recheck = RecheckPolicy { force: true, recheck_after: Duration::ZERO, recheck_broken_after: Duration::ZERO };
    stored_job(a.as_ref(), "race", urlfleet_shared::Priority::Medium, &urls, recheck).await;

    let lease_all = |store: std::sync::Arc<dyn Store>, who: &'static str| async move {
        let mut got = Vec::new();
        for i in 0.. {
            let req = LeaseRequest {
                worker_id: format!("{who}-{i}"),
                max_urls: 25,
                max_urls_lifted: 25,
                lifted_room: u64::MAX,
                ttl: Duration::from_secs(600),
                politeness: None,
            };
            match store.acquire_lease(&req).await.unwrap() {
                Some(l) => got.extend(l.urls.into_iter().map(|(id, _)| id)),
                None => break,
            }
        }
        got
    };
    let (ga, gb) = tokio::join!(tokio::spawn(lease_all(a.clone(), "a")), tokio::spawn(lease_all(b.clone(), "b")));
    let (ga, gb) = (ga.unwrap(), gb.unwrap());
    assert!(!ga.is_empty() && !gb.is_empty(), "both coordinators leased ({} / {})", ga.len(), gb.len());
    let mut seen = HashSet::new();
    for id in ga.iter().chain(gb.iter()) {
        assert!(seen.insert(*id), "URL {id} leased twice");
    }
    // 40 hosts × 4 leases × 25 URLs can be out at once; the rest waits for those leases to end.
    assert_eq!(seen.len(), 4_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_urgent_job_finishes_while_a_big_one_runs() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let mut big_hosts = Vec::new();
    for i in 0..10u8 {
        big_hosts.push(Fixture::start(IpAddr::from([127, 0, 4, 1 + i])).await);
    }
    let urgent_host = Fixture::start(IpAddr::from([127, 0, 4, 100])).await;
    let coordinator = Coordinator::spawn(&db.url, |_| {}).await;
    let worker = Worker::spawn(&coordinator.addr, |w| w.credits = 300);
    let mut client = coordinator.client().await;
    // Polite big job: 10 hosts × 100 URLs at 10 per second per host, about 10 s of work.
    let big: Vec<String> = (0..1_000).map(|i| big_hosts[i % 10].url(&format!("/status/200?n={i}"))).collect();
    let big_id = submit(&mut client, &big, pb::JobOptions { priority: pb::Priority::Low as i32, ..Default::default() })
        .await
        .unwrap()
        .job
        .unwrap()
        .id;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let urgent: Vec<String> = (0..10).map(|i| urgent_host.url(&format!("/status/200?u={i}"))).collect();
    let started = Instant::now();
    let options = pb::JobOptions {
        priority: pb::Priority::High as i32,
        politeness: Some(pb::HostPolicy { concurrency: Some(4), interval_ms: Some(0) }),
        ..Default::default()
    };
    let urgent_id = submit(&mut client, &urgent, options).await.unwrap().job.unwrap().id;
    let done = wait_done(&mut client, urgent_id, Duration::from_secs(30)).await;
    let took = started.elapsed();
    assert_eq!(done.counts.unwrap().ok, 10);
    let big_now = client.get_job(pb::GetJobRequest { id: big_id }).await.unwrap().into_inner();
    assert_eq!(big_now.state, pb::JobState::Running as i32, "the big job is still running");
    assert!(took < Duration::from_secs(3), "the urgent job waited {took:?} behind the big one");
    worker.stop().await;
    coordinator.stop().await;
}

/// Fair share: a small job submitted while a large one runs on the same polite hosts is done in
/// seconds, not after the large one. The large job needs minutes; the small one's URLs lead the next
/// lease of each host, so it waits at most for the lease in progress there, which holds about a
/// lease span of work (2 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_job_submitted_while_a_large_one_runs_finishes_in_seconds() {
    let db = TestDb::fresh(Backend::Postgres).await;
    let mut hosts = Vec::new();
    for i in 0..4u8 {
        hosts.push(Fixture::start(IpAddr::from([127, 0, 5, 1 + i])).await);
    }
    let coordinator = Coordinator::spawn(&db.url, |c| c.lease_span = Duration::from_secs(2)).await;
    let worker = Worker::spawn(&coordinator.addr, |_| {});
    let mut client = coordinator.client().await;
    // 20,000 URLs on four hosts, each host one request per 50 ms: about four minutes, in leases of
    // 40 URLs.
    let polite = pb::JobOptions {
        politeness: Some(pb::HostPolicy { concurrency: Some(2), interval_ms: Some(50) }),
        ..Default::default()
    };
    let large: Vec<String> = (0..20_000).map(|i| hosts[i % 4].url(&format!("/status/200?large={i}"))).collect();
    let large_id = submit(&mut client, &large, polite.clone()).await.unwrap().job.unwrap().id;
    let checked = |client: &pb::job_service_client::JobServiceClient<tonic::transport::Channel>, id: i64| {
        let mut client = client.clone();
        async move { client.get_job(pb::GetJobRequest { id }).await.ok()?.into_inner().counts.map(|c| c.checked) }
    };
    eventually(Duration::from_secs(30), "the large job is being checked", || async {
        checked(&client, large_id).await.filter(|c| *c >= 20)
    })
    .await;

    let started = Instant::now();
    let small: Vec<String> = (0..10).map(|i| hosts[i % 4].url(&format!("/status/200?small={i}"))).collect();
    let small_id = submit(&mut client, &small, polite).await.unwrap().job.unwrap().id;
    let done = wait_done(&mut client, small_id, Duration::from_secs(60)).await;
    let took = started.elapsed();
    assert_eq!(done.state, pb::JobState::Completed as i32);
    assert_eq!(done.counts.unwrap().ok, 10);
    assert!(took < Duration::from_secs(8), "the small job took {took:?}");
    let large_now = client.get_job(pb::GetJobRequest { id: large_id }).await.unwrap().into_inner();
    assert_eq!(large_now.state, pb::JobState::Running as i32, "the large job is still running");
    // Leases of a 2 s span at one request per 50 ms: 40 URLs, whichever jobs they hold.
    let largest = db
        .scalar(
            "SELECT MAX(n) FROM (SELECT COUNT(*) AS n FROM job_urls WHERE lease_id IS NOT NULL GROUP BY lease_id) AS l",
        )
        .await;
    assert_eq!(largest, 40);

    client.cancel_job(pb::CancelJobRequest { id: large_id }).await.unwrap();
    worker.stop().await;
    coordinator.stop().await;
}

/// A slow host's leases hold about a lease span of its requests, so a worker's credits are not tied
/// up for minutes by one host, and an urgent job never waits long for the lease in progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_host_is_leased_a_span_of_work_at_a_time() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let host = Fixture::start(IpAddr::from([127, 0, 5, 10])).await;
    let coordinator = Coordinator::spawn(&db.url, |c| c.lease_span = Duration::from_secs(1)).await;
    let worker = Worker::spawn(&coordinator.addr, |_| {});
    let mut client = coordinator.client().await;
    let urls: Vec<String> = (0..12).map(|i| host.url(&format!("/status/200?n={i}"))).collect();
    // One request per 250 ms: a lease of about a second holds 4 URLs.
    let options = pb::JobOptions {
        politeness: Some(pb::HostPolicy { concurrency: Some(2), interval_ms: Some(250) }),
        ..Default::default()
    };
    let id = submit(&mut client, &urls, options).await.unwrap().job.unwrap().id;
    let done = wait_done(&mut client, id, Duration::from_secs(30)).await;
    assert_eq!(done.counts.unwrap().ok, 12);
    assert_eq!(db.scalar("SELECT COUNT(DISTINCT lease_id) FROM job_urls").await, 3);
    assert_eq!(db.scalar("SELECT MAX(n) FROM (SELECT COUNT(*) AS n FROM job_urls GROUP BY lease_id)").await, 4);
    worker.stop().await;
    coordinator.stop().await;
}

/// A worker holds only a quarter of a second of a fast job's work at its pace (and at least 8 URLs per check it runs): the rest stays leasable, so
/// a second worker gets its share instead of the first taking the whole host (its credits would
/// allow 65,536 URLs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_job_spreads_over_every_worker_instead_of_going_to_the_first() {
    let db = TestDb::fresh(Backend::Postgres).await;
    let host = Fixture::start(IpAddr::from([127, 0, 5, 20])).await;
    let coordinator = Coordinator::spawn(&db.url, |_| {}).await;
    let workers = [
        Worker::spawn(&coordinator.addr, |w| w.concurrency = 4),
        Worker::spawn(&coordinator.addr, |w| w.concurrency = 4),
    ];
    let mut client = coordinator.client().await;
    // Each worker checks 4 URLs per 20 ms: 800 URLs take them about two seconds.
    let urls: Vec<String> = (0..800).map(|i| host.url(&format!("/delay/20?n={i}"))).collect();
    let id = submit(&mut client, &urls, urlfleet_tests::cluster::impolite()).await.unwrap().job.unwrap().id;
    let done = wait_done(&mut client, id, Duration::from_secs(60)).await;
    assert_eq!(done.counts.unwrap().ok, 800);
    let by = |pick: &str| {
        format!(
            "SELECT COUNT(*) FROM checks c JOIN leases l ON l.id = c.lease_id WHERE l.holder = (SELECT {pick}(holder) FROM leases)"
        )
    };
    let shares = (db.scalar(&by("MIN")).await, db.scalar(&by("MAX")).await);
    assert_eq!(shares.0 + shares.1, 800, "two workers checked the job: {shares:?}");
    assert!(shares.0 >= 200 && shares.1 >= 200, "each worker checked a fair share: {shares:?}");
    for w in workers {
        w.stop().await;
    }
    coordinator.stop().await;
}
