//! `urlfleet-worker`: checks the URLs a coordinator leases to it.

use clap::Parser;
use urlfleet_shared::telemetry::{self, LogFormat};
use urlfleet_worker::WorkerConfig;

#[derive(Parser)]
#[command(name = "urlfleet-worker", version, about = "urlfleet worker")]
struct Args {
    #[command(flatten)]
    config: WorkerConfig,
    /// Log format: text or json.
    #[arg(long, env = "URLFLEET_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    telemetry::init("info", args.log_format);
    match urlfleet_worker::run(args.config, urlfleet_shared::shutdown::signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("urlfleet-worker: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
