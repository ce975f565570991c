//! Submissions: a job created at its first message, its URLs planned and written in lanes while
//! the stream goes on, the upload's heartbeat, the seal, and a retry with the same idempotency key
//! waiting for (or taking the place of) its first attempt.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::{Response, Status, Streaming};
use tracing::{Instrument, info, warn};
use urlfleet_shared::LeaseBudget;
use urlfleet_shared::job::{JobOptions, JobState, Priority, RecheckPolicy, delay_for_size};
use urlfleet_shared::plan::Planner;
use urlfleet_shared::proto::v1 as pb;
use urlfleet_shared::telemetry;
use urlfleet_shared::time::{ms, now_ms};

use super::{JobApi, job_to_pb, store_status};
use crate::auth::Caller;
use crate::store::{JobRecord, NewJob, PlannedUrl, Seal, Store, StoreError};

/// URLs persisted per store call while a submission is written.
const ADD_BATCH: usize = 10_000;
/// URLs of a lane's first store call: a job's first leases go out as soon as its first URLs are
/// read, not after a whole batch was planned and written.
const FIRST_ADD_BATCH: usize = 500;
/// Store calls in flight while a submission is written: one per lane of hosts.
const ADD_LANES: usize = 3;
/// Retries of one batch of URLs before the submission fails.
const ADD_RETRIES: usize = 3;
/// How often a live upload records that it is alive, whatever its client and its writes are doing:
/// an upload that has not for [`crate::store::ABANDONED_UPLOAD`] lost its coordinator.
pub(crate) const UPLOAD_TOUCH: Duration = Duration::from_secs(2);
/// How long a retried submission waits for the first one with its idempotency key to be sealed
/// or discarded.
const RETRY_WAIT: Duration = Duration::from_secs(30);
/// How much of a waiting retry's upload is read ahead and kept (see `JobApi::settled`).
const EARLY_BYTES: usize = 8 << 20;

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

    /// The submission itself, inside the `submit_job` span. The job is created at the first message
    /// and its URLs are stored while the stream goes on, a few batches at a time: the next message is
    /// read only when a write slot is free, so the client sends at the pace the store accepts and the
    /// coordinator holds one message and the batches in flight, not the whole set. The seal then
    /// decides whether it duplicates an active job; a failed submission leaves nothing behind.
    pub(super) async fn submit(
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
