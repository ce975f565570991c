//! The small interface between the store's logic and its two databases. Statements are written once,
//! with `$N` placeholders (both PostgreSQL and SQLite read them), and run on either database through
//! [`Sql`]; what the dialects do differently is named in [`Dialect`]. The few statements that only one
//! database can run (PostgreSQL's array parameters, SQLite's long `VALUES` lists) live in that
//! database's module and reach its driver through [`Tx::Pg`] / [`Tx::Lite`].
//!
//! sqlx's own generic route (`fn f<DB: Database>`) needs every bound type's `Encode`/`Decode` bound
//! restated on every function; a value that knows how to bind itself to either driver keeps the logic
//! plain Rust.

use std::fmt::Write as _;

use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{Arguments, Encode, FromRow, PgConnection, PgPool, Postgres, Sqlite, SqliteConnection, SqlitePool, Type};

use super::StoreResult;

/// What the two databases spell differently in the statements they share.
#[derive(Debug)]
pub(crate) struct Dialect {
    /// Claims rows another transaction has not locked (PostgreSQL), so concurrent coordinators
    /// take different hosts; nothing on SQLite, whose single writer serializes everything.
    pub skip_locked: &'static str,
    /// Locks the rows read until the transaction ends.
    pub for_update: &'static str,
    /// A lock that excludes a `FOR UPDATE` (a discard) but not updates of non-key columns (counters).
    pub for_key_share: &'static str,
    /// The lock an update of non-key columns takes: taken first, in key order, by a statement that
    /// updates many rows, so that two such transactions never wait on each other in a circle.
    pub for_no_key_update: &'static str,
    /// Settings a transaction that picks few rows by key out of large tables starts with.
    pub keyed_plans: &'static str,
}

/// A value that binds to either database.
pub(crate) trait Bind: Send {
    fn bind_pg(self: Box<Self>, args: &mut PgArguments) -> Result<(), BoxDynError>;
    fn bind_lite(self: Box<Self>, args: &mut SqliteArguments) -> Result<(), BoxDynError>;
}

impl<T> Bind for T
where
    T: for<'q> Encode<'q, Postgres> + Type<Postgres> + for<'q> Encode<'q, Sqlite> + Type<Sqlite> + Send,
{
    fn bind_pg(self: Box<Self>, args: &mut PgArguments) -> Result<(), BoxDynError> {
        args.add(*self)
    }

    fn bind_lite(self: Box<Self>, args: &mut SqliteArguments) -> Result<(), BoxDynError> {
        args.add(*self)
    }
}

/// A set of ids bound as one value — an array on PostgreSQL, a JSON array on SQLite — so that a
/// statement testing membership in it has the same text whatever the set's size, and is prepared
/// once (see [`Sql::push_id_set`]).
pub(crate) struct IdSet(pub Vec<i64>);

impl Bind for IdSet {
    fn bind_pg(self: Box<Self>, args: &mut PgArguments) -> Result<(), BoxDynError> {
        args.add(self.0)
    }

    fn bind_lite(self: Box<Self>, args: &mut SqliteArguments) -> Result<(), BoxDynError> {
        let mut json = String::with_capacity(self.0.len() * 8 + 2);
        json.push('[');
        for (i, id) in self.0.iter().enumerate() {
            if i > 0 {
                json.push(',');
            }
            json.push_str(&id.to_string());
        }
        json.push(']');
        args.add(json)
    }
}

/// Pairs of ids bound as one value, read as a table of two columns `a` and `b` (see
/// [`Sql::push_id_pairs`]). PostgreSQL takes a JSON array of pairs. SQLite takes each pair packed
/// into one integer (`a << 32 | b`) when every pair fits, as they do unless ids pass 2^31: its
/// `json_each` reads a flat array of integers at a fraction of the cost of extracting both members
/// of every nested pair; a JSON array of pairs otherwise.
pub(crate) struct IdPairs {
    pairs: Vec<(i64, i64)>,
    packed: bool,
}

impl IdPairs {
    pub(crate) fn new(pairs: Vec<(i64, i64)>) -> Self {
        let packed = pairs.iter().all(|&(a, b)| (0..1 << 31).contains(&a) && (0..1 << 32).contains(&b));
        Self { pairs, packed }
    }

    /// The pairs as JSON: packed integers, or (as PostgreSQL always takes them) pairs.
    fn json(&self, packed: bool) -> String {
        let mut json = String::with_capacity(self.pairs.len() * 16 + 2);
        json.push('[');
        for (i, (a, b)) in self.pairs.iter().enumerate() {
            if i > 0 {
                json.push(',');
            }
            // Writing to a `String` cannot fail.
            let _ = if packed { write!(json, "{}", a << 32 | b) } else { write!(json, "[{a},{b}]") };
        }
        json.push(']');
        json
    }
}

impl Bind for IdPairs {
    fn bind_pg(self: Box<Self>, args: &mut PgArguments) -> Result<(), BoxDynError> {
        args.add(self.json(false))
    }

    fn bind_lite(self: Box<Self>, args: &mut SqliteArguments) -> Result<(), BoxDynError> {
        args.add(self.json(self.packed))
    }
}

/// Marks where a membership test in an [`IdSet`] goes; each dialect spells it at execution.
const ID_SET: char = '\u{1}';

/// Marks where the table of an [`IdPairs`] goes.
const ID_PAIRS: char = '\u{2}';

/// Marks where the table of a packed [`IdPairs`] goes (spelled as [`ID_PAIRS`] on PostgreSQL).
const ID_PAIRS_PACKED: char = '\u{3}';

/// The statement's text for one database: every id-set and id-pairs marker spelled out.
fn spelled(text: String, pg: bool) -> String {
    let pg_pairs = |n: &str| {
        format!("(SELECT (e->>0)::int8 AS a, (e->>1)::int8 AS b FROM jsonb_array_elements(${n}::text::jsonb) AS e)")
    };
    let text = spell(text, ID_PAIRS, |n| {
        if pg {
            pg_pairs(n)
        } else {
            format!("(SELECT json_extract(value, '$[0]') AS a, json_extract(value, '$[1]') AS b FROM json_each(${n}))")
        }
    });
    let text = spell(text, ID_PAIRS_PACKED, |n| {
        if pg {
            pg_pairs(n)
        } else {
            format!("(SELECT value >> 32 AS a, value & 4294967295 AS b FROM json_each(${n}))")
        }
    });
    let text = spell(text, ID_SET, |n| {
        if pg { format!("= ANY(${n})") } else { format!("IN (SELECT value FROM json_each(${n}))") }
    });
    if pg { text } else { anonymous_placeholders(text) }
}

/// A SQLite statement whose placeholders are `$1, $2, … $n`, in that order and each once, with
/// each spelled `?` instead; any other statement as it is. The driver asks SQLite for every
/// parameter's name to bind it, and SQLite finds a name by walking the list of all of them: a
/// statement of a thousand named parameters (a `VALUES` list) was a million steps to bind, which
/// anonymous ones, having no names, are spared.
fn anonymous_placeholders(text: String) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let (mut next, mut copied, mut i) = (1u64, 0, 0);
    while i < bytes.len() {
        if bytes[i] != b'$' || !bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
            i += 1;
            continue;
        }
        let end = bytes[i + 1..].iter().position(|b| !b.is_ascii_digit()).map_or(bytes.len(), |k| i + 1 + k);
        if text[i + 1..end].parse::<u64>().ok() != Some(next) {
            return text;
        }
        out.push_str(&text[copied..i]);
        out.push('?');
        next += 1;
        copied = end;
        i = end;
    }
    out.push_str(&text[copied..]);
    out
}

/// Replaces each `marker N marker` in `text` by `spelling(N)`.
fn spell(text: String, marker: char, spelling: impl Fn(&str) -> String) -> String {
    if !text.contains(marker) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 96);
    let mut parts = text.split(marker);
    out.push_str(parts.next().unwrap_or_default());
    while let (Some(n), Some(rest)) = (parts.next(), parts.next()) {
        out.push_str(&spelling(n));
        out.push_str(rest);
    }
    out
}

/// Splits `items` into runs whose lengths are powers of four (at most `max`), longest first: a
/// statement with one placeholder row per item then has one of a handful of texts, each prepared
/// once and cached, rather than a new text — parsed and planned anew — for every length.
pub(crate) fn ladder_chunks<T>(items: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    let mut rest = items;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut size = 1;
        while size * 4 <= rest.len().min(max.max(1)) {
            size *= 4;
        }
        let (run, tail) = rest.split_at(size);
        rest = tail;
        Some(run)
    })
}

/// A row type that both drivers decode (anything `#[derive(sqlx::FromRow)]`, tuples of columns).
pub(crate) trait Decoded: for<'r> FromRow<'r, PgRow> + for<'r> FromRow<'r, SqliteRow> + Send + Unpin {}
impl<T> Decoded for T where T: for<'r> FromRow<'r, PgRow> + for<'r> FromRow<'r, SqliteRow> + Send + Unpin {}

/// The database of a store.
#[derive(Debug, Clone)]
pub(crate) enum Db {
    Pg(PgPool),
    Lite(SqlitePool),
}

/// A transaction on either database.
pub(crate) enum Tx {
    Pg(sqlx::Transaction<'static, Postgres>),
    Lite(sqlx::Transaction<'static, Sqlite>),
}

/// A connection a statement runs on.
pub(crate) enum Conn<'c> {
    Pg(&'c mut PgConnection),
    Lite(&'c mut SqliteConnection),
}

/// Something a statement can run on: a transaction, or a connection taken from the pool.
pub(crate) trait Executor: Send {
    fn conn(&mut self) -> Conn<'_>;
}

impl Executor for Tx {
    fn conn(&mut self) -> Conn<'_> {
        match self {
            Self::Pg(t) => Conn::Pg(t),
            Self::Lite(t) => Conn::Lite(t),
        }
    }
}

/// A connection taken from the pool, for statements that need no transaction.
pub(crate) enum Pooled {
    Pg(sqlx::pool::PoolConnection<Postgres>),
    Lite(sqlx::pool::PoolConnection<Sqlite>),
}

impl Executor for Pooled {
    fn conn(&mut self) -> Conn<'_> {
        match self {
            Self::Pg(c) => Conn::Pg(c),
            Self::Lite(c) => Conn::Lite(c),
        }
    }
}

static POSTGRES: Dialect = Dialect {
    skip_locked: " FOR UPDATE SKIP LOCKED",
    for_update: " FOR UPDATE",
    for_key_share: " FOR KEY SHARE",
    for_no_key_update: " FOR NO KEY UPDATE",
    keyed_plans: super::postgres::KEYED_PLANS,
};

static SQLITE: Dialect =
    Dialect { skip_locked: "", for_update: "", for_key_share: "", for_no_key_update: "", keyed_plans: "" };

impl Db {
    /// How this database spells what the dialects do differently.
    pub(crate) fn dialect(&self) -> &'static Dialect {
        match self {
            Self::Pg(_) => &POSTGRES,
            Self::Lite(_) => &SQLITE,
        }
    }

    /// Starts a transaction.
    pub(crate) async fn begin(&self) -> StoreResult<Tx> {
        Ok(match self {
            Self::Pg(p) => Tx::Pg(p.begin().await?),
            Self::Lite(p) => Tx::Lite(p.begin().await?),
        })
    }

    /// Starts a transaction for statements that pick few rows by key (see [`Dialect::keyed_plans`]).
    pub(crate) async fn begin_keyed(&self) -> StoreResult<Tx> {
        let mut tx = self.begin().await?;
        if let Tx::Pg(t) = &mut tx {
            sqlx::raw_sql(POSTGRES.keyed_plans).execute(&mut **t).await?;
        }
        Ok(tx)
    }

    /// A connection from the pool.
    pub(crate) async fn acquire(&self) -> StoreResult<Pooled> {
        Ok(match self {
            Self::Pg(p) => Pooled::Pg(p.acquire().await?),
            Self::Lite(p) => Pooled::Lite(p.acquire().await?),
        })
    }
}

impl Tx {
    /// How this transaction's database spells what the dialects do differently.
    pub(crate) fn dialect(&self) -> &'static Dialect {
        match self {
            Self::Pg(_) => &POSTGRES,
            Self::Lite(_) => &SQLITE,
        }
    }

    /// Commits.
    pub(crate) async fn commit(self) -> StoreResult<()> {
        match self {
            Self::Pg(t) => t.commit().await?,
            Self::Lite(t) => t.commit().await?,
        }
        Ok(())
    }
}

/// A statement and its parameters, built once and run on either database.
pub(crate) struct Sql<'a> {
    text: String,
    args: Vec<Box<dyn Bind + 'a>>,
}

/// A statement whose text is complete; parameters follow with [`Sql::bind`].
pub(crate) fn sql<'a>(text: impl Into<String>) -> Sql<'a> {
    Sql { text: text.into(), args: Vec::new() }
}

impl<'a> Sql<'a> {
    /// Binds the next `$N` parameter of the text.
    pub(crate) fn bind<T: Bind + 'a>(mut self, value: T) -> Self {
        self.args.push(Box::new(value));
        self
    }

    /// Appends text.
    pub(crate) fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Appends a placeholder for `value` and binds it.
    pub(crate) fn push_bind<T: Bind + 'a>(&mut self, value: T) -> &mut Self {
        self.args.push(Box::new(value));
        self.text.push('$');
        self.text.push_str(&self.args.len().to_string());
        self
    }

    /// Appends a membership test in `ids` (`= ANY($n)` on PostgreSQL, `IN (SELECT value FROM
    /// json_each($n))` on SQLite), bound as one value: the text does not change with the set's size.
    pub(crate) fn push_id_set(&mut self, ids: impl IntoIterator<Item = i64>) -> &mut Self {
        self.args.push(Box::new(IdSet(ids.into_iter().collect())));
        self.text.push(ID_SET);
        self.text.push_str(&self.args.len().to_string());
        self.text.push(ID_SET);
        self
    }

    /// Appends a table of `pairs` with columns `a` and `b` (a subquery: give it an alias), bound as
    /// one value: the text does not change with the number of pairs, and both databases join it to
    /// a table through that table's index.
    pub(crate) fn push_id_pairs(&mut self, pairs: Vec<(i64, i64)>) -> &mut Self {
        let pairs = IdPairs::new(pairs);
        let marker = if pairs.packed { ID_PAIRS_PACKED } else { ID_PAIRS };
        self.args.push(Box::new(pairs));
        self.text.push(marker);
        self.text.push_str(&self.args.len().to_string());
        self.text.push(marker);
        self
    }

    /// Appends `v1, v2, …` as placeholders, each bound.
    pub(crate) fn push_list<T: Bind + 'a>(&mut self, values: impl IntoIterator<Item = T>) -> &mut Self {
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                self.text.push_str(", ");
            }
            self.push_bind(v);
        }
        self
    }

    fn pg_args(args: Vec<Box<dyn Bind + 'a>>) -> Result<PgArguments, sqlx::Error> {
        let mut a = PgArguments::default();
        for v in args {
            v.bind_pg(&mut a).map_err(sqlx::Error::Encode)?;
        }
        Ok(a)
    }

    fn lite_args(args: Vec<Box<dyn Bind + 'a>>) -> Result<SqliteArguments, sqlx::Error> {
        let mut a = SqliteArguments::default();
        for v in args {
            v.bind_lite(&mut a).map_err(sqlx::Error::Encode)?;
        }
        Ok(a)
    }

    /// Every row, decoded.
    pub(crate) async fn fetch_all<T: Decoded>(self, ex: &mut impl Executor) -> StoreResult<Vec<T>> {
        Ok(match ex.conn() {
            Conn::Pg(c) => {
                let text = sqlx::AssertSqlSafe(spelled(self.text, true));
                sqlx::query_as_with::<Postgres, T, _>(text, Self::pg_args(self.args)?).fetch_all(c).await?
            }
            Conn::Lite(c) => {
                let text = sqlx::AssertSqlSafe(spelled(self.text, false));
                sqlx::query_as_with::<Sqlite, T, _>(text, Self::lite_args(self.args)?).fetch_all(c).await?
            }
        })
    }

    /// The first row, decoded, if there is one.
    pub(crate) async fn fetch_optional<T: Decoded>(self, ex: &mut impl Executor) -> StoreResult<Option<T>> {
        Ok(match ex.conn() {
            Conn::Pg(c) => {
                let text = sqlx::AssertSqlSafe(spelled(self.text, true));
                sqlx::query_as_with::<Postgres, T, _>(text, Self::pg_args(self.args)?).fetch_optional(c).await?
            }
            Conn::Lite(c) => {
                let text = sqlx::AssertSqlSafe(spelled(self.text, false));
                sqlx::query_as_with::<Sqlite, T, _>(text, Self::lite_args(self.args)?).fetch_optional(c).await?
            }
        })
    }

    /// The first row, decoded; an error when there is none.
    pub(crate) async fn fetch_one<T: Decoded>(self, ex: &mut impl Executor) -> StoreResult<T> {
        self.fetch_optional(ex).await?.ok_or(super::StoreError::Query(sqlx::Error::RowNotFound))
    }

    /// The first column of the first row, if there is a row.
    pub(crate) async fn scalar<T>(self, ex: &mut impl Executor) -> StoreResult<Option<T>>
    where
        (T,): Decoded,
    {
        Ok(self.fetch_optional::<(T,)>(ex).await?.map(|(v,)| v))
    }

    /// Runs the statement; returns the rows it changed.
    pub(crate) async fn execute(self, ex: &mut impl Executor) -> StoreResult<u64> {
        Ok(match ex.conn() {
            Conn::Pg(c) => {
                let text = sqlx::AssertSqlSafe(spelled(self.text, true));
                sqlx::query_with::<Postgres, _>(text, Self::pg_args(self.args)?).execute(c).await?.rows_affected()
            }
            Conn::Lite(c) => {
                let text = sqlx::AssertSqlSafe(spelled(self.text, false));
                sqlx::query_with::<Sqlite, _>(text, Self::lite_args(self.args)?).execute(c).await?.rows_affected()
            }
        })
    }
}

/// Runs a transaction again while it fails in a way a new attempt can get past ([`is_transient`], or
/// `also`): a few attempts, with jittered exponential back-off from 10 ms.
pub(crate) async fn retry_transient<T, F, Fut>(
    what: &'static str,
    attempt: F,
    also: impl Fn(&super::StoreError) -> bool,
) -> StoreResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = StoreResult<T>>,
{
    use backon::Retryable;
    let backoff = backon::ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(10))
        .with_max_delay(std::time::Duration::from_secs(1))
        .with_max_times(4)
        .with_jitter();
    attempt
        .retry(backoff)
        .when(|e| is_transient(e) || also(e))
        .notify(|e, wait| tracing::debug!(error = %e, ?wait, transaction = what, "retrying a transaction"))
        .await
}

/// Whether an error is one that trying the transaction again can get past: a deadlock, a
/// serialization failure or a `NOWAIT` lock someone else held (PostgreSQL), or a change that raced
/// the transaction.
pub fn is_transient(e: &super::StoreError) -> bool {
    match e {
        super::StoreError::Conflict => true,
        super::StoreError::Query(sqlx::Error::Database(e)) => {
            matches!(e.code().as_deref(), Some("40P01" | "40001" | "55P03"))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::{Db, anonymous_placeholders, ladder_chunks, sql};

    /// Placeholders numbered in order, each once, become anonymous; a statement that repeats or
    /// reorders them keeps its names, and a `$` that is no placeholder is left alone.
    #[test]
    fn placeholders_in_order_become_anonymous_and_others_keep_their_names() {
        let s = |t: &str| anonymous_placeholders(t.to_string());
        assert_eq!(s("VALUES ($1, $2), ($3, $4)"), "VALUES (?, ?), (?, ?)");
        assert_eq!(
            s("SELECT json_extract(value, '$[0]') FROM json_each($1) WHERE a = $2"),
            "SELECT json_extract(value, '$[0]') FROM json_each(?) WHERE a = ?"
        );
        assert_eq!(
            s("SET a = CASE WHEN a < $2 THEN $2 END WHERE id = $1"),
            "SET a = CASE WHEN a < $2 THEN $2 END WHERE id = $1"
        );
        assert_eq!(s("WHERE a = $1 OR b = $1"), "WHERE a = $1 OR b = $1");
        assert_eq!(s("LIMIT $10"), "LIMIT $10");
        assert_eq!(s("SELECT 1"), "SELECT 1");
    }

    /// Pairs read back as the table they were bound as, on SQLite, packed and not: ids that fit
    /// in the packed integer (up to its bounds) and ids that do not.
    #[tokio::test]
    async fn id_pairs_read_back_as_bound_on_sqlite() {
        let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await.unwrap();
        let mut conn = Db::Lite(pool).acquire().await.unwrap();
        let fits = vec![(0, 0), (1, 2), ((1 << 31) - 1, (1 << 32) - 1), (7, 1 << 31)];
        let too_big = vec![(1, 2), (1 << 31, 5), (3, 1 << 32), (-1, 4), (i64::MAX, i64::MIN)];
        for pairs in [fits, too_big, Vec::new()] {
            let mut q = sql("SELECT a, b FROM ");
            q.push_id_pairs(pairs.clone()).push(" AS v ORDER BY a, b");
            let mut want = pairs.clone();
            want.sort_unstable();
            assert_eq!(q.fetch_all::<(i64, i64)>(&mut conn).await.unwrap(), want);
        }
    }

    #[test]
    fn ladder_chunks_cover_every_item_once_in_a_few_lengths() {
        for (n, max) in [(0, 1_000), (1, 1_000), (1_842, 1_000), (4_000, 4_096), (70, 16), (5, 0)] {
            let items: Vec<usize> = (0..n).collect();
            let runs: Vec<&[usize]> = ladder_chunks(&items, max).collect();
            assert_eq!(runs.concat(), items, "n = {n}");
            for r in &runs {
                assert!(r.len().is_power_of_two() && r.len().trailing_zeros() % 2 == 0, "length {}", r.len());
                assert!(r.len() <= max.max(1));
            }
            assert!(runs.windows(2).all(|w| w[0].len() >= w[1].len()), "longest first");
        }
        let items: Vec<usize> = (0..1_842).collect();
        assert_eq!(
            ladder_chunks(&items, 1_000).map(<[usize]>::len).collect::<Vec<_>>(),
            [256, 256, 256, 256, 256, 256, 256, 16, 16, 16, 1, 1]
        );
    }
}
