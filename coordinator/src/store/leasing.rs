//! The life of a lease once granted (see `granting`): renewing it, ending it as its URLs are
//! reported, expiring it, and returning the URLs of expired ones to the frontier.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use urlfleet_shared::job::JobUrlState;
use urlfleet_shared::time::{ms, now_ms};

use super::db::{Tx, sql};
use super::jobs::{JobDeltas, complete_if_done};
use super::{SqlStore, StoreResult, Touched};

/// Ids per statement, so that no single statement carries an unbounded set.
const IDS_PER_STATEMENT: usize = 4_000;

/// Added to a polite lease's spacing at the hand-over: the coordinator's clock, not the server's,
/// decides when the next lease may start, and the last request may have arrived late.
pub(crate) const HAND_OVER_MARGIN: std::time::Duration = std::time::Duration::from_millis(20);

/// Expired leases reaped per transaction.
const REAP_BATCH: i64 = 100;

/// Takes each lease's closed URLs (lease id → count) off its open count, and ends the leases with
/// none left: their hosts get the slots back and stay paused until `not_before`, and at least the
/// lease's spacing from now. A few statements whatever the number of leases. Returns the leases
/// that ended.
pub(crate) async fn close_leases(tx: &mut Tx, closed: &BTreeMap<i64, i64>, not_before: i64) -> StoreResult<Vec<i64>> {
    if closed.is_empty() {
        return Ok(Vec::new());
    }
    let dialect = tx.dialect();
    if !dialect.for_no_key_update.is_empty() {
        // The rows are locked in id order before the set-based update, whose own order is the plan's.
        let mut q = sql("SELECT id FROM leases WHERE id ");
        q.push_id_set(closed.keys().copied()).push(" ORDER BY id").push(dialect.for_no_key_update);
        q.execute(tx).await?;
    }
    // The update locks the lease rows, as a submission joining a URL to a lease does before counting
    // it in: the two are serialized, and this one sees the joined count. SQLite rewrites the entries
    // of every index whose condition names a column the statement sets — `active`, for both partial
    // indexes of `leases` — even when its value stays: there only the leases that end are marked, by
    // a second statement, rather than every lease a chunk touches. (PostgreSQL keeps the update
    // heap-only when no indexed value changes.)
    let sqlite = matches!(tx, Tx::Lite(_));
    let mut q = sql(if sqlite {
        "UPDATE leases SET open = leases.open - v.b FROM "
    } else {
        "UPDATE leases SET open = leases.open - v.b, active = leases.open - v.b > 0 FROM "
    });
    q.push_id_pairs(closed.iter().map(|(id, n)| (*id, *n)).collect());
    q.push(" AS v WHERE leases.id = v.a AND leases.active RETURNING id, leases.open > 0, spacing_ms");
    let ended: Vec<(i64, i64)> = q
        .fetch_all::<(i64, bool, i64)>(tx)
        .await?
        .into_iter()
        .filter(|(_, open, _)| !open)
        .map(|(id, _, spacing)| (id, spacing))
        .collect();
    if ended.is_empty() {
        return Ok(Vec::new());
    }
    if sqlite {
        let mut q = sql("UPDATE leases SET active = FALSE WHERE id ");
        q.push_id_set(ended.iter().map(|(id, _)| *id));
        q.execute(tx).await?;
    }
    // The host's next lease keeps the spacing from this one's last request, whoever holds it.
    let now = now_ms();
    let pauses: Vec<(i64, i64)> = ended.iter().map(|(id, spacing)| (*id, not_before.max(now + spacing))).collect();
    lock_hosts_of_leases(tx, ended.iter().map(|(id, _)| *id)).await?;
    // Two leases of one host may end together: the host's row is written once, with both.
    let mut q = sql("UPDATE hosts SET active_leases = hosts.active_leases - e.n, next_allowed_at = \
         CASE WHEN hosts.next_allowed_at < e.t THEN e.t ELSE hosts.next_allowed_at END \
         FROM (SELECT l.host AS host, COUNT(*) AS n, MAX(v.b) AS t FROM ");
    q.push_id_pairs(pauses);
    q.push(" AS v JOIN leases l ON l.id = v.a GROUP BY l.host) AS e WHERE hosts.host = e.host");
    q.execute(tx).await?;
    Ok(ended.into_iter().map(|(id, _)| id).collect())
}

/// The first locks of a transaction about to change a job's open URLs, in the store's lock order
/// (leases by id, then `job_urls`, then hosts by name, then `jobs` — see `docs/ARCHITECTURE.md`):
/// the leases of the job's leased URLs, then its open URL rows by URL. PostgreSQL only: SQLite runs
/// one writer at a time.
///
/// A grant may lease some of the job's pending URLs between the two statements: their new lease
/// is locked last, out of order, so only if no one holds it (`NOWAIT`); if someone does — an ingest
/// of that lease, which may be waiting for these very rows — the transaction fails with a lock
/// error that [`super::db::retry_transient`] retries, instead of closing a cycle.
pub(crate) async fn lock_job_open_urls(tx: &mut Tx, job_id: i64) -> StoreResult<()> {
    let dialect = tx.dialect();
    if dialect.for_no_key_update.is_empty() {
        return Ok(());
    }
    let leases: Vec<(i64,)> = sql(format!(
        "SELECT id FROM leases WHERE id IN (SELECT lease_id FROM job_urls WHERE job_id = $1 AND state = 'leased') \
         ORDER BY id{}",
        dialect.for_no_key_update
    ))
    .bind(job_id)
    .fetch_all(tx)
    .await?;
    // Then its open URL rows in URL order, the order in which an ingest finishes a URL's rows.
    sql(format!(
        "SELECT url_id FROM job_urls WHERE job_id = $1 AND state IN ('pending', 'leased') ORDER BY url_id{}",
        dialect.for_update
    ))
    .bind(job_id)
    .execute(tx)
    .await?;
    // The rows are locked now: the leases they name cannot change any more.
    let mut q = sql("SELECT DISTINCT lease_id FROM job_urls WHERE job_id = ");
    q.push_bind(job_id).push(" AND state = 'leased' AND NOT lease_id ").push_id_set(leases.into_iter().map(|(id,)| id));
    let mut late = q.fetch_all::<(i64,)>(tx).await?;
    if !late.is_empty() {
        late.sort_unstable();
        let mut q = sql("SELECT id FROM leases WHERE id ");
        q.push_id_set(late.into_iter().map(|(id,)| id)).push(" ORDER BY id").push(dialect.for_no_key_update);
        q.push(" NOWAIT");
        q.execute(tx).await?;
    }
    Ok(())
}

/// Locks hosts by name, in name order, before a transaction updates several of them in statements
/// of its own (PostgreSQL only).
pub(crate) async fn lock_hosts(tx: &mut Tx, hosts: &BTreeSet<String>) -> StoreResult<()> {
    let dialect = tx.dialect();
    if dialect.for_no_key_update.is_empty() || hosts.is_empty() {
        return Ok(());
    }
    let mut q = sql("SELECT host FROM hosts WHERE host IN (");
    q.push_list(hosts.iter().cloned()).push(") ORDER BY host").push(dialect.for_no_key_update);
    q.execute(tx).await?;
    Ok(())
}

/// Locks the hosts of leases, in name order (PostgreSQL only).
pub(crate) async fn lock_hosts_of_leases(tx: &mut Tx, leases: impl IntoIterator<Item = i64>) -> StoreResult<()> {
    let dialect = tx.dialect();
    if dialect.for_no_key_update.is_empty() {
        return Ok(());
    }
    let mut q = sql("SELECT host FROM hosts WHERE host IN (SELECT host FROM leases WHERE id ");
    q.push_id_set(leases).push(") ORDER BY host").push(dialect.for_no_key_update);
    q.execute(tx).await?;
    Ok(())
}

impl SqlStore {
    pub(crate) async fn renew_leases_impl(
        &self,
        worker_id: &str,
        lease_ids: &[i64],
        ttl: Duration,
        max_life: Duration,
    ) -> StoreResult<Vec<(i64, i64)>> {
        let now = now_ms();
        let until = now + ms(ttl);
        let mut ids = lease_ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let mut renewed = Vec::with_capacity(ids.len());
        if ids.is_empty() {
            return Ok(renewed);
        }
        let mut conn = self.db.acquire().await?;
        for chunk in ids.chunks(IDS_PER_STATEMENT) {
            // A lease lives at most `max_life`: heartbeats alone cannot hold a host's URLs forever.
            let mut q = sql("UPDATE leases SET expires_at = CASE WHEN created_at + ");
            q.push_bind(ms(max_life)).push(" < ").push_bind(until).push(" THEN created_at + ");
            // The rows are locked in id order, as every transaction locks leases.
            q.push_bind(ms(max_life)).push(" ELSE ").push_bind(until);
            q.push(" END WHERE id IN (SELECT id FROM leases WHERE holder = ").push_bind(worker_id.to_string());
            // A lease past its expiry that the reaper has not ended yet is renewed too: its URLs are
            // still its own (only the reaper returns them), and a heartbeat that reaches the store
            // first after an outage must not lose what the outage let expire.
            q.push(" AND active AND id ").push_id_set(chunk.iter().copied());
            q.push(" ORDER BY id").push(self.db.dialect().for_no_key_update).push(") RETURNING id, expires_at");
            renewed.extend(q.fetch_all::<(i64, i64)>(&mut conn).await?);
        }
        Ok(renewed)
    }

    pub(crate) async fn expire_worker_leases_impl(
        &self,
        worker_id: &str,
        lease_ids: &[i64],
        at_ms: i64,
    ) -> StoreResult<()> {
        let mut conn = self.db.acquire().await?;
        for chunk in lease_ids.chunks(IDS_PER_STATEMENT) {
            let mut q = sql("UPDATE leases SET expires_at = ");
            q.push_bind(at_ms).push(" WHERE id IN (SELECT id FROM leases WHERE holder = ");
            q.push_bind(worker_id.to_string()).push(" AND active AND expires_at > ").push_bind(at_ms);
            q.push(" AND id ").push_id_set(chunk.iter().copied());
            q.push(" ORDER BY id").push(self.db.dialect().for_no_key_update).push(")");
            q.execute(&mut conn).await?;
        }
        Ok(())
    }

    pub(crate) async fn extend_leases_after_outage_impl(&self, since_ms: i64, until_ms: i64) -> StoreResult<u64> {
        let mut conn = self.db.acquire().await?;
        let extended = sql(format!(
            "UPDATE leases SET expires_at = $1 WHERE id IN (SELECT id FROM leases WHERE active AND expires_at >= $2 \
             AND expires_at < $1 ORDER BY id{})",
            self.db.dialect().for_no_key_update
        ))
        .bind(until_ms)
        .bind(since_ms)
        .execute(&mut conn)
        .await?;
        Ok(extended)
    }

    pub(crate) async fn reap_expired_impl(&self, max_attempts: u32) -> StoreResult<Touched> {
        super::db::retry_transient("reap", || self.reap_once(max_attempts), |_| false).await
    }

    async fn reap_once(&self, max_attempts: u32) -> StoreResult<Touched> {
        let now = now_ms();
        let mut tx = self.db.begin().await?;
        let dialect = self.db.dialect();
        let expired: Vec<(String, i64, i64)> = sql(format!(
            "SELECT host, id, spacing_ms FROM leases WHERE active AND expires_at < $1 ORDER BY id LIMIT $2{}",
            dialect.skip_locked
        ))
        .bind(now)
        .bind(REAP_BATCH)
        .fetch_all(&mut tx)
        .await?;
        // In the store's lock order: the leases (above), their URL rows, then their hosts by name.
        let mut deltas = JobDeltas::default();
        let mut returned = Vec::with_capacity(expired.len());
        for (host, lease_id, spacing) in &expired {
            let rows: Vec<(i64, String)> = sql("UPDATE job_urls SET attempts = attempts + 1, lease_id = NULL, \
                 state = CASE WHEN attempts + 1 >= $2 THEN 'failed' ELSE 'pending' END, \
                 kind = CASE WHEN attempts + 1 >= $2 THEN 'failed' ELSE kind END \
                 WHERE lease_id = $1 AND state = 'leased' RETURNING job_id, state")
            .bind(*lease_id)
            .bind(i64::from(max_attempts))
            .fetch_all(&mut tx)
            .await?;
            let mut back = 0i64;
            for (job, state) in &rows {
                let d = deltas.of(*job);
                d.leased -= 1;
                if state.parse() == Ok(JobUrlState::Failed) {
                    d.failed += 1;
                    d.error += 1;
                } else {
                    back += 1;
                }
            }
            sql("UPDATE leases SET active = FALSE WHERE id = $1").bind(*lease_id).execute(&mut tx).await?;
            tracing::info!(lease.id = lease_id, server.address = %host, urls = rows.len(), "lease expired");
            returned.push((host, back, *spacing));
        }
        if !expired.is_empty() {
            lock_hosts_of_leases(&mut tx, expired.iter().map(|(_, id, _)| *id)).await?;
        }
        for (host, back, spacing) in returned {
            // The expired holder may still be sending: the host's next lease keeps the spacing.
            // Its priority is that of the best URL waiting again (a grant that emptied the host's
            // frontier had set it to none).
            sql("UPDATE hosts SET active_leases = active_leases - 1, pending = pending + $2, \
                 next_allowed_at = CASE WHEN next_allowed_at < $3 THEN $3 ELSE next_allowed_at END, \
                 priority = COALESCE((SELECT url_order / $4 FROM job_urls WHERE job_urls.host = $1 AND waiting \
                 ORDER BY url_order LIMIT 1), 9) WHERE host = $1")
            .bind(host.as_str())
            .bind(back)
            .bind(now + spacing)
            .bind(urlfleet_shared::job::FRONTIER_ORDERS_PER_PRIORITY)
            .execute(&mut tx)
            .await?;
        }
        deltas.apply(&mut tx).await?;
        let jobs = deltas.jobs();
        complete_if_done(&mut tx, &jobs, now).await?;
        tx.commit().await?;
        Ok(Touched { jobs, expired_leases: expired.len() as u64, refused: Vec::new() })
    }
}
