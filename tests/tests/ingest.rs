//! Result ingestion through the coordinator's pipeline: chunking, exactly-once effect, and surviving
//! a database that drops every connection mid-job.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use urlfleet_coordinator::ingest::{IngestConfig, Ingestor};
use urlfleet_coordinator::store::{LeaseRequest, PlannedUrl, RecheckPolicy, Store};
use urlfleet_shared::ReportedResult;
use urlfleet_shared::outcome::Refusal;
use urlfleet_shared::proto::v1 as pb;
use urlfleet_shared::{CheckOutcome, OutcomeKind};
use urlfleet_tests::cluster::{all_results, stored_job, submit, wait_done};
use urlfleet_tests::{Backend, Coordinator, Fixture, TestDb, Worker, eventually};

async fn many_rows_cross_many_chunks(backend: Backend) {
    const N: usize = 100_000;
    let db = TestDb::fresh(backend).await;
    let store: Arc<dyn Store> = urlfleet_coordinator::store::connect(&db.url).await.unwrap();
    let urls: Vec<PlannedUrl> = (0..N)
        .map(|i| PlannedUrl::new(format!("http://h{}.example/{i}", i % 50), format!("h{}.example", i % 50), i as u64))
        .collect();
    let recheck = RecheckPolicy { force: false, recheck_after: Duration::ZERO, recheck_broken_after: Duration::ZERO };
    let job = stored_job(store.as_ref(), "many", urlfleet_shared::Priority::Low, &urls, recheck).await;
    let mut leased = Vec::new();
    let req = LeaseRequest {
        worker_id: "w".into(),
        max_urls: 2_000,
        max_urls_lifted: 2_000,
        lifted_room: u64::MAX,
        ttl: Duration::from_secs(600),
        politeness: None,
    };
    while let Some(l) = store.acquire_lease(&req).await.unwrap() {
        leased.extend(l.urls.iter().map(|(id, _)| (l.id, l.epoch, *id)));
    }
    assert_eq!(leased.len(), N);
    let now = urlfleet_shared::time::now_ms();
    let results: Vec<ReportedResult> = leased
        .iter()
        .map(|(lease, epoch, id)| {
            let mut o = CheckOutcome::error(OutcomeKind::from_status(200, 0), "", 1);
            o.error = None;
            o.status = Some(200);
            o.checked_at_ms = now;
            ReportedResult { reporter: "w".into(), lease_id: *lease, epoch: *epoch, url_id: *id, outcome: o }
        })
        .collect();
    let shutdown = CancellationToken::new();
    let config = IngestConfig { chunk_rows: 1_000, ..IngestConfig::default() };
    let ingestor = Ingestor::start(store.clone(), config, shutdown.clone());
    // Every batch twice, all in flight: chunks interleave, the replay changes nothing.
    let mut inflight = futures::stream::FuturesUnordered::new();
    for round in 0..2 {
        for batch in results.chunks(500) {
            let (ingestor, batch) = (ingestor.clone(), batch.to_vec());
            inflight.push(async move { (round, ingestor.submit(batch).await) });
        }
    }
    while let Some((_, r)) = inflight.next().await {
        r.expect("committed");
    }
    assert_eq!(ingestor.backlog(), 0);
    shutdown.cancel();
    let done = store.get_job(job.id).await.unwrap().unwrap();
    assert_eq!((done.counts.checked, done.counts.ok, done.counts.leased), (N as u64, N as u64, 0));
    assert_eq!(done.state, urlfleet_coordinator::store::JobState::Completed);
    assert_eq!(db.scalar("SELECT COUNT(*) FROM checks").await, N as i64, "every row exactly once");
    assert_eq!(db.scalar("SELECT COUNT(*) FROM latest_checks").await, N as i64);
    assert_eq!(db.scalar("SELECT COUNT(*) FROM job_urls WHERE state = 'done'").await, N as i64);
    assert_eq!(db.scalar("SELECT COUNT(*) FROM leases WHERE active").await, 0, "every lease ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100k_row_ingest_crosses_many_chunks_with_every_row_once_on_sqlite() {
    many_rows_cross_many_chunks(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100k_row_ingest_crosses_many_chunks_with_every_row_once_on_postgres() {
    many_rows_cross_many_chunks(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropping_every_database_connection_mid_job_loses_nothing() {
    let db = TestDb::fresh(Backend::Postgres).await;
    let sites = [Fixture::local().await, Fixture::start([127, 0, 0, 5].into()).await];
    let coordinator = Coordinator::spawn(&db.url, |c| c.lease_size = 50).await;
    let worker = Worker::spawn(&coordinator.addr, |_| {});
    let urls: Vec<String> = (0..3_000).map(|i| sites[i % 2].url(&format!("/delay/2?n={i}"))).collect();
    let mut client = coordinator.client().await;
    let options = pb::JobOptions {
        politeness: Some(pb::HostPolicy { concurrency: Some(16), interval_ms: Some(0) }),
        ..Default::default()
    };
    let id = submit(&mut client, &urls, options).await.unwrap().job.unwrap().id;

    // Kill every backend of the test database, several times, while results stream in.
    let admin = urlfleet_tests::db::postgres_url();
    let name = db.url.rsplit('/').next().unwrap().split('?').next().unwrap().to_string();
    for kills in 0..4 {
        eventually(Duration::from_secs(30), "progress between kills", || {
            let mut client = client.clone();
            let want = 300 * (kills + 1);
            async move {
                let j = client.get_job(pb::GetJobRequest { id }).await.ok()?.into_inner();
                (j.counts?.checked >= want as u64 || j.state == pb::JobState::Completed as i32).then_some(())
            }
        })
        .await;
        let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await.unwrap();
        let killed: Vec<(bool,)> = sqlx::query_as(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&name)
        .fetch_all(&mut c)
        .await
        .unwrap();
        assert!(!killed.is_empty(), "the coordinator had connections to kill");
    }

    let job = wait_done(&mut client, id, Duration::from_secs(120)).await;
    let c = job.counts.unwrap();
    assert_eq!(job.state, pb::JobState::Completed as i32);
    assert_eq!((c.total, c.checked, c.ok, c.failed, c.leased), (3_000, 3_000, 3_000, 0, 0));
    let results = all_results(&mut client, id).await;
    assert_eq!(results.len(), 3_000);
    assert!(results.iter().all(|r| r.status == 200));
    assert_eq!(db.scalar("SELECT COUNT(DISTINCT url_id) FROM checks").await, 3_000);
    worker.stop().await;
    coordinator.stop().await;
}

async fn a_forged_result_is_refused_without_holding_back_the_other_batches(backend: Backend) {
    let db = TestDb::fresh(backend).await;
    let store: Arc<dyn Store> = urlfleet_coordinator::store::connect(&db.url).await.unwrap();
    let urls: Vec<PlannedUrl> =
        (0..4).map(|i| PlannedUrl::new(format!("http://a.example/{i}"), "a.example", i as u64)).collect();
    let recheck = RecheckPolicy { force: true, recheck_after: Duration::ZERO, recheck_broken_after: Duration::ZERO };
    let job = stored_job(store.as_ref(), "bad", urlfleet_shared::Priority::High, &urls, recheck).await;
    let req = LeaseRequest {
        worker_id: "w".into(),
        max_urls: 10,
        max_urls_lifted: 10,
        lifted_room: u64::MAX,
        ttl: Duration::from_secs(600),
        politeness: None,
    };
    let lease = store.acquire_lease(&req).await.unwrap().unwrap();
    let now = urlfleet_shared::time::now_ms();
    let result = |url_id: i64| {
        let mut o = CheckOutcome::error(OutcomeKind::from_status(200, 0), "", 1);
        o.error = None;
        o.status = Some(200);
        o.checked_at_ms = now;
        ReportedResult { reporter: "w".into(), lease_id: lease.id, epoch: lease.epoch, url_id, outcome: o }
    };
    let shutdown = CancellationToken::new();
    // A long flush delay puts every batch into one chunk.
    let config = IngestConfig { flush_after: Duration::from_millis(300), ..IngestConfig::default() };
    let ingestor = Ingestor::start(store.clone(), config, shutdown.clone());
    let good: Vec<ReportedResult> = lease.urls.iter().map(|(id, _)| result(*id)).collect();
    let (a, bad, b) = tokio::join!(
        ingestor.submit(good[..2].to_vec()),
        ingestor.submit(vec![result(987_654)]),
        ingestor.submit(good[2..].to_vec()),
    );
    assert!(a.is_ok() && b.is_ok(), "the good batches commit: {a:?} {b:?}");
    let refused: Vec<_> = bad.unwrap().refused.into_iter().map(|r| (r.url_id, r.reason)).collect();
    assert!(refused.contains(&(987_654, Refusal::NotInLease)), "a result for a URL the lease never held is refused");
    assert_eq!(store.get_job(job.id).await.unwrap().unwrap().counts.checked, 4);
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_result_is_refused_without_holding_back_the_other_batches_on_sqlite() {
    a_forged_result_is_refused_without_holding_back_the_other_batches(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_result_is_refused_without_holding_back_the_other_batches_on_postgres() {
    a_forged_result_is_refused_without_holding_back_the_other_batches(Backend::Postgres).await;
}
