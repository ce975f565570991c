//! Store conformance, leasing: host exclusivity, lifted limits, expiry, priorities, fair share and
//! lease budgets hold the same on SQLite and PostgreSQL. Each test runs against both.

use std::time::Duration;

use urlfleet_coordinator::store::{
    JobState, LeaseBudget, LeaseGrant, LeaseRequest, NewJob, PlannedUrl, Priority, Seal, Store,
};
use urlfleet_shared::outcome::Refusal;
use urlfleet_shared::time::now_ms;
use urlfleet_shared::{OutcomeKind, ReportedResult};
use urlfleet_tests::Backend;
use urlfleet_tests::conformance::*;

urlfleet_tests::on_both_stores!(
    a_host_is_leased_to_one_holder_at_a_time_and_results_complete_the_job,
    expired_leases_return_urls_to_the_frontier_and_fail_after_the_attempt_limit,
    a_host_with_lifted_limits_is_leased_several_times_without_sharing_urls,
    leases_of_one_host_ending_in_one_chunk_free_a_slot_each,
    a_url_leased_for_another_job_is_checked_once_for_both,
    a_lease_runs_on_while_a_url_it_holds_for_another_job_is_open,
    jobs_of_equal_priority_on_one_host_advance_in_turn,
    higher_priority_work_is_leased_first,
    a_polite_host_is_leased_in_its_budget_the_strictest_while_work_is_left,
    a_polite_host_s_next_lease_keeps_its_spacing_from_the_last_one,
    many_hosts_are_leased_in_one_call_within_the_credits,
    a_worker_s_room_for_lifted_hosts_bounds_their_urls_and_spreads_them_over_hosts,
    hosts_with_nothing_ready_do_not_hold_back_a_ready_one,
    leases_that_expired_in_an_outage_live_on_and_can_be_renewed,
);

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

async fn expired_leases_return_urls_to_the_frontier_and_fail_after_the_attempt_limit(backend: Backend) {
    let (db, store) = open(backend).await;
    let (job, _) = store.create_job(new_job("expire", 2)).await.unwrap();
    store.add_urls(job.id, &urls("a.example", 2), recheck()).await.unwrap();
    store.seal_job(job.id, seal("expire", 2, job.priority)).await.unwrap();
    let short = LeaseRequest {
        worker_id: "w".into(),
        max_urls: 100,
        max_urls_lifted: 100,
        lifted_room: u64::MAX,
        ttl: Duration::from_millis(1),
        politeness: None,
    };
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
    let rows = store.list_results(&page(job.id, &[], None, 10)).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.kind == Some(OutcomeKind::Failed) && r.error.is_some()));

    // A late report from an expired lease is refused: it cannot un-fail or double-count.
    let touched = store.ingest(&[result(&leases[0], leases[0].urls[1].0, 200, now_ms())]).await.unwrap();
    assert_eq!(touched.refused.iter().map(|r| r.reason).collect::<Vec<_>>(), [Refusal::LeaseEnded]);
    assert_eq!(db.scalar("SELECT COUNT(*) FROM checks").await, 0, "and not stored");
    let j = store.get_job(job.id).await.unwrap().unwrap();
    assert_eq!((j.counts.failed, j.counts.checked), (2, 0));
    db.assert_invariants().await;
}

/// A sealed job of 500 URLs of one host whose limits are lifted: up to 3 leases of it at once.
async fn lifted_host_job(store: &dyn Store, name: &str) {
    let (job, _) = store.create_job(new_job(name, 500)).await.unwrap();
    let own: Vec<PlannedUrl> = urls("own.example", 500)
        .into_iter()
        .map(|u| PlannedUrl { budget: LeaseBudget { max_leases: 3, ..u.budget }, ..u })
        .collect();
    store.add_urls(job.id, &own, recheck()).await.unwrap();
    store.seal_job(job.id, seal(name, 500, job.priority)).await.unwrap();
}

async fn a_host_with_lifted_limits_is_leased_several_times_without_sharing_urls(backend: Backend) {
    let (_db, store) = open(backend).await;
    lifted_host_job(&*store, "shared").await;
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

async fn leases_of_one_host_ending_in_one_chunk_free_a_slot_each(backend: Backend) {
    let (_db, store) = open(backend).await;
    lifted_host_job(&*store, "ends").await;
    let mut leases = Vec::new();
    for holder in ["w1", "w2", "w3"] {
        leases.push(store.acquire_lease(&lease_req(holder)).await.unwrap().expect("a concurrent lease"));
    }
    // Two of the host's three leases end in the same chunk.
    let now = now_ms();
    let chunk: Vec<ReportedResult> =
        leases[..2].iter().flat_map(|l| l.urls.iter().map(move |(id, _)| result(l, *id, 200, now))).collect();
    store.ingest(&chunk).await.unwrap();
    for holder in ["w1", "w2"] {
        assert!(store.acquire_lease(&lease_req(holder)).await.unwrap().is_some(), "each ended lease frees a slot");
    }
    assert!(store.acquire_lease(&lease_req("w4")).await.unwrap().is_none(), "still at most max_leases at once");
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
    let later = PlannedUrl::new("http://s.example/later", "s.example", 0);
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
    let late_urls: Vec<PlannedUrl> =
        (0..10).map(|i| PlannedUrl::new(format!("http://shared.example/late/{i}"), "shared.example", i)).collect();
    store.add_urls(late.id, &late_urls, recheck()).await.unwrap();
    store.seal_job(late.id, seal("late", 10, Priority::Low)).await.unwrap();
    let next = store.acquire_lease(&lease_req("w")).await.unwrap().unwrap();
    let (from_late, from_big): (Vec<_>, Vec<_>) = next.urls.iter().partition(|(_, u)| u.contains("/late/"));
    assert_eq!(from_late.len(), 10, "the late job's first URLs go with the big job's next ones, not after all of them");
    let mut big_left: Vec<u32> = from_big.iter().map(|(_, u)| u.rsplit('/').next().unwrap().parse().unwrap()).collect();
    big_left.sort();
    assert_eq!(big_left, (100..190).collect::<Vec<u32>>(), "the big job goes on in its own order");
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

async fn a_polite_host_s_next_lease_keeps_its_spacing_from_the_last_one(backend: Backend) {
    let (_db, store) = open(backend).await;
    let (job, _) = store.create_job(new_job("spaced", 4)).await.unwrap();
    let budget = urlfleet_shared::LeaseBudget { max_leases: 1, lease_urls: 2 };
    let urls: Vec<PlannedUrl> = urls("p.example", 4).into_iter().map(|u| PlannedUrl { budget, ..u }).collect();
    store.add_urls(job.id, &urls, recheck()).await.unwrap();
    store.seal_job(job.id, seal("spaced", 4, job.priority)).await.unwrap();
    let interval = Duration::from_millis(400);
    let site = urlfleet_shared::SitePoliteness {
        base: urlfleet_shared::HostPolicy { concurrency: 2, interval },
        hosts: Vec::new(),
    };
    let req = LeaseRequest { politeness: Some(site), ..lease_req("w1") };
    let first = store.acquire_lease(&req).await.unwrap().expect("a lease");
    let now = now_ms();
    store.ingest(&first.urls.iter().map(|(id, _)| result(&first, *id, 200, now)).collect::<Vec<_>>()).await.unwrap();
    // The lease ended with its last result; another worker taking the host over waits for the spacing.
    assert!(store.acquire_lease(&LeaseRequest { worker_id: "w2".into(), ..req.clone() }).await.unwrap().is_none());
    tokio::time::sleep(interval + Duration::from_millis(100)).await;
    let second = store.acquire_lease(&LeaseRequest { worker_id: "w2".into(), ..req }).await.unwrap();
    assert_eq!(second.expect("after the spacing").urls.len(), 2);
}

async fn many_hosts_are_leased_in_one_call_within_the_credits(backend: Backend) {
    let (_db, store) = open(backend).await;
    let (job, _) = store.create_job(new_job("wide", 200)).await.unwrap();
    for h in 0..20 {
        store.add_urls(job.id, &urls(&format!("w{h}.example"), 10), recheck()).await.unwrap();
    }
    store.seal_job(job.id, seal("wide", 200, job.priority)).await.unwrap();
    let grants = store.acquire_leases(&lease_req("w"), 95, 64).await.unwrap();
    let hosts: std::collections::HashSet<&str> = grants.iter().map(|g| g.host.as_str()).collect();
    assert_eq!(hosts.len(), grants.len(), "one lease per host");
    assert_eq!(grants.iter().map(|g| g.urls.len()).sum::<usize>(), 95, "the credits bound the URLs");
    assert_eq!(grants.len(), 10, "nine whole hosts and part of a tenth");
    let other = store.acquire_leases(&lease_req("w2"), 1_000, 4).await.unwrap();
    assert_eq!(other.len(), 4, "at most the leases asked for");
    let epochs: Vec<i64> = other.iter().map(|g| g.epoch).collect();
    assert!(epochs.iter().all(|e| *e == 1), "other hosts, not the one w holds: {epochs:?}");
    // The holder of a polite host's lease may take the host's next one (its own gate keeps the
    // pace); nobody else may while the lease is out.
    let mine = store.acquire_leases(&lease_req("w"), 1_000, 64).await.unwrap();
    assert_eq!(mine.len(), 7, "the six untouched hosts and the rest of w's partial one");
    let next: Vec<&LeaseGrant> = mine.iter().filter(|g| g.epoch == 2).collect();
    assert_eq!((next.len(), next[0].urls.len()), (1, 5));
    assert!(store.acquire_leases(&lease_req("w3"), 1_000, 64).await.unwrap().is_empty());
}

async fn a_worker_s_room_for_lifted_hosts_bounds_their_urls_and_spreads_them_over_hosts(backend: Backend) {
    let (_db, store) = open(backend).await;
    let (job, _) = store.create_job(new_job("room", 460)).await.unwrap();
    for h in 0..4 {
        let fast: Vec<PlannedUrl> = urls(&format!("fast{h}.example"), 100)
            .into_iter()
            .map(|u| PlannedUrl { budget: LeaseBudget { max_leases: 8, ..u.budget }, ..u })
            .collect();
        store.add_urls(job.id, &fast, recheck()).await.unwrap();
    }
    store.add_urls(job.id, &urls("polite.example", 60), recheck()).await.unwrap();
    store.seal_job(job.id, seal("room", 460, job.priority)).await.unwrap();
    let req = LeaseRequest { lifted_room: 100, max_urls_lifted: 1_000, ..lease_req("w") };

    let grants = store.acquire_leases(&req, 10_000, 64).await.unwrap();
    let lifted: Vec<&LeaseGrant> = grants.iter().filter(|g| g.lifted).collect();
    assert_eq!(lifted.iter().map(|g| g.urls.len()).sum::<usize>(), 100, "the room bounds the lifted hosts' URLs");
    assert_eq!(lifted.len(), 4, "shared among the lifted hosts, not one host's lease");
    let polite: Vec<&LeaseGrant> = grants.iter().filter(|g| !g.lifted).collect();
    assert_eq!(
        polite.iter().map(|g| (g.host.as_str(), g.urls.len())).collect::<Vec<_>>(),
        [("polite.example", 60)],
        "a polite host's lease is not bounded by that room"
    );
    // No room: no lifted host is offered, whatever the credits.
    let none = store.acquire_leases(&LeaseRequest { lifted_room: 0, ..req.clone() }, 10_000, 64).await.unwrap();
    assert!(none.is_empty(), "{:?}", none.iter().map(|g| &g.host).collect::<Vec<_>>());
    // Another worker with room gets the rest.
    let other = store.acquire_leases(&lease_req("w2"), 10_000, 64).await.unwrap();
    assert_eq!(other.iter().map(|g| g.urls.len()).sum::<usize>(), 300);
}

async fn hosts_with_nothing_ready_do_not_hold_back_a_ready_one(backend: Backend) {
    let (_db, store) = open(backend).await;
    // An urgent job for tomorrow on three hosts, and a low-priority job ready now on a fourth.
    let tomorrow = now_ms() + 24 * 3600 * 1000;
    let (later, _) = store.create_job(NewJob { not_before_ms: tomorrow, ..new_job("tomorrow", 3) }).await.unwrap();
    for h in 0..3 {
        store.add_urls(later.id, &urls(&format!("t{h}.example"), 1), recheck()).await.unwrap();
    }
    store.seal_job(later.id, Seal { not_before_ms: tomorrow, ..seal("tomorrow", 3, later.priority) }).await.unwrap();
    let mut low = new_job("now", 1);
    low.priority = Priority::Low;
    let (now_job, _) = store.create_job(low).await.unwrap();
    store.add_urls(now_job.id, &urls("ready.example", 1), recheck()).await.unwrap();
    store.seal_job(now_job.id, seal("now", 1, Priority::Low)).await.unwrap();
    let grants = store.acquire_leases(&lease_req("w"), 1_000, 1).await.unwrap();
    assert_eq!(grants.iter().map(|g| g.host.as_str()).collect::<Vec<_>>(), ["ready.example"]);
}

async fn leases_that_expired_in_an_outage_live_on_and_can_be_renewed(backend: Backend) {
    let (_db, store) = open(backend).await;
    let (job, _) = store.create_job(new_job("outage", 2)).await.unwrap();
    store.add_urls(job.id, &urls("o1.example", 1), recheck()).await.unwrap();
    store.add_urls(job.id, &urls("o2.example", 1), recheck()).await.unwrap();
    store.seal_job(job.id, seal("outage", 2, job.priority)).await.unwrap();
    let before = store.acquire_lease(&lease_req("w")).await.unwrap().unwrap();
    let during = store.acquire_lease(&lease_req("w")).await.unwrap().unwrap();
    let now = now_ms();
    // One lease expired before the database went away (its worker really stopped), one during.
    store.expire_worker_leases("w", &[before.id], now - 10_000).await.unwrap();
    store.expire_worker_leases("w", &[during.id], now - 1_000).await.unwrap();
    assert_eq!(
        store.extend_leases_after_outage(now - 5_000, now + 30_000, Duration::from_secs(3_600)).await.unwrap(),
        1
    );
    // The reaper ends the one its worker let expire; the one the outage expired lives on.
    assert_eq!(store.reap_expired(3).await.unwrap().expired_leases, 1);
    let renewed = store.renew_leases("w", &[before.id, during.id], TTL, TTL).await.unwrap();
    assert_eq!(renewed.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [during.id], "an ended lease is not revived");
}

const TTL: Duration = Duration::from_secs(30);
