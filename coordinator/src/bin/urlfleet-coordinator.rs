//! `urlfleet-coordinator`: serves the job and worker APIs on one address.

use clap::Parser;
use urlfleet_coordinator::CoordinatorConfig;
use urlfleet_shared::telemetry::{self, LogFormat, TelemetryConfig};

#[derive(Parser)]
#[command(name = "urlfleet-coordinator", version, about = "urlfleet coordinator")]
struct Args {
    #[command(flatten)]
    config: CoordinatorConfig,
    /// Log format: text or json.
    #[arg(long, env = "URLFLEET_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let telemetry = telemetry::init_with(TelemetryConfig::new("urlfleet-coordinator", "info", args.log_format));
    let outcome = urlfleet_coordinator::serve(args.config, urlfleet_shared::shutdown::signal()).await;
    telemetry.shutdown().await;
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("urlfleet-coordinator: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
