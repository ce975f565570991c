//! What the CLI prints: job summaries, progress lines and result listings (table, JSON lines, CSV).
//! Names come from the domain types, so a kind or class reads the same everywhere.

use std::io::Write;

use urlfleet_shared::convert::{class_from_pb, kind_from_pb};
use urlfleet_shared::job::{JobCounts, JobState, Priority};
use urlfleet_shared::proto::v1 as pb;
use urlfleet_shared::time::rfc3339;
use urlfleet_shared::url::printable;

/// Output format of result listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// One JSON object per line.
    Json,
    /// Comma-separated values with a header.
    Csv,
}

/// Display name of a class; `pending` while unresolved.
pub fn class_name(c: i32) -> &'static str {
    class_from_pb(c).map_or("pending", |c| c.as_str())
}

/// Display name of a kind; `pending` while unresolved.
pub fn kind_name(k: i32) -> &'static str {
    kind_from_pb(k).ok().flatten().map_or("pending", |k| k.as_str())
}

/// Display name of a job state.
pub fn state_name(s: i32) -> &'static str {
    JobState::try_from(s).map_or("unknown", JobState::as_str)
}

/// A job's counts as the domain reads them.
pub fn counts(job: &pb::Job) -> JobCounts {
    job.counts.as_ref().map(JobCounts::from).unwrap_or_default()
}

/// One-line progress of a job.
pub fn progress_line(job: &pb::Job) -> String {
    let c = counts(job);
    format!(
        "job {} {}: {}/{} resolved ({} ok, {} redirected, {} broken, {} errors, {} invalid{})",
        job.id,
        state_name(job.state),
        c.total - c.unresolved(),
        c.total,
        c.ok,
        c.redirected,
        c.broken,
        c.error,
        c.invalid,
        if c.cancelled > 0 { format!(", {} cancelled", c.cancelled) } else { String::new() },
    )
}

/// A progress bar on standard error, with rate and ETA; drawn only when standard error is a
/// terminal.
pub fn progress_bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(Some(0), indicatif::ProgressDrawTarget::stderr());
    let style = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} URLs {per_sec} eta {eta} {msg}")
        .expect("a valid progress template");
    bar.set_style(style);
    bar
}

/// Shows a job's progress on its bar.
pub fn show_progress(bar: &indicatif::ProgressBar, job: &pb::Job) {
    let c = counts(job);
    bar.set_length(c.total);
    bar.set_position(c.total - c.unresolved());
    bar.set_message(format!(
        "{}: {} ok, {} redirected, {} broken, {} errors, {} invalid",
        state_name(job.state),
        c.ok,
        c.redirected,
        c.broken,
        c.error,
        c.invalid
    ));
}

/// Multi-line description of a job.
pub fn job_details(job: &pb::Job) -> String {
    let c = counts(job);
    let mut s = format!("job {}", job.id);
    if !job.name.is_empty() {
        s.push_str(&format!(" ({})", printable(&job.name)));
    }
    let priority = urlfleet_shared::convert::priority_from_pb(job.priority).ok().flatten().unwrap_or(Priority::Low);
    s.push_str(&format!(
        "\n  state      {}\n  priority   {priority}\n  created    {}\n",
        state_name(job.state),
        rfc3339(job.created_at_ms)
    ));
    if job.finished_at_ms > 0 {
        s.push_str(&format!("  finished   {}\n", rfc3339(job.finished_at_ms)));
    }
    s.push_str(&format!(
        "  urls       {} distinct of {} received ({} duplicates collapsed)\n  progress   {} checked, {} fresh, {} pending, {} leased, {} failed, {} cancelled\n  outcomes   {} ok, {} redirected, {} broken, {} errors, {} invalid",
        c.total, c.received, c.duplicates, c.checked, c.fresh, c.pending(), c.leased, c.failed, c.cancelled, c.ok, c.redirected, c.broken, c.error, c.invalid
    ));
    s
}

/// Jobs as a table.
pub fn jobs_table(jobs: &[pb::Job]) -> comfy_table::Table {
    use comfy_table::{CellAlignment, Table, presets};
    let mut t = Table::new();
    t.load_preset(presets::NOTHING);
    t.set_header(["id", "state", "total", "resolved", "broken", "errors", "created", "name"]);
    for j in jobs {
        let c = counts(j);
        t.add_row([
            j.id.to_string(),
            state_name(j.state).to_string(),
            c.total.to_string(),
            (c.total - c.unresolved()).to_string(),
            c.broken.to_string(),
            c.error.to_string(),
            rfc3339(j.created_at_ms),
            printable(&j.name).into_owned(),
        ]);
    }
    for col in [0, 2, 3, 4, 5] {
        if let Some(c) = t.column_mut(col) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    t
}

/// Writes results in the chosen format, one at a time (a listing of millions is never held).
pub struct ResultWriter<W: Write> {
    out: Output<W>,
}

enum Output<W: Write> {
    Table(W),
    Json(W),
    Csv(Box<csv::Writer<W>>),
}

impl<W: Write> ResultWriter<W> {
    /// A writer on `out`.
    pub fn new(out: W, format: Format) -> Self {
        let out = match format {
            Format::Table => Output::Table(out),
            Format::Json => Output::Json(out),
            Format::Csv => Output::Csv(Box::new(csv::Writer::from_writer(out))),
        };
        Self { out }
    }

    /// Writes one result.
    pub fn write(&mut self, r: &pb::UrlResult) -> std::io::Result<()> {
        let status = if r.status == 0 { String::new() } else { r.status.to_string() };
        match &mut self.out {
            Output::Table(out) => {
                let detail = if !r.error.is_empty() {
                    r.error.clone()
                } else if !r.redirects.is_empty() {
                    format!("→ {}", r.final_url)
                } else {
                    String::new()
                };
                let status = if status.is_empty() { "-" } else { &status };
                let (class, kind) = (class_name(r.outcome_class), kind_name(r.kind));
                // Text from the input and from servers is escaped: it cannot drive the terminal.
                let (url, detail) = (printable(&r.url), printable(&detail));
                writeln!(out, "{class:<10} {status:>4}  {kind:<18} {url}  {detail}")
            }
            Output::Json(out) => {
                let v = serde_json::json!({
                    "url": r.url,
                    "class": class_name(r.outcome_class),
                    "kind": kind_name(r.kind),
                    "status": (r.status != 0).then_some(r.status),
                    "final_url": (!r.final_url.is_empty()).then_some(&r.final_url),
                    "redirects": r.redirects.iter().map(|h| serde_json::json!({"url": h.url, "status": h.status})).collect::<Vec<_>>(),
                    "attempts": r.attempts,
                    "response_time_ms": r.response_time_ms,
                    "content_type": (!r.content_type.is_empty()).then_some(&r.content_type),
                    "content_length": r.content_length,
                    "checked_at": (r.checked_at_ms > 0).then(|| rfc3339(r.checked_at_ms)),
                    "error": (!r.error.is_empty()).then_some(&r.error),
                    "fresh": r.fresh,
                });
                writeln!(out, "{v}")
            }
            Output::Csv(out) => out
                .serialize(CsvRow {
                    url: &r.url,
                    class: class_name(r.outcome_class),
                    kind: kind_name(r.kind),
                    status: &status,
                    final_url: &r.final_url,
                    redirects: r.redirects.len(),
                    attempts: r.attempts,
                    response_time_ms: r.response_time_ms,
                    checked_at: rfc3339(r.checked_at_ms),
                    error: &r.error,
                })
                .map_err(std::io::Error::other),
        }
    }

    /// Flushes the output.
    pub fn finish(self) -> std::io::Result<()> {
        match self.out {
            Output::Table(mut out) | Output::Json(mut out) => out.flush(),
            Output::Csv(mut out) => out.flush(),
        }
    }
}

/// A result as a CSV row; the header comes from the field names.
#[derive(serde::Serialize)]
struct CsvRow<'a> {
    url: &'a str,
    class: &'static str,
    kind: &'static str,
    status: &'a str,
    final_url: &'a str,
    redirects: usize,
    attempts: u32,
    response_time_ms: u64,
    checked_at: String,
    error: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_are_quoted_when_needed_and_read_back() {
        let mut buf = Vec::new();
        let mut w = ResultWriter::new(&mut buf, Format::Csv);
        let r = pb::UrlResult {
            url: "http://a.example/x,y".into(),
            outcome_class: pb::OutcomeClass::Broken as i32,
            kind: pb::OutcomeKind::Broken as i32,
            status: 404,
            error: "say \"hi\"\nagain".into(),
            ..Default::default()
        };
        w.write(&r).unwrap();
        w.finish().unwrap();
        let mut rd = csv::Reader::from_reader(buf.as_slice());
        assert_eq!(rd.headers().unwrap().get(0), Some("url"));
        let row = rd.records().next().unwrap().unwrap();
        assert_eq!((&row[0], &row[1], &row[2], &row[3]), ("http://a.example/x,y", "broken", "broken", "404"));
        assert_eq!(&row[9], "say \"hi\"\nagain");
    }
}
