//! `urlfleet`: check the HTTP status of very large URL sets, on a laptop or as a cluster.
//!
//! Exit codes: 0 success (and, for `check` / `submit --watch` / `watch`, nothing broken, errored or
//! invalid — an empty input included; for `report`, nothing newly broken); 1 runtime error
//! (coordinator or database unreachable, an input that cannot be opened); 2 broken, errored or
//! invalid URLs found (`report`: newly broken ones); 3 usage or configuration error.

mod check;
mod client;
mod config;
mod input;
mod output;
mod report;

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
// keeps that off the shared arenas' locks. It also serves C code's `malloc` (the `override` feature):
// the embedded SQLite allocates and frees for every row it writes or returns.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use crate::output::Format;

/// Exit code when broken URLs were found.
pub const EXIT_BROKEN: u8 = 2;
/// Exit code of usage and configuration errors.
pub const EXIT_USAGE: u8 = 3;

const EXIT_CODES: &str = "Exit codes: 0 nothing broken, errored or invalid (an empty input too); 2 broken, errored \
or invalid URLs found (report: newly broken ones); 1 runtime error (coordinator, database or an input \
unreachable); 3 usage or configuration error.";

/// How results are listed: standard output carries the listing and nothing else.
#[derive(clap::Args, Clone, Debug)]
pub struct Listing {
    /// Output format of the listing.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Only these classes: ok, redirected, broken, error, invalid (repeatable or comma-separated;
    /// default: broken, error and invalid).
    #[arg(long, value_delimiter = ',')]
    only: Vec<OutcomeClass>,
    /// No progress and no summary on standard error.
    #[arg(long, short)]
    quiet: bool,
}

impl Listing {
    /// The classes listed, in listing order.
    fn classes(&self) -> Vec<OutcomeClass> {
        let wanted = |c: &OutcomeClass| if self.only.is_empty() { c.is_failure() } else { self.only.contains(c) };
        output::LISTING_ORDER.iter().copied().filter(wanted).collect()
    }

    fn writer(&self, counts: &urlfleet_shared::job::JobCounts) -> output::ResultWriter<impl std::io::Write> {
        use std::io::IsTerminal;
        let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        let out = std::io::BufWriter::new(std::io::stdout().lock());
        output::ResultWriter::new(out, self.format, Some(*counts)).coloured(colour && self.format == Format::Table)
    }

    /// Lists a job's results of the chosen classes, a class at a time.
    async fn list(&self, c: &mut client::Client, job_id: i64, counts: &urlfleet_shared::job::JobCounts) -> Result<()> {
        let mut w = self.writer(counts);
        for class in self.classes() {
            client::results(c, job_id, &[class.into()], |r| Ok(w.write(&r)?)).await?;
        }
        w.finish()?;
        Ok(())
    }

    /// Lists results already at hand.
    fn write<'a>(
        &self,
        results: impl Iterator<Item = &'a pb::UrlResult>,
        counts: &urlfleet_shared::job::JobCounts,
    ) -> Result<()> {
        let mut w = self.writer(counts);
        for r in results {
            w.write(r)?;
        }
        w.finish()?;
        Ok(())
    }
}

#[derive(Parser)]
#[command(
    name = "urlfleet",
    version,
    about = "Check the HTTP status of very large URL sets",
    propagate_version = true,
    after_help = EXIT_CODES
)]
struct Cli {
    /// Log format: text or json (logs go to standard error).
    #[arg(long, global = true, env = "URLFLEET_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// Configuration file whose keys are the flags of the command run (default: ./urlfleet.toml
    /// when present). Flags given on the command line or in the environment win.
    #[arg(long, global = true, env = "URLFLEET_CONFIG")]
    config: Option<PathBuf>,
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
    /// Submit inputs to a coordinator as a job; prints the job's id.
    Submit {
        /// Inputs, as `check` takes them (files, - for standard input, sitemap URLs).
        #[arg(required = true)]
        inputs: Vec<String>,
        /// Follow the job until it ends, then print its summary.
        #[arg(long)]
        watch: bool,
        /// No progress on standard error.
        #[arg(long, short)]
        quiet: bool,
        #[command(flatten)]
        input: input::InputArgs,
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
    /// Print a job's per-URL results, grouped by class (unresolved ones last).
    Results {
        /// Job id.
        id: i64,
        /// Only these classes: ok, redirected, broken, error, invalid (repeatable or comma-separated;
        /// default: every URL of the job).
        #[arg(long, value_delimiter = ',')]
        only: Vec<OutcomeClass>,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        #[command(flatten)]
        remote: Remote,
    },
    /// What changed since the previous run of the same list (or job name): newly broken, newly
    /// fixed and still broken URLs. Exit 2 when anything is newly broken.
    Report(report::ReportArgs),
    /// A URL's checks over time, newest first.
    History(report::HistoryArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write one per command into a directory.
    Man {
        /// Directory to write urlfleet.1 and urlfleet-COMMAND.1 into.
        #[arg(long)]
        dir: Option<PathBuf>,
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
    let argv = match config::argv_with_config(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("urlfleet: {e:#}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let cli = match Cli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    without_huge_pages();
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

/// Keeps the process off transparent huge pages (the allocator asks for them). A store's buffers —
/// rows handed over by the thousand, result chunks, upload batches — and a store-less check's lists
/// grow and shrink: on huge pages every fresh 2 MiB region they touch is cleared whole by the kernel
/// and stays resident, which inflated peak memory and made the kernel's page clearing the stored
/// paths' largest single cost. The engine alone checks a large list of few hosts faster on huge
/// pages, but not within a store-less check's memory bound; on many hosts it is faster without.
fn without_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        eprintln!("urlfleet: could not turn transparent huge pages off ({e}); going on with them");
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
        Command::Submit { inputs, watch, quiet, input, job, remote } => {
            let mut c = remote.connect().await?;
            let span = tracing::info_span!("submit", otel.kind = "client", inputs = %inputs.join(" "));
            let mut options = job.options();
            if options.name.is_empty() {
                options.name = inputs.join(" ");
            }
            let entries = client::Entries::start(inputs, input);
            let resp = client::submit(&mut c, entries, (&options).into()).instrument(span).await?;
            let submitted = resp.job.unwrap_or_default();
            if resp.deduplicated {
                eprintln!("an identical job is already scheduled or running: job {}", submitted.id);
            }
            println!("{}", submitted.id);
            if !watch {
                return Ok(ExitCode::SUCCESS);
            }
            let done = follow(&mut c, submitted.id, quiet).await?;
            eprintln!("{}", output::job_details(&done));
            Ok(gate(&output::counts(&done)))
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
            let done = follow(&mut c, id, false).await?;
            println!("{}", output::job_details(&done));
            Ok(gate(&output::counts(&done)))
        }
        Command::Results { id, only, format, remote } => {
            let mut c = remote.connect().await?;
            let job = c.get_job(pb::GetJobRequest { id }).await.map_err(client::status_error)?.into_inner();
            let counts = output::counts(&job);
            let every = only.is_empty();
            let listing =
                Listing { format, only: if every { output::LISTING_ORDER.to_vec() } else { only }, quiet: true };
            let mut w = listing.writer(&counts);
            for class in listing.classes() {
                client::results(&mut c, id, &[class.into()], |r| Ok(w.write(&r)?)).await?;
            }
            if every && counts.total > counts.checked + counts.fresh + counts.invalid {
                // The URLs with no outcome (waiting, leased, cancelled, given up without one).
                client::results(&mut c, id, &[], |r| {
                    if r.outcome_class == pb::OutcomeClass::Unspecified as i32 {
                        w.write(&r)?;
                    }
                    Ok(())
                })
                .await?;
            }
            w.finish()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel { id, remote } => {
            let mut c = remote.connect().await?;
            let job = c.cancel_job(pb::CancelJobRequest { id }).await.map_err(client::status_error)?.into_inner();
            println!("{}", output::progress_line(&job));
            Ok(ExitCode::SUCCESS)
        }
        Command::Report(args) => report::report(args).await,
        Command::History(args) => report::history(args).await,
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "urlfleet", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => {
            let cmd = <Cli as clap::CommandFactory>::command();
            match dir {
                None => clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?,
                Some(dir) => {
                    std::fs::create_dir_all(&dir)?;
                    clap_mangen::generate_to(cmd, &dir)?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Follows a job, showing its progress on standard error.
async fn follow(c: &mut client::Client, id: i64, quiet: bool) -> Result<pb::Job> {
    let progress = output::Progress::new(quiet);
    let done = client::watch(c, id, |j| output::show_progress(&progress, j)).await?;
    let counts = output::counts(&done);
    progress.finish(counts.total - counts.unresolved(), counts.total, &output::outcome_note(&done));
    Ok(done)
}

/// Exit code of a finished job: 2 when anything is broken, errored or invalid.
fn gate(counts: &urlfleet_shared::job::JobCounts) -> ExitCode {
    if counts.failures() > 0 { ExitCode::from(EXIT_BROKEN) } else { ExitCode::SUCCESS }
}
