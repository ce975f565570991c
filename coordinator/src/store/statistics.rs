//! What a store knows of the URL tables' statistics (PostgreSQL), and the analyze a large upload
//! starts when they go stale.

use super::SqlStore;

/// The URL tables are analyzed (PostgreSQL) once uploads have added at least this many rows to
/// `job_urls` since their statistics were taken, and at least three times the rows those statistics
/// describe: the tables are then at least four times what the planner believes (always, for the first
/// large job on a new database).
const ANALYZE_AFTER_URLS: u64 = 10_000;

/// What this store knows of the URL tables' statistics: the rows of `job_urls` the last statistics
/// describe (read from the catalog the first time it matters), the rows its uploads added since, and
/// whether an analyze is running. One store has one analyze at a time: uploads in several lanes, or
/// several jobs at once, each reaching the threshold would otherwise each start one, on the cores the
/// leases and the ingest need at that moment.
#[derive(Debug, Default)]
pub(crate) struct Statistics {
    described: Option<u64>,
    added: u64,
    running: bool,
}

impl Statistics {
    /// Counts `rows` added; true when an analyze should start now (and marks it running).
    fn added(&mut self, rows: u64) -> bool {
        self.added = self.added.saturating_add(rows);
        if self.running || !self.stale() {
            return false;
        }
        self.running = true;
        true
    }

    /// Whether the rows added since the statistics make them stale (see [`ANALYZE_AFTER_URLS`]); not
    /// knowing what they describe yet counts as stale until it is read.
    fn stale(&self) -> bool {
        self.added >= ANALYZE_AFTER_URLS && self.described.is_none_or(|d| self.added >= d.saturating_mul(3))
    }
}

impl SqlStore {
    /// Counts `rows` added to `job_urls` and, when that makes the statistics stale, has PostgreSQL
    /// analyze the URL tables in the background (it blocks no reader or writer). A large job can be
    /// most of the tables (always, on a new database): until PostgreSQL's own analyze comes round,
    /// the prepared ingest and lease statements would be planned without statistics — as scans of
    /// the whole table per chunk, or nested loops over all of it.
    pub(super) fn analyze_when_stale(&self, rows: u64) {
        let super::db::Db::Pg(pool) = &self.db else { return };
        if !self.statistics().added(rows) {
            return;
        }
        let (pool, store) = (pool.clone(), self.clone());
        tokio::spawn(async move {
            if let Err(e) = store.refresh_statistics(&pool).await {
                tracing::warn!(error = %e, "analyzing the URL tables after a large upload failed");
            }
            store.statistics().running = false;
        });
    }

    /// Reads what the statistics describe, if this store does not know yet, and analyzes the URL
    /// tables if they are stale.
    async fn refresh_statistics(&self, pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
        let described = || async {
            let rows = "SELECT GREATEST(reltuples, 0)::BIGINT FROM pg_class WHERE oid = 'job_urls'::regclass";
            sqlx::query_scalar::<_, i64>(rows).fetch_one(pool).await.map(|d| d.max(0) as u64)
        };
        if self.statistics().described.is_none() {
            let d = described().await?;
            let mut stats = self.statistics();
            stats.described = Some(d);
            if !stats.stale() {
                return Ok(());
            }
        }
        let added = self.statistics().added;
        sqlx::query("ANALYZE job_urls, urls").execute(pool).await?;
        let d = described().await?;
        let mut stats = self.statistics();
        stats.described = Some(d);
        stats.added -= added.min(stats.added);
        Ok(())
    }

    fn statistics(&self) -> std::sync::MutexGuard<'_, Statistics> {
        self.statistics.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::Statistics;

    #[test]
    fn statistics_go_stale_at_ten_thousand_rows_added_and_three_times_what_they_describe() {
        let mut s = Statistics::default();
        assert!(!s.added(9_999));
        assert!(s.added(1), "10,000 rows added to tables whose statistics are not known yet");
        assert!(!s.added(50_000), "one analyze at a time");
        // The analyze found the tables at 60,000 rows and counted what it saw.
        (s.described, s.added, s.running) = (Some(60_000), 0, false);
        assert!(!s.added(100_000));
        assert!(s.added(80_000), "180,000 rows added: the tables are four times what the statistics describe");
        (s.described, s.added, s.running) = (Some(0), 0, false);
        assert!(!s.added(9_999), "a new database: below 10,000 rows nothing is planned differently");
        assert!(s.added(1));
        (s.described, s.added, s.running) = (Some(u64::MAX), 0, false);
        assert!(!s.added(u64::MAX - 1), "no overflow");
    }
}
