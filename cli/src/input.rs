//! Reading URL inputs: plain lists, CSV/TSV exports, XML sitemaps and sitemap indexes (local files,
//! standard input, or fetched over HTTP through the check engine's SSRF guard), gzip-compressed or
//! not, several in one run. Every input becomes a stream of entries; a line that cannot be read (bytes
//! that are not UTF-8, a row without the URL column, text that is no URL, a sitemap cut short) is an
//! invalid entry naming its input and line, never the end of the run.

use std::collections::{HashSet, VecDeque};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use tokio::sync::mpsc;
use urlfleet_shared::plan::{Entry, InvalidEntry};
use urlfleet_shared::url::NormalizedUrl;
use urlfleet_worker::engine::{Cidr, Engine, EngineConfig};

/// Largest document fetched (a sitemap may hold 50 MB uncompressed; gzip packs it well below).
const MAX_FETCH_BYTES: usize = 64 * 1024 * 1024;
/// Largest document after decompression.
const MAX_XML_BYTES: u64 = 256 * 1024 * 1024;
/// Sitemaps followed from indexes, at most, per run.
const MAX_SITEMAPS: usize = 10_000;
/// Entries handed over at a time.
const BATCH: usize = 1_000;
/// Header names (lower case) taken for the URL column of a CSV, in order of preference:
/// Screaming Frog's `Address`, Search Console's `URL`/`Top pages`, generic names.
const URL_HEADERS: [&str; 9] = ["url", "address", "loc", "link", "href", "uri", "page", "top pages", "source"];

/// How to read an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum InputFormat {
    /// From the name (`.csv`, `.tsv`, `.xml`, `.gz`) or, failing that, from the content.
    #[default]
    Auto,
    /// One URL per line; blank lines and `#` comments ignored.
    List,
    /// Comma-separated values; the URL column found by header or `--column`.
    Csv,
    /// Tab-separated values, as CSV.
    Tsv,
    /// An XML sitemap or sitemap index.
    Sitemap,
}

/// Options of the inputs, shared by `check` and `submit`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct InputArgs {
    /// How to read the inputs.
    #[arg(long, value_enum, default_value = "auto")]
    pub input_format: InputFormat,
    /// CSV/TSV: the URL column, by header name or 1-based number (default: a header such as
    /// url or address, else the first column holding a URL).
    #[arg(long)]
    pub column: Option<String>,
    /// Networks the SSRF guard lets through (CIDR, repeatable or comma-separated), e.g. 127.0.0.0/8:
    /// for the checks, and for fetching sitemaps.
    #[arg(long, env = "URLFLEET_ALLOW", value_delimiter = ',')]
    pub allow: Vec<Cidr>,
}

/// Reads `inputs` in order (`-` is standard input; an http(s) URL is a sitemap to fetch) and sends
/// their entries in batches. Fails only when an input cannot be opened or read at all.
pub async fn read(inputs: Vec<String>, args: InputArgs, tx: mpsc::Sender<Vec<Entry>>) -> Result<()> {
    let mut fetcher: Option<Arc<Engine>> = None;
    let mut fetch = |args: &InputArgs| -> Result<Arc<Engine>> {
        if let Some(e) = &fetcher {
            return Ok(e.clone());
        }
        let engine = Arc::new(Engine::new(EngineConfig { allow: args.allow.clone(), ..EngineConfig::default() })?);
        fetcher = Some(engine.clone());
        Ok(engine)
    };
    // Sitemaps still to fetch (from indexes, or given as URLs), and those seen.
    let mut queue: VecDeque<String> = VecDeque::new();
    let mut seen: HashSet<String> = HashSet::new();
    for input in inputs {
        if input.starts_with("http://") || input.starts_with("https://") {
            if seen.insert(input.clone()) {
                queue.push_back(input);
            }
        } else {
            let args2 = args.clone();
            let tx2 = tx.clone();
            let name = input.clone();
            let children = tokio::task::spawn_blocking(move || -> Result<Vec<String>> {
                let reader: Box<dyn Read + Send> = if name == "-" {
                    Box::new(std::io::stdin())
                } else {
                    Box::new(std::fs::File::open(&name).with_context(|| format!("cannot open {name}"))?)
                };
                let label = if name == "-" { "standard input".to_string() } else { name.clone() };
                read_one(reader, &label, Path::new(&name), &args2, &tx2)
            })
            .await??;
            for c in children {
                if seen.insert(c.clone()) {
                    queue.push_back(c);
                }
            }
        }
        while let Some(url) = queue.pop_front() {
            if seen.len() > MAX_SITEMAPS {
                bail!("more than {MAX_SITEMAPS} sitemaps to follow");
            }
            let engine = fetch(&args)?;
            let children = match engine.fetch(&url, MAX_FETCH_BYTES).await {
                Ok(body) => {
                    let (args2, tx2, label) = (args.clone(), tx.clone(), url.clone());
                    tokio::task::spawn_blocking(move || {
                        let mut args2 = args2;
                        args2.input_format = InputFormat::Sitemap;
                        read_one(Box::new(std::io::Cursor::new(body)), &label, Path::new(&label), &args2, &tx2)
                    })
                    .await??
                }
                Err(reason) => {
                    let entry = InvalidEntry { input: url.clone(), reason: format!("sitemap {url}: {reason}") };
                    if tx.send(vec![Entry::Invalid(entry)]).await.is_err() {
                        return Ok(());
                    }
                    Vec::new()
                }
            };
            for c in children {
                if seen.insert(c.clone()) {
                    queue.push_back(c);
                }
            }
        }
    }
    Ok(())
}

/// Reads one input; returns the sitemaps a sitemap index names.
fn read_one(
    reader: Box<dyn Read + Send>,
    label: &str,
    path: &Path,
    args: &InputArgs,
    tx: &mpsc::Sender<Vec<Entry>>,
) -> Result<Vec<String>> {
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let head = reader.fill_buf().with_context(|| format!("reading {label}"))?;
    let gzipped = head.starts_with(&[0x1f, 0x8b]);
    let name = path.to_string_lossy().to_lowercase();
    let name = name.strip_suffix(".gz").unwrap_or(&name).to_string();
    if gzipped {
        let inner = flate2::read::MultiGzDecoder::new(reader).take(MAX_XML_BYTES);
        let reader = BufReader::with_capacity(64 * 1024, Box::new(inner) as Box<dyn Read + Send>);
        return read_plain(reader, label, &name, args, tx);
    }
    read_plain(reader, label, &name, args, tx)
}

fn read_plain(
    mut reader: BufReader<Box<dyn Read + Send>>,
    label: &str,
    name: &str,
    args: &InputArgs,
    tx: &mpsc::Sender<Vec<Entry>>,
) -> Result<Vec<String>> {
    let format = match args.input_format {
        InputFormat::Auto if name.ends_with(".csv") => InputFormat::Csv,
        InputFormat::Auto if name.ends_with(".tsv") => InputFormat::Tsv,
        InputFormat::Auto if name.ends_with(".xml") => InputFormat::Sitemap,
        InputFormat::Auto => {
            let head = reader.fill_buf().with_context(|| format!("reading {label}"))?;
            let text = String::from_utf8_lossy(&head[..head.len().min(512)]);
            let text = text.trim_start_matches('\u{feff}').trim_start();
            if text.starts_with("<?xml") || text.starts_with("<urlset") || text.starts_with("<sitemapindex") {
                InputFormat::Sitemap
            } else {
                InputFormat::List
            }
        }
        f => f,
    };
    let mut out = Sink { tx, batch: Vec::with_capacity(BATCH), label };
    let children = match format {
        InputFormat::Csv => read_csv(reader, b',', args.column.as_deref(), &mut out).map(|()| Vec::new()),
        InputFormat::Tsv => read_csv(reader, b'\t', args.column.as_deref(), &mut out).map(|()| Vec::new()),
        InputFormat::Sitemap => read_sitemap(reader, &mut out),
        InputFormat::List | InputFormat::Auto => read_list(reader, &mut out).map(|()| Vec::new()),
    };
    out.flush();
    children
}

/// Where entries go, a batch at a time.
struct Sink<'a> {
    tx: &'a mpsc::Sender<Vec<Entry>>,
    batch: Vec<Entry>,
    label: &'a str,
}

impl Sink<'_> {
    /// A URL read at `place` (`line 7`, `byte 120`): kept as text when it reads as a URL, else an
    /// invalid entry saying where it was.
    fn url(&mut self, place: impl std::fmt::Display, text: &str) {
        match NormalizedUrl::parse(text) {
            Ok(_) => self.push(Entry::Url(text.to_string())),
            Err(e) => self.invalid(place, text, &e.to_string()),
        }
    }

    fn invalid(&mut self, place: impl std::fmt::Display, input: &str, reason: &str) {
        let reason = format!("{} {place}: {reason}", self.label);
        self.push(Entry::Invalid(InvalidEntry { input: input.to_string(), reason }));
    }

    fn push(&mut self, e: Entry) {
        self.batch.push(e);
        if self.batch.len() >= BATCH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if !self.batch.is_empty() {
            // A receiver gone means the run ends: what is left is not needed.
            let _ = self.tx.blocking_send(std::mem::take(&mut self.batch));
        }
    }
}

/// One URL per line; blank lines and `#` comments ignored; a byte-order mark and CRLF line ends
/// taken in stride.
fn read_list(mut reader: impl BufRead, out: &mut Sink<'_>) -> Result<()> {
    let mut buf = Vec::with_capacity(256);
    let mut line = 0u64;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).with_context(|| format!("reading {}", out.label))? == 0 {
            return Ok(());
        }
        line += 1;
        let mut bytes = buf.as_slice();
        if line == 1 {
            bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
        }
        match std::str::from_utf8(bytes) {
            Ok(text) => {
                let text = text.trim();
                if !text.is_empty() && !text.starts_with('#') {
                    out.url(Line(line), text);
                }
            }
            Err(e) => {
                let lossy = String::from_utf8_lossy(bytes);
                out.invalid(Line(line), lossy.trim(), &format!("not UTF-8 (byte {})", e.valid_up_to() + 1));
            }
        }
    }
}

/// A CSV or TSV export: the URL column by `column` (a header name or a 1-based number), else by a
/// known header name, else the first column of the first row that holds a URL.
fn read_csv(reader: impl Read, delimiter: u8, column: Option<&str>, out: &mut Sink<'_>) -> Result<()> {
    let mut rd = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(reader);
    let mut records = rd.byte_records();
    let Some(first) = records.next() else { return Ok(()) };
    let first = first.with_context(|| format!("reading {}", out.label))?;
    let cell = |r: &csv::ByteRecord, i: usize| -> String {
        let mut s = String::from_utf8_lossy(r.get(i).unwrap_or_default()).into_owned();
        if let Some(rest) = s.strip_prefix('\u{feff}') {
            s = rest.to_string();
        }
        s
    };
    let looks_like_url = |s: &str| s.starts_with("http://") || s.starts_with("https://");
    let headers: Vec<String> = (0..first.len()).map(|i| cell(&first, i).to_lowercase()).collect();
    let (index, header_row) = match column {
        Some(c) => match c.parse::<usize>() {
            Ok(n) if n >= 1 => (n - 1, !looks_like_url(&cell(&first, n - 1))),
            _ => match headers.iter().position(|h| *h == c.to_lowercase()) {
                Some(i) => (i, true),
                None => bail!("{}: no column {c:?} in its header ({})", out.label, headers.join(", ")),
            },
        },
        None => match URL_HEADERS.iter().find_map(|name| headers.iter().position(|h| h == name)) {
            Some(i) => (i, true),
            None => match (0..first.len()).find(|i| looks_like_url(&cell(&first, *i))) {
                Some(i) => (i, false),
                None => bail!(
                    "{}: cannot tell which column holds the URLs (header: {}); name it with --column",
                    out.label,
                    headers.join(", ")
                ),
            },
        },
    };
    let take = |r: &csv::ByteRecord, out: &mut Sink<'_>| {
        let line = r.position().map_or(0, |p| p.line());
        match r.get(index) {
            None => {
                out.invalid(Line(line), &String::from_utf8_lossy(r.as_slice()), &format!("no column {}", index + 1))
            }
            Some(b) => match std::str::from_utf8(b) {
                Ok(t) => {
                    let t = t.trim_start_matches('\u{feff}').trim();
                    if !t.is_empty() {
                        out.url(Line(line), t);
                    }
                }
                Err(e) => {
                    out.invalid(
                        Line(line),
                        &String::from_utf8_lossy(b),
                        &format!("not UTF-8 (byte {})", e.valid_up_to() + 1),
                    );
                }
            },
        }
    };
    if !header_row {
        take(&first, out);
    }
    for r in records {
        match r {
            Ok(r) => take(&r, out),
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                out.invalid(Line(line), "", &format!("unreadable row: {e}"));
                // A CSV error past a row's end leaves the reader at the next row.
                if !matches!(e.kind(), csv::ErrorKind::Utf8 { .. } | csv::ErrorKind::UnequalLengths { .. }) {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// An XML sitemap (`<urlset>`: its `<loc>`s are entries) or sitemap index (`<sitemapindex>`: its
/// `<loc>`s are returned, to be fetched). A document cut short or malformed keeps what came before
/// and adds one invalid entry saying where it broke.
fn read_sitemap(reader: impl BufRead, out: &mut Sink<'_>) -> Result<Vec<String>> {
    use quick_xml::events::Event;
    let mut xml = quick_xml::Reader::from_reader(reader);
    xml.config_mut().trim_text(true);
    let mut buf = Vec::new();
    let mut children = Vec::new();
    let mut index = false;
    let mut in_loc = false;
    let mut loc = String::new();
    // The open elements' local names: a `<loc>` counts only in a `<url>` or `<sitemap>` (an image
    // sitemap's `<image:loc>` is not a page).
    let mut open: Vec<Vec<u8>> = Vec::new();
    loop {
        let event = xml.read_event_into(&mut buf);
        if let Ok(Event::End(_)) = &event {
            open.pop();
        }
        match event {
            Ok(Event::Start(e)) => {
                let name = e.local_name().as_ref().to_vec();
                match name.as_slice() {
                    b"sitemapindex" => index = true,
                    b"loc" if matches!(open.last().map(Vec::as_slice), Some(b"url" | b"sitemap")) => {
                        in_loc = true;
                        loc.clear();
                    }
                    _ => {}
                }
                open.push(name);
            }
            Ok(Event::Text(t)) if in_loc => match t.decode() {
                Ok(s) => match quick_xml::escape::unescape(&s) {
                    Ok(s) => loc.push_str(&s),
                    Err(_) => loc.push_str(&s),
                },
                Err(e) => {
                    out.invalid(Byte(xml.buffer_position()), "", &format!("not UTF-8 in <loc>: {e}"));
                    in_loc = false;
                }
            },
            Ok(Event::CData(t)) if in_loc => loc.push_str(&String::from_utf8_lossy(&t)),
            Ok(Event::GeneralRef(r)) if in_loc => {
                let name = String::from_utf8_lossy(&r).into_owned();
                match quick_xml::escape::unescape(&format!("&{name};")) {
                    Ok(s) => loc.push_str(&s),
                    Err(_) => loc.push_str(&format!("&{name};")),
                }
            }
            Ok(Event::End(e)) if e.local_name().as_ref() == b"loc" && in_loc => {
                in_loc = false;
                let text = loc.trim();
                if !text.is_empty() {
                    if index {
                        children.push(text.to_string());
                    } else {
                        out.url(Byte(xml.buffer_position()), text);
                    }
                }
            }
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => {
                out.invalid(Byte(xml.buffer_position()), "", &format!("malformed sitemap: {e}"));
                break;
            }
        }
        buf.clear();
    }
    Ok(children)
}

/// A place in a line-oriented input.
struct Line(u64);

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}", self.0)
    }
}

/// A place in an XML document (one-line sitemaps are common: a byte offset says more).
struct Byte(u64);

impl std::fmt::Display for Byte {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "byte {}", self.0)
    }
}
