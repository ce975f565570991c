//! The end of a submission: sealing it (finding it is a duplicate, or settling its counts and
//! priority), and discarding one that failed or was abandoned.

use urlfleet_shared::time::{ms, now_ms};

use super::db::{Tx, retry_transient, sql};
use super::jobs::{cancel_open, complete_if_done, require_job};
use super::{JobRecord, Seal, SqlStore, StoreError, StoreResult};

impl SqlStore {
    pub(crate) async fn seal_job_impl(&self, job_id: i64, seal: &Seal) -> StoreResult<(JobRecord, bool)> {
        // A twin sealing at the same moment makes the activation fail on the unique index once the
        // twin commits, and a lease or an ingest may deadlock with it: the next attempt finds the
        // twin, or gets through.
        let sealed = retry_transient(
            "seal",
            || self.seal_once(job_id, seal),
            |e| matches!(e, StoreError::Query(sqlx::Error::Database(d)) if d.is_unique_violation()),
        )
        .await?;
        Ok(sealed)
    }

    /// One attempt at the seal, in one transaction.
    async fn seal_once(&self, job_id: i64, seal: &Seal) -> StoreResult<(JobRecord, bool)> {
        let now = now_ms();
        let mut tx = self.db.begin().await?;
        // The job's row is locked last, as leasing and ingest do: they lock frontier and URL rows
        // first and the job's counters at the end.
        let current: Option<(String, i16)> =
            sql("SELECT state, priority FROM jobs WHERE id = $1").bind(job_id).fetch_optional(&mut tx).await?;
        let Some((state, provisional)) = current else {
            return Err(StoreError::Corrupt(format!("job {job_id} vanished while receiving")));
        };
        match state.as_str() {
            "receiving" => {}
            "cancelled" => {
                // Cancelled while its URLs arrived: it stays cancelled, and so do the URLs that came
                // after the cancellation. A second seal finds it sealed and changes nothing.
                let (late, _, _) = cancel_open(&mut tx, job_id).await?;
                sql("UPDATE jobs SET cancelled = cancelled + $2, received = $3, duplicates = $4, total = $5, \
                     sealed_at = $6 WHERE id = $1 AND sealed_at IS NULL")
                .bind(job_id)
                .bind(late)
                .bind(seal.received as i64)
                .bind(seal.duplicates as i64)
                .bind(seal.total as i64)
                .bind(now)
                .execute(&mut tx)
                .await?;
                let rec = require_job(&mut tx, job_id).await?;
                tx.commit().await?;
                return Ok((rec, false));
            }
            // Sealed already (an earlier attempt committed): nothing to do again.
            _ => {
                let rec = require_job(&mut tx, job_id).await?;
                tx.commit().await?;
                return Ok((rec, false));
            }
        }
        // An active job older than the uniqueness window no longer absorbs duplicates.
        sql("UPDATE jobs SET unique_active = FALSE WHERE unique_key = $1 AND unique_active AND created_at < $2")
            .bind(seal.unique_key.as_str())
            .bind(now - ms(seal.unique_window))
            .execute(&mut tx)
            .await?;
        let twin: Option<i64> = sql("SELECT id FROM jobs WHERE unique_key = $1 AND unique_active ORDER BY id LIMIT 1")
            .bind(seal.unique_key.as_str())
            .scalar(&mut tx)
            .await?;
        if let Some(twin) = twin {
            self.discard_receiving(&mut tx, job_id).await?;
            let rec = require_job(&mut tx, twin).await?;
            tx.commit().await?;
            return Ok((rec, true));
        }
        let priority = seal.priority.rank().min(provisional);
        if priority < provisional {
            // Known small only now: its waiting URLs move up (a small job, so few rows). In the
            // store's lock order: its open work (an ingest takes frontier rows before it finishes
            // URL rows, and never waits for one), its URL rows by URL (the order an ingest finishes
            // them in), then their hosts by name.
            let dialect = self.db.dialect();
            let shift = (provisional - priority) * urlfleet_shared::job::FRONTIER_ORDERS_PER_PRIORITY;
            sql("UPDATE frontier SET url_order = url_order - $2 WHERE job_id = $1 AND url_id IN \
                 (SELECT url_id FROM job_urls WHERE job_id = $1 AND state = 'pending')")
            .bind(job_id)
            .bind(shift)
            .execute(&mut tx)
            .await?;
            sql(format!(
                "SELECT url_id FROM job_urls WHERE job_id = $1 AND state = 'pending' ORDER BY url_id{}",
                dialect.for_update
            ))
            .bind(job_id)
            .execute(&mut tx)
            .await?;
            sql("UPDATE job_urls SET url_order = url_order - $2 WHERE job_id = $1 AND state = 'pending'")
                .bind(job_id)
                .bind(shift)
                .execute(&mut tx)
                .await?;
            sql(format!(
                "SELECT host FROM hosts WHERE host IN (SELECT host FROM job_urls WHERE job_id = $1 \
                 AND state = 'pending') ORDER BY host{}",
                dialect.for_no_key_update
            ))
            .bind(job_id)
            .execute(&mut tx)
            .await?;
            sql("UPDATE hosts SET priority = $2 WHERE priority > $2 AND host IN \
                 (SELECT host FROM job_urls WHERE job_id = $1 AND state = 'pending')")
            .bind(job_id)
            .bind(priority)
            .execute(&mut tx)
            .await?;
        }
        let sealed = sql("UPDATE jobs SET state = CASE WHEN leased > 0 OR checked > 0 OR failed > 0 THEN 'running' \
                          ELSE 'scheduled' END, unique_key = $2, unique_active = TRUE, received = $3, \
                          duplicates = $4, total = $5, priority = $6, not_before = $7, sealed_at = $8 \
                          WHERE id = $1 AND state = 'receiving'")
        .bind(job_id)
        .bind(seal.unique_key.as_str())
        .bind(seal.received as i64)
        .bind(seal.duplicates as i64)
        .bind(seal.total as i64)
        .bind(priority)
        .bind(seal.not_before_ms)
        .bind(now)
        .execute(&mut tx)
        .await?;
        if sealed == 0 {
            // Cancelled meanwhile: the next attempt takes the cancelled path.
            return Err(StoreError::Conflict);
        }
        complete_if_done(&mut tx, &[job_id], now).await?;
        let rec = require_job(&mut tx, job_id).await?;
        tx.commit().await?;
        Ok((rec, false))
    }

    pub(crate) async fn discard_job_impl(&self, job_id: i64) -> StoreResult<()> {
        retry_transient(
            "discard",
            || async {
                let mut tx = self.db.begin().await?;
                self.discard_receiving(&mut tx, job_id).await?;
                tx.commit().await
            },
            |_| false,
        )
        .await
    }

    pub(crate) async fn discard_abandoned_impl(&self, before_ms: i64) -> StoreResult<u64> {
        let ids: Vec<(i64,)> =
            sql("SELECT id FROM jobs WHERE state = 'receiving' AND COALESCE(touched_at, created_at) < $1")
                .bind(before_ms)
                .fetch_all(&mut self.db.acquire().await?)
                .await?;
        // One job that cannot be discarded now must not hold back the others: each is tried, and
        // the first failure is returned once all were.
        let (mut discarded, mut failure) = (0, None);
        for (id,) in &ids {
            tracing::warn!(job.id = id, "discarding a job whose submission never ended");
            match self.discard_job_impl(*id).await {
                Ok(()) => discarded += 1,
                Err(e) => {
                    tracing::error!(job.id = id, error = %e, "discarding an abandoned submission failed");
                    failure.get_or_insert(e);
                }
            }
        }
        match failure {
            Some(e) if discarded == 0 => Err(e),
            _ => Ok(discarded),
        }
    }

    /// Removes a `receiving` job and everything written for it, taking its waiting URLs off the
    /// frontier counters and its leased ones off their leases (a lease left with none ends).
    async fn discard_receiving(&self, tx: &mut Tx, job_id: i64) -> StoreResult<()> {
        let receiving = Some(urlfleet_shared::JobState::Receiving.as_str());
        let state: Option<String> = sql("SELECT state FROM jobs WHERE id = $1").bind(job_id).scalar(tx).await?;
        if state.as_deref() != receiving {
            return Ok(());
        }
        // In the store's lock order: leases, the job's open work and URLs, hosts, and the job
        // itself last.
        cancel_open(tx, job_id).await?;
        sql("DELETE FROM job_urls WHERE job_id = $1").bind(job_id).execute(tx).await?;
        let state: Option<String> =
            sql(format!("SELECT state FROM jobs WHERE id = $1{}", self.db.dialect().for_update))
                .bind(job_id)
                .scalar(tx)
                .await?;
        if state.as_deref() != receiving {
            // Sealed or cancelled meanwhile: nothing of this is kept, and the next attempt leaves it.
            return Err(super::StoreError::Conflict);
        }
        sql("DELETE FROM job_invalid WHERE job_id = $1").bind(job_id).execute(tx).await?;
        sql("DELETE FROM jobs WHERE id = $1").bind(job_id).execute(tx).await?;
        Ok(())
    }
}
