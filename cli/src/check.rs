//! `urlfleet check`: a whole cluster in one process — an embedded coordinator on a loopback port with
//! the chosen store (SQLite by default), one worker connected to it over gRPC, and a client that
//! submits the list, follows the job and prints the summary. The same code paths as a cluster, so
//! what works here works there.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use urlfleet_coordinator::CoordinatorConfig;
use urlfleet_shared::proto::v1 as pb;
use urlfleet_worker::WorkerConfig;
use urlfleet_worker::engine::Cidr;

use crate::output::{self, Format, ResultWriter};
use crate::{JobArgs, client};

/// Arguments of `urlfleet check`.
#[derive(clap::Args)]
pub struct CheckArgs {
    /// File with one URL per line (blank lines and # comments ignored), or - for standard input.
    file: PathBuf,
    /// Database URL: sqlite:PATH (default ./urlfleet.db) or postgres://…
    #[arg(long, env = "URLFLEET_DB", default_value = "sqlite:urlfleet.db")]
    db: String,
    /// Maximum concurrent checks.
    #[arg(long, default_value_t = urlfleet_shared::policy::DEFAULT_WORKER_CONCURRENCY as usize)]
    concurrency: usize,
    /// Total timeout of one attempt.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Retries of transient failures.
    #[arg(long, default_value_t = urlfleet_worker::engine::DEFAULT_RETRIES)]
    retries: u32,
    /// Back-off base between retries.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    backoff_base: Duration,
    /// Networks the SSRF guard lets through (CIDR, repeatable or comma-separated), e.g. 127.0.0.0/8.
    #[arg(long, env = "URLFLEET_ALLOW", value_delimiter = ',')]
    allow: Vec<Cidr>,
    /// Turn politeness off for every host (for one's own sites): no per-host interval, per-host
    /// concurrency up to the global bound.
    #[arg(long)]
    no_politeness: bool,
    /// How to list the URLs that failed.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    #[command(flatten)]
    job: JobArgs,
}

/// Runs the check; exit 0 when nothing failed, 2 otherwise.
pub async fn run(args: CheckArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let store = urlfleet_coordinator::store::connect(&args.db).await?;
    let listener = TcpListener::bind("127.0.0.1:0").await.context("binding the embedded coordinator")?;
    let addr = format!("http://{}", listener.local_addr()?);
    let mut config = CoordinatorConfig::new(listener.local_addr()?, args.db.clone());
    // One worker on the same machine: leases may be large and their TTL short.
    config.lease_size = 2_000;
    config.lease_size_lifted = 2_000;
    let (stop_coordinator, coordinator_stopped) = oneshot::channel::<()>();
    let coordinator = tokio::spawn(urlfleet_coordinator::run(listener, store, config, async {
        let _ = coordinator_stopped.await;
    }));

    let mut worker_config = WorkerConfig::new(addr.clone());
    worker_config.worker_id = Some(format!("check-{}", std::process::id()));
    worker_config.concurrency = args.concurrency;
    worker_config.credits = (args.concurrency as u32).saturating_mul(64).max(4096);
    worker_config.timeout = args.timeout;
    worker_config.retries = args.retries;
    worker_config.backoff_base = args.backoff_base;
    worker_config.allow = args.allow.clone();
    worker_config.shutdown_grace = Duration::from_secs(2);
    let (stop_worker, worker_stopped) = oneshot::channel::<()>();
    let worker = tokio::spawn(urlfleet_worker::run(worker_config, async {
        let _ = worker_stopped.await;
    }));

    let mut options = args.job.options();
    if args.no_politeness {
        options.politeness = Some(pb::HostPolicy { concurrency: Some(args.concurrency as u32), interval_ms: Some(0) });
    }
    let outcome = async {
        let mut c = client::connect(&addr).await?;
        let span = tracing::info_span!("submit", otel.kind = "client", file = %args.file.display());
        let resp = tracing::Instrument::instrument(client::submit(&mut c, &args.file, options), span).await?;
        let job = resp.job.unwrap_or_default();
        let done = tokio::select! {
            r = crate::follow(&mut c, job.id) => r?,
            () = urlfleet_shared::shutdown::signal() => {
                let cancelled = c.cancel_job(pb::CancelJobRequest { id: job.id }).await.map_err(client::status_error)?;
                eprintln!("interrupted: job {} cancelled; finished results are kept", job.id);
                cancelled.into_inner()
            }
        };
        let counts = done.counts.unwrap_or_default();
        if output::failures(&counts) > 0 {
            println!("Failed URLs:");
            let classes = [pb::OutcomeClass::Broken, pb::OutcomeClass::Error, pb::OutcomeClass::Invalid];
            let mut w = ResultWriter::new(std::io::BufWriter::new(std::io::stdout().lock()), args.format);
            client::results(&mut c, done.id, &classes, |r| Ok(w.write(&r)?)).await?;
            w.finish()?;
        }
        Ok::<_, anyhow::Error>(done)
    }
    .await;

    let _ = stop_worker.send(());
    let _ = worker.await;
    let _ = stop_coordinator.send(());
    let _ = coordinator.await;
    let done = outcome?;
    let c = done.counts.unwrap_or_default();
    let secs = started.elapsed().as_secs_f64();
    let checked = c.checked;
    println!(
        "{} URLs in {:.1}s ({:.0} checks/s): {} ok, {} redirected, {} broken, {} errors, {} invalid{}{}",
        c.total,
        secs,
        checked as f64 / secs.max(0.001),
        c.ok,
        c.redirected,
        c.broken,
        c.error,
        c.invalid,
        if c.fresh > 0 { format!(" ({} fresh, not re-checked)", c.fresh) } else { String::new() },
        if c.duplicates > 0 { format!(" ({} duplicates collapsed)", c.duplicates) } else { String::new() },
    );
    Ok(crate::gate(&done))
}
