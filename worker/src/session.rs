//! The worker's session with its coordinator.
//!
//! Checks run independently of the connection: a lease's checks keep going while the worker
//! reconnects, and their results wait in the outbox. Every result batch stays in the outbox until the
//! coordinator acknowledges it (it acknowledges only what is committed), and unacknowledged batches
//! are resent after every reconnect; the coordinator's writes are idempotent, so a resend changes
//! nothing.
//!
//! A lease is worked on only while the coordinator confirms it: every heartbeat lists the leases
//! held, and its answer says which are renewed. No check of a lease starts later than the
//! confirmation window after the last heartbeat that renewed it (see
//! [`policy::confirmation_window`]); a lease the answer leaves out is given up. A coordinator that
//! gives up a silent worker's leases does so only after that window, so a lease is never worked on
//! by two workers, whatever froze, broke or was cut off.
//!
//! `--coordinator` may list several coordinators (or name one that resolves to several): the worker
//! works for one at a time and moves on to the next when it stops answering, keeping its leases.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};
use urlfleet_shared::connect::Target;
use urlfleet_shared::job::PolicyOverride;
use urlfleet_shared::proto::v1::worker_service_client::WorkerServiceClient;
use urlfleet_shared::proto::v1::{self as pb, coordinator_message::Msg as In, worker_message::Msg as Out};
use urlfleet_shared::{HostPolicy, policy};

use crate::config::WorkerConfig;
use crate::engine::Engine;

/// Largest gRPC message accepted.
const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// Reconnect back-off bounds.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// Longest wait for a coordinator to answer hello: a frozen one accepts connections and says nothing.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(5);
/// Heartbeats remembered until answered.
const HEARTBEATS_REMEMBERED: usize = 8;

/// A lease in hand: how to stop it, and until when its checks may start.
struct Held {
    token: CancellationToken,
    valid_until: watch::Sender<Instant>,
}

/// A heartbeat sent and not answered yet.
struct SentHeartbeat {
    sequence: u64,
    at: Instant,
    leases: Vec<i64>,
}

/// Runs a worker until `shutdown` completes, then leaves gracefully: it says goodbye, lets its leased
/// checks finish within the grace period, waits for their results to be acknowledged and exits.
pub async fn run(config: WorkerConfig, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
    let engine = Arc::new(Engine::new(config.engine())?);
    let stop_metrics = CancellationToken::new();
    if let Some(addr) = config.metrics_listen {
        let token = stop_metrics.clone();
        urlfleet_shared::metrics::spawn(addr, engine.metrics().registry(), async move { token.cancelled().await })
            .await;
    }
    let outcome = Worker::new(config, engine).run(shutdown).await;
    stop_metrics.cancel();
    outcome
}

/// A finished URL: its result, or nothing when the check was abandoned (lease revoked).
type Finished = Option<pb::CheckResult>;

struct Worker {
    config: WorkerConfig,
    id: String,
    engine: Arc<Engine>,
    leases: Arc<Mutex<HashMap<i64, Held>>>,
    /// URLs leased and not finished.
    outstanding: Arc<AtomicUsize>,
    finished_tx: mpsc::UnboundedSender<Finished>,
    finished_rx: mpsc::UnboundedReceiver<Finished>,
    /// Results not yet in a batch.
    pending: Vec<pb::CheckResult>,
    /// Batches sent and not acknowledged.
    unacked: BTreeMap<u64, pb::ResultBatch>,
    next_batch: u64,
    /// Credits owed to the coordinator (URLs finished since the last grant).
    owed: u32,
    stopping: Option<Instant>,
    /// The heartbeats not answered yet, oldest first.
    heartbeats: VecDeque<SentHeartbeat>,
    next_heartbeat: u64,
    /// How long a confirmation lets a lease's checks start (from the coordinator's TTL).
    window: Duration,
    /// Which of the coordinator addresses to try first.
    next_address: usize,
}

/// How a connection ended.
enum Ended {
    /// The stream broke: reconnect.
    Lost(String),
    /// Everything is delivered after a shutdown.
    Done,
}

impl Worker {
    fn new(config: WorkerConfig, engine: Arc<Engine>) -> Self {
        let id = config.worker_id.clone().unwrap_or_else(default_worker_id);
        let (finished_tx, finished_rx) = mpsc::unbounded_channel();
        let next_address = urlfleet_shared::connect::spread(&id);
        Self {
            config,
            id,
            engine,
            leases: Arc::default(),
            outstanding: Arc::default(),
            finished_tx,
            finished_rx,
            pending: Vec::new(),
            unacked: BTreeMap::new(),
            next_batch: 1,
            owed: 0,
            stopping: None,
            heartbeats: VecDeque::new(),
            next_heartbeat: 1,
            window: policy::confirmation_window(policy::DEFAULT_LEASE_TTL),
            // Workers of one cluster spread over its coordinators.
            next_address,
        }
    }

    async fn run(mut self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        use backon::BackoffBuilder;
        let reconnect = || {
            backon::ExponentialBuilder::default()
                .with_min_delay(RECONNECT_MIN)
                .with_max_delay(RECONNECT_MAX)
                .with_jitter()
                .without_max_times()
                .build()
        };
        let mut backoff = reconnect();
        info!(worker.id = %self.id, coordinator = %self.config.coordinator, "worker starting");
        loop {
            match self.connect_and_work(&mut shutdown).await {
                Ok(Ended::Done) => {
                    info!(worker.id = %self.id, "worker stopped");
                    return Ok(());
                }
                Ok(Ended::Lost(why)) => {
                    warn!(error = %why, unacked = self.unacked.len(), "coordinator session lost; reconnecting");
                    backoff = reconnect();
                }
                Err(e) => warn!(error = %format!("{e:#}"), "cannot reach the coordinator; retrying"),
            }
            if let Some(deadline) = self.stopping
                && Instant::now() >= deadline + self.config.shutdown_grace
            {
                warn!(
                    unacked_batches = self.unacked.len(),
                    "giving up on the coordinator during shutdown; unacknowledged results are lost"
                );
                return Ok(());
            }
            let delay = backoff.next().unwrap_or(RECONNECT_MAX);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = &mut shutdown, if self.stopping.is_none() => self.begin_stop(),
            }
        }
    }

    fn begin_stop(&mut self) {
        info!(
            leases = self.leases.lock().map(|l| l.len()).unwrap_or(0),
            "worker shutting down: finishing leased checks"
        );
        self.stopping = Some(Instant::now() + self.config.shutdown_grace);
    }

    async fn connect_and_work(&mut self, shutdown: &mut (impl Future<Output = ()> + Unpin)) -> anyhow::Result<Ended> {
        let target = match &self.config.in_process {
            Some(c) => Target::InProcess(c.clone()),
            None => Target::Address(self.config.coordinator.clone()),
        };
        let (channel, at) = self.config.auth.channel_from(&target, self.next_address).await?;
        // The next attempt starts with the next address unless this one proves good.
        self.next_address = at + 1;
        let mut client = WorkerServiceClient::with_interceptor(channel, self.config.auth.bearer()?)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let (tx, rx) = mpsc::channel::<pb::WorkerMessage>(256);
        let send = |tx: &mpsc::Sender<pb::WorkerMessage>, m: Out| {
            let tx = tx.clone();
            async move { tx.send(pb::WorkerMessage { msg: Some(m) }).await.is_ok() }
        };
        let hello = pb::Hello {
            worker_id: self.id.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            capacity: self.config.concurrency as u32,
        };
        send(&tx, Out::Hello(hello)).await;
        let opened = tokio::time::timeout(WELCOME_TIMEOUT, async {
            let mut inbound =
                client.work(ReceiverStream::new(rx)).await.context("opening the work stream")?.into_inner();
            let welcome = inbound.message().await.context("reading welcome")?;
            anyhow::Ok((inbound, welcome))
        });
        let (mut inbound, welcome) = opened.await.context("the coordinator did not answer hello in time")??;
        let (ttl, coordinator) = match welcome {
            Some(pb::CoordinatorMessage { msg: Some(In::Welcome(w)) }) => {
                (Duration::from_millis(w.lease_ttl_ms.max(300)), w.coordinator_id)
            }
            _ => anyhow::bail!("the coordinator did not answer hello with welcome"),
        };
        self.next_address = at;
        self.window = policy::confirmation_window(ttl);
        self.heartbeats.clear();
        let mut last_heard = Instant::now();
        info!(worker.id = %self.id, coordinator.id = %coordinator, "connected to coordinator");
        for batch in self.unacked.values() {
            send(&tx, Out::Results(batch.clone())).await;
        }
        // Checks that finished while disconnected are already out of `outstanding`: take their results
        // now, so that the fresh grant below does not count them a second time as owed credits.
        while let Ok(f) = self.finished_rx.try_recv() {
            if let Some(r) = f {
                self.pending.push(r);
            }
        }
        self.owed = 0;
        if self.stopping.is_none() {
            let free = (self.config.credits as usize).saturating_sub(self.outstanding.load(Ordering::Relaxed));
            send(&tx, Out::Credits(pb::Credits { urls: free as u32 })).await;
        } else {
            send(&tx, Out::Goodbye(pb::Goodbye { reason: "shutting down".into() })).await;
        }
        let mut flush = tokio::time::interval(self.config.batch_delay.max(Duration::from_millis(1)));
        // The first heartbeat goes at once: leases kept across a reconnect are confirmed (or given
        // up) before their window runs out.
        let mut heartbeat = tokio::time::interval(policy::heartbeat_interval(ttl));
        loop {
            if let Some(deadline) = self.stopping {
                let idle = self.leases.lock().map(|l| l.is_empty()).unwrap_or(true);
                if idle
                    && self.pending.is_empty()
                    && self.unacked.is_empty()
                    && self.outstanding.load(Ordering::Relaxed) == 0
                {
                    // Close the stream and let the coordinator end the session: a clean goodbye.
                    drop(tx);
                    let drained = async { while let Ok(Some(_)) = inbound.message().await {} };
                    let _ = tokio::time::timeout(Duration::from_secs(2), drained).await;
                    return Ok(Ended::Done);
                }
                if Instant::now() >= deadline {
                    self.abandon_leases();
                }
            }
            let grace_tick = tokio::time::sleep(Duration::from_millis(100));
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(m)) => {
                        last_heard = Instant::now();
                        self.handle(m);
                    }
                    Ok(None) => return Ok(Ended::Lost("the coordinator closed the stream".into())),
                    Err(status) => return Ok(Ended::Lost(status.message().to_string())),
                },
                // A coordinator answers every heartbeat; one silent for two windows is frozen or cut
                // off (or its database is down): another may answer.
                () = tokio::time::sleep_until(last_heard + self.window * 2) => {
                    self.next_address += 1;
                    return Ok(Ended::Lost("the coordinator went silent".into()));
                }
                f = self.finished_rx.recv() => {
                    // The worker holds a sender itself, so the channel never closes.
                    if let Some(f) = f {
                        self.owed += 1;
                        if let Some(r) = f {
                            self.pending.push(r);
                        }
                        // A worker with nothing left to check sends what it has at once: the last
                        // results of a job (or of its share) would otherwise wait for the tick.
                        let idle = self.outstanding.load(Ordering::Relaxed) == 0;
                        if idle {
                            while let Ok(f) = self.finished_rx.try_recv() {
                                self.owed += 1;
                                self.pending.extend(f);
                            }
                        }
                        if (idle || self.pending.len() >= self.config.batch_size) && !self.flush(&tx).await {
                            return Ok(Ended::Lost("send failed".into()));
                        }
                    }
                }
                _ = flush.tick() => {
                    if !self.flush(&tx).await {
                        return Ok(Ended::Lost("send failed".into()));
                    }
                    if self.owed > 0 && self.stopping.is_none() {
                        let urls = std::mem::take(&mut self.owed);
                        send(&tx, Out::Credits(pb::Credits { urls })).await;
                    }
                }
                _ = heartbeat.tick() => {
                    let lease_ids: Vec<i64> = self.leases.lock().map(|l| l.keys().copied().collect()).unwrap_or_default();
                    let sequence = self.next_heartbeat;
                    self.next_heartbeat += 1;
                    if self.heartbeats.len() == HEARTBEATS_REMEMBERED {
                        self.heartbeats.pop_front();
                    }
                    self.heartbeats.push_back(SentHeartbeat { sequence, at: Instant::now(), leases: lease_ids.clone() });
                    let checks_in_flight = u32::try_from(self.engine.in_flight()).unwrap_or(u32::MAX);
                    send(&tx, Out::Heartbeat(pb::Heartbeat { lease_ids, sequence, checks_in_flight })).await;
                }
                () = &mut *shutdown, if self.stopping.is_none() => {
                    self.begin_stop();
                    send(&tx, Out::Goodbye(pb::Goodbye { reason: "shutting down".into() })).await;
                }
                () = grace_tick, if self.stopping.is_some() => {}
            }
        }
    }

    /// Sends pending results as one batch, kept until acknowledged. False when the stream is gone.
    async fn flush(&mut self, tx: &mpsc::Sender<pb::WorkerMessage>) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        let batch = pb::ResultBatch { batch_id: self.next_batch, results: std::mem::take(&mut self.pending) };
        self.next_batch += 1;
        self.unacked.insert(batch.batch_id, batch.clone());
        tx.send(pb::WorkerMessage { msg: Some(Out::Results(batch)) }).await.is_ok()
    }

    fn handle(&mut self, msg: pb::CoordinatorMessage) {
        match msg.msg {
            Some(In::Lease(lease)) => self.start_lease(lease),
            Some(In::Ack(ack)) => {
                self.unacked.remove(&ack.batch_id);
                self.refused(&ack.refused);
            }
            Some(In::Revoke(r)) => {
                if let Some(held) = self.leases.lock().ok().and_then(|mut l| l.remove(&r.lease_id)) {
                    info!(lease.id = r.lease_id, reason = %r.reason, "lease revoked");
                    held.token.cancel();
                }
            }
            Some(In::Renewed(r)) => self.renewed(r),
            Some(In::Welcome(_)) | None => {}
        }
    }

    /// A heartbeat's answer: its renewed leases may start checks for another window from when the
    /// heartbeat left (never past their expiry); those it listed and the answer leaves out are not
    /// this worker's any more.
    fn renewed(&mut self, r: pb::Renewed) {
        while self.heartbeats.front().is_some_and(|h| h.sequence < r.sequence) {
            self.heartbeats.pop_front();
        }
        let Some(sent) = self.heartbeats.pop_front().filter(|h| h.sequence == r.sequence) else { return };
        let renewed: HashSet<i64> = r.leases.iter().map(|l| l.lease_id).collect();
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        for l in &r.leases {
            if let Some(held) = leases.get(&l.lease_id) {
                let until = sent.at + self.window.min(Duration::from_millis(l.remaining_ms));
                held.valid_until.send_if_modified(|v| {
                    let later = until > *v;
                    if later {
                        *v = until;
                    }
                    later
                });
            }
        }
        for id in sent.leases.iter().filter(|id| !renewed.contains(id)) {
            if let Some(held) = leases.remove(id) {
                warn!(lease.id = id, "the coordinator no longer renews this lease; giving it up");
                held.token.cancel();
            }
        }
    }

    /// Results the coordinator refused are dropped with the batch; a lease it no longer counts as
    /// this worker's is given up, so its remaining checks are not made for nothing.
    fn refused(&mut self, refused: &[pb::RefusedResult]) {
        let Some(first) = refused.first() else { return };
        warn!(
            refused = refused.len(),
            lease.id = first.lease_id,
            reason = %first.reason,
            "the coordinator refused results; they are not stored"
        );
        let gone = ["no_such_lease", "not_holder", "stale_epoch", "lease_ended"];
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        for r in refused.iter().filter(|r| gone.contains(&r.reason.as_str())) {
            if let Some(held) = leases.remove(&r.lease_id) {
                held.token.cancel();
            }
        }
    }

    fn abandon_leases(&mut self) {
        if let Ok(mut leases) = self.leases.lock() {
            for (id, held) in leases.drain() {
                warn!(lease.id = id, "shutdown grace period over: abandoning lease");
                held.token.cancel();
            }
        }
    }

    fn start_lease(&mut self, lease: pb::Lease) {
        let token = CancellationToken::new();
        let policy = lease
            .policy
            .as_ref()
            .map_or(HostPolicy::default(), |p| PolicyOverride::from(p).over(HostPolicy::default()));
        // A grant is a confirmation, from when it arrived.
        let (valid_until, valid) = watch::channel(Instant::now() + self.window);
        self.leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(lease.id, Held { token: token.clone(), valid_until });
        self.outstanding.fetch_add(lease.urls.len(), Ordering::Relaxed);
        let span = info_span!(
            "lease",
            otel.kind = "consumer",
            lease.id = lease.id,
            server.address = %lease.host,
            urls = lease.urls.len(),
            trace_id = tracing::field::Empty,
        );
        // Checks join the job's trace through the context the lease carries.
        urlfleet_shared::telemetry::set_parent(
            &span,
            urlfleet_shared::telemetry::context_from_map(&lease.trace_context),
        );
        if let Some(t) = span.in_scope(urlfleet_shared::telemetry::current_trace_id) {
            span.record("trace_id", t);
        }
        let engine = self.engine.clone();
        let leases = self.leases.clone();
        let outstanding = self.outstanding.clone();
        let finished = self.finished_tx.clone();
        let (lease_id, epoch) = (lease.id, lease.epoch);
        tokio::spawn(
            async move {
                // One task per lease: its URLs wait as data, at most the host's concurrency of them
                // under way (see `check_batch`).
                let urls = lease.urls.into_iter().map(|u| (u.url_id, u.url));
                crate::engine::check_batch(&engine, urls, policy, &token, Some(valid), |url_id, outcome| {
                    let result = (!token.is_cancelled())
                        .then(|| urlfleet_shared::convert::check_result(lease_id, epoch, url_id, &outcome));
                    outstanding.fetch_sub(1, Ordering::Relaxed);
                    let _ = finished.send(result);
                })
                .await;
                if let Ok(mut l) = leases.lock() {
                    l.remove(&lease_id);
                }
            }
            .instrument(span),
        );
    }
}

fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_string()))
        .unwrap_or_else(|| "worker".into());
    format!("{host}-{}-{:04x}", std::process::id(), rand::random::<u16>())
}
