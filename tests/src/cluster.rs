//! Coordinators and workers on port 0, as a test or benchmark needs them, plus a client.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::StreamExt;
use urlfleet_coordinator::CoordinatorConfig;
use urlfleet_coordinator::store::Store;
use urlfleet_shared::proto::v1::{self as pb, job_service_client::JobServiceClient};
use urlfleet_worker::WorkerConfig;

/// A coordinator running in this process.
pub struct Coordinator {
    /// `http://127.0.0.1:port`.
    pub addr: String,
    /// Its store (to inspect tables).
    pub store: Arc<dyn Store>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Coordinator {
    /// Starts a coordinator on a port-0 loopback listener, with short lease timings suited to tests;
    /// `tweak` adjusts the configuration.
    pub async fn spawn(db_url: &str, tweak: impl FnOnce(&mut CoordinatorConfig)) -> Self {
        Self::spawn_on(db_url, 0, tweak).await
    }

    /// Like [`Coordinator::spawn`], on a chosen loopback port (0 for any).
    pub async fn spawn_on(db_url: &str, port: u16, tweak: impl FnOnce(&mut CoordinatorConfig)) -> Self {
        // Warnings and errors of every role show up in a failing test's output.
        urlfleet_shared::telemetry::init("warn", urlfleet_shared::telemetry::LogFormat::Text);
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind coordinator");
        let local = listener.local_addr().expect("coordinator address");
        let mut config = CoordinatorConfig::new(local, db_url);
        config.lease_ttl = Duration::from_secs(3);
        config.reap_interval = Duration::from_millis(200);
        tweak(&mut config);
        let store = urlfleet_coordinator::store::connect(db_url).await.expect("open store");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(urlfleet_coordinator::run(listener, store.clone(), config, async {
            let _ = stopped.await;
        }));
        Self { addr: format!("http://{local}"), store, stop: Some(stop), task: Some(task) }
    }

    /// A client of this coordinator.
    pub async fn client(&self) -> JobServiceClient<tonic::transport::Channel> {
        JobServiceClient::connect(self.addr.clone()).await.expect("connect to coordinator")
    }

    /// Stops the coordinator and waits for it.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A worker running on its own runtime, so that killing it ends every task it started — as if the
/// process died.
pub struct Worker {
    runtime: Option<tokio::runtime::Runtime>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<oneshot::Receiver<()>>,
}

/// The worker configuration tests use: loopback allowed, quick retries.
pub fn test_worker_config(coordinator: &str) -> WorkerConfig {
    let mut c = WorkerConfig::new(coordinator);
    c.allow = vec!["127.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()];
    c.backoff_base = Duration::from_millis(10);
    c.backoff_cap = Duration::from_millis(100);
    c.timeout = Duration::from_secs(5);
    c.connect_timeout = Duration::from_secs(2);
    c.concurrency = 64;
    c.shutdown_grace = Duration::from_secs(2);
    c
}

impl Worker {
    /// Starts a worker for the coordinator at `addr`; `tweak` adjusts the test configuration.
    pub fn spawn(addr: &str, tweak: impl FnOnce(&mut WorkerConfig)) -> Self {
        let mut config = test_worker_config(addr);
        tweak(&mut config);
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("worker runtime");
        let (stop, stopped) = oneshot::channel::<()>();
        let (done_tx, done) = oneshot::channel::<()>();
        runtime.spawn(async move {
            if let Err(e) = urlfleet_worker::run(config, async {
                let _ = stopped.await;
            })
            .await
            {
                eprintln!("worker failed: {e:#}");
            }
            let _ = done_tx.send(());
        });
        Self { runtime: Some(runtime), stop: Some(stop), done: Some(done) }
    }

    /// Kills the worker at once: every check, stream and buffered result is gone.
    pub fn kill(mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }

    /// Asks the worker to leave gracefully and waits for it (bounded).
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(d) = self.done.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), d).await;
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Submits `urls` as one job (in chunks of 1,000) and returns the response.
pub async fn submit(
    client: &mut JobServiceClient<tonic::transport::Channel>,
    urls: &[String],
    options: pb::JobOptions,
) -> Result<pb::SubmitJobResponse, tonic::Status> {
    let mut msgs = vec![pb::SubmitJobRequest { item: Some(pb::submit_job_request::Item::Options(options)) }];
    for chunk in urls.chunks(1_000) {
        msgs.push(pb::SubmitJobRequest {
            item: Some(pb::submit_job_request::Item::Urls(pb::UrlChunk { urls: chunk.to_vec(), ..Default::default() })),
        });
    }
    client.submit_job(tokio_stream::iter(msgs)).await.map(|r| r.into_inner())
}

/// Options with politeness off (for tests that check many URLs of one host quickly).
pub fn impolite() -> pb::JobOptions {
    pb::JobOptions {
        politeness: Some(pb::HostPolicy { concurrency: Some(32), interval_ms: Some(0) }),
        ..Default::default()
    }
}

/// Waits (with bounded patience) until the job ends; returns the final job.
pub async fn wait_done(
    client: &mut JobServiceClient<tonic::transport::Channel>,
    id: i64,
    patience: Duration,
) -> pb::Job {
    let watch = async {
        let mut stream = client.watch_job(pb::WatchJobRequest { id }).await.expect("watch").into_inner();
        let mut last = None;
        while let Some(ev) = stream.next().await {
            let ev = ev.expect("watch event");
            let fin = ev.r#final;
            last = ev.job;
            if fin {
                break;
            }
        }
        last.expect("at least one event")
    };
    tokio::time::timeout(patience, watch).await.unwrap_or_else(|_| panic!("job {id} did not end within {patience:?}"))
}

/// Every result of a job.
pub async fn all_results(client: &mut JobServiceClient<tonic::transport::Channel>, job_id: i64) -> Vec<pb::UrlResult> {
    let req = pb::ListResultsRequest { job_id, ..Default::default() };
    let mut stream = client.list_results(req).await.expect("list results").into_inner();
    let mut out = Vec::new();
    while let Some(r) = stream.next().await {
        out.push(r.expect("result"));
    }
    out
}

/// Polls `probe` until it returns `Some`, for at most `patience`; panics with `what` otherwise.
pub async fn eventually<T, F, Fut>(patience: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if start.elapsed() > patience {
            panic!("{what}: not within {patience:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A job written straight into a store, as a whole submission: created, its URLs added (in batches
/// of 10,000), sealed under `name` as its unique key. Returns the sealed job.
pub async fn stored_job(
    store: &dyn Store,
    name: &str,
    priority: urlfleet_shared::Priority,
    urls: &[urlfleet_coordinator::store::PlannedUrl],
    recheck: urlfleet_coordinator::store::RecheckPolicy,
) -> urlfleet_coordinator::store::JobRecord {
    use urlfleet_coordinator::store::{NewJob, Seal};
    let options = urlfleet_shared::JobOptions { name: name.into(), ..Default::default() };
    let new = NewJob { options, priority, not_before_ms: 0, trace_parent: None, owner: String::new() };
    let (job, _) = store.create_job(new).await.expect("create job");
    for chunk in urls.chunks(10_000) {
        store.add_urls(job.id, chunk, recheck).await.expect("add URLs");
    }
    let seal = Seal {
        unique_key: name.into(),
        unique_window: urlfleet_shared::policy::DEFAULT_UNIQUE_WINDOW,
        received: urls.len() as u64,
        duplicates: 0,
        total: urls.len() as u64,
        priority,
        not_before_ms: 0,
    };
    store.seal_job(job.id, seal).await.expect("seal job").0
}
