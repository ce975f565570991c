//! Scenarios 1 and 11: fast hosts, politeness off — one host against lychee and `wrk`, and the
//! coordinator tier scaling out.

use super::*;

/// Scenario 1: 100,000 URLs, politeness off, one fast local server.
pub async fn throughput(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let n = ctx.size(100_000, 500);
    report.section(
        &format!("1. Throughput, own site: {n} URLs, politeness off, nginx on loopback"),
        &["tool", "wall", "URLs/s", "peak memory", "CPU per URL", "vs lychee", "vs wrk ceiling"],
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

    let ly = lychee_own_site(ctx, &list).await?;
    let ly_rate = ly.as_ref().map(|m| rate(n, m.wall));
    let fmt_ratio = |r: f64, base: Option<f64>| base.map(|b| format!("{:.2}×", r / b)).unwrap_or_else(|| "n/a".into());
    let per_url = |d: Duration| format!("{:.1} µs", d.as_secs_f64() * 1e6 / n as f64);
    let (cluster_cpu, per_core) = cluster.cpu_cells(n);
    let uf_rate = rate(n, uf.wall);
    report.row(&[
        "urlfleet check (SQLite)".into(),
        format!("{:.2} s", uf.wall.as_secs_f64()),
        format!("{uf_rate:.0}"),
        mib(uf.peak_rss),
        per_url(uf.cpu),
        fmt_ratio(uf_rate, ly_rate),
        fmt_ratio(uf_rate, wrk_rate),
    ]);
    let bare_rate = rate(n, bare.wall);
    report.row(&[
        "urlfleet check --no-store (engine only, nothing kept)".into(),
        format!("{:.2} s", bare.wall.as_secs_f64()),
        format!("{bare_rate:.0}"),
        mib(bare.peak_rss),
        per_url(bare.cpu),
        fmt_ratio(bare_rate, ly_rate),
        fmt_ratio(bare_rate, wrk_rate),
    ]);
    let c_rate = rate(n, cluster.wall);
    report.row(&[
        "coordinator + 1 worker (PostgreSQL)".into(),
        format!("{:.2} s", cluster.wall.as_secs_f64()),
        format!("{c_rate:.0}"),
        format!("{} + {}", mib(cluster.coordinator_peak), mib(cluster.worker_peak)),
        cluster_cpu,
        fmt_ratio(c_rate, ly_rate),
        fmt_ratio(c_rate, wrk_rate),
    ]);
    let e_rate = rate(n, engine_alone);
    report.row(&[
        "check engine alone, in this process (no store)".into(),
        format!("{:.2} s", engine_alone.as_secs_f64()),
        format!("{e_rate:.0}"),
        "".into(),
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
            per_url(m.cpu),
            "1.00×".into(),
            fmt_ratio(r, wrk_rate),
        ]);
    } else {
        report.row(&["lychee".into(), "not installed".into(), "".into(), "".into(), "".into(), "".into(), "".into()]);
    }
    if let Some(w) = wrk_rate {
        report.row(&[
            "wrk (GET /, 128 connections)".into(),
            "".into(),
            format!("{w:.0}"),
            "".into(),
            "".into(),
            "".into(),
            "1.00×".into(),
        ]);
    }
    report.note(&format!(
        "CPU per URL is user + system time from /proc (of the cluster: each process, every PostgreSQL \
         process summed). At the cluster's cost, {per_core}."
    ));
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

/// Scenario 11: the coordinator tier scaling out — an own-site set over 4 hosts, politeness off, one
/// coordinator and one worker against two of each on one PostgreSQL database (each worker on its
/// own coordinator; the job submitted to the first).
pub async fn coordinators(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let n = ctx.size(100_000, 400);
    report.section(
        &format!("11. Coordinator tier: {n} URLs over 4 hosts, politeness off, PostgreSQL"),
        &["coordinators + workers", "wall", "URLs/s", "vs 1 + 1", "machine busy"],
    );
    let addrs: Vec<IpAddr> = (1..=4).map(|h| IpAddr::from([127, 0, 6, h])).collect();
    let Some((nginx, port)) = nginx_on(ctx, "tier", &addrs).await? else {
        report.note("nginx is not installed: scenario skipped (apt-get install nginx-light).");
        return Ok(());
    };
    let list = ctx.file("tier.txt");
    write_list(&list, (0..n).map(|i| format!("http://{}:{port}/p/{i}", addrs[i % addrs.len()])))?;
    let mut base = None;
    for pairs in [1usize, 2] {
        let db = ctx.fresh_db(&format!("tier{pairs}")).await?;
        let mut tier = Vec::new();
        for _ in 0..pairs {
            let (coordinator, addr) = start_coordinator(ctx, &db, &[]).await?;
            let worker = start_worker(ctx, &addr, &["--retries", "0"])?;
            tier.push((coordinator, worker, addr));
        }
        let before = proc::machine_cpu();
        let m = proc::measure(&ctx.urlfleet, &fast_submit_args(&list, &tier[0].2)).await?;
        let after = proc::machine_cpu();
        if m.code != 0 || !m.stderr.contains(&format!("{n} ok")) {
            bail!("coordinator tier run failed (exit {}):\n{}\n{}", m.code, m.stdout, m.stderr);
        }
        let r = rate(n, m.wall);
        let b = *base.get_or_insert(r);
        report.row(&[
            format!("{pairs} + {pairs}"),
            format!("{:.2} s", m.wall.as_secs_f64()),
            format!("{r:.0}"),
            format!("{:.2}×", r / b),
            format!("{:.0} %", proc::busy_percent(before, after)),
        ]);
        for (coordinator, worker, _) in tier {
            worker.stop().await?;
            coordinator.stop().await?;
        }
    }
    nginx.stop().await?;
    report.note(
        "The coordinators, workers, PostgreSQL and nginx share this machine's cores: the busy share says how much \
         of them the run used.",
    );
    Ok(())
}
