//! The life of a lease once granted (see `granting`): renewing it, ending it as its URLs are
//! reported, expiring it, and returning the URLs of expired ones to the frontier.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use urlfleet_shared::job::JobUrlState;
use urlfleet_shared::time::{ms, now_ms};

use std::collections::HashSet;

use super::db::{Tx, sql};
use super::frontier::{FrontierEntry, count_by, insert_frontier};
use super::jobs::{JobDeltas, complete_if_done};
use super::{SqlStore, StoreResult, Touched};

/// Ids per statement, so that no single statement carries an unbounded set.
const IDS_PER_STATEMENT: usize = 4_000;

/// Added to a polite lease's spacing at the hand-over: the coordinator's clock, not the server's,
/// decides when the next lease may start, and the last request may have arrived late.
pub(crate) const HAND_OVER_MARGIN: std::time::Duration = std::time::Duration::from_millis(20);

/// Expired leases reaped per transaction.
const REAP_BATCH: i64 = 100;

/// A `job_urls` row of an expired lease, as the reaper left it.
#[derive(sqlx::FromRow)]
struct ReturnedRow {
    job_id: i64,
    url_id: i64,
    state: String,
    host: String,
    url_order: i16,
    seq: i32,
}

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
/// (leases by id, then open work and `job_urls`, then hosts by name, then `jobs` — see
/// `docs/ARCHITECTURE.md`): the leases that hold the job's URLs. PostgreSQL only: SQLite runs one
/// writer at a time. Returns them.
pub(crate) async fn lock_job_leases(tx: &mut Tx, job_id: i64) -> StoreResult<Vec<i64>> {
    let dialect = tx.dialect();
    let mut q = sql("SELECT id FROM leases WHERE id IN (SELECT lease_id FROM lease_urls WHERE job_id = ");
    q.push_bind(job_id).push(") ORDER BY id").push(dialect.for_no_key_update);
    Ok(q.fetch_all::<(i64,)>(tx).await?.into_iter().map(|(id,)| id).collect())
}

/// After a job's waiting URLs left the frontier: the leases a grant gave some of them since
/// [`lock_job_leases`] ran. Their locks come out of order, so only if no one holds them (`NOWAIT`);
/// if someone does — an ingest of that lease, which may be waiting for these very rows — the
/// transaction fails with a lock error that [`super::db::retry_transient`] retries, instead of
/// closing a cycle.
pub(crate) async fn lock_late_job_leases(tx: &mut Tx, job_id: i64, locked: &[i64]) -> StoreResult<()> {
    let dialect = tx.dialect();
    if dialect.for_no_key_update.is_empty() {
        return Ok(());
    }
    let mut q = sql("SELECT DISTINCT lease_id FROM lease_urls WHERE job_id = ");
    q.push_bind(job_id).push(" AND NOT lease_id ").push_id_set(locked.iter().copied());
    let mut late: Vec<i64> = q.fetch_all::<(i64,)>(tx).await?.into_iter().map(|(id,)| id).collect();
    if !late.is_empty() {
        late.sort_unstable();
        let mut q = sql("SELECT id FROM leases WHERE id ");
        q.push_id_set(late).push(" ORDER BY id").push(dialect.for_no_key_update).push(" NOWAIT");
        q.execute(tx).await?;
    }
    Ok(())
}

/// Takes a job's open work off the frontier and off its leases, in the store's lock order (the
/// job's leases first, see [`lock_job_leases`]). Returns the hosts of its waiting URLs (one entry
/// per URL) and, per lease, how many URLs it no longer holds open for any job.
pub(crate) async fn take_job_open_work(
    tx: &mut Tx,
    job_id: i64,
) -> StoreResult<(Vec<String>, BTreeMap<i64, i64>, i64)> {
    let locked = lock_job_leases(tx, job_id).await?;
    // The job's waiting rows, found by its open URLs (`job_urls` by key) through the frontier's
    // URL index.
    let mut q = sql(
        "DELETE FROM frontier WHERE (host, url_order, seq, url_id, job_id) IN (SELECT f.host, f.url_order, f.seq, \
         f.url_id, f.job_id FROM job_urls ju JOIN frontier f ON f.url_id = ju.url_id AND f.job_id = ju.job_id \
         WHERE ju.job_id = ",
    );
    q.push_bind(job_id).push(" AND ju.state = 'pending') RETURNING host");
    let waiting: Vec<String> = q.fetch_all::<(String,)>(tx).await?.into_iter().map(|(h,)| h).collect();
    lock_late_job_leases(tx, job_id, &locked).await?;
    let held: Vec<(i64, i64)> =
        sql("DELETE FROM lease_urls WHERE job_id = $1 RETURNING url_id, lease_id").bind(job_id).fetch_all(tx).await?;
    let leased = held.len() as i64;
    // A URL the lease still holds for another job stays open in it.
    let still: HashSet<(i64, i64)> = super::frontier::held(tx, held.clone()).await?.into_iter().collect();
    let closed = count_by(held.into_iter().filter(|p| !still.contains(p)).map(|(_, l)| l), 1);
    Ok((waiting, closed, leased))
}

/// Locks hosts by name, in name order, before a transaction updates several of them in statements
/// of its own (PostgreSQL only). The names are bound as one array, whatever their number.
pub(crate) async fn lock_hosts(tx: &mut Tx, hosts: &BTreeSet<String>) -> StoreResult<()> {
    let dialect = tx.dialect();
    if dialect.for_no_key_update.is_empty() || hosts.is_empty() {
        return Ok(());
    }
    if let Tx::Pg(t) = tx {
        let names: Vec<&str> = hosts.iter().map(String::as_str).collect();
        sqlx::query("SELECT host FROM hosts WHERE host = ANY($1::text[]) ORDER BY host FOR NO KEY UPDATE")
            .bind(&names)
            .execute(&mut **t)
            .await?;
    }
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

    pub(crate) async fn extend_leases_after_outage_impl(
        &self,
        since_ms: i64,
        until_ms: i64,
        max_life: Duration,
    ) -> StoreResult<u64> {
        let mut conn = self.db.acquire().await?;
        // Never past a lease's maximum life: an outage gives a lease its time back, not more.
        let extended = sql(format!(
            "UPDATE leases SET expires_at = CASE WHEN created_at + $3 < $1 THEN created_at + $3 ELSE $1 END \
             WHERE id IN (SELECT id FROM leases WHERE active AND expires_at >= $2 AND expires_at < $1 \
             AND created_at + $3 > expires_at ORDER BY id{})",
            self.db.dialect().for_no_key_update
        ))
        .bind(until_ms)
        .bind(since_ms)
        .bind(ms(max_life))
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
        if expired.is_empty() {
            tx.commit().await?;
            return Ok(Touched::default());
        }
        // In the store's lock order: the leases (above), what they hold and their jobs' URL rows,
        // then their hosts by name.
        let mut deltas = JobDeltas::default();
        let ids: Vec<i64> = expired.iter().map(|(_, id, _)| *id).collect();
        let mut q = sql("DELETE FROM lease_urls WHERE lease_id ");
        q.push_id_set(ids.iter().copied()).push(" RETURNING job_id, url_id");
        let held: Vec<(i64, i64)> = q.fetch_all(&mut tx).await?;
        let mut back: Vec<ReturnedRow> = Vec::new();
        if !held.is_empty() {
            for (job, _) in &held {
                deltas.of(*job).leased -= 1;
            }
            // A URL whose leases expired `max_attempts` times fails; the others wait again.
            let mut q = sql("UPDATE job_urls SET attempts = attempts + 1, \
                 state = CASE WHEN attempts + 1 >= $1 THEN 'failed' ELSE 'pending' END, \
                 kind = CASE WHEN attempts + 1 >= $1 THEN 'failed' ELSE kind END FROM ");
            q = q.bind(i64::from(max_attempts));
            q.push_id_pairs(held).push(
                " AS v WHERE job_urls.job_id = v.a AND job_urls.url_id = v.b AND job_urls.state = 'pending' \
                 RETURNING job_urls.job_id, job_urls.url_id, job_urls.state, job_urls.host, job_urls.url_order, job_urls.seq",
            );
            for r in q.fetch_all::<ReturnedRow>(&mut tx).await? {
                if r.state.parse() == Ok(JobUrlState::Failed) {
                    let d = deltas.of(r.job_id);
                    d.failed += 1;
                    d.error += 1;
                } else {
                    back.push(r);
                }
            }
        }
        let entries: Vec<FrontierEntry<'_>> = back
            .iter()
            .map(|r| FrontierEntry {
                host: &r.host,
                url_order: r.url_order,
                seq: r.seq,
                url_id: r.url_id,
                job_id: r.job_id,
            })
            .collect();
        let returned = insert_frontier(&mut tx, &entries).await?;
        let mut q = sql("UPDATE leases SET active = FALSE WHERE id ");
        q.push_id_set(ids.iter().copied());
        q.execute(&mut tx).await?;
        for (host, lease_id, _) in &expired {
            tracing::info!(lease.id = lease_id, server.address = %host, "lease expired");
        }
        lock_hosts_of_leases(&mut tx, ids.iter().copied()).await?;
        // Per host: the leases that ended, the URLs back, the latest spacing.
        let mut hosts: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
        for (host, _, spacing) in &expired {
            let h = hosts.entry(host.as_str()).or_default();
            h.0 += 1;
            h.1 = h.1.max(now + spacing);
        }
        for (host, (ended, not_before)) in hosts {
            // The expired holder may still be sending: the host's next lease keeps the spacing.
            // Its priority is that of the best URL waiting again (a grant that emptied the host's
            // frontier had set it to none).
            sql("UPDATE hosts SET active_leases = active_leases - $2, pending = pending + $3, \
                 next_allowed_at = CASE WHEN next_allowed_at < $4 THEN $4 ELSE next_allowed_at END, \
                 priority = COALESCE((SELECT url_order / $5 FROM frontier WHERE frontier.host = $1 \
                 ORDER BY url_order LIMIT 1), 9) WHERE host = $1")
            .bind(host.to_string())
            .bind(ended)
            .bind(returned.get(host).copied().unwrap_or(0))
            .bind(not_before)
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
