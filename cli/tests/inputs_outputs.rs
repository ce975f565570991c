//! The CLI's inputs and outputs as users meet them: real files (a sitemap index with gzipped
//! children served over HTTP, a CSV export, a list with bad bytes, an empty file, standard input),
//! every machine format parsed with a real parser and compared with the store, progress on a
//! terminal and in a log, a configuration file, daily reports and a URL's history.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use sqlx::Connection;
use urlfleet_tests::{Coordinator, Fixture, TestDb};

mod common;
use common::{run, run_with, urlfleet};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("urlfleet-io-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn urlset(urls: &[String]) -> String {
    let mut s = String::from(
        r#"<?xml version="1.0" encoding="UTF-8"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9" xmlns:image="http://www.google.com/schemas/sitemap-image/1.1">"#,
    );
    for u in urls {
        // An image sitemap's `<image:loc>` names an image, not a page: it is not an entry.
        s.push_str(&format!(
            "<url><loc>{}</loc><lastmod>2026-11-01</lastmod><image:image><image:loc>{}.png</image:loc></image:image></url>\n",
            u.replace('&', "&amp;"),
            u.replace('&', "&amp;")
        ));
    }
    s.push_str("</urlset>");
    s
}

/// One input of every kind; returns the inputs and the URLs (normalized) each should yield.
struct Inputs {
    args: Vec<String>,
    stdin: String,
    urls: BTreeSet<String>,
    broken: BTreeSet<String>,
}

fn every_kind_of_input(site: &Fixture, dir: &Path) -> Inputs {
    let mut urls = BTreeSet::new();
    let mut broken = BTreeSet::new();
    // A sitemap index naming a gzipped sitemap and a plain one, served over HTTP.
    let gz_urls: Vec<String> = (0..30).map(|i| site.url(&format!("/status/200?sm=gz&n={i}"))).collect();
    let mut plain_urls: Vec<String> = (0..10).map(|i| site.url(&format!("/status/200?sm=plain&n={i}"))).collect();
    plain_urls.push(site.url("/status/404?sm=plain"));
    broken.insert(site.url("/status/404?sm=plain"));
    site.serve("/sitemap-1.xml.gz", gzip(urlset(&gz_urls).as_bytes()));
    site.serve("/sitemap-2.xml", urlset(&plain_urls));
    site.serve(
        "/sitemap_index.xml",
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
  <sitemap><loc>{}</loc></sitemap>
  <sitemap><loc>{}</loc></sitemap>
</sitemapindex>"#,
            site.url("/sitemap-1.xml.gz"),
            site.url("/sitemap-2.xml")
        ),
    );
    urls.extend(gz_urls.iter().cloned());
    urls.extend(plain_urls.iter().cloned());
    // A spreadsheet export: Screaming Frog's "Address" column, quoted fields, a comma in a title.
    let csv_path = dir.join("export.csv");
    let mut csv = String::from("\u{feff}\"Address\",\"Status Code\",\"Title 1\"\r\n");
    for i in 0..5 {
        let u = site.url(&format!("/status/200?csv={i}"));
        csv.push_str(&format!("\"{u}\",\"200\",\"Page {i}, the best\"\r\n"));
        urls.insert(u);
    }
    std::fs::write(&csv_path, csv).unwrap();
    // A list with a byte-order mark, CRLF line ends and a line of bad bytes in the middle.
    let list = dir.join("list.txt");
    let mut bytes = b"\xef\xbb\xbf".to_vec();
    bytes.extend_from_slice(format!("{}\r\n", site.url("/status/200?list=0")).as_bytes());
    bytes.extend_from_slice(format!("{}\r\n", site.url("/status/200?list=1")).as_bytes());
    bytes.extend_from_slice(b"http://bad.example/\xff\xfe\r\n");
    bytes.extend_from_slice(format!("{}\r\n", site.url("/status/500?list=3")).as_bytes());
    bytes.extend_from_slice(b"not a url at all\r\n");
    std::fs::write(&list, bytes).unwrap();
    urls.insert(site.url("/status/200?list=0"));
    urls.insert(site.url("/status/200?list=1"));
    urls.insert(site.url("/status/500?list=3"));
    broken.insert(site.url("/status/500?list=3"));
    // Standard input.
    let stdin = format!("{}\n", site.url("/status/200?stdin=1"));
    urls.insert(site.url("/status/200?stdin=1"));
    Inputs {
        args: vec![
            list.display().to_string(),
            csv_path.display().to_string(),
            site.url("/sitemap_index.xml"),
            "-".to_string(),
        ],
        stdin,
        urls,
        broken,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_input_in_one_run_with_bad_lines_as_invalid_entries() {
    let site = Fixture::start(IpAddr::from([127, 0, 0, 41])).await;
    let dir = scratch("inputs");
    let inputs = every_kind_of_input(&site, &dir);
    let db = format!("sqlite:{}", dir.join("db").display());
    for store in [vec!["--no-store".to_string()], vec!["--db".to_string(), db.clone()]] {
        let mut cmd = urlfleet();
        cmd.arg("check").args(&inputs.args).args(&store);
        cmd.args(["--allow", "127.0.0.0/8", "--retries", "0", "--no-politeness", "--format", "json"]);
        cmd.args(["--only", "ok,redirected,broken,error,invalid"]);
        let r = run_with(cmd, &inputs.stdin).await;
        assert_eq!(r.code, 2, "{store:?}\nstdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
        // Standard output is one JSON document and nothing else.
        let doc: serde_json::Value = serde_json::from_str(&r.stdout).expect("stdout is one JSON document");
        let results = doc["results"].as_array().unwrap();
        let checked: BTreeSet<String> = results
            .iter()
            .filter(|r| r["class"] != "invalid")
            .map(|r| r["url"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(checked, inputs.urls, "{store:?}");
        let broken: BTreeSet<String> =
            results.iter().filter(|r| r["class"] == "broken").map(|r| r["url"].as_str().unwrap().to_string()).collect();
        assert_eq!(broken, inputs.broken);
        let invalid: Vec<&serde_json::Value> = results.iter().filter(|r| r["class"] == "invalid").collect();
        assert_eq!(invalid.len(), 2, "{invalid:?}");
        let reasons: Vec<&str> = invalid.iter().map(|r| r["error"].as_str().unwrap()).collect();
        let list = &inputs.args[0];
        assert!(reasons.contains(&format!("{list} line 3: not UTF-8 (byte 20)").as_str()), "{reasons:?}");
        assert!(reasons.iter().any(|r| r.starts_with(&format!("{list} line 5: "))), "{reasons:?}");
        assert_eq!(doc["counts"]["invalid"], 2);
        assert_eq!(doc["counts"]["total"].as_u64().unwrap(), inputs.urls.len() as u64 + 2);
        // The summary went to standard error.
        assert!(r.stderr.contains(&format!("{} URLs in", inputs.urls.len() + 2)), "{}", r.stderr);
    }
    // The stored run's results are the store's.
    let mut c = sqlx::SqliteConnection::connect(&db).await.unwrap();
    let stored: BTreeSet<String> =
        sqlx::query_scalar("SELECT url FROM urls").fetch_all(&mut c).await.unwrap().into_iter().collect();
    assert_eq!(stored, inputs.urls);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_input_exits_0_with_or_without_a_store() {
    let dir = scratch("empty");
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let comments = dir.join("comments.txt");
    std::fs::write(&comments, "# nothing yet\n\n").unwrap();
    for file in [&empty, &comments] {
        for store in
            [vec!["--no-store".to_string()], vec!["--db".into(), format!("sqlite:{}", dir.join("db").display())]]
        {
            let mut cmd = urlfleet();
            cmd.arg("check").arg(file).args(&store);
            let r = run(cmd).await;
            assert_eq!(r.code, 0, "{store:?}: {}{}", r.stdout, r.stderr);
            assert!(r.stderr.contains("no URLs in"), "{}", r.stderr);
            assert_eq!(r.stdout, "", "nothing to list");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `(url, class, status)` of every listed result.
type Verdicts = BTreeSet<(String, String, String)>;

fn junit_verdicts(xml: &str) -> (Verdicts, BTreeMap<String, String>) {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut out = Verdicts::new();
    let mut attrs_of_suite = BTreeMap::new();
    let mut current: Option<String> = None;
    loop {
        match reader.read_event().expect("well-formed JUnit XML") {
            Event::Start(e) | Event::Empty(e) => {
                let attrs: BTreeMap<String, String> = e
                    .attributes()
                    .map(|a| {
                        let a = a.unwrap();
                        (String::from_utf8(a.key.as_ref().to_vec()).unwrap(), a.unescape_value().unwrap().into_owned())
                    })
                    .collect();
                match e.name().as_ref() {
                    b"testsuite" => attrs_of_suite = attrs,
                    b"testcase" => {
                        let name = attrs["name"].clone();
                        out.insert((name.clone(), "pass".into(), String::new()));
                        current = Some(name);
                    }
                    b"failure" | b"error" => {
                        let name = current.clone().unwrap();
                        out.remove(&(name.clone(), "pass".into(), String::new()));
                        let tag = String::from_utf8(e.name().as_ref().to_vec()).unwrap();
                        out.insert((name, tag, attrs["message"].clone()));
                    }
                    _ => {}
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    (out, attrs_of_suite)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_machine_format_parses_and_agrees_with_the_store() {
    let site = Fixture::start(IpAddr::from([127, 0, 0, 42])).await;
    let dir = scratch("formats");
    let list = dir.join("urls.txt");
    let mut urls: Vec<String> = (0..8).map(|i| site.url(&format!("/status/200?n={i}"))).collect();
    urls.push(site.url("/status/404"));
    urls.push(site.url("/status/503"));
    urls.push(site.url("/redirect/1"));
    urls.push("mailto:someone@example.com".into());
    std::fs::write(&list, urls.join("\n")).unwrap();
    let db = format!("sqlite:{}", dir.join("db").display());
    let base = |format: &str| {
        let mut cmd = urlfleet();
        cmd.arg("check").arg(&list).args(["--db", &db, "--allow", "127.0.0.0/8", "--retries", "0"]);
        cmd.args(["--no-politeness", "--only", "broken,error,invalid,redirected", "--format", format]);
        cmd
    };
    // The store's verdicts.
    let r = run(base("ndjson")).await;
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    let mut c = sqlx::SqliteConnection::connect(&db).await.unwrap();
    let rows: Vec<(String, Option<String>, Option<i32>)> =
        sqlx::query_as("SELECT u.url, l.kind, l.status FROM urls u LEFT JOIN latest_checks l ON l.url_id = u.id")
            .fetch_all(&mut c)
            .await
            .unwrap();
    let expected: Verdicts = rows
        .iter()
        .filter(|r| r.1.as_deref() != Some("ok"))
        .map(|r| (r.0.clone(), r.1.clone().unwrap(), r.2.map(|s| s.to_string()).unwrap_or_default()))
        .chain(std::iter::once(("mailto:someone@example.com".to_string(), "invalid".to_string(), String::new())))
        .collect();
    assert_eq!(expected.len(), 4, "{expected:?}");

    // NDJSON: one result per line.
    let from_json = |v: &serde_json::Value| {
        (
            v["url"].as_str().unwrap().to_string(),
            v["class"].as_str().unwrap().to_string(),
            v["status"].as_u64().map(|s| s.to_string()).unwrap_or_default(),
        )
    };
    let ndjson: Verdicts =
        r.stdout.lines().map(|l| from_json(&serde_json::from_str::<serde_json::Value>(l).unwrap())).collect();
    assert_eq!(ndjson, expected);
    // JSON: one document, with the job's counts.
    let r = run(base("json")).await;
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let json: Verdicts = doc["results"].as_array().unwrap().iter().map(from_json).collect();
    assert_eq!(json, expected);
    assert_eq!((doc["counts"]["ok"].as_u64(), doc["counts"]["broken"].as_u64()), (Some(8), Some(2)));
    // CSV.
    let r = run(base("csv")).await;
    let mut rd = csv::Reader::from_reader(r.stdout.as_bytes());
    let csv: Verdicts = rd
        .records()
        .map(|rec| {
            let rec = rec.unwrap();
            (rec[0].to_string(), rec[1].to_string(), rec[3].to_string())
        })
        .collect();
    assert_eq!(csv, expected);
    // JUnit XML: a failure per broken URL, an error per errored or invalid one, a pass otherwise.
    let r = run(base("junit")).await;
    let (junit, suite) = junit_verdicts(&r.stdout);
    assert_eq!(suite["tests"], "4");
    assert_eq!((suite["failures"].as_str(), suite["errors"].as_str()), ("2", "1"));
    let failed: BTreeSet<&str> = junit.iter().filter(|v| v.1 == "failure").map(|v| v.0.as_str()).collect();
    let broken: BTreeSet<&str> = expected.iter().filter(|v| v.1 == "broken").map(|v| v.0.as_str()).collect();
    assert_eq!(failed, broken);
    assert!(junit.iter().any(|v| v.1 == "error" && v.0 == "mailto:someone@example.com"));
    assert!(junit.iter().any(|v| v.1 == "pass" && v.0 == site.url("/redirect/1")));
    // Markdown: a section per class, a row per result.
    let r = run(base("markdown")).await;
    for class in ["### broken (2)", "### invalid (1)", "### redirected (1)"] {
        assert!(r.stdout.contains(class), "{}", r.stdout);
    }
    let rows = r
        .stdout
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| Status") && !l.starts_with("| ---"))
        .count();
    assert_eq!(rows, 4, "{}", r.stdout);
    // Table: grouped, no colour off a terminal, the summary on standard error only.
    let r = run(base("table")).await;
    assert!(r.stdout.starts_with("broken (2)\n"), "{}", r.stdout);
    assert!(!r.stdout.contains('\u{1b}'));
    assert!(!r.stdout.contains("URLs in") && r.stderr.contains("URLs in"), "{}", r.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_a_bar_on_a_terminal_a_status_line_in_a_log_and_nothing_when_quiet() {
    let site = Fixture::local().await;
    let dir = scratch("progress");
    let list = dir.join("urls.txt");
    let urls: Vec<String> = (0..40).map(|i| site.url(&format!("/delay/50?n={i}"))).collect();
    std::fs::write(&list, urls.join("\n")).unwrap();
    for store in ["--no-store", "--db=sqlite:db"] {
        // A log: one-line statuses.
        let mut cmd = urlfleet();
        cmd.current_dir(&dir).arg("check").arg(&list).args([store, "--allow", "127.0.0.0/8", "--no-politeness"]);
        let r = run(cmd).await;
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(r.stderr.contains("40/40 URLs (100%)"), "{}", r.stderr);
        // Quiet: nothing.
        let mut cmd = urlfleet();
        cmd.current_dir(&dir).arg("check").arg(&list).args([store, "--allow", "127.0.0.0/8", "--quiet"]);
        let r = run(cmd).await;
        assert_eq!((r.code, r.stderr.as_str(), r.stdout.as_str()), (0, "", ""));
        // A terminal (a pseudo-terminal through `script`): the live bar, redrawn in place.
        let typescript = dir.join("typescript");
        let line = format!(
            "{} check {} {store} --allow 127.0.0.0/8 --host-concurrency 4 --host-interval 0ms",
            env!("CARGO_BIN_EXE_urlfleet"),
            list.display()
        );
        let mut cmd = Command::new("script");
        cmd.current_dir(&dir).args(["-q", "-e", "-c", &line]).arg(&typescript);
        let r = run(cmd).await;
        assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
        let screen = String::from_utf8_lossy(&std::fs::read(&typescript).unwrap()).into_owned();
        assert!(screen.contains("URLs") && screen.contains("eta"), "{screen}");
        assert!(screen.contains('\r') || screen.contains("\u{1b}["), "redrawn in place: {screen:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_file_sets_flags_and_the_command_line_wins() {
    let site = Fixture::local().await;
    let dir = scratch("config");
    let list = dir.join("urls.txt");
    std::fs::write(&list, format!("{}\n{}\n", site.url("/status/200"), site.url("/status/404"))).unwrap();
    std::fs::write(
        dir.join("urlfleet.toml"),
        format!(
            "allow = [\"127.0.0.0/8\"]\nretries = 0\nformat = \"csv\"\n\n[check]\nno_store = true\n\n[hosts.\"{}\"]\nconcurrency = 1\ninterval = \"0ms\"\n",
            site.addr().ip()
        ),
    )
    .unwrap();
    let mut cmd = urlfleet();
    cmd.current_dir(&dir).arg("check").arg(&list);
    let r = run(cmd).await;
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.starts_with("url,class,kind,status"), "the file's format: {}", r.stdout);
    assert!(!dir.join("urlfleet.db").exists(), "the file's no_store");
    // A flag on the command line wins over the file.
    let mut cmd = urlfleet();
    cmd.current_dir(&dir).arg("check").arg(&list).args(["--format", "ndjson"]);
    let r = run(cmd).await;
    assert_eq!(r.code, 2);
    let v: serde_json::Value = serde_json::from_str(r.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(v["status"], 404);
    // An unknown key is a configuration error naming it.
    let other = dir.join("other.toml");
    std::fs::write(&other, "concurency = 3\n").unwrap();
    let mut cmd = urlfleet();
    cmd.current_dir(&dir).args(["--config"]).arg(&other).arg("check").arg(&list);
    let r = run(cmd).await;
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("unknown key \"concurency\""), "{}", r.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daily_report_says_what_broke_and_what_was_fixed_and_history_shows_each_check() {
    let site = Fixture::local().await;
    let dir = scratch("report");
    let list = dir.join("urls.txt");
    let fixed = site.url("/flaky/daily/1/500");
    let still = site.url("/status/404");
    let fine = site.url("/status/200");
    std::fs::write(&list, format!("{fixed}\n{still}\n{fine}\n")).unwrap();
    let check = || {
        let mut cmd = urlfleet();
        cmd.current_dir(&dir).arg("check").arg("urls.txt");
        cmd.args(["--allow", "127.0.0.0/8", "--retries", "0", "--force", "--quiet"]);
        cmd
    };
    assert_eq!(run(check()).await.code, 2);
    // The next day: one URL fixed itself, a new one is broken.
    let new = site.url("/status/410");
    std::fs::write(&list, format!("{fixed}\n{still}\n{fine}\n{new}\n")).unwrap();
    assert_eq!(run(check()).await.code, 2);

    let mut cmd = urlfleet();
    cmd.current_dir(&dir).args(["report", "urls.txt", "--format", "json"]);
    let r = run(cmd).await;
    assert_eq!(r.code, 2, "newly broken URLs exit 2: {}{}", r.stdout, r.stderr);
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let urls = |k: &str| -> Vec<String> {
        doc[k].as_array().unwrap().iter().map(|v| v["url"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(urls("newly_broken"), vec![new.clone()]);
    assert_eq!(urls("newly_fixed"), vec![fixed.clone()]);
    assert_eq!(urls("still_broken"), vec![still.clone()]);
    assert_eq!(doc["newly_fixed"][0]["previous_status"], 500);
    // Without a name: the newest job's; as a table.
    let mut cmd = urlfleet();
    cmd.current_dir(&dir).args(["report"]);
    let r = run(cmd).await;
    assert!(r.stdout.contains("newly broken (1)") && r.stdout.contains("newly fixed (1)"), "{}", r.stdout);

    let mut cmd = urlfleet();
    cmd.current_dir(&dir).args(["history", &fixed, "--format", "ndjson"]);
    let r = run(cmd).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let checks: Vec<serde_json::Value> = r.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let statuses: Vec<u64> = checks.iter().map(|c| c["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, vec![200, 500], "newest first");
    let mut cmd = urlfleet();
    cmd.current_dir(&dir).args(["history", &site.url("/never")]);
    let r = run(cmd).await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("never submitted"), "{}", r.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_jobs_urls_are_counted_and_listed_as_cancelled() {
    let db = TestDb::fresh(urlfleet_tests::Backend::Sqlite).await;
    let coordinator = Coordinator::spawn(&db.url, |_| {}).await;
    let dir = scratch("cancel");
    let list = dir.join("urls.txt");
    std::fs::write(&list, "http://a.example/1\nhttp://a.example/2\nhttp://b.example/3\nftp://x\n").unwrap();
    // No worker: nothing is checked before the cancel.
    let mut cmd = urlfleet();
    cmd.args(["submit", "--coordinator", &coordinator.addr]).arg(&list);
    let r = run(cmd).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let id = r.stdout.trim().to_string();
    let mut cmd = urlfleet();
    cmd.args(["cancel", &id, "--coordinator", &coordinator.addr]);
    let r = run(cmd).await;
    assert!(r.stdout.contains("3 cancelled"), "{}", r.stdout);
    let mut cmd = urlfleet();
    cmd.args(["results", &id, "--format", "ndjson", "--coordinator", &coordinator.addr]);
    let r = run(cmd).await;
    let rows: Vec<serde_json::Value> = r.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 4, "every URL of the job once: {}", r.stdout);
    assert_eq!(rows.iter().filter(|r| r["state"] == "cancelled" && r["class"] == "cancelled").count(), 3);
    assert_eq!(rows.iter().filter(|r| r["class"] == "invalid").count(), 1);
    coordinator.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_and_a_man_page_come_from_the_command_definitions() {
    let mut cmd = urlfleet();
    cmd.args(["completions", "bash"]);
    let r = run(cmd).await;
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("complete -F") && r.stdout.contains("--no-store"), "{}", r.stdout);
    let mut cmd = urlfleet();
    cmd.args(["completions", "zsh"]);
    assert!(run(cmd).await.stdout.contains("#compdef urlfleet"));
    let mut cmd = urlfleet();
    cmd.arg("man");
    let r = run(cmd).await;
    assert!(
        r.stdout.starts_with(".ie") || r.stdout.contains(".TH urlfleet"),
        "{}",
        &r.stdout[..200.min(r.stdout.len())]
    );
    let dir = scratch("man");
    let mut cmd = urlfleet();
    cmd.args(["man", "--dir"]).arg(&dir);
    assert_eq!(run(cmd).await.code, 0);
    assert!(dir.join("urlfleet-check.1").exists() && dir.join("urlfleet.1").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
