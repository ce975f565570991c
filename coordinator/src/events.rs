//! In-process notifications between the coordinator's tasks. They only wake tasks early: every
//! waiter also polls the store, so several coordinators on one database stay correct without them.

use tokio::sync::{Notify, broadcast};

/// Notification hub of one coordinator.
#[derive(Debug)]
pub struct Events {
    work: Notify,
    committed: Notify,
    jobs: broadcast::Sender<i64>,
    revoked: broadcast::Sender<i64>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            work: Notify::new(),
            committed: Notify::new(),
            jobs: broadcast::channel(1024).0,
            revoked: broadcast::channel(1024).0,
        }
    }
}

impl Events {
    /// New work may be leasable (a job was submitted, leases expired).
    pub fn work_available(&self) {
        self.work.notify_waiters();
    }

    /// Completes at the next [`Events::work_available`].
    pub async fn work_notified(&self) {
        self.work.notified().await;
    }

    /// Results were committed: leases may have ended and freed their hosts (which still keep their
    /// spacing). Frequent under load, so sessions may defer what it wakes them for.
    pub fn results_committed(&self) {
        self.committed.notify_waiters();
    }

    /// Completes at the next [`Events::results_committed`].
    pub async fn results_committed_notified(&self) {
        self.committed.notified().await;
    }

    /// A job's counters or state changed.
    pub fn job_changed(&self, job_id: i64) {
        let _ = self.jobs.send(job_id);
    }

    /// Subscribes to job changes.
    pub fn subscribe_jobs(&self) -> broadcast::Receiver<i64> {
        self.jobs.subscribe()
    }

    /// A lease was revoked: whichever session holds it must tell its worker.
    pub fn lease_revoked(&self, lease_id: i64) {
        let _ = self.revoked.send(lease_id);
    }

    /// Subscribes to revocations.
    pub fn subscribe_revocations(&self) -> broadcast::Receiver<i64> {
        self.revoked.subscribe()
    }
}
