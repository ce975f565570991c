//! The web dashboard: a page (HTML, CSS and JavaScript embedded in the binary) and the small JSON
//! API it reads, on an HTTP listener of its own (`--http-listen`). The same tokens and roles as the
//! gRPC API: a token comes as `Authorization: Bearer …` or, for the browser, in an HTTP-only cookie
//! set by `POST /login`; a `submitter` sees and cancels only its own jobs, an `admin` everything
//! (hosts, workers, URL histories included); a `worker` token is refused. Live views are server-sent
//! events. Every query is indexed or bounded: a job's failures through a partial index of failures,
//! its chart from sampled counters, the hosts from the host table.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use urlfleet_shared::job::JobState;
use urlfleet_shared::url::redact;
use urlfleet_shared::{OutcomeClass, OutcomeKind};

use crate::auth::{Caller, Role, Tokens};
use crate::board::Board;
use crate::events::Events;
use crate::store::{FailureQuery, FailureSort, JobRecord, Store};

const INDEX: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");
/// The cookie the login form sets.
const COOKIE: &str = "urlfleet_token";
/// Rows of a failures page, at most.
const MAX_PAGE: u32 = 500;
/// Between two updates of a live view.
const LIVE_EVERY: Duration = Duration::from_millis(500);
/// Between two samples of the running jobs' counters (the job page's charts).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// What the handlers share.
#[derive(Clone)]
pub struct Web {
    store: Arc<dyn Store>,
    events: Arc<Events>,
    board: Arc<Board>,
    tokens: Option<Arc<Tokens>>,
    shutdown: CancellationToken,
}

impl Web {
    /// The dashboard over a coordinator's store, events and board.
    pub fn new(
        store: Arc<dyn Store>,
        events: Arc<Events>,
        board: Arc<Board>,
        tokens: Option<Arc<Tokens>>,
        shutdown: CancellationToken,
    ) -> Self {
        Self { store, events, board, tokens, shutdown }
    }

    /// The routes.
    pub fn router(self) -> Router {
        Router::new()
            .route("/", get(|| async { page(INDEX, "text/html; charset=utf-8") }))
            .route("/app.js", get(|| async { page(APP_JS, "text/javascript; charset=utf-8") }))
            .route("/app.css", get(|| async { page(APP_CSS, "text/css; charset=utf-8") }))
            .route("/login", post(login))
            .route("/logout", post(logout))
            .route("/api/me", get(me))
            .route("/api/jobs", get(jobs))
            .route("/api/jobs/events", get(jobs_live))
            .route("/api/jobs/{id}", get(job))
            .route("/api/jobs/{id}/events", get(job_live))
            .route("/api/jobs/{id}/failures", get(failures))
            .route("/api/jobs/{id}/failures.csv", get(failures_csv))
            .route("/api/jobs/{id}/samples", get(samples))
            .route("/api/jobs/{id}/cancel", post(cancel))
            .route("/api/hosts", get(hosts))
            .route("/api/workers", get(workers))
            .route("/api/url", get(url_page))
            .with_state(self)
    }

    /// Samples the counters of running jobs every [`SAMPLE_EVERY`] until shut down.
    pub async fn sample(self) {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let every = urlfleet_shared::time::ms(SAMPLE_EVERY);
            let at = urlfleet_shared::time::now_ms() / every * every;
            if let Err(e) = self.store.sample_jobs(at).await {
                warn!(error = %e, "sampling job progress failed");
            }
        }
    }
}

/// Serves the dashboard on `listener` until `shutdown`.
pub async fn serve(listener: tokio::net::TcpListener, web: Web) -> std::io::Result<()> {
    info!(address = %listener.local_addr()?, "dashboard serving");
    let stop = web.shutdown.clone();
    tokio::spawn(web.clone().sample());
    axum::serve(listener, web.router()).with_graceful_shutdown(async move { stop.cancelled().await }).await
}

/// An error answer: a status and a one-line message as JSON.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({ "error": self.1 }))).into_response()
    }
}

type Answer<T> = Result<T, Refusal>;

fn store_error(e: crate::store::StoreError) -> Refusal {
    warn!(error = %e, "dashboard: store error");
    Refusal(StatusCode::SERVICE_UNAVAILABLE, "the database did not answer".into())
}

fn page(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    r
}

impl Web {
    /// The caller of a request: its bearer token or its cookie.
    fn caller(&self, headers: &HeaderMap) -> Answer<Caller> {
        let Some(tokens) = &self.tokens else { return Ok(Caller::anonymous()) };
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")));
        let cookie = headers.get_all(header::COOKIE).iter().filter_map(|h| h.to_str().ok()).find_map(|h| {
            h.split(';').filter_map(|c| c.trim().split_once('=')).find(|(k, _)| *k == COOKIE).map(|(_, v)| v)
        });
        let token =
            bearer.or(cookie).ok_or_else(|| Refusal(StatusCode::UNAUTHORIZED, "a token is needed: sign in".into()))?;
        let caller = tokens
            .authenticate(token.trim())
            .ok_or_else(|| Refusal(StatusCode::UNAUTHORIZED, "unknown token".into()))?;
        if caller.role == Role::Worker {
            return Err(Refusal(StatusCode::FORBIDDEN, "a worker token may not use the dashboard".into()));
        }
        Ok(caller)
    }

    fn admin(&self, headers: &HeaderMap) -> Answer<Caller> {
        let caller = self.caller(headers)?;
        if caller.scope().is_some() {
            return Err(Refusal(StatusCode::FORBIDDEN, "this view spans every owner: it needs an admin token".into()));
        }
        Ok(caller)
    }

    /// A job the caller may see; another owner's is as absent as a missing one.
    async fn job_of(&self, caller: &Caller, id: i64) -> Answer<JobRecord> {
        match self.store.get_job(id).await.map_err(store_error)? {
            Some(j) if caller.may_touch(&j.owner) => Ok(j),
            _ => Err(Refusal(StatusCode::NOT_FOUND, format!("job {id} not found"))),
        }
    }
}

#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(web): State<Web>, Form(form): Form<LoginForm>) -> Response {
    let known =
        web.tokens.as_ref().is_none_or(|t| t.authenticate(form.token.trim()).is_some_and(|c| c.role != Role::Worker));
    if !known {
        return (StatusCode::SEE_OTHER, [(header::LOCATION, "/?denied")]).into_response();
    }
    let cookie = format!("{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/", form.token.trim());
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn logout() -> Response {
    let cookie = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn me(State(web): State<Web>, headers: HeaderMap) -> Answer<axum::Json<Value>> {
    let caller = web.caller(&headers)?;
    Ok(axum::Json(json!({
        "name": &*caller.name,
        "role": caller.role.to_string(),
        "admin": caller.scope().is_none(),
        "tokens": web.tokens.is_some(),
    })))
}

/// A job as the dashboard reads it.
fn job_json(j: &JobRecord) -> Value {
    let c = &j.counts;
    json!({
        "id": j.id,
        "name": urlfleet_shared::url::printable(&j.name),
        "state": j.state.as_str(),
        "priority": j.priority.to_string(),
        "owner": j.owner,
        "created_at_ms": j.created_at_ms,
        "finished_at_ms": j.finished_at_ms,
        "counts": {
            "total": c.total, "received": c.received, "duplicates": c.duplicates,
            "resolved": c.total - c.unresolved(), "pending": c.pending(), "leased": c.leased,
            "checked": c.checked, "fresh": c.fresh, "invalid": c.invalid, "failed": c.failed,
            "cancelled": c.cancelled, "ok": c.ok, "redirected": c.redirected, "broken": c.broken,
            "error": c.error,
        },
    })
}

async fn list_jobs_json(web: &Web, caller: &Caller, q: &HashMap<String, String>) -> Answer<Value> {
    let states: Vec<JobState> = match q.get("state").filter(|s| !s.is_empty()) {
        Some(s) => vec![s.parse().map_err(|_| Refusal(StatusCode::BAD_REQUEST, format!("unknown state {s:?}")))?],
        None => Vec::new(),
    };
    let limit = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(50u32).clamp(1, 500);
    let jobs = web.store.list_jobs(&states, caller.scope(), None, limit).await.map_err(store_error)?;
    Ok(Value::Array(jobs.iter().map(job_json).collect()))
}

async fn jobs(
    State(web): State<Web>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Answer<axum::Json<Value>> {
    let caller = web.caller(&headers)?;
    Ok(axum::Json(list_jobs_json(&web, &caller, &q).await?))
}

/// A live view: `read` is sent at once and again whenever it changes (looked at every
/// [`LIVE_EVERY`] and on every job change), until it says it is final or the client goes.
fn live<F, Fut>(web: &Web, read: F) -> impl IntoResponse + use<F, Fut>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Option<(Value, bool)>> + Send,
{
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(4);
    let mut changes = web.events.subscribe_jobs();
    let stop = web.shutdown.clone();
    tokio::spawn(async move {
        let mut last: Option<Value> = None;
        loop {
            let Some((value, done)) = read().await else { return };
            if last.as_ref() != Some(&value) {
                if tx.send(Ok(Event::default().data(value.to_string()))).await.is_err() {
                    return;
                }
                last = Some(value);
            }
            if done {
                return;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tx.closed() => return,
                _ = changes.recv() => tokio::time::sleep(LIVE_EVERY / 5).await,
                () = tokio::time::sleep(LIVE_EVERY) => {}
            }
        }
    });
    Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default())
}

async fn jobs_live(
    State(web): State<Web>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Answer<impl IntoResponse> {
    let caller = web.caller(&headers)?;
    let w = web.clone();
    Ok(live(&web, move || {
        let (w, caller, q) = (w.clone(), caller.clone(), q.clone());
        async move { list_jobs_json(&w, &caller, &q).await.ok().map(|v| (v, false)) }
    }))
}

async fn job(State(web): State<Web>, headers: HeaderMap, Path(id): Path<i64>) -> Answer<axum::Json<Value>> {
    let caller = web.caller(&headers)?;
    Ok(axum::Json(job_json(&web.job_of(&caller, id).await?)))
}

async fn job_live(State(web): State<Web>, headers: HeaderMap, Path(id): Path<i64>) -> Answer<impl IntoResponse> {
    let caller = web.caller(&headers)?;
    web.job_of(&caller, id).await?;
    let w = web.clone();
    Ok(live(&web, move || {
        let w = w.clone();
        async move {
            let j = w.store.get_job(id).await.ok()??;
            Some((job_json(&j), j.state.is_final()))
        }
    }))
}

/// The filter of a failures table, from the query string.
fn failure_query(id: i64, q: &HashMap<String, String>) -> Answer<FailureQuery> {
    let bad = |what: &str, v: &str| Refusal(StatusCode::BAD_REQUEST, format!("bad {what} {v:?}"));
    let get = |k: &str| q.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let classes = match get("class") {
        Some(c) => vec![c.parse::<OutcomeClass>().map_err(|_| bad("class", c))?],
        None => Vec::new(),
    };
    let kind = get("kind").map(|k| k.parse::<OutcomeKind>().map_err(|_| bad("kind", k))).transpose()?;
    let status = get("status").map(|s| s.parse::<u16>().map_err(|_| bad("status", s))).transpose()?;
    let sort = match get("sort") {
        None | Some("submitted") => FailureSort::Submitted,
        Some("url") => FailureSort::Url,
        Some("status") => FailureSort::Status,
        Some("time") => FailureSort::Time,
        Some(s) => return Err(bad("sort", s)),
    };
    let per_page = get("per_page").and_then(|p| p.parse().ok()).unwrap_or(50u32).clamp(1, MAX_PAGE);
    let page = get("page").and_then(|p| p.parse().ok()).unwrap_or(1u32).max(1);
    Ok(FailureQuery {
        job_id: id,
        classes,
        kind,
        status,
        host: get("host").map(|h| h.to_ascii_lowercase()),
        search: get("q").map(str::to_string),
        sort,
        descending: get("order") == Some("desc"),
        offset: (page - 1).saturating_mul(per_page),
        limit: per_page,
    })
}

async fn failures(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer<axum::Json<Value>> {
    let caller = web.caller(&headers)?;
    web.job_of(&caller, id).await?;
    let query = failure_query(id, &q)?;
    let page = web.store.job_failures(&query).await.map_err(store_error)?;
    let rows: Vec<Value> = page
        .rows
        .into_iter()
        .map(|r| {
            let mut v = urlfleet_shared::convert::result_json(&crate::jobs::result_to_pb(r.clone()));
            v["host"] = url::Url::parse(&r.url).ok().and_then(|u| u.host_str().map(str::to_string)).into();
            v
        })
        .collect();
    Ok(axum::Json(json!({
        "total": page.total,
        "page": query.offset / query.limit + 1,
        "per_page": query.limit,
        "rows": rows,
    })))
}

async fn failures_csv(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer<Response> {
    let caller = web.caller(&headers)?;
    web.job_of(&caller, id).await?;
    let mut query = failure_query(id, &q)?;
    query.limit = MAX_PAGE;
    query.offset = 0;
    let mut out = csv::Writer::from_writer(Vec::new());
    let header = ["url", "class", "kind", "status", "final_url", "attempts", "response_time_ms", "checked_at", "error"];
    let _ = out.write_record(header);
    loop {
        let page = web.store.job_failures(&query).await.map_err(store_error)?;
        let n = page.rows.len();
        for r in page.rows {
            let r = crate::jobs::result_to_pb(r);
            let status = if r.status == 0 { String::new() } else { r.status.to_string() };
            let checked =
                if r.checked_at_ms > 0 { urlfleet_shared::time::rfc3339(r.checked_at_ms) } else { String::new() };
            let _ = out.write_record([
                r.url.as_str(),
                urlfleet_shared::convert::class_name(&r),
                urlfleet_shared::convert::kind_name(&r),
                &status,
                &r.final_url,
                &r.attempts.to_string(),
                &r.response_time_ms.to_string(),
                &checked,
                &r.error,
            ]);
        }
        if n < MAX_PAGE as usize {
            break;
        }
        query.offset += MAX_PAGE;
    }
    let body = out.into_inner().map_err(|e| Refusal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let disposition = format!("attachment; filename=\"job-{id}-failures.csv\"");
    Ok((
        [(header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()), (header::CONTENT_DISPOSITION, disposition)],
        body,
    )
        .into_response())
}

async fn samples(State(web): State<Web>, headers: HeaderMap, Path(id): Path<i64>) -> Answer<axum::Json<Value>> {
    let caller = web.caller(&headers)?;
    web.job_of(&caller, id).await?;
    let samples = web.store.job_samples(id, 2_000).await.map_err(store_error)?;
    let v: Vec<Value> =
        samples.iter().map(|s| json!([s.at, s.checked, s.n_ok, s.n_redirected, s.n_broken, s.n_error])).collect();
    Ok(axum::Json(json!({ "every_ms": urlfleet_shared::time::ms(SAMPLE_EVERY), "samples": v })))
}

async fn cancel(State(web): State<Web>, headers: HeaderMap, Path(id): Path<i64>) -> Answer<axum::Json<Value>> {
    let caller = web.caller(&headers)?;
    // A form on another site cannot set this header: no cross-site cancel through the cookie.
    if headers.get("x-urlfleet").is_none() {
        return Err(Refusal(StatusCode::FORBIDDEN, "missing the X-Urlfleet header".into()));
    }
    web.job_of(&caller, id).await?;
    let (job, revoked) = web
        .store
        .cancel_job(id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| Refusal(StatusCode::NOT_FOUND, format!("job {id} not found")))?;
    for lease in revoked {
        web.events.lease_revoked(lease);
    }
    web.events.job_changed(id);
    info!(job.id = id, by = %caller.name, "job cancelled from the dashboard");
    Ok(axum::Json(job_json(&job)))
}

async fn hosts(State(web): State<Web>, headers: HeaderMap) -> Answer<axum::Json<Value>> {
    web.admin(&headers)?;
    let now = urlfleet_shared::time::now_ms();
    let rows = web.store.frontier_hosts(500).await.map_err(store_error)?;
    let v: Vec<Value> = rows
        .iter()
        .map(|h| {
            let health = web.board.host(&h.host);
            json!({
                "host": h.host,
                "pending": h.pending,
                "active_leases": h.active_leases,
                "max_leases": h.max_leases,
                "next_allowed_in_ms": (h.next_allowed_at - now).max(0),
                "holder": h.holder,
                "answers": health.as_ref().map(|x| x.answers),
                "mix": health.as_ref().map(|x| json!({"ok": x.mix[0], "redirected": x.mix[1], "broken": x.mix[2], "error": x.mix[3]})),
                "latency_ms": health.as_ref().map(|x| json!({"p50": x.latency_ms[0], "p90": x.latency_ms[1], "p99": x.latency_ms[2]})),
            })
        })
        .collect();
    Ok(axum::Json(Value::Array(v)))
}

async fn workers(State(web): State<Web>, headers: HeaderMap) -> Answer<axum::Json<Value>> {
    web.admin(&headers)?;
    let v: Vec<Value> = web
        .board
        .workers()
        .into_iter()
        .map(|w| {
            json!({
                "session": w.session, "worker_id": w.worker_id, "capacity": w.capacity,
                "connected_at_ms": w.connected_at_ms, "credits": w.credits, "in_hand": w.in_hand,
                "leases": w.leases, "in_flight": w.in_flight, "last_heard_ms": w.last_heard_ms,
            })
        })
        .collect();
    Ok(axum::Json(Value::Array(v)))
}

async fn url_page(
    State(web): State<Web>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Answer<axum::Json<Value>> {
    web.admin(&headers)?;
    let raw = q.get("u").map(String::as_str).unwrap_or_default();
    let url = urlfleet_shared::url::NormalizedUrl::parse(raw)
        .map_err(|e| Refusal(StatusCode::BAD_REQUEST, format!("not a checkable URL: {e}")))?;
    let checks = web
        .store
        .url_history(url.as_str(), 200)
        .await
        .map_err(store_error)?
        .ok_or_else(|| Refusal(StatusCode::NOT_FOUND, "never submitted".into()))?;
    let checks: Vec<Value> =
        checks.into_iter().map(|r| urlfleet_shared::convert::result_json(&crate::jobs::result_to_pb(r))).collect();
    Ok(axum::Json(json!({ "url": redact(url.as_str()), "checks": checks })))
}
