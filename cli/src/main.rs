//! `urlfleet`: check the HTTP status of very large URL sets, on a laptop or as a cluster.
//!
//! Exit codes: 0 success (and, for `check` / `submit --watch`, nothing broken); 1 runtime error
//! (coordinator or database unreachable, I/O); 2 broken URLs found; 3 usage or configuration error.

mod check;
mod client;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use tracing::Instrument;
use urlfleet_coordinator::CoordinatorConfig;
use urlfleet_shared::OutcomeClass;
use urlfleet_shared::job::{JobOptions, JobState, PolicyOverride, Priority};
use urlfleet_shared::proto::v1 as pb;
use urlfleet_shared::telemetry::{self, LogFormat, TelemetryConfig};
use urlfleet_worker::WorkerConfig;

// Checks allocate and free small buffers on every thread at a high rate: a thread-caching allocator
// keeps that off the shared arenas' locks.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use crate::output::Format;

/// Exit code when broken URLs were found.
pub const EXIT_BROKEN: u8 = 2;
/// Exit code of usage and configuration errors.
pub const EXIT_USAGE: u8 = 3;

#[derive(Parser)]
#[command(name = "urlfleet", version, about = "Check the HTTP status of very large URL sets", propagate_version = true)]
struct Cli {
    /// Log format: text or json (logs go to standard error).
    #[arg(long, global = true, env = "URLFLEET_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// Connection to a coordinator.
#[derive(clap::Args, Clone)]
struct Remote {
    /// Coordinator address: http://HOST:PORT, or https://HOST:PORT for TLS.
    #[arg(long, env = "URLFLEET_COORDINATOR", default_value = "http://127.0.0.1:7700")]
    coordinator: String,
    #[command(flatten)]
    auth: urlfleet_shared::connect::ClientAuth,
}

impl Remote {
    async fn connect(&self) -> Result<client::Client> {
        client::connect(&urlfleet_shared::connect::Target::Address(self.coordinator.clone()), &self.auth).await
    }
}

/// Options of a submitted job.
#[derive(clap::Args, Clone, Default)]
pub struct JobArgs {
    /// Job name.
    #[arg(long, default_value = "")]
    pub name: String,
    /// Priority: high, medium or low (default: from the job's size).
    #[arg(long, value_parser = clap::builder::TypedValueParser::try_map(clap::builder::PossibleValuesParser::new(["high", "medium", "low"]), |s| s.parse::<Priority>()))]
    pub priority: Option<Priority>,
    /// Check every URL, even those checked recently.
    #[arg(long)]
    pub force: bool,
    /// Concurrent requests per host (default 2).
    #[arg(long)]
    pub host_concurrency: Option<u32>,
    /// Minimum interval between request starts to one host (default 100ms).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub host_interval: Option<std::time::Duration>,
    /// Per-host politeness, HOST=CONCURRENCY/INTERVAL, e.g. example.com=16/0ms (repeatable).
    #[arg(long = "host-policy", value_parser = urlfleet_shared::convert::parse_host_policy)]
    pub host_policies: Vec<(String, PolicyOverride)>,
    /// Label KEY=VALUE (repeatable).
    #[arg(long = "label", value_parser = client::parse_label)]
    pub labels: Vec<(String, String)>,
    /// Idempotency key: retrying a submission with the same key returns the first job.
    #[arg(long, default_value = "")]
    pub idempotency_key: String,
}

impl JobArgs {
    /// The job's options.
    pub fn options(&self) -> JobOptions {
        JobOptions {
            name: self.name.clone(),
            priority: self.priority,
            force: self.force,
            politeness: PolicyOverride {
                concurrency: self.host_concurrency,
                interval_ms: self.host_interval.map(|d| d.as_millis() as u64),
            },
            host_policies: self.host_policies.iter().cloned().collect(),
            labels: self.labels.iter().cloned().collect(),
            idempotency_key: (!self.idempotency_key.is_empty()).then(|| self.idempotency_key.clone()),
            ..Default::default()
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Check every URL of a list on this machine (embedded coordinator and worker) and print a summary.
    Check(check::CheckArgs),
    /// Run a coordinator.
    Coordinator(Box<CoordinatorConfig>),
    /// Run a worker.
    Worker(WorkerConfig),
    /// Submit a URL list to a coordinator as a job.
    Submit {
        /// File with one URL per line, or - for standard input.
        file: PathBuf,
        /// Follow the job until it ends, then print its summary.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        job: JobArgs,
        #[command(flatten)]
        remote: Remote,
    },
    /// List jobs, newest first.
    Jobs {
        /// Only jobs in this state: receiving, scheduled, running, completed or cancelled.
        #[arg(long)]
        state: Option<JobState>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show one job.
    Status {
        /// Job id.
        id: i64,
        #[command(flatten)]
        remote: Remote,
    },
    /// Follow a job's progress until it ends.
    Watch {
        /// Job id.
        id: i64,
        #[command(flatten)]
        remote: Remote,
    },
    /// Print a job's per-URL results.
    Results {
        /// Job id.
        id: i64,
        /// Only these classes: ok, redirected, broken, error, invalid (repeatable or comma-separated).
        #[arg(long, value_delimiter = ',')]
        only: Vec<OutcomeClass>,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        #[command(flatten)]
        remote: Remote,
    },
    /// Cancel a job; finished results are kept.
    Cancel {
        /// Job id.
        id: i64,
        #[command(flatten)]
        remote: Remote,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let (default_filter, service) = match cli.command {
        Command::Coordinator(_) => ("info", "urlfleet-coordinator"),
        Command::Worker(_) => ("info", "urlfleet-worker"),
        _ => ("warn", "urlfleet"),
    };
    let format = cli.log_format;
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("urlfleet: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async move {
        let telemetry = telemetry::init_with(TelemetryConfig::new(service, default_filter, format));
        let outcome = run(cli.command).await;
        telemetry.shutdown().await;
        outcome
    });
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("urlfleet: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<ExitCode> {
    let shutdown = urlfleet_shared::shutdown::signal;
    match command {
        Command::Check(args) => check::run(args).await,
        Command::Coordinator(config) => {
            urlfleet_coordinator::serve(*config, shutdown()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Worker(config) => {
            urlfleet_worker::run(config, shutdown()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Submit { file, watch, job, remote } => {
            let mut c = remote.connect().await?;
            let span = tracing::info_span!("submit", otel.kind = "client", file = %file.display());
            let resp = client::submit(&mut c, &file, (&job.options()).into()).instrument(span).await?;
            let submitted = resp.job.unwrap_or_default();
            if resp.deduplicated {
                eprintln!("an identical job is already scheduled or running: job {}", submitted.id);
            }
            println!("{}", submitted.id);
            if !watch {
                return Ok(ExitCode::SUCCESS);
            }
            let done = follow(&mut c, submitted.id).await?;
            println!("{}", output::job_details(&done));
            Ok(gate(&done))
        }
        Command::Jobs { state, limit, remote } => {
            let mut c = remote.connect().await?;
            let states = state.map(|s| vec![pb::JobState::from(s) as i32]).unwrap_or_default();
            let resp = c
                .list_jobs(pb::ListJobsRequest { page_size: limit, page_token: String::new(), states })
                .await
                .map_err(client::status_error)?
                .into_inner();
            println!("{}", output::jobs_table(&resp.jobs));
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { id, remote } => {
            let mut c = remote.connect().await?;
            let job = c.get_job(pb::GetJobRequest { id }).await.map_err(client::status_error)?.into_inner();
            println!("{}", output::job_details(&job));
            Ok(ExitCode::SUCCESS)
        }
        Command::Watch { id, remote } => {
            let mut c = remote.connect().await?;
            let done = follow(&mut c, id).await?;
            println!("{}", output::job_details(&done));
            Ok(gate(&done))
        }
        Command::Results { id, only, format, remote } => {
            let mut c = remote.connect().await?;
            let classes: Vec<pb::OutcomeClass> = only.into_iter().map(Into::into).collect();
            let stdout = std::io::stdout().lock();
            let mut w = output::ResultWriter::new(std::io::BufWriter::new(stdout), format);
            client::results(&mut c, id, &classes, |r| Ok(w.write(&r)?)).await?;
            w.finish()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel { id, remote } => {
            let mut c = remote.connect().await?;
            let job = c.cancel_job(pb::CancelJobRequest { id }).await.map_err(client::status_error)?.into_inner();
            println!("{}", output::progress_line(&job));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Follows a job, printing progress to standard error when it is a terminal.
async fn follow(c: &mut client::Client, id: i64) -> Result<pb::Job> {
    let bar = output::progress_bar();
    let done = client::watch(c, id, |j| output::show_progress(&bar, j)).await?;
    bar.finish_and_clear();
    Ok(done)
}

/// Exit code of a finished job: 2 when anything is broken, errored or invalid.
fn gate(job: &pb::Job) -> ExitCode {
    if output::counts(job).failures() > 0 { ExitCode::from(EXIT_BROKEN) } else { ExitCode::SUCCESS }
}
