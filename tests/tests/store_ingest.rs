//! Store conformance, ingest: replays, monotonic latest state and fencing hold the same on SQLite
//! and PostgreSQL. Each test runs against both.

use urlfleet_coordinator::store::LeaseGrant;
use urlfleet_shared::ReportedResult;
use urlfleet_shared::outcome::Refusal;
use urlfleet_shared::time::now_ms;
use urlfleet_tests::Backend;
use urlfleet_tests::conformance::*;

urlfleet_tests::on_both_stores!(
    replayed_results_change_nothing,
    an_older_result_never_overwrites_a_newer_one,
    results_under_no_granted_lease_or_a_stale_epoch_are_refused,
    only_the_holder_may_report_and_only_urls_its_live_lease_holds,
    the_coordinators_clock_orders_results,
    each_job_lists_its_own_checks_and_a_urls_history_lists_them_all,
    the_dashboard_pages_filters_and_samples_a_jobs_failures,
);

async fn the_dashboard_pages_filters_and_samples_a_jobs_failures(backend: Backend) {
    use urlfleet_coordinator::store::{FailureQuery, FailureSort};
    use urlfleet_shared::{OutcomeClass, OutcomeKind};
    let (_db, store) = open(backend).await;
    let (job, _) = store.create_job(new_job("dash", 10)).await.unwrap();
    store.add_urls(job.id, &urls("a.example", 10), recheck()).await.unwrap();
    let invalid =
        vec![urlfleet_coordinator::store::InvalidEntry { input: "not 50% a_url".into(), reason: "no".into() }];
    store.add_invalid(job.id, 1, &invalid).await.unwrap();
    store.seal_job(job.id, seal("dash", 11, job.priority)).await.unwrap();
    store.sample_jobs(1_000).await.unwrap();
    let lease = store.acquire_lease(&lease_req("w")).await.unwrap().unwrap();
    // URLs 0..10: 2, 5 and 8 answer 404, 9 answers 503, the rest 200.
    let status = |i: usize| match i {
        2 | 5 | 8 => 404,
        9 => 503,
        _ => 200,
    };
    let results: Vec<_> =
        lease.urls.iter().enumerate().map(|(i, (id, _))| result(&lease, *id, status(i), now_ms())).collect();
    // Sampled while it runs (a job that ended is sampled no more).
    store.ingest(&results[..9]).await.unwrap();
    store.sample_jobs(2_000).await.unwrap();
    store.sample_jobs(2_000).await.unwrap();
    // The hosts with work out: the lease still holds one URL of its host.
    let hosts = store.frontier_hosts(10).await.unwrap();
    assert_eq!(
        hosts.iter().map(|h| (h.host.as_str(), h.pending, h.active_leases, h.holder.as_deref())).collect::<Vec<_>>(),
        [("a.example", 0, 1, Some("w"))]
    );
    store.ingest(&results[9..]).await.unwrap();
    store.sample_jobs(3_000).await.unwrap();

    let q = |f: &dyn Fn(&mut FailureQuery)| {
        let mut q = FailureQuery { job_id: job.id, limit: 2, ..Default::default() };
        f(&mut q);
        q
    };
    let urls_of =
        |p: &urlfleet_coordinator::store::FailurePage| p.rows.iter().map(|r| r.url.clone()).collect::<Vec<_>>();
    // Every failure, invalid entries last, two at a time.
    let first = store.job_failures(&q(&|_| {})).await.unwrap();
    assert_eq!(first.total, 5);
    assert_eq!(urls_of(&first), ["http://a.example/2", "http://a.example/5"]);
    let last = store.job_failures(&q(&|q| q.offset = 4)).await.unwrap();
    assert_eq!(urls_of(&last), ["not 50% a_url"]);
    // Filters: class, status, search (LIKE's wildcards taken literally), host.
    let broken = store
        .job_failures(&q(&|q| {
            q.classes = vec![OutcomeClass::Broken];
            q.status = Some(503);
            q.limit = 10;
        }))
        .await
        .unwrap();
    assert_eq!((broken.total, urls_of(&broken)), (1, vec!["http://a.example/9".to_string()]));
    let found = store
        .job_failures(&q(&|q| {
            q.search = Some("50%".into());
            q.limit = 10;
        }))
        .await
        .unwrap();
    assert_eq!(urls_of(&found), ["not 50% a_url"]);
    let none = store.job_failures(&q(&|q| q.host = Some("b.example".into()))).await.unwrap();
    assert_eq!(none.total, 0);
    let kind = store.job_failures(&q(&|q| q.kind = Some(OutcomeKind::Invalid))).await.unwrap();
    assert_eq!(kind.total, 1);
    // Sorted by status, descending; by URL, descending.
    let by_status = store
        .job_failures(&q(&|q| {
            q.sort = FailureSort::Status;
            q.descending = true;
            q.classes = vec![OutcomeClass::Broken];
        }))
        .await
        .unwrap();
    assert_eq!(by_status.rows.iter().map(|r| r.status).collect::<Vec<_>>(), [Some(503), Some(404)]);
    let by_url = store
        .job_failures(&q(&|q| {
            q.sort = FailureSort::Url;
            q.descending = true;
            q.classes = vec![OutcomeClass::Broken];
        }))
        .await
        .unwrap();
    assert_eq!(urls_of(&by_url), ["http://a.example/9", "http://a.example/8"]);
    // The samples (one per instant, however many coordinators take it).
    let samples = store.job_samples(job.id, 10).await.unwrap();
    assert_eq!(
        samples.iter().map(|s| (s.at, s.checked, s.n_broken)).collect::<Vec<_>>(),
        [(1_000, 0, 0), (2_000, 9, 3)]
    );
}

async fn each_job_lists_its_own_checks_and_a_urls_history_lists_them_all(backend: Backend) {
    let (_db, store) = open(backend).await;
    let mut lists = Vec::new();
    for (key, status) in [("first", 404), ("second", 200)] {
        let (job, _) = store.create_job(new_job(key, 1)).await.unwrap();
        let force = urlfleet_coordinator::store::RecheckPolicy { force: true, ..recheck() };
        store.add_urls(job.id, &urls("a.example", 1), force).await.unwrap();
        store.seal_job(job.id, seal(key, 1, job.priority)).await.unwrap();
        let lease = store.acquire_lease(&lease_req("w")).await.unwrap().unwrap();
        store.ingest(&[result(&lease, lease.urls[0].0, status, now_ms())]).await.unwrap();
        lists.push(job.id);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // The first job keeps what it saw, though the URL's latest state is the second job's.
    for (job, status) in lists.iter().zip([404, 200]) {
        let rows = store.list_results(&page(*job, &[], None, 10)).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].status, Some(status), "job {job}");
        assert_eq!(rows[0].state, Some(urlfleet_coordinator::store::JobUrlState::Done));
    }
    let history = store.url_history("http://a.example/0", 10).await.unwrap().expect("a known URL");
    let statuses: Vec<Option<u16>> = history.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![Some(200), Some(404)], "newest first");
    assert_eq!(store.url_history("http://a.example/0", 1).await.unwrap().unwrap().len(), 1);
    assert!(store.url_history("http://never.example/", 10).await.unwrap().is_none());
}

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
    // The lease holds a second URL, not reported yet: it stays live while the first is reported.
    let (job, _) = store.create_job(new_job("mono", 2)).await.unwrap();
    store.add_urls(job.id, &urls("a.example", 2), recheck()).await.unwrap();
    store.seal_job(job.id, seal("mono", 2, job.priority)).await.unwrap();
    let lease = store.acquire_lease(&lease_req("w")).await.unwrap().unwrap();
    let url_id = lease.urls[0].0;
    let latest = &format!("SELECT CAST(status AS BIGINT) FROM latest_checks WHERE url_id = {url_id}");
    // Every time below lies between the grant and the ingest, where the coordinator keeps them.
    let base = now_ms();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let t = base + 100;
    store.ingest(&[result(&lease, url_id, 404, t)]).await.unwrap();
    // A lease gets one result per URL: a later verdict of the same URL under it, older or newer,
    // is refused and changes nothing; within one batch the first reported counts.
    for (status, at) in [(200, t - 60), (200, t + 1)] {
        let touched = store.ingest(&[result(&lease, url_id, status, at)]).await.unwrap();
        assert_eq!(reasons(&touched), [Refusal::Repeated]);
    }
    assert_eq!(db.scalar(latest).await, 404, "the stored result stays");
    assert_eq!(db.scalar("SELECT COUNT(*) FROM checks").await, 1, "one result per URL per lease");
    let j = store.get_job(job.id).await.unwrap().unwrap();
    assert_eq!((j.counts.checked, j.counts.broken, j.counts.ok), (1, 1, 0), "the first result counted, once");
    let other = lease.urls[1].0;
    let touched =
        store.ingest(&[result(&lease, other, 503, t + 20), result(&lease, other, 410, t + 10)]).await.unwrap();
    assert_eq!(reasons(&touched), [Refusal::Repeated]);
    assert_eq!(db.scalar(&format!("SELECT CAST(status AS BIGINT) FROM checks WHERE url_id = {other}")).await, 503);

    // A later check of the URL (a later lease) is its latest state; the history keeps both, and a
    // result the earlier lease sends late changes neither.
    let (again, _) = store.create_job(new_job("again", 1)).await.unwrap();
    let force = urlfleet_coordinator::store::RecheckPolicy { force: true, ..recheck() };
    store.add_urls(again.id, &urls("a.example", 1), force).await.unwrap();
    store.seal_job(again.id, seal("again", 1, again.priority)).await.unwrap();
    let second = store.acquire_lease(&lease_req("w")).await.unwrap().unwrap();
    assert_eq!(second.urls[0].0, url_id);
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    store.ingest(&[result(&second, url_id, 200, now_ms())]).await.unwrap();
    assert_eq!(db.scalar(latest).await, 200);
    let touched = store.ingest(&[result(&lease, url_id, 500, now_ms())]).await.unwrap();
    assert_eq!(reasons(&touched), [Refusal::Repeated]);
    assert_eq!(db.scalar(latest).await, 200);
    assert_eq!(db.scalar(&format!("SELECT COUNT(*) FROM checks WHERE url_id = {url_id}")).await, 2, "both are history");
    db.assert_invariants().await;
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
    assert_eq!(reasons(&touched), [Refusal::StaleEpoch, Refusal::NoSuchLease]);
    let j = store.get_job(job.id).await.unwrap().unwrap();
    assert_eq!((j.counts.checked, j.counts.broken, j.counts.leased), (0, 0, 2), "refused results change nothing");

    // The honest path still works, in the same batch as a forged result.
    let touched = store.ingest(&[result(&lease, a, 200, now_ms()), result(&forged, b, 404, now_ms())]).await.unwrap();
    assert_eq!(reasons(&touched), [Refusal::NoSuchLease]);
    let j = store.get_job(job.id).await.unwrap().unwrap();
    assert_eq!((j.counts.checked, j.counts.ok, j.counts.broken), (1, 1, 0));
}

fn reasons(t: &urlfleet_coordinator::store::Touched) -> Vec<Refusal> {
    t.refused.iter().map(|r| r.reason).collect()
}

async fn only_the_holder_may_report_and_only_urls_its_live_lease_holds(backend: Backend) {
    let (db, store) = open(backend).await;
    let (job, _) = store.create_job(new_job("held", 3)).await.unwrap();
    store.add_urls(job.id, &urls("h.example", 2), recheck()).await.unwrap();
    store.add_urls(job.id, &urls("other.example", 1), recheck()).await.unwrap();
    store.seal_job(job.id, seal("held", 3, job.priority)).await.unwrap();
    let lease = store.acquire_lease(&lease_req("w")).await.unwrap().unwrap();
    let other = store.acquire_lease(&lease_req("w")).await.unwrap().unwrap();
    let (a, b) = (lease.urls[0].0, lease.urls[1].0);
    let now = now_ms();
    // Another worker, and a URL of another lease under this one: refused, nothing stored.
    let thief = LeaseGrant { holder: "thief".into(), ..lease.clone() };
    let touched =
        store.ingest(&[result(&thief, a, 404, now), result(&lease, other.urls[0].0, 404, now)]).await.unwrap();
    assert_eq!(reasons(&touched), [Refusal::NotHolder, Refusal::NotInLease]);
    assert_eq!(db.scalar("SELECT COUNT(*) FROM checks").await, 0);
    assert_eq!(db.scalar("SELECT COUNT(*) FROM latest_checks WHERE status IS NOT NULL").await, 0);

    // Another session cannot renew or end the holder's leases.
    assert!(store.renew_leases("thief", &[lease.id], TTL, TTL).await.unwrap().is_empty());
    store.expire_worker_leases("thief", &[lease.id], now_ms() - 1).await.unwrap();
    assert_eq!(store.reap_expired(3).await.unwrap().expired_leases, 0, "the thief ended nothing");
    let renewed = store.renew_leases("w", &[lease.id, lease.id, 9_999], TTL, TTL).await.unwrap();
    assert_eq!(renewed.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [lease.id]);
    assert!(renewed[0].1 >= now_ms() + 29_000, "renewed for the TTL: {renewed:?}");

    // Once the lease ended, a replay of what it stored is accepted and changes nothing; a result it
    // never stored is refused.
    store.ingest(&[result(&lease, a, 200, now), result(&lease, b, 200, now)]).await.unwrap();
    let done = store.get_job(job.id).await.unwrap().unwrap();
    let touched = store.ingest(&[result(&lease, a, 200, now)]).await.unwrap();
    assert!(touched.refused.is_empty(), "{touched:?}");
    let touched = store.ingest(&[result(&lease, a, 500, now + 1)]).await.unwrap();
    assert_eq!(reasons(&touched), [Refusal::Repeated], "a second verdict of a URL its ended lease stored");
    assert_eq!(store.get_job(job.id).await.unwrap().unwrap(), done);
    assert_eq!(db.scalar("SELECT COUNT(*) FROM checks").await, 2, "and is not stored");

    // A lease past its expiry is still its holder's until the reaper ends it: a heartbeat that
    // comes first renews it. An ended lease is never revived, and counts nothing more.
    store.expire_worker_leases("w", &[other.id], now_ms() - 1).await.unwrap();
    let renewed = store.renew_leases("w", &[other.id], TTL, TTL).await.unwrap();
    assert_eq!(renewed.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [other.id]);
    assert_eq!(store.reap_expired(3).await.unwrap().expired_leases, 0, "renewed before the reaper came");
    store.expire_worker_leases("w", &[other.id], now_ms() - 1).await.unwrap();
    assert_eq!(store.reap_expired(3).await.unwrap().expired_leases, 1);
    assert!(store.renew_leases("w", &[other.id], TTL, TTL).await.unwrap().is_empty());
    let touched = store.ingest(&[result(&other, other.urls[0].0, 200, now_ms())]).await.unwrap();
    assert_eq!(reasons(&touched), [Refusal::LeaseEnded]);
}

const TTL: std::time::Duration = std::time::Duration::from_secs(30);

async fn the_coordinators_clock_orders_results(backend: Backend) {
    let (db, store) = open(backend).await;
    // Two URLs: the lease stays live after the first is reported.
    let (job, _) = store.create_job(new_job("clock", 2)).await.unwrap();
    store.add_urls(job.id, &urls("c.example", 2), recheck()).await.unwrap();
    store.seal_job(job.id, seal("clock", 2, job.priority)).await.unwrap();
    let before = now_ms();
    let lease = store.acquire_lease(&lease_req("w")).await.unwrap().unwrap();
    let url_id = lease.urls[0].0;
    // A verdict dated 2036 is stored as of its arrival, so a later check can overwrite it.
    store.ingest(&[result(&lease, url_id, 200, 2_100_000_000_000)]).await.unwrap();
    let after = now_ms();
    let stored = db.scalar(&format!("SELECT checked_at FROM latest_checks WHERE url_id = {url_id}")).await;
    assert!((before..=after).contains(&stored), "{stored} not in {before}..={after}");
    // Resent later (the lease still live), it is a replay: no second history row, the same state.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let touched = store.ingest(&[result(&lease, url_id, 200, 2_100_000_000_000)]).await.unwrap();
    assert!(touched.refused.is_empty());
    assert_eq!(db.scalar("SELECT COUNT(*) FROM checks").await, 1, "a resent future-dated result is stored once");
    assert_eq!(db.scalar(&format!("SELECT checked_at FROM latest_checks WHERE url_id = {url_id}")).await, stored);
    // One dated before its lease was granted is stored as of the grant.
    let (job, _) = store.create_job(new_job("clock2", 1)).await.unwrap();
    store.add_urls(job.id, &urls("d.example", 1), recheck()).await.unwrap();
    store.seal_job(job.id, seal("clock2", 1, job.priority)).await.unwrap();
    let granted_after = now_ms();
    let lease = store.acquire_lease(&lease_req("w")).await.unwrap().unwrap();
    store.ingest(&[result(&lease, lease.urls[0].0, 200, 1)]).await.unwrap();
    let stored = db.scalar(&format!("SELECT checked_at FROM latest_checks WHERE url_id = {}", lease.urls[0].0)).await;
    assert!(stored >= granted_after, "{stored} < {granted_after}");
}

/// A large submission has PostgreSQL analyze the URL tables at once: without statistics (a new
/// database, or tables the job has made several times larger) the prepared ingest statements are
/// planned as scans of the whole table per chunk. Once they have statistics, uploads that add less
/// than three times what those describe start no other analyze.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_submission_gets_the_url_tables_analyzed_on_postgres() {
    let (db, store) = open(Backend::Postgres).await;
    let analyzed = "SELECT COUNT(*) FROM pg_stat_user_tables \
                    WHERE relname IN ('job_urls', 'urls') AND last_analyze IS NOT NULL";
    let both_analyzed = || async {
        for _ in 0..100 {
            if db.scalar(analyzed).await == 2 {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        false
    };
    assert_eq!(db.scalar(analyzed).await, 0);
    // While the upload goes on (its URLs are leased and reported meanwhile), once it reaches 10,000.
    let (job, _) = store.create_job(new_job("big", 12_000)).await.unwrap();
    let all = urls("a.example", 48_000);
    store.add_urls(job.id, &all[..6_000], recheck()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(db.scalar(analyzed).await, 0, "not below 10,000 URLs");
    store.add_urls(job.id, &all[6_000..12_000], recheck()).await.unwrap();
    assert!(both_analyzed().await, "both URL tables analyzed during the upload");
    store.seal_job(job.id, seal("big", 12_000, job.priority)).await.unwrap();
    // Statistics of 12,000 rows: a second job of 24,000 leaves them as they are, however its upload
    // is cut, and one that takes the rows added to three times that many has them analyzed again.
    db.scalar("SELECT 0::bigint FROM (SELECT pg_stat_reset()) AS r").await;
    let (second, _) = store.create_job(new_job("second", 36_000)).await.unwrap();
    for part in all[12_000..36_000].chunks(4_000) {
        store.add_urls(second.id, part, recheck()).await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(db.scalar(analyzed).await, 0, "24,000 rows added to statistics of 12,000");
    store.add_urls(second.id, &all[36_000..], recheck()).await.unwrap();
    assert!(both_analyzed().await, "36,000 rows added to statistics of 12,000");
}

/// Finishing a URL that answered well changes no value any index of `job_urls` or `urls` names, so
/// PostgreSQL writes it as a heap-only update (no new entry in each index), and it is the only write
/// to `job_urls` after the insert: a grant moves open work, it does not mark the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_finishing_urls_that_answered_well_is_heap_only() {
    let (db, store) = open(Backend::Postgres).await;
    let (job, _) = store.create_job(new_job("hot", 20)).await.unwrap();
    store.add_urls(job.id, &urls("a.example", 20), recheck()).await.unwrap();
    store.seal_job(job.id, seal("hot", 20, job.priority)).await.unwrap();
    let lease = store.acquire_lease(&lease_req("w")).await.unwrap().unwrap();
    assert_eq!(lease.urls.len(), 20);
    let results: Vec<_> = lease.urls.iter().map(|(id, _)| result(&lease, *id, 200, now_ms())).collect();
    store.ingest(&results).await.unwrap();
    assert_eq!(store.get_job(job.id).await.unwrap().unwrap().counts.ok, 20);
    // The store's connections report their counts when they close (or within seconds when idle).
    drop(store);
    let counts = "SELECT n_tup_upd * 1000 + n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = ";
    let (mut job_urls, mut url_rows) = (0, 0);
    for _ in 0..150 {
        job_urls = db.scalar(&format!("{counts}'job_urls'")).await;
        url_rows = db.scalar(&format!("{counts}'urls'")).await;
        if job_urls / 1000 >= 20 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // `job_urls`: the 20 finishes, and nothing else — a grant writes to the open work, not the record.
    assert_eq!((job_urls / 1000, job_urls % 1000), (20, 20), "job_urls updates, of them heap-only");
    // `urls`: none — a URL's latest state is its newest check, not a copy.
    assert_eq!(url_rows, 0, "urls updates");
}
