//! Store conformance, open work apart from the record: counters that come from the rows a write
//! made (a retried batch counts nothing twice), one result per URL per lease, in-flight work joined
//! rather than repeated, cancels and discards of jobs over more hosts than a statement can bind, and
//! a cost per check that does not grow with a URL's history. Each test runs against both stores
//! and ends with the store's invariants (counters = rows).

use std::time::Duration;

use urlfleet_coordinator::store::{JobState, LeaseRequest, PlannedUrl, Priority, RecheckPolicy};
use urlfleet_shared::outcome::Refusal;
use urlfleet_shared::time::now_ms;
use urlfleet_tests::Backend;
use urlfleet_tests::conformance::*;

urlfleet_tests::on_both_stores!(
    a_batch_tried_again_after_its_commit_counts_nothing_twice,
    a_lease_takes_one_result_per_url_and_a_resend_changes_nothing,
    a_url_out_in_a_lease_is_joined_not_leased_again_for_a_forced_job,
    a_job_over_seventy_thousand_hosts_is_cancelled_and_discarded,
    urls_added_after_a_cancellation_never_wait,
    the_record_is_not_rewritten_by_a_grant_and_open_work_empties_as_it_is_done,
    a_lease_is_not_extended_past_its_maximum_life_after_an_outage,
    an_upload_that_shows_no_life_is_not_leased_and_is_discarded,
);

fn force() -> RecheckPolicy {
    RecheckPolicy { force: true, ..recheck() }
}

async fn a_batch_tried_again_after_its_commit_counts_nothing_twice(backend: Backend) {
    let (db, store) = open(backend).await;
    let (job, _) = store.create_job(new_job("retry", 30)).await.unwrap();
    let mut batch = urls("a.example", 20);
    batch.extend(urls("b.example", 10));
    store.add_urls(job.id, &batch, recheck()).await.unwrap();
    // The same batch again, as the coordinator sends it when the first commit's answer was lost.
    store.add_urls(job.id, &batch, recheck()).await.unwrap();
    db.assert_invariants().await;
    assert_eq!(db.scalar("SELECT CAST(SUM(pending) AS BIGINT) FROM hosts").await, 30);
    store.seal_job(job.id, seal("retry", 30, job.priority)).await.unwrap();
    let mut req = lease_req("w");
    req.max_urls = 100;
    let mut checked = 0;
    while let Some(lease) = store.acquire_lease(&req).await.unwrap() {
        let now = now_ms();
        let results: Vec<_> = lease.urls.iter().map(|(id, _)| result(&lease, *id, 200, now)).collect();
        checked += results.len();
        store.ingest(&results).await.unwrap();
    }
    assert_eq!(checked, 30, "every URL leased once");
    let done = store.get_job(job.id).await.unwrap().unwrap();
    assert_eq!(done.state, JobState::Completed);
    assert_eq!((done.counts.checked, done.counts.leased, done.counts.total), (30, 0, 30));
    db.assert_invariants().await;
}

async fn a_lease_takes_one_result_per_url_and_a_resend_changes_nothing(backend: Backend) {
    let (db, store) = open(backend).await;
    let (job, _) = store.create_job(new_job("once", 2)).await.unwrap();
    store.add_urls(job.id, &urls("a.example", 2), recheck()).await.unwrap();
    store.seal_job(job.id, seal("once", 2, job.priority)).await.unwrap();
    let lease = store.acquire_lease(&lease_req("w")).await.unwrap().unwrap();
    let (first, second) = (lease.urls[0].0, lease.urls[1].0);
    let at = now_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let stored = result(&lease, first, 200, at);
    assert!(store.ingest(std::slice::from_ref(&stored)).await.unwrap().refused.is_empty());
    // The same result again while the lease lives (its ack was lost): nothing changes, nothing refused.
    let again = store.ingest(std::slice::from_ref(&stored)).await.unwrap();
    assert!(again.refused.is_empty(), "{:?}", again.refused);
    // Another answer for the same URL under the same lease: refused, not stored, no pause.
    let mut other = result(&lease, first, 503, at + 500);
    other.outcome.host_paused_until_ms = Some(now_ms() + 3_600_000);
    let refused = store.ingest(&[other.clone(), other]).await.unwrap().refused;
    assert_eq!(refused.iter().map(|r| r.reason).collect::<Vec<_>>(), [Refusal::Repeated, Refusal::Repeated]);
    assert_eq!(db.scalar(&format!("SELECT COUNT(*) FROM checks WHERE url_id = {first}")).await, 1);
    assert!(db.scalar("SELECT MAX(next_allowed_at) FROM hosts").await < now_ms() + 60_000, "no pause taken");
    let j = store.get_job(job.id).await.unwrap().unwrap();
    assert_eq!((j.counts.checked, j.counts.leased, j.counts.ok), (1, 1, 1));
    // Two answers for one URL in one chunk: the first counts.
    let pair = [result(&lease, second, 200, at), result(&lease, second, 404, at + 1)];
    let refused = store.ingest(&pair).await.unwrap().refused;
    assert_eq!(refused.iter().map(|r| r.reason).collect::<Vec<_>>(), [Refusal::Repeated]);
    let j = store.get_job(job.id).await.unwrap().unwrap();
    assert_eq!((j.state, j.counts.checked, j.counts.ok, j.counts.broken), (JobState::Completed, 2, 2, 0));
    // After the lease ended, the stored results resent are still replays, and a new answer is not.
    assert!(store.ingest(std::slice::from_ref(&stored)).await.unwrap().refused.is_empty());
    let late = store.ingest(&[result(&lease, second, 500, at + 2)]).await.unwrap().refused;
    assert_eq!(late.iter().map(|r| r.reason).collect::<Vec<_>>(), [Refusal::Repeated]);
    assert_eq!(db.scalar("SELECT COUNT(*) FROM checks").await, 2);
    db.assert_invariants().await;
}

async fn a_url_out_in_a_lease_is_joined_not_leased_again_for_a_forced_job(backend: Backend) {
    let (db, store) = open(backend).await;
    // A host whose limits are lifted: several leases at once, so a second lease could take the URL.
    let lifted = |n: usize| -> Vec<PlannedUrl> {
        urls("own.example", n)
            .into_iter()
            .map(|mut u| {
                u.budget = urlfleet_coordinator::store::LeaseBudget { max_leases: 8, lease_urls: 0 };
                u
            })
            .collect()
    };
    let (a, _) = store.create_job(new_job("a", 10)).await.unwrap();
    store.add_urls(a.id, &lifted(10), recheck()).await.unwrap();
    store.seal_job(a.id, seal("a", 10, a.priority)).await.unwrap();
    let mut req: LeaseRequest = lease_req("w1");
    req.max_urls_lifted = 10;
    let first = store.acquire_lease(&req).await.unwrap().unwrap();
    assert_eq!(first.urls.len(), 10);
    // The same list again with --force while the checks are in flight: its URLs join the lease.
    let (b, _) = store.create_job(new_job("b", 10)).await.unwrap();
    store.add_urls(b.id, &lifted(10), force()).await.unwrap();
    let b_now = store.seal_job(b.id, seal("b", 10, b.priority)).await.unwrap().0;
    assert_eq!((b_now.counts.leased, b_now.counts.pending()), (10, 0), "in-flight work is joined");
    db.assert_invariants().await;
    req.worker_id = "w2".into();
    assert!(store.acquire_lease(&req).await.unwrap().is_none(), "no URL is leased twice");
    let now = now_ms();
    let results: Vec<_> = first.urls.iter().map(|(id, _)| result(&first, *id, 200, now)).collect();
    let touched = store.ingest(&results).await.unwrap();
    assert!(touched.refused.is_empty(), "no result refused without a fault: {:?}", touched.refused);
    for job in [a.id, b.id] {
        let j = store.get_job(job).await.unwrap().unwrap();
        assert_eq!((j.state, j.counts.checked, j.counts.leased), (JobState::Completed, 10, 0), "job {job}");
    }
    assert_eq!(db.scalar("SELECT COUNT(*) FROM checks").await, 10, "each URL checked once");
    db.assert_invariants().await;
}

async fn a_job_over_seventy_thousand_hosts_is_cancelled_and_discarded(backend: Backend) {
    let (db, store) = open(backend).await;
    // More hosts than PostgreSQL binds parameters in one statement (65,535).
    let hosts = |prefix: &str| -> Vec<PlannedUrl> {
        (0..70_000u64)
            .map(|i| PlannedUrl::new(format!("http://{prefix}{i}.example/"), format!("{prefix}{i}.example"), i))
            .collect()
    };
    let (job, _) = store.create_job(new_job("wide", 70_000)).await.unwrap();
    for batch in hosts("h").chunks(10_000) {
        store.add_urls(job.id, batch, recheck()).await.unwrap();
    }
    store.seal_job(job.id, seal("wide", 70_000, job.priority)).await.unwrap();
    let lease = store.acquire_lease(&lease_req("w")).await.unwrap().expect("a lease");
    let (cancelled, revoked) = store.cancel_job(job.id).await.unwrap().unwrap();
    assert_eq!(
        (cancelled.state, cancelled.counts.cancelled, cancelled.counts.leased),
        (JobState::Cancelled, 70_000, 0)
    );
    assert_eq!(revoked, [lease.id], "the lease held nothing else");
    assert_eq!(db.scalar("SELECT COUNT(*) FROM frontier").await, 0);
    db.assert_invariants().await;

    // A submission that failed half-way is discarded whole.
    let (upload, _) = store.create_job(new_job("dead upload", 70_000)).await.unwrap();
    for batch in hosts("d").chunks(10_000) {
        store.add_urls(upload.id, batch, recheck()).await.unwrap();
    }
    store.acquire_lease(&lease_req("w")).await.unwrap().expect("leased while receiving");
    store.discard_job(upload.id).await.unwrap();
    assert!(store.get_job(upload.id).await.unwrap().is_none());
    assert_eq!(db.scalar(&format!("SELECT COUNT(*) FROM job_urls WHERE job_id = {}", upload.id)).await, 0);
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM frontier").await + db.scalar("SELECT COUNT(*) FROM lease_urls").await,
        0
    );
    db.assert_invariants().await;
}

async fn urls_added_after_a_cancellation_never_wait(backend: Backend) {
    let (db, store) = open(backend).await;
    let (job, _) = store.create_job(new_job("stop", 4)).await.unwrap();
    store.add_urls(job.id, &urls("a.example", 2), recheck()).await.unwrap();
    store.cancel_job(job.id).await.unwrap().unwrap();
    store.add_urls(job.id, &urls("b.example", 2), recheck()).await.unwrap();
    assert_eq!(db.scalar("SELECT COUNT(*) FROM frontier").await, 0, "a cancelled job's URLs do not wait");
    assert_eq!(db.scalar("SELECT CAST(COALESCE(SUM(pending), 0) AS BIGINT) FROM hosts").await, 0);
    assert!(store.acquire_lease(&lease_req("w")).await.unwrap().is_none());
    store.discard_job(job.id).await.unwrap();
    let (sealed, _) = store.seal_job(job.id, seal("stop", 4, Priority::High)).await.unwrap();
    assert_eq!((sealed.state, sealed.counts.cancelled), (JobState::Cancelled, 4));
    db.assert_invariants().await;
}

/// The grant writes nothing to `job_urls` (on PostgreSQL, `store_ingest` counts the updates), and the
/// open work is empty once the job is done.
async fn the_record_is_not_rewritten_by_a_grant_and_open_work_empties_as_it_is_done(backend: Backend) {
    let (db, store) = open(backend).await;
    let (job, _) = store.create_job(new_job("lean", 20)).await.unwrap();
    store.add_urls(job.id, &urls("a.example", 20), recheck()).await.unwrap();
    store.seal_job(job.id, seal("lean", 20, job.priority)).await.unwrap();
    let lease = store.acquire_lease(&lease_req("w")).await.unwrap().unwrap();
    assert_eq!(db.scalar("SELECT COUNT(*) FROM job_urls WHERE lease_id IS NOT NULL").await, 0, "no per-URL mark");
    assert_eq!(db.scalar("SELECT COUNT(*) FROM lease_urls").await, 20);
    assert_eq!(db.scalar("SELECT COUNT(*) FROM frontier").await, 0);
    db.assert_invariants().await;
    let now = now_ms();
    store.ingest(&lease.urls.iter().map(|(id, _)| result(&lease, *id, 200, now)).collect::<Vec<_>>()).await.unwrap();
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM lease_urls").await + db.scalar("SELECT COUNT(*) FROM frontier").await,
        0
    );
    assert_eq!(db.scalar("SELECT COUNT(*) FROM job_urls WHERE state = 'done' AND checked_at IS NOT NULL").await, 20);
    db.assert_invariants().await;
}

async fn a_lease_is_not_extended_past_its_maximum_life_after_an_outage(backend: Backend) {
    let (db, store) = open(backend).await;
    let (job, _) = store.create_job(new_job("old", 1)).await.unwrap();
    store.add_urls(job.id, &urls("a.example", 1), recheck()).await.unwrap();
    store.seal_job(job.id, seal("old", 1, job.priority)).await.unwrap();
    let mut req = lease_req("w");
    req.ttl = Duration::from_millis(50);
    let lease = store.acquire_lease(&req).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let now = now_ms();
    // Its maximum life (200 ms) ends well before the TTL an outage would give it back.
    store.extend_leases_after_outage(0, now + 30_000, Duration::from_millis(200)).await.unwrap();
    let expires = db.scalar(&format!("SELECT expires_at FROM leases WHERE id = {}", lease.id)).await;
    let created = db.scalar(&format!("SELECT created_at FROM leases WHERE id = {}", lease.id)).await;
    assert_eq!(expires, created + 200, "capped at the lease's maximum life");
    tokio::time::sleep(Duration::from_millis(250)).await;
    let reaped = store.reap_expired(3).await.unwrap();
    assert_eq!(reaped.expired_leases, 1);
    db.assert_invariants().await;
}

async fn an_upload_that_shows_no_life_is_not_leased_and_is_discarded(backend: Backend) {
    let (db, store) = open(backend).await;
    let (job, _) = store.create_job(new_job("orphan", 3)).await.unwrap();
    store.add_urls(job.id, &urls("a.example", 3), recheck()).await.unwrap();
    // Its coordinator died: no sign of life for longer than an upload may stay silent.
    let silent = urlfleet_coordinator::store::ABANDONED_UPLOAD.as_millis() as i64 + 1_000;
    db.scalar(&format!(
        "UPDATE jobs SET created_at = created_at - {silent} WHERE id = {} RETURNING CAST(0 AS BIGINT)",
        job.id
    ))
    .await;
    assert!(store.acquire_lease(&lease_req("w")).await.unwrap().is_none(), "an orphan's URLs are not leased");
    // A live upload shows it, and its URLs are leased again (once the host, found with nothing
    // ready, is looked at again a second later).
    store.touch_upload(job.id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let lease = store.acquire_lease(&lease_req("w")).await.unwrap().expect("a live upload's URLs");
    assert_eq!(lease.urls.len(), 3);
    db.scalar(&format!(
        "UPDATE jobs SET touched_at = touched_at - {silent} WHERE id = {} RETURNING CAST(0 AS BIGINT)",
        job.id
    ))
    .await;
    assert_eq!(store.discard_abandoned(now_ms() - silent + 1_000).await.unwrap(), 1);
    assert!(store.get_job(job.id).await.unwrap().is_none());
    db.assert_invariants().await;
}
