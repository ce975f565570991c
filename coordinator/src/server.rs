//! Wiring of a coordinator: both gRPC services behind their token gates, health and (optionally)
//! reflection, on one listener or with the worker protocol on its own, TLS when configured, plus the
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

use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;

use crate::auth::{Gate, Role, Tokens};
use crate::config::CoordinatorConfig;
use crate::events::Events;
use crate::jobs::JobApi;
use crate::store::Store;
use crate::work::WorkApi;

/// Where a coordinator takes its connections from.
pub enum Incoming {
    /// A TCP listener.
    Tcp(TcpListener),
    /// In-process connections (see [`urlfleet_shared::inprocess`]): no socket at all.
    InProcess(urlfleet_shared::inprocess::Incoming),
}

/// Serves the coordinator on `incoming` (and the worker protocol on `--worker-listen` when set) until
/// `shutdown` completes. Worker sessions and watch streams end first, so that the server can drain.
pub async fn run(
    incoming: impl Into<Incoming>,
    store: Arc<dyn Store>,
    config: CoordinatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let incoming = incoming.into();
    let tokens = Tokens::load(config.tokens_file.as_deref(), config.tokens_inline.as_deref())
        .map_err(|e| anyhow::anyhow!(e))?
        .map(Arc::new);
    if let Incoming::Tcp(l) = &incoming
        && tokens.is_none()
        && !config.allow_unauthenticated
    {
        let exposed = std::iter::once(l.local_addr()?)
            .chain(config.worker_listen)
            .chain(config.http_listen)
            .find(|a| !a.ip().is_loopback());
        if let Some(a) = exposed {
            anyhow::bail!(
                "refusing to serve {a} without tokens: anyone who reaches it could forge results and cancel \
                 jobs. Give a token list (--tokens-file or URLFLEET_TOKENS), or --allow-unauthenticated"
            );
        }
    }
    let tls = config.server_tls()?;
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
    let reflection = if config.reflection {
        Some(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .build_v1()?,
        )
    } else {
        None
    };

    let ingestor =
        crate::ingest::Ingestor::start_with_metrics(store.clone(), config.ingest(), token.clone(), metrics.clone());
    let board = Arc::new(crate::board::Board::default());
    let dashboard = match config.http_listen {
        Some(addr) if !matches!(incoming, Incoming::InProcess(_)) => {
            let listener = listen(addr).await?;
            let web = crate::web::Web::new(store.clone(), events.clone(), board.clone(), tokens.clone(), token.clone());
            Some(tokio::spawn(crate::web::serve(listener, web)))
        }
        _ => None,
    };
    let jobs = JobApi::new(store.clone(), events.clone(), config.clone(), token.clone());
    let work = WorkApi::new(
        store.clone(),
        events.clone(),
        config.clone(),
        token.clone(),
        coordinator_id.clone(),
        ingestor,
        metrics,
    )
    .with_board(board);
    let max = config.max_message_bytes;
    let jobs = InterceptedService::new(
        JobServiceServer::new(jobs).max_decoding_message_size(max).max_encoding_message_size(max),
        Gate::new(tokens.clone(), &[Role::Submitter, Role::Admin], "the job API"),
    );
    let in_process = matches!(incoming, Incoming::InProcess(_));
    let work = InterceptedService::new(
        WorkerServiceServer::new(work).max_decoding_message_size(max).max_encoding_message_size(max),
        Gate::new(tokens, &[Role::Worker, Role::Admin], "the worker protocol")
            .with_client_cert(config.tls_client_ca.is_some() && !in_process),
    );
    let builder = || -> anyhow::Result<Server> {
        let b = Server::builder()
            .max_concurrent_streams(config.max_concurrent_streams)
            .http2_keepalive_interval(Some(config.keepalive_interval))
            .http2_keepalive_timeout(Some(config.keepalive_timeout))
            .tcp_nodelay(true);
        Ok(match (&tls, in_process) {
            (Some(tls), false) => b.tls_config(tls.clone())?,
            _ => b,
        })
    };
    let mut side_servers = Vec::new();
    if let Some(addr) = config.health_listen.filter(|_| !in_process) {
        let listener = listen(addr).await?;
        info!(address = %listener.local_addr()?, "health serving");
        let stop = token.clone();
        side_servers.push(tokio::spawn(
            Server::builder()
                .add_service(health.clone())
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move { stop.cancelled().await }),
        ));
    }
    let mut router = builder()?.add_service(health.clone()).add_optional_service(reflection).add_service(jobs);
    match config.worker_listen {
        Some(addr) if !in_process => {
            let listener = listen(addr).await?;
            info!(address = %listener.local_addr()?, "worker protocol serving");
            let stop = token.clone();
            let serving = builder()?
                .add_service(health)
                .add_service(work)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move { stop.cancelled().await });
            side_servers.push(tokio::spawn(serving));
        }
        _ => router = router.add_service(work),
    }
    info!(coordinator.id = %coordinator_id, tls = tls.is_some(), "coordinator serving");

    let stop = token.clone();
    let signal = async move {
        shutdown.await;
        info!("coordinator draining");
        health_reporter.set_not_serving::<JobServiceServer<JobApi>>().await;
        stop.cancel();
    };
    match incoming {
        Incoming::Tcp(listener) => {
            info!(address = %listener.local_addr()?, "job API serving");
            router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal).await?
        }
        Incoming::InProcess(incoming) => router.serve_with_incoming_shutdown(incoming, signal).await?,
    }
    token.cancel();
    for s in side_servers {
        s.await??;
    }
    if let Some(d) = dashboard {
        d.await??;
    }
    let _ = reaper.await;
    info!("coordinator stopped");
    Ok(())
}

impl From<TcpListener> for Incoming {
    fn from(l: TcpListener) -> Self {
        Self::Tcp(l)
    }
}

impl From<urlfleet_shared::inprocess::Incoming> for Incoming {
    fn from(i: urlfleet_shared::inprocess::Incoming) -> Self {
        Self::InProcess(i)
    }
}

/// Returns the URLs of expired leases to the frontier, periodically, and discards abandoned
/// submissions.
///
/// A lease's expiry means its worker stopped renewing it, which it could do only while a coordinator
/// and the database were there to take its heartbeats. So after an outage of the database the
/// leases that expired during it first get a TTL of their own, within which their workers' next
/// heartbeats renew them; and a coordinator that starts treats the time before it as such an outage
/// (it cannot know whether any coordinator was up): the leases that expired before it came give
/// their workers one TTL to reconnect and renew them.
async fn reap(
    store: Arc<dyn Store>,
    events: Arc<Events>,
    config: CoordinatorConfig,
    token: CancellationToken,
    metrics: Arc<crate::metrics::CoordinatorMetrics>,
) {
    let mut tick = tokio::time::interval(config.reap_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // While the database does not answer: the last time it did (at the start: ever).
    let mut outage_since: Option<i64> = Some(0);
    let mut last_ok = urlfleet_shared::time::now_ms();
    // When the database last came back (at the start: now).
    let mut recovered_at = last_ok;
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        match store.frontier_stats().await {
            Ok(stats) => {
                metrics.leases_active.set(stats.active_leases);
                metrics.frontier_pending.set(stats.pending);
            }
            Err(e) => {
                if outage_since.is_none() {
                    warn!(error = %e, "the database is out of reach; leases are not reaped until it is back");
                }
                outage_since.get_or_insert(last_ok);
                continue;
            }
        }
        let now = urlfleet_shared::time::now_ms();
        if let Some(since) = outage_since {
            let until = now + urlfleet_shared::time::ms(config.lease_ttl);
            match store.extend_leases_after_outage(since, until, config.max_lease_life).await {
                Ok(n) => {
                    if n > 0 {
                        info!(extended = n, "leases that expired while nobody could renew them live one more TTL");
                    }
                    outage_since = None;
                    recovered_at = now;
                }
                Err(e) => {
                    warn!(error = %e, "extending leases after the outage failed; retrying");
                    continue;
                }
            }
        }
        last_ok = now;
        // A job still receiving whose upload has shown no life for a while lost its coordinator: it
        // is discarded — but not until the uploads that lived through an outage (this coordinator's
        // start counts as one) have had that long to show it again.
        let abandoned = urlfleet_shared::time::ms(crate::store::ABANDONED_UPLOAD);
        if now - recovered_at >= abandoned
            && let Err(e) = store.discard_abandoned(now - abandoned).await
        {
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
    let listener = listen(config.listen).await?;
    run(listener, store, config, shutdown).await
}

/// A listener on `addr`; the error names the address.
async fn listen(addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}
