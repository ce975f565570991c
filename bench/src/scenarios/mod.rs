//! The benchmark scenarios. Each runs the tools side by side in one run and adds rows to the report.
//!
//! # Layout
//! - `throughput`: one fast host, politeness off — urlfleet's paths against lychee and `wrk`; and the
//!   coordinator tier scaling out on an own-site set of 4 hosts.
//! - `politeness`: strict rate limiters, and workers scaling out on a slow target.
//! - `ingest`: result rows into PostgreSQL through the store, against `COPY`.
//! - `bigjob`: a million-URL submission through the client API.
//! - `hosts`: politeness at scale: many hosts, failing pages, a strict limiter on a busy machine, a
//!   big polite job.
//! - `million`: a million URLs over 32 hosts on every path, against wall and memory targets.
//! - `history`: one job repeated many times, its last runs against its early ones.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sqlx::Connection;
use urlfleet_shared::proto::v1 as pb;
use urlfleet_tests::Fixture;

use crate::proc::{self, Measured, Service};

mod bigjob;
mod history;
mod hosts;
mod ingest;
mod million;
mod politeness;
mod throughput;
mod trust;

pub use bigjob::bigjob;
pub use history::repeated;
pub use hosts::{big_polite, many_hosts, one_url_hosts, some_fail, strict_load};
pub use ingest::ingest;
pub use million::million;
pub use politeness::{polite, scaling};
pub use throughput::{coordinators, throughput};
pub use trust::trust;

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
    nginx_on(ctx, "nginx", &[IpAddr::from([127, 0, 0, 1])]).await
}

/// Starts nginx answering 200 on `addrs`, all on one port; returns it and the port.
async fn nginx_on(ctx: &Ctx, label: &str, addrs: &[IpAddr]) -> Result<Option<(Service, u16)>> {
    nginx_serving(ctx, label, addrs, Site::Open).await
}

/// What nginx serves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Site {
    /// 200 to every request, nothing logged.
    Open,
    /// 200 behind nginx's own limiter, per listening address: a request less than 100 ms after the
    /// previous one that got through is answered 429 (`limit_req`, 10 requests/s, no burst, nginx's
    /// clock in whole milliseconds). Every answer is logged to `logs/access.log` as
    /// `$msec $server_addr $status`.
    Limited,
    /// 200 to every request, every answer logged to `logs/access.log` as `$msec $server_addr
    /// $status` (buffered, written at least every 100 ms): what each host was sent, and when.
    Logged,
}

/// Starts nginx serving `site` on `addrs`, all on one port; returns it and the port.
async fn nginx_serving(ctx: &Ctx, label: &str, addrs: &[IpAddr], site: Site) -> Result<Option<(Service, u16)>> {
    let Some(nginx) = &ctx.nginx else { return Ok(None) };
    let port = proc::free_port()?;
    let root = ctx.file(&format!("nginx-{label}"));
    std::fs::create_dir_all(root.join("logs"))?;
    let listen: String = addrs.iter().map(|a| format!("listen {a}:{port};\n")).collect();
    let (http, location) = match site {
        Site::Open => ("access_log off;".to_string(), "return 200 \"ok\\n\";"),
        Site::Logged => (
            format!(
                "log_format answers '$msec $server_addr $status'; \
                 access_log {root}/logs/access.log answers buffer=64k flush=100ms;",
                root = root.display()
            ),
            "return 200 \"ok\\n\";",
        ),
        Site::Limited => {
            // `return` would answer before the limiter runs: the answer is a file.
            std::fs::create_dir_all(root.join("www"))?;
            std::fs::write(root.join("www").join("ok.txt"), "ok\n")?;
            (
                format!(
                    "log_format answers '$msec $server_addr $status'; access_log {root}/logs/access.log answers;\n\
                     limit_req_zone $server_addr zone=strict:10m rate=10r/s; limit_req_status 429; root {root}/www;",
                    root = root.display()
                ),
                "limit_req zone=strict; try_files /ok.txt =404;",
            )
        }
    };
    let conf = root.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\ndaemon off;\npid {root}/nginx.pid;\nerror_log {root}/logs/error.log;\n\
             worker_rlimit_nofile 65536;\nevents {{ worker_connections 32768; }}\n\
             http {{ {http} keepalive_requests 1000000;\n\
             client_body_temp_path {root}; proxy_temp_path {root}; fastcgi_temp_path {root}; uwsgi_temp_path {root}; scgi_temp_path {root};\n\
             server {{ {listen} location / {{ {location} }} }} }}\n",
            root = root.display()
        ),
    )?;
    let svc = Service::start(
        "nginx",
        nginx,
        &["-p".into(), root.display().to_string(), "-c".into(), conf.display().to_string()],
        &[],
    )?;
    for a in [addrs.first(), addrs.last()].into_iter().flatten() {
        proc::wait_port(&format!("{a}:{port}"), Duration::from_secs(10)).await?;
    }
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

/// lychee on `list` with politeness off (128 in flight, 128 per host, no interval), when installed.
async fn lychee_own_site(ctx: &Ctx, list: &Path) -> Result<Option<Measured>> {
    let Some(lychee) = &ctx.lychee else { return Ok(None) };
    let args =
        lychee_args(list, &["--max-concurrency", "128", "--host-concurrency", "128", "--host-request-interval", "0s"]);
    Ok(Some(proc::measure(lychee, &args).await?))
}

fn expect_all_ok(m: &Measured, n: usize, what: &str) -> Result<()> {
    let want = format!("{n} URLs in");
    if m.code != 0 || !m.stderr.contains(&want) {
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

/// `urlfleet submit LIST --watch` to the coordinator at `addr`, politeness lifted: `per_host`
/// requests at once per host, no interval.
fn lifted_submit_args(list: &Path, addr: &str, per_host: u32) -> Vec<String> {
    let mut args: Vec<String> = vec!["submit".into(), list.display().to_string(), "--watch".into()];
    args.extend(
        ["--host-concurrency", &per_host.to_string(), "--host-interval", "0ms", "--coordinator", addr]
            .map(String::from),
    );
    args
}

/// The own-site job of the throughput scenarios: politeness lifted to 128 per host.
fn fast_submit_args(list: &Path, addr: &str) -> Vec<String> {
    lifted_submit_args(list, addr, 128)
}

/// What a cluster run cost: wall time, peak memory and CPU time of each process of the tier.
pub(crate) struct ClusterRun {
    pub wall: Duration,
    pub coordinator_peak: u64,
    pub worker_peak: u64,
    pub coordinator_cpu: Duration,
    /// Every PostgreSQL process's CPU time over the run.
    pub postgres_cpu: Duration,
    pub worker_cpu: Duration,
}

impl ClusterRun {
    /// CPU per URL of each process, and what one core of each tier would check per second at that cost.
    pub fn cpu_cells(&self, n: usize) -> (String, String) {
        let us = |d: Duration| d.as_secs_f64() * 1e6 / n.max(1) as f64;
        let (c, p, w) = (us(self.coordinator_cpu), us(self.postgres_cpu), us(self.worker_cpu));
        (
            format!("coordinator {c:.1} + PostgreSQL {p:.1} + worker {w:.1} µs"),
            format!("{:.0} URLs/s per coordinator core, {:.0} per database core", 1e6 / c.max(1e-9), 1e6 / p.max(1e-9)),
        )
    }
}

/// A coordinator and one worker as processes on PostgreSQL, one job of `list`.
async fn cluster_throughput(ctx: &Ctx, list: &Path, n: usize) -> Result<ClusterRun> {
    let db = ctx.fresh_db("throughput").await?;
    let (coordinator, addr) = start_coordinator(ctx, &db, &["--lease-size", "500"]).await?;
    let worker = start_worker(ctx, &addr, &["--retries", "0"])?;
    let (c0, w0, p0) = (coordinator.cpu(), worker.cpu(), proc::postgres_cpu());
    let submit = proc::measure(&ctx.urlfleet, &fast_submit_args(list, &addr)).await?;
    if submit.code != 0 || !submit.stderr.contains(&format!("{n} ok")) {
        bail!("cluster run failed (exit {}):\n{}\n{}", submit.code, submit.stdout, submit.stderr);
    }
    let run = ClusterRun {
        wall: submit.wall,
        coordinator_peak: coordinator.peak_rss(),
        worker_peak: worker.peak_rss(),
        coordinator_cpu: coordinator.cpu() - c0,
        postgres_cpu: proc::postgres_cpu().saturating_sub(p0),
        worker_cpu: worker.cpu() - w0,
    };
    worker.stop().await?;
    coordinator.stop().await?;
    Ok(run)
}

/// The closest and the longest spacing between two requests any of the servers saw, by their clocks.
fn spacings(servers: &[Fixture]) -> (Duration, Duration) {
    let gaps: Vec<Duration> = servers
        .iter()
        .flat_map(|s| {
            let mut at: Vec<Instant> = s.seen().into_iter().map(|r| r.at).collect();
            at.sort();
            at.windows(2).map(|w| w[1] - w[0]).collect::<Vec<_>>()
        })
        .collect();
    (gaps.iter().min().copied().unwrap_or_default(), gaps.iter().max().copied().unwrap_or_default())
}
