//! The trust boundary, attacked with a raw gRPC client: forged verdicts, a frozen host, starved
//! workers, a stolen identity, an oversized heartbeat, a huge error string, and every role's limits.
//! Each attack fails; each test also shows the honest path still works.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use urlfleet_shared::proto::v1::worker_service_client::WorkerServiceClient;
use urlfleet_shared::proto::v1::{self as pb, coordinator_message::Msg as In, worker_message::Msg as Out};
use urlfleet_tests::cluster::{all_results, impolite, submit, wait_done};
use urlfleet_tests::{Backend, Coordinator, Fixture, TestDb, Worker, eventually};

/// A worker session driven by hand.
struct Raw {
    tx: mpsc::Sender<pb::WorkerMessage>,
    rx: tonic::Streaming<pb::CoordinatorMessage>,
}

fn with_token(token: Option<&str>) -> impl tonic::service::Interceptor + Clone + use<> {
    let value: Option<tonic::metadata::AsciiMetadataValue> = token.map(|t| format!("Bearer {t}").parse().unwrap());
    move |mut r: tonic::Request<()>| {
        if let Some(v) = &value {
            r.metadata_mut().insert("authorization", v.clone());
        }
        Ok(r)
    }
}

async fn channel(addr: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(addr.to_string()).unwrap().connect().await.unwrap()
}

impl Raw {
    async fn open(addr: &str, token: Option<&str>, worker_id: &str) -> Result<Self, tonic::Status> {
        let mut client = WorkerServiceClient::with_interceptor(channel(addr).await, with_token(token))
            .max_encoding_message_size(64 * 1024 * 1024);
        let (tx, rx) = mpsc::channel(16);
        let hello = pb::Hello { worker_id: worker_id.into(), version: "raw".into(), capacity: 1 };
        tx.send(pb::WorkerMessage { msg: Some(Out::Hello(hello)) }).await.unwrap();
        let mut rx = client.work(ReceiverStream::new(rx)).await?.into_inner();
        match rx.message().await?.and_then(|m| m.msg) {
            Some(In::Welcome(_)) => Ok(Self { tx, rx }),
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    async fn send(&self, msg: Out) {
        self.tx.send(pb::WorkerMessage { msg: Some(msg) }).await.unwrap();
    }

    async fn next(&mut self) -> Result<In, tonic::Status> {
        let m = tokio::time::timeout(Duration::from_secs(20), self.rx.message())
            .await
            .expect("the coordinator answers")?
            .expect("the stream stays open");
        Ok(m.msg.expect("a message"))
    }

    async fn lease(&mut self) -> pb::Lease {
        loop {
            if let In::Lease(l) = self.next().await.unwrap() {
                return l;
            }
        }
    }

    async fn report(&mut self, batch_id: u64, results: Vec<pb::CheckResult>) -> pb::Ack {
        self.send(Out::Results(pb::ResultBatch { batch_id, results })).await;
        loop {
            if let In::Ack(a) = self.next().await.unwrap() {
                assert_eq!(a.batch_id, batch_id);
                return a;
            }
        }
    }
}

fn verdict(lease: &pb::Lease, url_id: i64, status: u32) -> pb::CheckResult {
    pb::CheckResult {
        lease_id: lease.id,
        epoch: lease.epoch,
        url_id,
        kind: if status < 400 { pb::OutcomeKind::Ok } else { pb::OutcomeKind::Broken } as i32,
        status,
        attempts: 1,
        checked_at_ms: urlfleet_shared::time::now_ms(),
        ..Default::default()
    }
}

/// 2036-02-01, as the forging client dated its verdicts.
const IN_2036: i64 = 2_085_000_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_verdicts_for_urls_never_leased_are_refused_and_the_urls_are_checked_for_real() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let site = Fixture::local().await;
    let coordinator = Coordinator::spawn(&db.url, |_| {}).await;
    let mut client = coordinator.client().await;
    let urls: Vec<String> = (0..3).map(|i| site.url(&format!("/status/404?n={i}"))).collect();
    let id = submit(&mut client, &urls, impolite()).await.unwrap().job.unwrap().id;

    // No credits: nothing is leased to the forger. It reports anyway, under a lease that never was.
    let mut evil = Raw::open(&coordinator.addr, None, "evil").await.unwrap();
    let forged = pb::Lease { id: 999_999, epoch: 1, ..Default::default() };
    let results =
        (1..=3).map(|url_id| pb::CheckResult { checked_at_ms: IN_2036, ..verdict(&forged, url_id, 200) }).collect();
    let ack = evil.report(1, results).await;
    assert_eq!(ack.refused.len(), 3, "{ack:?}");
    assert!(ack.refused.iter().all(|r| r.reason == "no_such_lease"), "{ack:?}");
    let job = client.get_job(pb::GetJobRequest { id }).await.unwrap().into_inner();
    assert_eq!(job.counts.unwrap().checked, 0, "nothing forged was counted");
    assert!(site.seen().is_empty());

    // The honest path: a real worker checks them, and they are broken.
    let worker = Worker::spawn(&coordinator.addr, |_| {});
    let done = wait_done(&mut client, id, Duration::from_secs(20)).await;
    assert_eq!(done.counts.unwrap().broken, 3);
    assert_eq!(site.count("/status/404"), 3);
    worker.stop().await;
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_can_neither_date_its_verdict_in_the_future_nor_freeze_its_host() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let site = Fixture::local().await;
    let coordinator = Coordinator::spawn(&db.url, |c| c.max_host_pause = Duration::from_secs(2)).await;
    let mut client = coordinator.client().await;
    let urls = vec![site.url("/status/404?a"), site.url("/status/404?b")];
    let id = submit(&mut client, &urls, impolite()).await.unwrap().job.unwrap().id;

    let mut evil = Raw::open(&coordinator.addr, None, "evil").await.unwrap();
    evil.send(Out::Credits(pb::Credits { urls: 10 })).await;
    let lease = evil.lease().await;
    assert_eq!(lease.urls.len(), 2);
    let before = urlfleet_shared::time::now_ms();
    let year_2100 = 4_102_444_800_000;
    // One per batch: a message holds at most 16 MiB.
    for (n, u) in lease.urls.iter().enumerate() {
        let forged = pb::CheckResult {
            checked_at_ms: IN_2036,
            host_paused_until_ms: year_2100,
            error: "x".repeat(15 * 1024 * 1024),
            ..verdict(&lease, u.url_id, 200)
        };
        let ack = evil.report(n as u64, vec![forged]).await;
        assert!(ack.refused.is_empty(), "the holder's results count: {ack:?}");
    }
    let after = urlfleet_shared::time::now_ms();
    let paused_until = db.scalar("SELECT MAX(next_allowed_at) FROM hosts").await;
    assert!(paused_until <= after + 2_000, "the pause is capped: {paused_until} > {after} + 2 s");
    let stored = all_results(&mut client, id).await;
    assert_eq!(stored.len(), urls.len(), "every URL has its result");
    for r in &stored {
        assert!((before..=after).contains(&r.checked_at_ms), "dated by the coordinator: {}", r.checked_at_ms);
        assert!(r.error.len() <= 2_048, "a 15 MiB error is cut, not stored: {}", r.error.len());
    }
    drop(evil);

    // A forced re-check overwrites the forged verdicts, and the host is not frozen for it.
    let worker = Worker::spawn(&coordinator.addr, |_| {});
    let options = pb::JobOptions { force: true, name: "again".into(), ..impolite() };
    let again = submit(&mut client, &urls, options).await.unwrap().job.unwrap().id;
    let done = wait_done(&mut client, again, Duration::from_secs(20)).await;
    assert_eq!(done.counts.unwrap().broken, 2);
    let rechecked = all_results(&mut client, again).await;
    assert_eq!(rechecked.len(), urls.len());
    assert!(rechecked.iter().all(|r| r.status == 404), "the re-check is the real one");
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM latest_checks WHERE status = 404").await,
        2,
        "the latest state is the real one"
    );
    // The first job's results stay what that job saw (its own checks, under its lease).
    let first = all_results(&mut client, id).await;
    assert_eq!(first.len(), urls.len());
    assert!(first.iter().all(|r| r.status == 200));
    worker.stop().await;
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_cannot_hold_leases_past_their_lifetime_and_credits_are_bounded() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let site = Fixture::local().await;
    let coordinator = Coordinator::spawn(&db.url, |c| {
        c.lease_ttl = Duration::from_secs(2);
        c.max_lease_life = Duration::from_secs(4);
        c.max_worker_credits = 50;
        c.max_lease_attempts = 10;
    })
    .await;
    let mut client = coordinator.client().await;
    let urls: Vec<String> = (0..120).map(|i| site.url(&format!("/status/200?n={i}"))).collect();
    let id = submit(&mut client, &urls, impolite()).await.unwrap().job.unwrap().id;

    let mut evil = Raw::open(&coordinator.addr, None, "hoarder").await.unwrap();
    let mut held = Vec::new();
    let mut leases = Vec::new();
    // Takes what is leased, and keeps every lease so far alive.
    async fn drain(raw: &mut Raw, leases: &mut Vec<pb::Lease>) {
        while let Ok(Ok(In::Lease(l))) = tokio::time::timeout(Duration::from_millis(300), raw.next()).await {
            leases.push(l);
        }
        raw.send(Out::Heartbeat(pb::Heartbeat {
            lease_ids: leases.iter().map(|l| l.id).collect(),
            sequence: 0,
            ..Default::default()
        }))
        .await;
    }
    // Credits again and again: what is in hand counts against the bound too.
    for _ in 0..3 {
        evil.send(Out::Credits(pb::Credits { urls: u32::MAX })).await;
        drain(&mut evil, &mut leases).await;
    }
    // Junk results under a held lease (URLs it never held, repeated) free nothing in hand.
    let first = leases[0].clone();
    let junk = (0..200).map(|i| verdict(&first, 1_000_000 + i % 7, 200)).collect();
    let ack = evil.report(99, junk).await;
    assert_eq!(ack.refused.len(), 200);
    evil.send(Out::Credits(pb::Credits { urls: u32::MAX })).await;
    drain(&mut evil, &mut leases).await;
    // Nor does a second session under the same id that adopts the leases by heartbeat.
    let mut twin = Raw::open(&coordinator.addr, None, "hoarder").await.unwrap();
    twin.send(Out::Heartbeat(pb::Heartbeat {
        lease_ids: leases.iter().map(|l| l.id).collect(),
        sequence: 0,
        ..Default::default()
    }))
    .await;
    twin.send(Out::Credits(pb::Credits { urls: u32::MAX })).await;
    drain(&mut twin, &mut leases).await;
    let leased: usize = leases.iter().map(|l| l.urls.len()).sum();
    held.extend(leases.iter().map(|l| l.id));
    assert!(leased > 0 && leased <= 50, "what a worker holds is bounded by --max-worker-credits: {leased} URLs");
    // Renewing forever, reporting nothing.
    let hoarder = tokio::spawn(async move {
        loop {
            evil.send(Out::Heartbeat(pb::Heartbeat { lease_ids: held.clone(), sequence: 0, ..Default::default() }))
                .await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let worker = Worker::spawn(&coordinator.addr, |_| {});
    let done = wait_done(&mut client, id, Duration::from_secs(30)).await;
    assert_eq!(done.counts.unwrap().ok, 120, "the hoarded URLs went back to the frontier and were checked");
    hoarder.abort();
    worker.stop().await;
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_session_under_a_workers_id_cannot_end_its_leases() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let site = Fixture::local().await;
    let coordinator = Coordinator::spawn(&db.url, |_| {}).await;
    let mut client = coordinator.client().await;
    let urls: Vec<String> = (0..12).map(|i| site.url(&format!("/delay/300?n={i}"))).collect();
    let options = pb::JobOptions {
        politeness: Some(pb::HostPolicy { concurrency: Some(2), interval_ms: Some(0) }),
        ..Default::default()
    };
    let id = submit(&mut client, &urls, options).await.unwrap().job.unwrap().id;
    let worker = Worker::spawn(&coordinator.addr, |c| c.worker_id = Some("w1".into()));
    eventually(Duration::from_secs(10), "the worker holds the lease", || {
        let mut client = client.clone();
        async move { (client.get_job(pb::GetJobRequest { id }).await.ok()?.into_inner().counts?.leased > 0).then_some(()) }
    })
    .await;
    // An impostor says hello with the worker's id, then goes away.
    let impostor = Raw::open(&coordinator.addr, None, "w1").await.unwrap();
    drop(impostor);
    let done = wait_done(&mut client, id, Duration::from_secs(30)).await;
    assert_eq!(done.counts.unwrap().ok, 12);
    for u in &urls {
        let path = u.trim_start_matches(&format!("http://{}", site.addr()));
        let times = site.seen().iter().filter(|s| s.path == path).count();
        assert_eq!(times, 1, "{path} was checked {times} times: the impostor ended the worker's lease");
    }
    worker.stop().await;
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_over_its_bound_ends_the_session_at_once() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let coordinator = Coordinator::spawn(&db.url, |_| {}).await;
    let mut evil = Raw::open(&coordinator.addr, None, "flood").await.unwrap();
    let started = std::time::Instant::now();
    evil.send(Out::Heartbeat(pb::Heartbeat { lease_ids: (0..1_000_000).collect(), sequence: 0, ..Default::default() }))
        .await;
    let ended = loop {
        match evil.next().await {
            Err(status) => break status,
            Ok(_) => continue,
        }
    };
    assert_eq!(ended.code(), Code::InvalidArgument, "{ended:?}");
    assert!(ended.message().contains("--max-worker-credits"), "{ended:?}");
    eprintln!("a 1,000,000-lease heartbeat was refused in {:?}", started.elapsed());
    // The honest path: a heartbeat within the bound keeps the session, which goes on leasing.
    let site = Fixture::local().await;
    let mut client = coordinator.client().await;
    submit(&mut client, &[site.url("/status/200")], impolite()).await.unwrap();
    let mut honest = Raw::open(&coordinator.addr, None, "honest").await.unwrap();
    honest
        .send(Out::Heartbeat(pb::Heartbeat { lease_ids: (0..60_000).collect(), sequence: 0, ..Default::default() }))
        .await;
    honest.send(Out::Credits(pb::Credits { urls: 1 })).await;
    assert_eq!(honest.lease().await.urls.len(), 1, "the session lives on after a heartbeat within the bound");
    coordinator.stop().await;
}

const TOKENS: &str = "worker fleet wwwwwwwwwwwwwwwwwwww;worker thief tttttttttttttttttttt;\
                      submitter seo ssssssssssssssssssss;submitter rival rrrrrrrrrrrrrrrrrrrr;\
                      admin ops aaaaaaaaaaaaaaaaaaaa";

fn jobs_client(
    channel: tonic::transport::Channel,
    token: Option<&str>,
) -> pb::job_service_client::JobServiceClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        impl tonic::service::Interceptor + Clone,
    >,
> {
    pb::job_service_client::JobServiceClient::with_interceptor(channel, with_token(token))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_gate_every_service_by_role_and_owner() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let site = Fixture::local().await;
    let coordinator = Coordinator::spawn(&db.url, |c| c.tokens_inline = Some(TOKENS.into())).await;
    let ch = channel(&coordinator.addr).await;
    let addr = coordinator.addr.as_str();

    // No token, a wrong one, the wrong role.
    let list = pb::ListJobsRequest::default();
    let code = |r: Result<tonic::Response<pb::ListJobsResponse>, tonic::Status>| r.unwrap_err().code();
    assert_eq!(code(jobs_client(ch.clone(), None).list_jobs(list.clone()).await), Code::Unauthenticated);
    let wrong = Some("ssssssssssssssssssst");
    assert_eq!(code(jobs_client(ch.clone(), wrong).list_jobs(list.clone()).await), Code::Unauthenticated);
    let worker_token = Some("wwwwwwwwwwwwwwwwwwww");
    assert_eq!(code(jobs_client(ch.clone(), worker_token).list_jobs(list.clone()).await), Code::PermissionDenied);
    assert_eq!(Raw::open(addr, None, "w").await.err().unwrap().code(), Code::Unauthenticated);
    let submitter_on_work = Raw::open(addr, Some("ssssssssssssssssssss"), "w").await.err().unwrap();
    assert_eq!(submitter_on_work.code(), Code::PermissionDenied);
    // Health stays open.
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();

    // A submitter's job is its own.
    let mut seo = jobs_client(ch.clone(), Some("ssssssssssssssssssss"));
    let mut rival = jobs_client(ch.clone(), Some("rrrrrrrrrrrrrrrrrrrr"));
    let mut ops = jobs_client(ch.clone(), Some("aaaaaaaaaaaaaaaaaaaa"));
    let urls = vec![site.url("/status/200?x"), site.url("/status/404?y")];
    let msgs = |key: &str| {
        let options = pb::JobOptions { idempotency_key: key.into(), ..impolite() };
        tokio_stream::iter(vec![
            pb::SubmitJobRequest { item: Some(pb::submit_job_request::Item::Options(options)) },
            pb::SubmitJobRequest {
                item: Some(pb::submit_job_request::Item::Urls(pb::UrlChunk {
                    urls: urls.clone(),
                    ..Default::default()
                })),
            },
        ])
    };
    let job = seo.submit_job(msgs("k1")).await.unwrap().into_inner().job.unwrap();
    assert_eq!(job.owner, "seo");
    let id = job.id;
    assert_eq!(rival.get_job(pb::GetJobRequest { id }).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(rival.cancel_job(pb::CancelJobRequest { id }).await.unwrap_err().code(), Code::NotFound);
    let read = pb::ListResultsRequest { job_id: id, ..Default::default() };
    assert_eq!(rival.list_results(read.clone()).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(rival.watch_job(pb::WatchJobRequest { id }).await.unwrap_err().code(), Code::NotFound);
    assert!(rival.list_jobs(list.clone()).await.unwrap().into_inner().jobs.is_empty());
    // The same idempotency key (and the same list) is another owner's own job, not seo's.
    let theirs = rival.submit_job(msgs("k1")).await.unwrap().into_inner();
    assert!(!theirs.deduplicated && theirs.job.as_ref().unwrap().id != id, "{theirs:?}");
    assert_eq!(seo.submit_job(msgs("k1")).await.unwrap().into_inner().job.unwrap().id, id, "seo's key is seo's");
    assert_eq!(ops.list_jobs(list.clone()).await.unwrap().into_inner().jobs.len(), 2, "an admin sees every job");

    // Another worker token cannot report for the fleet's lease.
    let mut fleet = Raw::open(addr, Some("wwwwwwwwwwwwwwwwwwww"), "w1").await.unwrap();
    fleet.send(Out::Credits(pb::Credits { urls: 1 })).await;
    let lease = fleet.lease().await;
    let mut thief = Raw::open(addr, Some("tttttttttttttttttttt"), "w1").await.unwrap();
    let ack = thief.report(1, vec![verdict(&lease, lease.urls[0].url_id, 200)]).await;
    assert_eq!(ack.refused[0].reason, "not_holder", "{ack:?}");
    drop(thief);
    // The honest holder's verdict counts.
    let ack = fleet.report(1, vec![verdict(&lease, lease.urls[0].url_id, 200)]).await;
    assert!(ack.refused.is_empty(), "{ack:?}");
    drop(fleet);

    // A real worker with its token finishes the jobs; seo reads its results.
    let worker = Worker::spawn(addr, |c| c.auth.token = Some("wwwwwwwwwwwwwwwwwwww".into()));
    let mut done = None;
    for _ in 0..200 {
        let j = seo.get_job(pb::GetJobRequest { id }).await.unwrap().into_inner();
        if j.state == pb::JobState::Completed as i32 {
            done = Some(j);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(done.expect("the job completes").counts.unwrap().checked, 2);
    let mut stream = seo.list_results(read).await.unwrap().into_inner();
    let mut n = 0;
    while let Some(r) = tokio_stream::StreamExt::next(&mut stream).await {
        r.unwrap();
        n += 1;
    }
    assert_eq!(n, 2);
    assert_eq!(seo.cancel_job(pb::CancelJobRequest { id }).await.unwrap().into_inner().id, id);
    worker.stop().await;
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_without_tokens_serves_only_loopback_unless_told() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let store = urlfleet_coordinator::store::connect(&db.url).await.unwrap();
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let config = urlfleet_coordinator::CoordinatorConfig::new(listener.local_addr().unwrap(), db.url.clone());
    let e = urlfleet_coordinator::run(listener, store, config, async {}).await.unwrap_err();
    assert!(e.to_string().contains("--allow-unauthenticated"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departing_worker_gives_its_leases_back_before_their_ttl_under_its_token() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let site = Fixture::local().await;
    let coordinator = Coordinator::spawn(&db.url, |c| {
        c.tokens_inline = Some(TOKENS.into());
        c.lease_ttl = Duration::from_secs(20);
    })
    .await;
    let ch = channel(&coordinator.addr).await;
    let mut seo = jobs_client(ch, Some("ssssssssssssssssssss"));
    let urls: Vec<String> = (0..4).map(|i| site.url(&format!("/status/200?n={i}"))).collect();
    let options = pb::JobOptions { name: "leave".into(), ..impolite() };
    let msgs = vec![
        pb::SubmitJobRequest { item: Some(pb::submit_job_request::Item::Options(options)) },
        pb::SubmitJobRequest {
            item: Some(pb::submit_job_request::Item::Urls(pb::UrlChunk { urls, ..Default::default() })),
        },
    ];
    let id = seo.submit_job(tokio_stream::iter(msgs)).await.unwrap().into_inner().job.unwrap().id;
    let mut fleet = Raw::open(&coordinator.addr, Some("wwwwwwwwwwwwwwwwwwww"), "leaver").await.unwrap();
    fleet.send(Out::Credits(pb::Credits { urls: 10 })).await;
    let lease = fleet.lease().await;
    assert_eq!(lease.urls.len(), 4);
    drop(fleet);
    // Not after the 20 s TTL: the session's end gave the lease back, once the worker's confirmation
    // window (three 2 s heartbeat intervals) was over.
    let worker = Worker::spawn(&coordinator.addr, |c| c.auth.token = Some("wwwwwwwwwwwwwwwwwwww".into()));
    let mut done = false;
    for _ in 0..150 {
        let j = seo.get_job(pb::GetJobRequest { id }).await.unwrap().into_inner();
        if j.state == pb::JobState::Completed as i32 {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(done, "the departed worker's lease was not given back");
    worker.stop().await;
    coordinator.stop().await;
}
