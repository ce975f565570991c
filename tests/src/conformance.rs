//! The helpers of the store conformance suite (`tests/store_*.rs`): every test there runs against a
//! fresh SQLite file and a fresh PostgreSQL database, through the same [`Store`] interface.

use std::sync::Arc;
use std::time::Duration;

use urlfleet_coordinator::store::{
    JobOptions, LeaseGrant, LeaseRequest, NewJob, PlannedUrl, Priority, RecheckPolicy, ResultCursor, ResultPage, Seal,
    Store,
};
use urlfleet_shared::{CheckOutcome, OutcomeClass, OutcomeKind, ReportedResult, policy};

use crate::{Backend, TestDb};

/// Runs each named `async fn NAME(backend: Backend)` of the calling test file as two tests, one on
/// each store: `sqlite::NAME` and `postgres::NAME`.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::Backend::Sqlite).await; })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::Backend::Postgres).await; })*
        }
    };
}

/// A fresh database of `backend` and the store on it.
pub async fn open(backend: Backend) -> (TestDb, Arc<dyn Store>) {
    let db = TestDb::fresh(backend).await;
    let store = urlfleet_coordinator::store::connect(&db.url).await.expect("open store");
    (db, store)
}

/// A job to create under `key`, at high priority.
pub fn new_job(key: &str, _total: u64) -> NewJob {
    let options = JobOptions { name: format!("job {key}"), ..Default::default() };
    NewJob { options, priority: Priority::High, not_before_ms: 0, trace_parent: None, owner: String::new() }
}

/// The seal of a submission of `total` distinct entries under `key`, at the job's priority.
pub fn seal(key: &str, total: u64, priority: Priority) -> Seal {
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
pub async fn submit(store: &Arc<dyn Store>, key: &str, host: &str, window: Duration) -> (i64, i64, bool) {
    let (job, _) = store.create_job(new_job(key, 1)).await.unwrap();
    store.add_urls(job.id, &urls(host, 1), recheck()).await.unwrap();
    let (sealed, dup) =
        store.seal_job(job.id, Seal { unique_window: window, ..seal(key, 1, Priority::High) }).await.unwrap();
    (job.id, sealed.id, dup)
}

/// `n` distinct URLs of `host`, polite (one lease at a time, no bound of their own).
pub fn urls(host: &str, n: usize) -> Vec<PlannedUrl> {
    (0..n).map(|i| PlannedUrl::new(format!("http://{host}/{i}"), host.to_string(), i as u64)).collect()
}

/// The default re-check policy.
pub fn recheck() -> RecheckPolicy {
    RecheckPolicy {
        force: false,
        recheck_after: policy::DEFAULT_RECHECK_AFTER,
        recheck_broken_after: policy::DEFAULT_RECHECK_BROKEN_AFTER,
    }
}

/// A lease request of `holder` for up to 100 URLs, TTL 30 s.
pub fn lease_req(holder: &str) -> LeaseRequest {
    LeaseRequest {
        worker_id: holder.to_string(),
        max_urls: 100,
        max_urls_lifted: 100,
        lifted_room: u64::MAX,
        ttl: Duration::from_secs(30),
        politeness: None,
    }
}

/// A result of `url_id` under `lease`, with `status`, checked at `checked_at`.
pub fn result(lease: &LeaseGrant, url_id: i64, status: u16, checked_at: i64) -> ReportedResult {
    let mut o = CheckOutcome::error(OutcomeKind::from_status(status, 0), "", 1);
    o.error = None;
    o.status = Some(status);
    o.checked_at_ms = checked_at;
    ReportedResult {
        reporter: lease.holder.as_str().into(),
        lease_id: lease.id,
        epoch: lease.epoch,
        url_id,
        outcome: o,
    }
}

/// A page of a job's results.
pub fn page(job_id: i64, classes: &[OutcomeClass], after: Option<ResultCursor>, limit: u32) -> ResultPage {
    ResultPage { job_id, classes: classes.to_vec(), after, limit }
}
