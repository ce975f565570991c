//! The PostgreSQL store: the cluster's shared state. Several coordinators may use one database:
//! frontier rows are claimed with `FOR UPDATE SKIP LOCKED`, so two coordinators never lease the
//! same host (and so never the same URL) at once.

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Connection, SqlSafeStr};

use super::mask_password;

/// Store on PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects and runs pending migrations.
    pub async fn connect(url: &str) -> Result<Self, super::StoreError> {
        // One direct connection first: a refused or misconfigured server fails at once instead of
        // after the pool's acquire timeout.
        let probe = sqlx::PgConnection::connect(url)
            .await
            .map_err(|source| super::StoreError::Connect { url: mask_password(url), source })?;
        let _ = probe.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(|source| super::StoreError::Connect { url: mask_password(url), source })?;
        Self::from_pool(pool).await
    }

    /// Wraps an existing pool and runs pending migrations.
    pub async fn from_pool(pool: PgPool) -> Result<Self, super::StoreError> {
        migrator().run(&pool).await?;
        Ok(Self { pool })
    }

    /// The connection pool (for tests and benchmarks).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

fn migrator() -> Migrator {
    Migrator::with_migrations(vec![Migration::new(
        1,
        "init".into(),
        MigrationType::Simple,
        include_str!("../../migrations/postgres/0001_init.sql").into_sql_str(),
        false,
    )])
}

super::sql::sql_store!(PgStore, sqlx::Postgres, skip_locked = " FOR UPDATE SKIP LOCKED");
