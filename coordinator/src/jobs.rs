//! `JobService`: the client API. Handlers convert wire messages into domain values at the edge and
//! map every error to the gRPC code that says what went wrong.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, info, warn};
use urlfleet_shared::LeaseBudget;
use urlfleet_shared::job::{JobOptions, JobState, Priority, RecheckPolicy, delay_for_size};
use urlfleet_shared::proto::v1::{self as pb, job_service_server::JobService};
use urlfleet_shared::time::{ms, now_ms};
use urlfleet_shared::url::redact;
use urlfleet_shared::{OutcomeClass, telemetry};

use crate::auth::Caller;
use crate::config::CoordinatorConfig;
use crate::events::Events;
use crate::store::{JobRecord, NewJob, PlannedUrl, ResultCursor, ResultPage, ResultRow, Seal, Store, StoreError};
use urlfleet_shared::plan::Planner;

/// URLs persisted per store call while a submission is written.
const ADD_BATCH: usize = 10_000;
/// URLs of a lane's first store call: a job's first leases go out as soon as its first URLs are
/// read, not after a whole batch was planned and written.
const FIRST_ADD_BATCH: usize = 500;
/// Store calls in flight while a submission is written: one per lane of hosts.
const ADD_LANES: usize = 3;
/// Retries of one batch of URLs before the submission fails.
const ADD_RETRIES: usize = 3;
/// Results read per store call by `ListResults`.
const RESULTS_PAGE: u32 = 1_000;
/// Checks of a URL's history returned when the request names no limit, and at most.
const HISTORY_DEFAULT: u32 = 100;
const HISTORY_MAX: u32 = 10_000;
/// Longest wait between two progress checks of a watched job.
const WATCH_POLL: Duration = Duration::from_millis(500);
/// Shortest gap between two reads of a watched job: changes in between are seen at the next read.
const WATCH_GAP: Duration = Duration::from_millis(20);
/// How often a live upload records that it is alive, whatever its client and its writes are doing:
/// an upload that has not for [`crate::store::ABANDONED_UPLOAD`] lost its coordinator.
pub(crate) const UPLOAD_TOUCH: Duration = Duration::from_secs(2);
/// How long a retried submission waits for the first one with its idempotency key to be sealed
/// or discarded.
const RETRY_WAIT: Duration = Duration::from_secs(30);
/// How much of a waiting retry's upload is read ahead and kept (see `JobApi::settled`).
const EARLY_BYTES: usize = 8 << 20;

/// The `JobService` implementation.
#[derive(Clone)]
pub struct JobApi {
    store: Arc<dyn Store>,
    events: Arc<Events>,
    config: CoordinatorConfig,
    shutdown: CancellationToken,
}

impl JobApi {
    /// A handler over a store.
    pub fn new(
        store: Arc<dyn Store>,
        events: Arc<Events>,
        config: CoordinatorConfig,
        shutdown: CancellationToken,
    ) -> Self {
        Self { store, events, config, shutdown }
    }
}

/// Maps a store error to a gRPC status without leaking SQL details to clients.
pub(crate) fn store_status(e: StoreError) -> Status {
    warn!(error = %e, "store error");
    match e {
        StoreError::Connect { .. } | StoreError::Query(sqlx::Error::PoolTimedOut | sqlx::Error::Io(_)) => {
            Status::unavailable("database unavailable")
        }
        StoreError::NotReceiving(id) => Status::failed_precondition(format!("job {id} is not receiving URLs")),
        ref e if crate::store::is_transient(e) => Status::aborted("a concurrent change; try again"),
        other => Status::internal(format!("store: {other}")),
    }
}

fn not_found(id: i64) -> Status {
    Status::not_found(format!("job {id} not found"))
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl JobService for JobApi {
    async fn submit_job(
        &self,
        request: Request<Streaming<pb::SubmitJobRequest>>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let span = tracing::info_span!(
            "submit_job",
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.method = "SubmitJob",
            job.id = tracing::field::Empty,
            urls = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        // The client's context, from the request metadata, is the parent (set before entering).
        telemetry::set_parent(&span, telemetry::extract_metadata(request.metadata()));
        if let Some(t) = span.in_scope(telemetry::current_trace_id) {
            span.record("trace_id", t);
        }
        let caller = Caller::of(&request)?;
        self.submit(&caller, request.into_inner()).instrument(span).await
    }

    async fn get_job(&self, request: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        let caller = Caller::of(&request)?;
        let job = self.job_of(&caller, request.into_inner().id).await?;
        Ok(Response::new(job_to_pb(&job)))
    }

    async fn list_jobs(&self, request: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let limit = match req.page_size {
            0 => 50,
            n => n.min(1_000),
        };
        let before = match req.page_token.as_str() {
            "" => None,
            t => Some(t.parse::<i64>().map_err(|_| Status::invalid_argument("malformed page_token"))?),
        };
        let states = req
            .states
            .iter()
            .map(|s| JobState::try_from(*s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let jobs = self.store.list_jobs(&states, caller.scope(), before, limit).await.map_err(store_status)?;
        let next_page_token = if jobs.len() as u32 == limit {
            jobs.last().map(|j| j.id.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListJobsResponse { jobs: jobs.iter().map(job_to_pb).collect(), next_page_token }))
    }

    type WatchJobStream = BoxStream<pb::JobEvent>;

    async fn watch_job(&self, request: Request<pb::WatchJobRequest>) -> Result<Response<Self::WatchJobStream>, Status> {
        let caller = Caller::of(&request)?;
        let id = request.into_inner().id;
        let job = self.job_of(&caller, id).await?;
        let (tx, rx) = mpsc::channel(16);
        let store = self.store.clone();
        let mut changes = self.events.subscribe_jobs();
        let shutdown = self.shutdown.clone();
        tokio::spawn(
            async move {
                let mut last = job;
                let mut first = true;
                let mut read_at = tokio::time::Instant::now();
                loop {
                    let done = last.state.is_final();
                    if first || done {
                        let event = pb::JobEvent { job: Some(job_to_pb(&last)), r#final: done };
                        if tx.send(Ok(event)).await.is_err() || done {
                            return;
                        }
                        first = false;
                    }
                    // Wake on a local change or poll: another coordinator may be making the progress.
                    tokio::select! {
                        _ = tx.closed() => return,
                        () = shutdown.cancelled() => {
                            let _ = tx.send(Err(Status::unavailable("coordinator shutting down"))).await;
                            return;
                        }
                        _ = async {
                            loop {
                                match changes.recv().await {
                                    Ok(j) if j == id => return,
                                    Ok(_) => {}
                                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                                    Err(tokio::sync::broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
                                }
                            }
                        } => {}
                        () = tokio::time::sleep(WATCH_POLL) => {}
                    }
                    // A busy job changes thousands of times a second: one read per gap at most.
                    tokio::time::sleep_until(read_at + WATCH_GAP).await;
                    read_at = tokio::time::Instant::now();
                    match store.get_job(id).await {
                        Ok(Some(job)) => {
                            if job != last {
                                let done = job.state.is_final();
                                if !done {
                                    let event = pb::JobEvent { job: Some(job_to_pb(&job)), r#final: false };
                                    if tx.send(Ok(event)).await.is_err() {
                                        return;
                                    }
                                }
                                last = job;
                            }
                        }
                        Ok(None) => return,
                        Err(e) => warn!(error = %e, job.id = id, "watch: reading the job failed; retrying"),
                    }
                }
            }
            .instrument(tracing::info_span!("watch_job", job.id = id)),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn cancel_job(&self, request: Request<pb::CancelJobRequest>) -> Result<Response<pb::Job>, Status> {
        let caller = Caller::of(&request)?;
        let id = request.into_inner().id;
        self.job_of(&caller, id).await?;
        let (job, revoked) = self.store.cancel_job(id).await.map_err(store_status)?.ok_or_else(|| not_found(id))?;
        for lease in revoked {
            self.events.lease_revoked(lease);
        }
        self.events.job_changed(id);
        info!(job.id = id, "job cancelled");
        Ok(Response::new(job_to_pb(&job)))
    }

    type ListResultsStream = BoxStream<pb::UrlResult>;

    async fn get_url_history(
        &self,
        request: Request<pb::GetUrlHistoryRequest>,
    ) -> Result<Response<pb::UrlHistory>, Status> {
        let caller = Caller::of(&request)?;
        if caller.scope().is_some() {
            return Err(Status::permission_denied("a URL's history spans owners: it needs an admin token"));
        }
        let req = request.into_inner();
        let url = urlfleet_shared::url::NormalizedUrl::parse(&req.url)
            .map_err(|e| Status::invalid_argument(format!("not a checkable URL: {e}")))?;
        let limit = match req.limit {
            0 => HISTORY_DEFAULT,
            n => n.min(HISTORY_MAX),
        };
        let checks = self
            .store
            .url_history(url.as_str(), limit)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("{} was never submitted", redact(url.as_str()))))?;
        Ok(Response::new(pb::UrlHistory {
            url: redact(url.as_str()).into_owned(),
            checks: checks.into_iter().map(|r| pb::UrlResult { cursor: String::new(), ..result_to_pb(r) }).collect(),
        }))
    }

    async fn list_results(
        &self,
        request: Request<pb::ListResultsRequest>,
    ) -> Result<Response<Self::ListResultsStream>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        self.job_of(&caller, req.job_id).await?;
        let mut classes = Vec::new();
        for c in &req.classes {
            let c =
                pb::OutcomeClass::try_from(*c).map_err(|_| Status::invalid_argument(format!("unknown class {c}")))?;
            classes.push(OutcomeClass::try_from(c).map_err(|e| Status::invalid_argument(e.to_string()))?);
        }
        let after = match req.after.as_str() {
            "" => None,
            c => Some(c.parse::<ResultCursor>().map_err(Status::invalid_argument)?),
        };
        let (tx, rx) = mpsc::channel(256);
        let store = self.store.clone();
        tokio::spawn(async move {
            let mut after = after;
            let mut left = if req.limit == 0 { u64::MAX } else { req.limit };
            while left > 0 {
                let page = RESULTS_PAGE.min(u32::try_from(left).unwrap_or(u32::MAX));
                let query = ResultPage { job_id: req.job_id, classes: classes.clone(), after, limit: page };
                let rows = match store.list_results(&query).await {
                    Ok(rows) => rows,
                    Err(e) => {
                        let _ = tx.send(Err(store_status(e))).await;
                        return;
                    }
                };
                let n = rows.len();
                for row in rows {
                    after = Some(row.cursor);
                    if tx.send(Ok(result_to_pb(row))).await.is_err() {
                        return;
                    }
                }
                left = left.saturating_sub(n as u64);
                if n < page as usize {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

impl JobApi {
    /// The job of a retried submission once its first submission is sealed (`Some`) or discarded
    /// (`None`: the retry takes its place). Meanwhile the retry's own messages are read and kept in
    /// `early` (up to [`EARLY_BYTES`]; `None` marks the stream's end) for the case it takes the
    /// place: left unread, they would hold the connection's HTTP/2 window, and a client that sends
    /// both attempts over one connection would stall its first attempt until this wait gave up.
    async fn settled(
        &self,
        job: JobRecord,
        stream: &mut Streaming<pb::SubmitJobRequest>,
        early: &mut VecDeque<Option<pb::SubmitJobRequest>>,
    ) -> Result<Option<JobRecord>, Status> {
        let until = tokio::time::Instant::now() + RETRY_WAIT;
        let mut kept: usize = early.iter().flatten().map(prost::Message::encoded_len).sum();
        let mut job = Some(job);
        let mut naps = 0u32;
        while let Some(j) = job {
            if j.state != JobState::Receiving {
                return Ok(Some(j));
            }
            // An attempt whose coordinator died shows no life: it is discarded now, not when a
            // reaper comes round, and this one takes its place.
            if naps.is_multiple_of(10) {
                let before =
                    urlfleet_shared::time::now_ms() - urlfleet_shared::time::ms(crate::store::ABANDONED_UPLOAD);
                if let Err(e) = self.store.discard_abandoned(before).await {
                    warn!(error = %e, "discarding abandoned submissions failed");
                }
            }
            naps += 1;
            if tokio::time::Instant::now() >= until {
                return Err(Status::aborted(format!(
                    "job {} with this idempotency key is still being submitted; try again",
                    j.id
                )));
            }
            let nap = tokio::time::sleep(Duration::from_millis(100));
            tokio::pin!(nap);
            loop {
                let reading = kept < EARLY_BYTES && !matches!(early.back(), Some(None));
                tokio::select! {
                    () = &mut nap => break,
                    m = stream.message(), if reading => {
                        let m = m?;
                        kept += m.as_ref().map_or(0, prost::Message::encoded_len);
                        early.push_back(m);
                    }
                }
            }
            job = self.store.get_job(j.id).await.map_err(store_status)?;
        }
        Ok(None)
    }

    /// A job the caller may see: another owner's job is as absent as one that does not exist.
    async fn job_of(&self, caller: &Caller, id: i64) -> Result<JobRecord, Status> {
        match self.store.get_job(id).await.map_err(store_status)? {
            Some(job) if caller.may_touch(&job.owner) => Ok(job),
            _ => Err(not_found(id)),
        }
    }

    /// The submission itself, inside the `submit_job` span. The job is created at the first message
    /// and its URLs are stored while the stream goes on, a few batches at a time: the next message is
    /// read only when a write slot is free, so the client sends at the pace the store accepts and the
    /// coordinator holds one message and the batches in flight, not the whole set. The seal then
    /// decides whether it duplicates an active job; a failed submission leaves nothing behind.
    async fn submit(
        &self,
        caller: &Caller,
        mut stream: Streaming<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let options = match stream.message().await? {
            Some(pb::SubmitJobRequest { item: Some(pb::submit_job_request::Item::Options(o)) }) => {
                let size = prost::Message::encoded_len(&o);
                if size > self.config.max_options_bytes {
                    return Err(Status::invalid_argument(format!(
                        "the job options take {size} bytes; at most {} (--max-options-bytes)",
                        self.config.max_options_bytes
                    )));
                }
                let options = JobOptions::try_from(&o).map_err(|e| Status::invalid_argument(e.to_string()))?;
                self.config.check_bounds(&options).map_err(Status::invalid_argument)?;
                options
            }
            Some(_) => return Err(Status::invalid_argument("the first SubmitJob message must carry options")),
            None => return Err(Status::invalid_argument("empty SubmitJob stream: no options and no URLs")),
        };
        // The job's leases hang off the submission span.
        let trace_parent = telemetry::current_context_map().remove("traceparent");
        let new = NewJob {
            // Until its size is known, a job without an explicit priority waits behind everything.
            priority: options.priority.unwrap_or(Priority::Low),
            // Checks start while the URLs stream in, unless the job waits: for a given time, or for
            // a delay that depends on its size, known only at the seal.
            not_before_ms: if options.waits_for_size() { i64::MAX } else { options.not_before_ms.unwrap_or(0) },
            options: options.clone(),
            trace_parent,
            owner: caller.name.to_string(),
        };
        let mut early = VecDeque::new();
        let job = loop {
            let (job, existing) = self.store.create_job(new.clone()).await.map_err(store_status)?;
            if !existing {
                break job;
            }
            // The first submission with this key may still be arriving, or be about to be discarded
            // (its client gave up): the retry gets the job it seals, or takes its place.
            match self.settled(job, &mut stream, &mut early).await? {
                Some(job) => {
                    tracing::Span::current().record("job.id", job.id);
                    info!(job.id = job.id, "a retried submission returns the job of its idempotency key");
                    return Ok(Response::new(pb::SubmitJobResponse { job: Some(job_to_pb(&job)), deduplicated: true }));
                }
                None => continue,
            }
        };
        tracing::Span::current().record("job.id", job.id);
        // Its own task: a client that goes away drops this call, and the submission must still be
        // cleaned up, which the task does when the stream breaks.
        let planning = tracing::info_span!("plan", job.id = job.id, urls = tracing::field::Empty);
        let api = self.clone();
        let job_id = job.id;
        let owner = caller.name.clone();
        // A client that gives up (a deadline, a cancelled call) drops this call: the guard tells the
        // task, which discards the job instead of sealing what arrived so far.
        let gone = CancellationToken::new();
        let _gone_on_drop = gone.clone().drop_guard();
        let receiving = tokio::spawn(
            async move {
                match api.receive(job_id, &owner, &options, early, stream, &gone).instrument(planning).await {
                    Ok(done) => Ok(done),
                    Err(status) => {
                        if let Err(e) = api.store.discard_job(job_id).await {
                            warn!(error = %e, job.id = job_id, "discarding a failed submission failed; the reaper will");
                        }
                        Err(status)
                    }
                }
            }
            .in_current_span(),
        );
        let done = receiving.await.map_err(|e| Status::internal(format!("submission task: {e}")))??;
        let total = done.get_ref().job.as_ref().and_then(|j| j.counts).map(|c| c.total).unwrap_or(0);
        tracing::Span::current().record("urls", total);
        Ok(done)
    }

    async fn receive(
        &self,
        job_id: i64,
        owner: &str,
        options: &JobOptions,
        mut early: VecDeque<Option<pb::SubmitJobRequest>>,
        mut stream: Streaming<pb::SubmitJobRequest>,
        gone: &CancellationToken,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let recheck = options.recheck();
        let client_gone = || Status::cancelled("the client gave up the submission; the job is discarded");
        // The upload's heartbeat: a task of its own, so that a slow client, a slow write or a long
        // wait for a writer never makes a live upload look abandoned. It ends with this call.
        let alive = CancellationToken::new();
        let _alive = alive.clone().drop_guard();
        tokio::spawn({
            let store = self.store.clone();
            async move {
                let mut touch = tokio::time::interval_at(tokio::time::Instant::now() + UPLOAD_TOUCH, UPLOAD_TOUCH);
                loop {
                    tokio::select! {
                        () = alive.cancelled() => return,
                        _ = touch.tick() => {
                            if let Err(e) = store.touch_upload(job_id).await {
                                warn!(error = %e, job.id = job_id, "recording upload activity failed");
                            }
                        }
                    }
                }
            }
        });
        let mut planner =
            Planner::new(options, ADD_LANES).with_invalid_entry_bytes(self.config.max_invalid_entry_bytes);
        // Each host's lease budget from this job's politeness for it: a polite host one lease at a
        // time of about a lease span of requests, a host whose limits are lifted several at once.
        let mut budgets: HashMap<String, LeaseBudget> = HashMap::new();
        let mut writes = tokio::task::JoinSet::new();
        let mut busy = [false; ADD_LANES];
        let mut started = [false; ADD_LANES];
        let mut ended = false;
        loop {
            // Each idle lane with a batch ready (at the end: with anything) starts writing it.
            for (lane, busy) in busy.iter_mut().enumerate() {
                let ready = planner.ready(lane);
                let size = if started[lane] { ADD_BATCH } else { FIRST_ADD_BATCH };
                if *busy || ready == 0 || (ready < size && !ended) {
                    continue;
                }
                started[lane] = true;
                let mut batch = planner.take(lane, size);
                for u in &mut batch {
                    // Looked up before inserting: a host's name is copied once, not once per URL.
                    u.budget = match budgets.get(&u.host) {
                        Some(b) => *b,
                        None => {
                            let b = self.config.lease_budget(&self.config.host_policy(&u.host, options));
                            budgets.insert(u.host.clone(), b);
                            b
                        }
                    };
                }
                let write = write_batch(self.store.clone(), job_id, batch, recheck);
                let events = self.events.clone();
                writes.spawn(
                    async move {
                        let written = write.await;
                        // A receiving job's committed URLs are leasable: workers need not wait for
                        // the whole upload.
                        if written.is_ok() {
                            events.work_available();
                        }
                        (lane, written)
                    }
                    .in_current_span(),
                );
                *busy = true;
            }
            if ended && writes.is_empty() {
                break;
            }
            // Read on only while the URLs waiting for a writer stay under a batch per lane.
            if ended || planner.ready_total() >= ADD_LANES * ADD_BATCH {
                busy[settle_write(writes.join_next().await)?] = false;
                continue;
            }
            // What was read while a retry waited for its first attempt comes first.
            let message = if let Some(m) = early.pop_front() {
                m
            } else {
                tokio::select! {
                    m = stream.message() => m?,
                    () = gone.cancelled() => return Err(client_gone()),
                }
            };
            match message {
                Some(pb::SubmitJobRequest { item: Some(pb::submit_job_request::Item::Urls(chunk)) }) => {
                    chunk.urls.iter().for_each(|u| planner.push(u));
                    chunk.invalid.iter().for_each(|e| planner.push_invalid(&e.input, &e.reason));
                    if planner.received() > self.config.max_job_urls {
                        return Err(Status::resource_exhausted(format!(
                            "the job has more than {} entries (--max-job-urls)",
                            self.config.max_job_urls
                        )));
                    }
                    if planner.invalid_entries() > self.config.max_invalid_entries {
                        return Err(Status::resource_exhausted(format!(
                            "the job has more than {} invalid entries (--max-invalid-entries)",
                            self.config.max_invalid_entries
                        )));
                    }
                }
                Some(pb::SubmitJobRequest { item: Some(pb::submit_job_request::Item::Options(_)) }) => {
                    return Err(Status::invalid_argument("options may only be sent once, first"));
                }
                Some(_) => {}
                // An end the client did not send (the call was dropped first) seals nothing.
                None if gone.is_cancelled() => return Err(client_gone()),
                None => ended = true,
            }
        }
        let plan = planner.finish(options);
        let span = tracing::Span::current();
        span.record("urls", plan.total);
        if plan.total == 0 {
            return Err(Status::invalid_argument("the job has no URLs"));
        }
        if !plan.invalid.is_empty() {
            self.store.add_invalid(job_id, 1, &plan.invalid).await.map_err(store_status)?;
        }
        let seal = Seal {
            // Only the owner's own jobs absorb a duplicate submission.
            unique_key: crate::store::owned_key(owner, &plan.unique_key),
            unique_window: self.config.unique_window,
            received: plan.received,
            duplicates: plan.duplicates,
            total: plan.total,
            priority: plan.priority,
            not_before_ms: if options.waits_for_size() {
                now_ms() + ms(delay_for_size(plan.total))
            } else {
                options.not_before_ms.unwrap_or(0)
            },
        };
        if gone.is_cancelled() {
            return Err(client_gone());
        }
        let (job, deduplicated) = self.store.seal_job(job_id, seal).await.map_err(store_status)?;
        if deduplicated {
            info!(job.id = job.id, discarded = job_id, "duplicate submission returns the existing job");
            return Ok(Response::new(pb::SubmitJobResponse { job: Some(job_to_pb(&job)), deduplicated: true }));
        }
        self.events.work_available();
        self.events.job_changed(job.id);
        info!(
            job.id = job.id,
            urls = plan.total - plan.invalid.len() as u64,
            invalid = plan.invalid.len(),
            duplicates = plan.duplicates,
            "job accepted"
        );
        Ok(Response::new(pb::SubmitJobResponse { job: Some(job_to_pb(&job)), deduplicated: false }))
    }
}

/// Writes one batch of a submission's URLs. A batch is one transaction: when it fails (a deadlock
/// with a concurrent submission, a dropped connection) nothing of it stays, and it is tried again.
async fn write_batch(
    store: Arc<dyn Store>,
    job_id: i64,
    batch: Vec<PlannedUrl>,
    recheck: RecheckPolicy,
) -> Result<(), StoreError> {
    use backon::Retryable;
    let backoff = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_times(ADD_RETRIES)
        .with_jitter();
    (|| store.add_urls(job_id, &batch, recheck))
        .retry(backoff)
        .when(|e| !matches!(e, StoreError::NotReceiving(_)))
        .notify(|e, wait| warn!(error = %e, ?wait, "writing URLs failed; retrying"))
        .await
}

/// The lane whose write ended, or why the submission fails.
type LaneWrite = Option<Result<(usize, Result<(), StoreError>), tokio::task::JoinError>>;

fn settle_write(written: LaneWrite) -> Result<usize, Status> {
    match written {
        Some(Ok((lane, Ok(())))) => Ok(lane),
        Some(Ok((_, Err(e)))) => Err(store_status(e)),
        Some(Err(e)) => Err(Status::internal(format!("writing URLs: {e}"))),
        None => Err(Status::internal("no URL write in flight")),
    }
}

/// A stored job as a wire message.
pub fn job_to_pb(j: &JobRecord) -> pb::Job {
    pb::Job {
        id: j.id,
        name: j.name.clone(),
        state: pb::JobState::from(j.state) as i32,
        priority: pb::Priority::from(j.priority) as i32,
        counts: Some((&j.counts).into()),
        created_at_ms: j.created_at_ms,
        sealed_at_ms: j.sealed_at_ms.unwrap_or(0),
        finished_at_ms: j.finished_at_ms.unwrap_or(0),
        not_before_ms: j.not_before_ms,
        labels: j.options.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        options: Some((&j.options).into()),
        owner: j.owner.clone(),
    }
}

/// A stored result as a wire message. URL credentials stay in the store, for the checks that need
/// them; answers carry them redacted.
pub(crate) fn result_to_pb(r: ResultRow) -> pb::UrlResult {
    let state = r
        .state
        .map_or(if r.cursor_is_invalid() { pb::UrlState::Invalid } else { pb::UrlState::Unspecified }, url_state_to_pb);
    let redacted = |s: String| match redact(&s) {
        std::borrow::Cow::Borrowed(_) => s,
        std::borrow::Cow::Owned(r) => r,
    };
    pb::UrlResult {
        cursor: r.cursor.to_string(),
        url: redacted(r.url),
        outcome_class: r.kind.map_or(pb::OutcomeClass::Unspecified, |k| k.class().into()) as i32,
        kind: r.kind.map_or(pb::OutcomeKind::Unspecified, Into::into) as i32,
        status: r.status.map(u32::from).unwrap_or(0),
        final_url: redacted(r.final_url.unwrap_or_default()),
        redirects: r
            .redirects
            .iter()
            .map(|h| pb::RedirectHop { url: redact(&h.url).into_owned(), status: u32::from(h.status) })
            .collect(),
        attempts: r.attempts,
        response_time_ms: r.response_time_ms,
        content_type: r.content_type.unwrap_or_default(),
        content_length: r.content_length,
        checked_at_ms: r.checked_at_ms.unwrap_or(0),
        error: redacted(r.error.unwrap_or_default()),
        fresh: r.fresh,
        state: state as i32,
    }
}

/// A URL's state in a job, as the API names it.
fn url_state_to_pb(s: urlfleet_shared::job::JobUrlState) -> pb::UrlState {
    use urlfleet_shared::job::JobUrlState as S;
    match s {
        S::Pending => pb::UrlState::Pending,
        S::Leased => pb::UrlState::Leased,
        S::Done => pb::UrlState::Checked,
        S::Fresh => pb::UrlState::Fresh,
        S::Failed => pb::UrlState::Failed,
        S::Cancelled => pb::UrlState::Cancelled,
    }
}
