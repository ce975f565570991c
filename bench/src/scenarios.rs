//! The benchmark scenarios. Each runs the tools side by side in one run and adds rows to the report.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sqlx::Connection;
use urlfleet_shared::proto::v1 as pb;
use urlfleet_tests::Fixture;

use crate::proc::{self, Measured, Service};

/// Shared settings of a run.
pub struct Ctx {
    smoke: bool,
    database_url: String,
    urlfleet: PathBuf,
    lychee: Option<PathBuf>,
    wrk: Option<PathBuf>,
    nginx: Option<PathBuf>,
    dir: PathBuf,
}

impl Ctx {
    /// Finds the tools and makes a scratch directory.
    pub fn new(smoke: bool, database_url: String) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("urlfleet-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            smoke,
            database_url,
            urlfleet: proc::sibling("urlfleet")?,
            lychee: proc::which("lychee"),
            wrk: proc::which("wrk"),
            nginx: proc::which("nginx"),
            dir,
        })
    }

    fn size(&self, full: usize, smoke: usize) -> usize {
        if self.smoke { smoke } else { full }
    }

    /// A fresh PostgreSQL database for one scenario.
    async fn fresh_db(&self, label: &str) -> Result<String> {
        let name = format!("urlfleet_bench_{label}");
        let mut c = sqlx::PgConnection::connect(&self.database_url).await.context("connecting to PostgreSQL")?;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}"))).execute(&mut c).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut c).await?;
        Ok(urlfleet_tests::db::with_database(&self.database_url, &name))
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// The table being built.
#[derive(Default)]
pub struct Report {
    text: String,
}

impl Report {
    /// Machine and run description.
    pub fn header(&mut self, ctx: &Ctx) {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
        let mem = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| m.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string()))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb / 1024 / 1024)
            .unwrap_or(0);
        let _ = writeln!(
            self.text,
            "machine: {cpus} cores, {mem} GiB; mode: {}; lychee: {}; wrk: {}; nginx: {}\n",
            if ctx.smoke { "smoke (tiny sizes; figures mean nothing)" } else { "full" },
            ctx.lychee.as_ref().map(|_| "yes").unwrap_or("not installed"),
            ctx.wrk.as_ref().map(|_| "yes").unwrap_or("not installed"),
            ctx.nginx.as_ref().map(|_| "yes").unwrap_or("not installed"),
        );
    }

    fn section(&mut self, title: &str, columns: &[&str]) {
        let _ = writeln!(
            self.text,
            "\n### {title}\n\n| {} |\n|{}|",
            columns.join(" | "),
            vec!["---"; columns.len()].join("|")
        );
    }

    fn row(&mut self, cells: &[String]) {
        let _ = writeln!(self.text, "| {} |", cells.join(" | "));
        eprintln!("{}", cells.join("  "));
    }

    fn note(&mut self, s: &str) {
        let _ = writeln!(self.text, "\n{s}");
    }

    /// The Markdown text.
    pub fn render(&self) -> String {
        self.text.clone()
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / 1024.0 / 1024.0)
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

fn write_list(path: &Path, urls: impl Iterator<Item = String>) -> Result<usize> {
    let mut s = String::new();
    let mut n = 0;
    for u in urls {
        s.push_str(&u);
        s.push('\n');
        n += 1;
    }
    std::fs::write(path, s)?;
    Ok(n)
}

/// Starts nginx answering 200 to everything on a free loopback port.
async fn start_nginx(ctx: &Ctx) -> Result<Option<(Service, u16)>> {
    let Some(nginx) = &ctx.nginx else { return Ok(None) };
    let port = proc::free_port()?;
    let root = ctx.file("nginx");
    std::fs::create_dir_all(root.join("logs"))?;
    let conf = root.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\ndaemon off;\npid {root}/nginx.pid;\nerror_log {root}/logs/error.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log off; keepalive_requests 1000000;\n\
             client_body_temp_path {root}; proxy_temp_path {root}; fastcgi_temp_path {root}; uwsgi_temp_path {root}; scgi_temp_path {root};\n\
             server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"ok\\n\"; }} }} }}\n",
            root = root.display()
        ),
    )?;
    let svc = Service::start(
        "nginx",
        nginx,
        &["-p".into(), root.display().to_string(), "-c".into(), conf.display().to_string()],
        &[],
    )?;
    proc::wait_port(&format!("127.0.0.1:{port}"), Duration::from_secs(10)).await?;
    Ok(Some((svc, port)))
}

/// Arguments of `urlfleet check` on `list` with loopback allowed: stored in `db`, or with no store.
fn urlfleet_check_args(list: &Path, db: Option<&str>, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec!["check".into(), list.display().to_string()];
    match db {
        Some(db) => a.extend(["--db".to_string(), db.to_string()]),
        None => a.push("--no-store".into()),
    }
    a.extend(["--allow".to_string(), "127.0.0.0/8".to_string()]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn lychee_args(list: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec!["--no-progress".into(), "--max-retries".into(), "0".into()];
    a.extend(extra.iter().map(|s| s.to_string()));
    a.push(list.display().to_string());
    a
}

/// Scenario 1: 100,000 URLs, politeness off, one fast local server.
pub async fn throughput(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let n = ctx.size(100_000, 500);
    report.section(
        &format!("1. Throughput, own site: {n} URLs, politeness off, nginx on loopback"),
        &["tool", "wall", "URLs/s", "peak memory", "vs lychee", "vs wrk ceiling"],
    );
    let Some((nginx, port)) = start_nginx(ctx).await? else {
        report.note("nginx is not installed: scenario skipped (apt-get install nginx-light).");
        return Ok(());
    };
    let list = ctx.file("throughput.txt");
    write_list(&list, (0..n).map(|i| format!("http://127.0.0.1:{port}/p/{i}")))?;

    let wrk_rate = match &ctx.wrk {
        Some(wrk) => {
            let secs = if ctx.smoke { "1s" } else { "5s" };
            let m = proc::measure(
                wrk,
                &["-t2".into(), "-c128".into(), format!("-d{secs}"), format!("http://127.0.0.1:{port}/")],
            )
            .await?;
            m.stdout.lines().find_map(|l| l.strip_prefix("Requests/sec:")).and_then(|v| v.trim().parse::<f64>().ok())
        }
        None => None,
    };

    let db = format!("sqlite:{}", ctx.file("throughput.db").display());
    let _ = std::fs::remove_file(ctx.file("throughput.db"));
    let uf =
        proc::measure(&ctx.urlfleet, &urlfleet_check_args(&list, Some(&db), &["--no-politeness", "--retries", "0"]))
            .await?;
    expect_all_ok(&uf, n, "urlfleet check")?;
    let bare =
        proc::measure(&ctx.urlfleet, &urlfleet_check_args(&list, None, &["--no-politeness", "--retries", "0"])).await?;
    expect_all_ok(&bare, n, "urlfleet check --no-store")?;

    let cluster = cluster_throughput(ctx, &list, n).await?;
    let engine_alone = engine_throughput(port, n).await?;

    let ly = match &ctx.lychee {
        Some(l) => {
            let m = proc::measure(
                l,
                &lychee_args(
                    &list,
                    &["--max-concurrency", "128", "--host-concurrency", "128", "--host-request-interval", "0s"],
                ),
            )
            .await?;
            Some(m)
        }
        None => None,
    };
    let ly_rate = ly.as_ref().map(|m| rate(n, m.wall));
    let fmt_ratio = |r: f64, base: Option<f64>| base.map(|b| format!("{:.2}×", r / b)).unwrap_or_else(|| "n/a".into());
    let uf_rate = rate(n, uf.wall);
    report.row(&[
        "urlfleet check (SQLite)".into(),
        format!("{:.2} s", uf.wall.as_secs_f64()),
        format!("{uf_rate:.0}"),
        mib(uf.peak_rss),
        fmt_ratio(uf_rate, ly_rate),
        fmt_ratio(uf_rate, wrk_rate),
    ]);
    let bare_rate = rate(n, bare.wall);
    report.row(&[
        "urlfleet check --no-store (engine only, nothing kept)".into(),
        format!("{:.2} s", bare.wall.as_secs_f64()),
        format!("{bare_rate:.0}"),
        mib(bare.peak_rss),
        fmt_ratio(bare_rate, ly_rate),
        fmt_ratio(bare_rate, wrk_rate),
    ]);
    let c_rate = rate(n, cluster.0);
    report.row(&[
        "coordinator + 1 worker (PostgreSQL)".into(),
        format!("{:.2} s", cluster.0.as_secs_f64()),
        format!("{c_rate:.0}"),
        format!("{} + {}", mib(cluster.1), mib(cluster.2)),
        fmt_ratio(c_rate, ly_rate),
        fmt_ratio(c_rate, wrk_rate),
    ]);
    let e_rate = rate(n, engine_alone);
    report.row(&[
        "check engine alone, in this process (no store)".into(),
        format!("{:.2} s", engine_alone.as_secs_f64()),
        format!("{e_rate:.0}"),
        "".into(),
        fmt_ratio(e_rate, ly_rate),
        fmt_ratio(e_rate, wrk_rate),
    ]);
    if let Some(m) = &ly {
        let r = rate(n, m.wall);
        report.row(&[
            "lychee".into(),
            format!("{:.2} s", m.wall.as_secs_f64()),
            format!("{r:.0}"),
            mib(m.peak_rss),
            "1.00×".into(),
            fmt_ratio(r, wrk_rate),
        ]);
    } else {
        report.row(&["lychee".into(), "not installed".into(), "".into(), "".into(), "".into(), "".into()]);
    }
    if let Some(w) = wrk_rate {
        report.row(&[
            "wrk (GET /, 128 connections)".into(),
            "".into(),
            format!("{w:.0}"),
            "".into(),
            "".into(),
            "1.00×".into(),
        ]);
    }
    nginx.stop().await?;
    Ok(())
}

/// The worker's check engine alone: `n` checks with 128 in flight, results dropped.
async fn engine_throughput(port: u16, n: usize) -> Result<Duration> {
    use futures::StreamExt as _;
    let engine = std::sync::Arc::new(urlfleet_worker::engine::Engine::new(urlfleet_worker::engine::EngineConfig {
        allow: vec!["127.0.0.0/8".parse().map_err(anyhow::Error::msg)?],
        retries: 0,
        ..Default::default()
    })?);
    let policy = urlfleet_shared::HostPolicy { concurrency: 128, interval: Duration::ZERO };
    let cancel = tokio_util::sync::CancellationToken::new();
    let started = Instant::now();
    let mut ok = 0usize;
    let mut checks = futures::stream::iter(0..n)
        .map(|i| {
            let (engine, cancel) = (engine.clone(), cancel.clone());
            async move { engine.check(&format!("http://127.0.0.1:{port}/e/{i}"), policy, &cancel).await }
        })
        .buffer_unordered(256);
    while let Some(o) = checks.next().await {
        ok += usize::from(o.kind == urlfleet_shared::OutcomeKind::Ok);
    }
    if ok != n {
        bail!("engine alone: {ok} of {n} ok");
    }
    Ok(started.elapsed())
}

fn expect_all_ok(m: &Measured, n: usize, what: &str) -> Result<()> {
    let want = format!("{n} URLs in");
    if m.code != 0 || !m.stdout.contains(&want) {
        bail!("{what} did not check every URL successfully (exit {}):\n{}\n{}", m.code, m.stdout, m.stderr);
    }
    Ok(())
}

/// Starts a coordinator process on a free loopback port; returns it and its `http://` address.
async fn start_coordinator(ctx: &Ctx, db: &str, extra: &[&str]) -> Result<(Service, String)> {
    let port = proc::free_port()?;
    let mut args: Vec<String> =
        vec!["coordinator".into(), "--listen".into(), format!("127.0.0.1:{port}"), "--db".into(), db.into()];
    args.extend(extra.iter().map(|a| a.to_string()));
    let coordinator = Service::start("coordinator", &ctx.urlfleet, &args, &[])?;
    proc::wait_port(&format!("127.0.0.1:{port}"), Duration::from_secs(20)).await?;
    Ok((coordinator, format!("http://127.0.0.1:{port}")))
}

/// Starts a worker process for the coordinator at `addr`, loopback allowed.
fn start_worker(ctx: &Ctx, addr: &str, extra: &[&str]) -> Result<Service> {
    let mut args: Vec<String> =
        vec!["worker".into(), "--coordinator".into(), addr.into(), "--allow".into(), "127.0.0.0/8".into()];
    args.extend(extra.iter().map(|a| a.to_string()));
    Service::start("worker", &ctx.urlfleet, &args, &[])
}

/// A coordinator and one worker as processes on PostgreSQL; returns (wall, coordinator peak, worker peak).
async fn cluster_throughput(ctx: &Ctx, list: &Path, n: usize) -> Result<(Duration, u64, u64)> {
    let db = ctx.fresh_db("throughput").await?;
    let (coordinator, addr) = start_coordinator(ctx, &db, &["--lease-size", "500"]).await?;
    let worker = start_worker(ctx, &addr, &["--retries", "0"])?;
    let submit = proc::measure(
        &ctx.urlfleet,
        &[
            "submit".into(),
            list.display().to_string(),
            "--watch".into(),
            "--host-concurrency".into(),
            "128".into(),
            "--host-interval".into(),
            "0ms".into(),
            "--coordinator".into(),
            addr,
        ],
    )
    .await?;
    if submit.code != 0 || !submit.stdout.contains(&format!("{n} ok")) {
        bail!("cluster run failed (exit {}):\n{}\n{}", submit.code, submit.stdout, submit.stderr);
    }
    let peaks = (coordinator.peak_rss(), worker.peak_rss());
    worker.stop().await?;
    coordinator.stop().await?;
    Ok((submit.wall, peaks.0, peaks.1))
}

/// Scenario 2: 32 hosts × 50 URLs against servers that answer 429 to any request sooner than 100 ms
/// after the previous one.
pub async fn polite(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let hosts = ctx.size(32, 4);
    let per_host = ctx.size(50, 5);
    let minimum = Duration::from_millis(100) * per_host as u32;
    report.section(
        &format!("2. Politeness: {hosts} hosts × {per_host} URLs, 429 when < 100 ms after the previous request (minimum {:.1} s)", minimum.as_secs_f64()),
        &["tool", "wall", "× minimum", "429 answers", "closest spacing seen by a server"],
    );
    for tool in ["urlfleet", "lychee"] {
        if tool == "lychee" && ctx.lychee.is_none() {
            report.row(&["lychee".into(), "not installed".into(), "".into(), "".into(), "".into()]);
            continue;
        }
        let mut servers = Vec::new();
        for h in 0..hosts {
            servers.push(Fixture::start(IpAddr::from([127, 0, 2, 1 + h as u8])).await);
        }
        let list = ctx.file(&format!("polite-{tool}.txt"));
        write_list(
            &list,
            (0..per_host).flat_map(|i| servers.iter().map(move |s| s.url(&format!("/polite/100/u{i}")))),
        )?;
        let m = if tool == "urlfleet" {
            let db = format!("sqlite:{}", ctx.file("polite.db").display());
            let _ = std::fs::remove_file(ctx.file("polite.db"));
            proc::measure(&ctx.urlfleet, &urlfleet_check_args(&list, Some(&db), &[])).await?
        } else {
            let lychee = ctx.lychee.as_ref().expect("checked above");
            proc::measure(lychee, &lychee_args(&list, &["--host-concurrency", "1", "--host-request-interval", "100ms"]))
                .await?
        };
        let throttled: u64 = servers.iter().map(|s| s.throttled()).sum();
        let served: usize = servers.iter().map(|s| s.count("/polite/")).sum();
        if served < hosts * per_host {
            bail!(
                "{tool}: the servers saw {served} requests, fewer than the {} URLs:\n{}{}",
                hosts * per_host,
                m.stdout,
                m.stderr
            );
        }
        let closest = servers
            .iter()
            .filter_map(|s| {
                let mut at: Vec<Instant> = s.seen().into_iter().map(|r| r.at).collect();
                at.sort();
                at.windows(2).map(|w| w[1] - w[0]).min()
            })
            .min()
            .unwrap_or_default();
        report.row(&[
            tool.into(),
            format!("{:.2} s", m.wall.as_secs_f64()),
            format!("{:.2}×", m.wall.as_secs_f64() / minimum.as_secs_f64()),
            throttled.to_string(),
            format!("{:.1} ms", closest.as_secs_f64() * 1000.0),
        ]);
    }
    Ok(())
}

/// Scenario 3: a 50 ms target; a coordinator with 1, 2 and 4 workers of fixed concurrency.
pub async fn scaling(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let per_worker = 32usize;
    let n = ctx.size(6_000, 200);
    report.section(
        &format!("3. Scaling: {n} URLs on 64 hosts answering after 50 ms; each worker {per_worker} concurrent checks"),
        &["workers", "wall", "URLs/s", "efficiency vs linear"],
    );
    let mut servers = Vec::new();
    for h in 0..64u8 {
        servers.push(Fixture::start(IpAddr::from([127, 0, 3, 1 + h])).await);
    }
    let mut base = None;
    for workers in if ctx.smoke { vec![1, 2] } else { vec![1, 2, 4] } {
        let list = ctx.file(&format!("scaling-{workers}.txt"));
        write_list(&list, (0..n).map(|i| servers[i % servers.len()].url(&format!("/delay/50?w={workers}&n={i}"))))?;
        let db = ctx.fresh_db(&format!("scaling{workers}")).await?;
        let (coordinator, addr) = start_coordinator(ctx, &db, &["--lease-size", "50"]).await?;
        let mut ws = Vec::new();
        for _ in 0..workers {
            let (c, k) = (per_worker.to_string(), (per_worker * 4).to_string());
            ws.push(start_worker(ctx, &addr, &["--concurrency", &c, "--credits", &k])?);
        }
        let m = proc::measure(
            &ctx.urlfleet,
            &[
                "submit".into(),
                list.display().to_string(),
                "--watch".into(),
                "--host-concurrency".into(),
                "8".into(),
                "--host-interval".into(),
                "0ms".into(),
                "--coordinator".into(),
                addr,
            ],
        )
        .await?;
        if m.code != 0 {
            bail!("scaling run failed:\n{}{}", m.stdout, m.stderr);
        }
        let r = rate(n, m.wall);
        let b = *base.get_or_insert(r);
        report.row(&[
            workers.to_string(),
            format!("{:.2} s", m.wall.as_secs_f64()),
            format!("{r:.0}"),
            format!("{:.0} %", 100.0 * r / (b * workers as f64)),
        ]);
        for w in ws {
            w.stop().await?;
        }
        coordinator.stop().await?;
    }
    report.note(&format!(
        "Ideal per worker: {per_worker} / 50 ms = {} URLs/s. Workers and coordinator share this machine's cores with the target.",
        per_worker * 20
    ));
    Ok(())
}

/// Scenario 4: result rows into PostgreSQL through the store's ingest path, against a raw COPY of the
/// same rows.
pub async fn ingest(ctx: &Ctx, report: &mut Report) -> Result<()> {
    use urlfleet_coordinator::store::{LeaseRequest, NewJob, PlannedUrl, RecheckPolicy, Seal};
    let n = ctx.size(100_000, 1_000);
    report.section(&format!("4. Ingest: {n} results into PostgreSQL"), &["path", "wall", "rows/s", "vs COPY"]);
    let db = ctx.fresh_db("ingest").await?;
    let store = urlfleet_coordinator::store::connect(&db).await?;
    let urls: Vec<PlannedUrl> = (0..n)
        .map(|i| PlannedUrl {
            url: format!("http://h{}.example/{i}", i % 100),
            host: format!("h{}.example", i % 100),
            max_leases: 1,
            lease_urls: 0,
            seq: i as u64,
        })
        .collect();
    let (job, _) = store
        .create_job(NewJob {
            name: "ingest".into(),
            priority: 3,
            options: Vec::new(),
            idempotency_key: None,
            not_before_ms: 0,
            trace_parent: None,
        })
        .await?;
    for chunk in urls.chunks(10_000) {
        store
            .add_urls(
                job.id,
                chunk,
                RecheckPolicy { force: true, recheck_after: Duration::ZERO, recheck_broken_after: Duration::ZERO },
            )
            .await?;
    }
    store
        .seal_job(
            job.id,
            Seal {
                unique_key: "ingest".into(),
                unique_window: Duration::from_secs(600),
                received: n as u64,
                duplicates: 0,
                total: n as u64,
                priority: 3,
                not_before_ms: 0,
            },
        )
        .await?;
    let mut leased = Vec::new();
    while let Some(l) = store
        .acquire_lease(&LeaseRequest {
            worker_id: "bench".into(),
            max_urls: 1_000,
            max_urls_lifted: 1_000,
            ttl: Duration::from_secs(600),
        })
        .await?
    {
        for (id, _) in &l.urls {
            leased.push((l.id, *id));
        }
    }
    let now = urlfleet_shared::time::now_ms();
    let results: Vec<urlfleet_shared::convert::ReportedResult> = leased
        .iter()
        .map(|(lease, id)| {
            let mut o = urlfleet_shared::CheckOutcome::error(urlfleet_shared::OutcomeKind::Ok, "", 1);
            o.error = None;
            o.status = Some(200);
            o.checked_at_ms = now;
            o.content_type = Some("text/html".into());
            urlfleet_shared::convert::ReportedResult { lease_id: *lease, epoch: 1, url_id: *id, outcome: o }
        })
        .collect();
    // The coordinator's pipeline: batches of 500 as workers send them, many in flight (as from
    // several sessions), gathered into chunks and committed by concurrent writers.
    let shutdown = tokio_util::sync::CancellationToken::new();
    let config = urlfleet_coordinator::ingest::IngestConfig::default();
    let ingestor = urlfleet_coordinator::ingest::Ingestor::start(store.clone(), config, shutdown.clone());
    let started = Instant::now();
    let mut inflight = futures::stream::FuturesUnordered::new();
    for batch in results.chunks(500) {
        let (ingestor, batch) = (ingestor.clone(), batch.to_vec());
        inflight.push(async move { ingestor.submit(batch).await });
    }
    use futures::StreamExt as _;
    while let Some(r) = inflight.next().await {
        r?;
    }
    let ingest_wall = started.elapsed();
    shutdown.cancel();
    let done = store.get_job(job.id).await?.context("job")?;
    if done.counts.checked != n as u64 {
        bail!("ingest counted {} of {n}", done.counts.checked);
    }

    // The same rows through COPY into a table shaped like `checks`.
    let mut c = sqlx::PgConnection::connect(&db).await?;
    sqlx::query("CREATE TABLE checks_copy (LIKE checks INCLUDING ALL)").execute(&mut c).await?;
    let mut text = String::with_capacity(n * 64);
    for r in &results {
        let _ = writeln!(
            text,
            "{}\t{}\t{}\tok\t200\t\\N\t\\N\t1\t0\ttext/html\t\\N\t\\N",
            r.url_id, r.outcome.checked_at_ms, r.lease_id
        );
    }
    let started = Instant::now();
    let mut copy = c.copy_in_raw("COPY checks_copy FROM STDIN").await?;
    copy.send(text.as_bytes()).await?;
    let copied = copy.finish().await?;
    let copy_wall = started.elapsed();
    if copied != n as u64 {
        bail!("COPY wrote {copied} of {n}");
    }

    // The ingest's writes in their most direct form: the same rows through the same three writes (a
    // newer latest state in `urls`, a finish of the `job_urls` row, a `checks` row into a copy of the
    // table), one set-based statement per table over every row at once, in one transaction, from a
    // client that does nothing else. It tells what the data model's writes cost against COPY.
    sqlx::query("CREATE TABLE checks_direct (LIKE checks INCLUDING ALL)").execute(&mut c).await?;
    let ids: Vec<i64> = results.iter().map(|r| r.url_id).collect();
    let leases: Vec<i64> = results.iter().map(|r| r.lease_id).collect();
    let later = now + 1;
    let started = Instant::now();
    let mut tx = c.begin().await?;
    let touched = [
        sqlx::query(
            "UPDATE urls SET kind = 'ok', status = 200, attempts = 1, response_ms = 0, content_type = 'text/html', \
             checked_at = $2 WHERE id = ANY($1) AND (checked_at IS NULL OR checked_at < $2)",
        )
        .bind(&ids)
        .bind(later)
        .execute(&mut *tx)
        .await?
        .rows_affected(),
        sqlx::query("UPDATE job_urls SET state = 'done', kind = 'ok' WHERE job_id = $1 AND url_id = ANY($2)")
            .bind(job.id)
            .bind(&ids)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
        sqlx::query(
            "INSERT INTO checks_direct (url_id, checked_at, lease_id, kind, status, attempts, response_ms, content_type) \
             SELECT id, $3, lease, 'ok', 200, 1, 0, 'text/html' FROM UNNEST($1::bigint[], $2::bigint[]) AS t(id, lease)",
        )
        .bind(&ids)
        .bind(&leases)
        .bind(later)
        .execute(&mut *tx)
        .await?
        .rows_affected(),
    ];
    tx.commit().await?;
    let direct_wall = started.elapsed();
    if touched.iter().any(|t| *t != n as u64) {
        bail!("the direct statements touched {touched:?} rows of {n}");
    }
    let (ir, cr) = (rate(n, ingest_wall), rate(n, copy_wall));
    report.row(&[
        format!(
            "coordinator ingest pipeline (batches of 500, chunks of {}, {} writers)",
            config.chunk_rows, config.writers
        ),
        format!("{:.2} s", ingest_wall.as_secs_f64()),
        format!("{ir:.0}"),
        format!("{:.2}×", ir / cr),
    ]);
    report.row(&[
        "raw COPY into a copy of `checks`".into(),
        format!("{:.2} s", copy_wall.as_secs_f64()),
        format!("{cr:.0}"),
        "1.00×".into(),
    ]);
    let fr = rate(n, direct_wall);
    report.row(&[
        "the same three writes as one statement per table over all rows, one transaction".into(),
        format!("{:.2} s", direct_wall.as_secs_f64()),
        format!("{fr:.0}"),
        format!("{:.2}×", fr / cr),
    ]);
    report.note("The ingest path writes `urls` (monotonic), `checks`, `job_urls` and job counters per result; COPY writes `checks` only.");
    Ok(())
}

/// Scenario 5: a job of 1,000,000 URLs (10 % duplicates, 1,000 hosts) submitted through the client
/// stream until every URL is persisted and leasable.
pub async fn bigjob(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let n = ctx.size(1_000_000, 2_000);
    report.section(
        &format!("5. Big job: {n} URLs (10 % duplicates, 1,000 hosts) to a coordinator on PostgreSQL"),
        &["measure", "value"],
    );
    let db = ctx.fresh_db("bigjob").await?;
    let (coordinator, addr) = start_coordinator(ctx, &db, &[]).await?;
    let mut client = pb::job_service_client::JobServiceClient::connect(addr).await?.max_encoding_message_size(16 << 20);
    let distinct = n - n / 10;
    let stream = async_stream_of(n, distinct);
    let started = Instant::now();
    let resp = client.submit_job(stream).await.map_err(|s| anyhow::anyhow!("submit: {s}"))?.into_inner();
    let wall = started.elapsed();
    let job = resp.job.context("job")?;
    let counts = job.counts.unwrap_or_default();
    if counts.total != distinct as u64 || counts.duplicates != (n - distinct) as u64 {
        bail!("big job counted total {} duplicates {}", counts.total, counts.duplicates);
    }
    let peak = coordinator.peak_rss();
    coordinator.stop().await?;

    // The database's own floor on this machine: the same distinct rows into copies of the two tables
    // (same indexes), one INSERT … SELECT each, generated inside the server, no client at all.
    let mut c = sqlx::PgConnection::connect(&db).await?;
    sqlx::query("CREATE TABLE urls_raw (LIKE urls INCLUDING ALL)").execute(&mut c).await?;
    sqlx::query("CREATE TABLE job_urls_raw (LIKE job_urls INCLUDING ALL)").execute(&mut c).await?;
    let raw_started = Instant::now();
    sqlx::query(
        "INSERT INTO urls_raw (url) SELECT 'https://host' || (k % 1000) || '.example/page/' || k \
         FROM generate_series(0, $1 - 1) AS k",
    )
    .bind(distinct as i64)
    .execute(&mut c)
    .await?;
    sqlx::query(
        "INSERT INTO job_urls_raw (job_id, url_id, host, state, url_order, seq) \
         SELECT 1, id, 'host' || (id % 1000) || '.example', 'pending', 30, id FROM urls_raw",
    )
    .execute(&mut c)
    .await?;
    let raw = raw_started.elapsed();
    report.row(&[
        "submission to all persisted and leasable".into(),
        format!(
            "{:.2} s ({:.0} URLs/s; {:.2}× the database's own floor below)",
            wall.as_secs_f64(),
            rate(n, wall),
            wall.as_secs_f64() / raw.as_secs_f64()
        ),
    ]);
    report.row(&[
        "floor: the distinct URLs as two INSERT … SELECT statements inside PostgreSQL".into(),
        format!("{:.2} s", raw.as_secs_f64()),
    ]);
    report.row(&["coordinator peak memory".into(), mib(peak)]);
    report.row(&["distinct / duplicates".into(), format!("{} / {}", counts.total, counts.duplicates)]);
    Ok(())
}

fn async_stream_of(
    n: usize,
    distinct: usize,
) -> impl tokio_stream::Stream<Item = pb::SubmitJobRequest> + Send + 'static {
    let first = pb::SubmitJobRequest {
        item: Some(pb::submit_job_request::Item::Options(pb::JobOptions { name: "big".into(), ..Default::default() })),
    };
    let chunks = (0..n).step_by(10_000).map(move |start| {
        let urls = (start..(start + 10_000).min(n)).map(|i| {
            let k = i % distinct; // the last 10 % repeat earlier URLs
            format!("https://host{}.example/page/{k}", k % 1_000)
        });
        pb::SubmitJobRequest { item: Some(pb::submit_job_request::Item::Urls(pb::UrlChunk { urls: urls.collect() })) }
    });
    tokio_stream::iter(std::iter::once(first).chain(chunks))
}
