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

/// What the store's counters say, each against the rows it counts: a query that counts the
/// violations of one rule (0 when it holds).
const INVARIANTS: &[(&str, &str)] = &[
    (
        "a host's pending count is its frontier rows",
        "SELECT COUNT(*) FROM hosts h WHERE h.pending <> (SELECT COUNT(*) FROM frontier f WHERE f.host = h.host)",
    ),
    (
        "a host's active lease count is its live leases",
        "SELECT COUNT(*) FROM hosts h WHERE h.active_leases <> \
         (SELECT COUNT(*) FROM leases l WHERE l.host = h.host AND l.active)",
    ),
    (
        "a live lease's open count is the URLs it holds",
        "SELECT COUNT(*) FROM leases l WHERE l.active AND l.open <> \
         (SELECT COUNT(DISTINCT lu.url_id) FROM lease_urls lu WHERE lu.lease_id = l.id)",
    ),
    (
        "only live leases hold URLs",
        "SELECT COUNT(*) FROM lease_urls lu WHERE NOT EXISTS (SELECT 1 FROM leases l WHERE l.id = lu.lease_id AND l.active)",
    ),
    (
        "open work is of open URLs",
        "SELECT (SELECT COUNT(*) FROM frontier f WHERE NOT EXISTS (SELECT 1 FROM job_urls ju \
         WHERE ju.job_id = f.job_id AND ju.url_id = f.url_id AND ju.state = 'pending')) + \
         (SELECT COUNT(*) FROM lease_urls lu WHERE NOT EXISTS (SELECT 1 FROM job_urls ju \
         WHERE ju.job_id = lu.job_id AND ju.url_id = lu.url_id AND ju.state = 'pending'))",
    ),
    (
        "an open URL waits in the frontier or is out in one lease, not both",
        "SELECT COUNT(*) FROM job_urls ju WHERE ju.state = 'pending' AND \
         (SELECT COUNT(*) FROM frontier f WHERE f.url_id = ju.url_id AND f.job_id = ju.job_id) + \
         (SELECT COUNT(*) FROM lease_urls lu WHERE lu.url_id = ju.url_id AND lu.job_id = ju.job_id) <> 1",
    ),
    (
        "an ended job has no open URL",
        "SELECT COUNT(*) FROM job_urls ju JOIN jobs j ON j.id = ju.job_id \
         WHERE ju.state = 'pending' AND j.state IN ('completed', 'cancelled')",
    ),
    (
        "a job's counters are its rows",
        "SELECT COUNT(*) FROM jobs j WHERE \
         j.checked <> (SELECT COUNT(*) FROM job_urls ju WHERE ju.job_id = j.id AND ju.state = 'done') \
         OR j.fresh <> (SELECT COUNT(*) FROM job_urls ju WHERE ju.job_id = j.id AND ju.state = 'fresh') \
         OR j.failed <> (SELECT COUNT(*) FROM job_urls ju WHERE ju.job_id = j.id AND ju.state = 'failed') \
         OR j.cancelled <> (SELECT COUNT(*) FROM job_urls ju WHERE ju.job_id = j.id AND ju.state = 'cancelled') \
         OR j.leased <> (SELECT COUNT(*) FROM lease_urls lu WHERE lu.job_id = j.id) \
         OR j.invalid <> (SELECT COUNT(*) FROM job_invalid ji WHERE ji.job_id = j.id)",
    ),
    (
        "a job's classes add up to its resolved URLs",
        "SELECT COUNT(*) FROM jobs j WHERE j.n_ok + j.n_redirected + j.n_broken + j.n_error <> j.checked + j.fresh + j.failed",
    ),
    (
        "a completed job resolved exactly its total",
        "SELECT COUNT(*) FROM jobs j WHERE j.state = 'completed' \
         AND j.checked + j.fresh + j.invalid + j.failed + j.cancelled <> j.total",
    ),
];

impl TestDb {
    /// Asserts that every counter of the store equals the rows it counts (see [`INVARIANTS`]): what
    /// every fault and concurrency test checks at its end.
    pub async fn assert_invariants(&self) {
        let mut broken = Vec::new();
        for (rule, query) in INVARIANTS {
            let n = self.scalar(query).await;
            if n != 0 {
                broken.push(format!("{rule}: {n} violations"));
            }
        }
        assert!(broken.is_empty(), "the store's counters disagree with its rows:\n{}", broken.join("\n"));
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
