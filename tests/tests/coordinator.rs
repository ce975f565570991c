//! The coordinator as stock gRPC tools and restarting processes see it.

use std::time::Duration;

use tokio_stream::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use urlfleet_shared::proto::v1 as pb;
use urlfleet_tests::cluster::{impolite, submit, wait_done};
use urlfleet_tests::{Backend, Coordinator, Fixture, TestDb, Worker, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_answer_stock_clients() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let coordinator = Coordinator::spawn(&db.url, |c| c.reflection = true).await;
    let without = Coordinator::spawn(&db.url, |_| {}).await;
    let off = tonic::transport::Endpoint::from_shared(without.addr.clone()).unwrap().connect().await.unwrap();
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let e = ServerReflectionClient::new(off).server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented, "reflection is off unless asked for");
    without.stop().await;

    let channel = tonic::transport::Endpoint::from_shared(coordinator.addr.clone()).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "urlfleet.v1.JobService", "urlfleet.v1.WorkerService"] {
        let status = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner().status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }

    let mut reflection = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    let answer = answers.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else { panic!("{answer:?}") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["urlfleet.v1.JobService", "urlfleet.v1.WorkerService", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_reconnects_when_its_coordinator_restarts_and_the_job_finishes() {
    let db = TestDb::fresh(Backend::Postgres).await;
    let site = Fixture::local().await;
    let first = Coordinator::spawn(&db.url, |_| {}).await;
    let addr = first.addr.clone();
    let worker = Worker::spawn(&addr, |_| {});
    let urls: Vec<String> = (0..400).map(|i| site.url(&format!("/delay/10?n={i}"))).collect();
    let mut client = first.client().await;
    let mut options = impolite();
    options.politeness = Some(pb::HostPolicy { concurrency: Some(4), interval_ms: Some(0) });
    let id = submit(&mut client, &urls, options).await.unwrap().job.unwrap().id;
    urlfleet_tests::eventually(Duration::from_secs(20), "work started", || {
        let mut client = client.clone();
        async move { (client.get_job(pb::GetJobRequest { id }).await.ok()?.into_inner().counts?.checked > 20).then_some(()) }
    })
    .await;
    first.stop().await;

    // A new coordinator on the same address and database; the worker finds it by itself.
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let second = loop {
        match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => {
                drop(l);
                break Coordinator::spawn_on(&db.url, port, |_| {}).await;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let mut client = second.client().await;
    let job = wait_done(&mut client, id, Duration::from_secs(60)).await;
    let c = job.counts.unwrap();
    assert_eq!(job.state, pb::JobState::Completed as i32);
    assert_eq!((c.checked, c.ok, c.failed), (400, 400, 0));
    worker.stop().await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_is_stored_while_it_streams_and_a_broken_one_leaves_nothing() {
    let db = TestDb::fresh(Backend::Postgres).await;
    let coordinator = Coordinator::spawn(&db.url, |_| {}).await;
    let client = coordinator.client().await;
    let store = urlfleet_coordinator::store::connect(&db.url).await.unwrap();
    let options = |name: &str| pb::SubmitJobRequest {
        item: Some(pb::submit_job_request::Item::Options(pb::JobOptions { name: name.into(), ..impolite() })),
    };
    let chunk = |from: usize| pb::SubmitJobRequest {
        item: Some(pb::submit_job_request::Item::Urls(pb::UrlChunk {
            urls: (from..from + 10_000).map(|i| format!("http://h{}.example/{i}", i % 20)).collect(),
            ..Default::default()
        })),
    };
    let open_stream = || {
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::SubmitJobRequest>(1);
        let mut c = client.clone();
        let call = tokio::spawn(async move { c.submit_job(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
        (tx, call)
    };

    let (tx, call) = open_stream();
    tx.send(options("streamed")).await.unwrap();
    // Enough for a full batch in every lane of hosts.
    for from in (0..50_000).step_by(10_000) {
        tx.send(chunk(from)).await.unwrap();
    }
    eventually(Duration::from_secs(30), "URLs stored while the stream is still open", || async {
        (db.scalar("SELECT COUNT(*) FROM job_urls").await >= 10_000).then_some(())
    })
    .await;
    assert_eq!(db.scalar("SELECT COUNT(*) FROM jobs WHERE state = 'receiving'").await, 1);
    let req = urlfleet_tests::conformance::lease_req("w");
    let early = store.acquire_lease(&req).await.unwrap().expect("URLs already stored are leased at once");
    // A lane's first batch is small: its hosts may have fewer stored than a lease's 100 yet.
    assert!((1..=100).contains(&early.urls.len()), "{}", early.urls.len());
    tx.send(chunk(45_000)).await.unwrap(); // half of it repeats the previous chunk
    drop(tx);
    let job = call.await.unwrap().unwrap().into_inner().job.unwrap();
    let counts = job.counts.unwrap();
    assert_eq!((counts.received, counts.total, counts.duplicates), (60_000, 55_000, 5_000));
    assert_eq!(job.state, pb::JobState::Running as i32, "it was being checked before its stream ended");
    assert_eq!(job.priority, pb::Priority::Low as i32, "55,000 URLs are a low-priority job");
    assert_eq!(db.scalar("SELECT COUNT(*) FROM job_urls").await, 55_000);
    assert!(store.acquire_lease(&req).await.unwrap().is_some(), "a sealed job is leased on");

    // A submission that breaks mid-stream (here: options sent twice) leaves nothing behind.
    let (tx, call) = open_stream();
    tx.send(options("abandoned")).await.unwrap();
    for from in (100_000..150_000).step_by(10_000) {
        tx.send(chunk(from)).await.unwrap();
    }
    eventually(Duration::from_secs(30), "the second submission being stored", || async {
        (db.scalar("SELECT COUNT(*) FROM job_urls").await > 55_000).then_some(())
    })
    .await;
    tx.send(options("again")).await.unwrap();
    drop(tx);
    let refused = call.await.unwrap().unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    eventually(Duration::from_secs(30), "the broken submission discarded", || async {
        let jobs = db.scalar("SELECT COUNT(*) FROM jobs").await;
        let rows = db.scalar("SELECT COUNT(*) FROM job_urls").await;
        let pending = db.scalar("SELECT CAST(COALESCE(SUM(pending), 0) AS BIGINT) FROM hosts").await;
        (jobs == 1 && rows == 55_000 && pending <= 55_000).then_some(())
    })
    .await;
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_waits_for_its_not_before_or_for_the_delay_its_size_asks_for() {
    let db = TestDb::fresh(Backend::Postgres).await;
    let coordinator = Coordinator::spawn(&db.url, |_| {}).await;
    let mut client = coordinator.client().await;
    let store = urlfleet_coordinator::store::connect(&db.url).await.unwrap();
    let req = urlfleet_tests::conformance::lease_req("w");
    let urls = |host: &str| (0..10).map(|i| format!("http://{host}/{i}")).collect::<Vec<_>>();
    let now = urlfleet_shared::time::now_ms();

    let delayed =
        submit(&mut client, &urls("delayed.example"), pb::JobOptions { delay_by_size: true, ..impolite() }).await;
    let delayed = delayed.unwrap().job.unwrap();
    let waited = delayed.not_before_ms - now;
    assert!((59_000..=61_000).contains(&waited), "10 URLs wait about a minute, not {waited} ms");
    let later = pb::JobOptions { not_before_ms: now + 3_600_000, ..impolite() };
    let later = submit(&mut client, &urls("later.example"), later).await.unwrap().job.unwrap();
    assert_eq!(later.not_before_ms, now + 3_600_000);
    assert!(store.acquire_lease(&req).await.unwrap().is_none(), "neither job is due");

    let due = pb::JobOptions { not_before_ms: now - 1, ..impolite() };
    let due = submit(&mut client, &urls("due.example"), due).await.unwrap().job.unwrap();
    let lease = store.acquire_lease(&req).await.unwrap().expect("a job whose time has come is leased");
    assert_eq!((lease.host.as_str(), lease.jobs.as_slice()), ("due.example", [due.id].as_slice()));
    coordinator.stop().await;
}

/// The first message of a submission with the idempotency key `key`.
fn keyed_options(key: &str) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest {
        item: Some(pb::submit_job_request::Item::Options(pb::JobOptions {
            name: "retried".into(),
            idempotency_key: key.into(),
            ..impolite()
        })),
    }
}

/// A chunk of `n` URLs numbered from `from`, spread over `hosts` hosts.
fn url_chunk(from: usize, n: usize, hosts: usize) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest {
        item: Some(pb::submit_job_request::Item::Urls(pb::UrlChunk {
            urls: (from..from + n).map(|i| format!("http://h{}.example/{i}", i % hosts)).collect(),
            ..Default::default()
        })),
    }
}

/// An upload whose coordinator died (its job left `receiving`, its heartbeat stopped) blocks no
/// retry: a retry with its key through another coordinator discards it at once and takes its place,
/// instead of waiting for a reaper or answering `ABORTED`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_of_an_upload_whose_coordinator_died_takes_its_place_at_once() {
    let db = TestDb::fresh(Backend::Postgres).await;
    let coordinator = Coordinator::spawn(&db.url, |_| {}).await;
    // What a coordinator killed mid-upload leaves: a receiving job with its key and some URLs,
    // last shown alive longer ago than an upload may stay silent.
    let store = urlfleet_coordinator::store::connect(&db.url).await.unwrap();
    let options = urlfleet_coordinator::store::JobOptions {
        name: "retried".into(),
        idempotency_key: Some("orphan".into()),
        ..Default::default()
    };
    let new = urlfleet_coordinator::store::NewJob {
        options,
        priority: urlfleet_coordinator::store::Priority::Low,
        not_before_ms: 0,
        trace_parent: None,
        owner: String::new(),
    };
    let (orphan, _) = store.create_job(new).await.unwrap();
    let planned: Vec<_> = (0..50)
        .map(|i| urlfleet_coordinator::store::PlannedUrl::new(format!("http://h.example/{i}"), "h.example", i))
        .collect();
    store.add_urls(orphan.id, &planned, urlfleet_coordinator::store::RecheckPolicy::default()).await.unwrap();
    db.scalar(&format!(
        "UPDATE jobs SET created_at = created_at - 60000, touched_at = NULL WHERE id = {} RETURNING CAST(0 AS BIGINT)",
        orphan.id
    ))
    .await;

    let started = std::time::Instant::now();
    let whole: Vec<_> =
        std::iter::once(keyed_options("orphan")).chain((0..2).map(|i| url_chunk(i * 100, 100, 3))).collect();
    let retry = coordinator.client().await.submit_job(tokio_stream::iter(whole)).await.expect("the retry is taken");
    let job = retry.into_inner().job.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "at once, not after a reaper: {:?}", started.elapsed());
    assert_ne!(job.id, orphan.id);
    assert_eq!(job.counts.unwrap().total, 200);
    assert!(store.get_job(orphan.id).await.unwrap().is_none(), "the orphan is gone");
    db.assert_invariants().await;
    coordinator.stop().await;
}

/// A retry that arrives while its first attempt is still uploading waits for it, reading its own
/// messages meanwhile; when the first attempt is abandoned instead of sealed, the retry takes its
/// place with every URL it sent during the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_that_waited_for_an_abandoned_first_attempt_takes_its_place_whole() {
    let db = TestDb::fresh(Backend::Postgres).await;
    let coordinator = Coordinator::spawn(&db.url, |_| {}).await;
    let client = coordinator.client().await;
    let options = keyed_options("upload-2");
    let chunk = |from: usize| url_chunk(from, 1_000, 7);
    // The first attempt sends a chunk, then hangs.
    let hung = tokio_stream::iter([options.clone(), chunk(50_000)]).chain(futures::stream::pending());
    let mut c = client.clone();
    let first = tokio::spawn(async move { c.submit_job(hung).await });
    eventually(Duration::from_secs(10), "the first attempt under way", || async {
        (db.scalar("SELECT COUNT(*) FROM jobs WHERE state = 'receiving'").await > 0).then_some(())
    })
    .await;
    let first_job = db.scalar("SELECT MIN(id) FROM jobs").await;
    // The retry, whole, over the same connection; it waits for the first attempt to settle.
    let whole: Vec<_> = std::iter::once(options).chain((0..5).map(|i| chunk(i * 1_000))).collect();
    let mut c = client.clone();
    let retry = tokio::spawn(async move { c.submit_job(tokio_stream::iter(whole)).await });
    // Time for the retry to arrive, find the first attempt receiving, and read its own chunks while
    // it waits (all of them: they are far under the read-ahead bound).
    tokio::time::sleep(Duration::from_secs(1)).await;
    first.abort();
    let retry = retry.await.unwrap().unwrap().into_inner();
    assert!(!retry.deduplicated);
    let job = retry.job.unwrap();
    assert_ne!(job.id, first_job);
    assert_eq!(job.counts.unwrap().total, 5_000);
    assert_eq!(db.scalar("SELECT COUNT(*) FROM jobs").await, 1);
    assert_eq!(db.scalar("SELECT COUNT(*) FROM job_urls").await, 5_000);
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_its_client_gives_up_is_discarded_and_its_retry_makes_one_whole_job() {
    let db = TestDb::fresh(Backend::Postgres).await;
    let coordinator = Coordinator::spawn(&db.url, |_| {}).await;
    let client = coordinator.client().await;
    let options = keyed_options("upload-1");
    let chunk = |from: usize| url_chunk(from, 10_000, 20);
    // The whole upload, sent slowly: a chunk every 50 ms.
    let slow = move || {
        let messages: Vec<_> = std::iter::once(options.clone()).chain((0..30).map(|i| chunk(i * 10_000))).collect();
        futures::stream::unfold(messages.into_iter(), |mut rest| async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            rest.next().map(|m| (m, rest))
        })
    };
    let gave_up = || async {
        eventually(Duration::from_secs(30), "the abandoned upload discarded", || async {
            let jobs = db.scalar("SELECT COUNT(*) FROM jobs").await;
            let rows = db.scalar("SELECT COUNT(*) FROM job_urls").await;
            (jobs == 0 && rows == 0).then_some(())
        })
        .await;
    };

    // A deadline that ends the call mid-upload: nothing is sealed, the partial job goes.
    let mut request = tonic::Request::new(slow());
    request.set_timeout(Duration::from_millis(600));
    let e = client.clone().submit_job(request).await.unwrap_err();
    assert!(matches!(e.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled), "{e:?}");
    gave_up().await;

    // A client that drops the call mid-upload: the same.
    let mut c = client.clone();
    let upload = slow();
    let call = tokio::spawn(async move { c.submit_job(upload).await });
    eventually(Duration::from_secs(10), "the upload under way", || async {
        (db.scalar("SELECT COUNT(*) FROM job_urls").await > 0).then_some(())
    })
    .await;
    call.abort();
    gave_up().await;

    // A retry with the same key while a first attempt is still arriving gets the job that attempt
    // seals; an attempt after it gets the same job. One job, whole.
    let mut c = client.clone();
    let upload = slow();
    let first = tokio::spawn(async move { c.submit_job(upload).await });
    eventually(Duration::from_secs(10), "the first attempt under way", || async {
        (db.scalar("SELECT COUNT(*) FROM job_urls").await > 0).then_some(())
    })
    .await;
    let retry = client.clone().submit_job(slow()).await.unwrap().into_inner();
    let first = first.await.unwrap().unwrap().into_inner();
    assert!(!first.deduplicated && retry.deduplicated);
    let job = first.job.unwrap();
    assert_eq!(retry.job.unwrap().id, job.id);
    assert_eq!(job.counts.unwrap().total, 300_000);
    let again = client.clone().submit_job(slow()).await.unwrap().into_inner();
    assert_eq!((again.job.unwrap().id, again.deduplicated), (job.id, true));
    assert_eq!(db.scalar("SELECT COUNT(*) FROM jobs").await, 1);
    assert_eq!(db.scalar("SELECT COUNT(*) FROM job_urls").await, 300_000);
    coordinator.stop().await;
}
