//! End-to-end: coordinators and workers on port 0 against fixture servers on loopback addresses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use sqlx::Connection;
use urlfleet_shared::proto::v1 as pb;
use urlfleet_tests::cluster::{all_results, impolite, submit, wait_done};
use urlfleet_tests::{Backend, Coordinator, Fixture, TestDb, Worker, eventually};

/// Starts `n` fixture servers on 127.0.0.2, 127.0.0.3, …
async fn fixture_hosts(n: u8) -> Vec<Fixture> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(Fixture::start(IpAddr::from([127, 0, 0, 2 + i])).await);
    }
    v
}

/// The status the fixture serves for URL `i`, and the URL. 301s redirect to a 200.
fn planned_url(hosts: &[Fixture], i: usize) -> (String, u16, &'static str) {
    let h = &hosts[i % hosts.len()];
    let (code, final_status, kind) = match i % 7 {
        0..=2 => (200, 200, "ok"),
        3 => (404, 404, "broken"),
        4 => (410, 410, "broken"),
        5 => (301, 200, "redirected"),
        // 5xx other than 503: transient (retried) without pausing the host, which 503 would do.
        _ => (500, 500, "broken"),
    };
    (h.url(&format!("/status/{code}?n={i}")), final_status, kind)
}

async fn stored_statuses(db: &TestDb) -> HashMap<String, Option<i32>> {
    let rows: Vec<(String, Option<i32>)> = match db.backend {
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::query_as("SELECT u.url, l.status FROM urls u LEFT JOIN latest_checks l ON l.url_id = u.id")
                .fetch_all(&mut c)
                .await
                .unwrap()
        }
        Backend::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            sqlx::query_as("SELECT u.url, l.status FROM urls u LEFT JOIN latest_checks l ON l.url_id = u.id")
                .fetch_all(&mut c)
                .await
                .unwrap()
        }
    };
    rows.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_on_postgres_check_2000_urls_across_10_hosts_and_store_what_was_served() {
    let db = TestDb::fresh(Backend::Postgres).await;
    let hosts = fixture_hosts(10).await;
    let coordinator = Coordinator::spawn(&db.url, |_| {}).await;
    let w1 = Worker::spawn(&coordinator.addr, |_| {});
    let w2 = Worker::spawn(&coordinator.addr, |_| {});

    let planned: Vec<(String, u16, &str)> = (0..2_000).map(|i| planned_url(&hosts, i)).collect();
    let urls: Vec<String> = planned.iter().map(|p| p.0.clone()).collect();
    let mut client = coordinator.client().await;
    let resp = submit(&mut client, &urls, impolite()).await.expect("submit");
    assert!(!resp.deduplicated);
    let job = wait_done(&mut client, resp.job.unwrap().id, Duration::from_secs(120)).await;

    assert_eq!(job.state, pb::JobState::Completed as i32);
    let c = job.counts.unwrap();
    assert_eq!((c.total, c.checked, c.failed, c.invalid), (2_000, 2_000, 0, 0));
    let expect_ok = planned.iter().filter(|p| p.2 == "ok").count() as u64;
    let expect_redirected = planned.iter().filter(|p| p.2 == "redirected").count() as u64;
    assert_eq!(
        (c.ok, c.redirected, c.broken, c.error),
        (expect_ok, expect_redirected, 2_000 - expect_ok - expect_redirected, 0)
    );

    let stored = stored_statuses(&db).await;
    assert_eq!(stored.len(), 2_000);
    for (url, status, _) in &planned {
        assert_eq!(stored.get(url.as_str()).copied().flatten(), Some(i32::from(*status)), "{url}");
    }
    let results = all_results(&mut client, job.id).await;
    assert_eq!(results.len(), 2_000);
    let by_url: HashMap<&str, &pb::UrlResult> = results.iter().map(|r| (r.url.as_str(), r)).collect();
    for (url, status, kind) in &planned {
        let r = by_url[url.as_str()];
        assert_eq!(
            (r.status, urlfleet_shared::convert::kind_from_pb(r.kind).unwrap().unwrap().as_str()),
            (u32::from(*status), *kind),
            "{url}"
        );
        if *kind == "redirected" {
            assert_eq!(r.redirects.len(), 1);
            assert!(r.final_url.ends_with("/status/200"), "{}", r.final_url);
        }
    }
    // 500 is transient: every such URL was tried 1 + 3 times.
    let retried = results.iter().filter(|r| r.status == 500).all(|r| r.attempts == 4);
    assert!(retried, "500s are retried three times");
    w1.stop().await;
    w2.stop().await;
    coordinator.stop().await;
}

async fn killed_worker_case(backend: Backend) {
    let db = TestDb::fresh(backend).await;
    let host = Fixture::local().await;
    let coordinator = Coordinator::spawn(&db.url, |c| {
        c.lease_size = 20;
        c.lease_ttl = Duration::from_secs(2);
    })
    .await;
    // Slow URLs so that the first worker is surely mid-job when it dies.
    let urls: Vec<String> = (0..300).map(|i| host.url(&format!("/delay/20?n={i}"))).collect();
    let mut client = coordinator.client().await;
    let options = pb::JobOptions {
        politeness: Some(pb::HostPolicy { concurrency: Some(8), interval_ms: Some(0) }),
        ..Default::default()
    };
    let job_id = submit(&mut client, &urls, options).await.unwrap().job.unwrap().id;

    let doomed = Worker::spawn(&coordinator.addr, |w| w.credits = 100);
    eventually(Duration::from_secs(30), "the first worker checks some URLs", || {
        let mut client = client.clone();
        async move {
            let j = client.get_job(pb::GetJobRequest { id: job_id }).await.ok()?.into_inner();
            (j.counts?.checked >= 40).then_some(())
        }
    })
    .await;
    doomed.kill();
    let before = client.get_job(pb::GetJobRequest { id: job_id }).await.unwrap().into_inner();
    assert_ne!(before.state, pb::JobState::Completed as i32, "the worker died mid-job");

    let survivor = Worker::spawn(&coordinator.addr, |_| {});
    let job = wait_done(&mut client, job_id, Duration::from_secs(60)).await;
    let c = job.counts.unwrap();
    assert_eq!(job.state, pb::JobState::Completed as i32);
    assert_eq!((c.total, c.checked, c.ok, c.failed), (300, 300, 300, 0));
    let results = all_results(&mut client, job_id).await;
    assert_eq!(results.len(), 300);
    let mut seen: Vec<&str> = results.iter().map(|r| r.url.as_str()).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 300, "every URL exactly once");
    assert!(results.iter().all(|r| r.status == 200));
    survivor.stop().await;
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_worker_s_urls_are_finished_by_another_on_postgres() {
    killed_worker_case(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_worker_s_urls_are_finished_by_another_on_sqlite() {
    killed_worker_case(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_answers() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let coordinator = Coordinator::spawn(&db.url, |_| {}).await;
    let mut client = coordinator.client().await;

    let empty = submit(&mut client, &[], pb::JobOptions::default()).await.unwrap_err();
    assert_eq!(empty.code(), tonic::Code::InvalidArgument, "{empty:?}");
    let blank = submit(&mut client, &["   ".to_string()], pb::JobOptions::default()).await.unwrap_err();
    assert_eq!(blank.code(), tonic::Code::InvalidArgument);

    let no_options = client
        .submit_job(tokio_stream::iter(vec![pb::SubmitJobRequest {
            item: Some(pb::submit_job_request::Item::Urls(pb::UrlChunk {
                urls: vec!["http://a.example/".into()],
                ..Default::default()
            })),
        }]))
        .await
        .unwrap_err();
    assert_eq!(no_options.code(), tonic::Code::InvalidArgument);

    // Politeness beyond the coordinator's bounds: refused, naming the limit; within them, accepted.
    let frozen = pb::JobOptions {
        politeness: Some(pb::HostPolicy { concurrency: None, interval_ms: Some(u64::MAX) }),
        ..Default::default()
    };
    let refused = submit(&mut client, &["http://a.example/".to_string()], frozen).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("--max-host-interval"), "{refused:?}");
    let mut flood = pb::JobOptions::default();
    flood.host_policies.insert("a.example".into(), pb::HostPolicy { concurrency: Some(100_000), interval_ms: None });
    let refused = submit(&mut client, &["http://a.example/".to_string()], flood).await.unwrap_err();
    assert!(refused.message().contains("--max-host-concurrency"), "{refused:?}");
    let fine = pb::JobOptions {
        politeness: Some(pb::HostPolicy { concurrency: Some(4), interval_ms: Some(250) }),
        ..Default::default()
    };
    submit(&mut client, &["http://a.example/".to_string()], fine).await.expect("within the bounds");

    let missing = client.get_job(pb::GetJobRequest { id: 424_242 }).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let missing = client.cancel_job(pb::CancelJobRequest { id: 424_242 }).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let missing = client.watch_job(pb::WatchJobRequest { id: 424_242 }).await.expect_err("watch of unknown job fails");
    assert_eq!(missing.code(), tonic::Code::NotFound);

    // Only invalid lines: the job completes at once, each line with its reason.
    let lines = vec!["ftp://files.example/x".to_string(), "not a url".to_string(), "mailto:a@b.example".to_string()];
    let resp = submit(&mut client, &lines, pb::JobOptions::default()).await.unwrap();
    let job = resp.job.unwrap();
    assert_eq!(job.state, pb::JobState::Completed as i32);
    assert_eq!(job.counts.unwrap().invalid, 3);
    let results = all_results(&mut client, job.id).await;
    assert_eq!(results.len(), 3);
    for r in &results {
        assert_eq!(r.outcome_class, pb::OutcomeClass::Invalid as i32);
        assert!(!r.error.is_empty(), "invalid entries carry a reason: {r:?}");
    }
    assert!(results.iter().any(|r| r.url == "ftp://files.example/x" && r.error.contains("scheme")));
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_lines_do_not_stop_the_rest_of_the_job() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let host = Fixture::local().await;
    let coordinator = Coordinator::spawn(&db.url, |_| {}).await;
    let worker = Worker::spawn(&coordinator.addr, |_| {});
    let mut client = coordinator.client().await;
    let urls =
        vec![host.url("/status/200"), "htp:/broken".to_string(), host.url("/status/404"), host.url("/status/200")];
    let resp = submit(&mut client, &urls, pb::JobOptions::default()).await.unwrap();
    let job = wait_done(&mut client, resp.job.unwrap().id, Duration::from_secs(30)).await;
    let c = job.counts.unwrap();
    assert_eq!((c.received, c.total, c.duplicates), (4, 3, 1));
    assert_eq!((c.ok, c.broken, c.invalid), (1, 1, 1));
    worker.stop().await;
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_job_ends_its_watchers_and_keeps_finished_results() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let host = Fixture::local().await;
    let coordinator = Coordinator::spawn(&db.url, |_| {}).await;
    let worker = Worker::spawn(&coordinator.addr, |_| {});
    let mut client = coordinator.client().await;
    // Polite: one request per 50 ms, so 200 URLs take ~10 s and the cancel lands mid-job.
    let urls: Vec<String> = (0..200).map(|i| host.url(&format!("/status/200?n={i}"))).collect();
    let options = pb::JobOptions {
        politeness: Some(pb::HostPolicy { concurrency: Some(1), interval_ms: Some(50) }),
        ..Default::default()
    };
    let id = submit(&mut client, &urls, options).await.unwrap().job.unwrap().id;
    let watcher = {
        let mut client = client.clone();
        tokio::spawn(async move { wait_done(&mut client, id, Duration::from_secs(30)).await })
    };
    eventually(Duration::from_secs(20), "some URLs are checked", || {
        let mut client = client.clone();
        async move {
            let j = client.get_job(pb::GetJobRequest { id }).await.ok()?.into_inner();
            (j.counts?.checked >= 5).then_some(())
        }
    })
    .await;
    let cancelled = client.cancel_job(pb::CancelJobRequest { id }).await.unwrap().into_inner();
    assert_eq!(cancelled.state, pb::JobState::Cancelled as i32);
    let last = watcher.await.unwrap();
    assert_eq!(last.state, pb::JobState::Cancelled as i32, "the watch stream ends with the final state");
    let checked = last.counts.unwrap().checked;
    assert!((5..200).contains(&checked), "{checked}");
    // The worker stops the revoked checks: the server sees far fewer than 200 requests.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let served = host.count("/status/200");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(host.count("/status/200"), served, "no requests after the revocation settles");
    assert!(served < 200, "{served}");
    worker.stop().await;
    coordinator.stop().await;
}
