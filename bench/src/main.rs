//! `urlfleet-bench`: measures urlfleet side by side with lychee and the raw `wrk` rate, in one run,
//! against real HTTP servers on loopback, and prints a table of figures and ratios.
//!
//! Scenarios: `throughput`, `polite`, `scaling`, `ingest`, `bigjob`, `many-hosts`, `some-fail`,
//! `strict-load`, `big-polite`, `trust`, `coordinators`, `million`, `one-url-hosts`, `repeated`, or `all`; `--smoke` shrinks
//! every size so the whole run takes seconds (CI runs it so the harness cannot rot).

mod proc;
mod scenarios;

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

#[derive(Parser)]
#[command(name = "urlfleet-bench", about = "urlfleet benchmarks")]
struct Args {
    /// Scenarios to run.
    #[arg(value_enum, default_values_t = [Scenario::All])]
    scenarios: Vec<Scenario>,
    /// Tiny sizes: checks that the harness works, measures nothing worth reporting.
    #[arg(long)]
    smoke: bool,
    /// PostgreSQL server for the cluster scenarios (a database per scenario is created on it).
    #[arg(long, env = "DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    database_url: String,
    /// Where to write the table (Markdown) in addition to standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    All,
    Throughput,
    Polite,
    Scaling,
    Ingest,
    Bigjob,
    ManyHosts,
    SomeFail,
    StrictLoad,
    BigPolite,
    Trust,
    Coordinators,
    Million,
    OneUrlHosts,
    Repeated,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ctx = scenarios::Ctx::new(args.smoke, args.database_url.clone())?;
    let all = args.scenarios.contains(&Scenario::All);
    let want = |s: Scenario| all || args.scenarios.contains(&s);
    let mut report = scenarios::Report::default();
    report.header(&ctx);
    if want(Scenario::Throughput) {
        scenarios::throughput(&ctx, &mut report).await?;
    }
    if want(Scenario::Polite) {
        scenarios::polite(&ctx, &mut report).await?;
    }
    if want(Scenario::Scaling) {
        scenarios::scaling(&ctx, &mut report).await?;
    }
    if want(Scenario::Ingest) {
        scenarios::ingest(&ctx, &mut report).await?;
    }
    if want(Scenario::Bigjob) {
        scenarios::bigjob(&ctx, &mut report).await?;
    }
    if want(Scenario::ManyHosts) {
        scenarios::many_hosts(&ctx, &mut report).await?;
    }
    if want(Scenario::SomeFail) {
        scenarios::some_fail(&ctx, &mut report).await?;
    }
    if want(Scenario::StrictLoad) {
        scenarios::strict_load(&ctx, &mut report).await?;
    }
    if want(Scenario::BigPolite) {
        scenarios::big_polite(&ctx, &mut report).await?;
    }
    if want(Scenario::Trust) {
        scenarios::trust(&ctx, &mut report).await?;
    }
    if want(Scenario::Coordinators) {
        scenarios::coordinators(&ctx, &mut report).await?;
    }
    if want(Scenario::Million) {
        scenarios::million(&ctx, &mut report).await?;
    }
    if want(Scenario::OneUrlHosts) {
        scenarios::one_url_hosts(&ctx, &mut report).await?;
    }
    if want(Scenario::Repeated) {
        scenarios::repeated(&ctx, &mut report).await?;
    }
    let text = report.render();
    println!("{text}");
    if let Some(out) = args.out {
        std::fs::write(&out, &text)?;
    }
    Ok(())
}
