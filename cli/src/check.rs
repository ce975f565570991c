//! `urlfleet check`: a whole cluster in one process — an embedded coordinator with the chosen store
//! (SQLite by default), one worker connected to it over gRPC, and a client that submits the list,
//! follows the job and prints the summary. The same code paths as a cluster, so what works here works
//! there; but the gRPC connections are in-memory pipes, not sockets: no other process on the machine
//! can reach the embedded coordinator (and forge its verdicts).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::oneshot;
use urlfleet_coordinator::CoordinatorConfig;
use urlfleet_shared::HostPolicy;
use urlfleet_shared::connect::{ClientAuth, Target};
use urlfleet_shared::job::{JobCounts, JobOptions, PolicyOverride};
use urlfleet_shared::proto::v1 as pb;
use urlfleet_shared::url::redact;
use urlfleet_worker::WorkerConfig;
use urlfleet_worker::direct::{DirectCheck, Failed};
use urlfleet_worker::engine::{Cidr, EngineConfig};

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
    /// Keep nothing: run the check engine straight on the list, with no database, coordinator or
    /// worker (for CI gates that only need the verdict). Every URL is checked: with no stored
    /// state there is nothing to be fresh against.
    #[arg(long, conflicts_with = "db")]
    no_store: bool,
    #[command(flatten)]
    job: JobArgs,
}

/// Runs the check; exit 0 when nothing failed, 2 otherwise.
pub async fn run(args: CheckArgs) -> Result<ExitCode> {
    let started = Instant::now();
    if args.no_store {
        return run_without_store(args, started).await;
    }
    let store = urlfleet_coordinator::store::connect(&args.db).await?;
    let (connector, incoming) = urlfleet_shared::inprocess::pair();
    let target = Target::InProcess(connector.clone());
    let mut config = CoordinatorConfig::new(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), args.db.clone());
    // One worker on the same machine: leases may be large and their TTL short.
    config.lease_size = 2_000;
    config.lease_size_lifted = 2_000;
    config.max_host_concurrency = config.max_host_concurrency.max(args.concurrency as u32);
    // Its only worker is this process: a lease may take as long as the list's slowest host.
    config.max_lease_life = Duration::from_secs(7 * 24 * 3_600);
    let (stop_coordinator, coordinator_stopped) = oneshot::channel::<()>();
    let coordinator = tokio::spawn(urlfleet_coordinator::run(incoming, store, config, async {
        let _ = coordinator_stopped.await;
    }));

    let mut worker_config = WorkerConfig::new("");
    worker_config.in_process = Some(connector);
    worker_config.worker_id = Some(format!("check-{}", std::process::id()));
    worker_config.concurrency = args.concurrency;
    worker_config.timeout = args.timeout;
    worker_config.retries = args.retries;
    worker_config.backoff_base = args.backoff_base;
    worker_config.allow = args.allow.clone();
    worker_config.shutdown_grace = Duration::from_secs(2);
    let (stop_worker, worker_stopped) = oneshot::channel::<()>();
    let worker = tokio::spawn(urlfleet_worker::run(worker_config, async {
        let _ = worker_stopped.await;
    }));

    let options = job_options(&args);
    let outcome = async {
        let mut c = client::connect(&target, &ClientAuth::default()).await?;
        let span = tracing::info_span!("submit", otel.kind = "client", file = %args.file.display());
        let resp = tracing::Instrument::instrument(client::submit(&mut c, &args.file, (&options).into()), span).await?;
        let job = resp.job.unwrap_or_default();
        let done = tokio::select! {
            r = crate::follow(&mut c, job.id) => r?,
            () = urlfleet_shared::shutdown::signal() => {
                let cancelled = c.cancel_job(pb::CancelJobRequest { id: job.id }).await.map_err(client::status_error)?;
                eprintln!("interrupted: job {} cancelled; finished results are kept", job.id);
                cancelled.into_inner()
            }
        };
        if output::counts(&done).failures() > 0 {
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
    summary(&output::counts(&done), started);
    Ok(crate::gate(&done))
}

/// The job options the arguments ask for.
fn job_options(args: &CheckArgs) -> JobOptions {
    let mut options = args.job.options();
    if args.no_politeness {
        options.politeness = PolicyOverride { concurrency: Some(args.concurrency as u32), interval_ms: Some(0) };
    }
    options
}

/// The closing line: counts and rate.
fn summary(c: &JobCounts, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{} URLs in {:.1}s ({:.0} checks/s): {} ok, {} redirected, {} broken, {} errors, {} invalid{}{}",
        c.total,
        secs,
        c.checked as f64 / secs.max(0.001),
        c.ok,
        c.redirected,
        c.broken,
        c.error,
        c.invalid,
        if c.fresh > 0 { format!(" ({} fresh, not re-checked)", c.fresh) } else { String::new() },
        if c.duplicates > 0 { format!(" ({} duplicates collapsed)", c.duplicates) } else { String::new() },
    );
}

/// `--no-store`: the engine runs straight on the list ([`urlfleet_worker::direct`]), with the same
/// normalization, deduplication, politeness, listing and exit code as a stored check.
async fn run_without_store(args: CheckArgs, started: Instant) -> Result<ExitCode> {
    use futures::TryStreamExt as _;

    let defaults = CoordinatorConfig::new(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), "");
    let check = DirectCheck {
        engine: EngineConfig {
            concurrency: args.concurrency.max(1),
            request_timeout: args.timeout,
            retries: args.retries,
            backoff_base: args.backoff_base,
            allow: args.allow.clone(),
            ..EngineConfig::default()
        },
        options: job_options(&args),
        base: HostPolicy { concurrency: defaults.host_concurrency, interval: defaults.host_interval },
        site_policies: Vec::new(),
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    let interrupt = cancel.clone();
    tokio::spawn(async move {
        urlfleet_shared::shutdown::signal().await;
        interrupt.cancel();
    });
    let lines = tokio_stream::wrappers::LinesStream::new(client::input_lines(&args.file).await?)
        .try_filter_map(|line: String| std::future::ready(Ok(client::entry(&line).map(str::to_string))));
    let report = urlfleet_worker::direct::check_list(lines, &check, &cancel)
        .await
        .with_context(|| format!("checking {}", args.file.display()))?;
    if report.interrupted {
        eprintln!("interrupted: the URLs not checked yet count as errors");
    }
    if report.counts.failures() > 0 {
        println!("Failed URLs:");
        let mut w = ResultWriter::new(std::io::BufWriter::new(std::io::stdout().lock()), args.format);
        for r in &report.failed {
            w.write(&url_result(r))?;
        }
        for e in &report.invalid {
            w.write(&pb::UrlResult {
                url: redact(&e.input).into_owned(),
                outcome_class: pb::OutcomeClass::Invalid as i32,
                kind: pb::OutcomeKind::Invalid as i32,
                error: redact(&e.reason).into_owned(),
                ..Default::default()
            })?;
        }
        w.finish()?;
    }
    summary(&report.counts, started);
    Ok(if report.counts.failures() > 0 { ExitCode::from(crate::EXIT_BROKEN) } else { ExitCode::SUCCESS })
}

/// A result as the listing shows it.
fn url_result(r: &Failed) -> pb::UrlResult {
    let o = &r.outcome;
    pb::UrlResult {
        cursor: String::new(),
        url: redact(&r.url).into_owned(),
        outcome_class: pb::OutcomeClass::from(o.kind.class()) as i32,
        kind: pb::OutcomeKind::from(o.kind) as i32,
        status: o.status.map(u32::from).unwrap_or(0),
        final_url: o.final_url.clone().unwrap_or_default(),
        redirects: o.redirects.iter().map(Into::into).collect(),
        attempts: o.attempts,
        response_time_ms: o.response_time_ms,
        content_type: o.content_type.clone().unwrap_or_default(),
        content_length: o.content_length,
        checked_at_ms: o.checked_at_ms,
        error: o.error.clone().unwrap_or_default(),
        fresh: false,
    }
}
