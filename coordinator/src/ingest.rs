//! Result ingestion shared by every worker session of a coordinator.
//!
//! Sessions hand over result batches; a few writers commit them concurrently, each in chunks gathered
//! by its own buffer task (by size or after a short delay), each chunk in one transaction. A batch's
//! results are shared out by lease: every result of a lease goes to the same writer, so two writers
//! never queue on each other's lease locks (a chunk holds its leases locked until it commits). A
//! session acknowledges a batch to its worker only when every chunk holding a part of it has
//! committed. When the database is slow or down, writers retry with back-off for as long as it
//! takes, the backlog grows up to a bound, and while it is over half of that bound sessions grant no
//! new leases — so nothing acknowledged is ever lost, and nothing new piles up.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span, warn};
use urlfleet_shared::ReportedResult;

use crate::metrics::CoordinatorMetrics;
use crate::store::{Store, Touched};

/// Tuning of the ingest pipeline.
#[derive(Debug, Clone, Copy)]
pub struct IngestConfig {
    /// A chunk is written once it holds this many results…
    pub chunk_rows: usize,
    /// …or this long after its first result arrived.
    pub flush_after: Duration,
    /// Chunks written concurrently.
    pub writers: usize,
    /// Results accepted and not yet committed, at most; sessions stop leasing above half of it.
    pub max_backlog: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self { chunk_rows: 4_000, flush_after: Duration::from_millis(50), writers: 2, max_backlog: 200_000 }
    }
}

/// Why a batch was not committed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("results not committed: {0}")]
pub struct NotCommitted(pub String);

struct Pending {
    results: Vec<ReportedResult>,
    done: oneshot::Sender<Result<Touched, NotCommitted>>,
}

/// Handle of the ingest pipeline.
#[derive(Clone)]
pub struct Ingestor {
    /// One input per writer; results go to the writer of their lease ([`Ingestor::writer_of`]).
    txs: Arc<[mpsc::Sender<Pending>]>,
    backlog: Arc<AtomicUsize>,
    config: IngestConfig,
}

impl Ingestor {
    /// Starts the buffer task and the writers; they stop when `shutdown` is cancelled, failing what is
    /// not committed (the workers keep those results and resend them).
    pub fn start(store: Arc<dyn Store>, config: IngestConfig, shutdown: CancellationToken) -> Self {
        Self::start_with_metrics(store, config, shutdown, Arc::default())
    }

    /// Like [`Ingestor::start`], counting into `metrics`.
    pub fn start_with_metrics(
        store: Arc<dyn Store>,
        config: IngestConfig,
        shutdown: CancellationToken,
        metrics: Arc<CoordinatorMetrics>,
    ) -> Self {
        let backlog = Arc::new(AtomicUsize::new(0));
        let mut txs = Vec::new();
        for n in 0..config.writers.max(1) {
            let (tx, rx) = mpsc::channel::<Pending>(1_024);
            // One chunk in hand while one is written: the buffer waits for its writer beyond that.
            let (chunks_tx, chunks_rx) = mpsc::channel::<Vec<Pending>>(1);
            let in_flight = Arc::new(AtomicUsize::new(0));
            tokio::spawn(buffer(rx, chunks_tx, in_flight.clone(), config, shutdown.clone()));
            tokio::spawn(writer(
                n,
                store.clone(),
                chunks_rx,
                backlog.clone(),
                in_flight,
                shutdown.clone(),
                metrics.clone(),
            ));
            txs.push(tx);
        }
        Self { txs: txs.into(), backlog, config }
    }

    /// The writer that commits the results of `lease`.
    fn writer_of(&self, lease: i64) -> usize {
        lease.rem_euclid(self.txs.len() as i64) as usize
    }

    /// Hands over a batch and waits until every part of it is committed.
    pub async fn submit(&self, results: Vec<ReportedResult>) -> Result<Touched, NotCommitted> {
        let n = results.len();
        self.backlog.fetch_add(n, Ordering::Relaxed);
        let mut parts: Vec<Vec<ReportedResult>> = vec![Vec::new(); self.txs.len()];
        if self.txs.len() == 1 {
            parts[0] = results;
        } else {
            for r in results {
                parts[self.writer_of(r.lease_id)].push(r);
            }
        }
        let mut waits = Vec::with_capacity(parts.len());
        let mut handed = 0;
        for (tx, part) in self.txs.iter().zip(parts) {
            if part.is_empty() {
                continue;
            }
            let rows = part.len();
            let (done, wait) = oneshot::channel();
            if tx.send(Pending { results: part, done }).await.is_err() {
                // The parts handed over already are counted off by their writers.
                self.backlog.fetch_sub(n - handed, Ordering::Relaxed);
                return Err(NotCommitted("coordinator shutting down".into()));
            }
            handed += rows;
            waits.push(wait);
        }
        // Every part is waited for, so none is still being written when the batch counts as failed
        // (the worker resends it whole; the parts that did commit are replays then, and change
        // nothing).
        let mut touched = Touched::default();
        let mut failed = None;
        for wait in waits {
            match wait.await.unwrap_or_else(|_| Err(NotCommitted("coordinator shutting down".into()))) {
                Ok(t) => {
                    touched.jobs.extend(t.jobs);
                    touched.expired_leases += t.expired_leases;
                    touched.refused.extend(t.refused);
                }
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        touched.jobs.sort_unstable();
        touched.jobs.dedup();
        Ok(touched)
    }

    /// Results accepted and not yet committed.
    pub fn backlog(&self) -> usize {
        self.backlog.load(Ordering::Relaxed)
    }

    /// Whether ingest is behind: sessions grant no new leases meanwhile.
    pub fn behind(&self) -> bool {
        self.backlog() > self.config.max_backlog / 2
    }
}

type ChunkRx = mpsc::Receiver<Vec<Pending>>;

/// Gathers batches into chunks by size or time — or at once when no chunk is being written: batching
/// only pays while the writers are busy, and an idle pipeline would only add the wait to every
/// acknowledgement (and to the end of every job and lease).
async fn buffer(
    mut rx: mpsc::Receiver<Pending>,
    chunks: mpsc::Sender<Vec<Pending>>,
    in_flight: Arc<AtomicUsize>,
    config: IngestConfig,
    shutdown: CancellationToken,
) {
    let mut chunk: Vec<Pending> = Vec::new();
    let mut rows = 0usize;
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let timer = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let flush = tokio::select! {
            p = rx.recv() => match p {
                Some(p) => {
                    rows += p.results.len();
                    chunk.push(p);
                    deadline.get_or_insert_with(|| tokio::time::Instant::now() + config.flush_after);
                    let idle = in_flight.load(Ordering::Acquire) == 0;
                    // An idle pipeline takes what has already arrived, up to a chunk, and writes it.
                    while idle && rows < config.chunk_rows {
                        let Ok(p) = rx.try_recv() else { break };
                        rows += p.results.len();
                        chunk.push(p);
                    }
                    idle || rows >= config.chunk_rows
                }
                None => return,
            },
            () = timer => true,
            () = shutdown.cancelled() => return,
        };
        if flush && !chunk.is_empty() {
            rows = 0;
            deadline = None;
            // Waits for a free writer: backpressure reaches the sessions through the bounded input.
            in_flight.fetch_add(1, Ordering::AcqRel);
            if chunks.send(std::mem::take(&mut chunk)).await.is_err() {
                return;
            }
        }
    }
}

/// Commits chunks, retrying with back-off until the database takes them.
async fn writer(
    n: usize,
    store: Arc<dyn Store>,
    mut chunks: ChunkRx,
    backlog: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    shutdown: CancellationToken,
    metrics: Arc<CoordinatorMetrics>,
) {
    loop {
        let chunk = tokio::select! {
            c = chunks.recv() => match c { Some(c) => c, None => return },
            () = shutdown.cancelled() => return,
        };
        let mut results: Vec<ReportedResult> = Vec::with_capacity(chunk.iter().map(|p| p.results.len()).sum());
        let mut waiting = Vec::with_capacity(chunk.len());
        for p in chunk {
            let start = results.len();
            results.extend(p.results);
            waiting.push((start..results.len(), p.done));
        }
        let rows = results.len();
        let outcome = commit(n, &store, &results, &shutdown, &metrics).await;
        if let Err(Failure::Permanent(e)) = &outcome
            && waiting.len() > 1
        {
            // One bad batch must not hold back the others: commit them one by one; the bad one is
            // not acknowledged, and its worker keeps it.
            warn!(error = %e, batches = waiting.len(), "a chunk cannot be stored; committing its batches one by one");
            for (range, done) in waiting.drain(..) {
                let one = commit(n, &store, &results[range], &shutdown, &metrics).await;
                let _ = done.send(one.map_err(Failure::into_not_committed));
            }
        }
        in_flight.fetch_sub(1, Ordering::AcqRel);
        let left = backlog.fetch_sub(rows, Ordering::Relaxed) - rows;
        metrics.ingest_backlog.set(left as i64);
        let outcome = outcome.map_err(Failure::into_not_committed);
        for (_, done) in waiting {
            let _ = done.send(outcome.clone());
        }
    }
}

/// Why a write did not commit.
enum Failure {
    /// The data cannot be stored (a constraint says so): retrying changes nothing.
    Permanent(String),
    /// The coordinator is stopping.
    Stopped(String),
}

impl Failure {
    fn into_not_committed(self) -> NotCommitted {
        match self {
            Self::Permanent(e) | Self::Stopped(e) => NotCommitted(e),
        }
    }
}

/// Commits results in one transaction, retrying transient failures with jittered back-off (50 ms …
/// 5 s) for as long as it takes (the database may be restarting), until the coordinator stops.
async fn commit(
    n: usize,
    store: &Arc<dyn Store>,
    results: &[ReportedResult],
    shutdown: &CancellationToken,
    metrics: &CoordinatorMetrics,
) -> Result<Touched, Failure> {
    use backon::Retryable;
    let rows = results.len();
    let backoff = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times();
    let attempt = || async {
        let started = std::time::Instant::now();
        let t = store.ingest(results).instrument(info_span!("ingest_chunk", writer = n, rows)).await?;
        metrics.ingest_seconds.observe(started.elapsed().as_secs_f64());
        Ok::<_, crate::store::StoreError>(t)
    };
    // An attempt in flight is let finish; a wait between attempts ends when the coordinator stops,
    // and then no attempt follows.
    let stopping = shutdown.clone();
    let outcome = attempt
        .retry(backoff)
        .sleep(move |wait| {
            let stopping = stopping.clone();
            async move {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = stopping.cancelled() => {}
                }
            }
        })
        .when(|e| !is_permanent(e) && !shutdown.is_cancelled())
        .notify(|e, wait| warn!(error = %e, rows, retry_in_ms = wait.as_millis() as u64, "ingest failed; retrying"))
        .await;
    match outcome {
        Ok(t) => {
            metrics.ingest_rows.inc_by(rows as u64);
            metrics.results_refused.inc_by(t.refused.len() as u64);
            Ok(t)
        }
        Err(e) if is_permanent(&e) => Err(Failure::Permanent(e.to_string())),
        Err(e) => Err(Failure::Stopped(e.to_string())),
    }
}

/// A constraint violation fails the same way every time; everything else (connections, deadlocks,
/// timeouts) may pass on a retry.
fn is_permanent(e: &crate::store::StoreError) -> bool {
    use sqlx::error::ErrorKind;
    match e {
        crate::store::StoreError::Query(sqlx::Error::Database(db)) => matches!(
            db.kind(),
            ErrorKind::ForeignKeyViolation | ErrorKind::NotNullViolation | ErrorKind::CheckViolation
        ),
        _ => false,
    }
}
