//! `urlfleet report` (what changed since the previous run of the same list) and `urlfleet history`
//! (a URL's checks over time), from a coordinator or from the embedded store `check` writes.

use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;

use anyhow::{Result, bail};
use tokio::sync::oneshot;
use urlfleet_coordinator::CoordinatorConfig;
use urlfleet_shared::OutcomeClass;
use urlfleet_shared::connect::{ClientAuth, Target};
use urlfleet_shared::convert;
use urlfleet_shared::proto::v1 as pb;
use urlfleet_shared::time::rfc3339;
use urlfleet_shared::url::printable;

use crate::client::{self, Client};
use crate::output::{self, Format};

/// Where jobs are read from: a coordinator, or the embedded store of `check`.
#[derive(clap::Args, Clone)]
pub struct Source {
    /// Coordinator to ask, http(s)://HOST:PORT (default: the embedded store of --db).
    #[arg(long, env = "URLFLEET_COORDINATOR")]
    coordinator: Option<String>,
    /// The embedded store `check` writes, when no coordinator is given.
    #[arg(long, env = "URLFLEET_DB", default_value = "sqlite:urlfleet.db")]
    db: String,
    #[command(flatten)]
    auth: ClientAuth,
}

/// A connection to the source; an embedded coordinator runs until it is dropped.
struct Connected {
    client: Client,
    _embedded: Option<oneshot::Sender<()>>,
}

impl Source {
    async fn connect(&self) -> Result<Connected> {
        if let Some(address) = &self.coordinator {
            let client = client::connect(&Target::Address(address.clone()), &self.auth).await?;
            return Ok(Connected { client, _embedded: None });
        }
        if let Some(path) = self.db.strip_prefix("sqlite:")
            && !std::path::Path::new(path.split('?').next().unwrap_or(path)).exists()
        {
            bail!("no store at {path}: run `urlfleet check` first, or name a coordinator with --coordinator");
        }
        // The store `check` wrote, served in-process: nothing listens on a socket.
        let store = urlfleet_coordinator::store::connect(&self.db).await?;
        let (connector, incoming) = urlfleet_shared::inprocess::pair();
        let config = CoordinatorConfig::new(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), self.db.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(urlfleet_coordinator::run(incoming, store, config, async {
            let _ = stopped.await;
        }));
        let client = client::connect(&Target::InProcess(connector), &ClientAuth::default()).await?;
        Ok(Connected { client, _embedded: Some(stop) })
    }
}

/// Arguments of `urlfleet report`.
#[derive(clap::Args)]
pub struct ReportArgs {
    /// The list or job name (an unnamed job is named after its inputs, e.g. `urls.txt`); default:
    /// the name of the newest completed job.
    name: Option<String>,
    /// Report on this job (compared with the previous completed job of its name).
    #[arg(long, conflicts_with = "name")]
    job: Option<i64>,
    /// Output format (table, json, ndjson, csv or markdown).
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    #[command(flatten)]
    source: Source,
}

/// Arguments of `urlfleet history`.
#[derive(clap::Args)]
pub struct HistoryArgs {
    /// The URL, as it was submitted.
    url: String,
    /// At most this many checks, newest first.
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    #[command(flatten)]
    source: Source,
}

/// How a URL changed between two runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    NewlyBroken,
    NewlyFixed,
    StillBroken,
}

impl Change {
    const ALL: [Self; 3] = [Self::NewlyBroken, Self::NewlyFixed, Self::StillBroken];

    fn as_str(self) -> &'static str {
        match self {
            Self::NewlyBroken => "newly broken",
            Self::NewlyFixed => "newly fixed",
            Self::StillBroken => "still broken",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Self::NewlyBroken => "newly_broken",
            Self::NewlyFixed => "newly_fixed",
            Self::StillBroken => "still_broken",
        }
    }
}

/// A URL's outcome in the previous run.
#[derive(Debug, Clone)]
struct Before {
    class: &'static str,
    status: u32,
}

/// The classes a report counts as broken.
const FAILING: [OutcomeClass; 2] = [OutcomeClass::Broken, OutcomeClass::Error];
const PASSING: [OutcomeClass; 2] = [OutcomeClass::Ok, OutcomeClass::Redirected];

/// Compares the newest completed job of a name with the one before it.
pub async fn report(args: ReportArgs) -> Result<ExitCode> {
    if args.format == Format::Junit {
        eprintln!("urlfleet: a report is table, json, ndjson, csv or markdown");
        return Ok(ExitCode::from(crate::EXIT_USAGE));
    }
    let mut conn = args.source.connect().await?;
    let c = &mut conn.client;
    let (current, previous) = pick_jobs(c, args.name.as_deref(), args.job).await?;
    let mut before: HashMap<String, Before> = HashMap::new();
    if let Some(p) = &previous {
        for class in FAILING {
            client::results(c, p.id, &[class.into()], |r| {
                before.insert(r.url.clone(), Before { class: convert::class_name(&r), status: r.status });
                Ok(())
            })
            .await?;
        }
    } else {
        eprintln!("job {} is the first completed run of {:?}: every failure is new", current.id, current.name);
    }
    let mut changes: Vec<(Change, pb::UrlResult, Option<Before>)> = Vec::new();
    for class in FAILING {
        client::results(c, current.id, &[class.into()], |r| {
            let was = before.remove(&r.url);
            let change = if was.is_some() { Change::StillBroken } else { Change::NewlyBroken };
            changes.push((change, r, was));
            Ok(())
        })
        .await?;
    }
    if !before.is_empty() {
        for class in PASSING {
            client::results(c, current.id, &[class.into()], |r| {
                if let Some(was) = before.remove(&r.url) {
                    changes.push((Change::NewlyFixed, r, Some(was)));
                }
                Ok(())
            })
            .await?;
        }
    }
    // Grouped by change, by URL within a group.
    changes.sort_by(|a, b| {
        let rank = |c: Change| Change::ALL.iter().position(|x| *x == c);
        rank(a.0).cmp(&rank(b.0)).then_with(|| a.1.url.cmp(&b.1.url))
    });
    let newly_broken = changes.iter().filter(|c| c.0 == Change::NewlyBroken).count();
    write_report(&current, previous.as_ref(), &changes, args.format)?;
    eprintln!(
        "job {} against {}: {} newly broken, {} newly fixed, {} still broken",
        current.id,
        previous.as_ref().map_or("nothing".to_string(), |p| format!("job {}", p.id)),
        newly_broken,
        changes.iter().filter(|c| c.0 == Change::NewlyFixed).count(),
        changes.iter().filter(|c| c.0 == Change::StillBroken).count(),
    );
    Ok(if newly_broken > 0 { ExitCode::from(crate::EXIT_BROKEN) } else { ExitCode::SUCCESS })
}

/// The job reported on and the previous completed job of its name.
async fn pick_jobs(c: &mut Client, name: Option<&str>, id: Option<i64>) -> Result<(pb::Job, Option<pb::Job>)> {
    let mut current: Option<pb::Job> = match id {
        Some(id) => Some(c.get_job(pb::GetJobRequest { id }).await.map_err(client::status_error)?.into_inner()),
        None => None,
    };
    let mut wanted: Option<String> = current.as_ref().map(|j| j.name.clone()).or_else(|| name.map(str::to_string));
    let mut page_token = String::new();
    loop {
        let page = c
            .list_jobs(pb::ListJobsRequest {
                page_size: 1_000,
                page_token: page_token.clone(),
                states: vec![pb::JobState::Completed as i32],
            })
            .await
            .map_err(client::status_error)?
            .into_inner();
        for job in page.jobs {
            let name = wanted.get_or_insert_with(|| job.name.clone());
            if job.name != *name {
                continue;
            }
            match &current {
                None => current = Some(job),
                Some(cur) if job.id < cur.id => return Ok((current.expect("set"), Some(job))),
                Some(_) => {}
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    match current {
        Some(cur) => Ok((cur, None)),
        None => match wanted {
            Some(n) => bail!("no completed job named {n:?}"),
            None => bail!("no completed job yet"),
        },
    }
}

fn write_report(
    current: &pb::Job,
    previous: Option<&pb::Job>,
    changes: &[(Change, pb::UrlResult, Option<Before>)],
    format: Format,
) -> Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let was = |b: &Option<Before>| b.as_ref().map(|b| (b.class, b.status));
    match format {
        Format::Table | Format::Markdown => {
            let md = format == Format::Markdown;
            if md {
                writeln!(
                    out,
                    "## {} — job {} against {}\n",
                    output::md_cell(&current.name),
                    current.id,
                    job_label(previous)
                )?;
            } else {
                writeln!(out, "{} — job {} against {}", printable(&current.name), current.id, job_label(previous))?;
            }
            for change in Change::ALL {
                let rows: Vec<_> = changes.iter().filter(|x| x.0 == change).collect();
                if md {
                    writeln!(out, "\n### {} ({})\n", change.as_str(), rows.len())?;
                    if !rows.is_empty() {
                        writeln!(out, "| Status | Was | URL | Detail |\n| ---: | --- | --- | --- |")?;
                    }
                } else {
                    writeln!(out, "\n{} ({})", change.as_str(), rows.len())?;
                }
                for (_, r, b) in rows {
                    let status = if r.status == 0 { convert::kind_name(r).to_string() } else { r.status.to_string() };
                    let before = match was(b) {
                        Some((class, 0)) => class.to_string(),
                        Some((class, s)) => format!("{class} {s}"),
                        None => "new".to_string(),
                    };
                    if md {
                        writeln!(
                            out,
                            "| {status} | {before} | {} | {} |",
                            output::md_cell(&r.url),
                            output::md_cell(&r.error)
                        )?;
                    } else {
                        writeln!(out, "  {status:>5}  (was {before})  {}  {}", printable(&r.url), printable(&r.error))?;
                    }
                }
            }
        }
        Format::Json => {
            let mut doc = serde_json::json!({
                "name": current.name,
                "job": current.id,
                "previous_job": previous.map(|p| p.id),
            });
            for change in Change::ALL {
                let rows: Vec<serde_json::Value> =
                    changes.iter().filter(|x| x.0 == change).map(|(_, r, b)| change_json(r, b)).collect();
                doc[change.key()] = serde_json::Value::Array(rows);
            }
            writeln!(out, "{doc}")?;
        }
        Format::Ndjson => {
            for (change, r, b) in changes {
                let mut v = change_json(r, b);
                v["change"] = change.key().into();
                writeln!(out, "{v}")?;
            }
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(&mut out);
            w.write_record(["change", "url", "class", "kind", "status", "previous_class", "previous_status", "error"])?;
            for (change, r, b) in changes {
                let (pc, ps) = was(b).map_or((String::new(), String::new()), |(c, s)| {
                    (c.to_string(), if s == 0 { String::new() } else { s.to_string() })
                });
                let status = if r.status == 0 { String::new() } else { r.status.to_string() };
                w.write_record([
                    change.key(),
                    &r.url,
                    convert::class_name(r),
                    convert::kind_name(r),
                    &status,
                    &pc,
                    &ps,
                    &r.error,
                ])?;
            }
            w.flush()?;
        }
        Format::Junit => unreachable!("refused above"),
    }
    out.flush()?;
    Ok(())
}

fn job_label(previous: Option<&pb::Job>) -> String {
    previous.map_or("no earlier run".to_string(), |p| format!("job {} ({})", p.id, rfc3339(p.finished_at_ms)))
}

fn change_json(r: &pb::UrlResult, before: &Option<Before>) -> serde_json::Value {
    let mut v = convert::result_json(r);
    v["previous_class"] = before.as_ref().map_or(serde_json::Value::Null, |b| b.class.into());
    v["previous_status"] =
        before.as_ref().filter(|b| b.status != 0).map_or(serde_json::Value::Null, |b| b.status.into());
    v
}

/// Prints a URL's checks, newest first.
pub async fn history(args: HistoryArgs) -> Result<ExitCode> {
    let mut conn = args.source.connect().await?;
    let h = conn
        .client
        .get_url_history(pb::GetUrlHistoryRequest { url: args.url.clone(), limit: args.limit })
        .await
        .map_err(client::status_error)?
        .into_inner();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match args.format {
        Format::Table => {
            writeln!(out, "{}", printable(&h.url))?;
            for r in &h.checks {
                let status = if r.status == 0 { "-".to_string() } else { r.status.to_string() };
                writeln!(
                    out,
                    "  {}  {:<10} {status:>4}  {:<18} {:>6} ms  {}",
                    rfc3339(r.checked_at_ms),
                    convert::class_name(r),
                    convert::kind_name(r),
                    r.response_time_ms,
                    printable(if r.error.is_empty() { &r.final_url } else { &r.error }),
                )?;
            }
            out.flush()?;
        }
        format => {
            let mut w = output::ResultWriter::new(out, format, None);
            for r in &h.checks {
                w.write(r)?;
            }
            w.finish()?;
        }
    }
    eprintln!("{} checks of {}", h.checks.len(), printable(&h.url));
    Ok(ExitCode::SUCCESS)
}
