//! `urlfleet-worker`: checks the URLs a coordinator leases to it.

use clap::Parser;
use urlfleet_shared::telemetry::{self, LogFormat, TelemetryConfig};
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
    let telemetry = telemetry::init_with(TelemetryConfig::new("urlfleet-worker", "info", args.log_format));
    let outcome = urlfleet_worker::run(args.config, urlfleet_shared::shutdown::signal()).await;
    telemetry.shutdown().await;
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("urlfleet-worker: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
