//! Store conformance: every rule holds the same on SQLite and PostgreSQL. Each test runs against both.

use std::sync::Arc;
use std::time::Duration;

use urlfleet_coordinator::store::{
    InvalidEntry, JobOptions, JobState, LeaseBudget, LeaseGrant, LeaseRequest, NewJob, PlannedUrl, Priority,
    RecheckPolicy, Seal, Store,
};
use urlfleet_shared::ReportedResult;
use urlfleet_shared::time::now_ms;
use urlfleet_shared::{CheckOutcome, OutcomeKind, policy};
use urlfleet_tests::{Backend, TestDb};

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Sqlite).await; })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Postgres).await; })*
        }
    };
}

on_both_stores!(
    duplicate_submissions_return_the_existing_job,
    concurrent_duplicate_submissions_create_one_job,
    a_host_is_leased_to_one_holder_at_a_time_and_results_complete_the_job,
    replayed_results_change_nothing,
    an_older_result_never_overwrites_a_newer_one,
    expired_leases_return_urls_to_the_frontier_and_fail_after_the_attempt_limit,
    recently_checked_urls_are_fresh_unless_forced,
    cancelling_keeps_finished_results_and_releases_leases,
    invalid_entries_are_listed_with_their_reasons,
    a_host_with_lifted_limits_is_leased_several_times_without_sharing_urls,
    a_url_leased_for_another_job_is_checked_once_for_both,
    a_lease_runs_on_while_a_url_it_holds_for_another_job_is_open,
    jobs_of_equal_priority_on_one_host_advance_in_turn,
    a_discarded_submission_gives_back_the_lease_its_urls_were_in,
    higher_priority_work_is_leased_first,
    a_polite_host_is_leased_in_its_budget_the_strictest_while_work_is_left,
    a_job_cancelled_while_receiving_stays_cancelled_and_a_second_seal_changes_nothing,
    results_under_no_granted_lease_or_a_stale_epoch_are_refused,
    stored_options_read_back_as_submitted,
);

async fn open(backend: Backend) -> (TestDb, Arc<dyn Store>) {
    let db = TestDb::fresh(backend).await;
    let store = urlfleet_coordinator::store::connect(&db.url).await.expect("open store");
    (db, store)
}

fn new_job(key: &str, _total: u64) -> NewJob {
    let options = JobOptions { name: format!("job {key}"), ..Default::default() };
    NewJob { options, priority: Priority::High, not_before_ms: 0, trace_parent: None }
}

/// The seal of a submission of `total` distinct entries under `key`, at the job's priority.
fn seal(key: &str, total: u64, priority: Priority) -> Seal {
    Seal {
        unique_key: key.to_string(),
        unique_window: policy::DEFAULT_UNIQUE_WINDOW,
        received: total,
        duplicates: 0,
        total,
        priority,
        not_before_ms: 0,
    }
}

/// A whole submission of one URL on `host` under `key`: create, add, seal.
async fn submit(store: &Arc<dyn Store>, key: &str, host: &str, window: Duration) -> (i64, i64, bool) {
    let (job, _) = store.create_job(new_job(key, 1)).await.unwrap();
    store.add_urls(job.id, &urls(host, 1), recheck()).await.unwrap();
    let (sealed, dup) =
        store.seal_job(job.id, Seal { unique_window: window, ..seal(key, 1, Priority::High) }).await.unwrap();
    (job.id, sealed.id, dup)
}

fn urls(host: &str, n: usize) -> Vec<PlannedUrl> {
    (0..n)
        .map(|i| PlannedUrl {
            url: format!("http://{host}/{i}"),
            host: host.to_string(),
            budget: LeaseBudget { max_leases: 1, lease_urls: 0 },
            seq: i as u64,
        })
        .collect()
}

fn recheck() -> RecheckPolicy {
    RecheckPolicy {
        force: false,
        recheck_after: policy::DEFAULT_RECHECK_AFTER,
        recheck_broken_after: policy::DEFAULT_RECHECK_BROKEN_AFTER,
    }
}

fn lease_req(holder: &str) -> LeaseRequest {
    LeaseRequest { worker_id: holder.to_string(), max_urls: 100, max_urls_lifted: 100, ttl: Duration::from_secs(30) }
}

fn result(lease: &LeaseGrant, url_id: i64, status: u16, checked_at: i64) -> ReportedResult {
    let mut o = CheckOutcome::error(OutcomeKind::from_status(status, 0), "", 1);
    o.error = None;
    o.status = Some(status);
    o.checked_at_ms = checked_at;
    ReportedResult { lease_id: lease.id, epoch: lease.epoch, url_id, outcome: o }
}

async fn duplicate_submissions_return_the_existing_job(backend: Backend) {
    let (_db, store) = open(backend).await;
    let window = policy::DEFAULT_UNIQUE_WINDOW;
    let (created, first, dup) = submit(&store, "k1", "a.example", window).await;
    assert!(!dup);
    assert_eq!(created, first);
    let (discarded, second, dup) = submit(&store, "k1", "a.example", window).await;
    assert!(dup);
    assert_eq!(second, first);
    assert!(store.get_job(discarded).await.unwrap().is_none(), "the duplicate leaves nothing behind");
    let lease = store.acquire_lease(&lease_req("w")).await.unwrap().unwrap();
    assert_eq!(lease.urls.len(), 1, "the URL is queued once, for the first job");
    assert_eq!(lease.jobs, vec![first]);

    // Once the first job ends, the same set makes a new job.
    store.cancel_job(first).await.unwrap();
    let (_, third, dup) = submit(&store, "k1", "a.example", window).await;
    assert!(!dup);
    assert_ne!(third, first);

    // An idempotency key finds its job at once, whatever follows.
    let mut keyed = new_job("k2", 1);
    keyed.options.idempotency_key = Some("retry-me".into());
    let (k, dup) = store.create_job(keyed.clone()).await.unwrap();
    assert!(!dup);
    assert_eq!(k.state, JobState::Receiving);
    let (again, dup) = store.create_job(keyed).await.unwrap();
    assert!(dup);
    assert_eq!(again.id, k.id);

    // Outside the window an active job no longer absorbs duplicates.
    let (_, a, _) = submit(&store, "k4", "b.example", Duration::ZERO).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (_, b, dup) = submit(&store, "k4", "b.example", Duration::ZERO).await;
    assert!(!dup);
    assert_ne!(a, b);
}

async fn concurrent_duplicate_submissions_create_one_job(backend: Backend) {
    let (_db, store) = open(backend).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(
            async move { submit(&store, "same", "c.example", policy::DEFAULT_UNIQUE_WINDOW).await },
        ));
    }
    let mut created = 0;
    let mut ids = Vec::new();
    for t in tasks {
        let (_, job, dup) = t.await.unwrap();
        created += usize::from(!dup);
        ids.push(job);
    }
    ids.dedup();
    assert_eq!(created, 1);
    assert_eq!(ids.len(), 1, "every submission got the same job");
    let lease = store.acquire_lease(&lease_req("w")).await.unwrap().unwrap();
    assert_eq!((lease.urls.len(), lease.jobs.len()), (1, 1), "the discarded twins left no work behind");
    assert!(store.acquire_lease(&lease_req("w2")).await.unwrap().is_none());
}

async fn a_host_is_leased_to_one_holder_at_a_time_and_results_complete_the_job(backend: Backend) {
    let (_db, store) = open(backend).await;
    let (job, _) = store.create_job(new_job("flow", 5)).await.unwrap();
    let mut all = urls("a.example", 3);
    all.extend(urls("b.example", 2));
    store.add_urls(job.id, &all, recheck()).await.unwrap();
    store.seal_job(job.id, seal("flow", 5, job.priority)).await.unwrap();

    let l1 = store.acquire_lease(&lease_req("w1")).await.unwrap().expect("a lease");
    let l2 = store.acquire_lease(&lease_req("w2")).await.unwrap().expect("another host");
    assert_ne!(l1.host, l2.host, "a host is leased to one holder at a time");
    assert!(store.acquire_lease(&lease_req("w3")).await.unwrap().is_none(), "both hosts are taken");
    assert_eq!(l1.urls.len() + l2.urls.len(), 5);
    let running = store.get_job(job.id).await.unwrap().unwrap();
    assert_eq!(running.state, JobState::Running);
    assert_eq!(running.counts.leased, 5);

    let now = now_ms();
    let res: Vec<ReportedResult> = l1
        .urls
        .iter()
        .map(|(id, _)| result(&l1, *id, 200, now))
        .chain(l2.urls.iter().map(|(id, _)| result(&l2, *id, 404, now)))
        .collect();
    let touched = store.ingest(&res).await.unwrap();
    assert_eq!(touched.jobs, vec![job.id]);
    let done = store.get_job(job.id).await.unwrap().unwrap();
    assert_eq!(done.state, JobState::Completed);
    assert_eq!(done.counts.checked, 5);
    assert_eq!(done.counts.leased, 0);
    assert_eq!(done.counts.ok + done.counts.broken, 5);
    assert_eq!(done.counts.broken as usize, l2.urls.len());
    assert!(done.finished_at_ms.is_some());
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

async fn expired_leases_return_urls_to_the_frontier_and_fail_after_the_attempt_limit(backend: Backend) {
    let (_db, store) = open(backend).await;
    let (job, _) = store.create_job(new_job("expire", 2)).await.unwrap();
    store.add_urls(job.id, &urls("a.example", 2), recheck()).await.unwrap();
    store.seal_job(job.id, seal("expire", 2, job.priority)).await.unwrap();
    let short =
        LeaseRequest { worker_id: "w".into(), max_urls: 100, max_urls_lifted: 100, ttl: Duration::from_millis(1) };
    let mut leases = Vec::new();
    for attempt in 1..=3 {
        let lease = store.acquire_lease(&short).await.unwrap().unwrap_or_else(|| panic!("lease {attempt}"));
        leases.push(lease.clone());
        assert_eq!(lease.urls.len(), 2);
        assert!(store.acquire_lease(&short).await.unwrap().is_none(), "still leased before the reap");
        tokio::time::sleep(Duration::from_millis(10)).await;
        let touched = store.reap_expired(3).await.unwrap();
        assert_eq!(touched.jobs, vec![job.id]);
        let j = store.get_job(job.id).await.unwrap().unwrap();
        assert_eq!(j.counts.leased, 0);
        if attempt < 3 {
            assert_eq!(j.counts.pending(), 2, "back on the frontier after attempt {attempt}");
            assert_eq!(j.state, JobState::Running);
        } else {
            assert_eq!(j.counts.failed, 2);
            assert_eq!(j.counts.error, 2);
            assert_eq!(j.state, JobState::Completed, "a URL that keeps killing leases fails instead of looping");
        }
    }
    assert!(store.acquire_lease(&short).await.unwrap().is_none());
    let rows = store.list_results(job.id, &[], None, 10).await.unwrap();
    assert!(rows.iter().all(|r| r.kind == Some(OutcomeKind::Failed) && r.error.is_some()));

    // A late report from an expired lease is recorded but cannot un-fail or double-count.
    store.ingest(&[result(&leases[0], leases[0].urls[1].0, 200, now_ms())]).await.unwrap();
    let j = store.get_job(job.id).await.unwrap().unwrap();
    assert_eq!((j.counts.failed, j.counts.checked), (2, 0));
}

async fn recently_checked_urls_are_fresh_unless_forced(backend: Backend) {
    let (_db, store) = open(backend).await;
    let (job, _) = store.create_job(new_job("first", 2)).await.unwrap();
    store.add_urls(job.id, &urls("a.example", 2), recheck()).await.unwrap();
    store.seal_job(job.id, seal("first", 2, job.priority)).await.unwrap();
    let lease = store.acquire_lease(&lease_req("w")).await.unwrap().unwrap();
    let now = now_ms();
    store
        .ingest(&[result(&lease, lease.urls[0].0, 200, now), result(&lease, lease.urls[1].0, 500, now)])
        .await
        .unwrap();

    let (again, _) = store.create_job(new_job("second", 2)).await.unwrap();
    store.add_urls(again.id, &urls("a.example", 2), recheck()).await.unwrap();
    let sealed = store.seal_job(again.id, seal("second", 2, again.priority)).await.unwrap().0;
    assert_eq!(sealed.state, JobState::Completed, "nothing to check");
    assert_eq!((sealed.counts.fresh, sealed.counts.ok, sealed.counts.broken), (2, 1, 1));
    let rows = store.list_results(again.id, &[], None, 10).await.unwrap();
    assert!(rows.iter().all(|r| r.fresh && r.status.is_some()));

    // Broken URLs are re-checked sooner than healthy ones.
    let (third, _) = store.create_job(new_job("third", 2)).await.unwrap();
    let policy = RecheckPolicy { recheck_broken_after: Duration::ZERO, ..recheck() };
    store.add_urls(third.id, &urls("a.example", 2), policy).await.unwrap();
    let j = store.seal_job(third.id, seal("third", 2, third.priority)).await.unwrap().0;
    assert_eq!((j.counts.fresh, j.counts.pending()), (1, 1));

    let (forced, _) = store.create_job(new_job("forced", 2)).await.unwrap();
    store.add_urls(forced.id, &urls("a.example", 2), RecheckPolicy { force: true, ..recheck() }).await.unwrap();
    let j = store.seal_job(forced.id, seal("forced", 2, forced.priority)).await.unwrap().0;
    assert_eq!((j.counts.fresh, j.counts.pending()), (0, 2));
}

async fn cancelling_keeps_finished_results_and_releases_leases(backend: Backend) {
    let (_db, store) = open(backend).await;
    let (job, _) = store.create_job(new_job("cancel", 6)).await.unwrap();
    let mut all = urls("a.example", 3);
    all.extend(urls("b.example", 3));
    store.add_urls(job.id, &all, recheck()).await.unwrap();
    store.seal_job(job.id, seal("cancel", 6, job.priority)).await.unwrap();
    let lease = store.acquire_lease(&lease_req("w")).await.unwrap().unwrap();
    store.ingest(&[result(&lease, lease.urls[0].0, 200, now_ms())]).await.unwrap();
    let (cancelled, revoked) = store.cancel_job(job.id).await.unwrap().unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert_eq!(revoked, vec![lease.id]);
    assert_eq!((cancelled.counts.checked, cancelled.counts.cancelled, cancelled.counts.leased), (1, 5, 0));
    assert!(store.acquire_lease(&lease_req("w")).await.unwrap().is_none(), "nothing left to lease");
    let rows = store.list_results(job.id, &[urlfleet_shared::OutcomeClass::Ok], None, 10).await.unwrap();
    assert_eq!(rows.len(), 1, "the finished result is kept");
    let (again, revoked) = store.cancel_job(job.id).await.unwrap().unwrap();
    assert_eq!(again, cancelled);
    assert!(revoked.is_empty());
    assert!(store.cancel_job(987_654).await.unwrap().is_none());
}

async fn invalid_entries_are_listed_with_their_reasons(backend: Backend) {
    let (_db, store) = open(backend).await;
    let (job, _) = store.create_job(new_job("invalid", 3)).await.unwrap();
    store.add_urls(job.id, &urls("a.example", 1), recheck()).await.unwrap();
    let bad = vec![
        InvalidEntry { input: "ftp://x".into(), reason: "unsupported scheme".into() },
        InvalidEntry { input: "nope".into(), reason: "not a URL".into() },
    ];
    store.add_invalid(job.id, 1, &bad).await.unwrap();
    let j = store.seal_job(job.id, seal("invalid", 3, job.priority)).await.unwrap().0;
    assert_eq!(j.counts.invalid, 2);
    // Paging crosses from URL rows into invalid entries.
    let page1 = store.list_results(job.id, &[], None, 2).await.unwrap();
    assert_eq!(page1.len(), 2);
    let page2 = store.list_results(job.id, &[], Some(page1[1].cursor), 2).await.unwrap();
    assert_eq!(page2.len(), 1);
    assert_eq!(page2[0].url, "nope");
    let only_invalid = store.list_results(job.id, &[urlfleet_shared::OutcomeClass::Invalid], None, 10).await.unwrap();
    assert_eq!(only_invalid.len(), 2);
    assert!(only_invalid.iter().all(|r| r.error.is_some() && r.kind == Some(OutcomeKind::Invalid)));
}

async fn a_host_with_lifted_limits_is_leased_several_times_without_sharing_urls(backend: Backend) {
    let (_db, store) = open(backend).await;
    let (job, _) = store.create_job(new_job("shared", 500)).await.unwrap();
    let own: Vec<PlannedUrl> = urls("own.example", 500)
        .into_iter()
        .map(|u| PlannedUrl { budget: LeaseBudget { max_leases: 3, ..u.budget }, ..u })
        .collect();
    store.add_urls(job.id, &own, recheck()).await.unwrap();
    store.seal_job(job.id, seal("shared", 500, job.priority)).await.unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut leases = Vec::new();
    for holder in ["w1", "w2", "w3"] {
        let l = store.acquire_lease(&lease_req(holder)).await.unwrap().expect("a concurrent lease");
        assert_eq!(l.host, "own.example");
        assert_eq!(l.urls.len(), 100);
        for (id, _) in &l.urls {
            assert!(seen.insert(*id), "URL {id} leased twice");
        }
        leases.push(l);
    }
    assert!(store.acquire_lease(&lease_req("w4")).await.unwrap().is_none(), "at most max_leases at once");
    let l = &leases[0];
    let now = now_ms();
    store.ingest(&l.urls.iter().map(|(id, _)| result(l, *id, 200, now)).collect::<Vec<_>>()).await.unwrap();
    let next = store.acquire_lease(&lease_req("w1")).await.unwrap().expect("a finished lease frees a slot");
    assert!(next.urls.iter().all(|(id, _)| !seen.contains(id)));
}

async fn a_url_leased_for_another_job_is_checked_once_for_both(backend: Backend) {
    let (_db, store) = open(backend).await;
    let (a, _) = store.create_job(new_job("a", 1)).await.unwrap();
    store.add_urls(a.id, &urls("s.example", 1), recheck()).await.unwrap();
    store.seal_job(a.id, seal("a", 1, a.priority)).await.unwrap();
    let lease = store.acquire_lease(&lease_req("w")).await.unwrap().unwrap();

    let (b, _) = store.create_job(new_job("b", 2)).await.unwrap();
    store.add_urls(b.id, &urls("s.example", 2), recheck()).await.unwrap();
    let b_now = store.seal_job(b.id, seal("b", 2, b.priority)).await.unwrap().0;
    assert_eq!((b_now.counts.leased, b_now.counts.pending()), (1, 1), "the shared URL joined the running lease");

    let now = now_ms();
    store.ingest(&[result(&lease, lease.urls[0].0, 200, now)]).await.unwrap();
    for job in [a.id, b.id] {
        let j = store.get_job(job).await.unwrap().unwrap();
        assert_eq!((j.counts.checked, j.counts.leased), (1, 0), "job {job}");
    }
    let next = store.acquire_lease(&lease_req("w")).await.unwrap().unwrap();
    assert_eq!(next.urls.len(), 1, "only the URL nobody checked is left");
    assert_ne!(next.urls[0].0, lease.urls[0].0);
}

async fn a_lease_runs_on_while_a_url_it_holds_for_another_job_is_open(backend: Backend) {
    let (_db, store) = open(backend).await;
    let (a, _) = store.create_job(new_job("a", 1)).await.unwrap();
    store.add_urls(a.id, &urls("s.example", 1), recheck()).await.unwrap();
    store.seal_job(a.id, seal("a", 1, a.priority)).await.unwrap();
    let lease = store.acquire_lease(&lease_req("w")).await.unwrap().unwrap();
    let (b, _) = store.create_job(new_job("b", 1)).await.unwrap();
    store.add_urls(b.id, &urls("s.example", 1), recheck()).await.unwrap();
    store.seal_job(b.id, seal("b", 1, b.priority)).await.unwrap();

    // Job b's copy of the URL leaves the lease; job a's is still being checked under it.
    let (_, revoked) = store.cancel_job(b.id).await.unwrap().unwrap();
    assert!(revoked.is_empty(), "the lease still holds job a's URL");
    let (c, _) = store.create_job(new_job("c", 1)).await.unwrap();
    let later = PlannedUrl {
        url: "http://s.example/later".into(),
        host: "s.example".into(),
        budget: LeaseBudget { max_leases: 1, lease_urls: 0 },
        seq: 0,
    };
    store.add_urls(c.id, &[later], recheck()).await.unwrap();
    store.seal_job(c.id, seal("c", 1, c.priority)).await.unwrap();
    assert!(store.acquire_lease(&lease_req("w2")).await.unwrap().is_none(), "one lease at a time on a polite host");

    store.ingest(&[result(&lease, lease.urls[0].0, 200, now_ms())]).await.unwrap();
    let next = store.acquire_lease(&lease_req("w2")).await.unwrap().expect("the lease ended with its last URL");
    assert_eq!(next.urls.len(), 1);
    let done = store.get_job(a.id).await.unwrap().unwrap();
    assert_eq!((done.counts.checked, done.counts.leased), (1, 0));
}

async fn jobs_of_equal_priority_on_one_host_advance_in_turn(backend: Backend) {
    let (_db, store) = open(backend).await;
    let mut big = new_job("big", 300);
    big.priority = Priority::Low;
    let (big, _) = store.create_job(big).await.unwrap();
    store.add_urls(big.id, &urls("shared.example", 300), recheck()).await.unwrap();
    store.seal_job(big.id, seal("big", 300, Priority::Low)).await.unwrap();
    let first = store.acquire_lease(&lease_req("w")).await.unwrap().unwrap();
    assert_eq!(first.urls.len(), 100);
    store
        .ingest(&first.urls.iter().map(|(id, _)| result(&first, *id, 200, now_ms())).collect::<Vec<_>>())
        .await
        .unwrap();

    // A job of the same priority arrives while the big one has 200 URLs left on the host.
    let mut late = new_job("late", 10);
    late.priority = Priority::Low;
    let (late, _) = store.create_job(late).await.unwrap();
    let late_urls: Vec<PlannedUrl> = (0..10)
        .map(|i| PlannedUrl {
            url: format!("http://shared.example/late/{i}"),
            host: "shared.example".into(),
            budget: LeaseBudget { max_leases: 1, lease_urls: 0 },
            seq: i,
        })
        .collect();
    store.add_urls(late.id, &late_urls, recheck()).await.unwrap();
    store.seal_job(late.id, seal("late", 10, Priority::Low)).await.unwrap();
    let next = store.acquire_lease(&lease_req("w")).await.unwrap().unwrap();
    let (from_late, from_big): (Vec<_>, Vec<_>) = next.urls.iter().partition(|(_, u)| u.contains("/late/"));
    assert_eq!(from_late.len(), 10, "the late job's first URLs go with the big job's next ones, not after all of them");
    let mut big_left: Vec<u32> = from_big.iter().map(|(_, u)| u.rsplit('/').next().unwrap().parse().unwrap()).collect();
    big_left.sort();
    assert_eq!(big_left, (100..190).collect::<Vec<u32>>(), "the big job goes on in its own order");
}

async fn a_discarded_submission_gives_back_the_lease_its_urls_were_in(backend: Backend) {
    let (_db, store) = open(backend).await;
    // URLs are leased while the submission still streams; then the stream breaks.
    let (broken, _) = store.create_job(new_job("broken", 2)).await.unwrap();
    store.add_urls(broken.id, &urls("x.example", 2), recheck()).await.unwrap();
    let lease = store.acquire_lease(&lease_req("w")).await.unwrap().expect("a receiving job's URLs are leased");
    assert_eq!(lease.urls.len(), 2);
    store.discard_job(broken.id).await.unwrap();
    assert!(store.get_job(broken.id).await.unwrap().is_none());

    let (next, _) = store.create_job(new_job("next", 1)).await.unwrap();
    let again = PlannedUrl {
        url: "http://x.example/again".into(),
        host: "x.example".into(),
        budget: LeaseBudget { max_leases: 1, lease_urls: 0 },
        seq: 0,
    };
    store.add_urls(next.id, &[again], recheck()).await.unwrap();
    store.seal_job(next.id, seal("next", 1, next.priority)).await.unwrap();
    let l = store.acquire_lease(&lease_req("w")).await.unwrap().expect("the discarded job's lease ended with it");
    assert_eq!(l.host, "x.example");
}

async fn higher_priority_work_is_leased_first(backend: Backend) {
    let (_db, store) = open(backend).await;
    let mut low = new_job("low", 300);
    low.priority = Priority::Low;
    let (low, _) = store.create_job(low).await.unwrap();
    for h in 0..30 {
        store.add_urls(low.id, &urls(&format!("low{h}.example"), 10), recheck()).await.unwrap();
    }
    store.seal_job(low.id, seal("low", 300, low.priority)).await.unwrap();
    let first = store.acquire_lease(&lease_req("w")).await.unwrap().unwrap();
    assert!(first.host.starts_with("low"));

    let (high, _) = store.create_job(new_job("high", 2)).await.unwrap();
    store.add_urls(high.id, &urls("urgent.example", 2), recheck()).await.unwrap();
    store.seal_job(high.id, seal("high", 2, high.priority)).await.unwrap();
    let next = store.acquire_lease(&lease_req("w")).await.unwrap().unwrap();
    assert_eq!(next.host, "urgent.example", "the high-priority job jumps the queue");

    // Within a lease the most urgent URLs come first, as the worker checks them in the order given:
    // here the ones added last, whose ids are the highest.
    let mut later = new_job("later", 5);
    later.priority = Priority::Low;
    let (later, _) = store.create_job(later).await.unwrap();
    store.add_urls(later.id, &urls("mixed.example", 5), recheck()).await.unwrap();
    store.seal_job(later.id, seal("later", 5, later.priority)).await.unwrap();
    let (rush, _) = store.create_job(new_job("rush", 2)).await.unwrap();
    let rush_urls: Vec<PlannedUrl> = urls("mixed.example", 7).split_off(5);
    store.add_urls(rush.id, &rush_urls, recheck()).await.unwrap();
    store.seal_job(rush.id, seal("rush", 2, rush.priority)).await.unwrap();
    let mixed = store.acquire_lease(&lease_req("w")).await.unwrap().unwrap();
    assert_eq!(mixed.host, "mixed.example");
    let order: Vec<&str> = mixed.urls.iter().map(|(_, u)| u.as_str()).collect();
    assert_eq!(
        order,
        ["/5", "/6", "/0", "/1", "/2", "/3", "/4"].map(|p| format!("http://mixed.example{p}")),
        "urgent URLs first, then the rest in submission order"
    );
}

async fn a_job_cancelled_while_receiving_stays_cancelled_and_a_second_seal_changes_nothing(backend: Backend) {
    let (db, store) = open(backend).await;
    let (job, _) = store.create_job(new_job("stop", 4)).await.unwrap();
    store.add_urls(job.id, &urls("a.example", 2), recheck()).await.unwrap();
    let (cancelled, _) = store.cancel_job(job.id).await.unwrap().unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    // The stream goes on after the cancellation; the seal cancels what came late.
    store.add_urls(job.id, &urls("b.example", 2), recheck()).await.unwrap();
    let (sealed, dup) = store.seal_job(job.id, seal("stop", 4, job.priority)).await.unwrap();
    assert!(!dup);
    assert_eq!(sealed.state, JobState::Cancelled);
    assert_eq!((sealed.counts.total, sealed.counts.cancelled), (4, 4));
    assert_eq!(db.scalar("SELECT COUNT(*) FROM job_urls WHERE state = 'pending'").await, 0);
    assert_eq!(db.scalar("SELECT CAST(COALESCE(SUM(pending), 0) AS BIGINT) FROM hosts").await, 0);
    assert!(store.acquire_lease(&lease_req("w")).await.unwrap().is_none());

    // Sealing an accepted job again (a retried call) leaves it as it is.
    let (live, _) = store.create_job(new_job("live", 2)).await.unwrap();
    store.add_urls(live.id, &urls("c.example", 2), recheck()).await.unwrap();
    let (first, _) = store.seal_job(live.id, seal("live", 2, live.priority)).await.unwrap();
    let (again, dup) = store.seal_job(live.id, seal("live", 2, live.priority)).await.unwrap();
    assert!(!dup);
    assert_eq!(again, first);
    assert_eq!(store.acquire_lease(&lease_req("w")).await.unwrap().unwrap().urls.len(), 2);
}

async fn a_polite_host_is_leased_in_its_budget_the_strictest_while_work_is_left(backend: Backend) {
    let (_db, store) = open(backend).await;
    let on_slow = |from: usize, n: usize, lease_urls: u32| -> Vec<PlannedUrl> {
        urls("slow.example", from + n)
            .split_off(from)
            .into_iter()
            .map(|u| PlannedUrl { budget: LeaseBudget { lease_urls, ..u.budget }, ..u })
            .collect()
    };
    let add = async |key: &str, urls: Vec<PlannedUrl>| {
        let (job, _) = store.create_job(new_job(key, urls.len() as u64)).await.unwrap();
        store.add_urls(job.id, &urls, recheck()).await.unwrap();
        store.seal_job(job.id, seal(key, urls.len() as u64, job.priority)).await.unwrap();
    };
    let lease_and_finish = async || {
        let l = store.acquire_lease(&lease_req("w")).await.unwrap().expect("a lease");
        let now = now_ms();
        store.ingest(&l.urls.iter().map(|(id, _)| result(&l, *id, 200, now)).collect::<Vec<_>>()).await.unwrap();
        l.urls.len()
    };
    // 12 URLs a lease; then a job whose budget is 4 joins while work is left, and one with no bound
    // of its own: the strictest holds until the host's work is done.
    add("a", on_slow(0, 30, 12)).await;
    assert_eq!(lease_and_finish().await, 12);
    add("b", on_slow(30, 10, 4)).await;
    add("c", on_slow(40, 10, 0)).await;
    let mut sizes = Vec::new();
    while let Some(l) = store.acquire_lease(&lease_req("w")).await.unwrap() {
        let now = now_ms();
        store.ingest(&l.urls.iter().map(|(id, _)| result(&l, *id, 200, now)).collect::<Vec<_>>()).await.unwrap();
        sizes.push(l.urls.len());
    }
    assert_eq!(sizes.iter().sum::<usize>(), 38);
    assert!(sizes.iter().all(|n| *n == 4 || *n == 2), "{sizes:?}");
    // With nothing left, the next job's budget is the host's.
    add("d", on_slow(50, 20, 12)).await;
    assert_eq!(lease_and_finish().await, 12);
    assert_eq!(lease_and_finish().await, 8);

    // A job whose limits are lifted, arriving while all of a polite job's URLs are out in a lease
    // (nothing pending), opens no lease beside it.
    add("e", on_slow(70, 5, 12)).await;
    let polite = store.acquire_lease(&lease_req("w")).await.unwrap().expect("a lease");
    let lifted: Vec<PlannedUrl> = on_slow(75, 20, 0)
        .into_iter()
        .map(|u| PlannedUrl { budget: LeaseBudget { max_leases: 4, ..u.budget }, ..u })
        .collect();
    add("f", lifted).await;
    assert!(
        store.acquire_lease(&lease_req("w2")).await.unwrap().is_none(),
        "no second lease while the polite one is out"
    );
    let now = now_ms();
    store.ingest(&polite.urls.iter().map(|(id, _)| result(&polite, *id, 200, now)).collect::<Vec<_>>()).await.unwrap();
    assert_eq!(lease_and_finish().await, 12, "the polite budget holds while the host has work");
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

async fn stored_options_read_back_as_submitted(backend: Backend) {
    let (_db, store) = open(backend).await;
    let mut options =
        JobOptions { name: "opts".into(), force: true, priority: Some(Priority::Medium), ..Default::default() };
    options.labels.insert("team".into(), "seo".into());
    options.host_policies.insert(
        "a.example".into(),
        urlfleet_shared::job::PolicyOverride { concurrency: Some(4), interval_ms: Some(0) },
    );
    let new = NewJob { options: options.clone(), priority: Priority::Medium, not_before_ms: 0, trace_parent: None };
    let (job, _) = store.create_job(new).await.unwrap();
    assert_eq!(job.options, options);
    assert_eq!(job.priority, Priority::Medium);
    store.add_urls(job.id, &urls("a.example", 1), recheck()).await.unwrap();
    store.seal_job(job.id, seal("opts", 1, job.priority)).await.unwrap();
    let lease = store.acquire_lease(&lease_req("w")).await.unwrap().unwrap();
    assert_eq!(lease.job_options, vec![options], "a lease carries its jobs' options as stored");
}
