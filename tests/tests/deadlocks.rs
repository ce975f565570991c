//! Every path of the store under contention at once on PostgreSQL — overlapping submissions,
//! re-submission of a running job's URL set, uploads abandoned mid-stream, cancels, two coordinators
//! leasing and ingesting for three workers, and a worker killed so that the reaper runs: every job
//! ends, no deadlock reaches a client (the cancel, the submissions), and PostgreSQL's own deadlock
//! counter for the test's database stays at 0: the lock order in `docs/ARCHITECTURE.md` leaves no
//! cycle (lock waits and any deadlock's details are in the server's log, `log_lock_waits`).

use std::time::Duration;

use sqlx::Connection;
use urlfleet_shared::proto::v1 as pb;
use urlfleet_tests::cluster::{impolite, submit};
use urlfleet_tests::{Backend, Coordinator, Fixture, TestDb, Worker, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_path_at_once_ends_without_a_deadlock() {
    let db = TestDb::fresh(Backend::Postgres).await;
    let name = db.url.rsplit('/').next().unwrap().to_string();
    {
        let mut admin = sqlx::PgConnection::connect(&urlfleet_tests::db::postgres_url()).await.unwrap();
        for setting in ["log_lock_waits = on", "deadlock_timeout = '100ms'"] {
            sqlx::query(sqlx::AssertSqlSafe(format!("ALTER DATABASE {name} SET {setting}")))
                .execute(&mut admin)
                .await
                .unwrap();
        }
    }
    let tweak = |c: &mut urlfleet_coordinator::CoordinatorConfig| {
        c.lease_ttl = Duration::from_secs(1);
        c.reap_interval = Duration::from_millis(50);
        c.lease_size_lifted = 50;
        c.ingest_chunk_rows = 200;
    };
    let a = Coordinator::spawn(&db.url, tweak).await;
    let b = Coordinator::spawn(&db.url, tweak).await;
    let mut hosts = Vec::new();
    for h in 0..4 {
        hosts.push(Fixture::start(std::net::IpAddr::from([127, 0, 4, 10 + h])).await);
    }
    let urls = |from: usize, to: usize| -> Vec<String> {
        (from..to).map(|i| hosts[i % hosts.len()].url(&format!("/delay/2?n={i}"))).collect()
    };
    let both = format!("{},{}", a.addr, b.addr);
    let mut workers: Vec<Worker> = (0..3).map(|_| Worker::spawn(&both, |_| {})).collect();

    let options = |name: &str, force: bool| pb::JobOptions { name: name.into(), force, ..impolite() };
    let polite = |name: &str| pb::JobOptions {
        name: name.into(),
        politeness: Some(pb::HostPolicy { concurrency: Some(2), interval_ms: Some(1) }),
        ..Default::default()
    };
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let mut cc = ca.clone();
    // Overlapping sets, submitted at once through both coordinators.
    let (set1, set2, set3) = (urls(0, 4_000), urls(2_000, 6_000), urls(1_000, 3_000));
    let (first, second, third) = tokio::join!(
        submit(&mut ca, &set1, options("first", false)),
        submit(&mut cb, &set2, options("second", true)),
        submit(&mut cc, &set3, polite("third")),
    );
    let mut jobs =
        vec![first.unwrap().job.unwrap().id, second.unwrap().job.unwrap().id, third.unwrap().job.unwrap().id];
    // While they run: the first one's set again (forced), uploads abandoned mid-stream, a cancel,
    // and a worker killed.
    let again = submit(&mut cb, &urls(0, 4_000), options("again", true)).await.unwrap().job.unwrap().id;
    jobs.push(again);
    for n in 0..3 {
        let mut c = if n % 2 == 0 { ca.clone() } else { cb.clone() };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let call = tokio::spawn(async move { c.submit_job(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
        let start = pb::SubmitJobRequest {
            item: Some(pb::submit_job_request::Item::Options(options(&format!("abandoned{n}"), true))),
        };
        tx.send(start).await.unwrap();
        let chunk = pb::SubmitJobRequest {
            item: Some(pb::submit_job_request::Item::Urls(pb::UrlChunk {
                urls: urls(n * 1_000, n * 1_000 + 3_000),
                ..Default::default()
            })),
        };
        tx.send(chunk).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        call.abort();
    }
    workers.remove(0).kill();
    let cancelled = jobs[1];
    cb.cancel_job(pb::CancelJobRequest { id: cancelled }).await.expect("a cancel never fails on contention");
    let late = submit(&mut ca, &urls(3_000, 7_000), options("late", true)).await.unwrap().job.unwrap().id;
    jobs.push(late);
    workers.push(Worker::spawn(&both, |_| {}));

    for id in &jobs {
        eventually(Duration::from_secs(120), "every job ends", || {
            let mut c = ca.clone();
            async move {
                let job = c.get_job(pb::GetJobRequest { id: *id }).await.ok()?.into_inner();
                (job.state == pb::JobState::Completed as i32 || job.state == pb::JobState::Cancelled as i32)
                    .then_some(())
            }
        })
        .await;
    }
    for w in workers {
        w.stop().await;
    }
    a.stop().await;
    b.stop().await;
    // The sessions are gone, so their statistics are flushed; the counter is read afresh.
    let deadlocks = eventually(Duration::from_secs(10), "the statistics of ended sessions", || async {
        let mut c = sqlx::PgConnection::connect(&db.url).await.ok()?;
        let open: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_one(&mut c)
        .await
        .ok()?;
        if open > 0 {
            return None;
        }
        sqlx::query_scalar::<_, i64>("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
            .fetch_one(&mut c)
            .await
            .ok()
    })
    .await;
    assert_eq!(deadlocks, 0, "PostgreSQL detected deadlocks (their cycles are in its log)");
    db.assert_invariants().await;
}
