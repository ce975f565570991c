//! Wiring of a coordinator: both gRPC services, health and reflection on one listener, plus the
//! background task that returns expired leases to the frontier.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use urlfleet_shared::proto::FILE_DESCRIPTOR_SET;
use urlfleet_shared::proto::v1::job_service_server::JobServiceServer;
use urlfleet_shared::proto::v1::worker_service_server::WorkerServiceServer;

use crate::config::CoordinatorConfig;
use crate::events::Events;
use crate::jobs::JobApi;
use crate::store::Store;
use crate::work::WorkApi;

/// Largest gRPC message accepted (a result batch or a URL chunk).
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Serves the coordinator on `listener` until `shutdown` completes. Worker sessions and watch streams
/// end first, so that the server can drain.
pub async fn run(
    listener: TcpListener,
    store: Arc<dyn Store>,
    config: CoordinatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let token = CancellationToken::new();
    let events = Arc::new(Events::default());
    let coordinator_id: Arc<str> = format!("{}-{}", hostname(), std::process::id()).into();

    let metrics = Arc::new(crate::metrics::CoordinatorMetrics::default());
    if let Some(addr) = config.metrics_listen {
        let stop = token.clone();
        urlfleet_shared::metrics::spawn(addr, metrics.registry(), async move { stop.cancelled().await }).await;
    }
    let reaper = tokio::spawn(reap(store.clone(), events.clone(), config.clone(), token.clone(), metrics.clone()));

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<JobServiceServer<JobApi>>().await;
    health_reporter.set_serving::<WorkerServiceServer<WorkApi>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let ingestor =
        crate::ingest::Ingestor::start_with_metrics(store.clone(), config.ingest(), token.clone(), metrics.clone());
    let jobs = JobApi::new(store.clone(), events.clone(), config.clone(), token.clone());
    let work = WorkApi::new(
        store.clone(),
        events.clone(),
        config.clone(),
        token.clone(),
        coordinator_id.clone(),
        ingestor,
        metrics,
    );
    let addr = listener.local_addr()?;
    info!(address = %addr, coordinator.id = %coordinator_id, "coordinator serving");

    let stop = token.clone();
    let signal = async move {
        shutdown.await;
        info!("coordinator draining");
        health_reporter.set_not_serving::<JobServiceServer<JobApi>>().await;
        stop.cancel();
    };
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection)
        .add_service(JobServiceServer::new(jobs).max_decoding_message_size(MAX_MESSAGE))
        .add_service(WorkerServiceServer::new(work).max_decoding_message_size(MAX_MESSAGE))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal)
        .await?;
    token.cancel();
    let _ = reaper.await;
    info!("coordinator stopped");
    Ok(())
}

/// A job still receiving its URLs this long after it was created lost its submission (the
/// coordinator that took it died): it is discarded.
const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(3_600);

/// Returns the URLs of expired leases to the frontier, periodically, and discards abandoned
/// submissions.
async fn reap(
    store: Arc<dyn Store>,
    events: Arc<Events>,
    config: CoordinatorConfig,
    token: CancellationToken,
    metrics: Arc<crate::metrics::CoordinatorMetrics>,
) {
    let mut tick = tokio::time::interval(config.reap_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Ok(stats) = store.frontier_stats().await {
            metrics.leases_active.set(stats.active_leases);
            metrics.frontier_pending.set(stats.pending);
        }
        let abandoned = urlfleet_shared::time::now_ms() - urlfleet_shared::time::ms(ABANDONED_AFTER);
        if let Err(e) = store.discard_abandoned(abandoned).await {
            warn!(error = %e, "discarding abandoned submissions failed");
        }
        match store.reap_expired(config.max_lease_attempts).await {
            Ok(t) if !t.jobs.is_empty() || t.expired_leases > 0 => {
                metrics.leases_expired.inc_by(t.expired_leases);
                for j in t.jobs {
                    events.job_changed(j);
                }
                events.work_available();
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "reaping expired leases failed"),
        }
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_string()))
        .unwrap_or_else(|| "coordinator".into())
}

/// Opens the configured store, binds the configured address and serves until `shutdown` completes.
/// The error names the database URL with its password masked.
pub async fn serve(
    config: CoordinatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = crate::store::connect(&config.database_url).await?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    run(listener, store, config, shutdown).await
}
