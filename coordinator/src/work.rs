//! `WorkerService.Work`: one session per connected worker. The session grants leases while the
//! worker has credits, ingests result batches and acknowledges each only after it is committed,
//! renews leases on heartbeats, forwards revocations, and makes the worker's leases expire when the
//! stream ends so that their unfinished URLs return to the frontier.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, Stream, StreamExt};
use std::future::Future;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info, info_span, warn};
use urlfleet_shared::outcome::Refusal;
use urlfleet_shared::proto::v1::worker_service_server::WorkerService;
use urlfleet_shared::proto::v1::{self as pb, coordinator_message::Msg as Out, worker_message::Msg as In};
use urlfleet_shared::{policy, telemetry};

use crate::auth::Caller;
use crate::config::CoordinatorConfig;
use crate::events::Events;
use crate::ingest::{Ingestor, NotCommitted};
use crate::store::Touched;
use crate::store::{LeaseGrant, LeaseRequest, Store};

/// Hosts leased by a session's first store transaction: the first leases go out at once.
const FIRST_LEASES_PER_CALL: usize = 64;

/// Most hosts leased per store transaction. While each call takes all it may, the next takes twice
/// as many (up to this): a worker with credits for thousands of polite hosts gets them in a few
/// transactions, not one per host, nor one per few dozen.
const MAX_LEASES_PER_CALL: usize = 1_024;

/// Longest wait before looking for work again when nothing was leasable.
const IDLE_POLL: Duration = Duration::from_millis(200);

/// Shortest wait before looking for work again after committed results when nothing was leasable:
/// every committed result batch wakes every session, and most wake-ups find nothing new (a freed
/// host still keeps its spacing); each look is a transaction. New work is looked at at once.
const LEASE_RETRY_GAP: Duration = Duration::from_millis(50);

/// A result batch on its way to the database: once committed, what it touched.
type Commit = Pin<Box<dyn Future<Output = (Batch, Result<Touched, NotCommitted>)> + Send>>;

/// What a session remembers of a batch until it is committed: its id, the results it held and the
/// ones refused before they reached the store.
struct Batch {
    id: u64,
    keys: HashSet<(i64, i64)>,
    malformed: Vec<pb::RefusedResult>,
}

/// What one worker has in hand: lease → its URLs not reported yet, and how many those are in all,
/// and of those how many belong to hosts whose limits are lifted.
#[derive(Default)]
struct Hand {
    leases: HashMap<i64, HashSet<i64>>,
    urls: u64,
    /// The leases of hosts whose limits are lifted.
    lifted: HashSet<i64>,
    lifted_urls: u64,
}

impl Hand {
    fn grant(&mut self, lease: i64, urls: HashSet<i64>, lifted: bool) {
        self.drop_lease(lease);
        self.urls += urls.len() as u64;
        if lifted {
            self.lifted.insert(lease);
            self.lifted_urls += urls.len() as u64;
        }
        self.leases.insert(lease, urls);
    }

    /// A URL reported: it leaves the hand once, with its first result. True when it did.
    fn reported(&mut self, lease: i64, url: i64) -> bool {
        let Some(urls) = self.leases.get_mut(&lease) else { return false };
        if !urls.remove(&url) {
            return false;
        }
        self.urls -= 1;
        if self.lifted.contains(&lease) {
            self.lifted_urls -= 1;
        }
        if urls.is_empty() {
            self.drop_lease(lease);
        }
        true
    }

    /// Keeps only the leases `keep` says the worker still holds.
    fn retain(&mut self, mut keep: impl FnMut(i64) -> bool) {
        let gone: Vec<i64> = self.leases.keys().copied().filter(|id| !keep(*id)).collect();
        for lease in gone {
            self.drop_lease(lease);
        }
    }

    fn drop_lease(&mut self, lease: i64) {
        if let Some(urls) = self.leases.remove(&lease) {
            self.urls -= urls.len() as u64;
            if self.lifted.remove(&lease) {
                self.lifted_urls -= urls.len() as u64;
            }
        }
    }
}

/// How fast a worker has been reporting results: URLs per second, averaged over windows of
/// [`PACE_WINDOW`], each window weighing as much as all before it.
struct Pace {
    since: tokio::time::Instant,
    reported: u64,
    per_second: f64,
}

/// How long [`Pace`] counts results before it takes a rate.
const PACE_WINDOW: Duration = Duration::from_millis(250);

/// URLs of lifted hosts a worker holds at least, per check it runs at once: enough to keep its
/// checks busy before its pace is known, and when its hosts answer slowly.
const LIFTED_PER_CHECK: u64 = 8;

impl Pace {
    fn new() -> Self {
        Self { since: tokio::time::Instant::now(), reported: 0, per_second: 0.0 }
    }

    fn reported(&mut self, urls: u64) {
        self.reported += urls;
        let elapsed = self.since.elapsed();
        if elapsed >= PACE_WINDOW {
            let rate = self.reported as f64 / elapsed.as_secs_f64();
            self.per_second = if self.per_second == 0.0 { rate } else { (self.per_second + rate) / 2.0 };
            self.since = tokio::time::Instant::now();
            self.reported = 0;
        }
    }
}

/// Longest worker id accepted in hello.
pub const MAX_WORKER_ID_BYTES: usize = 128;

/// The `WorkerService` implementation.
#[derive(Clone)]
pub struct WorkApi {
    store: Arc<dyn Store>,
    events: Arc<Events>,
    config: CoordinatorConfig,
    shutdown: CancellationToken,
    coordinator_id: Arc<str>,
    sessions: Arc<AtomicU64>,
    /// The latest session of each connected worker.
    latest: Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
    /// The URLs each worker has in hand, over all its sessions: lease → URLs not reported yet. With
    /// a session's credits, what `--max-worker-credits` bounds.
    hands: Arc<std::sync::Mutex<HashMap<String, Hand>>>,
    ingestor: Ingestor,
    metrics: Arc<crate::metrics::CoordinatorMetrics>,
    /// The dashboard's view of the workers and hosts.
    board: Arc<crate::board::Board>,
}

impl WorkApi {
    /// Shows the sessions and the hosts' answers on `board`.
    pub fn with_board(mut self, board: Arc<crate::board::Board>) -> Self {
        self.board = board;
        self
    }

    /// A handler over a store.
    pub fn new(
        store: Arc<dyn Store>,
        events: Arc<Events>,
        config: CoordinatorConfig,
        shutdown: CancellationToken,
        coordinator_id: Arc<str>,
        ingestor: Ingestor,
        metrics: Arc<crate::metrics::CoordinatorMetrics>,
    ) -> Self {
        let sessions = Arc::new(AtomicU64::new(0));
        Self {
            store,
            events,
            config,
            shutdown,
            coordinator_id,
            sessions,
            latest: Arc::default(),
            hands: Arc::default(),
            ingestor,
            metrics,
            board: Arc::default(),
        }
    }
}

type WorkStream = Pin<Box<dyn Stream<Item = Result<pb::CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl WorkerService for WorkApi {
    type WorkStream = WorkStream;

    async fn work(&self, request: Request<Streaming<pb::WorkerMessage>>) -> Result<Response<WorkStream>, Status> {
        if self.shutdown.is_cancelled() {
            return Err(Status::unavailable("coordinator shutting down"));
        }
        let caller = Caller::of(&request)?;
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(pb::WorkerMessage { msg: Some(In::Hello(h)) }) => h,
            _ => return Err(Status::invalid_argument("the first Work message must be hello")),
        };
        if hello.worker_id.is_empty() || hello.worker_id.len() > MAX_WORKER_ID_BYTES {
            return Err(Status::invalid_argument(format!(
                "hello.worker_id must have 1 to {MAX_WORKER_ID_BYTES} bytes"
            )));
        }
        // Leases are held by the worker: after a reconnect it keeps checking what it holds, and its
        // heartbeats on the new session renew those leases. Only the worker's latest session may
        // give them up when it ends.
        // A token's workers hold leases under its name: no other credential can report for them,
        // renew them or end them.
        let holder = if caller.name.is_empty() {
            hello.worker_id.clone()
        } else {
            format!("{}/{}", caller.name, hello.worker_id)
        };
        let n = self.sessions.fetch_add(1, Ordering::Relaxed);
        self.latest.lock().unwrap_or_else(|e| e.into_inner()).insert(holder.clone(), n);
        // Room for a whole grant's leases (up to `MAX_LEASES_PER_CALL`): the session goes on to its
        // next grant while the worker takes them in, rather than waiting for it lease by lease.
        let (tx, rx) = mpsc::channel(MAX_LEASES_PER_CALL);
        let welcome = pb::Welcome {
            coordinator_id: self.coordinator_id.to_string(),
            lease_ttl_ms: self.config.lease_ttl.as_millis() as u64,
        };
        tx.send(Ok(out(Out::Welcome(welcome)))).await.map_err(|_| Status::cancelled("worker went away"))?;
        info!(worker.id = %hello.worker_id, session = n, capacity = hello.capacity, "worker connected");
        let session = Session {
            api: self.clone(),
            session: n,
            holder: holder.clone(),
            tx,
            credits: 0,
            leaving: false,
            commits: FuturesUnordered::new(),
            held: HashMap::new(),
            warned_credits: false,
            leases_per_call: FIRST_LEASES_PER_CALL,
            found_nothing_at: None,
            last_heard: tokio::time::Instant::now(),
            worker_id: hello.worker_id.clone(),
            capacity: hello.capacity,
            connected_at_ms: urlfleet_shared::time::now_ms(),
            lease_hosts: HashMap::new(),
            in_flight: 0,
            pace: Pace::new(),
            lifted_full: false,
        };
        tokio::spawn(session.run(inbound).instrument(info_span!("worker_session", worker.id = %hello.worker_id)));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn out(msg: Out) -> pb::CoordinatorMessage {
    pb::CoordinatorMessage { msg: Some(msg) }
}

struct Session {
    api: WorkApi,
    /// This session's number (per coordinator).
    session: u64,
    /// The worker id: leases are held by it.
    holder: String,
    tx: mpsc::Sender<Result<pb::CoordinatorMessage, Status>>,
    credits: u64,
    leaving: bool,
    /// Batches being committed; each is acknowledged when its commit completes.
    commits: FuturesUnordered<Commit>,
    /// The leases this session was granted or renewed, with when: only these does it give up when it
    /// ends, so a session under the same worker id cannot end another session's leases.
    held: HashMap<i64, tokio::time::Instant>,
    warned_credits: bool,
    /// Hosts the next grant may lease (see [`MAX_LEASES_PER_CALL`]).
    leases_per_call: usize,
    /// When a look for work last found nothing (see [`LEASE_RETRY_GAP`]).
    found_nothing_at: Option<tokio::time::Instant>,
    /// When the worker last sent anything: a worker sends a heartbeat every
    /// [`policy::heartbeat_interval`], so a silent one is frozen, partitioned or gone.
    last_heard: tokio::time::Instant,
    /// As the worker said hello, for the dashboard.
    worker_id: String,
    capacity: u32,
    connected_at_ms: i64,
    /// The host of each lease granted on this session, to file its results' answers by host.
    lease_hosts: HashMap<i64, String>,
    /// Checks in flight, as the worker's last heartbeat said.
    in_flight: u32,
    /// How fast the worker reports: what bounds its hand of lifted hosts' URLs.
    pace: Pace,
    /// The last grant used all the room for lifted hosts' URLs: results that make room again are a
    /// reason to look for work at once.
    lifted_full: bool,
}

impl Session {
    async fn run(mut self, mut inbound: Streaming<pb::WorkerMessage>) {
        let mut revoked = self.api.events.subscribe_revocations();
        let result: Result<(), String> = async {
            loop {
                self.publish();
                // Lease as long as the worker has credits and work is ready.
                // No new leases while ingest is behind: results would only pile up.
                let retry_at = self.found_nothing_at.map(|t| t + LEASE_RETRY_GAP);
                while self.grantable() > 0
                    && !self.leaving
                    && !self.api.shutdown.is_cancelled()
                    && !self.api.ingestor.behind()
                    && retry_at.is_none_or(|t| t <= tokio::time::Instant::now())
                {
                    let leased = self.lease().await;
                    // Results keep flowing while a worker's credits are granted in many rounds:
                    // what it has sent meanwhile is read and handed to ingest before the next.
                    if !self.take_ready(&mut inbound).await? {
                        return Ok(());
                    }
                    match leased {
                        Ok(true) => self.found_nothing_at = None,
                        Ok(false) => {
                            self.found_nothing_at = Some(tokio::time::Instant::now());
                            break;
                        }
                        Err(e) => {
                            warn!(error = %e, "leasing failed");
                            break;
                        }
                    }
                }
                let want_work = self.grantable() > 0 && !self.leaving;
                let silent_at = self.last_heard + self.silence_limit();
                tokio::select! {
                    msg = inbound.message() => if !self.received(msg).await? {
                        return Ok(());
                    },
                    // New work (a submission, expired leases) is looked at at once; committed
                    // results within the gap only at the gap's end.
                    () = self.api.events.work_notified(), if want_work => self.found_nothing_at = None,
                    () = async {
                        self.api.events.results_committed_notified().await;
                        if let Some(t) = self.found_nothing_at {
                            tokio::time::sleep_until(t + LEASE_RETRY_GAP).await;
                        }
                    }, if want_work => {}
                    () = tokio::time::sleep(IDLE_POLL), if want_work => {}
                    r = revoked.recv() => {
                        if let Ok(lease_id) = r {
                            self.forget(lease_id);
                            // Every session forwards every revocation; a worker ignores leases it does not hold.
                            let revoke = pb::Revoke { lease_id, reason: "job cancelled".into() };
                            if self.tx.send(Ok(out(Out::Revoke(revoke)))).await.is_err() {
                                return Ok(());
                            }
                        }
                    }
                    Some((batch, committed)) = self.commits.next(), if !self.commits.is_empty() => {
                        self.committed(batch, committed).await?;
                    }
                    () = tokio::time::sleep_until(silent_at) => {
                        return Err("the worker went silent".into());
                    }
                    () = self.api.shutdown.cancelled() => {
                        // The worker keeps its leases and takes them to another coordinator.
                        let _ = self.tx.send(Err(Status::unavailable("coordinator shutting down; reconnect"))).await;
                        return Ok(());
                    }
                    () = self.tx.closed() => return Ok(()),
                }
            }
        }
        .await;
        if let Err(e) = &result {
            warn!(error = %e, "worker session ended with an error");
        }
        // Whatever the worker still held goes back to the frontier at the next reap — unless the
        // worker is already back on a newer session, which now holds (and renews) those leases.
        let latest = {
            let mut latest = self.api.latest.lock().unwrap_or_else(|e| e.into_inner());
            let mine = latest.get(&self.holder) == Some(&self.session);
            if mine {
                latest.remove(&self.holder);
            }
            mine
        };
        let held: Vec<i64> = self.held.keys().copied().collect();
        if latest {
            self.api.hands.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.holder);
        }
        // A coordinator that shuts down hands its workers over: they renew their leases elsewhere.
        if latest && !self.api.shutdown.is_cancelled() && !held.is_empty() {
            // A worker that said goodbye has finished or abandoned its leases. Any other may still
            // be working on them (a broken connection, a partition), but starts no check later than
            // its confirmation window after its last heartbeat: from then on nobody works on them.
            let ttl = self.api.config.lease_ttl;
            let at = if self.leaving {
                urlfleet_shared::time::now_ms()
            } else {
                let since = tokio::time::Instant::now().saturating_duration_since(self.last_heard);
                let window = policy::confirmation_window(ttl) + policy::heartbeat_interval(ttl);
                urlfleet_shared::time::now_ms() + urlfleet_shared::time::ms(window.saturating_sub(since))
            };
            if let Err(e) = self.api.store.expire_worker_leases(&self.holder, &held, at).await {
                warn!(error = %e, "could not expire the leases of a departed worker; they expire with their TTL");
            }
        }
        self.api.board.worker_gone(self.session);
        self.api.events.work_available();
        info!(worker.id = %self.holder, session = self.session, "worker disconnected");
    }

    /// Shows this session on the dashboard's board.
    fn publish(&self) {
        let since = tokio::time::Instant::now().saturating_duration_since(self.last_heard);
        self.api.board.worker(crate::board::WorkerView {
            session: self.session,
            worker_id: self.worker_id.clone(),
            capacity: self.capacity,
            connected_at_ms: self.connected_at_ms,
            credits: self.credits,
            in_hand: self.in_hand(),
            leases: self.held.len(),
            in_flight: self.in_flight,
            last_heard_ms: urlfleet_shared::time::now_ms() - urlfleet_shared::time::ms(since),
        });
    }

    /// Handles the worker's messages that have already arrived, and lets the result batches among
    /// them (and earlier ones) reach the ingest pipeline, without waiting for anything. False when
    /// the worker has closed its stream.
    async fn take_ready(&mut self, inbound: &mut Streaming<pb::WorkerMessage>) -> Result<bool, String> {
        // `message` is cancel safe: a message not ready now is read by the next call.
        while let Some(msg) = inbound.message().now_or_never() {
            if !self.received(msg).await? {
                return Ok(false);
            }
        }
        while let Some(Some((batch, committed))) = self.commits.next().now_or_never() {
            self.committed(batch, committed).await?;
        }
        Ok(true)
    }

    /// One read of the worker's stream, handled; false when the worker has closed it.
    async fn received(&mut self, msg: Result<Option<pb::WorkerMessage>, Status>) -> Result<bool, String> {
        match msg {
            Ok(Some(m)) => {
                self.last_heard = tokio::time::Instant::now();
                self.handle(m).await?;
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(status) => Err(format!("stream error: {}", status.message())),
        }
    }

    async fn handle(&mut self, msg: pb::WorkerMessage) -> Result<(), String> {
        match msg.msg {
            Some(In::Credits(c)) => {
                let max = u64::from(self.api.config.max_worker_credits);
                self.credits = (self.credits + u64::from(c.urls)).min(max);
                if self.credits + self.in_hand() > max && !self.warned_credits {
                    warn!(credits = self.credits, max, "worker grants more credits than --max-worker-credits");
                    self.warned_credits = true;
                }
            }
            Some(In::Results(batch)) => self.ingest(batch),
            Some(In::Heartbeat(hb)) => self.heartbeat(hb).await?,
            Some(In::Goodbye(g)) => {
                info!(reason = %g.reason, "worker leaving");
                self.leaving = true;
            }
            Some(In::Hello(_)) => return Err("hello sent twice".into()),
            None => {}
        }
        Ok(())
    }

    /// The worker's hand (on any of its sessions), to read or change.
    fn hand<T>(&self, f: impl FnOnce(&mut Hand) -> T) -> T {
        let mut hands = self.api.hands.lock().unwrap_or_else(|e| e.into_inner());
        f(hands.entry(self.holder.clone()).or_default())
    }

    /// URLs leased to this worker (on any of its sessions) and not reported yet.
    fn in_hand(&self) -> u64 {
        self.hand(|h| h.urls)
    }

    /// How long a worker may stay silent before its session is ended.
    fn silence_limit(&self) -> Duration {
        let ttl = self.api.config.lease_ttl;
        policy::confirmation_window(ttl) + policy::heartbeat_interval(ttl)
    }

    /// URLs that may be leased now: the credits, within what the bound leaves beside the URLs in hand
    /// (however often credits come, and whatever else the worker sends). A worker that has been
    /// silent for its confirmation window is given nothing: it may be frozen.
    fn grantable(&self) -> u64 {
        if self.last_heard.elapsed() >= policy::confirmation_window(self.api.config.lease_ttl) {
            return 0;
        }
        let room = u64::from(self.api.config.max_worker_credits).saturating_sub(self.in_hand());
        self.credits.min(room)
    }

    /// The most URLs of hosts whose limits are lifted this worker may hold: `--lifted-span` of work at
    /// the pace it has been reporting, and at least [`LIFTED_PER_CHECK`] per check it runs at once.
    /// What a worker cannot start soon stays leasable, so a fast job spreads over every worker
    /// instead of going to the first that asks, and no worker is left holding the tail of it.
    fn lifted_budget(&self) -> u64 {
        let span = self.api.config.lifted_span;
        if span.is_zero() {
            return u64::MAX;
        }
        // A worker that does not say how many checks it runs is taken to run the default.
        let checks = if self.capacity == 0 { policy::DEFAULT_WORKER_CONCURRENCY } else { self.capacity };
        let floor = u64::from(checks).saturating_mul(LIFTED_PER_CHECK);
        floor.max((self.pace.per_second * span.as_secs_f64()) as u64)
    }

    /// Room for more URLs of hosts whose limits are lifted (see [`Session::lifted_budget`]).
    fn lifted_room(&self) -> u64 {
        self.lifted_budget().saturating_sub(self.hand(|h| h.lifted_urls))
    }

    /// A lease this worker no longer holds (revoked, or ended on the coordinator's side).
    fn forget(&mut self, lease_id: i64) {
        self.held.remove(&lease_id);
        self.lease_hosts.remove(&lease_id);
        self.hand(|h| h.retain(|id| id != lease_id));
    }

    /// Renews the listed leases this worker holds, within their lifetime, and remembers them as this
    /// session's. A heartbeat over the bound ends the session: no honest worker holds more leases
    /// than credits.
    async fn heartbeat(&mut self, hb: pb::Heartbeat) -> Result<(), String> {
        self.in_flight = hb.checks_in_flight;
        let config = &self.api.config;
        let max = config.max_worker_credits as usize;
        if hb.lease_ids.len() > max {
            let _ = self
                .tx
                .send(Err(Status::invalid_argument(format!(
                    "a heartbeat lists {} leases; at most {max} (--max-worker-credits)",
                    hb.lease_ids.len()
                ))))
                .await;
            return Err("heartbeat over its bound".into());
        }
        match self.api.store.renew_leases(&self.holder, &hb.lease_ids, config.lease_ttl, config.max_lease_life).await {
            Ok(renewed) => {
                let now_ms = urlfleet_shared::time::now_ms();
                let leases = renewed
                    .iter()
                    .map(|(lease_id, until)| pb::RenewedLease {
                        lease_id: *lease_id,
                        remaining_ms: u64::try_from(until - now_ms).unwrap_or(0),
                    })
                    .collect();
                let answer = pb::Renewed { sequence: hb.sequence, leases };
                if self.tx.send(Ok(out(Out::Renewed(answer)))).await.is_err() {
                    return Ok(());
                }
                // Leases granted since the worker sent this heartbeat may be missing from it.
                let now = tokio::time::Instant::now();
                let renewed: HashSet<i64> = renewed.into_iter().map(|(id, _)| id).collect();
                if let Some(recent) = now.checked_sub(config.lease_ttl) {
                    self.held.retain(|id, since| *since > recent || renewed.contains(id));
                }
                for id in &renewed {
                    self.held.insert(*id, now);
                }
                let held = &self.held;
                self.lease_hosts.retain(|id, _| held.contains_key(id));
                self.hand(|h| h.retain(|id| renewed.contains(&id) || self.held.contains_key(&id)));
            }
            Err(e) => warn!(error = %e, "renewing leases failed"),
        }
        Ok(())
    }

    /// Leases what the worker's credits allow, up to [`Session::leases_per_call`] hosts in one transaction, and
    /// sends the leases. False when nothing was ready (or the worker is gone).
    async fn lease(&mut self) -> Result<bool, crate::store::StoreError> {
        let config = &self.api.config;
        let req = LeaseRequest {
            worker_id: self.holder.clone(),
            max_urls: config.lease_size,
            max_urls_lifted: config.lease_size_lifted,
            lifted_room: self.lifted_room(),
            ttl: config.lease_ttl,
            politeness: Some(config.site_politeness()),
        };
        let grants = self.api.store.acquire_leases(&req, self.grantable(), self.leases_per_call).await?;
        let lifted: u64 = grants.iter().filter(|g| g.lifted).map(|g| g.urls.len() as u64).sum();
        self.lifted_full = lifted >= req.lifted_room;
        self.leases_per_call = if grants.len() >= self.leases_per_call {
            (self.leases_per_call * 2).min(MAX_LEASES_PER_CALL)
        } else {
            FIRST_LEASES_PER_CALL
        };
        if grants.is_empty() {
            return Ok(false);
        }
        for grant in grants {
            self.credits = self.credits.saturating_sub(grant.urls.len() as u64);
            self.held.insert(grant.id, tokio::time::Instant::now());
            self.hand(|h| h.grant(grant.id, grant.urls.iter().map(|(id, _)| *id).collect(), grant.lifted));
            if !self.send_lease(grant).await {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Sends one granted lease to the worker; false when the worker is gone.
    async fn send_lease(&mut self, grant: LeaseGrant) -> bool {
        self.api.metrics.leases_granted.inc();
        debug!(lease.id = grant.id, server.address = %grant.host, urls = grant.urls.len(), "lease granted");
        for job in &grant.jobs {
            self.api.events.job_changed(*job);
        }
        // The lease joins the job's trace: its span is a child of the submission, and its context
        // travels inside the lease to the worker.
        let span = tracing::info_span!(
            "lease",
            otel.kind = "producer",
            lease.id = grant.id,
            server.address = %grant.host,
            urls = grant.urls.len(),
            job.id = grant.jobs.first().copied().unwrap_or_default(),
        );
        if let Some(tp) = &grant.trace_parent {
            let carrier = [("traceparent".to_string(), tp.clone())];
            telemetry::set_parent(&span, telemetry::context_from_map(carrier.iter().map(|(k, v)| (k, v))));
        }
        let trace_context = span.in_scope(telemetry::current_context_map);
        self.lease_hosts.insert(grant.id, grant.host.clone());
        let lease = lease_to_pb(&self.api.config, grant, trace_context);
        self.tx.send(Ok(out(Out::Lease(lease)))).await.is_ok()
    }

    /// Hands a batch to the ingest pipeline; the ack goes out when it is committed, while the session
    /// goes on leasing and receiving. Results are bounded here and attributed to this session's worker;
    /// a host pause is capped by the coordinator's clock.
    fn ingest(&mut self, batch: pb::ResultBatch) {
        let mut results = Vec::with_capacity(batch.results.len());
        let mut malformed = Vec::new();
        let reporter: Arc<str> = self.holder.as_str().into();
        let pause_cap = urlfleet_shared::time::now_ms() + urlfleet_shared::time::ms(self.api.config.max_host_pause);
        // Each leased URL leaves the worker's hand once, with its first result: junk results, repeats
        // and results of URLs it was never leased free nothing.
        let left = self.hand(|h| batch.results.iter().filter(|r| h.reported(r.lease_id, r.url_id)).count());
        self.pace.reported(left as u64);
        // Room for a good part of another hand of lifted hosts' URLs: look for them now, not after
        // the gap that holds back looks after empty ones.
        if self.lifted_full && self.lifted_room() >= self.lifted_budget() / 4 {
            self.lifted_full = false;
            self.found_nothing_at = None;
        }
        for r in batch.results {
            let (lease_id, url_id) = (r.lease_id, r.url_id);
            match urlfleet_shared::convert::reported_result(r, reporter.clone()) {
                Ok(mut r) => {
                    if let Some(p) = r.outcome.host_paused_until_ms.as_mut() {
                        *p = (*p).min(pause_cap);
                    }
                    if let Some(host) = self.lease_hosts.get(&lease_id) {
                        self.api.board.answer(host, r.outcome.kind.class(), r.outcome.response_time_ms);
                    }
                    results.push(r);
                }
                // A malformed result cannot become valid by resending: refuse it, loudly.
                Err(e) => {
                    warn!(error = %e, batch = batch.batch_id, "refusing a malformed result");
                    self.api.metrics.results_refused.inc();
                    malformed.push(pb::RefusedResult { lease_id, url_id, reason: Refusal::Malformed.as_str().into() });
                }
            }
        }
        let keys = results.iter().map(|r| (r.lease_id, r.url_id)).collect();
        let ingestor = self.api.ingestor.clone();
        let batch = Batch { id: batch.batch_id, keys, malformed };
        self.commits.push(Box::pin(async move { (batch, ingestor.submit(results).await) }));
    }

    async fn committed(&mut self, batch: Batch, committed: Result<Touched, NotCommitted>) -> Result<(), String> {
        // Not acknowledged: the worker keeps the batch and resends it after reconnecting. The session
        // goes on: a batch that can never be stored must not cut off the worker's other results.
        let touched = match committed {
            Ok(t) => t,
            Err(e) => {
                warn!(error = %e, batch = batch.id, "result batch not committed; not acknowledged");
                return Ok(());
            }
        };
        // The chunk may have held other sessions' batches: this one's refusals are those of its results.
        let mut refused = batch.malformed;
        refused.extend(
            touched
                .refused
                .iter()
                .filter(|r| *r.reporter == *self.holder && batch.keys.contains(&(r.lease_id, r.url_id)))
                .map(|r| pb::RefusedResult {
                    lease_id: r.lease_id,
                    url_id: r.url_id,
                    reason: r.reason.as_str().into(),
                }),
        );
        for r in refused.iter().filter(|r| r.reason == Refusal::LeaseEnded.as_str()) {
            self.forget(r.lease_id);
        }
        let ack = pb::Ack { batch_id: batch.id, refused };
        if self.tx.send(Ok(out(Out::Ack(ack)))).await.is_err() {
            return Ok(());
        }
        for job in touched.jobs {
            self.api.events.job_changed(job);
        }
        self.api.events.results_committed();
        Ok(())
    }
}

fn lease_to_pb(
    config: &CoordinatorConfig,
    grant: LeaseGrant,
    trace_context: std::collections::BTreeMap<String, String>,
) -> pb::Lease {
    let policy = config.site_politeness().for_lease(&grant.host, &grant.job_options);
    pb::Lease {
        id: grant.id,
        epoch: grant.epoch,
        host: grant.host,
        urls: grant.urls.into_iter().map(|(url_id, url)| pb::LeasedUrl { url_id, url }).collect(),
        policy: Some(policy.into()),
        deadline_ms: grant.deadline_ms,
        trace_context,
    }
}
