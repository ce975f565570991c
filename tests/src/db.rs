//! A fresh database per test: an SQLite file in the temporary directory, or a new PostgreSQL
//! database on the server `DATABASE_URL` points at.

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::Connection;

/// Which store a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded default.
    Sqlite,
    /// The cluster store.
    Postgres,
}

/// A database created for one test.
#[derive(Debug)]
pub struct TestDb {
    /// URL to hand to the store.
    pub url: String,
    /// Which backend.
    pub backend: Backend,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique_name() -> String {
    format!("urlfleet_t_{}_{}_{:04x}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed), rand_u16())
}

fn rand_u16() -> u16 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (t.subsec_nanos() ^ (t.as_secs() as u32)) as u16
}

/// The PostgreSQL server URL for tests. PostgreSQL is a real part of the suite: without it the
/// tests fail loudly rather than skip.
pub fn postgres_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "DATABASE_URL is not set: the PostgreSQL tests need a server \
             (scripts/test starts the local one and sets it, e.g. postgres://postgres@127.0.0.1:5432/postgres)"
        )
    })
}

impl TestDb {
    /// Creates a fresh, empty database.
    pub async fn fresh(backend: Backend) -> Self {
        let name = unique_name();
        match backend {
            Backend::Sqlite => {
                let path = std::env::temp_dir().join(format!("{name}.db"));
                let _ = std::fs::remove_file(&path);
                Self { url: format!("sqlite:{}", path.display()), backend }
            }
            Backend::Postgres => {
                let base = postgres_url();
                let mut conn = sqlx::PgConnection::connect(&base)
                    .await
                    .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL at DATABASE_URL: {e}"));
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                let _ = conn.close().await;
                Self { url: with_database(&base, &name), backend }
            }
        }
    }
}

impl TestDb {
    /// One value of a query run directly on the database (to inspect tables in assertions).
    pub async fn scalar(&self, sql: &str) -> i64 {
        let sql = sqlx::AssertSqlSafe(sql.to_string());
        match self.backend {
            Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.url).await.expect("connect");
                sqlx::query_scalar(sql).fetch_one(&mut c).await.expect("query")
            }
            Backend::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.url).await.expect("connect");
                sqlx::query_scalar(sql).fetch_one(&mut c).await.expect("query")
            }
        }
    }
}

/// `base` with its database name replaced by `name`.
pub fn with_database(base: &str, name: &str) -> String {
    let (head, query) = match base.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (base, None),
    };
    let scheme_end = head.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = head[scheme_end..].find('/').map(|i| i + scheme_end).unwrap_or(head.len());
    let mut url = format!("{}/{}", &head[..path_start], name);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_replaced() {
        assert_eq!(with_database("postgres://u@h:5432/postgres", "x"), "postgres://u@h:5432/x");
        assert_eq!(with_database("postgres://u@h:5432", "x"), "postgres://u@h:5432/x");
        assert_eq!(with_database("postgres://u@h/db?sslmode=disable", "x"), "postgres://u@h/x?sslmode=disable");
    }
}
