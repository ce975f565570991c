//! Scenario 12: a million distinct URLs over 32 hosts, politeness off — the engine alone, the
//! embedded default and a coordinator with 2 workers on PostgreSQL, lychee beside them — against
//! fixed wall and memory targets.

use super::*;

/// A target a row is held to: at most `wall` and at most `rss` of peak memory.
struct Target {
    wall: Duration,
    rss_mib: u64,
}

impl Target {
    /// Met or not; at smoke sizes only the target itself (nothing is held to it).
    fn verdict(&self, wall: Duration, rss: u64, smoke: bool) -> String {
        if smoke {
            return format!("≤ {:.0} s, ≤ {} MiB", self.wall.as_secs_f64(), self.rss_mib);
        }
        let ok = wall <= self.wall && rss <= self.rss_mib * 1024 * 1024;
        format!("≤ {:.0} s, ≤ {} MiB: {}", self.wall.as_secs_f64(), self.rss_mib, if ok { "met" } else { "not met" })
    }
}

/// Scenario 12: a million distinct URLs over 32 hosts on every path, lychee beside them.
pub async fn million(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let (hosts, n) = (32usize, ctx.size(1_000_000, 640));
    report.section(
        &format!("12. A million URLs: {n} distinct URLs over {hosts} hosts, politeness off, nginx on loopback"),
        &["tool", "wall", "URLs/s", "peak RSS", "vs lychee", "target"],
    );
    let addrs: Vec<IpAddr> = (1..=hosts).map(|h| IpAddr::from([127, 0, 7, h as u8])).collect();
    let Some((nginx, port)) = nginx_on(ctx, "million", &addrs).await? else {
        report.note("nginx is not installed: scenario skipped (apt-get install nginx-light).");
        return Ok(());
    };
    let list = ctx.file("million.txt");
    write_list(&list, (0..n).map(|i| format!("http://{}:{port}/m/{i}", addrs[i % hosts])))?;
    let fast = ["--no-politeness", "--retries", "0"];

    let lychee_rate = lychee_own_site(ctx, &list).await?.map(|m| (m.wall, m.peak_rss));
    let vs = |wall: Duration| {
        lychee_rate.map_or("-".into(), |(l, _)| format!("{:.2}×", l.as_secs_f64() / wall.as_secs_f64().max(1e-9)))
    };

    let _ = std::fs::remove_file(ctx.file("million.db"));
    let db = format!("sqlite:{}", ctx.file("million.db").display());
    let checks = [
        ("check --no-store", None, Target { wall: Duration::from_secs(25), rss_mib: 150 }),
        ("check (SQLite)", Some(db.as_str()), Target { wall: Duration::from_secs(40), rss_mib: 300 }),
    ];
    let us = |d: Duration| d.as_secs_f64() * 1e6 / n.max(1) as f64;
    let mut cpu = Vec::new();
    for (label, db, target) in checks {
        let m = proc::measure(&ctx.urlfleet, &urlfleet_check_args(&list, db, &fast)).await?;
        expect_all_ok(&m, n, label)?;
        cpu.push(format!("`{label}` {:.1} µs", us(m.cpu)));
        report.row(&[
            label.into(),
            format!("{:.1} s", m.wall.as_secs_f64()),
            format!("{:.0}", rate(n, m.wall)),
            mib(m.peak_rss),
            vs(m.wall),
            target.verdict(m.wall, m.peak_rss, ctx.smoke),
        ]);
    }

    let pg = ctx.fresh_db("million").await?;
    let (coordinator, addr) = start_coordinator(ctx, &pg, &["--lease-size", "500"]).await?;
    let workers = [start_worker(ctx, &addr, &["--retries", "0"])?, start_worker(ctx, &addr, &["--retries", "0"])?];
    let cpu_of_workers = || workers.iter().map(Service::cpu).sum::<Duration>();
    let (c0, w0, p0) = (coordinator.cpu(), cpu_of_workers(), proc::postgres_cpu());
    let m = proc::measure(&ctx.urlfleet, &fast_submit_args(&list, &addr)).await?;
    if m.code != 0 || !m.stderr.contains(&format!("{n} ok")) {
        bail!("million-URL cluster run failed (exit {}):\n{}\n{}", m.code, m.stdout, m.stderr);
    }
    let (c, p, w) =
        (us(coordinator.cpu() - c0), us(proc::postgres_cpu().saturating_sub(p0)), us(cpu_of_workers() - w0));
    cpu.push(format!(
        "the cluster: coordinator {c:.1} + PostgreSQL {p:.1} + workers {w:.1} µs ({:.0} URLs/s per coordinator \
         core, {:.0} per database core)",
        1e6 / c.max(1e-9),
        1e6 / p.max(1e-9)
    ));
    let (cp, wp) = (coordinator.peak_rss(), workers.iter().map(Service::peak_rss).max().unwrap_or(0));
    for w in workers {
        w.stop().await?;
    }
    coordinator.stop().await?;
    report.row(&[
        "coordinator + 2 workers (PostgreSQL)".into(),
        format!("{:.1} s", m.wall.as_secs_f64()),
        format!("{:.0}", rate(n, m.wall)),
        format!("{} / {}", mib(cp), mib(wp)),
        vs(m.wall),
        Target { wall: Duration::from_secs(40), rss_mib: 300 }.verdict(m.wall, cp, ctx.smoke),
    ]);
    if let Some((wall, rss)) = lychee_rate {
        report.row(&[
            "lychee".into(),
            format!("{:.1} s", wall.as_secs_f64()),
            format!("{:.0}", rate(n, wall)),
            mib(rss),
            "1.00×".into(),
            "".into(),
        ]);
    }
    nginx.stop().await?;
    report.note(
        "Peak RSS of the cluster row: coordinator / the larger worker; its memory target is the coordinator's. \
         The targets hold at full size only.",
    );
    report.note(&format!("CPU per URL (user + system, from /proc): {}.", cpu.join("; ")));
    Ok(())
}
