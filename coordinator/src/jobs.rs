//! `JobService`: the client API. Handlers convert wire messages into domain values at the edge and
//! map every error to the gRPC code that says what went wrong.
//!
//! # Layout
//! - this file: the handlers, and job and result rows as wire messages.
//! - `upload`: a submission's stream — lanes of URL writes, the upload's heartbeat, the seal, and a
//!   retry waiting for (or taking the place of) its first attempt.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, info, warn};
use urlfleet_shared::job::JobState;
use urlfleet_shared::proto::v1::{self as pb, job_service_server::JobService};
use urlfleet_shared::url::redact;
use urlfleet_shared::{OutcomeClass, telemetry};

use crate::auth::Caller;
use crate::config::CoordinatorConfig;
use crate::events::Events;
use crate::store::{JobRecord, ResultCursor, ResultPage, ResultRow, Store, StoreError};

/// Results read per store call by `ListResults`.
const RESULTS_PAGE: u32 = 1_000;
/// Checks of a URL's history returned when the request names no limit, and at most.
const HISTORY_DEFAULT: u32 = 100;
const HISTORY_MAX: u32 = 10_000;
/// Longest wait between two progress checks of a watched job.
const WATCH_POLL: Duration = Duration::from_millis(500);
/// Shortest gap between two reads of a watched job: changes in between are seen at the next read.
const WATCH_GAP: Duration = Duration::from_millis(20);
mod upload;

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
    /// A job the caller may see: another owner's job is as absent as one that does not exist.
    async fn job_of(&self, caller: &Caller, id: i64) -> Result<JobRecord, Status> {
        match self.store.get_job(id).await.map_err(store_status)? {
            Some(job) if caller.may_touch(&job.owner) => Ok(job),
            _ => Err(not_found(id)),
        }
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
