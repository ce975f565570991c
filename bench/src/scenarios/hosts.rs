//! Scenarios 6–9 and 13: politeness at scale — many polite hosts, some failing pages, a strict limiter
//! on a busy machine, a big polite job on a cluster, and many hosts of one URL each. Hosts are
//! distinct loopback addresses (127.x.y.z), so each is a host of its own to every tool.

use super::*;

/// Loopback addresses of `n` distinct hosts in `127.{net}.0.0/16`.
fn host_addrs(net: u8, n: usize) -> Vec<IpAddr> {
    (0..n).map(|i| IpAddr::from([127, net, (i / 250) as u8, (i % 250 + 1) as u8])).collect()
}

/// `submit --watch` of `list` to a fresh coordinator on PostgreSQL with `workers` worker processes,
/// default politeness; returns (wall, coordinator peak RSS, the workers' peak RSS).
async fn cluster_run(ctx: &Ctx, label: &str, list: &Path, workers: usize) -> Result<(Measured, u64, u64)> {
    let db = ctx.fresh_db(label).await?;
    let (coordinator, addr) = start_coordinator(ctx, &db, &[]).await?;
    let mut ws = Vec::new();
    for _ in 0..workers {
        ws.push(start_worker(ctx, &addr, &[])?);
    }
    let args = vec!["submit".into(), list.display().to_string(), "--watch".into(), "--coordinator".into(), addr];
    let m = proc::measure(&ctx.urlfleet, &args).await?;
    let (cp, wp) = (coordinator.peak_rss(), ws.iter().map(Service::peak_rss).max().unwrap_or(0));
    for w in ws {
        w.stop().await?;
    }
    coordinator.stop().await?;
    Ok((m, cp, wp))
}

/// Rows of lychee, `check --no-store` and `check` (SQLite, a new database file `db_file`) on `list` of `n`
/// URLs, every tool at 2 concurrent requests and 100 ms between request starts per host; returns
/// lychee's rate, when it is installed, for the rows that follow. With the servers' `log` (see
/// [`Site::Logged`]), each row also says how closely each tool spaced a host's requests.
async fn polite_single_process_rows(
    ctx: &Ctx,
    report: &mut Report,
    list: &Path,
    n: usize,
    db_file: &str,
    log: Option<&Path>,
) -> Result<Option<f64>> {
    let mut lychee_rate = None;
    if let Some(lychee) = &ctx.lychee {
        let from = ServerLog::mark(log).await;
        let m = proc::measure(
            lychee,
            &lychee_args(
                list,
                &["--host-concurrency", "2", "--host-request-interval", "100ms", "--max-concurrency", "128"],
            ),
        )
        .await?;
        lychee_rate = Some(rate(n, m.wall));
        let cells = vec![
            "lychee".into(),
            format!("{:.2} s", m.wall.as_secs_f64()),
            format!("{:.0}", rate(n, m.wall)),
            "1.00×".into(),
            mib(m.peak_rss),
        ];
        report.row(&with_spacing(cells, log, from, n).await?);
    }
    let vs = |r: f64| lychee_rate.map_or("-".into(), |l| format!("{:.2}×", r / l));
    let sqlite = format!("sqlite:{}", ctx.file(db_file).display());
    for (label, db) in [("check --no-store", None), ("check (SQLite)", Some(sqlite.as_str()))] {
        let _ = std::fs::remove_file(ctx.file(db_file));
        let from = ServerLog::mark(log).await;
        let m = proc::measure(&ctx.urlfleet, &urlfleet_check_args(list, db, &[])).await?;
        expect_all_ok(&m, n, label)?;
        let r = rate(n, m.wall);
        let cells =
            vec![label.into(), format!("{:.2} s", m.wall.as_secs_f64()), format!("{r:.0}"), vs(r), mib(m.peak_rss)];
        report.row(&with_spacing(cells, log, from, n).await?);
    }
    Ok(lychee_rate)
}

/// A row's cells, followed by its spacing cells when the servers keep a `log` (read from `from`),
/// which must hold an answer to each of the run's `n` URLs.
async fn with_spacing(mut cells: Vec<String>, log: Option<&Path>, from: usize, n: usize) -> Result<Vec<String>> {
    if let Some(log) = log {
        ServerLog::flushed(log).await;
        let read = ServerLog::read(log, from)?;
        if read.ok < n as u64 {
            bail!("{}: the servers' log holds {} answers of {n}", cells[0], read.ok);
        }
        cells.extend(read.spacing_cells());
    }
    Ok(cells)
}

/// Scenario 6: many polite hosts, every URL answering 200 at once; both tools at 2 concurrent
/// requests and 100 ms between request starts per host.
pub async fn many_hosts(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let (hosts, per_host) = (ctx.size(2_000, 20), 10);
    let n = hosts * per_host;
    let floor = Duration::from_millis(100) * (per_host as u32 - 1);
    report.section(
        &format!(
            "6. Many hosts: {hosts} hosts × {per_host} URLs, 2 concurrent / 100 ms per host (pacing floor {:.1} s)",
            floor.as_secs_f64()
        ),
        &[
            "tool",
            "wall",
            "URLs/s",
            "vs lychee's rate",
            "peak RSS",
            "closest spacing seen by a server",
            "requests < 100 ms after the host's previous",
        ],
    );
    let addrs = host_addrs(1, hosts);
    let Some((nginx, port)) = nginx_serving(ctx, "hosts", &addrs, Site::Logged).await? else {
        report.note("nginx is not installed: scenario skipped.");
        return Ok(());
    };
    let log = ctx.file("nginx-hosts").join("logs").join("access.log");
    let list = ctx.file("many-hosts.txt");
    write_list(&list, (0..per_host).flat_map(|i| addrs.iter().map(move |a| format!("http://{a}:{port}/u{i}"))))?;
    let lychee_rate = polite_single_process_rows(ctx, report, &list, n, "hosts.db", Some(&log)).await?;
    let vs = |r: f64| lychee_rate.map_or("-".into(), |l| format!("{:.2}×", r / l));
    for workers in [1, 2] {
        let from = ServerLog::flushed(&log).await;
        let (m, cp, wp) = cluster_run(ctx, &format!("hosts{workers}"), &list, workers).await?;
        if m.code != 0 || !m.stderr.contains(&format!("{n} ok")) {
            bail!("cluster run failed (exit {}):\n{}\n{}", m.code, m.stdout, m.stderr);
        }
        let r = rate(n, m.wall);
        let label = format!("coordinator + {workers} worker{} (PostgreSQL)", if workers > 1 { "s" } else { "" });
        let cells = vec![
            label,
            format!("{:.2} s", m.wall.as_secs_f64()),
            format!("{r:.0}"),
            vs(r),
            format!("{} / {}", mib(cp), mib(wp)),
        ];
        report.row(&with_spacing(cells, Some(&log), from, n).await?);
    }
    nginx.stop().await?;
    Ok(())
}

/// Scenario 13: many hosts of one URL each (a site's outbound links), both tools at 2 concurrent
/// requests and 100 ms between request starts per host; peak memory is the point: what a tool keeps
/// per host it has reached (connections, per-host state, checks waiting to start).
pub async fn one_url_hosts(ctx: &Ctx, report: &mut Report) -> Result<()> {
    // One nginx serves every host, with a listening socket per address and a connection per client
    // connection, all under the limit on open files it inherits (20,000 here, which it cannot raise):
    // 9,000 hosts leave room for a tool that keeps a connection open to each host it has reached.
    let n = ctx.size(9_000, 40);
    report.section(
        &format!("13. Many hosts of one URL each: {n} hosts × 1 URL, 2 concurrent / 100 ms per host"),
        &["tool", "wall", "URLs/s", "vs lychee's rate", "peak RSS"],
    );
    let addrs = host_addrs(5, n);
    let Some((nginx, port)) = nginx_on(ctx, "one-url-hosts", &addrs).await? else {
        report.note("nginx is not installed: scenario skipped.");
        return Ok(());
    };
    let list = ctx.file("one-url-hosts.txt");
    write_list(&list, addrs.iter().map(|a| format!("http://{a}:{port}/o")))?;
    polite_single_process_rows(ctx, report, &list, n, "one-url.db", None).await?;
    nginx.stop().await?;
    Ok(())
}

/// Scenario 7: some pages fail — 5 % answer 503 without `Retry-After`, 5 % answer 404 — over 8
/// polite hosts, default settings (3 retries, back-off from 1 s).
pub async fn some_fail(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let (hosts, n) = (8usize, ctx.size(1_000, 80));
    let mut servers = Vec::new();
    for h in 0..hosts {
        servers.push(Fixture::start(IpAddr::from([127, 0, 3, 1 + h as u8])).await);
    }
    let path = |i: usize| match i % 20 {
        0 => format!("/status/503?n={i}"),
        1 => format!("/status/404?n={i}"),
        _ => format!("/status/200?n={i}"),
    };
    let list = ctx.file("some-fail.txt");
    // Each host gets its share of each kind: URL i goes to host i % hosts, and its kind follows its
    // position among that host's URLs.
    write_list(&list, (0..n).map(|i| servers[i % hosts].url(&path(i / hosts))))?;
    let per_host = n.div_ceil(hosts);
    let failing_per_host = per_host.div_ceil(20);
    // Every request spaced by the interval and its margin, retries included, plus one failing URL's
    // whole back-off (1 + 2 + 4 s at most, full jitter).
    let interval = Duration::from_millis(100);
    let spacing = interval + urlfleet_worker::engine::politeness::margin(interval);
    let floor = spacing * (per_host + 3 * failing_per_host) as u32 + Duration::from_secs(7);
    report.section(
        &format!("7. Some pages fail: {n} URLs over {hosts} hosts, 5 % 503 (no Retry-After), 5 % 404, default settings (floor {:.1} s)", floor.as_secs_f64()),
        &["tool", "wall", "× floor", "requests served", "longest gap between a host's requests"],
    );
    let db = format!("sqlite:{}", ctx.file("fail.db").display());
    let _ = std::fs::remove_file(ctx.file("fail.db"));
    let m = proc::measure(&ctx.urlfleet, &urlfleet_check_args(&list, Some(&db), &[])).await?;
    if !m.stderr.contains(&format!("{n} URLs in")) {
        bail!("the failing-pages run did not finish (exit {}):\n{}\n{}", m.code, m.stdout, m.stderr);
    }
    let served: usize = servers.iter().map(|s| s.count("/status/")).sum();
    let gap = spacings(&servers).1;
    report.row(&[
        "urlfleet check".into(),
        format!("{:.2} s", m.wall.as_secs_f64()),
        format!("{:.2}×", m.wall.as_secs_f64() / floor.as_secs_f64()),
        served.to_string(),
        format!("{:.2} s", gap.as_secs_f64()),
    ]);
    Ok(())
}

/// Keeps every core busy until dropped: the machine of a user who is doing something else.
struct Burner(Vec<std::process::Child>);

impl Burner {
    fn start() -> Result<Self> {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let mut children = Vec::new();
        for _ in 0..cores {
            children.push(
                std::process::Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .stdout(std::process::Stdio::null())
                    .spawn()?,
            );
        }
        Ok(Self(children))
    }
}

impl Drop for Burner {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What nginx logged from byte `from` of its log on (see [`Site`]).
struct ServerLog {
    /// Answers 429 (its limiter's), and 200.
    throttled: u64,
    ok: u64,
    /// The closest two requests to one address came, in nginx's whole milliseconds.
    closest: Option<Duration>,
    /// Requests that came less than 99 ms after the previous one to the same address: closer than
    /// 100 ms between request starts whatever the rounding of nginx's clock.
    close: u64,
}

impl ServerLog {
    fn read(path: &Path, from: usize) -> Result<Self> {
        let text = std::fs::read_to_string(path)?;
        let mut arrivals: std::collections::HashMap<&str, Vec<f64>> = std::collections::HashMap::new();
        let (mut throttled, mut ok) = (0, 0);
        for line in text.get(from..).unwrap_or_default().lines() {
            let mut f = line.split_whitespace();
            let (Some(at), Some(addr), Some(status)) = (f.next(), f.next(), f.next()) else { continue };
            match status {
                "429" => throttled += 1,
                "200" => ok += 1,
                _ => {}
            }
            arrivals.entry(addr).or_default().extend(at.parse::<f64>().ok());
        }
        let gaps: Vec<f64> = arrivals
            .values_mut()
            .flat_map(|v| {
                v.sort_by(f64::total_cmp);
                v.windows(2).map(|w| w[1] - w[0]).collect::<Vec<_>>()
            })
            .collect();
        let closest = gaps.iter().copied().min_by(f64::total_cmp).map(|s| Duration::from_secs_f64(s.max(0.0)));
        let close = gaps.iter().filter(|g| **g < 0.099).count() as u64;
        Ok(Self { throttled, ok, closest, close })
    }

    /// The log's length once nginx has written what it buffered (at least every 100 ms): where the
    /// lines of a run that starts now begin, or where those of a run that has ended end.
    async fn flushed(path: &Path) -> usize {
        tokio::time::sleep(Duration::from_millis(400)).await;
        std::fs::metadata(path).map_or(0, |m| m.len() as usize)
    }

    /// Where a run that starts now begins in the servers' `log`, when they keep one.
    async fn mark(log: Option<&Path>) -> usize {
        match log {
            Some(log) => Self::flushed(log).await,
            None => 0,
        }
    }

    /// The spacing columns of a row: the closest spacing and the requests closer than 100 ms.
    fn spacing_cells(&self) -> [String; 2] {
        [self.closest.map_or("-".into(), |c| format!("{:.0} ms", c.as_secs_f64() * 1000.0)), self.close.to_string()]
    }
}

/// Scenario 8: the strict limiter of scenario 2 (429 to any request < 100 ms after the previous one),
/// five runs in a row while every core is kept busy; `check` and a coordinator with 2 workers — against
/// the harness's limiter, which reads a precise clock, and against nginx's own (`limit_req`), which
/// reads its clock in whole milliseconds, as a strict server in front of a real site does.
pub async fn strict_load(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let (hosts, per_host, runs) = (ctx.size(32, 4), ctx.size(50, 5), ctx.size(5, 1));
    let minimum = Duration::from_millis(100) * per_host as u32;
    report.section(
        &format!("8. Strict limiter under load: {hosts} hosts × {per_host} URLs, every core busy, {runs} runs (minimum {:.1} s)", minimum.as_secs_f64()),
        &["run", "tool", "limiter", "wall", "× minimum", "429 answers", "closest spacing seen by a server"],
    );
    let addrs: Vec<IpAddr> = (0..hosts).map(|h| IpAddr::from([127, 0, 8, 1 + h as u8])).collect();
    let limited = nginx_serving(ctx, "strict", &addrs, Site::Limited).await?;
    if limited.is_none() {
        report.note("nginx is not installed: the runs against its limiter are skipped.");
    }
    let nginx_log = ctx.file("nginx-strict").join("logs").join("access.log");
    let burner = Burner::start()?;
    for run in 1..=runs {
        for tool in ["check", "coordinator + 2 workers"] {
            let mut servers = Vec::new();
            for h in 0..hosts {
                servers.push(Fixture::start(IpAddr::from([127, 0, 4, 1 + h as u8])).await);
            }
            let list = ctx.file("strict.txt");
            write_list(
                &list,
                (0..per_host).flat_map(|i| servers.iter().map(move |s| s.url(&format!("/polite/100/u{i}")))),
            )?;
            let m = strict_run(ctx, tool, &list).await?;
            let served: usize = servers.iter().map(|s| s.count("/polite/")).sum();
            if served < hosts * per_host {
                bail!("{tool}: the servers saw {served} requests:\n{}{}", m.stdout, m.stderr);
            }
            let closest = format!("{:.1} ms", spacings(&servers).0.as_secs_f64() * 1000.0);
            let throttled = servers.iter().map(|s| s.throttled()).sum::<u64>();
            report.row(&strict_row(run, tool, "harness", m.wall, minimum, throttled, closest));
            let Some((_, port)) = &limited else { continue };
            let list = ctx.file("strict-nginx.txt");
            write_list(
                &list,
                (0..per_host).flat_map(|i| addrs.iter().map(move |a| format!("http://{a}:{port}/u{i}"))),
            )?;
            let from = std::fs::metadata(&nginx_log).map_or(0, |m| m.len() as usize);
            let m = strict_run(ctx, tool, &list).await?;
            let log = ServerLog::read(&nginx_log, from)?;
            if log.ok < (hosts * per_host) as u64 {
                bail!("{tool}: nginx answered {} requests with 200:\n{}{}", log.ok, m.stdout, m.stderr);
            }
            let [closest, _] = log.spacing_cells();
            report.row(&strict_row(run, tool, "nginx `limit_req`", m.wall, minimum, log.throttled, closest));
        }
    }
    drop(burner);
    if let Some((nginx, _)) = limited {
        nginx.stop().await?;
    }
    Ok(())
}

/// A row of scenario 8.
fn strict_row(
    run: usize,
    tool: &str,
    limiter: &str,
    wall: Duration,
    minimum: Duration,
    throttled: u64,
    closest: String,
) -> [String; 7] {
    [
        run.to_string(),
        tool.into(),
        limiter.into(),
        format!("{:.2} s", wall.as_secs_f64()),
        format!("{:.2}×", wall.as_secs_f64() / minimum.as_secs_f64()),
        throttled.to_string(),
        closest,
    ]
}

/// One run of scenario 8's `tool` on `list`, default settings.
async fn strict_run(ctx: &Ctx, tool: &str, list: &Path) -> Result<Measured> {
    if tool == "check" {
        let _ = std::fs::remove_file(ctx.file("strict.db"));
        let db = format!("sqlite:{}", ctx.file("strict.db").display());
        proc::measure(&ctx.urlfleet, &urlfleet_check_args(list, Some(&db), &[])).await
    } else {
        Ok(cluster_run(ctx, "strict", list, 2).await?.0)
    }
}

/// Scenario 9: a big polite job — URLs over many hosts at 100 ms per host — on a coordinator and 2
/// workers on PostgreSQL.
pub async fn big_polite(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let (hosts, per_host) = (ctx.size(1_000, 10), ctx.size(200, 10));
    let n = hosts * per_host;
    let floor = Duration::from_millis(100) * per_host as u32;
    report.section(
        &format!("9. Big polite job: {n} URLs over {hosts} hosts at 100 ms per host, coordinator + 2 workers on PostgreSQL (floor {:.0} s)", floor.as_secs_f64()),
        &["wall", "× floor", "coordinator peak RSS", "worker peak RSS"],
    );
    let addrs = host_addrs(2, hosts);
    let Some((nginx, port)) = nginx_on(ctx, "big", &addrs).await? else {
        report.note("nginx is not installed: scenario skipped.");
        return Ok(());
    };
    let list = ctx.file("big-polite.txt");
    write_list(&list, (0..per_host).flat_map(|i| addrs.iter().map(move |a| format!("http://{a}:{port}/p{i}"))))?;
    let (m, cp, wp) = cluster_run(ctx, "bigpolite", &list, 2).await?;
    if m.code != 0 || !m.stderr.contains(&format!("{n} ok")) {
        bail!("big polite run failed (exit {}):\n{}\n{}", m.code, m.stdout, m.stderr);
    }
    report.row(&[
        format!("{:.1} s", m.wall.as_secs_f64()),
        format!("{:.2}×", m.wall.as_secs_f64() / floor.as_secs_f64()),
        mib(cp),
        mib(wp),
    ]);
    nginx.stop().await?;
    Ok(())
}
