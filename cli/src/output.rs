//! What the CLI prints: job summaries, progress and result listings (table, JSON, NDJSON, CSV,
//! Markdown, JUnit XML). Listings go to standard output and nothing else does; summaries, messages
//! and progress go to standard error. Names come from the domain types, so a kind or class reads the
//! same everywhere.

use std::io::Write;
use std::time::{Duration, Instant};

use urlfleet_shared::convert::{class_from_pb, class_name, kind_name, result_json};
use urlfleet_shared::job::{JobCounts, JobState, Priority};
use urlfleet_shared::proto::v1 as pb;
use urlfleet_shared::time::rfc3339;
use urlfleet_shared::url::printable;

/// Output format of result listings (standard output carries nothing else).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned lines grouped by class, coloured on a terminal.
    Table,
    /// One JSON document: `{"counts": {...}, "results": [...]}`.
    Json,
    /// One JSON object per result and line, streamed.
    Ndjson,
    /// Comma-separated values with a header.
    Csv,
    /// Markdown tables, one section per class.
    Markdown,
    /// JUnit XML, one test case per URL (for CI test reports).
    Junit,
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

/// Progress on standard error: a live bar with rate and ETA when it is a terminal, a one-line
/// status every few seconds when it is not (a CI log), nothing with `--quiet`.
pub enum Progress {
    /// `--quiet`.
    Hidden,
    /// A terminal.
    Bar(indicatif::ProgressBar),
    /// A log: the first update, then one line per period, and the last.
    Lines { started: Instant, last: std::sync::Mutex<Option<Instant>>, period: Duration },
}

/// Between two status lines on a standard error that is not a terminal.
const STATUS_PERIOD: Duration = Duration::from_secs(5);

impl Progress {
    /// The display standard error calls for.
    pub fn new(quiet: bool) -> Self {
        use std::io::IsTerminal;
        if quiet {
            Self::Hidden
        } else if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::with_draw_target(Some(0), indicatif::ProgressDrawTarget::stderr());
            let style = indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} URLs {per_sec} eta {eta} {msg}",
            )
            .expect("a valid progress template");
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(200));
            Self::Bar(bar)
        } else {
            Self::Lines { started: Instant::now(), last: std::sync::Mutex::new(None), period: STATUS_PERIOD }
        }
    }

    /// Shows `done` of `total` URLs, and a short note.
    pub fn update(&self, done: u64, total: u64, note: &str) {
        match self {
            Self::Hidden => {}
            Self::Bar(bar) => {
                bar.set_length(total);
                bar.set_position(done);
                bar.set_message(note.to_string());
            }
            Self::Lines { started, last, period } => {
                let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                if last.is_some_and(|at| at.elapsed() < *period) {
                    return;
                }
                *last = Some(Instant::now());
                eprintln!("{}", status_line(started.elapsed(), done, total, note));
            }
        }
    }

    /// Ends the display: the bar is cleared, a log gets its last line.
    pub fn finish(&self, done: u64, total: u64, note: &str) {
        match self {
            Self::Hidden => {}
            Self::Bar(bar) => bar.finish_and_clear(),
            Self::Lines { started, .. } => eprintln!("{}", status_line(started.elapsed(), done, total, note)),
        }
    }
}

/// `12000/100000 URLs (12%) 2400/s eta 37s: …`; no rate nor ETA in the first second, where they
/// would say more about when the display started than about the job.
fn status_line(elapsed: Duration, done: u64, total: u64, note: &str) -> String {
    let pct = (done * 100).checked_div(total).unwrap_or(100);
    let mut speed = String::new();
    if elapsed >= Duration::from_secs(1) {
        let rate = done as f64 / elapsed.as_secs_f64();
        speed = format!(" {rate:.0}/s");
        if rate > 0.0 && total > done {
            speed.push_str(&format!(" eta {}s", ((total - done) as f64 / rate).ceil() as u64));
        }
    }
    let note = if note.is_empty() { String::new() } else { format!(": {note}") };
    format!("{done}/{total} URLs ({pct}%){speed}{note}")
}

/// Shows a job's progress.
pub fn show_progress(progress: &Progress, job: &pb::Job) {
    let c = counts(job);
    progress.update(c.total - c.unresolved(), c.total, &outcome_note(job));
}

/// `running: 10 ok, 0 redirected, 2 broken, …`
pub fn outcome_note(job: &pb::Job) -> String {
    let c = counts(job);
    format!(
        "{}: {} ok, {} redirected, {} broken, {} errors, {} invalid{}",
        state_name(job.state),
        c.ok,
        c.redirected,
        c.broken,
        c.error,
        c.invalid,
        if c.cancelled > 0 { format!(", {} cancelled", c.cancelled) } else { String::new() },
    )
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

/// Writes results in the chosen format, one at a time (a listing of millions is never held, except
/// by JUnit, whose header counts its cases). Results arrive grouped by class where the format
/// groups them (table, Markdown).
pub struct ResultWriter<W: Write> {
    out: Output<W>,
    format: Format,
    counts: Option<JobCounts>,
    colour: bool,
    /// The class of the group being written.
    group: Option<&'static str>,
    written: u64,
    junit: Vec<(String, Option<(bool, String)>)>,
}

enum Output<W: Write> {
    Plain(W),
    Csv(Box<csv::Writer<W>>),
}

impl<W: Write> ResultWriter<W> {
    /// A writer on `out`; `counts` (the job's, when known) head the JSON document and the group
    /// titles.
    pub fn new(out: W, format: Format, counts: Option<JobCounts>) -> Self {
        let out = match format {
            Format::Csv => Output::Csv(Box::new(csv::Writer::from_writer(out))),
            _ => Output::Plain(out),
        };
        Self { out, format, counts, colour: false, group: None, written: 0, junit: Vec::new() }
    }

    /// Colours the table's classes (when standard output is a terminal and `NO_COLOR` is unset).
    pub fn coloured(mut self, colour: bool) -> Self {
        self.colour = colour;
        self
    }

    fn plain(&mut self) -> &mut W {
        match &mut self.out {
            Output::Plain(w) => w,
            Output::Csv(_) => unreachable!("CSV writes through its writer"),
        }
    }

    /// Writes one result.
    pub fn write(&mut self, r: &pb::UrlResult) -> std::io::Result<()> {
        let status = if r.status == 0 { String::new() } else { r.status.to_string() };
        let class = class_name(r);
        let first_of_group = self.group != Some(class);
        self.group = Some(class);
        let n = self.written;
        self.written += 1;
        match self.format {
            Format::Table => {
                let count = self.counts.as_ref().map(|c| class_count(c, class));
                let colour = self.colour;
                let out = self.plain();
                if first_of_group {
                    if n > 0 {
                        writeln!(out)?;
                    }
                    let title = match count {
                        Some(Some(k)) => format!("{class} ({k})"),
                        _ => class.to_string(),
                    };
                    writeln!(out, "{}", paint(&title, class, colour))?;
                }
                let status = if status.is_empty() { "-" } else { &status };
                // Text from the input and from servers is escaped: it cannot drive the terminal.
                let detail = detail(r);
                let (url, detail) = (printable(&r.url), printable(&detail));
                writeln!(out, "  {status:>4}  {:<18} {url}  {detail}", kind_name(r))
            }
            Format::Json | Format::Ndjson => {
                let json = self.format == Format::Json;
                let counts = self.counts.as_ref().map(counts_json);
                let out = self.plain();
                if json && n == 0 {
                    writeln!(out, "{{\"counts\":{},\"results\":[", counts.unwrap_or(serde_json::Value::Null))?;
                } else if json {
                    writeln!(out, ",")?;
                }
                let v = result_json(r);
                if json { write!(out, "{v}") } else { writeln!(out, "{v}") }
            }
            Format::Markdown => {
                let count = self.counts.as_ref().map(|c| class_count(c, class));
                let out = self.plain();
                if first_of_group {
                    if n > 0 {
                        writeln!(out)?;
                    }
                    match count {
                        Some(Some(k)) => writeln!(out, "### {class} ({k})\n")?,
                        _ => writeln!(out, "### {class}\n")?,
                    }
                    writeln!(out, "| Status | Kind | URL | Detail |\n| ---: | --- | --- | --- |")?;
                }
                let status = if status.is_empty() { "–".to_string() } else { status };
                writeln!(out, "| {status} | {} | {} | {} |", kind_name(r), md_cell(&r.url), md_cell(&detail(r)))
            }
            Format::Junit => {
                let failure = match class_from_pb(r.outcome_class) {
                    Some(c) if !c.is_failure() => None,
                    Some(urlfleet_shared::OutcomeClass::Broken) => Some((true, detail_or_status(r))),
                    _ => Some((false, format!("{}: {}", kind_name(r), detail(r)))),
                };
                self.junit.push((r.url.clone(), failure));
                Ok(())
            }
            Format::Csv => match &mut self.out {
                Output::Csv(out) => out
                    .serialize(CsvRow {
                        url: &r.url,
                        class,
                        kind: kind_name(r),
                        status: &status,
                        final_url: &r.final_url,
                        redirects: r.redirects.len(),
                        attempts: r.attempts,
                        response_time_ms: r.response_time_ms,
                        checked_at: rfc3339(r.checked_at_ms),
                        error: &r.error,
                    })
                    .map_err(std::io::Error::other),
                Output::Plain(_) => unreachable!("CSV has its writer"),
            },
        }
    }

    /// Ends the listing (closing the JSON document, writing the JUnit report) and flushes.
    pub fn finish(mut self) -> std::io::Result<()> {
        match self.format {
            Format::Json => {
                let counts = self.counts.as_ref().map(counts_json);
                let empty = self.written == 0;
                let out = self.plain();
                if empty {
                    write!(out, "{{\"counts\":{},\"results\":[", counts.unwrap_or(serde_json::Value::Null))?;
                }
                writeln!(out, "\n]}}")?;
            }
            Format::Junit => {
                let cases = std::mem::take(&mut self.junit);
                let failures = cases.iter().filter(|(_, f)| matches!(f, Some((true, _)))).count();
                let errors = cases.iter().filter(|(_, f)| matches!(f, Some((false, _)))).count();
                let out = self.plain();
                writeln!(out, r#"<?xml version="1.0" encoding="UTF-8"?>"#)?;
                writeln!(
                    out,
                    r#"<testsuites name="urlfleet" tests="{n}" failures="{failures}" errors="{errors}">"#,
                    n = cases.len()
                )?;
                writeln!(
                    out,
                    r#"  <testsuite name="urlfleet" tests="{n}" failures="{failures}" errors="{errors}">"#,
                    n = cases.len()
                )?;
                for (url, failure) in &cases {
                    let name = xml_escape(url);
                    let host =
                        url::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_string)).unwrap_or_default();
                    let classname = xml_escape(&host);
                    match failure {
                        None => writeln!(out, r#"    <testcase name="{name}" classname="{classname}"/>"#)?,
                        Some((is_failure, message)) => {
                            let tag = if *is_failure { "failure" } else { "error" };
                            let message = xml_escape(message);
                            writeln!(out, r#"    <testcase name="{name}" classname="{classname}">"#)?;
                            writeln!(out, r#"      <{tag} message="{message}">{message}</{tag}>"#)?;
                            writeln!(out, "    </testcase>")?;
                        }
                    }
                }
                writeln!(out, "  </testsuite>\n</testsuites>")?;
            }
            _ => {}
        }
        match self.out {
            Output::Plain(mut out) => out.flush(),
            Output::Csv(mut out) => out.flush(),
        }
    }
}

/// The classes listed, in the order listings group them: failures first.
pub const LISTING_ORDER: [urlfleet_shared::OutcomeClass; 5] = [
    urlfleet_shared::OutcomeClass::Broken,
    urlfleet_shared::OutcomeClass::Error,
    urlfleet_shared::OutcomeClass::Invalid,
    urlfleet_shared::OutcomeClass::Redirected,
    urlfleet_shared::OutcomeClass::Ok,
];

/// How many results of a class a job counts.
fn class_count(c: &JobCounts, class: &str) -> Option<u64> {
    Some(match class {
        "ok" => c.ok,
        "redirected" => c.redirected,
        "broken" => c.broken,
        "error" => c.error,
        "invalid" => c.invalid,
        "cancelled" => c.cancelled,
        _ => return None,
    })
}

/// What a listing says after the URL: the error, or where the redirects led.
fn detail(r: &pb::UrlResult) -> String {
    if !r.error.is_empty() {
        r.error.clone()
    } else if !r.redirects.is_empty() {
        format!("→ {}", r.final_url)
    } else {
        String::new()
    }
}

fn detail_or_status(r: &pb::UrlResult) -> String {
    let d = detail(r);
    if d.is_empty() { format!("HTTP {}", r.status) } else { format!("HTTP {}: {d}", r.status) }
}

/// A class name in its colour (ANSI), or as it is.
fn paint(text: &str, class: &str, colour: bool) -> String {
    if !colour {
        return text.to_string();
    }
    let code = match class {
        "ok" => "32",
        "redirected" => "36",
        "broken" => "31",
        "error" => "33",
        "invalid" => "35",
        _ => "2",
    };
    format!("\x1b[1;{code}m{text}\x1b[0m")
}

/// Text safe in a Markdown table cell.
pub fn md_cell(text: &str) -> String {
    printable(text).replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// Text safe in an XML attribute or element (characters XML 1.0 cannot carry are dropped).
fn xml_escape(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => s.push_str("&amp;"),
            '<' => s.push_str("&lt;"),
            '>' => s.push_str("&gt;"),
            '"' => s.push_str("&quot;"),
            '\'' => s.push_str("&apos;"),
            '\t' | '\n' | '\r' => s.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => {}
            c => s.push(c),
        }
    }
    s
}

/// A job's counts as JSON.
pub fn counts_json(c: &JobCounts) -> serde_json::Value {
    serde_json::json!({
        "received": c.received,
        "total": c.total,
        "duplicates": c.duplicates,
        "checked": c.checked,
        "fresh": c.fresh,
        "pending": c.pending(),
        "leased": c.leased,
        "cancelled": c.cancelled,
        "failed": c.failed,
        "ok": c.ok,
        "redirected": c.redirected,
        "broken": c.broken,
        "error": c.error,
        "invalid": c.invalid,
    })
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
    fn a_status_line_gives_a_rate_only_after_a_second() {
        let early = status_line(Duration::from_millis(2), 100_000, 100_000, "completed");
        assert_eq!(early, "100000/100000 URLs (100%): completed");
        let later = status_line(Duration::from_secs(4), 1_000, 5_000, "");
        assert_eq!(later, "1000/5000 URLs (20%) 250/s eta 16s");
    }

    #[test]
    fn csv_rows_are_quoted_when_needed_and_read_back() {
        let mut buf = Vec::new();
        let mut w = ResultWriter::new(&mut buf, Format::Csv, None);
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
