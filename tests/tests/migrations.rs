//! Migrations carry a database forward: one written by the model before open work had tables of its
//! own (a job half done — a URL checked, one out in a live lease, two waiting) is upgraded in place
//! by opening the store, and its job then finishes as if nothing had happened: the lease's holder
//! reports its URL, the waiting ones are leased and reported, every counter equals its rows.

use std::str::FromStr;

use sqlx::Connection;
use urlfleet_coordinator::store::JobState;
use urlfleet_shared::time::now_ms;
use urlfleet_tests::conformance::{lease_req, result};
use urlfleet_tests::{Backend, TestDb};

/// The first migration of the model whose open work lives apart from the record.
const OPEN_WORK: [(Backend, i64); 2] = [(Backend::Postgres, 14), (Backend::Sqlite, 13)];

/// What the earlier model wrote for a job of four URLs on one polite host: URL 1 checked under lease
/// 1 (ended), URL 2 out in lease 2 (live, held by `w`), URLs 3 and 4 waiting.
fn written_before(now: i64) -> Vec<String> {
    vec![
        format!(
            "INSERT INTO jobs (id, name, state, priority, options, unique_key, unique_active, not_before, received, \
             total, leased, checked, n_ok, created_at, sealed_at) \
             VALUES (1, 'old', 'running', 1, '{{}}', 'k', TRUE, 0, 4, 4, 1, 1, 1, {now}, {now})"
        ),
        "INSERT INTO urls (id, url) VALUES (1, 'http://a.example/0'), (2, 'http://a.example/1'), \
         (3, 'http://a.example/2'), (4, 'http://a.example/3')"
            .into(),
        format!(
            "INSERT INTO checks (url_id, checked_at, lease_id, kind, status, attempts, response_ms) \
             VALUES (1, {now}, 1, 'ok', 200, 1, 3)"
        ),
        "INSERT INTO job_urls (job_id, url_id, host, state, url_order, attempts, lease_id, kind, seq) VALUES \
         (1, 1, 'a.example', 'done', 10, 0, 1, 'ok', 0), (1, 2, 'a.example', 'leased', 10, 0, 2, NULL, 1), \
         (1, 3, 'a.example', 'pending', 10, 0, NULL, NULL, 2), (1, 4, 'a.example', 'pending', 10, 0, NULL, NULL, 3)"
            .into(),
        "INSERT INTO hosts (host, pending, active_leases, max_leases, priority, epoch, next_allowed_at, holder) \
         VALUES ('a.example', 2, 1, 1, 1, 2, 0, 'w')"
            .into(),
        format!(
            "INSERT INTO leases (id, host, epoch, holder, created_at, expires_at, active, open, spacing_ms) VALUES \
             (1, 'a.example', 1, 'w', {now}, {now}, FALSE, 0, 0), \
             (2, 'a.example', 2, 'w', {now}, {}, TRUE, 1, 0)",
            now + 600_000
        ),
    ]
}

async fn migrate_to_before_open_work(db: &TestDb) {
    let (dir, before) = match db.backend {
        Backend::Postgres => ("postgres", OPEN_WORK[0].1),
        Backend::Sqlite => ("sqlite", OPEN_WORK[1].1),
    };
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../coordinator/migrations").join(dir);
    let mut migrator = sqlx::migrate::Migrator::new(path).await.expect("read the migrations");
    let earlier: Vec<_> = migrator.migrations.iter().filter(|m| m.version < before).cloned().collect();
    assert_eq!(earlier.len() as i64, before - 1, "the migrations before the open-work model");
    migrator.migrations = earlier.into();
    let now = now_ms();
    match db.backend {
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
            migrator.run(&mut c).await.expect("the earlier schema");
            for s in written_before(now) {
                sqlx::query(sqlx::AssertSqlSafe(s)).execute(&mut c).await.unwrap();
            }
            // The sequences follow the ids written by hand, as the earlier release left them.
            for t in ["jobs", "urls", "leases"] {
                let s = format!("SELECT setval(pg_get_serial_sequence('{t}', 'id'), (SELECT MAX(id) FROM {t}))");
                sqlx::query(sqlx::AssertSqlSafe(s)).execute(&mut c).await.unwrap();
            }
        }
        Backend::Sqlite => {
            let opts = sqlx::sqlite::SqliteConnectOptions::from_str(&db.url).unwrap().create_if_missing(true);
            let mut c = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
            migrator.run(&mut c).await.expect("the earlier schema");
            for s in written_before(now) {
                sqlx::query(sqlx::AssertSqlSafe(s)).execute(&mut c).await.unwrap();
            }
        }
    }
}

async fn a_database_of_the_earlier_model_upgrades_in_place_and_its_job_finishes(backend: Backend) {
    let db = TestDb::fresh(backend).await;
    migrate_to_before_open_work(&db).await;
    assert_eq!(db.scalar("SELECT COUNT(*) FROM job_urls WHERE state = 'leased'").await, 1);

    let store = urlfleet_coordinator::store::connect(&db.url).await.expect("open and migrate");
    db.assert_invariants().await;
    assert_eq!(db.scalar("SELECT COUNT(*) FROM frontier").await, 2, "the waiting URLs wait");
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM lease_urls WHERE lease_id = 2").await,
        1,
        "the live lease holds its URL"
    );
    let job = store.get_job(1).await.unwrap().unwrap();
    assert_eq!((job.state, job.counts.checked, job.counts.leased), (JobState::Running, 1, 1));
    // The stored results read as before.
    let history = store.url_history("http://a.example/0", 10).await.unwrap().unwrap();
    assert_eq!(history.iter().map(|r| r.status).collect::<Vec<_>>(), [Some(200)]);

    // The live lease is still its holder's: no second lease of the polite host, and its result counts.
    assert!(store.acquire_lease(&lease_req("other")).await.unwrap().is_none(), "one lease at a time");
    let live = urlfleet_coordinator::store::LeaseGrant {
        id: 2,
        epoch: 2,
        holder: "w".into(),
        host: "a.example".into(),
        urls: vec![(2, "http://a.example/1".into())],
        deadline_ms: 0,
        jobs: vec![1],
        job_options: Vec::new(),
        trace_parent: None,
        lifted: false,
    };
    let touched = store.ingest(&[result(&live, 2, 200, now_ms())]).await.unwrap();
    assert!(touched.refused.is_empty(), "{:?}", touched.refused);
    let next = store.acquire_lease(&lease_req("w")).await.unwrap().expect("the waiting URLs");
    assert_eq!(next.urls.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [3, 4]);
    assert!(next.id > 2, "new leases get new ids");
    store.ingest(&next.urls.iter().map(|(id, _)| result(&next, *id, 404, now_ms())).collect::<Vec<_>>()).await.unwrap();
    let done = store.get_job(1).await.unwrap().unwrap();
    assert_eq!(
        (done.state, done.counts.checked, done.counts.ok, done.counts.broken, done.counts.leased),
        (JobState::Completed, 4, 2, 2, 0)
    );
    db.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_database_of_the_earlier_model_upgrades_in_place_and_its_job_finishes() {
    a_database_of_the_earlier_model_upgrades_in_place_and_its_job_finishes(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_database_of_the_earlier_model_upgrades_in_place_and_its_job_finishes() {
    a_database_of_the_earlier_model_upgrades_in_place_and_its_job_finishes(Backend::Postgres).await;
}
