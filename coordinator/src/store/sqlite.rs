//! The SQLite store: the embedded default of `urlfleet check`. One writer connection in WAL mode:
//! SQLite serializes writers anyway, and a single connection turns lock contention (`SQLITE_BUSY`)
//! into plain queueing.

use std::str::FromStr;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use super::mask_password;

/// Store on SQLite.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating when missing) the database and runs pending migrations.
    pub async fn connect(url: &str) -> Result<Self, super::StoreError> {
        let err = |source| super::StoreError::Connect { url: mask_password(url), source };
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(err)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(std::time::Duration::from_secs(30))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new().max_connections(1).connect_with(opts).await.map_err(err)?;
        migrator().run(&pool).await?;
        Ok(Self { pool })
    }

    /// The connection pool (for tests).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

fn migrator() -> Migrator {
    Migrator::with_migrations(vec![Migration::new(
        1,
        "init".into(),
        MigrationType::Simple,
        include_str!("../../migrations/sqlite/0001_init.sql").into_sql_str(),
        false,
    )])
}

super::sql::sql_store!(SqliteStore, sqlx::Sqlite, skip_locked = "");

impl SqliteStore {
    /// SQLite runs in-process: one prepared statement per row costs microseconds, and the portable
    /// path is as fast as a set-based one.
    async fn ingest_impl(&self, results: &[ReportedResult]) -> StoreResult<Touched> {
        ingest_per_row(&self.pool, results).await
    }
}
