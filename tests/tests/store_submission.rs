//! Store conformance, submissions: duplicates, re-checks, invalid entries, discards, cancellation
//! and stored options hold the same on SQLite and PostgreSQL. Each test runs against both.

use std::time::Duration;

use urlfleet_coordinator::store::{InvalidEntry, JobOptions, JobState, NewJob, PlannedUrl, Priority, RecheckPolicy};
use urlfleet_shared::time::now_ms;
use urlfleet_shared::{OutcomeKind, policy};
use urlfleet_tests::Backend;
use urlfleet_tests::conformance::*;

urlfleet_tests::on_both_stores!(
    duplicate_submissions_return_the_existing_job,
    concurrent_duplicate_submissions_create_one_job,
    recently_checked_urls_are_fresh_unless_forced,
    cancelling_keeps_finished_results_and_releases_leases,
    invalid_entries_are_listed_with_their_reasons,
    a_discarded_submission_gives_back_the_lease_its_urls_were_in,
    a_job_cancelled_while_receiving_stays_cancelled_and_a_second_seal_changes_nothing,
    stored_options_read_back_as_submitted,
);

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
    let rows = store.list_results(&page(again.id, &[], None, 10)).await.unwrap();
    assert_eq!(rows.len(), 2);
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
    let rows = store.list_results(&page(job.id, &[urlfleet_shared::OutcomeClass::Ok], None, 10)).await.unwrap();
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
    let page1 = store.list_results(&page(job.id, &[], None, 2)).await.unwrap();
    assert_eq!(page1.len(), 2);
    let page2 = store.list_results(&page(job.id, &[], Some(page1[1].cursor), 2)).await.unwrap();
    assert_eq!(page2.len(), 1);
    assert_eq!(page2[0].url, "nope");
    let only_invalid =
        store.list_results(&page(job.id, &[urlfleet_shared::OutcomeClass::Invalid], None, 10)).await.unwrap();
    assert_eq!(only_invalid.len(), 2);
    assert!(only_invalid.iter().all(|r| r.error.is_some() && r.kind == Some(OutcomeKind::Invalid)));
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
    let again = PlannedUrl::new("http://x.example/again", "x.example", 0);
    store.add_urls(next.id, &[again], recheck()).await.unwrap();
    store.seal_job(next.id, seal("next", 1, next.priority)).await.unwrap();
    let l = store.acquire_lease(&lease_req("w")).await.unwrap().expect("the discarded job's lease ended with it");
    assert_eq!(l.host, "x.example");
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

async fn stored_options_read_back_as_submitted(backend: Backend) {
    let (_db, store) = open(backend).await;
    let mut options =
        JobOptions { name: "opts".into(), force: true, priority: Some(Priority::Medium), ..Default::default() };
    options.labels.insert("team".into(), "seo".into());
    options.host_policies.insert(
        "a.example".into(),
        urlfleet_shared::job::PolicyOverride { concurrency: Some(4), interval_ms: Some(0) },
    );
    let new = NewJob {
        options: options.clone(),
        priority: Priority::Medium,
        not_before_ms: 0,
        trace_parent: None,
        owner: String::new(),
    };
    let (job, _) = store.create_job(new).await.unwrap();
    assert_eq!(job.options, options);
    assert_eq!(job.priority, Priority::Medium);
    store.add_urls(job.id, &urls("a.example", 1), recheck()).await.unwrap();
    store.seal_job(job.id, seal("opts", 1, job.priority)).await.unwrap();
    let lease = store.acquire_lease(&lease_req("w")).await.unwrap().unwrap();
    assert_eq!(lease.job_options, vec![options], "a lease carries its jobs' options as stored");
}
