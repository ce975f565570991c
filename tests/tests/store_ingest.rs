//! Store conformance, ingest: replays, monotonic latest state and fencing hold the same on SQLite
//! and PostgreSQL. Each test runs against both.

use urlfleet_coordinator::store::LeaseGrant;
use urlfleet_shared::ReportedResult;
use urlfleet_shared::time::now_ms;
use urlfleet_tests::Backend;
use urlfleet_tests::conformance::*;

urlfleet_tests::on_both_stores!(
    replayed_results_change_nothing,
    an_older_result_never_overwrites_a_newer_one,
    results_under_no_granted_lease_or_a_stale_epoch_are_refused,
);

async fn replayed_results_change_nothing(backend: Backend) {
    let (db, store) = open(backend).await;
    let (job, _) = store.create_job(new_job("replay", 4)).await.unwrap();
    store.add_urls(job.id, &urls("a.example", 4), recheck()).await.unwrap();
    store.seal_job(job.id, seal("replay", 4, job.priority)).await.unwrap();
    let lease = store.acquire_lease(&lease_req("w")).await.unwrap().unwrap();
    let now = now_ms();
    let batch: Vec<ReportedResult> = lease.urls.iter().map(|(id, _)| result(&lease, *id, 200, now)).collect();
    store.ingest(&batch[..2]).await.unwrap();
    store.ingest(&batch[..2]).await.unwrap();
    let halfway = store.get_job(job.id).await.unwrap().unwrap();
    assert_eq!(halfway.counts.checked, 2);
    store.ingest(&batch).await.unwrap();
    let once = store.get_job(job.id).await.unwrap().unwrap();
    let checks_once = db.scalar("SELECT COUNT(*) FROM checks").await;
    store.ingest(&batch).await.unwrap();
    store.ingest(&batch).await.unwrap();
    let twice = store.get_job(job.id).await.unwrap().unwrap();
    assert_eq!(once, twice, "a replay changes no counter and no state");
    assert_eq!(twice.counts.checked, 4);
    assert_eq!(twice.counts.ok, 4);
    assert_eq!(db.scalar("SELECT COUNT(*) FROM checks").await, checks_once);
    assert_eq!(checks_once, 4);
}

async fn an_older_result_never_overwrites_a_newer_one(backend: Backend) {
    let (db, store) = open(backend).await;
    let (job, _) = store.create_job(new_job("mono", 1)).await.unwrap();
    store.add_urls(job.id, &urls("a.example", 1), recheck()).await.unwrap();
    store.seal_job(job.id, seal("mono", 1, job.priority)).await.unwrap();
    let lease = store.acquire_lease(&lease_req("w")).await.unwrap().unwrap();
    let url_id = lease.urls[0].0;
    let t = now_ms();
    store.ingest(&[result(&lease, url_id, 404, t)]).await.unwrap();
    store.ingest(&[result(&lease, url_id, 200, t - 60_000)]).await.unwrap();
    assert_eq!(db.scalar("SELECT CAST(status AS BIGINT) FROM urls").await, 404, "the newer result stays");
    assert_eq!(db.scalar("SELECT COUNT(*) FROM checks").await, 2, "both are history");
    store.ingest(&[result(&lease, url_id, 200, t + 1)]).await.unwrap();
    assert_eq!(db.scalar("SELECT CAST(status AS BIGINT) FROM urls").await, 200);
    let j = store.get_job(job.id).await.unwrap().unwrap();
    assert_eq!((j.counts.checked, j.counts.broken, j.counts.ok), (1, 1, 0), "the first result counted, once");

    // Within one batch, in either order, the newest result is the latest state and both are history;
    // of two equally new ones, the first reported is both.
    let batches =
        [((500, t + 10), (410, t + 20), 410), ((301, t + 40), (503, t + 30), 301), ((502, t + 50), (404, t + 50), 502)];
    for (first, second, latest) in batches {
        store
            .ingest(&[result(&lease, url_id, first.0, first.1), result(&lease, url_id, second.0, second.1)])
            .await
            .unwrap();
        assert_eq!(db.scalar("SELECT CAST(status AS BIGINT) FROM urls").await, latest);
    }
    assert_eq!(db.scalar("SELECT COUNT(*) FROM checks").await, 8, "an equally new second result is a replay");
    let kept = db.scalar("SELECT CAST(status AS BIGINT) FROM checks ORDER BY checked_at DESC LIMIT 1").await;
    assert_eq!(kept, 502, "history keeps the same one of two equally new results");
}

async fn results_under_no_granted_lease_or_a_stale_epoch_are_refused(backend: Backend) {
    let (_db, store) = open(backend).await;
    let (job, _) = store.create_job(new_job("fenced", 2)).await.unwrap();
    store.add_urls(job.id, &urls("f.example", 2), recheck()).await.unwrap();
    store.seal_job(job.id, seal("fenced", 2, job.priority)).await.unwrap();
    let lease = store.acquire_lease(&lease_req("w")).await.unwrap().unwrap();
    let (a, b) = (lease.urls[0].0, lease.urls[1].0);
    let stale = LeaseGrant { epoch: lease.epoch - 1, ..lease.clone() };
    let forged = LeaseGrant { id: lease.id + 1_000, ..lease.clone() };
    let touched = store.ingest(&[result(&stale, a, 404, now_ms()), result(&forged, b, 404, now_ms())]).await.unwrap();
    assert_eq!(touched.refused, 2);
    let j = store.get_job(job.id).await.unwrap().unwrap();
    assert_eq!((j.counts.checked, j.counts.broken, j.counts.leased), (0, 0, 2), "refused results change nothing");

    // The honest path still works, in the same batch as a forged result.
    let touched = store.ingest(&[result(&lease, a, 200, now_ms()), result(&forged, b, 404, now_ms())]).await.unwrap();
    assert_eq!(touched.refused, 1);
    let j = store.get_job(job.id).await.unwrap().unwrap();
    assert_eq!((j.counts.checked, j.counts.ok, j.counts.broken), (1, 1, 0));
}
