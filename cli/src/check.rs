//! `urlfleet check`: a whole cluster in one process — an embedded coordinator with the chosen store
//! (SQLite by default), one worker connected to it over gRPC, and a client that submits the inputs,
//! follows the job and lists the results. The same code paths as a cluster, so what works here works
//! there; but the gRPC connections are in-memory pipes, not sockets: no other process on the machine
//! can reach the embedded coordinator (and forge its verdicts).

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::oneshot;
use urlfleet_coordinator::CoordinatorConfig;
use urlfleet_shared::connect::{ClientAuth, Target};
use urlfleet_shared::job::{JobCounts, JobOptions, PolicyOverride};
use urlfleet_shared::proto::v1 as pb;
use urlfleet_shared::url::redact;
use urlfleet_shared::{HostPolicy, OutcomeClass};
use urlfleet_worker::WorkerConfig;
use urlfleet_worker::direct::{DirectCheck, Failed, Progress as DirectProgress};
use urlfleet_worker::engine::EngineConfig;

use crate::client::{self, Entries};
use crate::input::InputArgs;
use crate::output::{self, Progress};
use crate::{JobArgs, Listing};

/// Arguments of `urlfleet check`.
#[derive(clap::Args)]
pub struct CheckArgs {
    /// Inputs: files (a URL list, a CSV/TSV export, an XML sitemap or sitemap index, gzipped or
    /// not), - for standard input, or the http(s) URL of a sitemap to fetch.
    #[arg(required = true)]
    inputs: Vec<String>,
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
    /// Turn politeness off for every host (for one's own sites): no per-host interval, per-host
    /// concurrency up to the global bound.
    #[arg(long)]
    no_politeness: bool,
    #[command(flatten)]
    listing: Listing,
    /// Keep nothing: run the check engine straight on the inputs, with no database, coordinator or
    /// worker (for CI gates that only need the verdict). Every URL is checked: with no stored
    /// state there is nothing to be fresh against.
    #[arg(long, conflicts_with = "db")]
    no_store: bool,
    #[command(flatten)]
    input: InputArgs,
    #[command(flatten)]
    job: JobArgs,
}

/// Runs the check; exit 0 when nothing failed, 2 otherwise.
pub async fn run(args: CheckArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let mut entries = Entries::start(args.inputs.clone(), args.input.clone());
    if entries.is_empty().await? {
        eprintln!("no URLs in {}", args.inputs.join(", "));
        summary(&JobCounts::default(), started, &args.listing);
        return Ok(ExitCode::SUCCESS);
    }
    if args.no_store {
        return run_without_store(args, entries, started).await;
    }
    let (connector, incoming) = urlfleet_shared::inprocess::pair();
    let target = Target::InProcess(connector.clone());
    let mut config = CoordinatorConfig::new(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), args.db.clone());
    // One worker on the same machine: leases may be large and their TTL short.
    config.lease_size = 2_000;
    config.lease_size_lifted = 2_000;
    // Nothing to spread over other workers: the one worker may hold all it has credits for.
    config.lifted_span = Duration::ZERO;
    config.max_host_concurrency = config.max_host_concurrency.max(args.concurrency as u32);
    // Its only worker is this process: a lease may take as long as the list's slowest host.
    config.max_lease_life = Duration::from_secs(7 * 24 * 3_600);
    // Results wait in memory for the one SQLite writer: when checks outrun it, a few chunks queued
    // keep it busy, and leasing pauses rather than let a large list's results pile up.
    config.ingest_max_backlog = 4 * config.ingest_chunk_rows;
    let (stop_coordinator, coordinator_stopped) = oneshot::channel::<()>();
    let coordinator = embedded_coordinator(args.db.clone(), incoming, config, async {
        let _ = coordinator_stopped.await;
    })
    .await?;

    let mut worker_config = WorkerConfig::new("");
    worker_config.in_process = Some(connector);
    worker_config.worker_id = Some(format!("check-{}", std::process::id()));
    worker_config.concurrency = args.concurrency;
    worker_config.timeout = args.timeout;
    worker_config.retries = args.retries;
    worker_config.backoff_base = args.backoff_base;
    worker_config.allow = args.input.allow.clone();
    worker_config.shutdown_grace = Duration::from_secs(2);
    let (stop_worker, worker_stopped) = oneshot::channel::<()>();
    let worker = tokio::spawn(urlfleet_worker::run(worker_config, async {
        let _ = worker_stopped.await;
    }));

    let options = job_options(&args);
    let outcome = async {
        let mut c = client::connect(&target, &ClientAuth::default()).await?;
        let span = tracing::info_span!("submit", otel.kind = "client", inputs = %args.inputs.join(" "));
        let resp = tracing::Instrument::instrument(client::submit(&mut c, entries, (&options).into()), span).await?;
        let job = resp.job.unwrap_or_default();
        let progress = Progress::new(args.listing.quiet);
        let done = tokio::select! {
            r = client::watch(&mut c, job.id, |j| output::show_progress(&progress, j)) => r?,
            () = urlfleet_shared::shutdown::signal() => {
                let cancelled = c.cancel_job(pb::CancelJobRequest { id: job.id }).await.map_err(client::status_error)?;
                eprintln!("interrupted: job {} cancelled; finished results are kept", job.id);
                cancelled.into_inner()
            }
        };
        let counts = output::counts(&done);
        progress.finish(counts.total - counts.unresolved(), counts.total, &output::outcome_note(&done));
        args.listing.list(&mut c, done.id, &counts).await?;
        Ok::<_, anyhow::Error>(done)
    }
    .await;

    let _ = stop_worker.send(());
    let _ = worker.await;
    let _ = stop_coordinator.send(());
    let _ = coordinator.await;
    let done = outcome?;
    summary(&output::counts(&done), started, &args.listing);
    Ok(crate::gate(&output::counts(&done)))
}

/// Starts the embedded coordinator on a thread and runtime of its own, its store opened there, and
/// returns once the store is open; the receiver yields the coordinator's end, once its runtime (its
/// tasks, its store) is gone. On the engine's runtime the coordinator's tasks — the session granting
/// leases, the ingest writer feeding SQLite's thread — waited in the same queues as thousands of
/// ready checks; on a thread of their own the kernel shares the cores between the two.
async fn embedded_coordinator(
    db: String,
    incoming: urlfleet_shared::inprocess::Incoming,
    config: CoordinatorConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<oneshot::Receiver<anyhow::Result<()>>> {
    let (opened_tx, opened) = oneshot::channel::<Result<()>>();
    let (ended_tx, ended) = oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("coordinator".into()).spawn(move || {
        let ended = runtime.block_on(async move {
            match urlfleet_coordinator::store::connect(&db).await {
                Ok(store) => {
                    let _ = opened_tx.send(Ok(()));
                    urlfleet_coordinator::run(incoming, store, config, shutdown).await
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(e.into()));
                    Ok(())
                }
            }
        });
        drop(runtime);
        let _ = ended_tx.send(ended);
    })?;
    opened.await??;
    Ok(ended)
}

/// The job options the arguments ask for; an unnamed job is named after its inputs, so that the
/// next run of the same list can be compared with it (`urlfleet report`).
fn job_options(args: &CheckArgs) -> JobOptions {
    let mut options = args.job.options();
    if options.name.is_empty() {
        options.name = args.inputs.join(" ");
    }
    if args.no_politeness {
        options.politeness = PolicyOverride { concurrency: Some(args.concurrency as u32), interval_ms: Some(0) };
    }
    options
}

/// The closing line, on standard error: counts and rate.
fn summary(c: &JobCounts, started: Instant, listing: &Listing) {
    if listing.quiet {
        return;
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{} URLs in {:.1}s ({:.0} checks/s): {} ok, {} redirected, {} broken, {} errors, {} invalid{}{}{}",
        c.total,
        secs,
        c.checked as f64 / secs.max(0.001),
        c.ok,
        c.redirected,
        c.broken,
        c.error,
        c.invalid,
        if c.cancelled > 0 { format!(", {} cancelled", c.cancelled) } else { String::new() },
        if c.fresh > 0 { format!(" ({} fresh, not re-checked)", c.fresh) } else { String::new() },
        if c.duplicates > 0 { format!(" ({} duplicates collapsed)", c.duplicates) } else { String::new() },
    );
}

/// `--no-store`: the engine runs straight on the inputs ([`urlfleet_worker::direct`]), with the same
/// normalization, deduplication, politeness, listing and exit code as a stored check.
async fn run_without_store(args: CheckArgs, mut entries: Entries, started: Instant) -> Result<ExitCode> {
    let defaults = CoordinatorConfig::new(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), "");
    let mut check = DirectCheck::new(
        EngineConfig {
            concurrency: args.concurrency.max(1),
            request_timeout: args.timeout,
            retries: args.retries,
            backoff_base: args.backoff_base,
            allow: args.input.allow.clone(),
            ..EngineConfig::default()
        },
        job_options(&args),
        HostPolicy { concurrency: defaults.host_concurrency, interval: defaults.host_interval },
    );
    let only = args.listing.classes();
    check.keep = only.iter().copied().filter(|c| *c != OutcomeClass::Invalid).collect();
    let cancel = tokio_util::sync::CancellationToken::new();
    let interrupt = cancel.clone();
    tokio::spawn(async move {
        urlfleet_shared::shutdown::signal().await;
        interrupt.cancel();
    });
    let stream = futures::stream::unfold(&mut entries, |s| async move { s.next().await.map(|item| (item, s)) });
    let stream = futures::StreamExt::flat_map(stream, |batch: Result<Vec<_>>| {
        let items: Vec<Result<_>> = match batch {
            Ok(b) => b.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e)],
        };
        futures::stream::iter(items)
    });
    let progress = Arc::new(DirectProgress::default());
    let display = Arc::new(Progress::new(args.listing.quiet));
    let stop_ticker = tokio_util::sync::CancellationToken::new();
    let ticker = tokio::spawn({
        let (progress, display, stop) = (progress.clone(), display.clone(), stop_ticker.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stop.cancelled() => return,
                }
                let total = progress.total.load(Ordering::Relaxed);
                if total > 0 {
                    display.update(progress.checked.load(Ordering::Relaxed), total, "");
                }
            }
        }
    });
    let report = urlfleet_worker::direct::check_list(stream, &check, &cancel, &progress).await;
    stop_ticker.cancel();
    let _ = ticker.await;
    let report = report.with_context(|| format!("checking {}", args.inputs.join(", ")))?;
    display.finish(report.counts.checked, report.counts.total, "");
    if report.interrupted {
        eprintln!("interrupted: the URLs not checked yet count as errors");
    }
    let mut results: Vec<pb::UrlResult> = report.failed.iter().map(url_result).collect();
    if only.contains(&OutcomeClass::Invalid) {
        results.extend(report.invalid.iter().map(|e| pb::UrlResult {
            url: redact(&e.input).into_owned(),
            outcome_class: pb::OutcomeClass::Invalid as i32,
            kind: pb::OutcomeKind::Invalid as i32,
            state: pb::UrlState::Invalid as i32,
            error: redact(&e.reason).into_owned(),
            ..Default::default()
        }));
    }
    // Grouped as a stored listing is: by class in listing order, by URL within a class.
    let rank = |r: &pb::UrlResult| {
        output::LISTING_ORDER.iter().position(|c| pb::OutcomeClass::from(*c) as i32 == r.outcome_class).unwrap_or(9)
    };
    results.sort_by_key(rank);
    args.listing.write(results.iter(), &report.counts)?;
    summary(&report.counts, started, &args.listing);
    Ok(crate::gate(&report.counts))
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
        state: pb::UrlState::Checked as i32,
    }
}
