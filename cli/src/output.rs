//! What the CLI prints: job summaries, progress lines and result listings (table, JSON lines, CSV).

use std::io::Write;

use urlfleet_shared::proto::v1 as pb;
use urlfleet_shared::time::rfc3339;

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

/// Display name of a class.
pub fn class_name(c: i32) -> &'static str {
    match pb::OutcomeClass::try_from(c).unwrap_or(pb::OutcomeClass::Unspecified) {
        pb::OutcomeClass::Ok => "ok",
        pb::OutcomeClass::Redirected => "redirected",
        pb::OutcomeClass::Broken => "broken",
        pb::OutcomeClass::Error => "error",
        pb::OutcomeClass::Invalid => "invalid",
        pb::OutcomeClass::Unspecified => "pending",
    }
}

/// Display name of a job state.
pub fn state_name(s: i32) -> &'static str {
    match pb::JobState::try_from(s).unwrap_or(pb::JobState::Unspecified) {
        pb::JobState::Receiving => "receiving",
        pb::JobState::Scheduled => "scheduled",
        pb::JobState::Running => "running",
        pb::JobState::Completed => "completed",
        pb::JobState::Cancelled => "cancelled",
        pb::JobState::Unspecified => "unknown",
    }
}

/// URLs that fail a link-checking gate: broken, errors and invalid entries.
pub fn failures(c: &pb::JobCounts) -> u64 {
    c.broken + c.error + c.invalid
}

/// One-line progress of a job.
pub fn progress_line(job: &pb::Job) -> String {
    let c = job.counts.unwrap_or_default();
    let resolved = c.checked + c.fresh + c.invalid + c.failed;
    format!(
        "job {} {}: {}/{} resolved ({} ok, {} redirected, {} broken, {} errors, {} invalid)",
        job.id,
        state_name(job.state),
        resolved,
        c.total,
        c.ok,
        c.redirected,
        c.broken,
        c.error,
        c.invalid
    )
}

/// Multi-line description of a job.
pub fn job_details(job: &pb::Job) -> String {
    let c = job.counts.unwrap_or_default();
    let mut s = format!("job {}", job.id);
    if !job.name.is_empty() {
        s.push_str(&format!(" ({})", job.name));
    }
    s.push_str(&format!(
        "\n  state      {}\n  priority   {}\n  created    {}\n",
        state_name(job.state),
        match pb::Priority::try_from(job.priority).unwrap_or(pb::Priority::Unspecified) {
            pb::Priority::High => "high",
            pb::Priority::Medium => "medium",
            _ => "low",
        },
        rfc3339(job.created_at_ms)
    ));
    if job.finished_at_ms > 0 {
        s.push_str(&format!("  finished   {}\n", rfc3339(job.finished_at_ms)));
    }
    s.push_str(&format!(
        "  urls       {} distinct of {} received ({} duplicates collapsed)\n  progress   {} checked, {} fresh, {} pending, {} leased, {} failed\n  outcomes   {} ok, {} redirected, {} broken, {} errors, {} invalid",
        c.total, c.received, c.duplicates, c.checked, c.fresh, c.pending, c.leased, c.failed, c.ok, c.redirected, c.broken, c.error, c.invalid
    ));
    s
}

/// Writes results in the chosen format.
pub struct ResultWriter<W: Write> {
    out: W,
    format: Format,
    header_done: bool,
}

impl<W: Write> ResultWriter<W> {
    /// A writer on `out`.
    pub fn new(out: W, format: Format) -> Self {
        Self { out, format, header_done: false }
    }

    /// Writes one result.
    pub fn write(&mut self, r: &pb::UrlResult) -> std::io::Result<()> {
        let status = if r.status == 0 { "-".to_string() } else { r.status.to_string() };
        match self.format {
            Format::Table => {
                let detail = if !r.error.is_empty() {
                    r.error.clone()
                } else if !r.redirects.is_empty() {
                    format!("→ {}", r.final_url)
                } else {
                    String::new()
                };
                writeln!(self.out, "{:<10} {:>4}  {:<18} {}  {}", class_name(r.class), status, r.kind, r.url, detail)
            }
            Format::Json => {
                let v = serde_json::json!({
                    "url": r.url,
                    "class": class_name(r.class),
                    "kind": r.kind,
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
                writeln!(self.out, "{v}")
            }
            Format::Csv => {
                if !self.header_done {
                    writeln!(
                        self.out,
                        "url,class,kind,status,final_url,redirects,attempts,response_time_ms,checked_at,error"
                    )?;
                    self.header_done = true;
                }
                let fields = [
                    r.url.clone(),
                    class_name(r.class).to_string(),
                    r.kind.clone(),
                    if r.status == 0 { String::new() } else { r.status.to_string() },
                    r.final_url.clone(),
                    r.redirects.len().to_string(),
                    r.attempts.to_string(),
                    r.response_time_ms.to_string(),
                    rfc3339(r.checked_at_ms),
                    r.error.clone(),
                ];
                let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
                writeln!(self.out, "{}", line.join(","))
            }
        }
    }

    /// Flushes the output.
    pub fn finish(mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
